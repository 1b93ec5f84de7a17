//! Loads `rules-templates/`: nft syntax with typed `$slots`, compiled into the binary and parsed
//! once at start-up. Everything a template may contain is checked against what the renderer
//! offers (chains, sets, tags, slots, jump targets, set references), so a template mistake is an
//! error at start-up (and in the unit tests), never a silently wrong rule.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};

use crate::model::Family;
use crate::ruleset::{
    BaseChain, ChainName, ChainType, Hook, KeyType, RuleShape, SetData, SetFlag, SetName, SetSpec,
    Slot,
};

/// Tags of the base template.
pub const TAG_NODEPORTS_ON_IPS: &str = "nodeports-on-ips";
pub const TAG_NODEPORTS_ON_LOCAL: &str = "nodeports-on-local";
/// Tags of the service-port chain template (`service-…` and `local-…`).
pub const TAG_MASQUERADE_OFF_CLUSTER: &str = "masquerade-off-cluster";
pub const TAG_MASQUERADE_ALL: &str = "masquerade-all";
/// Rules repeated once per endpoint (service template) or present with affinity (endpoint).
pub const TAG_AFFINITY: &str = "affinity";
pub const TAG_ENDPOINT_CHAINS: &str = "endpoint-chains";
pub const TAG_CLUSTER_ENDPOINTS: &str = "cluster-endpoints";
pub const TAG_CLUSTER_NODEPORT_ENDPOINTS: &str = "cluster-nodeport-endpoints";
pub const TAG_LOCAL_ENDPOINTS: &str = "local-endpoints";
pub const TAG_LOCAL_NODEPORT_ENDPOINTS: &str = "local-nodeport-endpoints";
/// Tags of the external chain template.
pub const TAG_MASQUERADE_EXTERNAL: &str = "masquerade-external";
pub const TAG_SHORT_CIRCUIT_PODS: &str = "short-circuit-pods";
pub const TAG_SHORT_CIRCUIT_LOCAL: &str = "short-circuit-local";
pub const TAG_TO_POLICY: &str = "to-policy";
/// Tags of the firewall chain template.
pub const TAG_ALLOW_SOME: &str = "allow-some";
pub const TAG_ALLOW_NONE: &str = "allow-none";

/// What one template file may contain and be given.
struct FileSpec {
    name: &'static str,
    text: &'static str,
    slots: &'static [Slot],
    tags: &'static [&'static str],
}

const BASE: FileSpec = FileSpec {
    name: "base.nft",
    text: include_str!("../../rules-templates/base.nft"),
    slots: &[Slot::Family, Slot::AddrType, Slot::Mark, Slot::Loopback],
    tags: &[TAG_NODEPORTS_ON_IPS, TAG_NODEPORTS_ON_LOCAL],
};
const SERVICE: FileSpec = FileSpec {
    name: "service.nft",
    text: include_str!("../../rules-templates/service.nft"),
    slots: &[
        Slot::Family,
        Slot::ClusterIp,
        Slot::ClusterCidr,
        Slot::EndpointCount,
        Slot::EndpointChains,
        Slot::AffinitySet,
        Slot::EndpointChain,
        Slot::TargetPort,
        Slot::EndpointMap,
    ],
    tags: &[
        TAG_MASQUERADE_OFF_CLUSTER,
        TAG_MASQUERADE_ALL,
        TAG_AFFINITY,
        TAG_ENDPOINT_CHAINS,
        TAG_CLUSTER_ENDPOINTS,
        TAG_CLUSTER_NODEPORT_ENDPOINTS,
        TAG_LOCAL_ENDPOINTS,
        TAG_LOCAL_NODEPORT_ENDPOINTS,
    ],
};
const ENDPOINT: FileSpec = FileSpec {
    name: "endpoint.nft",
    text: include_str!("../../rules-templates/endpoint.nft"),
    slots: &[
        Slot::Family,
        Slot::Endpoint,
        Slot::Protocol,
        Slot::AffinitySet,
        Slot::AffinityTimeout,
    ],
    tags: &[TAG_AFFINITY],
};
const EXTERNAL: FileSpec = FileSpec {
    name: "external.nft",
    text: include_str!("../../rules-templates/external.nft"),
    slots: &[
        Slot::Family,
        Slot::ClusterCidr,
        Slot::ClusterChain,
        Slot::PolicyChain,
    ],
    tags: &[
        TAG_MASQUERADE_EXTERNAL,
        TAG_SHORT_CIRCUIT_PODS,
        TAG_SHORT_CIRCUIT_LOCAL,
        TAG_TO_POLICY,
    ],
};
const FIREWALL: FileSpec = FileSpec {
    name: "firewall.nft",
    text: include_str!("../../rules-templates/firewall.nft"),
    slots: &[Slot::Family, Slot::AllowedSources],
    tags: &[TAG_ALLOW_SOME, TAG_ALLOW_NONE],
};

/// A template that cannot be used, with its location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rules-templates/{file}:{line}: {message}")]
pub struct TemplateError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// A rule of a chain template, included when its tag (if any) is enabled.
#[derive(Debug)]
pub struct TemplateRule {
    pub tag: Option<String>,
    pub shape: RuleShape,
}

/// A chain as written in a template.
#[derive(Debug)]
pub struct ChainTemplate {
    pub name: String,
    pub base: Option<BaseChain>,
    pub rules: Vec<TemplateRule>,
}

impl ChainTemplate {
    /// The rules to emit, in template order, with their tags.
    pub fn rules<'s, F: Fn(&str) -> bool>(
        &'s self,
        enabled: F,
    ) -> impl Iterator<Item = &'s TemplateRule> + use<'s, F> {
        self.rules
            .iter()
            .filter(move |r| r.tag.as_deref().is_none_or(&enabled))
    }
}

/// A set or map declaration, resolved for each family.
#[derive(Debug)]
pub struct SetTemplate {
    pub name: SetName,
    specs: [Arc<SetSpec>; 2],
}

impl SetTemplate {
    pub fn spec(&self, family: Family) -> &Arc<SetSpec> {
        &self.specs[family.index()]
    }
}

/// All templates, parsed.
#[derive(Debug)]
pub struct Templates {
    /// Base chains and helper chains with their names as written.
    pub base_chains: Vec<(ChainName, ChainTemplate)>,
    pub sets: Vec<SetTemplate>,
    /// The chain of a service port's endpoint choice (`service-…` and `local-…`).
    pub service: ChainTemplate,
    /// The endpoint maps, `[cluster, local][by address, by NodePort]`, each in shards.
    pub endpoint_maps: [[SetTemplate; 2]; 2],
    /// The chain of one endpoint of a service port.
    pub endpoint: ChainTemplate,
    /// The affinity set of one endpoint.
    pub affinity: SetTemplate,
    /// The entry chain of external traffic.
    pub external: ChainTemplate,
    /// The load-balancer source-range check.
    pub firewall: ChainTemplate,
}

static BUNDLED: LazyLock<Result<Templates, TemplateError>> = LazyLock::new(Templates::load_bundled);

impl Templates {
    /// The templates compiled into the binary.
    pub fn bundled() -> Result<&'static Templates, TemplateError> {
        BUNDLED.as_ref().map_err(Clone::clone)
    }

    fn load_bundled() -> Result<Templates, TemplateError> {
        let base = parse_file(&BASE)?;
        let mut service = parse_file(&SERVICE)?;
        let endpoint_maps = [
            [
                take_set(&SERVICE, "cluster-endpoints", &mut service)?,
                take_set(&SERVICE, "cluster-nodeport-endpoints", &mut service)?,
            ],
            [
                take_set(&SERVICE, "local-endpoints", &mut service)?,
                take_set(&SERVICE, "local-nodeport-endpoints", &mut service)?,
            ],
        ];
        let mut endpoint = parse_file(&ENDPOINT)?;
        let affinity = take_set(&ENDPOINT, "affinity", &mut endpoint)?;
        let mut base_chains = Vec::new();
        for (line, chain) in base.chains {
            let name =
                ChainName::new(&chain.name).map_err(|e| err(BASE.name, line, e.to_string()))?;
            base_chains.push((name, chain));
        }
        check_tags_used(&BASE, base_chains.iter().map(|(_, c)| c))?;
        let templates = Templates {
            base_chains,
            sets: base.sets.into_iter().map(|(_, s)| s).collect(),
            service: single_chain(&SERVICE, "service", &mut service)?,
            endpoint_maps,
            endpoint: single_chain(&ENDPOINT, "endpoint", &mut endpoint)?,
            affinity,
            external: single_chain(&EXTERNAL, "external", &mut parse_file(&EXTERNAL)?)?,
            firewall: single_chain(&FIREWALL, "firewall", &mut parse_file(&FIREWALL)?)?,
        };
        templates.check_references()?;
        Ok(templates)
    }

    /// Every chain template: the base chains, then the per-service ones.
    pub fn chains(&self) -> impl Iterator<Item = &ChainTemplate> {
        self.base_chains.iter().map(|(_, c)| c).chain([
            &self.service,
            &self.endpoint,
            &self.external,
            &self.firewall,
        ])
    }

    /// Every `jump`/`goto` target and `@set` written literally in a template must be declared in
    /// the base template.
    fn check_references(&self) -> Result<(), TemplateError> {
        let chains: BTreeSet<&str> = self.base_chains.iter().map(|(n, _)| n.as_str()).collect();
        let sets: BTreeSet<&str> = self.sets.iter().map(|s| s.name.as_str()).collect();
        for chain in self.chains() {
            for rule in &chain.rules {
                let text = rule.shape.source();
                let words: Vec<&str> = text.split_whitespace().collect();
                for pair in words.windows(2) {
                    if matches!(pair[0], "jump" | "goto")
                        && !pair[1].starts_with('$')
                        && !chains.contains(pair[1])
                    {
                        return Err(err(
                            rule.shape.id(),
                            0,
                            format!("{} {}: no such chain in base.nft", pair[0], pair[1]),
                        ));
                    }
                }
                for word in &words {
                    // `@set`, or `@set:port` in a DNAT through a map.
                    if let Some(set) = word.strip_prefix('@').and_then(|s| s.split(':').next())
                        && !set.starts_with('$')
                        && !sets.contains(set)
                    {
                        return Err(err(
                            rule.shape.id(),
                            0,
                            format!("@{set}: no such set in base.nft"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn err(file: &str, line: usize, message: impl Into<String>) -> TemplateError {
    TemplateError {
        file: file.to_string(),
        line,
        message: message.into(),
    }
}

/// The parsed contents of one file, with the line each object starts on.
struct ParsedFile {
    chains: Vec<(usize, ChainTemplate)>,
    sets: Vec<(usize, SetTemplate)>,
}

/// Every tag the renderer uses must be carried by some rule (a misspelt tag would silently
/// never match).
fn check_tags_used<'a>(
    file: &FileSpec,
    chains: impl Iterator<Item = &'a ChainTemplate> + Clone,
) -> Result<(), TemplateError> {
    for tag in file.tags {
        let used = chains
            .clone()
            .any(|c| c.rules.iter().any(|r| r.tag.as_deref() == Some(*tag)));
        if !used {
            return Err(err(
                file.name,
                0,
                format!("no rule carries the tag [{tag}] the renderer uses"),
            ));
        }
    }
    Ok(())
}

fn single_chain(
    file: &FileSpec,
    name: &str,
    parsed: &mut ParsedFile,
) -> Result<ChainTemplate, TemplateError> {
    if !parsed.sets.is_empty() || parsed.chains.len() != 1 || parsed.chains[0].1.name != name {
        return Err(err(
            file.name,
            0,
            format!("must declare exactly one chain, named {name:?}"),
        ));
    }
    let (line, chain) = parsed.chains.remove(0);
    if chain.base.is_some() {
        return Err(err(file.name, line, "must not be a base chain"));
    }
    check_tags_used(file, std::iter::once(&chain))?;
    Ok(chain)
}

fn take_set(
    file: &FileSpec,
    name: &str,
    parsed: &mut ParsedFile,
) -> Result<SetTemplate, TemplateError> {
    let at = parsed
        .sets
        .iter()
        .position(|(_, s)| s.name.as_str() == name)
        .ok_or_else(|| err(file.name, 0, format!("must declare a set named {name:?}")))?;
    Ok(parsed.sets.remove(at).1)
}

fn parse_file(file: &FileSpec) -> Result<ParsedFile, TemplateError> {
    parse_text(file.name, file.text, file.slots, file.tags)
}

fn parse_text(
    file: &str,
    text: &str,
    slots: &[Slot],
    tags: &[&str],
) -> Result<ParsedFile, TemplateError> {
    let mut parsed = ParsedFile {
        chains: Vec::new(),
        sets: Vec::new(),
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    while let Some((line, header)) = lines.next() {
        let words: Vec<&str> = header.split_whitespace().collect();
        let [kind, name, "{"] = words.as_slice() else {
            return Err(err(
                file,
                line,
                "expected `chain NAME {`, `set NAME {` or `map NAME {`",
            ));
        };
        let mut body = Vec::new();
        loop {
            match lines.next() {
                Some((_, "}")) => break,
                Some(entry) => body.push(entry),
                None => return Err(err(file, line, "unterminated block")),
            }
        }
        match *kind {
            "chain" => parsed
                .chains
                .push((line, parse_chain(file, name, &body, slots, tags)?)),
            "set" | "map" => parsed
                .sets
                .push((line, parse_set(file, line, kind, name, &body)?)),
            other => return Err(err(file, line, format!("unknown block {other:?}"))),
        }
    }
    Ok(parsed)
}

fn parse_chain(
    file: &str,
    name: &str,
    body: &[(usize, &str)],
    slots: &[Slot],
    tags: &[&str],
) -> Result<ChainTemplate, TemplateError> {
    let mut base = None;
    let mut rules = Vec::new();
    for (i, (line, text)) in body.iter().enumerate() {
        if i == 0 && text.starts_with("type ") {
            base = Some(parse_base_chain(text).map_err(|m| err(file, *line, m))?);
            continue;
        }
        let (tag, rule_text) = match text.strip_prefix('[') {
            Some(rest) => {
                let (tag, rule) = rest
                    .split_once(']')
                    .ok_or_else(|| err(file, *line, "unterminated [tag]"))?;
                if !tags.contains(&tag) {
                    return Err(err(file, *line, format!("unknown tag [{tag}]")));
                }
                (Some(tag.to_string()), rule.trim())
            }
            None => (None, *text),
        };
        let id = format!("{file}:{line}");
        let shape =
            RuleShape::parse(&id, rule_text, slots).map_err(|e| err(file, *line, e.to_string()))?;
        rules.push(TemplateRule { tag, shape });
    }
    Ok(ChainTemplate {
        name: name.to_string(),
        base,
        rules,
    })
}

/// `type nat hook prerouting priority dstnat` (named priorities may carry `+N`/`-N`).
fn parse_base_chain(text: &str) -> Result<BaseChain, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let ["type", chain_type, "hook", hook, "priority", priority] = words.as_slice() else {
        return Err(format!("expected `type T hook H priority P`, got {text:?}"));
    };
    let chain_type = ChainType::from_nft(chain_type)
        .ok_or_else(|| format!("unknown chain type {chain_type:?}"))?;
    let hook = Hook::from_nft(hook).ok_or_else(|| format!("unknown hook {hook:?}"))?;
    Ok(BaseChain {
        chain_type,
        hook,
        priority: parse_priority(priority)?,
    })
}

fn parse_priority(text: &str) -> Result<i32, String> {
    if let Ok(n) = text.parse() {
        return Ok(n);
    }
    let (name, offset) = match text.find(['+', '-']) {
        Some(at) => (
            &text[..at],
            text[at..]
                .parse::<i32>()
                .map_err(|_| format!("bad priority {text:?}"))?,
        ),
        None => (text, 0),
    };
    let base = match name {
        "raw" => -300,
        "mangle" => -150,
        "dstnat" => -100,
        "filter" => 0,
        "security" => 50,
        "srcnat" => 100,
        _ => return Err(format!("unknown priority {text:?}")),
    };
    Ok(base + offset)
}

fn parse_set(
    file: &str,
    line: usize,
    kind: &str,
    name: &str,
    body: &[(usize, &str)],
) -> Result<SetTemplate, TemplateError> {
    let name = SetName::new(name).map_err(|e| err(file, line, e.to_string()))?;
    let mut type_text = None;
    let mut typeof_text = None;
    let mut comment = None;
    let mut flags = Vec::new();
    for (l, text) in body {
        if let Some(t) = text.strip_prefix("type ") {
            type_text = Some(t.trim());
        } else if let Some(t) = text.strip_prefix("typeof ") {
            typeof_text = Some(t.trim());
        } else if let Some(f) = text.strip_prefix("flags ") {
            for flag in f.split(',') {
                flags.push(
                    SetFlag::from_nft(flag.trim())
                        .ok_or_else(|| err(file, *l, format!("unknown flag {:?}", flag.trim())))?,
                );
            }
        } else if let Some(c) = text.strip_prefix("comment ") {
            let c = c.trim();
            let inner = c
                .strip_prefix('"')
                .and_then(|c| c.strip_suffix('"'))
                .filter(|c| !c.contains('"'))
                .ok_or_else(|| err(file, *l, "comment must be one quoted string"))?;
            comment = Some(inner.to_string());
        } else {
            return Err(err(file, *l, format!("unknown set property {text:?}")));
        }
    }
    flags.sort();
    flags.dedup();
    if type_text.is_some() == typeof_text.is_some() {
        return Err(err(file, line, "give either type or typeof"));
    }
    let spec = |family: Family| -> Result<Arc<SetSpec>, TemplateError> {
        let (key, data) = match (type_text, typeof_text) {
            (Some(t), _) => declared_type(file, line, kind, t, family)?,
            (_, Some(t)) => declared_typeof(file, line, kind, t, family)?,
            (None, None) => return Err(err(file, line, "missing type")),
        };
        Ok(Arc::new(SetSpec {
            key,
            data,
            flags: flags.clone(),
            comment: comment.clone(),
        }))
    };
    Ok(SetTemplate {
        name,
        specs: [spec(Family::V4)?, spec(Family::V6)?],
    })
}

/// `type K . K [: verdict]`.
fn declared_type(
    file: &str,
    line: usize,
    kind: &str,
    text: &str,
    family: Family,
) -> Result<(Vec<KeyType>, SetData), TemplateError> {
    let resolved = text.replace("$addr_type", family.addr_type());
    let (keys, data) = match resolved.split_once(':') {
        Some((k, d)) => (k, Some(d.trim())),
        None => (resolved.as_str(), None),
    };
    let key = keys
        .split('.')
        .map(|k| {
            KeyType::from_nft(k.trim())
                .filter(|k| *k != KeyType::Index)
                .ok_or_else(|| err(file, line, format!("unknown key type {:?}", k.trim())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let data = match (kind, data) {
        ("set", None) => SetData::None,
        ("map", Some("verdict")) => SetData::Verdict,
        _ => {
            return Err(err(
                file,
                line,
                "a set has no data type; a map of `type` maps to verdict",
            ));
        }
    };
    Ok((key, data))
}

/// `typeof E . E : $family daddr`, for maps to DNAT addresses. Key expressions: `$family daddr`,
/// `meta l4proto`, `th dport`, `numgen random mod 1`.
fn declared_typeof(
    file: &str,
    line: usize,
    kind: &str,
    text: &str,
    family: Family,
) -> Result<(Vec<KeyType>, SetData), TemplateError> {
    let (keys, data) = text
        .split_once(':')
        .ok_or_else(|| err(file, line, "typeof is only for maps to `$family daddr`"))?;
    if kind != "map" || data.trim() != "$family daddr" {
        return Err(err(
            file,
            line,
            "typeof is only for maps to `$family daddr`",
        ));
    }
    let key = keys
        .split(" . ")
        .map(|k| match k.trim() {
            "$family daddr" => Ok(KeyType::addr(family)),
            "meta l4proto" => Ok(KeyType::InetProto),
            "th dport" => Ok(KeyType::InetService),
            "numgen random mod 1" => Ok(KeyType::Index),
            other => Err(err(file, line, format!("unknown typeof key {other:?}"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((key, SetData::Target(family)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_templates_load() {
        let t = Templates::bundled().unwrap();
        assert!(
            t.base_chains
                .iter()
                .any(|(n, c)| n.as_str() == "nat-prerouting" && c.base.is_some())
        );
        assert_eq!(t.sets.len(), 8);
        assert_eq!(t.endpoint.rules.len(), 2);
        let endpoints = &t.endpoint_maps[0][1];
        assert_eq!(endpoints.name.as_str(), "cluster-nodeport-endpoints");
        assert_eq!(
            endpoints.spec(Family::V6).to_string(),
            "typeof meta l4proto . th dport . numgen random mod 1 : ip6 daddr ; \
             comment \"endpoints for service chains, by NodePort and random index\" ;"
        );
        let nat = t
            .base_chains
            .iter()
            .find(|(n, _)| n.as_str() == "nat-postrouting")
            .unwrap();
        assert_eq!(nat.1.base.unwrap().priority, 100);
        let pre = t
            .base_chains
            .iter()
            .find(|(n, _)| n.as_str() == "filter-prerouting-pre-dnat")
            .unwrap();
        assert_eq!(pre.1.base.unwrap().priority, -110);
        assert_eq!(
            t.affinity.spec(Family::V6).to_string(),
            "type ipv6_addr ; flags dynamic,timeout ;"
        );
    }

    #[test]
    fn priorities() {
        assert_eq!(parse_priority("dstnat").unwrap(), -100);
        assert_eq!(parse_priority("dstnat-10").unwrap(), -110);
        assert_eq!(parse_priority("filter+5").unwrap(), 5);
        assert_eq!(parse_priority("-110").unwrap(), -110);
        assert!(parse_priority("bogus").is_err());
    }

    #[test]
    fn mistakes_are_located() {
        let slots = BASE.slots;
        let e = parse_text("x.nft", "chain a {\n  jump $nope\n}\n", slots, &[])
            .err()
            .unwrap();
        assert_eq!(e.line, 2);
        let e = parse_text("x.nft", "chain a {\n  [what] accept\n}\n", slots, &[])
            .err()
            .unwrap();
        assert!(e.message.contains("unknown tag"));
        assert!(parse_text("x.nft", "chain a {\n accept\n", slots, &[]).is_err());
        assert!(
            parse_text(
                "x.nft",
                "set s {\n type ipv4_addr : verdict\n}\n",
                slots,
                &[]
            )
            .is_err()
        );
        assert!(
            parse_text(
                "x.nft",
                "set s {\n type ipv4_addr\n flags interval\n}\n",
                slots,
                &[]
            )
            .is_err()
        );
    }
}
