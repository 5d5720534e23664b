//! `palisade admin backup` and `restore`: the archive format, the consistent online copy and
//! the verified, all-or-nothing restore. Called only by `cli::admin`.
//!
//! A backup is a tar archive mirroring the data directory's layout:
//!
//! ```text
//! backup.json                        what the archive holds: every other file, its size and sha256
//! backup.json.sha256                 hex sha256 of backup.json (so a damaged manifest is found too)
//! state.db                           SQLite online backup of the database
//! secret.key, pki/ca.crt, pki/ca.key sealing key and internal CA
//! registry/blobs/sha256/<2>/<64>     every registry blob the database references
//! artifacts/sha256/<2>/<64>          every bundle file artifact the database references
//! ```
//!
//! Not in a backup, on purpose: the broker's log (`broker/`: desired state is republished from
//! the database at start, the rest are transient messages under retention), imports and
//! uploads in progress (`staging/`, `registry/uploads/`), unreferenced blobs, lock files, and
//! earlier `pre-restore-*` folders. Backups made before `backup.json` existed (database, keys,
//! and maybe registry blobs) still restore: their blobs are verified against their names and
//! the current `artifacts/` is kept.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use super::admin::{by_digest, repositories_phrase};
use crate::bundle::import::artifact_relative_path;
use crate::datadir::DataDir;
use crate::registry::blobs::{
    blob_relative_path, digest_of_relative_path, hash_file, HashingReader,
};
use crate::registry::collector_lock::CollectorLock;
use crate::registry::names::Digest;
use crate::store::{self, BlobReference, FileReference};

/// Key files of a backup archive, relative to the data directory.
const KEY_FILES: [&str; 3] = ["secret.key", "pki/ca.crt", "pki/ca.key"];
const DB_ENTRY: &str = "state.db";
/// The first entry of a backup: what it holds.
const MANIFEST_ENTRY: &str = "backup.json";
/// The second entry: the hex sha256 of the first.
const MANIFEST_SUM_ENTRY: &str = "backup.json.sha256";
/// The only `backup_format` this palisade writes and reads.
const BACKUP_FORMAT: u32 = 1;
/// Largest `backup.json` a restore reads (about 100 bytes per file: a million files).
const MAX_MANIFEST_BYTES: u64 = 128 << 20;
/// The registry's directory in the data directory and in a backup archive (which mirrors the
/// data directory's layout): blob entries are `registry/blobs/sha256/<2 hex>/<64 hex>`.
pub(super) const REGISTRY_DIR: &str = "registry";
/// Bundle file artifacts: `artifacts/sha256/<2 hex>/<64 hex>`, in both places.
const ARTIFACTS_DIR: &str = "artifacts";
/// Buffer size for streaming files into and out of archives.
const COPY_BUFFER: usize = 1 << 20;
/// Without a terminal, a progress line is printed each time this many more bytes are copied.
const PROGRESS_LINE_BYTES: u64 = 256 << 20;
/// On a terminal, the progress line is redrawn at most this often.
const PROGRESS_REDRAW: Duration = Duration::from_millis(200);

/// `backup.json`: what a backup holds, so that a restore can verify every file before it
/// changes anything.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupManifest {
    /// [`BACKUP_FORMAT`].
    backup_format: u32,
    /// When the backup was made (RFC 3339, UTC).
    created: String,
    /// The palisade that made it.
    palisade_version: String,
    /// Every other entry of the archive (except `backup.json.sha256`), in archive order.
    files: Vec<ManifestFile>,
}

/// One file of a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    /// The entry's name, which is also its path relative to the data directory.
    path: String,
    size: u64,
    /// Hex sha256 of the content.
    sha256: String,
}

/// What a backup holds besides the database and keys.
pub(super) struct BackupSummary {
    pub blobs: usize,
    pub blob_bytes: u64,
    pub files: usize,
    pub file_bytes: u64,
}

/// A file to copy into the archive, found on disk before anything is written.
struct FileToCopy {
    /// Its entry name (and path relative to the data directory).
    entry: String,
    path: PathBuf,
    size: u64,
    modified: u64,
    /// What its content must hash to.
    digest: Digest,
    /// Who needs it, for messages: `blob sha256:… of repository a`.
    what: String,
    /// What to do when it is found damaged.
    fix: &'static str,
}

/// Write a consistent backup of `dir` to `file` (through `<file>.partial`, renamed at the end;
/// nothing is left behind on failure).
pub(super) fn backup(dir: &DataDir, file: &Path) -> anyhow::Result<BackupSummary> {
    let tmp = file.with_extension("partial");
    match write_backup(dir, &tmp) {
        Ok(summary) => {
            std::fs::rename(&tmp, file)
                .with_context(|| format!("cannot write {}", file.display()))?;
            Ok(summary)
        }
        Err(e) => {
            // Never leave a half-written archive behind that could pass for a backup.
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn modified_secs(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

fn write_backup(dir: &DataDir, tmp: &Path) -> anyhow::Result<BackupSummary> {
    use std::os::unix::fs::OpenOptionsExt;
    let registry = dir.registry_dir();
    // Why every file the snapshot references is still on disk when it is copied below:
    // - Registry blobs and bundle artifacts are immutable and content-addressed: a file
    //   appears only whole (an atomic rename after its sha256 was verified) and is never
    //   rewritten, so a path always names the same bytes. A bundle import moves its files into
    //   place before the transaction that references them commits, so a snapshot never
    //   references a file that is not in place yet.
    // - Nothing deletes bundle artifacts. The only deleter of blobs is the garbage collector,
    //   inside the running `palisade serve`. It *could* delete a blob the snapshot references:
    //   after the snapshot, a manifest is deleted and the blob unlinked through the API (the
    //   live database no longer references it), and an hourly pass runs before the copy
    //   reaches the blob.
    // That race is excluded rather than detected: we hold the shared side of the collector's
    // cross-process lock (registry/gc.lock) from *before* the snapshot until the last blob is
    // copied, and every collection pass holds the exclusive side for its whole length (it
    // waits for us; pushes are never held up by this). So no pass overlaps the interval; a
    // pass that ended before the snapshot deleted only blobs unreferenced then (rows first,
    // committed, then files), which the snapshot does not reference either. A referenced file
    // that is missing or corrupt here is therefore damage, never a race: the backup fails and
    // names it, and `palisade admin check --deep` lists every such file.
    let _no_collection = CollectorLock::shared(&registry, || {
        println!("waiting for the registry's garbage collection to finish...")
    })
    .context("cannot take the registry collector's lock")?;
    let staging = tempfile::Builder::new()
        .prefix(".backup-")
        .tempdir_in(dir.root())
        .context("cannot create a staging folder in the data directory")?;
    let snapshot = staging.path().join(DB_ENTRY);
    store::backup_to(&dir.db_path(), &snapshot)?;
    // The lists come from the snapshot, not the live database: the archive must hold exactly
    // what its own database needs.
    let refs = store::referenced_blobs(&snapshot)
        .context("cannot read the registry blob references of the database snapshot")?;
    let file_refs = store::referenced_files(&snapshot)
        .context("cannot read the bundle file artifacts of the database snapshot")?;
    let mut copies = state_files_to_copy(dir, &snapshot)?;
    let blobs = blobs_to_copy(&registry, &refs)?;
    let artifacts = artifacts_to_copy(dir.root(), &file_refs)?;
    let summary = BackupSummary {
        blobs: blobs.len(),
        blob_bytes: blobs.iter().map(|b| b.size).sum(),
        files: artifacts.len(),
        file_bytes: artifacts.iter().map(|b| b.size).sum(),
    };
    copies.extend(blobs);
    copies.extend(artifacts);
    let manifest = BackupManifest {
        backup_format: BACKUP_FORMAT,
        created: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        palisade_version: crate::VERSION.to_string(),
        files: copies
            .iter()
            .map(|c| ManifestFile {
                path: c.entry.clone(),
                size: c.size,
                sha256: c.digest.hex().to_string(),
            })
            .collect(),
    };
    let manifest_bytes =
        serde_json::to_vec_pretty(&manifest).context("cannot write the backup's manifest")?;
    let manifest_sum = format!("{}\n", Digest::of(&manifest_bytes).hex());

    let out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(COPY_BUFFER, out));
    for (name, bytes) in [
        (MANIFEST_ENTRY, manifest_bytes.as_slice()),
        (MANIFEST_SUM_ENTRY, manifest_sum.as_bytes()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64);
        tar.append_data(&mut header, name, bytes)
            .with_context(|| format!("cannot add {name} to the backup"))?;
    }
    let total = copies.iter().map(|b| b.size).sum();
    let mut progress = Progress::new(total, copies.len(), std::io::stdout().is_terminal());
    for copy in &copies {
        append_verified(&mut tar, copy, &mut progress)?;
    }
    progress.finish();
    tar.into_inner()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    Ok(summary)
}

/// The database snapshot and the key files, each hashed now (they are small, and nothing
/// rewrites them: the snapshot is ours, the keys are written once).
fn state_files_to_copy(dir: &DataDir, snapshot: &Path) -> anyhow::Result<Vec<FileToCopy>> {
    let mut out = Vec::new();
    let files = std::iter::once((DB_ENTRY, snapshot.to_path_buf()))
        .chain(KEY_FILES.iter().map(|name| (*name, dir.root().join(name))));
    for (entry, path) in files {
        let meta = std::fs::metadata(&path)
            .with_context(|| format!("cannot read {}: no backup was written", path.display()))?;
        let (digest, size) = hash_file(&path)
            .with_context(|| format!("cannot read {}: no backup was written", path.display()))?;
        out.push(FileToCopy {
            entry: entry.to_string(),
            path,
            size,
            modified: modified_secs(&meta),
            digest,
            what: entry.to_string(),
            fix: "It changed while it was copied: run the backup again",
        });
    }
    Ok(out)
}

/// Find the file of every referenced blob before anything is written, so a damaged blob store
/// fails the backup at once, naming the blob.
fn blobs_to_copy(registry: &Path, refs: &[BlobReference]) -> anyhow::Result<Vec<FileToCopy>> {
    let mut out = Vec::new();
    for (digest, repositories) in by_digest(refs) {
        let repositories = repositories_phrase(&repositories);
        let digest = Digest::parse(digest).map_err(|e| {
            anyhow!("the database references an invalid blob digest in {repositories}: {e}")
        })?;
        let rel = blob_relative_path(&digest);
        let path = registry.join(&rel);
        let meta = std::fs::metadata(&path).with_context(|| {
            format!(
                "blob {digest} of {repositories} is referenced by the database, but its file {} cannot be read: the blob store is damaged (palisade admin check lists every such blob); no backup was written",
                path.display()
            )
        })?;
        out.push(FileToCopy {
            entry: Path::new(REGISTRY_DIR).join(rel).display().to_string(),
            path,
            size: meta.len(),
            modified: modified_secs(&meta),
            what: format!("blob {digest} of {repositories}"),
            digest,
            fix: "Run palisade admin check --deep to list damaged blobs; push those images again (or restore an older backup)",
        });
    }
    Ok(out)
}

/// Find the file of every bundle file artifact the snapshot references (each digest once).
fn artifacts_to_copy(root: &Path, refs: &[FileReference]) -> anyhow::Result<Vec<FileToCopy>> {
    let mut needed: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in refs {
        needed
            .entry(r.digest.as_str())
            .or_default()
            .push(r.what.as_str());
    }
    let mut out = Vec::new();
    for (digest, whats) in needed {
        let what = format!("bundle artifact {digest} ({})", whats.join("; "));
        let digest = Digest::parse(digest)
            .map_err(|e| anyhow!("the database records an invalid digest for {what}: {e}"))?;
        let rel = artifact_relative_path(digest.hex());
        let path = root.join(&rel);
        let meta = std::fs::metadata(&path).with_context(|| {
            format!(
                "{what} is recorded in the database, but its file {} cannot be read (palisade admin check lists every such file); no backup was written",
                path.display()
            )
        })?;
        out.push(FileToCopy {
            entry: rel.display().to_string(),
            path,
            size: meta.len(),
            modified: modified_secs(&meta),
            digest,
            what,
            fix: "Run palisade admin check --deep to list damaged files; import that bundle again (or restore an older backup)",
        });
    }
    Ok(out)
}

/// Stream one file into the archive, hashing it on the way; a file whose bytes do not match
/// its digest fails the backup.
fn append_verified<W: Write>(
    tar: &mut tar::Builder<W>,
    copy: &FileToCopy,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let file = std::fs::File::open(&copy.path)
        .with_context(|| format!("cannot open {}", copy.path.display()))?;
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(copy.size);
    header.set_mode(0o600);
    header.set_mtime(copy.modified);
    // `take`: the entry holds exactly the size in its header, whatever happens to the file.
    let mut reader = HashingReader::new(ProgressReader {
        inner: std::io::BufReader::with_capacity(COPY_BUFFER, file).take(copy.size),
        progress,
    });
    tar.append_data(&mut header, &copy.entry, &mut reader)
        .with_context(|| {
            format!(
                "cannot copy {} ({}) into the backup",
                copy.what,
                copy.path.display()
            )
        })?;
    let (actual, read) = reader.finish();
    if actual != copy.digest || read != copy.size {
        bail!(
            "{} is corrupt: its file {} ({read} bytes read) hashes to {actual}; no backup was written. {}",
            copy.what,
            copy.path.display(),
            copy.fix
        );
    }
    progress.file_done();
    Ok(())
}

/// Progress of copying files, on standard output: a line redrawn in place when it is a
/// terminal; otherwise (a log, a pipe) a plain line every [`PROGRESS_LINE_BYTES`].
struct Progress {
    total: u64,
    files: usize,
    done: u64,
    files_done: usize,
    terminal: bool,
    next_line: u64,
    last_draw: Option<Instant>,
}

impl Progress {
    fn new(total: u64, files: usize, terminal: bool) -> Self {
        Progress {
            total,
            files,
            done: 0,
            files_done: 0,
            terminal,
            next_line: PROGRESS_LINE_BYTES,
            last_draw: None,
        }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        if self.terminal {
            self.redraw(false);
        } else if self.done >= self.next_line {
            println!("{}", self.line());
            while self.next_line <= self.done {
                self.next_line += PROGRESS_LINE_BYTES;
            }
        }
    }

    fn file_done(&mut self) {
        self.files_done += 1;
        if self.terminal {
            self.redraw(false);
        }
    }

    fn finish(&mut self) {
        if self.terminal && self.files > 0 {
            self.redraw(true);
            println!();
        }
    }

    fn redraw(&mut self, force: bool) {
        if !force
            && self
                .last_draw
                .is_some_and(|t| t.elapsed() < PROGRESS_REDRAW)
        {
            return;
        }
        self.last_draw = Some(Instant::now());
        print!("\r{:<72}", self.line());
        let _ = std::io::stdout().flush();
    }

    fn line(&self) -> String {
        let percent = (self.done * 100).checked_div(self.total).unwrap_or(100);
        format!(
            "copied {} of {} ({percent}%), {} of {} files",
            super::admin::human(self.done),
            super::admin::human(self.total),
            self.files_done,
            self.files
        )
    }
}

/// Counts the bytes read through it into a [`Progress`].
struct ProgressReader<'a, R> {
    inner: R,
    progress: &'a mut Progress,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// What a restore did.
pub(super) struct Restored {
    /// Where the previous state was moved.
    pub kept: PathBuf,
    pub registry: FilesRestore,
    pub artifacts: FilesRestore,
}

/// What a restore did with the registry's blob store, or with the bundle artifacts.
pub(super) enum FilesRestore {
    /// The backup's files replaced the current ones (which are in `kept`).
    Replaced { files: usize, bytes: u64 },
    /// The backup does not hold these files (made before backups included them): the current
    /// ones stay; `missing` of the `referenced` files the restored database needs are not there.
    KeptCurrent { referenced: usize, missing: usize },
}

/// What an archive entry is, decided from its exact name alone: nothing else in an archive
/// is trusted.
#[derive(Debug, PartialEq, Eq)]
enum EntryKind {
    /// `backup.json`.
    Manifest,
    /// `backup.json.sha256`.
    ManifestSum,
    /// The database or a key file.
    State,
    /// A registry blob whose content must hash to this digest.
    Blob(Digest),
    /// A bundle file artifact whose content must hash to this digest.
    Artifact(Digest),
}

fn classify(name: &str) -> Option<EntryKind> {
    if name == MANIFEST_ENTRY {
        return Some(EntryKind::Manifest);
    }
    if name == MANIFEST_SUM_ENTRY {
        return Some(EntryKind::ManifestSum);
    }
    if name == DB_ENTRY || KEY_FILES.contains(&name) {
        return Some(EntryKind::State);
    }
    if let Some(rest) = name
        .strip_prefix(REGISTRY_DIR)
        .and_then(|r| r.strip_prefix('/'))
    {
        return digest_of_relative_path(rest).map(EntryKind::Blob);
    }
    // `artifacts/sha256/<2>/<64>` has the shape of the registry's `blobs/sha256/<2>/<64>`.
    let rest = name.strip_prefix(ARTIFACTS_DIR)?.strip_prefix("/sha256/")?;
    digest_of_relative_path(&format!("blobs/sha256/{rest}")).map(EntryKind::Artifact)
}

fn create_private_dirs(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

fn sync_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", path.display()))
}

/// Stream `entry` into the new private file `target` and fsync it; returns the digest and size
/// of what was written (hashed on the way, so nothing is read twice or held in memory).
fn extract_entry(entry: &mut impl Read, target: &Path) -> std::io::Result<(Digest, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)?;
    let mut out = std::io::BufWriter::with_capacity(COPY_BUFFER, file);
    let mut reader = HashingReader::new(entry);
    std::io::copy(&mut reader, &mut out)?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(reader.finish())
}

/// Renames done so far, so that a failure half-way through can put everything back.
#[derive(Default)]
struct Renames(Vec<(PathBuf, PathBuf)>);

impl Renames {
    fn rename(&mut self, from: &Path, to: &Path) -> anyhow::Result<()> {
        std::fs::rename(from, to)
            .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))?;
        self.0.push((from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    /// Undo every rename, newest first; returns those that could not be undone.
    fn undo(self) -> Vec<String> {
        let mut failed = Vec::new();
        for (from, to) in self.0.into_iter().rev() {
            if let Err(e) = std::fs::rename(&to, &from) {
                failed.push(format!(
                    "{} (back to {}): {e}",
                    to.display(),
                    from.display()
                ));
            }
        }
        failed
    }
}

/// Create a new, empty `pre-restore-<unix time>[-n]` folder for the current state.
fn new_kept_dir(root: &Path) -> anyhow::Result<PathBuf> {
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    for n in 0..100 {
        let kept = match n {
            0 => root.join(format!("pre-restore-{stamp}")),
            n => root.join(format!("pre-restore-{stamp}-{n}")),
        };
        match std::fs::create_dir(&kept) {
            Ok(()) => return Ok(kept),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create {}", kept.display()));
            }
        }
    }
    bail!(
        "cannot find a free pre-restore-{stamp}-* name in {}",
        root.display()
    )
}

/// What `backup.json` says each entry must be: (size, digest) by entry name.
#[derive(Debug)]
struct Listed {
    files: HashMap<String, (u64, Digest)>,
    /// Its exact bytes, to compare with `backup.json.sha256`.
    bytes: Vec<u8>,
    /// Whether `backup.json.sha256` was read and matched.
    sum_verified: bool,
}

/// Read and check `backup.json` (`file` names the archive, for messages).
fn read_manifest(entry: &mut impl Read, size: u64, file: &Path) -> anyhow::Result<Listed> {
    let damaged = |why: String| {
        anyhow!(
            "{}: {MANIFEST_ENTRY} {why}: the backup is damaged; nothing was changed",
            file.display()
        )
    };
    if size > MAX_MANIFEST_BYTES {
        return Err(damaged(format!(
            "is {size} bytes, more than the {MAX_MANIFEST_BYTES} a backup's manifest may have"
        )));
    }
    let mut bytes = Vec::new();
    entry
        .take(MAX_MANIFEST_BYTES)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{} is damaged", file.display()))?;
    #[derive(Deserialize)]
    struct Version {
        backup_format: u32,
    }
    let version: Version = serde_json::from_slice(&bytes)
        .map_err(|e| damaged(format!("is not a backup manifest ({e})")))?;
    if version.backup_format != BACKUP_FORMAT {
        bail!(
            "{} is a backup of format {}, which this palisade ({}) does not know: restore it with the palisade that made it (or a newer one)",
            file.display(),
            version.backup_format,
            crate::VERSION
        );
    }
    let manifest: BackupManifest = serde_json::from_slice(&bytes)
        .map_err(|e| damaged(format!("is not a backup manifest ({e})")))?;
    let mut files = HashMap::new();
    for f in manifest.files {
        let digest = Digest::parse(&format!("sha256:{}", f.sha256))
            .map_err(|e| damaged(format!("lists {} with an invalid sha256 ({e})", f.path)))?;
        let known = matches!(
            classify(&f.path),
            Some(EntryKind::State | EntryKind::Blob(_) | EntryKind::Artifact(_))
        );
        if !known {
            return Err(damaged(format!("lists an unexpected file {:?}", f.path)));
        }
        if files.insert(f.path.clone(), (f.size, digest)).is_some() {
            return Err(damaged(format!("lists {} twice", f.path)));
        }
    }
    Ok(Listed {
        files,
        bytes,
        sum_verified: false,
    })
}

/// Read `backup.json.sha256` and compare it with the manifest read before it.
fn verify_manifest_sum(
    entry: &mut impl Read,
    listed: &mut Listed,
    file: &Path,
) -> anyhow::Result<()> {
    let mut text = String::new();
    entry
        .take(1024)
        .read_to_string(&mut text)
        .with_context(|| format!("{} is damaged", file.display()))?;
    let actual = Digest::of(&listed.bytes);
    if text.trim_end_matches('\n') != actual.hex() {
        bail!(
            "{}: {MANIFEST_ENTRY} is damaged (it hashes to {actual}, {MANIFEST_SUM_ENTRY} says {:?}): the backup is damaged; nothing was changed",
            file.display(),
            text.trim()
        );
    }
    listed.sum_verified = true;
    Ok(())
}

/// Restore the backup `file` into `dir` (appliance stopped). Everything is staged and
/// verified first; the data directory changes only once all of it checked out.
pub(super) fn restore(dir: &DataDir, file: &Path) -> anyhow::Result<Restored> {
    let _lock = dir.lock()?;
    let registry_dir = dir.registry_dir();
    // A backup (or check) of this directory may still be reading blob files: they must not
    // be moved aside under it.
    let _no_reader = if registry_dir.exists() {
        Some(CollectorLock::try_exclusive(&registry_dir)?.ok_or_else(|| {
            anyhow!(
                "a palisade admin backup or check is reading {}: wait for it to finish, then restore",
                registry_dir.display()
            )
        })?)
    } else {
        None
    };
    let staging = tempfile::Builder::new()
        .prefix(".restore-")
        .tempdir_in(dir.root())
        .context("cannot create a staging folder in the data directory")?;
    let input =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(COPY_BUFFER, input));
    let mut listed: Option<Listed> = None;
    let mut seen = HashSet::new();
    let mut staged_blobs = HashSet::new();
    let mut blob_bytes = 0u64;
    let mut staged_artifacts = HashSet::new();
    let mut artifact_bytes = 0u64;
    let mut staged_dirs = BTreeSet::new();
    let damaged = |why: String| {
        anyhow!(
            "{}: {why}: the backup is damaged; nothing was changed",
            file.display()
        )
    };
    // Stage everything first; the data directory is touched only once all of it checked out.
    for (index, entry) in archive
        .entries()
        .with_context(|| {
            format!(
                "{} is not a palisade backup (not a tar archive)",
                file.display()
            )
        })?
        .enumerate()
    {
        let mut entry = entry.with_context(|| format!("{} is damaged", file.display()))?;
        let raw = entry.path_bytes();
        let name = String::from_utf8_lossy(&raw).into_owned();
        // Only the known names, and files under their exact content-addressed path: no path
        // from the archive is ever trusted.
        let kind = std::str::from_utf8(&raw).ok().and_then(classify);
        let Some(kind) = kind else {
            bail!(
                "{} holds an unexpected entry {name:?}: it is not a palisade backup",
                file.display()
            );
        };
        if !entry.header().entry_type().is_file() {
            bail!(
                "{}: entry {name:?} is not a regular file: it is not a palisade backup",
                file.display()
            );
        }
        if !seen.insert(name.clone()) {
            bail!(
                "{} holds {name:?} twice: it is not a palisade backup",
                file.display()
            );
        }
        let size = entry.size();
        match (&kind, listed.as_mut()) {
            (EntryKind::Manifest, None) if index == 0 => {
                listed = Some(read_manifest(&mut entry, size, file)?);
                continue;
            }
            (EntryKind::ManifestSum, Some(l)) if index == 1 => {
                verify_manifest_sum(&mut entry, l, file)?;
                continue;
            }
            (EntryKind::Manifest | EntryKind::ManifestSum, _) => {
                return Err(damaged(format!(
                    "{name} is not where a backup has it (the first two entries are {MANIFEST_ENTRY} and {MANIFEST_SUM_ENTRY})"
                )));
            }
            (_, Some(l)) => {
                if !l.sum_verified {
                    return Err(damaged(format!("{MANIFEST_SUM_ENTRY} is missing")));
                }
                match l.files.get(&name) {
                    None => {
                        return Err(damaged(format!(
                            "it holds {name}, which its {MANIFEST_ENTRY} does not list"
                        )))
                    }
                    Some((listed_size, _)) if *listed_size != size => {
                        return Err(damaged(format!(
                            "{name} is {size} bytes, its {MANIFEST_ENTRY} says {listed_size}"
                        )))
                    }
                    Some(_) => {}
                }
            }
            (_, None) => {}
        }
        let target = staging.path().join(&name);
        if let Some(parent) = target.parent() {
            create_private_dirs(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
            staged_dirs.extend(
                parent
                    .ancestors()
                    .take_while(|d| d.starts_with(staging.path()))
                    .map(Path::to_path_buf),
            );
        }
        let (actual, size) = extract_entry(&mut entry, &target).with_context(|| {
            format!(
                "cannot extract {name} from {} into {}",
                file.display(),
                target.display()
            )
        })?;
        // Verified while extracting: content is only ever trusted under its own digest, and
        // every file against the manifest.
        match kind {
            EntryKind::Blob(expected) => {
                if actual != expected {
                    return Err(damaged(format!(
                        "blob {expected} is corrupt (its content hashes to {actual})"
                    )));
                }
                staged_blobs.insert(expected);
                blob_bytes += size;
            }
            EntryKind::Artifact(expected) => {
                if actual != expected {
                    return Err(damaged(format!(
                        "bundle artifact {expected} is corrupt (its content hashes to {actual})"
                    )));
                }
                staged_artifacts.insert(expected);
                artifact_bytes += size;
            }
            _ => {}
        }
        if let Some((_, expected)) = listed.as_ref().and_then(|l| l.files.get(&name)) {
            if actual != *expected {
                return Err(damaged(format!(
                    "{name} is corrupt (its content hashes to {actual}, its {MANIFEST_ENTRY} says {expected})"
                )));
            }
        }
    }
    if let Some(l) = &listed {
        if !l.sum_verified {
            return Err(damaged(format!("{MANIFEST_SUM_ENTRY} is missing")));
        }
    }
    for needed in std::iter::once(DB_ENTRY).chain(KEY_FILES) {
        if !seen.contains(needed) {
            bail!(
                "{} lacks {needed}: it is not a complete palisade backup; nothing was changed",
                file.display()
            );
        }
    }
    let staged_db = staging.path().join(DB_ENTRY);
    let version = store::restore_from(&staged_db)
        .with_context(|| format!("the database in {} is not usable", file.display()))?;
    let refs = store::referenced_blobs(&staged_db)
        .with_context(|| format!("the database in {} is not usable", file.display()))?;
    let file_refs = store::referenced_files(&staged_db)
        .with_context(|| format!("the database in {} is not usable", file.display()))?;
    let needed = by_digest(&refs);
    // A backup with a manifest holds everything; an older one holds blobs only if it has any,
    // and never bundle artifacts.
    let full = listed.is_some();
    let replace_registry = full || !staged_blobs.is_empty();
    let registry = if replace_registry {
        for (digest, repositories) in &needed {
            let present = Digest::parse(digest).is_ok_and(|d| staged_blobs.contains(&d));
            if !present {
                bail!(
                    "{} lacks blob {digest} of {}, which its database references: the backup is incomplete; nothing was changed",
                    file.display(),
                    repositories_phrase(repositories)
                );
            }
        }
        FilesRestore::Replaced {
            files: staged_blobs.len(),
            bytes: blob_bytes,
        }
    } else {
        let missing = needed
            .keys()
            .filter(|d| {
                Digest::parse(d)
                    .map(|d| !registry_dir.join(blob_relative_path(&d)).exists())
                    .unwrap_or(true)
            })
            .count();
        FilesRestore::KeptCurrent {
            referenced: needed.len(),
            missing,
        }
    };
    let needed_files: BTreeMap<&str, &str> = file_refs
        .iter()
        .map(|r| (r.digest.as_str(), r.what.as_str()))
        .collect();
    let artifacts = if full {
        for (digest, what) in &needed_files {
            let present = Digest::parse(digest).is_ok_and(|d| staged_artifacts.contains(&d));
            if !present {
                bail!(
                    "{} lacks bundle artifact {digest} ({what}), which its database records: the backup is incomplete; nothing was changed",
                    file.display()
                );
            }
        }
        FilesRestore::Replaced {
            files: staged_artifacts.len(),
            bytes: artifact_bytes,
        }
    } else {
        let missing = needed_files
            .keys()
            .filter(|digest| {
                Digest::parse(digest)
                    .map(|d| !dir.root().join(artifact_relative_path(d.hex())).exists())
                    .unwrap_or(true)
            })
            .count();
        FilesRestore::KeptCurrent {
            referenced: needed_files.len(),
            missing,
        }
    };
    if let Some(l) = &listed {
        let mut absent: Vec<&str> = l
            .files
            .keys()
            .filter(|p| !seen.contains(p.as_str()))
            .map(String::as_str)
            .collect();
        absent.sort_unstable();
        if let Some(first) = absent.first() {
            bail!(
                "{} lacks {first}{}, which its {MANIFEST_ENTRY} lists: the backup is incomplete; nothing was changed",
                file.display(),
                match absent.len() {
                    1 => String::new(),
                    n => format!(" and {} other file(s)", n - 1),
                }
            );
        }
    }
    for d in &staged_dirs {
        sync_dir(d)?;
    }

    // Move the current state aside and the staged one in; on any failure, undo every move.
    let kept = new_kept_dir(dir.root())?;
    let mut renames = Renames::default();
    let moved = (|| -> anyhow::Result<()> {
        std::fs::create_dir_all(kept.join("pki"))
            .with_context(|| format!("cannot create {}", kept.join("pki").display()))?;
        let mut aside: Vec<&str> = vec!["state.db", "state.db-wal", "state.db-shm"];
        aside.extend(KEY_FILES);
        let mut staged: Vec<&str> = vec![DB_ENTRY];
        staged.extend(KEY_FILES);
        if replace_registry {
            aside.push(REGISTRY_DIR);
            staged.push(REGISTRY_DIR);
        }
        if full {
            aside.push(ARTIFACTS_DIR);
            staged.push(ARTIFACTS_DIR);
        }
        for name in aside {
            let from = dir.root().join(name);
            if from.symlink_metadata().is_ok() {
                renames.rename(&from, &kept.join(name))?;
            }
        }
        std::fs::create_dir_all(dir.pki_dir())
            .with_context(|| format!("cannot create {}", dir.pki_dir().display()))?;
        for name in staged {
            let from = staging.path().join(name);
            // A backup without blobs or artifacts has no such folder: the appliance creates
            // an empty one.
            if from.symlink_metadata().is_ok() {
                renames.rename(&from, &dir.root().join(name))?;
            }
        }
        for d in [dir.root().to_path_buf(), dir.pki_dir(), kept.clone()] {
            sync_dir(&d)?;
        }
        Ok(())
    })();
    if let Err(e) = moved {
        let stuck = renames.undo();
        if stuck.is_empty() {
            let _ = std::fs::remove_dir(kept.join("pki"));
            let _ = std::fs::remove_dir(&kept);
            return Err(e.context("restore failed; everything was moved back, nothing was changed"));
        }
        return Err(e.context(format!(
            "restore failed, and these could not be moved back (the previous state is in {}): {}",
            kept.display(),
            stuck.join("; ")
        )));
    }
    tracing::info!(schema_version = version, "restored backup");
    Ok(Restored {
        kept,
        registry,
        artifacts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_entries_are_known_files_or_exact_content_paths() {
        let d = Digest::of(b"layer");
        let hex = d.hex();
        for name in ["state.db", "secret.key", "pki/ca.crt", "pki/ca.key"] {
            assert_eq!(classify(name), Some(EntryKind::State), "{name}");
        }
        assert_eq!(classify("backup.json"), Some(EntryKind::Manifest));
        assert_eq!(classify("backup.json.sha256"), Some(EntryKind::ManifestSum));
        let entry = format!("registry/blobs/sha256/{}/{hex}", &hex[..2]);
        assert_eq!(classify(&entry), Some(EntryKind::Blob(d.clone())));
        let entry = format!("artifacts/sha256/{}/{hex}", &hex[..2]);
        assert_eq!(classify(&entry), Some(EntryKind::Artifact(d.clone())));
        assert_eq!(
            artifact_relative_path(hex).display().to_string(),
            entry,
            "the archive mirrors the data directory"
        );
        for name in [
            "./state.db".to_string(),
            "pki/other.key".into(),
            "registry/gc.lock".into(),
            format!("registryx/blobs/sha256/{}/{hex}", &hex[..2]),
            format!("registry//blobs/sha256/{}/{hex}", &hex[..2]),
            format!("/registry/blobs/sha256/{}/{hex}", &hex[..2]),
            format!("registry/uploads/{hex}"),
            format!("artifacts/blobs/sha256/{}/{hex}", &hex[..2]),
            format!("artifacts/sha256/{}/{hex}", &hex[2..4]),
            format!("artifacts/sha256/{}/{}", &hex[..2], hex.to_uppercase()),
            format!("artifacts/sha256/{}/{hex}/x", &hex[..2]),
            "artifacts/sha256/../../state.db".into(),
            "backup.json/x".into(),
        ] {
            assert!(classify(&name).is_none(), "{name}");
        }
    }

    #[test]
    fn progress_lines_say_how_far_the_copy_is() {
        let mut p = Progress::new(4 << 20, 2, false);
        p.advance(1 << 20);
        assert_eq!(p.line(), "copied 1.0 MiB of 4.0 MiB (25%), 0 of 2 files");
        assert_eq!(p.next_line, PROGRESS_LINE_BYTES);
        p.advance(PROGRESS_LINE_BYTES * 2);
        assert_eq!(p.next_line, PROGRESS_LINE_BYTES * 3);
        assert_eq!(
            Progress::new(0, 0, false).line(),
            "copied 0 B of 0 B (100%), 0 of 0 files"
        );
    }

    #[test]
    fn a_damaged_manifest_is_refused_naming_it() {
        let file = Path::new("site.backup");
        let good = serde_json::to_vec(&BackupManifest {
            backup_format: 1,
            created: "2026-11-21T10:00:00Z".into(),
            palisade_version: "0.1.0".into(),
            files: vec![ManifestFile {
                path: "state.db".into(),
                size: 3,
                sha256: Digest::of(b"abc").hex().to_string(),
            }],
        })
        .expect("json");
        let mut listed = read_manifest(&mut good.as_slice(), good.len() as u64, file)
            .expect("a good manifest reads");
        assert_eq!(listed.files.len(), 1);
        let sum = format!("{}\n", Digest::of(&good).hex());
        verify_manifest_sum(&mut sum.as_bytes(), &mut listed, file).expect("sum matches");
        // One byte changed in the manifest: the sum no longer matches.
        let mut edited = good.clone();
        let at = edited.iter().position(|b| *b == b'2').expect("a digit");
        edited[at] = b'3';
        let mut l = read_manifest(&mut edited.as_slice(), edited.len() as u64, file)
            .expect("still a manifest");
        let e = verify_manifest_sum(&mut sum.as_bytes(), &mut l, file).expect_err("damaged");
        assert!(e.to_string().contains("backup.json is damaged"), "{e}");
        let newer = br#"{"backup_format": 2}"#;
        let e = read_manifest(&mut newer.as_slice(), newer.len() as u64, file)
            .expect_err("unknown format");
        assert!(e.to_string().contains("format 2"), "{e}");
        let odd = String::from_utf8(good)
            .expect("utf-8")
            .replace("state.db", "../x");
        let e = read_manifest(&mut odd.as_bytes(), odd.len() as u64, file).expect_err("odd path");
        assert!(e.to_string().contains("unexpected file"), "{e}");
    }

    #[test]
    fn failed_restore_moves_are_undone_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, b"a").expect("write");
        let mut renames = Renames::default();
        renames.rename(&a, &b).expect("a to b");
        renames.rename(&b, &c).expect("b to c");
        assert!(renames.rename(&a, &b).is_err(), "a is gone");
        assert!(renames.undo().is_empty());
        assert_eq!(std::fs::read(&a).expect("a is back"), b"a");
        assert!(!b.exists() && !c.exists());
    }
}
