//! Health, readiness, metrics, versions and the OpenAPI document.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::Auth;
use super::metrics::Gauges;
use super::AppState;

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(system_info))
        .routes(routes!(openapi_json))
}

/// Liveness: the process answers. No authentication.
#[utoipa::path(get, path = "/healthz", tag = "system", security(()),
    responses((status = 200, description = "The process is alive", body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database answers. No authentication.
#[utoipa::path(get, path = "/readyz", tag = "system", security(()),
    responses((status = 200, description = "Ready to serve", body = String),
              (status = 503, description = "Not ready", body = String)))]
async fn readyz(State(app): State<AppState>) -> Response {
    match app.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "database not ready\n").into_response()
        }
    }
}

/// Prometheus metrics (text format). System admins only.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text exposition", body = String),
              (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)))]
async fn metrics(State(app): State<AppState>, Auth(p): Auth) -> Result<Response, ApiError> {
    if !p.is_system_admin() {
        return Err(ApiError::Forbidden("metrics are for system admins".into()));
    }
    let (schema_version, _) = app.store.versions().await?;
    let rows = app.store.counts().await?;
    let db = app.store.path();
    let size = |p: std::path::PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let db_bytes = size(db.to_path_buf()) + size(db.with_extension("db-wal"));
    let body = app.metrics.render(&Gauges {
        uptime_seconds: app.started.elapsed().as_secs_f64(),
        schema_version,
        db_bytes,
        rows,
        topics: app.broker.topic_stats(),
        groups: app.broker.group_stats(),
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// Versions and state of this appliance.
#[derive(Debug, Serialize, ToSchema)]
pub struct SystemInfo {
    /// Version of the palisade executable.
    pub version: String,
    /// Database schema version (migrations applied).
    pub schema_version: i64,
    /// SQLite library version.
    pub sqlite_version: String,
    /// SHA-256 fingerprint of the internal CA certificate.
    pub ca_fingerprint: String,
    /// Seconds since start.
    pub uptime_seconds: u64,
}

/// Versions of the appliance, its schema and its CA. Any authenticated user.
#[utoipa::path(get, path = "/v1/system", tag = "system",
    responses((status = 200, body = SystemInfo), (status = 401, body = super::error::Problem)))]
async fn system_info(
    State(app): State<AppState>,
    _auth: Auth,
) -> Result<Json<SystemInfo>, ApiError> {
    let (schema_version, sqlite_version) = app.store.versions().await?;
    Ok(Json(SystemInfo {
        version: crate::VERSION.to_string(),
        schema_version,
        sqlite_version,
        ca_fingerprint: app.ca_fingerprint.clone(),
        uptime_seconds: app.started.elapsed().as_secs(),
    }))
}

/// This document: OpenAPI 3 description of every route.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "system",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json"),
              (status = 401, body = super::error::Problem)))]
async fn openapi_json(State(app): State<AppState>, _auth: Auth) -> Response {
    let doc = app
        .openapi
        .get_or_init(|| super::openapi().to_json().unwrap_or_default());
    ([(header::CONTENT_TYPE, "application/json")], doc.clone()).into_response()
}

/// Fallback for a method a route does not serve.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Fallback for paths no route serves.
pub async fn no_route() -> ApiError {
    ApiError::NoRoute
}
