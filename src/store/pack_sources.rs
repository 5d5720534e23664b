//! Pack sources (external registries of tenants) and the packs last found in each. Credentials
//! are sealed with the data directory's key before they are written, as cloud accounts' are.

use rusqlite::{params, OptionalExtension, Row};

use super::{bump_version, from_millis, to_millis, Error, Result, Store};
use crate::model::{
    new_id, now, NewPackSource, PackSource, RegistryCredentials, SourcePack, UpdatePackSource,
    Visibility,
};

const COLUMNS: &str = "SELECT id, tenant_id, name, url, prefix, ca_bundle, credentials IS NOT NULL, synced_at, sync_error, version, created_at, updated_at FROM pack_sources";

fn row(r: &Row<'_>) -> rusqlite::Result<PackSource> {
    Ok(PackSource {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        name: r.get(2)?,
        url: r.get(3)?,
        prefix: r.get(4)?,
        ca_bundle: r.get(5)?,
        has_credentials: r.get(6)?,
        synced_at: r.get::<_, Option<i64>>(7)?.map(from_millis),
        sync_error: r.get(8)?,
        version: r.get(9)?,
        created_at: from_millis(r.get(10)?),
        updated_at: from_millis(r.get(11)?),
    })
}

fn seal(key: &crate::secrets::SealingKey, c: &RegistryCredentials) -> Result<Vec<u8>> {
    let plain = serde_json::to_vec(c).map_err(|e| Error::Seal(e.to_string()))?;
    Ok(key.seal(&plain))
}

impl Store {
    /// Register a pack source of a tenant.
    pub async fn insert_pack_source(&self, new: NewPackSource) -> Result<PackSource> {
        self.write(move |tx, key| {
            let t = now();
            let id = new_id();
            let sealed = new.credentials.as_ref().map(|c| seal(key, c)).transpose()?;
            let url = new.url.trim_end_matches('/').to_string();
            tx.execute(
                "INSERT INTO pack_sources (id, tenant_id, name, url, prefix, credentials, ca_bundle, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params![id, new.tenant_id, new.name, url, new.prefix, sealed, new.ca_bundle, to_millis(t), to_millis(t)],
            )
            .map_err(Error::unique(
                "insert pack source",
                format!("the tenant already has a pack source named {:?}: choose another name", new.name),
            ))?;
            tx.query_row(&format!("{COLUMNS} WHERE id = ?"), [&id], row)
                .map_err(Error::sql("read pack source"))
        })
        .await
    }

    /// One pack source by id.
    pub async fn pack_source(&self, id: &str) -> Result<PackSource> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(&format!("{COLUMNS} WHERE id = ?"), [&id], row)
                .optional()
                .map_err(Error::sql("read pack source"))?
                .ok_or(Error::NotFound {
                    kind: "pack source",
                })
        })
        .await
    }

    /// Pack sources of the tenants visible under `v`, oldest first.
    pub async fn list_pack_sources(&self, v: Visibility) -> Result<Vec<PackSource>> {
        self.read(move |c| {
            let (cond, params): (String, Vec<String>) = if v.all {
                ("1".into(), vec![])
            } else {
                (
                    format!("tenant_id IN ({})", vec!["?"; v.tenants.len()].join(",")),
                    v.tenants.clone(),
                )
            };
            let mut stmt = c
                .prepare(&format!("{COLUMNS} WHERE {cond} ORDER BY id LIMIT 1000"))
                .map_err(Error::sql("list pack sources"))?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(params), row)
                .map_err(Error::sql("list pack sources"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::sql("list pack sources"))?;
            Ok(rows)
        })
        .await
    }

    /// Change a pack source; credentials are replaced only when given. Its packs are kept
    /// until the next read of the registry replaces them.
    pub async fn update_pack_source(
        &self,
        id: &str,
        expected: Option<i64>,
        update: UpdatePackSource,
    ) -> Result<PackSource> {
        let id = id.to_string();
        self.write(move |tx, key| {
            let version = bump_version(tx, "pack_sources", &id, expected)?;
            tx.execute(
                "UPDATE pack_sources SET url = ?, prefix = ?, ca_bundle = ?, version = ?, updated_at = ? WHERE id = ?",
                params![update.url.trim_end_matches('/'), update.prefix, update.ca_bundle, version, to_millis(now()), id],
            )
            .map_err(Error::sql("update pack source"))?;
            if let Some(c) = &update.credentials {
                tx.execute("UPDATE pack_sources SET credentials = ? WHERE id = ?", params![seal(key, c)?, id])
                    .map_err(Error::sql("update credentials"))?;
            }
            tx.query_row(&format!("{COLUMNS} WHERE id = ?"), [&id], row)
                .map_err(Error::sql("read pack source"))
        })
        .await
    }

    /// Delete a pack source and the packs found in it.
    pub async fn delete_pack_source(&self, id: &str, expected: Option<i64>) -> Result<()> {
        let id = id.to_string();
        self.write(move |tx, _| {
            bump_version(tx, "pack_sources", &id, expected)?;
            tx.execute("DELETE FROM pack_sources WHERE id = ?", [&id])
                .map_err(Error::sql("delete pack source"))?;
            Ok(())
        })
        .await
    }

    /// Every pack source with its decrypted credentials, for the sync (never for the API).
    pub async fn pack_sources_for_sync(
        &self,
    ) -> Result<Vec<(PackSource, Option<RegistryCredentials>)>> {
        let inner = self.inner.clone();
        self.read(move |c| {
            let mut stmt = c
                .prepare(&format!("{COLUMNS} ORDER BY id"))
                .map_err(Error::sql("list pack sources"))?;
            let sources = stmt
                .query_map([], row)
                .map_err(Error::sql("list pack sources"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::sql("list pack sources"))?;
            let mut out = Vec::new();
            for s in sources {
                let sealed: Option<Vec<u8>> = c
                    .query_row(
                        "SELECT credentials FROM pack_sources WHERE id = ?",
                        [&s.id],
                        |r| r.get(0),
                    )
                    .map_err(Error::sql("read credentials"))?;
                let creds = match sealed {
                    None => None,
                    Some(bytes) => {
                        let plain = inner
                            .key
                            .open(&bytes)
                            .map_err(|e| Error::Seal(e.to_string()))?;
                        Some(serde_json::from_slice(&plain).map_err(|e| {
                            Error::Corrupt(format!("credentials of pack source {}: {e}", s.id))
                        })?)
                    }
                };
                out.push((s, creds));
            }
            Ok(out)
        })
        .await
    }

    /// Record the outcome of reading a pack source: on success its packs are replaced by
    /// `found` (ids of packs still present are kept); on failure the packs stay and the error
    /// is recorded.
    pub async fn record_pack_source_sync(
        &self,
        id: &str,
        found: std::result::Result<Vec<SourcePack>, String>,
    ) -> Result<()> {
        let id = id.to_string();
        self.write(move |tx, _| {
            let tenant: Option<String> = tx
                .query_row("SELECT tenant_id FROM pack_sources WHERE id = ?", [&id], |r| r.get(0))
                .optional()
                .map_err(Error::sql("read pack source"))?;
            // Deleted while it was being read: nothing to record.
            let Some(tenant) = tenant else { return Ok(()) };
            let t = to_millis(now());
            match found {
                Err(e) => {
                    tx.execute(
                        "UPDATE pack_sources SET sync_error = ?, synced_at = ? WHERE id = ?",
                        params![e, t, id],
                    )
                    .map_err(Error::sql("record pack source error"))?;
                }
                Ok(packs) => {
                    tx.execute("CREATE TEMP TABLE IF NOT EXISTS seen_packs (name TEXT, version TEXT)", [])
                        .map_err(Error::sql("sync pack source"))?;
                    tx.execute("DELETE FROM seen_packs", []).map_err(Error::sql("sync pack source"))?;
                    for p in &packs {
                        tx.execute(
                            "INSERT INTO pack_source_packs (id, source_id, tenant_id, name, version, layer_type, digest, description, created_at)
                             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                             ON CONFLICT (source_id, name, version) DO UPDATE SET layer_type = excluded.layer_type, digest = excluded.digest, description = excluded.description",
                            params![new_id(), id, tenant, p.name, p.version, p.layer_type.as_str(), p.digest, p.description, t],
                        )
                        .map_err(Error::sql("record source pack"))?;
                        tx.execute("INSERT INTO seen_packs VALUES (?, ?)", params![p.name, p.version])
                            .map_err(Error::sql("sync pack source"))?;
                    }
                    tx.execute(
                        "DELETE FROM pack_source_packs WHERE source_id = ? AND (name, version) NOT IN (SELECT name, version FROM seen_packs)",
                        [&id],
                    )
                    .map_err(Error::sql("sync pack source"))?;
                    tx.execute(
                        "UPDATE pack_sources SET sync_error = '', synced_at = ? WHERE id = ?",
                        params![t, id],
                    )
                    .map_err(Error::sql("record pack source sync"))?;
                }
            }
            Ok(())
        })
        .await
    }
}
