//! Kubernetes Events about objects the proxy could not program: Warnings regarding the Service or
//! EndpointSlice, with the reason, published through kube's event recorder (which folds repeats
//! into a series). Rate-limited twice over so a flood of bad objects cannot flood the API server:
//! each object and reason at most once per [`PER_OBJECT_INTERVAL`], and at most
//! [`BURST`] events at once, refilled at one per [`REFILL`]. Anything over is dropped and counted.
//!
//! Without the Kubernetes API (manifests from a directory) there is no sink; the warnings are
//! logged where they are found, as always.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tracing::debug;

use crate::metrics::Metrics;
use crate::model::ObjectId;

/// The same object and reason are reported at most this often.
pub const PER_OBJECT_INTERVAL: Duration = Duration::from_secs(300);
/// Events sent at once before the rate limit applies.
pub const BURST: u32 = 25;
/// One more event may be sent per this interval.
pub const REFILL: Duration = Duration::from_secs(2);
/// Warnings waiting to be sent; more are dropped.
const QUEUE: usize = 256;

/// One warning about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub object: ObjectId,
    /// `metadata.uid`, so `kubectl describe` finds the event.
    pub uid: Option<Arc<str>>,
    /// PascalCase, e.g. `InvalidObject`.
    pub reason: &'static str,
    pub message: String,
}

/// Where warnings go: to the publisher, or nowhere.
#[derive(Clone, Default)]
pub struct EventSink {
    tx: Option<mpsc::Sender<Warning>>,
    metrics: Option<Metrics>,
}

impl EventSink {
    /// A sink that drops everything (no Kubernetes API).
    pub fn none() -> EventSink {
        EventSink::default()
    }

    /// A sink and the receiver [`publish`] reads.
    pub fn channel(metrics: Metrics) -> (EventSink, mpsc::Receiver<Warning>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            EventSink {
                tx: Some(tx),
                metrics: Some(metrics),
            },
            rx,
        )
    }

    /// Queues a warning without waiting; a full queue drops it.
    pub fn warn(&self, warning: Warning) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(warning).is_err()
            && let Some(m) = &self.metrics
        {
            m.events.with_label_values(&["dropped"]).inc();
        }
    }
}

/// The rate limit; see the module doc.
#[derive(Debug)]
pub struct RateLimit {
    last: HashMap<(ObjectId, &'static str), Instant>,
    tokens: u32,
    refilled: Instant,
}

impl RateLimit {
    pub fn new(now: Instant) -> RateLimit {
        RateLimit {
            last: HashMap::new(),
            tokens: BURST,
            refilled: now,
        }
    }

    /// Whether a warning about `object` for `reason` may be sent at `now` (and takes a token).
    pub fn allow(&mut self, object: &ObjectId, reason: &'static str, now: Instant) -> bool {
        let gained = now.saturating_duration_since(self.refilled).as_millis() / REFILL.as_millis();
        if gained > 0 {
            let gained = u32::try_from(gained).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(gained).min(BURST);
            self.refilled = now;
        }
        self.last
            .retain(|_, at| now.saturating_duration_since(*at) < PER_OBJECT_INTERVAL);
        let key = (object.clone(), reason);
        if self.last.contains_key(&key) || self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        self.last.insert(key, now);
        true
    }
}

fn reference(warning: &Warning) -> ObjectReference {
    let (api_version, kind, namespace, name) = match &warning.object {
        ObjectId::Service { namespace, name } => ("v1", "Service", Some(namespace), name),
        ObjectId::EndpointSlice { namespace, name } => (
            "discovery.k8s.io/v1",
            "EndpointSlice",
            Some(namespace),
            name,
        ),
        ObjectId::Node { name } => ("v1", "Node", None, name),
    };
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind.into()),
        namespace: namespace.cloned(),
        name: Some(name.clone()),
        uid: warning.uid.as_deref().map(str::to_string),
        ..ObjectReference::default()
    }
}

/// Sends the warnings as Events until every sink is dropped.
pub async fn publish(
    client: Client,
    node_name: String,
    mut rx: mpsc::Receiver<Warning>,
    metrics: Metrics,
) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "kube-nft-proxy".into(),
            instance: Some(node_name),
        },
    );
    let mut limit = RateLimit::new(Instant::now());
    while let Some(warning) = rx.recv().await {
        if !limit.allow(&warning.object, warning.reason, Instant::now()) {
            metrics.events.with_label_values(&["rate_limited"]).inc();
            continue;
        }
        // The note is at most 1 kB; object text in it is already truncated by the caller.
        let note: String = warning.message.chars().take(1000).collect();
        let event = Event {
            type_: EventType::Warning,
            reason: warning.reason.into(),
            note: Some(note),
            action: "Programming".into(),
            secondary: None,
        };
        match recorder.publish(&event, &reference(&warning)).await {
            Ok(()) => metrics.events.with_label_values(&["sent"]).inc(),
            Err(e) => {
                debug!(object = %warning.object, error = %e, "cannot send Event");
                metrics.events.with_label_values(&["failed"]).inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> ObjectId {
        ObjectId::Service {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn one_event_per_object_and_reason_per_interval() {
        let t0 = Instant::now();
        let mut l = RateLimit::new(t0);
        assert!(l.allow(&svc("a"), "InvalidObject", t0));
        assert!(!l.allow(&svc("a"), "InvalidObject", t0 + Duration::from_secs(10)));
        assert!(l.allow(&svc("a"), "Conflict", t0 + Duration::from_secs(10)));
        assert!(l.allow(&svc("b"), "InvalidObject", t0 + Duration::from_secs(10)));
        assert!(l.allow(&svc("a"), "InvalidObject", t0 + PER_OBJECT_INTERVAL));
    }

    #[test]
    fn a_flood_is_cut_to_the_burst_then_the_refill_rate() {
        let t0 = Instant::now();
        let mut l = RateLimit::new(t0);
        let sent = (0..1000)
            .filter(|i| l.allow(&svc(&format!("s{i}")), "InvalidObject", t0))
            .count();
        assert_eq!(sent, BURST as usize);
        let later = t0 + REFILL * 3;
        let sent = (1000..2000)
            .filter(|i| l.allow(&svc(&format!("s{i}")), "InvalidObject", later))
            .count();
        assert_eq!(sent, 3);
    }

    #[test]
    fn references_point_at_the_object() {
        let r = reference(&Warning {
            object: ObjectId::EndpointSlice {
                namespace: "ns".into(),
                name: "web-abc".into(),
            },
            uid: Some("1234-abcd".into()),
            reason: "InvalidObject",
            message: "x".into(),
        });
        assert_eq!(r.kind.as_deref(), Some("EndpointSlice"));
        assert_eq!(r.api_version.as_deref(), Some("discovery.k8s.io/v1"));
        assert_eq!(r.namespace.as_deref(), Some("ns"));
        assert_eq!(r.uid.as_deref(), Some("1234-abcd"));
    }
}
