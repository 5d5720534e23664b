//! Tenants, projects, users, role bindings and API tokens.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{check_id, check_name, check_text, Invalid, Role, Timestamp};

/// Shortest password accepted for an account.
pub const MIN_PASSWORD: usize = 12;
/// Longest password accepted (argon2 input is bounded so a huge body cannot burn CPU).
pub const MAX_PASSWORD: usize = 1024;

/// Check a new password's length.
pub fn check_password(field: &str, password: &str) -> Result<(), Invalid> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        return Err(Invalid::new(
            field,
            format!("is too short: use at least {MIN_PASSWORD} characters"),
        ));
    }
    if password.len() > MAX_PASSWORD {
        return Err(Invalid::new(
            field,
            format!("is too long: use at most {MAX_PASSWORD} bytes"),
        ));
    }
    Ok(())
}

/// A tenant: an isolated organisation holding projects and users.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub description: String,
    pub version: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// Body of `POST /v1/tenants`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// DNS-label name, unique on the appliance.
    pub name: String,
    #[serde(default)]
    pub description: String,
}

impl NewTenant {
    /// Validate every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_name("name", &self.name)?;
        check_text("description", &self.description, 1000)
    }
}

/// Body of `PUT /v1/tenants/{id}`: the writable fields.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    pub description: String,
}

impl UpdateTenant {
    /// Validate every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_text("description", &self.description, 1000)
    }
}

/// A project inside a tenant; cloud accounts, profiles and clusters belong to one.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Project {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    pub version: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// Body of `POST /v1/projects`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    pub tenant_id: String,
    /// DNS-label name, unique within the tenant.
    pub name: String,
    #[serde(default)]
    pub description: String,
}

impl NewProject {
    /// Validate every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_id("tenant_id", &self.tenant_id)?;
        check_name("name", &self.name)?;
        check_text("description", &self.description, 1000)
    }
}

/// Body of `PUT /v1/projects/{id}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    pub description: String,
}

impl UpdateProject {
    /// Validate every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_text("description", &self.description, 1000)
    }
}

/// A user account (never with its password hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    pub id: String,
    pub username: String,
    pub display_name: String,
    /// Home tenant; absent for system users.
    pub tenant_id: Option<String>,
    pub disabled: bool,
    /// Locked by repeated failed logins until this time.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub locked_until: Option<Timestamp>,
    pub version: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// Body of `POST /v1/users`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// DNS-label login name, unique on the appliance.
    pub username: String,
    #[serde(default)]
    pub display_name: String,
    /// Initial password, at least 12 characters.
    pub password: String,
    /// Home tenant; tenant admins can only create users in their own tenant.
    pub tenant_id: Option<String>,
}

impl NewUser {
    /// Validate every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_name("username", &self.username)?;
        check_text("display_name", &self.display_name, 200)?;
        check_password("password", &self.password)?;
        if let Some(t) = &self.tenant_id {
            check_id("tenant_id", t)?;
        }
        Ok(())
    }
}

/// Body of `PUT /v1/users/{id}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub display_name: String,
    /// A disabled user cannot log in and its tokens stop working.
    pub disabled: bool,
    /// Set a new password (admins resetting another user's password).
    pub password: Option<String>,
}

impl UpdateUser {
    /// Validate every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_text("display_name", &self.display_name, 200)?;
        if let Some(p) = &self.password {
            check_password("password", p)?;
        }
        Ok(())
    }
}

/// Body of `POST /v1/me/password`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    pub current_password: String,
    pub new_password: String,
}

/// A role granted to a user at a scope.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RoleBinding {
    pub id: String,
    pub user_id: String,
    pub role: Role,
    pub tenant_id: Option<String>,
    pub project_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// Body of `POST /v1/role-bindings`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRoleBinding {
    pub user_id: String,
    pub role: Role,
    /// Required for tenant-admin; derived from the project for project roles.
    pub tenant_id: Option<String>,
    /// Required for project-editor and project-viewer.
    pub project_id: Option<String>,
}

impl NewRoleBinding {
    /// Validate every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_id("user_id", &self.user_id)?;
        if let Some(t) = &self.tenant_id {
            check_id("tenant_id", t)?;
        }
        if let Some(p) = &self.project_id {
            check_id("project_id", p)?;
        }
        super::check_role_scope(
            self.role,
            self.tenant_id.as_deref(),
            self.project_id.as_deref(),
        )
    }
}

/// An API token (its secret is shown once, at creation, and stored only as a hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiToken {
    pub id: String,
    pub user_id: String,
    pub name: String,
    /// The first characters of the secret, to recognise it in a list.
    pub prefix: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<Timestamp>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// Body of `POST /v1/tokens`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiToken {
    pub name: String,
    /// Lifetime in days, 1 to 366 (default 90).
    pub expires_in_days: Option<u32>,
}

impl NewApiToken {
    /// Validate every field; returns the lifetime in days.
    pub fn validate(&self) -> Result<u32, Invalid> {
        check_name("name", &self.name)?;
        match self.expires_in_days {
            None => Ok(90),
            Some(d) if (1..=366).contains(&d) => Ok(d),
            Some(_) => Err(Invalid::new("expires_in_days", "must be between 1 and 366")),
        }
    }
}

/// Answer to `POST /v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedApiToken {
    pub token: ApiToken,
    /// Send as `Authorization: Bearer <secret>`. Not retrievable later.
    pub secret: String,
}
