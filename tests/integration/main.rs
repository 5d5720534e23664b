//! Integration tests: the real `palisade` executable on loopback, real HTTPS clients.

mod support;

mod admin_cli;
mod api_errors;
mod auth;
mod backup;
mod broker;
mod browser;
mod bundle;
mod durability;
mod oci_pull;
mod openapi;
mod pack_sources;
mod packs;
mod providers_openstack;
mod pull_credentials;
mod rbac;
mod registry;
