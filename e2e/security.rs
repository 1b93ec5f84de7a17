//! Least privilege, checked: the proxy programs and serves with CAP_NET_ADMIN as its only
//! capability (what the DaemonSet grants), its metrics listen on the loopback address only by
//! default, and nothing it runs is a shell or gets object data on a command line. (The
//! ClusterRole's rules are checked in `manifests.rs`.)

use std::process::{Child, Stdio};
use std::time::Duration;

use crate::harness::{CLUSTER_CIDRS, ECHO, From, NODE_IP4, NODE_NAME, PROXY, addr, wait_for};
use crate::objects::serving_web;

/// Kills the process when dropped (also when the test fails).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `CapEff` of a process, as a bit mask.
fn effective_caps(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(u64::MAX)
}

#[test]
fn the_proxy_works_with_cap_net_admin_alone_and_keeps_metrics_on_loopback() {
    let (c, _) = serving_web(2, "10.96.0.10");
    let dir = c.dir.display().to_string();
    // As the DaemonSet runs it: every capability dropped but NET_ADMIN.
    let proxy = Killed(c.node.spawn(
        &[
            "setpriv",
            "--bounding-set=-all,+net_admin",
            "--inh-caps=-all",
            PROXY,
            "run",
            "--from-dir",
            &dir,
            "--hostname-override",
            NODE_NAME,
            "--cluster-cidr",
            CLUSTER_CIDRS,
        ],
        Stdio::null(),
    ));
    let pid = proxy.0.id();
    c.wait_answered(
        From::Pod(2),
        "tcp",
        &addr("10.96.0.10", 80),
        Duration::from_secs(10),
    );
    const CAP_NET_ADMIN: u64 = 1 << 12;
    assert_eq!(effective_caps(pid), CAP_NET_ADMIN, "only CAP_NET_ADMIN");

    // Metrics answer on loopback and nowhere else.
    wait_for("metrics on loopback", Duration::from_secs(5), || {
        c.node
            .exec(&[ECHO, "http-get", "127.0.0.1:10249", "/metrics"])
            .is_ok_and(|m| m.contains("kubeproxy_sync_proxy_rules_duration_seconds"))
    });
    assert!(
        c.node
            .exec(&[ECHO, "http-get", &addr(NODE_IP4, 10249), "/metrics"])
            .is_err(),
        "metrics must not listen on the node's address by default"
    );
    // Health answers on every address, as kube-proxy's (load balancers probe it).
    assert!(
        c.node
            .exec(&[ECHO, "http-get", &addr(NODE_IP4, 10256), "/healthz"])
            .is_ok()
    );
    drop(proxy);
}

#[test]
fn nothing_the_proxy_runs_is_a_shell_or_gets_object_data_as_arguments() {
    // The only process the proxy starts is nft (the reference backend), with fixed arguments;
    // the ruleset goes to its standard input, generated from the typed IR.
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut spawns = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(src)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for (n, line) in text.lines().enumerate() {
                if line.contains("Command::new") || line.contains("process::Command") {
                    spawns.push(format!("{}:{}", path.display(), n + 1));
                }
                assert!(
                    !line.contains("\"sh\"")
                        && !line.contains("\"bash\"")
                        && !line.contains("\"-c\""),
                    "{}:{}: a shell: {line}",
                    path.display(),
                    n + 1
                );
            }
        }
    }
    assert!(
        spawns.iter().all(|s| s.contains("backend/nft.rs")),
        "processes started outside the nft backend: {spawns:?}"
    );
    let nft = std::fs::read_to_string(format!("{src}/backend/nft.rs")).expect("nft.rs");
    assert!(
        nft.contains("&[\"-f\", \"-\"]"),
        "the nft backend feeds the ruleset on standard input"
    );
}
