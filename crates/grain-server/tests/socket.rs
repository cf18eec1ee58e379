//! Real sockets on port 0: streaming through `serve`, graceful drain, and image URLs fetched
//! from a local HTTP server through the SSRF guard.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::response::Redirect;
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use common::*;
use grain_server::{HttpFetchConfig, ImageConfig, ServerConfig};
use serde_json::{json, Value};
use tokio::net::TcpListener;

struct Running {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), grain_server::ServerError>>,
}

async fn start(h: &Harness) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(grain_server::serve(listener, h.state.clone(), async move {
        let _ = stopped.await;
    }));
    Running {
        base: format!("http://{addr}"),
        stop: Some(stop),
        task,
    }
}

/// Reads a whole streaming response chunk by chunk, as a client would.
async fn read_stream(resp: reqwest::Response) -> String {
    let mut resp = resp;
    let mut text = String::new();
    while let Some(chunk) = resp.chunk().await.expect("stream chunk") {
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8 chunk"));
    }
    text
}

/// POSTs JSON (reqwest is built without its `json` feature).
async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> reqwest::Response {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

fn streaming(text: &str) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": true})
}

#[tokio::test]
async fn concurrent_streams_over_a_real_socket() {
    let h = harness(ServerConfig::default()).await;
    let server = start(&h).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", server.base);
    let sends = (0..3).map(|i| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let resp = post_json(&client, &url, &streaming(&format!("hello {i}"))).await;
            assert_eq!(resp.status(), 200);
            assert!(resp.headers().contains_key("x-request-id"));
            read_stream(resp).await
        }
    });
    for body in futures_util::future::join_all(sends).await {
        let events = parse_sse(&body);
        assert_eq!(events.last().unwrap().1, "[DONE]");
        let ids: Vec<String> = events[..events.len() - 1]
            .iter()
            .map(|(_, d)| {
                serde_json::from_str::<Value>(d).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "one id per stream");
        let text: String = events[..events.len() - 1]
            .iter()
            .filter_map(|(_, d)| {
                serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(text.len(), ANSWER_LEN);
    }
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_ones() {
    let h = harness(ServerConfig::default()).await;
    let mut server = start(&h).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", server.base);
    let in_flight = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let resp = post_json(&client, &url, &streaming("[gate]")).await;
            read_stream(resp).await
        })
    };
    h.control.until_waiting().await;

    server.stop.take().unwrap().send(()).unwrap();
    // The drain starts as soon as the shutdown future resolves; poll until it shows.
    let ready = format!("{}/ready", server.base);
    let mut draining = false;
    for _ in 0..1000 {
        if client.get(&ready).send().await.unwrap().status() == 503 {
            draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(draining, "/ready never turned 503");
    let refused = post_json(&client, &url, &user("hi")).await;
    assert_eq!(refused.status(), 503);
    let body: Value = serde_json::from_slice(&refused.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "shutting_down");

    h.control.open_gate();
    let finished = in_flight.await.unwrap();
    let events = parse_sse(&finished);
    assert_eq!(events.last().unwrap().1, "[DONE]", "{finished}");
    assert!(
        events.iter().all(|(name, _)| name.is_none()),
        "no error event: {finished}"
    );
    let result = tokio::time::timeout(Duration::from_secs(30), server.task)
        .await
        .expect("serve returns after the drain")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

fn png_bytes() -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(PNG_1X1)
        .unwrap()
}

/// A local image host: `/cat.png`, `/big` (2 MiB), `/loop` (redirects to itself), `/to-ip`
/// (redirects to the same server by IP literal) and `/missing` (404).
async fn image_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let to_ip = format!("http://127.0.0.1:{}/cat.png", addr.port());
    let app = Router::new()
        .route(
            "/cat.png",
            get(|| async { ([("content-type", "image/png")], png_bytes()) }),
        )
        .route("/big", get(|| async { vec![0x89u8; 2 * 1024 * 1024] }))
        .route("/loop", get(|| async { Redirect::temporary("/loop") }))
        .route(
            "/to-ip",
            get(move || async move { Redirect::temporary(&to_ip) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn fetching(allow_private: bool, allowed_hosts: &[&str]) -> ServerConfig {
    ServerConfig {
        images: ImageConfig {
            max_image_bytes: 1024 * 1024,
            http: Some(HttpFetchConfig {
                timeout: Duration::from_secs(10),
                max_redirects: 3,
                allow_private,
                allowed_hosts: allowed_hosts.iter().map(|h| (*h).to_owned()).collect(),
            }),
        },
        ..ServerConfig::default()
    }
}

fn with_image(url: &str) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]}]})
}

async fn image_error(h: &Harness, url: &str) -> String {
    let resp = chat(&h.app, &with_image(url)).await;
    let err = assert_error(&resp, 400, "invalid_request_error", "invalid_image");
    assert_eq!(err["param"], "messages[0].content[1].image_url.url");
    err["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn http_images_are_fetched_within_limits() {
    let addr = image_server().await;
    let h = harness(fetching(true, &[])).await;
    let resp = chat(&h.app, &with_image(&format!("http://{addr}/cat.png"))).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-grain-granularity"), Some("36"));

    let msg = image_error(&h, &format!("http://{addr}/loop")).await;
    assert!(msg.contains("more than 3 redirects"), "{msg}");
    let msg = image_error(&h, &format!("http://{addr}/big")).await;
    assert!(msg.contains("more than the limit"), "{msg}");
    let msg = image_error(&h, &format!("http://{addr}/missing")).await;
    assert!(msg.contains("HTTP 404"), "{msg}");
}

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    let addr = image_server().await;
    let h = harness(fetching(false, &[])).await;
    let msg = image_error(&h, &format!("http://{addr}/cat.png")).await;
    assert!(msg.contains("non-public"), "{msg}");
    // A name that resolves to loopback is refused after DNS resolution.
    let msg = image_error(&h, &format!("http://localhost:{}/cat.png", addr.port())).await;
    assert!(msg.contains("non-public"), "{msg}");
}

#[tokio::test]
async fn the_allow_list_applies_to_redirects_too() {
    let addr = image_server().await;
    let h = harness(fetching(true, &["localhost"])).await;
    let port = addr.port();
    let resp = chat(
        &h.app,
        &with_image(&format!("http://localhost:{port}/cat.png")),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let msg = image_error(&h, &format!("http://127.0.0.1:{port}/cat.png")).await;
    assert!(msg.contains("allow-list"), "{msg}");
    let msg = image_error(&h, &format!("http://localhost:{port}/to-ip")).await;
    assert!(msg.contains("allow-list"), "{msg}");
}
