//! `kube-nft-proxy trace`: follows the next packet of one flow through the kernel. It subscribes
//! to nf_tables trace events, arms tracing for the flow ([`arm`]), waits for a matching packet,
//! disarms, and prints the packet's path: every chain and rule it met in the proxy's table with
//! the verdicts, the endpoint the DNAT chose, and whether it was masqueraded. Netlink only; no
//! `nft` binary.

pub mod arm;
pub mod event;

use std::collections::HashMap;
use std::fmt::Write;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netlink_sys::{Socket, constants::NETLINK_NETFILTER};

use crate::backend::netlink::read;
use crate::backend::netlink::socket::NfSocket;
use crate::backend::netlink::wire::{Msg, messages, nft_attrs};
use crate::model::{Family, Protocol};
use crate::ruleset::TABLE_NAME;
use event::{Step, TraceEvent, Verdict};

/// `NFNLGRP_NFTRACE`.
const GROUP_NFTRACE: u32 = 9;
/// A packet's trace is complete once no event of it came for this long.
const QUIET: Duration = Duration::from_millis(300);

/// Why a trace could not run.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("--src {src} and --dst {dst} are not of the same IP family")]
    MixedFamilies { src: IpAddr, dst: SocketAddr },
    #[error("--proto {0:?}: use tcp, udp or sctp")]
    Protocol(String),
    #[error("netlink: {0}")]
    Netlink(#[from] io::Error),
}

/// The flow to trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: SocketAddr,
    pub protocol: Protocol,
}

impl Flow {
    pub fn new(src: IpAddr, dst: SocketAddr, protocol: &str) -> Result<Flow, TraceError> {
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(TraceError::MixedFamilies { src, dst });
        }
        let protocol = Protocol::from_nft(&protocol.to_ascii_lowercase())
            .ok_or_else(|| TraceError::Protocol(protocol.to_string()))?;
        Ok(Flow { src, dst, protocol })
    }

    pub fn family(&self) -> Family {
        Family::of(&self.dst.ip())
    }
}

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} → {}", self.protocol, self.src, self.dst)
    }
}

/// Arms tracing, waits up to `timeout` for a packet of `flow`, disarms, and returns its path
/// (`None`: no packet came). Ctrl-C or SIGTERM end the wait early; the trace is disarmed then too.
pub fn trace(flow: &Flow, timeout: Duration) -> Result<Option<String>, TraceError> {
    let mut events = Socket::new(NETLINK_NETFILTER)?;
    events.bind_auto()?;
    events.add_membership(GROUP_NFTRACE)?;
    events.set_non_blocking(true)?;
    let mut control = NfSocket::open()?;
    // Subscribed before arming: no event can be missed.
    arm::arm(&mut control, flow)?;
    let stop = stop_on_signal();
    let collected = collect(&mut events, timeout, &stop);
    let disarmed = arm::disarm(&mut control, flow.family());
    let trace = collected?;
    disarmed?;
    if trace.is_empty() {
        return Ok(None);
    }
    let positions = rule_positions(&mut control, flow.family())?;
    Ok(Some(describe(flow, &trace, &positions)))
}

/// A flag set by SIGINT or SIGTERM (a helper thread waits for them).
fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    if let Ok(runtime) = runtime {
        std::thread::spawn(move || {
            runtime.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                flag.store(true, Ordering::SeqCst);
            });
        });
    }
    stop
}

/// The events of the first traced packet, in order.
fn collect(
    socket: &mut Socket,
    timeout: Duration,
    stop: &AtomicBool,
) -> io::Result<Vec<TraceEvent>> {
    let deadline = Instant::now() + timeout;
    let mut first: Option<u32> = None;
    let mut last_event = Instant::now();
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        let now = Instant::now();
        if stop.load(Ordering::SeqCst) || now > deadline {
            return Ok(out);
        }
        if first.is_some() && now.duration_since(last_event) > QUIET {
            return Ok(out);
        }
        buf.clear();
        match socket.recv(&mut buf, 0) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Events were dropped (a busy node): what arrived is still shown.
            Err(e) if e.raw_os_error() == Some(105) => continue,
            Err(e) => return Err(e),
        }
        for msg in messages(&buf) {
            let Some(ev) = event::decode(&msg) else {
                continue;
            };
            let id = *first.get_or_insert(ev.id);
            if ev.id == id {
                last_event = Instant::now();
                out.push(ev);
            }
        }
    }
}

/// Handle → (chain, 1-based position) for the rules of the proxy's table.
fn rule_positions(
    socket: &mut NfSocket,
    family: Family,
) -> io::Result<HashMap<u64, (String, usize)>> {
    let mut positions = HashMap::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let result = read::dump(socket, Msg::GetRule, family, &[(1, TABLE_NAME)], |m| {
        let mut chain = None;
        let mut handle = None;
        for a in nft_attrs(m) {
            match a.kind {
                2 => chain = a.as_str().map(str::to_string),
                3 => handle = a.as_u64(),
                _ => {}
            }
        }
        if let (Some(chain), Some(handle)) = (chain, handle) {
            let n = counts.entry(chain.clone()).or_insert(0);
            *n += 1;
            positions.insert(handle, (chain, *n));
        }
    });
    match result {
        Ok(()) => Ok(positions),
        // No table of ours: the path is still shown, without rule positions.
        Err(e) if e.raw_os_error() == Some(2) => Ok(positions),
        Err(e) => Err(e),
    }
}

/// The path of one packet as text.
pub fn describe(
    flow: &Flow,
    events: &[TraceEvent],
    positions: &HashMap<u64, (String, usize)>,
) -> String {
    let mut out = String::new();
    let id = events.first().map_or(0, |e| e.id);
    let _ = writeln!(out, "packet {flow} (trace id {id:08x})");
    let original = events.iter().find_map(|e| e.packet);
    let mut translated: Option<SocketAddr> = None;
    let mut masqueraded = false;
    for ev in events {
        if ev.table == arm::TRACE_TABLE {
            continue;
        }
        if let (Some((_, dst)), Some((_, first_dst))) = (ev.packet, original)
            && dst != first_dst
            && translated != Some(dst)
        {
            translated = Some(dst);
            let _ = writeln!(out, "  -- destination is now {dst} (DNAT)");
        }
        let ours = ev.table == TABLE_NAME;
        let table = if ours {
            String::new()
        } else {
            format!("[table {}] ", ev.table)
        };
        let place = match (ev.step, ev.handle.and_then(|h| positions.get(&h))) {
            // The kernel reports the end of a chain as a rule with handle 0.
            (Step::Rule, _) if ev.handle.unwrap_or(0) == 0 => {
                "end of chain (no rule decided)".to_string()
            }
            (Step::Rule, Some((_, n))) => format!("rule {n} (handle {})", ev.handle.unwrap_or(0)),
            (Step::Rule, None) => format!("rule handle {}", ev.handle.unwrap_or(0)),
            (Step::Return, _) => "end of chain, back to the caller".to_string(),
            (Step::Policy, _) => "chain policy".to_string(),
            (Step::Other(n), _) => format!("event type {n}"),
        };
        let verdict = ev
            .verdict
            .as_ref()
            .map(|v| format!(": {v}"))
            .unwrap_or_default();
        let _ = writeln!(out, "  {table}{:<48} {place}{verdict}", ev.chain);
        if ours && ev.chain == "masquerading" && ev.verdict == Some(Verdict::Accept) {
            masqueraded = true;
        }
    }
    let _ = match translated {
        Some(dst) => writeln!(out, "endpoint chosen: {dst}"),
        None => writeln!(
            out,
            "endpoint chosen: none seen (not DNATed by this node, or the packet was rejected or dropped)"
        ),
    };
    let dropped = events
        .iter()
        .any(|e| matches!(e.verdict, Some(Verdict::Drop)));
    if dropped {
        let _ = writeln!(out, "dropped or rejected: yes");
    }
    let _ = writeln!(
        out,
        "masqueraded: {}",
        if masqueraded { "yes" } else { "no" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(chain: &str, handle: u64, verdict: Verdict, dst: &str) -> TraceEvent {
        TraceEvent {
            id: 1,
            family: 2,
            table: TABLE_NAME.into(),
            chain: chain.into(),
            handle: Some(handle),
            step: Step::Rule,
            verdict: Some(verdict),
            packet: Some(("10.244.1.5:40000".parse().unwrap(), dst.parse().unwrap())),
            mark: None,
        }
    }

    #[test]
    fn the_path_names_rules_the_endpoint_and_masquerading() {
        let flow = Flow::new(
            "10.244.1.5".parse().unwrap(),
            "10.96.0.10:80".parse().unwrap(),
            "tcp",
        )
        .unwrap();
        let events = [
            ev(
                "nat-prerouting",
                4,
                Verdict::Jump("services".into()),
                "10.96.0.10:80",
            ),
            ev(
                "services",
                9,
                Verdict::Goto("service-ns/web/tcp/http".into()),
                "10.96.0.10:80",
            ),
            ev(
                "service-ns/web/tcp/http",
                21,
                Verdict::Accept,
                "10.96.0.10:80",
            ),
            ev(
                "filter-forward",
                5,
                Verdict::Jump("service-endpoints-check".into()),
                "10.244.2.12:8080",
            ),
            ev("masquerading", 30, Verdict::Accept, "10.244.2.12:8080"),
        ];
        let positions: HashMap<u64, (String, usize)> = [
            (4, ("nat-prerouting".to_string(), 1)),
            (21, ("service-ns/web/tcp/http".to_string(), 2)),
        ]
        .into();
        let text = describe(&flow, &events, &positions);
        assert!(text.contains("rule 2 (handle 21): accept"), "{text}");
        assert!(
            text.contains("rule handle 9: goto service-ns/web/tcp/http"),
            "{text}"
        );
        assert!(text.contains("endpoint chosen: 10.244.2.12:8080"), "{text}");
        assert!(text.contains("masqueraded: yes"), "{text}");
    }

    #[test]
    fn flows_need_one_family_and_a_known_protocol() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(Flow::new(v4, "[fd00::1]:80".parse().unwrap(), "tcp").is_err());
        assert!(Flow::new(v4, "10.0.0.2:80".parse().unwrap(), "icmp").is_err());
        assert_eq!(
            Flow::new(v4, "10.0.0.2:80".parse().unwrap(), "UDP")
                .unwrap()
                .protocol,
            Protocol::Udp
        );
    }
}
