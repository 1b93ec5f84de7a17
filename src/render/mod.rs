//! Render: plans → ruleset fragments, with every rule's text taken from `rules-templates/`.
//! The base fragment is the table layout; each Service contributes its own chains and elements.

pub mod names;
pub mod templates;

use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{Family, ServiceKey};
use crate::plan::{NodeSettings, PortPlan, ServicePlan};
use crate::ruleset::desired::Item;
use crate::ruleset::rule::ShapeError;
use crate::ruleset::{
    Chain, ChainName, Comment, ElementKey, ElementValue, NameError, Rule, RuleShape, SetName, Slot,
    Value, Verdict,
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
    service_ips: SetName,
    no_endpoint_services: SetName,
    reject_chain: ChainName,
}

/// Turns plans into fragments.
#[derive(Debug)]
pub struct Renderer {
    templates: &'static Templates,
    known: Known,
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
                service_ips: set("service-ips")?,
                no_endpoint_services: set("no-endpoint-services")?,
                reject_chain: chain("reject-chain")?,
            },
        })
    }

    /// The table layout for both families.
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
            let values = [
                (Slot::Family, Value::Family(family)),
                (Slot::AddrType, Value::Family(family)),
                (Slot::Mark, Value::Mark(node.masquerade_mark)),
            ];
            for (name, template) in &self.templates.base_chains {
                let rules = bind_all(template.rules(|_| true), &values)?;
                items.push(Item::Chain {
                    family,
                    name: name.clone(),
                    chain: Arc::new(Chain::new(template.base, rules)),
                });
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
            self.service_port(&plan.key, port, node, &mut items)?;
        }
        Ok(items)
    }

    fn service_port(
        &self,
        key: &ServiceKey,
        port: &PortPlan,
        node: &NodeSettings,
        items: &mut Vec<Item>,
    ) -> Result<(), RenderError> {
        let family = port.family;
        let element = |set: &SetName, key: ElementKey, value: ElementValue| Item::Element {
            family,
            set: set.clone(),
            key,
            value,
        };
        items.push(element(
            &self.known.cluster_ips,
            ElementKey::Addr(port.cluster_ip),
            ElementValue::default(),
        ));
        let vip_key = |ip: IpAddr| ElementKey::AddrProtoPort(ip, port.protocol, port.port);

        if port.endpoints.cluster.is_empty() {
            let comment = format!("{key}:{}", port.name);
            let comment = comment.trim_end_matches(':');
            items.push(element(
                &self.known.no_endpoint_services,
                vip_key(port.cluster_ip),
                ElementValue {
                    verdict: Some(Verdict::Goto(self.known.reject_chain.clone())),
                    comment: Some(Comment::new(comment)?),
                },
            ));
            return Ok(());
        }

        let mut endpoint_chains = Vec::with_capacity(port.endpoints.cluster.len());
        for endpoint in &port.endpoints.cluster {
            let name = names::endpoint_chain(key, port.protocol, &port.name, *endpoint)?;
            let values = [
                (Slot::Family, Value::Family(family)),
                (Slot::EndpointIp, Value::Addr(endpoint.ip())),
                (Slot::Endpoint, Value::SocketAddr(*endpoint)),
                (Slot::Protocol, Value::Protocol(port.protocol)),
            ];
            let rules = bind_all(self.templates.endpoint.rules(|_| true), &values)?;
            items.push(Item::Chain {
                family,
                name: name.clone(),
                chain: Arc::new(Chain::new(None, rules)),
            });
            endpoint_chains.push(name);
        }

        let service_chain = names::service_chain(key, port.protocol, &port.name)?;
        let cluster_cidr = node.cluster_cidr(family);
        let mut values = vec![
            (Slot::Family, Value::Family(family)),
            (Slot::ClusterIp, Value::Addr(port.cluster_ip)),
            (
                Slot::EndpointCount,
                Value::Count(u32::try_from(endpoint_chains.len()).unwrap_or(u32::MAX)),
            ),
            (Slot::EndpointChains, Value::Chains(endpoint_chains.into())),
        ];
        if let Some(cidr) = cluster_cidr {
            values.push((Slot::ClusterCidr, Value::Cidr(cidr)));
        }
        let enabled = |tag: &str| match tag {
            templates::TAG_MASQUERADE_ALL => node.masquerade_all,
            templates::TAG_MASQUERADE_OFF_CLUSTER => !node.masquerade_all && cluster_cidr.is_some(),
            _ => false,
        };
        let rules = bind_all(self.templates.service.rules(enabled), &values)?;
        items.push(Item::Chain {
            family,
            name: service_chain.clone(),
            chain: Arc::new(Chain::new(None, rules)),
        });
        items.push(element(
            &self.known.service_ips,
            vip_key(port.cluster_ip),
            ElementValue {
                verdict: Some(Verdict::Goto(service_chain)),
                comment: None,
            },
        ));
        Ok(())
    }
}

fn bind_all(
    shapes: impl Iterator<Item = &'static RuleShape>,
    values: &[(Slot, Value)],
) -> Result<Vec<Rule>, RenderError> {
    shapes
        .map(|shape| {
            shape.bind(values).map_err(|source| RenderError::Bind {
                id: shape.id().to_string(),
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
