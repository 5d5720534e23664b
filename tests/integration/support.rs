//! Test harness: runs the real `palisade` executable on a loopback port with a temporary data
//! directory, and talks HTTPS to it with reqwest trusting only the appliance's own CA.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// Password used for accounts the tests create.
pub const PASSWORD: &str = "correct-horse-battery-staple";

/// The shared test peers' scripts: `$PALISADE_PEERS_DIR`, else `../shared/peers` beside the repository.
pub fn peers_dir() -> PathBuf {
    std::env::var_os("PALISADE_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers"))
}

/// A free TCP port on 127.0.0.1 (bound and released: nothing listens there).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// Path of the executable under test.
pub fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_palisade")
}

/// A running appliance.
pub struct TestApp {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    child: Option<Child>,
    pub base: String,
    /// The broker's gRPC address (host:port).
    pub broker: String,
    pub setup_token: Option<String>,
    pub fingerprint: String,
    pub stdout: Vec<String>,
}

impl TestApp {
    /// Start on a fresh data directory.
    pub fn start() -> TestApp {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut app = TestApp::start_in(&dir, &[]);
        app._tmp = Some(tmp);
        app
    }

    /// Start on a fresh data directory with extra `serve` arguments.
    pub fn start_with(extra: &[&str]) -> TestApp {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut app = TestApp::start_in(&dir, extra);
        app._tmp = Some(tmp);
        app
    }

    /// Start on `dir` (kept by the caller), with extra `serve` arguments.
    pub fn start_in(dir: &Path, extra: &[&str]) -> TestApp {
        std::fs::create_dir_all(dir.parent().expect("parent")).expect("mkdir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .expect("log file");
        let mut cmd = Command::new(exe());
        cmd.args(["serve", "--listen", "127.0.0.1:0"]);
        if !extra.contains(&"--broker-listen") {
            cmd.args(["--broker-listen", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .env("PALISADE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn palisade serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "serve did not print its banner in time"
            );
            match lines.next() {
                Some(Ok(line)) => {
                    let done = line.starts_with("  Data directory:");
                    banner.push(line);
                    if done {
                        break;
                    }
                }
                _ => {
                    let status = child.wait().expect("wait");
                    let log =
                        std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
                    panic!(
                        "serve exited ({status}) before it was ready:\n{}\n{log}",
                        banner.join("\n")
                    );
                }
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let field = |prefix: &str| {
            banner.iter().find_map(|l| {
                l.trim_start()
                    .strip_prefix(prefix)
                    .map(|v| v.trim().to_string())
            })
        };
        let listen = field("Listening on:").expect("listen line");
        TestApp {
            dir: dir.to_path_buf(),
            _tmp: None,
            child: Some(child),
            base: format!("https://{listen}"),
            broker: field("Broker (gRPC):").expect("broker line"),
            setup_token: field("Setup token:"),
            fingerprint: field("CA fingerprint: SHA256").expect("fingerprint"),
            stdout: banner,
        }
    }

    /// The appliance's CA certificate (PEM), read from its data directory.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("pki/ca.crt")).expect("ca.crt")
    }

    /// An HTTPS client that trusts only this appliance's CA, with a cookie store.
    pub fn client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&self.ca_pem()).expect("ca pem");
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client")
    }

    /// An API client without credentials.
    pub fn anonymous(&self) -> Api {
        Api {
            client: self.client(),
            base: self.base.clone(),
            token: None,
            csrf: None,
        }
    }

    /// Complete setup as `admin` and return an API client holding an admin token.
    pub async fn admin(&self) -> Api {
        let anon = self.anonymous();
        let token = self
            .setup_token
            .clone()
            .expect("fresh appliance prints a setup token");
        let (status, body) = anon
            .call(
                Method::POST,
                "/v1/setup",
                Some(json!({"token": token, "username": "admin", "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        self.login_token("admin", PASSWORD).await
    }

    /// Log in as `username` and return a client holding a fresh API token of that user.
    pub async fn login_token(&self, username: &str, password: &str) -> Api {
        let session = self.login(username, password).await;
        let (status, body) = session
            .call(
                Method::POST,
                "/v1/tokens",
                Some(json!({"name": format!("t{}", uuid_like())})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        Api {
            client: self.client(),
            base: self.base.clone(),
            token: Some(body["secret"].as_str().expect("secret").to_string()),
            csrf: None,
        }
    }

    /// Log in with a session cookie; the client sends the CSRF token on changes.
    pub async fn login(&self, username: &str, password: &str) -> Api {
        let mut api = self.anonymous();
        let (status, body) = api
            .call(
                Method::POST,
                "/v1/login",
                Some(json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login of {username}: {body}");
        api.csrf = Some(body["csrf_token"].as_str().expect("csrf").to_string());
        api
    }

    /// Kill the process with SIGKILL (no chance to clean up).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop with SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = c.try_wait() {
                    assert!(status.success(), "serve exited with {status} on SIGTERM");
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            panic!("serve did not stop within 20 s of SIGTERM");
        }
    }

    /// The appliance's log so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A short unique suffix for names.
pub fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{}{n}", std::process::id() % 10_000)
}

/// A client of the REST API with one set of credentials.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
    pub csrf: Option<String>,
}

/// A response: status, headers and JSON body (Null when empty or not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Api {
    /// Send a request with optional JSON body and extra headers.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(c) = &self.csrf {
            req = req.header("x-csrf-token", c);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    /// Send and return status and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let r = self.send(method, path, body, &[]).await;
        (r.status, r.body)
    }

    /// GET and return status and body.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    /// GET and return status and the body as text.
    pub async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let r = self.send(Method::GET, path, None, &[]).await;
        (r.status, r.text)
    }

    /// POST and return status and body.
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    /// POST expecting 201; returns the body.
    pub async fn create(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.post(path, body).await;
        assert_eq!(status, StatusCode::CREATED, "POST {path}: {v}");
        v
    }
}

/// Objects for one tenant: a project, a cloud account, a profile and a cluster.
pub struct TenantFixture {
    pub tenant: String,
    pub project: String,
    pub cloud_account: String,
    pub profile: String,
    pub cluster: String,
}

/// A valid cluster body for `project` with `profile` and `account`.
pub fn cluster_body(project: &str, name: &str, profile: &str, account: &str) -> Value {
    json!({
        "project_id": project,
        "name": name,
        "profile_id": profile,
        "cloud_account_id": account,
        "node_pools": [
            {"name": "cp", "role": "control-plane", "count": 1, "size": {"cpus": 2, "memory_mib": 4096, "disk_gib": 40}},
            {"name": "workers", "role": "worker", "count": 2, "size": {"cpus": 4, "memory_mib": 8192, "disk_gib": 80}}
        ],
        "drift_policy": "alert"
    })
}

/// A valid profile body.
pub fn profile_body(project: &str, name: &str) -> Value {
    json!({
        "project_id": project,
        "name": name,
        "layers": [
            {"type": "os", "pack": "ubuntu", "version": "22.04.4"},
            {"type": "kubernetes", "pack": "rke2", "version": "1.29.4", "values": "cni: none\n"},
            {"type": "network", "pack": "cilium", "version": "1.15.3"}
        ]
    })
}

/// Create a tenant with one object of every project-scoped kind, as `admin`.
pub async fn tenant_fixture(admin: &Api, name: &str) -> TenantFixture {
    let tenant = admin.create("/v1/tenants", json!({"name": name})).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let project = admin
        .create("/v1/projects", json!({"tenant_id": tenant, "name": "main"}))
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let cloud_account = admin
        .create(
            "/v1/cloud-accounts",
            json!({"project_id": project, "name": "vc", "kind": "vsphere", "endpoint": "https://vc.example.local/sdk",
                   "credentials": {"username": "administrator@vsphere.local", "password": "vc-secret-password"}}),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let profile = admin
        .create("/v1/profiles", profile_body(&project, "base"))
        .await["profile"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let cluster = admin
        .create(
            "/v1/clusters",
            cluster_body(&project, "prod", &profile, &cloud_account),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    TenantFixture {
        tenant,
        project,
        cloud_account,
        profile,
        cluster,
    }
}

/// Create a user in `tenant` with one role binding, and return a token client for it.
pub async fn user_with_role(
    app: &TestApp,
    admin: &Api,
    username: &str,
    tenant: Option<&str>,
    role: &str,
    scope: Value,
) -> Api {
    let user = admin
        .create(
            "/v1/users",
            json!({"username": username, "password": PASSWORD, "tenant_id": tenant}),
        )
        .await;
    let mut binding = json!({"user_id": user["id"], "role": role});
    if let (Some(b), Some(s)) = (binding.as_object_mut(), scope.as_object()) {
        for (k, v) in s {
            b.insert(k.clone(), v.clone());
        }
    }
    admin.create("/v1/role-bindings", binding).await;
    app.login_token(username, PASSWORD).await
}

/// Run the executable with `args` and return (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(exe())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn palisade");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// OCI registry helpers, shared by the registry and backup tests.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One registry answer.
pub struct Res {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Res {
    /// The body as JSON (Null when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The first OCI error code of the body.
    pub fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// A header as text (empty when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    /// Status and the start of the body, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {}",
            self.status,
            String::from_utf8_lossy(&self.body[..self.body.len().min(500)])
        )
    }
}

/// Send a registry request with the client's token as a bearer token.
/// A registry request with no extra headers and no body.
pub async fn plain(api: &Api, method: Method, path: &str) -> Res {
    call(api, method, path, &[], None).await
}

/// A registry request with headers and an optional body.
pub async fn call(
    api: &Api,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Res {
    let url = if path.starts_with("http") {
        path.to_string()
    } else {
        format!("{}{path}", api.base)
    };
    let mut req = api.client.request(method, url);
    if let Some(t) = &api.token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let res = req.send().await.expect("request");
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.bytes().await.expect("body").to_vec();
    Res {
        status,
        headers,
        body,
    }
}

/// Push `content` to `repo` in one POST; returns its digest.
pub async fn push_blob(api: &Api, repo: &str, content: &[u8]) -> String {
    let d = sha256(content);
    let r = call(
        api,
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        &[("content-type", "application/octet-stream")],
        Some(content.to_vec()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "push blob: {}", r.describe());
    assert_eq!(r.header("docker-content-digest"), d);
    d
}

/// Push manifest `m` (of `media_type`) to `repo` as `reference`; returns the response.
pub async fn put_manifest(
    api: &Api,
    repo: &str,
    reference: &str,
    media_type: &str,
    m: &Value,
) -> Res {
    call(
        api,
        Method::PUT,
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("content-type", media_type)],
        Some(serde_json::to_vec(m).expect("json")),
    )
    .await
}

/// Push a small image (config and one layer) to `repo:tag`; returns (manifest digest, layer).
pub async fn push_image(api: &Api, repo: &str, tag: &str, seed: &str) -> (String, String) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#);
    let layer = format!("layer of {seed}").into_bytes();
    let c = push_blob(api, repo, config.as_bytes()).await;
    let l = push_blob(api, repo, &layer).await;
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": c, "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": l, "size": layer.len()}]
    });
    let r = put_manifest(api, repo, tag, OCI_MANIFEST, &m).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "push manifest: {}",
        r.describe()
    );
    (r.header("docker-content-digest"), l)
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
