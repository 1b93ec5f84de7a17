//! The monitoring manifests in `manifests/monitoring`: every file parses and holds the kinds it
//! should; every metric named in a PromQL expression (alert rules, dashboard panels, dashboard
//! variables) is one the proxy exports, and the dashboard shows every `kubeproxy_*` and
//! `kubenftproxy_*` metric; alerts carry a severity, a summary and a description; dashboard panels
//! have targets and unique ids; the ServiceMonitor scrapes the port of a Service that selects the
//! DaemonSet's pods. No root needed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use serde_json::Value;

use kube_nft_proxy::metrics::Metrics;

const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests");
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/monitoring");
const MONITORING: &str = "monitoring.coreos.com/v1";

/// Every file of `manifests/monitoring`: its name and its documents (one for JSON).
fn files() -> BTreeMap<String, Vec<Value>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(DIR).expect("manifests/monitoring") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let docs = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml") => serde_saphyr::from_multiple::<Value>(&text)
                .unwrap_or_else(|e| panic!("{name}: {e}")),
            Some("json") => {
                vec![serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{name}: {e}"))]
            }
            _ => panic!("{name}: neither YAML nor JSON"),
        };
        files.insert(name, docs);
    }
    files
}

/// The one document of `kind` in `manifests/monitoring`.
fn find(kind: &str) -> Value {
    let mut found: Vec<Value> = files()
        .into_values()
        .flatten()
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "want exactly one {kind}");
    found.remove(0)
}

fn dashboard() -> Value {
    files()
        .remove("grafana-dashboard.json")
        .expect("grafana-dashboard.json")
        .remove(0)
}

/// The documents of a file of `manifests/`.
fn manifest(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{MANIFESTS}/{file}")).expect(file);
    serde_saphyr::from_multiple::<Value>(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Deserializes into `T` and back; anything `T` does not know (a typo) would be lost on the way.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone()).expect("typed object");
    let back = serde_json::to_value(&typed).expect("serialize");
    assert_eq!(
        &back, doc,
        "fields unknown to the typed object were dropped"
    );
    typed
}

/// What the proxy exports: every metric family, and which of them are histograms (whose series
/// are `x_bucket`, `x_count` and `x_sum`).
struct Exported {
    names: BTreeSet<String>,
    histograms: BTreeSet<String>,
}

fn exported() -> Exported {
    let m = Metrics::new().expect("metrics");
    // The text exposition types a histogram vector only once it has a child: observe them all.
    // (A histogram missing here makes its `_bucket` series an unknown metric below.)
    m.observe_sync(Duration::from_millis(1), true, SystemTime::now());
    m.observe_sync(Duration::from_millis(1), false, SystemTime::now());
    for h in [&m.network_programming_duration, &m.conntrack_duration] {
        h.with_label_values(&["IPv4"]).observe(1.0);
    }
    let histograms = m
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" histogram"))
        .map(String::from)
        .collect();
    Exported {
        names: m.names().into_iter().collect(),
        histograms,
    }
}

impl Exported {
    /// The family of a series name: `x_bucket`, `x_count` and `x_sum` belong to histogram `x`.
    fn family<'a>(&self, name: &'a str) -> Option<&'a str> {
        if self.names.contains(name) {
            return Some(name);
        }
        ["_bucket", "_count", "_sum"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| self.histograms.contains(*base))
    }

    /// The names in `expr` that are no exported series (`up` is Prometheus' own).
    fn unknown(&self, expr: &str) -> Vec<String> {
        metric_names(expr)
            .into_iter()
            .filter(|n| n != "up" && self.family(n).is_none())
            .collect()
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Clauses whose parenthesized list holds label names, not expressions.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// PromQL keywords and literals, and the aggregation operators (which `by (…)` may separate
/// from their parenthesis): never metric names.
const KEYWORDS: [&str; 22] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// `expr` with its string literals, comments, label matchers `{…}` and ranges `[…]` blanked.
fn strip_matchers(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut chars = expr.chars();
    // Nesting of `{` and `[`; what is inside is blanked.
    let mut depth = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                while let Some(d) = chars.next() {
                    if d == '\\' && c != '`' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
                out.push(' ');
            }
            '#' => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
                out.push(' ');
            }
            '{' | '[' => {
                depth += 1;
                out.push(' ');
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                out.push(' ');
            }
            _ if depth > 0 => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

/// Every metric name a PromQL expression selects: identifiers that are not functions (followed
/// by `(`), keywords, label names of `by (…)`-like clauses or matchers, numbers, durations or
/// Grafana variables (`$node`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = strip_matchers(expr).chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || c == '.' || c == '$' {
            // A number (0.99, 1e3, 0x1f), a duration or a Grafana variable: one token.
            i += 1;
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if !is_ident_start(c) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let mut next = i;
        while next < chars.len() && chars[next].is_whitespace() {
            next += 1;
        }
        let called = chars.get(next) == Some(&'(');
        if LABEL_LISTS.contains(&word.to_ascii_lowercase().as_str()) {
            if called {
                // Skip the label list up to its closing parenthesis.
                i = next;
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
            }
            continue;
        }
        if called || KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
            continue;
        }
        names.insert(word);
    }
    names
}

/// Every alerting rule of the PrometheusRule.
fn alerts() -> Vec<Value> {
    let rule = find("PrometheusRule");
    let groups = rule["spec"]["groups"].as_array().expect("groups");
    assert!(!groups.is_empty(), "no rule groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

/// Every panel of the dashboard, also those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p.clone());
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested.iter().cloned());
        }
    }
    out
}

/// Every PromQL expression of the dashboard's panels: `(panel title, expr)`.
fn panel_exprs(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |t| {
                    let expr = t["expr"].as_str().expect("target expr").to_string();
                    (title.clone(), expr)
                })
        })
        .collect()
}

/// A Prometheus duration: `30s`, `5m`, `1h30m`.
fn is_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(*u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

#[test]
fn every_file_parses_into_the_expected_kinds() {
    let files = files();
    let mut kinds = BTreeSet::new();
    for (file, docs) in &files {
        assert!(!docs.is_empty(), "{file}: empty");
        if file.ends_with(".json") {
            let d = &docs[0];
            assert_eq!(d["schemaVersion"], 39, "{file}: schemaVersion");
            assert_eq!(d["uid"], "kube-nft-proxy", "{file}: uid");
            assert_eq!(d["title"], "kube-nft-proxy", "{file}: title");
            kinds.insert(("grafana".to_string(), "Dashboard".to_string()));
            continue;
        }
        for d in docs {
            let api = d["apiVersion"].as_str().unwrap_or_default().to_string();
            let kind = d["kind"].as_str().unwrap_or_default().to_string();
            assert_eq!(
                d["metadata"]["namespace"], "kube-system",
                "{file}: {kind} namespace"
            );
            assert!(
                d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty()),
                "{file}: {kind} without a name"
            );
            assert!(kinds.insert((api, kind)), "{file}: duplicate kind");
        }
    }
    let want: BTreeSet<(String, String)> = [
        ("v1", "Service"),
        (MONITORING, "ServiceMonitor"),
        (MONITORING, "PrometheusRule"),
        ("grafana", "Dashboard"),
    ]
    .into_iter()
    .map(|(a, k)| (a.to_string(), k.to_string()))
    .collect();
    assert_eq!(kinds, want);
    // The Service is a core object: no field k8s-openapi does not know.
    let service: Service = round_trip(&find("Service"));
    assert_eq!(
        service.metadata.name.as_deref(),
        Some("kube-nft-proxy-metrics")
    );
    let spec = service.spec.expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "headless");
    assert_eq!(find("PrometheusRule")["metadata"]["name"], "kube-nft-proxy");
}

#[test]
fn metric_extraction_skips_functions_labels_and_keywords() {
    let expr = r#"histogram_quantile(0.99, sum by (node, le) (rate(kubeproxy_sync_proxy_rules_duration_seconds_bucket{node=~"$node", job="a}b"}[$__rate_interval]))) > 1
        or absent(up{job=~".*kube-nft-proxy.*"} == 1)
        unless on (node) group_left (ip_family) time() - process_start_time_seconds offset 5m
        and sum(rate(kubenftproxy_events_total[5m])) without (result) > bool 1e3"#;
    let want: BTreeSet<String> = [
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
        "up",
        "process_start_time_seconds",
        "kubenftproxy_events_total",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(metric_names(expr), want);
    assert!(exported().unknown(expr).is_empty());
}

#[test]
fn metric_extraction_catches_typos() {
    let exported = exported();
    assert!(exported.histograms.is_subset(&exported.names));
    assert!(
        exported
            .histograms
            .contains("kubeproxy_network_programming_duration_seconds")
    );
    assert!(!exported.histograms.contains("kubenftproxy_services"));
    for (expr, typo) in [
        (
            "sum(rate(kubeproxy_sync_proxy_rules_endpoint_chnages_total{node=~\"$node\"}[5m]))",
            "kubeproxy_sync_proxy_rules_endpoint_chnages_total",
        ),
        (
            "histogram_quantile(0.5, sum by (le) (rate(kubenftproxy_transaction_operation_bucket[5m])))",
            "kubenftproxy_transaction_operation_bucket",
        ),
        (
            "time() - kubeprxy_sync_proxy_rules_last_timestamp_seconds > 60",
            "kubeprxy_sync_proxy_rules_last_timestamp_seconds",
        ),
        // A suffix on a metric that has none.
        ("kubenftproxy_services_count", "kubenftproxy_services_count"),
    ] {
        assert_eq!(exported.unknown(expr), [typo], "{expr}");
    }
}

#[test]
fn alerts_are_complete_and_use_exported_metrics() {
    let exported = exported();
    let alerts = alerts();
    let mut names = BTreeSet::new();
    for rule in &alerts {
        let name = rule["alert"].as_str().expect("every rule is an alert");
        assert!(names.insert(name.to_string()), "{name}: duplicate alert");
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for annotation in ["summary", "description"] {
            assert!(
                rule["annotations"][annotation]
                    .as_str()
                    .is_some_and(|s| !s.trim().is_empty()),
                "{name}: no {annotation}"
            );
        }
        let pending = rule["for"].as_str().unwrap_or_default();
        assert!(is_duration(pending), "{name}: for {pending:?}");
        let expr = rule["expr"].as_str().expect("expr");
        assert!(!metric_names(expr).is_empty(), "{name}: selects nothing");
        let unknown = exported.unknown(expr);
        assert!(unknown.is_empty(), "{name}: unknown metrics {unknown:?}");
    }
    for want in [
        "KubeNftProxyDown",
        "KubeNftProxySyncFailures",
        "KubeNftProxyStaleSync",
        "KubeNftProxyUnhealthy",
        "KubeNftProxySlowProgramming",
        "KubeNftProxySlowSync",
        "KubeNftProxyInvalidInput",
        "KubeNftProxyCleanupFailures",
    ] {
        assert!(names.contains(want), "no alert {want}");
    }
}

#[test]
fn dashboard_panels_are_complete_and_use_exported_metrics() {
    let exported = exported();
    let dashboard = dashboard();
    let mut ids = BTreeSet::new();
    for p in panels(&dashboard) {
        let title = p["title"].as_str().unwrap_or_default();
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "{title}: duplicate panel id {id}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in &targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert_eq!(t["datasource"]["type"], "prometheus", "{title}");
        }
    }
    for (title, expr) in panel_exprs(&dashboard) {
        assert!(
            expr.contains(r#"node=~"$node""#),
            "{title}: {expr} not filtered by node"
        );
        assert!(!metric_names(&expr).is_empty(), "{title}: selects nothing");
        let unknown = exported.unknown(&expr);
        assert!(unknown.is_empty(), "{title}: unknown metrics {unknown:?}");
    }
    // The variables: a Prometheus data source, and the nodes of a metric the proxy exports.
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let node = var("node");
    assert_eq!(node["type"], "query");
    let query = node["query"]["query"].as_str().expect("node query");
    let (metric, label) = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .and_then(|q| q.split_once(','))
        .unwrap_or_else(|| panic!("{query}: not label_values(metric, label)"));
    assert_eq!(label.trim(), "node");
    let unknown = exported.unknown(metric);
    assert!(unknown.is_empty(), "node variable: unknown {unknown:?}");
}

#[test]
fn dashboard_shows_every_metric() {
    let exported = exported();
    let shown: BTreeSet<String> = panel_exprs(&dashboard())
        .iter()
        .flat_map(|(_, expr)| metric_names(expr))
        .filter_map(|n| exported.family(&n).map(String::from))
        .collect();
    let missing: Vec<&String> = exported
        .names
        .iter()
        .filter(|n| n.starts_with("kubeproxy_") || n.starts_with("kubenftproxy_"))
        .filter(|n| !shown.contains(*n))
        .collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}

#[test]
fn service_monitor_scrapes_the_daemonset() {
    let service = find("Service");
    let monitor = find("ServiceMonitor");
    let daemonset: DaemonSet = serde_json::from_value(
        manifest("daemonset.yaml")
            .into_iter()
            .find(|d| d["kind"] == "DaemonSet")
            .expect("DaemonSet"),
    )
    .expect("DaemonSet");
    let pod = daemonset.spec.expect("spec").template;
    let pod_labels = serde_json::to_value(pod.metadata.expect("metadata").labels).expect("json");

    // The Service selects the DaemonSet's pods, and the ServiceMonitor the Service.
    assert_eq!(service["spec"]["selector"], pod_labels);
    let service_labels = service["metadata"]["labels"].as_object().expect("labels");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(service_labels.get(k), Some(v), "Service label {k}");
    }
    let namespaces = &monitor["spec"]["namespaceSelector"]["matchNames"];
    assert!(
        namespaces
            .as_array()
            .expect("matchNames")
            .contains(&service["metadata"]["namespace"]),
        "the ServiceMonitor looks in {namespaces}"
    );

    // Its endpoints scrape a named port of the Service, which targets the container's port.
    let ports = service["spec"]["ports"].as_array().expect("ports");
    let endpoints = monitor["spec"]["endpoints"].as_array().expect("endpoints");
    assert!(!endpoints.is_empty());
    let container_ports: Vec<_> = pod
        .spec
        .expect("pod spec")
        .containers
        .into_iter()
        .flat_map(|c| c.ports.unwrap_or_default())
        .collect();
    let config = manifest("config.yaml")
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("ConfigMap");
    let config: ConfigMap = serde_json::from_value(config).expect("ConfigMap");
    let conf = config.data.expect("data")["config.conf"].clone();
    let conf = serde_saphyr::from_str::<Value>(&conf).expect("config.conf");
    let bind = conf["metricsBindAddress"]
        .as_str()
        .expect("metricsBindAddress");
    let metrics_port: i64 = bind
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("port");
    for e in endpoints {
        let port = e["port"].as_str().expect("endpoint port name");
        let sp = ports
            .iter()
            .find(|p| p["name"] == port)
            .unwrap_or_else(|| panic!("the Service has no port {port}"));
        assert_eq!(
            sp["port"], metrics_port,
            "the proxy serves metrics on {bind}"
        );
        let target = sp["targetPort"].clone();
        assert!(
            container_ports.iter().any(|c| {
                i64::from(c.container_port) == metrics_port
                    && (target == c.container_port
                        || c.name.as_deref().is_some_and(|n| target == n))
            }),
            "the Service's targetPort {target} is not the container's metrics port"
        );
        assert_eq!(e["path"], "/metrics");
        assert!(is_duration(e["interval"].as_str().unwrap_or_default()));
        let relabel = e["relabelings"].as_array().expect("relabelings");
        assert!(
            relabel.iter().any(|r| {
                r["sourceLabels"] == serde_json::json!(["__meta_kubernetes_pod_node_name"])
                    && r["targetLabel"] == "node"
            }),
            "the dashboard and alerts need a node label"
        );
    }

    // The job name (the Service label named by jobLabel, else the Service's name) is the one
    // the alerts' `up{job=~".*kube-nft-proxy.*"}` matches.
    let job = match monitor["spec"]["jobLabel"].as_str() {
        Some(label) => service_labels[label].as_str().expect("job label"),
        None => service["metadata"]["name"].as_str().expect("name"),
    };
    assert!(job.contains("kube-nft-proxy"), "job {job}");
    for rule in alerts() {
        let expr = rule["expr"].as_str().unwrap_or_default();
        if expr.contains("up{") {
            assert!(expr.contains(r#"job=~".*kube-nft-proxy.*""#), "{expr}");
        }
    }
}
