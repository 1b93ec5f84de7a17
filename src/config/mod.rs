//! Command line and configuration file. Flag names follow kube-proxy's so operators can reuse
//! them; `--config` reads a KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1, see
//! [`file`]) and flags override it. Anything the proxy would not honour is an error at start-up,
//! never ignored.

pub mod file;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::model::Cidr;
pub use crate::plan::NodePortAddresses;

/// kube-nft-proxy: an nftables-based replacement for kube-proxy.
#[derive(Debug, Parser)]
#[command(name = "kube-nft-proxy", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: `text`, or `json` (one JSON object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, alias = "logging-format")]
    pub log_format: LogFormat,
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Program the current network namespace and keep it in sync (needs root / CAP_NET_ADMIN).
    Run(ProxyArgs),
    /// Print the whole ruleset as an `nft -f` script that creates it from nothing (needs no root).
    Render(ProxyArgs),
    /// Delete the proxy's tables from the current network namespace.
    Cleanup(CleanupArgs),
    /// Explain a Service: per port and address, the endpoints chosen for cluster-wide and
    /// node-local traffic and why, and the nftables objects that implement it.
    Explain(ExplainArgs),
    /// Trace the next packet of a flow through the proxy's chains (needs root): which rules
    /// matched, which endpoint was chosen, whether it was masqueraded.
    Trace(TraceArgs),
}

/// Settings of `explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The Service, as NAMESPACE/NAME (or NAME in `default`).
    #[arg(value_name = "SERVICE")]
    pub service: String,
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

/// Settings of `trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The client's address.
    #[arg(long, value_name = "IP")]
    pub src: std::net::IpAddr,
    /// The destination the client connects to (a ClusterIP, NodePort, external or LB address).
    #[arg(long, value_name = "IP:PORT")]
    pub dst: SocketAddr,
    /// `tcp`, `udp` or `sctp`.
    #[arg(long, default_value = "tcp")]
    pub proto: String,
    /// How long to wait for a matching packet (`30s`, `2m`).
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub timeout: String,
}

/// How the kernel is programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendKind {
    /// nf_tables netlink batches straight from the proxy (the default).
    #[default]
    Netlink,
    /// The nft binary: the reference implementation, much slower at scale.
    Nft,
}

/// Settings of `cleanup`.
#[derive(Debug, Args, Default)]
pub struct CleanupArgs {
    /// How to reach nf_tables.
    #[arg(long, value_enum, default_value_t = BackendKind::Netlink)]
    pub backend: BackendKind,
}

/// Settings shared by `run` and `render`.
#[derive(Debug, Args, Default)]
pub struct ProxyArgs {
    /// Read Services, EndpointSlices and Nodes from the manifests in DIR (and follow changes)
    /// instead of the Kubernetes API.
    #[arg(long, value_name = "DIR")]
    pub from_dir: Option<PathBuf>,
    /// Kubeconfig for the Kubernetes API source (default: the in-cluster configuration).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's address, overriding the kubeconfig's.
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,
    /// KubeProxyConfiguration file; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's name (default: the host name).
    #[arg(long, value_name = "NODE")]
    pub hostname_override: Option<String>,
    /// Pod CIDRs, at most one per family, comma-separated.
    #[arg(long, value_name = "CIDR[,CIDR]")]
    pub cluster_cidr: Option<String>,
    /// Addresses that accept NodePorts: CIDRs, or `primary` (the Node's addresses).
    #[arg(long, value_name = "CIDR[,CIDR]|primary")]
    pub nodeport_addresses: Option<String>,
    /// Masquerade all traffic to ClusterIPs.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub masquerade_all: Option<bool>,
    /// Metrics server address (empty: disabled).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_bind_address: Option<String>,
    /// Health server address (empty: disabled).
    #[arg(long, value_name = "HOST:PORT")]
    pub healthz_bind_address: Option<String>,
    /// Least time between syncs (`0s`, `250ms`, `1s`, `1m`).
    #[arg(long, value_name = "DURATION")]
    pub min_sync_period: Option<String>,
    /// Longest retry interval after a failed sync; health fails after twice this.
    #[arg(long, value_name = "DURATION")]
    pub sync_period: Option<String>,
    /// How to program nf_tables.
    #[arg(long, value_enum, default_value_t = BackendKind::Netlink)]
    pub backend: BackendKind,
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
}

fn invalid(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        message: message.into(),
    }
}

/// Where objects come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    Dir(PathBuf),
    Kubernetes {
        kubeconfig: Option<PathBuf>,
        master: Option<String>,
    },
}

/// Every setting, resolved: flag, else config file, else default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub source: SourceKind,
    pub node_name: String,
    pub cluster_cidrs: [Option<Cidr>; 2],
    pub nodeport_addresses: NodePortAddresses,
    pub masquerade_all: bool,
    /// The mark bit for masquerading (kube-proxy's masqueradeBit, default 14 = 0x4000).
    pub masquerade_bit: u8,
    pub metrics_bind_address: Option<SocketAddr>,
    pub healthz_bind_address: Option<SocketAddr>,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    /// The process's OOM score adjustment (kube-proxy's oomScoreAdj).
    pub oom_score_adj: Option<i64>,
    /// Configuration sections accepted without effect (logged at start-up).
    pub without_effect: Vec<String>,
    pub backend: BackendKind,
}

impl Settings {
    /// Resolves flags over the config file over defaults.
    pub fn resolve(args: &ProxyArgs) -> Result<Settings, ConfigError> {
        let file = match &args.config {
            Some(path) => read_config_file(path)?,
            None => file::FileSettings::default(),
        };
        let source = match (&args.from_dir, &args.kubeconfig, &args.master) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(invalid(
                    "--from-dir",
                    "cannot be combined with --kubeconfig or --master",
                ));
            }
            (Some(dir), None, None) => SourceKind::Dir(dir.clone()),
            (None, kubeconfig, master) => SourceKind::Kubernetes {
                kubeconfig: kubeconfig
                    .clone()
                    .or_else(|| file.kubeconfig.clone().map(PathBuf::from)),
                master: master.clone(),
            },
        };
        let node_name = match args.hostname_override.clone().or(file.hostname_override) {
            Some(name) if !name.trim().is_empty() => name.trim().to_lowercase(),
            _ => host_name(),
        };
        let cluster_cidrs = match args
            .cluster_cidr
            .as_deref()
            .or(file.cluster_cidr.as_deref())
        {
            Some(text) => parse_cluster_cidrs(text)?,
            None => [None, None],
        };
        let nodeport_addresses = match (&args.nodeport_addresses, file.node_port_addresses) {
            (Some(flag), _) => {
                parse_nodeport_addresses(&flag.split(',').map(str::to_string).collect::<Vec<_>>())?
            }
            (None, Some(list)) => parse_nodeport_addresses(&list)?,
            (None, None) => NodePortAddresses::Primary,
        };
        let masquerade_bit = match file.masquerade_bit {
            None => 14,
            Some(b) => u8::try_from(b)
                .ok()
                .filter(|b| *b <= 31)
                .ok_or_else(|| invalid("nftables.masqueradeBit", format!("{b} is outside 0-31")))?,
        };
        let duration = |flag: &'static str, value: Option<&str>, default: Duration| match value {
            Some(text) => parse_duration(text).map_err(|m| invalid(flag, m)),
            None => Ok(default),
        };
        let min_sync_period = duration(
            "--min-sync-period",
            args.min_sync_period
                .as_deref()
                .or(file.min_sync_period.as_deref()),
            Duration::from_secs(1),
        )?;
        let sync_period = duration(
            "--sync-period",
            args.sync_period.as_deref().or(file.sync_period.as_deref()),
            Duration::from_secs(30),
        )?;
        if sync_period.is_zero() {
            return Err(invalid("--sync-period", "must be greater than 0"));
        }
        Ok(Settings {
            source,
            node_name,
            cluster_cidrs,
            nodeport_addresses,
            masquerade_all: args.masquerade_all.or(file.masquerade_all).unwrap_or(false),
            masquerade_bit,
            metrics_bind_address: parse_bind(
                "--metrics-bind-address",
                args.metrics_bind_address
                    .as_deref()
                    .or(file.metrics_bind_address.as_deref()),
                "127.0.0.1:10249",
            )?,
            healthz_bind_address: parse_bind(
                "--healthz-bind-address",
                args.healthz_bind_address
                    .as_deref()
                    .or(file.healthz_bind_address.as_deref()),
                "0.0.0.0:10256",
            )?,
            min_sync_period,
            sync_period,
            oom_score_adj: file.oom_score_adj,
            without_effect: file.without_effect,
            backend: args.backend,
        })
    }

    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }
}

fn read_config_file(path: &Path) -> Result<file::FileSettings, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    file::parse(&text).map_err(|message| ConfigError::File {
        path: shown,
        message,
    })
}

/// The host name, as kube-proxy uses it by default (lower-cased).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_default()
}

fn parse_cluster_cidrs(text: &str) -> Result<[Option<Cidr>; 2], ConfigError> {
    let mut cidrs = [None, None];
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let cidr = Cidr::parse(part).map_err(|m| invalid("--cluster-cidr", m))?;
        let slot = &mut cidrs[cidr.family().index()];
        if slot.is_some() {
            return Err(invalid(
                "--cluster-cidr",
                format!("at most one {} CIDR", cidr.family()),
            ));
        }
        *slot = Some(cidr);
    }
    Ok(cidrs)
}

fn parse_nodeport_addresses(list: &[String]) -> Result<NodePortAddresses, ConfigError> {
    let items: Vec<&str> = list
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    match items.as_slice() {
        [] | ["primary"] => Ok(NodePortAddresses::Primary),
        _ => items
            .iter()
            .map(|i| Cidr::parse(i).map_err(|m| invalid("--nodeport-addresses", m)))
            .collect::<Result<Vec<_>, _>>()
            .map(NodePortAddresses::Cidrs),
    }
}

fn parse_bind(
    flag: &'static str,
    value: Option<&str>,
    default: &str,
) -> Result<Option<SocketAddr>, ConfigError> {
    match value.unwrap_or(default).trim() {
        "" => Ok(None),
        text => text
            .parse()
            .map(Some)
            .map_err(|_| invalid(flag, format!("{text:?} is not HOST:PORT"))),
    }
}

/// Parses a Go-style duration: `0`, `250ms`, `1s`, `1m30s`, `1.5h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (use forms like 0s, 250ms, 1s, 1m)");
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_end].parse().map_err(|_| bad())?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += number * seconds;
        rest = &rest[unit_end..];
    }
    if !total.is_finite() || total > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut ProxyArgs)) -> ProxyArgs {
        let mut a = ProxyArgs {
            from_dir: Some("/tmp".into()),
            hostname_override: Some("Node-A".into()),
            ..ProxyArgs::default()
        };
        f(&mut a);
        a
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "1", "s", "1x", "-1s", "1s2"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults() {
        let s = Settings::resolve(&args(|_| {})).unwrap();
        assert_eq!(s.node_name, "node-a");
        assert_eq!(s.min_sync_period, Duration::from_secs(1));
        assert_eq!(s.sync_period, Duration::from_secs(30));
        assert_eq!(s.masquerade_mark(), 0x4000);
        assert_eq!(
            s.metrics_bind_address,
            Some("127.0.0.1:10249".parse().unwrap())
        );
        assert_eq!(s.nodeport_addresses, NodePortAddresses::Primary);
        assert!(!s.masquerade_all);
    }

    #[test]
    fn cluster_cidrs_per_family() {
        let s = Settings::resolve(&args(|a| {
            a.cluster_cidr = Some("10.244.0.0/16, fd00:10:244::/56".into())
        }))
        .unwrap();
        assert_eq!(s.cluster_cidrs[1].unwrap().to_string(), "fd00:10:244::/56");
        assert!(
            Settings::resolve(&args(
                |a| a.cluster_cidr = Some("10.0.0.0/8,10.1.0.0/16".into())
            ))
            .is_err()
        );
        assert!(Settings::resolve(&args(|a| a.cluster_cidr = Some("10.0.0.0".into()))).is_err());
    }

    #[test]
    fn config_file_with_flags_overriding() {
        let path = std::env::temp_dir().join(format!("knp-config-{}.yaml", std::process::id()));
        std::fs::write(
            &path,
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n\
             clusterCIDR: 10.244.0.0/16\nnftables:\n  masqueradeAll: true\n  minSyncPeriod: 2s\n  masqueradeBit: 5\n",
        )
        .unwrap();
        let s = Settings::resolve(&args(|a| {
            a.config = Some(path.clone());
            a.min_sync_period = Some("0s".into());
        }))
        .unwrap();
        assert!(s.masquerade_all);
        assert_eq!(s.min_sync_period, Duration::ZERO);
        assert_eq!(s.masquerade_mark(), 0x20);
        assert_eq!(s.cluster_cidrs[0].unwrap().to_string(), "10.244.0.0/16");
        std::fs::write(&path, "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nbogus: 1\n").unwrap();
        let e = Settings::resolve(&args(|a| a.config = Some(path.clone()))).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn cli_parses_kube_proxy_style_flags() {
        let cli = Cli::try_parse_from([
            "kube-nft-proxy",
            "run",
            "--from-dir",
            "examples",
            "--masquerade-all",
            "--min-sync-period",
            "250ms",
            "--cluster-cidr",
            "10.244.0.0/16",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.masquerade_all, Some(true));
        let s = Settings::resolve(&a).unwrap();
        assert_eq!(s.min_sync_period, Duration::from_millis(250));
    }
}
