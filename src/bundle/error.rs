//! Every way building, reading, verifying or importing a bundle can fail. Each message names
//! what is wrong and, where the reader can act, what to do about it.

use std::path::PathBuf;

/// A failed bundle operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a bundle part: {reason}", path.display())]
    NotAPart { path: PathBuf, reason: String },
    #[error("{} is truncated: its header announces {expected} bytes of content, the file holds {actual}: copy the file again", path.display())]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("the parts given do not form one bundle: {reason}")]
    Parts { reason: String },
    #[error("part {index} of {count} is missing: give every part of the bundle (in any order)")]
    PartMissing { index: u32, count: u32 },
    #[error("part {index} was given twice ({} and {}): give each part once", first.display(), second.display())]
    PartDuplicate {
        index: u32,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("the compressed stream is corrupt ({reason}): the file was damaged in transit; copy it again")]
    Compression { reason: String },
    #[error(
        "the archive inside the bundle is corrupt or truncated ({reason}): copy the file again"
    )]
    Archive { reason: String },
    #[error("entry {name:?} is refused: {reason}")]
    EntryName { name: String, reason: String },
    #[error("entry {name:?} is a {kind}: a bundle holds regular files only")]
    EntryType { name: String, kind: String },
    #[error(
        "entry {name} is not listed in the signed metadata: the bundle was altered after signing"
    )]
    UnlistedEntry { name: String },
    #[error("entry {name} appears twice in the archive: the bundle was altered after signing")]
    DuplicateEntry { name: String },
    #[error("the bundle lacks {what}: it is incomplete or was altered after signing")]
    MissingEntry { what: String },
    #[error("{what} is {size} bytes, more than the limit of {limit}: this is not a bundle palisade wrote")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("the signed metadata (bundle.json) is invalid: {reason}")]
    ManifestInvalid { reason: String },
    #[error("bundle format version {found} is not supported (this palisade reads version {supported}): import it with a newer palisade")]
    UnsupportedFormat { found: u64, supported: u32 },
    #[error("the bundle needs palisade {required} or newer, this is {running}: upgrade the appliance first")]
    ApplianceTooOld { required: String, running: String },
    #[error("the bundle is not signed: only import it if you trust where it came from, with --allow-untrusted")]
    Unsigned,
    #[error("the signature by key {key_id} does not match the signed metadata: the bundle was altered after signing, or the signature is forged")]
    BadSignature { key_id: String },
    #[error("the signatures are invalid: {reason}")]
    SignatureInvalid { reason: String },
    #[error("the bundle is signed by {}, none of which is trusted: add the signer's public key to the trusted keys (palisade bundle trust add), or import this once with --allow-untrusted", key_ids.join(", "))]
    UntrustedSigner { key_ids: Vec<String> },
    #[error("{name} is {actual} bytes, the signed metadata says {expected}")]
    SizeMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("sha256 of {name} is {actual}, the signed metadata says {expected}: the bundle was altered or damaged")]
    DigestMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("decompression bomb refused: {reason}")]
    Bomb { reason: String },
    #[error("the archive is followed by unexpected data: the bundle was altered after signing")]
    TrailingData,
    #[error("bundle {name} {version} is older than {imported}, which is already imported: importing it would roll the appliance back; give --allow-downgrade if that is what you want")]
    Rollback {
        name: String,
        version: String,
        imported: String,
    },
    #[error("a different bundle named {name} {version} was already imported: the producer must give a new bundle a new version (or give --allow-downgrade to replace it)")]
    VersionReused { name: String, version: String },
    #[error("the bundle needs {needed} bytes, but {} has only {available} free: free some space first", path.display())]
    NoSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("recipe {}: {reason}", path.display())]
    Recipe { path: PathBuf, reason: String },
    #[error("OCI image layout {}: {reason}", path.display())]
    Layout { path: PathBuf, reason: String },
    #[error("key file {}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("artifact {name}: {reason}")]
    Artifact { name: String, reason: String },
    #[error("trusted keys: {reason}")]
    Trust { reason: String },
    #[error(transparent)]
    DataDir(#[from] crate::datadir::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Blob(#[from] crate::registry::blobs::Error),
}

/// Result of a bundle operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the error says the bundle itself is bad (as opposed to the bundle not being
    /// readable at all, or the data directory failing): `verify` exits 3 for these.
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            Error::Open { .. }
                | Error::Io { .. }
                | Error::DataDir(_)
                | Error::Store(_)
                | Error::Blob(_)
                | Error::Recipe { .. }
                | Error::Layout { .. }
                | Error::Key { .. }
        )
    }
}

/// Turn an `io::Error` of operation `op` on `path` into an [`Error::Io`].
pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}
