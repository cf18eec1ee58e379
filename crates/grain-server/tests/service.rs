//! The service around the model endpoints, through `tower::ServiceExt::oneshot` (the real router
//! and engine handle, a mock model): the model list and its aliases, probes and request ids, API
//! keys and CORS.

mod common;

use axum::body::Body;
use axum::http::Request;
use common::*;
use grain_server::ServerConfig;
use serde_json::json;

#[tokio::test]
async fn models_list_and_aliases() {
    let config = ServerConfig {
        model_aliases: vec!["short".into()],
        ..ServerConfig::default()
    };
    let h = harness(config).await;
    let list = get(&h.app, "/v1/models").await.json();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![MODEL, "short"]);
    assert_eq!(list["data"][0]["object"], "model");
    assert_eq!(list["data"][0]["max_model_len"], CONTEXT);
    assert_eq!(list["data"][0]["granularities"], json!(GRANULARITIES));
    assert_eq!(
        get(&h.app, &format!("/v1/models/{MODEL}")).await.json()["id"],
        MODEL
    );

    let mut body = user("hi");
    body["model"] = json!("short");
    let resp = chat(&h.app, &body).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.json()["model"],
        MODEL,
        "responses name the served model"
    );
}

#[tokio::test]
async fn probes_and_request_ids() {
    let h = harness(ServerConfig::default()).await;
    assert_eq!(get(&h.app, "/health").await.json()["status"], "ok");
    let ready = get(&h.app, "/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");

    let req = Request::get("/health")
        .header("x-request-id", "client-id-1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send(&h.app, req).await.header("x-request-id"),
        Some("client-id-1")
    );
    let req = Request::get("/health")
        .header("x-request-id", "bad id\twith tab")
        .body(Body::empty())
        .unwrap();
    assert_ne!(
        send(&h.app, req).await.header("x-request-id"),
        Some("bad id\twith tab")
    );
}

#[tokio::test]
async fn api_keys_guard_v1_routes_only() {
    let config = ServerConfig {
        api_keys: vec!["sk-test-key".into()],
        ..ServerConfig::default()
    };
    let h = harness(config).await;
    let authed = Request::post("/v1/chat/completions")
        .header("authorization", "Bearer sk-test-key")
        .body(Body::from(user("hi").to_string()))
        .unwrap();
    assert_eq!(send(&h.app, authed).await.status, 200);
    assert_eq!(get(&h.app, "/health").await.status, 200);
    assert_eq!(get(&h.app, "/metrics").await.status, 200);
    assert_eq!(get(&h.app, "/v1/models").await.status, 401);
}

#[tokio::test]
async fn cors_is_off_by_default_and_configurable() {
    let preflight = || {
        Request::options("/v1/chat/completions")
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "POST")
            .body(Body::empty())
            .unwrap()
    };
    let h = harness(ServerConfig::default()).await;
    assert!(send(&h.app, preflight())
        .await
        .header("access-control-allow-origin")
        .is_none());
    let h = harness(ServerConfig {
        cors_allowed_origins: vec!["https://app.example.com".into()],
        ..ServerConfig::default()
    })
    .await;
    let resp = send(&h.app, preflight()).await;
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
}
