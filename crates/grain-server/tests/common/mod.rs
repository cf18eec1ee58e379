//! Test doubles for the model side, fed to the real `EngineHandle`, and helpers to drive the
//! router.
//!
//! The mock LM speaks bytes: ids 0..=255 are bytes, then EOS, BOS and the image placeholder.
//! The next token depends only on the prompt and the position, so greedy output is
//! reproducible, and seeded sampling is reproducible with the same seed. Markers in the prompt
//! text steer it: `[long]` never emits EOS, `[fail-mid]` fails the step after two tokens,
//! `[gate]` waits at a gate the test opens.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use grain_engine::{
    ChatRequest, Detail, EngineConfig, EngineError, EngineHandle, GranularityChoice,
    GranularitySource, ImageInput, ImageUsage, ModelCard, ModelRunner, Part, PrepareItem,
    PreparedPrompt, Preprocessor, RawPrompt, Role, SeqId, StepBatch, TokenDecoder, ValidRequest,
};
use grain_metrics::Metrics;
use grain_server::{AppState, ServerConfig};
use http_body_util::BodyExt;
use prometheus::Registry;
use serde_json::Value;
use tower::ServiceExt;

pub const EOS: u32 = 256;
pub const BOS: u32 = 257;
pub const IMAGE: u32 = 258;
pub const VOCAB: usize = 259;
/// Tokens a normal answer has before EOS.
pub const ANSWER_LEN: usize = 6;
pub const GRANULARITIES: [u32; 5] = [36, 72, 144, 288, 576];
pub const CONTEXT: u32 = 4096;
pub const MODEL: &str = "mock-avg-llava";

/// A 1×1 red RGBA PNG (70 bytes), written with Python's zlib and struct.
pub const PNG_1X1: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg==";

pub fn png_data_url() -> String {
    format!("data:image/png;base64,{PNG_1X1}")
}

/// Bytes → ids; one placeholder per image, one crop per image.
pub struct MockPreprocessor;

impl Preprocessor for MockPreprocessor {
    /// Bytes as they are, BOS as `<s>`; ids past the vocabulary are refused.
    fn detokenize(&self, ids: &[u32]) -> Result<String, EngineError> {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= VOCAB) {
            return Err(EngineError::invalid(
                format!("token id {bad} is not in the vocabulary"),
                Some("tokens"),
            ));
        }
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| match id {
                BOS => b"<s>".to_vec(),
                EOS => b"</s>".to_vec(),
                IMAGE => b"<image>".to_vec(),
                b => vec![b as u8],
            })
            .collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn preprocess(&self, req: ChatRequest) -> Result<ValidRequest, EngineError> {
        let mut prompt_ids = vec![BOS];
        let mut images = Vec::new();
        match &req.raw_prompt {
            Some(RawPrompt::Text(text)) => prompt_ids.extend(text.bytes().map(u32::from)),
            // Token ids are the whole prompt, as a real preprocessor takes them.
            Some(RawPrompt::Ids(ids)) => {
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= VOCAB || id == IMAGE) {
                    return Err(EngineError::invalid(
                        format!("token id {bad} is not in the vocabulary"),
                        Some("prompt"),
                    ));
                }
                prompt_ids.clone_from(ids);
            }
            None => {}
        }
        for message in &req.messages {
            let role = match message.role {
                Role::System => b'S',
                Role::User => b'U',
                Role::Assistant => b'A',
            };
            prompt_ids.push(u32::from(role));
            for part in &message.parts {
                match part {
                    Part::Text(text) => prompt_ids.extend(text.bytes().map(u32::from)),
                    Part::Image { data, detail } => {
                        if data.windows(7).any(|w| w == b"corrupt") {
                            return Err(EngineError::InvalidImage {
                                index: images.len(),
                                message: "cannot decode the image data".into(),
                            });
                        }
                        prompt_ids.push(IMAGE);
                        images.push(ImageInput {
                            width: 336,
                            height: 336,
                            hash: [data.len() as u8; 32],
                            pixel_values: Arc::new(Vec::new()),
                            n_crops: 1,
                            detail: *detail,
                        });
                    }
                }
            }
        }
        Ok(ValidRequest {
            request_id: req.request_id,
            text_tokens: prompt_ids.len() - images.len(),
            prompt_ids,
            images,
            params: req.params,
            granularity: req.granularity,
        })
    }
}

/// Shared between a test and its runner (which lives on the scheduler thread).
#[derive(Default)]
pub struct Control {
    gate_open: Mutex<bool>,
    gate_changed: Condvar,
    /// Sequences waiting at the gate.
    pub waiting: Mutex<usize>,
}

impl Control {
    pub fn open_gate(&self) {
        *self.gate_open.lock().unwrap() = true;
        self.gate_changed.notify_all();
    }

    fn wait_at_gate(&self) {
        *self.waiting.lock().unwrap() += 1;
        let mut open = self.gate_open.lock().unwrap();
        while !*open {
            open = self.gate_changed.wait(open).unwrap();
        }
        *self.waiting.lock().unwrap() -= 1;
    }

    /// Blocks (politely) until a sequence waits at the gate.
    pub async fn until_waiting(&self) {
        while *self.waiting.lock().unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

struct MockSeq {
    prompt_len: usize,
    prompt_hash: u64,
    answer_len: usize,
    fail_after: Option<usize>,
    gated: bool,
}

pub struct MockRunner {
    seqs: HashMap<SeqId, MockSeq>,
    control: Arc<Control>,
    answer_len: usize,
    step_delay: Duration,
}

fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn contains(ids: &[u32], marker: &str) -> bool {
    let marker: Vec<u32> = marker.bytes().map(u32::from).collect();
    ids.windows(marker.len()).any(|w| w == marker.as_slice())
}

impl MockRunner {
    pub fn new(control: Arc<Control>) -> Self {
        Self {
            seqs: HashMap::new(),
            control,
            answer_len: ANSWER_LEN,
            step_delay: Duration::ZERO,
        }
    }

    /// Tokens before EOS for prompts without `[long]` (`usize::MAX`: never EOS).
    pub fn with_answer_len(mut self, answer_len: usize) -> Self {
        self.answer_len = answer_len;
        self
    }

    /// A pause in every forward, standing in for a real model's compute time.
    pub fn with_step_delay(mut self, step_delay: Duration) -> Self {
        self.step_delay = step_delay;
        self
    }

    fn choose(image: &ImageInput, choice: GranularityChoice) -> Result<ImageUsage, EngineError> {
        let (granularity, source) = match (choice, image.detail) {
            (GranularityChoice::Fixed(g), _) if GRANULARITIES.contains(&g) => {
                (g, GranularitySource::Request)
            }
            (GranularityChoice::Fixed(g), _) => {
                return Err(EngineError::invalid(
                    format!("granularity {g} is not one of {GRANULARITIES:?}"),
                    Some("granularity"),
                ))
            }
            (GranularityChoice::Auto, Detail::Low) => (36, GranularitySource::Detail),
            (GranularityChoice::Auto, Detail::High) => (576, GranularitySource::Detail),
            (GranularityChoice::Auto, Detail::Auto) => (144, GranularitySource::Router),
        };
        Ok(ImageUsage {
            granularity,
            source,
        })
    }
}

impl ModelRunner for MockRunner {
    fn prepare(&mut self, items: &[PrepareItem]) -> Vec<Result<PreparedPrompt, EngineError>> {
        items
            .iter()
            .map(|item| {
                let images = item
                    .images
                    .iter()
                    .map(|image| Self::choose(image, item.granularity))
                    .collect::<Result<Vec<_>, _>>()?;
                let visual: usize = images.iter().map(|i| i.granularity as usize).sum();
                let prompt_len = item.prompt_ids.len() - item.images.len() + visual;
                let prompt_hash = item
                    .prompt_ids
                    .iter()
                    .fold(7u64, |h, &id| mix(h, u64::from(id)));
                for seq in &item.seqs {
                    self.seqs.insert(
                        *seq,
                        MockSeq {
                            prompt_len,
                            prompt_hash,
                            answer_len: if contains(&item.prompt_ids, "[long]") {
                                usize::MAX
                            } else {
                                self.answer_len
                            },
                            fail_after: contains(&item.prompt_ids, "[fail-mid]").then_some(2),
                            gated: contains(&item.prompt_ids, "[gate]"),
                        },
                    );
                }
                Ok(PreparedPrompt {
                    prompt_len,
                    visual_tokens_full: 576 * item.images.len(),
                    images,
                    // Not reported: the server tests' image prompts are never prefix-cached.
                    visual_spans: Vec::new(),
                })
            })
            .collect()
    }

    fn forward(&mut self, batch: &StepBatch) -> Result<Vec<Vec<f32>>, EngineError> {
        if !self.step_delay.is_zero() {
            std::thread::sleep(self.step_delay);
        }
        let mut rows = Vec::new();
        for entry in &batch.entries {
            let seq = self
                .seqs
                .get(&entry.seq)
                .ok_or_else(|| EngineError::Internal(format!("unknown {:?}", entry.seq)))?;
            if seq.gated {
                self.control.wait_at_gate();
            }
            let generated = entry.end.saturating_sub(seq.prompt_len);
            if seq.fail_after.is_some_and(|k| generated >= k) {
                return Err(EngineError::Internal(
                    "mock device fault at /dev/secret".into(),
                ));
            }
            // The row after position `end - 1`.
            let row_at = |end: usize| {
                let mut row = vec![f32::NEG_INFINITY; VOCAB];
                if end.saturating_sub(seq.prompt_len) >= seq.answer_len {
                    row[EOS as usize] = 0.0;
                } else {
                    let h = mix(seq.prompt_hash, end as u64);
                    for (k, id) in (b'a'..=b'z').chain([b' ']).enumerate() {
                        // Spread of a few nats: sampling at temperature 1 is genuinely random.
                        row[id as usize] = (mix(h, k as u64) % 1000) as f32 / 250.0;
                    }
                }
                row
            };
            if entry.all_logits {
                rows.extend((entry.start + 1..=entry.end).map(row_at));
            } else if entry.want_logits {
                rows.push(row_at(entry.end));
            }
        }
        Ok(rows)
    }

    fn release(&mut self, seq: SeqId) {
        self.seqs.remove(&seq);
    }

    fn kv_geometry(&self) -> (usize, usize) {
        (16, 4096)
    }

    fn eos_ids(&self) -> Vec<u32> {
        vec![EOS]
    }

    fn decoder(&self) -> Arc<dyn TokenDecoder> {
        Arc::new(ByteDecoder)
    }
}

pub struct ByteDecoder;

impl TokenDecoder for ByteDecoder {
    fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter(|&&id| id < 256)
            .map(|&id| id as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        if id < 256 {
            let b = vec![id as u8];
            (String::from_utf8_lossy(&b).into_owned(), b)
        } else if id == BOS {
            ("<s>".into(), b"<s>".to_vec())
        } else {
            ("</s>".into(), Vec::new())
        }
    }
}

pub fn card() -> ModelCard {
    ModelCard {
        id: MODEL.into(),
        context_length: CONTEXT,
        granularities: GRANULARITIES.to_vec(),
        has_router: true,
        created: 1_700_000_000,
    }
}

pub struct Harness {
    pub state: AppState,
    pub app: Router,
    pub registry: Registry,
    pub control: Arc<Control>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Never leave the scheduler thread parked at the gate.
        self.control.open_gate();
    }
}

pub fn engine_config() -> EngineConfig {
    EngineConfig {
        block_size: 16,
        ..EngineConfig::default()
    }
}

pub async fn harness(config: ServerConfig) -> Harness {
    harness_with(config, engine_config()).await
}

pub async fn harness_with(config: ServerConfig, engine_config: EngineConfig) -> Harness {
    start_harness(config, engine_config, ANSWER_LEN).await
}

/// A harness whose model answers `answer_len` letters, then EOS (0: EOS first).
pub async fn harness_answering(config: ServerConfig, answer_len: usize) -> Harness {
    start_harness(config, engine_config(), answer_len).await
}

async fn start_harness(
    config: ServerConfig,
    engine_config: EngineConfig,
    answer_len: usize,
) -> Harness {
    let control = Arc::new(Control::default());
    let runner_control = control.clone();
    let engine = EngineHandle::start(
        engine_config,
        card(),
        Arc::new(MockPreprocessor),
        move || Ok(MockRunner::new(runner_control).with_answer_len(answer_len)),
    )
    .expect("engine config is valid");
    engine.wait_ready().await.expect("mock model loads");
    let registry = Registry::new();
    let metrics = Metrics::register(&registry, &GRANULARITIES).expect("metrics register");
    let state = AppState::new(engine, config, metrics, registry.clone()).expect("state");
    Harness {
        app: grain_server::router(state.clone()),
        state,
        registry,
        control,
    }
}

pub struct TestResponse {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `(event name, data)` of each SSE event, in order.
    pub fn sse_events(&self) -> Vec<(Option<String>, String)> {
        parse_sse(&self.text())
    }

    /// The JSON chunks of a stream that ended with `[DONE]` and sent no error event.
    pub fn sse_chunks(&self) -> Vec<serde_json::Value> {
        let events = self.sse_events();
        assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));
        events[..events.len() - 1]
            .iter()
            .map(|(event, data)| {
                assert!(event.is_none(), "no error events: {data}");
                serde_json::from_str(data).unwrap()
            })
            .collect()
    }
}

pub fn parse_sse(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter_map(|block| {
            let mut event = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = Some(e.trim().to_owned());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d).to_owned());
                }
            }
            // Comment-only blocks (keep-alives) carry no data.
            (!data.is_empty()).then(|| (event, data.join("\n")))
        })
        .collect()
}

pub async fn send(app: &Router, request: Request<Body>) -> TestResponse {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    TestResponse {
        status,
        headers,
        body,
    }
}

pub fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

pub async fn chat(app: &Router, body: &Value) -> TestResponse {
    send(app, post("/v1/chat/completions", body.to_string())).await
}

pub async fn get(app: &Router, path: &str) -> TestResponse {
    send(app, Request::get(path).body(Body::empty()).unwrap()).await
}

/// Asserts the OpenAI error shape and returns `error`.
pub fn assert_error(resp: &TestResponse, status: u16, kind: &str, code: &str) -> Value {
    assert_eq!(
        resp.status.as_u16(),
        status,
        "status; body: {}",
        resp.text()
    );
    let body = resp.json();
    let error = body["error"].clone();
    assert_eq!(error["type"], kind, "type; body: {body}");
    assert_eq!(error["code"], code, "code; body: {body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        error.get("param").is_some(),
        "param must be present (maybe null): {body}"
    );
    assert!(
        resp.header("x-request-id").is_some(),
        "x-request-id on errors too"
    );
    error
}

pub fn user(text: &str) -> Value {
    serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": text}]})
}

/// The value of one sample in a Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no series {series}"))
        .parse()
        .unwrap()
}
