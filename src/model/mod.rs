//! Domain types and their validation. Pure: no I/O, no SQL, no HTTP.
//!
//! Every other module may use these types; this module depends on nothing of ours.
//! Request types (`New*`, `Update*`) validate themselves into specs that the store
//! writes; views are what the API returns.

mod access;
mod cluster;
mod identity;
mod machine;
mod pack_source;
mod profile;
mod pull_credential;
mod validate;

pub use access::*;
pub use cluster::*;
pub use identity::*;
pub use machine::*;
pub use pack_source::*;
pub use profile::*;
pub use pull_credential::*;
pub use validate::*;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Seconds since the Unix epoch, rendered as RFC 3339 in views.
pub type Timestamp = time::OffsetDateTime;

/// The current time, truncated to milliseconds so that stored and returned values agree.
pub fn now() -> Timestamp {
    let t = time::OffsetDateTime::now_utc();
    t.replace_nanosecond((t.nanosecond() / 1_000_000) * 1_000_000)
        .unwrap_or(t)
}

/// A new random, time-ordered identifier (UUIDv7): ordering ids orders by creation.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// One page of a list, with the cursor for the next page when there is one.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Page<T> {
    /// The items of this page, ordered by id (creation order).
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// The largest page a client may ask for.
pub const MAX_PAGE: u32 = 500;

/// Validate a list route's `limit` parameter (1 to 500, default 100).
pub fn page_limit(limit: Option<u32>) -> Result<u32, Invalid> {
    match limit {
        None => Ok(100),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(Invalid::new("limit", "must be between 1 and 500")),
    }
}

/// Severity of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
    /// Parse the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "error" => Some(Severity::Error),
            _ => None,
        }
    }
}

/// Something that happened to one object, for operators to read.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Event {
    pub id: String,
    /// Kind of the object: `cluster`, `cloud-account`, `profile`, ...
    pub object_kind: String,
    pub object_id: String,
    pub tenant_id: Option<String>,
    pub project_id: Option<String>,
    pub severity: Severity,
    pub message: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// A pack in the local repository (read-only here; bundle import fills the table).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Pack {
    pub id: String,
    pub name: String,
    pub version: String,
    pub layer_type: LayerType,
    /// sha256 digest of the pack's OCI manifest.
    pub digest: String,
    pub description: String,
    /// The pack source (external registry) it was found in; absent for the local repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}
