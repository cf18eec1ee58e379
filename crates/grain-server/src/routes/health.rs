//! `GET /health` (liveness), `GET /ready` (readiness) and `GET /metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::errors::ApiError;
use crate::state::AppState;

/// The process is up and serving HTTP. Never depends on the model, so a slow model load does not
/// get the pod restarted.
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 once the model is loaded and the worker answers; 503 before that and while draining, so
/// a load balancer stops routing here before shutdown.
pub async fn ready(State(state): State<AppState>) -> Response {
    if state.drain().is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response()
    } else if state.engine().is_ready() {
        Json(json!({"status": "ready", "model": state.engine().model_card().id})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response()
    }
}

/// Prometheus text exposition. Engine gauges are sampled at scrape time.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let stats = state.engine().stats();
    state.metrics().sync_engine_stats(
        stats.running,
        stats.waiting,
        stats.kv_blocks_used,
        stats.kv_blocks_total,
        stats.preemptions,
    );
    match grain_metrics::encode_text(state.registry()) {
        Ok(text) => (
            [(header::CONTENT_TYPE, grain_metrics::TEXT_CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(e) => ApiError::Internal(e.to_string()).into_response(),
    }
}
