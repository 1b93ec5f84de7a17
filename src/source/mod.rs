//! Sources turn the outside world into [`Change`]s for the reconciler. Today: a directory of
//! manifests ([`files`]). Objects are validated here, so invalid input is logged where it was
//! found (file, document) and never reaches the state.

pub mod addresses;
pub mod api;
pub mod files;
pub mod kernel_changes;
pub mod manifest;

use crate::state::Change;

/// What a source tells the reconciler.
#[derive(Debug)]
pub enum Event {
    /// Objects changed.
    Changes(Vec<Change>),
    /// The source has delivered its complete initial view; programming may start.
    Synced,
    /// The node's local addresses (for NodePorts and health checks) are now these.
    LocalAddresses(Vec<std::net::IpAddr>),
    /// Someone else changed our tables: restore them.
    KernelChanged(Vec<(crate::model::Family, kernel_changes::Damage)>),
    /// Stop the reconciler (rules stay in place).
    Shutdown,
}

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read manifest directory {path}: {source}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Kubernetes API: {0}")]
    Kubernetes(String),
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: String,
        #[source]
        source: notify::Error,
    },
}
