//! The registry's errors and their one mapping to the distribution spec's answers: a status and
//! `{"errors":[{"code":"BLOB_UNKNOWN","message":"...","detail":...}]}`.
//!
//! A 4xx message says what to fix; a 5xx is logged with its full cause chain and answered with
//! an opaque message and the request id to quote to an operator.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// The challenge sent with every 401: registry clients answer it with HTTP Basic credentials.
pub const CHALLENGE: &str = "Basic realm=\"palisade\"";

/// Everything a registry request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("authentication required: send an appliance API token as the password of HTTP Basic authentication (any user name), or as Authorization: Bearer <token>")]
    Unauthorized,
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Conflict(String),
    #[error("repository {name} not found: names start with shared/ or with the name of a tenant you can see")]
    NameUnknown { name: String },
    #[error("invalid repository name {name:?}: {reason}")]
    NameInvalid { name: String, reason: &'static str },
    #[error("blob {digest} is not in this repository")]
    BlobUnknown { digest: String },
    #[error("upload {id} not found in this repository: it was completed, cancelled or abandoned; start a new one with POST .../blobs/uploads/")]
    BlobUploadUnknown { id: String },
    #[error("{0}")]
    BlobUploadInvalid(String),
    #[error("the chunk must start at byte {offset} (the upload holds bytes 0 to {offset} exclusive): send Content-Range: {offset}-<end>")]
    ChunkOutOfOrder { offset: u64, location: String },
    #[error("{0}")]
    DigestInvalid(String),
    #[error("manifest {reference} not found in this repository")]
    ManifestUnknown { reference: String },
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("the manifest is larger than {limit} bytes")]
    ManifestTooLarge { limit: usize },
    #[error("the manifest references content this repository does not hold: push (or mount) these first: {}", missing.join(", "))]
    ManifestBlobUnknown { missing: Vec<String> },
    #[error("{0}")]
    SizeInvalid(String),
    #[error("the blob is larger than this registry accepts ({limit} bytes)")]
    BlobTooLarge { limit: u64 },
    #[error("the requested range is outside the blob's {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("too many uploads are open on this appliance ({limit}): finish or cancel some, or retry later")]
    TooManyUploads { limit: u64 },
    #[error("{0}")]
    BadParameter(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("no such registry endpoint: see the OCI distribution specification v1.1")]
    NoRoute,
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl RegistryError {
    /// An internal error from any error value.
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        RegistryError::Internal(Box::new(e))
    }

    /// The status and the spec's error code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use RegistryError::*;
        match self {
            Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
            // The spec has no conflict code; DENIED with 409 says "not now, and why".
            Conflict(_) => (StatusCode::CONFLICT, "DENIED"),
            NameUnknown { .. } => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            NameInvalid { .. } => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            BlobUnknown { .. } => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            BlobUploadUnknown { .. } => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            BlobUploadInvalid(_) => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            ChunkOutOfOrder { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
            DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            ManifestUnknown { .. } => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            ManifestTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "MANIFEST_INVALID"),
            ManifestBlobUnknown { .. } => (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
            SizeInvalid(_) => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
            BlobTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
            RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "SIZE_INVALID"),
            TooManyUploads { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            BadParameter(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
            Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            NoRoute => (StatusCode::NOT_FOUND, "UNSUPPORTED"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        }
    }

    fn detail(&self, request_id: Option<&str>) -> Value {
        use RegistryError::*;
        match self {
            NameUnknown { name } | NameInvalid { name, .. } => json!({ "name": name }),
            BlobUnknown { digest } => json!({ "digest": digest }),
            BlobUploadUnknown { id } => json!({ "upload": id }),
            ChunkOutOfOrder { offset, .. } => json!({ "offset": offset }),
            ManifestUnknown { reference } => json!({ "reference": reference }),
            ManifestBlobUnknown { missing } => json!({ "missing": missing }),
            ManifestTooLarge { limit } => json!({ "limit": limit }),
            BlobTooLarge { limit } => json!({ "limit": limit }),
            RangeNotSatisfiable { size } => json!({ "size": size }),
            Internal(_) => json!({ "request_id": request_id }),
            _ => Value::Null,
        }
    }

    /// The response for this error; `request_id` is quoted in 5xx answers.
    pub fn render(self, request_id: Option<&str>) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            RegistryError::Internal(source) => {
                // Full cause chain for the operator; the client only sees the request id.
                let mut chain = source.to_string();
                let mut cur = source.source();
                while let Some(s) = cur {
                    chain.push_str(": ");
                    chain.push_str(&s.to_string());
                    cur = s.source();
                }
                tracing::error!(error = %chain, request_id, "registry request failed");
                "the appliance failed to handle this request; an operator can find the cause in its log under the request id".to_string()
            }
            other => other.to_string(),
        };
        let body = json!({
            "errors": [{ "code": code, "message": message, "detail": self.detail(request_id) }]
        });
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut res = (status, bytes).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            RegistryError::Unauthorized => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(CHALLENGE),
                );
            }
            RegistryError::ChunkOutOfOrder { offset, location } => {
                if let Ok(v) = HeaderValue::from_str(location) {
                    h.insert(header::LOCATION, v);
                }
                if let Ok(v) = HeaderValue::from_str(&super::handlers::range_header(*offset)) {
                    h.insert(header::RANGE, v);
                }
            }
            RegistryError::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        res
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        self.render(None)
    }
}

impl From<crate::store::Error> for RegistryError {
    fn from(e: crate::store::Error) -> Self {
        RegistryError::internal(e)
    }
}

impl From<super::blobs::Error> for RegistryError {
    fn from(e: super::blobs::Error) -> Self {
        RegistryError::internal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_have_the_spec_body_and_status() {
        let res = RegistryError::BlobUnknown {
            digest: "sha256:x".into(),
        }
        .into_response();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .expect("body");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
        assert_eq!(v["errors"][0]["detail"]["digest"], "sha256:x");
    }

    #[test]
    fn unauthorized_carries_the_basic_challenge() {
        let res = RegistryError::Unauthorized.into_response();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            res.headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok()),
            Some(CHALLENGE)
        );
    }
}
