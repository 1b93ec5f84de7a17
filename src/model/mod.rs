//! The typed, validated view of the Kubernetes objects the proxy reads. Everything downstream
//! (state, plan, render) sees only these types; raw API objects stop at [`convert`].

pub mod convert;
pub mod names;
pub mod net;

use std::net::IpAddr;
use std::sync::Arc;

pub use names::{Label, ObjectKey, PortName, ServiceKey, Subdomain};
pub use net::{Cidr, Family, Protocol};

/// How a Service is exposed (`spec.type`); ExternalName Services are never converted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// A proxied Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub key: ServiceKey,
    /// `metadata.uid` (for Events about the Service).
    pub uid: Option<Arc<str>>,
    pub service_type: ServiceType,
    /// At most one per family.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` whose `ipMode` is unset or `VIP`.
    pub load_balancer_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<Cidr>,
    pub external_traffic_local: bool,
    pub internal_traffic_local: bool,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub health_check_node_port: Option<u16>,
}

impl Service {
    /// The ClusterIP of one family, if the Service has one.
    pub fn cluster_ip(&self, family: Family) -> Option<IpAddr> {
        self.cluster_ips
            .iter()
            .copied()
            .find(|ip| Family::of(ip) == family)
    }
}

/// One entry of `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: PortName,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// An EndpointSlice of address type IPv4 or IPv6 that belongs to a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    pub key: ObjectKey,
    pub service: ServiceKey,
    pub family: Family,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<Endpoint>,
    /// `endpoints.kubernetes.io/last-change-trigger-time`, for network programming latency.
    pub trigger_time: Option<std::time::SystemTime>,
}

/// One entry of an EndpointSlice's `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: PortName,
    pub protocol: Protocol,
    pub port: u16,
}

/// One endpoint (only its first address is used, as upstream does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<Subdomain>,
    pub zone_hints: Option<Vec<Arc<str>>>,
    pub node_hints: Option<Vec<Arc<str>>>,
}

/// This node, as far as the proxy cares.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Node {
    pub name: String,
    /// The `topology.kubernetes.io/zone` label.
    pub zone: Option<Arc<str>>,
    /// `status.addresses` of type InternalIP or ExternalIP, in order.
    pub addresses: Vec<IpAddr>,
    /// Marked for deletion or tainted `ToBeDeletedByClusterAutoscaler`.
    pub terminating: bool,
}

/// A validated object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Node(Arc<Node>),
}

/// The identity of an object, valid or not.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectId {
    Service { namespace: String, name: String },
    EndpointSlice { namespace: String, name: String },
    Node { name: String },
}

impl ObjectId {
    pub fn kind(&self) -> &'static str {
        match self {
            ObjectId::Service { .. } => "Service",
            ObjectId::EndpointSlice { .. } => "EndpointSlice",
            ObjectId::Node { .. } => "Node",
        }
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectId::Service { namespace, name } | ObjectId::EndpointSlice { namespace, name } => {
                write!(
                    f,
                    "{} {}/{}",
                    self.kind(),
                    net::truncate(namespace),
                    net::truncate(name)
                )
            }
            ObjectId::Node { name } => write!(f, "Node {}", net::truncate(name)),
        }
    }
}
