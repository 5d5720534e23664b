//! The content-addressed blob store on disk, and the upload files that feed it.
//!
//! ```text
//! <data-dir>/registry/
//!   blobs/sha256/<2 hex>/<64 hex>   verified blobs (layers, configs, manifests), read-only
//!   uploads/<uuid>                  uploads in progress, appended to as chunks arrive
//!   uploads/manifest-<uuid>         a manifest being written (for the moment of the write)
//! ```
//!
//! A blob file appears under `blobs/` only by an atomic rename of an upload file whose sha256
//! was verified and which was fsynced first; the directory is fsynced after the rename. So a
//! file under `blobs/` always holds exactly the content its name says, even after a crash or
//! power loss. A digest already present is never written a second time. Only the registry
//! module writes through [`BlobStore`]; `palisade admin` (backup, restore, check) uses the
//! layout and verification helpers ([`blob_relative_path`], [`digest_of_relative_path`],
//! [`HashingReader`], [`hash_file`]). Which repositories hold a blob is recorded in the
//! store, not here.

use std::io::Read;
use std::path::{Path, PathBuf};

use axum::body::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::names::Digest;

/// A failed operation on the blob store, naming the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Result of a blob store operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where blob `d` lives relative to the registry's root: `blobs/sha256/<2 hex>/<64 hex>`.
pub fn blob_relative_path(d: &Digest) -> PathBuf {
    let hex = d.hex();
    Path::new("blobs").join("sha256").join(&hex[..2]).join(hex)
}

/// The digest a path relative to the registry's root names, if the path has exactly the form
/// `blobs/sha256/<2 hex>/<64 hex>` (lower-case, the 2 hex being the first two of the 64).
/// Anything else (`..`, `./`, extra slashes, upper case) is `None`: names from a backup
/// archive are untrusted input.
pub fn digest_of_relative_path(rel: &str) -> Option<Digest> {
    let rest = rel.strip_prefix("blobs/sha256/")?;
    let (prefix, hex) = rest.split_once('/')?;
    if prefix.len() != 2 || !hex.starts_with(prefix) {
        return None;
    }
    // Digest::parse checks 64 lower-case hex digits, so `hex` cannot hold another `/`.
    Digest::parse(&format!("sha256:{hex}")).ok()
}

/// A reader that hashes (and counts) every byte read through it, so content can be verified
/// against its digest while it is streamed elsewhere.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    /// Hash what is read from `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The digest of the bytes read so far, and their number.
    pub fn finish(self) -> (Digest, u64) {
        (Digest::from_hasher(self.hasher), self.bytes)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The digest and size of the file at `path`, read in chunks (blobs can be gigabytes).
pub fn hash_file(path: &Path) -> Result<(Digest, u64)> {
    let file = std::fs::File::open(path).map_err(io("open blob", path))?;
    let mut reader = HashingReader::new(std::io::BufReader::with_capacity(READ_CHUNK, file));
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(io("read blob", path))?;
    Ok(reader.finish())
}

/// Why appending a request body to an upload stopped.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Store(#[from] Error),
    #[error("the request body ended with an error: {0}")]
    Body(String),
    #[error("the upload would exceed {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the request body held {got} bytes, but {expected} were announced")]
    LengthMismatch { expected: u64, got: u64 },
}

/// Size of the buffer between the request body and the upload file.
const WRITE_BUFFER: usize = 1 << 20;
/// Size of the reads when hashing or serving a file.
pub const READ_CHUNK: usize = 256 * 1024;

/// Size of the reads that feed a blob's response body (`GET /v2/<name>/blobs/<digest>`).
/// Measured in docs/benchmarks.md ("Registry pull"): 1 MiB reads, one ahead of the network,
/// against 256 KiB reads through `tokio::fs`.
pub const SERVE_CHUNK: usize = 1 << 20;

/// The next `len` bytes of `file` (from its current position) as a stream of chunks of at
/// most [`SERVE_CHUNK`] bytes, for a response body.
///
/// Each chunk is one `read` on the blocking pool straight into the buffer that is sent (no
/// zero-filling, no second copy as `tokio::fs::File` makes), and the next chunk is read while
/// the current one is being sent. No thread is held while the client is slow: a read is
/// started only when the previous chunk was taken. A file shorter than `len` ends the stream
/// with an error (the client sees a cut-off body, never wrong bytes).
pub fn read_chunks(
    file: std::fs::File,
    len: u64,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    type Pending = tokio::task::JoinHandle<(std::fs::File, std::io::Result<Vec<u8>>)>;
    fn read_next(file: std::fs::File, left: u64) -> Pending {
        let n = left.min(SERVE_CHUNK as u64);
        tokio::task::spawn_blocking(move || {
            // `read_to_end` fills the spare capacity without initialising it first.
            let mut buf = Vec::with_capacity(n as usize);
            let read = (&file).take(n).read_to_end(&mut buf).map(|_| buf);
            (file, read)
        })
    }
    let first = (len > 0).then(|| read_next(file, len));
    futures_util::stream::unfold((first, len), |(pending, left)| async move {
        let (file, read) = match pending?.await {
            Ok(done) => done,
            Err(e) => return Some((Err(std::io::Error::other(e)), (None, 0))),
        };
        match read {
            Err(e) => Some((Err(e), (None, 0))),
            Ok(buf) if buf.is_empty() => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "blob file is shorter than its record",
                )),
                (None, 0),
            )),
            Ok(buf) => {
                let left = left - buf.len() as u64;
                // Read ahead: the next chunk comes off the disk while this one is sent.
                let next = (left > 0).then(|| read_next(file, left));
                Some((Ok(Bytes::from(buf)), (next, left)))
            }
        }
    })
}

/// The blob store rooted at `<data-dir>/registry`.
#[derive(Debug, Clone)]
pub struct BlobStore {
    blobs: PathBuf,
    uploads: PathBuf,
}

fn create_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io("create directory", path))
}

/// Make a rename or creation in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync directory", dir))
}

impl BlobStore {
    /// Use (creating if needed) the store under `root`.
    pub fn open(root: &Path) -> Result<BlobStore> {
        let blobs = root.join("blobs").join("sha256");
        let uploads = root.join("uploads");
        create_private_dir(&blobs)?;
        create_private_dir(&uploads)?;
        Ok(BlobStore { blobs, uploads })
    }

    /// Where blob `d` lives.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.blobs.join(&hex[..2]).join(hex)
    }

    /// Where upload `id` (a UUID, validated by the caller) is written.
    pub fn upload_path(&self, id: &uuid::Uuid) -> PathBuf {
        self.uploads.join(id.to_string())
    }

    /// Create the empty file of a new upload.
    pub async fn create_upload(&self, id: &uuid::Uuid) -> Result<()> {
        let path = self.upload_path(id);
        tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(io("create upload file", &path))?;
        Ok(())
    }

    /// Bytes received so far by upload `id`; `None` when its file is gone.
    pub async fn upload_size(&self, id: &uuid::Uuid) -> Result<Option<u64>> {
        let path = self.upload_path(id);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read size of upload", &path)(e)),
        }
    }

    /// Hash the bytes of upload `id` received so far (after a restart, or after a request
    /// that was cut off, the file on disk is the truth).
    pub async fn hash_upload(&self, id: &uuid::Uuid) -> Result<(Sha256, u64)> {
        let path = self.upload_path(id);
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(io("open upload", &path))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let mut n = 0u64;
        loop {
            let read = file
                .read(&mut buf)
                .await
                .map_err(io("read upload", &path))?;
            if read == 0 {
                return Ok((hasher, n));
            }
            hasher.update(&buf[..read]);
            n += read as u64;
        }
    }

    /// Append `body` to upload `id`, which holds `offset` bytes hashed into `hasher`. Stops
    /// with an error if the upload would pass `limit` bytes, or if `expected` bytes were
    /// announced and another number arrived. On success returns the new size and the hasher
    /// covers every byte; on failure the file is cut back to `offset` and `hasher` is left as
    /// it was, so a failed request changes nothing.
    pub async fn append<S, E>(
        &self,
        id: &uuid::Uuid,
        offset: u64,
        hasher: &mut Sha256,
        body: S,
        limit: u64,
        expected: Option<u64>,
    ) -> Result<u64, AppendError>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = self.upload_path(id);
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .await
            .map_err(io("open upload", &path))?;
        let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut h = hasher.clone();
        let outcome = copy_hashing(&mut out, &mut h, body, offset, limit, &path).await;
        let outcome = match outcome {
            Ok(size) => match expected {
                Some(e) if e != size - offset => Err(AppendError::LengthMismatch {
                    expected: e,
                    got: size - offset,
                }),
                _ => out
                    .flush()
                    .await
                    .map(|_| size)
                    .map_err(|e| io("write upload", &path)(e).into()),
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok(size) => {
                *hasher = h;
                Ok(size)
            }
            Err(e) => {
                // Cut the file back so its bytes and the caller's hasher agree again.
                let file = out.into_inner();
                file.set_len(offset)
                    .await
                    .map_err(io("truncate upload", &path))?;
                Err(e)
            }
        }
    }

    /// Make upload `id` (whose content hashes to `digest`) the blob `digest`: fsync it and
    /// rename it into place, or drop it if the blob is already present.
    pub async fn commit_upload(&self, id: &uuid::Uuid, digest: &Digest) -> Result<()> {
        let from = self.upload_path(id);
        let to = self.blob_path(digest);
        let dir = self.blobs.clone();
        tokio::task::spawn_blocking(move || place_file(&from, &to, &dir))
            .await
            .map_err(|e| Error::Io {
                op: "commit upload (worker stopped)",
                path: PathBuf::new(),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    /// Store `bytes` (whose digest is `digest`) as a blob, unless it is present already.
    pub async fn put_bytes(&self, bytes: Bytes, digest: &Digest) -> Result<()> {
        let tmp = self
            .uploads
            .join(format!("manifest-{}", uuid::Uuid::new_v4()));
        let to = self.blob_path(digest);
        let dir = self.blobs.clone();
        tokio::task::spawn_blocking(move || {
            if to.exists() {
                return Ok(());
            }
            std::fs::write(&tmp, &bytes).map_err(io("write manifest", &tmp))?;
            place_file(&tmp, &to, &dir)
        })
        .await
        .map_err(|e| Error::Io {
            op: "store manifest (worker stopped)",
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })?
    }

    /// Move `from`, a file outside the store whose content was verified to hash to `digest`
    /// (a bundle import's staged file, on the same file system), into the store: fsynced and
    /// renamed like a committed upload. Returns false, and removes `from`, when the blob is
    /// already present: stored blobs are never written again.
    pub fn place_verified(&self, from: &Path, digest: &Digest) -> Result<bool> {
        let to = self.blob_path(digest);
        let existed = to.exists();
        place_file(from, &to, &self.blobs)?;
        Ok(!existed)
    }

    /// Delete the file of upload `id`, if it is still there.
    pub async fn remove_upload(&self, id: &uuid::Uuid) -> Result<()> {
        remove_if_present(&self.upload_path(id)).await
    }

    /// Delete the file of an upload by file name, as listed by [`BlobStore::upload_files`].
    pub async fn remove_upload_file(&self, name: &str) -> Result<()> {
        remove_if_present(&self.uploads.join(name)).await
    }

    /// Delete the file of blob `d`, if it is there. Only the garbage collector calls this.
    pub async fn remove_blob(&self, d: &Digest) -> Result<()> {
        remove_if_present(&self.blob_path(d)).await
    }

    /// Open blob `d` for reading (opened on the blocking pool); `None` when its file is absent.
    pub async fn open_blob(&self, d: &Digest) -> Result<Option<std::fs::File>> {
        let path = self.blob_path(d);
        let opened = tokio::task::spawn_blocking({
            let path = path.clone();
            move || std::fs::File::open(path)
        })
        .await
        .map_err(|e| io("open blob", &path)(std::io::Error::other(e)))?;
        match opened {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("open blob", &path)(e)),
        }
    }

    /// The whole content of blob `d` (a manifest, small by construction).
    pub async fn read_blob(&self, d: &Digest) -> Result<Option<Vec<u8>>> {
        let path = self.blob_path(d);
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read blob", &path)(e)),
        }
    }

    /// Whether the file of blob `d` is present.
    pub async fn has_blob(&self, d: &Digest) -> bool {
        tokio::fs::try_exists(self.blob_path(d))
            .await
            .unwrap_or(false)
    }

    /// Digests of every blob file on disk.
    pub async fn blob_files(&self) -> Result<Vec<Digest>> {
        let root = self.blobs.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for prefix in std::fs::read_dir(&root).map_err(io("list blobs in", &root))? {
                let prefix = prefix.map_err(io("list blobs in", &root))?.path();
                if !prefix.is_dir() {
                    continue;
                }
                for f in std::fs::read_dir(&prefix).map_err(io("list blobs in", &prefix))? {
                    let f = f.map_err(io("list blobs in", &prefix))?;
                    if let Some(name) = f.file_name().to_str() {
                        if let Ok(d) = Digest::parse(&format!("sha256:{name}")) {
                            out.push(d);
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Io {
            op: "list blobs (worker stopped)",
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })?
    }

    /// File names in the uploads directory.
    pub async fn upload_files(&self) -> Result<Vec<String>> {
        let root = self.uploads.clone();
        let mut out = Vec::new();
        let mut dir = tokio::fs::read_dir(&root)
            .await
            .map_err(io("list uploads in", &root))?;
        while let Some(e) = dir
            .next_entry()
            .await
            .map_err(io("list uploads in", &root))?
        {
            if let Some(name) = e.file_name().to_str() {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }
}

/// Stream `body` into `out` and `hasher`, returning the size reached from `offset`.
async fn copy_hashing<S, E, W>(
    out: &mut W,
    hasher: &mut Sha256,
    mut body: S,
    offset: u64,
    limit: u64,
    path: &Path,
) -> Result<u64, AppendError>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut size = offset;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| AppendError::Body(e.to_string()))?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(AppendError::TooLarge { limit });
        }
        out.write_all(&chunk)
            .await
            .map_err(io("write upload", path))?;
        hasher.update(&chunk);
    }
    Ok(size)
}

/// fsync `from`, then rename it to `to` (creating its directory) unless `to` exists, then
/// fsync the directories involved. `from` is gone afterwards either way. `blobs` is the root
/// of the content-addressed tree `to` belongs to.
pub fn place_file(from: &Path, to: &Path, blobs: &Path) -> Result<()> {
    if to.exists() {
        // Already stored: never write the same content twice.
        return std::fs::remove_file(from).map_err(io("remove duplicate upload", from));
    }
    std::fs::File::open(from)
        .and_then(|f| f.sync_all())
        .map_err(io("sync upload", from))?;
    let dir = to.parent().unwrap_or(blobs);
    let created = !dir.exists();
    create_private_dir(dir)?;
    if created {
        sync_dir(blobs)?;
    }
    std::fs::rename(from, to).map_err(io("move upload into the blob store", to))?;
    sync_dir(dir)?;
    if let Some(uploads) = from.parent() {
        sync_dir(uploads)?;
    }
    Ok(())
}

async fn remove_if_present(path: &Path) -> Result<()> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(chunks: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures_util::stream::iter(
            chunks
                .iter()
                .map(|c| Ok(Bytes::from_static(c)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn upload_is_hashed_while_written_and_committed_under_its_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("open");
        let id = uuid::Uuid::new_v4();
        store.create_upload(&id).await.expect("create");
        let mut h = Sha256::new();
        let n = store
            .append(&id, 0, &mut h, body(&[b"hello ", b"world"]), 100, None)
            .await
            .expect("append");
        assert_eq!(n, 11);
        let d = Digest::from_hasher(h);
        assert_eq!(d, Digest::of(b"hello world"));
        store.commit_upload(&id, &d).await.expect("commit");
        assert_eq!(
            std::fs::read(store.blob_path(&d)).expect("blob"),
            b"hello world"
        );
        assert_eq!(store.upload_size(&id).await.expect("size"), None);
        let hex = d.hex();
        assert!(store
            .blob_path(&d)
            .ends_with(format!("blobs/sha256/{}/{hex}", &hex[..2])));
    }

    #[tokio::test]
    async fn a_failed_append_leaves_the_upload_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("open");
        let id = uuid::Uuid::new_v4();
        store.create_upload(&id).await.expect("create");
        let mut h = Sha256::new();
        store
            .append(&id, 0, &mut h, body(&[b"abc"]), 100, None)
            .await
            .expect("first chunk");
        let before = h.clone();
        let too_big = store
            .append(&id, 3, &mut h, body(&[b"0123456789"]), 8, None)
            .await;
        assert!(matches!(too_big, Err(AppendError::TooLarge { limit: 8 })));
        let short = store
            .append(&id, 3, &mut h, body(&[b"de"]), 100, Some(3))
            .await;
        assert!(matches!(
            short,
            Err(AppendError::LengthMismatch {
                expected: 3,
                got: 2
            })
        ));
        assert_eq!(store.upload_size(&id).await.expect("size"), Some(3));
        assert_eq!(h.finalize(), before.finalize());
        let (rehashed, n) = store.hash_upload(&id).await.expect("rehash");
        assert_eq!(n, 3);
        assert_eq!(Digest::from_hasher(rehashed), Digest::of(b"abc"));
    }

    #[test]
    fn only_exact_blob_paths_name_a_digest() {
        let d = Digest::of(b"x");
        let hex = d.hex().to_string();
        let rel = blob_relative_path(&d);
        assert_eq!(rel, Path::new(&format!("blobs/sha256/{}/{hex}", &hex[..2])));
        let rel = rel.to_str().expect("utf-8").to_string();
        assert_eq!(digest_of_relative_path(&rel), Some(d));
        for bad in [
            format!("blobs/sha256/{}/{}", &hex[2..4], hex),
            format!("blobs/sha256/{}/{}", &hex[..2], hex.to_uppercase()),
            format!("blobs/sha256/{}//{hex}", &hex[..2]),
            format!("./blobs/sha256/{}/{hex}", &hex[..2]),
            format!("blobs/sha256/../{}/{hex}", &hex[..2]),
            format!("blobs/sha256/{}/{hex}/x", &hex[..2]),
            format!("blobs/sha512/{}/{hex}", &hex[..2]),
            format!("blobs/sha256/{}/{}", &hex[..2], &hex[..63]),
            format!("blobs/sha256/{hex}"),
            "blobs/sha256/".to_string(),
        ] {
            assert_eq!(digest_of_relative_path(&bad), None, "{bad}");
        }
    }

    #[test]
    fn hashing_reader_and_hash_file_agree_with_the_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let content = vec![7u8; READ_CHUNK * 2 + 3];
        let path = dir.path().join("f");
        std::fs::write(&path, &content).expect("write");
        assert_eq!(
            hash_file(&path).expect("hash"),
            (Digest::of(&content), content.len() as u64)
        );
        let mut r = HashingReader::new(&content[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).expect("read");
        assert_eq!(out, content);
        assert_eq!(r.finish().0, Digest::of(&content));
    }

    #[tokio::test]
    async fn served_chunks_hold_exactly_the_range_and_a_short_file_is_an_error() {
        use std::io::{Seek, SeekFrom};
        let dir = tempfile::tempdir().expect("tempdir");
        let content: Vec<u8> = (0..SERVE_CHUNK * 2 + 5).map(|i| (i % 251) as u8).collect();
        let path = dir.path().join("f");
        std::fs::write(&path, &content).expect("write");
        let collect = |start: u64, len: u64| {
            let path = path.clone();
            async move {
                let mut f = std::fs::File::open(&path).expect("open");
                f.seek(SeekFrom::Start(start)).expect("seek");
                let chunks: Vec<std::io::Result<Bytes>> = read_chunks(f, len).collect().await;
                chunks
            }
        };
        let whole = collect(0, content.len() as u64).await;
        assert_eq!(whole.len(), 3, "two full chunks and the rest");
        let joined: Vec<u8> = whole
            .into_iter()
            .flat_map(|c| c.expect("chunk").to_vec())
            .collect();
        assert_eq!(joined, content);
        let range = collect(10, 100).await;
        assert_eq!(range.len(), 1);
        assert_eq!(range[0].as_ref().expect("chunk")[..], content[10..110]);
        assert!(collect(0, 0).await.is_empty());
        // The record says more than the file holds: the body ends with an error.
        let short = collect(0, content.len() as u64 + 1).await;
        assert!(short.last().expect("last").is_err());
        assert_eq!(
            short
                .iter()
                .filter_map(|c| c.as_ref().ok())
                .map(|c| c.len())
                .sum::<usize>(),
            content.len()
        );
    }

    #[tokio::test]
    async fn content_already_stored_is_not_written_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("open");
        let d = Digest::of(b"x");
        store
            .put_bytes(Bytes::from_static(b"x"), &d)
            .await
            .expect("first");
        let before = std::fs::metadata(store.blob_path(&d))
            .expect("meta")
            .modified()
            .expect("mtime");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let id = uuid::Uuid::new_v4();
        store.create_upload(&id).await.expect("create");
        let mut h = Sha256::new();
        store
            .append(&id, 0, &mut h, body(&[b"x"]), 10, None)
            .await
            .expect("append");
        store.commit_upload(&id, &d).await.expect("commit");
        let after = std::fs::metadata(store.blob_path(&d))
            .expect("meta")
            .modified()
            .expect("mtime");
        assert_eq!(before, after);
        assert_eq!(store.upload_size(&id).await.expect("size"), None);
    }
}
