//! Observability end to end: /metrics and /healthz of a running proxy move as syncs happen, fail
//! and recover; `trace` follows a real packet; Events reach the API server; `--log-format json`
//! writes JSON lines; `explain` explains a Service from the manifests.

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use kube_nft_proxy::backend::netlink::socket::NfSocket;
use kube_nft_proxy::backend::netlink::wire::{
    MSG_BATCH_BEGIN, MSG_BATCH_END, Msg, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, SUBSYS_NFTABLES,
    Writer,
};

use crate::apiserver::{ApiServer, Resource};
use crate::harness::{Cluster, ECHO, From, PROXY, Reply, addr, require_root, run, wait_for};
use crate::objects::{service, serving_web, slice};

const HTTP: [(&str, i32, &str); 1] = [("http", 80, "TCP")];
const TARGET: [(&str, i32, &str); 1] = [("http", 8080, "TCP")];
const WEB: &str = "10.96.0.10";

/// `GET path` on the node's `host:port`: `(status code, body)`.
fn get(c: &Cluster, hostport: &str, path: &str) -> (u16, String) {
    let out = c
        .node
        .exec(&[ECHO, "http-get", hostport, path])
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let (head, body) = out.split_once("\n\n").unwrap_or((&out, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// The value of the sample `series` (name with labels, as exposed) in a scrape; 0 if absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const SYNCS: &str = "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}";
const FAILURES: &str =
    "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"}";

/// Replaces `ip kube-nft-proxy` in `netns`, in one transaction, by a table owned by a socket of
/// the test (flag `NFT_TABLE_F_OWNER`): nobody else may change it, and it disappears when the
/// socket closes.
fn own_our_table(netns: &str) -> NfSocket {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let mut socket = NfSocket::open().expect("nf_tables socket");
        let seq = socket.reserve_seq(4);
        let mut w = Writer::new();
        w.begin(MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, SUBSYS_NFTABLES);
        w.end();
        w.begin(Msg::DelTable.netlink_type(), NLM_F_REQUEST, seq + 1, 2, 0);
        w.string(1, "kube-nft-proxy"); // NFTA_TABLE_NAME
        w.end();
        w.begin(
            Msg::NewTable.netlink_type(),
            NLM_F_REQUEST | NLM_F_CREATE,
            seq + 2,
            2,
            0,
        );
        w.string(1, "kube-nft-proxy"); // NFTA_TABLE_NAME
        w.u32(2, 0x2); // NFTA_TABLE_FLAGS: NFT_TABLE_F_OWNER
        w.end();
        w.begin(
            MSG_BATCH_END,
            NLM_F_REQUEST | NLM_F_ACK,
            seq + 3,
            0,
            SUBSYS_NFTABLES,
        );
        w.end();
        let outcome = socket.send_batch(&[w.into_bytes()], seq + 3).expect("send");
        assert!(
            outcome.committed && outcome.refused.is_empty(),
            "{outcome:?}"
        );
        socket
    })
    .join()
    .expect("owner thread")
}

#[test]
fn metrics_and_health_follow_syncs_failures_and_recovery() {
    let (mut c, pod1) = serving_web(2, WEB);
    c.start_proxy(&["--sync-period", "1s"]);
    c.wait_answered(From::Pod(2), "tcp", &addr(WEB, 80), Duration::from_secs(5));

    let m = c.metrics();
    let syncs = sample(&m, SYNCS);
    assert!(syncs >= 1.0, "{m}");
    assert!(
        sample(
            &m,
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv6\"}"
        ) >= 1.0
    );
    assert_eq!(sample(&m, FAILURES), 0.0);
    assert!(
        sample(
            &m,
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}"
        ) > 1.7e9
    );
    assert!(sample(&m, "kubenftproxy_services") >= 1.0);
    assert!(sample(&m, "process_resident_memory_bytes") > 0.0);
    assert_eq!(
        get(&c, "127.0.0.1:10249", "/proxyMode").1.trim(),
        "nftables"
    );

    let (code, body) = get(&c, "127.0.0.1:10256", "/healthz");
    assert_eq!(code, 200, "{body}");
    let health: Value = serde_json::from_str(&body).expect("healthz JSON");
    assert_eq!(health["healthy"], true);
    assert_eq!(health["nodeEligible"], true);
    assert_eq!(health["status"]["IPv4"]["healthy"], true);

    // An endpoint change the EndpointSlice controller stamped: one more (partial) sync, and the
    // programming latency is measured from the stamp.
    let stamp = kube_nft_proxy::http::rfc3339(SystemTime::now());
    let mut changed = slice("web-1", "web", "IPv4", &TARGET, &[&pod1, "10.244.9.9"]);
    changed["metadata"]["annotations"] =
        json!({"endpoints.kubernetes.io/last-change-trigger-time": stamp});
    c.write("web.yaml", &[&service("web", &[WEB], &HTTP), &changed]);
    wait_for("a sync and its latency", Duration::from_secs(10), || {
        let m = c.metrics();
        sample(&m, SYNCS) > syncs
            && sample(
                &m,
                "kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv4\"}",
            ) >= 1.0
    });
    let m = c.metrics();
    assert!(
        sample(
            &m,
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}"
        ) >= 1.0
    );
    assert!(
        sample(&m, "kubeproxy_sync_proxy_rules_endpoint_changes_total") >= 2.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "kubeproxy_sync_proxy_rules_endpoint_changes_pending"),
        0.0
    );

    // Someone else takes our IPv4 table (a table owned by their socket): the proxy notices at
    // once and tries to restore it, but every transaction is refused. Failures are counted, and
    // once the update has waited 2 × sync-period, health fails.
    let owner = own_our_table(&c.node.name);
    wait_for(
        "refused syncs to be counted",
        Duration::from_secs(10),
        || sample(&c.metrics(), FAILURES) >= 1.0,
    );
    wait_for("/healthz to fail", Duration::from_secs(10), || {
        get(&c, "127.0.0.1:10256", "/healthz").0 == 503
    });
    let (code, body) = get(&c, "127.0.0.1:10256", "/livez");
    assert_eq!(code, 503, "{body}");
    let live: Value = serde_json::from_str(&body).expect("livez JSON");
    assert_eq!(live["healthy"], false);
    assert!(live.get("nodeEligible").is_none());
    let m = c.metrics();
    assert!(
        sample(&m, "kubeproxy_proxy_healthz_total{code=\"503\"}") >= 1.0,
        "{m}"
    );
    assert!(sample(&m, "kubeproxy_proxy_livez_total{code=\"503\"}") >= 1.0);
    assert_eq!(
        sample(&m, FAILURES),
        sample(
            &m,
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv6\"}"
        )
    );
    assert!(c.proxy_running());

    // The other owner goes away (its table with it): the retry programs everything again.
    drop(owner);
    wait_for("/healthz to recover", Duration::from_secs(10), || {
        get(&c, "127.0.0.1:10256", "/healthz").0 == 200
    });
    c.settle();
    c.wait_answered(From::Pod(2), "tcp", &addr(WEB, 80), Duration::from_secs(5));
}

#[test]
fn trace_follows_a_packet_to_its_endpoint_and_reports_masquerading() {
    let (mut c, pod1) = serving_web(1, WEB);
    c.start_proxy(&[]);
    c.wait_answered(
        From::External,
        "tcp",
        &addr(WEB, 80),
        Duration::from_secs(5),
    );

    // An external client (outside --cluster-cidr) reaching a ClusterIP is masqueraded.
    let client = crate::harness::EXT_IP4;
    let tracer = c.node.spawn(
        &[
            PROXY,
            "trace",
            "--src",
            client,
            "--dst",
            &addr(WEB, 80),
            "--timeout",
            "20s",
        ],
        Stdio::piped(),
    );
    wait_for("the trace to be armed", Duration::from_secs(10), || {
        c.nft(&["list", "table", "ip", "kube-nft-proxy-trace"])
            .is_ok()
    });
    let replies = c.connect(From::External, "tcp", &addr(WEB, 80), 1);
    assert!(
        matches!(replies.first(), Some(Reply::Ok { .. })),
        "{replies:?}"
    );
    let out = tracer.wait_with_output().expect("trace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    eprintln!("{stdout}");
    assert!(stdout.contains("nat-prerouting"), "{stdout}");
    assert!(stdout.contains("goto service-e2e/web/tcp/http"), "{stdout}");
    assert!(
        stdout.contains(&format!("endpoint chosen: {pod1}:8080")),
        "{stdout}"
    );
    assert!(stdout.contains("masqueraded: yes"), "{stdout}");
    assert!(
        c.nft(&["list", "table", "ip", "kube-nft-proxy-trace"])
            .is_err(),
        "the trace disarmed itself"
    );

    // A pod client is not masqueraded; nothing matching within the timeout is an error.
    let quiet = c.node.exec(&[
        PROXY,
        "trace",
        "--src",
        "10.244.200.1",
        "--dst",
        &addr(WEB, 80),
        "--timeout",
        "1s",
    ]);
    assert!(quiet.is_err_and(|e| e.contains("no matching packet")));
}

#[test]
fn warnings_about_unprogrammable_objects_become_events() {
    require_root();
    let mut c = Cluster::new(1);
    c.serve(1, 8080);
    let api = ApiServer::start(&c.node.name);
    let pod1 = c.pods[0].ip4.clone();
    api.put(Resource::Services, service("good", &["10.96.4.1"], &HTTP));
    api.put(
        Resource::EndpointSlices,
        slice("good-1", "good", "IPv4", &TARGET, &[&pod1]),
    );
    // Not an address: the Service is refused.
    api.put(Resource::Services, service("bad", &["10.96.4.300"], &HTTP));
    // Two Services claim one external address and port: the second one loses it.
    for name in ["one", "two"] {
        let mut s = service(name, &[], &HTTP);
        s["spec"]["clusterIP"] = json!(if name == "one" {
            "10.96.4.2"
        } else {
            "10.96.4.3"
        });
        s["spec"]["clusterIPs"] = json!([s["spec"]["clusterIP"]]);
        s["spec"]["externalIPs"] = json!(["192.168.50.77"]);
        api.put(Resource::Services, s);
        api.put(
            Resource::EndpointSlices,
            slice(&format!("{name}-1"), name, "IPv4", &TARGET, &[&pod1]),
        );
    }
    c.start_proxy_api(&api.node_url());
    wait_for("two Warning events", Duration::from_secs(15), || {
        api.events().len() >= 2
    });
    let events = api.events();
    let about = |name: &str| -> Value {
        events
            .iter()
            .find(|e| e["regarding"]["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no event about {name}: {events:#?}"))
    };
    let bad = about("bad");
    assert_eq!(bad["type"], "Warning");
    assert_eq!(bad["reason"], "InvalidObject");
    assert_eq!(bad["regarding"]["kind"], "Service");
    assert_eq!(bad["regarding"]["namespace"], "e2e");
    assert!(
        bad["regarding"]["uid"]
            .as_str()
            .is_some_and(|u| u.starts_with("uid-bad"))
    );
    assert!(
        bad["note"].as_str().unwrap_or("").contains("10.96.4.300"),
        "{bad}"
    );
    assert_eq!(bad["reportingController"], "kube-nft-proxy");
    let conflict = about("two");
    assert_eq!(conflict["reason"], "Conflict");
    assert!(
        events.iter().all(|e| e["regarding"]["name"] != "good"),
        "{events:#?}"
    );
    let m = c.metrics();
    assert!(
        sample(&m, "kubenftproxy_events_total{result=\"sent\"}") >= 2.0,
        "{m}"
    );

    // `explain` lists the objects once from the same API.
    let master = format!("http://{}", api.local_addr);
    let explain = |name: &str| {
        run(&[
            PROXY,
            "explain",
            name,
            "--master",
            &master,
            "--hostname-override",
            crate::harness::NODE_NAME,
        ])
    };
    let good = explain("e2e/good").expect("explain");
    assert!(good.contains("ClusterIP 10.96.4.1:80"), "{good}");
    assert!(good.contains(&format!("{pod1}:8080")), "{good}");
    assert!(explain("e2e/bad").is_err_and(|e| e.contains("not proxied")));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = std::env::temp_dir().join(format!("knp{}-jsonlogs", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("broken.yaml"), "kind: Service\n  : [").expect("write");
    let out = std::process::Command::new(PROXY)
        .args(["render", "--log-format", "json", "--from-dir"])
        .arg(&dir)
        .output()
        .expect("render");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let warning = lines
        .iter()
        .find(|l| l["level"] == "WARN")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        warning["file"]
            .as_str()
            .unwrap_or("")
            .contains("broken.yaml"),
        "{warning}"
    );
}

#[test]
fn explain_reads_the_manifests() {
    let out = run(&[
        PROXY,
        "explain",
        "edge/gateway",
        "--from-dir",
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples"),
        "--hostname-override",
        "node-a",
        "--cluster-cidr",
        "10.244.0.0/16",
    ])
    .expect("explain");
    assert!(out.contains("externalTrafficPolicy Local"), "{out}");
    assert!(
        out.contains("node-local endpoints:   10.244.1.40:8443"),
        "{out}"
    );
    assert!(
        out.contains("load-balancer source ranges admit 203.0.113.0/25"),
        "{out}"
    );
    assert!(
        out.contains("add chain ip kube-nft-proxy local-edge/gateway/tcp/https"),
        "{out}"
    );
    let missing = run(&[
        PROXY,
        "explain",
        "edge/none",
        "--from-dir",
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples"),
    ]);
    assert!(missing.is_err_and(|e| e.contains("not proxied")));
}
