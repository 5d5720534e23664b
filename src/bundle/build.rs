//! `bundle build`: write resolved inputs (OCI layouts and files) as one signed, compressed,
//! optionally split bundle. Reads each input once more than import does (files are hashed
//! before the metadata is written, since the metadata comes first); never holds an artifact
//! in memory.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use serde_json::json;

use super::error::{io, Error, Result};
use super::format::{
    blob_entry, Artifact, ArtifactKind, Compression, LayoutFile, Manifest, PartHeader,
    TrustChanges, FORMAT_VERSION, INDEX_ENTRY, MANIFEST_ENTRY, OCI_LAYOUT_ENTRY, PART_HEADER_LEN,
    SIGNATURES_ENTRY,
};
use super::keys;
use super::layout::{self, read_layout, REF_NAME};
use super::recipe::RecipeInput;
use super::Progress;
use crate::registry::blobs::{hash_file, HashingReader};

/// Who the bundle is and what it requires.
#[derive(Debug, Clone)]
pub struct BundleMeta {
    pub name: String,
    pub version: String,
    pub min_appliance_version: String,
    pub description: String,
    /// A key rotation statement to carry (see `docs/bundle-format.md`).
    pub trust: TrustChanges,
}

/// How to write the bundle.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    pub compression: Compression,
    /// Cut the bundle into parts of at most this many bytes (header included).
    pub split_size: Option<u64>,
}

/// What `build` wrote.
#[derive(Debug, Clone)]
pub struct Built {
    /// The bundle file, or its parts in order.
    pub parts: Vec<PathBuf>,
    pub manifest: Manifest,
    /// Bytes written, headers included.
    pub bytes: u64,
}

/// Smallest part size accepted: a part must hold its header and some content.
pub const MIN_SPLIT: u64 = 1_000_000;

/// An entry to write: name, size, sha256 hex (empty for in-memory entries), content.
type Entry = (String, u64, String, Source);

/// Where an entry's bytes come from.
enum Source {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// The file names of a bundle written to `out`: `out` itself, or `out.part001`... when split.
pub fn part_path(out: &Path, index: u32, split: bool) -> PathBuf {
    if split {
        let mut s = out.as_os_str().to_owned();
        s.push(format!(".part{index:03}"));
        PathBuf::from(s)
    } else {
        out.to_path_buf()
    }
}

/// Writes the compressed stream across parts, each behind its header (patched at the end,
/// when the count and lengths are known).
struct PartWriter {
    out: PathBuf,
    split: Option<u64>,
    id: uuid::Uuid,
    compression: Compression,
    done: Vec<(PathBuf, u64)>,
    current: Option<(PathBuf, BufWriter<File>, u64)>,
}

impl PartWriter {
    fn open_next(&mut self) -> std::io::Result<()> {
        if let Some((path, mut w, len)) = self.current.take() {
            w.flush()?;
            self.done.push((path, len));
        }
        let index = self.done.len() as u32 + 1;
        let path = part_path(&self.out, index, self.split.is_some());
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))
            })?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        w.write_all(&[0u8; PART_HEADER_LEN])?;
        self.current = Some((path, w, 0));
        Ok(())
    }

    fn room(&self) -> u64 {
        match (&self.current, self.split) {
            (None, _) => 0,
            (Some((_, _, len)), Some(s)) => (s - PART_HEADER_LEN as u64).saturating_sub(*len),
            (Some(_), None) => u64::MAX,
        }
    }

    /// Close the last part and write every header; returns the parts and the bytes written.
    fn finish(mut self) -> std::io::Result<(Vec<PathBuf>, u64)> {
        if self.current.is_none() {
            self.open_next()?;
        }
        if let Some((path, mut w, len)) = self.current.take() {
            w.flush()?;
            self.done.push((path, len));
        }
        let count = self.done.len() as u32;
        let mut total = 0;
        for (i, (path, len)) in self.done.iter().enumerate() {
            let header = PartHeader {
                bundle_id: self.id,
                index: i as u32 + 1,
                count,
                payload_len: *len,
                compression: self.compression,
            };
            let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&header.encode())?;
            f.sync_all()?;
            total += len + PART_HEADER_LEN as u64;
        }
        Ok((self.done.iter().map(|(p, _)| p.clone()).collect(), total))
    }

    fn paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.done.iter().map(|(p, _)| p.clone()).collect();
        if let Some((p, _, _)) = &self.current {
            v.push(p.clone());
        }
        v
    }
}

impl Write for PartWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.room() == 0 {
            self.open_next()?;
        }
        let n = (buf.len() as u64).min(self.room()) as usize;
        let (_, w, len) = self
            .current
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no part open"))?;
        w.write_all(&buf[..n])?;
        *len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.current {
            Some((_, w, _)) => w.flush(),
            None => Ok(()),
        }
    }
}

enum Encoder {
    Zstd(zstd::stream::write::Encoder<'static, PartWriter>),
    Gzip(flate2::write::GzEncoder<PartWriter>),
}

impl Encoder {
    fn finish(self) -> std::io::Result<PartWriter> {
        match self {
            Encoder::Zstd(e) => e.finish(),
            Encoder::Gzip(e) => e.finish(),
        }
    }
}

impl Encoder {
    fn paths(&self) -> Vec<PathBuf> {
        match self {
            Encoder::Zstd(e) => e.get_ref().paths(),
            Encoder::Gzip(e) => e.get_ref().paths(),
        }
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Gzip(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Zstd(e) => e.flush(),
            Encoder::Gzip(e) => e.flush(),
        }
    }
}

/// Turn the inputs into artifacts and the list of entries to write, without writing.
fn plan_inputs(
    inputs: &[RecipeInput],
    progress: &dyn Progress,
) -> Result<(Vec<Artifact>, Vec<Entry>)> {
    let mut artifacts = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    let push = |entries: &mut Vec<Entry>, hex: &str, size: u64, src: PathBuf| {
        let name = blob_entry(hex);
        if !entries.iter().any(|(n, ..)| *n == name) {
            entries.push((name, size, hex.to_string(), Source::File(src)));
        }
    };
    for input in inputs {
        match input {
            RecipeInput::Layout {
                dir,
                kind,
                name,
                version,
                reference,
            } => {
                let l = read_layout(dir, reference.as_deref())?;
                push(
                    &mut entries,
                    &l.sha256,
                    l.size,
                    layout::blob_path(dir, &l.sha256),
                );
                for b in &l.blobs {
                    push(
                        &mut entries,
                        &b.sha256,
                        b.size,
                        layout::blob_path(dir, &b.sha256),
                    );
                }
                artifacts.push(Artifact {
                    kind: *kind,
                    name: name.clone(),
                    version: version.clone(),
                    media_type: l.media_type,
                    size: l.size,
                    sha256: l.sha256,
                    blobs: l.blobs,
                    file_name: None,
                });
            }
            RecipeInput::File {
                path,
                kind,
                name,
                version,
                media_type,
            } => {
                progress.message(&format!("hashing {}", path.display()));
                let (digest, size) = hash_file(path).map_err(|e| Error::Artifact {
                    name: format!("{} {name}", kind.name()),
                    reason: e.to_string(),
                })?;
                push(&mut entries, digest.hex(), size, path.clone());
                artifacts.push(Artifact {
                    kind: *kind,
                    name: name.clone(),
                    version: version.clone(),
                    media_type: media_type.clone(),
                    size,
                    sha256: digest.hex().to_string(),
                    blobs: Vec::new(),
                    file_name: path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .map(str::to_string),
                });
            }
        }
    }
    Ok((artifacts, entries))
}

/// The `index.json` of the bundle's OCI image layout: one entry per OCI artifact, named
/// `packs/<name>:<version>` or `images/<name>:<version>` for `skopeo copy oci:<dir>:<ref>`.
fn layout_index(artifacts: &[Artifact]) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = artifacts
        .iter()
        .filter(|a| a.kind.is_oci())
        .map(|a| {
            let prefix = if a.kind == ArtifactKind::Pack {
                "packs"
            } else {
                "images"
            };
            json!({
                "mediaType": a.media_type,
                "digest": format!("sha256:{}", a.sha256),
                "size": a.size,
                "annotations": {
                    REF_NAME: format!("{prefix}/{}:{}", a.name, a.version),
                    "io.palisade.bundle.kind": a.kind.name(),
                }
            })
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": crate::registry::manifests::OCI_INDEX,
        "manifests": manifests,
    });
    serde_json::to_vec_pretty(&index).unwrap_or_default()
}

fn tar_header(size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// Build a bundle from `inputs`, signed with `keys`, at `out` (or `out.partNNN`).
pub fn build(
    meta: &BundleMeta,
    inputs: &[RecipeInput],
    signing: &[&SigningKey],
    out: &Path,
    opts: BuildOptions,
    progress: &dyn Progress,
) -> Result<Built> {
    if let Some(s) = opts.split_size {
        if s < MIN_SPLIT {
            return Err(Error::Artifact {
                name: "--split-size".into(),
                reason: format!("{s} bytes is too small: give at least 1M"),
            });
        }
    }
    let first = part_path(out, 1, opts.split_size.is_some());
    if first.exists() {
        return Err(Error::Io {
            op: "create",
            path: first,
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "it exists already: remove it or give another -o",
            ),
        });
    }
    let (artifacts, blob_entries) = plan_inputs(inputs, progress)?;
    let now = time::OffsetDateTime::now_utc();
    let created = now
        .replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let oci_layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();
    let index = layout_index(&artifacts);
    let layout_file = |path: &str, b: &[u8]| LayoutFile {
        path: path.to_string(),
        size: b.len() as u64,
        sha256: crate::registry::names::Digest::of(b).hex().to_string(),
    };
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        bundle_id: uuid::Uuid::new_v4(),
        name: meta.name.clone(),
        version: meta.version.clone(),
        created,
        min_appliance_version: meta.min_appliance_version.clone(),
        description: meta.description.clone(),
        artifacts,
        layout: vec![
            layout_file(OCI_LAYOUT_ENTRY, &oci_layout),
            layout_file(INDEX_ENTRY, &index),
        ],
        trust: meta.trust.clone(),
    };
    // What the builder writes must pass the reader's checks.
    let plan = manifest.plan()?;
    let manifest_bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| Error::ManifestInvalid {
            reason: e.to_string(),
        })?;
    let sigs = serde_json::to_vec_pretty(&keys::sign(&manifest_bytes, signing)).map_err(|e| {
        Error::ManifestInvalid {
            reason: e.to_string(),
        }
    })?;
    let mut entries: Vec<Entry> = vec![
        (
            MANIFEST_ENTRY.into(),
            manifest_bytes.len() as u64,
            String::new(),
            Source::Bytes(manifest_bytes),
        ),
        (
            SIGNATURES_ENTRY.into(),
            sigs.len() as u64,
            String::new(),
            Source::Bytes(sigs),
        ),
        (
            OCI_LAYOUT_ENTRY.into(),
            oci_layout.len() as u64,
            String::new(),
            Source::Bytes(oci_layout),
        ),
        (
            INDEX_ENTRY.into(),
            index.len() as u64,
            String::new(),
            Source::Bytes(index),
        ),
    ];
    entries.extend(blob_entries);

    let writer = PartWriter {
        out: out.to_path_buf(),
        split: opts.split_size,
        id: manifest.bundle_id,
        compression: opts.compression,
        done: Vec::new(),
        current: None,
    };
    let mtime = now.unix_timestamp().max(0) as u64;
    let result = write_entries(
        writer,
        opts.compression,
        &entries,
        mtime,
        plan.total,
        progress,
    );
    match result {
        Ok((parts, bytes)) => Ok(Built {
            parts,
            manifest,
            bytes,
        }),
        Err((e, written)) => {
            for p in written {
                let _ = std::fs::remove_file(p);
            }
            Err(e)
        }
    }
}

type WriteFailure = (Error, Vec<PathBuf>);

fn write_entries(
    writer: PartWriter,
    compression: Compression,
    entries: &[Entry],
    mtime: u64,
    total: u64,
    progress: &dyn Progress,
) -> std::result::Result<(Vec<PathBuf>, u64), WriteFailure> {
    let out_hint = writer.out.clone();
    let enc = match compression {
        Compression::Zstd => zstd::stream::write::Encoder::new(writer, 3)
            .and_then(|mut e| e.include_checksum(true).map(|_| e))
            .map(Encoder::Zstd),
        Compression::Gzip => Ok(Encoder::Gzip(flate2::write::GzEncoder::new(
            writer,
            flate2::Compression::default(),
        ))),
    }
    .map_err(|e| (io("start compressing", &out_hint)(e), Vec::new()))?;
    let mut tar = tar::Builder::new(enc);
    progress.start("writing", total);
    for (name, size, hex, src) in entries {
        let mut header = tar_header(*size, mtime);
        let outcome = match src {
            Source::Bytes(b) => tar
                .append_data(&mut header, name, b.as_slice())
                .map_err(|e| io("write bundle", &out_hint)(e)),
            Source::File(path) => {
                append_file(&mut tar, &mut header, name, *size, hex, path, progress)
            }
        };
        if let Err(e) = outcome {
            let written = tar.get_ref().paths();
            return Err((e, written));
        }
    }
    let enc = match tar.into_inner() {
        Ok(e) => e,
        Err(e) => return Err((io("write bundle", &out_hint)(e), Vec::new())),
    };
    // Parts already written are known only to the writer; on failure here, remove by name.
    let cleanup = |out: &Path| -> Vec<PathBuf> {
        (1..10_000)
            .map(|i| part_path(out, i, true))
            .take_while(|p| p.exists())
            .chain(std::iter::once(out.to_path_buf()))
            .collect()
    };
    let writer = enc
        .finish()
        .map_err(|e| (io("finish compressing", &out_hint)(e), cleanup(&out_hint)))?;
    let parts = writer.paths();
    let done = writer
        .finish()
        .map_err(|e| (io("write part headers of", &out_hint)(e), parts))?;
    progress.done();
    Ok(done)
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    header: &mut tar::Header,
    name: &str,
    size: u64,
    hex: &str,
    path: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    let f = File::open(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = HashingReader::new(ProgressReader {
        inner: f.take(size),
        progress,
    });
    tar.append_data(header, name, &mut reader)
        .map_err(io("write bundle entry from", path))?;
    let (digest, n) = reader.finish();
    if n != size {
        return Err(Error::SizeMismatch {
            name: path.display().to_string(),
            expected: size,
            actual: n,
        });
    }
    if digest.hex() != hex {
        return Err(Error::DigestMismatch {
            name: path.display().to_string(),
            expected: format!("sha256:{hex}"),
            actual: digest.to_string(),
        });
    }
    Ok(())
}

/// Reports bytes read to the progress display.
pub(crate) struct ProgressReader<'a, R> {
    pub inner: R,
    pub progress: &'a dyn Progress,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}
