//! Cluster profiles: a named profile with immutable, numbered revisions of pack layers.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiQuery, Auth, Created, IfMatch, Tagged};
use super::tenancy::{editable, editable_project, readable};
use super::{list_cache, AppState};
use crate::model::{
    page_limit, NewProfile, NewProfileRevision, Page, Principal, Profile, ProfileRevision,
    UpdateProfile,
};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_profiles, create_profile))
        .routes(routes!(get_profile, update_profile, delete_profile))
        .routes(routes!(list_revisions, create_revision))
        .routes(routes!(get_revision))
}

/// Query of `GET /v1/profiles`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProfileQuery {
    pub project_id: Option<String>,
    pub name: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// A profile with one of its revisions.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileWithRevision {
    pub profile: Profile,
    pub revision: ProfileRevision,
}

/// Create a profile and its revision 1 in a project the caller edits.
pub async fn add_profile(
    app: &AppState,
    p: &Principal,
    new: NewProfile,
) -> Result<ProfileWithRevision, ApiError> {
    new.validate()?;
    let project = editable_project(app, p, &new.project_id).await?;
    let (profile, revision) = app
        .store
        .insert_profile(project.tenant_id, new, p.username.clone())
        .await?;
    Ok(ProfileWithRevision { profile, revision })
}

/// List profiles the caller can see.
#[utoipa::path(get, path = "/v1/profiles", tag = "profiles", params(ProfileQuery),
    responses((status = 200, body = Page<Profile>), (status = 401, body = Problem)))]
async fn list_profiles(
    State(app): State<AppState>,
    Auth(p): Auth,
    uri: Uri,
    ApiQuery(q): ApiQuery<ProfileQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(q.limit)?;
    let visibility = p.project_visibility();
    let key = list_cache::key(uri.path(), uri.query(), &visibility);
    app.lists
        .page(&app.store, key, async {
            Ok(app
                .store
                .list_profiles(visibility, q.project_id, q.name, q.after, limit)
                .await?)
        })
        .await
}

/// Create a profile with its first revision.
#[utoipa::path(post, path = "/v1/profiles", tag = "profiles", request_body = NewProfile,
    responses((status = 201, body = ProfileWithRevision), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
async fn create_profile(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(new): ApiJson<NewProfile>,
) -> Result<Created<ProfileWithRevision>, ApiError> {
    let created = add_profile(&app, &p, new).await?;
    Ok(Created(created.profile.version, created))
}

/// Read a profile.
#[utoipa::path(get, path = "/v1/profiles/{id}", tag = "profiles", params(("id" = String, Path)),
    responses((status = 200, body = Profile, headers(("etag" = String))), (status = 404, body = Problem)))]
async fn get_profile(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Tagged<Profile>, ApiError> {
    let profile = readable(&p, app.store.profile(&id).await, "profile")?;
    Ok(Tagged(profile.version, profile))
}

/// Update a profile's description (layers change by adding a revision).
#[utoipa::path(put, path = "/v1/profiles/{id}", tag = "profiles", params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = UpdateProfile,
    responses((status = 200, body = Profile), (status = 403, body = Problem), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn update_profile(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    IfMatch(v): IfMatch,
    ApiJson(u): ApiJson<UpdateProfile>,
) -> Result<Tagged<Profile>, ApiError> {
    editable(&p, app.store.profile(&id).await, "profile")?;
    u.validate()?;
    let profile = app.store.update_profile(&id, v, u).await?;
    Ok(Tagged(profile.version, profile))
}

/// Delete a profile no cluster uses, with its revisions.
#[utoipa::path(delete, path = "/v1/profiles/{id}", tag = "profiles", params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn delete_profile(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    IfMatch(v): IfMatch,
) -> Result<StatusCode, ApiError> {
    editable(&p, app.store.profile(&id).await, "profile")?;
    app.store.delete_profile(&id, v).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every revision of a profile, oldest first.
#[utoipa::path(get, path = "/v1/profiles/{id}/revisions", tag = "profiles", params(("id" = String, Path)),
    responses((status = 200, body = Vec<ProfileRevision>), (status = 404, body = Problem)))]
async fn list_revisions(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<Vec<ProfileRevision>>, ApiError> {
    readable(&p, app.store.profile(&id).await, "profile")?;
    Ok(Json(app.store.profile_revisions(&id).await?))
}

/// Add the next revision. `If-Match` takes the profile's ETag, so two editors cannot both
/// believe they wrote revision N+1 on top of N.
#[utoipa::path(post, path = "/v1/profiles/{id}/revisions", tag = "profiles", params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = NewProfileRevision,
    responses((status = 201, body = ProfileWithRevision), (status = 400, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn create_revision(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    IfMatch(v): IfMatch,
    ApiJson(new): ApiJson<NewProfileRevision>,
) -> Result<Created<ProfileWithRevision>, ApiError> {
    editable(&p, app.store.profile(&id).await, "profile")?;
    new.validate()?;
    let (profile, revision) = app
        .store
        .insert_profile_revision(&id, v, new.layers, p.username.clone())
        .await?;
    Ok(Created(
        profile.version,
        ProfileWithRevision { profile, revision },
    ))
}

/// Read one revision.
#[utoipa::path(get, path = "/v1/profiles/{id}/revisions/{revision}", tag = "profiles", params(("id" = String, Path), ("revision" = i64, Path)),
    responses((status = 200, body = ProfileRevision), (status = 404, body = Problem)))]
async fn get_revision(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path((id, revision)): Path<(String, i64)>,
) -> Result<Json<ProfileRevision>, ApiError> {
    readable(&p, app.store.profile(&id).await, "profile")?;
    Ok(Json(app.store.profile_revision(&id, revision).await?))
}
