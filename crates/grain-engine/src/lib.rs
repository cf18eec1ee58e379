//! Grain's engine: preprocessing hand-off, continuous-batching scheduler, paged KV block
//! accounting, sampling and the cloneable handle the HTTP layer talks to.
//!
//! The model sits behind the traits in [`runner`]; this crate never imports candle.
//! [`mock`] holds a deterministic toy model for tests of this crate and of the server.

pub mod api;
pub mod blocks;
pub mod config;
pub mod controller;
pub mod detok;
mod handle;
pub mod json_grammar;
mod json_mode;
mod json_schema;
mod json_schema_first;
mod json_schema_int;
mod json_schema_num;
mod json_schema_state;
mod json_schema_step;
mod json_schema_str;
pub mod mock;
mod prefix;
mod prompt_logprobs;
mod request;
pub mod runner;
pub mod sampling;
pub mod state;
pub mod stop;
mod validate;
mod worker;

pub use api::*;
pub use config::{ConfigError, EngineConfig};
pub use controller::{ControllerConfig, GranularityCeiling};
pub use handle::{EngineHandle, GenerationStream};
pub use json_schema::JsonSchema;
pub use runner::{
    ImageInput, ModelRunner, PrepareItem, PreparedPrompt, Preprocessor, SeqId, StepBatch,
    StepEntry, TokenDecoder, ValidRequest,
};
pub use validate::validate_params;
