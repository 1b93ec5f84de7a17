//! The deployment manifests: every object parses into its k8s-openapi type with nothing unknown
//! (a typed round trip must give back the same document), the DaemonSet's arguments are flags the
//! binary accepts, its ports and probes match the configuration it mounts, and the ClusterRole
//! grants exactly what the proxy needs.

use std::collections::BTreeSet;

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::Value;

use kube_nft_proxy::config::{Cli, Command, Settings};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests");

/// Every document of every manifest file, as JSON.
fn documents() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(DIR).expect("manifests") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        for doc in
            serde_saphyr::from_multiple::<Value>(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
        {
            docs.push((file.clone(), doc));
        }
    }
    docs
}

/// Deserializes into `T` and back; anything `T` does not know would be lost on the way.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let back = serde_json::to_value(&typed).expect("serialize");
    assert_eq!(
        &back, doc,
        "{file}: fields unknown to the typed object (or a typo) were dropped"
    );
    typed
}

fn find<T: serde::de::DeserializeOwned + serde::Serialize>(kind: &str) -> T {
    let docs = documents();
    let (file, doc) = docs
        .iter()
        .find(|(_, d)| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in manifests/"));
    round_trip(file, doc)
}

#[test]
fn every_manifest_is_a_known_object_without_unknown_fields() {
    let docs = documents();
    assert!(docs.len() >= 5);
    for (file, doc) in &docs {
        match doc["kind"].as_str().unwrap_or("") {
            "ServiceAccount" => drop(round_trip::<ServiceAccount>(file, doc)),
            "ClusterRole" => drop(round_trip::<ClusterRole>(file, doc)),
            "ClusterRoleBinding" => drop(round_trip::<ClusterRoleBinding>(file, doc)),
            "ConfigMap" => drop(round_trip::<ConfigMap>(file, doc)),
            "DaemonSet" => drop(round_trip::<DaemonSet>(file, doc)),
            other => panic!("{file}: unexpected kind {other:?}"),
        }
    }
}

#[test]
fn the_cluster_role_grants_only_reading_services_slices_and_nodes_and_writing_events() {
    let role: ClusterRole = find("ClusterRole");
    let mut grants = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    grants.insert(format!("{group}/{resource}:{verb}"));
                }
            }
        }
    }
    let mut want: BTreeSet<String> = ["/services", "/nodes", "discovery.k8s.io/endpointslices"]
        .iter()
        .flat_map(|r| ["get", "list", "watch"].map(|v| format!("{r}:{v}")))
        .collect();
    // Warning Events about objects it cannot program, and their repeat counts.
    want.extend([
        "events.k8s.io/events:create".into(),
        "events.k8s.io/events:patch".into(),
    ]);
    assert_eq!(grants, want);
    let binding: ClusterRoleBinding = find("ClusterRoleBinding");
    let account: ServiceAccount = find("ServiceAccount");
    let subject = &binding.subjects.unwrap_or_default()[0];
    assert_eq!(Some(&subject.name), account.metadata.name.as_ref());
    assert_eq!(
        binding.role_ref.name,
        role.metadata.name.unwrap_or_default()
    );
}

#[test]
fn the_daemonset_runs_the_binary_with_its_flags_config_and_ports() {
    let ds: DaemonSet = find("DaemonSet");
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        pod.tolerations
            .unwrap_or_default()
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none())
    );
    let container = &pod.containers[0];
    let caps = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.clone())
        .expect("capabilities");
    assert_eq!(caps.add, Some(vec!["NET_ADMIN".to_string()]));
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    assert_ne!(
        container
            .security_context
            .as_ref()
            .and_then(|s| s.privileged),
        Some(true)
    );

    // The arguments parse as this binary's command line.
    let mut argv = vec!["kube-nft-proxy".to_string()];
    argv.extend(container.args.clone().unwrap_or_default());
    let Command::Run(mut args) = Cli::try_parse_from(&argv).expect("DaemonSet args").command else {
        panic!("the DaemonSet must run `run`");
    };
    // The mounted config file resolves, with the ports the container declares.
    let config: ConfigMap = find("ConfigMap");
    let data = config.data.expect("data");
    let mount = &container.volume_mounts.as_ref().expect("mounts")[0];
    let config_path = args.config.clone().expect("--config");
    assert!(
        config_path.starts_with(&mount.mount_path),
        "--config is in the mounted ConfigMap"
    );
    let file_name = config_path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name");
    let tmp = std::env::temp_dir().join(format!("knp-manifest-{}.conf", std::process::id()));
    std::fs::write(&tmp, &data[file_name]).expect("write");
    args.config = Some(tmp.clone());
    let settings = Settings::resolve(&args);
    let _ = std::fs::remove_file(&tmp);
    let settings = settings.expect("the ConfigMap's configuration is valid");
    let healthz = settings.healthz_bind_address.expect("healthz").port();
    let metrics = settings.metrics_bind_address.expect("metrics").port();
    let ports: Vec<(String, i32)> = container
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name.unwrap_or_default(), p.container_port))
        .collect();
    assert!(ports.contains(&("healthz".into(), i32::from(healthz))));
    assert!(ports.contains(&("metrics".into(), i32::from(metrics))));
    let probe_port = |p: &Option<k8s_openapi::api::core::v1::Probe>| match p
        .as_ref()
        .and_then(|p| p.http_get.clone())
        .map(|g| g.port)
    {
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => n,
        other => panic!("probe port {other:?}"),
    };
    assert_eq!(probe_port(&container.liveness_probe), i32::from(healthz));
    assert_eq!(probe_port(&container.readiness_probe), i32::from(healthz));
    let paths: Vec<String> = [&container.liveness_probe, &container.readiness_probe]
        .iter()
        .filter_map(|p| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|g| g.path.clone())
        })
        .collect();
    assert_eq!(paths, ["/livez", "/healthz"]);
    // The kubeconfig the configuration names is in the same ConfigMap.
    let kubeconfig = match &settings.source {
        kube_nft_proxy::config::SourceKind::Kubernetes {
            kubeconfig: Some(k),
            ..
        } => k.clone(),
        other => panic!("the DaemonSet must use the API: {other:?}"),
    };
    let kubeconfig_name = kubeconfig
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name");
    assert!(kubeconfig.starts_with(&mount.mount_path) && data.contains_key(kubeconfig_name));
    kube::config::Kubeconfig::from_yaml(&data[kubeconfig_name]).expect("a valid kubeconfig");
}
