//! Errors of the store, each naming the operation that failed.

use std::path::PathBuf;

use crate::model::Invalid;

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open database {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot apply schema migration {version}")]
    Migrate {
        version: i64,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the database has schema version {found}, newer than this executable understands ({supported}): run the newer palisade, or restore a backup made by this version"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("database operation '{op}' failed")]
    Sql {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{kind} not found")]
    NotFound { kind: &'static str },
    #[error("{0}")]
    Conflict(String),
    #[error(
        "the object changed since it was read (now at version {current}): read it again and retry"
    )]
    VersionMismatch { current: i64 },
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("cannot encrypt or decrypt a stored secret: {0}")]
    Seal(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{op} {}", path.display())]
    File {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a database worker stopped unexpectedly")]
    Poisoned,
}

/// Result of a store operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wrap a rusqlite error with the name of the operation, for `map_err`.
    pub(crate) fn sql(op: &'static str) -> impl Fn(rusqlite::Error) -> Error {
        move |source| Error::Sql { op, source }
    }

    /// Turn a UNIQUE constraint failure into a conflict with a message for the user.
    pub(crate) fn unique(op: &'static str, message: String) -> impl Fn(rusqlite::Error) -> Error {
        move |source| match &source {
            rusqlite::Error::SqliteFailure(e, _)
                if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                Error::Conflict(message.clone())
            }
            _ => Error::Sql { op, source },
        }
    }
}

/// Turns "not found" into `None`, for callers that treat absence as an answer, not an error.
pub trait Found<T> {
    /// `Ok(None)` for `Error::NotFound`, everything else unchanged.
    fn found(self) -> Result<Option<T>>;
}

impl<T> Found<T> for Result<T> {
    fn found(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
