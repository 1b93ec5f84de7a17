//! Small builders for Services, EndpointSlices and Nodes, shared by unit tests, end-to-end tests
//! and benchmarks: `ServiceBuilder::new("ns", "web").cluster_ip("10.96.0.1").port("http", 80, "TCP")`.
//! They build the API types (so e2e tests can write them as manifests) and convert to the model.

use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde_json::{Value, json};

use crate::model::convert::{self, Converted};
use crate::model::{EndpointSlice, Node, Service};

/// Builds a `v1/Service`.
#[derive(Clone, Debug)]
pub struct ServiceBuilder {
    doc: Value,
}

impl ServiceBuilder {
    pub fn new(namespace: &str, name: &str) -> ServiceBuilder {
        ServiceBuilder {
            doc: json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"namespace": namespace, "name": name},
                "spec": {"ports": []}
            }),
        }
    }

    /// Sets `spec.clusterIP`; a second call adds a second family to `spec.clusterIPs`.
    pub fn cluster_ip(mut self, ip: &str) -> ServiceBuilder {
        let spec = &mut self.doc["spec"];
        if spec["clusterIP"].is_null() {
            spec["clusterIP"] = ip.into();
            spec["clusterIPs"] = json!([ip]);
        } else if let Some(list) = spec["clusterIPs"].as_array_mut() {
            list.push(ip.into());
        }
        self
    }

    /// Adds a port (`protocol` as the API spells it: TCP, UDP, SCTP).
    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> ServiceBuilder {
        if let Some(ports) = self.doc["spec"]["ports"].as_array_mut() {
            ports.push(json!({"name": name, "port": port, "protocol": protocol}));
        }
        self
    }

    /// Sets any field by JSON pointer below the document root, e.g. `("/spec/type", "NodePort")`.
    pub fn with(mut self, pointer: &str, value: impl Into<Value>) -> ServiceBuilder {
        set_pointer(&mut self.doc, pointer, value.into());
        self
    }

    pub fn json(&self) -> &Value {
        &self.doc
    }

    pub fn build(&self) -> core::Service {
        serde_json::from_value(self.doc.clone()).unwrap_or_default()
    }

    /// The validated model, `None` if the Service is invalid or ignored.
    pub fn model(&self) -> Option<Arc<Service>> {
        match convert::service(&self.build()) {
            Ok(Converted::Proxied(s)) => Some(Arc::new(s)),
            _ => None,
        }
    }
}

/// Builds a `discovery.k8s.io/v1/EndpointSlice`.
#[derive(Clone, Debug)]
pub struct SliceBuilder {
    doc: Value,
}

impl SliceBuilder {
    /// A slice of `service` with address type `IPv4` or `IPv6`.
    pub fn new(namespace: &str, name: &str, service: &str, address_type: &str) -> SliceBuilder {
        SliceBuilder {
            doc: json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"namespace": namespace, "name": name,
                             "labels": {"kubernetes.io/service-name": service}},
                "addressType": address_type,
                "ports": [],
                "endpoints": []
            }),
        }
    }

    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> SliceBuilder {
        if let Some(ports) = self.doc["ports"].as_array_mut() {
            ports.push(json!({"name": name, "port": port, "protocol": protocol}));
        }
        self
    }

    /// Adds a ready endpoint on `node` (empty: no nodeName).
    pub fn endpoint(self, addr: &str, node: &str) -> SliceBuilder {
        self.endpoint_with(addr, node, true, true, false)
    }

    /// Adds an endpoint with explicit conditions.
    pub fn endpoint_with(
        mut self,
        addr: &str,
        node: &str,
        ready: bool,
        serving: bool,
        terminating: bool,
    ) -> SliceBuilder {
        let mut ep = json!({
            "addresses": [addr],
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating}
        });
        if !node.is_empty() {
            ep["nodeName"] = node.into();
        }
        if let Some(eps) = self.doc["endpoints"].as_array_mut() {
            eps.push(ep);
        }
        self
    }

    pub fn with(mut self, pointer: &str, value: impl Into<Value>) -> SliceBuilder {
        set_pointer(&mut self.doc, pointer, value.into());
        self
    }

    pub fn json(&self) -> &Value {
        &self.doc
    }

    pub fn build(&self) -> discovery::EndpointSlice {
        serde_json::from_value(self.doc.clone()).unwrap_or_default()
    }

    pub fn model(&self) -> Option<Arc<EndpointSlice>> {
        match convert::endpoint_slice(&self.build()) {
            Ok(Converted::Proxied(s)) => Some(Arc::new(s)),
            _ => None,
        }
    }
}

/// Builds a `v1/Node`.
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    doc: Value,
}

impl NodeBuilder {
    pub fn new(name: &str) -> NodeBuilder {
        NodeBuilder {
            doc: json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {}},
                        "status": {"addresses": []}}),
        }
    }

    pub fn zone(mut self, zone: &str) -> NodeBuilder {
        self.doc["metadata"]["labels"]["topology.kubernetes.io/zone"] = zone.into();
        self
    }

    pub fn address(mut self, addr: &str) -> NodeBuilder {
        if let Some(list) = self.doc["status"]["addresses"].as_array_mut() {
            list.push(json!({"type": "InternalIP", "address": addr}));
        }
        self
    }

    pub fn with(mut self, pointer: &str, value: impl Into<Value>) -> NodeBuilder {
        set_pointer(&mut self.doc, pointer, value.into());
        self
    }

    pub fn json(&self) -> &Value {
        &self.doc
    }

    pub fn build(&self) -> core::Node {
        serde_json::from_value(self.doc.clone()).unwrap_or_default()
    }

    pub fn model(&self) -> Option<Arc<Node>> {
        convert::node(&self.build()).ok().map(Arc::new)
    }
}

/// Sets the value at a JSON pointer, creating objects and array slots on the way.
fn set_pointer(doc: &mut Value, pointer: &str, value: Value) {
    let mut at = doc;
    for part in pointer.trim_start_matches('/').split('/') {
        at = match part.parse::<usize>() {
            Ok(i) => {
                if !at.is_array() {
                    *at = Value::Array(Vec::new());
                }
                let Some(list) = at.as_array_mut() else {
                    return;
                };
                while list.len() <= i {
                    list.push(Value::Null);
                }
                &mut list[i]
            }
            // JSON pointer escapes: `~1` is `/` (annotation keys), `~0` is `~`.
            Err(_) => &mut at[part.replace("~1", "/").replace("~0", "~").as_str()],
        };
    }
    *at = value;
}
