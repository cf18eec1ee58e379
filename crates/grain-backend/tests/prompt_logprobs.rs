//! Prompt scores (`echo` with `logprobs`) of the real model against transformers: the committed
//! `tests/fixtures/prompt-logprobs/cases.json` holds the log-softmax transformers computed for
//! every token of four prompts on the `hf-tiny` checkpoint (`tests/parity/make_prompt_logprobs.py`).
//! Grain scores the same token ids through its engine, in chunked prefills and alongside other
//! requests, and must agree to 1e-4.

use std::path::PathBuf;

use grain_backend::BackendConfig;
use grain_engine::{
    ChatRequest, EngineConfig, EngineHandle, Event, GenerationParams, GranularityChoice,
    PromptLogprob, RawPrompt,
};
use serde_json::Value;

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

struct Case {
    ids: Vec<u32>,
    token_logprobs: Vec<Option<f32>>,
    top_ids: Vec<Vec<u32>>,
    top_logprobs: Vec<Vec<f32>>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("prompt-logprobs/cases.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let floats = |v: &Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let ints = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            ids: ints(&c["ids"]),
            token_logprobs: c["token_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32))
                .collect(),
            top_ids: c["top_ids"].as_array().unwrap().iter().map(ints).collect(),
            top_logprobs: c["top_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(floats)
                .collect(),
        })
        .collect()
}

fn scoring_request(i: usize, ids: Vec<u32>, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        request_id: format!("score-{i}"),
        messages: Vec::new(),
        raw_prompt: Some(RawPrompt::Ids(ids)),
        params: GenerationParams {
            max_tokens: Some(max_tokens),
            temperature: 0.0,
            prompt_logprobs: Some(5),
            ..GenerationParams::default()
        },
        granularity: GranularityChoice::Auto,
    }
}

async fn score(engine: &EngineHandle, req: ChatRequest) -> (Vec<PromptLogprob>, usize) {
    let mut stream = engine.generate(req).await.unwrap();
    let mut prompt = None;
    let mut generated = 0;
    loop {
        match stream.next().await.expect("stream ends with Done") {
            Event::PromptLogprobs { tokens, .. } => prompt = Some(tokens),
            Event::Delta { token_ids, .. } => generated += token_ids.len(),
            Event::Finished { .. } => {}
            Event::Done { .. } => return (prompt.expect("the prompt was scored"), generated),
            Event::Error(e) => panic!("{e}"),
        }
    }
}

fn check(case: &Case, got: &[PromptLogprob]) {
    assert_eq!(got.len(), case.ids.len());
    let ids: Vec<u32> = got.iter().map(|t| t.id).collect();
    assert_eq!(ids, case.ids);
    assert!(got[0].logprob.is_none() && got[0].top.is_empty());
    let mut worst = 0f32;
    for (pos, t) in got.iter().enumerate().skip(1) {
        let want = case.token_logprobs[pos].unwrap();
        let lp = t.logprob.unwrap();
        worst = worst.max((lp - want).abs());
        assert!(
            (lp - want).abs() <= TOLERANCE,
            "token {pos}: {lp} vs transformers' {want}"
        );
        // The alternatives: transformers' five best logprobs, in order. (Their identities are
        // not compared: a near tie may order two tokens either way within the tolerance.)
        let want_lps = &case.top_logprobs[pos];
        assert_eq!(t.top.len(), want_lps.len(), "token {pos}'s alternatives");
        for (k, (alt, want_lp)) in t.top.iter().zip(want_lps).enumerate() {
            assert!(
                (alt.2 - want_lp).abs() <= TOLERANCE,
                "token {pos}, alternative {k}"
            );
        }
        // The best alternative is the scored token itself exactly when transformers says so.
        if case.top_ids[pos][0] == case.ids[pos] && want_lps[0] - want_lps[1] > 2.0 * TOLERANCE {
            assert_eq!(t.top[0].1, t.bytes, "token {pos} is its row's favourite");
        }
    }
    eprintln!("{} tokens: worst |Δ logprob| {worst:.2e}", got.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_scores_match_transformers_alone_and_batched() {
    let cases = cases();
    // A 64-token step budget splits the 271-token prompt into five prefill chunks.
    let engine = grain_backend::start(
        BackendConfig::new(fixtures().join("hf-tiny")),
        EngineConfig {
            max_num_batched_tokens: 64,
            ..EngineConfig::default()
        },
        None,
    )
    .unwrap();
    engine.wait_ready().await.unwrap();

    // One at a time, scoring only.
    for (i, case) in cases.iter().enumerate() {
        let (got, generated) = score(&engine, scoring_request(i, case.ids.clone(), 0)).await;
        assert_eq!(generated, 0, "max_tokens 0 generates nothing");
        check(case, &got);
    }
    // All at once, each also generating, so prefill chunks share steps with decode tokens.
    let tasks: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let (engine, ids) = (engine.clone(), case.ids.clone());
            tokio::spawn(async move { score(&engine, scoring_request(i, ids, 6)).await })
        })
        .collect();
    for (case, task) in cases.iter().zip(tasks) {
        let (got, generated) = task.await.unwrap();
        assert!(generated > 0);
        check(case, &got);
    }
    assert!(engine.wait_idle(std::time::Duration::from_secs(30)).await);
    assert_eq!(engine.stats().kv_blocks_used, 0);
}
