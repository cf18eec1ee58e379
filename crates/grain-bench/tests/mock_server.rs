//! `grain bench` end to end against a scripted OpenAI-compatible server on a real socket: the
//! report must count exactly what the server sent, and the requests must be what the sweep asked for.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use grain_bench::BenchArgs;
use serde_json::{json, Value};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

/// Every body the server received, and a counter behind its fake /metrics.
#[derive(Clone, Default)]
struct Mock {
    bodies: Arc<Mutex<Vec<Value>>>,
}

/// Visual tokens the mock reports for a granularity (any fixed function will do).
fn visual(g: u64) -> u64 {
    g * 2
}

async fn chat(State(m): State<Mock>, Json(body): Json<Value>) -> Response {
    m.bodies.lock().unwrap().push(body.clone());
    let g = body["granularity"].as_u64().unwrap_or(576);
    if g == 72 {
        let err = json!({"error": {"message": "no capacity", "type": "server_error", "param": null, "code": null}});
        return (StatusCode::TOO_MANY_REQUESTS, Json(err)).into_response();
    }
    let n = body["max_tokens"].as_u64().unwrap();
    let usage = json!({"prompt_tokens": 10 + visual(g), "completion_tokens": n, "total_tokens": 10 + visual(g) + n,
        "prompt_tokens_details": {"cached_tokens": 0, "visual_tokens": visual(g), "visual_tokens_full": visual(576), "granularity": [g]}});
    if body["stream"] != json!(true) {
        let resp = json!({"id": "x", "object": "chat.completion", "created": 0, "model": "mock",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "t".repeat(n as usize)}, "finish_reason": "length"}],
            "usage": usage});
        return Json(resp).into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "mock",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut sse = format!(
        "data: {}\n\n",
        chunk(json!({"role": "assistant", "content": ""}), Value::Null)
    );
    for _ in 0..n {
        sse += &format!("data: {}\n\n", chunk(json!({"content": "t"}), Value::Null));
    }
    sse += &format!("data: {}\n\n", chunk(json!({}), json!("length")));
    sse += &format!(
        "data: {}\n\n",
        json!({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "mock", "choices": [], "usage": usage})
    );
    sse += "data: [DONE]\n\n";
    ([(header::CONTENT_TYPE, "text/event-stream")], sse).into_response()
}

async fn metrics(State(m): State<Mock>) -> String {
    let n = m.bodies.lock().unwrap().len();
    format!(
        "grain_step_duration_seconds_sum{{phase=\"prefill\"}} {}\ngrain_step_duration_seconds_count{{phase=\"prefill\"}} {n}\n",
        n as f64 * 0.5
    )
}

/// Start the mock on a port of its own, in a runtime of its own (the bench builds its own).
fn start_mock() -> (String, Mock) {
    let mock = Mock::default();
    let app = Router::new()
        .route(
            "/v1/models",
            get(|| async {
                Json(json!({"object": "list", "data": [{"id": "mock-model", "object": "model"}]}))
            }),
        )
        .route("/v1/chat/completions", post(chat))
        .route("/metrics", get(metrics))
        .with_state(mock.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (format!("http://{addr}"), mock)
}

fn bench(url: &str, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("r.json");
    let mut argv = vec![
        "bench",
        "--url",
        url,
        "--quiet",
        "--json",
        json_path.to_str().unwrap(),
    ];
    argv.extend_from_slice(extra);
    grain_bench::run(Cli::parse_from(argv).args).unwrap();
    serde_json::from_str(&std::fs::read_to_string(json_path).unwrap()).unwrap()
}

fn image_urls(body: &Value) -> Vec<String> {
    body["messages"][0]["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["image_url"]["url"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_sweep_reports_exactly_what_the_server_sent() {
    let (url, mock) = start_mock();
    let plots = tempfile::tempdir().unwrap();
    let report = bench(
        &url,
        &[
            "--granularity",
            "36,72,576",
            "--concurrency",
            "1,3",
            "--num-requests",
            "5",
            "--warmup",
            "1",
            "--max-tokens",
            "4-6",
            "--image-sizes",
            "40x30,20x50",
            "--seed",
            "3",
            "--plot",
            plots.path().to_str().unwrap(),
        ],
    );
    assert_eq!(
        report["model"],
        json!("mock-model"),
        "model taken from /v1/models"
    );
    let points = report["points"].as_array().unwrap();
    assert_eq!(points.len(), 6, "3 modes × 2 loads");
    let bodies = mock.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 6 * (5 + 1), "measured + warm-up requests");

    for p in points {
        let s = &p["summary"];
        let reqs = p["requests"].as_array().unwrap();
        assert_eq!(reqs.len(), 5);
        if p["mode"] == json!("72") {
            assert_eq!(
                (s["completed"].as_u64(), s["failed"].as_u64()),
                (Some(0), Some(5))
            );
            assert_eq!(s["errors"]["http_429"], json!(5));
            continue;
        }
        let g: u64 = p["mode"].as_str().unwrap().parse().unwrap();
        assert_eq!(s["completed"], json!(5));
        // Completion tokens are the max_tokens each request asked for (the mock always hits the limit).
        let asked: u64 = reqs
            .iter()
            .map(|r| r["completion_tokens"].as_u64().unwrap())
            .sum();
        assert_eq!(s["total_completion_tokens"].as_u64().unwrap(), asked);
        assert!(reqs
            .iter()
            .all(|r| (4..=6).contains(&r["completion_tokens"].as_u64().unwrap())));
        // One TTFT per request and tokens − 1 gaps each.
        assert_eq!(s["ttft_s"]["count"], json!(5));
        assert_eq!(s["itl_s"]["count"].as_u64().unwrap(), asked - 5);
        assert_eq!(s["mean_visual_tokens"].as_f64().unwrap(), visual(g) as f64);
        assert_eq!(
            s["mean_visual_tokens_full"].as_f64().unwrap(),
            visual(576) as f64
        );
        assert_eq!(s["granularity_counts"][g.to_string()], json!(5));
        // Server delta: the mock's counter grows by 0.5 s per request received (5 measured).
        assert_eq!(p["server"]["prefill_steps"]["count"], json!(5.0));
        assert_eq!(p["server_prefill_s_per_request"], json!(0.5));
        let rate = s["output_tokens_per_s"].as_f64().unwrap();
        let dur = s["duration_s"].as_f64().unwrap();
        assert!((rate * dur - asked as f64).abs() < 1e-6);
    }

    // Every request carried the granularity of its mode, and no two requests shared an image.
    let mut seen = HashSet::new();
    for b in &bodies {
        assert!([36, 72, 576].contains(&b["granularity"].as_u64().unwrap()));
        assert_eq!(b["stream"], json!(true));
        for u in image_urls(b) {
            assert!(
                seen.insert(u),
                "an image was sent twice: the encoder cache would hit"
            );
        }
    }
    // The same request index carries the same prompt in every run point.
    let prompts_at = |granularity: u32| -> HashSet<String> {
        bodies
            .iter()
            .filter(|b| b["granularity"] == json!(granularity))
            .map(|b| {
                b["messages"][0]["content"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(prompts_at(36), prompts_at(576));

    for f in [
        "throughput.svg",
        "requests.svg",
        "latency_e2e.svg",
        "latency_ttft.svg",
    ] {
        assert!(plots.path().join(f).is_file(), "{f} not written");
    }
}

#[test]
fn poisson_arrivals_text_only_and_non_streaming() {
    let (url, mock) = start_mock();
    let report = bench(
        &url,
        &[
            "--rate",
            "200",
            "--max-concurrency",
            "2",
            "--num-requests",
            "6",
            "--warmup",
            "0",
            "--workload",
            "text",
            "--max-tokens",
            "3",
            "--no-stream",
            "--granularity",
            "mix:36=1+576=1",
        ],
    );
    let p = &report["points"][0];
    assert_eq!(
        p["load"],
        json!({"kind": "rate", "value": 200.0, "max_concurrency": 2})
    );
    assert_eq!(p["summary"]["completed"], json!(6));
    assert_eq!(p["summary"]["total_completion_tokens"], json!(18));
    assert!(
        p["summary"]["ttft_s"].is_null(),
        "no TTFT without streaming"
    );
    let bodies = mock.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 6);
    assert!(bodies
        .iter()
        .all(|b| image_urls(b).is_empty() && b.get("stream_options").is_none()));
    let gs: HashSet<u64> = bodies
        .iter()
        .map(|b| b["granularity"].as_u64().unwrap())
        .collect();
    assert!(gs.is_subset(&HashSet::from([36, 576])));
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    // Port 9 (discard) on loopback: nothing listens there in a test environment.
    let err =
        grain_bench::run(Cli::parse_from(["bench", "--url", "http://127.0.0.1:9", "--quiet"]).args)
            .unwrap_err();
    assert!(format!("{err:#}").contains("/v1/models"), "{err:#}");
}

#[test]
fn the_workload_dump_is_valid_jsonl_and_matches_the_requests_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.jsonl");
    let argv = [
        "bench",
        "--dump-workload",
        path.to_str().unwrap(),
        "--num-requests",
        "3",
        "--image-sizes",
        "8x8",
        "--seed",
        "5",
    ];
    grain_bench::run(Cli::parse_from(argv).args).unwrap();
    let lines: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines
        .iter()
        .all(|l| image_urls(l).len() == 1 && l["max_tokens"] == json!(64)));

    // Replaying the dump sends the same prompts and, at the first run point, the same images.
    let (url, mock) = start_mock();
    bench(
        &url,
        &[
            "--dataset",
            path.to_str().unwrap(),
            "--num-requests",
            "3",
            "--warmup",
            "0",
        ],
    );
    let sent = mock.bodies.lock().unwrap().clone();
    for (a, b) in lines.iter().zip(&sent) {
        assert_eq!(a["messages"], b["messages"]);
    }
}
