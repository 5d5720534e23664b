//! Console pages (GET): read through the store with the caller's visibility, render.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::context;
use serde::Deserialize;

use super::{back, render, Flash, Page, Session};
use crate::api::error::ApiError;
use crate::api::tenancy::readable;
use crate::api::AppState;
use crate::model::{ClusterStatus, Principal, Project, Tenant, Visibility, MAX_PAGE};

/// Bytes the Bundles page sends per `PATCH`: a dropped connection costs at most this much
/// again, and each request is large enough that its overhead does not matter.
const UPLOAD_CHUNK_BYTES: u64 = 8 * 1024 * 1024;

pub(super) async fn dashboard(
    State(app): State<AppState>,
    Page(s): Page,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    let p = &s.principal;
    let tenants = app
        .store
        .list_tenants(p.tenant_visibility(), None, None, 50)
        .await?;
    let clusters = app
        .store
        .list_clusters(p.project_visibility(), Default::default(), None, 50)
        .await?;
    let counts: Vec<(String, i64)> = if p.is_system_admin() {
        app.store
            .counts()
            .await?
            .into_iter()
            .filter(|(table, _)| *table != "audit_log")
            .map(|(table, n)| (table.replace('_', " "), n))
            .collect()
    } else {
        vec![]
    };
    render(
        &app,
        "dashboard.html",
        "Dashboard",
        "/",
        Some(&s),
        &flash,
        context! {
            tenants => tenants.items, clusters => clusters.items, counts,
        },
    )
}

#[derive(Deserialize)]
pub(super) struct SetupQuery {
    token: Option<String>,
    error: Option<String>,
}

pub(super) async fn setup(
    State(app): State<AppState>,
    Query(q): Query<SetupQuery>,
) -> Result<Response, ApiError> {
    if app.store.has_users().await? {
        return Ok(back("/login", "notice", "Setup is complete: log in."));
    }
    let flash = Flash {
        error: q.error,
        notice: None,
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

pub(super) async fn login(
    State(app): State<AppState>,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    if !app.store.has_users().await? {
        return Ok(Redirect::to("/setup").into_response());
    }
    render(&app, "login.html", "Log in", "", None, &flash, context! {})
}

/// Tenants visible to `p` with an id -> name map.
async fn tenant_names(
    app: &AppState,
    p: &Principal,
) -> Result<(Vec<Tenant>, BTreeMap<String, String>), ApiError> {
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

/// Projects visible to `p` with an id -> name map.
async fn project_names(
    app: &AppState,
    p: &Principal,
) -> Result<(Vec<Project>, BTreeMap<String, String>), ApiError> {
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

/// Projects `p` may create objects in (offered in create forms).
fn editable_projects(p: &Principal, projects: Vec<Project>) -> Vec<Project> {
    projects
        .into_iter()
        .filter(|x| p.edits_project(&x.tenant_id, &x.id))
        .collect()
}

pub(super) async fn tenants(
    State(app): State<AppState>,
    Page(s): Page,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    let p = &s.principal;
    let (tenants, _) = tenant_names(&app, p).await?;
    let (projects, _) = project_names(&app, p).await?;
    // Only tenants the user administers are offered for new projects.
    let admin_tenants: Vec<_> = tenants
        .iter()
        .filter(|t| p.administers_tenant(&t.id))
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
            tenants, admin_tenants, projects, can_create_tenant => p.is_system_admin(),
        },
    )
}

pub(super) async fn users(
    State(app): State<AppState>,
    Page(s): Page,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    let p = &s.principal;
    let v = Visibility {
        all: p.is_system_admin(),
        tenants: p.administered_tenants(),
        projects: vec![],
    };
    let users = app
        .store
        .list_users(v, p.user_id.clone(), None, None, MAX_PAGE)
        .await?;
    let (tenants, tenant_names) = tenant_names(&app, p).await?;
    let tenants: Vec<_> = tenants
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
            users => users.items, tenants, tenant_names, is_system_admin => p.is_system_admin(),
        },
    )
}

pub(super) async fn tokens(
    State(app): State<AppState>,
    Page(s): Page,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    render_tokens(&app, &s, &flash, None).await
}

/// The tokens page, showing a just-created secret when given (it is never in a URL).
pub(super) async fn render_tokens(
    app: &AppState,
    s: &Session,
    flash: &Flash,
    secret: Option<String>,
) -> Result<Response, ApiError> {
    let tokens = app.store.list_tokens(&s.principal.user_id).await?;
    render(
        app,
        "tokens.html",
        "API tokens",
        "/tokens",
        Some(s),
        flash,
        context! { tokens, secret },
    )
}

pub(super) async fn cloud_accounts(
    State(app): State<AppState>,
    Page(s): Page,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    let p = &s.principal;
    let accounts = app
        .store
        .list_cloud_accounts(p.project_visibility(), None, None, None, MAX_PAGE)
        .await?;
    let mut checks = BTreeMap::new();
    for a in &accounts.items {
        if let Some(c) = app.store.account_check(&a.id).await? {
            checks.insert(a.id.clone(), c);
        }
    }
    let (projects, project_names) = project_names(&app, p).await?;
    render(
        &app,
        "cloud_accounts.html",
        "Cloud accounts",
        "/cloud-accounts",
        Some(&s),
        &flash,
        context! {
            accounts => accounts.items, checks, projects => editable_projects(p, projects), project_names,
        },
    )
}

/// One cloud account: its last check and the placement pickers filled from it.
pub(super) async fn cloud_account(
    State(app): State<AppState>,
    Page(s): Page,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    let p = &s.principal;
    let account = readable(p, app.store.cloud_account(&id).await, "cloud account")?;
    let check = app.store.account_check(&id).await?;
    let mut choices: BTreeMap<String, Vec<crate::model::PlacementOption>> = BTreeMap::new();
    for o in check.iter().flat_map(|c| c.placements.iter()) {
        choices.entry(o.key.clone()).or_default().push(o.clone());
    }
    let other: BTreeMap<&String, &String> = account
        .placement
        .iter()
        .filter(|(k, _)| !choices.contains_key(*k))
        .collect();
    let (_, project_names) = project_names(&app, p).await?;
    render(
        &app,
        "cloud_account.html",
        &format!("Cloud account {}", account.name),
        "/cloud-accounts",
        Some(&s),
        &flash,
        context! {
            project_name => project_names.get(&account.project_id),
            editable => p.edits_project(&account.tenant_id, &account.project_id),
            account, check, choices, other,
        },
    )
}

pub(super) async fn profiles(
    State(app): State<AppState>,
    Page(s): Page,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    let p = &s.principal;
    let profiles = app
        .store
        .list_profiles(p.project_visibility(), None, None, None, MAX_PAGE)
        .await?;
    let (projects, project_names) = project_names(&app, p).await?;
    render(
        &app,
        "profiles.html",
        "Profiles",
        "/profiles",
        Some(&s),
        &flash,
        context! {
            profiles => profiles.items, projects => editable_projects(p, projects), project_names,
        },
    )
}

pub(super) async fn clusters(
    State(app): State<AppState>,
    Page(s): Page,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    let p = &s.principal;
    let clusters = app
        .store
        .list_clusters(p.project_visibility(), Default::default(), None, MAX_PAGE)
        .await?;
    let (projects, project_names) = project_names(&app, p).await?;
    let profiles = app
        .store
        .list_profiles(p.project_visibility(), None, None, None, MAX_PAGE)
        .await?
        .items;
    let accounts = app
        .store
        .list_cloud_accounts(p.project_visibility(), None, None, None, MAX_PAGE)
        .await?
        .items;
    let busy = clusters
        .items
        .iter()
        .any(|c| !matches!(c.status, ClusterStatus::Running | ClusterStatus::Failed));
    render(
        &app,
        "clusters.html",
        "Clusters",
        "/clusters",
        Some(&s),
        &flash,
        context! {
            clusters => clusters.items, project_names, busy, profiles, accounts,
            projects => editable_projects(p, projects),
        },
    )
}

/// Events shown on a detail page: the newest, newest first.
const DETAIL_EVENTS: usize = 100;

/// One cluster: status, conditions, machines, events, and the scale and delete forms.
pub(super) async fn cluster(
    State(app): State<AppState>,
    Page(s): Page,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    let p = &s.principal;
    let cluster = readable(p, app.store.cluster(&id).await, "cluster")?;
    let machines = app.store.machines(&id).await?;
    let mut events = app
        .store
        .list_events(p.project_visibility(), Some(id.clone()), None, MAX_PAGE)
        .await?
        .items;
    events.reverse();
    events.truncate(DETAIL_EVENTS);
    let (_, project_names) = project_names(&app, p).await?;
    let profile_name = app
        .store
        .profile(&cluster.profile_id)
        .await
        .map(|x| x.name)
        .unwrap_or_default();
    let account_name = app
        .store
        .cloud_account(&cluster.cloud_account_id)
        .await
        .map(|x| x.name)
        .unwrap_or_default();
    render(
        &app,
        "cluster.html",
        &format!("Cluster {}", cluster.name),
        "/clusters",
        Some(&s),
        &flash,
        context! {
            project_name => project_names.get(&cluster.project_id),
            editable => p.edits_project(&cluster.tenant_id, &cluster.project_id),
            cluster, machines, events, profile_name, account_name,
        },
    )
}

pub(super) async fn packs(
    State(app): State<AppState>,
    Page(s): Page,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    let packs = app
        .store
        .list_packs(s.principal.tenant_visibility(), None, None, None, MAX_PAGE)
        .await?;
    render(
        &app,
        "packs.html",
        "Packs",
        "/packs",
        Some(&s),
        &flash,
        context! { packs => packs.items },
    )
}

/// Imported bundles and the upload form (`static/bundles.js`), for system admins only, like
/// the upload API the form drives.
pub(super) async fn bundles(
    State(app): State<AppState>,
    Page(s): Page,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    if !s.principal.is_system_admin() {
        let flash = Flash::error("Bundles are imported by system admins.");
        return render(
            &app,
            "bundles.html",
            "Bundles",
            "/bundles",
            Some(&s),
            &flash,
            context! { admin => false },
        );
    }
    let bundles: Vec<_> = app
        .store
        .bundle_imports()
        .await?
        .into_iter()
        .map(|b| {
            let imported_at = b
                .imported_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            context! {
                name => b.name, version => b.version, bundle_id => b.bundle_id,
                trusted => b.trusted, imported_by => b.imported_by, imported_at,
            }
        })
        .collect();
    render(
        &app,
        "bundles.html",
        "Bundles",
        "/bundles",
        Some(&s),
        &flash,
        context! {
            admin => true, bundles,
            chunk_bytes => UPLOAD_CHUNK_BYTES, chunk_mib => UPLOAD_CHUNK_BYTES / (1024 * 1024),
        },
    )
}

pub(super) async fn audit(
    State(app): State<AppState>,
    Page(s): Page,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    if !s.principal.is_system_admin() {
        let flash = Flash::error("The audit log is for system admins.");
        return render(
            &app,
            "audit.html",
            "Audit log",
            "/audit",
            Some(&s),
            &flash,
            context! { entries => Vec::<()>::new(), chain => "not shown" },
        );
    }
    let entries = app.store.recent_audit(500).await?;
    let report = app.store.verify_audit().await?;
    let chain = match report.problem {
        Some(p) => format!("TAMPERED: {p}"),
        None => format!("intact ({} entries)", report.entries),
    };
    render(
        &app,
        "audit.html",
        "Audit log",
        "/audit",
        Some(&s),
        &flash,
        context! { entries, chain },
    )
}
