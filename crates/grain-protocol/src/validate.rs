//! Body → [`ChatCompletionRequest`], with one precise error per failure.
//!
//! Three passes, each giving better messages than the next could:
//! 1. top-level keys: unknown and unsupported fields are named; each known field's JSON type is
//!    checked here ("expected a number, but got a string") because serde's messages
//!    ("invalid type: string \"x\", expected f64") are written for programmers;
//! 2. serde (through `serde_path_to_error`) for the nested message structure, so a bad part is
//!    reported with its path (`messages[0].content[1]`);
//! 3. ranges and cross-field rules on the typed request.

use serde_json::{Map, Value};

use crate::error::RequestError;
use crate::request::{ChatCompletionRequest, ContentPart, MessageContent, Role, StopSequences};
use crate::sampling::{LogitBias, SamplingFields};

/// Server-configurable bounds on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest `n` (choices per request).
    pub max_n: u32,
    /// Most `stop` sequences (OpenAI allows 4).
    pub max_stop_sequences: usize,
    /// Largest `top_logprobs` (OpenAI allows 20).
    pub max_top_logprobs: u32,
    /// Most images across all messages of one request.
    pub max_images: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_n: 16,
            max_stop_sequences: 4,
            max_top_logprobs: 20,
            max_images: 8,
        }
    }
}

/// The JSON type a top-level field must have.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    String,
    Array,
    Object,
    Bool,
    Number,
    Integer,
    StringOrArray,
    StringOrInteger,
    StringOrObject,
    /// `/v1/completions`' `prompt`: a string or an array (whose items `completion.rs` checks).
    StringOrAnyArray,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::String => "a string",
            Kind::Array => "an array",
            Kind::Object => "an object",
            Kind::Bool => "a boolean",
            Kind::Number => "a number",
            Kind::Integer => "an integer",
            Kind::StringOrArray => "a string or an array of strings",
            Kind::StringOrInteger => "\"auto\" or an integer",
            Kind::StringOrObject => "a string or an object",
            Kind::StringOrAnyArray => "a string or an array of strings",
        }
    }

    fn accepts(self, value: &Value) -> bool {
        match (self, value) {
            (Kind::String, Value::String(_)) => true,
            (Kind::Array, Value::Array(_)) => true,
            (Kind::Object, Value::Object(_)) => true,
            (Kind::Bool, Value::Bool(_)) => true,
            (Kind::Number, Value::Number(_)) => true,
            (Kind::Integer, Value::Number(n)) => n.is_i64() || n.is_u64(),
            (Kind::StringOrArray, Value::String(_)) => true,
            (Kind::StringOrArray, Value::Array(items)) => items.iter().all(Value::is_string),
            (Kind::StringOrInteger, Value::String(_)) => true,
            (Kind::StringOrInteger, Value::Number(n)) => n.is_i64() || n.is_u64(),
            (Kind::StringOrAnyArray, Value::String(_) | Value::Array(_)) => true,
            (Kind::StringOrObject, Value::String(_) | Value::Object(_)) => true,
            _ => false,
        }
    }
}

/// A top-level field: its name, JSON type and whether it is required.
pub(crate) type Field = (&'static str, Kind, bool);

/// Every supported top-level field with its JSON type and whether it is required.
const SUPPORTED: &[Field] = &[
    ("model", Kind::String, true),
    ("messages", Kind::Array, true),
    ("max_tokens", Kind::Integer, false),
    ("max_completion_tokens", Kind::Integer, false),
    ("temperature", Kind::Number, false),
    ("top_p", Kind::Number, false),
    ("top_k", Kind::Integer, false),
    ("seed", Kind::Integer, false),
    ("stop", Kind::StringOrArray, false),
    ("n", Kind::Integer, false),
    ("presence_penalty", Kind::Number, false),
    ("frequency_penalty", Kind::Number, false),
    ("logprobs", Kind::Bool, false),
    ("top_logprobs", Kind::Integer, false),
    ("stream", Kind::Bool, false),
    ("stream_options", Kind::Object, false),
    ("user", Kind::String, false),
    ("safety_identifier", Kind::String, false),
    ("metadata", Kind::Object, false),
    ("store", Kind::Bool, false),
    ("service_tier", Kind::String, false),
    ("prompt_cache_key", Kind::String, false),
    ("granularity", Kind::StringOrInteger, false),
    ("logit_bias", Kind::Object, false),
    ("ignore_eos", Kind::Bool, false),
    ("min_tokens", Kind::Integer, false),
    ("repetition_penalty", Kind::Number, false),
    ("min_p", Kind::Number, false),
    ("stop_token_ids", Kind::Array, false),
    ("response_format", Kind::Object, false),
    ("tools", Kind::Array, false),
    ("tool_choice", Kind::StringOrObject, false),
    ("parallel_tool_calls", Kind::Bool, false),
];

/// OpenAI chat-completions fields that Grain does not implement, with a hint for the message.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "functions",
        " (the deprecated function calling; use tools and tool_choice)",
    ),
    (
        "function_call",
        " (the deprecated function calling; use tools and tool_choice)",
    ),
    ("audio", " (audio output is not implemented)"),
    ("modalities", " (only text output is implemented)"),
    ("prediction", ""),
    ("reasoning_effort", ""),
    ("web_search_options", ""),
    ("verbosity", ""),
    ("best_of", ""),
    ("echo", ""),
    ("suffix", ""),
];

/// Parses and validates a chat-completions body.
pub fn parse_chat_request(
    body: &[u8],
    limits: &RequestLimits,
) -> Result<ChatCompletionRequest, RequestError> {
    let request: ChatCompletionRequest = parse_fields(body, SUPPORTED, UNSUPPORTED)?;
    validate(&request, limits)?;
    Ok(request)
}

/// Passes 1 and 2 for any request type: the body as a JSON object whose top-level keys are
/// checked against `supported` and `unsupported`, then deserialized into `T`.
pub(crate) fn parse_fields<T: serde::de::DeserializeOwned>(
    body: &[u8],
    supported: &[Field],
    unsupported: &[(&str, &'static str)],
) -> Result<T, RequestError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| RequestError::MalformedJson(e.to_string()))?;
    let Value::Object(mut map) = value else {
        return Err(RequestError::NotAnObject {
            got: json_kind(&value),
        });
    };
    check_top_level(&mut map, supported, unsupported)?;
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
        let param = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde names the unknown key in the path; report it like a top-level unknown field.
        if message.starts_with("unknown field") {
            RequestError::UnknownField { param }
        } else {
            RequestError::invalid_value(param, message)
        }
    })
}

fn check_top_level(
    map: &mut Map<String, Value>,
    supported: &[Field],
    unsupported: &[(&str, &'static str)],
) -> Result<(), RequestError> {
    let mut null_unsupported = Vec::new();
    for (key, value) in map.iter() {
        if let Some((_, kind, required)) = supported.iter().find(|(name, ..)| name == key) {
            if value.is_null() && !required {
                continue;
            }
            if !kind.accepts(value) {
                return Err(RequestError::InvalidType {
                    param: key.clone(),
                    expected: kind.describe(),
                    got: json_kind(value),
                });
            }
            if let (Kind::Integer, Value::Number(n)) = (kind, value) {
                if !n.is_i64() {
                    return Err(RequestError::invalid_value(
                        key.as_str(),
                        format!("{n} is too large"),
                    ));
                }
            }
        } else if let Some((_, hint)) = unsupported.iter().find(|(name, _)| name == key) {
            if !value.is_null() {
                return Err(RequestError::UnsupportedField {
                    param: key.clone(),
                    hint,
                });
            }
            null_unsupported.push(key.clone());
        } else {
            return Err(RequestError::UnknownField { param: key.clone() });
        }
    }
    for key in null_unsupported {
        map.remove(&key);
    }
    for (name, _, required) in supported {
        if *required && !map.contains_key(*name) {
            return Err(RequestError::MissingField {
                param: (*name).to_owned(),
            });
        }
    }
    Ok(())
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn validate(req: &ChatCompletionRequest, limits: &RequestLimits) -> Result<(), RequestError> {
    if req.model.trim().is_empty() {
        return Err(RequestError::invalid_value("model", "must not be empty"));
    }
    validate_messages(req, limits)?;
    for (param, value) in [
        ("max_tokens", req.max_tokens),
        ("max_completion_tokens", req.max_completion_tokens),
    ] {
        check_max_tokens(param, value)?;
    }
    if let (Some(a), Some(b)) = (req.max_tokens, req.max_completion_tokens) {
        if a != b {
            return Err(RequestError::invalid_value(
                "max_tokens",
                format!("conflicts with max_completion_tokens ({a} != {b}); set only one"),
            ));
        }
    }
    let max_tokens = req.max_completion_tokens.or(req.max_tokens);
    validate_sampling(&req.sampling(), max_tokens, limits)?;
    crate::response_format::validate_response_format(req)?;
    crate::tools::validate_tools(req)?;
    crate::bookkeeping::validate_bookkeeping(req)?;
    if let Some(t) = req.top_logprobs {
        if t < 0 || t > i64::from(limits.max_top_logprobs) {
            return Err(RequestError::invalid_value(
                "top_logprobs",
                format!("must be between 0 and {}, got {t}", limits.max_top_logprobs),
            ));
        }
        if t > 0 && !req.wants_logprobs() {
            return Err(RequestError::invalid_value(
                "top_logprobs",
                "requires 'logprobs' to be true",
            ));
        }
    }
    Ok(())
}

/// `max_tokens` (or its newer name) in `1 ..= u32::MAX` when present.
pub(crate) fn check_max_tokens(param: &str, value: Option<i64>) -> Result<(), RequestError> {
    if let Some(v) = value {
        if v < 1 {
            return Err(RequestError::invalid_value(
                param,
                format!("must be at least 1, got {v}"),
            ));
        }
        if v > i64::from(u32::MAX) {
            return Err(RequestError::invalid_value(
                param,
                format!("must be at most {}, got {v}", u32::MAX),
            ));
        }
    }
    Ok(())
}

/// Ranges and cross-field rules of the fields chat and text completions share; `max_tokens` is
/// what the request asks for, if anything (`min_tokens` may not exceed it).
pub(crate) fn validate_sampling(
    s: &SamplingFields<'_>,
    max_tokens: Option<i64>,
    limits: &RequestLimits,
) -> Result<(), RequestError> {
    check_range("temperature", s.temperature, 0.0, 2.0)?;
    if let Some(p) = s.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(RequestError::invalid_value(
                "top_p",
                format!("must be greater than 0 and at most 1, got {p}"),
            ));
        }
    }
    if let Some(k) = s.top_k {
        if k < 1 || k > i64::from(u32::MAX) {
            return Err(RequestError::invalid_value(
                "top_k",
                format!("must be at least 1 (omit it to disable top-k), got {k}"),
            ));
        }
    }
    check_range("presence_penalty", s.presence_penalty, -2.0, 2.0)?;
    check_range("frequency_penalty", s.frequency_penalty, -2.0, 2.0)?;
    if let Some(p) = s.repetition_penalty {
        if !(p > 0.0 && p <= 10.0) {
            return Err(RequestError::invalid_value(
                "repetition_penalty",
                format!("must be greater than 0 and at most 10 (1 is off), got {p}"),
            ));
        }
    }
    check_range("min_p", s.min_p, 0.0, 1.0)?;
    if let Some(ids) = s.stop_token_ids {
        if ids.len() > MAX_STOP_TOKEN_IDS {
            return Err(RequestError::invalid_value(
                "stop_token_ids",
                format!("at most {MAX_STOP_TOKEN_IDS} token ids, got {}", ids.len()),
            ));
        }
        if let Some(bad) = ids.iter().find(|&&id| u32::try_from(id).is_err()) {
            return Err(RequestError::invalid_value(
                "stop_token_ids",
                format!("token ids are integers from 0 to {}, got {bad}", u32::MAX),
            ));
        }
    }
    if let Some(n) = s.n {
        if n < 1 || n > i64::from(limits.max_n) {
            return Err(RequestError::invalid_value(
                "n",
                format!("must be between 1 and {}, got {n}", limits.max_n),
            ));
        }
    }
    validate_stop(s.stop, limits)?;
    if s.stream_options.is_some() && !s.is_stream() {
        return Err(RequestError::invalid_value(
            "stream_options",
            "is only allowed when 'stream' is true",
        ));
    }
    check_logit_bias(s.logit_bias)?;
    check_min_tokens(s.min_tokens, max_tokens)
}

/// `min_tokens` in `0 ..= max_tokens` (when that is set).
fn check_min_tokens(min: Option<i64>, max: Option<i64>) -> Result<(), RequestError> {
    let Some(min) = min else {
        return Ok(());
    };
    if min < 0 || min > i64::from(u32::MAX) {
        return Err(RequestError::invalid_value(
            "min_tokens",
            format!("must be between 0 and {}, got {min}", u32::MAX),
        ));
    }
    if let Some(max) = max.filter(|&max| min > max) {
        return Err(RequestError::invalid_value(
            "min_tokens",
            format!("must not be more than max_tokens ({max}), got {min}"),
        ));
    }
    Ok(())
}

/// Most `stop_token_ids` (vLLM documents no bound; one keeps the per-token check cheap).
const MAX_STOP_TOKEN_IDS: usize = 64;

/// Most `logit_bias` entries (OpenAI documents no bound; one keeps a request's work bounded).
pub const MAX_LOGIT_BIAS: usize = 1024;

/// `logit_bias` keys are token ids (non-negative integers written as strings) and values are in
/// [-100, 100]. Whether an id exists in the vocabulary is the model's question.
fn check_logit_bias(bias: Option<&LogitBias>) -> Result<(), RequestError> {
    let Some(bias) = bias else {
        return Ok(());
    };
    if bias.len() > MAX_LOGIT_BIAS {
        return Err(RequestError::invalid_value(
            "logit_bias",
            format!(
                "at most {MAX_LOGIT_BIAS} entries are allowed, got {}",
                bias.len()
            ),
        ));
    }
    for (key, value) in bias {
        if key.parse::<u32>().is_err() {
            return Err(RequestError::invalid_value(
                "logit_bias",
                format!("keys must be token ids (integers written as strings), got {key:?}"),
            ));
        }
        if !(-100.0..=100.0).contains(value) {
            return Err(RequestError::invalid_value(
                "logit_bias",
                format!("the bias of token {key} must be between -100 and 100, got {value}"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_range(
    param: &str,
    value: Option<f64>,
    lo: f64,
    hi: f64,
) -> Result<(), RequestError> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => Err(RequestError::invalid_value(
            param,
            format!("must be between {lo} and {hi}, got {v}"),
        )),
        _ => Ok(()),
    }
}

pub(crate) fn validate_stop(
    stop: Option<&StopSequences>,
    limits: &RequestLimits,
) -> Result<(), RequestError> {
    let sequences: &[String] = match stop {
        None => return Ok(()),
        Some(StopSequences::One(s)) => std::slice::from_ref(s),
        Some(StopSequences::Many(v)) => v,
    };
    if sequences.len() > limits.max_stop_sequences {
        return Err(RequestError::invalid_value(
            "stop",
            format!(
                "at most {} stop sequences are allowed, got {}",
                limits.max_stop_sequences,
                sequences.len()
            ),
        ));
    }
    if sequences.iter().any(String::is_empty) {
        return Err(RequestError::invalid_value(
            "stop",
            "stop sequences must not be empty strings",
        ));
    }
    Ok(())
}

fn validate_messages(
    req: &ChatCompletionRequest,
    limits: &RequestLimits,
) -> Result<(), RequestError> {
    if req.messages.is_empty() {
        return Err(RequestError::invalid_value(
            "messages",
            "must contain at least one message",
        ));
    }
    let mut images = 0usize;
    crate::tools::validate_history(req)?;
    for (i, msg) in req.messages.iter().enumerate() {
        if msg.role == Role::Function {
            return Err(RequestError::invalid_value(
                format!("messages[{i}].role"),
                "role 'function' (deprecated) is not supported: send the result as a 'tool' \
                 message with its tool_call_id",
            ));
        }
        for (field, value) in [
            ("function_call", &msg.function_call),
            ("audio", &msg.audio),
            ("refusal", &msg.refusal),
            ("annotations", &msg.annotations),
        ] {
            if value.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(RequestError::UnsupportedField {
                    param: format!("messages[{i}].{field}"),
                    hint: "",
                });
            }
        }
        match &msg.content {
            // An assistant message that only called tools.
            MessageContent::Null if !msg.past_calls().is_empty() => {}
            MessageContent::Null => {
                return Err(RequestError::invalid_value(
                    format!("messages[{i}].content"),
                    "must be a string or an array of content parts, got null",
                ));
            }
            MessageContent::Text(_) => {}
            MessageContent::Parts(parts) => {
                if parts.is_empty() {
                    return Err(RequestError::invalid_value(
                        format!("messages[{i}].content"),
                        "must contain at least one content part",
                    ));
                }
                for (j, part) in parts.iter().enumerate() {
                    let ContentPart::ImageUrl { image_url } = part else {
                        continue;
                    };
                    if msg.role != Role::User {
                        return Err(RequestError::invalid_value(
                            format!("messages[{i}].content[{j}]"),
                            format!(
                                "image_url parts are only allowed in 'user' messages, not '{}'",
                                msg.role.as_str()
                            ),
                        ));
                    }
                    if image_url.url.trim().is_empty() {
                        return Err(RequestError::invalid_value(
                            format!("messages[{i}].content[{j}].image_url.url"),
                            "must not be empty",
                        ));
                    }
                    images += 1;
                }
            }
        }
    }
    if images > limits.max_images {
        return Err(RequestError::invalid_value(
            "messages",
            format!(
                "at most {} images per request are allowed, got {images}",
                limits.max_images
            ),
        ));
    }
    Ok(())
}
