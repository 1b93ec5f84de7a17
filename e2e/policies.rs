//! Upstream's traffic-policy tables (reference section 6: TestExternalTrafficPolicyLocal and
//! …Cluster, TestInternalTrafficPolicy, both TestTerminatingEndpoints tables,
//! TestInternalExternalMasquerade), plus session affinity, healthCheckNodePort answers and stale
//! UDP flow cleanup, with real packets.

use std::time::Duration;

use crate::harness::{Cluster, From, NODE_IP4, NODE_NAME, addr, wait_for};
use crate::objects::{Ep, Exposed, slice_with};
use crate::rows::{Expect, Masq, Row, check, reach};

const REMOTE: &str = "node2";
const HTTP: [(&str, i32, &str); 1] = [("http", 80, "TCP")];
const LB: &str = "198.51.100.7";
const EXT_IP: &str = "192.168.60.11";

/// Endpoints as (pod index, node name, kind): `R` ready, `S` serving and terminating, `T`
/// terminating and not serving.
type Endpoints = Vec<(usize, &'static str, char)>;

/// A terminating-endpoints case: name, endpoints, expectation for pod → ClusterIP and for
/// external → LB.
type TerminatingCase<'a> = (&'a str, &'a [(usize, &'a str, char)], Expect, Expect);

/// The status code of an HTTP response printed by `http_get`.
fn status(response: &str) -> &str {
    response.split_whitespace().nth(1).unwrap_or("")
}

/// Writes the Service and one slice of `endpoints` (pod index, node, kind), then waits for it.
fn program(c: &Cluster, svc: &Exposed, endpoints: &[(usize, &str, char)]) {
    let eps: Vec<Ep> = endpoints
        .iter()
        .map(|(pod, node, kind)| {
            let ip = &c.pods[pod - 1].ip4;
            match kind {
                'S' => Ep::serving_terminating(ip, node),
                'T' => Ep::terminating(ip, node),
                _ => Ep::ready(ip, node),
            }
        })
        .collect();
    let mut docs = vec![c.node_object("zone-a"), svc.json()];
    if !endpoints.is_empty() {
        docs.push(slice_with(
            &format!("{}-1", svc.name),
            svc.name,
            "IPv4",
            &HTTP,
            &eps,
        ));
    }
    c.write("svc.yaml", &docs.iter().collect::<Vec<_>>());
    c.settle();
}

fn traffic_policy_service(external_local: bool) -> Exposed<'static> {
    Exposed {
        cluster_ips: &["10.96.0.41"],
        external_ips: &[EXT_IP],
        lb_ips: &[LB],
        external_local,
        health_check_node_port: Some(30000),
        ..Exposed::default()
    }
}

#[test]
fn external_traffic_policy_local() {
    let mut c = Cluster::with_backends(2);
    c.start_proxy(&[]);
    let svc = traffic_policy_service(true);
    program(&c, &svc, &[(1, REMOTE, 'R'), (2, NODE_NAME, 'R')]);
    let pod = From::Pod(3);
    let both = || reach(&["pod1", "pod2"], Masq::No);
    let local = || reach(&["pod2"], Masq::No);
    check(
        &c,
        &[
            Row::new("pod to ClusterIP", pod, addr("10.96.0.41", 80), both()),
            Row::new("pod to externalIP", pod, addr(EXT_IP, 80), both()),
            Row::new(
                "external to externalIP",
                From::External,
                addr(EXT_IP, 80),
                local(),
            ),
            Row::new("pod to LB", pod, addr(LB, 80), both()),
            Row::new("external to LB", From::External, addr(LB, 80), local()),
            Row::new("pod to NodePort", pod, addr(NODE_IP4, 30001), both()),
            Row::new(
                "external to NodePort",
                From::External,
                addr(NODE_IP4, 30001),
                local(),
            ),
        ],
    );
    // The load balancer's health check: this node has one local endpoint.
    let answer = c
        .http_get(From::External, &addr(NODE_IP4, 30000), "/any/path")
        .expect("health check");
    assert_eq!(status(&answer), "200", "{answer}");
    let lower = answer.to_lowercase();
    assert!(
        lower.contains("x-load-balancing-endpoint-weight: 1"),
        "{answer}"
    );
    assert!(
        lower.contains("content-type: application/json")
            && lower.contains("x-content-type-options: nosniff")
    );
    assert!(answer.ends_with(r#"{"service":{"namespace":"e2e","name":"svc"},"localEndpoints":1,"serviceProxyHealthy":true}"#));

    // No local endpoint left: external clients are dropped, pods still short-circuit, and the
    // health check fails so the load balancer stops sending here.
    program(&c, &svc, &[(1, REMOTE, 'R'), (2, REMOTE, 'R')]);
    check(
        &c,
        &[
            Row::new("external to LB", From::External, addr(LB, 80), Expect::Drop),
            Row::new(
                "external to NodePort",
                From::External,
                addr(NODE_IP4, 30001),
                Expect::Drop,
            ),
            Row::new("pod to LB", pod, addr(LB, 80), both()),
        ],
    );
    wait_for("the health check to fail", Duration::from_secs(3), || {
        c.http_get(From::External, &addr(NODE_IP4, 30000), "/")
            .is_ok_and(|a| status(&a) == "503" && a.contains(r#""localEndpoints":0"#))
    });
}

#[test]
fn external_traffic_policy_cluster() {
    let mut c = Cluster::with_backends(2);
    c.start_proxy(&[]);
    program(
        &c,
        &traffic_policy_service(false),
        &[(1, REMOTE, 'R'), (2, NODE_NAME, 'R')],
    );
    let pod = From::Pod(3);
    let both = |m| reach(&["pod1", "pod2"], m);
    check(
        &c,
        &[
            Row::new(
                "pod to ClusterIP",
                pod,
                addr("10.96.0.41", 80),
                both(Masq::No),
            ),
            Row::new("pod to externalIP", pod, addr(EXT_IP, 80), both(Masq::Yes)),
            Row::new(
                "external to externalIP",
                From::External,
                addr(EXT_IP, 80),
                both(Masq::Yes),
            ),
            Row::new("pod to LB", pod, addr(LB, 80), both(Masq::Yes)),
            Row::new(
                "external to LB",
                From::External,
                addr(LB, 80),
                both(Masq::Yes),
            ),
            Row::new(
                "pod to NodePort",
                pod,
                addr(NODE_IP4, 30001),
                both(Masq::Yes),
            ),
            Row::new(
                "external to NodePort",
                From::External,
                addr(NODE_IP4, 30001),
                both(Masq::Yes),
            ),
        ],
    );
    // A Cluster-policy LoadBalancer has no health-check server.
    assert!(
        c.http_get(From::External, &addr(NODE_IP4, 30000), "/")
            .is_err()
    );
}

#[test]
fn internal_traffic_policy() {
    let mut c = Cluster::with_backends(3);
    c.start_proxy(&[]);
    let to = addr("10.96.1.1", 80);
    let pod = From::Pod(4);
    let svc = |local| Exposed {
        cluster_ips: &["10.96.1.1"],
        internal_local: local,
        ..Exposed::default()
    };
    let cases: [(&str, bool, Endpoints, Expect); 4] = [
        (
            "Cluster: all endpoints",
            false,
            vec![(1, NODE_NAME, 'R'), (2, "node1b", 'R'), (3, REMOTE, 'R')],
            reach(&["pod1", "pod2", "pod3"], Masq::No),
        ),
        (
            "Local: one local endpoint",
            true,
            vec![(1, NODE_NAME, 'R'), (2, REMOTE, 'R'), (3, REMOTE, 'R')],
            reach(&["pod1"], Masq::No),
        ),
        (
            "Local: two local endpoints",
            true,
            vec![(1, NODE_NAME, 'R'), (2, NODE_NAME, 'R'), (3, REMOTE, 'R')],
            reach(&["pod1", "pod2"], Masq::No),
        ),
        (
            "Local: no local endpoint",
            true,
            vec![(1, REMOTE, 'R'), (2, REMOTE, 'R')],
            Expect::Drop,
        ),
    ];
    for (name, local, endpoints, expect) in cases {
        program(&c, &svc(local), &endpoints);
        check(&c, &[Row::new(name, pod, to.clone(), expect)]);
    }
    program(&c, &svc(true), &[]);
    check(&c, &[Row::new("slice deleted", pod, to, Expect::Reject)]);
}

/// TestTerminatingEndpointsTrafficPolicyLocal/Cluster: pods 1-5 are endpoints, pod 6 the client.
fn terminating_endpoints(external_local: bool, cases: &[TerminatingCase]) {
    let mut c = Cluster::with_backends(5);
    c.start_proxy(&[]);
    let svc = Exposed {
        cluster_ips: &["10.96.1.1"],
        lb_ips: &[LB],
        external_local,
        ..Exposed::default()
    };
    for (name, endpoints, to_cluster_ip, to_lb) in cases {
        program(&c, &svc, endpoints);
        check(
            &c,
            &[
                Row::new(
                    format!("{name}: pod to ClusterIP"),
                    From::Pod(6),
                    addr("10.96.1.1", 80),
                    to_cluster_ip.clone(),
                ),
                Row::new(
                    format!("{name}: external to LB"),
                    From::External,
                    addr(LB, 80),
                    to_lb.clone(),
                ),
            ],
        );
    }
}

const L: &str = NODE_NAME;

#[test]
fn terminating_endpoints_traffic_policy_local() {
    let none = |_| Expect::Reject;
    terminating_endpoints(
        true,
        &[
            (
                "ready local endpoints win",
                &[
                    (1, L, 'R'),
                    (2, L, 'R'),
                    (3, L, 'S'),
                    (4, L, 'T'),
                    (5, REMOTE, 'R'),
                ],
                reach(&["pod1", "pod2", "pod5"], Masq::No),
                reach(&["pod1", "pod2"], Masq::No),
            ),
            (
                "local serving-terminating fallback",
                &[(2, L, 'S'), (3, L, 'S'), (4, L, 'T'), (5, REMOTE, 'R')],
                reach(&["pod5"], Masq::No),
                reach(&["pod2", "pod3"], Masq::No),
            ),
            (
                "only a remote serving-terminating endpoint",
                &[(5, REMOTE, 'S')],
                reach(&["pod5"], Masq::No),
                Expect::Drop,
            ),
            (
                "nothing serving",
                &[(4, L, 'T'), (5, REMOTE, 'T')],
                none(()),
                none(()),
            ),
            ("slice deleted", &[], none(()), none(())),
        ],
    );
}

#[test]
fn terminating_endpoints_traffic_policy_cluster() {
    terminating_endpoints(
        false,
        &[
            (
                "ready endpoints win",
                &[
                    (1, L, 'R'),
                    (2, L, 'R'),
                    (3, REMOTE, 'S'),
                    (4, REMOTE, 'T'),
                    (5, REMOTE, 'R'),
                ],
                reach(&["pod1", "pod2", "pod5"], Masq::No),
                reach(&["pod1", "pod2", "pod5"], Masq::Yes),
            ),
            (
                "serving-terminating fallback",
                &[(2, L, 'S'), (3, L, 'S'), (4, REMOTE, 'T'), (5, REMOTE, 'S')],
                reach(&["pod2", "pod3", "pod5"], Masq::No),
                reach(&["pod2", "pod3", "pod5"], Masq::Yes),
            ),
            (
                "only a remote serving-terminating endpoint",
                &[(5, REMOTE, 'S')],
                reach(&["pod5"], Masq::No),
                reach(&["pod5"], Masq::Yes),
            ),
            (
                "nothing serving",
                &[(4, L, 'T'), (5, REMOTE, 'T')],
                Expect::Reject,
                Expect::Reject,
            ),
        ],
    );
}

#[test]
fn topology_hints_follow_the_nodes_zone() {
    use kube_nft_proxy::fixtures::SliceBuilder;
    let mut c = Cluster::with_backends(3);
    c.start_proxy(&[]);
    let svc = crate::objects::service("near", &["10.96.2.1"], &HTTP);
    let hinted = |zones: [Option<&str>; 3], nodes: Option<[&str; 3]>| {
        let mut b = SliceBuilder::new("e2e", "near-1", "near", "IPv4").port("http", 80, "TCP");
        for (i, pod) in c.pods[..3].iter().enumerate() {
            b = b.endpoint(&pod.ip4, REMOTE);
            if let Some(zone) = zones[i] {
                b = b.with(
                    &format!("/endpoints/{i}/hints/forZones"),
                    serde_json::json!([{"name": zone}]),
                );
            }
            if let Some(nodes) = nodes {
                b = b.with(
                    &format!("/endpoints/{i}/hints/forNodes"),
                    serde_json::json!([{"name": nodes[i]}]),
                );
            }
        }
        b.json().clone()
    };
    let to = addr("10.96.2.1", 80);
    let pod = From::Pod(4);
    let cases = [
        (
            "zone-a",
            hinted([Some("zone-a"), Some("zone-b"), Some("zone-a")], None),
            reach(&["pod1", "pod3"], Masq::No),
        ),
        // The node moves to zone-b: everything is planned again.
        (
            "zone-b",
            hinted([Some("zone-a"), Some("zone-b"), Some("zone-a")], None),
            reach(&["pod2"], Masq::No),
        ),
        // All or nothing: one endpoint without a hint and topology is ignored.
        (
            "zone-b",
            hinted([Some("zone-a"), Some("zone-b"), None], None),
            reach(&["pod1", "pod2", "pod3"], Masq::No),
        ),
        // Node hints win over zone hints.
        (
            "zone-b",
            hinted(
                [Some("zone-a"), Some("zone-b"), Some("zone-a")],
                Some(["node2", "node3", NODE_NAME]),
            ),
            reach(&["pod3"], Masq::No),
        ),
    ];
    for (zone, slice, expect) in cases {
        c.write("svc.yaml", &[&c.node_object(zone), &svc, &slice]);
        c.settle();
        check(
            &c,
            &[Row::new(format!("node in {zone}"), pod, to.clone(), expect)],
        );
    }
}
