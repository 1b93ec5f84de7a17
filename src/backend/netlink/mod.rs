//! The netlink backend: transactions as nf_tables netlink batches, in pure Rust, with no nft
//! binary. See [`wire`] for the format, [`compile`] for rule templates → expressions.

pub mod compile;
pub mod expr;
pub mod wire;
