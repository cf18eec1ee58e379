//! `response_format`: `text`, `json_object` (JSON mode) or `json_schema` (structured outputs).
//! The schema itself is compiled, and its unsupported keywords refused, by the engine.

use crate::error::RequestError;
use crate::request::{ChatCompletionRequest, ResponseFormat};

/// `response_format`: `text`, or `json_object` without the knobs that would keep a choice going
/// past the object's end.
pub(crate) fn validate_response_format(req: &ChatCompletionRequest) -> Result<(), RequestError> {
    let Some(format) = &req.response_format else {
        return Ok(());
    };
    match format.kind.as_str() {
        ResponseFormat::TEXT | ResponseFormat::JSON_OBJECT if format.json_schema.is_some() => {
            Err(RequestError::invalid_value(
                "response_format.json_schema",
                "is only valid with type 'json_schema'",
            ))
        }
        ResponseFormat::TEXT => Ok(()),
        ResponseFormat::JSON_OBJECT | ResponseFormat::JSON_SCHEMA => {
            if format.kind == ResponseFormat::JSON_SCHEMA {
                validate_json_schema_field(format.json_schema.as_ref())?;
            }
            let s = req.sampling();
            if s.ignores_eos() || s.min_tokens_value() > 0 {
                return Err(RequestError::invalid_value(
                    "response_format",
                    format!(
                        "a JSON document ends where it closes: {} cannot be combined with \
                         ignore_eos or min_tokens",
                        format.kind
                    ),
                ));
            }
            Ok(())
        }
        other => Err(RequestError::invalid_value(
            "response_format.type",
            format!("must be 'text', 'json_object' or 'json_schema', got '{other}'"),
        )),
    }
}

/// `response_format.json_schema`: OpenAI's `{name, description?, schema?, strict?}`. The schema
/// itself is compiled (and its unsupported keywords refused) by the engine.
fn validate_json_schema_field(field: Option<&serde_json::Value>) -> Result<(), RequestError> {
    const PARAM: &str = "response_format.json_schema";
    let field = field.ok_or_else(|| RequestError::MissingField {
        param: PARAM.to_owned(),
    })?;
    let obj = field
        .as_object()
        .ok_or_else(|| RequestError::invalid_value(PARAM, "must be an object"))?;
    if let Some(key) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "name" | "description" | "schema" | "strict"))
    {
        return Err(RequestError::invalid_value(
            format!("{PARAM}.{key}"),
            "unknown field (expected name, description, schema, strict)",
        ));
    }
    let name = obj.get("name").ok_or_else(|| RequestError::MissingField {
        param: format!("{PARAM}.name"),
    })?;
    let name_ok = name.as_str().is_some_and(|n| {
        (1..=64).contains(&n.len())
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    if !name_ok {
        return Err(RequestError::invalid_value(
            format!("{PARAM}.name"),
            "must be 1 to 64 letters, digits, underscores or dashes",
        ));
    }
    let checks = [
        (
            "description",
            obj.get("description").is_none_or(|v| v.is_string()),
        ),
        ("schema", obj.get("schema").is_none_or(|v| v.is_object())),
        (
            "strict",
            obj.get("strict")
                .is_none_or(|v| v.is_boolean() || v.is_null()),
        ),
    ];
    if let Some((key, _)) = checks.iter().find(|(_, ok)| !ok) {
        let what = match *key {
            "description" => "a string",
            "schema" => "a JSON Schema object",
            _ => "a boolean",
        };
        return Err(RequestError::invalid_value(
            format!("{PARAM}.{key}"),
            format!("must be {what}"),
        ));
    }
    Ok(())
}
