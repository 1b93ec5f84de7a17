//! The current objects, indexed by Service, and what changed since the last sync. Pure data:
//! it does not know where objects come from or how they are programmed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::model::{
    EndpointSlice, Label, Node, Object, ObjectId, ObjectKey, Service, ServiceKey, Subdomain,
};

/// An object appeared or changed, or went away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Upsert(Object),
    Delete(ObjectId),
}

/// What changed about one Service since the last sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// The Service object itself.
    pub service: bool,
    /// One of its EndpointSlices.
    pub endpoints: bool,
}

/// What a sync has to look at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub services: BTreeMap<ServiceKey, Changed>,
    /// This node's object changed (zone, addresses): everything must be planned again.
    pub node: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && !self.node
    }

    /// Services whose Service object changed (kube-proxy's pending service changes).
    pub fn service_count(&self) -> usize {
        self.services.values().filter(|c| c.service).count()
    }

    /// Services whose EndpointSlices changed (kube-proxy's pending endpoint changes).
    pub fn endpoint_count(&self) -> usize {
        self.services.values().filter(|c| c.endpoints).count()
    }

    fn service(&mut self, key: ServiceKey) {
        self.services.entry(key).or_default().service = true;
    }

    fn endpoints(&mut self, key: ServiceKey) {
        self.services.entry(key).or_default().endpoints = true;
    }
}

/// All objects the proxy knows.
#[derive(Debug)]
pub struct State {
    node_name: String,
    services: HashMap<ServiceKey, Arc<Service>>,
    slices: HashMap<ObjectKey, Arc<EndpointSlice>>,
    slices_by_service: HashMap<ServiceKey, BTreeSet<ObjectKey>>,
    node: Option<Arc<Node>>,
    pending: Changes,
}

impl State {
    /// State for the node named `node_name` (other Node objects are ignored).
    pub fn new(node_name: &str) -> State {
        State {
            node_name: node_name.to_string(),
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            node: None,
            pending: Changes::default(),
        }
    }

    /// Records a change; returns whether it changed anything.
    pub fn apply(&mut self, change: Change) -> bool {
        match change {
            Change::Upsert(Object::Service(svc)) => {
                let key = svc.key.clone();
                if self.services.get(&key) == Some(&svc) {
                    return false;
                }
                self.services.insert(key.clone(), svc);
                self.pending.service(key);
                true
            }
            Change::Upsert(Object::EndpointSlice(slice)) => {
                if self.slices.get(&slice.key) == Some(&slice) {
                    return false;
                }
                self.remove_slice(&slice.key.clone());
                self.slices_by_service
                    .entry(slice.service.clone())
                    .or_default()
                    .insert(slice.key.clone());
                self.pending.endpoints(slice.service.clone());
                self.slices.insert(slice.key.clone(), slice);
                true
            }
            Change::Upsert(Object::Node(node)) => {
                if node.name != self.node_name || self.node.as_ref() == Some(&node) {
                    return false;
                }
                self.node = Some(node);
                self.pending.node = true;
                true
            }
            Change::Delete(ObjectId::Service { namespace, name }) => {
                let Some(key) = service_key(&namespace, &name) else {
                    return false;
                };
                if self.services.remove(&key).is_none() {
                    return false;
                }
                self.pending.service(key);
                true
            }
            Change::Delete(ObjectId::EndpointSlice { namespace, name }) => {
                let (Ok(namespace), Ok(name)) = (Label::parse(&namespace), Subdomain::parse(&name))
                else {
                    return false;
                };
                self.remove_slice(&ObjectKey { namespace, name })
            }
            Change::Delete(ObjectId::Node { name }) => {
                if name != self.node_name || self.node.is_none() {
                    return false;
                }
                self.node = None;
                self.pending.node = true;
                true
            }
        }
    }

    fn remove_slice(&mut self, key: &ObjectKey) -> bool {
        let Some(old) = self.slices.remove(key) else {
            return false;
        };
        if let Some(keys) = self.slices_by_service.get_mut(&old.service) {
            keys.remove(key);
            if keys.is_empty() {
                self.slices_by_service.remove(&old.service);
            }
        }
        self.pending.endpoints(old.service.clone());
        true
    }

    /// Takes the changes recorded since the last call.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.pending)
    }

    /// Whether changes are waiting.
    pub fn has_changes(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The changes waiting (for the pending-changes gauges).
    pub fn pending(&self) -> &Changes {
        &self.pending
    }

    pub fn service(&self, key: &ServiceKey) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    pub fn service_keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services.keys()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The slices labelled with the Service's name, in name order.
    pub fn slices_of(&self, key: &ServiceKey) -> Vec<Arc<EndpointSlice>> {
        self.slices_by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k).cloned())
            .collect()
    }

    pub fn node(&self) -> Option<&Arc<Node>> {
        self.node.as_ref()
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }
}

fn service_key(namespace: &str, name: &str) -> Option<ServiceKey> {
    Some(ServiceKey {
        namespace: Label::parse(namespace).ok()?,
        name: Label::parse(name).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{NodeBuilder, ServiceBuilder, SliceBuilder};

    fn svc(ip: &str) -> Object {
        Object::Service(
            ServiceBuilder::new("ns", "web")
                .cluster_ip(ip)
                .port("", 80, "TCP")
                .model()
                .unwrap(),
        )
    }

    fn slice(name: &str, service: &str) -> Object {
        Object::EndpointSlice(
            SliceBuilder::new("ns", name, service, "IPv4")
                .port("", 80, "TCP")
                .endpoint("10.0.0.1", "")
                .model()
                .unwrap(),
        )
    }

    #[test]
    fn changes_mark_their_service_dirty_once() {
        let mut s = State::new("n1");
        assert!(s.apply(Change::Upsert(svc("10.96.0.1"))));
        assert!(
            !s.apply(Change::Upsert(svc("10.96.0.1"))),
            "identical update is a no-op"
        );
        assert!(s.apply(Change::Upsert(slice("web-1", "web"))));
        let changes = s.take_changes();
        assert_eq!(changes.services.len(), 1);
        assert_eq!((changes.service_count(), changes.endpoint_count()), (1, 1));
        assert!(!s.has_changes());
        let (key, _) = changes.services.first_key_value().unwrap();
        assert_eq!(s.slices_of(key).len(), 1);
    }

    #[test]
    fn a_slice_moving_to_another_service_dirties_both() {
        let mut s = State::new("n1");
        s.apply(Change::Upsert(slice("x-1", "a")));
        s.take_changes();
        s.apply(Change::Upsert(slice("x-1", "b")));
        let names: Vec<String> = s
            .take_changes()
            .services
            .keys()
            .map(|k| k.name.to_string())
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn deletes() {
        let mut s = State::new("n1");
        s.apply(Change::Upsert(svc("10.96.0.1")));
        s.apply(Change::Upsert(slice("web-1", "web")));
        s.take_changes();
        assert!(s.apply(Change::Delete(ObjectId::EndpointSlice {
            namespace: "ns".into(),
            name: "web-1".into()
        })));
        assert!(s.apply(Change::Delete(ObjectId::Service {
            namespace: "ns".into(),
            name: "web".into()
        })));
        assert!(!s.apply(Change::Delete(ObjectId::Service {
            namespace: "ns".into(),
            name: "Invalid Name".into()
        })));
        assert_eq!(s.take_changes().services.len(), 1);
        assert_eq!(s.service_count(), 0);
    }

    #[test]
    fn only_this_nodes_object_counts() {
        let mut s = State::new("n1");
        assert!(!s.apply(Change::Upsert(Object::Node(
            NodeBuilder::new("n2").model().unwrap()
        ))));
        assert!(s.apply(Change::Upsert(Object::Node(
            NodeBuilder::new("n1").zone("z").model().unwrap()
        ))));
        assert!(s.take_changes().node);
    }
}
