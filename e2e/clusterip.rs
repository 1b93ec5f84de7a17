//! ClusterIP semantics with real packets: load balancing, source addresses, masquerading,
//! REJECT without endpoints, TCP/UDP, IPv4/IPv6.

use std::time::Duration;

use crate::harness::{Cluster, From, Reply, addr, answered, require_root};
use crate::objects::{service, slice};

const WEB4: &str = "10.96.0.10";
const WEB6: &str = "fd00:96::a";

/// Pods 1-3 serve on 8080; pod 4 is a client. `web` is dual-stack with TCP 80 and UDP 5300, both
/// to the named target port 8080.
fn web_cluster(extra_args: &[&str]) -> Cluster {
    require_root();
    let mut c = Cluster::new(4);
    for pod in 1..=3 {
        c.serve(pod, 8080);
    }
    let ports = [("http", 80, "TCP"), ("udp", 5300, "UDP")];
    let target = [("http", 8080, "TCP"), ("udp", 8080, "UDP")];
    let (v4, v6): (Vec<_>, Vec<_>) = (
        c.pods[..3].iter().map(|p| p.ip4.clone()).collect(),
        c.pods[..3].iter().map(|p| p.ip6.clone()).collect(),
    );
    let v4: Vec<&str> = v4.iter().map(String::as_str).collect();
    let v6: Vec<&str> = v6.iter().map(String::as_str).collect();
    c.write(
        "web.yaml",
        &[
            &service("web", &[WEB4, WEB6], &ports),
            &slice("web-v4", "web", "IPv4", &target, &v4),
            &slice("web-v6", "web", "IPv6", &target, &v6),
        ],
    );
    c.start_proxy(extra_args);
    c.wait_answered(From::Pod(4), "tcp", &addr(WEB4, 80), Duration::from_secs(5));
    c
}

fn all_backends() -> Vec<String> {
    vec!["pod1".into(), "pod2".into(), "pod3".into()]
}

#[test]
fn every_endpoint_receives_traffic_and_pods_keep_their_source_address() {
    let c = web_cluster(&[]);
    for (proto, ip, port, client) in [
        ("tcp", WEB4, 80, c.pods[3].ip4.clone()),
        ("udp", WEB4, 5300, c.pods[3].ip4.clone()),
        ("tcp", WEB6, 80, c.pods[3].ip6.clone()),
        ("udp", WEB6, 5300, c.pods[3].ip6.clone()),
    ] {
        let replies = c.connect(From::Pod(4), proto, &addr(ip, port), 40);
        let (names, peers) = answered(&replies);
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            all_backends(),
            "{proto} {ip}"
        );
        assert_eq!(
            peers.into_iter().collect::<Vec<_>>(),
            vec![client],
            "{proto} {ip}: source kept"
        );
    }
}

#[test]
fn off_cluster_and_node_clients_are_masqueraded() {
    let c = web_cluster(&[]);
    let gateways: Vec<String> = c.pods[..3].iter().map(|p| p.gw4.clone()).collect();
    for from in [From::External, From::Node] {
        let replies = c.connect(from, "tcp", &addr(WEB4, 80), 30);
        let (names, peers) = answered(&replies);
        assert_eq!(names.len(), 3, "{from:?}");
        for peer in &peers {
            assert!(
                gateways.contains(peer),
                "{from:?}: backend saw {peer}, not the node's address"
            );
        }
    }
    let gateways6: Vec<String> = c.pods[..3].iter().map(|p| p.gw6.clone()).collect();
    let (_, peers) = answered(&c.connect(From::External, "udp", &addr(WEB6, 5300), 20));
    assert!(
        peers.iter().all(|p| gateways6.contains(p)),
        "IPv6 external traffic masqueraded: {peers:?}"
    );
}

#[test]
fn hairpin_traffic_is_masqueraded() {
    let c = web_cluster(&[]);
    // Pod 1 reaching the service lands on itself a third of the time: then it must see the node.
    let replies = c.connect(From::Pod(1), "tcp", &addr(WEB4, 80), 40);
    let mut saw_self = false;
    for r in &replies {
        let Reply::Ok { name, peer } = r else {
            panic!("{r:?}")
        };
        if name == "pod1" {
            saw_self = true;
            assert_eq!(peer, &c.pods[0].gw4, "hairpin is masqueraded");
        } else {
            assert_eq!(peer, &c.pods[0].ip4, "pod-to-other-pod keeps the source");
        }
    }
    assert!(saw_self, "pod1 never reached itself in 40 tries");
}

#[test]
fn masquerade_all_masquerades_pod_traffic_too() {
    let c = web_cluster(&["--masquerade-all"]);
    let (_, peers) = answered(&c.connect(From::Pod(4), "tcp", &addr(WEB4, 80), 20));
    let gateways: Vec<String> = c.pods[..3].iter().map(|p| p.gw4.clone()).collect();
    assert!(peers.iter().all(|p| gateways.contains(p)), "{peers:?}");
}

#[test]
fn services_without_endpoints_and_unused_ports_are_refused_at_once() {
    require_root();
    let mut c = Cluster::new(1);
    c.write(
        "lonely.yaml",
        &[&service(
            "lonely",
            &["10.96.0.20", "fd00:96::14"],
            &[("http", 80, "TCP"), ("dns", 53, "UDP")],
        )],
    );
    c.start_proxy(&[]);
    let cases = [
        ("tcp", addr("10.96.0.20", 80)),
        ("udp", addr("10.96.0.20", 53)),
        ("tcp", addr("fd00:96::14", 80)),
        ("udp", addr("fd00:96::14", 53)),
        // A port the active ClusterIP does not have.
        ("tcp", addr("10.96.0.20", 81)),
        ("udp", addr("fd00:96::14", 54)),
    ];
    // REJECT is an ICMP port unreachable, as upstream's. A TCP client on this very node may see
    // it only at its first SYN retransmission (about 1 s): the kernel drops an ICMP error that
    // arrives while connect() still holds the socket (TcpExtLockDroppedIcmps), which happens
    // with IPv6 over veth. Still a refusal, never a connect timeout. On the node itself a UDP
    // send to such a service fails at once with EPERM, as with upstream's rules.
    for from in [From::Pod(1), From::External, From::Node] {
        for (proto, to) in &cases {
            let replies = c.connect_with_timeout(from, proto, to, 2, 5000);
            for r in replies {
                match r {
                    Reply::Refused { ms } => assert!(
                        ms < 1500,
                        "{from:?} {proto} {to}: refused only after {ms} ms"
                    ),
                    Reply::Denied { ms } if matches!(from, From::Node) => assert!(ms < 100),
                    other => panic!("{from:?} {proto} {to}: expected REJECT, got {other:?}"),
                }
            }
        }
    }
}
