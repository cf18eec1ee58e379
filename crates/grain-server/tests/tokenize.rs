//! `POST /tokenize` and `POST /detokenize` through the real router and engine handle with the
//! mock model, whose preprocessor speaks bytes: BOS, then (for chat) a role id, then the text.

mod common;

use common::*;
use grain_server::ServerConfig;
use serde_json::{json, Value};

async fn call(h: &Harness, path: &str, body: &Value) -> TestResponse {
    send(&h.app, post(path, body.to_string())).await
}

fn bytes(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

#[tokio::test]
async fn a_prompt_and_chat_messages_become_the_ids_a_completion_gets() {
    let h = harness(ServerConfig::default()).await;
    let resp = call(&h, "/tokenize", &json!({"prompt": "hi"})).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let mut want = vec![BOS];
    want.extend(bytes("hi"));
    assert_eq!(
        resp.json(),
        json!({"count": 3, "max_model_len": CONTEXT, "tokens": want})
    );
    // Messages go through the chat template: the mock's adds a role id per message.
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let chat_ids = call(&h, "/tokenize", &body).await.json();
    let mut want = vec![BOS, u32::from(b'U')];
    want.extend(bytes("hi"));
    assert_eq!(chat_ids["tokens"], json!(want));
    // The count is what a chat completion of the same messages reports.
    let completion = chat(&h.app, &user("hi")).await.json();
    assert_eq!(completion["usage"]["prompt_tokens"], chat_ids["count"]);
}

#[tokio::test]
async fn detokenize_inverts_tokenize() {
    let h = harness(ServerConfig::default()).await;
    let ids = call(&h, "/tokenize", &json!({"prompt": "héllo wörld"}))
        .await
        .json()["tokens"]
        .clone();
    let resp = call(&h, "/detokenize", &json!({"tokens": ids})).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json(), json!({"prompt": "<s>héllo wörld"}));
    let empty = call(&h, "/detokenize", &json!({"model": MODEL, "tokens": []})).await;
    assert_eq!(empty.json(), json!({"prompt": ""}));
}

#[tokio::test]
async fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let h = harness(ServerConfig::default()).await;
    let image = json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}});
    for (path, body, param) in [
        ("/tokenize", json!({}), "prompt"),
        (
            "/tokenize",
            json!({"prompt": "a", "messages": []}),
            "prompt",
        ),
        (
            "/tokenize",
            json!({"prompt": "a", "add_special_tokens": true}),
            "add_special_tokens",
        ),
        (
            "/tokenize",
            json!({"messages": [{"role": "user", "content": [image]}]}),
            "messages[0].content[0]",
        ),
        ("/detokenize", json!({"tokens": [1, -1]}), "tokens"),
        // Past the mock's vocabulary: refused by its preprocessor.
        ("/detokenize", json!({"tokens": [1, 999]}), "tokens"),
        ("/detokenize", json!({"prompt": "a"}), "prompt"),
    ] {
        let resp = call(&h, path, &body).await;
        assert_eq!(resp.status, 400, "{path} {body}: {}", resp.text());
        assert_eq!(resp.json()["error"]["param"], param, "{path} {body}");
    }
    let resp = call(&h, "/tokenize", &json!({"model": "nope", "prompt": "a"})).await;
    assert_error(&resp, 404, "invalid_request_error", "model_not_found");
    assert_eq!(
        call(&h, "/tokenize", &json!({"prompt": "a"})).await.status,
        200
    );
}
