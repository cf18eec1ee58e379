//! One request as the scheduler thread tracks it: its choices' sampling, detokenization and stop
//! state, its usage, and the events not yet delivered.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::api::ResponseFormat;
use crate::api::{EngineError, Event, FinishReason, TokenLogprob, Usage};
use crate::detok::IncrementalDecoder;
use crate::handle::Ticket;
use crate::json_mode::{JsonConstraint, TokenTable};
use crate::prompt_logprobs::PromptScorer;
use crate::runner::{SeqId, TokenDecoder};
use crate::sampling::{ChoiceSampler, Sampled, SamplingParams};
use crate::state::{Appended, State};
use crate::stop::StopChecker;

/// One of the `n` choices: a sequence plus everything that turns its tokens into text.
#[derive(Debug)]
pub(crate) struct Choice {
    pub seq: SeqId,
    sampler: ChoiceSampler,
    detok: IncrementalDecoder,
    stop: StopChecker,
    /// Scores the prompt until it is complete (`prompt_logprobs`).
    scorer: Option<PromptScorer>,
    /// Keeps the text a JSON object or a schema's document (`response_format`).
    json: Option<JsonConstraint>,
    pub finished: bool,
}

/// What delivering queued events achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Some events wait for room in the channel.
    Pending,
    /// Everything was delivered and the request has ended.
    Complete,
    /// The receiver is gone: the client disconnected.
    Disconnected,
}

/// The model-side facts token handling needs.
pub(crate) struct TokenCtx<'a> {
    pub decoder: &'a dyn TokenDecoder,
    pub eos: &'a [u32],
    /// Every token's text, built on first use (JSON mode).
    pub tokens: &'a std::cell::OnceCell<TokenTable>,
}

#[derive(Debug)]
pub(crate) struct ActiveRequest {
    pub id: String,
    pub span: tracing::Span,
    events: mpsc::Sender<Event>,
    /// Events waiting for channel room. The scheduler never blocks on a slow client; the backlog
    /// is bounded by the request's `max_tokens`.
    outbox: VecDeque<Event>,
    /// Held until the request is fully answered: frees the admission slot on drop.
    _ticket: Ticket,
    pub choices: Vec<Choice>,
    sampling: SamplingParams,
    usage: Usage,
    /// `Done` or `Error` is queued; nothing follows.
    ended: bool,
}

impl ActiveRequest {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        span: tracing::Span,
        events: mpsc::Sender<Event>,
        ticket: Ticket,
        seqs: &[SeqId],
        seed: u64,
        sampling: SamplingParams,
        stop: &[String],
        usage: Usage,
        scored_prompt: Option<(Arc<[u32]>, u32)>,
        decoder: &dyn TokenDecoder,
    ) -> Self {
        let mut outbox = VecDeque::new();
        let choices = seqs
            .iter()
            .zip(0u32..)
            .map(|(&seq, index)| {
                let mut scorer = scored_prompt
                    .as_ref()
                    .map(|(ids, top)| PromptScorer::new(ids.clone(), *top));
                if let Some(s) = scorer.as_ref().filter(|s| s.is_complete()) {
                    // A one-token prompt has nothing to score.
                    outbox.push_back(s.event(index, decoder));
                    scorer = None;
                }
                Choice {
                    seq,
                    sampler: ChoiceSampler::new(seed, index),
                    detok: IncrementalDecoder::new(),
                    stop: StopChecker::new(stop),
                    scorer,
                    json: match &sampling.response_format {
                        ResponseFormat::Text => None,
                        ResponseFormat::JsonObject => Some(JsonConstraint::object()),
                        ResponseFormat::JsonSchema(s) => Some(JsonConstraint::schema(s)),
                        ResponseFormat::CallOrText(s) => Some(JsonConstraint::call_or_text(s)),
                    },
                    finished: false,
                }
            })
            .collect();
        Self {
            id,
            span,
            events,
            outbox,
            _ticket: ticket,
            choices,
            sampling,
            usage,
            ended: false,
        }
    }

    /// Records that one of the choices took `positions` prompt positions from the prefix cache.
    pub fn note_cached_tokens(&mut self, positions: usize) {
        let positions = u32::try_from(positions).unwrap_or(u32::MAX);
        self.usage.cached_tokens = self.usage.cached_tokens.max(positions);
    }

    pub fn is_disconnected(&self) -> bool {
        self.events.is_closed()
    }

    /// Scores choice `index`'s prompt with the logits rows of positions `start ..`; once every
    /// token has its score, queues them and tells the scheduler to stop asking for rows.
    pub fn on_prompt_rows(
        &mut self,
        index: usize,
        start: usize,
        rows: &mut [Vec<f32>],
        state: &mut State,
        ctx: &TokenCtx<'_>,
    ) -> Result<(), EngineError> {
        let choice = &mut self.choices[index];
        let Some(scorer) = &mut choice.scorer else {
            return Ok(());
        };
        if scorer.record(start, rows)? {
            self.outbox
                .push_back(scorer.event(index as u32, ctx.decoder));
            choice.scorer = None;
            state.prompt_scored(choice.seq);
        }
        Ok(())
    }

    /// Samples choice `index`'s next token from `row` and queues the events it causes. Returns
    /// whether the choice finished (the caller then ends its sequence).
    pub fn on_logits(
        &mut self,
        index: usize,
        row: &mut [f32],
        state: &mut State,
        ctx: &TokenCtx<'_>,
    ) -> Result<bool, EngineError> {
        let choice = &mut self.choices[index];
        if state.at_length_limit(choice.seq) {
            // `max_tokens: 0`: the prompt was only evaluated.
            self.finish_choice(index as u32, FinishReason::Length);
            return Ok(true);
        }
        let table = choice.json.as_ref().map(|_| {
            ctx.tokens
                .get_or_init(|| TokenTable::build(ctx.decoder, row.len()))
        });
        if let (Some(json), Some(table)) = (&choice.json, table) {
            json.mask(row, table, ctx.eos)?;
        }
        let generated = state.generated(choice.seq).map_or(0, <[u32]>::len);
        let banned_eos = (!self.sampling.allows_eos(generated)).then_some(ctx.eos);
        let banned_stops = (!self.sampling.allows_stop_tokens(generated))
            .then_some(self.sampling.stop_token_ids.as_slice());
        for &id in banned_eos.into_iter().chain(banned_stops).flatten() {
            if let Some(l) = row.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        let sampled = choice.sampler.sample(&self.sampling, row)?;
        let token = sampled.token;
        let appended = state.append_token(choice.seq, token)?;
        if let (Some(json), Some(table)) = (&mut choice.json, table) {
            json.advance(token, table);
        }
        self.usage.completion_tokens += 1;

        let mut text = String::new();
        let mut token_ids = Vec::new();
        let mut logprobs = Vec::new();
        let reason = if ctx.eos.contains(&token) {
            // EOS is counted but not shown; what it leaves pending is released.
            let tail = choice.detok.flush(ctx.decoder);
            Some(finish_text(&mut choice.stop, &tail, &mut text).unwrap_or(FinishReason::Stop))
        } else {
            token_ids.push(token);
            if self.sampling.logprobs.is_some() {
                logprobs.push(token_logprob(ctx.decoder, &sampled));
            }
            let piece = choice.detok.push(ctx.decoder, token);
            let checked = choice.stop.push(&piece);
            text.push_str(&checked.text);
            if checked.stopped {
                Some(FinishReason::Stop)
            } else if self.sampling.stop_token_ids.contains(&token) {
                let tail = choice.detok.flush(ctx.decoder);
                Some(finish_text(&mut choice.stop, &tail, &mut text).unwrap_or(FinishReason::Stop))
            } else if appended == Appended::LengthLimit {
                let tail = choice.detok.flush(ctx.decoder);
                Some(
                    finish_text(&mut choice.stop, &tail, &mut text).unwrap_or(FinishReason::Length),
                )
            } else {
                None
            }
        };

        let index = index as u32;
        if !text.is_empty() || !token_ids.is_empty() {
            self.outbox.push_back(Event::Delta {
                index,
                text,
                token_ids,
                logprobs,
            });
        }
        let Some(reason) = reason else {
            return Ok(false);
        };
        self.finish_choice(index, reason);
        Ok(true)
    }

    /// Queues choice `index`'s end, and the request's when it was the last choice running.
    fn finish_choice(&mut self, index: u32, reason: FinishReason) {
        self.choices[index as usize].finished = true;
        self.outbox.push_back(Event::Finished { index, reason });
        if self.choices.iter().all(|c| c.finished) {
            self.outbox.push_back(Event::Done {
                usage: self.usage.clone(),
            });
            self.ended = true;
            tracing::debug!(parent: &self.span, completion_tokens = self.usage.completion_tokens, "request finished");
        }
    }

    /// Ends the request with an error event after whatever was already queued.
    pub fn fail(&mut self, error: EngineError) {
        if self.ended {
            return;
        }
        tracing::warn!(parent: &self.span, %error, "request failed");
        for c in &mut self.choices {
            c.finished = true;
        }
        self.outbox.push_back(Event::Error(error));
        self.ended = true;
    }

    /// Sends queued events without blocking.
    pub fn deliver(&mut self) -> Delivery {
        while let Some(event) = self.outbox.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.outbox.push_front(event);
                    return Delivery::Pending;
                }
                Err(TrySendError::Closed(_)) => return Delivery::Disconnected,
            }
        }
        if self.ended {
            Delivery::Complete
        } else {
            Delivery::Pending
        }
    }
}

/// Passes the decoder's last text through the stop checker and releases what it held. Returns
/// `Some(Stop)` if a stop string turned up in that tail.
fn finish_text(stop: &mut StopChecker, tail: &str, text: &mut String) -> Option<FinishReason> {
    let checked = stop.push(tail);
    text.push_str(&checked.text);
    if checked.stopped {
        Some(FinishReason::Stop)
    } else {
        text.push_str(&stop.flush());
        None
    }
}

fn token_logprob(decoder: &dyn TokenDecoder, sampled: &Sampled) -> TokenLogprob {
    let (token, bytes) = decoder.token_text(sampled.token);
    TokenLogprob {
        token,
        bytes,
        logprob: sampled.logprob.unwrap_or(0.0),
        top: sampled
            .top
            .iter()
            .map(|&(id, lp)| {
                let (t, b) = decoder.token_text(id);
                (t, b, lp)
            })
            .collect(),
    }
}
