//! The LLaVA backend of Grain's engine: the [`grain_engine::Preprocessor`] (chat template, tokenizer,
//! image decoding and AnyRes) and the [`grain_engine::ModelRunner`] (vision tower, router, pooling and
//! the paged LLaMA decoder in candle) for one checkpoint directory.
//!
//! It sits between `grain-engine` (which never sees a tensor) and `grain-model` (which knows nothing of
//! scheduling): the one place where both meet.

#![forbid(unsafe_code)]

mod decoder;
mod encoder_cache;
mod preprocess;
mod runner;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use grain_engine::{EngineConfig, EngineHandle, ModelCard};
use grain_model::image::DecodeLimits;
use grain_model::kv_cache::KvCache;
use grain_model::policy::{GranularityChoice, Policy};
use grain_model::{DType, Device, LlavaConfig, LlavaModel};
use grain_tokenizer::{ChatTemplate, Tokenizer, IMAGE_TOKEN_SENTINEL};

pub use encoder_cache::EncoderCache;
pub use preprocess::{InputLimits, LlavaPreprocessor};
pub use runner::LlavaRunner;

/// Everything about the model side of a deployment.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub model_dir: PathBuf,
    /// The id clients send as `model` (defaults to the directory name).
    pub model_id: String,
    /// Where the model, its KV cache and the encoder cache live (`Device::Cpu` unless set; a CUDA
    /// device needs the `cuda` feature). All model work runs on the scheduler thread.
    pub device: Device,
    pub dtype: DType,
    /// KV cache budget; the number of blocks is derived from it unless the engine config fixes it.
    pub kv_cache_bytes: usize,
    pub encoder_cache_bytes: usize,
    /// What `auto` means when a request says nothing.
    pub default_granularity: GranularityChoice,
    /// Never serve above this granularity.
    pub max_granularity: Option<u32>,
    /// Granularity for `auto` on checkpoints without a router (576 unless set).
    pub no_router_granularity: Option<u32>,
    pub max_images: usize,
    pub decode: DecodeLimits,
}

impl BackendConfig {
    pub fn new(model_dir: PathBuf) -> Self {
        let model_id = model_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "grain".into());
        Self {
            model_dir,
            model_id,
            device: Device::Cpu,
            dtype: DType::F32,
            kv_cache_bytes: 256 << 20,
            encoder_cache_bytes: 128 << 20,
            default_granularity: GranularityChoice::Auto,
            max_granularity: None,
            no_router_granularity: None,
            max_images: 8,
            decode: DecodeLimits::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("model: {0}")]
    Model(#[from] grain_model::ModelError),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] grain_tokenizer::TokenizerError),
    #[error("chat template: {0}")]
    Template(#[from] grain_tokenizer::TemplateError),
    #[error("engine: {0}")]
    Engine(#[from] grain_engine::ConfigError),
    #[error("{0}")]
    Invalid(String),
}

/// Build the policy from the config, checking every granularity against the checkpoint.
fn policy(cfg: &BackendConfig, model: &LlavaConfig) -> Result<Policy, BackendError> {
    let mut p = Policy::new(model.granularities.clone());
    let check = |g: u32, what: &str| {
        if p.is_candidate(g) {
            Ok(g)
        } else {
            Err(BackendError::Invalid(format!(
                "{what} {g} is not one of the model's granularities {:?}",
                p.candidates
            )))
        }
    };
    if let GranularityChoice::Fixed(g) = cfg.default_granularity {
        check(g, "default granularity")?;
    }
    if let Some(g) = cfg.no_router_granularity {
        check(g, "no-router granularity")?;
    }
    p.default = cfg.default_granularity;
    p.cap = cfg.max_granularity;
    if let Some(g) = cfg.no_router_granularity {
        p.no_router_fallback = g;
    }
    Ok(p)
}

/// Load the tokenizer and config, start the engine, and load the model on its scheduler thread.
/// Returns at once; `EngineHandle::wait_ready` resolves when the weights are in.
pub fn start(
    cfg: BackendConfig,
    mut engine: EngineConfig,
    metrics: Option<grain_metrics::Metrics>,
) -> Result<EngineHandle, BackendError> {
    let config = LlavaConfig::from_dir(&cfg.model_dir)?;
    let tokenizer = Tokenizer::from_dir(&cfg.model_dir)?;
    let template =
        ChatTemplate::from_dir(&cfg.model_dir, &tokenizer)?.unwrap_or_else(ChatTemplate::vicuna_v1);
    let policy = policy(&cfg, &config)?;
    let bytes_per_block = KvCache::bytes_per_block(&config.text, engine.block_size, cfg.dtype);
    let num_blocks = engine
        .num_kv_blocks
        .unwrap_or((cfg.kv_cache_bytes / bytes_per_block).max(1));
    engine.num_kv_blocks = Some(num_blocks);
    let context = config.text.max_position_embeddings;
    engine.max_context = Some(engine.max_context.map_or(context, |c| c.min(context)));
    let card = ModelCard {
        id: cfg.model_id.clone(),
        context_length: context as u32,
        granularities: config.granularities.clone(),
        has_router: config.router.is_some(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let image_token = config.image_token_id.unwrap_or(IMAGE_TOKEN_SENTINEL);
    let mut eos: Vec<u32> = tokenizer.eos_ids().to_vec();
    for &e in &config.text.eos_token_ids {
        if !eos.contains(&e) {
            eos.push(e);
        }
    }
    let pre = LlavaPreprocessor {
        config: config.clone(),
        tokenizer: tokenizer.clone(),
        template,
        limits: InputLimits {
            max_images: cfg.max_images,
            decode: cfg.decode,
        },
    };
    let block_size = engine.block_size;
    let load = move || -> Result<LlavaRunner, String> {
        let started = std::time::Instant::now();
        let model =
            LlavaModel::load(&cfg.model_dir, cfg.dtype, &cfg.device).map_err(|e| e.to_string())?;
        let cache = model
            .new_kv_cache(num_blocks, block_size)
            .map_err(|e| e.to_string())?;
        tracing::info!(
            model = %cfg.model_dir.display(), device = ?cfg.device.location(), dtype = ?cfg.dtype,
            kv_blocks = num_blocks, block_size,
            router = model.has_router(), secs = started.elapsed().as_secs_f64(), "model loaded"
        );
        Ok(LlavaRunner {
            model,
            cache,
            policy,
            image_token,
            eos,
            decoder: Arc::new(decoder::TokDecoder(tokenizer)),
            encoder_cache: EncoderCache::new(cfg.encoder_cache_bytes),
            prompts: Default::default(),
            metrics,
            ceiling: None,
        })
    };
    Ok(EngineHandle::start(engine, card, Arc::new(pre), load)?)
}
