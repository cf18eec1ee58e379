//! The sampling and streaming fields chat and text completions share: one view of them
//! ([`SamplingFields`], from `ChatCompletionRequest::sampling` or `CompletionRequest::sampling`),
//! with the typed accessors the server needs once validation has checked the ranges.

use crate::request::{StopSequences, StreamOptions};

/// OpenAI's `logit_bias`: token ids, written as strings, to biases.
pub type LogitBias = std::collections::BTreeMap<String, f64>;

/// The shared fields of a request, as sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct SamplingFields<'a> {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<&'a StopSequences>,
    pub n: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub stream: Option<bool>,
    pub stream_options: Option<&'a StreamOptions>,
    pub logit_bias: Option<&'a LogitBias>,
    pub ignore_eos: Option<bool>,
    pub min_tokens: Option<i64>,
    pub repetition_penalty: Option<f64>,
    pub min_p: Option<f64>,
    pub stop_token_ids: Option<&'a Vec<i64>>,
}

impl SamplingFields<'_> {
    /// Sampling temperature; OpenAI's default is 1.
    pub fn temperature_or_default(&self) -> f32 {
        self.temperature.unwrap_or(1.0) as f32
    }

    pub fn top_p_or_default(&self) -> f32 {
        self.top_p.unwrap_or(1.0) as f32
    }

    pub fn top_k_value(&self) -> Option<u32> {
        self.top_k.and_then(|k| u32::try_from(k).ok())
    }

    /// The seed as the engine's `u64`: negative seeds keep their bits, so every distinct
    /// integer a client sends maps to a distinct RNG seed.
    pub fn seed_value(&self) -> Option<u64> {
        self.seed.map(|s| s as u64)
    }

    pub fn n_or_default(&self) -> u32 {
        self.n.and_then(|n| u32::try_from(n).ok()).unwrap_or(1)
    }

    pub fn stop_sequences(&self) -> Vec<String> {
        match self.stop {
            None => Vec::new(),
            Some(StopSequences::One(s)) => vec![s.clone()],
            Some(StopSequences::Many(v)) => v.clone(),
        }
    }

    pub fn presence_penalty_or_default(&self) -> f32 {
        self.presence_penalty.unwrap_or(0.0) as f32
    }

    pub fn frequency_penalty_or_default(&self) -> f32 {
        self.frequency_penalty.unwrap_or(0.0) as f32
    }

    /// 1 (off) unless set.
    pub fn repetition_penalty_or_default(&self) -> f32 {
        self.repetition_penalty.unwrap_or(1.0) as f32
    }

    /// `stop_token_ids` as the engine's ids (validation checked the range).
    pub fn stop_token_ids_value(&self) -> Vec<u32> {
        self.stop_token_ids
            .into_iter()
            .flatten()
            .filter_map(|&id| u32::try_from(id).ok())
            .collect()
    }

    /// 0 (off) unless set.
    pub fn min_p_or_default(&self) -> f32 {
        self.min_p.unwrap_or(0.0) as f32
    }

    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// `logit_bias` as `(token id, bias)` pairs, in key order (validation checked the keys and
    /// ranges).
    pub fn logit_bias_entries(&self) -> Vec<(u32, f32)> {
        self.logit_bias
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.parse().ok()?, *v as f32)))
            .collect()
    }

    pub fn ignores_eos(&self) -> bool {
        self.ignore_eos.unwrap_or(false)
    }

    /// `min_tokens` as the engine's `u32` (validation checked it is in range).
    pub fn min_tokens_value(&self) -> u32 {
        self.min_tokens
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(0)
    }
}
