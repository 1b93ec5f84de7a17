//! kube-nft-proxy: an nftables-based replacement for Kubernetes' kube-proxy.
//!
//! ```text
//!  manifests dir ─notify─▶ source ─▶ state ─▶ plan ─▶ render ─▶ diff ─▶ backend ─▶ nf_tables
//!                          (I/O)    (data)   (pure)   (pure)   (pure)   (I/O)
//! ```
//!
//! - [`source`]: a directory of manifests → validated [`model`] objects (upserts and deletes).
//! - [`state`]: the current objects, indexed by Service; which Services changed.
//! - [`plan`]: kube-proxy's semantics as a pure function of a Service, its slices and the node.
//! - [`render`]: plans → ruleset fragments, rule text from `rules-templates/`.
//! - [`ruleset`]: the IR (chains, rules, sets, elements), the desired ruleset and the kernel mirror.
//! - [`diff`]: kernel mirror × desired ruleset → the smallest [`diff::Transaction`].
//! - [`backend`]: applies a transaction atomically, reads the kernel back.
//! - [`reconciler`]: the sync loop that ties them together; [`metrics`], [`http`] and [`events`]
//!   expose it.
//! - [`explain`] and [`trace`]: the operator's debugging commands.

pub mod backend;
pub mod config;
pub mod conntrack;
pub mod diff;
pub mod events;
pub mod explain;
pub mod fixtures;
pub mod health_check;
pub mod http;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod plan;
pub mod reconciler;
pub mod render;
pub mod ruleset;
pub mod source;
pub mod state;
pub mod trace;
