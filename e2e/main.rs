//! End-to-end tests: the real binary programs the real kernel inside network namespaces the
//! tests create, and real TCP/UDP packets check the result. Needs root.

mod api;
mod apiserver;
mod clusterip;
mod dataplane;
mod differential;
mod faults;
mod flows;
mod harness;
mod lifecycle;
mod manifests;
mod masquerade;
mod monitoring;
mod objects;
mod observability;
mod policies;
mod rows;
mod security;
mod soak;
mod tables;
