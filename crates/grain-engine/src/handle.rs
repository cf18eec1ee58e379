//! The cloneable engine handle: admission, preprocessing hand-off, and the event stream.
//!
//! The handle is channels and shared counters only. `generate` takes an admission permit first
//! (so overload is cheap to refuse), preprocesses on tokio's blocking pool, hands the request to
//! the scheduler thread and waits until that thread has prepared it, so prompt-level errors
//! (context length, bad granularity) come back as `Err` before any streaming starts.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::api::{ChatRequest, EngineError, EngineStats, Event, ModelCard};
use crate::config::{ConfigError, EngineConfig};
use crate::runner::{ModelRunner, Preprocessor, ValidRequest};
use crate::validate::validate_params;
use crate::worker;

/// Where the scheduler thread is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Status {
    Loading,
    Ready,
    /// Loading failed or the worker could not continue; the message says why.
    Failed(String),
}

/// State the handle and the scheduler thread both see.
#[derive(Debug)]
pub(crate) struct Shared {
    pub status: watch::Sender<Status>,
    pub draining: AtomicBool,
    pub in_flight: watch::Sender<usize>,
    pub queued: AtomicUsize,
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub blocks_used: AtomicUsize,
    pub blocks_total: AtomicUsize,
    pub preemptions: AtomicU64,
}

/// Proof that a request was admitted. Dropping it (when the request is fully answered or
/// abandoned) frees the admission slot and updates the in-flight count `wait_idle` watches.
#[derive(Debug)]
pub(crate) struct Ticket {
    _permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
}

impl Ticket {
    fn new(permit: OwnedSemaphorePermit, shared: Arc<Shared>) -> Self {
        shared.in_flight.send_modify(|n| *n += 1);
        Self {
            _permit: permit,
            shared,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.shared.in_flight.send_modify(|n| *n -= 1);
    }
}

/// A request on its way to the scheduler thread.
#[derive(Debug)]
pub(crate) struct Submission {
    pub request: ValidRequest,
    pub events: mpsc::Sender<Event>,
    /// Answered once the prompt is prepared and queued (or refused).
    pub accepted: oneshot::Sender<Result<(), EngineError>>,
    pub ticket: Ticket,
    pub span: tracing::Span,
}

/// The engine as the HTTP layer sees it. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("model", &self.inner.card.id)
            .field("ready", &self.is_ready())
            .field("stats", &self.stats())
            .finish()
    }
}

struct Inner {
    card: ModelCard,
    /// Most positions per sequence (prompt + completion), as the scheduler will enforce it.
    max_context: usize,
    retry_after_s: u32,
    channel_capacity: usize,
    preprocessor: Arc<dyn Preprocessor>,
    submit: SyncSender<Submission>,
    admission: Arc<Semaphore>,
    shared: Arc<Shared>,
}

impl EngineHandle {
    /// Starts the scheduler thread, which calls `load` to build the model and then serves requests
    /// until every handle is dropped. Returns at once; `is_ready` turns true when `load` succeeds
    /// (see [`EngineHandle::wait_ready`]).
    pub fn start<R, F>(
        config: EngineConfig,
        card: ModelCard,
        preprocessor: Arc<dyn Preprocessor>,
        load: F,
    ) -> Result<Self, ConfigError>
    where
        R: ModelRunner,
        F: FnOnce() -> Result<R, String> + Send + 'static,
    {
        config.validate()?;
        let shared = Arc::new(Shared {
            status: watch::Sender::new(Status::Loading),
            draining: AtomicBool::new(false),
            in_flight: watch::Sender::new(0),
            queued: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            blocks_used: AtomicUsize::new(0),
            blocks_total: AtomicUsize::new(0),
            preemptions: AtomicU64::new(0),
        });
        let (submit, submissions) = sync_channel(config.max_queue);
        let inner = Inner {
            max_context: config.max_context.unwrap_or(card.context_length as usize),
            card: card.clone(),
            retry_after_s: config.retry_after_s,
            channel_capacity: config.channel_capacity,
            preprocessor,
            submit,
            admission: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            shared: shared.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("grain-scheduler".to_owned())
            .spawn(move || worker::run(config, card, load, submissions, shared));
        if let Err(e) = spawned {
            inner.shared.status.send_replace(Status::Failed(format!(
                "cannot spawn scheduler thread: {e}"
            )));
        }
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Validates, admits, preprocesses and queues a request. `Overloaded` when the engine is full,
    /// `ShuttingDown` while draining, `NotReady` before the model is loaded.
    #[tracing::instrument(skip_all, fields(request_id = %req.request_id))]
    pub async fn generate(&self, req: ChatRequest) -> Result<GenerationStream, EngineError> {
        let inner = &self.inner;
        if inner.shared.draining.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        if *inner.shared.status.borrow() != Status::Ready {
            return Err(EngineError::NotReady);
        }
        validate_params(&req.params)?;
        check_max_tokens(req.params.max_tokens, inner.max_context)?;
        let overloaded = || EngineError::Overloaded {
            retry_after_s: inner.retry_after_s,
        };
        let permit = self.admission_permit()?;
        let ticket = Ticket::new(permit, inner.shared.clone());

        let request = self.preprocess_with(move |p| p.preprocess(req)).await?;
        if request.params.prompt_logprobs.is_some() && !request.images.is_empty() {
            // An image's positions are embeddings, not tokens: there is nothing to score there.
            return Err(EngineError::invalid(
                "prompt log-probabilities are only available for prompts without images",
                Some("prompt_logprobs"),
            ));
        }

        let (events, rx) = mpsc::channel(inner.channel_capacity);
        let (accepted, ack) = oneshot::channel();
        let submission = Submission {
            request,
            events,
            accepted,
            ticket,
            span: tracing::Span::current(),
        };
        // Counted before sending so the scheduler's decrement can never come first.
        inner.shared.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = inner.submit.try_send(submission) {
            inner.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(match e {
                TrySendError::Full(_) => overloaded(),
                TrySendError::Disconnected(_) => EngineError::NotReady,
            });
        }
        match ack.await {
            Ok(Ok(())) => Ok(GenerationStream { rx }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(EngineError::Internal(
                "the scheduler stopped before accepting the request".to_owned(),
            )),
        }
    }

    /// The prompt ids `req` would be admitted with (chat template, tokenizer, one placeholder id
    /// per image), without running it. Takes an admission slot while it works.
    pub async fn tokenize(&self, req: ChatRequest) -> Result<Vec<u32>, EngineError> {
        let _permit = self.admission_permit()?;
        Ok(self
            .preprocess_with(move |p| p.preprocess(req))
            .await?
            .prompt_ids)
    }

    /// The text of token ids, special tokens included. Takes an admission slot while it works.
    pub async fn detokenize(&self, ids: Vec<u32>) -> Result<String, EngineError> {
        let _permit = self.admission_permit()?;
        self.preprocess_with(move |p| p.detokenize(&ids)).await
    }

    /// Most positions a sequence may have (prompt and completion), as the scheduler enforces it.
    pub fn max_context(&self) -> usize {
        self.inner.max_context
    }

    fn admission_permit(&self) -> Result<OwnedSemaphorePermit, EngineError> {
        self.inner
            .admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| EngineError::Overloaded {
                retry_after_s: self.inner.retry_after_s,
            })
    }

    /// Runs `f` on the preprocessor on tokio's blocking pool; a panic is an internal error.
    async fn preprocess_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Preprocessor) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let preprocessor = self.inner.preprocessor.clone();
        tokio::task::spawn_blocking(move || catch_unwind(AssertUnwindSafe(|| f(&*preprocessor))))
            .await
            .map_err(|e| EngineError::Internal(format!("preprocessing task failed: {e}")))?
            .map_err(|panic| {
                EngineError::Internal(format!("preprocessing panicked: {}", panic_message(&panic)))
            })?
    }

    pub fn model_card(&self) -> &ModelCard {
        &self.inner.card
    }

    /// Model loaded, scheduler alive, not draining (so a readiness probe takes the replica out of
    /// rotation as soon as shutdown starts).
    pub fn is_ready(&self) -> bool {
        *self.inner.shared.status.borrow() == Status::Ready
            && !self.inner.shared.draining.load(Ordering::Acquire)
    }

    /// Waits until the model is loaded. `Err(Internal)` with the reason if loading failed.
    pub async fn wait_ready(&self) -> Result<(), EngineError> {
        let mut rx = self.inner.shared.status.subscribe();
        let status = rx
            .wait_for(|s| *s != Status::Loading)
            .await
            .map_err(|_| EngineError::Internal("the scheduler thread is gone".to_owned()))?;
        match &*status {
            Status::Ready => Ok(()),
            Status::Failed(why) => Err(EngineError::Internal(why.clone())),
            Status::Loading => Err(EngineError::NotReady),
        }
    }

    /// Stops admitting new requests (`ShuttingDown`); requests already accepted run to the end.
    pub fn begin_drain(&self) {
        self.inner.shared.draining.store(true, Ordering::Release);
    }

    /// Waits until no request is in flight; `false` if `timeout` passed first.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.shared.in_flight.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|&n| n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn stats(&self) -> EngineStats {
        let s = &self.inner.shared;
        EngineStats {
            running: s.running.load(Ordering::Relaxed),
            waiting: s.waiting.load(Ordering::Relaxed),
            queued: s.queued.load(Ordering::Relaxed),
            in_flight: *s.in_flight.borrow(),
            kv_blocks_used: s.blocks_used.load(Ordering::Relaxed),
            kv_blocks_total: s.blocks_total.load(Ordering::Relaxed),
            preemptions: s.preemptions.load(Ordering::Relaxed),
        }
    }
}

/// Events of one request. Dropping it cancels the request at the scheduler's next step.
#[derive(Debug)]
pub struct GenerationStream {
    rx: mpsc::Receiver<Event>,
}

impl GenerationStream {
    /// The next event; `None` after `Done`/`Error` (or if the engine went away).
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Poll form of [`GenerationStream::next`], for adapting into a `futures::Stream`.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

/// A `max_tokens` larger than the whole context can never be honoured, whatever the prompt: it is a
/// client error, not something to clamp silently. (A smaller one that does not fit beside the
/// prompt is clamped to the context left, as documented on `GenerationParams::max_tokens`.)
fn check_max_tokens(max_tokens: Option<u32>, max_context: usize) -> Result<(), EngineError> {
    match max_tokens {
        Some(m) if m as usize > max_context => Err(EngineError::invalid(
            format!(
                "max_tokens is {m}, more than this model's context length of {max_context} tokens \
                 (which the prompt shares)"
            ),
            Some("max_tokens"),
        )),
        _ => Ok(()),
    }
}

/// The text of a caught panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_tokens_beyond_the_context_is_refused() {
        assert!(check_max_tokens(None, 4096).is_ok());
        assert!(check_max_tokens(Some(4096), 4096).is_ok());
        match check_max_tokens(Some(4097), 4096) {
            Err(EngineError::InvalidRequest { param, .. }) => {
                assert_eq!(param.as_deref(), Some("max_tokens"))
            }
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }
}
