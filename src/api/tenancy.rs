//! Tenants and projects. A tenant or project outside the caller's scope does not exist for
//! them (404); one they can see but not change answers 403.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{referenced, ApiError, Problem};
use super::extract::{ApiJson, ApiQuery, Auth, Created, IfMatch, Tagged};
use super::{list_cache, AppState};
use crate::model::{
    check_id, page_limit, NewProject, NewTenant, Page, Principal, Project, ProjectScoped, Tenant,
    UpdateProject, UpdateTenant,
};
use crate::store::Found;

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tenants, create_tenant))
        .routes(routes!(get_tenant, update_tenant, delete_tenant))
        .routes(routes!(list_projects, create_project))
        .routes(routes!(get_project, update_project, delete_project))
}

/// Query of `GET /v1/tenants`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantQuery {
    pub name: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// Query of `GET /v1/projects`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProjectQuery {
    pub tenant_id: Option<String>,
    pub name: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// A tenant the caller may see, or 404.
pub async fn visible_tenant(app: &AppState, p: &Principal, id: &str) -> Result<Tenant, ApiError> {
    if !p.sees_tenant(id) {
        return Err(ApiError::NotFound { kind: "tenant" });
    }
    Ok(app.store.tenant(id).await?)
}

/// A project the caller may read, or 404.
pub async fn visible_project(app: &AppState, p: &Principal, id: &str) -> Result<Project, ApiError> {
    let project = app.store.project(id).await.found()?;
    match project {
        Some(project) if p.reads_project(&project.tenant_id, &project.id) => Ok(project),
        _ => Err(ApiError::NotFound { kind: "project" }),
    }
}

/// A project the caller may create objects in; a project it cannot see is named as missing.
pub async fn editable_project(
    app: &AppState,
    p: &Principal,
    id: &str,
) -> Result<Project, ApiError> {
    let project = referenced(visible_project(app, p, id).await, "project_id")?;
    if !p.edits_project(&project.tenant_id, &project.id) {
        return Err(ApiError::Forbidden(
            "your role in this project is read-only".into(),
        ));
    }
    Ok(project)
}

/// The object read from the store if the caller may read its project; otherwise 404.
pub fn readable<T: ProjectScoped>(
    p: &Principal,
    read: Result<T, crate::store::Error>,
    kind: &'static str,
) -> Result<T, ApiError> {
    match read {
        Ok(obj) if p.reads_project(obj.tenant_id(), obj.project_id()) => Ok(obj),
        Ok(_) | Err(crate::store::Error::NotFound { .. }) => Err(ApiError::NotFound { kind }),
        Err(e) => Err(e.into()),
    }
}

/// As `readable`, and 403 unless the caller may also change it.
pub fn editable<T: ProjectScoped>(
    p: &Principal,
    read: Result<T, crate::store::Error>,
    kind: &'static str,
) -> Result<T, ApiError> {
    let obj = readable(p, read, kind)?;
    if !p.edits_project(obj.tenant_id(), obj.project_id()) {
        return Err(ApiError::Forbidden(
            "your role in this project is read-only".into(),
        ));
    }
    Ok(obj)
}

/// Create a tenant (system admins).
pub async fn add_tenant(app: &AppState, p: &Principal, new: NewTenant) -> Result<Tenant, ApiError> {
    if !p.is_system_admin() {
        return Err(ApiError::Forbidden(
            "only system admins create tenants".into(),
        ));
    }
    new.validate()?;
    Ok(app.store.insert_tenant(new).await?)
}

/// Create a project (tenant admins of its tenant, system admins).
pub async fn add_project(
    app: &AppState,
    p: &Principal,
    new: NewProject,
) -> Result<Project, ApiError> {
    new.validate()?;
    referenced(visible_tenant(app, p, &new.tenant_id).await, "tenant_id")?;
    if !p.administers_tenant(&new.tenant_id) {
        return Err(ApiError::Forbidden(
            "only admins of the tenant create projects".into(),
        ));
    }
    Ok(app.store.insert_project(new).await?)
}

/// List tenants visible to the caller.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenancy", params(TenantQuery),
    responses((status = 200, body = Page<Tenant>), (status = 401, body = Problem)))]
async fn list_tenants(
    State(app): State<AppState>,
    Auth(p): Auth,
    uri: Uri,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(q.limit)?;
    let visibility = p.tenant_visibility();
    let key = list_cache::key(uri.path(), uri.query(), &visibility);
    app.lists
        .page(&app.store, key, async {
            Ok(app
                .store
                .list_tenants(visibility, q.name, q.after, limit)
                .await?)
        })
        .await
}

/// Create a tenant (system admins).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenancy", request_body = NewTenant,
    responses((status = 201, body = Tenant), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
async fn create_tenant(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(new): ApiJson<NewTenant>,
) -> Result<Created<Tenant>, ApiError> {
    let t = add_tenant(&app, &p, new).await?;
    Ok(Created(t.version, t))
}

/// Read a tenant.
#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "tenancy", params(("id" = String, Path)),
    responses((status = 200, body = Tenant, headers(("etag" = String))), (status = 404, body = Problem)))]
async fn get_tenant(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Tagged<Tenant>, ApiError> {
    let t = visible_tenant(&app, &p, &id).await?;
    Ok(Tagged(t.version, t))
}

/// Update a tenant (its admins). Send `If-Match` with the ETag you read to avoid lost updates.
#[utoipa::path(put, path = "/v1/tenants/{id}", tag = "tenancy", params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = UpdateTenant,
    responses((status = 200, body = Tenant), (status = 403, body = Problem), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn update_tenant(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    IfMatch(v): IfMatch,
    ApiJson(u): ApiJson<UpdateTenant>,
) -> Result<Tagged<Tenant>, ApiError> {
    visible_tenant(&app, &p, &id).await?;
    if !p.administers_tenant(&id) {
        return Err(ApiError::Forbidden(
            "only admins of the tenant change it".into(),
        ));
    }
    u.validate()?;
    let t = app.store.update_tenant(&id, v, u).await?;
    Ok(Tagged(t.version, t))
}

/// Delete an empty tenant (system admins).
#[utoipa::path(delete, path = "/v1/tenants/{id}", tag = "tenancy", params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn delete_tenant(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    IfMatch(v): IfMatch,
) -> Result<StatusCode, ApiError> {
    visible_tenant(&app, &p, &id).await?;
    if !p.is_system_admin() {
        return Err(ApiError::Forbidden(
            "only system admins delete tenants".into(),
        ));
    }
    app.store.delete_tenant(&id, v).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List projects visible to the caller.
#[utoipa::path(get, path = "/v1/projects", tag = "tenancy", params(ProjectQuery),
    responses((status = 200, body = Page<Project>), (status = 401, body = Problem)))]
async fn list_projects(
    State(app): State<AppState>,
    Auth(p): Auth,
    uri: Uri,
    ApiQuery(q): ApiQuery<ProjectQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(q.limit)?;
    if let Some(t) = &q.tenant_id {
        check_id("tenant_id", t)?;
    }
    let visibility = p.project_visibility();
    let key = list_cache::key(uri.path(), uri.query(), &visibility);
    app.lists
        .page(&app.store, key, async {
            Ok(app
                .store
                .list_projects(visibility, q.tenant_id, q.name, q.after, limit)
                .await?)
        })
        .await
}

/// Create a project in a tenant (tenant admins).
#[utoipa::path(post, path = "/v1/projects", tag = "tenancy", request_body = NewProject,
    responses((status = 201, body = Project), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
async fn create_project(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(new): ApiJson<NewProject>,
) -> Result<Created<Project>, ApiError> {
    let project = add_project(&app, &p, new).await?;
    Ok(Created(project.version, project))
}

/// Read a project.
#[utoipa::path(get, path = "/v1/projects/{id}", tag = "tenancy", params(("id" = String, Path)),
    responses((status = 200, body = Project, headers(("etag" = String))), (status = 404, body = Problem)))]
async fn get_project(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Tagged<Project>, ApiError> {
    let project = visible_project(&app, &p, &id).await?;
    Ok(Tagged(project.version, project))
}

/// Update a project (tenant admins).
#[utoipa::path(put, path = "/v1/projects/{id}", tag = "tenancy", params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = UpdateProject,
    responses((status = 200, body = Project), (status = 403, body = Problem), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn update_project(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    IfMatch(v): IfMatch,
    ApiJson(u): ApiJson<UpdateProject>,
) -> Result<Tagged<Project>, ApiError> {
    let project = visible_project(&app, &p, &id).await?;
    if !p.administers_tenant(&project.tenant_id) {
        return Err(ApiError::Forbidden(
            "only admins of the tenant change projects".into(),
        ));
    }
    u.validate()?;
    let project = app.store.update_project(&id, v, u).await?;
    Ok(Tagged(project.version, project))
}

/// Delete an empty project (tenant admins).
#[utoipa::path(delete, path = "/v1/projects/{id}", tag = "tenancy", params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn delete_project(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    IfMatch(v): IfMatch,
) -> Result<StatusCode, ApiError> {
    let project = visible_project(&app, &p, &id).await?;
    if !p.administers_tenant(&project.tenant_id) {
        return Err(ApiError::Forbidden(
            "only admins of the tenant delete projects".into(),
        ));
    }
    app.store.delete_project(&id, v).await?;
    Ok(StatusCode::NO_CONTENT)
}
