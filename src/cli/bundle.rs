//! `palisade bundle`: keygen, build, verify, inspect, import, and the trusted-key list.
//! Arguments, progress and output only; the work is in `crate::bundle`.
//!
//! Exit codes: 0 success; 1 the operation failed (the message says why and what to do);
//! 2 bad usage; 3 `verify` found the bundle bad (signature, digest, size, structure).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::admin::human;
use super::EXIT_PROBLEMS;
use crate::bundle::build::{build, BuildOptions, BundleMeta};
use crate::bundle::format::{Compression, KeySpec, TrustChanges};
use crate::bundle::import::{import, ImportOptions};
use crate::bundle::reader::{open_parts, read_bundle, Head, Next, VerifyOnly};
use crate::bundle::recipe::{read_recipe, resolve_recipe, ImageEntry, Recipe, Resolved, Resolvers};
use crate::bundle::{keys, Error as BundleError, Progress};
use crate::datadir::DataDir;
use crate::oci_pull::{Credentials, PullOptions};
use crate::secrets::SealingKey;
use crate::store::{AuditEntry, Store, TrustedKey};

/// The data directory an import works on.
#[derive(Debug, Clone, Args)]
pub struct DataDirArg {
    /// Data directory of the appliance (stop the appliance first).
    #[arg(long, env = "PALISADE_DATA_DIR", default_value = "./palisade-data")]
    data_dir: PathBuf,
}

/// Offline bundles.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Create an ed25519 signing key (PKCS#8 PEM, mode 0600) and its public key (<file>.pub).
    Keygen {
        /// The private key file to create (never overwritten).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
    /// Build a signed bundle from a recipe (TOML; see docs/bundle-format.md).
    Build {
        recipe: PathBuf,
        /// Private key to sign with (repeat to sign with several, e.g. during a key rotation).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// The bundle file to write (with --split-size: <file>.part001, .part002, ...).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// zstd (default) or gzip.
        #[arg(long, default_value = "zstd")]
        compression: Compression,
        /// Cut the bundle into parts of at most this size: bytes, or with K, M, G, T
        /// (powers of 1000: 4G fits FAT32's 4 GiB file limit).
        #[arg(long, value_parser = parse_size)]
        split_size: Option<u64>,
        /// Key rotation: ask appliances to trust this public key from now on.
        #[arg(long = "trust-add")]
        trust_add: Vec<PathBuf>,
        /// Key rotation: ask appliances to stop trusting this key id.
        #[arg(long = "trust-remove")]
        trust_remove: Vec<String>,
    },
    /// Verify a bundle: structure, signatures, every size and sha256. Exit 0 only if all hold.
    Verify {
        /// The bundle, or all its parts in any order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Require a signature by this public key (repeatable).
        #[arg(long = "trusted-key")]
        trusted_keys: Vec<PathBuf>,
    },
    /// Show what a bundle holds (reads only its signed metadata).
    Inspect {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Import a bundle into a data directory (appliance stopped): packs and images into the
    /// registry, files into <data-dir>/artifacts.
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        dir: DataDirArg,
        /// Import even though no trusted key signed the bundle (audited).
        #[arg(long)]
        allow_untrusted: bool,
        /// Import even though a newer version of the bundle was imported before.
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// The public keys this appliance trusts to sign bundles.
    #[command(subcommand)]
    Trust(TrustCommand),
}

/// Trusted bundle keys.
#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Trust a public key (a .pub file written by keygen).
    Add {
        key: PathBuf,
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// List the trusted keys.
    List {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Stop trusting a key.
    Remove {
        key_id: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
}

/// Parse `4G`, `500M`, `1000000` (K, M, G, T are powers of 1000; KiB, MiB, GiB powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size: give bytes or a number with K, M, G or T"))?;
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        "TIB" => 1 << 40,
        _ => return Err(format!("unknown size unit {unit:?}: use K, M, G or T")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Shows progress: a bar on a terminal (stderr), plain lines every 256 MiB otherwise.
struct CliProgress {
    bar: Option<indicatif::ProgressBar>,
    plain: Mutex<PlainState>,
}

struct PlainState {
    what: String,
    total: u64,
    done: u64,
    next_line: u64,
    started: Option<Instant>,
}

const PLAIN_EVERY: u64 = 256 << 20;

impl CliProgress {
    fn new() -> Arc<CliProgress> {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::hidden();
            b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            b
        });
        Arc::new(CliProgress {
            bar,
            plain: Mutex::new(PlainState {
                what: String::new(),
                total: 0,
                done: 0,
                next_line: PLAIN_EVERY,
                started: None,
            }),
        })
    }
}

impl Progress for CliProgress {
    fn start(&self, what: &str, total: u64) {
        if let Some(b) = &self.bar {
            b.reset();
            b.set_length(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:10} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message(what.to_string());
            b.enable_steady_tick(Duration::from_millis(200));
        } else if let Ok(mut p) = self.plain.lock() {
            p.what = what.to_string();
            p.total = total;
            p.done = 0;
            p.next_line = PLAIN_EVERY;
            p.started = Some(Instant::now());
            eprintln!("{what}: {} of content", human(total));
        }
    }

    fn advance(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        } else if let Ok(mut p) = self.plain.lock() {
            p.done += n;
            if p.done >= p.next_line {
                let pct = (p.done * 100).checked_div(p.total).unwrap_or(100);
                eprintln!(
                    "{}: {} of {} ({pct}%)",
                    p.what,
                    human(p.done),
                    human(p.total)
                );
                while p.next_line <= p.done {
                    p.next_line += PLAIN_EVERY;
                }
            }
        }
    }

    fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        } else if let Ok(p) = self.plain.lock() {
            let secs = p.started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
            if p.total > 0 {
                eprintln!("{}: done, {} in {secs:.1} s", p.what, human(p.done));
            }
        }
    }

    fn message(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None => eprintln!("{text}"),
        }
    }
}

fn open_store(dir: &DataDir) -> anyhow::Result<Store> {
    let key = SealingKey::load_or_create(&dir.sealing_key_path())?;
    Ok(Store::open(&dir.db_path(), key)?)
}

/// Who runs an offline command, for the audit log.
fn local_actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("local:{user}")
}

fn audit(action: &str, object: String) -> AuditEntry {
    AuditEntry {
        actor: local_actor(),
        action: action.into(),
        object,
        source: "palisade bundle (offline)".into(),
        outcome: "success".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
    }
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(16)]
}

fn print_head(head: &Head) {
    let m = &head.manifest;
    println!("bundle      {} {}", m.name, m.version);
    if !m.description.is_empty() {
        println!("            {}", m.description);
    }
    println!("id          {}", m.bundle_id);
    println!("created     {}", m.created);
    println!("requires    palisade {} or newer", m.min_appliance_version);
    println!(
        "format      version {}, {}, {} part(s), {} compressed, {} of content",
        m.format_version,
        head.compression.name(),
        head.parts,
        human(head.compressed),
        human(head.plan.total)
    );
    if head.signers.is_empty() {
        println!("signed by   nobody (unsigned)");
    }
    for s in &head.signers {
        println!("signed by   {s} (signature valid)");
    }
    for k in &m.trust.add_keys {
        println!("rotation    trust key {} {}", k.key_id, k.comment);
    }
    for k in &m.trust.remove_keys {
        println!("rotation    stop trusting key {k}");
    }
    let rows: Vec<[String; 5]> = m
        .artifacts
        .iter()
        .map(|a| {
            let total = a.size + a.blobs.iter().map(|b| b.size).sum::<u64>();
            [
                a.kind.name().to_string(),
                a.name.clone(),
                a.version.clone(),
                human(total),
                format!("sha256:{}", short(&a.sha256)),
            ]
        })
        .collect();
    let header = ["KIND", "NAME", "VERSION", "SIZE", "DIGEST"].map(String::from);
    let mut widths = [0usize; 5];
    for r in std::iter::once(&header).chain(rows.iter()) {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    println!();
    for r in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = r
            .iter()
            .zip(widths.iter())
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn read_public_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    paths
        .iter()
        .map(|p| Ok(keys::key_id(&keys::read_public(p)?)))
        .collect()
}

/// Packages a pack directory of the recipe into an OCI layout.
fn pack_resolver(dir: &Path, layout: &Path) -> Result<Resolved, String> {
    let packed = crate::pack::package_to_layout(dir, layout).map_err(|e| e.to_string())?;
    Ok(Resolved {
        name: packed.name,
        version: packed.version,
    })
}

/// The puller's options for one image of `recipe`.
fn pull_options(img: &ImageEntry, recipe: &Recipe) -> Result<PullOptions, String> {
    let mut options = PullOptions {
        mirrors: recipe.mirror.clone(),
        plain_http: recipe.plain_http.iter().cloned().collect(),
        digest: img.digest.clone(),
        ..PullOptions::default()
    };
    for (host, auth) in &recipe.registry_auth {
        let password = std::env::var(&auth.password_env).map_err(|_| {
            format!(
                "registry_auth for {host} reads the password from ${}, which is not set: export it before the build",
                auth.password_env
            )
        })?;
        options.credentials.insert(
            host.clone(),
            Credentials {
                username: auth.username.clone(),
                password,
            },
        );
    }
    Ok(options)
}

/// Pulls an image of the recipe into an OCI layout. Runs on a blocking thread of the runtime,
/// where waiting for the async pull is allowed.
fn image_resolver(img: &ImageEntry, recipe: &Recipe, layout: &Path) -> Result<(), String> {
    let options = pull_options(img, recipe)?;
    tokio::runtime::Handle::current()
        .block_on(crate::oci_pull::pull_to_layout(
            &img.reference,
            &options,
            layout,
        ))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub(super) async fn run(cmd: BundleCommand) -> anyhow::Result<i32> {
    match cmd {
        BundleCommand::Keygen { output } => {
            let key = keys::generate();
            keys::write_private(&output, &key)?;
            let mut pub_path = output.as_os_str().to_owned();
            pub_path.push(".pub");
            let pub_path = PathBuf::from(pub_path);
            keys::write_public(&pub_path, &key.verifying_key())?;
            println!(
                "private key: {} (mode 0600: keep it offline and safe)",
                output.display()
            );
            println!("public key:  {}", pub_path.display());
            println!("key id:      {}", keys::key_id(&key.verifying_key()));
            println!(
                "public key (base64): {}",
                keys::public_key_base64(&key.verifying_key())
            );
            Ok(0)
        }
        BundleCommand::Build {
            recipe,
            keys: key_paths,
            output,
            compression,
            split_size,
            trust_add,
            trust_remove,
        } => {
            let signing = key_paths
                .iter()
                .map(|p| keys::read_private(p))
                .collect::<Result<Vec<_>, _>>()?;
            let r = read_recipe(&recipe)?;
            let mut trust = TrustChanges::default();
            for p in &trust_add {
                let k = keys::read_public(p)?;
                trust.add_keys.push(KeySpec {
                    key_id: keys::key_id(&k),
                    public_key: keys::public_key_base64(&k),
                    comment: p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                });
            }
            trust.remove_keys = trust_remove;
            let meta = BundleMeta {
                name: r.bundle.name.clone(),
                version: r.bundle.version.clone(),
                min_appliance_version: r
                    .bundle
                    .min_appliance_version
                    .clone()
                    .unwrap_or_else(|| crate::VERSION.to_string()),
                description: r.bundle.description.clone(),
                trust,
            };
            let progress = CliProgress::new();
            let built = tokio::task::spawn_blocking(move || {
                let work = tempfile::tempdir().context("cannot create a work directory")?;
                let resolvers = Resolvers {
                    pack: &pack_resolver,
                    image: &image_resolver,
                };
                let inputs = resolve_recipe(&recipe, &r, work.path(), &resolvers)?;
                let refs: Vec<&ed25519_dalek::SigningKey> = signing.iter().collect();
                let built = build(
                    &meta,
                    &inputs,
                    &refs,
                    &output,
                    BuildOptions {
                        compression,
                        split_size,
                    },
                    progress.as_ref(),
                )?;
                anyhow::Ok(built)
            })
            .await??;
            for p in &built.parts {
                println!("wrote {}", p.display());
            }
            println!(
                "bundle {} {}: {} artifact(s), {} written, id {}",
                built.manifest.name,
                built.manifest.version,
                built.manifest.artifacts.len(),
                human(built.bytes),
                built.manifest.bundle_id
            );
            Ok(0)
        }
        BundleCommand::Verify {
            files,
            trusted_keys,
        } => {
            let trusted = read_public_keys(&trusted_keys)?;
            let progress = CliProgress::new();
            let outcome = tokio::task::spawn_blocking(move || -> Result<Head, BundleError> {
                let parts = open_parts(&files)?;
                let mut on_head = |h: &Head| -> Result<Next, BundleError> {
                    if h.signers.is_empty() {
                        return Err(BundleError::Unsigned);
                    }
                    if !trusted.is_empty() && !h.signers.iter().any(|s| trusted.contains(s)) {
                        return Err(BundleError::UntrustedSigner {
                            key_ids: h.signers.clone(),
                        });
                    }
                    Ok(Next::Continue)
                };
                read_bundle(&parts, &mut on_head, &mut VerifyOnly, progress.as_ref())
            })
            .await?;
            match outcome {
                Ok(head) => {
                    let m = &head.manifest;
                    println!(
                        "bundle {} {} is intact: {} artifact(s), {} entries, {} of content, every size and sha256 verified",
                        m.name,
                        m.version,
                        m.artifacts.len(),
                        head.plan.entries.len(),
                        human(head.plan.total)
                    );
                    for s in &head.signers {
                        println!("signature by key {s}: valid");
                    }
                    if trusted_keys.is_empty() {
                        println!("(the signer was not checked against a trusted key: give --trusted-key to require one)");
                    }
                    Ok(0)
                }
                Err(e) if e.is_refusal() => {
                    eprintln!("error: bundle refused: {e}");
                    Ok(EXIT_PROBLEMS)
                }
                Err(e) => Err(e.into()),
            }
        }
        BundleCommand::Inspect { files, json } => {
            let head = tokio::task::spawn_blocking(move || -> Result<Head, BundleError> {
                let parts = open_parts(&files)?;
                let mut on_head = |_: &Head| Ok(Next::Stop);
                read_bundle(
                    &parts,
                    &mut on_head,
                    &mut VerifyOnly,
                    &crate::bundle::Silent,
                )
            })
            .await??;
            if json {
                let v = serde_json::json!({
                    "bundle": head.manifest,
                    "manifest_sha256": head.manifest_sha256(),
                    "signers": head.signers,
                    "compression": head.compression.name(),
                    "parts": head.parts,
                    "compressed_bytes": head.compressed,
                    "content_bytes": head.plan.total,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_head(&head);
            }
            Ok(0)
        }
        BundleCommand::Import {
            files,
            dir,
            allow_untrusted,
            allow_downgrade,
        } => {
            let dir = DataDir::existing(&dir.data_dir)?;
            let _lock = dir
                .lock()
                .context("palisade bundle import needs the appliance stopped")?;
            let store = open_store(&dir)?;
            let opts = ImportOptions {
                allow_untrusted,
                allow_downgrade,
                actor: local_actor(),
                source: "palisade bundle import (offline)".into(),
            };
            let progress = CliProgress::new();
            let report = import(&dir, &store, &files, &opts, progress, None).await?;
            let m = &report.head.manifest;
            if report.already_imported {
                println!(
                    "bundle {} {} was imported already: nothing to do",
                    m.name, m.version
                );
                return Ok(0);
            }
            println!(
                "imported bundle {} {} into {}: {} artifact(s); {} entries written, {} already present",
                m.name,
                m.version,
                dir.root().display(),
                m.artifacts.len(),
                report.written,
                report.reused
            );
            for a in &m.artifacts {
                match a.repository() {
                    Some(repo) => println!("  {:<16} {repo}:{}", a.kind.name(), a.version),
                    None => println!(
                        "  {:<16} {} {} -> {}",
                        a.kind.name(),
                        a.name,
                        a.version,
                        crate::bundle::import::artifact_relative_path(&a.sha256).display()
                    ),
                }
            }
            if !report.trusted {
                println!("warning: the bundle is not signed by a trusted key; imported because of --allow-untrusted (recorded in the audit log)");
            }
            if report.rotation_ignored {
                println!("warning: the bundle's key rotation statement was ignored: only a bundle signed by a trusted key may change the trusted keys");
            }
            if report.keys_added + report.keys_removed > 0 {
                println!(
                    "trusted keys: {} added, {} removed by the bundle's rotation statement",
                    report.keys_added, report.keys_removed
                );
            }
            Ok(0)
        }
        BundleCommand::Trust(t) => trust(t).await,
    }
}

async fn trust(cmd: TrustCommand) -> anyhow::Result<i32> {
    match cmd {
        TrustCommand::Add { key, dir, comment } => {
            let k = keys::read_public(&key)?;
            let dir = DataDir::existing(&dir.data_dir)?;
            let store = open_store(&dir)?;
            let id = keys::key_id(&k);
            let added = store
                .bundle_trust_key(
                    TrustedKey {
                        key_id: id.clone(),
                        public_key: keys::public_key_base64(&k),
                        comment,
                        added_by: local_actor(),
                        created_at: crate::model::now(),
                    },
                    Some(audit("bundle trust add", format!("key {id}"))),
                )
                .await?;
            if added {
                println!("bundles signed by key {id} are trusted from now on");
            } else {
                println!("key {id} was trusted already");
            }
            Ok(0)
        }
        TrustCommand::List { dir } => {
            let dir = DataDir::existing(&dir.data_dir)?;
            let store = open_store(&dir)?;
            let keys = store.bundle_trusted_keys().await?;
            if keys.is_empty() {
                println!(
                    "no trusted bundle keys: add one with palisade bundle trust add <key.pub>"
                );
            }
            for k in keys {
                println!("{}  added by {}  {}", k.key_id, k.added_by, k.comment);
            }
            Ok(0)
        }
        TrustCommand::Remove { key_id, dir } => {
            let dir = DataDir::existing(&dir.data_dir)?;
            let store = open_store(&dir)?;
            if !store
                .bundle_untrust_key(
                    &key_id,
                    Some(audit("bundle trust remove", format!("key {key_id}"))),
                )
                .await?
            {
                bail!("key {key_id} is not trusted: palisade bundle trust list shows the trusted keys");
            }
            println!("key {key_id} is no longer trusted");
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_powers_of_1000_unless_binary_units_are_given() {
        assert_eq!(parse_size("4G"), Ok(4_000_000_000));
        assert_eq!(parse_size("512M"), Ok(512_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("G").is_err());
    }
}
