//! Keystone v3: authentication (password or application credential), the service catalog,
//! token renewal, and the one request path every OpenStack service client of this provider
//! goes through ([`Session::call`]), which adds the token, renews it before it expires and
//! once more on a 401, and turns HTTP failures into [`ProviderError`]s.
//!
//! Only the sibling service clients (`glance`, `nova`, `neutron`) and the provider in
//! `mod.rs` use it.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::providers::http::transport_error;
use crate::providers::{ErrorKind, ProviderError};

/// How the account logs in.
#[derive(Clone)]
pub(super) enum AuthMethod {
    /// User name and password, scoped to a project.
    Password {
        username: String,
        password: String,
        user_domain: String,
        /// Project name, or id when it is 32 hex digits.
        project: String,
        project_domain: String,
    },
    /// An application credential: its project scope is fixed when it is created.
    ApplicationCredential { id: String, secret: String },
}

impl AuthMethod {
    /// The body of `POST /v3/auth/tokens`. `scoped = false` asks for an unscoped token (used
    /// only to tell a wrong password from a missing project role).
    fn request_body(&self, scoped: bool) -> Value {
        match self {
            AuthMethod::Password {
                username,
                password,
                user_domain,
                project,
                project_domain,
            } => {
                let identity = json!({
                    "methods": ["password"],
                    "password": {"user": {
                        "name": username,
                        "domain": {"name": user_domain},
                        "password": password,
                    }},
                });
                if !scoped {
                    return json!({"auth": {"identity": identity}});
                }
                let project = if looks_like_id(project) {
                    json!({"id": project})
                } else {
                    json!({"name": project, "domain": {"name": project_domain}})
                };
                json!({"auth": {"identity": identity, "scope": {"project": project}}})
            }
            AuthMethod::ApplicationCredential { id, secret } => json!({"auth": {"identity": {
                "methods": ["application_credential"],
                "application_credential": {"id": id, "secret": secret},
            }}}),
        }
    }

    /// Who logs in, for messages (never the secret).
    fn who(&self) -> String {
        match self {
            AuthMethod::Password {
                username,
                user_domain,
                ..
            } => format!("user {username} (domain {user_domain})"),
            AuthMethod::ApplicationCredential { id, .. } => format!("application credential {id}"),
        }
    }
}

/// Keystone ids are 32 lowercase hex digits (uuid4 without dashes).
pub(super) fn looks_like_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The OpenStack services this provider calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Service {
    Compute,
    Image,
    Network,
}

impl Service {
    /// The catalog type.
    pub(super) fn catalog_type(self) -> &'static str {
        match self {
            Service::Compute => "compute",
            Service::Image => "image",
            Service::Network => "network",
        }
    }
    /// The product name, for messages.
    pub(super) fn product(self) -> &'static str {
        match self {
            Service::Compute => "Nova",
            Service::Image => "Glance",
            Service::Network => "Neutron",
        }
    }
    /// The API version path the catalog URL must end with (Glance and Neutron catalogs list
    /// the unversioned root; Nova's lists `/v2.1`, sometimes with the project id).
    fn version_suffix(self) -> Option<&'static str> {
        match self {
            Service::Compute => None,
            Service::Image => Some("/v2"),
            Service::Network => Some("/v2.0"),
        }
    }
}

/// The parts of a token response this provider uses.
#[derive(Debug, Deserialize)]
pub(super) struct TokenBody {
    pub token: TokenInfo,
}

/// `token` of a Keystone token response.
#[derive(Debug, Deserialize)]
pub(super) struct TokenInfo {
    pub expires_at: String,
    #[serde(default)]
    pub issued_at: Option<String>,
    #[serde(default)]
    pub user: Option<Named>,
    #[serde(default)]
    pub project: Option<Project>,
    #[serde(default)]
    pub roles: Vec<Named>,
    #[serde(default)]
    pub catalog: Vec<CatalogEntry>,
}

/// Anything with a name (users, roles, domains).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Named {
    #[serde(default)]
    pub name: String,
}

/// The project a token is scoped to.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Project {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub domain: Option<Named>,
}

/// One service of the catalog.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct CatalogEntry {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// One endpoint of a catalog service.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Endpoint {
    pub interface: String,
    #[serde(default)]
    pub region_id: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    pub url: String,
}

/// A token and what came with it.
#[derive(Debug)]
pub(super) struct Token {
    pub value: String,
    pub expires_at: OffsetDateTime,
    pub issued_at: OffsetDateTime,
    pub user: String,
    pub project_id: String,
    pub project_name: String,
    pub project_domain: String,
    pub roles: Vec<String>,
    pub catalog: Vec<CatalogEntry>,
}

impl Token {
    /// Parse a token response (body plus the `X-Subject-Token` header).
    pub(super) fn parse(value: String, body: &[u8]) -> Result<Token, ProviderError> {
        let parsed: TokenBody = serde_json::from_slice(body).map_err(|e| {
            ProviderError::new(
                ErrorKind::Protocol,
                format!("Keystone answered a token this client cannot read: {e}"),
            )
        })?;
        let t = parsed.token;
        let expires_at = parse_time(&t.expires_at)?;
        let issued_at = match &t.issued_at {
            Some(s) => parse_time(s)?,
            None => OffsetDateTime::now_utc(),
        };
        let project = t.project.ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Invalid,
                "Keystone issued a token without a project scope: set the placement key `project` (or use an application credential, which carries its project)",
            )
        })?;
        Ok(Token {
            value,
            expires_at,
            issued_at,
            user: t.user.map(|u| u.name).unwrap_or_default(),
            project_id: project.id,
            project_name: project.name,
            project_domain: project.domain.map(|d| d.name).unwrap_or_default(),
            roles: t.roles.into_iter().map(|r| r.name).collect(),
            catalog: t.catalog,
        })
    }

    /// Whether the token should be replaced before it is used at `now`: less than five
    /// minutes left, or less than half of its lifetime for short-lived tokens.
    pub(super) fn needs_renewal(&self, now: OffsetDateTime) -> bool {
        let lifetime: time::Duration = self.expires_at - self.issued_at;
        let margin = std::cmp::min(lifetime / 2, time::Duration::minutes(5));
        self.expires_at - now < margin
    }

    /// The base URL of a service from the catalog: the endpoint of `interface` in `region`
    /// (any region when `None`), with the API version path the clients expect.
    pub(super) fn endpoint(
        &self,
        service: Service,
        interface: &str,
        region: Option<&str>,
    ) -> Result<String, ProviderError> {
        let entries: Vec<&CatalogEntry> = self
            .catalog
            .iter()
            .filter(|e| e.kind == service.catalog_type())
            .collect();
        if entries.is_empty() {
            let types: Vec<&str> = self.catalog.iter().map(|e| e.kind.as_str()).collect();
            return Err(ProviderError::not_found(format!(
                "the service catalog has no {} ({}) service; the catalog lists: {}. Palisade needs compute, image and network",
                service.catalog_type(),
                service.product(),
                types.join(", ")
            )));
        }
        let mut regions = Vec::new();
        for e in entries.iter().flat_map(|e| e.endpoints.iter()) {
            let r = e.region_id.clone().or(e.region.clone()).unwrap_or_default();
            if !regions.contains(&r) {
                regions.push(r.clone());
            }
            if e.interface == interface && region.is_none_or(|want| want == r) {
                return Ok(versioned(&e.url, service));
            }
        }
        Err(ProviderError::not_found(format!(
            "the service catalog has no {interface} {} endpoint{}; its regions are: {}. Set the placement keys `region` and `interface` (public, internal or admin) to one that exists",
            service.catalog_type(),
            region.map(|r| format!(" in region {r}")).unwrap_or_default(),
            regions.join(", ")
        )))
    }
}

/// A catalog URL with the version path the clients append their paths to.
fn versioned(url: &str, service: Service) -> String {
    let base = url.trim_end_matches('/');
    match service.version_suffix() {
        Some(v) if !base.ends_with(v) => format!("{base}{v}"),
        _ => base.to_string(),
    }
}

fn parse_time(s: &str) -> Result<OffsetDateTime, ProviderError> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|e| {
        ProviderError::new(
            ErrorKind::Protocol,
            format!("Keystone answered a time this client cannot read ({s:?}): {e}"),
        )
    })
}

/// A complete HTTP answer (OpenStack API answers are small JSON documents).
#[derive(Debug)]
pub(super) struct Reply {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

impl Reply {
    /// Parse the body as JSON of type `T`.
    pub(super) fn json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
    ) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ProviderError::new(
                ErrorKind::Protocol,
                format!(
                    "{what}: the answer is not what this client expects ({e}): {}",
                    snippet(&self.body)
                ),
            )
        })
    }

    /// Whether the status is 2xx.
    pub(super) fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// Turn a non-2xx answer into an error for `what` (the operation, e.g. "create server x").
    pub(super) fn error(&self, what: &str) -> ProviderError {
        status_error(what, self.status, &self.body)
    }

    /// The body when the status is 2xx, else the error for `what`.
    pub(super) fn expect_ok(self, what: &str) -> Result<Reply, ProviderError> {
        if self.ok() {
            Ok(self)
        } else {
            Err(self.error(what))
        }
    }
}

/// The message of an OpenStack error body. Nova: `{"itemNotFound": {"message": ...}}`;
/// Neutron: `{"NeutronError": {"message": ...}}`; Keystone: `{"error": {"message": ...}}`;
/// Glance: an HTML page whose text is the message.
pub(super) fn error_message(body: &[u8]) -> String {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        if let Some(Value::String(m)) = map.get("message") {
            return m.clone();
        }
        for v in map.values() {
            if let Some(m) = v.get("message").and_then(Value::as_str) {
                return m.to_string();
            }
            if let Some(Value::String(m)) = v.get("detail") {
                return m.clone();
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let mut plain = String::new();
    let mut in_tag = false;
    let mut in_title = false;
    let mut rest = text.as_ref();
    // Drop tags and the <title> (Glance repeats the status there).
    while let Some(c) = rest.chars().next() {
        if c == '<' {
            in_tag = true;
            let lower = rest.get(..7).unwrap_or("").to_ascii_lowercase();
            if lower.starts_with("<title") {
                in_title = true;
            } else if lower.starts_with("</title") {
                in_title = false;
            }
        } else if c == '>' {
            in_tag = false;
            plain.push(' ');
        } else if !in_tag && !in_title {
            plain.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    let words: Vec<&str> = plain.split_whitespace().collect();
    let mut msg = words.join(" ");
    if msg.len() > 400 {
        let mut cut = 400;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push_str("...");
    }
    msg
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    s.chars().take(300).collect()
}

/// Map an HTTP failure of an OpenStack API to a provider error for `what`.
pub(super) fn status_error(what: &str, status: StatusCode, body: &[u8]) -> ProviderError {
    let msg = error_message(body);
    let lower = msg.to_ascii_lowercase();
    let quota = lower.contains("quota") || (lower.contains("exceeds") && lower.contains("limit"));
    let (kind, hint) = match status.as_u16() {
        401 => (
            ErrorKind::Credentials,
            "the token was refused; check the account's credentials",
        ),
        403 | 413 | 409 if quota => (
            ErrorKind::Capacity,
            "the project's quota is used up: free resources or ask the cloud's admin for more",
        ),
        403 => (
            ErrorKind::Permission,
            "the account's user lacks a permission: give it the member role on the project",
        ),
        404 => (ErrorKind::NotFound, ""),
        409 if lower.contains("already allocated") || lower.contains("in use") => (
            ErrorKind::Capacity,
            "the address or name is taken by something else",
        ),
        409 => (
            ErrorKind::Transient,
            "try again when the current operation ends",
        ),
        413 => (ErrorKind::Capacity, ""),
        400 | 422 => (ErrorKind::Invalid, ""),
        429 | 500 | 502 | 503 | 504 => (
            ErrorKind::Transient,
            "the service is busy or failing; try again later",
        ),
        _ => (ErrorKind::Protocol, ""),
    };
    let mut text = format!("{what}: HTTP {}", status.as_u16());
    if !msg.is_empty() {
        text.push_str(&format!(": {msg}"));
    }
    if !hint.is_empty() {
        text.push_str(&format!(" ({hint})"));
    }
    ProviderError::new(kind, text)
}

/// How many times an idempotent request is sent again after a 5xx answer.
const MAX_SERVER_ERROR_RETRIES: u32 = 2;

/// Extra headers of one request.
pub(super) type Headers<'a> = &'a [(&'static str, String)];

/// A logged-in Keystone session: the HTTP client, the credentials and the current token.
pub(super) struct Session {
    http: reqwest::Client,
    auth_url: String,
    auth: AuthMethod,
    region: Option<String>,
    interface: String,
    token: tokio::sync::Mutex<Option<Arc<Token>>>,
}

impl Session {
    /// A session that logs in on first use.
    pub(super) fn new(
        http: reqwest::Client,
        auth_url: &str,
        auth: AuthMethod,
        region: Option<String>,
        interface: String,
    ) -> Session {
        Session {
            http,
            auth_url: auth_url.trim_end_matches('/').to_string(),
            auth,
            region,
            interface,
            token: tokio::sync::Mutex::new(None),
        }
    }

    /// The Keystone v3 URL.
    pub(super) fn auth_url(&self) -> &str {
        &self.auth_url
    }

    /// The region setting, if any.
    pub(super) fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// The current token, fetched or renewed when missing or close to expiry.
    pub(super) async fn token(&self) -> Result<Arc<Token>, ProviderError> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref() {
            if !t.needs_renewal(OffsetDateTime::now_utc()) {
                return Ok(t.clone());
            }
        }
        let fresh = Arc::new(self.login().await?);
        *guard = Some(fresh.clone());
        Ok(fresh)
    }

    /// Drop `stale` (a token a service refused) so that the next call logs in again; a token
    /// another task already renewed is kept.
    async fn forget(&self, stale: &Token) {
        let mut guard = self.token.lock().await;
        if guard.as_ref().is_some_and(|t| t.value == stale.value) {
            *guard = None;
        }
    }

    /// Log in now, whatever the cached token.
    pub(super) async fn relogin(&self) -> Result<Arc<Token>, ProviderError> {
        let mut guard = self.token.lock().await;
        let fresh = Arc::new(self.login().await?);
        *guard = Some(fresh.clone());
        Ok(fresh)
    }

    /// `POST /v3/auth/tokens`.
    async fn login(&self) -> Result<Token, ProviderError> {
        let url = format!("{}/auth/tokens", self.auth_url);
        let reply = self
            .http
            .post(&url)
            .json(&self.auth.request_body(true))
            .send()
            .await
            .map_err(|e| transport_error(&self.auth_url, &e))?;
        let status = reply.status();
        let subject = reply
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = reply
            .bytes()
            .await
            .map_err(|e| transport_error(&self.auth_url, &e))?;
        if status.is_success() {
            let value = subject.ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::Protocol,
                    format!(
                        "{}: the login answered {status} without an X-Subject-Token header; is this a Keystone v3 URL?",
                        self.auth_url
                    ),
                )
            })?;
            return Token::parse(value, &body);
        }
        Err(self.login_error(status, &body).await)
    }

    /// Explain a failed login. Keystone answers 401 both for wrong credentials and for a
    /// project the user has no role on (or that does not exist); an unscoped login tells them
    /// apart.
    async fn login_error(&self, status: StatusCode, body: &[u8]) -> ProviderError {
        let who = self.auth.who();
        let msg = error_message(body);
        match status.as_u16() {
            401 | 404 => {
                if let AuthMethod::Password {
                    project,
                    project_domain,
                    ..
                } = &self.auth
                {
                    if self.unscoped_login_works().await {
                        return ProviderError::new(
                            ErrorKind::Permission,
                            format!(
                                "Keystone at {}: {who} logs in but has no role on project {project} (domain {project_domain}), or that project does not exist; check the placement keys `project` and `project_domain`, or give the user the member role there",
                                self.auth_url
                            ),
                        );
                    }
                }
                let fix = match self.auth {
                    AuthMethod::Password { .. } => {
                        "check the username, the password and the placement key `user_domain`"
                    }
                    AuthMethod::ApplicationCredential { .. } => {
                        "check the application credential id and secret, and that it has not expired or been deleted"
                    }
                };
                ProviderError::new(
                    ErrorKind::Credentials,
                    format!(
                        "Keystone at {} refused the credentials of {who} ({msg}); {fix}",
                        self.auth_url
                    ),
                )
            }
            403 => ProviderError::new(
                ErrorKind::Permission,
                format!(
                    "Keystone at {}: {who} may not log in ({msg})",
                    self.auth_url
                ),
            ),
            _ => status_error(
                &format!("log in to Keystone at {}", self.auth_url),
                status,
                body,
            ),
        }
    }

    async fn unscoped_login_works(&self) -> bool {
        let url = format!("{}/auth/tokens", self.auth_url);
        match self
            .http
            .post(&url)
            .json(&self.auth.request_body(false))
            .send()
            .await
        {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }

    /// The base URL of a service (from the token's catalog).
    pub(super) async fn endpoint(&self, service: Service) -> Result<String, ProviderError> {
        let token = self.token().await?;
        token.endpoint(service, &self.interface, self.region.as_deref())
    }

    /// One request to a service: `path` is appended to the service's base URL (or used as is
    /// when it is a full URL, e.g. a pagination link). The token is renewed before it expires
    /// and once more when the service answers 401. Idempotent methods (GET, PUT, DELETE) are
    /// sent again, twice at most, when the service answers 500, 502, 503 or 504 (a database
    /// deadlock or a restarting worker); POST never is. The answer is returned whatever its
    /// status.
    pub(super) async fn call(
        &self,
        service: Service,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        headers: Headers<'_>,
    ) -> Result<Reply, ProviderError> {
        let mut retried = false;
        let idempotent = matches!(method, Method::GET | Method::PUT | Method::DELETE);
        let mut server_errors = 0u32;
        loop {
            let token = self.token().await?;
            let base = token.endpoint(service, &self.interface, self.region.as_deref())?;
            let url = if path.starts_with("http://") || path.starts_with("https://") {
                path.to_string()
            } else {
                format!("{base}{path}")
            };
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header("X-Auth-Token", &token.value)
                .header("Accept", "application/json");
            if !query.is_empty() {
                req = req.query(query);
            }
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let reply = req.send().await.map_err(|e| transport_error(&base, &e))?;
            let status = reply.status();
            let bytes = reply
                .bytes()
                .await
                .map_err(|e| transport_error(&base, &e))?;
            if status == StatusCode::UNAUTHORIZED && !retried {
                // Revoked or expired early (clock skew, a password change): log in once more.
                retried = true;
                self.forget(&token).await;
                continue;
            }
            if idempotent
                && matches!(status.as_u16(), 500 | 502 | 503 | 504)
                && server_errors < MAX_SERVER_ERROR_RETRIES
            {
                server_errors += 1;
                tracing::debug!(%url, %status, "retrying an idempotent OpenStack request");
                tokio::time::sleep(Duration::from_millis(500) * server_errors).await;
                continue;
            }
            return Ok(Reply {
                status,
                body: bytes.to_vec(),
            });
        }
    }

    /// `GET` a JSON document; a 404 is `None`.
    pub(super) async fn get_opt<T: serde::de::DeserializeOwned>(
        &self,
        service: Service,
        path: &str,
        query: &[(&str, String)],
        headers: Headers<'_>,
        what: &str,
    ) -> Result<Option<T>, ProviderError> {
        let reply = self
            .call(service, Method::GET, path, query, None, headers)
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        reply.expect_ok(what)?.json(what).map(Some)
    }

    /// `GET` a JSON document that must exist.
    pub(super) async fn get<T: serde::de::DeserializeOwned>(
        &self,
        service: Service,
        path: &str,
        query: &[(&str, String)],
        headers: Headers<'_>,
        what: &str,
    ) -> Result<T, ProviderError> {
        self.call(service, Method::GET, path, query, None, headers)
            .await?
            .expect_ok(what)?
            .json(what)
    }

    /// A request with a streamed body (image uploads): the token is renewed first, but a 401
    /// cannot be retried since the body is consumed. `client` has no whole-request timeout.
    pub(super) async fn send_stream(
        &self,
        client: &reqwest::Client,
        service: Service,
        path: &str,
        body: reqwest::Body,
        content_length: Option<u64>,
        what: &str,
    ) -> Result<(), ProviderError> {
        let token = self.token().await?;
        let base = token.endpoint(service, &self.interface, self.region.as_deref())?;
        let mut req = client
            .put(format!("{base}{path}"))
            .header("X-Auth-Token", &token.value)
            .header("Content-Type", "application/octet-stream")
            .body(body);
        if let Some(len) = content_length {
            req = req.header("Content-Length", len);
        }
        let reply = req.send().await.map_err(|e| {
            let mut err = transport_error(&base, &e);
            err.message = format!("{what}: {}", err.message);
            err
        })?;
        let status = reply.status();
        let bytes = reply
            .bytes()
            .await
            .map_err(|e| transport_error(&base, &e))?;
        if status.is_success() {
            Ok(())
        } else {
            Err(status_error(what, status, &bytes))
        }
    }
}

/// How long to wait between polls of something that changes state (bounded by the callers).
pub(super) fn poll_interval(attempt: u32) -> Duration {
    Duration::from_millis(match attempt {
        0..=3 => 250,
        4..=10 => 500,
        _ => 1000,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = r#"{"token": {"methods": ["password"],
        "user": {"domain": {"id": "default", "name": "Default"}, "id": "0a28", "name": "demo"},
        "expires_at": "2026-11-21T14:35:14.000000Z", "issued_at": "2026-11-21T10:35:14.000000Z",
        "project": {"domain": {"id": "default", "name": "Default"}, "id": "8747", "name": "demo"},
        "roles": [{"id": "1", "name": "reader"}, {"id": "2", "name": "member"}],
        "catalog": [
          {"type": "compute", "name": "nova", "endpoints": [
            {"id": "a", "interface": "public", "region_id": "RegionOne", "region": "RegionOne", "url": "http://127.0.0.1:8774/v2.1"},
            {"id": "b", "interface": "internal", "region_id": "RegionTwo", "region": "RegionTwo", "url": "http://nova.internal:8774/v2.1/"}]},
          {"type": "image", "name": "glance", "endpoints": [
            {"id": "c", "interface": "public", "region_id": "RegionOne", "url": "http://127.0.0.1:9292/"}]},
          {"type": "network", "name": "neutron", "endpoints": [
            {"id": "d", "interface": "public", "region_id": "RegionOne", "url": "http://127.0.0.1:9696"}]}
        ]}}"#;

    #[test]
    fn parses_a_token_and_finds_versioned_endpoints() {
        let t = Token::parse("tok".into(), TOKEN.as_bytes()).expect("token");
        assert_eq!(t.project_name, "demo");
        assert_eq!(t.project_domain, "Default");
        assert_eq!(t.roles, vec!["reader", "member"]);
        assert_eq!(
            t.endpoint(Service::Compute, "public", Some("RegionOne"))
                .expect("nova"),
            "http://127.0.0.1:8774/v2.1"
        );
        assert_eq!(
            t.endpoint(Service::Compute, "internal", None)
                .expect("nova internal"),
            "http://nova.internal:8774/v2.1"
        );
        assert_eq!(
            t.endpoint(Service::Image, "public", None).expect("glance"),
            "http://127.0.0.1:9292/v2"
        );
        assert_eq!(
            t.endpoint(Service::Network, "public", None)
                .expect("neutron"),
            "http://127.0.0.1:9696/v2.0"
        );
        let err = t
            .endpoint(Service::Image, "public", Some("RegionTwo"))
            .expect_err("no image endpoint in RegionTwo");
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("RegionOne"), "{}", err.message);
    }

    #[test]
    fn renews_five_minutes_before_expiry_or_at_half_life() {
        let t = Token::parse("tok".into(), TOKEN.as_bytes()).expect("token");
        let exp = t.expires_at;
        assert!(!t.needs_renewal(exp - time::Duration::minutes(6)));
        assert!(t.needs_renewal(exp - time::Duration::minutes(4)));
        let mut short = t;
        short.issued_at = exp - time::Duration::minutes(4);
        assert!(!short.needs_renewal(exp - time::Duration::minutes(3)));
        assert!(short.needs_renewal(exp - time::Duration::seconds(90)));
    }

    #[test]
    fn a_token_without_project_scope_is_refused_with_the_fix() {
        let body = r#"{"token": {"expires_at": "2026-11-21T14:35:14Z", "catalog": []}}"#;
        let err = Token::parse("t".into(), body.as_bytes()).expect_err("unscoped");
        assert!(err.message.contains("project"), "{}", err.message);
    }

    #[test]
    fn reads_error_messages_of_every_service() {
        assert_eq!(
            error_message(
                br#"{"itemNotFound": {"code": 404, "message": "Instance x could not be found."}}"#
            ),
            "Instance x could not be found."
        );
        assert_eq!(
            error_message(br#"{"NeutronError": {"type": "NetworkNotFound", "message": "Network nope could not be found.", "detail": ""}}"#),
            "Network nope could not be found."
        );
        assert_eq!(
            error_message(br#"{"error":{"code":401,"message":"The request you have made requires authentication.","title":"Unauthorized"}}"#),
            "The request you have made requires authentication."
        );
        let glance = "<html>\n <head>\n  <title>404 Not Found</title>\n </head>\n <body>\n  <h1>404 Not Found</h1>\n  No image found with ID 0000<br /><br />\n\n </body>\n</html>";
        assert_eq!(
            error_message(glance.as_bytes()),
            "404 Not Found No image found with ID 0000"
        );
    }

    #[test]
    fn maps_statuses_to_error_kinds() {
        let quota = br#"{"forbidden": {"code": 403, "message": "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances"}}"#;
        assert_eq!(
            status_error("create server", StatusCode::FORBIDDEN, quota).kind,
            ErrorKind::Capacity
        );
        let policy = br#"{"forbidden": {"code": 403, "message": "Policy doesn't allow os_compute_api:servers:create to be performed."}}"#;
        let e = status_error("create server", StatusCode::FORBIDDEN, policy);
        assert_eq!(e.kind, ErrorKind::Permission);
        assert!(
            e.message.starts_with("create server: HTTP 403: Policy"),
            "{}",
            e.message
        );
        assert_eq!(
            status_error("x", StatusCode::SERVICE_UNAVAILABLE, b"").kind,
            ErrorKind::Transient
        );
        assert_eq!(
            status_error("x", StatusCode::BAD_REQUEST, b"{}").kind,
            ErrorKind::Invalid
        );
        let taken = br#"{"NeutronError": {"type": "IpAddressAlreadyAllocated", "message": "IP address 10.0.0.5 already allocated in subnet s", "detail": ""}}"#;
        assert_eq!(
            status_error("create port", StatusCode::CONFLICT, taken).kind,
            ErrorKind::Capacity
        );
    }

    #[test]
    fn password_auth_scopes_by_name_or_id() {
        let mut auth = AuthMethod::Password {
            username: "demo".into(),
            password: "pw".into(),
            user_domain: "Default".into(),
            project: "demo".into(),
            project_domain: "Default".into(),
        };
        let body = auth.request_body(true);
        assert_eq!(body["auth"]["scope"]["project"]["name"], "demo");
        assert_eq!(
            body["auth"]["scope"]["project"]["domain"]["name"],
            "Default"
        );
        assert!(auth.request_body(false)["auth"].get("scope").is_none());
        if let AuthMethod::Password { project, .. } = &mut auth {
            *project = "8747acc13f474c8f8327890f24ddff1c".into();
        }
        assert_eq!(
            auth.request_body(true)["auth"]["scope"]["project"]["id"],
            "8747acc13f474c8f8327890f24ddff1c"
        );
        let app = AuthMethod::ApplicationCredential {
            id: "i".into(),
            secret: "s".into(),
        };
        let body = app.request_body(true);
        assert_eq!(
            body["auth"]["identity"]["methods"][0],
            "application_credential"
        );
        assert!(body["auth"].get("scope").is_none());
    }
}
