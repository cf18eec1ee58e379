//! The scheduler thread drives the granularity ceiling controller and hands its ceiling to the
//! runner: pushed once at start, lowered when requests miss the latency target.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grain_engine::controller::{ControllerConfig, GranularityCeiling};
use grain_engine::mock::{toy_card, ToyConfig, ToyPreprocessor, ToyProbe, ToyRunner};
use grain_engine::{
    ChatRequest, EngineConfig, EngineError, EngineHandle, Event, GenerationParams,
    GranularityChoice, Message, ModelRunner, Part, PrepareItem, PreparedPrompt, Role, SeqId,
    StepBatch, TokenDecoder,
};

type Seen = Arc<Mutex<Vec<Option<GranularityCeiling>>>>;

/// The toy model, recording every ceiling the worker hands it.
struct Recording {
    inner: ToyRunner,
    seen: Seen,
}

impl ModelRunner for Recording {
    fn prepare(&mut self, items: &[PrepareItem]) -> Vec<Result<PreparedPrompt, EngineError>> {
        self.inner.prepare(items)
    }
    fn forward(&mut self, batch: &StepBatch) -> Result<Vec<Vec<f32>>, EngineError> {
        self.inner.forward(batch)
    }
    fn release(&mut self, seq: SeqId) {
        self.inner.release(seq)
    }
    fn kv_geometry(&self) -> (usize, usize) {
        self.inner.kv_geometry()
    }
    fn eos_ids(&self) -> Vec<u32> {
        self.inner.eos_ids()
    }
    fn decoder(&self) -> Arc<dyn TokenDecoder> {
        self.inner.decoder()
    }
    fn set_granularity_ceiling(&mut self, ceiling: Option<GranularityCeiling>) {
        self.seen.lock().unwrap().push(ceiling);
    }
}

fn start(controller: ControllerConfig) -> (EngineHandle, Arc<ToyProbe>, Seen) {
    let toy = ToyConfig::default();
    let engine = EngineConfig {
        block_size: toy.block_size,
        controller,
        ..EngineConfig::default()
    };
    let card = toy_card(&toy);
    let inner = ToyRunner::new(toy);
    let probe = inner.probe();
    let seen: Seen = Arc::default();
    let runner = Recording {
        inner,
        seen: seen.clone(),
    };
    let handle = EngineHandle::start(engine, card, Arc::new(ToyPreprocessor), move || Ok(runner))
        .expect("valid config");
    (handle, probe, seen)
}

fn request(id: &str) -> ChatRequest {
    ChatRequest {
        request_id: id.to_owned(),
        raw_prompt: None,
        messages: vec![Message {
            role: Role::User,
            parts: vec![Part::Text("hello".to_owned())],
        }],
        params: GenerationParams {
            max_tokens: Some(3),
            temperature: 0.0,
            ..GenerationParams::default()
        },
        granularity: GranularityChoice::Auto,
    }
}

async fn run(h: &EngineHandle, id: &str) {
    let mut s = h.generate(request(id)).await.expect("accepted");
    while let Some(e) = s.next().await {
        if matches!(e, Event::Done { .. } | Event::Error(_)) {
            break;
        }
    }
}

/// Polls `cond` with a generous deadline (it guards against hangs, not speed).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_controller_the_runner_is_told_there_is_no_ceiling() {
    let (h, _probe, seen) = start(ControllerConfig::default());
    h.wait_ready().await.unwrap();
    run(&h, "a").await;
    assert_eq!(*seen.lock().unwrap(), vec![None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_target_lowers_the_ceiling_one_step() {
    // Target 5 ms; any one sample counts and the step is immediate, never back up in this test.
    let controller = ControllerConfig {
        enabled: true,
        target_ms: 5,
        min_samples: 1,
        step_down_after_ms: 0,
        cooldown_ms: 0,
        step_up_after_ms: 3_600_000,
        window_ms: 3_600_000,
        floor: 1,
        kv_high_water_pct: 101,
        ..ControllerConfig::default()
    };
    let (h, probe, seen) = start(controller);
    h.wait_ready().await.unwrap();
    until("the initial ceiling", || !seen.lock().unwrap().is_empty()).await;
    let top = GranularityCeiling {
        max: 16,
        explicit_too: false,
    };
    assert_eq!(seen.lock().unwrap()[0], Some(top));

    // Hold the first request in `prepare` for 30 ms: its time to first token is at least that.
    probe.close_gate();
    let slow = {
        let h = h.clone();
        tokio::spawn(async move { run(&h, "slow").await })
    };
    until("the request at the gate", || probe.blocked().is_some()).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    probe.open_gate();
    slow.await.unwrap();

    // Keep the scheduler busy until its next tick has seen the sample.
    let mut n = 0;
    while seen.lock().unwrap().len() < 2 {
        n += 1;
        assert!(
            n < 2_000,
            "the ceiling never changed: {:?}",
            seen.lock().unwrap()
        );
        run(&h, "more").await;
    }
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen[1],
        Some(GranularityCeiling {
            max: 8,
            explicit_too: false
        }),
        "{seen:?}"
    );
}
