//! `pack.toml`: a pack's name, version, layer type, description, constraints and images; and
//! the same metadata as the JSON config blob of the pack's OCI artifact.

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use crate::model::{check_name, LayerType};

/// The file that describes a pack.
pub const PACK_TOML: &str = "pack.toml";
/// Longest description, in characters.
const MAX_DESCRIPTION: usize = 1000;
/// Most images one pack may list.
const MAX_IMAGES: usize = 256;
/// Most required packs.
const MAX_REQUIRES: usize = 64;

/// `pack.toml` as written by a pack author.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackToml {
    name: String,
    version: String,
    layer: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    constraints: ConstraintsToml,
    #[serde(default, rename = "image")]
    images: Vec<Image>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConstraintsToml {
    kubernetes: Option<String>,
    #[serde(default)]
    requires: Vec<RequirementToml>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequirementToml {
    pack: String,
    version: String,
}

/// A container image the pack needs, by reference, optionally pinned to a digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// `host[:port]/path[:tag]`, as the manifests name it.
    pub reference: String,
    /// `sha256:<64 hex>`: the manifest digest the image must resolve to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// Another pack this one needs in the same profile, with a semver range of its versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub pack: String,
    /// A semver requirement such as `">=1.2, <2"`.
    pub version: String,
}

/// What a pack is compatible with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// Semver range of compatible Kubernetes versions (`">=1.28, <1.31"`); absent = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<String>,
    /// Packs that must be in the same profile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<Requirement>,
}

/// What the pack carries besides its metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contents {
    /// Paths of the manifest files (`manifests/...`), sorted.
    pub manifests: Vec<String>,
    /// Whether the pack carries a Helm chart under `chart/`.
    pub chart: bool,
}

/// A pack's validated metadata: `pack.toml`, plus what the pack contains. Serialized as JSON
/// it is the config blob of the pack's OCI artifact (`application/vnd.palisade.pack.config.v1+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackMeta {
    /// Always [`CONFIG_SCHEMA_VERSION`]; a reader refuses other values.
    pub schema_version: u32,
    pub name: String,
    /// A semantic version (`3.28.0`, `1.29.4+rke2r1`).
    pub version: String,
    pub layer: LayerType,
    pub description: String,
    pub constraints: Constraints,
    pub images: Vec<Image>,
    pub contents: Contents,
}

/// Version of the JSON config blob's shape.
pub const CONFIG_SCHEMA_VERSION: u32 = 1;

impl PackMeta {
    /// Parse and validate `pack.toml` text; `contents` is what the loader found beside it.
    pub(crate) fn from_toml(text: &str, contents: Contents) -> Result<PackMeta> {
        let t: PackToml = toml::from_str(text).map_err(|e| Error::Syntax {
            file: PACK_TOML.into(),
            reason: format!("{}: fix the TOML (fields: name, version, layer, description, [constraints], [[image]])", e.to_string().trim_end()),
        })?;
        let layer = LayerType::parse(&t.layer).ok_or_else(|| {
            Error::field(
                PACK_TOML,
                "layer",
                format!(
                    "{:?} is not a layer type: use one of os, kubernetes, network, storage, addon",
                    t.layer
                ),
            )
        })?;
        let meta = PackMeta {
            schema_version: CONFIG_SCHEMA_VERSION,
            name: t.name,
            version: t.version,
            layer,
            description: t.description,
            constraints: Constraints {
                kubernetes: t.constraints.kubernetes,
                requires: t
                    .constraints
                    .requires
                    .into_iter()
                    .map(|r| Requirement {
                        pack: r.pack,
                        version: r.version,
                    })
                    .collect(),
            },
            images: t.images,
            contents,
        };
        meta.validate(PACK_TOML)?;
        Ok(meta)
    }

    /// Check every field; `file` names where the metadata came from in messages.
    pub(crate) fn validate(&self, file: &str) -> Result<()> {
        if self.schema_version != CONFIG_SCHEMA_VERSION {
            return Err(Error::field(
                file,
                "schema_version",
                format!(
                    "is {}, this Palisade reads {CONFIG_SCHEMA_VERSION}: use a Palisade release that knows this pack format",
                    self.schema_version
                ),
            ));
        }
        check_name("name", &self.name).map_err(|e| Error::field(file, "name", e.reason))?;
        self.semver()
            .map_err(|e| Error::field(file, "version", e))?;
        if self.description.chars().count() > MAX_DESCRIPTION
            || self
                .description
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(Error::field(
                file,
                "description",
                format!("must be plain text of at most {MAX_DESCRIPTION} characters"),
            ));
        }
        if let Some(k) = &self.constraints.kubernetes {
            semver::VersionReq::parse(k).map_err(|e| {
                Error::field(
                    file,
                    "constraints.kubernetes",
                    format!("{k:?} is not a semver range ({e}): write e.g. \">=1.28, <1.31\""),
                )
            })?;
        }
        if self.constraints.requires.len() > MAX_REQUIRES {
            return Err(Error::field(
                file,
                "constraints.requires",
                format!("lists more than {MAX_REQUIRES} packs"),
            ));
        }
        for (i, r) in self.constraints.requires.iter().enumerate() {
            let at = format!("constraints.requires[{i}]");
            check_name("pack", &r.pack)
                .map_err(|e| Error::field(file, &format!("{at}.pack"), e.reason))?;
            if r.pack == self.name {
                return Err(Error::field(
                    file,
                    &format!("{at}.pack"),
                    "a pack cannot require itself: remove this entry",
                ));
            }
            semver::VersionReq::parse(&r.version).map_err(|e| {
                Error::field(
                    file,
                    &format!("{at}.version"),
                    format!(
                        "{:?} is not a semver range ({e}): write e.g. \">=1.2, <2\"",
                        r.version
                    ),
                )
            })?;
        }
        if self.images.len() > MAX_IMAGES {
            return Err(Error::field(
                file,
                "image",
                format!("lists more than {MAX_IMAGES} images"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, image) in self.images.iter().enumerate() {
            let at = format!("image[{i}]");
            let parsed = crate::oci_pull::Reference::parse(&image.reference)
                .map_err(|e| Error::field(file, &format!("{at}.reference"), e.to_string()))?;
            if let Some(d) = &image.digest {
                if !is_sha256_digest(d) {
                    return Err(Error::field(
                        file,
                        &format!("{at}.digest"),
                        format!(
                            "{d:?} is not a digest: write sha256: and 64 lower-case hex digits"
                        ),
                    ));
                }
                if parsed.digest.as_deref().is_some_and(|rd| rd != d) {
                    return Err(Error::field(
                        file,
                        &format!("{at}.digest"),
                        "differs from the digest in the reference: keep one of them",
                    ));
                }
            }
            if !seen.insert(image.reference.as_str()) {
                return Err(Error::field(
                    file,
                    &format!("{at}.reference"),
                    format!("{} is listed twice: remove one", image.reference),
                ));
            }
        }
        Ok(())
    }

    /// The version as a semantic version.
    pub fn semver(&self) -> Result<semver::Version, String> {
        semver::Version::parse(&self.version).map_err(|e| {
            format!(
                "{:?} is not a semantic version ({e}): write MAJOR.MINOR.PATCH such as \"1.2.3\" (a leading v is not allowed)",
                self.version
            )
        })
    }

    /// The OCI tag of this version: the version itself, with `+` (build metadata, which tags
    /// cannot hold) written as `_`, as Helm does.
    pub fn tag(&self) -> String {
        version_tag(&self.version)
    }

    /// Check that this pack supports Kubernetes `version` (its `constraints.kubernetes`).
    pub fn check_kubernetes(&self, version: &semver::Version) -> Result<()> {
        let Some(range) = &self.constraints.kubernetes else {
            return Ok(());
        };
        let req = semver::VersionReq::parse(range).map_err(|e| Error::Constraint {
            pack: self.name.clone(),
            reason: format!("constraints.kubernetes {range:?} is not a semver range: {e}"),
        })?;
        // Kubernetes distributions add build metadata (1.29.4+rke2r1); ranges ignore it.
        if req.matches(version) {
            Ok(())
        } else {
            Err(Error::Constraint {
                pack: format!("{} {}", self.name, self.version),
                reason: format!(
                    "supports Kubernetes {range}, not {version}: choose a pack version made for {version} or another Kubernetes version"
                ),
            })
        }
    }

    /// Check that every required pack is among `present` (name and version pairs) in a version
    /// the requirement accepts.
    pub fn check_requirements(&self, present: &[(&str, &semver::Version)]) -> Result<()> {
        for r in &self.constraints.requires {
            let req = semver::VersionReq::parse(&r.version).map_err(|e| Error::Constraint {
                pack: self.name.clone(),
                reason: format!(
                    "requirement {} {:?} is not a semver range: {e}",
                    r.pack, r.version
                ),
            })?;
            let found: Vec<&semver::Version> = present
                .iter()
                .filter(|(n, _)| *n == r.pack)
                .map(|(_, v)| *v)
                .collect();
            if !found.iter().any(|v| req.matches(v)) {
                let had = if found.is_empty() {
                    "it is not in the profile".to_string()
                } else {
                    format!(
                        "the profile has {}",
                        found
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                return Err(Error::Constraint {
                    pack: format!("{} {}", self.name, self.version),
                    reason: format!(
                        "requires pack {} {}, but {had}: add a matching version of {} to the profile",
                        r.pack, r.version, r.pack
                    ),
                });
            }
        }
        Ok(())
    }
}

/// The OCI tag for a pack version (`+` → `_`).
pub fn version_tag(version: &str) -> String {
    version.replace('+', "_")
}

/// True for `sha256:` followed by 64 lower-case hex digits.
pub(crate) fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PackMeta> {
        PackMeta::from_toml(text, Contents::default())
    }

    #[test]
    fn reads_a_complete_pack_toml() {
        let m = parse(
            r#"
name = "cni-calico"
version = "3.28.0"
layer = "network"
description = "Calico"
[constraints]
kubernetes = ">=1.28, <1.31"
requires = [{ pack = "kubernetes-kubeadm", version = ">=1.28" }]
[[image]]
reference = "mirror.example:5000/calico/node:v3.28.0"
"#,
        )
        .expect("valid");
        assert_eq!(m.layer, LayerType::Network);
        assert_eq!(m.images.len(), 1);
        assert!(m.check_kubernetes(&semver::Version::new(1, 29, 4)).is_ok());
        let e = m
            .check_kubernetes(&semver::Version::new(1, 31, 0))
            .expect_err("too new");
        assert!(
            e.to_string().contains("supports Kubernetes >=1.28, <1.31"),
            "{e}"
        );
        let v = semver::Version::new(1, 29, 0);
        assert!(m.check_requirements(&[("kubernetes-kubeadm", &v)]).is_ok());
        let e = m.check_requirements(&[]).expect_err("missing");
        assert!(e.to_string().contains("not in the profile"), "{e}");
    }

    #[test]
    fn names_the_wrong_field() {
        let base = "name = \"p\"\nversion = \"1.0.0\"\nlayer = \"addon\"\n";
        for (extra, field) in [
            ("", ""),
            (
                "[constraints]\nkubernetes = \"not a range\"\n",
                "constraints.kubernetes",
            ),
            (
                "[[image]]\nreference = \"mirror.example/a:1\"\ndigest = \"sha256:abc\"\n",
                "image[0].digest",
            ),
            ("[[image]]\nreference = \"nohost\"\n", "image[0].reference"),
        ] {
            let r = parse(&format!("{base}{extra}"));
            if field.is_empty() {
                assert!(r.is_ok(), "{r:?}");
            } else {
                let e = r.expect_err(field).to_string();
                assert!(e.contains(field), "{e}");
            }
        }
        let e = parse("name = \"p\"\nversion = \"v1.0\"\nlayer = \"addon\"\n")
            .expect_err("version")
            .to_string();
        assert!(
            e.contains("field version") && e.contains("MAJOR.MINOR.PATCH"),
            "{e}"
        );
        let e = parse("name = \"p\"\nversion = \"1.0.0\"\nlayer = \"cni\"\n")
            .expect_err("layer")
            .to_string();
        assert!(e.contains("os, kubernetes, network, storage, addon"), "{e}");
        let e = parse("name = \"p\"\nversion = \"1.0.0\"\nlayer = \"addon\"\ncolour = 1\n")
            .expect_err("unknown")
            .to_string();
        assert!(e.contains("pack.toml") && e.contains("colour"), "{e}");
    }

    #[test]
    fn tags_replace_build_metadata_plus() {
        assert_eq!(version_tag("1.29.4+rke2r1"), "1.29.4_rke2r1");
        assert_eq!(version_tag("3.28.0"), "3.28.0");
    }
}
