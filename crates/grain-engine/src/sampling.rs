//! Turning one logits row into one token: penalties, temperature, top-k, top-p, a seeded draw, and
//! OpenAI-style log-probabilities.
//!
//! Logprobs are the log-softmax of the *processed* logits (after penalties and temperature, before
//! top-k/top-p truncation), so the alternatives a client sees keep finite values.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::api::{EngineError, GenerationParams, ResponseFormat};

/// Temperatures at or below this are greedy: dividing by ~0 would only amplify float noise.
const GREEDY_EPS: f32 = 1e-5;

/// The sampling knobs of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables.
    pub top_k: usize,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// 1 disables; applies to `prompt_tokens` and every generated token.
    pub repetition_penalty: f32,
    /// The distinct ids of the prompt, ascending (only kept when `repetition_penalty` is on).
    pub prompt_tokens: Vec<u32>,
    /// 0 disables.
    pub min_p: f32,
    /// `Some(n)`: report the sampled token's logprob and the `n` most likely alternatives.
    pub logprobs: Option<usize>,
    /// `(token, bias)` added to the logits first.
    pub logit_bias: Vec<(u32, f32)>,
    /// EOS may not be sampled (`ignore_eos`), or not before this many tokens.
    pub ignore_eos: bool,
    pub min_tokens: usize,
    /// Tokens that end a choice after being sampled (kept in the output).
    pub stop_token_ids: Vec<u32>,
    /// Free text or one JSON object (the mask is applied before sampling, see `json_mode`).
    pub response_format: ResponseFormat,
}

impl From<&GenerationParams> for SamplingParams {
    fn from(p: &GenerationParams) -> Self {
        Self {
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k.unwrap_or(0) as usize,
            presence_penalty: p.presence_penalty,
            frequency_penalty: p.frequency_penalty,
            repetition_penalty: p.repetition_penalty,
            prompt_tokens: Vec::new(),
            min_p: p.min_p,
            logprobs: p.logprobs.then_some(p.top_logprobs as usize),
            logit_bias: p.logit_bias.clone(),
            ignore_eos: p.ignore_eos,
            min_tokens: p.min_tokens as usize,
            stop_token_ids: p.stop_token_ids.clone(),
            response_format: p.response_format.clone(),
        }
    }
}

impl SamplingParams {
    /// Notes the prompt's ids, which the repetition penalty covers.
    pub fn set_prompt(&mut self, prompt: &[u32]) {
        if self.repetition_penalty != 1.0 {
            self.prompt_tokens = prompt.to_vec();
            self.prompt_tokens.sort_unstable();
            self.prompt_tokens.dedup();
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= GREEDY_EPS
    }

    /// Whether a choice that has generated `generated` tokens may end with EOS now.
    pub fn allows_eos(&self, generated: usize) -> bool {
        !self.ignore_eos && generated >= self.min_tokens
    }

    /// Whether it may end with one of `stop_token_ids` now (`ignore_eos` does not forbid that).
    pub fn allows_stop_tokens(&self, generated: usize) -> bool {
        generated >= self.min_tokens
    }
}

/// The sampled token, with its logprob and the top alternatives when asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: Option<f32>,
    /// `(token, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Per-choice sampling state: its random stream and the counts the penalties need.
#[derive(Debug, Clone)]
pub struct ChoiceSampler {
    rng: ChaCha20Rng,
    counts: HashMap<u32, u32>,
}

impl ChoiceSampler {
    /// Choice `index` of a request seeded with `seed` draws from ChaCha20 stream `index`: choices
    /// differ from each other, and the same seed reproduces all of them on any platform.
    pub fn new(seed: u64, index: u32) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        rng.set_stream(u64::from(index));
        Self {
            rng,
            counts: HashMap::new(),
        }
    }

    /// Samples from `logits` (modified in place) and records the token for later penalties.
    pub fn sample(
        &mut self,
        params: &SamplingParams,
        logits: &mut [f32],
    ) -> Result<Sampled, EngineError> {
        if logits.is_empty() {
            return Err(EngineError::Internal("empty logits row".to_owned()));
        }
        process(params, &self.counts, logits);
        let token = if params.is_greedy() {
            argmax(logits)
        } else {
            draw(params, logits, &mut self.rng)
        }
        .ok_or_else(|| EngineError::Internal("every logit is -inf or NaN".to_owned()))?;
        *self.counts.entry(token).or_default() += 1;

        let (logprob, top) = match params.logprobs {
            None => (None, Vec::new()),
            Some(n) => {
                let lse = log_sum_exp(logits);
                let top = top_n(logits, n)
                    .into_iter()
                    .map(|t| (t, logits[t as usize] - lse))
                    .collect();
                (Some(logits[token as usize] - lse), top)
            }
        };
        Ok(Sampled {
            token,
            logprob,
            top,
        })
    }
}

/// A token's log-probability under the raw `logits` (NaN counts as -inf, changed in place) and
/// the `top` most likely tokens', most likely first: how a prompt token is scored.
pub(crate) fn score(logits: &mut [f32], token: u32, top: usize) -> (f32, Vec<(u32, f32)>) {
    nan_to_neg_inf(logits);
    let lse = log_sum_exp(logits);
    let logprob = |t: u32| {
        logits
            .get(t as usize)
            .map_or(f32::NEG_INFINITY, |&l| l - lse)
    };
    let top = top_n(logits, top)
        .into_iter()
        .map(|t| (t, logprob(t)))
        .collect();
    (logprob(token), top)
}

/// NaN → -inf, the logit bias, the repetition penalty over the prompt and the generated tokens,
/// OpenAI's penalties over the generated tokens, then temperature (vLLM's order). Bias entries past the row (checked against the model's vocabulary before the
/// request is admitted) are ignored here.
fn process(params: &SamplingParams, counts: &HashMap<u32, u32>, logits: &mut [f32]) {
    nan_to_neg_inf(logits);
    for &(token, bias) in &params.logit_bias {
        if let Some(l) = logits.get_mut(token as usize) {
            *l += bias;
        }
    }
    if params.repetition_penalty != 1.0 {
        let seen_in_prompt = |t: &u32| params.prompt_tokens.binary_search(t).is_ok();
        let generated_only = counts.keys().filter(|t| !seen_in_prompt(t));
        for &token in params.prompt_tokens.iter().chain(generated_only) {
            if let Some(l) = logits.get_mut(token as usize) {
                *l = if *l > 0.0 {
                    *l / params.repetition_penalty
                } else {
                    *l * params.repetition_penalty
                };
            }
        }
    }
    if params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
        for (&token, &count) in counts {
            if let Some(l) = logits.get_mut(token as usize) {
                *l -= params.frequency_penalty * count as f32 + params.presence_penalty;
            }
        }
    }
    if !params.is_greedy() && params.temperature != 1.0 {
        for l in logits.iter_mut() {
            *l /= params.temperature;
        }
    }
}

/// A NaN logit (a broken row) counts as a token the model rules out.
fn nan_to_neg_inf(logits: &mut [f32]) {
    for l in logits.iter_mut() {
        if l.is_nan() {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// Highest logit; ties go to the lowest id so greedy output never depends on iteration details.
fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l == f32::NEG_INFINITY {
            continue;
        }
        if best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map(|(i, _)| i as u32)
}

/// Ids of the `n` largest finite logits, descending, ties by id.
fn top_n(logits: &[f32], n: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..logits.len() as u32)
        .filter(|&i| logits[i as usize] > f32::NEG_INFINITY)
        .collect();
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if n < ids.len() {
        if n == 0 {
            return Vec::new();
        }
        ids.select_nth_unstable_by(n - 1, by_logit);
        ids.truncate(n);
    }
    ids.sort_unstable_by(by_logit);
    ids
}

fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    max + sum.ln() as f32
}

/// A seeded draw from the softmax of `logits`, restricted by min-p, then top-k, then top-p.
fn draw(params: &SamplingParams, logits: &[f32], rng: &mut ChaCha20Rng) -> Option<u32> {
    let floor = min_p_floor(params.min_p, logits);
    let logits: std::borrow::Cow<'_, [f32]> = if floor > f32::NEG_INFINITY {
        logits
            .iter()
            .map(|&l| if l < floor { f32::NEG_INFINITY } else { l })
            .collect()
    } else {
        logits.into()
    };
    let logits = &*logits;
    let truncate = params.top_k > 0 || params.top_p < 1.0;
    // Without truncation, candidates stay in id order: no sort over the vocabulary needed.
    let candidates: Vec<u32> = if truncate {
        let k = if params.top_k > 0 {
            params.top_k
        } else {
            logits.len()
        };
        top_n(logits, k)
    } else {
        (0..logits.len() as u32)
            .filter(|&i| logits[i as usize] > f32::NEG_INFINITY)
            .collect()
    };
    let max = candidates
        .iter()
        .map(|&i| logits[i as usize])
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return None;
    }
    let mut weights: Vec<f64> = candidates
        .iter()
        .map(|&i| f64::from(logits[i as usize] - max).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    if params.top_p < 1.0 {
        // Smallest prefix (most likely first) whose mass reaches top_p; always at least one token.
        let target = f64::from(params.top_p.max(0.0)) * total;
        let mut acc = 0.0;
        let mut keep = weights.len();
        for (i, w) in weights.iter().enumerate() {
            acc += w;
            if acc >= target {
                keep = i + 1;
                break;
            }
        }
        weights.truncate(keep);
    }
    let kept: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * kept;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return Some(candidates[i]);
        }
        u -= w;
    }
    // Rounding can leave `u` a hair above the last weight.
    weights
        .iter()
        .rposition(|&w| w > 0.0)
        .map(|i| candidates[i])
}

/// The lowest logit `min_p` keeps: probability at least `min_p` times the largest one's, i.e. a
/// logit at least the largest plus ln(min_p). -inf when `min_p` is 0.
fn min_p_floor(min_p: f32, logits: &[f32]) -> f32 {
    if min_p <= 0.0 {
        return f32::NEG_INFINITY;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + min_p.ln()
}

#[cfg(test)]
#[path = "sampling_tests.rs"]
mod tests;
