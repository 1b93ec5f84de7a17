//! Fuzz target: arbitrary bytes as a manifest file (YAML and JSON) through the loader, and every
//! valid object found through state, plan, render and the script/netlink encoders with the
//! properties of `kube_nft_proxy_fuzz::check`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kube_nft_proxy_fuzz::targets::manifest(data));
