//! Settings: the public keys trusted to sign bundles (`/v1/settings/bundle-keys`). System
//! admins only; every change is audited by the API's audit middleware. The same list is what
//! `palisade bundle trust` edits offline and what `palisade bundle import` checks.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, Auth};
use super::AppState;
use crate::bundle::keys;
use crate::model::Principal;
use crate::store::TrustedKey;

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_bundle_keys, add_bundle_key))
        .routes(routes!(delete_bundle_key))
}

fn require_system_admin(p: &Principal) -> Result<(), ApiError> {
    if p.is_system_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "trusted bundle keys are managed by system admins".into(),
        ))
    }
}

/// A public key trusted to sign bundles.
#[derive(Debug, Serialize, ToSchema)]
pub struct BundleKeyView {
    /// Hex sha256 of the raw public key.
    pub key_id: String,
    /// The raw 32-byte ed25519 public key, base64.
    pub public_key: String,
    pub comment: String,
    /// Who added it: a user, or the bundle whose rotation statement added it.
    pub added_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: crate::model::Timestamp,
}

impl From<TrustedKey> for BundleKeyView {
    fn from(k: TrustedKey) -> Self {
        BundleKeyView {
            key_id: k.key_id,
            public_key: k.public_key,
            comment: k.comment,
            added_by: k.added_by,
            created_at: k.created_at,
        }
    }
}

/// A key to trust.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddBundleKey {
    /// The public key: SPKI PEM (`palisade bundle keygen` writes it to `<key>.pub`), or the
    /// base64 of the raw 32 bytes.
    pub public_key: String,
    #[serde(default)]
    pub comment: String,
}

/// Every trusted bundle key.
#[utoipa::path(get, path = "/v1/settings/bundle-keys", tag = "settings",
    responses((status = 200, body = Vec<BundleKeyView>), (status = 403, body = Problem)))]
async fn list_bundle_keys(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Vec<BundleKeyView>>, ApiError> {
    require_system_admin(&p)?;
    let keys = app.store.bundle_trusted_keys().await?;
    Ok(Json(keys.into_iter().map(BundleKeyView::from).collect()))
}

/// Trust a key to sign bundles.
#[utoipa::path(post, path = "/v1/settings/bundle-keys", tag = "settings", request_body = AddBundleKey,
    responses((status = 201, body = BundleKeyView), (status = 400, body = Problem),
              (status = 403, body = Problem), (status = 409, body = Problem)))]
async fn add_bundle_key(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<AddBundleKey>,
) -> Result<(StatusCode, Json<BundleKeyView>), ApiError> {
    require_system_admin(&p)?;
    let key = keys::parse_public(&req.public_key)
        .map_err(|e| ApiError::BadBody(format!("public_key: {e}")))?;
    if req.comment.chars().count() > 200 {
        return Err(ApiError::BadBody("comment: at most 200 characters".into()));
    }
    let k = TrustedKey {
        key_id: keys::key_id(&key),
        public_key: keys::public_key_base64(&key),
        comment: req.comment,
        added_by: p.username.clone(),
        created_at: crate::model::now(),
    };
    if !app.store.bundle_trust_key(k.clone(), None).await? {
        return Err(ApiError::Conflict(format!(
            "key {} is trusted already",
            k.key_id
        )));
    }
    Ok((StatusCode::CREATED, Json(k.into())))
}

/// Stop trusting a key.
#[utoipa::path(delete, path = "/v1/settings/bundle-keys/{id}", tag = "settings",
    params(("id" = String, Path, description = "the key id")),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn delete_bundle_key(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(key_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_system_admin(&p)?;
    if !app.store.bundle_untrust_key(&key_id, None).await? {
        return Err(ApiError::NotFound {
            kind: "trusted bundle key",
        });
    }
    Ok(StatusCode::NO_CONTENT)
}
