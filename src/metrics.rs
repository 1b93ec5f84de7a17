//! Prometheus metrics: kube-proxy's names where kube-proxy has the metric, `kubenftproxy_*` for
//! our own. One [`Metrics`] value is shared by the source, the reconciler and the HTTP server.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder, exponential_buckets,
};

/// Every metric the proxy exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `kubeproxy_sync_proxy_rules_duration_seconds`: time of each sync (plan to kernel ack).
    pub sync_duration: Histogram,
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds`: end of the last successful sync.
    pub last_sync_timestamp: IntGauge,
    /// `kubeproxy_sync_proxy_rules_nftables_sync_failures_total`.
    pub sync_failures: IntCounter,
    /// `kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total`: failed stale-chain deletions.
    pub cleanup_failures: IntCounter,
    /// `kubenftproxy_invalid_input_total{kind, reason}`: objects and files refused.
    pub invalid_input: IntCounterVec,
    /// `kubenftproxy_object_conflicts_total`: objects two Services wanted with different content.
    pub conflicts: IntCounter,
    /// `kubenftproxy_transaction_operations`: kernel objects written per transaction.
    pub transaction_size: Histogram,
    /// `kubenftproxy_services`: Services programmed.
    pub services: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let sync_duration = Histogram::with_opts(
            HistogramOpts::new(
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
            )
            .buckets(exponential_buckets(0.001, 2.0, 15)?),
        )?;
        let last_sync_timestamp = IntGauge::new(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
        )?;
        let sync_failures = IntCounter::new(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            "Cumulative proxy nftables sync failures",
        )?;
        let cleanup_failures = IntCounter::new(
            "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
            "Cumulative proxy nftables cleanup failures",
        )?;
        let invalid_input = IntCounterVec::new(
            Opts::new(
                "kubenftproxy_invalid_input_total",
                "Objects and manifest files refused as invalid, by kind and reason",
            ),
            &["kind", "reason"],
        )?;
        let conflicts = IntCounter::new(
            "kubenftproxy_object_conflicts_total",
            "Times two Services wanted the same nftables object with different content",
        )?;
        let transaction_size = Histogram::with_opts(
            HistogramOpts::new(
                "kubenftproxy_transaction_operations",
                "Kernel objects (rules, elements, chains, sets) written per transaction",
            )
            .buckets(exponential_buckets(1.0, 4.0, 12)?),
        )?;
        let services = IntGauge::new("kubenftproxy_services", "Services currently programmed")?;
        registry.register(Box::new(sync_duration.clone()))?;
        registry.register(Box::new(last_sync_timestamp.clone()))?;
        registry.register(Box::new(sync_failures.clone()))?;
        registry.register(Box::new(cleanup_failures.clone()))?;
        registry.register(Box::new(invalid_input.clone()))?;
        registry.register(Box::new(conflicts.clone()))?;
        registry.register(Box::new(transaction_size.clone()))?;
        registry.register(Box::new(services.clone()))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            sync_duration,
            last_sync_timestamp,
            sync_failures,
            cleanup_failures,
            invalid_input,
            conflicts,
            transaction_size,
            services,
        })
    }

    /// Counts one refused input.
    pub fn invalid(&self, kind: &str, reason: &str) {
        self.invalid_input.with_label_values(&[kind, reason]).inc();
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
