//! The engine's `ModelRunner` on the candle LLaVA model.
//!
//! `prepare` runs the vision tower for every new image of every arriving request in one batch
//! (skipping images found in the encoder cache), applies the granularity policy, runs the router
//! once for all images that need it, and stores each prompt's embeddings. `forward` assembles the
//! flat batch from stored prompt embeddings and generated-token embeddings and runs one decoder step
//! over the paged KV cache.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use grain_engine::{
    EngineError, GranularityCeiling, GranularityChoice, GranularitySource, ImageUsage, ModelRunner,
    PrepareItem, PreparedPrompt, SeqId, StepBatch, TokenDecoder,
};
use grain_model::policy::{self, Policy, Resolved};
use grain_model::{KvCache, LlavaModel, RouterInput, SeqChunk};

use crate::encoder_cache::EncoderCache;
// Granularity mix and visual tokens are recorded by the server from each response's usage;
// the runner records what only it can time: the vision tower, the router and the encoder cache.
use grain_metrics::{Metrics, StepPhase};

pub struct LlavaRunner {
    pub(crate) model: LlavaModel,
    pub(crate) cache: KvCache,
    pub(crate) policy: Policy,
    pub(crate) image_token: u32,
    pub(crate) eos: Vec<u32>,
    pub(crate) decoder: Arc<dyn TokenDecoder>,
    pub(crate) encoder_cache: EncoderCache,
    /// Prompt embeddings per sequence; siblings share one tensor.
    pub(crate) prompts: HashMap<SeqId, Arc<Tensor>>,
    pub(crate) metrics: Option<Metrics>,
    /// The engine's load-adaptive ceiling; `None` when the controller is off.
    pub(crate) ceiling: Option<GranularityCeiling>,
}

/// Holds one image's granularity under the load-adaptive ceiling. Only `auto` choices (the router
/// or the server default) are lowered unless the ceiling covers explicit ones too; a lowered image
/// reports the source `ceiling`.
fn apply_ceiling(
    policy: &Policy,
    ceiling: Option<GranularityCeiling>,
    g: u32,
    source: GranularitySource,
) -> (u32, GranularitySource) {
    let Some(c) = ceiling else {
        return (g, source);
    };
    let auto = matches!(
        source,
        GranularitySource::Router | GranularitySource::Default
    );
    if g <= c.max || !(auto || c.explicit_too) {
        return (g, source);
    }
    let lowered = policy
        .candidates
        .iter()
        .copied()
        .filter(|&x| x <= c.max)
        .max()
        .unwrap_or_else(|| policy.coarsest());
    (lowered, GranularitySource::Ceiling)
}

fn internal(e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(e.to_string())
}

/// A planned image: where its features come from and how its granularity is decided.
struct Planned {
    item: usize,
    features: Option<Tensor>,
    decision: Resolved,
}

impl LlavaRunner {
    fn to_policy_detail(d: grain_engine::Detail) -> policy::Detail {
        match d {
            grain_engine::Detail::Auto => policy::Detail::Auto,
            grain_engine::Detail::Low => policy::Detail::Low,
            grain_engine::Detail::High => policy::Detail::High,
        }
    }

    fn to_source(s: policy::GranularitySource) -> GranularitySource {
        match s {
            policy::GranularitySource::Router => GranularitySource::Router,
            policy::GranularitySource::Detail => GranularitySource::Detail,
            policy::GranularitySource::Request => GranularitySource::Request,
            policy::GranularitySource::Default => GranularitySource::Default,
        }
    }

    /// Vision tower for every image not in the encoder cache, as one batch.
    fn encode(&mut self, items: &[PrepareItem], plans: &mut [Planned]) -> Result<(), EngineError> {
        let mut pending: Vec<usize> = Vec::new();
        let mut flat = Vec::new();
        let mut k = 0;
        for (ii, item) in items.iter().enumerate() {
            for img in &item.images {
                if let Some(f) = self.encoder_cache.get(&img.hash) {
                    plans[k].features = Some(f);
                } else {
                    pending.push(k);
                    flat.extend_from_slice(&img.pixel_values);
                }
                debug_assert_eq!(plans[k].item, ii);
                k += 1;
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let images: Vec<_> = items.iter().flat_map(|i| i.images.iter()).collect();
        let total_crops: usize = pending.iter().map(|&p| images[p].n_crops).sum();
        let pixels = self
            .model
            .pixels_tensor(total_crops, &flat)
            .map_err(internal)?;
        let features = self.model.encode_crops(&pixels).map_err(internal)?;
        if let Some(m) = &self.metrics {
            m.observe_vision_encoder_duration(started.elapsed().as_secs_f64());
        }
        let mut offset = 0;
        for &p in &pending {
            let n = images[p].n_crops;
            let f = features.narrow(0, offset, n).map_err(internal)?;
            offset += n;
            self.encoder_cache.insert(images[p].hash, f.clone());
            plans[p].features = Some(f);
        }
        Ok(())
    }

    fn prepare_all(
        &mut self,
        items: &[PrepareItem],
    ) -> Result<Vec<Result<PreparedPrompt, EngineError>>, EngineError> {
        let has_router = self.model.has_router();
        let mut plans = Vec::new();
        let mut item_errors: Vec<Option<EngineError>> = vec![None; items.len()];
        for (ii, item) in items.iter().enumerate() {
            let request = match item.granularity {
                GranularityChoice::Auto => policy::GranularityChoice::Auto,
                GranularityChoice::Fixed(g) => {
                    if !self.policy.is_candidate(g) {
                        item_errors[ii] = Some(EngineError::invalid(
                            format!("granularity {g} is not one of {:?}", self.policy.candidates),
                            Some("granularity"),
                        ));
                    }
                    policy::GranularityChoice::Fixed(g)
                }
            };
            for img in &item.images {
                let decision =
                    self.policy
                        .resolve(Self::to_policy_detail(img.detail), request, has_router);
                plans.push(Planned {
                    item: ii,
                    features: None,
                    decision,
                });
            }
        }
        self.encode(items, &mut plans)?;
        // Router for every image that needs it, in one batch; each image sees its request's whole text.
        let mut router_inputs = Vec::new();
        let mut router_slots = Vec::new();
        let mut text_cache: HashMap<usize, Tensor> = HashMap::new();
        for (k, plan) in plans.iter().enumerate() {
            if plan.decision == Resolved::Router && item_errors[plan.item].is_none() {
                let text = match text_cache.get(&plan.item) {
                    Some(t) => t.clone(),
                    None => {
                        let t = self
                            .model
                            .text_embeddings(&items[plan.item].prompt_ids, self.image_token)
                            .map_err(internal)?;
                        text_cache.insert(plan.item, t.clone());
                        t
                    }
                };
                let features = plan.features.clone().expect("encoded above");
                router_inputs.push(RouterInput {
                    features,
                    text_embeds: text,
                });
                router_slots.push(k);
            }
        }
        let mut chosen: HashMap<usize, u32> = HashMap::new();
        if !router_inputs.is_empty() {
            let started = std::time::Instant::now();
            let outs = self.model.route(&router_inputs).map_err(internal)?;
            if let Some(m) = &self.metrics {
                m.observe_router_duration(started.elapsed().as_secs_f64());
            }
            for (k, out) in router_slots.into_iter().zip(outs) {
                let g = self.model.config().granularities[out.choice];
                chosen.insert(k, self.policy.after_router(g));
            }
        }
        let finest = self.policy.finest();
        let mut results = Vec::with_capacity(items.len());
        let mut k = 0;
        for (ii, item) in items.iter().enumerate() {
            let n = item.images.len();
            let my_plans = &plans[k..k + n];
            let first = k;
            k += n;
            if let Some(e) = item_errors[ii].take() {
                results.push(Err(e));
                continue;
            }
            let mut usage = Vec::with_capacity(n);
            let mut tokens = Vec::with_capacity(n);
            let mut full = 0;
            for (j, (plan, img)) in my_plans.iter().zip(&item.images).enumerate() {
                let (g, source) = match plan.decision {
                    Resolved::Fixed {
                        granularity,
                        source,
                    } => (granularity, Self::to_source(source)),
                    Resolved::Router => (chosen[&(first + j)], GranularitySource::Router),
                };
                let (g, source) = apply_ceiling(&self.policy, self.ceiling, g, source);
                let feats = plan.features.as_ref().expect("encoded above");
                tokens.push(
                    self.model
                        .image_tokens(feats, g, img.width, img.height)
                        .map_err(internal)?,
                );
                full += self
                    .model
                    .visual_tokens(img.width, img.height, finest)
                    .map_err(internal)?;
                usage.push(ImageUsage {
                    granularity: g,
                    source,
                });
            }
            let embeds =
                match self
                    .model
                    .prompt_embeddings(&item.prompt_ids, self.image_token, &tokens)
                {
                    Ok(e) => Arc::new(e),
                    Err(e) => {
                        results.push(Err(EngineError::invalid(e.to_string(), Some("messages"))));
                        continue;
                    }
                };
            let prompt_len = embeds.dim(0).map_err(internal)?;
            for s in &item.seqs {
                self.prompts.insert(*s, embeds.clone());
            }
            let placeholders = item.prompt_ids.iter().enumerate();
            let visual_spans = placeholders
                .filter(|(_, &id)| id == self.image_token)
                .map(|(at, _)| at)
                .zip(&tokens)
                .map(|(at, t)| Ok((at, t.dim(0)?)))
                .collect::<candle_core::Result<Vec<_>>>()
                .map_err(internal)?;
            results.push(Ok(PreparedPrompt {
                prompt_len,
                images: usage,
                visual_tokens_full: full,
                visual_spans,
            }));
        }
        if let Some(m) = &self.metrics {
            let (h, mi) = self.encoder_cache.take_counts();
            m.record_encoder_cache(h, mi);
        }
        Ok(results)
    }
}

impl ModelRunner for LlavaRunner {
    fn prepare(&mut self, items: &[PrepareItem]) -> Vec<Result<PreparedPrompt, EngineError>> {
        match self.prepare_all(items) {
            Ok(r) => r,
            // A failure shared by the batch (e.g. the vision tower) fails each item.
            Err(e) => items.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    fn forward(&mut self, batch: &StepBatch) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut parts = Vec::with_capacity(batch.entries.len() * 2);
        let mut chunks = Vec::with_capacity(batch.entries.len());
        // Rows of the flat batch whose logits are wanted, in entry and position order.
        let mut rows = Vec::with_capacity(batch.num_logits());
        let mut offset = 0u32;
        for e in &batch.entries {
            if e.end <= e.start {
                continue;
            }
            let len = (e.end - e.start) as u32;
            match e.logits_rows() {
                0 => {}
                1 if !e.all_logits => rows.push(offset + len - 1),
                _ => rows.extend(offset..offset + len),
            }
            offset += len;
            if e.start < e.prompt_len {
                let prompt = self.prompts.get(&e.seq).ok_or_else(|| {
                    EngineError::Internal(format!("no prompt stored for sequence {:?}", e.seq))
                })?;
                let stop = e.end.min(e.prompt_len);
                parts.push(
                    prompt
                        .narrow(0, e.start, stop - e.start)
                        .map_err(internal)?,
                );
            }
            if !e.tokens.is_empty() {
                parts.push(self.model.lm().embed(&e.tokens).map_err(internal)?);
            }
            chunks.push(SeqChunk {
                start: e.start,
                len: e.end - e.start,
                block_table: &e.block_table,
                want_logits: e.want_logits,
            });
        }
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let flat = Tensor::cat(&parts, 0).map_err(internal)?;
        let logits = self
            .model
            .forward_rows(&flat, &chunks, &self.cache, &rows)
            .map_err(internal)?;
        let rows = logits.to_vec2::<f32>().map_err(internal)?;
        if let Some(m) = &self.metrics {
            let prefill = batch.entries.iter().any(|e| e.start < e.prompt_len);
            let decode = batch.entries.iter().any(|e| e.start >= e.prompt_len);
            let phase = match (prefill, decode) {
                (true, true) => StepPhase::Mixed,
                (true, false) => StepPhase::Prefill,
                _ => StepPhase::Decode,
            };
            m.observe_step_duration(phase, started.elapsed().as_secs_f64());
            m.observe_batch_size(chunks.len());
        }
        Ok(rows)
    }

    fn release(&mut self, seq: SeqId) {
        self.prompts.remove(&seq);
    }

    fn kv_geometry(&self) -> (usize, usize) {
        (self.cache.block_size(), self.cache.num_blocks())
    }

    fn eos_ids(&self) -> Vec<u32> {
        self.eos.clone()
    }

    fn decoder(&self) -> Arc<dyn TokenDecoder> {
        self.decoder.clone()
    }

    fn set_granularity_ceiling(&mut self, ceiling: Option<GranularityCeiling>) {
        self.ceiling = ceiling;
        if let Some(m) = &self.metrics {
            let top = self.policy.capped(self.policy.finest());
            m.set_granularity_ceiling(ceiling.map_or(top, |c| c.max.min(top)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(vec![36, 72, 144, 288, 576])
    }

    fn ceiling(max: u32, explicit_too: bool) -> Option<GranularityCeiling> {
        Some(GranularityCeiling { max, explicit_too })
    }

    #[test]
    fn the_ceiling_lowers_auto_choices_only() {
        let p = policy();
        use GranularitySource as S;
        assert_eq!(apply_ceiling(&p, None, 576, S::Router), (576, S::Router));
        assert_eq!(
            apply_ceiling(&p, ceiling(144, false), 576, S::Router),
            (144, S::Ceiling)
        );
        assert_eq!(
            apply_ceiling(&p, ceiling(144, false), 288, S::Default),
            (144, S::Ceiling)
        );
        // Already at or under the ceiling: untouched, and the source stays the router's.
        assert_eq!(
            apply_ceiling(&p, ceiling(144, false), 72, S::Router),
            (72, S::Router)
        );
        // `detail: high` and a request-level granularity are honoured...
        assert_eq!(
            apply_ceiling(&p, ceiling(144, false), 576, S::Detail),
            (576, S::Detail)
        );
        assert_eq!(
            apply_ceiling(&p, ceiling(144, false), 288, S::Request),
            (288, S::Request)
        );
        // ...unless the ceiling is configured to cover them.
        assert_eq!(
            apply_ceiling(&p, ceiling(144, true), 576, S::Detail),
            (144, S::Ceiling)
        );
    }
}
