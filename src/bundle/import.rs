//! `bundle import`: verify a bundle while streaming it into `<data-dir>/staging/<bundle id>/`,
//! then move what verified into place and record it in one transaction.
//!
//! Crash safety (the rule: a `kill -9` at any moment leaves the registry consistent, and a
//! re-run completes without rewriting stored blobs):
//! - phase 1 writes only under `staging/<bundle id>/`: each entry to `<hex>.partial`, which is
//!   fsynced and renamed to `<hex>` once its sha256 and size verified. Entries whose final
//!   file exists already (in the registry's blob store or `artifacts/`), or whose staged file
//!   does, are only hashed, not written;
//! - phase 2 runs only after the whole bundle verified: staged files are renamed into place
//!   (fsync, rename, fsync the directory; a present blob is never replaced), then one
//!   database transaction records blobs, manifests, tags, the import and its audit entry.
//!   Until it commits, the database references none of the new files, so the registry is
//!   consistent at every moment; a blob file moved but not yet recorded is reused by the
//!   re-run (or removed by the registry's collector if the import is abandoned).
//!
//! A bundle refused for any reason leaves nothing: its staging folder is removed and neither
//! the registry nor the database changed. The appliance must be stopped (the data
//! directory's lock), so the registry's collector cannot run meanwhile.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{io, Error, Result};
use super::format::{parse_version, Artifact, ArtifactKind, Destination, Expected};
use super::reader::{open_parts, read_bundle, Head, Next, Sink};
use super::Progress;
use crate::datadir::DataDir;
use crate::registry::blobs::{place_file, BlobStore};
use crate::registry::manifests;
use crate::registry::names::Digest;
use crate::store::{
    AuditEntry, BundleImport, ImportArtifact, ImportRepository, NewManifest, NewPack, Store,
    TrustedKey,
};

/// Choices of the person importing.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Import even if no trusted key signed the bundle (audited as such).
    pub allow_untrusted: bool,
    /// Import even if a newer bundle of the same name was imported, or replace a different
    /// bundle of the same name and version.
    pub allow_downgrade: bool,
    /// Who imports, for the audit log.
    pub actor: String,
    /// How the bundle arrived, for the audit log (`palisade bundle import (offline)`, an upload).
    pub source: String,
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    pub head: Head,
    /// Whether a trusted key signed it.
    pub trusted: bool,
    /// True when this exact bundle had been imported already: nothing was done.
    pub already_imported: bool,
    /// Entries written (staged and moved into place) by this run.
    pub written: u64,
    /// Entries found in place already (or staged by an interrupted run): hashed, not written.
    pub reused: u64,
    /// Key rotation applied: keys added and removed.
    pub keys_added: usize,
    pub keys_removed: usize,
    /// A rotation statement that was ignored because the bundle was not signed by a trusted key.
    pub rotation_ignored: bool,
}

/// The `artifacts/` path of file artifact `hex`, relative to the data directory.
pub fn artifact_relative_path(hex: &str) -> PathBuf {
    Path::new("artifacts")
        .join("sha256")
        .join(&hex[..2])
        .join(hex)
}

/// Where content is staged and where it belongs.
#[derive(Clone)]
struct Places {
    staging: PathBuf,
    registry: BlobStore,
    data_root: PathBuf,
}

struct StagingSink {
    places: Places,
    written: u64,
    reused: u64,
}

impl std::ops::Deref for StagingSink {
    type Target = Places;
    fn deref(&self) -> &Places {
        &self.places
    }
}

struct StagedWriter {
    out: BufWriter<File>,
    partial: PathBuf,
}

impl Write for StagedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl Places {
    fn final_path(&self, e: &Expected) -> Option<PathBuf> {
        match e.destination {
            Destination::LayoutOnly => None,
            Destination::Registry => Digest::parse(&format!("sha256:{}", e.sha256))
                .ok()
                .map(|d| self.registry.blob_path(&d)),
            Destination::Files => Some(self.data_root.join(artifact_relative_path(&e.sha256))),
        }
    }

    fn staged(&self, e: &Expected) -> PathBuf {
        self.staging.join(&e.sha256)
    }
}

impl Sink for StagingSink {
    type W = StagedWriter;

    fn open(&mut self, e: &Expected) -> Result<Option<StagedWriter>> {
        let Some(dest) = self.final_path(e) else {
            return Ok(None);
        };
        if dest.exists() || self.staged(e).exists() {
            self.reused += 1;
            return Ok(None);
        }
        let partial = self.staging.join(format!("{}.partial", e.sha256));
        let f = File::create(&partial).map_err(io("create staging file", &partial))?;
        Ok(Some(StagedWriter {
            out: BufWriter::with_capacity(1 << 20, f),
            partial,
        }))
    }

    fn commit(&mut self, e: &Expected, w: StagedWriter) -> Result<()> {
        let StagedWriter { out, partial } = w;
        let f = out
            .into_inner()
            .map_err(|e| io("write staging file", &partial)(e.into_error()))?;
        f.sync_all().map_err(io("sync staging file", &partial))?;
        let staged = self.staged(e);
        std::fs::rename(&partial, &staged).map_err(io("rename staging file", &staged))?;
        self.written += 1;
        Ok(())
    }

    fn discard(&mut self, _: &Expected, w: StagedWriter) {
        drop(w.out);
        let _ = std::fs::remove_file(&w.partial);
    }
}

/// What the database must know beforehand to judge a bundle's head.
struct Context {
    trusted: HashSet<String>,
    imported: Vec<(String, String, String)>,
}

/// Decide whether the head may be imported; returns (trusted, already imported).
fn judge(head: &Head, ctx: &Context, opts: &ImportOptions) -> Result<(bool, bool)> {
    let m = &head.manifest;
    let trusted = head.signers.iter().any(|s| ctx.trusted.contains(s));
    if !trusted && !opts.allow_untrusted {
        if head.signers.is_empty() {
            return Err(Error::Unsigned);
        }
        return Err(Error::UntrustedSigner {
            key_ids: head.signers.clone(),
        });
    }
    let version = parse_version("bundle version", &m.version)?;
    let sha = head.manifest_sha256();
    for (name, v, s) in &ctx.imported {
        if *name != m.name {
            continue;
        }
        if *v == m.version {
            if *s == sha {
                return Ok((trusted, true));
            }
            if !opts.allow_downgrade {
                return Err(Error::VersionReused {
                    name: m.name.clone(),
                    version: m.version.clone(),
                });
            }
        } else if let Ok(other) = semver::Version::parse(v) {
            if other > version && !opts.allow_downgrade {
                return Err(Error::Rollback {
                    name: m.name.clone(),
                    version: m.version.clone(),
                    imported: v.clone(),
                });
            }
        }
    }
    Ok((trusted, false))
}

/// Read the (verified) bytes of blob `hex`, from its final place or the staging folder.
fn read_verified(sink: &StagingSink, hex: &str) -> Result<Vec<u8>> {
    let staged = sink.staging.join(hex);
    let path = match Digest::parse(&format!("sha256:{hex}")) {
        Ok(d) if sink.registry.blob_path(&d).exists() => sink.registry.blob_path(&d),
        _ => staged,
    };
    std::fs::read(&path).map_err(io("read verified manifest", &path))
}

/// The catalogue entry of pack artifact `a`: its manifest must be a Palisade pack of the name
/// and version the bundle lists it under (the registry repository and tag come from those).
fn catalogued_pack(sink: &StagingSink, a: &Artifact) -> Result<NewPack> {
    let bad = |reason: String| Error::Artifact {
        name: a.label(),
        reason,
    };
    let e = crate::pack::catalogue_entry(&read_verified(sink, &a.sha256)?).map_err(|why| {
        bad(format!(
            "is listed as a pack but is not a Palisade pack: {why}; package packs with \
             `palisade pack package` or a recipe's [[pack]] entry, or list an image as kind \
             container-image"
        ))
    })?;
    if e.name != a.name || e.version != a.version {
        return Err(bad(format!(
            "is pack {} {} inside, not {} {} as the bundle lists it: list it under its own name \
             and version",
            e.name, e.version, a.name, a.version
        )));
    }
    Ok(NewPack {
        name: e.name,
        version: e.version,
        layer_type: e.layer,
        digest: format!("sha256:{}", a.sha256),
        description: e.description,
    })
}

/// The manifests of OCI artifact `a` in the order the registry needs them (children of an
/// index first), each checked to reference only blobs the artifact carries.
fn manifests_of(sink: &StagingSink, a: &Artifact) -> Result<Vec<NewManifest>> {
    let carried: BTreeMap<&str, &str> = std::iter::once((a.sha256.as_str(), a.media_type.as_str()))
        .chain(
            a.blobs
                .iter()
                .map(|b| (b.sha256.as_str(), b.media_type.as_str())),
        )
        .collect();
    let mut out = Vec::new();
    let mut todo = vec![(a.sha256.clone(), a.media_type.clone(), 0u32)];
    let mut seen = HashSet::new();
    while let Some((hex, media_type, depth)) = todo.pop() {
        if depth > 4 || !seen.insert(hex.clone()) {
            continue;
        }
        let bytes = read_verified(sink, &hex)?;
        let bad = |reason: String| Error::Artifact {
            name: a.label(),
            reason,
        };
        let parsed = manifests::parse(Some(&media_type), &bytes)
            .map_err(|e| bad(format!("manifest sha256:{hex} is invalid: {e}")))?;
        for d in parsed.blobs.iter().chain(parsed.manifests.iter()) {
            if !carried.contains_key(d.hex()) {
                return Err(bad(format!(
                    "manifest sha256:{hex} references {d}, which the bundle does not list for it"
                )));
            }
        }
        for d in &parsed.manifests {
            let mt = carried.get(d.hex()).copied().unwrap_or_default();
            todo.push((d.hex().to_string(), mt.to_string(), depth + 1));
        }
        out.push(NewManifest {
            digest: format!("sha256:{hex}"),
            media_type: parsed.media_type.to_string(),
            size: bytes.len() as u64,
            artifact_type: parsed.artifact_type,
            subject: parsed.subject.map(|d| d.to_string()),
            annotations: parsed.annotations,
            blobs: parsed.blobs.iter().map(|d| d.to_string()).collect(),
            manifests: parsed.manifests.iter().map(|d| d.to_string()).collect(),
        });
    }
    // Children were pushed after their parents: the registry needs them first.
    out.reverse();
    Ok(out)
}

/// Import the bundle in `files` (its parts, in any order) into the data directory `dir`.
/// `running` is the registry of the appliance when it imports while serving (an upload
/// through the API): the move into place and the commit then hold its collector off. Offline,
/// the caller holds the data directory's lock instead.
pub async fn import(
    dir: &DataDir,
    store: &Store,
    files: &[PathBuf],
    opts: &ImportOptions,
    progress: Arc<dyn Progress>,
    running: Option<&crate::registry::Registry>,
) -> Result<ImportReport> {
    let ctx = Context {
        trusted: store
            .bundle_trusted_keys()
            .await?
            .into_iter()
            .map(|k| k.key_id)
            .collect(),
        imported: store
            .bundle_imports()
            .await?
            .into_iter()
            .map(|b| (b.name, b.version, b.manifest_sha256))
            .collect(),
    };
    let registry = BlobStore::open(&dir.registry_dir())?;
    let data_root = dir.root().to_path_buf();
    let staging_root = dir.staging_dir();
    let files = files.to_vec();
    let opts2 = opts.clone();
    let progress2 = progress.clone();
    let phase1 = tokio::task::spawn_blocking(move || -> Result<(Head, StagingSink, bool, bool)> {
        let parts = open_parts(&files)?;
        let staging = staging_root.join(parts.bundle_id().to_string());
        let places = Places {
            staging: staging.clone(),
            registry,
            data_root,
        };
        let mut sink = StagingSink {
            places: places.clone(),
            written: 0,
            reused: 0,
        };
        let mut verdict = (false, false);
        let mut on_head = |head: &Head| -> Result<Next> {
            verdict = judge(head, &ctx, &opts2)?;
            if verdict.1 {
                return Ok(Next::Stop);
            }
            let needed: u64 = head
                .plan
                .entries
                .values()
                .filter(|e| places.final_path(e).map(|p| !p.exists()).unwrap_or(false))
                .map(|e| e.size)
                .sum();
            let root = places.data_root.clone();
            let available = fs4::available_space(&root).map_err(io("read free space of", &root))?;
            if needed > available {
                return Err(Error::NoSpace {
                    path: root,
                    needed,
                    available,
                });
            }
            std::fs::create_dir_all(&places.staging)
                .map_err(io("create staging folder", &places.staging))?;
            Ok(Next::Continue)
        };
        match read_bundle(&parts, &mut on_head, &mut sink, progress2.as_ref()) {
            Ok(head) => {
                if verdict.1 {
                    // Imported already (perhaps by a run killed just after its commit).
                    let _ = std::fs::remove_dir_all(&staging);
                }
                Ok((head, sink, verdict.0, verdict.1))
            }
            Err(e) => {
                // A refused bundle leaves nothing behind.
                let _ = std::fs::remove_dir_all(&staging);
                Err(e)
            }
        }
    })
    .await
    .map_err(|e| Error::Io {
        op: "read bundle (worker stopped)",
        path: PathBuf::new(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let (head, sink, trusted, already) = phase1?;
    let mut report = ImportReport {
        head: head.clone(),
        trusted,
        already_imported: already,
        written: sink.written,
        reused: sink.reused,
        keys_added: 0,
        keys_removed: 0,
        rotation_ignored: false,
    };
    if already {
        return Ok(report);
    }
    let m = &head.manifest;
    // Check what the registry will be told before anything leaves the staging folder.
    let mut repositories = Vec::new();
    let mut artifacts = Vec::new();
    let mut packs = Vec::new();
    for a in &m.artifacts {
        if let Some(repo) = a.repository() {
            let manifests = manifests_of(&sink, a)?;
            if a.kind == ArtifactKind::Pack {
                packs.push(catalogued_pack(&sink, a)?);
            }
            let manifest_digests: HashSet<&str> =
                manifests.iter().map(|x| x.digest.as_str()).collect();
            let blobs = a
                .blobs
                .iter()
                .map(|b| (format!("sha256:{}", b.sha256), b.size))
                .filter(|(d, _)| !manifest_digests.contains(d.as_str()))
                .collect();
            artifacts.push(ImportArtifact {
                kind: a.kind.name().into(),
                name: a.name.clone(),
                version: a.version.clone(),
                media_type: a.media_type.clone(),
                size: a.size,
                digest: format!("sha256:{}", a.sha256),
                location: format!("registry:{repo}:{}", a.version),
            });
            repositories.push(ImportRepository {
                name: repo,
                blobs,
                manifests,
                tag: a.version.clone(),
            });
        } else {
            artifacts.push(ImportArtifact {
                kind: a.kind.name().into(),
                name: a.name.clone(),
                version: a.version.clone(),
                media_type: a.media_type.clone(),
                size: a.size,
                digest: format!("sha256:{}", a.sha256),
                location: artifact_relative_path(&a.sha256).display().to_string(),
            });
        }
    }
    // Phase 2: move into place. Every staged file verified; present ones stay untouched.
    // While serving, the collector must not run between the check that a file is in place
    // and the commit that references it.
    let _no_collector = match running {
        Some(r) => Some(r.reachability_guard().await),
        None => None,
    };
    let entries: Vec<Expected> = head.plan.entries.values().cloned().collect();
    let sink = tokio::task::spawn_blocking(move || -> Result<StagingSink> {
        sync_dir(&sink.staging)?;
        let artifacts_root = sink.data_root.join("artifacts").join("sha256");
        for e in entries {
            let staged = sink.staged(&e);
            if !staged.exists() {
                // Hashed but not staged because its file was in place: it still must be
                // (an unreferenced file can be collected meanwhile); if not, nothing is
                // recorded and a re-run writes it.
                if let Some(fin) = sink.final_path(&e) {
                    if !fin.exists() {
                        return Err(Error::MissingEntry {
                            what: format!(
                                "{} in the data directory (it was there when the import began): run the import again",
                                e.name
                            ),
                        });
                    }
                }
                continue;
            }
            match e.destination {
                Destination::Registry => {
                    let d = Digest::parse(&format!("sha256:{}", e.sha256)).map_err(|err| {
                        Error::Artifact {
                            name: e.name.clone(),
                            reason: err.to_string(),
                        }
                    })?;
                    sink.registry.place_verified(&staged, &d)?;
                }
                Destination::Files => {
                    std::fs::create_dir_all(&artifacts_root)
                        .map_err(io("create artifacts folder", &artifacts_root))?;
                    let to = sink.data_root.join(artifact_relative_path(&e.sha256));
                    place_file(&staged, &to, &artifacts_root)?;
                }
                Destination::LayoutOnly => {}
            }
        }
        Ok(sink)
    })
    .await
    .map_err(|e| Error::Io {
        op: "place bundle content (worker stopped)",
        path: PathBuf::new(),
        source: std::io::Error::other(e.to_string()),
    })??;
    let (add_keys, remove_keys) = if trusted {
        let by = format!("bundle {} {}", m.name, m.version);
        let add = m
            .trust
            .add_keys
            .iter()
            .map(|k| TrustedKey {
                key_id: k.key_id.clone(),
                public_key: k.public_key.clone(),
                comment: k.comment.clone(),
                added_by: by.clone(),
                created_at: crate::model::now(),
            })
            .collect::<Vec<_>>();
        (add, m.trust.remove_keys.clone())
    } else {
        report.rotation_ignored = !m.trust.is_empty();
        (Vec::new(), Vec::new())
    };
    report.keys_added = add_keys.len();
    report.keys_removed = remove_keys.len();
    let outcome = if trusted {
        "success".to_string()
    } else {
        format!(
            "success: not signed by a trusted key ({}), allowed by --allow-untrusted",
            if head.signers.is_empty() {
                "unsigned".to_string()
            } else {
                head.signers.join(", ")
            }
        )
    };
    store
        .bundle_commit_import(BundleImport {
            bundle_id: m.bundle_id.to_string(),
            name: m.name.clone(),
            version: m.version.clone(),
            manifest_sha256: head.manifest_sha256(),
            created: m.created.clone(),
            signers: head.signers.clone(),
            trusted,
            repositories,
            artifacts,
            packs,
            add_keys,
            remove_keys,
            audit: AuditEntry {
                actor: opts.actor.clone(),
                action: "bundle import".into(),
                object: format!("{} {} ({})", m.name, m.version, m.bundle_id),
                source: opts.source.clone(),
                outcome,
                request_id: uuid::Uuid::new_v4().to_string(),
            },
        })
        .await
        .map_err(|e| match e {
            crate::store::Error::Conflict(reason) => Error::Trust { reason },
            other => Error::Store(other),
        })?;
    let _ = std::fs::remove_dir_all(&sink.staging);
    Ok(report)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync folder", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_files_are_content_addressed() {
        let hex = "ab".repeat(32);
        assert_eq!(
            artifact_relative_path(&hex),
            PathBuf::from(format!("artifacts/sha256/ab/{hex}"))
        );
    }
}
