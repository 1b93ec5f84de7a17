//! Packet-flow rows in the style of upstream's proxier tests: from a source, to a destination,
//! the expected outcome — which backends answer and whether they saw a masqueraded source, or a
//! REJECT, or a DROP. Every row is checked with real connections; all failures are reported at
//! once.

use std::collections::BTreeSet;

use crate::harness::{Cluster, From, Reply};

/// What a row expects.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Exactly these backends answer (over enough attempts), masqueraded or not.
    Reach(Vec<&'static str>, Masq),
    /// Refused at once (ICMP port unreachable; EPERM for the node's own UDP sends).
    Reject,
    /// No answer.
    Drop,
    /// Not handled by the proxy: no backend answers.
    Unhandled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Masq {
    Yes,
    No,
}

/// One row of a table.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub from: From,
    /// Source address to bind (`ip:port`), e.g. a client outside the source ranges.
    pub bind: Option<String>,
    pub proto: &'static str,
    pub to: String,
    pub expect: Expect,
}

impl Row {
    pub fn new(name: impl Into<String>, from: From, to: impl Into<String>, expect: Expect) -> Row {
        Row {
            name: name.into(),
            from,
            bind: None,
            proto: "tcp",
            to: to.into(),
            expect,
        }
    }

    pub fn udp(mut self) -> Row {
        self.proto = "udp";
        self
    }

    pub fn bind(mut self, bind: impl Into<String>) -> Row {
        self.bind = Some(bind.into());
        self
    }
}

pub fn reach(backends: &[&'static str], masq: Masq) -> Expect {
    Expect::Reach(backends.to_vec(), masq)
}

/// Checks every row; panics with all failures.
pub fn check(c: &Cluster, rows: &[Row]) {
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|row| check_row(c, row).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

fn check_row(c: &Cluster, row: &Row) -> Result<(), String> {
    let fail = |what: String| {
        Err(format!(
            "  {} ({:?} -> {} {}): {what}",
            row.name, row.from, row.proto, row.to
        ))
    };
    let ipv6 = row.to.starts_with('[');
    let connect = |count, timeout| {
        c.connect_from(
            row.from,
            row.bind.as_deref(),
            row.proto,
            &row.to,
            count,
            timeout,
        )
    };
    match &row.expect {
        Expect::Reach(backends, masq) => {
            let count = if backends.len() > 1 {
                24 * backends.len() as u32
            } else {
                4
            };
            let replies = connect(count, 2000);
            let mut seen = BTreeSet::new();
            for reply in &replies {
                let Reply::Ok { name, peer } = reply else {
                    return fail(format!("expected {backends:?}, got {reply:?}"));
                };
                let Some(pod) = c.pods.iter().find(|p| p.name == *name) else {
                    return fail(format!("answered by unknown {name}"));
                };
                let gateway = if ipv6 {
                    pod.gw6.as_str()
                } else {
                    pod.gw4.as_str()
                };
                let masqueraded = peer == gateway;
                if masqueraded != (*masq == Masq::Yes) {
                    return fail(format!("{name} saw {peer}: expected masquerade {masq:?}"));
                }
                seen.insert(name.clone());
            }
            let want: BTreeSet<String> = backends.iter().map(|b| b.to_string()).collect();
            if seen != want {
                return fail(format!("reached {seen:?}, expected {want:?}"));
            }
            Ok(())
        }
        Expect::Reject => {
            for reply in connect(2, 3000) {
                match reply {
                    Reply::Refused { ms } | Reply::Denied { ms } if ms < 1500 => {}
                    other => return fail(format!("expected REJECT, got {other:?}")),
                }
            }
            Ok(())
        }
        Expect::Drop => {
            for reply in connect(2, 300) {
                if reply != Reply::Timeout {
                    return fail(format!("expected DROP, got {reply:?}"));
                }
            }
            Ok(())
        }
        Expect::Unhandled => {
            for reply in connect(1, 300) {
                if let Reply::Ok { name, .. } = reply {
                    return fail(format!("expected no backend, reached {name}"));
                }
            }
            Ok(())
        }
    }
}
