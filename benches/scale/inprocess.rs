//! Latencies measured on the real reconciler and backend, driven in-process inside a fresh
//! network namespace: each measurement runs from handing the event to the reconciler until the
//! sync returns, that is until the kernel acknowledged the batch.

use std::time::{Duration, Instant};

use kube_nft_proxy::backend::Backend;
use kube_nft_proxy::backend::netlink::NetlinkBackend;
use kube_nft_proxy::backend::nft::NftBackend;
use kube_nft_proxy::metrics::Metrics;
use kube_nft_proxy::model::Cidr;
use kube_nft_proxy::plan::{NodePortAddresses, NodeSettings};
use kube_nft_proxy::reconciler::{Reconciler, SyncOutcome, Timing};
use kube_nft_proxy::render::templates::Templates;
use kube_nft_proxy::source::Event;
use kube_nft_proxy::state::Change;

use crate::netns::{self, Netns};
use crate::workload;

/// What one in-process run measured (milliseconds).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latencies {
    pub cold_start_ms: f64,
    pub cold_start_objects: usize,
    pub endpoint_change_ms: Vec<f64>,
    pub add_service_ms: Vec<f64>,
    pub delete_service_ms: Vec<f64>,
    pub adoption_ms: f64,
    /// Kernel objects the restarted reconciler wrote (must be 0).
    pub adoption_writes: usize,
}

/// A small deterministic generator (xorshift64*), so runs pick the same Services.
pub struct Random(u64);

impl Random {
    pub fn new(seed: u64) -> Random {
        Random(seed.max(1))
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

fn backend(kind: &str) -> Box<dyn Backend> {
    match kind {
        "nft" => Box::new(NftBackend::default()),
        _ => Box::new(
            NetlinkBackend::new(Templates::bundled().expect("templates")).expect("netlink"),
        ),
    }
}

fn reconciler(kind: &str) -> Reconciler {
    let node = NodeSettings {
        cluster_cidrs: [Cidr::parse("10.0.0.0/8").ok(), None],
        ..NodeSettings::new(workload::NODE)
    };
    let mut r = Reconciler::new(
        Timing {
            min_sync_period: Duration::ZERO,
            ..Timing::default()
        },
        node,
        NodePortAddresses::Primary,
        backend(kind),
        Metrics::new().expect("metrics"),
    )
    .expect("reconciler");
    r.handle(Event::Synced);
    r.handle(Event::LocalAddresses(vec![
        "192.168.0.10".parse().expect("ip"),
    ]));
    r
}

/// Milliseconds from handing `changes` over until the sync returned.
fn timed(r: &mut Reconciler, changes: Vec<Change>, what: &str) -> (f64, SyncOutcome) {
    let start = Instant::now();
    r.handle(Event::Changes(changes));
    let outcome = r.sync(Instant::now());
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    assert_ne!(outcome, SyncOutcome::Failed, "{what} failed");
    (ms, outcome)
}

/// Runs every measurement for `n` Services with `kind` ("netlink" or "nft") in `netns`.
pub fn measure(
    netns: &Netns,
    kind: &'static str,
    n: usize,
    changes: usize,
    seed: u64,
) -> Latencies {
    let path = netns.path();
    std::thread::spawn(move || {
        netns::enter(&path);
        let mut random = Random::new(seed);
        let everything = workload::all(n);
        let mut r = reconciler(kind);
        let (cold_start_ms, outcome) = timed(&mut r, everything.clone(), "cold start");
        let cold_start_objects = match outcome {
            SyncOutcome::Applied { operations } => operations,
            _ => 0,
        };
        let mut endpoint_change_ms = Vec::with_capacity(changes);
        for generation in 1..=changes {
            let i = random.below(n);
            let (ms, _) = timed(
                &mut r,
                workload::endpoint_change(i, generation),
                "endpoint change",
            );
            endpoint_change_ms.push(ms);
        }
        let reps = changes.clamp(1, 20);
        let mut add_service_ms = Vec::with_capacity(reps);
        let mut delete_service_ms = Vec::with_capacity(reps);
        for k in 0..reps {
            let (ms, _) = timed(&mut r, workload::add(n + k), "add service");
            add_service_ms.push(ms);
        }
        for k in 0..reps {
            let (ms, _) = timed(&mut r, workload::delete(n + k), "delete service");
            delete_service_ms.push(ms);
        }
        // Let the deleted Services' chains be removed, then restart with the same objects.
        std::thread::sleep(Duration::from_millis(1100));
        let _ = r.sync(Instant::now());
        // The restarted reconciler gets the same objects: the endpoint changes replayed.
        let mut state: Vec<Change> = everything;
        let mut replay = Random::new(seed);
        for generation in 1..=changes {
            state.extend(workload::endpoint_change(replay.below(n), generation));
        }
        drop(r);
        let mut restarted = reconciler(kind);
        let start = Instant::now();
        restarted.handle(Event::Changes(state));
        let outcome = restarted.sync(Instant::now());
        let adoption_ms = start.elapsed().as_secs_f64() * 1000.0;
        let adoption_writes = match outcome {
            SyncOutcome::Applied { operations } => operations,
            SyncOutcome::Unchanged => 0,
            SyncOutcome::Failed => panic!("adoption failed"),
        };
        Latencies {
            cold_start_ms,
            cold_start_objects,
            endpoint_change_ms,
            add_service_ms,
            delete_service_ms,
            adoption_ms,
            adoption_writes,
        }
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}
