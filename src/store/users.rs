//! Users, role bindings, and the grants an authenticated principal carries.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{bump_version, from_millis, to_millis, Error, ListQuery, Result, Store};
use crate::model::{
    new_id, now, BindingScope, Grant, NewRoleBinding, Page, Principal, Role, RoleBinding, User,
    Visibility,
};

const USER_COLUMNS: &str = "SELECT id, username, display_name, tenant_id, disabled, locked_until, version, created_at, updated_at FROM users";
const BINDING_COLUMNS: &str =
    "SELECT id, user_id, role, tenant_id, project_id, created_at FROM role_bindings";

fn user_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        username: r.get(1)?,
        display_name: r.get(2)?,
        tenant_id: r.get(3)?,
        disabled: r.get(4)?,
        locked_until: r.get::<_, Option<i64>>(5)?.map(from_millis),
        version: r.get(6)?,
        created_at: from_millis(r.get(7)?),
        updated_at: from_millis(r.get(8)?),
    })
}

fn binding_row(r: &Row<'_>) -> rusqlite::Result<RoleBinding> {
    let role: String = r.get(2)?;
    Ok(RoleBinding {
        id: r.get(0)?,
        user_id: r.get(1)?,
        role: Role::parse(&role).unwrap_or(Role::ProjectViewer),
        tenant_id: r.get(3)?,
        project_id: r.get(4)?,
        created_at: from_millis(r.get(5)?),
    })
}

/// A new user's row, as written.
pub(crate) struct UserRow<'a> {
    pub username: &'a str,
    pub display_name: &'a str,
    pub password_hash: &'a str,
    pub tenant_id: Option<&'a str>,
}

/// Insert a user inside a transaction; names a taken username.
pub(crate) fn insert_user_tx(conn: &Connection, u: &UserRow<'_>) -> Result<User> {
    let t = now();
    let id = new_id();
    conn.execute(
        "INSERT INTO users (id, username, display_name, password_hash, tenant_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        params![id, u.username, u.display_name, u.password_hash, u.tenant_id, to_millis(t), to_millis(t)],
    )
    .map_err(Error::unique(
        "insert user",
        format!("a user named {:?} already exists: choose another username", u.username),
    ))?;
    conn.query_row(&format!("{USER_COLUMNS} WHERE id = ?"), [&id], user_row)
        .map_err(Error::sql("read user"))
}

/// Insert a binding inside a transaction.
pub(crate) fn insert_binding_tx(conn: &Connection, b: &NewRoleBinding) -> Result<RoleBinding> {
    let id = new_id();
    let t = now();
    // UNIQUE does not treat NULLs as equal, so look for an identical binding first.
    let existing: Option<String> = conn
        .query_row(
            "SELECT id FROM role_bindings WHERE user_id = ? AND role = ? AND tenant_id IS ? AND project_id IS ?",
            params![b.user_id, b.role.as_str(), b.tenant_id, b.project_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(Error::sql("find binding"))?;
    if existing.is_some() {
        return Err(Error::Conflict(
            "the user already has this role at this scope".into(),
        ));
    }
    conn.execute(
        "INSERT INTO role_bindings (id, user_id, role, tenant_id, project_id, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        params![id, b.user_id, b.role.as_str(), b.tenant_id, b.project_id, to_millis(t)],
    )
    .map_err(Error::sql("insert binding"))?;
    Ok(RoleBinding {
        id,
        user_id: b.user_id.clone(),
        role: b.role,
        tenant_id: b.tenant_id.clone(),
        project_id: b.project_id.clone(),
        created_at: t,
    })
}

/// Load the principal of an enabled user: its identity and every grant.
pub(crate) fn principal_of(conn: &Connection, user_id: &str) -> Result<Option<Principal>> {
    let row: Option<(String, Option<String>, bool)> = conn
        .query_row(
            "SELECT username, tenant_id, disabled FROM users WHERE id = ?",
            [user_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(Error::sql("read user"))?;
    let Some((username, tenant_id, disabled)) = row else {
        return Ok(None);
    };
    if disabled {
        return Ok(None);
    }
    let mut stmt = conn
        .prepare_cached(
            "SELECT b.role, b.tenant_id, b.project_id, p.tenant_id FROM role_bindings b
             LEFT JOIN projects p ON p.id = b.project_id WHERE b.user_id = ?",
        )
        .map_err(Error::sql("read grants"))?;
    let grants = stmt
        .query_map([user_id], |r| {
            let role: String = r.get(0)?;
            let tenant: Option<String> = r.get(1)?;
            let project: Option<String> = r.get(2)?;
            let project_tenant: Option<String> = r.get(3)?;
            Ok((role, tenant, project, project_tenant))
        })
        .map_err(Error::sql("read grants"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(Error::sql("read grants"))?
        .into_iter()
        .filter_map(|(role, tenant, project, project_tenant)| {
            let role = Role::parse(&role)?;
            let scope = match (role, tenant, project, project_tenant) {
                (Role::SystemAdmin, _, _, _) => BindingScope::System,
                (Role::TenantAdmin, Some(t), _, _) => BindingScope::Tenant(t),
                (_, _, Some(p), Some(t)) => BindingScope::Project {
                    tenant: t,
                    project: p,
                },
                _ => return None,
            };
            Some(Grant { role, scope })
        })
        .collect();
    Ok(Some(Principal {
        user_id: user_id.to_string(),
        username,
        tenant_id,
        grants,
        token_id: None,
    }))
}

impl Store {
    /// Create a user with an already hashed password.
    pub async fn insert_user(
        &self,
        username: String,
        display_name: String,
        password_hash: String,
        tenant_id: Option<String>,
    ) -> Result<User> {
        self.write(move |tx, _| {
            insert_user_tx(
                tx,
                &UserRow {
                    username: &username,
                    display_name: &display_name,
                    password_hash: &password_hash,
                    tenant_id: tenant_id.as_deref(),
                },
            )
        })
        .await
    }

    /// Create a system admin (used by `palisade admin create-user`).
    pub async fn insert_system_admin(
        &self,
        username: String,
        password_hash: String,
    ) -> Result<User> {
        self.write(move |tx, _| {
            let user = insert_user_tx(
                tx,
                &UserRow {
                    username: &username,
                    display_name: "",
                    password_hash: &password_hash,
                    tenant_id: None,
                },
            )?;
            insert_binding_tx(
                tx,
                &NewRoleBinding {
                    user_id: user.id.clone(),
                    role: Role::SystemAdmin,
                    tenant_id: None,
                    project_id: None,
                },
            )?;
            Ok(user)
        })
        .await
    }

    /// One user by id.
    pub async fn user(&self, id: &str) -> Result<User> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(&format!("{USER_COLUMNS} WHERE id = ?"), [&id], user_row)
                .optional()
                .map_err(Error::sql("read user"))?
                .ok_or(Error::NotFound { kind: "user" })
        })
        .await
    }

    /// One user by username.
    pub async fn user_by_name(&self, username: &str) -> Result<User> {
        let name = username.to_string();
        self.read(move |c| {
            c.query_row(
                &format!("{USER_COLUMNS} WHERE username = ?"),
                [&name],
                user_row,
            )
            .optional()
            .map_err(Error::sql("read user"))?
            .ok_or(Error::NotFound { kind: "user" })
        })
        .await
    }

    /// Users: all (`v.all`), those of `v.tenants`, or only `self_id` otherwise.
    pub async fn list_users(
        &self,
        v: Visibility,
        self_id: String,
        tenant_id: Option<String>,
        after: Option<String>,
        limit: u32,
    ) -> Result<Page<User>> {
        self.read(move |c| {
            let mut q = ListQuery::new();
            if !v.all {
                let mut params = v.tenants.clone();
                params.push(self_id.clone());
                let marks = vec!["?"; v.tenants.len()].join(",");
                q.raw(format!("(tenant_id IN ({marks}) OR id = ?)"), params);
            }
            q.eq("tenant_id", tenant_id.as_deref());
            q.page(c, USER_COLUMNS, after.as_deref(), limit, user_row, |u| {
                u.id.clone()
            })
        })
        .await
    }

    /// Update a user's display name, disabled flag and (when given) password hash.
    pub async fn update_user(
        &self,
        id: &str,
        expected: Option<i64>,
        display_name: String,
        disabled: bool,
        password_hash: Option<String>,
    ) -> Result<User> {
        let id = id.to_string();
        self.write(move |tx, _| {
            let version = bump_version(tx, "users", &id, expected)?;
            if disabled {
                keep_a_system_admin(tx, &id)?;
            }
            tx.execute(
                "UPDATE users SET display_name = ?, disabled = ?, version = ?, updated_at = ? WHERE id = ?",
                params![display_name, disabled, version, to_millis(now()), id],
            )
            .map_err(Error::sql("update user"))?;
            if let Some(hash) = password_hash {
                set_password_tx(tx, &id, &hash)?;
            }
            if disabled {
                tx.execute("DELETE FROM sessions WHERE user_id = ?", [&id])
                    .map_err(Error::sql("end sessions"))?;
            }
            tx.query_row(&format!("{USER_COLUMNS} WHERE id = ?"), [&id], user_row)
                .map_err(Error::sql("read user"))
        })
        .await
    }

    /// Set a user's password by username, clear its lockout and end its sessions
    /// (`palisade admin reset-password`).
    pub async fn reset_password(&self, username: &str, password_hash: String) -> Result<User> {
        let name = username.to_string();
        self.write(move |tx, _| {
            let id: String = tx
                .query_row("SELECT id FROM users WHERE username = ?", [&name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(Error::sql("find user"))?
                .ok_or(Error::NotFound { kind: "user" })?;
            set_password_tx(tx, &id, &password_hash)?;
            tx.query_row(&format!("{USER_COLUMNS} WHERE id = ?"), [&id], user_row)
                .map_err(Error::sql("read user"))
        })
        .await
    }

    /// Delete a user with its bindings, sessions and tokens.
    pub async fn delete_user(&self, id: &str, expected: Option<i64>) -> Result<()> {
        let id = id.to_string();
        self.write(move |tx, _| {
            bump_version(tx, "users", &id, expected)?;
            keep_a_system_admin(tx, &id)?;
            tx.execute("DELETE FROM users WHERE id = ?", [&id])
                .map_err(Error::sql("delete user"))?;
            Ok(())
        })
        .await
    }

    /// The principal for a user id (None when the user is gone or disabled).
    pub async fn principal(&self, user_id: &str) -> Result<Option<Principal>> {
        let id = user_id.to_string();
        self.read(move |c| principal_of(c, &id)).await
    }

    /// Create a role binding.
    pub async fn insert_binding(&self, b: NewRoleBinding) -> Result<RoleBinding> {
        self.write(move |tx, _| insert_binding_tx(tx, &b)).await
    }

    /// One binding by id.
    pub async fn binding(&self, id: &str) -> Result<RoleBinding> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(
                &format!("{BINDING_COLUMNS} WHERE id = ?"),
                [&id],
                binding_row,
            )
            .optional()
            .map_err(Error::sql("read binding"))?
            .ok_or(Error::NotFound {
                kind: "role binding",
            })
        })
        .await
    }

    /// Bindings: all, those inside `v.tenants` (tenant- or project-scoped), or the caller's own.
    pub async fn list_bindings(
        &self,
        v: Visibility,
        self_id: String,
        user_id: Option<String>,
        after: Option<String>,
        limit: u32,
    ) -> Result<Page<RoleBinding>> {
        self.read(move |c| {
            let mut q = ListQuery::new();
            if !v.all {
                let marks = vec!["?"; v.tenants.len()].join(",");
                let mut params = v.tenants.clone();
                params.extend(v.tenants.iter().cloned());
                params.push(self_id.clone());
                q.raw(
                    format!(
                        "(tenant_id IN ({marks}) OR project_id IN (SELECT id FROM projects WHERE tenant_id IN ({marks})) OR user_id = ?)"
                    ),
                    params,
                );
            }
            q.eq("user_id", user_id.as_deref());
            q.page(c, BINDING_COLUMNS, after.as_deref(), limit, binding_row, |b| b.id.clone())
        })
        .await
    }

    /// Delete a binding.
    pub async fn delete_binding(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.write(move |tx, _| {
            let binding: Option<(String, String)> = tx
                .query_row(
                    "SELECT role, user_id FROM role_bindings WHERE id = ?",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(Error::sql("read binding"))?;
            if let Some((role, user_id)) = binding {
                if role == Role::SystemAdmin.as_str() {
                    keep_a_system_admin(tx, &user_id)?;
                }
            }
            let n = tx
                .execute("DELETE FROM role_bindings WHERE id = ?", [&id])
                .map_err(Error::sql("delete binding"))?;
            if n == 0 {
                return Err(Error::NotFound {
                    kind: "role binding",
                });
            }
            Ok(())
        })
        .await
    }

    /// True if the user holds the system-admin role.
    pub async fn is_system_admin(&self, user_id: &str) -> Result<bool> {
        let id = user_id.to_string();
        self.read(move |c| holds_system_admin(c, &id)).await
    }

    /// True when at least one user exists (setup is then closed).
    pub async fn has_users(&self) -> Result<bool> {
        self.read(|c| {
            c.query_row("SELECT EXISTS (SELECT 1 FROM users)", [], |r| r.get(0))
                .map_err(Error::sql("count users"))
        })
        .await
    }
}

/// True if `user_id` holds the system-admin role.
fn holds_system_admin(conn: &Connection, user_id: &str) -> Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM role_bindings WHERE user_id = ? AND role = 'system-admin')",
        [user_id],
        |r| r.get(0),
    )
    .map_err(Error::sql("read roles"))
}

/// Refuse a change that would leave no enabled system admin (`user_id` is about to lose the
/// role, be disabled or be deleted).
fn keep_a_system_admin(conn: &Connection, user_id: &str) -> Result<()> {
    if !holds_system_admin(conn, user_id)? {
        return Ok(());
    }
    let others: i64 = conn
        .query_row(
            "SELECT count(DISTINCT b.user_id) FROM role_bindings b JOIN users u ON u.id = b.user_id
             WHERE b.role = 'system-admin' AND u.disabled = 0 AND u.id != ?",
            [user_id],
            |r| r.get(0),
        )
        .map_err(Error::sql("count system admins"))?;
    if others == 0 {
        return Err(Error::Conflict(
            "this is the last enabled system admin: grant system-admin to another user first"
                .into(),
        ));
    }
    Ok(())
}

/// Replace a password hash, clear lockout state and end existing sessions.
pub(crate) fn set_password_tx(conn: &Connection, id: &str, hash: &str) -> Result<()> {
    conn.execute(
        "UPDATE users SET password_hash = ?, failed_logins = 0, locked_until = NULL, updated_at = ? WHERE id = ?",
        params![hash, to_millis(now()), id],
    )
    .map_err(Error::sql("set password"))?;
    conn.execute("DELETE FROM sessions WHERE user_id = ?", [id])
        .map_err(Error::sql("end sessions"))?;
    Ok(())
}
