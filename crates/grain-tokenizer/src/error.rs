//! Error types of the crate: one enum for tokenizer loading/encoding, one for
//! chat templates, so callers can map each to its own HTTP status.

use std::path::PathBuf;

use thiserror::Error;

use crate::spm::ProtoError;

/// Loading, encoding or decoding failed.
#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error("no tokenizer.json or tokenizer.model in {0}")]
    NotFound(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid SentencePiece model {path}: {source}")]
    Proto {
        path: PathBuf,
        #[source]
        source: ProtoError,
    },
    #[error("unsupported SentencePiece model type {0} (only BPE models, as used by LLaMA/Vicuna, can be converted; ship a tokenizer.json instead)")]
    UnsupportedModelType(String),
    #[error("invalid SentencePiece vocabulary: {0}")]
    InvalidVocab(String),
    #[error(
        "added token {content:?} is declared with id {declared} but would get id {assigned}; \
         added token ids must follow the base vocabulary without gaps"
    )]
    AddedTokenId {
        content: String,
        declared: u32,
        assigned: u32,
    },
    /// An error reported by the `tokenizers` library (building, encoding, decoding).
    #[error("tokenizer: {0}")]
    Backend(String),
}

impl TokenizerError {
    pub(crate) fn backend(e: impl std::fmt::Display) -> Self {
        Self::Backend(e.to_string())
    }
}

/// Loading or rendering a chat template failed.
#[derive(Debug, Error)]
pub enum TemplateError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: chat_template must be a string or a list of {{name, template}}")]
    BadField { path: PathBuf },
    #[error("{path}: no template named \"default\" among {names:?}")]
    NoDefault { path: PathBuf, names: Vec<String> },
    /// The template source does not parse.
    #[error("chat template syntax error: {0}")]
    Syntax(String),
    /// The template called `raise_exception(message)`, usually because the
    /// conversation breaks its rules (e.g. roles must alternate).
    #[error("{0}")]
    Raised(String),
    /// Any other failure while rendering (undefined function, type error, ...).
    #[error("chat template rendering failed: {0}")]
    Render(String),
    /// The built-in template cannot express this conversation.
    #[error("unsupported message role {0:?} (expected system, user or assistant)")]
    UnsupportedRole(String),
}
