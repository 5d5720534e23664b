//! First-boot setup, login and logout, and the caller's own account. The operations here are
//! shared with the console's forms.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{ApiJson, Auth, AuthContext};
use super::middleware::{AuditActor, SESSION_COOKIE};
use super::AppState;
use crate::model::{check_name, check_password, ChangePassword, Principal, RoleBinding, User};
use crate::secrets;
use crate::store::{LoginOutcome, SESSION_TTL};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(setup))
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(change_password))
}

/// Hash a password on the blocking pool (argon2 is deliberately slow).
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || secrets::hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

async fn verify_password(password: String, hash: Option<String>) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || match hash {
        Some(h) => secrets::verify_password(&password, &h),
        None => {
            secrets::dummy_verify(&password);
            false
        }
    })
    .await
    .map_err(ApiError::internal)
}

/// Body of `POST /v1/setup`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    /// The one-time setup token printed by `palisade serve` on first start.
    pub token: String,
    pub username: String,
    pub password: String,
}

/// Create the first system admin with the one-time setup token; the token is void afterwards.
pub async fn complete_setup(app: &AppState, req: SetupRequest) -> Result<User, ApiError> {
    check_name("username", &req.username)?;
    check_password("password", &req.password)?;
    if !app.store.setup_token_valid(&req.token).await? {
        return Err(ApiError::Forbidden(
            "the setup token is wrong or was already used: restart palisade serve to print a new one while no account exists, or log in".into(),
        ));
    }
    let hash = hash_password(req.password).await?;
    app.store
        .complete_setup(&req.token, req.username, hash)
        .await?
        .ok_or_else(|| {
            ApiError::Forbidden("the setup token was used meanwhile: log in instead".into())
        })
}

/// Create the first system admin (no authentication: the setup token is the credential).
#[utoipa::path(post, path = "/v1/setup", tag = "session", security(()), request_body = SetupRequest,
    responses((status = 201, body = User), (status = 400, body = super::error::Problem),
              (status = 403, description = "Wrong or used token", body = super::error::Problem)))]
async fn setup(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<SetupRequest>,
) -> Result<Response, ApiError> {
    let actor = AuditActor(format!("setup:{}", req.username));
    let result = complete_setup(&app, req).await;
    let mut res = match result {
        Ok(user) => (StatusCode::CREATED, Json(user)).into_response(),
        Err(e) => e.into_response(),
    };
    res.extensions_mut().insert(actor);
    Ok(res)
}

/// Body of `POST /v1/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// Answer to a successful login.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    pub user_id: String,
    pub username: String,
    /// Send in `X-CSRF-Token` with every change made with the session cookie.
    pub csrf_token: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: time::OffsetDateTime,
}

/// Check a username and password, apply lockout, and start a session.
/// Returns the session secret with the login answer.
pub async fn start_session(
    app: &AppState,
    req: LoginRequest,
) -> Result<(String, LoginResponse), ApiError> {
    if req.password.len() > crate::model::MAX_PASSWORD {
        return Err(ApiError::BadCredentials);
    }
    let candidate = app.store.login_candidate(&req.username).await?;
    let now = crate::model::now();
    if let Some(c) = &candidate {
        if let Some(until) = c.locked_until.filter(|u| *u > now) {
            return Err(ApiError::Locked {
                until: rfc3339(until),
            });
        }
    }
    let ok = verify_password(
        req.password,
        candidate.as_ref().map(|c| c.password_hash.clone()),
    )
    .await?;
    let Some(c) = candidate else {
        return Err(ApiError::BadCredentials);
    };
    if c.disabled {
        return Err(ApiError::BadCredentials);
    }
    match app.store.record_login(&c.user_id, ok).await? {
        LoginOutcome::Accepted => {}
        LoginOutcome::Rejected => return Err(ApiError::BadCredentials),
        LoginOutcome::Locked { until } => {
            return Err(ApiError::Locked {
                until: rfc3339(until),
            })
        }
    }
    let (secret, csrf_token) = app.store.create_session(&c.user_id).await?;
    Ok((
        secret,
        LoginResponse {
            user_id: c.user_id,
            username: req.username,
            csrf_token,
            expires_at: now + SESSION_TTL,
        },
    ))
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The Set-Cookie value for a new session (HttpOnly, Secure, SameSite=Strict).
pub fn session_cookie(secret: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={secret}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.whole_seconds()
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The Set-Cookie value that removes the session cookie.
pub fn cleared_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "palisade_session=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0",
    )
}

/// Log in with username and password: sets the session cookie and returns the CSRF token.
/// Five failures lock the account for 30 s, doubling with each further failure (at most 15 min).
#[utoipa::path(post, path = "/v1/login", tag = "session", security(()), request_body = LoginRequest,
    responses((status = 200, body = LoginResponse, headers(("set-cookie" = String))),
              (status = 401, body = super::error::Problem), (status = 429, description = "Locked", body = super::error::Problem)))]
async fn login(State(app): State<AppState>, ApiJson(req): ApiJson<LoginRequest>) -> Response {
    let actor = AuditActor(format!("login:{}", req.username));
    let mut res = match start_session(&app, req).await {
        Ok((secret, body)) => {
            let mut res = Json(body).into_response();
            res.headers_mut()
                .insert(header::SET_COOKIE, session_cookie(&secret));
            res
        }
        Err(e) => e.into_response(),
    };
    res.extensions_mut().insert(actor);
    res
}

/// End the current session (clears the cookie). Token callers get 204 and nothing changes.
#[utoipa::path(post, path = "/v1/logout", tag = "session",
    responses((status = 204, description = "Logged out"), (status = 401, body = super::error::Problem)))]
async fn logout(
    State(app): State<AppState>,
    _auth: Auth,
    Extension(ctx): Extension<AuthContext>,
) -> Result<Response, ApiError> {
    if let Some(s) = &ctx.session {
        app.store.delete_session(&s.secret).await?;
    }
    let mut headers = HeaderMap::new();
    headers.insert(header::SET_COOKIE, cleared_cookie());
    Ok((StatusCode::NO_CONTENT, headers).into_response())
}

/// The caller's account and role bindings.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub user: User,
    pub bindings: Vec<RoleBinding>,
}

/// Who am I: the caller's account and role bindings.
#[utoipa::path(get, path = "/v1/me", tag = "session",
    responses((status = 200, body = Me), (status = 401, body = super::error::Problem)))]
async fn me(State(app): State<AppState>, Auth(p): Auth) -> Result<Json<Me>, ApiError> {
    let user = app.store.user(&p.user_id).await?;
    let bindings = app
        .store
        .list_bindings(
            Default::default(),
            p.user_id.clone(),
            Some(p.user_id.clone()),
            None,
            crate::model::MAX_PAGE,
        )
        .await?
        .items;
    Ok(Json(Me { user, bindings }))
}

/// Change the caller's own password after checking the current one; ends all its sessions.
pub async fn set_own_password(
    app: &AppState,
    p: &Principal,
    req: ChangePassword,
) -> Result<(), ApiError> {
    check_password("new_password", &req.new_password)?;
    let candidate = app
        .store
        .login_candidate(&p.username)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    if !verify_password(req.current_password, Some(candidate.password_hash)).await? {
        return Err(ApiError::Invalid(crate::model::Invalid::new(
            "current_password",
            "is not your current password",
        )));
    }
    let hash = hash_password(req.new_password).await?;
    app.store.set_password(&p.user_id, hash).await?;
    Ok(())
}

/// Change your own password (all your sessions end; log in again).
#[utoipa::path(post, path = "/v1/me/password", tag = "session", request_body = ChangePassword,
    responses((status = 204, description = "Changed"), (status = 400, body = super::error::Problem),
              (status = 401, body = super::error::Problem)))]
async fn change_password(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<ChangePassword>,
) -> Result<StatusCode, ApiError> {
    set_own_password(&app, &p, req).await?;
    Ok(StatusCode::NO_CONTENT)
}
