//! `oci_pull::pull_to_layout` against Debian's docker-registry (the CNCF distribution
//! registry) on loopback: images pushed into it with skopeo are pulled back and checked byte for
//! byte; credentials, digest pins, mirrors and platform selection.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisade::oci_pull::{pull_to_layout, Credentials, Platform, PullOptions};
use serde_json::{json, Value};

use crate::registry::{run_ok, Image};
use crate::support::{sha256, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST};

/// A docker-registry on a free loopback port, with its storage in a temporary directory;
/// killed when dropped.
struct DockerRegistry {
    child: Child,
    host: String,
    dir: tempfile::TempDir,
    credentials: Option<(String, String)>,
}

impl DockerRegistry {
    /// Start without authentication.
    fn start() -> DockerRegistry {
        DockerRegistry::start_with(None)
    }

    /// Start with htpasswd (bcrypt) authentication for one user.
    fn start_with_user(user: &str, password: &str) -> DockerRegistry {
        DockerRegistry::start_with(Some((user.into(), password.into())))
    }

    fn start_with(credentials: Option<(String, String)>) -> DockerRegistry {
        let dir = tempfile::tempdir().expect("tmp");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let host = format!("127.0.0.1:{port}");
        let mut auth = String::new();
        if let Some((user, password)) = &credentials {
            let htpasswd = dir.path().join("htpasswd");
            let out = run_ok(Command::new("htpasswd").args(["-Bbn", user, password]));
            std::fs::write(&htpasswd, out).expect("htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: palisade-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n  secret: test-only-secret\n{auth}",
                dir.path().join("storage").display()
            ),
        )
        .expect("config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&host).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {host}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        DockerRegistry {
            child,
            host,
            dir,
            credentials,
        }
    }

    /// skopeo with its own home and policy.
    fn skopeo(&self) -> Command {
        let policy = self.dir.path().join("policy.json");
        std::fs::write(
            &policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .expect("policy");
        let mut c = Command::new("skopeo");
        c.arg("--policy").arg(policy).env("HOME", self.dir.path());
        c
    }

    /// Push the layout `layout:tag` to `repo:tag` (all platforms of an index).
    fn push(&self, layout: &Path, tag: &str, repo: &str) {
        let mut cmd = self.skopeo();
        cmd.args([
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]);
        if let Some((u, p)) = &self.credentials {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        run_ok(
            cmd.arg(format!("oci:{}:{tag}", layout.display()))
                .arg(format!("docker://{}/{repo}:{tag}", self.host)),
        );
    }

    /// Options that speak plain HTTP to this registry.
    fn options(&self) -> PullOptions {
        let mut o = PullOptions::default();
        o.plain_http.insert(self.host.clone());
        o
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(layout.join("blobs/sha256").join(&digest["sha256:".len()..]))
        .unwrap_or_else(|e| panic!("{digest} missing from {}: {e}", layout.display()))
}

fn index_of(layout: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
        .expect("json")
}

/// A two-platform image (linux/amd64 and linux/arm64 sharing one layer) as an OCI layout.
fn write_multi_platform_layout(dir: &Path, tag: &str) -> (Vec<u8>, Vec<Vec<u8>>) {
    let layer = b"not really a tar, but a blob is a blob".to_vec();
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let put = |b: &[u8]| {
        std::fs::write(blobs.join(&sha256(b)["sha256:".len()..]), b).expect("blob");
    };
    put(&layer);
    let mut manifests = Vec::new();
    let mut descriptors = Vec::new();
    for arch in ["amd64", "arm64"] {
        let config = serde_json::to_vec(&json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]}})).expect("config");
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256(&layer), "size": layer.len()}]
        }))
        .expect("manifest");
        put(&config);
        put(&m);
        descriptors.push(json!({"mediaType": OCI_MANIFEST, "digest": sha256(&m), "size": m.len(), "platform": {"os": "linux", "architecture": arch}}));
        manifests.push(m);
    }
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}),
    )
    .expect("index");
    put(&index);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    std::fs::write(
        dir.join("index.json"),
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"mediaType": OCI_INDEX, "digest": sha256(&index), "size": index.len(), "annotations": {"org.opencontainers.image.ref.name": tag}}]}).to_string(),
    )
    .expect("index.json");
    (index, manifests)
}

fn tmp_layout(tmp: &tempfile::TempDir, name: &str) -> PathBuf {
    tmp.path().join(name)
}

#[tokio::test]
async fn pulls_an_image_and_every_platform_of_an_index_with_verified_blobs() {
    let registry = DockerRegistry::start();
    let tmp = tempfile::tempdir().expect("tmp");
    let image = Image::build(tmp.path());
    let src = tmp_layout(&tmp, "src");
    image.write_layout(&src, "v1");
    registry.push(&src, "v1", "demo/hello");
    let (manifest, config, layer) = image.digests();

    let out = tmp_layout(&tmp, "out");
    let reference = format!("{}/demo/hello:v1", registry.host);
    let pulled = pull_to_layout(&reference, &registry.options(), &out)
        .await
        .expect("pull");
    assert_eq!(pulled.digest, manifest);
    assert_eq!(pulled.layout_digest, manifest);
    assert_eq!(pulled.blobs_fetched, 2, "config and layer");
    assert_eq!(blob(&out, &manifest), image.manifest);
    assert_eq!(blob(&out, &config), image.config);
    assert_eq!(blob(&out, &layer), image.layer);
    let index = index_of(&out);
    assert_eq!(index["manifests"][0]["digest"], manifest.as_str());
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        reference.as_str()
    );
    // A standard tool reads what was pulled.
    let inspected: Value = serde_json::from_str(&run_ok(
        registry
            .skopeo()
            .arg("inspect")
            .arg(format!("oci:{}:{reference}", out.display())),
    ))
    .expect("inspect");
    assert_eq!(inspected["Digest"], manifest.as_str());
    // Pulling again into the same layout fetches nothing new.
    let again = pull_to_layout(&reference, &registry.options(), &out)
        .await
        .expect("pull again");
    assert_eq!(again.blobs_fetched, 0);
    assert_eq!(
        index_of(&out)["manifests"].as_array().map(Vec::len),
        Some(1)
    );

    // An index: every platform by default, or only the chosen ones in a new index.
    let multi = tmp_layout(&tmp, "multi-src");
    let (index_bytes, manifests) = write_multi_platform_layout(&multi, "v2");
    registry.push(&multi, "v2", "demo/multi");
    let reference = format!("{}/demo/multi:v2", registry.host);
    let all = tmp_layout(&tmp, "all");
    let pulled = pull_to_layout(&reference, &registry.options(), &all)
        .await
        .expect("pull index");
    assert_eq!(pulled.digest, sha256(&index_bytes));
    assert_eq!(pulled.layout_digest, pulled.digest);
    assert_eq!(pulled.platforms, vec!["linux/amd64", "linux/arm64"]);
    assert_eq!(blob(&all, &pulled.digest), index_bytes);
    for m in &manifests {
        assert_eq!(&blob(&all, &sha256(m)), m);
    }
    let arm = tmp_layout(&tmp, "arm");
    let options = PullOptions {
        platforms: Some(vec![Platform::parse("linux/arm64").expect("platform")]),
        ..registry.options()
    };
    let pulled = pull_to_layout(&reference, &options, &arm)
        .await
        .expect("arm");
    assert_eq!(pulled.platforms, vec!["linux/arm64"]);
    assert_ne!(
        pulled.layout_digest, pulled.digest,
        "a new index of one platform"
    );
    let filtered: Value =
        serde_json::from_slice(&blob(&arm, &pulled.layout_digest)).expect("index");
    assert_eq!(filtered["manifests"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        filtered["manifests"][0]["digest"],
        sha256(&manifests[1]).as_str()
    );
    assert!(!arm
        .join("blobs/sha256")
        .join(&sha256(&manifests[0])["sha256:".len()..])
        .exists());
    let options = PullOptions {
        platforms: Some(vec![Platform::parse("linux/s390x").expect("platform")]),
        ..registry.options()
    };
    let e = pull_to_layout(&reference, &options, &tmp_layout(&tmp, "none"))
        .await
        .expect_err("no such platform");
    assert!(
        e.to_string()
            .contains("has no manifest for linux/s390x: it has linux/amd64, linux/arm64"),
        "{e}"
    );
}

#[tokio::test]
async fn credentials_are_required_and_wrong_ones_are_refused() {
    let registry = DockerRegistry::start_with_user("builder", "s3cret-pass");
    let tmp = tempfile::tempdir().expect("tmp");
    let image = Image::build(tmp.path());
    let src = tmp_layout(&tmp, "src");
    image.write_layout(&src, "v1");
    registry.push(&src, "v1", "private/app");
    let reference = format!("{}/private/app:v1", registry.host);

    let e = pull_to_layout(&reference, &registry.options(), &tmp_layout(&tmp, "a"))
        .await
        .expect_err("anonymous");
    assert_eq!(
        e.to_string(),
        format!("registry {0} asks for credentials: give a user name and password for {0} (a recipe's [registry_auth.\"{0}\"])", registry.host)
    );
    let mut wrong = registry.options();
    wrong.credentials.insert(
        registry.host.clone(),
        Credentials {
            username: "builder".into(),
            password: "wrong".into(),
        },
    );
    let out = tmp_layout(&tmp, "b");
    let e = pull_to_layout(&reference, &wrong, &out)
        .await
        .expect_err("wrong password");
    assert!(
        e.to_string()
            .contains("refused the credentials of user \"builder\""),
        "{e}"
    );
    assert!(
        !out.join("index.json").exists(),
        "nothing is recorded on failure"
    );
    let mut right = registry.options();
    right.credentials.insert(
        registry.host.clone(),
        Credentials {
            username: "builder".into(),
            password: "s3cret-pass".into(),
        },
    );
    let pulled = pull_to_layout(&reference, &right, &tmp_layout(&tmp, "c"))
        .await
        .expect("pull with credentials");
    assert_eq!(pulled.digest, image.digests().0);
}

#[tokio::test]
async fn a_pinned_digest_that_differs_stops_the_pull_and_a_mirror_rewrites_the_host() {
    let registry = DockerRegistry::start();
    let tmp = tempfile::tempdir().expect("tmp");
    let image = Image::build(tmp.path());
    let src = tmp_layout(&tmp, "src");
    image.write_layout(&src, "v1");
    registry.push(&src, "v1", "library/app");
    let (manifest, _, _) = image.digests();

    // The recipe names the upstream host; the mirror table sends the pull to loopback.
    let reference = "upstream.example:5000/library/app:v1";
    let mut options = registry.options();
    options
        .mirrors
        .insert("upstream.example:5000".into(), registry.host.clone());
    options.digest = Some(manifest.clone());
    let out = tmp_layout(&tmp, "mirrored");
    let pulled = pull_to_layout(reference, &options, &out)
        .await
        .expect("pull");
    assert_eq!(pulled.source, format!("{}/library/app:v1", registry.host));
    assert_eq!(pulled.digest, manifest);
    assert_eq!(
        index_of(&out)["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        reference
    );

    let pinned = format!("sha256:{}", "0".repeat(64));
    options.digest = Some(pinned.clone());
    let out = tmp_layout(&tmp, "pinned");
    let e = pull_to_layout(reference, &options, &out)
        .await
        .expect_err("pin");
    assert_eq!(
        e.to_string(),
        format!("{}/library/app:v1 resolves to {manifest}, but it is pinned to {pinned}: the image changed at its source (or the mirror serves another one); check the new image and pin its digest, or fix the mirror", registry.host)
    );
    assert!(!out.join("index.json").exists());

    // Without the plain-HTTP allowance the client insists on HTTPS and says so.
    let e = pull_to_layout(
        &format!("{}/library/app:v1", registry.host),
        &PullOptions::default(),
        &tmp_layout(&tmp, "https"),
    )
    .await
    .expect_err("https to a plain registry");
    assert!(e.to_string().contains("HTTPS is used"), "{e}");
    // An unknown tag names the URL and the registry's own error code.
    let e = pull_to_layout(
        &format!("{}/library/app:nope", registry.host),
        &registry.options(),
        &tmp_layout(&tmp, "nope"),
    )
    .await
    .expect_err("unknown tag");
    assert!(
        e.to_string().contains("answered 404: MANIFEST_UNKNOWN"),
        "{e}"
    );
}
