//! Every error kind reaches the client with its status and OpenAI error shape.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use base64::Engine as _;
use common::*;
use grain_engine::{EngineConfig, EngineHandle};
use grain_metrics::Metrics;
use grain_server::{AppState, ServerConfig};
use prometheus::Registry;
use serde_json::{json, Value};

fn with_image(url: &str) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": url}}]}]})
}

#[tokio::test]
async fn validation_errors_are_400_with_the_param() {
    let h = harness(ServerConfig::default()).await;
    let resp = send(&h.app, post("/v1/chat/completions", "{\"model\": ")).await;
    assert_error(&resp, 400, "invalid_request_error", "invalid_json");

    let mut body = user("hi");
    body["tools"] = json!([{"type": "function"}]);
    let err = assert_error(
        &chat(&h.app, &body).await,
        400,
        "invalid_request_error",
        "invalid_value",
    );
    assert_eq!(err["param"], "tools[0].function");

    let mut body = user("hi");
    body["functions"] = json!([{"name": "f"}]);
    let err = assert_error(
        &chat(&h.app, &body).await,
        400,
        "invalid_request_error",
        "unsupported_parameter",
    );
    assert_eq!(err["param"], "functions");

    let mut body = user("hi");
    body["temprature"] = json!(1);
    let err = assert_error(
        &chat(&h.app, &body).await,
        400,
        "invalid_request_error",
        "unknown_parameter",
    );
    assert_eq!(err["param"], "temprature");

    let mut body = user("hi");
    body["temperature"] = json!(5);
    let err = assert_error(
        &chat(&h.app, &body).await,
        400,
        "invalid_request_error",
        "invalid_value",
    );
    assert_eq!(err["param"], "temperature");

    let mut body = user("hi");
    body["n"] = json!("two");
    assert_error(
        &chat(&h.app, &body).await,
        400,
        "invalid_request_error",
        "invalid_type",
    );
}

#[tokio::test]
async fn unknown_model_route_and_method() {
    let h = harness(ServerConfig::default()).await;
    let mut body = user("hi");
    body["model"] = json!("gpt-4o");
    let err = assert_error(
        &chat(&h.app, &body).await,
        404,
        "invalid_request_error",
        "model_not_found",
    );
    assert_eq!(err["param"], "model");
    assert!(err["message"].as_str().unwrap().contains("gpt-4o"));
    assert_error(
        &get(&h.app, "/v1/models/gpt-4o").await,
        404,
        "invalid_request_error",
        "model_not_found",
    );
    assert_error(
        &get(&h.app, "/v1/nope").await,
        404,
        "invalid_request_error",
        "not_found",
    );
    assert_error(
        &get(&h.app, "/v1/chat/completions").await,
        405,
        "invalid_request_error",
        "method_not_allowed",
    );
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let h = harness(ServerConfig {
        max_body_bytes: 8 * 1024,
        ..ServerConfig::default()
    })
    .await;
    let big = user(&"x".repeat(20 * 1024));
    let resp = chat(&h.app, &big).await;
    assert_error(&resp, 413, "invalid_request_error", "payload_too_large");
    // The unread rest of the body makes the connection unusable: keep-alive clients are told.
    assert_eq!(resp.header("connection"), Some("close"));
}

#[tokio::test]
async fn missing_and_wrong_api_keys_are_401() {
    let h = harness(ServerConfig {
        api_keys: vec!["sk-right".into()],
        ..ServerConfig::default()
    })
    .await;
    let resp = chat(&h.app, &user("hi")).await;
    let err = assert_error(&resp, 401, "invalid_request_error", "invalid_api_key");
    assert!(err["message"].as_str().unwrap().contains("didn't provide"));
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    let wrong = Request::post("/v1/chat/completions")
        .header("authorization", "Bearer sk-wrong")
        .body(Body::from(user("hi").to_string()))
        .unwrap();
    let err = assert_error(
        &send(&h.app, wrong).await,
        401,
        "invalid_request_error",
        "invalid_api_key",
    );
    assert!(err["message"].as_str().unwrap().contains("Incorrect"));
    // A refused request's body is never read, so its connection cannot carry another request:
    // keep-alive clients are told. A request without a body keeps its connection.
    assert_eq!(resp.header("connection"), Some("close"));
    let models = Request::get("/v1/models").body(Body::empty()).unwrap();
    let resp = send(&h.app, models).await;
    assert_error(&resp, 401, "invalid_request_error", "invalid_api_key");
    assert_eq!(resp.header("connection"), None);
}

#[tokio::test]
async fn broken_images_are_400_invalid_image() {
    let h = harness(ServerConfig::default()).await;
    let param = "messages[0].content[1].image_url.url";
    for url in [
        "data:image/png;base64,@@not-base64@@".to_owned(),
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(b"plain text")
        ),
        "data:image/png,rawbytes".to_owned(),
        "https://example.com/cat.png".to_owned(),
        "ftp://example.com/cat.png".to_owned(),
    ] {
        let err = assert_error(
            &chat(&h.app, &with_image(&url)).await,
            400,
            "invalid_request_error",
            "invalid_image",
        );
        assert_eq!(err["param"], param, "{url}");
    }
    // A PNG signature with a body the preprocessor cannot decode: refused by the engine.
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(b"corrupt");
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    );
    let err = assert_error(
        &chat(&h.app, &with_image(&url)).await,
        400,
        "invalid_request_error",
        "invalid_image",
    );
    assert!(
        err["message"].as_str().unwrap().contains("cannot decode"),
        "{err}"
    );
}

#[tokio::test]
async fn engine_refusals_keep_their_meaning() {
    let h = harness(ServerConfig::default()).await;
    // 8 images at 576 tokens: 4608 visual tokens > the 4096 context.
    let parts: Vec<Value> = (0..8)
        .map(|_| json!({"type": "image_url", "image_url": {"url": png_data_url(), "detail": "high"}}))
        .collect();
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": parts}]});
    let err = assert_error(
        &chat(&h.app, &body).await,
        400,
        "invalid_request_error",
        "context_length_exceeded",
    );
    assert_eq!(err["param"], "messages");

    let mut body = with_image(&png_data_url());
    body["granularity"] = json!(100);
    let err = assert_error(
        &chat(&h.app, &body).await,
        400,
        "invalid_request_error",
        "invalid_value",
    );
    assert_eq!(err["param"], "granularity");
}

#[tokio::test]
async fn model_failures_are_500_without_internals() {
    let h = harness(ServerConfig::default()).await;
    let resp = chat(&h.app, &user("[fail-mid]")).await;
    let err = assert_error(&resp, 500, "server_error", "internal_error");
    assert!(!resp.text().contains("/dev/secret"), "{}", resp.text());
    assert!(err["param"].is_null());
}

#[tokio::test]
async fn errors_after_streaming_started_are_sse_error_events() {
    let h = harness(ServerConfig::default()).await;
    let mut body = user("[fail-mid]");
    body["stream"] = json!(true);
    let resp = chat(&h.app, &body).await;
    assert_eq!(resp.status, 200);
    let events = resp.sse_events();
    let (name, data) = &events[events.len() - 2];
    assert_eq!(name.as_deref(), Some("error"));
    let error: Value = serde_json::from_str(data).unwrap();
    assert_eq!(error["error"]["type"], "server_error");
    assert_eq!(error["error"]["code"], "internal_error");
    assert!(!data.contains("/dev/secret"));
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let text: String = events[..events.len() - 2]
        .iter()
        .filter_map(|(_, d)| {
            let v: Value = serde_json::from_str(d).ok()?;
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        text.len(),
        2,
        "the two tokens before the fault were streamed"
    );
}

#[tokio::test]
async fn overload_is_429_with_retry_after() {
    let engine = EngineConfig {
        max_concurrent_requests: 1,
        retry_after_s: 7,
        ..engine_config()
    };
    let h = harness_with(ServerConfig::default(), engine).await;
    let app = h.app.clone();
    let first = tokio::spawn(async move { chat(&app, &user("[gate]")).await });
    h.control.until_waiting().await;
    let resp = chat(&h.app, &user("hi")).await;
    assert_error(&resp, 429, "rate_limit_error", "overloaded");
    assert_eq!(resp.header("retry-after"), Some("7"));
    h.control.open_gate();
    assert_eq!(first.await.unwrap().status, 200);
    let metrics = get(&h.app, "/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            "grain_request_failure_total{error=\"overloaded\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn draining_is_503() {
    let h = harness(ServerConfig::default()).await;
    h.state.begin_drain();
    assert_error(
        &chat(&h.app, &user("hi")).await,
        503,
        "server_error",
        "shutting_down",
    );
    let ready = get(&h.app, "/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "draining");
    assert_eq!(get(&h.app, "/health").await.status, 200, "still alive");
}

#[tokio::test]
async fn loading_model_is_503_not_ready() {
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let engine = EngineHandle::start(
        engine_config(),
        card(),
        Arc::new(MockPreprocessor),
        move || {
            // Loads only when the test says so.
            let _ = wait.recv();
            Err::<common::MockRunner, _>("load aborted by the test".to_owned())
        },
    )
    .unwrap();
    let registry = Registry::new();
    let metrics = Metrics::register(&registry, &GRANULARITIES).unwrap();
    let state = AppState::new(engine, ServerConfig::default(), metrics, registry).unwrap();
    let app = grain_server::router(state);
    assert_eq!(get(&app, "/ready").await.json()["status"], "loading");
    assert_eq!(get(&app, "/ready").await.status, 503);
    assert_error(
        &chat(&app, &user("hi")).await,
        503,
        "server_error",
        "not_ready",
    );
    drop(release);
}

#[tokio::test]
async fn slow_requests_time_out_with_504() {
    let h = harness(ServerConfig {
        request_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    })
    .await;
    let resp = chat(&h.app, &user("[gate]")).await;
    assert_error(&resp, 504, "server_error", "timeout");
    // A stream that has started ends with an error event instead (fresh engine: the first one
    // is parked at the gate).
    let h = harness(ServerConfig {
        request_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    })
    .await;
    let mut body = user("[gate]");
    body["stream"] = json!(true);
    let events = chat(&h.app, &body).await.sse_events();
    let (name, data) = &events[events.len() - 2];
    assert_eq!(name.as_deref(), Some("error"));
    assert!(data.contains("\"timeout\""), "{data}");
    assert_eq!(events.last().unwrap().1, "[DONE]");
}
