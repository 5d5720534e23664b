//! Streaming verification: parts → decompression → tar → entries, in one pass, never holding
//! an artifact in memory. Every size comes from the signed metadata and bounds what is read;
//! nothing is extracted by name: a [`Sink`] decides where verified content goes, by digest.
//!
//! Rules enforced here (see `docs/bundle-format.md`, "Reading"): parts form one bundle;
//! `bundle.json` then `bundle.sig` come first and are size-capped; signatures verify over the
//! exact bytes; every later entry is a regular file with a canonical name, listed in the
//! signed metadata, present once, of the declared size and sha256; the decompressed stream
//! never exceeds what the metadata declares; nothing follows the archive but zeros.

use std::cell::Cell;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::rc::Rc;

use sha2::{Digest as _, Sha256};

use super::error::{Error, Result};
use super::format::{
    check_entry_name, format_version_of, parse_manifest, parse_version, Compression, Expected,
    Manifest, PartHeader, Plan, BLOB_PREFIX, FORMAT_VERSION, HEAD_LIMIT, MANIFEST_ENTRY,
    MAX_MANIFEST_BYTES, MAX_RATIO, MAX_SIGNATURES_BYTES, MAX_TRAILING_ZEROS, PART_HEADER_LEN,
    SIGNATURES_ENTRY,
};
use super::keys;
use super::Progress;

/// The parts of one bundle, checked and in order.
#[derive(Debug, Clone)]
pub struct Parts {
    parts: Vec<(PathBuf, PartHeader)>,
    /// Bytes of compressed stream over all parts.
    pub compressed: u64,
}

impl Parts {
    /// The bundle id the part headers carry.
    pub fn bundle_id(&self) -> uuid::Uuid {
        self.parts
            .first()
            .map(|p| p.1.bundle_id)
            .unwrap_or_default()
    }

    /// The compression the part headers announce.
    pub fn compression(&self) -> Compression {
        self.parts
            .first()
            .map(|p| p.1.compression)
            .unwrap_or(Compression::Zstd)
    }

    /// Number of parts.
    pub fn count(&self) -> usize {
        self.parts.len()
    }
}

/// Open the files given (a bundle, or its parts in any order) and check they form one bundle.
pub fn open_parts(paths: &[PathBuf]) -> Result<Parts> {
    if paths.is_empty() {
        return Err(Error::Parts {
            reason: "no file given".into(),
        });
    }
    let mut found: Vec<(PathBuf, PartHeader)> = Vec::new();
    for path in paths {
        let mut f = File::open(path).map_err(|source| Error::Open {
            path: path.clone(),
            source,
        })?;
        let len = f
            .metadata()
            .map_err(|source| Error::Open {
                path: path.clone(),
                source,
            })?
            .len();
        let mut h = [0u8; PART_HEADER_LEN];
        if len < PART_HEADER_LEN as u64 {
            return Err(Error::NotAPart {
                path: path.clone(),
                reason: format!("it holds {len} bytes, fewer than a part header"),
            });
        }
        f.read_exact(&mut h).map_err(|source| Error::Open {
            path: path.clone(),
            source,
        })?;
        let header = PartHeader::decode(&h).map_err(|reason| Error::NotAPart {
            path: path.clone(),
            reason,
        })?;
        let actual = len - PART_HEADER_LEN as u64;
        if actual < header.payload_len {
            return Err(Error::Truncated {
                path: path.clone(),
                expected: header.payload_len,
                actual,
            });
        }
        if actual > header.payload_len {
            return Err(Error::NotAPart {
                path: path.clone(),
                reason: format!(
                    "{} bytes follow the {} its header announces: the file was altered",
                    actual - header.payload_len,
                    header.payload_len
                ),
            });
        }
        if let Some((other, oh)) = found.first() {
            if oh.bundle_id != header.bundle_id {
                return Err(Error::Parts {
                    reason: format!(
                        "{} belongs to bundle {}, {} to bundle {}: give the parts of one bundle",
                        other.display(),
                        oh.bundle_id,
                        path.display(),
                        header.bundle_id
                    ),
                });
            }
            if oh.count != header.count || oh.compression != header.compression {
                return Err(Error::Parts {
                    reason: format!(
                        "the headers of {} and {} disagree on the number of parts or the compression",
                        other.display(),
                        path.display()
                    ),
                });
            }
        }
        if let Some((first, _)) = found.iter().find(|(_, h)| h.index == header.index) {
            return Err(Error::PartDuplicate {
                index: header.index,
                first: first.clone(),
                second: path.clone(),
            });
        }
        found.push((path.clone(), header));
    }
    found.sort_by_key(|(_, h)| h.index);
    let count = found[0].1.count;
    for i in 1..=count {
        if !found.iter().any(|(_, h)| h.index == i) {
            return Err(Error::PartMissing { index: i, count });
        }
    }
    let compressed = found.iter().map(|(_, h)| h.payload_len).sum();
    Ok(Parts {
        parts: found,
        compressed,
    })
}

/// Which layer of the stream an I/O error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Part,
    Compression,
    Limit,
}

#[derive(Debug)]
struct Tagged(Layer, String);

impl std::fmt::Display for Tagged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Tagged {}

fn find_tag(e: &std::io::Error) -> Option<&Tagged> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|x| x as _);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<Tagged>() {
            return Some(t);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(t) = find_tag(io) {
                return Some(t);
            }
        }
        cur = err.source();
    }
    None
}

/// Map an error out of the stream to what it says about the bundle.
fn classify(e: std::io::Error, limit: u64) -> Error {
    match find_tag(&e) {
        Some(Tagged(Layer::Compression, m)) => Error::Compression { reason: m.clone() },
        Some(Tagged(Layer::Limit, _)) => Error::Bomb {
            reason: format!(
                "the archive holds more than the {limit} bytes its signed metadata allows"
            ),
        },
        Some(Tagged(Layer::Part, m)) => Error::Archive { reason: m.clone() },
        None => Error::Archive {
            reason: e.to_string(),
        },
    }
}

/// The concatenated payloads of the parts, in order.
struct ChainReader {
    parts: Vec<(PathBuf, u64)>,
    next: usize,
    current: Option<(std::io::Take<File>, u64, PathBuf)>,
    read_total: Rc<Cell<u64>>,
}

impl Read for ChainReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some((r, left, path)) = &mut self.current {
                if *left == 0 {
                    self.current = None;
                    continue;
                }
                let n = r.read(buf)?;
                if n == 0 {
                    return Err(std::io::Error::other(Tagged(
                        Layer::Part,
                        format!("{} became shorter while it was read", path.display()),
                    )));
                }
                *left -= n as u64;
                self.read_total.set(self.read_total.get() + n as u64);
                return Ok(n);
            }
            let Some((path, len)) = self.parts.get(self.next).cloned() else {
                return Ok(0);
            };
            self.next += 1;
            let tag = |e: std::io::Error| {
                std::io::Error::other(Tagged(
                    Layer::Part,
                    format!("cannot read {}: {e}", path.display()),
                ))
            };
            let mut f = File::open(&path).map_err(tag)?;
            f.seek(SeekFrom::Start(PART_HEADER_LEN as u64))
                .map_err(tag)?;
            self.current = Some((f.take(len), len, path));
        }
    }
}

/// Tags errors of the decompressor (those of the layer below keep their tag).
struct Tagging<R>(R);

impl<R: Read> Read for Tagging<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            if find_tag(&e).is_some() {
                e
            } else {
                std::io::Error::other(Tagged(Layer::Compression, e.to_string()))
            }
        })
    }
}

/// Fails once more than `limit` decompressed bytes were read.
struct LimitReader<R> {
    inner: R,
    read: Rc<Cell<u64>>,
    limit: Rc<Cell<u64>>,
}

impl<R: Read> Read for LimitReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let room = self.limit.get().saturating_sub(self.read.get());
        if room == 0 {
            // One byte past the limit proves the limit is passed; reading it is harmless.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::other(Tagged(Layer::Limit, String::new()))),
            };
        }
        let max = buf.len().min(room.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

fn decompressor(parts: &Parts, compressed_read: Rc<Cell<u64>>) -> Result<Box<dyn Read>> {
    let chain = ChainReader {
        parts: parts
            .parts
            .iter()
            .map(|(p, h)| (p.clone(), h.payload_len))
            .collect(),
        next: 0,
        current: None,
        read_total: compressed_read,
    };
    let buffered = BufReader::with_capacity(1 << 20, chain);
    Ok(match parts.compression() {
        Compression::Zstd => {
            let d = zstd::stream::read::Decoder::with_buffer(buffered).map_err(|e| {
                Error::Compression {
                    reason: e.to_string(),
                }
            })?;
            Box::new(Tagging(d))
        }
        Compression::Gzip => Box::new(Tagging(flate2::bufread::MultiGzDecoder::new(buffered))),
    })
}

/// What the head of a bundle says: the signed metadata, who signed it, what it holds.
#[derive(Debug, Clone)]
pub struct Head {
    pub manifest: Manifest,
    /// The exact bytes of `bundle.json`.
    pub manifest_bytes: Vec<u8>,
    /// Ids of the keys whose signatures verified (empty when unsigned).
    pub signers: Vec<String>,
    pub plan: Plan,
    pub compression: Compression,
    pub parts: usize,
    pub compressed: u64,
}

impl Head {
    /// sha256 of `bundle.json`, hex: identifies the bundle's content.
    pub fn manifest_sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.manifest_bytes))
    }
}

/// Whether to read on after the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    Stop,
}

/// Where verified content goes. `open` is asked for each listed entry before its content is
/// read (`None`: only verify it); `commit` after it verified; `discard` if it did not.
pub trait Sink {
    type W: Write + Send;
    fn open(&mut self, e: &Expected) -> Result<Option<Self::W>>;
    fn commit(&mut self, e: &Expected, w: Self::W) -> Result<()>;
    fn discard(&mut self, e: &Expected, w: Self::W);
}

/// A sink that keeps nothing (`verify`, `inspect`).
pub struct VerifyOnly;

impl Sink for VerifyOnly {
    type W = std::io::Sink;
    fn open(&mut self, _: &Expected) -> Result<Option<std::io::Sink>> {
        Ok(None)
    }
    fn commit(&mut self, _: &Expected, _: std::io::Sink) -> Result<()> {
        Ok(())
    }
    fn discard(&mut self, _: &Expected, _: std::io::Sink) {}
}

fn type_name(t: tar::EntryType) -> String {
    match t {
        tar::EntryType::Symlink => "symbolic link".into(),
        tar::EntryType::Link => "hard link".into(),
        tar::EntryType::Char => "character device".into(),
        tar::EntryType::Block => "block device".into(),
        tar::EntryType::Fifo => "named pipe".into(),
        tar::EntryType::Directory => "directory".into(),
        other => format!("tar entry of type {:?}", other.as_byte() as char),
    }
}

/// Read a small entry whole, refusing it above `limit` before reading.
fn read_small<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    what: &'static str,
    limit: u64,
    cap: u64,
) -> Result<Vec<u8>> {
    let size = entry.size();
    if size > limit {
        return Err(Error::TooLarge { what, size, limit });
    }
    let mut out = Vec::with_capacity(size as usize);
    entry
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| classify(e, cap))?;
    Ok(out)
}

/// Check the name and type of an entry; returns its name.
fn checked_name<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String> {
    let raw = entry.path_bytes();
    let name = String::from_utf8(raw.to_vec()).map_err(|_| Error::EntryName {
        name: String::from_utf8_lossy(&raw).into_owned(),
        reason: "it is not UTF-8".into(),
    })?;
    // A directory entry's name ends with one '/'.
    check_entry_name(name.strip_suffix('/').unwrap_or(&name)).map_err(|reason| {
        Error::EntryName {
            name: name.clone(),
            reason,
        }
    })?;
    let t = entry.header().entry_type();
    match t {
        tar::EntryType::Regular => Ok(name),
        tar::EntryType::Directory if name == "blobs/" || name == "blobs/sha256/" => Ok(name),
        tar::EntryType::Symlink | tar::EntryType::Link => Err(Error::EntryType {
            name: name.clone(),
            kind: format!(
                "{} to {:?}",
                type_name(t),
                entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default()
            ),
        }),
        other => Err(Error::EntryType {
            name,
            kind: type_name(other),
        }),
    }
}

/// Size of the chunks handed from the reading thread to the hashing thread.
const CHUNK: usize = 1 << 20;
/// Chunks queued between the two threads.
const CHUNKS_IN_FLIGHT: usize = 8;

/// What the reading thread hands the hashing thread.
enum Chunk {
    /// An entry begins: its declaration.
    Begin(Expected),
    /// The next bytes of the current entry (the buffer and how much of it is filled).
    Data(Vec<u8>, usize),
    /// The current entry is complete.
    End,
}

/// Why feeding stopped.
enum Fed {
    /// The hashing thread stopped (its own error says why).
    WorkerGone,
    Failed(Error),
}

impl From<Error> for Fed {
    fn from(e: Error) -> Fed {
        Fed::Failed(e)
    }
}

/// The reading side: check each entry's name, type, listing and size, and pass its bytes on.
fn feed<R: Read>(
    entries: tar::Entries<'_, R>,
    h: &Head,
    seen: &mut std::collections::BTreeSet<String>,
    to_worker: &std::sync::mpsc::SyncSender<Chunk>,
    free: &std::sync::mpsc::Receiver<Vec<u8>>,
    cap: u64,
) -> std::result::Result<(), Fed> {
    let send = |c: Chunk| to_worker.send(c).map_err(|_| Fed::WorkerGone);
    for entry in entries {
        let mut e = entry.map_err(|e| classify(e, cap))?;
        let name = checked_name(&e)?;
        if name.ends_with('/') {
            continue;
        }
        let Some(expected) = h.plan.entries.get(&name) else {
            return Err(Fed::Failed(
                if name == MANIFEST_ENTRY || name == SIGNATURES_ENTRY {
                    Error::DuplicateEntry { name }
                } else if name.starts_with(BLOB_PREFIX) {
                    Error::UnlistedEntry { name }
                } else {
                    Error::EntryName {
                        name,
                        reason:
                            "it is not part of the bundle format nor listed in the signed metadata"
                                .into(),
                    }
                },
            ));
        };
        if !seen.insert(name.clone()) {
            return Err(Fed::Failed(Error::DuplicateEntry { name }));
        }
        if e.size() != expected.size {
            return Err(Fed::Failed(Error::SizeMismatch {
                name,
                expected: expected.size,
                actual: e.size(),
            }));
        }
        send(Chunk::Begin(expected.clone()))?;
        let mut left = expected.size;
        while left > 0 {
            let mut buf = free.recv().map_err(|_| Fed::WorkerGone)?;
            let want = buf.len().min(left.min(usize::MAX as u64) as usize);
            let n = match e.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(Fed::Failed(Error::Archive {
                        reason: format!("{name} ends early: the archive is truncated"),
                    }))
                }
                Ok(n) => n,
                Err(err) => return Err(Fed::Failed(classify(err, cap))),
            };
            left -= n as u64;
            send(Chunk::Data(buf, n))?;
        }
        send(Chunk::End)?;
    }
    Ok(())
}

/// The hashing side: hash each entry's bytes once, write them where the sink says, and
/// commit or discard the entry by its digest. Stops at the first problem.
fn hash_and_store<S: Sink>(
    chunks: std::sync::mpsc::Receiver<Chunk>,
    free: std::sync::mpsc::Sender<Vec<u8>>,
    sink: &mut S,
    progress: &dyn Progress,
) -> Result<()> {
    let mut current: Option<(Expected, Sha256, Option<S::W>)> = None;
    let outcome = (|| -> Result<()> {
        for c in chunks.iter() {
            match c {
                Chunk::Begin(e) => {
                    let w = sink.open(&e)?;
                    current = Some((e, Sha256::new(), w));
                }
                Chunk::Data(buf, n) => {
                    if let Some((e, hasher, w)) = current.as_mut() {
                        hasher.update(&buf[..n]);
                        if let Some(out) = w.as_mut() {
                            out.write_all(&buf[..n]).map_err(|source| Error::Io {
                                op: "stage",
                                path: PathBuf::from(&e.name),
                                source,
                            })?;
                        }
                        progress.advance(n as u64);
                    }
                    let _ = free.send(buf);
                }
                Chunk::End => {
                    if let Some((e, hasher, w)) = current.take() {
                        let actual = hex::encode(hasher.finalize());
                        if actual != e.sha256 {
                            if let Some(w) = w {
                                sink.discard(&e, w);
                            }
                            return Err(Error::DigestMismatch {
                                name: e.name.clone(),
                                expected: format!("sha256:{}", e.sha256),
                                actual: format!("sha256:{actual}"),
                            });
                        }
                        if let Some(w) = w {
                            sink.commit(&e, w)?;
                        }
                    }
                }
            }
        }
        Ok(())
    })();
    // An entry cut short (by an error on either side) is never kept.
    if let Some((e, _, Some(w))) = current.take() {
        sink.discard(&e, w);
    }
    outcome
}

/// Read the bundle: verify its head, call `on_head`, then (unless told to stop) stream and
/// verify every entry into `sink`. Returns the head once everything held.
pub fn read_bundle<S: Sink + Send>(
    parts: &Parts,
    on_head: &mut dyn FnMut(&Head) -> Result<Next>,
    sink: &mut S,
    progress: &dyn Progress,
) -> Result<Head> {
    let compressed_read = Rc::new(Cell::new(0u64));
    let read = Rc::new(Cell::new(0u64));
    let limit = Rc::new(Cell::new(HEAD_LIMIT));
    let reader = LimitReader {
        inner: decompressor(parts, compressed_read.clone())?,
        read: read.clone(),
        limit: limit.clone(),
    };
    let mut archive = tar::Archive::new(reader);
    let head;
    {
        let mut entries = archive.entries().map_err(|e| classify(e, limit.get()))?;
        let mut next_entry = |what: &str| -> Result<tar::Entry<'_, LimitReader<Box<dyn Read>>>> {
            match entries.next() {
                Some(Ok(e)) => Ok(e),
                Some(Err(e)) => Err(classify(e, limit.get())),
                None => Err(Error::MissingEntry {
                    what: what.to_string(),
                }),
            }
        };
        // 1. bundle.json, first.
        let mut e = next_entry("bundle.json (the signed metadata) as its first entry")?;
        let name = checked_name(&e)?;
        if name != MANIFEST_ENTRY {
            return Err(Error::MissingEntry {
                what: format!("bundle.json as its first entry (it starts with {name})"),
            });
        }
        let manifest_bytes = read_small(&mut e, "bundle.json", MAX_MANIFEST_BYTES, limit.get())?;
        drop(e);
        let version = format_version_of(&manifest_bytes)?;
        if version != u64::from(FORMAT_VERSION) {
            return Err(Error::UnsupportedFormat {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        // 2. bundle.sig, second; signatures verify before anything else is believed.
        let mut e = next_entry("bundle.sig (the signatures) as its second entry")?;
        let name = checked_name(&e)?;
        if name != SIGNATURES_ENTRY {
            return Err(Error::MissingEntry {
                what: format!("bundle.sig (the signatures) as its second entry (found {name})"),
            });
        }
        let sig_bytes = read_small(&mut e, "bundle.sig", MAX_SIGNATURES_BYTES, limit.get())?;
        drop(e);
        let signers = match keys::verify(&sig_bytes, &manifest_bytes) {
            Ok(ids) => ids,
            Err(Error::Unsigned) => Vec::new(),
            Err(e) => return Err(e),
        };
        let manifest = parse_manifest(&manifest_bytes)?;
        let plan = manifest.plan()?;
        if manifest.bundle_id != parts.bundle_id() {
            return Err(Error::Parts {
                reason: format!(
                    "the part headers name bundle {}, the signed metadata {}: the parts belong to another bundle",
                    parts.bundle_id(),
                    manifest.bundle_id
                ),
            });
        }
        let allowed = parts
            .compressed
            .saturating_mul(MAX_RATIO)
            .saturating_add(1 << 20);
        if plan.total > allowed {
            return Err(Error::Bomb {
                reason: format!(
                    "the metadata declares {} bytes of content carried by {} compressed bytes, more than {MAX_RATIO} to 1",
                    plan.total, parts.compressed
                ),
            });
        }
        let required = parse_version("min_appliance_version", &manifest.min_appliance_version)?;
        let running = parse_version("running version", crate::VERSION)?;
        if required > running {
            return Err(Error::ApplianceTooOld {
                required: manifest.min_appliance_version.clone(),
                running: crate::VERSION.to_string(),
            });
        }
        limit.set(Manifest::archive_limit(&plan, read.get()));
        let h = Head {
            manifest,
            manifest_bytes,
            signers,
            plan,
            compression: parts.compression(),
            parts: parts.count(),
            compressed: parts.compressed,
        };
        if on_head(&h)? == Next::Stop {
            return Ok(h);
        }
        // 3. Everything else: listed, once, of its size and digest. This thread decompresses
        // and parses; a worker hashes and writes, so the two overlap on two cores and each
        // byte is hashed once.
        progress.start("verifying", h.plan.total);
        let mut seen = std::collections::BTreeSet::new();
        let (to_worker, from_main) = std::sync::mpsc::sync_channel::<Chunk>(CHUNKS_IN_FLIGHT);
        let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        for _ in 0..CHUNKS_IN_FLIGHT + 2 {
            let _ = free_tx.send(vec![0u8; CHUNK]);
        }
        let outcome = std::thread::scope(|scope| -> Result<()> {
            let worker = scope.spawn(|| hash_and_store(from_main, free_tx, sink, progress));
            let fed = feed(entries, &h, &mut seen, &to_worker, &free_rx, limit.get());
            drop(to_worker);
            let worked = worker.join().unwrap_or_else(|_| {
                Err(Error::Archive {
                    reason: "the verifying thread stopped unexpectedly".into(),
                })
            });
            // The worker's error explains a feed that stopped because the worker did.
            match (fed, worked) {
                (Err(Fed::WorkerGone), w) => w,
                (Err(Fed::Failed(e)), _) => Err(e),
                (Ok(()), w) => w,
            }
        });
        outcome?;
        if let Some(missing) = h.plan.entries.values().find(|x| !seen.contains(&x.name)) {
            let n = h.plan.entries.len() - seen.len();
            return Err(Error::MissingEntry {
                what: format!(
                    "{} (needed by {}){}",
                    missing.name,
                    missing.needed_by,
                    if n > 1 {
                        format!(" and {} more entries", n - 1)
                    } else {
                        String::new()
                    }
                ),
            });
        }
        head = h;
    }
    // 4. After the archive: zeros only, then the end of the compressed stream.
    let mut rest = archive.into_inner();
    limit.set(read.get().saturating_add(MAX_TRAILING_ZEROS));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if buf[..n].iter().any(|&b| b != 0) {
                    return Err(Error::TrailingData);
                }
            }
            Err(e) => {
                return Err(match find_tag(&e) {
                    Some(Tagged(Layer::Limit, _)) => Error::TrailingData,
                    _ => classify(e, limit.get()),
                })
            }
        }
    }
    if compressed_read.get() != parts.compressed {
        return Err(Error::TrailingData);
    }
    progress.done();
    Ok(head)
}
