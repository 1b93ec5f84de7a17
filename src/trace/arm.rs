//! Arming and disarming a trace: a table of its own, `kube-nft-proxy-trace`, whose chains on the
//! prerouting and output hooks run before conntrack and NAT (priority raw) and set `nftrace` on
//! packets of one flow. The proxy's own table is never touched, so a trace cannot race the
//! proxy's syncs or leave anything in its table; a trace killed before it disarms leaves only
//! this table, which the next trace replaces (or `nft delete table ip kube-nft-proxy-trace`).

use std::io;

use super::Flow;
use crate::backend::netlink::expr::{Base, Expr, REG_1};
use crate::backend::netlink::socket::NfSocket;
use crate::backend::netlink::wire::{
    MSG_BATCH_BEGIN, MSG_BATCH_END, Msg, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, SUBSYS_NFTABLES,
    Writer,
};
use crate::model::Family;

/// The trace table's name (in the flow's family).
pub const TRACE_TABLE: &str = "kube-nft-proxy-trace";
/// Before conntrack (-200) and every NAT chain: `priority raw`.
const PRIORITY_RAW: i32 = -300;
/// `NFT_META_L4PROTO`, `NFT_META_NFTRACE`.
const META_L4PROTO: u32 = 16;
const META_NFTRACE: u32 = 12;

fn nf_family(f: Family) -> u8 {
    match f {
        Family::V4 => 2,
        Family::V6 => 10,
    }
}

/// Builds one batch: BEGIN, the messages `body` writes (numbered from `seq + 1`), END.
fn batch(seq: u32, body: impl FnOnce(&mut Writer, &mut u32)) -> (Vec<u8>, u32) {
    let mut w = Writer::new();
    w.begin(MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, SUBSYS_NFTABLES);
    w.end();
    let mut next = seq + 1;
    body(&mut w, &mut next);
    w.begin(
        MSG_BATCH_END,
        NLM_F_REQUEST | NLM_F_ACK,
        next,
        0,
        SUBSYS_NFTABLES,
    );
    w.end();
    (w.into_bytes(), next)
}

fn table_message(w: &mut Writer, msg: Msg, flags: u16, seq: &mut u32, family: u8) {
    w.begin(msg.netlink_type(), flags, *seq, family, 0);
    w.string(1, TRACE_TABLE); // NFTA_TABLE_NAME
    w.end();
    *seq += 1;
}

/// The expressions of `<saddr> <daddr> l4proto <proto> th dport <port> meta nftrace set 1`.
pub fn match_and_trace(flow: &Flow) -> Vec<Expr> {
    let (src_off, dst_off, len) = match flow.family() {
        Family::V4 => (12, 16, 4),
        Family::V6 => (8, 24, 16),
    };
    let octets = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    let load = |base, offset, len| Expr::Payload {
        dreg: REG_1,
        base,
        offset,
        len,
    };
    let equals = |data: Vec<u8>| Expr::Cmp {
        sreg: REG_1,
        neq: false,
        data,
    };
    vec![
        load(Base::Network, src_off, len),
        equals(octets(flow.src)),
        load(Base::Network, dst_off, len),
        equals(octets(flow.dst.ip())),
        Expr::MetaLoad {
            dreg: REG_1,
            key: META_L4PROTO,
        },
        equals(vec![flow.protocol.ip_number()]),
        load(Base::Transport, 2, 2),
        equals(flow.dst.port().to_be_bytes().to_vec()),
        Expr::Immediate {
            dreg: REG_1,
            data: vec![1],
        },
        Expr::MetaSet {
            key: META_NFTRACE,
            sreg: REG_1,
        },
    ]
}

/// Creates the trace table (replacing a leftover one) with its two chains and rules.
pub fn arm(socket: &mut NfSocket, flow: &Flow) -> io::Result<()> {
    let family = nf_family(flow.family());
    let seq = socket.reserve_seq(16);
    let (bytes, end) = batch(seq, |w, next| {
        // Create-or-keep, then delete: whatever a killed trace left is gone.
        table_message(w, Msg::NewTable, NLM_F_REQUEST | NLM_F_CREATE, next, family);
        table_message(w, Msg::DelTable, NLM_F_REQUEST, next, family);
        table_message(w, Msg::NewTable, NLM_F_REQUEST | NLM_F_CREATE, next, family);
        for (chain, hook) in [("prerouting", 0u32), ("output", 3)] {
            w.begin(
                Msg::NewChain.netlink_type(),
                NLM_F_REQUEST | NLM_F_CREATE,
                *next,
                family,
                0,
            );
            w.string(1, TRACE_TABLE); // NFTA_CHAIN_TABLE
            w.string(3, chain); // NFTA_CHAIN_NAME
            w.string(7, "filter"); // NFTA_CHAIN_TYPE
            w.open(4); // NFTA_CHAIN_HOOK
            w.u32(1, hook); // NFTA_HOOK_HOOKNUM
            w.bytes(2, &PRIORITY_RAW.to_be_bytes()); // NFTA_HOOK_PRIORITY
            w.close();
            w.end();
            *next += 1;
            w.begin(
                Msg::NewRule.netlink_type(),
                NLM_F_REQUEST | NLM_F_CREATE | crate::backend::netlink::wire::NLM_F_APPEND,
                *next,
                family,
                0,
            );
            w.string(1, TRACE_TABLE); // NFTA_RULE_TABLE
            w.string(2, chain); // NFTA_RULE_CHAIN
            w.open(4); // NFTA_RULE_EXPRESSIONS
            for e in match_and_trace(flow) {
                e.write(w);
            }
            w.close();
            w.end();
            *next += 1;
        }
    });
    commit(socket, bytes, seq, end, "arm the trace")
}

/// Deletes the trace table.
pub fn disarm(socket: &mut NfSocket, family: Family) -> io::Result<()> {
    let seq = socket.reserve_seq(4);
    let (bytes, end) = batch(seq, |w, next| {
        table_message(w, Msg::DelTable, NLM_F_REQUEST, next, nf_family(family));
    });
    commit(socket, bytes, seq, end, "disarm the trace")
}

fn commit(
    socket: &mut NfSocket,
    bytes: Vec<u8>,
    first: u32,
    end: u32,
    what: &str,
) -> io::Result<()> {
    let outcome = socket.send_batch(&[bytes], end)?;
    if let Some((seq, errno)) = outcome.refused.first() {
        let e = io::Error::from_raw_os_error(*errno);
        let index = seq.wrapping_sub(first);
        return Err(io::Error::new(
            e.kind(),
            format!("cannot {what}: message {index} of the batch: {e}"),
        ));
    }
    if !outcome.committed {
        return Err(io::Error::other(format!(
            "cannot {what}: the kernel did not confirm"
        )));
    }
    Ok(())
}
