//! SQLite state: the only module that imports rusqlite or holds SQL text.
//!
//! One writer connection (SQLite allows one writer at a time) and a few reader connections
//! (WAL lets them read while the writer writes). Every call runs on tokio's blocking pool so
//! the async runtime never waits on disk. Callers use typed functions that take and return
//! `model` types; access decisions are made by the caller, and list queries take the
//! caller's `Visibility` so that rows outside it are never read.

mod audit;
mod auth;
mod backup;
mod broker_certs;
mod bundles;
mod cloud_accounts;
mod clusters;
mod error;
mod events;
mod machines;
mod migrations;
mod pack_sources;
mod profiles;
mod pull_credentials;
mod registry;
mod tenants;
mod users;

pub use audit::{AuditEntry, AuditFilter, AuditRecord, ChainReport};
pub use auth::{LoginCandidate, LoginOutcome, SessionInfo, SESSION_TTL};
pub use backup::{backup_to, referenced_blobs, referenced_files, restore_from, FileReference};
pub use broker_certs::BrokerCertificate;
pub use bundles::{
    BundleImport, ImportArtifact, ImportRepository, ImportedBundle, NewPack, TrustedKey,
};
pub use clusters::ClusterFilter;
pub use error::{Error, Found, Result};
pub use machines::{ClusterProgress, MachineUpdate, NewMachine};
pub use migrations::SCHEMA_VERSION;
pub use registry::{
    BlobReference, CollectedRows, DeleteManifest, NewManifest, PutManifest, Referrer,
    RegistryScope, RegistryUpload, StoredManifest, UnlinkBlob,
};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, Transaction};

use crate::model::{Timestamp, Visibility};
use crate::secrets::SealingKey;

/// Number of reader connections; more readers than cores buys nothing on this workload.
const READERS: usize = 4;

/// Handle to the appliance's database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// Bumped after every committed write: a cached read taken at an older generation is stale.
    generation: AtomicU64,
    key: SealingKey,
}

fn configure(conn: &Connection, path: &Path) -> Result<()> {
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 10000;",
    )
    .map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })
}

fn open_connection(path: &Path, flags: OpenFlags) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    configure(&conn, path)?;
    Ok(conn)
}

impl Store {
    /// Open (creating if needed) the database at `path` and apply pending migrations.
    pub fn open(path: &Path, key: SealingKey) -> Result<Store> {
        let mut writer = open_connection(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        migrations::apply(&mut writer)?;
        let readers = (0..READERS)
            .map(|_| {
                open_connection(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map(Mutex::new)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
                generation: AtomicU64::new(0),
                key,
            }),
        })
    }

    /// Generation of the data: changes after every write this process commits. Read it
    /// before reading data to tag what was read.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Run a read-only closure on a reader connection, off the async runtime.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let start = inner.next_reader.fetch_add(1, Ordering::Relaxed);
            // Take the first free reader, starting from a rotating index; wait on one if all are busy.
            for i in 0..inner.readers.len() {
                let slot = &inner.readers[(start + i) % inner.readers.len()];
                if let Ok(conn) = slot.try_lock() {
                    return f(&conn);
                }
            }
            let conn = inner.readers[start % inner.readers.len()]
                .lock()
                .map_err(|_| Error::Poisoned)?;
            f(&conn)
        })
        .await
        .map_err(|_| Error::Poisoned)?
    }

    /// Run a closure in one write transaction, committed if it returns Ok.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &SealingKey) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().map_err(|_| Error::Poisoned)?;
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(Error::sql("begin transaction"))?;
            let out = f(&tx, &inner.key)?;
            tx.commit().map_err(Error::sql("commit"))?;
            inner.generation.fetch_add(1, Ordering::Release);
            Ok(out)
        })
        .await
        .map_err(|_| Error::Poisoned)?
    }

    /// The schema version and SQLite library version, for `/v1/system`.
    pub async fn versions(&self) -> Result<(i64, String)> {
        self.read(|c| {
            let v: i64 = c
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(Error::sql("read schema version"))?;
            Ok((v, rusqlite::version().to_string()))
        })
        .await
    }

    /// Run SQLite's integrity and foreign-key checks; returns the problems found (empty: healthy).
    pub async fn check(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut problems = Vec::new();
            let mut stmt = c
                .prepare("PRAGMA integrity_check")
                .map_err(Error::sql("integrity check"))?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(Error::sql("integrity check"))?;
            for row in rows {
                let line = row.map_err(Error::sql("integrity check"))?;
                if line != "ok" {
                    problems.push(format!(
                        "{line}: restore the latest backup with palisade admin restore"
                    ));
                }
            }
            let mut stmt = c
                .prepare("PRAGMA foreign_key_check")
                .map_err(Error::sql("foreign key check"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(format!(
                        "row {} of table {} references a missing row of {}",
                        r.get::<_, i64>(1).unwrap_or(-1),
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(2)?
                    ))
                })
                .map_err(Error::sql("foreign key check"))?;
            for row in rows {
                problems.push(row.map_err(Error::sql("foreign key check"))?);
            }
            Ok(problems)
        })
        .await
    }

    /// Cheap query proving the database answers, for `/readyz`.
    pub async fn ping(&self) -> Result<()> {
        self.read(|c| {
            c.query_row("SELECT 1", [], |_| Ok(()))
                .map_err(Error::sql("ping"))
        })
        .await
    }

    /// Row counts of the main tables, for `/metrics` and the dashboard.
    pub async fn counts(&self) -> Result<Vec<(&'static str, i64)>> {
        self.read(|c| {
            let mut out = Vec::new();
            for table in [
                "tenants",
                "projects",
                "users",
                "cloud_accounts",
                "profiles",
                "clusters",
                "packs",
                "audit_log",
            ] {
                let n: i64 = c
                    .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                    .map_err(Error::sql("count rows"))?;
                out.push((table, n));
            }
            Ok(out)
        })
        .await
    }
}

/// Milliseconds since the epoch, as stored.
pub(crate) fn to_millis(t: Timestamp) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A stored millisecond timestamp as a time value.
pub(crate) fn from_millis(ms: i64) -> Timestamp {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A SQL condition restricting a project-scoped table to what `v` may see, with its parameters;
/// `project_column` holds the row's project id (`id` for the projects table itself).
pub(crate) fn visibility_clause(v: &Visibility, project_column: &str) -> (String, Vec<String>) {
    if v.all {
        return ("1".into(), vec![]);
    }
    let mut parts = Vec::new();
    let mut params = Vec::new();
    if !v.tenants.is_empty() {
        parts.push(format!(
            "tenant_id IN ({})",
            vec!["?"; v.tenants.len()].join(",")
        ));
        params.extend(v.tenants.iter().cloned());
    }
    if !v.projects.is_empty() {
        parts.push(format!(
            "{project_column} IN ({})",
            vec!["?"; v.projects.len()].join(",")
        ));
        params.extend(v.projects.iter().cloned());
    }
    if parts.is_empty() {
        ("0".into(), vec![])
    } else {
        (format!("({})", parts.join(" OR ")), params)
    }
}

/// Builds `WHERE ... ORDER BY id LIMIT n` for list queries from optional equality filters.
pub(crate) struct ListQuery {
    conditions: Vec<String>,
    params: Vec<rusqlite::types::Value>,
}

impl ListQuery {
    /// A query with no conditions yet.
    pub(crate) fn new() -> Self {
        ListQuery {
            conditions: vec![],
            params: vec![],
        }
    }

    /// Add a raw condition with its string parameters.
    pub(crate) fn raw(&mut self, cond: String, params: Vec<String>) -> &mut Self {
        self.conditions.push(cond);
        self.params
            .extend(params.into_iter().map(rusqlite::types::Value::Text));
        self
    }

    /// Add `column = value` when a value is given.
    pub(crate) fn eq(&mut self, column: &str, value: Option<&str>) -> &mut Self {
        if let Some(v) = value {
            self.conditions.push(format!("{column} = ?"));
            self.params
                .push(rusqlite::types::Value::Text(v.to_string()));
        }
        self
    }

    /// Run `SELECT {columns} FROM {table} WHERE ... AND id > after ORDER BY id LIMIT limit+1`
    /// and return one page.
    pub(crate) fn page<T>(
        mut self,
        conn: &Connection,
        select: &str,
        after: Option<&str>,
        limit: u32,
        map: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
        id_of: impl Fn(&T) -> String,
    ) -> Result<crate::model::Page<T>> {
        if let Some(a) = after {
            self.conditions.push("id > ?".into());
            self.params
                .push(rusqlite::types::Value::Text(a.to_string()));
        }
        let where_ = if self.conditions.is_empty() {
            "1".to_string()
        } else {
            self.conditions.join(" AND ")
        };
        let sql = format!("{select} WHERE {where_} ORDER BY id LIMIT {}", limit + 1);
        let mut stmt = conn.prepare_cached(&sql).map_err(Error::sql("list"))?;
        let mut items = stmt
            .query_map(rusqlite::params_from_iter(self.params.iter()), map)
            .map_err(Error::sql("list"))?
            .collect::<rusqlite::Result<Vec<T>>>()
            .map_err(Error::sql("list"))?;
        let next_after = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(&id_of)
        } else {
            None
        };
        Ok(crate::model::Page { items, next_after })
    }
}

/// Bump `version` of one row if it still has `expected` (when given); names what went wrong.
pub(crate) fn bump_version(
    tx: &Transaction<'_>,
    table: &'static str,
    id: &str,
    expected: Option<i64>,
) -> Result<i64> {
    let current: Option<i64> = tx
        .query_row(
            &format!("SELECT version FROM {table} WHERE id = ?"),
            [id],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(Error::sql("read version"))?;
    let current = current.ok_or(Error::NotFound { kind: table })?;
    if let Some(exp) = expected {
        if exp != current {
            return Err(Error::VersionMismatch { current });
        }
    }
    Ok(current + 1)
}
