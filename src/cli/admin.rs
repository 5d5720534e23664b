//! `palisade admin`: offline tasks on a data directory (they also work beside a running
//! appliance, except `restore`, which needs it stopped).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};

use super::backup::{backup, restore, FilesRestore};
use super::EXIT_PROBLEMS;
use crate::datadir::DataDir;
use crate::model::{check_name, check_password};
use crate::registry::blobs::{blob_relative_path, hash_file};
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
    /// Write a consistent backup (database, sealing key, CA, every registry blob and every
    /// bundle file artifact the database references, each verified against its sha256) to
    /// FILE while the appliance runs. Not included: the broker's log, work in progress.
    Backup {
        #[command(flatten)]
        dir: DirArg,
        /// The backup file to create (mode 0600; it holds keys: store it safely).
        file: PathBuf,
    },
    /// Replace the data directory's state (database, keys, registry blobs, bundle artifacts)
    /// with a backup, after verifying every file's sha256. The appliance must be stopped; the
    /// current state is kept in a pre-restore-* folder inside the data directory (which may be
    /// new: restoring onto a fresh machine).
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
                "backup written to {}: database, keys, {} registry blob(s) ({}) and {} bundle file(s) ({}), each verified against its sha256",
                file.display(),
                summary.blobs,
                human(summary.blob_bytes),
                summary.files,
                human(summary.file_bytes)
            );
            println!(
                "not included: the broker's log (desired state is published again from the database at start), imports and uploads in progress"
            );
            Ok(0)
        }
        AdminCommand::Restore { dir, file } => {
            // A data directory that does not exist yet (a new machine) is fine: the backup
            // holds everything an appliance needs.
            let dir = DataDir::create(&dir.data_dir)?;
            let restored = restore(&dir, &file)?;
            println!(
                "restored {} into {}; the previous state is in {}",
                file.display(),
                dir.root().display(),
                restored.kept.display()
            );
            for (files, what, place, lacking) in [
                (
                    &restored.registry,
                    "registry blob(s)",
                    dir.registry_dir(),
                    "push those images again",
                ),
                (
                    &restored.artifacts,
                    "bundle file(s)",
                    dir.artifacts_dir(),
                    "import those bundles again",
                ),
            ] {
                match files {
                    FilesRestore::Replaced { files, bytes } => println!(
                        "{}: {files} {what} ({}) restored, each verified against its sha256; the previous ones are in {}",
                        place.display(),
                        human(*bytes),
                        restored.kept.display()
                    ),
                    FilesRestore::KeptCurrent {
                        referenced,
                        missing,
                    } => {
                        println!(
                            "{}: {} holds no {what} (a backup made before they were included): the current ones are kept in place",
                            place.display(),
                            file.display(),
                        );
                        if *missing > 0 {
                            println!(
                                "warning: {missing} of the {referenced} {what} the restored database references are not in {}: palisade admin check lists them; {lacking}",
                                place.display()
                            );
                        }
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
pub(super) fn by_digest(refs: &[BlobReference]) -> BTreeMap<&str, Vec<&str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in refs {
        out.entry(r.digest.as_str())
            .or_default()
            .push(r.repository.as_str());
    }
    out
}

/// `repository a` or `repositories a, b`, for messages about one blob.
pub(super) fn repositories_phrase(names: &[&str]) -> String {
    match names {
        [one] => format!("repository {one}"),
        many => format!("repositories {}", many.join(", ")),
    }
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
}
