//! Plan rows from upstream's TestClusterIPGeneral and TestNoEndpointsReject, checked without a
//! kernel.

use super::*;
use crate::fixtures::{ServiceBuilder, SliceBuilder};

fn node() -> NodeSettings {
    let mut n = NodeSettings::new("node1");
    n.cluster_cidrs = [Some(Cidr::parse("10.0.0.0/8").unwrap()), None];
    n
}

fn svc2() -> (Arc<Service>, Vec<Arc<EndpointSlice>>) {
    let svc = ServiceBuilder::new("ns2", "svc2")
        .cluster_ip("172.30.0.42")
        .port("http", 80, "TCP")
        .port("https", 443, "TCP")
        .port("dns-udp", 53, "UDP")
        .port("dns-tcp", 53, "TCP")
        .port("dns-sctp", 53, "SCTP")
        .model()
        .unwrap();
    let slice = SliceBuilder::new("ns2", "svc2-abc", "svc2", "IPv4")
        .port("http", 80, "TCP")
        .port("https", 8443, "TCP")
        .port("dns-udp", 53, "UDP")
        .port("dns-tcp", 5353, "TCP")
        .port("dns-sctp", 53, "SCTP")
        .endpoint("10.180.0.1", "node1")
        .endpoint("10.180.2.1", "node2")
        .model()
        .unwrap();
    (svc, vec![slice])
}

/// The cluster endpoints of the port with this name, as `ip:port` strings.
fn endpoints_of(plan: &ServicePlan, name: &str) -> Vec<String> {
    let port = plan.ports.iter().find(|p| p.name.as_str() == name).unwrap();
    port.endpoints
        .cluster
        .iter()
        .map(|a| a.to_string())
        .collect()
}

#[test]
fn every_port_resolves_its_target_port_through_the_slice() {
    let (svc, slices) = svc2();
    let plan = plan_service(&svc, &slices, &node());
    assert_eq!(plan.ports.len(), 5);
    assert_eq!(
        endpoints_of(&plan, "http"),
        ["10.180.0.1:80", "10.180.2.1:80"]
    );
    assert_eq!(
        endpoints_of(&plan, "https"),
        ["10.180.0.1:8443", "10.180.2.1:8443"]
    );
    assert_eq!(
        endpoints_of(&plan, "dns-tcp"),
        ["10.180.0.1:5353", "10.180.2.1:5353"]
    );
    assert_eq!(
        endpoints_of(&plan, "dns-udp"),
        ["10.180.0.1:53", "10.180.2.1:53"]
    );
    assert_eq!(
        endpoints_of(&plan, "dns-sctp"),
        ["10.180.0.1:53", "10.180.2.1:53"]
    );
    assert!(plan.ports.iter().all(|p| p.internal_no_endpoints.is_none()));
    assert!(
        plan.ports[0].endpoints.local.is_empty(),
        "a Cluster-policy port needs no local list"
    );
}

#[test]
fn a_slice_port_of_another_protocol_does_not_match() {
    let svc = ServiceBuilder::new("ns", "s")
        .cluster_ip("172.30.0.1")
        .port("p", 80, "UDP")
        .model()
        .unwrap();
    let slice = SliceBuilder::new("ns", "s-1", "s", "IPv4")
        .port("p", 80, "TCP")
        .endpoint("10.0.1.1", "")
        .model()
        .unwrap();
    let plan = plan_service(&svc, &[slice], &node());
    assert_eq!(
        plan.ports[0].internal_no_endpoints,
        Some(NoEndpoints::Reject)
    );
}

#[test]
fn no_endpoints_rejects() {
    let svc = ServiceBuilder::new("ns", "s")
        .cluster_ip("172.30.0.41")
        .port("p80", 80, "TCP")
        .model()
        .unwrap();
    let plan = plan_service(&svc, &[], &node());
    assert_eq!(
        plan.ports[0].internal_no_endpoints,
        Some(NoEndpoints::Reject)
    );
    // Endpoints that are terminating and not serving count as none.
    let slice = SliceBuilder::new("ns", "s-1", "s", "IPv4")
        .port("p80", 80, "TCP")
        .endpoint_with("10.0.1.1", "node1", false, false, true)
        .model()
        .unwrap();
    let plan = plan_service(&svc, &[slice], &node());
    assert_eq!(
        plan.ports[0].internal_no_endpoints,
        Some(NoEndpoints::Reject)
    );
}

#[test]
fn endpoints_listed_twice_count_once_and_sort_as_upstream() {
    let svc = ServiceBuilder::new("ns", "s")
        .cluster_ip("172.30.0.1")
        .port("", 80, "TCP")
        .with("/spec/type", "NodePort")
        .with("/spec/ports/0/nodePort", 30080)
        .with("/spec/externalTrafficPolicy", "Local")
        .model()
        .unwrap();
    let a = SliceBuilder::new("ns", "s-a", "s", "IPv4")
        .port("", 8080, "TCP")
        .endpoint("10.0.1.10", "")
        .endpoint("10.0.1.9", "node2")
        .model()
        .unwrap();
    let b = SliceBuilder::new("ns", "s-b", "s", "IPv4")
        .port("", 8080, "TCP")
        .endpoint("10.0.1.9", "node1")
        .model()
        .unwrap();
    let plan = plan_service(&svc, &[a, b], &node());
    let port = &plan.ports[0];
    let cluster: Vec<_> = port
        .endpoints
        .cluster
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(cluster, ["10.0.1.10:8080", "10.0.1.9:8080"]);
    assert_eq!(
        port.endpoints.local.len(),
        1,
        "the local copy of 10.0.1.9 wins"
    );
}

#[test]
fn dual_stack_services_are_planned_per_family() {
    let svc = ServiceBuilder::new("ns", "s")
        .cluster_ip("172.30.0.1")
        .cluster_ip("fd00:172:30::1")
        .port("http", 80, "TCP")
        .model()
        .unwrap();
    let v4 = SliceBuilder::new("ns", "s-4", "s", "IPv4")
        .port("http", 80, "TCP")
        .endpoint("10.0.1.1", "")
        .model()
        .unwrap();
    let v6 = SliceBuilder::new("ns", "s-6", "s", "IPv6")
        .port("http", 80, "TCP")
        .endpoint("fd00:10::1", "")
        .model()
        .unwrap();
    let plan = plan_service(&svc, &[v4, v6], &node());
    assert_eq!(plan.ports.len(), 2);
    assert_eq!(plan.ports[0].family, Family::V4);
    assert_eq!(plan.ports[1].family, Family::V6);
    assert_eq!(
        plan.ports[1].endpoints.cluster[0].to_string(),
        "[fd00:10::1]:80"
    );
    // A single-stack Service ignores slices of the other family.
    let v4_only = ServiceBuilder::new("ns", "s")
        .cluster_ip("172.30.0.1")
        .port("http", 80, "TCP")
        .model()
        .unwrap();
    assert_eq!(plan_service(&v4_only, &[], &node()).ports.len(), 1);
}

#[test]
fn hairpin_endpoints_are_those_that_can_send_through_this_node() {
    let slice = SliceBuilder::new("ns", "s-1", "s", "IPv4")
        .port("", 80, "TCP")
        .endpoint("10.180.0.1", "node1")
        .endpoint("10.180.0.2", "node2")
        .endpoint("10.180.0.3", "")
        .model()
        .unwrap();
    let cluster_ip = ServiceBuilder::new("ns", "s")
        .cluster_ip("172.30.0.1")
        .port("", 80, "TCP");
    let plan = plan_service(
        &cluster_ip.model().unwrap(),
        std::slice::from_ref(&slice),
        &node(),
    );
    let ips: Vec<String> = plan.ports[0]
        .hairpin_ips
        .iter()
        .map(|a| a.to_string())
        .collect();
    // node2's pod never reaches the ClusterIP through this node; an unknown node might be this one.
    assert_eq!(ips, ["10.180.0.1", "10.180.0.3"]);
    let node_port = cluster_ip
        .with("/spec/type", "NodePort")
        .with("/spec/ports/0/nodePort", 30080);
    let plan = plan_service(&node_port.model().unwrap(), &[slice], &node());
    assert_eq!(
        plan.ports[0].hairpin_ips.len(),
        3,
        "any pod can come in through the NodePort"
    );
}
