//! `palisade bundle`: keygen, build, verify, inspect and import against the real executable and
//! real files; a corpus of broken and hostile bundles, each refused by `verify` and `import`
//! with a message naming the problem and nothing changed; and imports killed with SIGKILL at
//! several points, then completed by a re-run without rewriting stored blobs.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use palisade::bundle::format::{
    Artifact, ArtifactKind, BlobRef, Compression, LayoutFile, Manifest, PartHeader, TrustChanges,
    FORMAT_VERSION,
};
use palisade::bundle::keys;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{exe, plain, run_cli, sha256, TestApp, OCI_CONFIG, OCI_MANIFEST, PASSWORD};

const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn hex_of(bytes: &[u8]) -> String {
    sha256(bytes)["sha256:".len()..].to_string()
}

/// Deterministic incompressible bytes (xorshift), so sizes and ratios are what a test says.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A small image: config, one layer, manifest.
struct Image {
    config: Vec<u8>,
    layer: Vec<u8>,
    manifest: Vec<u8>,
}

impl Image {
    fn new(seed: u64, layer_len: usize) -> Image {
        let config =
            serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "seed": seed}))
                .expect("config");
        let layer = noise(seed, layer_len);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": OCI_LAYER_TAR, "digest": sha256(&layer), "size": layer.len()}]
        }))
        .expect("manifest");
        Image {
            config,
            layer,
            manifest,
        }
    }

    /// Write it as an OCI image layout directory.
    fn write_layout(&self, dir: &Path) {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("mkdir");
        for b in [&self.config, &self.layer, &self.manifest] {
            std::fs::write(blobs.join(hex_of(b)), b).expect("blob");
        }
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("oci-layout");
        let index = json!({"schemaVersion": 2, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": sha256(&self.manifest), "size": self.manifest.len()}
        ]});
        std::fs::write(dir.join("index.json"), index.to_string()).expect("index");
    }

    fn artifact(&self, name: &str, version: &str) -> Artifact {
        Artifact {
            kind: ArtifactKind::ContainerImage,
            name: name.into(),
            version: version.into(),
            media_type: OCI_MANIFEST.into(),
            size: self.manifest.len() as u64,
            sha256: hex_of(&self.manifest),
            blobs: vec![
                BlobRef {
                    media_type: OCI_CONFIG.into(),
                    size: self.config.len() as u64,
                    sha256: hex_of(&self.config),
                },
                BlobRef {
                    media_type: OCI_LAYER_TAR.into(),
                    size: self.layer.len() as u64,
                    sha256: hex_of(&self.layer),
                },
            ],
            file_name: None,
        }
    }
}

/// Run the executable, returning (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    run_cli(args, None)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Files of a data directory (size, inode, mtime) and row counts of its tables.
type Snapshot = (BTreeMap<String, (u64, u64, i64)>, Vec<i64>);

/// A work area with a trusted key pair and a data directory that trusts it.
struct Kit {
    tmp: tempfile::TempDir,
    key: PathBuf,
    public: PathBuf,
    data: PathBuf,
}

impl Kit {
    fn new() -> Kit {
        let tmp = tempfile::tempdir().expect("tmp");
        let key = tmp.path().join("signing.pem");
        let (code, out, err) = cli(&["bundle", "keygen", "-o", s(&key)]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("key id:"), "{out}");
        let mode = std::fs::metadata(&key).expect("key").mode() & 0o777;
        assert_eq!(mode, 0o600, "private key is owner-only");
        let public = tmp.path().join("signing.pem.pub");
        let data = tmp.path().join("data");
        let (code, _, err) = run_cli(
            &[
                "admin",
                "create-user",
                "--data-dir",
                s(&data),
                "--password-stdin",
                "admin",
            ],
            Some(&format!("{PASSWORD}\n")),
        );
        assert_eq!(code, 0, "{err}");
        let (code, out, err) = cli(&["bundle", "trust", "add", s(&public), "--data-dir", s(&data)]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("trusted from now on"), "{out}");
        Kit {
            tmp,
            key,
            public,
            data,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn import(&self, files: &[&Path], extra: &[&str]) -> (i32, String, String) {
        let mut args = vec!["bundle", "import", "--data-dir", s(&self.data)];
        args.extend(files.iter().map(|p| s(p)));
        args.extend_from_slice(extra);
        cli(&args)
    }

    fn verify(&self, files: &[&Path]) -> (i32, String, String) {
        let mut args = vec!["bundle", "verify", "--trusted-key", s(&self.public)];
        args.extend(files.iter().map(|p| s(p)));
        cli(&args)
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.data.join("state.db")).expect("db")
    }

    fn count(&self, table: &str) -> i64 {
        self.db()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .expect("count")
    }

    /// Files (outside staging/ and the database) with size, inode and mtime, and table counts.
    fn snapshot(&self) -> Snapshot {
        let mut files = BTreeMap::new();
        for p in crate::support::files_under(&self.data) {
            let rel = p
                .strip_prefix(&self.data)
                .expect("under")
                .to_string_lossy()
                .into_owned();
            if rel.starts_with("staging/") || rel.starts_with("state.db") || rel == "palisade.lock"
            {
                continue;
            }
            let m = std::fs::metadata(&p).expect("meta");
            files.insert(
                rel,
                (m.len(), m.ino(), m.mtime_nsec() + m.mtime() * 1_000_000_000),
            );
        }
        let counts = [
            "registry_repositories",
            "registry_blobs",
            "registry_blob_links",
            "registry_manifests",
            "registry_tags",
            "bundle_imports",
            "bundle_artifacts",
            "bundle_trusted_keys",
            "audit_log",
        ]
        .iter()
        .map(|t| self.count(t))
        .collect();
        (files, counts)
    }
}

fn write_recipe(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("recipe.toml");
    std::fs::write(&p, body).expect("recipe");
    p
}

#[tokio::test]
async fn builds_verifies_inspects_and_imports_a_bundle_the_appliance_then_serves() {
    let kit = Kit::new();
    let work = kit.path("src");
    let image = Image::new(1, 200_000);
    image.write_layout(&work.join("layouts/node"));
    std::fs::create_dir_all(work.join("files")).expect("mkdir");
    std::fs::write(work.join("files/readme.txt"), b"read me first\n").expect("file");
    std::fs::write(work.join("files/appliance.qcow2"), noise(9, 50_000)).expect("file");
    let recipe = write_recipe(
        &work,
        r#"
[bundle]
name = "sample-platform"
version = "1.0.0"
min_appliance_version = "0.1.0"
description = "test bundle"
[[layout]]
path = "layouts/node"
kind = "container-image"
name = "calico/node"
version = "v3.28.0"
[[file]]
path = "files/readme.txt"
name = "readme"
version = "1"
[[file]]
path = "files/appliance.qcow2"
name = "appliance"
version = "0.2.0"
kind = "appliance-image"
"#,
    );
    let out = kit.path("sample.bundle");
    let (code, stdout, err) = cli(&[
        "bundle",
        "build",
        s(&recipe),
        "--key",
        s(&kit.key),
        "-o",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("3 artifact(s)"), "{stdout}");

    let (code, stdout, err) = kit.verify(&[&out]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("every size and sha256 verified"),
        "{stdout}"
    );

    let (code, stdout, err) = cli(&["bundle", "inspect", s(&out)]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "sample-platform 1.0.0",
        "container-image",
        "calico/node",
        "v3.28.0",
        "appliance-image",
        "signature valid",
    ] {
        assert!(stdout.contains(want), "inspect lacks {want}: {stdout}");
    }
    let (code, stdout, err) = cli(&["bundle", "inspect", "--json", s(&out)]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(v["bundle"]["format_version"], 1);
    assert_eq!(v["bundle"]["artifacts"].as_array().map(Vec::len), Some(3));
    assert_eq!(v["compression"], "zstd");

    // Standard tools read it: zstd and tar, then skopeo from the OCI layout inside.
    let extract = kit.path("extract");
    std::fs::create_dir_all(&extract).expect("mkdir");
    let sh = format!("zstd -dc {} | tar -x -C {}", s(&out), s(&extract));
    let st = Command::new("sh").args(["-c", &sh]).status().expect("sh");
    assert!(st.success(), "zstd | tar failed");
    assert!(extract.join("bundle.json").exists() && extract.join("index.json").exists());
    if Command::new("skopeo").arg("--version").output().is_ok() {
        let o = Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci:{}:images/calico/node:v3.28.0", s(&extract)))
            .output()
            .expect("skopeo");
        assert!(
            o.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            o.stdout, image.manifest,
            "skopeo reads the image's manifest"
        );
    }

    let before = kit.count("audit_log");
    let (code, stdout, err) = kit.import(&[&out], &[]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("shared/images/calico/node:v3.28.0"),
        "{stdout}"
    );
    assert_eq!(kit.count("bundle_imports"), 1);
    assert_eq!(kit.count("bundle_artifacts"), 3);
    assert_eq!(kit.count("audit_log"), before + 1, "the import is audited");
    let action: String = kit
        .db()
        .query_row(
            "SELECT action || ' ' || object FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("audit");
    assert!(
        action.contains("bundle import sample-platform 1.0.0"),
        "{action}"
    );
    let qcow = hex_of(&noise(9, 50_000));
    let stored = kit
        .data
        .join(format!("artifacts/sha256/{}/{qcow}", &qcow[..2]));
    assert_eq!(
        std::fs::read(&stored).expect("artifact file"),
        noise(9, 50_000)
    );
    assert!(
        !kit.data
            .join("staging")
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(false),
        "staging is emptied"
    );
    let (code, stdout, _) = kit.import(&[&out], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("imported already"), "{stdout}");
    let (code, stdout, err) = cli(&["admin", "check", "--deep", "--data-dir", s(&kit.data)]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("2 file(s) present"), "{stdout}");
    // A damaged artifact file is found by admin check, naming the bundle.
    let original = std::fs::read(&stored).expect("read");
    std::fs::write(&stored, b"damaged").expect("damage");
    let (code, stdout, _) = cli(&["admin", "check", "--deep", "--data-dir", s(&kit.data)]);
    assert_eq!(code, 3, "{stdout}");
    assert!(
        stdout.contains("bundle sample-platform 1.0.0: appliance-image appliance 0.2.0"),
        "{stdout}"
    );
    std::fs::write(&stored, original).expect("repair");

    // The appliance serves the imported image.
    let app = TestApp::start_in(&kit.data, &[]);
    let api = app.login_token("admin", PASSWORD).await;
    let r = plain(
        &api,
        Method::GET,
        "/v2/shared/images/calico/node/manifests/v3.28.0",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.body, image.manifest);
    let r = plain(
        &api,
        Method::GET,
        &format!(
            "/v2/shared/images/calico/node/blobs/{}",
            sha256(&image.layer)
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, image.layer);
}

#[test]
fn split_gzip_bundle_imports_from_parts_in_any_order() {
    let kit = Kit::new();
    let work = kit.path("src");
    let a = Image::new(2, 1_500_000);
    let b = Image::new(3, 900_000);
    a.write_layout(&work.join("a"));
    b.write_layout(&work.join("b"));
    let recipe = write_recipe(
        &work,
        r#"
[bundle]
name = "split"
version = "2.0.0"
[[layout]]
path = "a"
kind = "container-image"
name = "calico/cni"
version = "3.28.0"
[[layout]]
path = "b"
kind = "container-image"
name = "tools/busybox"
version = "1.36"
"#,
    );
    let out = kit.path("split.bundle");
    let (code, stdout, err) = cli(&[
        "bundle",
        "build",
        s(&recipe),
        "--key",
        s(&kit.key),
        "-o",
        s(&out),
        "--compression",
        "gzip",
        "--split-size",
        "1M",
    ]);
    assert_eq!(code, 0, "{err}");
    let parts: Vec<PathBuf> = (1..=3)
        .map(|i| kit.path(&format!("split.bundle.part{i:03}")))
        .collect();
    for p in &parts {
        assert!(p.exists(), "{} missing: {stdout}", p.display());
        assert!(std::fs::metadata(p).expect("part").len() <= 1_000_000);
    }
    let (code, _, err) = kit.verify(&[&parts[2], &parts[0], &parts[1]]);
    assert_eq!(code, 0, "{err}");
    let (code, stdout, err) = kit.import(&[&parts[1], &parts[2], &parts[0]], &[]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("shared/images/calico/cni:3.28.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("shared/images/tools/busybox:1.36"),
        "{stdout}"
    );
    let tag: String = kit
        .db()
        .query_row(
            "SELECT t.digest FROM registry_tags t JOIN registry_repositories r ON r.id = t.repository_id WHERE r.name = 'shared/images/calico/cni' AND t.tag = '3.28.0'",
            [],
            |r| r.get(0),
        )
        .expect("tag");
    assert_eq!(tag, sha256(&a.manifest));
}

#[test]
fn trust_rollback_and_key_rotation_rules_hold() {
    let kit = Kit::new();
    let work = kit.path("src");
    Image::new(4, 10_000).write_layout(&work.join("img"));
    let recipe_for = |version: &str| {
        write_recipe(
            &work,
            &format!(
                "[bundle]\nname = \"platform\"\nversion = \"{version}\"\n[[layout]]\npath = \"img\"\nkind = \"container-image\"\nname = \"app\"\nversion = \"v1\"\n"
            ),
        )
    };
    let other = kit.path("other.pem");
    assert_eq!(cli(&["bundle", "keygen", "-o", s(&other)]).0, 0);
    let other_pub = kit.path("other.pem.pub");
    let build = |version: &str, key: &Path, extra: &[&str]| {
        let out = kit.path(&format!(
            "platform-{version}-{}.bundle",
            key.file_name().and_then(|n| n.to_str()).unwrap_or("k")
        ));
        let recipe = recipe_for(version);
        let mut args = vec![
            "bundle",
            "build",
            s(&recipe),
            "--key",
            s(key),
            "-o",
            s(&out),
        ];
        args.extend_from_slice(extra);
        let (code, _, err) = cli(&args);
        assert_eq!(code, 0, "{err}");
        out
    };
    // Signed by a key the appliance does not trust: refused, unless allowed once (audited).
    let untrusted = build("1.0.0", &other, &[]);
    let (code, _, err) = kit.import(&[&untrusted], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("none of which is trusted") && err.contains("--allow-untrusted"),
        "{err}"
    );
    assert_eq!(kit.count("bundle_imports"), 0);
    let (code, stdout, err) = kit.import(&[&untrusted], &["--allow-untrusted"]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("not signed by a trusted key"), "{stdout}");
    let outcome: String = kit
        .db()
        .query_row(
            "SELECT outcome FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("audit");
    assert!(
        outcome.contains("allowed by --allow-untrusted"),
        "{outcome}"
    );

    // A newer version with a rotation statement signed by the trusted key: imported, and the
    // new key is trusted from then on; the old one retired.
    let old_id = keys::key_id(&keys::read_public(&kit.public).expect("pub"));
    let rotated = build(
        "2.0.0",
        &kit.key,
        &["--trust-add", s(&other_pub), "--trust-remove", &old_id],
    );
    let (code, stdout, err) = kit.import(&[&rotated], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("1 added, 1 removed"), "{stdout}");
    let (_, list, _) = cli(&["bundle", "trust", "list", "--data-dir", s(&kit.data)]);
    let new_id = keys::key_id(&keys::read_public(&other_pub).expect("pub"));
    assert!(list.contains(&new_id) && !list.contains(&old_id), "{list}");

    // Rollback protection: an older version is refused unless forced.
    let older = build("1.5.0", &other, &[]);
    let (code, _, err) = kit.import(&[&older], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("older than 2.0.0") && err.contains("--allow-downgrade"),
        "{err}"
    );
    let (code, _, err) = kit.import(&[&older], &["--allow-downgrade"]);
    assert_eq!(code, 0, "{err}");
    // The old key no longer opens the door.
    let after = build("3.0.0", &kit.key, &[]);
    let (code, _, err) = kit.import(&[&after], &[]);
    assert_eq!(code, 1);
    assert!(err.contains(&old_id), "{err}");
}

// ---- hostile corpus -----------------------------------------------------------------------

/// One tar entry, written byte for byte as given (no path checks), so tests can say anything.
#[derive(Clone)]
struct Raw {
    name: String,
    kind: tar::EntryType,
    data: Vec<u8>,
    link: Option<String>,
}

fn file(name: &str, data: &[u8]) -> Raw {
    Raw {
        name: name.into(),
        kind: tar::EntryType::Regular,
        data: data.to_vec(),
        link: None,
    }
}

fn tar_of(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(e.kind);
        h.set_mode(0o644);
        h.set_size(e.data.len() as u64);
        h.set_mtime(1_700_000_000);
        if e.kind == tar::EntryType::Char {
            h.set_device_major(1).expect("major");
            h.set_device_minor(3).expect("minor");
        }
        let b = h.as_mut_bytes();
        b[..100].fill(0);
        b[..e.name.len()].copy_from_slice(e.name.as_bytes());
        if let Some(l) = &e.link {
            b[157..257].fill(0);
            b[157..157 + l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
    match c {
        Compression::Zstd => zstd::encode_all(data, 3).expect("zstd"),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).expect("gzip");
            e.finish().expect("gzip")
        }
    }
}

/// Write a compressed payload as `parts` part files `<base>.N`; returns their paths.
fn write_parts(
    base: &Path,
    id: uuid::Uuid,
    c: Compression,
    payload: &[u8],
    parts: usize,
) -> Vec<PathBuf> {
    let chunk = payload.len().div_ceil(parts).max(1);
    let mut paths = Vec::new();
    for (i, piece) in payload.chunks(chunk).enumerate() {
        let h = PartHeader {
            bundle_id: id,
            index: i as u32 + 1,
            count: parts as u32,
            payload_len: piece.len() as u64,
            compression: c,
        };
        let p = if parts == 1 {
            base.to_path_buf()
        } else {
            PathBuf::from(format!("{}.{}", s(base), i + 1))
        };
        let mut bytes = h.encode().to_vec();
        bytes.extend_from_slice(piece);
        std::fs::write(&p, bytes).expect("part");
        paths.push(p);
    }
    paths
}

/// The parts of a well-formed bundle, to break in one way per case.
#[derive(Clone)]
struct Spec {
    manifest: Manifest,
    /// Replaces the serialized manifest when set (bytes signed as they are).
    manifest_bytes: Option<Vec<u8>>,
    /// Sign with these keys (after any change to the manifest).
    signers: Vec<ed25519_dalek::SigningKey>,
    /// Change the signature file after signing.
    sig_override: Option<Vec<u8>>,
    /// Entries after bundle.json and bundle.sig.
    entries: Vec<Raw>,
    /// Entries before bundle.json (to test order).
    before: Vec<Raw>,
    omit_sig: bool,
    compression: Compression,
    parts: usize,
    /// Bytes appended to the tar stream before compression.
    trailing: Vec<u8>,
}

impl Spec {
    fn good(key: &ed25519_dalek::SigningKey) -> Spec {
        let image = Image::new(11, 64 * 1024);
        let notes = b"operator notes\n".to_vec();
        let oci_layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();
        let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": sha256(&image.manifest), "size": image.manifest.len(),
             "annotations": {"org.opencontainers.image.ref.name": "images/demo/app:v1"}}]}))
        .expect("index");
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            bundle_id: uuid::Uuid::new_v4(),
            name: "hostile".into(),
            version: "1.0.0".into(),
            created: "2025-11-21T07:00:00Z".into(),
            min_appliance_version: "0.1.0".into(),
            description: String::new(),
            artifacts: vec![
                image.artifact("demo/app", "v1"),
                Artifact {
                    kind: ArtifactKind::File,
                    name: "notes".into(),
                    version: "1".into(),
                    media_type: "text/plain".into(),
                    size: notes.len() as u64,
                    sha256: hex_of(&notes),
                    blobs: vec![],
                    file_name: Some("notes.txt".into()),
                },
            ],
            layout: vec![
                LayoutFile {
                    path: "oci-layout".into(),
                    size: oci_layout.len() as u64,
                    sha256: hex_of(&oci_layout),
                },
                LayoutFile {
                    path: "index.json".into(),
                    size: index.len() as u64,
                    sha256: hex_of(&index),
                },
            ],
            trust: TrustChanges::default(),
        };
        let blob = |b: &[u8]| file(&format!("blobs/sha256/{}", hex_of(b)), b);
        Spec {
            manifest,
            manifest_bytes: None,
            signers: vec![key.clone()],
            sig_override: None,
            entries: vec![
                file("oci-layout", &oci_layout),
                file("index.json", &index),
                blob(&image.manifest),
                blob(&image.config),
                blob(&image.layer),
                blob(&notes),
            ],
            before: vec![],
            omit_sig: false,
            compression: Compression::Zstd,
            parts: 1,
            trailing: vec![],
        }
    }

    fn layer_index(&self) -> usize {
        4
    }

    fn tar(&self) -> Vec<u8> {
        let mbytes = self
            .manifest_bytes
            .clone()
            .unwrap_or_else(|| serde_json::to_vec_pretty(&self.manifest).expect("manifest"));
        let refs: Vec<&ed25519_dalek::SigningKey> = self.signers.iter().collect();
        let sig = self
            .sig_override
            .clone()
            .unwrap_or_else(|| serde_json::to_vec(&keys::sign(&mbytes, &refs)).expect("sig"));
        let mut all = self.before.clone();
        all.push(file("bundle.json", &mbytes));
        if !self.omit_sig {
            all.push(file("bundle.sig", &sig));
        }
        all.extend(self.entries.iter().cloned());
        let mut t = tar_of(&all);
        t.extend_from_slice(&self.trailing);
        t
    }

    fn write(&self, base: &Path) -> Vec<PathBuf> {
        let payload = compress(self.compression, &self.tar());
        write_parts(
            base,
            self.manifest.bundle_id,
            self.compression,
            &payload,
            self.parts,
        )
    }
}

/// A corpus case: how to write it, and what both commands must say.
struct Case {
    name: &'static str,
    files: Vec<PathBuf>,
    says: &'static str,
}

#[test]
fn hostile_bundles_are_refused_by_verify_and_import_and_change_nothing() {
    let kit = Kit::new();
    let key = keys::read_private(&kit.key).expect("key");
    let stranger = keys::generate();
    let dir = kit.path("corpus");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let good = Spec::good(&key);
    let at = |name: &str| dir.join(format!("{name}.bundle"));
    let mut cases: Vec<Case> = Vec::new();
    let mut add = |name: &'static str, says: &'static str, spec: Spec| {
        let files = spec.write(&at(name));
        cases.push(Case { name, files, says });
    };

    // Control: the unbroken bundle passes verify (it is imported at the very end).
    let control = good.write(&at("control"));
    let (code, out, err) = kit.verify(&[&control[0]]);
    assert_eq!(code, 0, "control bundle: {out}{err}");

    // Signatures.
    let mut sp = good.clone();
    let mut bytes = serde_json::to_vec_pretty(&sp.manifest).expect("json");
    let refs = [&key];
    sp.sig_override = Some(serde_json::to_vec(&keys::sign(&bytes, &refs)).expect("sig"));
    let pos = bytes
        .windows(7)
        .position(|w| w == b"hostile")
        .expect("name");
    bytes[pos] = b'H'; // signed bytes altered after signing
    sp.manifest_bytes = Some(bytes);
    add("bad-signature", "does not match the signed metadata", sp);
    let mut sp = good.clone();
    sp.omit_sig = true;
    add("missing-signature", "lacks bundle.sig", sp);
    let mut sp = good.clone();
    sp.signers = vec![];
    add("unsigned", "is not signed", sp);
    let mut sp = good.clone();
    sp.signers = vec![stranger.clone()];
    add("unknown-signer", "none of which is trusted", sp);
    let mut sp = good.clone();
    let mut sig: Value = serde_json::from_slice(&{
        let b = serde_json::to_vec_pretty(&sp.manifest).expect("json");
        serde_json::to_vec(&keys::sign(&b, &refs)).expect("sig")
    })
    .expect("sig json");
    sig["signatures"][0]["key_id"] = json!(keys::key_id(&stranger.verifying_key()));
    sp.sig_override = Some(serde_json::to_vec(&sig).expect("sig"));
    add("key-id-mismatch", "does not match the public key", sp);

    // Content.
    let li = good.layer_index();
    let mut sp = good.clone();
    sp.entries[li].data[1000] ^= 0xff;
    add("tampered-artifact", "the signed metadata says sha256:", sp);
    let mut sp = good.clone();
    sp.entries[li].data.pop();
    add("wrong-size", "bytes, the signed metadata says 65536", sp);
    let mut sp = good.clone();
    sp.entries.remove(5);
    add("missing-artifact", "needed by file notes 1", sp);
    let mut sp = good.clone();
    let extra = b"smuggled".to_vec();
    sp.entries
        .push(file(&format!("blobs/sha256/{}", hex_of(&extra)), &extra));
    add(
        "extra-unlisted-entry",
        "is not listed in the signed metadata",
        sp,
    );
    let mut sp = good.clone();
    let dup = sp.entries[li].clone();
    sp.entries.push(dup);
    add("duplicate-entry", "appears twice", sp);
    let mut sp = good.clone();
    let again = sp.entries[0].clone();
    sp.before.push(again);
    add("manifest-not-first", "bundle.json as its first entry", sp);

    // Names and types.
    let mut sp = good.clone();
    sp.entries
        .insert(0, file("/etc/cron.d/evil", b"* * * * * root sh\n"));
    add("absolute-path", "absolute path", sp);
    let mut sp = good.clone();
    sp.entries.insert(0, file("blobs/../../evil", b"x"));
    add("dotdot-path", "climbs out of the bundle root", sp);
    let mut sp = good.clone();
    sp.entries.insert(
        0,
        Raw {
            name: "blobs/sha256/link".into(),
            kind: tar::EntryType::Symlink,
            data: vec![],
            link: Some("/etc/passwd".into()),
        },
    );
    add("symlink-escape", "symbolic link to \"/etc/passwd\"", sp);
    let mut sp = good.clone();
    sp.entries.insert(
        0,
        Raw {
            name: "blobs/sha256/hard".into(),
            kind: tar::EntryType::Link,
            data: vec![],
            link: Some("../../../etc/shadow".into()),
        },
    );
    add(
        "hardlink-escape",
        "hard link to \"../../../etc/shadow\"",
        sp,
    );
    let mut sp = good.clone();
    sp.entries.insert(
        0,
        Raw {
            name: "dev-null".into(),
            kind: tar::EntryType::Char,
            data: vec![],
            link: None,
        },
    );
    add("device-file", "character device", sp);
    let mut sp = good.clone();
    sp.entries.insert(
        0,
        Raw {
            name: "fifo".into(),
            kind: tar::EntryType::Fifo,
            data: vec![],
            link: None,
        },
    );
    add("named-pipe", "named pipe", sp);

    // Metadata.
    let mut sp = good.clone();
    sp.manifest.description = "x".repeat(5 * 1024 * 1024);
    add("oversized-manifest", "bundle.json is", sp);
    let mut sp = good.clone();
    sp.manifest.format_version = 2;
    add(
        "unknown-format-version",
        "format version 2 is not supported",
        sp,
    );
    let mut sp = good.clone();
    sp.manifest.min_appliance_version = "99.0.0".into();
    add("appliance-too-old", "needs palisade 99.0.0 or newer", sp);
    let mut sp = good.clone();
    sp.manifest.artifacts[1].size = 1 << 40;
    add("bomb-declared-ratio", "more than 1000 to 1", sp);
    let mut sp = good.clone();
    sp.trailing = vec![0u8; 3 * 1024 * 1024];
    add("bomb-trailing-zeros", "followed by unexpected data", sp);
    let mut sp = good.clone();
    sp.manifest.artifacts[0].name = "../../etc".into();
    add("bad-repository-name", "not a valid repository name", sp);

    // Stream and parts.
    let mut sp = good.clone();
    sp.manifest.bundle_id = uuid::Uuid::new_v4();
    let files = {
        let payload = compress(Compression::Zstd, &sp.tar());
        write_parts(
            &at("part-header-id-mismatch"),
            good.manifest.bundle_id,
            Compression::Zstd,
            &payload,
            1,
        )
    };
    cases.push(Case {
        name: "part-header-id-mismatch",
        files,
        says: "the parts belong to another bundle",
    });

    let full = good.write(&at("truncated"));
    let len = std::fs::metadata(&full[0]).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&full[0])
        .and_then(|f| f.set_len(len - 5000))
        .expect("truncate");
    cases.push(Case {
        name: "truncated-file",
        files: full,
        says: "is truncated",
    });

    let payload = compress(Compression::Zstd, &good.tar());
    let cut = &payload[..payload.len() - 3000];
    let files = write_parts(
        &at("truncated-stream"),
        good.manifest.bundle_id,
        Compression::Zstd,
        cut,
        1,
    );
    cases.push(Case {
        name: "truncated-stream",
        files,
        says: "corrupt",
    });

    let mut bad = payload.clone();
    bad[..4].copy_from_slice(b"JUNK");
    let files = write_parts(
        &at("corrupt-zstd"),
        good.manifest.bundle_id,
        Compression::Zstd,
        &bad,
        1,
    );
    cases.push(Case {
        name: "corrupt-zstd",
        files,
        says: "compressed stream is corrupt",
    });

    let mut gz = compress(Compression::Gzip, &good.tar());
    gz[0] = 0;
    let files = write_parts(
        &at("corrupt-gzip"),
        good.manifest.bundle_id,
        Compression::Gzip,
        &gz,
        1,
    );
    cases.push(Case {
        name: "corrupt-gzip",
        files,
        says: "compressed stream is corrupt",
    });

    std::fs::write(at("not-a-bundle"), noise(5, 4096)).expect("write");
    cases.push(Case {
        name: "not-a-bundle",
        files: vec![at("not-a-bundle")],
        says: "is not a bundle part",
    });

    let mut sp = good.clone();
    sp.parts = 3;
    let three = sp.write(&at("split"));
    cases.push(Case {
        name: "split-part-missing",
        files: vec![three[2].clone(), three[0].clone()],
        says: "part 2 of 3 is missing",
    });
    cases.push(Case {
        name: "split-part-duplicated",
        files: vec![
            three[0].clone(),
            three[1].clone(),
            three[1].clone(),
            three[2].clone(),
        ],
        says: "was given twice",
    });
    let mut other = good.clone();
    other.manifest.bundle_id = uuid::Uuid::new_v4();
    other.parts = 3;
    let foreign = other.write(&at("other"));
    cases.push(Case {
        name: "split-part-from-another-bundle",
        files: vec![three[0].clone(), foreign[1].clone(), three[2].clone()],
        says: "give the parts of one bundle",
    });

    assert!(cases.len() >= 20, "{} cases", cases.len());
    let before = kit.snapshot();
    for c in &cases {
        let files: Vec<&Path> = c.files.iter().map(PathBuf::as_path).collect();
        let (code, out, err) = kit.verify(&files);
        assert_eq!(
            code, 3,
            "{}: verify should refuse (exit 3): {out}{err}",
            c.name
        );
        assert!(
            err.contains(c.says),
            "{}: verify says {err:?}, expected it to name {:?}",
            c.name,
            c.says
        );
        let (code, out, err) = kit.import(&files, &[]);
        eprintln!("{:<32} {}", c.name, err.trim());
        assert_eq!(code, 1, "{}: import should refuse: {out}{err}", c.name);
        assert!(
            err.contains(c.says),
            "{}: import says {err:?}, expected it to name {:?}",
            c.name,
            c.says
        );
        assert_eq!(
            kit.snapshot(),
            before,
            "{}: the data directory changed",
            c.name
        );
        let staged = crate::support::files_under(&kit.data.join("staging"));
        assert!(
            staged.is_empty(),
            "{}: files left in staging: {staged:?}",
            c.name
        );
    }
    // After all that, the unbroken bundle still imports.
    let (code, out, err) = kit.import(&[&control[0]], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("shared/images/demo/app:v1"), "{out}");
}

// ---- crash safety -------------------------------------------------------------------------

/// Blob files of the registry and artifacts, with inode and mtime.
fn stored(data: &Path) -> BTreeMap<PathBuf, (u64, i64, i64)> {
    let mut out = BTreeMap::new();
    for root in ["registry/blobs", "artifacts"] {
        for p in crate::support::files_under(&data.join(root)) {
            let m = std::fs::metadata(&p).expect("meta");
            out.insert(p, (m.ino(), m.mtime(), m.mtime_nsec()));
        }
    }
    out
}

#[test]
fn import_killed_at_any_point_is_consistent_and_a_rerun_completes_without_rewriting_blobs() {
    let kit = Kit::new();
    let work = kit.path("src");
    let mut recipe = String::from("[bundle]\nname = \"big\"\nversion = \"1.0.0\"\n");
    for i in 0..3u64 {
        Image::new(100 + i, 12 * 1024 * 1024).write_layout(&work.join(format!("img{i}")));
        recipe.push_str(&format!(
            "[[layout]]\npath = \"img{i}\"\nkind = \"container-image\"\nname = \"big/img{i}\"\nversion = \"v1\"\n"
        ));
    }
    std::fs::create_dir_all(work.join("files")).expect("mkdir");
    std::fs::write(work.join("files/disk.iso"), noise(7, 6 * 1024 * 1024)).expect("iso");
    recipe.push_str("[[file]]\npath = \"files/disk.iso\"\nname = \"installer\"\nversion = \"1\"\nkind = \"appliance-image\"\n");
    let recipe = write_recipe(&work, &recipe);
    let out = kit.path("big.bundle");
    let (code, _, err) = cli(&[
        "bundle",
        "build",
        s(&recipe),
        "--key",
        s(&kit.key),
        "-o",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");

    // How long an undisturbed import takes on this machine, on a scratch copy of the data dir.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen: BTreeMap<PathBuf, (u64, i64, i64)> = BTreeMap::new();
    let mut kills = 0;
    for delay_ms in [30u64, 120, 300, 600, 1000, 1500, 2500, 4000] {
        assert!(Instant::now() < deadline, "crash loop took too long");
        let mut child = Command::new(exe())
            .args(["bundle", "import", "--data-dir", s(&kit.data), s(&out)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn import");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let finished = child.try_wait().expect("wait").is_some();
        eprintln!(
            "import after {delay_ms} ms: {}",
            if finished { "finished" } else { "killed" }
        );
        if !finished {
            child.kill().expect("SIGKILL");
            kills += 1;
        }
        let _ = child.wait();
        // Consistent at every point: every blob the database references is present and whole.
        let (code, o, e) = cli(&["admin", "check", "--deep", "--data-dir", s(&kit.data)]);
        assert_eq!(code, 0, "after a kill at {delay_ms} ms: {o}{e}");
        // Blobs stored by an earlier run are never rewritten.
        let now = stored(&kit.data);
        for (p, meta) in &seen {
            if let Some(m) = now.get(p) {
                assert_eq!(m, meta, "{} was rewritten", p.display());
            }
        }
        seen.extend(now);
        if finished {
            break;
        }
    }
    assert!(kills >= 1, "the import was never interrupted");
    let (code, stdout, err) = kit.import(&[&out], &[]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert_eq!(kit.count("bundle_imports"), 1);
    assert_eq!(kit.count("bundle_artifacts"), 4);
    let now = stored(&kit.data);
    for (p, meta) in &seen {
        if let Some(m) = now.get(p) {
            assert_eq!(m, meta, "{} was rewritten by the final run", p.display());
        }
    }
    let (code, o, e) = cli(&["admin", "check", "--deep", "--data-dir", s(&kit.data)]);
    assert_eq!(code, 0, "{o}{e}");
    assert!(crate::support::files_under(&kit.data.join("staging")).is_empty());
}

/// Run a shell pipeline, requiring success; returns stdout.
fn sh(script: &str) -> Vec<u8> {
    let o = Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("sh");
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

#[test]
fn a_bundle_signed_with_openssl_as_the_format_document_shows_verifies_and_imports() {
    let kit = Kit::new();
    let d = kit.path("openssl");
    std::fs::create_dir_all(&d).expect("mkdir");
    let key = d.join("key.pem");
    sh(&format!(
        "openssl genpkey -algorithm ed25519 -out {}",
        s(&key)
    ));
    sh(&format!(
        "openssl pkey -in {k} -pubout -out {k}.pub",
        k = s(&key)
    ));
    let (code, _, err) = cli(&[
        "bundle",
        "trust",
        "add",
        &format!("{}.pub", s(&key)),
        "--data-dir",
        s(&kit.data),
    ]);
    assert_eq!(code, 0, "{err}");
    // The metadata as some other producer writes it (compact JSON), signed by openssl.
    let mut spec = Spec::good(&keys::generate());
    let manifest = serde_json::to_vec(&spec.manifest).expect("json");
    let mpath = d.join("bundle.json");
    std::fs::write(&mpath, &manifest).expect("write");
    let b64 = |script: String| {
        String::from_utf8(sh(&script))
            .expect("utf-8")
            .trim()
            .to_string()
    };
    let public = b64(format!(
        "openssl pkey -in {} -pubout -outform DER | tail -c 32 | base64",
        s(&key)
    ));
    let key_id = b64(format!(
        "openssl pkey -in {} -pubout -outform DER | tail -c 32 | sha256sum | cut -c1-64",
        s(&key)
    ));
    let signature = b64(format!(
        "openssl pkeyutl -sign -inkey {} -rawin -in {} | base64 -w0",
        s(&key),
        s(&mpath)
    ));
    spec.manifest_bytes = Some(manifest);
    spec.sig_override = Some(
        serde_json::to_vec(&json!({"signatures": [
            {"key_id": key_id, "public_key": public, "signature": signature}
        ]}))
        .expect("sig"),
    );
    let files = spec.write(&d.join("third-party.bundle"));
    let (code, out, err) = cli(&[
        "bundle",
        "verify",
        "--trusted-key",
        &format!("{}.pub", s(&key)),
        s(&files[0]),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = kit.import(&[&files[0]], &[]);
    assert_eq!(code, 0, "{out}{err}");
    // And palisade signs with an openssl-made key.
    let recipe_dir = kit.path("r");
    Image::new(21, 1000).write_layout(&recipe_dir.join("img"));
    let recipe = write_recipe(
        &recipe_dir,
        "[bundle]\nname = \"o\"\nversion = \"1.0.0\"\n[[layout]]\npath = \"img\"\nkind = \"container-image\"\nname = \"p\"\nversion = \"1\"\n",
    );
    let out_b = kit.path("o.bundle");
    let (code, _, err) = cli(&[
        "bundle",
        "build",
        s(&recipe),
        "--key",
        s(&key),
        "-o",
        s(&out_b),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&[
        "bundle",
        "verify",
        "--trusted-key",
        &format!("{}.pub", s(&key)),
        s(&out_b),
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn system_admins_manage_trusted_bundle_keys_through_the_api_and_import_honours_them() {
    let kit = Kit::new();
    let other = kit.path("api.pem");
    assert_eq!(cli(&["bundle", "keygen", "-o", s(&other)]).0, 0);
    let pem = std::fs::read_to_string(kit.path("api.pem.pub")).expect("pub");
    let id = keys::key_id(&keys::parse_public(&pem).expect("key"));
    let mut app = TestApp::start_in(&kit.data, &[]);
    let admin = app.login_token("admin", PASSWORD).await;
    let (status, list) = admin.get("/v1/settings/bundle-keys").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(1),
        "the key trusted offline: {list}"
    );
    let (status, body) = admin
        .post(
            "/v1/settings/bundle-keys",
            json!({"public_key": pem, "comment": "2027 key"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["key_id"], id);
    assert_eq!(body["added_by"], "admin");
    let (status, body) = admin
        .post("/v1/settings/bundle-keys", json!({"public_key": pem}))
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = admin
        .post(
            "/v1/settings/bundle-keys",
            json!({"public_key": "not a key"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("public_key"), "{body}");
    // Not for other users.
    let t = crate::support::tenant_fixture(&admin, "acme").await;
    let viewer = crate::support::user_with_role(
        &app,
        &admin,
        "acme-admin",
        Some(&t.tenant),
        "tenant-admin",
        json!({"tenant_id": t.tenant}),
    )
    .await;
    assert_eq!(viewer.get("/v1/settings/bundle-keys").await.0, 403);
    let r = viewer
        .send(
            Method::DELETE,
            &format!("/v1/settings/bundle-keys/{id}"),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 403);
    let (_, audit) = admin.get("/v1/audit?action=bundle-keys").await;
    assert!(
        audit.as_array().is_some_and(|a| a.len() >= 3),
        "changes and refusals are audited: {audit}"
    );
    app.stop();

    // A bundle signed by the key added through the API imports.
    let work = kit.path("src");
    Image::new(31, 5000).write_layout(&work.join("img"));
    let recipe = write_recipe(
        &work,
        "[bundle]\nname = \"api\"\nversion = \"1.0.0\"\n[[layout]]\npath = \"img\"\nkind = \"container-image\"\nname = \"a\"\nversion = \"v1\"\n",
    );
    let out = kit.path("api.bundle");
    assert_eq!(
        cli(&[
            "bundle",
            "build",
            s(&recipe),
            "--key",
            s(&other),
            "-o",
            s(&out)
        ])
        .0,
        0
    );
    let (code, o, e) = kit.import(&[&out], &[]);
    assert_eq!(code, 0, "{o}{e}");

    // Removed through the API, the key no longer opens the door.
    let app = TestApp::start_in(&kit.data, &[]);
    let admin = app.login_token("admin", PASSWORD).await;
    let r = admin
        .send(
            Method::DELETE,
            &format!("/v1/settings/bundle-keys/{id}"),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = admin
        .send(
            Method::DELETE,
            &format!("/v1/settings/bundle-keys/{id}"),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 404);
    drop(app);
    let out2 = kit.path("api2.bundle");
    let recipe = write_recipe(
        &work,
        "[bundle]\nname = \"api\"\nversion = \"1.1.0\"\n[[layout]]\npath = \"img\"\nkind = \"container-image\"\nname = \"a\"\nversion = \"v1\"\n",
    );
    assert_eq!(
        cli(&[
            "bundle",
            "build",
            s(&recipe),
            "--key",
            s(&other),
            "-o",
            s(&out2)
        ])
        .0,
        0
    );
    let (code, _, e) = kit.import(&[&out2], &[]);
    assert_eq!(code, 1);
    assert!(e.contains("none of which is trusted"), "{e}");
}

#[tokio::test]
async fn a_bundle_uploaded_in_resumable_chunks_through_the_api_is_imported_into_the_running_appliance(
) {
    let kit = Kit::new();
    let work = kit.path("src");
    let image = Image::new(41, 300_000);
    image.write_layout(&work.join("img"));
    let recipe = write_recipe(
        &work,
        &format!(
            "[bundle]\nname = \"uploaded\"\nversion = \"1.0.0\"\n[[layout]]\npath = \"img\"\nkind = \"container-image\"\nname = \"csi/demo\"\nversion = \"0.3.0\"\n[[pack]]\npath = \"{}\"\n",
            s(&Path::new(env!("CARGO_MANIFEST_DIR")).join("bundles/packs/csi-local-path"))
        ),
    );
    let out = kit.path("up.bundle");
    assert_eq!(
        cli(&[
            "bundle",
            "build",
            s(&recipe),
            "--key",
            s(&kit.key),
            "-o",
            s(&out)
        ])
        .0,
        0
    );
    let bytes = std::fs::read(&out).expect("bundle");
    let stranger = kit.path("stranger.pem");
    assert_eq!(cli(&["bundle", "keygen", "-o", s(&stranger)]).0, 0);
    let out2 = kit.path("untrusted.bundle");
    let recipe2 = write_recipe(
        &work,
        "[bundle]\nname = \"other\"\nversion = \"1.0.0\"\n[[layout]]\npath = \"img\"\nkind = \"container-image\"\nname = \"x/y\"\nversion = \"1\"\n",
    );
    assert_eq!(
        cli(&[
            "bundle",
            "build",
            s(&recipe2),
            "--key",
            s(&stranger),
            "-o",
            s(&out2)
        ])
        .0,
        0
    );

    let app = TestApp::start_in(&kit.data, &[]);
    let admin = app.login_token("admin", PASSWORD).await;
    let upload = |bytes: Vec<u8>, offset: u64, id: String| {
        let admin = admin.clone();
        async move {
            crate::support::call(
                &admin,
                Method::PATCH,
                &format!("/v1/bundle-uploads/{id}"),
                &[
                    ("content-type", "application/octet-stream"),
                    ("upload-offset", &offset.to_string()),
                ],
                Some(bytes),
            )
            .await
        }
    };
    let (status, created) = admin.post("/v1/bundle-uploads", json!({})).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    // First half, then a chunk at the wrong offset (as after a dropped connection), then
    // resume from the offset the session reports.
    let half = bytes.len() / 2;
    let r = upload(bytes[..half].to_vec(), 0, id.clone()).await;
    assert_eq!(r.status, 204, "{}", r.describe());
    assert_eq!(r.header("upload-offset"), half.to_string());
    // A small wrong chunk: the server answers 409 without reading a body, and a large body
    // still being written when it closes would end in a broken pipe instead of the answer.
    let wrong = bytes[half..].len().min(1024);
    let r = upload(bytes[half..half + wrong].to_vec(), 0, id.clone()).await;
    assert_eq!(r.status, 409, "{}", r.describe());
    assert!(String::from_utf8_lossy(&r.body).contains(&format!("Upload-Offset: {half}")));
    let (_, state) = admin.get(&format!("/v1/bundle-uploads/{id}")).await;
    let offset = state["offset"].as_u64().expect("offset");
    let r = upload(bytes[offset as usize..].to_vec(), offset, id.clone()).await;
    assert_eq!(r.status, 204, "{}", r.describe());
    let (status, body) = admin
        .post(&format!("/v1/bundle-uploads/{id}/import"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "uploaded");
    assert_eq!(body["trusted"], true);
    let r = plain(
        &admin,
        Method::GET,
        "/v2/shared/images/csi/demo/manifests/0.3.0",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.body, image.manifest);
    // The pack is in the registry and in the catalogue, under the manifest the tag names.
    let r = plain(
        &admin,
        Method::GET,
        "/v2/shared/packs/csi-local-path/manifests/0.0.28",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let (status, packs) = admin.get("/v1/packs?name=csi-local-path").await;
    assert_eq!(status, 200, "{packs}");
    let listed = &packs["items"][0];
    assert_eq!(listed["version"], "0.0.28", "{packs}");
    assert_eq!(listed["layer_type"], "storage", "{packs}");
    assert_eq!(
        listed["digest"],
        r.header("docker-content-digest"),
        "{packs}"
    );
    let (_, audit) = admin.get("/v1/audit?action=bundle%20import").await;
    assert!(
        audit.to_string().contains(&format!("API upload {id}")),
        "the audit says how the bundle came: {audit}"
    );
    assert_eq!(
        admin.get(&format!("/v1/bundle-uploads/{id}")).await.0,
        404,
        "session removed"
    );

    // An untrusted bundle is refused (nothing imported), then allowed once by the admin.
    let (_, created) = admin.post("/v1/bundle-uploads", json!({})).await;
    let id2 = created["id"].as_str().expect("id").to_string();
    let r = upload(std::fs::read(&out2).expect("bundle"), 0, id2.clone()).await;
    assert_eq!(r.status, 204, "{}", r.describe());
    let (status, body) = admin
        .post(&format!("/v1/bundle-uploads/{id2}/import"), json!({}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("none of which is trusted"),
        "{body}"
    );
    let r = plain(&admin, Method::GET, "/v2/shared/images/x/y/manifests/1").await;
    assert_eq!(r.status, 404);
    let (status, body) = admin
        .post(
            &format!("/v1/bundle-uploads/{id2}/import"),
            json!({"allow_untrusted": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["trusted"], false);
    let (_, audit) = admin.get("/v1/audit?action=bundle%20import").await;
    assert!(
        audit.to_string().contains("allowed by --allow-untrusted"),
        "{audit}"
    );
}

/// The whole connected-side path: a recipe naming a pack directory and an image by reference;
/// `bundle build` packages the pack and pulls the image (through a mirror, digest-pinned) from
/// a real registry, and the bundle verifies and imports.
#[test]
fn a_recipe_with_a_pack_and_a_pulled_image_builds_and_imports() {
    use crate::oci_pull::DockerRegistry;
    let kit = Kit::new();
    let registry = DockerRegistry::start();
    let work = kit.path("src");
    std::fs::create_dir_all(&work).expect("mkdir");
    let image = crate::registry::Image::build(&work);
    let src = work.join("layout");
    image.write_layout(&src, "v1");
    registry.push(&src, "v1", "library/app");
    let (manifest, _, _) = image.digests();
    let pack =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bundles/packs/metrics-server");
    let recipe = write_recipe(
        &work,
        &format!(
            r#"plain_http = ["{host}"]
[bundle]
name = "wired"
version = "1.0.0"
[[pack]]
path = "{pack}"
[[image]]
reference = "upstream.example:5000/library/app:v1"
digest = "{manifest}"
[mirror]
"upstream.example:5000" = "{host}"
"#,
            host = registry.host,
            pack = s(&pack),
        ),
    );
    let out = kit.path("wired.bundle");
    let (code, stdout, err) = cli(&[
        "bundle",
        "build",
        s(&recipe),
        "--key",
        s(&kit.key),
        "-o",
        s(&out),
    ]);
    assert_eq!(code, 0, "{stdout}{err}");
    let (code, stdout, err) = kit.verify(&[&out]);
    assert_eq!(code, 0, "{stdout}{err}");
    let (code, stdout, err) = cli(&["bundle", "inspect", s(&out)]);
    assert_eq!(code, 0, "{err}");
    for want in ["metrics-server", "pack", "container-image", "library/app"] {
        assert!(stdout.contains(want), "inspect lacks {want}: {stdout}");
    }
    let (code, stdout, err) = kit.import(&[&out], &[]);
    assert_eq!(code, 0, "{stdout}{err}");
    let tags: Vec<String> = kit
        .db()
        .prepare("SELECT r.name || ':' || t.tag FROM registry_tags t JOIN registry_repositories r ON r.id = t.repository_id ORDER BY 1")
        .expect("query")
        .query_map([], |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("tags");
    assert!(
        tags.iter()
            .any(|t| t.starts_with("shared/packs/metrics-server:")),
        "{tags:?}"
    );
    let (layer, digest): (String, String) = kit
        .db()
        .query_row(
            "SELECT layer_type, digest FROM packs WHERE name = 'metrics-server'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the imported pack is in the catalogue");
    assert_eq!(layer, "addon");
    let tagged: String = kit
        .db()
        .query_row(
            "SELECT t.digest FROM registry_tags t JOIN registry_repositories r ON r.id = t.repository_id WHERE r.name = 'shared/packs/metrics-server'",
            [],
            |r| r.get(0),
        )
        .expect("tag");
    assert_eq!(digest, tagged);
    assert!(
        tags.iter().any(|t| t.starts_with("shared/images/")),
        "{tags:?}"
    );

    // A pin the registry does not serve stops the build, naming both digests.
    let pinned = std::fs::read_to_string(&recipe)
        .expect("recipe")
        .replace(&manifest, &format!("sha256:{}", "0".repeat(64)));
    std::fs::write(&recipe, pinned).expect("recipe");
    let (code, _, err) = cli(&[
        "bundle",
        "build",
        s(&recipe),
        "--key",
        s(&kit.key),
        "-o",
        s(&kit.path("bad.bundle")),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&manifest) && err.contains("0000000000"),
        "{err}"
    );
    assert!(
        !kit.path("bad.bundle").exists(),
        "nothing written for a refused build"
    );
}

/// Append `bytes` at `offset` to upload session `id`.
async fn upload_chunk(
    api: &crate::support::Api,
    id: &str,
    offset: u64,
    bytes: &[u8],
) -> crate::support::Res {
    crate::support::call(
        api,
        Method::PATCH,
        &format!("/v1/bundle-uploads/{id}"),
        &[
            ("content-type", "application/octet-stream"),
            ("upload-offset", &offset.to_string()),
        ],
        Some(bytes.to_vec()),
    )
    .await
}

/// Wait (at most 15 s) until `path` no longer exists.
fn wait_until_gone(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if !path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    !path.exists()
}

/// The audit entries of the appliance, newest first.
async fn audit_entries(api: &crate::support::Api) -> Vec<Value> {
    let (status, entries) = api.get("/v1/audit?limit=1000").await;
    assert_eq!(status, 200, "{entries}");
    entries.as_array().expect("entries").clone()
}

#[tokio::test]
async fn idle_upload_sessions_expire_at_start_and_periodically_and_requests_on_them_say_start_again(
) {
    let kit = Kit::new();
    let uploads = kit.data.join("staging/uploads");
    std::fs::create_dir_all(&uploads).expect("mkdir");
    // Left by an appliance that stopped two days ago: idle for longer than the default 24 h.
    let old = "6f1c2b7a-4e1d-4c55-9b1e-2a9f4c1d0e11";
    let recent = "0d9e8f7a-1b2c-4d3e-8f4a-5b6c7d8e9f00";
    for (id, idle) in [(old, 48 * 3600), (recent, 3600)] {
        let mut f = std::fs::File::create(uploads.join(id)).expect("session file");
        f.write_all(b"partial bundle").expect("write");
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(idle))
            .expect("mtime");
    }
    let mut app = TestApp::start_in(&kit.data, &[]);
    let admin = app.login_token("admin", PASSWORD).await;
    assert!(
        wait_until_gone(&uploads.join(old)),
        "swept at start: {:?}",
        std::fs::read_dir(&uploads).map(|d| d.count())
    );
    let (status, body) = admin.get(&format!("/v1/bundle-uploads/{old}")).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["type"], "/problems/gone", "{body}");
    let detail = body["detail"].as_str().expect("detail");
    assert!(
        detail.contains("expired after 24h")
            && detail.contains("start again with POST /v1/bundle-uploads"),
        "{detail}"
    );
    let (status, body) = admin.get(&format!("/v1/bundle-uploads/{recent}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["offset"], 14, "an active session is kept");
    app.stop();

    // With a short expiry: a session that gets no chunk expires while the appliance runs.
    let app = TestApp::start_in(&kit.data, &["--bundle-upload-expiry", "2s"]);
    let admin = app.login_token("admin", PASSWORD).await;
    let (status, created) = admin.post("/v1/bundle-uploads", json!({})).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let r = upload_chunk(&admin, &id, 0, b"first chunk").await;
    assert_eq!(r.status, 204, "{}", r.describe());
    let file = uploads.join(&id);
    assert!(file.exists());
    // Two seconds idle: refused at once, whether or not the sweeper has run yet.
    std::thread::sleep(Duration::from_millis(2100));
    let r = upload_chunk(&admin, &id, 11, b"second chunk").await;
    assert_eq!(r.status, 410, "{}", r.describe());
    assert!(
        String::from_utf8_lossy(&r.body).contains("start again"),
        "{}",
        r.describe()
    );
    assert!(
        wait_until_gone(&file),
        "the sweeper removes the partial file"
    );
    for (method, path) in [
        (Method::GET, format!("/v1/bundle-uploads/{id}")),
        (Method::DELETE, format!("/v1/bundle-uploads/{id}")),
        (Method::POST, format!("/v1/bundle-uploads/{id}/import")),
    ] {
        let body = (method == Method::POST).then(|| json!({}));
        let r = admin.send(method.clone(), &path, body, &[]).await;
        assert_eq!(r.status, 410, "{method} {path}: {}", r.text);
    }
    let entries = audit_entries(&admin).await;
    for session in [old, recent, id.as_str()] {
        assert!(
            entries.iter().any(|e| e["action"] == "expire bundle upload"
                && e["actor"] == "palisade"
                && e["object"] == format!("/v1/bundle-uploads/{session}")),
            "expiry of {session} not audited"
        );
    }
    let (code, _, err) = run_cli(
        &[
            "serve",
            "--data-dir",
            s(&kit.path("other")),
            "--bundle-upload-expiry",
            "0h",
        ],
        None,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("longer than zero"), "{err}");
}

#[tokio::test]
async fn an_upload_audits_its_start_import_and_abort_and_refused_chunks_but_not_accepted_chunks() {
    let kit = Kit::new();
    let work = kit.path("src");
    let image = Image::new(77, 100_000);
    image.write_layout(&work.join("img"));
    let recipe = write_recipe(
        &work,
        "[bundle]\nname = \"audited\"\nversion = \"1.0.0\"\n[[layout]]\npath = \"img\"\nkind = \"container-image\"\nname = \"audit/demo\"\nversion = \"1\"\n",
    );
    let out = kit.path("audited.bundle");
    let (code, _, err) = cli(&[
        "bundle",
        "build",
        s(&recipe),
        "--key",
        s(&kit.key),
        "-o",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    let bytes = std::fs::read(&out).expect("bundle");
    let app = TestApp::start_in(&kit.data, &[]);
    let admin = app.login_token("admin", PASSWORD).await;
    let stranger = admin
        .create(
            "/v1/users",
            json!({"username": "viewer", "password": PASSWORD, "tenant_id": null}),
        )
        .await;
    assert_eq!(stranger["username"], "viewer");
    let viewer = app.login_token("viewer", PASSWORD).await;

    let (_, created) = admin.post("/v1/bundle-uploads", json!({})).await;
    let id = created["id"].as_str().expect("id").to_string();
    let chunks: Vec<&[u8]> = bytes.chunks(bytes.len() / 4 + 1).collect();
    assert_eq!(chunks.len(), 4);
    let mut offset = 0u64;
    for c in &chunks {
        let r = upload_chunk(&admin, &id, offset, c).await;
        assert_eq!(r.status, 204, "{}", r.describe());
        offset += c.len() as u64;
    }
    // A chunk refused to someone who is not a system admin is recorded.
    let r = upload_chunk(&viewer, &id, offset, b"intruder").await;
    assert_eq!(r.status, 403, "{}", r.describe());
    let (status, body) = admin
        .post(&format!("/v1/bundle-uploads/{id}/import"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, created) = admin.post("/v1/bundle-uploads", json!({})).await;
    let aborted = created["id"].as_str().expect("id").to_string();
    for (i, c) in chunks[..2].iter().enumerate() {
        let at = if i == 0 { 0 } else { chunks[0].len() as u64 };
        let r = upload_chunk(&admin, &aborted, at, c).await;
        assert_eq!(r.status, 204, "{}", r.describe());
    }
    let r = admin
        .send(
            Method::DELETE,
            &format!("/v1/bundle-uploads/{aborted}"),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);

    let entries = audit_entries(&admin).await;
    let of = |action: &str| -> Vec<&Value> {
        entries.iter().filter(|e| e["action"] == action).collect()
    };
    let started = of("POST /v1/bundle-uploads");
    assert_eq!(started.len(), 2, "{started:?}");
    for session in [&id, &aborted] {
        assert!(
            started.iter().any(|e| e["object"]
                .as_str()
                .is_some_and(|o| o.ends_with(&format!("-> {session}")))),
            "the start names the session {session}: {started:?}"
        );
    }
    let chunks_audited = of("PATCH /v1/bundle-uploads/{id}");
    assert_eq!(
        chunks_audited.len(),
        1,
        "only the refused chunk: {chunks_audited:?}"
    );
    assert_eq!(chunks_audited[0]["actor"], "viewer");
    assert!(chunks_audited[0]["outcome"]
        .as_str()
        .is_some_and(|o| o.starts_with("denied 403")));
    let imports = of("POST /v1/bundle-uploads/{id}/import");
    assert_eq!(imports.len(), 1);
    assert!(imports[0]["outcome"]
        .as_str()
        .is_some_and(|o| o.starts_with("success")));
    assert_eq!(of("DELETE /v1/bundle-uploads/{id}").len(), 1);
    assert!(
        entries.iter().any(|e| e["action"] == "bundle import"
            && e["object"]
                .as_str()
                .is_some_and(|o| o.starts_with("audited 1.0.0"))),
        "the import's own entry"
    );
}

/// An image listed as kind `pack` is refused at import, naming the artifact and the fix, and
/// nothing reaches the registry or the catalogue.
#[test]
fn an_image_listed_as_a_pack_is_refused_and_nothing_is_imported() {
    let kit = Kit::new();
    let work = kit.path("src");
    Image::new(61, 2000).write_layout(&work.join("img"));
    let recipe = write_recipe(
        &work,
        "[bundle]\nname = \"mislabelled\"\nversion = \"1.0.0\"\n[[layout]]\npath = \"img\"\nkind = \"pack\"\nname = \"cni-fake\"\nversion = \"1.0.0\"\n",
    );
    let out = kit.path("mislabelled.bundle");
    let (code, _, err) = cli(&[
        "bundle",
        "build",
        s(&recipe),
        "--key",
        s(&kit.key),
        "-o",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, stdout, err) = kit.import(&[&out], &[]);
    assert_ne!(code, 0, "{stdout}");
    assert!(
        err.contains("cni-fake")
            && err.contains("not a Palisade pack")
            && err.contains("container-image"),
        "{err}"
    );
    for table in ["packs", "registry_repositories", "bundle_imports"] {
        assert_eq!(kit.count(table), 0, "{table}");
    }
}

/// The sample recipe of `bundles/` builds, verifies and imports: every sample pack lands in
/// the catalogue and every image it names is pulled (from stand-ins pushed to Debian's
/// docker-registry, reached through the recipe's own `[mirror]` option).
#[test]
fn the_sample_recipe_builds_a_bundle_that_imports() {
    use crate::oci_pull::DockerRegistry;
    let kit = Kit::new();
    let registry = DockerRegistry::start();
    let work = kit.path("src");
    std::fs::create_dir_all(&work).expect("mkdir");
    let image = crate::registry::Image::build(&work);
    let bundles = Path::new(env!("CARGO_MANIFEST_DIR")).join("bundles");
    let text = std::fs::read_to_string(bundles.join("sample-platform.toml")).expect("recipe");
    let recipe: toml::Value = toml::from_str(&text).expect("recipe is TOML");
    let references: Vec<String> = recipe["image"]
        .as_array()
        .expect("[[image]]")
        .iter()
        .map(|i| i["reference"].as_str().expect("reference").to_string())
        .collect();
    assert!(references.len() >= 10, "{references:?}");
    for (i, reference) in references.iter().enumerate() {
        let path = reference
            .strip_prefix("mirror.example:5000/")
            .expect("the sample names its mirror");
        let (repo, tag) = path.rsplit_once(':').expect("a tag");
        let layout = work.join(format!("layout{i}"));
        image.write_layout(&layout, tag);
        registry.push(&layout, tag, repo);
    }
    // The sample as a site would adapt it: its mirror on this host, paths made absolute.
    let adapted = format!(
        "plain_http = [\"{host}\"]\n{}\n[mirror]\n\"mirror.example:5000\" = \"{host}\"\n",
        text.replace("path = \"", &format!("path = \"{}/", bundles.display())),
        host = registry.host,
    );
    let recipe_path = work.join("sample.toml");
    std::fs::write(&recipe_path, adapted).expect("recipe");
    let out = kit.path("sample.bundle");
    let (code, stdout, err) = cli(&[
        "bundle",
        "build",
        s(&recipe_path),
        "--key",
        s(&kit.key),
        "-o",
        s(&out),
    ]);
    assert_eq!(code, 0, "{stdout}{err}");
    let (code, stdout, err) = kit.verify(&[&out]);
    assert_eq!(code, 0, "{stdout}{err}");
    let (code, stdout, err) = kit.import(&[&out], &[]);
    assert_eq!(code, 0, "{stdout}{err}");
    let packs: Vec<(String, String)> = kit
        .db()
        .prepare("SELECT name, layer_type FROM packs ORDER BY name")
        .expect("query")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("packs");
    assert_eq!(
        packs,
        [
            ("cni-flannel", "network"),
            ("csi-local-path", "storage"),
            ("kubernetes-kubeadm", "kubernetes"),
            ("metrics-server", "addon"),
        ]
        .map(|(n, l)| (n.to_string(), l.to_string()))
    );
    let images: i64 = kit
        .db()
        .query_row(
            "SELECT count(*) FROM registry_tags t JOIN registry_repositories r ON r.id = t.repository_id WHERE r.name LIKE 'shared/images/%'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(images as usize, references.len());
}
