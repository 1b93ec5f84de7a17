//! Stale UDP conntrack entries. After a sync that changed a UDP service's endpoints, flows whose
//! original destination is one of the service's addresses (ClusterIP, external IPs, LB IPs) and
//! port, or its NodePort, and whose reply source is no longer a serving endpoint are deleted, so
//! clients stop sending to a gone backend (UDP has no connection to break). Done over ctnetlink
//! from Rust: dump the family's entries, pick the stale ones, delete them one by one.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_NETFILTER;

use crate::model::{Family, Protocol as L4};
use crate::netlink;
use crate::plan::ServicePlan;

const IPPROTO_UDP: u8 = 17;

/// One UDP service port whose flows are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpTarget {
    pub family: Family,
    /// `(address, port)` pairs that reach the service: ClusterIP, external IPs, LB IPs.
    pub frontends: Vec<(IpAddr, u16)>,
    pub node_port: Option<u16>,
    /// Endpoint addresses that may keep their flows.
    pub serving: BTreeSet<IpAddr>,
}

/// The UDP ports of a planned Service that have at least one serving endpoint (a Service with
/// none is skipped, as upstream does: its flows are rejected anyway).
pub fn targets(plan: &ServicePlan) -> Vec<UdpTarget> {
    plan.ports
        .iter()
        .filter(|p| p.protocol == L4::Udp && !p.serving_ips.is_empty())
        .map(|p| UdpTarget {
            family: p.family,
            frontends: std::iter::once(p.cluster_ip)
                .chain(p.external_ips.iter().copied())
                .chain(p.load_balancer_ips.iter().copied())
                .map(|ip| (ip, p.port))
                .collect(),
            node_port: p.node_port,
            serving: p.serving_ips.iter().copied().collect(),
        })
        .collect()
}

/// One side of a conntrack entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTuple {
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// A conntrack entry: original and reply directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub original: FlowTuple,
    pub reply: FlowTuple,
}

/// Whether `flow` belongs to one of `targets` but is answered by an endpoint no longer serving.
pub fn is_stale(flow: &Flow, targets: &[UdpTarget]) -> bool {
    let o = &flow.original;
    o.protocol == IPPROTO_UDP
        && targets.iter().any(|t| {
            Family::of(&o.dst) == t.family
                && (t.frontends.contains(&(o.dst, o.dport)) || t.node_port == Some(o.dport))
                && !t.serving.contains(&flow.reply.src)
        })
}

/// Deletes stale flows; a trait so the reconciler can be tested without a kernel.
pub trait FlowCleaner: Send {
    /// Deletes the stale flows of `targets`; returns how many were deleted.
    fn clean(&mut self, targets: &[UdpTarget]) -> io::Result<usize>;
}

/// The ctnetlink cleaner.
pub struct Conntrack {
    socket: Socket,
    seq: u32,
}

impl Conntrack {
    pub fn open() -> io::Result<Conntrack> {
        Ok(Conntrack {
            socket: netlink::open(NETLINK_NETFILTER)?,
            seq: 0,
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Every entry of one family.
    pub fn dump(&mut self, family: Family) -> io::Result<Vec<Flow>> {
        let mut flows = Vec::new();
        let seq = self.next_seq();
        let msg = message(family, ConntrackMessage::Get(Vec::new()));
        netlink::request(&self.socket, msg, true, seq, |reply| {
            if let NetfilterMessageInner::Conntrack(
                ConntrackMessage::New(attrs) | ConntrackMessage::Get(attrs),
            ) = &reply.inner
                && let Some(flow) = flow(attrs)
            {
                flows.push(flow);
            }
        })?;
        Ok(flows)
    }

    /// Deletes one entry by its original tuple; `false` when it was already gone.
    pub fn delete(&mut self, flow: &Flow) -> io::Result<bool> {
        let seq = self.next_seq();
        let o = flow.original;
        let tuple = vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(o.src),
                IPTuple::DestinationAddress(o.dst),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::from(o.protocol)),
                ProtoTuple::SourcePort(o.sport),
                ProtoTuple::DestinationPort(o.dport),
            ]),
        ];
        let msg = message(
            Family::of(&o.src),
            ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(tuple)]),
        );
        match netlink::request(&self.socket, msg, false, seq, |_| {}) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(netlink::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl FlowCleaner for Conntrack {
    fn clean(&mut self, targets: &[UdpTarget]) -> io::Result<usize> {
        let mut deleted = 0;
        for family in Family::ALL {
            if !targets.iter().any(|t| t.family == family) {
                continue;
            }
            for flow in self.dump(family)? {
                if is_stale(&flow, targets) && self.delete(&flow)? {
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }
}

fn message(family: Family, msg: ConntrackMessage) -> NetfilterMessage {
    let family = match family {
        Family::V4 => NetfilterProtoFamily::IPv4,
        Family::V6 => NetfilterProtoFamily::IPv6,
    };
    NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), msg)
}

fn flow(attrs: &[ConntrackAttribute]) -> Option<Flow> {
    let (mut original, mut reply) = (None, None);
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => original = tuple(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = tuple(t),
            _ => {}
        }
    }
    Some(Flow {
        original: original?,
        reply: reply?,
    })
}

fn tuple(parts: &[Tuple]) -> Option<FlowTuple> {
    let (mut src, mut dst, mut protocol, mut sport, mut dport) = (None, None, None, 0, 0);
    for part in parts {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(fields) => {
                for f in fields {
                    match f {
                        ProtoTuple::Protocol(p) => protocol = Some(u8::from(*p)),
                        ProtoTuple::SourcePort(p) => sport = *p,
                        ProtoTuple::DestinationPort(p) => dport = *p,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(FlowTuple {
        protocol: protocol?,
        src: src?,
        dst: dst?,
        sport,
        dport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(proto: u8, dst: &str, dport: u16, reply_src: &str) -> Flow {
        let t = |src: &str, dst: &str, sport, dport| FlowTuple {
            protocol: proto,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
        };
        Flow {
            original: t("10.244.9.9", dst, 40000, dport),
            reply: t(reply_src, "10.244.9.9", 53, 40000),
        }
    }

    fn target() -> Vec<UdpTarget> {
        vec![UdpTarget {
            family: Family::V4,
            frontends: vec![
                ("10.96.0.10".parse().unwrap(), 53),
                ("192.0.2.1".parse().unwrap(), 53),
            ],
            node_port: Some(30053),
            serving: ["10.244.1.2".parse().unwrap()].into_iter().collect(),
        }]
    }

    #[test]
    fn flows_answered_by_a_gone_endpoint_are_stale() {
        assert!(is_stale(
            &flow(17, "10.96.0.10", 53, "10.244.1.3"),
            &target()
        ));
        assert!(
            is_stale(&flow(17, "192.0.2.1", 53, "10.244.1.3"), &target()),
            "external IP"
        );
        assert!(
            is_stale(&flow(17, "192.168.50.1", 30053, "10.244.1.3"), &target()),
            "NodePort"
        );
        // Flows answered by the VIP itself were never DNATed (they were rejected): stale too.
        assert!(is_stale(
            &flow(17, "10.96.0.10", 53, "10.96.0.10"),
            &target()
        ));
    }

    #[test]
    fn everything_else_is_left_alone() {
        assert!(
            !is_stale(&flow(17, "10.96.0.10", 53, "10.244.1.2"), &target()),
            "serving endpoint"
        );
        assert!(
            !is_stale(&flow(6, "10.96.0.10", 53, "10.244.1.3"), &target()),
            "TCP"
        );
        assert!(
            !is_stale(&flow(17, "10.96.0.10", 54, "10.244.1.3"), &target()),
            "other port"
        );
        assert!(
            !is_stale(&flow(17, "10.96.0.11", 53, "10.244.1.3"), &target()),
            "other service"
        );
    }
}
