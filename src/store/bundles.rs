//! Offline bundles: the keys trusted to sign them, the bundles imported (for rollback
//! protection and audit) and where their artifacts went. An import becomes visible in one
//! transaction: its registry blobs, links, manifests and tags, its own rows, any key rotation
//! it carries, and its audit entry.

use rusqlite::{params, OptionalExtension};

use super::audit::{append_tx, AuditEntry};
use super::registry::{insert_blob_row, put_manifest_tx, NewManifest, PutManifest};
use super::{from_millis, to_millis, Error, Result, Store};
use crate::model::{new_id, now, LayerType, Timestamp};

/// A public key trusted to sign bundles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// Hex sha256 of the raw public key.
    pub key_id: String,
    /// The raw 32-byte ed25519 key, base64.
    pub public_key: String,
    pub comment: String,
    /// Who added it: a user, or `bundle <name> <version>` for a rotation statement.
    pub added_by: String,
    pub created_at: Timestamp,
}

/// A bundle already imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedBundle {
    pub bundle_id: String,
    pub name: String,
    pub version: String,
    /// Hex sha256 of its `bundle.json`.
    pub manifest_sha256: String,
    pub trusted: bool,
    pub imported_by: String,
    pub imported_at: Timestamp,
}

/// One repository an import fills: blobs to link, then manifests in order (children of an
/// index before the index), the last one tagged.
#[derive(Debug, Clone)]
pub struct ImportRepository {
    pub name: String,
    pub blobs: Vec<(String, u64)>,
    pub manifests: Vec<NewManifest>,
    pub tag: String,
}

/// Where one artifact of an import went.
#[derive(Debug, Clone)]
pub struct ImportArtifact {
    pub kind: String,
    pub name: String,
    pub version: String,
    pub media_type: String,
    pub size: u64,
    pub digest: String,
    /// `registry:<repository>:<tag>` or the file's path relative to the data directory.
    pub location: String,
}

/// A pack the import adds to the catalogue (`/v1/packs`).
#[derive(Debug, Clone)]
pub struct NewPack {
    pub name: String,
    pub version: String,
    pub layer_type: LayerType,
    /// Digest of the pack's manifest in the registry.
    pub digest: String,
    pub description: String,
}

/// Everything one import records.
#[derive(Debug, Clone)]
pub struct BundleImport {
    pub bundle_id: String,
    pub name: String,
    pub version: String,
    pub manifest_sha256: String,
    pub created: String,
    pub signers: Vec<String>,
    pub trusted: bool,
    pub repositories: Vec<ImportRepository>,
    pub artifacts: Vec<ImportArtifact>,
    /// Catalogue entries of the pack artifacts.
    pub packs: Vec<NewPack>,
    /// Keys to trust from now on (a rotation statement of a trusted bundle).
    pub add_keys: Vec<TrustedKey>,
    /// Key ids to trust no longer.
    pub remove_keys: Vec<String>,
    pub audit: AuditEntry,
}

fn insert_key(tx: &rusqlite::Transaction<'_>, k: &TrustedKey) -> Result<bool> {
    let n = tx
        .execute(
            "INSERT OR IGNORE INTO bundle_trusted_keys (key_id, public_key, comment, added_by, created_at) VALUES (?, ?, ?, ?, ?)",
            params![k.key_id, k.public_key, k.comment, k.added_by, to_millis(k.created_at)],
        )
        .map_err(Error::sql("trust bundle key"))?;
    Ok(n > 0)
}

fn count_keys(tx: &rusqlite::Transaction<'_>) -> Result<i64> {
    tx.query_row("SELECT count(*) FROM bundle_trusted_keys", [], |r| r.get(0))
        .map_err(Error::sql("count trusted keys"))
}

impl Store {
    /// Every key trusted to sign bundles, oldest first.
    pub async fn bundle_trusted_keys(&self) -> Result<Vec<TrustedKey>> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT key_id, public_key, comment, added_by, created_at FROM bundle_trusted_keys ORDER BY created_at, key_id")
                .map_err(Error::sql("list trusted keys"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(TrustedKey {
                        key_id: r.get(0)?,
                        public_key: r.get(1)?,
                        comment: r.get(2)?,
                        added_by: r.get(3)?,
                        created_at: from_millis(r.get(4)?),
                    })
                })
                .map_err(Error::sql("list trusted keys"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::sql("list trusted keys"))?;
            Ok(rows)
        })
        .await
    }

    /// Trust `key` (with `audit`, audited in the same transaction: offline commands; the API's
    /// middleware audits its requests itself); false if it was trusted already.
    pub async fn bundle_trust_key(
        &self,
        key: TrustedKey,
        audit: Option<AuditEntry>,
    ) -> Result<bool> {
        self.write(move |tx, _| {
            let added = insert_key(tx, &key)?;
            if let (true, Some(audit)) = (added, audit) {
                append_tx(tx, audit, now())?;
            }
            Ok(added)
        })
        .await
    }

    /// Stop trusting key `key_id` (audited like [`Store::bundle_trust_key`]); false if it was not trusted.
    pub async fn bundle_untrust_key(
        &self,
        key_id: &str,
        audit: Option<AuditEntry>,
    ) -> Result<bool> {
        let key_id = key_id.to_string();
        self.write(move |tx, _| {
            let n = tx
                .execute(
                    "DELETE FROM bundle_trusted_keys WHERE key_id = ?",
                    [&key_id],
                )
                .map_err(Error::sql("untrust bundle key"))?;
            if let (true, Some(audit)) = (n > 0, audit) {
                append_tx(tx, audit, now())?;
            }
            Ok(n > 0)
        })
        .await
    }

    /// Every bundle imported, by name then import time.
    pub async fn bundle_imports(&self) -> Result<Vec<ImportedBundle>> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT bundle_id, name, version, manifest_sha256, trusted, imported_by, imported_at FROM bundle_imports ORDER BY name, imported_at")
                .map_err(Error::sql("list bundle imports"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(ImportedBundle {
                        bundle_id: r.get(0)?,
                        name: r.get(1)?,
                        version: r.get(2)?,
                        manifest_sha256: r.get(3)?,
                        trusted: r.get(4)?,
                        imported_by: r.get(5)?,
                        imported_at: from_millis(r.get(6)?),
                    })
                })
                .map_err(Error::sql("list bundle imports"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::sql("list bundle imports"))?;
            Ok(rows)
        })
        .await
    }

    /// Record a verified import whose files are all in place, in one transaction.
    pub async fn bundle_commit_import(&self, rec: BundleImport) -> Result<()> {
        self.write(move |tx, _| {
            let t = now();
            for repo in &rec.repositories {
                tx.execute(
                    "INSERT OR IGNORE INTO registry_repositories (tenant_id, name, created_at) VALUES ('', ?, ?)",
                    params![repo.name, to_millis(t)],
                )
                .map_err(Error::sql("create repository"))?;
                let id: i64 = tx
                    .query_row(
                        "SELECT id FROM registry_repositories WHERE tenant_id = '' AND name = ?",
                        [&repo.name],
                        |r| r.get(0),
                    )
                    .map_err(Error::sql("read repository"))?;
                for (digest, size) in &repo.blobs {
                    insert_blob_row(tx, digest, *size, t)?;
                    tx.execute(
                        "INSERT OR IGNORE INTO registry_blob_links (repository_id, digest, created_at) VALUES (?, ?, ?)",
                        params![id, digest, to_millis(t)],
                    )
                    .map_err(Error::sql("link blob"))?;
                }
                let last = repo.manifests.len().saturating_sub(1);
                for (i, m) in repo.manifests.iter().enumerate() {
                    let tag = (i == last).then_some(repo.tag.as_str());
                    if let PutManifest::MissingReferences(missing) = put_manifest_tx(tx, id, m, tag)? {
                        return Err(Error::Corrupt(format!(
                            "manifest {} of {} references {} which the import did not provide",
                            m.digest,
                            repo.name,
                            missing.join(", ")
                        )));
                    }
                }
            }
            for p in &rec.packs {
                // A re-import of the same name and version (allowed by --allow-downgrade) moves
                // the entry to the manifest the registry's tag now names.
                tx.execute(
                    "INSERT INTO packs (id, name, version, layer_type, digest, description, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)
                     ON CONFLICT (name, version) DO UPDATE SET layer_type = excluded.layer_type,
                       digest = excluded.digest, description = excluded.description",
                    params![new_id(), p.name, p.version, p.layer_type.as_str(), p.digest, p.description, to_millis(t)],
                )
                .map_err(Error::sql("catalogue pack"))?;
            }
            let signers = serde_json::to_string(&rec.signers).unwrap_or_else(|_| "[]".into());
            tx.execute(
                "INSERT INTO bundle_imports (bundle_id, name, version, manifest_sha256, created, signers, trusted, imported_by, imported_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (name, version) DO UPDATE SET bundle_id = excluded.bundle_id, manifest_sha256 = excluded.manifest_sha256,
                   created = excluded.created, signers = excluded.signers, trusted = excluded.trusted,
                   imported_by = excluded.imported_by, imported_at = excluded.imported_at",
                params![rec.bundle_id, rec.name, rec.version, rec.manifest_sha256, rec.created, signers, rec.trusted, rec.audit.actor, to_millis(t)],
            )
            .map_err(Error::sql("record bundle import"))?;
            let import_id: i64 = tx
                .query_row(
                    "SELECT id FROM bundle_imports WHERE name = ? AND version = ?",
                    params![rec.name, rec.version],
                    |r| r.get(0),
                )
                .map_err(Error::sql("read bundle import"))?;
            tx.execute("DELETE FROM bundle_artifacts WHERE import_id = ?", [import_id])
                .map_err(Error::sql("replace bundle artifacts"))?;
            for a in &rec.artifacts {
                tx.execute(
                    "INSERT INTO bundle_artifacts (import_id, kind, name, version, media_type, size, digest, location) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    params![import_id, a.kind, a.name, a.version, a.media_type, a.size as i64, a.digest, a.location],
                )
                .map_err(Error::sql("record bundle artifact"))?;
            }
            if !rec.add_keys.is_empty() || !rec.remove_keys.is_empty() {
                let before = count_keys(tx)?;
                for k in &rec.add_keys {
                    insert_key(tx, k)?;
                }
                for id in &rec.remove_keys {
                    tx.execute("DELETE FROM bundle_trusted_keys WHERE key_id = ?", [id])
                        .map_err(Error::sql("untrust bundle key"))?;
                }
                if before > 0 && count_keys(tx)? == 0 {
                    return Err(Error::Conflict(format!(
                        "bundle {} {} would remove every trusted bundle key: a rotation must add the new key before it removes the old one",
                        rec.name, rec.version
                    )));
                }
            }
            append_tx(tx, rec.audit.clone(), t)?;
            Ok(())
        })
        .await
    }

    /// Every imported file artifact (kind other than pack and container-image): its bundle
    /// (`name version`), kind, name, version, digest and path relative to the data directory.
    pub async fn bundle_file_artifacts(&self) -> Result<Vec<[String; 6]>> {
        self.read(|c| {
            let mut stmt = c
                .prepare(
                    "SELECT i.name || ' ' || i.version, a.kind, a.name, a.version, a.digest, a.location
                     FROM bundle_artifacts a JOIN bundle_imports i ON i.id = a.import_id
                     WHERE a.location NOT LIKE 'registry:%' ORDER BY a.digest",
                )
                .map_err(Error::sql("list bundle file artifacts"))?;
            let rows = stmt
                .query_map([], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?]))
                .map_err(Error::sql("list bundle file artifacts"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::sql("list bundle file artifacts"))?;
            Ok(rows)
        })
        .await
    }

    /// The artifacts recorded for bundle `name` `version`: (kind, name, version, digest, location).
    pub async fn bundle_artifacts(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Vec<(String, String, String, String, String)>> {
        let (name, version) = (name.to_string(), version.to_string());
        self.read(move |c| {
            let id: Option<i64> = c
                .query_row(
                    "SELECT id FROM bundle_imports WHERE name = ? AND version = ?",
                    params![name, version],
                    |r| r.get(0),
                )
                .optional()
                .map_err(Error::sql("read bundle import"))?;
            let Some(id) = id else {
                return Ok(Vec::new());
            };
            let mut stmt = c
                .prepare("SELECT kind, name, version, digest, location FROM bundle_artifacts WHERE import_id = ? ORDER BY kind, name")
                .map_err(Error::sql("list bundle artifacts"))?;
            let rows = stmt
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                .map_err(Error::sql("list bundle artifacts"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::sql("list bundle artifacts"))?;
            Ok(rows)
        })
        .await
    }
}
