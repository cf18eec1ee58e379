//! Handler tests through `tower::ServiceExt::oneshot`: the real router and engine handle, a mock
//! model. Expected token counts are derived from the mock's definition (one BOS, one role id,
//! one id per text byte, one placeholder per image replaced by its granularity).

mod common;

use common::*;
use grain_server::ServerConfig;
use serde_json::{json, Value};

fn content(resp: &TestResponse, choice: usize) -> String {
    resp.json()["choices"][choice]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn image_request(details: &[&str], extra: Value) -> Value {
    let mut parts = vec![json!({"type": "text", "text": "hi"})];
    for detail in details {
        parts.push(
            json!({"type": "image_url", "image_url": {"url": png_data_url(), "detail": detail}}),
        );
    }
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": parts}]});
    if let Value::Object(extra) = extra {
        body.as_object_mut().unwrap().extend(extra);
    }
    body
}

#[tokio::test]
async fn non_streaming_completion_has_the_openai_shape() {
    let h = harness(ServerConfig::default()).await;
    let resp = chat(&h.app, &user("hi")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["model"], MODEL);
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["logprobs"], Value::Null);
    let text = choice["message"]["content"].as_str().unwrap();
    assert_eq!(text.len(), ANSWER_LEN);
    assert!(
        text.bytes().all(|b| b.is_ascii_lowercase() || b == b' '),
        "{text:?}"
    );
    // BOS + role + "hi"; the answer plus its EOS.
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    assert_eq!(body["usage"]["completion_tokens"], ANSWER_LEN + 1);
    assert_eq!(body["usage"]["total_tokens"], 4 + ANSWER_LEN + 1);
    assert_eq!(body["usage"]["prompt_tokens_details"]["visual_tokens"], 0);
    assert!(resp.header("x-grain-granularity").is_none());
    let rid = resp.header("x-request-id").unwrap();
    assert_eq!(rid.len(), 32, "generated ids are uuid-v4 simple: {rid}");
}

#[tokio::test]
async fn greedy_is_deterministic_and_seeds_reproduce() {
    let h = harness(ServerConfig::default()).await;
    let greedy =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 0});
    assert_eq!(
        content(&chat(&h.app, &greedy).await, 0),
        content(&chat(&h.app, &greedy).await, 0)
    );

    let seeded = |seed: u64| {
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
               "temperature": 1.0, "seed": seed})
    };
    let a = content(&chat(&h.app, &seeded(42)).await, 0);
    let b = content(&chat(&h.app, &seeded(42)).await, 0);
    let c = content(&chat(&h.app, &seeded(43)).await, 0);
    assert_eq!(a, b, "same seed, same text");
    assert_ne!(a, c, "another seed samples another text");
}

#[tokio::test]
async fn max_tokens_truncates_with_finish_reason_length() {
    let h = harness(ServerConfig::default()).await;
    let mut body = user("hi");
    body["max_tokens"] = json!(3);
    let resp = chat(&h.app, &body).await;
    let json = resp.json();
    assert_eq!(json["choices"][0]["finish_reason"], "length");
    assert_eq!(
        json["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(json["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn stop_sequences_cut_the_text() {
    let h = harness(ServerConfig::default()).await;
    let mut body = user("stop test");
    body["temperature"] = json!(0);
    let full = content(&chat(&h.app, &body).await, 0);
    let stop = &full[3..5];
    let expected = &full[..full.find(stop).unwrap()];
    body["stop"] = json!([stop]);
    let resp = chat(&h.app, &body).await;
    assert_eq!(content(&resp, 0), expected);
    assert_eq!(resp.json()["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn n_choices_are_indexed_and_usage_sums_them() {
    let h = harness(ServerConfig::default()).await;
    let mut body = user("hi");
    body["n"] = json!(3);
    body["temperature"] = json!(1.0);
    body["seed"] = json!(7);
    let json = chat(&h.app, &body).await.json();
    let choices = json["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["finish_reason"], "stop");
    }
    assert_eq!(json["usage"]["completion_tokens"], 3 * (ANSWER_LEN + 1));
    assert_eq!(json["usage"]["prompt_tokens"], 4);
}

#[tokio::test]
async fn detail_low_costs_fewer_prompt_tokens_than_high() {
    let h = harness(ServerConfig::default()).await;
    let low = chat(&h.app, &image_request(&["low"], json!({}))).await;
    let high = chat(&h.app, &image_request(&["high"], json!({}))).await;
    assert_eq!(low.status, 200, "{}", low.text());
    let (low_json, high_json) = (low.json(), high.json());
    // Text: BOS + role + "hi" = 4; images: 36 vs 576 tokens for one crop.
    assert_eq!(low_json["usage"]["prompt_tokens"], 4 + 36);
    assert_eq!(high_json["usage"]["prompt_tokens"], 4 + 576);
    let details = &low_json["usage"]["prompt_tokens_details"];
    assert_eq!(details["visual_tokens"], 36);
    assert_eq!(details["visual_tokens_full"], 576);
    assert_eq!(details["granularity"], json!([36]));
    assert_eq!(details["granularity_source"], json!(["detail"]));
    assert_eq!(low.header("x-grain-granularity"), Some("36"));
    assert_eq!(high.header("x-grain-granularity"), Some("576"));
}

#[tokio::test]
async fn granularity_header_lists_every_image_in_order() {
    let h = harness(ServerConfig::default()).await;
    let resp = chat(&h.app, &image_request(&["auto", "low"], json!({}))).await;
    assert_eq!(resp.header("x-grain-granularity"), Some("144,36"));
    let details = &resp.json()["usage"]["prompt_tokens_details"];
    assert_eq!(details["granularity_source"], json!(["router", "detail"]));
    assert_eq!(details["visual_tokens"], 180);
    assert_eq!(details["visual_tokens_full"], 1152);
}

#[tokio::test]
async fn request_granularity_overrides_detail() {
    let h = harness(ServerConfig::default()).await;
    let resp = chat(
        &h.app,
        &image_request(&["high", "low"], json!({"granularity": 72})),
    )
    .await;
    assert_eq!(resp.header("x-grain-granularity"), Some("72,72"));
    let details = &resp.json()["usage"]["prompt_tokens_details"];
    assert_eq!(details["granularity_source"], json!(["request", "request"]));
}

#[tokio::test]
async fn logprobs_are_returned_per_token() {
    let h = harness(ServerConfig::default()).await;
    let mut body = user("hi");
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    let json = chat(&h.app, &body).await.json();
    let text = json["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let tokens = json["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(tokens.len(), ANSWER_LEN, "one entry per delivered token");
    let joined: String = tokens
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(joined, text);
    for t in tokens {
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
        assert_eq!(t["bytes"].as_array().unwrap().len(), 1);
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
    }
}

#[tokio::test]
async fn streaming_follows_the_openai_chunk_sequence() {
    let h = harness(ServerConfig::default()).await;
    let mut body = user("hi");
    body["temperature"] = json!(0);
    let reference = chat(&h.app, &body).await.json();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = chat(&h.app, &body).await;
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = resp.sse_events();
    assert_eq!(events.last().unwrap().1, "[DONE]");
    assert!(
        events.iter().all(|(name, _)| name.is_none()),
        "no error events"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(chunks
        .iter()
        .all(|c| c["id"] == id && c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| {
            c["choices"].get(0)?["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        text,
        reference["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
    );
    let finish: Vec<&Value> = chunks
        .iter()
        .filter(|c| {
            c["choices"]
                .get(0)
                .is_some_and(|ch| !ch["finish_reason"].is_null())
        })
        .collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0]["choices"][0]["finish_reason"], "stop");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], reference["usage"]);
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c.get("usage").is_none()));
}

#[tokio::test]
async fn streaming_without_include_usage_and_with_n() {
    let h = harness(ServerConfig::default()).await;
    let mut body = user("hi");
    body["stream"] = json!(true);
    body["n"] = json!(2);
    let events = chat(&h.app, &body).await.sse_events();
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    for index in [0, 1] {
        let of_choice: Vec<&Value> = chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == index)
            .collect();
        assert_eq!(of_choice[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(
            of_choice.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
    }
}

#[tokio::test]
async fn metrics_count_visual_tokens_and_requests() {
    let h = harness(ServerConfig::default()).await;
    assert_eq!(
        chat(&h.app, &image_request(&["low"], json!({})))
            .await
            .status,
        200
    );
    assert_eq!(
        chat(&h.app, &image_request(&["auto"], json!({})))
            .await
            .status,
        200
    );
    let resp = get(&h.app, "/metrics").await;
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = resp.text();
    // 576 − 36 for the low image, 576 − 144 for the routed one.
    assert_eq!(metric(&text, "grain_visual_tokens_saved_total"), 972.0);
    assert_eq!(
        metric(&text, "grain_visual_tokens_total{kind=\"selected\"}"),
        180.0
    );
    assert_eq!(
        metric(&text, "grain_visual_tokens_total{kind=\"full\"}"),
        1152.0
    );
    assert_eq!(
        metric(
            &text,
            "grain_granularity_selected_total{granularity=\"144\",source=\"router\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "grain_request_success_total{finish_reason=\"stop\"}"),
        2.0
    );
    assert_eq!(
        metric(&text, "grain_time_to_first_token_seconds_count"),
        2.0
    );
    assert_eq!(
        metric(&text, "grain_e2e_request_latency_seconds_count"),
        2.0
    );
    assert_eq!(
        metric(&text, "grain_request_prompt_tokens_sum"),
        (40 + 148) as f64
    );
    assert_eq!(metric(&text, "grain_num_requests_running"), 0.0);
}

#[tokio::test]
async fn logit_bias_bans_and_forces_tokens() {
    let h = harness(ServerConfig::default()).await;
    let mut body = user("hi");
    body["temperature"] = json!(0);
    let plain = content(&chat(&h.app, &body).await, 0);
    let first = plain.as_bytes()[0];
    body["logit_bias"] = json!({ first.to_string(): -100 });
    let banned = content(&chat(&h.app, &body).await, 0);
    assert_ne!(banned.as_bytes()[0], first, "{plain:?} vs {banned:?}");
    assert!(!banned.is_empty());
    // The mock's letters have logits of at most 4: +100 wins every step, sampled or not.
    body["temperature"] = json!(1.0);
    body["logit_bias"] = json!({ u32::from(b'q').to_string(): 100 });
    assert_eq!(
        content(&chat(&h.app, &body).await, 0),
        "q".repeat(ANSWER_LEN)
    );
    body["logit_bias"] = json!({"q": 100});
    let resp = chat(&h.app, &body).await;
    let err = assert_error(&resp, 400, "invalid_request_error", "invalid_value");
    assert_eq!(err["param"], "logit_bias");
}

/// A model whose first token is EOS still generated a token: the request has a time to first
/// token (observed when it finished), streamed or not.
#[tokio::test]
async fn an_answer_that_is_only_eos_has_a_time_to_first_token() {
    let h = harness_answering(ServerConfig::default(), 0).await;
    let resp = chat(&h.app, &user("hi")).await;
    assert_eq!(
        resp.json()["usage"]["completion_tokens"],
        1,
        "{}",
        resp.text()
    );
    assert_eq!(content(&resp, 0), "");
    let mut body = user("hi");
    body["stream"] = json!(true);
    let events = chat(&h.app, &body).await.sse_events();
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let text = get(&h.app, "/metrics").await.text();
    assert_eq!(
        metric(&text, "grain_time_to_first_token_seconds_count"),
        2.0
    );
    assert_eq!(
        metric(&text, "grain_e2e_request_latency_seconds_count"),
        2.0
    );
}

/// JSON mode on the mock model, which can only write letters and spaces: the grammar lets it
/// write leading whitespace, then nothing; the answer is a 400 naming `response_format`, or an
/// error event once streaming has begun, and the server keeps serving.
#[tokio::test]
async fn json_mode_on_a_model_that_cannot_write_json_is_a_clear_error() {
    let h = harness(ServerConfig::default()).await;
    let mut body = user("hi");
    body["response_format"] = json!({"type": "json_object"});
    body["max_tokens"] = json!(100);
    let resp = chat(&h.app, &body).await;
    let err = assert_error(&resp, 400, "invalid_request_error", "invalid_value");
    assert_eq!(err["param"], "response_format");
    body["stream"] = json!(true);
    let events = chat(&h.app, &body).await.sse_events();
    let (event, data) = &events[events.len() - 2];
    assert_eq!(event.as_deref(), Some("error"));
    let err: Value = serde_json::from_str(data).unwrap();
    assert_eq!(err["error"]["param"], "response_format");
    assert_eq!(events.last().unwrap().1, "[DONE]");
    body["response_format"] = json!({"type": "text"});
    body["stream"] = json!(false);
    assert_eq!(chat(&h.app, &body).await.status, 200);
}

/// Structured outputs: a strict schema the engine cannot enforce is a 400 naming the keyword and
/// `response_format.json_schema.schema`; a supported one (or, not strict, one whose narrowing
/// keywords are left unenforced) reaches the engine (the mock model, which writes only letters
/// and spaces, then cannot begin the object: the same 400 as JSON mode).
#[tokio::test]
async fn json_schema_is_compiled_and_unsupported_keywords_are_named() {
    let h = harness(ServerConfig::default()).await;
    let mut body = user("hi");
    let schema = json!({"type": "object", "properties": {
        "a": {"type": "array", "items": {"type": "integer"}, "uniqueItems": true}}});
    body["response_format"] = json!({"type": "json_schema",
        "json_schema": {"name": "t", "schema": schema, "strict": true}});
    let err = assert_error(
        &chat(&h.app, &body).await,
        400,
        "invalid_request_error",
        "invalid_value",
    );
    assert_eq!(err["param"], "response_format.json_schema.schema");
    assert!(
        err["message"].as_str().unwrap().contains("'uniqueItems'"),
        "{err}"
    );
    body["response_format"]["json_schema"]["strict"] = json!(false);
    let err = assert_error(
        &chat(&h.app, &body).await,
        400,
        "invalid_request_error",
        "invalid_value",
    );
    assert_eq!(
        err["param"], "response_format",
        "compiled best effort: {err}"
    );
    let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
    body["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "t", "schema": schema}});
    let err = assert_error(
        &chat(&h.app, &body).await,
        400,
        "invalid_request_error",
        "invalid_value",
    );
    assert_eq!(err["param"], "response_format");
    body["response_format"] = json!({"type": "text"});
    assert_eq!(chat(&h.app, &body).await.status, 200);
}

/// vLLM's `stop_token_ids`: the mock's tokens are bytes, so the answer stops right after the
/// first occurrence of the chosen byte, which it keeps.
#[tokio::test]
async fn stop_token_ids_end_the_answer_after_the_token() {
    let h = harness(ServerConfig::default()).await;
    let mut body = user("hi");
    body["temperature"] = json!(0);
    let plain = content(&chat(&h.app, &body).await, 0);
    let stop = plain.as_bytes()[2];
    let cut = plain.bytes().position(|b| b == stop).unwrap();
    body["stop_token_ids"] = json!([stop, 100_000]);
    let resp = chat(&h.app, &body).await;
    assert_eq!(content(&resp, 0), plain[..=cut]);
    assert_eq!(resp.json()["choices"][0]["finish_reason"], "stop");
    body["stop_token_ids"] = json!([-1]);
    let err = assert_error(
        &chat(&h.app, &body).await,
        400,
        "invalid_request_error",
        "invalid_value",
    );
    assert_eq!(err["param"], "stop_token_ids");
}
