//! Server-sent events for `stream: true`, in OpenAI's chunk format: `chat.completion.chunk`, or
//! `text_completion` for `/v1/completions` ([`Format`]).
//!
//! Order on the wire: one role chunk per choice (chat) or the echoed prompt per choice (text with
//! `echo`), content chunks, one chunk per choice with its `finish_reason`, the usage chunk
//! (`choices: []`, only with `stream_options.include_usage`), then `data: [DONE]`. Every chunk
//! carries the same `id`. An error after the response has started becomes an `event: error` whose
//! data is the usual `{"error": {...}}` body, followed by `[DONE]`.
//!
//! Dropping the body (client gone) drops the engine's streams, which cancels the request.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use grain_engine::{Event, FinishReason};
use grain_metrics::ErrorLabel;
use grain_protocol as wire;
use tokio::time::Instant;

use crate::convert;
use crate::errors::ApiError;
use crate::events::Events;
use crate::routes::chat::{
    chat_finish_reason, checked_index, CallFormat, CompletionMeta, Format, Timing,
};
use crate::shutdown::InFlight;
use crate::state::AppState;
use crate::tool_calls::CallText;

/// Starts the SSE response. The engine has already prepared the prompt when `stream` exists,
/// so prompt-level errors (context length, a bad image, an unknown granularity) were returned
/// by `generate` with their HTTP status; only errors after that become SSE error events.
pub(crate) async fn respond(
    state: AppState,
    stream: Events,
    meta: CompletionMeta,
    timing: Timing,
    deadline: Instant,
    guard: InFlight,
) -> Result<Response, ApiError> {
    let timeout_s = state.config().request_timeout.as_secs();
    let echo = match &meta.format {
        Format::Text { echo } => echo.clone(),
        Format::Chat { .. } => Vec::new(),
    };
    // With `logprobs`, an echoed prompt waits for its scores (the engine sends them before the
    // choice's first token) and goes out with them.
    let (echo, held_echo) = if meta.logprobs {
        (Vec::new(), echo)
    } else {
        (echo, Vec::new())
    };
    let calls = match &meta.format {
        Format::Chat { tool: Some(t) } => vec![t.reader(); meta.n as usize],
        _ => Vec::new(),
    };
    let mut sse = SseState {
        calls,
        reasons: vec![None; meta.n as usize],
        text_offsets: vec![0; meta.n as usize],
        held_echo,
        state,
        stream,
        meta,
        timing,
        deadline,
        timeout_s,
        pending: VecDeque::new(),
        finished: false,
        outcome_recorded: false,
        span: tracing::Span::current(),
        _guard: guard,
    };
    for index in 0..sse.meta.n {
        match &sse.meta.format {
            Format::Chat { tool } => {
                // A call: its id and name come first (with several functions, once the model has
                // named one), its arguments follow as they are written.
                let call = tool
                    .as_ref()
                    .and_then(|t| t.single.as_deref())
                    .map(|name| vec![call_header(name)]);
                let role = wire::Delta {
                    role: Some(wire::Role::Assistant),
                    content: tool.is_none().then(String::new),
                    tool_calls: call,
                };
                sse.push_choice(index, role, None, None);
            }
            Format::Text { .. } => {
                if let Some(prompt) = echo.get(index as usize) {
                    sse.push_text(index, prompt.clone(), None, None);
                }
            }
        }
    }
    let body = futures_util::stream::unfold(sse, SseState::next_event);
    Ok(Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The first `tool_calls` delta of a call: its id, type and function.
fn call_header(name: &str) -> wire::ToolCallDelta {
    wire::ToolCallDelta {
        index: 0,
        id: Some(CallFormat::new_id()),
        kind: Some("function".into()),
        function: wire::FunctionCallDelta {
            name: Some(name.to_owned()),
            arguments: Some(String::new()),
        },
    }
}

/// A `tool_calls` delta that adds to the call's arguments.
fn call_arguments(arguments: String) -> wire::ToolCallDelta {
    wire::ToolCallDelta {
        index: 0,
        id: None,
        kind: None,
        function: wire::FunctionCallDelta {
            name: None,
            arguments: Some(arguments),
        },
    }
}

struct SseState {
    /// Per choice, its forced call's text (tool calls only; empty otherwise).
    calls: Vec<CallText>,
    state: AppState,
    stream: Events,
    meta: CompletionMeta,
    timing: Timing,
    deadline: Instant,
    timeout_s: u64,
    pending: VecDeque<SseEvent>,
    reasons: Vec<Option<FinishReason>>,
    /// Per choice, the characters of the tokens' texts so far (text completions' `text_offset`).
    text_offsets: Vec<u32>,
    /// Per choice, the echoed prompt that goes out with the prompt's scores (`echo` and
    /// `logprobs`); empty otherwise.
    held_echo: Vec<String>,
    /// `[DONE]` is queued; nothing follows.
    finished: bool,
    /// Success or failure was counted; a stream dropped before that was cancelled.
    outcome_recorded: bool,
    span: tracing::Span,
    _guard: InFlight,
}

impl Drop for SseState {
    fn drop(&mut self) {
        if !self.outcome_recorded {
            self.state.metrics().record_failure(ErrorLabel::Cancelled);
            self.span
                .in_scope(|| tracing::info!("client disconnected; request cancelled"));
        }
    }
}

impl SseState {
    async fn next_event(mut self) -> Option<(Result<SseEvent, Infallible>, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.finished {
                return None;
            }
            let event = match tokio::time::timeout_at(self.deadline, self.stream.next()).await {
                Ok(event) => event,
                Err(_) => {
                    self.fail(ApiError::Timeout(self.timeout_s));
                    continue;
                }
            };
            self.on_engine_event(event);
        }
    }

    fn on_engine_event(&mut self, event: Option<Event>) {
        let n = self.meta.n as usize;
        match event {
            Some(Event::Delta {
                index,
                text,
                token_ids,
                logprobs,
            }) => {
                let metrics = self.state.metrics().clone();
                self.timing.on_tokens(&metrics, index, token_ids.len());
                let i = match checked_index(index, n) {
                    Ok(i) => i,
                    Err(e) => return self.fail(e),
                };
                if let Format::Text { .. } = self.meta.format {
                    let logprobs = (self.meta.logprobs && !logprobs.is_empty())
                        .then(|| convert::text_logprobs(&[], &logprobs, &mut self.text_offsets[i]));
                    if !text.is_empty() || logprobs.is_some() {
                        self.push_text(index, text, logprobs, None);
                    }
                    return;
                }
                let logprobs =
                    (self.meta.logprobs && !logprobs.is_empty()).then(|| wire::ChoiceLogprobs {
                        content: logprobs.iter().map(convert::logprob).collect(),
                    });
                // Text held back by the engine (a partial character or stop-string prefix)
                // arrives as an empty delta: nothing to send unless it carries logprobs.
                if let Some(call) = self.calls.get_mut(i) {
                    let d = call.push(&text);
                    let mut logprobs = logprobs;
                    if !d.content.is_empty() {
                        let delta = wire::Delta {
                            content: Some(d.content),
                            ..wire::Delta::default()
                        };
                        self.push_choice(index, delta, logprobs.take(), None);
                    }
                    if let Some(name) = d.named {
                        let header = wire::Delta {
                            tool_calls: Some(vec![call_header(&name)]),
                            ..wire::Delta::default()
                        };
                        self.push_choice(index, header, None, None);
                    }
                    if !d.arguments.is_empty() || logprobs.is_some() {
                        let delta = wire::Delta {
                            tool_calls: (!d.arguments.is_empty())
                                .then(|| vec![call_arguments(d.arguments)]),
                            ..wire::Delta::default()
                        };
                        self.push_choice(index, delta, logprobs, None);
                    }
                    return;
                }
                if !text.is_empty() || logprobs.is_some() {
                    let delta = wire::Delta {
                        content: Some(text),
                        ..wire::Delta::default()
                    };
                    self.push_choice(index, delta, logprobs, None);
                }
            }
            Some(Event::PromptLogprobs { index, tokens }) => match checked_index(index, n) {
                Ok(i) => {
                    let text = self.held_echo.get(i).cloned().unwrap_or_default();
                    let logprobs = self
                        .meta
                        .logprobs
                        .then(|| convert::text_logprobs(&tokens, &[], &mut self.text_offsets[i]));
                    self.push_text(index, text, logprobs, None);
                }
                Err(e) => self.fail(e),
            },
            Some(Event::Finished { index, reason }) => match checked_index(index, n) {
                Ok(i) => {
                    let metrics = self.state.metrics().clone();
                    self.timing.on_finished(&metrics);
                    self.reasons[i] = Some(reason);
                    match &self.meta.format {
                        Format::Chat { tool } => {
                            let closed = reason == FinishReason::Stop;
                            let (rest, unnamed, called) = match self.calls.get_mut(i) {
                                Some(c) => (
                                    c.finish(closed),
                                    c.unnamed().map(str::to_owned),
                                    c.is_call(),
                                ),
                                None => (String::new(), None, false),
                            };
                            let reason = chat_finish_reason(reason, tool.as_ref(), called);
                            if !rest.is_empty() {
                                let delta = wire::Delta {
                                    tool_calls: Some(vec![call_arguments(rest)]),
                                    ..wire::Delta::default()
                                };
                                self.push_choice(index, delta, None, None);
                            }
                            // Cut before the function's name ended (or, under "auto", only
                            // whitespace): the text as it is, as the whole answer gives it.
                            if let Some(text) = unnamed.filter(|t| !t.is_empty()) {
                                let delta = wire::Delta {
                                    content: Some(text),
                                    ..wire::Delta::default()
                                };
                                self.push_choice(index, delta, None, None);
                            }
                            self.push_choice(index, wire::Delta::default(), None, Some(reason))
                        }
                        Format::Text { .. } => {
                            let reason = convert::finish_reason(reason);
                            self.push_text(index, String::new(), None, Some(reason))
                        }
                    }
                }
                Err(e) => self.fail(e),
            },
            Some(Event::Done { usage }) => {
                let metrics = self.state.metrics();
                self.timing.finish(metrics);
                let labels: Vec<_> = self
                    .reasons
                    .iter()
                    .map(|r| convert::finish_label(r.unwrap_or(FinishReason::Length)))
                    .collect();
                convert::record_success(metrics, &usage, &labels);
                self.outcome_recorded = true;
                if self.meta.include_usage {
                    let usage = Some(convert::usage(&usage));
                    match self.meta.format {
                        Format::Chat { .. } => {
                            let chunk = self.chunk(Vec::new(), usage);
                            self.push_json(&chunk);
                        }
                        Format::Text { .. } => {
                            let chunk = self.meta.text_response(Vec::new(), usage);
                            self.push_json(&chunk);
                        }
                    }
                }
                self.span.in_scope(|| {
                    tracing::info!(
                        prompt_tokens = usage.prompt_tokens,
                        completion_tokens = usage.completion_tokens,
                        "stream finished"
                    );
                });
                self.push_done();
            }
            Some(Event::Error(e)) => self.fail(ApiError::Engine(e)),
            None => self.fail(ApiError::Internal(
                "generation stream ended without a result".into(),
            )),
        }
    }

    /// Ends the stream with an error event and `[DONE]`.
    fn fail(&mut self, error: ApiError) {
        let d = error.describe();
        self.span.in_scope(|| {
            if d.status.is_server_error() {
                tracing::error!(error = %error, "stream failed");
            } else {
                tracing::info!(error = %error, "stream refused");
            }
        });
        self.state.metrics().record_failure(d.metric);
        self.outcome_recorded = true;
        let body = serde_json::to_string(&error.body()).unwrap_or_else(|_| {
            r#"{"error":{"message":"error","type":"server_error","param":null,"code":null}}"#
                .to_owned()
        });
        self.pending.push_back(
            SseEvent::default()
                .event("error")
                .data(escape_line_separators(body)),
        );
        self.push_done();
    }

    fn push_done(&mut self) {
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.finished = true;
    }

    fn chunk(
        &self,
        choices: Vec<wire::ChunkChoice>,
        usage: Option<wire::Usage>,
    ) -> wire::ChatCompletionChunk {
        wire::ChatCompletionChunk {
            id: self.meta.id.clone(),
            object: wire::ChatCompletionChunk::OBJECT.into(),
            created: self.meta.created,
            model: self.meta.model.clone(),
            choices,
            usage,
            system_fingerprint: None,
        }
    }

    fn push_choice(
        &mut self,
        index: u32,
        delta: wire::Delta,
        logprobs: Option<wire::ChoiceLogprobs>,
        finish_reason: Option<wire::FinishReason>,
    ) {
        let choice = wire::ChunkChoice {
            index,
            delta,
            logprobs,
            finish_reason,
        };
        let chunk = self.chunk(vec![choice], None);
        self.push_json(&chunk);
    }

    fn push_text(
        &mut self,
        index: u32,
        text: String,
        logprobs: Option<wire::CompletionLogprobs>,
        finish_reason: Option<wire::FinishReason>,
    ) {
        let choice = wire::CompletionChoice {
            index,
            text,
            logprobs,
            finish_reason,
        };
        let chunk = self.meta.text_response(vec![choice], None);
        self.push_json(&chunk);
    }

    fn push_json<T: serde::Serialize>(&mut self, chunk: &T) {
        match serde_json::to_string(chunk) {
            Ok(json) => self
                .pending
                .push_back(SseEvent::default().data(escape_line_separators(json))),
            Err(e) => self.fail(ApiError::Internal(format!("serializing a chunk: {e}"))),
        }
    }
}

/// `json` with U+0085, U+2028 and U+2029 written as `\u` escapes. serde_json writes them raw (they
/// are legal in JSON strings, the only place they can occur), but many SSE readers split lines the
/// way `str.splitlines` does, on these too: Python's httpx `aiter_lines`, for one, then hands the
/// client half a JSON object. A model can generate any of them. OpenAI's API escapes all non-ASCII,
/// so its clients never meet them raw.
fn escape_line_separators(json: String) -> String {
    if !json.contains(['\u{85}', '\u{2028}', '\u{2029}']) {
        return json;
    }
    json.replace('\u{85}', "\\u0085")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

#[cfg(test)]
mod tests {
    use super::escape_line_separators;

    #[test]
    fn line_separators_in_strings_are_escaped_and_the_json_unchanged() {
        let text = "a\u{85}b\u{2028}c\u{2029}d é \n";
        let json = serde_json::to_string(&serde_json::json!({ "content": text })).unwrap();
        assert!(
            json.contains('\u{2028}'),
            "serde_json writes it raw: {json}"
        );
        let safe = escape_line_separators(json);
        assert!(!safe.contains(['\u{85}', '\u{2028}', '\u{2029}']), "{safe}");
        assert_eq!(safe.lines().count(), 1);
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["content"], text);
    }
}
