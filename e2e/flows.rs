//! Per-client state: ClientIP session affinity (per client IP and service port, whichever
//! address of the service the client used) and the cleanup of stale UDP conntrack entries when a
//! UDP service's endpoint goes away.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::{Cluster, From, NODE_IP4, NODE_NAME, Reply, addr, require_root, wait_for};
use crate::objects::{Ep, Exposed, slice_with};

/// The backends that answered `count` connections.
fn answered_by(c: &Cluster, from: From, to: &str, count: u32) -> BTreeSet<String> {
    c.connect(from, "tcp", to, count)
        .into_iter()
        .map(|r| match r {
            Reply::Ok { name, .. } => name,
            other => panic!("{to}: {other:?}"),
        })
        .collect()
}

#[test]
fn client_ip_affinity_holds_across_the_services_addresses() {
    require_root();
    let mut c = Cluster::new(4);
    for pod in 1..=3 {
        c.serve(pod, 80);
    }
    let eps: Vec<Ep> = c.pods[..3]
        .iter()
        .map(|p| Ep::ready(&p.ip4, NODE_NAME))
        .collect();
    let mut svc = Exposed {
        name: "sticky",
        cluster_ips: &["10.96.0.70"],
        lb_ips: &["198.51.100.70"],
        ..Exposed::default()
    }
    .json();
    svc["spec"]["sessionAffinity"] = "ClientIP".into();
    svc["spec"]["sessionAffinityConfig"] = serde_json::json!({"clientIP": {"timeoutSeconds": 300}});
    c.write(
        "svc.yaml",
        &[
            &svc,
            &slice_with("sticky-1", "sticky", "IPv4", &[("http", 80, "TCP")], &eps),
        ],
    );
    c.start_proxy(&[]);
    c.settle();

    let first = answered_by(&c, From::External, &addr("10.96.0.70", 80), 15);
    assert_eq!(first.len(), 1, "one client, one endpoint: {first:?}");
    for to in [addr(NODE_IP4, 30001), addr("198.51.100.70", 80)] {
        assert_eq!(
            answered_by(&c, From::External, &to, 15),
            first,
            "the same endpoint through {to}"
        );
    }
    let pod = answered_by(&c, From::Pod(4), &addr("10.96.0.70", 80), 15);
    assert_eq!(pod.len(), 1, "another client sticks too: {pod:?}");

    // Without affinity the same client is spread over all endpoints.
    svc["spec"]["sessionAffinity"] = "None".into();
    c.write(
        "svc.yaml",
        &[
            &svc,
            &slice_with("sticky-1", "sticky", "IPv4", &[("http", 80, "TCP")], &eps),
        ],
    );
    c.settle();
    assert_eq!(
        answered_by(&c, From::External, &addr("10.96.0.70", 80), 60).len(),
        3
    );
    let sets = c.nft(&["list", "sets", "ip"]).expect("list");
    assert!(
        !sets.contains("affinity-"),
        "affinity sets are deleted at once:\n{sets}"
    );
}

/// Conntrack entries of UDP flows to `10.96.0.53` as `conntrack -L` prints them.
fn udp_flows(c: &Cluster) -> String {
    c.node
        .exec(&["conntrack", "-L", "-p", "udp", "--orig-dst", "10.96.0.53"])
        .unwrap_or_default()
}

#[test]
fn stale_udp_flows_are_cleaned_when_an_endpoint_goes_away() {
    require_root();
    let mut c = Cluster::new(3);
    c.serve(1, 53);
    c.serve(2, 53);
    let svc = crate::objects::service("dns", &["10.96.0.53"], &[("dns", 53, "UDP")]);
    let ips: Vec<String> = c.pods.iter().map(|p| p.ip4.clone()).collect();
    let slice = |pod: usize| {
        slice_with(
            "dns-1",
            "dns",
            "IPv4",
            &[("dns", 53, "UDP")],
            &[Ep::ready(&ips[pod - 1], NODE_NAME)],
        )
    };
    c.write("svc.yaml", &[&svc, &slice(1)]);
    c.start_proxy(&[]);
    c.settle();
    // One client flow: the same source port every time, so conntrack keeps one entry.
    let client = format!("{}:40053", c.pods[2].ip4);
    let ask = || {
        c.connect_from(
            From::Pod(3),
            Some(&client),
            "udp",
            &addr("10.96.0.53", 53),
            1,
            1000,
        )
    };
    assert!(matches!(&ask()[0], Reply::Ok { name, .. } if name == "pod1"));
    let pod1 = c.pods[0].ip4.clone();
    assert!(
        udp_flows(&c).contains(&format!("src={pod1} ")),
        "{}",
        udp_flows(&c)
    );

    // pod1 keeps running but is no longer an endpoint: without cleanup the flow's conntrack entry
    // would keep sending this client's datagrams to pod1 for minutes.
    c.write("svc.yaml", &[&svc, &slice(2)]);
    c.settle();
    wait_for(
        "the stale flow to be deleted",
        Duration::from_secs(3),
        || !udp_flows(&c).contains(&format!("src={pod1} ")),
    );
    assert!(matches!(&ask()[0], Reply::Ok { name, .. } if name == "pod2"));
}
