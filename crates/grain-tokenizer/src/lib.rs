//! Text side of Grain: tokenizers, chat templates and streaming detokenization.
//!
//! - [`Tokenizer::from_dir`] loads `tokenizer.json`, or converts a SentencePiece
//!   `tokenizer.model` natively (LLaMA/Vicuna BPE), with the special ids a
//!   server needs ([`Tokenizer::bos_id`], [`Tokenizer::eos_ids`], ...).
//! - [`ChatTemplate`] renders a conversation with the checkpoint's Jinja
//!   template (transformers semantics) or LLaVA's built-in `vicuna_v1` format.
//! - [`Tokenizer::encode_prompt`] turns the rendered prompt into ids with one
//!   id per image placeholder.
//! - [`IncrementalDecoder`] streams generated text as complete UTF-8 deltas.
//!
//! ```no_run
//! use grain_tokenizer::{ChatMessage, ChatTemplate, ContentPart, Tokenizer, IMAGE_PLACEHOLDER};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = std::path::Path::new("/models/avg-llava");
//! let tok = Tokenizer::from_dir(dir)?;
//! let template = ChatTemplate::from_dir(dir, &tok)?.unwrap_or_else(ChatTemplate::vicuna_v1);
//! let messages = [ChatMessage {
//!     role: "user".into(),
//!     content: vec![ContentPart::Image, ContentPart::Text("What is this?".into())],
//! }];
//! let prompt = template.render(&messages, true)?;
//! let ids = tok.encode_prompt(&prompt, IMAGE_PLACEHOLDER)?;
//! let mut stream = tok.incremental_decoder(true);
//! for id in [450, 3017] {
//!     if let Some(text) = stream.step(id)? {
//!         print!("{text}");
//!     }
//! }
//! if let Some(text) = stream.finish()? {
//!     print!("{text}");
//! }
//! # let _ = ids;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod config;
mod error;
mod incremental;
mod spm;
mod template;
mod tokenizer;

pub use error::{TemplateError, TokenizerError};
pub use incremental::IncrementalDecoder;
pub use spm::ProtoError;
pub use template::{ChatMessage, ChatTemplate, ContentPart, IMAGE_PLACEHOLDER};
pub use tokenizer::{Tokenizer, TokenizerSource, IMAGE_TOKEN_SENTINEL};

#[cfg(test)]
mod tests {
    /// The engine shares these across threads (one tokenizer and template per
    /// model, one incremental decoder per sequence moved between tasks).
    #[test]
    fn public_types_are_thread_safe() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<crate::Tokenizer>();
        assert_send_sync::<crate::ChatTemplate>();
        assert_send_sync::<crate::IncrementalDecoder>();
        assert_send_sync::<crate::TokenizerError>();
        assert_send_sync::<crate::TemplateError>();
    }
}
