//! The bundle format, version 1 (specified in `docs/bundle-format.md`): the part header, the
//! signed metadata (`bundle.json`) and its validation, the archive's entry names, and the
//! limits that bound everything an attacker controls.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use crate::registry::names::{RepoName, Tag};

/// The only format version this executable writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the header at the start of every part.
pub const PART_HEADER_LEN: usize = 64;
/// The header is laid out as a zstd skippable frame (magic `0x184D2A50`, little-endian, then
/// the frame's length), so `zstd -dc` reads an unsplit zstd bundle straight through it.
pub const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2A, 0x4D, 0x18];
/// Identifies a palisade bundle part, after the skippable-frame prefix.
pub const PART_MAGIC: [u8; 8] = *b"PLSDPART";
/// Version of the part header layout.
pub const PART_HEADER_VERSION: u16 = 1;

/// First entry of the archive: the signed metadata.
pub const MANIFEST_ENTRY: &str = "bundle.json";
/// Second entry: the signatures over the exact bytes of `bundle.json`.
pub const SIGNATURES_ENTRY: &str = "bundle.sig";
/// OCI image layout marker file.
pub const OCI_LAYOUT_ENTRY: &str = "oci-layout";
/// OCI image layout index.
pub const INDEX_ENTRY: &str = "index.json";
/// Prefix of every content entry.
pub const BLOB_PREFIX: &str = "blobs/sha256/";

/// Largest `bundle.json` read.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// Largest `bundle.sig` read.
pub const MAX_SIGNATURES_BYTES: u64 = 64 * 1024;
/// Most artifacts one bundle may list.
pub const MAX_ARTIFACTS: usize = 10_000;
/// Largest ratio of the declared content to the compressed bytes that carry it. zstd and gzip
/// reach at most a few hundred to one on real images and binaries; a bomb needs far more.
pub const MAX_RATIO: u64 = 1000;
/// What the archive may hold besides declared content: a 512-byte header per entry (plus a
/// possible extended header), padding of each entry to 512 bytes, and the end blocks.
pub const PER_ENTRY_OVERHEAD: u64 = 3 * 512 + 511;
/// Zero bytes accepted after the end of the archive (tar pads to records of 10240 bytes).
pub const MAX_TRAILING_ZEROS: u64 = 1024 * 1024;
/// Bytes the archive may hold before `bundle.json` and `bundle.sig` were read.
pub const HEAD_LIMIT: u64 = MAX_MANIFEST_BYTES + MAX_SIGNATURES_BYTES + 8 * 1024;

/// Compression of the archive stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd,
    Gzip,
}

impl Compression {
    fn code(self) -> u8 {
        match self {
            Compression::Zstd => 1,
            Compression::Gzip => 2,
        }
    }

    fn from_code(c: u8) -> Option<Compression> {
        match c {
            1 => Some(Compression::Zstd),
            2 => Some(Compression::Gzip),
            _ => None,
        }
    }

    /// Its name on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "zstd" => Ok(Compression::Zstd),
            "gzip" => Ok(Compression::Gzip),
            other => Err(format!("unknown compression {other:?}: use zstd or gzip")),
        }
    }
}

/// The fixed header of one part of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartHeader {
    /// The bundle's id (also in `bundle.json`, so parts are bound to the signed metadata).
    pub bundle_id: uuid::Uuid,
    /// 1-based position of this part.
    pub index: u32,
    /// Number of parts of the bundle.
    pub count: u32,
    /// Bytes of the compressed stream this part carries after its header.
    pub payload_len: u64,
    pub compression: Compression,
}

impl PartHeader {
    /// The 64 header bytes.
    pub fn encode(&self) -> [u8; PART_HEADER_LEN] {
        let mut h = [0u8; PART_HEADER_LEN];
        h[0..4].copy_from_slice(&SKIPPABLE_MAGIC);
        h[4..8].copy_from_slice(&((PART_HEADER_LEN - 8) as u32).to_le_bytes());
        h[8..16].copy_from_slice(&PART_MAGIC);
        h[16..18].copy_from_slice(&PART_HEADER_VERSION.to_be_bytes());
        h[18] = self.compression.code();
        h[20..36].copy_from_slice(self.bundle_id.as_bytes());
        h[36..40].copy_from_slice(&self.index.to_be_bytes());
        h[40..44].copy_from_slice(&self.count.to_be_bytes());
        h[44..52].copy_from_slice(&self.payload_len.to_be_bytes());
        h
    }

    /// Parse a header, saying what is wrong with it.
    pub fn decode(h: &[u8; PART_HEADER_LEN]) -> std::result::Result<PartHeader, String> {
        if h[0..4] != SKIPPABLE_MAGIC || h[8..16] != PART_MAGIC {
            return Err("it does not start with the bundle part header (wrong file?)".into());
        }
        let version = u16::from_be_bytes([h[16], h[17]]);
        if version != PART_HEADER_VERSION {
            return Err(format!(
                "part header version {version} is not supported (this palisade reads {PART_HEADER_VERSION}): use a newer palisade"
            ));
        }
        let compression = Compression::from_code(h[18])
            .ok_or_else(|| format!("unknown compression code {} in the part header", h[18]))?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&h[20..36]);
        let be32 = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&h[r]);
            u32::from_be_bytes(b)
        };
        let mut len = [0u8; 8];
        len.copy_from_slice(&h[44..52]);
        let header = PartHeader {
            bundle_id: uuid::Uuid::from_bytes(id),
            index: be32(36..40),
            count: be32(40..44),
            payload_len: u64::from_be_bytes(len),
            compression,
        };
        if header.count == 0 || header.index == 0 || header.index > header.count {
            return Err(format!(
                "the header says part {} of {}, which cannot be",
                header.index, header.count
            ));
        }
        Ok(header)
    }
}

/// What an artifact is, and so where import puts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// A pack: an OCI artifact, imported to `shared/packs/<name>:<version>`.
    Pack,
    /// A container image, imported to `shared/images/<name>:<version>`.
    ContainerImage,
    /// A palisade executable (for upgrades), stored as a file.
    ApplianceBinary,
    /// An appliance disk image (ova, qcow2, iso), stored as a file.
    ApplianceImage,
    /// Any other file.
    File,
}

impl ArtifactKind {
    /// Its name in `bundle.json` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ArtifactKind::Pack => "pack",
            ArtifactKind::ContainerImage => "container-image",
            ArtifactKind::ApplianceBinary => "appliance-binary",
            ArtifactKind::ApplianceImage => "appliance-image",
            ArtifactKind::File => "file",
        }
    }

    /// Whether the artifact is an OCI manifest with blobs (else a single file).
    pub fn is_oci(self) -> bool {
        matches!(self, ArtifactKind::Pack | ArtifactKind::ContainerImage)
    }

    /// Parse the name used in recipes.
    pub fn parse(s: &str) -> Option<ArtifactKind> {
        [
            ArtifactKind::Pack,
            ArtifactKind::ContainerImage,
            ArtifactKind::ApplianceBinary,
            ArtifactKind::ApplianceImage,
            ArtifactKind::File,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

/// A blob an OCI artifact needs besides its top manifest: config, layers, child manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    pub media_type: String,
    pub size: u64,
    /// 64 lower-case hex digits.
    pub sha256: String,
}

/// One artifact of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub kind: ArtifactKind,
    pub name: String,
    pub version: String,
    /// For OCI kinds the media type of the top manifest; for files the content's type.
    pub media_type: String,
    /// Size of the top manifest (OCI kinds) or of the file.
    pub size: u64,
    /// sha256 of the top manifest (OCI kinds) or of the file.
    pub sha256: String,
    /// OCI kinds: every other blob the manifest needs (config, layers, child manifests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<BlobRef>,
    /// File kinds: the file's original name, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
}

impl Artifact {
    /// `kind name version`, for messages.
    pub fn label(&self) -> String {
        format!("{} {} {}", self.kind.name(), self.name, self.version)
    }

    /// The registry repository an OCI artifact is imported to.
    pub fn repository(&self) -> Option<String> {
        match self.kind {
            ArtifactKind::Pack => Some(format!("shared/packs/{}", self.name)),
            ArtifactKind::ContainerImage => Some(format!("shared/images/{}", self.name)),
            _ => None,
        }
    }
}

/// A file of the OCI image layout at the archive's root (`oci-layout`, `index.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// A public key a bundle asks the appliance to trust from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// sha256 of the raw 32-byte public key, in hex.
    pub key_id: String,
    /// The raw 32-byte ed25519 public key, base64 (standard alphabet, padded).
    pub public_key: String,
    #[serde(default)]
    pub comment: String,
}

/// A key rotation statement: applied on import only when a trusted key signed the bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustChanges {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_keys: Vec<KeySpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_keys: Vec<String>,
}

impl TrustChanges {
    /// Whether the statement changes nothing.
    pub fn is_empty(&self) -> bool {
        self.add_keys.is_empty() && self.remove_keys.is_empty()
    }
}

/// `bundle.json`: the signed metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub bundle_id: uuid::Uuid,
    pub name: String,
    pub version: String,
    /// RFC 3339, UTC. For people and audit only: nothing expires.
    pub created: String,
    pub min_appliance_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub artifacts: Vec<Artifact>,
    pub layout: Vec<LayoutFile>,
    #[serde(default, skip_serializing_if = "TrustChanges::is_empty")]
    pub trust: TrustChanges,
}

/// Where the content of one archive entry belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// `oci-layout`, `index.json`: verified, not stored.
    LayoutOnly,
    /// A blob of an OCI artifact: the registry's blob store.
    Registry,
    /// A file artifact: `<data-dir>/artifacts/`.
    Files,
}

/// An entry the signed metadata announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Entry name in the archive.
    pub name: String,
    pub size: u64,
    /// 64 lower-case hex digits.
    pub sha256: String,
    pub destination: Destination,
    /// The artifact that first needs it, for messages.
    pub needed_by: String,
}

/// The entries a valid manifest announces, by entry name, and their total size.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub entries: BTreeMap<String, Expected>,
    pub total: u64,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::ManifestInvalid {
        reason: reason.into(),
    }
}

/// Whether `s` is 64 lower-case hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `s` is a bundle or file artifact name: lower-case letters, digits, `.`, `_`, `-`,
/// starting with a letter or digit, at most 128 characters.
pub fn is_simple_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

/// Read the `format_version` of manifest bytes, before anything else is trusted about them.
pub fn format_version_of(bytes: &[u8]) -> Result<u64> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("it is not valid JSON: {e}")))?;
    v.get("format_version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| invalid("format_version is missing or not a number"))
}

/// Parse manifest bytes of format version [`FORMAT_VERSION`] (checked by the caller first).
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest> {
    serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))
}

/// Parse a version of the `MAJOR.MINOR.PATCH` grammar (semantic versioning).
pub fn parse_version(what: &str, s: &str) -> Result<semver::Version> {
    semver::Version::parse(s).map_err(|e| {
        invalid(format!(
            "{what} {s:?} is not a semantic version such as 1.2.3: {e}"
        ))
    })
}

impl Manifest {
    /// Check every field and work out which entries the archive must hold.
    pub fn plan(&self) -> Result<Plan> {
        if self.format_version != FORMAT_VERSION {
            return Err(Error::UnsupportedFormat {
                found: u64::from(self.format_version),
                supported: FORMAT_VERSION,
            });
        }
        if !is_simple_name(&self.name) {
            return Err(invalid(format!(
                "bundle name {:?} must be lower-case letters, digits, '.', '_' or '-'",
                self.name
            )));
        }
        parse_version("bundle version", &self.version)?;
        parse_version("min_appliance_version", &self.min_appliance_version)?;
        time::OffsetDateTime::parse(
            &self.created,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| {
            invalid(format!(
                "created {:?} is not an RFC 3339 time: {e}",
                self.created
            ))
        })?;
        if self.artifacts.len() > MAX_ARTIFACTS {
            return Err(invalid(format!(
                "{} artifacts is more than the limit of {MAX_ARTIFACTS}",
                self.artifacts.len()
            )));
        }
        for k in &self.trust.add_keys {
            super::keys::key_spec_to_verifying(k).map_err(invalid)?;
        }
        for id in &self.trust.remove_keys {
            if !is_sha256_hex(id) {
                return Err(invalid(format!(
                    "trust.remove_keys: {id:?} is not a key id"
                )));
            }
        }
        let mut plan = Plan::default();
        let add = |plan: &mut Plan,
                   name: String,
                   size: u64,
                   sha256: &str,
                   destination: Destination,
                   needed_by: &str|
         -> Result<()> {
            if !is_sha256_hex(sha256) {
                return Err(invalid(format!(
                    "{needed_by}: {sha256:?} is not a sha256 digest (64 lower-case hex digits)"
                )));
            }
            if let Some(e) = plan.entries.get(&name) {
                if e.size != size {
                    return Err(invalid(format!(
                        "{name} is declared with two sizes ({} and {size})",
                        e.size
                    )));
                }
                if e.destination != destination {
                    return Err(invalid(format!(
                        "{name} is declared both as a file artifact and as a blob of an OCI artifact: ship it once"
                    )));
                }
                return Ok(());
            }
            plan.total = plan
                .total
                .checked_add(size)
                .ok_or_else(|| invalid("the declared sizes overflow"))?;
            plan.entries.insert(
                name.clone(),
                Expected {
                    name,
                    size,
                    sha256: sha256.to_string(),
                    destination,
                    needed_by: needed_by.to_string(),
                },
            );
            Ok(())
        };
        let mut seen = std::collections::BTreeSet::new();
        for a in &self.artifacts {
            let label = a.label();
            if !seen.insert((a.kind, a.name.clone(), a.version.clone())) {
                return Err(invalid(format!("{label} is listed twice")));
            }
            if a.kind.is_oci() {
                let repo = a.repository().unwrap_or_default();
                RepoName::parse(&repo).map_err(|e| {
                    invalid(format!(
                        "{label}: {repo} is not a valid repository name: {e}"
                    ))
                })?;
                if Tag::parse(&a.version).is_none() {
                    return Err(invalid(format!(
                        "{label}: version {:?} is not a valid tag ([a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}})",
                        a.version
                    )));
                }
                if !crate::registry::manifests::is_manifest_media_type(&a.media_type) {
                    return Err(invalid(format!(
                        "{label}: media type {} is not an OCI or Docker manifest type",
                        a.media_type
                    )));
                }
                if a.size > crate::registry::manifests::MAX_MANIFEST_BYTES as u64 {
                    return Err(invalid(format!(
                        "{label}: its manifest is larger than 4 MiB"
                    )));
                }
                if a.file_name.is_some() {
                    return Err(invalid(format!(
                        "{label}: file_name is for file artifacts only"
                    )));
                }
                add(
                    &mut plan,
                    blob_entry(&a.sha256),
                    a.size,
                    &a.sha256,
                    Destination::Registry,
                    &label,
                )?;
                for b in &a.blobs {
                    add(
                        &mut plan,
                        blob_entry(&b.sha256),
                        b.size,
                        &b.sha256,
                        Destination::Registry,
                        &label,
                    )?;
                }
            } else {
                if !is_simple_name(&a.name) {
                    return Err(invalid(format!(
                        "{label}: name must be lower-case letters, digits, '.', '_' or '-'"
                    )));
                }
                if a.version.is_empty()
                    || a.version.len() > 128
                    || !a.version.bytes().all(|c| c.is_ascii_graphic())
                {
                    return Err(invalid(format!(
                        "{label}: version must be 1 to 128 printable characters without spaces"
                    )));
                }
                if !a.blobs.is_empty() {
                    return Err(invalid(format!("{label}: a file artifact has no blobs")));
                }
                add(
                    &mut plan,
                    blob_entry(&a.sha256),
                    a.size,
                    &a.sha256,
                    Destination::Files,
                    &label,
                )?;
            }
        }
        let mut layout_seen = Vec::new();
        for f in &self.layout {
            if f.path != OCI_LAYOUT_ENTRY && f.path != INDEX_ENTRY {
                return Err(invalid(format!(
                    "layout lists {:?}: only oci-layout and index.json belong there",
                    f.path
                )));
            }
            if layout_seen.contains(&f.path) {
                return Err(invalid(format!("layout lists {} twice", f.path)));
            }
            if f.size > MAX_MANIFEST_BYTES {
                return Err(Error::TooLarge {
                    what: "the declared index.json",
                    size: f.size,
                    limit: MAX_MANIFEST_BYTES,
                });
            }
            layout_seen.push(f.path.clone());
            add(
                &mut plan,
                f.path.clone(),
                f.size,
                &f.sha256,
                Destination::LayoutOnly,
                "the OCI image layout",
            )?;
        }
        for required in [OCI_LAYOUT_ENTRY, INDEX_ENTRY] {
            if !layout_seen.iter().any(|p| p == required) {
                return Err(invalid(format!("layout must list {required}")));
            }
        }
        Ok(plan)
    }

    /// Bytes the decompressed archive may hold at most, given its planned entries.
    pub fn archive_limit(plan: &Plan, head: u64) -> u64 {
        let entries = plan.entries.len() as u64 + 8;
        head.saturating_add(plan.total)
            .saturating_add(entries.saturating_mul(PER_ENTRY_OVERHEAD))
            .saturating_add(MAX_TRAILING_ZEROS)
    }
}

/// `blobs/sha256/<hex>`.
pub fn blob_entry(hex: &str) -> String {
    format!("{BLOB_PREFIX}{hex}")
}

/// Check an archive entry name is canonical and stays inside the bundle root; returns why not.
pub fn check_entry_name(name: &str) -> std::result::Result<(), String> {
    if name.starts_with('/') {
        return Err("it is an absolute path".into());
    }
    if name.split('/').any(|c| c == "..") {
        return Err("it climbs out of the bundle root with '..'".into());
    }
    if name.is_empty()
        || name.contains("//")
        || name.contains('\\')
        || name.split('/').any(|c| c == ".")
        || name.bytes().any(|b| b < 0x20 || b == 0x7f)
    {
        return Err("it is not a canonical relative path".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_headers_round_trip_and_bad_ones_are_named() {
        let h = PartHeader {
            bundle_id: uuid::Uuid::new_v4(),
            index: 2,
            count: 3,
            payload_len: 123_456,
            compression: Compression::Gzip,
        };
        assert_eq!(PartHeader::decode(&h.encode()), Ok(h));
        let mut bad = h.encode();
        bad[9] = b'X';
        assert!(PartHeader::decode(&bad).is_err());
        let zero = PartHeader { index: 4, ..h }.encode();
        assert!(PartHeader::decode(&zero)
            .err()
            .unwrap_or_default()
            .contains("part 4 of 3"));
    }

    #[test]
    fn entry_names_must_stay_inside_the_root() {
        assert!(check_entry_name("blobs/sha256/ab").is_ok());
        for bad in [
            "/etc/passwd",
            "../x",
            "blobs/../../x",
            "a//b",
            "./a",
            "a\\b",
            "",
        ] {
            assert!(check_entry_name(bad).is_err(), "{bad}");
        }
    }
}
