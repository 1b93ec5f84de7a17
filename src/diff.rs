//! Diff: what the kernel holds × what the objects call for → the smallest ordered transaction.
//!
//! The diff walks only the objects in its scope (those a sync touched), so its cost follows the
//! size of the change. Chains are compared by digest; elements by value. A chain that is no
//! longer wanted is flushed at once and deleted by a later transaction (the caller passes the
//! ones whose delay has passed), as upstream does for kernels that hold references briefly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::model::Family;
use crate::ruleset::desired::Item;
use crate::ruleset::kernel::{ChainContent, KernelTable};
use crate::ruleset::{
    BaseChain, Chain, ChainName, ElementKey, ElementValue, KernelState, ObjectRef, Ruleset,
    SetName, SetSpec,
};

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddTable(Family),
    DeleteTable(Family),
    AddSet(Family, SetName, Arc<SetSpec>),
    FlushSet(Family, SetName),
    DeleteSet(Family, SetName),
    AddChain(Family, ChainName, Option<BaseChain>),
    FlushChain(Family, ChainName),
    DeleteChain(Family, ChainName),
    /// Adds all rules of the chain (which is empty at that point).
    AddRules(Family, ChainName, Arc<Chain>),
    AddElements(Family, SetName, Vec<(ElementKey, ElementValue)>),
    DeleteElements(Family, SetName, Vec<ElementKey>),
}

impl Op {
    pub fn family(&self) -> Family {
        match self {
            Op::AddTable(f)
            | Op::DeleteTable(f)
            | Op::AddSet(f, ..)
            | Op::FlushSet(f, ..)
            | Op::DeleteSet(f, ..)
            | Op::AddChain(f, ..)
            | Op::FlushChain(f, ..)
            | Op::DeleteChain(f, ..)
            | Op::AddRules(f, ..)
            | Op::AddElements(f, ..)
            | Op::DeleteElements(f, ..) => *f,
        }
    }

    /// How many kernel objects the operation writes (each rule and element counts).
    pub fn size(&self) -> usize {
        match self {
            Op::AddRules(_, _, chain) => chain.rules.len(),
            Op::AddElements(_, _, e) => e.len(),
            Op::DeleteElements(_, _, e) => e.len(),
            _ => 1,
        }
    }
}

/// An ordered list of operations applied atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    pub ops: Vec<Op>,
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Kernel objects written (see [`Op::size`]).
    pub fn size(&self) -> usize {
        self.ops.iter().map(Op::size).sum()
    }

    /// Chains this transaction flushes that the desired ruleset no longer has: they become stale.
    pub fn newly_stale<'a>(
        &'a self,
        desired: &'a Ruleset,
    ) -> impl Iterator<Item = (Family, &'a ChainName)> + 'a {
        self.ops.iter().filter_map(move |op| match op {
            Op::FlushChain(f, name) if desired.chain(*f, name).is_none() => Some((*f, name)),
            _ => None,
        })
    }
}

/// The transaction that creates `items` from nothing, one op per object (so a script of it prints
/// each element on a line of its own): how `explain` shows a Service's objects.
pub fn creating(items: Vec<Item>) -> Transaction {
    let mut ops = Vec::new();
    for item in items {
        match item {
            Item::Set { family, name, spec } => ops.push(Op::AddSet(family, name, spec)),
            Item::Chain {
                family,
                name,
                chain,
            } => {
                ops.push(Op::AddChain(family, name.clone(), chain.base));
                if !chain.rules.is_empty() {
                    ops.push(Op::AddRules(family, name, chain));
                }
            }
            Item::Element {
                family,
                set,
                key,
                value,
            } => ops.push(Op::AddElements(family, set, vec![(key, value)])),
        }
    }
    Transaction { ops }
}

/// Which objects a diff looks at.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// Everything in the kernel and the desired ruleset.
    Full,
    /// Only these objects (those a sync touched).
    Objects(&'a BTreeSet<ObjectRef>),
}

/// Ops of one family, collected by phase and emitted in an order the kernel accepts: objects
/// exist before anything refers to them, and references are gone before objects are deleted.
#[derive(Default)]
struct Phases {
    table: Vec<Op>,
    add_sets: Vec<Op>,
    remove_base_chains: Vec<Op>,
    add_chains: Vec<Op>,
    flush_chains: Vec<Op>,
    flush_sets: Vec<Op>,
    delete_elements: BTreeMap<SetName, Vec<ElementKey>>,
    add_rules: Vec<Op>,
    add_elements: BTreeMap<SetName, Vec<(ElementKey, ElementValue)>>,
    delete_chains: Vec<Op>,
    delete_sets: Vec<Op>,
}

impl Phases {
    /// A new chain with all its rules.
    fn create_chain(&mut self, family: Family, name: ChainName, chain: &Arc<Chain>) {
        self.add_chains
            .push(Op::AddChain(family, name.clone(), chain.base));
        if !chain.rules.is_empty() {
            self.add_rules
                .push(Op::AddRules(family, name, chain.clone()));
        }
    }

    fn into_ops(self, family: Family, out: &mut Vec<Op>) {
        out.extend(self.table);
        out.extend(self.add_sets);
        // Flushing first removes jumps to a chain that is about to be deleted and re-created.
        out.extend(self.flush_chains);
        out.extend(self.remove_base_chains);
        out.extend(self.add_chains);
        out.extend(self.flush_sets);
        out.extend(
            self.delete_elements
                .into_iter()
                .map(|(set, keys)| Op::DeleteElements(family, set, keys)),
        );
        out.extend(self.add_rules);
        out.extend(
            self.add_elements
                .into_iter()
                .map(|(set, elements)| Op::AddElements(family, set, elements)),
        );
        out.extend(self.delete_chains);
        out.extend(self.delete_sets);
    }
}

/// Computes the transaction that makes the kernel hold `desired` for the objects in `scope`, and
/// deletes the chains in `stale_due` (flushed earlier, delay passed) that are still unwanted.
pub fn diff(
    kernel: &KernelState,
    desired: &Ruleset,
    scope: Scope<'_>,
    stale_due: &[(Family, ChainName)],
) -> Transaction {
    let mut ops = Vec::new();
    for family in Family::ALL {
        let mut phases = Phases::default();
        match (desired.has_table(family), kernel.table(family)) {
            (false, None) => {}
            (false, Some(_)) => {
                if matches!(scope, Scope::Full) {
                    phases.table.push(Op::DeleteTable(family));
                }
            }
            (true, None) => build_table(family, desired, &mut phases),
            (true, Some(table)) => {
                if must_replace(family, table, desired, scope) {
                    // A set's type cannot change in place, and objects someone else put in our
                    // table may have names nft cannot even parse: replace the whole table in the
                    // same atomic transaction, so there is no moment without rules.
                    phases.table.push(Op::DeleteTable(family));
                    build_table(family, desired, &mut phases);
                } else {
                    update_table(family, table, desired, scope, &mut phases);
                    for (f, name) in stale_due {
                        let unwanted = desired.chain(*f, name).is_none();
                        let empty = table
                            .chains
                            .get(name)
                            .is_some_and(|c| c.content == ChainContent::Empty);
                        if *f == family && unwanted && empty {
                            phases
                                .delete_chains
                                .push(Op::DeleteChain(family, name.clone()));
                        }
                    }
                }
            }
        }
        phases.into_ops(family, &mut ops);
    }
    Transaction { ops }
}

/// Whether the table has to be replaced rather than updated: a set of another type, or, on a
/// full diff, objects we did not write (a chain or set we do not want whose name is not one of our
/// per-service names, or objects we could not read at all).
fn must_replace(family: Family, table: &KernelTable, desired: &Ruleset, scope: Scope<'_>) -> bool {
    let differs = |name: &SetName, spec: &SetSpec| {
        table
            .sets
            .get(name)
            .is_some_and(|k| !spec.matches_kernel(&k.spec))
    };
    match scope {
        Scope::Full => {
            let ours = |name: &str| name.contains('/');
            table.foreign
                || desired.sets(family).any(|(n, s)| differs(n, s))
                || table
                    .chains
                    .keys()
                    .any(|n| desired.chain(family, n).is_none() && !ours(n.as_str()))
                || table
                    .sets
                    .keys()
                    .any(|n| desired.set(family, n).is_none() && !ours(n.as_str()))
        }
        Scope::Objects(objects) => objects.iter().any(|o| match o {
            ObjectRef::Set(f, name) if *f == family => {
                desired.set(family, name).is_some_and(|s| differs(name, s))
            }
            _ => false,
        }),
    }
}

/// Everything for a table that does not exist yet.
fn build_table(family: Family, desired: &Ruleset, phases: &mut Phases) {
    phases.table.push(Op::AddTable(family));
    for (name, spec) in desired.sets(family) {
        phases
            .add_sets
            .push(Op::AddSet(family, name.clone(), spec.clone()));
        let elements: Vec<_> = desired
            .elements(family, name)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !elements.is_empty() {
            phases.add_elements.insert(name.clone(), elements);
        }
    }
    for (name, chain) in desired.chains(family) {
        phases.create_chain(family, name.clone(), chain);
    }
}

/// Changes for an existing table whose sets all have the right types.
fn update_table(
    family: Family,
    table: &KernelTable,
    desired: &Ruleset,
    scope: Scope<'_>,
    phases: &mut Phases,
) {
    let refs: Box<dyn Iterator<Item = ObjectRef> + '_> = match scope {
        Scope::Full => {
            let kernel_sets = table.sets.keys().map(|n| ObjectRef::Set(family, n.clone()));
            let kernel_chains = table
                .chains
                .keys()
                .map(|n| ObjectRef::Chain(family, n.clone()));
            let kernel_elements = table.sets.iter().flat_map(|(set, s)| {
                s.elements
                    .keys()
                    .map(move |k| ObjectRef::Element(family, set.clone(), k.clone()))
            });
            let all: BTreeSet<ObjectRef> = desired
                .object_refs(family)
                .chain(kernel_sets)
                .chain(kernel_chains)
                .chain(kernel_elements)
                .collect();
            Box::new(all.into_iter())
        }
        Scope::Objects(objects) => Box::new(
            objects
                .iter()
                .filter(|o| object_family(o) == family)
                .cloned(),
        ),
    };
    let mut flushed_sets = BTreeSet::new();
    if matches!(scope, Scope::Full) {
        for (name, set) in &table.sets {
            if set.foreign_elements && desired.set(family, name).is_some() {
                phases.flush_sets.push(Op::FlushSet(family, name.clone()));
                flushed_sets.insert(name.clone());
            }
        }
    }
    for object in refs {
        match object {
            ObjectRef::Set(_, name) => {
                match (desired.set(family, &name), table.sets.contains_key(&name)) {
                    (Some(spec), false) => {
                        phases.add_sets.push(Op::AddSet(family, name, spec.clone()))
                    }
                    (None, true) => phases.delete_sets.push(Op::DeleteSet(family, name)),
                    _ => {}
                }
            }
            ObjectRef::Chain(_, name) => update_chain(family, table, desired, name, phases),
            ObjectRef::Element(_, set, key) => {
                let Some(_) = desired.set(family, &set) else {
                    continue; // the set goes away with its elements
                };
                let want = desired.element(family, &set, &key);
                let have = if flushed_sets.contains(&set) {
                    None
                } else {
                    table.sets.get(&set).and_then(|s| s.elements.get(&key))
                };
                match (want, have) {
                    (Some(w), Some(h)) if w == h => {}
                    (Some(w), h) => {
                        if h.is_some() {
                            phases
                                .delete_elements
                                .entry(set.clone())
                                .or_default()
                                .push(key.clone());
                        }
                        phases
                            .add_elements
                            .entry(set)
                            .or_default()
                            .push((key, w.clone()));
                    }
                    (None, Some(_)) => phases.delete_elements.entry(set).or_default().push(key),
                    (None, None) => {}
                }
            }
        }
    }
}

fn update_chain(
    family: Family,
    table: &KernelTable,
    desired: &Ruleset,
    name: ChainName,
    phases: &mut Phases,
) {
    match (desired.chain(family, &name), table.chains.get(&name)) {
        (Some(want), None) => phases.create_chain(family, name, want),
        (Some(want), Some(have)) if have.base != want.base => {
            // Hook and priority cannot change in place: delete and re-create in this transaction.
            phases
                .remove_base_chains
                .push(Op::FlushChain(family, name.clone()));
            phases
                .remove_base_chains
                .push(Op::DeleteChain(family, name.clone()));
            phases.create_chain(family, name, want);
        }
        (Some(want), Some(have)) => {
            let expected = if want.rules.is_empty() {
                ChainContent::Empty
            } else {
                ChainContent::Ours {
                    digest: want.digest(),
                    rules: want.rules.len(),
                }
            };
            if have.content != expected {
                if have.content != ChainContent::Empty {
                    phases
                        .flush_chains
                        .push(Op::FlushChain(family, name.clone()));
                }
                if !want.rules.is_empty() {
                    phases
                        .add_rules
                        .push(Op::AddRules(family, name, want.clone()));
                }
            }
        }
        (None, Some(have)) => {
            if have.content != ChainContent::Empty {
                phases.flush_chains.push(Op::FlushChain(family, name));
            }
        }
        (None, None) => {}
    }
}

fn object_family(o: &ObjectRef) -> Family {
    match o {
        ObjectRef::Set(f, _) | ObjectRef::Chain(f, _) | ObjectRef::Element(f, _, _) => *f,
    }
}
