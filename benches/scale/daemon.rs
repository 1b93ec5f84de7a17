//! The real daemon on manifests: time from process start until the first sync finished (reading
//! and parsing the manifests included), file edits until their sync finished (the source waits
//! for a file to settle first), the repair after another tool deletes the IPv4 table (noticed
//! through nf_tables notifications, the kernel read again, everything written back), and the
//! process's peak and final resident memory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::workload;

const PROXY: &str = env!("CARGO_BIN_EXE_kube-nft-proxy");

#[derive(Debug, Clone, serde::Serialize)]
pub struct DaemonRun {
    pub cold_start_ms: f64,
    pub file_change_ms: Vec<f64>,
    /// `nft delete table ip kube-nft-proxy` until the sync that restored it finished.
    pub repair_ms: f64,
    pub peak_rss_mb: f64,
    pub final_rss_mb: f64,
}

fn status_kb(pid: u32, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the daemon with `kind` on `n` Services written to `dir`, then edits `edits` files.
pub fn measure(
    netns: &Netns,
    kind: &str,
    n: usize,
    dir: &Path,
    edits: usize,
    timeout: Duration,
) -> DaemonRun {
    let _ = std::fs::remove_dir_all(dir);
    workload::write_manifests(dir, n, &[]);
    let dir_arg = dir.to_string_lossy().into_owned();
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns.name,
            PROXY,
            "run",
            "--from-dir",
            &dir_arg,
        ])
        .args(["--backend", kind, "--hostname-override", workload::NODE])
        .args(["--cluster-cidr", "10.0.0.0/8", "--min-sync-period", "0s"])
        .args(["--metrics-bind-address", "", "--healthz-bind-address", ""])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the proxy");
    let pid = child.id();
    let stderr = child.stderr.take().expect("stderr");
    let (tx, synced) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("synced rules") {
                let _ = tx.send(Instant::now());
            } else if line.contains("ERROR") || line.contains("refused") {
                eprintln!("proxy: {line}");
            }
        }
    });
    let first = synced.recv_timeout(timeout).expect("the first sync");
    let cold_start_ms = first.duration_since(started).as_secs_f64() * 1000.0;
    let mut file_change_ms = Vec::with_capacity(edits);
    let mut generations = Vec::new();
    for k in 1..=edits {
        let i = (k * 7_919) % n;
        generations.push((i, k));
        // Drop syncs that were not ours (stale-chain deletions).
        while synced.try_recv().is_ok() {}
        let edited = Instant::now();
        workload::write_file(dir, i, n, &generations);
        let done = synced.recv_timeout(timeout).expect("a sync after an edit");
        file_change_ms.push(done.duration_since(edited).as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(200));
    }
    // Someone deletes our IPv4 table; the proxy notices and restores it.
    std::thread::sleep(Duration::from_millis(1500));
    while synced.try_recv().is_ok() {}
    let deleted = Instant::now();
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns.name,
            "nft",
            "delete",
            "table",
            "ip",
            "kube-nft-proxy",
        ])
        .status()
        .expect("nft");
    assert!(status.success(), "delete the table");
    let restored = synced.recv_timeout(timeout).expect("a repair sync");
    let repair_ms = restored.duration_since(deleted).as_secs_f64() * 1000.0;
    let peak_rss_mb = status_kb(pid, "VmHWM:").unwrap_or(0.0) / 1024.0;
    let final_rss_mb = status_kb(pid, "VmRSS:").unwrap_or(0.0) / 1024.0;
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
    DaemonRun {
        cold_start_ms,
        file_change_ms,
        repair_ms,
        peak_rss_mb,
        final_rss_mb,
    }
}
