//! `grain inspect`: one image + prompt through a checkpoint, printed as one JSON object. This is how
//! a user checks a checkpoint against a reference implementation; its keys are stable:
//! `prompt_token_ids`, `visual_tokens`, `granularity`, `granularity_source`, `router_logits`,
//! `last_logits`, `greedy_token_ids` (and `--dump FILE` writes the tensors).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{bail, Context};
use grain_model::image::{decode_rgb, DecodeLimits};
use grain_model::policy::{Detail, GranularityChoice, GranularitySource, Policy, Resolved};
use grain_model::{DType, LlavaModel, RouterInput, SeqChunk, Tensor};
use grain_tokenizer::{
    ChatMessage, ChatTemplate, ContentPart, Tokenizer, IMAGE_PLACEHOLDER, IMAGE_TOKEN_SENTINEL,
};
use serde_json::json;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Checkpoint directory (either layout).
    #[arg(long)]
    model: PathBuf,
    /// Image file (PNG, JPEG, WebP, GIF, BMP).
    #[arg(long)]
    image: PathBuf,
    /// The user's question; the image comes first in the turn.
    #[arg(long)]
    prompt: String,
    /// `auto` (router, or the no-router default 576) or a fixed 36|72|144|288|576.
    #[arg(long, default_value = "auto")]
    granularity: String,
    /// OpenAI-style `detail`: auto, low (coarsest) or high (finest).
    #[arg(long, default_value = "auto", value_parser = ["auto", "low", "high"])]
    detail: String,
    #[arg(long, default_value_t = 8)]
    max_new_tokens: usize,
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    dtype: String,
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a binary built with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Write pixel_values, image_features, text_embeds and router_logits to this safetensors file.
    #[arg(long)]
    dump: Option<PathBuf>,
}

pub fn run(a: InspectArgs) -> anyhow::Result<()> {
    let dtype = match a.dtype.as_str() {
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        _ => DType::F32,
    };
    let device = crate::device::resolve(
        crate::device::parse_device(&a.device)?,
        crate::config::Dtype::F32,
    )?
    .device;
    let model = LlavaModel::load(&a.model, dtype, &device).context("loading the model")?;
    let tok = Tokenizer::from_dir(&a.model).context("loading the tokenizer")?;
    let template = ChatTemplate::from_dir(&a.model, &tok)?.unwrap_or_else(ChatTemplate::vicuna_v1);
    let messages = [ChatMessage {
        role: "user".into(),
        content: vec![ContentPart::Image, ContentPart::Text(a.prompt.clone())],
    }];
    let rendered = template.render(&messages, true)?;
    let prompt_ids = tok.encode_prompt(&rendered, IMAGE_PLACEHOLDER)?;
    let image_token = model
        .config()
        .image_token_id
        .unwrap_or(IMAGE_TOKEN_SENTINEL);

    let bytes =
        std::fs::read(&a.image).with_context(|| format!("reading {}", a.image.display()))?;
    let img = decode_rgb(&bytes, DecodeLimits::default(), model.config().alpha)?;
    let (w, h) = (img.width as u32, img.height as u32);
    let (n_crops, px) = model.preprocess(&img)?;
    let pixels = model.pixels_tensor(n_crops, &px)?;
    let features = model.encode_crops(&pixels)?;
    let text_embeds = model.text_embeddings(&prompt_ids, image_token)?;

    let policy = Policy::new(model.config().granularities.clone());
    let request = match a.granularity.as_str() {
        "auto" => GranularityChoice::Auto,
        g => {
            let g: u32 = g
                .parse()
                .with_context(|| format!("--granularity `{g}` is not auto or a number"))?;
            if !policy.is_candidate(g) {
                bail!("--granularity {g} is not one of {:?}", policy.candidates);
            }
            GranularityChoice::Fixed(g)
        }
    };
    let detail = match a.detail.as_str() {
        "low" => Detail::Low,
        "high" => Detail::High,
        _ => Detail::Auto,
    };
    let router_out = if model.has_router() {
        let input = RouterInput {
            features: features.clone(),
            text_embeds: text_embeds.clone(),
        };
        Some(model.route(&[input])?.remove(0))
    } else {
        None
    };
    let (granularity, source) = match policy.resolve(detail, request, model.has_router()) {
        Resolved::Fixed {
            granularity,
            source,
        } => (granularity, source),
        Resolved::Router => {
            let r = router_out
                .as_ref()
                .expect("resolve asks for the router only when there is one");
            (
                policy.after_router(model.config().granularities[r.choice]),
                GranularitySource::Router,
            )
        }
    };
    let mut visual_tokens = BTreeMap::new();
    for &g in &model.config().granularities {
        visual_tokens.insert(g.to_string(), model.visual_tokens(w, h, g)?);
    }

    let image_embeds = model.image_tokens(&features, granularity, w, h)?;
    let embeds = model.prompt_embeddings(&prompt_ids, image_token, &[image_embeds])?;
    let (last_logits, greedy) = generate(&model, &embeds, a.max_new_tokens)?;

    if let Some(path) = &a.dump {
        let mut t: HashMap<String, Tensor> = HashMap::new();
        t.insert("pixel_values".into(), pixels.clone());
        t.insert("image_features".into(), features.to_dtype(DType::F32)?);
        t.insert("text_embeds".into(), text_embeds.to_dtype(DType::F32)?);
        if let Some(r) = &router_out {
            t.insert(
                "router_logits".into(),
                Tensor::new(r.logits.as_slice(), &device)?,
            );
            let input = RouterInput {
                features: features.clone(),
                text_embeds: text_embeds.clone(),
            };
            if let Some(ri) = model.router_input(&input)? {
                t.insert("router_input".into(), ri.to_dtype(DType::F32)?);
            }
        }
        candle_core::safetensors::save(&t, path)
            .with_context(|| format!("writing {}", path.display()))?;
    }

    let out = json!({
        "prompt_token_ids": prompt_ids.iter().map(|&i| if i == IMAGE_TOKEN_SENTINEL { -200i64 } else { i64::from(i) }).collect::<Vec<_>>(),
        "image_size": [w, h],
        "n_crops": n_crops,
        "visual_tokens": visual_tokens,
        "granularity": granularity,
        "granularity_source": source.as_str(),
        "router_logits": router_out.as_ref().map(|r| r.logits.clone()),
        "last_logits": last_logits,
        "greedy_token_ids": greedy,
    });
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// Prefill the prompt through a paged cache, then greedy-decode `n` tokens.
fn generate(model: &LlavaModel, embeds: &Tensor, n: usize) -> anyhow::Result<(Vec<f32>, Vec<u32>)> {
    let block = 16;
    let len = embeds.dim(0)?;
    let blocks = (len + n).div_ceil(block).max(1);
    let cache = model.new_kv_cache(blocks, block)?;
    let table: Vec<u32> = (0..blocks as u32).collect();
    let chunk = SeqChunk {
        start: 0,
        len,
        block_table: &table,
        want_logits: true,
    };
    let logits = model.forward(embeds, &[chunk], &cache)?.squeeze(0)?;
    let last: Vec<f32> = logits.to_vec1()?;
    let mut next = argmax(&last);
    let mut out = Vec::with_capacity(n);
    for step in 0..n {
        out.push(next);
        if step + 1 == n {
            break;
        }
        let e = model.lm().embed(&[next])?;
        let chunk = SeqChunk {
            start: len + step,
            len: 1,
            block_table: &table,
            want_logits: true,
        };
        let l: Vec<f32> = model.forward(&e, &[chunk], &cache)?.squeeze(0)?.to_vec1()?;
        next = argmax(&l);
    }
    Ok((last, out))
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
