//! Continuous batching must not change what any request gets: concurrency, chunked prefill,
//! preemption and cancellation are invisible to the outputs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use grain_engine::mock::{ToyConfig, ToyProbe};
use grain_engine::{
    ChatRequest, Detail, EngineConfig, EngineHandle, FinishReason, GranularityChoice,
};
use tokio::sync::Notify;

use crate::support::*;

/// A mix of text-only and image requests at different granularities and lengths.
fn workload(n: usize) -> Vec<ChatRequest> {
    (0..n)
        .map(|i| {
            let text = format!("question {i} {}", "x".repeat(i * 7 % 50));
            let img_a = vec![i as u8; i + 1];
            let img_b = vec![(i * 3) as u8; 2 * i + 2];
            let images: Vec<(&[u8], Detail)> = match i % 4 {
                0 => vec![],
                1 => vec![(&img_a, Detail::Auto)],
                2 => vec![(&img_a, Detail::Low), (&img_b, Detail::High)],
                _ => vec![(&img_b, Detail::Auto)],
            };
            let mut req = request(
                &format!("r{i}"),
                &text,
                &images,
                greedy(1 + (i as u32 * 13) % 60),
            );
            if i % 4 == 3 {
                req.granularity = GranularityChoice::Fixed([1, 2, 4, 8, 16][i % 5]);
            }
            req
        })
        .collect()
}

pub(crate) async fn solo(reqs: &[ChatRequest], toy: ToyConfig) -> Vec<Output> {
    let (h, _) = ready(EngineConfig::default(), toy).await;
    let mut out = Vec::new();
    for r in reqs {
        out.push(run(&h, r.clone()).await);
    }
    out
}

/// Submits every request while the model is held at its gate, so they are all queued together,
/// then lets the model run and collects the outputs.
pub(crate) async fn together(
    h: &EngineHandle,
    probe: &Arc<ToyProbe>,
    reqs: &[ChatRequest],
) -> Vec<Output> {
    probe.close_gate();
    // One at a time, each queued before the next is sent, so the engine sees them in `reqs`'
    // order every run (spawned together, they arrived in any order, and whether a tight budget
    // preempted depended on it).
    let mut tasks = Vec::with_capacity(reqs.len());
    for (i, r) in reqs.iter().enumerate() {
        let (h2, r) = (h.clone(), r.clone());
        tasks.push(tokio::spawn(async move { run(&h2, r).await }));
        until("the request queued at the gate", || {
            probe
                .blocked()
                .is_some_and(|k| k + h.stats().queued == i + 1)
        })
        .await;
    }
    probe.open_gate();
    let mut out = Vec::new();
    for t in tasks {
        out.push(within("a request to finish", t).await.expect("task"));
    }
    out
}

pub(crate) async fn assert_drained(h: &EngineHandle, probe: &ToyProbe) {
    assert!(h.wait_idle(std::time::Duration::from_secs(20)).await);
    until("stats to settle", || h.stats().kv_blocks_used == 0).await;
    let s = h.stats();
    assert_eq!((s.running, s.waiting, s.in_flight, s.queued), (0, 0, 0, 0));
    assert_eq!(
        probe.live_seqs.load(Ordering::Relaxed),
        0,
        "runner released every sequence"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_greedy_outputs_equal_solo_outputs() {
    let reqs = workload(24);
    let expected = solo(&reqs, ToyConfig::default()).await;
    assert!(
        expected
            .iter()
            .any(|o| o.finish[0] == Some(FinishReason::Stop))
            && expected
                .iter()
                .any(|o| o.finish[0] == Some(FinishReason::Length)),
        "the workload mixes EOS and length endings"
    );

    // A small token budget forces chunked prefill next to decodes; few slots force queueing.
    let cfg = EngineConfig {
        max_num_batched_tokens: 32,
        max_num_seqs: 8,
        ..EngineConfig::default()
    };
    let (h, probe) = ready(cfg, ToyConfig::default()).await;
    let got = together(&h, &probe, &reqs).await;
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g.answer(), e.answer(), "request {i} differs when batched");
    }
    assert!(
        probe.max_prepare_items.load(Ordering::Relaxed) >= 2,
        "prepare was batched"
    );
    let widest = probe.max_batch_seqs.load(Ordering::Relaxed);
    assert!(
        (2..=8).contains(&widest),
        "forward batched within max_num_seqs: {widest}"
    );
    assert_drained(&h, &probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tight_kv_budget_preempts_without_changing_outputs() {
    let reqs: Vec<ChatRequest> = workload(16)
        .into_iter()
        .map(|mut r| {
            r.params.max_tokens = Some(40);
            r.granularity = GranularityChoice::Fixed(2);
            r
        })
        .collect();
    let expected = solo(&reqs, no_eos()).await;

    // 40 blocks of 4 positions: each request alone needs up to ~25 blocks, together ~300.
    let toy = ToyConfig {
        block_size: 4,
        num_blocks: 40,
        ..no_eos()
    };
    let (h, probe) = ready(EngineConfig::default(), toy).await;
    let got = together(&h, &probe, &reqs).await;
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(
            g.answer(),
            e.answer(),
            "request {i} differs after preemption"
        );
        assert_eq!(g.tokens[0].len(), 40);
    }
    assert!(
        h.stats().preemptions > 0,
        "the budget was tight enough to preempt"
    );
    assert_drained(&h, &probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_half_of_100_running_requests_frees_every_block() {
    let cfg = EngineConfig {
        max_num_seqs: 128,
        ..EngineConfig::default()
    };
    let (h, probe) = ready(cfg, no_eos()).await;
    probe.close_gate();
    let started = Arc::new(AtomicUsize::new(0));
    let proceed = Arc::new(Notify::new());
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (h, started, proceed) = (h.clone(), started.clone(), proceed.clone());
            tokio::spawn(async move {
                let text = format!("request number {i}");
                let mut stream = h
                    .generate(request("c", &text, &[], greedy(200)))
                    .await
                    .unwrap();
                let first = stream.next().await;
                assert!(matches!(first, Some(grain_engine::Event::Delta { .. })));
                let wait = proceed.notified();
                started.fetch_add(1, Ordering::SeqCst);
                wait.await;
                if i % 2 == 0 {
                    drop(stream);
                    None
                } else {
                    Some(collect(stream, 1).await)
                }
            })
        })
        .collect();
    // Step the model one call at a time until every request has streamed its first token.
    until("all 100 requests running", || {
        if started.load(Ordering::SeqCst) == 100 && probe.blocked() == Some(0) {
            return true;
        }
        if probe.blocked().is_some() {
            probe.allow(1);
        }
        false
    })
    .await;
    let before = h.stats();
    assert_eq!(before.running, 100);
    assert!(before.kv_blocks_used > 0);

    proceed.notify_waiters();
    // Let the even tasks drop their streams; the odd ones wait on their channel.
    until("cancelled streams dropped", || {
        Arc::strong_count(&proceed) == 51
    })
    .await;
    // The forward at the gate finishes; the next step reaps the cancelled requests.
    for _ in 0..2 {
        probe.allow(1);
        until("the model back at the gate", || probe.blocked() == Some(0)).await;
    }
    let after = h.stats();
    assert_eq!(
        after.running, 50,
        "cancelled sequences left the running set"
    );
    assert!(after.kv_blocks_used < before.kv_blocks_used);

    probe.open_gate();
    let mut finished = 0;
    for t in tasks {
        if let Some(out) = within("a kept request to finish", t).await.unwrap() {
            assert_eq!(out.finish, vec![Some(FinishReason::Length)]);
            assert_eq!(out.tokens[0].len(), 199, "the first token was read before");
            finished += 1;
        }
    }
    assert_eq!(finished, 50);
    assert_drained(&h, &probe).await;
}
