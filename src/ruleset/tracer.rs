//! A packet tracer over a rendered [`Ruleset`], for unit tests: it follows a new connection's
//! first packet through our chains the way the kernel would (pre-DNAT filter, DNAT, post-DNAT
//! filter, SNAT), exploring every branch of a random endpoint choice, and reports the endpoints
//! reached and whether the packet was masqueraded, or REJECT / DROP. It understands exactly
//! the rule forms our templates produce and fails loudly on anything else, like upstream's
//! tracer, so plan and render decisions are checked without a kernel.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use super::{ChainName, ElementKey, Ruleset, SetName, Verdict};
use crate::model::{Cidr, Family, Protocol};

/// A new connection's first packet.
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

/// What happened to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// DNATed to these endpoints (all branches of the random choice), masqueraded or not.
    Reached {
        endpoints: BTreeSet<SocketAddr>,
        masquerade: bool,
    },
    Reject,
    Drop,
    /// Not touched by our rules.
    Untouched,
}

/// How a path through a chain ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// Fell off the end, or `return`: back to the caller.
    Return,
    Accept,
    Drop,
    Reject,
    Dnat(SocketAddr),
    Masquerade,
}

#[derive(Clone, Debug)]
struct Path {
    end: End,
    masquerade: bool,
}

/// Traces packets through one family's table.
pub struct Tracer<'a> {
    ruleset: &'a Ruleset,
    family: Family,
    /// The node's own addresses (`fib … type local`).
    local: Vec<IpAddr>,
}

impl<'a> Tracer<'a> {
    pub fn new(ruleset: &'a Ruleset, family: Family, local: &[IpAddr]) -> Tracer<'a> {
        Tracer {
            ruleset,
            family,
            local: local.to_vec(),
        }
    }

    /// Follows `packet`; panics on a rule form it does not know.
    pub fn trace(&self, packet: Packet) -> Outcome {
        let from_node = self.local.contains(&packet.src);
        let pre = if from_node {
            "filter-output-pre-dnat"
        } else {
            "filter-prerouting-pre-dnat"
        };
        for path in self.run(pre, &packet, false) {
            match path.end {
                End::Drop => return Outcome::Drop,
                End::Reject => return Outcome::Reject,
                _ => {}
            }
        }
        let nat = if from_node {
            "nat-output"
        } else {
            "nat-prerouting"
        };
        let paths = self.run(nat, &packet, false);
        let endpoints: BTreeSet<SocketAddr> = paths
            .iter()
            .filter_map(|p| match p.end {
                End::Dnat(to) => Some(to),
                _ => None,
            })
            .collect();
        if !endpoints.is_empty() {
            let masquerades: Vec<bool> = paths
                .iter()
                .map(|p| match p.end {
                    End::Dnat(to) => self.masquerades(&packet, to, p.masquerade),
                    _ => panic!("some branches not DNATed: {paths:?}"),
                })
                .collect();
            let masquerade = masquerades[0];
            assert!(
                masquerades.iter().all(|m| *m == masquerade),
                "branches disagree on masquerading"
            );
            return Outcome::Reached {
                endpoints,
                masquerade,
            };
        }
        let filter = if from_node {
            "filter-output"
        } else if self.local.contains(&packet.dst) {
            "filter-input"
        } else {
            "filter-forward"
        };
        for path in self.run(filter, &packet, false) {
            match path.end {
                End::Drop => return Outcome::Drop,
                End::Reject => return Outcome::Reject,
                _ => {}
            }
        }
        Outcome::Untouched
    }

    /// Whether SNAT (`nat-postrouting`) masquerades `packet` once DNATed to `to`, given whether
    /// it was marked for masquerading before.
    fn masquerades(&self, packet: &Packet, to: SocketAddr, marked: bool) -> bool {
        let after = Packet {
            dst: to.ip(),
            port: to.port(),
            ..*packet
        };
        self.run("nat-postrouting", &after, marked)
            .iter()
            .any(|p| p.end == End::Masquerade)
    }

    fn chain(&self, name: &str) -> Vec<String> {
        let name = ChainName::new(name).unwrap_or_else(|e| panic!("{e}"));
        let chain = self
            .ruleset
            .chain(self.family, &name)
            .unwrap_or_else(|| panic!("no chain {name}"));
        chain.rules.iter().map(|r| r.to_string()).collect()
    }

    /// Every way through `chain`.
    fn run(&self, chain: &str, packet: &Packet, masquerade: bool) -> Vec<Path> {
        let mut paths = Vec::new();
        self.run_from(&self.chain(chain), 0, packet, masquerade, &mut paths);
        paths
    }

    /// Runs `rules[at..]`, pushing every path's end.
    fn run_from(
        &self,
        rules: &[String],
        at: usize,
        packet: &Packet,
        masquerade: bool,
        out: &mut Vec<Path>,
    ) {
        let Some(rule) = rules.get(at) else {
            out.push(Path {
                end: End::Return,
                masquerade,
            });
            return;
        };
        for step in self.rule(rule, packet, masquerade) {
            match step {
                Step::Next(m) => self.run_from(rules, at + 1, packet, m, out),
                Step::Jump(target, m) => {
                    for path in self.run(&target, packet, m) {
                        match path.end {
                            End::Return => {
                                self.run_from(rules, at + 1, packet, path.masquerade, out)
                            }
                            _ => out.push(path),
                        }
                    }
                }
                Step::Goto(target, m) => out.extend(self.run(&target, packet, m)),
                Step::End(end, m) => out.push(Path { end, masquerade: m }),
            }
        }
    }

    /// What one rule does to the packet (several steps for a random choice).
    fn rule(&self, rule: &str, packet: &Packet, masquerade: bool) -> Vec<Step> {
        let text = rule.split(" comment \"").next().unwrap_or(rule);
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut i = 0;
        let fam = self.family.nft_name();
        // Matches, then one statement.
        loop {
            match &words[i..] {
                ["ct", "state", "new", ..] => i += 3,
                [
                    f,
                    dir @ ("saddr" | "daddr"),
                    ".",
                    "meta",
                    "l4proto",
                    ".",
                    "th",
                    "dport",
                    "vmap",
                    map,
                    ..,
                ] if *f == fam => {
                    let _ = dir;
                    let key = ElementKey::AddrProtoPort(packet.dst, packet.protocol, packet.port);
                    return self.vmap(map, &key, masquerade);
                }
                ["meta", "l4proto", ".", "th", "dport", "vmap", map, ..] => {
                    let key = ElementKey::ProtoPort(packet.protocol, packet.port);
                    return self.vmap(map, &key, masquerade);
                }
                [f, "saddr", ".", g, "daddr", set, ..] if *f == fam && *g == fam => {
                    let name =
                        SetName::new(set.trim_start_matches('@')).unwrap_or_else(|e| panic!("{e}"));
                    let key = ElementKey::Hairpin(packet.src);
                    if packet.src != packet.dst
                        || self.ruleset.element(self.family, &name, &key).is_none()
                    {
                        return vec![Step::Next(masquerade)];
                    }
                    i += 6;
                }
                [
                    "dnat",
                    "to",
                    f,
                    "daddr",
                    ".",
                    "meta",
                    "l4proto",
                    ".",
                    "th",
                    "dport",
                    ".",
                    "numgen",
                    "random",
                    "mod",
                    n,
                    "map",
                    target,
                ] if *f == fam => {
                    let key = |i| {
                        ElementKey::AddrProtoPortIndex(packet.dst, packet.protocol, packet.port, i)
                    };
                    return self.dnat_map(target, n, key, masquerade);
                }
                [
                    "dnat",
                    "to",
                    "meta",
                    "l4proto",
                    ".",
                    "th",
                    "dport",
                    ".",
                    "numgen",
                    "random",
                    "mod",
                    n,
                    "map",
                    target,
                ] => {
                    let key = |i| ElementKey::ProtoPortIndex(packet.protocol, packet.port, i);
                    return self.dnat_map(target, n, key, masquerade);
                }
                [f, dir @ ("saddr" | "daddr"), rest @ ..] if *f == fam => {
                    let addr = if *dir == "saddr" {
                        packet.src
                    } else {
                        packet.dst
                    };
                    let (negate, rest) = match rest {
                        ["!=", tail @ ..] => (true, tail),
                        _ => (false, rest),
                    };
                    let (matched, used) = self.matches(addr, rest);
                    if matched == negate {
                        return vec![Step::Next(masquerade)];
                    }
                    i += 2 + usize::from(negate) + used;
                }
                ["fib", dir @ ("saddr" | "daddr"), "type", "local", ..] => {
                    let addr = if *dir == "saddr" {
                        packet.src
                    } else {
                        packet.dst
                    };
                    if !self.local.contains(&addr) {
                        return vec![Step::Next(masquerade)];
                    }
                    i += 4;
                }
                ["meta", "l4proto", p, "dnat", "to", target] => {
                    assert_eq!(
                        Protocol::from_nft(p),
                        Some(packet.protocol),
                        "dnat for another protocol: {rule}"
                    );
                    let to: SocketAddr = target
                        .parse()
                        .unwrap_or_else(|_| panic!("bad dnat target in {rule}"));
                    return vec![Step::End(End::Dnat(to), masquerade)];
                }
                ["numgen", "random", "mod", _, "vmap", "{", rest @ ..] => {
                    return rest
                        .chunks(4)
                        .filter(|c| c.len() >= 3 && c[1] == ":")
                        .map(|c| Step::Goto(c[3].trim_end_matches(',').to_string(), masquerade))
                        .collect();
                }
                ["meta", "mark", "set", "meta", "mark", "|", _] => return vec![Step::Next(true)],
                ["meta", "mark", "&", _, "==", "0x00000000", "return"] => {
                    return if masquerade {
                        vec![Step::Next(masquerade)]
                    } else {
                        vec![Step::End(End::Return, masquerade)]
                    };
                }
                ["meta", "mark", "set", "meta", "mark", "^", _] => return vec![Step::Next(false)],
                ["masquerade", "fully-random"] => {
                    return vec![Step::End(End::Masquerade, masquerade)];
                }
                ["update", ..] => return vec![Step::Next(masquerade)],
                ["jump", target] => return vec![Step::Jump(target.to_string(), masquerade)],
                ["goto", target] => return vec![Step::Goto(target.to_string(), masquerade)],
                ["reject"] => return vec![Step::End(End::Reject, masquerade)],
                ["drop"] => return vec![Step::End(End::Drop, masquerade)],
                ["return"] => return vec![Step::End(End::Return, masquerade)],
                ["accept"] => return vec![Step::End(End::Accept, masquerade)],
                other => panic!("tracer does not know the rule form {other:?} (rule: {rule})"),
            }
        }
    }

    /// Whether `addr` matches the value at the start of `words`: an address, a prefix, an
    /// anonymous set `{ a, b }` or a named set `@name`. Returns the words used.
    fn matches(&self, addr: IpAddr, words: &[&str]) -> (bool, usize) {
        match words {
            ["{", ..] => {
                let end = words
                    .iter()
                    .position(|w| *w == "}")
                    .unwrap_or_else(|| panic!("unterminated set {words:?}"));
                let hit = words[1..end]
                    .iter()
                    .any(|w| prefix_contains(w.trim_end_matches(','), addr));
                (hit, end + 1)
            }
            [set, ..] if set.starts_with('@') => {
                let name = SetName::new(&set[1..]).unwrap_or_else(|e| panic!("{e}"));
                let hit = self
                    .ruleset
                    .element(self.family, &name, &ElementKey::Addr(addr))
                    .is_some();
                (hit, 1)
            }
            [value, ..] => (prefix_contains(value, addr), 1),
            [] => panic!("missing value"),
        }
    }

    /// `dnat to … numgen random mod N map @set:PORT`: one branch per index, DNATed to its
    /// element's address and the port; no element at all means the lookup fails and the rule
    /// does nothing.
    fn dnat_map(
        &self,
        target: &str,
        modulus: &str,
        key: impl Fn(u32) -> ElementKey,
        masquerade: bool,
    ) -> Vec<Step> {
        let (set, port) = target
            .trim_start_matches('@')
            .split_once(':')
            .unwrap_or_else(|| panic!("bad map target {target}"));
        let port: u16 = port
            .parse()
            .unwrap_or_else(|_| panic!("bad port in {target}"));
        let name = SetName::new(set).unwrap_or_else(|e| panic!("{e}"));
        let n: u32 = modulus
            .parse()
            .unwrap_or_else(|_| panic!("bad modulus {modulus}"));
        let targets: Vec<Option<IpAddr>> = (0..n)
            .map(|i| {
                self.ruleset
                    .element(self.family, &name, &key(i))
                    .and_then(|v| v.target())
            })
            .collect();
        if targets.iter().all(Option::is_none) {
            return vec![Step::Next(masquerade)];
        }
        targets
            .into_iter()
            .map(|t| {
                let to = t.unwrap_or_else(|| panic!("{set}: an index below {n} has no endpoint"));
                Step::End(End::Dnat(SocketAddr::new(to, port)), masquerade)
            })
            .collect()
    }

    fn vmap(&self, map: &str, key: &ElementKey, masquerade: bool) -> Vec<Step> {
        let name = SetName::new(map.trim_start_matches('@')).unwrap_or_else(|e| panic!("{e}"));
        match self
            .ruleset
            .element(self.family, &name, key)
            .and_then(|v| v.verdict().cloned())
        {
            None => vec![Step::Next(masquerade)],
            Some(Verdict::Goto(c)) => vec![Step::Goto(c.to_string(), masquerade)],
            Some(Verdict::Jump(c)) => vec![Step::Jump(c.to_string(), masquerade)],
            Some(Verdict::Drop) => vec![Step::End(End::Drop, masquerade)],
            Some(Verdict::Accept) => vec![Step::End(End::Accept, masquerade)],
        }
    }
}

/// One way a rule continues.
enum Step {
    /// No verdict: on to the next rule.
    Next(bool),
    Jump(String, bool),
    Goto(String, bool),
    End(End, bool),
}

fn prefix_contains(text: &str, addr: IpAddr) -> bool {
    if text.contains('/') {
        Cidr::parse(text).is_ok_and(|c| c.contains(&addr))
    } else {
        text.parse::<IpAddr>().is_ok_and(|a| a == addr)
    }
}
