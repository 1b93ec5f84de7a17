//! Backends apply a [`Transaction`] atomically and read the kernel's state of our tables back.
//! The `netlink` backend (the default) speaks nf_tables netlink directly; the `nft` backend drives
//! the nft binary and is the reference the netlink backend must match.

pub mod netlink;
pub mod nft;
pub mod nft_json;
pub mod script;
pub mod writers;

use crate::diff::Transaction;
use crate::ruleset::KernelState;

/// Why a backend call failed. A failed `apply` changed nothing in the kernel.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel refused the transaction: {0}")]
    Refused(String),
    /// Refused, and the kernel named the operations (indices into the transaction's ops) it
    /// refused, so the objects at fault can be isolated.
    #[error("the kernel refused the transaction: {message}")]
    Rejected { message: String, ops: Vec<usize> },
    #[error("cannot read the kernel's ruleset: {0}")]
    Read(String),
    #[error("cannot encode the transaction: {0}")]
    Encode(String),
    #[error("netlink: {0}")]
    Netlink(String),
}

/// Something that programs nf_tables.
pub trait Backend: Send {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
    /// Applies all of `tx` or nothing.
    fn apply(&mut self, tx: &Transaction) -> Result<(), BackendError>;
    /// Reads our tables (both families) from the kernel.
    fn read(&mut self) -> Result<KernelState, BackendError>;
    /// Deletes our tables; returns how many existed.
    fn delete_tables(&mut self) -> Result<usize, BackendError>;
}

/// A backend without a kernel: reads an empty one and refuses to apply. Used by `render`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Offline;

impl Backend for Offline {
    fn name(&self) -> &'static str {
        "offline"
    }

    fn apply(&mut self, _tx: &Transaction) -> Result<(), BackendError> {
        Err(BackendError::Refused(
            "offline: no kernel to program".into(),
        ))
    }

    fn read(&mut self) -> Result<KernelState, BackendError> {
        Ok(KernelState::default())
    }

    fn delete_tables(&mut self) -> Result<usize, BackendError> {
        Ok(0)
    }
}
