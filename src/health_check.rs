//! healthCheckNodePort servers: for each LoadBalancer Service with externalTrafficPolicy Local,
//! an HTTP server on its healthCheckNodePort, on the addresses that accept NodePorts. Any path
//! answers, as kube-proxy does: 200 when this node has local ready endpoints and the proxy is
//! healthy, else 503, with `{"service":{…},"localEndpoints":N,"serviceProxyHealthy":…}` and the
//! header `X-Load-Balancing-Endpoint-Weight: N`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::http::{Health, json_headers};
use crate::model::Family;
use crate::plan::NodePortIps;

/// What one health-check port reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealth {
    pub namespace: String,
    pub name: String,
    /// Distinct local ready endpoint addresses.
    pub local_endpoints: usize,
}

/// Every health-check server to run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthChecks {
    /// Port → the Service it reports on.
    pub services: BTreeMap<u16, ServiceHealth>,
    /// Where to listen, per family: the NodePort addresses.
    pub addresses: [Option<NodePortIps>; 2],
}

impl HealthChecks {
    /// The sockets to listen on.
    fn sockets(&self) -> BTreeSet<SocketAddr> {
        let mut sockets = BTreeSet::new();
        for port in self.services.keys() {
            for family in Family::ALL {
                match &self.addresses[family.index()] {
                    Some(NodePortIps::AllLocal) => {
                        let any = match family {
                            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                        };
                        sockets.insert(SocketAddr::new(any, *port));
                    }
                    Some(NodePortIps::Only(ips)) => {
                        sockets.extend(ips.iter().map(|ip| SocketAddr::new(*ip, *port)));
                    }
                    None => {}
                }
            }
        }
        sockets
    }
}

/// The response for one port.
fn respond(
    service: Option<&ServiceHealth>,
    proxy_healthy: bool,
) -> (StatusCode, HeaderMap, String) {
    let (namespace, name, count) = service.map_or(("", "", 0), |s| {
        (s.namespace.as_str(), s.name.as_str(), s.local_endpoints)
    });
    let mut headers = json_headers();
    headers.insert("x-load-balancing-endpoint-weight", HeaderValue::from(count));
    let body = format!(
        "{{\"service\":{{\"namespace\":\"{namespace}\",\"name\":\"{name}\"}},\"localEndpoints\":{count},\"serviceProxyHealthy\":{proxy_healthy}}}"
    );
    let code = if count > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, headers, body)
}

/// Binds one listening socket (IPv6 sockets only take IPv6, so `[::]` and `0.0.0.0` coexist).
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// Runs the servers `wanted` asks for until the sender is dropped.
pub async fn run(mut wanted: watch::Receiver<HealthChecks>, health: Health) {
    let state: Arc<RwLock<BTreeMap<u16, ServiceHealth>>> = Arc::default();
    let mut servers: BTreeMap<SocketAddr, JoinHandle<()>> = BTreeMap::new();
    loop {
        let current = wanted.borrow_and_update().clone();
        if let Ok(mut s) = state.write() {
            *s = current.services.clone();
        }
        let sockets = current.sockets();
        servers.retain(|addr, task| {
            let keep = sockets.contains(addr) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for addr in sockets {
            if servers.contains_key(&addr) {
                continue;
            }
            match listen(addr) {
                Ok(listener) => {
                    info!(%addr, "serving health checks");
                    let state = state.clone();
                    let health = health.clone();
                    let port = addr.port();
                    let app = Router::new().fallback(move || {
                        let service = state.read().ok().and_then(|s| s.get(&port).cloned());
                        let healthy = health.check(SystemTime::now()).0;
                        std::future::ready(respond(service.as_ref(), healthy).into_response())
                    });
                    servers.insert(
                        addr,
                        tokio::spawn(async move {
                            if let Err(e) = axum::serve(listener, app).await {
                                warn!(%addr, error = %e, "health-check server stopped");
                            }
                        }),
                    );
                }
                Err(e) => {
                    warn!(%addr, error = %e, "cannot serve health checks; will retry on the next change")
                }
            }
        }
        if wanted.changed().await.is_err() {
            break;
        }
    }
    for task in servers.values() {
        task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_follow_kube_proxy() {
        let svc = ServiceHealth {
            namespace: "ns".into(),
            name: "lb".into(),
            local_endpoints: 2,
        };
        let (code, headers, body) = respond(Some(&svc), true);
        assert_eq!(code, StatusCode::OK);
        assert_eq!(headers["x-load-balancing-endpoint-weight"], "2");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(
            body,
            r#"{"service":{"namespace":"ns","name":"lb"},"localEndpoints":2,"serviceProxyHealthy":true}"#
        );
        assert_eq!(
            respond(Some(&svc), false).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let none = ServiceHealth {
            local_endpoints: 0,
            ..svc
        };
        assert_eq!(
            respond(Some(&none), true).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn sockets_follow_the_nodeport_addresses() {
        let mut checks = HealthChecks::default();
        checks.services.insert(
            30000,
            ServiceHealth {
                namespace: "a".into(),
                name: "b".into(),
                local_endpoints: 1,
            },
        );
        checks.addresses = [
            Some(NodePortIps::Only(vec!["192.168.0.2".parse().unwrap()])),
            Some(NodePortIps::AllLocal),
        ];
        let sockets: Vec<String> = checks.sockets().iter().map(|s| s.to_string()).collect();
        assert_eq!(sockets, ["192.168.0.2:30000", "[::]:30000"]);
    }
}
