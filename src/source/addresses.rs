//! The node's local addresses, from rtnetlink: dumped at start and again whenever the kernel
//! announces an address change, and sent to the reconciler when they differ. They decide which
//! addresses accept NodePorts (`--nodeport-addresses`) and where health-check servers listen.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::sync::mpsc;
use std::time::Duration;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use tracing::{debug, warn};

use super::Event;
use crate::netlink;

/// rtnetlink multicast groups of address changes.
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
/// A burst of changes (an interface coming up) is read as one.
const SETTLE: Duration = Duration::from_millis(50);

/// Every address of the current network namespace.
pub fn dump(socket: &Socket, seq: u32) -> io::Result<BTreeSet<IpAddr>> {
    let mut addresses = BTreeSet::new();
    netlink::request(
        socket,
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        true,
        seq,
        |reply| {
            if let RouteNetlinkMessage::NewAddress(a) = reply {
                // IFA_LOCAL is the address on point-to-point links; IPv6 only has IFA_ADDRESS.
                let local = a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let address = a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                });
                if let Some(ip) = local.or(address) {
                    addresses.insert(ip);
                }
            }
        },
    )?;
    Ok(addresses)
}

/// The current addresses, once.
pub fn local_addresses() -> io::Result<Vec<IpAddr>> {
    let socket = netlink::open(NETLINK_ROUTE)?;
    Ok(dump(&socket, 1)?.into_iter().collect())
}

/// Sends the current addresses, then every change, until the receiver goes away.
pub fn watch(events: mpsc::Sender<Event>) -> io::Result<()> {
    // Subscribe before the first dump so no change falls in between.
    let mut changes = Socket::new(NETLINK_ROUTE)?;
    changes.bind(&SocketAddr::new(0, 0))?;
    changes.add_membership(RTNLGRP_IPV4_IFADDR)?;
    changes.add_membership(RTNLGRP_IPV6_IFADDR)?;
    changes.set_non_blocking(false)?;
    let dumps = netlink::open(NETLINK_ROUTE)?;
    let mut seq = 1;
    let mut known = dump(&dumps, seq)?;
    if events
        .send(Event::LocalAddresses(known.iter().copied().collect()))
        .is_err()
    {
        return Ok(());
    }
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        match changes.recv(&mut buf, 0) {
            Ok(_) => {}
            // Notifications were dropped: the dump below catches up.
            Err(e) if e.raw_os_error() == Some(netlink::ENOBUFS) => {}
            Err(e) => return Err(e),
        }
        std::thread::sleep(SETTLE);
        seq = seq.wrapping_add(1);
        match dump(&dumps, seq) {
            Ok(now) if now != known => {
                debug!(addresses = now.len(), "local addresses changed");
                known = now;
                if events
                    .send(Event::LocalAddresses(known.iter().copied().collect()))
                    .is_err()
                {
                    return Ok(());
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read local addresses"),
        }
    }
}
