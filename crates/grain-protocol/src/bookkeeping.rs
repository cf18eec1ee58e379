//! OpenAI fields that do not change the answer: `user`, `safety_identifier`, `metadata`,
//! `store`, `service_tier` and `prompt_cache_key`. Clients send them for their own bookkeeping, so
//! they are accepted, and checked as OpenAI checks them, where Grain does what they ask: it stores
//! nothing (`store` may only be `false`) and has one service tier (`"auto"` or `"default"`).

use serde_json::Value;

use crate::error::RequestError;
use crate::request::ChatCompletionRequest;

/// Most `metadata` pairs, and the longest key and value, as OpenAI allows them.
const MAX_METADATA_PAIRS: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;

/// Longest `user`, `safety_identifier` or `prompt_cache_key` taken.
const MAX_IDENTIFIER: usize = 512;

pub(crate) fn validate_bookkeeping(req: &ChatCompletionRequest) -> Result<(), RequestError> {
    for (param, value) in [
        ("user", &req.user),
        ("safety_identifier", &req.safety_identifier),
        ("prompt_cache_key", &req.prompt_cache_key),
    ] {
        if value
            .as_ref()
            .is_some_and(|v| v.chars().count() > MAX_IDENTIFIER)
        {
            return Err(RequestError::invalid_value(
                param,
                format!("must be at most {MAX_IDENTIFIER} characters"),
            ));
        }
    }
    if let Some(metadata) = &req.metadata {
        if metadata.len() > MAX_METADATA_PAIRS {
            return Err(RequestError::invalid_value(
                "metadata",
                format!("must hold at most {MAX_METADATA_PAIRS} pairs"),
            ));
        }
        for (key, value) in metadata {
            let param = format!("metadata.{key}");
            if key.chars().count() > MAX_METADATA_KEY {
                return Err(RequestError::invalid_value(
                    param,
                    format!("keys must be at most {MAX_METADATA_KEY} characters"),
                ));
            }
            match value {
                Value::String(v) if v.chars().count() <= MAX_METADATA_VALUE => {}
                _ => {
                    return Err(RequestError::invalid_value(
                        param,
                        format!(
                            "values must be strings of at most {MAX_METADATA_VALUE} characters"
                        ),
                    ))
                }
            }
        }
    }
    if req.store == Some(true) {
        return Err(RequestError::invalid_value(
            "store",
            "Grain does not store completions: send false or leave it out",
        ));
    }
    if let Some(tier) = &req.service_tier {
        if !matches!(tier.as_str(), "auto" | "default") {
            return Err(RequestError::invalid_value(
                "service_tier",
                format!("'{tier}' is not offered: Grain has one tier ('auto' or 'default')"),
            ));
        }
    }
    Ok(())
}
