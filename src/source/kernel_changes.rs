//! Notices when someone else changes our tables: subscribes to nf_tables change notifications
//! (multicast group `NFNLGRP_NFTABLES`) and, for any change to a table named `kube-nft-proxy`
//! made through a netlink socket that is not ours (another tool deleting the table, flushing a
//! chain, `nft flush ruleset`), tells the reconciler at once so it re-reads the kernel and
//! restores the ruleset. No polling: the kernel announces every committed change. Other tables
//! are never looked at. If notifications were lost (the socket overflowed), it asks for a check
//! all the same.

use std::io;
use std::sync::mpsc;

use netlink_sys::{Socket, constants::NETLINK_NETFILTER};
use tracing::{debug, warn};

use super::Event;
use crate::backend::netlink::wire::{SUBSYS_NFTABLES, messages, nft_attrs, nft_family};
use crate::backend::writers;
use crate::model::Family;
use crate::ruleset::TABLE_NAME;

/// `NFNLGRP_NFTABLES`.
const GROUP_NFTABLES: u32 = 7;
/// `NFT_MSG_NEWGEN`: the end of a transaction (no table attribute).
const MSG_NEWGEN: u16 = 15;
/// A burst of notifications (a `nft -f` of many objects) overflows a small buffer.
const RECV_BUFFER: usize = 4 * 1024 * 1024;
/// `ENOBUFS`.
const ENOBUFS: i32 = 105;

/// What one notification says about our tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Not about our tables, or made by us.
    Ignore,
    /// Someone else changed our table of this family.
    Foreign(Family),
}

/// Classifies one notification: its type, the port of the socket that made the change (the
/// message header's port id), its family and its table attribute (attribute 1 for every object
/// kind: `NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, `NFTA_SET_TABLE`, …).
pub fn classify(msg_type: u16, port: u32, family: u8, table: Option<&str>) -> Notice {
    if msg_type >> 8 != SUBSYS_NFTABLES || msg_type & 0xff == MSG_NEWGEN {
        return Notice::Ignore;
    }
    if table != Some(TABLE_NAME) || writers::is_ours(port) {
        return Notice::Ignore;
    }
    match family {
        2 => Notice::Foreign(Family::V4),
        10 => Notice::Foreign(Family::V6),
        _ => Notice::Ignore,
    }
}

/// Reads notifications until the receiver goes away.
pub fn watch(events: mpsc::Sender<Event>) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.add_membership(GROUP_NFTABLES)?;
    if let Err(e) = socket.set_rx_buf_sz(RECV_BUFFER) {
        debug!(error = %e, "cannot enlarge the notification buffer");
    }
    let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
    loop {
        buf.clear();
        let mut families: Vec<Family> = Vec::new();
        match socket.recv(&mut buf, 0) {
            Ok(_) => {
                for msg in messages(&buf) {
                    let table = nft_attrs(&msg)
                        .find(|a| a.kind == 1)
                        .and_then(|a| a.as_str());
                    if let Notice::Foreign(f) =
                        classify(msg.msg_type, msg.port, nft_family(&msg), table)
                        && !families.contains(&f)
                    {
                        families.push(f);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(ENOBUFS) => {
                warn!("nf_tables notifications were lost; checking our tables");
                families = Family::ALL.to_vec();
            }
            Err(e) => return Err(e),
        }
        if families.is_empty() {
            continue;
        }
        debug!(?families, "our tables were changed by someone else");
        if events.send(Event::KernelChanged(families)).is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEWRULE: u16 = (10 << 8) | 6;

    #[test]
    fn only_foreign_changes_to_our_tables_count() {
        writers::register(4_200_000_001);
        assert_eq!(
            classify(NEWRULE, 4_200_000_002, 2, Some(TABLE_NAME)),
            Notice::Foreign(Family::V4)
        );
        assert_eq!(
            classify((10 << 8) | 2, 77, 10, Some(TABLE_NAME)),
            Notice::Foreign(Family::V6)
        );
        assert_eq!(
            classify(NEWRULE, 4_200_000_001, 2, Some(TABLE_NAME)),
            Notice::Ignore,
            "our own commit"
        );
        assert_eq!(classify(NEWRULE, 5, 2, Some("filter")), Notice::Ignore);
        assert_eq!(
            classify(NEWRULE, 5, 2, Some("kube-nft-proxy-trace")),
            Notice::Ignore
        );
        assert_eq!(classify((10 << 8) | 15, 5, 0, None), Notice::Ignore);
        assert_eq!(
            classify((1 << 8) | 2, 5, 2, Some(TABLE_NAME)),
            Notice::Ignore,
            "not nf_tables"
        );
        assert_eq!(classify(NEWRULE, 5, 1, Some(TABLE_NAME)), Notice::Ignore);
    }
}
