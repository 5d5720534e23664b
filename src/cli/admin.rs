//! `palisade admin`: offline tasks on a data directory (they also work beside a running
//! appliance, except `restore`, which needs it stopped).

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::EXIT_PROBLEMS;
use crate::datadir::DataDir;
use crate::model::{check_name, check_password};
use crate::secrets::{self, SealingKey};
use crate::store::{self, Store};

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
    /// Write a consistent backup (database, sealing key, CA) to FILE while the appliance runs.
    Backup {
        #[command(flatten)]
        dir: DirArg,
        /// The backup file to create (mode 0600; it holds keys: store it safely).
        file: PathBuf,
    },
    /// Replace the data directory's state with a backup. The appliance must be stopped; the
    /// current state is kept in a pre-restore-* folder inside the data directory.
    Restore {
        #[command(flatten)]
        dir: DirArg,
        file: PathBuf,
    },
    /// Check the database's integrity and foreign keys, and that every stored credential
    /// decrypts with this directory's key. Exit code 3 when problems are found.
    Check {
        #[command(flatten)]
        dir: DirArg,
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
            backup(&dir, &file)?;
            println!("backup written to {}", file.display());
            Ok(0)
        }
        AdminCommand::Restore { dir, file } => {
            let dir = DataDir::existing(&dir.data_dir)?;
            let kept = restore(&dir, &file)?;
            println!(
                "restored {} into {}; the previous state is in {}",
                file.display(),
                dir.root().display(),
                kept.display()
            );
            Ok(0)
        }
        AdminCommand::Check { dir } => {
            let dir = DataDir::existing(&dir.data_dir)?;
            let store = open_store(&dir)?;
            let mut problems = store.check().await?;
            problems.extend(store.check_sealed_credentials().await?);
            if problems.is_empty() {
                println!("database {}: ok", dir.db_path().display());
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

fn backup(dir: &DataDir, file: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let staging = tempfile::Builder::new()
        .prefix(".backup-")
        .tempdir_in(dir.root())
        .context("cannot create a staging folder in the data directory")?;
    let snapshot = staging.path().join(DB_ENTRY);
    store::backup_to(&dir.db_path(), &snapshot)?;
    let tmp = file.with_extension("partial");
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut tar = tar::Builder::new(out);
    tar.append_path_with_name(&snapshot, DB_ENTRY)?;
    for name in KEY_FILES {
        tar.append_path_with_name(dir.root().join(name), name)
            .with_context(|| format!("cannot add {name} to the backup"))?;
    }
    let out = tar.into_inner()?;
    out.sync_all()?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(())
}

fn restore(dir: &DataDir, file: &Path) -> anyhow::Result<PathBuf> {
    let _lock = dir.lock()?;
    let staging = tempfile::Builder::new()
        .prefix(".restore-")
        .tempdir_in(dir.root())
        .context("cannot create a staging folder in the data directory")?;
    let input =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut archive = tar::Archive::new(input);
    let mut seen = Vec::new();
    for entry in archive.entries().with_context(|| {
        format!(
            "{} is not a palisade backup (not a tar archive)",
            file.display()
        )
    })? {
        let mut entry = entry.with_context(|| format!("{} is damaged", file.display()))?;
        let name = entry.path()?.to_string_lossy().to_string();
        // Only the known file names: no path from the archive is ever trusted.
        if name != DB_ENTRY && !KEY_FILES.contains(&name.as_str()) {
            bail!(
                "{} holds an unexpected entry {name:?}: it is not a palisade backup",
                file.display()
            );
        }
        let target = staging.path().join(&name);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        secrets::write_private_file(&target, &bytes)?;
        seen.push(name);
    }
    for needed in std::iter::once(DB_ENTRY).chain(KEY_FILES) {
        if !seen.iter().any(|s| s == needed) {
            bail!(
                "{} lacks {needed}: it is not a complete palisade backup",
                file.display()
            );
        }
    }
    let version = store::restore_from(&staging.path().join(DB_ENTRY))
        .with_context(|| format!("the database in {} is not usable", file.display()))?;
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let kept = dir.root().join(format!("pre-restore-{stamp}"));
    std::fs::create_dir_all(kept.join("pki"))?;
    for name in ["state.db", "state.db-wal", "state.db-shm"]
        .into_iter()
        .chain(KEY_FILES)
    {
        let from = dir.root().join(name);
        if from.exists() {
            std::fs::rename(&from, kept.join(name))
                .with_context(|| format!("cannot move {} aside", from.display()))?;
        }
    }
    std::fs::create_dir_all(dir.pki_dir())?;
    for name in std::iter::once(DB_ENTRY).chain(KEY_FILES) {
        std::fs::rename(staging.path().join(name), dir.root().join(name))
            .with_context(|| format!("cannot move the restored {name} into place"))?;
    }
    tracing::info!(schema_version = version, "restored backup");
    Ok(kept)
}
