//! Pack sources: external OCI registries a tenant registers so that the packs found there
//! (repositories under a prefix, one tag per version) show up beside the local ones.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{check_id, check_name, Invalid, Timestamp};

/// A registered external registry (its credentials are never returned).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PackSource {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// `https://host[:port]` of the registry.
    pub url: String,
    /// Repository prefix under which packs live: `<prefix>/<pack name>`, tagged by version.
    pub prefix: String,
    /// PEM bundle of CAs trusted for the registry (empty: the system's roots).
    pub ca_bundle: String,
    /// True when credentials are stored (sealed at rest, never returned).
    pub has_credentials: bool,
    /// When packs were last read from the registry, if ever.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub synced_at: Option<Timestamp>,
    /// Why the last read failed (empty when it succeeded).
    pub sync_error: String,
    pub version: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// User name and password for a pack source's registry; sealed at rest, never returned.
#[derive(Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

// Credentials must never reach a log line, even through `{:?}`.
impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryCredentials(<redacted>)")
    }
}

/// Body of `POST /v1/pack-sources`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPackSource {
    pub tenant_id: String,
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub credentials: Option<RegistryCredentials>,
    #[serde(default)]
    pub ca_bundle: String,
}

/// Body of `PUT /v1/pack-sources/{id}`; credentials are replaced only when given.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePackSource {
    pub url: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub credentials: Option<RegistryCredentials>,
    #[serde(default)]
    pub ca_bundle: String,
}

/// The host (`host[:port]`) of a validated pack source URL.
pub fn pack_source_host(url: &str) -> &str {
    url.trim_start_matches("https://").trim_end_matches('/')
}

fn check_url(url: &str) -> Result<(), Invalid> {
    let host = url
        .strip_prefix("https://")
        .map(|h| h.trim_end_matches('/'));
    let ok = host.is_some_and(|h| {
        !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    });
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            "url",
            format!("{url:?} is not a registry URL: give https://host[:port] without a path (registries are reached over HTTPS only)"),
        ))
    }
}

fn check_prefix(prefix: &str) -> Result<(), Invalid> {
    let ok = prefix.is_empty()
        || (prefix.len() <= 200
            && prefix.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'.' | b'_' | b'-')
                    })
            }));
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            "prefix",
            format!("{prefix:?} is not a repository path: give lower-case components separated by / (e.g. \"platform/packs\"), or nothing"),
        ))
    }
}

fn check_credentials(c: &Option<RegistryCredentials>) -> Result<(), Invalid> {
    match c {
        Some(c) if c.username.is_empty() || c.password.is_empty() => Err(Invalid::new(
            "credentials",
            "needs both username and password (omit credentials for an anonymous registry)",
        )),
        Some(c) if c.username.len() > 256 || c.password.len() > 4096 => {
            Err(Invalid::new("credentials", "are too long"))
        }
        _ => Ok(()),
    }
}

fn check_ca(pem: &str) -> Result<(), Invalid> {
    if pem.trim().is_empty() {
        return Ok(());
    }
    if pem.len() > 256 * 1024 || !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(Invalid::new(
            "ca_bundle",
            "is not a PEM certificate bundle of at most 256 KiB (expected -----BEGIN CERTIFICATE----- blocks)",
        ));
    }
    Ok(())
}

impl NewPackSource {
    /// Validate every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_id("tenant_id", &self.tenant_id)?;
        check_name("name", &self.name)?;
        check_url(&self.url)?;
        check_prefix(&self.prefix)?;
        check_credentials(&self.credentials)?;
        check_ca(&self.ca_bundle)
    }
}

impl UpdatePackSource {
    /// Validate every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_url(&self.url)?;
        check_prefix(&self.prefix)?;
        check_credentials(&self.credentials)?;
        check_ca(&self.ca_bundle)
    }
}

/// A pack found in a pack source, as the sync records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePack {
    pub name: String,
    pub version: String,
    pub layer_type: super::LayerType,
    pub digest: String,
    pub description: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_url_prefix_and_credentials() {
        let mut s = NewPackSource {
            tenant_id: crate::model::new_id(),
            name: "partner".into(),
            url: "https://registry.example:5000".into(),
            prefix: "platform/packs".into(),
            credentials: None,
            ca_bundle: String::new(),
        };
        assert!(s.validate().is_ok());
        s.url = "http://registry.example".into();
        assert_eq!(s.validate().map_err(|e| e.field), Err("url".into()));
        s.url = "https://registry.example/v2".into();
        assert_eq!(s.validate().map_err(|e| e.field), Err("url".into()));
        s.url = "https://registry.example".into();
        s.prefix = "Platform".into();
        assert_eq!(s.validate().map_err(|e| e.field), Err("prefix".into()));
        s.prefix = String::new();
        s.credentials = Some(RegistryCredentials {
            username: "u".into(),
            password: String::new(),
        });
        assert_eq!(s.validate().map_err(|e| e.field), Err("credentials".into()));
        assert!(!format!("{:?}", s.credentials).contains("password"));
    }
}
