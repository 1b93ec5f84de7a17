//! Validated Kubernetes names. Namespaces, Service names and port names end up inside nftables
//! chain names and element comments, so only the API server's own syntax is accepted: lower-case
//! letters, digits and '-' (plus '.' in DNS subdomains). Nothing else can reach rule text.

use std::fmt;
use std::sync::Arc;

use super::net::truncate;

/// A DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
/// Used for namespaces, Service names and port names (a port name may also be empty).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label(Arc<str>);

impl Label {
    pub fn parse(text: &str) -> Result<Label, String> {
        if is_dns_label(text) {
            Ok(Label(Arc::from(text)))
        } else {
            Err(format!(
                "{:?} is not a valid DNS-1123 label (lower-case letters, digits and '-', at most 63)",
                truncate(text)
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
/// Used for EndpointSlice and Node names (never written into rules).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subdomain(Arc<str>);

impl Subdomain {
    pub fn parse(text: &str) -> Result<Subdomain, String> {
        if !text.is_empty() && text.len() <= 253 && text.split('.').all(is_dns_label) {
            Ok(Subdomain(Arc::from(text)))
        } else {
            Err(format!(
                "{:?} is not a valid DNS-1123 subdomain",
                truncate(text)
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Subdomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Subdomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// A port name: empty (only for single-port Services) or a DNS-1123 label.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct PortName(Option<Label>);

impl PortName {
    pub fn parse(text: Option<&str>) -> Result<PortName, String> {
        match text {
            None | Some("") => Ok(PortName(None)),
            Some(name) => Label::parse(name).map(|l| PortName(Some(l))),
        }
    }

    pub fn as_str(&self) -> &str {
        self.0.as_ref().map_or("", Label::as_str)
    }
}

impl fmt::Display for PortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A namespaced object name `namespace/name`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: Label,
    pub name: Subdomain,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// A Service's identity `namespace/name`; both parts are DNS labels, so the key is safe to use in
/// chain names.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: Label,
    pub name: Label,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for good in ["a", "web", "my-svc-2", "0abc", &"a".repeat(63)] {
            assert!(Label::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Web",
            "a_b",
            "a.b",
            "a b",
            "a;b",
            "a}",
            "a\"",
            &"a".repeat(64),
            "é",
        ] {
            assert!(Label::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subdomains() {
        assert!(Subdomain::parse("web-abc12.x").is_ok());
        assert!(Subdomain::parse("a..b").is_err());
        assert!(Subdomain::parse(&"a.".repeat(127)).is_err());
    }

    #[test]
    fn port_names() {
        assert_eq!(PortName::parse(None).unwrap().as_str(), "");
        assert_eq!(PortName::parse(Some("http")).unwrap().as_str(), "http");
        assert!(PortName::parse(Some("HTTP")).is_err());
        assert!(PortName::parse(Some("a/b")).is_err());
    }
}
