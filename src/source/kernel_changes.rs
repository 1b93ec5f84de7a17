//! Notices when someone else changes our tables: subscribes to nf_tables change notifications
//! (multicast group `NFNLGRP_NFTABLES`) and, for any change to a table named `kube-nft-proxy`
//! made through a netlink socket that is not ours (another tool deleting the table, flushing a
//! chain, `nft flush ruleset`), tells the reconciler at once what was damaged so it can restore
//! the ruleset: a deleted table is rebuilt and a changed or deleted chain rewritten without
//! reading the kernel; anything else makes it read the kernel again. No polling: the kernel
//! announces every committed change. Other tables are never looked at. If notifications were
//! lost (the socket overflowed), it asks for a full check all the same.

use std::io;
use std::sync::mpsc;

use netlink_sys::{Socket, constants::NETLINK_NETFILTER};
use tracing::{debug, warn};

use super::Event;
use crate::backend::netlink::wire::{Message, SUBSYS_NFTABLES, messages, nft_attrs, nft_family};
use crate::backend::writers;
use crate::model::Family;
use crate::ruleset::TABLE_NAME;

/// `NFNLGRP_NFTABLES`.
const GROUP_NFTABLES: u32 = 7;
/// `NFT_MSG_NEWGEN`: the end of a transaction (no table attribute).
const MSG_NEWGEN: u16 = 15;
/// `NFT_MSG_DELTABLE`, `NFT_MSG_DELCHAIN`, `NFT_MSG_NEWRULE`, `NFT_MSG_DELRULE`.
const MSG_DELTABLE: u16 = 2;
const MSG_DELCHAIN: u16 = 5;
const MSG_NEWRULE: u16 = 6;
const MSG_DELRULE: u16 = 8;
/// A burst of notifications (a `nft -f` of many objects) overflows a small buffer.
const RECV_BUFFER: usize = 4 * 1024 * 1024;
/// `ENOBUFS`.
const ENOBUFS: i32 = 105;

/// What someone else did to one of our tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The table is gone (deleted, or `nft flush ruleset`).
    TableDeleted,
    /// Rules of this chain were added or deleted (also a flush).
    ChainChanged(String),
    /// This chain was deleted.
    ChainDeleted(String),
    /// Anything else (sets, elements, new chains, the table's flags): read the kernel again.
    Other,
}

/// What one notification says about our tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Not about our tables, or made by us.
    Ignore,
    /// Someone else changed our table of this family.
    Foreign(Family, Damage),
}

/// Classifies one notification: its type, the port of the socket that made the change (the
/// message header's port id), its family, its table attribute (attribute 1 for every object
/// kind: `NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, `NFTA_SET_TABLE`, …) and, for
/// rules and chains, the chain's name.
pub fn classify(
    msg_type: u16,
    port: u32,
    family: u8,
    table: Option<&str>,
    chain: Option<&str>,
) -> Notice {
    if msg_type >> 8 != SUBSYS_NFTABLES || msg_type & 0xff == MSG_NEWGEN {
        return Notice::Ignore;
    }
    if table != Some(TABLE_NAME) || writers::is_ours(port) {
        return Notice::Ignore;
    }
    let family = match family {
        2 => Family::V4,
        10 => Family::V6,
        _ => return Notice::Ignore,
    };
    let damage = match (msg_type & 0xff, chain) {
        (MSG_DELTABLE, _) => Damage::TableDeleted,
        (MSG_NEWRULE | MSG_DELRULE, Some(c)) => Damage::ChainChanged(c.to_string()),
        (MSG_DELCHAIN, Some(c)) => Damage::ChainDeleted(c.to_string()),
        _ => Damage::Other,
    };
    Notice::Foreign(family, damage)
}

/// The chain a rule or chain notification is about (`NFTA_RULE_CHAIN`, `NFTA_CHAIN_NAME`).
fn chain_of(msg: &Message<'_>) -> Option<String> {
    let kind = match msg.msg_type & 0xff {
        MSG_NEWRULE | MSG_DELRULE => 2,
        MSG_DELCHAIN => 3,
        _ => return None,
    };
    nft_attrs(msg)
        .find(|a| a.kind == kind)
        .and_then(|a| a.as_str())
        .map(str::to_string)
}

/// Adds `damage` to what is known of `family`, in the order the kernel announced it. A deleted
/// table supersedes everything before it (the deletion itself announces every rule, set and
/// chain it removes first): the table is rebuilt. Anything announced after a deletion means
/// someone made the table again, and `Other` (read it all) supersedes everything.
pub fn merge(all: &mut Vec<(Family, Damage)>, family: Family, damage: Damage) {
    if damage == Damage::TableDeleted {
        all.retain(|(f, _)| *f != family);
        all.push((family, damage));
        return;
    }
    let has =
        |all: &Vec<(Family, Damage)>, d: &Damage| all.iter().any(|(f, x)| *f == family && x == d);
    let damage = if has(all, &Damage::TableDeleted) {
        Damage::Other
    } else {
        damage
    };
    if has(all, &Damage::Other) || has(all, &damage) {
        return;
    }
    if damage == Damage::Other {
        all.retain(|(f, _)| *f != family);
    }
    all.push((family, damage));
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
    // What one transaction did, gathered until its end (`NEWGEN`): a large change is announced
    // over many datagrams, and a deleted table announces its rules and chains first.
    let mut damage: Vec<(Family, Damage)> = Vec::new();
    loop {
        buf.clear();
        let mut ended = false;
        match socket.recv(&mut buf, 0) {
            Ok(_) => {
                for msg in messages(&buf) {
                    if msg.msg_type == (SUBSYS_NFTABLES << 8) | MSG_NEWGEN {
                        ended = true;
                        continue;
                    }
                    let table = nft_attrs(&msg)
                        .find(|a| a.kind == 1)
                        .and_then(|a| a.as_str());
                    let chain = chain_of(&msg);
                    let notice = classify(
                        msg.msg_type,
                        msg.port,
                        nft_family(&msg),
                        table,
                        chain.as_deref(),
                    );
                    if let Notice::Foreign(f, d) = notice {
                        merge(&mut damage, f, d);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(ENOBUFS) => {
                warn!("nf_tables notifications were lost; checking our tables");
                damage = Family::ALL.iter().map(|f| (*f, Damage::Other)).collect();
                ended = true;
            }
            Err(e) => return Err(e),
        }
        if !ended || damage.is_empty() {
            continue;
        }
        debug!(?damage, "our tables were changed by someone else");
        if events
            .send(Event::KernelChanged(std::mem::take(&mut damage)))
            .is_err()
        {
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
        let ours = Some(TABLE_NAME);
        assert_eq!(
            classify(NEWRULE, 4_200_000_002, 2, ours, Some("services")),
            Notice::Foreign(Family::V4, Damage::ChainChanged("services".into()))
        );
        assert_eq!(
            classify((10 << 8) | 2, 77, 10, ours, None),
            Notice::Foreign(Family::V6, Damage::TableDeleted)
        );
        assert_eq!(
            classify((10 << 8) | 5, 77, 10, ours, Some("x")),
            Notice::Foreign(Family::V6, Damage::ChainDeleted("x".into()))
        );
        assert_eq!(
            classify((10 << 8) | 14, 77, 2, ours, None),
            Notice::Foreign(Family::V4, Damage::Other),
            "elements"
        );
        assert_eq!(
            classify(NEWRULE, 4_200_000_001, 2, ours, Some("services")),
            Notice::Ignore,
            "our own commit"
        );
        assert_eq!(
            classify(NEWRULE, 5, 2, Some("filter"), None),
            Notice::Ignore
        );
        assert_eq!(
            classify(NEWRULE, 5, 2, Some("kube-nft-proxy-trace"), None),
            Notice::Ignore
        );
        assert_eq!(classify((10 << 8) | 15, 5, 0, None, None), Notice::Ignore);
        assert_eq!(
            classify((1 << 8) | 2, 5, 2, ours, None),
            Notice::Ignore,
            "not nf_tables"
        );
        assert_eq!(classify(NEWRULE, 5, 1, ours, None), Notice::Ignore);
    }

    #[test]
    fn a_deleted_table_supersedes_what_came_before_and_anything_after_reads_everything() {
        let mut all = Vec::new();
        merge(&mut all, Family::V4, Damage::ChainChanged("a".into()));
        merge(&mut all, Family::V4, Damage::ChainChanged("a".into()));
        merge(&mut all, Family::V6, Damage::ChainDeleted("b".into()));
        assert_eq!(all.len(), 2);
        // A deletion announces its sets (Other) and chains before the table itself.
        merge(&mut all, Family::V4, Damage::Other);
        merge(&mut all, Family::V4, Damage::TableDeleted);
        assert_eq!(
            all,
            [
                (Family::V6, Damage::ChainDeleted("b".into())),
                (Family::V4, Damage::TableDeleted)
            ]
        );
        // Something done to the table after it was deleted: someone made it again.
        merge(&mut all, Family::V4, Damage::ChainChanged("c".into()));
        assert_eq!(
            all,
            [
                (Family::V6, Damage::ChainDeleted("b".into())),
                (Family::V4, Damage::Other)
            ]
        );
        merge(&mut all, Family::V6, Damage::Other);
        merge(&mut all, Family::V6, Damage::ChainChanged("d".into()));
        assert_eq!(
            all,
            [(Family::V4, Damage::Other), (Family::V6, Damage::Other)]
        );
    }
}
