//! Errors of loading, rendering, packaging and reading packs. Every message names the file (and
//! line or field where there is one) and says what to change.

use std::path::PathBuf;

/// What went wrong with a pack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The pack directory lacks a file every pack needs.
    #[error("{file} is missing from the pack: {fix}")]
    Missing { file: String, fix: String },
    /// A file that has no place in a pack, or is not a regular file.
    #[error("{file}: {reason}")]
    Unexpected { file: String, reason: String },
    /// A file is not what its format requires (bad TOML, YAML, JSON; line in the message).
    #[error("{file}: {reason}")]
    Syntax { file: String, reason: String },
    /// A field of `pack.toml` (or of the pack metadata) is wrong.
    #[error("{file}: field {field}: {reason}")]
    Field {
        file: String,
        field: String,
        reason: String,
    },
    /// A `${values...}` placeholder names a key the values do not have, or is malformed.
    #[error("{file} line {line}: {reason}")]
    Placeholder {
        file: String,
        line: usize,
        reason: String,
    },
    /// A rendered Kubernetes document is not a valid object.
    #[error("{file} (document {document}, line {line}): {reason}")]
    Manifest {
        file: String,
        document: usize,
        line: usize,
        reason: String,
    },
    /// Values (the defaults, or the user's merged over them) break `values.schema.json`.
    #[error("{source_name} do not match values.schema.json: {problems}")]
    Schema {
        /// "default values (values.yaml)" or "values".
        source_name: String,
        /// Every violation, `; `-separated, each with its JSON path.
        problems: String,
    },
    /// The pack, or its archive, is larger than a limit.
    #[error("{what} is larger than {limit} bytes: {fix}")]
    TooLarge {
        what: String,
        limit: u64,
        fix: String,
    },
    /// The pack does not fit a cluster: Kubernetes version or required packs.
    #[error("pack {pack}: {reason}")]
    Constraint { pack: String, reason: String },
    /// An OCI layout or artifact is not a Palisade pack, or is inconsistent.
    #[error("{what}: {reason}")]
    Artifact { what: String, reason: String },
    /// Fetching a pack from a registry failed.
    #[error("cannot fetch pack {reference}: {source}")]
    Fetch {
        reference: String,
        #[source]
        source: Box<crate::oci_pull::Error>,
    },
}

/// Results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn field(file: &str, field: &str, reason: impl Into<String>) -> Self {
        Error::Field {
            file: file.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn artifact(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Artifact {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
