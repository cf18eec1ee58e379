//! The one table from every error to an HTTP status and an OpenAI error body.
//!
//! [`ApiError::describe`] is the only place that decides a status, an OpenAI `type` and `code`,
//! and its `match` arms are exhaustive over both the server's and the engine's errors (no
//! wildcard), so a new engine error cannot reach a client without a decision here.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use grain_engine::EngineError;
use grain_metrics::ErrorLabel;
use grain_protocol::{ErrorBody, RequestError};

use crate::images::ImageError;

/// Errors that end a request with an error response (or an SSE error event).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{param}: {error}")]
    Image { param: String, error: ImageError },
    #[error("the model '{0}' does not exist")]
    ModelNotFound(String),
    #[error("missing or invalid API key")]
    Unauthorized { missing: bool },
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body too large")]
    PayloadTooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    BadBody(String),
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("the server is shutting down")]
    Draining,
    #[error("the request took longer than {0} s")]
    Timeout(u64),
    /// Logged in full, never shown to the client.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Everything a response needs to know about an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorDescription {
    pub status: StatusCode,
    /// OpenAI's `error.type`.
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    /// Seconds for a `Retry-After` header.
    pub retry_after_s: Option<u32>,
    /// The `grain_request_failure_total{error}` label.
    pub metric: ErrorLabel,
}

const INVALID: &str = "invalid_request_error";
const SERVER: &str = "server_error";
const INTERNAL_MESSAGE: &str =
    "The server had an error while processing your request. Check the x-request-id in the server logs.";

impl ApiError {
    pub fn describe(&self) -> ErrorDescription {
        let d = |status, kind, code, message: String, param, metric| ErrorDescription {
            status,
            kind,
            code,
            message,
            param,
            retry_after_s: None,
            metric,
        };
        match self {
            ApiError::Request(e) => d(
                StatusCode::BAD_REQUEST,
                INVALID,
                e.code(),
                e.to_string(),
                e.param().map(str::to_owned),
                ErrorLabel::InvalidRequest,
            ),
            ApiError::Image { param, error } => d(
                StatusCode::BAD_REQUEST,
                INVALID,
                "invalid_image",
                format!("Invalid image at '{param}': {error}"),
                Some(param.clone()),
                ErrorLabel::InvalidImage,
            ),
            ApiError::Engine(e) => describe_engine(e),
            ApiError::ModelNotFound(model) => d(
                StatusCode::NOT_FOUND,
                INVALID,
                "model_not_found",
                format!("The model '{model}' does not exist or you do not have access to it."),
                Some("model".into()),
                ErrorLabel::ModelNotFound,
            ),
            ApiError::Unauthorized { missing } => d(
                StatusCode::UNAUTHORIZED,
                INVALID,
                "invalid_api_key",
                if *missing {
                    "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
                        .into()
                } else {
                    "Incorrect API key provided.".into()
                },
                None,
                ErrorLabel::Unauthorized,
            ),
            ApiError::RouteNotFound { method, path } => d(
                StatusCode::NOT_FOUND,
                INVALID,
                "not_found",
                format!("Invalid URL ({method} {path})"),
                None,
                ErrorLabel::InvalidRequest,
            ),
            ApiError::MethodNotAllowed => d(
                StatusCode::METHOD_NOT_ALLOWED,
                INVALID,
                "method_not_allowed",
                "This method is not allowed on this URL.".into(),
                None,
                ErrorLabel::InvalidRequest,
            ),
            ApiError::PayloadTooLarge { limit } => d(
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                "payload_too_large",
                format!("The request body is larger than the limit of {limit} bytes."),
                None,
                ErrorLabel::InvalidRequest,
            ),
            ApiError::BadBody(reason) => d(
                StatusCode::BAD_REQUEST,
                INVALID,
                "invalid_body",
                format!("Could not read the request body: {reason}"),
                None,
                ErrorLabel::InvalidRequest,
            ),
            ApiError::BodyTimeout => d(
                StatusCode::REQUEST_TIMEOUT,
                INVALID,
                "request_timeout",
                "The request body stopped arriving or took too long; send it without pauses."
                    .into(),
                None,
                ErrorLabel::InvalidRequest,
            ),
            ApiError::Draining => d(
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER,
                "shutting_down",
                "The server is shutting down; retry on another replica.".into(),
                None,
                ErrorLabel::ShuttingDown,
            ),
            ApiError::Timeout(secs) => d(
                StatusCode::GATEWAY_TIMEOUT,
                SERVER,
                "timeout",
                format!("The request did not complete within {secs} s."),
                None,
                ErrorLabel::Timeout,
            ),
            ApiError::Internal(_) => d(
                StatusCode::INTERNAL_SERVER_ERROR,
                SERVER,
                "internal_error",
                INTERNAL_MESSAGE.into(),
                None,
                ErrorLabel::Internal,
            ),
        }
    }

    /// The OpenAI error body.
    pub fn body(&self) -> ErrorBody {
        let d = self.describe();
        ErrorBody::new(d.message, d.kind, d.param, Some(d.code.to_owned()))
    }
}

fn describe_engine(e: &EngineError) -> ErrorDescription {
    let d = |status, kind, code, message: String, param, metric| ErrorDescription {
        status,
        kind,
        code,
        message,
        param,
        retry_after_s: None,
        metric,
    };
    match e {
        EngineError::InvalidRequest { message, param } => d(
            StatusCode::BAD_REQUEST,
            INVALID,
            "invalid_value",
            message.clone(),
            param.clone(),
            ErrorLabel::InvalidRequest,
        ),
        EngineError::InvalidImage { index, message } => d(
            StatusCode::BAD_REQUEST,
            INVALID,
            "invalid_image",
            format!("Invalid image {index} (0-based, in prompt order): {message}"),
            Some("messages".into()),
            ErrorLabel::InvalidImage,
        ),
        EngineError::ContextLengthExceeded { .. } => d(
            StatusCode::BAD_REQUEST,
            INVALID,
            "context_length_exceeded",
            format!(
                "{e}. Use fewer or smaller images, a coarser granularity, or a shorter prompt."
            ),
            Some("messages".into()),
            ErrorLabel::ContextLengthExceeded,
        ),
        EngineError::Overloaded { retry_after_s } => ErrorDescription {
            retry_after_s: Some(*retry_after_s),
            ..d(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "overloaded",
                "The server is overloaded; retry later.".into(),
                None,
                ErrorLabel::Overloaded,
            )
        },
        EngineError::ShuttingDown => d(
            StatusCode::SERVICE_UNAVAILABLE,
            SERVER,
            "shutting_down",
            "The server is shutting down; retry on another replica.".into(),
            None,
            ErrorLabel::ShuttingDown,
        ),
        EngineError::NotReady => d(
            StatusCode::SERVICE_UNAVAILABLE,
            SERVER,
            "not_ready",
            "The model is not loaded yet; retry shortly.".into(),
            None,
            ErrorLabel::NotReady,
        ),
        EngineError::Internal(_) => d(
            StatusCode::INTERNAL_SERVER_ERROR,
            SERVER,
            "internal_error",
            INTERNAL_MESSAGE.into(),
            None,
            ErrorLabel::Internal,
        ),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let d = self.describe();
        if d.status.is_server_error() {
            // The only place internals are written down: the log, with the request's span.
            tracing::error!(error = %self, status = d.status.as_u16(), "request failed");
        } else {
            tracing::info!(error = %self, status = d.status.as_u16(), "request refused");
        }
        let retry_after = d.retry_after_s;
        let is_auth = d.status == StatusCode::UNAUTHORIZED;
        let too_large = d.status == StatusCode::PAYLOAD_TOO_LARGE;
        let body = ErrorBody::new(d.message, d.kind, d.param, Some(d.code.to_owned()));
        let mut response = (d.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if is_auth {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if too_large {
            // The rest of the body was never read, so the connection cannot carry another
            // request: say so, or a keep-alive client sends its next request into a closing socket.
            // (hyper drops this header on HTTP/2, where it does not exist.)
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak_details() {
        for err in [
            ApiError::Internal("CUDA_ERROR_OUT_OF_MEMORY at /src/secret.rs:12".into()),
            ApiError::Engine(EngineError::Internal("worker panicked: /home/x".into())),
        ] {
            let body = serde_json::to_string(&err.body()).unwrap();
            assert!(!body.contains("CUDA") && !body.contains("/home"), "{body}");
            assert_eq!(err.describe().status, StatusCode::INTERNAL_SERVER_ERROR);
        }
    }

    #[test]
    fn overloaded_carries_retry_after() {
        let resp = ApiError::Engine(EngineError::Overloaded { retry_after_s: 3 }).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
    }
}
