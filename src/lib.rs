//! Palisade: a self-hosted Kubernetes management plane for air-gapped sites, as one executable.
//!
//! `main.rs` only parses arguments and calls [`cli::run`]; [`app`] is the composition root that
//! builds the store, PKI and HTTP server for `palisade serve`. Dependencies point inward:
//! `model` depends on nothing of ours, `store` is the only module with SQL, `api` and
//! `console` are thin layers over `store`.

pub mod api;
pub mod app;
pub mod broker;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod console;
pub mod datadir;
pub mod model;
pub mod oci_pull;
pub mod orchestrator;
pub mod pack;
pub mod pack_sources;
pub mod pki;
pub mod providers;
pub mod registry;
pub mod secrets;
pub mod store;

/// Version of this executable.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
