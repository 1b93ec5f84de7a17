//! The KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1), read field by field:
//! fields this proxy honours are used; settings of the other proxy modes (`iptables`, `ipvs`,
//! `winkernel`, `windows`) and `configSyncPeriod` (watchers do not resync) are accepted and named
//! in the log; fields the proxy does not implement are accepted only at their default value (as
//! kubeadm writes them), otherwise they are an error; anything else is an unknown field and an
//! error. Nothing is ignored silently.

use serde_json::{Map, Value};

/// The settings a configuration file gives.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileSettings {
    pub cluster_cidr: Option<String>,
    pub hostname_override: Option<String>,
    pub node_port_addresses: Option<Vec<String>>,
    pub metrics_bind_address: Option<String>,
    pub healthz_bind_address: Option<String>,
    pub kubeconfig: Option<String>,
    pub masquerade_all: Option<bool>,
    pub masquerade_bit: Option<i64>,
    pub min_sync_period: Option<String>,
    pub sync_period: Option<String>,
    pub oom_score_adj: Option<i64>,
    /// Sections accepted without effect, for the start-up log.
    pub without_effect: Vec<String>,
}

/// Sections that configure other proxy modes or informer resyncs: no effect here.
const WITHOUT_EFFECT: &[&str] = &[
    "iptables",
    "ipvs",
    "winkernel",
    "windows",
    "configSyncPeriod",
];
/// Fields the proxy does not implement: accepted at their default value only.
const DEFAULT_ONLY: &[&str] = &[
    "bindAddressHardFail",
    "conntrack",
    "detectLocal",
    "enableProfiling",
    "featureGates",
    "logging",
    "portRange",
    "showHiddenMetricsForVersion",
];

/// Parses the file text; errors name the field.
pub fn parse(text: &str) -> Result<FileSettings, String> {
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let Value::Object(fields) = doc else {
        return Err("not a mapping".into());
    };
    let mut out = FileSettings::default();
    let mut kind_ok = (false, false);
    for (key, value) in &fields {
        match key.as_str() {
            "apiVersion" => kind_ok.0 = value.as_str() == Some("kubeproxy.config.k8s.io/v1alpha1"),
            "kind" => kind_ok.1 = value.as_str() == Some("KubeProxyConfiguration"),
            "mode" => match value.as_str() {
                Some("" | "nftables") | None => {}
                Some(other) => {
                    return Err(format!(
                        "mode: {other:?} is not supported; kube-nft-proxy is an nftables proxy"
                    ));
                }
            },
            "clusterCIDR" => out.cluster_cidr = string(key, value)?,
            "hostnameOverride" => out.hostname_override = string(key, value)?,
            "metricsBindAddress" => out.metrics_bind_address = string(key, value)?,
            "healthzBindAddress" => out.healthz_bind_address = string(key, value)?,
            "nodePortAddresses" => {
                out.node_port_addresses = match value {
                    Value::Null => None,
                    Value::Array(items) => Some(
                        items
                            .iter()
                            .map(|i| {
                                i.as_str()
                                    .map(str::to_string)
                                    .ok_or_else(|| format!("{key}: expected strings"))
                            })
                            .collect::<Result<_, _>>()?,
                    ),
                    _ => return Err(format!("{key}: expected a list")),
                }
            }
            "oomScoreAdj" => out.oom_score_adj = integer(key, value)?,
            "detectLocalMode" => match value.as_str() {
                Some("" | "ClusterCIDR") | None => {}
                Some(other) => {
                    return Err(format!(
                        "detectLocalMode: {other:?} is not supported (only ClusterCIDR, from clusterCIDR)"
                    ));
                }
            },
            "bindAddress" => match value.as_str() {
                Some("" | "0.0.0.0" | "::") | None => {}
                Some(other) => {
                    return Err(format!(
                        "bindAddress: {other:?} is not supported (the node IP comes from the Node object)"
                    ));
                }
            },
            "clientConnection" => {
                for (k, v) in object(key, value)? {
                    match k.as_str() {
                        "kubeconfig" => out.kubeconfig = string(k, v)?.filter(|s| !s.is_empty()),
                        _ => default_only(&format!("{key}.{k}"), v)?,
                    }
                }
            }
            "nftables" => {
                for (k, v) in object(key, value)? {
                    let field = format!("{key}.{k}");
                    match k.as_str() {
                        "masqueradeAll" => out.masquerade_all = boolean(&field, v)?,
                        "masqueradeBit" => out.masquerade_bit = integer(&field, v)?,
                        "minSyncPeriod" => out.min_sync_period = string(&field, v)?,
                        "syncPeriod" => out.sync_period = string(&field, v)?,
                        _ => return Err(format!("{field}: unknown field")),
                    }
                }
            }
            "linux" => {
                for (k, v) in object(key, value)? {
                    let field = format!("{key}.{k}");
                    match k.as_str() {
                        "masqueradeAll" => {
                            if out.masquerade_all.is_none() {
                                out.masquerade_all = boolean(&field, v)?;
                            }
                        }
                        "oomScoreAdj" => {
                            out.oom_score_adj = integer(&field, v)?.or(out.oom_score_adj)
                        }
                        _ => default_only(&field, v)?,
                    }
                }
            }
            k if WITHOUT_EFFECT.contains(&k) => out.without_effect.push(k.to_string()),
            k if DEFAULT_ONLY.contains(&k) => default_only(k, value)?,
            other => return Err(format!("{other}: unknown field")),
        }
    }
    if kind_ok != (true, true) {
        return Err(
            "expected apiVersion kubeproxy.config.k8s.io/v1alpha1, kind KubeProxyConfiguration"
                .into(),
        );
    }
    Ok(out)
}

fn object<'a>(key: &str, value: &'a Value) -> Result<&'a Map<String, Value>, String> {
    static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(&EMPTY),
        _ => Err(format!("{key}: expected a mapping")),
    }
}

fn string(key: &str, value: &Value) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(format!("{key}: expected a string")),
    }
}

fn boolean(key: &str, value: &Value) -> Result<Option<bool>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        _ => Err(format!("{key}: expected true or false")),
    }
}

fn integer(key: &str, value: &Value) -> Result<Option<i64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("{key}: expected an integer")),
        _ => Err(format!("{key}: expected an integer")),
    }
}

/// A field the proxy does not implement: fine at its default, an error otherwise.
fn default_only(key: &str, value: &Value) -> Result<(), String> {
    if is_default(value) {
        Ok(())
    } else {
        Err(format!(
            "{key}: {value} is not supported by kube-nft-proxy (only the default is accepted)"
        ))
    }
}

/// Null, false, zero, an empty or zero string or duration, or a collection of such.
fn is_default(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => matches!(s.as_str(), "" | "0" | "0s"),
        Value::Array(items) => items.iter().all(is_default),
        Value::Object(map) => map.values().all(is_default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str =
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";

    #[test]
    fn kubeadms_default_configuration_loads() {
        // What `kubeadm config print init-defaults --component-configs KubeProxyConfiguration` writes.
        let text = format!(
            "{HEAD}bindAddress: 0.0.0.0\nbindAddressHardFail: false\nclientConnection:\n  acceptContentTypes: \"\"\n  burst: 0\n  \
             contentType: \"\"\n  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\n  qps: 0\nclusterCIDR: \"\"\nconfigSyncPeriod: 0s\n\
             conntrack:\n  maxPerCore: null\n  min: null\n  tcpBeLiberal: false\n  tcpCloseWaitTimeout: null\n  \
             tcpEstablishedTimeout: null\n  udpStreamTimeout: 0s\n  udpTimeout: 0s\ndetectLocal:\n  bridgeInterface: \"\"\n  \
             interfaceNamePrefix: \"\"\ndetectLocalMode: \"\"\nenableProfiling: false\nhealthzBindAddress: \"\"\nhostnameOverride: \"\"\n\
             iptables:\n  localhostNodePorts: null\n  masqueradeAll: false\n  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s\n\
             ipvs:\n  excludeCIDRs: null\n  minSyncPeriod: 0s\n  scheduler: \"\"\n  strictARP: false\n  syncPeriod: 0s\n  \
             tcpFinTimeout: 0s\n  tcpTimeout: 0s\n  udpTimeout: 0s\nlogging:\n  flushFrequency: 0\n  options:\n    json:\n      \
             infoBufferSize: \"0\"\n  verbosity: 0\nmetricsBindAddress: \"\"\nmode: \"\"\nnftables:\n  masqueradeAll: false\n  \
             masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nnodePortAddresses: null\noomScoreAdj: null\nportRange: \"\"\n\
             showHiddenMetricsForVersion: \"\"\nwinkernel:\n  enableDSR: false\n  forwardHealthCheckVip: false\n  networkName: \"\"\n  \
             rootHnsEndpointName: \"\"\n  sourceVip: \"\"\n"
        );
        let s = parse(&text).unwrap();
        assert_eq!(
            s.kubeconfig.as_deref(),
            Some("/var/lib/kube-proxy/kubeconfig.conf")
        );
        assert_eq!(
            s.without_effect,
            ["configSyncPeriod", "iptables", "ipvs", "winkernel"]
        );
    }

    #[test]
    fn unsupported_settings_are_errors_naming_the_field() {
        for (body, field) in [
            ("bogus: 1\n", "bogus"),
            ("mode: iptables\n", "mode"),
            ("conntrack:\n  maxPerCore: 65536\n", "conntrack"),
            ("clientConnection:\n  qps: 50\n", "clientConnection.qps"),
            ("detectLocalMode: BridgeInterface\n", "detectLocalMode"),
            ("nftables:\n  bogus: 1\n", "nftables.bogus"),
            ("bindAddress: 10.0.0.1\n", "bindAddress"),
            ("enableProfiling: true\n", "enableProfiling"),
        ] {
            let e = parse(&format!("{HEAD}{body}")).unwrap_err();
            assert!(e.starts_with(field), "{body}: {e}");
        }
        assert!(parse("apiVersion: v1\nkind: ConfigMap\n").is_err());
    }

    #[test]
    fn honoured_settings() {
        let s = parse(&format!(
            "{HEAD}clusterCIDR: 10.244.0.0/16\nnftables:\n  masqueradeAll: true\n  minSyncPeriod: 2s\n  masqueradeBit: 5\n\
             nodePortAddresses: [primary]\noomScoreAdj: -999\n"
        ))
        .unwrap();
        assert_eq!(s.cluster_cidr.as_deref(), Some("10.244.0.0/16"));
        assert_eq!(s.masquerade_all, Some(true));
        assert_eq!(s.masquerade_bit, Some(5));
        assert_eq!(s.node_port_addresses, Some(vec!["primary".to_string()]));
        assert_eq!(s.oom_score_adj, Some(-999));
    }
}
