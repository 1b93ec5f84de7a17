//! `kube-nft-proxy explain SERVICE`: how one Service is programmed on this node, and why. For
//! each port and family it lists the addresses that reach it, every endpoint the slices offer
//! with its conditions and node, the endpoints chosen for cluster-wide and for node-local traffic
//! with the rule that chose them (ready, topology hints, terminating fallback), what ClusterIP
//! and external traffic do under the traffic policies, and the nftables objects that implement it
//! exactly as the proxy would program them. Pure: it works on a [`State`] loaded once.

use std::fmt::Write;
use std::net::IpAddr;

use crate::backend::script;
use crate::diff::creating;
use crate::model::{Label, ServiceKey, ServiceType};
use crate::plan::endpoints::{Candidate, Selection};
use crate::plan::{
    NoEndpoints, NodePortAddresses, NodePortIps, NodeSettings, Policy, PortPlan, candidates,
    plan_service, resolve_node_addresses,
};
use crate::render::{RenderError, Renderer};
use crate::state::State;

/// Why there is nothing to explain.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{0:?} is not a Service name: use NAMESPACE/NAME or NAME ({1})")]
    Name(String, String),
    #[error(
        "Service {0} is not proxied: it does not exist, or is headless, ExternalName, handled by another proxy (service.kubernetes.io/service-proxy-name), or invalid (see the log above)"
    )]
    NotFound(ServiceKey),
    #[error(transparent)]
    Render(#[from] RenderError),
}

/// Parses `NAMESPACE/NAME`, or `NAME` in `default`.
pub fn service_key(text: &str) -> Result<ServiceKey, ExplainError> {
    let (namespace, name) = text.split_once('/').unwrap_or(("default", text));
    let fail = |e: String| ExplainError::Name(text.to_string(), e);
    Ok(ServiceKey {
        namespace: Label::parse(namespace).map_err(|e| fail(e.to_string()))?,
        name: Label::parse(name).map_err(|e| fail(e.to_string()))?,
    })
}

/// The explanation of Service `key` on the node `settings` describes.
pub fn explain(
    state: &State,
    key: &ServiceKey,
    mut settings: NodeSettings,
    nodeport_addresses: &NodePortAddresses,
    local_addresses: &[IpAddr],
) -> Result<String, ExplainError> {
    settings.node = state.node().cloned();
    (settings.nodeport_ips, settings.node_ips) = resolve_node_addresses(
        nodeport_addresses,
        settings.node.as_deref(),
        local_addresses,
    );
    let service = state
        .service(key)
        .ok_or_else(|| ExplainError::NotFound(key.clone()))?;
    let slices = state.slices_of(key);
    let plan = plan_service(service, &slices, &settings);

    let mut out = String::new();
    let kind = match service.service_type {
        ServiceType::ClusterIp => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    let policy = |local: bool| if local { "Local" } else { "Cluster" };
    let _ = writeln!(
        out,
        "Service {key} ({kind}) as node {} sees it",
        settings.node_name
    );
    let _ = writeln!(
        out,
        "  internalTrafficPolicy {}, externalTrafficPolicy {}, sessionAffinity {}",
        policy(service.internal_traffic_local),
        policy(service.external_traffic_local),
        service
            .affinity_timeout
            .map_or("None".to_string(), |t| format!("ClientIP ({t}s)")),
    );
    let zone = settings.node.as_ref().and_then(|n| n.zone.as_deref());
    let _ = writeln!(
        out,
        "  node zone {}; {} EndpointSlice(s)",
        zone.unwrap_or("(none)"),
        slices.len()
    );
    if let Some(port) = plan.health_check_node_port {
        let _ = writeln!(
            out,
            "  healthCheckNodePort {port}: answers 200 while this node has {} local ready endpoint(s)",
            plan.local_ready_endpoints
        );
    }
    for port in &plan.ports {
        let offered = candidates(
            &slices,
            port.family,
            &port.name,
            port.protocol,
            &settings.node_name,
        );
        explain_port(&mut out, port, &offered, &settings);
    }
    if plan.ports.is_empty() {
        let _ = writeln!(out, "\nno ports with a ClusterIP: nothing is programmed");
    }

    let items = Renderer::new()?.service(&plan, &settings)?;
    let _ = writeln!(
        out,
        "\nnftables objects (table kube-nft-proxy; `nft list table ip kube-nft-proxy` shows them in place):"
    );
    out.push_str(&script::script(&creating(items)));
    Ok(out)
}

fn explain_port(out: &mut String, port: &PortPlan, offered: &[Candidate], settings: &NodeSettings) {
    let name = if port.name.as_str().is_empty() {
        "(unnamed)".to_string()
    } else {
        port.name.to_string()
    };
    let _ = writeln!(
        out,
        "\nport {name} {} {}, {}",
        port.protocol, port.port, port.family
    );
    let _ = writeln!(out, "  reached at:");
    let _ = writeln!(out, "    ClusterIP {}", socket(port.cluster_ip, port.port));
    if let Some(node_port) = port.node_port {
        let on = match &settings.nodeport_ips[port.family.index()] {
            NodePortIps::AllLocal => "every local address".to_string(),
            NodePortIps::Only(ips) if ips.is_empty() => "no address (none selected)".to_string(),
            NodePortIps::Only(ips) => list(ips.iter().map(ToString::to_string)),
        };
        let _ = writeln!(out, "    NodePort {node_port} on {on}");
    }
    for ip in &port.external_ips {
        let _ = writeln!(out, "    external IP {}", socket(*ip, port.port));
    }
    for ip in &port.load_balancer_ips {
        let _ = writeln!(out, "    load-balancer IP {}", socket(*ip, port.port));
    }
    if let Some(fw) = &port.firewall {
        let allowed = if fw.allowed.is_empty() {
            "nobody (no source range of this family)".to_string()
        } else {
            list(fw.allowed.iter().map(ToString::to_string))
        };
        let _ = writeln!(out, "    load-balancer source ranges admit {allowed}");
    }

    let _ = writeln!(out, "  endpoints offered by the slices:");
    if offered.is_empty() {
        let _ = writeln!(out, "    none");
    }
    for c in offered {
        let _ = writeln!(out, "    {:<24} {}", c.addr.to_string(), conditions(c));
    }

    let e = &port.endpoints;
    let _ = writeln!(
        out,
        "  cluster-wide endpoints: {}",
        chosen(&e.cluster, e.cluster_selection, false, settings)
    );
    let _ = writeln!(
        out,
        "  node-local endpoints:   {}",
        chosen(&e.local, e.local_selection, true, settings)
    );

    let _ = writeln!(
        out,
        "  ClusterIP traffic: {}",
        outcome(
            port.internal_policy,
            port.internal_no_endpoints,
            port.affinity_timeout
        )
    );
    if port.externally_accessible() {
        let mut external = outcome(
            port.external_policy,
            port.external_no_endpoints,
            port.affinity_timeout,
        );
        if port.external_no_endpoints.is_none() {
            external.push_str(if port.external_local {
                "; clients outside the cluster keep their source address (Local), pods and this node reach every endpoint"
            } else {
                "; masqueraded (externalTrafficPolicy Cluster)"
            });
        }
        let _ = writeln!(out, "  external traffic: {external}");
    }
    if !port.hairpin_ips.is_empty() {
        let _ = writeln!(
            out,
            "  hairpin: {} endpoint(s) that reach themselves through this Service are masqueraded",
            port.hairpin_ips.len()
        );
    }
}

fn socket(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

fn list(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// An endpoint's conditions, node and hints, and whether it can ever be used.
fn conditions(c: &Candidate) -> String {
    let mut words = Vec::new();
    if c.ready {
        words.push("ready".to_string());
    } else if c.serving && c.terminating {
        words.push("terminating, still serving".to_string());
    } else if c.terminating {
        words.push("terminating, not serving: never used".to_string());
    } else {
        words.push("not ready: never used".to_string());
    }
    words.push(if c.local {
        "on this node".to_string()
    } else if c.elsewhere {
        "on another node".to_string()
    } else {
        "node unknown".to_string()
    });
    if !c.node_hints.is_empty() {
        words.push(format!(
            "hinted for nodes {}",
            list(c.node_hints.iter().map(ToString::to_string))
        ));
    }
    if !c.zone_hints.is_empty() {
        words.push(format!(
            "hinted for zones {}",
            list(c.zone_hints.iter().map(ToString::to_string))
        ));
    }
    words.join("; ")
}

/// A chosen list and why it holds what it holds.
fn chosen(
    addrs: &[std::net::SocketAddr],
    selection: Selection,
    local: bool,
    settings: &NodeSettings,
) -> String {
    let why = match selection {
        Selection::Ready if local => "this node's ready endpoints".to_string(),
        Selection::Ready => "the ready endpoints".to_string(),
        Selection::SameNode => format!(
            "the ready endpoints hinted for node {} (topology: every ready endpoint has node hints)",
            settings.node_name
        ),
        Selection::SameZone => format!(
            "the ready endpoints hinted for zone {} (topology: every ready endpoint has zone hints)",
            settings
                .node
                .as_ref()
                .and_then(|n| n.zone.as_deref())
                .unwrap_or("?")
        ),
        Selection::TerminatingFallback if local => {
            "no local endpoint is ready: this node's terminating endpoints that still serve (fallback)"
                .to_string()
        }
        Selection::TerminatingFallback => {
            "no endpoint is ready: the terminating endpoints that still serve (fallback)".to_string()
        }
        Selection::None => return "none usable".to_string(),
        Selection::Unused => return "not used (no traffic policy needs this list)".to_string(),
    };
    format!("{} — {why}", list(addrs.iter().map(ToString::to_string)))
}

/// What new connections of one kind get.
fn outcome(policy: Policy, none: Option<NoEndpoints>, affinity: Option<u32>) -> String {
    let list = match policy {
        Policy::Cluster => "cluster-wide endpoints (service-… chain)",
        Policy::Local => "node-local endpoints (local-… chain, Local policy)",
    };
    match none {
        Some(NoEndpoints::Reject) => {
            "rejected: no usable endpoint anywhere (ICMP port unreachable)".to_string()
        }
        Some(NoEndpoints::Drop) => format!(
            "dropped: the Local policy allows only this node's endpoints and there are none here ({list})"
        ),
        None => {
            let pick = match affinity {
                Some(t) => format!(
                    "one picked at random, then the same one per client IP for {t}s (ClientIP affinity)"
                ),
                None => "one picked at random per connection".to_string(),
            };
            format!("DNAT to the {list}, {pick}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{NodeBuilder, ServiceBuilder, SliceBuilder};
    use crate::model::Object;
    use crate::state::Change;

    fn state() -> State {
        let mut s = State::new("node-a");
        let objects = [
            Object::Service(
                ServiceBuilder::new("shop", "web")
                    .cluster_ip("10.96.0.10")
                    .port("http", 80, "TCP")
                    .model()
                    .unwrap(),
            ),
            Object::EndpointSlice(
                SliceBuilder::new("shop", "web-1", "web", "IPv4")
                    .port("http", 8080, "TCP")
                    .endpoint("10.244.1.11", "node-a")
                    .endpoint("10.244.2.12", "node-b")
                    .endpoint_with("10.244.3.13", "node-c", false, false, false)
                    .model()
                    .unwrap(),
            ),
            Object::Node(NodeBuilder::new("node-a").zone("z1").model().unwrap()),
        ];
        for o in objects {
            s.apply(Change::Upsert(o));
        }
        s
    }

    #[test]
    fn names_parse_with_a_default_namespace() {
        assert_eq!(service_key("shop/web").unwrap().to_string(), "shop/web");
        assert_eq!(service_key("web").unwrap().to_string(), "default/web");
        assert!(service_key("shop/we b").is_err());
        assert!(service_key("a/b/c").is_err());
    }

    #[test]
    fn explains_the_choice_and_shows_the_objects() {
        let text = explain(
            &state(),
            &service_key("shop/web").unwrap(),
            NodeSettings::new("node-a"),
            &NodePortAddresses::Primary,
            &[],
        )
        .unwrap();
        assert!(text.contains("ClusterIP 10.96.0.10:80"), "{text}");
        assert!(
            text.contains(
                "cluster-wide endpoints: 10.244.1.11:8080, 10.244.2.12:8080 — the ready endpoints"
            ),
            "{text}"
        );
        assert!(text.contains("10.244.3.13:8080"), "{text}");
        assert!(text.contains("not ready: never used"), "{text}");
        assert!(text.contains("node zone z1"), "{text}");
        assert!(
            text.contains("add chain ip kube-nft-proxy service-shop/web/tcp/http"),
            "{text}"
        );
        assert!(
            text.contains("10.96.0.10 . tcp . 80 : goto service-shop/web/tcp/http"),
            "{text}"
        );
    }

    #[test]
    fn an_unknown_service_says_why_it_may_be_missing() {
        let e = explain(
            &state(),
            &service_key("shop/nope").unwrap(),
            NodeSettings::new("node-a"),
            &NodePortAddresses::Primary,
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("headless"));
    }
}
