//! The netlink backend: programs nf_tables directly over a netlink socket, in pure Rust. Each
//! transaction is one batch (atomic in the kernel) whose rules come from the templates compiled
//! once into expressions; the kernel's answer names every message it refused. Reading back uses
//! netlink dumps, so neither the nft binary nor libnftnl is needed at run time.

pub mod batch;
pub mod compile;
pub mod expr;
pub mod read;
pub mod socket;
pub mod wire;

use super::{Backend, BackendError};
use crate::diff::{Op, Transaction};
use crate::model::Family;
use crate::render::templates::Templates;
use crate::ruleset::KernelState;
use batch::{Doing, Programs};
use socket::NfSocket;

/// Refusals quoted in an error (a failed batch may have many).
const MAX_REPORTED: usize = 5;
/// The table a validation reset creates and deletes in one batch (never visible).
const RESET_TABLE: &str = "kube-nft-proxy-reset";

/// Programs nf_tables over netlink.
pub struct NetlinkBackend {
    socket: NfSocket,
    programs: Programs,
}

impl NetlinkBackend {
    /// Opens a socket in the current network namespace and compiles every rule template, so a
    /// template the compiler does not know stops the start-up.
    pub fn new(templates: &'static Templates) -> Result<NetlinkBackend, BackendError> {
        let mut programs = Programs::default();
        for chain in templates.chains() {
            for rule in &chain.rules {
                programs
                    .prepare(&rule.shape)
                    .map_err(|e| BackendError::Encode(e.to_string()))?;
            }
        }
        let socket = NfSocket::open().map_err(|e| BackendError::Netlink(e.to_string()))?;
        Ok(NetlinkBackend { socket, programs })
    }

    fn describe(&self, batch: &batch::Batch, refused: &[(u32, i32)]) -> String {
        let mut parts: Vec<String> = refused
            .iter()
            .take(MAX_REPORTED)
            .map(|(seq, errno)| {
                let what = match batch.doing(*seq) {
                    Some(Doing::Op { what, .. }) => what.clone(),
                    Some(Doing::Batch) => "commit".to_string(),
                    None => format!("message {seq}"),
                };
                format!("{what}: {}", std::io::Error::from_raw_os_error(*errno))
            })
            .collect();
        if refused.len() > MAX_REPORTED {
            parts.push(format!("and {} more", refused.len() - MAX_REPORTED));
        }
        parts.join("; ")
    }
}

impl NetlinkBackend {
    /// After a refused batch the kernel validates the whole of every table created in this
    /// namespace after each message of the next batch (quadratic at scale) until a commit
    /// succeeds. A batch that adds and deletes a scratch table commits without changing
    /// anything, and resets that.
    fn reset_validation(&mut self) {
        let seq = self.socket.reserve_seq(4);
        let mut w = wire::Writer::new();
        w.begin(
            wire::MSG_BATCH_BEGIN,
            wire::NLM_F_REQUEST,
            seq,
            0,
            wire::SUBSYS_NFTABLES,
        );
        w.end();
        for (i, msg) in [wire::Msg::NewTable, wire::Msg::DelTable]
            .into_iter()
            .enumerate()
        {
            w.begin(
                msg.netlink_type(),
                wire::NLM_F_REQUEST,
                seq + 1 + i as u32,
                2,
                0,
            );
            w.string(1, RESET_TABLE); // NFTA_TABLE_NAME
            w.end();
        }
        w.begin(
            wire::MSG_BATCH_END,
            wire::NLM_F_REQUEST | wire::NLM_F_ACK,
            seq + 3,
            0,
            wire::SUBSYS_NFTABLES,
        );
        w.end();
        if let Err(e) = self.socket.send_batch(&[w.into_bytes()], seq + 3) {
            tracing::debug!(error = %e, "validation reset failed");
        }
    }
}

impl Backend for NetlinkBackend {
    fn name(&self) -> &'static str {
        "netlink"
    }

    fn apply(&mut self, tx: &Transaction) -> Result<(), BackendError> {
        if tx.is_empty() {
            return Ok(());
        }
        let seq_base = self.socket.next_seq();
        let batch = batch::encode(tx, &mut self.programs, seq_base)
            .map_err(|e| BackendError::Encode(e.to_string()))?;
        self.socket.reserve_seq(batch.messages() as u32);
        let outcome = self
            .socket
            .send_batch(&batch.chunks, batch.end_seq)
            .map_err(|e| BackendError::Netlink(e.to_string()))?;
        if !outcome.refused.is_empty() || !outcome.committed {
            self.reset_validation();
            if outcome.refused.is_empty() {
                return Err(BackendError::Refused(
                    "the kernel did not confirm the commit".to_string(),
                ));
            }
            let mut ops: Vec<usize> = outcome
                .refused
                .iter()
                .filter_map(|(seq, _)| match batch.doing(*seq) {
                    Some(Doing::Op { index, .. }) => Some(*index),
                    _ => None,
                })
                .collect();
            ops.sort_unstable();
            ops.dedup();
            return Err(BackendError::Rejected {
                message: self.describe(&batch, &outcome.refused),
                ops,
            });
        }
        Ok(())
    }

    fn read(&mut self) -> Result<KernelState, BackendError> {
        let mut state = KernelState::default();
        for family in [Family::V4, Family::V6] {
            let err = |e: std::io::Error| BackendError::Read(format!("{family}: {e}"));
            if read::table_exists(&mut self.socket, family).map_err(err)? {
                state.tables[family.index()] =
                    Some(read::table(&mut self.socket, family).map_err(err)?);
            }
        }
        Ok(state)
    }

    fn delete_tables(&mut self) -> Result<usize, BackendError> {
        let mut ops = Vec::new();
        for family in [Family::V4, Family::V6] {
            let exists = read::table_exists(&mut self.socket, family)
                .map_err(|e| BackendError::Read(format!("{family}: {e}")))?;
            if exists {
                ops.push(Op::DeleteTable(family));
            }
        }
        let count = ops.len();
        self.apply(&Transaction { ops })?;
        Ok(count)
    }
}
