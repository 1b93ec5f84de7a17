//! A test API server that speaks the real list/watch protocol for Services, EndpointSlices and
//! Nodes over HTTP: resourceVersions, watch events (ADDED, MODIFIED, DELETED, BOOKMARK), label and
//! field selectors, 410 Gone for versions older than the compacted history, and create, replace,
//! get and delete, so tests change objects through kube's own `Api`; it also records the Events
//! (events.k8s.io/v1) the proxy creates.
//!
//! It listens twice: inside the node's network namespace (for the proxy) and on the test's own
//! loopback (for the test's kube client). It runs on its own runtime, so `stop` drops every
//! connection at once, like a killed API server; `start` serves the same store again.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// The kinds served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
}

impl Resource {
    fn api_version(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
        }
    }
}

/// One change, as watchers see it.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    resource: Resource,
    kind: &'static str,
    object: Value,
    /// The object before a modification (to turn selector changes into ADDED/DELETED).
    previous: Option<Value>,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<(Resource, String, String), Value>,
    history: Vec<Change>,
    /// Watches from before this version get 410 Gone.
    compacted: u64,
    /// Watch requests are refused (a broken API server) while set.
    refuse_watches: bool,
    /// Events (events.k8s.io/v1) created, with their series patches merged in.
    events: Vec<Value>,
}

type Shared = Arc<(Mutex<Store>, broadcast::Sender<Change>)>;

/// The server; see the module doc.
pub struct ApiServer {
    shared: Shared,
    runtime: Option<tokio::runtime::Runtime>,
    node_netns: String,
    /// Where the proxy reaches it (inside the node namespace).
    pub node_addr: SocketAddr,
    /// Where the test reaches it.
    pub local_addr: SocketAddr,
}

/// Binds `addr`, waiting up to 5 s for a stopped server's runtime (shut down in the background)
/// to release it.
fn bind_retrying(addr: SocketAddr) -> TcpListener {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) if std::time::Instant::now() > deadline => panic!("bind {addr}: {e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

/// Binds `127.0.0.1:port` inside a network namespace: a short-lived thread enters it, binds, and
/// hands the socket back (the socket stays in that namespace).
fn bind_in_netns(netns: &str, port: u16) -> TcpListener {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let lo = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        assert!(lo.is_ok_and(|s| s.success()));
        bind_retrying(SocketAddr::from(([127, 0, 0, 1], port)))
    })
    .join()
    .expect("bind thread")
}

impl ApiServer {
    /// Starts serving, reachable from the node namespace `node_netns`.
    pub fn start(node_netns: &str) -> ApiServer {
        let (tx, _) = broadcast::channel(4096);
        let shared: Shared = Arc::new((Mutex::new(Store::default()), tx));
        let node = bind_in_netns(node_netns, 0);
        let local = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let mut server = ApiServer {
            shared,
            runtime: None,
            node_netns: node_netns.to_string(),
            node_addr: node.local_addr().expect("addr"),
            local_addr: local.local_addr().expect("addr"),
        };
        server.serve(node, local);
        server
    }

    fn serve(&mut self, node: TcpListener, local: TcpListener) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        for listener in [node, local] {
            listener.set_nonblocking(true).expect("nonblocking");
            let app = router(self.shared.clone());
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let _ = axum::serve(listener, app).await;
            });
        }
        self.runtime = Some(runtime);
    }

    /// Kills the server: every connection drops, nothing answers.
    pub fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Serves again on the same addresses with the same store.
    pub fn restart(&mut self) {
        self.stop();
        let node = bind_in_netns(&self.node_netns, self.node_addr.port());
        let local = bind_retrying(self.local_addr);
        self.serve(node, local);
    }

    /// A kube client for the test.
    pub fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.local_addr).parse().expect("url");
        kube::Client::try_from(kube::Config::new(url)).expect("client")
    }

    /// The URL the proxy uses (`--master`).
    pub fn node_url(&self) -> String {
        format!("http://{}", self.node_addr)
    }

    /// Forgets the history up to now: watches resuming from before get 410 Gone.
    pub fn compact(&self) {
        let mut store = self.shared.0.lock().expect("store");
        store.compacted = store.rv;
        store.history.clear();
    }

    /// Refuses watch requests (500) while set; lists still work.
    pub fn refuse_watches(&self, refuse: bool) {
        self.shared.0.lock().expect("store").refuse_watches = refuse;
    }

    /// Changes the store directly, recording the change as the API server would.
    pub fn put(&self, resource: Resource, object: Value) {
        upsert(&self.shared, resource, object);
    }

    pub fn remove(&self, resource: Resource, namespace: &str, name: &str) {
        remove(&self.shared, resource, namespace, name);
    }

    /// The stored object (`Null` if there is none).
    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Value {
        self.shared
            .0
            .lock()
            .expect("store")
            .objects
            .get(&key(resource, namespace, name))
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// The Events created so far.
    pub fn events(&self) -> Vec<Value> {
        self.shared.0.lock().expect("store").events.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn key(resource: Resource, namespace: &str, name: &str) -> (Resource, String, String) {
    let ns = if resource == Resource::Nodes {
        ""
    } else {
        namespace
    };
    (resource, ns.to_string(), name.to_string())
}

fn record(
    shared: &Shared,
    store: &mut Store,
    resource: Resource,
    kind: &'static str,
    object: Value,
    previous: Option<Value>,
) {
    let change = Change {
        rv: store.rv,
        resource,
        kind,
        object,
        previous,
    };
    store.history.push(change.clone());
    let _ = shared.1.send(change);
}

/// Creates or replaces; returns the stored object and whether it was created.
fn upsert(shared: &Shared, resource: Resource, mut object: Value) -> (Value, bool) {
    let mut store = shared.0.lock().expect("store");
    store.rv += 1;
    let rv = store.rv;
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if resource != Resource::Nodes {
        object["metadata"]["namespace"] = namespace.clone().into();
    }
    object["metadata"]["resourceVersion"] = rv.to_string().into();
    object["metadata"]["uid"] = format!("uid-{name}-{rv}").into();
    object["apiVersion"] = resource.api_version().into();
    object["kind"] = resource.kind().into();
    let previous = store
        .objects
        .insert(key(resource, &namespace, &name), object.clone());
    let created = previous.is_none();
    let kind = if created { "ADDED" } else { "MODIFIED" };
    record(shared, &mut store, resource, kind, object.clone(), previous);
    (object, created)
}

fn remove(shared: &Shared, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
    let mut store = shared.0.lock().expect("store");
    let mut object = store.objects.remove(&key(resource, namespace, name))?;
    store.rv += 1;
    object["metadata"]["resourceVersion"] = store.rv.to_string().into();
    record(
        shared,
        &mut store,
        resource,
        "DELETED",
        object.clone(),
        None,
    );
    Some(object)
}

/// `a`, `!a`, `a=b`, `a==b`, `a!=b`, comma-separated.
fn labels_match(selector: &str, labels: &Value) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            if let Some(key) = term.strip_prefix('!') {
                labels.get(key).is_none()
            } else if let Some((k, v)) = term.split_once("!=") {
                labels.get(k).and_then(Value::as_str) != Some(v)
            } else if let Some((k, v)) = term.split_once('=') {
                labels.get(k).and_then(Value::as_str) == Some(v.trim_start_matches('='))
            } else {
                labels.get(term).is_some()
            }
        })
}

/// `spec.clusterIP!=None`, `metadata.name=x`, comma-separated.
fn fields_match(selector: &str, object: &Value) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            let (path, value, equal) = match term.split_once("!=") {
                Some((p, v)) => (p, v, false),
                None => match term.split_once('=') {
                    Some((p, v)) => (p, v.trim_start_matches('='), true),
                    None => return false,
                },
            };
            let mut at = object;
            for part in path.split('.') {
                at = &at[part];
            }
            let actual = at.as_str().unwrap_or("");
            (actual == value) == equal
        })
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    watch: Option<String>,
    resource_version: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
    timeout_seconds: Option<u64>,
}

impl ListParams {
    fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.label_selector
            .as_deref()
            .is_none_or(|s| labels_match(s, labels))
            && self
                .field_selector
                .as_deref()
                .is_none_or(|s| fields_match(s, object))
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code.as_u16()});
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(code: StatusCode, body: Value) -> Response {
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn list_or_watch(shared: Shared, resource: Resource, params: ListParams) -> Response {
    if params
        .watch
        .as_deref()
        .is_some_and(|w| w == "true" || w == "1")
    {
        return watch(shared, resource, params);
    }
    let store = shared.0.lock().expect("store");
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((r, _, _), o)| *r == resource && params.matches(o))
        .map(|(_, o)| o.clone())
        .collect();
    ok(
        StatusCode::OK,
        json!({"apiVersion": resource.api_version(), "kind": format!("{}List", resource.kind()),
               "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}),
    )
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

fn watch(shared: Shared, resource: Resource, params: ListParams) -> Response {
    let since: u64 = params
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (backlog, mut live, compacted, refused, current) = {
        let store = shared.0.lock().expect("store");
        let backlog: Vec<Change> = store
            .history
            .iter()
            .filter(|c| c.rv > since)
            .cloned()
            .collect();
        (
            backlog,
            shared.1.subscribe(),
            store.compacted,
            store.refuse_watches,
            store.rv,
        )
    };
    if refused {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "watches are refused",
        );
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let timeout = Duration::from_secs(params.timeout_seconds.unwrap_or(290).min(30));
    tokio::spawn(async move {
        if since != 0 && since < compacted {
            let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": format!("too old resource version: {since} ({compacted})"),
                              "reason": "Expired", "code": 410});
            let _ = tx.send(line("ERROR", &gone)).await;
            return;
        }
        let mut last = since.max(if since == 0 { current } else { 0 });
        let emit = |c: &Change| -> Option<Bytes> {
            if c.resource != resource {
                return None;
            }
            let now = params.matches(&c.object);
            let before = c.previous.as_ref().is_some_and(|p| params.matches(p));
            let kind = match (c.kind, before, now) {
                ("MODIFIED", false, true) => "ADDED",
                ("MODIFIED", true, false) => "DELETED",
                ("MODIFIED", false, false) => return None,
                (k, _, true) => k,
                _ => return None,
            };
            Some(line(kind, &c.object))
        };
        for c in &backlog {
            if c.rv > last {
                last = c.rv;
                if let Some(b) = emit(c)
                    && tx.send(b).await.is_err()
                {
                    return;
                }
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut bookmark = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = bookmark.tick() => {
                    let mark = json!({"kind": resource.kind(), "apiVersion": resource.api_version(),
                                      "metadata": {"resourceVersion": last.to_string()}});
                    if tx.send(line("BOOKMARK", &mark)).await.is_err() { return; }
                }
                change = live.recv() => match change {
                    Ok(c) if c.rv > last => {
                        last = c.rv;
                        if let Some(b) = emit(&c) && tx.send(b).await.is_err() { return; }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| {
            status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "response",
            )
        })
}

async fn create(
    shared: Shared,
    resource: Resource,
    namespace: String,
    mut object: Value,
) -> Response {
    if resource != Resource::Nodes {
        object["metadata"]["namespace"] = namespace.clone().into();
    }
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if shared
        .0
        .lock()
        .expect("store")
        .objects
        .contains_key(&key(resource, &namespace, &name))
    {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{name} already exists"),
        );
    }
    let (stored, _) = upsert(&shared, resource, object);
    ok(StatusCode::CREATED, stored)
}

async fn one(
    shared: Shared,
    resource: Resource,
    namespace: String,
    name: String,
    method: &str,
    body: Option<Value>,
) -> Response {
    let exists = shared
        .0
        .lock()
        .expect("store")
        .objects
        .get(&key(resource, &namespace, &name))
        .cloned();
    match (method, exists) {
        (_, None) => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{name} not found"),
        ),
        ("GET", Some(o)) => ok(StatusCode::OK, o),
        ("PUT", Some(_)) => {
            let mut object = body.unwrap_or_default();
            if resource != Resource::Nodes {
                object["metadata"]["namespace"] = namespace.into();
            }
            ok(StatusCode::OK, upsert(&shared, resource, object).0)
        }
        ("DELETE", Some(_)) => match remove(&shared, resource, &namespace, &name) {
            Some(o) => ok(StatusCode::OK, o),
            None => status(StatusCode::NOT_FOUND, "NotFound", &name),
        },
        _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", method),
    }
}

/// `POST …/events`: stores the Event.
async fn create_event(shared: Shared, namespace: String, body: Bytes) -> Response {
    let Ok(mut event) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
    };
    event["metadata"]["namespace"] = namespace.into();
    shared.0.lock().expect("store").events.push(event.clone());
    ok(StatusCode::CREATED, event)
}

/// `PATCH …/events/{name}` (merge patch): the recorder's series updates.
async fn patch_event(shared: Shared, name: String, body: Bytes) -> Response {
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
    };
    let mut store = shared.0.lock().expect("store");
    let Some(event) = store
        .events
        .iter_mut()
        .find(|e| e["metadata"]["name"] == name.as_str())
    else {
        return status(StatusCode::NOT_FOUND, "NotFound", &name);
    };
    if let (Some(target), Some(fields)) = (event.as_object_mut(), patch.as_object()) {
        for (k, v) in fields {
            target.insert(k.clone(), v.clone());
        }
    }
    ok(StatusCode::OK, event.clone())
}

fn router(shared: Shared) -> Router {
    let collection = |resource: Resource| {
        get(
            move |State(s): State<Shared>, Query(p): Query<ListParams>| {
                list_or_watch(s, resource, p)
            },
        )
    };
    let namespaced = |resource: Resource| {
        get(
            move |State(s): State<Shared>, Query(p): Query<ListParams>| {
                list_or_watch(s, resource, p)
            },
        )
        .post(
            move |State(s): State<Shared>,
                  Path(ns): Path<String>,
                  axum::Json(body): axum::Json<Value>| {
                create(s, resource, ns, body)
            },
        )
    };
    let item = |resource: Resource| {
        get(
            move |State(s): State<Shared>, Path((ns, name)): Path<(String, String)>| {
                one(s, resource, ns, name, "GET", None)
            },
        )
        .put(
            move |State(s): State<Shared>,
                  Path((ns, name)): Path<(String, String)>,
                  axum::Json(b): axum::Json<Value>| {
                one(s, resource, ns, name, "PUT", Some(b))
            },
        )
        .delete(
            move |State(s): State<Shared>, Path((ns, name)): Path<(String, String)>| {
                one(s, resource, ns, name, "DELETE", None)
            },
        )
    };
    let node = get(move |State(s): State<Shared>, Path(name): Path<String>| {
        one(s, Resource::Nodes, String::new(), name, "GET", None)
    })
    .put(
        move |State(s): State<Shared>,
              Path(name): Path<String>,
              axum::Json(b): axum::Json<Value>| {
            one(s, Resource::Nodes, String::new(), name, "PUT", Some(b))
        },
    )
    .delete(move |State(s): State<Shared>, Path(name): Path<String>| {
        one(s, Resource::Nodes, String::new(), name, "DELETE", None)
    });
    Router::new()
        .route("/api/v1/services", collection(Resource::Services))
        .route(
            "/apis/discovery.k8s.io/v1/endpointslices",
            collection(Resource::EndpointSlices),
        )
        .route(
            "/api/v1/nodes",
            collection(Resource::Nodes).post(
                move |State(s): State<Shared>, axum::Json(body): axum::Json<Value>| {
                    create(s, Resource::Nodes, String::new(), body)
                },
            ),
        )
        .route("/api/v1/nodes/{name}", node)
        .route(
            "/api/v1/namespaces/{ns}/services",
            namespaced(Resource::Services),
        )
        .route(
            "/api/v1/namespaces/{ns}/services/{name}",
            item(Resource::Services),
        )
        .route(
            "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
            namespaced(Resource::EndpointSlices),
        )
        .route(
            "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/{name}",
            item(Resource::EndpointSlices),
        )
        .route(
            "/apis/events.k8s.io/v1/namespaces/{ns}/events",
            axum::routing::post(
                |State(s): State<Shared>, Path(ns): Path<String>, body: Bytes| {
                    create_event(s, ns, body)
                },
            ),
        )
        .route(
            "/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}",
            axum::routing::patch(
                |State(s): State<Shared>,
                 Path((_ns, name)): Path<(String, String)>,
                 body: Bytes| patch_event(s, name, body),
            ),
        )
        .with_state(shared)
}
