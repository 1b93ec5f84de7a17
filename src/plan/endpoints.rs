//! Endpoint selection, as upstream's `CategorizeEndpoints`: which endpoints serve cluster-wide
//! traffic and which serve node-local traffic, with the serving-and-terminating fallback applied
//! to each list separately. Not-serving terminating endpoints are never used.

use std::net::SocketAddr;

/// One endpoint of a service port, merged from all the Service's slices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub addr: SocketAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub local: bool,
}

impl Candidate {
    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// Why a list holds the endpoints it holds (for `explain` and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Ready endpoints.
    Ready,
    /// No ready endpoint: serving endpoints that are terminating.
    TerminatingFallback,
    /// Nothing usable.
    None,
}

/// The endpoints a service port uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Categorized {
    pub cluster: Vec<SocketAddr>,
    pub cluster_selection: Selection,
    pub local: Vec<SocketAddr>,
    pub local_selection: Selection,
}

/// Selects the cluster-wide and the node-local endpoints among `candidates` (already sorted).
pub fn categorize(candidates: &[Candidate]) -> Categorized {
    let (cluster, cluster_selection) = select(candidates.iter());
    let (local, local_selection) = select(candidates.iter().filter(|c| c.local));
    Categorized {
        cluster,
        cluster_selection,
        local,
        local_selection,
    }
}

fn select<'a>(
    candidates: impl Iterator<Item = &'a Candidate> + Clone,
) -> (Vec<SocketAddr>, Selection) {
    let ready: Vec<SocketAddr> = candidates
        .clone()
        .filter(|c| c.ready)
        .map(|c| c.addr)
        .collect();
    if !ready.is_empty() {
        return (ready, Selection::Ready);
    }
    let fallback: Vec<SocketAddr> = candidates
        .filter(|c| c.serving_terminating())
        .map(|c| c.addr)
        .collect();
    if fallback.is_empty() {
        (fallback, Selection::None)
    } else {
        (fallback, Selection::TerminatingFallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `R` ready, `S+T` serving and terminating, `T` terminating only; `L` local.
    fn ep(addr: &str, flags: &str) -> Candidate {
        Candidate {
            addr: format!("{addr}:80").parse().unwrap(),
            ready: flags.contains('R'),
            serving: flags.contains('R') || flags.contains('S'),
            terminating: flags.contains('T'),
            local: flags.contains('L'),
        }
    }

    fn ips(list: &[SocketAddr]) -> Vec<String> {
        list.iter().map(|a| a.ip().to_string()).collect()
    }

    #[test]
    fn ready_endpoints_win() {
        let c = categorize(&[
            ep("10.0.0.1", "RL"),
            ep("10.0.0.2", "RL"),
            ep("10.0.0.3", "STL"),
            ep("10.0.0.4", "TL"),
            ep("10.0.0.5", "R"),
        ]);
        assert_eq!(ips(&c.cluster), ["10.0.0.1", "10.0.0.2", "10.0.0.5"]);
        assert_eq!(ips(&c.local), ["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn serving_terminating_fallback_is_per_list() {
        let c = categorize(&[
            ep("10.0.0.2", "STL"),
            ep("10.0.0.3", "STL"),
            ep("10.0.0.4", "TL"),
            ep("10.0.0.5", "R"),
        ]);
        assert_eq!(ips(&c.cluster), ["10.0.0.5"]);
        assert_eq!(c.cluster_selection, Selection::Ready);
        assert_eq!(ips(&c.local), ["10.0.0.2", "10.0.0.3"]);
        assert_eq!(c.local_selection, Selection::TerminatingFallback);
    }

    #[test]
    fn not_serving_terminating_endpoints_are_never_used() {
        let c = categorize(&[ep("10.0.0.4", "TL"), ep("10.0.0.5", "T")]);
        assert!(c.cluster.is_empty() && c.local.is_empty());
        assert_eq!(c.cluster_selection, Selection::None);
    }
}
