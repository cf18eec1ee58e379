//! `grain train-lmm`: fine-tune a small checkpoint's projector and language model (vision tower,
//! router and `image_newline` frozen) on question/answer data at randomly mixed granularities, so
//! that the model learns to use fine detail when it has it. This is what makes the synthetic RGLF
//! task meaningful: a random-weight LMM has no reason to prefer any granularity.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use grain_model::config::LlavaConfig;
use grain_model::image::{decode_rgb, DecodeLimits};
use grain_tokenizer::{ChatTemplate, Tokenizer, IMAGE_TOKEN_SENTINEL};
use indicatif::ProgressBar;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::checkpoint::{write_checkpoint, write_new_file};
use crate::data::{read_jsonl, split, Example};
use crate::error::{io, Result, TrainError};
use crate::feedback::token_ids;
use crate::lmm::{FrozenVision, TrainableLmm};

/// File name of the fine-tuning report.
pub const LMM_REPORT_FILE: &str = "lmm_report.json";

/// Vicuna-style turns without the system sentence: short prompts keep every question token among
/// the router's 32 text queries. Written next to the fine-tuned weights when the base checkpoint
/// has no template of its own.
pub const SHORT_TEMPLATE: &str = concat!(
    "{%- for message in messages if message['role'] != 'system' -%}\n",
    "{%- if message['role'] == 'user' -%}{{- ('' if loop.first else ' ') ~ 'USER: ' -}}",
    "{%- else -%}{{- ' ASSISTANT: ' -}}{%- endif -%}\n",
    "{%- if message['content'] is string -%}{{- message['content'] -}}\n",
    "{%- else -%}\n",
    "{%- for part in message['content'] if part['type'] == 'image' -%}{{- '<image>\\n' -}}{%- endfor -%}\n",
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}\n",
    "{%- endif -%}\n",
    "{%- if message['role'] == 'assistant' -%}{{- '</s>' -}}{%- endif -%}\n",
    "{%- endfor -%}\n",
    "{%- if add_generation_prompt -%}{{- ' ASSISTANT:' -}}{%- endif -%}\n",
);

#[derive(Debug, Clone, clap::Args)]
pub struct TrainLmmArgs {
    /// Base checkpoint (e.g. from `grain make-tiny --layout avg`).
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL data, as for `train-router`.
    #[arg(long)]
    pub data: PathBuf,
    /// Output checkpoint directory (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 0.1)]
    pub val_split: f64,
    /// Train the LM only: the projector stays as it is, so it cannot single out small details
    /// before pooling and only the LM (after pooling) can.
    #[arg(long)]
    pub freeze_projector: bool,
    #[arg(long)]
    pub quiet: bool,
}

/// One example with its frozen vision features and token ids.
pub struct Cached {
    pub vision: Tensor,
    pub width: u32,
    pub height: u32,
    pub prompt: Vec<u32>,
    pub answer: Vec<u32>,
    pub kind: Option<String>,
}

/// Mean answer loss of a set at one granularity, overall and by `kind`.
#[derive(Debug, Clone, Serialize)]
pub struct GranularityLoss {
    pub granularity: u32,
    pub mean: f64,
    pub by_kind: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LmmReport {
    pub base: PathBuf,
    pub train_examples: usize,
    pub val_examples: usize,
    pub trained_params: usize,
    pub lr: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub train_seconds: f64,
    pub epoch_train_loss: Vec<f64>,
    pub before: Vec<GranularityLoss>,
    pub after: Vec<GranularityLoss>,
}

/// The template the model is trained with: the checkpoint's own, else [`SHORT_TEMPLATE`].
pub fn template_for(dir: &Path, tok: &Tokenizer) -> Result<(ChatTemplate, bool)> {
    Ok(match ChatTemplate::from_dir(dir, tok)? {
        Some(t) => (t, false),
        None => (
            ChatTemplate::from_source(SHORT_TEMPLATE, tok.bos_token(), tok.eos_token())?,
            true,
        ),
    })
}

/// Decode, preprocess and encode every example's image with the frozen tower.
pub fn cache_examples(
    dir: &Path,
    config: &LlavaConfig,
    tok: &Tokenizer,
    template: &ChatTemplate,
    examples: &[Example],
    pb: &ProgressBar,
) -> Result<Vec<Cached>> {
    let device = Device::Cpu;
    let tower = FrozenVision::load(dir, config, &device)?;
    let s = config.vision.image_size;
    examples
        .iter()
        .map(|ex| {
            let bytes = std::fs::read(&ex.image).map_err(|e| io(&ex.image, e))?;
            let img = decode_rgb(&bytes, DecodeLimits::default(), config.alpha)?;
            let (n, px) = grain_model::llava::preprocess_image(&img, config)?;
            let pixels = Tensor::from_slice(&px, (n, 3, s, s), &device)?;
            let (prompt, answer) = token_ids(tok, template, ex)?;
            pb.inc(1);
            Ok(Cached {
                vision: tower.features(&pixels)?,
                width: img.width as u32,
                height: img.height as u32,
                prompt,
                answer,
                kind: ex.kind.clone(),
            })
        })
        .collect()
}

fn loss_of(lmm: &TrainableLmm, c: &Cached, g: u32, image_token: u32) -> Result<Tensor> {
    lmm.answer_loss(
        &c.vision,
        c.width,
        c.height,
        g,
        &c.prompt,
        &c.answer,
        image_token,
    )
}

/// Mean answer loss of `set` at each granularity, by kind.
pub fn losses_by_granularity(
    lmm: &TrainableLmm,
    set: &[&Cached],
    grans: &[u32],
    image_token: u32,
) -> Result<Vec<GranularityLoss>> {
    grans
        .iter()
        .map(|&g| {
            let mut kinds: Vec<(String, f64, usize)> = Vec::new();
            let mut sum = 0.0;
            for c in set {
                let l = f64::from(loss_of(lmm, c, g, image_token)?.to_scalar::<f32>()?);
                sum += l;
                let k = c.kind.clone().unwrap_or_else(|| "-".into());
                match kinds.iter_mut().find(|(n, _, _)| *n == k) {
                    Some(e) => {
                        e.1 += l;
                        e.2 += 1;
                    }
                    None => kinds.push((k, l, 1)),
                }
            }
            kinds.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(GranularityLoss {
                granularity: g,
                mean: sum / set.len().max(1) as f64,
                by_kind: kinds
                    .into_iter()
                    .map(|(k, s, n)| (k, s / n as f64))
                    .collect(),
            })
        })
        .collect()
}

/// Fine-tune on `train` at uniformly drawn granularities; returns the mean loss of each epoch.
#[allow(clippy::too_many_arguments)]
pub fn fine_tune(
    lmm: &TrainableLmm,
    train: &[&Cached],
    grans: &[u32],
    image_token: u32,
    lr: f64,
    epochs: usize,
    batch_size: usize,
    seed: u64,
    frozen: &[&str],
    mut on_step: impl FnMut(f32),
) -> Result<Vec<f64>> {
    if batch_size == 0 || epochs == 0 || train.is_empty() || grans.is_empty() {
        return Err(TrainError::Setup(
            "need an epoch, a batch size above 0, a granularity and one example".into(),
        ));
    }
    let mut opt = AdamW::new(
        lmm.vars_except(frozen),
        ParamsAdamW {
            lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut out = Vec::with_capacity(epochs);
    for _ in 0..epochs {
        order.shuffle(&mut rng);
        let (mut sum, mut n) = (0.0, 0);
        for batch in order.chunks(batch_size) {
            let mut losses = Vec::with_capacity(batch.len());
            for &i in batch {
                let g = grans[rng.random_range(0..grans.len())];
                losses.push(loss_of(lmm, train[i], g, image_token)?);
            }
            let loss = (Tensor::stack(&losses, 0)?.mean_all())?;
            opt.backward_step(&loss)?;
            let l = loss.to_scalar::<f32>()?;
            if !l.is_finite() {
                return Err(TrainError::Setup(
                    "the loss diverged (try a lower --lr)".into(),
                ));
            }
            on_step(l);
            sum += f64::from(l);
            n += 1;
        }
        out.push(sum / f64::from(n));
    }
    Ok(out)
}

pub fn run(a: &TrainLmmArgs) -> Result<LmmReport> {
    let device = Device::Cpu;
    let config = LlavaConfig::from_dir(&a.model)?;
    let tok = Tokenizer::from_dir(&a.model)?;
    let (template, write_template) = template_for(&a.model, &tok)?;
    let image_token = config.image_token_id.unwrap_or(IMAGE_TOKEN_SENTINEL);
    let examples = read_jsonl(&a.data)?;
    let (train_idx, val_idx) = split(examples.len(), a.val_split, a.seed)?;
    let pb = crate::cli::bar(examples.len() as u64, a.quiet, "encode");
    let cached = cache_examples(&a.model, &config, &tok, &template, &examples, &pb)?;
    pb.finish();
    let lmm = TrainableLmm::load(&a.model, &config, &device)?;
    let train: Vec<&Cached> = train_idx.iter().map(|&i| &cached[i]).collect();
    let val: Vec<&Cached> = val_idx.iter().map(|&i| &cached[i]).collect();
    let eval_set = if val.is_empty() { &train } else { &val };
    let grans = config.granularities.clone();
    let before = losses_by_granularity(&lmm, eval_set, &grans, image_token)?;
    let frozen: &[&str] = if a.freeze_projector { &["proj."] } else { &[] };
    let steps = a.epochs * train.len().div_ceil(a.batch_size.max(1));
    let pb = crate::cli::bar(steps as u64, a.quiet, "train");
    let started = Instant::now();
    let epoch_train_loss = fine_tune(
        &lmm,
        &train,
        &grans,
        image_token,
        a.lr,
        a.epochs,
        a.batch_size,
        a.seed,
        frozen,
        |l| {
            pb.inc(1);
            pb.set_message(format!("loss {l:.4}"));
        },
    )?;
    pb.finish();
    let train_seconds = started.elapsed().as_secs_f64();
    let after = losses_by_granularity(&lmm, eval_set, &grans, image_token)?;
    write_checkpoint(&a.model, &a.out, &lmm.tensors())?;
    if write_template {
        write_new_file(
            &a.out.join("chat_template.jinja"),
            SHORT_TEMPLATE.as_bytes(),
        )?;
    }
    let report = LmmReport {
        base: a.model.clone(),
        train_examples: train.len(),
        val_examples: val.len(),
        trained_params: lmm.vars_except(frozen).iter().map(|v| v.elem_count()).sum(),
        lr: a.lr,
        epochs: a.epochs,
        batch_size: a.batch_size,
        seed: a.seed,
        train_seconds,
        epoch_train_loss,
        before,
        after,
    };
    write_new_file(
        &a.out.join(LMM_REPORT_FILE),
        serde_json::to_string_pretty(&report)
            .expect("serialisable")
            .as_bytes(),
    )?;
    Ok(report)
}

pub fn main(a: TrainLmmArgs) -> Result<()> {
    let r = run(&a)?;
    println!(
        "fine-tuned {} parameters on {} examples in {:.1}s; epoch losses {:?}",
        r.trained_params, r.train_examples, r.train_seconds, r.epoch_train_loss
    );
    println!(
        "answer loss by granularity on {} held-out examples (before -> after):",
        r.val_examples
    );
    for (b, f) in r.before.iter().zip(&r.after) {
        let kinds: Vec<String> = b
            .by_kind
            .iter()
            .zip(&f.by_kind)
            .map(|((k, x), (_, y))| format!("{k} {x:.3} -> {y:.3}"))
            .collect();
        println!(
            "  {:>4}: {:.3} -> {:.3}   {}",
            b.granularity,
            b.mean,
            f.mean,
            kinds.join(", ")
        );
    }
    println!("wrote {}", a.out.display());
    Ok(())
}
