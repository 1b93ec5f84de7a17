//! Prometheus metrics: kube-proxy's names, types, labels and buckets where kube-proxy has the
//! metric, `kubenftproxy_*` for our own. One [`Metrics`] value is shared by the sources, the
//! reconciler and the HTTP servers.
//!
//! One sync programs both families in one atomic transaction, so the per-family series of a sync
//! metric (`ip_family="IPv4"` and `"IPv6"`) move together; kube-proxy's dual-stack proxier runs
//! one sync per family and observes each separately.

use std::time::{Duration, SystemTime};

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder, exponential_buckets,
};

use crate::model::Family;

/// The `ip_family` label value of a family, as kube-proxy writes it.
pub fn family_label(family: Family) -> &'static str {
    match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// kube-proxy's `network_programming_duration_seconds` buckets: 0.25 s, 0.5 s, 1–59 s by 1 s,
/// 60–115 s by 5 s, 120–300 s by 30 s.
fn network_programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..60).map(f64::from));
    b.extend((60..120).step_by(5).map(f64::from));
    b.extend((120..=300).step_by(30).map(f64::from));
    b
}

/// Every metric the proxy exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `kubeproxy_sync_proxy_rules_duration_seconds{ip_family}`: every sync, plan to kernel ack.
    pub sync_duration: HistogramVec,
    /// `kubeproxy_sync_full_proxy_rules_duration_seconds{ip_family}`: syncs that diffed everything.
    pub sync_full_duration: HistogramVec,
    /// `kubeproxy_sync_partial_proxy_rules_duration_seconds{ip_family}`: syncs of what changed.
    pub sync_partial_duration: HistogramVec,
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family}`: end of the last good sync.
    pub last_sync_timestamp: GaugeVec,
    /// `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family}`: last sync request.
    pub last_queued_timestamp: GaugeVec,
    /// `kubeproxy_network_programming_duration_seconds{ip_family}`: from an EndpointSlice's
    /// `endpoints.kubernetes.io/last-change-trigger-time` to the kernel's acknowledgement.
    pub network_programming_duration: HistogramVec,
    /// `kubeproxy_sync_proxy_rules_endpoint_changes_pending`: Services with EndpointSlice
    /// changes not yet synced.
    pub endpoint_changes_pending: IntGauge,
    /// `kubeproxy_sync_proxy_rules_endpoint_changes_total`: EndpointSlice changes received.
    pub endpoint_changes_total: IntCounter,
    /// `kubeproxy_sync_proxy_rules_service_changes_pending`: Services changed, not yet synced.
    pub service_changes_pending: IntGauge,
    /// `kubeproxy_sync_proxy_rules_service_changes_total`: Service changes received.
    pub service_changes_total: IntCounter,
    /// `kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy, ip_family}`: service
    /// ports with a Local policy and endpoints elsewhere but none on this node.
    pub no_local_endpoints: IntGaugeVec,
    /// `kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family}`.
    pub sync_failures: IntCounterVec,
    /// `kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total{ip_family}`: failed deletions
    /// of stale chains.
    pub cleanup_failures: IntCounterVec,
    /// `kubeproxy_proxy_healthz_total{code}`.
    pub healthz: IntCounterVec,
    /// `kubeproxy_proxy_livez_total{code}`.
    pub livez: IntCounterVec,
    /// `kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family}`: stale UDP flows deleted.
    pub conntrack_deleted: IntCounterVec,
    /// `kubeproxy_conntrack_reconciler_sync_duration_seconds{ip_family}`.
    pub conntrack_duration: HistogramVec,
    /// `kubenftproxy_invalid_input_total{kind, reason}`: objects and files refused.
    pub invalid_input: IntCounterVec,
    /// `kubenftproxy_object_conflicts_total`: objects two Services wanted with different content.
    pub conflicts: IntCounter,
    /// `kubenftproxy_transaction_operations`: kernel objects written per transaction.
    pub transaction_size: prometheus::Histogram,
    /// `kubenftproxy_transaction_apply_duration_seconds`: sending one transaction until the
    /// kernel's acknowledgement (the kernel's share of a sync).
    pub apply_duration: prometheus::Histogram,
    /// `kubenftproxy_services`: Services programmed.
    pub services: IntGauge,
    /// `kubenftproxy_events_total{result}`: Kubernetes Events sent, or dropped by the rate limit
    /// or an API error.
    pub events: IntCounterVec,
    /// `kubenftproxy_external_changes_total{ip_family}`: changes someone else made to our tables
    /// (each one answered by re-reading and restoring the table).
    pub external_changes: IntCounterVec,
    /// `kubenftproxy_quarantined_services`: Services the kernel refused, left out so the rest
    /// could be programmed.
    pub quarantined: IntGauge,
}

fn histogram(
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> prometheus::Result<HistogramVec> {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let sync_buckets = exponential_buckets(0.001, 2.0, 15)?;
        let family = &["ip_family"];
        let m = Metrics {
            registry: Registry::new(),
            sync_duration: histogram(
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                family,
                sync_buckets.clone(),
            )?,
            sync_full_duration: histogram(
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs",
                family,
                sync_buckets.clone(),
            )?,
            sync_partial_duration: histogram(
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs",
                family,
                sync_buckets.clone(),
            )?,
            last_sync_timestamp: GaugeVec::new(
                Opts::new(
                    "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                    "The last time proxy rules were successfully synced",
                ),
                family,
            )?,
            last_queued_timestamp: GaugeVec::new(
                Opts::new(
                    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                    "The last time a sync of proxy rules was queued",
                ),
                family,
            )?,
            network_programming_duration: histogram(
                "kubeproxy_network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                family,
                network_programming_buckets(),
            )?,
            endpoint_changes_pending: IntGauge::new(
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
            )?,
            endpoint_changes_total: IntCounter::new(
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "Cumulative proxy rules Endpoint changes",
            )?,
            service_changes_pending: IntGauge::new(
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
            )?,
            service_changes_total: IntCounter::new(
                "kubeproxy_sync_proxy_rules_service_changes_total",
                "Cumulative proxy rules Service changes",
            )?,
            no_local_endpoints: IntGaugeVec::new(
                Opts::new(
                    "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                    "Number of services with a Local traffic policy and no endpoints",
                ),
                &["traffic_policy", "ip_family"],
            )?,
            sync_failures: IntCounterVec::new(
                Opts::new(
                    "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                    "Cumulative proxy nftables sync failures",
                ),
                family,
            )?,
            cleanup_failures: IntCounterVec::new(
                Opts::new(
                    "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
                    "Cumulative proxy nftables cleanup failures",
                ),
                family,
            )?,
            healthz: IntCounterVec::new(
                Opts::new(
                    "kubeproxy_proxy_healthz_total",
                    "Cumulative proxy healthz HTTP status",
                ),
                &["code"],
            )?,
            livez: IntCounterVec::new(
                Opts::new(
                    "kubeproxy_proxy_livez_total",
                    "Cumulative proxy livez HTTP status",
                ),
                &["code"],
            )?,
            conntrack_deleted: IntCounterVec::new(
                Opts::new(
                    "kubeproxy_conntrack_reconciler_deleted_entries_total",
                    "Cumulative conntrack flows deleted by conntrack reconciler",
                ),
                family,
            )?,
            conntrack_duration: histogram(
                "kubeproxy_conntrack_reconciler_sync_duration_seconds",
                "ReconcileConntrackFlowsLatency latency in seconds",
                family,
                sync_buckets,
            )?,
            invalid_input: IntCounterVec::new(
                Opts::new(
                    "kubenftproxy_invalid_input_total",
                    "Objects and manifest files refused as invalid, by kind and reason",
                ),
                &["kind", "reason"],
            )?,
            conflicts: IntCounter::new(
                "kubenftproxy_object_conflicts_total",
                "Times two Services wanted the same nftables object with different content",
            )?,
            transaction_size: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "kubenftproxy_transaction_operations",
                    "Kernel objects (rules, elements, chains, sets) written per transaction",
                )
                .buckets(exponential_buckets(1.0, 4.0, 12)?),
            )?,
            apply_duration: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "kubenftproxy_transaction_apply_duration_seconds",
                    "Time from sending a transaction to the kernel's acknowledgement",
                )
                .buckets(exponential_buckets(0.0001, 2.0, 18)?),
            )?,
            services: IntGauge::new("kubenftproxy_services", "Services currently programmed")?,
            events: IntCounterVec::new(
                Opts::new(
                    "kubenftproxy_events_total",
                    "Kubernetes Events about objects that could not be programmed, by result",
                ),
                &["result"],
            )?,
            external_changes: IntCounterVec::new(
                Opts::new(
                    "kubenftproxy_external_changes_total",
                    "Changes someone else made to the proxy's tables, each followed by a restore",
                ),
                family,
            )?,
            quarantined: IntGauge::new(
                "kubenftproxy_quarantined_services",
                "Services the kernel refused, left out so the others could be programmed",
            )?,
        };
        m.register_all()?;
        Ok(m)
    }

    /// Every collector: the metrics above and the process metrics.
    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.sync_duration.clone()),
            Box::new(self.sync_full_duration.clone()),
            Box::new(self.sync_partial_duration.clone()),
            Box::new(self.last_sync_timestamp.clone()),
            Box::new(self.last_queued_timestamp.clone()),
            Box::new(self.network_programming_duration.clone()),
            Box::new(self.endpoint_changes_pending.clone()),
            Box::new(self.endpoint_changes_total.clone()),
            Box::new(self.service_changes_pending.clone()),
            Box::new(self.service_changes_total.clone()),
            Box::new(self.no_local_endpoints.clone()),
            Box::new(self.sync_failures.clone()),
            Box::new(self.cleanup_failures.clone()),
            Box::new(self.healthz.clone()),
            Box::new(self.livez.clone()),
            Box::new(self.conntrack_deleted.clone()),
            Box::new(self.conntrack_duration.clone()),
            Box::new(self.invalid_input.clone()),
            Box::new(self.conflicts.clone()),
            Box::new(self.transaction_size.clone()),
            Box::new(self.apply_duration.clone()),
            Box::new(self.services.clone()),
            Box::new(self.events.clone()),
            Box::new(self.external_changes.clone()),
            Box::new(self.quarantined.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ]
    }

    fn register_all(&self) -> prometheus::Result<()> {
        for collector in self.collectors() {
            self.registry.register(collector)?;
        }
        // Series that exist before their first event, so dashboards and alerts see zeros.
        for family in Family::ALL {
            let f = family_label(family);
            self.sync_failures.with_label_values(&[f]);
            self.cleanup_failures.with_label_values(&[f]);
            self.conntrack_deleted.with_label_values(&[f]);
            self.external_changes.with_label_values(&[f]);
            for policy in ["internal", "external"] {
                self.no_local_endpoints.with_label_values(&[policy, f]);
            }
        }
        for code in ["200", "503"] {
            self.healthz.with_label_values(&[code]);
            self.livez.with_label_values(&[code]);
        }
        Ok(())
    }

    /// The name of every metric family exported (also those without samples yet), for
    /// dashboards and alerts to be checked against.
    pub fn names(&self) -> Vec<String> {
        self.collectors()
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| d.fq_name.clone())
            .collect()
    }

    /// Counts one refused input.
    pub fn invalid(&self, kind: &str, reason: &str) {
        self.invalid_input.with_label_values(&[kind, reason]).inc();
    }

    /// Observes one successful sync of both families.
    pub fn observe_sync(&self, elapsed: Duration, full: bool, at: SystemTime) {
        let secs = elapsed.as_secs_f64();
        let stamp = unix_seconds(at);
        for family in Family::ALL {
            let f = [family_label(family)];
            self.sync_duration.with_label_values(&f).observe(secs);
            let kind = if full {
                &self.sync_full_duration
            } else {
                &self.sync_partial_duration
            };
            kind.with_label_values(&f).observe(secs);
            self.last_sync_timestamp.with_label_values(&f).set(stamp);
        }
    }

    /// Counts one failed sync (both families: the transaction held both).
    pub fn sync_failed(&self) {
        for family in Family::ALL {
            self.sync_failures
                .with_label_values(&[family_label(family)])
                .inc();
        }
    }

    /// Records that a sync was requested at `at`.
    pub fn queued(&self, at: SystemTime) {
        let stamp = unix_seconds(at);
        for family in Family::ALL {
            self.last_queued_timestamp
                .with_label_values(&[family_label(family)])
                .set(stamp);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on metric families the registry itself produced wrongly.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Seconds since the Unix epoch (0 before it).
fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_programming_buckets_match_kube_proxy() {
        let b = network_programming_buckets();
        assert_eq!(b[..3], [0.25, 0.5, 1.0]);
        assert!(b.contains(&59.0) && b.contains(&60.0) && b.contains(&115.0));
        assert!(!b.contains(&61.0) && !b.contains(&116.0));
        assert_eq!(b[b.len() - 3..], [240.0, 270.0, 300.0]);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn series_exist_before_their_first_event() {
        let m = Metrics::new().unwrap();
        let text = m.render();
        for line in [
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"} 0",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv6\"} 0",
            "kubeproxy_proxy_healthz_total{code=\"503\"} 0",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv6\",traffic_policy=\"external\"} 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn every_metric_is_named() {
        let names = Metrics::new().unwrap().names();
        assert!(names.contains(&"kubeproxy_network_programming_duration_seconds".to_string()));
        assert!(names.contains(&"process_resident_memory_bytes".to_string()));
        assert_eq!(
            names.len(),
            names
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        );
    }

    #[test]
    fn a_sync_moves_both_families() {
        let m = Metrics::new().unwrap();
        m.observe_sync(
            Duration::from_millis(3),
            false,
            SystemTime::UNIX_EPOCH + Duration::from_secs(7),
        );
        for f in ["IPv4", "IPv6"] {
            assert_eq!(
                m.sync_duration.with_label_values(&[f]).get_sample_count(),
                1
            );
            assert_eq!(
                m.sync_partial_duration
                    .with_label_values(&[f])
                    .get_sample_count(),
                1
            );
            assert_eq!(
                m.sync_full_duration
                    .with_label_values(&[f])
                    .get_sample_count(),
                0
            );
            assert_eq!(m.last_sync_timestamp.with_label_values(&[f]).get(), 7.0);
        }
    }
}
