//! Baseline cost of the pure pipeline (plan + render + diff) at 1,000 and 10,000 Services with
//! 10 endpoints each: a cold build of the whole ruleset, and one endpoint change.
//! Run with `cargo bench --bench sync`.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

use kube_nft_proxy::diff::{Scope, diff};
use kube_nft_proxy::fixtures::{ServiceBuilder, SliceBuilder};
use kube_nft_proxy::model::{Cidr, EndpointSlice, Service};
use kube_nft_proxy::plan::{NodeSettings, plan_service};
use kube_nft_proxy::render::Renderer;
use kube_nft_proxy::ruleset::desired::Owner;
use kube_nft_proxy::ruleset::{KernelState, Ruleset};

const ENDPOINTS: usize = 10;

fn settings() -> NodeSettings {
    NodeSettings {
        cluster_cidrs: [Cidr::parse("10.0.0.0/8").ok(), None],
        masquerade_all: false,
        ..NodeSettings::new("node-0")
    }
}

/// Service `i`: ClusterIP 172.20.x.y, one TCP port; its slice has 10 endpoints, shifted by `shift`.
fn service(i: usize) -> Arc<Service> {
    ServiceBuilder::new("bench", &format!("svc-{i}"))
        .cluster_ip(&format!("172.20.{}.{}", i / 250, i % 250 + 1))
        .port("http", 80, "TCP")
        .model()
        .expect("valid service")
}

fn slice(i: usize, shift: usize) -> Arc<EndpointSlice> {
    let mut b = SliceBuilder::new("bench", &format!("svc-{i}-1"), &format!("svc-{i}"), "IPv4")
        .port("http", 8080, "TCP");
    for e in 0..ENDPOINTS {
        let n = i * ENDPOINTS + e + shift;
        b = b.endpoint(
            &format!("10.{}.{}.{}", n / 65_536 % 256, n / 256 % 256, n % 256),
            &format!("node-{}", e % 3),
        );
    }
    b.model().expect("valid slice")
}

/// Plans and renders every Service into a fresh ruleset.
fn build(renderer: &Renderer, services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Ruleset {
    let node = settings();
    let mut ruleset = Ruleset::new();
    let mut touched = BTreeSet::new();
    ruleset.replace(
        Owner::Base,
        renderer.base(&node).expect("base"),
        &mut touched,
    );
    for (svc, slice) in services.iter().zip(slices) {
        let plan = plan_service(svc, std::slice::from_ref(slice), &node);
        let items = renderer.service(&plan, &node).expect("render");
        ruleset.replace(
            Owner::Service(Arc::new(svc.key.clone())),
            items,
            &mut touched,
        );
    }
    ruleset
}

fn pipeline(c: &mut Criterion) {
    let renderer = Renderer::new().expect("templates");
    let mut group = c.benchmark_group("plan_render_diff");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    for n in [1_000usize, 10_000] {
        let services: Vec<_> = (0..n).map(service).collect();
        let slices: Vec<_> = (0..n).map(|i| slice(i, 0)).collect();

        group.bench_with_input(BenchmarkId::new("cold_full_ruleset", n), &n, |b, _| {
            b.iter(|| {
                let ruleset = build(&renderer, &services, &slices);
                black_box(diff(&KernelState::default(), &ruleset, Scope::Full, &[]))
            })
        });

        // One endpoint change: plan and render one Service, diff only what it touched.
        let mut ruleset = build(&renderer, &services, &slices);
        let mut kernel = KernelState::default();
        kernel.apply(&diff(&kernel, &ruleset, Scope::Full, &[]));
        let node = settings();
        let target = n / 2;
        let versions = [slice(target, 0), slice(target, 1)];
        let mut flip = 0;
        group.bench_with_input(BenchmarkId::new("one_endpoint_change", n), &n, |b, _| {
            b.iter(|| {
                flip ^= 1;
                let plan = plan_service(
                    &services[target],
                    std::slice::from_ref(&versions[flip]),
                    &node,
                );
                let items = renderer.service(&plan, &node).expect("render");
                let mut touched = BTreeSet::new();
                ruleset.replace(
                    Owner::Service(Arc::new(services[target].key.clone())),
                    items,
                    &mut touched,
                );
                let tx = diff(&kernel, &ruleset, Scope::Objects(&touched), &[]);
                kernel.apply(&tx);
                black_box(tx)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
