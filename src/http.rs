//! The HTTP endpoints: `/metrics` and `/proxyMode` on the metrics address, `/healthz` and
//! `/livez` on the health address, with kube-proxy's JSON, headers and staleness rule (unhealthy
//! when an update has been queued for longer than twice the sync period without being applied).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::reconciler::SyncStatus;

/// What the health handlers need.
#[derive(Clone)]
pub struct Health {
    pub status: Arc<Mutex<SyncStatus>>,
    /// Twice the sync period.
    pub timeout: Duration,
    /// Counts answers (`kubeproxy_proxy_healthz_total`, `kubeproxy_proxy_livez_total`).
    pub metrics: Option<Metrics>,
}

/// Which health endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `/healthz`: also fails while this node is being deleted or drained by the autoscaler.
    Healthz,
    /// `/livez`: only whether syncs keep up.
    Livez,
}

impl Health {
    /// `(syncs keep up, last updated)` at `now`.
    pub fn check(&self, now: SystemTime) -> (bool, Option<SystemTime>) {
        let status = self.status();
        (!self.stale(&status, now), status.last_updated)
    }

    fn status(&self) -> SyncStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn stale(&self, status: &SyncStatus, now: SystemTime) -> bool {
        status
            .queued_since
            .and_then(|q| now.duration_since(q).ok())
            .is_some_and(|waited| waited > self.timeout)
    }

    /// kube-proxy's answer: status code and JSON body.
    pub fn answer(&self, probe: Probe, now: SystemTime) -> (StatusCode, String) {
        let status = self.status();
        let synced = !self.stale(&status, now);
        let eligible = !status.node_terminating;
        let healthy = match probe {
            Probe::Healthz => synced && eligible,
            Probe::Livez => synced,
        };
        // Like kube-proxy, a family that keeps up reports now as its last update.
        let last = if synced {
            Some(now)
        } else {
            status.last_updated
        };
        let last = last.map(rfc3339).unwrap_or_default();
        let family = format!("{{\"lastUpdated\": \"{last}\", \"healthy\": {synced}}}");
        let eligibility = match probe {
            Probe::Healthz => format!(" \"nodeEligible\": {eligible},"),
            Probe::Livez => String::new(),
        };
        let body = format!(
            "{{\"lastUpdated\": \"{last}\",\"currentTime\": \"{}\",{eligibility} \"healthy\": {healthy}, \"status\": {{\"IPv4\": {family}, \"IPv6\": {family}}}}}",
            rfc3339(now)
        );
        let code = if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        if let Some(m) = &self.metrics {
            let counter = match probe {
                Probe::Healthz => &m.healthz,
                Probe::Livez => &m.livez,
            };
            counter.with_label_values(&[code.as_str()]).inc();
        }
        (code, body)
    }

    fn response(&self, probe: Probe) -> impl IntoResponse + use<> {
        let (code, body) = self.answer(probe, SystemTime::now());
        (code, json_headers(), body)
    }
}

/// `Content-Type: application/json` and `X-Content-Type-Options: nosniff`, as kube-proxy sends.
pub fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h
}

/// Serves `/metrics` and `/proxyMode` until the process ends.
pub async fn serve_metrics(addr: SocketAddr, metrics: Metrics) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/proxyMode", get(|| async { "nftables" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

/// Serves `/healthz` and `/livez` until the process ends.
pub async fn serve_health(addr: SocketAddr, health: Health) -> std::io::Result<()> {
    let h1 = health.clone();
    let app = Router::new()
        .route(
            "/healthz",
            get(move || std::future::ready(h1.response(Probe::Healthz))),
        )
        .route(
            "/livez",
            get(move || std::future::ready(health.response(Probe::Livez))),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

/// `2006-01-02T15:04:05.000000000Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000Z"
        );
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_709_251_199, 5);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.000000005Z");
    }

    #[test]
    fn health_fails_when_a_queued_update_waits_too_long() {
        let status = Arc::new(Mutex::new(SyncStatus::default()));
        let health = Health {
            status: status.clone(),
            timeout: Duration::from_secs(60),
            metrics: None,
        };
        let now = SystemTime::now();
        assert!(health.check(now).0, "healthy while idle");
        status.lock().unwrap().queued_since = Some(now - Duration::from_secs(30));
        assert!(health.check(now).0);
        status.lock().unwrap().queued_since = Some(now - Duration::from_secs(61));
        assert!(!health.check(now).0);
    }

    #[test]
    fn healthz_also_fails_for_a_terminating_node_and_counts_answers() {
        let status = Arc::new(Mutex::new(SyncStatus::default()));
        let metrics = Metrics::new().unwrap();
        let health = Health {
            status: status.clone(),
            timeout: Duration::from_secs(60),
            metrics: Some(metrics.clone()),
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_251_199);
        let (code, body) = health.answer(Probe::Healthz, now);
        assert_eq!(code, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["nodeEligible"], true);
        assert_eq!(json["healthy"], true);
        assert_eq!(json["status"]["IPv6"]["healthy"], true);
        assert_eq!(json["lastUpdated"], "2024-02-29T23:59:59.000000000Z");
        status.lock().unwrap().node_terminating = true;
        let (code, body) = health.answer(Probe::Healthz, now);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["nodeEligible"], false);
        let (code, body) = health.answer(Probe::Livez, now);
        assert_eq!(code, StatusCode::OK, "livez ignores node eligibility");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(json.get("nodeEligible").is_none());
        assert_eq!(metrics.healthz.with_label_values(&["200"]).get(), 1);
        assert_eq!(metrics.healthz.with_label_values(&["503"]).get(), 1);
        assert_eq!(metrics.livez.with_label_values(&["200"]).get(), 1);
    }
}
