//! Cloud accounts and clusters: spec written by users, status written by the orchestrator.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{check_id, check_name, check_text, Invalid, Timestamp};

/// Which infrastructure a cloud account reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CloudKind {
    Vsphere,
    Openstack,
    Baremetal,
}

impl CloudKind {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            CloudKind::Vsphere => "vsphere",
            CloudKind::Openstack => "openstack",
            CloudKind::Baremetal => "baremetal",
        }
    }
    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "vsphere" => Some(CloudKind::Vsphere),
            "openstack" => Some(CloudKind::Openstack),
            "baremetal" => Some(CloudKind::Baremetal),
            _ => None,
        }
    }
}

/// Secret material for a cloud account: kept encrypted at rest, never returned or logged.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    /// OpenStack application credential id, when used instead of a password.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub application_credential_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub application_credential_secret: String,
}

// Credentials must never reach a log line, even through `{:?}`.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

impl Credentials {
    fn validate(&self) -> Result<(), Invalid> {
        let has_password = !self.username.is_empty() && !self.password.is_empty();
        let has_app = !self.application_credential_id.is_empty()
            && !self.application_credential_secret.is_empty();
        if !has_password && !has_app {
            return Err(Invalid::new(
                "credentials",
                "give username and password (or, for OpenStack, application_credential_id and application_credential_secret)",
            ));
        }
        for (field, v) in [
            ("credentials.username", &self.username),
            ("credentials.password", &self.password),
            (
                "credentials.application_credential_id",
                &self.application_credential_id,
            ),
            (
                "credentials.application_credential_secret",
                &self.application_credential_secret,
            ),
        ] {
            if v.len() > 4096 {
                return Err(Invalid::new(field, "is longer than 4096 bytes"));
            }
        }
        Ok(())
    }
}

/// A cloud account as the API shows it: everything but the credentials.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CloudAccount {
    pub id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub name: String,
    pub kind: CloudKind,
    /// vCenter URL, Keystone URL, or the bare-metal pool's Redfish base.
    pub endpoint: String,
    /// PEM bundle of CAs trusted for the endpoint (empty: the system's roots).
    pub ca_bundle: String,
    /// Placement defaults (datacenter, cluster, datastore, network, flavor, ...).
    pub placement: BTreeMap<String, String>,
    /// True when credentials are stored (they are never returned).
    pub has_credentials: bool,
    pub version: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

fn check_endpoint(endpoint: &str) -> Result<(), Invalid> {
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && endpoint.len() <= 2048 && !endpoint.contains(char::is_whitespace) => Ok(()),
        _ => Err(Invalid::new(
            "endpoint",
            format!("{endpoint:?} is not an http(s) URL: give for example \"https://vcenter.example.local/sdk\""),
        )),
    }
}

fn check_ca_bundle(pem: &str) -> Result<(), Invalid> {
    if pem.trim().is_empty() {
        return Ok(());
    }
    if pem.len() > 256 * 1024 {
        return Err(Invalid::new("ca_bundle", "is larger than 256 KiB"));
    }
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(Invalid::new(
            "ca_bundle",
            "is not a PEM certificate bundle (expected -----BEGIN CERTIFICATE----- blocks)",
        ));
    }
    Ok(())
}

fn check_placement(placement: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if placement.len() > 32 {
        return Err(Invalid::new("placement", "has more than 32 entries"));
    }
    for (k, v) in placement {
        if k.is_empty()
            || k.len() > 64
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Invalid::new(
                "placement",
                format!("key {k:?} must be 1 to 64 letters, digits, '_' or '-'"),
            ));
        }
        check_text(&format!("placement.{k}"), v, 1024)?;
    }
    Ok(())
}

/// Body of `POST /v1/cloud-accounts`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCloudAccount {
    pub project_id: String,
    pub name: String,
    pub kind: CloudKind,
    pub endpoint: String,
    pub credentials: Credentials,
    #[serde(default)]
    pub ca_bundle: String,
    #[serde(default)]
    pub placement: BTreeMap<String, String>,
}

impl NewCloudAccount {
    /// Validate every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_id("project_id", &self.project_id)?;
        check_name("name", &self.name)?;
        check_endpoint(&self.endpoint)?;
        self.credentials.validate()?;
        check_ca_bundle(&self.ca_bundle)?;
        check_placement(&self.placement)
    }
}

/// Body of `PUT /v1/cloud-accounts/{id}`; credentials are replaced only when given.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCloudAccount {
    pub endpoint: String,
    pub credentials: Option<Credentials>,
    #[serde(default)]
    pub ca_bundle: String,
    #[serde(default)]
    pub placement: BTreeMap<String, String>,
}

impl UpdateCloudAccount {
    /// Validate every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_endpoint(&self.endpoint)?;
        if let Some(c) = &self.credentials {
            c.validate()?;
        }
        check_ca_bundle(&self.ca_bundle)?;
        check_placement(&self.placement)
    }
}

/// What the agent does when the live cluster drifts from desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DriftPolicy {
    /// Raise an alert and leave the cluster as it is.
    Alert,
    /// Put the cluster back to desired state.
    Reconcile,
}

impl DriftPolicy {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftPolicy::Alert => "alert",
            DriftPolicy::Reconcile => "reconcile",
        }
    }
    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "alert" => Some(DriftPolicy::Alert),
            "reconcile" => Some(DriftPolicy::Reconcile),
            _ => None,
        }
    }
}

/// Role of the machines of a node pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    ControlPlane,
    Worker,
}

/// Size of each machine of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineSize {
    /// Virtual CPUs, 1 to 256.
    pub cpus: u32,
    /// Memory in MiB, 1024 to 4194304.
    pub memory_mib: u32,
    /// Root disk in GiB, 10 to 65536.
    pub disk_gib: u32,
}

/// A group of identical machines of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodePool {
    pub name: String,
    pub role: NodeRole,
    /// Number of machines, 0 to 1000 (a control-plane pool needs an odd count).
    pub count: u32,
    pub size: MachineSize,
}

/// Most node pools per cluster.
pub const MAX_POOLS: usize = 32;

fn check_pools(pools: &[NodePool]) -> Result<(), Invalid> {
    if pools.is_empty() || pools.len() > MAX_POOLS {
        return Err(Invalid::new(
            "node_pools",
            format!("give 1 to {MAX_POOLS} node pools"),
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut control_planes = 0;
    for (i, p) in pools.iter().enumerate() {
        let at = format!("node_pools[{i}]");
        check_name("name", &p.name).map_err(|e| e.under(&at))?;
        if !names.insert(p.name.as_str()) {
            return Err(Invalid::new(
                format!("{at}.name"),
                format!("pool name {:?} is used twice", p.name),
            ));
        }
        if p.count > 1000 {
            return Err(Invalid::new(format!("{at}.count"), "must be at most 1000"));
        }
        if p.role == NodeRole::ControlPlane {
            control_planes += 1;
            if p.count % 2 == 0 {
                return Err(Invalid::new(
                    format!("{at}.count"),
                    "a control-plane pool needs an odd number of machines (1, 3 or 5) to keep etcd quorum",
                ));
            }
        }
        let s = &p.size;
        if !(1..=256).contains(&s.cpus) {
            return Err(Invalid::new(format!("{at}.size.cpus"), "must be 1 to 256"));
        }
        if !(1024..=4_194_304).contains(&s.memory_mib) {
            return Err(Invalid::new(
                format!("{at}.size.memory_mib"),
                "must be 1024 to 4194304",
            ));
        }
        if !(10..=65_536).contains(&s.disk_gib) {
            return Err(Invalid::new(
                format!("{at}.size.disk_gib"),
                "must be 10 to 65536",
            ));
        }
    }
    if control_planes != 1 {
        return Err(Invalid::new(
            "node_pools",
            "a cluster needs exactly one pool with role control-plane",
        ));
    }
    Ok(())
}

/// Lifecycle phase of a cluster, written by the orchestrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ClusterStatus {
    Pending,
    Provisioning,
    Running,
    Updating,
    Deleting,
    Failed,
}

impl ClusterStatus {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterStatus::Pending => "Pending",
            ClusterStatus::Provisioning => "Provisioning",
            ClusterStatus::Running => "Running",
            ClusterStatus::Updating => "Updating",
            ClusterStatus::Deleting => "Deleting",
            ClusterStatus::Failed => "Failed",
        }
    }
    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Pending" => Some(ClusterStatus::Pending),
            "Provisioning" => Some(ClusterStatus::Provisioning),
            "Running" => Some(ClusterStatus::Running),
            "Updating" => Some(ClusterStatus::Updating),
            "Deleting" => Some(ClusterStatus::Deleting),
            "Failed" => Some(ClusterStatus::Failed),
            _ => None,
        }
    }
}

/// An observed condition of a cluster (Kubernetes style).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Condition {
    /// Condition type, such as `Ready` or `ProfileApplied`.
    #[serde(rename = "type")]
    pub condition_type: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub last_transition: Timestamp,
}

/// A cluster: spec (written by users) and status (written by the orchestrator).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Cluster {
    pub id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub name: String,
    pub profile_id: String,
    pub profile_revision: i64,
    pub cloud_account_id: String,
    pub node_pools: Vec<NodePool>,
    pub drift_policy: DriftPolicy,
    pub status: ClusterStatus,
    pub conditions: Vec<Condition>,
    pub version: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// Body of `POST /v1/clusters`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCluster {
    pub project_id: String,
    pub name: String,
    pub profile_id: String,
    /// Revision of the profile to apply; the latest when absent.
    pub profile_revision: Option<i64>,
    pub cloud_account_id: String,
    pub node_pools: Vec<NodePool>,
    #[serde(default = "default_drift")]
    pub drift_policy: DriftPolicy,
}

fn default_drift() -> DriftPolicy {
    DriftPolicy::Alert
}

impl NewCluster {
    /// Validate every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_id("project_id", &self.project_id)?;
        check_name("name", &self.name)?;
        check_id("profile_id", &self.profile_id)?;
        check_id("cloud_account_id", &self.cloud_account_id)?;
        if let Some(r) = self.profile_revision {
            if r < 1 {
                return Err(Invalid::new("profile_revision", "revisions count from 1"));
            }
        }
        check_pools(&self.node_pools)
    }
}

/// Body of `PUT /v1/clusters/{id}`: the spec fields a user may change.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCluster {
    pub profile_revision: i64,
    pub node_pools: Vec<NodePool>,
    pub drift_policy: DriftPolicy,
}

impl UpdateCluster {
    /// Validate every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.profile_revision < 1 {
            return Err(Invalid::new("profile_revision", "revisions count from 1"));
        }
        check_pools(&self.node_pools)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, role: NodeRole, count: u32) -> NodePool {
        NodePool {
            name: name.into(),
            role,
            count,
            size: MachineSize {
                cpus: 2,
                memory_mib: 4096,
                disk_gib: 40,
            },
        }
    }

    #[test]
    fn needs_one_control_plane_pool_with_odd_count() {
        assert!(check_pools(&[
            pool("cp", NodeRole::ControlPlane, 3),
            pool("w", NodeRole::Worker, 2)
        ])
        .is_ok());
        let err = check_pools(&[pool("cp", NodeRole::ControlPlane, 2)]).expect_err("even");
        assert_eq!(err.field, "node_pools[0].count");
        assert!(check_pools(&[pool("w", NodeRole::Worker, 2)]).is_err());
    }

    #[test]
    fn names_duplicate_pool() {
        let err = check_pools(&[
            pool("a", NodeRole::ControlPlane, 1),
            pool("a", NodeRole::Worker, 1),
        ])
        .expect_err("dup");
        assert_eq!(err.field, "node_pools[1].name");
    }

    #[test]
    fn credentials_debug_is_redacted() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2-secret".into(),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn endpoint_must_be_http_url() {
        assert!(check_endpoint("https://vc.local/sdk").is_ok());
        assert!(check_endpoint("vc.local").is_err());
        assert!(check_endpoint("https://").is_err());
    }
}
