//! Infrastructure providers: one [`Provider`] trait and its three implementations
//! (`vsphere`, `openstack`, `baremetal`).
//!
//! A provider is an API client plus the trait; it talks to one infrastructure API and nothing
//! else: no store, no broker. The orchestrator, the installer and the gateway call it. Every
//! method is idempotent: machines carry their cluster, pool and name as tags on the
//! infrastructure itself, so after a crash the caller finds them again instead of creating
//! duplicates. This module is the only place that matches on [`CloudKind`].

pub mod baremetal;
pub mod http;
pub mod openstack;
pub mod vsphere;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{CloudKind, Credentials, MachineSize, NodeRole};

/// Tag (vSphere custom attribute, OpenStack metadata key, ...) holding the cluster id.
pub const TAG_CLUSTER: &str = "palisade-cluster";
/// Tag holding the node pool name.
pub const TAG_POOL: &str = "palisade-pool";
/// Tag holding the node role (`control-plane` or `worker`).
pub const TAG_ROLE: &str = "palisade-role";

/// Placement keys the orchestrator reads itself, whatever the provider (static addresses and
/// the Kubernetes API endpoint, see docs/provisioning.md); providers that refuse unknown keys
/// accept these.
pub const ORCHESTRATOR_PLACEMENT_KEYS: &[&str] = &[
    "ip_pool",
    "ip_prefix",
    "gateway",
    "dns",
    "control_plane_endpoint",
];

/// Everything a provider needs to reach one cloud account. Built by the caller from the stored
/// account and its decrypted credentials.
#[derive(Clone)]
pub struct Account {
    pub kind: CloudKind,
    /// vCenter SDK URL, Keystone v3 URL, or the Redfish service root of the bare-metal pool.
    pub endpoint: String,
    /// PEM certificates trusted for the endpoint: CA certificates, or the endpoint's own
    /// self-signed certificate (pinned). Empty: the system's roots.
    pub ca_bundle: String,
    pub credentials: Credentials,
    /// Provider-specific placement settings (datacenter, datastore, network, flavor, ...).
    /// Each implementation documents its keys in its module header.
    pub placement: BTreeMap<String, String>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint)
            .field("placement", &self.placement)
            .finish_non_exhaustive()
    }
}

/// What the caller lends a provider that needs to publish files for machines to fetch over
/// HTTP (the bare-metal provider's per-machine boot media: a BMC downloads what it mounts).
#[async_trait::async_trait]
pub trait MediaHost: Send + Sync {
    /// Serve `bytes` under `name` (letters, digits, `.`, `-`, `_`) and return the URL a BMC on
    /// the admin LAN fetches it from. Serving the same name again replaces the content.
    async fn publish(&self, name: &str, bytes: Vec<u8>) -> Result<String, ProviderError>;
    /// Stop serving `name`; unknown names are fine.
    async fn withdraw(&self, name: &str) -> Result<(), ProviderError>;
    /// Serve the file at `path` under `name` (an OS installer ISO of several GiB). The default
    /// reads it into memory and calls [`MediaHost::publish`]; a host that can serve straight
    /// from disk should override it.
    async fn publish_file(&self, name: &str, path: &Path) -> Result<String, ProviderError> {
        let bytes = tokio::fs::read(path).await.map_err(|e| {
            ProviderError::not_found(format!("cannot read {}: {e}", path.display()))
        })?;
        self.publish(name, bytes).await
    }
}

/// What a provider is built with besides the account.
#[derive(Clone, Default)]
pub struct Context {
    /// Where per-machine boot media is published; needed by the bare-metal provider only.
    pub media: Option<Arc<dyn MediaHost>>,
}

/// Build the provider of an account's kind. Fails only on settings that can be checked
/// without a network call (a malformed endpoint or CA bundle, a missing placement key).
pub fn connect(account: &Account, ctx: &Context) -> Result<Box<dyn Provider>, ProviderError> {
    match account.kind {
        CloudKind::Baremetal => Ok(Box::new(baremetal::Baremetal::new(account, ctx)?)),
        CloudKind::Vsphere => Ok(Box::new(vsphere::VsphereProvider::new(account)?)),
        CloudKind::Openstack => Ok(Box::new(openstack::OpenStack::new(account)?)),
    }
}

/// The disk format an infrastructure boots machines from: what the OS layer must provide.
pub fn image_format(kind: CloudKind) -> ImageFormat {
    match kind {
        CloudKind::Vsphere => ImageFormat::Ova,
        CloudKind::Openstack => ImageFormat::Qcow2,
        CloudKind::Baremetal => ImageFormat::Iso,
    }
}

/// The operations every infrastructure offers. Every method is idempotent; the orchestrator
/// retries after crashes and transient errors.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Check credentials, reachability, permissions and that every placement setting names
    /// something that exists. The error names what is wrong and how to fix it.
    async fn validate(&self) -> Result<AccountCheck, ProviderError>;

    /// Placement choices for the console's pickers (datacenters, datastores, networks,
    /// flavors, free bare-metal machines, ...).
    async fn placements(&self) -> Result<Vec<PlacementChoice>, ProviderError>;

    /// Make sure the OS image is present on the infrastructure (upload it when not) and return
    /// the reference machines are created from. Found again by name on a second call.
    async fn ensure_image(&self, image: &OsImage) -> Result<ImageRef, ProviderError>;

    /// Create the machine unless one with this spec's name and cluster tag exists, and return
    /// it (powered on, or on its way). Never creates a second machine for the same name.
    async fn ensure_machine(&self, spec: &MachineSpec) -> Result<Machine, ProviderError>;

    /// Read a machine; `None` when it no longer exists.
    async fn machine(&self, id: &MachineRef) -> Result<Option<Machine>, ProviderError>;

    /// Power a machine on, off or reset it.
    async fn power(&self, id: &MachineRef, op: PowerOp) -> Result<(), ProviderError>;

    /// Delete a machine (bare metal: power off, eject media, release the claim). A machine
    /// that is already gone is success.
    async fn delete_machine(&self, id: &MachineRef) -> Result<(), ProviderError>;

    /// Every machine tagged with this cluster id.
    async fn machines(&self, cluster_id: &str) -> Result<Vec<Machine>, ProviderError>;
}

/// Result of [`Provider::validate`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccountCheck {
    /// What answered, e.g. "VMware vCenter Server 6.5.0" or "OpenStack Keystone v3, region RegionOne".
    pub endpoint_product: String,
    /// One line per check that passed, for the console ("login as user", "datastore LocalDS_0 found").
    pub checks: Vec<String>,
}

/// One pickable value of a placement setting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlacementChoice {
    /// The placement key it fills (`datacenter`, `datastore`, `network`, `flavor`, ...).
    pub key: String,
    /// The value to store in the account's placement.
    pub value: String,
    /// What the console shows (may add size, free space, ...).
    pub label: String,
}

/// Disk format of an OS image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Ova,
    Qcow2,
    Raw,
    Iso,
}

/// Where the bytes of an OS image can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageLocation {
    /// A file on this host (the registry's blob, or a bundle artifact).
    File(PathBuf),
    /// An HTTPS URL (the appliance's registry seen from a gateway or a BMC).
    Url { url: String, ca_pem: String },
    /// Nowhere to upload from: the image must already exist on the infrastructure under its
    /// name (a template or Glance image the site prepared); NotFound otherwise.
    Existing,
}

/// An OS image a cluster's machines boot from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsImage {
    /// Name on the infrastructure (template, Glance image, ISO name); found again by it.
    pub name: String,
    pub format: ImageFormat,
    pub size: u64,
    /// Lowercase hex sha256 of the bytes; providers that can store it (Glance) record it.
    pub sha256: String,
    pub location: ImageLocation,
}

/// An image as present on the infrastructure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// Provider id: template moref, Glance image id, ISO URL.
    pub id: String,
    pub name: String,
}

/// Static network settings of one machine, from the account's IP pool (many sites have no DHCP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticIp {
    /// Address with prefix length, e.g. `10.20.0.31/24`.
    pub address: String,
    pub gateway: String,
    pub dns: Vec<String>,
}

/// Cloud-init documents for one machine. Secrets here are limited to one-time tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// `#cloud-config` user-data.
    pub user_data: String,
    /// meta-data (instance-id, local-hostname), YAML.
    pub meta_data: String,
    /// Network config version 2, when the machine has a static address.
    pub network_config: Option<String>,
}

/// What the orchestrator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    /// Unique, stable name: `<cluster name>-<pool>-<ordinal>-<cluster id prefix>`; also the hostname.
    pub name: String,
    pub cluster_id: String,
    pub pool: String,
    pub role: NodeRole,
    pub size: MachineSize,
    pub image: ImageRef,
    pub bootstrap: Bootstrap,
    pub static_ip: Option<StaticIp>,
}

/// How a provider names a machine it made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRef {
    /// Provider id: VM moref, Nova server id, Redfish system id.
    pub id: String,
    pub name: String,
}

/// Observed state of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "reason")]
pub enum MachineState {
    /// Being built or booting.
    Provisioning,
    Running,
    /// Exists, powered off.
    Off,
    /// The infrastructure reports an error (Nova ERROR, ...).
    Failed(String),
}

/// A machine as a provider sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub id: String,
    pub name: String,
    /// From the machine's tags.
    pub cluster_id: String,
    pub pool: String,
    pub state: MachineState,
    /// IP addresses as the infrastructure reports them (may be empty while booting).
    pub addresses: Vec<String>,
}

impl Machine {
    /// The reference to pass back to the provider.
    pub fn reference(&self) -> MachineRef {
        MachineRef {
            id: self.id.clone(),
            name: self.name.clone(),
        }
    }
}

/// Power operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerOp {
    On,
    Off,
    Reset,
}

/// What went wrong, for the caller's retry policy and the user's error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Credentials refused (wrong password, expired application credential).
    Credentials,
    /// The credentials work but lack a permission.
    Permission,
    /// The endpoint does not answer (DNS, refused, timeout, TLS failure).
    Unreachable,
    /// A placement setting or image names something that does not exist.
    NotFound,
    /// A setting is malformed (bad URL, missing placement key).
    Invalid,
    /// Not enough capacity (no free bare-metal machine, quota, no free IP).
    Capacity,
    /// Try again later: busy, rate-limited, 5xx, a task still running.
    Transient,
    /// The endpoint answered something this client does not understand.
    Protocol,
}

impl ErrorKind {
    /// The serialized name (`credentials`, `not-found`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Credentials => "credentials",
            ErrorKind::Permission => "permission",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Capacity => "capacity",
            ErrorKind::Transient => "transient",
            ErrorKind::Protocol => "protocol",
        }
    }

    /// Whether retrying the same call later may succeed without anyone changing anything.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Unreachable | ErrorKind::Transient)
    }
}

/// A provider error: its kind and a message that names the problem and the fix.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq, Eq)]
#[error("{message}")]
pub struct ProviderError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ProviderError {
    /// An error of this kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ProviderError {
            kind,
            message: message.into(),
        }
    }
    /// A malformed setting: names the setting.
    pub fn invalid(setting: &str, message: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Invalid, format!("{setting}: {message}"))
    }
    /// Something named by the account or spec does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    /// Retry later.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
    /// Whether retrying later may help.
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }
}

/// The hostname-safe machine name for a pool ordinal (see [`MachineSpec::name`]).
pub fn machine_name(cluster_name: &str, cluster_id: &str, pool: &str, ordinal: u32) -> String {
    let short: String = cluster_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(6)
        .collect();
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .trim_matches('-')
            .to_string()
    };
    let mut name = format!("{}-{}-{ordinal}-{short}", clean(cluster_name), clean(pool));
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_names_are_hostnames() {
        assert_eq!(
            machine_name("Prod East", "0193a1b2-c3d4", "workers_a", 2),
            "prod-east-workers-a-2-0193a1"
        );
        let long = machine_name(&"x".repeat(80), "abc", "p", 1);
        assert!(long.len() <= 63);
    }

    #[test]
    fn only_unreachable_and_transient_are_retried() {
        assert!(ProviderError::transient("busy").is_transient());
        assert!(!ProviderError::not_found("no datastore").is_transient());
        assert!(ErrorKind::Unreachable.is_transient());
    }
}
