//! The `nft` backend: each transaction is one `nft -f -` run (atomic in the kernel), and the
//! kernel is read with `nft -j list table`. Only our own tables are ever listed, so other tables
//! on the host cannot break us.

use std::io::Write;
use std::process::{Command, Stdio};

use super::{Backend, BackendError, nft_json, script};
use crate::diff::Transaction;
use crate::model::Family;
use crate::ruleset::{KernelState, TABLE_NAME};

/// Longest piece of nft's error output kept in an error.
const MAX_ERROR_TEXT: usize = 4096;

/// Drives the nft binary.
#[derive(Debug, Clone)]
pub struct NftBackend {
    program: String,
}

impl Default for NftBackend {
    fn default() -> Self {
        NftBackend {
            program: "nft".into(),
        }
    }
}

impl NftBackend {
    /// Uses the given nft binary (default: `nft` from `PATH`).
    pub fn with_program(program: impl Into<String>) -> NftBackend {
        NftBackend {
            program: program.into(),
        }
    }

    fn run(
        &self,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<std::process::Output, BackendError> {
        self.run_with(
            args,
            stdin.map(|text| {
                move |pipe: &mut std::process::ChildStdin| pipe.write_all(text.as_bytes())
            }),
        )
    }

    /// Runs nft, feeding its standard input from `feed` if given.
    fn run_with(
        &self,
        args: &[&str],
        feed: Option<impl FnOnce(&mut std::process::ChildStdin) -> std::io::Result<()>>,
    ) -> Result<std::process::Output, BackendError> {
        let stdin = feed.is_some();
        let spawn_err = |source| BackendError::Spawn {
            program: self.program.clone(),
            source,
        };
        let mut child = Command::new(&self.program)
            .args(args)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        // nft's netlink socket takes its process id as port: its commits are ours.
        super::writers::register(child.id());
        if let (Some(feed), Some(mut pipe)) = (feed, child.stdin.take()) {
            // A write error means nft exited early; its status and stderr tell why.
            let _ = feed(&mut pipe);
        }
        child.wait_with_output().map_err(spawn_err)
    }

    /// The families whose table exists.
    fn existing_tables(&self) -> Result<Vec<Family>, BackendError> {
        let out = self.run(&["-j", "list", "tables"], None)?;
        if !out.status.success() {
            return Err(BackendError::Read(stderr_text(&out.stderr)));
        }
        nft_json::our_tables(&out.stdout).map_err(BackendError::Read)
    }
}

impl Backend for NftBackend {
    fn name(&self) -> &'static str {
        "nft"
    }

    fn apply(&mut self, tx: &Transaction) -> Result<(), BackendError> {
        if tx.is_empty() {
            return Ok(());
        }
        let out = self.run_with(
            &["-f", "-"],
            Some(|pipe: &mut std::process::ChildStdin| script::write(tx, pipe)),
        )?;
        if out.status.success() {
            Ok(())
        } else {
            Err(BackendError::Refused(stderr_text(&out.stderr)))
        }
    }

    fn read(&mut self) -> Result<KernelState, BackendError> {
        let mut state = KernelState::default();
        for family in self.existing_tables()? {
            let out = self.run(
                &["-j", "list", "table", family.nft_name(), TABLE_NAME],
                None,
            )?;
            if !out.status.success() {
                return Err(BackendError::Read(stderr_text(&out.stderr)));
            }
            let table = nft_json::table(&out.stdout).map_err(BackendError::Read)?;
            state.tables[family.index()] = Some(table);
        }
        Ok(state)
    }

    fn delete_tables(&mut self) -> Result<usize, BackendError> {
        let families = self.existing_tables()?;
        if families.is_empty() {
            return Ok(0);
        }
        let text: String = families
            .iter()
            .map(|f| format!("delete table {} {TABLE_NAME}\n", f.nft_name()))
            .collect();
        let out = self.run(&["-f", "-"], Some(&text))?;
        if out.status.success() {
            Ok(families.len())
        } else {
            Err(BackendError::Refused(stderr_text(&out.stderr)))
        }
    }
}

fn stderr_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= MAX_ERROR_TEXT {
        text.to_string()
    } else {
        let mut end = MAX_ERROR_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    }
}
