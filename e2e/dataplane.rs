//! The dataplane under change ("never lose traffic"): while a Service's endpoints are removed and
//! added back, established TCP connections are never reset — neither those to the endpoint that
//! stays nor those to endpoints that go (conntrack keeps established flows, as with kube-proxy;
//! only stale UDP flows are cleaned) — and new connections are always answered while at least one
//! endpoint is ready: never refused, never dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{Cluster, ECHO, From, addr, require_root};
use crate::objects::{service, slice};

const SVC4: &str = "10.96.0.80";
const SVC6: &str = "fd00:96::50";
const PORTS: [(&str, i32, &str); 1] = [("http", 80, "TCP")];
const TARGET: [(&str, i32, &str); 1] = [("http", 8080, "TCP")];
/// Pods 1-4 serve; pod 5 is the client.
const BACKENDS: usize = 4;
const CLIENT: usize = 5;

/// Every held connection lives this long, exchanging a line every `HOLD_INTERVAL_MS`.
const HOLD_SECS: u64 = 10;
const HOLD_INTERVAL_MS: u64 = 100;
/// Per family: at least this many held connections, more until every backend holds one.
const MIN_HELD: usize = 6;
const MAX_HELD: usize = 40;

/// New connections per family: one every 50 ms (about 20/s), each given 1 s, which is less than
/// the first SYN retransmission: a dropped SYN shows up as a timeout.
const NEW_COUNT: u32 = 140;
const NEW_INTERVAL_MS: u32 = 50;

/// The endpoint sets (pod numbers) the slices go through, one per `STEP`, `CYCLES` times: pods
/// 2-4 leave and come back in rotation, down to pod1 alone; pod1 never leaves.
const ROTATION: [&[usize]; 6] = [
    &[1, 3, 4],
    &[1, 4],
    &[1],
    &[1, 2],
    &[1, 2, 3],
    &[1, 2, 3, 4],
];
const CYCLES: usize = 2;
const STEP: Duration = Duration::from_millis(500);

/// A client process in the background with its output; killed on drop if still running.
struct Background {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Background {
    fn new(mut child: Child) -> Background {
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        Background { child, out }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        let _ = self.out.read_line(&mut line);
        line.trim().to_string()
    }

    /// The rest of the output, once the process has exited.
    fn finish(&mut self) -> Vec<String> {
        let mut rest = String::new();
        let _ = self.out.read_to_string(&mut rest);
        let _ = self.child.wait();
        rest.lines().map(str::to_string).collect()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A held connection: the backend it landed on and the client process holding it.
struct Held {
    to: String,
    backend: String,
    client: Background,
}

/// Opens one held connection from the client pod and waits until a backend has greeted it.
fn hold(c: &Cluster, to: &str) -> Held {
    let (secs, interval) = (HOLD_SECS.to_string(), HOLD_INTERVAL_MS.to_string());
    let child = c.pods[CLIENT - 1]
        .ns
        .spawn(&[ECHO, "hold", to, &secs, &interval], Stdio::inherit());
    let mut client = Background::new(child);
    let first = client.line();
    let Some(backend) = first.strip_prefix("connected ") else {
        panic!("held connection to {to} did not open: {first:?}");
    };
    Held {
        to: to.to_string(),
        backend: backend.to_string(),
        client,
    }
}

/// Writes the Service and one slice per family with the endpoints on `pods`.
fn write_endpoints(c: &Cluster, pods: &[usize]) {
    let v4: Vec<&str> = pods.iter().map(|&p| c.pods[p - 1].ip4.as_str()).collect();
    let v6: Vec<&str> = pods.iter().map(|&p| c.pods[p - 1].ip6.as_str()).collect();
    c.write(
        "svc.yaml",
        &[
            &service("svc", &[SVC4, SVC6], &PORTS),
            &slice("svc-v4", "svc", "IPv4", &TARGET, &v4),
            &slice("svc-v6", "svc", "IPv6", &TARGET, &v6),
        ],
    );
}

/// `(exchanges, errors, first error)` from `held NAME exchanges=N errors=M first_error=TEXT`.
fn parse_held(line: &str, backend: &str) -> (u64, u64, String) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |key: &str| -> Option<&str> {
        words
            .iter()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    };
    match (words.as_slice(), field("exchanges"), field("errors")) {
        (["held", name, ..], Some(exchanges), Some(errors)) if *name == backend => (
            exchanges.parse().expect("exchanges"),
            errors.parse().expect("errors"),
            field("first_error").unwrap_or("?").to_string(),
        ),
        _ => panic!("unexpected summary from a connection held to {backend}: {line:?}"),
    }
}

#[test]
fn established_connections_survive_and_new_ones_are_never_refused_while_endpoints_change() {
    require_root();
    let mut c = Cluster::new(CLIENT);
    for pod in 1..=BACKENDS {
        c.serve(pod, 8080);
    }
    let all: Vec<usize> = (1..=BACKENDS).collect();
    write_endpoints(&c, &all);
    c.start_proxy(&[]);
    c.settle();
    let targets = [addr(SVC4, 80), addr(SVC6, 80)];
    for to in &targets {
        c.wait_answered(From::Pod(CLIENT), "tcp", to, Duration::from_secs(5));
    }

    // Held connections: they land on random endpoints; open more until each backend holds one.
    let holds_started = Instant::now();
    let mut held: Vec<Held> = Vec::new();
    for to in &targets {
        let mut on: BTreeSet<String> = BTreeSet::new();
        let mut opened = 0;
        while opened < MIN_HELD || (on.len() < BACKENDS && opened < MAX_HELD) {
            let h = hold(&c, to);
            on.insert(h.backend.clone());
            held.push(h);
            opened += 1;
        }
        assert_eq!(
            on.len(),
            BACKENDS,
            "{opened} connections to {to} reached only {on:?}"
        );
    }

    // New connections all through the changes.
    let mut streams: Vec<(String, Background)> = targets
        .iter()
        .map(|to| {
            let child =
                c.connect_in_background(From::Pod(CLIENT), "tcp", to, NEW_COUNT, NEW_INTERVAL_MS);
            (to.clone(), Background::new(child))
        })
        .collect();

    // The changes: every state must reach the kernel before the next one is written.
    let churn_started = Instant::now();
    let mut steps = 0;
    for _ in 0..CYCLES {
        for pods in ROTATION {
            let step = Instant::now();
            write_endpoints(&c, pods);
            c.settle();
            steps += 1;
            thread::sleep(STEP.saturating_sub(step.elapsed()));
        }
    }
    let churn = churn_started.elapsed();
    assert!(
        holds_started.elapsed() < Duration::from_secs(HOLD_SECS),
        "the changes took {churn:?} and outlasted the held connections: the test proves less"
    );

    // New connections: every one answered by a backend.
    let mut attempts = 0;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems: Vec<String> = Vec::new();
    for (to, stream) in &mut streams {
        let lines = stream.finish();
        if lines.len() != NEW_COUNT as usize {
            problems.push(format!(
                "{} of {NEW_COUNT} new connections to {to} reported",
                lines.len()
            ));
        }
        let mut failed = Vec::new();
        for line in &lines {
            attempts += 1;
            let outcome = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["ok", name, _peer, _ms] => format!("ok {name}"),
                [kind, ..] => {
                    failed.push(line.as_str());
                    kind.to_string()
                }
                [] => "empty".to_string(),
            };
            *outcomes.entry(outcome).or_default() += 1;
        }
        if !failed.is_empty() {
            problems.push(format!(
                "{} of {} new connections to {to} failed while pod1 stayed ready, first: {:?}",
                failed.len(),
                lines.len(),
                &failed[..failed.len().min(5)]
            ));
        }
    }

    // Held connections: every one kept working on its own backend until the end.
    let mut exchanges = 0;
    let min_exchanges = HOLD_SECS * 1000 / HOLD_INTERVAL_MS / 2;
    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    for h in &mut held {
        let lines = h.client.finish();
        let summary = lines.last().map(String::as_str).unwrap_or("(nothing)");
        let (n, errors, _) = parse_held(summary, &h.backend);
        if errors > 0 {
            problems.push(format!("the connection held to {} broke: {summary}", h.to));
        } else if n < min_exchanges {
            problems.push(format!(
                "the connection held to {} made only {n} exchanges: {summary}",
                h.to
            ));
        }
        exchanges += n;
        *per_backend
            .entry(format!("{} {}", h.to, h.backend))
            .or_default() += 1;
    }
    assert!(
        problems.is_empty(),
        "traffic was lost during {steps} endpoint changes in {churn:?}:\n{}\n\
         held connections: {per_backend:?}; new connections: {outcomes:?}",
        problems.join("\n")
    );

    // The proxy really went through the changes and is back at all four endpoints.
    c.settle();
    eprintln!(
        "{steps} endpoint changes in {churn:?}; {} held connections ({per_backend:?}) made \
         {exchanges} exchanges without an error; {attempts} new connections: {outcomes:?}",
        held.len()
    );
}
