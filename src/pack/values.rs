//! Values: YAML to JSON, merging user values over defaults, schema validation, and the
//! `${values.path.to.key}` substitution in manifests.
//!
//! The substitution rule (documented in `docs/packs.md`): `${values.a.b}` is replaced by the
//! value at `a.b` of the merged values. Strings, numbers and booleans are inserted as their
//! text; `null` as `null`; mappings and lists as one-line JSON (which is YAML flow style).
//! Path segments are keys (`[A-Za-z0-9_-]+`) or list indexes (`0`, `1`, ...). `$${` writes a
//! literal `${`. A placeholder whose path the values lack is an error naming file and line.

use serde_json::{Map, Value};

use super::error::{Error, Result};

/// Parse a YAML values document (empty or a mapping at the top) into JSON. `file` names it in
/// messages.
pub fn yaml_to_json(file: &str, text: &str) -> Result<Value> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| Error::Syntax {
        file: file.into(),
        reason: format!("is not valid YAML: {e}"),
    })?;
    match docs.as_slice() {
        [] | [yaml_rust2::Yaml::Null] => Ok(Value::Object(Map::new())),
        [doc @ yaml_rust2::Yaml::Hash(_)] => convert(file, doc, "values"),
        [_] => Err(Error::Syntax {
            file: file.into(),
            reason: "must be a YAML mapping (key: value pairs) at the top level".into(),
        }),
        _ => Err(Error::Syntax {
            file: file.into(),
            reason: "must be a single YAML document: remove the extra ---".into(),
        }),
    }
}

/// Convert one YAML node to JSON; `at` is its path for messages.
pub(crate) fn convert(file: &str, y: &yaml_rust2::Yaml, at: &str) -> Result<Value> {
    use yaml_rust2::Yaml;
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => {
            let f: f64 = r.parse().map_err(|_| Error::Syntax {
                file: file.into(),
                reason: format!("{at}: {r} is not a number"),
            })?;
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| Error::Syntax {
                    file: file.into(),
                    reason: format!(
                        "{at}: {r} cannot be represented (infinite or NaN): quote it as a string"
                    ),
                })?
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| convert(file, v, &format!("{at}[{i}]")))
                .collect::<Result<_>>()?,
        ),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    _ => {
                        return Err(Error::Syntax {
                            file: file.into(),
                            reason: format!("{at}: keys must be strings: quote the key"),
                        })
                    }
                };
                let child = convert(file, v, &format!("{at}.{key}"))?;
                m.insert(key, child);
            }
            Value::Object(m)
        }
        Yaml::Alias(_) | Yaml::BadValue => {
            return Err(Error::Syntax {
                file: file.into(),
                reason: format!(
                    "{at}: aliases and unparsable values are not supported: write the value out"
                ),
            })
        }
    })
}

/// Merge `over` onto `base`: mappings merge key by key (recursively); anything else in `over`
/// replaces what `base` has (lists are replaced whole, as Helm does).
pub fn merge(base: &Value, over: &Value) -> Value {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            let mut out = b.clone();
            for (k, v) in o {
                let merged = match b.get(k) {
                    Some(bv) => merge(bv, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (_, o) => o.clone(),
    }
}

/// A compiled `values.schema.json`.
pub struct Schema {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

impl Schema {
    /// Compile a JSON Schema document (draft 2020-12 unless it says otherwise). References to
    /// other documents are not resolved: a pack's schema is self-contained.
    pub fn compile(file: &str, schema: &Value) -> Result<Schema> {
        if !schema.is_object() {
            return Err(Error::Syntax {
                file: file.into(),
                reason: "must be a JSON Schema object".into(),
            });
        }
        let validator = jsonschema::validator_for(schema).map_err(|e| Error::Syntax {
            file: file.into(),
            reason: format!("is not a valid JSON Schema: {e}"),
        })?;
        Ok(Schema { validator })
    }

    /// Validate `values`; `source_name` says which values in the message.
    pub fn validate(&self, source_name: &str, values: &Value) -> Result<()> {
        let problems: Vec<String> = self
            .validator
            .iter_errors(values)
            .take(20)
            .map(|e| {
                let path = e.instance_path().to_string();
                let path = if path.is_empty() {
                    "/".to_string()
                } else {
                    path
                };
                format!("at {path}: {e}")
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Schema {
                source_name: source_name.into(),
                problems: problems.join("; "),
            })
        }
    }
}

/// A placeholder found in a manifest: its path segments and the line it is on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placeholder {
    pub path: Vec<String>,
    pub line: usize,
}

/// One piece of a manifest template: literal text or a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Text(String),
    Value(Placeholder),
}

const OPEN: &str = "${";
const PREFIX: &str = "values.";

/// Split a manifest into literal text and placeholders; `$${` is a literal `${`. Anything that
/// starts with `${` and is not a well-formed `${values.<path>}` is an error naming the line.
pub(crate) fn parse_template(file: &str, text: &str) -> Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    let mut line = 1;
    while let Some(i) = rest.find('$') {
        let (before, after) = rest.split_at(i);
        literal.push_str(before);
        line += before.matches('\n').count();
        if let Some(after_escape) = after.strip_prefix("$${") {
            literal.push_str("${");
            rest = after_escape;
        } else if let Some(inner) = after.strip_prefix(OPEN) {
            let close = inner.find('}').filter(|&c| !inner[..c].contains('\n'));
            let Some(close) = close else {
                return Err(Error::Placeholder {
                    file: file.into(),
                    line,
                    reason: "${ is not closed by } on the same line: close it, or write $${ for a literal ${".into(),
                });
            };
            let expr = inner[..close].trim();
            let path = parse_path(expr).ok_or_else(|| Error::Placeholder {
                file: file.into(),
                line,
                reason: format!(
                    "${{{expr}}} is not a placeholder: write ${{values.path.to.key}} (keys of letters, digits, _ and -; list indexes as numbers), or $${{ for a literal ${{"
                ),
            })?;
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Value(Placeholder { path, line }));
            rest = &inner[close + 1..];
        } else {
            literal.push('$');
            rest = &after[1..];
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    Ok(pieces)
}

fn parse_path(expr: &str) -> Option<Vec<String>> {
    let path = expr.strip_prefix(PREFIX)?;
    let segments: Vec<String> = path.split('.').map(str::to_string).collect();
    let ok = segments.iter().all(|s| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    ok.then_some(segments)
}

/// The value at `path` in `values`, if there is one.
pub(crate) fn lookup<'v>(values: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut v = values;
    for seg in path {
        v = match v {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Text inserted for a value.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        // One-line JSON is valid YAML flow style.
        Value::Array(_) | Value::Object(_) => v.to_string(),
    }
}

/// Substitute every placeholder of `pieces` with its value from `values`.
pub(crate) fn substitute(file: &str, pieces: &[Piece], values: &Value) -> Result<String> {
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Value(ph) => {
                let v = lookup(values, &ph.path).ok_or_else(|| Error::Placeholder {
                    file: file.into(),
                    line: ph.line,
                    reason: format!(
                        "${{values.{}}} names a key the values do not have: add it to values.yaml, or fix the name",
                        ph.path.join(".")
                    ),
                })?;
                out.push_str(&value_text(v));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_maps_deeply_and_replaces_lists() {
        let base = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        let over = json!({"a": {"c": [3]}, "e": true});
        assert_eq!(
            merge(&base, &over),
            json!({"a": {"b": 1, "c": [3]}, "d": "x", "e": true})
        );
    }

    #[test]
    fn substitutes_scalars_and_structures_and_keeps_literal_dollars() {
        let values =
            json!({"image": {"tag": "v1"}, "replicas": 2, "args": ["--a", "--b"], "on": true});
        let t = "a: ${values.image.tag}\nb: ${ values.replicas }\nc: ${values.args}\nd: $${HOME} $x\ne: ${values.args.1}\n";
        let pieces = parse_template("m.yaml", t).expect("parse");
        let out = substitute("m.yaml", &pieces, &values).expect("render");
        assert_eq!(
            out,
            "a: v1\nb: 2\nc: [\"--a\",\"--b\"]\nd: ${HOME} $x\ne: --b\n"
        );
    }

    #[test]
    fn unknown_keys_and_bad_placeholders_name_file_and_line() {
        let pieces = parse_template("manifests/a.yaml", "x: 1\n\ny: ${values.nope.deeper}\n")
            .expect("parse");
        let e = substitute("manifests/a.yaml", &pieces, &json!({})).expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "manifests/a.yaml line 3: ${values.nope.deeper} names a key the values do not have: add it to values.yaml, or fix the name"
        );
        let e = parse_template("b.yaml", "a\nb: ${image}\n").expect_err("not values.");
        assert!(
            e.to_string()
                .starts_with("b.yaml line 2: ${image} is not a placeholder"),
            "{e}"
        );
        let e = parse_template("c.yaml", "a: ${values.x\n}").expect_err("open");
        assert!(e.to_string().starts_with("c.yaml line 1:"), "{e}");
    }

    #[test]
    fn yaml_values_convert_to_json() {
        let v = yaml_to_json(
            "values.yaml",
            "a: 1\nb: [x, 2.5]\nc:\n  d: null\n  e: yes\n",
        )
        .expect("yaml");
        assert_eq!(
            v,
            json!({"a": 1, "b": ["x", 2.5], "c": {"d": null, "e": "yes"}})
        );
        assert_eq!(yaml_to_json("v", "").expect("empty"), json!({}));
        assert!(yaml_to_json("v", "- 1").is_err());
    }

    #[test]
    fn schema_errors_name_the_path() {
        let s = Schema::compile(
            "values.schema.json",
            &json!({"type": "object", "properties": {"replicas": {"type": "integer", "minimum": 1}}}),
        )
        .expect("schema");
        assert!(s.validate("values", &json!({"replicas": 2})).is_ok());
        let e = s
            .validate("values", &json!({"replicas": 0}))
            .expect_err("minimum");
        assert!(e.to_string().contains("at /replicas"), "{e}");
    }
}
