//! The web console: server-rendered HTML pages and plain form posts, with every template,
//! style sheet and icon embedded in the executable (no external fonts, scripts or CDNs).
//!
//! Pages authenticate with the session cookie; every form carries the session's CSRF token.
//! Form handlers call the same operations as the REST API (`api::*::add_*`), so access rules
//! and validation are enforced in one place.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use minijinja::{context, Environment, Value};
use rust_embed::RustEmbed;
use serde::Deserialize;

use crate::api::error::ApiError;
use crate::api::extract::AuthContext;
use crate::api::{self, AppState};
use crate::model::{
    Credentials, Layer, LayerType, NewApiToken, NewCloudAccount, NewProfile, NewProject, NewTenant,
    NewUser, Principal, Visibility, MAX_PAGE,
};
use crate::store::AuditFilter;

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

/// One entry of the navigation bar.
#[derive(serde::Serialize)]
struct NavItem {
    href: &'static str,
    label: &'static str,
    later: bool,
}

const NAV: &[(&str, &str)] = &[
    ("/", "Dashboard"),
    ("/tenants", "Tenants"),
    ("/users", "Users"),
    ("/tokens", "API tokens"),
    ("/cloud-accounts", "Cloud accounts"),
    ("/profiles", "Profiles"),
    ("/clusters", "Clusters"),
    ("/packs", "Packs"),
    ("/audit", "Audit"),
];

/// Console routes (HTML; not part of the REST API document).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/setup", get(setup_page).post(setup_submit))
        .route("/login", get(login_page).post(login_submit))
        .route("/logout", post(logout_submit))
        .route("/tenants", get(tenants_page).post(tenant_submit))
        .route("/projects", post(project_submit))
        .route("/users", get(users_page).post(user_submit))
        .route("/tokens", get(tokens_page).post(token_submit))
        .route("/tokens/{id}/revoke", post(token_revoke))
        .route("/cloud-accounts", get(accounts_page).post(account_submit))
        .route("/profiles", get(profiles_page).post(profile_submit))
        .route("/clusters", get(clusters_page))
        .route("/packs", get(packs_page))
        .route("/audit", get(audit_page))
        .route("/static/{*path}", get(static_file))
}

/// `?error=` / `?notice=` messages carried across a redirect.
#[derive(Debug, Default, Deserialize)]
struct Flash {
    error: Option<String>,
    notice: Option<String>,
    token: Option<String>,
}

/// A page that needs a logged-in user: its principal and CSRF token.
struct Session {
    principal: Principal,
    csrf: String,
}

/// The session of the request, or a redirect to the login (or, before any account exists, setup) page.
async fn require_session(
    app: &AppState,
    ctx: Option<Extension<AuthContext>>,
) -> Result<Session, Response> {
    if let Some(Extension(AuthContext {
        principal,
        session: Some(s),
    })) = ctx
    {
        return Ok(Session {
            principal,
            csrf: s.csrf_token,
        });
    }
    let has_users = app.store.has_users().await.unwrap_or(true);
    Err(Redirect::to(if has_users { "/login" } else { "/setup" }).into_response())
}

/// A form post's session, checked against the form's CSRF token.
async fn require_form_session(
    app: &AppState,
    ctx: Option<Extension<AuthContext>>,
    csrf: &str,
) -> Result<Session, Response> {
    let s = require_session(app, ctx).await?;
    if !crate::secrets::constant_time_eq(csrf.as_bytes(), s.csrf.as_bytes()) {
        return Err(ApiError::Forbidden(
            "the form's CSRF token does not match your session: reload the page and try again"
                .into(),
        )
        .into_response());
    }
    Ok(s)
}

fn render(
    app: &AppState,
    name: &str,
    title: &str,
    active: &str,
    session: Option<&Session>,
    flash: &Flash,
    extra: Value,
) -> Response {
    let nav: Vec<NavItem> = NAV
        .iter()
        .map(|(href, label)| NavItem {
            href,
            label,
            later: false,
        })
        .collect();
    let base = context! {
        title => title,
        active => active,
        nav => nav,
        user => session.map(|s| s.principal.username.clone()),
        csrf => session.map(|s| s.csrf.clone()),
        error => flash.error,
        notice => flash.notice,
    };
    let ctx = context! { ..base, ..extra };
    match app
        .console
        .env
        .get_template(name)
        .and_then(|t| t.render(ctx))
    {
        Ok(html) => {
            let mut res = Html(html).into_response();
            // The console never needs to be framed, and loads nothing from elsewhere.
            res.headers_mut()
                .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            res.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'"),
            );
            res
        }
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// Redirect back to `page` with an error or notice message.
fn back(page: &str, key: &str, message: &str) -> Response {
    let query = serde_urlencoded::to_string([(key, message)]).unwrap_or_default();
    Redirect::to(&format!("{page}?{query}")).into_response()
}

/// Answer a form's outcome: on success go back with a notice; on a user error, back with it.
fn outcome<T>(
    page: &str,
    result: Result<T, ApiError>,
    notice: impl FnOnce(T) -> String,
) -> Response {
    match result {
        Ok(v) => back(page, "notice", &notice(v)),
        Err(ApiError::Internal(e)) => ApiError::Internal(e).into_response(),
        Err(e) => back(page, "error", &e.to_string()),
    }
}

fn empty_to_none(s: String) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
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

async fn dashboard(
    State(app): State<AppState>,
    ctx: Option<Extension<AuthContext>>,
    Query(flash): Query<Flash>,
) -> Response {
    let s = match require_session(&app, ctx).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let p = &s.principal;
    let tenants = app
        .store
        .list_tenants(p.tenant_visibility(), None, None, 50)
        .await;
    let clusters = app
        .store
        .list_clusters(p.project_visibility(), Default::default(), None, 50)
        .await;
    let counts = if p.is_system_admin() {
        app.store.counts().await.ok()
    } else {
        None
    };
    match (tenants, clusters) {
        (Ok(t), Ok(c)) => render(
            &app,
            "dashboard.html",
            "Dashboard",
            "/",
            Some(&s),
            &flash,
            context! {
                tenants => t.items, clusters => c.items,
                counts => counts.unwrap_or_default().into_iter().filter(|(t, _)| *t != "audit_log").map(|(t, n)| (t.replace('_', " "), n)).collect::<Vec<_>>(),
            },
        ),
        (Err(e), _) | (_, Err(e)) => ApiError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
struct SetupQuery {
    token: Option<String>,
    error: Option<String>,
}

async fn setup_page(State(app): State<AppState>, Query(q): Query<SetupQuery>) -> Response {
    match app.store.has_users().await {
        Ok(true) => return back("/login", "notice", "Setup is complete: log in."),
        Ok(false) => {}
        Err(e) => return ApiError::from(e).into_response(),
    }
    let flash = Flash {
        error: q.error,
        ..Default::default()
    };
    render(
        &app,
        "setup.html",
        "Set up",
        "",
        None,
        &flash,
        context! { token => q.token.unwrap_or_default() },
    )
}

#[derive(Deserialize)]
struct SetupForm {
    token: String,
    username: String,
    password: String,
}

async fn setup_submit(State(app): State<AppState>, Form(f): Form<SetupForm>) -> Response {
    let actor = api::middleware::AuditActor(format!("setup:{}", f.username));
    let token = f.token.clone();
    let req = api::session::SetupRequest {
        token: f.token,
        username: f.username,
        password: f.password,
    };
    let mut res = match api::session::complete_setup(&app, req).await {
        Ok(u) => back(
            "/login",
            "notice",
            &format!("Administrator {} created: log in.", u.username),
        ),
        Err(ApiError::Internal(e)) => ApiError::Internal(e).into_response(),
        Err(e) => {
            let q =
                serde_urlencoded::to_string([("token", token.as_str()), ("error", &e.to_string())])
                    .unwrap_or_default();
            Redirect::to(&format!("/setup?{q}")).into_response()
        }
    };
    res.extensions_mut().insert(actor);
    res
}

async fn login_page(State(app): State<AppState>, Query(flash): Query<Flash>) -> Response {
    match app.store.has_users().await {
        Ok(false) => return Redirect::to("/setup").into_response(),
        Ok(true) => {}
        Err(e) => return ApiError::from(e).into_response(),
    }
    render(&app, "login.html", "Log in", "", None, &flash, context! {})
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

async fn login_submit(State(app): State<AppState>, Form(f): Form<LoginForm>) -> Response {
    let actor = api::middleware::AuditActor(format!("login:{}", f.username));
    let req = api::session::LoginRequest {
        username: f.username,
        password: f.password,
    };
    let mut res = match api::session::start_session(&app, req).await {
        Ok((secret, _)) => {
            let mut res = Redirect::to("/").into_response();
            res.headers_mut()
                .insert(header::SET_COOKIE, api::session::session_cookie(&secret));
            res
        }
        Err(ApiError::Internal(e)) => ApiError::Internal(e).into_response(),
        Err(e) => back("/login", "error", &e.to_string()),
    };
    res.extensions_mut().insert(actor);
    res
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
}

async fn logout_submit(
    State(app): State<AppState>,
    ctx: Option<Extension<AuthContext>>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let secret = ctx
        .as_ref()
        .and_then(|c| c.session.as_ref().map(|s| s.secret.clone()));
    if let Err(r) = require_form_session(&app, ctx, &f.csrf).await {
        return r;
    }
    if let Some(secret) = secret {
        if let Err(e) = app.store.delete_session(&secret).await {
            return ApiError::from(e).into_response();
        }
    }
    let mut res = back("/login", "notice", "Logged out.");
    res.headers_mut()
        .insert(header::SET_COOKIE, api::session::cleared_cookie());
    res
}

async fn tenants_page(
    State(app): State<AppState>,
    ctx: Option<Extension<AuthContext>>,
    Query(flash): Query<Flash>,
) -> Response {
    let s = match require_session(&app, ctx).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let p = &s.principal;
    let tenants = app
        .store
        .list_tenants(p.tenant_visibility(), None, None, MAX_PAGE)
        .await;
    let projects = app
        .store
        .list_projects(p.project_visibility(), None, None, None, MAX_PAGE)
        .await;
    match (tenants, projects) {
        (Ok(t), Ok(pr)) => {
            // Only tenants the user administers are offered for new projects.
            let admin_tenants: Vec<_> = t
                .items
                .iter()
                .filter(|x| p.administers_tenant(&x.id))
                .cloned()
                .collect();
            render(
                &app,
                "tenants.html",
                "Tenants",
                "/tenants",
                Some(&s),
                &flash,
                context! {
                    tenants => t.items,
                    admin_tenants => admin_tenants,
                    projects => pr.items,
                    can_create_tenant => p.is_system_admin(),
                },
            )
        }
        (Err(e), _) | (_, Err(e)) => ApiError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
struct TenantForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    name: String,
    #[serde(default)]
    description: String,
}

async fn tenant_submit(
    State(app): State<AppState>,
    ctx: Option<Extension<AuthContext>>,
    Form(f): Form<TenantForm>,
) -> Response {
    let s = match require_form_session(&app, ctx, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let result = api::tenancy::add_tenant(
        &app,
        &s.principal,
        NewTenant {
            name: f.name,
            description: f.description,
        },
    )
    .await;
    outcome("/tenants", result, |t| {
        format!("Tenant {} created.", t.name)
    })
}

#[derive(Deserialize)]
struct ProjectForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    tenant_id: String,
    name: String,
    #[serde(default)]
    description: String,
}

async fn project_submit(
    State(app): State<AppState>,
    ctx: Option<Extension<AuthContext>>,
    Form(f): Form<ProjectForm>,
) -> Response {
    let s = match require_form_session(&app, ctx, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let new = NewProject {
        tenant_id: f.tenant_id,
        name: f.name,
        description: f.description,
    };
    let result = api::tenancy::add_project(&app, &s.principal, new).await;
    outcome("/tenants", result, |p| {
        format!("Project {} created.", p.name)
    })
}

/// Tenant id -> name for the tenants the principal can see.
async fn tenant_names(
    app: &AppState,
    p: &Principal,
) -> Result<(Vec<crate::model::Tenant>, BTreeMap<String, String>), ApiError> {
    let tenants = app
        .store
        .list_tenants(p.tenant_visibility(), None, None, MAX_PAGE)
        .await?
        .items;
    let names = tenants
        .iter()
        .map(|t| (t.id.clone(), t.name.clone()))
        .collect();
    Ok((tenants, names))
}

/// Project id -> name for the projects the principal can see.
async fn project_names(
    app: &AppState,
    p: &Principal,
) -> Result<(Vec<crate::model::Project>, BTreeMap<String, String>), ApiError> {
    let projects = app
        .store
        .list_projects(p.project_visibility(), None, None, None, MAX_PAGE)
        .await?
        .items;
    let names = projects
        .iter()
        .map(|x| (x.id.clone(), x.name.clone()))
        .collect();
    Ok((projects, names))
}

async fn users_page(
    State(app): State<AppState>,
    ctx: Option<Extension<AuthContext>>,
    Query(flash): Query<Flash>,
) -> Response {
    let s = match require_session(&app, ctx).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let p = &s.principal;
    let v = Visibility {
        all: p.is_system_admin(),
        tenants: p.administered_tenants(),
        projects: vec![],
    };
    let users = app
        .store
        .list_users(v, p.user_id.clone(), None, None, MAX_PAGE)
        .await;
    match (users, tenant_names(&app, p).await) {
        (Ok(u), Ok((tenants, names))) => {
            let admin_tenants: Vec<_> = tenants
                .into_iter()
                .filter(|t| p.administers_tenant(&t.id))
                .collect();
            render(
                &app,
                "users.html",
                "Users",
                "/users",
                Some(&s),
                &flash,
                context! {
                    users => u.items, tenants => admin_tenants, tenant_names => names, is_system_admin => p.is_system_admin(),
                },
            )
        }
        (Err(e), _) => ApiError::from(e).into_response(),
        (_, Err(e)) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct UserForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    username: String,
    #[serde(default)]
    display_name: String,
    password: String,
    #[serde(default)]
    tenant_id: String,
}

async fn user_submit(
    State(app): State<AppState>,
    ctx: Option<Extension<AuthContext>>,
    Form(f): Form<UserForm>,
) -> Response {
    let s = match require_form_session(&app, ctx, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let new = NewUser {
        username: f.username,
        display_name: f.display_name,
        password: f.password,
        tenant_id: empty_to_none(f.tenant_id),
    };
    let result = api::identity::add_user(&app, &s.principal, new).await;
    outcome("/users", result, |u| {
        format!("User {} created.", u.username)
    })
}

async fn tokens_page(
    State(app): State<AppState>,
    ctx: Option<Extension<AuthContext>>,
    Query(flash): Query<Flash>,
) -> Response {
    let s = match require_session(&app, ctx).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    render_tokens(&app, &s, &flash, None).await
}

async fn render_tokens(
    app: &AppState,
    s: &Session,
    flash: &Flash,
    secret: Option<String>,
) -> Response {
    match app.store.list_tokens(&s.principal.user_id).await {
        Ok(tokens) => render(
            app,
            "tokens.html",
            "API tokens",
            "/tokens",
            Some(s),
            flash,
            context! { tokens => tokens, secret => secret.or(flash.token.clone()) },
        ),
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
struct TokenForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    name: String,
    #[serde(default)]
    expires_in_days: String,
}

async fn token_submit(
    State(app): State<AppState>,
    ctx: Option<Extension<AuthContext>>,
    Form(f): Form<TokenForm>,
) -> Response {
    let s = match require_form_session(&app, ctx, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let days = match empty_to_none(f.expires_in_days).map(|d| d.parse::<u32>()) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(_)) => {
            return back(
                "/tokens",
                "error",
                "expires_in_days: give a whole number of days",
            )
        }
    };
    match api::identity::add_token(
        &app,
        &s.principal,
        NewApiToken {
            name: f.name,
            expires_in_days: days,
        },
    )
    .await
    {
        // Rendered directly (not redirected) so the secret never appears in a URL or history.
        Ok(created) => {
            let flash = Flash {
                notice: Some(format!("Token {} created.", created.token.name)),
                ..Default::default()
            };
            render_tokens(&app, &s, &flash, Some(created.secret)).await
        }
        Err(ApiError::Internal(e)) => ApiError::Internal(e).into_response(),
        Err(e) => back("/tokens", "error", &e.to_string()),
    }
}

async fn token_revoke(
    State(app): State<AppState>,
    ctx: Option<Extension<AuthContext>>,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let s = match require_form_session(&app, ctx, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let result = api::identity::revoke(&app, &s.principal, &id).await;
    outcome("/tokens", result, |t| format!("Token {} revoked.", t.name))
}

async fn accounts_page(
    State(app): State<AppState>,
    ctx: Option<Extension<AuthContext>>,
    Query(flash): Query<Flash>,
) -> Response {
    let s = match require_session(&app, ctx).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let p = &s.principal;
    let accounts = app
        .store
        .list_cloud_accounts(p.project_visibility(), None, None, None, MAX_PAGE)
        .await;
    match (accounts, project_names(&app, p).await) {
        (Ok(a), Ok((projects, names))) => {
            let editable: Vec<_> = projects
                .into_iter()
                .filter(|x| p.edits_project(&x.tenant_id, &x.id))
                .collect();
            render(
                &app,
                "cloud_accounts.html",
                "Cloud accounts",
                "/cloud-accounts",
                Some(&s),
                &flash,
                context! {
                    accounts => a.items, projects => editable, project_names => names,
                },
            )
        }
        (Err(e), _) => ApiError::from(e).into_response(),
        (_, Err(e)) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct AccountForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    project_id: String,
    name: String,
    kind: String,
    endpoint: String,
    username: String,
    password: String,
    #[serde(default)]
    ca_bundle: String,
}

async fn account_submit(
    State(app): State<AppState>,
    ctx: Option<Extension<AuthContext>>,
    Form(f): Form<AccountForm>,
) -> Response {
    let s = match require_form_session(&app, ctx, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(kind) = crate::model::CloudKind::parse(&f.kind) else {
        return back(
            "/cloud-accounts",
            "error",
            "kind: choose vsphere, openstack or baremetal",
        );
    };
    let new = NewCloudAccount {
        project_id: f.project_id,
        name: f.name,
        kind,
        endpoint: f.endpoint,
        credentials: Credentials {
            username: f.username,
            password: f.password,
            ..Default::default()
        },
        ca_bundle: f.ca_bundle,
        placement: Default::default(),
    };
    let result = api::cloud_accounts::add_cloud_account(&app, &s.principal, new).await;
    outcome("/cloud-accounts", result, |a| {
        format!("Cloud account {} created.", a.name)
    })
}

async fn profiles_page(
    State(app): State<AppState>,
    ctx: Option<Extension<AuthContext>>,
    Query(flash): Query<Flash>,
) -> Response {
    let s = match require_session(&app, ctx).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let p = &s.principal;
    let profiles = app
        .store
        .list_profiles(p.project_visibility(), None, None, None, MAX_PAGE)
        .await;
    match (profiles, project_names(&app, p).await) {
        (Ok(pr), Ok((projects, names))) => {
            let editable: Vec<_> = projects
                .into_iter()
                .filter(|x| p.edits_project(&x.tenant_id, &x.id))
                .collect();
            render(
                &app,
                "profiles.html",
                "Profiles",
                "/profiles",
                Some(&s),
                &flash,
                context! {
                    profiles => pr.items, projects => editable, project_names => names,
                },
            )
        }
        (Err(e), _) => ApiError::from(e).into_response(),
        (_, Err(e)) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct ProfileForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    project_id: String,
    name: String,
    #[serde(default)]
    description: String,
    layers: String,
}

/// Parse the console's `type pack version` lines into layers, naming the bad line.
fn parse_layer_lines(text: &str) -> Result<Vec<Layer>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, line)| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                [t, pack, version] => Ok(Layer {
                    layer_type: LayerType::parse(t).ok_or_else(|| format!("layer line {}: {t:?} is not one of os, kubernetes, network, storage, addon", i + 1))?,
                    pack: pack.to_string(),
                    version: version.to_string(),
                    values: String::new(),
                }),
                _ => Err(format!("layer line {}: write `type pack version`, such as `kubernetes rke2 1.29.4`", i + 1)),
            }
        })
        .collect()
}

async fn profile_submit(
    State(app): State<AppState>,
    ctx: Option<Extension<AuthContext>>,
    Form(f): Form<ProfileForm>,
) -> Response {
    let s = match require_form_session(&app, ctx, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let layers = match parse_layer_lines(&f.layers) {
        Ok(l) => l,
        Err(e) => return back("/profiles", "error", &e),
    };
    let new = NewProfile {
        project_id: f.project_id,
        name: f.name,
        description: f.description,
        layers,
    };
    let result = api::profiles::add_profile(&app, &s.principal, new).await;
    outcome("/profiles", result, |p| {
        format!("Profile {} created at revision 1.", p.profile.name)
    })
}

async fn clusters_page(
    State(app): State<AppState>,
    ctx: Option<Extension<AuthContext>>,
    Query(flash): Query<Flash>,
) -> Response {
    let s = match require_session(&app, ctx).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let p = &s.principal;
    let clusters = app
        .store
        .list_clusters(p.project_visibility(), Default::default(), None, MAX_PAGE)
        .await;
    match (clusters, project_names(&app, p).await) {
        (Ok(c), Ok((_, names))) => render(
            &app,
            "clusters.html",
            "Clusters",
            "/clusters",
            Some(&s),
            &flash,
            context! { clusters => c.items, project_names => names },
        ),
        (Err(e), _) => ApiError::from(e).into_response(),
        (_, Err(e)) => e.into_response(),
    }
}

async fn packs_page(
    State(app): State<AppState>,
    ctx: Option<Extension<AuthContext>>,
    Query(flash): Query<Flash>,
) -> Response {
    let s = match require_session(&app, ctx).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match app.store.list_packs(None, None, None, MAX_PAGE).await {
        Ok(p) => render(
            &app,
            "packs.html",
            "Packs",
            "/packs",
            Some(&s),
            &flash,
            context! { packs => p.items },
        ),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn audit_page(
    State(app): State<AppState>,
    ctx: Option<Extension<AuthContext>>,
    Query(flash): Query<Flash>,
) -> Response {
    let s = match require_session(&app, ctx).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !s.principal.is_system_admin() {
        return render(
            &app,
            "audit.html",
            "Audit log",
            "/audit",
            Some(&s),
            &Flash {
                error: Some("The audit log is for system admins.".into()),
                ..Default::default()
            },
            context! { entries => Vec::<()>::new(), chain => "not shown" },
        );
    }
    let entries = app
        .store
        .list_audit(AuditFilter {
            limit: Some(1000),
            ..Default::default()
        })
        .await;
    let chain = app.store.verify_audit().await;
    match (entries, chain) {
        (Ok(mut e), Ok(c)) => {
            e.reverse();
            let chain = c
                .problem
                .map(|p| format!("TAMPERED: {p}"))
                .unwrap_or_else(|| format!("intact ({} entries)", c.entries));
            render(
                &app,
                "audit.html",
                "Audit log",
                "/audit",
                Some(&s),
                &flash,
                context! { entries => e, chain => chain },
            )
        }
        (Err(e), _) | (_, Err(e)) => ApiError::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_layer_lines_and_names_bad_ones() {
        let layers =
            parse_layer_lines("os ubuntu 22.04\n\n kubernetes rke2 1.29.4 \n").expect("parse");
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[1].layer_type, LayerType::Kubernetes);
        assert!(parse_layer_lines("os ubuntu")
            .expect_err("short")
            .contains("line 1"));
        assert!(parse_layer_lines("os a 1\nfoo b 2")
            .expect_err("type")
            .contains("line 2"));
    }

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
            "audit.html",
        ] {
            c.env
                .get_template(name)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
