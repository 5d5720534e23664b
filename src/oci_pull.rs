//! A client of OCI distribution registries: pulls images (and pack artifacts) into OCI image
//! layouts, for `bundle build` on the connected side, and fetches packs for the agent.
//!
//! Owns reference parsing ([`Reference`]), the registry authentication flows (HTTP Basic, and
//! Bearer tokens obtained through the `WWW-Authenticate` challenge), mirror rewriting, digest
//! pinning and verified, streamed blob downloads ([`pull_to_layout`]). No store, no server.
//!
//! Rules it enforces: HTTPS unless a host is listed in [`PullOptions::plain_http`];
//! credentials are sent to a token endpoint only over HTTPS (or a host allowed plain HTTP);
//! every manifest and blob is hashed and must match its digest before it is renamed into the
//! layout, so a layout never holds unverified content; a pinned digest that the registry does
//! not serve stops the pull.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// Largest blob accepted.
pub const MAX_BLOB_BYTES: u64 = 32 * 1024 * 1024 * 1024;
/// Most manifests an index may list.
const MAX_CHILDREN: usize = 256;

/// What went wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{reference:?} is not an image reference: {reason}")]
    Reference { reference: String, reason: String },
    #[error("cannot reach {url}: {detail}: check the host and port{hint}")]
    Connect {
        url: String,
        detail: String,
        hint: &'static str,
    },
    #[error("{url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("registry {host} asks for credentials: give a user name and password for {host} (a recipe's [registry_auth.\"{host}\"])")]
    NeedsCredentials { host: String },
    #[error("registry {host} refused the credentials of user {username:?}: check the user name and password (for {host})")]
    CredentialsRefused { host: String, username: String },
    #[error("registry {host}: {reason}")]
    Auth { host: String, reason: String },
    #[error("{reference} resolves to {actual}, but it is pinned to {expected}: the image changed at its source (or the mirror serves another one); check the new image and pin its digest, or fix the mirror")]
    DigestMismatch {
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("{what} from {url} has sha256 {actual} ({size} bytes), expected {expected}: the registry served corrupt or different content; nothing was kept")]
    ContentMismatch {
        what: String,
        url: String,
        expected: String,
        actual: String,
        size: u64,
    },
    #[error("{what} is larger than {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{reference} has no manifest for {wanted}: it has {available}; choose among those platforms")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
}

/// Results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(action: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// An image reference: `host[:port]/repository[:tag][@sha256:<hex>]`. The registry host is
/// always explicit (there is no default registry on an air-gapped site).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host` or `host:port`.
    pub host: String,
    /// The repository path, e.g. `calico/node`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.host, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn is_repo_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    c.bytes()
        .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-'))
        && !c.contains("..")
        && !c.contains("___")
        && !c.contains("._")
        && !c.contains("_.")
}

impl Reference {
    /// Parse a reference; the host, and a tag or a digest, are required.
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |reason: &str| Error::Reference {
            reference: s.into(),
            reason: reason.into(),
        };
        if s.len() > 1024 || s.contains(char::is_whitespace) || s.contains("://") {
            return Err(bad(
                "write host[:port]/repository:tag (no scheme, no spaces), e.g. mirror.example:5000/calico/node:v3.28.0",
            ));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                if !is_digest(d) {
                    return Err(bad(
                        "the part after @ must be sha256: and 64 lower-case hex digits",
                    ));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        let Some((host, path)) = rest.split_once('/') else {
            return Err(bad(
                "name the registry host first: host[:port]/repository:tag",
            ));
        };
        if !(host.contains('.') || host.contains(':') || host == "localhost")
            || host.bytes().any(|b| {
                !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
            })
        {
            return Err(bad(
                "the first part must be a registry host (with a dot or a port, or localhost), e.g. mirror.example:5000/calico/node:v3.28.0",
            ));
        }
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
            _ => (path, None),
        };
        if let Some(t) = &tag {
            let ok = t.len() <= 128
                && t.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                return Err(bad(
                    "the tag must be letters, digits, '.', '_' and '-' (at most 128)",
                ));
            }
        }
        if repository.len() > 255 || !repository.split('/').all(is_repo_component) {
            return Err(bad(
                "the repository must be lower-case path components of letters, digits, '.', '_' and '-'",
            ));
        }
        if tag.is_none() && digest.is_none() {
            return Err(bad(
                "name a tag or a digest (:v1.2.3 or @sha256:...): there is no implicit latest",
            ));
        }
        Ok(Reference {
            host: host.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The tag or digest to ask the registry for (the digest when both are given).
    fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

/// A user name and password for one registry host. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// One platform of a multi-platform image, e.g. `linux/amd64` or `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parse `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(Platform {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: Some((*v).into()),
            }),
            _ => Err(Error::Invalid {
                what: format!("platform {s:?}"),
                reason: "write os/architecture[/variant], e.g. linux/amd64".into(),
            }),
        }
    }

    fn matches(&self, p: &Value) -> bool {
        p["os"] == self.os.as_str()
            && p["architecture"] == self.architecture.as_str()
            && self
                .variant
                .as_ref()
                .is_none_or(|v| p["variant"] == v.as_str())
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Credentials by registry host (`host` or `host:port`, after mirror rewriting).
    pub credentials: BTreeMap<String, Credentials>,
    /// Mirror rewrite: source host → the host to pull from instead (same repository path).
    pub mirrors: BTreeMap<String, String>,
    /// Hosts spoken to over plain HTTP (say, a registry on loopback); every other host is HTTPS.
    pub plain_http: BTreeSet<String>,
    /// Refuse the image unless its manifest (or index) digest is this `sha256:...`.
    pub digest: Option<String>,
    /// For an image index: the platforms to keep; `None` keeps every manifest of the index.
    pub platforms: Option<Vec<Platform>>,
    /// Extra CA certificates (PEM) trusted besides the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// The `org.opencontainers.image.ref.name` of the image in the layout; default: the
    /// reference as given.
    pub ref_name: Option<String>,
    /// Per-request timeout for connecting and for each read; default 60 s.
    pub timeout: Option<Duration>,
}

/// What [`pull_to_layout`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The reference as given.
    pub reference: String,
    /// Where it was pulled from (after mirror rewriting).
    pub source: String,
    /// Digest of the manifest or index the registry served for the reference.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// What the layout's `index.json` points at: `digest`, or a new index holding only the
    /// chosen platforms when [`PullOptions::platforms`] dropped some.
    pub layout_digest: String,
    /// The platforms stored (`os/arch[/variant]`), for an index; empty for a single manifest.
    pub platforms: Vec<String>,
    /// Blobs downloaded (those already in the layout are not fetched again).
    pub blobs_fetched: u64,
    /// Bytes downloaded.
    pub bytes_fetched: u64,
}

/// A manifest as served.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    /// `sha256:` of `bytes`.
    pub digest: String,
    pub media_type: String,
}

#[derive(Debug, Clone)]
enum HostAuth {
    Basic,
    /// Bearer tokens, one per repository, from the challenge's realm.
    Bearer,
}

/// An authenticated registry client; keeps the auth scheme each host asked for and the tokens
/// it obtained, so a pull makes one challenge round trip per host and repository.
pub struct Client {
    http: reqwest::Client,
    options: PullOptions,
    auth: Mutex<HashMap<String, HostAuth>>,
    /// Bearer tokens by (host, scope).
    tokens: Mutex<HashMap<(String, String), String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("options", &self.options)
            .finish()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Parse `WWW-Authenticate: Scheme k="v", k2=v2`.
fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    (scheme.to_ascii_lowercase(), params)
}

/// The message of a registry's error body, or the start of the body.
fn error_message(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if let Some(e) = v["errors"].as_array().and_then(|a| a.first()) {
        return format!(
            "{} {}",
            e["code"].as_str().unwrap_or_default(),
            e["message"].as_str().unwrap_or_default()
        )
        .trim()
        .to_string();
    }
    String::from_utf8_lossy(&body[..body.len().min(300)])
        .trim()
        .to_string()
}

impl Client {
    /// A client for `options` (its credentials, mirrors, plain-HTTP hosts and CAs).
    pub fn new(options: &PullOptions) -> Result<Client> {
        let timeout = options.timeout.unwrap_or(Duration::from_secs(60));
        let mut b = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .user_agent(concat!("palisade/", env!("CARGO_PKG_VERSION")))
            // Blob downloads may redirect to storage on another host; reqwest drops the
            // Authorization header when the host changes.
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(pem) = &options.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| Error::Invalid {
                what: "the CA certificates".into(),
                reason: format!("are not PEM certificates: {e}"),
            })?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b.build().map_err(|e| Error::Invalid {
            what: "the HTTP client".into(),
            reason: e.to_string(),
        })?;
        Ok(Client {
            http,
            options: options.clone(),
            auth: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// `r` with its host rewritten by the mirror table.
    pub fn resolve(&self, r: &Reference) -> Reference {
        let mut out = r.clone();
        if let Some(m) = self.options.mirrors.get(&r.host) {
            out.host = m.clone();
        }
        out
    }

    fn base(&self, host: &str) -> String {
        let scheme = if self.options.plain_http.contains(host) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}")
    }

    fn connect_error(&self, url: &str, host: &str, e: &reqwest::Error) -> Error {
        use std::error::Error as _;
        let mut detail = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            detail = format!("{detail}: {s}");
            src = s.source();
        }
        let hint = if self.options.plain_http.contains(host) {
            ""
        } else {
            " (HTTPS is used; allow plain HTTP for this host only if it is a registry on loopback or a trusted network, and give the registry's CA if it is private)"
        };
        Error::Connect {
            url: url.into(),
            detail,
            hint,
        }
    }

    /// Send a GET to `url` (on registry `host`, repository `repo`), answering the auth
    /// challenge once if one comes. Returns the response, whatever its status after auth.
    async fn get(
        &self,
        host: &str,
        repo: &str,
        url: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response> {
        let mut retried = false;
        loop {
            let mut req = self.http.get(url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            req = self.authorize(req, host, repo);
            let res = req
                .send()
                .await
                .map_err(|e| self.connect_error(url, host, &e))?;
            if res.status() != reqwest::StatusCode::UNAUTHORIZED {
                return Ok(res);
            }
            let creds = self.options.credentials.get(host);
            if retried {
                return Err(match creds {
                    Some(c) => Error::CredentialsRefused {
                        host: host.into(),
                        username: c.username.clone(),
                    },
                    None => Error::NeedsCredentials { host: host.into() },
                });
            }
            retried = true;
            let challenge = res
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let (scheme, params) = parse_challenge(&challenge);
            match scheme.as_str() {
                "basic" => {
                    if creds.is_none() {
                        return Err(Error::NeedsCredentials { host: host.into() });
                    }
                    self.set_auth(host, HostAuth::Basic);
                }
                "bearer" => {
                    let realm = params.get("realm").cloned().ok_or_else(|| Error::Auth {
                        host: host.into(),
                        reason: "its Bearer challenge names no realm (token endpoint)".into(),
                    })?;
                    let service = params.get("service").cloned();
                    let scope = params
                        .get("scope")
                        .cloned()
                        .unwrap_or_else(|| format!("repository:{repo}:pull"));
                    self.set_auth(host, HostAuth::Bearer);
                    let token = self
                        .fetch_token(host, &realm, service.as_deref(), &scope)
                        .await?;
                    if let Ok(mut t) = self.tokens.lock() {
                        t.insert((host.to_string(), scope_key(repo)), token);
                    }
                }
                _ => {
                    return Err(Error::Auth {
                        host: host.into(),
                        reason: format!(
                            "it asks for authentication Palisade does not speak ({challenge:?}): use Basic or Bearer token auth"
                        ),
                    })
                }
            }
        }
    }

    fn set_auth(&self, host: &str, a: HostAuth) {
        if let Ok(mut m) = self.auth.lock() {
            m.insert(host.to_string(), a);
        }
    }

    /// Add what the host asked for before: Basic credentials, or the repository's token.
    fn authorize(
        &self,
        req: reqwest::RequestBuilder,
        host: &str,
        repo: &str,
    ) -> reqwest::RequestBuilder {
        let scheme = self.auth.lock().ok().and_then(|m| m.get(host).cloned());
        match scheme {
            Some(HostAuth::Basic) => match self.options.credentials.get(host) {
                Some(c) => req.basic_auth(&c.username, Some(&c.password)),
                None => req,
            },
            Some(HostAuth::Bearer) => {
                let token = self
                    .tokens
                    .lock()
                    .ok()
                    .and_then(|t| t.get(&(host.to_string(), scope_key(repo))).cloned());
                match token {
                    Some(t) => req.bearer_auth(t),
                    None => req,
                }
            }
            None => req,
        }
    }

    /// Get a token from the realm, with Basic credentials when there are some.
    async fn fetch_token(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String> {
        let url = reqwest::Url::parse(realm).map_err(|e| Error::Auth {
            host: host.into(),
            reason: format!("its token realm {realm:?} is not a URL: {e}"),
        })?;
        let realm_host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => String::new(),
        };
        // Credentials never travel in clear text to a realm the operator did not allow.
        if url.scheme() != "https"
            && !(url.scheme() == "http" && self.options.plain_http.contains(&realm_host))
        {
            return Err(Error::Auth {
                host: host.into(),
                reason: format!(
                    "its token realm {realm} is not HTTPS: allow plain HTTP for {realm_host} only if it is on loopback or a trusted network"
                ),
            });
        }
        let mut req = self.http.get(url.clone()).query(&[("scope", scope)]);
        if let Some(s) = service {
            req = req.query(&[("service", s)]);
        }
        if let Some(c) = self.options.credentials.get(host) {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let res = req
            .send()
            .await
            .map_err(|e| self.connect_error(realm, &realm_host, &e))?;
        let status = res.status();
        let body = read_capped(res, 1024 * 1024, realm).await?;
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(match self.options.credentials.get(host) {
                Some(c) => Error::CredentialsRefused {
                    host: host.into(),
                    username: c.username.clone(),
                },
                None => Error::NeedsCredentials { host: host.into() },
            });
        }
        if !status.is_success() {
            return Err(Error::Status {
                url: realm.into(),
                status: status.as_u16(),
                message: error_message(&body),
            });
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| Error::Auth {
            host: host.into(),
            reason: format!("its token endpoint answered something that is not JSON: {e}"),
        })?;
        v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .map(str::to_string)
            .ok_or_else(|| Error::Auth {
                host: host.into(),
                reason: "its token endpoint answered without a token".into(),
            })
    }

    /// Fetch the manifest (or index) `r` names, after mirror rewriting; verify it against the
    /// digest in `r` when there is one.
    pub async fn fetch_manifest(&self, r: &Reference) -> Result<FetchedManifest> {
        let src = self.resolve(r);
        self.fetch_manifest_at(&src, src.manifest_ref()).await
    }

    async fn fetch_manifest_at(&self, src: &Reference, reference: &str) -> Result<FetchedManifest> {
        let url = format!(
            "{}/v2/{}/manifests/{reference}",
            self.base(&src.host),
            src.repository
        );
        let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        let res = self
            .get(&src.host, &src.repository, &url, Some(&accept))
            .await?;
        let status = res.status();
        let header_type = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let bytes = read_capped(res, MAX_MANIFEST_BYTES, &url).await?;
        if !status.is_success() {
            let hint = if status == reqwest::StatusCode::NOT_FOUND {
                ": check the repository and tag (and the mirror, if one is set)"
            } else {
                ""
            };
            return Err(Error::Status {
                url,
                status: status.as_u16(),
                message: format!("{}{hint}", error_message(&bytes)),
            });
        }
        let digest = sha256_hex(&bytes);
        if is_digest(reference) && digest != reference {
            return Err(Error::ContentMismatch {
                what: "the manifest".into(),
                url,
                expected: reference.into(),
                actual: digest,
                size: bytes.len() as u64,
            });
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
            what: format!("the manifest at {url}"),
            reason: format!("is not JSON: {e}"),
        })?;
        let media_type = v["mediaType"]
            .as_str()
            .map(str::to_string)
            .or(header_type)
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        if ![OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(&media_type.as_str()) {
            return Err(Error::Invalid {
                what: format!("the manifest at {url}"),
                reason: format!("has media type {media_type}, which Palisade does not pull (OCI or Docker schema 2 only)"),
            });
        }
        Ok(FetchedManifest {
            bytes,
            digest,
            media_type,
        })
    }

    /// Fetch a small blob of `r`'s repository into memory (at most `size` bytes), verified.
    pub async fn fetch_blob_bytes(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
    ) -> Result<Vec<u8>> {
        let src = self.resolve(r);
        let url = self.blob_url(&src, digest)?;
        let res = self.get(&src.host, &src.repository, &url, None).await?;
        let status = res.status();
        let bytes = read_capped(res, size.min(MAX_MANIFEST_BYTES * 16), &url).await?;
        if !status.is_success() {
            return Err(Error::Status {
                url,
                status: status.as_u16(),
                message: error_message(&bytes),
            });
        }
        let actual = sha256_hex(&bytes);
        if actual != digest || bytes.len() as u64 != size {
            return Err(Error::ContentMismatch {
                what: "a blob".into(),
                url,
                expected: format!("{digest} ({size} bytes)"),
                actual,
                size: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    /// The repositories of registry `host` (`GET /v2/_catalog`, following `Link` pages), at
    /// most `max`.
    pub async fn catalog(&self, host: &str, max: usize) -> Result<Vec<String>> {
        self.paged_list(host, "_catalog", "/v2/_catalog?n=1000", "repositories", max)
            .await
    }

    /// The tags of repository `repo` of registry `host`, at most `max`.
    pub async fn tags(&self, host: &str, repo: &str, max: usize) -> Result<Vec<String>> {
        self.paged_list(
            host,
            repo,
            &format!("/v2/{repo}/tags/list?n=1000"),
            "tags",
            max,
        )
        .await
    }

    async fn paged_list(
        &self,
        host: &str,
        repo: &str,
        first: &str,
        field: &str,
        max: usize,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut next = Some(first.to_string());
        while let Some(path) = next.take() {
            let url = format!("{}{path}", self.base(host));
            let res = self.get(host, repo, &url, None).await?;
            let status = res.status();
            next = res
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.split_once('<'))
                .and_then(|(_, rest)| rest.split_once('>'))
                .map(|(p, _)| p.to_string())
                .filter(|p| p.starts_with("/v2/"));
            let body = read_capped(res, MAX_MANIFEST_BYTES, &url).await?;
            if !status.is_success() {
                return Err(Error::Status {
                    url,
                    status: status.as_u16(),
                    message: error_message(&body),
                });
            }
            let v: Value = serde_json::from_slice(&body).map_err(|e| Error::Invalid {
                what: format!("the answer of {url}"),
                reason: format!("is not JSON: {e}"),
            })?;
            for item in v[field].as_array().map(Vec::as_slice).unwrap_or_default() {
                if let Some(s) = item.as_str() {
                    out.push(s.to_string());
                }
            }
            if out.len() >= max {
                out.truncate(max);
                break;
            }
        }
        Ok(out)
    }

    fn blob_url(&self, src: &Reference, digest: &str) -> Result<String> {
        if !is_digest(digest) {
            return Err(Error::Invalid {
                what: format!("a descriptor of {src}"),
                reason: format!("{digest:?} is not a sha256 digest"),
            });
        }
        Ok(format!(
            "{}/v2/{}/blobs/{digest}",
            self.base(&src.host),
            src.repository
        ))
    }

    /// Stream blob `digest` of `src` into `layout`'s blob folder, hashing as it arrives; the
    /// file appears under its digest only once verified. Returns bytes fetched (0 if present).
    async fn download_blob(
        &self,
        src: &Reference,
        digest: &str,
        size: u64,
        layout: &Path,
    ) -> Result<u64> {
        let url = self.blob_url(src, digest)?;
        if size > MAX_BLOB_BYTES {
            return Err(Error::TooLarge {
                what: format!("blob {digest} of {src}"),
                limit: MAX_BLOB_BYTES,
            });
        }
        let dir = layout.join("blobs/sha256");
        let target = dir.join(&digest["sha256:".len()..]);
        if tokio::fs::metadata(&target)
            .await
            .is_ok_and(|m| m.len() == size)
        {
            return Ok(0);
        }
        let res = self.get(&src.host, &src.repository, &url, None).await?;
        let status = res.status();
        if !status.is_success() {
            let body = read_capped(res, 64 * 1024, &url).await.unwrap_or_default();
            return Err(Error::Status {
                url,
                status: status.as_u16(),
                message: error_message(&body),
            });
        }
        let tmp = dir.join(format!(".partial-{}", uuid::Uuid::new_v4()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| io("create", &tmp, e))?;
            let mut hasher = Sha256::new();
            let mut written = 0u64;
            let mut body = res.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| self.connect_error(&url, &src.host, &e))?;
                written += chunk.len() as u64;
                if written > size {
                    return Err(Error::ContentMismatch {
                        what: format!("blob {digest}"),
                        url: url.clone(),
                        expected: format!("{digest} ({size} bytes)"),
                        actual: "(longer than its descriptor)".into(),
                        size: written,
                    });
                }
                hasher.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .map_err(|e| io("write", &tmp, e))?;
            }
            let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
            if actual != digest || written != size {
                return Err(Error::ContentMismatch {
                    what: format!("blob {digest}"),
                    url: url.clone(),
                    expected: format!("{digest} ({size} bytes)"),
                    actual,
                    size: written,
                });
            }
            file.sync_all().await.map_err(|e| io("sync", &tmp, e))?;
            tokio::fs::rename(&tmp, &target)
                .await
                .map_err(|e| io("rename into place", &target, e))?;
            Ok(written)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

/// The token cache key of a repository.
fn scope_key(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

/// Read a response body, refusing more than `cap` bytes.
async fn read_capped(res: reqwest::Response, cap: u64, url: &str) -> Result<Vec<u8>> {
    if res.content_length().is_some_and(|l| l > cap) {
        return Err(Error::TooLarge {
            what: format!("the answer of {url}"),
            limit: cap,
        });
    }
    let mut out = Vec::new();
    let mut body = res.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Error::Connect {
            url: url.into(),
            detail: e.to_string(),
            hint: "",
        })?;
        if out.len() as u64 + chunk.len() as u64 > cap {
            return Err(Error::TooLarge {
                what: format!("the answer of {url}"),
                limit: cap,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A descriptor of a manifest's content.
struct Descriptor {
    digest: String,
    size: u64,
}

fn descriptor(v: &Value, what: &str) -> Result<Descriptor> {
    let digest = v["digest"].as_str().unwrap_or_default();
    let size = v["size"].as_u64();
    match size {
        Some(size) if is_digest(digest) => Ok(Descriptor {
            digest: digest.to_string(),
            size,
        }),
        _ => Err(Error::Invalid {
            what: what.into(),
            reason: "has a descriptor without a sha256 digest and size".into(),
        }),
    }
}

/// Write `bytes` (already verified) as a blob of the layout.
async fn write_blob(layout: &Path, digest: &str, bytes: &[u8]) -> Result<()> {
    let target = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    if tokio::fs::metadata(&target)
        .await
        .is_ok_and(|m| m.len() == bytes.len() as u64)
    {
        return Ok(());
    }
    let tmp = target.with_extension(format!("partial-{}", uuid::Uuid::new_v4()));
    tokio::fs::write(&tmp, bytes)
        .await
        .map_err(|e| io("write", &tmp, e))?;
    tokio::fs::rename(&tmp, &target)
        .await
        .map_err(|e| io("rename into place", &target, e))
}

/// Pull `reference` into the OCI image layout `layout_dir` (created if absent; other images
/// already in it stay, and blobs it holds are not fetched again). An image index brings every
/// platform's manifest, or only [`PullOptions::platforms`]. The layout's `index.json` gets an
/// entry named [`PullOptions::ref_name`] (default: the reference as given), replacing an entry
/// of the same name.
pub async fn pull_to_layout(
    reference: &str,
    options: &PullOptions,
    layout_dir: &Path,
) -> Result<PulledImage> {
    let r = Reference::parse(reference)?;
    if let (Some(a), Some(b)) = (&r.digest, &options.digest) {
        if a != b {
            return Err(Error::Invalid {
                what: format!("image {reference}"),
                reason: format!("its reference names digest {a} but the pin says {b}: keep one"),
            });
        }
    }
    let pin = options.digest.clone().or(r.digest.clone());
    let client = Client::new(options)?;
    let src = client.resolve(&r);
    let blob_dir = layout_dir.join("blobs/sha256");
    tokio::fs::create_dir_all(&blob_dir)
        .await
        .map_err(|e| io("create the layout directory", &blob_dir, e))?;
    // Ask by tag: the digest the registry serves for it is then compared with the pin, which
    // names the difference rather than a bare "not found" when the tag moved.
    let ask = match (&src.tag, &pin) {
        (Some(t), _) => t.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => src.manifest_ref().to_string(),
    };
    let top = client.fetch_manifest_at(&src, &ask).await?;
    if let Some(p) = &pin {
        if &top.digest != p {
            return Err(Error::DigestMismatch {
                reference: format!("{src}"),
                expected: p.clone(),
                actual: top.digest,
            });
        }
    }
    let mut stats = (0u64, 0u64);
    let mut platforms = Vec::new();
    let (layout_digest, layout_media, layout_size) =
        if top.media_type == OCI_INDEX || top.media_type == DOCKER_LIST {
            let index: Value = serde_json::from_slice(&top.bytes).map_err(|e| Error::Invalid {
                what: format!("the index of {src}"),
                reason: e.to_string(),
            })?;
            let children = index["manifests"].as_array().cloned().unwrap_or_default();
            if children.len() > MAX_CHILDREN {
                return Err(Error::TooLarge {
                    what: format!("the index of {src} ({} manifests)", children.len()),
                    limit: MAX_CHILDREN as u64,
                });
            }
            let chosen: Vec<Value> = match &options.platforms {
                None => children.clone(),
                Some(want) => {
                    let chosen: Vec<Value> = children
                        .iter()
                        .filter(|c| want.iter().any(|p| p.matches(&c["platform"])))
                        .cloned()
                        .collect();
                    for p in want {
                        if !children.iter().any(|c| p.matches(&c["platform"])) {
                            return Err(Error::NoPlatform {
                                reference: format!("{src}"),
                                wanted: p.to_string(),
                                available: children
                                    .iter()
                                    .map(|c| platform_text(&c["platform"]))
                                    .collect::<Vec<_>>()
                                    .join(", "),
                            });
                        }
                    }
                    chosen
                }
            };
            for c in &chosen {
                let d = descriptor(c, &format!("the index of {src}"))?;
                let child = client.fetch_manifest_at(&src, &d.digest).await?;
                if child.media_type == OCI_INDEX || child.media_type == DOCKER_LIST {
                    return Err(Error::Invalid {
                        what: format!("the index of {src}"),
                        reason: "nests another index: Palisade pulls one level of index".into(),
                    });
                }
                pull_manifest_content(&client, &src, &child, layout_dir, &mut stats).await?;
                write_blob(layout_dir, &child.digest, &child.bytes).await?;
                platforms.push(platform_text(&c["platform"]));
            }
            if chosen.len() == children.len() {
                write_blob(layout_dir, &top.digest, &top.bytes).await?;
                (
                    top.digest.clone(),
                    top.media_type.clone(),
                    top.bytes.len() as u64,
                )
            } else {
                // A new index of the chosen platforms: the layout must not point at manifests it
                // does not hold.
                let mut filtered = index.clone();
                filtered["manifests"] = Value::Array(chosen);
                let bytes = serde_json::to_vec(&filtered).map_err(|e| Error::Invalid {
                    what: "the filtered index".into(),
                    reason: e.to_string(),
                })?;
                let d = sha256_hex(&bytes);
                write_blob(layout_dir, &d, &bytes).await?;
                (d, top.media_type.clone(), bytes.len() as u64)
            }
        } else {
            pull_manifest_content(&client, &src, &top, layout_dir, &mut stats).await?;
            write_blob(layout_dir, &top.digest, &top.bytes).await?;
            (
                top.digest.clone(),
                top.media_type.clone(),
                top.bytes.len() as u64,
            )
        };
    let ref_name = options
        .ref_name
        .clone()
        .unwrap_or_else(|| reference.to_string());
    update_index(
        layout_dir,
        &ref_name,
        &layout_digest,
        &layout_media,
        layout_size,
    )
    .await?;
    Ok(PulledImage {
        reference: reference.to_string(),
        source: src.to_string(),
        digest: top.digest,
        media_type: top.media_type,
        size: top.bytes.len() as u64,
        layout_digest,
        platforms,
        blobs_fetched: stats.0,
        bytes_fetched: stats.1,
    })
}

fn platform_text(p: &Value) -> String {
    let mut s = format!(
        "{}/{}",
        p["os"].as_str().unwrap_or("unknown"),
        p["architecture"].as_str().unwrap_or("unknown")
    );
    if let Some(v) = p["variant"].as_str() {
        s = format!("{s}/{v}");
    }
    s
}

/// Download the config and layers of one image manifest.
async fn pull_manifest_content(
    client: &Client,
    src: &Reference,
    m: &FetchedManifest,
    layout: &Path,
    stats: &mut (u64, u64),
) -> Result<()> {
    let what = format!("the manifest {} of {src}", m.digest);
    let v: Value = serde_json::from_slice(&m.bytes).map_err(|e| Error::Invalid {
        what: what.clone(),
        reason: format!("is not JSON: {e}"),
    })?;
    let mut descs = vec![descriptor(&v["config"], &what)?];
    for l in v["layers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        descs.push(descriptor(l, &what)?);
    }
    for d in descs {
        let n = client.download_blob(src, &d.digest, d.size, layout).await?;
        if n > 0 {
            stats.0 += 1;
            stats.1 += n;
        }
    }
    Ok(())
}

/// Add (or replace) the entry `ref_name` in the layout's `index.json`, and write `oci-layout`.
/// Written to a temporary file and renamed, so a crash leaves the old index or the new one;
/// an exclusive `flock` on the layout directory itself serialises pulls that share a layout
/// (in this process or another), so none loses another's entry, and no lock file is left.
async fn update_index(
    layout: &Path,
    ref_name: &str,
    digest: &str,
    media_type: &str,
    size: u64,
) -> Result<()> {
    let (layout, ref_name, digest, media_type) = (
        layout.to_path_buf(),
        ref_name.to_string(),
        digest.to_string(),
        media_type.to_string(),
    );
    let task = tokio::task::spawn_blocking(move || {
        update_index_locked(&layout, &ref_name, &digest, &media_type, size)
    });
    task.await.map_err(|e| Error::Invalid {
        what: "the layout's index.json update".into(),
        reason: e.to_string(),
    })?
}

fn update_index_locked(
    layout: &Path,
    ref_name: &str,
    digest: &str,
    media_type: &str,
    size: u64,
) -> Result<()> {
    use fs4::fs_std::FileExt;
    let lock = std::fs::File::open(layout).map_err(|e| io("open", layout, e))?;
    // Fully qualified: std's File::lock_exclusive would shadow fs4's on newer Rust.
    FileExt::lock_exclusive(&lock).map_err(|e| io("lock", layout, e))?;
    let path = layout.join("index.json");
    let mut index = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes).map_err(|e| Error::Invalid {
            what: path.display().to_string(),
            reason: format!("is not JSON ({e}): pull into a new directory"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
        }
        Err(e) => return Err(io("read", &path, e)),
    };
    let mut manifests: Vec<Value> = index["manifests"].as_array().cloned().unwrap_or_default();
    manifests.retain(|m| m["annotations"][REF_NAME] != ref_name);
    manifests.push(json!({
        "mediaType": media_type,
        "digest": digest,
        "size": size,
        "annotations": {REF_NAME: ref_name}
    }));
    index["manifests"] = Value::Array(manifests);
    let layout_file = layout.join("oci-layout");
    std::fs::write(&layout_file, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| io("write", &layout_file, e))?;
    let tmp = layout.join(format!(".index.json.{}", uuid::Uuid::new_v4()));
    std::fs::write(&tmp, index.to_string()).map_err(|e| io("write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("rename into place", &path, e))
    // The lock is released when `lock` is dropped, after the rename.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references_with_host_tag_and_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r =
            Reference::parse(&format!("mirror.example:5000/calico/node:v3.28.0@{d}")).expect("ref");
        assert_eq!(r.host, "mirror.example:5000");
        assert_eq!(r.repository, "calico/node");
        assert_eq!(r.tag.as_deref(), Some("v3.28.0"));
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(
            Reference::parse("127.0.0.1:5000/a:1").expect("ref").host,
            "127.0.0.1:5000"
        );
        for bad in [
            "calico/node:v1",
            "node:v1",
            "mirror.example/calico/node",
            "mirror.example/Calico/node:v1",
            "https://mirror.example/a:1",
            "mirror.example/a@sha256:xyz",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_bearer_challenges() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (scheme, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(scheme, "basic");
        assert_eq!(p["realm"], "Registry Realm");
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
