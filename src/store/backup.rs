//! Online backup and verified restore of the database file, and what a backup snapshot says
//! about the files it needs (registry blobs, bundle file artifacts). Called by `palisade admin backup` and `restore`.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::{Error, Result};

/// Copy the live database at `src` into a new file `dest` with SQLite's online backup API
/// (consistent even while the appliance writes), then check the copy's integrity.
pub fn backup_to(src: &Path, dest: &Path) -> Result<()> {
    let source =
        Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|source| {
            Error::Open {
                path: src.to_path_buf(),
                source,
            }
        })?;
    source
        .execute_batch("PRAGMA busy_timeout = 10000;")
        .map_err(Error::sql("configure backup source"))?;
    let mut target = Connection::open(dest).map_err(|source| Error::Open {
        path: dest.to_path_buf(),
        source,
    })?;
    {
        let backup = rusqlite::backup::Backup::new(&source, &mut target)
            .map_err(Error::sql("start backup"))?;
        backup
            .run_to_completion(256, std::time::Duration::from_millis(5), None)
            .map_err(Error::sql("copy database"))?;
    }
    // A backup must not depend on a WAL file next to it.
    target
        .execute_batch("PRAGMA journal_mode = DELETE;")
        .map_err(Error::sql("finish backup"))?;
    check_file(&target)
}

/// Check that `path` is a healthy palisade database this executable can open.
pub fn restore_from(path: &Path) -> Result<i64> {
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|source| {
            Error::Open {
                path: path.to_path_buf(),
                source,
            }
        })?;
    check_file(&conn)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(Error::sql("read schema version"))?;
    if version == 0 {
        return Err(Error::Corrupt(format!(
            "{} is not a palisade database (schema version 0)",
            path.display()
        )));
    }
    if version > super::SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found: version,
            supported: super::SCHEMA_VERSION,
        });
    }
    Ok(version)
}

/// The registry blobs the database *file* at `path` (a backup snapshot, not the live
/// database) references, by digest then repository. A database from before the registry
/// (schema version 1) references none.
pub fn referenced_blobs(path: &Path) -> Result<Vec<super::BlobReference>> {
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|source| {
            Error::Open {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let has_registry: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'registry_manifest_refs')",
            [],
            |r| r.get(0),
        )
        .map_err(Error::sql("look for the registry tables"))?;
    if !has_registry {
        return Ok(Vec::new());
    }
    super::registry::blob_references(&conn)
}

/// A file artifact of an imported bundle that a database references: its content lives in
/// `<data-dir>/artifacts/sha256/<2 hex>/<64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReference {
    /// `sha256:<64 hex>` of the content.
    pub digest: String,
    /// `kind name version of bundle <name> <version>`, for messages.
    pub what: String,
}

/// The bundle file artifacts the database *file* at `path` (a backup snapshot) references, by
/// digest. A database from before bundles references none.
pub fn referenced_files(path: &Path) -> Result<Vec<FileReference>> {
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|source| {
            Error::Open {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let has_bundles: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'bundle_artifacts')",
            [],
            |r| r.get(0),
        )
        .map_err(Error::sql("look for the bundle tables"))?;
    if !has_bundles {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare(
            "SELECT a.digest, a.kind || ' ' || a.name || ' ' || a.version || ' of bundle ' || i.name || ' ' || i.version
             FROM bundle_artifacts a JOIN bundle_imports i ON i.id = a.import_id
             WHERE a.location NOT LIKE 'registry:%' ORDER BY a.digest, 2",
        )
        .map_err(Error::sql("list bundle file artifacts"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(FileReference {
                digest: r.get(0)?,
                what: r.get(1)?,
            })
        })
        .map_err(Error::sql("list bundle file artifacts"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(Error::sql("list bundle file artifacts"))?;
    Ok(rows)
}

fn check_file(conn: &Connection) -> Result<()> {
    let result: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(Error::sql("integrity check"))?;
    if result == "ok" {
        Ok(())
    } else {
        Err(Error::Corrupt(result))
    }
}
