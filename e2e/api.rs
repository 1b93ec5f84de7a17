//! The Kubernetes API source end to end: objects created, changed and deleted through the API
//! (kube's own `Api` against the test API server) reach real traffic; nothing is programmed before
//! both initial lists; an API server that is killed and restarted, or a watch that expires, loses
//! nothing and converges without flushing rules.

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::Value;

use crate::apiserver::{ApiServer, Resource};
use crate::harness::{Cluster, From, Reply, addr, require_root, wait_for};
use crate::objects::{service, slice};

const HTTP: [(&str, i32, &str); 1] = [("http", 80, "TCP")];
const TARGET: [(&str, i32, &str); 1] = [("http", 8080, "TCP")];

fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).expect("object")
}

/// Two echo pods, a client pod, the API server and the proxy watching it.
fn setup() -> (Cluster, ApiServer, tokio::runtime::Runtime) {
    require_root();
    let mut c = Cluster::new(3);
    c.serve(1, 8080);
    c.serve(2, 8080);
    let api = ApiServer::start(&c.node.name);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    (c, api, rt)
}

fn answered_by(c: &Cluster, to: &str) -> Option<String> {
    match c.connect(From::Pod(3), "tcp", to, 1).into_iter().next() {
        Some(Reply::Ok { name, .. }) => Some(name),
        _ => None,
    }
}

fn refused(c: &Cluster, to: &str) -> bool {
    matches!(
        c.connect(From::Pod(3), "tcp", to, 1).first(),
        Some(Reply::Refused { .. })
    )
}

#[test]
fn objects_created_changed_and_deleted_through_the_api_reach_traffic() {
    let (mut c, api, rt) = setup();
    c.start_proxy_api(&api.node_url());
    let _runtime = rt.enter();
    let client = api.client();
    let services: Api<Service> = Api::namespaced(client.clone(), "e2e");
    let slices: Api<EndpointSlice> = Api::namespaced(client, "e2e");
    let to = addr("10.96.3.1", 80);
    let pp = PostParams::default();
    rt.block_on(async {
        services
            .create(&pp, &typed(&service("web", &["10.96.3.1"], &HTTP)))
            .await
            .expect("create service");
        slices
            .create(
                &pp,
                &typed(&slice("web-1", "web", "IPv4", &TARGET, &[&c.pods[0].ip4])),
            )
            .await
            .expect("create slice");
    });
    wait_for("the service to answer", Duration::from_secs(10), || {
        answered_by(&c, &to).as_deref() == Some("pod1")
    });

    // Change the slice: traffic moves.
    rt.block_on(async {
        let mut s: EndpointSlice =
            typed(&slice("web-1", "web", "IPv4", &TARGET, &[&c.pods[1].ip4]));
        s.metadata.resource_version = slices
            .get("web-1")
            .await
            .expect("get")
            .metadata
            .resource_version;
        slices.replace("web-1", &pp, &s).await.expect("replace");
    });
    wait_for("traffic to move to pod2", Duration::from_secs(10), || {
        answered_by(&c, &to).as_deref() == Some("pod2")
    });

    // Services of another proxy and headless ones are not even watched.
    rt.block_on(async {
        let mut other: Service = typed(&service("other", &["10.96.3.2"], &HTTP));
        other.metadata.labels = Some(
            [(
                "service.kubernetes.io/service-proxy-name".to_string(),
                "x".to_string(),
            )]
            .into(),
        );
        services.create(&pp, &other).await.expect("create");
        let mut headless = service("headless", &["10.96.3.3"], &HTTP);
        headless["spec"]["clusterIP"] = "None".into();
        headless["spec"]["clusterIPs"] = serde_json::json!(["None"]);
        services
            .create(&pp, &typed(&headless))
            .await
            .expect("create");
    });

    // Delete the slice, then the Service.
    rt.block_on(async {
        slices
            .delete("web-1", &DeleteParams::default())
            .await
            .expect("delete")
    });
    wait_for(
        "a service without endpoints to be refused",
        Duration::from_secs(10),
        || refused(&c, &to),
    );
    rt.block_on(async {
        services
            .delete("web", &DeleteParams::default())
            .await
            .expect("delete")
    });
    wait_for("the service to go", Duration::from_secs(10), || {
        c.nft(&["list", "set", "ip", "kube-nft-proxy", "cluster-ips"])
            .is_ok_and(|l| !l.contains("10.96.3.1"))
    });
    let ruleset = c.nft(&["list", "ruleset"]).expect("list");
    assert!(
        !ruleset.contains("10.96.3.2") && !ruleset.contains("10.96.3.3"),
        "{ruleset}"
    );
}

#[test]
fn nothing_is_programmed_before_both_initial_lists() {
    let (mut c, mut api, _rt) = setup();
    api.put(Resource::Services, service("web", &["10.96.3.1"], &HTTP));
    api.put(
        Resource::EndpointSlices,
        slice("web-1", "web", "IPv4", &TARGET, &[&c.pods[0].ip4]),
    );
    api.stop();
    // No API server: the proxy starts but programs nothing (not even empty tables). This one
    // reaches the API through a kubeconfig file.
    let kubeconfig = c.dir.join("kubeconfig.conf");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"{}\"}}\ncontexts:\n\
             - name: test\n  context: {{cluster: test, user: proxy}}\ncurrent-context: test\nusers:\n- name: proxy\n  user: {{}}\n",
            api.node_url()
        ),
    )
    .expect("kubeconfig");
    c.start_proxy_no_wait(&["--kubeconfig", &kubeconfig.display().to_string()]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(c.proxy_running(), "an unreachable API server is not fatal");
    assert_eq!(
        c.nft(&["list", "tables"]).expect("list").trim(),
        "",
        "nothing before the lists"
    );
    api.restart();
    wait_for("the service to answer", Duration::from_secs(15), || {
        answered_by(&c, &addr("10.96.3.1", 80)).as_deref() == Some("pod1")
    });
}

#[test]
fn a_killed_and_restarted_api_server_loses_nothing() {
    let (mut c, mut api, _rt) = setup();
    api.put(Resource::Services, service("a", &["10.96.3.1"], &HTTP));
    api.put(
        Resource::EndpointSlices,
        slice("a-1", "a", "IPv4", &TARGET, &[&c.pods[0].ip4]),
    );
    api.put(Resource::Services, service("b", &["10.96.3.2"], &HTTP));
    api.put(
        Resource::EndpointSlices,
        slice("b-1", "b", "IPv4", &TARGET, &[&c.pods[0].ip4]),
    );
    c.start_proxy_api(&api.node_url());
    let (a, b) = (addr("10.96.3.1", 80), addr("10.96.3.2", 80));
    wait_for("both services", Duration::from_secs(10), || {
        answered_by(&c, &a).is_some() && answered_by(&c, &b).is_some()
    });

    api.stop();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        answered_by(&c, &a).as_deref(),
        Some("pod1"),
        "rules stay while the API server is gone"
    );
    // While it was down: a deleted, b moved to pod2, and etcd compacted the history.
    api.remove(Resource::Services, "e2e", "a");
    api.remove(Resource::EndpointSlices, "e2e", "a-1");
    api.put(
        Resource::EndpointSlices,
        slice("b-1", "b", "IPv4", &TARGET, &[&c.pods[1].ip4]),
    );
    api.compact();
    api.restart();
    wait_for("b to move to pod2", Duration::from_secs(20), || {
        answered_by(&c, &b).as_deref() == Some("pod2")
    });
    wait_for("a to go", Duration::from_secs(10), || {
        c.nft(&["list", "set", "ip", "kube-nft-proxy", "cluster-ips"])
            .is_ok_and(|l| !l.contains("10.96.3.1"))
    });
    assert!(c.proxy_running());
}

#[test]
fn an_expired_watch_relists_and_converges() {
    let (mut c, mut api, _rt) = setup();
    api.put(Resource::Services, service("a", &["10.96.3.1"], &HTTP));
    api.put(
        Resource::EndpointSlices,
        slice("a-1", "a", "IPv4", &TARGET, &[&c.pods[0].ip4]),
    );
    c.start_proxy_api(&api.node_url());
    let a = addr("10.96.3.1", 80);
    wait_for("a", Duration::from_secs(10), || {
        answered_by(&c, &a).as_deref() == Some("pod1")
    });

    // Watches break; meanwhile the slice changes and the history is compacted, so resuming the
    // watch gets 410 Gone and the proxy must list again.
    api.refuse_watches(true);
    api.restart();
    api.put(
        Resource::EndpointSlices,
        slice("a-1", "a", "IPv4", &TARGET, &[&c.pods[1].ip4]),
    );
    api.put(Resource::Services, service("new", &["10.96.3.9"], &HTTP));
    api.compact();
    api.refuse_watches(false);
    wait_for("a to move to pod2", Duration::from_secs(20), || {
        answered_by(&c, &a).as_deref() == Some("pod2")
    });
    wait_for("the new service", Duration::from_secs(10), || {
        refused(&c, &addr("10.96.3.9", 80))
    });
}
