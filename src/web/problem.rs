//! The one error type that knows HTTP: every failure becomes an RFC 9457 problem document.
//! 5xx bodies are opaque; their causes go to the log.
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::db;
use crate::job::SpecError;

/// Errors of the HTTP API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON or a wrong type (400).
    #[error("{0}")]
    BadRequest(String),
    /// Valid JSON that breaks a rule (422), naming the field.
    #[error("{field}: {detail}")]
    Invalid {
        /// The offending field.
        field: String,
        /// The rule it breaks.
        detail: String,
    },
    /// Unknown job or route (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the job's state (409).
    #[error("{0}")]
    Conflict(String),
    /// Not `application/json` (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Body over the limit (413).
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The body did not arrive in time (408).
    #[error("{0}")]
    RequestTimeout(String),
    /// A state-changing request from an origin that may not make it (403).
    #[error("{0}")]
    Forbidden(String),
    /// No valid API key or stream token (401, with `WWW-Authenticate: Bearer`).
    #[error("{0}")]
    Unauthorized(String),
    /// A rate or stream limit was hit (429); retry after that many seconds.
    #[error("{0}")]
    TooManyRequests(String, u64),
    /// The database is unreachable (503).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (500); the detail is logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A 422 naming `field`.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.into(),
            detail: detail.into(),
        }
    }

    fn slug_and_title(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::BadRequest(_) => ("malformed-request", "Malformed request"),
            ApiError::Invalid { .. } => ("invalid-field", "Invalid field"),
            ApiError::NotFound(_) => ("not-found", "Not found"),
            ApiError::Conflict(_) => ("conflict", "Conflict"),
            ApiError::UnsupportedMediaType(_) => {
                ("unsupported-media-type", "Unsupported media type")
            }
            ApiError::PayloadTooLarge(_) => ("payload-too-large", "Payload too large"),
            ApiError::RequestTimeout(_) => ("request-timeout", "Request timeout"),
            ApiError::Forbidden(_) => ("forbidden", "Forbidden"),
            ApiError::Unauthorized(_) => ("unauthorized", "Unauthorized"),
            ApiError::TooManyRequests(..) => ("too-many-requests", "Too many requests"),
            ApiError::Unavailable(_) => ("unavailable", "Service unavailable"),
            ApiError::Internal(_) => ("internal", "Internal server error"),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let (slug, title) = self.slug_and_title();
        let mut body = json!({
            "type": format!("/problems/{slug}"),
            "title": title,
            "status": status.as_u16(),
            // Details may quote client input: never echo kilobytes of it back.
            "detail": clip(&self.to_string(), MAX_DETAIL_CHARS),
        });
        if let ApiError::Invalid { field, .. } = self {
            body["field"] = json!(clip(field, MAX_DETAIL_CHARS));
        }
        if let ApiError::Internal(cause) = self {
            // Debug formatting keeps it one line (PostgreSQL context spans several).
            tracing::error!(cause = ?cause, "request failed");
        } else if status.is_client_error() {
            // A client's mistake is not the operator's problem: an attacker must not be able
            // to flood the error log.
            tracing::debug!(status = status.as_u16(), detail = ?clip(&self.to_string(), MAX_DETAIL_CHARS), "request refused");
        }
        let mut response = HttpResponse::build(status);
        response.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.insert_header((header::RETRY_AFTER, "1"));
        }
        match self {
            ApiError::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::TooManyRequests(_, seconds) => {
                response.insert_header((header::RETRY_AFTER, seconds.to_string()));
            }
            _ => {}
        }
        response.body(body.to_string())
    }
}

/// Longest `detail` (and `field`) sent back, in characters.
const MAX_DETAIL_CHARS: usize = 300;

pub use crate::job::clip;

impl From<db::Error> for ApiError {
    fn from(error: db::Error) -> Self {
        if error.is_connection() {
            tracing::warn!(%error, "database unavailable");
            ApiError::Unavailable("the database is unavailable; try again shortly".into())
        } else {
            ApiError::Internal(error.to_string())
        }
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        db::Error::from(error).into()
    }
}

impl From<SpecError> for ApiError {
    fn from(error: SpecError) -> Self {
        match error {
            SpecError::Type { field, detail } => ApiError::BadRequest(format!("{field}: {detail}")),
            SpecError::Rule { field, detail } => ApiError::Invalid { field, detail },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn clip_cuts_at_a_character_boundary_and_says_so() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("ééééé", 3), "ééé…");
        assert_eq!(clip(&"x".repeat(30_000), 300).chars().count(), 301);
    }
}
