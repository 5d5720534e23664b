//! Bundle recipes (TOML) and their resolution into build inputs.
//!
//! ```toml
//! [bundle]
//! name = "sample-platform"
//! version = "1.0.0"
//! min_appliance_version = "0.1.0"
//! [[pack]]
//! path = "packs/cni-calico"              # relative to the recipe file
//! [[image]]
//! reference = "registry.example:5000/calico/node:v3.28.0"
//! digest = "sha256:..."                  # optional pin
//! [[layout]]                             # an OCI image layout made elsewhere
//! path = "layouts/node"
//! kind = "container-image"
//! name = "calico/node"
//! version = "v3.28.0"
//! [[file]]
//! path = "files/readme.txt"
//! name = "readme"
//! version = "1"
//! kind = "file"                          # or appliance-binary / appliance-image
//! [registry_auth]                        # handed to the image puller as it is
//! ```
//!
//! Packs and images become OCI image layouts through two functions of other modules
//! (`crate::pack::package_to_layout`, `crate::oci_pull::pull_to_layout`); [`resolve_recipe`]
//! takes them as [`Resolvers`] so that the builder only ever sees layout directories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{Error, Result};
use super::format::{is_simple_name, parse_version, ArtifactKind};

/// A parsed recipe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub bundle: RecipeBundle,
    #[serde(default, rename = "pack")]
    pub packs: Vec<PackEntry>,
    #[serde(default, rename = "image")]
    pub images: Vec<ImageEntry>,
    #[serde(default, rename = "layout")]
    pub layouts: Vec<LayoutEntry>,
    #[serde(default, rename = "file")]
    pub files: Vec<FileEntry>,
    /// Credentials per registry host: `[registry_auth."host:port"]` with `username` and
    /// `password_env` (the environment variable holding the password).
    #[serde(default)]
    pub registry_auth: BTreeMap<String, RegistryAuth>,
    /// Pull from another host than the references name: `"source-host" = "mirror-host:port"`.
    #[serde(default)]
    pub mirror: BTreeMap<String, String>,
    /// Registry hosts spoken to over plain HTTP (a mirror on loopback); all others use HTTPS.
    #[serde(default)]
    pub plain_http: Vec<String>,
}

/// `[registry_auth."host"]`: how to log in to one registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    pub username: String,
    /// The environment variable holding the password (never the password itself, so that
    /// recipes can be committed).
    pub password_env: String,
}

/// `[bundle]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeBundle {
    pub name: String,
    pub version: String,
    /// Defaults to the version of the palisade that builds the bundle.
    #[serde(default)]
    pub min_appliance_version: Option<String>,
    #[serde(default)]
    pub description: String,
}

/// `[[pack]]`: a pack directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackEntry {
    pub path: PathBuf,
}

/// `[[image]]`: a container image pulled at build time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    pub reference: String,
    #[serde(default)]
    pub digest: Option<String>,
}

/// `[[layout]]`: an OCI image layout directory made by other tools (skopeo copy ... oci:dir).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutEntry {
    pub path: PathBuf,
    pub kind: String,
    pub name: String,
    pub version: String,
    /// Which manifest of the layout (its `org.opencontainers.image.ref.name`), when it has several.
    #[serde(default)]
    pub reference: Option<String>,
}

/// `[[file]]`: a file artifact.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub media_type: Option<String>,
}

/// One input of the builder: every pack and image arrives as an OCI image layout directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipeInput {
    Layout {
        dir: PathBuf,
        kind: ArtifactKind,
        name: String,
        version: String,
        /// The manifest to take from the layout, when it holds several.
        reference: Option<String>,
    },
    File {
        path: PathBuf,
        kind: ArtifactKind,
        name: String,
        version: String,
        media_type: String,
    },
}

/// Name and version of an artifact a resolver produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub name: String,
    pub version: String,
}

/// Turns a pack directory into an OCI layout at the given directory.
pub type PackResolver<'a> = dyn Fn(&Path, &Path) -> std::result::Result<Resolved, String> + 'a;
/// Pulls an image into an OCI layout at the given directory.
pub type ImageResolver<'a> =
    dyn Fn(&ImageEntry, &Recipe, &Path) -> std::result::Result<(), String> + 'a;

/// How packs and images are turned into layouts.
pub struct Resolvers<'a> {
    pub pack: &'a PackResolver<'a>,
    pub image: &'a ImageResolver<'a>,
}

/// Read and check a recipe file.
pub fn read_recipe(path: &Path) -> Result<Recipe> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let recipe: Recipe = toml::from_str(&text).map_err(|e| Error::Recipe {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let bad = |reason: String| Error::Recipe {
        path: path.to_path_buf(),
        reason,
    };
    if !is_simple_name(&recipe.bundle.name) {
        return Err(bad(format!(
            "bundle.name {:?} must be lower-case letters, digits, '.', '_' or '-'",
            recipe.bundle.name
        )));
    }
    parse_version("bundle.version", &recipe.bundle.version).map_err(|e| bad(e.to_string()))?;
    if let Some(v) = &recipe.bundle.min_appliance_version {
        parse_version("bundle.min_appliance_version", v).map_err(|e| bad(e.to_string()))?;
    }
    Ok(recipe)
}

/// Split an image reference `[host[:port]/]path[:tag][@sha256:...]` into its repository path
/// (without the host) and its tag or digest.
pub fn image_name_and_version(reference: &str) -> std::result::Result<(String, String), String> {
    let (rest, digest) = match reference.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (reference, None),
    };
    let (path, tag) = match rest.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (p, Some(t)),
        _ => (rest, None),
    };
    let mut components: Vec<&str> = path.split('/').collect();
    if components.len() > 1 {
        let first = components[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            components.remove(0);
        }
    }
    let name = components.join("/");
    let version = match (tag, digest) {
        (Some(t), _) => t.to_string(),
        (None, Some(d)) => d.replace(':', "-"),
        (None, None) => {
            return Err(format!(
                "image {reference:?} names neither a tag nor a digest: pin one"
            ))
        }
    };
    if name.is_empty() {
        return Err(format!("image {reference:?} has no repository path"));
    }
    Ok((name, version))
}

/// Resolve a recipe (read from `recipe_path`) into builder inputs. Packs and images are
/// turned into OCI image layouts under `work_dir` by `resolvers`.
pub fn resolve_recipe(
    recipe_path: &Path,
    recipe: &Recipe,
    work_dir: &Path,
    resolvers: &Resolvers<'_>,
) -> Result<Vec<RecipeInput>> {
    let base = recipe_path.parent().unwrap_or(Path::new("."));
    let bad = |reason: String| Error::Recipe {
        path: recipe_path.to_path_buf(),
        reason,
    };
    let mut inputs = Vec::new();
    for (i, p) in recipe.packs.iter().enumerate() {
        let dir = work_dir.join(format!("pack-{i}"));
        let r = (resolvers.pack)(&base.join(&p.path), &dir)
            .map_err(|e| bad(format!("pack {}: {e}", p.path.display())))?;
        inputs.push(RecipeInput::Layout {
            dir,
            kind: ArtifactKind::Pack,
            name: r.name,
            version: r.version,
            reference: None,
        });
    }
    for (i, img) in recipe.images.iter().enumerate() {
        let (name, version) = image_name_and_version(&img.reference).map_err(bad)?;
        let dir = work_dir.join(format!("image-{i}"));
        (resolvers.image)(img, recipe, &dir)
            .map_err(|e| bad(format!("image {}: {e}", img.reference)))?;
        inputs.push(RecipeInput::Layout {
            dir,
            kind: ArtifactKind::ContainerImage,
            name,
            version,
            reference: None,
        });
    }
    for l in &recipe.layouts {
        let kind = ArtifactKind::parse(&l.kind)
            .filter(|k| k.is_oci())
            .ok_or_else(|| {
                bad(format!(
                    "layout {}: kind must be pack or container-image",
                    l.path.display()
                ))
            })?;
        inputs.push(RecipeInput::Layout {
            dir: base.join(&l.path),
            kind,
            name: l.name.clone(),
            version: l.version.clone(),
            reference: l.reference.clone(),
        });
    }
    for f in &recipe.files {
        let kind_name = f.kind.as_deref().unwrap_or("file");
        let kind = ArtifactKind::parse(kind_name)
            .filter(|k| !k.is_oci())
            .ok_or_else(|| {
                bad(format!(
                    "file {}: kind {kind_name:?} must be file, appliance-binary or appliance-image",
                    f.path.display()
                ))
            })?;
        let media_type = f
            .media_type
            .clone()
            .unwrap_or_else(|| default_media_type(&f.path, kind));
        inputs.push(RecipeInput::File {
            path: base.join(&f.path),
            kind,
            name: f.name.clone(),
            version: f.version.clone(),
            media_type,
        });
    }
    Ok(inputs)
}

/// The media type of a file artifact from its extension.
fn default_media_type(path: &Path, kind: ArtifactKind) -> String {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match (kind, ext.as_str()) {
        (_, "iso") => "application/x-iso9660-image",
        (_, "qcow2") => "application/x-qemu-disk",
        (_, "ova") => "application/x-virtualbox-ova",
        (_, "txt" | "md") => "text/plain",
        (_, "json") => "application/json",
        (_, "yaml" | "yml") => "application/yaml",
        (ArtifactKind::ApplianceBinary, _) => "application/x-executable",
        _ => "application/octet-stream",
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_repository_path_and_tag() {
        assert_eq!(
            image_name_and_version("registry.example:5000/calico/node:v3.28.0"),
            Ok(("calico/node".into(), "v3.28.0".into()))
        );
        assert_eq!(
            image_name_and_version("localhost/app:1"),
            Ok(("app".into(), "1".into()))
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            image_name_and_version(&format!("lib/app@{d}")),
            Ok(("lib/app".into(), d.replace(':', "-")))
        );
        assert!(image_name_and_version("lib/app").is_err());
    }
}
