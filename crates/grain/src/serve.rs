//! `grain serve`: load the configuration, start the engine on the chosen checkpoint, serve HTTP.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use grain_backend::BackendConfig;
use grain_model::image::DecodeLimits;
use grain_model::policy::GranularityChoice;
use grain_model::tiny::{write_tiny, TinyLayout, TinySize};
use tracing::{info, warn};

use crate::config::{self, GranularityPolicy, ModelSource, ServeArgs};
use crate::{device, download};

/// Where the weights come from, plus a guard that keeps a generated checkpoint alive.
struct ModelDir {
    path: PathBuf,
    id: String,
    _tmp: Option<tempfile::TempDir>,
}

fn resolve_model(source: &ModelSource) -> anyhow::Result<ModelDir> {
    match source {
        ModelSource::EmbeddedTiny => {
            let tmp = tempfile::tempdir().context("creating a directory for the embedded model")?;
            let path = tmp.path().join("grain-tiny");
            write_tiny(&path, TinyLayout::Avg, TinySize::TINY, 0)?;
            warn!(
                path = %path.display(),
                "no model configured: serving the embedded tiny AVG-LLaVA model; its weights are RANDOM \
                 (deterministic), so answers are gibberish, but every API path, the router and the metrics work"
            );
            Ok(ModelDir {
                path,
                id: "grain-tiny".into(),
                _tmp: Some(tmp),
            })
        }
        ModelSource::Local(p) => {
            if !p.join("config.json").is_file() {
                bail!(
                    "{} is not a checkpoint directory (no config.json)",
                    p.display()
                );
            }
            let id = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "grain".into());
            Ok(ModelDir {
                path: p.clone(),
                id,
                _tmp: None,
            })
        }
        ModelSource::HuggingFace { repo, revision } => {
            let path = download::snapshot(repo, revision)?;
            Ok(ModelDir {
                path,
                id: repo.clone(),
                _tmp: None,
            })
        }
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = config::load(&args).map_err(|e| anyhow!("{e}"))?;
    config::init_logging(&cfg.logging).map_err(|e| anyhow!("logging: {e}"))?;
    for w in &cfg.warnings {
        warn!("{w}");
    }
    info!(config = ?cfg, "configuration");
    let placement = device::resolve(cfg.model.device, cfg.model.dtype)?;
    info!(
        device = %device::describe(&placement.device),
        dtype = device::dtype_name(placement.dtype),
        "model placement"
    );
    let model = resolve_model(&cfg.model.source)?;
    let model_config = grain_model::LlavaConfig::from_dir(&model.path)?;

    let mut backend = BackendConfig::new(model.path.clone());
    backend.model_id = cfg
        .server
        .served_model_name
        .clone()
        .unwrap_or_else(|| model.id.clone());
    backend.device = placement.device;
    backend.dtype = placement.dtype;
    if let Some(bytes) = cfg.kv_cache_memory_bytes {
        backend.kv_cache_bytes = bytes as usize;
    }
    backend.default_granularity = match cfg.granularity.default {
        GranularityPolicy::Auto => GranularityChoice::Auto,
        GranularityPolicy::Fixed(g) => GranularityChoice::Fixed(g),
    };
    backend.max_granularity = cfg.granularity.max;
    backend.max_images = cfg.images.max_images_per_request;
    backend.decode = DecodeLimits {
        max_pixels: cfg.images.max_image_pixels,
        ..DecodeLimits::default()
    };

    let registry = prometheus::Registry::new();
    let metrics = grain_metrics::Metrics::register(&registry, &model_config.granularities)?;
    let engine = grain_backend::start(backend, cfg.engine.clone(), Some(metrics.clone()))?;
    let state =
        grain_server::AppState::new(engine.clone(), cfg.server_config(), metrics, registry)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen_addr())
            .await
            .with_context(|| format!("binding {}", cfg.listen_addr()))?;
        info!(addr = %listener.local_addr()?, model = %engine.model_card().id, "listening");
        let loading = engine.clone();
        tokio::spawn(async move {
            match loading.wait_ready().await {
                Ok(()) => info!("ready"),
                Err(e) => tracing::error!(error = %e, "model failed to load; /ready stays 503"),
            }
        });
        grain_server::serve(listener, state, grain_server::shutdown_signal()).await?;
        info!("shut down cleanly");
        Ok(())
    })
}
