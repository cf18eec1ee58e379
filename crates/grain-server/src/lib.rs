//! Grain's OpenAI-compatible HTTP layer.
//!
//! [`router`] builds the axum app from an [`AppState`] (engine handle + config + metrics);
//! [`serve`] runs it on a listener until a shutdown future resolves, then drains. This crate
//! talks to the model only through [`grain_engine::EngineHandle`] and never imports candle.
//!
//! Routes: `POST /v1/chat/completions` and `POST /v1/completions` (text only; JSON or SSE),
//! `GET /v1/models`, `GET /v1/models/{id}`,
//! `GET /health`, `GET /ready`, `GET /metrics`. `/v1/*` require an API key when keys are
//! configured; the probes and `/metrics` never do (they carry no user data).

#![forbid(unsafe_code)]

pub mod auth;
mod body;
pub mod config;
pub mod conn;
pub mod convert;
pub mod errors;
mod events;
pub mod fetch;
pub mod images;
pub mod middleware;
pub mod routes;
pub mod shutdown;
mod sse;
pub mod state;
mod tool_calls;
mod tool_requests;

use std::future::Future;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

pub use config::{HttpFetchConfig, ImageConfig, ServerConfig};
pub use conn::ClientTimeouts;
pub use errors::ApiError;
pub use shutdown::shutdown_signal;
pub use state::AppState;

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("building the HTTP client for image URLs: {0}")]
    HttpClient(String),
    #[error("invalid CORS origin '{0}'")]
    CorsOrigin(String),
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
}

/// The axum application.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(routes::chat::completions))
        .route("/v1/completions", post(routes::completions::completions))
        .route("/v1/models", get(routes::models::list))
        .route("/v1/models/{id}", get(routes::models::retrieve))
        .route("/tokenize", post(routes::tokenize::tokenize))
        .route("/detokenize", post(routes::tokenize::detokenize))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    let mut app = Router::new()
        .merge(v1)
        .route("/health", get(routes::health::health))
        .route("/ready", get(routes::health::ready))
        .route("/metrics", get(routes::health::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config().max_body_bytes));
    if let Some(cors) = cors_layer(&state.config().cors_allowed_origins) {
        app = app.layer(cors);
    }
    app.layer(axum::middleware::from_fn(middleware::request_id))
        .with_state(state)
}

/// `None` when no origin is configured (no CORS headers at all).
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Invalid origins are refused by `validate_cors_origins` at start-up.
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(Any)
            .expose_headers([
                middleware::X_REQUEST_ID.clone(),
                routes::chat::X_GRAIN_GRANULARITY.clone(),
                routes::chat::X_GRAIN_GRANULARITY_SOURCE.clone(),
            ]),
    )
}

/// Checks that every configured CORS origin is a valid header value.
pub fn validate_cors_origins(origins: &[String]) -> Result<(), ServerError> {
    for origin in origins {
        if HeaderValue::from_str(origin).is_err() {
            return Err(ServerError::CorsOrigin(origin.clone()));
        }
    }
    Ok(())
}

/// Serves `state` on `listener` until `shutdown` resolves, then drains: `/ready` and new
/// completions answer 503 while in-flight requests finish (up to the drain timeout), then the
/// listener closes and the function returns.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let app = router(state.clone());
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_state = state.clone();
    let drained = async move {
        shutdown.await;
        let timeout = drain_state.config().drain_timeout;
        tracing::info!(
            in_flight = drain_state.drain().in_flight(),
            timeout_s = timeout.as_secs_f64(),
            "draining"
        );
        drain_state.begin_drain();
        let deadline = tokio::time::Instant::now() + timeout;
        let http_idle = drain_state.drain().wait_idle(deadline).await;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let engine_idle = drain_state.engine().wait_idle(remaining).await;
        if http_idle && engine_idle {
            tracing::info!("drained");
        } else {
            tracing::warn!(
                in_flight = drain_state.drain().in_flight(),
                "drain timeout elapsed; closing remaining connections"
            );
        }
        let _ = drained_tx.send(());
    };
    let timeouts = ClientTimeouts::uniform(state.config().client_timeout);
    let server = conn::serve_connections(listener, app, timeouts, drained);
    tokio::pin!(server);
    let forced = async {
        // Only reached when the drain finished: give connections a moment to flush, then cut.
        if drained_rx.await.is_ok() {
            tokio::time::sleep(shutdown::CLOSE_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = &mut server => {}
        () = forced => tracing::warn!("connections still open after the drain; closing them"),
    }
    Ok(())
}
