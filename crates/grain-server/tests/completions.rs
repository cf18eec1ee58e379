//! `POST /v1/completions` through the real router and engine handle with the mock model. The
//! mock tokenizes a raw prompt as BOS plus one id per byte (no role id: no chat template).

mod common;

use common::*;
use grain_server::ServerConfig;
use serde_json::{json, Value};

async fn complete(h: &Harness, body: &Value) -> TestResponse {
    send(&h.app, post("/v1/completions", body.to_string())).await
}

fn prompt(text: &str) -> Value {
    json!({"model": MODEL, "prompt": text, "max_tokens": 64, "temperature": 0})
}

#[tokio::test]
async fn a_text_completion_has_the_openai_shape() {
    let h = harness(ServerConfig::default()).await;
    let resp = complete(&h, &prompt("hi")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["model"], MODEL);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["text"].as_str().unwrap().len(), ANSWER_LEN);
    // BOS + "hi", no role id; the answer plus its EOS.
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    assert_eq!(body["usage"]["completion_tokens"], ANSWER_LEN + 1);

    // The same text as a chat message costs one more prompt token: the mock template's role id.
    let chat_resp = chat(&h.app, &user("hi")).await.json();
    assert_eq!(chat_resp["usage"]["prompt_tokens"], 4);
}

#[tokio::test]
async fn default_max_tokens_is_openais_sixteen() {
    let h = harness(ServerConfig::default()).await;
    let resp = complete(&h, &json!({"model": MODEL, "prompt": "hi"})).await;
    let body = resp.json();
    let used = body["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(used, (ANSWER_LEN as u64 + 1).min(16), "{body}");
}

#[tokio::test]
async fn echo_prepends_the_prompt_and_logprobs_follow_the_legacy_shape() {
    let h = harness(ServerConfig::default()).await;
    let mut body = prompt("hi");
    body["echo"] = json!(true);
    let echoed = complete(&h, &body).await.json();
    let plain = complete(&h, &prompt("hi")).await.json();
    assert_eq!(
        echoed["choices"][0]["text"].as_str().unwrap(),
        format!("hi{}", plain["choices"][0]["text"].as_str().unwrap())
    );

    let mut body = prompt("hi");
    body["logprobs"] = json!(2);
    let json = complete(&h, &body).await.json();
    let choice = &json["choices"][0];
    let lp = &choice["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), ANSWER_LEN);
    assert_eq!(tokens.concat(), choice["text"].as_str().unwrap());
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (0..ANSWER_LEN as u64).collect::<Vec<_>>());
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        let sampled = lp["token_logprobs"][i].as_f64().unwrap();
        assert!(sampled <= 0.0);
        assert!((1..=3).contains(&top.len()), "top 2 plus the sampled token");
        assert_eq!(top[tokens[i]].as_f64().unwrap(), sampled);
        // Greedy: nothing listed is more likely than the sampled token.
        assert!(top.values().all(|v| v.as_f64().unwrap() <= sampled));
    }
}

#[tokio::test]
async fn streaming_sends_text_chunks_then_usage_then_done() {
    let h = harness(ServerConfig::default()).await;
    let reference = complete(&h, &prompt("hi")).await.json();
    let mut body = prompt("hi");
    body["stream"] = json!(true);
    body["echo"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = complete(&h, &body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let chunks = resp.sse_chunks();
    let ids: std::collections::HashSet<&str> =
        chunks.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one id for the whole stream");
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(
        chunks[0]["choices"][0]["text"], "hi",
        "the echo comes first"
    );
    let (usage, texts) = chunks.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], reference["usage"]);
    let text: String = texts
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    let want = format!("hi{}", reference["choices"][0]["text"].as_str().unwrap());
    assert_eq!(text, want);
    let finishes: Vec<&Value> = texts
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|r| !r.is_null())
        .collect();
    assert_eq!(finishes, vec![&json!("stop")]);
}

#[tokio::test]
async fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let h = harness(ServerConfig::default()).await;
    for (body, param) in [
        (json!({"model": MODEL, "prompt": [1, 2, 3.5]}), "prompt"),
        // Past the vocabulary: refused by the preprocessor, before admission.
        (json!({"model": MODEL, "prompt": [1, 2, 999]}), "prompt"),
        (json!({"model": MODEL, "prompt": [[1], [IMAGE]]}), "prompt"),
        (
            json!({"model": MODEL, "prompt": [1, 2], "max_tokens": 0}),
            "max_tokens",
        ),
        (json!({"model": MODEL, "prompt": ["a", ""]}), "prompt"),
        (
            json!({"model": MODEL, "prompt": "a", "suffix": "b"}),
            "suffix",
        ),
        (json!({"model": MODEL, "messages": []}), "messages"),
        (
            json!({"model": MODEL, "prompt": "a", "max_tokens": -1}),
            "max_tokens",
        ),
    ] {
        let resp = complete(&h, &body).await;
        let err = &resp.json()["error"];
        assert_eq!(resp.status, 400, "{body}: {}", resp.text());
        assert_eq!(err["type"], "invalid_request_error");
        assert_eq!(err["param"], param, "{body}");
    }
    let resp = complete(&h, &json!({"model": "nope", "prompt": "a"})).await;
    assert_error(&resp, 404, "invalid_request_error", "model_not_found");
    assert_eq!(complete(&h, &prompt("hi")).await.status, 200);
}

#[tokio::test]
async fn several_prompts_are_answered_as_prompts_times_n_choices() {
    let h = harness(ServerConfig::default()).await;
    let alone = |p: &str| {
        let body = prompt(p);
        let h = &h;
        async move { complete(h, &body).await.json() }
    };
    let (hi, hello) = (alone("hi").await, alone("hello").await);
    let mut body = json!({"model": MODEL, "prompt": ["hi", "hello"], "n": 2, "max_tokens": 64,
                          "temperature": 0, "echo": true});
    let both = complete(&h, &body).await.json();
    let choices = both["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i, "choice j of prompt i is i*n + j");
        let (p, alone) = if i < 2 {
            ("hi", &hi)
        } else {
            ("hello", &hello)
        };
        let want = format!("{p}{}", alone["choices"][0]["text"].as_str().unwrap());
        assert_eq!(
            c["text"],
            want.as_str(),
            "greedy, with its own prompt echoed"
        );
    }
    // Usage adds up the two engine requests: 3 + 6 prompt tokens, 2 choices each.
    assert_eq!(both["usage"]["prompt_tokens"], 9);
    let each = hi["usage"]["completion_tokens"].as_u64().unwrap()
        + hello["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(
        both["usage"]["completion_tokens"].as_u64().unwrap(),
        2 * each
    );

    body["stream"] = json!(true);
    let events = complete(&h, &body).await.sse_events();
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let mut texts = vec![String::new(); 4];
    let mut finished = 0;
    for (_, data) in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(data).unwrap();
        for c in chunk["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            texts[i].push_str(c["text"].as_str().unwrap());
            finished += usize::from(!c["finish_reason"].is_null());
        }
    }
    assert_eq!(finished, 4);
    let want: Vec<&str> = choices
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, want);
}

#[tokio::test]
async fn a_token_id_prompt_is_answered_as_its_text() {
    let h = harness(ServerConfig::default()).await;
    let ids = |text: &str| -> Vec<u32> {
        std::iter::once(BOS)
            .chain(text.bytes().map(u32::from))
            .collect()
    };
    let (hi, yo) = (
        complete(&h, &prompt("hi")).await.json(),
        complete(&h, &prompt("yo")).await.json(),
    );
    assert_ne!(hi["choices"][0]["text"], yo["choices"][0]["text"]);
    let mut body = prompt("");
    body["prompt"] = json!(ids("hi"));
    let by_ids = complete(&h, &body).await;
    assert_eq!(by_ids.status, 200, "{}", by_ids.text());
    let by_ids = by_ids.json();
    assert_eq!(by_ids["choices"][0]["text"], hi["choices"][0]["text"]);
    assert_eq!(by_ids["usage"], hi["usage"]);
    // Several token-id prompts: one choice each, in order.
    body["prompt"] = json!([ids("hi"), ids("yo")]);
    let both = complete(&h, &body).await.json();
    assert_eq!(both["choices"][0]["text"], hi["choices"][0]["text"]);
    assert_eq!(both["choices"][1]["text"], yo["choices"][0]["text"]);
    assert_eq!(both["choices"][1]["index"], 1);
}
