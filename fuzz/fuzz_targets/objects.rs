//! Fuzz target: bytes decoded into Services, EndpointSlices and Nodes built from a dictionary of
//! hostile strings, applied to a `State`, planned and rendered; every fragment and script is
//! checked (see `kube_nft_proxy_fuzz::check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kube_nft_proxy_fuzz::targets::objects(data));
