//! `POST /v1/completions` (OpenAI's legacy text completions): a raw prompt, no chat template, no
//! images. The request is checked in the same three passes as chat (`validate.rs`) and shares its
//! sampling rules; the response has `text` choices and the legacy `logprobs` object.
//!
//! Supported: `model`, `prompt` (a string, an array of token ids, or an array of up to
//! [`MAX_PROMPTS`] strings or token-id arrays: choice `j` of prompt `i` is choice `i·n + j` of the
//! response), `max_tokens`
//! (default 16, as OpenAI's), `temperature`, `top_p`, `top_k`, `seed`, `stop`, `n`,
//! `presence_penalty`, `frequency_penalty`, `logprobs` (0 ..= `max_top_logprobs`), `echo`,
//! `best_of` (only equal to `n`), `logit_bias`, `stream`, `stream_options`, `user`, and the
//! extensions `top_k`, `ignore_eos`, `min_tokens`, `repetition_penalty`, `min_p` and
//! `stop_token_ids` (vLLM's).
//! `suffix` is refused by name.
//!
//! `echo` with `logprobs` scores the prompt too: its tokens come first in the `logprobs` lists,
//! the first one with `null` scores (nothing precedes it). With `echo`, `max_tokens` may be 0:
//! the prompt is only evaluated, as evaluation harnesses ask for a loglikelihood.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::RequestError;
use crate::request::{StopSequences, StreamOptions};
use crate::response::{FinishReason, Usage};
use crate::sampling::{LogitBias, SamplingFields};
use crate::validate::{
    check_max_tokens, parse_fields, validate_sampling, Field, Kind, RequestLimits,
};

/// Most prompts in one request (each is its own engine request, with `n` choices).
pub const MAX_PROMPTS: usize = 64;

/// OpenAI's default `max_tokens` for text completions.
pub const DEFAULT_COMPLETION_MAX_TOKENS: u32 = 16;

/// The body of a text-completions request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: String,
    /// A string, an array of token ids, or an array of strings or of token-id arrays;
    /// [`parse_completion_request`] checks which.
    pub prompt: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Extension: sample among the `k` most likely tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopSequences>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// How many alternatives to list per token; the sampled token's log-probability is always
    /// given once this is set (0 included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<i64>,
    /// Return the prompt in front of each choice's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
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
}

impl CompletionRequest {
    /// The prompts, in order (validation guarantees one or more, none empty).
    pub fn prompts(&self) -> Vec<Prompt<'_>> {
        match &self.prompt {
            Value::String(s) => vec![Prompt::Text(s)],
            Value::Array(items) if items.iter().all(Value::is_number) => {
                vec![Prompt::Ids(token_ids(items))]
            }
            Value::Array(items) => items
                .iter()
                .filter_map(|item| match item {
                    Value::String(s) => Some(Prompt::Text(s)),
                    Value::Array(ids) => Some(Prompt::Ids(token_ids(ids))),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// `max_tokens`, or OpenAI's default of 16.
    pub fn max_new_tokens(&self) -> u32 {
        self.max_tokens.map_or(DEFAULT_COMPLETION_MAX_TOKENS, |v| {
            u32::try_from(v).unwrap_or(u32::MAX)
        })
    }

    /// The fields text completions share with chat, with their typed accessors.
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

    /// Alternatives per token when log-probabilities were asked for.
    pub fn logprobs_count(&self) -> Option<u32> {
        self.logprobs.and_then(|n| u32::try_from(n).ok())
    }

    pub fn echo(&self) -> bool {
        self.echo.unwrap_or(false)
    }
}

/// One prompt of a text completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt<'a> {
    /// Text, tokenized as sent.
    Text(&'a str),
    /// Token ids, used as they are (no BOS added).
    Ids(Vec<u32>),
}

/// A JSON token id: an integer from 0 to `u32::MAX`.
fn token_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|id| u32::try_from(id).ok())
}

/// The ids of a validated token-id array.
pub(crate) fn token_ids(items: &[Value]) -> Vec<u32> {
    items.iter().filter_map(token_id).collect()
}

/// The first entry of `items` that is not a token id, with its index.
pub(crate) fn first_bad_token_id(items: &[Value]) -> Option<(usize, &Value)> {
    items
        .iter()
        .enumerate()
        .find(|(_, v)| token_id(v).is_none())
}

const SUPPORTED: &[Field] = &[
    ("model", Kind::String, true),
    ("prompt", Kind::StringOrAnyArray, true),
    ("max_tokens", Kind::Integer, false),
    ("temperature", Kind::Number, false),
    ("top_p", Kind::Number, false),
    ("top_k", Kind::Integer, false),
    ("seed", Kind::Integer, false),
    ("stop", Kind::StringOrArray, false),
    ("n", Kind::Integer, false),
    ("best_of", Kind::Integer, false),
    ("presence_penalty", Kind::Number, false),
    ("frequency_penalty", Kind::Number, false),
    ("logprobs", Kind::Integer, false),
    ("echo", Kind::Bool, false),
    ("stream", Kind::Bool, false),
    ("stream_options", Kind::Object, false),
    ("user", Kind::String, false),
    ("logit_bias", Kind::Object, false),
    ("ignore_eos", Kind::Bool, false),
    ("min_tokens", Kind::Integer, false),
    ("repetition_penalty", Kind::Number, false),
    ("min_p", Kind::Number, false),
    ("stop_token_ids", Kind::Array, false),
];

const UNSUPPORTED: &[(&str, &str)] = &[("suffix", " (insertion is not implemented)")];

/// Parses and validates a text-completions body.
pub fn parse_completion_request(
    body: &[u8],
    limits: &RequestLimits,
) -> Result<CompletionRequest, RequestError> {
    let req: CompletionRequest = parse_fields(body, SUPPORTED, UNSUPPORTED)?;
    if req.model.trim().is_empty() {
        return Err(RequestError::invalid_value("model", "must not be empty"));
    }
    check_prompt(&req.prompt)?;
    if !(req.echo() && req.max_tokens == Some(0)) {
        check_max_tokens("max_tokens", req.max_tokens)?;
    }
    let max_tokens = Some(i64::from(req.max_new_tokens()));
    validate_sampling(&req.sampling(), max_tokens, limits)?;
    if let Some(b) = req.best_of {
        if b != i64::from(req.sampling().n_or_default()) {
            return Err(RequestError::invalid_value(
                "best_of",
                format!(
                    "only best_of equal to n ({}) is supported, got {b}",
                    req.sampling().n_or_default()
                ),
            ));
        }
    }
    if let Some(k) = req.logprobs {
        if k < 0 || k > i64::from(limits.max_top_logprobs) {
            return Err(RequestError::invalid_value(
                "logprobs",
                format!("must be between 0 and {}, got {k}", limits.max_top_logprobs),
            ));
        }
    }
    Ok(req)
}

fn check_prompt(prompt: &Value) -> Result<(), RequestError> {
    let shape_error = || {
        RequestError::invalid_value(
            "prompt",
            "must be a string, an array of strings, an array of token ids, or an array of \
             token-id arrays",
        )
    };
    let prompts: Vec<&Value> = match prompt {
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
            vec![prompt]
        }
        Value::Array(items) => items.iter().collect(),
        Value::String(_) => vec![prompt],
        _ => return Err(shape_error()),
    };
    if prompts.is_empty() {
        return Err(RequestError::invalid_value("prompt", "must not be empty"));
    }
    if prompts.len() > MAX_PROMPTS {
        return Err(RequestError::invalid_value(
            "prompt",
            format!(
                "at most {MAX_PROMPTS} prompts per request, got {}",
                prompts.len()
            ),
        ));
    }
    let several = !std::ptr::eq(prompts[0], prompt);
    let which = |i: usize| match several {
        true => format!(" (prompt {i} is)"),
        false => String::new(),
    };
    if several && !(prompts.iter().all(|p| p.is_string()) || prompts.iter().all(|p| p.is_array())) {
        return Err(shape_error());
    }
    for (i, p) in prompts.iter().enumerate() {
        match p {
            Value::String(s) if s.is_empty() => {
                return Err(RequestError::invalid_value(
                    "prompt",
                    format!("must not be empty{}", which(i)),
                ))
            }
            Value::String(_) => {}
            Value::Array(ids) if ids.is_empty() => {
                return Err(RequestError::invalid_value(
                    "prompt",
                    format!("must not be empty{}", which(i)),
                ))
            }
            Value::Array(ids) => {
                if let Some((j, bad)) = first_bad_token_id(ids) {
                    return Err(RequestError::invalid_value(
                        "prompt",
                        format!(
                            "token ids must be integers from 0 to {}; token {j}{} is {bad}",
                            u32::MAX,
                            match several {
                                true => format!(" of prompt {i}"),
                                false => String::new(),
                            }
                        ),
                    ));
                }
            }
            _ => return Err(shape_error()),
        }
    }
    Ok(())
}

/// `object: "text_completion"`, for the whole response and for each streamed chunk (a chunk's
/// `usage` is absent except on the final `choices: []` chunk of `stream_options.include_usage`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
}

impl CompletionResponse {
    pub const OBJECT: &'static str = "text_completion";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    /// `null` unless the request set `logprobs`.
    pub logprobs: Option<CompletionLogprobs>,
    /// `null` on streamed chunks until the choice ends.
    pub finish_reason: Option<FinishReason>,
}

/// The legacy log-probability object: parallel lists, one entry per token (the echoed prompt's,
/// then the generated ones).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    /// `null` for an echoed prompt's first token.
    pub token_logprobs: Vec<Option<f32>>,
    /// Per token: the `logprobs` most likely tokens and the sampled (or prompt) one, token →
    /// log-probability; `null` for an echoed prompt's first token.
    pub top_logprobs: Vec<Option<BTreeMap<String, f32>>>,
    /// Per token: its character offset in the choice's text (`echo` included).
    pub text_offset: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<CompletionRequest, RequestError> {
        parse_completion_request(v.to_string().as_bytes(), &RequestLimits::default())
    }

    #[test]
    fn a_string_or_one_string_in_a_list_is_the_prompt() {
        let a = parse(json!({"model": "m", "prompt": "Once upon"})).unwrap();
        assert_eq!(a.prompts(), vec![Prompt::Text("Once upon")]);
        assert_eq!(a.max_new_tokens(), DEFAULT_COMPLETION_MAX_TOKENS);
        let b = parse(json!({"model": "m", "prompt": ["Once upon"], "max_tokens": 5})).unwrap();
        assert_eq!(b.prompts(), vec![Prompt::Text("Once upon")]);
        let c = parse(json!({"model": "m", "prompt": ["a", "b c"]})).unwrap();
        assert_eq!(c.prompts(), vec![Prompt::Text("a"), Prompt::Text("b c")]);
        assert_eq!(b.max_new_tokens(), 5);
    }

    #[test]
    fn token_ids_are_one_prompt_and_arrays_of_them_several() {
        let a = parse(json!({"model": "m", "prompt": [1, 2, 4294967295u32]})).unwrap();
        assert_eq!(a.prompts(), vec![Prompt::Ids(vec![1, 2, u32::MAX])]);
        let b = parse(json!({"model": "m", "prompt": [[5], [0, 7]]})).unwrap();
        assert_eq!(
            b.prompts(),
            vec![Prompt::Ids(vec![5]), Prompt::Ids(vec![0, 7])]
        );
        // Token-id prompts echo too (their text is the detokenized ids).
        assert!(parse(json!({"model": "m", "prompt": [1, 2], "echo": true})).is_ok());
        assert!(parse(json!({"model": "m", "prompt": "a", "echo": true})).is_ok());
    }

    #[test]
    fn prompts_grain_cannot_serve_are_named_in_the_error() {
        for (body, needle) in [
            (json!({"model": "m", "prompt": ""}), "must not be empty"),
            (json!({"model": "m", "prompt": []}), "must not be empty"),
            (json!({"model": "m", "prompt": ["a", ""]}), "prompt 1 is"),
            (
                json!({"model": "m", "prompt": vec!["a"; MAX_PROMPTS + 1]}),
                "at most",
            ),
            (json!({"model": "m", "prompt": [[1, 2], []]}), "prompt 1 is"),
            (json!({"model": "m", "prompt": [1, -2]}), "token 1 is -2"),
            (json!({"model": "m", "prompt": [1.5]}), "token 0 is 1.5"),
            (
                json!({"model": "m", "prompt": [4294967296u64]}),
                "from 0 to",
            ),
            (
                json!({"model": "m", "prompt": [[1], [2, "x"]]}),
                "token 1 of prompt 1",
            ),
            (
                json!({"model": "m", "prompt": ["a", [1]]}),
                "token-id arrays",
            ),
            (json!({"model": "m", "prompt": [1, "a"]}), "token-id arrays"),
            (json!({"model": "m", "prompt": [null]}), "token-id arrays"),
            (json!({"model": "m", "prompt": 7}), "a string or an array"),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.param(), Some("prompt"), "{body}");
            assert!(e.to_string().contains(needle), "{body}: {e}");
        }
        let e = parse(json!({"model": "m"})).unwrap_err();
        assert!(matches!(e, RequestError::MissingField { .. }), "{e}");
    }

    #[test]
    fn fields_are_checked_like_chat_and_legacy_ones_by_their_own_rules() {
        for (body, param) in [
            (
                json!({"model": "m", "prompt": "a", "temperature": 3}),
                "temperature",
            ),
            (
                json!({"model": "m", "prompt": "a", "max_tokens": 0}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "prompt": "a", "logprobs": 21}),
                "logprobs",
            ),
            (
                json!({"model": "m", "prompt": "a", "logprobs": true}),
                "logprobs",
            ),
            (
                json!({"model": "m", "prompt": "a", "n": 2, "best_of": 3}),
                "best_of",
            ),
            (
                json!({"model": "m", "prompt": "a", "echo": false, "max_tokens": 0}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "prompt": "a", "echo": true, "max_tokens": -1}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "prompt": "a", "echo": true, "max_tokens": 0,
                       "min_tokens": 1}),
                "min_tokens",
            ),
            (
                json!({"model": "m", "prompt": "a", "suffix": "z"}),
                "suffix",
            ),
            (
                json!({"model": "m", "prompt": "a", "messages": []}),
                "messages",
            ),
            (
                json!({"model": "m", "prompt": "a", "stream_options": {"include_usage": true}}),
                "stream_options",
            ),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.param(), Some(param), "{body}: {e}");
        }
        let ok = parse(
            json!({"model": "m", "prompt": "a", "n": 2, "best_of": 2, "logprobs": 0,
                              "echo": false, "suffix": null, "stop": ["\n"], "seed": -1}),
        )
        .unwrap();
        assert_eq!(ok.logprobs_count(), Some(0));
        assert_eq!(ok.sampling().n_or_default(), 2);
        assert_eq!(ok.sampling().stop_sequences(), vec!["\n".to_owned()]);
        // lm-eval's loglikelihood request (token ids, echo, one alternative), and scoring alone.
        let score = json!({"model": "m", "prompt": [[1, 5, 9]], "echo": true, "logprobs": 1,
                           "max_tokens": 1, "temperature": 0, "seed": 1234});
        assert_eq!(parse(score).unwrap().logprobs_count(), Some(1));
        let only = parse(
            json!({"model": "m", "prompt": "a b", "echo": true, "logprobs": 0,
                                "max_tokens": 0}),
        )
        .unwrap();
        assert_eq!(only.max_new_tokens(), 0);
    }

    #[test]
    fn response_serializes_in_openai_shape() {
        let mut top = BTreeMap::new();
        top.insert("a".to_owned(), -0.5f32);
        let r = CompletionResponse {
            id: "cmpl-1".into(),
            object: CompletionResponse::OBJECT.into(),
            created: 3,
            model: "m".into(),
            choices: vec![CompletionChoice {
                index: 0,
                text: "a".into(),
                logprobs: Some(CompletionLogprobs {
                    tokens: vec!["<s>".into(), "a".into()],
                    token_logprobs: vec![None, Some(-0.5)],
                    top_logprobs: vec![None, Some(top)],
                    text_offset: vec![0, 3],
                }),
                finish_reason: Some(FinishReason::Length),
            }],
            usage: None,
            system_fingerprint: None,
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id": "cmpl-1", "object": "text_completion", "created": 3, "model": "m",
                   "choices": [{"index": 0, "text": "a", "finish_reason": "length",
                                "logprobs": {"tokens": ["<s>", "a"], "token_logprobs": [null, -0.5],
                                             "top_logprobs": [null, {"a": -0.5}],
                                             "text_offset": [0, 3]}}]})
        );
    }
}
