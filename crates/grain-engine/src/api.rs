//! The contract between the engine and its callers (the HTTP server, the benchmark).
//!
//! Everything here is plain data: the server builds a [`ChatRequest`] after validating JSON, hands it
//! to [`crate::EngineHandle::generate`], and reads [`Event`]s back from a
//! [`crate::GenerationStream`]. No type here knows about tensors or tokio.

use serde::{Deserialize, Serialize};

/// A chat completion request, already validated against the wire format by the server.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// Unique id, used in logs and echoed in responses.
    pub request_id: String,
    pub messages: Vec<Message>,
    /// `/v1/completions`: the whole prompt, as text tokenized as it is or as token ids (no chat
    /// template, no images). `messages` is then empty.
    pub raw_prompt: Option<RawPrompt>,
    pub params: GenerationParams,
    /// Request-level granularity (the `granularity` extension field). Per-image `detail` is applied
    /// only when this is [`GranularityChoice::Auto`].
    pub granularity: GranularityChoice,
}

/// A `/v1/completions` prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawPrompt {
    /// Tokenized as sent (the tokenizer adds BOS as it is configured to).
    Text(String),
    /// Token ids, used as they are; the preprocessor checks them against the vocabulary.
    Ids(Vec<u32>),
}

impl From<&str> for RawPrompt {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<String> for RawPrompt {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    /// Raw encoded image bytes (PNG, JPEG, ...), already fetched or base64-decoded by the server.
    Image {
        data: Vec<u8>,
        detail: Detail,
    },
}

/// OpenAI's `image_url.detail`: `low` → the coarsest granularity, `high` → the finest,
/// `auto` → the router (or the default granularity for checkpoints without a router).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Detail {
    #[default]
    Auto,
    Low,
    High,
}

/// The request-level granularity knob: `"auto"` or one of the model's candidate token counts per crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GranularityChoice {
    #[default]
    Auto,
    Fixed(u32),
}

/// Sampling and stopping knobs, with OpenAI's meaning and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// `None` → the engine's `default_max_tokens`; always clamped to the context left after the prompt.
    /// `Some(0)` generates nothing: the prompt is only evaluated (with `prompt_logprobs`, scored).
    pub max_tokens: Option<u32>,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: Option<u32>,
    /// Same seed and same request → same output. Each of the `n` choices derives its own stream.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// Number of choices (sibling sequences sharing the prompt).
    pub n: u32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// HF's and vLLM's multiplicative penalty (1 = off) on every token already in the prompt or
    /// the choice: a positive logit is divided by it, a negative one multiplied.
    pub repetition_penalty: f32,
    /// vLLM's `min_p` (0 = off): after temperature, tokens less likely than `min_p` times the
    /// most likely one are not drawn.
    pub min_p: f32,
    pub logprobs: bool,
    /// How many alternatives per token (0..=20); only meaningful with `logprobs`.
    pub top_logprobs: u32,
    /// OpenAI's `logit_bias`: `(token id, bias in [-100, 100])`, added to the logits before
    /// anything else (-100 bans a token in practice, +100 all but forces it).
    pub logit_bias: Vec<(u32, f32)>,
    /// vLLM's extensions: never end at EOS (`ignore_eos`), or not before `min_tokens` tokens of
    /// a choice. The EOS tokens are masked out of sampling until then; stop strings still apply.
    pub ignore_eos: bool,
    pub min_tokens: u32,
    /// vLLM's `stop_token_ids`: a choice ends (`stop`) after sampling one of these; the token is
    /// part of the output (its text is empty when it is a special token). Masked out, like EOS,
    /// before `min_tokens` (not by `ignore_eos`).
    pub stop_token_ids: Vec<u32>,
    /// `Some(k)`: also score the prompt. Every prompt token after the first gets its
    /// log-probability under the model (raw logits: no penalty, bias or temperature) and the `k`
    /// most likely alternatives, in one [`Event::PromptLogprobs`] per choice before its first
    /// token (`echo` with `logprobs` on `/v1/completions`). Text-only prompts; such requests skip
    /// the prefix cache, since a cached position has no logits.
    pub prompt_logprobs: Option<u32>,
    /// OpenAI's `response_format`: free text, one JSON object, or one document of a JSON
    /// Schema (every token is constrained to continue it, and the choice ends when it is
    /// complete).
    pub response_format: ResponseFormat,
}

/// The shape a choice's text must take.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ResponseFormat {
    #[default]
    Text,
    /// `{"type": "json_object"}`: one JSON object (RFC 8259), nothing after it.
    JsonObject,
    /// `{"type": "json_schema"}`: one JSON document the schema accepts, nothing after it
    /// ([`crate::JsonSchema`] says which schemas compile).
    JsonSchema(crate::JsonSchema),
    /// `tool_choice: "auto"`: a document of the schema (the tools' call envelope) when the text
    /// opens with `{` after any JSON whitespace, free text when it opens with anything else.
    CallOrText(crate::JsonSchema),
}

impl ResponseFormat {
    /// Whether the text is held to JSON (an object or a schema's document), or may be (a call).
    pub fn is_json(&self) -> bool {
        !matches!(self, ResponseFormat::Text)
    }
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_tokens: None,
            temperature: 1.0,
            top_p: 1.0,
            top_k: None,
            seed: None,
            stop: Vec::new(),
            n: 1,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            min_p: 0.0,
            logprobs: false,
            top_logprobs: 0,
            logit_bias: Vec::new(),
            ignore_eos: false,
            min_tokens: 0,
            stop_token_ids: Vec::new(),
            prompt_logprobs: None,
            response_format: ResponseFormat::Text,
        }
    }
}

/// What `GET /v1/models` and the usage block need to know about the served model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    /// Maximum positions (prompt + completion) per sequence.
    pub context_length: u32,
    /// Candidate visual tokens per crop, ascending (e.g. `[36, 72, 144, 288, 576]`).
    pub granularities: Vec<u32>,
    pub has_router: bool,
    /// Unix seconds.
    pub created: u64,
}

/// One item of a generation stream. `Done` or `Error` is always the last event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New tokens for choice `index`. `text` may be empty while text is held back (an incomplete
    /// UTF-8 character or a possible prefix of a stop string); `token_ids` and `logprobs` are never
    /// held back. The EOS token is counted in usage but never appears here.
    Delta {
        index: u32,
        text: String,
        token_ids: Vec<u32>,
        logprobs: Vec<TokenLogprob>,
    },
    /// The prompt's tokens and scores for choice `index` (only with `prompt_logprobs`), before
    /// any `Delta` of that choice: one entry per prompt token.
    PromptLogprobs {
        index: u32,
        tokens: Vec<PromptLogprob>,
    },
    Finished {
        index: u32,
        reason: FinishReason,
    },
    Done {
        usage: Usage,
    },
    Error(EngineError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` or the context length.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Positions the prompt occupies: text tokens + visual tokens.
    pub prompt_tokens: u32,
    /// Leading prompt positions whose K/V came from the prefix cache instead of being computed
    /// (the most any of the request's choices took).
    #[serde(default)]
    pub cached_tokens: u32,
    /// Summed over all choices, EOS included.
    pub completion_tokens: u32,
    /// Visual tokens actually used (sum over images, at the chosen granularity).
    pub visual_tokens: u32,
    /// Visual tokens the finest granularity would have cost.
    pub visual_tokens_full: u32,
    /// One entry per image, in prompt order.
    pub images: Vec<ImageUsage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUsage {
    /// Tokens per crop chosen for this image.
    pub granularity: u32,
    pub source: GranularitySource,
}

/// Who picked an image's granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GranularitySource {
    Router,
    Detail,
    Request,
    Default,
    /// The load-adaptive ceiling lowered the choice (see [`crate::controller`]).
    Ceiling,
}

impl GranularitySource {
    pub fn as_str(self) -> &'static str {
        match self {
            GranularitySource::Router => "router",
            GranularitySource::Detail => "detail",
            GranularitySource::Request => "request",
            GranularitySource::Default => "default",
            GranularitySource::Ceiling => "ceiling",
        }
    }
}

/// Log-probability of one sampled token and its top alternatives, OpenAI style.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// `(token, bytes, logprob)`, most likely first; `top_logprobs` entries.
    pub top: Vec<(String, Vec<u8>, f32)>,
}

/// One prompt token and the log-probability the model gave it after the tokens before it.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLogprob {
    pub id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    /// `None` for the first token: nothing precedes it.
    pub logprob: Option<f32>,
    /// `(token, bytes, logprob)`, most likely first; empty for the first token.
    pub top: Vec<(String, Vec<u8>, f32)>,
}

/// Engine queue and cache occupancy, for `/metrics` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Sequences being computed (a request with `n` choices counts `n`).
    pub running: usize,
    /// Sequences admitted but waiting for a slot or KV blocks (including preempted ones).
    pub waiting: usize,
    /// Requests preprocessed and handed to the scheduler thread but not yet picked up.
    pub queued: usize,
    /// Requests accepted and not yet finished (preprocessing, queued, running or draining events).
    pub in_flight: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    /// Preemptions since start (monotonic).
    pub preemptions: u64,
}

/// Every way a request can fail inside the engine. The server maps each variant to an HTTP status
/// and OpenAI error type in one exhaustive match.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    #[error("image {index}: {message}")]
    InvalidImage { index: usize, message: String },
    #[error(
        "this model's maximum context length is {max} tokens, but the prompt needs {prompt_tokens} tokens"
    )]
    ContextLengthExceeded { prompt_tokens: usize, max: usize },
    #[error("the engine is overloaded, retry in {retry_after_s} s")]
    Overloaded { retry_after_s: u32 },
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("the model is not ready")]
    NotReady,
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        EngineError::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }
}
