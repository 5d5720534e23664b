//! The pack catalogue (read-only: bundle import fills it, and the packs found in tenants' pack
//! sources join it) and object events.

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{ApiQuery, Auth};
use super::{list_cache, AppState};
use crate::model::{page_limit, Event, Pack, Page};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_packs))
        .routes(routes!(get_pack))
        .routes(routes!(list_events))
}

/// Query of `GET /v1/packs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PackQuery {
    pub name: Option<String>,
    /// `os`, `kubernetes`, `network`, `storage` or `addon`.
    pub layer_type: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only events of this object.
    pub object_id: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// List packs in the local repository (every authenticated user).
#[utoipa::path(get, path = "/v1/packs", tag = "catalog", params(PackQuery),
    responses((status = 200, body = Page<Pack>), (status = 401, body = Problem)))]
async fn list_packs(
    State(app): State<AppState>,
    Auth(p): Auth,
    uri: Uri,
    ApiQuery(q): ApiQuery<PackQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(q.limit)?;
    // Local packs are everybody's; those of a tenant's pack sources only its members'.
    let visibility = p.tenant_visibility();
    let key = list_cache::key(uri.path(), uri.query(), &visibility);
    app.lists
        .page(&app.store, key, async {
            Ok(app
                .store
                .list_packs(visibility, q.name, q.layer_type, q.after, limit)
                .await?)
        })
        .await
}

/// Read a pack.
#[utoipa::path(get, path = "/v1/packs/{id}", tag = "catalog", params(("id" = String, Path)),
    responses((status = 200, body = Pack), (status = 404, body = Problem)))]
async fn get_pack(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<Pack>, ApiError> {
    let pack = app.store.pack(&id).await?;
    if let Some(source) = &pack.source_id {
        // A pack source's packs are visible to its tenant only; others see no such pack.
        let source = app.store.pack_source(source).await?;
        if !p.sees_tenant(&source.tenant_id) {
            return Err(ApiError::NotFound { kind: "pack" });
        }
    }
    Ok(Json(pack))
}

/// List events of objects the caller can see, oldest first.
#[utoipa::path(get, path = "/v1/events", tag = "catalog", params(EventQuery),
    responses((status = 200, body = Page<Event>), (status = 401, body = Problem)))]
async fn list_events(
    State(app): State<AppState>,
    Auth(p): Auth,
    uri: Uri,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(q.limit)?;
    let visibility = p.project_visibility();
    let key = list_cache::key(uri.path(), uri.query(), &visibility);
    app.lists
        .page(&app.store, key, async {
            Ok(app
                .store
                .list_events(visibility, q.object_id, q.after, limit)
                .await?)
        })
        .await
}
