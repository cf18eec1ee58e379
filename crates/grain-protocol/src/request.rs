//! Request side of `POST /v1/chat/completions`.
//!
//! Integer fields are `i64` and float fields `f64` on the wire so that an out-of-range value
//! (`"n": -1`, `"max_tokens": 1e12`) reaches validation and gets a message about its range,
//! instead of a serde "expected u32" error. Typed accessors on [`ChatCompletionRequest`] and its
//! [`SamplingFields`] give the narrowed values once [`crate::parse_chat_request`] has checked them.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::sampling::{LogitBias, SamplingFields};

/// The body of a chat-completions request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Extension (not in OpenAI's API): sample among the `k` most likely tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopSequences>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `user`'s successor; like it, accepted and not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_identifier: Option<String>,
    /// Up to 16 string pairs for the caller's own bookkeeping (checked, not used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Only `false`: Grain keeps no completions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<bool>,
    /// `"auto"` or `"default"`: Grain has one tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
    /// A hint for routing to a cache; Grain's prefix cache keys on the prompt itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_cache_key: Option<String>,
    /// Extension: the visual granularity for every image of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granularity: Option<GranularityRequest>,
    /// Token id (as a string) → bias in [-100, 100], added to the logits before sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<LogitBias>,
    /// Extension (vLLM's): keep generating past EOS, up to `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
    /// Extension (vLLM's): no EOS before this many tokens per choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tokens: Option<i64>,
    /// Extension (vLLM's, HF's): multiplicative penalty on tokens already in the prompt or output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    /// Extension (vLLM's): drop tokens less likely than `min_p` times the most likely one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f64>,
    /// Extension (vLLM's): token ids that end a choice once sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_token_ids: Option<Vec<i64>>,
    /// `{"type": "text"}`, `{"type": "json_object"}` (JSON mode) or `{"type": "json_schema"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Function tools ([`crate::tools`]: a call is made only when `tool_choice` forces one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<serde_json::Value>,
    /// Accepted either way: a forced call is one call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
}

impl ChatCompletionRequest {
    /// A request with only the required fields set.
    pub fn new(model: impl Into<String>, messages: Vec<ChatMessage>) -> Self {
        Self {
            model: model.into(),
            messages,
            max_tokens: None,
            max_completion_tokens: None,
            temperature: None,
            top_p: None,
            top_k: None,
            seed: None,
            stop: None,
            n: None,
            presence_penalty: None,
            frequency_penalty: None,
            logprobs: None,
            top_logprobs: None,
            stream: None,
            stream_options: None,
            user: None,
            safety_identifier: None,
            metadata: None,
            store: None,
            service_tier: None,
            prompt_cache_key: None,
            granularity: None,
            logit_bias: None,
            ignore_eos: None,
            min_tokens: None,
            repetition_penalty: None,
            min_p: None,
            stop_token_ids: None,
            response_format: None,
            tools: None,
            tool_choice: None,
            parallel_tool_calls: None,
        }
    }

    /// `max_completion_tokens` (the current OpenAI name) or the legacy `max_tokens`.
    /// Validation guarantees both agree when both are present, and that the value is `>= 1`.
    pub fn max_new_tokens(&self) -> Option<u32> {
        self.max_completion_tokens
            .or(self.max_tokens)
            .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
    }

    /// The fields chat shares with text completions, with their typed accessors.
    pub fn sampling(&self) -> SamplingFields<'_> {
        SamplingFields {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            stop: self.stop.as_ref(),
            n: self.n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            stream: self.stream,
            stream_options: self.stream_options.as_ref(),
            logit_bias: self.logit_bias.as_ref(),
            ignore_eos: self.ignore_eos,
            min_tokens: self.min_tokens,
            repetition_penalty: self.repetition_penalty,
            min_p: self.min_p,
            stop_token_ids: self.stop_token_ids.as_ref(),
        }
    }

    /// Whether `response_format` asks for one JSON object.
    pub fn wants_json_object(&self) -> bool {
        self.response_format
            .as_ref()
            .is_some_and(|f| f.kind == ResponseFormat::JSON_OBJECT)
    }

    /// With `response_format` `json_schema`: the schema (`None` when the request gives none,
    /// which asks for any JSON object). Validation has checked its shape.
    pub fn json_schema(&self) -> Option<Option<&serde_json::Value>> {
        let f = self.response_format.as_ref()?;
        (f.kind == ResponseFormat::JSON_SCHEMA)
            .then(|| f.json_schema.as_ref().and_then(|s| s.get("schema")))
    }

    /// Whether `response_format.json_schema` says `strict: true` (OpenAI's default is false).
    pub fn json_schema_is_strict(&self) -> bool {
        self.response_format
            .as_ref()
            .and_then(|f| f.json_schema.as_ref())
            .and_then(|s| s.get("strict"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }

    pub fn wants_logprobs(&self) -> bool {
        self.logprobs.unwrap_or(false)
    }

    pub fn top_logprobs_or_default(&self) -> u32 {
        self.top_logprobs
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    /// OpenAI's newer name for system instructions; Grain treats it as `system`.
    Developer,
    User,
    Assistant,
    /// A tool's result, answering a call of the assistant message before it.
    Tool,
    /// Parsed so that the error can say the deprecated role is unsupported, rather than "unknown
    /// variant".
    Function,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Function => "function",
        }
    }
}

/// One message of the conversation.
///
/// `refusal`, `function_call`, `audio` and `annotations` are accepted only as `null`: clients that
/// append a previous response's message object to the history send them. `tool_calls` (assistant
/// messages) and `tool_call_id` (tool messages) carry earlier tool calls and their results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: Role,
    #[serde(default)]
    pub content: MessageContent,
    /// Participant name; accepted and ignored (the chat template has no slot for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_call: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Value>,
}

impl ChatMessage {
    pub fn new(role: Role, content: MessageContent) -> Self {
        Self {
            role,
            content,
            name: None,
            refusal: None,
            tool_calls: None,
            tool_call_id: None,
            function_call: None,
            audio: None,
            annotations: None,
        }
    }

    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self::new(role, MessageContent::Text(text.into()))
    }
}

/// A message's content: a plain string or a list of parts. `null` (allowed by OpenAI for
/// assistant messages carrying tool calls) deserializes to [`MessageContent::Null`] so that
/// validation can say what is wrong.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum MessageContent {
    #[default]
    Null,
    Text(String),
    Parts(Vec<ContentPart>),
}

impl Serialize for MessageContent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            MessageContent::Null => serializer.serialize_none(),
            MessageContent::Text(s) => serializer.serialize_str(s),
            MessageContent::Parts(parts) => parts.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for MessageContent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor;

        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = MessageContent;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(v))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MessageContent::Null)
            }

            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MessageContent::Null)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(part) = seq.next_element::<ContentPart>()? {
                    parts.push(part);
                }
                Ok(MessageContent::Parts(parts))
            }
        }

        deserializer.deserialize_any(ContentVisitor)
    }
}

/// One content part. Other OpenAI part types (`input_audio`, `file`, `refusal`) fail to parse
/// with serde's "unknown variant ..., expected `text` or `image_url`" message, which names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ContentPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageUrl {
    /// A `data:image/...;base64,...` URL, or `http(s)://` when the server allows fetching.
    pub url: String,
    #[serde(default)]
    pub detail: Detail,
}

/// OpenAI's image `detail`, which Grain maps to a visual granularity: `low` → the coarsest
/// candidate, `high` → the finest, `auto` → the router (or the server's default policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Detail {
    #[default]
    Auto,
    Low,
    High,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StopSequences {
    One(String),
    Many(Vec<String>),
}

/// OpenAI's `response_format`. Validation accepts `text` and `json_object`; `json_schema`
/// (structured outputs) is refused by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<serde_json::Value>,
}

impl ResponseFormat {
    pub const TEXT: &'static str = "text";
    pub const JSON_OBJECT: &'static str = "json_object";
    pub const JSON_SCHEMA: &'static str = "json_schema";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
}

/// The `granularity` extension: `"auto"` or a visual-token count per crop (e.g. `144`).
/// Whether the count is one of the served model's candidates is checked by the engine, which
/// knows the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GranularityRequest {
    Auto,
    Tokens(u32),
}

impl Serialize for GranularityRequest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            GranularityRequest::Auto => serializer.serialize_str("auto"),
            GranularityRequest::Tokens(n) => serializer.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for GranularityRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct GranularityVisitor;

        impl Visitor<'_> for GranularityVisitor {
            type Value = GranularityRequest;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"auto\" or a positive integer number of visual tokens")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "auto" {
                    return Ok(GranularityRequest::Auto);
                }
                // Accept "144" too: a string is what some clients put in `extra_body`.
                match v.parse::<u32>() {
                    Ok(n) if n > 0 => Ok(GranularityRequest::Tokens(n)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                match u32::try_from(v) {
                    Ok(n) if n > 0 => Ok(GranularityRequest::Tokens(n)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
        }

        deserializer.deserialize_any(GranularityVisitor)
    }
}
