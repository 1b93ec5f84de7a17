//! Compiles rule templates into nf_tables expressions: each [`RuleShape`] is parsed once into a
//! [`Program`] (matches and a statement whose operands are literals or holes), and each rule then
//! only lowers its program with its values. The expressions are the ones nft itself generates for
//! the same text, so `nft list` shows what the templates say. A template form the compiler does
//! not know is an error when the backend starts, never a silently different rule.

use std::net::IpAddr;

use super::expr::{Base, Expr, REG_1, REG32_00, VerdictCode};
use crate::model::{Cidr, Family, Protocol};
use crate::ruleset::Slot;
use crate::ruleset::rule::{Piece, RuleShape, Value};

/// A template the compiler does not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule template {id}: cannot compile {what:?} (at {at})")]
pub struct CompileError {
    pub id: String,
    pub what: String,
    pub at: String,
}

/// A literal or a hole of the template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Operand {
    Literal(String),
    Hole(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Saddr,
    Daddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Match {
    CtStateNew,
    /// `$family saddr|daddr [!=] VALUE` (an address, a prefix, `{ … }`, or `@set`).
    Addr {
        field: Field,
        negate: bool,
        value: Operand,
        set: bool,
    },
    /// `fib saddr|daddr type local`.
    FibLocal {
        field: Field,
    },
    /// `meta l4proto P` before a dnat.
    L4Proto(Operand),
    /// `$family saddr . $family daddr @set`.
    AddrPairSet(Operand),
    /// `meta mark & MASK == VALUE`.
    MarkEquals {
        mask: Operand,
        value: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Stmt {
    Verdict(VerdictKind, Option<Operand>),
    /// `$family daddr . meta l4proto . th dport vmap @set` (`with_addr`) or
    /// `meta l4proto . th dport vmap @set`.
    ConcatVmap {
        with_addr: bool,
        set: Operand,
    },
    /// `numgen random mod N vmap { chains }`.
    Numgen {
        count: Operand,
        chains: Operand,
    },
    /// `meta mark set meta mark | MASK` (or `^`).
    MarkSet {
        xor: bool,
        mask: Operand,
    },
    Masquerade,
    Reject,
    Dnat(Operand),
    /// `dnat to [$family daddr .] meta l4proto . th dport . numgen random mod N map @set:PORT`.
    DnatMap {
        with_addr: bool,
        count: Operand,
        set: Operand,
        port: Operand,
    },
    /// `update @SET { $family saddr timeout T }`.
    Update {
        set: Operand,
        timeout: Operand,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VerdictKind {
    Jump,
    Goto,
    Drop,
    Accept,
    Return,
}

/// A compiled rule template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    id: String,
    matches: Vec<Match>,
    stmt: Stmt,
}

/// An anonymous set a rule needs, created in the same batch before the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnonSet {
    /// `numgen … vmap { i : goto chain }`: index → verdict.
    Vmap { id: u32, chains: Vec<String> },
    /// `{ prefixes }` of one family, an interval set.
    Prefixes {
        id: u32,
        family: Family,
        /// Matched against the source address (else the destination).
        saddr: bool,
        prefixes: Vec<Cidr>,
    },
}

impl AnonSet {
    pub fn id(&self) -> u32 {
        match self {
            AnonSet::Vmap { id, .. } | AnonSet::Prefixes { id, .. } => *id,
        }
    }

    /// The name the kernel completes (`__map%d`, `__set%d`).
    pub fn name(&self) -> &'static str {
        match self {
            AnonSet::Vmap { .. } => "__map%d",
            AnonSet::Prefixes { .. } => "__set%d",
        }
    }
}

/// A rule lowered for one set of values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lowered {
    pub exprs: Vec<Expr>,
    pub anon_sets: Vec<AnonSet>,
}

struct Parser<'a> {
    id: &'a str,
    pieces: Vec<Piece<'a>>,
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self, n: usize) -> Option<&Piece<'a>> {
        self.pieces.get(self.at + n)
    }

    fn word(&self, n: usize) -> Option<&'a str> {
        match self.peek(n) {
            Some(Piece::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn words(&self, expect: &[&str]) -> bool {
        expect
            .iter()
            .enumerate()
            .all(|(i, w)| self.word(i) == Some(*w))
    }

    fn is_family(&self, n: usize) -> bool {
        matches!(self.peek(n), Some(Piece::Hole(Slot::Family, _)))
    }

    fn fail(&self, what: &str) -> CompileError {
        CompileError {
            id: self.id.to_string(),
            what: what.to_string(),
            at: self.pieces[self.at.min(self.pieces.len())..]
                .iter()
                .map(|p| match p {
                    Piece::Word(w) => (*w).to_string(),
                    Piece::SetPrefix => "@".to_string(),
                    Piece::Hole(s, _) => format!("${}", s.name()),
                })
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// An operand: a hole or one word.
    fn operand(&mut self) -> Result<Operand, CompileError> {
        let op = match self.peek(0) {
            Some(Piece::Hole(_, i)) => Operand::Hole(*i),
            Some(Piece::Word(w)) => Operand::Literal((*w).to_string()),
            _ => return Err(self.fail("an operand")),
        };
        self.at += 1;
        Ok(op)
    }

    /// `@name` or `@$hole`.
    fn set_ref(&mut self) -> Result<Operand, CompileError> {
        match self.peek(0) {
            Some(Piece::SetPrefix) => {
                self.at += 1;
                self.operand()
            }
            Some(Piece::Word(w)) if w.starts_with('@') => {
                let name = w[1..].to_string();
                self.at += 1;
                Ok(Operand::Literal(name))
            }
            _ => Err(self.fail("a set reference")),
        }
    }

    fn field(&self, n: usize) -> Option<Field> {
        match self.word(n) {
            Some("saddr") => Some(Field::Saddr),
            Some("daddr") => Some(Field::Daddr),
            _ => None,
        }
    }

    fn parse(mut self) -> Result<Program, CompileError> {
        let mut matches = Vec::new();
        loop {
            if self.words(&["ct", "state", "new"]) {
                self.at += 3;
                matches.push(Match::CtStateNew);
            } else if self.words(&["fib"]) && self.words(&["fib", "saddr", "type", "local"]) {
                self.at += 4;
                matches.push(Match::FibLocal {
                    field: Field::Saddr,
                });
            } else if self.words(&["fib", "daddr", "type", "local"]) {
                self.at += 4;
                matches.push(Match::FibLocal {
                    field: Field::Daddr,
                });
            } else if self.is_family(0)
                && self.field(1) == Some(Field::Saddr)
                && self.word(2) == Some(".")
            {
                if !(self.is_family(3) && self.word(4) == Some("daddr")) {
                    return Err(self.fail("a concatenation other than saddr . daddr"));
                }
                self.at += 5;
                matches.push(Match::AddrPairSet(self.set_ref()?));
            } else if self.is_family(0)
                && self.field(1) == Some(Field::Daddr)
                && self.word(2) == Some(".")
            {
                self.at += 3;
                if !self.words(&["meta", "l4proto", ".", "th", "dport", "vmap"]) {
                    return Err(self.fail("a concatenation other than daddr . l4proto . dport"));
                }
                self.at += 6;
                let set = self.set_ref()?;
                return self.finish(
                    matches,
                    Stmt::ConcatVmap {
                        with_addr: true,
                        set,
                    },
                );
            } else if self.is_family(0)
                && let Some(field) = self.field(1)
            {
                self.at += 2;
                let negate = self.word(0) == Some("!=");
                if negate {
                    self.at += 1;
                }
                let (value, set) = if matches!(self.peek(0), Some(Piece::SetPrefix))
                    || self.word(0).is_some_and(|w| w.starts_with('@'))
                {
                    (self.set_ref()?, true)
                } else if self.word(0) == Some("{") {
                    return Err(self.fail("a literal set (use a hole for prefixes)"));
                } else {
                    (self.operand()?, false)
                };
                // `$family saddr $x timeout` belongs to an update statement, not here.
                matches.push(Match::Addr {
                    field,
                    negate,
                    value,
                    set,
                });
            } else if self.words(&["meta", "l4proto", ".", "th", "dport", "vmap"]) {
                self.at += 6;
                let set = self.set_ref()?;
                return self.finish(
                    matches,
                    Stmt::ConcatVmap {
                        with_addr: false,
                        set,
                    },
                );
            } else if self.words(&["meta", "l4proto"]) && self.word(3) == Some("dnat") {
                self.at += 2;
                let proto = self.operand()?;
                matches.push(Match::L4Proto(proto));
            } else if self.words(&["meta", "mark", "&"]) {
                self.at += 3;
                let mask = self.operand()?;
                if self.word(0) != Some("==") {
                    return Err(self.fail("=="));
                }
                let value = self
                    .word(1)
                    .and_then(|v| u32::from_str_radix(v.trim_start_matches("0x"), 16).ok())
                    .ok_or_else(|| self.fail("a hex mark value"))?;
                self.at += 2;
                matches.push(Match::MarkEquals { mask, value });
            } else {
                break;
            }
        }
        let stmt = self.statement()?;
        self.finish(matches, stmt)
    }

    fn statement(&mut self) -> Result<Stmt, CompileError> {
        let verdict = |k| Stmt::Verdict(k, None);
        let stmt = match self.word(0) {
            Some("jump") | Some("goto") => {
                let kind = if self.word(0) == Some("jump") {
                    VerdictKind::Jump
                } else {
                    VerdictKind::Goto
                };
                self.at += 1;
                Stmt::Verdict(kind, Some(self.operand()?))
            }
            Some("drop") => {
                self.at += 1;
                verdict(VerdictKind::Drop)
            }
            Some("accept") => {
                self.at += 1;
                verdict(VerdictKind::Accept)
            }
            Some("return") => {
                self.at += 1;
                verdict(VerdictKind::Return)
            }
            Some("reject") => {
                self.at += 1;
                Stmt::Reject
            }
            Some("masquerade") if self.word(1) == Some("fully-random") => {
                self.at += 2;
                Stmt::Masquerade
            }
            Some("dnat")
                if self.word(1) == Some("to")
                    && (self.is_family(2) || self.word(2) == Some("meta")) =>
            {
                self.at += 2;
                let with_addr =
                    self.is_family(0) && self.word(1) == Some("daddr") && self.word(2) == Some(".");
                if with_addr {
                    self.at += 3;
                }
                let key = [
                    "meta", "l4proto", ".", "th", "dport", ".", "numgen", "random", "mod",
                ];
                if !self.words(&key) {
                    return Err(self.fail("meta l4proto . th dport . numgen random mod N"));
                }
                self.at += key.len();
                let count = self.operand()?;
                // `map @set:PORT`: a literal `@name:` word, or `@$hole` and `:`.
                if self.word(0) != Some("map") {
                    return Err(self.fail("map @set:port"));
                }
                self.at += 1;
                let set = match self.word(0) {
                    Some(w) if w.starts_with('@') && w.ends_with(':') => {
                        self.at += 1;
                        Operand::Literal(w[1..w.len() - 1].to_string())
                    }
                    _ => {
                        let set = self.set_ref()?;
                        if self.word(0) != Some(":") {
                            return Err(self.fail(": port"));
                        }
                        self.at += 1;
                        set
                    }
                };
                let port = self.operand()?;
                Stmt::DnatMap {
                    with_addr,
                    count,
                    set,
                    port,
                }
            }
            Some("dnat") if self.word(1) == Some("to") => {
                self.at += 2;
                Stmt::Dnat(self.operand()?)
            }
            Some("numgen") if self.words(&["numgen", "random", "mod"]) => {
                self.at += 3;
                let count = self.operand()?;
                if !(self.word(0) == Some("vmap") && self.word(1) == Some("{")) {
                    return Err(self.fail("vmap {"));
                }
                self.at += 2;
                let chains = self.operand()?;
                if self.word(0) != Some("}") {
                    return Err(self.fail("}"));
                }
                self.at += 1;
                Stmt::Numgen { count, chains }
            }
            Some("meta") if self.words(&["meta", "mark", "set", "meta", "mark"]) => {
                let xor = match self.word(5) {
                    Some("|") => false,
                    Some("^") => true,
                    _ => return Err(self.fail("| or ^")),
                };
                self.at += 6;
                Stmt::MarkSet {
                    xor,
                    mask: self.operand()?,
                }
            }
            Some("update") => {
                self.at += 1;
                let set = self.set_ref()?;
                let ok = self.word(0) == Some("{")
                    && self.is_family(1)
                    && self.word(2) == Some("saddr")
                    && self.word(3) == Some("timeout");
                if !ok {
                    return Err(self.fail("{ $family saddr timeout …"));
                }
                self.at += 4;
                let timeout = self.operand()?;
                if self.word(0) != Some("}") {
                    return Err(self.fail("}"));
                }
                self.at += 1;
                Stmt::Update { set, timeout }
            }
            _ => return Err(self.fail("a statement")),
        };
        Ok(stmt)
    }

    fn finish(self, matches: Vec<Match>, stmt: Stmt) -> Result<Program, CompileError> {
        if self.at != self.pieces.len() {
            return Err(self.fail("the end of the rule"));
        }
        Ok(Program {
            id: self.id.to_string(),
            matches,
            stmt,
        })
    }
}

/// Compiles a template.
pub fn compile(shape: &RuleShape) -> Result<Program, CompileError> {
    Parser {
        id: shape.id(),
        pieces: shape.pieces(),
        at: 0,
    }
    .parse()
}

/// Why a rule could not be lowered (a value of the wrong kind for its hole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule template {id}: {what}")]
pub struct LowerError {
    pub id: String,
    pub what: String,
}

/// Hands out ids for the anonymous sets of one batch.
#[derive(Debug)]
pub struct SetIds(pub u32);

impl SetIds {
    pub fn allocate(&mut self) -> u32 {
        self.0 += 1;
        self.0
    }
}

fn addr_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The header offset of the source and destination address.
fn addr_offset(family: Family, field: Field) -> u32 {
    match (family, field) {
        (Family::V4, Field::Saddr) => 12,
        (Family::V4, Field::Daddr) => 16,
        (Family::V6, Field::Saddr) => 8,
        (Family::V6, Field::Daddr) => 24,
    }
}

/// nft's register for 32-bit slot `k` of a concatenation starting at register 1: a 16-byte
/// register where the slot starts one, else the 4-byte register.
/// Loads `[ip daddr .] meta l4proto . th dport` into 32-bit slots from register 1; returns the
/// slot after the address (where the protocol went).
fn load_destination_key(exprs: &mut Vec<Expr>, family: Family, with_addr: bool) -> u32 {
    let mut slot = 0;
    if with_addr {
        let len = addr_len(family);
        exprs.push(Expr::Payload {
            dreg: REG_1,
            base: Base::Network,
            offset: addr_offset(family, Field::Daddr),
            len,
        });
        slot = len / 4;
    }
    exprs.push(Expr::MetaLoad {
        dreg: slot_reg(slot),
        key: 16,
    });
    exprs.push(Expr::Payload {
        dreg: slot_reg(slot + 1),
        base: Base::Transport,
        offset: 2,
        len: 2,
    });
    slot
}

fn slot_reg(k: u32) -> u32 {
    if k.is_multiple_of(4) {
        REG_1 + k / 4
    } else {
        REG32_00 + k
    }
}

fn nat_family(family: Family) -> u32 {
    match family {
        Family::V4 => 2,
        Family::V6 => 10,
    }
}

fn addr_len(family: Family) -> u32 {
    match family {
        Family::V4 => 4,
        Family::V6 => 16,
    }
}

/// A 32-bit value in a 4-byte register, host byte order (how nft stores integer keys like marks).
fn host_u32(v: u32) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

impl Program {
    fn value<'v>(&self, args: &'v [Value], op: &Operand) -> Result<Option<&'v Value>, LowerError> {
        match op {
            Operand::Hole(i) => args
                .get(*i)
                .map(Some)
                .ok_or_else(|| self.err(format!("no value for hole {i}"))),
            Operand::Literal(_) => Ok(None),
        }
    }

    fn err(&self, what: impl Into<String>) -> LowerError {
        LowerError {
            id: self.id.clone(),
            what: what.into(),
        }
    }

    fn name(&self, args: &[Value], op: &Operand) -> Result<String, LowerError> {
        match (op, self.value(args, op)?) {
            (Operand::Literal(s), _) => Ok(s.clone()),
            (_, Some(Value::Chain(c))) => Ok(c.to_string()),
            (_, Some(Value::Set(s))) => Ok(s.to_string()),
            (_, other) => Err(self.err(format!("expected a name, got {other:?}"))),
        }
    }

    fn number(&self, args: &[Value], op: &Operand) -> Result<u32, LowerError> {
        match (op, self.value(args, op)?) {
            (_, Some(Value::Mark(m))) => Ok(*m),
            (_, Some(Value::Count(n))) => Ok(*n),
            (Operand::Literal(s), None) => s
                .strip_prefix("0x")
                .map_or_else(|| s.parse().ok(), |h| u32::from_str_radix(h, 16).ok())
                .ok_or_else(|| self.err(format!("not a number: {s}"))),
            (_, other) => Err(self.err(format!("expected a number, got {other:?}"))),
        }
    }

    /// The prefixes an address operand stands for.
    fn prefixes(
        &self,
        args: &[Value],
        op: &Operand,
        family: Family,
    ) -> Result<Vec<Cidr>, LowerError> {
        let full = |ip: IpAddr| Cidr::new(ip, addr_len(family) as u8 * 8);
        let list = match (op, self.value(args, op)?) {
            (_, Some(Value::Addr(ip))) => vec![full(*ip)],
            (_, Some(Value::Cidr(c))) => vec![Some(*c)],
            (_, Some(Value::Cidrs(list))) => list.iter().map(|c| Some(*c)).collect(),
            (Operand::Literal(s), None) => vec![
                Cidr::parse(s)
                    .ok()
                    .or_else(|| s.parse().ok().and_then(full)),
            ],
            (_, other) => return Err(self.err(format!("expected an address, got {other:?}"))),
        };
        list.into_iter()
            .map(|c| {
                c.filter(|c| c.family() == family)
                    .ok_or_else(|| self.err("an address of another family"))
            })
            .collect()
    }

    /// The expressions (and anonymous sets) of this rule with `args` in table family `family`.
    pub fn lower(
        &self,
        args: &[Value],
        family: Family,
        ids: &mut SetIds,
    ) -> Result<Lowered, LowerError> {
        let mut exprs = Vec::new();
        let mut anon_sets = Vec::new();
        for m in &self.matches {
            match m {
                Match::CtStateNew => {
                    exprs.push(Expr::CtState { dreg: REG_1 });
                    exprs.push(Expr::Bitwise {
                        sreg: REG_1,
                        dreg: REG_1,
                        mask: host_u32(8),
                        xor: host_u32(0),
                    });
                    exprs.push(Expr::Cmp {
                        sreg: REG_1,
                        neq: true,
                        data: host_u32(0),
                    });
                }
                Match::FibLocal { field } => {
                    exprs.push(Expr::FibType {
                        dreg: REG_1,
                        saddr: *field == Field::Saddr,
                    });
                    exprs.push(Expr::Cmp {
                        sreg: REG_1,
                        neq: false,
                        data: host_u32(2),
                    }); // RTN_LOCAL
                }
                Match::L4Proto(op) => {
                    let proto = self.protocol(args, op)?;
                    exprs.push(Expr::MetaLoad {
                        dreg: REG_1,
                        key: 16,
                    });
                    exprs.push(Expr::Cmp {
                        sreg: REG_1,
                        neq: false,
                        data: vec![proto],
                    });
                }
                Match::MarkEquals { mask, value } => {
                    let mask = self.number(args, mask)?;
                    exprs.push(Expr::MetaLoad {
                        dreg: REG_1,
                        key: 3,
                    });
                    exprs.push(Expr::Bitwise {
                        sreg: REG_1,
                        dreg: REG_1,
                        mask: host_u32(mask),
                        xor: host_u32(0),
                    });
                    exprs.push(Expr::Cmp {
                        sreg: REG_1,
                        neq: false,
                        data: host_u32(*value),
                    });
                }
                Match::AddrPairSet(set) => {
                    let len = addr_len(family);
                    exprs.push(Expr::Payload {
                        dreg: REG_1,
                        base: Base::Network,
                        offset: addr_offset(family, Field::Saddr),
                        len,
                    });
                    exprs.push(Expr::Payload {
                        dreg: slot_reg(len / 4),
                        base: Base::Network,
                        offset: addr_offset(family, Field::Daddr),
                        len,
                    });
                    exprs.push(Expr::Lookup {
                        set: self.name(args, set)?,
                        set_id: None,
                        sreg: REG_1,
                        dreg: None,
                        invert: false,
                    });
                }
                Match::Addr {
                    field,
                    negate,
                    value,
                    set,
                } => {
                    let offset = addr_offset(family, *field);
                    let len = addr_len(family);
                    if *set {
                        exprs.push(Expr::Payload {
                            dreg: REG_1,
                            base: Base::Network,
                            offset,
                            len,
                        });
                        exprs.push(Expr::Lookup {
                            set: self.name(args, value)?,
                            set_id: None,
                            sreg: REG_1,
                            dreg: None,
                            invert: *negate,
                        });
                        continue;
                    }
                    let prefixes = self.prefixes(args, value, family)?;
                    if let [one] = prefixes.as_slice() {
                        prefix_match(&mut exprs, *one, offset, len, *negate);
                    } else {
                        let id = ids.allocate();
                        exprs.push(Expr::Payload {
                            dreg: REG_1,
                            base: Base::Network,
                            offset,
                            len,
                        });
                        exprs.push(Expr::Lookup {
                            set: "__set%d".into(),
                            set_id: Some(id),
                            sreg: REG_1,
                            dreg: None,
                            invert: *negate,
                        });
                        anon_sets.push(AnonSet::Prefixes {
                            id,
                            family,
                            saddr: *field == Field::Saddr,
                            prefixes,
                        });
                    }
                }
            }
        }
        match &self.stmt {
            Stmt::Verdict(kind, target) => {
                let v = match kind {
                    VerdictKind::Jump => VerdictCode::Jump(
                        self.name(args, target.as_ref().ok_or_else(|| self.err("jump where"))?)?,
                    ),
                    VerdictKind::Goto => VerdictCode::Goto(
                        self.name(args, target.as_ref().ok_or_else(|| self.err("goto where"))?)?,
                    ),
                    VerdictKind::Drop => VerdictCode::Drop,
                    VerdictKind::Accept => VerdictCode::Accept,
                    VerdictKind::Return => VerdictCode::Return,
                };
                exprs.push(Expr::Verdict(v));
            }
            Stmt::ConcatVmap { with_addr, set } => {
                load_destination_key(&mut exprs, family, *with_addr);
                exprs.push(Expr::Lookup {
                    set: self.name(args, set)?,
                    set_id: None,
                    sreg: REG_1,
                    dreg: Some(0),
                    invert: false,
                });
            }
            Stmt::Numgen { count, chains } => {
                let modulus = self.number(args, count)?;
                let chains = match self.value(args, chains)? {
                    Some(Value::Chains(list)) => list.iter().map(|c| c.to_string()).collect(),
                    other => {
                        return Err(self.err(format!("expected endpoint chains, got {other:?}")));
                    }
                };
                let id = ids.allocate();
                exprs.push(Expr::Numgen {
                    dreg: REG_1,
                    modulus,
                });
                exprs.push(Expr::Lookup {
                    set: "__map%d".into(),
                    set_id: Some(id),
                    sreg: REG_1,
                    dreg: Some(0),
                    invert: false,
                });
                anon_sets.push(AnonSet::Vmap { id, chains });
            }
            Stmt::MarkSet { xor, mask } => {
                let mask = self.number(args, mask)?;
                exprs.push(Expr::MetaLoad {
                    dreg: REG_1,
                    key: 3,
                });
                let (and, xor) = if *xor {
                    (u32::MAX, mask)
                } else {
                    (!mask, mask)
                };
                exprs.push(Expr::Bitwise {
                    sreg: REG_1,
                    dreg: REG_1,
                    mask: host_u32(and),
                    xor: host_u32(xor),
                });
                exprs.push(Expr::MetaSet {
                    key: 3,
                    sreg: REG_1,
                });
            }
            Stmt::Masquerade => exprs.push(Expr::MasqueradeFullyRandom),
            Stmt::Reject => exprs.push(Expr::Reject {
                code: match family {
                    Family::V4 => 3, // ICMP port unreachable
                    Family::V6 => 4, // ICMPv6 port unreachable
                },
            }),
            Stmt::Dnat(target) => {
                let to = match self.value(args, target)? {
                    Some(Value::SocketAddr(s)) => *s,
                    other => return Err(self.err(format!("expected ip:port, got {other:?}"))),
                };
                let addr = addr_bytes(&to.ip());
                // A 16-byte register holds either address; the port goes in the next one.
                let proto_reg = REG_1 + 1;
                exprs.push(Expr::Immediate {
                    dreg: REG_1,
                    data: addr,
                });
                exprs.push(Expr::Immediate {
                    dreg: proto_reg,
                    data: to.port().to_be_bytes().to_vec(),
                });
                exprs.push(Expr::Dnat {
                    family: nat_family(family),
                    reg_addr: REG_1,
                    reg_proto: proto_reg,
                    proto_flag: true,
                });
            }
            Stmt::DnatMap {
                with_addr,
                count,
                set,
                port,
            } => {
                // The key is laid out in 32-bit slots from register 1: [address .] protocol .
                // port . index; the endpoint's address comes back into register 1, the port
                // goes into register 2.
                let slot = load_destination_key(&mut exprs, family, *with_addr);
                exprs.push(Expr::Numgen {
                    dreg: slot_reg(slot + 2),
                    modulus: self.number(args, count)?,
                });
                exprs.push(Expr::Lookup {
                    set: self.name(args, set)?,
                    set_id: None,
                    sreg: REG_1,
                    dreg: Some(REG_1),
                    invert: false,
                });
                let port = match self.value(args, port)? {
                    Some(Value::Port(p)) => *p,
                    other => return Err(self.err(format!("expected a port, got {other:?}"))),
                };
                exprs.push(Expr::Immediate {
                    dreg: REG_1 + 1,
                    data: port.to_be_bytes().to_vec(),
                });
                exprs.push(Expr::Dnat {
                    family: nat_family(family),
                    reg_addr: REG_1,
                    reg_proto: REG_1 + 1,
                    proto_flag: true,
                });
            }
            Stmt::Update { set, timeout } => {
                let secs = match self.value(args, timeout)? {
                    Some(Value::Seconds(s)) => *s,
                    other => return Err(self.err(format!("expected a timeout, got {other:?}"))),
                };
                exprs.push(Expr::Payload {
                    dreg: REG_1,
                    base: Base::Network,
                    offset: addr_offset(family, Field::Saddr),
                    len: addr_len(family),
                });
                exprs.push(Expr::DynsetUpdate {
                    set: self.name(args, set)?,
                    sreg: REG_1,
                    timeout_ms: u64::from(secs) * 1000,
                });
            }
        }
        Ok(Lowered { exprs, anon_sets })
    }

    fn protocol(&self, args: &[Value], op: &Operand) -> Result<u8, LowerError> {
        let p = match (op, self.value(args, op)?) {
            (_, Some(Value::Protocol(p))) => *p,
            (Operand::Literal(s), None) => {
                Protocol::from_nft(s).ok_or_else(|| self.err(format!("protocol {s}")))?
            }
            (_, other) => return Err(self.err(format!("expected a protocol, got {other:?}"))),
        };
        Ok(p.ip_number())
    }
}

/// `addr == prefix` as nft encodes it: a full address compares all bytes; a byte-aligned prefix
/// loads only its bytes; any other prefix masks the address first.
fn prefix_match(exprs: &mut Vec<Expr>, prefix: Cidr, offset: u32, len: u32, negate: bool) {
    let bits = u32::from(prefix.prefix_len());
    let addr = addr_bytes(&prefix.addr());
    if bits.is_multiple_of(8) {
        let bytes = (bits / 8) as usize;
        exprs.push(Expr::Payload {
            dreg: REG_1,
            base: Base::Network,
            offset,
            len: bytes as u32,
        });
        exprs.push(Expr::Cmp {
            sreg: REG_1,
            neq: negate,
            data: addr[..bytes].to_vec(),
        });
    } else {
        exprs.push(Expr::Payload {
            dreg: REG_1,
            base: Base::Network,
            offset,
            len,
        });
        let mask: Vec<u8> = (0..len)
            .map(|i| {
                let start = i * 8;
                if start + 8 <= bits {
                    0xff
                } else if start >= bits {
                    0
                } else {
                    0xffu8 << (8 - (bits - start))
                }
            })
            .collect();
        exprs.push(Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask,
            xor: vec![0; len as usize],
        });
        exprs.push(Expr::Cmp {
            sreg: REG_1,
            neq: negate,
            data: addr,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Templates;

    #[test]
    fn every_bundled_template_compiles() {
        let t = Templates::bundled().unwrap();
        for chain in t.chains() {
            for rule in &chain.rules {
                compile(&rule.shape).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }

    #[test]
    fn unknown_forms_are_refused() {
        for text in [
            "ip daddr 1.2.3.4 counter accept",
            "log prefix x",
            "tcp dport 80 accept",
            "ip daddr { 1.2.3.4, 5.6.7.8 } drop",
        ] {
            let shape = RuleShape::parse("t:1", text, &Slot::ALL).unwrap();
            assert!(compile(&shape).is_err(), "{text}");
        }
    }

    #[test]
    fn prefixes_as_nft_encodes_them() {
        let mut e = Vec::new();
        prefix_match(&mut e, Cidr::parse("10.244.0.0/16").unwrap(), 12, 4, true);
        assert_eq!(
            e[0],
            Expr::Payload {
                dreg: 1,
                base: Base::Network,
                offset: 12,
                len: 2
            }
        );
        assert_eq!(
            e[1],
            Expr::Cmp {
                sreg: 1,
                neq: true,
                data: vec![10, 244]
            }
        );
        let mut e = Vec::new();
        prefix_match(&mut e, Cidr::parse("203.0.113.0/25").unwrap(), 12, 4, true);
        assert_eq!(
            e[1],
            Expr::Bitwise {
                sreg: 1,
                dreg: 1,
                mask: vec![255, 255, 255, 128],
                xor: vec![0; 4]
            }
        );
    }
}
