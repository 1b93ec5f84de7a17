//! Names of the per-service objects, built only from validated parts:
//! `service-<ns>/<name>/<proto>/<port>` (also `local-`, `external-`, `firewall-`) and
//! `endpoint-<ns>/<name>/<proto>/<port>__<ip>/<port>` (also `affinity-`; IPv6 `:` written `.`).
//! With DNS-label parts these stay under the kernel's 255-byte limit; the check is still made,
//! and a name that does not fit is a render error, never a truncation that could collide.

use std::net::SocketAddr;

use crate::model::{PortName, Protocol, ServiceKey};
use crate::ruleset::{ChainName, NameError, SetName};

/// Shards of each endpoint map.
pub const ENDPOINT_MAP_SHARDS: u64 = 64;

/// The shard of endpoint map `base` that a Service's elements and rules use: `base-NN`, `NN`
/// from a hash of `namespace/name` that is the same on every run (FNV-1a).
pub fn endpoint_map(base: &SetName, key: &ServiceKey) -> Result<SetName, NameError> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    SetName::new(&format!("{base}-{:02}", hash % ENDPOINT_MAP_SHARDS))
}

/// `ns/name/proto/port`, the base of a service port's object names.
pub fn service_port_base(key: &ServiceKey, protocol: Protocol, port: &PortName) -> String {
    format!(
        "{}/{}/{}/{}",
        key.namespace,
        key.name,
        protocol.nft_name(),
        port
    )
}

/// The names of the chains of one service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortChains {
    /// `service-…`: the cluster-policy endpoint choice.
    pub cluster: ChainName,
    /// `local-…`: the local-policy endpoint choice.
    pub local: ChainName,
    /// `external-…`: entry of NodePort, external-IP and LB traffic.
    pub external: ChainName,
    /// `firewall-…`: load-balancer source ranges.
    pub firewall: ChainName,
}

impl PortChains {
    pub fn new(
        key: &ServiceKey,
        protocol: Protocol,
        port: &PortName,
    ) -> Result<PortChains, NameError> {
        let base = service_port_base(key, protocol, port);
        Ok(PortChains {
            cluster: ChainName::new(&format!("service-{base}"))?,
            local: ChainName::new(&format!("local-{base}"))?,
            external: ChainName::new(&format!("external-{base}"))?,
            firewall: ChainName::new(&format!("firewall-{base}"))?,
        })
    }
}

/// `ns/name/proto/port__ip/port`, the base of an endpoint's chain and affinity set.
fn endpoint_base(
    key: &ServiceKey,
    protocol: Protocol,
    port: &PortName,
    endpoint: SocketAddr,
) -> String {
    let ip = endpoint.ip().to_string().replace(':', ".");
    format!(
        "{}__{}/{}",
        service_port_base(key, protocol, port),
        ip,
        endpoint.port()
    )
}

pub fn endpoint_chain(
    key: &ServiceKey,
    protocol: Protocol,
    port: &PortName,
    endpoint: SocketAddr,
) -> Result<ChainName, NameError> {
    ChainName::new(&format!(
        "endpoint-{}",
        endpoint_base(key, protocol, port, endpoint)
    ))
}

pub fn affinity_set(
    key: &ServiceKey,
    protocol: Protocol,
    port: &PortName,
    endpoint: SocketAddr,
) -> Result<SetName, NameError> {
    SetName::new(&format!(
        "affinity-{}",
        endpoint_base(key, protocol, port, endpoint)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Label;

    fn key(ns: &str, name: &str) -> ServiceKey {
        ServiceKey {
            namespace: Label::parse(ns).unwrap(),
            name: Label::parse(name).unwrap(),
        }
    }

    #[test]
    fn names() {
        let k = key("ns1", "svc1");
        let p = PortName::parse(Some("p80")).unwrap();
        let chains = PortChains::new(&k, Protocol::Tcp, &p).unwrap();
        assert_eq!(chains.cluster.as_str(), "service-ns1/svc1/tcp/p80");
        assert_eq!(chains.local.as_str(), "local-ns1/svc1/tcp/p80");
        assert_eq!(chains.external.as_str(), "external-ns1/svc1/tcp/p80");
        assert_eq!(chains.firewall.as_str(), "firewall-ns1/svc1/tcp/p80");
        assert_eq!(
            endpoint_chain(&k, Protocol::Udp, &p, "[fd00::1:2]:53".parse().unwrap())
                .unwrap()
                .as_str(),
            "endpoint-ns1/svc1/udp/p80__fd00..1.2/53"
        );
        let unnamed = PortName::default();
        assert_eq!(
            PortChains::new(&k, Protocol::Sctp, &unnamed)
                .unwrap()
                .cluster
                .as_str(),
            "service-ns1/svc1/sctp/"
        );
    }

    #[test]
    fn the_longest_possible_names_fit() {
        let long = "a".repeat(63);
        let k = key(&long, &long);
        let p = PortName::parse(Some(&long)).unwrap();
        let ep: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
            .parse()
            .unwrap();
        assert!(endpoint_chain(&k, Protocol::Sctp, &p, ep).is_ok());
        assert!(affinity_set(&k, Protocol::Sctp, &p, ep).is_ok());
        assert!(PortChains::new(&k, Protocol::Sctp, &p).is_ok());
    }
}
