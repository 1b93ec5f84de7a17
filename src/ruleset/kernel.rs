//! What the kernel holds in our tables, as far as the proxy knows: read once at start-up (or after
//! a failure) and then kept current by applying each committed transaction to it, so syncs never
//! need to list the kernel.

use std::collections::BTreeMap;

use super::{BaseChain, ChainName, Digest, ElementKey, ElementValue, SetData, SetName, SetSpec};
use crate::diff::{Op, Transaction};
use crate::model::Family;

/// What a chain in the kernel contains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainContent {
    /// No rules (a stale chain waiting for deletion, or a new one).
    Empty,
    /// Rules we wrote, identified by the digest in the first rule's comment.
    Ours { digest: Digest, rules: usize },
    /// Rules we cannot identify (written by someone else or by an incompatible version).
    Unknown,
}

impl ChainContent {
    /// What a chain read back from the kernel holds: `count` rules, the first carrying `digest`
    /// in its comment if it is one of ours.
    pub fn read(count: usize, digest: Option<Digest>) -> ChainContent {
        match (count, digest) {
            (0, _) => ChainContent::Empty,
            (rules, Some(digest)) => ChainContent::Ours { digest, rules },
            (_, None) => ChainContent::Unknown,
        }
    }
}

/// A chain in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelChain {
    pub base: Option<BaseChain>,
    pub content: ChainContent,
}

/// A set or map in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSet {
    pub spec: SetSpec,
    pub elements: BTreeMap<ElementKey, ElementValue>,
    /// Some elements could not be read as ours; the set must be flushed and refilled.
    pub foreign_elements: bool,
}

impl KernelSet {
    /// A set whose declaration we do not recognise: its spec matches nothing we want.
    pub fn unrecognised() -> KernelSet {
        KernelSet {
            spec: SetSpec {
                key: Vec::new(),
                data: SetData::None,
                flags: Vec::new(),
                comment: None,
            },
            elements: BTreeMap::new(),
            foreign_elements: true,
        }
    }
}

/// One family's table in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KernelTable {
    pub chains: BTreeMap<ChainName, KernelChain>,
    pub sets: BTreeMap<SetName, KernelSet>,
    /// The table holds objects we cannot name or write (put there by someone else).
    pub foreign: bool,
}

/// Both families' tables (`None`: the table does not exist).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KernelState {
    pub tables: [Option<KernelTable>; 2],
}

impl KernelState {
    pub fn table(&self, family: Family) -> Option<&KernelTable> {
        self.tables[family.index()].as_ref()
    }

    /// Records the effect of a committed transaction.
    pub fn apply(&mut self, tx: &Transaction) {
        self.apply_owned(tx.clone());
    }

    /// Records the effect of a committed transaction, taking its elements over (a start-up
    /// transaction holds every element once; they are moved, not copied).
    pub fn apply_owned(&mut self, tx: Transaction) {
        for op in tx.ops {
            self.apply_op(op);
        }
    }

    fn apply_op(&mut self, op: Op) {
        let slot = &mut self.tables[op.family().index()];
        match op {
            Op::AddTable(_) => {
                slot.get_or_insert_with(KernelTable::default);
            }
            Op::DeleteTable(_) => *slot = None,
            _ => {
                let Some(table) = slot.as_mut() else {
                    return;
                };
                table.apply_op(op);
            }
        }
    }
}

impl KernelTable {
    fn apply_op(&mut self, op: Op) {
        match op {
            Op::AddTable(_) | Op::DeleteTable(_) => {}
            Op::AddSet(_, name, spec) => {
                self.sets.entry(name).or_insert_with(|| KernelSet {
                    spec: (*spec).clone(),
                    elements: BTreeMap::new(),
                    foreign_elements: false,
                });
            }
            Op::FlushSet(_, name) => {
                if let Some(set) = self.sets.get_mut(&name) {
                    set.elements.clear();
                    set.foreign_elements = false;
                }
            }
            Op::DeleteSet(_, name) => {
                self.sets.remove(&name);
            }
            Op::AddChain(_, name, base) => {
                self.chains.entry(name).or_insert(KernelChain {
                    base,
                    content: ChainContent::Empty,
                });
            }
            Op::FlushChain(_, name) => {
                if let Some(chain) = self.chains.get_mut(&name) {
                    chain.content = ChainContent::Empty;
                }
            }
            Op::DeleteChain(_, name) => {
                self.chains.remove(&name);
            }
            Op::AddRules(_, name, chain) => {
                if let Some(k) = self.chains.get_mut(&name) {
                    k.content = ChainContent::Ours {
                        digest: chain.digest(),
                        rules: chain.rules.len(),
                    };
                }
            }
            Op::AddElements(_, set, elements) => {
                if let Some(s) = self.sets.get_mut(&set) {
                    s.elements.extend(elements);
                }
            }
            Op::DeleteElements(_, set, keys) => {
                if let Some(s) = self.sets.get_mut(&set) {
                    for k in &keys {
                        s.elements.remove(k);
                    }
                }
            }
        }
    }
}
