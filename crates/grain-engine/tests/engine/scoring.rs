//! Prompt scoring (`prompt_logprobs`, what `echo` with `logprobs` needs): every prompt token gets
//! the log-probability the model gave it, the same one decoding would have reported, whatever
//! the batching, chunking, preemption or prefix cache do.

use grain_engine::mock::ToyConfig;
use grain_engine::{
    ChatRequest, Detail, EngineConfig, EngineError, FinishReason, GenerationParams,
    GranularityChoice, RawPrompt,
};

use crate::batching::{assert_drained, solo, together};
use crate::support::*;

fn ids_request(id: &str, ids: Vec<u32>, params: GenerationParams) -> ChatRequest {
    ChatRequest {
        request_id: id.to_owned(),
        messages: Vec::new(),
        raw_prompt: Some(RawPrompt::Ids(ids)),
        params,
        granularity: GranularityChoice::Auto,
    }
}

fn scoring(max_tokens: u32, top: u32) -> GenerationParams {
    GenerationParams {
        max_tokens: Some(max_tokens),
        temperature: 0.0,
        prompt_logprobs: Some(top),
        ..GenerationParams::default()
    }
}

/// Prompts of lowercase letters and spaces (the toy model's vocabulary), BOS first.
fn prompt(i: usize, len: usize) -> Vec<u32> {
    let mut ids = vec![grain_engine::mock::BOS];
    ids.extend((0..len).map(|k| u32::from(b"abcdefghij klmnop"[(i * 7 + k * 3) % 17])));
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoring_a_continuation_gives_the_logprobs_its_decoding_reported() {
    let (h, probe) = ready(EngineConfig::default(), no_eos()).await;
    let context = prompt(1, 30);
    let decoded = run(
        &h,
        ids_request(
            "gen",
            context.clone(),
            GenerationParams {
                logprobs: true,
                top_logprobs: 3,
                ..greedy(12)
            },
        ),
    )
    .await;
    assert!(decoded.error.is_none(), "{:?}", decoded.error);
    assert!(decoded.prompt[0].is_none(), "no scores unless asked for");
    let continuation = decoded.tokens[0].clone();
    assert_eq!(continuation.len(), 12);

    let mut whole = context.clone();
    whole.extend(&continuation);
    let scored = run(&h, ids_request("score", whole.clone(), scoring(0, 3))).await;
    let scores = scored.prompt[0].clone().expect("the prompt was scored");
    let ids: Vec<u32> = scores.iter().map(|t| t.id).collect();
    assert_eq!(ids, whole);
    assert!(
        scores[0].logprob.is_none(),
        "nothing precedes the first token"
    );
    assert!(scores[1..].iter().all(|t| t.logprob.is_some()));
    // The continuation's scores are what decoding reported, alternatives included (greedy
    // decoding reports the raw distribution, as prompt scores do).
    for (k, (s, d)) in scores[context.len()..]
        .iter()
        .zip(&decoded.logprobs[0])
        .enumerate()
    {
        let lp = s.logprob.unwrap();
        assert_eq!(s.token, d.token, "token {k}");
        assert!(
            (lp - d.logprob).abs() < 1e-6,
            "token {k}: {lp} vs {}",
            d.logprob
        );
        assert_eq!(s.top.len(), 3);
        for (a, b) in s.top.iter().zip(&d.top) {
            assert_eq!(a.0, b.0, "token {k}'s alternatives");
            assert!((a.2 - b.2).abs() < 1e-6);
        }
    }
    // `max_tokens: 0` evaluates the prompt and generates nothing.
    assert!(scored.tokens[0].is_empty());
    assert_eq!(scored.finish[0], Some(FinishReason::Length));
    let usage = scored.usage.unwrap();
    assert_eq!(usage.completion_tokens, 0);
    assert_eq!(usage.prompt_tokens as usize, whole.len());
    assert_drained(&h, &probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_survive_chunking_preemption_and_the_prefix_cache() {
    // Long prompts, some sharing a prefix with a request that ran before them, scored while
    // they generate; n = 2 scores the prompt once per choice.
    let reqs: Vec<ChatRequest> = (0..10)
        .map(|i| {
            let mut params = scoring(20, 2);
            params.n = if i % 3 == 0 { 2 } else { 1 };
            ids_request(&format!("r{i}"), prompt(i % 4, 40 + 9 * i), params)
        })
        .collect();
    let expected = solo(&reqs, no_eos()).await;

    // 4-position blocks, 60 of them, a 24-token step budget: chunked prompts and preemptions.
    let toy = ToyConfig {
        block_size: 4,
        num_blocks: 60,
        ..no_eos()
    };
    let cfg = EngineConfig {
        max_num_batched_tokens: 24,
        ..EngineConfig::default()
    };
    let (h, probe) = ready(cfg, toy).await;
    // The same prompts once without scores: their blocks are in the prefix cache afterwards.
    for r in &reqs[..4] {
        let mut plain = r.clone();
        plain.params.prompt_logprobs = None;
        assert!(run(&h, plain).await.error.is_none());
    }
    let got = together(&h, &probe, &reqs).await;
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!(g.error.is_none(), "request {i}: {:?}", g.error);
        assert_eq!(g.prompt, e.prompt, "request {i}'s scores");
        assert_eq!(g.tokens, e.tokens, "request {i}'s tokens");
        assert_eq!(g.usage.as_ref().unwrap().cached_tokens, 0, "request {i}");
        let n = reqs[i].params.n as usize;
        assert!(g.prompt.iter().all(Option::is_some) && g.prompt.len() == n);
    }
    assert!(
        h.stats().preemptions > 0,
        "the budget was tight enough to preempt"
    );
    assert_drained(&h, &probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_with_images_or_too_many_alternatives_are_refused() {
    let (h, probe) = ready(EngineConfig::default(), no_eos()).await;
    let with_image = request(
        "img",
        "what is this",
        &[(b"png", Detail::Auto)],
        scoring(1, 1),
    );
    let Err(e) = h.generate(with_image).await else {
        panic!("a prompt with an image cannot be scored")
    };
    assert!(
        matches!(&e, EngineError::InvalidRequest { param: Some(p), .. } if p == "prompt_logprobs"),
        "{e:?}"
    );
    let too_many = ids_request("k", prompt(0, 5), scoring(1, 21));
    let Err(e) = h.generate(too_many).await else {
        panic!("21 alternatives are too many")
    };
    assert!(
        matches!(&e, EngineError::InvalidRequest { param: Some(p), .. } if p == "prompt_logprobs"),
        "{e:?}"
    );
    // A one-token prompt has nothing to score but still answers.
    let one = run(&h, ids_request("one", prompt(0, 0), scoring(2, 0))).await;
    let scores = one.prompt[0].clone().unwrap();
    assert_eq!(scores.len(), 1);
    assert!(scores[0].logprob.is_none());
    assert_eq!(one.tokens[0].len(), 2);
    assert_drained(&h, &probe).await;
}
