//! Isolating Services the kernel refuses. When the kernel names the operations of a transaction
//! it refused, [`culprits`] finds the Services that own them; the reconciler takes those Services
//! out (their objects are not programmed, a Warning Event and the
//! `kubenftproxy_quarantined_services` gauge say so) and programs everything else at once, so one
//! bad object cannot block all others. A quarantined Service is tried again when its Service or
//! EndpointSlices change, and every [`RETRY`] in any case (a missing kernel module may have been
//! loaded since).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::diff::{Op, Transaction};
use crate::model::ServiceKey;
use crate::ruleset::ObjectRef;
use crate::ruleset::desired::{Owner, Ruleset};

/// A quarantined Service is tried again after this long.
pub const RETRY: Duration = Duration::from_secs(300);
/// More culprits than this in one refusal is not a bad object but a broken kernel or base
/// ruleset: nothing is quarantined then.
pub const MAX_CULPRITS: usize = 16;

/// The Services the refused operations `ops` (indices into `tx.ops`) belong to. Operations on
/// chains and sets name their owner exactly and are preferred; element operations (whose
/// messages may hold elements of many Services) are used only when nothing else was refused.
/// Empty when the base ruleset is at fault or when more than [`MAX_CULPRITS`] would be named.
pub fn culprits(tx: &Transaction, ops: &[usize], desired: &Ruleset) -> BTreeSet<ServiceKey> {
    let mut objects: BTreeSet<Owner> = BTreeSet::new();
    let mut elements: BTreeSet<Owner> = BTreeSet::new();
    for op in ops.iter().filter_map(|i| tx.ops.get(*i)) {
        let owner = |object: ObjectRef| desired.owner_of(&object).cloned();
        match op {
            Op::AddChain(f, name, _)
            | Op::AddRules(f, name, _)
            | Op::FlushChain(f, name)
            | Op::DeleteChain(f, name) => {
                objects.extend(owner(ObjectRef::Chain(*f, name.clone())));
            }
            Op::AddSet(f, name, _) | Op::FlushSet(f, name) | Op::DeleteSet(f, name) => {
                objects.extend(owner(ObjectRef::Set(*f, name.clone())));
            }
            Op::AddElements(f, set, list) => {
                for (key, _) in list {
                    elements.extend(owner(ObjectRef::Element(*f, set.clone(), key.clone())));
                }
            }
            // Deleting what nobody wants any more, or the table itself: nobody's fault.
            Op::DeleteElements(..) | Op::AddTable(_) | Op::DeleteTable(_) => {}
        }
    }
    let owners = if objects.is_empty() {
        elements
    } else {
        objects
    };
    if owners.contains(&Owner::Base) || owners.len() > MAX_CULPRITS {
        return BTreeSet::new();
    }
    owners
        .into_iter()
        .filter_map(|o| match o {
            Owner::Service(key) => Some((*key).clone()),
            Owner::Base => None,
        })
        .collect()
}

/// The quarantined Services and since when.
#[derive(Debug, Default)]
pub struct Quarantine {
    since: BTreeMap<ServiceKey, Instant>,
}

impl Quarantine {
    pub fn contains(&self, key: &ServiceKey) -> bool {
        self.since.contains_key(key)
    }

    pub fn insert(&mut self, key: ServiceKey, now: Instant) {
        self.since.insert(key, now);
    }

    /// Takes a Service out of quarantine; returns whether it was in.
    pub fn lift(&mut self, key: &ServiceKey) -> bool {
        self.since.remove(key).is_some()
    }

    /// Takes out every Service quarantined for [`RETRY`] or longer at `now`.
    pub fn lift_expired(&mut self, now: Instant) -> Vec<ServiceKey> {
        let due: Vec<ServiceKey> = self
            .since
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= RETRY)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &due {
            self.since.remove(key);
        }
        due
    }

    /// When the next Service is due to be tried again.
    pub fn next_retry(&self) -> Option<Instant> {
        self.since.values().min().map(|since| *since + RETRY)
    }

    pub fn len(&self) -> usize {
        self.since.len()
    }

    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_wait_for_the_retry_period() {
        let t0 = Instant::now();
        let key = |n: &str| ServiceKey {
            namespace: crate::model::Label::parse("ns").unwrap(),
            name: crate::model::Label::parse(n).unwrap(),
        };
        let mut q = Quarantine::default();
        q.insert(key("a"), t0);
        q.insert(key("b"), t0 + Duration::from_secs(10));
        assert_eq!(q.next_retry(), Some(t0 + RETRY));
        assert!(q.lift_expired(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(q.lift_expired(t0 + RETRY), [key("a")]);
        assert!(q.lift(&key("b")));
        assert!(q.is_empty());
    }
}
