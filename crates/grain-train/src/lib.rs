//! RGLF (ranking-based granularity learning from feedback): train the AVG-LLaVA granularity router
//! from the frozen LMM's own answer losses, with candle autograd, on the user's own data.
//!
//! - [`loss`]: the objective (cross-entropy to the best granularity + margin ranking loss).
//! - [`trainable`]: the model crate's router built from trainable variables.
//! - [`feedback`]: per-example answer losses at every granularity (computed once, cached).
//! - [`train`]: the AdamW loop and evaluation; [`checkpoint`]: writing the trained checkpoint.
//! - [`cli`]: `grain train-router`.

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod error;
pub mod feedback;
pub mod finetune;
pub mod lmm;
pub mod loss;
pub mod synth;
pub mod train;
pub mod trainable;

pub use cli::{run, Report, TrainRouterArgs, REPORT_FILE};
pub use error::{Result, TrainError};
