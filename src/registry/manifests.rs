//! Validation of pushed manifests: OCI image manifests and indexes, and their Docker schema 2
//! equivalents. Finds what a manifest references (which must already be in the repository)
//! and what the referrers API needs (subject, artifact type, annotations).

use serde_json::{Map, Value};

use super::errors::RegistryError;
use super::names::Digest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Largest manifest accepted: the size the distribution spec suggests registries accept at
/// least, and more than any real image needs.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Layers that by definition are not pushed to the registry (their descriptors carry `urls`):
/// a manifest may reference them without the repository holding them.
const FOREIGN_LAYERS: &[&str] = &[
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

/// What a valid manifest says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    pub media_type: &'static str,
    /// `artifactType`, or for an image manifest without one, its config's media type.
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    /// The `annotations` object, as JSON text.
    pub annotations: Option<String>,
    /// Config and layers: blobs the repository must hold.
    pub blobs: Vec<Digest>,
    /// Children of an index: manifests the repository must hold.
    pub manifests: Vec<Digest>,
}

fn invalid(msg: impl Into<String>) -> RegistryError {
    RegistryError::ManifestInvalid(msg.into())
}

/// The media type without parameters (`; charset=utf-8`).
fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Whether `media_type` is one of the manifest types the registry stores (used by bundle
/// import to check artifact metadata before it reaches the registry).
pub fn is_manifest_media_type(media_type: &str) -> bool {
    known(media_type).is_some()
}

fn known(media_type: &str) -> Option<&'static str> {
    [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST]
        .into_iter()
        .find(|m| *m == media_type)
}

/// A descriptor at `at` (for messages): its digest and media type.
fn descriptor(v: &Value, at: &str) -> Result<(Digest, String), RegistryError> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(format!("{at} must be a descriptor object")))?;
    let media_type = obj
        .get("mediaType")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{at}.mediaType is missing or not a string")))?;
    let digest = obj
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{at}.digest is missing or not a string")))?;
    let digest = Digest::parse(digest).map_err(|e| invalid(format!("{at}.digest: {e}")))?;
    if !obj.get("size").map(Value::is_u64).unwrap_or(false) {
        return Err(invalid(format!(
            "{at}.size is missing or not a non-negative integer"
        )));
    }
    Ok((digest, media_type.to_string()))
}

fn descriptors<'a>(
    doc: &'a Map<String, Value>,
    field: &str,
) -> Result<&'a Vec<Value>, RegistryError> {
    doc.get(field)
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(format!("{field} is missing or not an array")))
}

/// Validate manifest `bytes` sent with `content_type` (which wins over the body's `mediaType`
/// when given, and must agree with it when both are).
pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<ParsedManifest, RegistryError> {
    let doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("the manifest is not valid JSON: {e}")))?;
    let doc = doc
        .as_object()
        .ok_or_else(|| invalid("the manifest must be a JSON object"))?;
    if doc.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
        return Err(invalid(
            "schemaVersion must be 2 (schema 1 manifests are not supported)",
        ));
    }
    let body_type = match doc.get("mediaType") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| invalid("mediaType must be a string"))?,
        ),
    };
    let header_type = content_type.map(essence).filter(|t| !t.is_empty());
    let declared = match (header_type, body_type) {
        (Some(h), Some(b)) if h != b => {
            return Err(invalid(format!(
                "Content-Type {h} disagrees with the manifest's mediaType {b}: send the same type in both"
            )))
        }
        (Some(h), _) => h,
        (None, Some(b)) => b,
        (None, None) => {
            return Err(invalid(
                "send the manifest's media type in Content-Type (for example application/vnd.oci.image.manifest.v1+json)",
            ))
        }
    };
    let media_type = known(declared).ok_or_else(|| {
        invalid(format!(
            "manifest media type {declared} is not supported: use {OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST} or {DOCKER_LIST}"
        ))
    })?;
    let subject = match doc.get("subject") {
        None | Some(Value::Null) => None,
        Some(v) => Some(descriptor(v, "subject")?.0),
    };
    let annotations = match doc.get("annotations") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => {
            if !m.values().all(Value::is_string) {
                return Err(invalid("annotations must map strings to strings"));
            }
            Some(Value::Object(m.clone()).to_string())
        }
        Some(_) => return Err(invalid("annotations must be an object")),
    };
    let mut artifact_type = match doc.get("artifactType") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| invalid("artifactType must be a string"))?
                .to_string(),
        ),
    };
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    if media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST {
        let config = doc
            .get("config")
            .ok_or_else(|| invalid("config is missing"))?;
        let (digest, config_type) = descriptor(config, "config")?;
        blobs.push(digest);
        if artifact_type.is_none() && media_type == OCI_MANIFEST {
            artifact_type = Some(config_type);
        }
        for (i, layer) in descriptors(doc, "layers")?.iter().enumerate() {
            let (digest, layer_type) = descriptor(layer, &format!("layers[{i}]"))?;
            if !FOREIGN_LAYERS.contains(&layer_type.as_str()) {
                blobs.push(digest);
            }
        }
    } else {
        for (i, m) in descriptors(doc, "manifests")?.iter().enumerate() {
            manifests.push(descriptor(m, &format!("manifests[{i}]"))?.0);
        }
    }
    blobs.sort();
    blobs.dedup();
    manifests.sort();
    manifests.dedup();
    Ok(ParsedManifest {
        media_type,
        artifact_type,
        subject,
        annotations,
        blobs,
        manifests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn image() -> Value {
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d('a'), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d('b'), "size": 3}]
        })
    }

    fn bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).expect("json")
    }

    #[test]
    fn image_manifest_references_its_config_and_layers() {
        let m = parse(Some(OCI_MANIFEST), &bytes(&image())).expect("valid");
        assert_eq!(m.media_type, OCI_MANIFEST);
        let want: Vec<Digest> = [d('a'), d('b')]
            .iter()
            .map(|s| Digest::parse(s).expect("digest"))
            .collect();
        assert_eq!(m.blobs, want);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn index_references_its_manifests_and_subject_is_read() {
        let v = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": "application/x-sbom",
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": d('c'), "size": 10}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": d('e'), "size": 10},
            "annotations": {"org.example": "yes"}
        });
        let m = parse(Some(&format!("{OCI_INDEX}; charset=utf-8")), &bytes(&v)).expect("valid");
        assert_eq!(m.manifests.len(), 1);
        assert!(m.blobs.is_empty());
        assert_eq!(m.subject.map(|s| s.to_string()), Some(d('e')));
        assert_eq!(m.artifact_type.as_deref(), Some("application/x-sbom"));
        assert_eq!(m.annotations.as_deref(), Some(r#"{"org.example":"yes"}"#));
    }

    #[test]
    fn docker_types_are_accepted_and_foreign_layers_need_not_exist() {
        let v = json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": d('a'), "size": 2},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "digest": d('f'), "size": 3, "urls": ["https://x"]}]
        });
        let m = parse(None, &bytes(&v)).expect("valid");
        assert_eq!(m.media_type, DOCKER_MANIFEST);
        assert_eq!(m.blobs.len(), 1);
        assert_eq!(m.artifact_type, None);
    }

    #[test]
    fn refuses_each_kind_of_bad_manifest() {
        let mut cases: Vec<(Option<&str>, Vec<u8>)> = vec![
            (Some(OCI_MANIFEST), b"not json".to_vec()),
            (Some(OCI_MANIFEST), b"[]".to_vec()),
            (Some(DOCKER_LIST), bytes(&image())),
            (Some("application/json"), bytes(&image())),
            (
                Some("application/vnd.docker.distribution.manifest.v1+json"),
                bytes(&image()),
            ),
        ];
        let mut no_type = image();
        no_type.as_object_mut().expect("object").remove("mediaType");
        cases.push((None, bytes(&no_type)));
        let mut v1 = image();
        v1["schemaVersion"] = json!(1);
        cases.push((Some(OCI_MANIFEST), bytes(&v1)));
        let mut bad_digest = image();
        bad_digest["layers"][0]["digest"] = json!("sha512:abc");
        cases.push((Some(OCI_MANIFEST), bytes(&bad_digest)));
        let mut no_size = image();
        no_size["config"]
            .as_object_mut()
            .expect("object")
            .remove("size");
        cases.push((Some(OCI_MANIFEST), bytes(&no_size)));
        let mut no_layers = image();
        no_layers.as_object_mut().expect("object").remove("layers");
        cases.push((Some(OCI_MANIFEST), bytes(&no_layers)));
        let mut bad_annotations = image();
        bad_annotations["annotations"] = json!({"a": 1});
        cases.push((Some(OCI_MANIFEST), bytes(&bad_annotations)));
        for (i, (ct, body)) in cases.into_iter().enumerate() {
            assert!(
                matches!(parse(ct, &body), Err(RegistryError::ManifestInvalid(_))),
                "case {i} was accepted"
            );
        }
    }
}
