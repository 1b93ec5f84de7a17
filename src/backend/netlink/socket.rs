//! The nf_tables netlink socket: sends a batch in one `send` (the kernel applies it inside that
//! call, so every answer is queued when it returns) and collects what the kernel said about each
//! message; runs dumps. The batch's end message asks for an acknowledgement, which the kernel
//! sends only after a successful commit.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd};

use netlink_sys::{Socket, SocketAddr, constants::NETLINK_NETFILTER};
use nix::sys::socket::{MsgFlags, NetlinkAddr, sendmsg, setsockopt, sockopt};

use super::wire::{Message, NLMSG_DONE, NLMSG_ERROR, Writer, messages};

/// Receive buffer for answers: big dump datagrams and many error reports fit.
const RECV_BUF: usize = 256 * 1024;
/// Socket receive buffer (forced): errors for every message of a large failed batch fit.
const SOCKET_RCVBUF: usize = 8 * 1024 * 1024;

/// What the kernel answered to one batch.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// The batch's end was acknowledged: the transaction is committed.
    pub committed: bool,
    /// `(sequence number, errno)` of each message the kernel refused.
    pub refused: Vec<(u32, i32)>,
}

/// A netlink socket for nf_tables.
pub struct NfSocket {
    socket: Socket,
    seq: u32,
    sndbuf: usize,
    buf: Vec<u8>,
}

fn os_err(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl NfSocket {
    /// Opens a socket in the current network namespace.
    pub fn open() -> io::Result<NfSocket> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        let local = socket.bind_auto()?;
        // Our commits are announced with this port: the kernel-change monitor ignores them.
        crate::backend::writers::register(local.port_number());
        socket.connect(&SocketAddr::new(0, 0))?;
        // Error reports carry only the refused message's header, plus the offending attribute.
        socket.set_cap_ack(true)?;
        socket.set_ext_ack(true)?;
        setsockopt(&socket.as_fd(), sockopt::RcvBufForce, &SOCKET_RCVBUF).map_err(os_err)?;
        Ok(NfSocket {
            socket,
            seq: std::process::id().wrapping_mul(1 << 16),
            sndbuf: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// The next sequence number [`NfSocket::reserve_seq`] hands out.
    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    /// Reserves `count` sequence numbers; returns the first.
    pub fn reserve_seq(&mut self, count: u32) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(count.max(1));
        first
    }

    /// Sends a whole batch (`BATCH_BEGIN` … `BATCH_END`, the end numbered `end_seq` and asking
    /// for an acknowledgement) and reads every answer to it.
    pub fn send_batch(&mut self, chunks: &[Vec<u8>], end_seq: u32) -> io::Result<BatchOutcome> {
        self.drain_stale()?;
        // The whole batch is one datagram and must fit the send buffer; nft does the same.
        let total: usize = chunks.iter().map(Vec::len).sum();
        let needed = total + 64 * 1024;
        if needed > self.sndbuf {
            setsockopt(&self.socket.as_fd(), sockopt::SndBufForce, &needed).map_err(os_err)?;
            self.sndbuf = needed;
        }
        let iov: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
        loop {
            let sent =
                sendmsg::<NetlinkAddr>(self.socket.as_raw_fd(), &iov, &[], MsgFlags::empty(), None);
            match sent {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(os_err(e)),
            }
        }
        let mut outcome = BatchOutcome::default();
        // The kernel handled the batch inside send(): everything it has to say is queued.
        while self.recv(MsgFlags::MSG_DONTWAIT)? {
            for msg in messages(&self.buf) {
                if msg.msg_type != NLMSG_ERROR {
                    continue;
                }
                let code = error_code(&msg);
                if code == 0 {
                    if msg.seq == end_seq {
                        outcome.committed = true;
                    }
                } else {
                    outcome.refused.push((msg.seq, -code));
                }
            }
        }
        Ok(outcome)
    }

    /// Runs one request built by `build` (called with its sequence number) and hands every
    /// answer message to `each` until the dump ends or the kernel acknowledges. A negative
    /// acknowledgement becomes the matching error.
    pub fn request(
        &mut self,
        build: impl FnOnce(&mut Writer, u32),
        mut each: impl FnMut(&Message<'_>),
    ) -> io::Result<()> {
        self.drain_stale()?;
        let seq = self.reserve_seq(1);
        let mut w = Writer::new();
        build(&mut w, seq);
        let bytes = w.into_bytes();
        loop {
            match self.socket.send(&bytes, 0) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        loop {
            self.recv(MsgFlags::empty())?;
            for msg in messages(&self.buf) {
                if msg.seq != seq {
                    continue;
                }
                match msg.msg_type {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = error_code(&msg);
                        return if code == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    _ => each(&msg),
                }
            }
        }
    }

    /// Discards answers left over from an earlier exchange (none are expected).
    fn drain_stale(&mut self) -> io::Result<()> {
        while self.recv(MsgFlags::MSG_DONTWAIT)? {}
        Ok(())
    }

    /// Reads one datagram into `self.buf`; `false` when none was waiting (non-blocking).
    fn recv(&mut self, flags: MsgFlags) -> io::Result<bool> {
        loop {
            self.buf.clear();
            match self.socket.recv(&mut self.buf, flags.bits()) {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }
}

/// The error code of an `NLMSG_ERROR` message (0 = acknowledgement).
fn error_code(msg: &Message<'_>) -> i32 {
    msg.payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
        .unwrap_or(-libc_eproto())
}

fn libc_eproto() -> i32 {
    nix::errno::Errno::EPROTO as i32
}
