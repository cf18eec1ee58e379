//! `/v1/completions` with `echo` and `logprobs`: the prompt's tokens come first in the legacy
//! log-probability lists (the first with `null` scores), streamed or not, for text and token-id
//! prompts, and `max_tokens: 0` only scores the prompt. The mock model tokenizes a prompt as BOS
//! plus one id per byte; the engine's own tests check the scores' values.

mod common;

use common::*;
use grain_server::ServerConfig;
use serde_json::{json, Value};

async fn complete(h: &Harness, body: &Value) -> Value {
    let resp = send(&h.app, post("/v1/completions", body.to_string())).await;
    assert_eq!(resp.status, 200, "{body}: {}", resp.text());
    resp.json()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn echo_with_logprobs_scores_the_prompt_before_the_answer() {
    let h = harness(ServerConfig::default()).await;
    let base = json!({"model": MODEL, "prompt": "hi there", "max_tokens": 64, "temperature": 0,
                      "logprobs": 2});
    let plain = complete(&h, &base).await;
    let mut body = base.clone();
    body["echo"] = json!(true);
    let echoed = complete(&h, &body).await;
    let choice = &echoed["choices"][0];
    let answer = plain["choices"][0]["text"].as_str().unwrap();
    assert_eq!(choice["text"], format!("hi there{answer}"));

    let lp = &choice["logprobs"];
    let tokens = strings(&lp["tokens"]);
    let prompt_len = "hi there".len() + 1;
    assert_eq!(tokens[..prompt_len].concat(), "<s>hi there");
    assert_eq!(tokens[prompt_len..].concat(), answer);
    assert_eq!(lp["token_logprobs"][0], Value::Null, "nothing precedes BOS");
    assert_eq!(lp["top_logprobs"][0], Value::Null);
    for (i, token) in tokens.iter().enumerate().skip(1) {
        let logprob = lp["token_logprobs"][i].as_f64().unwrap();
        assert!(logprob <= 0.0, "token {i}");
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert_eq!(
            top[token.as_str()].as_f64().unwrap(),
            logprob,
            "token {i} is listed"
        );
        assert!(
            (1..=3).contains(&top.len()),
            "two alternatives plus the token"
        );
    }
    // The generated part is what the request without echo got, offsets shifted by the prompt.
    let plain_lp = &plain["choices"][0]["logprobs"];
    assert_eq!(
        lp["token_logprobs"].as_array().unwrap()[prompt_len..],
        plain_lp["token_logprobs"].as_array().unwrap()[..]
    );
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    let want: Vec<u64> = tokens
        .iter()
        .scan(0u64, |at, t| {
            let here = *at;
            *at += t.chars().count() as u64;
            Some(here)
        })
        .collect();
    assert_eq!(offsets, want, "offsets count the tokens' texts");
    assert_eq!(echoed["usage"], plain["usage"]);

    // Streamed: the echo and the prompt's scores come first, in one chunk; the whole is equal.
    body["stream"] = json!(true);
    let chunks = send(&h.app, post("/v1/completions", body.to_string()))
        .await
        .sse_chunks();
    let first = &chunks[0]["choices"][0];
    assert_eq!(first["text"], "hi there");
    assert_eq!(
        strings(&first["logprobs"]["tokens"]).concat(),
        "<s>hi there"
    );
    let mut streamed_tokens = Vec::new();
    let mut streamed_logprobs = Vec::new();
    let mut text = String::new();
    for c in &chunks {
        let c = &c["choices"][0];
        text.push_str(c["text"].as_str().unwrap());
        if !c["logprobs"].is_null() {
            streamed_tokens.extend(strings(&c["logprobs"]["tokens"]));
            streamed_logprobs.extend(c["logprobs"]["token_logprobs"].as_array().unwrap().clone());
        }
    }
    assert_eq!(text, choice["text"].as_str().unwrap());
    assert_eq!(streamed_tokens, tokens);
    assert_eq!(
        &streamed_logprobs[..],
        lp["token_logprobs"].as_array().unwrap().as_slice()
    );
}

#[tokio::test]
async fn token_ids_echo_as_their_text_and_max_tokens_zero_only_scores() {
    let h = harness(ServerConfig::default()).await;
    let ids = [BOS, u32::from(b'h'), u32::from(b'i'), u32::from(b'!')];
    // lm-eval's loglikelihood request: ids, echo, one alternative, one generated token.
    let body = json!({"model": MODEL, "prompt": [ids], "echo": true, "logprobs": 1,
                      "max_tokens": 1, "temperature": 0});
    let one = complete(&h, &body).await;
    let choice = &one["choices"][0];
    assert!(
        choice["text"].as_str().unwrap().starts_with("<s>hi!"),
        "{choice}"
    );
    let lp = &choice["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), ids.len() + 1);

    let mut body = body.clone();
    body["max_tokens"] = json!(0);
    let scored = complete(&h, &body).await;
    let choice = &scored["choices"][0];
    assert_eq!(choice["text"], "<s>hi!");
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(scored["usage"]["completion_tokens"], 0);
    assert_eq!(scored["usage"]["prompt_tokens"], ids.len());
    let lp = &choice["logprobs"];
    assert_eq!(strings(&lp["tokens"]), vec!["<s>", "h", "i", "!"]);
    // The mock model gives punctuation no chance: its score is the documented floor.
    assert_eq!(lp["token_logprobs"][3], json!(-9999.0));
    // The same prompt's scores whether or not a token follows.
    assert_eq!(
        lp["token_logprobs"].as_array().unwrap()[..],
        one["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()[..ids.len()]
    );

    // An id past the vocabulary is a bad prompt, echoed or not.
    for echo in [true, false] {
        let body = json!({"model": MODEL, "prompt": [BOS, 999], "echo": echo, "max_tokens": 1});
        let resp = send(&h.app, post("/v1/completions", body.to_string())).await;
        assert_eq!(resp.status, 400, "{}", resp.text());
        assert_eq!(resp.json()["error"]["param"], "prompt", "echo {echo}");
    }

    // Echo without logprobs: the prompt and nothing else, and no log-probabilities.
    let bare = complete(
        &h,
        &json!({"model": MODEL, "prompt": "abc", "echo": true, "max_tokens": 0}),
    )
    .await;
    assert_eq!(bare["choices"][0]["text"], "abc");
    assert_eq!(bare["choices"][0]["logprobs"], Value::Null);
    let engine = h.state.engine();
    assert!(engine.wait_idle(std::time::Duration::from_secs(20)).await);
    assert_eq!(engine.stats().kv_blocks_used, 0);
}
