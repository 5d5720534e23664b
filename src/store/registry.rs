//! Metadata of the OCI registry: repositories, which blobs and manifests belong to each, tags,
//! referrer links, open uploads, and the rows the garbage collector may remove.
//!
//! Blob *contents* live on disk (see `crate::registry::blobs`); this module only records which
//! digests exist and who references them. Access decisions are the caller's: every function
//! takes a repository id the caller resolved (and authorised) first. Digests and names are
//! passed as already-validated strings.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{to_millis, Error, Result, Store};
use crate::model::{now, Timestamp};

/// A manifest as stored for one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

/// What a manifest put records: its identity, referrer data, and what it references.
#[derive(Debug, Clone)]
pub struct NewManifest {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// `artifactType`, or the config's media type for an image manifest without one.
    pub artifact_type: Option<String>,
    /// Digest of the `subject` manifest (for the referrers API); need not exist.
    pub subject: Option<String>,
    /// The manifest's `annotations` object as JSON text, shown in referrer descriptors.
    pub annotations: Option<String>,
    /// Blobs (config, layers) that must already be linked to the repository.
    pub blobs: Vec<String>,
    /// Manifests (children of an index) that must already be in the repository.
    pub manifests: Vec<String>,
}

/// Outcome of storing a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutManifest {
    Stored,
    /// Nothing was stored: these referenced digests are not in the repository.
    MissingReferences(Vec<String>),
}

/// A manifest that names another as its `subject`, as the referrers API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations: Option<String>,
}

/// Outcome of removing a blob from a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlinkBlob {
    Unlinked,
    NotLinked,
    /// Refused: this manifest of the repository still references the blob.
    Referenced {
        manifest: String,
    },
}

/// Outcome of deleting a manifest from a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteManifest {
    Deleted,
    NotFound,
    /// Refused: this index of the repository still references the manifest.
    Referenced {
        index: String,
    },
}

/// Which repositories a caller may list: `shared/` ones always, plus those of these tenants
/// (or of every existing tenant when `all`).
#[derive(Debug, Clone, Default)]
pub struct RegistryScope {
    pub all: bool,
    pub tenants: Vec<String>,
}

/// One reason a blob must be kept: repository `repository` links it, or one of that
/// repository's manifests is it or references it. What backups copy and `admin check` verifies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlobReference {
    /// The blob's digest, `sha256:<64 hex>`.
    pub digest: String,
    /// Full name of the repository holding it (`shared/app`, `acme/app`).
    pub repository: String,
}

/// An open upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryUpload {
    pub id: String,
    pub repository_id: i64,
}

/// What one garbage-collection pass removed from the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectedRows {
    /// Blobs no repository links and no manifest is or references: their files may go.
    pub blobs: Vec<String>,
    /// Uploads idle for too long, or of removed repositories: their files may go.
    pub uploads: Vec<String>,
    /// Repositories removed (empty, or of a deleted tenant).
    pub repositories: u64,
}

fn is_linked(c: &Connection, repo: i64, digest: &str) -> Result<bool> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM registry_blob_links WHERE repository_id = ? AND digest = ?)",
        params![repo, digest],
        |r| r.get(0),
    )
    .map_err(Error::sql("read blob link"))
}

fn has_manifest(c: &Connection, repo: i64, digest: &str) -> Result<bool> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM registry_manifests WHERE repository_id = ? AND digest = ?)",
        params![repo, digest],
        |r| r.get(0),
    )
    .map_err(Error::sql("read manifest"))
}

pub(super) fn insert_blob_row(
    tx: &Transaction<'_>,
    digest: &str,
    size: u64,
    at: Timestamp,
) -> Result<()> {
    tx.execute(
        "INSERT OR IGNORE INTO registry_blobs (digest, size, created_at) VALUES (?, ?, ?)",
        params![digest, size as i64, to_millis(at)],
    )
    .map_err(Error::sql("record blob"))?;
    Ok(())
}

/// Every blob a repository needs, by digest then repository: the same rule as the collector's
/// (a link, a manifest that is the blob, or a manifest that references it), so the set is
/// exactly what the collector would keep. Used on the live database and on backup snapshots.
pub(super) fn blob_references(c: &Connection) -> Result<Vec<BlobReference>> {
    let mut stmt = c
        .prepare(
            "SELECT x.digest, r.name FROM (
                 SELECT repository_id, digest FROM registry_blob_links
                 UNION SELECT repository_id, digest FROM registry_manifests
                 UNION SELECT repository_id, child_digest FROM registry_manifest_refs
             ) x JOIN registry_repositories r ON r.id = x.repository_id
             ORDER BY x.digest, r.name",
        )
        .map_err(Error::sql("list referenced blobs"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(BlobReference {
                digest: r.get(0)?,
                repository: r.get(1)?,
            })
        })
        .map_err(Error::sql("list referenced blobs"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(Error::sql("list referenced blobs"))?;
    Ok(rows)
}

/// Keep `n` within what a page may hold, and make sure `n + 1` stays representable.
fn page_limit(n: u32) -> i64 {
    i64::from(n.min(100_000)) + 1
}

/// A manifest of the repository that references `digest` (a blob or a manifest), if any.
fn first_referrer(c: &Connection, repository_id: i64, digest: &str) -> Result<Option<String>> {
    c.query_row(
        "SELECT manifest_digest FROM registry_manifest_refs WHERE repository_id = ? AND child_digest = ? LIMIT 1",
        params![repository_id, digest],
        |r| r.get(0),
    )
    .optional()
    .map_err(Error::sql("read manifest references"))
}

/// Store manifest `m` in `repository_id` and point `tag` at it, inside the caller's
/// transaction; stores nothing and names what is missing when a reference is not in the
/// repository. Shared by pushes and bundle imports.
pub(super) fn put_manifest_tx(
    tx: &Transaction<'_>,
    repository_id: i64,
    m: &NewManifest,
    tag: Option<&str>,
) -> Result<PutManifest> {
    let mut missing = Vec::new();
    for d in &m.blobs {
        if !is_linked(tx, repository_id, d)? && !missing.contains(d) {
            missing.push(d.clone());
        }
    }
    for d in &m.manifests {
        if !has_manifest(tx, repository_id, d)? && !missing.contains(d) {
            missing.push(d.clone());
        }
    }
    if !missing.is_empty() {
        return Ok(PutManifest::MissingReferences(missing));
    }
    let t = to_millis(now());
    insert_blob_row(tx, &m.digest, m.size, now())?;
    // Same digest means same bytes: an existing row is already right.
    tx.execute(
        "INSERT OR IGNORE INTO registry_manifests (repository_id, digest, media_type, size, artifact_type, subject, annotations, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        params![
            repository_id,
            m.digest,
            m.media_type,
            m.size as i64,
            m.artifact_type,
            m.subject,
            m.annotations,
            t
        ],
    )
    .map_err(Error::sql("store manifest"))?;
    for child in m.blobs.iter().chain(m.manifests.iter()) {
        tx.execute(
            "INSERT OR IGNORE INTO registry_manifest_refs (repository_id, manifest_digest, child_digest) VALUES (?, ?, ?)",
            params![repository_id, m.digest, child],
        )
        .map_err(Error::sql("record manifest reference"))?;
    }
    if let Some(tag) = tag {
        tx.execute(
            "INSERT INTO registry_tags (repository_id, tag, digest, updated_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (repository_id, tag) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
            params![repository_id, tag, m.digest, t],
        )
        .map_err(Error::sql("tag manifest"))?;
    }
    Ok(PutManifest::Stored)
}

impl Store {
    /// Id of the tenant named `name`, if one exists (repository namespaces are tenant names).
    pub async fn registry_tenant_id(&self, name: &str) -> Result<Option<String>> {
        let name = name.to_string();
        self.read(move |c| {
            c.query_row("SELECT id FROM tenants WHERE name = ?", [&name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(Error::sql("read tenant by name"))
        })
        .await
    }

    /// Id of repository `name` of `tenant_id` (`""` for `shared/`), if it exists.
    pub async fn registry_repository(&self, tenant_id: &str, name: &str) -> Result<Option<i64>> {
        let (tenant_id, name) = (tenant_id.to_string(), name.to_string());
        self.read(move |c| {
            c.query_row(
                "SELECT id FROM registry_repositories WHERE tenant_id = ? AND name = ?",
                params![tenant_id, name],
                |r| r.get(0),
            )
            .optional()
            .map_err(Error::sql("read repository"))
        })
        .await
    }

    /// Id of repository `name` of `tenant_id`, creating it if needed (the caller may write it).
    pub async fn registry_ensure_repository(&self, tenant_id: &str, name: &str) -> Result<i64> {
        let (tenant_id, name) = (tenant_id.to_string(), name.to_string());
        self.write(move |tx, _| {
            tx.execute(
                "INSERT OR IGNORE INTO registry_repositories (tenant_id, name, created_at) VALUES (?, ?, ?)",
                params![tenant_id, name, to_millis(now())],
            )
            .map_err(Error::sql("create repository"))?;
            tx.query_row(
                "SELECT id FROM registry_repositories WHERE tenant_id = ? AND name = ?",
                params![tenant_id, name],
                |r| r.get(0),
            )
            .map_err(Error::sql("read repository"))
        })
        .await
    }

    /// Open an upload into `repository_id`, unless `max_open` uploads are open already
    /// (then `Ok(false)`).
    pub async fn registry_create_upload(
        &self,
        repository_id: i64,
        id: &str,
        max_open: u64,
    ) -> Result<bool> {
        let id = id.to_string();
        self.write(move |tx, _| {
            let open: i64 = tx
                .query_row("SELECT count(*) FROM registry_uploads", [], |r| r.get(0))
                .map_err(Error::sql("count uploads"))?;
            if open as u64 >= max_open {
                return Ok(false);
            }
            let t = to_millis(now());
            tx.execute(
                "INSERT INTO registry_uploads (id, repository_id, created_at, updated_at) VALUES (?, ?, ?, ?)",
                params![id, repository_id, t, t],
            )
            .map_err(Error::sql("create upload"))?;
            Ok(true)
        })
        .await
    }

    /// The open upload `id` of `repository_id`, if there is one.
    pub async fn registry_upload(
        &self,
        repository_id: i64,
        id: &str,
    ) -> Result<Option<RegistryUpload>> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT id, repository_id FROM registry_uploads WHERE id = ? AND repository_id = ?",
                params![id, repository_id],
                |r| {
                    Ok(RegistryUpload {
                        id: r.get(0)?,
                        repository_id: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(Error::sql("read upload"))
        })
        .await
    }

    /// Record activity on upload `id` of `repository_id`, so the collector does not take it
    /// for abandoned; false if the upload is not open (any more).
    pub async fn registry_touch_upload(&self, repository_id: i64, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.write(move |tx, _| {
            let n = tx
                .execute(
                    "UPDATE registry_uploads SET updated_at = ? WHERE id = ? AND repository_id = ?",
                    params![to_millis(now()), id, repository_id],
                )
                .map_err(Error::sql("touch upload"))?;
            Ok(n > 0)
        })
        .await
    }

    /// Forget an upload (cancelled, or refused at completion).
    pub async fn registry_delete_upload(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.write(move |tx, _| {
            tx.execute("DELETE FROM registry_uploads WHERE id = ?", [&id])
                .map_err(Error::sql("delete upload"))?;
            Ok(())
        })
        .await
    }

    /// Record a verified blob (its file is already in place) and link it to `repository_id`;
    /// closes `upload` if given. One transaction: the blob becomes visible with its link.
    pub async fn registry_commit_blob(
        &self,
        repository_id: i64,
        upload: Option<&str>,
        digest: &str,
        size: u64,
    ) -> Result<()> {
        let upload = upload.map(str::to_string);
        let digest = digest.to_string();
        self.write(move |tx, _| {
            let t = now();
            insert_blob_row(tx, &digest, size, t)?;
            tx.execute(
                "INSERT OR IGNORE INTO registry_blob_links (repository_id, digest, created_at) VALUES (?, ?, ?)",
                params![repository_id, digest, to_millis(t)],
            )
            .map_err(Error::sql("link blob"))?;
            if let Some(id) = upload {
                tx.execute("DELETE FROM registry_uploads WHERE id = ?", [&id])
                    .map_err(Error::sql("close upload"))?;
            }
            Ok(())
        })
        .await
    }

    /// Link blob `digest` of repository `from` into repository `to` (cross-repository mount).
    /// Returns its size, or `None` (nothing changed) when `from` does not hold it.
    pub async fn registry_mount_blob(
        &self,
        from: i64,
        to: i64,
        digest: &str,
    ) -> Result<Option<u64>> {
        let digest = digest.to_string();
        self.write(move |tx, _| {
            if !is_linked(tx, from, &digest)? {
                return Ok(None);
            }
            let size: i64 = tx
                .query_row(
                    "SELECT size FROM registry_blobs WHERE digest = ?",
                    [&digest],
                    |r| r.get(0),
                )
                .map_err(Error::sql("read blob"))?;
            tx.execute(
                "INSERT OR IGNORE INTO registry_blob_links (repository_id, digest, created_at) VALUES (?, ?, ?)",
                params![to, digest, to_millis(now())],
            )
            .map_err(Error::sql("link blob"))?;
            Ok(Some(size as u64))
        })
        .await
    }

    /// Size of blob `digest` if repository `repository_id` holds it (linked, or one of its
    /// manifests).
    pub async fn registry_blob(&self, repository_id: i64, digest: &str) -> Result<Option<u64>> {
        let digest = digest.to_string();
        self.read(move |c| {
            if !is_linked(c, repository_id, &digest)? && !has_manifest(c, repository_id, &digest)? {
                return Ok(None);
            }
            c.query_row(
                "SELECT size FROM registry_blobs WHERE digest = ?",
                [&digest],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|s| s.map(|s| s as u64))
            .map_err(Error::sql("read blob"))
        })
        .await
    }

    /// Whether any repository holds blob `digest` (it is recorded and its file must be kept).
    pub async fn registry_blob_recorded(&self, digest: &str) -> Result<bool> {
        let digest = digest.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM registry_blobs WHERE digest = ?)",
                [&digest],
                |r| r.get(0),
            )
            .map_err(Error::sql("read blob"))
        })
        .await
    }

    /// Remove blob `digest` from repository `repository_id`, unless one of its manifests still
    /// references it. The file stays until the garbage collector finds nothing references it.
    pub async fn registry_unlink_blob(
        &self,
        repository_id: i64,
        digest: &str,
    ) -> Result<UnlinkBlob> {
        let digest = digest.to_string();
        self.write(move |tx, _| {
            if !is_linked(tx, repository_id, &digest)? {
                return Ok(UnlinkBlob::NotLinked);
            }
            let user: Option<String> = first_referrer(tx, repository_id, &digest)?;
            if let Some(manifest) = user {
                return Ok(UnlinkBlob::Referenced { manifest });
            }
            tx.execute(
                "DELETE FROM registry_blob_links WHERE repository_id = ? AND digest = ?",
                params![repository_id, digest],
            )
            .map_err(Error::sql("unlink blob"))?;
            Ok(UnlinkBlob::Unlinked)
        })
        .await
    }

    /// Store a manifest (its bytes are already in the blob store) in `repository_id`, and point
    /// `tag` at it. Checks, in the same transaction, that everything it references is in the
    /// repository; if not, stores nothing and names what is missing.
    pub async fn registry_put_manifest(
        &self,
        repository_id: i64,
        m: NewManifest,
        tag: Option<&str>,
    ) -> Result<PutManifest> {
        let tag = tag.map(str::to_string);
        self.write(move |tx, _| put_manifest_tx(tx, repository_id, &m, tag.as_deref()))
            .await
    }

    /// The manifest tagged `tag` in `repository_id`.
    pub async fn registry_manifest_by_tag(
        &self,
        repository_id: i64,
        tag: &str,
    ) -> Result<Option<StoredManifest>> {
        let tag = tag.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT m.digest, m.media_type, m.size FROM registry_tags t
                 JOIN registry_manifests m ON m.repository_id = t.repository_id AND m.digest = t.digest
                 WHERE t.repository_id = ? AND t.tag = ?",
                params![repository_id, tag],
                |r| {
                    Ok(StoredManifest {
                        digest: r.get(0)?,
                        media_type: r.get(1)?,
                        size: r.get::<_, i64>(2)? as u64,
                    })
                },
            )
            .optional()
            .map_err(Error::sql("read tag"))
        })
        .await
    }

    /// The manifest `digest` in `repository_id`.
    pub async fn registry_manifest(
        &self,
        repository_id: i64,
        digest: &str,
    ) -> Result<Option<StoredManifest>> {
        let digest = digest.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT digest, media_type, size FROM registry_manifests WHERE repository_id = ? AND digest = ?",
                params![repository_id, digest],
                |r| {
                    Ok(StoredManifest {
                        digest: r.get(0)?,
                        media_type: r.get(1)?,
                        size: r.get::<_, i64>(2)? as u64,
                    })
                },
            )
            .optional()
            .map_err(Error::sql("read manifest"))
        })
        .await
    }

    /// Delete manifest `digest` (and the tags pointing at it) from `repository_id`, unless an
    /// index of the repository still references it.
    pub async fn registry_delete_manifest(
        &self,
        repository_id: i64,
        digest: &str,
    ) -> Result<DeleteManifest> {
        let digest = digest.to_string();
        self.write(move |tx, _| {
            if !has_manifest(tx, repository_id, &digest)? {
                return Ok(DeleteManifest::NotFound);
            }
            let index: Option<String> = first_referrer(tx, repository_id, &digest)?;
            if let Some(index) = index {
                return Ok(DeleteManifest::Referenced { index });
            }
            // Tags and references go with it (ON DELETE CASCADE).
            tx.execute(
                "DELETE FROM registry_manifests WHERE repository_id = ? AND digest = ?",
                params![repository_id, digest],
            )
            .map_err(Error::sql("delete manifest"))?;
            Ok(DeleteManifest::Deleted)
        })
        .await
    }

    /// Remove tag `tag` from `repository_id` (the manifest stays); false if there was none.
    pub async fn registry_delete_tag(&self, repository_id: i64, tag: &str) -> Result<bool> {
        let tag = tag.to_string();
        self.write(move |tx, _| {
            let n = tx
                .execute(
                    "DELETE FROM registry_tags WHERE repository_id = ? AND tag = ?",
                    params![repository_id, tag],
                )
                .map_err(Error::sql("delete tag"))?;
            Ok(n > 0)
        })
        .await
    }

    /// Up to `n` tags of `repository_id` in lexical order after `last`, and whether more follow.
    pub async fn registry_tags(
        &self,
        repository_id: i64,
        last: Option<&str>,
        n: u32,
    ) -> Result<(Vec<String>, bool)> {
        let last = last.unwrap_or("").to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT tag FROM registry_tags WHERE repository_id = ? AND tag > ? ORDER BY tag LIMIT ?",
                )
                .map_err(Error::sql("list tags"))?;
            let mut tags = stmt
                .query_map(params![repository_id, last, page_limit(n)], |r| r.get(0))
                .map_err(Error::sql("list tags"))?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(Error::sql("list tags"))?;
            let more = tags.len() > n as usize;
            tags.truncate(n as usize);
            Ok((tags, more))
        })
        .await
    }

    /// Up to `n` repository names visible in `scope`, in lexical order after `last`, and
    /// whether more follow. Repositories of deleted tenants are never listed.
    pub async fn registry_catalog(
        &self,
        scope: RegistryScope,
        last: Option<&str>,
        n: u32,
    ) -> Result<(Vec<String>, bool)> {
        let last = last.unwrap_or("").to_string();
        self.read(move |c| {
            let mut values: Vec<rusqlite::types::Value> = vec![last.into()];
            let tenants = if scope.all {
                "SELECT id FROM tenants".to_string()
            } else {
                let marks = vec!["?"; scope.tenants.len()].join(",");
                values.extend(scope.tenants.iter().cloned().map(Into::into));
                format!("SELECT id FROM tenants WHERE id IN ({marks})")
            };
            values.push(page_limit(n).into());
            let sql = format!(
                "SELECT name FROM registry_repositories
                 WHERE name > ? AND (tenant_id = '' OR tenant_id IN ({tenants}))
                 ORDER BY name LIMIT ?"
            );
            let mut stmt = c.prepare(&sql).map_err(Error::sql("list repositories"))?;
            let mut names = stmt
                .query_map(rusqlite::params_from_iter(values.iter()), |r| r.get(0))
                .map_err(Error::sql("list repositories"))?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(Error::sql("list repositories"))?;
            let more = names.len() > n as usize;
            names.truncate(n as usize);
            Ok((names, more))
        })
        .await
    }

    /// Manifests of `repository_id` whose subject is `subject`, optionally only those of
    /// `artifact_type`, at most `limit`, ordered by digest.
    pub async fn registry_referrers(
        &self,
        repository_id: i64,
        subject: &str,
        artifact_type: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Referrer>> {
        let subject = subject.to_string();
        let artifact_type = artifact_type.map(str::to_string);
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT digest, media_type, size, artifact_type, annotations FROM registry_manifests
                     WHERE repository_id = ? AND subject = ? AND (?3 IS NULL OR artifact_type = ?3)
                     ORDER BY digest LIMIT ?4",
                )
                .map_err(Error::sql("list referrers"))?;
            let rows = stmt
                .query_map(
                    params![repository_id, subject, artifact_type, i64::from(limit)],
                    |r| {
                        Ok(Referrer {
                            digest: r.get(0)?,
                            media_type: r.get(1)?,
                            size: r.get::<_, i64>(2)? as u64,
                            artifact_type: r.get(3)?,
                            annotations: r.get(4)?,
                        })
                    },
                )
                .map_err(Error::sql("list referrers"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::sql("list referrers"))?;
            Ok(rows)
        })
        .await
    }

    /// Ids of every open upload, for the collector's sweep of stray upload files.
    pub async fn registry_upload_ids(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT id FROM registry_uploads")
                .map_err(Error::sql("list uploads"))?;
            let ids = stmt
                .query_map([], |r| r.get(0))
                .map_err(Error::sql("list uploads"))?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(Error::sql("list uploads"))?;
            Ok(ids)
        })
        .await
    }

    /// Every blob some repository needs, with the repositories that need it (see
    /// [`BlobReference`]), for `palisade admin check`.
    pub async fn registry_blob_references(&self) -> Result<Vec<BlobReference>> {
        self.read(blob_references).await
    }

    /// Every recorded blob digest, for the collector's sweep of stray blob files.
    pub async fn registry_blob_digests(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT digest FROM registry_blobs")
                .map_err(Error::sql("list blobs"))?;
            let ids = stmt
                .query_map([], |r| r.get(0))
                .map_err(Error::sql("list blobs"))?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(Error::sql("list blobs"))?;
            Ok(ids)
        })
        .await
    }

    /// The database half of garbage collection, in one transaction:
    /// 1. repositories of deleted tenants go (with their links, manifests, tags, uploads);
    /// 2. uploads idle since before `idle_before` go, except those listed in `busy`;
    /// 3. repositories with no blob, manifest or upload go;
    /// 4. blob rows that no repository links and no manifest is or references go.
    ///
    /// Returns what was removed; the caller then deletes the files of those blobs and uploads.
    pub async fn registry_collect_garbage(
        &self,
        idle_before: Timestamp,
        busy: Vec<String>,
    ) -> Result<CollectedRows> {
        self.write(move |tx, _| {
            let mut out = CollectedRows::default();
            let stale_repos = "SELECT id FROM registry_repositories WHERE tenant_id <> '' AND tenant_id NOT IN (SELECT id FROM tenants)";
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT id FROM registry_uploads WHERE repository_id IN ({stale_repos}) OR updated_at < ?"
                ))
                .map_err(Error::sql("find stale uploads"))?;
            let candidates = stmt
                .query_map([to_millis(idle_before)], |r| r.get::<_, String>(0))
                .map_err(Error::sql("find stale uploads"))?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(Error::sql("find stale uploads"))?;
            drop(stmt);
            for id in candidates {
                if busy.contains(&id) {
                    continue;
                }
                tx.execute("DELETE FROM registry_uploads WHERE id = ?", [&id])
                    .map_err(Error::sql("delete stale upload"))?;
                out.uploads.push(id);
            }
            let removed = tx
                .execute(
                    &format!("DELETE FROM registry_repositories WHERE id IN ({stale_repos}) AND id NOT IN (SELECT repository_id FROM registry_uploads)"),
                    [],
                )
                .map_err(Error::sql("delete repositories of deleted tenants"))?;
            out.repositories += removed as u64;
            let removed = tx
                .execute(
                    "DELETE FROM registry_repositories
                     WHERE id NOT IN (SELECT repository_id FROM registry_blob_links)
                       AND id NOT IN (SELECT repository_id FROM registry_manifests)
                       AND id NOT IN (SELECT repository_id FROM registry_uploads)",
                    [],
                )
                .map_err(Error::sql("delete empty repositories"))?;
            out.repositories += removed as u64;
            let mut stmt = tx
                .prepare(
                    "DELETE FROM registry_blobs
                     WHERE digest NOT IN (SELECT digest FROM registry_blob_links)
                       AND digest NOT IN (SELECT digest FROM registry_manifests)
                       AND digest NOT IN (SELECT child_digest FROM registry_manifest_refs)
                     RETURNING digest",
                )
                .map_err(Error::sql("delete unreferenced blobs"))?;
            out.blobs = stmt
                .query_map([], |r| r.get(0))
                .map_err(Error::sql("delete unreferenced blobs"))?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(Error::sql("delete unreferenced blobs"))?;
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::SealingKey;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s =
            Store::open(&dir.path().join("t.db"), SealingKey::from_bytes(&[7; 32])).expect("open");
        (dir, s)
    }

    fn manifest(digest: String, blobs: Vec<String>, subject: Option<String>) -> NewManifest {
        NewManifest {
            digest,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 10,
            artifact_type: Some("application/x-test".into()),
            subject,
            annotations: None,
            blobs,
            manifests: vec![],
        }
    }

    #[tokio::test]
    async fn manifest_put_refuses_missing_references_and_stores_nothing() {
        let (_d, s) = store();
        let repo = s
            .registry_ensure_repository("", "shared/a")
            .await
            .expect("repo");
        let out = s
            .registry_put_manifest(repo, manifest(d(9), vec![d(1)], None), Some("v1"))
            .await
            .expect("put");
        assert_eq!(out, PutManifest::MissingReferences(vec![d(1)]));
        assert_eq!(s.registry_manifest(repo, &d(9)).await.expect("read"), None);
        assert!(!s.registry_blob_recorded(&d(9)).await.expect("read"));
    }

    #[tokio::test]
    async fn repositories_of_a_deleted_tenant_are_hidden_then_collected() {
        let (_d, s) = store();
        let t = s
            .insert_tenant(crate::model::NewTenant {
                name: "gone".into(),
                description: String::new(),
            })
            .await
            .expect("tenant");
        let repo = s
            .registry_ensure_repository(&t.id, "gone/app")
            .await
            .expect("repo");
        s.registry_commit_blob(repo, None, &d(1), 3)
            .await
            .expect("blob");
        let all = RegistryScope {
            all: true,
            tenants: vec![],
        };
        let (names, _) = s
            .registry_catalog(all.clone(), None, 10)
            .await
            .expect("list");
        assert_eq!(names, vec!["gone/app".to_string()]);
        s.delete_tenant(&t.id, None).await.expect("delete tenant");
        let (names, _) = s.registry_catalog(all, None, 10).await.expect("list");
        assert!(names.is_empty(), "{names:?}");
        let rows = s.registry_collect_garbage(now(), vec![]).await.expect("gc");
        assert_eq!(rows.repositories, 1);
        assert_eq!(rows.blobs, vec![d(1)]);
    }

    #[tokio::test]
    async fn tags_page_in_lexical_order() {
        let (_d, s) = store();
        let repo = s
            .registry_ensure_repository("", "shared/a")
            .await
            .expect("repo");
        for tag in ["b", "a", "c"] {
            s.registry_put_manifest(repo, manifest(d(9), vec![], None), Some(tag))
                .await
                .expect("put");
        }
        let (page, more) = s.registry_tags(repo, None, 2).await.expect("tags");
        assert_eq!((page, more), (vec!["a".to_string(), "b".into()], true));
        let (page, more) = s.registry_tags(repo, Some("b"), 2).await.expect("tags");
        assert_eq!((page, more), (vec!["c".to_string()], false));
    }

    #[tokio::test]
    async fn blob_referenced_by_a_manifest_cannot_be_unlinked_until_the_manifest_goes() {
        let (_d, s) = store();
        let repo = s
            .registry_ensure_repository("", "shared/a")
            .await
            .expect("repo");
        s.registry_commit_blob(repo, None, &d(1), 3)
            .await
            .expect("blob");
        s.registry_put_manifest(repo, manifest(d(9), vec![d(1)], None), None)
            .await
            .expect("put");
        assert_eq!(
            s.registry_unlink_blob(repo, &d(1)).await.expect("unlink"),
            UnlinkBlob::Referenced { manifest: d(9) }
        );
        assert_eq!(
            s.registry_delete_manifest(repo, &d(9))
                .await
                .expect("delete"),
            DeleteManifest::Deleted
        );
        assert_eq!(
            s.registry_unlink_blob(repo, &d(1)).await.expect("unlink"),
            UnlinkBlob::Unlinked
        );
    }

    #[tokio::test]
    async fn blob_references_are_what_the_collector_keeps_also_in_a_snapshot() {
        let (dir, s) = store();
        let a = s
            .registry_ensure_repository("", "shared/a")
            .await
            .expect("repo");
        let b = s
            .registry_ensure_repository("t1", "acme/b")
            .await
            .expect("repo");
        s.registry_commit_blob(a, None, &d(1), 3)
            .await
            .expect("blob");
        s.registry_put_manifest(a, manifest(d(9), vec![d(1)], None), Some("v1"))
            .await
            .expect("put");
        s.registry_mount_blob(a, b, &d(1)).await.expect("mount");
        // Recorded but no longer referenced: the collector would delete it, a backup skips it.
        s.registry_commit_blob(b, None, &d(2), 3)
            .await
            .expect("blob");
        s.registry_unlink_blob(b, &d(2)).await.expect("unlink");
        let r = |digest: String, repository: &str| BlobReference {
            digest,
            repository: repository.into(),
        };
        let expected = vec![r(d(1), "acme/b"), r(d(1), "shared/a"), r(d(9), "shared/a")];
        assert_eq!(s.registry_blob_references().await.expect("refs"), expected);
        let snapshot = dir.path().join("snapshot.db");
        crate::store::backup_to(s.path(), &snapshot).expect("backup");
        assert_eq!(
            crate::store::referenced_blobs(&snapshot).expect("refs"),
            expected
        );
        let v1 = dir.path().join("v1.db");
        rusqlite::Connection::open(&v1)
            .and_then(|c| c.execute_batch("PRAGMA user_version = 1; CREATE TABLE users (id TEXT);"))
            .expect("v1 database");
        assert_eq!(crate::store::referenced_blobs(&v1).expect("refs"), vec![]);
    }
}
