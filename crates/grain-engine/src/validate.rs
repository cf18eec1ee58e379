//! Range checks on generation parameters. The server validates the wire format first; these
//! guard the engine against any caller, with OpenAI's limits and parameter names.

use crate::api::{EngineError, GenerationParams};

/// OpenAI's limits.
pub const MAX_N: u32 = 128;
pub const MAX_TOP_LOGPROBS: u32 = 20;
pub const MAX_STOP_STRINGS: usize = 4;
/// Entries in `stop_token_ids` (vLLM sets none).
pub const MAX_STOP_TOKEN_IDS: usize = 64;
/// Largest `repetition_penalty` (vLLM sets none; past this a penalty only breaks the text).
pub const MAX_REPETITION_PENALTY: f32 = 10.0;
/// Entries in `logit_bias` (OpenAI documents none; a bound keeps a request's work bounded).
pub const MAX_LOGIT_BIAS: usize = 1024;

pub fn validate_params(p: &GenerationParams) -> Result<(), EngineError> {
    let fail = |message: String, param: &str| Err(EngineError::invalid(message, Some(param)));
    if !(0.0..=2.0).contains(&p.temperature) {
        return fail(
            format!("temperature must be in [0, 2], got {}", p.temperature),
            "temperature",
        );
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return fail(format!("top_p must be in (0, 1], got {}", p.top_p), "top_p");
    }
    if p.top_k == Some(0) {
        return fail("top_k must be at least 1".into(), "top_k");
    }
    if !(1..=MAX_N).contains(&p.n) {
        return fail(format!("n must be in [1, {MAX_N}], got {}", p.n), "n");
    }
    for (value, name) in [
        (p.presence_penalty, "presence_penalty"),
        (p.frequency_penalty, "frequency_penalty"),
    ] {
        if !(-2.0..=2.0).contains(&value) {
            return fail(format!("{name} must be in [-2, 2], got {value}"), name);
        }
    }
    if !(p.repetition_penalty > 0.0 && p.repetition_penalty <= MAX_REPETITION_PENALTY) {
        return fail(
            format!(
                "repetition_penalty must be in (0, {MAX_REPETITION_PENALTY}], got {}",
                p.repetition_penalty
            ),
            "repetition_penalty",
        );
    }
    if !(0.0..=1.0).contains(&p.min_p) {
        return fail(format!("min_p must be in [0, 1], got {}", p.min_p), "min_p");
    }
    if p.top_logprobs > MAX_TOP_LOGPROBS {
        return fail(
            format!(
                "top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {}",
                p.top_logprobs
            ),
            "top_logprobs",
        );
    }
    if p.top_logprobs > 0 && !p.logprobs {
        return fail(
            "top_logprobs requires logprobs to be true".into(),
            "top_logprobs",
        );
    }
    if let Some(k) = p.prompt_logprobs.filter(|&k| k > MAX_TOP_LOGPROBS) {
        return fail(
            format!("prompt_logprobs must be at most {MAX_TOP_LOGPROBS}, got {k}"),
            "prompt_logprobs",
        );
    }
    if p.response_format.is_json() && (p.ignore_eos || p.min_tokens > 0) {
        return fail(
            "a JSON document ends where it closes: response_format json_object or json_schema \
             cannot be combined with ignore_eos or min_tokens"
                .into(),
            "response_format",
        );
    }
    if p.stop.len() > MAX_STOP_STRINGS {
        return fail(
            format!("at most {MAX_STOP_STRINGS} stop sequences are allowed"),
            "stop",
        );
    }
    if p.stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
        return fail(
            format!("at most {MAX_STOP_TOKEN_IDS} stop_token_ids are allowed"),
            "stop_token_ids",
        );
    }
    if p.stop.iter().any(String::is_empty) {
        return fail("stop sequences must not be empty".into(), "stop");
    }
    if let Some(max) = p.max_tokens.filter(|&m| p.min_tokens > m) {
        return fail(
            format!(
                "min_tokens ({}) is more than max_tokens ({max})",
                p.min_tokens
            ),
            "min_tokens",
        );
    }
    if p.logit_bias.len() > MAX_LOGIT_BIAS {
        return fail(
            format!("at most {MAX_LOGIT_BIAS} logit_bias entries are allowed"),
            "logit_bias",
        );
    }
    if let Some((token, bias)) = p
        .logit_bias
        .iter()
        .find(|(_, b)| !(-100.0..=100.0).contains(b))
    {
        return fail(
            format!("the bias of token {token} must be in [-100, 100], got {bias}"),
            "logit_bias",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(p: GenerationParams) -> Option<String> {
        match validate_params(&p) {
            Err(EngineError::InvalidRequest { param, .. }) => param,
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert!(validate_params(&GenerationParams::default()).is_ok());
        // Nothing generated: the prompt is only evaluated (scored, with `prompt_logprobs`).
        let score_only = GenerationParams {
            max_tokens: Some(0),
            prompt_logprobs: Some(MAX_TOP_LOGPROBS),
            ..GenerationParams::default()
        };
        assert!(validate_params(&score_only).is_ok());
    }

    #[test]
    fn each_out_of_range_value_names_its_parameter() {
        let d = GenerationParams::default;
        let cases = [
            (
                GenerationParams {
                    prompt_logprobs: Some(21),
                    ..d()
                },
                "prompt_logprobs",
            ),
            (
                GenerationParams {
                    temperature: 2.5,
                    ..d()
                },
                "temperature",
            ),
            (
                GenerationParams {
                    temperature: f32::NAN,
                    ..d()
                },
                "temperature",
            ),
            (GenerationParams { top_p: 0.0, ..d() }, "top_p"),
            (
                GenerationParams {
                    top_k: Some(0),
                    ..d()
                },
                "top_k",
            ),
            (GenerationParams { n: 0, ..d() }, "n"),
            (
                GenerationParams {
                    repetition_penalty: 0.0,
                    ..d()
                },
                "repetition_penalty",
            ),
            (
                GenerationParams {
                    repetition_penalty: f32::NAN,
                    ..d()
                },
                "repetition_penalty",
            ),
            (GenerationParams { min_p: 1.5, ..d() }, "min_p"),
            (
                GenerationParams {
                    presence_penalty: -3.0,
                    ..d()
                },
                "presence_penalty",
            ),
            (
                GenerationParams {
                    frequency_penalty: 2.1,
                    ..d()
                },
                "frequency_penalty",
            ),
            (
                GenerationParams {
                    logprobs: true,
                    top_logprobs: 21,
                    ..d()
                },
                "top_logprobs",
            ),
            (
                GenerationParams {
                    top_logprobs: 2,
                    ..d()
                },
                "top_logprobs",
            ),
            (
                GenerationParams {
                    response_format: crate::api::ResponseFormat::JsonObject,
                    ignore_eos: true,
                    ..d()
                },
                "response_format",
            ),
            (
                GenerationParams {
                    stop: vec![String::new()],
                    ..d()
                },
                "stop",
            ),
            (
                GenerationParams {
                    stop_token_ids: vec![7; MAX_STOP_TOKEN_IDS + 1],
                    ..d()
                },
                "stop_token_ids",
            ),
            (
                GenerationParams {
                    stop: vec!["a".into(); 5],
                    ..d()
                },
                "stop",
            ),
        ];
        for (p, name) in cases {
            assert_eq!(param_of(p).as_deref(), Some(name));
        }
    }
}
