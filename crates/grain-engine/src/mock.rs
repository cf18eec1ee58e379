//! A deterministic toy model behind the engine's traits, for tests (this crate's and the server's)
//! and for exercising the engine without weights.
//!
//! The toy LM is a rolling hash: the "KV" of position `p` is `mix(kv[p-1], input[p], p)`, read
//! and written through the block table exactly as a paged cache would be, and the logits of a
//! position are pseudo-random numbers seeded by its KV. So the output depends on the whole prefix,
//! and any scheduling bug (a wrong block table, a stale or overwritten block, a skipped or doubled
//! position) changes the text or fails the step with `Internal("stale KV ...")`.
//!
//! Vocabulary: ids 0..=255 are bytes, then EOS, BOS and the image placeholder. Only lowercase
//! letters, space and EOS ever get finite logits, so the text is readable ASCII.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::api::{
    ChatRequest, Detail, EngineError, GranularityChoice, GranularitySource, ImageUsage, ModelCard,
    Part, RawPrompt, Role,
};
use crate::config::{ConfigError, EngineConfig};
use crate::handle::EngineHandle;
use crate::runner::{
    ImageInput, ModelRunner, PrepareItem, PreparedPrompt, Preprocessor, SeqId, StepBatch,
    TokenDecoder, ValidRequest,
};

pub const EOS: u32 = 256;
pub const BOS: u32 = 257;
pub const IMAGE: u32 = 258;
pub const VOCAB: usize = 259;

/// Prompt text that makes `prepare` panic, or `forward` panic for that sequence.
pub const PANIC_IN_PREPARE: &str = "<panic-prepare>";
pub const PANIC_IN_FORWARD: &str = "<panic-forward>";

/// SplitMix64 finalizer: a cheap, well-mixed hash step.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The toy model's state after the given prompt inputs, from position 0.
fn prompt_state(inputs: &[u64]) -> u64 {
    inputs
        .iter()
        .enumerate()
        .fold(0, |h, (pos, &input)| mix(mix(h, input), pos as u64))
}

/// Builds prompt ids from chat messages: `BOS`, then per message a role byte and ':' followed by
/// its text bytes, with one `IMAGE` id per image.
#[derive(Debug, Clone, Default)]
pub struct ToyPreprocessor;

impl Preprocessor for ToyPreprocessor {
    fn preprocess(&self, req: ChatRequest) -> Result<ValidRequest, EngineError> {
        let mut prompt_ids = vec![BOS];
        let mut images = Vec::new();
        match &req.raw_prompt {
            Some(RawPrompt::Text(text)) => prompt_ids.extend(text.bytes().map(u32::from)),
            // Token ids are the whole prompt, BOS included if the caller wants one.
            Some(RawPrompt::Ids(ids)) => {
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= VOCAB || id == IMAGE) {
                    return Err(EngineError::invalid(
                        format!("token id {bad} is not a text token of the toy vocabulary"),
                        Some("prompt"),
                    ));
                }
                prompt_ids.clone_from(ids);
            }
            None => {}
        }
        for m in &req.messages {
            let role = match m.role {
                Role::System => b'S',
                Role::User => b'U',
                Role::Assistant => b'A',
            };
            prompt_ids.extend([u32::from(role), u32::from(b':')]);
            for part in &m.parts {
                match part {
                    Part::Text(t) => prompt_ids.extend(t.bytes().map(u32::from)),
                    Part::Image { data, detail } => {
                        if data.is_empty() {
                            return Err(EngineError::InvalidImage {
                                index: images.len(),
                                message: "empty image".to_owned(),
                            });
                        }
                        prompt_ids.push(IMAGE);
                        images.push(toy_image(data, *detail));
                    }
                }
            }
        }
        Ok(ValidRequest {
            request_id: req.request_id,
            text_tokens: prompt_ids.len() - images.len(),
            prompt_ids,
            images,
            params: req.params,
            granularity: req.granularity,
        })
    }

    /// Bytes as they are; EOS, BOS and the image id as `</s>`, `<s>` and `<image>`.
    fn detokenize(&self, ids: &[u32]) -> Result<String, EngineError> {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= VOCAB) {
            return Err(EngineError::invalid(
                format!("token id {bad} is not in the toy vocabulary (0 .. {VOCAB})"),
                Some("tokens"),
            ));
        }
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| ToyDecoder.token_text(id).1)
            .collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// An "image" whose crop count (1..=3) and content hash come from its bytes.
fn toy_image(data: &[u8], detail: Detail) -> ImageInput {
    let h = data
        .iter()
        .fold(0x1234_5678u64, |h, &b| mix(h, u64::from(b)));
    let mut hash = [0u8; 32];
    for (i, chunk) in hash.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(h, i as u64).to_le_bytes());
    }
    ImageInput {
        width: 336,
        height: 336,
        hash,
        pixel_values: Arc::new(Vec::new()),
        n_crops: 1 + data.len() % 3,
        detail,
    }
}

/// Knobs of the toy model.
#[derive(Debug, Clone)]
pub struct ToyConfig {
    pub block_size: usize,
    pub num_blocks: usize,
    /// Candidate tokens per crop, ascending.
    pub granularities: Vec<u32>,
    pub has_router: bool,
    /// Added to EOS's logit: very negative → sequences run to `max_tokens`.
    pub eos_bias: f32,
}

impl Default for ToyConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            num_blocks: 1024,
            granularities: vec![1, 2, 4, 8, 16],
            has_router: true,
            eos_bias: 0.5,
        }
    }
}

/// Counters tests read from outside the scheduler thread, and a gate that stops the model at the
/// start of `prepare`/`forward` so tests can line up work without relying on timing.
#[derive(Debug, Default)]
pub struct ToyProbe {
    /// Sequences whose prompt is stored (prepared and not yet released).
    pub live_seqs: AtomicUsize,
    pub prepare_calls: AtomicUsize,
    /// Largest number of requests in one `prepare`.
    pub max_prepare_items: AtomicUsize,
    pub forward_calls: AtomicUsize,
    /// Largest number of sequences in one forward.
    pub max_batch_seqs: AtomicUsize,
    gate: Mutex<Gate>,
    gate_changed: Condvar,
}

#[derive(Debug, Default)]
struct Gate {
    closed: bool,
    /// Calls allowed through while closed.
    permits: usize,
    /// The scheduler thread is waiting at the gate.
    blocked: bool,
    /// Requests in the `prepare` call waiting at the gate (0 when it is a `forward`).
    blocked_items: usize,
}

impl ToyProbe {
    fn gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on `prepare` and `forward` wait at the gate (unless allowed through).
    pub fn close_gate(&self) {
        self.gate().closed = true;
    }

    pub fn open_gate(&self) {
        self.gate().closed = false;
        self.gate_changed.notify_all();
    }

    /// Lets `n` more model calls through a closed gate.
    pub fn allow(&self, n: usize) {
        let mut g = self.gate();
        g.permits += n;
        g.blocked = false;
        self.gate_changed.notify_all();
    }

    /// Whether the scheduler thread is waiting at the gate, and how many requests its blocked
    /// `prepare` holds (0 for a `forward`).
    pub fn blocked(&self) -> Option<usize> {
        let g = self.gate();
        g.blocked.then_some(g.blocked_items)
    }

    fn pass_gate(&self, items: usize) {
        let mut g = self.gate();
        while g.closed && g.permits == 0 {
            g.blocked = true;
            g.blocked_items = items;
            g = self.gate_changed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        if g.closed {
            g.permits -= 1;
        }
        g.blocked = false;
    }
}

#[derive(Debug, Clone)]
struct ToyPrompt {
    inputs: Arc<Vec<u64>>,
    panic_in_forward: bool,
}

/// The toy model. Owns a paged "KV cache" of `(seq, position, hash)` slots.
#[derive(Debug)]
pub struct ToyRunner {
    cfg: ToyConfig,
    prompts: HashMap<SeqId, ToyPrompt>,
    kv: Vec<Option<(SeqId, usize, u64)>>,
    probe: Arc<ToyProbe>,
}

impl ToyRunner {
    pub fn new(cfg: ToyConfig) -> Self {
        Self {
            kv: vec![None; cfg.block_size * cfg.num_blocks],
            cfg,
            prompts: HashMap::new(),
            probe: Arc::new(ToyProbe::default()),
        }
    }

    pub fn probe(&self) -> Arc<ToyProbe> {
        self.probe.clone()
    }

    fn choose(
        &self,
        image: &ImageInput,
        choice: GranularityChoice,
    ) -> Result<ImageUsage, EngineError> {
        let g = &self.cfg.granularities;
        let (granularity, source) = match (choice, image.detail) {
            (GranularityChoice::Fixed(v), _) if g.contains(&v) => (v, GranularitySource::Request),
            (GranularityChoice::Fixed(v), _) => {
                return Err(EngineError::invalid(
                    format!("granularity {v} is not one of {g:?}"),
                    Some("granularity"),
                ))
            }
            (GranularityChoice::Auto, Detail::Low) => (g[0], GranularitySource::Detail),
            (GranularityChoice::Auto, Detail::High) => (g[g.len() - 1], GranularitySource::Detail),
            (GranularityChoice::Auto, Detail::Auto) if self.cfg.has_router => (
                g[image.hash[0] as usize % g.len()],
                GranularitySource::Router,
            ),
            (GranularityChoice::Auto, Detail::Auto) => (g[g.len() - 1], GranularitySource::Default),
        };
        Ok(ImageUsage {
            granularity,
            source,
        })
    }

    fn prepare_one(&mut self, item: &PrepareItem) -> Result<PreparedPrompt, EngineError> {
        let text: Vec<u8> = item
            .prompt_ids
            .iter()
            .filter(|&&t| t < 256)
            .map(|&t| t as u8)
            .collect();
        let text = String::from_utf8_lossy(&text);
        if text.contains(PANIC_IN_PREPARE) {
            panic!("toy model told to panic in prepare");
        }
        let full = *self.cfg.granularities.last().unwrap_or(&1) as usize;
        let mut inputs = Vec::new();
        let mut usages = Vec::new();
        let mut visual_full = 0;
        let mut images = item.images.iter();
        let mut visual_spans = Vec::new();
        for (at, &id) in item.prompt_ids.iter().enumerate() {
            if id != IMAGE {
                inputs.push(u64::from(id));
                continue;
            }
            let image = images.next().ok_or_else(|| {
                EngineError::invalid("more placeholders than images", Some("messages"))
            })?;
            let usage = self.choose(image, item.granularity)?;
            let seed = u64::from_le_bytes(image.hash[..8].try_into().expect("8 bytes"));
            let n = image.n_crops * usage.granularity as usize;
            visual_spans.push((at, n));
            inputs.extend(
                (0..n as u64).map(|i| mix(mix(seed, u64::from(usage.granularity)), i) | 1 << 63),
            );
            visual_full += image.n_crops * full;
            usages.push(usage);
        }
        let prompt = ToyPrompt {
            inputs: Arc::new(inputs),
            panic_in_forward: text.contains(PANIC_IN_FORWARD),
        };
        let prompt_len = prompt.inputs.len();
        for &seq in &item.seqs {
            if self.prompts.insert(seq, prompt.clone()).is_none() {
                self.probe.live_seqs.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(PreparedPrompt {
            prompt_len,
            images: usages,
            visual_tokens_full: visual_full,
            visual_spans,
        })
    }

    fn slot(&self, table: &[u32], pos: usize) -> Result<usize, EngineError> {
        let block = table.get(pos / self.cfg.block_size).ok_or_else(|| {
            EngineError::Internal(format!("block table too short for position {pos}"))
        })?;
        let slot = *block as usize * self.cfg.block_size + pos % self.cfg.block_size;
        if slot >= self.kv.len() {
            return Err(EngineError::Internal(format!("block {block} out of range")));
        }
        Ok(slot)
    }

    fn logits(&self, h: u64) -> Vec<f32> {
        let unit = |t: u64| (mix(h, t) >> 40) as f32 / (1u64 << 24) as f32 * 4.0;
        let mut row = vec![f32::NEG_INFINITY; VOCAB];
        for t in (b'a'..=b'z').chain([b' ']) {
            row[t as usize] = unit(u64::from(t));
        }
        row[EOS as usize] = unit(u64::from(EOS)) + self.cfg.eos_bias;
        row
    }
}

impl ModelRunner for ToyRunner {
    fn prepare(&mut self, items: &[PrepareItem]) -> Vec<Result<PreparedPrompt, EngineError>> {
        self.probe.pass_gate(items.len());
        self.probe.prepare_calls.fetch_add(1, Ordering::Relaxed);
        self.probe
            .max_prepare_items
            .fetch_max(items.len(), Ordering::Relaxed);
        items.iter().map(|item| self.prepare_one(item)).collect()
    }

    fn forward(&mut self, batch: &StepBatch) -> Result<Vec<Vec<f32>>, EngineError> {
        self.probe.pass_gate(0);
        self.probe.forward_calls.fetch_add(1, Ordering::Relaxed);
        self.probe
            .max_batch_seqs
            .fetch_max(batch.entries.len(), Ordering::Relaxed);
        let mut rows = Vec::new();
        for e in &batch.entries {
            let prompt = self.prompts.get(&e.seq).cloned().ok_or_else(|| {
                EngineError::Internal(format!("forward for unprepared {:?}", e.seq))
            })?;
            if prompt.panic_in_forward {
                panic!("toy model told to panic in forward");
            }
            let mut h = if e.start == 0 {
                0
            } else {
                match self.kv[self.slot(&e.block_table, e.start - 1)?] {
                    Some((seq, pos, h)) if seq == e.seq && pos == e.start - 1 => h,
                    // Another sequence's K/V, shared by the prefix cache: valid when it holds
                    // exactly what this prompt's first `start` positions compute.
                    Some((_, pos, h))
                        if pos == e.start - 1
                            && e.start <= e.prompt_len
                            && h == prompt_state(&prompt.inputs[..e.start]) =>
                    {
                        h
                    }
                    other => {
                        return Err(EngineError::Internal(format!(
                            "stale KV for {:?} at {}: {other:?}",
                            e.seq,
                            e.start - 1
                        )))
                    }
                }
            };
            let first_gen = e.start.max(e.prompt_len);
            for pos in e.start..e.end {
                let input = if pos < e.prompt_len {
                    prompt.inputs[pos]
                } else {
                    let t = e.tokens.get(pos - first_gen).ok_or_else(|| {
                        EngineError::Internal(format!("no token for position {pos}"))
                    })?;
                    u64::from(*t)
                };
                h = mix(mix(h, input), pos as u64);
                let slot = self.slot(&e.block_table, pos)?;
                self.kv[slot] = Some((e.seq, pos, h));
                if e.all_logits {
                    rows.push(self.logits(h));
                }
            }
            if e.want_logits && !e.all_logits {
                rows.push(self.logits(h));
            }
        }
        Ok(rows)
    }

    fn release(&mut self, seq: SeqId) {
        if self.prompts.remove(&seq).is_some() {
            self.probe.live_seqs.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn kv_geometry(&self) -> (usize, usize) {
        (self.cfg.block_size, self.cfg.num_blocks)
    }

    fn eos_ids(&self) -> Vec<u32> {
        vec![EOS]
    }

    fn decoder(&self) -> Arc<dyn TokenDecoder> {
        Arc::new(ToyDecoder)
    }
}

/// Byte tokens, decoded lossily; special tokens are skipped.
#[derive(Debug, Clone, Copy, Default)]
pub struct ToyDecoder;

impl TokenDecoder for ToyDecoder {
    fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().filter(|&&t| t < 256).map(|&t| t as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        match id {
            EOS => ("</s>".to_owned(), b"</s>".to_vec()),
            BOS => ("<s>".to_owned(), b"<s>".to_vec()),
            IMAGE => ("<image>".to_owned(), b"<image>".to_vec()),
            b => {
                let bytes = vec![b as u8];
                (String::from_utf8_lossy(&bytes).into_owned(), bytes)
            }
        }
    }
}

/// The model card matching a toy configuration.
pub fn toy_card(cfg: &ToyConfig) -> ModelCard {
    ModelCard {
        id: "grain-toy".to_owned(),
        context_length: 4096,
        granularities: cfg.granularities.clone(),
        has_router: cfg.has_router,
        created: 0,
    }
}

/// Starts an engine over the toy model (`engine.block_size` is taken from `toy`). Returns the
/// handle and the probe of the runner it built.
pub fn start_toy(
    mut engine: EngineConfig,
    toy: ToyConfig,
) -> Result<(EngineHandle, Arc<ToyProbe>), ConfigError> {
    engine.block_size = toy.block_size;
    let card = toy_card(&toy);
    let runner = ToyRunner::new(toy);
    let probe = runner.probe();
    let handle = EngineHandle::start(engine, card, Arc::new(ToyPreprocessor), move || Ok(runner))?;
    Ok((handle, probe))
}
