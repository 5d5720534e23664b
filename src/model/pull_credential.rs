//! Read-only registry credentials of a cluster: what its nodes and agent pull packs and images
//! with. They authenticate under `/v2/` only, for GET and HEAD only, and see the cluster's
//! tenant's repositories and `shared/` (the registry's read rule for a project viewer).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Invalid, Timestamp};

/// Prefix of a pull credential's secret (API tokens have another), so the appliance can tell
/// them apart before any database read.
pub const PULL_SECRET_PREFIX: &str = "ppl_";
/// Default lifetime of a pull credential.
pub const PULL_CREDENTIAL_DEFAULT_DAYS: u32 = 365;
/// Longest lifetime of a pull credential.
pub const PULL_CREDENTIAL_MAX_DAYS: u32 = 3650;

/// A cluster's pull credential (never its secret, which is shown once at creation).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PullCredential {
    pub id: String,
    pub cluster_id: String,
    pub tenant_id: String,
    /// The user name registry clients send with the secret (any name works; this one is
    /// recorded in the audit log as the actor).
    pub username: String,
    /// First characters of the secret, to recognise it.
    pub prefix: String,
    /// Username of whoever minted it.
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<Timestamp>,
}

/// Answer of `POST /v1/clusters/{id}/pull-credentials`: the credential and its secret.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NewPullCredentialSecret {
    #[serde(flatten)]
    pub credential: PullCredential,
    /// The password for registry clients (HTTP Basic with `username`, or a Bearer token).
    /// Shown once.
    pub secret: String,
}

/// Body of `POST /v1/clusters/{id}/pull-credentials` (may be empty).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPullCredential {
    /// Lifetime in days, 1 to 3650; default 365.
    pub expires_in_days: Option<u32>,
}

impl NewPullCredential {
    /// The lifetime in days, validated.
    pub fn days(&self) -> Result<u32, Invalid> {
        match self.expires_in_days {
            None => Ok(PULL_CREDENTIAL_DEFAULT_DAYS),
            Some(d) if (1..=PULL_CREDENTIAL_MAX_DAYS).contains(&d) => Ok(d),
            Some(_) => Err(Invalid::new(
                "expires_in_days",
                format!("must be between 1 and {PULL_CREDENTIAL_MAX_DAYS}"),
            )),
        }
    }
}
