//! One benchmark request: send a body, read the (streamed) answer, time every token.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::RequestError;
use crate::sse::SseParser;

/// What one request measured. Times are seconds from the moment the request was sent.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RequestRecord {
    pub index: u64,
    /// When the request was sent, in seconds from the start of its run point.
    pub sent_at_s: f64,
    pub e2e_s: f64,
    /// First chunk with text (streaming only).
    pub ttft_s: Option<f64>,
    /// Gaps between consecutive chunks with text.
    pub itl_s: Vec<f64>,
    /// From the server's usage when it reports one, else the number of chunks with text.
    pub completion_tokens: u32,
    pub prompt_tokens: Option<u32>,
    /// Prompt tokens the server took from its prefix cache (OpenAI's `cached_tokens`).
    pub cached_tokens: Option<u32>,
    pub visual_tokens: Option<u32>,
    pub visual_tokens_full: Option<u32>,
    pub granularity: Vec<u32>,
    #[serde(serialize_with = "ser_error")]
    pub error: Option<RequestError>,
}

fn ser_error<S: serde::Serializer>(e: &Option<RequestError>, s: S) -> Result<S::Ok, S::Error> {
    match e {
        Some(e) => s.serialize_some(&e.to_string()),
        None => s.serialize_none(),
    }
}

impl RequestRecord {
    /// Time per output token after the first.
    pub fn tpot_s(&self) -> Option<f64> {
        let ttft = self.ttft_s?;
        (self.completion_tokens > 1)
            .then(|| (self.e2e_s - ttft) / f64::from(self.completion_tokens - 1))
    }
}

/// A chat-completions endpoint.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    api_key: Option<String>,
    timeout: Duration,
}

impl Client {
    /// `base` is the server root (`http://host:port`, with or without `/v1`).
    pub fn new(
        base: &str,
        api_key: Option<String>,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            // A benchmark of a local server must not go through a proxy from the environment.
            .no_proxy()
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            http,
            url: format!("{}/chat/completions", v1_root(base)),
            api_key,
            timeout,
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Send one body and measure it. Never fails: errors are recorded in the record.
    pub async fn send(&self, index: u64, body: Vec<u8>, stream: bool) -> RequestRecord {
        let started = Instant::now();
        let mut rec = RequestRecord {
            index,
            ..RequestRecord::default()
        };
        let outcome =
            tokio::time::timeout(self.timeout, self.exchange(body, stream, started, &mut rec))
                .await;
        rec.e2e_s = started.elapsed().as_secs_f64();
        rec.error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(RequestError::Timeout(self.timeout.as_secs_f64())),
        };
        rec
    }

    async fn exchange(
        &self,
        body: Vec<u8>,
        stream: bool,
        started: Instant,
        rec: &mut RequestRecord,
    ) -> Result<(), RequestError> {
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| RequestError::Transport(error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(RequestError::Status {
                status: status.as_u16(),
                message: error_message(&text),
            });
        }
        if !stream {
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| RequestError::Transport(error_chain(&e)))?;
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| RequestError::Protocol(e.to_string()))?;
            let usage = v
                .get("usage")
                .ok_or_else(|| RequestError::Protocol("no usage in the response".into()))?;
            apply_usage(rec, usage);
            return Ok(());
        }
        let mut parser = SseParser::new();
        let mut last_token: Option<Instant> = None;
        let mut chunks_with_text = 0u32;
        let mut usage_seen = false;
        let mut finished = false;
        while let Some(bytes) = resp
            .chunk()
            .await
            .map_err(|e| RequestError::Transport(error_chain(&e)))?
        {
            let now = Instant::now();
            for event in parser.push(&bytes) {
                if event.data == "[DONE]" {
                    finished = true;
                    continue;
                }
                let v: Value = serde_json::from_str(&event.data)
                    .map_err(|e| RequestError::Protocol(format!("{e} in `{}`", event.data)))?;
                if event.event == "error" || v.get("error").is_some() {
                    return Err(RequestError::Stream(error_message(&event.data)));
                }
                let has_text = v["choices"].as_array().is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c["delta"]["content"]
                            .as_str()
                            .is_some_and(|t| !t.is_empty())
                    })
                });
                if has_text {
                    chunks_with_text += 1;
                    match last_token {
                        None => rec.ttft_s = Some(now.duration_since(started).as_secs_f64()),
                        Some(prev) => rec.itl_s.push(now.duration_since(prev).as_secs_f64()),
                    }
                    last_token = Some(now);
                }
                if v["choices"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| !c["finish_reason"].is_null()))
                {
                    finished = true;
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    apply_usage(rec, u);
                    usage_seen = true;
                }
            }
        }
        if !finished {
            return Err(RequestError::Protocol(
                "the stream ended before a finish_reason or [DONE]".into(),
            ));
        }
        if !usage_seen {
            rec.completion_tokens = chunks_with_text;
        }
        Ok(())
    }
}

/// `http://h:p`, `http://h:p/`, `http://h:p/v1` → `http://h:p/v1`.
pub fn v1_root(base: &str) -> String {
    let b = base.trim_end_matches('/');
    if b.ends_with("/v1") {
        b.to_string()
    } else {
        format!("{b}/v1")
    }
}

fn apply_usage(rec: &mut RequestRecord, u: &Value) {
    let num = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    rec.completion_tokens = num(&u["completion_tokens"]).unwrap_or(0);
    rec.prompt_tokens = num(&u["prompt_tokens"]);
    let d = &u["prompt_tokens_details"];
    rec.cached_tokens = num(&d["cached_tokens"]);
    rec.visual_tokens = num(&d["visual_tokens"]);
    rec.visual_tokens_full = num(&d["visual_tokens_full"]);
    rec.granularity = d["granularity"]
        .as_array()
        .map(|a| a.iter().filter_map(num).collect())
        .unwrap_or_default();
}

/// The OpenAI error body's message, or the text itself (shortened) when it is not one.
fn error_message(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.chars().take(200).collect())
}

/// reqwest's top-level message is often just "error sending request"; the cause says why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_root_accepts_the_usual_spellings() {
        assert_eq!(v1_root("http://h:1"), "http://h:1/v1");
        assert_eq!(v1_root("http://h:1/"), "http://h:1/v1");
        assert_eq!(v1_root("http://h:1/v1/"), "http://h:1/v1");
    }

    #[test]
    fn usage_extension_fields_are_read_when_present() {
        let mut r = RequestRecord::default();
        let u = serde_json::json!({"prompt_tokens": 250, "completion_tokens": 7, "total_tokens": 257,
            "prompt_tokens_details": {"cached_tokens": 32, "visual_tokens": 192, "visual_tokens_full": 2928, "granularity": [36]}});
        apply_usage(&mut r, &u);
        assert_eq!(r.cached_tokens, Some(32));
        assert_eq!(
            (
                r.prompt_tokens,
                r.completion_tokens,
                r.visual_tokens,
                r.visual_tokens_full
            ),
            (Some(250), 7, Some(192), Some(2928))
        );
        assert_eq!(r.granularity, vec![36]);
        let mut plain = RequestRecord::default();
        apply_usage(
            &mut plain,
            &serde_json::json!({"prompt_tokens": 5, "completion_tokens": 2}),
        );
        assert_eq!((plain.visual_tokens, plain.granularity.len()), (None, 0));
    }

    #[test]
    fn error_messages_come_from_the_openai_body() {
        assert_eq!(
            error_message(r#"{"error":{"message":"too busy","type":"x"}}"#),
            "too busy"
        );
        assert_eq!(error_message("plain"), "plain");
    }
}
