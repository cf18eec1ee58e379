//! `POST /v1/chat/completions`.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::future::try_join_all;
use grain_engine::Event;
use grain_metrics::Metrics;
use grain_protocol as wire;

use crate::body::read_body;
use crate::convert;
use crate::errors::ApiError;
use crate::events::Events;
use crate::middleware::RequestId;
use crate::shutdown::InFlight;
use crate::sse;
use crate::state::AppState;
use crate::tool_calls::CallText;

/// Each image's granularity, in prompt order (`144,36`).
pub static X_GRAIN_GRANULARITY: HeaderName = HeaderName::from_static("x-grain-granularity");
/// Who chose each image's granularity, in prompt order (`router,ceiling`).
pub static X_GRAIN_GRANULARITY_SOURCE: HeaderName =
    HeaderName::from_static("x-grain-granularity-source");

/// Latency bookkeeping shared by the streaming and non-streaming paths.
pub(crate) struct Timing {
    started: Instant,
    first_token: bool,
    last_token: Vec<Option<Instant>>,
}

impl Timing {
    pub(crate) fn new(started: Instant, n: u32) -> Self {
        Self {
            started,
            first_token: false,
            last_token: vec![None; n as usize],
        }
    }

    /// Records `tokens` new tokens of choice `index` arriving now.
    pub(crate) fn on_tokens(&mut self, metrics: &Metrics, index: u32, tokens: usize) {
        if tokens == 0 {
            return;
        }
        let now = Instant::now();
        self.first_token_at(metrics, now);
        if let Some(slot) = self.last_token.get_mut(index as usize) {
            if let Some(last) = *slot {
                // Several tokens in one delta share the gap evenly.
                let gap = (now - last).as_secs_f64() / tokens as f64;
                for _ in 0..tokens {
                    metrics.observe_inter_token_latency(gap);
                }
            }
            *slot = Some(now);
        }
    }

    /// A choice ended. If no token was shown yet, its first token was EOS (counted in usage, never
    /// delivered): that token was generated now.
    pub(crate) fn on_finished(&mut self, metrics: &Metrics) {
        self.first_token_at(metrics, Instant::now());
    }

    /// Observes the time to first token once per request.
    fn first_token_at(&mut self, metrics: &Metrics, now: Instant) {
        if !self.first_token {
            self.first_token = true;
            metrics.observe_time_to_first_token((now - self.started).as_secs_f64());
        }
    }

    pub(crate) fn finish(&self, metrics: &Metrics) {
        metrics.observe_e2e_request_latency(self.started.elapsed().as_secs_f64());
    }
}

/// What every chunk or response of one completion shares.
#[derive(Debug, Clone)]
pub(crate) struct CompletionMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub n: u32,
    pub logprobs: bool,
    pub include_usage: bool,
    pub format: Format,
}

impl CompletionMeta {
    /// A `text_completion` object of this answer: the whole response, or one streamed chunk.
    pub fn text_response(
        &self,
        choices: Vec<wire::CompletionChoice>,
        usage: Option<wire::Usage>,
    ) -> wire::CompletionResponse {
        wire::CompletionResponse {
            id: self.id.clone(),
            object: wire::CompletionResponse::OBJECT.into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            system_fingerprint: None,
        }
    }
}

/// Which API's shapes the response takes.
#[derive(Debug, Clone)]
pub(crate) enum Format {
    /// `chat.completion` / `chat.completion.chunk`: messages and deltas; with `tool`, each
    /// choice's text is a call, or with `"auto"` may be one ([`CallFormat`]).
    Chat { tool: Option<CallFormat> },
    /// `text_completion` (`/v1/completions`): plain `text`, legacy log-probabilities.
    Text {
        /// Per choice, its prompt, sent in front of its text (`echo: true`); empty without echo.
        /// With `logprobs` too, the prompt's tokens come first in the log-probabilities.
        echo: Vec<String>,
    },
}

/// How a choice's text reads as a call (`tool_choice`): as the arguments of its one function, or
/// as `{"<name>": <arguments>}` ([`crate::tool_calls`]).
#[derive(Debug, Clone)]
pub(crate) struct CallFormat {
    /// The one function the text is the arguments of; `None` for the envelope.
    pub single: Option<String>,
    pub mode: wire::CallMode,
}

impl CallFormat {
    /// A choice's reader of its text.
    pub fn reader(&self) -> CallText {
        match self.mode {
            wire::CallMode::Auto => CallText::auto(),
            wire::CallMode::Named | wire::CallMode::Required => {
                CallText::new(self.single.as_deref())
            }
        }
    }

    /// A fresh id for one call, as OpenAI's: `call_` and 24 characters.
    pub fn new_id() -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("call_{}", &id[..24])
    }
}

/// A chat choice's finish reason: the engine's, with `tool_calls` for a finished call the model
/// chose (`"required"` or `"auto"`; a named call ends with `stop`, as OpenAI's).
pub(crate) fn chat_finish_reason(
    reason: grain_engine::FinishReason,
    tool: Option<&CallFormat>,
    called: bool,
) -> wire::FinishReason {
    match convert::finish_reason(reason) {
        wire::FinishReason::Stop
            if called && tool.is_some_and(|t| t.mode != wire::CallMode::Named) =>
        {
            wire::FinishReason::ToolCalls
        }
        other => other,
    }
}

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

/// The entry of every model endpoint: refuses while draining, runs `handle` with the in-flight
/// guard and the time the request arrived, and answers its error as OpenAI's JSON (counted).
pub(crate) async fn endpoint<Fut>(
    state: &AppState,
    handle: impl FnOnce(InFlight, Instant) -> Fut,
) -> Response
where
    Fut: std::future::Future<Output = Result<Response, ApiError>>,
{
    let started = Instant::now();
    let Some(guard) = state.enter() else {
        return fail(state, ApiError::Draining);
    };
    match handle(guard, started).await {
        Ok(response) => response,
        Err(e) => fail(state, e),
    }
}

pub(crate) fn fail(state: &AppState, e: ApiError) -> Response {
    state.metrics().record_failure(e.describe().metric);
    e.into_response()
}

async fn handle(
    state: &AppState,
    request_id: String,
    request: Request,
    started: Instant,
    guard: InFlight,
) -> Result<Response, ApiError> {
    let (req, model) = read_request(state, request, started, wire::parse_chat_request, |r| {
        Some(&r.model)
    })
    .await?;
    let engine_req = convert::to_engine_request(&req, request_id, state.images()).await?;
    let meta = CompletionMeta {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: unix_now(),
        model,
        n: req.sampling().n_or_default(),
        logprobs: req.wants_logprobs(),
        include_usage: req.sampling().include_usage(),
        format: Format::Chat {
            tool: req.call_plan().map(|plan| CallFormat {
                single: crate::tool_requests::single(&plan).map(|t| t.name.to_owned()),
                mode: plan.mode,
            }),
        },
    };
    run(
        state,
        vec![engine_req],
        meta,
        req.sampling().is_stream(),
        started,
        guard,
    )
    .await
}

/// Reads the body under the request's deadline, parses it with `parse`, and resolves the `model`
/// it names (`model_of`; `None` where the field is optional and absent) to the served model's id.
/// Chat and text completions, `/tokenize` and `/detokenize` all start here.
pub(crate) async fn read_request<T>(
    state: &AppState,
    request: Request,
    started: Instant,
    parse: fn(&[u8], &wire::RequestLimits) -> Result<T, wire::RequestError>,
    model_of: fn(&T) -> Option<&String>,
) -> Result<(T, String), ApiError> {
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
    let req = parse(&body, &state.config().limits)?;
    drop(body);
    // No `model` (allowed where vLLM allows it): the served one.
    let model = match model_of(&req) {
        None => state.engine().model_card().id.clone(),
        Some(requested) => state
            .resolve_model(requested)
            .ok_or_else(|| ApiError::ModelNotFound(requested.clone()))?
            .to_owned(),
    };
    Ok((req, model))
}

/// Hands converted requests (one per prompt; `meta.n` counts the choices of all of them) to the
/// engine and answers them as one response, streamed or whole, in `meta`'s format.
pub(crate) async fn run(
    state: &AppState,
    engine_reqs: Vec<grain_engine::ChatRequest>,
    meta: CompletionMeta,
    stream_response: bool,
    started: Instant,
    guard: InFlight,
) -> Result<Response, ApiError> {
    let timeout = state.config().request_timeout;
    let deadline = tokio::time::Instant::from_std(started + timeout);
    let per_request = meta.n / engine_reqs.len().max(1) as u32;
    // All prompts are admitted or none: an error drops the streams already opened (cancelling them).
    let generate = try_join_all(engine_reqs.into_iter().map(|r| state.engine().generate(r)));
    let streams = tokio::time::timeout_at(deadline, generate)
        .await
        .map_err(|_| ApiError::Timeout(timeout.as_secs()))??;
    let stream = Events::merged(streams, per_request);
    // `generate` returns once the scheduler has taken the request in and prepared its prompt.
    state
        .metrics()
        .observe_request_queue_time(started.elapsed().as_secs_f64());
    let timing = Timing::new(started, meta.n);
    if stream_response {
        return sse::respond(state.clone(), stream, meta, timing, deadline, guard).await;
    }
    let metrics = state.metrics();
    let collected = match meta.format {
        Format::Chat { .. } => {
            tokio::time::timeout_at(deadline, collect(stream, &meta, metrics, timing)).await
        }
        Format::Text { .. } => {
            let collect = super::completions::collect(stream, &meta, metrics, timing);
            tokio::time::timeout_at(deadline, collect).await
        }
    }
    .map_err(|_| ApiError::Timeout(timeout.as_secs()))??;
    drop(guard);
    Ok(collected)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a non-streamed answer gathered from the engine: its choices, in order, and its usage.
pub(crate) struct Gathered {
    pub choices: Vec<GatheredChoice>,
    pub usage: grain_engine::Usage,
}

/// One choice of a non-streamed answer.
#[derive(Debug, Clone, Default)]
pub(crate) struct GatheredChoice {
    pub text: String,
    /// The tokens' log-probabilities (empty unless they were asked for).
    pub logprobs: Vec<grain_engine::TokenLogprob>,
    /// The prompt's tokens and scores (text completions with `echo` and `logprobs`).
    pub prompt: Vec<grain_engine::PromptLogprob>,
    /// `None` until the engine says; a choice it never marks finished ran out of budget.
    reason: Option<grain_engine::FinishReason>,
}

impl GatheredChoice {
    /// Why the choice ended: what the engine said, else `Length`.
    pub fn reason(&self) -> grain_engine::FinishReason {
        self.reason.unwrap_or(grain_engine::FinishReason::Length)
    }
}

/// Reads the events of `meta.n` choices to the end, records the latencies and the success, and
/// returns what the response is built from. Chat and text completions both answer through it.
pub(crate) async fn gather(
    stream: &mut Events,
    meta: &CompletionMeta,
    metrics: &Metrics,
    mut timing: Timing,
) -> Result<Gathered, ApiError> {
    let n = meta.n as usize;
    let mut choices = vec![GatheredChoice::default(); n];
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
                let choice = &mut choices[checked_index(index, n)?];
                choice.text.push_str(&text);
                if meta.logprobs {
                    choice.logprobs.extend(lps);
                }
            }
            Event::PromptLogprobs { index, tokens } => {
                if meta.logprobs {
                    choices[checked_index(index, n)?].prompt = tokens;
                }
            }
            Event::Finished { index, reason } => {
                timing.on_finished(metrics);
                choices[checked_index(index, n)?].reason = Some(reason);
            }
            Event::Done { usage } => break usage,
            Event::Error(e) => return Err(ApiError::Engine(e)),
        }
    };
    timing.finish(metrics);
    let labels: Vec<_> = choices
        .iter()
        .map(|c| convert::finish_label(c.reason()))
        .collect();
    convert::record_success(metrics, &usage, &labels);
    Ok(Gathered { choices, usage })
}

/// Runs a non-streaming chat completion to the end and builds its JSON response.
async fn collect(
    mut stream: Events,
    meta: &CompletionMeta,
    metrics: &Metrics,
    timing: Timing,
) -> Result<Response, ApiError> {
    let Gathered { choices, usage } = gather(&mut stream, meta, metrics, timing).await?;
    let choices = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let tool = match &meta.format {
                Format::Chat { tool } => tool.as_ref(),
                Format::Text { .. } => None,
            };
            let call = tool.and_then(|t| {
                let closed = c.reason() == grain_engine::FinishReason::Stop;
                CallText::whole(t.single.as_deref(), &c.text, closed)
            });
            wire::ChatChoice {
                index: i as u32,
                finish_reason: chat_finish_reason(c.reason(), tool, call.is_some()),
                logprobs: meta.logprobs.then(|| wire::ChoiceLogprobs {
                    content: c.logprobs.iter().map(convert::logprob).collect(),
                }),
                message: match call {
                    Some((name, arguments)) => {
                        wire::AssistantMessage::tool_call(CallFormat::new_id(), name, arguments)
                    }
                    // No call (text under "auto", or cut before the function's name): the text
                    // as it is.
                    None => wire::AssistantMessage::new(c.text),
                },
            }
        })
        .collect();
    let body = wire::ChatCompletionResponse {
        id: meta.id.clone(),
        object: wire::ChatCompletionResponse::OBJECT.into(),
        created: meta.created,
        model: meta.model.clone(),
        choices,
        usage: convert::usage(&usage),
        system_fingerprint: None,
    };
    let mut response = Json(body).into_response();
    if let Some(value) = convert::granularity_header(&usage) {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(X_GRAIN_GRANULARITY.clone(), value);
        }
    }
    if let Some(value) = convert::granularity_source_header(&usage) {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(X_GRAIN_GRANULARITY_SOURCE.clone(), value);
        }
    }
    Ok(response)
}

/// An engine event for a choice that does not exist is an engine bug, not a client error.
pub(crate) fn checked_index(index: u32, n: usize) -> Result<usize, ApiError> {
    let i = index as usize;
    if i < n {
        Ok(i)
    } else {
        Err(ApiError::Internal(format!(
            "engine sent choice {index} of {n}"
        )))
    }
}
