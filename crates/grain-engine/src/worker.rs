//! The scheduler thread: a thin loop around [`State`] and the [`ModelRunner`].
//!
//! Each turn: take new submissions, `prepare` them in one batch, drop requests whose client went
//! away, `schedule` a step, run `forward`, sample, queue events, deliver them without blocking, and
//! publish stats. The runner is called only here, and every call is wrapped in `catch_unwind`: a
//! panicking model fails the requests involved instead of taking the thread down silently.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{EngineError, ModelCard, Usage};
use crate::config::EngineConfig;
use crate::controller::{CeilingDriver, Controller};
use crate::handle::{panic_message, Shared, Status, Submission};
use crate::json_mode::TokenTable;
use crate::prefix::PrefixKeyer;
use crate::request::{ActiveRequest, Delivery, TokenCtx};
use crate::runner::{ModelRunner, PrepareItem, PreparedPrompt, SeqId, StepBatch, TokenDecoder};
use crate::sampling::SamplingParams;
use crate::state::{Limits, State};

/// After this many panics in a row from `prepare`, or from `forward`, the model is presumed broken
/// and the worker stops. Counted per call kind: a working `prepare` says nothing about `forward`.
const MAX_CONSECUTIVE_PANICS: u32 = 3;

/// How often to retry delivering events to a slow client when there is nothing to compute.
const OUTBOX_POLL: Duration = Duration::from_millis(2);

pub(crate) fn run<R, F>(
    config: EngineConfig,
    card: ModelCard,
    load: F,
    submissions: Receiver<Submission>,
    shared: Arc<Shared>,
) where
    R: ModelRunner,
    F: FnOnce() -> Result<R, String>,
{
    let runner = match catch_unwind(AssertUnwindSafe(load)) {
        Ok(Ok(runner)) => runner,
        Ok(Err(why)) => return fail_start(&shared, format!("model load failed: {why}")),
        Err(p) => {
            return fail_start(
                &shared,
                format!("model load panicked: {}", panic_message(&*p)),
            )
        }
    };
    let worker = match Worker::new(&config, &card, runner, shared.clone()) {
        Ok(w) => w,
        Err(why) => return fail_start(&shared, why),
    };
    shared.status.send_replace(Status::Ready);
    tracing::info!(
        kv_blocks = worker.state.blocks_total(),
        max_model_len = worker.state.max_model_len(),
        "scheduler ready"
    );
    worker.serve(submissions);
}

fn fail_start(shared: &Shared, why: String) {
    tracing::error!(%why, "engine failed to start");
    shared.status.send_replace(Status::Failed(why));
}

struct Worker<R> {
    runner: R,
    decoder: Arc<dyn TokenDecoder>,
    eos: Vec<u32>,
    state: State,
    shared: Arc<Shared>,
    default_max_tokens: usize,
    requests: HashMap<u64, ActiveRequest>,
    /// Which request and choice each live sequence belongs to.
    owners: HashMap<SeqId, (u64, usize)>,
    next_seq: u64,
    next_request: u64,
    prepare_panics: u32,
    forward_panics: u32,
    /// The load-adaptive granularity ceiling, when enabled.
    ceiling: Option<CeilingDriver>,
    /// Keys prompts' blocks for the prefix cache (`None`: prefix caching off).
    prefix_keyer: Option<PrefixKeyer>,
    /// Every token's text, for JSON mode; built by the first request that needs it.
    token_table: OnceCell<TokenTable>,
}

impl<R: ModelRunner> Worker<R> {
    fn new(
        config: &EngineConfig,
        card: &ModelCard,
        runner: R,
        shared: Arc<Shared>,
    ) -> Result<Self, String> {
        let (block_size, runner_blocks) = runner.kv_geometry();
        if block_size != config.block_size {
            return Err(format!(
                "block_size mismatch: engine config says {}, the model's KV cache uses {block_size}",
                config.block_size
            ));
        }
        let num_blocks = config
            .num_kv_blocks
            .map_or(runner_blocks, |n| n.min(runner_blocks));
        if num_blocks == 0 || u32::try_from(num_blocks).is_err() {
            return Err(format!("unusable KV cache of {num_blocks} blocks"));
        }
        let limits = Limits {
            max_num_seqs: config.max_num_seqs,
            max_num_batched_tokens: config.max_num_batched_tokens,
            max_context: config.max_context.unwrap_or(card.context_length as usize),
        };
        shared.blocks_total.store(num_blocks, Ordering::Relaxed);
        let ceiling = if config.controller.enabled {
            let c = Controller::new(config.controller.clone(), &card.granularities)
                .map_err(|e| e.to_string())?;
            Some(CeilingDriver::new(c))
        } else {
            None
        };
        Ok(Self {
            decoder: runner.decoder(),
            eos: runner.eos_ids(),
            runner,
            state: State::new(limits, block_size, num_blocks),
            shared,
            default_max_tokens: config.default_max_tokens as usize,
            requests: HashMap::new(),
            owners: HashMap::new(),
            next_seq: 0,
            next_request: 0,
            prepare_panics: 0,
            forward_panics: 0,
            ceiling,
            prefix_keyer: config
                .prefix_caching
                .then(|| PrefixKeyer::new(config.block_size)),
            token_table: OnceCell::new(),
        })
    }

    fn serve(mut self, submissions: Receiver<Submission>) {
        let mut open = true;
        self.push_ceiling();
        loop {
            let mut arrivals = Vec::new();
            if self.state.is_idle() {
                if self.requests.is_empty() {
                    if !open {
                        break;
                    }
                    match self.wait_for_work(&submissions) {
                        Ok(Some(s)) => arrivals.push(s),
                        Ok(None) => {} // A ceiling tick is due.
                        Err(_) => break,
                    }
                } else if open {
                    // Only undelivered events are left: give the clients a moment to read.
                    match submissions.recv_timeout(OUTBOX_POLL) {
                        Ok(s) => arrivals.push(s),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => open = false,
                    }
                } else {
                    std::thread::sleep(OUTBOX_POLL);
                }
            }
            loop {
                match submissions.try_recv() {
                    Ok(s) => arrivals.push(s),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }

            self.admit(arrivals);
            self.reap_disconnected();
            let batch = self.state.schedule();
            self.note_prefix_hits();
            if !batch.entries.is_empty() {
                self.step(&batch);
            } else if !self.state.is_idle() {
                // The policy guarantees progress; if that is ever broken, don't spin a core.
                tracing::error!(
                    running = self.state.num_running(),
                    waiting = self.state.num_waiting(),
                    "scheduler made no progress"
                );
                std::thread::sleep(OUTBOX_POLL);
            }
            // Stats first: a client that has its final event may read the gauges at once.
            self.publish_stats();
            self.deliver();
            self.publish_stats();
            self.tick_ceiling();

            if self.prepare_panics.max(self.forward_panics) >= MAX_CONSECUTIVE_PANICS {
                self.shut_down_broken();
                return;
            }
        }
        tracing::info!("scheduler stopped: every engine handle was dropped");
    }

    /// Prepares new requests in one batch and queues their sequences.
    fn admit(&mut self, arrivals: Vec<Submission>) {
        let picked_up = Instant::now();
        self.shared
            .queued
            .fetch_sub(arrivals.len(), Ordering::AcqRel);
        let mut subs = Vec::new();
        let mut items = Vec::new();
        for mut sub in arrivals {
            if sub.events.is_closed() {
                continue; // The caller gave up while the request was queued.
            }
            let seqs = (0..sub.request.params.n.max(1))
                .map(|_| {
                    self.next_seq += 1;
                    SeqId(self.next_seq)
                })
                .collect();
            items.push(PrepareItem {
                seqs,
                prompt_ids: std::mem::take(&mut sub.request.prompt_ids),
                images: std::mem::take(&mut sub.request.images),
                granularity: sub.request.granularity,
            });
            subs.push(sub);
        }
        if items.is_empty() {
            return;
        }
        let results = match catch_unwind(AssertUnwindSafe(|| self.runner.prepare(&items))) {
            Ok(results) if results.len() == items.len() => {
                self.prepare_panics = 0;
                results
            }
            Ok(results) => {
                let msg = format!(
                    "prepare returned {} results for {} requests",
                    results.len(),
                    items.len()
                );
                vec![Err(EngineError::Internal(msg)); items.len()]
            }
            Err(p) => {
                self.prepare_panics += 1;
                let msg = format!("model panicked while preparing: {}", panic_message(&*p));
                tracing::error!(%msg);
                vec![Err(EngineError::Internal(msg)); items.len()]
            }
        };
        for ((sub, item), result) in subs.into_iter().zip(items).zip(results) {
            let keys = match (&result, &self.prefix_keyer) {
                (Ok(p), Some(keyer)) => keyer.prompt_keys(&item.prompt_ids, &item.images, p),
                _ => Vec::new(),
            };
            self.enqueue(sub, item, result, keys, picked_up);
        }
    }

    fn enqueue(
        &mut self,
        sub: Submission,
        item: PrepareItem,
        prepared: Result<PreparedPrompt, EngineError>,
        prefix_keys: Vec<u64>,
        picked_up: Instant,
    ) {
        let Submission {
            request,
            events,
            accepted,
            ticket,
            span,
        } = sub;
        let seqs = item.seqs;
        let max_new = request
            .params
            .max_tokens
            .map_or(self.default_max_tokens, |m| m as usize);
        let queued = prepared.and_then(|p| {
            for (i, &seq) in seqs.iter().enumerate() {
                let keys = prefix_keys.clone();
                if let Err(e) = self.state.add_with_prefix(seq, p.prompt_len, max_new, keys) {
                    seqs[..i].iter().for_each(|&s| {
                        self.state.remove(s);
                    });
                    return Err(e);
                }
                if request.params.prompt_logprobs.is_some() {
                    self.state.score_prompt(seq);
                }
            }
            Ok(p)
        });
        let prepared = match queued {
            Ok(p) => p,
            Err(e) => {
                seqs.iter().for_each(|&s| self.release(s));
                let _ = accepted.send(Err(e));
                return;
            }
        };
        if accepted.send(Ok(())).is_err() {
            // `generate` was dropped while we prepared: nobody will read the stream.
            for &s in &seqs {
                self.state.remove(s);
                self.release(s);
            }
            return;
        }
        let visual_tokens = prepared.prompt_len.saturating_sub(request.text_tokens);
        let usage = Usage {
            prompt_tokens: to_u32(prepared.prompt_len),
            cached_tokens: 0,
            completion_tokens: 0,
            visual_tokens: to_u32(visual_tokens),
            visual_tokens_full: to_u32(prepared.visual_tokens_full),
            images: prepared.images,
        };
        tracing::debug!(parent: &span, prompt_tokens = prepared.prompt_len, visual_tokens, n = seqs.len(), "queued");
        let key = self.next_request;
        self.next_request += 1;
        for (i, &s) in seqs.iter().enumerate() {
            self.owners.insert(s, (key, i));
        }
        let seed = request.params.seed.unwrap_or_else(rand::random);
        let mut sampling = SamplingParams::from(&request.params);
        sampling.set_prompt(&item.prompt_ids);
        let req = ActiveRequest::new(
            request.request_id,
            span,
            events,
            ticket,
            &seqs,
            seed,
            sampling,
            &request.params.stop,
            usage,
            request
                .params
                .prompt_logprobs
                .map(|top| (item.prompt_ids.into(), top)),
            &*self.decoder,
        );
        self.requests.insert(key, req);
        if let Some(c) = &mut self.ceiling {
            c.admitted(key, picked_up);
        }
    }

    /// Cancels requests whose stream was dropped, freeing their blocks before the next schedule.
    fn reap_disconnected(&mut self) {
        let gone: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.is_disconnected())
            .map(|(&k, _)| k)
            .collect();
        for key in gone {
            if let Some(r) = self.requests.get(&key) {
                tracing::debug!(parent: &r.span, request_id = %r.id, "client gone, cancelling");
            }
            self.drop_request(key);
        }
    }

    /// Tells each newly admitted sequence's request how much of its prompt was cached.
    fn note_prefix_hits(&mut self) {
        for (seq, positions) in self.state.take_prefix_hits() {
            let owner = self.owners.get(&seq).map(|o| o.0);
            if let Some(req) = owner.and_then(|k| self.requests.get_mut(&k)) {
                req.note_cached_tokens(positions);
            }
        }
    }

    fn step(&mut self, batch: &StepBatch) {
        self.observe_step(batch, false);
        let result = catch_unwind(AssertUnwindSafe(|| self.runner.forward(batch)));
        // Blocks this step filled hold valid K/V only if it ran.
        self.state
            .finish_step(matches!(&result, Ok(Ok(rows)) if rows.len() == batch.num_logits()));
        let rows = match result {
            Ok(Ok(rows)) if rows.len() == batch.num_logits() => {
                self.forward_panics = 0;
                rows
            }
            Ok(Ok(rows)) => {
                let msg = format!(
                    "forward returned {} logits rows, {} wanted",
                    rows.len(),
                    batch.num_logits()
                );
                return self.fail_batch(batch, EngineError::Internal(msg));
            }
            Ok(Err(e)) => return self.fail_batch(batch, e),
            Err(p) => {
                self.forward_panics += 1;
                let msg = format!("model panicked in forward: {}", panic_message(&*p));
                tracing::error!(%msg);
                return self.fail_batch(batch, EngineError::Internal(msg));
            }
        };
        self.observe_step(batch, true);
        let ctx = TokenCtx {
            decoder: &*self.decoder,
            eos: &self.eos,
            tokens: &self.token_table,
        };
        let mut finished = Vec::new();
        let mut failed = Vec::new();
        let mut rows = rows.into_iter();
        for entry in &batch.entries {
            let mut mine: Vec<Vec<f32>> = rows.by_ref().take(entry.logits_rows()).collect();
            if mine.is_empty() {
                continue;
            }
            let owner = self.owners.get(&entry.seq).copied();
            let Some((key, index, req)) =
                owner.and_then(|(k, i)| self.requests.get_mut(&k).map(|r| (k, i, r)))
            else {
                // Nobody will read this sequence: drop it rather than let it wait forever.
                finished.push(entry.seq);
                continue;
            };
            if entry.all_logits {
                let scored =
                    req.on_prompt_rows(index, entry.start, &mut mine, &mut self.state, &ctx);
                if let Err(e) = scored {
                    failed.push((key, e));
                    continue;
                }
            }
            let Some(mut row) = mine.pop().filter(|_| entry.want_logits) else {
                continue;
            };
            match req.on_logits(index, &mut row, &mut self.state, &ctx) {
                Ok(false) => {}
                Ok(true) => finished.push(entry.seq),
                Err(e) => failed.push((key, e)),
            }
        }
        for seq in finished {
            self.end_seq(seq);
        }
        for (key, e) in failed {
            self.fail_request(key, e);
        }
    }

    fn fail_batch(&mut self, batch: &StepBatch, error: EngineError) {
        let mut keys: Vec<u64> = batch
            .entries
            .iter()
            .filter_map(|e| self.owners.get(&e.seq).map(|o| o.0))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            self.fail_request(key, error.clone());
        }
    }

    fn fail_request(&mut self, key: u64, error: EngineError) {
        let Some(req) = self.requests.get_mut(&key) else {
            return;
        };
        req.fail(error);
        let seqs: Vec<SeqId> = req.choices.iter().map(|c| c.seq).collect();
        for seq in seqs {
            self.end_seq(seq);
        }
    }

    /// Frees a sequence everywhere. Idempotent.
    fn end_seq(&mut self, seq: SeqId) {
        self.owners.remove(&seq);
        if self.state.remove(seq) {
            self.release(seq);
        }
    }

    fn release(&mut self, seq: SeqId) {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| self.runner.release(seq))) {
            tracing::error!(
                seq = seq.0,
                "model panicked in release: {}",
                panic_message(&*p)
            );
        }
    }

    /// Forgets a request entirely (its ticket is dropped with it).
    fn drop_request(&mut self, key: u64) {
        if let Some(c) = &mut self.ceiling {
            c.forget(key);
        }
        if let Some(req) = self.requests.remove(&key) {
            for c in &req.choices {
                self.end_seq(c.seq);
            }
        }
    }

    fn deliver(&mut self) {
        let mut done = Vec::new();
        for (&key, req) in &mut self.requests {
            match req.deliver() {
                Delivery::Pending => {}
                Delivery::Complete | Delivery::Disconnected => done.push(key),
            }
        }
        for key in done {
            self.drop_request(key);
        }
    }

    fn publish_stats(&self) {
        let s = &self.shared;
        s.running.store(self.state.num_running(), Ordering::Relaxed);
        s.waiting.store(self.state.num_waiting(), Ordering::Relaxed);
        s.blocks_used
            .store(self.state.blocks_used(), Ordering::Relaxed);
        s.preemptions
            .store(self.state.preemptions(), Ordering::Relaxed);
    }

    /// The model keeps panicking: fail everything, report not ready, and stop.
    fn shut_down_broken(mut self) {
        let why = format!("model panicked {MAX_CONSECUTIVE_PANICS} times in a row; worker stopped");
        tracing::error!(%why);
        self.shared.status.send_replace(Status::Failed(why.clone()));
        let keys: Vec<u64> = self.requests.keys().copied().collect();
        for key in keys {
            self.fail_request(key, EngineError::Internal(why.clone()));
        }
        // Best effort: the error events fit unless the client stopped reading long ago.
        for req in self.requests.values_mut() {
            req.deliver();
        }
        self.publish_stats();
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[path = "worker_ceiling.rs"]
mod ceiling;
