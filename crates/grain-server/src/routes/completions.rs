//! `POST /v1/completions`: OpenAI's legacy text completions. The prompt is tokenized as sent, with
//! no chat template and no images; generation, streaming, limits and errors are chat's.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use grain_engine::{self as engine, Event};
use grain_metrics::Metrics;
use grain_protocol as wire;

use super::chat::{checked_index, fail, run, unix_now, CompletionMeta, Format, Timing};
use crate::body::read_body;
use crate::convert;
use crate::errors::ApiError;
use crate::events::Events;
use crate::middleware::RequestId;
use crate::shutdown::InFlight;
use crate::state::AppState;

pub async fn completions(
    State(state): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let Some(guard) = state.enter() else {
        return fail(&state, ApiError::Draining);
    };
    match handle(&state, request_id, request, started, guard).await {
        Ok(response) => response,
        Err(e) => fail(&state, e),
    }
}

async fn handle(
    state: &AppState,
    request_id: String,
    request: Request,
    started: Instant,
    guard: InFlight,
) -> Result<Response, ApiError> {
    let deadline = tokio::time::Instant::from_std(started + state.config().request_timeout);
    let (parts, body) = request.into_parts();
    let body = read_body(
        &parts.headers,
        body,
        state.config().max_body_bytes,
        state.config().client_timeout,
        deadline,
    )
    .await?;
    let req = wire::parse_completion_request(&body, &state.config().limits)?;
    drop(body);
    let model = state
        .resolve_model(&req.model)
        .ok_or_else(|| ApiError::ModelNotFound(req.model.clone()))?
        .to_owned();
    let prompts = req.prompt_texts();
    let sampling = req.sampling();
    let n = sampling.n_or_default();
    // One echo per choice: choice `j` of prompt `i` is choice `i·n + j`.
    let echo = if req.echo() {
        prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.to_string(), n as usize))
            .collect()
    } else {
        Vec::new()
    };
    let meta = CompletionMeta {
        id: format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
        created: unix_now(),
        model,
        n: n * prompts.len() as u32,
        logprobs: req.logprobs_count().is_some(),
        include_usage: sampling.include_usage(),
        format: Format::Text { echo },
    };
    let params = convert::generation_params(
        &sampling,
        Some(req.max_new_tokens()),
        req.logprobs_count().is_some(),
        req.logprobs_count().unwrap_or(0),
    );
    let engine_reqs = prompts
        .iter()
        .enumerate()
        .map(|(i, prompt)| engine::ChatRequest {
            // The request id names the HTTP request; a second prompt's engine request gets `-1`.
            request_id: match i {
                0 => request_id.clone(),
                _ => format!("{request_id}-{i}"),
            },
            messages: Vec::new(),
            raw_prompt: Some(prompt.to_string()),
            params: params.clone(),
            granularity: engine::GranularityChoice::Auto,
        })
        .collect();
    run(
        state,
        engine_reqs,
        meta,
        sampling.is_stream(),
        started,
        guard,
    )
    .await
}

/// Runs a non-streaming text completion to the end and builds its JSON response.
pub(crate) async fn collect(
    mut stream: Events,
    meta: &CompletionMeta,
    metrics: &Metrics,
    mut timing: Timing,
) -> Result<Response, ApiError> {
    let n = meta.n as usize;
    let mut texts = match &meta.format {
        Format::Text { echo } if !echo.is_empty() => echo.clone(),
        _ => vec![String::new(); n],
    };
    if texts.len() != n {
        return Err(ApiError::Internal(format!(
            "{} echoed prompts for {n} choices",
            texts.len()
        )));
    }
    let mut offsets: Vec<u32> = texts.iter().map(|t| t.chars().count() as u32).collect();
    let mut logprobs = vec![wire::CompletionLogprobs::default(); n];
    let mut reasons = vec![None; n];
    let usage = loop {
        let Some(event) = stream.next().await else {
            return Err(ApiError::Internal(
                "generation stream ended without a result".into(),
            ));
        };
        match event {
            Event::Delta {
                index,
                text,
                token_ids,
                logprobs: lps,
            } => {
                timing.on_tokens(metrics, index, token_ids.len());
                let i = checked_index(index, n)?;
                texts[i].push_str(&text);
                if meta.logprobs {
                    let part = convert::text_logprobs(&lps, &mut offsets[i]);
                    let all = &mut logprobs[i];
                    all.tokens.extend(part.tokens);
                    all.token_logprobs.extend(part.token_logprobs);
                    all.top_logprobs.extend(part.top_logprobs);
                    all.text_offset.extend(part.text_offset);
                }
            }
            Event::Finished { index, reason } => {
                reasons[checked_index(index, n)?] = Some(reason);
            }
            Event::Done { usage } => break usage,
            Event::Error(e) => return Err(ApiError::Engine(e)),
        }
    };
    timing.finish(metrics);
    let mut labels = Vec::with_capacity(n);
    let mut choices = Vec::with_capacity(n);
    for (i, (text, lps)) in texts.into_iter().zip(logprobs).enumerate() {
        // A choice the engine did not mark finished ran out of budget.
        let reason = reasons[i].unwrap_or(engine::FinishReason::Length);
        labels.push(convert::finish_label(reason));
        choices.push(wire::CompletionChoice {
            index: i as u32,
            text,
            logprobs: meta.logprobs.then_some(lps),
            finish_reason: Some(convert::finish_reason(reason)),
        });
    }
    convert::record_success(metrics, &usage, &labels);
    Ok(Json(wire::CompletionResponse {
        id: meta.id.clone(),
        object: wire::CompletionResponse::OBJECT.into(),
        created: meta.created,
        model: meta.model.clone(),
        choices,
        usage: Some(convert::usage(&usage)),
        system_fingerprint: None,
    })
    .into_response())
}
