//! Rules as data: a rule is a shape (parsed once from `rules-templates/`) plus the typed values
//! that fill its `$slots`. The nft text is derived from that, so no untyped string ever reaches a
//! rule, and a later netlink encoder can compile each shape once.

use std::fmt::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::{ChainName, SetName};
use crate::model::{Cidr, Family, Protocol};

/// A `$name` placeholder in a rule template. Each slot has one value kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    /// `ip` or `ip6`, as a payload protocol (`$family daddr`).
    Family,
    /// `ipv4_addr` or `ipv6_addr`.
    AddrType,
    /// The masquerade mark bit, e.g. `0x00004000`.
    Mark,
    /// The loopback prefix of the family (`127.0.0.0/8`, `::1`).
    Loopback,
    /// A Service's ClusterIP.
    ClusterIp,
    /// The cluster (pod) CIDR of the table's family.
    ClusterCidr,
    /// An endpoint's address.
    EndpointIp,
    /// An endpoint's address and port, the DNAT target (`10.0.0.1:80`, `[fd00::1]:80`).
    Endpoint,
    /// The L4 protocol keyword.
    Protocol,
    /// How many endpoints a load-balancing rule chooses from.
    EndpointCount,
    /// The `index : goto chain` list of a load-balancing verdict map.
    EndpointChains,
    /// One endpoint's chain.
    EndpointChain,
    /// One endpoint's affinity set.
    AffinitySet,
    /// The affinity timeout, as nft writes durations (`3h`, `1m40s`).
    AffinityTimeout,
    /// A service port's cluster-policy chain (`service-…`).
    ClusterChain,
    /// The chain of a service port's external traffic policy.
    PolicyChain,
    /// Source prefixes allowed through a firewall chain.
    AllowedSources,
    /// The port all of a service port's endpoints listen on.
    TargetPort,
    /// The endpoint map (shard) a service port's DNAT reads.
    EndpointMap,
}

impl Slot {
    pub const ALL: [Slot; 19] = [
        Slot::Family,
        Slot::AddrType,
        Slot::Mark,
        Slot::Loopback,
        Slot::ClusterIp,
        Slot::ClusterCidr,
        Slot::EndpointIp,
        Slot::Endpoint,
        Slot::Protocol,
        Slot::EndpointCount,
        Slot::EndpointChains,
        Slot::EndpointChain,
        Slot::AffinitySet,
        Slot::AffinityTimeout,
        Slot::ClusterChain,
        Slot::PolicyChain,
        Slot::AllowedSources,
        Slot::TargetPort,
        Slot::EndpointMap,
    ];

    /// The spelling in templates, without the `$`.
    pub fn name(self) -> &'static str {
        match self {
            Slot::Family => "family",
            Slot::AddrType => "addr_type",
            Slot::Mark => "mark",
            Slot::Loopback => "loopback",
            Slot::ClusterIp => "cluster_ip",
            Slot::ClusterCidr => "cluster_cidr",
            Slot::EndpointIp => "endpoint_ip",
            Slot::Endpoint => "endpoint",
            Slot::Protocol => "protocol",
            Slot::EndpointCount => "endpoint_count",
            Slot::EndpointChains => "endpoint_chains",
            Slot::EndpointChain => "endpoint_chain",
            Slot::AffinitySet => "affinity_set",
            Slot::AffinityTimeout => "affinity_timeout",
            Slot::ClusterChain => "cluster_chain",
            Slot::PolicyChain => "policy_chain",
            Slot::AllowedSources => "allowed_sources",
            Slot::TargetPort => "target_port",
            Slot::EndpointMap => "endpoint_map",
        }
    }

    pub fn from_name(name: &str) -> Option<Slot> {
        Slot::ALL.into_iter().find(|s| s.name() == name)
    }

    fn accepts(self, value: &Value) -> bool {
        matches!(
            (self, value),
            (Slot::Family, Value::Family(_))
                | (Slot::AddrType, Value::Family(_))
                | (Slot::Mark, Value::Mark(_))
                | (Slot::ClusterIp | Slot::EndpointIp, Value::Addr(_))
                | (Slot::ClusterCidr | Slot::Loopback, Value::Cidr(_))
                | (Slot::Endpoint, Value::SocketAddr(_))
                | (Slot::Protocol, Value::Protocol(_))
                | (Slot::EndpointCount, Value::Count(_))
                | (Slot::EndpointChains, Value::Chains(_))
                | (
                    Slot::EndpointChain | Slot::ClusterChain | Slot::PolicyChain,
                    Value::Chain(_)
                )
                | (Slot::AffinitySet | Slot::EndpointMap, Value::Set(_))
                | (Slot::AffinityTimeout, Value::Seconds(_))
                | (Slot::AllowedSources, Value::Cidrs(_))
                | (Slot::TargetPort, Value::Port(_))
        )
    }
}

/// A typed value for a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Family(Family),
    Mark(u32),
    Addr(IpAddr),
    Cidr(Cidr),
    SocketAddr(SocketAddr),
    Protocol(Protocol),
    Count(u32),
    /// Chains chosen by index: rendered `0 : goto a, 1 : goto b`.
    Chains(Arc<[ChainName]>),
    Chain(ChainName),
    Set(SetName),
    /// A duration in seconds, written as nft prints durations (`1d2h3m4s`).
    Seconds(u32),
    /// Prefixes written as an anonymous set `{ a, b }`, or bare when there is one (host prefixes
    /// as plain addresses).
    Cidrs(Arc<[Cidr]>),
    Port(u16),
}

impl Value {
    fn write(&self, slot: Slot, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = match (slot, self) {
            (Slot::AddrType, Value::Family(f)) => out.write_str(f.addr_type()),
            (_, Value::Family(f)) => out.write_str(f.nft_name()),
            (_, Value::Mark(m)) => write!(out, "0x{m:08x}"),
            (_, Value::Addr(a)) => write!(out, "{a}"),
            (_, Value::Cidr(c)) => write_cidr(c, out),
            (_, Value::SocketAddr(s)) => write!(out, "{s}"),
            (_, Value::Protocol(p)) => out.write_str(p.nft_name()),
            (_, Value::Count(n)) => write!(out, "{n}"),
            (_, Value::Port(n)) => write!(out, "{n}"),
            (_, Value::Chain(c)) => write!(out, "{c}"),
            (_, Value::Set(s)) => write!(out, "{s}"),
            (_, Value::Seconds(secs)) => write_duration(*secs, out),
            (_, Value::Cidrs(list)) => {
                // One prefix is written bare: nft prints a one-element set that way.
                if let [one] = &list[..] {
                    write_cidr(one, out)
                } else {
                    out.push_str("{ ");
                    for (i, c) in list.iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        let _ = write_cidr(c, out);
                    }
                    out.push_str(" }");
                    Ok(())
                }
            }
            (_, Value::Chains(chains)) => {
                for (i, chain) in chains.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    let _ = write!(out, "{i} : goto {chain}");
                }
                Ok(())
            }
        };
    }
}

/// A prefix as nft prints it: a full-length prefix is just the address.
fn write_cidr(c: &Cidr, out: &mut String) -> fmt::Result {
    let full = match c.family() {
        Family::V4 => 32,
        Family::V6 => 128,
    };
    if c.prefix_len() == full {
        write!(out, "{}", c.addr())
    } else {
        write!(out, "{c}")
    }
}

/// A duration as nft prints it: `3h`, `1m40s`, `1d`, `0s`.
fn write_duration(secs: u32, out: &mut String) -> fmt::Result {
    if secs == 0 {
        return out.write_str("0s");
    }
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    for (n, unit) in parts {
        if n > 0 {
            write!(out, "{n}{unit}")?;
        }
    }
    Ok(())
}

/// One piece of a rule template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    /// Index into the shape's slot list.
    Slot(usize),
}

/// A template split into what a compiler reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Word(&'a str),
    /// A `@` directly before a hole: the hole names a set.
    SetPrefix,
    Hole(Slot, usize),
}

/// A parsed rule template: literal nft text with typed holes.
#[derive(Debug, PartialEq, Eq)]
pub struct RuleShape {
    /// `file:line`, for messages.
    id: String,
    /// The template text as written.
    source: String,
    parts: Vec<Part>,
    /// Distinct slots in order of first use.
    slots: Vec<Slot>,
}

/// Why a template line or a binding was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("unknown slot ${0}")]
    UnknownSlot(String),
    #[error("slot ${0} is not offered to this rule")]
    NotOffered(&'static str),
    #[error("rule templates may not carry comments (the renderer owns rule comments)")]
    Comment,
    #[error("missing value for slot ${0}")]
    Missing(&'static str),
    #[error("wrong kind of value for slot ${0}")]
    WrongKind(&'static str),
}

impl RuleShape {
    /// Parses template text. `offered` lists the slots the renderer supplies for this rule.
    pub fn parse(id: &str, text: &str, offered: &[Slot]) -> Result<RuleShape, ShapeError> {
        if text.split_whitespace().any(|w| w == "comment") {
            return Err(ShapeError::Comment);
        }
        let mut parts = Vec::new();
        let mut slots: Vec<Slot> = Vec::new();
        let mut rest = text.trim();
        while let Some(at) = rest.find('$') {
            if at > 0 {
                parts.push(Part::Text(rest[..at].to_string()));
            }
            let after = &rest[at + 1..];
            let end = after
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..end];
            let slot =
                Slot::from_name(name).ok_or_else(|| ShapeError::UnknownSlot(name.to_string()))?;
            if !offered.contains(&slot) {
                return Err(ShapeError::NotOffered(slot.name()));
            }
            let index = match slots.iter().position(|s| *s == slot) {
                Some(i) => i,
                None => {
                    slots.push(slot);
                    slots.len() - 1
                }
            };
            parts.push(Part::Slot(index));
            rest = &after[end..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(RuleShape {
            id: id.to_string(),
            source: text.trim().to_string(),
            parts,
            slots,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The template text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The template as words and holes: each hole is its slot and the index of its value in a
    /// bound rule's [`Rule::args`].
    pub fn pieces(&self) -> Vec<Piece<'_>> {
        let mut out = Vec::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => {
                    // `@$set`: a set reference whose name is a hole.
                    let mut words = t.split_whitespace().peekable();
                    while let Some(word) = words.next() {
                        let last = words.peek().is_none();
                        if word == "@" && last && t.ends_with('@') {
                            out.push(Piece::SetPrefix);
                        } else {
                            out.push(Piece::Word(word));
                        }
                    }
                }
                Part::Slot(i) => out.push(Piece::Hole(self.slots[*i], *i)),
            }
        }
        out
    }

    /// The slots this shape uses.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Makes a rule from the values offered; values for slots the template does not use are ignored.
    pub fn bind(&'static self, values: &[(Slot, Value)]) -> Result<Rule, ShapeError> {
        let mut args = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let value = values
                .iter()
                .find(|(s, _)| s == slot)
                .map(|(_, v)| v)
                .ok_or(ShapeError::Missing(slot.name()))?;
            if !slot.accepts(value) {
                return Err(ShapeError::WrongKind(slot.name()));
            }
            args.push(value.clone());
        }
        Ok(Rule {
            shape: self,
            args: args.into_boxed_slice(),
        })
    }
}

/// A rule: a shape with its values.
#[derive(Clone, Debug)]
pub struct Rule {
    shape: &'static RuleShape,
    args: Box<[Value]>,
}

impl Rule {
    pub fn shape(&self) -> &'static RuleShape {
        self.shape
    }

    pub fn args(&self) -> &[Value] {
        &self.args
    }

    /// Appends the nft text of the rule.
    pub fn write_text(&self, out: &mut String) {
        for part in &self.shape.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Slot(i) => self.args[*i].write(self.shape.slots[*i], out),
            }
        }
    }
}

impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        std::ptr::eq(self.shape, other.shape) && self.args == other.args
    }
}

impl Eq for Rule {}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.write_text(&mut s);
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leak(shape: RuleShape) -> &'static RuleShape {
        Box::leak(Box::new(shape))
    }

    #[test]
    fn binds_and_renders_typed_values() {
        let shape = leak(
            RuleShape::parse(
                "t/hairpin",
                "$family saddr $endpoint_ip jump mark-for-masquerade",
                &[Slot::Family, Slot::EndpointIp],
            )
            .unwrap(),
        );
        let rule = shape
            .bind(&[
                (Slot::EndpointIp, Value::Addr("fd00::5".parse().unwrap())),
                (Slot::Family, Value::Family(Family::V6)),
            ])
            .unwrap();
        assert_eq!(
            rule.to_string(),
            "ip6 saddr fd00::5 jump mark-for-masquerade"
        );
    }

    #[test]
    fn renders_lists_marks_and_socket_addresses() {
        let shape = leak(
            RuleShape::parse(
                "t/x",
                "numgen random mod $endpoint_count vmap { $endpoint_chains } $mark $endpoint $addr_type",
                &Slot::ALL,
            )
            .unwrap(),
        );
        let chains: Arc<[ChainName]> =
            vec![ChainName::new("a").unwrap(), ChainName::new("b").unwrap()].into();
        let rule = shape
            .bind(&[
                (Slot::EndpointCount, Value::Count(2)),
                (Slot::EndpointChains, Value::Chains(chains)),
                (Slot::Mark, Value::Mark(0x4000)),
                (
                    Slot::Endpoint,
                    Value::SocketAddr("[fd00::1]:80".parse().unwrap()),
                ),
                (Slot::AddrType, Value::Family(Family::V4)),
            ])
            .unwrap();
        assert_eq!(
            rule.to_string(),
            "numgen random mod 2 vmap { 0 : goto a, 1 : goto b } 0x00004000 [fd00::1]:80 ipv4_addr"
        );
    }

    #[test]
    fn durations_and_prefixes_print_as_nft_prints_them() {
        let mut out = String::new();
        for secs in [10_800, 100, 86_400, 90_061, 0] {
            write_duration(secs, &mut out).unwrap();
            out.push(' ');
        }
        assert_eq!(out, "3h 1m40s 1d 1d1h1m1s 0s ");
        let shape = leak(
            RuleShape::parse(
                "t",
                "ip saddr != $allowed_sources drop",
                &[Slot::AllowedSources],
            )
            .unwrap(),
        );
        let cidrs: Arc<[Cidr]> = vec![
            Cidr::parse("1.2.3.4/32").unwrap(),
            Cidr::parse("10.0.0.0/8").unwrap(),
        ]
        .into();
        let rule = shape
            .bind(&[(Slot::AllowedSources, Value::Cidrs(cidrs.clone()))])
            .unwrap();
        assert_eq!(rule.to_string(), "ip saddr != { 1.2.3.4, 10.0.0.0/8 } drop");
        let one: Arc<[Cidr]> = cidrs[1..].into();
        let rule = shape
            .bind(&[(Slot::AllowedSources, Value::Cidrs(one))])
            .unwrap();
        assert_eq!(rule.to_string(), "ip saddr != 10.0.0.0/8 drop");
    }

    #[test]
    fn refuses_unknown_unoffered_and_comment() {
        assert_eq!(
            RuleShape::parse("t", "ip daddr $bogus", &Slot::ALL).unwrap_err(),
            ShapeError::UnknownSlot("bogus".into())
        );
        assert_eq!(
            RuleShape::parse("t", "ip daddr $cluster_ip", &[Slot::Family]).unwrap_err(),
            ShapeError::NotOffered("cluster_ip")
        );
        assert_eq!(
            RuleShape::parse("t", "accept comment \"x\"", &[]).unwrap_err(),
            ShapeError::Comment
        );
    }

    #[test]
    fn binding_checks_presence_and_kind() {
        let shape =
            leak(RuleShape::parse("t", "ip daddr $cluster_ip", &[Slot::ClusterIp]).unwrap());
        assert_eq!(
            shape.bind(&[]).unwrap_err(),
            ShapeError::Missing("cluster_ip")
        );
        assert_eq!(
            shape
                .bind(&[(Slot::ClusterIp, Value::Count(1))])
                .unwrap_err(),
            ShapeError::WrongKind("cluster_ip")
        );
    }
}
