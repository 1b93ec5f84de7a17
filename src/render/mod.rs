//! Render: plans → ruleset fragments, with every rule's text taken from `rules-templates/`.
//! The base fragment is the table layout (plus the NodePort addresses); each Service contributes
//! its own chains, affinity sets and elements of the shared maps.

pub mod names;
pub mod templates;

use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{Cidr, Family, ServiceKey};
use crate::plan::{NoEndpoints, NodePortIps, NodeSettings, Policy, PortPlan, ServicePlan};
use crate::ruleset::desired::Item;
use crate::ruleset::rule::ShapeError;
use crate::ruleset::{
    Chain, ChainName, Comment, ElementData, ElementKey, ElementValue, NameError, Rule, RuleShape,
    SetName, Slot, Value, Verdict,
};
use names::PortChains;
use templates::{
    ChainTemplate, TAG_AFFINITY, TAG_ALLOW_NONE, TAG_ALLOW_SOME, TAG_CLUSTER_ENDPOINTS,
    TAG_CLUSTER_NODEPORT_ENDPOINTS, TAG_ENDPOINT_CHAINS, TAG_LOCAL_ENDPOINTS,
    TAG_LOCAL_NODEPORT_ENDPOINTS, TAG_MASQUERADE_ALL, TAG_MASQUERADE_EXTERNAL,
    TAG_MASQUERADE_OFF_CLUSTER, TAG_NODEPORTS_ON_IPS, TAG_NODEPORTS_ON_LOCAL,
    TAG_SHORT_CIRCUIT_LOCAL, TAG_SHORT_CIRCUIT_PODS, TAG_TO_POLICY,
};
pub use templates::{TemplateError, Templates};

/// Why a fragment could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("rule template {id}: {source}")]
    Bind { id: String, source: ShapeError },
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("the base template lacks {0:?}, which the renderer needs")]
    Missing(&'static str),
}

/// Names the renderer refers to, resolved once against the templates.
#[derive(Debug)]
struct Known {
    cluster_ips: SetName,
    nodeport_ips: SetName,
    service_ips: SetName,
    service_nodeports: SetName,
    no_endpoint_services: SetName,
    no_endpoint_nodeports: SetName,
    firewall_ips: SetName,
    hairpin: SetName,
    reject_chain: ChainName,
}

/// Turns plans into fragments.
#[derive(Debug)]
pub struct Renderer {
    templates: &'static Templates,
    known: Known,
}

/// The loopback prefix NodePorts never answer on.
fn loopback(family: Family) -> Value {
    let text = match family {
        Family::V4 => "127.0.0.0/8",
        Family::V6 => "::1/128",
    };
    match Cidr::parse(text) {
        Ok(c) => Value::Cidr(c),
        Err(_) => Value::Family(family),
    }
}

impl Renderer {
    /// A renderer over the bundled templates.
    pub fn new() -> Result<Renderer, RenderError> {
        let templates = Templates::bundled()?;
        let set = |name: &'static str| {
            templates
                .sets
                .iter()
                .find(|s| s.name.as_str() == name)
                .map(|s| s.name.clone())
                .ok_or(RenderError::Missing(name))
        };
        let chain = |name: &'static str| {
            templates
                .base_chains
                .iter()
                .find(|(n, _)| n.as_str() == name)
                .map(|(n, _)| n.clone())
                .ok_or(RenderError::Missing(name))
        };
        Ok(Renderer {
            templates,
            known: Known {
                cluster_ips: set("cluster-ips")?,
                nodeport_ips: set("nodeport-ips")?,
                service_ips: set("service-ips")?,
                service_nodeports: set("service-nodeports")?,
                no_endpoint_services: set("no-endpoint-services")?,
                no_endpoint_nodeports: set("no-endpoint-nodeports")?,
                firewall_ips: set("firewall-ips")?,
                hairpin: set("hairpin")?,
                reject_chain: chain("reject-chain")?,
            },
        })
    }

    /// The table layout for both families, with the addresses that accept NodePorts.
    pub fn base(&self, node: &NodeSettings) -> Result<Vec<Item>, RenderError> {
        let mut items = Vec::new();
        for family in Family::ALL {
            for set in &self.templates.sets {
                items.push(Item::Set {
                    family,
                    name: set.name.clone(),
                    spec: set.spec(family).clone(),
                });
            }
            let nodeports = &node.nodeport_ips[family.index()];
            let enabled = |tag: &str| match tag {
                TAG_NODEPORTS_ON_IPS => matches!(nodeports, NodePortIps::Only(_)),
                TAG_NODEPORTS_ON_LOCAL => matches!(nodeports, NodePortIps::AllLocal),
                _ => false,
            };
            let values = [
                (Slot::Family, Value::Family(family)),
                (Slot::AddrType, Value::Family(family)),
                (Slot::Mark, Value::Mark(node.masquerade_mark)),
                (Slot::Loopback, loopback(family)),
            ];
            for (name, template) in &self.templates.base_chains {
                let rules = bind_all(template, &enabled, &values)?;
                items.push(Item::Chain {
                    family,
                    name: name.clone(),
                    chain: Arc::new(Chain::new(template.base, rules)),
                });
            }
            if let NodePortIps::Only(ips) = nodeports {
                for ip in ips.iter().filter(|ip| Family::of(ip) == family) {
                    items.push(Item::Element {
                        family,
                        set: self.known.nodeport_ips.clone(),
                        key: ElementKey::Addr(*ip),
                        value: ElementValue::default(),
                    });
                }
            }
        }
        Ok(items)
    }

    /// Everything one Service contributes.
    pub fn service(
        &self,
        plan: &ServicePlan,
        node: &NodeSettings,
    ) -> Result<Vec<Item>, RenderError> {
        let mut items = Vec::new();
        for port in &plan.ports {
            PortRenderer {
                renderer: self,
                key: &plan.key,
                port,
                node,
                chains: PortChains::new(&plan.key, port.protocol, &port.name)?,
                items: &mut items,
            }
            .render()?;
        }
        Ok(items)
    }
}

/// Renders one service port in one family.
struct PortRenderer<'a> {
    renderer: &'a Renderer,
    key: &'a ServiceKey,
    port: &'a PortPlan,
    node: &'a NodeSettings,
    chains: PortChains,
    items: &'a mut Vec<Item>,
}

impl PortRenderer<'_> {
    fn family(&self) -> Family {
        self.port.family
    }

    fn render(mut self) -> Result<(), RenderError> {
        let port = self.port;
        // Hairpin traffic is recognised after DNAT: source and destination are the endpoint.
        let hairpin = self.renderer.known.hairpin.clone();
        for ip in &port.hairpin_ips {
            self.push_element(&hairpin, ElementKey::Hairpin(*ip), None, false)?;
        }
        if self.target_port().is_none() {
            for endpoint in port.reachable_endpoints() {
                self.endpoint_chain(endpoint)?;
            }
        }
        if port.uses_cluster_chain {
            self.policy_chain(Policy::Cluster)?;
        }
        if port.uses_local_chain {
            self.policy_chain(Policy::Local)?;
        }
        if port.uses_external_chain {
            self.external_chain()?;
        }
        if port.firewall.is_some() {
            self.firewall_chain()?;
        }
        self.elements()
    }

    fn chain_of(&self, policy: Policy) -> &ChainName {
        match policy {
            Policy::Cluster => &self.chains.cluster,
            Policy::Local => &self.chains.local,
        }
    }

    fn push_chain(&mut self, name: ChainName, rules: Vec<Rule>) {
        self.items.push(Item::Chain {
            family: self.family(),
            name,
            chain: Arc::new(Chain::new(None, rules)),
        });
    }

    fn push_element(
        &mut self,
        set: &SetName,
        key: ElementKey,
        verdict: Option<Verdict>,
        comment: bool,
    ) -> Result<(), RenderError> {
        let comment = if comment { Some(self.comment()?) } else { None };
        self.items.push(Item::Element {
            family: self.family(),
            set: set.clone(),
            key,
            value: ElementValue {
                data: verdict.map_or(ElementData::None, ElementData::Verdict),
                comment,
            },
        });
        Ok(())
    }

    /// The port every endpoint of this service port listens on, when the policy chains can DNAT
    /// through the endpoint maps; `None` when they need endpoint chains (session affinity, or
    /// endpoints on different ports).
    fn target_port(&self) -> Option<u16> {
        if self.port.affinity_timeout.is_some() {
            return None;
        }
        let mut ports = self
            .port
            .reachable_endpoints()
            .into_iter()
            .map(|e| e.port());
        let first = ports.next()?;
        ports.all(|p| p == first).then_some(first)
    }

    /// Destinations whose traffic ends in the chain of `policy`: addresses (ClusterIP, external
    /// and load-balancer IPs) and whether the NodePort does. Mirrors the elements and the
    /// external chain below.
    fn entries(&self, policy: Policy) -> (Vec<IpAddr>, bool) {
        let port = self.port;
        let mut addrs = Vec::new();
        if port.has_internal_endpoints && port.internal_policy == policy {
            addrs.push(port.cluster_ip);
        }
        let external = port.uses_external_chain
            && match policy {
                // eTP Local short-circuits pods and the node to the cluster chain.
                Policy::Cluster => {
                    port.external_local
                        || (port.external_policy == Policy::Cluster && port.has_external_endpoints)
                }
                Policy::Local => {
                    port.external_policy == Policy::Local && port.has_external_endpoints
                }
            };
        if external {
            addrs.extend(port.external_ips.iter().chain(&port.load_balancer_ips));
        }
        (addrs, external && port.node_port.is_some())
    }

    /// This Service's shard of the endpoint map of `policy`, by address or by NodePort, declared
    /// in the fragment (every Service of the shard declares it alike).
    fn endpoint_map(&mut self, policy: Policy, node_port: bool) -> Result<SetName, RenderError> {
        let template = &self.renderer.templates.endpoint_maps[match policy {
            Policy::Cluster => 0,
            Policy::Local => 1,
        }][usize::from(node_port)];
        let name = names::endpoint_map(&template.name, self.key)?;
        self.items.push(Item::Set {
            family: self.family(),
            name: name.clone(),
            spec: template.spec(self.family()).clone(),
        });
        Ok(name)
    }

    /// The elements of the endpoint maps that the DNAT of `policy`'s chain reads: for every
    /// destination, index `i` → the `i`-th endpoint.
    fn endpoint_elements(&mut self, policy: Policy, maps: &[Option<SetName>; 2]) {
        let port = self.port;
        let family = self.family();
        let (addrs, node_port) = self.entries(policy);
        for (i, endpoint) in port.policy_endpoints(policy).iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let value = ElementValue {
                data: ElementData::Target(endpoint.ip()),
                comment: None,
            };
            if let Some(map) = &maps[0] {
                for addr in &addrs {
                    self.items.push(Item::Element {
                        family,
                        set: map.clone(),
                        key: ElementKey::AddrProtoPortIndex(*addr, port.protocol, port.port, index),
                        value: value.clone(),
                    });
                }
            }
            if let (Some(map), true, Some(n)) = (&maps[1], node_port, port.node_port) {
                self.items.push(Item::Element {
                    family,
                    set: map.clone(),
                    key: ElementKey::ProtoPortIndex(port.protocol, n, index),
                    value,
                });
            }
        }
    }

    /// `namespace/name:port`, upstream's element comment.
    fn comment(&self) -> Result<Comment, RenderError> {
        let text = format!("{}:{}", self.key, self.port.name);
        Ok(Comment::shortened(text.trim_end_matches(':'))?)
    }

    fn affinity_set(&self, endpoint: std::net::SocketAddr) -> Result<SetName, RenderError> {
        Ok(names::affinity_set(
            self.key,
            self.port.protocol,
            &self.port.name,
            endpoint,
        )?)
    }

    fn endpoint_name(&self, endpoint: std::net::SocketAddr) -> Result<ChainName, RenderError> {
        Ok(names::endpoint_chain(
            self.key,
            self.port.protocol,
            &self.port.name,
            endpoint,
        )?)
    }

    fn endpoint_chain(&mut self, endpoint: std::net::SocketAddr) -> Result<(), RenderError> {
        let family = self.family();
        let affinity = self.port.affinity_timeout;
        let mut values = vec![
            (Slot::Family, Value::Family(family)),
            (Slot::Endpoint, Value::SocketAddr(endpoint)),
            (Slot::Protocol, Value::Protocol(self.port.protocol)),
        ];
        if let Some(timeout) = affinity {
            let set = self.affinity_set(endpoint)?;
            values.push((Slot::AffinitySet, Value::Set(set.clone())));
            values.push((Slot::AffinityTimeout, Value::Seconds(timeout)));
            self.items.push(Item::Set {
                family,
                name: set,
                spec: self.renderer.templates.affinity.spec(family).clone(),
            });
        }
        let enabled = |tag: &str| tag == TAG_AFFINITY && affinity.is_some();
        let rules = bind_all(&self.renderer.templates.endpoint, &enabled, &values)?;
        let name = self.endpoint_name(endpoint)?;
        self.push_chain(name, rules);
        Ok(())
    }

    /// `service-…` or `local-…`: masquerading, then a uniform random choice of an endpoint (by
    /// DNAT through the endpoint maps, or among the endpoint chains).
    fn policy_chain(&mut self, policy: Policy) -> Result<(), RenderError> {
        let port = self.port;
        let family = self.family();
        let endpoints = port.policy_endpoints(policy);
        let target_port = self.target_port();
        let chains: Vec<ChainName> = if target_port.is_none() {
            endpoints
                .iter()
                .map(|e| self.endpoint_name(*e))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        let cluster_cidr = self.node.cluster_cidr(family);
        let mut values = vec![
            (Slot::Family, Value::Family(family)),
            (Slot::ClusterIp, Value::Addr(port.cluster_ip)),
            (
                Slot::EndpointCount,
                Value::Count(u32::try_from(endpoints.len()).unwrap_or(u32::MAX)),
            ),
        ];
        match target_port {
            Some(p) => values.push((Slot::TargetPort, Value::Port(p))),
            None => values.push((Slot::EndpointChains, Value::Chains(chains.clone().into()))),
        }
        if let Some(cidr) = cluster_cidr {
            values.push((Slot::ClusterCidr, Value::Cidr(cidr)));
        }
        // ClusterIP traffic is masqueraded in the chain it goes to.
        let internal = policy == port.internal_policy && port.has_internal_endpoints;
        let masquerade_all = self.node.masquerade_all;
        let (addrs, node_port) = self.entries(policy);
        let by_map = target_port.is_some();
        let cluster = policy == Policy::Cluster;
        let enabled = |tag: &str| match tag {
            TAG_MASQUERADE_ALL => internal && masquerade_all,
            TAG_MASQUERADE_OFF_CLUSTER => internal && !masquerade_all && cluster_cidr.is_some(),
            TAG_AFFINITY => port.affinity_timeout.is_some(),
            TAG_ENDPOINT_CHAINS => !by_map,
            TAG_CLUSTER_ENDPOINTS => by_map && cluster && !addrs.is_empty(),
            TAG_CLUSTER_NODEPORT_ENDPOINTS => by_map && cluster && node_port,
            TAG_LOCAL_ENDPOINTS => by_map && !cluster && !addrs.is_empty(),
            TAG_LOCAL_NODEPORT_ENDPOINTS => by_map && !cluster && node_port,
            _ => false,
        };
        // The endpoint maps (shards) the DNAT rules read.
        let maps = [
            if by_map && !addrs.is_empty() {
                Some(self.endpoint_map(policy, false)?)
            } else {
                None
            },
            if by_map && node_port {
                Some(self.endpoint_map(policy, true)?)
            } else {
                None
            },
        ];
        let mut rules = Vec::new();
        for rule in self.renderer.templates.service.rules(enabled) {
            let map = match rule.tag.as_deref() {
                Some(TAG_CLUSTER_ENDPOINTS | TAG_LOCAL_ENDPOINTS) => maps[0].clone(),
                Some(TAG_CLUSTER_NODEPORT_ENDPOINTS | TAG_LOCAL_NODEPORT_ENDPOINTS) => {
                    maps[1].clone()
                }
                _ => None,
            };
            if let Some(map) = map {
                let mut with_map = values.clone();
                with_map.push((Slot::EndpointMap, Value::Set(map)));
                rules.push(bind(&rule.shape, &with_map)?);
            } else if rule.tag.as_deref() == Some(TAG_AFFINITY) {
                for (endpoint, chain) in endpoints.iter().zip(&chains) {
                    let mut per_endpoint = values.clone();
                    per_endpoint
                        .push((Slot::AffinitySet, Value::Set(self.affinity_set(*endpoint)?)));
                    per_endpoint.push((Slot::EndpointChain, Value::Chain(chain.clone())));
                    rules.push(bind(&rule.shape, &per_endpoint)?);
                }
            } else {
                rules.push(bind(&rule.shape, &values)?);
            }
        }
        let name = self.chain_of(policy).clone();
        self.push_chain(name, rules);
        if by_map {
            self.endpoint_elements(policy, &maps);
        }
        Ok(())
    }

    /// `external-…`: masquerade or short-circuit, then the external policy's chain.
    fn external_chain(&mut self) -> Result<(), RenderError> {
        let port = self.port;
        let family = self.family();
        let cluster_cidr = self.node.cluster_cidr(family);
        let mut values = vec![
            (Slot::Family, Value::Family(family)),
            (
                Slot::ClusterChain,
                Value::Chain(self.chains.cluster.clone()),
            ),
            (
                Slot::PolicyChain,
                Value::Chain(self.chain_of(port.external_policy).clone()),
            ),
        ];
        if let Some(cidr) = cluster_cidr {
            values.push((Slot::ClusterCidr, Value::Cidr(cidr)));
        }
        let enabled = |tag: &str| match tag {
            TAG_MASQUERADE_EXTERNAL => !port.external_local,
            TAG_SHORT_CIRCUIT_PODS => port.external_local && cluster_cidr.is_some(),
            TAG_SHORT_CIRCUIT_LOCAL => port.external_local,
            TAG_TO_POLICY => port.has_external_endpoints,
            _ => false,
        };
        let rules = bind_all(&self.renderer.templates.external, &enabled, &values)?;
        let name = self.chains.external.clone();
        self.push_chain(name, rules);
        Ok(())
    }

    /// `firewall-…`: drop sources outside the load balancer's source ranges.
    fn firewall_chain(&mut self) -> Result<(), RenderError> {
        let allowed: Arc<[Cidr]> = self
            .port
            .firewall
            .as_ref()
            .map(|f| f.allowed.clone())
            .unwrap_or_default()
            .into();
        let some = !allowed.is_empty();
        let values = [
            (Slot::Family, Value::Family(self.family())),
            (Slot::AllowedSources, Value::Cidrs(allowed)),
        ];
        let enabled = |tag: &str| match tag {
            TAG_ALLOW_SOME => some,
            TAG_ALLOW_NONE => !some,
            _ => false,
        };
        let rules = bind_all(&self.renderer.templates.firewall, &enabled, &values)?;
        let name = self.chains.firewall.clone();
        self.push_chain(name, rules);
        Ok(())
    }

    fn no_endpoints_verdict(&self, what: NoEndpoints) -> Verdict {
        match what {
            NoEndpoints::Reject => Verdict::Goto(self.renderer.known.reject_chain.clone()),
            NoEndpoints::Drop => Verdict::Drop,
        }
    }

    /// The map and set elements that send traffic to the chains above.
    fn elements(&mut self) -> Result<(), RenderError> {
        let port = self.port;
        let known = &self.renderer.known;
        let vip = |ip: IpAddr| ElementKey::AddrProtoPort(ip, port.protocol, port.port);
        let has_endpoints = port.endpoints.has_any;
        self.push_element(
            &known.cluster_ips,
            ElementKey::Addr(port.cluster_ip),
            None,
            false,
        )?;

        // ClusterIP.
        if port.has_internal_endpoints {
            let to = Verdict::Goto(self.chain_of(port.internal_policy).clone());
            self.push_element(&known.service_ips, vip(port.cluster_ip), Some(to), false)?;
        } else if let Some(what) = port.internal_no_endpoints {
            let verdict = self.no_endpoints_verdict(what);
            self.push_element(
                &known.no_endpoint_services,
                vip(port.cluster_ip),
                Some(verdict),
                true,
            )?;
        }

        // External IPs and load-balancer IPs.
        let external = Verdict::Goto(self.chains.external.clone());
        let external_filter = port
            .external_no_endpoints
            .map(|w| self.no_endpoints_verdict(w));
        for ip in port.external_ips.iter().chain(&port.load_balancer_ips) {
            if has_endpoints {
                self.push_element(&known.service_ips, vip(*ip), Some(external.clone()), false)?;
            }
            if let Some(verdict) = &external_filter {
                self.push_element(
                    &known.no_endpoint_services,
                    vip(*ip),
                    Some(verdict.clone()),
                    true,
                )?;
            }
        }
        if port.firewall.is_some() {
            let to = Verdict::Goto(self.chains.firewall.clone());
            for ip in &port.load_balancer_ips {
                self.push_element(&known.firewall_ips, vip(*ip), Some(to.clone()), true)?;
            }
        }

        // NodePort.
        if let Some(node_port) = port.node_port {
            let key = ElementKey::ProtoPort(port.protocol, node_port);
            if has_endpoints {
                self.push_element(&known.service_nodeports, key.clone(), Some(external), false)?;
            }
            if let Some(verdict) = external_filter {
                self.push_element(&known.no_endpoint_nodeports, key, Some(verdict), true)?;
            }
        }
        Ok(())
    }
}

fn bind(shape: &'static RuleShape, values: &[(Slot, Value)]) -> Result<Rule, RenderError> {
    shape.bind(values).map_err(|source| RenderError::Bind {
        id: shape.id().to_string(),
        source,
    })
}

/// Binds every enabled rule of a chain template.
fn bind_all(
    template: &'static ChainTemplate,
    enabled: &dyn Fn(&str) -> bool,
    values: &[(Slot, Value)],
) -> Result<Vec<Rule>, RenderError> {
    template
        .rules(enabled)
        .map(|r| bind(&r.shape, values))
        .collect()
}

#[cfg(test)]
mod tests;
