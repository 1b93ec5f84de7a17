//! Upstream's packet-flow tables for ClusterIPs, NodePorts and load balancers (reference
//! section 6: TestNoEndpointsReject, TestClusterIPGeneral, TestLoadBalancer, TestNodePorts),
//! ported to real packets: each row is a real connection through the kernel.

use crate::harness::{
    ALT_NODE_IP4, ALT_NODE_IP6, BLOCKED_IP4, BLOCKED_IP6, Cluster, EXT_IP4, EXT_IP6, From,
    NODE_IP4, NODE_IP6, NODE_NAME, addr,
};
use crate::objects::{Ep, Exposed, service, slice_with};
use crate::rows::{Expect, Masq, Row, check, reach};

const REMOTE: &str = "node2";
const HTTP: [(&str, i32, &str); 1] = [("http", 80, "TCP")];

#[test]
fn no_endpoints_reject() {
    let mut c = Cluster::with_backends(0);
    let svc = Exposed {
        cluster_ips: &["10.96.0.41"],
        external_ips: &["192.168.60.11"],
        lb_ips: &["198.51.100.7"],
        ..Exposed::default()
    };
    c.write("svc.yaml", &[&c.node_object("zone-a"), &svc.json()]);
    c.start_proxy(&[]);
    c.settle();
    let pod = From::Pod(1);
    check(
        &c,
        &[
            Row::new(
                "pod to ClusterIP",
                pod,
                addr("10.96.0.41", 80),
                Expect::Reject,
            ),
            Row::new(
                "external to externalIP",
                From::External,
                addr("192.168.60.11", 80),
                Expect::Reject,
            ),
            Row::new(
                "pod to NodePort",
                pod,
                addr(NODE_IP4, 30001),
                Expect::Reject,
            ),
            Row::new(
                "external to NodePort",
                From::External,
                addr(NODE_IP4, 30001),
                Expect::Reject,
            ),
            Row::new("pod to LB", pod, addr("198.51.100.7", 80), Expect::Reject),
            Row::new(
                "external to LB",
                From::External,
                addr("198.51.100.7", 80),
                Expect::Reject,
            ),
        ],
    );
}

#[test]
fn cluster_ip_general() {
    let mut c = Cluster::with_backends(2);
    for pod in 1..=2 {
        c.serve(pod, 8443);
        c.serve(pod, 53);
        c.serve(pod, 5353);
    }
    let (p1, p2) = (c.pods[0].ip4.clone(), c.pods[1].ip4.clone());
    let svc1 = service("svc1", &["10.96.0.41"], &HTTP);
    let slice1 = slice_with(
        "svc1-1",
        "svc1",
        "IPv4",
        &HTTP,
        &[Ep::ready(&p1, NODE_NAME)],
    );
    let svc2 = service(
        "svc2",
        &["10.96.0.42"],
        &[
            ("http", 80, "TCP"),
            ("https", 443, "TCP"),
            ("dns-udp", 53, "UDP"),
            ("dns-tcp", 53, "TCP"),
            ("dns-sctp", 53, "SCTP"),
        ],
    );
    let slice2 = slice_with(
        "svc2-1",
        "svc2",
        "IPv4",
        &[
            ("http", 80, "TCP"),
            ("https", 8443, "TCP"),
            ("dns-udp", 53, "UDP"),
            ("dns-tcp", 5353, "TCP"),
            ("dns-sctp", 53, "SCTP"),
        ],
        &[Ep::ready(&p1, NODE_NAME), Ep::ready(&p2, REMOTE)],
    );
    c.write("svc.yaml", &[&svc1, &slice1, &svc2, &slice2]);
    c.start_proxy(&[]);
    c.settle();
    let client = From::Pod(3);
    let both = || reach(&["pod1", "pod2"], Masq::No);
    check(
        &c,
        &[
            Row::new(
                "simple clusterIP",
                client,
                addr("10.96.0.41", 80),
                reach(&["pod1"], Masq::No),
            ),
            Row::new(
                "hairpin",
                From::Pod(1),
                addr("10.96.0.41", 80),
                reach(&["pod1"], Masq::Yes),
            ),
            Row::new("multiple endpoints", client, addr("10.96.0.42", 80), both()),
            Row::new("targetPort", client, addr("10.96.0.42", 443), both()),
            Row::new("TCP 53", client, addr("10.96.0.42", 53), both()),
            Row::new("UDP 53", client, addr("10.96.0.42", 53), both()).udp(),
            Row::new(
                "UDP to a TCP-only port",
                client,
                addr("10.96.0.42", 80),
                Expect::Reject,
            )
            .udp(),
            Row::new(
                "svc1 has no port 443",
                client,
                addr("10.96.0.41", 443),
                Expect::Reject,
            ),
        ],
    );
    // SCTP (this kernel has no SCTP module): programmed, checked at the ruleset level.
    let map = c
        .nft(&["list", "map", "ip", "kube-nft-proxy", "service-ips"])
        .expect("list");
    assert!(
        map.contains("10.96.0.42 . sctp . 53 : goto service-e2e/svc2/sctp/dns-sctp"),
        "{map}"
    );
    let chain = c
        .nft(&[
            "list",
            "chain",
            "ip",
            "kube-nft-proxy",
            "service-e2e/svc2/sctp/dns-sctp",
        ])
        .expect("list");
    let map = chain
        .split_whitespace()
        .find_map(|w| w.strip_prefix('@').and_then(|m| m.strip_suffix(":53")))
        .unwrap_or_else(|| panic!("no DNAT through an endpoint map: {chain}"));
    assert!(map.starts_with("cluster-endpoints-"), "{chain}");
    let endpoints = c
        .nft(&["list", "map", "ip", "kube-nft-proxy", map])
        .expect("list");
    assert!(
        endpoints.contains(&format!("10.96.0.42 . sctp . 53 . 0 : {p1}")),
        "{endpoints}"
    );
}

/// `ip:0` / `[ip]:0`: bind to this address, any port.
fn host_port(ip: &str) -> String {
    addr(ip, 0)
}

/// Addresses of one family for the load-balancer table.
struct LbFamily {
    cluster_ip: &'static str,
    lbs: [&'static str; 2],
    ranges: &'static [&'static str],
    node: &'static str,
    ext_bind: &'static str,
    blocked: &'static str,
}

const LB4: LbFamily = LbFamily {
    cluster_ip: "10.96.0.41",
    lbs: ["198.51.100.7", "198.51.100.9"],
    ranges: &["192.168.50.0/25", " 203.0.113.0/25"],
    node: NODE_IP4,
    ext_bind: EXT_IP4,
    blocked: BLOCKED_IP4,
};

const LB6: LbFamily = LbFamily {
    cluster_ip: "fd00:96::41",
    lbs: ["2001:db8:100::7", "2001:db8:100::9"],
    ranges: &["fd00:50::/121", "2001:db8:203::/64"],
    node: NODE_IP6,
    ext_bind: EXT_IP6,
    blocked: BLOCKED_IP6,
};

fn load_balancer(f: &LbFamily) {
    let mut c = Cluster::with_backends(1);
    // The first LB IP is also routed to this node locally, as some load balancers do.
    c.node.ip(&["addr", "add", f.lbs[0], "dev", "lo"]);
    let ip = |p: &crate::harness::Pod| {
        if f.cluster_ip.contains(':') {
            p.ip6.clone()
        } else {
            p.ip4.clone()
        }
    };
    let ep = ip(&c.pods[0]);
    let family = if f.cluster_ip.contains(':') {
        "IPv6"
    } else {
        "IPv4"
    };
    let svc = Exposed {
        cluster_ips: &[f.cluster_ip],
        lb_ips: &f.lbs,
        source_ranges: f.ranges,
        ..Exposed::default()
    };
    c.write(
        "svc.yaml",
        &[
            &c.node_object("zone-a"),
            &svc.json(),
            &slice_with("svc-1", "svc", family, &HTTP, &[Ep::ready(&ep, REMOTE)]),
        ],
    );
    c.start_proxy(&[]);
    c.settle();
    let pod = From::Pod(2);
    let one = |m| reach(&["pod1"], m);
    let blocked = host_port(f.blocked);
    let mut rows = vec![
        Row::new(
            "pod to ClusterIP",
            pod,
            addr(f.cluster_ip, 80),
            one(Masq::No),
        ),
        Row::new(
            "external to NodePort",
            From::External,
            addr(f.node, 30001),
            one(Masq::Yes),
        )
        .bind(host_port(f.ext_bind)),
        Row::new(
            "NodePort bypasses source ranges",
            From::External,
            addr(f.node, 30001),
            one(Masq::Yes),
        )
        .bind(blocked.clone()),
    ];
    for lb in f.lbs {
        rows.extend([
            Row::new(
                format!("accepted external to {lb}"),
                From::External,
                addr(lb, 80),
                one(Masq::Yes),
            )
            .bind(host_port(f.ext_bind)),
            Row::new(
                format!("blocked external to {lb}"),
                From::External,
                addr(lb, 80),
                Expect::Drop,
            )
            .bind(blocked.clone()),
            Row::new(format!("pod to {lb}"), pod, addr(lb, 80), Expect::Drop),
            // From the node's primary address (a node with several picks by route and prefix).
            Row::new(
                format!("node to {lb}"),
                From::Node,
                addr(lb, 80),
                one(Masq::Yes),
            )
            .bind(host_port(f.node)),
        ]);
    }
    // Traffic from the node to a VIP routed locally has the VIP as source: allowed, because a
    // source range holds the node's IP.
    let vip = f.lbs[0];
    rows.push(
        Row::new(
            "node SNATed to its local LB IP",
            From::Node,
            addr(vip, 80),
            one(Masq::Yes),
        )
        .bind(host_port(vip)),
    );
    check(&c, &rows);
}

#[test]
fn load_balancer_ipv4() {
    load_balancer(&LB4);
}

#[test]
fn load_balancer_ipv6() {
    load_balancer(&LB6);
}

/// TestNodePorts: `nodeport_addresses` empty means the default (`primary`).
fn node_ports(ipv6: bool, nodeport_addresses: Option<&str>) {
    let mut c = Cluster::with_backends(2);
    let (v4, v6): (Vec<String>, Vec<String>) = (
        c.pods[..2].iter().map(|p| p.ip4.clone()).collect(),
        c.pods[..2].iter().map(|p| p.ip6.clone()).collect(),
    );
    let svc = Exposed {
        cluster_ips: &["10.96.0.41", "fd00:96::41"],
        ..Exposed::default()
    };
    c.write(
        "svc.yaml",
        &[
            &c.node_object("zone-a"),
            &svc.json(),
            &slice_with(
                "svc-4",
                "svc",
                "IPv4",
                &HTTP,
                &[Ep::ready(&v4[0], ""), Ep::ready(&v4[1], NODE_NAME)],
            ),
            &slice_with(
                "svc-6",
                "svc",
                "IPv6",
                &HTTP,
                &[Ep::ready(&v6[0], ""), Ep::ready(&v6[1], NODE_NAME)],
            ),
        ],
    );
    let mut flags = Vec::new();
    if let Some(a) = nodeport_addresses {
        flags.extend(["--nodeport-addresses", a]);
    }
    c.start_proxy(&flags);
    c.settle();
    let (cluster_ip, node, alt) = if ipv6 {
        ("fd00:96::41", NODE_IP6, ALT_NODE_IP6)
    } else {
        ("10.96.0.41", NODE_IP4, ALT_NODE_IP4)
    };
    let both = |m| reach(&["pod1", "pod2"], m);
    let alt_expect = if nodeport_addresses.is_some() {
        both(Masq::Yes)
    } else {
        Expect::Unhandled
    };
    check(
        &c,
        &[
            Row::new(
                "pod to ClusterIP",
                From::Pod(3),
                addr(cluster_ip, 80),
                both(Masq::No),
            ),
            Row::new(
                "external to NodePort",
                From::External,
                addr(node, 30001),
                both(Masq::Yes),
            ),
            Row::new(
                "node to NodePort",
                From::Node,
                addr(node, 30001),
                both(Masq::Yes),
            ),
            Row::new(
                "external to the other node IP",
                From::External,
                addr(alt, 30001),
                alt_expect,
            ),
            // NodePorts never answer on loopback (route_localnet stays off).
            Row::new(
                "node to NodePort on loopback",
                From::Node,
                addr(if ipv6 { "::1" } else { "127.0.0.1" }, 30001),
                Expect::Unhandled,
            ),
        ],
    );
}

const NODEPORT_CIDRS: &str = "192.168.50.0/24,192.168.51.0/24,fd00:50::/64,fd00:51::/64";

#[test]
fn node_ports_ipv4_primary() {
    node_ports(false, None);
}

#[test]
fn node_ports_ipv4_cidrs() {
    node_ports(false, Some(NODEPORT_CIDRS));
}

#[test]
fn node_ports_ipv4_everywhere() {
    node_ports(false, Some("0.0.0.0/0"));
}

#[test]
fn node_ports_ipv6_everywhere() {
    node_ports(true, Some("::/0"));
}

#[test]
fn node_ports_ipv6_primary() {
    node_ports(true, None);
}

#[test]
fn node_ports_ipv6_cidrs() {
    node_ports(true, Some(NODEPORT_CIDRS));
}
