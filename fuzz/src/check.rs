//! The properties every rendered fragment and script must have, whatever the objects said:
//!
//! - [`fragment`]: everything a Service's fragment contains belongs to that Service. Its chains
//!   and sets are its own (`<kind>-<namespace>/<name>/…`, exactly the names `render::names` gives
//!   its ports and endpoints) or its endpoint-map shard declared as the template says; its
//!   elements go only to the sets the base declares or to its own, with keys built from its own
//!   ClusterIPs, external and load-balancer IPs, ports and NodePorts or its endpoints' addresses,
//!   and verdicts that go to its own chains (or the base's reject chain); its rules refer only to
//!   its own chains and sets, its own addresses, its source ranges and the node's pod CIDR.
//! - [`script`]: an `nft -f` script carries no object text but validated names. Every line is
//!   printable ASCII, starts with `add`/`delete`/`flush` `<object> ip|ip6 kube-nft-proxy`, has
//!   balanced braces and quotes, no `;` outside braces and no `#`; every quoted string is a
//!   comment the proxy writes; every other word is template text, a number, an address, a prefix,
//!   or an allowed name. An injection would have to smuggle a word through one of these.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use kube_nft_proxy::backend::script::TABLE_COMMENT;
use kube_nft_proxy::model::{Cidr, EndpointSlice, Family, Protocol, Service, ServiceKey};
use kube_nft_proxy::plan::{NodeSettings, ServicePlan};
use kube_nft_proxy::render::Templates;
use kube_nft_proxy::render::names::{self, PortChains};
use kube_nft_proxy::ruleset::desired::Item;
use kube_nft_proxy::ruleset::{
    ChainName, Comment, Digest, ElementData, ElementKey, SetData, SetName, SetSpec, TABLE_NAME,
    Value,
};

/// The words the proxy itself writes: template text, set declarations, script syntax.
pub struct Vocabulary {
    words: HashSet<String>,
    comments: HashSet<String>,
}

/// Words of `nft -f` syntax the script writer and the IR's `Display` impls produce.
const SCRIPT_WORDS: &[&str] = &[
    "add",
    "delete",
    "flush",
    "table",
    "chain",
    "rule",
    "set",
    "map",
    "element",
    "ip",
    "ip6",
    "comment",
    "type",
    "typeof",
    "hook",
    "priority",
    "flags",
    "verdict",
    "goto",
    "jump",
    "drop",
    "accept",
    "tcp",
    "udp",
    "sctp",
    "ipv4_addr",
    "ipv6_addr",
    "inet_proto",
    "inet_service",
    "integer",
    "dynamic",
    "timeout",
    "filter",
    "nat",
    "prerouting",
    "input",
    "forward",
    "output",
    "postrouting",
    ":",
    ".",
    TABLE_NAME,
];

/// The proxy's vocabulary, read from the bundled templates once.
pub fn vocabulary() -> &'static Vocabulary {
    static VOCABULARY: OnceLock<Vocabulary> = OnceLock::new();
    VOCABULARY.get_or_init(|| {
        let t = Templates::bundled().expect("the bundled templates load");
        let mut v = Vocabulary {
            words: SCRIPT_WORDS.iter().map(|w| w.to_string()).collect(),
            comments: HashSet::from([TABLE_COMMENT.to_string()]),
        };
        for chain in t.chains() {
            if let Some(base) = chain.base {
                v.add_words(&base.to_string());
            }
            for rule in &chain.rules {
                for piece in rule.shape.pieces() {
                    if let kube_nft_proxy::ruleset::rule::Piece::Word(w) = piece {
                        v.add_words(w);
                    }
                }
            }
        }
        for (name, _) in &t.base_chains {
            v.words.insert(name.to_string());
        }
        let sets = t
            .sets
            .iter()
            .chain(t.endpoint_maps.iter().flatten())
            .chain([&t.affinity]);
        for set in sets {
            v.words.insert(set.name.to_string());
            for family in Family::ALL {
                let spec = set.spec(family);
                let mut text = spec.to_string();
                if let Some(c) = &spec.comment {
                    v.comments.insert(c.clone());
                    text = text.replace(&format!("\"{c}\""), " ");
                }
                v.add_words(&text);
            }
        }
        v
    })
}

impl Vocabulary {
    fn add_words(&mut self, text: &str) {
        for w in words(&text.replace('"', " ")) {
            self.words.insert(w.to_string());
        }
    }

    pub fn has_word(&self, w: &str) -> bool {
        self.words.contains(w)
    }

    /// A comment the proxy writes whoever the objects are: set comments, the table comment, the
    /// chain digests.
    pub fn fixed_comment(&self, c: &str) -> bool {
        self.comments.contains(c) || Digest::from_comment(c).is_some()
    }
}

/// Splits bare (unquoted) script text into words: whitespace and `{ } , ;` separate, a leading
/// `@` (set reference) is dropped.
fn words(bare: &str) -> impl Iterator<Item = &str> {
    bare.split(|c: char| c.is_ascii_whitespace() || matches!(c, '{' | '}' | ',' | ';'))
        .map(|w| w.trim_start_matches('@'))
        .filter(|w| !w.is_empty())
}

/// nft identifier syntax as the IR enforces it (see `ruleset::check_name`).
pub fn is_name(w: &str) -> bool {
    let mut bytes = w.bytes();
    w.len() <= 255
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'.' | b'-'))
}

/// A number, a mark, a duration, an address, a socket address or a prefix.
fn is_typed_value(w: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    if digits(w.strip_prefix('-').unwrap_or(w)) {
        return true;
    }
    if let Some(hex) = w.strip_prefix("0x") {
        return !hex.is_empty() && hex.len() <= 8 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    if is_duration(w) || w.parse::<IpAddr>().is_ok() || w.parse::<SocketAddr>().is_ok() {
        return true;
    }
    if let Some((addr, len)) = w.split_once('/') {
        return addr.parse::<IpAddr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 128);
    }
    false
}

/// `1d2h3m4s` and its parts, as nft writes durations.
fn is_duration(w: &str) -> bool {
    let mut rest = w;
    let mut units = ['d', 'h', 'm', 's'].into_iter();
    let mut any = false;
    while !rest.is_empty() {
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        let Some(unit) = rest[n..].chars().next() else {
            return false;
        };
        if n == 0 || !units.by_ref().any(|u| u == unit) {
            return false;
        }
        rest = &rest[n + 1..];
        any = true;
    }
    any
}

/// Counts from a script check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScriptStats {
    pub lines: usize,
    pub rules: usize,
    /// Elements added (each key of each `add element` line).
    pub elements: usize,
}

/// Checks an nft script line by line. `name` says which object names may appear (declared or
/// referred to), `comment` which quoted strings; `verbs` which commands may start a line.
pub fn script(
    text: &str,
    verbs: &[&str],
    name: &dyn Fn(&str) -> bool,
    comment: &dyn Fn(&str) -> bool,
) -> Result<ScriptStats, String> {
    let vocabulary = vocabulary();
    let mut stats = ScriptStats::default();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the script does not end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let fail = |why: String| Err(format!("script line {}: {why}: {line:?}", n + 1));
        if let Some(b) = line.bytes().find(|b| !(0x20..0x7f).contains(b)) {
            return fail(format!("byte {b:#04x} is not printable ASCII"));
        }
        let mut bare = String::with_capacity(line.len());
        let mut depth = 0usize;
        let mut quote: Option<usize> = None;
        for (i, c) in line.char_indices() {
            match (quote, c) {
                (Some(start), '"') => {
                    let text = &line[start..i];
                    if !comment(text) {
                        return fail(format!("unexpected quoted text {text:?}"));
                    }
                    quote = None;
                    bare.push(' ');
                }
                (Some(_), '\\') => return fail("a backslash in quoted text".into()),
                (Some(_), _) => {}
                (None, '"') => quote = Some(i + 1),
                (None, '#') => return fail("a `#` outside quotes starts a comment".into()),
                (None, ';') if depth == 0 => {
                    return fail("a `;` outside braces ends the command".into());
                }
                (None, '{') => {
                    depth += 1;
                    bare.push(c);
                }
                (None, '}') => {
                    let Some(d) = depth.checked_sub(1) else {
                        return fail("a `}` without `{`".into());
                    };
                    depth = d;
                    bare.push(c);
                }
                (None, _) => bare.push(c),
            }
        }
        if quote.is_some() {
            return fail("an unterminated quote".into());
        }
        if depth != 0 {
            return fail("unbalanced braces".into());
        }
        let all: Vec<&str> = words(&bare).collect();
        let [verb, object, family, table, rest @ ..] = &all[..] else {
            return fail("too few words".into());
        };
        if !verbs.contains(verb) {
            return fail(format!("command {verb:?}"));
        }
        if !["table", "chain", "rule", "set", "map", "element"].contains(object) {
            return fail(format!("object kind {object:?}"));
        }
        if !["ip", "ip6"].contains(family) || *table != TABLE_NAME {
            return fail("not one of the proxy's tables".into());
        }
        if *object != "table" {
            match rest.first() {
                Some(first) if is_name(first) && name(first) => {}
                other => return fail(format!("object name {other:?} is not allowed here")),
            }
        }
        match *object {
            "rule" => stats.rules += 1,
            "element" if *verb == "add" => {
                stats.elements += bare.matches(',').count() + 1;
            }
            _ => {}
        }
        for w in rest {
            if vocabulary.has_word(w) || is_typed_value(w) || (is_name(w) && name(w)) {
                continue;
            }
            // `@map:port` (a DNAT through a map, then the target port).
            if let Some((map, port)) = w.rsplit_once(':')
                && is_name(map)
                && name(map)
                && is_typed_value(port)
            {
                continue;
            }
            return fail(format!("unexpected word {w:?}"));
        }
        stats.lines += 1;
    }
    Ok(stats)
}

/// The names a script declares (`add chain|set|map … NAME`), for checking the references of a
/// whole transaction.
pub fn declared_names(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|line| {
            let mut w = line.split_ascii_whitespace();
            match (w.next(), w.next(), w.nth(2)) {
                (Some("add"), Some("chain" | "set" | "map"), Some(name)) => Some(name.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// A comment of an element some Service wrote: `namespace/name` or `namespace/name:port`, cut
/// to [`Comment::MAX_LEN`] bytes (so the port may be missing, or its name cut short).
pub fn service_comment(c: &str) -> bool {
    let label = |s: &str| {
        s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let (key, port) = c.split_once(':').unwrap_or((c, ""));
    c.len() <= Comment::MAX_LEN
        && label(port)
        && key
            .split_once('/')
            .is_some_and(|(ns, name)| !ns.is_empty() && label(ns) && label(name))
}

/// What the base fragment declares.
pub struct Base {
    pub sets: HashMap<(Family, SetName), Arc<SetSpec>>,
    pub chains: HashSet<ChainName>,
}

impl Base {
    pub fn new(items: &[Item]) -> Base {
        let mut base = Base {
            sets: HashMap::new(),
            chains: HashSet::new(),
        };
        for item in items {
            match item {
                Item::Set { family, name, spec } => {
                    base.sets.insert((*family, name.clone()), spec.clone());
                }
                Item::Chain { name, .. } => {
                    base.chains.insert(name.clone());
                }
                Item::Element { .. } => {}
            }
        }
        base
    }

    /// A name the base declares (any family).
    pub fn has_name(&self, name: &str) -> bool {
        self.chains.iter().any(|c| c.as_str() == name)
            || self.sets.keys().any(|(_, s)| s.as_str() == name)
    }
}

/// The names one Service may use: its own and its endpoint-map shards.
pub struct Own {
    prefixes: Vec<String>,
    chains: HashSet<ChainName>,
    affinity: HashSet<SetName>,
    shards: HashMap<SetName, [Arc<SetSpec>; 2]>,
    comments: HashSet<String>,
}

impl Own {
    /// The names of `plan`'s Service; endpoint chain and affinity set names only when
    /// `endpoint_names` (they are many, and only fragments with endpoint chains need them).
    pub fn new(key: &ServiceKey, plan: &ServicePlan, endpoint_names: bool) -> Result<Own, String> {
        let t = Templates::bundled().map_err(|e| e.to_string())?;
        let mut own = Own {
            prefixes: [
                "service", "local", "external", "firewall", "endpoint", "affinity",
            ]
            .iter()
            .map(|kind| format!("{kind}-{key}/"))
            .collect(),
            chains: HashSet::new(),
            affinity: HashSet::new(),
            shards: HashMap::new(),
            comments: HashSet::new(),
        };
        for map in t.endpoint_maps.iter().flatten() {
            let name = names::endpoint_map(&map.name, key).map_err(|e| e.to_string())?;
            own.shards.insert(
                name,
                [map.spec(Family::V4).clone(), map.spec(Family::V6).clone()],
            );
        }
        for port in &plan.ports {
            let chains =
                PortChains::new(key, port.protocol, &port.name).map_err(|e| e.to_string())?;
            own.chains.extend([
                chains.cluster,
                chains.local,
                chains.external,
                chains.firewall,
            ]);
            for ep in port
                .reachable_endpoints()
                .into_iter()
                .filter(|_| endpoint_names)
            {
                let err = |e: kube_nft_proxy::ruleset::NameError| e.to_string();
                own.chains.insert(
                    names::endpoint_chain(key, port.protocol, &port.name, ep).map_err(err)?,
                );
                own.affinity
                    .insert(names::affinity_set(key, port.protocol, &port.name, ep).map_err(err)?);
            }
            let text = format!("{key}:{}", port.name);
            let comment =
                Comment::shortened(text.trim_end_matches(':')).map_err(|e| e.to_string())?;
            own.comments.insert(comment.as_str().to_string());
        }
        Ok(own)
    }

    /// One of this Service's own object names (not shared with any other Service).
    pub fn is_own(&self, name: &str) -> bool {
        self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// A name this Service's fragment may declare or refer to.
    pub fn may_use(&self, base: &Base, name: &str) -> bool {
        self.is_own(name) || self.shards.keys().any(|s| s.as_str() == name) || base.has_name(name)
    }

    pub fn comment(&self, c: &str) -> bool {
        self.comments.contains(c)
    }
}

/// Checks that `items`, the fragment of `service`, stays inside that Service (see the module doc).
pub fn fragment(
    base: &Base,
    service: &Service,
    slices: &[Arc<EndpointSlice>],
    plan: &ServicePlan,
    settings: &NodeSettings,
    items: &[Item],
) -> Result<(), String> {
    let key = &service.key;
    let endpoint_prefixes = [format!("endpoint-{key}/"), format!("affinity-{key}/")];
    let endpoint_names = items.iter().any(|i| match i {
        Item::Chain { name, .. } => name.as_str().starts_with(&endpoint_prefixes[0]),
        Item::Set { name, .. } => name.as_str().starts_with(&endpoint_prefixes[1]),
        Item::Element { .. } => false,
    });
    let own = Own::new(key, plan, endpoint_names)?;
    let t = Templates::bundled().map_err(|e| e.to_string())?;
    let fail = |what: String| Err(format!("Service {key}: {what}"));

    let cluster_ips: HashSet<IpAddr> = service.cluster_ips.iter().copied().collect();
    let frontends: HashSet<IpAddr> = service
        .cluster_ips
        .iter()
        .chain(&service.external_ips)
        .chain(&service.load_balancer_ips)
        .copied()
        .collect();
    let endpoints: HashSet<IpAddr> = slices
        .iter()
        .filter(|s| s.service == *key)
        .flat_map(|s| s.endpoints.iter().map(|e| e.addr))
        .collect();
    let ports: HashSet<(Protocol, u16)> =
        service.ports.iter().map(|p| (p.protocol, p.port)).collect();
    let node_ports: HashSet<(Protocol, u16)> = service
        .ports
        .iter()
        .filter_map(|p| p.node_port.map(|n| (p.protocol, n)))
        .collect();
    let ranges: HashSet<Cidr> = service
        .load_balancer_source_ranges
        .iter()
        .copied()
        .chain(service.load_balancer_ips.iter().filter_map(|ip| {
            let host = match Family::of(ip) {
                Family::V4 => 32,
                Family::V6 => 128,
            };
            Cidr::new(*ip, host)
        }))
        .collect();

    // Sets first: elements and rules may refer to them.
    let mut sets: HashMap<(Family, SetName), Arc<SetSpec>> = HashMap::new();
    for item in items {
        if let Item::Set { family, name, spec } = item {
            let expected = if own.affinity.contains(name) {
                t.affinity.spec(*family)
            } else if let Some(specs) = own.shards.get(name) {
                &specs[family.index()]
            } else {
                return fail(format!("declares set {name:?}, not one of its own"));
            };
            if spec != expected {
                return fail(format!("declares set {name:?} as {spec}, not {expected}"));
            }
            if base.sets.contains_key(&(*family, name.clone())) {
                return fail(format!("redeclares the base's set {name:?}"));
            }
            sets.insert((*family, name.clone()), spec.clone());
        }
    }
    let chain_ok = |c: &ChainName| own.chains.contains(c) || base.chains.contains(c);
    for item in items {
        match item {
            Item::Set { .. } => {}
            Item::Chain {
                family,
                name,
                chain,
            } => {
                if !own.chains.contains(name) || !own.is_own(name.as_str()) {
                    return fail(format!("has chain {name:?}, not one of its own"));
                }
                if chain.base.is_some() {
                    return fail(format!("chain {name:?} is a base chain"));
                }
                for rule in &chain.rules {
                    for arg in rule.args() {
                        let bad = match arg {
                            Value::Chain(c) => !chain_ok(c),
                            Value::Chains(list) => !list.iter().all(chain_ok),
                            Value::Set(s) => !sets.contains_key(&(*family, s.clone())),
                            Value::Addr(a) => {
                                Family::of(a) != *family
                                    || !(cluster_ips.contains(a) || endpoints.contains(a))
                            }
                            Value::SocketAddr(s) => {
                                Family::of(&s.ip()) != *family || !endpoints.contains(&s.ip())
                            }
                            Value::Cidr(c) => settings.cluster_cidr(*family) != Some(*c),
                            Value::Cidrs(list) => !list
                                .iter()
                                .all(|c| c.family() == *family && ranges.contains(c)),
                            Value::Family(f) => f != family,
                            _ => false,
                        };
                        if bad {
                            return fail(format!("chain {name:?}: rule `{rule}` uses {arg:?}"));
                        }
                    }
                }
            }
            Item::Element {
                family,
                set,
                key: element,
                value,
            } => {
                let spec = match (
                    base.sets.get(&(*family, set.clone())),
                    sets.get(&(*family, set.clone())),
                ) {
                    (Some(spec), None) | (None, Some(spec)) => spec,
                    _ => return fail(format!("adds {element} to undeclared set {set:?}")),
                };
                if !element.fits(&spec.key) {
                    return fail(format!(
                        "element {element} does not fit set {set:?} ({spec})"
                    ));
                }
                let shard = own.shards.contains_key(set);
                let ok = match element {
                    ElementKey::Addr(a) => cluster_ips.contains(a) && !shard,
                    ElementKey::AddrProtoPort(a, p, n) => {
                        frontends.contains(a) && ports.contains(&(*p, *n)) && !shard
                    }
                    ElementKey::ProtoPort(p, n) => node_ports.contains(&(*p, *n)) && !shard,
                    ElementKey::AddrProtoPortIndex(a, p, n, _) => {
                        frontends.contains(a) && ports.contains(&(*p, *n)) && shard
                    }
                    ElementKey::ProtoPortIndex(p, n, _) => node_ports.contains(&(*p, *n)) && shard,
                    ElementKey::Hairpin(a) => endpoints.contains(a) && !shard,
                };
                if !ok {
                    return fail(format!(
                        "element {element} of {set:?} is not keyed by its own addresses and ports"
                    ));
                }
                let data_ok = match (&value.data, spec.data) {
                    (ElementData::None, SetData::None) => true,
                    (ElementData::Verdict(v), SetData::Verdict) => match v {
                        kube_nft_proxy::ruleset::Verdict::Goto(c)
                        | kube_nft_proxy::ruleset::Verdict::Jump(c) => chain_ok(c),
                        _ => true,
                    },
                    (ElementData::Target(a), SetData::Target(f)) => {
                        Family::of(a) == f && endpoints.contains(a)
                    }
                    _ => false,
                };
                if !data_ok {
                    return fail(format!("element {element} of {set:?} carries {value:?}"));
                }
                if let Some(c) = &value.comment
                    && !own.comment(c.as_str())
                {
                    return fail(format!("element {element} has comment {c:?}"));
                }
            }
        }
    }
    Ok(())
}
