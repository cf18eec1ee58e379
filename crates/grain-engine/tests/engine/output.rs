//! What a client sees: stop strings, logprobs, seeds, `n` choices, usage.

use grain_engine::mock::ToyConfig;
use grain_engine::{
    Detail, EngineConfig, FinishReason, GenerationParams, GranularityChoice, GranularitySource,
    ImageUsage,
};

use crate::support::*;

fn sampled(max_tokens: u32, seed: Option<u64>, n: u32) -> GenerationParams {
    GenerationParams {
        max_tokens: Some(max_tokens),
        temperature: 1.0,
        seed,
        n,
        ..GenerationParams::default()
    }
}

#[tokio::test]
async fn stop_strings_end_the_text_and_never_leak() {
    let (h, _) = ready(EngineConfig::default(), no_eos()).await;
    let prompt = request("s", "tell me a story", &[], greedy(80));
    let full = run(&h, prompt.clone()).await.text[0].clone();
    assert_eq!(full.len(), 80, "one byte per token");

    // A 3-letter stop string taken from the middle of the greedy text, and one that never occurs.
    let stop = full[30..33].to_owned();
    let cut = full.find(&stop).unwrap();
    let mut req = prompt;
    req.params.stop = vec!["never-generated".into(), stop.clone()];
    let out = run(&h, req).await;
    assert_eq!(
        out.text[0],
        full[..cut],
        "text ends right before the stop string"
    );
    assert_eq!(out.finish[0], Some(FinishReason::Stop));
    for d in &out.deltas[0] {
        assert!(!d.contains(&stop));
    }
    // The stop string's tokens were generated (and counted) but not shown.
    assert_eq!(
        out.usage.unwrap().completion_tokens as usize,
        cut + stop.len()
    );
}

#[tokio::test]
async fn stop_string_spanning_the_length_limit_is_released() {
    let (h, _) = ready(EngineConfig::default(), no_eos()).await;
    let full = run(&h, request("s", "abc", &[], greedy(20))).await.text[0].clone();
    // Text ending with a prefix of a stop string that never completes comes out at the end.
    let tail = &full[18..];
    let mut req = request("s", "abc", &[], greedy(20));
    req.params.stop = vec![format!("{tail}\u{1}")];
    let out = run(&h, req).await;
    assert_eq!(out.text[0], full);
    assert_eq!(out.finish[0], Some(FinishReason::Length));
}

#[tokio::test]
async fn logprobs_come_with_every_token() {
    let (h, _) = ready(EngineConfig::default(), no_eos()).await;
    let mut req = request("l", "hello", &[], greedy(10));
    req.params.logprobs = true;
    req.params.top_logprobs = 3;
    let mut stream = h.generate(req).await.unwrap();
    let mut tokens = 0;
    while let Some(ev) = stream.next().await {
        if let grain_engine::Event::Delta {
            token_ids,
            logprobs,
            ..
        } = ev
        {
            assert_eq!(token_ids.len(), logprobs.len());
            for (id, lp) in token_ids.iter().zip(&logprobs) {
                assert_eq!(lp.bytes, vec![*id as u8]);
                assert!(lp.logprob <= 0.0);
                assert_eq!(lp.top.len(), 3);
                // Greedy: the sampled token is the most likely alternative.
                assert_eq!(lp.top[0].1, lp.bytes);
                assert_eq!(lp.top[0].2, lp.logprob);
                assert!(lp.top[0].2 >= lp.top[1].2 && lp.top[1].2 >= lp.top[2].2);
                tokens += 1;
            }
        }
    }
    assert_eq!(tokens, 10);
}

#[tokio::test]
async fn same_seed_same_output_other_seed_other_output() {
    let (h, _) = ready(EngineConfig::default(), no_eos()).await;
    let a = run(&h, request("a", "seeded", &[], sampled(40, Some(7), 1))).await;
    let b = run(&h, request("b", "seeded", &[], sampled(40, Some(7), 1))).await;
    let c = run(&h, request("c", "seeded", &[], sampled(40, Some(8), 1))).await;
    assert_eq!(a.tokens, b.tokens);
    assert_ne!(a.tokens, c.tokens);
}

#[tokio::test]
async fn n_choices_are_independent_and_reproducible() {
    let (h, _) = ready(EngineConfig::default(), no_eos()).await;
    let out = run(&h, request("n", "three ways", &[], sampled(30, Some(1), 3))).await;
    assert_eq!(out.finish, vec![Some(FinishReason::Length); 3]);
    assert_ne!(out.tokens[0], out.tokens[1]);
    assert_ne!(out.tokens[1], out.tokens[2]);
    assert_eq!(out.usage.as_ref().unwrap().completion_tokens, 90);
    let again = run(&h, request("n", "three ways", &[], sampled(30, Some(1), 3))).await;
    assert_eq!(out.tokens, again.tokens);

    // Greedy choices cannot differ.
    let mut req = request("g", "three ways", &[], greedy(30));
    req.params.n = 2;
    let out = run(&h, req).await;
    assert_eq!(out.tokens[0], out.tokens[1]);
}

#[tokio::test]
async fn usage_counts_visual_tokens_per_image() {
    // Toy images have 1 + len % 3 crops; toy granularities are [1, 2, 4, 8, 16] per crop.
    let (h, _) = ready(EngineConfig::default(), ToyConfig::default()).await;
    let two_crops = [0u8; 4];
    let three_crops = [0u8; 5];
    let text = "what is this";
    // BOS + "U:" + text + one placeholder per image.
    let text_tokens = 1 + 2 + text.len() as u32;

    let req = request(
        "u",
        text,
        &[(&two_crops, Detail::Low), (&three_crops, Detail::High)],
        greedy(3),
    );
    let usage = run(&h, req).await.usage.unwrap();
    assert_eq!(usage.visual_tokens, 2 + 3 * 16);
    assert_eq!(usage.visual_tokens_full, 5 * 16);
    assert_eq!(usage.prompt_tokens, text_tokens + 2 + 48);
    assert_eq!(
        usage.images,
        vec![
            ImageUsage {
                granularity: 1,
                source: GranularitySource::Detail
            },
            ImageUsage {
                granularity: 16,
                source: GranularitySource::Detail
            },
        ]
    );

    let mut req = request("u", text, &[(&two_crops, Detail::Low)], greedy(3));
    req.granularity = GranularityChoice::Fixed(4);
    let usage = run(&h, req).await.usage.unwrap();
    assert_eq!(
        usage.visual_tokens, 8,
        "the request-level choice overrides detail"
    );
    assert_eq!(usage.images[0].source, GranularitySource::Request);
}

/// A toy model that wants to end right away (EOS far ahead of every letter).
fn eager_eos() -> ToyConfig {
    ToyConfig {
        eos_bias: 1000.0,
        ..ToyConfig::default()
    }
}

#[tokio::test]
async fn min_tokens_and_ignore_eos_hold_eos_back() {
    let (h, _) = ready(EngineConfig::default(), eager_eos()).await;
    let plain = run(&h, request("p", "hi", &[], greedy(20))).await;
    assert_eq!(
        (plain.text[0].len(), plain.finish[0]),
        (0, Some(FinishReason::Stop))
    );

    let mut min = greedy(20);
    min.min_tokens = 5;
    let out = run(&h, request("m", "hi", &[], min)).await;
    assert_eq!(out.text[0].len(), 5, "EOS right after the fifth token");
    assert_eq!(out.finish[0], Some(FinishReason::Stop));
    assert_eq!(out.usage.unwrap().completion_tokens, 6, "EOS is counted");

    let mut ignore = sampled(12, Some(3), 2);
    ignore.ignore_eos = true;
    let out = run(&h, request("i", "hi", &[], ignore)).await;
    for c in 0..2 {
        assert_eq!(out.text[c].len(), 12, "choice {c} runs to max_tokens");
        assert_eq!(out.finish[c], Some(FinishReason::Length));
    }

    let mut bad = greedy(4);
    bad.min_tokens = 5;
    let err = h.generate(request("b", "hi", &[], bad)).await.unwrap_err();
    assert!(err.to_string().contains("min_tokens"), "{err}");
}

#[tokio::test]
async fn the_n_choices_of_a_request_compute_their_prompt_once() {
    let (h, _) = ready(EngineConfig::default(), no_eos()).await;
    let prompt = "a prompt long enough to fill a few sixteen-position KV blocks";
    let out = run(&h, request("n", prompt, &[], sampled(4, Some(1), 3))).await;
    let usage = out.usage.unwrap();
    let block = EngineConfig::default().block_size as u32;
    assert!(usage.prompt_tokens > 3 * block, "{usage:?}");
    assert_eq!(
        usage.cached_tokens,
        (usage.prompt_tokens - 1) / block * block,
        "choices 1 and 2 attach choice 0's prompt blocks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_token_ids_end_the_choice_after_the_token_and_wait_for_min_tokens() {
    let (h, _) = ready(EngineConfig::default(), no_eos()).await;
    let free = run(&h, request("free", "count", &[], greedy(24))).await;
    let tokens = free.tokens[0].clone();
    let stop = tokens[5];
    let first = tokens.iter().position(|&t| t == stop).unwrap();

    let params = grain_engine::GenerationParams {
        stop_token_ids: vec![stop, 999_999],
        ..greedy(24)
    };
    let stopped = run(&h, request("stop", "count", &[], params.clone())).await;
    assert_eq!(
        stopped.tokens[0],
        tokens[..=first],
        "greedy up to and including the stop token"
    );
    assert_eq!(stopped.finish[0], Some(FinishReason::Stop));
    assert_eq!(
        stopped.usage.as_ref().unwrap().completion_tokens as usize,
        first + 1
    );

    // Not before min_tokens: the token is masked out until then.
    let late = run(
        &h,
        request(
            "late",
            "count",
            &[],
            grain_engine::GenerationParams {
                min_tokens: first as u32 + 3,
                ..params
            },
        ),
    )
    .await;
    let got = &late.tokens[0];
    let early = &got[..(first + 3).min(got.len())];
    assert!(
        !early.contains(&stop),
        "{got:?} has {stop} before min_tokens"
    );
    assert!(got.len() >= first + 3);
    if late.finish[0] == Some(FinishReason::Stop) {
        assert_eq!(got.last(), Some(&stop));
    }
}
