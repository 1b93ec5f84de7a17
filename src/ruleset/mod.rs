//! The intermediate representation of what the proxy programs: per IP family one table holding
//! chains of rules and sets/maps of elements. [`desired::Ruleset`] is what the objects mean,
//! [`kernel::KernelState`] what the kernel holds as far as we know; `diff` turns the two into a
//! transaction.

pub mod desired;
pub mod kernel;
pub mod rule;
#[cfg(test)]
pub mod tracer;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{Family, Protocol};
pub use desired::{Owner, Ruleset};
pub use kernel::KernelState;
pub use rule::{Rule, RuleShape, Slot, Value};

/// The name of the proxy's table in each family.
pub const TABLE_NAME: &str = "kube-nft-proxy";

/// The longest object name the kernel accepts (NFT_NAME_MAXLEN minus the terminating NUL).
pub const MAX_NAME_LEN: usize = 255;

/// Why a name cannot be used for an nftables object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} cannot name an nftables object: {why}")]
pub struct NameError {
    pub name: String,
    pub why: &'static str,
}

/// Checks a chain or set name against nft's identifier syntax: a letter, then letters, digits and
/// `/ _ . -`. Such names need no quoting and cannot be keywords or carry other syntax.
fn check_name(name: &str) -> Result<(), NameError> {
    let fail = |why| {
        Err(NameError {
            name: crate::model::net::truncate(name),
            why,
        })
    };
    if name.len() > MAX_NAME_LEN {
        return fail("longer than 255 bytes");
    }
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() => {}
        _ => return fail("must start with a letter"),
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'.' | b'-')) {
        return fail("only letters, digits and / _ . - are allowed");
    }
    Ok(())
}

/// A validated chain name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChainName(Arc<str>);

impl ChainName {
    pub fn new(name: &str) -> Result<ChainName, NameError> {
        check_name(name).map(|()| ChainName(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated set or map name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetName(Arc<str>);

impl SetName {
    pub fn new(name: &str) -> Result<SetName, NameError> {
        check_name(name).map(|()| SetName(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! name_fmt {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
    };
}
name_fmt!(ChainName);
name_fmt!(SetName);

/// The type of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChainType {
    Filter,
    Nat,
}

/// A netfilter hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

/// What makes a chain a base chain: where it hooks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BaseChain {
    pub chain_type: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

impl ChainType {
    pub fn nft_name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        }
    }

    pub fn from_nft(s: &str) -> Option<ChainType> {
        [ChainType::Filter, ChainType::Nat]
            .into_iter()
            .find(|t| t.nft_name() == s)
    }
}

impl Hook {
    pub fn nft_name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }

    pub fn from_nft(s: &str) -> Option<Hook> {
        [
            Hook::Prerouting,
            Hook::Input,
            Hook::Forward,
            Hook::Output,
            Hook::Postrouting,
        ]
        .into_iter()
        .find(|h| h.nft_name() == s)
    }
}

impl fmt::Display for BaseChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {} hook {} priority {}",
            self.chain_type.nft_name(),
            self.hook.nft_name(),
            self.priority
        )
    }
}

/// A 64-bit FNV-1a digest of a chain's content. It travels with the chain as the comment of its
/// first rule, so a restarted proxy can tell which chains are already right without comparing rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Digest(pub u64);

impl Digest {
    /// Prefix of the rule comment that carries the digest.
    pub const COMMENT_PREFIX: &'static str = "knp:";

    fn of(text: &str) -> Digest {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        Digest(hash)
    }

    /// The rule comment text.
    pub fn comment(self) -> String {
        format!("{}{:016x}", Self::COMMENT_PREFIX, self.0)
    }

    /// Reads a digest back from a rule comment.
    pub fn from_comment(comment: &str) -> Option<Digest> {
        let hex = comment.strip_prefix(Self::COMMENT_PREFIX)?;
        (hex.len() == 16)
            .then(|| u64::from_str_radix(hex, 16).ok())
            .flatten()
            .map(Digest)
    }
}

/// A chain with its rules.
#[derive(Debug, PartialEq, Eq)]
pub struct Chain {
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
    digest: Digest,
}

impl Chain {
    pub fn new(base: Option<BaseChain>, rules: Vec<Rule>) -> Chain {
        let mut text = base.map(|b| b.to_string()).unwrap_or_default();
        for rule in &rules {
            text.push('\n');
            rule.write_text(&mut text);
        }
        Chain {
            base,
            digest: Digest::of(&text),
            rules,
        }
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }
}

/// The data type of one component of a set key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    Ipv4Addr,
    Ipv6Addr,
    InetProto,
    InetService,
    /// A 32-bit index (the result of `numgen`); declared with `typeof`.
    Index,
}

impl KeyType {
    /// The nft type name (`integer` for an index, which only `typeof` can declare).
    pub fn nft_name(self) -> &'static str {
        match self {
            KeyType::Ipv4Addr => "ipv4_addr",
            KeyType::Ipv6Addr => "ipv6_addr",
            KeyType::InetProto => "inet_proto",
            KeyType::InetService => "inet_service",
            KeyType::Index => "integer",
        }
    }

    pub fn from_nft(s: &str) -> Option<KeyType> {
        [
            KeyType::Ipv4Addr,
            KeyType::Ipv6Addr,
            KeyType::InetProto,
            KeyType::InetService,
            KeyType::Index,
        ]
        .into_iter()
        .find(|k| k.nft_name() == s)
    }

    /// The expression of a `typeof` declaration with this type (destination address and port).
    pub fn typeof_expr(self) -> &'static str {
        match self {
            KeyType::Ipv4Addr => "ip daddr",
            KeyType::Ipv6Addr => "ip6 daddr",
            KeyType::InetProto => "meta l4proto",
            KeyType::InetService => "th dport",
            KeyType::Index => "numgen random mod 1",
        }
    }

    /// The address type of `family`.
    pub fn addr(family: Family) -> KeyType {
        match family {
            Family::V4 => KeyType::Ipv4Addr,
            Family::V6 => KeyType::Ipv6Addr,
        }
    }
}

/// What a map's elements carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SetData {
    /// A set: nothing.
    None,
    /// A verdict map.
    Verdict,
    /// A DNAT map: an address of the family (the rule gives the port).
    Target(Family),
}

/// A set flag we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetFlag {
    /// Updated from the packet path (`update @set …`).
    Dynamic,
    /// Elements expire.
    Timeout,
}

impl SetFlag {
    pub fn nft_name(self) -> &'static str {
        match self {
            SetFlag::Dynamic => "dynamic",
            SetFlag::Timeout => "timeout",
        }
    }

    pub fn from_nft(s: &str) -> Option<SetFlag> {
        [SetFlag::Dynamic, SetFlag::Timeout]
            .into_iter()
            .find(|f| f.nft_name() == s)
    }
}

/// The declaration of a set or map.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SetSpec {
    pub key: Vec<KeyType>,
    pub data: SetData,
    /// Sorted, without duplicates.
    pub flags: Vec<SetFlag>,
    pub comment: Option<String>,
}

impl SetSpec {
    /// `set` or `map`.
    pub fn keyword(&self) -> &'static str {
        if self.data == SetData::None {
            "set"
        } else {
            "map"
        }
    }

    /// Declared with `typeof` (target maps: nft has no type name for a `numgen` index).
    pub fn uses_typeof(&self) -> bool {
        matches!(self.data, SetData::Target(_)) || self.key.contains(&KeyType::Index)
    }

    /// Whether a set read from the kernel is this one. `nft -j` does not report the `dynamic`
    /// flag (nft 1.0.6), so it is not compared.
    pub fn matches_kernel(&self, kernel: &SetSpec) -> bool {
        let significant = |s: &SetSpec| -> Vec<SetFlag> {
            s.flags
                .iter()
                .copied()
                .filter(|f| *f != SetFlag::Dynamic)
                .collect()
        };
        self.key == kernel.key
            && self.data == kernel.data
            && self.comment == kernel.comment
            && significant(self) == significant(kernel)
    }
}

impl fmt::Display for SetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let typed = self.uses_typeof();
        f.write_str(if typed { "typeof " } else { "type " })?;
        for (i, k) in self.key.iter().enumerate() {
            if i > 0 {
                f.write_str(" . ")?;
            }
            f.write_str(if typed { k.typeof_expr() } else { k.nft_name() })?;
        }
        match self.data {
            SetData::None => {}
            SetData::Verdict => f.write_str(" : verdict")?,
            SetData::Target(family) => write!(f, " : {} daddr", family.nft_name())?,
        }
        f.write_str(" ;")?;
        if !self.flags.is_empty() {
            f.write_str(" flags ")?;
            for (i, flag) in self.flags.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                f.write_str(flag.nft_name())?;
            }
            f.write_str(" ;")?;
        }
        if let Some(c) = &self.comment {
            write!(f, " comment \"{c}\" ;")?;
        }
        Ok(())
    }
}

/// The key of a set or map element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ElementKey {
    Addr(IpAddr),
    AddrProtoPort(IpAddr, Protocol, u16),
    ProtoPort(Protocol, u16),
    /// A destination and the index of an endpoint among the service port's endpoints.
    AddrProtoPortIndex(IpAddr, Protocol, u16, u32),
    ProtoPortIndex(Protocol, u16, u32),
    /// Source and destination address, the same one (`a . a`: hairpin traffic).
    Hairpin(IpAddr),
}

impl ElementKey {
    /// Whether this key fits a set declared with `key`.
    pub fn fits(&self, key: &[KeyType]) -> bool {
        use KeyType::{Index, InetProto, InetService};
        let addr_ok = |a: &IpAddr, t: &KeyType| *t == KeyType::addr(Family::of(a));
        match (self, key) {
            (ElementKey::Addr(a), [t]) => addr_ok(a, t),
            (ElementKey::AddrProtoPort(a, _, _), [t, InetProto, InetService]) => addr_ok(a, t),
            (ElementKey::ProtoPort(_, _), [InetProto, InetService]) => true,
            (ElementKey::AddrProtoPortIndex(a, ..), [t, InetProto, InetService, Index]) => {
                addr_ok(a, t)
            }
            (ElementKey::ProtoPortIndex(..), [InetProto, InetService, Index]) => true,
            (ElementKey::Hairpin(a), [t, u]) => addr_ok(a, t) && addr_ok(a, u),
            _ => false,
        }
    }
}

impl fmt::Display for ElementKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElementKey::Addr(a) => write!(f, "{a}"),
            ElementKey::AddrProtoPort(a, p, n) => write!(f, "{a} . {p} . {n}"),
            ElementKey::ProtoPort(p, n) => write!(f, "{p} . {n}"),
            ElementKey::AddrProtoPortIndex(a, p, n, i) => write!(f, "{a} . {p} . {n} . {i}"),
            ElementKey::ProtoPortIndex(p, n, i) => write!(f, "{p} . {n} . {i}"),
            ElementKey::Hairpin(a) => write!(f, "{a} . {a}"),
        }
    }
}

/// The verdict of a map element.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Goto(ChainName),
    Jump(ChainName),
    Drop,
    Accept,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Goto(c) => write!(f, "goto {c}"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Accept => f.write_str("accept"),
        }
    }
}

/// An element comment: printable ASCII without quotes or backslashes, at most 128 bytes (the
/// kernel's limit), so it can be written inside `"…"` as is.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Comment(Arc<str>);

impl Comment {
    /// The longest comment the kernel keeps.
    pub const MAX_LEN: usize = 128;

    /// A comment cut to [`Comment::MAX_LEN`] bytes (comments are informational).
    pub fn shortened(text: &str) -> Result<Comment, NameError> {
        let mut end = text.len().min(Self::MAX_LEN);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Comment::new(&text[..end])
    }

    pub fn new(text: &str) -> Result<Comment, NameError> {
        let ok = text.len() <= Self::MAX_LEN
            && text
                .bytes()
                .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
        if ok {
            Ok(Comment(Arc::from(text)))
        } else {
            Err(NameError {
                name: crate::model::net::truncate(text),
                why: "comments are printable ASCII without quotes, at most 128 bytes",
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}
name_fmt!(Comment);

/// The data of a map element.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum ElementData {
    /// A set's element.
    #[default]
    None,
    Verdict(Verdict),
    /// A DNAT map's address.
    Target(IpAddr),
}

/// What an element carries besides its key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct ElementValue {
    pub data: ElementData,
    pub comment: Option<Comment>,
}

impl ElementValue {
    pub fn verdict(&self) -> Option<&Verdict> {
        match &self.data {
            ElementData::Verdict(v) => Some(v),
            _ => None,
        }
    }

    pub fn target(&self) -> Option<IpAddr> {
        match &self.data {
            ElementData::Target(a) => Some(*a),
            _ => None,
        }
    }

    /// The data part as nft writes it after ` : ` (a verdict, or an address).
    pub fn data_text(&self) -> Option<String> {
        match &self.data {
            ElementData::None => None,
            ElementData::Verdict(v) => Some(v.to_string()),
            ElementData::Target(a) => Some(a.to_string()),
        }
    }
}

/// Identifies one object of a table, for scoping a diff to what changed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectRef {
    Set(Family, SetName),
    Chain(Family, ChainName),
    Element(Family, SetName, ElementKey),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_nft_identifier_syntax() {
        assert!(ChainName::new("service-ns/web/tcp/http").is_ok());
        assert!(ChainName::new("endpoint-ns/web/tcp/__fd00..1/80").is_ok());
        for bad in [
            "",
            "1abc",
            "a b",
            "a;b",
            "a\"",
            "a}",
            "a:b",
            "-a",
            &"a".repeat(256),
        ] {
            assert!(ChainName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digests_round_trip_through_comments() {
        let d = Digest::of("hello");
        assert_eq!(Digest::from_comment(&d.comment()), Some(d));
        assert_eq!(Digest::from_comment("knp:xyz"), None);
        assert_eq!(Digest::from_comment("other"), None);
    }

    #[test]
    fn element_keys_fit_their_sets() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let key = ElementKey::AddrProtoPort(v4, Protocol::Tcp, 80);
        assert!(key.fits(&[KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService]));
        assert!(!key.fits(&[KeyType::Ipv6Addr, KeyType::InetProto, KeyType::InetService]));
        assert!(!ElementKey::Addr(v4).fits(&[KeyType::InetProto, KeyType::InetService]));
        assert_eq!(key.to_string(), "10.0.0.1 . tcp . 80");
    }
}
