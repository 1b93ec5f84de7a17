//! Endpoint selection, as upstream's `CategorizeEndpoints`: which endpoints serve cluster-wide
//! traffic (ready ones, filtered by topology hints, else serving-and-terminating ones) and which
//! serve node-local traffic (local ready ones, else local serving-and-terminating ones). Each list
//! falls back separately. Not-serving terminating endpoints are never used.

use std::net::SocketAddr;
use std::sync::Arc;

/// One endpoint of a service port, merged from all the Service's slices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub addr: SocketAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub local: bool,
    /// On another node (a known node that is not this one).
    pub elsewhere: bool,
    /// `hints.forZones` (empty: no hint).
    pub zone_hints: Vec<Arc<str>>,
    /// `hints.forNodes` (empty: no hint).
    pub node_hints: Vec<Arc<str>>,
}

impl Candidate {
    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// Why a list holds the endpoints it holds (for `explain` and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Ready endpoints (cluster list: all of them).
    Ready,
    /// Ready endpoints hinted for this node (PreferSameNode).
    SameNode,
    /// Ready endpoints hinted for this node's zone (PreferSameZone).
    SameZone,
    /// No ready endpoint: serving endpoints that are terminating.
    TerminatingFallback,
    /// Nothing usable.
    None,
    /// Not computed: the traffic policies never use this list.
    Unused,
}

/// What a service port needs from endpoint selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// Cluster-policy endpoints are used (internal policy Cluster, or any external access).
    pub cluster: bool,
    /// Local-policy endpoints are used (internal policy Local, or external policy Local).
    pub local: bool,
}

/// Where this node is, for topology hints.
#[derive(Clone, Copy, Debug, Default)]
pub struct Locality<'a> {
    pub node_name: &'a str,
    pub zone: Option<&'a str>,
}

/// The endpoints a service port uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Categorized {
    pub cluster: Vec<SocketAddr>,
    pub cluster_selection: Selection,
    pub local: Vec<SocketAddr>,
    pub local_selection: Selection,
    /// Some endpoint anywhere is usable (ready, or serving and terminating).
    pub has_any: bool,
}

impl Categorized {
    /// Cluster and local endpoints together, each once, in candidate order.
    pub fn all_reachable(&self) -> Vec<SocketAddr> {
        let mut all = self.cluster.clone();
        for a in &self.local {
            if !all.contains(a) {
                all.push(*a);
            }
        }
        all
    }
}

/// The topology filter upstream derives from hints: all ready endpoints must carry hints of a
/// kind and at least one must name this node (or zone), else topology is ignored altogether.
fn topology_mode(candidates: &[Candidate], here: Locality<'_>) -> Selection {
    let ready = || candidates.iter().filter(|c| c.ready);
    let all_node_hinted = ready().all(|c| !c.node_hints.is_empty());
    if all_node_hinted && ready().any(|c| c.node_hints.iter().any(|n| &**n == here.node_name)) {
        return Selection::SameNode;
    }
    let all_zone_hinted = ready().all(|c| !c.zone_hints.is_empty());
    if let Some(zone) = here.zone
        && all_zone_hinted
        && ready().any(|c| c.zone_hints.iter().any(|z| &**z == zone))
    {
        return Selection::SameZone;
    }
    Selection::Ready
}

fn fits_topology(c: &Candidate, mode: Selection, here: Locality<'_>) -> bool {
    match mode {
        Selection::SameNode => c.node_hints.iter().any(|n| &**n == here.node_name),
        Selection::SameZone => here
            .zone
            .is_some_and(|z| c.zone_hints.iter().any(|h| &**h == z)),
        _ => true,
    }
}

/// Selects the cluster-wide and the node-local endpoints among `candidates` (already sorted).
pub fn categorize(candidates: &[Candidate], needs: Needs, here: Locality<'_>) -> Categorized {
    let mut out = Categorized {
        cluster: Vec::new(),
        cluster_selection: Selection::Unused,
        local: Vec::new(),
        local_selection: Selection::Unused,
        has_any: false,
    };
    if needs.cluster {
        let mode = topology_mode(candidates, here);
        out.cluster = candidates
            .iter()
            .filter(|c| c.ready && fits_topology(c, mode, here))
            .map(|c| c.addr)
            .collect();
        out.cluster_selection = mode;
        if out.cluster.is_empty() {
            out.cluster = candidates
                .iter()
                .filter(|c| c.serving_terminating())
                .map(|c| c.addr)
                .collect();
            out.cluster_selection = if out.cluster.is_empty() {
                Selection::None
            } else {
                Selection::TerminatingFallback
            };
        }
        out.has_any = !out.cluster.is_empty();
    }
    if needs.local {
        out.has_any |= candidates
            .iter()
            .any(|c| c.ready || c.serving_terminating());
        let local_ready: Vec<SocketAddr> = candidates
            .iter()
            .filter(|c| c.local && c.ready)
            .map(|c| c.addr)
            .collect();
        (out.local, out.local_selection) = if !local_ready.is_empty() {
            (local_ready, Selection::Ready)
        } else {
            let fallback: Vec<SocketAddr> = candidates
                .iter()
                .filter(|c| c.local && c.serving_terminating())
                .map(|c| c.addr)
                .collect();
            let selection = if fallback.is_empty() {
                Selection::None
            } else {
                Selection::TerminatingFallback
            };
            (fallback, selection)
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `R` ready, `S` serving, `T` terminating, `L` local; `n:NODE` / `z:ZONE` hints.
    fn ep(addr: &str, flags: &str) -> Candidate {
        let mut c = Candidate {
            addr: format!("{addr}:80").parse().unwrap(),
            ready: false,
            serving: false,
            terminating: false,
            local: false,
            elsewhere: false,
            zone_hints: Vec::new(),
            node_hints: Vec::new(),
        };
        for word in flags.split_whitespace() {
            if let Some(n) = word.strip_prefix("n:") {
                c.node_hints.push(Arc::from(n));
            } else if let Some(z) = word.strip_prefix("z:") {
                c.zone_hints.push(Arc::from(z));
            } else {
                c.ready |= word.contains('R');
                c.serving |= word.contains('R') || word.contains('S');
                c.terminating |= word.contains('T');
                c.local |= word.contains('L');
            }
        }
        c
    }

    fn ips(list: &[SocketAddr]) -> Vec<String> {
        list.iter().map(|a| a.ip().to_string()).collect()
    }

    const BOTH: Needs = Needs {
        cluster: true,
        local: true,
    };
    const HERE: Locality<'static> = Locality {
        node_name: "node1",
        zone: Some("zone-a"),
    };

    #[test]
    fn ready_endpoints_win() {
        let c = categorize(
            &[
                ep("10.0.0.1", "RL"),
                ep("10.0.0.2", "RL"),
                ep("10.0.0.3", "STL"),
                ep("10.0.0.4", "TL"),
                ep("10.0.0.5", "R"),
            ],
            BOTH,
            HERE,
        );
        assert_eq!(ips(&c.cluster), ["10.0.0.1", "10.0.0.2", "10.0.0.5"]);
        assert_eq!(ips(&c.local), ["10.0.0.1", "10.0.0.2"]);
        assert!(c.has_any);
    }

    #[test]
    fn serving_terminating_fallback_is_per_list() {
        let c = categorize(
            &[
                ep("10.0.0.2", "STL"),
                ep("10.0.0.3", "STL"),
                ep("10.0.0.4", "TL"),
                ep("10.0.0.5", "R"),
            ],
            BOTH,
            HERE,
        );
        assert_eq!(ips(&c.cluster), ["10.0.0.5"]);
        assert_eq!(c.cluster_selection, Selection::Ready);
        assert_eq!(ips(&c.local), ["10.0.0.2", "10.0.0.3"]);
        assert_eq!(c.local_selection, Selection::TerminatingFallback);
    }

    #[test]
    fn not_serving_terminating_endpoints_are_never_used() {
        let c = categorize(&[ep("10.0.0.4", "TL"), ep("10.0.0.5", "T")], BOTH, HERE);
        assert!(c.cluster.is_empty() && c.local.is_empty() && !c.has_any);
        assert_eq!(c.cluster_selection, Selection::None);
    }

    #[test]
    fn local_only_services_still_know_about_remote_endpoints() {
        let needs = Needs {
            cluster: false,
            local: true,
        };
        let c = categorize(&[ep("10.0.0.5", "R")], needs, HERE);
        assert!(c.local.is_empty() && c.cluster.is_empty());
        assert!(c.has_any, "an endpoint elsewhere means DROP, not REJECT");
        assert_eq!(c.cluster_selection, Selection::Unused);
    }

    #[test]
    fn zone_hints_filter_the_cluster_list_only() {
        let eps = [
            ep("10.0.0.1", "RL z:zone-b"),
            ep("10.0.0.2", "R z:zone-a"),
            ep("10.0.0.3", "R z:zone-a"),
        ];
        let c = categorize(&eps, BOTH, HERE);
        assert_eq!(c.cluster_selection, Selection::SameZone);
        assert_eq!(ips(&c.cluster), ["10.0.0.2", "10.0.0.3"]);
        assert_eq!(
            ips(&c.local),
            ["10.0.0.1"],
            "topology never filters the local list"
        );
    }

    #[test]
    fn hints_are_all_or_nothing() {
        // One ready endpoint without a zone hint: topology is ignored.
        let c = categorize(
            &[ep("10.0.0.1", "R z:zone-b"), ep("10.0.0.2", "R")],
            BOTH,
            HERE,
        );
        assert_eq!(c.cluster_selection, Selection::Ready);
        assert_eq!(c.cluster.len(), 2);
        // Every endpoint hinted, none for this zone: ignored too.
        let c = categorize(
            &[ep("10.0.0.1", "R z:zone-b"), ep("10.0.0.2", "R z:zone-c")],
            BOTH,
            HERE,
        );
        assert_eq!(c.cluster_selection, Selection::Ready);
        // A node without a zone label cannot use zone hints.
        let c = categorize(
            &[ep("10.0.0.1", "R z:zone-a")],
            BOTH,
            Locality {
                node_name: "node1",
                zone: None,
            },
        );
        assert_eq!(c.cluster_selection, Selection::Ready);
    }

    #[test]
    fn node_hints_take_precedence_over_zone_hints() {
        let eps = [
            ep("10.0.0.1", "R n:node1 z:zone-a"),
            ep("10.0.0.2", "R n:node2 z:zone-a"),
        ];
        let c = categorize(&eps, BOTH, HERE);
        assert_eq!(c.cluster_selection, Selection::SameNode);
        assert_eq!(ips(&c.cluster), ["10.0.0.1"]);
        // Not-ready endpoints do not need hints.
        let eps = [ep("10.0.0.1", "R z:zone-a"), ep("10.0.0.2", "STL")];
        assert_eq!(
            categorize(&eps, BOTH, HERE).cluster_selection,
            Selection::SameZone
        );
    }
}
