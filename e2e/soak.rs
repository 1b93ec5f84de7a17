//! Churn soak: the proxy follows the (test) Kubernetes API while EndpointSlices change at a
//! steady rate, and its memory, CPU, sync latency and errors are sampled. No growth in memory,
//! no failed sync, and no missed change: once the churn stops, the kernel equals what the final
//! objects call for.
//!
//! CI runs 1,000 Services for one minute at 50 changes per second. By hand, for the full soak:
//!
//! ```text
//! KNP_SOAK_SERVICES=10000 KNP_SOAK_SECONDS=600 cargo test --release --test e2e soak -- --nocapture
//! ```

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::apiserver::{ApiServer, Resource};
use crate::harness::{Cluster, require_root, wait_for};
use crate::objects::{service, slice};

const HTTP: [(&str, i32, &str); 1] = [("http", 80, "TCP")];
const TARGET: [(&str, i32, &str); 1] = [("http", 8080, "TCP")];
const ENDPOINTS: usize = 10;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (xorshift), so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn cluster_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 96 + i / 62_500, (i / 250) % 250, 1 + i % 250)
}

/// Service `i`'s slice with `ENDPOINTS` endpoints starting at `offset` in a pool of addresses,
/// stamped with the EndpointSlice controller's trigger time.
fn endpoints(i: usize, offset: u64) -> Value {
    let ips: Vec<String> = (0..ENDPOINTS as u64)
        .map(|n| {
            let a = (offset + n) % 60_000;
            format!("10.244.{}.{}", a / 250, 1 + a % 250)
        })
        .collect();
    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let name = format!("svc-{i}");
    let mut s = slice(&format!("{name}-1"), &name, "IPv4", &TARGET, &refs);
    s["metadata"]["annotations"] = json!({
        "endpoints.kubernetes.io/last-change-trigger-time":
            kube_nft_proxy::http::rfc3339(SystemTime::now())
    });
    s
}

/// One sample of the proxy process and its metrics.
#[derive(Debug)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    cpu_ticks: u64,
    syncs: f64,
    sync_seconds: f64,
    failures: f64,
    programmed: f64,
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn sample(c: &Cluster, pid: u32, started: Instant) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // utime and stime: fields 14 and 15 of /proc/PID/stat (after the command in parentheses).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let cpu_ticks = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        })
        .unwrap_or(0);
    let m = c.metrics();
    let v4 = "{ip_family=\"IPv4\"}";
    Sample {
        at: started.elapsed(),
        rss_kib,
        cpu_ticks,
        syncs: metric(
            &m,
            &format!("kubeproxy_sync_proxy_rules_duration_seconds_count{v4}"),
        ),
        sync_seconds: metric(
            &m,
            &format!("kubeproxy_sync_proxy_rules_duration_seconds_sum{v4}"),
        ),
        failures: metric(
            &m,
            &format!("kubeproxy_sync_proxy_rules_nftables_sync_failures_total{v4}"),
        ),
        programmed: metric(
            &m,
            &format!("kubeproxy_network_programming_duration_seconds_count{v4}"),
        ),
    }
}

#[test]
fn churn_soak_keeps_up_without_growing_or_missing_a_change() {
    require_root();
    let services = setting("KNP_SOAK_SERVICES", 1000) as usize;
    let seconds = setting("KNP_SOAK_SECONDS", 60);
    let rate = setting("KNP_SOAK_RATE", 50).max(1);
    let mut c = Cluster::new(1);
    let api = ApiServer::start(&c.node.name);
    for i in 0..services {
        let name = format!("svc-{i}");
        api.put(Resource::Services, service(&name, &[&cluster_ip(i)], &HTTP));
        api.put(Resource::EndpointSlices, endpoints(i, i as u64 * 7));
    }
    c.start_proxy_api(&api.node_url());
    let pid = c.proxy_pid().expect("pid");
    wait_for("the initial sync", Duration::from_secs(120), || {
        metric(&c.metrics(), "kubenftproxy_services") >= services as f64
    });

    let started = Instant::now();
    let interval = Duration::from_secs(1) / rate as u32;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut samples = vec![sample(&c, pid, started)];
    let mut next_sample = Duration::from_secs(5);
    let mut changes = 0u64;
    let mut next = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        let i = rng.below(services as u64) as usize;
        api.put(Resource::EndpointSlices, endpoints(i, rng.below(60_000)));
        changes += 1;
        if started.elapsed() >= next_sample {
            samples.push(sample(&c, pid, started));
            next_sample += Duration::from_secs(5);
        }
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let churn = started.elapsed();
    // Every change made it into the kernel: write the final objects out and compare.
    for chunk in 0..services.div_ceil(250) {
        let mut docs = Vec::new();
        for i in chunk * 250..((chunk + 1) * 250).min(services) {
            let name = format!("svc-{i}");
            docs.push(service(&name, &[&cluster_ip(i)], &HTTP));
            docs.push(api.get(Resource::EndpointSlices, "e2e", &format!("{name}-1")));
        }
        let refs: Vec<&Value> = docs.iter().collect();
        c.write(&format!("final-{chunk}.yaml"), &refs);
    }
    c.settle();
    samples.push(sample(&c, pid, started));

    let hz = 100.0;
    eprintln!(
        "churn soak: {services} Services × {ENDPOINTS} endpoints, {changes} EndpointSlice changes in {:.0} s ({:.0}/s)",
        churn.as_secs_f64(),
        changes as f64 / churn.as_secs_f64()
    );
    eprintln!("   t(s)  RSS(MiB)  CPU(%)  syncs  mean sync(ms)  programmed  failures");
    for w in samples.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let span = (b.at - a.at).as_secs_f64().max(1e-3);
        let syncs = b.syncs - a.syncs;
        eprintln!(
            "{:7.0} {:9.1} {:7.1} {:6.0} {:14.2} {:11.0} {:9.0}",
            b.at.as_secs_f64(),
            b.rss_kib as f64 / 1024.0,
            (b.cpu_ticks - a.cpu_ticks) as f64 / hz / span * 100.0,
            syncs,
            if syncs > 0.0 {
                (b.sync_seconds - a.sync_seconds) / syncs * 1000.0
            } else {
                0.0
            },
            b.programmed - a.programmed,
            b.failures,
        );
    }
    let last = samples.last().expect("samples");
    assert_eq!(last.failures, 0.0, "no sync failed");
    assert!(last.programmed > 0.0, "programming latency was measured");
    // Memory: after the first fifth (warm-up), no growth beyond noise.
    let warm = &samples[samples.len() / 5];
    let peak_after = samples[samples.len() / 5..]
        .iter()
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(0);
    let allowed = (warm.rss_kib / 10).max(16 * 1024);
    assert!(
        peak_after <= warm.rss_kib + allowed,
        "memory grew from {} KiB to {peak_after} KiB",
        warm.rss_kib
    );
    assert!(c.proxy_running());
}
