//! Admission, errors, failures of the model, readiness and drain.

use std::sync::Arc;
use std::time::Duration;

use grain_engine::mock::{
    toy_card, ToyConfig, ToyPreprocessor, ToyRunner, PANIC_IN_FORWARD, PANIC_IN_PREPARE,
};
use grain_engine::{
    Detail, EngineConfig, EngineError, EngineHandle, FinishReason, GranularityChoice,
};

use crate::support::*;

#[tokio::test]
async fn full_engine_answers_overloaded_until_a_slot_frees() {
    let cfg = EngineConfig {
        max_concurrent_requests: 2,
        channel_capacity: 1,
        retry_after_s: 3,
        ..EngineConfig::default()
    };
    let (h, _) = ready(cfg, no_eos()).await;
    // Unread streams keep their requests in flight.
    let a = h
        .generate(request("a", "one", &[], greedy(50)))
        .await
        .unwrap();
    let _b = h
        .generate(request("b", "two", &[], greedy(50)))
        .await
        .unwrap();
    let err = h
        .generate(request("c", "three", &[], greedy(5)))
        .await
        .unwrap_err();
    assert_eq!(err, EngineError::Overloaded { retry_after_s: 3 });
    assert_eq!(h.stats().in_flight, 2);

    drop(a);
    until("a slot to free", || h.stats().in_flight == 1).await;
    let out = run(&h, request("c", "three", &[], greedy(5))).await;
    assert_eq!(out.tokens[0].len(), 5);
}

#[tokio::test]
async fn full_scheduler_queue_answers_overloaded() {
    let cfg = EngineConfig {
        max_queue: 1,
        ..EngineConfig::default()
    };
    let (h, probe) = ready(cfg, no_eos()).await;
    probe.close_gate();
    let first = tokio::spawn({
        let h = h.clone();
        async move { run(&h, request("a", "first", &[], greedy(3))).await }
    });
    until("the first at the gate", || probe.blocked() == Some(1)).await;
    let second = tokio::spawn({
        let h = h.clone();
        async move { run(&h, request("b", "second", &[], greedy(3))).await }
    });
    until("the second queued", || h.stats().queued == 1).await;
    let err = h
        .generate(request("c", "third", &[], greedy(3)))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Overloaded { .. }), "{err:?}");
    probe.open_gate();
    assert_eq!(within("first", first).await.unwrap().tokens[0].len(), 3);
    assert_eq!(within("second", second).await.unwrap().tokens[0].len(), 3);
}

#[tokio::test]
async fn prompt_level_errors_come_back_before_streaming() {
    let cfg = EngineConfig {
        max_context: Some(64),
        ..EngineConfig::default()
    };
    let (h, _) = ready(cfg, ToyConfig::default()).await;

    let long = "x".repeat(100);
    let err = h
        .generate(request("a", &long, &[], greedy(5)))
        .await
        .unwrap_err();
    // BOS + "U:" + 100 bytes.
    assert_eq!(
        err,
        EngineError::ContextLengthExceeded {
            prompt_tokens: 103,
            max: 64
        }
    );

    let mut req = request("b", "hi", &[(b"img", Detail::Auto)], greedy(5));
    req.granularity = GranularityChoice::Fixed(3);
    let err = h.generate(req).await.unwrap_err();
    assert!(
        matches!(&err, EngineError::InvalidRequest { param: Some(p), .. } if p == "granularity"),
        "{err:?}"
    );

    let err = h
        .generate(request("c", "hi", &[(b"", Detail::Auto)], greedy(5)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::InvalidImage { index: 0, .. }),
        "{err:?}"
    );

    let err = h
        .generate(request(
            "d",
            "hi",
            &[],
            grain_engine::GenerationParams {
                top_p: 0.0,
                ..greedy(5)
            },
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidRequest { .. }), "{err:?}");
    until("refused requests released", || h.stats().in_flight == 0).await;
}

#[tokio::test]
async fn max_tokens_is_clamped_to_the_context() {
    let cfg = EngineConfig {
        max_context: Some(64),
        ..EngineConfig::default()
    };
    let (h, _) = ready(cfg, no_eos()).await;
    let out = run(&h, request("e", "hi", &[], greedy(64))).await;
    // BOS + "U:" + "hi" = 5 prompt positions, so 59 tokens fill the context.
    assert_eq!(out.tokens[0].len(), 59);
    assert_eq!(out.finish[0], Some(FinishReason::Length));
    // More than the whole context can never be honoured: refused, not clamped.
    let err = h
        .generate(request("f", "hi", &[], greedy(65)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::InvalidRequest { param: Some(p), .. } if p == "max_tokens"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_panicking_model_fails_only_the_affected_requests() {
    let (h, _) = ready(EngineConfig::default(), no_eos()).await;
    let err = h
        .generate(request("p", PANIC_IN_PREPARE, &[], greedy(5)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::Internal(m) if m.contains("panicked")),
        "{err:?}"
    );

    let out = run(&h, request("f", PANIC_IN_FORWARD, &[], greedy(5))).await;
    assert!(matches!(&out.error, Some(EngineError::Internal(m)) if m.contains("panicked")));

    // The engine keeps serving, and the failed requests left nothing behind.
    assert!(h.is_ready());
    let out = run(&h, request("ok", "fine", &[], greedy(5))).await;
    assert_eq!(out.tokens[0].len(), 5);
    until("blocks freed", || h.stats().kv_blocks_used == 0).await;
}

#[tokio::test]
async fn repeated_panics_take_the_engine_out_of_service() {
    let (h, _) = ready(EngineConfig::default(), no_eos()).await;
    for _ in 0..3 {
        let out = run(&h, request("f", PANIC_IN_FORWARD, &[], greedy(5))).await;
        assert!(out.error.is_some());
    }
    until("not ready", || !h.is_ready()).await;
    let err = h
        .generate(request("ok", "fine", &[], greedy(5)))
        .await
        .unwrap_err();
    assert_eq!(err, EngineError::NotReady);
}

#[tokio::test]
async fn failed_load_is_reported_and_refuses_requests() {
    let toy = ToyConfig::default();
    let h = EngineHandle::start(
        EngineConfig::default(),
        toy_card(&toy),
        Arc::new(ToyPreprocessor),
        || Err::<ToyRunner, _>("weights not found".to_owned()),
    )
    .unwrap();
    let err = h.wait_ready().await.unwrap_err();
    assert!(matches!(&err, EngineError::Internal(m) if m.contains("weights not found")));
    assert!(!h.is_ready());
    let err = h
        .generate(request("a", "hi", &[], greedy(5)))
        .await
        .unwrap_err();
    assert_eq!(err, EngineError::NotReady);
}

#[tokio::test]
async fn block_size_mismatch_fails_the_start() {
    let toy = ToyConfig::default();
    let cfg = EngineConfig {
        block_size: 32,
        ..EngineConfig::default()
    };
    let h = EngineHandle::start(cfg, toy_card(&toy), Arc::new(ToyPreprocessor), move || {
        Ok(ToyRunner::new(toy))
    })
    .unwrap();
    let err = h.wait_ready().await.unwrap_err();
    assert!(matches!(&err, EngineError::Internal(m) if m.contains("block_size")));
}

#[tokio::test]
async fn invalid_config_is_refused_up_front() {
    let toy = ToyConfig::default();
    let cfg = EngineConfig {
        max_num_seqs: 0,
        ..EngineConfig::default()
    };
    let err = EngineHandle::start(cfg, toy_card(&toy), Arc::new(ToyPreprocessor), move || {
        Ok(ToyRunner::new(toy))
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("max_num_seqs"));
}

#[tokio::test]
async fn drain_refuses_new_work_and_finishes_in_flight() {
    let (h, _) = ready(EngineConfig::default(), no_eos()).await;
    let stream = h
        .generate(request("a", "in flight", &[], greedy(30)))
        .await
        .unwrap();
    h.begin_drain();
    assert!(!h.is_ready(), "readiness drops while draining");
    let err = h
        .generate(request("b", "late", &[], greedy(5)))
        .await
        .unwrap_err();
    assert_eq!(err, EngineError::ShuttingDown);
    assert!(!h.wait_idle(Duration::from_millis(1)).await || h.stats().in_flight == 0);
    let out = collect(stream, 1).await;
    assert_eq!(out.tokens[0].len(), 30);
    assert!(h.wait_idle(Duration::from_secs(20)).await);
}

#[tokio::test]
async fn model_card_is_served_as_given() {
    let toy = ToyConfig::default();
    let (h, _) = ready(EngineConfig::default(), toy.clone()).await;
    assert_eq!(h.model_card(), &toy_card(&toy));
    assert_eq!(h.stats().kv_blocks_total, toy.num_blocks);
}

/// The gauges are published before a request's final event goes out: a client that has read its
/// whole answer (and, say, scrapes `/metrics` next) never sees its own request still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_are_settled_when_the_final_event_arrives() {
    let (h, _) = ready(EngineConfig::default(), no_eos()).await;
    for i in 0..20 {
        let out = run(&h, request("a", &format!("prompt {i}"), &[], greedy(3))).await;
        assert_eq!(out.tokens[0].len(), 3);
        let s = h.stats();
        assert_eq!(
            (s.running, s.waiting, s.kv_blocks_used),
            (0, 0, 0),
            "after request {i}"
        );
    }
}
