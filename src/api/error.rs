//! The one mapping from errors to HTTP answers, as `application/problem+json` (RFC 9457).
//!
//! A 4xx tells the user what to fix and names the field; a 5xx is logged with its full cause
//! chain and answered with an opaque message plus the request id to quote to an operator.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::model::Invalid;
use crate::store;

/// A problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem, such as `/problems/invalid-field`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    /// What went wrong and what to do about it.
    pub detail: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Quote this to an operator to find the request in the logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(Invalid),
    #[error("request body: {0}")]
    BadBody(String),
    #[error("request body is too large: send a smaller body (the limit is set by palisade serve --max-body-bytes, 1 MiB by default)")]
    TooLarge,
    #[error("send the body as JSON with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error(
        "authentication required: log in, or send an API token as Authorization: Bearer <token>"
    )]
    Unauthenticated,
    #[error("wrong username or password")]
    BadCredentials,
    #[error("too many failed logins: the account is locked until {until}")]
    Locked { until: String },
    #[error("{0}")]
    Forbidden(String),
    #[error("{kind} not found")]
    NotFound { kind: &'static str },
    /// Not found, with a message that says what to do.
    #[error("{0}")]
    Missing(String),
    #[error("no such route: see /v1/openapi.json for the API")]
    NoRoute,
    #[error("this route does not take that method: see /v1/openapi.json for the methods it takes")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    /// The object existed but is gone for good (an expired upload session).
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// An internal error from anything displayable.
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(e))
    }

    fn status_and_type(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid-field", "Invalid field"),
            ApiError::BadBody(_) => (
                StatusCode::BAD_REQUEST,
                "malformed-body",
                "Malformed request body",
            ),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
            ),
            ApiError::BadCredentials => {
                (StatusCode::UNAUTHORIZED, "bad-credentials", "Login failed")
            }
            ApiError::Locked { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "account-locked",
                "Account locked",
            ),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::NotFound { .. } | ApiError::Missing(_) => {
                (StatusCode::NOT_FOUND, "not-found", "Not found")
            }
            ApiError::NoRoute => (StatusCode::NOT_FOUND, "no-such-route", "No such route"),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::Gone(_) => (StatusCode::GONE, "gone", "Gone"),
            ApiError::PreconditionFailed(_) => (
                StatusCode::PRECONDITION_FAILED,
                "version-mismatch",
                "Precondition failed",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    /// The problem document for this error (without request id; the middleware adds it).
    pub fn problem(&self) -> Problem {
        let (status, kind, title) = self.status_and_type();
        Problem {
            problem_type: format!("/problems/{kind}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: match self {
                ApiError::Internal(_) => {
                    "the appliance failed to handle this request; an operator can find the cause in its log under the request id".into()
                }
                other => other.to_string(),
            },
            field: match self {
                ApiError::Invalid(i) => Some(i.field.clone()),
                _ => None,
            },
            request_id: None,
        }
    }
}

/// For an object named by a request field: a 404 of the referenced object (absent, or outside
/// the caller's scope) becomes a 400 naming the field, as "no such <kind>".
pub fn referenced<T>(result: Result<T, ApiError>, field: &str) -> Result<T, ApiError> {
    match result {
        Err(ApiError::NotFound { kind }) => {
            Err(Invalid::new(field, format!("no such {kind}")).into())
        }
        other => other,
    }
}

impl From<Invalid> for ApiError {
    fn from(i: Invalid) -> Self {
        ApiError::Invalid(i)
    }
}

impl From<store::Error> for ApiError {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::NotFound { kind } => ApiError::NotFound { kind },
            store::Error::Conflict(m) => ApiError::Conflict(m),
            store::Error::VersionMismatch { current } => ApiError::PreconditionFailed(format!(
                "the object changed since you read it (it is now at version \"v{current}\"): read it again, reapply your change and send the new ETag in If-Match"
            )),
            store::Error::Invalid(i) => ApiError::Invalid(i),
            other => ApiError::internal(other),
        }
    }
}

/// Marker put in a response's extensions so the request-id middleware can fill in the id.
#[derive(Clone)]
pub struct ProblemBody(pub Problem);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        if let ApiError::Internal(source) = &self {
            // Full cause chain for the operator; the client only sees the request id.
            let mut chain = source.to_string();
            let mut cur = source.source();
            while let Some(s) = cur {
                chain.push_str(": ");
                chain.push_str(&s.to_string());
                cur = s.source();
            }
            tracing::error!(error = %chain, "request failed");
        }
        problem_response(problem)
    }
}

/// Render a problem document (the request-id middleware completes it).
pub fn problem_response(problem: Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"palisade\""),
        );
    }
    res.extensions_mut().insert(ProblemBody(problem));
    res
}
