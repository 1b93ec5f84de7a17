//! Reads our tables back over netlink into [`KernelTable`]s: chains (with hooks), rules (counted
//! per chain, digest from the first rule's comment), sets and maps with their elements. Like the
//! nft JSON reader, it is tolerant: what it does not recognise marks the object (or the table)
//! as not ours, so the next sync rewrites it, and never fails the whole read.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::batch::{
    DATA_VERDICT, SET_ANONYMOUS, SET_EVAL, SET_MAP, SET_TIMEOUT, key_component_len,
    key_type_number, target_type,
};
use super::socket::NfSocket;
use super::wire::{
    Attr, Message, Msg, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, nft_attrs, parse_udata,
};
use crate::model::{Family, Protocol};
use crate::ruleset::kernel::{ChainContent, KernelChain, KernelSet, KernelTable};
use crate::ruleset::{
    BaseChain, ChainName, ChainType, Comment, Digest, ElementData, ElementKey, ElementValue, Hook,
    KeyType, SetData, SetFlag, SetName, SetSpec, TABLE_NAME, Verdict,
};

const ENOENT: i32 = 2;

fn nf_family(f: Family) -> u8 {
    match f {
        Family::V4 => 2,
        Family::V6 => 10,
    }
}

fn attr<'a>(msg: &Message<'a>, kind: u16) -> Option<Attr<'a>> {
    nft_attrs(msg).find(|a| a.kind == kind)
}

fn nested<'a>(a: &Attr<'a>, kind: u16) -> Option<Attr<'a>> {
    a.nested().find(|n| n.kind == kind)
}

/// The comment in libnftnl udata (type `kind`), without its NUL.
fn udata_comment(data: &[u8], kind: u8) -> Option<String> {
    parse_udata(data)
        .into_iter()
        .find(|(k, _)| *k == kind)
        .and_then(|(_, v)| std::str::from_utf8(v.strip_suffix(&[0]).unwrap_or(v)).ok())
        .map(str::to_string)
}

/// Whether our table exists in `family`.
pub fn table_exists(sock: &mut NfSocket, family: Family) -> io::Result<bool> {
    let result = sock.request(
        |w, seq| {
            w.begin(
                Msg::GetTable.netlink_type(),
                NLM_F_REQUEST | NLM_F_ACK,
                seq,
                nf_family(family),
                0,
            );
            w.string(1, TABLE_NAME);
            w.end();
        },
        |_| {},
    );
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Dumps objects of kind `msg` in `family`, filtered by the string attributes `attrs`.
pub fn dump(
    sock: &mut NfSocket,
    msg: Msg,
    family: Family,
    attrs: &[(u16, &str)],
    mut each: impl FnMut(&Message<'_>),
) -> io::Result<()> {
    sock.request(
        |w, seq| {
            w.begin(
                msg.netlink_type(),
                NLM_F_REQUEST | NLM_F_DUMP,
                seq,
                nf_family(family),
                0,
            );
            for (kind, value) in attrs {
                w.string(*kind, value);
            }
            w.end();
        },
        |m| each(m),
    )
}

/// Reads our table in `family` (which must exist).
pub fn table(sock: &mut NfSocket, family: Family) -> io::Result<KernelTable> {
    let mut table = KernelTable::default();
    let ours =
        |m: &Message<'_>, kind: u16| attr(m, kind).and_then(|a| a.as_str()) == Some(TABLE_NAME);

    // The kernel does not filter chain dumps by table.
    dump(sock, Msg::GetChain, family, &[], |m| {
        if !ours(m, 1) {
            return;
        }
        match attr(m, 3).and_then(|a| a.as_str()).map(ChainName::new) {
            Some(Ok(name)) => {
                let chain = KernelChain {
                    base: base_chain(m),
                    content: ChainContent::Empty,
                };
                table.chains.insert(name, chain);
            }
            _ => table.foreign = true,
        }
    })?;

    // Per chain: rules and the digest of the first.
    let mut rules: BTreeMap<String, (usize, Option<Digest>)> = BTreeMap::new();
    dump(sock, Msg::GetRule, family, &[(1, TABLE_NAME)], |m| {
        let Some(chain) = attr(m, 2).and_then(|a| a.as_str()) else {
            return;
        };
        let entry = rules.entry(chain.to_string()).or_insert((0, None));
        if entry.0 == 0 {
            entry.1 = attr(m, 7)
                .and_then(|u| udata_comment(u.data, 0))
                .and_then(|c| Digest::from_comment(&c));
        }
        entry.0 += 1;
    })?;
    for (name, chain) in table.chains.iter_mut() {
        chain.content = rules
            .get(name.as_str())
            .map_or(ChainContent::Empty, |(count, digest)| {
                ChainContent::read(*count, *digest)
            });
    }

    let mut sets: Vec<(SetName, SetSpec)> = Vec::new();
    dump(sock, Msg::GetSet, family, &[(1, TABLE_NAME)], |m| {
        let flags = attr(m, 3).and_then(|a| a.as_u32()).unwrap_or(0);
        if flags & SET_ANONYMOUS != 0 {
            return; // belongs to a rule
        }
        match set(m, flags) {
            Some((name, Some(spec))) => sets.push((name, spec)),
            Some((name, None)) => {
                table.sets.insert(name, KernelSet::unrecognised());
            }
            None => table.foreign = true,
        }
    })?;
    for (name, spec) in sets {
        let mut elements = BTreeMap::new();
        let mut foreign_elements = false;
        // Elements of sets with timeouts are added by the packet path (affinity): not ours.
        if !spec.flags.contains(&SetFlag::Timeout) {
            dump(
                sock,
                Msg::GetSetElem,
                family,
                &[(2, name.as_str()), (1, TABLE_NAME)],
                |m| {
                    let Some(list) = attr(m, 3) else { return };
                    for item in list.nested() {
                        match element(&item, &spec) {
                            Some((k, v)) => {
                                elements.insert(k, v);
                            }
                            None => foreign_elements = true,
                        }
                    }
                },
            )?;
        }
        table.sets.insert(
            name,
            KernelSet {
                spec,
                elements,
                foreign_elements,
            },
        );
    }

    // Objects and flowtables we never create: someone else wrote into our table.
    for (msg, table_attr) in [(Msg::GetObj, 1), (Msg::GetFlowtable, 1)] {
        dump(sock, msg, family, &[(table_attr, TABLE_NAME)], |m| {
            if ours(m, table_attr) {
                table.foreign = true;
            }
        })?;
    }
    Ok(table)
}

fn base_chain(m: &Message<'_>) -> Option<BaseChain> {
    let hook = attr(m, 4)?;
    let hook_number = nested(&hook, 1)?.as_u32()?;
    let priority = nested(&hook, 2)?.as_u32()? as i32;
    let chain_type = ChainType::from_nft(attr(m, 7)?.as_str()?)?;
    let hook = match hook_number {
        0 => Hook::Prerouting,
        1 => Hook::Input,
        2 => Hook::Forward,
        3 => Hook::Output,
        4 => Hook::Postrouting,
        _ => return None,
    };
    Some(BaseChain {
        chain_type,
        hook,
        priority,
    })
}

/// A set's name and, if it has a shape we write, its declaration.
fn set(m: &Message<'_>, flags: u32) -> Option<(SetName, Option<SetSpec>)> {
    let name = SetName::new(attr(m, 2)?.as_str()?).ok()?;
    Some((name, set_spec(m, flags)))
}

fn set_spec(m: &Message<'_>, flags: u32) -> Option<SetSpec> {
    if flags & !(SET_MAP | SET_TIMEOUT | SET_EVAL) != 0 {
        return None;
    }
    // Properties we never set: a default timeout, a gc interval, a policy.
    if [11, 12, 8].iter().any(|k| attr(m, *k).is_some()) {
        return None;
    }
    let key = key_types(attr(m, 4)?.as_u32()?)?;
    let key_len: usize = key
        .iter()
        .map(|k| key_component_len(*k).next_multiple_of(4))
        .sum();
    if attr(m, 5)?.as_u32()? as usize != key_len {
        return None;
    }
    let data = if flags & SET_MAP == 0 {
        SetData::None
    } else {
        let data_type = attr(m, 6)?.as_u32()?;
        let data_len = attr(m, 7).and_then(|a| a.as_u32());
        let target =
            |f: Family| (data_type, data_len) == (target_type(f).0, Some(target_type(f).1));
        if data_type == DATA_VERDICT {
            SetData::Verdict
        } else if target(Family::V4) {
            SetData::Target(Family::V4)
        } else if target(Family::V6) {
            SetData::Target(Family::V6)
        } else {
            return None;
        }
    };
    let mut set_flags = Vec::new();
    if flags & SET_EVAL != 0 {
        set_flags.push(SetFlag::Dynamic);
    }
    if flags & SET_TIMEOUT != 0 {
        set_flags.push(SetFlag::Timeout);
    }
    set_flags.sort();
    Some(SetSpec {
        key,
        data,
        flags: set_flags,
        comment: attr(m, 13).and_then(|u| udata_comment(u.data, 7)),
    })
}

/// Splits a concatenated key type (6 bits per component) into our key types.
fn key_types(mut number: u32) -> Option<Vec<KeyType>> {
    let all = [
        KeyType::Ipv4Addr,
        KeyType::Ipv6Addr,
        KeyType::InetProto,
        KeyType::InetService,
        KeyType::Index,
    ];
    let mut out = Vec::new();
    while number != 0 {
        let part = number & 0x3f;
        out.push(all.into_iter().find(|k| key_type_number(*k) == part)?);
        number >>= 6;
    }
    out.reverse();
    (!out.is_empty()).then_some(out)
}

fn element(item: &Attr<'_>, spec: &SetSpec) -> Option<(ElementKey, ElementValue)> {
    // Interval markers and per-element timeouts are never ours.
    if [3, 4, 5].iter().any(|k| nested(item, *k).is_some()) {
        return None;
    }
    let key_bytes = nested(&nested(item, 1)?, 1)?.data;
    let key = decode_key(key_bytes, &spec.key)?;
    let data = nested(item, 2);
    let data = match (spec.data, data) {
        (SetData::Verdict, Some(d)) => ElementData::Verdict(decode_verdict(&nested(&d, 2)?)?),
        (SetData::Target(f), Some(d)) => {
            ElementData::Target(decode_target(nested(&d, 1)?.data, f)?)
        }
        (SetData::None, None) => ElementData::None,
        _ => return None,
    };
    let comment = match nested(item, 6).and_then(|u| udata_comment(u.data, 0)) {
        Some(c) => Some(Comment::new(&c).ok()?),
        None => None,
    };
    Some((key, ElementValue { data, comment }))
}

fn decode_addr(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
        _ => None,
    }
}

/// The address of a DNAT map element.
fn decode_target(bytes: &[u8], family: Family) -> Option<IpAddr> {
    let addr = decode_addr(bytes)?;
    (Family::of(&addr) == family).then_some(addr)
}

fn decode_key(bytes: &[u8], types: &[KeyType]) -> Option<ElementKey> {
    let mut parts = Vec::with_capacity(types.len());
    let mut at = 0;
    for t in types {
        let len = key_component_len(*t);
        parts.push(bytes.get(at..at + len)?);
        at += len.next_multiple_of(4);
    }
    if at != bytes.len() {
        return None;
    }
    let addr = decode_addr;
    let proto = |b: &[u8]| match b.first()? {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    };
    let port = |b: &[u8]| Some(u16::from_be_bytes(b.try_into().ok()?));
    let index = |b: &[u8]| Some(u32::from_ne_bytes(b.try_into().ok()?));
    use KeyType::{Index, InetService, Ipv4Addr, Ipv6Addr};
    let key = match (types, parts.as_slice()) {
        ([_], [a]) => ElementKey::Addr(addr(a)?),
        ([Ipv4Addr | Ipv6Addr, _], [a, b]) => {
            let a = addr(a)?;
            // Only pairs of one address are ours.
            (addr(b)? == a).then_some(ElementKey::Hairpin(a))?
        }
        ([_, _], [p, n]) => ElementKey::ProtoPort(proto(p)?, port(n)?),
        ([_, _, InetService], [a, p, n]) => {
            ElementKey::AddrProtoPort(addr(a)?, proto(p)?, port(n)?)
        }
        ([_, _, Index], [p, n, i]) => ElementKey::ProtoPortIndex(proto(p)?, port(n)?, index(i)?),
        ([_, _, _, _], [a, p, n, i]) => {
            ElementKey::AddrProtoPortIndex(addr(a)?, proto(p)?, port(n)?, index(i)?)
        }
        _ => return None,
    };
    key.fits(types).then_some(key)
}

fn decode_verdict(v: &Attr<'_>) -> Option<Verdict> {
    let code = i32::from_be_bytes(nested(v, 1)?.data.try_into().ok()?);
    let chain = || ChainName::new(nested(v, 2)?.as_str()?).ok();
    match code {
        0 => Some(Verdict::Drop),
        1 => Some(Verdict::Accept),
        -3 => Some(Verdict::Jump(chain()?)),
        -4 => Some(Verdict::Goto(chain()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types_split_concatenations() {
        assert_eq!(
            key_types(0x730d),
            Some(vec![
                KeyType::Ipv4Addr,
                KeyType::InetProto,
                KeyType::InetService
            ])
        );
        assert_eq!(key_types(8), Some(vec![KeyType::Ipv6Addr]));
        assert_eq!(key_types(1), None, "verdict keys are not ours");
        assert_eq!(
            key_types(0x30d << 6 | 4),
            Some(vec![
                KeyType::InetProto,
                KeyType::InetService,
                KeyType::Index
            ])
        );
        assert_eq!(key_types(0), None);
    }

    #[test]
    fn keys_decode_per_component() {
        let types = [KeyType::Ipv6Addr, KeyType::InetProto, KeyType::InetService];
        let mut b = vec![0u8; 16];
        b[0] = 0xfd;
        b[15] = 1;
        b.extend_from_slice(&[17, 0, 0, 0, 0, 53, 0, 0]);
        assert_eq!(
            decode_key(&b, &types),
            Some(ElementKey::AddrProtoPort(
                "fd00::1".parse().unwrap(),
                Protocol::Udp,
                53
            ))
        );
        assert_eq!(decode_key(&b[..20], &types), None);
        b[16] = 47; // GRE
        assert_eq!(decode_key(&b, &types), None);
    }
}
