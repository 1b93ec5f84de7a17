//! TestInternalExternalMasquerade: three LoadBalancer Services (eTP Cluster, eTP Local,
//! iTP Local), each with a local and a remote endpoint, reached from a pod, the node and an
//! external client at their ClusterIP, NodePort and LB IP — with and without a cluster CIDR
//! (upstream's LocalTrafficDetector) and --masquerade-all.

use crate::harness::{From, NODE_IP4, NODE_NAME, addr, require_root};
use crate::objects::{Ep, Exposed, slice_with};
use crate::rows::{Masq, Row, check, reach};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Src {
    Pod,
    Node,
    External,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dst {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// Which endpoints answer and whether they see a masqueraded source, per upstream's table.
fn expected(svc: usize, src: Src, dst: Dst, detector: bool, masquerade_all: bool) -> (bool, Masq) {
    use Dst::*;
    use Src::*;
    // (local only, masqueraded) with a detector and without --masquerade-all.
    let (mut local_only, mut masq) = match (svc, src, dst) {
        (1, Pod, ClusterIp) | (2, Pod, _) => (false, false),
        (1, _, _) | (2, Node, _) | (2, External, ClusterIp) => (false, true),
        (2, External, _) => (true, false),
        (3, Pod, ClusterIp) => (true, false),
        (3, _, ClusterIp) => (true, true),
        _ => (false, true),
    };
    if !detector {
        if matches!(src, Node | External) && dst == ClusterIp {
            masq = false;
        }
        if svc == 2 && src == Pod && dst != ClusterIp {
            local_only = true;
        }
    }
    if masquerade_all && dst == ClusterIp {
        masq = true;
    }
    (local_only, if masq { Masq::Yes } else { Masq::No })
}

fn matrix(detector: bool, masquerade_all: bool) {
    require_root();
    let mut c = crate::harness::Cluster::new(7);
    for pod in 1..=6 {
        c.serve(pod, 80);
    }
    let mut docs = vec![c.node_object("zone-a")];
    let specs = [
        ("svc1", "10.96.0.41", 30001, "198.51.100.11", false, false),
        ("svc2", "10.96.0.42", 30002, "198.51.100.12", true, false),
        ("svc3", "10.96.0.43", 30003, "198.51.100.13", false, true),
    ];
    for (i, (name, cip, np, lb, etp_local, itp_local)) in specs.iter().enumerate() {
        let (ips, lbs) = ([*cip], [*lb]);
        docs.push(
            Exposed {
                name,
                cluster_ips: &ips,
                node_port: *np,
                lb_ips: &lbs,
                external_local: *etp_local,
                internal_local: *itp_local,
                ..Exposed::default()
            }
            .json(),
        );
        let (local, remote) = (&c.pods[2 * i].ip4, &c.pods[2 * i + 1].ip4);
        docs.push(slice_with(
            &format!("{name}-1"),
            name,
            "IPv4",
            &[("http", 80, "TCP")],
            &[Ep::ready(local, NODE_NAME), Ep::ready(remote, "node2")],
        ));
    }
    c.write("svc.yaml", &docs.iter().collect::<Vec<_>>());
    let flags: &[&str] = if masquerade_all {
        &["--masquerade-all"]
    } else {
        &[]
    };
    c.start_proxy_with(detector, flags);
    c.settle();

    const PODS: [[&str; 2]; 3] = [["pod1", "pod2"], ["pod3", "pod4"], ["pod5", "pod6"]];
    let mut rows = Vec::new();
    for (i, (name, cip, np, lb, _, _)) in specs.iter().enumerate() {
        for src in [Src::Pod, Src::Node, Src::External] {
            for dst in [Dst::ClusterIp, Dst::NodePort, Dst::LoadBalancer] {
                let (local_only, masq) = expected(i + 1, src, dst, detector, masquerade_all);
                let backends: &[&'static str] = if local_only { &PODS[i][..1] } else { &PODS[i] };
                let from = match src {
                    Src::Pod => From::Pod(7),
                    Src::Node => From::Node,
                    Src::External => From::External,
                };
                let to = match dst {
                    Dst::ClusterIp => addr(cip, 80),
                    Dst::NodePort => addr(NODE_IP4, *np as u16),
                    Dst::LoadBalancer => addr(lb, 80),
                };
                rows.push(Row::new(
                    format!("{name} {src:?} to {dst:?}"),
                    from,
                    to,
                    reach(backends, masq),
                ));
            }
        }
    }
    check(&c, &rows);
}

#[test]
fn masquerading_with_a_cluster_cidr() {
    matrix(true, false);
}

#[test]
fn masquerading_without_a_cluster_cidr() {
    matrix(false, false);
}

#[test]
fn masquerading_with_masquerade_all() {
    matrix(true, true);
}

#[test]
fn masquerading_with_masquerade_all_and_no_cluster_cidr() {
    matrix(false, true);
}
