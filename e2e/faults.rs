//! Faults the node throws at the proxy, end to end: other tools changing or deleting our tables
//! (noticed through nf_tables notifications and repaired), and the proxy killed in the middle of
//! a sync (traffic keeps flowing; the restarted proxy converges and rewrites nothing that is
//! right), and an API server that compacts its history under the watches (410 Gone storms) and
//! refuses watches (rules stay, memory stays bounded, every change arrives).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::apiserver::{ApiServer, Resource};
use crate::harness::{Cluster, From, addr, require_root, wait_for};
use crate::objects::{service, serving_web, slice};

const HTTP: [(&str, i32, &str); 1] = [("http", 80, "TCP")];
const TARGET: [(&str, i32, &str); 1] = [("http", 8080, "TCP")];
const WEB: &str = "10.96.0.10";

/// The value of the sample `series` in the proxy's metrics (0 if absent, or if the proxy does not
/// answer yet).
fn sample(c: &Cluster, series: &str) -> f64 {
    c.try_metrics()
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn external_changes(c: &Cluster) -> f64 {
    ["IPv4", "IPv6"]
        .iter()
        .map(|f| {
            sample(
                c,
                &format!("kubenftproxy_external_changes_total{{ip_family=\"{f}\"}}"),
            )
        })
        .sum()
}

/// Runs `tamper` and waits until the kernel holds our ruleset again; returns how long it took.
fn repaired_after(c: &Cluster, what: &str, tamper: &[&str]) -> Duration {
    let before = external_changes(c);
    c.nft(tamper).unwrap_or_else(|e| panic!("{what}: {e}"));
    let started = Instant::now();
    wait_for(
        &format!("the repair after {what}"),
        Duration::from_secs(10),
        || external_changes(c) > before,
    );
    c.settle();
    let took = started.elapsed();
    eprintln!("{what}: repaired in {} ms", took.as_millis());
    took
}

#[test]
fn tables_changed_by_others_are_restored_and_other_tables_are_left_alone() {
    let (mut c, pod1) = serving_web(2, WEB);
    c.start_proxy(&[]);
    c.wait_answered(From::Pod(2), "tcp", &addr(WEB, 80), Duration::from_secs(5));
    c.settle();
    // Another tool's table, which must survive everything below except its own flush.
    let other = || c.nft(&["list", "table", "inet", "other-tool"]);
    c.nft(&["add", "table", "inet", "other-tool"]).expect("add");
    c.nft(&["add", "chain", "inet", "other-tool", "input"])
        .expect("add");
    c.nft(&[
        "add",
        "rule",
        "inet",
        "other-tool",
        "input",
        "tcp",
        "dport",
        "9",
        "drop",
    ])
    .expect("add");
    let other_before = other().expect("list");

    // Our own syncs are not mistaken for tampering.
    let own = external_changes(&c);
    c.write(
        "web.yaml",
        &[
            &service("web", &[WEB], &HTTP),
            &slice("web-1", "web", "IPv4", &TARGET, &[&pod1, "10.244.9.9"]),
        ],
    );
    c.settle();
    assert_eq!(external_changes(&c), own, "our own commits are ours");

    repaired_after(
        &c,
        "a deleted table",
        &["delete", "table", "ip", "kube-nft-proxy"],
    );
    c.wait_answered(From::Pod(2), "tcp", &addr(WEB, 80), Duration::from_secs(5));
    repaired_after(
        &c,
        "a flushed chain",
        &["flush", "chain", "ip", "kube-nft-proxy", "services"],
    );
    repaired_after(
        &c,
        "a rule added to our chain",
        &["insert", "rule", "ip", "kube-nft-proxy", "services", "drop"],
    );
    repaired_after(
        &c,
        "a deleted map element",
        &[
            "delete",
            "element",
            "ip",
            "kube-nft-proxy",
            "service-ips",
            "{",
            WEB,
            ".",
            "tcp",
            ".",
            "80",
            "}",
        ],
    );
    repaired_after(
        &c,
        "a deleted IPv6 table",
        &["delete", "table", "ip6", "kube-nft-proxy"],
    );
    assert_eq!(
        other().expect("list"),
        other_before,
        "the other table is untouched"
    );

    repaired_after(&c, "nft flush ruleset", &["flush", "ruleset"]);
    assert!(other().is_err(), "we never re-create someone else's table");
    c.wait_answered(From::Pod(2), "tcp", &addr(WEB, 80), Duration::from_secs(5));
    assert!(c.proxy_running());
}

/// `count` Services `svc-<first>…` with one endpoint each (pod1), as one manifest.
fn services(first: usize, count: usize, pod: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    for i in first..first + count {
        let name = format!("svc-{i}");
        let ip = format!("10.96.{}.{}", 10 + i / 250, 1 + i % 250);
        docs.push(service(&name, &[&ip], &HTTP));
        docs.push(slice(&format!("{name}-1"), &name, "IPv4", &TARGET, &[pod]));
    }
    docs
}

fn write_services(c: &Cluster, file: &str, docs: &[Value]) {
    let refs: Vec<&Value> = docs.iter().collect();
    c.write(file, &refs);
}

#[test]
fn a_proxy_killed_mid_sync_keeps_traffic_and_its_successor_rewrites_nothing_right() {
    require_root();
    let mut c = Cluster::new(2);
    c.serve(1, 8080);
    let pod1 = c.pods[0].ip4.clone();
    write_services(&c, "first.yaml", &services(0, 400, &pod1));
    c.start_proxy(&[]);
    c.settle();
    let old = addr("10.96.10.1", 80);
    c.wait_answered(From::Pod(2), "tcp", &old, Duration::from_secs(5));

    // Large changes, each cut short by SIGKILL at a different moment: before the files are read,
    // while they are read and programmed, after.
    for (round, delay_ms) in [150u64, 600, 1000, 1400].into_iter().enumerate() {
        let first = 400 + round * 300;
        write_services(
            &c,
            &format!("round{round}.yaml"),
            &services(first, 300, &pod1),
        );
        std::thread::sleep(Duration::from_millis(delay_ms));
        c.kill_proxy();
        // Each transaction is atomic: whatever was committed stays, and traffic keeps flowing.
        c.wait_answered(From::Pod(2), "tcp", &old, Duration::from_secs(2));
        c.restart_proxy();
    }
    c.settle();
    c.wait_answered(
        From::Pod(2),
        "tcp",
        &addr("10.96.16.1", 80),
        Duration::from_secs(5),
    );

    // Killed again with nothing left to do: its successor writes nothing at all.
    c.kill_proxy();
    c.restart_proxy();
    wait_for(
        "the restarted proxy's first sync",
        Duration::from_secs(10),
        || {
            sample(
                &c,
                "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
            ) >= 1.0
        },
    );
    // Scraped strictly: the histogram is exported (with a zero count) from the start.
    let metrics = c.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l == "kubenftproxy_transaction_operations_count 0"),
        "adopting a correct kernel writes nothing:\n{metrics}"
    );
    c.settle();
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn api_storms_keep_the_rules_and_memory_bounded_and_converge() {
    require_root();
    let mut c = Cluster::new(2);
    c.serve(1, 8080);
    let pod1 = c.pods[0].ip4.clone();
    let api = ApiServer::start(&c.node.name);
    for doc in services(0, 200, &pod1) {
        let resource = if doc["kind"] == "Service" {
            Resource::Services
        } else {
            Resource::EndpointSlices
        };
        api.put(resource, doc);
    }
    c.start_proxy_api(&api.node_url());
    // A Service the storm does not change (the changes add endpoints that do not exist).
    let first = addr("10.96.10.151", 80);
    c.wait_answered(From::Pod(2), "tcp", &first, Duration::from_secs(10));
    let pid = c.proxy_pid().expect("pid");
    let baseline = rss_kib(pid);

    // Ten seconds of trouble: the history compacted under the watches again and again (410 Gone
    // and a re-list each time), watches refused for a while, and objects changing throughout.
    for round in 0..50u32 {
        api.compact();
        api.refuse_watches((20..25).contains(&round));
        let i = (round % 200) as usize;
        let name = format!("svc-{i}");
        let extra = format!("10.244.9.{}", round + 1);
        api.put(
            Resource::EndpointSlices,
            slice(
                &format!("{name}-1"),
                &name,
                "IPv4",
                &TARGET,
                &[&pod1, &extra],
            ),
        );
        if round % 10 == 0 {
            // The rules stay in force whatever the API does.
            c.wait_answered(From::Pod(2), "tcp", &first, Duration::from_secs(2));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    api.refuse_watches(false);
    // Every change made it: the last endpoint added to each changed Service is programmed.
    wait_for(
        "convergence after the storm",
        Duration::from_secs(30),
        || {
            let ruleset = c.nft(&["list", "ruleset"]).unwrap_or_default();
            (31..=50).all(|n| ruleset.contains(&format!("10.244.9.{n} ")))
        },
    );
    let grown = rss_kib(pid).saturating_sub(baseline);
    eprintln!("RSS {baseline} KiB before the storm, grew by {grown} KiB");
    assert!(
        grown < 32 * 1024,
        "memory grew by {grown} KiB during the storm"
    );
    assert!(c.proxy_running());
    c.wait_answered(From::Pod(2), "tcp", &first, Duration::from_secs(2));
}
