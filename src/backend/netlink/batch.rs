//! Encodes a [`Transaction`] as one nf_tables batch: `BATCH_BEGIN`, one message per table, set,
//! chain, rule or group of elements, `BATCH_END`. The attributes (including libnftnl's "udata"
//! that nft reads back to print types and comments) are the ones nft 1.0.6 sends for the same
//! script, so `nft list` shows the same ruleset whichever backend wrote it. Each message's
//! sequence number leads back to what it was doing, so a refusal can name the object.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;

use super::compile::{AnonSet, CompileError, LowerError, Program, SetIds, compile};
use super::wire::{
    MSG_BATCH_BEGIN, MSG_BATCH_END, Msg, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
    SUBSYS_NFTABLES, Writer, cstring, udata,
};
use crate::backend::script::TABLE_COMMENT;
use crate::diff::{Op, Transaction};
use crate::model::{Cidr, Family};
use crate::ruleset::rule::{Rule, RuleShape};
use crate::ruleset::{
    BaseChain, ChainName, ChainType, ElementKey, ElementValue, Hook, KeyType, SetData, SetFlag,
    SetName, SetSpec, TABLE_NAME, Verdict,
};

/// Size at which a batch's buffer is closed and a new one started.
pub const CHUNK: usize = 1 << 20;

/// Elements per message: keeps the nested element list well under the 64 KiB attribute limit.
const ELEMENTS_PER_MESSAGE: usize = 256;

/// nf_tables set flags (`NFT_SET_*`).
pub const SET_ANONYMOUS: u32 = 0x1;
pub const SET_CONSTANT: u32 = 0x2;
pub const SET_INTERVAL: u32 = 0x4;
pub const SET_MAP: u32 = 0x8;
pub const SET_TIMEOUT: u32 = 0x10;
pub const SET_EVAL: u32 = 0x20;
/// `NFT_DATA_VERDICT`: the data type of verdict maps.
pub const DATA_VERDICT: u32 = 0xffff_ff00;
/// `NFT_SET_ELEM_INTERVAL_END`.
const ELEM_INTERVAL_END: u32 = 0x1;

/// nft's data type numbers (`enum datatypes`), concatenated 6 bits apart in set keys.
pub fn key_type_number(k: KeyType) -> u32 {
    match k {
        KeyType::Index => 4,
        KeyType::Ipv4Addr => 7,
        KeyType::Ipv6Addr => 8,
        KeyType::InetProto => 12,
        KeyType::InetService => 13,
    }
}

/// The data type number and length of a DNAT map's address data.
pub fn target_type(family: Family) -> (u32, u32) {
    let addr = KeyType::addr(family);
    (key_type_number(addr), key_component_len(addr) as u32)
}

/// Bytes of one key component (before padding to 4).
pub fn key_component_len(k: KeyType) -> usize {
    match k {
        KeyType::Index => 4,
        KeyType::Ipv4Addr => 4,
        KeyType::Ipv6Addr => 16,
        KeyType::InetProto => 1,
        KeyType::InetService => 2,
    }
}

/// libnftnl udata types of sets (`NFTNL_UDATA_SET_*`).
mod set_udata {
    pub const KEY_BYTEORDER: u8 = 0;
    pub const DATA_BYTEORDER: u8 = 1;
    pub const MERGE_ELEMENTS: u8 = 2;
    pub const KEY_TYPEOF: u8 = 3;
    pub const DATA_TYPEOF: u8 = 4;
    pub const DATA_INTERVAL: u8 = 6;
    pub const COMMENT: u8 = 7;
}

/// nft's byte orders as stored in udata.
const BYTEORDER_INVALID: u32 = 0;
const BYTEORDER_HOST: u32 = 1;
const BYTEORDER_BIG: u32 = 2;

/// nft's expression kinds in "typeof" udata.
const EXPR_VERDICT: u32 = 1;
const EXPR_PAYLOAD: u32 = 7;
const EXPR_META: u32 = 9;
const EXPR_CONCAT: u32 = 13;
const EXPR_NUMGEN: u32 = 23;
/// nft's protocol descriptions and header fields in payload typeof records.
const PROTO_TH: u32 = 11;
const PROTO_IP: u32 = 12;
const PROTO_IP6: u32 = 13;
const TH_DPORT: u32 = 2;
const META_L4PROTO: u32 = 16;

fn host(v: u32) -> [u8; 4] {
    v.to_ne_bytes()
}

/// The nested typeof record nft writes: `{ 0: kind, 1: { fields } }`.
fn typeof_udata(kind: u32, data: &[u8]) -> Vec<u8> {
    udata(&[(0, &host(kind)), (1, data)])
}

/// What a message of the batch was doing, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Doing {
    Batch,
    Op { index: usize, what: String },
}

/// An encoded batch and what each sequence number stands for.
pub struct Batch {
    /// The messages, in chunks of about [`CHUNK`] bytes (each message whole in one chunk), sent
    /// together with one `sendmsg`: a large batch never needs one contiguous, doubling buffer.
    pub chunks: Vec<Vec<u8>>,
    /// What each message does, by sequence number minus `seq_base`.
    doing: Vec<Doing>,
    seq_base: u32,
    /// The sequence number of `BATCH_END`.
    pub end_seq: u32,
}

impl Batch {
    /// What the message with sequence number `seq` was doing.
    pub fn doing(&self, seq: u32) -> Option<&Doing> {
        self.doing.get(seq.wrapping_sub(self.seq_base) as usize)
    }

    /// Messages in the batch, including its delimiters.
    pub fn messages(&self) -> usize {
        self.doing.len()
    }
}

/// Why a transaction could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Lower(#[from] LowerError),
}

/// Compiled programs by template (templates live for the whole run).
#[derive(Default)]
pub struct Programs {
    by_shape: HashMap<usize, Program>,
}

impl Programs {
    /// Compiles `shape` unless it already is.
    pub fn prepare(&mut self, shape: &'static RuleShape) -> Result<&Program, CompileError> {
        let key = shape as *const RuleShape as usize;
        Ok(match self.by_shape.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(compile(shape)?),
        })
    }

    pub fn len(&self) -> usize {
        self.by_shape.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_shape.is_empty()
    }
}

fn nf_family(f: Family) -> u8 {
    match f {
        Family::V4 => 2,  // NFPROTO_IPV4
        Family::V6 => 10, // NFPROTO_IPV6
    }
}

/// Builds one batch.
struct Encoder<'p> {
    w: Writer,
    /// Full chunks.
    chunks: Vec<Vec<u8>>,
    doing: Vec<Doing>,
    seq_base: u32,
    ids: SetIds,
    programs: &'p mut Programs,
}

impl Encoder<'_> {
    fn begin(&mut self, msg: Msg, flags: u16, family: Family, doing: Doing) {
        if self.w.len() >= CHUNK {
            let full = std::mem::take(&mut self.w);
            self.chunks.push(full.into_bytes());
            self.w.reserve(CHUNK + CHUNK / 8);
        }
        let seq = self.seq_base.wrapping_add(self.doing.len() as u32);
        self.doing.push(doing);
        self.w
            .begin(msg.netlink_type(), flags, seq, nf_family(family), 0);
    }

    /// `BATCH_BEGIN`, or `BATCH_END` asking for the acknowledgement that only a commit sends.
    fn delimiter(&mut self, kind: u16) -> u32 {
        let seq = self.seq_base.wrapping_add(self.doing.len() as u32);
        self.doing.push(Doing::Batch);
        let flags = if kind == MSG_BATCH_END {
            NLM_F_REQUEST | NLM_F_ACK
        } else {
            NLM_F_REQUEST
        };
        // AF_UNSPEC, res_id = the nf_tables subsystem.
        self.w.begin(kind, flags, seq, 0, SUBSYS_NFTABLES);
        self.w.end();
        seq
    }

    fn op(&mut self, index: usize, op: &Op) -> Result<(), EncodeError> {
        let family = op.family();
        let doing = |what: String| Doing::Op { index, what };
        match op {
            Op::AddTable(_) => {
                self.begin(
                    Msg::NewTable,
                    NLM_F_REQUEST,
                    family,
                    doing("add table".into()),
                );
                self.w.string(1, TABLE_NAME); // NFTA_TABLE_NAME
                self.w.u32(2, 0); // NFTA_TABLE_FLAGS
                self.w.bytes(6, &udata(&[(0, &cstring(TABLE_COMMENT))])); // USERDATA: comment
                self.w.end();
            }
            Op::DeleteTable(_) => {
                self.begin(
                    Msg::DelTable,
                    NLM_F_REQUEST,
                    family,
                    doing("delete table".into()),
                );
                self.w.string(1, TABLE_NAME);
                self.w.end();
            }
            Op::AddSet(_, name, spec) => {
                self.begin(
                    Msg::NewSet,
                    NLM_F_REQUEST | NLM_F_CREATE,
                    family,
                    doing(format!("add {} {name}", spec.keyword())),
                );
                self.named_set(name, spec);
                self.w.end();
            }
            Op::FlushSet(_, name) => {
                self.begin(
                    Msg::DelSetElem,
                    NLM_F_REQUEST,
                    family,
                    doing(format!("flush set {name}")),
                );
                self.w.string(2, name.as_str()); // NFTA_SET_ELEM_LIST_SET
                self.w.string(1, TABLE_NAME); // NFTA_SET_ELEM_LIST_TABLE
                self.w.end();
            }
            Op::DeleteSet(_, name) => {
                self.begin(
                    Msg::DelSet,
                    NLM_F_REQUEST,
                    family,
                    doing(format!("delete set {name}")),
                );
                self.w.string(1, TABLE_NAME); // NFTA_SET_TABLE
                self.w.string(2, name.as_str()); // NFTA_SET_NAME
                self.w.end();
            }
            Op::AddChain(_, name, base) => {
                self.begin(
                    Msg::NewChain,
                    NLM_F_REQUEST | NLM_F_CREATE,
                    family,
                    doing(format!("add chain {name}")),
                );
                self.w.string(1, TABLE_NAME); // NFTA_CHAIN_TABLE
                self.w.string(3, name.as_str()); // NFTA_CHAIN_NAME
                if let Some(base) = base {
                    write_base_chain(&mut self.w, base);
                }
                self.w.end();
            }
            Op::FlushChain(_, name) => {
                self.begin(
                    Msg::DelRule,
                    NLM_F_REQUEST,
                    family,
                    doing(format!("flush chain {name}")),
                );
                self.w.string(1, TABLE_NAME); // NFTA_RULE_TABLE
                self.w.string(2, name.as_str()); // NFTA_RULE_CHAIN
                self.w.end();
            }
            Op::DeleteChain(_, name) => {
                self.begin(
                    Msg::DelChain,
                    NLM_F_REQUEST,
                    family,
                    doing(format!("delete chain {name}")),
                );
                self.w.string(1, TABLE_NAME);
                self.w.string(3, name.as_str());
                self.w.end();
            }
            Op::AddRules(_, name, chain) => {
                let digest = chain.digest().comment();
                for (i, rule) in chain.rules.iter().enumerate() {
                    let comment = (i == 0).then_some(digest.as_str());
                    self.rule(index, family, name, i, rule, comment)?;
                }
            }
            Op::AddElements(_, set, elements) => {
                for (n, chunk) in elements.chunks(ELEMENTS_PER_MESSAGE).enumerate() {
                    let first = n * ELEMENTS_PER_MESSAGE;
                    self.begin(
                        Msg::NewSetElem,
                        NLM_F_REQUEST | NLM_F_CREATE,
                        family,
                        doing(format!(
                            "add elements {first}..{} to {set}",
                            first + chunk.len()
                        )),
                    );
                    self.w.string(1, TABLE_NAME);
                    self.w.string(2, set.as_str());
                    self.w.open(3); // NFTA_SET_ELEM_LIST_ELEMENTS
                    for (key, value) in chunk {
                        write_element(&mut self.w, key, Some(value));
                    }
                    self.w.close();
                    self.w.end();
                }
            }
            Op::DeleteElements(_, set, keys) => {
                for (n, chunk) in keys.chunks(ELEMENTS_PER_MESSAGE).enumerate() {
                    let first = n * ELEMENTS_PER_MESSAGE;
                    self.begin(
                        Msg::DelSetElem,
                        NLM_F_REQUEST,
                        family,
                        doing(format!(
                            "delete elements {first}..{} from {set}",
                            first + chunk.len()
                        )),
                    );
                    self.w.string(1, TABLE_NAME);
                    self.w.string(2, set.as_str());
                    self.w.open(3);
                    for key in chunk {
                        write_element(&mut self.w, key, None);
                    }
                    self.w.close();
                    self.w.end();
                }
            }
        }
        Ok(())
    }

    fn named_set(&mut self, name: &SetName, spec: &SetSpec) {
        let w = &mut self.w;
        w.string(1, TABLE_NAME); // NFTA_SET_TABLE
        w.string(2, name.as_str()); // NFTA_SET_NAME
        let mut flags = 0;
        if spec.data != SetData::None {
            flags |= SET_MAP;
        }
        for f in &spec.flags {
            flags |= match f {
                SetFlag::Timeout => SET_TIMEOUT,
                SetFlag::Dynamic => SET_EVAL,
            };
        }
        w.u32(3, flags); // NFTA_SET_FLAGS
        let key_type = spec
            .key
            .iter()
            .fold(0u32, |acc, k| (acc << 6) | key_type_number(*k));
        let key_len: usize = spec
            .key
            .iter()
            .map(|k| key_component_len(*k).next_multiple_of(4))
            .sum();
        w.u32(4, key_type); // NFTA_SET_KEY_TYPE
        w.u32(5, key_len as u32); // NFTA_SET_KEY_LEN
        match spec.data {
            SetData::None => {}
            SetData::Verdict => {
                w.u32(6, DATA_VERDICT); // NFTA_SET_DATA_TYPE
                w.u32(7, 0); // NFTA_SET_DATA_LEN
            }
            SetData::Target(family) => {
                let (data_type, data_len) = target_type(family);
                w.u32(6, data_type);
                w.u32(7, data_len);
            }
        }
        let id = self.ids.allocate();
        w.u32(10, id); // NFTA_SET_ID
        w.bytes(13, &named_set_udata(spec)); // NFTA_SET_USERDATA
    }

    fn rule(
        &mut self,
        index: usize,
        family: Family,
        chain: &ChainName,
        position: usize,
        rule: &Rule,
        comment: Option<&str>,
    ) -> Result<(), EncodeError> {
        let lowered =
            self.programs
                .prepare(rule.shape())?
                .lower(rule.args(), family, &mut self.ids)?;
        let what = || format!("rule {position} ({}) of chain {chain}", rule.shape().id());
        for anon in &lowered.anon_sets {
            self.begin(
                Msg::NewSet,
                NLM_F_REQUEST | NLM_F_CREATE,
                family,
                Doing::Op {
                    index,
                    what: format!("anonymous set of {}", what()),
                },
            );
            write_anon_set(&mut self.w, anon);
            self.w.end();
            self.begin(
                Msg::NewSetElem,
                NLM_F_REQUEST | NLM_F_CREATE,
                family,
                Doing::Op {
                    index,
                    what: format!("elements of the anonymous set of {}", what()),
                },
            );
            write_anon_elements(&mut self.w, anon);
            self.w.end();
        }
        self.begin(
            Msg::NewRule,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND,
            family,
            Doing::Op {
                index,
                what: format!("add {}", what()),
            },
        );
        self.w.string(1, TABLE_NAME); // NFTA_RULE_TABLE
        self.w.string(2, chain.as_str()); // NFTA_RULE_CHAIN
        self.w.open(4); // NFTA_RULE_EXPRESSIONS
        for e in &lowered.exprs {
            e.write(&mut self.w);
        }
        self.w.close();
        if let Some(c) = comment {
            self.w.bytes(7, &udata(&[(0, &cstring(c))])); // NFTA_RULE_USERDATA: comment
        }
        self.w.end();
        Ok(())
    }
}

/// The udata nft writes for a named set or map of ours.
fn named_set_udata(spec: &SetSpec) -> Vec<u8> {
    use set_udata::*;
    let concat = spec.key.len() > 1;
    let mut tlvs: Vec<(u8, Vec<u8>)> = Vec::new();
    match spec.data {
        SetData::Target(family) => {
            // Declared with typeof: the key and data expressions are recorded.
            let key: Vec<Vec<u8>> = spec.key.iter().map(|k| key_typeof_of(*k)).collect();
            let key_order = if concat {
                BYTEORDER_INVALID
            } else {
                BYTEORDER_BIG
            };
            tlvs.push((KEY_BYTEORDER, host(key_order).to_vec()));
            tlvs.push((DATA_BYTEORDER, host(BYTEORDER_BIG).to_vec()));
            let key_typeof = if concat {
                concat_typeof(&key)
            } else {
                key.concat()
            };
            tlvs.push((KEY_TYPEOF, key_typeof));
            tlvs.push((DATA_TYPEOF, key_typeof_of(KeyType::addr(family))));
            tlvs.push((DATA_INTERVAL, host(0).to_vec()));
        }
        SetData::Verdict | SetData::None => {
            let key_order = if concat {
                BYTEORDER_INVALID
            } else {
                BYTEORDER_BIG
            };
            let verdicts = spec.data == SetData::Verdict;
            tlvs.push((KEY_BYTEORDER, host(key_order).to_vec()));
            if verdicts {
                tlvs.push((DATA_BYTEORDER, host(BYTEORDER_INVALID).to_vec()));
            }
            if concat {
                tlvs.push((KEY_TYPEOF, typeof_udata(EXPR_CONCAT, &[])));
            }
            if verdicts {
                tlvs.push((DATA_INTERVAL, host(0).to_vec()));
            }
        }
    }
    if let Some(c) = &spec.comment {
        tlvs.push((COMMENT, cstring(c)));
    }
    let refs: Vec<(u8, &[u8])> = tlvs.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    udata(&refs)
}

/// The typeof record of the expression a typeof declaration uses for `k`.
fn key_typeof_of(k: KeyType) -> Vec<u8> {
    let fields = |list: &[u32]| -> Vec<u8> {
        let values: Vec<[u8; 4]> = list.iter().map(|v| host(*v)).collect();
        let tlvs: Vec<(u8, &[u8])> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u8, v.as_slice()))
            .collect();
        udata(&tlvs)
    };
    match k {
        KeyType::Ipv4Addr => payload_typeof(Family::V4, false),
        KeyType::Ipv6Addr => payload_typeof(Family::V6, false),
        KeyType::InetProto => typeof_udata(EXPR_META, &fields(&[META_L4PROTO])),
        KeyType::InetService => typeof_udata(EXPR_PAYLOAD, &fields(&[PROTO_TH, TH_DPORT])),
        // numgen random (1) mod 1, offset 0.
        KeyType::Index => typeof_udata(EXPR_NUMGEN, &fields(&[1, 1, 0])),
    }
}

/// The typeof record of a concatenation.
fn concat_typeof(parts: &[Vec<u8>]) -> Vec<u8> {
    let tlvs: Vec<(u8, &[u8])> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u8, p.as_slice()))
        .collect();
    typeof_udata(EXPR_CONCAT, &udata(&tlvs))
}

fn write_base_chain(w: &mut Writer, base: &BaseChain) {
    w.string(
        7, // NFTA_CHAIN_TYPE
        match base.chain_type {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        },
    );
    w.open(4); // NFTA_CHAIN_HOOK
    w.u32(
        1, // NFTA_HOOK_HOOKNUM
        match base.hook {
            Hook::Prerouting => 0,
            Hook::Input => 1,
            Hook::Forward => 2,
            Hook::Output => 3,
            Hook::Postrouting => 4,
        },
    );
    w.bytes(2, &base.priority.to_be_bytes()); // NFTA_HOOK_PRIORITY
    w.close();
}

fn addr_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A key as the kernel stores it: each component padded to 4 bytes (an index in host order).
pub fn key_bytes(key: &ElementKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(36);
    let proto_port = |out: &mut Vec<u8>, proto: u8, port: u16| {
        out.extend_from_slice(&[proto, 0, 0, 0]);
        out.extend_from_slice(&port.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
    };
    match key {
        ElementKey::Addr(a) => out.extend(addr_bytes(a)),
        ElementKey::AddrProtoPort(a, p, n) => {
            out.extend(addr_bytes(a));
            proto_port(&mut out, p.ip_number(), *n);
        }
        ElementKey::ProtoPort(p, n) => proto_port(&mut out, p.ip_number(), *n),
        ElementKey::AddrProtoPortIndex(a, p, n, i) => {
            out.extend(addr_bytes(a));
            proto_port(&mut out, p.ip_number(), *n);
            out.extend_from_slice(&host(*i));
        }
        ElementKey::ProtoPortIndex(p, n, i) => {
            proto_port(&mut out, p.ip_number(), *n);
            out.extend_from_slice(&host(*i));
        }
        ElementKey::Hairpin(a) => {
            out.extend(addr_bytes(a));
            out.extend(addr_bytes(a));
        }
    }
    out
}

fn write_key(w: &mut Writer, kind: u16, bytes: &[u8]) {
    w.open(kind);
    w.bytes(1, bytes); // NFTA_DATA_VALUE
    w.close();
}

fn write_verdict(w: &mut Writer, v: &Verdict) {
    let (code, chain): (i32, Option<&ChainName>) = match v {
        Verdict::Drop => (0, None),
        Verdict::Accept => (1, None),
        Verdict::Jump(c) => (-3, Some(c)),
        Verdict::Goto(c) => (-4, Some(c)),
    };
    write_verdict_code(w, code, chain.map(ChainName::as_str));
}

fn write_verdict_code(w: &mut Writer, code: i32, chain: Option<&str>) {
    w.open(2); // NFTA_SET_ELEM_DATA
    w.open(2); // NFTA_DATA_VERDICT
    w.bytes(1, &code.to_be_bytes()); // NFTA_VERDICT_CODE
    if let Some(c) = chain {
        w.string(2, c); // NFTA_VERDICT_CHAIN
    }
    w.close();
    w.close();
}

fn write_element(w: &mut Writer, key: &ElementKey, value: Option<&ElementValue>) {
    w.open(1); // NFTA_LIST_ELEM
    write_key(w, 1, &key_bytes(key)); // NFTA_SET_ELEM_KEY
    if let Some(value) = value {
        if let Some(v) = value.verdict() {
            write_verdict(w, v);
        } else if let Some(t) = &value.target() {
            write_key(w, 2, &addr_bytes(t)); // NFTA_SET_ELEM_DATA { NFTA_DATA_VALUE }
        }
        if let Some(c) = &value.comment {
            w.bytes(6, &udata(&[(0, &cstring(c.as_str()))])); // NFTA_SET_ELEM_USERDATA
        }
    }
    w.close();
}

/// The typeof udata of `ip|ip6 saddr|daddr` (nft's payload description and field numbers).
fn payload_typeof(family: Family, saddr: bool) -> Vec<u8> {
    // IPv4: saddr 11, daddr 12; IPv6: saddr 8, daddr 9 (nft's header field numbers).
    let (proto, field) = match (family, saddr) {
        (Family::V4, true) => (PROTO_IP, 11),
        (Family::V4, false) => (PROTO_IP, 12),
        (Family::V6, true) => (PROTO_IP6, 8),
        (Family::V6, false) => (PROTO_IP6, 9),
    };
    let fields = udata(&[(0, &host(proto)), (1, &host(field))]);
    typeof_udata(EXPR_PAYLOAD, &fields)
}

fn write_anon_set(w: &mut Writer, anon: &AnonSet) {
    use set_udata::*;
    w.string(1, TABLE_NAME);
    w.string(2, anon.name());
    match anon {
        AnonSet::Vmap { id, chains } => {
            w.u32(3, SET_ANONYMOUS | SET_CONSTANT | SET_MAP);
            w.u32(4, 4); // integer
            w.u32(5, 4);
            w.u32(6, DATA_VERDICT);
            w.u32(7, 0);
            w.u32(10, *id);
            w.open(9); // NFTA_SET_DESC
            w.u32(1, chains.len() as u32); // NFTA_SET_DESC_SIZE
            w.close();
            let data_typeof = typeof_udata(EXPR_VERDICT, &[]);
            w.bytes(
                13,
                &udata(&[
                    (KEY_BYTEORDER, &host(BYTEORDER_HOST)),
                    (DATA_BYTEORDER, &host(BYTEORDER_INVALID)),
                    (DATA_TYPEOF, &data_typeof),
                    (DATA_INTERVAL, &host(0)),
                ]),
            );
        }
        AnonSet::Prefixes {
            id,
            family,
            saddr,
            prefixes,
        } => {
            let (key_type, key_len) = match family {
                Family::V4 => (7, 4),
                Family::V6 => (8, 16),
            };
            w.u32(3, SET_ANONYMOUS | SET_CONSTANT | SET_INTERVAL);
            w.u32(4, key_type);
            w.u32(5, key_len);
            w.u32(10, *id);
            w.open(9);
            w.u32(1, interval_elements(prefixes).len() as u32);
            w.close();
            let key_typeof = payload_typeof(*family, *saddr);
            w.bytes(
                13,
                &udata(&[
                    (KEY_BYTEORDER, &host(BYTEORDER_BIG)),
                    (MERGE_ELEMENTS, &host(1)),
                    (KEY_TYPEOF, &key_typeof),
                ]),
            );
        }
    }
}

fn write_anon_elements(w: &mut Writer, anon: &AnonSet) {
    w.string(1, TABLE_NAME); // NFTA_SET_ELEM_LIST_TABLE
    w.string(2, anon.name()); // NFTA_SET_ELEM_LIST_SET
    w.u32(4, anon.id()); // NFTA_SET_ELEM_LIST_SET_ID
    w.open(3);
    match anon {
        AnonSet::Vmap { chains, .. } => {
            for (i, chain) in chains.iter().enumerate() {
                w.open(1);
                write_key(w, 1, &host(i as u32));
                write_verdict_code(w, -4, Some(chain));
                w.close();
            }
        }
        AnonSet::Prefixes { prefixes, .. } => {
            for (key, end) in interval_elements(prefixes) {
                w.open(1);
                if end {
                    w.u32(3, ELEM_INTERVAL_END); // NFTA_SET_ELEM_FLAGS
                }
                write_key(w, 1, &key);
                w.close();
            }
        }
    }
    w.close();
}

/// The elements of an interval set holding `prefixes`, as nft builds them: sorted, adjacent and
/// overlapping ranges merged, each range as its start and an end marker one past its last
/// address, with an end marker at zero first when the first range does not start there and no
/// end marker after a range that runs to the last address.
pub fn interval_elements(prefixes: &[Cidr]) -> Vec<(Vec<u8>, bool)> {
    let mut ranges: Vec<(u128, u128, usize)> = prefixes
        .iter()
        .map(|c| {
            let (value, width) = match c.addr() {
                IpAddr::V4(a) => (u128::from(u32::from(a)), 32u32),
                IpAddr::V6(a) => (u128::from(a), 128u32),
            };
            let host_bits = width - u32::from(c.prefix_len());
            let size_minus_one = if host_bits == 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
            let start = value & !size_minus_one;
            (start, start | size_minus_one, (width / 8) as usize)
        })
        .collect();
    ranges.sort();
    let mut merged: Vec<(u128, u128, usize)> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if last.1 == u128::MAX || r.0 <= last.1 + 1 => last.1 = last.1.max(r.1),
            _ => merged.push(r),
        }
    }
    let bytes = |v: u128, len: usize| v.to_be_bytes()[16 - len..].to_vec();
    let mut out = Vec::with_capacity(merged.len() * 2 + 1);
    if let Some(first) = merged.first()
        && first.0 != 0
    {
        out.push((bytes(0, first.2), true));
    }
    for (start, end, len) in merged {
        out.push((bytes(start, len), false));
        let last = if len == 4 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        if end != last {
            out.push((bytes(end + 1, len), true));
        }
    }
    out
}

/// Encodes `tx` as one batch whose messages are numbered from `seq_base`.
pub fn encode(
    tx: &Transaction,
    programs: &mut Programs,
    seq_base: u32,
) -> Result<Batch, EncodeError> {
    let mut enc = Encoder {
        w: Writer::new(),
        chunks: Vec::new(),
        doing: Vec::new(),
        seq_base,
        ids: SetIds(0),
        programs,
    };
    enc.delimiter(MSG_BATCH_BEGIN);
    for (index, op) in tx.ops.iter().enumerate() {
        enc.op(index, op)?;
    }
    let end_seq = enc.delimiter(MSG_BATCH_END);
    let mut chunks = enc.chunks;
    let mut last = enc.w.into_bytes();
    last.shrink_to_fit();
    chunks.push(last);
    Ok(Batch {
        chunks,
        doing: enc.doing,
        seq_base,
        end_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| Cidr::parse(c).unwrap()).collect()
    }

    #[test]
    fn interval_elements_follow_nft() {
        // As nft 1.0.6 sent `{ 192.168.0.0/16, 10.0.0.0/8, 172.16.0.0/12 }`.
        let e = interval_elements(&cidrs(&["192.168.0.0/16", "10.0.0.0/8", "172.16.0.0/12"]));
        let want: Vec<(Vec<u8>, bool)> = vec![
            (vec![0, 0, 0, 0], true),
            (vec![10, 0, 0, 0], false),
            (vec![11, 0, 0, 0], true),
            (vec![172, 16, 0, 0], false),
            (vec![172, 32, 0, 0], true),
            (vec![192, 168, 0, 0], false),
            (vec![192, 169, 0, 0], true),
        ];
        assert_eq!(e, want);
        // Adjacent ranges merge; a range to the last address has no end marker.
        let e = interval_elements(&cidrs(&["0.0.0.0/1", "128.0.0.0/1"]));
        assert_eq!(e, vec![(vec![0, 0, 0, 0], false)]);
        let e = interval_elements(&cidrs(&["10.0.0.0/9", "10.128.0.0/9"]));
        assert_eq!(e.len(), 3);
        let e = interval_elements(&cidrs(&["fd00::/64", "::1/128"]));
        assert_eq!(e.len(), 5);
        assert_eq!(e[2].0[15], 2);
    }

    #[test]
    fn keys_are_padded_per_component() {
        let k =
            ElementKey::AddrProtoPort("10.0.0.1".parse().unwrap(), crate::model::Protocol::Tcp, 80);
        assert_eq!(key_bytes(&k), vec![10, 0, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0]);
        let k = ElementKey::ProtoPort(crate::model::Protocol::Udp, 30001);
        assert_eq!(key_bytes(&k), vec![17, 0, 0, 0, 0x75, 0x31, 0, 0]);
    }

    #[test]
    fn set_udata_follows_nft() {
        let spec = SetSpec {
            key: vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
            data: SetData::Verdict,
            flags: vec![],
            comment: Some("m".into()),
        };
        // As nft 1.0.6 sent for `add map ip t m { type ipv4_addr . inet_proto . inet_service :
        // verdict ; comment "m" ; }`.
        let want = [
            0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x03, 0x08,
            0x00, 0x04, 0x0d, 0x00, 0x00, 0x00, 0x01, 0x00, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
            0x07, 0x02, 0x6d, 0x00,
        ];
        assert_eq!(named_set_udata(&spec), want);
        assert_eq!(
            payload_typeof(Family::V4, true),
            [
                0x00, 0x04, 0x07, 0x00, 0x00, 0x00, 0x01, 0x0c, 0x00, 0x04, 0x0c, 0x00, 0x00, 0x00,
                0x01, 0x04, 0x0b, 0x00, 0x00, 0x00
            ]
        );
    }
}
