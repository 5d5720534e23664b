//! Pull credentials of clusters: read-only registry credentials that a cluster's nodes and
//! agent pull packs and images with (see `crate::model::PullCredential` and the registry's
//! authentication in `super::middleware::authenticate`). Minting and revoking need edit rights
//! on the cluster's project; both are audited like every mutation.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, Auth};
use super::middleware::AuditObject;
use super::tenancy::{editable, readable};
use super::AppState;
use crate::model::{NewPullCredential, NewPullCredentialSecret, PullCredential};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_pull_credentials, create_pull_credential))
        .routes(routes!(revoke_pull_credential))
}

/// Mint a pull credential for a cluster (the secret is in this answer only). It can pull, and
/// only pull, from the registry: the cluster's tenant's repositories and `shared/`.
#[utoipa::path(post, path = "/v1/clusters/{id}/pull-credentials", tag = "clusters",
    params(("id" = String, Path)), request_body = NewPullCredential,
    responses((status = 201, body = NewPullCredentialSecret), (status = 400, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn create_pull_credential(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(new): ApiJson<NewPullCredential>,
) -> Result<Response, ApiError> {
    let cluster = editable(&p, app.store.cluster(&id).await, "cluster")?;
    let days = new.days()?;
    let (credential, secret) = app
        .store
        .insert_pull_credential(
            &cluster.id,
            &cluster.tenant_id,
            &cluster.project_id,
            &p.username,
            days,
        )
        .await?;
    let object = credential.id.clone();
    let mut res = (
        StatusCode::CREATED,
        Json(NewPullCredentialSecret { credential, secret }),
    )
        .into_response();
    res.extensions_mut().insert(AuditObject(object));
    Ok(res)
}

/// List a cluster's pull credentials (without secrets), revoked and expired ones included.
#[utoipa::path(get, path = "/v1/clusters/{id}/pull-credentials", tag = "clusters",
    params(("id" = String, Path)),
    responses((status = 200, body = Vec<PullCredential>), (status = 404, body = Problem)))]
async fn list_pull_credentials(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<Vec<PullCredential>>, ApiError> {
    let cluster = readable(&p, app.store.cluster(&id).await, "cluster")?;
    Ok(Json(app.store.list_pull_credentials(&cluster.id).await?))
}

/// Revoke a cluster's pull credential now; registry requests with it fail at once.
#[utoipa::path(delete, path = "/v1/clusters/{id}/pull-credentials/{credential_id}", tag = "clusters",
    params(("id" = String, Path), ("credential_id" = String, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn revoke_pull_credential(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path((id, credential_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let cluster = editable(&p, app.store.cluster(&id).await, "cluster")?;
    app.store
        .revoke_pull_credential(&cluster.id, &credential_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
