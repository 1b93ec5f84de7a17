//! The sync loop: applies source events to the state, and when something changed (at most once
//! per min-sync-period) plans and renders the changed Services, diffs them against the kernel
//! mirror and applies the transaction. A failed transaction changes nothing; the next attempt
//! (with backoff) re-reads the kernel and does a full diff. Chains that are no longer needed are
//! flushed at once and deleted after a delay.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};

use tokio::sync::watch;

use crate::backend::{Backend, BackendError};
use crate::conntrack::{self, FlowCleaner, UdpTarget};
use crate::diff::{Scope, Transaction, diff};
use crate::events::{EventSink, Warning};
use crate::health_check::{HealthChecks, ServiceHealth};
use crate::metrics::{Metrics, family_label};
use crate::model::{Family, Object, ObjectId, ServiceKey};
use crate::plan::{
    NoEndpoints, NodePortAddresses, NodeSettings, plan_service, resolve_node_addresses,
};
use crate::render::{RenderError, Renderer};
use crate::ruleset::desired::{Conflict, Item, Owner, Untracked};
use crate::ruleset::kernel::ChainContent;
use crate::ruleset::{ChainName, KernelState, ObjectRef, Ruleset};
use crate::source::Event;
use crate::source::kernel_changes::Damage;
use crate::state::{Change, State};
use quarantine::{Quarantine, culprits};

/// Timing of the loop.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Least time between the end of one sync and the start of the next.
    pub min_sync_period: Duration,
    /// Longest retry backoff after a failed sync (also the health timeout is twice this).
    pub sync_period: Duration,
    /// How long a flushed chain waits before it is deleted.
    pub stale_chain_delay: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            stale_chain_delay: Duration::from_secs(1),
        }
    }
}

/// Sync progress shared with the health endpoints.
#[derive(Clone, Debug, Default)]
pub struct SyncStatus {
    /// When changes became pending that are not applied yet.
    pub queued_since: Option<SystemTime>,
    /// End of the last successful sync.
    pub last_updated: Option<SystemTime>,
    /// This node is being deleted or drained by the cluster autoscaler (`/healthz` fails so load
    /// balancers move away).
    pub node_terminating: bool,
}

/// The result of one sync.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Nothing differed; nothing was sent.
    Unchanged,
    /// A transaction of this many kernel objects was applied.
    Applied { operations: usize },
    /// The backend failed; nothing changed in the kernel.
    Failed,
}

/// Owns the state, the desired ruleset, the kernel mirror and the backend.
pub struct Reconciler {
    timing: Timing,
    settings: NodeSettings,
    nodeport_addresses: NodePortAddresses,
    local_addresses: Vec<std::net::IpAddr>,
    state: State,
    renderer: Renderer,
    desired: Ruleset,
    /// `None`: unknown, read it before the next diff.
    kernel: Option<KernelState>,
    backend: Box<dyn Backend>,
    metrics: Metrics,
    status: Arc<Mutex<SyncStatus>>,
    /// Objects touched by changes not yet applied.
    touched: BTreeSet<ObjectRef>,
    /// Next sync must diff everything (start-up, after a failure).
    full: bool,
    /// The base ruleset and every Service must be rendered again (start-up, node change).
    rerender_all: bool,
    stale: BTreeMap<(Family, ChainName), Instant>,
    source_synced: bool,
    /// UDP service ports whose stale flows are cleaned after the next successful sync.
    pending_flows: Vec<UdpTarget>,
    flow_cleaner: Option<Box<dyn FlowCleaner>>,
    /// healthCheckNodePort per Service, and where to publish them.
    health_checks: BTreeMap<ServiceKey, (u16, ServiceHealth)>,
    health_check_tx: Option<watch::Sender<HealthChecks>>,
    last_sync_end: Option<Instant>,
    failures: u32,
    retry_at: Option<Instant>,
    /// Where Warnings about Services we cannot program go.
    warnings: EventSink,
    /// Earliest EndpointSlice change trigger time per Service and family not yet programmed.
    trigger_times: HashMap<(ServiceKey, Family), SystemTime>,
    /// Trigger times before this are from before the proxy started (not its latency).
    started_at: SystemTime,
    /// Per Service: ports with a Local policy and no local endpoint, `[policy][family]`.
    no_local: HashMap<ServiceKey, NoLocal>,
    /// Someone else changed our tables: restore them without waiting for min-sync-period.
    urgent: bool,
    /// Services the kernel refused, left out so the rest can be programmed.
    quarantine: Quarantine,
    /// Services to render again at the next sync although their objects did not change.
    rerender: BTreeSet<ServiceKey>,
}

/// Service ports with a Local traffic policy and endpoints elsewhere but none here, by
/// `[internal, external][family]` (`kubeproxy_sync_proxy_rules_no_local_endpoints_total`).
type NoLocal = [[i64; 2]; 2];

impl Reconciler {
    pub fn new(
        timing: Timing,
        settings: NodeSettings,
        nodeport_addresses: NodePortAddresses,
        backend: Box<dyn Backend>,
        metrics: Metrics,
    ) -> Result<Reconciler, RenderError> {
        Ok(Reconciler {
            state: State::new(&settings.node_name),
            timing,
            settings,
            nodeport_addresses,
            local_addresses: Vec::new(),
            renderer: Renderer::new()?,
            desired: Ruleset::new(),
            kernel: None,
            backend,
            metrics,
            status: Arc::new(Mutex::new(SyncStatus::default())),
            touched: BTreeSet::new(),
            full: true,
            rerender_all: true,
            stale: BTreeMap::new(),
            source_synced: false,
            pending_flows: Vec::new(),
            flow_cleaner: None,
            health_checks: BTreeMap::new(),
            health_check_tx: None,
            last_sync_end: None,
            failures: 0,
            retry_at: None,
            warnings: EventSink::none(),
            trigger_times: HashMap::new(),
            started_at: SystemTime::now(),
            no_local: HashMap::new(),
            urgent: false,
            quarantine: Quarantine::default(),
            rerender: BTreeSet::new(),
        })
    }

    /// Sends Warning Events about Services that cannot be programmed.
    pub fn with_events(mut self, warnings: EventSink) -> Reconciler {
        self.warnings = warnings;
        self
    }

    /// Cleans stale UDP flows after syncs that changed UDP services.
    pub fn with_flow_cleaner(mut self, cleaner: Box<dyn FlowCleaner>) -> Reconciler {
        self.flow_cleaner = Some(cleaner);
        self
    }

    /// Publishes the healthCheckNodePort servers to run after each successful sync.
    pub fn with_health_checks(mut self, tx: watch::Sender<HealthChecks>) -> Reconciler {
        self.health_check_tx = Some(tx);
        self
    }

    /// The status the health endpoints read.
    pub fn status(&self) -> Arc<Mutex<SyncStatus>> {
        self.status.clone()
    }

    /// The desired ruleset (for `render` and tests).
    pub fn desired(&self) -> &Ruleset {
        &self.desired
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Applies one source event; returns false on [`Event::Shutdown`].
    pub fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Changes(changes) => {
                let mut any = false;
                for change in changes {
                    let trigger = match &change {
                        Change::Upsert(Object::EndpointSlice(s)) => {
                            s.trigger_time.map(|t| ((s.service.clone(), s.family), t))
                        }
                        _ => None,
                    };
                    let endpoints = matches!(
                        change,
                        Change::Upsert(Object::EndpointSlice(_))
                            | Change::Delete(ObjectId::EndpointSlice { .. })
                    );
                    if !self.state.apply(change) {
                        continue;
                    }
                    any = true;
                    if endpoints {
                        self.metrics.endpoint_changes_total.inc();
                    } else {
                        self.metrics.service_changes_total.inc();
                    }
                    if let Some((key, at)) = trigger.filter(|(_, at)| *at >= self.started_at) {
                        let earliest = self.trigger_times.entry(key).or_insert(at);
                        *earliest = (*earliest).min(at);
                    }
                }
                if any {
                    self.mark_queued();
                    self.set_pending_gauges();
                    let terminating = self.state.node().is_some_and(|n| n.terminating);
                    if let Ok(mut s) = self.status.lock() {
                        s.node_terminating = terminating;
                    }
                }
            }
            Event::Synced => {
                self.source_synced = true;
                self.mark_queued();
            }
            Event::LocalAddresses(mut addresses) => {
                addresses.sort();
                addresses.dedup();
                if addresses != self.local_addresses {
                    self.local_addresses = addresses;
                    self.rerender_all = true;
                    self.mark_queued();
                }
            }
            Event::KernelChanged(damage) => self.repair(damage),
            Event::Shutdown => return false,
        }
        true
    }

    /// Someone else changed our tables: fix the mirror where the notification says exactly what
    /// happened (a table deleted: rebuild it; a chain's rules changed or the chain deleted:
    /// rewrite it), otherwise read the kernel again; then sync at once.
    fn repair(&mut self, damage: Vec<(Family, Damage)>) {
        warn!(?damage, "someone else changed our tables; restoring them");
        for (family, what) in damage {
            self.metrics
                .external_changes
                .with_label_values(&[family_label(family)])
                .inc();
            let Some(kernel) = self.kernel.as_mut() else {
                continue; // read before the next sync anyway
            };
            let table = &mut kernel.tables[family.index()];
            let deleted = matches!(what, Damage::ChainDeleted(_));
            match what {
                Damage::TableDeleted => *table = None,
                Damage::ChainChanged(name) | Damage::ChainDeleted(name) => {
                    match (ChainName::new(&name), table.as_mut()) {
                        (Ok(chain), Some(t)) if t.chains.contains_key(&chain) => {
                            if deleted {
                                t.chains.remove(&chain);
                            } else if let Some(c) = t.chains.get_mut(&chain) {
                                c.content = ChainContent::Unknown;
                            }
                            self.touched.insert(ObjectRef::Chain(family, chain));
                        }
                        // A chain we do not know: read everything.
                        _ => {
                            self.kernel = None;
                            self.full = true;
                        }
                    }
                }
                Damage::Other => {
                    self.kernel = None;
                    self.full = true;
                }
            }
        }
        self.urgent = true;
        self.mark_queued();
    }

    fn mark_queued(&self) {
        let now = SystemTime::now();
        self.metrics.queued(now);
        if let Ok(mut s) = self.status.lock() {
            s.queued_since.get_or_insert(now);
        }
    }

    fn set_pending_gauges(&self) {
        let pending = self.state.pending();
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics
            .service_changes_pending
            .set(count(pending.service_count()));
        self.metrics
            .endpoint_changes_pending
            .set(count(pending.endpoint_count()));
    }

    /// Whether a sync has work to do.
    fn sync_wanted(&self) -> bool {
        self.source_synced
            && (self.state.has_changes()
                || self.full
                || self.rerender_all
                || self.kernel.is_none()
                || !self.rerender.is_empty()
                || !self.touched.is_empty()
                || self.urgent)
    }

    /// When the next sync (or stale-chain deletion) should start, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.source_synced {
            return None;
        }
        let wanted = if self.sync_wanted() {
            Some(Instant::now())
        } else {
            let stale = self
                .stale
                .values()
                .min()
                .map(|oldest| *oldest + self.timing.stale_chain_delay);
            match (stale, self.quarantine.next_retry()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        // Whatever the reason, a sync waits for min-sync-period (unless our tables are to be
        // restored) and for the retry backoff.
        let mut at = wanted?;
        if let Some(end) = self.last_sync_end
            && !self.urgent
        {
            at = at.max(end + self.timing.min_sync_period);
        }
        if let Some(retry) = self.retry_at {
            at = at.max(retry);
        }
        Some(at)
    }

    /// The transaction that creates everything from nothing (for `render`).
    pub fn transaction_from_empty(&mut self) -> Transaction {
        self.render_changes();
        diff(&KernelState::default(), &self.desired, Scope::Full, &[])
    }

    /// Renders what changed, diffs and applies. `now` decides which stale chains are due.
    pub fn sync(&mut self, now: Instant) -> SyncOutcome {
        let started = Instant::now();
        for key in self.quarantine.lift_expired(now) {
            info!(service = %key, "trying a quarantined Service again");
            self.rerender.insert(key);
        }
        self.render_changes();
        if self.kernel.is_none() {
            match self.backend.read() {
                Ok(kernel) => self.kernel = Some(kernel),
                Err(e) => {
                    warn!(error = %e, "cannot read the kernel's ruleset");
                    return self.failed(now);
                }
            }
        }
        let Some(kernel) = self.kernel.as_ref() else {
            return self.failed(now);
        };
        let scope = if self.full {
            Scope::Full
        } else {
            Scope::Objects(&self.touched)
        };
        let tx = diff(kernel, &self.desired, scope, &[]);
        let outcome = if tx.is_empty() {
            debug!("sync: nothing to change");
            SyncOutcome::Unchanged
        } else {
            let operations = tx.size();
            let sent = Instant::now();
            match self.backend.apply(&tx) {
                Ok(()) => {
                    self.metrics
                        .apply_duration
                        .observe(sent.elapsed().as_secs_f64());
                    self.committed(tx, now);
                    self.metrics.transaction_size.observe(operations as f64);
                    info!(
                        operations,
                        services = self.state.service_count(),
                        full = self.full,
                        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                        "synced rules"
                    );
                    SyncOutcome::Applied { operations }
                }
                Err(e) => {
                    warn!(error = %e, operations, "transaction refused; nothing changed");
                    if self.isolate(&tx, &e, now) {
                        return SyncOutcome::Failed;
                    }
                    return self.failed(now);
                }
            }
        };
        // Stale chains that are wanted again, or gone, are no longer stale.
        let (desired, kernel) = (&self.desired, &self.kernel);
        self.stale.retain(|(f, name), _| {
            desired.chain(*f, name).is_none() && is_empty_in_kernel(kernel.as_ref(), *f, name)
        });
        if self.full {
            self.adopt_leftover_stale_chains(now);
        }
        self.touched.clear();
        self.urgent = false;
        let full = std::mem::replace(&mut self.full, false);
        self.failures = 0;
        self.retry_at = None;
        let wall = SystemTime::now();
        self.metrics.observe_sync(started.elapsed(), full, wall);
        self.observe_programming_latency(wall);
        self.set_pending_gauges();
        self.metrics
            .services
            .set(i64::try_from(self.state.service_count()).unwrap_or(i64::MAX));
        self.set_no_local_gauges();
        if let Ok(mut s) = self.status.lock() {
            s.last_updated = Some(wall);
            if !self.state.has_changes() {
                s.queued_since = None;
            }
        }
        self.publish_health_checks();
        self.clean_flows();
        self.delete_stale_chains(now);
        self.last_sync_end = Some(Instant::now());
        outcome
    }

    /// Deletes the stale chains whose delay has passed, in a transaction of their own (as
    /// upstream): a chain that cannot be deleted (still referenced by someone else's rule) is
    /// counted in the cleanup-failure metric and retried after the sync period, and never holds
    /// up the syncs.
    fn delete_stale_chains(&mut self, now: Instant) {
        let due: Vec<(Family, ChainName)> = self
            .stale
            .iter()
            .filter(|(_, since)| {
                now.saturating_duration_since(**since) >= self.timing.stale_chain_delay
            })
            .map(|(k, _)| k.clone())
            .collect();
        let Some(kernel) = self.kernel.as_ref() else {
            return;
        };
        if due.is_empty() {
            return;
        }
        let tx = diff(
            kernel,
            &self.desired,
            Scope::Objects(&BTreeSet::new()),
            &due,
        );
        if !tx.is_empty() {
            match self.backend.apply(&tx) {
                Ok(()) => {
                    debug!(chains = tx.size(), "deleted stale chains");
                    self.committed(tx, now);
                }
                Err(e) => {
                    warn!(error = %e, chains = due.len(), "cannot delete stale chains; will retry");
                    let families: BTreeSet<Family> = due.iter().map(|(f, _)| *f).collect();
                    for family in families {
                        self.metrics
                            .cleanup_failures
                            .with_label_values(&[family_label(family)])
                            .inc();
                    }
                    for key in &due {
                        self.stale
                            .insert(key.clone(), now + self.timing.sync_period);
                    }
                    return;
                }
            }
        }
        let (desired, kernel) = (&self.desired, &self.kernel);
        self.stale.retain(|(f, name), _| {
            desired.chain(*f, name).is_none() && is_empty_in_kernel(kernel.as_ref(), *f, name)
        });
    }

    /// Observes the time from each programmed EndpointSlice change's trigger to now.
    fn observe_programming_latency(&mut self, now: SystemTime) {
        for ((_, family), at) in self.trigger_times.drain() {
            if let Ok(latency) = now.duration_since(at) {
                self.metrics
                    .network_programming_duration
                    .with_label_values(&[family_label(family)])
                    .observe(latency.as_secs_f64());
            }
        }
    }

    fn set_no_local_gauges(&self) {
        let mut total: NoLocal = [[0; 2]; 2];
        for counts in self.no_local.values() {
            for (p, row) in counts.iter().enumerate() {
                for (f, n) in row.iter().enumerate() {
                    total[p][f] += n;
                }
            }
        }
        for (p, policy) in ["internal", "external"].into_iter().enumerate() {
            for family in Family::ALL {
                self.metrics
                    .no_local_endpoints
                    .with_label_values(&[policy, family_label(family)])
                    .set(total[p][family.index()]);
            }
        }
    }

    fn publish_health_checks(&self) {
        let Some(tx) = &self.health_check_tx else {
            return;
        };
        let wanted = HealthChecks {
            services: self.health_checks.values().cloned().collect(),
            addresses: [
                Some(self.settings.nodeport_ips[0].clone()),
                Some(self.settings.nodeport_ips[1].clone()),
            ],
        };
        tx.send_if_modified(|current| {
            let changed = *current != wanted;
            if changed {
                *current = wanted;
            }
            changed
        });
    }

    /// Deletes the conntrack entries of UDP flows whose endpoint went away (counted and timed per
    /// family, as kube-proxy's conntrack reconciler metrics).
    fn clean_flows(&mut self) {
        let targets = std::mem::take(&mut self.pending_flows);
        let Some(cleaner) = self.flow_cleaner.as_mut() else {
            return;
        };
        for family in Family::ALL {
            let of_family: Vec<UdpTarget> = targets
                .iter()
                .filter(|t| t.family == family)
                .cloned()
                .collect();
            if of_family.is_empty() {
                continue;
            }
            let label = [family_label(family)];
            let started = Instant::now();
            match cleaner.clean(&of_family) {
                Ok(0) => {}
                Ok(deleted) => {
                    info!(deleted, %family, "deleted stale UDP conntrack entries");
                    self.metrics
                        .conntrack_deleted
                        .with_label_values(&label)
                        .inc_by(deleted as u64);
                }
                Err(e) => warn!(error = %e, %family, "cannot clean stale UDP conntrack entries"),
            }
            self.metrics
                .conntrack_duration
                .with_label_values(&label)
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// After a full diff, empty chains we do not want (left by an earlier run) become stale.
    fn adopt_leftover_stale_chains(&mut self, now: Instant) {
        let Some(kernel) = &self.kernel else { return };
        for family in Family::ALL {
            let Some(table) = kernel.table(family) else {
                continue;
            };
            for (name, chain) in &table.chains {
                if chain.content == ChainContent::Empty
                    && self.desired.chain(family, name).is_none()
                {
                    self.stale.entry((family, name.clone())).or_insert(now);
                }
            }
        }
    }

    fn committed(&mut self, tx: Transaction, now: Instant) {
        for (family, name) in tx.newly_stale(&self.desired) {
            self.stale.entry((family, name.clone())).or_insert(now);
        }
        if let Some(kernel) = self.kernel.as_mut() {
            kernel.apply_owned(tx);
        }
    }

    /// Takes the Services that own the refused operations out of the desired ruleset, so the
    /// next attempt (at once, with the mirror kept: nothing changed in the kernel) programs the
    /// rest. Returns false when the refusal names no Service (or too many to be their fault).
    fn isolate(&mut self, tx: &Transaction, error: &BackendError, now: Instant) -> bool {
        let BackendError::Rejected { ops, .. } = error else {
            return false;
        };
        let found = culprits(tx, ops, &self.desired);
        if found.is_empty() {
            return false;
        }
        self.metrics.sync_failed();
        for key in found {
            warn!(service = %key, error = %error, "the kernel refuses this Service; leaving it out and programming the rest");
            self.warnings.warn(Warning {
                object: service_id(&key),
                uid: self.state.service(&key).and_then(|s| s.uid.clone()),
                reason: "FailedToProgram",
                message: format!("the kernel refused this Service's rules: {error}"),
            });
            self.quarantine.insert(key.clone(), now);
            self.replace_fragment(Owner::Service(Arc::new(key.clone())), Vec::new());
            self.health_checks.remove(&key);
        }
        self.metrics
            .quarantined
            .set(i64::try_from(self.quarantine.len()).unwrap_or(i64::MAX));
        self.last_sync_end = Some(Instant::now());
        self.urgent = true;
        true
    }

    fn failed(&mut self, now: Instant) -> SyncOutcome {
        self.metrics.sync_failed();
        self.failures = self.failures.saturating_add(1);
        // 1 s, doubling, at most --sync-period.
        let backoff =
            Duration::from_secs(1 << (self.failures - 1).min(6)).min(self.timing.sync_period);
        self.retry_at = Some(now + backoff);
        // The kernel is unchanged but our mirror may be wrong (someone else touched the table):
        // read it again and diff everything.
        self.kernel = None;
        self.full = true;
        self.touched.clear();
        self.last_sync_end = Some(Instant::now());
        SyncOutcome::Failed
    }

    /// Plans and renders every Service whose objects changed (all of them after a node change).
    /// Replaces an owner's fragment; the objects it touches are recorded unless the next diff
    /// looks at everything anyway.
    fn replace_fragment(&mut self, owner: Owner, items: Vec<Item>) -> Vec<Conflict> {
        if self.full {
            self.desired.replace(owner, items, &mut Untracked)
        } else {
            self.desired.replace(owner, items, &mut self.touched)
        }
    }

    fn render_changes(&mut self) {
        let changes = self.state.take_changes();
        let services: Vec<ServiceKey> = if self.rerender_all || changes.node {
            self.settings.node = self.state.node().cloned();
            (self.settings.nodeport_ips, self.settings.node_ips) = resolve_node_addresses(
                &self.nodeport_addresses,
                self.settings.node.as_deref(),
                &self.local_addresses,
            );
            match self.renderer.base(&self.settings) {
                Ok(items) => {
                    let conflicts = self.replace_fragment(Owner::Base, items);
                    self.report_conflicts(conflicts);
                }
                Err(e) => warn!(error = %e, "cannot render the base ruleset"),
            }
            let mut all: BTreeSet<ServiceKey> = self.state.service_keys().cloned().collect();
            all.extend(self.desired.owners().filter_map(|o| match o {
                Owner::Service(k) => Some((**k).clone()),
                Owner::Base => None,
            }));
            self.rerender_all = false;
            all.into_iter().collect()
        } else {
            changes.services.keys().cloned().collect()
        };
        // A quarantined Service whose objects changed is tried again.
        for key in changes.services.keys() {
            if self.quarantine.lift(key) {
                info!(service = %key, "a quarantined Service changed; trying it again");
            }
        }
        let rerender = std::mem::take(&mut self.rerender);
        let mut services = services;
        services.extend(
            rerender
                .into_iter()
                .filter(|k| !changes.services.contains_key(k)),
        );
        for key in services {
            self.render_service(key);
        }
        self.metrics
            .quarantined
            .set(i64::try_from(self.quarantine.len()).unwrap_or(i64::MAX));
    }

    fn render_service(&mut self, key: ServiceKey) {
        let owner = Owner::Service(Arc::new(key.clone()));
        if self.quarantine.contains(&key) {
            self.replace_fragment(owner, Vec::new());
            self.health_checks.remove(&key);
            return;
        }
        let Some(service) = self.state.service(&key).cloned() else {
            self.replace_fragment(owner, Vec::new());
            self.health_checks.remove(&key);
            self.no_local.remove(&key);
            return;
        };
        let plan = plan_service(&service, &self.state.slices_of(&key), &self.settings);
        let mut no_local: NoLocal = [[0; 2]; 2];
        for port in &plan.ports {
            let f = port.family.index();
            if port.internal_no_endpoints == Some(NoEndpoints::Drop) {
                no_local[0][f] += 1;
            }
            if port.external_no_endpoints == Some(NoEndpoints::Drop) {
                no_local[1][f] += 1;
            }
        }
        if no_local == [[0; 2]; 2] {
            self.no_local.remove(&key);
        } else {
            self.no_local.insert(key.clone(), no_local);
        }
        self.pending_flows.extend(conntrack::targets(&plan));
        match plan.health_check_node_port {
            Some(port) => {
                self.health_checks.insert(
                    key.clone(),
                    (
                        port,
                        ServiceHealth {
                            namespace: key.namespace.to_string(),
                            name: key.name.to_string(),
                            local_endpoints: plan.local_ready_endpoints,
                        },
                    ),
                );
            }
            None => {
                self.health_checks.remove(&key);
            }
        }
        match self.renderer.service(&plan, &self.settings) {
            Ok(items) => {
                let conflicts = self.replace_fragment(owner, items);
                self.report_conflicts(conflicts);
            }
            Err(e) => {
                warn!(service = %key, error = %e, "cannot program Service; skipping it");
                self.metrics.invalid("Service", "unrenderable");
                self.warnings.warn(Warning {
                    object: service_id(&key),
                    uid: service.uid.clone(),
                    reason: "FailedToProgram",
                    message: format!("not programmed by kube-nft-proxy: {e}"),
                });
                self.replace_fragment(owner, Vec::new());
            }
        }
    }

    fn report_conflicts(&self, conflicts: Vec<Conflict>) {
        for c in conflicts {
            warn!(object = ?c.object, used = %c.winner, ignored = %c.loser, "two Services want the same rule object; the first one wins");
            self.metrics.conflicts.inc();
            if let Owner::Service(loser) = &c.loser {
                self.warnings.warn(Warning {
                    object: service_id(loser),
                    uid: self.state.service(loser).and_then(|s| s.uid.clone()),
                    reason: "Conflict",
                    message: format!(
                        "{:?} is also wanted by {} with other content; theirs is programmed",
                        c.object, c.winner
                    ),
                });
            }
        }
    }

    /// Runs until [`Event::Shutdown`] or until every sender is gone.
    pub fn run(mut self, events: mpsc::Receiver<Event>) {
        loop {
            let event = match self.next_deadline() {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match events.recv_timeout(wait) {
                        Ok(e) => Some(e),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
                None => match events.recv() {
                    Ok(e) => Some(e),
                    Err(_) => return,
                },
            };
            if let Some(event) = event {
                if !self.handle(event) {
                    info!("stopping; rules stay in place");
                    return;
                }
                // Take everything already queued before deciding.
                while let Ok(e) = events.try_recv() {
                    if !self.handle(e) {
                        info!("stopping; rules stay in place");
                        return;
                    }
                }
            }
            if self.next_deadline().is_some_and(|d| d <= Instant::now()) {
                self.sync(Instant::now());
            }
        }
    }
}

fn service_id(key: &ServiceKey) -> ObjectId {
    ObjectId::Service {
        namespace: key.namespace.to_string(),
        name: key.name.to_string(),
    }
}

/// Whether the kernel mirror holds `name` as an empty chain.
fn is_empty_in_kernel(kernel: Option<&KernelState>, family: Family, name: &ChainName) -> bool {
    kernel
        .and_then(|k| k.table(family))
        .and_then(|t| t.chains.get(name))
        .is_some_and(|c| c.content == ChainContent::Empty)
}

pub mod quarantine;
#[cfg(test)]
mod tests;
