//! A transaction as an `nft -f` script. Every name and value in it comes from the typed IR, so
//! the script holds nothing an object could have injected.

use std::fmt::Write;

use crate::diff::{Op, Transaction};
use crate::model::Family;
use crate::ruleset::{Digest, ElementKey, ElementValue, TABLE_NAME};

/// The comment on each table, so operators can tell who owns it.
pub const TABLE_COMMENT: &str = "rules for kube-nft-proxy (Services); do not edit";

/// Elements per `add element` statement: keeps single lines of the script reasonable.
const ELEMENTS_PER_STATEMENT: usize = 1000;

/// Renders `tx` as an nft script.
pub fn script(tx: &Transaction) -> String {
    let mut out = String::new();
    for op in &tx.ops {
        write_op(op, &mut out);
    }
    out
}

/// Streams `tx` as an nft script into `sink` (a large transaction is never held as one string).
pub fn write(tx: &Transaction, sink: &mut impl std::io::Write) -> std::io::Result<()> {
    let mut chunk = String::with_capacity(64 * 1024);
    for op in &tx.ops {
        write_op(op, &mut chunk);
        if chunk.len() >= 60 * 1024 {
            sink.write_all(chunk.as_bytes())?;
            chunk.clear();
        }
    }
    sink.write_all(chunk.as_bytes())
}

fn table(family: Family) -> String {
    format!("{} {TABLE_NAME}", family.nft_name())
}

fn write_op(op: &Op, out: &mut String) {
    let t = table(op.family());
    // Writing into a String cannot fail.
    let _ = match op {
        Op::AddTable(_) => writeln!(out, "add table {t} {{ comment \"{TABLE_COMMENT}\" ; }}"),
        Op::DeleteTable(_) => writeln!(out, "delete table {t}"),
        Op::AddSet(_, name, spec) => {
            writeln!(out, "add {} {t} {name} {{ {spec} }}", spec.keyword())
        }
        Op::FlushSet(_, name) => writeln!(out, "flush set {t} {name}"),
        Op::DeleteSet(_, name) => writeln!(out, "delete set {t} {name}"),
        Op::AddChain(_, name, None) => writeln!(out, "add chain {t} {name}"),
        Op::AddChain(_, name, Some(base)) => writeln!(out, "add chain {t} {name} {{ {base} ; }}"),
        Op::FlushChain(_, name) => writeln!(out, "flush chain {t} {name}"),
        Op::DeleteChain(_, name) => writeln!(out, "delete chain {t} {name}"),
        Op::AddRules(_, name, chain) => {
            for (i, rule) in chain.rules.iter().enumerate() {
                let _ = write!(out, "add rule {t} {name} ");
                rule.write_text(out);
                if i == 0 {
                    let _ = write!(out, " comment \"{}\"", digest_comment(chain.digest()));
                }
                out.push('\n');
            }
            Ok(())
        }
        Op::AddElements(_, set, elements) => {
            for chunk in elements.chunks(ELEMENTS_PER_STATEMENT) {
                let _ = write!(out, "add element {t} {set} {{ ");
                for (i, (key, value)) in chunk.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_element(key, Some(value), out);
                }
                out.push_str(" }\n");
            }
            Ok(())
        }
        Op::DeleteElements(_, set, keys) => {
            for chunk in keys.chunks(ELEMENTS_PER_STATEMENT) {
                let _ = write!(out, "delete element {t} {set} {{ ");
                for (i, key) in chunk.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_element(key, None, out);
                }
                out.push_str(" }\n");
            }
            Ok(())
        }
    };
}

fn digest_comment(d: Digest) -> String {
    d.comment()
}

fn write_element(key: &ElementKey, value: Option<&ElementValue>, out: &mut String) {
    let _ = write!(out, "{key}");
    if let Some(value) = value {
        if let Some(c) = &value.comment {
            let _ = write!(out, " comment \"{c}\"");
        }
        if let Some(data) = value.data_text() {
            let _ = write!(out, " : {data}");
        }
    }
}
