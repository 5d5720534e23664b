//! Unit tests of the pack format on packs written to temporary directories.

use std::path::Path;

use serde_json::json;

use super::*;

const SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "replicas": {"type": "integer", "minimum": 1},
    "image": {"type": "object", "properties": {"repository": {"type": "string"}, "tag": {"type": "string"}}}
  },
  "additionalProperties": false
}"#;

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: demo
  namespace: kube-system
spec:
  replicas: ${values.replicas}
  template:
    spec:
      containers:
        - name: demo
          image: \"${values.image.repository}:${values.image.tag}\"
---
# only a comment
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: demo
";

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
}

fn demo_pack(dir: &Path) {
    write(
        dir,
        &[
            (
                "pack.toml",
                "name = \"demo\"\nversion = \"1.0.0\"\nlayer = \"addon\"\n[[image]]\nreference = \"mirror.example:5000/demo:1\"\n",
            ),
            ("values.yaml", "replicas: 2\nimage:\n  repository: mirror.example:5000/demo\n  tag: \"1\"\n"),
            ("values.schema.json", SCHEMA),
            ("manifests/deployment.yaml", DEPLOYMENT),
        ],
    );
}

#[test]
fn loads_renders_with_defaults_and_with_user_values() {
    let tmp = tempfile::tempdir().expect("tmp");
    demo_pack(tmp.path());
    let pack = load(tmp.path()).expect("load");
    assert_eq!(
        pack.meta.contents.manifests,
        vec!["manifests/deployment.yaml"]
    );
    let out = render(&pack, &json!(null)).expect("render");
    assert_eq!(out.len(), 2, "the comment-only document is skipped");
    assert_eq!(out[0].kind, "Deployment");
    assert_eq!(out[0].namespace.as_deref(), Some("kube-system"));
    assert!(out[0].yaml.contains("replicas: 2"));
    assert!(out[0]
        .yaml
        .contains("image: \"mirror.example:5000/demo:1\""));
    assert_eq!(
        (out[1].kind.as_str(), out[1].document),
        ("ServiceAccount", 3)
    );
    let out = render(&pack, &json!({"replicas": 5, "image": {"tag": "2"}})).expect("render");
    assert!(out[0].yaml.contains("replicas: 5"));
    assert!(out[0].yaml.contains("demo:2\""));
}

#[test]
fn user_values_are_validated_against_the_schema() {
    let tmp = tempfile::tempdir().expect("tmp");
    demo_pack(tmp.path());
    let pack = load(tmp.path()).expect("load");
    let e = render(&pack, &json!({"replicas": 0})).expect_err("minimum");
    assert!(
        e.to_string()
            .starts_with("values do not match values.schema.json: at /replicas"),
        "{e}"
    );
    let e = render(&pack, &json!({"colour": "red"})).expect_err("unknown key");
    assert!(e.to_string().contains("colour"), "{e}");
    let e = render(&pack, &json!([1])).expect_err("not a mapping");
    assert!(e.to_string().contains("mapping"), "{e}");
}

#[test]
fn every_broken_pack_names_its_problem() {
    let cases: &[(&str, &str, &str)] = &[
        ("values.yaml", "replicas: 0\nimage: {repository: a, tag: b}\n", "default values (values.yaml) do not match values.schema.json: at /replicas"),
        ("values.yaml", "replicas: [\n", "values.yaml: is not valid YAML"),
        ("values.schema.json", "{\"type\": 3}", "values.schema.json: is not a valid JSON Schema"),
        ("values.schema.json", "{", "values.schema.json: is not valid JSON"),
        ("manifests/extra.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: ${values.missing}\n", "manifests/extra.yaml line 6: ${values.missing} names a key the values do not have"),
        ("manifests/extra.yaml", "kind: ConfigMap\nmetadata:\n  name: x\n", "manifests/extra.yaml (document 1, line 1): has no apiVersion"),
        ("manifests/extra.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n", "has no metadata.name"),
        ("manifests/extra.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  labels: ${values.image.repository}: x\n", "is not valid YAML after substitution"),
        ("manifests/sub/x.yaml", "a: 1", "manifests/sub/x.yaml: manifests/ holds files only"),
        ("manifests/x.json", "{}", "manifests/x.json: manifests/ holds .yaml and .yml files only"),
        ("notes.txt", "hi", "notes.txt: has no place in a pack"),
        ("pack.toml", "name = \"Demo\"\nversion = \"1.0.0\"\nlayer = \"addon\"\n", "pack.toml: field name"),
        ("chart/values.yaml", "a: 1\n", "chart/Chart.yaml is missing from the pack"),
    ];
    for (file, text, expected) in cases {
        let tmp = tempfile::tempdir().expect("tmp");
        demo_pack(tmp.path());
        write(tmp.path(), &[(file, text)]);
        let e = load(tmp.path()).expect_err(expected).to_string();
        assert!(
            e.contains(expected),
            "{file}: expected {expected:?} in {e:?}"
        );
    }
    for missing in ["pack.toml", "values.yaml", "values.schema.json"] {
        let tmp = tempfile::tempdir().expect("tmp");
        demo_pack(tmp.path());
        std::fs::remove_file(tmp.path().join(missing)).expect("rm");
        let e = load(tmp.path()).expect_err(missing).to_string();
        assert!(
            e.starts_with(&format!("{missing} is missing from the pack: add")),
            "{e}"
        );
    }
    let tmp = tempfile::tempdir().expect("tmp");
    demo_pack(tmp.path());
    std::os::unix::fs::symlink("/etc/passwd", tmp.path().join("manifests/link.yaml"))
        .expect("symlink");
    let e = load(tmp.path()).expect_err("symlink").to_string();
    assert!(e.contains("symbolic link"), "{e}");
}

#[test]
fn packaging_is_reproducible_and_reads_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pack_dir = tmp.path().join("pack");
    demo_pack(&pack_dir);
    let one = package_to_layout(&pack_dir, &tmp.path().join("one")).expect("package");
    let two = package_to_layout(&pack_dir, &tmp.path().join("two")).expect("package");
    assert_eq!(one, two);
    assert_eq!(one.name, "demo");
    assert_eq!(one.layer_type, crate::model::LayerType::Addon);
    let (pack, digest) = read_from_layout(&tmp.path().join("one"), Some("1.0.0")).expect("read");
    assert_eq!(digest, one.manifest_digest);
    assert_eq!(pack.meta.name, "demo");
    assert_eq!(render(&pack, &json!({})).expect("render").len(), 2);
    let e = package_to_layout(&pack_dir, &tmp.path().join("one")).expect_err("not empty");
    assert!(e.to_string().contains("is not empty"), "{e}");
}

#[test]
fn a_chart_only_pack_loads_packages_and_gives_merged_values() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("pack");
    write(
        &dir,
        &[
            (
                "pack.toml",
                "name = \"hello\"\nversion = \"0.1.0\"\nlayer = \"addon\"\n",
            ),
            ("values.yaml", "replicas: 2\n"),
            (
                "values.schema.json",
                "{\"type\": \"object\", \"properties\": {\"replicas\": {\"type\": \"integer\"}}}",
            ),
            (
                "chart/Chart.yaml",
                "apiVersion: v2\nname: hello\nversion: 0.1.0\n",
            ),
            (
                "chart/templates/deployment.yaml",
                "kind: Deployment\nreplicas: {{ .Values.replicas }}\n",
            ),
            ("chart/.helmignore", ".git\n"),
        ],
    );
    let pack = load(&dir).expect("load");
    let chart = pack.chart.as_ref().expect("chart");
    assert_eq!(
        (chart.name.as_str(), chart.version.as_str()),
        ("hello", "0.1.0")
    );
    assert!(chart.files.contains_key("templates/deployment.yaml"));
    assert!(pack.meta.contents.chart);
    assert!(render(&pack, &json!({})).expect("render").is_empty());
    assert_eq!(
        pack.values(&json!({"replicas": 3})).expect("values"),
        json!({"replicas": 3})
    );
    assert!(pack.values(&json!({"replicas": "x"})).is_err());
    let packed = package_to_layout(&dir, &tmp.path().join("layout")).expect("package");
    let (back, _) = read_from_layout(&tmp.path().join("layout"), None).expect("read");
    assert_eq!(back.files(), pack.files());
    assert_eq!(packed.layer_type, crate::model::LayerType::Addon);
    write(
        &dir,
        &[(
            "chart/Chart.yaml",
            "apiVersion: v1\nname: hello\nversion: 0.1.0\n",
        )],
    );
    let e = load(&dir).expect_err("helm 2").to_string();
    assert!(e.contains("chart/Chart.yaml: field apiVersion"), "{e}");
}

#[test]
fn renders_a_profile_layer_and_checks_a_profiles_constraints() {
    let tmp = tempfile::tempdir().expect("tmp");
    demo_pack(tmp.path());
    let pack = load(tmp.path()).expect("load");
    let layer = crate::model::Layer {
        layer_type: crate::model::LayerType::Addon,
        pack: "demo".into(),
        version: "1.0.0".into(),
        values: "replicas: 3\n".into(),
    };
    let out = render_layer(&pack, &layer).expect("render");
    assert!(out[0].yaml.contains("replicas: 3"));
    let wrong = crate::model::Layer {
        version: "1.0.1".into(),
        ..layer
    };
    let e = render_layer(&pack, &wrong).expect_err("other version");
    assert!(
        e.to_string()
            .contains("the layer asks for addon layer demo 1.0.1"),
        "{e}"
    );

    let meta = |toml: &str| PackMeta::from_toml(toml, Contents::default()).expect("meta");
    let k8s = meta(
        "name = \"kubernetes-kubeadm\"\nversion = \"1.30.4+build1\"\nlayer = \"kubernetes\"\n",
    );
    let cni = meta("name = \"cni\"\nversion = \"1.0.0\"\nlayer = \"network\"\n[constraints]\nkubernetes = \">=1.28, <1.31\"\n");
    let old = meta("name = \"old\"\nversion = \"1.0.0\"\nlayer = \"addon\"\n[constraints]\nkubernetes = \"<1.29\"\nrequires = [{ pack = \"cni\", version = \">=2\" }]\n");
    assert!(check_profile(&[&k8s, &cni]).is_ok());
    let e = check_profile(&[&k8s, &cni, &old])
        .expect_err("too old")
        .to_string();
    assert!(
        e.contains("old 1.0.0: supports Kubernetes <1.29, not 1.30.4+build1"),
        "{e}"
    );
    let e = check_profile(&[&cni, &old])
        .expect_err("requires")
        .to_string();
    assert!(
        e.contains("requires pack cni >=2, but the profile has 1.0.0"),
        "{e}"
    );
}
