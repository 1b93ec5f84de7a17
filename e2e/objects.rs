//! Manifests the end-to-end tests write.

use serde_json::{Value, json};

use kube_nft_proxy::fixtures::{ServiceBuilder, SliceBuilder};

use crate::harness::{Cluster, NODE_NAME, require_root};

/// A Service with a ClusterIP per family given and the ports `(name, port, protocol)`.
pub fn service(name: &str, cluster_ips: &[&str], ports: &[(&str, i32, &str)]) -> Value {
    let mut b = ServiceBuilder::new("e2e", name);
    for ip in cluster_ips {
        b = b.cluster_ip(ip);
    }
    for (port_name, port, proto) in ports {
        b = b.port(port_name, *port, proto);
    }
    b.json().clone()
}

/// A slice of `service` with the ports `(name, port, protocol)` and ready endpoints on node1.
pub fn slice(
    name: &str,
    service: &str,
    address_type: &str,
    ports: &[(&str, i32, &str)],
    endpoints: &[&str],
) -> Value {
    let eps: Vec<Ep> = endpoints
        .iter()
        .map(|ip| Ep::ready(ip, NODE_NAME))
        .collect();
    slice_with(name, service, address_type, ports, &eps)
}

/// An endpoint with its node and conditions.
#[derive(Clone, Debug)]
pub struct Ep {
    pub ip: String,
    pub node: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Ep {
    pub fn ready(ip: &str, node: &str) -> Ep {
        Ep {
            ip: ip.into(),
            node: node.into(),
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// Serving and terminating.
    pub fn serving_terminating(ip: &str, node: &str) -> Ep {
        Ep {
            ready: false,
            terminating: true,
            ..Ep::ready(ip, node)
        }
    }

    /// Terminating and not serving.
    pub fn terminating(ip: &str, node: &str) -> Ep {
        Ep {
            ready: false,
            serving: false,
            terminating: true,
            ..Ep::ready(ip, node)
        }
    }
}

pub fn slice_with(
    name: &str,
    service: &str,
    address_type: &str,
    ports: &[(&str, i32, &str)],
    endpoints: &[Ep],
) -> Value {
    let mut b = SliceBuilder::new("e2e", name, service, address_type);
    for (port_name, port, proto) in ports {
        b = b.port(port_name, *port, proto);
    }
    for ep in endpoints {
        b = b.endpoint_with(&ep.ip, &ep.node, ep.ready, ep.serving, ep.terminating);
    }
    b.json().clone()
}

/// A LoadBalancer (or NodePort, without LB IPs) Service with one TCP port 80 named `http`.
pub struct Exposed<'a> {
    pub name: &'a str,
    pub cluster_ips: &'a [&'a str],
    pub node_port: i32,
    pub external_ips: &'a [&'a str],
    pub lb_ips: &'a [&'a str],
    pub source_ranges: &'a [&'a str],
    pub external_local: bool,
    pub internal_local: bool,
    pub health_check_node_port: Option<i32>,
}

impl Exposed<'_> {
    pub fn json(&self) -> Value {
        let mut b = ServiceBuilder::new("e2e", self.name);
        for ip in self.cluster_ips {
            b = b.cluster_ip(ip);
        }
        let kind = if self.lb_ips.is_empty() {
            "NodePort"
        } else {
            "LoadBalancer"
        };
        b = b
            .port("http", 80, "TCP")
            .with("/spec/type", kind)
            .with("/spec/ports/0/nodePort", self.node_port)
            .with("/spec/externalIPs", json!(self.external_ips))
            .with("/spec/loadBalancerSourceRanges", json!(self.source_ranges))
            .with(
                "/spec/externalTrafficPolicy",
                if self.external_local {
                    "Local"
                } else {
                    "Cluster"
                },
            )
            .with(
                "/spec/internalTrafficPolicy",
                if self.internal_local {
                    "Local"
                } else {
                    "Cluster"
                },
            );
        if let Some(p) = self.health_check_node_port {
            b = b.with("/spec/healthCheckNodePort", p);
        }
        let ingress: Vec<Value> = self.lb_ips.iter().map(|ip| json!({"ip": ip})).collect();
        b = b.with("/status/loadBalancer/ingress", Value::Array(ingress));
        b.json().clone()
    }
}

impl Default for Exposed<'_> {
    fn default() -> Self {
        Exposed {
            name: "svc",
            cluster_ips: &[],
            node_port: 30001,
            external_ips: &[],
            lb_ips: &[],
            source_ranges: &[],
            external_local: false,
            internal_local: false,
            health_check_node_port: None,
        }
    }
}

/// A cluster of `pods` pods whose first serves on 8080 behind the ClusterIP Service `web`
/// (`cluster_ip`, TCP 80, target port 8080), written but with no proxy started yet; and pod1's
/// address.
pub fn serving_web(pods: usize, cluster_ip: &str) -> (Cluster, String) {
    require_root();
    let mut c = Cluster::new(pods);
    c.serve(1, 8080);
    let pod1 = c.pods[0].ip4.clone();
    let http = [("http", 80, "TCP")];
    let target = [("http", 8080, "TCP")];
    c.write(
        "web.yaml",
        &[
            &service("web", &[cluster_ip], &http),
            &slice("web-1", "web", "IPv4", &target, &[&pod1]),
        ],
    );
    (c, pod1)
}
