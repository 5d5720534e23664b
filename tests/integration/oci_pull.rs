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

/// How a test registry authenticates.
pub(crate) enum Auth {
    None,
    /// htpasswd with one user (bcrypt), answered with a Basic challenge.
    Htpasswd(String, String),
    /// Bearer tokens from `realm`, signed by the key of `cert_pem` (a JWT with an x5c header).
    Token {
        realm: String,
        cert_pem: String,
    },
}

const TOKEN_SERVICE: &str = "palisade-test-registry";
const TOKEN_ISSUER: &str = "palisade-test-token-issuer";

/// A docker-registry on a free loopback port, with its storage in a temporary directory;
/// killed when dropped.
pub(crate) struct DockerRegistry {
    child: Child,
    pub(crate) host: String,
    dir: tempfile::TempDir,
    credentials: Option<(String, String)>,
}

impl DockerRegistry {
    /// Start without authentication.
    pub(crate) fn start() -> DockerRegistry {
        DockerRegistry::start_with(Auth::None, None)
    }

    /// Start with htpasswd (bcrypt) authentication for one user.
    fn start_with_user(user: &str, password: &str) -> DockerRegistry {
        DockerRegistry::start_with(Auth::Htpasswd(user.into(), password.into()), None)
    }

    /// Start with `auth` and, given a certificate and key (PEM), on HTTPS.
    pub(crate) fn start_with(auth: Auth, tls: Option<(String, String)>) -> DockerRegistry {
        let dir = tempfile::tempdir().expect("tmp");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let host = format!("127.0.0.1:{port}");
        let mut extra = String::new();
        let mut credentials = None;
        match auth {
            Auth::None => {}
            Auth::Htpasswd(user, password) => {
                let htpasswd = dir.path().join("htpasswd");
                let out = run_ok(Command::new("htpasswd").args(["-Bbn", &user, &password]));
                std::fs::write(&htpasswd, out).expect("htpasswd");
                extra = format!(
                    "auth:\n  htpasswd:\n    realm: palisade-test\n    path: {}\n",
                    htpasswd.display()
                );
                credentials = Some((user, password));
            }
            Auth::Token { realm, cert_pem } => {
                let bundle = dir.path().join("token-signer.pem");
                std::fs::write(&bundle, cert_pem).expect("bundle");
                extra = format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    bundle.display()
                );
            }
        }
        let mut tls_yaml = String::new();
        if let Some((cert, key)) = &tls {
            let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
            std::fs::write(&c, cert).expect("cert");
            std::fs::write(&k, key).expect("key");
            tls_yaml = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                c.display(),
                k.display()
            );
        }
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n  secret: test-only-secret\n{tls_yaml}{extra}",
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
                "docker-registry did not listen on {host}:\n{}",
                std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
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
        crate::packs::skopeo(self.dir.path())
    }

    /// Push the layout `layout:tag` to `repo:tag` (all platforms of an index).
    pub(crate) fn push(&self, layout: &Path, tag: &str, repo: &str) {
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
    // Two pulls into one layout at once: both entries survive.
    let shared = tmp_layout(&tmp, "shared");
    let single = format!("{}/demo/hello:v1", registry.host);
    let options = registry.options();
    let (a, b) = tokio::join!(
        pull_to_layout(&single, &options, &shared),
        pull_to_layout(&reference, &options, &shared)
    );
    a.expect("first");
    b.expect("second");
    assert_eq!(
        index_of(&shared)["manifests"].as_array().map(Vec::len),
        Some(2)
    );
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

/// A token endpoint of the distribution token-auth protocol: checks Basic credentials and
/// issues JWTs (ES256, certificate in the x5c header) that docker-registry verifies itself.
struct TokenIssuer {
    realm: String,
    cert_pem: String,
    issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl TokenIssuer {
    async fn start(user: &'static str, password: &'static str) -> TokenIssuer {
        use axum::extract::{Query, State};
        use axum::http::{HeaderMap, StatusCode};
        use base64::Engine as _;
        use std::collections::HashMap;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["palisade-test-token-signer".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let rng = ring::rand::SystemRandom::new();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .expect("signer");
        let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
        let issued = Arc::new(AtomicUsize::new(0));
        struct Issuer {
            signer: ring::signature::EcdsaKeyPair,
            x5c: String,
            issued: Arc<AtomicUsize>,
            expected: String,
        }
        let state = Arc::new(Issuer {
            signer,
            x5c,
            issued: issued.clone(),
            expected: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
        });
        async fn token(
            State(issuer): State<Arc<Issuer>>,
            headers: HeaderMap,
            Query(q): Query<HashMap<String, String>>,
        ) -> Result<axum::Json<Value>, StatusCode> {
            use base64::Engine as _;
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if auth != issuer.expected {
                return Err(StatusCode::UNAUTHORIZED);
            }
            let access: Vec<Value> = q
                .get("scope")
                .map(String::as_str)
                .unwrap_or_default()
                .split(' ')
                .filter_map(|s| {
                    let (kind, rest) = s.split_once(':')?;
                    let (name, actions) = rest.rsplit_once(':')?;
                    Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                })
                .collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs();
            let b64 = |v: &Value| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(serde_json::to_vec(v).expect("json"))
            };
            let header = json!({"alg": "ES256", "typ": "JWT", "x5c": [issuer.x5c]});
            let n = issuer.issued.fetch_add(1, Ordering::SeqCst);
            let claims = json!({
                "iss": TOKEN_ISSUER, "sub": "builder", "aud": TOKEN_SERVICE,
                "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("t{n}"),
                "access": access
            });
            let signing_input = format!("{}.{}", b64(&header), b64(&claims));
            let sig = issuer
                .signer
                .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
                .expect("sign");
            let jwt = format!(
                "{signing_input}.{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.as_ref())
            );
            Ok(axum::Json(json!({"token": jwt})))
        }
        let router = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        TokenIssuer {
            realm: format!("http://{addr}/token"),
            cert_pem: cert.pem(),
            issued,
        }
    }

    fn host(&self) -> String {
        self.realm
            .trim_start_matches("http://")
            .trim_end_matches("/token")
            .to_string()
    }
}

// Multi-threaded: skopeo blocks the test's thread while the token endpoint answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_auth_follows_the_challenge_to_the_realm_and_reuses_the_token() {
    let issuer = TokenIssuer::start("builder", "token-pass").await;
    let registry = DockerRegistry::start_with(
        Auth::Token {
            realm: issuer.realm.clone(),
            cert_pem: issuer.cert_pem.clone(),
        },
        None,
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let image = Image::build(tmp.path());
    let src = tmp_layout(&tmp, "src");
    image.write_layout(&src, "v1");
    run_ok(
        registry
            .skopeo()
            .args([
                "copy",
                "--dest-tls-verify=false",
                "--dest-creds",
                "builder:token-pass",
            ])
            .arg(format!("oci:{}:v1", src.display()))
            .arg(format!("docker://{}/tokens/app:v1", registry.host)),
    );
    let reference = format!("{}/tokens/app:v1", registry.host);
    let mut options = registry.options();
    options.plain_http.insert(issuer.host());

    // No credentials: the token endpoint refuses, and the message names the registry.
    let e = pull_to_layout(&reference, &options, &tmp_layout(&tmp, "anonymous"))
        .await
        .expect_err("anonymous");
    assert!(
        e.to_string()
            .contains(&format!("registry {} asks for credentials", registry.host)),
        "{e}"
    );

    options.credentials.insert(
        registry.host.clone(),
        Credentials {
            username: "builder".into(),
            password: "token-pass".into(),
        },
    );
    let before = issuer.issued.load(std::sync::atomic::Ordering::SeqCst);
    let out = tmp_layout(&tmp, "out");
    let pulled = pull_to_layout(&reference, &options, &out)
        .await
        .expect("pull");
    assert_eq!(pulled.digest, image.digests().0);
    assert_eq!(blob(&out, &image.digests().2), image.layer);
    assert_eq!(
        issuer.issued.load(std::sync::atomic::Ordering::SeqCst) - before,
        1,
        "one token serves the manifest and every blob of the repository"
    );

    // The realm over plain HTTP is refused unless that host is allowed plain HTTP: the
    // credentials would travel in clear text.
    let mut strict = options.clone();
    strict.plain_http.remove(&issuer.host());
    let e = pull_to_layout(&reference, &strict, &tmp_layout(&tmp, "strict"))
        .await
        .expect_err("plain realm");
    assert!(e.to_string().contains("is not HTTPS"), "{e}");
}

/// A throwaway CA (PEM) and a server certificate and key (PEM) it issued for 127.0.0.1.
pub(crate) fn test_tls_identity() -> (String, (String, String)) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "palisade test registry CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf");
    (ca.pem(), (leaf.pem(), leaf_key.serialize_pem()))
}

#[tokio::test]
async fn pulls_over_https_from_a_registry_with_a_private_ca() {
    let (ca_pem, tls) = test_tls_identity();
    let registry = DockerRegistry::start_with(
        Auth::Htpasswd("builder".into(), "tls-pass".into()),
        Some(tls),
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let image = Image::build(tmp.path());
    let src = tmp_layout(&tmp, "src");
    image.write_layout(&src, "v1");
    registry.push(&src, "v1", "secure/app");
    let reference = format!("{}/secure/app:v1", registry.host);
    let mut options = PullOptions::default();
    options.credentials.insert(
        registry.host.clone(),
        Credentials {
            username: "builder".into(),
            password: "tls-pass".into(),
        },
    );
    // Not trusted without the CA.
    let e = pull_to_layout(&reference, &options, &tmp_layout(&tmp, "untrusted"))
        .await
        .expect_err("unknown CA");
    assert!(e.to_string().contains("cannot reach https://"), "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    options.ca_pem = Some(ca_pem.into_bytes());
    let pulled = pull_to_layout(&reference, &options, &tmp_layout(&tmp, "trusted"))
        .await
        .expect("pull over https");
    assert_eq!(pulled.digest, image.digests().0);
}
