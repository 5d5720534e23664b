//! The lock that keeps the garbage collector (inside `palisade serve`) and the offline admin
//! tasks that read the blob store (`palisade admin backup`, `check`, `restore`, separate
//! processes) apart: an advisory `flock` on `<data-dir>/registry/gc.lock`.
//!
//! The collector holds it exclusively for each whole pass (see
//! [`super::Registry::collect_garbage`]); `admin backup` and `admin check` hold it shared from
//! before they read the database until they have read the last blob file. Rule enforced: no
//! blob file the database referenced when they read it can be deleted while they copy or
//! verify it. The in-process lock of [`super::Registry`] is the one pushes take; this one
//! exists only because the admin tasks run in another process.

use std::fs::File;
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;

use super::blobs::Error;

/// Name of the lock file in the registry's root directory.
pub const LOCK_FILE: &str = "gc.lock";

/// A held side of the collector's lock; released when dropped (the file is closed).
#[derive(Debug)]
pub struct CollectorLock {
    _file: File,
}

fn open(root: &Path) -> Result<(File, PathBuf), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|source| Error::Io {
            op: "create directory",
            path: root.to_path_buf(),
            source,
        })?;
    let path = root.join(LOCK_FILE);
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
    Ok((file, path))
}

impl CollectorLock {
    /// Take the shared side for the registry rooted at `root` (created if absent), waiting
    /// for a collection in progress to finish; `on_wait` is called once before waiting.
    /// Blocks the calling thread: call it from a blocking context.
    pub fn shared(root: &Path, on_wait: impl FnOnce()) -> Result<CollectorLock, Error> {
        let (file, path) = open(root)?;
        // Fully qualified: std's `File::try_lock_shared` (Rust 1.89) would otherwise shadow
        // fs4's and has another signature; the crate's minimum Rust is older.
        let taken = FileExt::try_lock_shared(&file).map_err(|source| Error::Io {
            op: "lock",
            path: path.clone(),
            source,
        })?;
        if !taken {
            on_wait();
            FileExt::lock_shared(&file).map_err(|source| Error::Io {
                op: "lock",
                path,
                source,
            })?;
        }
        Ok(CollectorLock { _file: file })
    }

    /// Take the exclusive side for the registry rooted at `root` without waiting; `None`
    /// while another holder (a backup or check) has it.
    pub fn try_exclusive(root: &Path) -> Result<Option<CollectorLock>, Error> {
        let (file, path) = open(root)?;
        let taken = FileExt::try_lock_exclusive(&file).map_err(|source| Error::Io {
            op: "lock",
            path,
            source,
        })?;
        Ok(taken.then_some(CollectorLock { _file: file }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_holders_exclude_the_exclusive_side_until_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("registry");
        let a = CollectorLock::shared(&root, || panic!("nothing holds it")).expect("shared");
        let b = CollectorLock::shared(&root, || panic!("shared is compatible")).expect("shared");
        assert!(CollectorLock::try_exclusive(&root).expect("try").is_none());
        drop(a);
        assert!(CollectorLock::try_exclusive(&root).expect("try").is_none());
        drop(b);
        let x = CollectorLock::try_exclusive(&root).expect("try");
        assert!(x.is_some());
        assert!(CollectorLock::try_exclusive(&root).expect("try").is_none());
    }
}
