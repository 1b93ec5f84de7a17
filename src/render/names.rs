//! Names of the per-service objects, built only from validated parts:
//! `service-<ns>/<name>/<proto>/<port>` and `endpoint-<ns>/<name>/<proto>/<port>__<ip>/<port>`
//! (IPv6 `:` written `.`). With DNS-label parts these stay under the kernel's 255-byte limit;
//! the check is still made, and a name that does not fit is a render error, never a truncation
//! that could collide.

use std::net::SocketAddr;

use crate::model::{PortName, Protocol, ServiceKey};
use crate::ruleset::{ChainName, NameError};

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

pub fn service_chain(
    key: &ServiceKey,
    protocol: Protocol,
    port: &PortName,
) -> Result<ChainName, NameError> {
    ChainName::new(&format!(
        "service-{}",
        service_port_base(key, protocol, port)
    ))
}

pub fn endpoint_chain(
    key: &ServiceKey,
    protocol: Protocol,
    port: &PortName,
    endpoint: SocketAddr,
) -> Result<ChainName, NameError> {
    let ip = endpoint.ip().to_string().replace(':', ".");
    ChainName::new(&format!(
        "endpoint-{}__{}/{}",
        service_port_base(key, protocol, port),
        ip,
        endpoint.port()
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
        assert_eq!(
            service_chain(&k, Protocol::Tcp, &p).unwrap().as_str(),
            "service-ns1/svc1/tcp/p80"
        );
        assert_eq!(
            endpoint_chain(&k, Protocol::Udp, &p, "[fd00::1:2]:53".parse().unwrap())
                .unwrap()
                .as_str(),
            "endpoint-ns1/svc1/udp/p80__fd00..1.2/53"
        );
        let unnamed = PortName::default();
        assert_eq!(
            service_chain(&k, Protocol::Sctp, &unnamed)
                .unwrap()
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
    }
}
