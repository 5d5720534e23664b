//! Integration tests: the real `palisade` executable on loopback, real HTTPS clients.

mod support;
mod tls_front;

mod admin_cli;
mod api_errors;
mod auth;
mod backup;
mod bootstrap;
mod broker;
mod browser;
mod bundle;
mod durability;
mod oci_pull;
mod openapi;
mod ova_fixture;
mod pack_sources;
mod packs;
mod providers_baremetal;
mod providers_openstack;
mod providers_vsphere;
mod provisioning;
mod pull_credentials;
mod rbac;
mod registry;
