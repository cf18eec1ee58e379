//! Request validation: each rule from the API spec (OpenAI's documented ranges and Grain's
//! extensions) with the field the error must name.

use grain_protocol::{
    parse_chat_request, ContentPart, Detail, GranularityRequest, MessageContent, RequestLimits,
    Role,
};
use serde_json::{json, Value};

mod common;
use common::{base, parse, refused, with};

#[test]
fn minimal_request_gets_openai_defaults() {
    let req = parse(&base()).unwrap();
    assert_eq!(req.model, "m");
    assert_eq!(req.sampling().temperature_or_default(), 1.0);
    assert_eq!(req.sampling().top_p_or_default(), 1.0);
    assert_eq!(req.sampling().n_or_default(), 1);
    assert_eq!(req.max_new_tokens(), None);
    assert!(!req.sampling().is_stream());
    assert!(!req.sampling().include_usage());
    assert!(req.sampling().stop_sequences().is_empty());
    assert_eq!(req.granularity, None);
}

#[test]
fn full_request_parses_every_field() {
    let body = json!({
        "model": "avg-llava",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,BBBB"}}
            ]},
            {"role": "assistant", "content": "a cat"},
            {"role": "developer", "content": [{"type": "text", "text": "again"}]}
        ],
        "max_completion_tokens": 12, "temperature": 0.0, "top_p": 0.5, "top_k": 40, "seed": -3,
        "stop": ["\n", "END"], "n": 2, "presence_penalty": 0.5, "frequency_penalty": -1.5,
        "logprobs": true, "top_logprobs": 5, "stream": true,
        "stream_options": {"include_usage": true}, "user": "u1", "granularity": 144
    });
    let req = parse(&body).unwrap();
    assert_eq!(req.max_new_tokens(), Some(12));
    assert_eq!(req.sampling().temperature_or_default(), 0.0);
    assert_eq!(req.sampling().top_k_value(), Some(40));
    assert_eq!(req.sampling().seed_value(), Some(u64::MAX - 2));
    assert_eq!(
        req.sampling().stop_sequences(),
        vec!["\n".to_owned(), "END".to_owned()]
    );
    assert_eq!(req.sampling().n_or_default(), 2);
    assert_eq!(req.top_logprobs_or_default(), 5);
    assert!(req.sampling().is_stream() && req.sampling().include_usage() && req.wants_logprobs());
    assert_eq!(req.granularity, Some(GranularityRequest::Tokens(144)));
    assert_eq!(req.messages[3].role, Role::Developer);
    let MessageContent::Parts(parts) = &req.messages[1].content else {
        panic!("expected parts");
    };
    match (&parts[1], &parts[2]) {
        (ContentPart::ImageUrl { image_url: a }, ContentPart::ImageUrl { image_url: b }) => {
            assert_eq!(a.detail, Detail::Low);
            assert_eq!(b.detail, Detail::Auto);
        }
        other => panic!("unexpected parts {other:?}"),
    }
}

#[test]
fn granularity_accepts_auto_and_numeric_strings() {
    assert_eq!(
        parse(&with("granularity", json!("auto")))
            .unwrap()
            .granularity,
        Some(GranularityRequest::Auto)
    );
    assert_eq!(
        parse(&with("granularity", json!("36")))
            .unwrap()
            .granularity,
        Some(GranularityRequest::Tokens(36))
    );
    refused(
        &with("granularity", json!("fine")),
        "granularity",
        "invalid_value",
    );
    refused(
        &with("granularity", json!(0)),
        "granularity",
        "invalid_value",
    );
    refused(
        &with("granularity", json!(1.5)),
        "granularity",
        "invalid_type",
    );
}

#[test]
fn malformed_json_and_non_objects() {
    let err = parse_chat_request(b"{\"model\": ", &RequestLimits::default()).unwrap_err();
    assert_eq!(err.code(), "invalid_json");
    assert_eq!(err.param(), None);
    assert!(err.to_string().contains("line 1"), "{err}");

    let err = parse_chat_request(b"[1, 2]", &RequestLimits::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "The request body must be a JSON object, got an array"
    );
}

#[test]
fn missing_required_fields_are_named() {
    let msg = refused(
        &json!({"messages": []}),
        "model",
        "missing_required_parameter",
    );
    assert_eq!(msg, "Missing required parameter: 'model'");
    refused(
        &json!({"model": "m"}),
        "messages",
        "missing_required_parameter",
    );
    refused(&with("model", Value::Null), "model", "invalid_type");
}

#[test]
fn unsupported_openai_fields_are_refused_by_name() {
    for field in [
        "functions",
        "function_call",
        "audio",
        "modalities",
        "prediction",
    ] {
        let msg = refused(
            &with(field, json!({"x": 1})),
            field,
            "unsupported_parameter",
        );
        assert!(msg.contains(&format!("'{field}'")), "{msg}");
    }
}

#[test]
fn logit_bias_takes_token_ids_and_biases_in_range() {
    let req = parse(&with("logit_bias", json!({"42": -100, "7": 2.5}))).unwrap();
    assert_eq!(
        req.sampling().logit_bias_entries(),
        vec![(42, -100.0), (7, 2.5)],
        "in key order (a BTreeMap of strings)"
    );
    for bad in [
        json!({"x": 1}),
        json!({"-1": 1}),
        json!({"5": 100.5}),
        json!({"5": "high"}),
        json!([1, 2]),
    ] {
        let e = parse(&with("logit_bias", bad.clone())).unwrap_err();
        assert!(
            e.param().is_some_and(|p| p.starts_with("logit_bias")),
            "{bad}: {e}"
        );
    }
}

#[test]
fn min_tokens_and_ignore_eos_are_checked() {
    let mut body = with("min_tokens", json!(3));
    body["max_tokens"] = json!(3);
    body["ignore_eos"] = json!(true);
    let req = parse(&body).unwrap();
    assert_eq!(req.sampling().min_tokens_value(), 3);
    assert_eq!(req.ignore_eos, Some(true));
    body["max_completion_tokens"] = json!(2);
    body["max_tokens"] = json!(2);
    refused(&body, "min_tokens", "invalid_value");
    refused(
        &with("min_tokens", json!(-1)),
        "min_tokens",
        "invalid_value",
    );
    refused(&with("ignore_eos", json!(1)), "ignore_eos", "invalid_type");
}

#[test]
fn null_unsupported_fields_are_treated_as_absent() {
    let mut body = base();
    body["tools"] = Value::Null;
    body["response_format"] = Value::Null;
    assert!(parse(&body).is_ok());
}

#[test]
fn unknown_fields_are_refused_by_name() {
    let msg = refused(
        &with("temprature", json!(0.5)),
        "temprature",
        "unknown_parameter",
    );
    assert_eq!(msg, "Unrecognized request argument supplied: 'temprature'");
}

#[test]
fn wrong_types_get_precise_messages() {
    let msg = refused(
        &with("temperature", json!("hot")),
        "temperature",
        "invalid_type",
    );
    assert_eq!(
        msg,
        "Invalid type for 'temperature': expected a number, but got a string instead"
    );
    let msg = refused(&with("n", json!(2.5)), "n", "invalid_type");
    assert!(
        msg.contains("expected an integer, but got a decimal number"),
        "{msg}"
    );
    refused(&with("seed", json!(1.5)), "seed", "invalid_type");
    refused(&with("seed", json!("42")), "seed", "invalid_type");
    refused(&with("stream", json!("yes")), "stream", "invalid_type");
    refused(&with("stop", json!(["a", 3])), "stop", "invalid_type");
    refused(&with("messages", json!("hi")), "messages", "invalid_type");
    refused(&with("logprobs", json!(1)), "logprobs", "invalid_type");
}

#[test]
fn numeric_ranges_follow_the_openai_spec() {
    // (field, accepted edge values, refused values)
    let cases: &[(&str, &[Value], &[Value])] = &[
        (
            "temperature",
            &[json!(0), json!(2)],
            &[json!(-0.1), json!(2.01)],
        ),
        ("top_p", &[json!(1), json!(0.01)], &[json!(0), json!(1.5)]),
        (
            "n",
            &[json!(1), json!(16)],
            &[json!(0), json!(17), json!(-1)],
        ),
        (
            "max_tokens",
            &[json!(1)],
            &[json!(0), json!(-5), json!(5_000_000_000u64)],
        ),
        ("max_completion_tokens", &[json!(1)], &[json!(0)]),
        (
            "presence_penalty",
            &[json!(-2), json!(2)],
            &[json!(-2.5), json!(2.1)],
        ),
        (
            "frequency_penalty",
            &[json!(-2), json!(2)],
            &[json!(-3), json!(3)],
        ),
        ("top_k", &[json!(1)], &[json!(0), json!(-1)]),
    ];
    for (field, ok, bad) in cases {
        for v in *ok {
            assert!(
                parse(&with(field, v.clone())).is_ok(),
                "{field}={v} should pass"
            );
        }
        for v in *bad {
            refused(&with(field, v.clone()), field, "invalid_value");
        }
    }
    let msg = refused(
        &with("temperature", json!(3)),
        "temperature",
        "invalid_value",
    );
    assert_eq!(
        msg,
        "Invalid value for 'temperature': must be between 0 and 2, got 3"
    );
}

#[test]
fn seed_outside_i64_is_refused() {
    refused(&with("seed", json!(u64::MAX)), "seed", "invalid_value");
    assert_eq!(
        parse(&with("seed", json!(i64::MIN))).unwrap().seed,
        Some(i64::MIN)
    );
}

#[test]
fn max_n_is_configurable() {
    let limits = RequestLimits {
        max_n: 4,
        ..RequestLimits::default()
    };
    let body = with("n", json!(5)).to_string();
    let err = parse_chat_request(body.as_bytes(), &limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Invalid value for 'n': must be between 1 and 4, got 5"
    );
}

#[test]
fn max_tokens_and_max_completion_tokens_must_agree() {
    let mut body = with("max_tokens", json!(5));
    body["max_completion_tokens"] = json!(5);
    assert_eq!(parse(&body).unwrap().max_new_tokens(), Some(5));
    body["max_completion_tokens"] = json!(6);
    refused(&body, "max_tokens", "invalid_value");
    assert_eq!(
        parse(&with("max_tokens", json!(9)))
            .unwrap()
            .max_new_tokens(),
        Some(9)
    );
}

#[test]
fn stop_sequences_are_bounded() {
    assert_eq!(
        parse(&with("stop", json!("x")))
            .unwrap()
            .sampling()
            .stop_sequences(),
        vec!["x".to_owned()]
    );
    assert!(parse(&with("stop", json!(["a", "b", "c", "d"]))).is_ok());
    let msg = refused(
        &with("stop", json!(["a", "b", "c", "d", "e"])),
        "stop",
        "invalid_value",
    );
    assert!(msg.contains("at most 4"), "{msg}");
    refused(&with("stop", json!([""])), "stop", "invalid_value");
}

#[test]
fn top_logprobs_requires_logprobs_and_is_bounded() {
    let msg = refused(
        &with("top_logprobs", json!(3)),
        "top_logprobs",
        "invalid_value",
    );
    assert!(msg.contains("requires 'logprobs'"), "{msg}");
    let mut body = with("top_logprobs", json!(21));
    body["logprobs"] = json!(true);
    refused(&body, "top_logprobs", "invalid_value");
    body["top_logprobs"] = json!(20);
    assert!(parse(&body).is_ok());
}

#[test]
fn stream_options_require_stream() {
    let body = with("stream_options", json!({"include_usage": true}));
    refused(&body, "stream_options", "invalid_value");
    let mut body = body;
    body["stream"] = json!(false);
    refused(&body, "stream_options", "invalid_value");
    body["stream"] = json!(true);
    assert!(parse(&body).unwrap().sampling().include_usage());
}

#[test]
fn message_rules() {
    refused(&with("messages", json!([])), "messages", "invalid_value");
    // Tool results must answer a call (more cases in tests/tools.rs).
    let msg = refused(
        &with(
            "messages",
            json!([{"role": "tool", "content": "x", "tool_call_id": "1"}]),
        ),
        "messages[0].tool_call_id",
        "invalid_value",
    );
    assert!(msg.contains("'1'"), "{msg}");
    refused(
        &with("messages", json!([{"role": "wizard", "content": "x"}])),
        "messages[0].role",
        "invalid_value",
    );
    refused(
        &with("messages", json!([{"role": "user"}])),
        "messages[0].content",
        "invalid_value",
    );
    refused(
        &with("messages", json!([{"role": "user", "content": []}])),
        "messages[0].content",
        "invalid_value",
    );
    refused(
        &with("messages", json!([{"role": "user", "content": 5}])),
        "messages[0].content",
        "invalid_value",
    );
    refused(
        &with(
            "messages",
            json!([{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}]),
        ),
        "messages[0].tool_calls[0]",
        "invalid_value",
    );
    // A previous response's message object, replayed with its null fields, is fine.
    let replay = json!([{"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "refusal": null, "tool_calls": null, "name": "bot"}]);
    assert!(parse(&with("messages", replay)).is_ok());
}

#[test]
fn content_part_rules() {
    let part = |p: Value| with("messages", json!([{"role": "user", "content": [p]}]));
    let msg = refused(
        &part(json!({"type": "input_audio", "input_audio": {}})),
        "messages[0].content[0].type",
        "invalid_value",
    );
    assert!(msg.contains("input_audio"), "{msg}");
    let err = parse(&part(
        json!({"type": "image_url", "image_url": {"detail": "low"}}),
    ))
    .unwrap_err();
    assert!(err.to_string().contains("url"), "{err}");
    assert!(
        err.param().unwrap().starts_with("messages[0].content[0]"),
        "{err:?}"
    );
    let err = parse(&part(
        json!({"type": "image_url", "image_url": {"url": "data:,", "detail": "max"}}),
    ))
    .unwrap_err();
    assert!(err.to_string().contains("max"), "{err}");
    refused(
        &part(json!({"type": "image_url", "image_url": {"url": " "}})),
        "messages[0].content[0].image_url.url",
        "invalid_value",
    );
    let system_image = with(
        "messages",
        json!([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}]}]),
    );
    let msg = refused(&system_image, "messages[0].content[0]", "invalid_value");
    assert!(msg.contains("only allowed in 'user'"), "{msg}");
}

#[test]
fn image_count_is_limited() {
    let image = json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}});
    let content: Vec<Value> = std::iter::repeat_n(image, 9).collect();
    let body = with("messages", json!([{"role": "user", "content": content}]));
    let msg = refused(&body, "messages", "invalid_value");
    assert!(msg.contains("at most 8 images"), "{msg}");
}

#[test]
fn requests_round_trip_through_serde() {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "high"}}]}],
        "granularity": "auto", "stop": "x", "n": 2});
    let req = parse(&body).unwrap();
    let back = serde_json::to_value(&req).unwrap();
    assert_eq!(back, body);
}

#[test]
fn repetition_penalty_and_min_p_are_vllms_with_their_ranges() {
    let mut body = with("repetition_penalty", json!(1.3));
    body["min_p"] = json!(0.05);
    let s = parse(&body).unwrap();
    assert_eq!(s.sampling().repetition_penalty_or_default(), 1.3);
    assert_eq!(s.sampling().min_p_or_default(), 0.05);
    let d = parse(&base()).unwrap();
    assert_eq!(
        d.sampling().repetition_penalty_or_default(),
        1.0,
        "off by default"
    );
    assert_eq!(d.sampling().min_p_or_default(), 0.0, "off by default");
    for bad in [json!(0), json!(-1.0), json!(10.5)] {
        refused(
            &with("repetition_penalty", bad),
            "repetition_penalty",
            "invalid_value",
        );
    }
    for bad in [json!(-0.1), json!(1.5)] {
        refused(&with("min_p", bad), "min_p", "invalid_value");
    }
    refused(&with("min_p", json!("0.1")), "min_p", "invalid_type");
}

#[test]
fn stop_token_ids_are_u32_ids_at_most_64() {
    let s = parse(&with("stop_token_ids", json!([2, 4294967295u32]))).unwrap();
    assert_eq!(s.sampling().stop_token_ids_value(), vec![2, u32::MAX]);
    refused(
        &with("stop_token_ids", json!([1, -2])),
        "stop_token_ids",
        "invalid_value",
    );
    refused(
        &with("stop_token_ids", json!([4294967296u64])),
        "stop_token_ids",
        "invalid_value",
    );
    refused(
        &with("stop_token_ids", json!((0..65).collect::<Vec<_>>())),
        "stop_token_ids",
        "invalid_value",
    );
    refused(
        &with("stop_token_ids", json!(2)),
        "stop_token_ids",
        "invalid_type",
    );
}
