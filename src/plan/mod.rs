//! kube-proxy's semantics as a pure function: a Service, its EndpointSlices and the node's
//! settings → per IP family and service port, what to program (frontends, chosen endpoints, what
//! happens without endpoints, masquerading). Knows nothing of nftables syntax.

pub mod endpoints;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub use endpoints::{Candidate, Categorized, Selection, categorize};

use crate::model::{Cidr, EndpointSlice, Family, Node, PortName, Protocol, Service, ServiceKey};

/// Node-wide settings the plan depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSettings {
    /// This node's name (endpoint locality is `nodeName == node_name`).
    pub node_name: String,
    /// Pod CIDR per family (index [`Family::index`]): traffic from elsewhere to a ClusterIP is
    /// masqueraded.
    pub cluster_cidrs: [Option<Cidr>; 2],
    pub masquerade_all: bool,
    /// The single mark bit used to request masquerading (`1 << masqueradeBit`).
    pub masquerade_mark: u32,
    /// The Node object, when known.
    pub node: Option<Arc<Node>>,
}

impl NodeSettings {
    pub fn cluster_cidr(&self, family: Family) -> Option<Cidr> {
        self.cluster_cidrs[family.index()]
    }
}

/// What happens to new connections for a frontend without usable endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoEndpoints {
    /// ICMP port unreachable.
    Reject,
}

/// Everything to program for one service port in one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPlan {
    pub family: Family,
    pub name: PortName,
    pub protocol: Protocol,
    pub port: u16,
    pub cluster_ip: IpAddr,
    /// Endpoints for cluster-wide traffic, sorted as upstream sorts them (by `IP:port` text).
    pub endpoints: Categorized,
    /// Set when the cluster list is empty.
    pub no_endpoints: Option<NoEndpoints>,
}

/// Everything to program for one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePlan {
    pub key: ServiceKey,
    pub ports: Vec<PortPlan>,
}

/// Plans a Service from its slices (those labelled with its name, any family).
pub fn plan_service(
    service: &Service,
    slices: &[Arc<EndpointSlice>],
    node: &NodeSettings,
) -> ServicePlan {
    let mut ports = Vec::new();
    for family in Family::ALL {
        let Some(cluster_ip) = service.cluster_ip(family) else {
            continue;
        };
        for port in &service.ports {
            let candidates = candidates(slices, family, &port.name, port.protocol, &node.node_name);
            let endpoints = categorize(&candidates);
            let no_endpoints = endpoints.cluster.is_empty().then_some(NoEndpoints::Reject);
            ports.push(PortPlan {
                family,
                name: port.name.clone(),
                protocol: port.protocol,
                port: port.port,
                cluster_ip,
                endpoints,
                no_endpoints,
            });
        }
    }
    ServicePlan {
        key: service.key.clone(),
        ports,
    }
}

/// The endpoints of one service port: from every slice of the family, the slice port with the
/// same name and protocol gives the target port (this is how named targetPorts resolve). Endpoints
/// listed by several slices count once; a local copy wins.
fn candidates(
    slices: &[Arc<EndpointSlice>],
    family: Family,
    name: &PortName,
    protocol: Protocol,
    node_name: &str,
) -> Vec<Candidate> {
    let mut by_addr: BTreeMap<String, Candidate> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.family == family) {
        let Some(port) = slice
            .ports
            .iter()
            .find(|p| p.name == *name && p.protocol == protocol)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let addr = SocketAddr::new(ep.addr, port.port);
            let candidate = Candidate {
                addr,
                ready: ep.ready,
                serving: ep.serving,
                terminating: ep.terminating,
                local: ep
                    .node_name
                    .as_ref()
                    .is_some_and(|n| n.as_str() == node_name),
            };
            let key = addr.to_string();
            match by_addr.get(&key) {
                Some(existing) if existing.local || !candidate.local => {}
                _ => {
                    by_addr.insert(key, candidate);
                }
            }
        }
    }
    by_addr.into_values().collect()
}

#[cfg(test)]
mod tests;
