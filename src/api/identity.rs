//! Users, role bindings and API tokens.
//!
//! System admins manage everyone. Tenant admins manage the users of their tenants and grant
//! them tenant-admin or project roles inside those tenants; they can never grant system-admin
//! nor see users of other tenants. Everyone sees themselves and manages their own tokens.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{referenced, ApiError, Problem};
use super::extract::{ApiJson, ApiQuery, Auth, Created, IfMatch, Tagged};
use super::middleware::AuditObject;
use super::session::hash_password;
use super::tenancy::{visible_project, visible_tenant};
use super::AppState;
use crate::model::{
    check_id, page_limit, ApiToken, CreatedApiToken, Invalid, NewApiToken, NewRoleBinding, NewUser,
    Page, Principal, Role, RoleBinding, UpdateUser, User, Visibility,
};
use crate::store::Found;

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(list_bindings, create_binding))
        .routes(routes!(delete_binding))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
}

/// Query of `GET /v1/users`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    pub tenant_id: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// Query of `GET /v1/role-bindings`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BindingQuery {
    pub user_id: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// Users whose records the caller manages: all for system admins, its tenants' for tenant admins.
fn user_visibility(p: &Principal) -> Visibility {
    Visibility {
        all: p.is_system_admin(),
        tenants: p.administered_tenants(),
        projects: vec![],
    }
}

/// True if `u` belongs to a tenant the caller administers (or the caller is a system admin):
/// the caller may then see the account.
fn manages_user(p: &Principal, u: &User) -> bool {
    p.is_system_admin()
        || u.tenant_id
            .as_deref()
            .is_some_and(|t| p.administers_tenant(t))
}

/// 403 unless the caller may change `u`: a tenant admin never changes an account that holds
/// system-admin, even one homed in its tenant (that would be a path to system admin).
async fn check_may_change(
    app: &AppState,
    p: &Principal,
    u: &User,
    what: &str,
) -> Result<(), ApiError> {
    if p.is_system_admin() {
        return Ok(());
    }
    if !manages_user(p, u) {
        return Err(ApiError::Forbidden(format!("only admins {what}")));
    }
    if app.store.is_system_admin(&u.id).await? {
        return Err(ApiError::Forbidden(format!(
            "{} is a system admin: only system admins {what} of system admins",
            u.username
        )));
    }
    Ok(())
}

/// A user the caller may see (itself, or one it manages), or 404.
pub async fn visible_user(app: &AppState, p: &Principal, id: &str) -> Result<User, ApiError> {
    let user = app.store.user(id).await.found()?;
    match user {
        Some(u) if u.id == p.user_id || manages_user(p, &u) => Ok(u),
        _ => Err(ApiError::NotFound { kind: "user" }),
    }
}

/// Create a user: system admins anywhere, tenant admins inside a tenant they administer.
pub async fn add_user(app: &AppState, p: &Principal, new: NewUser) -> Result<User, ApiError> {
    new.validate()?;
    match &new.tenant_id {
        None if !p.is_system_admin() => {
            return Err(Invalid::new("tenant_id", "give the tenant the user belongs to").into())
        }
        None => {}
        Some(t) => {
            referenced(visible_tenant(app, p, t).await, "tenant_id")?;
            if !p.administers_tenant(t) {
                return Err(ApiError::Forbidden(
                    "only admins of the tenant create its users".into(),
                ));
            }
        }
    }
    let hash = hash_password(new.password).await?;
    Ok(app
        .store
        .insert_user(new.username, new.display_name, hash, new.tenant_id)
        .await?)
}

/// Grant a role: checks the scope exists for the caller and that the caller may grant it.
pub async fn add_binding(
    app: &AppState,
    p: &Principal,
    mut new: NewRoleBinding,
) -> Result<RoleBinding, ApiError> {
    new.validate()?;
    let user = referenced(visible_user(app, p, &new.user_id).await, "user_id")?;
    let tenant = match (new.role, &new.project_id, &new.tenant_id) {
        (Role::SystemAdmin, _, _) => {
            if !p.is_system_admin() {
                return Err(ApiError::Forbidden(
                    "only system admins grant system-admin".into(),
                ));
            }
            None
        }
        (_, Some(project_id), _) => {
            let project = referenced(visible_project(app, p, project_id).await, "project_id")?;
            // A project binding's tenant is the project's, whatever the request said.
            new.tenant_id = Some(project.tenant_id.clone());
            Some(project.tenant_id)
        }
        (_, None, Some(tenant_id)) => {
            referenced(visible_tenant(app, p, tenant_id).await, "tenant_id")?;
            Some(tenant_id.clone())
        }
        (_, None, None) => {
            return Err(Invalid::new("tenant_id", "give the scope of the role").into())
        }
    };
    if let Some(t) = &tenant {
        if !p.administers_tenant(t) {
            return Err(ApiError::Forbidden(
                "only admins of the tenant grant roles in it".into(),
            ));
        }
        if !p.is_system_admin() && user.tenant_id.as_deref() != Some(t.as_str()) {
            return Err(Invalid::new(
                "user_id",
                "tenant admins grant roles only to users of their tenant",
            )
            .into());
        }
    }
    Ok(app.store.insert_binding(new).await?)
}

/// List users the caller manages (and itself).
#[utoipa::path(get, path = "/v1/users", tag = "identity", params(UserQuery),
    responses((status = 200, body = Page<User>), (status = 401, body = Problem)))]
async fn list_users(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> Result<Json<Page<User>>, ApiError> {
    let limit = page_limit(q.limit)?;
    if let Some(t) = &q.tenant_id {
        check_id("tenant_id", t)?;
    }
    Ok(Json(
        app.store
            .list_users(
                user_visibility(&p),
                p.user_id.clone(),
                q.tenant_id,
                q.after,
                limit,
            )
            .await?,
    ))
}

/// Create a user.
#[utoipa::path(post, path = "/v1/users", tag = "identity", request_body = NewUser,
    responses((status = 201, body = User), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
async fn create_user(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(new): ApiJson<NewUser>,
) -> Result<Created<User>, ApiError> {
    let u = add_user(&app, &p, new).await?;
    Ok(Created(u.version, u))
}

/// Read a user.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "identity", params(("id" = String, Path)),
    responses((status = 200, body = User, headers(("etag" = String))), (status = 404, body = Problem)))]
async fn get_user(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Tagged<User>, ApiError> {
    let u = visible_user(&app, &p, &id).await?;
    Ok(Tagged(u.version, u))
}

/// Update a user: display name, disabled, and optionally a new password (admins).
#[utoipa::path(put, path = "/v1/users/{id}", tag = "identity", params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = UpdateUser,
    responses((status = 200, body = User), (status = 403, body = Problem), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn update_user(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    IfMatch(v): IfMatch,
    ApiJson(u): ApiJson<UpdateUser>,
) -> Result<Tagged<User>, ApiError> {
    let user = visible_user(&app, &p, &id).await?;
    if !manages_user(&p, &user) {
        return Err(ApiError::Forbidden(
            "only admins change accounts: use /v1/me/password for your own password".into(),
        ));
    }
    check_may_change(&app, &p, &user, "change accounts").await?;
    u.validate()?;
    if u.disabled && user.id == p.user_id {
        return Err(Invalid::new("disabled", "you cannot disable your own account").into());
    }
    let hash = match u.password {
        Some(pw) => Some(hash_password(pw).await?),
        None => None,
    };
    let user = app
        .store
        .update_user(&id, v, u.display_name, u.disabled, hash)
        .await?;
    Ok(Tagged(user.version, user))
}

/// Delete a user with its bindings, sessions and tokens.
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "identity", params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn delete_user(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    IfMatch(v): IfMatch,
) -> Result<StatusCode, ApiError> {
    let user = visible_user(&app, &p, &id).await?;
    check_may_change(&app, &p, &user, "delete accounts").await?;
    if user.id == p.user_id {
        return Err(ApiError::Conflict(
            "you cannot delete your own account".into(),
        ));
    }
    app.store.delete_user(&id, v).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List role bindings: those in tenants the caller administers, and its own.
#[utoipa::path(get, path = "/v1/role-bindings", tag = "identity", params(BindingQuery),
    responses((status = 200, body = Page<RoleBinding>), (status = 401, body = Problem)))]
async fn list_bindings(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<BindingQuery>,
) -> Result<Json<Page<RoleBinding>>, ApiError> {
    let limit = page_limit(q.limit)?;
    Ok(Json(
        app.store
            .list_bindings(
                user_visibility(&p),
                p.user_id.clone(),
                q.user_id,
                q.after,
                limit,
            )
            .await?,
    ))
}

/// Grant a role to a user at a scope.
#[utoipa::path(post, path = "/v1/role-bindings", tag = "identity", request_body = NewRoleBinding,
    responses((status = 201, body = RoleBinding), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
async fn create_binding(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(new): ApiJson<NewRoleBinding>,
) -> Result<(StatusCode, Json<RoleBinding>), ApiError> {
    Ok((StatusCode::CREATED, Json(add_binding(&app, &p, new).await?)))
}

/// Remove a role binding.
#[utoipa::path(delete, path = "/v1/role-bindings/{id}", tag = "identity", params(("id" = String, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn delete_binding(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let b = app.store.binding(&id).await.found()?;
    let b = b
        .filter(|b| {
            p.is_system_admin()
                || b.user_id == p.user_id
                || b.tenant_id
                    .as_deref()
                    .is_some_and(|t| p.administers_tenant(t))
        })
        .ok_or(ApiError::NotFound {
            kind: "role binding",
        })?;
    let may = match b.role {
        Role::SystemAdmin => p.is_system_admin(),
        _ => b
            .tenant_id
            .as_deref()
            .is_some_and(|t| p.administers_tenant(t)),
    };
    if !may {
        return Err(ApiError::Forbidden(
            "only admins of the binding's scope remove it".into(),
        ));
    }
    app.store.delete_binding(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's API tokens (secrets are never shown again).
#[utoipa::path(get, path = "/v1/tokens", tag = "identity",
    responses((status = 200, body = Vec<ApiToken>), (status = 401, body = Problem)))]
async fn list_tokens(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Vec<ApiToken>>, ApiError> {
    Ok(Json(app.store.list_tokens(&p.user_id).await?))
}

/// Create an API token for the caller; the secret is in this answer only.
pub async fn add_token(
    app: &AppState,
    p: &Principal,
    new: NewApiToken,
) -> Result<CreatedApiToken, ApiError> {
    let days = new.validate()?;
    let (token, secret) = app.store.insert_token(&p.user_id, new.name, days).await?;
    Ok(CreatedApiToken { token, secret })
}

/// Create an API token (shown once). It acts with the caller's roles.
#[utoipa::path(post, path = "/v1/tokens", tag = "identity", request_body = NewApiToken,
    responses((status = 201, body = CreatedApiToken), (status = 400, body = Problem), (status = 409, body = Problem)))]
async fn create_token(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(new): ApiJson<NewApiToken>,
) -> Result<Response, ApiError> {
    let created = add_token(&app, &p, new).await?;
    let mut res = (StatusCode::CREATED, Json(&created)).into_response();
    res.extensions_mut()
        .insert(AuditObject(created.token.id.clone()));
    Ok(res)
}

/// Revoke a token now (your own; system admins any).
pub async fn revoke(app: &AppState, p: &Principal, id: &str) -> Result<ApiToken, ApiError> {
    let token = app.store.token(id).await.found()?;
    match token {
        Some(t) if t.user_id == p.user_id || p.is_system_admin() => {
            Ok(app.store.revoke_token(id).await?)
        }
        _ => Err(ApiError::NotFound { kind: "token" }),
    }
}

/// Revoke an API token.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "identity", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)))]
async fn revoke_token(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    revoke(&app, &p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
