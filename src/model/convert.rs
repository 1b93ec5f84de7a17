//! Conversion of raw Kubernetes objects (k8s-openapi types) into the validated model.
//!
//! Every field the proxy uses is checked here with the API server's own rules; an object with any
//! invalid field is refused as a whole ([`InvalidObject`]) so it is either programmed exactly as
//! written or not at all. Objects the proxy deliberately ignores (ExternalName and headless
//! Services, Services of another proxy, FQDN slices) come back as [`Converted::Ignored`].

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::names::{Label, ObjectKey, PortName, ServiceKey, Subdomain};
use super::net::{Cidr, Family, Protocol, parse_ip, printable, truncate};
use super::{
    Endpoint, EndpointSlice, Node, ObjectId, Service, ServicePort, ServiceType, SlicePort,
};

/// Label that hands a Service to another proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label marking the slices of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The Node label that gives its zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// Largest `timeoutSeconds` the API server accepts.
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// Why an object was refused; the variant is also the `reason` label of the invalid-object metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    Name,
    Address,
    Port,
    Protocol,
    Field,
}

impl InvalidReason {
    pub fn as_label(self) -> &'static str {
        match self {
            InvalidReason::Name => "invalid_name",
            InvalidReason::Address => "invalid_address",
            InvalidReason::Port => "invalid_port",
            InvalidReason::Protocol => "invalid_protocol",
            InvalidReason::Field => "invalid_field",
        }
    }
}

/// An object that cannot be programmed, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{id}: {field}: {detail}")]
pub struct InvalidObject {
    pub id: ObjectId,
    pub reason: InvalidReason,
    pub field: String,
    pub detail: String,
}

/// The outcome of converting a well-formed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Converted<T> {
    /// The proxy programs it.
    Proxied(T),
    /// The proxy deliberately leaves it alone, for this reason.
    Ignored(&'static str),
}

type Result<T> = std::result::Result<T, InvalidObject>;

/// Builds errors that all name the same object.
struct Checker {
    id: ObjectId,
}

impl Checker {
    fn fail(
        &self,
        reason: InvalidReason,
        field: impl Into<String>,
        detail: impl Into<String>,
    ) -> InvalidObject {
        // Both may quote object text: no control characters reach a log line.
        InvalidObject {
            id: self.id.clone(),
            reason,
            field: printable(&field.into()),
            detail: printable(&detail.into()),
        }
    }

    fn ip(&self, field: impl Into<String>, text: &str) -> Result<IpAddr> {
        parse_ip(text).map_err(|e| self.fail(InvalidReason::Address, field, e))
    }

    fn port(&self, field: impl Into<String>, value: i32) -> Result<u16> {
        u16::try_from(value)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                self.fail(
                    InvalidReason::Port,
                    field,
                    format!("port {value} is outside 1-65535"),
                )
            })
    }

    fn protocol(&self, field: impl Into<String>, value: Option<&str>) -> Result<Protocol> {
        Protocol::from_k8s(value).map_err(|e| self.fail(InvalidReason::Protocol, field, e))
    }

    fn port_name(&self, field: impl Into<String>, value: Option<&str>) -> Result<PortName> {
        PortName::parse(value).map_err(|e| self.fail(InvalidReason::Name, field, e))
    }
}

/// The identity of a namespaced object as written (namespace defaults to `default`).
fn namespaced_id(meta: &ObjectMeta, service: bool) -> ObjectId {
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let name = meta.name.clone().unwrap_or_default();
    if service {
        ObjectId::Service { namespace, name }
    } else {
        ObjectId::EndpointSlice { namespace, name }
    }
}

/// The identity of any supported object, for logging and for tracking objects across updates.
pub fn service_id(svc: &core::Service) -> ObjectId {
    namespaced_id(&svc.metadata, true)
}

pub fn slice_id(slice: &discovery::EndpointSlice) -> ObjectId {
    namespaced_id(&slice.metadata, false)
}

pub fn node_id(node: &core::Node) -> ObjectId {
    ObjectId::Node {
        name: node.metadata.name.clone().unwrap_or_default(),
    }
}

fn namespace_label(c: &Checker, meta: &ObjectMeta) -> Result<Label> {
    Label::parse(meta.namespace.as_deref().unwrap_or("default"))
        .map_err(|e| c.fail(InvalidReason::Name, "metadata.namespace", e))
}

/// `metadata.uid`, when it looks like one (letters, digits and dashes, at most 64): only used to
/// point Kubernetes Events at the object.
pub fn uid(meta: &ObjectMeta) -> Option<Arc<str>> {
    meta.uid
        .as_deref()
        .filter(|u| !u.is_empty() && u.len() <= 64)
        .filter(|u| u.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .map(Arc::from)
}

/// Annotation the EndpointSlice controller sets to the time of the change it carries.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

fn has_label(meta: &ObjectMeta, key: &str) -> bool {
    meta.labels.as_ref().is_some_and(|l| l.contains_key(key))
}

/// Converts a Service.
pub fn service(svc: &core::Service) -> Result<Converted<Service>> {
    let c = Checker {
        id: service_id(svc),
    };
    let meta = &svc.metadata;
    let namespace = namespace_label(&c, meta)?;
    let name = Label::parse(meta.name.as_deref().unwrap_or(""))
        .map_err(|e| c.fail(InvalidReason::Name, "metadata.name", e))?;
    if has_label(meta, SERVICE_PROXY_NAME_LABEL) {
        return Ok(Converted::Ignored(
            "labelled service.kubernetes.io/service-proxy-name",
        ));
    }
    let spec = svc
        .spec
        .as_ref()
        .ok_or_else(|| c.fail(InvalidReason::Field, "spec", "missing"))?;
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => return Ok(Converted::Ignored("type ExternalName")),
        Some(other) => {
            return Err(c.fail(
                InvalidReason::Field,
                "spec.type",
                format!("unknown type {:?}", truncate(other)),
            ));
        }
    };
    let cluster_ips = match cluster_ips(&c, spec)? {
        Some(ips) => ips,
        None => return Ok(Converted::Ignored("headless (clusterIP None)")),
    };
    let ports = service_ports(&c, spec)?;
    let external_ips = spec
        .external_ips
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, ip)| c.ip(format!("spec.externalIPs[{i}]"), ip))
        .collect::<Result<Vec<_>>>()?;
    let load_balancer_source_ranges = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            Cidr::parse(r).map_err(|e| {
                c.fail(
                    InvalidReason::Address,
                    format!("spec.loadBalancerSourceRanges[{i}]"),
                    e,
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let load_balancer_ips = load_balancer_ips(&c, svc)?;
    let external_traffic_local = traffic_policy(
        &c,
        "spec.externalTrafficPolicy",
        spec.external_traffic_policy.as_deref(),
    )?;
    let internal_traffic_local = traffic_policy(
        &c,
        "spec.internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
    )?;
    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|cfg| cfg.client_ip.as_ref())
                .and_then(|ip| ip.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_TIMEOUT),
                Some(t) => Some(
                    u32::try_from(t)
                        .ok()
                        .filter(|t| (1..=MAX_AFFINITY_TIMEOUT).contains(t))
                        .ok_or_else(|| {
                            c.fail(
                                InvalidReason::Field,
                                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                                format!("{t} is outside 1-{MAX_AFFINITY_TIMEOUT}"),
                            )
                        })?,
                ),
            }
        }
        Some(other) => {
            return Err(c.fail(
                InvalidReason::Field,
                "spec.sessionAffinity",
                format!("unknown value {:?}", truncate(other)),
            ));
        }
    };
    let health_check_node_port = match spec.health_check_node_port {
        None | Some(0) => None,
        Some(p) => Some(c.port("spec.healthCheckNodePort", p)?),
    };
    Ok(Converted::Proxied(Service {
        uid: uid(&svc.metadata),
        key: ServiceKey { namespace, name },
        service_type,
        cluster_ips,
        ports,
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges,
        external_traffic_local,
        internal_traffic_local,
        affinity_timeout,
        health_check_node_port,
    }))
}

/// `spec.clusterIP` / `spec.clusterIPs`; `None` for a headless Service.
fn cluster_ips(c: &Checker, spec: &core::ServiceSpec) -> Result<Option<Vec<IpAddr>>> {
    let primary = spec.cluster_ip.as_deref().unwrap_or("");
    if primary == "None" {
        return Ok(None);
    }
    if primary.is_empty() {
        return Err(c.fail(
            InvalidReason::Address,
            "spec.clusterIP",
            "missing (without an API server nothing allocates one)",
        ));
    }
    let primary_ip = c.ip("spec.clusterIP", primary)?;
    let mut ips = vec![primary_ip];
    if let Some(list) = &spec.cluster_ips {
        for (i, text) in list.iter().enumerate() {
            let ip = c.ip(format!("spec.clusterIPs[{i}]"), text)?;
            if i == 0 {
                if ip != primary_ip {
                    return Err(c.fail(
                        InvalidReason::Address,
                        "spec.clusterIPs[0]",
                        "must equal spec.clusterIP",
                    ));
                }
            } else if ips.iter().any(|known| Family::of(known) == Family::of(&ip)) {
                return Err(c.fail(
                    InvalidReason::Address,
                    format!("spec.clusterIPs[{i}]"),
                    "at most one ClusterIP per IP family",
                ));
            } else {
                ips.push(ip);
            }
        }
    }
    Ok(Some(ips))
}

fn service_ports(c: &Checker, spec: &core::ServiceSpec) -> Result<Vec<ServicePort>> {
    let raw = spec.ports.as_deref().unwrap_or_default();
    let mut ports = Vec::with_capacity(raw.len());
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, p) in raw.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let name = c.port_name(format!("{field}.name"), p.name.as_deref())?;
        if raw.len() > 1 && name.as_str().is_empty() {
            return Err(c.fail(
                InvalidReason::Name,
                format!("{field}.name"),
                "required when a Service has several ports",
            ));
        }
        if !names.insert(name.clone()) {
            return Err(c.fail(
                InvalidReason::Name,
                format!("{field}.name"),
                format!("duplicate port name {:?}", name.as_str()),
            ));
        }
        let protocol = c.protocol(format!("{field}.protocol"), p.protocol.as_deref())?;
        let port = c.port(format!("{field}.port"), p.port)?;
        if !numbers.insert((port, protocol)) {
            return Err(c.fail(
                InvalidReason::Port,
                format!("{field}.port"),
                format!("duplicate port {port}/{protocol}"),
            ));
        }
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(c.port(format!("{field}.nodePort"), n)?),
        };
        ports.push(ServicePort {
            name,
            protocol,
            port,
            node_port,
        });
    }
    Ok(ports)
}

fn load_balancer_ips(c: &Checker, svc: &core::Service) -> Result<Vec<IpAddr>> {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let mut ips = Vec::new();
    for (i, entry) in ingress.into_iter().flatten().enumerate() {
        let field = format!("status.loadBalancer.ingress[{i}]");
        let Some(ip) = entry.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        let ip = c.ip(format!("{field}.ip"), ip)?;
        match entry.ip_mode.as_deref() {
            None | Some("VIP") => ips.push(ip),
            Some("Proxy") => {}
            Some(other) => {
                return Err(c.fail(
                    InvalidReason::Field,
                    format!("{field}.ipMode"),
                    format!("unknown value {:?}", truncate(other)),
                ));
            }
        }
    }
    Ok(ips)
}

/// `Local` → true, `Cluster` or unset → false.
fn traffic_policy(c: &Checker, field: &str, value: Option<&str>) -> Result<bool> {
    match value {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err(c.fail(
            InvalidReason::Field,
            field,
            format!("unknown value {:?}", truncate(other)),
        )),
    }
}

/// Converts an EndpointSlice.
pub fn endpoint_slice(slice: &discovery::EndpointSlice) -> Result<Converted<EndpointSlice>> {
    let c = Checker {
        id: slice_id(slice),
    };
    let meta = &slice.metadata;
    let namespace = namespace_label(&c, meta)?;
    let name = Subdomain::parse(meta.name.as_deref().unwrap_or(""))
        .map_err(|e| c.fail(InvalidReason::Name, "metadata.name", e))?;
    let family = match slice.address_type.as_str() {
        "IPv4" => Family::V4,
        "IPv6" => Family::V6,
        "FQDN" => return Ok(Converted::Ignored("addressType FQDN")),
        other => {
            return Err(c.fail(
                InvalidReason::Field,
                "addressType",
                format!("unknown value {:?}", truncate(other)),
            ));
        }
    };
    if has_label(meta, HEADLESS_LABEL) {
        return Ok(Converted::Ignored(
            "labelled service.kubernetes.io/headless",
        ));
    }
    let service_name = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .ok_or_else(|| {
            c.fail(
                InvalidReason::Field,
                format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
                "missing",
            )
        })?;
    let service_name = Label::parse(service_name).map_err(|e| {
        c.fail(
            InvalidReason::Name,
            format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
            e,
        )
    })?;

    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let field = format!("ports[{i}]");
        let Some(number) = p.port.filter(|n| *n != 0) else {
            continue;
        };
        ports.push(SlicePort {
            name: c.port_name(format!("{field}.name"), p.name.as_deref())?,
            protocol: c.protocol(format!("{field}.protocol"), p.protocol.as_deref())?,
            port: c.port(format!("{field}.port"), number)?,
        });
    }

    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    let mut nodes: Vec<Subdomain> = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}]");
        let Some(first) = ep.addresses.first() else {
            continue;
        };
        let addr = c.ip(format!("{field}.addresses[0]"), first)?;
        if Family::of(&addr) != family {
            return Err(c.fail(
                InvalidReason::Address,
                format!("{field}.addresses[0]"),
                format!("{addr} is not an {family} address"),
            ));
        }
        let conditions = ep.conditions.as_ref();
        let node_name = match ep.node_name.as_deref() {
            // Endpoints of a slice share a few nodes: share their names too.
            Some(n) => Some(match nodes.iter().find(|s| s.as_str() == n) {
                Some(known) => known.clone(),
                None => {
                    let parsed = Subdomain::parse(n)
                        .map_err(|e| c.fail(InvalidReason::Name, format!("{field}.nodeName"), e))?;
                    nodes.push(parsed.clone());
                    parsed
                }
            }),
            None => None,
        };
        let hints = ep.hints.as_ref();
        endpoints.push(Endpoint {
            addr,
            ready: conditions.and_then(|c| c.ready).unwrap_or(true),
            serving: conditions.and_then(|c| c.serving).unwrap_or(true),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            node_name,
            zone_hints: hints
                .and_then(|h| h.for_zones.as_ref())
                .map(|zones| zones.iter().map(|z| Arc::from(z.name.as_str())).collect()),
            node_hints: hints
                .and_then(|h| h.for_nodes.as_ref())
                .map(|nodes| nodes.iter().map(|n| Arc::from(n.name.as_str())).collect()),
        });
    }
    Ok(Converted::Proxied(EndpointSlice {
        key: ObjectKey {
            namespace: namespace.clone(),
            name,
        },
        service: ServiceKey {
            namespace,
            name: service_name,
        },
        family,
        ports,
        endpoints,
        trigger_time: trigger_time(meta),
    }))
}

/// The EndpointSlice controller's `endpoints.kubernetes.io/last-change-trigger-time` (RFC 3339):
/// when the change this slice carries was triggered. Only for latency metrics, so an unparseable
/// value is ignored rather than refusing the slice.
fn trigger_time(meta: &ObjectMeta) -> Option<std::time::SystemTime> {
    let text = meta.annotations.as_ref()?.get(TRIGGER_TIME_ANNOTATION)?;
    let stamp: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    Some(std::time::SystemTime::from(stamp))
}

/// Converts a Node (the caller decides whether it is this node).
pub fn node(node: &core::Node) -> Result<Node> {
    let c = Checker { id: node_id(node) };
    let name = Subdomain::parse(node.metadata.name.as_deref().unwrap_or(""))
        .map_err(|e| c.fail(InvalidReason::Name, "metadata.name", e))?;
    let zone = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ZONE_LABEL))
        .map(|z| Arc::from(z.as_str()));
    let mut addresses = Vec::new();
    let status_addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (i, a) in status_addresses.into_iter().flatten().enumerate() {
        if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
            addresses.push(c.ip(format!("status.addresses[{i}].address"), &a.address)?);
        }
    }
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == "ToBeDeletedByClusterAutoscaler"));
    Ok(Node {
        name: name.to_string(),
        zone,
        addresses,
        terminating: tainted || node.metadata.deletion_timestamp.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(json: serde_json::Value) -> core::Service {
        serde_json::from_value(json).unwrap()
    }

    fn slice(json: serde_json::Value) -> discovery::EndpointSlice {
        serde_json::from_value(json).unwrap()
    }

    fn base_service() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}
        })
    }

    fn proxied(svc: &core::Service) -> Service {
        match service(svc).unwrap() {
            Converted::Proxied(s) => s,
            Converted::Ignored(why) => panic!("ignored: {why}"),
        }
    }

    #[test]
    fn a_plain_service_converts() {
        let s = proxied(&svc(base_service()));
        assert_eq!(s.key.to_string(), "shop/web");
        assert_eq!(s.cluster_ips, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(s.ports[0].protocol, Protocol::Tcp);
        assert_eq!(s.ports[0].port, 80);
        assert_eq!(s.service_type, ServiceType::ClusterIp);
    }

    #[test]
    fn dual_stack_cluster_ips() {
        let mut j = base_service();
        j["spec"]["clusterIPs"] = serde_json::json!(["10.96.0.10", "fd00:96::a"]);
        let s = proxied(&svc(j));
        assert_eq!(s.cluster_ip(Family::V6).unwrap().to_string(), "fd00:96::a");
        let mut j = base_service();
        j["spec"]["clusterIPs"] = serde_json::json!(["10.96.0.10", "10.96.0.11"]);
        assert_eq!(service(&svc(j)).unwrap_err().reason, InvalidReason::Address);
    }

    #[test]
    fn ignored_services() {
        let mut j = base_service();
        j["spec"]["clusterIP"] = "None".into();
        assert!(matches!(service(&svc(j)).unwrap(), Converted::Ignored(_)));
        let mut j = base_service();
        j["spec"]["type"] = "ExternalName".into();
        assert!(matches!(service(&svc(j)).unwrap(), Converted::Ignored(_)));
        let mut j = base_service();
        j["metadata"]["labels"] = serde_json::json!({SERVICE_PROXY_NAME_LABEL: "other"});
        assert!(matches!(service(&svc(j)).unwrap(), Converted::Ignored(_)));
    }

    #[test]
    fn hostile_and_invalid_services_are_refused_with_the_field() {
        let cases: Vec<(&str, serde_json::Value, InvalidReason)> = vec![
            (
                "/metadata/name",
                "web } ; flush ruleset".into(),
                InvalidReason::Name,
            ),
            ("/metadata/namespace", "a/b".into(), InvalidReason::Name),
            (
                "/spec/clusterIP",
                "10.96.0.300".into(),
                InvalidReason::Address,
            ),
            (
                "/spec/clusterIP",
                "10.96.0.1 counter".into(),
                InvalidReason::Address,
            ),
            ("/spec/ports/0/port", 70000.into(), InvalidReason::Port),
            ("/spec/ports/0/port", 0.into(), InvalidReason::Port),
            (
                "/spec/ports/0/protocol",
                "ICMP".into(),
                InvalidReason::Protocol,
            ),
            (
                "/spec/ports/0/name",
                "http\" ; drop".into(),
                InvalidReason::Name,
            ),
            (
                "/spec/externalIPs",
                serde_json::json!(["1.2.3.4/32"]),
                InvalidReason::Address,
            ),
            (
                "/spec/loadBalancerSourceRanges",
                serde_json::json!(["10.0.0.0/40"]),
                InvalidReason::Address,
            ),
            (
                "/spec/sessionAffinity",
                "Sticky".into(),
                InvalidReason::Field,
            ),
        ];
        for (pointer, value, reason) in cases {
            let mut j = base_service();
            set(&mut j, pointer, value);
            let err = service(&svc(j)).unwrap_err();
            assert_eq!(err.reason, reason, "{pointer}: {err}");
        }
    }

    /// Sets a JSON pointer's target, creating object members on the way.
    fn set(doc: &mut serde_json::Value, pointer: &str, value: serde_json::Value) {
        let mut at = doc;
        for part in pointer.trim_start_matches('/').split('/') {
            at = match part.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[part],
            };
        }
        *at = value;
    }

    #[test]
    fn multi_port_services_need_unique_names_and_ports() {
        let mut j = base_service();
        j["spec"]["ports"] = serde_json::json!([{"port": 80}, {"port": 81}]);
        assert_eq!(service(&svc(j)).unwrap_err().reason, InvalidReason::Name);
        let mut j = base_service();
        j["spec"]["ports"] =
            serde_json::json!([{"name": "a", "port": 80}, {"name": "b", "port": 80}]);
        assert_eq!(service(&svc(j)).unwrap_err().reason, InvalidReason::Port);
        let mut j = base_service();
        j["spec"]["ports"] = serde_json::json!([{"name": "a", "port": 53}, {"name": "b", "port": 53, "protocol": "UDP"}]);
        assert_eq!(proxied(&svc(j)).ports.len(), 2);
    }

    #[test]
    fn load_balancer_ingress_proxy_mode_is_not_programmed() {
        let mut j = base_service();
        j["spec"]["type"] = "LoadBalancer".into();
        j["status"] = serde_json::json!({"loadBalancer": {"ingress": [
            {"ip": "1.2.3.4"}, {"ip": "5.6.7.8", "ipMode": "Proxy"}, {"ip": "9.9.9.9", "ipMode": "VIP"}, {"hostname": "lb.example"}
        ]}});
        let s = proxied(&svc(j));
        assert_eq!(s.load_balancer_ips.len(), 2);
    }

    #[test]
    fn slices_convert_with_conditions_defaulted() {
        let s = slice(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "shop", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "nil-port"}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "nodeName": "node-a"},
                {"addresses": ["10.244.1.6"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": []}
            ]
        }));
        let Converted::Proxied(s) = endpoint_slice(&s).unwrap() else {
            panic!()
        };
        assert_eq!(s.service.to_string(), "shop/web");
        assert_eq!(s.ports.len(), 1);
        assert_eq!(s.endpoints.len(), 2);
        assert!(s.endpoints[0].ready && s.endpoints[0].serving && !s.endpoints[0].terminating);
        assert!(!s.endpoints[1].ready && s.endpoints[1].terminating);
    }

    #[test]
    fn slices_with_wrong_family_or_no_service_are_refused() {
        let base = serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "shop", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["fd00::1"]}]
        });
        assert_eq!(
            endpoint_slice(&slice(base.clone())).unwrap_err().reason,
            InvalidReason::Address
        );
        let mut no_label = base.clone();
        no_label["metadata"]["labels"] = serde_json::json!({});
        assert_eq!(
            endpoint_slice(&slice(no_label)).unwrap_err().reason,
            InvalidReason::Field
        );
        let mut fqdn = base;
        fqdn["addressType"] = "FQDN".into();
        assert!(matches!(
            endpoint_slice(&slice(fqdn)).unwrap(),
            Converted::Ignored(_)
        ));
    }
}
