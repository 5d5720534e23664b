//! Cloud accounts; credentials are sealed with the data directory's key before they are written.

use rusqlite::{params, OptionalExtension, Row};

use super::events::insert_event_tx;
use super::{bump_version, from_millis, to_millis, Error, ListQuery, Result, Store};
use crate::model::{
    new_id, now, CloudAccount, CloudKind, Credentials, NewCloudAccount, Page, Severity,
    UpdateCloudAccount, Visibility,
};

const COLUMNS: &str = "SELECT id, tenant_id, project_id, name, kind, endpoint, credentials IS NOT NULL, ca_bundle, placement, version, created_at, updated_at FROM cloud_accounts";

fn row(r: &Row<'_>) -> rusqlite::Result<CloudAccount> {
    let kind: String = r.get(4)?;
    let placement: String = r.get(8)?;
    Ok(CloudAccount {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        project_id: r.get(2)?,
        name: r.get(3)?,
        kind: CloudKind::parse(&kind).unwrap_or(CloudKind::Vsphere),
        endpoint: r.get(5)?,
        has_credentials: r.get(6)?,
        ca_bundle: r.get(7)?,
        placement: serde_json::from_str(&placement).unwrap_or_default(),
        version: r.get(9)?,
        created_at: from_millis(r.get(10)?),
        updated_at: from_millis(r.get(11)?),
    })
}

fn seal(key: &crate::secrets::SealingKey, c: &Credentials) -> Result<Vec<u8>> {
    let plain = serde_json::to_vec(c).map_err(|e| Error::Seal(e.to_string()))?;
    Ok(key.seal(&plain))
}

impl Store {
    /// Create a cloud account in a project of `tenant_id`.
    pub async fn insert_cloud_account(
        &self,
        tenant_id: String,
        new: NewCloudAccount,
    ) -> Result<CloudAccount> {
        self.write(move |tx, key| {
            let t = now();
            let id = new_id();
            let sealed = seal(key, &new.credentials)?;
            let placement = serde_json::to_string(&new.placement).map_err(|e| Error::Corrupt(e.to_string()))?;
            tx.execute(
                "INSERT INTO cloud_accounts (id, tenant_id, project_id, name, kind, endpoint, credentials, ca_bundle, placement, created_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params![id, tenant_id, new.project_id, new.name, new.kind.as_str(), new.endpoint, sealed, new.ca_bundle, placement, to_millis(t), to_millis(t)],
            )
            .map_err(Error::unique(
                "insert cloud account",
                format!("the project already has a cloud account named {:?}: choose another name", new.name),
            ))?;
            insert_event_tx(tx, "cloud-account", &id, Some(&tenant_id), Some(&new.project_id), Severity::Info, &format!("cloud account {} created", new.name))?;
            tx.query_row(&format!("{COLUMNS} WHERE id = ?"), [&id], row)
                .map_err(Error::sql("read cloud account"))
        })
        .await
    }

    /// One cloud account by id.
    pub async fn cloud_account(&self, id: &str) -> Result<CloudAccount> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(&format!("{COLUMNS} WHERE id = ?"), [&id], row)
                .optional()
                .map_err(Error::sql("read cloud account"))?
                .ok_or(Error::NotFound {
                    kind: "cloud account",
                })
        })
        .await
    }

    /// The decrypted credentials of a cloud account, for providers (never for the API).
    pub async fn cloud_account_credentials(&self, id: &str) -> Result<Option<Credentials>> {
        let id = id.to_string();
        let inner = self.inner.clone();
        self.read(move |c| {
            let sealed: Option<Option<Vec<u8>>> = c
                .query_row(
                    "SELECT credentials FROM cloud_accounts WHERE id = ?",
                    [&id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(Error::sql("read credentials"))?;
            let sealed = sealed.ok_or(Error::NotFound {
                kind: "cloud account",
            })?;
            match sealed {
                None => Ok(None),
                Some(bytes) => {
                    let plain = inner
                        .key
                        .open(&bytes)
                        .map_err(|e| Error::Seal(e.to_string()))?;
                    serde_json::from_slice(&plain).map(Some).map_err(|e| {
                        Error::Corrupt(format!("credentials of cloud account {id}: {e}"))
                    })
                }
            }
        })
        .await
    }

    /// Try to unseal every stored credential; returns a problem per account whose credentials
    /// cannot be decrypted with this data directory's key (for `palisade admin check`).
    pub async fn check_sealed_credentials(&self) -> Result<Vec<String>> {
        let inner = self.inner.clone();
        self.read(move |c| {
            // Pack sources seal their registry credentials the same way.
            let mut problems = Vec::new();
            for (table, kind) in [("cloud_accounts", "cloud account"), ("pack_sources", "pack source")] {
                let mut stmt = c
                    .prepare(&format!("SELECT id, name, credentials FROM {table} WHERE credentials IS NOT NULL"))
                    .map_err(Error::sql("read credentials"))?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Vec<u8>>(2)?)))
                    .map_err(Error::sql("read credentials"))?;
                for row in rows {
                    let (id, name, sealed) = row.map_err(Error::sql("read credentials"))?;
                    if inner.key.open(&sealed).is_err() {
                        problems.push(format!(
                            "credentials of {kind} {name} ({id}) cannot be decrypted with secret.key: \
                             restore the secret.key that belongs to this database, or enter the credentials again"
                        ));
                    }
                }
            }
            Ok(problems)
        })
        .await
    }

    /// Cloud accounts visible under `v`.
    pub async fn list_cloud_accounts(
        &self,
        v: Visibility,
        project_id: Option<String>,
        kind: Option<String>,
        after: Option<String>,
        limit: u32,
    ) -> Result<Page<CloudAccount>> {
        self.read(move |c| {
            let mut q = ListQuery::new();
            let (cond, params) = super::visibility_clause(&v, "project_id");
            q.raw(cond, params);
            q.eq("project_id", project_id.as_deref())
                .eq("kind", kind.as_deref());
            q.page(c, COLUMNS, after.as_deref(), limit, row, |a| a.id.clone())
        })
        .await
    }

    /// Update a cloud account; credentials are replaced only when given.
    pub async fn update_cloud_account(
        &self,
        id: &str,
        expected: Option<i64>,
        update: UpdateCloudAccount,
    ) -> Result<CloudAccount> {
        let id = id.to_string();
        self.write(move |tx, key| {
            let version = bump_version(tx, "cloud_accounts", &id, expected)?;
            let placement = serde_json::to_string(&update.placement).map_err(|e| Error::Corrupt(e.to_string()))?;
            tx.execute(
                "UPDATE cloud_accounts SET endpoint = ?, ca_bundle = ?, placement = ?, version = ?, updated_at = ? WHERE id = ?",
                params![update.endpoint, update.ca_bundle, placement, version, to_millis(now()), id],
            )
            .map_err(Error::sql("update cloud account"))?;
            if let Some(c) = &update.credentials {
                tx.execute("UPDATE cloud_accounts SET credentials = ? WHERE id = ?", params![seal(key, c)?, id])
                    .map_err(Error::sql("update credentials"))?;
            }
            let account = tx
                .query_row(&format!("{COLUMNS} WHERE id = ?"), [&id], row)
                .map_err(Error::sql("read cloud account"))?;
            insert_event_tx(tx, "cloud-account", &id, Some(&account.tenant_id), Some(&account.project_id), Severity::Info, "cloud account updated")?;
            Ok(account)
        })
        .await
    }

    /// Delete a cloud account that no cluster uses.
    pub async fn delete_cloud_account(&self, id: &str, expected: Option<i64>) -> Result<()> {
        let id = id.to_string();
        self.write(move |tx, _| {
            bump_version(tx, "cloud_accounts", &id, expected)?;
            let n: i64 = tx
                .query_row("SELECT count(*) FROM clusters WHERE cloud_account_id = ?", [&id], |r| r.get(0))
                .map_err(Error::sql("count clusters"))?;
            if n > 0 {
                return Err(Error::Conflict(format!(
                    "{n} cluster(s) use this cloud account: delete them or move them to another account first"
                )));
            }
            tx.execute("DELETE FROM cloud_accounts WHERE id = ?", [&id])
                .map_err(Error::sql("delete cloud account"))?;
            Ok(())
        })
        .await
    }
}
