//! A reusable network-namespace topology for end-to-end tests:
//!
//! ```text
//!   pod1 (10.244.1.2, fd00:10:244:1::2) ─veth─┐
//!   pod2 (10.244.2.2, …)                 ─veth─┤ node (runs the proxy; forwards)
//!   …                                          │   10.244.N.1 on each pod link
//!   ext  (192.168.50.2, fd00:50::2)      ─veth─┘   192.168.50.1 / fd00:50::1 to ext
//! ```
//!
//! Pods are in the cluster CIDR 10.244.0.0/16 (fd00:10:244::/56); `ext` is an off-cluster client
//! and the node's default route. Every namespace name starts with `knp<pid>-<n>-` so parallel
//! tests never collide; everything is removed on drop, also when the test fails, and namespaces
//! left by a killed test run are swept at the next start.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PROXY: &str = env!("CARGO_BIN_EXE_kube-nft-proxy");
pub const ECHO: &str = env!("CARGO_BIN_EXE_knp-e2e-echo");
pub const CLUSTER_CIDRS: &str = "10.244.0.0/16,fd00:10:244::/56";
pub const NODE_NAME: &str = "node1";
/// The node's address towards `ext` (its primary address), and a second one on the same link.
pub const NODE_IP4: &str = "192.168.50.1";
pub const NODE_IP6: &str = "fd00:50::1";
pub const ALT_NODE_IP4: &str = "192.168.51.1";
pub const ALT_NODE_IP6: &str = "fd00:51::1";
/// `ext`'s addresses: an allowed client, and one outside the source ranges tests use
/// (192.168.50.0/25, fd00:50::/121).
pub const EXT_IP4: &str = "192.168.50.2";
pub const EXT_IP6: &str = "fd00:50::2";
pub const BLOCKED_IP4: &str = "192.168.50.130";
pub const BLOCKED_IP6: &str = "fd00:50::130";

static NEXT: AtomicUsize = AtomicUsize::new(0);
static SWEEP: Once = Once::new();

/// Runs a command, returning stdout; fails with stderr on a non-zero exit.
pub fn run(cmd: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(cmd: &[&str]) -> String {
    run(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// Deletes namespaces left behind by test processes that no longer exist.
fn sweep_leftovers() {
    let Ok(list) = run(&["ip", "netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("knp") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    fn new(name: String) -> Netns {
        must(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A bare namespace (only `lo`) with a unique name ending in `label`.
    pub fn unique(label: &str) -> Netns {
        SWEEP.call_once(sweep_leftovers);
        Netns::new(format!(
            "knp{}-{}-{label}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ))
    }

    /// The argv prefix that runs a command inside this namespace.
    pub fn prefix(&self) -> Vec<&str> {
        vec!["ip", "netns", "exec", &self.name]
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, cmd: &[&str]) -> Result<String, String> {
        let mut full = self.prefix();
        full.extend_from_slice(cmd);
        run(&full)
    }

    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        must(&full);
    }

    fn sysctl(&self, key: &str, value: &str) {
        let _ = self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Starts a long-running command inside the namespace.
    pub fn spawn(&self, cmd: &[&str], stderr: Stdio) -> Child {
        let mut full = self.prefix();
        full.extend_from_slice(cmd);
        Command::new(full[0])
            .args(&full[1..])
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("{full:?}: {e}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// A pod namespace with its addresses.
pub struct Pod {
    pub ns: Netns,
    /// `pod1`, `pod2`, …; also the name its echo server answers with.
    pub name: String,
    pub ip4: String,
    pub ip6: String,
    /// The node's addresses on this pod's link (what a masqueraded packet comes from).
    pub gw4: String,
    pub gw6: String,
}

/// Where a client connection starts.
#[derive(Clone, Copy, Debug)]
pub enum From {
    Pod(usize),
    External,
    Node,
}

/// One connection attempt's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answered by the named backend, which saw this peer address.
    Ok {
        name: String,
        peer: String,
    },
    Refused {
        ms: u64,
    },
    /// The sender's own kernel rejected the packet on output (EPERM from send).
    Denied {
        ms: u64,
    },
    Timeout,
    Error(String),
}

/// The topology plus the proxy and backends running in it.
pub struct Cluster {
    pub prefix: String,
    pub dir: PathBuf,
    proxy: Option<Child>,
    proxy_args: Vec<String>,
    servers: Vec<Child>,
    pub pods: Vec<Pod>,
    pub ext: Netns,
    pub node: Netns,
    /// Where `render`'s script is loaded, to compare the node's tables with.
    scratch: Netns,
}

impl Cluster {
    /// Builds the namespaces and links for `pods` pods.
    pub fn new(pods: usize) -> Cluster {
        SWEEP.call_once(sweep_leftovers);
        let prefix = format!(
            "knp{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("{prefix}-manifests"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("manifest dir");
        let node = Netns::new(format!("{prefix}-node"));
        node.sysctl("net.ipv4.ip_forward", "1");
        node.sysctl("net.ipv6.conf.all.forwarding", "1");
        // Host ICMP policy, not the proxy's: traffic from `ext` that is not DNATed leaves through
        // the interface it came in on, which makes the node send redirects, and the per-host ICMP
        // rate limit (a burst of 6, then 1/s) would drop some of the REJECTs a test sends.
        for key in ["all", "default"] {
            node.sysctl(&format!("net.ipv4.conf.{key}.send_redirects"), "0");
        }
        node.sysctl("net.ipv4.icmp_ratelimit", "0");
        node.sysctl("net.ipv6.icmp.ratelimit", "0");
        let ext = Netns::new(format!("{prefix}-ext"));
        must(&[
            "ip", "link", "add", "name", "ext0", "netns", &node.name, "type", "veth", "peer",
            "name", "eth0", "netns", &ext.name,
        ]);
        node.ip(&["addr", "add", "192.168.50.1/24", "dev", "ext0"]);
        node.ip(&["-6", "addr", "add", "fd00:50::1/64", "dev", "ext0", "nodad"]);
        node.ip(&["addr", "add", "192.168.51.1/24", "dev", "ext0"]);
        node.ip(&["-6", "addr", "add", "fd00:51::1/64", "dev", "ext0", "nodad"]);
        node.ip(&["link", "set", "ext0", "up"]);
        ext.ip(&["addr", "add", "192.168.50.2/24", "dev", "eth0"]);
        ext.ip(&["-6", "addr", "add", "fd00:50::2/64", "dev", "eth0", "nodad"]);
        ext.ip(&["addr", "add", "192.168.50.130/24", "dev", "eth0"]);
        ext.ip(&[
            "-6",
            "addr",
            "add",
            "fd00:50::130/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        ext.ip(&["link", "set", "eth0", "up"]);
        ext.ip(&[
            "route",
            "add",
            "default",
            "via",
            "192.168.50.1",
            "src",
            "192.168.50.2",
        ]);
        ext.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:50::1",
            "src",
            "fd00:50::2",
        ]);
        node.ip(&["route", "add", "default", "via", "192.168.50.2"]);
        node.ip(&["-6", "route", "add", "default", "via", "fd00:50::2"]);
        let scratch = Netns::new(format!("{prefix}-scratch"));
        let mut cluster = Cluster {
            prefix: prefix.clone(),
            dir,
            proxy: None,
            proxy_args: Vec::new(),
            servers: Vec::new(),
            pods: Vec::new(),
            ext,
            node,
            scratch,
        };
        for i in 1..=pods {
            cluster.add_pod(i);
        }
        cluster
    }

    /// `backends` pods (pod1…) serving on port 80 and one client pod after them.
    pub fn with_backends(backends: usize) -> Cluster {
        require_root();
        let mut c = Cluster::new(backends + 1);
        for pod in 1..=backends {
            c.serve(pod, 80);
        }
        c
    }

    fn add_pod(&mut self, i: usize) {
        let ns = Netns::new(format!("{}-pod{i}", self.prefix));
        let link = format!("pod{i}");
        must(&[
            "ip",
            "link",
            "add",
            "name",
            "eth0",
            "netns",
            &ns.name,
            "type",
            "veth",
            "peer",
            "name",
            &link,
            "netns",
            &self.node.name,
        ]);
        let (ip4, gw4) = (format!("10.244.{i}.2"), format!("10.244.{i}.1"));
        let (ip6, gw6) = (format!("fd00:10:244:{i}::2"), format!("fd00:10:244:{i}::1"));
        self.node
            .ip(&["addr", "add", &format!("{gw4}/24"), "dev", &link]);
        self.node.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{gw6}/64"),
            "dev",
            &link,
            "nodad",
        ]);
        self.node.ip(&["link", "set", &link, "up"]);
        ns.ip(&["addr", "add", &format!("{ip4}/24"), "dev", "eth0"]);
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{ip6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", &gw4]);
        ns.ip(&["-6", "route", "add", "default", "via", &gw6]);
        self.pods.push(Pod {
            ns,
            name: format!("pod{i}"),
            ip4,
            ip6,
            gw4,
            gw6,
        });
    }

    /// Starts an echo server (TCP and UDP, both families) on `port` in pod `i` (1-based).
    pub fn serve(&mut self, pod: usize, port: u16) {
        let p = &self.pods[pod - 1];
        let mut child = p.ns.spawn(
            &[ECHO, "serve", &p.name, &port.to_string()],
            Stdio::inherit(),
        );
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        assert_eq!(
            line.trim(),
            "ready",
            "echo server in {} did not start",
            p.name
        );
        self.servers.push(child);
    }

    /// Writes a manifest file of YAML documents into the watched directory (atomically).
    pub fn write(&self, file: &str, docs: &[&Value]) {
        let text: Vec<String> = docs
            .iter()
            .map(|d| serde_saphyr::to_string(d).expect("yaml"))
            .collect();
        self.write_raw(file, &text.join("---\n"));
    }

    /// Writes raw text into the watched directory (atomically: temp file and rename).
    pub fn write_raw(&self, file: &str, text: &str) {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("write manifest");
        std::fs::rename(&tmp, self.dir.join(file)).expect("rename manifest");
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.dir.join(file)).expect("remove manifest");
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(".proxy.log")
    }

    /// Starts the proxy in the node namespace and waits until both tables exist.
    pub fn start_proxy(&mut self, extra: &[&str]) {
        self.start_proxy_with(true, extra);
    }

    /// Starts the proxy with or without `--cluster-cidr` (without it, nothing is known to be pod
    /// traffic: upstream's "no LocalTrafficDetector").
    pub fn start_proxy_with(&mut self, cluster_cidr: bool, extra: &[&str]) {
        let dir = self.dir.display().to_string();
        let mut args: Vec<String> = [
            "run",
            "--from-dir",
            &dir,
            "--hostname-override",
            NODE_NAME,
            "--min-sync-period",
            "100ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if cluster_cidr {
            args.extend(["--cluster-cidr".to_string(), CLUSTER_CIDRS.to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        self.proxy_args = args;
        self.restart_proxy();
    }

    /// Starts the proxy (API source flags in `extra`) without waiting for its tables.
    pub fn start_proxy_no_wait(&mut self, extra: &[&str]) {
        let mut args: Vec<String> = [
            "run",
            "--hostname-override",
            NODE_NAME,
            "--min-sync-period",
            "100ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["--cluster-cidr".to_string(), CLUSTER_CIDRS.to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        self.proxy_args = args;
        self.spawn_proxy();
    }

    /// Starts the proxy on the Kubernetes API at `master` and waits for its tables.
    pub fn start_proxy_api(&mut self, master: &str) {
        self.start_proxy_no_wait(&["--master", master]);
        self.wait_tables();
    }

    /// Starts the proxy again with the same arguments.
    pub fn restart_proxy(&mut self) {
        self.spawn_proxy();
        self.wait_tables();
    }

    fn wait_tables(&self) {
        wait_for("the proxy's tables", Duration::from_secs(10), || {
            self.node
                .exec(&["nft", "list", "table", "ip6", "kube-nft-proxy"])
                .is_ok()
        });
    }

    fn spawn_proxy(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut cmd = vec![PROXY];
        cmd.extend(self.proxy_args.iter().map(String::as_str));
        self.proxy = Some(self.node.spawn(&cmd, Stdio::from(log)));
    }

    /// Sends SIGTERM to the proxy and waits for it to exit; returns whether it exited cleanly.
    pub fn stop_proxy(&mut self) -> bool {
        let Some(mut child) = self.proxy.take() else {
            return true;
        };
        let _ = run(&["kill", "-TERM", &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the proxy without warning.
    pub fn kill_proxy(&mut self) {
        if let Some(mut child) = self.proxy.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The proxy's process id, while it runs.
    pub fn proxy_pid(&self) -> Option<u32> {
        self.proxy.as_ref().map(Child::id)
    }

    /// Whether the proxy process is still running.
    pub fn proxy_running(&mut self) -> bool {
        self.proxy
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn proxy_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn client_ns(&self, from: From) -> &Netns {
        match from {
            From::Pod(i) => &self.pods[i - 1].ns,
            From::External => &self.ext,
            From::Node => &self.node,
        }
    }

    /// `count` connection attempts from `from` to `to`, each given one second.
    pub fn connect(&self, from: From, proto: &str, to: &str, count: u32) -> Vec<Reply> {
        self.connect_with_timeout(from, proto, to, count, 1000)
    }

    /// `count` connection attempts, each given `timeout_ms`.
    pub fn connect_with_timeout(
        &self,
        from: From,
        proto: &str,
        to: &str,
        count: u32,
        timeout_ms: u32,
    ) -> Vec<Reply> {
        self.connect_from(from, None, proto, to, count, timeout_ms)
    }

    /// `count` connection attempts from the local address `bind` (`ip:port`) if given.
    pub fn connect_from(
        &self,
        from: From,
        bind: Option<&str>,
        proto: &str,
        to: &str,
        count: u32,
        timeout_ms: u32,
    ) -> Vec<Reply> {
        let (count, timeout) = (count.to_string(), timeout_ms.to_string());
        let mut cmd = vec![ECHO, "connect", proto, to, &count, &timeout];
        if let Some(bind) = bind {
            cmd.extend(["0", bind]);
        }
        let out = self
            .client_ns(from)
            .exec(&cmd)
            .unwrap_or_else(|e| panic!("client: {e}"));
        out.lines().map(parse_reply).collect()
    }

    /// A Node object for this node: its primary addresses and a zone.
    pub fn node_object(&self, zone: &str) -> Value {
        kube_nft_proxy::fixtures::NodeBuilder::new(NODE_NAME)
            .zone(zone)
            .address(NODE_IP4)
            .address(NODE_IP6)
            .json()
            .clone()
    }

    /// Waits until the kernel holds the chains the current manifests call for: `render` (same
    /// flags, no kernel) and `nft list` must agree rule for rule. A proxy following the
    /// Kubernetes API is compared with the manifests in `dir` (the test writes them there).
    pub fn settle(&self) {
        // A proxy on the Kubernetes API is compared with the manifests the test wrote to `dir`.
        let dir = self.dir.display().to_string();
        let mut args: Vec<&str> = vec![PROXY, "render"];
        let mut rest = self.proxy_args.iter().skip(1).map(String::as_str);
        while let Some(arg) = rest.next() {
            if arg == "--master" {
                rest.next();
                args.extend(["--from-dir", &dir]);
            } else {
                args.push(arg);
            }
        }
        let script = run(&args).unwrap_or_else(|e| panic!("render: {e}"));
        // What the kernel must hold: the script loaded into an empty namespace.
        let file = self.dir.join(".settle.nft");
        std::fs::write(&file, &script).expect("write the rendered script");
        let _ = self.scratch.exec(&["nft", "flush", "ruleset"]);
        self.scratch
            .exec(&["nft", "-f", &file.to_string_lossy()])
            .unwrap_or_else(|e| panic!("the rendered script does not load: {e}"));
        for family in ["ip", "ip6"] {
            let want = table_listing(&self.scratch.name, family, false);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let have = table_listing(&self.node.name, family, false);
                if have == want {
                    break;
                }
                if Instant::now() > deadline {
                    let objects = |v: &Value| -> Vec<String> {
                        v["nftables"]
                            .as_array()
                            .map(|l| l.iter().map(Value::to_string).collect())
                            .unwrap_or_default()
                    };
                    let (h, w) = (objects(&have), objects(&want));
                    let only = |a: &[String], b: &[String]| -> Vec<String> {
                        a.iter().filter(|x| !b.contains(x)).cloned().collect()
                    };
                    panic!(
                        "the {family} table did not settle within 5s\nonly in the kernel:\n{}\nonly in render:\n{}",
                        only(&h, &w).join("\n"),
                        only(&w, &h).join("\n")
                    );
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn http_get(&self, from: From, addr: &str, path: &str) -> Result<String, String> {
        self.client_ns(from).exec(&[ECHO, "http-get", addr, path])
    }

    /// Starts a client that makes `count` connections, one every `interval_ms`, in the background.
    pub fn connect_in_background(
        &self,
        from: From,
        proto: &str,
        to: &str,
        count: u32,
        interval_ms: u32,
    ) -> Child {
        self.client_ns(from).spawn(
            &[
                ECHO,
                "connect",
                proto,
                to,
                &count.to_string(),
                "1000",
                &interval_ms.to_string(),
            ],
            Stdio::inherit(),
        )
    }

    /// Waits until a connection from `from` to `to` is answered by a backend.
    pub fn wait_answered(&self, from: From, proto: &str, to: &str, within: Duration) {
        wait_for(&format!("{to}/{proto} to answer"), within, || {
            matches!(
                self.connect(from, proto, to, 1).first(),
                Some(Reply::Ok { .. })
            )
        });
    }

    /// `nft` inside the node namespace.
    pub fn nft(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = vec!["nft"];
        cmd.extend_from_slice(args);
        self.node.exec(&cmd)
    }

    /// The proxy's metrics text (from inside the node namespace).
    pub fn metrics(&self) -> String {
        self.try_metrics()
            .unwrap_or_else(|e| panic!("metrics: {e}"))
    }

    /// The proxy's metrics text, or why there is none (not listening yet).
    pub fn try_metrics(&self) -> Result<String, String> {
        self.node
            .exec(&[ECHO, "http-get", "127.0.0.1:10249", "/metrics"])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_proxy();
        for mut s in self.servers.drain(..) {
            let _ = s.kill();
            let _ = s.wait();
        }
        if thread::panicking() {
            eprintln!("--- proxy log ({}) ---\n{}", self.prefix, self.proxy_log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The namespaces are deleted by their own Drop (fields drop after this).
    }
}

/// `chain name → rule lines` from an `nft list table` listing.
/// `nft -j list table` of our table in `family` inside namespace `ns`, as a comparable value:
/// without handles and, unless `all_elements`, without the elements the kernel fills in by itself
/// (the packet path's affinity sets) or that come from the node's addresses (`nodeport-ips`).
/// `Null` if the table does not exist.
pub fn table_listing(ns: &str, family: &str, all_elements: bool) -> Value {
    let Ok(text) = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "nft",
        "-j",
        "list",
        "table",
        family,
        "kube-nft-proxy",
    ]) else {
        return Value::Null;
    };
    let mut doc: Value = serde_json::from_str(&text).expect("nft -j output");
    let list = doc["nftables"].as_array_mut().expect("nftables array");
    list.retain(|o| o.get("metainfo").is_none());
    for obj in list.iter_mut() {
        let Some(map) = obj.as_object_mut() else {
            continue;
        };
        for inner in map.values_mut() {
            let Some(inner) = inner.as_object_mut() else {
                continue;
            };
            inner.remove("handle");
            let timeout = inner
                .get("flags")
                .is_some_and(|f| f.to_string().contains("timeout"));
            let nodeport_ips = inner.get("name").and_then(Value::as_str) == Some("nodeport-ips");
            if !all_elements && (timeout || nodeport_ips) {
                inner.remove("elem");
            }
            // Elements are listed in the kernel's hash order.
            if let Some(Value::Array(elements)) = inner.get_mut("elem") {
                elements.sort_by_cached_key(Value::to_string);
            }
        }
    }
    // Objects are listed in the order they were created.
    list.sort_by_cached_key(Value::to_string);
    doc
}

pub fn rules_by_chain_listed(listing: &str) -> BTreeMap<String, Vec<String>> {
    let mut chains = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in listing.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("chain ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            current = Some(name.to_string());
            chains.insert(name.to_string(), Vec::new());
        } else if line == "}" {
            current = None;
        } else if let Some(chain) = &current
            && !line.starts_with("type ")
            && !line.is_empty()
            && let Some(rules) = chains.get_mut(chain)
        {
            rules.push(line.to_string());
        }
    }
    chains
}

/// `chain name → rule lines` of one family from a `render` script.
pub fn rules_by_chain_rendered(script: &str, family: &str) -> BTreeMap<String, Vec<String>> {
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let prefix = format!("add chain {family} kube-nft-proxy ");
    let rule_prefix = format!("add rule {family} kube-nft-proxy ");
    for line in script.lines() {
        if let Some(rest) = line.strip_prefix(&prefix) {
            chains
                .entry(rest.split(' ').next().unwrap_or("").to_string())
                .or_default();
        } else if let Some((chain, rule)) = line
            .strip_prefix(&rule_prefix)
            .and_then(|r| r.split_once(' '))
        {
            chains
                .entry(chain.to_string())
                .or_default()
                .push(rule.to_string());
        }
    }
    chains
}

/// Parses a line printed by `knp-e2e-echo connect`.
fn parse_reply(line: &str) -> Reply {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["ok", name, peer, _ms] => Reply::Ok {
            name: name.to_string(),
            peer: peer.to_string(),
        },
        ["refused", ms] => Reply::Refused {
            ms: ms.parse().unwrap_or(u64::MAX),
        },
        ["denied", ms] => Reply::Denied {
            ms: ms.parse().unwrap_or(u64::MAX),
        },
        ["timeout", _] => Reply::Timeout,
        _ => Reply::Error(line.to_string()),
    }
}

/// Polls `check` every 20 ms until it holds; panics after `within`.
pub fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        if start.elapsed() > within {
            panic!("timed out after {within:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The backends that answered, and the peers they saw.
pub fn answered(replies: &[Reply]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut names = BTreeSet::new();
    let mut peers = BTreeSet::new();
    for r in replies {
        match r {
            Reply::Ok { name, peer } => {
                names.insert(name.clone());
                peers.insert(peer.clone());
            }
            other => panic!("not answered: {other:?} (all: {replies:?})"),
        }
    }
    (names, peers)
}

/// `a:p` / `[a]:p`.
pub fn addr(ip: &str, port: u16) -> String {
    let ip: std::net::IpAddr = ip.parse().expect("ip");
    SocketAddr::new(ip, port).to_string()
}

/// Root is needed for network namespaces; say so clearly instead of failing obscurely.
pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "end-to-end tests create network namespaces and need root"
    );
}
