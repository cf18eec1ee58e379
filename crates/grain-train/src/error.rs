//! The training crate's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path} line {line}: {message}")]
    Data {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("invalid training setup: {0}")]
    Setup(String),
    #[error(transparent)]
    Model(#[from] grain_model::ModelError),
    #[error(transparent)]
    Tokenizer(#[from] grain_tokenizer::TokenizerError),
    #[error(transparent)]
    Template(#[from] grain_tokenizer::TemplateError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn io(path: &std::path::Path, e: std::io::Error) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
