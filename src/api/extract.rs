//! Request extractors that answer every rejection as problem+json naming what to fix, and
//! the ETag response wrapper.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::ApiError;
use crate::model::{Invalid, Principal};

/// How the caller authenticated, put in request extensions by the authentication middleware.
#[derive(Clone, Debug)]
pub struct AuthContext {
    pub principal: Principal,
    /// Present for console sessions: the session secret and its CSRF token.
    pub session: Option<SessionAuth>,
}

/// A console session's secret and CSRF token.
#[derive(Clone, Debug)]
pub struct SessionAuth {
    pub secret: String,
    pub csrf_token: String,
}

/// The authenticated principal; rejects with 401 when the request carries no valid credentials.
pub struct Auth(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<AuthContext>()
            .map(|c| Auth(c.principal.clone()))
            .ok_or(ApiError::Unauthenticated)
    }
}

/// Turn serde's messages about unknown or missing fields into an error naming the field.
fn name_the_field(message: &str) -> ApiError {
    for (marker, reason) in [
        (
            "unknown field `",
            "is not a field of this request: remove it (see /v1/openapi.json)",
        ),
        ("missing field `", "is required"),
    ] {
        if let Some(rest) = message.split(marker).nth(1) {
            if let Some(field) = rest.split('`').next() {
                return ApiError::Invalid(Invalid::new(field, reason));
            }
        }
    }
    ApiError::BadBody(message.to_string())
}

/// A JSON body; malformed JSON, unknown fields, a wrong content type or an oversized body
/// are answered as problems (400, 415, 413) before the handler runs.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(match rejection {
                JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
                r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
                JsonRejection::JsonDataError(e) => name_the_field(&e.body_text()),
                r => ApiError::BadBody(r.body_text()),
            }),
        }
    }
}

/// Query parameters; bad values are answered as 400 naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|r: QueryRejection| ApiError::Invalid(Invalid::new("query", r.body_text())))
    }
}

/// The version named by `If-Match` (`"v3"`); `None` when absent or `*`.
pub struct IfMatch(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let bad = || {
            ApiError::Invalid(Invalid::new(
                "If-Match",
                "give the ETag from a previous read, such as \"v3\" (with the quotes)",
            ))
        };
        let text = value.to_str().map_err(|_| bad())?.trim();
        if text == "*" {
            return Ok(IfMatch(None));
        }
        let text = text.strip_prefix("W/").unwrap_or(text);
        text.strip_prefix("\"v")
            .and_then(|t| t.strip_suffix('"'))
            .and_then(|t| t.parse::<i64>().ok())
            .map(|v| IfMatch(Some(v)))
            .ok_or_else(bad)
    }
}

/// A JSON response carrying an `ETag` of the object's version.
pub struct Tagged<T>(pub i64, pub T);

impl<T: Serialize> IntoResponse for Tagged<T> {
    fn into_response(self) -> Response {
        let mut res = Json(self.1).into_response();
        if let Ok(v) = HeaderValue::from_str(&format!("\"v{}\"", self.0)) {
            res.headers_mut().insert(header::ETAG, v);
        }
        res
    }
}

/// A 201 response with ETag.
pub struct Created<T>(pub i64, pub T);

impl<T: Serialize> IntoResponse for Created<T> {
    fn into_response(self) -> Response {
        let mut res = Tagged(self.0, self.1).into_response();
        *res.status_mut() = StatusCode::CREATED;
        res
    }
}
