//! The Kubernetes API source: kube-runtime watchers for Services, EndpointSlices and this Node,
//! with kube-proxy's selectors. Objects are converted on arrival and not kept (the state holds only
//! the validated model), so memory follows what the plan needs, not the API objects.
//!
//! Nothing is programmed until both Services and EndpointSlices have completed their initial list
//! ([`Event::Synced`]), so start-up never programs a half view. When the API server goes away, the
//! watchers retry with backoff and the rules stay; every re-list (after a restart, a 410 Gone, a
//! broken watch) is diffed against what was known, so objects deleted meanwhile are removed and
//! nothing is flushed.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, mpsc};

use std::fmt::Debug;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use super::{Event, SourceError};
use crate::events::{EventSink, Warning};
use crate::metrics::Metrics;
use crate::model::convert::{self, Converted, InvalidObject};
use crate::model::{Object, ObjectId};
use crate::state::Change;

/// Services handed to another proxy are not watched at all.
pub const SERVICE_LABELS: &str = "!service.kubernetes.io/service-proxy-name";
/// Headless Services are never watched.
pub const SERVICE_FIELDS: &str = "spec.clusterIP!=None";
/// Slices of headless Services are never watched.
pub const SLICE_LABELS: &str = "!service.kubernetes.io/headless";

/// Builds the API client: `kubeconfig` if given (its server overridden by `master`), else
/// `master` alone (plain, for tests and local API servers), else the in-cluster configuration.
pub async fn client(
    kubeconfig: Option<&Path>,
    master: Option<&str>,
) -> Result<Client, SourceError> {
    let err = |e: String| SourceError::Kubernetes(e);
    let mut config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| err(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(format!("{}: {e}", path.display())))?
        }
        None => match master {
            Some(url) => kube::Config::new(
                url.parse()
                    .map_err(|e| err(format!("--master {url}: {e}")))?,
            ),
            None => kube::Config::incluster()
                .map_err(|e| err(format!("in-cluster configuration: {e}")))?,
        },
    };
    if let (Some(url), Some(_)) = (master, kubeconfig) {
        config.cluster_url = url
            .parse()
            .map_err(|e| err(format!("--master {url}: {e}")))?;
    }
    Client::try_from(config).map_err(|e| err(e.to_string()))
}

/// Lists Services, EndpointSlices and this Node once (for `explain`), with the same selectors and
/// validation as the watches; invalid objects are logged and counted, and left out.
pub async fn list_once(
    client: Client,
    node_name: &str,
    metrics: &Metrics,
) -> Result<Vec<Change>, SourceError> {
    let err = |e: kube::Error| SourceError::Kubernetes(e.to_string());
    let mut source = KubeSource {
        metrics: metrics.clone(),
        warnings: EventSink::none(),
        trackers: Default::default(),
        synced_sent: false,
    };
    let mut out = Vec::new();
    let params = kube::api::ListParams::default();
    let services = Api::<core::Service>::all(client.clone())
        .list(&params.clone().labels(SERVICE_LABELS).fields(SERVICE_FIELDS))
        .await
        .map_err(err)?;
    for s in &services.items {
        out.extend(source.handle(Kind::Service, Observed::Present(service(s))));
    }
    let slices = Api::<discovery::EndpointSlice>::all(client.clone())
        .list(&params.clone().labels(SLICE_LABELS))
        .await
        .map_err(err)?;
    for s in &slices.items {
        out.extend(source.handle(Kind::EndpointSlice, Observed::Present(slice(s))));
    }
    let nodes = Api::<core::Node>::all(client)
        .list(&params.fields(&format!("metadata.name={node_name}")))
        .await
        .map_err(err)?;
    for n in &nodes.items {
        out.extend(source.handle(Kind::Node, Observed::Present(node(n))));
    }
    Ok(out)
}

/// Which watch an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Service,
    EndpointSlice,
    Node,
}

/// An object converted: its identity and the model (`None`: ignored) or why it is invalid (with
/// its uid, for the Event).
type Conversion = (
    ObjectId,
    Result<Option<Object>, (InvalidObject, Option<Arc<str>>)>,
);

/// A watch event with its object already converted (the API object is dropped here).
enum Observed {
    Init,
    Present(Conversion),
    Gone(ObjectId),
    InitDone,
}

fn observe<K>(event: WatchEvent<K>, convert: fn(&K) -> Conversion) -> Observed {
    match event {
        WatchEvent::Init => Observed::Init,
        WatchEvent::InitApply(obj) | WatchEvent::Apply(obj) => Observed::Present(convert(&obj)),
        WatchEvent::Delete(obj) => Observed::Gone(convert(&obj).0),
        WatchEvent::InitDone => Observed::InitDone,
    }
}

/// One of the three watches, its events converted.
type Watch = Pin<Box<dyn Stream<Item = (Kind, Result<Observed, watcher::Error>)> + Send>>;

fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    convert: fn(&K) -> Conversion,
) -> Watch
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    Box::pin(
        watcher::watcher(api, config)
            .default_backoff()
            .map(move |e| (kind, e.map(|e| observe(e, convert)))),
    )
}

fn service(s: &core::Service) -> Conversion {
    let result = convert::service(s)
        .map(|c| match c {
            Converted::Proxied(svc) => Some(Object::Service(svc.into())),
            Converted::Ignored(_) => None,
        })
        .map_err(|e| (e, convert::uid(&s.metadata)));
    (convert::service_id(s), result)
}

fn slice(s: &discovery::EndpointSlice) -> Conversion {
    let result = convert::endpoint_slice(s)
        .map(|c| match c {
            Converted::Proxied(slice) => Some(Object::EndpointSlice(slice.into())),
            Converted::Ignored(_) => None,
        })
        .map_err(|e| (e, convert::uid(&s.metadata)));
    (convert::slice_id(s), result)
}

fn node(n: &core::Node) -> Conversion {
    (
        convert::node_id(n),
        convert::node(n)
            .map(|n| Some(Object::Node(n.into())))
            .map_err(|e| (e, convert::uid(&n.metadata))),
    )
}

/// What is known of one kind, to turn re-lists into deletions.
#[derive(Default)]
struct Tracker {
    /// Objects sent as present.
    known: BTreeSet<ObjectId>,
    /// Objects listed since the current re-list began.
    listing: Option<BTreeSet<ObjectId>>,
    synced: bool,
}

/// Follows the API until the receiver goes away.
pub async fn run(
    client: Client,
    node_name: String,
    metrics: Metrics,
    warnings: EventSink,
    events: mpsc::Sender<Event>,
) {
    let streams = vec![
        watch(
            Api::<core::Service>::all(client.clone()),
            watcher::Config::default()
                .labels(SERVICE_LABELS)
                .fields(SERVICE_FIELDS),
            Kind::Service,
            service,
        ),
        watch(
            Api::<discovery::EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(SLICE_LABELS),
            Kind::EndpointSlice,
            slice,
        ),
        watch(
            Api::<core::Node>::all(client),
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
            Kind::Node,
            node,
        ),
    ];
    let mut merged = futures::stream::select_all(streams);
    let mut source = KubeSource {
        metrics,
        warnings,
        trackers: [Tracker::default(), Tracker::default(), Tracker::default()],
        synced_sent: false,
    };
    while let Some((kind, item)) = merged.next().await {
        let batch = match item {
            Ok(observed) => source.handle(kind, observed),
            Err(e) => {
                warn!(?kind, error = %e, "Kubernetes watch failed; retrying with backoff, rules stay as they are");
                continue;
            }
        };
        if !batch.is_empty() && events.send(Event::Changes(batch)).is_err() {
            return;
        }
        if !source.synced_sent
            && source.trackers[Kind::Service as usize].synced
            && source.trackers[Kind::EndpointSlice as usize].synced
        {
            source.synced_sent = true;
            info!("initial lists of Services and EndpointSlices complete");
            if events.send(Event::Synced).is_err() {
                return;
            }
        }
    }
}

/// Turns converted watch events into state changes.
struct KubeSource {
    metrics: Metrics,
    warnings: EventSink,
    trackers: [Tracker; 3],
    synced_sent: bool,
}

impl KubeSource {
    fn handle(&mut self, kind: Kind, observed: Observed) -> Vec<Change> {
        let mut out = Vec::new();
        let tracker = &mut self.trackers[kind as usize];
        match observed {
            Observed::Init => tracker.listing = Some(BTreeSet::new()),
            Observed::Present((id, result)) => {
                if let Some(listing) = tracker.listing.as_mut() {
                    listing.insert(id.clone());
                }
                self.present(kind, id, result, &mut out);
            }
            Observed::Gone(id) => {
                if tracker.known.remove(&id) {
                    out.push(Change::Delete(id));
                }
            }
            Observed::InitDone => {
                let listed = tracker.listing.take().unwrap_or_default();
                let gone: Vec<ObjectId> = tracker.known.difference(&listed).cloned().collect();
                for id in gone {
                    debug!(object = %id, "gone after a re-list");
                    tracker.known.remove(&id);
                    out.push(Change::Delete(id));
                }
                tracker.synced = true;
            }
        }
        out
    }

    /// An object exists: programmed if valid, otherwise logged, counted and treated as absent.
    fn present(
        &mut self,
        kind: Kind,
        id: ObjectId,
        result: Result<Option<Object>, (InvalidObject, Option<Arc<str>>)>,
        out: &mut Vec<Change>,
    ) {
        let tracker = &mut self.trackers[kind as usize];
        match result {
            Ok(Some(object)) => {
                tracker.known.insert(id);
                out.push(Change::Upsert(object));
            }
            Ok(None) => {
                if tracker.known.remove(&id) {
                    out.push(Change::Delete(id));
                }
            }
            Err((e, uid)) => {
                warn!(object = %e.id, field = %e.field, reason = e.reason.as_label(), "skipping invalid object: {}", e.detail);
                self.metrics.invalid(id.kind(), e.reason.as_label());
                self.warnings.warn(Warning {
                    object: id.clone(),
                    uid,
                    reason: "InvalidObject",
                    message: format!(
                        "not programmed by kube-nft-proxy: {}: {} ({})",
                        e.field,
                        e.detail,
                        e.reason.as_label()
                    ),
                });
                if tracker.known.remove(&id) {
                    out.push(Change::Delete(id));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::ServiceBuilder;

    fn present(name: &str, ip: &str) -> Observed {
        Observed::Present(service(
            &ServiceBuilder::new("ns", name)
                .cluster_ip(ip)
                .port("", 80, "TCP")
                .build(),
        ))
    }

    fn names(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Upsert(Object::Service(s)) => format!("+{}", s.key),
                Change::Upsert(o) => format!("+{o:?}"),
                Change::Delete(id) => format!("-{id}"),
            })
            .collect()
    }

    #[test]
    fn a_relist_deletes_what_it_no_longer_lists() {
        let mut s = KubeSource {
            metrics: Metrics::new().unwrap(),
            warnings: EventSink::none(),
            trackers: Default::default(),
            synced_sent: false,
        };
        s.handle(Kind::Service, Observed::Init);
        assert_eq!(
            names(&s.handle(Kind::Service, present("a", "10.96.0.1"))),
            ["+ns/a"]
        );
        s.handle(Kind::Service, present("b", "10.96.0.2"));
        assert!(s.handle(Kind::Service, Observed::InitDone).is_empty());
        assert!(s.trackers[Kind::Service as usize].synced);
        // The watch broke; the re-list no longer has a.
        s.handle(Kind::Service, Observed::Init);
        s.handle(Kind::Service, present("b", "10.96.0.2"));
        assert_eq!(
            names(&s.handle(Kind::Service, Observed::InitDone)),
            ["-Service ns/a"]
        );
    }

    #[test]
    fn an_object_turning_invalid_is_removed() {
        let mut s = KubeSource {
            metrics: Metrics::new().unwrap(),
            warnings: EventSink::none(),
            trackers: Default::default(),
            synced_sent: false,
        };
        s.handle(Kind::Service, present("a", "10.96.0.1"));
        let bad = service(
            &ServiceBuilder::new("ns", "a")
                .cluster_ip("10.96.0.300")
                .port("", 80, "TCP")
                .build(),
        );
        assert_eq!(
            names(&s.handle(Kind::Service, Observed::Present(bad))),
            ["-Service ns/a"]
        );
        assert_eq!(
            s.metrics
                .invalid_input
                .with_label_values(&["Service", "invalid_address"])
                .get(),
            1
        );
    }
}
