//! HTTP handlers, one file per concern.

pub mod chat;
pub mod completions;
pub mod health;
pub mod models;
pub mod tokenize;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};

use crate::errors::ApiError;

/// Unknown routes get an OpenAI-shaped 404 rather than an empty body.
pub async fn not_found(req: Request) -> Response {
    ApiError::RouteNotFound {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
    }
    .into_response()
}

pub async fn method_not_allowed() -> Response {
    ApiError::MethodNotAllowed.into_response()
}
