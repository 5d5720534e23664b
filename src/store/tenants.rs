//! Tenants and projects.

use rusqlite::{params, OptionalExtension, Row};

use super::{bump_version, from_millis, to_millis, Error, ListQuery, Result, Store};
use crate::model::{
    new_id, now, NewProject, NewTenant, Page, Project, Tenant, UpdateProject, UpdateTenant,
    Visibility,
};

const TENANT_COLUMNS: &str =
    "SELECT id, name, description, version, created_at, updated_at FROM tenants";
const PROJECT_COLUMNS: &str =
    "SELECT id, tenant_id, name, description, version, created_at, updated_at FROM projects";

fn tenant_row(r: &Row<'_>) -> rusqlite::Result<Tenant> {
    Ok(Tenant {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        version: r.get(3)?,
        created_at: from_millis(r.get(4)?),
        updated_at: from_millis(r.get(5)?),
    })
}

fn project_row(r: &Row<'_>) -> rusqlite::Result<Project> {
    Ok(Project {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        version: r.get(4)?,
        created_at: from_millis(r.get(5)?),
        updated_at: from_millis(r.get(6)?),
    })
}

impl Store {
    /// Create a tenant.
    pub async fn insert_tenant(&self, new: NewTenant) -> Result<Tenant> {
        self.write(move |tx, _| {
            let t = now();
            let id = new_id();
            tx.execute(
                "INSERT INTO tenants (id, name, description, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                params![id, new.name, new.description, to_millis(t), to_millis(t)],
            )
            .map_err(Error::unique(
                "insert tenant",
                format!("a tenant named {:?} already exists: choose another name", new.name),
            ))?;
            Ok(Tenant {
                id,
                name: new.name,
                description: new.description,
                version: 1,
                created_at: t,
                updated_at: t,
            })
        })
        .await
    }

    /// One tenant by id.
    pub async fn tenant(&self, id: &str) -> Result<Tenant> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(&format!("{TENANT_COLUMNS} WHERE id = ?"), [&id], tenant_row)
                .optional()
                .map_err(Error::sql("read tenant"))?
                .ok_or(Error::NotFound { kind: "tenant" })
        })
        .await
    }

    /// Tenants visible under `v`, optionally filtered by name.
    pub async fn list_tenants(
        &self,
        v: Visibility,
        name: Option<String>,
        after: Option<String>,
        limit: u32,
    ) -> Result<Page<Tenant>> {
        self.read(move |c| {
            let mut q = ListQuery::new();
            if !v.all {
                let marks = vec!["?"; v.tenants.len()].join(",");
                q.raw(format!("id IN ({marks})"), v.tenants.clone());
            }
            q.eq("name", name.as_deref());
            q.page(
                c,
                TENANT_COLUMNS,
                after.as_deref(),
                limit,
                tenant_row,
                |t| t.id.clone(),
            )
        })
        .await
    }

    /// Update a tenant's writable fields, checking the expected version when given.
    pub async fn update_tenant(
        &self,
        id: &str,
        expected: Option<i64>,
        update: UpdateTenant,
    ) -> Result<Tenant> {
        let id = id.to_string();
        self.write(move |tx, _| {
            let version = bump_version(tx, "tenants", &id, expected)?;
            tx.execute(
                "UPDATE tenants SET description = ?, version = ?, updated_at = ? WHERE id = ?",
                params![update.description, version, to_millis(now()), id],
            )
            .map_err(Error::sql("update tenant"))?;
            tx.query_row(&format!("{TENANT_COLUMNS} WHERE id = ?"), [&id], tenant_row)
                .map_err(Error::sql("read tenant"))
        })
        .await
    }

    /// Delete a tenant that holds no projects or users.
    pub async fn delete_tenant(&self, id: &str, expected: Option<i64>) -> Result<()> {
        let id = id.to_string();
        self.write(move |tx, _| {
            bump_version(tx, "tenants", &id, expected)?;
            let projects: i64 = tx
                .query_row("SELECT count(*) FROM projects WHERE tenant_id = ?", [&id], |r| r.get(0))
                .map_err(Error::sql("count projects"))?;
            let users: i64 = tx
                .query_row("SELECT count(*) FROM users WHERE tenant_id = ?", [&id], |r| r.get(0))
                .map_err(Error::sql("count users"))?;
            if projects > 0 || users > 0 {
                return Err(Error::Conflict(format!(
                    "the tenant still has {projects} project(s) and {users} user(s): delete them first"
                )));
            }
            tx.execute("DELETE FROM role_bindings WHERE tenant_id = ?", [&id])
                .map_err(Error::sql("delete tenant bindings"))?;
            tx.execute("DELETE FROM tenants WHERE id = ?", [&id])
                .map_err(Error::sql("delete tenant"))?;
            Ok(())
        })
        .await
    }

    /// Create a project in an existing tenant.
    pub async fn insert_project(&self, new: NewProject) -> Result<Project> {
        self.write(move |tx, _| {
            let t = now();
            let id = new_id();
            tx.execute(
                "INSERT INTO projects (id, tenant_id, name, description, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                params![id, new.tenant_id, new.name, new.description, to_millis(t), to_millis(t)],
            )
            .map_err(Error::unique(
                "insert project",
                format!("the tenant already has a project named {:?}: choose another name", new.name),
            ))?;
            Ok(Project {
                id,
                tenant_id: new.tenant_id,
                name: new.name,
                description: new.description,
                version: 1,
                created_at: t,
                updated_at: t,
            })
        })
        .await
    }

    /// One project by id.
    pub async fn project(&self, id: &str) -> Result<Project> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(
                &format!("{PROJECT_COLUMNS} WHERE id = ?"),
                [&id],
                project_row,
            )
            .optional()
            .map_err(Error::sql("read project"))?
            .ok_or(Error::NotFound { kind: "project" })
        })
        .await
    }

    /// Projects visible under `v` (whose `projects` are project ids, `tenants` tenant ids).
    pub async fn list_projects(
        &self,
        v: Visibility,
        tenant_id: Option<String>,
        name: Option<String>,
        after: Option<String>,
        limit: u32,
    ) -> Result<Page<Project>> {
        self.read(move |c| {
            let mut q = ListQuery::new();
            // A project row's own id is its project id.
            let (cond, params) = super::visibility_clause(&v, "id");
            q.raw(cond, params);
            q.eq("tenant_id", tenant_id.as_deref())
                .eq("name", name.as_deref());
            q.page(
                c,
                PROJECT_COLUMNS,
                after.as_deref(),
                limit,
                project_row,
                |p| p.id.clone(),
            )
        })
        .await
    }

    /// Update a project's writable fields.
    pub async fn update_project(
        &self,
        id: &str,
        expected: Option<i64>,
        update: UpdateProject,
    ) -> Result<Project> {
        let id = id.to_string();
        self.write(move |tx, _| {
            let version = bump_version(tx, "projects", &id, expected)?;
            tx.execute(
                "UPDATE projects SET description = ?, version = ?, updated_at = ? WHERE id = ?",
                params![update.description, version, to_millis(now()), id],
            )
            .map_err(Error::sql("update project"))?;
            tx.query_row(
                &format!("{PROJECT_COLUMNS} WHERE id = ?"),
                [&id],
                project_row,
            )
            .map_err(Error::sql("read project"))
        })
        .await
    }

    /// Delete a project that holds no cloud accounts, profiles or clusters.
    pub async fn delete_project(&self, id: &str, expected: Option<i64>) -> Result<()> {
        let id = id.to_string();
        self.write(move |tx, _| {
            bump_version(tx, "projects", &id, expected)?;
            for (table, what) in [
                ("clusters", "cluster"),
                ("profiles", "profile"),
                ("cloud_accounts", "cloud account"),
            ] {
                let n: i64 = tx
                    .query_row(
                        &format!("SELECT count(*) FROM {table} WHERE project_id = ?"),
                        [&id],
                        |r| r.get(0),
                    )
                    .map_err(Error::sql("count project objects"))?;
                if n > 0 {
                    return Err(Error::Conflict(format!(
                        "the project still has {n} {what}(s): delete them first"
                    )));
                }
            }
            tx.execute("DELETE FROM role_bindings WHERE project_id = ?", [&id])
                .map_err(Error::sql("delete project bindings"))?;
            tx.execute("DELETE FROM projects WHERE id = ?", [&id])
                .map_err(Error::sql("delete project"))?;
            Ok(())
        })
        .await
    }
}
