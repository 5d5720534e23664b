//! Packs: the sample packs under `bundles/packs/` load, render and package reproducibly;
//! skopeo reads the OCI layouts `package_to_layout` writes and pushes them into the appliance's
//! registry, from which `pack::read_from_registry` fetches and renders them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use palisade::oci_pull::{Client, Credentials, PullOptions};
use palisade::pack;
use serde_json::{json, Value};

use crate::registry::{registry_host, run_ok};
use crate::support::TestApp;

fn bundles() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bundles")
}

fn sample_packs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(bundles().join("packs"))
        .expect("bundles/packs")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 3, "expected the sample packs, found {dirs:?}");
    dirs
}

/// skopeo with its own home and an accept-anything policy (the tests check digests themselves).
pub(crate) fn skopeo(tmp: &Path) -> Command {
    let policy = tmp.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .expect("policy");
    let mut c = Command::new("skopeo");
    c.arg("--policy").arg(policy).env("HOME", tmp);
    c
}

#[test]
fn every_sample_pack_loads_renders_as_kubernetes_objects_and_packages_reproducibly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut layers = BTreeSet::new();
    for dir in sample_packs() {
        let name = dir
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let p = pack::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.meta.name, name, "the directory is named after the pack");
        assert!(!p.meta.images.is_empty(), "{name} lists its images");
        layers.insert(p.meta.layer);
        let rendered = pack::render(&p, &json!({})).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!rendered.is_empty(), "{name}");
        for m in &rendered {
            // Parse the text again, independently of render's own checks.
            let docs = yaml_rust2::YamlLoader::load_from_str(&m.yaml)
                .unwrap_or_else(|e| panic!("{name} {} #{}: {e}", m.file, m.document));
            assert_eq!(docs.len(), 1);
            let d = &docs[0];
            for key in ["apiVersion", "kind"] {
                assert!(
                    d[key].as_str().is_some_and(|s| !s.is_empty()),
                    "{name} {}: {key}",
                    m.file
                );
            }
            assert_eq!(d["metadata"]["name"].as_str(), Some(m.name.as_str()));
            assert!(
                !m.yaml.contains("${"),
                "{name} {}: placeholder left",
                m.file
            );
        }
        // Every image a manifest names is listed in pack.toml, so bundle build brings it.
        let listed: Vec<&str> = p.meta.images.iter().map(|i| i.reference.as_str()).collect();
        for m in &rendered {
            for line in m.yaml.lines() {
                if let Some(image) = line.trim().strip_prefix("image: ") {
                    let image = image.trim_matches('"');
                    assert!(
                        listed.contains(&image),
                        "{name}: {image} is not in pack.toml"
                    );
                }
            }
        }

        let one = pack::package_to_layout(&dir, &tmp.path().join(format!("{name}-1")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let two = pack::package_to_layout(&dir, &tmp.path().join(format!("{name}-2")))
            .expect("package again");
        assert_eq!(
            one.manifest_digest, two.manifest_digest,
            "{name}: not reproducible"
        );
        assert_eq!(one.version, p.meta.version);

        // skopeo reads the layout: the raw manifest is ours, byte for byte.
        let layout = tmp.path().join(format!("{name}-1"));
        let raw = run_ok(skopeo(tmp.path()).args(["inspect", "--raw"]).arg(format!(
            "oci:{}:{}",
            layout.display(),
            one.version
        )));
        let manifest: Value = serde_json::from_str(&raw).expect("manifest json");
        assert_eq!(manifest["artifactType"], pack::ARTIFACT_TYPE);
        assert_eq!(manifest["config"]["mediaType"], pack::CONFIG_MEDIA_TYPE);
        assert_eq!(manifest["layers"][0]["mediaType"], pack::CONTENT_MEDIA_TYPE);
        assert_eq!(
            manifest["annotations"][pack::LAYER_TYPE_ANNOTATION],
            p.meta.layer.as_str()
        );
        assert_eq!(
            manifest["annotations"]["org.opencontainers.image.version"],
            p.meta.version
        );
        assert_eq!(palisade_sha256(raw.as_bytes()), one.manifest_digest);
        let config = run_ok(
            skopeo(tmp.path())
                .args(["inspect", "--raw", "--config"])
                .arg(format!("oci:{}:{}", layout.display(), one.version)),
        );
        let config: Value = serde_json::from_str(&config).expect("config json");
        assert_eq!(config["name"], name.as_str());
    }
    for t in ["kubernetes", "network", "storage", "addon"] {
        assert!(
            layers.iter().any(|l| l.as_str() == t),
            "a sample {t} pack is expected"
        );
    }
}

fn palisade_sha256(bytes: &[u8]) -> String {
    crate::support::sha256(bytes)
}

#[test]
fn the_sample_recipe_names_every_sample_pack_and_every_image_they_need() {
    let text = std::fs::read_to_string(bundles().join("sample-platform.toml")).expect("recipe");
    let recipe: toml::Value = toml::from_str(&text).expect("recipe is TOML");
    assert_eq!(recipe["bundle"]["name"].as_str(), Some("sample-platform"));
    let mut packs: Vec<PathBuf> = recipe["pack"]
        .as_array()
        .expect("[[pack]]")
        .iter()
        .map(|p| bundles().join(p["path"].as_str().expect("path")))
        .collect();
    packs.sort();
    assert_eq!(
        packs,
        sample_packs(),
        "the recipe carries every sample pack"
    );
    let images: BTreeSet<&str> = recipe["image"]
        .as_array()
        .expect("[[image]]")
        .iter()
        .map(|i| i["reference"].as_str().expect("reference"))
        .collect();
    for dir in &packs {
        let p = pack::load(dir).expect("load");
        for i in &p.meta.images {
            assert!(
                images.contains(i.reference.as_str()),
                "{} is not in the recipe",
                i.reference
            );
        }
    }
    for f in recipe["file"].as_array().expect("[[file]]") {
        assert!(bundles().join(f["path"].as_str().expect("path")).is_file());
    }
}

#[test]
fn bundles_name_no_public_registry_host() {
    let hosts = [
        "docker.io",
        "quay.io",
        "ghcr.io",
        "gcr.io",
        "registry.k8s.io",
        "k8s.gcr.io",
        "public.ecr.aws",
        "mcr.microsoft.com",
    ];
    for f in crate::support::files_under(&bundles()) {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for h in hosts {
            assert!(
                !text.contains(h),
                "{} names {h}: use your mirror's placeholder",
                f.display()
            );
        }
    }
}

#[tokio::test]
async fn a_pack_pushed_with_skopeo_is_fetched_from_the_appliance_and_rendered() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let token = admin.token.clone().expect("token");
    let tmp = tempfile::tempdir().expect("tmp");
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    std::fs::write(certs.join("ca.crt"), app.ca_pem()).expect("ca");
    let dir = bundles().join("packs/metrics-server");
    let layout = tmp.path().join("layout");
    let packed = pack::package_to_layout(&dir, &layout).expect("package");
    let host = registry_host(&app);
    let target = format!("{host}/shared/packs/{}:{}", packed.name, packed.version);
    run_ok(
        skopeo(tmp.path())
            .args([
                "copy",
                "--dest-creds",
                &format!("admin:{token}"),
                "--dest-cert-dir",
            ])
            .arg(&certs)
            .arg(format!("oci:{}:{}", layout.display(), packed.version))
            .arg(format!("docker://{target}")),
    );

    let mut options = PullOptions {
        ca_pem: Some(app.ca_pem()),
        ..PullOptions::default()
    };
    options.credentials.insert(
        host.clone(),
        Credentials {
            username: "agent".into(),
            password: token.clone(),
        },
    );
    let client = Client::new(&options).expect("client");
    let (fetched, digest) = pack::read_from_registry(&client, &target)
        .await
        .expect("fetch");
    assert_eq!(
        digest, packed.manifest_digest,
        "the registry serves the pushed manifest"
    );
    assert_eq!(fetched.meta.name, "metrics-server");
    let rendered = pack::render(&fetched, &json!({"replicas": 2})).expect("render");
    let deployment = rendered
        .iter()
        .find(|m| m.kind == "Deployment")
        .expect("deployment");
    assert!(
        deployment.yaml.contains("replicas: 2"),
        "{}",
        deployment.yaml
    );

    // Without credentials the fetch fails and says which host wants them.
    let anonymous = Client::new(&PullOptions {
        ca_pem: Some(app.ca_pem()),
        ..PullOptions::default()
    })
    .expect("client");
    let e = pack::read_from_registry(&anonymous, &target)
        .await
        .expect_err("no credentials");
    assert!(
        format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(ToString::to_string)
                .unwrap_or_default()
        )
        .contains(&format!("registry {host} asks for credentials")),
        "{e}"
    );
    // A repository that holds an image, not a pack, is refused as such.
    crate::support::push_image(&admin, "shared/not-a-pack", "v1", "x").await;
    let e = pack::read_from_registry(&client, &format!("{host}/shared/not-a-pack:v1"))
        .await
        .expect_err("not a pack");
    assert!(e.to_string().contains("is not a Palisade pack"), "{e}");
}

#[test]
fn the_pack_cli_checks_renders_and_packages_a_pack() {
    use crate::support::run_cli;
    let dir = bundles().join("packs/csi-local-path");
    let dir_arg = dir.to_str().expect("utf-8 path");
    let (code, out, err) = run_cli(&["pack", "check", dir_arg], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("csi-local-path 0.0.28 (storage layer): valid"),
        "{out}"
    );

    let tmp = tempfile::tempdir().expect("tmp");
    let values = tmp.path().join("values.yaml");
    std::fs::write(&values, "storageClass:\n  name: fast-local\n").expect("values");
    let values_arg = values.to_str().expect("utf-8 path");
    let (code, out, err) = run_cli(&["pack", "render", dir_arg, "--values", values_arg], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("name: fast-local"), "{out}");
    std::fs::write(&values, "storageClass:\n  reclaimPolicy: Sometimes\n").expect("values");
    let (code, _, err) = run_cli(&["pack", "render", dir_arg, "--values", values_arg], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("values do not match values.schema.json: at /storageClass/reclaimPolicy"),
        "{err}"
    );

    let layout = tmp.path().join("layout");
    let (code, out, err) = run_cli(
        &[
            "pack",
            "package",
            dir_arg,
            "-o",
            layout.to_str().expect("utf-8 path"),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let expected = pack::package_to_layout(&dir, &tmp.path().join("again")).expect("package");
    assert!(out.contains(&expected.manifest_digest), "{out}");
}
