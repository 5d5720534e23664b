//! Pull credentials of clusters: minted, listed, revoked, and resolved into the read-only
//! principal the registry authorises. Secrets are stored only as SHA-256 digests.

use rusqlite::{params, OptionalExtension, Row};
use time::Duration;

use super::{from_millis, to_millis, Error, Result, Store};
use crate::model::{
    new_id, now, BindingScope, Grant, Principal, PullCredential, Role, Timestamp,
    PULL_SECRET_PREFIX,
};
use crate::secrets::{new_bearer_secret, secret_digest};

const COLUMNS: &str = "SELECT id, cluster_id, tenant_id, username, prefix, created_by, created_at, expires_at, revoked_at FROM pull_credentials";

fn row(r: &Row<'_>) -> rusqlite::Result<PullCredential> {
    Ok(PullCredential {
        id: r.get(0)?,
        cluster_id: r.get(1)?,
        tenant_id: r.get(2)?,
        username: r.get(3)?,
        prefix: r.get(4)?,
        created_by: r.get(5)?,
        created_at: from_millis(r.get(6)?),
        expires_at: from_millis(r.get(7)?),
        revoked_at: r.get::<_, Option<i64>>(8)?.map(from_millis),
    })
}

impl Store {
    /// Mint a pull credential for cluster `cluster_id` (of `tenant_id`/`project_id`), valid for
    /// `days`; returns it with its secret (shown once).
    pub async fn insert_pull_credential(
        &self,
        cluster_id: &str,
        tenant_id: &str,
        project_id: &str,
        created_by: &str,
        days: u32,
    ) -> Result<(PullCredential, String)> {
        let (cluster_id, tenant_id, project_id, created_by) = (
            cluster_id.to_string(),
            tenant_id.to_string(),
            project_id.to_string(),
            created_by.to_string(),
        );
        self.write(move |tx, _| {
            let secret = new_bearer_secret(PULL_SECRET_PREFIX.trim_end_matches('_'));
            let t = now();
            let c = PullCredential {
                id: new_id(),
                username: format!("cluster-{cluster_id}"),
                cluster_id,
                tenant_id,
                prefix: secret.chars().take(10).collect(),
                created_by,
                created_at: t,
                expires_at: t + Duration::days(days as i64),
                revoked_at: None,
            };
            tx.execute(
                "INSERT INTO pull_credentials (id, cluster_id, tenant_id, project_id, username, prefix, secret_hash, created_by, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params![
                    c.id,
                    c.cluster_id,
                    c.tenant_id,
                    project_id,
                    c.username,
                    c.prefix,
                    secret_digest(&secret),
                    c.created_by,
                    to_millis(t),
                    to_millis(c.expires_at)
                ],
            )
            .map_err(Error::sql("insert pull credential"))?;
            Ok((c, secret))
        })
        .await
    }

    /// The pull credentials of a cluster, oldest first (revoked and expired ones included).
    pub async fn list_pull_credentials(&self, cluster_id: &str) -> Result<Vec<PullCredential>> {
        let id = cluster_id.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!("{COLUMNS} WHERE cluster_id = ? ORDER BY id"))
                .map_err(Error::sql("list pull credentials"))?;
            let rows = stmt
                .query_map([&id], row)
                .map_err(Error::sql("list pull credentials"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::sql("list pull credentials"))?;
            Ok(rows)
        })
        .await
    }

    /// Revoke pull credential `id` of cluster `cluster_id`; revoking twice keeps the first time.
    pub async fn revoke_pull_credential(
        &self,
        cluster_id: &str,
        id: &str,
    ) -> Result<PullCredential> {
        let (cluster_id, id) = (cluster_id.to_string(), id.to_string());
        self.write(move |tx, _| {
            let n = tx
                .execute(
                    "UPDATE pull_credentials SET revoked_at = coalesce(revoked_at, ?) WHERE id = ? AND cluster_id = ?",
                    params![to_millis(now()), id, cluster_id],
                )
                .map_err(Error::sql("revoke pull credential"))?;
            if n == 0 {
                return Err(Error::NotFound {
                    kind: "pull credential",
                });
            }
            tx.query_row(&format!("{COLUMNS} WHERE id = ?"), [&id], row)
                .map_err(Error::sql("read pull credential"))
        })
        .await
    }

    /// The read-only principal of a live pull credential secret, and its expiry: a project
    /// viewer of the cluster's project, so the registry lets it read the tenant's and the
    /// shared repositories and write none (the caller also refuses every method but GET/HEAD).
    pub async fn pull_credential_principal(
        &self,
        secret: &str,
    ) -> Result<Option<(Principal, Timestamp)>> {
        let digest = secret_digest(secret);
        self.read(move |c| {
            let found: Option<(String, String, String, String, i64, Option<i64>)> = c
                .query_row(
                    "SELECT id, tenant_id, project_id, username, expires_at, revoked_at FROM pull_credentials WHERE secret_hash = ?",
                    [&digest],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
                )
                .optional()
                .map_err(Error::sql("read pull credential"))?;
            let Some((id, tenant, project, username, expires, revoked)) = found else {
                return Ok(None);
            };
            let expires_at = from_millis(expires);
            if revoked.is_some() || expires_at < now() {
                return Ok(None);
            }
            Ok(Some((
                Principal {
                    user_id: format!("pull-credential:{id}"),
                    username,
                    tenant_id: Some(tenant.clone()),
                    grants: vec![Grant {
                        role: Role::ProjectViewer,
                        scope: BindingScope::Project { tenant, project },
                    }],
                    token_id: None,
                },
                expires_at,
            )))
        })
        .await
    }
}
