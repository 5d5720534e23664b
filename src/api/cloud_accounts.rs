//! Cloud accounts. Credentials are accepted on create and update, sealed at rest, and never
//! returned: views carry only `has_credentials`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiQuery, Auth, Created, IfMatch, Tagged};
use super::tenancy::{editable, editable_project, readable};
use super::{list_cache, AppState};
use crate::model::{
    page_limit, AccountCheckResult, CloudAccount, NewCloudAccount, Page, Principal,
    UpdateCloudAccount,
};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_cloud_accounts, create_cloud_account))
        .routes(routes!(
            get_cloud_account,
            update_cloud_account,
            delete_cloud_account
        ))
        .routes(routes!(validate_cloud_account, get_validation))
}

/// Query of `GET /v1/cloud-accounts`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CloudAccountQuery {
    pub project_id: Option<String>,
    /// `vsphere`, `openstack` or `baremetal`.
    pub kind: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// Create a cloud account in a project the caller edits.
pub async fn add_cloud_account(
    app: &AppState,
    p: &Principal,
    new: NewCloudAccount,
) -> Result<CloudAccount, ApiError> {
    new.validate()?;
    let project = editable_project(app, p, &new.project_id).await?;
    Ok(app
        .store
        .insert_cloud_account(project.tenant_id, new)
        .await?)
}

/// List cloud accounts the caller can see.
#[utoipa::path(get, path = "/v1/cloud-accounts", tag = "cloud-accounts", params(CloudAccountQuery),
    responses((status = 200, body = Page<CloudAccount>), (status = 401, body = Problem)))]
async fn list_cloud_accounts(
    State(app): State<AppState>,
    Auth(p): Auth,
    uri: Uri,
    ApiQuery(q): ApiQuery<CloudAccountQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(q.limit)?;
    let visibility = p.project_visibility();
    let key = list_cache::key(uri.path(), uri.query(), &visibility);
    app.lists
        .page(&app.store, key, async {
            Ok(app
                .store
                .list_cloud_accounts(visibility, q.project_id, q.kind, q.after, limit)
                .await?)
        })
        .await
}

/// Create a cloud account (project editors).
#[utoipa::path(post, path = "/v1/cloud-accounts", tag = "cloud-accounts", request_body = NewCloudAccount,
    responses((status = 201, body = CloudAccount), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
async fn create_cloud_account(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(new): ApiJson<NewCloudAccount>,
) -> Result<Created<CloudAccount>, ApiError> {
    let a = add_cloud_account(&app, &p, new).await?;
    Ok(Created(a.version, a))
}

/// Read a cloud account (without its credentials).
#[utoipa::path(get, path = "/v1/cloud-accounts/{id}", tag = "cloud-accounts", params(("id" = String, Path)),
    responses((status = 200, body = CloudAccount, headers(("etag" = String))), (status = 404, body = Problem)))]
async fn get_cloud_account(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Tagged<CloudAccount>, ApiError> {
    let a = readable(&p, app.store.cloud_account(&id).await, "cloud account")?;
    Ok(Tagged(a.version, a))
}

/// Update a cloud account; credentials change only when given.
#[utoipa::path(put, path = "/v1/cloud-accounts/{id}", tag = "cloud-accounts", params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = UpdateCloudAccount,
    responses((status = 200, body = CloudAccount), (status = 403, body = Problem), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn update_cloud_account(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    IfMatch(v): IfMatch,
    ApiJson(u): ApiJson<UpdateCloudAccount>,
) -> Result<Tagged<CloudAccount>, ApiError> {
    let a = change_cloud_account(&app, &p, &id, v, u).await?;
    Ok(Tagged(a.version, a))
}

/// Change a cloud account as a caller who edits it.
pub async fn change_cloud_account(
    app: &AppState,
    p: &Principal,
    id: &str,
    expected: Option<i64>,
    u: UpdateCloudAccount,
) -> Result<CloudAccount, ApiError> {
    editable(p, app.store.cloud_account(id).await, "cloud account")?;
    u.validate()?;
    Ok(app.store.update_cloud_account(id, expected, u).await?)
}

/// Delete a cloud account no cluster uses.
#[utoipa::path(delete, path = "/v1/cloud-accounts/{id}", tag = "cloud-accounts", params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn delete_cloud_account(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    IfMatch(v): IfMatch,
) -> Result<StatusCode, ApiError> {
    editable(&p, app.store.cloud_account(&id).await, "cloud account")?;
    app.store.delete_cloud_account(&id, v).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Check the account against its infrastructure (credentials, reachability, permissions, that
/// every placement setting names something that exists) and gather the placement choices.
/// Runs in the background: poll `GET .../validation` until `state` is not `pending`.
#[utoipa::path(post, path = "/v1/cloud-accounts/{id}/validate", tag = "cloud-accounts", params(("id" = String, Path)),
    responses((status = 202, body = AccountCheckResult), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn validate_cloud_account(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Json<AccountCheckResult>), ApiError> {
    let check = check_account(&app, &p, &id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(check)))
}

/// Ask the orchestrator to check an account, as a caller who edits it.
pub async fn check_account(
    app: &AppState,
    p: &Principal,
    id: &str,
) -> Result<AccountCheckResult, ApiError> {
    editable(p, app.store.cloud_account(id).await, "cloud account")?;
    let check = app.store.request_account_check(id).await?;
    crate::orchestrator::request_account_check(&app.bus, id).await;
    Ok(check)
}

/// The result of the account's last check, with the placement choices it found.
#[utoipa::path(get, path = "/v1/cloud-accounts/{id}/validation", tag = "cloud-accounts", params(("id" = String, Path)),
    responses((status = 200, body = AccountCheckResult), (status = 404, body = Problem)))]
async fn get_validation(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<AccountCheckResult>, ApiError> {
    readable(&p, app.store.cloud_account(&id).await, "cloud account")?;
    app.store
        .account_check(&id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| {
            ApiError::Missing(
                "this account has not been checked yet: POST /v1/cloud-accounts/{id}/validate"
                    .into(),
            )
        })
}
