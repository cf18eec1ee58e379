//! The whole multimodal model: vision tower → projector → (router) → pooling + merge → LLaMA.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::LlavaConfig;
use crate::error::{ModelError, Result};
use crate::granularity;
use crate::image::{anyres, Rgb8};
use crate::kv_cache::KvCache;
use crate::llama::{Llama, SeqChunk};
use crate::router::{Router, RouterInput, RouterOutput};
use crate::vision::{Projector, VisionTower};
use crate::weights::Weights;

pub struct LlavaModel {
    config: LlavaConfig,
    vision: VisionTower,
    projector: Projector,
    newline: Tensor,
    lm: Llama,
    router: Option<Router>,
    device: Device,
}

impl LlavaModel {
    /// Load a checkpoint directory in either layout.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = LlavaConfig::from_dir(dir)?;
        let weights = Weights::from_dir(dir, dtype, device)?;
        Self::from_weights(config, &weights)
    }

    pub fn from_weights(config: LlavaConfig, w: &Weights) -> Result<Self> {
        let vision = VisionTower::load(w, &config.vision, config.feature_select)?;
        let projector = Projector::load(w, config.vision.hidden_size, config.text.hidden_size)?;
        let newline = w.get("image_newline", &[config.text.hidden_size])?;
        let lm = Llama::load(w, &config.text)?;
        let router = match &config.router {
            Some(rc) => Some(Router::load(w, &config, rc)?),
            None => None,
        };
        Ok(Self {
            vision,
            projector,
            newline,
            lm,
            router,
            device: w.device().clone(),
            config,
        })
    }

    pub fn config(&self) -> &LlavaConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.lm.dtype()
    }

    pub fn has_router(&self) -> bool {
        self.router.is_some()
    }

    pub fn lm(&self) -> &Llama {
        &self.lm
    }

    /// AnyRes crops of a decoded image, normalised: `(n_crops, 3, S, S)` as a flat f32 vector.
    pub fn preprocess(&self, img: &Rgb8) -> Result<(usize, Vec<f32>)> {
        preprocess_image(img, &self.config)
    }

    /// Vision tower + projector: `(n, 3, S, S)` pixels → `(n, 576, hidden)`.
    pub fn encode_crops(&self, pixels: &Tensor) -> Result<Tensor> {
        let f = self.vision.forward(&pixels.to_device(&self.device)?)?;
        self.projector.forward(&f)
    }

    /// Run `f` on a worker of rayon's global pool where the model is on the CPU (the caller
    /// waits). A forward is dozens of parallel loops; started from a thread outside the pool, each
    /// one is injected into the pool and its caller sleeps until it ends, a futex round trip per
    /// loop. Started on a worker, a loop hands work to the other workers through its deque and
    /// runs its own share. On the 2-core build machine a 1-row decode step of the small preset
    /// took 1.8–2.3 ms this way against 2.2–3.2 ms (`examples/decode_step.rs`, alternated runs).
    /// `GRAIN_ON_POOL=off` turns it off, for side-by-side measurements. The router and the vision
    /// tower are left out: in the server (`grain serve`, tiny model, 40 image requests per run,
    /// three alternated runs) both took longer on a worker (router 3.8–8.6 ms against 4.0, vision
    /// tower 40–59 ms against 37–43), while the decoder's steps gained.
    fn on_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let on = *ON.get_or_init(|| std::env::var("GRAIN_ON_POOL").map_or(true, |v| v != "off"));
        if !on || !matches!(self.device, Device::Cpu) || rayon::current_thread_index().is_some() {
            return f();
        }
        rayon::scope(|_| f())
    }

    /// Pixel values from a flat f32 vector of `n` crops.
    pub fn pixels_tensor(&self, n: usize, data: &[f32]) -> Result<Tensor> {
        let s = self.config.vision.image_size;
        if data.len() != n * 3 * s * s {
            return Err(ModelError::Input(format!(
                "expected {} pixel values, got {}",
                n * 3 * s * s,
                data.len()
            )));
        }
        Ok(Tensor::from_slice(data, (n, 3, s, s), &self.device)?)
    }

    /// Run the router over several images at once. Errors when the checkpoint has none.
    pub fn route(&self, inputs: &[RouterInput]) -> Result<Vec<RouterOutput>> {
        self.router
            .as_ref()
            .ok_or_else(|| ModelError::Input("this checkpoint has no granularity router".into()))?
            .route(inputs)
    }

    /// The router's assembled input for one image (for dumps and parity checks).
    pub fn router_input(&self, input: &RouterInput) -> Result<Option<Tensor>> {
        self.router
            .as_ref()
            .map(|r| r.build_input(input))
            .transpose()
    }

    /// Pool projected crop features to granularity `g` and merge them into the image's token
    /// sequence `(visual_tokens, hidden)`.
    pub fn image_tokens(
        &self,
        features: &Tensor,
        g: u32,
        img_w: u32,
        img_h: u32,
    ) -> Result<Tensor> {
        let pooled = granularity::pool(features, g)?;
        granularity::merge(&pooled, img_w, img_h, &self.newline, &self.config)
    }

    /// Exact visual token count for an image at a granularity, without tensor work.
    pub fn visual_tokens(&self, img_w: u32, img_h: u32, g: u32) -> Result<usize> {
        granularity::visual_tokens(img_w, img_h, g, &self.config)
    }

    /// Prompt embeddings: text embeddings with each `image_token` replaced by that image's tokens.
    pub fn prompt_embeddings(
        &self,
        ids: &[u32],
        image_token: u32,
        images: &[Tensor],
    ) -> Result<Tensor> {
        let n_placeholders = ids.iter().filter(|&&i| i == image_token).count();
        if n_placeholders != images.len() {
            return Err(ModelError::Input(format!(
                "prompt has {n_placeholders} image placeholders but {} images",
                images.len()
            )));
        }
        let mut parts = Vec::with_capacity(2 * images.len() + 1);
        let mut images = images.iter();
        let mut run: Vec<u32> = Vec::new();
        for &id in ids {
            if id == image_token {
                if !run.is_empty() {
                    parts.push(self.lm.embed(&run)?);
                    run.clear();
                }
                parts.push(
                    images
                        .next()
                        .expect("counted above")
                        .to_dtype(self.dtype())?,
                );
            } else {
                run.push(id);
            }
        }
        if !run.is_empty() {
            parts.push(self.lm.embed(&run)?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Embeddings of the prompt's text tokens only (image placeholders removed), `(T, hidden)`.
    pub fn text_embeddings(&self, ids: &[u32], image_token: u32) -> Result<Tensor> {
        let text: Vec<u32> = ids.iter().copied().filter(|&i| i != image_token).collect();
        if text.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.config.text.hidden_size),
                self.dtype(),
                &self.device,
            )?);
        }
        self.lm.embed(&text)
    }

    pub fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache> {
        KvCache::new(
            &self.config.text,
            num_blocks,
            block_size,
            self.dtype(),
            &self.device,
        )
    }

    /// One decoder step over a flat batch (see [`Llama::forward`]).
    pub fn forward(
        &self,
        embeds: &Tensor,
        chunks: &[SeqChunk<'_>],
        cache: &KvCache,
    ) -> Result<Tensor> {
        self.on_pool(|| self.lm.forward(embeds, chunks, cache))
    }

    /// Logits of the given rows of the flat batch (see [`Llama::forward_rows`]).
    pub fn forward_rows(
        &self,
        embeds: &Tensor,
        chunks: &[SeqChunk<'_>],
        cache: &KvCache,
        rows: &[u32],
    ) -> Result<Tensor> {
        self.on_pool(|| self.lm.forward_rows(embeds, chunks, cache, rows))
    }

    /// Logits for every row of the flat batch (see [`Llama::forward_all_logits`]).
    pub fn forward_all_logits(
        &self,
        embeds: &Tensor,
        chunks: &[SeqChunk<'_>],
        cache: &KvCache,
    ) -> Result<Tensor> {
        self.on_pool(|| self.lm.forward_all_logits(embeds, chunks, cache))
    }
}

/// AnyRes crops of an image, normalised with the config's mean/std.
pub fn preprocess_image(img: &Rgb8, config: &LlavaConfig) -> Result<(usize, Vec<f32>)> {
    let crops = anyres::crops(img, config)?;
    Ok((
        crops.len(),
        anyres::normalize(&crops, config.image_mean, config.image_std),
    ))
}
