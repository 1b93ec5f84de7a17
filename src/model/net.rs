//! Network value types that may reach rule text: IP family, L4 protocol and CIDR.
//!
//! Parsing is lenient the way the API server's is (IPv4 octets with leading zeros are read as
//! decimal, `203.0.113.000/025` is `203.0.113.0/25`) and the result is always normalised, so the
//! text we write is canonical and never contains anything but address syntax.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP family: one nftables table each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The nftables table family keyword (`ip` or `ip6`), also the payload protocol name.
    pub fn nft_name(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// The nftables address data type (`ipv4_addr` or `ipv6_addr`).
    pub fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    /// The Kubernetes spelling (`IPv4` / `IPv6`), used in `ipFamilies` and `addressType`.
    pub fn k8s_name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// Index for per-family arrays.
    pub fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.k8s_name())
    }
}

/// A layer-4 protocol a Service port can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the Kubernetes spelling; a missing protocol means TCP.
    pub fn from_k8s(value: Option<&str>) -> Result<Protocol, String> {
        match value {
            None | Some("TCP") => Ok(Protocol::Tcp),
            Some("UDP") => Ok(Protocol::Udp),
            Some("SCTP") => Ok(Protocol::Sctp),
            Some(other) => Err(format!("unsupported protocol {:?}", truncate(other))),
        }
    }

    /// The nftables keyword (`tcp`, `udp`, `sctp`).
    pub fn nft_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The IP protocol number.
    pub fn ip_number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// Parses the nftables keyword.
    pub fn from_nft(value: &str) -> Option<Protocol> {
        match value {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.nft_name())
    }
}

/// An address prefix, always stored with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// Builds a prefix, clearing host bits; `None` when `len` is too long for the family.
    pub fn new(addr: IpAddr, len: u8) -> Option<Cidr> {
        match addr {
            IpAddr::V4(a) if len <= 32 => {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                Some(Cidr {
                    addr: IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)),
                    len,
                })
            }
            IpAddr::V6(a) if len <= 128 => {
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                Some(Cidr {
                    addr: IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)),
                    len,
                })
            }
            _ => None,
        }
    }

    /// Parses `addr/len` leniently (see the module doc); surrounding spaces are ignored.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let trimmed = text.trim();
        let (addr, len) = trimmed
            .split_once('/')
            .ok_or_else(|| format!("invalid CIDR {:?}: missing /prefix", truncate(text)))?;
        let addr = parse_ip(addr).map_err(|e| format!("invalid CIDR {:?}: {e}", truncate(text)))?;
        let len = parse_decimal(len, 3)
            .and_then(|n| u8::try_from(n).ok())
            .and_then(|n| Cidr::new(addr, n))
            .ok_or_else(|| format!("invalid CIDR {:?}: bad prefix length", truncate(text)))?;
        Ok(len)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    /// Whether `ip` lies inside this prefix.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        Cidr::new(*ip, self.len).is_some_and(|c| c.addr == self.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Parses an IP address the way the API server accepts it: IPv4 octets may carry leading zeros
/// (read as decimal, so `172.30.0.041` is `172.30.0.41`); IPv6 uses the standard syntax.
/// IPv4-mapped IPv6 addresses are refused because their family is ambiguous.
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    if text.contains(':') {
        let v6: Ipv6Addr = text
            .parse()
            .map_err(|_| format!("invalid IP address {:?}", truncate(text)))?;
        if v6.to_ipv4_mapped().is_some() {
            return Err(format!(
                "IPv4-mapped IPv6 address {:?} is not supported",
                truncate(text)
            ));
        }
        return Ok(IpAddr::V6(v6));
    }
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        *octet = parts
            .next()
            .and_then(|p| parse_decimal(p, 3))
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| format!("invalid IP address {:?}", truncate(text)))?;
    }
    if parts.next().is_some() {
        return Err(format!("invalid IP address {:?}", truncate(text)));
    }
    Ok(IpAddr::V4(Ipv4Addr::from(octets)))
}

/// A decimal number of 1..=`max_digits` ASCII digits.
fn parse_decimal(text: &str, max_digits: usize) -> Option<u32> {
    if text.is_empty() || text.len() > max_digits || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Shortens hostile input before it is echoed into a log line or error.
pub fn truncate(text: &str) -> String {
    const MAX: usize = 64;
    let mut s = printable(&text.chars().take(MAX).collect::<String>());
    if text.chars().nth(MAX).is_some() {
        s.push('…');
    }
    s
}

/// `text` with control characters and line breaks (`\n`, `\u{85}`, `\u{2028}`, …) written as
/// escapes, so object text in a log line cannot start a forged line or drive a terminal
/// (tracing's text format escapes ANSI sequences, not line breaks).
pub fn printable(text: &str) -> String {
    let unsafe_char = |c: char| c.is_control() || (c.is_whitespace() && c != ' ');
    if !text.chars().any(unsafe_char) {
        return text.to_string();
    }
    let mut s = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            s.extend(c.escape_default());
        } else {
            s.push(c);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_text_in_logs_has_no_control_characters() {
        assert_eq!(truncate("web\nINFO forged"), "web\\nINFO forged");
        assert_eq!(printable("a\u{1b}[31m"), "a\\u{1b}[31m");
        assert_eq!(printable("a\u{2028}b"), "a\\u{2028}b");
        assert_eq!(truncate(&"x".repeat(70)).chars().count(), 65);
    }

    #[test]
    fn ipv4_leading_zeros_are_decimal() {
        assert_eq!(parse_ip("172.30.0.041").unwrap().to_string(), "172.30.0.41");
        assert_eq!(parse_ip("010.0.0.1").unwrap().to_string(), "10.0.0.1");
    }

    #[test]
    fn invalid_addresses_are_refused() {
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "1.2.3.4 ",
            "a.b.c.d",
            "1.2.3.4;drop",
            "::ffff:1.2.3.4",
            "fd00::1 } ; flush ruleset",
        ] {
            assert!(parse_ip(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cidrs_are_normalised() {
        assert_eq!(
            Cidr::parse(" 203.0.113.000/025").unwrap().to_string(),
            "203.0.113.0/25"
        );
        assert_eq!(Cidr::parse("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            Cidr::parse("fd00:10::5/64").unwrap().to_string(),
            "fd00:10::/64"
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0.0").is_err());
        assert!(Cidr::parse("10.0.0.0/-1").is_err());
    }

    #[test]
    fn cidr_contains() {
        let c = Cidr::parse("10.244.0.0/16").unwrap();
        assert!(c.contains(&parse_ip("10.244.3.4").unwrap()));
        assert!(!c.contains(&parse_ip("10.245.0.1").unwrap()));
        assert!(!c.contains(&parse_ip("fd00::1").unwrap()));
    }

    #[test]
    fn protocols() {
        assert_eq!(Protocol::from_k8s(None).unwrap(), Protocol::Tcp);
        assert_eq!(Protocol::from_k8s(Some("SCTP")).unwrap().nft_name(), "sctp");
        assert!(Protocol::from_k8s(Some("tcp")).is_err());
        assert!(Protocol::from_k8s(Some("ICMP")).is_err());
    }
}
