//! The desired ruleset, assembled from fragments: the base fragment (table layout) and one
//! fragment per Service. Each object is *claimed* by the fragments that want it; when two owners
//! want the same element or chain with different content, the first owner in order wins
//! deterministically and the conflict is reported. Replacing one owner's fragment touches only
//! that owner's objects, which is what keeps a sync proportional to the change.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::{Chain, ChainName, ElementKey, ElementValue, ObjectRef, SetName, SetSpec};
use crate::model::{Family, ServiceKey};

/// Who contributed an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    /// The table layout every node has.
    Base,
    /// Shared by all of one fragment's claims.
    Service(Arc<ServiceKey>),
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Base => f.write_str("base ruleset"),
            Owner::Service(key) => write!(f, "Service {key}"),
        }
    }
}

/// One object of a fragment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Set {
        family: Family,
        name: SetName,
        spec: Arc<SetSpec>,
    },
    Chain {
        family: Family,
        name: ChainName,
        chain: Arc<Chain>,
    },
    Element {
        family: Family,
        set: SetName,
        key: ElementKey,
        value: ElementValue,
    },
}

impl Item {
    pub fn object_ref(&self) -> ObjectRef {
        match self {
            Item::Set { family, name, .. } => ObjectRef::Set(*family, name.clone()),
            Item::Chain { family, name, .. } => ObjectRef::Chain(*family, name.clone()),
            Item::Element {
                family, set, key, ..
            } => ObjectRef::Element(*family, set.clone(), key.clone()),
        }
    }
}

/// Two owners want one object with different content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub object: ObjectRef,
    pub winner: Owner,
    pub loser: Owner,
}

/// The owners wanting one object, in owner order; the first one's content is in force. Almost
/// every object has one owner, which needs no allocation of its own.
#[derive(Debug)]
enum Claims<T> {
    One(Owner, T),
    /// Two or more, sorted by owner.
    Many(Vec<(Owner, T)>),
}

impl<T: PartialEq + Clone> Claims<T> {
    /// The owner whose content is in force.
    fn winner(&self) -> Option<&Owner> {
        match self {
            Claims::One(o, _) => Some(o),
            Claims::Many(list) => list.first().map(|(o, _)| o),
        }
    }

    fn effective(&self) -> Option<&T> {
        match self {
            Claims::One(_, v) => Some(v),
            Claims::Many(list) => list.first().map(|(_, v)| v),
        }
    }

    /// What `owner` claims, if anything.
    fn of(&self, owner: &Owner) -> Option<&T> {
        match self {
            Claims::One(o, v) => (o == owner).then_some(v),
            Claims::Many(list) => list.iter().find(|(o, _)| o == owner).map(|(_, v)| v),
        }
    }

    /// Adds a claim; returns the conflict if another owner wants different content.
    fn claim(
        &mut self,
        owner: &Owner,
        value: T,
        object: impl FnOnce() -> ObjectRef,
    ) -> Option<Conflict> {
        let mut list = match std::mem::replace(self, Claims::Many(Vec::new())) {
            Claims::One(o, v) => vec![(o, v)],
            Claims::Many(list) => list,
        };
        let conflict = Self::claim_in(&mut list, owner, value, object);
        *self = Claims::from_list(list);
        conflict
    }

    fn claim_in(
        list: &mut Vec<(Owner, T)>,
        owner: &Owner,
        value: T,
        object: impl FnOnce() -> ObjectRef,
    ) -> Option<Conflict> {
        if list.iter().any(|(o, _)| o == owner) {
            return None;
        }
        let at = list.partition_point(|(o, _)| o < owner);
        list.insert(at, (owner.clone(), value));
        let (winner, winning) = &list[0];
        // The new claim conflicts if it wins over different content, or loses with different content.
        let loser = if winner == owner {
            list[1..]
                .iter()
                .find(|(_, v)| v != winning)
                .map(|(o, _)| o.clone())?
        } else if list[at].1 != *winning {
            owner.clone()
        } else {
            return None;
        };
        Some(Conflict {
            object: object(),
            winner: winner.clone(),
            loser,
        })
    }

    fn from_list(mut list: Vec<(Owner, T)>) -> Claims<T> {
        if list.len() == 1
            && let Some((o, v)) = list.pop()
        {
            return Claims::One(o, v);
        }
        Claims::Many(list)
    }

    /// Drops `owner`'s claim; returns whether no claim is left.
    fn release(&mut self, owner: &Owner) -> bool {
        match self {
            Claims::One(o, _) => o == owner,
            Claims::Many(list) => {
                list.retain(|(o, _)| o != owner);
                let empty = list.is_empty();
                if !empty {
                    *self = Claims::from_list(std::mem::take(list));
                }
                empty
            }
        }
    }
}

/// Claims `key` in `map` for `owner`.
fn claim_at<K: Ord, T: PartialEq + Clone>(
    map: &mut BTreeMap<K, Claims<T>>,
    key: K,
    owner: &Owner,
    value: T,
    object: impl FnOnce() -> ObjectRef,
) -> Option<Conflict> {
    match map.entry(key) {
        Entry::Vacant(e) => {
            e.insert(Claims::One(owner.clone(), value));
            None
        }
        Entry::Occupied(mut e) => e.get_mut().claim(owner, value, object),
    }
}

#[derive(Debug, Default)]
struct Table {
    sets: BTreeMap<SetName, Claims<Arc<SetSpec>>>,
    chains: BTreeMap<ChainName, Claims<Arc<Chain>>>,
    elements: BTreeMap<SetName, BTreeMap<ElementKey, Claims<ElementValue>>>,
}

/// Where [`Ruleset::replace`] records the objects whose content may have changed.
pub trait Touched {
    fn touch(&mut self, object: ObjectRef);
}

impl Touched for BTreeSet<ObjectRef> {
    fn touch(&mut self, object: ObjectRef) {
        self.insert(object);
    }
}

/// Records nothing: for syncs that diff every object anyway.
pub struct Untracked;

impl Touched for Untracked {
    fn touch(&mut self, _: ObjectRef) {}
}

/// The ruleset the current objects call for.
#[derive(Debug, Default)]
pub struct Ruleset {
    /// What each owner claims (the content is in the claims).
    fragments: HashMap<Owner, Vec<ObjectRef>>,
    tables: [Table; 2],
}

impl Ruleset {
    pub fn new() -> Ruleset {
        Ruleset::default()
    }

    /// Replaces everything `owner` contributes. Every object whose content may have changed is
    /// added to `touched`; conflicts with other owners are returned.
    pub fn replace(
        &mut self,
        owner: Owner,
        items: Vec<Item>,
        touched: &mut impl Touched,
    ) -> Vec<Conflict> {
        if self.unchanged(&owner, &items) {
            return Vec::new();
        }
        if let Some(old) = self.fragments.remove(&owner) {
            for object in old {
                self.release(&owner, &object);
                touched.touch(object);
            }
        }
        let mut conflicts = Vec::new();
        let mut refs = Vec::with_capacity(items.len());
        for item in &items {
            let object = item.object_ref();
            touched.touch(object.clone());
            conflicts.extend(self.claim(&owner, item));
            refs.push(object);
        }
        if !refs.is_empty() {
            self.fragments.insert(owner, refs);
        }
        conflicts
    }

    /// Whether `owner` already claims exactly `items` (same objects, same content, same order).
    fn unchanged(&self, owner: &Owner, items: &[Item]) -> bool {
        let old = self.fragments.get(owner).map_or(&[][..], Vec::as_slice);
        old.len() == items.len()
            && items
                .iter()
                .zip(old)
                .all(|(item, object)| item.object_ref() == *object && self.claimed_as(owner, item))
    }

    /// Whether `owner`'s claim on the item's object has the item's content.
    fn claimed_as(&self, owner: &Owner, item: &Item) -> bool {
        let table = |family: &Family| &self.tables[family.index()];
        match item {
            Item::Set { family, name, spec } => table(family)
                .sets
                .get(name)
                .is_some_and(|c| c.of(owner) == Some(spec)),
            Item::Chain {
                family,
                name,
                chain,
            } => table(family)
                .chains
                .get(name)
                .is_some_and(|c| c.of(owner) == Some(chain)),
            Item::Element {
                family,
                set,
                key,
                value,
            } => table(family)
                .elements
                .get(set)
                .and_then(|keys| keys.get(key))
                .is_some_and(|c| c.of(owner) == Some(value)),
        }
    }

    /// Removes everything `owner` contributes.
    pub fn remove(&mut self, owner: &Owner, touched: &mut impl Touched) {
        self.replace(owner.clone(), Vec::new(), touched);
    }

    /// Owners that currently contribute something.
    pub fn owners(&self) -> impl Iterator<Item = &Owner> {
        self.fragments.keys()
    }

    fn claim(&mut self, owner: &Owner, item: &Item) -> Option<Conflict> {
        let object = || item.object_ref();
        match item {
            Item::Set { family, name, spec } => claim_at(
                &mut self.tables[family.index()].sets,
                name.clone(),
                owner,
                spec.clone(),
                object,
            ),
            Item::Chain {
                family,
                name,
                chain,
            } => claim_at(
                &mut self.tables[family.index()].chains,
                name.clone(),
                owner,
                chain.clone(),
                object,
            ),
            Item::Element {
                family,
                set,
                key,
                value,
            } => claim_at(
                self.tables[family.index()]
                    .elements
                    .entry(set.clone())
                    .or_default(),
                key.clone(),
                owner,
                value.clone(),
                object,
            ),
        }
    }

    fn release(&mut self, owner: &Owner, object: &ObjectRef) {
        match object {
            ObjectRef::Set(family, name) => {
                let sets = &mut self.tables[family.index()].sets;
                release_in(sets, name, owner);
            }
            ObjectRef::Chain(family, name) => {
                let chains = &mut self.tables[family.index()].chains;
                release_in(chains, name, owner);
            }
            ObjectRef::Element(family, set, key) => {
                let elements = &mut self.tables[family.index()].elements;
                if let Some(keys) = elements.get_mut(set) {
                    release_in(keys, key, owner);
                    if keys.is_empty() {
                        elements.remove(set);
                    }
                }
            }
        }
    }

    /// Whether the family's table has anything in it.
    pub fn has_table(&self, family: Family) -> bool {
        let t = &self.tables[family.index()];
        !(t.sets.is_empty() && t.chains.is_empty())
    }

    pub fn set(&self, family: Family, name: &SetName) -> Option<&Arc<SetSpec>> {
        self.tables[family.index()]
            .sets
            .get(name)
            .and_then(Claims::effective)
    }

    pub fn chain(&self, family: Family, name: &ChainName) -> Option<&Arc<Chain>> {
        self.tables[family.index()]
            .chains
            .get(name)
            .and_then(Claims::effective)
    }

    pub fn element(
        &self,
        family: Family,
        set: &SetName,
        key: &ElementKey,
    ) -> Option<&ElementValue> {
        self.tables[family.index()]
            .elements
            .get(set)
            .and_then(|keys| keys.get(key))
            .and_then(Claims::effective)
    }

    pub fn sets(&self, family: Family) -> impl Iterator<Item = (&SetName, &Arc<SetSpec>)> {
        self.tables[family.index()]
            .sets
            .iter()
            .filter_map(|(n, c)| c.effective().map(|s| (n, s)))
    }

    pub fn chains(&self, family: Family) -> impl Iterator<Item = (&ChainName, &Arc<Chain>)> {
        self.tables[family.index()]
            .chains
            .iter()
            .filter_map(|(n, c)| c.effective().map(|s| (n, s)))
    }

    pub fn elements(
        &self,
        family: Family,
        set: &SetName,
    ) -> impl Iterator<Item = (&ElementKey, &ElementValue)> {
        self.tables[family.index()]
            .elements
            .get(set)
            .into_iter()
            .flatten()
            .filter_map(|(k, c)| c.effective().map(|v| (k, v)))
    }

    /// The owner whose content of `object` is in force (`None`: nobody wants it).
    pub fn owner_of(&self, object: &ObjectRef) -> Option<&Owner> {
        match object {
            ObjectRef::Set(f, name) => self.tables[f.index()].sets.get(name)?.winner(),
            ObjectRef::Chain(f, name) => self.tables[f.index()].chains.get(name)?.winner(),
            ObjectRef::Element(f, set, key) => {
                self.tables[f.index()].elements.get(set)?.get(key)?.winner()
            }
        }
    }

    /// Every object of a family, for full diffs.
    pub fn object_refs(&self, family: Family) -> impl Iterator<Item = ObjectRef> + '_ {
        let t = &self.tables[family.index()];
        let sets = t
            .sets
            .keys()
            .map(move |n| ObjectRef::Set(family, n.clone()));
        let chains = t
            .chains
            .keys()
            .map(move |n| ObjectRef::Chain(family, n.clone()));
        let elements = t.elements.iter().flat_map(move |(set, keys)| {
            keys.keys()
                .map(move |k| ObjectRef::Element(family, set.clone(), k.clone()))
        });
        sets.chain(chains).chain(elements)
    }
}

fn release_in<K: Ord, T: PartialEq + Clone>(
    map: &mut BTreeMap<K, Claims<T>>,
    key: &K,
    owner: &Owner,
) {
    if let Some(claims) = map.get_mut(key)
        && claims.release(owner)
    {
        map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Label;
    use crate::ruleset::Verdict;

    fn owner(name: &str) -> Owner {
        Owner::Service(Arc::new(ServiceKey {
            namespace: Label::parse("ns").unwrap(),
            name: Label::parse(name).unwrap(),
        }))
    }

    fn element(chain: &str) -> Item {
        Item::Element {
            family: Family::V4,
            set: SetName::new("service-ips").unwrap(),
            key: ElementKey::Addr("10.0.0.1".parse().unwrap()),
            value: ElementValue {
                data: crate::ruleset::ElementData::Verdict(Verdict::Goto(
                    ChainName::new(chain).unwrap(),
                )),
                comment: None,
            },
        }
    }

    fn effective(r: &Ruleset) -> Option<String> {
        r.element(
            Family::V4,
            &SetName::new("service-ips").unwrap(),
            &ElementKey::Addr("10.0.0.1".parse().unwrap()),
        )
        .map(|v| v.verdict().unwrap().to_string())
    }

    #[test]
    fn first_owner_wins_and_the_loser_takes_over_when_it_leaves() {
        let mut r = Ruleset::new();
        let mut touched = BTreeSet::new();
        assert!(
            r.replace(owner("b"), vec![element("chain-b")], &mut touched)
                .is_empty()
        );
        let conflicts = r.replace(owner("a"), vec![element("chain-a")], &mut touched);
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].winner, owner("a"));
        assert_eq!(conflicts[0].loser, owner("b"));
        assert_eq!(effective(&r).as_deref(), Some("goto chain-a"));
        r.remove(&owner("a"), &mut touched);
        assert_eq!(effective(&r).as_deref(), Some("goto chain-b"));
        r.remove(&owner("b"), &mut touched);
        assert_eq!(effective(&r), None);
        assert!(r.owners().next().is_none());
    }

    #[test]
    fn a_third_claim_agreeing_with_the_winner_is_no_conflict() {
        let mut r = Ruleset::new();
        let mut touched = BTreeSet::new();
        r.replace(owner("a"), vec![element("x")], &mut touched);
        assert_eq!(
            r.replace(owner("b"), vec![element("y")], &mut touched)
                .len(),
            1
        );
        assert!(
            r.replace(owner("c"), vec![element("x")], &mut touched)
                .is_empty()
        );
    }

    #[test]
    fn identical_claims_do_not_conflict() {
        let mut r = Ruleset::new();
        let mut touched = BTreeSet::new();
        r.replace(owner("a"), vec![element("x")], &mut touched);
        assert!(
            r.replace(owner("b"), vec![element("x")], &mut touched)
                .is_empty()
        );
    }

    #[test]
    fn an_unchanged_fragment_touches_nothing() {
        let mut r = Ruleset::new();
        let mut touched = BTreeSet::new();
        r.replace(owner("a"), vec![element("x")], &mut touched);
        touched.clear();
        r.replace(owner("a"), vec![element("x")], &mut touched);
        assert!(touched.is_empty());
        r.replace(owner("a"), vec![element("y")], &mut touched);
        assert_eq!(touched.len(), 1);
    }
}
