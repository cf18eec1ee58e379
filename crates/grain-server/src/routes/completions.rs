//! `POST /v1/completions`: OpenAI's legacy text completions. The prompt is tokenized as sent (or
//! given as token ids), with no chat template and no images; generation, streaming, limits and errors are chat's.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use grain_engine as engine;
use grain_metrics::Metrics;
use grain_protocol as wire;

use super::chat::{
    endpoint, gather, read_request, run, unix_now, CompletionMeta, Format, Gathered, Timing,
};
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
    endpoint(&state, |guard, started| {
        handle(&state, request_id, request, started, guard)
    })
    .await
}

async fn handle(
    state: &AppState,
    request_id: String,
    request: Request,
    started: Instant,
    guard: InFlight,
) -> Result<Response, ApiError> {
    let (req, model) = read_request(
        state,
        request,
        started,
        wire::parse_completion_request,
        |r| Some(&r.model),
    )
    .await?;
    let prompts = req.prompts();
    let sampling = req.sampling();
    let n = sampling.n_or_default();
    // One echo per choice: choice `j` of prompt `i` is choice `i·n + j`. Token ids echo as their
    // text, special tokens included (what `/detokenize` answers).
    let mut echo = Vec::new();
    if req.echo() {
        for p in &prompts {
            let text = match p {
                wire::Prompt::Text(t) => t.to_string(),
                wire::Prompt::Ids(ids) => state
                    .engine()
                    .detokenize(ids.clone())
                    .await
                    .map_err(prompt_error)?,
            };
            echo.extend(std::iter::repeat_n(text, n as usize));
        }
    }
    let logprobs = req.logprobs_count();
    let meta = CompletionMeta {
        id: format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
        created: unix_now(),
        model,
        n: n * prompts.len() as u32,
        logprobs: logprobs.is_some(),
        include_usage: sampling.include_usage(),
        format: Format::Text { echo },
    };
    let mut params = convert::generation_params(
        &sampling,
        Some(req.max_new_tokens()),
        logprobs.is_some(),
        logprobs.unwrap_or(0),
    );
    // An echoed prompt's tokens get their log-probabilities too.
    params.prompt_logprobs = logprobs.filter(|_| req.echo());
    let engine_reqs = prompts
        .into_iter()
        .enumerate()
        .map(|(i, prompt)| engine::ChatRequest {
            // The request id names the HTTP request; a second prompt's engine request gets `-1`.
            request_id: match i {
                0 => request_id.clone(),
                _ => format!("{request_id}-{i}"),
            },
            messages: Vec::new(),
            raw_prompt: Some(match prompt {
                wire::Prompt::Text(t) => engine::RawPrompt::Text(t.to_owned()),
                wire::Prompt::Ids(ids) => engine::RawPrompt::Ids(ids),
            }),
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

/// An id `/detokenize` refuses is a bad `prompt` here, as it is without `echo`.
fn prompt_error(e: engine::EngineError) -> engine::EngineError {
    match e {
        engine::EngineError::InvalidRequest { message, .. } => {
            engine::EngineError::invalid(message, Some("prompt"))
        }
        other => other,
    }
}

/// Runs a non-streaming text completion to the end and builds its JSON response.
pub(crate) async fn collect(
    mut stream: Events,
    meta: &CompletionMeta,
    metrics: &Metrics,
    timing: Timing,
) -> Result<Response, ApiError> {
    let n = meta.n as usize;
    let echo = match &meta.format {
        Format::Text { echo } => echo.as_slice(),
        Format::Chat { .. } => &[],
    };
    if !echo.is_empty() && echo.len() != n {
        return Err(ApiError::Internal(format!(
            "{} echoed prompts for {n} choices",
            echo.len()
        )));
    }
    let Gathered { choices, usage } = gather(&mut stream, meta, metrics, timing).await?;
    let choices = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let prompt = echo.get(i).map_or("", String::as_str);
            // Offsets count the tokens' texts from the start of the choice, the echoed prompt's
            // tokens first.
            let mut offset = 0;
            wire::CompletionChoice {
                index: i as u32,
                text: format!("{prompt}{}", c.text),
                logprobs: meta
                    .logprobs
                    .then(|| convert::text_logprobs(&c.prompt, &c.logprobs, &mut offset)),
                finish_reason: Some(convert::finish_reason(c.reason())),
            }
        })
        .collect();
    Ok(Json(meta.text_response(choices, Some(convert::usage(&usage)))).into_response())
}
