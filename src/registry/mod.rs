//! The appliance's OCI registry: the distribution API (spec v1.1) under `/v2/` on the HTTPS
//! port, over a content-addressed blob store in the data directory.
//!
//! Owns: [`Registry`] (blob store, upload state, the collector's lock), the access rules for
//! repositories, the `/v2/` router and garbage collection. Repository metadata goes through
//! `crate::store` (the `registry_*` functions). Called by `crate::api::router` (routes) and
//! `crate::app` (construction and the periodic collector).
//!
//! Access rule enforced here (see [`authorize`]): `shared/...` is readable by every
//! authenticated caller and writable by system admins; `<tenant-name>/...` is readable by
//! callers who can see that tenant and writable by its tenant admins, editors of its projects,
//! and system admins. A repository outside the caller's scope answers exactly as an absent one
//! (`NAME_UNKNOWN`, 404), never 403.

pub mod blobs;
pub mod collector_lock;
pub mod errors;
mod handlers;
pub mod manifests;
pub mod names;
pub mod uploads;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::routing::any;
use axum::Router;

use crate::api::AppState;
use crate::model::{BindingScope, Principal, Role};
use crate::store::{RegistryScope, Store};
use blobs::BlobStore;
use collector_lock::CollectorLock;
use errors::RegistryError;
use names::{Digest, RepoName};
use uploads::UploadTracker;

/// Largest blob accepted, in bytes.
pub const MAX_BLOB_BYTES: u64 = 32 * 1024 * 1024 * 1024;
/// Most uploads open at once on the appliance.
pub const MAX_OPEN_UPLOADS: u64 = 1024;
/// An upload untouched for this long is abandoned; the collector removes it.
pub const UPLOAD_MAX_IDLE: Duration = Duration::from_secs(24 * 3600);
/// How often `palisade serve` collects garbage (and once this long after start).
pub const GC_INTERVAL: Duration = Duration::from_secs(3600);
/// How often a collection waiting for a backup to finish tries the lock again.
const BACKUP_POLL: Duration = Duration::from_millis(500);

/// The registry's state: one per running appliance, in `App`.
pub struct Registry {
    pub(crate) blobs: BlobStore,
    pub(crate) uploads: UploadTracker,
    /// Held shared by every operation that makes a blob reachable (commit of an upload, mount,
    /// manifest put) from the moment it checks or writes the file until its database
    /// transaction commits; held exclusively by the collector. So the collector never deletes
    /// a blob that is about to be linked.
    gc: tokio::sync::RwLock<()>,
    /// The registry's root, where the cross-process [`CollectorLock`] lives.
    root: PathBuf,
}

/// What one garbage collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blob files deleted (no repository referenced them, or no record existed).
    pub blobs: u64,
    /// Abandoned upload files deleted.
    pub uploads: u64,
    /// Empty repositories, and those of deleted tenants, removed.
    pub repositories: u64,
}

impl Registry {
    /// Open (creating if needed) the registry's storage under `root` (`<data-dir>/registry`).
    pub fn open(root: &Path) -> Result<Registry, blobs::Error> {
        Ok(Registry {
            blobs: BlobStore::open(root)?,
            uploads: UploadTracker::default(),
            gc: tokio::sync::RwLock::new(()),
            root: root.to_path_buf(),
        })
    }

    /// Hold while making blobs reachable from outside the `/v2/` handlers (a bundle imported
    /// into the running appliance): from checking that the files are in place until the
    /// database transaction that references them commits. The collector waits meanwhile.
    pub async fn reachability_guard(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gc.read().await
    }

    /// Delete what nothing references any more. The rule:
    ///
    /// - a blob is kept while any repository links it (it was pushed or mounted there and not
    ///   deleted), or any manifest is it or references it;
    /// - a blob file with no database record (left by a crash between the rename and the
    ///   commit) is deleted;
    /// - an upload is kept while a request is writing it, or if it was touched within
    ///   [`UPLOAD_MAX_IDLE`] (by default a day); an upload file with no record is deleted;
    /// - repositories with no blob, manifest or upload, and repositories of deleted tenants,
    ///   are removed (which unlinks their blobs).
    ///
    /// Runs under the exclusive side of the collector's lock, so no upload commit, mount or
    /// manifest put is between "file present" and "link committed" while it decides; and
    /// under the exclusive side of the cross-process [`CollectorLock`], so it never runs
    /// while `palisade admin backup` copies (or `admin check` reads) the blobs a database
    /// snapshot references. It waits for such a task to finish first.
    pub async fn collect_garbage(&self, store: &Store) -> Result<GcReport, RegistryError> {
        self.collect_garbage_idle_before(store, crate::model::now() - UPLOAD_MAX_IDLE)
            .await
    }

    /// [`Registry::collect_garbage`] with an explicit cut-off for abandoned uploads.
    pub async fn collect_garbage_idle_before(
        &self,
        store: &Store,
        idle_before: crate::model::Timestamp,
    ) -> Result<GcReport, RegistryError> {
        // The file lock first, then the in-process one: pushes only ever take the latter, so
        // waiting for a backup here never holds pushes up.
        let _no_backup = self.exclude_backups().await?;
        let _exclusive = self.gc.write().await;
        let busy: HashSet<String> = self
            .uploads
            .busy()
            .iter()
            .map(uuid::Uuid::to_string)
            .collect();
        // Listed before the rows are read: an upload's row is created before its file, so a
        // file listed here whose row is absent below is truly stray.
        let upload_files = self.blobs.upload_files().await?;
        let rows = store
            .registry_collect_garbage(idle_before, busy.iter().cloned().collect())
            .await?;
        let mut report = GcReport {
            repositories: rows.repositories,
            ..GcReport::default()
        };
        for d in &rows.blobs {
            if let Ok(d) = Digest::parse(d) {
                self.blobs.remove_blob(&d).await?;
                report.blobs += 1;
            }
        }
        let recorded: HashSet<String> = store.registry_blob_digests().await?.into_iter().collect();
        for d in self.blobs.blob_files().await? {
            if !recorded.contains(d.as_str()) {
                self.blobs.remove_blob(&d).await?;
                report.blobs += 1;
            }
        }
        let open: HashSet<String> = store.registry_upload_ids().await?.into_iter().collect();
        for name in upload_files {
            if !open.contains(&name) && !busy.contains(&name) {
                self.blobs.remove_upload_file(&name).await?;
                if let Ok(id) = uuid::Uuid::parse_str(&name) {
                    self.uploads.forget(&id);
                }
                report.uploads += 1;
            }
        }
        Ok(report)
    }

    /// Take the exclusive side of the cross-process lock, polling (without blocking a thread)
    /// while a backup or check holds the shared side.
    async fn exclude_backups(&self) -> Result<CollectorLock, RegistryError> {
        let mut logged = false;
        loop {
            if let Some(lock) = CollectorLock::try_exclusive(&self.root)? {
                return Ok(lock);
            }
            if !logged {
                tracing::info!("registry garbage collection waits for a running palisade admin backup or check");
                logged = true;
            }
            tokio::time::sleep(BACKUP_POLL).await;
        }
    }
}

/// Collect garbage every [`GC_INTERVAL`], for as long as the appliance runs.
pub async fn collect_garbage_periodically(app: AppState) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + GC_INTERVAL, GC_INTERVAL);
    loop {
        tick.tick().await;
        match app.registry.collect_garbage(&app.store).await {
            Ok(r) => tracing::info!(
                blobs = r.blobs,
                uploads = r.uploads,
                repositories = r.repositories,
                "registry garbage collected"
            ),
            Err(e) => tracing::error!(error = %e, "registry garbage collection failed"),
        }
    }
}

/// The `/v2/` routes. Repository names contain `/`, so one wildcard route takes every path
/// and the handler dispatches on its shape.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2", any(handlers::dispatch))
        .route("/v2/", any(handlers::dispatch))
        .route("/v2/{*path}", any(handlers::dispatch))
}

/// Whether `path` belongs to the registry (its authentication rules differ: see
/// `crate::api::middleware::authenticate`).
pub fn is_registry_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// What the caller wants to do with a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Read,
    Write,
}

/// Key of a repository's namespace in the store: `""` for `shared/`, else the tenant's id.
pub(crate) type TenantKey = String;

/// True if `p` may push to repositories of tenant `tenant_id`: its tenant admins, editors of
/// any of its projects, and system admins.
fn writes_tenant(p: &Principal, tenant_id: &str) -> bool {
    p.administers_tenant(tenant_id)
        || p.grants.iter().any(|g| {
            g.role == Role::ProjectEditor
                && matches!(&g.scope, BindingScope::Project { tenant, .. } if tenant == tenant_id)
        })
}

/// Decide whether `p` may `need` repository `name`; returns the namespace's key.
/// Invisible answers as absent (`NAME_UNKNOWN`); visible but read-only answers `DENIED`.
pub(crate) async fn authorize(
    store: &Store,
    p: &Principal,
    name: &RepoName,
    need: Need,
) -> Result<TenantKey, RegistryError> {
    let unknown = || RegistryError::NameUnknown {
        name: name.to_string(),
    };
    if name.namespace() == "shared" {
        if need == Need::Write && !p.is_system_admin() {
            return Err(RegistryError::Denied(
                "shared/ repositories are pushed to by system admins only: push to <your-tenant>/... instead".into(),
            ));
        }
        return Ok(String::new());
    }
    let tenant_id = store
        .registry_tenant_id(name.namespace())
        .await?
        .ok_or_else(unknown)?;
    if !p.sees_tenant(&tenant_id) {
        return Err(unknown());
    }
    if need == Need::Write && !writes_tenant(p, &tenant_id) {
        return Err(RegistryError::Denied(format!(
            "you may pull from but not push to repositories of tenant {}: pushing needs the tenant-admin role or project-editor in one of its projects",
            name.namespace()
        )));
    }
    Ok(tenant_id)
}

/// Which repositories `p` may list in `_catalog`.
pub(crate) fn catalog_scope(p: &Principal) -> RegistryScope {
    let v = p.tenant_visibility();
    RegistryScope {
        all: v.all,
        tenants: v.tenants,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Grant;
    use crate::secrets::SealingKey;
    use crate::store::NewManifest;
    use axum::body::Bytes;
    use sha2::{Digest as _, Sha256};

    fn principal(grants: Vec<Grant>) -> Principal {
        Principal {
            user_id: "u".into(),
            username: "u".into(),
            tenant_id: None,
            grants,
            token_id: None,
        }
    }

    fn project(role: Role, t: &str) -> Grant {
        Grant {
            role,
            scope: BindingScope::Project {
                tenant: t.into(),
                project: "p".into(),
            },
        }
    }

    #[test]
    fn editors_and_tenant_admins_write_a_tenant_viewers_do_not() {
        assert!(writes_tenant(
            &principal(vec![project(Role::ProjectEditor, "t1")]),
            "t1"
        ));
        assert!(!writes_tenant(
            &principal(vec![project(Role::ProjectEditor, "t1")]),
            "t2"
        ));
        assert!(!writes_tenant(
            &principal(vec![project(Role::ProjectViewer, "t1")]),
            "t1"
        ));
        assert!(writes_tenant(
            &principal(vec![Grant {
                role: Role::TenantAdmin,
                scope: BindingScope::Tenant("t1".into())
            }]),
            "t1"
        ));
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        registry: Registry,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Store::open(&dir.path().join("t.db"), SealingKey::from_bytes(&[3; 32])).expect("store");
        let registry = Registry::open(&dir.path().join("registry")).expect("registry");
        Fixture {
            _dir: dir,
            store,
            registry,
        }
    }

    /// Push `content` as a blob of `repo` the way the upload handlers do.
    async fn push_blob(f: &Fixture, repo: i64, content: &'static [u8]) -> Digest {
        let id = uuid::Uuid::new_v4();
        assert!(f
            .store
            .registry_create_upload(repo, &id.to_string(), 10)
            .await
            .expect("row"));
        f.registry.blobs.create_upload(&id).await.expect("file");
        let mut h = Sha256::new();
        let body = futures_util::stream::iter(vec![Ok::<_, String>(Bytes::from_static(content))]);
        let size = f
            .registry
            .blobs
            .append(&id, 0, &mut h, body, 1 << 20, None)
            .await
            .expect("append");
        let d = Digest::from_hasher(h);
        let _g = f.registry.gc.read().await;
        f.registry
            .blobs
            .commit_upload(&id, &d)
            .await
            .expect("commit");
        f.store
            .registry_commit_blob(repo, Some(&id.to_string()), d.as_str(), size)
            .await
            .expect("link");
        d
    }

    #[tokio::test]
    async fn collector_deletes_only_blobs_nothing_references_and_never_an_open_upload() {
        let f = fixture();
        let a = f
            .store
            .registry_ensure_repository("", "shared/a")
            .await
            .expect("repo");
        let b = f
            .store
            .registry_ensure_repository("", "shared/b")
            .await
            .expect("repo");
        let layer = push_blob(&f, a, b"layer").await;
        let config = push_blob(&f, a, b"config").await;
        let loose = push_blob(&f, a, b"loose").await;
        // The layer is also mounted into b; a manifest of a references config and layer.
        f.store
            .registry_mount_blob(a, b, layer.as_str())
            .await
            .expect("mount");
        let manifest = Bytes::from_static(b"{\"schemaVersion\":2}");
        let md = Digest::of(&manifest);
        f.registry
            .blobs
            .put_bytes(manifest.clone(), &md)
            .await
            .expect("manifest bytes");
        f.store
            .registry_put_manifest(
                a,
                NewManifest {
                    digest: md.to_string(),
                    media_type: manifests::OCI_MANIFEST.into(),
                    size: manifest.len() as u64,
                    artifact_type: None,
                    subject: None,
                    annotations: None,
                    blobs: vec![config.to_string(), layer.to_string()],
                    manifests: vec![],
                },
                Some("v1"),
            )
            .await
            .expect("manifest");
        // An upload in progress (not yet committed) and a stray file left by a crash.
        let open = uuid::Uuid::new_v4();
        f.store
            .registry_create_upload(a, &open.to_string(), 10)
            .await
            .expect("row");
        f.registry.blobs.create_upload(&open).await.expect("file");
        let stray = Digest::of(b"stray");
        f.registry
            .blobs
            .put_bytes(Bytes::from_static(b"stray"), &stray)
            .await
            .expect("stray");

        // `loose` is still linked to a: nothing but the stray file goes.
        let r = f.registry.collect_garbage(&f.store).await.expect("gc");
        assert_eq!(
            r,
            GcReport {
                blobs: 1,
                uploads: 0,
                repositories: 0
            }
        );
        assert!(!f.registry.blobs.has_blob(&stray).await);
        for d in [&layer, &config, &loose, &md] {
            assert!(f.registry.blobs.has_blob(d).await, "{d} was collected");
        }
        assert_eq!(
            f.registry.blobs.upload_size(&open).await.expect("size"),
            Some(0)
        );

        // Unlinked from its only repository, `loose` goes; the rest is still referenced.
        f.store
            .registry_unlink_blob(a, loose.as_str())
            .await
            .expect("unlink");
        let r = f.registry.collect_garbage(&f.store).await.expect("gc");
        assert_eq!(r.blobs, 1);
        assert!(!f.registry.blobs.has_blob(&loose).await);
        assert!(f.registry.blobs.has_blob(&config).await);

        // Manifest deleted and config unlinked: config and manifest go, the layer stays
        // because b still links it.
        f.store
            .registry_delete_manifest(a, md.as_str())
            .await
            .expect("delete");
        f.store
            .registry_unlink_blob(a, config.as_str())
            .await
            .expect("unlink");
        f.registry.collect_garbage(&f.store).await.expect("gc");
        assert!(!f.registry.blobs.has_blob(&config).await);
        assert!(!f.registry.blobs.has_blob(&md).await);
        assert!(f.registry.blobs.has_blob(&layer).await);
        assert_eq!(
            f.registry.blobs.upload_size(&open).await.expect("size"),
            Some(0),
            "an open upload must survive collection"
        );

        // An upload being written is kept even when idle past the cut-off; once the writer is
        // gone, the abandoned upload goes, and with it repository a, empty once its last blob
        // is unlinked. The layer stays: b still links it.
        f.store
            .registry_unlink_blob(a, layer.as_str())
            .await
            .expect("unlink");
        let guard = f.registry.uploads.begin(open).expect("free");
        let future = crate::model::now() + time::Duration::hours(1);
        f.registry
            .collect_garbage_idle_before(&f.store, future)
            .await
            .expect("gc");
        assert!(f
            .registry
            .blobs
            .upload_size(&open)
            .await
            .expect("size")
            .is_some());
        drop(guard);
        let r = f
            .registry
            .collect_garbage_idle_before(&f.store, future)
            .await
            .expect("gc");
        assert_eq!(r.uploads, 1);
        assert_eq!(r.repositories, 1);
        assert!(f
            .registry
            .blobs
            .upload_size(&open)
            .await
            .expect("size")
            .is_none());
        assert!(f.registry.blobs.has_blob(&layer).await);
        assert_eq!(
            f.store
                .registry_repository("", "shared/a")
                .await
                .expect("read"),
            None
        );
    }

    #[tokio::test]
    async fn collector_waits_for_a_backup_holding_the_file_lock() {
        let f = fixture();
        let a = f
            .store
            .registry_ensure_repository("", "shared/a")
            .await
            .expect("repo");
        let d = push_blob(&f, a, b"backed up").await;
        // What admin backup does, in another process: hold the shared side from its snapshot
        // until its copy ends. Meanwhile the blob loses its last reference.
        let backup = CollectorLock::shared(&f.registry.root, || panic!("no collection runs"))
            .expect("shared");
        f.store
            .registry_unlink_blob(a, d.as_str())
            .await
            .expect("unlink");
        let gc = f.registry.collect_garbage(&f.store);
        tokio::pin!(gc);
        let early = tokio::time::timeout(Duration::from_millis(300), &mut gc).await;
        assert!(early.is_err(), "the collector ran during a backup");
        assert!(f.registry.blobs.has_blob(&d).await);
        drop(backup);
        let r = tokio::time::timeout(Duration::from_secs(10), gc)
            .await
            .expect("collector finished")
            .expect("gc");
        assert_eq!(r.blobs, 1);
        assert!(!f.registry.blobs.has_blob(&d).await);
    }

    #[tokio::test]
    async fn collector_waits_for_a_commit_in_progress() {
        let f = fixture();
        let a = f
            .store
            .registry_ensure_repository("", "shared/a")
            .await
            .expect("repo");
        // A commit holds the shared lock between placing the file and linking it.
        let d = Digest::of(b"racing");
        let held = f.registry.gc.read().await;
        f.registry
            .blobs
            .put_bytes(Bytes::from_static(b"racing"), &d)
            .await
            .expect("file");
        let gc = f.registry.collect_garbage(&f.store);
        tokio::pin!(gc);
        let early = tokio::time::timeout(Duration::from_millis(100), &mut gc).await;
        assert!(early.is_err(), "the collector ran during a commit");
        f.store
            .registry_commit_blob(a, None, d.as_str(), 6)
            .await
            .expect("link");
        drop(held);
        let r = tokio::time::timeout(Duration::from_secs(10), gc)
            .await
            .expect("collector finished")
            .expect("gc");
        assert_eq!(r.blobs, 0);
        assert!(f.registry.blobs.has_blob(&d).await);
    }
}
