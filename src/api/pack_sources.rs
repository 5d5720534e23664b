//! Pack sources: external OCI registries a tenant registers (URL, credentials sealed at rest,
//! CA bundle, repository prefix) whose packs join the catalogue (`GET /v1/packs`). Tenant
//! admins (and system admins) manage them; members of the tenant read them. The registry is
//! read by `crate::pack_sources`, never here: a change only wakes it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, Auth, Created, IfMatch, Tagged};
use super::AppState;
use crate::model::{NewPackSource, PackSource, Principal, UpdatePackSource};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_pack_sources, create_pack_source))
        .routes(routes!(
            get_pack_source,
            update_pack_source,
            delete_pack_source
        ))
        .routes(routes!(sync_pack_source))
}

/// The source if `p` sees its tenant (else 404, as if absent).
async fn visible(app: &AppState, p: &Principal, id: &str) -> Result<PackSource, ApiError> {
    match app.store.pack_source(id).await {
        Ok(s) if p.sees_tenant(&s.tenant_id) => Ok(s),
        Ok(_) | Err(crate::store::Error::NotFound { .. }) => Err(ApiError::NotFound {
            kind: "pack source",
        }),
        Err(e) => Err(e.into()),
    }
}

/// The source if `p` administers its tenant (403 when it only sees it).
async fn managed(app: &AppState, p: &Principal, id: &str) -> Result<PackSource, ApiError> {
    let s = visible(app, p, id).await?;
    if !p.administers_tenant(&s.tenant_id) {
        return Err(ApiError::Forbidden(
            "pack sources are managed by the tenant's admins".into(),
        ));
    }
    Ok(s)
}

/// List the pack sources of tenants the caller can see.
#[utoipa::path(get, path = "/v1/pack-sources", tag = "catalog",
    responses((status = 200, body = Vec<PackSource>), (status = 401, body = Problem)))]
async fn list_pack_sources(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Vec<PackSource>>, ApiError> {
    Ok(Json(
        app.store.list_pack_sources(p.tenant_visibility()).await?,
    ))
}

/// Register an external OCI registry as a pack source of a tenant (tenant admins). Its packs
/// (repositories `<prefix>/<name>` tagged by version) are read in the background and join
/// `GET /v1/packs`; `sync_error` says why they could not be read.
#[utoipa::path(post, path = "/v1/pack-sources", tag = "catalog", request_body = NewPackSource,
    responses((status = 201, body = PackSource), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
async fn create_pack_source(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(new): ApiJson<NewPackSource>,
) -> Result<Created<PackSource>, ApiError> {
    new.validate()?;
    if !p.administers_tenant(&new.tenant_id) {
        if !p.sees_tenant(&new.tenant_id) {
            return Err(ApiError::NotFound { kind: "tenant" });
        }
        return Err(ApiError::Forbidden(
            "pack sources are registered by the tenant's admins".into(),
        ));
    }
    app.store.tenant(&new.tenant_id).await?;
    let s = app.store.insert_pack_source(new).await?;
    app.pack_source_sync.notify_one();
    Ok(Created(s.version, s))
}

/// Read a pack source (never its credentials).
#[utoipa::path(get, path = "/v1/pack-sources/{id}", tag = "catalog", params(("id" = String, Path)),
    responses((status = 200, body = PackSource, headers(("etag" = String))), (status = 404, body = Problem)))]
async fn get_pack_source(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Tagged<PackSource>, ApiError> {
    let s = visible(&app, &p, &id).await?;
    Ok(Tagged(s.version, s))
}

/// Change a pack source's URL, prefix, CA bundle or credentials (replaced only when given).
#[utoipa::path(put, path = "/v1/pack-sources/{id}", tag = "catalog", params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = UpdatePackSource,
    responses((status = 200, body = PackSource), (status = 400, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn update_pack_source(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    IfMatch(v): IfMatch,
    ApiJson(u): ApiJson<UpdatePackSource>,
) -> Result<Tagged<PackSource>, ApiError> {
    managed(&app, &p, &id).await?;
    u.validate()?;
    let s = app.store.update_pack_source(&id, v, u).await?;
    app.pack_source_sync.notify_one();
    Ok(Tagged(s.version, s))
}

/// Remove a pack source; its packs leave the catalogue.
#[utoipa::path(delete, path = "/v1/pack-sources/{id}", tag = "catalog", params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn delete_pack_source(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    IfMatch(v): IfMatch,
) -> Result<StatusCode, ApiError> {
    managed(&app, &p, &id).await?;
    app.store.delete_pack_source(&id, v).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ask for the pack sources to be read again now (202: it happens in the background; watch
/// `synced_at` and `sync_error`).
#[utoipa::path(post, path = "/v1/pack-sources/{id}/sync", tag = "catalog", params(("id" = String, Path)),
    responses((status = 202), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn sync_pack_source(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    managed(&app, &p, &id).await?;
    app.pack_source_sync.notify_one();
    Ok(StatusCode::ACCEPTED)
}
