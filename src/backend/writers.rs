//! The netlink port ids this process writes nf_tables with: the netlink backend's sockets, and the
//! `nft` processes the nft backend starts (an autobound netlink socket takes its process id as
//! port id). Every nf_tables change notification names the port of the socket that made the
//! change, so the kernel-change monitor can tell our own commits from someone else's.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Ports remembered; old `nft` processes fall out (their port ids may be reused).
const REMEMBERED: usize = 64;

static PORTS: Mutex<VecDeque<u32>> = Mutex::new(VecDeque::new());

/// Records a port this process writes with.
pub fn register(port: u32) {
    if let Ok(mut ports) = PORTS.lock() {
        if ports.contains(&port) {
            return;
        }
        if ports.len() == REMEMBERED {
            ports.pop_front();
        }
        ports.push_back(port);
    }
}

/// Whether `port` is one of ours.
pub fn is_ours(port: u32) -> bool {
    PORTS.lock().is_ok_and(|ports| ports.contains(&port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_recent_ports() {
        register(4_000_000_001);
        assert!(is_ours(4_000_000_001));
        assert!(!is_ours(4_000_000_002));
        for p in 0..REMEMBERED as u32 {
            register(4_100_000_000 + p);
        }
        assert!(!is_ours(4_000_000_001), "the oldest is forgotten");
        assert!(is_ours(4_100_000_000 + REMEMBERED as u32 - 1));
    }
}
