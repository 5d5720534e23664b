//! The web console: server-rendered HTML pages and plain form posts, with every template,
//! style sheet and icon embedded in the executable (no external fonts, scripts or CDNs).
//!
//! Pages authenticate with the session cookie (`Page` extractor); every form carries the
//! session's CSRF token (`Posted` extractor). Form handlers call the same operations as the
//! REST API (`api::*::add_*`), so access rules and validation live in one place.
//!
//! The one script, `static/bundles.js` (Bundles page), is a static file too: it drives the
//! resumable upload API with the session cookie and the CSRF header, so the policy below
//! never needs inline script.

mod forms;
mod pages;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use minijinja::{context, Environment, Value};
use rust_embed::RustEmbed;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::api::error::ApiError;
use crate::api::extract::AuthContext;
use crate::api::AppState;
use crate::model::Principal;

/// Templates and static files under `assets/`, embedded at build time.
#[derive(RustEmbed)]
#[folder = "assets/"]
struct Assets;

/// The console's template environment, built once at start.
pub struct Console {
    env: Environment<'static>,
}

impl Default for Console {
    fn default() -> Self {
        let mut env = Environment::new();
        env.set_loader(|name| {
            Ok(Assets::get(&format!("templates/{name}"))
                .map(|f| String::from_utf8_lossy(&f.data).into_owned()))
        });
        Console { env }
    }
}

/// Navigation bar entries: path, label, and whether only system admins see the entry (the
/// page itself refuses others too).
const NAV: &[(&str, &str, bool)] = &[
    ("/", "Dashboard", false),
    ("/tenants", "Tenants", false),
    ("/users", "Users", false),
    ("/tokens", "API tokens", false),
    ("/cloud-accounts", "Cloud accounts", false),
    ("/profiles", "Profiles", false),
    ("/clusters", "Clusters", false),
    ("/packs", "Packs", false),
    ("/bundles", "Bundles", true),
    ("/audit", "Audit", false),
];

/// Console routes (HTML; not part of the REST API document).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::dashboard))
        .route("/setup", get(pages::setup).post(forms::setup))
        .route("/login", get(pages::login).post(forms::login))
        .route("/logout", post(forms::logout))
        .route("/tenants", get(pages::tenants).post(forms::tenant))
        .route("/projects", post(forms::project))
        .route("/users", get(pages::users).post(forms::user))
        .route("/tokens", get(pages::tokens).post(forms::token))
        .route("/tokens/{id}/revoke", post(forms::revoke_token))
        .route(
            "/cloud-accounts",
            get(pages::cloud_accounts).post(forms::cloud_account),
        )
        .route("/profiles", get(pages::profiles).post(forms::profile))
        .route("/cloud-accounts/{id}", get(pages::cloud_account))
        .route(
            "/cloud-accounts/{id}/validate",
            post(forms::validate_account),
        )
        .route(
            "/cloud-accounts/{id}/placement",
            post(forms::account_placement),
        )
        .route("/clusters", get(pages::clusters).post(forms::cluster))
        .route("/clusters/{id}", get(pages::cluster))
        .route("/clusters/{id}/scale", post(forms::scale_cluster))
        .route("/clusters/{id}/delete", post(forms::delete_cluster))
        .route("/packs", get(pages::packs))
        .route("/bundles", get(pages::bundles))
        .route("/audit", get(pages::audit))
        .route("/static/{*path}", get(static_file))
}

/// `?error=` / `?notice=` messages carried across a redirect.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Flash {
    error: Option<String>,
    notice: Option<String>,
}

impl Flash {
    fn error(message: impl Into<String>) -> Flash {
        Flash {
            error: Some(message.into()),
            notice: None,
        }
    }
    fn notice(message: impl Into<String>) -> Flash {
        Flash {
            error: None,
            notice: Some(message.into()),
        }
    }
}

/// A logged-in console user: principal and the session's CSRF token.
pub(crate) struct Session {
    principal: Principal,
    csrf: String,
    secret: String,
}

/// Extracts the session of a page request; without one, redirects to the login page (or to
/// setup while no account exists).
pub(crate) struct Page(Session);

impl FromRequestParts<AppState> for Page {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(AuthContext {
            principal,
            session: Some(s),
        }) = parts.extensions.get::<AuthContext>()
        {
            return Ok(Page(Session {
                principal: principal.clone(),
                csrf: s.csrf_token.clone(),
                secret: s.secret.clone(),
            }));
        }
        let has_users = app.store.has_users().await.unwrap_or(true);
        Err(Redirect::to(if has_users { "/login" } else { "/setup" }).into_response())
    }
}

/// A form that carries the session's CSRF token in its `_csrf` field.
pub(crate) trait CsrfField {
    fn csrf(&self) -> &str;
}

/// Extracts the session and a form whose CSRF token matches it (403 otherwise).
pub(crate) struct Posted<T>(Session, T);

impl<T: DeserializeOwned + CsrfField + Send> FromRequest<AppState> for Posted<T> {
    type Rejection = Response;

    async fn from_request(req: Request, app: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let Page(session) = Page::from_request_parts(&mut parts, app).await?;
        let Form(form) = Form::<T>::from_request(Request::from_parts(parts, body), app)
            .await
            .map_err(|e| ApiError::BadBody(e.body_text()).into_response())?;
        if !crate::secrets::constant_time_eq(form.csrf().as_bytes(), session.csrf.as_bytes()) {
            return Err(ApiError::Forbidden(
                "the form's CSRF token does not match your session: reload the page and try again"
                    .into(),
            )
            .into_response());
        }
        Ok(Posted(session, form))
    }
}

/// Render template `name` inside the layout, with the navigation, session and flash messages.
fn render(
    app: &AppState,
    name: &str,
    title: &str,
    active: &str,
    session: Option<&Session>,
    flash: &Flash,
    extra: Value,
) -> Result<Response, ApiError> {
    let admin = session.is_some_and(|s| s.principal.is_system_admin());
    let nav: Vec<Value> = NAV
        .iter()
        .filter(|(_, _, admin_only)| admin || !admin_only)
        .map(|(href, label, _)| context! { href, label })
        .collect();
    let base = context! {
        title, active, nav,
        user => session.map(|s| s.principal.username.clone()),
        csrf => session.map(|s| s.csrf.clone()),
        error => flash.error,
        notice => flash.notice,
    };
    let html = app
        .console
        .env
        .get_template(name)
        .and_then(|t| t.render(context! { ..base, ..extra }))
        .map_err(ApiError::internal)?;
    let mut res = Html(html).into_response();
    // The console never needs to be framed, and loads nothing from elsewhere. Scripts fall
    // under default-src 'self': files from /static/ only, never inline or eval'd code.
    res.headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    Ok(res)
}

/// Redirect back to `page` with an error or notice message.
fn back(page: &str, key: &str, message: &str) -> Response {
    let query = serde_urlencoded::to_string([(key, message)]).unwrap_or_default();
    Redirect::to(&format!("{page}?{query}")).into_response()
}

/// Answer a form's outcome: success goes back with a notice, a user error back with the
/// error; an internal error is a 500 page.
fn outcome<T>(
    page: &str,
    result: Result<T, ApiError>,
    notice: impl FnOnce(T) -> String,
) -> Response {
    match result {
        Ok(v) => back(page, "notice", &notice(v)),
        Err(e @ ApiError::Internal(_)) => e.into_response(),
        Err(e) => back(page, "error", &e.to_string()),
    }
}

async fn static_file(Path(path): Path<String>) -> Response {
    match Assets::get(&format!("static/{path}")) {
        Some(f) => {
            let mime = f.metadata.mimetype().to_string();
            (
                [
                    (header::CONTENT_TYPE, mime),
                    (header::CACHE_CONTROL, "max-age=3600".into()),
                ],
                f.data.into_owned(),
            )
                .into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        let c = Console::default();
        for name in [
            "base.html",
            "setup.html",
            "login.html",
            "dashboard.html",
            "tenants.html",
            "users.html",
            "tokens.html",
            "cloud_accounts.html",
            "profiles.html",
            "clusters.html",
            "packs.html",
            "bundles.html",
            "audit.html",
        ] {
            c.env
                .get_template(name)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
