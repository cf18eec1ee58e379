//! Helpers shared by the validation tests: a minimal request, one field set on it, parsing with
//! the default limits, and the refusal check (param and code, as the SDKs surface them).
#![allow(dead_code)] // Each test file uses its own share.

use grain_protocol::{parse_chat_request, ChatCompletionRequest, RequestError, RequestLimits};
use serde_json::{json, Value};

pub fn base() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

pub fn with(field: &str, value: Value) -> Value {
    let mut body = base();
    body[field] = value;
    body
}

pub fn parse(body: &Value) -> Result<ChatCompletionRequest, RequestError> {
    parse_chat_request(body.to_string().as_bytes(), &RequestLimits::default())
}

/// Asserts the body is refused, naming `param`, with `code`; returns the message.
pub fn refused(body: &Value, param: &str, code: &str) -> String {
    let err = parse(body).expect_err(&body.to_string());
    assert_eq!(err.param(), Some(param), "param of {err}");
    assert_eq!(err.code(), code, "code of {err}");
    err.to_string()
}
