//! `grain check-device parity`: one image + prompt through a checkpoint on a reference device (the
//! CPU) and on the device under test, in f32 and in bf16, compared in one process.
//!
//! Criteria (all must hold for `"pass": true`):
//! - f32: the router picks the same granularity, the greedy token ids are identical, and the
//!   last-token logits and the router logits agree within `F32_REL · max(1, max |reference|)`;
//! - bf16 on the device against the f32 reference: logits within the larger of
//!   `BF16_REL · max(1, max |reference|)` and `BF16_CPU_FACTOR ×` the CPU's own bf16-vs-f32
//!   difference (bf16 rounding alone moves random tiny models' logits by several percent; the
//!   device may round differently, not much worse), and the same router decision unless the CPU's
//!   own bf16 run already departs from its f32 run (a near tie that bf16 rounding may flip either
//!   way; reported as `router_tie`). Greedy tokens in bf16 are reported, not required: on random
//!   weights the top logits are near ties that rounding flips.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use grain_model::image::{decode_rgb, DecodeLimits};
use grain_model::{DType, LlavaModel, RouterInput, SeqChunk, Tensor};
use grain_tokenizer::{
    ChatMessage, ChatTemplate, ContentPart, Tokenizer, IMAGE_PLACEHOLDER, IMAGE_TOKEN_SENTINEL,
};
use serde::Serialize;
use serde_json::json;

use crate::device::{self, Placement};

/// f32 on two devices: reduction order differs (cuBLAS vs gemm), nothing else.
pub const F32_REL: f32 = 1e-3;
/// bf16 keeps 8 significant bits (relative rounding 2^-9 per operation); through a few layers
/// and a vocabulary projection the logits drift by a few percent of their range.
pub const BF16_REL: f32 = 0.05;
/// The device's bf16 error may be this many times the CPU's bf16 error.
pub const BF16_CPU_FACTOR: f32 = 2.0;

#[derive(clap::Args)]
pub struct ParityArgs {
    /// Checkpoint directory (either layout), e.g. tests/fixtures/avg-tiny.
    #[arg(long)]
    pub model: PathBuf,
    /// Image file.
    #[arg(long)]
    pub image: PathBuf,
    #[arg(long, default_value = "What is shown in this image?")]
    pub prompt: String,
    /// Device under test.
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    /// Reference device.
    #[arg(long, default_value = "cpu")]
    pub reference: String,
    #[arg(long, default_value_t = 8)]
    pub max_new_tokens: usize,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What one (device, dtype) run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutput {
    pub device: String,
    pub dtype: &'static str,
    pub granularity: u32,
    pub router_logits: Option<Vec<f32>>,
    pub router_choice: Option<usize>,
    pub last_logits: Vec<f32>,
    pub greedy_token_ids: Vec<u32>,
    pub seconds: f64,
}

pub fn run(a: ParityArgs) -> anyhow::Result<()> {
    let reference = device::resolve(
        device::parse_device(&a.reference)?,
        crate::config::Dtype::F32,
    )?;
    let tested = device::resolve(device::parse_device(&a.device)?, crate::config::Dtype::F32)?;
    let input = Input::load(&a.model, &a.image, &a.prompt)?;
    let mut runs = Vec::new();
    // The reference f32 run fixes the granularity the LM path is compared at.
    let ref_f32 = run_once(&a.model, &input, &reference, None, a.max_new_tokens)?;
    let g = Some(ref_f32.granularity);
    let dev_f32 = run_once(&a.model, &input, &tested, g, a.max_new_tokens)?;
    let bf16 = |p: &Placement| Placement {
        device: p.device.clone(),
        dtype: DType::BF16,
    };
    let ref_bf16 = run_once(&a.model, &input, &bf16(&reference), g, a.max_new_tokens)?;
    let dev_bf16 = run_once(&a.model, &input, &bf16(&tested), g, a.max_new_tokens)?;
    let report = compare(&ref_f32, &dev_f32, &ref_bf16, &dev_bf16);
    runs.extend([ref_f32, dev_f32, ref_bf16, dev_bf16]);
    let out = json!({ "check": "parity", "model": a.model, "image": a.image, "report": report, "runs": runs });
    let text = serde_json::to_string_pretty(&out)?;
    if let Some(p) = &a.json {
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{text}");
    if !report.pass {
        anyhow::bail!("parity check failed: {}", report.failures.join("; "));
    }
    Ok(())
}

/// The prompt and image, prepared once (tokenizer work is device-independent).
pub struct Input {
    prompt_ids: Vec<u32>,
    image: grain_model::image::Rgb8,
}

impl Input {
    pub fn load(model: &Path, image: &Path, prompt: &str) -> anyhow::Result<Self> {
        let tok = Tokenizer::from_dir(model).context("loading the tokenizer")?;
        let template = ChatTemplate::from_dir(model, &tok)?.unwrap_or_else(ChatTemplate::vicuna_v1);
        let messages = [ChatMessage {
            role: "user".into(),
            content: vec![ContentPart::Image, ContentPart::Text(prompt.into())],
        }];
        let prompt_ids =
            tok.encode_prompt(&template.render(&messages, true)?, IMAGE_PLACEHOLDER)?;
        let bytes = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
        let config = grain_model::LlavaConfig::from_dir(model)?;
        let image = decode_rgb(&bytes, DecodeLimits::default(), config.alpha)?;
        Ok(Self { prompt_ids, image })
    }
}

/// Load the model on `p`, route, and greedy-decode at granularity `g` (the router's or the
/// finest when `None`).
pub fn run_once(
    model_dir: &Path,
    input: &Input,
    p: &Placement,
    g: Option<u32>,
    max_new_tokens: usize,
) -> anyhow::Result<RunOutput> {
    let started = Instant::now();
    let model = LlavaModel::load(model_dir, p.dtype, &p.device).context("loading the model")?;
    let image_token = model
        .config()
        .image_token_id
        .unwrap_or(IMAGE_TOKEN_SENTINEL);
    let (w, h) = (input.image.width as u32, input.image.height as u32);
    let (n_crops, px) = model.preprocess(&input.image)?;
    let features = model.encode_crops(&model.pixels_tensor(n_crops, &px)?)?;
    let text_embeds = model.text_embeddings(&input.prompt_ids, image_token)?;
    let routed = if model.has_router() {
        Some(
            model
                .route(&[RouterInput {
                    features: features.clone(),
                    text_embeds,
                }])?
                .remove(0),
        )
    } else {
        None
    };
    let granularities = &model.config().granularities;
    let granularity = g.unwrap_or_else(|| match &routed {
        Some(r) => granularities[r.choice],
        None => *granularities
            .iter()
            .max()
            .expect("a checkpoint has granularities"),
    });
    let image_embeds = model.image_tokens(&features, granularity, w, h)?;
    let embeds = model.prompt_embeddings(&input.prompt_ids, image_token, &[image_embeds])?;
    let (last_logits, greedy_token_ids) = greedy(&model, &embeds, max_new_tokens)?;
    Ok(RunOutput {
        device: device::describe(&p.device),
        dtype: device::dtype_name(p.dtype),
        granularity,
        router_logits: routed.as_ref().map(|r| r.logits.clone()),
        router_choice: routed.map(|r| r.choice),
        last_logits,
        greedy_token_ids,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Prefill through a paged cache, then greedy decode; the argmax runs on the device and only the
/// chosen id comes back per step (the first step's logits are returned whole for the comparison).
fn greedy(model: &LlavaModel, embeds: &Tensor, n: usize) -> anyhow::Result<(Vec<f32>, Vec<u32>)> {
    let block = 16;
    let len = embeds.dim(0)?;
    let blocks = (len + n).div_ceil(block).max(1);
    let cache = model.new_kv_cache(blocks, block)?;
    let table: Vec<u32> = (0..blocks as u32).collect();
    let chunk = |start, len| SeqChunk {
        start,
        len,
        block_table: &table,
        want_logits: true,
    };
    let logits = model.forward(embeds, &[chunk(0, len)], &cache)?;
    let last: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
    let mut ids = Vec::with_capacity(n);
    let mut next = logits.argmax(1)?;
    for step in 0..n {
        let id = next.to_vec1::<u32>()?[0];
        ids.push(id);
        if step + 1 < n {
            let e = model.lm().embed(&[id])?;
            next = model
                .forward(&e, &[chunk(len + step, 1)], &cache)?
                .argmax(1)?;
        }
    }
    Ok((last, ids))
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub pass: bool,
    pub failures: Vec<String>,
    pub f32_tolerance: f32,
    pub bf16_tolerance: f32,
    pub f32_max_abs_diff: f32,
    pub f32_router_max_abs_diff: Option<f32>,
    pub bf16_max_abs_diff: f32,
    pub cpu_bf16_max_abs_diff: f32,
    pub bf16_vs_cpu_bf16_max_abs_diff: f32,
    pub router_tie: bool,
    pub greedy_f32_equal: bool,
    pub greedy_bf16_equal: bool,
}

/// Largest absolute difference; infinite when the lengths differ or a value is not finite.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter().zip(b).fold(0f32, |m, (x, y)| {
        let d = (x - y).abs();
        if d.is_nan() {
            f32::INFINITY
        } else {
            m.max(d)
        }
    })
}

fn scale(v: &[f32]) -> f32 {
    v.iter().fold(1f32, |m, x| m.max(x.abs()))
}

/// Apply the criteria of the module documentation.
pub fn compare(rf: &RunOutput, df: &RunOutput, rb: &RunOutput, db: &RunOutput) -> Report {
    let mut failures = Vec::new();
    let s = scale(&rf.last_logits);
    let f32_tolerance = F32_REL * s;
    let cpu_bf16_diff = max_abs_diff(&rf.last_logits, &rb.last_logits);
    let bf16_tolerance = (BF16_REL * s).max(BF16_CPU_FACTOR * cpu_bf16_diff);
    let f32_diff = max_abs_diff(&rf.last_logits, &df.last_logits);
    if f32_diff > f32_tolerance {
        failures.push(format!("f32 logits differ by {f32_diff} > {f32_tolerance}"));
    }
    let greedy_f32_equal = rf.greedy_token_ids == df.greedy_token_ids;
    if !greedy_f32_equal {
        failures.push(format!(
            "f32 greedy ids differ: {:?} vs {:?}",
            rf.greedy_token_ids, df.greedy_token_ids
        ));
    }
    let f32_router = match (&rf.router_logits, &df.router_logits) {
        (Some(a), Some(b)) => {
            let d = max_abs_diff(a, b);
            let tol = F32_REL * scale(a);
            if d > tol {
                failures.push(format!("f32 router logits differ by {d} > {tol}"));
            }
            Some(d)
        }
        _ => None,
    };
    if rf.router_choice != df.router_choice {
        failures.push(format!(
            "f32 router decisions differ: {:?} vs {:?}",
            rf.router_choice, df.router_choice
        ));
    }
    let bf16_diff = max_abs_diff(&rf.last_logits, &db.last_logits);
    if bf16_diff > bf16_tolerance {
        failures.push(format!(
            "bf16 logits differ from f32 by {bf16_diff} > {bf16_tolerance}"
        ));
    }
    let router_tie = rb.router_choice != rf.router_choice;
    if !router_tie && db.router_choice != rf.router_choice {
        failures.push(format!(
            "bf16 router decision {:?} differs from f32 {:?} (the CPU's bf16 agrees with f32)",
            db.router_choice, rf.router_choice
        ));
    }
    Report {
        pass: failures.is_empty(),
        failures,
        f32_tolerance,
        bf16_tolerance,
        f32_max_abs_diff: f32_diff,
        f32_router_max_abs_diff: f32_router,
        bf16_max_abs_diff: bf16_diff,
        cpu_bf16_max_abs_diff: cpu_bf16_diff,
        bf16_vs_cpu_bf16_max_abs_diff: max_abs_diff(&rb.last_logits, &db.last_logits),
        router_tie,
        greedy_f32_equal,
        greedy_bf16_equal: rf.greedy_token_ids == db.greedy_token_ids,
    }
}
