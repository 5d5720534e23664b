//! `palisade admin`: offline tasks on a data directory (they also work beside a running
//! appliance, except `restore`, which needs it stopped).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};

use super::EXIT_PROBLEMS;
use crate::datadir::DataDir;
use crate::model::{check_name, check_password};
use crate::registry::blobs::{
    blob_relative_path, digest_of_relative_path, hash_file, HashingReader,
};
use crate::registry::collector_lock::CollectorLock;
use crate::registry::names::Digest;
use crate::secrets::{self, SealingKey};
use crate::store::{self, BlobReference, Store};

/// The data directory an admin task works on.
#[derive(Debug, Clone, Args)]
pub struct DirArg {
    /// Data directory of the appliance.
    #[arg(long, env = "PALISADE_DATA_DIR", default_value = "./palisade-data")]
    data_dir: PathBuf,
}

/// Offline admin tasks.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a system-admin account. Prints a generated password unless --password-stdin is given.
    CreateUser {
        #[command(flatten)]
        dir: DirArg,
        /// Login name (lower-case letters, digits and '-').
        username: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a new password for an account, unlock it and end its sessions.
    ResetPassword {
        #[command(flatten)]
        dir: DirArg,
        username: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Write a consistent backup (database, sealing key, CA, and every registry blob the
    /// database references, each verified against its digest) to FILE while the appliance runs.
    Backup {
        #[command(flatten)]
        dir: DirArg,
        /// The backup file to create (mode 0600; it holds keys: store it safely).
        file: PathBuf,
    },
    /// Replace the data directory's state (and its registry blobs, if the backup holds them)
    /// with a backup. The appliance must be stopped; the current state is kept in a
    /// pre-restore-* folder inside the data directory.
    Restore {
        #[command(flatten)]
        dir: DirArg,
        file: PathBuf,
    },
    /// Check the database's integrity and foreign keys, that every stored credential
    /// decrypts with this directory's key, and that every registry blob the database
    /// references is present. Exit code 3 when problems are found.
    Check {
        #[command(flatten)]
        dir: DirArg,
        /// Also read every referenced registry blob and check that it hashes to its digest.
        #[arg(long)]
        deep: bool,
    },
    /// Verify the audit log's hash chain. Exit code 3 when an entry was edited or deleted.
    AuditVerify {
        #[command(flatten)]
        dir: DirArg,
    },
}

fn open_store(dir: &DataDir) -> anyhow::Result<Store> {
    let key = SealingKey::load_or_create(&dir.sealing_key_path())?;
    Ok(Store::open(&dir.db_path(), key)?)
}

fn read_password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let pw = line.trim_end_matches(['\n', '\r']).to_string();
        check_password("password", &pw)?;
        Ok((pw, false))
    } else {
        // 24 URL-safe characters from 18 random bytes: 144 bits.
        let secret = secrets::new_bearer_secret("x");
        Ok((secret.chars().skip(2).take(24).collect(), true))
    }
}

pub(super) async fn run(cmd: AdminCommand) -> anyhow::Result<i32> {
    match cmd {
        AdminCommand::CreateUser {
            dir,
            username,
            password_stdin,
        } => {
            check_name("username", &username)?;
            let dir = DataDir::create(&dir.data_dir)?;
            let store = open_store(&dir)?;
            let (password, generated) = read_password(password_stdin)?;
            let hash = tokio::task::spawn_blocking(move || {
                secrets::hash_password(&password).map(|h| (h, password))
            })
            .await??;
            let user = store.insert_system_admin(username, hash.0).await?;
            // Setup through the console is no longer needed once an account exists.
            store.new_setup_token().await?;
            println!("created system admin {} (id {})", user.username, user.id);
            if generated {
                println!("password: {}", hash.1);
            }
            Ok(0)
        }
        AdminCommand::ResetPassword {
            dir,
            username,
            password_stdin,
        } => {
            let dir = DataDir::existing(&dir.data_dir)?;
            let store = open_store(&dir)?;
            let (password, generated) = read_password(password_stdin)?;
            let shown = password.clone();
            let hash =
                tokio::task::spawn_blocking(move || secrets::hash_password(&password)).await??;
            let user = match store.reset_password(&username, hash).await {
                Err(store::Error::NotFound { .. }) => {
                    bail!("no user named {username:?} in {}", dir.root().display())
                }
                other => other?,
            };
            println!(
                "password of {} reset; its sessions ended and its lockout cleared",
                user.username
            );
            if generated {
                println!("password: {shown}");
            }
            Ok(0)
        }
        AdminCommand::Backup { dir, file } => {
            let dir = DataDir::existing(&dir.data_dir)?;
            let summary = backup(&dir, &file)?;
            println!(
                "backup written to {}: database, keys and {} registry blob(s) ({}, each verified against its digest)",
                file.display(),
                summary.blobs,
                human(summary.bytes)
            );
            Ok(0)
        }
        AdminCommand::Restore { dir, file } => {
            let dir = DataDir::existing(&dir.data_dir)?;
            let restored = restore(&dir, &file)?;
            println!(
                "restored {} into {}; the previous state is in {}",
                file.display(),
                dir.root().display(),
                restored.kept.display()
            );
            match restored.registry {
                RegistryRestore::Replaced { blobs, bytes } => println!(
                    "registry: {blobs} blob(s) ({}) restored, each verified against its digest; the previous blob store is in {}",
                    human(bytes),
                    restored.kept.join(REGISTRY_DIR).display()
                ),
                RegistryRestore::KeptCurrent {
                    referenced,
                    missing,
                } => {
                    println!(
                        "registry: {} holds no registry blobs (a backup made before they were included): the current blob store {} is kept in place",
                        file.display(),
                        dir.registry_dir().display()
                    );
                    if missing > 0 {
                        println!(
                            "warning: {missing} of the {referenced} blob(s) the restored database references are not in the current blob store: palisade admin check lists them; push those images again"
                        );
                    }
                }
            }
            Ok(0)
        }
        AdminCommand::Check { dir, deep } => {
            let dir = DataDir::existing(&dir.data_dir)?;
            let store = open_store(&dir)?;
            let mut problems = store.check().await?;
            problems.extend(store.check_sealed_credentials().await?);
            let registry = check_registry(&dir, &store, deep).await?;
            problems.extend(registry.problems);
            let files = check_bundle_files(&dir, &store, deep).await?;
            problems.extend(files.problems);
            if problems.is_empty() {
                println!("database {}: ok", dir.db_path().display());
                println!(
                    "registry {}: ok, {} referenced blob(s) present{}",
                    dir.registry_dir().display(),
                    registry.blobs,
                    if deep {
                        " and hashing to their digests"
                    } else {
                        ""
                    }
                );
                println!(
                    "bundle artifacts {}: ok, {} file(s) present{}",
                    dir.artifacts_dir().display(),
                    files.blobs,
                    if deep {
                        " and hashing to their digests"
                    } else {
                        ""
                    }
                );
                Ok(0)
            } else {
                for p in &problems {
                    println!("problem: {p}");
                }
                println!(
                    "{} problem(s): restore the latest backup with palisade admin restore",
                    problems.len()
                );
                Ok(EXIT_PROBLEMS)
            }
        }
        AdminCommand::AuditVerify { dir } => {
            let dir = DataDir::existing(&dir.data_dir)?;
            let store = open_store(&dir)?;
            let report = store.verify_audit().await?;
            match report.problem {
                None => {
                    println!("audit log intact: {} entries verified", report.entries);
                    Ok(0)
                }
                Some(p) => {
                    println!("audit log TAMPERED: {p}");
                    Ok(EXIT_PROBLEMS)
                }
            }
        }
    }
}

/// Files of a backup archive besides the database, relative to the data directory.
const KEY_FILES: [&str; 3] = ["secret.key", "pki/ca.crt", "pki/ca.key"];
const DB_ENTRY: &str = "state.db";
/// The registry's directory in the data directory and in a backup archive (which mirrors the
/// data directory's layout): blob entries are `registry/blobs/sha256/<2 hex>/<64 hex>`.
const REGISTRY_DIR: &str = "registry";
/// Buffer size for streaming blobs into and out of archives.
const COPY_BUFFER: usize = 1 << 20;
/// Without a terminal, a progress line is printed each time this many more bytes are copied.
const PROGRESS_LINE_BYTES: u64 = 256 << 20;
/// On a terminal, the progress line is redrawn at most this often.
const PROGRESS_REDRAW: Duration = Duration::from_millis(200);

/// A size for people: `512 B`, `3.2 MiB`, `1.5 GiB`.
pub(super) fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Blob references grouped by digest: each digest once, with the repositories that need it.
fn by_digest(refs: &[BlobReference]) -> BTreeMap<&str, Vec<&str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in refs {
        out.entry(r.digest.as_str())
            .or_default()
            .push(r.repository.as_str());
    }
    out
}

/// `repository a` or `repositories a, b`, for messages about one blob.
fn repositories_phrase(names: &[&str]) -> String {
    match names {
        [one] => format!("repository {one}"),
        many => format!("repositories {}", many.join(", ")),
    }
}

/// What a backup holds besides the database and keys.
struct BackupSummary {
    blobs: usize,
    bytes: u64,
}

/// A registry blob the database snapshot references, found on disk.
struct BlobToCopy {
    digest: Digest,
    /// `repository a` or `repositories a, b`: who needs it, for messages.
    repositories: String,
    path: PathBuf,
    size: u64,
    modified: u64,
}

fn backup(dir: &DataDir, file: &Path) -> anyhow::Result<BackupSummary> {
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

fn write_backup(dir: &DataDir, tmp: &Path) -> anyhow::Result<BackupSummary> {
    use std::os::unix::fs::OpenOptionsExt;
    let registry = dir.registry_dir();
    // Why every blob the snapshot references is still on disk when it is copied below:
    // - Blob files are immutable and content-addressed: one appears only whole (an atomic
    //   rename after its sha256 was verified) and is never rewritten, so a path always names
    //   the same bytes.
    // - The only deleter is the garbage collector, inside the running `palisade serve`. It
    //   *could* delete a blob the snapshot references: after the snapshot, a manifest is
    //   deleted and the blob unlinked through the API (the live database no longer references
    //   it), and an hourly pass runs before the copy reaches the blob.
    // That race is excluded rather than detected: we hold the shared side of the collector's
    // cross-process lock (registry/gc.lock) from *before* the snapshot until the last blob is
    // copied, and every collection pass holds the exclusive side for its whole length (it
    // waits for us; pushes are never held up by this). So no pass overlaps the interval; a
    // pass that ended before the snapshot deleted only blobs unreferenced then (rows first,
    // committed, then files), which the snapshot does not reference either. A referenced blob
    // that is missing or corrupt here is therefore damage, never a race: the backup fails and
    // names it, and `palisade admin check --deep` lists every such blob.
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
    // The list comes from the snapshot, not the live database: the archive must hold exactly
    // what its own database needs.
    let refs = store::referenced_blobs(&snapshot)
        .context("cannot read the registry blob references of the database snapshot")?;
    let blobs = blobs_to_copy(&registry, &refs)?;
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(COPY_BUFFER, out));
    tar.append_path_with_name(&snapshot, DB_ENTRY)
        .context("cannot add the database to the backup")?;
    for name in KEY_FILES {
        tar.append_path_with_name(dir.root().join(name), name)
            .with_context(|| format!("cannot add {name} to the backup"))?;
    }
    let total = blobs.iter().map(|b| b.size).sum();
    let mut progress = Progress::new(total, blobs.len(), std::io::stdout().is_terminal());
    for blob in &blobs {
        append_blob(&mut tar, blob, &mut progress)?;
    }
    progress.finish();
    tar.into_inner()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    Ok(BackupSummary {
        blobs: blobs.len(),
        bytes: total,
    })
}

/// Find the file of every referenced blob before anything is written, so a damaged blob store
/// fails the backup at once, naming the blob.
fn blobs_to_copy(registry: &Path, refs: &[BlobReference]) -> anyhow::Result<Vec<BlobToCopy>> {
    let mut out = Vec::new();
    for (digest, repositories) in by_digest(refs) {
        let repositories = repositories_phrase(&repositories);
        let digest = Digest::parse(digest).map_err(|e| {
            anyhow!("the database references an invalid blob digest in {repositories}: {e}")
        })?;
        let path = registry.join(blob_relative_path(&digest));
        let meta = std::fs::metadata(&path).with_context(|| {
            format!(
                "blob {digest} of {repositories} is referenced by the database, but its file {} cannot be read: the blob store is damaged (palisade admin check lists every such blob); no backup was written",
                path.display()
            )
        })?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        out.push(BlobToCopy {
            digest,
            repositories,
            path,
            size: meta.len(),
            modified,
        });
    }
    Ok(out)
}

/// Stream one blob into the archive, hashing it on the way; a blob whose bytes do not match
/// its digest fails the backup.
fn append_blob<W: Write>(
    tar: &mut tar::Builder<W>,
    blob: &BlobToCopy,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let name = Path::new(REGISTRY_DIR).join(blob_relative_path(&blob.digest));
    let file = std::fs::File::open(&blob.path)
        .with_context(|| format!("cannot open blob {}", blob.path.display()))?;
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(blob.size);
    header.set_mode(0o600);
    header.set_mtime(blob.modified);
    // `take`: the entry holds exactly the size in its header, whatever happens to the file.
    let mut reader = HashingReader::new(ProgressReader {
        inner: std::io::BufReader::with_capacity(COPY_BUFFER, file).take(blob.size),
        progress,
    });
    tar.append_data(&mut header, &name, &mut reader)
        .with_context(|| {
            format!(
                "cannot copy blob {} ({}) into the backup",
                blob.digest,
                blob.path.display()
            )
        })?;
    let (actual, read) = reader.finish();
    if actual != blob.digest || read != blob.size {
        bail!(
            "blob {} of {} is corrupt: its file {} ({read} bytes read) hashes to {actual}; no backup was written. Run palisade admin check --deep to list damaged blobs; push those images again (or restore an older backup)",
            blob.digest,
            blob.repositories,
            blob.path.display()
        );
    }
    progress.blob_done();
    Ok(())
}

/// Progress of copying registry blobs, on standard output: a line redrawn in place when it is
/// a terminal; otherwise (a log, a pipe) a plain line every [`PROGRESS_LINE_BYTES`].
struct Progress {
    total: u64,
    blobs: usize,
    done: u64,
    blobs_done: usize,
    terminal: bool,
    next_line: u64,
    last_draw: Option<Instant>,
}

impl Progress {
    fn new(total: u64, blobs: usize, terminal: bool) -> Self {
        Progress {
            total,
            blobs,
            done: 0,
            blobs_done: 0,
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

    fn blob_done(&mut self) {
        self.blobs_done += 1;
        if self.terminal {
            self.redraw(false);
        }
    }

    fn finish(&mut self) {
        if self.terminal && self.blobs > 0 {
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
            "registry blobs: {} of {} ({percent}%), {} of {} blobs",
            human(self.done),
            human(self.total),
            self.blobs_done,
            self.blobs
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
struct Restored {
    /// Where the previous state was moved.
    kept: PathBuf,
    registry: RegistryRestore,
}

/// What a restore did with the registry's blob store.
enum RegistryRestore {
    /// The backup's blobs replaced the blob store (the old one is in `kept`).
    Replaced { blobs: usize, bytes: u64 },
    /// The backup holds no blobs (made before backups included them): the current blob store
    /// stays; `missing` of the `referenced` blobs the restored database needs are not in it.
    KeptCurrent { referenced: usize, missing: usize },
}

/// What an archive entry is, decided from its exact name alone: nothing else in an archive
/// is trusted.
enum EntryKind {
    /// The database or a key file.
    State,
    /// A registry blob whose content must hash to this digest.
    Blob(Digest),
}

fn classify(name: &str) -> Option<EntryKind> {
    if name == DB_ENTRY || KEY_FILES.contains(&name) {
        return Some(EntryKind::State);
    }
    name.strip_prefix(REGISTRY_DIR)?
        .strip_prefix('/')
        .and_then(digest_of_relative_path)
        .map(EntryKind::Blob)
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

fn restore(dir: &DataDir, file: &Path) -> anyhow::Result<Restored> {
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
    let mut seen = HashSet::new();
    let mut staged_blobs = HashSet::new();
    let mut blob_bytes = 0u64;
    let mut staged_dirs = BTreeSet::new();
    // Stage everything first; the data directory is touched only once all of it checked out.
    for entry in archive.entries().with_context(|| {
        format!(
            "{} is not a palisade backup (not a tar archive)",
            file.display()
        )
    })? {
        let mut entry = entry.with_context(|| format!("{} is damaged", file.display()))?;
        let raw = entry.path_bytes();
        let name = String::from_utf8_lossy(&raw).into_owned();
        // Only the known names, and blobs under their exact content-addressed path: no path
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
        if let EntryKind::Blob(expected) = kind {
            // Verified while extracting: a blob is only ever trusted under its own digest.
            if actual != expected {
                bail!(
                    "{}: blob {expected} is corrupt (its content hashes to {actual}): the backup is damaged; nothing was changed",
                    file.display()
                );
            }
            staged_blobs.insert(expected);
            blob_bytes += size;
        }
    }
    for needed in std::iter::once(DB_ENTRY).chain(KEY_FILES) {
        if !seen.contains(needed) {
            bail!(
                "{} lacks {needed}: it is not a complete palisade backup",
                file.display()
            );
        }
    }
    let staged_db = staging.path().join(DB_ENTRY);
    let version = store::restore_from(&staged_db)
        .with_context(|| format!("the database in {} is not usable", file.display()))?;
    let refs = store::referenced_blobs(&staged_db)
        .with_context(|| format!("the database in {} is not usable", file.display()))?;
    let needed = by_digest(&refs);
    let replace_registry = !staged_blobs.is_empty();
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
        RegistryRestore::Replaced {
            blobs: staged_blobs.len(),
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
        RegistryRestore::KeptCurrent {
            referenced: needed.len(),
            missing,
        }
    };
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
        if replace_registry {
            aside.push(REGISTRY_DIR);
        }
        for name in aside {
            let from = dir.root().join(name);
            if from.symlink_metadata().is_ok() {
                renames.rename(&from, &kept.join(name))?;
            }
        }
        std::fs::create_dir_all(dir.pki_dir())
            .with_context(|| format!("cannot create {}", dir.pki_dir().display()))?;
        let mut staged: Vec<&str> = vec![DB_ENTRY];
        staged.extend(KEY_FILES);
        if replace_registry {
            staged.push(REGISTRY_DIR);
        }
        for name in staged {
            renames.rename(&staging.path().join(name), &dir.root().join(name))?;
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
    Ok(Restored { kept, registry })
}

/// What the registry part of `admin check` found.
struct RegistryCheck {
    /// Distinct blobs the database references.
    blobs: usize,
    problems: Vec<String>,
}

/// Check that every blob the database references has its file, and with `deep` that the file
/// hashes to the blob's digest. Problems name the repository and the digest.
async fn check_registry(dir: &DataDir, store: &Store, deep: bool) -> anyhow::Result<RegistryCheck> {
    let root = dir.registry_dir();
    // Shared side of the collector's lock, taken before reading the references: otherwise a
    // running appliance's collector could delete a blob that loses its last reference after
    // we read it, and a healthy store would be reported as missing that blob.
    let lock_root = root.clone();
    let no_collection = tokio::task::spawn_blocking(move || {
        CollectorLock::shared(&lock_root, || {
            println!("waiting for the registry's garbage collection to finish...")
        })
    })
    .await
    .context("the lock worker stopped")??;
    let refs = store.registry_blob_references().await?;
    let check = tokio::task::spawn_blocking(move || {
        let _held = no_collection;
        verify_blobs(&root, &refs, deep)
    })
    .await
    .context("the blob check worker stopped")?;
    Ok(check)
}

/// Check that every file artifact an imported bundle recorded is in `<data-dir>/artifacts/`
/// (and with `deep`, hashes to its digest). Problems name the bundle and the artifact.
async fn check_bundle_files(
    dir: &DataDir,
    store: &Store,
    deep: bool,
) -> anyhow::Result<RegistryCheck> {
    let rows = store.bundle_file_artifacts().await?;
    let root = dir.root().to_path_buf();
    let check = tokio::task::spawn_blocking(move || {
        let mut problems = Vec::new();
        for [bundle, kind, name, version, digest, location] in &rows {
            let path = root.join(location);
            let problem = match std::fs::metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Some(format!("is missing: no file {}", path.display()))
                }
                Err(e) => Some(format!("cannot be read ({}: {e})", path.display())),
                Ok(_) if deep => match hash_file(&path) {
                    Ok((actual, _)) if actual.as_str() == digest => None,
                    Ok((actual, _)) => Some(format!(
                        "is corrupt: its file {} hashes to {actual}",
                        path.display()
                    )),
                    Err(e) => Some(format!("cannot be read ({:#})", anyhow!(e))),
                },
                Ok(_) => None,
            };
            if let Some(p) = problem {
                problems.push(format!(
                    "bundle {bundle}: {kind} {name} {version} ({digest}) {p}: import the bundle again"
                ));
            }
        }
        RegistryCheck {
            blobs: rows.len(),
            problems,
        }
    })
    .await
    .context("the artifact check worker stopped")?;
    Ok(check)
}

fn verify_blobs(root: &Path, refs: &[BlobReference], deep: bool) -> RegistryCheck {
    let needed = by_digest(refs);
    let mut problems = Vec::new();
    for (digest, repositories) in &needed {
        let problem = match Digest::parse(digest) {
            Err(e) => Some(format!("is not a valid digest ({e})")),
            Ok(d) => {
                let path = root.join(blob_relative_path(&d));
                match std::fs::metadata(&path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Some(format!("is missing: no file {}", path.display()))
                    }
                    Err(e) => Some(format!("cannot be read ({}: {e})", path.display())),
                    Ok(_) if deep => match hash_file(&path) {
                        Ok((actual, _)) if actual == d => None,
                        Ok((actual, _)) => Some(format!(
                            "is corrupt: its file {} hashes to {actual}",
                            path.display()
                        )),
                        Err(e) => Some(format!("cannot be read ({:#})", anyhow!(e))),
                    },
                    Ok(_) => None,
                }
            }
        };
        if let Some(p) = problem {
            for repo in repositories {
                problems.push(format!("repository {repo}: blob {digest} {p}"));
            }
        }
    }
    RegistryCheck {
        blobs: needed.len(),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(human(5 << 40), "5.0 TiB");
    }

    #[test]
    fn archive_entries_are_known_files_or_exact_blob_paths() {
        let d = Digest::of(b"layer");
        let hex = d.hex();
        for name in ["state.db", "secret.key", "pki/ca.crt", "pki/ca.key"] {
            assert!(matches!(classify(name), Some(EntryKind::State)), "{name}");
        }
        let entry = format!("registry/blobs/sha256/{}/{hex}", &hex[..2]);
        assert!(matches!(classify(&entry), Some(EntryKind::Blob(x)) if x == d));
        for name in [
            "./state.db".to_string(),
            "pki/other.key".into(),
            "registry/gc.lock".into(),
            format!("registryx/blobs/sha256/{}/{hex}", &hex[..2]),
            format!("registry//blobs/sha256/{}/{hex}", &hex[..2]),
            format!("/registry/blobs/sha256/{}/{hex}", &hex[..2]),
            format!("registry/uploads/{hex}"),
        ] {
            assert!(classify(&name).is_none(), "{name}");
        }
    }

    #[test]
    fn progress_lines_say_how_far_the_copy_is() {
        let mut p = Progress::new(4 << 20, 2, false);
        p.advance(1 << 20);
        assert_eq!(
            p.line(),
            "registry blobs: 1.0 MiB of 4.0 MiB (25%), 0 of 2 blobs"
        );
        assert_eq!(p.next_line, PROGRESS_LINE_BYTES);
        p.advance(PROGRESS_LINE_BYTES * 2);
        assert_eq!(p.next_line, PROGRESS_LINE_BYTES * 3);
        assert_eq!(
            Progress::new(0, 0, false).line(),
            "registry blobs: 0 B of 0 B (100%), 0 of 0 blobs"
        );
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
