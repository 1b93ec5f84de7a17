//! Manifests the end-to-end tests write.

use serde_json::Value;

use kube_nft_proxy::fixtures::{ServiceBuilder, SliceBuilder};

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
    let mut b = SliceBuilder::new("e2e", name, service, address_type);
    for (port_name, port, proto) in ports {
        b = b.port(port_name, *port, proto);
    }
    for ep in endpoints {
        b = b.endpoint(ep, crate::harness::NODE_NAME);
    }
    b.json().clone()
}
