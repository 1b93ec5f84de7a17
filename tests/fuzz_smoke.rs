//! Stable-toolchain smoke run of the fuzz targets in `fuzz/` (cargo-fuzz needs nightly; CI has
//! only stable). It includes the targets' shared code and runs each target body over its seed
//! corpus and a few thousand deterministic pseudo-random inputs, then the hostile cases of the
//! "never lose traffic" issue: nft-syntax injection in every text field, 100,000 endpoints in one
//! Service, duplicate and conflicting slices, 2 MiB manifests and YAML alias bombs. Samples of
//! the rendered scripts are checked with `nft -c -f -` when nft exists and we are root (`-c`
//! only checks; nothing is ever applied). A failing input is written to
//! `target/tmp/fuzz-smoke/` for `cargo +nightly fuzz run <target> <file>`.

#[path = "../fuzz/src/lib.rs"]
mod fuzz;

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use fuzz::input::{HOSTILE, bulk_address};
use fuzz::mutate::{Rng, mutate};
use fuzz::targets::{self, Rendered, default_settings, node_settings, render_all};
use kube_nft_proxy::fixtures::{NodeBuilder, ServiceBuilder, SliceBuilder};
use kube_nft_proxy::model::{Label, Object, ServiceKey};
use kube_nft_proxy::plan::plan_service;
use kube_nft_proxy::render::Renderer;
use kube_nft_proxy::ruleset::desired::Item;
use kube_nft_proxy::source::manifest::{self, Format, MAX_FILE_BYTES, Outcome};
use kube_nft_proxy::state::{Change, State};
use serde_json::{Value, json};

/// Pseudo-random inputs per target (deterministic: the same inputs on every run).
const MANIFEST_MUTATIONS: usize = 1500;
const OBJECTS_INPUTS: usize = 1200;
const CHURN_INPUTS: usize = 500;
/// Every how many `objects` inputs a script goes through `nft -c`.
const NFT_SAMPLE_EVERY: usize = 100;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files of a directory, sorted by name.
fn files(dir: &Path, ext: &[&str]) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.retain(|p| {
        p.is_file()
            && (ext.is_empty() || p.extension().is_some_and(|e| ext.iter().any(|x| e == *x)))
    });
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).expect("readable"))
        .collect()
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let seeds = files(&repo().join("fuzz/corpus").join(target), &[]);
    assert!(!seeds.is_empty(), "fuzz/corpus/{target} has no seeds");
    seeds
}

/// Runs `body` on every input; a panic fails the test after the others ran, with the inputs
/// saved for reproduction.
fn run_all(target: &str, inputs: &[Vec<u8>], body: impl Fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-smoke");
    let mut failures = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        if catch_unwind(AssertUnwindSafe(|| body(input))).is_err() {
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("{target}-{i}.bin"));
            let _ = std::fs::write(&path, input);
            failures.push(path.display().to_string());
            if failures.len() >= 5 {
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "target {target} failed on (reproduce with `cargo +nightly fuzz run {target} FILE` in fuzz/): {failures:#?}"
    );
}

/// Whether `nft -c` can be used: nft exists and we are root (it checks against the kernel).
fn nft_usable() -> bool {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    });
    root && Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `nft -c -f -` on a script, in a table of its own name so it can never touch a real table
/// (and `-c` never commits anything). `None` when nft cannot be used here.
fn nft_check(script: &str) -> Option<Result<(), String>> {
    if !nft_usable() {
        return None;
    }
    let text = script
        .replace(" ip kube-nft-proxy ", " ip kube-nft-proxy-fuzz-check ")
        .replace(" ip6 kube-nft-proxy ", " ip6 kube-nft-proxy-fuzz-check ");
    let mut child = Command::new("nft")
        .args(["-c", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().ok()?;
    let _ = writer.join();
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr)
            .chars()
            .take(4000)
            .collect())
    })
}

fn assert_nft_accepts(what: &str, script: &str) {
    if let Some(Err(e)) = nft_check(script) {
        let path =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-smoke-{what}.nft"));
        let _ = std::fs::write(&path, script);
        panic!(
            "nft -c refuses the script of {what} (saved as {}): {e}",
            path.display()
        );
    }
}

#[test]
fn manifest_target_on_seeds_and_mutations() {
    let mut seeds = corpus("manifest");
    seeds.extend(files(&repo().join("examples"), &["yaml", "json"]));
    let mut rng = Rng::new(0x6d61_6e69);
    let mut inputs = seeds.clone();
    for i in 0..MANIFEST_MUTATIONS {
        let mut input = seeds[i % seeds.len()].clone();
        mutate(&mut rng, &mut input, &seeds);
        inputs.push(input);
    }
    run_all("manifest", &inputs, targets::manifest);
    // The examples render, and nft accepts the result.
    for example in files(&repo().join("examples"), &["yaml"]) {
        let rendered = targets::manifest_rendered(&example).expect("examples parse");
        assert!(rendered.services > 0);
        assert_nft_accepts("example", &rendered.script);
    }
}

/// A target's seeds, then `count` inputs: every `mutated_every`-th a mutated seed, the others
/// random bytes of up to `max_len`.
fn seeded_inputs(
    target: &str,
    seed: u64,
    count: usize,
    mutated_every: usize,
    max_len: usize,
) -> Vec<Vec<u8>> {
    let seeds = corpus(target);
    let mut rng = Rng::new(seed);
    let mut inputs = seeds.clone();
    for i in 0..count {
        if i % mutated_every == 0 {
            let mut input = seeds[i % seeds.len()].clone();
            mutate(&mut rng, &mut input, &seeds);
            inputs.push(input);
        } else {
            let len = 8 + rng.below(max_len);
            inputs.push(rng.bytes(len));
        }
    }
    inputs
}

#[test]
fn objects_target_on_seeds_and_random_inputs() {
    let inputs = seeded_inputs("objects", 0x6f62_6a73, OBJECTS_INPUTS, 3, 600);
    run_all("objects", &inputs, targets::objects);
    // Some inputs produce services; a sample of scripts goes through nft.
    let mut services = 0;
    for (i, input) in inputs.iter().enumerate() {
        if i % NFT_SAMPLE_EVERY == 0 {
            let rendered = targets::objects_rendered(input);
            services += rendered.services;
            assert_nft_accepts(&format!("objects-{i}"), &rendered.script);
        }
    }
    assert!(services > 0, "the decoder never built a valid Service");
}

#[test]
fn churn_target_on_seeds_and_random_inputs() {
    let inputs = seeded_inputs("churn", 0x6368_726e, CHURN_INPUTS, 2, 800);
    run_all("churn", &inputs, targets::churn);
    let syncs: usize = inputs
        .iter()
        .take(50)
        .map(|i| targets::churn_syncs(i))
        .sum();
    assert!(syncs > 50, "inputs should hold several syncs each");
}

/// Sets `path` (segments, not a JSON pointer: keys may hold `/`) in a document.
fn set(doc: &mut Value, path: &[&str], value: Value) {
    let mut at = doc;
    for part in path {
        at = match part.parse::<usize>() {
            Ok(i) => {
                if !at.is_array() {
                    *at = json!([]);
                }
                let list = at.as_array_mut().expect("an array");
                while list.len() <= i {
                    list.push(Value::Null);
                }
                &mut list[i]
            }
            Err(_) => {
                if !at.is_object() {
                    *at = json!({});
                }
                &mut at[*part]
            }
        };
    }
    *at = value;
}

/// The scenario hostile values are planted in: a dual-stack LoadBalancer Service with a NodePort,
/// external IP, source range, affinity and two slices, this node, and a bystander Service in
/// another namespace that no hostile value may affect.
fn scenario() -> Vec<Value> {
    let web = ServiceBuilder::new("shop", "web")
        .cluster_ip("10.96.0.10")
        .cluster_ip("fd00:96::a")
        .port("http", 80, "TCP")
        .port("dns", 53, "UDP")
        .with("/spec/type", "LoadBalancer")
        .with("/spec/ports/0/nodePort", 30080)
        .with("/spec/ports/0/targetPort", "http")
        .with("/spec/externalIPs", json!(["203.0.113.7"]))
        .with("/spec/loadBalancerSourceRanges", json!(["203.0.113.0/24"]))
        .with(
            "/status/loadBalancer/ingress",
            json!([{"ip": "203.0.113.5"}]),
        )
        .with("/spec/externalTrafficPolicy", "Local")
        .with("/spec/internalTrafficPolicy", "Cluster")
        .with("/spec/sessionAffinity", "ClientIP")
        .with("/metadata/annotations", json!({"note": "x"}))
        .with("/metadata/labels", json!({"app": "web"}))
        .with("/metadata/uid", "0f1e2d3c-0000-0000-0000-000000000001");
    let v4 = SliceBuilder::new("shop", "web-1", "web", "IPv4")
        .port("http", 8080, "TCP")
        .port("dns", 5353, "UDP")
        .endpoint("10.244.1.5", "node-a")
        .endpoint("10.244.2.6", "node-b")
        .with("/endpoints/0/zone", "z1")
        .with(
            "/endpoints/0/hints",
            json!({"forZones": [{"name": "z1"}], "forNodes": [{"name": "node-a"}]}),
        )
        .with(
            "/metadata/annotations",
            json!({"endpoints.kubernetes.io/last-change-trigger-time": "2026-05-01T10:00:00Z"}),
        );
    let v6 = SliceBuilder::new("shop", "web-2", "web", "IPv6")
        .port("http", 8080, "TCP")
        .endpoint("fd00:244::5", "node-a");
    let node = NodeBuilder::new("node-a")
        .zone("z1")
        .address("192.168.1.10");
    let db = ServiceBuilder::new("other", "db")
        .cluster_ip("10.96.0.20")
        .port("pg", 5432, "TCP")
        .with("/spec/type", "NodePort")
        .with("/spec/ports/0/nodePort", 30432);
    let db_slice = SliceBuilder::new("other", "db-1", "db", "IPv4")
        .port("pg", 5432, "TCP")
        .endpoint("10.244.3.9", "node-b");
    [
        &web.json(),
        &v4.json(),
        &v6.json(),
        &node.json(),
        &db.json(),
        &db_slice.json(),
    ]
    .into_iter()
    .map(|d| (*d).clone())
    .collect()
}

/// Loads documents as one JSON `kind: List` through the manifest loader into a state.
fn load(docs: &[Value]) -> State {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": docs});
    let bytes = serde_json::to_vec(&list).expect("serialisable");
    let mut state = State::new(fuzz::input::NODE_NAME);
    for change in targets::load(&bytes, Format::Json).expect("a JSON list parses") {
        state.apply(change);
    }
    state
}

fn render(state: &State) -> Rendered {
    let settings = node_settings(&default_settings(), state.node().cloned());
    render_all(state, &settings)
}

fn bystander() -> ServiceKey {
    ServiceKey {
        namespace: Label::parse("other").expect("a label"),
        name: Label::parse("db").expect("a label"),
    }
}

/// The bystander's fragment, rendered on its own.
fn bystander_items(state: &State) -> Vec<Item> {
    let key = bystander();
    let settings = node_settings(&default_settings(), state.node().cloned());
    let service = state.service(&key).expect("the bystander is valid");
    let plan = plan_service(service, &state.slices_of(&key), &settings);
    Renderer::new()
        .expect("templates")
        .service(&plan, &settings)
        .expect("renders")
}

/// Every text field of the scenario's objects, as (document index, path).
const FIELDS: &[(usize, &[&str])] = &[
    (0, &["metadata", "name"]),
    (0, &["metadata", "namespace"]),
    (0, &["metadata", "uid"]),
    (0, &["metadata", "annotations", "note"]),
    (0, &["metadata", "labels", "app"]),
    (0, &["spec", "type"]),
    (0, &["spec", "clusterIP"]),
    (0, &["spec", "clusterIPs", "0"]),
    (0, &["spec", "clusterIPs", "1"]),
    (0, &["spec", "ports", "0", "name"]),
    (0, &["spec", "ports", "1", "name"]),
    (0, &["spec", "ports", "0", "protocol"]),
    (0, &["spec", "ports", "0", "targetPort"]),
    (0, &["spec", "externalIPs", "0"]),
    (0, &["spec", "loadBalancerSourceRanges", "0"]),
    (0, &["status", "loadBalancer", "ingress", "0", "ip"]),
    (0, &["status", "loadBalancer", "ingress", "0", "ipMode"]),
    (0, &["status", "loadBalancer", "ingress", "0", "hostname"]),
    (0, &["spec", "externalTrafficPolicy"]),
    (0, &["spec", "internalTrafficPolicy"]),
    (0, &["spec", "sessionAffinity"]),
    (1, &["metadata", "name"]),
    (1, &["metadata", "namespace"]),
    (1, &["metadata", "labels", "kubernetes.io/service-name"]),
    (
        1,
        &[
            "metadata",
            "annotations",
            "endpoints.kubernetes.io/last-change-trigger-time",
        ],
    ),
    (1, &["addressType"]),
    (1, &["ports", "0", "name"]),
    (1, &["ports", "0", "protocol"]),
    (1, &["endpoints", "0", "addresses", "0"]),
    (1, &["endpoints", "1", "addresses", "0"]),
    (1, &["endpoints", "0", "nodeName"]),
    (1, &["endpoints", "0", "zone"]),
    (1, &["endpoints", "0", "hints", "forZones", "0", "name"]),
    (1, &["endpoints", "0", "hints", "forNodes", "0", "name"]),
    (2, &["endpoints", "0", "addresses", "0"]),
    (3, &["metadata", "name"]),
    (3, &["metadata", "labels", "topology.kubernetes.io/zone"]),
    (3, &["status", "addresses", "0", "address"]),
];

/// Whether `text` could be written by the proxy on its own: names, addresses, keywords and the
/// spaces between them (and `[…]:port`) are made of these characters, so only a string with another character
/// proves an injection (the word-level script check covers the others).
fn could_be_proxy_text(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-:/ []".contains(&b))
}

#[test]
fn hostile_strings_in_every_text_field() {
    let clean = scenario();
    let baseline = render(&load(&clean));
    let baseline_bystander = bystander_items(&load(&clean));
    assert_eq!(baseline.services, 2);
    assert_nft_accepts("scenario", &baseline.script);
    let mut hostile: Vec<String> = HOSTILE.iter().map(|s| s.to_string()).collect();
    hostile.push("a".repeat(64));
    hostile.push("a".repeat(254));
    hostile.push(format!("web{}", "x".repeat(300)));
    let mut sampled = 0;
    for (doc, path) in FIELDS {
        // Every hostile value in this field, one Service (or slice, or node) per value: the
        // objects are copies of the scenario's with names of their own.
        let mut docs = clean.clone();
        for (i, h) in hostile.iter().enumerate() {
            let mut copy = clean[*doc].clone();
            if *doc != 3 && path != &["metadata", "name"] {
                let name = clean[*doc]["metadata"]["name"].as_str().unwrap_or("x");
                copy["metadata"]["name"] = format!("{name}-h{i}").into();
            }
            set(&mut copy, path, h.as_str().into());
            docs.push(copy);
        }
        // Keys are text too: the hostile strings as annotation and label keys.
        if *doc == 0 && path[1] == "annotations" {
            for (i, h) in hostile.iter().enumerate() {
                let mut copy = clean[0].clone();
                copy["metadata"]["name"] = format!("web-k{i}").into();
                set(
                    &mut copy,
                    &["metadata", "annotations", h.as_str()],
                    json!(h),
                );
                set(&mut copy, &["metadata", "labels", h.as_str()], json!(7));
                docs.push(copy);
            }
        }
        let state = load(&docs);
        let rendered = render(&state);
        assert!(
            rendered.services >= 2,
            "{path:?}: the clean objects must still render"
        );
        for h in &hostile {
            if h.len() >= 2 && !could_be_proxy_text(h) && !baseline.script.contains(h.as_str()) {
                assert!(
                    !rendered.script.contains(h.as_str()),
                    "{path:?}: {h:?} reached the script"
                );
            }
        }
        // The bystander in another namespace is untouched, and its elements stay in force.
        assert_eq!(bystander_items(&state), baseline_bystander, "{path:?}");
        for item in &baseline_bystander {
            if let Item::Element {
                family,
                set,
                key,
                value,
            } = item
            {
                assert_eq!(
                    rendered.ruleset.element(*family, set, key),
                    Some(value),
                    "{path:?}: the bystander lost {key}"
                );
            }
        }
        if sampled < 4 || path.contains(&"name") {
            sampled += 1;
            assert_nft_accepts(&format!("hostile-{}", path.join(".")), &rendered.script);
        }
    }
}

/// `n` endpoints of one Service, in slices of `per_slice`, half of them on this node.
fn big_service(n: usize, per_slice: usize) -> Vec<Value> {
    let svc = ServiceBuilder::new("big", "svc")
        .cluster_ip("10.96.5.5")
        .port("http", 80, "TCP");
    let mut docs = vec![svc.json().clone()];
    for (s, chunk) in (0..n).collect::<Vec<_>>().chunks(per_slice).enumerate() {
        let mut slice =
            SliceBuilder::new("big", &format!("svc-{s}"), "svc", "IPv4").port("http", 8080, "TCP");
        for i in chunk {
            let node = if i % 2 == 0 { "node-a" } else { "node-b" };
            slice = slice.endpoint(&bulk_address(*i, false), node);
        }
        docs.push(slice.json().clone());
    }
    docs
}

fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb / 1024)
}

#[test]
fn one_hundred_thousand_endpoints_in_one_service() {
    const N: usize = 100_000;
    let key = ServiceKey {
        namespace: Label::parse("big").expect("label"),
        name: Label::parse("svc").expect("label"),
    };
    let settings = node_settings(&default_settings(), None);
    let plan_of = |state: &State| {
        let service = state.service(&key).expect("valid");
        plan_service(service, &state.slices_of(&key), &settings)
    };
    // In slices of 1,000 (what the EndpointSlice controller writes): rendered and checked.
    let started = Instant::now();
    let state = load(&big_service(N, 1000));
    assert_eq!(state.slices_of(&key).len(), N / 1000);
    let rendered = render(&state);
    let empty = render(&State::new(fuzz::input::NODE_NAME));
    // cluster-ips and service-ips: 1 each; the endpoint map: one per endpoint; hairpin: the
    // endpoints on this node (a ClusterIP-only port: only local pods hairpin through here).
    let elements = rendered.stats.elements - empty.stats.elements;
    assert_eq!(elements, 1 + 1 + N + N / 2);
    // One service chain (DNAT through the map: no endpoint chains) and its map shard.
    assert_eq!(rendered.items, elements + 2);
    eprintln!(
        "{N} endpoints: {} script lines, {} bytes, {:?}, peak RSS {:?} MiB",
        rendered.stats.lines,
        rendered.script.len(),
        started.elapsed(),
        peak_rss_mib()
    );
    assert_nft_accepts("100k-endpoints", &rendered.script);
    // All in one slice (no controller writes that, a manifest can): the same plan.
    let one = load(&big_service(N, N));
    assert_eq!(one.slices_of(&key).len(), 1);
    assert_eq!(plan_of(&one), plan_of(&state));
    eprintln!("and in one slice: {:?} in all", started.elapsed());
    // The whole test process, other tests included, stays well below this.
    let peak = peak_rss_mib();
    assert!(peak.is_none_or(|m| m < 3072), "peak RSS {peak:?} MiB");
}

#[test]
fn duplicate_and_conflicting_slices() {
    let web = || {
        ServiceBuilder::new("ns", "web")
            .cluster_ip("10.96.0.10")
            .port("http", 80, "TCP")
    };
    let slice = |name: &str| SliceBuilder::new("ns", name, "web", "IPv4").port("http", 8080, "TCP");
    let lines = |r: &Rendered, what: &str| r.script.lines().filter(|l| l.contains(what)).count();

    // The same slice twice: the later one replaces the earlier.
    let docs = vec![
        web().json().clone(),
        slice("web-1")
            .endpoint("10.244.0.1", "node-a")
            .json()
            .clone(),
        slice("web-1")
            .endpoint("10.244.0.2", "node-b")
            .endpoint("10.244.0.3", "node-b")
            .json()
            .clone(),
    ];
    let r = render(&load(&docs));
    assert!(!r.script.contains("10.244.0.1"), "{}", r.script);
    assert!(r.script.contains("10.244.0.2") && r.script.contains("10.244.0.3"));

    // Two slices listing the same endpoints, with different conditions and nodes: each endpoint
    // once, the local copy wins.
    let docs = vec![
        web().json().clone(),
        slice("web-1")
            .endpoint_with("10.244.0.1", "node-b", false, false, false)
            .endpoint("10.244.0.2", "node-b")
            .json()
            .clone(),
        slice("web-2")
            .endpoint("10.244.0.1", "node-a")
            .endpoint("10.244.0.2", "node-b")
            .json()
            .clone(),
    ];
    let r = render(&load(&docs));
    assert!(
        r.script.contains(" : 10.244.0.1") && r.script.contains(" : 10.244.0.2"),
        "{}",
        r.script
    );
    assert_eq!(r.script.matches(" : 10.244.0.2").count(), 1, "{}", r.script);
    assert_nft_accepts("overlapping-slices", &r.script);

    // The same endpoint on two target ports (slices disagree): endpoint chains, both kept.
    let docs = vec![
        web().json().clone(),
        slice("web-1")
            .endpoint("10.244.0.1", "node-a")
            .json()
            .clone(),
        SliceBuilder::new("ns", "web-2", "web", "IPv4")
            .port("http", 9090, "TCP")
            .endpoint("10.244.0.1", "node-a")
            .json()
            .clone(),
    ];
    let r = render(&load(&docs));
    assert_eq!(
        lines(&r, "add chain ip kube-nft-proxy endpoint-ns/web/"),
        2,
        "{}",
        r.script
    );
    assert_nft_accepts("conflicting-ports", &r.script);

    // A slice of the other family, a slice whose address is of the wrong family (refused), a
    // slice without a Service label (refused), a slice moved to another Service.
    let docs = vec![
        web().json().clone(),
        SliceBuilder::new("ns", "web-6", "web", "IPv6")
            .port("http", 8080, "TCP")
            .endpoint("fd00::1", "node-a")
            .json()
            .clone(),
        slice("web-bad")
            .endpoint("fd00::2", "node-a")
            .json()
            .clone(),
        slice("web-nolabel")
            .endpoint("10.244.0.9", "node-a")
            .with("/metadata/labels", json!({}))
            .json()
            .clone(),
        slice("web-1")
            .endpoint("10.244.0.7", "node-a")
            .json()
            .clone(),
        SliceBuilder::new("ns", "web-1", "elsewhere", "IPv4")
            .port("http", 8080, "TCP")
            .endpoint("10.244.0.8", "node-a")
            .json()
            .clone(),
    ];
    let r = render(&load(&docs));
    for gone in [
        "fd00::1",
        "fd00::2",
        "10.244.0.9",
        "10.244.0.7",
        "10.244.0.8",
    ] {
        assert!(!r.script.contains(gone), "{gone}: {}", r.script);
    }
    assert!(
        r.script
            .contains("10.96.0.10 . tcp . 80 comment \"ns/web:http\" : goto reject-chain")
    );

    // Two Services with the same ClusterIP and port, and a third whose external IP is that
    // ClusterIP: they conflict over the shared maps' elements only (the first owner wins); each
    // keeps its own chains.
    let docs = vec![
        web().json().clone(),
        slice("web-1")
            .endpoint("10.244.0.1", "node-a")
            .json()
            .clone(),
        ServiceBuilder::new("ns", "copy")
            .cluster_ip("10.96.0.10")
            .port("http", 80, "TCP")
            .json()
            .clone(),
        SliceBuilder::new("ns", "copy-1", "copy", "IPv4")
            .port("http", 8080, "TCP")
            .endpoint("10.244.0.2", "node-a")
            .json()
            .clone(),
        ServiceBuilder::new("aaa", "thief")
            .cluster_ip("10.96.0.99")
            .port("http", 80, "TCP")
            .with("/spec/externalIPs", json!(["10.96.0.10"]))
            .json()
            .clone(),
        SliceBuilder::new("aaa", "thief-1", "thief", "IPv4")
            .port("http", 8080, "TCP")
            .endpoint("10.244.0.66", "node-a")
            .json()
            .clone(),
    ];
    let r = render(&load(&docs));
    assert!(r.conflicts >= 2, "conflicts: {}", r.conflicts);
    assert_eq!(
        lines(&r, "add chain ip kube-nft-proxy service-ns/web/tcp/http"),
        1
    );
    assert_eq!(
        lines(&r, "add chain ip kube-nft-proxy service-ns/copy/tcp/http"),
        1
    );
    assert_nft_accepts("conflicting-services", &r.script);

    // Many slices, each repeating the same 1,000 endpoints: counted once.
    let mut docs = vec![web().json().clone()];
    for s in 0..20 {
        let mut sl = slice(&format!("web-{s}"));
        for i in 0..1000 {
            sl = sl.endpoint(
                &bulk_address(i, false),
                if s % 2 == 0 { "node-a" } else { "node-b" },
            );
        }
        docs.push(sl.json().clone());
    }
    let r = render(&load(&docs));
    let empty = render(&State::new(fuzz::input::NODE_NAME));
    // cluster-ips, service-ips, 1,000 map entries and 1,000 hairpin entries (a local copy each).
    assert_eq!(r.stats.elements - empty.stats.elements, 2 + 1000 + 1000);
}

#[test]
fn two_mib_manifests() {
    const SIZE: usize = 2 * 1024 * 1024;
    // Many small objects in one YAML `kind: List`.
    let mut yaml = String::from("apiVersion: v1\nkind: List\nitems:\n");
    let mut count = 0;
    while yaml.len() < SIZE {
        yaml.push_str(&format!(
            "- {{apiVersion: v1, kind: Service, metadata: {{name: s{count}, namespace: bulk}}, spec: {{clusterIP: 10.97.{}.{}, ports: [{{name: http, port: 80}}]}}}}\n- {{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {{name: s{count}-1, namespace: bulk, labels: {{kubernetes.io/service-name: s{count}}}}}, addressType: IPv4, ports: [{{name: http, port: 8080}}], endpoints: [{{addresses: [10.98.{}.{}], nodeName: node-a}}]}}\n",
            count / 250,
            count % 250,
            count / 250,
            count % 250
        ));
        count += 1;
    }
    // As JSON the list loads and renders whole.
    let json_list = serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items":
        (0..count).flat_map(|i| [
            ServiceBuilder::new("bulk", &format!("s{i}")).cluster_ip(&format!("10.97.{}.{}", i / 250, i % 250)).port("http", 80, "TCP").json().clone(),
            SliceBuilder::new("bulk", &format!("s{i}-1"), &format!("s{i}"), "IPv4").port("http", 8080, "TCP").endpoint(&format!("10.98.{}.{}", i / 250, i % 250), "node-a").json().clone(),
        ]).collect::<Vec<_>>()}))
    .expect("serialisable");
    let started = Instant::now();
    let mut state = State::new(fuzz::input::NODE_NAME);
    for change in targets::load(&json_list, Format::Json).expect("parses") {
        state.apply(change);
    }
    eprintln!(
        "{} bytes of JSON list, {} Services: loaded in {:?}",
        json_list.len(),
        state.service_count(),
        started.elapsed()
    );
    assert_eq!(render(&state).services, count);
    // As YAML it is refused as a whole by serde-saphyr's node budget (a known issue, see
    // `yaml_manifests_up_to_the_file_size_limit`): never a panic, never half a file.
    match manifest::parse(yaml.as_bytes(), Format::Yaml) {
        Ok(found) => assert_eq!(found.len(), 2 * count),
        Err(e) => assert!(e.to_string().contains("budget"), "{e}"),
    }

    // 2 MiB in 1,000 documents (the most serde-saphyr reads by default is 1,024).
    let note = "x".repeat(SIZE / 1000);
    let mut docs = String::new();
    for i in 0..500 {
        docs.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: d{i}, namespace: bulk, annotations: {{note: {note}}}}}\nspec: {{clusterIP: 10.99.{}.{}, ports: [{{port: 80}}]}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}}}\ndata: {{note: {note}}}\n",
            i / 250,
            i % 250
        ));
    }
    assert!(docs.len() >= SIZE);
    let found = manifest::parse(docs.as_bytes(), Format::Yaml).expect("parses");
    assert_eq!(found.len(), 500);

    // One object with a 2 MiB annotation, as JSON and YAML.
    let mut big = ServiceBuilder::new("ns", "web")
        .cluster_ip("10.96.0.10")
        .port("http", 80, "TCP")
        .json()
        .clone();
    big["metadata"]["annotations"] = json!({"x": "}; flush ruleset; ".repeat(SIZE / 18)});
    let bytes = serde_json::to_vec(&big).expect("serialisable");
    for format in [Format::Json, Format::Yaml] {
        let found = manifest::parse(&bytes, format).expect("parses");
        assert!(matches!(
            found[..],
            [manifest::Found {
                outcome: Outcome::Valid(_),
                ..
            }]
        ));
    }
    targets::manifest(&bytes);

    // 2 MiB of mutated manifest text: refused or parsed, never a panic.
    let mut rng = Rng::new(0x326d_6962);
    let seeds = vec![yaml.as_bytes()[..4096].to_vec()];
    let mut garbage = yaml.clone().into_bytes();
    for _ in 0..50 {
        mutate(&mut rng, &mut garbage, &seeds);
    }
    targets::manifest(&garbage);

    // Past the size limit: refused before reading.
    let huge = vec![b' '; usize::try_from(MAX_FILE_BYTES).expect("fits") + 1];
    assert_eq!(
        manifest::parse(&huge, Format::Yaml),
        Err(manifest::ManifestError::TooLarge)
    );
}

/// Found by this suite: serde-saphyr's default budget refused a whole YAML file with more than
/// 1,024 documents or 250,000 nodes (about 25,000 endpoints), far below the loader's own 64 MiB
/// limit; the loader now scales the budget with the file.
#[test]
fn yaml_manifests_up_to_the_file_size_limit() {
    let docs = "---\napiVersion: v1\nkind: Node\nmetadata: {name: x}\n".repeat(1025);
    assert_eq!(
        manifest::parse(docs.as_bytes(), Format::Yaml).map(|f| f.len()),
        Ok(1025)
    );
    let mut slice = String::from(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-1, namespace: bulk, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n",
    );
    for i in 0..100_000 {
        slice.push_str(&format!(
            "- addresses: [{}]\n  nodeName: node-a\n",
            bulk_address(i, false)
        ));
    }
    assert_eq!(
        manifest::parse(slice.as_bytes(), Format::Yaml).map(|f| f.len()),
        Ok(1)
    );
    // 2 MiB of small objects in one list: about 9,000 objects, 280,000 nodes.
    let mut list = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for i in 0..10_000 {
        list.push_str(&format!(
            "- {{apiVersion: v1, kind: Service, metadata: {{name: s{i}, namespace: bulk}}, spec: {{clusterIP: 10.97.{}.{}, ports: [{{name: http, port: 80}}]}}}}\n",
            i / 250,
            i % 250
        ));
    }
    assert_eq!(
        manifest::parse(list.as_bytes(), Format::Yaml).map(|f| f.len()),
        Ok(10_000)
    );
}

#[test]
fn yaml_alias_amplification_is_bounded() {
    // An anchored Service repeated through nested lists: each level multiplies the objects.
    let mut yaml = String::from(
        "apiVersion: v1\nkind: List\nitems:\n- &s {apiVersion: v1, kind: Service, metadata: {name: a, namespace: b}, spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}}\n",
    );
    let mut previous = "s".to_string();
    for level in 0..4 {
        let refs = vec![format!("*{previous}"); 64].join(", ");
        yaml.push_str(&format!(
            "- &l{level} {{apiVersion: v1, kind: List, items: [{refs}]}}\n"
        ));
        previous = format!("l{level}");
    }
    let started = Instant::now();
    match manifest::parse(yaml.as_bytes(), Format::Yaml) {
        Ok(found) => {
            eprintln!(
                "{} bytes of YAML: {} objects in {:?}",
                yaml.len(),
                found.len(),
                started.elapsed()
            );
            assert!(found.len() <= targets::max_found(yaml.len()));
        }
        Err(e) => eprintln!(
            "{} bytes of YAML refused in {:?}: {e}",
            yaml.len(),
            started.elapsed()
        ),
    }
    targets::manifest(yaml.as_bytes());
}

#[test]
fn hostile_objects_through_the_typed_api_path() {
    // The API source converts typed objects directly (no manifest text): the same checks.
    let svc = |port: &str| {
        ServiceBuilder::new("ns", "web")
            .cluster_ip("10.96.0.10")
            .port(port, 80, "TCP")
            .port("b", 81, "TCP")
    };
    let slice = |port: &str, node: &str| {
        SliceBuilder::new("ns", "web-1", "web", "IPv4")
            .port(port, 8080, "TCP")
            .endpoint("10.244.0.1", node)
    };
    let apply = |state: &mut State, svc: &ServiceBuilder, slice: &SliceBuilder| {
        if let Some(model) = svc.model() {
            state.apply(Change::Upsert(Object::Service(model)));
        }
        if let Some(model) = slice.model() {
            state.apply(Change::Upsert(Object::EndpointSlice(model)));
        }
    };
    let mut state = State::new(fuzz::input::NODE_NAME);
    apply(&mut state, &svc("a"), &slice("a", "node-a"));
    let baseline = render(&state);
    for h in HOSTILE {
        apply(&mut state, &svc(h), &slice(h, h));
        let r = render(&state);
        if h.len() >= 2 && !could_be_proxy_text(h) && !baseline.script.contains(h) {
            assert!(!r.script.contains(h), "{h:?} reached the script");
        }
    }
}

/// Found by this suite: an invalid object's identity and field path reached log lines as written,
/// and tracing's text format escapes ANSI control characters but not line breaks, so a manifest
/// could forge log lines; object text is now escaped (`model::net::printable`).
#[test]
fn invalid_objects_are_logged_without_control_characters() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata:\n  name: \"web\\nINFO forged\"\n  labels: {\"a\\nINFO forged\": 1}\nspec: {clusterIP: 10.96.0.1}\n";
    for f in manifest::parse(yaml.as_bytes(), Format::Yaml).expect("parses") {
        assert!(!f.id.to_string().contains('\n'), "{:?}", f.id.to_string());
        if let Outcome::Invalid(e) = f.outcome {
            assert!(!e.to_string().contains('\n'), "{:?}", e.to_string());
        }
    }
}

/// The oracles themselves: injected text and objects of another Service are caught.
#[test]
fn the_checks_catch_what_they_claim_to() {
    use kube_nft_proxy::ruleset::{
        Chain, ChainName, ElementData, ElementKey, ElementValue, SetName, Verdict,
    };
    let any_name = |_: &str| true;
    let any_comment = |_: &str| true;
    let check = |text: &str| fuzz::check::script(text, &["add"], &any_name, &any_comment);
    let good = "add chain ip kube-nft-proxy service-ns/web/tcp/http\n";
    assert!(check(good).is_ok());
    for bad in [
        "add chain ip kube-nft-proxy service-ns/web/tcp/http ; flush ruleset\n",
        "add chain ip kube-nft-proxy service-ns/web/tcp/http # x\n",
        "add rule ip kube-nft-proxy services accept\nflush ruleset\n",
        "add rule ip kube-nft-proxy services ip daddr 10.0.0.1 }\n",
        "add rule ip kube-nft-proxy services comment \"x\n",
        "add rule ip kube-nft-proxy services ip daddr 10.0.0.1 \u{2028}\n",
        "add table inet filter\n",
        "add chain ip kube-nft-proxy service-ns/web/tcp/http",
    ] {
        assert!(check(bad).is_err(), "{bad:?} passed");
    }
    // Words that are neither template text nor typed values nor allowed names.
    let only_own = |n: &str| n.starts_with("service-ns/web/");
    for bad in [
        "add rule ip kube-nft-proxy service-ns/web/tcp/http goto service-other/db/tcp/pg\n",
        "add rule ip kube-nft-proxy service-ns/web/tcp/http ip daddr 10.0.0.1 counter\n",
        "add chain ip kube-nft-proxy service-other/db/tcp/pg\n",
    ] {
        assert!(
            fuzz::check::script(bad, &["add"], &only_own, &any_comment).is_err(),
            "{bad:?} passed"
        );
    }
    assert!(
        fuzz::check::script(
            "add element ip kube-nft-proxy service-ips { 10.0.0.1 . tcp . 80 comment \"knp:0\" }\n",
            &["add"],
            &any_name,
            &|c: &str| fuzz::check::vocabulary().fixed_comment(c),
        )
        .is_err()
    );

    // A fragment with another Service's chain, address or verdict.
    let state = load(&scenario());
    let settings = node_settings(&default_settings(), state.node().cloned());
    let renderer = Renderer::new().expect("templates");
    let base_items = renderer.base(&settings).expect("base");
    let base = fuzz::check::Base::new(&base_items);
    let key = ServiceKey {
        namespace: Label::parse("shop").expect("label"),
        name: Label::parse("web").expect("label"),
    };
    let service = state.service(&key).expect("valid");
    let slices = state.slices_of(&key);
    let plan = plan_service(service, &slices, &settings);
    let items = renderer.service(&plan, &settings).expect("renders");
    let fragment =
        |items: &[Item]| fuzz::check::fragment(&base, service, &slices, &plan, &settings, items);
    assert_eq!(fragment(&items), Ok(()));
    let family = kube_nft_proxy::model::Family::V4;
    let theirs = ChainName::new("service-other/db/tcp/pg").expect("a name");
    let service_ips = SetName::new("service-ips").expect("a name");
    let tampered = [
        Item::Chain {
            family,
            name: theirs.clone(),
            chain: std::sync::Arc::new(Chain::new(None, Vec::new())),
        },
        Item::Element {
            family,
            set: service_ips.clone(),
            key: ElementKey::AddrProtoPort(
                "10.96.0.20".parse().expect("an address"),
                kube_nft_proxy::model::Protocol::Tcp,
                5432,
            ),
            value: ElementValue::default(),
        },
        Item::Element {
            family,
            set: service_ips,
            key: ElementKey::AddrProtoPort(
                "10.96.0.10".parse().expect("an address"),
                kube_nft_proxy::model::Protocol::Tcp,
                80,
            ),
            value: ElementValue {
                data: ElementData::Verdict(Verdict::Goto(theirs)),
                comment: None,
            },
        },
    ];
    for extra in tampered {
        let mut items = items.clone();
        items.push(extra.clone());
        assert!(fragment(&items).is_err(), "{extra:?} passed");
    }
}
