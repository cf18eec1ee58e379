//! `POST /tokenize` and `POST /detokenize`, in vLLM's shapes: the token ids a prompt becomes, and
//! the text of token ids. They pair with `/v1/completions`' token-id prompts.
//!
//! `/tokenize` takes `prompt` (text, tokenized as `/v1/completions` tokenizes it) or `messages`
//! (chat messages, rendered with the chat template as `/v1/chat/completions` renders them; text
//! only: an image's tokens depend on its granularity), with the `tools` and `tool_choice` a chat
//! completion would send (the tools' part of the system prompt). `model` is optional, as in vLLM.
//! `/detokenize` takes `tokens`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::completion::{first_bad_token_id, token_ids};
use crate::error::RequestError;
use crate::request::{ChatCompletionRequest, ContentPart, MessageContent};
use crate::validate::{parse_chat_request, parse_fields, Field, Kind, RequestLimits};

/// Most token ids one `/detokenize` request may send.
pub const MAX_DETOKENIZE_TOKENS: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Value>,
    /// With `messages`: the tools as a chat completion sends them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
}

/// What to tokenize, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizeInput {
    Prompt(String),
    /// The messages, checked by chat's own rules (as the body of a chat completion).
    Chat(Box<ChatCompletionRequest>),
}

const TOKENIZE_FIELDS: &[Field] = &[
    ("model", Kind::String, false),
    ("prompt", Kind::String, false),
    ("messages", Kind::Array, false),
    ("tools", Kind::Array, false),
    ("tool_choice", Kind::StringOrObject, false),
];

/// Parses a `/tokenize` body: exactly one of `prompt` and `messages`; messages hold no images.
pub fn parse_tokenize_request(
    body: &[u8],
    limits: &RequestLimits,
) -> Result<(TokenizeRequest, TokenizeInput), RequestError> {
    let req: TokenizeRequest = parse_fields(body, TOKENIZE_FIELDS, &[])?;
    let input = match (&req.prompt, &req.messages) {
        (Some(p), None) => TokenizeInput::Prompt(p.clone()),
        (None, Some(messages)) => {
            let mut chat = json!({"model": "tokenize", "messages": messages});
            for (key, value) in [("tools", &req.tools), ("tool_choice", &req.tool_choice)] {
                if let Some(v) = value {
                    chat[key] = v.clone();
                }
            }
            let chat = chat.to_string();
            let chat = parse_chat_request(chat.as_bytes(), limits)?;
            for (i, m) in chat.messages.iter().enumerate() {
                if let MessageContent::Parts(parts) = &m.content {
                    if let Some(j) = parts
                        .iter()
                        .position(|p| matches!(p, ContentPart::ImageUrl { .. }))
                    {
                        return Err(RequestError::invalid_value(
                            format!("messages[{i}].content[{j}]"),
                            "images are not tokenized: their tokens depend on the granularity \
                             (a chat completion reports them in usage.prompt_tokens_details)",
                        ));
                    }
                }
            }
            TokenizeInput::Chat(Box::new(chat))
        }
        _ => {
            return Err(RequestError::invalid_value(
                "prompt",
                "send exactly one of 'prompt' (text) and 'messages' (chat messages)",
            ))
        }
    };
    if matches!(input, TokenizeInput::Prompt(_))
        && (req.tools.is_some() || req.tool_choice.is_some())
    {
        return Err(RequestError::invalid_value(
            "tools",
            "tools are rendered with 'messages' only",
        ));
    }
    Ok((req, input))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizeResponse {
    /// The number of token ids.
    pub count: usize,
    /// Most positions a sequence may have (prompt and completion).
    pub max_model_len: u32,
    pub tokens: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Checked by [`parse_detokenize_request`]: integers from 0 to `u32::MAX`.
    pub tokens: Vec<Value>,
}

impl DetokenizeRequest {
    /// The ids (validation guarantees each fits a `u32`).
    pub fn token_ids(&self) -> Vec<u32> {
        token_ids(&self.tokens)
    }
}

const DETOKENIZE_FIELDS: &[Field] = &[
    ("model", Kind::String, false),
    ("tokens", Kind::Array, true),
];

/// Parses a `/detokenize` body.
pub fn parse_detokenize_request(
    body: &[u8],
    _limits: &RequestLimits,
) -> Result<DetokenizeRequest, RequestError> {
    let req: DetokenizeRequest = parse_fields(body, DETOKENIZE_FIELDS, &[])?;
    if req.tokens.len() > MAX_DETOKENIZE_TOKENS {
        return Err(RequestError::invalid_value(
            "tokens",
            format!("at most {MAX_DETOKENIZE_TOKENS} token ids per request"),
        ));
    }
    if let Some((i, bad)) = first_bad_token_id(&req.tokens) {
        return Err(RequestError::invalid_value(
            "tokens",
            format!(
                "token ids must be integers from 0 to {}; token {i} is {bad}",
                u32::MAX
            ),
        ));
    }
    Ok(req)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenize(v: Value) -> Result<(TokenizeRequest, TokenizeInput), RequestError> {
        parse_tokenize_request(v.to_string().as_bytes(), &RequestLimits::default())
    }

    fn detokenize(v: Value) -> Result<DetokenizeRequest, RequestError> {
        parse_detokenize_request(v.to_string().as_bytes(), &RequestLimits::default())
    }

    #[test]
    fn a_prompt_or_messages_is_tokenized_and_model_is_optional() {
        let (req, input) = tokenize(json!({"prompt": "Once upon"})).unwrap();
        assert_eq!(req.model, None);
        assert_eq!(input, TokenizeInput::Prompt("Once upon".into()));
        let (req, input) =
            tokenize(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
                .unwrap();
        assert_eq!(req.model.as_deref(), Some("m"));
        let TokenizeInput::Chat(chat) = input else {
            panic!("messages are a chat")
        };
        assert_eq!(chat.messages.len(), 1);
    }

    #[test]
    fn what_cannot_be_tokenized_is_named() {
        let image =
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}});
        for (body, param) in [
            (json!({}), "prompt"),
            (json!({"prompt": "a", "messages": []}), "prompt"),
            (json!({"prompt": 5}), "prompt"),
            (
                json!({"prompt": "a", "add_special_tokens": false}),
                "add_special_tokens",
            ),
            (json!({"messages": []}), "messages"),
            (
                json!({"messages": [{"role": "robot", "content": "hi"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, image]}]}),
                "messages[0].content[1]",
            ),
        ] {
            let e = tokenize(body.clone()).unwrap_err();
            assert_eq!(e.param(), Some(param), "{body}: {e}");
        }
    }

    #[test]
    fn detokenize_takes_token_ids_only() {
        let req = detokenize(json!({"tokens": [0, 5, 4294967295u32]})).unwrap();
        assert_eq!(req.token_ids(), vec![0, 5, u32::MAX]);
        assert!(detokenize(json!({"tokens": []}))
            .unwrap()
            .token_ids()
            .is_empty());
        for (body, needle) in [
            (json!({"tokens": [1, -1]}), "token 1 is -1"),
            (json!({"tokens": [1.5]}), "token 0 is 1.5"),
            (json!({"tokens": ["a"]}), "token 0 is \"a\""),
            (json!({"tokens": [4294967296u64]}), "from 0 to"),
            (json!({"tokens": "1 2"}), "an array"),
        ] {
            let e = detokenize(body.clone()).unwrap_err();
            assert_eq!(e.param(), Some("tokens"), "{body}");
            assert!(e.to_string().contains(needle), "{body}: {e}");
        }
        assert!(detokenize(json!({})).is_err());
    }
}
