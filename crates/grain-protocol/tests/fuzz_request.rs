//! Property-based fuzzing of request parsing and validation.
//!
//! Whatever bytes arrive, `parse_chat_request` (and `parse_completion_request`) returns a value or a `RequestError` (never a
//! panic), and every error names a code and, where there is one, a parameter. Requests built
//! within OpenAI's ranges are accepted and survive a serialize/parse round trip; the same requests
//! with one field pushed out of its range are refused naming that field.
//!
//! CI runs the default budget (`PROPTEST_CASES`, 256 cases per property). A longer run:
//! `PROPTEST_CASES=20000 cargo test --release -p grain-protocol --test fuzz_request`.

use grain_protocol::{
    parse_chat_request, parse_completion_request, ChatCompletionRequest, Prompt, RequestError,
    RequestLimits,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn limits() -> RequestLimits {
    RequestLimits::default()
}

/// Any JSON value, nested a few levels, with keys drawn partly from the real field names so that
/// the fuzzer reaches past the "unknown field" check.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("model".to_owned()),
        Just("messages".to_owned()),
        Just("role".to_owned()),
        Just("content".to_owned()),
        Just("type".to_owned()),
        Just("text".to_owned()),
        Just("image_url".to_owned()),
        Just("url".to_owned()),
        Just("detail".to_owned()),
        Just("n".to_owned()),
        Just("stop".to_owned()),
        Just("granularity".to_owned()),
        Just("max_tokens".to_owned()),
        "[a-z_]{1,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,20}".prop_map(Value::String),
        prop_oneof![
            Just("user"),
            Just("assistant"),
            Just("system"),
            Just("tool"),
            Just("auto"),
            Just("low"),
            Just("text"),
            Just("image_url"),
            Just("data:image/png;base64,iVBORw0KGgo="),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A request every field of which is within range.
fn valid_request() -> impl Strategy<Value = Value> {
    let text = "[ -~]{1,40}";
    let message = prop_oneof![
        text.prop_map(|t| json!({"role": "user", "content": t})),
        text.prop_map(|t| json!({"role": "system", "content": t})),
        text.prop_map(|t| json!({"role": "assistant", "content": t})),
        (text, prop_oneof![Just("auto"), Just("low"), Just("high")]).prop_map(|(t, d)| json!({
            "role": "user",
            "content": [
                {"type": "text", "text": t},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": d}}
            ]
        })),
    ];
    (
        prop::collection::vec(message, 1..5),
        prop::option::of(1i64..=4096),
        prop::option::of(0.0f64..=2.0),
        prop::option::of(0.01f64..=1.0),
        prop::option::of(1i64..=16),
        prop::option::of(any::<i64>()),
        prop::option::of(prop::collection::vec("[a-z]{1,5}", 1..=4)),
        prop::option::of(-2.0f64..=2.0),
        prop::option::of(prop_oneof![
            Just(json!("auto")),
            Just(json!(36)),
            Just(json!(576))
        ]),
    )
        .prop_map(
            |(messages, max_tokens, temperature, top_p, n, seed, stop, penalty, granularity)| {
                let mut body = json!({"model": "grain-tiny", "messages": messages});
                let obj = body.as_object_mut().expect("object");
                let mut set = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        obj.insert(k.to_owned(), v);
                    }
                };
                set("max_tokens", max_tokens.map(Value::from));
                set("temperature", temperature.map(Value::from));
                set("top_p", top_p.map(Value::from));
                set("n", n.map(Value::from));
                set("seed", seed.map(Value::from));
                set("stop", stop.map(|s| json!(s)));
                set("presence_penalty", penalty.map(Value::from));
                set("granularity", granularity);
                body
            },
        )
}

fn check_error(e: &RequestError) {
    assert!(!e.code().is_empty());
    assert!(!e.to_string().is_empty());
    if let Some(param) = e.param() {
        assert!(!param.is_empty(), "empty param in {e:?}");
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = parse_chat_request(&bytes, &limits()) {
            check_error(&e);
        }
    }

    #[test]
    fn arbitrary_json_never_panics(value in any_json()) {
        let bytes = serde_json::to_vec(&value).expect("serializable");
        match parse_chat_request(&bytes, &limits()) {
            Ok(req) => prop_assert!(!req.messages.is_empty()),
            Err(e) => check_error(&e),
        }
    }

    #[test]
    fn a_valid_request_with_one_field_replaced_never_panics(
        body in valid_request(),
        field in prop_oneof![
            Just("model"), Just("messages"), Just("max_tokens"), Just("temperature"), Just("top_p"),
            Just("n"), Just("seed"), Just("stop"), Just("logprobs"), Just("top_logprobs"),
            Just("stream"), Just("stream_options"), Just("granularity"), Just("tools"),
        ],
        replacement in any_json(),
    ) {
        let mut body = body;
        body[field] = replacement;
        if let Err(e) = parse_chat_request(&serde_json::to_vec(&body).expect("json"), &limits()) {
            check_error(&e);
        }
    }

    #[test]
    fn a_text_completion_with_one_field_replaced_never_panics(
        field in prop_oneof![
            Just("model"), Just("prompt"), Just("max_tokens"), Just("logprobs"), Just("echo"),
            Just("best_of"), Just("n"), Just("stop"), Just("suffix"), Just("stream_options"),
        ],
        replacement in any_json(),
    ) {
        let mut body = json!({"model": "m", "prompt": "Once", "max_tokens": 4, "n": 1});
        body[field] = replacement;
        match parse_completion_request(&serde_json::to_vec(&body).expect("json"), &limits()) {
            Ok(req) => {
                // An accepted prompt is one or more non-empty texts or token-id lists, and
                // `prompts()` gives every one of them.
                let prompts = req.prompts();
                prop_assert!(!prompts.is_empty());
                let none_empty = prompts.iter().all(|p| match p {
                    Prompt::Text(t) => !t.is_empty(),
                    Prompt::Ids(ids) => !ids.is_empty(),
                });
                prop_assert!(none_empty);
                let expected = match &req.prompt {
                    serde_json::Value::Array(items) if !items.iter().all(|v| v.is_number()) => {
                        items.len()
                    }
                    _ => 1,
                };
                prop_assert_eq!(prompts.len(), expected);
            }
            Err(e) => check_error(&e),
        }
    }

    #[test]
    fn valid_requests_are_accepted_and_round_trip(body in valid_request()) {
        let bytes = serde_json::to_vec(&body).expect("json");
        let req = parse_chat_request(&bytes, &limits())
            .map_err(|e| TestCaseError::fail(format!("{e} for {body}")))?;
        let again: ChatCompletionRequest =
            parse_chat_request(&serde_json::to_vec(&req).expect("json"), &limits())
                .map_err(|e| TestCaseError::fail(format!("round trip: {e}")))?;
        prop_assert_eq!(again, req);
    }

    #[test]
    fn one_out_of_range_field_is_refused_by_name(
        body in valid_request(),
        (field, bad) in prop_oneof![
            (-1_000_000i64..=0).prop_map(|v| ("max_tokens", json!(v))),
            (2.0001f64..1e6).prop_map(|v| ("temperature", json!(v))),
            (-1e6f64..-0.0001).prop_map(|v| ("temperature", json!(v))),
            (1.0001f64..1e6).prop_map(|v| ("top_p", json!(v))),
            (17i64..1_000_000).prop_map(|v| ("n", json!(v))),
            (-1_000_000i64..=0).prop_map(|v| ("n", json!(v))),
            (2.0001f64..1e6).prop_map(|v| ("frequency_penalty", json!(v))),
            (21i64..1_000_000).prop_map(|v| ("top_logprobs", json!(v))),
        ],
    ) {
        let mut body = body;
        body[field] = bad;
        if field == "top_logprobs" {
            body["logprobs"] = json!(true);
        }
        let err = parse_chat_request(&serde_json::to_vec(&body).expect("json"), &limits())
            .expect_err("out of range");
        prop_assert_eq!(err.param(), Some(field), "{}", err);
    }
}

/// Inputs the fuzzer (or a reviewer) found worth keeping, each with the answer it must get.
#[test]
fn regressions() {
    let cases: &[(&[u8], &str)] = &[
        // Deep nesting must hit serde_json's recursion limit, not the stack.
        (&[b'['; 100_000], "invalid_json"),
        (b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\\ud800\"}]}", "invalid_json"),
        (b"{\"model\":\"m\",\"messages\":[],\"temperature\":1e999}", "invalid_json"),
        (b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":18446744073709551615}", "invalid_value"),
        (b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"granularity\":-1}", "invalid_value"),
        (b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[]}]}", "invalid_value"),
    ];
    for (bytes, code) in cases {
        let err = parse_chat_request(bytes, &limits()).expect_err("refused");
        assert_eq!(err.code(), *code, "{err}");
    }
}
