//! The proxy's life: following file changes, restarting without a gap, surviving bad input,
//! cleaning up, and showing operators exactly the templated rules.

use std::time::{Duration, Instant};

use crate::harness::{
    Cluster, From, PROXY, Reply, addr, answered, require_root, rules_by_chain_listed,
    rules_by_chain_rendered, run, wait_for,
};
use crate::objects::{service, slice};

const HTTP: [(&str, i32, &str); 1] = [("http", 80, "TCP")];
const TARGET: [(&str, i32, &str); 1] = [("http", 8080, "TCP")];

#[test]
fn file_changes_reach_the_kernel() {
    require_root();
    let mut c = Cluster::new(3);
    c.serve(1, 8080);
    c.serve(2, 8080);
    c.start_proxy(&[]);
    let to = addr("10.96.0.30", 80);
    // Within 1 s plus --min-sync-period (100 ms), with slack for a loaded machine.
    let within = Duration::from_secs(3);

    let started = Instant::now();
    c.write("svc.yaml", &[&service("moving", &["10.96.0.30"], &HTTP)]);
    c.write(
        "slice.yaml",
        &[&slice(
            "moving-1",
            "moving",
            "IPv4",
            &TARGET,
            &[&c.pods[0].ip4],
        )],
    );
    wait_for("the new service in the kernel", within, || {
        c.nft(&["list", "map", "ip", "kube-nft-proxy", "service-ips"])
            .is_ok_and(|out| out.contains("10.96.0.30 . tcp . 80"))
    });
    eprintln!("new files programmed after {:?}", started.elapsed());
    c.wait_answered(From::Pod(3), "tcp", &to, within);

    let started = Instant::now();
    c.write(
        "slice.yaml",
        &[&slice(
            "moving-1",
            "moving",
            "IPv4",
            &TARGET,
            &[&c.pods[1].ip4],
        )],
    );
    wait_for(
        "traffic to move to pod2",
        within,
        || matches!(c.connect(From::Pod(3), "tcp", &to, 1).first(), Some(Reply::Ok { name, .. }) if name == "pod2"),
    );
    eprintln!("changed slice programmed after {:?}", started.elapsed());
    let (names, _) = answered(&c.connect(From::Pod(3), "tcp", &to, 20));
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["pod2"]);

    c.remove("slice.yaml");
    wait_for("a service without endpoints to be refused", within, || {
        matches!(
            c.connect(From::Pod(3), "tcp", &to, 1).first(),
            Some(Reply::Refused { .. })
        )
    });

    c.remove("svc.yaml");
    wait_for("the service to disappear", within, || {
        c.nft(&["list", "set", "ip", "kube-nft-proxy", "cluster-ips"])
            .is_ok_and(|out| !out.contains("10.96.0.30"))
    });
    assert!(!matches!(
        c.connect(From::Pod(3), "tcp", &to, 1)[0],
        Reply::Ok { .. }
    ));
    // The deleted service's chains are gone after the stale-chain delay.
    wait_for("stale chains to be deleted", within, || {
        c.nft(&["list", "table", "ip", "kube-nft-proxy"])
            .is_ok_and(|out| !out.contains("e2e/moving"))
    });
}

/// Rule handles per chain: they change whenever a chain is rewritten.
fn handles(c: &Cluster) -> String {
    let list = |family| {
        c.nft(&["-a", "list", "table", family, "kube-nft-proxy"])
            .expect("list")
    };
    list("ip") + &list("ip6")
}

/// Copies the bundled examples (every kind of Service, affinity, LB, dual-stack) into `c`'s
/// manifest directory.
fn copy_examples(c: &Cluster) {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    for entry in std::fs::read_dir(examples).expect("examples") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string();
        c.write_raw(&name, &std::fs::read_to_string(&path).expect("read"));
    }
}

#[test]
fn connections_keep_succeeding_across_a_proxy_restart_and_nothing_is_rewritten() {
    require_root();
    let mut c = Cluster::new(2);
    c.serve(1, 8080);
    c.serve(2, 8080);
    c.write(
        "svc.yaml",
        &[
            &service("steady", &["10.96.0.40"], &HTTP),
            &slice(
                "steady-1",
                "steady",
                "IPv4",
                &TARGET,
                &[&c.pods[0].ip4, &c.pods[1].ip4],
            ),
        ],
    );
    copy_examples(&c);
    c.start_proxy(&[]);
    c.settle();
    let to = addr("10.96.0.40", 80);
    c.wait_answered(From::External, "tcp", &to, Duration::from_secs(5));
    let before = handles(&c);

    let client = c.connect_in_background(From::External, "tcp", &to, 150, 20);
    std::thread::sleep(Duration::from_millis(500));
    assert!(c.stop_proxy(), "SIGTERM ends the proxy cleanly");
    assert_eq!(handles(&c), before, "SIGTERM leaves the rules in place");
    std::thread::sleep(Duration::from_millis(500));
    c.restart_proxy();
    let out = client.wait_with_output().expect("client");
    let lines = String::from_utf8_lossy(&out.stdout);
    let failures: Vec<&str> = lines.lines().filter(|l| !l.starts_with("ok ")).collect();
    assert_eq!(lines.lines().count(), 150);
    assert!(
        failures.is_empty(),
        "connections failed across the restart: {failures:?}"
    );

    // The restarted proxy adopted the table: give it time to sync, then nothing was rewritten.
    std::thread::sleep(Duration::from_millis(500));
    assert!(c.proxy_running());
    assert_eq!(handles(&c), before, "adoption rewrote rules");
}

#[test]
fn bad_files_leave_good_services_alone() {
    require_root();
    let mut c = Cluster::new(2);
    c.serve(1, 8080);
    c.write(
        "good.yaml",
        &[
            &service("good", &["10.96.0.50"], &HTTP),
            &slice("good-1", "good", "IPv4", &TARGET, &[&c.pods[0].ip4]),
        ],
    );
    c.write_raw(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n",
    );
    c.write_raw("binary.json", "\u{0}\u{1}{not json");
    let mut bad_ip = service("bad-ip", &["10.96.0.51"], &HTTP);
    bad_ip["spec"]["clusterIP"] = "10.96.0.300".into();
    bad_ip["spec"]["clusterIPs"] = serde_json::json!(["10.96.0.300"]);
    let mut hostile_name = service("x", &["10.96.0.52"], &HTTP);
    hostile_name["metadata"]["name"] = "x } ; flush ruleset ; add table ip pwned {".into();
    let mut hostile_port = service("hostile-port", &["10.96.0.53"], &HTTP);
    hostile_port["spec"]["ports"][0]["name"] =
        "http\" ; delete table ip kube-nft-proxy ; \"".into();
    let mut bad_protocol = service("bad-protocol", &["10.96.0.54"], &HTTP);
    bad_protocol["spec"]["ports"][0]["protocol"] = "ICMP".into();
    let mut bad_port = slice("good-2", "good", "IPv4", &TARGET, &[&c.pods[1].ip4]);
    bad_port["ports"][0]["port"] = 99999.into();
    // Annotations never reach rules, so nft syntax there is harmless: this Service is programmed.
    let mut annotated = service("annotated", &["10.96.0.55"], &HTTP);
    annotated["metadata"]["annotations"] = serde_json::json!({"x": "} ; flush ruleset"});
    c.write(
        "bad.yaml",
        &[
            &bad_ip,
            &hostile_name,
            &hostile_port,
            &bad_protocol,
            &bad_port,
            &annotated,
        ],
    );
    c.start_proxy(&[]);
    c.wait_answered(
        From::Pod(2),
        "tcp",
        &addr("10.96.0.50", 80),
        Duration::from_secs(5),
    );
    let (names, _) = answered(&c.connect(From::Pod(2), "tcp", &addr("10.96.0.50", 80), 10));
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["pod1"],
        "the invalid slice added nothing"
    );

    let ruleset = c.nft(&["list", "ruleset"]).expect("list");
    assert!(
        !ruleset.contains("pwned")
            && !ruleset.contains("10.96.0.52")
            && !ruleset.contains("10.96.0.53")
    );
    assert!(!ruleset.contains("10.96.0.54"));
    assert!(
        ruleset.contains("10.96.0.55"),
        "the annotated Service is programmed"
    );
    assert!(c.proxy_running());

    let metrics = c.metrics();
    let count = |labels: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("kubenftproxy_invalid_input_total{{{labels}}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        count("kind=\"file\",reason=\"unparseable\""),
        2,
        "{metrics}"
    );
    assert_eq!(count("kind=\"Service\",reason=\"invalid_address\""), 1);
    assert_eq!(count("kind=\"Service\",reason=\"invalid_name\""), 2);
    assert_eq!(count("kind=\"Service\",reason=\"invalid_protocol\""), 1);
    assert_eq!(
        count("kind=\"EndpointSlice\",reason=\"invalid_field\"")
            + count("kind=\"EndpointSlice\",reason=\"invalid_port\""),
        1
    );
    let log = c.proxy_log();
    assert!(
        log.contains("broken.yaml") && log.contains("bad.yaml"),
        "the log names the files:\n{log}"
    );

    // A bad edit to the good file keeps its last good content.
    c.write_raw(
        "good.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: [oops\n",
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(matches!(
        c.connect(From::Pod(2), "tcp", &addr("10.96.0.50", 80), 1)[0],
        Reply::Ok { .. }
    ));
}

#[test]
fn cleanup_leaves_no_table_behind() {
    require_root();
    let mut c = Cluster::new(1);
    c.write(
        "svc.yaml",
        &[&service("a", &["10.96.0.60", "fd00:96::3c"], &HTTP)],
    );
    c.start_proxy(&[]);
    assert!(c.stop_proxy());
    assert!(
        c.nft(&["list", "tables"])
            .expect("list")
            .contains("kube-nft-proxy")
    );
    c.node.exec(&[PROXY, "cleanup"]).expect("cleanup");
    assert_eq!(c.nft(&["list", "tables"]).expect("list").trim(), "");
    c.node
        .exec(&[PROXY, "cleanup"])
        .expect("cleanup with nothing to do exits 0");
}

#[test]
fn nft_list_shows_exactly_the_templated_rules() {
    require_root();
    let mut c = Cluster::new(0);
    copy_examples(&c);
    c.start_proxy(&[]);
    let dir = c.dir.display().to_string();
    let script = run(&[
        PROXY,
        "render",
        "--from-dir",
        &dir,
        "--hostname-override",
        crate::harness::NODE_NAME,
        "--cluster-cidr",
        crate::harness::CLUSTER_CIDRS,
    ])
    .expect("render");
    // The script passes nft's own check (check mode changes nothing).
    let check = format!("{dir}/.render.nft");
    std::fs::write(&check, &script).expect("write script");
    c.node
        .exec(&["nft", "-c", "-f", &check])
        .expect("nft -c accepts the rendered script");
    for family in ["ip", "ip6"] {
        let want = rules_by_chain_rendered(&script, family);
        let listed = || {
            c.nft(&["list", "table", family, "kube-nft-proxy"])
                .map(|l| rules_by_chain_listed(&l))
                .unwrap_or_default()
        };
        wait_for(
            "the examples to be programmed",
            Duration::from_secs(5),
            || listed().keys().eq(want.keys()),
        );
        let have = listed();
        for (chain, rules) in &want {
            assert_eq!(&have[chain], rules, "{family} chain {chain}");
        }
    }
    assert!(
        script.contains("sctp"),
        "the SCTP example is programmed (checked at ruleset level)"
    );
}
