//! Blocking request/response over a netlink socket (rtnetlink, ctnetlink): send one request,
//! read every reply until the dump ends or the kernel acknowledges. Shared by the conntrack
//! cleaner and the local-address watcher.

use std::fmt::Debug;
use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr};

/// Receive buffer: the kernel grows dump datagrams to about 32 KiB when it sees a large buffer.
const RECV_BUF: usize = 64 * 1024;

/// `ENOENT`: the object (e.g. a conntrack entry) is already gone.
pub const ENOENT: i32 = 2;
/// `ENOBUFS`: notifications were lost; state must be dumped again.
pub const ENOBUFS: i32 = 105;

/// A socket talking to the kernel for `protocol` (`NETLINK_ROUTE`, `NETLINK_NETFILTER`).
pub fn open(protocol: isize) -> io::Result<Socket> {
    let mut socket = Socket::new(protocol)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// Sends `msg` and passes every reply to `on_reply` until the dump ends (`dump`) or the kernel
/// acknowledges. A negative acknowledgement becomes the matching `io::Error`.
pub fn request<M>(
    socket: &Socket,
    msg: M,
    dump: bool,
    seq: u32,
    mut on_reply: impl FnMut(M),
) -> io::Result<()>
where
    M: NetlinkSerializable + NetlinkDeserializable + Debug,
    NetlinkPayload<M>: From<M>,
{
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut out = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut out);
    socket.send(&out, 0)?;

    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
    loop {
        buf.clear();
        let n = socket.recv(&mut buf, 0)?;
        let mut offset = 0;
        while offset < n.min(buf.len()) {
            let reply = NetlinkMessage::<M>::deserialize(&buf[offset..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = reply.header.length as usize;
            if len == 0 {
                break;
            }
            offset += (len + 3) & !3;
            if reply.header.sequence_number != seq {
                continue;
            }
            match reply.payload {
                NetlinkPayload::InnerMessage(inner) => on_reply(inner),
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(()),
                        Some(_) => Err(e.to_io()),
                    };
                }
                _ => {}
            }
        }
    }
}
