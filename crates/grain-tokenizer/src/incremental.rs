//! Streaming detokenization.
//!
//! Decoding token by token and concatenating is wrong for SentencePiece
//! tokenizers: a character outside the vocabulary is split into byte-fallback
//! tokens (`<0xF0>` `<0x9F>` `<0x98>` `<0x80>` for 😀) that only form text
//! together, and the decoder strips the leading space of whatever sequence it
//! is given, so each piece decoded alone would lose its space.
//!
//! [`IncrementalDecoder`] keeps a small window of recent ids and, after each
//! new id, decodes the window twice: without and with the ids not yet
//! emitted. The difference is the new text. The window always starts at an
//! already-emitted token, so the leading-space strip hits text that was
//! emitted earlier and both decodes agree on it.
//!
//! Text is held back while the newest token is a byte-fallback token: the
//! `ByteFallback` decoder turns a whole run of byte tokens into text at once,
//! and if the run later turns out not to be valid UTF-8 every byte of it
//! becomes U+FFFD, including characters that looked complete. Waiting for the
//! run to end (one more token) is what makes the emitted text always equal to
//! `decode` of the whole sequence. Decoders without byte tokens (byte-level
//! BPE) are handled by holding text that ends in U+FFFD, since a trailing
//! replacement character there means an incomplete UTF-8 sequence.

use crate::error::TokenizerError;
use crate::tokenizer::Tokenizer;

/// Turns a stream of generated ids into text deltas that are complete UTF-8
/// and concatenate to exactly `tokenizer.decode(all_ids, skip_special)`
/// (counting the text returned by [`finish`](Self::finish)).
#[derive(Debug, Clone)]
pub struct IncrementalDecoder {
    tokenizer: Tokenizer,
    skip_special: bool,
    /// The window: ids from the first one that still matters for decoding.
    ids: Vec<u32>,
    /// `ids[..read]` have been emitted; `ids[..read]` decode to `prefix_text`.
    read: usize,
    prefix_text: String,
}

impl IncrementalDecoder {
    pub(crate) fn new(tokenizer: Tokenizer, skip_special: bool) -> Self {
        Self {
            tokenizer,
            skip_special,
            ids: Vec::new(),
            read: 0,
            prefix_text: String::new(),
        }
    }

    /// Feeds the next generated id; returns the text it completes, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        let skipped = self.skip_special && self.tokenizer.is_special(id);
        if skipped || self.tokenizer.id_to_token(id).is_none() {
            // `decode` drops these ids (skipped specials, unknown ids) before
            // its decoder runs, so byte runs on either side of them join up;
            // leaving them out of the window does the same.
            return Ok(None);
        }
        self.ids.push(id);
        if self.tokenizer.is_byte_token(id) {
            return Ok(None);
        }
        let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        // With byte fallback every byte run is closed here (the newest token
        // is not a byte token), so a trailing U+FFFD is final; without it a
        // trailing U+FFFD marks an incomplete UTF-8 sequence.
        if !self.tokenizer.uses_byte_fallback() && text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(delta) = self.delta(&text) else {
            return Ok(None);
        };
        // Slide the window: keep the tokens emitted now, so the next decode
        // starts at text that was already emitted.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        self.prefix_text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        Ok(Some(delta))
    }

    /// Returns whatever text is still held back (an unfinished byte sequence
    /// decodes to U+FFFD here, exactly as `decode` renders it). Call it once
    /// generation has ended; the decoder is then empty and can be reused.
    pub fn finish(&mut self) -> Result<Option<String>, TokenizerError> {
        let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        let delta = self.delta(&text);
        self.ids.clear();
        self.read = 0;
        self.prefix_text.clear();
        Ok(delta)
    }

    /// New text beyond what was emitted, if the window grew it.
    fn delta(&self, text: &str) -> Option<String> {
        if text.len() > self.prefix_text.len() && text.starts_with(self.prefix_text.as_str()) {
            Some(text[self.prefix_text.len()..].to_string())
        } else {
            None
        }
    }
}
