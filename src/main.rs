//! kube-nft-proxy: command line and wiring only.

use std::io::IsTerminal;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tracing::{error, info, warn};

use kube_nft_proxy::backend::netlink::NetlinkBackend;
use kube_nft_proxy::backend::nft::NftBackend;
use kube_nft_proxy::backend::{Backend, Offline, script};
use kube_nft_proxy::config::{
    BackendKind, Cli, Command, ExplainArgs, LogFormat, ProxyArgs, Settings, SourceKind, TraceArgs,
    parse_duration,
};
use kube_nft_proxy::conntrack::Conntrack;
use kube_nft_proxy::events::EventSink;
use kube_nft_proxy::health_check::{self, HealthChecks};
use kube_nft_proxy::http::{self, Health};
use kube_nft_proxy::metrics::Metrics;
use kube_nft_proxy::plan::NodeSettings;
use kube_nft_proxy::reconciler::{Reconciler, Timing};
use kube_nft_proxy::render::templates::Templates;
use kube_nft_proxy::source::Event;
use kube_nft_proxy::source::files::FileSource;
use kube_nft_proxy::source::{addresses, api, kernel_changes};
use kube_nft_proxy::state::{Change, State};
use kube_nft_proxy::{explain, trace};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match cli.command {
        Command::Run(args) => run(&args),
        Command::Render(args) => render(&args),
        Command::Cleanup(args) => cleanup(args.backend),
        Command::Explain(args) => explain(&args),
        Command::Trace(args) => trace(&args),
    }
}

/// Loads every object once, from the manifests or the Kubernetes API.
fn load_once(settings: &Settings, metrics: &Metrics) -> anyhow::Result<Vec<Change>> {
    Ok(match &settings.source {
        SourceKind::Dir(dir) => {
            FileSource::new(manifest_dir(dir)?, metrics.clone()).settled_scan()?
        }
        SourceKind::Kubernetes { kubeconfig, master } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = api::client(kubeconfig.as_deref(), master.as_deref()).await?;
                api::list_once(client, &settings.node_name, metrics).await
            })?
        }
    })
}

/// `explain`: how one Service is programmed on this node, and why.
fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args.proxy)?;
    let key = explain::service_key(&args.service)?;
    let metrics = Metrics::new()?;
    let changes = load_once(&settings, &metrics)?;
    let mut state = State::new(&settings.node_name);
    for change in changes {
        state.apply(change);
    }
    let local = addresses::local_addresses().unwrap_or_default();
    let text = explain::explain(
        &state,
        &key,
        node_settings(&settings),
        &settings.nodeport_addresses,
        &local,
    )?;
    print!("{text}");
    Ok(())
}

/// `trace`: arm nftables tracing for one flow, print the next packet's path, disarm.
fn trace(args: &TraceArgs) -> anyhow::Result<()> {
    let flow = trace::Flow::new(args.src, args.dst, &args.proto)?;
    let timeout = parse_duration(&args.timeout).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    eprintln!(
        "tracing {flow} for up to {}; send the packet now",
        args.timeout
    );
    match trace::trace(&flow, timeout)? {
        Some(path) => {
            print!("{path}");
            Ok(())
        }
        None => bail!("no matching packet within {}", args.timeout),
    }
}

fn node_settings(settings: &Settings) -> NodeSettings {
    NodeSettings {
        cluster_cidrs: settings.cluster_cidrs,
        masquerade_all: settings.masquerade_all,
        masquerade_mark: settings.masquerade_mark(),
        ..NodeSettings::new(&settings.node_name)
    }
}

fn manifest_dir(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .with_context(|| format!("cannot read manifest directory {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

/// `render`: the whole ruleset as an nft script, from the manifests, without touching the kernel.
fn render(args: &ProxyArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(args)?;
    let SourceKind::Dir(dir) = &settings.source else {
        bail!("render reads manifests: use --from-dir DIR");
    };
    let dir = manifest_dir(dir)?;
    let metrics = Metrics::new()?;
    let changes = FileSource::new(dir, metrics.clone()).settled_scan()?;
    let mut reconciler = Reconciler::new(
        Timing::default(),
        node_settings(&settings),
        settings.nodeport_addresses.clone(),
        Box::new(Offline),
        metrics,
    )?;
    reconciler.handle(Event::Changes(changes));
    print!("{}", script::script(&reconciler.transaction_from_empty()));
    Ok(())
}

/// The backend that programs the kernel.
fn backend(kind: BackendKind) -> anyhow::Result<Box<dyn Backend>> {
    Ok(match kind {
        BackendKind::Netlink => Box::new(NetlinkBackend::new(Templates::bundled()?)?),
        BackendKind::Nft => Box::new(NftBackend::default()),
    })
}

/// `cleanup`: delete our tables.
fn cleanup(kind: BackendKind) -> anyhow::Result<()> {
    let deleted = backend(kind)?.delete_tables()?;
    info!(tables = deleted, "removed kube-nft-proxy tables");
    Ok(())
}

/// `run`: program the kernel and keep it in sync until SIGTERM/SIGINT.
fn run(args: &ProxyArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(args)?;
    if let SourceKind::Dir(dir) = &settings.source {
        manifest_dir(dir)?;
    }
    if !settings.without_effect.is_empty() {
        info!(sections = ?settings.without_effect, "configuration sections of other proxy modes have no effect");
    }
    if let Some(adj) = settings.oom_score_adj
        && let Err(e) = std::fs::write("/proc/self/oom_score_adj", adj.to_string())
    {
        warn!(error = %e, "cannot set oomScoreAdj");
    }
    let metrics = Metrics::new()?;
    let backend = backend(settings.backend)?;
    let (warnings, warnings_rx) = match &settings.source {
        SourceKind::Kubernetes { .. } => {
            let (sink, rx) = EventSink::channel(metrics.clone());
            (sink, Some(rx))
        }
        SourceKind::Dir(_) => (EventSink::none(), None),
    };
    let reconciler = Reconciler::new(
        Timing {
            min_sync_period: settings.min_sync_period,
            sync_period: settings.sync_period,
            stale_chain_delay: Duration::from_secs(1),
        },
        node_settings(&settings),
        settings.nodeport_addresses.clone(),
        backend,
        metrics.clone(),
    )?;
    let health = Health {
        status: reconciler.status(),
        timeout: settings.sync_period * 2,
        metrics: Some(metrics.clone()),
    };
    let (health_checks_tx, health_checks_rx) = tokio::sync::watch::channel(HealthChecks::default());
    let reconciler = reconciler
        .with_health_checks(health_checks_tx)
        .with_events(warnings.clone());
    let reconciler = match Conntrack::open() {
        Ok(conntrack) => reconciler.with_flow_cleaner(Box::new(conntrack)),
        Err(e) => {
            warn!(error = %e, "conntrack netlink unavailable: stale UDP flows will not be cleaned");
            reconciler
        }
    };
    info!(node = %settings.node_name, source = ?settings.source, backend = ?settings.backend, "starting kube-nft-proxy");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let (events, inbox) = mpsc::channel();
    let worker = thread::Builder::new()
        .name("reconciler".into())
        .spawn(move || reconciler.run(inbox))?;
    let address_events = events.clone();
    thread::Builder::new().name("local-addresses".into()).spawn(move || {
        if let Err(e) = addresses::watch(address_events) {
            error!(error = %e, "cannot follow local addresses; NodePort addresses stay as they are");
        }
    })?;
    let kernel_events = events.clone();
    thread::Builder::new()
        .name("kernel-changes".into())
        .spawn(move || {
            if let Err(e) = kernel_changes::watch(kernel_events) {
                error!(error = %e, "cannot follow nf_tables notifications; changes others make to our tables are repaired only on the next failure");
            }
        })?;
    let source_events = events.clone();
    match &settings.source {
        SourceKind::Dir(dir) => {
            let source = FileSource::new(dir, metrics.clone());
            thread::Builder::new()
                .name("file-source".into())
                .spawn(move || {
                    if let Err(e) = source.run(source_events) {
                        error!(error = %e, "manifest source stopped; rules stay as they are");
                    }
                })?;
        }
        SourceKind::Kubernetes { kubeconfig, master } => {
            let client = runtime.block_on(api::client(kubeconfig.as_deref(), master.as_deref()))?;
            if let Some(rx) = warnings_rx {
                runtime.spawn(kube_nft_proxy::events::publish(
                    client.clone(),
                    settings.node_name.clone(),
                    rx,
                    metrics.clone(),
                ));
            }
            runtime.spawn(api::run(
                client,
                settings.node_name.clone(),
                metrics.clone(),
                warnings.clone(),
                source_events,
            ));
        }
    }

    runtime.block_on(async {
        if let Some(addr) = settings.metrics_bind_address {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = http::serve_metrics(addr, metrics).await {
                    error!(%addr, error = %e, "metrics server failed");
                }
            });
        }
        tokio::spawn(health_check::run(health_checks_rx, health.clone()));
        if let Some(addr) = settings.healthz_bind_address {
            tokio::spawn(async move {
                if let Err(e) = http::serve_health(addr, health).await {
                    error!(%addr, error = %e, "health server failed");
                }
            });
        }
        wait_for_signal().await
    })?;
    info!("shutting down; rules stay in place");
    let _ = events.send(Event::Shutdown);
    if worker.join().is_err() {
        bail!("the reconciler thread panicked");
    }
    // Watch streams and servers end with the process; do not wait on them.
    runtime.shutdown_timeout(Duration::from_millis(500));
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
