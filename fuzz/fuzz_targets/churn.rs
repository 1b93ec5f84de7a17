//! Fuzz target: the same decoded objects applied as a sequence of changes with an incremental
//! sync after each batch (render the changed Services, diff only the touched objects, apply to the
//! kernel mirror); after every sync a full diff must find nothing left to do.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kube_nft_proxy_fuzz::targets::churn(data));
