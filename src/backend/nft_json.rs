//! Reads `nft -j` output into [`KernelTable`]. Only our own tables are parsed, tolerantly: what we
//! do not recognise makes the object "unknown" (so it gets rewritten), never a failure of the
//! whole read.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;

use crate::model::{Family, Protocol};
use crate::ruleset::kernel::{ChainContent, KernelChain, KernelSet, KernelTable};
use crate::ruleset::{
    BaseChain, ChainName, ChainType, Comment, Digest, ElementData, ElementKey, ElementValue, Hook,
    KeyType, SetData, SetFlag, SetName, SetSpec, TABLE_NAME, Verdict,
};

fn objects(json: &[u8]) -> Result<Vec<Value>, String> {
    let doc: Value = serde_json::from_slice(json).map_err(|e| format!("invalid nft JSON: {e}"))?;
    match doc.get("nftables") {
        Some(Value::Array(list)) => Ok(list.clone()),
        _ => Err("nft JSON without an \"nftables\" array".into()),
    }
}

/// From `nft -j list tables`: the families that have our table.
pub fn our_tables(json: &[u8]) -> Result<Vec<Family>, String> {
    let mut families = Vec::new();
    for obj in objects(json)? {
        let Some(t) = obj.get("table") else { continue };
        if t.get("name").and_then(Value::as_str) != Some(TABLE_NAME) {
            continue;
        }
        match t.get("family").and_then(Value::as_str) {
            Some("ip") => families.push(Family::V4),
            Some("ip6") => families.push(Family::V6),
            _ => {}
        }
    }
    families.sort();
    families.dedup();
    Ok(families)
}

/// From `nft -j list table FAMILY kube-nft-proxy`.
pub fn table(json: &[u8]) -> Result<KernelTable, String> {
    let mut table = KernelTable::default();
    // Per chain: number of rules and the digest of the first one.
    let mut rules: BTreeMap<String, (usize, Option<Digest>)> = BTreeMap::new();
    for obj in objects(json)? {
        if let Some(c) = obj.get("chain") {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .and_then(|n| ChainName::new(n).ok());
            let Some(name) = name else {
                table.foreign = true;
                continue;
            };
            let chain = KernelChain {
                base: base_chain(c),
                content: ChainContent::Empty,
            };
            table.chains.insert(name, chain);
        } else if let Some(r) = obj.get("rule") {
            let Some(chain) = r.get("chain").and_then(Value::as_str) else {
                continue;
            };
            let entry = rules.entry(chain.to_string()).or_insert((0, None));
            if entry.0 == 0 {
                entry.1 = r
                    .get("comment")
                    .and_then(Value::as_str)
                    .and_then(Digest::from_comment);
            }
            entry.0 += 1;
        } else if let Some(s) = obj.get("set").or_else(|| obj.get("map")) {
            match set(s) {
                Some((name, set)) => {
                    table.sets.insert(name, set);
                }
                None => table.foreign = true,
            }
        } else if [
            "flowtable",
            "counter",
            "quota",
            "limit",
            "ct helper",
            "ct timeout",
            "secmark",
            "synproxy",
        ]
        .iter()
        .any(|kind| obj.get(*kind).is_some())
        {
            // Objects we never create: someone else wrote into our table.
            table.foreign = true;
        }
    }
    for (name, chain) in table.chains.iter_mut() {
        chain.content = rules
            .get(name.as_str())
            .map_or(ChainContent::Empty, |(count, digest)| {
                ChainContent::read(*count, *digest)
            });
    }
    Ok(table)
}

fn base_chain(c: &Value) -> Option<BaseChain> {
    let chain_type = ChainType::from_nft(c.get("type")?.as_str()?)?;
    let hook = Hook::from_nft(c.get("hook")?.as_str()?)?;
    let priority = i32::try_from(c.get("prio")?.as_i64()?).ok()?;
    Some(BaseChain {
        chain_type,
        hook,
        priority,
    })
}

fn set(s: &Value) -> Option<(SetName, KernelSet)> {
    let name = SetName::new(s.get("name")?.as_str()?).ok()?;
    let key: Option<Vec<KeyType>> = match s.get("type") {
        Some(Value::String(t)) => KeyType::from_nft(t).map(|k| vec![k]),
        Some(Value::Array(list)) => list
            .iter()
            .map(|t| t.as_str().and_then(KeyType::from_nft))
            .collect(),
        _ => None,
    };
    let data = match s.get("map").and_then(Value::as_str) {
        None if s.get("map").is_none() => SetData::None,
        Some("verdict") => SetData::Verdict,
        Some("ipv4_addr") => SetData::Target(Family::V4),
        Some("ipv6_addr") => SetData::Target(Family::V6),
        _ => return Some((name, KernelSet::unrecognised())),
    };
    // Properties we never set mean the set is not in the shape we expect. (`size` is what the
    // kernel gives dynamic sets by default.)
    let unexpected = ["timeout", "gc-interval", "policy"]
        .iter()
        .any(|p| s.get(*p).is_some());
    let flags: Option<Vec<SetFlag>> = match s.get("flags") {
        None => Some(Vec::new()),
        Some(Value::String(f)) => SetFlag::from_nft(f).map(|f| vec![f]),
        Some(Value::Array(list)) => list
            .iter()
            .map(|f| f.as_str().and_then(SetFlag::from_nft))
            .collect(),
        Some(_) => None,
    };
    let (Some(key), Some(mut flags)) = (key.filter(|_| !unexpected), flags) else {
        return Some((name, KernelSet::unrecognised()));
    };
    flags.sort();
    flags.dedup();
    let spec = SetSpec {
        key,
        data,
        flags,
        comment: s.get("comment").and_then(Value::as_str).map(str::to_string),
    };
    let mut elements = BTreeMap::new();
    let mut foreign_elements = false;
    // Elements of sets with timeouts are added by the packet path (affinity): not ours to diff.
    let packet_path = spec.flags.contains(&SetFlag::Timeout);
    let items = if packet_path {
        None
    } else {
        s.get("elem").and_then(Value::as_array)
    };
    for item in items.into_iter().flatten() {
        match element(item, &spec) {
            Some((k, v)) => {
                elements.insert(k, v);
            }
            None => foreign_elements = true,
        }
    }
    Some((
        name,
        KernelSet {
            spec,
            elements,
            foreign_elements,
        },
    ))
}

fn element(item: &Value, spec: &SetSpec) -> Option<(ElementKey, ElementValue)> {
    let (key_json, data_json) = if spec.data == SetData::None {
        (item, None)
    } else {
        let pair = item.as_array()?;
        (pair.first()?, Some(pair.get(1)?))
    };
    // `{"elem": {"val": KEY, "comment": "…"}}` wraps keys that carry a comment.
    let (key_json, comment) = match key_json.get("elem") {
        Some(e) => (e.get("val")?, e.get("comment").and_then(Value::as_str)),
        None => (key_json, None),
    };
    let parts: Vec<&Value> = match key_json.get("concat") {
        Some(Value::Array(list)) => list.iter().collect(),
        _ => vec![key_json],
    };
    let key = key(&parts, &spec.key)?;
    let data = match (spec.data, data_json) {
        (SetData::Verdict, Some(v)) => ElementData::Verdict(verdict(v)?),
        (SetData::Target(f), Some(t)) => {
            let addr: IpAddr = t.as_str()?.parse().ok()?;
            if Family::of(&addr) != f {
                return None;
            }
            ElementData::Target(addr)
        }
        (SetData::None, None) => ElementData::None,
        _ => return None,
    };
    let comment = match comment {
        Some(c) => Some(Comment::new(c).ok()?),
        None => None,
    };
    Some((key, ElementValue { data, comment }))
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn key(parts: &[&Value], types: &[KeyType]) -> Option<ElementKey> {
    let addr = |v: &Value| v.as_str()?.parse::<IpAddr>().ok();
    let proto = |v: &Value| Protocol::from_nft(v.as_str()?);
    let port = |v: &Value| number(v).and_then(|n| u16::try_from(n).ok());
    let index = |v: &Value| number(v).and_then(|n| u32::try_from(n).ok());
    let key = match (parts, types) {
        ([a], _) => ElementKey::Addr(addr(a)?),
        ([a, b], [KeyType::Ipv4Addr | KeyType::Ipv6Addr, _]) => {
            let a = addr(a)?;
            // Only pairs of one address are ours.
            (addr(b)? == a).then_some(ElementKey::Hairpin(a))?
        }
        ([p, n], _) => ElementKey::ProtoPort(proto(p)?, port(n)?),
        ([a, p, n], [_, _, KeyType::InetService]) => {
            ElementKey::AddrProtoPort(addr(a)?, proto(p)?, port(n)?)
        }
        ([p, n, i], [_, _, KeyType::Index]) => {
            ElementKey::ProtoPortIndex(proto(p)?, port(n)?, index(i)?)
        }
        ([a, p, n, i], _) => {
            ElementKey::AddrProtoPortIndex(addr(a)?, proto(p)?, port(n)?, index(i)?)
        }
        _ => return None,
    };
    key.fits(types).then_some(key)
}

fn verdict(v: &Value) -> Option<Verdict> {
    let target = |k: &str| {
        v.get(k)
            .and_then(|t| t.get("target"))
            .and_then(Value::as_str)
            .and_then(|n| ChainName::new(n).ok())
    };
    if let Some(c) = target("goto") {
        Some(Verdict::Goto(c))
    } else if let Some(c) = target("jump") {
        Some(Verdict::Jump(c))
    } else if v.get("drop").is_some() {
        Some(Verdict::Drop)
    } else if v.get("accept").is_some() {
        Some(Verdict::Accept)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_chains_rules_sets_and_elements() {
        let json = br#"{"nftables": [
          {"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "ip", "name": "kube-nft-proxy", "handle": 1}},
          {"set": {"family": "ip", "name": "cluster-ips", "table": "kube-nft-proxy", "type": "ipv4_addr",
                   "comment": "Active ClusterIPs", "elem": ["10.96.0.1", "10.96.0.2"]}},
          {"map": {"family": "ip", "name": "service-ips", "table": "kube-nft-proxy",
                   "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict",
                   "elem": [[{"concat": ["10.96.0.1", "tcp", 80]}, {"goto": {"target": "service-a/b/tcp/"}}],
                            [{"elem": {"val": {"concat": ["10.96.0.2", "udp", 53]}, "comment": "a/c:dns"}}, {"drop": null}],
                            [{"concat": ["10.96.0.3", "gre", 1]}, {"drop": null}]]}},
          {"chain": {"family": "ip", "table": "kube-nft-proxy", "name": "nat-prerouting", "handle": 2,
                     "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
          {"chain": {"family": "ip", "table": "kube-nft-proxy", "name": "service-a/b/tcp/", "handle": 3}},
          {"chain": {"family": "ip", "table": "kube-nft-proxy", "name": "stale", "handle": 4}},
          {"chain": {"family": "ip", "table": "kube-nft-proxy", "name": "foreign", "handle": 5}},
          {"rule": {"chain": "nat-prerouting", "comment": "knp:00000000000000ff", "expr": []}},
          {"rule": {"chain": "service-a/b/tcp/", "comment": "knp:0000000000000001", "expr": []}},
          {"rule": {"chain": "service-a/b/tcp/", "expr": []}},
          {"rule": {"chain": "foreign", "expr": []}}
        ]}"#;
        let t = table(json).unwrap();
        let nat = &t.chains[&ChainName::new("nat-prerouting").unwrap()];
        assert_eq!(nat.base.unwrap().priority, -100);
        assert_eq!(
            nat.content,
            ChainContent::Ours {
                digest: Digest(0xff),
                rules: 1
            }
        );
        assert_eq!(
            t.chains[&ChainName::new("service-a/b/tcp/").unwrap()].content,
            ChainContent::Ours {
                digest: Digest(1),
                rules: 2
            }
        );
        assert_eq!(
            t.chains[&ChainName::new("stale").unwrap()].content,
            ChainContent::Empty
        );
        assert_eq!(
            t.chains[&ChainName::new("foreign").unwrap()].content,
            ChainContent::Unknown
        );
        let ips = &t.sets[&SetName::new("cluster-ips").unwrap()];
        assert_eq!(ips.elements.len(), 2);
        assert!(!ips.foreign_elements);
        let map = &t.sets[&SetName::new("service-ips").unwrap()];
        assert_eq!(map.elements.len(), 2);
        assert!(map.foreign_elements, "the gre element is not ours");
        let dns = ElementKey::AddrProtoPort("10.96.0.2".parse().unwrap(), Protocol::Udp, 53);
        assert_eq!(
            map.elements[&dns].comment.as_ref().unwrap().as_str(),
            "a/c:dns"
        );
        assert_eq!(map.elements[&dns].verdict(), Some(&Verdict::Drop));
    }

    #[test]
    fn lists_only_our_tables() {
        let json = br#"{"nftables": [{"table": {"family": "ip6", "name": "kube-nft-proxy"}},
            {"table": {"family": "inet", "name": "kube-nft-proxy"}}, {"table": {"family": "ip", "name": "filter"}}]}"#;
        assert_eq!(our_tables(json).unwrap(), vec![Family::V6]);
        assert!(our_tables(b"not json").is_err());
    }
}
