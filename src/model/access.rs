//! Roles, role bindings and the access decisions made from them.
//!
//! The rule this module enforces: an object is either visible to a principal or it does not
//! exist for them (the API answers 404, never 403, for objects outside their scope); a visible
//! object may still be read-only (403).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Invalid;

/// A role, granted to a user by a binding at a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, everywhere. Bound without scope.
    SystemAdmin,
    /// Everything inside one tenant: projects, users, bindings, and all project objects.
    TenantAdmin,
    /// Read and write the objects of one project.
    ProjectEditor,
    /// Read the objects of one project.
    ProjectViewer,
}

impl Role {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::SystemAdmin => "system-admin",
            Role::TenantAdmin => "tenant-admin",
            Role::ProjectEditor => "project-editor",
            Role::ProjectViewer => "project-viewer",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "system-admin" => Some(Role::SystemAdmin),
            "tenant-admin" => Some(Role::TenantAdmin),
            "project-editor" => Some(Role::ProjectEditor),
            "project-viewer" => Some(Role::ProjectViewer),
            _ => None,
        }
    }
}

/// Where a binding applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BindingScope {
    System,
    Tenant(String),
    Project { tenant: String, project: String },
}

/// One role of one user at one scope, as the access checks need it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    pub role: Role,
    pub scope: BindingScope,
}

/// Which role a binding's scope requires, checked when a binding is created.
pub fn check_role_scope(
    role: Role,
    tenant_id: Option<&str>,
    project_id: Option<&str>,
) -> Result<(), Invalid> {
    match (role, tenant_id, project_id) {
        (Role::SystemAdmin, None, None) => Ok(()),
        (Role::SystemAdmin, _, _) => Err(Invalid::new(
            "role",
            "system-admin is bound without tenant_id or project_id",
        )),
        (Role::TenantAdmin, Some(_), None) => Ok(()),
        (Role::TenantAdmin, _, _) => Err(Invalid::new(
            "tenant_id",
            "tenant-admin needs tenant_id and no project_id",
        )),
        (Role::ProjectEditor | Role::ProjectViewer, _, Some(_)) => Ok(()),
        (Role::ProjectEditor | Role::ProjectViewer, _, None) => {
            Err(Invalid::new("project_id", "project roles need project_id"))
        }
    }
}

/// The authenticated caller and everything it has been granted.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub username: String,
    /// The user's home tenant; `None` for system users.
    pub tenant_id: Option<String>,
    pub grants: Vec<Grant>,
    /// Set when the caller authenticated with an API token (rather than a console session).
    pub token_id: Option<String>,
}

/// What a list query may return for a principal: all rows, or rows of these tenants/projects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Visibility {
    pub all: bool,
    pub tenants: Vec<String>,
    pub projects: Vec<String>,
}

impl Principal {
    /// True for a system admin.
    pub fn is_system_admin(&self) -> bool {
        self.grants.iter().any(|g| g.role == Role::SystemAdmin)
    }

    /// True if the caller administers `tenant` (as tenant admin or system admin).
    pub fn administers_tenant(&self, tenant: &str) -> bool {
        self.is_system_admin()
            || self
                .grants
                .iter()
                .any(|g| matches!(&g.scope, BindingScope::Tenant(t) if t == tenant))
    }

    /// Tenants this caller administers as tenant admin (empty for system admins, who administer all).
    pub fn administered_tenants(&self) -> Vec<String> {
        self.grants
            .iter()
            .filter_map(|g| match &g.scope {
                BindingScope::Tenant(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    /// True if the tenant exists for the caller: it administers it or holds a role in one of its projects.
    pub fn sees_tenant(&self, tenant: &str) -> bool {
        self.administers_tenant(tenant)
            || self
                .grants
                .iter()
                .any(|g| matches!(&g.scope, BindingScope::Project { tenant: t, .. } if t == tenant))
    }

    /// True if the caller may read objects of `project` (in `tenant`).
    pub fn reads_project(&self, tenant: &str, project: &str) -> bool {
        self.administers_tenant(tenant)
            || self.grants.iter().any(
                |g| matches!(&g.scope, BindingScope::Project { project: p, .. } if p == project),
            )
    }

    /// True if the caller may write objects of `project` (in `tenant`).
    pub fn edits_project(&self, tenant: &str, project: &str) -> bool {
        self.administers_tenant(tenant)
            || self.grants.iter().any(|g| {
                g.role == Role::ProjectEditor
                    && matches!(&g.scope, BindingScope::Project { project: p, .. } if p == project)
            })
    }

    /// Rows of project-scoped tables that this caller may see.
    pub fn project_visibility(&self) -> Visibility {
        if self.is_system_admin() {
            return Visibility {
                all: true,
                ..Default::default()
            };
        }
        let mut v = Visibility::default();
        for g in &self.grants {
            match &g.scope {
                BindingScope::System => {}
                BindingScope::Tenant(t) => v.tenants.push(t.clone()),
                BindingScope::Project { project, .. } => v.projects.push(project.clone()),
            }
        }
        v
    }

    /// Tenants this caller may see (as rows of the tenants table).
    pub fn tenant_visibility(&self) -> Visibility {
        if self.is_system_admin() {
            return Visibility {
                all: true,
                ..Default::default()
            };
        }
        let mut tenants: Vec<String> = self
            .grants
            .iter()
            .filter_map(|g| match &g.scope {
                BindingScope::System => None,
                BindingScope::Tenant(t) | BindingScope::Project { tenant: t, .. } => {
                    Some(t.clone())
                }
            })
            .collect();
        tenants.sort();
        tenants.dedup();
        Visibility {
            all: false,
            tenants,
            projects: vec![],
        }
    }
}

/// An object that belongs to one project of one tenant.
pub trait ProjectScoped {
    /// Id of the owning tenant.
    fn tenant_id(&self) -> &str;
    /// Id of the owning project.
    fn project_id(&self) -> &str;
}

macro_rules! project_scoped {
    ($($t:ty),*) => {$(
        impl ProjectScoped for $t {
            fn tenant_id(&self) -> &str { &self.tenant_id }
            fn project_id(&self) -> &str { &self.project_id }
        }
    )*};
}
project_scoped!(super::CloudAccount, super::Profile, super::Cluster);

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(grants: Vec<Grant>) -> Principal {
        Principal {
            user_id: "u".into(),
            username: "u".into(),
            tenant_id: None,
            grants,
            token_id: None,
        }
    }

    fn project(role: Role, t: &str, p: &str) -> Grant {
        Grant {
            role,
            scope: BindingScope::Project {
                tenant: t.into(),
                project: p.into(),
            },
        }
    }

    #[test]
    fn viewer_reads_but_does_not_edit_its_project_only() {
        let p = principal(vec![project(Role::ProjectViewer, "t1", "p1")]);
        assert!(p.reads_project("t1", "p1"));
        assert!(!p.edits_project("t1", "p1"));
        assert!(!p.reads_project("t1", "p2"));
        assert!(p.sees_tenant("t1"));
        assert!(!p.administers_tenant("t1"));
        assert!(!p.sees_tenant("t2"));
    }

    #[test]
    fn tenant_admin_edits_every_project_of_its_tenant_and_nothing_else() {
        let p = principal(vec![Grant {
            role: Role::TenantAdmin,
            scope: BindingScope::Tenant("t1".into()),
        }]);
        assert!(p.edits_project("t1", "any"));
        assert!(!p.reads_project("t2", "any"));
        assert_eq!(p.tenant_visibility().tenants, vec!["t1".to_string()]);
    }

    #[test]
    fn role_scope_rules() {
        assert!(check_role_scope(Role::SystemAdmin, None, None).is_ok());
        assert!(check_role_scope(Role::SystemAdmin, Some("t"), None).is_err());
        assert!(check_role_scope(Role::TenantAdmin, None, None).is_err());
        assert!(check_role_scope(Role::ProjectViewer, Some("t"), None).is_err());
        assert!(check_role_scope(Role::ProjectEditor, None, Some("p")).is_ok());
    }
}
