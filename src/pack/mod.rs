//! Packs: the versioned units of a cluster profile's layers (format in `docs/packs.md`).
//!
//! Owns the pack format: loading and validating a pack directory ([`load`]), rendering its
//! manifests with values ([`render`]), packaging it as an OCI artifact in an OCI image layout
//! ([`package_to_layout`]), and reading it back from a layout or from a registry
//! ([`read_from_layout`], [`read_from_registry`]). Pure apart from file and registry I/O: no
//! store, no HTTP server. Called by `bundle build` (packaging), bundle import (reading the
//! metadata), and the agent (fetch and render).

mod archive;
mod error;
mod meta;
mod values;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

pub use archive::{
    catalogue_entry, from_artifact_parts, package_to_layout, read_from_layout, read_from_registry,
    CatalogueEntry, PackedArtifact, ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, CONTENT_MEDIA_TYPE,
    LAYER_TYPE_ANNOTATION,
};
pub use error::{Error, Result};
pub use meta::{
    version_tag, Constraints, Contents, Image, PackMeta, Requirement, CONFIG_SCHEMA_VERSION,
    PACK_TOML,
};
pub use values::{merge, yaml_to_json, Schema};

use values::{parse_template, substitute, Piece};

/// Default values of a pack.
pub const VALUES_YAML: &str = "values.yaml";
/// JSON Schema of a pack's values.
pub const VALUES_SCHEMA: &str = "values.schema.json";
/// Folder of Kubernetes manifests.
pub const MANIFESTS_DIR: &str = "manifests";
/// Folder of the Helm chart.
pub const CHART_DIR: &str = "chart";
/// Most files in one pack.
pub const MAX_FILES: usize = 2000;
/// Largest single file in a pack.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Largest pack, all files together (also the cap when unpacking an archive).
pub const MAX_PACK_BYTES: u64 = 64 * 1024 * 1024;
/// Most documents one pack renders to.
const MAX_DOCUMENTS: usize = 5000;

/// A loaded, validated pack, held in memory (packs are small: see [`MAX_PACK_BYTES`]).
#[derive(Debug)]
pub struct Pack {
    /// `pack.toml`, validated.
    pub meta: PackMeta,
    /// `values.yaml` as JSON (validated against the schema).
    pub defaults: Value,
    /// `values.schema.json` as written.
    pub schema_json: Value,
    schema: Schema,
    templates: Vec<Template>,
    /// The Helm chart under `chart/`, if the pack has one.
    pub chart: Option<Chart>,
    /// Every file of the pack by relative path (`/`-separated): what packaging archives.
    files: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug)]
struct Template {
    file: String,
    pieces: Vec<Piece>,
}

/// A Helm chart carried as-is; the agent installs it with the merged values.
#[derive(Debug, Clone)]
pub struct Chart {
    /// `name` of `Chart.yaml`.
    pub name: String,
    /// `version` of `Chart.yaml`.
    pub version: String,
    /// The chart's files, by path relative to `chart/`.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// One Kubernetes object rendered from a pack's manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderedManifest {
    /// The manifest file it came from (`manifests/...`).
    pub file: String,
    /// Its position in that file, from 1.
    pub document: usize,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// `metadata.namespace`, when the document sets one.
    pub namespace: Option<String>,
    /// The document's YAML text, values substituted.
    pub yaml: String,
}

impl Pack {
    /// Every file of the pack, by relative path.
    pub fn files(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.files
    }

    /// Merge `values` over the defaults and validate the result against the schema: the values
    /// the manifests are rendered with, and that a Helm chart is installed with.
    pub fn values(&self, values: &Value) -> Result<Value> {
        let user = match values {
            Value::Null => Value::Object(serde_json::Map::new()),
            Value::Object(_) => values.clone(),
            _ => {
                return Err(Error::Schema {
                    source_name: "values".into(),
                    problems: "at /: values must be a mapping (key: value pairs)".into(),
                })
            }
        };
        let merged = merge(&self.defaults, &user);
        self.schema.validate("values", &merged)?;
        Ok(merged)
    }
}

/// Load and validate the pack in `pack_dir`: `pack.toml`, `values.yaml` against
/// `values.schema.json`, every manifest rendered with the defaults, the chart's `Chart.yaml`.
pub fn load(pack_dir: &Path) -> Result<Pack> {
    let files = read_dir_files(pack_dir)?;
    from_files(files)
}

/// Render the pack's manifests with `values` merged over its defaults (validated against its
/// schema). A pack with only a chart renders to an empty list (use [`Pack::values`]).
pub fn render(pack: &Pack, values: &Value) -> Result<Vec<RenderedManifest>> {
    let merged = pack.values(values)?;
    render_with(pack, &merged)
}

/// Render `pack` for a profile layer: the layer must name this pack, version and layer type,
/// and its values (YAML) are merged over the defaults. What the agent applies for a layer.
pub fn render_layer(pack: &Pack, layer: &crate::model::Layer) -> Result<Vec<RenderedManifest>> {
    let m = &pack.meta;
    if layer.pack != m.name || layer.version != m.version || layer.layer_type != m.layer {
        return Err(Error::Constraint {
            pack: format!("{} {}", m.name, m.version),
            reason: format!(
                "is a {} pack, but the layer asks for {} layer {} {}: fetch the pack the layer names",
                m.layer.as_str(),
                layer.layer_type.as_str(),
                layer.pack,
                layer.version
            ),
        });
    }
    let values = yaml_to_json("the layer's values", &layer.values)?;
    render(pack, &values)
}

/// Check the packs of one profile against each other's constraints: the Kubernetes version is
/// the version of the profile's kubernetes-layer pack (build metadata aside), which every
/// pack's `constraints.kubernetes` must accept; every `requires` must be met by another pack
/// of the profile. Without a kubernetes layer only the requirements are checked.
pub fn check_profile(packs: &[&PackMeta]) -> Result<()> {
    let versions: Vec<(String, semver::Version)> = packs
        .iter()
        .map(|m| {
            m.semver()
                .map(|v| (m.name.clone(), v))
                .map_err(|e| Error::field(&m.name, "version", e))
        })
        .collect::<Result<_>>()?;
    let present: Vec<(&str, &semver::Version)> =
        versions.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let kubernetes = packs
        .iter()
        .zip(&versions)
        .find(|(m, _)| m.layer == crate::model::LayerType::Kubernetes)
        .map(|(_, (_, v))| v);
    for m in packs {
        if let Some(k) = kubernetes {
            m.check_kubernetes(k)?;
        }
        m.check_requirements(&present)?;
    }
    Ok(())
}

fn render_with(pack: &Pack, merged: &Value) -> Result<Vec<RenderedManifest>> {
    let mut out = Vec::new();
    for t in &pack.templates {
        let text = substitute(&t.file, &t.pieces, merged)?;
        for (document, (line, doc)) in split_documents(&text).into_iter().enumerate() {
            if let Some(m) = check_document(&t.file, document + 1, line, doc)? {
                out.push(m);
            }
            if out.len() > MAX_DOCUMENTS {
                return Err(Error::TooLarge {
                    what: format!("pack {}", pack.meta.name),
                    limit: MAX_DOCUMENTS as u64,
                    fix: "split the pack: it renders to too many documents".into(),
                });
            }
        }
    }
    Ok(out)
}

/// Split a YAML stream at `---` lines; returns each document with its first line (1-based).
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let l = line.trim_end();
        let is_separator =
            l == "---" || (l.starts_with("---") && l[3..].starts_with([' ', '\t', '#']));
        if is_separator {
            docs.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    docs
}

/// Parse one rendered document; `None` for a document with nothing but comments.
fn check_document(
    file: &str,
    document: usize,
    line: usize,
    text: &str,
) -> Result<Option<RenderedManifest>> {
    use yaml_rust2::Yaml;
    let err = |reason: String| Error::Manifest {
        file: file.into(),
        document,
        line,
        reason,
    };
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| {
        err(format!(
            "is not valid YAML after substitution: {e} (a value with ':' or '#' may need quotes around its placeholder)"
        ))
    })?;
    let doc = match docs.as_slice() {
        [] | [Yaml::Null] => return Ok(None),
        [d] => d,
        _ => {
            return Err(err(
                "holds several documents: separate them with --- lines".into()
            ))
        }
    };
    let Yaml::Hash(_) = doc else {
        return Err(err(
            "is not a mapping: a Kubernetes object has apiVersion, kind and metadata".into(),
        ));
    };
    let text_field = |y: &Yaml, name: &str| -> Result<String> {
        match y {
            Yaml::String(s) if !s.is_empty() => Ok(s.clone()),
            Yaml::BadValue => Err(err(format!(
                "has no {name}: every Kubernetes object needs one"
            ))),
            _ => Err(err(format!("{name} must be a non-empty string"))),
        }
    };
    let api_version = text_field(&doc["apiVersion"], "apiVersion")?;
    let kind = text_field(&doc["kind"], "kind")?;
    let name = text_field(&doc["metadata"]["name"], "metadata.name")?;
    let namespace = match &doc["metadata"]["namespace"] {
        Yaml::BadValue => None,
        y => Some(text_field(y, "metadata.namespace")?),
    };
    Ok(Some(RenderedManifest {
        file: file.into(),
        document,
        api_version,
        kind,
        name,
        namespace,
        yaml: text.trim_start_matches('\n').to_string(),
    }))
}

/// Build a pack from its files (from a directory or an archive), validating everything.
pub(crate) fn from_files(files: BTreeMap<String, Vec<u8>>) -> Result<Pack> {
    let mut manifests = Vec::new();
    let mut chart_files = BTreeMap::new();
    for path in files.keys() {
        check_place(path)?;
        if let Some(rest) = path.strip_prefix("chart/") {
            chart_files.insert(rest.to_string(), files[path].clone());
        } else if path.starts_with("manifests/") {
            manifests.push(path.clone());
        }
    }
    let text = |name: &str| -> Result<&str> {
        let bytes = files.get(name).ok_or_else(|| Error::Missing {
            file: name.into(),
            fix: match name {
                PACK_TOML => "add pack.toml with name, version and layer (see docs/packs.md)".into(),
                VALUES_YAML => "add values.yaml with the default values (it may be empty)".into(),
                _ => "add values.schema.json, a JSON Schema of the values (at least {\"type\": \"object\"})".into(),
            },
        })?;
        std::str::from_utf8(bytes).map_err(|_| Error::Syntax {
            file: name.into(),
            reason: "is not UTF-8 text".into(),
        })
    };
    if manifests.is_empty() && chart_files.is_empty() {
        return Err(Error::Missing {
            file: "manifests/*.yaml or chart/".into(),
            fix: "a pack needs Kubernetes manifests under manifests/, a Helm chart under chart/, or both".into(),
        });
    }
    let contents = Contents {
        manifests: manifests.clone(),
        chart: !chart_files.is_empty(),
    };
    let meta = PackMeta::from_toml(text(PACK_TOML)?, contents)?;
    let defaults = yaml_to_json(VALUES_YAML, text(VALUES_YAML)?)?;
    let schema_json: Value =
        serde_json::from_str(text(VALUES_SCHEMA)?).map_err(|e| Error::Syntax {
            file: VALUES_SCHEMA.into(),
            reason: format!("is not valid JSON: {e}"),
        })?;
    let schema = Schema::compile(VALUES_SCHEMA, &schema_json)?;
    schema.validate("default values (values.yaml)", &defaults)?;
    let mut templates = Vec::new();
    for file in &manifests {
        let t = text(file)?;
        templates.push(Template {
            pieces: parse_template(file, t)?,
            file: file.clone(),
        });
    }
    let chart = if chart_files.is_empty() {
        None
    } else {
        Some(read_chart(chart_files)?)
    };
    let pack = Pack {
        meta,
        defaults,
        schema_json,
        schema,
        templates,
        chart,
        files,
    };
    // Rendering with the defaults checks every placeholder and every document now, at load
    // and package time, rather than on a cluster.
    let rendered = render_with(&pack, &pack.defaults)?;
    if !pack.templates.is_empty() && rendered.is_empty() {
        return Err(Error::Missing {
            file: "a Kubernetes object in manifests/".into(),
            fix: "the manifest files hold only comments: add objects or remove the files".into(),
        });
    }
    Ok(pack)
}

/// Check that `path` has a place in a pack.
fn check_place(path: &str) -> Result<()> {
    let unexpected = |reason: &str| Error::Unexpected {
        file: path.into(),
        reason: reason.into(),
    };
    if let Some(rest) = path.strip_prefix("manifests/") {
        if rest.contains('/') {
            return Err(unexpected(
                "manifests/ holds files only, no folders: move it up",
            ));
        }
        if !(rest.ends_with(".yaml") || rest.ends_with(".yml")) {
            return Err(unexpected(
                "manifests/ holds .yaml and .yml files only: rename or remove it",
            ));
        }
        return Ok(());
    }
    if let Some(rest) = path.strip_prefix("chart/") {
        if rest.split('/').any(|c| c == ".git") {
            return Err(unexpected("a chart carries no .git folder: remove it"));
        }
        return Ok(());
    }
    match path {
        PACK_TOML | VALUES_YAML | VALUES_SCHEMA | "README.md" | "LICENSE" => Ok(()),
        _ => Err(unexpected(
            "has no place in a pack (pack.toml, values.yaml, values.schema.json, README.md, LICENSE, manifests/, chart/): remove it",
        )),
    }
}

fn read_chart(files: BTreeMap<String, Vec<u8>>) -> Result<Chart> {
    use yaml_rust2::Yaml;
    const FILE: &str = "chart/Chart.yaml";
    let bytes = files.get("Chart.yaml").ok_or_else(|| Error::Missing {
        file: FILE.into(),
        fix: "put the Helm chart's own directory (with Chart.yaml at its top) under chart/".into(),
    })?;
    let text = std::str::from_utf8(bytes).map_err(|_| Error::Syntax {
        file: FILE.into(),
        reason: "is not UTF-8 text".into(),
    })?;
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| Error::Syntax {
        file: FILE.into(),
        reason: format!("is not valid YAML: {e}"),
    })?;
    let doc = docs.first().cloned().unwrap_or(Yaml::Null);
    let field = |name: &str| match &doc[name] {
        Yaml::String(s) if !s.is_empty() => Ok(s.clone()),
        Yaml::Real(s) => Ok(s.clone()),
        _ => Err(Error::field(FILE, name, "is required (a non-empty string)")),
    };
    match &doc["apiVersion"] {
        Yaml::String(v) if v == "v2" => {}
        _ => {
            return Err(Error::field(
                FILE,
                "apiVersion",
                "must be v2 (Helm 3 charts): convert the chart with helm",
            ))
        }
    }
    Ok(Chart {
        name: field("name")?,
        version: field("version")?,
        files,
    })
}

/// Read every regular file under `dir`, refusing links, special files and oversized packs.
fn read_dir_files(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::io("open the pack directory", dir, e))?;
    if !meta.is_dir() {
        return Err(Error::Unexpected {
            file: dir.display().to_string(),
            reason: "is not a directory: give the pack's directory (the one holding pack.toml)"
                .into(),
        });
    }
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    let mut todo = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = todo.pop() {
        let entries =
            std::fs::read_dir(&path).map_err(|e| Error::io("read the directory", &path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read the directory", &path, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(Error::Unexpected {
                    file: entry.path().display().to_string(),
                    reason: "has a name that is not UTF-8: rename it".into(),
                });
            };
            let child_rel = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let ft = entry
                .file_type()
                .map_err(|e| Error::io("stat", entry.path(), e))?;
            if ft.is_dir() {
                todo.push((entry.path(), child_rel));
            } else if ft.is_file() {
                let size = entry
                    .metadata()
                    .map_err(|e| Error::io("stat", entry.path(), e))?
                    .len();
                if size > MAX_FILE_BYTES {
                    return Err(Error::TooLarge {
                        what: child_rel,
                        limit: MAX_FILE_BYTES,
                        fix: "packs carry manifests and charts, not images or binaries: list images in pack.toml instead".into(),
                    });
                }
                total += size;
                if total > MAX_PACK_BYTES || files.len() >= MAX_FILES {
                    return Err(Error::TooLarge {
                        what: format!("pack {}", dir.display()),
                        limit: MAX_PACK_BYTES,
                        fix: format!("a pack holds at most {MAX_FILES} files and {MAX_PACK_BYTES} bytes: split it"),
                    });
                }
                let bytes =
                    std::fs::read(entry.path()).map_err(|e| Error::io("read", entry.path(), e))?;
                files.insert(child_rel, bytes);
            } else {
                return Err(Error::Unexpected {
                    file: child_rel,
                    reason: "is a symbolic link or special file: packs hold regular files only, copy the target in".into(),
                });
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests;
