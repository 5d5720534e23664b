//! Bundle import into the running appliance: a resumable upload session per bundle file (or
//! part), then an import of the uploaded parts (`/v1/bundle-uploads`). System admins only.
//! The API's audit middleware records the session's start, import and abort, but not each
//! accepted chunk ([`UPLOAD_CHUNK_ROUTE`]: a bundle is thousands of them); a refused chunk is
//! recorded. The import adds its own entry (naming the bundle, and whether an untrusted signer
//! was allowed), and the sweeper one for each session it expires.
//!
//! Upload sessions are files `<data-dir>/staging/uploads/<uuid>` ([`crate::bundle::uploads`]):
//! the file's length is the session's offset, so a session survives a dropped connection and a
//! restart. A chunk is appended only at the current offset (`Upload-Offset` header); a chunk
//! cut short leaves what arrived, and the client resumes from the offset `GET` reports. A
//! session without a chunk for `--bundle-upload-expiry` (24 h) expires: 410, start again.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, Auth};
use super::middleware::AuditObject;
use super::AppState;
use crate::bundle::import::{import, ImportOptions};
use crate::bundle::uploads::Session;
use crate::bundle::{Error as BundleError, Silent};
use crate::datadir::DataDir;
use crate::model::Principal;

/// The route of one session; `PATCH` on it appends a chunk (not audited when accepted).
pub const UPLOAD_CHUNK_ROUTE: &str = "/v1/bundle-uploads/{id}";
/// Largest bundle file (or part) one session takes.
pub const MAX_UPLOAD_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// The header carrying the offset a chunk starts at (and, in answers, the offset reached).
pub const UPLOAD_OFFSET: &str = "upload-offset";

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_bundle_upload))
        .routes(routes!(
            bundle_upload,
            append_bundle_upload,
            delete_bundle_upload
        ))
        .routes(routes!(import_bundle_upload))
}

fn require_system_admin(p: &Principal) -> Result<(), ApiError> {
    if p.is_system_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "bundles are imported by system admins".into(),
        ))
    }
}

/// An upload session.
#[derive(Debug, Serialize, ToSchema)]
pub struct BundleUpload {
    pub id: String,
    /// Bytes received so far: send the next chunk with `Upload-Offset: <offset>`.
    pub offset: u64,
}

/// What to import.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// Further upload sessions holding the other parts of a split bundle.
    #[serde(default)]
    pub parts: Vec<String>,
    /// Import although no trusted key signed the bundle (recorded in the audit log).
    #[serde(default)]
    pub allow_untrusted: bool,
    /// Import although a newer version of the bundle was imported before.
    #[serde(default)]
    pub allow_downgrade: bool,
}

/// What an import did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResult {
    pub name: String,
    pub version: String,
    pub bundle_id: String,
    pub trusted: bool,
    pub already_imported: bool,
    pub artifacts: usize,
    /// Entries written by this import; the others were present already.
    pub written: u64,
    pub reused: u64,
}

/// The file and offset of open session `id`; 404 for an id that names no session, 410 for
/// an expired one.
async fn open_session(app: &AppState, id: &str) -> Result<(PathBuf, u64), ApiError> {
    let not_found = ApiError::NotFound {
        kind: "bundle upload",
    };
    // Only a session id, never a path.
    let Ok(uuid) = uuid::Uuid::parse_str(id) else {
        return Err(not_found);
    };
    match app
        .bundle_uploads
        .lookup(&uuid)
        .await
        .map_err(ApiError::internal)?
    {
        Session::Open { path, offset } => Ok((path, offset)),
        Session::Expired => Err(expired(app, id)),
        Session::Unknown => Err(not_found),
    }
}

fn expired(app: &AppState, id: &str) -> ApiError {
    ApiError::Gone(format!(
        "upload session {id} expired after {} without a chunk, and what it held was removed: start again with POST /v1/bundle-uploads and send the file from the beginning",
        app.bundle_uploads.expiry_text()
    ))
}

async fn offset_of(path: &std::path::Path) -> Result<u64, ApiError> {
    match tokio::fs::metadata(path).await {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::NotFound {
            kind: "bundle upload",
        }),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// Open an upload session.
#[utoipa::path(post, path = "/v1/bundle-uploads", tag = "bundles",
    responses((status = 201, body = BundleUpload), (status = 403, body = Problem)))]
async fn create_bundle_upload(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Response, ApiError> {
    require_system_admin(&p)?;
    let id = app
        .bundle_uploads
        .create()
        .await
        .map_err(ApiError::internal)?
        .to_string();
    let mut res = (
        StatusCode::CREATED,
        Json(BundleUpload {
            id: id.clone(),
            offset: 0,
        }),
    )
        .into_response();
    res.extensions_mut().insert(AuditObject(id));
    Ok(res)
}

/// The session's offset: where the next chunk starts.
#[utoipa::path(get, path = "/v1/bundle-uploads/{id}", tag = "bundles", params(("id" = String, Path)),
    responses((status = 200, body = BundleUpload), (status = 403, body = Problem), (status = 404, body = Problem), (status = 410, body = Problem)))]
async fn bundle_upload(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<BundleUpload>, ApiError> {
    require_system_admin(&p)?;
    let (_, offset) = open_session(&app, &id).await?;
    Ok(Json(BundleUpload { id, offset }))
}

/// Append the request body (any length, streamed) at `Upload-Offset`, which must be the
/// session's current offset (else 409 naming it). Answers the new offset.
#[utoipa::path(patch, path = "/v1/bundle-uploads/{id}", tag = "bundles",
    params(("id" = String, Path), ("Upload-Offset" = u64, Header)),
    request_body(content = String, content_type = "application/octet-stream"),
    responses((status = 204, headers(("Upload-Offset" = u64))), (status = 400, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem), (status = 410, body = Problem), (status = 409, body = Problem)))]
async fn append_bundle_upload(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_system_admin(&p)?;
    let (path, current) = open_session(&app, &id).await?;
    let wanted: u64 = headers
        .get(UPLOAD_OFFSET)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            ApiError::BadBody(format!(
                "send the offset the chunk starts at as Upload-Offset (now {current})"
            ))
        })?;
    if wanted != current {
        return Err(ApiError::Conflict(format!(
            "the upload holds {current} bytes: send the chunk that starts there (Upload-Offset: {current})"
        )));
    }
    let file = tokio::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .await
        .map_err(ApiError::internal)?;
    // One writer per session: a second concurrent chunk is refused, not interleaved.
    let std_file = file.into_std().await;
    let locked = tokio::task::spawn_blocking(move || {
        use fs4::fs_std::FileExt;
        let ok = std_file.try_lock_exclusive();
        (std_file, ok)
    })
    .await
    .map_err(ApiError::internal)?;
    let (std_file, lock) = locked;
    if !matches!(lock, Ok(true)) {
        return Err(ApiError::Conflict(
            "another chunk of this upload is being written: wait for it".into(),
        ));
    }
    // The sweeper may have expired the session between the lookup and the lock.
    if !crate::bundle::uploads::still_current(&std_file, &path) {
        return Err(expired(&app, &id));
    }
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(std_file));
    let mut stream = body.into_data_stream();
    let mut offset = current;
    let mut cut = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                offset += bytes.len() as u64;
                if offset > MAX_UPLOAD_BYTES {
                    cut = Some(format!("an upload holds at most {MAX_UPLOAD_BYTES} bytes: split the bundle (--split-size)"));
                    break;
                }
                out.write_all(&bytes).await.map_err(ApiError::internal)?;
            }
            Err(e) => {
                cut = Some(format!(
                    "the request body was cut off ({e}): resume from the offset GET reports"
                ));
                break;
            }
        }
    }
    // What arrived stays: the client resumes from the file's length.
    out.flush().await.map_err(ApiError::internal)?;
    let file = out.into_inner();
    file.sync_all().await.map_err(ApiError::internal)?;
    let reached = offset_of(&path).await?;
    if let Some(reason) = cut {
        if reached > MAX_UPLOAD_BYTES {
            file.set_len(current).await.map_err(ApiError::internal)?;
        }
        return Err(ApiError::BadBody(reason));
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut().insert(
        UPLOAD_OFFSET,
        HeaderValue::from_str(&reached.to_string()).map_err(ApiError::internal)?,
    );
    Ok(res)
}

/// Drop an upload session.
#[utoipa::path(delete, path = "/v1/bundle-uploads/{id}", tag = "bundles", params(("id" = String, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem), (status = 410, body = Problem)))]
async fn delete_bundle_upload(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_system_admin(&p)?;
    let (path, _) = open_session(&app, &id).await?;
    match tokio::fs::remove_file(&path).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        // Expired by the sweeper meanwhile: gone either way.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(expired(&app, &id)),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// Verify and import the uploaded bundle (this session, plus `parts` for a split bundle) into
/// the registry and the data directory, exactly as `palisade bundle import` does offline. The
/// sessions are removed once the bundle is imported; a refused bundle changes nothing and
/// keeps them.
#[utoipa::path(post, path = "/v1/bundle-uploads/{id}/import", tag = "bundles", params(("id" = String, Path)),
    request_body = ImportRequest,
    responses((status = 200, body = ImportResult), (status = 400, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 410, body = Problem), (status = 409, body = Problem)))]
async fn import_bundle_upload(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ImportRequest>,
) -> Result<Json<ImportResult>, ApiError> {
    require_system_admin(&p)?;
    let mut files = Vec::new();
    for session in std::iter::once(&id).chain(&req.parts) {
        files.push(open_session(&app, session).await?.0);
    }
    let dir = DataDir::create(&app.config.data_dir).map_err(ApiError::internal)?;
    let opts = ImportOptions {
        allow_untrusted: req.allow_untrusted,
        allow_downgrade: req.allow_downgrade,
        actor: p.username.clone(),
        source: format!("API upload {id}"),
    };
    let report = import(
        &dir,
        &app.store,
        &files,
        &opts,
        Arc::new(Silent),
        Some(&app.registry),
    )
    .await
    .map_err(|e| match e {
        BundleError::Rollback { .. } | BundleError::VersionReused { .. } => {
            ApiError::Conflict(e.to_string())
        }
        e if e.is_refusal() => ApiError::BadBody(format!("bundle refused: {e}")),
        e => ApiError::internal(e),
    })?;
    for f in &files {
        let _ = tokio::fs::remove_file(f).await;
    }
    let m = &report.head.manifest;
    Ok(Json(ImportResult {
        name: m.name.clone(),
        version: m.version.clone(),
        bundle_id: m.bundle_id.to_string(),
        trusted: report.trusted,
        already_imported: report.already_imported,
        artifacts: m.artifacts.len(),
        written: report.written,
        reused: report.reused,
    }))
}
