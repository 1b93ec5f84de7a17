//! Loads `rules-templates/`: nft syntax with typed `$slots`, compiled into the binary and parsed
//! once at start-up. Everything a template may contain is checked against what the renderer
//! offers (chains, tags, slots, jump targets, set references), so a template mistake is an error
//! at start-up (and in the unit tests), never a silently wrong rule.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};

use crate::model::Family;
use crate::ruleset::{
    BaseChain, ChainName, ChainType, Hook, KeyType, RuleShape, SetName, SetSpec, Slot,
};

/// The bundled template files.
const BASE: (&str, &str) = ("base.nft", include_str!("../../rules-templates/base.nft"));
const SERVICE: (&str, &str) = (
    "service.nft",
    include_str!("../../rules-templates/service.nft"),
);
const ENDPOINT: (&str, &str) = (
    "endpoint.nft",
    include_str!("../../rules-templates/endpoint.nft"),
);

/// Slots offered to the base ruleset.
const BASE_SLOTS: &[Slot] = &[Slot::Family, Slot::AddrType, Slot::Mark];
/// Slots offered to a service chain.
const SERVICE_SLOTS: &[Slot] = &[
    Slot::Family,
    Slot::ClusterIp,
    Slot::ClusterCidr,
    Slot::EndpointCount,
    Slot::EndpointChains,
];
/// Tags a service chain's rules may carry.
pub const TAG_MASQUERADE_OFF_CLUSTER: &str = "masquerade-off-cluster";
pub const TAG_MASQUERADE_ALL: &str = "masquerade-all";
const SERVICE_TAGS: &[&str] = &[TAG_MASQUERADE_OFF_CLUSTER, TAG_MASQUERADE_ALL];
/// Slots offered to an endpoint chain.
const ENDPOINT_SLOTS: &[Slot] = &[
    Slot::Family,
    Slot::EndpointIp,
    Slot::Endpoint,
    Slot::Protocol,
];

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
    /// The shapes of the rules to emit, in template order.
    pub fn rules<'s, F: Fn(&str) -> bool>(
        &'s self,
        enabled: F,
    ) -> impl Iterator<Item = &'s RuleShape> + use<'s, F> {
        self.rules
            .iter()
            .filter(move |r| r.tag.as_deref().is_none_or(&enabled))
            .map(|r| &r.shape)
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
    /// The chain of a service port.
    pub service: ChainTemplate,
    /// The chain of one endpoint of a service port.
    pub endpoint: ChainTemplate,
}

static BUNDLED: LazyLock<Result<Templates, TemplateError>> = LazyLock::new(Templates::load_bundled);

impl Templates {
    /// The templates compiled into the binary.
    pub fn bundled() -> Result<&'static Templates, TemplateError> {
        BUNDLED.as_ref().map_err(Clone::clone)
    }

    fn load_bundled() -> Result<Templates, TemplateError> {
        let base = parse_file(BASE.0, BASE.1, BASE_SLOTS, &[])?;
        let mut service = parse_file(SERVICE.0, SERVICE.1, SERVICE_SLOTS, SERVICE_TAGS)?;
        let mut endpoint = parse_file(ENDPOINT.0, ENDPOINT.1, ENDPOINT_SLOTS, &[])?;
        let service = single_chain(SERVICE.0, "service", &mut service, SERVICE_TAGS)?;
        let endpoint = single_chain(ENDPOINT.0, "endpoint", &mut endpoint, &[])?;
        let mut base_chains = Vec::new();
        for (line, chain) in base.chains {
            let name = ChainName::new(&chain.name).map_err(|e| err(BASE.0, line, e.to_string()))?;
            base_chains.push((name, chain));
        }
        let templates = Templates {
            base_chains,
            sets: base.sets.into_iter().map(|(_, s)| s).collect(),
            service,
            endpoint,
        };
        templates.check_references()?;
        Ok(templates)
    }

    /// Every `jump`/`goto` target and `@set` written literally in a template must be declared in
    /// the base template.
    fn check_references(&self) -> Result<(), TemplateError> {
        let chains: BTreeSet<&str> = self.base_chains.iter().map(|(n, _)| n.as_str()).collect();
        let sets: BTreeSet<&str> = self.sets.iter().map(|s| s.name.as_str()).collect();
        let all = self
            .base_chains
            .iter()
            .map(|(_, c)| c)
            .chain([&self.service, &self.endpoint]);
        for chain in all {
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
                    if let Some(set) = word.strip_prefix('@')
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

fn single_chain(
    file: &str,
    name: &str,
    parsed: &mut ParsedFile,
    tags: &[&str],
) -> Result<ChainTemplate, TemplateError> {
    if !parsed.sets.is_empty() || parsed.chains.len() != 1 || parsed.chains[0].1.name != name {
        return Err(err(
            file,
            0,
            format!("must declare exactly one chain, named {name:?}"),
        ));
    }
    let (line, chain) = parsed.chains.remove(0);
    if chain.base.is_some() {
        return Err(err(file, line, "must not be a base chain"));
    }
    for tag in tags {
        if !chain.rules.iter().any(|r| r.tag.as_deref() == Some(*tag)) {
            return Err(err(
                file,
                line,
                format!("no rule carries the tag [{tag}] the renderer uses"),
            ));
        }
    }
    Ok(chain)
}

fn parse_file(
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
    let mut comment = None;
    for (l, text) in body {
        if let Some(t) = text.strip_prefix("type ") {
            type_text = Some(t.trim());
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
    let type_text = type_text.ok_or_else(|| err(file, line, "missing type"))?;
    let spec = |family: Family| -> Result<Arc<SetSpec>, TemplateError> {
        let resolved = type_text.replace("$addr_type", family.addr_type());
        let (keys, data) = match resolved.split_once(':') {
            Some((k, d)) => (k, Some(d.trim())),
            None => (resolved.as_str(), None),
        };
        let key = keys
            .split('.')
            .map(|k| {
                KeyType::from_nft(k.trim())
                    .ok_or_else(|| err(file, line, format!("unknown key type {:?}", k.trim())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let verdict_map = match (kind, data) {
            ("set", None) => false,
            ("map", Some("verdict")) => true,
            _ => {
                return Err(err(
                    file,
                    line,
                    "a set has no data type; a map maps to verdict",
                ));
            }
        };
        Ok(Arc::new(SetSpec {
            key,
            verdict_map,
            comment: comment.clone(),
        }))
    };
    Ok(SetTemplate {
        name,
        specs: [spec(Family::V4)?, spec(Family::V6)?],
    })
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
        assert_eq!(t.sets.len(), 3);
        assert_eq!(t.endpoint.rules.len(), 2);
        let nat = t
            .base_chains
            .iter()
            .find(|(n, _)| n.as_str() == "nat-postrouting")
            .unwrap();
        assert_eq!(nat.1.base.unwrap().priority, 100);
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
        let e = parse_file("x.nft", "chain a {\n  jump $nope\n}\n", BASE_SLOTS, &[])
            .err()
            .unwrap();
        assert_eq!(e.line, 2);
        let e = parse_file("x.nft", "chain a {\n  [what] accept\n}\n", BASE_SLOTS, &[])
            .err()
            .unwrap();
        assert!(e.message.contains("unknown tag"));
        assert!(parse_file("x.nft", "chain a {\n accept\n", BASE_SLOTS, &[]).is_err());
        assert!(
            parse_file(
                "x.nft",
                "set s {\n type ipv4_addr : verdict\n}\n",
                BASE_SLOTS,
                &[]
            )
            .is_err()
        );
    }
}
