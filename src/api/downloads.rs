//! What new machines download from the appliance while they bootstrap, without credentials
//! (they have none yet): this executable (the agent), file artifacts imported from signed
//! bundles (`kubeadm`, `kubelet`, `kubectl`, ...), and per-machine boot media for BMCs.
//!
//! Read-only and limited to content an admin imported from a signed bundle, this executable,
//! or media whose names carry a random part; nothing here lists what exists.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use tokio::io::AsyncReadExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::AppState;

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(download_palisade))
        .routes(routes!(download_artifact))
}

/// Routes outside `/v1` (not in the OpenAPI document): boot media for BMCs.
pub fn media_router() -> axum::Router<AppState> {
    axum::Router::new().route("/boot-media/{name}", axum::routing::get(boot_medium))
}

const CHUNK: usize = 256 * 1024;

/// Stream `len` bytes of an open file.
fn file_body(file: tokio::fs::File, len: u64) -> Body {
    let stream = futures_util::stream::unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; CHUNK.min(left as usize)];
        match file.read(&mut buf).await {
            Ok(0) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file is shorter than when it was opened",
                )),
                (file, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (file, left - n as u64)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    });
    Body::from_stream(stream)
}

async fn send_file(
    path: &std::path::Path,
    content_type: &str,
    missing: &str,
) -> Result<Response, ApiError> {
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::Missing(missing.to_string()))
        }
        Err(e) => {
            return Err(ApiError::internal(std::io::Error::new(
                e.kind(),
                format!("open {}: {e}", path.display()),
            )))
        }
    };
    let len = file.metadata().await.map_err(ApiError::internal)?.len();
    let mut res = Response::new(file_body(file, len));
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    Ok(res)
}

/// This executable: what nodes run as the agent (`palisade agent`).
#[utoipa::path(get, path = "/v1/downloads/palisade", tag = "system", security(()),
    responses((status = 200, description = "the palisade executable", content_type = "application/octet-stream")))]
async fn download_palisade() -> Result<Response, ApiError> {
    let exe = std::env::current_exe().map_err(ApiError::internal)?;
    send_file(
        &exe,
        "application/octet-stream",
        "this executable cannot be read",
    )
    .await
}

/// A file artifact imported from a signed bundle (kind `file`), by name and version.
#[utoipa::path(get, path = "/v1/downloads/{name}/{version}", tag = "system", security(()),
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, description = "the artifact's bytes", content_type = "application/octet-stream"),
        (status = 404, body = Problem)))]
async fn download_artifact(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let found = app
        .store
        .bundle_file_artifacts()
        .await?
        .into_iter()
        .find(|[_, kind, n, v, _, _]| kind == "file" && *n == name && *v == version);
    let missing = format!(
        "no imported bundle has a file artifact {name} {version}: import the bundle that carries it"
    );
    let Some([_, _, _, _, _, location]) = found else {
        return Err(ApiError::Missing(missing));
    };
    send_file(
        &app.config.data_dir.join(location),
        "application/octet-stream",
        &missing,
    )
    .await
}

/// A per-machine boot medium (cloud-init seed image) published by the bare-metal provider.
async fn boot_medium(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let path = app
        .boot_media
        .path(&name)
        .ok_or_else(|| ApiError::Missing("no such boot medium".into()))?;
    send_file(&path, "application/octet-stream", "no such boot medium").await
}
