//! Clusters. Users write the spec (profile revision, cloud account, node pools, drift policy);
//! status and conditions are the orchestrator's and read-only here.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiQuery, Auth, Created, IfMatch, Tagged};
use super::tenancy::{editable, editable_project, readable};
use super::{list_cache, AppState};
use crate::model::{
    page_limit, Cluster, MachineRecord, NewCluster, Page, Principal, UpdateCluster,
};
use crate::orchestrator::desired;
use crate::store::ClusterFilter;

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_clusters, create_cluster))
        .routes(routes!(get_cluster, update_cluster, delete_cluster))
        .routes(routes!(list_machines))
}

/// Query of `GET /v1/clusters`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClusterQuery {
    pub project_id: Option<String>,
    pub name: Option<String>,
    /// `Pending`, `Provisioning`, `Running`, `Updating`, `Deleting` or `Failed`.
    pub status: Option<String>,
    pub profile_id: Option<String>,
    pub cloud_account_id: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// Create a cluster in a project the caller edits.
pub async fn add_cluster(
    app: &AppState,
    p: &Principal,
    new: NewCluster,
) -> Result<Cluster, ApiError> {
    new.validate()?;
    let project = editable_project(app, p, &new.project_id).await?;
    let cluster = app.store.insert_cluster(project.tenant_id, new).await?;
    desired::publish(&app.bus, &app.store, &cluster).await;
    Ok(cluster)
}

/// Change a cluster's spec (scale, profile revision, drift policy) as a caller who edits it.
pub async fn change_cluster(
    app: &AppState,
    p: &Principal,
    id: &str,
    expected: Option<i64>,
    u: UpdateCluster,
) -> Result<Cluster, ApiError> {
    editable(p, app.store.cluster(id).await, "cluster")?;
    u.validate()?;
    let c = app.store.update_cluster(id, expected, u).await?;
    desired::publish(&app.bus, &app.store, &c).await;
    Ok(c)
}

/// Ask for a cluster's deletion as a caller who edits it; the orchestrator finishes it.
pub async fn remove_cluster(
    app: &AppState,
    p: &Principal,
    id: &str,
    expected: Option<i64>,
) -> Result<Cluster, ApiError> {
    editable(p, app.store.cluster(id).await, "cluster")?;
    let c = app.store.delete_cluster(id, expected).await?;
    desired::publish(&app.bus, &app.store, &c).await;
    Ok(c)
}

/// List clusters the caller can see.
#[utoipa::path(get, path = "/v1/clusters", tag = "clusters", params(ClusterQuery),
    responses((status = 200, body = Page<Cluster>), (status = 401, body = Problem)))]
async fn list_clusters(
    State(app): State<AppState>,
    Auth(p): Auth,
    uri: Uri,
    ApiQuery(q): ApiQuery<ClusterQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(q.limit)?;
    let filter = ClusterFilter {
        project_id: q.project_id,
        name: q.name,
        status: q.status,
        profile_id: q.profile_id,
        cloud_account_id: q.cloud_account_id,
    };
    let visibility = p.project_visibility();
    let key = list_cache::key(uri.path(), uri.query(), &visibility);
    app.lists
        .page(&app.store, key, async {
            Ok(app
                .store
                .list_clusters(visibility, filter, q.after, limit)
                .await?)
        })
        .await
}

/// Create a cluster (status Pending until the orchestrator takes it).
#[utoipa::path(post, path = "/v1/clusters", tag = "clusters", request_body = NewCluster,
    responses((status = 201, body = Cluster), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
async fn create_cluster(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(new): ApiJson<NewCluster>,
) -> Result<Created<Cluster>, ApiError> {
    let c = add_cluster(&app, &p, new).await?;
    Ok(Created(c.version, c))
}

/// Read a cluster: spec, status and conditions.
#[utoipa::path(get, path = "/v1/clusters/{id}", tag = "clusters", params(("id" = String, Path)),
    responses((status = 200, body = Cluster, headers(("etag" = String))), (status = 404, body = Problem)))]
async fn get_cluster(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Tagged<Cluster>, ApiError> {
    let c = readable(&p, app.store.cluster(&id).await, "cluster")?;
    Ok(Tagged(c.version, c))
}

/// Change a cluster's spec.
#[utoipa::path(put, path = "/v1/clusters/{id}", tag = "clusters", params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = UpdateCluster,
    responses((status = 200, body = Cluster), (status = 400, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn update_cluster(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    IfMatch(v): IfMatch,
    ApiJson(u): ApiJson<UpdateCluster>,
) -> Result<Tagged<Cluster>, ApiError> {
    let c = change_cluster(&app, &p, &id, v, u).await?;
    Ok(Tagged(c.version, c))
}

/// Delete a cluster: it turns `Deleting` at once; the orchestrator removes every machine it
/// created, then the cluster (it disappears from the API when that is done).
#[utoipa::path(delete, path = "/v1/clusters/{id}", tag = "clusters", params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 202, body = Cluster), (status = 403, body = Problem), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn delete_cluster(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    IfMatch(v): IfMatch,
) -> Result<(StatusCode, Json<Cluster>), ApiError> {
    let c = remove_cluster(&app, &p, &id, v).await?;
    Ok((StatusCode::ACCEPTED, Json(c)))
}

/// The machines of a cluster: what the orchestrator asked the infrastructure for and what it
/// reports (phase, provider id, addresses).
#[utoipa::path(get, path = "/v1/clusters/{id}/machines", tag = "clusters", params(("id" = String, Path)),
    responses((status = 200, body = Vec<MachineRecord>), (status = 404, body = Problem)))]
async fn list_machines(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<Vec<MachineRecord>>, ApiError> {
    readable(&p, app.store.cluster(&id).await, "cluster")?;
    Ok(Json(app.store.machines(&id).await?))
}
