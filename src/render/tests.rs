//! The rendered text of each kind of chain and element, as operators will see it.

use std::collections::BTreeSet;

use super::*;
use crate::fixtures::{ServiceBuilder, SliceBuilder};
use crate::model::Cidr;
use crate::plan::plan_service;
use crate::ruleset::Ruleset;
use crate::ruleset::desired::Owner;

fn node(masquerade_all: bool) -> NodeSettings {
    NodeSettings {
        cluster_cidrs: [Some(Cidr::parse("10.0.0.0/8").unwrap()), None],
        masquerade_all,
        ..NodeSettings::new("node1")
    }
}

/// Renders one service and returns `chain name → rule lines` and `set → element lines`.
fn render(
    svc: &ServiceBuilder,
    slices: &[SliceBuilder],
    node: &NodeSettings,
) -> (Vec<(String, Vec<String>)>, Vec<String>) {
    let renderer = Renderer::new().unwrap();
    let slices: Vec<_> = slices.iter().map(|s| s.model().unwrap()).collect();
    let plan = plan_service(&svc.model().unwrap(), &slices, node);
    let mut chains = Vec::new();
    let mut elements = Vec::new();
    for item in renderer.service(&plan, node).unwrap() {
        match item {
            Item::Chain {
                family,
                name,
                chain,
            } => chains.push((
                format!("{} {name}", family.nft_name()),
                chain.rules.iter().map(|r| r.to_string()).collect(),
            )),
            Item::Element {
                family,
                set,
                key,
                value,
            } => {
                let mut line = format!("{} {set} {key}", family.nft_name());
                if let Some(c) = &value.comment {
                    line += &format!(" comment \"{c}\"");
                }
                if let Some(data) = value.data_text() {
                    line += &format!(" : {data}");
                }
                elements.push(line);
            }
            // Affinity sets.
            Item::Set { .. } => {}
        }
    }
    (chains, elements)
}

fn svc1() -> ServiceBuilder {
    ServiceBuilder::new("ns1", "svc1")
        .cluster_ip("172.30.0.41")
        .port("p80", 80, "TCP")
}

fn svc1_slice() -> SliceBuilder {
    SliceBuilder::new("ns1", "svc1-a", "svc1", "IPv4")
        .port("p80", 80, "TCP")
        .endpoint("10.0.1.1", "node1")
        .endpoint("10.0.1.2", "node2")
}

#[test]
fn a_cluster_ip_service_with_two_endpoints() {
    let (chains, elements) = render(&svc1(), &[svc1_slice()], &node(false));
    assert_eq!(
        chains,
        vec![(
            "ip service-ns1/svc1/tcp/p80".to_string(),
            vec![
                "ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade".to_string(),
                "dnat to ip daddr . meta l4proto . th dport . numgen random mod 2 map @cluster-endpoints-03:80".to_string()
            ]
        )]
    );
    assert_eq!(
        elements,
        // 10.0.1.2 is on node2: only this node's pods reach a ClusterIP through this node.
        vec![
            "ip hairpin 10.0.1.1 . 10.0.1.1",
            "ip cluster-endpoints-03 172.30.0.41 . tcp . 80 . 0 : 10.0.1.1",
            "ip cluster-endpoints-03 172.30.0.41 . tcp . 80 . 1 : 10.0.1.2",
            "ip cluster-ips 172.30.0.41",
            "ip service-ips 172.30.0.41 . tcp . 80 : goto service-ns1/svc1/tcp/p80"
        ]
    );
}

#[test]
fn with_affinity_every_endpoint_has_a_chain() {
    let svc = svc1().with("/spec/sessionAffinity", "ClientIP");
    let (chains, elements) = render(&svc, &[svc1_slice()], &node(false));
    let names: Vec<&str> = chains.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "ip endpoint-ns1/svc1/tcp/p80__10.0.1.1/80",
            "ip endpoint-ns1/svc1/tcp/p80__10.0.1.2/80",
            "ip service-ns1/svc1/tcp/p80"
        ]
    );
    assert_eq!(
        chains[0].1,
        [
            "update @affinity-ns1/svc1/tcp/p80__10.0.1.1/80 { ip saddr timeout 3h }",
            "meta l4proto tcp dnat to 10.0.1.1:80"
        ]
    );
    assert_eq!(
        chains[2].1[1..],
        [
            "ip saddr @affinity-ns1/svc1/tcp/p80__10.0.1.1/80 goto endpoint-ns1/svc1/tcp/p80__10.0.1.1/80",
            "ip saddr @affinity-ns1/svc1/tcp/p80__10.0.1.2/80 goto endpoint-ns1/svc1/tcp/p80__10.0.1.2/80",
            "numgen random mod 2 vmap { 0 : goto endpoint-ns1/svc1/tcp/p80__10.0.1.1/80, 1 : goto endpoint-ns1/svc1/tcp/p80__10.0.1.2/80 }"
        ]
    );
    assert!(!elements.iter().any(|e| e.contains("-endpoints ")));
}

#[test]
fn endpoints_on_different_ports_get_endpoint_chains() {
    let other_port = SliceBuilder::new("ns1", "svc1-b", "svc1", "IPv4")
        .port("p80", 8080, "TCP")
        .endpoint("10.0.1.3", "node1");
    let (chains, elements) = render(&svc1(), &[svc1_slice(), other_port], &node(false));
    assert_eq!(chains.len(), 4, "{chains:?}");
    assert_eq!(chains[2].1, ["meta l4proto tcp dnat to 10.0.1.3:8080"]);
    assert!(chains[3].1[1].starts_with("numgen random mod 3 vmap { 0 : goto endpoint-"));
    assert!(!elements.iter().any(|e| e.contains("-endpoints ")));
    // The two on node1.
    assert_eq!(
        elements.iter().filter(|e| e.contains(" hairpin ")).count(),
        2
    );
}

#[test]
fn masquerade_all_masquerades_every_cluster_ip_packet() {
    let (chains, _) = render(&svc1(), &[svc1_slice()], &node(true));
    let service = &chains
        .iter()
        .find(|(n, _)| n.contains("service-"))
        .unwrap()
        .1;
    assert_eq!(service[0], "ip daddr 172.30.0.41 jump mark-for-masquerade");
}

#[test]
fn without_a_cluster_cidr_cluster_ip_traffic_is_not_masqueraded() {
    let mut n = node(false);
    n.cluster_cidrs = [None, None];
    let (chains, _) = render(&svc1(), &[svc1_slice()], &n);
    let service = &chains
        .iter()
        .find(|(n, _)| n.contains("service-"))
        .unwrap()
        .1;
    assert_eq!(service.len(), 1);
    assert!(service[0].starts_with("dnat"));
}

#[test]
fn a_service_without_endpoints_is_rejected() {
    let (chains, elements) = render(&svc1(), &[], &node(false));
    assert!(chains.is_empty());
    assert_eq!(
        elements,
        vec![
            "ip cluster-ips 172.30.0.41",
            "ip no-endpoint-services 172.30.0.41 . tcp . 80 comment \"ns1/svc1:p80\" : goto reject-chain"
        ]
    );
}

#[test]
fn ipv6_and_sctp() {
    let svc = ServiceBuilder::new("ns", "dns")
        .cluster_ip("fd00:172:30::41")
        .port("", 53, "SCTP");
    let slice = SliceBuilder::new("ns", "dns-1", "dns", "IPv6")
        .port("", 5353, "SCTP")
        .endpoint("fd00:10::1", "");
    let (chains, elements) = render(&svc, &[slice], &node(false));
    assert_eq!(chains.len(), 1);
    assert_eq!(chains[0].0, "ip6 service-ns/dns/sctp/");
    assert_eq!(
        chains[0].1,
        [
            "dnat to ip6 daddr . meta l4proto . th dport . numgen random mod 1 map @cluster-endpoints-46:5353"
        ],
        "no IPv6 cluster CIDR: no masquerade rule"
    );
    assert!(elements.contains(
        &"ip6 cluster-endpoints-46 fd00:172:30::41 . sctp . 53 . 0 : fd00:10::1".to_string()
    ));
    assert!(elements.contains(
        &"ip6 service-ips fd00:172:30::41 . sctp . 53 : goto service-ns/dns/sctp/".to_string()
    ));
}

#[test]
fn base_ruleset_has_both_tables_and_the_mark() {
    let renderer = Renderer::new().unwrap();
    let items = renderer.base(&node(false)).unwrap();
    let mut ruleset = Ruleset::new();
    let mut touched = BTreeSet::new();
    assert!(ruleset.replace(Owner::Base, items, &mut touched).is_empty());
    for family in Family::ALL {
        assert!(ruleset.has_table(family));
        let masq = ruleset
            .chain(family, &ChainName::new("masquerading").unwrap())
            .unwrap();
        let text: Vec<String> = masq.rules.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            text,
            [
                "meta mark & 0x00004000 == 0x00000000 return",
                "meta mark set meta mark ^ 0x00004000",
                "masquerade fully-random"
            ]
        );
    }
    let services = ruleset
        .chain(Family::V6, &ChainName::new("services").unwrap())
        .unwrap();
    assert_eq!(
        services.rules[0].to_string(),
        "ip6 daddr . meta l4proto . th dport vmap @service-ips"
    );
}
