//! The workload: N ClusterIP Services with one TCP port and 10 endpoints each (3 nodes), as model
//! objects for the in-process runs and as manifests for the daemon runs, and the changes applied
//! to them (one endpoint replaced, a Service added or removed).

use std::path::Path;

use serde_json::{Value, json};

use kube_nft_proxy::fixtures::{NodeBuilder, ServiceBuilder, SliceBuilder};
use kube_nft_proxy::model::{Object, ObjectId};
use kube_nft_proxy::state::Change;

pub const ENDPOINTS: usize = 10;
pub const NODE: &str = "node-0";
/// Services per manifest file.
const PER_FILE: usize = 1000;

/// The ClusterIP of Service `i` (172.16.0.0/12 holds a million).
fn cluster_ip(i: usize) -> String {
    format!("172.{}.{}.{}", 16 + i / 65_536, i / 256 % 256, i % 256)
}

/// The address of endpoint `e` of Service `i`, moved by `generation` (10.0.0.0/8).
fn endpoint_ip(i: usize, e: usize, generation: usize) -> String {
    let n = (i * ENDPOINTS + e + generation * 7_919) % (1 << 24);
    format!("10.{}.{}.{}", n >> 16, (n >> 8) & 0xff, n & 0xff)
}

pub fn service(i: usize) -> ServiceBuilder {
    ServiceBuilder::new("scale", &format!("svc-{i}"))
        .cluster_ip(&cluster_ip(i))
        .port("http", 80, "TCP")
}

/// Service `i`'s slice; `generation` > 0 replaces endpoint `generation % 10` by a new address.
pub fn slice(i: usize, generation: usize) -> SliceBuilder {
    let mut b = SliceBuilder::new("scale", &format!("svc-{i}-1"), &format!("svc-{i}"), "IPv4")
        .port("http", 8080, "TCP");
    for e in 0..ENDPOINTS {
        let moved = generation > 0 && e == generation % ENDPOINTS;
        let ip = endpoint_ip(i, e, if moved { generation } else { 0 });
        b = b.endpoint(&ip, &format!("node-{}", e % 3));
    }
    b
}

fn node() -> NodeBuilder {
    NodeBuilder::new(NODE).address("192.168.0.10")
}

fn upsert_service(b: ServiceBuilder) -> Change {
    Change::Upsert(Object::Service(b.model().expect("valid service")))
}

fn upsert_slice(b: SliceBuilder) -> Change {
    Change::Upsert(Object::EndpointSlice(b.model().expect("valid slice")))
}

/// Every object of a cluster with `n` Services.
pub fn all(n: usize) -> Vec<Change> {
    let mut out = Vec::with_capacity(2 * n + 1);
    out.push(Change::Upsert(Object::Node(node().model().expect("node"))));
    for i in 0..n {
        out.push(upsert_service(service(i)));
        out.push(upsert_slice(slice(i, 0)));
    }
    out
}

/// Service `i`'s slice with one endpoint replaced.
pub fn endpoint_change(i: usize, generation: usize) -> Vec<Change> {
    vec![upsert_slice(slice(i, generation))]
}

/// A new Service `i` with its slice.
pub fn add(i: usize) -> Vec<Change> {
    vec![upsert_service(service(i)), upsert_slice(slice(i, 0))]
}

/// Service `i` and its slice deleted.
pub fn delete(i: usize) -> Vec<Change> {
    vec![
        Change::Delete(ObjectId::EndpointSlice {
            namespace: "scale".into(),
            name: format!("svc-{i}-1"),
        }),
        Change::Delete(ObjectId::Service {
            namespace: "scale".into(),
            name: format!("svc-{i}"),
        }),
    ]
}

/// The manifest file holding Service `i`.
pub fn file_of(i: usize) -> String {
    format!("services-{:03}.json", i / PER_FILE)
}

/// Writes the manifests of `n` Services into `dir`; `generations` overrides slices.
pub fn write_manifests(dir: &Path, n: usize, generations: &[(usize, usize)]) {
    std::fs::create_dir_all(dir).expect("manifest dir");
    std::fs::write(
        dir.join("node.json"),
        serde_json::to_vec(node().json()).expect("json"),
    )
    .expect("write node");
    for first in (0..n).step_by(PER_FILE) {
        write_file(dir, first, n, generations);
    }
}

/// Rewrites the file holding Service `first` (with the given slice generations).
pub fn write_file(dir: &Path, i: usize, n: usize, generations: &[(usize, usize)]) {
    let first = i / PER_FILE * PER_FILE;
    let mut items: Vec<Value> = Vec::with_capacity(2 * PER_FILE);
    for s in first..(first + PER_FILE).min(n) {
        let generation = generations
            .iter()
            .rev()
            .find(|(svc, _)| *svc == s)
            .map_or(0, |(_, g)| *g);
        items.push(service(s).json().clone());
        items.push(slice(s, generation).json().clone());
    }
    let doc = json!({"apiVersion": "v1", "kind": "List", "items": items});
    // Write elsewhere and rename, so the proxy never reads a half-written file.
    let tmp = dir.join(format!(".{}.tmp", file_of(first)));
    std::fs::write(&tmp, serde_json::to_vec(&doc).expect("json")).expect("write manifest");
    std::fs::rename(&tmp, dir.join(file_of(first))).expect("rename manifest");
}
