//! OpenAI chat-completions wire types for Grain, and the validation that turns a request body into a
//! typed, range-checked [`ChatCompletionRequest`]; the same for the legacy text completions
//! ([`CompletionRequest`], `completion.rs`).
//!
//! This crate is deliberately transport-free (serde only): the server parses bodies with
//! [`parse_chat_request`], clients (the bench tool, tests) build and read the same types.
//!
//! # Request fields
//! Supported: `model`, `messages` (roles `system`, `developer` (treated as `system`), `user`,
//! `assistant`; content a string or `text` / `image_url` parts), `max_tokens`,
//! `max_completion_tokens`, `temperature`, `top_p`, `seed`, `stop`, `n`, `presence_penalty`,
//! `frequency_penalty`, `logprobs`, `top_logprobs`, `logit_bias`, `stream`,
//! `stream_options.include_usage`, `user`, `response_format` (`text`, `json_object` or `json_schema`),
//! `tools` with a forced `tool_choice` (see `tools.rs`), `parallel_tool_calls`, and the
//! extensions `top_k`, `granularity` (`"auto"` or a candidate token count), `ignore_eos`,
//! `min_tokens`, `repetition_penalty`, `min_p` and `stop_token_ids` (vLLM's).
//!
//! Every other top-level field is rejected with a 400 that names it: OpenAI fields that Grain does
//! not implement (`audio`, `functions`, ...) get an "unsupported parameter"
//! error, anything else an "unrecognized argument" error. Silently ignoring a field would make a
//! client believe that, say, JSON mode or a logit bias was applied. The one leniency: an
//! unsupported OpenAI field whose value is `null` is treated as absent, because several client
//! libraries send explicit nulls for every field they know.

#![forbid(unsafe_code)]

mod bookkeeping;
mod completion;
mod error;
mod request;
mod response;
mod response_format;
mod sampling;
mod tokenize;
mod tools;
mod validate;

pub use completion::{
    parse_completion_request, CompletionChoice, CompletionLogprobs, CompletionRequest,
    CompletionResponse, Prompt, DEFAULT_COMPLETION_MAX_TOKENS,
};
pub use error::{ErrorBody, ErrorDetail, RequestError};
pub use request::{
    ChatCompletionRequest, ChatMessage, ContentPart, Detail, GranularityRequest, ImageUrl,
    MessageContent, ResponseFormat, Role, StopSequences, StreamOptions,
};
pub use response::{
    AssistantMessage, ChatChoice, ChatCompletionChunk, ChatCompletionResponse, ChoiceLogprobs,
    ChunkChoice, Delta, FinishReason, GranularitySource, ModelList, ModelObject,
    PromptTokensDetails, TokenLogprob, TopLogprob, Usage,
};
pub use sampling::{LogitBias, SamplingFields};
pub use tokenize::{
    parse_detokenize_request, parse_tokenize_request, DetokenizeRequest, DetokenizeResponse,
    TokenizeInput, TokenizeRequest, TokenizeResponse, MAX_DETOKENIZE_TOKENS,
};
pub use tools::{
    CallMode, CallPlan, FunctionCall, FunctionCallDelta, OfferedTool, PastCall, ToolCall,
    ToolCallDelta, MAX_TOOLS,
};
pub use validate::{parse_chat_request, RequestLimits};
