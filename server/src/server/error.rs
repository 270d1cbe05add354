//! The server's error answer: a stable code and a human message to the client, details to the log only.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;
use pivtap_protocol::wire::{ErrorBody, ErrorCode};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// The stable code.
    pub code: ErrorCode,
    /// The message for people (no internals).
    pub message: String,
    /// For `rate_limited`: when to try again.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::InvalidRequest, message)
    }

    /// `payload_too_large`: the body is larger than the endpoint takes.
    #[must_use]
    pub fn payload_too_large() -> Self {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            "the request body is larger than this endpoint takes",
        )
    }

    /// `rate_limited` with a `Retry-After`.
    #[must_use]
    pub fn rate_limited(retry_after: Duration) -> Self {
        ApiError {
            code: ErrorCode::RateLimited,
            message: "too many failed sign-ins from this card or device; try again later"
                .to_owned(),
            retry_after: Some(retry_after),
        }
    }
}

impl ApiError {
    /// `rate_limited` with a `Retry-After`, for a source address over its budget.
    #[must_use]
    pub fn too_many_requests(retry_after: Duration) -> Self {
        ApiError {
            code: ErrorCode::RateLimited,
            message: "too many requests from this address; try again later".to_owned(),
            retry_after: Some(retry_after),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound { .. } => ApiError::new(ErrorCode::NotFound, error.to_string()),
            StoreError::Conflict { .. } | StoreError::AttributeTaken { .. } => {
                ApiError::new(ErrorCode::Conflict, error.to_string())
            }
            other => {
                tracing::error!(error = %other, source = ?std::error::Error::source(&other), "store failure");
                ApiError::new(
                    ErrorCode::Internal,
                    "the server could not complete the request",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            Json(ErrorBody {
                error: self.code,
                message: self.message,
            }),
        )
            .into_response();
        if let Some(retry_after) = self.retry_after {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
