//! `POST /tokenize` and `POST /detokenize` (vLLM's shapes): a prompt's token ids, as a completion
//! would be admitted with them, and the text of token ids. They run the model's preprocessor only.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use grain_engine as engine;
use grain_protocol as wire;

use super::chat::{endpoint, read_request};
use crate::convert;
use crate::errors::ApiError;
use crate::middleware::RequestId;
use crate::state::AppState;

pub async fn tokenize(
    State(state): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    request: Request,
) -> Response {
    endpoint(&state, |_guard, started| {
        handle_tokenize(&state, request_id, request, started)
    })
    .await
}

async fn handle_tokenize(
    state: &AppState,
    request_id: String,
    request: Request,
    started: Instant,
) -> Result<Response, ApiError> {
    let ((_, input), _model) = read_request(
        state,
        request,
        started,
        wire::parse_tokenize_request,
        |(r, _)| r.model.as_ref(),
    )
    .await?;
    let engine_req = match input {
        wire::TokenizeInput::Prompt(text) => engine::ChatRequest {
            request_id,
            messages: Vec::new(),
            raw_prompt: Some(engine::RawPrompt::Text(text)),
            params: engine::GenerationParams::default(),
            granularity: engine::GranularityChoice::Auto,
        },
        // Text only (validation refused images), so no image is loaded here.
        wire::TokenizeInput::Chat(chat) => {
            convert::to_engine_request(&chat, request_id, state.images()).await?
        }
    };
    let tokens = state.engine().tokenize(engine_req).await?;
    Ok(Json(wire::TokenizeResponse {
        count: tokens.len(),
        max_model_len: u32::try_from(state.engine().max_context()).unwrap_or(u32::MAX),
        tokens,
    })
    .into_response())
}

pub async fn detokenize(State(state): State<AppState>, request: Request) -> Response {
    endpoint(&state, |_guard, started| {
        handle_detokenize(&state, request, started)
    })
    .await
}

async fn handle_detokenize(
    state: &AppState,
    request: Request,
    started: Instant,
) -> Result<Response, ApiError> {
    let (req, _model) = read_request(
        state,
        request,
        started,
        wire::parse_detokenize_request,
        |r| r.model.as_ref(),
    )
    .await?;
    let prompt = state.engine().detokenize(req.token_ids()).await?;
    Ok(Json(wire::DetokenizeResponse { prompt }).into_response())
}
