//! Console form posts: each calls the API's operation for the same change, then redirects
//! back with a notice or the error (so a reload never resubmits).

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::{back, outcome, pages, CsrfField, Flash, Posted};
use crate::api::error::ApiError;
use crate::api::middleware::AuditActor;
use crate::api::{self, AppState};
use crate::model::{
    CloudKind, Credentials, DriftPolicy, Layer, LayerType, MachineSize, NewApiToken,
    NewCloudAccount, NewCluster, NewProfile, NewProject, NewTenant, NewUser, NodePool, NodeRole,
    UpdateCloudAccount, UpdateCluster,
};

macro_rules! csrf_form {
    ($($t:ty),*) => {$(
        impl CsrfField for $t {
            fn csrf(&self) -> &str { &self.csrf }
        }
    )*};
}
csrf_form!(
    CsrfOnly,
    VersionForm,
    ClusterForm,
    TenantForm,
    ProjectForm,
    UserForm,
    TokenForm,
    AccountForm,
    ProfileForm
);

fn empty_to_none(s: String) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

#[derive(Deserialize)]
pub(super) struct SetupForm {
    token: String,
    username: String,
    password: String,
}

pub(super) async fn setup(State(app): State<AppState>, Form(f): Form<SetupForm>) -> Response {
    let actor = AuditActor(format!("setup:{}", f.username));
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
        Err(e @ ApiError::Internal(_)) => e.into_response(),
        Err(e) => {
            // Back to the form with the token kept, so a typo in the password costs nothing.
            let q =
                serde_urlencoded::to_string([("token", token.as_str()), ("error", &e.to_string())])
                    .unwrap_or_default();
            Redirect::to(&format!("/setup?{q}")).into_response()
        }
    };
    res.extensions_mut().insert(actor);
    res
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    username: String,
    password: String,
}

pub(super) async fn login(State(app): State<AppState>, Form(f): Form<LoginForm>) -> Response {
    let actor = AuditActor(format!("login:{}", f.username));
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
        Err(e @ ApiError::Internal(_)) => e.into_response(),
        Err(e) => back("/login", "error", &e.to_string()),
    };
    res.extensions_mut().insert(actor);
    res
}

#[derive(Deserialize)]
pub(super) struct CsrfOnly {
    #[serde(rename = "_csrf", default)]
    csrf: String,
}

pub(super) async fn logout(
    State(app): State<AppState>,
    Posted(s, _): Posted<CsrfOnly>,
) -> Response {
    if let Err(e) = app.store.delete_session(&s.secret).await {
        return ApiError::from(e).into_response();
    }
    let mut res = back("/login", "notice", "Logged out.");
    res.headers_mut()
        .insert(header::SET_COOKIE, api::session::cleared_cookie());
    res
}

#[derive(Deserialize)]
pub(super) struct TenantForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    name: String,
    #[serde(default)]
    description: String,
}

pub(super) async fn tenant(
    State(app): State<AppState>,
    Posted(s, f): Posted<TenantForm>,
) -> Response {
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
pub(super) struct ProjectForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    tenant_id: String,
    name: String,
    #[serde(default)]
    description: String,
}

pub(super) async fn project(
    State(app): State<AppState>,
    Posted(s, f): Posted<ProjectForm>,
) -> Response {
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

#[derive(Deserialize)]
pub(super) struct UserForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    username: String,
    #[serde(default)]
    display_name: String,
    password: String,
    #[serde(default)]
    tenant_id: String,
}

pub(super) async fn user(State(app): State<AppState>, Posted(s, f): Posted<UserForm>) -> Response {
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

#[derive(Deserialize)]
pub(super) struct TokenForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    name: String,
    #[serde(default)]
    expires_in_days: String,
}

pub(super) async fn token(
    State(app): State<AppState>,
    Posted(s, f): Posted<TokenForm>,
) -> Response {
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
            let flash = Flash::notice(format!("Token {} created.", created.token.name));
            pages::render_tokens(&app, &s, &flash, Some(created.secret))
                .await
                .into_response()
        }
        Err(e @ ApiError::Internal(_)) => e.into_response(),
        Err(e) => back("/tokens", "error", &e.to_string()),
    }
}

pub(super) async fn revoke_token(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Posted(s, _): Posted<CsrfOnly>,
) -> Response {
    let result = api::identity::revoke(&app, &s.principal, &id).await;
    outcome("/tokens", result, |t| format!("Token {} revoked.", t.name))
}

#[derive(Deserialize)]
pub(super) struct AccountForm {
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
    #[serde(default)]
    placement: String,
}

/// Parse `key = value` lines (blank lines and `#` comments skipped).
fn placement_lines(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!(
                "placement line {}: {line:?} is not `key = value`",
                i + 1
            ));
        };
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

pub(super) async fn cloud_account(
    State(app): State<AppState>,
    Posted(s, f): Posted<AccountForm>,
) -> Response {
    let Some(kind) = CloudKind::parse(&f.kind) else {
        return back(
            "/cloud-accounts",
            "error",
            "kind: choose vsphere, openstack or baremetal",
        );
    };
    let placement = match placement_lines(&f.placement) {
        Ok(p) => p,
        Err(e) => return back("/cloud-accounts", "error", &e),
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
        placement,
    };
    let result = api::cloud_accounts::add_cloud_account(&app, &s.principal, new).await;
    outcome("/cloud-accounts", result, |a| {
        format!("Cloud account {} created.", a.name)
    })
}

#[derive(Deserialize)]
pub(super) struct ProfileForm {
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
        .map(|(i, line)| match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            [t, pack, version] => Ok(Layer {
                layer_type: LayerType::parse(t).ok_or_else(|| {
                    format!("layer line {}: {t:?} is not one of os, kubernetes, network, storage, addon", i + 1)
                })?,
                pack: pack.to_string(),
                version: version.to_string(),
                values: String::new(),
            }),
            _ => Err(format!("layer line {}: write `type pack version`, such as `kubernetes rke2 1.29.4`", i + 1)),
        })
        .collect()
}

pub(super) async fn profile(
    State(app): State<AppState>,
    Posted(s, f): Posted<ProfileForm>,
) -> Response {
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
}

/// A form that names the version it was rendered from, plus free fields (pickers, counts).
#[derive(Deserialize)]
pub(super) struct VersionForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    /// A string: numbers do not survive `serde(flatten)` with form encoding.
    version: String,
    #[serde(flatten)]
    fields: HashMap<String, String>,
}

impl VersionForm {
    /// The version the page showed, for If-Match semantics.
    fn expected(&self) -> Option<i64> {
        self.version.trim().parse().ok()
    }
}

/// Ask the orchestrator to check a cloud account.
pub(super) async fn validate_account(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Posted(s, _): Posted<CsrfOnly>,
) -> Response {
    let page = format!("/cloud-accounts/{id}");
    let result = api::cloud_accounts::check_account(&app, &s.principal, &id).await;
    outcome(&page, result, |_| "Check started.".to_string())
}

/// Save the placement pickers and the other settings of a cloud account.
pub(super) async fn account_placement(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Posted(s, f): Posted<VersionForm>,
) -> Response {
    let page = format!("/cloud-accounts/{id}");
    let mut placement = match placement_lines(f.fields.get("other").map_or("", String::as_str)) {
        Ok(p) => p,
        Err(e) => return back(&page, "error", &e),
    };
    for (k, v) in &f.fields {
        if let Some(key) = k.strip_prefix("pick_") {
            if !v.is_empty() {
                placement.insert(key.to_string(), v.clone());
            }
        }
    }
    let result = async {
        let account = app.store.cloud_account(&id).await?;
        let update = UpdateCloudAccount {
            endpoint: account.endpoint,
            credentials: None,
            ca_bundle: account.ca_bundle,
            placement,
        };
        api::cloud_accounts::change_cloud_account(&app, &s.principal, &id, f.expected(), update)
            .await
    }
    .await;
    outcome(&page, result, |_| "Placement saved.".to_string())
}

#[derive(Deserialize)]
pub(super) struct ClusterForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    project_id: String,
    name: String,
    profile_id: String,
    cloud_account_id: String,
    cp_count: u32,
    cp_cpus: u32,
    cp_memory_mib: u32,
    cp_disk_gib: u32,
    worker_count: u32,
    worker_cpus: u32,
    worker_memory_mib: u32,
    worker_disk_gib: u32,
    drift_policy: String,
}

/// Create a cluster of one control-plane pool and one worker pool.
pub(super) async fn cluster(
    State(app): State<AppState>,
    Posted(s, f): Posted<ClusterForm>,
) -> Response {
    let Some(drift_policy) = DriftPolicy::parse(&f.drift_policy) else {
        return back(
            "/clusters",
            "error",
            "drift policy: choose alert or reconcile",
        );
    };
    let mut node_pools = vec![NodePool {
        name: "control-plane".into(),
        role: NodeRole::ControlPlane,
        count: f.cp_count,
        size: MachineSize {
            cpus: f.cp_cpus,
            memory_mib: f.cp_memory_mib,
            disk_gib: f.cp_disk_gib,
        },
    }];
    if f.worker_count > 0 {
        node_pools.push(NodePool {
            name: "workers".into(),
            role: NodeRole::Worker,
            count: f.worker_count,
            size: MachineSize {
                cpus: f.worker_cpus,
                memory_mib: f.worker_memory_mib,
                disk_gib: f.worker_disk_gib,
            },
        });
    }
    let new = NewCluster {
        project_id: f.project_id,
        name: f.name,
        profile_id: f.profile_id,
        profile_revision: None,
        cloud_account_id: f.cloud_account_id,
        node_pools,
        drift_policy,
    };
    match api::clusters::add_cluster(&app, &s.principal, new).await {
        Ok(c) => back(
            &format!("/clusters/{}", c.id),
            "notice",
            &format!("Cluster {} created: provisioning starts.", c.name),
        ),
        Err(e @ ApiError::Internal(_)) => e.into_response(),
        Err(e) => back("/clusters", "error", &e.to_string()),
    }
}

/// Change the machine count of each pool.
pub(super) async fn scale_cluster(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Posted(s, f): Posted<VersionForm>,
) -> Response {
    let page = format!("/clusters/{id}");
    let result = async {
        let c = app.store.cluster(&id).await?;
        let mut pools = c.node_pools.clone();
        for p in &mut pools {
            if let Some(v) = f.fields.get(&format!("count_{}", p.name)) {
                p.count = v.trim().parse().map_err(|_| {
                    ApiError::Invalid(crate::model::Invalid::new(
                        format!("count of pool {}", p.name),
                        "give a whole number of machines",
                    ))
                })?;
            }
        }
        let update = UpdateCluster {
            profile_revision: c.profile_revision,
            node_pools: pools,
            drift_policy: c.drift_policy,
        };
        api::clusters::change_cluster(&app, &s.principal, &id, f.expected(), update).await
    }
    .await;
    outcome(&page, result, |c| {
        format!("Cluster {} is being scaled.", c.name)
    })
}

/// Delete a cluster (the form requires a confirmation checkbox).
pub(super) async fn delete_cluster(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Posted(s, f): Posted<VersionForm>,
) -> Response {
    let page = format!("/clusters/{id}");
    if f.fields.get("confirm").map(String::as_str) != Some("yes") {
        return back(&page, "error", "tick the box to confirm the deletion");
    }
    let result = api::clusters::remove_cluster(&app, &s.principal, &id, f.expected()).await;
    outcome(&page, result, |c| {
        format!("Cluster {} is being deleted.", c.name)
    })
}
