//! Decodes fuzz input bytes into Kubernetes objects (as JSON, the way manifests and the API
//! deliver them) and node settings. Every choice reads one byte; an exhausted input reads zeros,
//! and the first entry of every list is the benign one, so short inputs still build objects that
//! convert. Text fields draw from valid names (often the names used earlier in the same input, so
//! slices find their Service) or from [`HOSTILE`]: nft syntax, quotes, control characters,
//! unicode look-alikes, over-long names, addresses written to confuse parsers.

use serde_json::{Map, Value, json};

/// Strings crafted to break out of an nft name, comment, address or statement, or to confuse a
/// parser. Each is tried in every text field.
pub const HOSTILE: &[&str] = &[
    "",
    " ",
    "; flush ruleset;",
    "\"; flush ruleset; \"",
    "web } ; flush ruleset",
    "web\nflush ruleset",
    "web\r\nadd rule ip kube-nft-proxy services accept",
    "}",
    "{",
    "\"",
    "'",
    "\\",
    "\\\"",
    "`",
    "#",
    "web#x",
    "# flush ruleset",
    "@service-ips",
    "@cluster-ips",
    "$family",
    "$cluster_ip",
    "${jndi:ldap://x}",
    "%s%n%x",
    "web;drop",
    "web drop",
    "web\tdrop",
    "web\u{0}",
    "web\u{7f}",
    "\u{202e}bew",
    "w\u{200b}eb",
    "ｗｅｂ",
    "wéb",
    "\u{85}web",
    "web\u{2028}flush ruleset",
    "\u{feff}web",
    "a/b",
    "../../etc",
    "web/tcp/http",
    "web:80",
    "web.",
    ".web",
    "-web",
    "web-",
    "WEB",
    "web_1",
    "web..x",
    "xn--bcher-kva",
    "kube-nft-proxy",
    "service-ips",
    "reject-chain",
    "mark-for-masquerade",
    "services",
    "knp:0000000000000000",
    "None",
    "null",
    "true",
    "0",
    "-1",
    "TCP",
    "tcp",
    "ICMP",
    "Local",
    "ClientIP",
    "IPv4",
    "FQDN",
    "ExternalName",
    "add table ip kube-nft-proxy",
    "flush ruleset",
    "10.0.0.1 } ; add rule ip kube-nft-proxy services accept",
    "10.0.0.1; drop",
    "10.0.0.1 counter",
    "10.0.0.1\n",
    " 10.0.0.1",
    "10.0.0.1 ",
    "::ffff:10.0.0.1",
    "::ffff:a00:1",
    "::10.0.0.1",
    "010.000.000.001",
    "10.0.0.01",
    "0010.0.0.1",
    "0x0a.0.0.1",
    "10.0.0.1/32",
    "10.0.0.0/8",
    "10.0.0.0/040",
    "10.0.0.0/-1",
    "10.0.0.0/33",
    "fd00::1/128",
    "fd00::/129",
    "fd00::1%eth0",
    "[fd00::1]",
    "[fd00::1]:80",
    "10.0.0.1:80",
    "10.0.0.256",
    "10.0.0",
    "10.0.0.1.",
    "1e1.0.0.1",
    "::",
    "0.0.0.0",
    "255.255.255.255",
    "127.0.0.1",
    "169.254.169.254",
    "224.0.0.1",
    "fe80::1",
    "::1",
    "ff02::1",
    "FD00::1",
    "fd00:0000:0000:0000:0000:0000:0000:0001",
    "١٠.٠.٠.١",
    "2001:db8::1 . tcp . 80 : goto services",
    "2026-13-45T99:99:99Z",
    "1970-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z",
];

/// Valid DNS labels (namespaces, Service names, port names).
const LABELS: &[&str] = &[
    "web",
    "default",
    "a",
    "kube-system",
    "dns",
    "x-1",
    "0",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
];

/// Valid port names (the empty one is "unnamed").
const PORT_NAMES: &[&str] = &["http", "", "dns", "https", "p80", "a"];

/// Valid DNS subdomains (slice and node names).
const SUBDOMAINS: &[&str] = &[
    "web-1",
    "web-2",
    "node-a",
    "node-b",
    "a.b",
    "web-x7k2p",
    "x",
];

/// The node the proxy runs as, and others.
pub const NODE_NAME: &str = "node-a";
const NODES: &[&str] = &[NODE_NAME, "node-b", "node-c"];
const ZONES: &[&str] = &["z1", "z2", ""];

/// A few addresses of each family, so frontends and endpoints collide.
const IPV4: &[&str] = &[
    "10.96.0.10",
    "10.244.1.5",
    "10.244.2.6",
    "10.96.0.11",
    "192.168.1.10",
    "10.244.1.7",
    "203.0.113.5",
    "10.0.0.1",
];
const IPV6: &[&str] = &[
    "fd00:96::a",
    "fd00:244::5",
    "fd00:244::6",
    "fd00:96::b",
    "fd00:1::10",
    "2001:db8::5",
];
const CIDRS: &[&str] = &[
    "203.0.113.0/24",
    "10.0.0.0/8",
    "192.168.1.0/24",
    "0.0.0.0/0",
    "203.0.113.5/32",
    "fd00::/8",
    "2001:db8::/32",
    "::/0",
    "203.0.113.128/25",
    "203.0.113.000/025",
];

const PORTS: &[i64] = &[
    80,
    443,
    53,
    8080,
    1,
    65535,
    0,
    -1,
    65536,
    30080,
    2_147_483_647,
];
const NODE_PORTS: &[i64] = &[30080, 30081, 32767, 0, 80, 65536, -30080];
const PROTOCOLS: &[Option<&str>] = &[Some("TCP"), None, Some("UDP"), Some("SCTP")];

/// Bulk endpoint counts (at most [`MAX_BULK`] endpoints per input keeps a fuzz run fast).
const BULK: &[usize] = &[64, 256, 1000, 1001, 2048];
/// Total generated endpoints per input.
pub const MAX_BULK: usize = 4096;
/// Objects (or changes) per input.
pub const MAX_OPS: usize = 48;

/// A cursor over the fuzz input.
pub struct Source<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Source<'a> {
    pub fn new(data: &'a [u8]) -> Source<'a> {
        Source { data, pos: 0 }
    }

    /// The next byte, zero once the input is exhausted.
    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }

    pub fn exhausted(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        match n {
            0 | 1 => 0,
            2..=256 => usize::from(self.byte()) % n,
            _ => ((usize::from(self.byte()) << 8) | usize::from(self.byte())) % n,
        }
    }

    /// True with probability `n`/256 (false on an exhausted input).
    pub fn chance(&mut self, n: u8) -> bool {
        self.byte() >= 255 - n.saturating_sub(1) && n > 0
    }

    pub fn pick<T: Copy>(&mut self, list: &[T]) -> T {
        list[self.below(list.len())]
    }

    /// A hostile string: from the dictionary, a valid name with an injection appended, a long
    /// run of one character, or raw bytes read as characters.
    pub fn hostile(&mut self) -> String {
        match self.byte() % 8 {
            0..=4 => self.pick(HOSTILE).to_string(),
            5 => format!("{}{}", self.pick(LABELS), self.pick(HOSTILE)),
            6 => {
                let len = self.pick(&[64, 63, 254, 253, 256, 4096, 20_000]);
                let c = self.pick(&['a', '-', '.', '9', 'é', '{']);
                std::iter::repeat_n(c, len).collect()
            }
            _ => {
                let len = self.below(24);
                (0..len)
                    .map(|_| {
                        let b = self.byte();
                        match b {
                            0xf0..=0xff => char::from_u32(0x2000 + u32::from(b)).unwrap_or('?'),
                            _ => char::from(b & 0x7f),
                        }
                    })
                    .collect()
            }
        }
    }

    /// From `valid` most of the time (the first entry on an exhausted input), else hostile.
    pub fn text(&mut self, valid: &[&str]) -> String {
        if self.chance(40) {
            self.hostile()
        } else {
            self.pick(valid).to_string()
        }
    }

    /// A JSON value of an unexpected type, for typed-deserialisation paths.
    pub fn wrong_type(&mut self) -> Value {
        match self.byte() % 6 {
            0 => Value::Null,
            1 => json!(true),
            2 => json!(-7),
            3 => json!(1.5e300),
            4 => json!([self.hostile()]),
            _ => json!({ self.hostile(): self.hostile() }),
        }
    }

    /// An IPv4 or IPv6 address from the pools, or a hostile one.
    pub fn ip(&mut self, v6: bool) -> String {
        if self.chance(40) {
            self.hostile()
        } else if v6 {
            self.pick(IPV6).to_string()
        } else {
            self.pick(IPV4).to_string()
        }
    }
}

/// Names used so far, so later objects refer to earlier ones.
#[derive(Default)]
pub struct History {
    /// (namespace, name, port names, IPv6 first).
    services: Vec<(String, String, Vec<String>, bool)>,
    /// Every object id emitted: (kind, namespace, name).
    pub ids: Vec<(&'static str, String, String)>,
    /// Endpoints generated so far (bounded by [`MAX_BULK`]).
    endpoints: usize,
}

/// One decoded step.
pub enum Op {
    /// An object to upsert.
    Object(Value),
    /// Delete an object by id: (kind, namespace, name).
    Delete(&'static str, String, String),
    /// Sync now (the churn target syncs after each batch).
    Sync,
}

/// Decodes the next step, `None` when the input is used up.
pub fn op(src: &mut Source, history: &mut History) -> Option<Op> {
    if src.exhausted() {
        return None;
    }
    Some(match src.byte() % 16 {
        0..=3 => Op::Object(service(src, history)),
        4..=9 => Op::Object(slice(src, history)),
        10 => Op::Object(node(src, history)),
        11 | 12 => match history.ids.len() {
            0 => Op::Sync,
            n => {
                let (kind, ns, name) = history.ids[src.below(n)].clone();
                if src.chance(30) {
                    Op::Delete(kind, src.hostile(), name)
                } else {
                    Op::Delete(kind, ns, name)
                }
            }
        },
        _ => Op::Sync,
    })
}

/// Decodes every step of an input.
pub fn ops(src: &mut Source) -> Vec<Op> {
    let mut history = History::default();
    let mut out = Vec::new();
    while out.len() < MAX_OPS {
        match op(src, &mut history) {
            Some(o) => out.push(o),
            None => break,
        }
    }
    out
}

fn metadata(src: &mut Source, namespace: String, name: String) -> Map<String, Value> {
    let mut meta = Map::new();
    if !(namespace == "default" && src.chance(60)) {
        meta.insert("namespace".into(), namespace.into());
    }
    meta.insert("name".into(), name.into());
    if src.chance(60) {
        let mut annotations = Map::new();
        for _ in 0..src.below(4) {
            annotations.insert(src.hostile(), src.hostile().into());
        }
        meta.insert("annotations".into(), annotations.into());
    }
    if src.chance(30) {
        meta.insert(
            "uid".into(),
            src.text(&["0f1e2d3c-aaaa-bbbb-cccc-000000000001"]).into(),
        );
    }
    meta
}

/// A v1 Service.
pub fn service(src: &mut Source, history: &mut History) -> Value {
    let namespace = src.text(LABELS);
    let name = src.text(LABELS);
    let mut meta = metadata(src, namespace.clone(), name.clone());
    if src.chance(10) {
        meta.insert(
            "labels".into(),
            json!({"service.kubernetes.io/service-proxy-name": src.hostile()}),
        );
    }
    let v6 = src.chance(50);
    let mut spec = Map::new();
    match src.byte() % 8 {
        0..=2 => {}
        3 => {
            spec.insert("type".into(), "NodePort".into());
        }
        4 | 5 => {
            spec.insert("type".into(), "LoadBalancer".into());
        }
        6 => {
            spec.insert("type".into(), "ClusterIP".into());
        }
        _ => {
            let t = src.text(&["ExternalName"]);
            spec.insert("type".into(), t.into());
        }
    }
    let cluster_ip = if src.chance(8) {
        src.pick(&["None", ""]).to_string()
    } else {
        src.ip(v6)
    };
    spec.insert("clusterIP".into(), cluster_ip.clone().into());
    if src.chance(128) {
        let mut ips = vec![Value::from(cluster_ip)];
        if src.chance(128) {
            ips.push(src.ip(!v6).into());
        }
        spec.insert("clusterIPs".into(), ips.into());
    }
    let mut port_names = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..src.pick(&[1, 2, 0, 3, 1, 1, 5]) {
        let mut port = Map::new();
        let port_name = src.text(PORT_NAMES);
        port.insert("name".into(), port_name.clone().into());
        port_names.push(port_name);
        port.insert(
            "port".into(),
            if src.chance(6) {
                src.wrong_type()
            } else {
                src.pick(PORTS).into()
            },
        );
        match src.pick(PROTOCOLS) {
            Some(p) if !src.chance(10) => {
                port.insert("protocol".into(), p.into());
            }
            Some(_) => {
                port.insert("protocol".into(), src.hostile().into());
            }
            None => {}
        }
        if src.chance(100) {
            port.insert("nodePort".into(), src.pick(NODE_PORTS).into());
        }
        if src.chance(60) {
            let target = src.text(&["http", "8080"]);
            port.insert("targetPort".into(), target.into());
        }
        ports.push(Value::Object(port));
    }
    spec.insert("ports".into(), ports.into());
    if src.chance(60) {
        let ips: Vec<Value> = (0..src.below(3)).map(|_| src.ip(v6).into()).collect();
        spec.insert("externalIPs".into(), ips.into());
    }
    if src.chance(50) {
        let ranges: Vec<Value> = (0..src.below(4))
            .map(|_| {
                if src.chance(40) {
                    src.hostile().into()
                } else {
                    src.pick(CIDRS).into()
                }
            })
            .collect();
        spec.insert("loadBalancerSourceRanges".into(), ranges.into());
    }
    for field in ["externalTrafficPolicy", "internalTrafficPolicy"] {
        if src.chance(90) {
            let policy = src.text(&["Local", "Cluster"]);
            spec.insert(field.into(), policy.into());
        }
    }
    if src.chance(60) {
        let affinity = src.text(&["ClientIP", "None"]);
        spec.insert("sessionAffinity".into(), affinity.into());
        if src.chance(128) {
            let timeout = src.pick(&[10_800, 1, 0, 86_400, 86_401, -5]);
            spec.insert(
                "sessionAffinityConfig".into(),
                json!({"clientIP": {"timeoutSeconds": timeout}}),
            );
        }
    }
    if src.chance(30) {
        spec.insert(
            "healthCheckNodePort".into(),
            src.pick(&[32000, 0, 70000]).into(),
        );
    }
    let mut doc = json!({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec});
    if src.chance(60) {
        let ingress: Vec<Value> = (0..src.below(3))
            .map(|_| {
                let mut entry = Map::new();
                entry.insert("ip".into(), src.ip(v6).into());
                if src.chance(60) {
                    let mode = src.text(&["VIP", "Proxy"]);
                    entry.insert("ipMode".into(), mode.into());
                }
                if src.chance(30) {
                    entry.insert("hostname".into(), src.hostile().into());
                }
                Value::Object(entry)
            })
            .collect();
        doc["status"] = json!({"loadBalancer": {"ingress": ingress}});
    }
    if src.chance(6) {
        // A field of the wrong type somewhere typed deserialisation must refuse.
        let field = src.pick(&["spec", "metadata", "status", "apiVersion"]);
        doc[field] = src.wrong_type();
    }
    history
        .ids
        .push(("Service", namespace.clone(), name.clone()));
    history.services.push((namespace, name, port_names, v6));
    doc
}

/// The address of the `i`-th generated endpoint of a family.
pub fn bulk_address(i: usize, v6: bool) -> String {
    if v6 {
        format!("fd00:e::{:x}:{:x}", i >> 16, i & 0xffff)
    } else {
        format!(
            "10.{}.{}.{}",
            128 + (i >> 16) % 128,
            (i >> 8) & 0xff,
            i & 0xff
        )
    }
}

/// A discovery.k8s.io/v1 EndpointSlice, usually of a Service seen before.
pub fn slice(src: &mut Source, history: &mut History) -> Value {
    let known = if history.services.is_empty() || src.chance(20) {
        None
    } else {
        Some(history.services[src.below(history.services.len())].clone())
    };
    let (namespace, service, port_names, v6) = match known {
        Some(k) => k,
        None => (
            src.text(LABELS),
            src.text(LABELS),
            vec![src.text(PORT_NAMES)],
            src.chance(50),
        ),
    };
    let name = src.text(SUBDOMAINS);
    let mut meta = metadata(src, namespace.clone(), name.clone());
    let mut labels = Map::new();
    if !src.chance(8) {
        labels.insert("kubernetes.io/service-name".into(), service.into());
    }
    if src.chance(6) {
        labels.insert("service.kubernetes.io/headless".into(), "".into());
    }
    meta.insert("labels".into(), labels.into());
    if src.chance(20) {
        let stamp = src.text(&["2026-05-01T10:00:00Z"]);
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(
                "endpoints.kubernetes.io/last-change-trigger-time".into(),
                stamp.into(),
            );
        }
    }
    let address_type = if src.chance(12) {
        src.text(&["FQDN", "IPv4", "IPv6"])
    } else if v6 {
        "IPv6".to_string()
    } else {
        "IPv4".to_string()
    };
    let mut ports = Vec::new();
    for port_name in &port_names {
        if src.chance(20) {
            continue;
        }
        let name = if src.chance(20) {
            src.text(PORT_NAMES)
        } else {
            port_name.clone()
        };
        let mut port =
            json!({"name": name, "port": src.pick(&[8080, 80, 53, 9090, 0, 65535, 65536])});
        if let Some(p) = src.pick(PROTOCOLS) {
            port["protocol"] = p.into();
        }
        if src.chance(10) {
            port["port"] = Value::Null;
        }
        ports.push(port);
    }
    let mut endpoints = Vec::new();
    let bulk = src.chance(8);
    let count = if bulk {
        src.pick(BULK)
            .min(MAX_BULK.saturating_sub(history.endpoints))
    } else {
        src.pick(&[2, 1, 0, 3, 5, 8])
    };
    history.endpoints += count;
    let base = src.below(1 << 16);
    for i in 0..count {
        let addr = if bulk {
            bulk_address(base + i, v6)
        } else {
            src.ip(v6)
        };
        let mut ep = json!({"addresses": [addr]});
        if !bulk && src.chance(20) {
            let extra = src.ip(!v6);
            if let Some(a) = ep["addresses"].as_array_mut() {
                a.push(extra.into());
            }
        }
        let conditions = if bulk { 0 } else { src.byte() };
        if conditions & 0x80 == 0 {
            ep["conditions"] = json!({
                "ready": conditions & 1 == 0,
                "serving": conditions & 2 == 0,
                "terminating": conditions & 4 != 0,
            });
        }
        let node = if bulk { i % 3 } else { src.below(4) };
        if node < NODES.len() {
            ep["nodeName"] = if !bulk && src.chance(20) {
                src.hostile().into()
            } else {
                NODES[node].into()
            };
        }
        if !bulk && src.chance(40) {
            ep["hints"] = json!({
                "forZones": [{"name": src.text(ZONES)}],
                "forNodes": [{"name": src.text(NODES)}],
            });
        }
        if !bulk && src.chance(20) {
            ep["zone"] = src.text(ZONES).into();
        }
        endpoints.push(ep);
    }
    let mut doc = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": meta, "addressType": address_type, "ports": ports, "endpoints": endpoints,
    });
    if src.chance(6) {
        let field = src.pick(&["ports", "endpoints", "metadata", "addressType"]);
        doc[field] = src.wrong_type();
    }
    history.ids.push(("EndpointSlice", namespace, name));
    doc
}

/// A v1 Node, usually this one.
pub fn node(src: &mut Source, history: &mut History) -> Value {
    let name = src.text(NODES);
    let mut labels = Map::new();
    if src.chance(128) {
        labels.insert("topology.kubernetes.io/zone".into(), src.text(ZONES).into());
    }
    let mut meta = json!({"name": name, "labels": labels});
    if src.chance(20) {
        meta["deletionTimestamp"] = "2026-05-01T10:00:00Z".into();
    }
    let addresses: Vec<Value> = (0..src.below(4))
        .map(|_| {
            let v6 = src.chance(60);
            json!({"type": src.pick(&["InternalIP", "ExternalIP", "Hostname"]), "address": src.ip(v6)})
        })
        .collect();
    let mut doc = json!({"apiVersion": "v1", "kind": "Node", "metadata": meta,
                         "status": {"addresses": addresses}});
    if src.chance(20) {
        doc["spec"] = json!({"taints": [{"key": src.text(&["ToBeDeletedByClusterAutoscaler"]), "effect": "NoSchedule"}]});
    }
    history.ids.push(("Node", String::new(), name));
    doc
}

/// Node-wide settings read from the input's first bytes.
pub struct Settings {
    pub cluster_cidrs: [Option<&'static str>; 2],
    pub masquerade_all: bool,
    /// `None`: `--nodeport-addresses primary`.
    pub nodeport_cidrs: Option<Vec<&'static str>>,
    pub local_addresses: Vec<&'static str>,
}

pub fn settings(src: &mut Source) -> Settings {
    let local_pool = [
        "192.168.1.10",
        "fd00:1::10",
        "127.0.0.1",
        "::1",
        "fe80::1",
        "10.96.0.10",
        "203.0.113.5",
    ];
    let flags = src.byte();
    Settings {
        cluster_cidrs: [
            src.pick(&[
                Some("10.244.0.0/16"),
                None,
                Some("10.0.0.0/8"),
                Some("0.0.0.0/0"),
            ]),
            src.pick(&[Some("fd00:244::/48"), None, Some("::/0")]),
        ],
        masquerade_all: flags & 1 != 0,
        nodeport_cidrs: (flags & 2 != 0).then(|| {
            (0..src.below(3))
                .map(|_| src.pick(&["192.168.1.0/24", "0.0.0.0/0", "fd00:1::/64", "::/0"]))
                .collect()
        }),
        local_addresses: local_pool
            .iter()
            .enumerate()
            .filter(|(i, _)| flags & 4 == 0 || (flags >> 3) & (1 << (i % 5)) != 0)
            .map(|(_, a)| *a)
            .collect(),
    }
}
