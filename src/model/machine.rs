//! Machines of clusters as the orchestrator records them, and the result of checking a cloud
//! account against its infrastructure. Written by the orchestrator only; read by API and console.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{NodeRole, Timestamp};

/// What the orchestrator knows of one machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MachinePhase {
    /// Recorded; the provider has not confirmed it yet (a crash here is resolved by looking
    /// the machine up by name on the next pass).
    Creating,
    /// Exists on the infrastructure and is booting or installing.
    Provisioning,
    Running,
    /// Exists, powered off.
    Off,
    /// The infrastructure reports an error.
    Failed,
    /// Deleted behind the appliance's back and the cluster's policy is `alert`: left missing.
    Missing,
    /// Being deleted (scale down or cluster deletion).
    Deleting,
}

impl MachinePhase {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            MachinePhase::Creating => "creating",
            MachinePhase::Provisioning => "provisioning",
            MachinePhase::Running => "running",
            MachinePhase::Off => "off",
            MachinePhase::Failed => "failed",
            MachinePhase::Missing => "missing",
            MachinePhase::Deleting => "deleting",
        }
    }
    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => MachinePhase::Creating,
            "provisioning" => MachinePhase::Provisioning,
            "running" => MachinePhase::Running,
            "off" => MachinePhase::Off,
            "failed" => MachinePhase::Failed,
            "missing" => MachinePhase::Missing,
            "deleting" => MachinePhase::Deleting,
            _ => return None,
        })
    }
}

/// A machine of a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MachineRecord {
    pub cluster_id: String,
    /// Unique, stable name; also the host name.
    pub name: String,
    pub pool: String,
    /// Position in the pool (0-based); scale-down removes the highest first.
    pub ordinal: u32,
    pub role: NodeRole,
    /// The infrastructure's id (VM moref, Nova server id, Redfish system id); absent until known.
    pub provider_id: Option<String>,
    pub phase: MachinePhase,
    /// Why the machine is in this phase, when it is not obvious.
    pub reason: String,
    pub addresses: Vec<String>,
    /// Static address from the cloud account's IP pool (`10.20.0.31/24`), when one is used.
    pub static_ip: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When the phase last changed.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// Times the machine was deleted and created again after failing on the infrastructure.
    pub attempts: u32,
}

/// State of a cloud account's last check against its infrastructure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    /// Asked for; the orchestrator has not finished it.
    Pending,
    Ok,
    Failed,
}

impl CheckState {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Pending => "pending",
            CheckState::Ok => "ok",
            CheckState::Failed => "failed",
        }
    }
    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => CheckState::Pending,
            "ok" => CheckState::Ok,
            "failed" => CheckState::Failed,
            _ => return None,
        })
    }
}

/// One pickable placement value (datastore, network, flavor, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlacementOption {
    /// The placement key it fills.
    pub key: String,
    pub value: String,
    pub label: String,
}

/// Result of `POST /v1/cloud-accounts/{id}/validate`, filled in by the orchestrator.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AccountCheckResult {
    pub account_id: String,
    pub state: CheckState,
    /// What answered (product and version), when reached.
    pub endpoint_product: String,
    /// Checks that passed.
    pub checks: Vec<String>,
    /// Why the check failed: names the problem and the fix.
    pub error: String,
    /// The error's class: `credentials`, `permission`, `unreachable`, `not-found`, ...
    pub error_kind: String,
    /// Choices for the placement pickers (filled when the check passed).
    pub placements: Vec<PlacementOption>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub requested_at: Timestamp,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
}
