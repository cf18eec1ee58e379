//! The traits the model side implements, and the plain data that crosses them.
//!
//! The engine never sees tensors. Three seams:
//! - [`Preprocessor`]: chat template, tokenization and image decoding; runs on tokio's blocking pool.
//! - [`ModelRunner`]: vision tower + router ([`ModelRunner::prepare`]) and the batched LM forward
//!   over the paged KV cache ([`ModelRunner::forward`]); lives on the scheduler thread only.
//! - [`TokenDecoder`]: token ids → text; the engine builds UTF-8-safe incremental deltas on top.

use std::sync::Arc;

use crate::api::{
    ChatRequest, Detail, EngineError, GenerationParams, GranularityChoice, ImageUsage,
};
use crate::controller::GranularityCeiling;

/// Identifies one sequence (one choice of one request) for the lifetime of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

/// One decoded and AnyRes-processed image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInput {
    /// Original size in pixels (drives AnyRes grid selection and unpadding).
    pub width: u32,
    pub height: u32,
    /// Content hash of the encoded bytes; the key of the encoder cache.
    pub hash: [u8; 32],
    /// `n_crops` crops of 3×336×336, CHW, normalized; base crop first.
    pub pixel_values: Arc<Vec<f32>>,
    pub n_crops: usize,
    pub detail: Detail,
}

/// A request after the chat template, tokenization and image decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    pub request_id: String,
    /// Prompt token ids with exactly one image-placeholder id per image (not expanded).
    pub prompt_ids: Vec<u32>,
    /// Images in the order of their placeholders.
    pub images: Vec<ImageInput>,
    pub params: GenerationParams,
    pub granularity: GranularityChoice,
    /// Text tokens in the prompt (placeholders excluded).
    pub text_tokens: usize,
}

/// Turns a wire-level request into token ids and pixels. Called on a blocking thread, concurrently.
pub trait Preprocessor: Send + Sync + 'static {
    fn preprocess(&self, req: ChatRequest) -> Result<ValidRequest, EngineError>;

    /// The text of token ids, special tokens included (`/detokenize`). Ids outside the vocabulary
    /// are an [`EngineError::InvalidRequest`] naming `tokens`.
    fn detokenize(&self, ids: &[u32]) -> Result<String, EngineError> {
        let _ = ids;
        Err(EngineError::invalid(
            "this model's preprocessor cannot detokenize",
            None,
        ))
    }
}

/// One request whose prompt the runner must prepare (encode images, route, build embeddings).
#[derive(Debug, Clone)]
pub struct PrepareItem {
    /// The sibling sequences (one per choice) that share this prompt. The runner keeps the prompt
    /// embeddings reachable from every one of them until each is [`ModelRunner::release`]d.
    pub seqs: Vec<SeqId>,
    pub prompt_ids: Vec<u32>,
    pub images: Vec<ImageInput>,
    pub granularity: GranularityChoice,
}

/// What `prepare` learned about a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedPrompt {
    /// Exact prompt length in positions: text tokens + visual tokens (newlines included).
    pub prompt_len: usize,
    /// Per image, in prompt order.
    pub images: Vec<ImageUsage>,
    /// Visual tokens the finest granularity would have cost (for usage and savings metrics).
    pub visual_tokens_full: usize,
    /// Per image, in prompt order: the index of its placeholder in `prompt_ids` and the positions
    /// it expands to. Lets the scheduler key image prompts for the prefix cache; a runner that
    /// leaves it empty gets only text-only prompts cached.
    pub visual_spans: Vec<(usize, usize)>,
}

/// One sequence's share of a forward step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepEntry {
    pub seq: SeqId,
    /// Positions `[start, end)` to compute; KV for `[0, start)` is already in the cache.
    pub start: usize,
    pub end: usize,
    /// Positions below `prompt_len` take their input embedding from what `prepare` stored;
    /// positions at or above it are generated tokens, given in `tokens`.
    pub prompt_len: usize,
    /// Token ids for positions `max(start, prompt_len)..end`, in order (empty for a pure prefill
    /// chunk). After a preemption, already generated tokens are recomputed through here.
    pub tokens: Vec<u32>,
    /// Physical KV block of each logical block: position `p` lives in block
    /// `block_table[p / block_size]` at offset `p % block_size`. Covers at least `[0, end)`.
    pub block_table: Vec<u32>,
    /// Whether the logits of position `end - 1` are wanted.
    pub want_logits: bool,
    /// Whether the logits of every position in `[start, end)` are wanted (to score the prompt).
    /// The last of them then doubles as the `want_logits` row.
    pub all_logits: bool,
}

impl StepEntry {
    /// Logits rows [`ModelRunner::forward`] returns for this entry.
    pub fn logits_rows(&self) -> usize {
        if self.all_logits {
            self.end.saturating_sub(self.start)
        } else {
            usize::from(self.want_logits && self.end > self.start)
        }
    }
}

/// A flat batch mixing prefill chunks and single decode tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepBatch {
    pub entries: Vec<StepEntry>,
}

impl StepBatch {
    pub fn num_tokens(&self) -> usize {
        self.entries.iter().map(|e| e.end - e.start).sum()
    }

    pub fn num_logits(&self) -> usize {
        self.entries.iter().map(StepEntry::logits_rows).sum()
    }
}

/// The model, driven by the scheduler thread only (hence `Send` but not `Sync`).
pub trait ModelRunner: Send + 'static {
    /// Encodes images, routes granularities and stores prompt embeddings, batched across requests.
    /// Returns one result per item, in order; a failing item must not fail the others.
    fn prepare(&mut self, items: &[PrepareItem]) -> Vec<Result<PreparedPrompt, EngineError>>;

    /// One forward over the batch, writing K/V for every computed position into the blocks of each
    /// entry's table. Returns the logits rows (vocabulary-sized) [`StepEntry::logits_rows`] asks
    /// for, in entry order and position order within an entry. An error fails every request in the batch.
    fn forward(&mut self, batch: &StepBatch) -> Result<Vec<Vec<f32>>, EngineError>;

    /// Forgets a sequence's stored prompt embeddings. Never called for a preempted sequence (it will
    /// be recomputed from them); its KV blocks belong to the engine and are simply reused.
    fn release(&mut self, seq: SeqId);

    /// `(block_size, num_blocks)` of the KV cache the runner allocated.
    fn kv_geometry(&self) -> (usize, usize);

    /// Token ids that end a sequence.
    fn eos_ids(&self) -> Vec<u32>;

    /// The detokenizer; fetched once when the worker starts.
    fn decoder(&self) -> Arc<dyn TokenDecoder>;

    /// The load-adaptive ceiling changed (`None`: no controller). Applies to requests prepared from
    /// now on; prepared ones keep their granularity. Called once at start and on every change.
    fn set_granularity_ceiling(&mut self, ceiling: Option<GranularityCeiling>) {
        let _ = ceiling;
    }
}

/// Token ids → text. Stateless: the engine derives incremental, UTF-8-safe deltas itself by
/// decoding a small window of recent tokens (so leading-space handling stays the tokenizer's job).
pub trait TokenDecoder: Send + Sync + 'static {
    /// Decodes ids to text, skipping special tokens. Invalid UTF-8 (a character split across
    /// tokens) must come out as U+FFFD, as `String::from_utf8_lossy` does.
    fn decode(&self, ids: &[u32]) -> String;

    /// One token on its own for logprobs: its display text and its raw bytes (for byte-fallback
    /// tokens such as `<0xE2>` the single byte).
    fn token_text(&self, id: u32) -> (String, Vec<u8>);
}
