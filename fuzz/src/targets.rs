//! The fuzz target bodies. Each panics when a property fails (libFuzzer records the input as a
//! crash; the smoke test reports it):
//!
//! - [`manifest`]: arbitrary bytes through the manifest loader as YAML and as JSON: no panic, a
//!   bounded number of objects ([`max_found`]), and every valid object through [`render_all`].
//! - [`objects`]: decoded objects (see [`super::input`]) through the loader, [`State`], plan and
//!   render, with every property of [`super::check`] ([`render_all`]).
//! - [`churn`]: the same objects as a sequence of changes with an incremental sync after each
//!   batch; after every sync the kernel mirror must be what a full sync would make it.

use std::collections::BTreeSet;
use std::sync::Arc;

use kube_nft_proxy::backend::netlink::batch::{self, Programs};
use kube_nft_proxy::backend::script;
use kube_nft_proxy::diff::{self, Op, Scope, Transaction};
use kube_nft_proxy::model::{Cidr, Family, Node, ObjectId, ServiceKey};
use kube_nft_proxy::plan::{NodePortAddresses, NodeSettings, plan_service, resolve_node_addresses};
use kube_nft_proxy::render::Renderer;
use kube_nft_proxy::ruleset::desired::{Item, Owner, Untracked};
use kube_nft_proxy::ruleset::{
    ChainName, ElementKey, ElementValue, KernelState, ObjectRef, Ruleset, SetName,
};
use kube_nft_proxy::source::manifest::{self, Format, Outcome};
use kube_nft_proxy::state::{Change, State};
use serde_json::Value;

use super::check::{self, ScriptStats};
use super::input::{self, NODE_NAME, Op as InputOp, Settings, Source};

/// Most objects a YAML manifest of `len` bytes may yield: serde-saphyr stops after 1,000,000
/// parser events (aliases replay theirs), a budget that may grow with the file to one event per
/// byte, and an object takes at least four events (a mapping with `apiVersion` and `kind`).
pub fn max_found(len: usize) -> usize {
    len.max(1_000_000) / 4
}

/// What [`render_all`] produced, for the smoke test's expectations and `nft -c` samples.
#[derive(Debug, Default)]
pub struct Rendered {
    /// The whole ruleset as the first sync would write it (`nft -f` syntax).
    pub script: String,
    pub stats: ScriptStats,
    pub services: usize,
    /// Elements two Services wanted with different content (the first owner wins).
    pub conflicts: usize,
    /// Items of all Service fragments.
    pub items: usize,
    /// The desired ruleset the script was made from.
    pub ruleset: Ruleset,
}

/// Settings for the decoded node settings and the Node object.
pub fn node_settings(s: &Settings, node: Option<Arc<Node>>) -> NodeSettings {
    let cidr = |c: Option<&str>| c.and_then(|c| Cidr::parse(c).ok());
    let config = match &s.nodeport_cidrs {
        None => NodePortAddresses::Primary,
        Some(list) => NodePortAddresses::Cidrs(list.iter().filter_map(|c| cidr(Some(c))).collect()),
    };
    let local: Vec<std::net::IpAddr> = s
        .local_addresses
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let mut settings = NodeSettings {
        cluster_cidrs: [cidr(s.cluster_cidrs[0]), cidr(s.cluster_cidrs[1])],
        masquerade_all: s.masquerade_all,
        node,
        ..NodeSettings::new(NODE_NAME)
    };
    (settings.nodeport_ips, settings.node_ips) =
        resolve_node_addresses(&config, settings.node.as_deref(), &local);
    settings
}

/// Default settings: a pod CIDR per family, NodePorts on the node's addresses.
pub fn default_settings() -> Settings {
    Settings {
        cluster_cidrs: [Some("10.244.0.0/16"), Some("fd00:244::/48")],
        masquerade_all: false,
        nodeport_cidrs: None,
        local_addresses: vec!["192.168.1.10", "fd00:1::10", "127.0.0.1"],
    }
}

/// The changes a manifest holds (valid objects only), checking the loader's own properties.
pub fn load(bytes: &[u8], format: Format) -> Option<Vec<Change>> {
    let found = manifest::parse(bytes, format).ok()?;
    let bound = match format {
        // Every JSON object takes more bytes than this.
        Format::Json => bytes.len() / 8 + 1,
        Format::Yaml => max_found(bytes.len()),
    };
    assert!(
        found.len() <= bound,
        "{} objects from {} bytes of {format:?}",
        found.len(),
        bytes.len()
    );
    let mut changes = Vec::new();
    for f in found {
        // Identities are shortened before they reach a log line.
        let shown = f.id.to_string();
        assert!(
            shown.chars().count() <= 2 * 65 + 20,
            "object id shown at {} characters",
            shown.chars().count()
        );
        if let Outcome::Valid(object) = f.outcome {
            changes.push(Change::Upsert(object));
        }
    }
    Some(changes)
}

/// One object (as the decoder built it) as changes: through the JSON loader, or as YAML (JSON
/// text is YAML), in which case both must agree.
fn object_changes(doc: &Value, yaml: bool) -> Vec<Change> {
    let bytes = serde_json::to_vec(doc).expect("JSON values serialise");
    let json = manifest::parse(&bytes, Format::Json).expect("serde_json reads its own output");
    if yaml {
        let from_yaml = manifest::parse(&bytes, Format::Yaml);
        if let Ok(found) = &from_yaml {
            assert_eq!(
                found,
                &json,
                "one document means different objects as YAML and as JSON: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
    json.into_iter()
        .filter_map(|f| match f.outcome {
            Outcome::Valid(o) => Some(Change::Upsert(o)),
            _ => None,
        })
        .collect()
}

fn delete_change(kind: &str, namespace: String, name: String) -> Change {
    Change::Delete(match kind {
        "Service" => ObjectId::Service { namespace, name },
        "EndpointSlice" => ObjectId::EndpointSlice { namespace, name },
        _ => ObjectId::Node { name },
    })
}

/// The elements of one set.
type SetElements = ((Family, SetName), Vec<(ElementKey, ElementValue)>);

/// A fragment as a transaction, the way `explain` shows it (`diff::creating`), with the elements
/// of each set gathered into one op, after the sets and chains, as a sync writes them.
pub fn objects_transaction(items: &[Item]) -> Transaction {
    let mut ops = Vec::new();
    let mut elements: Vec<SetElements> = Vec::new();
    for op in diff::creating(items.to_vec()).ops {
        match op {
            Op::AddElements(family, set, list) => {
                match elements
                    .iter_mut()
                    .find(|(s, _)| *s == (family, set.clone()))
                {
                    Some((_, all)) => all.extend(list),
                    None => elements.push(((family, set), list)),
                }
            }
            other => ops.push(other),
        }
    }
    for ((family, set), list) in elements {
        ops.push(Op::AddElements(family, set, list));
    }
    Transaction { ops }
}

/// Plans, renders and checks one Service; its fragment (empty when it is gone).
fn render_service(
    renderer: &Renderer,
    base: &check::Base,
    state: &State,
    settings: &NodeSettings,
    key: &ServiceKey,
) -> Vec<Item> {
    let Some(service) = state.service(key) else {
        return Vec::new();
    };
    let slices = state.slices_of(key);
    let plan = plan_service(service, &slices, settings);
    let items = renderer
        .service(&plan, settings)
        .unwrap_or_else(|e| panic!("valid Service {key} cannot be rendered: {e}"));
    if let Err(e) = check::fragment(base, service, &slices, &plan, settings, &items) {
        panic!("{e}");
    }
    let own = check::Own::new(key, &plan, false).unwrap_or_else(|e| panic!("{e}"));
    let vocabulary = check::vocabulary();
    let text = script::script(&objects_transaction(&items));
    if let Err(e) = check::script(&text, &["add"], &|n| own.may_use(base, n), &|c| {
        vocabulary.fixed_comment(c) || own.comment(c)
    }) {
        panic!("Service {key}: {e}");
    }
    items
}

/// Checks a transaction's script (names must be declared by it or be in `known`) and encodes it
/// for netlink, which compiles every rule.
fn check_transaction(
    tx: &Transaction,
    verbs: &[&str],
    known: &dyn Fn(&str) -> bool,
) -> (String, ScriptStats) {
    let text = script::script(tx);
    let declared = check::declared_names(&text);
    let vocabulary = check::vocabulary();
    let stats = check::script(&text, verbs, &|n| declared.contains(n) || known(n), &|c| {
        vocabulary.fixed_comment(c) || check::service_comment(c)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = batch::encode(tx, &mut Programs::default(), 1) {
        panic!("the netlink encoder refuses the transaction: {e}");
    }
    (text, stats)
}

/// Renders every Service of `state` as a first sync would and checks every property.
pub fn render_all(state: &State, settings: &NodeSettings) -> Rendered {
    let renderer = Renderer::new().expect("the bundled templates load");
    let base_items = renderer.base(settings).expect("the base fragment renders");
    let base = check::Base::new(&base_items);
    let mut ruleset = Ruleset::new();
    let mut conflicts = ruleset.replace(Owner::Base, base_items, &mut Untracked);
    let mut keys: Vec<ServiceKey> = state.service_keys().cloned().collect();
    keys.sort();
    let mut items = 0;
    for key in &keys {
        let fragment = render_service(&renderer, &base, state, settings, key);
        items += fragment.len();
        conflicts.extend(ruleset.replace(
            Owner::Service(Arc::new(key.clone())),
            fragment,
            &mut Untracked,
        ));
    }
    // Chains and sets carry their Service's name (or are identical shards): only elements of
    // the shared maps can be wanted by two Services.
    for c in &conflicts {
        assert!(
            matches!(c.object, ObjectRef::Element(..)) && c.winner != Owner::Base,
            "conflict over {:?} between {} and {}",
            c.object,
            c.winner,
            c.loser
        );
    }
    let tx = diff::diff(&KernelState::default(), &ruleset, Scope::Full, &[]);
    let (text, stats) = check_transaction(&tx, &["add"], &|_| false);
    Rendered {
        script: text,
        stats,
        services: keys.len(),
        conflicts: conflicts.len(),
        items,
        ruleset,
    }
}

/// Target `manifest`.
pub fn manifest(data: &[u8]) {
    manifest_rendered(data);
}

/// [`manifest`], returning what was rendered from the YAML reading (if it parsed).
pub fn manifest_rendered(data: &[u8]) -> Option<Rendered> {
    let mut rendered = None;
    for format in [Format::Json, Format::Yaml] {
        let Some(changes) = load(data, format) else {
            continue;
        };
        let mut state = State::new(NODE_NAME);
        for change in changes {
            state.apply(change);
        }
        let settings = node_settings(&default_settings(), state.node().cloned());
        rendered = Some(render_all(&state, &settings));
    }
    rendered
}

/// Target `objects`.
pub fn objects(data: &[u8]) {
    objects_rendered(data);
}

/// [`objects`], returning what was rendered.
pub fn objects_rendered(data: &[u8]) -> Rendered {
    let mut src = Source::new(data);
    let settings = input::settings(&mut src);
    let yaml = src.chance(64);
    let mut state = State::new(NODE_NAME);
    for op in input::ops(&mut src) {
        match op {
            InputOp::Object(doc) => {
                for change in object_changes(&doc, yaml) {
                    state.apply(change);
                }
            }
            InputOp::Delete(kind, namespace, name) => {
                state.apply(delete_change(kind, namespace, name));
            }
            InputOp::Sync => {}
        }
    }
    let settings = node_settings(&settings, state.node().cloned());
    render_all(&state, &settings)
}

/// Target `churn`.
pub fn churn(data: &[u8]) {
    churn_syncs(data);
}

/// [`churn`], returning how many syncs ran.
pub fn churn_syncs(data: &[u8]) -> usize {
    let mut src = Source::new(data);
    let decoded = input::settings(&mut src);
    let mut ops = input::ops(&mut src);
    ops.push(InputOp::Sync);
    let renderer = Renderer::new().expect("the bundled templates load");
    let mut state = State::new(NODE_NAME);
    let mut desired = Ruleset::new();
    let mut kernel = KernelState::default();
    let mut settings = node_settings(&decoded, None);
    let mut base = check::Base::new(&[]);
    let mut syncs = 0;
    for op in ops {
        match op {
            InputOp::Object(doc) => {
                for change in object_changes(&doc, false) {
                    state.apply(change);
                }
                continue;
            }
            InputOp::Delete(kind, namespace, name) => {
                state.apply(delete_change(kind, namespace, name));
                continue;
            }
            InputOp::Sync => {}
        }
        let first = syncs == 0;
        let changes = state.take_changes();
        let mut touched = BTreeSet::new();
        let keys: Vec<ServiceKey> = if first || changes.node {
            settings = node_settings(&decoded, state.node().cloned());
            let base_items = renderer.base(&settings).expect("the base fragment renders");
            base = check::Base::new(&base_items);
            desired.replace(Owner::Base, base_items, &mut touched);
            let mut all: BTreeSet<ServiceKey> = state.service_keys().cloned().collect();
            all.extend(desired.owners().filter_map(|o| match o {
                Owner::Service(k) => Some((**k).clone()),
                Owner::Base => None,
            }));
            all.into_iter().collect()
        } else {
            changes.services.into_keys().collect()
        };
        for key in keys {
            let items = render_service(&renderer, &base, &state, &settings, &key);
            desired.replace(Owner::Service(Arc::new(key)), items, &mut touched);
        }
        // Chains no longer wanted were flushed by an earlier sync: delete them now.
        let stale: Vec<(Family, ChainName)> = Family::ALL
            .into_iter()
            .flat_map(|f| {
                let desired = &desired;
                kernel
                    .table(f)
                    .into_iter()
                    .flat_map(move |t| t.chains.keys())
                    .filter(move |n| desired.chain(f, n).is_none())
                    .map(move |n| (f, n.clone()))
            })
            .collect();
        let scope = if first {
            Scope::Full
        } else {
            Scope::Objects(&touched)
        };
        let tx = diff::diff(&kernel, &desired, scope, &stale);
        let known = |n: &str| {
            Family::ALL.into_iter().any(|f| {
                kernel.table(f).is_some_and(|t| {
                    t.chains.keys().any(|c| c.as_str() == n)
                        || t.sets.keys().any(|s| s.as_str() == n)
                })
            })
        };
        check_transaction(&tx, &["add", "delete", "flush"], &known);
        kernel.apply_owned(tx);
        let left = diff::diff(&kernel, &desired, Scope::Full, &[]);
        assert!(
            left.is_empty(),
            "after incremental sync {}, a full sync still has work:\n{}",
            syncs + 1,
            script::script(&left)
        );
        syncs += 1;
    }
    syncs
}
