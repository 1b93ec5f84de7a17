//! kube-proxy's semantics as a pure function: a Service, its EndpointSlices and the node's
//! settings → per IP family and service port, what to program: frontends (ClusterIP, NodePort,
//! external IPs, load-balancer IPs), the cluster and local endpoint lists, which chain each kind
//! of traffic goes to, what happens without endpoints, source ranges and session affinity.
//! Knows nothing of nftables syntax.

pub mod endpoints;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub use endpoints::{Candidate, Categorized, Locality, Needs, Selection, categorize};

use crate::model::{
    Cidr, EndpointSlice, Family, Node, PortName, Protocol, Service, ServiceKey, ServiceType,
};

/// `--nodeport-addresses`: which addresses accept NodePorts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// The Node object's addresses (all local addresses when there is no Node object).
    Primary,
    /// Local addresses inside these prefixes; a family without one (or with a /0) accepts
    /// NodePorts on every local address.
    Cidrs(Vec<Cidr>),
}

/// Resolves `--nodeport-addresses` against the Node object and the local addresses, and picks
/// this node's own addresses; per family. Loopback never accepts NodePorts.
pub fn resolve_node_addresses(
    config: &NodePortAddresses,
    node: Option<&Node>,
    local: &[IpAddr],
) -> ([NodePortIps; 2], [Vec<IpAddr>; 2]) {
    let usable = |ip: &IpAddr| {
        !ip.is_loopback()
            && match ip {
                IpAddr::V6(v6) => !v6.is_unicast_link_local(),
                IpAddr::V4(_) => true,
            }
    };
    let node_ips = |family: Family| -> Vec<IpAddr> {
        let from: Vec<IpAddr> = match node {
            Some(n) if !n.addresses.is_empty() => n.addresses.clone(),
            _ => local.to_vec(),
        };
        from.into_iter()
            .filter(|ip| Family::of(ip) == family && usable(ip))
            .collect()
    };
    let nodeports = |family: Family| match config {
        NodePortAddresses::Primary => NodePortIps::Only(node_ips(family)),
        NodePortAddresses::Cidrs(cidrs) => {
            let mine: Vec<&Cidr> = cidrs.iter().filter(|c| c.family() == family).collect();
            if mine.is_empty() || mine.iter().any(|c| c.prefix_len() == 0) {
                NodePortIps::AllLocal
            } else {
                NodePortIps::Only(
                    local
                        .iter()
                        .copied()
                        .filter(|ip| {
                            Family::of(ip) == family
                                && !ip.is_loopback()
                                && mine.iter().any(|c| c.contains(ip))
                        })
                        .collect(),
                )
            }
        }
    };
    (
        [nodeports(Family::V4), nodeports(Family::V6)],
        [node_ips(Family::V4), node_ips(Family::V6)],
    )
}

/// Which addresses accept NodePorts in one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortIps {
    /// Every local address except loopback (`fib daddr type local`).
    AllLocal,
    /// These addresses only.
    Only(Vec<IpAddr>),
}

/// Node-wide settings the plan depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSettings {
    /// This node's name (endpoint locality is `nodeName == node_name`).
    pub node_name: String,
    /// Pod CIDR per family (index [`Family::index`]): traffic from elsewhere to a ClusterIP is
    /// masqueraded, and eTP=Local short-circuits traffic from it.
    pub cluster_cidrs: [Option<Cidr>; 2],
    pub masquerade_all: bool,
    /// The single mark bit used to request masquerading (`1 << masqueradeBit`).
    pub masquerade_mark: u32,
    /// The Node object, when known.
    pub node: Option<Arc<Node>>,
    /// The addresses accepting NodePorts, per family (resolved from `--nodeport-addresses`).
    pub nodeport_ips: [NodePortIps; 2],
    /// This node's own addresses per family (the Node object's, else the local ones): a
    /// load-balancer source range containing one of them also admits the LB IPs themselves.
    pub node_ips: [Vec<IpAddr>; 2],
}

impl NodeSettings {
    /// Settings for `node_name` with nothing else configured.
    pub fn new(node_name: &str) -> NodeSettings {
        NodeSettings {
            node_name: node_name.to_string(),
            cluster_cidrs: [None, None],
            masquerade_all: false,
            masquerade_mark: 0x4000,
            node: None,
            nodeport_ips: [NodePortIps::Only(Vec::new()), NodePortIps::Only(Vec::new())],
            node_ips: [Vec::new(), Vec::new()],
        }
    }

    pub fn cluster_cidr(&self, family: Family) -> Option<Cidr> {
        self.cluster_cidrs[family.index()]
    }

    fn locality(&self) -> Locality<'_> {
        Locality {
            node_name: &self.node_name,
            zone: self.node.as_ref().and_then(|n| n.zone.as_deref()),
        }
    }
}

/// What new connections that found no endpoint get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoEndpoints {
    /// ICMP port unreachable: the Service has no usable endpoint anywhere.
    Reject,
    /// Silently dropped: endpoints exist, but the Local policy allows none on this node.
    Drop,
}

/// Which per-service chain holds a list of endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// `service-…`: the cluster-wide list.
    Cluster,
    /// `local-…`: this node's endpoints.
    Local,
}

/// The source-range check of a load balancer's IPs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firewall {
    /// Sources allowed: the ranges of this family, plus the LB IPs when a range holds a node IP.
    /// Empty: nothing is allowed (the Service has ranges, none of this family).
    pub allowed: Vec<Cidr>,
}

/// Everything to program for one service port in one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPlan {
    pub family: Family,
    pub name: PortName,
    pub protocol: Protocol,
    pub port: u16,
    pub cluster_ip: IpAddr,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub firewall: Option<Firewall>,
    /// The endpoint lists (sorted as upstream sorts them, by `IP:port` text).
    pub endpoints: Categorized,
    /// `service-…` exists (cluster list used and non-empty).
    pub uses_cluster_chain: bool,
    /// `local-…` exists (local list used and non-empty).
    pub uses_local_chain: bool,
    /// The chain ClusterIP traffic goes to, and whether it has endpoints.
    pub internal_policy: Policy,
    pub has_internal_endpoints: bool,
    /// The chain external traffic ends in, and whether it has endpoints.
    pub external_policy: Policy,
    pub has_external_endpoints: bool,
    /// `external-…` exists: the port is externally reachable and has endpoints somewhere.
    pub uses_external_chain: bool,
    /// externalTrafficPolicy: Local (for an externally reachable port).
    pub external_local: bool,
    /// For ClusterIP traffic without internal endpoints.
    pub internal_no_endpoints: Option<NoEndpoints>,
    /// For external traffic without external endpoints.
    pub external_no_endpoints: Option<NoEndpoints>,
    /// ClientIP affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// Addresses of every serving endpoint, whatever the policies (stale-flow cleanup).
    pub serving_ips: Vec<IpAddr>,
    /// Endpoints that can be DNATed a packet they sent themselves (hairpin), to be masqueraded:
    /// every reachable endpoint of an externally reachable port (a pod on another node can come
    /// in through a NodePort or external address), else those not known to be on another node
    /// (only this node's pods reach a ClusterIP through this node).
    pub hairpin_ips: Vec<IpAddr>,
}

impl PortPlan {
    /// Reachable by NodePort, an external IP or a load-balancer IP.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// Every endpoint some chain sends to (each gets an endpoint chain).
    pub fn reachable_endpoints(&self) -> Vec<SocketAddr> {
        let mut all = Vec::new();
        if self.uses_cluster_chain {
            all.extend(&self.endpoints.cluster);
        }
        if self.uses_local_chain {
            for a in &self.endpoints.local {
                if !all.contains(a) {
                    all.push(*a);
                }
            }
        }
        all
    }

    /// The endpoints of a policy chain.
    pub fn policy_endpoints(&self, policy: Policy) -> &[SocketAddr] {
        match policy {
            Policy::Cluster => &self.endpoints.cluster,
            Policy::Local => &self.endpoints.local,
        }
    }
}

/// Everything to program for one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePlan {
    pub key: ServiceKey,
    pub ports: Vec<PortPlan>,
    /// Distinct local ready endpoint IPs (health-check answers), counted over ports and families.
    pub local_ready_endpoints: usize,
    /// The healthCheckNodePort to serve, for LoadBalancer Services with eTP=Local.
    pub health_check_node_port: Option<u16>,
}

/// Plans a Service from its slices (those labelled with its name, any family).
pub fn plan_service(
    service: &Service,
    slices: &[Arc<EndpointSlice>],
    node: &NodeSettings,
) -> ServicePlan {
    let mut ports = Vec::new();
    let mut local_ready = std::collections::BTreeSet::new();
    for family in Family::ALL {
        let Some(cluster_ip) = service.cluster_ip(family) else {
            continue;
        };
        let of_family = |ips: &[IpAddr]| -> Vec<IpAddr> {
            ips.iter()
                .copied()
                .filter(|ip| Family::of(ip) == family)
                .collect()
        };
        let external_ips = of_family(&service.external_ips);
        // As upstream: VIP-mode ingress IPs count whatever the type (the controller clears them).
        let load_balancer_ips = of_family(&service.load_balancer_ips);
        for port in &service.ports {
            let candidates = candidates(slices, family, &port.name, port.protocol, &node.node_name);
            local_ready.extend(
                candidates
                    .iter()
                    .filter(|c| c.local && c.ready)
                    .map(|c| c.addr.ip()),
            );
            ports.push(plan_port(
                service,
                node,
                PortBasics {
                    family,
                    name: port.name.clone(),
                    protocol: port.protocol,
                    port: port.port,
                    cluster_ip,
                    node_port: port.node_port,
                    external_ips: external_ips.clone(),
                    load_balancer_ips: load_balancer_ips.clone(),
                },
                &candidates,
            ));
        }
    }
    let health_check_node_port = (service.service_type == ServiceType::LoadBalancer
        && service.external_traffic_local)
        .then_some(service.health_check_node_port)
        .flatten();
    ServicePlan {
        key: service.key.clone(),
        ports,
        local_ready_endpoints: local_ready.len(),
        health_check_node_port,
    }
}

/// The frontends of one port in one family.
struct PortBasics {
    family: Family,
    name: PortName,
    protocol: Protocol,
    port: u16,
    cluster_ip: IpAddr,
    node_port: Option<u16>,
    external_ips: Vec<IpAddr>,
    load_balancer_ips: Vec<IpAddr>,
}

fn plan_port(
    service: &Service,
    node: &NodeSettings,
    b: PortBasics,
    candidates: &[Candidate],
) -> PortPlan {
    let externally_accessible =
        b.node_port.is_some() || !b.external_ips.is_empty() || !b.load_balancer_ips.is_empty();
    let internal_local = service.internal_traffic_local;
    // eTP applies only to Services that can be reached from outside at all.
    let external_local = service.external_traffic_local && externally_accessible;
    let needs = Needs {
        cluster: !internal_local || externally_accessible,
        local: internal_local || external_local,
    };
    let endpoints = categorize(candidates, needs, node.locality());
    let has_endpoints = endpoints.has_any;
    let uses_cluster_chain = needs.cluster && !endpoints.cluster.is_empty();
    let uses_local_chain = needs.local && !endpoints.local.is_empty();

    let (internal_policy, has_internal_endpoints) = if internal_local {
        (Policy::Local, has_endpoints && !endpoints.local.is_empty())
    } else {
        (Policy::Cluster, has_endpoints)
    };
    let (external_policy, has_external_endpoints) = if external_local {
        (Policy::Local, has_endpoints && !endpoints.local.is_empty())
    } else {
        (Policy::Cluster, has_endpoints)
    };
    let no_endpoints = |has: bool| match (has_endpoints, has) {
        (false, _) => Some(NoEndpoints::Reject),
        (true, false) => Some(NoEndpoints::Drop),
        (true, true) => None,
    };
    let firewall = firewall(service, node, b.family, &b.load_balancer_ips);
    let mut plan = PortPlan {
        family: b.family,
        name: b.name,
        protocol: b.protocol,
        port: b.port,
        cluster_ip: b.cluster_ip,
        node_port: b.node_port,
        external_ips: b.external_ips,
        load_balancer_ips: b.load_balancer_ips,
        firewall,
        endpoints,
        uses_cluster_chain,
        uses_local_chain,
        internal_policy,
        has_internal_endpoints,
        external_policy,
        has_external_endpoints,
        uses_external_chain: has_endpoints && externally_accessible,
        external_local,
        internal_no_endpoints: no_endpoints(has_internal_endpoints),
        external_no_endpoints: no_endpoints(has_external_endpoints),
        affinity_timeout: service.affinity_timeout,
        serving_ips: candidates
            .iter()
            .filter(|c| c.serving)
            .map(|c| c.addr.ip())
            .collect(),
        hairpin_ips: Vec::new(),
    };
    plan.hairpin_ips = hairpin_ips(
        &plan.reachable_endpoints(),
        candidates,
        externally_accessible,
    );
    plan
}

fn hairpin_ips(
    reachable: &[SocketAddr],
    candidates: &[Candidate],
    externally_accessible: bool,
) -> Vec<IpAddr> {
    let elsewhere: HashSet<SocketAddr> = if externally_accessible {
        HashSet::new()
    } else {
        candidates
            .iter()
            .filter(|c| c.elsewhere)
            .map(|c| c.addr)
            .collect()
    };
    let mut ips: Vec<IpAddr> = reachable
        .iter()
        .filter(|a| !elsewhere.contains(a))
        .map(|a| a.ip())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// `loadBalancerSourceRanges` of one family for a Service with LB IPs in it. Unlike upstream, a
/// Service whose ranges are all of the other family admits nobody to this family's LB IPs.
fn firewall(
    service: &Service,
    node: &NodeSettings,
    family: Family,
    lb_ips: &[IpAddr],
) -> Option<Firewall> {
    if lb_ips.is_empty() || service.load_balancer_source_ranges.is_empty() {
        return None;
    }
    let ranges: Vec<Cidr> = service
        .load_balancer_source_ranges
        .iter()
        .copied()
        .filter(|c| c.family() == family)
        .collect();
    let node_in_range = node.node_ips[family.index()]
        .iter()
        .any(|ip| ranges.iter().any(|r| r.contains(ip)));
    let mut allowed = ranges;
    if node_in_range {
        // A VIP routed locally: traffic from this node to it arrives with the VIP as source.
        allowed.extend(
            lb_ips
                .iter()
                .filter_map(|ip| Cidr::new(*ip, host_len(family))),
        );
    }
    Some(Firewall {
        allowed: normalise_ranges(allowed),
    })
}

fn host_len(family: Family) -> u8 {
    match family {
        Family::V4 => 32,
        Family::V6 => 128,
    }
}

/// Sorted by address, without duplicates or ranges inside others (an nft interval set refuses
/// overlaps).
pub fn normalise_ranges(mut ranges: Vec<Cidr>) -> Vec<Cidr> {
    ranges.sort_by_key(|c| (c.addr(), c.prefix_len()));
    let mut out: Vec<Cidr> = Vec::with_capacity(ranges.len());
    for r in ranges {
        if out
            .iter()
            .any(|o| o.prefix_len() <= r.prefix_len() && o.contains(&r.addr()))
        {
            continue;
        }
        out.retain(|o| !(r.prefix_len() <= o.prefix_len() && r.contains(&o.addr())));
        out.push(r);
    }
    out
}

/// The endpoints of one service port: from every slice of the family, the slice port with the
/// same name and protocol gives the target port (this is how named targetPorts resolve). Endpoints
/// listed by several slices count once; a local copy wins. Sorted by `IP:port` text.
pub fn candidates(
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
                elsewhere: ep
                    .node_name
                    .as_ref()
                    .is_some_and(|n| n.as_str() != node_name),
                zone_hints: ep.zone_hints.clone().unwrap_or_default(),
                node_hints: ep.node_hints.clone().unwrap_or_default(),
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
mod rows;
#[cfg(test)]
mod tests;
