//! Layout of the data directory and the lock that keeps two appliances off one directory.
//!
//! ```text
//! palisade-data/          mode 0700
//!   state.db              SQLite database (WAL)
//!   secret.key            key sealing stored credentials (0600)
//!   pki/ca.crt, ca.key    internal CA (key 0600)
//!   broker/               message broker log: topics/<name>/, groups/ (see docs/broker-log.md)
//!   registry/             OCI registry: blobs/sha256/<2 hex>/<64 hex>, uploads/<uuid>,
//!                         gc.lock (collector vs. admin backup/check, see registry::collector_lock)
//!   artifacts/sha256/<2 hex>/<64 hex>
//!                         file artifacts of imported bundles (appliance binaries and images,
//!                         other files), content-addressed; see docs/bundle-format.md
//!   staging/<bundle id>/  a bundle import in progress (kept across a crash, to resume)
//!   palisade.lock         held by a running `palisade serve`, and by `palisade bundle import`
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;

/// Failures preparing the data directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is in use by a running palisade serve: stop it first (or give another --data-dir)", path.display())]
    Locked { path: PathBuf },
}

/// The data directory of one appliance.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// Holds the directory's lock until dropped.
pub struct DirLock {
    _file: File,
}

impl DataDir {
    /// Use `root`, creating it (mode 0700) if needed.
    pub fn create(root: &Path) -> Result<DataDir, Error> {
        use std::os::unix::fs::DirBuilderExt;
        if !root.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(|source| Error::Io {
                    op: "create data directory",
                    path: root.to_path_buf(),
                    source,
                })?;
        }
        Ok(DataDir {
            root: root.to_path_buf(),
        })
    }

    /// Use an existing data directory (offline admin tasks must not invent an empty one).
    pub fn existing(root: &Path) -> Result<DataDir, Error> {
        if !root.join("state.db").exists() {
            return Err(Error::Io {
                op: "find the database in",
                path: root.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no state.db: give the --data-dir of an appliance (palisade serve creates one)",
                ),
            });
        }
        Ok(DataDir {
            root: root.to_path_buf(),
        })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLite database.
    pub fn db_path(&self) -> PathBuf {
        self.root.join("state.db")
    }

    /// The key sealing stored secrets.
    pub fn sealing_key_path(&self) -> PathBuf {
        self.root.join("secret.key")
    }

    /// The internal CA's directory.
    pub fn pki_dir(&self) -> PathBuf {
        self.root.join("pki")
    }

    /// The message broker's log: topics, consumer group positions.
    pub fn broker_dir(&self) -> PathBuf {
        self.root.join("broker")
    }

    /// The OCI registry's blob store and upload files.
    pub fn registry_dir(&self) -> PathBuf {
        self.root.join("registry")
    }

    /// Where bundle imports stage their content before it moves into place.
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// The content-addressed store of imported file artifacts.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    /// Take the directory's exclusive lock, failing at once if a running appliance holds it.
    pub fn lock(&self) -> Result<DirLock, Error> {
        let path = self.root.join("palisade.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Io {
                op: "open lock file",
                path: path.clone(),
                source,
            })?;
        match file.try_lock_exclusive() {
            Ok(true) => Ok(DirLock { _file: file }),
            Ok(false) => Err(Error::Locked {
                path: self.root.clone(),
            }),
            Err(source) => Err(Error::Io {
                op: "lock",
                path,
                source,
            }),
        }
    }
}
