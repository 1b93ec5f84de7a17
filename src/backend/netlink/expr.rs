//! nf_tables expressions and their netlink encoding (`NFTA_LIST_ELEM { NFTA_EXPR_NAME,
//! NFTA_EXPR_DATA { … } }`). Only the expressions our templates compile to; the attribute numbers
//! follow linux/netfilter/nf_tables.h.

use super::wire::Writer;

/// Registers: the verdict register, the 16-byte register 1, and 4-byte registers from 8 on.
pub const REG_VERDICT: u32 = 0;
pub const REG_1: u32 = 1;
pub const REG32_00: u32 = 8;

/// Payload bases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    Network = 1,
    Transport = 2,
}

/// A verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerdictCode {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

impl VerdictCode {
    fn code(&self) -> i32 {
        match self {
            VerdictCode::Drop => 0,
            VerdictCode::Accept => 1,
            VerdictCode::Jump(_) => -3,
            VerdictCode::Goto(_) => -4,
            VerdictCode::Return => -5,
        }
    }

    /// Writes `NFTA_DATA_VERDICT { CODE, CHAIN }` (inside an open nft_data attribute).
    pub fn write(&self, w: &mut Writer) {
        w.open(2); // NFTA_DATA_VERDICT
        w.bytes(1, &self.code().to_be_bytes()); // NFTA_VERDICT_CODE
        if let VerdictCode::Jump(c) | VerdictCode::Goto(c) = self {
            w.string(2, c); // NFTA_VERDICT_CHAIN
        }
        w.close();
    }
}

/// One expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    Payload {
        dreg: u32,
        base: Base,
        offset: u32,
        len: u32,
    },
    /// `meta load KEY => dreg` (keys: mark 3, l4proto 16).
    MetaLoad {
        dreg: u32,
        key: u32,
    },
    MetaSet {
        key: u32,
        sreg: u32,
    },
    /// Equality (`neq` false) or inequality.
    Cmp {
        sreg: u32,
        neq: bool,
        data: Vec<u8>,
    },
    /// `dreg = (sreg & mask) ^ xor`.
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// A set or map lookup; `dreg` for maps, `set_id` for sets created in the same batch.
    Lookup {
        set: String,
        set_id: Option<u32>,
        sreg: u32,
        dreg: Option<u32>,
        invert: bool,
    },
    Verdict(VerdictCode),
    /// Data into a register.
    Immediate {
        dreg: u32,
        data: Vec<u8>,
    },
    /// `ct load state => dreg`.
    CtState {
        dreg: u32,
    },
    /// `numgen random mod N`.
    Numgen {
        dreg: u32,
        modulus: u32,
    },
    /// DNAT to the address in `reg_addr` and port in `reg_proto`; `proto_flag` sends the
    /// "port given" flag (nft sends it for a literal target, not for a map's).
    Dnat {
        family: u32,
        reg_addr: u32,
        reg_proto: u32,
        proto_flag: bool,
    },
    /// `masquerade fully-random`.
    MasqueradeFullyRandom,
    /// `fib saddr|daddr type => dreg`.
    FibType {
        dreg: u32,
        saddr: bool,
    },
    /// ICMP(v6) port unreachable.
    Reject {
        code: u8,
    },
    /// `update @set { key timeout T }`.
    DynsetUpdate {
        set: String,
        sreg: u32,
        timeout_ms: u64,
    },
}

fn data_value(w: &mut Writer, kind: u16, value: &[u8]) {
    w.open(kind);
    w.bytes(1, value); // NFTA_DATA_VALUE
    w.close();
}

impl Expr {
    fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::MetaLoad { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::Verdict(_) | Expr::Immediate { .. } => "immediate",
            Expr::CtState { .. } => "ct",
            Expr::Numgen { .. } => "numgen",
            Expr::Dnat { .. } => "nat",
            Expr::MasqueradeFullyRandom => "masq",
            Expr::FibType { .. } => "fib",
            Expr::Reject { .. } => "reject",
            Expr::DynsetUpdate { .. } => "dynset",
        }
    }

    /// Writes `NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA }`.
    pub fn write(&self, w: &mut Writer) {
        w.open(1); // NFTA_LIST_ELEM
        w.string(1, self.name()); // NFTA_EXPR_NAME
        w.open(2); // NFTA_EXPR_DATA
        match self {
            Expr::Payload {
                dreg,
                base,
                offset,
                len,
            } => {
                w.u32(1, *dreg);
                w.u32(2, *base as u32);
                w.u32(3, *offset);
                w.u32(4, *len);
            }
            Expr::MetaLoad { dreg, key } => {
                w.u32(2, *key); // NFTA_META_KEY
                w.u32(1, *dreg); // NFTA_META_DREG
            }
            Expr::MetaSet { key, sreg } => {
                w.u32(2, *key);
                w.u32(3, *sreg); // NFTA_META_SREG
            }
            Expr::Cmp { sreg, neq, data } => {
                w.u32(1, *sreg);
                w.u32(2, u32::from(*neq));
                data_value(w, 3, data);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                w.u32(1, *sreg);
                w.u32(2, *dreg);
                w.u32(3, mask.len() as u32);
                data_value(w, 4, mask);
                data_value(w, 5, xor);
            }
            Expr::Lookup {
                set,
                set_id,
                sreg,
                dreg,
                invert,
            } => {
                w.string(1, set); // NFTA_LOOKUP_SET
                w.u32(2, *sreg);
                if let Some(d) = dreg {
                    w.u32(3, *d);
                }
                if let Some(id) = set_id {
                    w.u32(4, *id);
                }
                if *invert {
                    w.u32(5, 1); // NFT_LOOKUP_F_INV
                }
            }
            Expr::Verdict(v) => {
                w.u32(1, REG_VERDICT);
                w.open(2); // NFTA_IMMEDIATE_DATA
                v.write(w);
                w.close();
            }
            Expr::Immediate { dreg, data } => {
                w.u32(1, *dreg);
                data_value(w, 2, data);
            }
            Expr::CtState { dreg } => {
                w.u32(2, 0); // NFTA_CT_KEY: NFT_CT_STATE
                w.u32(1, *dreg);
            }
            Expr::Numgen { dreg, modulus } => {
                w.u32(1, *dreg); // NFTA_NG_DREG
                w.u32(2, *modulus); // NFTA_NG_MODULUS
                w.u32(3, 1); // NFTA_NG_TYPE: NFT_NG_RANDOM
                w.u32(4, 0); // NFTA_NG_OFFSET
            }
            Expr::Dnat {
                family,
                reg_addr,
                reg_proto,
                proto_flag,
            } => {
                w.u32(1, 1); // NFTA_NAT_TYPE: NFT_NAT_DNAT
                w.u32(2, *family);
                w.u32(3, *reg_addr);
                w.u32(5, *reg_proto);
                if *proto_flag {
                    w.u32(7, 0x2); // NFTA_NAT_FLAGS: NF_NAT_RANGE_PROTO_SPECIFIED
                }
            }
            Expr::MasqueradeFullyRandom => {
                w.u32(1, 0x10); // NFTA_MASQ_FLAGS: NF_NAT_RANGE_PROTO_RANDOM_FULLY
            }
            Expr::FibType { dreg, saddr } => {
                w.u32(1, *dreg); // NFTA_FIB_DREG
                w.u32(2, 3); // NFTA_FIB_RESULT: NFT_FIB_RESULT_ADDRTYPE
                w.u32(3, if *saddr { 1 } else { 2 }); // NFTA_FIB_FLAGS: SADDR / DADDR
            }
            Expr::Reject { code } => {
                w.u32(1, 0); // NFTA_REJECT_TYPE: NFT_REJECT_ICMP_UNREACH
                w.bytes(2, &[*code]); // NFTA_REJECT_ICMP_CODE
            }
            Expr::DynsetUpdate {
                set,
                sreg,
                timeout_ms,
            } => {
                w.string(1, set); // NFTA_DYNSET_SET_NAME
                w.u32(3, 1); // NFTA_DYNSET_OP: NFT_DYNSET_OP_UPDATE
                w.u32(4, *sreg); // NFTA_DYNSET_SREG_KEY
                w.u64(6, *timeout_ms); // NFTA_DYNSET_TIMEOUT
            }
        }
        w.close();
        w.close();
    }
}
