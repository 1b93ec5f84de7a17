//! The sync loop against an in-memory kernel: what each sync sends, and how failures, stale
//! chains and restarts are handled.

use std::sync::{Arc, Mutex};

use super::*;
use crate::backend::BackendError;
use crate::diff::Op;
use crate::fixtures::{ServiceBuilder, SliceBuilder};
use crate::model::{Cidr, Object, ObjectId};
use crate::plan::NodePortAddresses;
use crate::state::Change;

/// A kernel held in memory; shared so a "restarted" reconciler sees the same one.
#[derive(Default)]
struct FakeKernel {
    state: KernelState,
    transactions: Vec<Transaction>,
    reads: usize,
    fail_next: bool,
    /// Refuse (naming the operations) rules of chains whose name contains this.
    refuse_rules_in: Option<String>,
}

#[derive(Clone, Default)]
struct FakeBackend(Arc<Mutex<FakeKernel>>);

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn apply(&mut self, tx: &Transaction) -> Result<(), BackendError> {
        let mut k = self.0.lock().unwrap();
        if std::mem::take(&mut k.fail_next) {
            return Err(BackendError::Refused("injected failure".into()));
        }
        if let Some(pattern) = k.refuse_rules_in.clone() {
            let ops: Vec<usize> = tx
                .ops
                .iter()
                .enumerate()
                .filter(|(_, op)| matches!(op, Op::AddRules(_, name, _) if name.as_str().contains(&pattern)))
                .map(|(i, _)| i)
                .collect();
            if !ops.is_empty() {
                return Err(BackendError::Rejected {
                    message: "injected refusal".into(),
                    ops,
                });
            }
        }
        k.state.apply(tx);
        k.transactions.push(tx.clone());
        Ok(())
    }

    fn read(&mut self) -> Result<KernelState, BackendError> {
        let mut k = self.0.lock().unwrap();
        k.reads += 1;
        Ok(k.state.clone())
    }

    fn delete_tables(&mut self) -> Result<usize, BackendError> {
        Ok(0)
    }
}

fn settings() -> NodeSettings {
    NodeSettings {
        cluster_cidrs: [Cidr::parse("10.0.0.0/8").ok(), None],
        masquerade_all: false,
        ..NodeSettings::new("node1")
    }
}

fn reconciler(backend: &FakeBackend) -> Reconciler {
    Reconciler::new(
        Timing::default(),
        settings(),
        NodePortAddresses::Primary,
        Box::new(backend.clone()),
        Metrics::new().unwrap(),
    )
    .unwrap()
}

fn service(name: &str, ip: &str) -> Change {
    Change::Upsert(Object::Service(
        ServiceBuilder::new("ns", name)
            .cluster_ip(ip)
            .port("http", 80, "TCP")
            .model()
            .unwrap(),
    ))
}

fn slice(service: &str, endpoints: &[&str]) -> Change {
    let mut b =
        SliceBuilder::new("ns", &format!("{service}-1"), service, "IPv4").port("http", 8080, "TCP");
    for ep in endpoints {
        b = b.endpoint(ep, "node1");
    }
    Change::Upsert(Object::EndpointSlice(b.model().unwrap()))
}

fn started(backend: &FakeBackend, changes: Vec<Change>) -> Reconciler {
    let mut r = reconciler(backend);
    r.handle(Event::Changes(changes));
    r.handle(Event::Synced);
    assert!(matches!(
        r.sync(Instant::now()),
        SyncOutcome::Applied { .. }
    ));
    r
}

fn last_tx(backend: &FakeBackend) -> Transaction {
    backend
        .0
        .lock()
        .unwrap()
        .transactions
        .last()
        .cloned()
        .unwrap()
}

fn tx_count(backend: &FakeBackend) -> usize {
    backend.0.lock().unwrap().transactions.len()
}

/// The ops of a transaction as short strings, for readable assertions.
fn describe(tx: &Transaction) -> Vec<String> {
    tx.ops
        .iter()
        .map(|op| match op {
            Op::AddTable(f) => format!("add table {}", f.nft_name()),
            Op::DeleteTable(f) => format!("delete table {}", f.nft_name()),
            Op::AddSet(_, n, _) => format!("add set {n}"),
            Op::FlushSet(_, n) => format!("flush set {n}"),
            Op::DeleteSet(_, n) => format!("delete set {n}"),
            Op::AddChain(_, n, _) => format!("add chain {n}"),
            Op::FlushChain(_, n) => format!("flush chain {n}"),
            Op::DeleteChain(_, n) => format!("delete chain {n}"),
            Op::AddRules(_, n, c) => format!("add {} rules {n}", c.rules.len()),
            Op::AddElements(_, s, e) => format!("add {} elements {s}", e.len()),
            Op::DeleteElements(_, s, e) => format!("delete {} elements {s}", e.len()),
        })
        .collect()
}

#[test]
fn nothing_is_programmed_before_the_source_is_synced() {
    let backend = FakeBackend::default();
    let mut r = reconciler(&backend);
    r.handle(Event::Changes(vec![service("a", "10.96.0.1")]));
    assert!(r.next_deadline().is_none());
    r.handle(Event::Synced);
    assert!(r.next_deadline().is_some());
}

#[test]
fn the_first_sync_builds_both_tables_and_a_sync_without_change_sends_nothing() {
    let backend = FakeBackend::default();
    let mut r = started(
        &backend,
        vec![service("a", "10.96.0.1"), slice("a", &["10.0.1.1"])],
    );
    let first = describe(&last_tx(&backend));
    assert_eq!(
        first.iter().filter(|o| o.starts_with("add table")).count(),
        2
    );
    assert!(first.contains(&"add chain service-ns/a/tcp/http".to_string()));
    assert!(r.next_deadline().is_none(), "nothing left to do");
    assert_eq!(r.sync(Instant::now()), SyncOutcome::Unchanged);
    assert_eq!(tx_count(&backend), 1);
}

#[test]
fn an_endpoint_change_rewrites_only_that_service() {
    let backend = FakeBackend::default();
    let mut r = started(
        &backend,
        vec![
            service("a", "10.96.0.1"),
            slice("a", &["10.0.1.1"]),
            service("b", "10.96.0.2"),
            slice("b", &["10.0.2.1"]),
        ],
    );
    // A second endpoint: the random choice is now among 2 (the DNAT rule changes).
    r.handle(Event::Changes(vec![slice("a", &["10.0.1.1", "10.0.1.2"])]));
    assert_eq!(
        r.sync(Instant::now()),
        SyncOutcome::Applied { operations: 5 }
    );
    assert_eq!(
        describe(&last_tx(&backend)),
        [
            "flush chain service-ns/a/tcp/http",
            "add 2 rules service-ns/a/tcp/http",
            "add 1 elements cluster-endpoints-30",
            "add 1 elements hairpin",
        ]
    );
    // Another endpoint in its place: only map elements change, no rule.
    r.handle(Event::Changes(vec![slice("a", &["10.0.1.1", "10.0.1.3"])]));
    r.sync(Instant::now());
    assert_eq!(
        describe(&last_tx(&backend)),
        [
            "delete 1 elements cluster-endpoints-30",
            "delete 1 elements hairpin",
            "add 1 elements cluster-endpoints-30",
            "add 1 elements hairpin",
        ]
    );
}

#[test]
fn a_deleted_service_is_flushed_now_and_its_chains_deleted_after_the_delay() {
    let backend = FakeBackend::default();
    let mut r = started(
        &backend,
        vec![service("a", "10.96.0.1"), slice("a", &["10.0.1.1"])],
    );
    r.handle(Event::Changes(vec![Change::Delete(ObjectId::Service {
        namespace: "ns".into(),
        name: "a".into(),
    })]));
    let t0 = Instant::now();
    r.sync(t0);
    let ops = describe(&last_tx(&backend));
    assert_eq!(
        ops,
        [
            "flush chain service-ns/a/tcp/http",
            "delete 1 elements cluster-ips",
            "delete 1 elements hairpin",
            "delete 1 elements service-ips",
            "delete set cluster-endpoints-30",
        ]
    );
    // Not yet due.
    assert_eq!(
        r.sync(t0 + Duration::from_millis(100)),
        SyncOutcome::Unchanged
    );
    assert!(r.next_deadline().is_some());
    r.sync(t0 + Duration::from_secs(2));
    assert_eq!(
        describe(&last_tx(&backend)),
        ["delete chain service-ns/a/tcp/http"]
    );
    assert!(r.next_deadline().is_none());
}

#[test]
fn a_failed_transaction_is_retried_as_a_full_sync_that_rereads_the_kernel() {
    let backend = FakeBackend::default();
    let mut r = started(
        &backend,
        vec![service("a", "10.96.0.1"), slice("a", &["10.0.1.1"])],
    );
    assert_eq!(backend.0.lock().unwrap().reads, 1);
    backend.0.lock().unwrap().fail_next = true;
    r.handle(Event::Changes(vec![slice("a", &["10.0.1.1", "10.0.1.2"])]));
    assert_eq!(r.sync(Instant::now()), SyncOutcome::Failed);
    let retry = r.next_deadline().unwrap();
    assert!(retry > Instant::now(), "retries after a backoff");
    assert!(matches!(r.sync(retry), SyncOutcome::Applied { .. }));
    assert_eq!(
        backend.0.lock().unwrap().reads,
        2,
        "the retry read the kernel again"
    );
    assert!(
        describe(&last_tx(&backend)).contains(&"add 2 rules service-ns/a/tcp/http".to_string())
    );
}

#[test]
fn a_restarted_proxy_adopts_the_kernel_without_writing() {
    let backend = FakeBackend::default();
    let objects = vec![
        service("a", "10.96.0.1"),
        slice("a", &["10.0.1.1"]),
        service("b", "10.96.0.2"),
    ];
    started(&backend, objects.clone());
    let mut restarted = reconciler(&backend);
    restarted.handle(Event::Changes(objects));
    restarted.handle(Event::Synced);
    assert_eq!(restarted.sync(Instant::now()), SyncOutcome::Unchanged);
    assert_eq!(tx_count(&backend), 1);
}

#[test]
fn a_restarted_proxy_fixes_only_what_changed_while_it_was_down() {
    let backend = FakeBackend::default();
    started(
        &backend,
        vec![service("a", "10.96.0.1"), slice("a", &["10.0.1.1"])],
    );
    let mut restarted = reconciler(&backend);
    restarted.handle(Event::Changes(vec![
        service("a", "10.96.0.1"),
        slice("a", &["10.0.1.9"]),
    ]));
    restarted.handle(Event::Synced);
    restarted.sync(Instant::now());
    assert_eq!(
        describe(&last_tx(&backend)),
        [
            "delete 1 elements cluster-endpoints-30",
            "delete 1 elements hairpin",
            "add 1 elements cluster-endpoints-30",
            "add 1 elements hairpin",
        ]
    );
}

#[test]
fn a_cluster_ip_wanted_by_two_services_goes_to_the_first() {
    let backend = FakeBackend::default();
    let metrics = Metrics::new().unwrap();
    let mut r = Reconciler::new(
        Timing::default(),
        settings(),
        NodePortAddresses::Primary,
        Box::new(backend.clone()),
        metrics.clone(),
    )
    .unwrap();
    r.handle(Event::Changes(vec![
        service("b", "10.96.0.1"),
        slice("b", &["10.0.2.1"]),
        service("a", "10.96.0.1"),
        slice("a", &["10.0.1.1"]),
    ]));
    r.handle(Event::Synced);
    r.sync(Instant::now());
    assert_eq!(metrics.conflicts.get(), 1);
    let k = backend.0.lock().unwrap();
    let table = k.state.table(Family::V4).unwrap();
    let map = &table.sets[&crate::ruleset::SetName::new("service-ips").unwrap()];
    let verdict = map
        .elements
        .values()
        .next()
        .unwrap()
        .verdict()
        .unwrap()
        .to_string();
    assert_eq!(verdict, "goto service-ns/a/tcp/http");
}

#[test]
fn a_failing_stale_chain_deletion_is_counted_retried_later_and_blocks_nothing() {
    let backend = FakeBackend::default();
    let mut r = started(
        &backend,
        vec![service("a", "10.96.0.1"), slice("a", &["10.0.1.1"])],
    );
    r.handle(Event::Changes(vec![Change::Delete(ObjectId::Service {
        namespace: "ns".into(),
        name: "a".into(),
    })]));
    let t0 = Instant::now();
    r.sync(t0);
    let sent = tx_count(&backend);
    backend.0.lock().unwrap().fail_next = true;
    // The deletion is its own transaction: its failure is not a sync failure.
    assert_eq!(r.sync(t0 + Duration::from_secs(2)), SyncOutcome::Unchanged);
    assert_eq!(
        tx_count(&backend),
        sent,
        "the refused deletion changed nothing"
    );
    let failures = |f: &str| r.metrics.cleanup_failures.with_label_values(&[f]).get();
    assert_eq!(failures("IPv4"), 1);
    assert_eq!(
        r.metrics.sync_failures.with_label_values(&["IPv4"]).get(),
        0
    );
    assert_eq!(
        backend.0.lock().unwrap().reads,
        1,
        "no re-read: the mirror is right"
    );
    // Other changes go on at once.
    r.handle(Event::Changes(vec![
        service("b", "10.96.0.2"),
        slice("b", &["10.0.1.2"]),
    ]));
    assert!(matches!(
        r.sync(t0 + Duration::from_secs(3)),
        SyncOutcome::Applied { .. }
    ));
    assert!(
        !describe(&last_tx(&backend)).contains(&"delete chain service-ns/a/tcp/http".to_string()),
        "the deletion waits for the sync period"
    );
    // After the sync period (30 s) plus the delay it is retried, and succeeds.
    r.sync(t0 + Duration::from_secs(35));
    assert_eq!(
        describe(&last_tx(&backend)),
        ["delete chain service-ns/a/tcp/http"]
    );
}

#[test]
fn metrics_follow_changes_and_syncs() {
    let backend = FakeBackend::default();
    let mut r = started(
        &backend,
        vec![service("a", "10.96.0.1"), slice("a", &["10.0.1.1"])],
    );
    let m = r.metrics.clone();
    let v4 = ["IPv4"];
    assert_eq!(
        m.sync_full_duration
            .with_label_values(&v4)
            .get_sample_count(),
        1
    );
    assert_eq!(m.service_changes_total.get(), 1);
    assert_eq!(m.endpoint_changes_total.get(), 1);
    assert!(m.last_sync_timestamp.with_label_values(&v4).get() > 0.0);

    // An EndpointSlice change triggered a second ago.
    let triggered = SystemTime::now() - Duration::from_secs(1);
    let stamp = crate::http::rfc3339(triggered);
    let changed = SliceBuilder::new("ns", "a-1", "a", "IPv4")
        .port("http", 8080, "TCP")
        .endpoint("10.0.1.1", "node1")
        .endpoint("10.0.1.2", "node1")
        .with(
            "/metadata/annotations/endpoints.kubernetes.io~1last-change-trigger-time",
            stamp,
        )
        .model()
        .unwrap();
    assert!(changed.trigger_time.is_some());
    // A trigger from before the proxy started is not its latency; this one is after.
    r.started_at = triggered - Duration::from_secs(1);
    r.handle(Event::Changes(vec![Change::Upsert(Object::EndpointSlice(
        changed,
    ))]));
    assert_eq!(m.endpoint_changes_pending.get(), 1);
    assert_eq!(m.service_changes_pending.get(), 0);
    assert!(m.last_queued_timestamp.with_label_values(&v4).get() > 0.0);
    assert!(matches!(
        r.sync(Instant::now()),
        SyncOutcome::Applied { .. }
    ));
    assert_eq!(m.endpoint_changes_pending.get(), 0);
    assert_eq!(m.endpoint_changes_total.get(), 2);
    assert_eq!(
        m.sync_partial_duration
            .with_label_values(&v4)
            .get_sample_count(),
        1
    );
    let latency = m.network_programming_duration.with_label_values(&v4);
    assert_eq!(latency.get_sample_count(), 1);
    assert!(
        latency.get_sample_sum() >= 1.0,
        "measured from the trigger time"
    );

    // A failed transaction counts for both families.
    backend.0.lock().unwrap().fail_next = true;
    r.handle(Event::Changes(vec![slice("a", &["10.0.1.3"])]));
    assert_eq!(r.sync(Instant::now()), SyncOutcome::Failed);
    assert_eq!(m.sync_failures.with_label_values(&["IPv4"]).get(), 1);
    assert_eq!(m.sync_failures.with_label_values(&["IPv6"]).get(), 1);
}

#[test]
fn local_policy_without_local_endpoints_is_counted_and_a_terminating_node_is_reported() {
    let backend = FakeBackend::default();
    let local = Change::Upsert(Object::Service(
        ServiceBuilder::new("ns", "l")
            .cluster_ip("10.96.0.9")
            .port("http", 80, "TCP")
            .with("/spec/internalTrafficPolicy", "Local")
            .model()
            .unwrap(),
    ));
    let elsewhere = Change::Upsert(Object::EndpointSlice(
        SliceBuilder::new("ns", "l-1", "l", "IPv4")
            .port("http", 8080, "TCP")
            .endpoint("10.0.2.1", "node2")
            .model()
            .unwrap(),
    ));
    let r = started(&backend, vec![local, elsewhere]);
    let gauge = |p: &str, f: &str| {
        r.metrics
            .no_local_endpoints
            .with_label_values(&[p, f])
            .get()
    };
    assert_eq!(gauge("internal", "IPv4"), 1);
    assert_eq!(gauge("external", "IPv4"), 0);
    assert_eq!(gauge("internal", "IPv6"), 0);

    let mut r = r;
    let node = crate::fixtures::NodeBuilder::new("node1")
        .with(
            "/spec/taints",
            serde_json::json!([{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]),
        )
        .model()
        .unwrap();
    assert!(node.terminating);
    r.handle(Event::Changes(vec![Change::Upsert(Object::Node(node))]));
    assert!(r.status().lock().unwrap().node_terminating);
}

#[test]
fn a_service_the_kernel_refuses_is_isolated_and_the_rest_programmed() {
    let backend = FakeBackend::default();
    backend.0.lock().unwrap().refuse_rules_in = Some("ns/bad/".into());
    let mut r = reconciler(&backend);
    r.handle(Event::Changes(vec![
        service("bad", "10.96.0.1"),
        slice("bad", &["10.0.1.1"]),
        service("good", "10.96.0.2"),
        slice("good", &["10.0.1.2"]),
    ]));
    r.handle(Event::Synced);
    let t0 = Instant::now();
    assert_eq!(r.sync(t0), SyncOutcome::Failed);
    assert_eq!(
        tx_count(&backend),
        0,
        "the refused transaction changed nothing"
    );
    assert_eq!(r.metrics.quarantined.get(), 1);
    // At once, without backoff, and without reading the kernel again.
    assert!(r.next_deadline().is_some_and(|d| d <= Instant::now()));
    assert!(matches!(r.sync(t0), SyncOutcome::Applied { .. }));
    let programmed = describe(&last_tx(&backend));
    assert!(
        programmed.contains(&"add 2 rules service-ns/good/tcp/http".to_string()),
        "{programmed:?}"
    );
    assert!(
        !programmed.iter().any(|op| op.contains("ns/bad/")),
        "{programmed:?}"
    );
    assert_eq!(backend.0.lock().unwrap().reads, 1);

    // A change to the quarantined Service tries it again (and it is refused again).
    r.handle(Event::Changes(vec![slice(
        "bad",
        &["10.0.1.1", "10.0.1.3"],
    )]));
    assert_eq!(r.sync(t0 + Duration::from_secs(2)), SyncOutcome::Failed);
    assert_eq!(r.metrics.quarantined.get(), 1);
    assert!(matches!(
        r.sync(t0 + Duration::from_secs(2)),
        SyncOutcome::Unchanged | SyncOutcome::Applied { .. }
    ));

    // The kernel accepts it later (a module was loaded): the periodic retry programs it.
    backend.0.lock().unwrap().refuse_rules_in = None;
    let retry = t0 + quarantine::RETRY + Duration::from_secs(3);
    assert!(matches!(r.sync(retry), SyncOutcome::Applied { .. }));
    assert!(
        describe(&last_tx(&backend)).contains(&"add 2 rules service-ns/bad/tcp/http".to_string())
    );
    assert_eq!(r.metrics.quarantined.get(), 0);
}

#[test]
fn a_refusal_of_the_base_ruleset_isolates_nothing() {
    let backend = FakeBackend::default();
    backend.0.lock().unwrap().refuse_rules_in = Some("services".into());
    let mut r = reconciler(&backend);
    r.handle(Event::Changes(vec![
        service("a", "10.96.0.1"),
        slice("a", &["10.0.1.1"]),
    ]));
    r.handle(Event::Synced);
    assert_eq!(r.sync(Instant::now()), SyncOutcome::Failed);
    assert_eq!(r.metrics.quarantined.get(), 0);
    assert!(
        r.next_deadline().is_some_and(|d| d > Instant::now()),
        "a normal backoff"
    );
}

#[test]
fn damage_others_do_is_repaired_without_reading_the_kernel_when_the_notice_says_what() {
    use crate::source::kernel_changes::Damage;
    let backend = FakeBackend::default();
    let mut r = started(
        &backend,
        vec![service("a", "10.96.0.1"), slice("a", &["10.0.1.1"])],
    );
    r.handle(Event::KernelChanged(vec![(
        Family::V4,
        Damage::ChainChanged("services".into()),
    )]));
    assert!(
        r.next_deadline().is_some_and(|d| d <= Instant::now()),
        "at once"
    );
    assert!(matches!(
        r.sync(Instant::now()),
        SyncOutcome::Applied { .. }
    ));
    assert_eq!(
        describe(&last_tx(&backend)),
        ["flush chain services", "add 2 rules services"]
    );
    r.handle(Event::KernelChanged(vec![(
        Family::V6,
        Damage::TableDeleted,
    )]));
    assert!(
        r.next_deadline().is_some_and(|d| d <= Instant::now()),
        "a rebuild is due at once"
    );
    assert!(matches!(
        r.sync(Instant::now()),
        SyncOutcome::Applied { .. }
    ));
    let rebuilt = describe(&last_tx(&backend));
    assert_eq!(rebuilt[0], "add table ip6");
    assert!(
        rebuilt.iter().all(|op| !op.contains("table ip ")),
        "{rebuilt:?}"
    );
    assert_eq!(backend.0.lock().unwrap().reads, 1, "nothing read");
    assert_eq!(
        r.metrics
            .external_changes
            .with_label_values(&["IPv6"])
            .get(),
        1
    );

    r.handle(Event::KernelChanged(vec![(Family::V4, Damage::Other)]));
    r.sync(Instant::now());
    assert_eq!(
        backend.0.lock().unwrap().reads,
        2,
        "anything else: read again"
    );
}
