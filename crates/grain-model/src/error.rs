//! The model crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("tensor `{name}` is missing (looked in {files})")]
    MissingTensor { name: String, files: String },
    #[error("tensor `{name}` in {file} has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        file: PathBuf,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("cannot read safetensors file {file}: {message}")]
    Safetensors { file: PathBuf, message: String },
    #[error("tensor `{name}` in {file}: {message}")]
    TensorData {
        name: String,
        file: PathBuf,
        message: String,
    },
    #[error("invalid image: {0}")]
    Image(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
