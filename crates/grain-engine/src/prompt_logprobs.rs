//! Scores a prompt's own tokens: `echo` with `logprobs` on `/v1/completions`, how evaluation
//! harnesses (lm-eval's loglikelihood tasks) measure a continuation.
//!
//! The logits row of prompt position `p` is the model's distribution over token `p + 1`, so a
//! prompt of `L` tokens needs the rows of positions `0 .. L - 1`; the first token has no score.
//! The scheduler asks for those rows ([`crate::state::State::score_prompt`]), a chunk at a time.
//! A preemption recomputes positions already scored: their rows are skipped here, so each token
//! is scored once.

use std::sync::Arc;

use crate::api::{EngineError, Event, PromptLogprob};
use crate::runner::TokenDecoder;
use crate::sampling::score;

/// What a token the model rules out entirely (a -inf logit) scores: JSON has no infinity, and
/// OpenAI reports such tokens with this floor.
const LOGPROB_FLOOR: f32 = -9999.0;

/// One choice's scores of its prompt, filled in position order.
#[derive(Debug)]
pub(crate) struct PromptScorer {
    ids: Arc<[u32]>,
    top: usize,
    /// `(logprob, top alternatives)` of tokens `1 ..`, in order.
    scores: Vec<(f32, Vec<(u32, f32)>)>,
}

impl PromptScorer {
    pub fn new(ids: Arc<[u32]>, top: u32) -> Self {
        Self {
            ids,
            top: top as usize,
            scores: Vec::new(),
        }
    }

    /// Every token but the first has its score.
    pub fn is_complete(&self) -> bool {
        self.scores.len() + 1 >= self.ids.len()
    }

    /// Records the rows of positions `start ..` (in order). Rows of positions already scored, or
    /// past the last one that scores a token, are ignored. Returns whether the prompt is now
    /// complete.
    pub fn record(&mut self, start: usize, rows: &mut [Vec<f32>]) -> Result<bool, EngineError> {
        let next = self.scores.len();
        if start > next && !self.is_complete() {
            return Err(EngineError::Internal(format!(
                "prompt scores skipped positions {next}..{start}"
            )));
        }
        for (position, row) in (start..).zip(rows.iter_mut()) {
            if self.is_complete() {
                break;
            }
            if position < self.scores.len() {
                continue;
            }
            self.scores
                .push(score(row, self.ids[position + 1], self.top));
        }
        Ok(self.is_complete())
    }

    /// The finished scores as choice `index`'s event, with each token's text.
    pub fn event(&self, index: u32, decoder: &dyn TokenDecoder) -> Event {
        let tokens = self
            .ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let (token, bytes) = decoder.token_text(id);
                let (logprob, top) = match i.checked_sub(1).and_then(|k| self.scores.get(k)) {
                    None => (None, Vec::new()),
                    Some((logprob, top)) => (
                        Some(floor(*logprob)),
                        top.iter()
                            .map(|&(alt, lp)| {
                                let (t, b) = decoder.token_text(alt);
                                (t, b, floor(lp))
                            })
                            .collect(),
                    ),
                };
                PromptLogprob {
                    id,
                    token,
                    bytes,
                    logprob,
                    top,
                }
            })
            .collect();
        Event::PromptLogprobs { index, tokens }
    }
}

fn floor(logprob: f32) -> f32 {
    if logprob.is_finite() {
        logprob
    } else {
        LOGPROB_FLOOR
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::ToyDecoder;

    /// Row `p` puts all its mass on token `p + 7`, ahead of `p + 8`.
    fn rows(positions: std::ops::Range<usize>) -> Vec<Vec<f32>> {
        positions
            .map(|p| {
                let mut row = vec![f32::NEG_INFINITY; 300];
                row[p + 7] = 0.0;
                row[p + 8] = -1.0;
                row
            })
            .collect()
    }

    #[test]
    fn each_token_is_scored_once_from_the_row_before_it() {
        let ids: Arc<[u32]> = vec![1, 7, 30, 10].into();
        let mut scorer = PromptScorer::new(ids, 1);
        let d = ToyDecoder;
        assert!(!scorer.record(0, &mut rows(0..2)).unwrap());
        // A recompute after a preemption sends rows 0 and 1 again: they are skipped.
        assert!(scorer.record(0, &mut rows(0..4)).unwrap());
        let Event::PromptLogprobs { index, tokens } = scorer.event(3, &d) else {
            panic!("a prompt event");
        };
        assert_eq!(index, 3);
        let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        assert_eq!(ids, vec![1, 7, 30, 10]);
        assert_eq!(tokens[2].bytes, vec![30u8], "each token's text comes along");
        assert!(tokens[0].logprob.is_none() && tokens[0].top.is_empty());
        let lp: Vec<f32> = tokens[1..].iter().map(|t| t.logprob.unwrap()).collect();
        // log softmax of (0, -1): -0.3133 and -1.3133.
        let (best, second) = (
            -(1.0 + (-1.0f32).exp()).ln(),
            -1.0 - (1.0 + (-1.0f32).exp()).ln(),
        );
        assert!((lp[0] - best).abs() < 1e-6, "token 7 is row 0's favourite");
        assert_eq!(lp[1], LOGPROB_FLOOR, "row 1 rules token 30 out");
        assert!(
            (lp[2] - second).abs() < 1e-6,
            "token 10 is row 2's runner-up"
        );
        let top = &tokens[3].top;
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].1, vec![9u8], "row 2's favourite is token 9");
    }

    #[test]
    fn a_gap_in_the_rows_is_an_error_and_a_single_token_prompt_is_complete() {
        let mut scorer = PromptScorer::new(vec![1, 2, 3].into(), 0);
        assert!(scorer.record(1, &mut rows(1..2)).is_err());
        assert!(PromptScorer::new(vec![5].into(), 0).is_complete());
    }
}
