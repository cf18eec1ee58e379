//! The scheduler's policy as plain data: queues, token budget, KV block accounting, preemption.
//!
//! No tokio, no model. The worker thread calls [`State::schedule`] to get the next step, runs it,
//! then reports sampled tokens with [`State::append_token`] and ends sequences with
//! [`State::remove`]. Everything here is synchronous and deterministic, so it is unit-tested
//! directly.
//!
//! Policy, in the order `schedule` applies it:
//! 1. Running sequences, oldest first, each get what they still need to compute (one token when
//!    decoding, the rest of the prompt when prefilling), cut to the remaining token budget
//!    (chunked prefill).
//! 2. When a running sequence needs a block and none is free, the newest running sequence is
//!    preempted by recompute: its blocks are freed and it goes to the front of the waiting queue,
//!    keeping its generated tokens, which are recomputed as prompt when it comes back.
//! 3. If nothing was preempted, waiting sequences are admitted first-come first-served while the
//!    budget, `max_num_seqs` and free blocks allow. A sequence is admitted only when blocks for its
//!    whole current length are free, so a prompt is not started just to be preempted halfway.
//!
//! Prefix caching: a sequence added with [`State::add_with_prefix`] carries one content key per
//! full block of its prompt (the caller hashes the tokens). On admission its longest cached
//! prefix is attached from the allocator and counted as computed, so the first step starts after
//! it; at least the last prompt position is always computed, for its logits. Blocks a step filled
//! are cached by [`State::finish_step`], once their K/V exists. A sequence whose next block is
//! being filled in the step being built (the `n` choices of one request, identical prompts
//! arriving together) waits for that step rather than computing the block a second time.
//!
//! Prompt scoring: after [`State::score_prompt`] a sequence's prompt steps ask for every
//! position's logits (`StepEntry::all_logits`), at most [`SCORE_CHUNK`] positions per step, and
//! it never touches the prefix cache.

use std::collections::{HashMap, VecDeque};

use crate::api::EngineError;
use crate::blocks::{blocks_for, BlockAllocator};
use crate::runner::{SeqId, StepBatch, StepEntry};

/// Most positions per step of a sequence whose prompt is being scored: each comes back as a
/// vocabulary-sized logits row (512 rows of a 32k vocabulary: 64 MiB of f32).
pub const SCORE_CHUNK: usize = 512;

/// Per-step limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    /// Most positions (prompt + completion) per sequence, before the KV capacity is considered.
    pub max_context: usize,
}

#[derive(Debug, Clone)]
struct Seq {
    prompt_len: usize,
    generated: Vec<u32>,
    /// Positions whose K/V is in the cache (or will be once the scheduled step ran).
    computed: usize,
    blocks: Vec<u32>,
    /// The sequence ends with `Length` when it holds this many positions.
    max_len: usize,
    /// Content key of each cacheable full prompt block (possibly none).
    prefix_keys: Vec<u64>,
    /// Positions below this one are computed with every row's logits (to score the prompt).
    score_until: usize,
}

impl Seq {
    fn len(&self) -> usize {
        self.prompt_len + self.generated.len()
    }
}

/// What happened to a sequence after a token was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Continue,
    /// The sequence reached `max_tokens` or the context length.
    LengthLimit,
}

#[derive(Debug, Clone)]
pub struct State {
    limits: Limits,
    blocks: BlockAllocator,
    seqs: HashMap<SeqId, Seq>,
    waiting: VecDeque<SeqId>,
    /// In admission order: the last one is the newest, the first to be preempted.
    running: Vec<SeqId>,
    preemptions: u64,
    /// Blocks the scheduled step fills, with their keys: cached by `finish_step`.
    pending_keys: Vec<(u32, u64)>,
    /// Prompt positions each newly admitted sequence took from the prefix cache.
    prefix_hits: Vec<(SeqId, usize)>,
}

impl State {
    pub fn new(limits: Limits, block_size: usize, num_blocks: usize) -> Self {
        Self {
            limits,
            blocks: BlockAllocator::new(block_size, num_blocks),
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            preemptions: 0,
            pending_keys: Vec::new(),
            prefix_hits: Vec::new(),
        }
    }

    /// Most positions a sequence may hold: the context length or the whole cache, if smaller.
    pub fn max_model_len(&self) -> usize {
        self.limits
            .max_context
            .min(self.blocks.capacity_positions())
    }

    /// Queues a new sequence. Returns how many tokens it may generate (`max_new_tokens` clamped to
    /// the context left), or `ContextLengthExceeded` when not even one token fits.
    pub fn add(
        &mut self,
        id: SeqId,
        prompt_len: usize,
        max_new_tokens: usize,
    ) -> Result<usize, EngineError> {
        self.add_with_prefix(id, prompt_len, max_new_tokens, Vec::new())
    }

    /// [`Self::add`] for a prompt whose leading full blocks may come from the prefix cache:
    /// `prefix_keys[i]` identifies the content of positions `0 .. (i + 1) · block_size` (keys past
    /// the last position that must be computed are ignored).
    pub fn add_with_prefix(
        &mut self,
        id: SeqId,
        prompt_len: usize,
        max_new_tokens: usize,
        mut prefix_keys: Vec<u64>,
    ) -> Result<usize, EngineError> {
        let max_model_len = self.max_model_len();
        if prompt_len == 0 {
            return Err(EngineError::invalid(
                "the prompt is empty",
                Some("messages"),
            ));
        }
        if prompt_len >= max_model_len {
            return Err(EngineError::ContextLengthExceeded {
                prompt_tokens: prompt_len,
                max: max_model_len,
            });
        }
        if self.seqs.contains_key(&id) {
            return Err(EngineError::Internal(format!(
                "sequence {id:?} added twice"
            )));
        }
        let allowed = max_new_tokens.min(max_model_len - prompt_len);
        // The last prompt position is always computed: its logits give the first token.
        prefix_keys.truncate((prompt_len - 1) / self.blocks.block_size());
        self.seqs.insert(
            id,
            Seq {
                prompt_len,
                generated: Vec::new(),
                computed: 0,
                blocks: Vec::new(),
                max_len: prompt_len + allowed,
                prefix_keys,
                score_until: 0,
            },
        );
        self.waiting.push_back(id);
        Ok(allowed)
    }

    /// Asks for the logits of every prompt position of a queued sequence, in chunks of at most
    /// [`SCORE_CHUNK`] positions, until [`Self::prompt_scored`]: row `p` scores prompt token
    /// `p + 1`. The sequence then skips the prefix cache (a cached position has no logits).
    pub fn score_prompt(&mut self, id: SeqId) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.score_until = seq.prompt_len - 1;
            seq.prefix_keys.clear();
        }
    }

    /// The prompt is scored: a recompute after a preemption needs no more rows.
    pub fn prompt_scored(&mut self, id: SeqId) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.score_until = 0;
        }
    }

    /// Positions of `seq` the next step may compute within `budget`.
    fn chunk(seq: &Seq, budget: usize) -> usize {
        let cap = if seq.computed < seq.score_until {
            SCORE_CHUNK
        } else {
            usize::MAX
        };
        (seq.len() - seq.computed).min(budget).min(cap)
    }

    /// Whether `id` may not grow: it holds its `max_tokens` (zero, for a prompt only evaluated).
    pub fn at_length_limit(&self, id: SeqId) -> bool {
        self.seqs.get(&id).is_some_and(|s| s.len() >= s.max_len)
    }

    /// Builds the next step. Advances each scheduled sequence's computed length, so the caller must
    /// run the step (or remove the sequences) before scheduling again.
    pub fn schedule(&mut self) -> StepBatch {
        let mut budget = self.limits.max_num_batched_tokens;
        let mut entries = Vec::new();
        let mut preempted = false;

        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let take = Self::chunk(&self.seqs[&id], budget);
            if take == 0 {
                i += 1;
                continue;
            }
            let end = self.seqs[&id].computed + take;
            let mut self_preempted = false;
            while self.blocks.missing(&self.seqs[&id].blocks, end) > self.blocks.free() {
                // Newest first: it has the least work to lose and arrived last.
                let victim = *self.running.last().expect("running holds `id`");
                self.preempt(victim);
                preempted = true;
                if victim == id {
                    self_preempted = true;
                    break;
                }
            }
            if self_preempted {
                // `id` was the last running sequence, so the loop ends here.
                break;
            }
            entries.push(self.plan(id, end));
            budget -= take;
            i += 1;
        }

        // Admitting while preempting would thrash: the freed blocks go to the running ones first.
        while !preempted && budget > 0 && self.running.len() < self.limits.max_num_seqs {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let seq = &self.seqs[&id];
            let (hits, idle_hits) = self.blocks.cached_prefix(&seq.prefix_keys);
            // Its next block is being computed in this very step (by a sibling choice, or another
            // request with the same prefix): wait a step and attach it instead of computing it
            // twice. The wait ends when the step that fills the block has run.
            let next = seq.prefix_keys.get(hits);
            if next.is_some_and(|k| self.pending_keys.iter().any(|(_, p)| p == k)) {
                break;
            }
            let need = blocks_for(seq.len(), self.blocks.block_size()) - hits;
            if need + idle_hits > self.blocks.free() {
                break;
            }
            let seq = self.seqs.get_mut(&id).expect("waiting sequence exists");
            self.blocks
                .attach(&mut seq.blocks, &seq.prefix_keys[..hits]);
            seq.computed = hits * self.blocks.block_size();
            if hits > 0 {
                self.prefix_hits.push((id, seq.computed));
            }
            let end = seq.computed + Self::chunk(seq, budget);
            budget -= end - seq.computed;
            self.waiting.pop_front();
            self.running.push(id);
            entries.push(self.plan(id, end));
        }

        StepBatch { entries }
    }

    /// Grows `id`'s block table to `end` (the caller made sure blocks are free) and builds its entry.
    fn plan(&mut self, id: SeqId, end: usize) -> StepEntry {
        let seq = self.seqs.get_mut(&id).expect("scheduled sequence exists");
        let grown = self.blocks.grow(&mut seq.blocks, end);
        debug_assert!(grown, "blocks were checked free before planning");
        let start = seq.computed;
        let bs = self.blocks.block_size();
        for i in start / bs..(end / bs).min(seq.prefix_keys.len()) {
            self.pending_keys.push((seq.blocks[i], seq.prefix_keys[i]));
        }
        let first_gen = start.max(seq.prompt_len) - seq.prompt_len;
        let last_gen = end.max(seq.prompt_len) - seq.prompt_len;
        seq.computed = end;
        StepEntry {
            seq: id,
            start,
            end,
            prompt_len: seq.prompt_len,
            tokens: seq.generated[first_gen..last_gen].to_vec(),
            block_table: seq.blocks.clone(),
            want_logits: end == seq.len(),
            all_logits: start < seq.score_until,
        }
    }

    /// Ends the step [`Self::schedule`] planned: when it ran, the prompt blocks it filled join the
    /// prefix cache; when it failed, their contents are unknown and they stay private.
    pub fn finish_step(&mut self, ran: bool) {
        for (block, key) in std::mem::take(&mut self.pending_keys) {
            if ran {
                self.blocks.register(block, key);
            }
        }
    }

    /// Prompt positions that sequences admitted since the last call took from the prefix cache.
    pub fn take_prefix_hits(&mut self) -> Vec<(SeqId, usize)> {
        std::mem::take(&mut self.prefix_hits)
    }

    fn preempt(&mut self, id: SeqId) {
        let Some(pos) = self.running.iter().position(|&r| r == id) else {
            return;
        };
        self.running.remove(pos);
        let seq = self.seqs.get_mut(&id).expect("running sequence exists");
        self.blocks.release(&mut seq.blocks);
        seq.computed = 0;
        self.waiting.push_front(id);
        self.preemptions += 1;
        tracing::debug!(seq = id.0, len = seq.len(), "preempted by recompute");
    }

    /// Records a sampled token. Only valid for a sequence whose logits were just computed.
    pub fn append_token(&mut self, id: SeqId, token: u32) -> Result<Appended, EngineError> {
        let seq = self
            .seqs
            .get_mut(&id)
            .ok_or_else(|| EngineError::Internal(format!("unknown sequence {id:?}")))?;
        if seq.computed != seq.len() {
            return Err(EngineError::Internal(format!(
                "token for sequence {id:?} before its logits were computed"
            )));
        }
        seq.generated.push(token);
        Ok(if seq.len() >= seq.max_len {
            Appended::LengthLimit
        } else {
            Appended::Continue
        })
    }

    /// Ends a sequence (finished, cancelled or failed) and frees its blocks. Returns whether it
    /// existed.
    pub fn remove(&mut self, id: SeqId) -> bool {
        let Some(mut seq) = self.seqs.remove(&id) else {
            return false;
        };
        self.blocks.release(&mut seq.blocks);
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        true
    }

    pub fn contains(&self, id: SeqId) -> bool {
        self.seqs.contains_key(&id)
    }

    /// Tokens generated so far by `id`.
    pub fn generated(&self, id: SeqId) -> Option<&[u32]> {
        self.seqs.get(&id).map(|s| s.generated.as_slice())
    }

    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn blocks_used(&self) -> usize {
        self.blocks.used()
    }

    pub fn blocks_total(&self) -> usize {
        self.blocks.total()
    }

    /// Blocks holding a cached prompt prefix (in use or idle).
    pub fn blocks_cached(&self) -> usize {
        self.blocks.cached()
    }

    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    /// Checks the allocator's books against the block tables (for tests).
    #[cfg(test)]
    fn check_invariants(&self) {
        let mut holders = std::collections::HashMap::<u32, u32>::new();
        for (id, seq) in &self.seqs {
            assert!(seq.computed <= seq.len(), "{id:?} computed past its length");
            assert!(
                seq.blocks.len() == blocks_for(seq.computed, self.blocks.block_size()),
                "{id:?} holds {} blocks for {} positions",
                seq.blocks.len(),
                seq.computed
            );
            for b in &seq.blocks {
                *holders.entry(*b).or_default() += 1;
            }
            let running = self.running.contains(id);
            let waiting = self.waiting.contains(id);
            assert!(running != waiting, "{id:?} must be in exactly one queue");
            if waiting {
                assert!(seq.blocks.is_empty(), "waiting {id:?} holds blocks");
            }
        }
        for (b, n) in &holders {
            assert_eq!(self.blocks.refs(*b), *n, "block {b}'s count of holders");
        }
        assert_eq!(holders.len(), self.blocks.used());
        assert!(self.running.len() <= self.limits.max_num_seqs);
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
