//! The state every handler shares.

use std::sync::Arc;

use grain_engine::EngineHandle;
use grain_metrics::Metrics;
use prometheus::Registry;

use crate::auth::ApiKeys;
use crate::config::ServerConfig;
use crate::images::ImageLoader;
use crate::shutdown::{Drain, InFlight};
use crate::ServerError;

/// Cheap to clone: one `Arc` around the engine handle, configuration and metrics.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    engine: EngineHandle,
    config: ServerConfig,
    metrics: Metrics,
    registry: Registry,
    images: ImageLoader,
    api_keys: ApiKeys,
    drain: Arc<Drain>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("model", &self.0.engine.model_card().id)
            .field("api_keys", &self.0.api_keys)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// `metrics` must be registered on `registry`, which `/metrics` serves.
    pub fn new(
        engine: EngineHandle,
        config: ServerConfig,
        metrics: Metrics,
        registry: Registry,
    ) -> Result<Self, ServerError> {
        crate::validate_cors_origins(&config.cors_allowed_origins)?;
        let images = ImageLoader::new(&config.images)?;
        let api_keys = ApiKeys::new(&config.api_keys);
        Ok(Self(Arc::new(Inner {
            engine,
            config,
            metrics,
            registry,
            images,
            api_keys,
            drain: Arc::new(Drain::default()),
        })))
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.0.engine
    }

    pub fn config(&self) -> &ServerConfig {
        &self.0.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    pub fn images(&self) -> &ImageLoader {
        &self.0.images
    }

    pub fn api_keys(&self) -> &ApiKeys {
        &self.0.api_keys
    }

    pub fn drain(&self) -> &Arc<Drain> {
        &self.0.drain
    }

    /// Registers an in-flight request; `None` while draining.
    pub fn enter(&self) -> Option<InFlight> {
        self.0.drain.enter()
    }

    /// Stops admitting work: `/ready` turns 503 and new completions get 503. The engine is not
    /// told to refuse submissions: a completion accepted before the drain may still be
    /// preprocessing (downloading or decoding its images), and it must still reach the engine
    /// and finish rather than fail with 503 after that work (tests/observability/test_scale_out.py).
    pub fn begin_drain(&self) {
        self.0.drain.begin();
    }

    pub fn is_ready(&self) -> bool {
        !self.0.drain.is_draining() && self.0.engine.is_ready()
    }

    /// The model id clients must send (the card's id or one of the aliases), or `None`.
    pub fn resolve_model(&self, requested: &str) -> Option<&str> {
        let id = self.0.engine.model_card().id.as_str();
        (requested == id || self.0.config.model_aliases.iter().any(|a| a == requested))
            .then_some(id)
    }
}
