//! Cluster profiles (named, with immutable numbered revisions of ordered pack layers).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{check_id, check_name, check_text, Invalid, Timestamp};

/// The kind of a profile layer; layers apply in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LayerType {
    Os,
    Kubernetes,
    Network,
    Storage,
    Addon,
}

impl LayerType {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerType::Os => "os",
            LayerType::Kubernetes => "kubernetes",
            LayerType::Network => "network",
            LayerType::Storage => "storage",
            LayerType::Addon => "addon",
        }
    }
    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "os" => Some(LayerType::Os),
            "kubernetes" => Some(LayerType::Kubernetes),
            "network" => Some(LayerType::Network),
            "storage" => Some(LayerType::Storage),
            "addon" => Some(LayerType::Addon),
            _ => None,
        }
    }
}

/// One layer of a profile revision: a pinned pack version and its values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    #[serde(rename = "type")]
    pub layer_type: LayerType,
    /// Pack name in the pack repository.
    pub pack: String,
    /// Exact pack version (no ranges: a revision is reproducible).
    pub version: String,
    /// Values for the pack, as a YAML mapping (may be empty).
    #[serde(default)]
    pub values: String,
}

/// Most layers a profile revision may hold.
pub const MAX_LAYERS: usize = 64;
/// Largest values document per layer.
pub const MAX_VALUES_BYTES: usize = 256 * 1024;

/// Check a pack version: 1 to 64 characters of letters, digits, '.', '-', '+', starting with a digit
/// or 'v' (semantic versions such as `1.29.4` or `v1.29.4+rke2r1`).
fn check_version(field: &str, v: &str) -> Result<(), Invalid> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
        && v.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'v');
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!("{v:?} is not a pack version: give an exact version such as \"1.29.4\""),
        ))
    }
}

/// Check that a values document is YAML whose top level is a mapping (or empty).
fn check_values(field: &str, values: &str) -> Result<(), Invalid> {
    if values.len() > MAX_VALUES_BYTES {
        return Err(Invalid::new(
            field,
            format!("is larger than {MAX_VALUES_BYTES} bytes"),
        ));
    }
    let docs = yaml_rust2::YamlLoader::load_from_str(values)
        .map_err(|e| Invalid::new(field, format!("is not valid YAML: {e}")))?;
    match docs.as_slice() {
        [] => Ok(()),
        [yaml_rust2::Yaml::Hash(_)] | [yaml_rust2::Yaml::Null] => Ok(()),
        [_] => Err(Invalid::new(
            field,
            "must be a YAML mapping (key: value pairs) at the top level",
        )),
        _ => Err(Invalid::new(field, "must be a single YAML document")),
    }
}

/// Validate an ordered list of layers: each layer, at most one os and one kubernetes layer,
/// and layer types in apply order (os, kubernetes, network, storage, addon).
pub fn check_layers(layers: &[Layer]) -> Result<(), Invalid> {
    if layers.is_empty() {
        return Err(Invalid::new(
            "layers",
            "a revision needs at least one layer",
        ));
    }
    if layers.len() > MAX_LAYERS {
        return Err(Invalid::new(
            "layers",
            format!("has more than {MAX_LAYERS} layers"),
        ));
    }
    let mut previous: Option<LayerType> = None;
    for (i, layer) in layers.iter().enumerate() {
        let at = format!("layers[{i}]");
        check_name("pack", &layer.pack).map_err(|e| e.under(&at))?;
        check_version("version", &layer.version).map_err(|e| e.under(&at))?;
        check_values("values", &layer.values).map_err(|e| e.under(&at))?;
        if let Some(prev) = previous {
            if layer.layer_type < prev {
                return Err(Invalid::new(
                    format!("{at}.type"),
                    format!(
                        "{} layer comes after a {} layer: order layers os, kubernetes, network, storage, addon",
                        layer.layer_type.as_str(),
                        prev.as_str()
                    ),
                ));
            }
            if layer.layer_type == prev
                && matches!(layer.layer_type, LayerType::Os | LayerType::Kubernetes)
            {
                return Err(Invalid::new(
                    format!("{at}.type"),
                    format!("a revision has at most one {} layer", prev.as_str()),
                ));
            }
        }
        previous = Some(layer.layer_type);
    }
    Ok(())
}

/// A cluster profile: a name plus its latest revision number.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Profile {
    pub id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    /// Number of the newest revision (revisions count from 1).
    pub latest_revision: i64,
    pub version: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// An immutable revision of a profile.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProfileRevision {
    pub profile_id: String,
    pub revision: i64,
    pub layers: Vec<Layer>,
    /// Username of whoever created the revision.
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// Body of `POST /v1/profiles`: the profile and its first revision.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProfile {
    pub project_id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub layers: Vec<Layer>,
}

impl NewProfile {
    /// Validate every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_id("project_id", &self.project_id)?;
        check_name("name", &self.name)?;
        check_text("description", &self.description, 1000)?;
        check_layers(&self.layers)
    }
}

/// Body of `PUT /v1/profiles/{id}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfile {
    pub description: String,
}

impl UpdateProfile {
    /// Validate every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_text("description", &self.description, 1000)
    }
}

/// Body of `POST /v1/profiles/{id}/revisions`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProfileRevision {
    pub layers: Vec<Layer>,
}

impl NewProfileRevision {
    /// Validate every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_layers(&self.layers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(t: LayerType, values: &str) -> Layer {
        Layer {
            layer_type: t,
            pack: "p".into(),
            version: "1.0.0".into(),
            values: values.into(),
        }
    }

    #[test]
    fn accepts_ordered_layers_with_mapping_values() {
        let layers = vec![
            layer(LayerType::Os, ""),
            layer(LayerType::Kubernetes, "podCIDR: 10.0.0.0/16\n"),
            layer(LayerType::Addon, "a: 1"),
            layer(LayerType::Addon, "b: 2"),
        ];
        assert!(check_layers(&layers).is_ok());
    }

    #[test]
    fn names_the_layer_that_is_out_of_order() {
        let layers = vec![layer(LayerType::Network, ""), layer(LayerType::Os, "")];
        assert_eq!(
            check_layers(&layers).map_err(|e| e.field),
            Err("layers[1].type".into())
        );
    }

    #[test]
    fn rejects_values_that_are_not_a_mapping() {
        let err = check_layers(&[layer(LayerType::Os, "- a\n- b")]).expect_err("list");
        assert_eq!(err.field, "layers[0].values");
        let err = check_layers(&[layer(LayerType::Os, "a: [")]).expect_err("broken");
        assert!(err.reason.contains("not valid YAML"));
    }

    #[test]
    fn rejects_two_kubernetes_layers() {
        let layers = vec![
            layer(LayerType::Kubernetes, ""),
            layer(LayerType::Kubernetes, ""),
        ];
        assert!(check_layers(&layers).is_err());
    }
}
