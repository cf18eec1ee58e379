//! Request builders, stream collection and condition polling shared by the tests.

use std::future::Future;
use std::time::Duration;

use grain_engine::mock::{start_toy, ToyConfig, ToyProbe};
use grain_engine::{
    ChatRequest, Detail, EngineConfig, EngineError, EngineHandle, Event, FinishReason,
    GenerationParams, GenerationStream, GranularityChoice, Message, Part, PromptLogprob, Role,
    TokenLogprob, Usage,
};
use std::sync::Arc;

/// Toy model whose sequences never emit EOS: lengths are exactly `max_tokens`.
pub fn no_eos() -> ToyConfig {
    ToyConfig {
        eos_bias: -1000.0,
        ..ToyConfig::default()
    }
}

pub fn engine(cfg: EngineConfig, toy: ToyConfig) -> (EngineHandle, Arc<ToyProbe>) {
    start_toy(cfg, toy).expect("valid config")
}

pub async fn ready(cfg: EngineConfig, toy: ToyConfig) -> (EngineHandle, Arc<ToyProbe>) {
    let (h, p) = engine(cfg, toy);
    h.wait_ready().await.expect("toy model loads");
    (h, p)
}

pub fn greedy(max_tokens: u32) -> GenerationParams {
    GenerationParams {
        max_tokens: Some(max_tokens),
        temperature: 0.0,
        ..GenerationParams::default()
    }
}

/// A single-turn request; each image is `(bytes, detail)`.
pub fn request(
    id: &str,
    text: &str,
    images: &[(&[u8], Detail)],
    params: GenerationParams,
) -> ChatRequest {
    let mut parts: Vec<Part> = images
        .iter()
        .map(|(data, detail)| Part::Image {
            data: data.to_vec(),
            detail: *detail,
        })
        .collect();
    parts.push(Part::Text(text.to_owned()));
    ChatRequest {
        request_id: id.to_owned(),
        raw_prompt: None,
        messages: vec![Message {
            role: Role::User,
            parts,
        }],
        params,
        granularity: GranularityChoice::Auto,
    }
}

/// Everything a stream said, per choice.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Output {
    pub text: Vec<String>,
    pub tokens: Vec<Vec<u32>>,
    pub finish: Vec<Option<FinishReason>>,
    /// Every non-empty text delta, per choice, in order.
    pub deltas: Vec<Vec<String>>,
    pub logprob_counts: Vec<usize>,
    /// Sampled tokens' logprobs, per choice.
    pub logprobs: Vec<Vec<TokenLogprob>>,
    /// The prompt's tokens and scores, per choice (`prompt_logprobs`).
    pub prompt: Vec<Option<Vec<PromptLogprob>>>,
    pub usage: Option<Usage>,
    pub error: Option<EngineError>,
}

impl Output {
    /// The output with `usage.cached_tokens` cleared: how much of a prompt the prefix cache held
    /// depends on what ran before, the answer must not.
    pub fn answer(&self) -> Output {
        let mut o = self.clone();
        if let Some(u) = &mut o.usage {
            u.cached_tokens = 0;
        }
        o
    }
}

/// Reads a stream to its end, checking the event grammar on the way.
pub async fn collect(mut s: GenerationStream, n: usize) -> Output {
    let mut o = Output {
        text: vec![String::new(); n],
        tokens: vec![Vec::new(); n],
        finish: vec![None; n],
        deltas: vec![Vec::new(); n],
        logprob_counts: vec![0; n],
        logprobs: vec![Vec::new(); n],
        prompt: vec![None; n],
        ..Output::default()
    };
    while let Some(ev) = s.next().await {
        assert!(
            o.usage.is_none() && o.error.is_none(),
            "event after the last one: {ev:?}"
        );
        match ev {
            Event::Delta {
                index,
                text,
                token_ids,
                logprobs,
            } => {
                let i = index as usize;
                assert!(o.finish[i].is_none(), "delta after finish for choice {i}");
                o.text[i].push_str(&text);
                if !text.is_empty() {
                    o.deltas[i].push(text);
                }
                o.tokens[i].extend(token_ids);
                o.logprob_counts[i] += logprobs.len();
                o.logprobs[i].extend(logprobs);
            }
            Event::PromptLogprobs { index, tokens } => {
                let i = index as usize;
                assert!(o.prompt[i].is_none(), "choice {i}'s prompt scored twice");
                assert!(
                    o.tokens[i].is_empty() && o.finish[i].is_none(),
                    "choice {i}'s prompt scores came after its tokens"
                );
                o.prompt[i] = Some(tokens);
            }
            Event::Finished { index, reason } => {
                let i = index as usize;
                assert!(o.finish[i].is_none(), "choice {i} finished twice");
                o.finish[i] = Some(reason);
            }
            Event::Done { usage } => {
                assert!(
                    o.finish.iter().all(Option::is_some),
                    "done before all choices finished"
                );
                o.usage = Some(usage);
            }
            Event::Error(e) => o.error = Some(e),
        }
    }
    assert!(
        o.usage.is_some() || o.error.is_some(),
        "stream ended without Done or Error"
    );
    o
}

pub async fn run(h: &EngineHandle, req: ChatRequest) -> Output {
    let n = req.params.n as usize;
    let stream = h.generate(req).await.expect("request accepted");
    collect(stream, n).await
}

/// Waits until `cond` holds, failing the test after 20 s (a hang, not a slow machine).
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Awaits a future with the same 20 s hang guard.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}
