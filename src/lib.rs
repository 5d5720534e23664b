//! Palisade: a self-hosted Kubernetes management plane for air-gapped sites, as one executable.
//!
//! `main.rs` only parses arguments and calls [`cli::run`]; [`app`] is the composition root that
//! builds the store, PKI and HTTP server for `palisade serve`.

pub mod model;
pub mod secrets;
pub mod store;
