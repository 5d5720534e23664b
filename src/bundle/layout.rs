//! Reading an OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/...`): the
//! form in which packs and container images enter `bundle build`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::{Error, Result};
use super::format::{is_sha256_hex, BlobRef};
use crate::registry::manifests::{self, MAX_MANIFEST_BYTES};

/// The annotation naming a manifest of an index (`skopeo copy ... oci:dir:<name>`).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One manifest of a layout and every blob it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutArtifact {
    pub media_type: String,
    pub size: u64,
    pub sha256: String,
    /// Config, layers and child manifests, each once, in the order found.
    pub blobs: Vec<BlobRef>,
}

fn bad(dir: &Path, reason: impl Into<String>) -> Error {
    Error::Layout {
        path: dir.to_path_buf(),
        reason: reason.into(),
    }
}

/// Where blob `hex` of layout `dir` lives.
pub fn blob_path(dir: &Path, hex: &str) -> PathBuf {
    dir.join("blobs").join("sha256").join(hex)
}

fn descriptor(dir: &Path, v: &Value, at: &str) -> Result<BlobRef> {
    let media_type = v
        .get("mediaType")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(dir, format!("{at}: mediaType is missing")))?;
    let digest = v
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(dir, format!("{at}: digest is missing")))?;
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| is_sha256_hex(h))
        .ok_or_else(|| bad(dir, format!("{at}: {digest:?} is not a sha256 digest")))?;
    let size = v
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad(dir, format!("{at}: size is missing")))?;
    let path = blob_path(dir, hex);
    let meta = std::fs::metadata(&path)
        .map_err(|e| bad(dir, format!("{at}: blob {digest} is missing ({e})")))?;
    if meta.len() != size {
        return Err(bad(
            dir,
            format!(
                "{at}: blob {digest} has {} bytes, its descriptor says {size}",
                meta.len()
            ),
        ));
    }
    Ok(BlobRef {
        media_type: media_type.to_string(),
        size,
        sha256: hex.to_string(),
    })
}

fn push_unique(out: &mut Vec<BlobRef>, b: BlobRef) {
    if !out.iter().any(|x| x.sha256 == b.sha256) {
        out.push(b);
    }
}

/// Collect what manifest `m` (already read) needs, recursing into indexes.
fn collect(dir: &Path, m: &BlobRef, depth: u32, out: &mut Vec<BlobRef>) -> Result<()> {
    if depth > 4 {
        return Err(bad(dir, "indexes nest more than 4 levels deep"));
    }
    let path = blob_path(dir, &m.sha256);
    let bytes = std::fs::read(&path)
        .map_err(|e| bad(dir, format!("cannot read manifest {}: {e}", m.sha256)))?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(bad(
            dir,
            format!("manifest sha256:{} is larger than 4 MiB", m.sha256),
        ));
    }
    let parsed = manifests::parse(Some(&m.media_type), &bytes)
        .map_err(|e| bad(dir, format!("manifest sha256:{}: {e}", m.sha256)))?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| bad(dir, e.to_string()))?;
    if let Some(children) = doc.get("manifests").and_then(Value::as_array) {
        for (i, c) in children.iter().enumerate() {
            let child = descriptor(dir, c, &format!("manifests[{i}]"))?;
            collect(dir, &child, depth + 1, out)?;
            push_unique(out, child);
        }
    }
    if let Some(config) = doc.get("config") {
        push_unique(out, descriptor(dir, config, "config")?);
    }
    if let Some(layers) = doc.get("layers").and_then(Value::as_array) {
        for (i, l) in layers.iter().enumerate() {
            push_unique(out, descriptor(dir, l, &format!("layers[{i}]"))?);
        }
    }
    // The registry checks the same references at import; a layout missing one fails here.
    for d in parsed.blobs.iter().chain(parsed.manifests.iter()) {
        if !out.iter().any(|b| b.sha256 == d.hex()) {
            return Err(bad(dir, format!("{d} is referenced but not in the layout")));
        }
    }
    Ok(())
}

/// Read the layout at `dir` and return its manifest named `reference` (its
/// `org.opencontainers.image.ref.name`), or its only manifest when `reference` is `None`.
pub fn read_layout(dir: &Path, reference: Option<&str>) -> Result<LayoutArtifact> {
    let marker = std::fs::read(dir.join("oci-layout")).map_err(|e| {
        bad(
            dir,
            format!("no oci-layout file ({e}): this is not an OCI image layout"),
        )
    })?;
    let marker: Value =
        serde_json::from_slice(&marker).map_err(|e| bad(dir, format!("oci-layout: {e}")))?;
    if marker.get("imageLayoutVersion").and_then(Value::as_str) != Some("1.0.0") {
        return Err(bad(dir, "oci-layout must say imageLayoutVersion 1.0.0"));
    }
    let index =
        std::fs::read(dir.join("index.json")).map_err(|e| bad(dir, format!("index.json: {e}")))?;
    let index: Value =
        serde_json::from_slice(&index).map_err(|e| bad(dir, format!("index.json: {e}")))?;
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(dir, "index.json has no manifests array"))?;
    let chosen: Vec<&Value> = match reference {
        Some(r) => entries
            .iter()
            .filter(|e| {
                e.pointer(&format!("/annotations/{}", REF_NAME.replace('/', "~1")))
                    .and_then(Value::as_str)
                    == Some(r)
            })
            .collect(),
        None => entries.iter().collect(),
    };
    let top = match chosen.as_slice() {
        [one] => *one,
        [] => {
            return Err(bad(
                dir,
                match reference {
                    Some(r) => format!("index.json has no manifest named {r:?}"),
                    None => "index.json lists no manifest".to_string(),
                },
            ))
        }
        _ => {
            return Err(bad(
                dir,
                "index.json lists several manifests: name the one to bundle (reference = ...)",
            ))
        }
    };
    let top = descriptor(dir, top, "index.json")?;
    if !manifests::is_manifest_media_type(&top.media_type) {
        return Err(bad(
            dir,
            format!("{} is not a manifest media type", top.media_type),
        ));
    }
    let mut blobs = Vec::new();
    collect(dir, &top, 0, &mut blobs)?;
    blobs.retain(|b| b.sha256 != top.sha256);
    Ok(LayoutArtifact {
        media_type: top.media_type,
        size: top.size,
        sha256: top.sha256,
        blobs,
    })
}
