//! Versioned schema migrations, applied in order at start; `PRAGMA user_version` records the
//! version reached. A migration and its version bump commit together, so a crash mid-migration
//! leaves the previous version intact.

use rusqlite::Connection;

use super::{Error, Result};

/// Each entry is one migration; its version is its position, counting from 1.
const MIGRATIONS: &[&str] = &[
    // 1: identity, tenancy, domain objects, audit.
    r#"
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    version INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    version INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL DEFAULT '',
    password_hash TEXT NOT NULL,
    tenant_id TEXT REFERENCES tenants(id),
    disabled INTEGER NOT NULL DEFAULT 0,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER,
    version INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX users_tenant ON users(tenant_id);
CREATE TABLE role_bindings (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    tenant_id TEXT REFERENCES tenants(id),
    project_id TEXT REFERENCES projects(id),
    created_at INTEGER NOT NULL,
    UNIQUE (user_id, role, tenant_id, project_id)
);
CREATE INDEX role_bindings_user ON role_bindings(user_id);
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    secret_hash BLOB NOT NULL UNIQUE,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER,
    last_used_at INTEGER,
    created_at INTEGER NOT NULL,
    UNIQUE (user_id, name)
);
CREATE TABLE sessions (
    secret_hash BLOB PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE setup_tokens (
    secret_hash BLOB PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE TABLE cloud_accounts (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    credentials BLOB,
    ca_bundle TEXT NOT NULL DEFAULT '',
    placement TEXT NOT NULL DEFAULT '{}',
    version INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (project_id, name)
);
CREATE TABLE packs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    layer_type TEXT NOT NULL,
    digest TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    UNIQUE (name, version)
);
CREATE TABLE profiles (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    latest_revision INTEGER NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (project_id, name)
);
CREATE TABLE profile_revisions (
    profile_id TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
    revision INTEGER NOT NULL,
    layers TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (profile_id, revision)
);
-- Revisions are immutable: the database itself refuses edits.
CREATE TRIGGER profile_revisions_immutable BEFORE UPDATE ON profile_revisions
BEGIN SELECT RAISE(ABORT, 'profile revisions are immutable'); END;
CREATE TABLE clusters (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    profile_id TEXT NOT NULL REFERENCES profiles(id),
    profile_revision INTEGER NOT NULL,
    cloud_account_id TEXT NOT NULL REFERENCES cloud_accounts(id),
    node_pools TEXT NOT NULL,
    drift_policy TEXT NOT NULL,
    status TEXT NOT NULL,
    conditions TEXT NOT NULL DEFAULT '[]',
    version INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (project_id, name),
    FOREIGN KEY (profile_id, profile_revision) REFERENCES profile_revisions(profile_id, revision)
);
CREATE INDEX clusters_tenant ON clusters(tenant_id);
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    object_kind TEXT NOT NULL,
    object_id TEXT NOT NULL,
    tenant_id TEXT,
    project_id TEXT,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX events_object ON events(object_id);
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    source TEXT NOT NULL,
    outcome TEXT NOT NULL,
    request_id TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
-- The newest entry's seq and hash, updated with every append, so that deleting entries from
-- the end of the log is detected too.
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
"#,
    // 2: the OCI registry's metadata. Blob contents live on disk under <data-dir>/registry/.
    // tenant_id is '' for shared/ repositories.
    r#"
CREATE TABLE registry_repositories (
    id INTEGER PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE INDEX registry_repositories_name ON registry_repositories(name);
CREATE TABLE registry_blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE registry_blob_links (
    repository_id INTEGER NOT NULL REFERENCES registry_repositories(id) ON DELETE CASCADE,
    digest TEXT NOT NULL REFERENCES registry_blobs(digest),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX registry_blob_links_digest ON registry_blob_links(digest);
CREATE TABLE registry_manifests (
    repository_id INTEGER NOT NULL REFERENCES registry_repositories(id) ON DELETE CASCADE,
    digest TEXT NOT NULL REFERENCES registry_blobs(digest),
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    artifact_type TEXT,
    subject TEXT,
    annotations TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX registry_manifests_digest ON registry_manifests(digest);
CREATE INDEX registry_manifests_subject ON registry_manifests(repository_id, subject);
CREATE TABLE registry_manifest_refs (
    repository_id INTEGER NOT NULL,
    manifest_digest TEXT NOT NULL,
    child_digest TEXT NOT NULL REFERENCES registry_blobs(digest),
    PRIMARY KEY (repository_id, manifest_digest, child_digest),
    FOREIGN KEY (repository_id, manifest_digest)
        REFERENCES registry_manifests(repository_id, digest) ON DELETE CASCADE
);
CREATE INDEX registry_manifest_refs_child ON registry_manifest_refs(repository_id, child_digest);
CREATE INDEX registry_manifest_refs_child_digest ON registry_manifest_refs(child_digest);
CREATE TABLE registry_tags (
    repository_id INTEGER NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (repository_id, tag),
    FOREIGN KEY (repository_id, digest)
        REFERENCES registry_manifests(repository_id, digest) ON DELETE CASCADE
);
CREATE TABLE registry_uploads (
    id TEXT PRIMARY KEY,
    repository_id INTEGER NOT NULL REFERENCES registry_repositories(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX registry_uploads_repository ON registry_uploads(repository_id);
"#,
    // 3: audit entries of requests in flight. Written before a mutating request runs and removed
    // in the transaction that appends its chained entry; rows left by a crash become chained
    // entries at the next start, so no change can reach the database unaudited.
    r#"
CREATE TABLE audit_pending (
    request_id TEXT PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    source TEXT NOT NULL
);
"#,
    // 4: client certificates issued to broker peers (agents, gateways, other brokers). The
    // broker accepts a certificate only if its serial is here and not revoked.
    r#"
CREATE TABLE broker_certificates (
    serial TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    issued_by TEXT NOT NULL,
    revoked_at INTEGER,
    revoked_by TEXT
);
CREATE INDEX broker_certificates_subject ON broker_certificates(kind, subject);
"#,
    // 5: pull credentials of clusters (read-only registry access).
    r#"
CREATE TABLE pull_credentials (
    id TEXT PRIMARY KEY,
    cluster_id TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    username TEXT NOT NULL,
    prefix TEXT NOT NULL,
    secret_hash BLOB NOT NULL UNIQUE,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX pull_credentials_cluster ON pull_credentials (cluster_id);
"#,
    // 6: pack sources: external registries of tenants, and the packs last found in each.
    r#"
CREATE TABLE pack_sources (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    prefix TEXT NOT NULL DEFAULT '',
    credentials BLOB,
    ca_bundle TEXT NOT NULL DEFAULT '',
    synced_at INTEGER,
    sync_error TEXT NOT NULL DEFAULT '',
    version INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE TABLE pack_source_packs (
    id TEXT PRIMARY KEY,
    source_id TEXT NOT NULL REFERENCES pack_sources(id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    layer_type TEXT NOT NULL,
    digest TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    UNIQUE (source_id, name, version)
);
"#,
    // 7: offline bundles: the public keys trusted to sign them, what was imported (for
    // rollback protection and audit), and where each artifact went.
    r#"
CREATE TABLE bundle_trusted_keys (
    key_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    comment TEXT NOT NULL DEFAULT '',
    added_by TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE bundle_imports (
    id INTEGER PRIMARY KEY,
    bundle_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    created TEXT NOT NULL,
    signers TEXT NOT NULL,
    trusted INTEGER NOT NULL,
    imported_by TEXT NOT NULL,
    imported_at INTEGER NOT NULL,
    UNIQUE (name, version)
);
CREATE TABLE bundle_artifacts (
    import_id INTEGER NOT NULL REFERENCES bundle_imports(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    digest TEXT NOT NULL,
    location TEXT NOT NULL,
    PRIMARY KEY (import_id, kind, name, version)
);
CREATE INDEX bundle_artifacts_digest ON bundle_artifacts(digest);
"#,
    // 8: provisioning. Machines the orchestrator made, the result of checking cloud accounts,
    // per-cluster bootstrap secrets (sealed), and deletion as a phase of the cluster.
    r#"
CREATE TABLE machines (
    cluster_id TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    pool TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    role TEXT NOT NULL,
    provider_id TEXT,
    phase TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    addresses TEXT NOT NULL DEFAULT '[]',
    static_ip TEXT,
    -- Times the machine was deleted and created again after failing on the infrastructure.
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    -- When the phase last changed.
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (cluster_id, name)
);
CREATE TABLE cloud_account_checks (
    account_id TEXT PRIMARY KEY REFERENCES cloud_accounts(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    endpoint_product TEXT NOT NULL DEFAULT '',
    checks TEXT NOT NULL DEFAULT '[]',
    error TEXT NOT NULL DEFAULT '',
    error_kind TEXT NOT NULL DEFAULT '',
    placements TEXT NOT NULL DEFAULT '[]',
    requested_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE TABLE cluster_secrets (
    cluster_id TEXT PRIMARY KEY REFERENCES clusters(id) ON DELETE CASCADE,
    sealed BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
ALTER TABLE clusters ADD COLUMN deleting INTEGER NOT NULL DEFAULT 0;
-- The spec version and account version at which the orchestrator gave up (permanent error):
-- it tries again only when one of them changes.
ALTER TABLE clusters ADD COLUMN failed_at_version TEXT;
"#,
];

/// The schema version this executable writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Apply every migration newer than the database's version, each in its own transaction.
pub(super) fn apply(conn: &mut Connection) -> Result<()> {
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(Error::sql("read schema version"))?;
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i64 + 1;
        let tx = conn
            .transaction()
            .map_err(|source| Error::Migrate { version, source })?;
        tx.execute_batch(sql)
            .and_then(|_| tx.execute_batch(&format!("PRAGMA user_version = {version}")))
            .map_err(|source| Error::Migrate { version, source })?;
        tx.commit()
            .map_err(|source| Error::Migrate { version, source })?;
        tracing::info!(version, "applied schema migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_an_empty_database_and_is_idempotent() {
        let mut c = Connection::open_in_memory().expect("open");
        apply(&mut c).expect("first");
        apply(&mut c).expect("second");
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn refuses_a_database_from_a_newer_version() {
        let mut c = Connection::open_in_memory().expect("open");
        c.execute_batch("PRAGMA user_version = 999").expect("set");
        assert!(matches!(
            apply(&mut c),
            Err(Error::SchemaTooNew { found: 999, .. })
        ));
    }
}
