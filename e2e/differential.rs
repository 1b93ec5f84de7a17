//! Differential tests of the backends: the real reconciler drives a backend pair that applies
//! every transaction through the nft binary in one namespace and over netlink in another. After
//! each step both kernels must list identical tables (`nft -j list table`, handles aside), and
//! reading them back (nft JSON vs netlink dumps) must give the same state. The steps cover whole
//! rulesets (the bundled examples), incremental changes of every kind, bulk changes that need
//! several messages per set, stale-chain deletion, restart adoption and repair of a tampered table.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use kube_nft_proxy::backend::netlink::NetlinkBackend;
use kube_nft_proxy::backend::nft::NftBackend;
use kube_nft_proxy::backend::{Backend, BackendError};
use kube_nft_proxy::diff::Transaction;
use kube_nft_proxy::fixtures::{NodeBuilder, ServiceBuilder, SliceBuilder};
use kube_nft_proxy::metrics::Metrics;
use kube_nft_proxy::model::{Cidr, Object};
use kube_nft_proxy::plan::{NodePortAddresses, NodeSettings};
use kube_nft_proxy::reconciler::{Reconciler, SyncOutcome, Timing};
use kube_nft_proxy::render::templates::Templates;
use kube_nft_proxy::ruleset::{KernelState, SetFlag};
use kube_nft_proxy::source::Event;
use kube_nft_proxy::source::files::FileSource;
use kube_nft_proxy::state::Change;

use crate::harness::{Netns, require_root, run, table_listing};
use kube_nft_proxy::model::ObjectId;

const NODE: &str = "node-a";

/// Applies every transaction through both backends; they must agree on success.
struct Pair {
    nft: NftBackend,
    netlink: NetlinkBackend,
    /// Sizes of the transactions applied.
    applied: Arc<Mutex<Vec<usize>>>,
}

/// `nft -j` does not report the `dynamic` flag; netlink does. Compare without it.
fn comparable(mut state: KernelState) -> KernelState {
    for table in state.tables.iter_mut().flatten() {
        for set in table.sets.values_mut() {
            set.spec.flags.retain(|f| *f != SetFlag::Dynamic);
        }
    }
    state
}

impl Backend for Pair {
    fn name(&self) -> &'static str {
        "nft+netlink"
    }

    fn apply(&mut self, tx: &Transaction) -> Result<(), BackendError> {
        let by_nft = self.nft.apply(tx);
        let by_netlink = self.netlink.apply(tx);
        if let Ok(mut applied) = self.applied.lock() {
            applied.push(tx.size());
        }
        match (by_nft, by_netlink) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(a), Err(b)) => Err(BackendError::Refused(format!("nft: {a}; netlink: {b}"))),
            (a, b) => panic!("the backends disagree: nft {a:?}, netlink {b:?}\n{tx:#?}"),
        }
    }

    fn read(&mut self) -> Result<KernelState, BackendError> {
        let by_nft = self.nft.read()?;
        let by_netlink = self.netlink.read()?;
        assert_eq!(
            comparable(by_nft),
            comparable(by_netlink.clone()),
            "nft and netlink read the kernel differently"
        );
        Ok(by_netlink)
    }

    fn delete_tables(&mut self) -> Result<usize, BackendError> {
        let a = self.nft.delete_tables()?;
        let b = self.netlink.delete_tables()?;
        assert_eq!(a, b);
        Ok(b)
    }
}

/// Runs a command inside the namespace `ns`.
fn exec_in(ns: &str, cmd: &[&str]) -> Result<String, String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(cmd);
    run(&full)
}

/// `nft -j list table` of our table in `family`, without handles; `Null` if there is none.
fn listing(ns: &str, family: &str) -> Value {
    table_listing(ns, family, true)
}

/// Fails with the differing lines of `nft list table` if the two kernels differ.
fn assert_same(by_nft: &str, by_netlink: &str, step: &str) {
    for family in ["ip", "ip6"] {
        let a = listing(by_nft, family);
        let b = listing(by_netlink, family);
        if a != b {
            let text = |ns: &str| {
                exec_in(ns, &["nft", "list", "table", family, "kube-nft-proxy"]).unwrap_or_default()
            };
            let (ta, tb) = (text(by_nft), text(by_netlink));
            let only = |x: &str, y: &str| -> Vec<String> {
                x.lines()
                    .filter(|l| !y.lines().any(|m| m == *l))
                    .map(str::to_string)
                    .collect()
            };
            panic!(
                "{step}: {family} tables differ\nonly via nft:\n{}\nonly via netlink:\n{}\n\
                 JSON via nft: {a}\nJSON via netlink: {b}",
                only(&ta, &tb).join("\n"),
                only(&tb, &ta).join("\n"),
            );
        }
    }
}

/// Runs `body` on a thread that created the netlink backend inside `netlink_ns` and then moved
/// to `nft_ns`, so the nft processes it starts run there.
fn with_backends<T: Send + 'static>(
    nft_ns: &str,
    netlink_ns: &str,
    body: impl FnOnce(Pair) -> T + Send + 'static,
) -> T {
    let (nft_path, netlink_path) = (
        format!("/run/netns/{nft_ns}"),
        format!("/run/netns/{netlink_ns}"),
    );
    std::thread::spawn(move || {
        let enter = |path: &str| {
            let ns = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        };
        enter(&netlink_path);
        let netlink =
            NetlinkBackend::new(Templates::bundled().expect("templates")).expect("netlink backend");
        enter(&nft_path);
        body(Pair {
            nft: NftBackend::default(),
            netlink,
            applied: Arc::new(Mutex::new(Vec::new())),
        })
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn reconciler(pair: Pair) -> Reconciler {
    let mut node = NodeSettings::new(NODE);
    node.cluster_cidrs = [
        Some(Cidr::parse("10.244.0.0/16").expect("cidr")),
        Some(Cidr::parse("fd00:10:244::/56").expect("cidr")),
    ];
    let mut r = Reconciler::new(
        Timing {
            min_sync_period: Duration::ZERO,
            ..Timing::default()
        },
        node,
        NodePortAddresses::Primary,
        Box::new(pair),
        Metrics::new().expect("metrics"),
    )
    .expect("reconciler");
    r.handle(Event::Synced);
    r
}

fn service(b: ServiceBuilder) -> Change {
    Change::Upsert(Object::Service(b.model().expect("valid service")))
}

fn slice(b: SliceBuilder) -> Change {
    Change::Upsert(Object::EndpointSlice(b.model().expect("valid slice")))
}

/// A dual-stack service with TCP, UDP and SCTP ports.
fn multi() -> ServiceBuilder {
    ServiceBuilder::new("diff", "multi")
        .cluster_ip("10.96.1.1")
        .cluster_ip("fd00:96::1:1")
        .with("/spec/ipFamilies", serde_json::json!(["IPv4", "IPv6"]))
        .port("http", 80, "TCP")
        .port("dns", 53, "UDP")
        .port("sig", 3868, "SCTP")
}

fn multi_slice(family: &str, addrs: &[&str]) -> SliceBuilder {
    let (name, address_type) = match family {
        "v4" => ("multi-v4", "IPv4"),
        _ => ("multi-v6", "IPv6"),
    };
    let mut b = SliceBuilder::new("diff", name, "multi", address_type)
        .port("http", 8080, "TCP")
        .port("dns", 5353, "UDP")
        .port("sig", 3868, "SCTP");
    for (i, a) in addrs.iter().enumerate() {
        b = b.endpoint(a, if i % 2 == 0 { NODE } else { "node-b" });
    }
    b
}

/// A LoadBalancer with source ranges, external IPs, a NodePort, affinity and Local policy.
fn balancer(ranges: &[&str], affinity: bool) -> ServiceBuilder {
    let mut b = ServiceBuilder::new("diff", "lb")
        .cluster_ip("10.96.2.1")
        .cluster_ip("fd00:96::2:1")
        .with("/spec/ipFamilies", serde_json::json!(["IPv4", "IPv6"]))
        .with("/spec/type", "LoadBalancer")
        .with("/spec/externalTrafficPolicy", "Local")
        .with("/spec/healthCheckNodePort", 32100)
        .with(
            "/spec/externalIPs",
            serde_json::json!(["192.0.2.10", "2001:db8::10"]),
        )
        .with("/spec/loadBalancerSourceRanges", serde_json::json!(ranges))
        .with(
            "/status/loadBalancer/ingress",
            serde_json::json!([{"ip": "198.51.100.20"}, {"ip": "2001:db8:1::20"}]),
        )
        .with(
            "/spec/ports",
            serde_json::json!([{"name": "web", "port": 443, "targetPort": 8443,
                                "nodePort": 30444, "protocol": "TCP"}]),
        );
    if affinity {
        b = b.with("/spec/sessionAffinity", "ClientIP").with(
            "/spec/sessionAffinityConfig",
            serde_json::json!({"clientIP": {"timeoutSeconds": 10800}}),
        );
    }
    b
}

fn balancer_slices() -> Vec<Change> {
    vec![
        slice(
            SliceBuilder::new("diff", "lb-v4", "lb", "IPv4")
                .port("web", 8443, "TCP")
                .endpoint("10.244.1.60", NODE)
                .endpoint("10.244.2.60", "node-b")
                .endpoint_with("10.244.1.61", NODE, false, true, true),
        ),
        slice(
            SliceBuilder::new("diff", "lb-v6", "lb", "IPv6")
                .port("web", 8443, "TCP")
                .endpoint("fd00:10:244:1::60", NODE),
        ),
    ]
}

/// `count` small services from number `first` on, with two endpoints each.
fn bulk(first: usize, count: usize) -> Vec<Change> {
    let mut out = Vec::new();
    for i in first..first + count {
        let name = format!("bulk-{i}");
        let (hi, lo) = (i / 250, i % 250 + 1);
        out.push(service(
            ServiceBuilder::new("bulk", &name)
                .cluster_ip(&format!("10.97.{hi}.{lo}"))
                .port("p", 80, if i % 3 == 0 { "UDP" } else { "TCP" })
                .with("/spec/type", "NodePort")
                .with("/spec/ports/0/nodePort", 31000 + i as i64),
        ));
        out.push(slice(
            SliceBuilder::new("bulk", &format!("{name}-1"), &name, "IPv4")
                .port("p", 8080, if i % 3 == 0 { "UDP" } else { "TCP" })
                .endpoint(&format!("10.244.{hi}.{lo}"), NODE)
                .endpoint(&format!("10.245.{hi}.{lo}"), "node-b"),
        ));
    }
    out
}

fn bulk_deletes(first: usize, count: usize) -> Vec<Change> {
    let mut out = Vec::new();
    for i in first..first + count {
        let name = format!("bulk-{i}");
        out.push(Change::Delete(ObjectId::EndpointSlice {
            namespace: "bulk".into(),
            name: format!("{name}-1"),
        }));
        out.push(Change::Delete(ObjectId::Service {
            namespace: "bulk".into(),
            name,
        }));
    }
    out
}

/// Applies changes, syncs, and checks that the two kernels agree.
struct Steps {
    reconciler: Reconciler,
    history: Vec<Change>,
    nft_ns: String,
    netlink_ns: String,
}

impl Steps {
    fn step(&mut self, name: &str, changes: Vec<Change>, now: Instant) -> SyncOutcome {
        self.history.extend(changes.iter().cloned());
        self.reconciler.handle(Event::Changes(changes));
        let outcome = self.reconciler.sync(now);
        assert_ne!(outcome, SyncOutcome::Failed, "{name}");
        assert_same(&self.nft_ns, &self.netlink_ns, name);
        outcome
    }
}

fn local_addresses(list: &[&str]) -> Event {
    Event::LocalAddresses(list.iter().map(|a| a.parse().expect("ip")).collect())
}

const FINAL_ADDRESSES: [&str; 2] = ["192.168.50.10", "192.168.51.10"];

/// Drives the reconciler through every kind of change; returns the objects it ended with.
fn changes_of_every_kind(pair: Pair, nft_ns: String, netlink_ns: String) -> Vec<Change> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut steps = Steps {
        reconciler: reconciler(pair),
        history: Vec::new(),
        nft_ns,
        netlink_ns,
    };
    let t0 = Instant::now();
    let later = |s| t0 + Duration::from_secs(s);
    steps
        .reconciler
        .handle(local_addresses(&["192.168.50.10", "fd00:50::10"]));
    let mut whole = FileSource::new(examples, Metrics::new().expect("metrics"))
        .settled_scan()
        .expect("examples");
    whole.push(Change::Upsert(Object::Node(
        NodeBuilder::new(NODE)
            .address("192.168.50.10")
            .address("fd00:50::10")
            .model()
            .expect("node"),
    )));
    steps.step("the bundled examples", whole, t0);
    steps.step(
        "a dual-stack service",
        vec![
            service(multi()),
            slice(multi_slice("v4", &["10.244.1.10", "10.244.2.10"])),
            slice(multi_slice("v6", &["fd00:10:244:1::10"])),
        ],
        t0,
    );
    steps.step(
        "an endpoint added",
        vec![slice(multi_slice(
            "v4",
            &["10.244.1.10", "10.244.2.10", "10.244.1.11"],
        ))],
        t0,
    );
    steps.step(
        "endpoints removed",
        vec![slice(multi_slice("v4", &["10.244.1.11"]))],
        t0,
    );
    steps.step(
        "no endpoints left",
        vec![slice(multi_slice("v4", &[])), slice(multi_slice("v6", &[]))],
        t0,
    );
    // Adjacent ranges (nft merges them into one interval), a non-byte-aligned one, and IPv6.
    let ranges = [
        "10.0.0.0/9",
        "10.128.0.0/9",
        "203.0.113.0/25",
        "2001:db8:2::/48",
        "2001:db8:3::/64",
    ];
    let mut lb = vec![service(balancer(&ranges, true))];
    lb.extend(balancer_slices());
    steps.step("a load balancer with every feature", lb, t0);
    steps.step(
        "one source range per family, no affinity",
        vec![service(balancer(
            &["192.0.2.0/24", "2001:db8:2::/56"],
            false,
        ))],
        t0,
    );
    steps.step(
        "a service deleted",
        vec![Change::Delete(ObjectId::Service {
            namespace: "diff".into(),
            name: "multi".into(),
        })],
        t0,
    );
    steps.step("stale chains deleted", Vec::new(), later(5));
    steps.reconciler.handle(local_addresses(&FINAL_ADDRESSES));
    steps.step("local addresses changed", Vec::new(), later(5));
    // More elements than one message holds.
    steps.step("400 services at once", bulk(0, 400), later(5));
    steps.step(
        "300 services deleted at once",
        bulk_deletes(50, 300),
        later(5),
    );
    steps.step("stale chains deleted again", Vec::new(), later(10));
    steps.history
}

/// A new reconciler over fresh backends, given the same objects: one sync, after adoption.
fn restart(pair: Pair, history: Vec<Change>) -> (SyncOutcome, Vec<usize>) {
    let applied = pair.applied.clone();
    let mut r = reconciler(pair);
    r.handle(local_addresses(&FINAL_ADDRESSES));
    r.handle(Event::Changes(history));
    let outcome = r.sync(Instant::now());
    let writes = applied.lock().map(|a| a.clone()).unwrap_or_default();
    (outcome, writes)
}

#[test]
fn nft_and_netlink_program_identical_tables() {
    require_root();
    let nft_ns = Netns::unique("dnft");
    let netlink_ns = Netns::unique("dnl");
    let (a, b) = (nft_ns.name.clone(), netlink_ns.name.clone());
    let history = with_backends(&a, &b, {
        let (a, b) = (a.clone(), b.clone());
        move |pair| changes_of_every_kind(pair, a, b)
    });

    // Restart adoption: both kernels are read (and must read alike); nothing is written.
    let again = history.clone();
    let (outcome, writes) = with_backends(&a, &b, move |pair| restart(pair, again));
    assert_eq!(outcome, SyncOutcome::Unchanged, "writes: {writes:?}");
    assert!(writes.is_empty());

    // Someone edits our tables: a chain of their own and a rule in one of ours.
    for ns in [&nft_ns, &netlink_ns] {
        ns.exec(&["nft", "add", "chain", "ip", "kube-nft-proxy", "intruder"])
            .expect("add chain");
        ns.exec(&[
            "nft",
            "insert",
            "rule",
            "ip6",
            "kube-nft-proxy",
            "services",
            "counter",
        ])
        .expect("insert rule");
    }
    let (outcome, _) = with_backends(&a, &b, move |pair| restart(pair, history));
    assert!(
        matches!(outcome, SyncOutcome::Applied { .. }),
        "{outcome:?}"
    );
    assert_same(&a, &b, "after repairing a tampered table");
    let listed = nft_ns
        .exec(&["nft", "list", "ruleset"])
        .expect("list ruleset");
    assert!(
        !listed.contains("intruder") && !listed.contains("counter"),
        "{listed}"
    );

    // Both delete their tables.
    let deleted = with_backends(&a, &b, |mut pair| pair.delete_tables().expect("delete"));
    assert_eq!(deleted, 2);
    assert_eq!(listing(&a, "ip"), Value::Null);
    assert_eq!(listing(&b, "ip6"), Value::Null);
}

#[test]
fn a_refused_batch_names_the_object_and_changes_nothing() {
    use kube_nft_proxy::diff::Op;
    use kube_nft_proxy::model::Family;
    use kube_nft_proxy::ruleset::ChainName;

    require_root();
    let ns = Netns::unique("nlerr");
    let name = ns.name.clone();
    let (result, tables, later) = with_backends(&name, &name, |mut pair| {
        let chain = |n: &str| ChainName::new(n).expect("chain name");
        let tx = Transaction {
            ops: vec![
                Op::AddTable(Family::V4),
                Op::AddChain(Family::V4, chain("kept-out"), None),
                Op::DeleteChain(Family::V4, chain("no-such-chain")),
            ],
        };
        let refused = pair.netlink.apply(&tx);
        // This thread is in the namespace: nft lists it.
        let tables = run(&["nft", "list", "tables"]).expect("list tables");
        let later = pair.netlink.apply(&Transaction {
            ops: vec![Op::AddTable(Family::V6)],
        });
        (refused, tables, later)
    });
    let err = result.expect_err("deleting a missing chain fails");
    // The refused operation is named by its index, so its owner can be isolated.
    assert!(
        matches!(&err, BackendError::Rejected { ops, .. } if ops == &[2]),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(err.contains("delete chain no-such-chain"), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
    // The validation reset after the refusal leaves nothing behind; the next batch commits.
    assert!(tables.trim().is_empty(), "{tables}");
    later.expect("a later transaction commits");
    assert_ne!(listing(&name, "ip6"), Value::Null);
}
