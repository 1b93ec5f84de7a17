//! The bodies of kube-nft-proxy's fuzz targets and the properties they check, shared by the
//! cargo-fuzz targets in `fuzz_targets/` (nightly) and the stable smoke test
//! `tests/fuzz_smoke.rs`, which includes this file as a module. So: no dependency but the main
//! crate and its own dependencies, no `crate::` paths (siblings are reached through `super::`),
//! and `#[path]` on every submodule.

#![forbid(unsafe_code)]

/// Bytes → Kubernetes objects as JSON, from a dictionary of hostile strings.
#[path = "input.rs"]
pub mod input;

/// The properties: fragments stay inside their Service, scripts carry no object text.
#[path = "check.rs"]
pub mod check;

/// The target bodies: `manifest`, `objects`, `churn`.
#[path = "targets.rs"]
pub mod targets;

/// A deterministic mutator for the stable smoke test (libFuzzer mutates on its own).
#[path = "mutate.rs"]
pub mod mutate;
