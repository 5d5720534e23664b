//! The audit log: list with filters, export as JSON lines, verify the chain. System admins only.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{ApiQuery, Auth};
use super::AppState;
use crate::model::Principal;
use crate::store::{AuditFilter, AuditRecord, ChainReport};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_audit))
        .routes(routes!(export_audit))
        .routes(routes!(verify_audit))
}

fn require_system_admin(p: &Principal) -> Result<(), ApiError> {
    if p.is_system_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "the audit log is for system admins".into(),
        ))
    }
}

/// Audit entries matching the filters, oldest first; page with `after_seq`.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditFilter),
    responses((status = 200, body = Vec<AuditRecord>), (status = 400, body = Problem), (status = 403, body = Problem)))]
async fn list_audit(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiQuery(f): ApiQuery<AuditFilter>,
) -> Result<Json<Vec<AuditRecord>>, ApiError> {
    require_system_admin(&p)?;
    Ok(Json(app.store.list_audit(f).await?))
}

/// Every matching entry as JSON lines (one object per line), streamed in batches.
#[utoipa::path(get, path = "/v1/audit/export", tag = "audit", params(AuditFilter),
    responses((status = 200, description = "JSON lines", content_type = "application/x-ndjson", body = String),
              (status = 400, body = Problem), (status = 403, body = Problem)))]
async fn export_audit(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiQuery(f): ApiQuery<AuditFilter>,
) -> Result<Response, ApiError> {
    require_system_admin(&p)?;
    // Validate the filter once before the stream starts, so a bad one is a 400, not a cut stream.
    app.store
        .list_audit(AuditFilter {
            limit: Some(1),
            ..f.clone()
        })
        .await?;
    let store = app.store.clone();
    let stream = futures_util::stream::unfold(Some(f.after_seq.unwrap_or(0)), move |cursor| {
        let store = store.clone();
        let f = f.clone();
        async move {
            let after = cursor?;
            let batch = AuditFilter {
                after_seq: Some(after),
                limit: Some(1000),
                ..f
            };
            match store.list_audit(batch).await {
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => {
                    let next = rows.last().map(|r| r.seq);
                    let mut chunk = String::new();
                    for r in &rows {
                        chunk.push_str(&serde_json::to_string(r).unwrap_or_default());
                        chunk.push('\n');
                    }
                    Some((Ok::<_, std::io::Error>(chunk), next))
                }
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
            }
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"palisade-audit.jsonl\"",
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Verify the hash chain of the whole log.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, body = ChainReport), (status = 403, body = Problem)))]
async fn verify_audit(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<ChainReport>, ApiError> {
    require_system_admin(&p)?;
    Ok(Json(app.store.verify_audit().await?))
}
