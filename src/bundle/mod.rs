//! Offline bundles: the one-file, signed, content-addressed carrier of packs, container images,
//! appliance binaries and images, and other files into an air-gapped site.
//!
//! Owns the format ([`format`], specified in `docs/bundle-format.md`), signing keys and
//! signatures ([`keys`]), recipes ([`recipe`]), building ([`build`]), streaming verification
//! ([`reader`]), import into a data directory ([`import`]) and the resumable upload sessions
//! that bring a bundle to the running appliance ([`uploads`]). Called by `cli::bundle`; the
//! import writes the registry through `crate::registry::blobs` and `crate::store` only.

pub mod build;
pub mod error;
pub mod format;
pub mod import;
pub mod keys;
pub mod layout;
pub mod reader;
pub mod recipe;
pub mod uploads;

pub use error::{Error, Result};

/// Progress of a long step, shown by the CLI (a bar on a terminal, plain lines otherwise).
pub trait Progress: Send + Sync {
    /// A step of `total` bytes begins.
    fn start(&self, _what: &str, _total: u64) {}
    /// `n` more bytes are done.
    fn advance(&self, _n: u64) {}
    /// The step is over.
    fn done(&self) {}
    /// A remark between steps.
    fn message(&self, _text: &str) {}
}

/// Shows nothing.
pub struct Silent;

impl Progress for Silent {}
