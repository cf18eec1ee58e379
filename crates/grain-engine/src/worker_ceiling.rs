//! The worker's side of the load-adaptive granularity ceiling ([`crate::controller`]): waking
//! for its ticks, feeding it each request's queue wait and time to first token, and handing its
//! ceiling to the runner.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, RecvError, RecvTimeoutError};
use std::time::Instant;

use super::Worker;
use crate::controller::{CeilingDriver, TICK};
use crate::handle::{panic_message, Submission};
use crate::runner::{ModelRunner, StepBatch};

impl<R: ModelRunner> Worker<R> {
    /// Blocks for the next submission, waking every [`TICK`] while the ceiling must still climb.
    pub(super) fn wait_for_work(
        &self,
        submissions: &Receiver<Submission>,
    ) -> Result<Option<Submission>, RecvError> {
        if !self
            .ceiling
            .as_ref()
            .is_some_and(CeilingDriver::needs_ticks)
        {
            return submissions.recv().map(Some);
        }
        match submissions.recv_timeout(TICK) {
            Ok(s) => Ok(Some(s)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(RecvError),
        }
    }

    /// Feeds the ceiling controller: a request's first step ends its queue wait, its first
    /// logits (after the forward) end its time to first token.
    pub(super) fn observe_step(&mut self, batch: &StepBatch, forwarded: bool) {
        let Some(c) = &mut self.ceiling else {
            return;
        };
        let now = Instant::now();
        for e in &batch.entries {
            let Some(&(key, _)) = self.owners.get(&e.seq) else {
                continue;
            };
            if !forwarded {
                c.scheduled(key, now);
            } else if e.want_logits {
                c.first_token(key, now);
            }
        }
    }

    pub(super) fn tick_ceiling(&mut self) {
        let Some(c) = &mut self.ceiling else {
            return;
        };
        let total = self.state.blocks_total();
        let kv_usage = if total == 0 {
            0.0
        } else {
            self.state.blocks_used() as f64 / total as f64
        };
        if let Some(g) = c.tick(Instant::now(), self.state.num_waiting(), kv_usage) {
            tracing::info!(
                ceiling = g,
                waiting = self.state.num_waiting(),
                kv_usage,
                "granularity ceiling changed"
            );
            self.push_ceiling();
        }
    }

    /// Hands the current ceiling to the runner (`None` when the controller is off).
    pub(super) fn push_ceiling(&mut self) {
        let ceiling = self.ceiling.as_ref().map(CeilingDriver::ceiling);
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| {
            self.runner.set_granularity_ceiling(ceiling)
        })) {
            tracing::error!(
                "model panicked while setting the ceiling: {}",
                panic_message(&*p)
            );
        }
    }
}
