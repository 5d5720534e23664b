//! Request pipeline, outermost first: request id and metrics, authentication (with CSRF for
//! console sessions), audit of every mutating request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{problem_response, ApiError, ProblemBody};
use super::extract::{AuthContext, SessionAuth};
use super::AppState;
use crate::model::Principal;
use crate::store::{AuditEntry, Store};

/// Name of the console session cookie.
pub const SESSION_COOKIE: &str = "palisade_session";
/// Header carrying the CSRF token on API calls made with a session cookie.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The id of one request, in request extensions and the `x-request-id` response header.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Set by handlers that know better who acted than the authentication did (login attempts).
#[derive(Clone, Debug)]
pub struct AuditActor(pub String);

/// Set by handlers to name the object a mutation created (its id).
#[derive(Clone, Debug)]
pub struct AuditObject(pub String);

/// How long a token's principal is reused before it is read again (and `last_used_at` written).
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);
const TOKEN_CACHE_MAX: usize = 10_000;

/// Principals of recently used API tokens, so that automation does not read the database
/// for every request. Any successful mutation clears it, so a revoked token, a removed
/// binding or a disabled user takes effect at once.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<Vec<u8>, (Principal, Instant)>>,
}

impl TokenCache {
    async fn principal(&self, store: &Store, secret: &str) -> Result<Option<Principal>, ApiError> {
        let digest = crate::secrets::secret_digest(secret);
        if let Ok(entries) = self.entries.lock() {
            if let Some((p, valid_until)) = entries.get(&digest) {
                if Instant::now() < *valid_until {
                    return Ok(Some(p.clone()));
                }
            }
        }
        // Pull credentials of clusters carry their own prefix; see `authenticate` for where
        // they are accepted.
        let found = if secret.starts_with(crate::model::PULL_SECRET_PREFIX) {
            store.pull_credential_principal(secret).await?
        } else {
            store.token_principal(secret).await?
        };
        let Some((principal, expires_at)) = found else {
            return Ok(None);
        };
        // Cached for the cache period, but never past the token's own expiry.
        let left = (expires_at - crate::model::now()).unsigned_abs();
        let valid_until = Instant::now() + TOKEN_CACHE_TTL.min(left);
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= TOKEN_CACHE_MAX {
                entries.clear();
            }
            entries.insert(digest, (principal.clone(), valid_until));
        }
        if let Some(id) = &principal.token_id {
            // Recorded at most once per cache period per token.
            store.touch_token(id).await?;
        }
        Ok(Some(principal))
    }

    /// Forget every cached principal.
    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }
}

/// The value of cookie `name` in the request, if any.
pub fn cookie<'a>(req_headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    req_headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn route_of(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into())
}

/// Outermost layer: give the request an id, time it, count it, and put the id into problems.
pub async fn request_id_and_metrics(
    State(app): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = uuid::Uuid::new_v4().simple().to_string();
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().to_string();
    let route = route_of(&req);
    let started = Instant::now();
    let mut res = next.run(req).await;
    let status = res.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    app.metrics.observe(&method, &route, status, seconds);
    tracing::debug!(request_id = %id, %method, %route, status, ms = seconds * 1000.0, "request");
    if let Some(ProblemBody(mut problem)) = res.extensions_mut().remove::<ProblemBody>() {
        problem.request_id = Some(id.clone());
        let headers = res.headers().clone();
        res = problem_response(problem);
        for (k, v) in headers.iter() {
            if k != header::CONTENT_LENGTH {
                res.headers_mut().insert(k.clone(), v.clone());
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

/// The password of `Authorization: Basic <base64(user:password)>`, if that is what was sent.
fn basic_password(headers: &axum::http::HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let encoded = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_string())
}

/// Resolve credentials (bearer token, else session cookie) into an `AuthContext`. A bearer token
/// that is wrong, expired or revoked is refused outright; a stale cookie just counts as none.
/// API calls made with a session cookie must carry the session's CSRF token in `X-CSRF-Token`.
///
/// The registry (`/v2/`) also takes the token as the password of HTTP Basic authentication
/// (any user name), which is what container tools send, answers refusals in its own error
/// format, and ignores session cookies: registry clients never hold one, so a browser's
/// console session can never be ridden into a push (no CSRF surface there).
///
/// A cluster's pull credential (secret prefix `ppl_`) authenticates only under `/v2/` and only
/// GET and HEAD: anywhere else it counts as no valid credential (401), and a push or delete
/// with it is refused (403 `DENIED`) before any handler runs. This is the read-only rule.
pub async fn authenticate(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let registry = crate::registry::is_registry_path(req.uri().path());
    let mut bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|s| s.trim().to_string());
    if registry && bearer.is_none() {
        bearer = basic_password(req.headers());
    }
    let ctx = if let Some(secret) = bearer {
        if secret.starts_with(crate::model::PULL_SECRET_PREFIX) {
            if !registry {
                return ApiError::Unauthenticated.into_response();
            }
            if !matches!(*req.method(), Method::GET | Method::HEAD) {
                return crate::registry::errors::RegistryError::Denied(
                    "a cluster's pull credential can only pull (GET and HEAD): push with an API token of a user who may write the repository".into(),
                )
                .into_response();
            }
        }
        match app.tokens.principal(&app.store, &secret).await {
            Ok(Some(principal)) => Some(AuthContext {
                principal,
                session: None,
            }),
            Ok(None) if registry => {
                return crate::registry::errors::RegistryError::Unauthorized.into_response();
            }
            Ok(None) => {
                return ApiError::Unauthenticated.into_response();
            }
            Err(e) => return e.into_response(),
        }
    } else if registry {
        None
    } else if let Some(secret) = cookie(req.headers(), SESSION_COOKIE).map(str::to_string) {
        match app.store.session(&secret).await {
            Ok(Some(s)) => Some(AuthContext {
                principal: s.principal,
                session: Some(SessionAuth {
                    secret,
                    csrf_token: s.csrf_token,
                }),
            }),
            Ok(None) => None,
            Err(e) => return ApiError::from(e).into_response(),
        }
    } else {
        None
    };
    if let Some(AuthContext {
        session: Some(s), ..
    }) = &ctx
    {
        let api = req.uri().path().starts_with("/v1/");
        if api && !is_safe(req.method()) {
            let sent = req
                .headers()
                .get(CSRF_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !crate::secrets::constant_time_eq(sent, s.csrf_token.as_bytes()) {
                return ApiError::Forbidden(
                    "missing or wrong CSRF token: send the csrf_token from the login answer in the X-CSRF-Token header".into(),
                )
                .into_response();
            }
        }
    }
    if let Some(ctx) = ctx {
        req.extensions_mut().insert(ctx);
    }
    next.run(req).await
}

/// Mutations recorded only when refused (401, 403): each chunk of a bundle upload. A bundle of
/// many gigabytes is thousands of chunks, which would bury everything else in the log; the
/// session's start, import and abort, and its expiry, are what the log records of an upload.
fn audited_only_when_refused(method: &Method, route: &str) -> bool {
    *method == Method::PATCH && route == super::bundles::UPLOAD_CHUNK_ROUTE
}

/// Record every mutating request (and so every login attempt) in the audit chain: who, what,
/// on which object, from where, when, and with what outcome. Bodies are never recorded, so
/// no secret reaches the log. The one exception is [`audited_only_when_refused`].
pub async fn audit(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if is_safe(req.method()) {
        return next.run(req).await;
    }
    let quiet = audited_only_when_refused(req.method(), &route_of(&req));
    let actor = req
        .extensions()
        .get::<AuthContext>()
        .map(|c| c.principal.username.clone())
        .unwrap_or_else(|| "anonymous".into());
    let action = format!("{} {}", req.method(), route_of(&req));
    let path = req.uri().path().to_string();
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    if quiet {
        let res = next.run(req).await;
        let status = res.status();
        if matches!(status.as_u16(), 401 | 403) {
            let entry = AuditEntry {
                actor,
                action,
                object: path,
                source,
                outcome: format!("denied {}", status.as_u16()),
                request_id,
            };
            if let Err(e) = app.store.append_audit(entry).await {
                tracing::error!(error = %e, "cannot append to the audit log");
                return ApiError::internal(e).into_response();
            }
        }
        return res;
    }
    // Recorded before the handler can change anything: a crash after its change commits but
    // before the entry below is appended still leaves an entry (see recover_pending_audit).
    let pending = AuditEntry {
        actor: actor.clone(),
        action: action.clone(),
        object: path.clone(),
        source: source.clone(),
        outcome: String::new(),
        request_id: request_id.clone(),
    };
    if let Err(e) = app.store.begin_audit(pending).await {
        tracing::error!(error = %e, "cannot record a pending audit entry; request refused");
        return ApiError::internal(e).into_response();
    }
    let res = next.run(req).await;
    let status = res.status();
    let outcome = if status.is_success() || status.is_redirection() {
        "success"
    } else if matches!(status.as_u16(), 401 | 403 | 404 | 429) {
        "denied"
    } else {
        "failure"
    };
    let actor = res
        .extensions()
        .get::<AuditActor>()
        .map(|a| a.0.clone())
        .unwrap_or(actor);
    let object = match res.extensions().get::<AuditObject>() {
        Some(o) => format!("{path} -> {}", o.0),
        None => path,
    };
    let entry = AuditEntry {
        actor,
        action,
        object,
        source,
        outcome: format!("{outcome} {}", status.as_u16()),
        request_id,
    };
    if let Err(e) = app.store.append_audit(entry).await {
        tracing::error!(error = %e, "cannot append to the audit log");
        return ApiError::internal(e).into_response();
    }
    if status.is_success() || status.is_redirection() {
        app.tokens.clear();
    }
    res
}
