//! One request's engine events, from one generation stream or merged from several.
//!
//! A text completion with several prompts is one engine request per prompt. Their streams are
//! merged here into what a single request with `prompts × n` choices would send: choice `j` of
//! prompt `i` becomes choice `i·n + j`, the usages are added up into one final `Done`, and the first
//! error ends the whole response (dropping the other streams cancels their requests).

use std::future::poll_fn;
use std::task::Poll;

use grain_engine::{Event, GenerationStream, Usage};

pub(crate) struct Events {
    /// `None` once that stream has delivered its `Done`.
    streams: Vec<Option<GenerationStream>>,
    /// Choices per stream.
    n: u32,
    /// Where the next poll starts, so that no stream starves the others.
    turn: usize,
    usage: Usage,
    finished: bool,
}

impl Events {
    pub fn merged(streams: Vec<GenerationStream>, n: u32) -> Self {
        Self {
            streams: streams.into_iter().map(Some).collect(),
            n,
            turn: 0,
            usage: Usage::default(),
            finished: false,
        }
    }

    /// The next event; `None` after the final `Done` or `Error`, or when a stream ended without
    /// one (the engine went away).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if self.finished {
                return None;
            }
            let (from, event) = poll_fn(|cx| {
                let k = self.streams.len();
                for step in 0..k {
                    let i = (self.turn + step) % k;
                    if let Some(s) = &mut self.streams[i] {
                        if let Poll::Ready(e) = s.poll_next(cx) {
                            self.turn = (i + 1) % k;
                            return Poll::Ready((i, e));
                        }
                    }
                }
                Poll::Pending
            })
            .await;
            let offset = from as u32 * self.n;
            match event {
                Some(Event::Delta {
                    index,
                    text,
                    token_ids,
                    logprobs,
                }) => {
                    return Some(Event::Delta {
                        index: index + offset,
                        text,
                        token_ids,
                        logprobs,
                    })
                }
                Some(Event::PromptLogprobs { index, tokens }) => {
                    return Some(Event::PromptLogprobs {
                        index: index + offset,
                        tokens,
                    })
                }
                Some(Event::Finished { index, reason }) => {
                    return Some(Event::Finished {
                        index: index + offset,
                        reason,
                    })
                }
                Some(Event::Done { usage }) => {
                    self.streams[from] = None;
                    add(&mut self.usage, usage);
                    if self.streams.iter().all(Option::is_none) {
                        self.finished = true;
                        return Some(Event::Done {
                            usage: std::mem::take(&mut self.usage),
                        });
                    }
                }
                Some(Event::Error(e)) => {
                    self.finished = true;
                    self.streams.clear();
                    return Some(Event::Error(e));
                }
                None => {
                    self.finished = true;
                    return None;
                }
            }
        }
    }
}

fn add(total: &mut Usage, u: Usage) {
    total.prompt_tokens = total.prompt_tokens.saturating_add(u.prompt_tokens);
    total.cached_tokens = total.cached_tokens.saturating_add(u.cached_tokens);
    total.completion_tokens = total.completion_tokens.saturating_add(u.completion_tokens);
    total.visual_tokens = total.visual_tokens.saturating_add(u.visual_tokens);
    total.visual_tokens_full = total
        .visual_tokens_full
        .saturating_add(u.visual_tokens_full);
    total.images.extend(u.images);
}
