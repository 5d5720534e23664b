//! The REST API under `/v1`, plus `/healthz`, `/readyz` and `/metrics`.
//!
//! Handlers are thin: authenticate (the `Auth` extractor), authorise and validate (the
//! resource's `ops` functions, which the console calls too), one store call, render. Every
//! route is registered through `utoipa_axum::routes!`, so the OpenAPI document served at
//! `/v1/openapi.json` lists exactly the routes the router serves.

pub mod error;
pub mod extract;
pub mod list_cache;
pub mod metrics;
pub mod middleware;

pub mod audit;
pub mod broker;
pub mod bundle_keys;
pub mod bundles;
pub mod catalog;
pub mod cloud_accounts;
pub mod clusters;
pub mod downloads;
pub mod identity;
pub mod pack_sources;
pub mod profiles;
pub mod pull_credentials;
pub mod session;
pub mod system;
pub mod tenancy;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::app::App;

/// Shared state of every handler.
pub type AppState = Arc<App>;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Palisade API",
        description = "Self-hosted Kubernetes management plane. Authenticate with a session cookie \
                       from POST /v1/login (plus X-CSRF-Token on changes) or an API token \
                       (Authorization: Bearer). Errors are application/problem+json.",
        license(name = "Apache-2.0")
    ),
    components(schemas(error::Problem)),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("session" = [])),
    tags(
        (name = "system", description = "Health, readiness, metrics and versions"),
        (name = "session", description = "Setup, login, logout, own account"),
        (name = "tenancy", description = "Tenants and projects"),
        (name = "identity", description = "Users, role bindings and API tokens"),
        (name = "cloud-accounts", description = "Infrastructure accounts (credentials write-only)"),
        (name = "profiles", description = "Cluster profiles and their immutable revisions"),
        (name = "clusters", description = "Clusters: spec and observed status"),
        (name = "catalog", description = "Packs and events"),
        (name = "audit", description = "Tamper-evident audit log"),
        (name = "broker", description = "Message broker: client certificates, topics and consumer groups"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(middleware::SESSION_COOKIE))),
        );
    }
}

/// Every API route, with its OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(system::routes())
        .merge(session::routes())
        .merge(tenancy::routes())
        .merge(identity::routes())
        .merge(cloud_accounts::routes())
        .merge(profiles::routes())
        .merge(clusters::routes())
        .merge(pull_credentials::routes())
        .merge(catalog::routes())
        .merge(pack_sources::routes())
        .merge(audit::routes())
        .merge(broker::routes())
        .merge(bundle_keys::routes())
        .merge(bundles::routes())
        .merge(downloads::routes())
}

/// The OpenAPI document of the API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().split_for_parts().1
}

/// The whole HTTP application: API, console, and the middleware every request passes.
pub fn router(app: AppState) -> Router {
    let (api, _) = routes().split_for_parts();
    let max_body = app.config.max_body_bytes;
    api.merge(crate::console::router())
        // The OCI distribution API; not part of the OpenAPI document.
        .merge(crate::registry::router())
        .merge(downloads::media_router())
        .fallback(system::no_route)
        .method_not_allowed_fallback(system::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            middleware::audit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            middleware::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            middleware::request_id_and_metrics,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        // HTTPS only, always: browsers must never try plain HTTP for the appliance again.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .with_state(app)
}
