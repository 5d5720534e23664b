//! A pack as an OCI artifact: the deterministic tar+gzip of its files, the metadata config
//! blob, the manifest, and an OCI image layout holding them; and the way back (from a layout
//! or from a registry), verifying every digest.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::error::{Error, Result};
use super::meta::PackMeta;
use super::{from_files, Pack, MAX_FILES, MAX_FILE_BYTES, MAX_PACK_BYTES};

/// `artifactType` of a pack's manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.palisade.pack.v1";
/// Media type of the config blob: the pack's metadata as JSON.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.palisade.pack.config.v1+json";
/// Media type of the one layer: the pack directory as a deterministic tar+gzip.
pub const CONTENT_MEDIA_TYPE: &str = "application/vnd.palisade.pack.content.v1.tar+gzip";
/// Annotation carrying the layer type on the manifest.
pub const LAYER_TYPE_ANNOTATION: &str = "io.palisade.pack.layer";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Largest manifest or config read back.
const MAX_JSON_BYTES: u64 = 4 * 1024 * 1024;
/// Largest compressed content read back.
const MAX_CONTENT_BYTES: u64 = MAX_PACK_BYTES;

/// What [`package_to_layout`] wrote: enough for a bundle's metadata and for a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedArtifact {
    pub name: String,
    pub version: String,
    pub layer_type: crate::model::LayerType,
    /// `sha256:<hex>` of the manifest: the artifact's identity.
    pub manifest_digest: String,
    /// Media type of the manifest (`application/vnd.oci.image.manifest.v1+json`).
    pub media_type: String,
    /// Size of the manifest in bytes.
    pub size: u64,
}

/// `sha256:<hex>` of `bytes`.
fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The pack's files as a tar+gzip whose bytes depend only on the files: entries sorted by path,
/// regular files only, mode 0644, uid/gid 0, no user or group names, mtime 0, and a gzip
/// header without name or time. Same files and same Palisade release, same digest.
fn deterministic_tar_gz(files: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>> {
    let io = |e| Error::io("build the pack archive", "<memory>", e);
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for (path, bytes) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        tar.append_data(&mut h, path, bytes.as_slice())
            .map_err(io)?;
    }
    let gz = tar.into_inner().map_err(io)?;
    gz.finish().map_err(io)
}

/// Unpack a pack archive into memory: regular files only, relative names without `..`, no
/// duplicates, within the size and count limits (so a hostile archive cannot exhaust memory).
fn unpack_tar_gz(bytes: &[u8], what: &str) -> Result<BTreeMap<String, Vec<u8>>> {
    let bad = |reason: String| Error::artifact(what, reason);
    let gz = flate2::read::GzDecoder::new(bytes);
    // The cap bounds decompression: one byte past the limit is enough to refuse.
    let mut tar = tar::Archive::new(gz.take(MAX_PACK_BYTES + 1024 * 1024));
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    let entries = tar
        .entries()
        .map_err(|e| bad(format!("is not a tar+gzip archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("archive is corrupt or truncated: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("an entry has an unreadable name: {e}")))?
            .to_string_lossy()
            .into_owned();
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            tar::EntryType::Directory => continue,
            other => {
                return Err(bad(format!(
                    "entry {path} is a {other:?}, not a regular file: packs hold regular files only"
                )))
            }
        }
        let clean = path.trim_start_matches("./");
        if clean.is_empty()
            || clean.starts_with('/')
            || clean
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad(format!("entry {path:?} is not a plain relative path")));
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        if size > MAX_FILE_BYTES {
            return Err(bad(format!(
                "entry {clean} is larger than {MAX_FILE_BYTES} bytes"
            )));
        }
        total += size;
        if total > MAX_PACK_BYTES || files.len() >= MAX_FILES {
            return Err(bad(format!(
                "unpacks to more than {MAX_PACK_BYTES} bytes or {MAX_FILES} files"
            )));
        }
        let mut content = Vec::with_capacity(size as usize);
        entry
            .read_to_end(&mut content)
            .map_err(|e| bad(format!("entry {clean} cannot be read: {e}")))?;
        if content.len() as u64 != size {
            return Err(bad(format!("entry {clean} is truncated")));
        }
        if files.insert(clean.to_string(), content).is_some() {
            return Err(bad(format!("entry {clean} appears twice")));
        }
    }
    Ok(files)
}

/// The three blobs of a pack's artifact.
struct ArtifactBlobs {
    config: Vec<u8>,
    content: Vec<u8>,
    manifest: Vec<u8>,
}

fn build_artifact(pack: &Pack) -> Result<ArtifactBlobs> {
    let config = serde_json::to_vec(&pack.meta)
        .map_err(|e| Error::artifact("pack metadata", format!("cannot be serialized: {e}")))?;
    let content = deterministic_tar_gz(&pack.files)?;
    let m = &pack.meta;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": digest_of(&config), "size": config.len()},
        "layers": [{
            "mediaType": CONTENT_MEDIA_TYPE,
            "digest": digest_of(&content),
            "size": content.len(),
            "annotations": {"org.opencontainers.image.title": format!("{}-{}.tar.gz", m.name, m.tag())}
        }],
        "annotations": {
            "org.opencontainers.image.title": m.name,
            "org.opencontainers.image.version": m.version,
            "org.opencontainers.image.description": m.description,
            LAYER_TYPE_ANNOTATION: m.layer.as_str(),
        }
    });
    let manifest = serde_json::to_vec(&manifest)
        .map_err(|e| Error::artifact("pack manifest", format!("cannot be serialized: {e}")))?;
    Ok(ArtifactBlobs {
        config,
        content,
        manifest,
    })
}

/// Load the pack in `pack_dir`, validate it, and write it into `layout_dir` (absent or empty)
/// as an OCI image layout holding one artifact: `oci-layout`, `index.json` (one manifest,
/// `org.opencontainers.image.ref.name` = the version's tag, see [`PackMeta::tag`]) and
/// `blobs/sha256/` (manifest, config, content). Packaging the same files twice gives the same
/// manifest digest.
pub fn package_to_layout(pack_dir: &Path, layout_dir: &Path) -> Result<PackedArtifact> {
    let pack = super::load(pack_dir)?;
    let blobs = build_artifact(&pack)?;
    match std::fs::read_dir(layout_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::Unexpected {
                    file: layout_dir.display().to_string(),
                    reason: "is not empty: give a new or empty directory for the layout".into(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("open the layout directory", layout_dir, e)),
    }
    let blob_dir = layout_dir.join("blobs/sha256");
    std::fs::create_dir_all(&blob_dir)
        .map_err(|e| Error::io("create the layout directory", &blob_dir, e))?;
    let manifest_digest = digest_of(&blobs.manifest);
    for b in [&blobs.config, &blobs.content, &blobs.manifest] {
        let d = digest_of(b);
        let path = blob_dir.join(&d["sha256:".len()..]);
        write_file(&path, b)?;
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "digest": manifest_digest,
            "size": blobs.manifest.len(),
            "annotations": {REF_NAME: pack.meta.tag()}
        }]
    });
    // index.json last: a layout whose index exists is complete.
    write_file(
        &layout_dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    write_file(&layout_dir.join("index.json"), index.to_string().as_bytes())?;
    Ok(PackedArtifact {
        name: pack.meta.name.clone(),
        version: pack.meta.version.clone(),
        layer_type: pack.meta.layer,
        manifest_digest,
        media_type: OCI_MANIFEST.into(),
        size: blobs.manifest.len() as u64,
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::io("create", path, e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io("write", path, e))?;
    f.sync_all().map_err(|e| Error::io("sync", path, e))
}

/// Rebuild a pack from its artifact's manifest, config and content, checking that they are a
/// Palisade pack, that the blobs match the manifest's digests and sizes, and that the config
/// agrees with the `pack.toml` inside the content. `what` names the source in messages.
pub fn from_artifact_parts(
    what: &str,
    manifest: &[u8],
    config: &[u8],
    content: &[u8],
) -> Result<Pack> {
    let (config_desc, content_desc) = pack_descriptors(what, manifest)?;
    for (label, desc, bytes) in [
        ("config", &config_desc, config),
        ("content", &content_desc, content),
    ] {
        let actual = digest_of(bytes);
        if actual != desc.0 || bytes.len() as u64 != desc.1 {
            return Err(Error::artifact(
                what,
                format!(
                    "the {label} blob is {actual} ({} bytes), the manifest says {} ({} bytes): the artifact is corrupt, push it again",
                    bytes.len(),
                    desc.0,
                    desc.1
                ),
            ));
        }
    }
    let meta: PackMeta = serde_json::from_slice(config).map_err(|e| {
        Error::artifact(
            what,
            format!("its config is not Palisade pack metadata: {e}"),
        )
    })?;
    meta.validate("the pack config")?;
    let files = unpack_tar_gz(content, what)?;
    let pack = from_files(files)?;
    if pack.meta != meta {
        return Err(Error::artifact(
            what,
            "its config disagrees with the pack.toml inside it: package the pack again with palisade",
        ));
    }
    Ok(pack)
}

/// (digest, size) of a descriptor.
type Desc = (String, u64);

/// Check a manifest is a pack's and return its config and content descriptors.
/// What the catalogue (`/v1/packs`) records of a pack, read from its OCI manifest's annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueEntry {
    pub name: String,
    pub version: String,
    pub layer: crate::model::LayerType,
    pub description: String,
}

/// The catalogue entry of a pack manifest, or why the manifest is not a Palisade pack.
pub fn catalogue_entry(manifest: &[u8]) -> std::result::Result<CatalogueEntry, String> {
    let m: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| format!("its manifest is not JSON ({e})"))?;
    if m["artifactType"] != ARTIFACT_TYPE {
        return Err(format!(
            "its manifest's artifactType is {}, not {ARTIFACT_TYPE}",
            m["artifactType"]
        ));
    }
    let a = &m["annotations"];
    let text = |key: &str| {
        a[key]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("its manifest lacks the annotation {key}"))
    };
    let name = text("org.opencontainers.image.title")?;
    let version = text("org.opencontainers.image.version")?;
    semver::Version::parse(&version)
        .map_err(|e| format!("its version {version:?} is not semantic ({e})"))?;
    let layer = text(LAYER_TYPE_ANNOTATION)?;
    let layer = crate::model::LayerType::parse(&layer)
        .ok_or_else(|| format!("its layer type {layer:?} is unknown"))?;
    let description = a["org.opencontainers.image.description"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .take(1000)
        .collect();
    Ok(CatalogueEntry {
        name,
        version,
        layer,
        description,
    })
}

fn pack_descriptors(what: &str, manifest: &[u8]) -> Result<(Desc, Desc)> {
    let bad = |reason: &str| Error::artifact(what, reason.to_string());
    let m: Value = serde_json::from_slice(manifest)
        .map_err(|e| Error::artifact(what, format!("its manifest is not JSON: {e}")))?;
    if m["artifactType"] != ARTIFACT_TYPE && m["config"]["mediaType"] != CONFIG_MEDIA_TYPE {
        return Err(Error::artifact(
            what,
            format!(
                "is not a Palisade pack (artifactType {}, expected {ARTIFACT_TYPE}): name a pack's repository and version",
                m["artifactType"]
            ),
        ));
    }
    let desc = |v: &Value, media: &str| -> Result<Desc> {
        if v["mediaType"] != media {
            return Err(bad(&format!(
                "a descriptor has media type {}, expected {media}",
                v["mediaType"]
            )));
        }
        let d = v["digest"].as_str().unwrap_or_default();
        if !super::meta::is_sha256_digest(d) {
            return Err(bad("a descriptor has no sha256 digest"));
        }
        let size = v["size"]
            .as_u64()
            .ok_or_else(|| bad("a descriptor has no size"))?;
        Ok((d.to_string(), size))
    };
    let config = desc(&m["config"], CONFIG_MEDIA_TYPE)?;
    let layers = m["layers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let [layer] = layers else {
        return Err(bad("a pack manifest has exactly one layer"));
    };
    let content = desc(layer, CONTENT_MEDIA_TYPE)?;
    if config.1 > MAX_JSON_BYTES || content.1 > MAX_CONTENT_BYTES {
        return Err(bad("its blobs are larger than a pack may be"));
    }
    Ok((config, content))
}

/// Read a pack from an OCI image layout: the manifest whose `ref.name` is `reference` (the
/// version's tag), or the only one when `reference` is `None`. Returns the pack and the
/// manifest's digest.
pub fn read_from_layout(layout_dir: &Path, reference: Option<&str>) -> Result<(Pack, String)> {
    let what = format!("OCI layout {}", layout_dir.display());
    let index_path = layout_dir.join("index.json");
    let index = read_capped(&index_path, MAX_JSON_BYTES)?;
    let index: Value = serde_json::from_slice(&index)
        .map_err(|e| Error::artifact(&what, format!("index.json is not JSON: {e}")))?;
    let manifests = index["manifests"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let chosen: Vec<&Value> = manifests
        .iter()
        .filter(|m| reference.is_none_or(|r| m["annotations"][REF_NAME] == r))
        .collect();
    let entry = match (chosen.as_slice(), reference) {
        ([one], _) => *one,
        ([], Some(r)) => {
            return Err(Error::artifact(
                &what,
                format!("has no manifest named {r}: give one of the ref.name values in index.json"),
            ))
        }
        _ => {
            return Err(Error::artifact(
                &what,
                "holds several manifests (or none): name the one to read",
            ))
        }
    };
    let digest = entry["digest"].as_str().unwrap_or_default().to_string();
    let blob = |d: &str, cap: u64| -> Result<Vec<u8>> {
        if !super::meta::is_sha256_digest(d) {
            return Err(Error::artifact(
                &what,
                format!("{d:?} is not a sha256 digest"),
            ));
        }
        read_capped(
            &layout_dir.join("blobs/sha256").join(&d["sha256:".len()..]),
            cap,
        )
    };
    let manifest = blob(&digest, MAX_JSON_BYTES)?;
    if digest_of(&manifest) != digest {
        return Err(Error::artifact(
            &what,
            format!("the manifest blob does not hash to {digest}: the layout is corrupt"),
        ));
    }
    let (config_desc, content_desc) = pack_descriptors(&what, &manifest)?;
    let config = blob(&config_desc.0, MAX_JSON_BYTES)?;
    let content = blob(&content_desc.0, MAX_CONTENT_BYTES)?;
    let pack = from_artifact_parts(&what, &manifest, &config, &content)?;
    Ok((pack, digest))
}

fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut out = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::io("read", path, e))?;
    if out.len() as u64 > cap {
        return Err(Error::TooLarge {
            what: path.display().to_string(),
            limit: cap,
            fix: "this is not a pack's blob: check the layout".into(),
        });
    }
    Ok(out)
}

/// Fetch the pack `reference` (`host:port/repository:tag` or `@sha256:...`, e.g.
/// `appliance:8443/shared/packs/cni-calico:3.28.0`) from a registry with `client`, verify it,
/// and return it with its manifest digest. This is how the agent reads a profile layer's pack.
pub async fn read_from_registry(
    client: &crate::oci_pull::Client,
    reference: &str,
) -> Result<(Pack, String)> {
    let fetch = |e: crate::oci_pull::Error| Error::Fetch {
        reference: reference.into(),
        source: Box::new(e),
    };
    let r = crate::oci_pull::Reference::parse(reference).map_err(fetch)?;
    let m = client.fetch_manifest(&r).await.map_err(fetch)?;
    let (config_desc, content_desc) = pack_descriptors(reference, &m.bytes)?;
    let config = client
        .fetch_blob_bytes(&r, &config_desc.0, config_desc.1)
        .await
        .map_err(fetch)?;
    let content = client
        .fetch_blob_bytes(&r, &content_desc.0, content_desc.1)
        .await
        .map_err(fetch)?;
    let pack = from_artifact_parts(reference, &m.bytes, &config, &content)?;
    Ok((pack, m.digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_deterministic_and_round_trips() {
        let mut files = BTreeMap::new();
        files.insert("b/x.yaml".to_string(), b"b".to_vec());
        files.insert("a.toml".to_string(), b"a".to_vec());
        let one = deterministic_tar_gz(&files).expect("tar");
        let two = deterministic_tar_gz(&files).expect("tar");
        assert_eq!(one, two);
        assert_eq!(unpack_tar_gz(&one, "t").expect("unpack"), files);
    }

    #[test]
    fn unpack_refuses_escaping_names_and_links() {
        let build = |name: &str, kind: tar::EntryType| {
            let mut tar = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(0);
            h.set_mode(0o644);
            // set_path refuses "..", so write the raw name the way a hostile producer would.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            if kind == tar::EntryType::Symlink {
                h.set_link_name("/etc/passwd").expect("link");
            }
            h.set_cksum();
            tar.append(&h, std::io::empty()).expect("append");
            let tar = tar.into_inner().expect("tar");
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).expect("gz");
            gz.finish().expect("gz")
        };
        for (name, kind) in [
            ("../evil", tar::EntryType::Regular),
            ("/abs", tar::EntryType::Regular),
            ("link", tar::EntryType::Symlink),
        ] {
            let e = unpack_tar_gz(&build(name, kind), "hostile").expect_err(name);
            assert!(e.to_string().starts_with("hostile:"), "{e}");
        }
        let e = unpack_tar_gz(b"not gzip at all", "junk").expect_err("junk");
        assert!(e.to_string().starts_with("junk:"), "{e}");
    }
}
