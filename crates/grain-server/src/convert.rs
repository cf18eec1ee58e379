//! Wire types ↔ engine types.

use futures_util::future::try_join_all;
use grain_engine as engine;
use grain_protocol as wire;

use crate::errors::ApiError;
use crate::images::ImageLoader;
use crate::tool_requests;

/// Builds the engine request: images are fetched or decoded from their data URLs (concurrently),
/// sampling fields get their OpenAI defaults.
pub async fn to_engine_request(
    req: &wire::ChatCompletionRequest,
    request_id: String,
    images: &ImageLoader,
) -> Result<engine::ChatRequest, ApiError> {
    let mut messages: Vec<engine::Message> = Vec::with_capacity(req.messages.len() + 1);
    // The calls of the last assistant message (what `tool` messages answer), and whether the last
    // message pushed is a turn of tool results (consecutive results share one).
    let mut calls: Vec<wire::PastCall<'_>> = Vec::new();
    let mut in_results = false;
    for (i, msg) in req.messages.iter().enumerate() {
        let role = match msg.role {
            wire::Role::System | wire::Role::Developer => engine::Role::System,
            wire::Role::User => engine::Role::User,
            wire::Role::Assistant => engine::Role::Assistant,
            wire::Role::Tool => {
                let id = msg.tool_call_id.as_deref().unwrap_or_default();
                let name = calls.iter().find(|c| c.id == id).map_or("tool", |c| c.name);
                let result = tool_requests::result_text(name, &plain_text(&msg.content));
                match messages.last_mut() {
                    Some(turn) if in_results => {
                        tool_requests::append_text(&mut turn.parts, "\n", &result)
                    }
                    _ => messages.push(engine::Message {
                        role: engine::Role::User,
                        parts: vec![engine::Part::Text(result)],
                    }),
                }
                in_results = true;
                continue;
            }
            // Refused by validation; kept explicit so a new role cannot slip through.
            wire::Role::Function => {
                return Err(ApiError::Internal(format!(
                    "role {} passed validation",
                    msg.role.as_str()
                )))
            }
        };
        in_results = false;
        let mut parts = match &msg.content {
            wire::MessageContent::Text(text) => vec![engine::Part::Text(text.clone())],
            wire::MessageContent::Parts(parts) => {
                let loads = parts.iter().enumerate().map(|(j, part)| async move {
                    match part {
                        wire::ContentPart::Text { text } => {
                            Ok::<_, ApiError>(engine::Part::Text(text.clone()))
                        }
                        wire::ContentPart::ImageUrl { image_url } => {
                            let data = images.load(&image_url.url).await.map_err(|error| {
                                ApiError::Image {
                                    param: format!("messages[{i}].content[{j}].image_url.url"),
                                    error,
                                }
                            })?;
                            Ok(engine::Part::Image {
                                data,
                                detail: detail(image_url.detail),
                            })
                        }
                    }
                });
                try_join_all(loads).await?
            }
            // An assistant message that only called tools (validation allows no other).
            wire::MessageContent::Null => Vec::new(),
        };
        if role == engine::Role::Assistant {
            calls = msg.past_calls();
            if !calls.is_empty() {
                let lines: Vec<String> = calls.iter().map(tool_requests::call_text).collect();
                tool_requests::append_text(&mut parts, "\n", &lines.join("\n"));
            }
        }
        messages.push(engine::Message { role, parts });
    }
    if let Some(plan) = req.call_plan() {
        let tools = req.tools.as_deref().unwrap_or_default();
        tool_requests::add_tools_prompt(&mut messages, tool_requests::tools_prompt(&plan, tools));
    }
    Ok(engine::ChatRequest {
        request_id,
        messages,
        raw_prompt: None,
        params: engine::GenerationParams {
            response_format: response_format(req)?,
            ..generation_params(
                &req.sampling(),
                req.max_new_tokens(),
                req.wants_logprobs(),
                req.top_logprobs_or_default(),
            )
        },
        granularity: match req.granularity {
            None | Some(wire::GranularityRequest::Auto) => engine::GranularityChoice::Auto,
            Some(wire::GranularityRequest::Tokens(n)) => engine::GranularityChoice::Fixed(n),
        },
    })
}

/// The engine's knobs from the fields chat and text completions share, with OpenAI's defaults.
pub fn generation_params(
    s: &wire::SamplingFields<'_>,
    max_tokens: Option<u32>,
    logprobs: bool,
    top_logprobs: u32,
) -> engine::GenerationParams {
    engine::GenerationParams {
        max_tokens,
        temperature: s.temperature_or_default(),
        top_p: s.top_p_or_default(),
        top_k: s.top_k_value(),
        seed: s.seed_value(),
        stop: s.stop_sequences(),
        n: s.n_or_default(),
        presence_penalty: s.presence_penalty_or_default(),
        frequency_penalty: s.frequency_penalty_or_default(),
        repetition_penalty: s.repetition_penalty_or_default(),
        min_p: s.min_p_or_default(),
        logprobs,
        top_logprobs,
        logit_bias: s.logit_bias_entries(),
        ignore_eos: s.ignores_eos(),
        min_tokens: s.min_tokens_value(),
        stop_token_ids: s.stop_token_ids_value(),
        prompt_logprobs: None,
        response_format: engine::ResponseFormat::Text,
    }
}

fn detail(d: wire::Detail) -> engine::Detail {
    match d {
        wire::Detail::Auto => engine::Detail::Auto,
        wire::Detail::Low => engine::Detail::Low,
        wire::Detail::High => engine::Detail::High,
    }
}

pub fn finish_reason(r: engine::FinishReason) -> wire::FinishReason {
    match r {
        engine::FinishReason::Stop => wire::FinishReason::Stop,
        engine::FinishReason::Length => wire::FinishReason::Length,
    }
}

pub fn finish_label(r: engine::FinishReason) -> grain_metrics::FinishReasonLabel {
    match r {
        engine::FinishReason::Stop => grain_metrics::FinishReasonLabel::Stop,
        engine::FinishReason::Length => grain_metrics::FinishReasonLabel::Length,
    }
}

pub fn source(s: engine::GranularitySource) -> wire::GranularitySource {
    match s {
        engine::GranularitySource::Router => wire::GranularitySource::Router,
        engine::GranularitySource::Detail => wire::GranularitySource::Detail,
        engine::GranularitySource::Request => wire::GranularitySource::Request,
        engine::GranularitySource::Default => wire::GranularitySource::Default,
        engine::GranularitySource::Ceiling => wire::GranularitySource::Ceiling,
    }
}

pub fn source_label(s: engine::GranularitySource) -> grain_metrics::GranularitySourceLabel {
    match s {
        engine::GranularitySource::Router => grain_metrics::GranularitySourceLabel::Router,
        engine::GranularitySource::Detail => grain_metrics::GranularitySourceLabel::Detail,
        engine::GranularitySource::Request => grain_metrics::GranularitySourceLabel::Request,
        engine::GranularitySource::Default => grain_metrics::GranularitySourceLabel::Default,
        engine::GranularitySource::Ceiling => grain_metrics::GranularitySourceLabel::Ceiling,
    }
}

pub fn usage(u: &engine::Usage) -> wire::Usage {
    wire::Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
        prompt_tokens_details: Some(wire::PromptTokensDetails {
            cached_tokens: u.cached_tokens,
            visual_tokens: u.visual_tokens,
            visual_tokens_full: u.visual_tokens_full,
            granularity: u.images.iter().map(|i| i.granularity).collect(),
            granularity_source: u.images.iter().map(|i| source(i.source)).collect(),
        }),
    }
}

/// The `x-grain-granularity` header value: each image's granularity in prompt order (`144,36`).
pub fn granularity_header(u: &engine::Usage) -> Option<String> {
    (!u.images.is_empty()).then(|| {
        u.images
            .iter()
            .map(|i| i.granularity.to_string())
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// The `x-grain-granularity-source` header value: who chose each image's granularity, in prompt
/// order (`router,ceiling`); `ceiling` says the server lowered it because it was busy.
pub fn granularity_source_header(u: &engine::Usage) -> Option<String> {
    (!u.images.is_empty()).then(|| {
        u.images
            .iter()
            .map(|i| i.source.as_str())
            .collect::<Vec<_>>()
            .join(",")
    })
}

pub fn logprob(l: &engine::TokenLogprob) -> wire::TokenLogprob {
    wire::TokenLogprob {
        token: l.token.clone(),
        logprob: l.logprob,
        bytes: l.bytes.clone(),
        top_logprobs: l
            .top
            .iter()
            .map(|(token, bytes, logprob)| wire::TopLogprob {
                token: token.clone(),
                logprob: *logprob,
                bytes: bytes.clone(),
            })
            .collect(),
    }
}

/// Records the metrics of a successful request from its final usage.
pub fn record_success(
    metrics: &grain_metrics::Metrics,
    u: &engine::Usage,
    reasons: &[grain_metrics::FinishReasonLabel],
) {
    metrics.record_success(u.prompt_tokens, u.completion_tokens, reasons);
    for image in &u.images {
        metrics.record_granularity(image.granularity, source_label(image.source));
    }
    metrics.record_visual_tokens(u64::from(u.visual_tokens), u64::from(u.visual_tokens_full));
    metrics.record_prefix_cache_hits(u64::from(u.cached_tokens));
}

/// Text completions' legacy log-probabilities of an echoed prompt's tokens (`prompt`, possibly
/// none) and then of generated ones: parallel lists, each token's alternatives as a map that
/// always holds the token itself (`null` for the prompt's first token, which has no score), and
/// character offsets that count the tokens' texts on from `offset` (which advances past them).
pub fn text_logprobs(
    prompt: &[engine::PromptLogprob],
    generated: &[engine::TokenLogprob],
    offset: &mut u32,
) -> wire::CompletionLogprobs {
    let mut out = wire::CompletionLogprobs::default();
    let tokens = prompt.iter().map(|p| (&p.token, p.logprob, &p.top)).chain(
        generated
            .iter()
            .map(|l| (&l.token, Some(l.logprob), &l.top)),
    );
    for (token, logprob, top) in tokens {
        let top = logprob.map(|lp| {
            let mut map: std::collections::BTreeMap<String, f32> = top
                .iter()
                .map(|(alt, _, alt_lp)| (alt.clone(), *alt_lp))
                .collect();
            map.insert(token.clone(), lp);
            map
        });
        out.tokens.push(token.clone());
        out.token_logprobs.push(logprob);
        out.top_logprobs.push(top);
        out.text_offset.push(*offset);
        *offset = offset.saturating_add(token.chars().count() as u32);
    }
    out
}

/// A message's text parts, joined by newlines (a `tool` message's result).
fn plain_text(content: &wire::MessageContent) -> String {
    match content {
        wire::MessageContent::Text(text) => text.clone(),
        wire::MessageContent::Parts(parts) => parts
            .iter()
            .filter_map(|p| match p {
                wire::ContentPart::Text { text } => Some(text.as_str()),
                wire::ContentPart::ImageUrl { .. } => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        wire::MessageContent::Null => String::new(),
    }
}

/// A schema compiled as its `strict` asks: every keyword enforced (an unsupported one refused),
/// or OpenAI's non-strict best effort (keywords that only narrow a value's range unenforced).
pub(crate) fn compile_schema(
    schema: &serde_json::Value,
    strict: bool,
) -> Result<engine::JsonSchema, String> {
    if strict {
        engine::JsonSchema::compile(schema)
    } else {
        engine::JsonSchema::compile_best_effort(schema)
    }
}

/// `response_format` for the engine: a `json_schema` is compiled here, and a schema it cannot
/// hold the output to is a 400 naming the keyword.
fn response_format(req: &wire::ChatCompletionRequest) -> Result<engine::ResponseFormat, ApiError> {
    if let Some(plan) = req.call_plan() {
        let schema = tool_requests::call_schema(&plan)?;
        return Ok(match plan.mode {
            wire::CallMode::Auto => engine::ResponseFormat::CallOrText(schema),
            wire::CallMode::Named | wire::CallMode::Required => {
                engine::ResponseFormat::JsonSchema(schema)
            }
        });
    }
    if req.wants_json_object() {
        return Ok(engine::ResponseFormat::JsonObject);
    }
    Ok(match req.json_schema() {
        None => engine::ResponseFormat::Text,
        // No schema: any JSON object, as OpenAI's API reads it.
        Some(None) => engine::ResponseFormat::JsonObject,
        Some(Some(schema)) => engine::ResponseFormat::JsonSchema(
            compile_schema(schema, req.json_schema_is_strict()).map_err(|message| {
                wire::RequestError::InvalidValue {
                    param: "response_format.json_schema.schema".into(),
                    message: format!("unsupported JSON Schema: {message}"),
                }
            })?,
        ),
    })
}
