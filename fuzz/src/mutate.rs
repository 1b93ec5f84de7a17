//! A small deterministic mutator for the stable smoke test: an xorshift generator, and byte-level
//! mutations of seed inputs (flips, inserts of hostile strings and YAML/JSON syntax, deletions,
//! duplications, splices, truncations) in the spirit of libFuzzer's, without its coverage
//! feedback.

use super::input::HOSTILE;

/// xorshift64*: small, fast, good enough to spread inputs; the same seed gives the same inputs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// Syntax worth inserting into manifests: anchors and aliases, merge keys, flow collections,
/// document markers, tags, block scalars, the kinds the loader looks for.
const SYNTAX: &[&str] = &[
    "&a ",
    "*a",
    "<<: *a\n",
    "[",
    "]",
    "{",
    "}",
    "\n---\n",
    "\n...\n",
    "!!binary ",
    "!!str ",
    "!<tag:yaml.org,2002:str> ",
    "|\n  ",
    ">-\n  ",
    "? ",
    ": ",
    "- ",
    "\"",
    "'",
    "\\u0000",
    "\\ud800",
    "\t",
    "\r",
    "null",
    "~",
    "1e999",
    "-0",
    "0x1F",
    "apiVersion: v1\nkind: List\nitems:\n- ",
    "kind: Service\n",
    "kind: EndpointSlice\n",
    "kind: Node\n",
    "apiVersion: discovery.k8s.io/v1\n",
    "\"kind\": \"List\", \"apiVersion\": \"v1\", \"items\": [",
    "\"kind\": \"Service\", ",
    "\"name\": ",
    "namespace: ",
    "clusterIP: ",
    "addresses: [",
    "kubernetes.io/service-name: ",
];

/// Mutates `input` in place with 1–8 random edits; `others` are splice sources.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, others: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(8) {
        let len = input.len();
        let at = rng.below(len + 1);
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next_u64() as u8;
            }
            2 => {
                let word = HOSTILE[rng.below(HOSTILE.len())];
                input.splice(at..at, word.bytes());
            }
            3 => {
                let word = SYNTAX[rng.below(SYNTAX.len())];
                input.splice(at..at, word.bytes());
            }
            4 if len > 0 => {
                let end = (at + 1 + rng.below(32)).min(len);
                input.drain(at.min(end)..end);
            }
            5 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                let piece: Vec<u8> = input[start..end].to_vec();
                input.splice(at..at, piece);
            }
            6 if !others.is_empty() => {
                let other = &others[rng.below(others.len())];
                let start = rng.below(other.len());
                let end = (start + rng.below(256)).min(other.len());
                input.splice(at..at, other[start..end].iter().copied());
            }
            7 => input.truncate(at),
            _ => {
                let n = 1 + rng.below(16);
                let extra = rng.bytes(n);
                input.splice(at..at, extra);
            }
        }
    }
}
