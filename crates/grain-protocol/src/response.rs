//! Response side: completion, streaming chunk, usage (with Grain's visual-token extension),
//! log-probabilities and the models list.

use serde::{Deserialize, Serialize};

use crate::request::Role;
use crate::tools::{FunctionCall, ToolCall, ToolCallDelta};

/// `object: "chat.completion"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
}

impl ChatCompletionResponse {
    pub const OBJECT: &'static str = "chat.completion";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    /// `null` unless the request asked for log-probabilities.
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: FinishReason,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: Role,
    /// `null` when the message is a tool call.
    pub content: Option<String>,
    /// Always `null`: Grain never refuses on policy grounds. Present because OpenAI sends it.
    #[serde(default)]
    pub refusal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

impl AssistantMessage {
    pub fn new(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: Some(content.into()),
            refusal: None,
            tool_calls: None,
        }
    }

    /// A message that calls one function.
    pub fn tool_call(id: String, name: impl Into<String>, arguments: String) -> Self {
        Self {
            role: Role::Assistant,
            content: None,
            refusal: None,
            tool_calls: Some(vec![ToolCall {
                id,
                kind: "function".into(),
                function: FunctionCall {
                    name: name.into(),
                    arguments,
                },
            }]),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// End-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// The message is a tool call (`tool_choice: "required"`).
    #[serde(rename = "tool_calls")]
    ToolCalls,
}

/// `object: "chat.completion.chunk"`. Every chunk of one stream carries the same `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    /// Only on the final chunk (with `choices: []`) when `stream_options.include_usage` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
}

impl ChatCompletionChunk {
    pub const OBJECT: &'static str = "chat.completion.chunk";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: Option<FinishReason>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Delta {
    /// Set on the first chunk of each choice only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// Token accounting. `total_tokens = prompt_tokens + completion_tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// OpenAI's `prompt_tokens_details` with Grain's visual-token extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// OpenAI field: leading prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: u32,
    /// Visual tokens in the prompt at the granularity actually used.
    pub visual_tokens: u32,
    /// Visual tokens the same images would have cost at the finest granularity (576 per crop).
    pub visual_tokens_full: u32,
    /// Granularity (visual tokens per crop) chosen for each image, in prompt order.
    pub granularity: Vec<u32>,
    /// Who chose each image's granularity, in prompt order.
    pub granularity_source: Vec<GranularitySource>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GranularitySource {
    /// The model's granularity router.
    Router,
    /// The image part's `detail` (`low` / `high`).
    Detail,
    /// The request's `granularity` field.
    Request,
    /// The server's configured default policy.
    Default,
    /// The load-adaptive granularity ceiling lowered the choice (the server was busy).
    Ceiling,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceLogprobs {
    pub content: Vec<TokenLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// UTF-8 bytes of the token; a token may be a fragment of a multi-byte character.
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelObject>,
}

impl ModelList {
    pub fn new(data: Vec<ModelObject>) -> Self {
        Self {
            object: "list".to_owned(),
            data,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelObject {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// Extension: the model's context length in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u32>,
    /// Extension: the candidate granularities (visual tokens per crop).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub granularities: Vec<u32>,
    /// Extension: whether the model has a granularity router (`detail: auto` uses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_router: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chunk_without_usage_omits_the_field_and_role_is_lowercase() {
        let chunk = ChatCompletionChunk {
            id: "chatcmpl-1".into(),
            object: ChatCompletionChunk::OBJECT.into(),
            created: 7,
            model: "m".into(),
            choices: vec![ChunkChoice {
                index: 0,
                delta: Delta {
                    role: Some(Role::Assistant),
                    content: Some(String::new()),
                    tool_calls: None,
                },
                logprobs: None,
                finish_reason: None,
            }],
            usage: None,
            system_fingerprint: None,
        };
        assert_eq!(
            serde_json::to_value(&chunk).unwrap(),
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                "logprobs": null, "finish_reason": null}]})
        );
    }

    #[test]
    fn usage_extension_serializes_per_image_granularity() {
        let usage = Usage {
            prompt_tokens: 300,
            completion_tokens: 5,
            total_tokens: 305,
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: 0,
                visual_tokens: 180,
                visual_tokens_full: 1152,
                granularity: vec![144, 36],
                granularity_source: vec![GranularitySource::Router, GranularitySource::Detail],
            }),
        };
        assert_eq!(
            serde_json::to_value(&usage).unwrap(),
            json!({"prompt_tokens": 300, "completion_tokens": 5, "total_tokens": 305,
                   "prompt_tokens_details": {"cached_tokens": 0, "visual_tokens": 180,
                   "visual_tokens_full": 1152, "granularity": [144, 36],
                   "granularity_source": ["router", "detail"]}})
        );
    }
}
