//! Upstream's packet-flow tables (reference section 6) checked on the rendered ruleset with the
//! [`tracer`](crate::ruleset::tracer), without a kernel: a wrong plan or render decision fails
//! here first. Same fixture as upstream: pod CIDR 10.0.0.0/8, node 192.168.0.2 (also local:
//! 192.168.1.2, 192.168.99.11, 2001:db8::1, 2001:db8:1::2), NodePorts on 192.168.0.2 and
//! 2001:db8::1, external client 203.0.113.2, one outside the source ranges 203.0.113.130.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::fixtures::{NodeBuilder, ServiceBuilder, SliceBuilder};
use crate::model::{Cidr, Family, Protocol};
use crate::plan::{NodePortIps, NodeSettings, plan_service};
use crate::render::Renderer;
use crate::ruleset::Ruleset;
use crate::ruleset::desired::Owner;
use crate::ruleset::tracer::{Outcome, Packet, Tracer};

const LOCAL: [&str; 5] = [
    "192.168.0.2",
    "192.168.1.2",
    "192.168.99.11",
    "2001:db8::1",
    "2001:db8:1::2",
];
const POD: &str = "10.0.0.2";
const NODE: &str = "192.168.0.2";
const EXT: &str = "203.0.113.2";
const BLOCKED: &str = "203.0.113.130";

/// Node settings of the upstream fixture; `detector` = a cluster CIDR is known.
fn settings(detector: bool, masquerade_all: bool, nodeports: [NodePortIps; 2]) -> NodeSettings {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    NodeSettings {
        cluster_cidrs: if detector {
            [
                Cidr::parse("10.0.0.0/8").ok(),
                Cidr::parse("fd00:10::/64").ok(),
            ]
        } else {
            [None, None]
        },
        masquerade_all,
        nodeport_ips: nodeports,
        node_ips: [vec![ip(NODE)], vec![ip("2001:db8::1")]],
        node: NodeBuilder::new("node1")
            .zone("zone-a")
            .address(NODE)
            .model(),
        ..NodeSettings::new("node1")
    }
}

fn default_nodeports() -> [NodePortIps; 2] {
    [
        NodePortIps::Only(vec![NODE.parse().unwrap()]),
        NodePortIps::Only(vec!["2001:db8::1".parse().unwrap()]),
    ]
}

/// The ruleset for these Services and slices.
fn ruleset(node: &NodeSettings, services: &[ServiceBuilder], slices: &[SliceBuilder]) -> Ruleset {
    let renderer = Renderer::new().unwrap();
    let mut ruleset = Ruleset::new();
    let mut touched = BTreeSet::new();
    ruleset.replace(Owner::Base, renderer.base(node).unwrap(), &mut touched);
    let slices: Vec<_> = slices
        .iter()
        .map(|s| s.model().expect("valid slice"))
        .collect();
    for svc in services {
        let svc = svc.model().expect("valid service");
        let mine: Vec<_> = slices
            .iter()
            .filter(|s| s.service == svc.key)
            .cloned()
            .collect();
        let plan = plan_service(&svc, &mine, node);
        ruleset.replace(
            Owner::Service(std::sync::Arc::new(svc.key.clone())),
            renderer.service(&plan, node).unwrap(),
            &mut touched,
        );
    }
    ruleset
}

/// A table row: `src → dst:port` expecting upstream's notation: `"ip:port, ip:port"` (with the
/// masquerade flag), `"REJECT"`, `"DROP"` or `""` (untouched).
struct Row {
    name: &'static str,
    src: &'static str,
    dst: &'static str,
    port: u16,
    protocol: Protocol,
    output: &'static str,
    masq: bool,
}

const fn row(
    name: &'static str,
    src: &'static str,
    dst: &'static str,
    port: u16,
    output: &'static str,
    masq: bool,
) -> Row {
    Row {
        name,
        src,
        dst,
        port,
        protocol: Protocol::Tcp,
        output,
        masq,
    }
}

fn check(ruleset: &Ruleset, rows: &[Row]) {
    let local: Vec<IpAddr> = LOCAL.iter().map(|s| s.parse().unwrap()).collect();
    let mut failures = Vec::new();
    for r in rows {
        let dst: IpAddr = r.dst.parse().unwrap();
        let tracer = Tracer::new(ruleset, Family::of(&dst), &local);
        let got = tracer.trace(Packet {
            src: r.src.parse().unwrap(),
            dst,
            protocol: r.protocol,
            port: r.port,
        });
        let (output, masq) = match &got {
            Outcome::Reached {
                endpoints,
                masquerade,
            } => (
                endpoints
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                *masquerade,
            ),
            Outcome::Reject => ("REJECT".to_string(), false),
            Outcome::Drop => ("DROP".to_string(), false),
            Outcome::Untouched => (String::new(), false),
        };
        if output != r.output || masq != r.masq {
            failures.push(format!(
                "  {}: {} -> {}:{}: got {output:?} masq {masq}, want {:?} masq {}",
                r.name, r.src, r.dst, r.port, r.output, r.masq
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

fn lb(name: &str, cluster_ip: &str, node_port: i32) -> ServiceBuilder {
    ServiceBuilder::new("ns1", name)
        .cluster_ip(cluster_ip)
        .port("p80", 80, "TCP")
        .with("/spec/type", "LoadBalancer")
        .with("/spec/ports/0/nodePort", node_port)
}

fn eps(service: &str, family: &str, endpoints: &[(&str, &str, &str)]) -> SliceBuilder {
    let mut b =
        SliceBuilder::new("ns1", &format!("{service}-1"), service, family).port("p80", 80, "TCP");
    for (ip, node, flags) in endpoints {
        let ready = flags.contains('R');
        b = b.endpoint_with(
            ip,
            node,
            ready,
            ready || flags.contains('S'),
            flags.contains('T') || flags.contains('S'),
        );
    }
    b
}

#[test]
fn no_endpoints_reject() {
    let svc = lb("svc1", "172.30.0.41", 3001)
        .with("/spec/externalIPs", serde_json::json!(["192.168.99.11"]))
        .with(
            "/status/loadBalancer/ingress",
            serde_json::json!([{"ip": "1.2.3.4"}]),
        );
    let r = ruleset(&settings(true, false, default_nodeports()), &[svc], &[]);
    check(
        &r,
        &[
            row("pod to cluster IP", POD, "172.30.0.41", 80, "REJECT", false),
            row(
                "external to external IP",
                EXT,
                "192.168.99.11",
                80,
                "REJECT",
                false,
            ),
            row("pod to NodePort", POD, NODE, 3001, "REJECT", false),
            row("external to NodePort", EXT, NODE, 3001, "REJECT", false),
            row("pod to LB", POD, "1.2.3.4", 80, "REJECT", false),
            row("external to LB", EXT, "1.2.3.4", 80, "REJECT", false),
        ],
    );
}

#[test]
fn cluster_ip_general() {
    let svc1 = ServiceBuilder::new("ns1", "svc1")
        .cluster_ip("172.30.0.41")
        .port("http", 80, "TCP");
    let slice1 = SliceBuilder::new("ns1", "svc1-1", "svc1", "IPv4")
        .port("http", 80, "TCP")
        .endpoint("10.180.0.1", "node1");
    let svc2 = ServiceBuilder::new("ns2", "svc2")
        .cluster_ip("172.30.0.42")
        .port("http", 80, "TCP")
        .port("https", 443, "TCP")
        .port("dns-udp", 53, "UDP")
        .port("dns-tcp", 53, "TCP")
        .port("dns-sctp", 53, "SCTP");
    let slice2 = SliceBuilder::new("ns2", "svc2-1", "svc2", "IPv4")
        .port("http", 80, "TCP")
        .port("https", 8443, "TCP")
        .port("dns-udp", 53, "UDP")
        .port("dns-tcp", 5353, "TCP")
        .port("dns-sctp", 53, "SCTP")
        .endpoint("10.180.0.1", "node1")
        .endpoint("10.180.2.1", "node2");
    let r = ruleset(
        &settings(true, false, default_nodeports()),
        &[svc1, svc2],
        &[slice1, slice2],
    );
    let both = |port| match port {
        80 => "10.180.0.1:80, 10.180.2.1:80",
        8443 => "10.180.0.1:8443, 10.180.2.1:8443",
        5353 => "10.180.0.1:5353, 10.180.2.1:5353",
        _ => "10.180.0.1:53, 10.180.2.1:53",
    };
    let proto = |mut r: Row, p| {
        r.protocol = p;
        r
    };
    check(
        &r,
        &[
            row(
                "simple clusterIP",
                "10.180.0.2",
                "172.30.0.41",
                80,
                "10.180.0.1:80",
                false,
            ),
            row(
                "hairpin",
                "10.180.0.1",
                "172.30.0.41",
                80,
                "10.180.0.1:80",
                true,
            ),
            row(
                "multiple endpoints",
                "10.180.0.2",
                "172.30.0.42",
                80,
                both(80),
                false,
            ),
            row(
                "targetPort",
                "10.180.0.2",
                "172.30.0.42",
                443,
                both(8443),
                false,
            ),
            row("TCP 53", "10.180.0.2", "172.30.0.42", 53, both(5353), false),
            proto(
                row("UDP 53", "10.180.0.2", "172.30.0.42", 53, both(53), false),
                Protocol::Udp,
            ),
            proto(
                row("SCTP 53", "10.180.0.2", "172.30.0.42", 53, both(53), false),
                Protocol::Sctp,
            ),
            proto(
                row(
                    "UDP to TCP-only port",
                    "10.180.0.2",
                    "172.30.0.42",
                    80,
                    "REJECT",
                    false,
                ),
                Protocol::Udp,
            ),
            row(
                "svc1 has no port 443",
                "10.180.0.2",
                "172.30.0.41",
                443,
                "REJECT",
                false,
            ),
        ],
    );
}

#[test]
fn load_balancer() {
    let svc = lb("svc1", "172.30.0.41", 3001)
        .with(
            "/status/loadBalancer/ingress",
            serde_json::json!([{"ip": "1.2.3.4"}, {"ip": "5.6.7.8"}]),
        )
        .with(
            "/spec/loadBalancerSourceRanges",
            serde_json::json!(["192.168.0.0/24", " 203.0.113.0/25"]),
        );
    let slice = eps("svc1", "IPv4", &[("10.180.0.1", "node2", "R")]);
    let r = ruleset(
        &settings(true, false, default_nodeports()),
        &[svc],
        &[slice],
    );
    let ep = "10.180.0.1:80";
    check(
        &r,
        &[
            row("pod to cluster IP", POD, "172.30.0.41", 80, ep, false),
            row("external to nodePort", EXT, NODE, 3001, ep, true),
            row(
                "nodePort bypasses LoadBalancerSourceRanges",
                BLOCKED,
                NODE,
                3001,
                ep,
                true,
            ),
            row("accepted external to LB1", EXT, "1.2.3.4", 80, ep, true),
            row("accepted external to LB2", EXT, "5.6.7.8", 80, ep, true),
            row(
                "blocked external to LB1",
                BLOCKED,
                "1.2.3.4",
                80,
                "DROP",
                false,
            ),
            row(
                "blocked external to LB2",
                BLOCKED,
                "5.6.7.8",
                80,
                "DROP",
                false,
            ),
            row(
                "pod to LB1 (blocked by LoadBalancerSourceRanges)",
                POD,
                "1.2.3.4",
                80,
                "DROP",
                false,
            ),
            row(
                "pod to LB2 (blocked by LoadBalancerSourceRanges)",
                POD,
                "5.6.7.8",
                80,
                "DROP",
                false,
            ),
            row(
                "node to LB1 (allowed by LoadBalancerSourceRanges)",
                NODE,
                "1.2.3.4",
                80,
                ep,
                true,
            ),
            row(
                "node to LB2 (allowed by LoadBalancerSourceRanges)",
                NODE,
                "5.6.7.8",
                80,
                ep,
                true,
            ),
        ],
    );
    // "same node to LB, SNATted to LB": the VIP is a local address here.
    let local: Vec<IpAddr> = LOCAL
        .iter()
        .chain(&["1.2.3.4"])
        .map(|s| s.parse().unwrap())
        .collect();
    let tracer = Tracer::new(&r, Family::V4, &local);
    let got = tracer.trace(Packet {
        src: "1.2.3.4".parse().unwrap(),
        dst: "1.2.3.4".parse().unwrap(),
        protocol: Protocol::Tcp,
        port: 80,
    });
    assert!(
        matches!(
            got,
            Outcome::Reached {
                masquerade: true,
                ..
            }
        ),
        "{got:?}"
    );
}

#[test]
fn node_ports() {
    let all_v4 = [
        NodePortIps::AllLocal,
        NodePortIps::Only(vec!["2001:db8::1".parse().unwrap()]),
    ];
    let cidrs_v4 = [
        NodePortIps::Only(vec![NODE.parse().unwrap(), "192.168.1.2".parse().unwrap()]),
        NodePortIps::Only(vec!["2001:db8::1".parse().unwrap()]),
    ];
    let cidrs_v6 = [
        NodePortIps::Only(vec![NODE.parse().unwrap()]),
        NodePortIps::Only(vec![
            "2001:db8::1".parse().unwrap(),
            "2001:db8:1::2".parse().unwrap(),
        ]),
    ];
    let svc = ServiceBuilder::new("ns1", "svc1")
        .cluster_ip("172.30.0.41")
        .cluster_ip("fd00:172:30::41")
        .port("p80", 80, "TCP")
        .with("/spec/type", "NodePort")
        .with("/spec/ports/0/nodePort", 3001);
    let v4 = eps(
        "svc1",
        "IPv4",
        &[("10.180.0.1", "", "R"), ("10.180.2.1", "node1", "R")],
    );
    let v6 = SliceBuilder::new("ns1", "svc1-6", "svc1", "IPv6")
        .port("p80", 80, "TCP")
        .endpoint("fd00:10:180::1", "")
        .endpoint("fd00:10:180::2:1", "node1");
    let both4 = "10.180.0.1:80, 10.180.2.1:80";
    let both6 = "[fd00:10:180::1]:80, [fd00:10:180::2:1]:80";
    for (name, nodeports, alt4, alt6) in [
        ("default", default_nodeports(), "", ""),
        ("v4 multi-CIDR", cidrs_v4, both4, ""),
        ("v4 match-all", all_v4, both4, ""),
        ("v6 multi-CIDR", cidrs_v6, "", both6),
    ] {
        let r = ruleset(
            &settings(true, false, nodeports),
            std::slice::from_ref(&svc),
            &[v4.clone(), v6.clone()],
        );
        let _ = name;
        check(
            &r,
            &[
                row("pod to cluster IP", POD, "172.30.0.41", 80, both4, false),
                row("external to nodePort", EXT, NODE, 3001, both4, true),
                row("node to nodePort", NODE, NODE, 3001, both4, true),
                row(
                    "external to alternate node IP",
                    EXT,
                    "192.168.1.2",
                    3001,
                    alt4,
                    !alt4.is_empty(),
                ),
                row(
                    "pod to cluster IP (v6)",
                    "fd00:10::2",
                    "fd00:172:30::41",
                    80,
                    both6,
                    false,
                ),
                row(
                    "external to nodePort (v6)",
                    "2600:5200::1",
                    "2001:db8::1",
                    3001,
                    both6,
                    true,
                ),
                row(
                    "node to nodePort (v6)",
                    "2001:db8::1",
                    "2001:db8::1",
                    3001,
                    both6,
                    true,
                ),
                row(
                    "external to alternate node IP (v6)",
                    "2600:5200::1",
                    "2001:db8:1::2",
                    3001,
                    alt6,
                    !alt6.is_empty(),
                ),
            ],
        );
    }
}

fn etp_service(local: bool) -> ServiceBuilder {
    lb("svc1", "172.30.0.41", 3001)
        .with(
            "/spec/externalTrafficPolicy",
            if local { "Local" } else { "Cluster" },
        )
        .with("/spec/healthCheckNodePort", 30000)
        .with("/spec/externalIPs", serde_json::json!(["192.168.99.11"]))
        .with(
            "/status/loadBalancer/ingress",
            serde_json::json!([{"ip": "1.2.3.4"}]),
        )
}

#[test]
fn external_traffic_policy_local() {
    let slice = eps(
        "svc1",
        "IPv4",
        &[("10.180.0.1", "node2", "R"), ("10.180.2.1", "node1", "R")],
    );
    let r = ruleset(
        &settings(true, false, default_nodeports()),
        &[etp_service(true)],
        &[slice],
    );
    let both = "10.180.0.1:80, 10.180.2.1:80";
    let local = "10.180.2.1:80";
    check(
        &r,
        &[
            row(
                "pod to cluster IP hits both endpoints, unmasqueraded",
                POD,
                "172.30.0.41",
                80,
                both,
                false,
            ),
            row(
                "pod to external IP hits both endpoints, unmasqueraded",
                POD,
                "192.168.99.11",
                80,
                both,
                false,
            ),
            row(
                "external to external IP hits only local endpoint, unmasqueraded",
                EXT,
                "192.168.99.11",
                80,
                local,
                false,
            ),
            row(
                "pod to LB IP hits both endpoints, unmasqueraded",
                POD,
                "1.2.3.4",
                80,
                both,
                false,
            ),
            row(
                "external to LB IP hits only local endpoint, unmasqueraded",
                EXT,
                "1.2.3.4",
                80,
                local,
                false,
            ),
            row(
                "pod to NodePort hits both endpoints, unmasqueraded",
                POD,
                NODE,
                3001,
                both,
                false,
            ),
            row(
                "external to NodePort hits only local endpoint, unmasqueraded",
                EXT,
                NODE,
                3001,
                local,
                false,
            ),
        ],
    );
}

#[test]
fn external_traffic_policy_cluster() {
    let slice = eps(
        "svc1",
        "IPv4",
        &[("10.180.0.1", "node2", "R"), ("10.180.2.1", "node1", "R")],
    );
    let r = ruleset(
        &settings(true, false, default_nodeports()),
        &[etp_service(false)],
        &[slice],
    );
    let both = "10.180.0.1:80, 10.180.2.1:80";
    check(
        &r,
        &[
            row("pod to cluster IP", POD, "172.30.0.41", 80, both, false),
            row("pod to external IP", POD, "192.168.99.11", 80, both, true),
            row(
                "external to external IP",
                EXT,
                "192.168.99.11",
                80,
                both,
                true,
            ),
            row("pod to LB IP", POD, "1.2.3.4", 80, both, true),
            row("external to LB IP", EXT, "1.2.3.4", 80, both, true),
            row("pod to NodePort", POD, NODE, 3001, both, true),
            row("external to NodePort", EXT, NODE, 3001, both, true),
        ],
    );
}

/// Name, internal policy Local, endpoints (ip, node, flags), expected outcome.
type PolicyCase = (
    &'static str,
    bool,
    &'static [(&'static str, &'static str, &'static str)],
    &'static str,
);

/// Name, endpoints (ip, flags), expected for pod → ClusterIP, for external → LB, LB masqueraded.
type TerminatingCase = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
    &'static str,
    bool,
);

#[test]
fn internal_traffic_policy() {
    let svc = |local: bool| {
        ServiceBuilder::new("ns1", "svc1")
            .cluster_ip("172.30.1.1")
            .port("p80", 80, "TCP")
            .with(
                "/spec/internalTrafficPolicy",
                if local { "Local" } else { "Cluster" },
            )
    };
    let cases: [PolicyCase; 5] = [
        (
            "internalTrafficPolicy is Cluster",
            false,
            &[
                ("10.0.1.1", "node1", "R"),
                ("10.0.1.2", "host1", "R"),
                ("10.0.1.3", "host2", "R"),
            ],
            "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80",
        ),
        (
            "Local with one local endpoint",
            true,
            &[
                ("10.0.1.1", "node1", "R"),
                ("10.0.1.2", "host1", "R"),
                ("10.0.1.3", "host2", "R"),
            ],
            "10.0.1.1:80",
        ),
        (
            "Local with two local endpoints",
            true,
            &[
                ("10.0.1.1", "node1", "R"),
                ("10.0.1.2", "node1", "R"),
                ("10.0.1.3", "host2", "R"),
            ],
            "10.0.1.1:80, 10.0.1.2:80",
        ),
        (
            "Local with no local endpoints",
            true,
            &[("10.0.1.1", "host0", "R"), ("10.0.1.2", "host1", "R")],
            "DROP",
        ),
        ("endpoints deleted", true, &[], "REJECT"),
    ];
    for (name, local, endpoints, want) in cases {
        let slices = if endpoints.is_empty() {
            vec![]
        } else {
            vec![eps("svc1", "IPv4", endpoints)]
        };
        let r = ruleset(
            &settings(true, false, default_nodeports()),
            &[svc(local)],
            &slices,
        );
        let _ = name;
        check(&r, &[row(name, POD, "172.30.1.1", 80, want, false)]);
    }
}

/// Endpoints `.1`–`.5` of 10.0.1.0/24 with flags: `R` ready, `S` serving+terminating, `T`
/// terminating only; `L` local.
fn terminating(local_policy: bool, cases: &[TerminatingCase]) {
    let svc = lb("svc1", "172.30.1.1", 3001)
        .with(
            "/spec/externalTrafficPolicy",
            if local_policy { "Local" } else { "Cluster" },
        )
        .with(
            "/status/loadBalancer/ingress",
            serde_json::json!([{"ip": "1.2.3.4"}]),
        );
    for (name, endpoints, to_cluster_ip, to_lb, lb_masq) in cases {
        let list: Vec<(&str, &str, &str)> = endpoints
            .iter()
            .map(|(ip, flags)| {
                (
                    *ip,
                    if flags.contains('L') {
                        "node1"
                    } else {
                        "host1"
                    },
                    *flags,
                )
            })
            .collect();
        let slices = if list.is_empty() {
            vec![]
        } else {
            vec![eps("svc1", "IPv4", &list)]
        };
        let r = ruleset(
            &settings(true, false, default_nodeports()),
            std::slice::from_ref(&svc),
            &slices,
        );
        let _ = name;
        check(
            &r,
            &[
                row(
                    "pod to clusterIP",
                    POD,
                    "172.30.1.1",
                    80,
                    to_cluster_ip,
                    false,
                ),
                row("external to LB", EXT, "1.2.3.4", 80, to_lb, *lb_masq),
            ],
        );
    }
}

#[test]
fn terminating_endpoints_traffic_policy_local() {
    terminating(
        true,
        &[
            (
                "ready endpoints exist",
                &[
                    ("10.0.1.1", "RL"),
                    ("10.0.1.2", "RL"),
                    ("10.0.1.3", "SL"),
                    ("10.0.1.4", "TL"),
                    ("10.0.1.5", "R"),
                ],
                "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80",
                "10.0.1.1:80, 10.0.1.2:80",
                false,
            ),
            (
                "only terminating local endpoints",
                &[
                    ("10.0.1.2", "SL"),
                    ("10.0.1.3", "SL"),
                    ("10.0.1.4", "TL"),
                    ("10.0.1.5", "R"),
                ],
                "10.0.1.5:80",
                "10.0.1.2:80, 10.0.1.3:80",
                false,
            ),
            (
                "terminating endpoints on remote node",
                &[("10.0.1.5", "S")],
                "10.0.1.5:80",
                "DROP",
                false,
            ),
            (
                "no usable endpoints",
                &[("10.0.1.4", "TL"), ("10.0.1.5", "T")],
                "REJECT",
                "REJECT",
                false,
            ),
            ("no endpoints", &[], "REJECT", "REJECT", false),
        ],
    );
}

#[test]
fn terminating_endpoints_traffic_policy_cluster() {
    terminating(
        false,
        &[
            (
                "ready endpoints exist",
                &[
                    ("10.0.1.1", "RL"),
                    ("10.0.1.2", "RL"),
                    ("10.0.1.3", "S"),
                    ("10.0.1.4", "T"),
                    ("10.0.1.5", "R"),
                ],
                "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80",
                "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80",
                true,
            ),
            (
                "only terminating endpoints",
                &[
                    ("10.0.1.2", "SL"),
                    ("10.0.1.3", "SL"),
                    ("10.0.1.4", "T"),
                    ("10.0.1.5", "S"),
                ],
                "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80",
                "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80",
                true,
            ),
            (
                "terminating endpoints on remote node",
                &[("10.0.1.5", "S")],
                "10.0.1.5:80",
                "10.0.1.5:80",
                true,
            ),
            (
                "no usable endpoints",
                &[("10.0.1.4", "TL"), ("10.0.1.5", "T")],
                "REJECT",
                "REJECT",
                false,
            ),
        ],
    );
}

#[test]
fn internal_external_masquerade() {
    let svc = |name: &str, ip: &str, np: i32, lb_ip: &str| {
        lb(name, ip, np).with(
            "/status/loadBalancer/ingress",
            serde_json::json!([{"ip": lb_ip}]),
        )
    };
    let services = [
        svc("svc1", "172.30.0.41", 3001, "9.10.11.12"),
        svc("svc2", "172.30.0.42", 3002, "9.10.11.13").with("/spec/externalTrafficPolicy", "Local"),
        svc("svc3", "172.30.0.43", 3003, "9.10.11.14").with("/spec/internalTrafficPolicy", "Local"),
    ];
    let slices = [
        eps(
            "svc1",
            "IPv4",
            &[("10.180.0.1", "node1", "R"), ("10.180.1.1", "remote", "R")],
        ),
        eps(
            "svc2",
            "IPv4",
            &[("10.180.0.2", "node1", "R"), ("10.180.1.2", "remote", "R")],
        ),
        eps(
            "svc3",
            "IPv4",
            &[("10.180.0.3", "node1", "R"), ("10.180.1.3", "remote", "R")],
        ),
    ];
    for (detector, masquerade_all) in [(true, false), (false, false), (true, true), (false, true)] {
        let r = ruleset(
            &settings(detector, masquerade_all, default_nodeports()),
            &services,
            &slices,
        );
        let mut rows = Vec::new();
        for (i, (cip, np, lb_ip)) in [
            ("172.30.0.41", 3001, "9.10.11.12"),
            ("172.30.0.42", 3002, "9.10.11.13"),
            ("172.30.0.43", 3003, "9.10.11.14"),
        ]
        .into_iter()
        .enumerate()
        {
            let n = i + 1;
            let both: &'static str =
                Box::leak(format!("10.180.0.{n}:80, 10.180.1.{n}:80").into_boxed_str());
            let local: &'static str = Box::leak(format!("10.180.0.{n}:80").into_boxed_str());
            for (src, src_kind) in [(POD, 0), (NODE, 1), (EXT, 2)] {
                for (dst, port, dst_kind) in [(cip, 80, 0), (NODE, np, 1), (lb_ip, 80, 2)] {
                    let (local_only, masq) =
                        expected(n, src_kind, dst_kind, detector, masquerade_all);
                    rows.push(row(
                        "masquerade matrix",
                        src,
                        dst,
                        port as u16,
                        if local_only { local } else { both },
                        masq,
                    ));
                }
            }
        }
        check(&r, &rows);
    }
}

/// Upstream's TestInternalExternalMasquerade expectations: (local only, masqueraded) for service
/// `svc` (1: eTP Cluster, 2: eTP Local, 3: iTP Local), source (0 pod, 1 node, 2 external) and
/// destination (0 ClusterIP, 1 NodePort, 2 LB IP).
fn expected(svc: usize, src: u8, dst: u8, detector: bool, masquerade_all: bool) -> (bool, bool) {
    let (mut local_only, mut masq) = match (svc, src, dst) {
        (1, 0, 0) | (2, 0, _) => (false, false),
        (1, _, _) | (2, 1, _) | (2, 2, 0) => (false, true),
        (2, 2, _) => (true, false),
        (3, 0, 0) => (true, false),
        (3, _, 0) => (true, true),
        _ => (false, true),
    };
    if !detector {
        if src != 0 && dst == 0 {
            masq = false;
        }
        if svc == 2 && src == 0 && dst != 0 {
            local_only = true;
        }
    }
    if masquerade_all && dst == 0 {
        masq = true;
    }
    (local_only, masq)
}
