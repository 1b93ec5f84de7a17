//! Decoding nf_tables trace messages (`NFT_MSG_TRACE`, multicast group `NFNLGRP_NFTRACE`): which
//! table, chain and rule a traced packet went through, the verdict, and the packet's headers at
//! that point. Attribute numbers follow `enum nft_trace_attributes` in linux/netfilter/nf_tables.h.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::backend::netlink::wire::{Attr, Message, SUBSYS_NFTABLES, nft_attrs, nft_family};

/// `NFT_MSG_TRACE`.
pub const MSG_TRACE: u16 = 17;

/// What kind of step an event is (`enum nft_trace_types`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The base chain's policy decided.
    Policy,
    /// The end of a regular chain: back to the caller.
    Return,
    /// A rule matched.
    Rule,
    Other(u32),
}

/// A verdict (`NFTA_VERDICT_CODE`, `NFTA_VERDICT_CHAIN`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    Accept,
    /// A rule without a verdict of its own matched (mark, update, …); evaluation goes on.
    Continue,
    Break,
    Jump(String),
    Goto(String),
    Return,
    Other(i32),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Drop => f.write_str("drop"),
            Verdict::Accept => f.write_str("accept"),
            Verdict::Continue => f.write_str("continue"),
            Verdict::Break => f.write_str("break"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
            Verdict::Return => f.write_str("return"),
            Verdict::Other(n) => write!(f, "verdict {n}"),
        }
    }
}

/// One trace event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// The same for every event of one packet.
    pub id: u32,
    /// `NFPROTO_IPV4` (2) or `NFPROTO_IPV6` (10).
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub handle: Option<u64>,
    pub step: Step,
    pub verdict: Option<Verdict>,
    /// Source and destination as the packet is at this step (after any NAT so far).
    pub packet: Option<(SocketAddr, SocketAddr)>,
    pub mark: Option<u32>,
}

fn verdict(attr: &Attr<'_>) -> Option<Verdict> {
    let mut code = None;
    let mut chain = String::new();
    for a in attr.nested() {
        match a.kind {
            1 => code = a.as_u32().map(|c| c as i32),
            2 => chain = a.as_str().unwrap_or_default().to_string(),
            _ => {}
        }
    }
    Some(match code? {
        0 => Verdict::Drop,
        1 => Verdict::Accept,
        -1 => Verdict::Continue,
        -2 => Verdict::Break,
        -3 => Verdict::Jump(chain),
        -4 => Verdict::Goto(chain),
        -5 => Verdict::Return,
        n => Verdict::Other(n),
    })
}

/// Source and destination from the network and transport headers.
pub fn addresses(network: &[u8], transport: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let (src, dst): (IpAddr, IpAddr) = match network.first()? >> 4 {
        4 if network.len() >= 20 => {
            let a: [u8; 4] = network[12..16].try_into().ok()?;
            let b: [u8; 4] = network[16..20].try_into().ok()?;
            (Ipv4Addr::from(a).into(), Ipv4Addr::from(b).into())
        }
        6 if network.len() >= 40 => {
            let a: [u8; 16] = network[8..24].try_into().ok()?;
            let b: [u8; 16] = network[24..40].try_into().ok()?;
            (Ipv6Addr::from(a).into(), Ipv6Addr::from(b).into())
        }
        _ => return None,
    };
    let port = |at: usize| {
        transport
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .unwrap_or(0)
    };
    Some((SocketAddr::new(src, port(0)), SocketAddr::new(dst, port(2))))
}

/// Decodes one message; `None` if it is not a trace event.
pub fn decode(msg: &Message<'_>) -> Option<TraceEvent> {
    if msg.msg_type != (SUBSYS_NFTABLES << 8) | MSG_TRACE {
        return None;
    }
    let mut ev = TraceEvent {
        id: 0,
        family: nft_family(msg),
        table: String::new(),
        chain: String::new(),
        handle: None,
        step: Step::Other(0),
        verdict: None,
        packet: None,
        mark: None,
    };
    let (mut network, mut transport): (&[u8], &[u8]) = (&[], &[]);
    for a in nft_attrs(msg) {
        match a.kind {
            1 => ev.table = a.as_str().unwrap_or_default().to_string(),
            2 => ev.chain = a.as_str().unwrap_or_default().to_string(),
            3 => ev.handle = a.as_u64(),
            4 => {
                ev.step = match a.as_u32().unwrap_or(0) {
                    1 => Step::Policy,
                    2 => Step::Return,
                    3 => Step::Rule,
                    n => Step::Other(n),
                }
            }
            5 => ev.verdict = verdict(&a),
            6 => ev.id = a.as_u32().unwrap_or(0),
            8 => network = a.data,
            9 => transport = a.data,
            14 => ev.mark = a.as_u32(),
            16 => {
                // NFTA_TRACE_POLICY: the base chain's policy verdict.
                ev.verdict = match a.as_u32() {
                    Some(0) => Some(Verdict::Drop),
                    Some(1) => Some(Verdict::Accept),
                    _ => ev.verdict.take(),
                }
            }
            _ => {}
        }
    }
    ev.packet = addresses(network, transport);
    Some(ev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::netlink::wire::{Writer, messages};

    #[test]
    fn a_rule_event_decodes() {
        let mut w = Writer::new();
        w.begin((SUBSYS_NFTABLES << 8) | MSG_TRACE, 0, 0, 2, 0);
        w.string(1, "kube-nft-proxy");
        w.string(2, "services");
        w.u64(3, 7);
        w.u32(4, 3);
        w.open(5);
        w.u32(1, (-4i32) as u32);
        w.string(2, "service-ns/web/tcp/http");
        w.close();
        w.u32(6, 0xabcd);
        let mut ip = vec![0x45u8, 0, 0, 60, 0, 0, 0, 0, 64, 6, 0, 0];
        ip.extend([10, 244, 1, 5, 10, 96, 0, 10]);
        w.bytes(8, &ip);
        w.bytes(9, &[0xa8, 0xca, 0, 80]);
        w.end();
        let buf = w.into_bytes();
        let msg = messages(&buf).next().unwrap();
        let ev = decode(&msg).unwrap();
        assert_eq!(ev.id, 0xabcd);
        assert_eq!(ev.chain, "services");
        assert_eq!(ev.handle, Some(7));
        assert_eq!(ev.step, Step::Rule);
        assert_eq!(
            ev.verdict,
            Some(Verdict::Goto("service-ns/web/tcp/http".into()))
        );
        let (src, dst) = ev.packet.unwrap();
        assert_eq!(src.to_string(), "10.244.1.5:43210");
        assert_eq!(dst.to_string(), "10.96.0.10:80");
    }

    #[test]
    fn ipv6_headers() {
        let mut ip = vec![0x60u8, 0, 0, 0, 0, 0, 17, 64];
        ip.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ip.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let (s, d) = addresses(&ip, &[0, 53, 0, 54]).unwrap();
        assert_eq!(s.to_string(), "[fd00::1]:53");
        assert_eq!(d.to_string(), "[fd00::2]:54");
        assert!(addresses(&[0x45, 0], &[]).is_none());
    }
}
