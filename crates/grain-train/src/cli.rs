//! `grain train-router`: the command-line front end of RGLF training.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device};
use grain_model::LlavaModel;
use grain_tokenizer::{ChatTemplate, Tokenizer};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::checkpoint::{write_checkpoint, write_new_file};
use crate::data::{read_jsonl, split};
use crate::error::Result;
use crate::feedback::{FeedbackRunner, Prepared};
use crate::loss::{ranking, LossConfig};
use crate::train::{evaluate, train, EpochLog, Evaluation, TrainConfig};
use crate::trainable::TrainableRouter;

/// File name of the JSON report written next to the trained checkpoint.
pub const REPORT_FILE: &str = "rglf_report.json";

#[derive(Debug, Clone, clap::Args)]
pub struct TrainRouterArgs {
    /// AVG-layout checkpoint directory (must have a router).
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL training data: one `{"image": PATH, "question": TEXT, "answer": TEXT}` per line.
    #[arg(long)]
    pub data: PathBuf,
    /// Output checkpoint directory (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Ranking margin scale: the margin of a pair j ranks apart is `margin · j · loss gap`.
    #[arg(long, default_value_t = 1.0)]
    pub margin: f64,
    #[arg(long, default_value_t = 0.1)]
    pub ce_weight: f64,
    #[arg(long, default_value_t = 1.0)]
    pub rank_weight: f64,
    /// Losses within this much of an example's best count as ties, won by the cheapest
    /// granularity (0: RGLF as published).
    #[arg(long, default_value_t = 0.0)]
    pub tie_tolerance: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of the data held out for validation.
    #[arg(long, default_value_t = 0.1)]
    pub val_split: f64,
    /// No progress bars (logs and the report are still written).
    /// Multiply the voter's text weights (its last `text_queries` rows) by this before training:
    /// the released merger attends across crops only, so the question moves the vote through
    /// those few rows alone (docs/rglf.md).
    #[arg(long, default_value_t = 1.0)]
    pub text_vote_scale: f64,
    #[arg(long)]
    pub quiet: bool,
}

/// Baseline: one fixed granularity for every example.
#[derive(Debug, Clone, Serialize)]
pub struct Fixed {
    pub granularity: u32,
    pub answer_loss: f64,
    pub visual_tokens: f64,
}

/// The best possible per-example choice, for reference.
#[derive(Debug, Clone, Serialize)]
pub struct Oracle {
    pub answer_loss: f64,
    pub visual_tokens: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: PathBuf,
    pub data: PathBuf,
    pub train_examples: usize,
    pub val_examples: usize,
    pub granularities: Vec<u32>,
    pub trained_params: usize,
    pub config: TrainConfig,
    pub feedback_seconds: f64,
    pub train_seconds: f64,
    pub before: Evaluation,
    pub after: Evaluation,
    /// On the validation set (the training set when there is none).
    pub fixed_baselines: Vec<Fixed>,
    /// Per example the granularity with the lowest answer loss (same set).
    pub oracle: Oracle,
    pub epochs: Vec<EpochLog>,
    pub rewritten_files: Vec<String>,
}

pub(crate) fn bar(len: u64, quiet: bool, msg: &'static str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_prefix(msg);
    pb
}

pub fn run(a: TrainRouterArgs) -> Result<Report> {
    let device = Device::Cpu;
    let model = LlavaModel::load(&a.model, DType::F32, &device)?;
    let tok = Tokenizer::from_dir(&a.model)?;
    let template = ChatTemplate::from_dir(&a.model, &tok)?.unwrap_or_else(ChatTemplate::vicuna_v1);
    let examples = read_jsonl(&a.data)?;
    let (train_idx, val_idx) = split(examples.len(), a.val_split, a.seed)?;
    let router =
        TrainableRouter::load_scaled(&a.model, model.config(), &device, a.text_vote_scale)?;

    let started = Instant::now();
    let runner = FeedbackRunner::new(&model, &tok, template);
    let pb = bar(examples.len() as u64, a.quiet, "feedback");
    let mut prepared = Vec::with_capacity(examples.len());
    for ex in &examples {
        prepared.push(runner.prepare(ex)?);
        pb.inc(1);
    }
    pb.finish();
    let feedback_seconds = started.elapsed().as_secs_f64();
    let train_set: Vec<&Prepared> = train_idx.iter().map(|&i| &prepared[i]).collect();
    let val_set: Vec<&Prepared> = val_idx.iter().map(|&i| &prepared[i]).collect();
    let eval_set = if val_set.is_empty() {
        &train_set
    } else {
        &val_set
    };

    let cfg = TrainConfig {
        lr: a.lr,
        epochs: a.epochs,
        batch_size: a.batch_size,
        seed: a.seed,
        loss: LossConfig {
            margin: a.margin,
            ce_weight: a.ce_weight,
            rank_weight: a.rank_weight,
            tie_tolerance: a.tie_tolerance,
        },
    };
    let before = evaluate(&router, eval_set, &cfg.loss)?;
    let steps = a.epochs * train_set.len().div_ceil(a.batch_size.max(1));
    let pb = bar(steps as u64, a.quiet, "train");
    let started = Instant::now();
    let epochs = train(&router, &train_set, &val_set, &cfg, |_, loss, val| {
        pb.inc(1);
        match val {
            Some(v) => pb.set_message(format!("loss {loss:.4} val acc {:.3}", v.accuracy)),
            None => pb.set_message(format!("loss {loss:.4}")),
        }
    })?;
    pb.finish();
    let train_seconds = started.elapsed().as_secs_f64();
    let after = evaluate(&router, eval_set, &cfg.loss)?;

    let grans = model.config().granularities.clone();
    let n = eval_set.len().max(1) as f64;
    let fixed_baselines = grans
        .iter()
        .enumerate()
        .map(|(k, &g)| Fixed {
            granularity: g,
            answer_loss: eval_set
                .iter()
                .map(|p| f64::from(p.feedback[k]))
                .sum::<f64>()
                / n,
            visual_tokens: eval_set
                .iter()
                .map(|p| p.visual_tokens[k] as f64)
                .sum::<f64>()
                / n,
        })
        .collect();
    let oracle = Oracle {
        answer_loss: eval_set
            .iter()
            .map(|p| f64::from(p.feedback[ranking(&p.feedback)[0]]))
            .sum::<f64>()
            / n,
        visual_tokens: eval_set
            .iter()
            .map(|p| p.visual_tokens[ranking(&p.feedback)[0]] as f64)
            .sum::<f64>()
            / n,
    };

    let rewritten_files = write_checkpoint(&a.model, &a.out, &router.tensors())?;
    let report = Report {
        model: a.model.clone(),
        data: a.data.clone(),
        train_examples: train_set.len(),
        val_examples: val_set.len(),
        granularities: grans,
        trained_params: router.num_params(),
        config: cfg,
        feedback_seconds,
        train_seconds,
        before,
        after,
        fixed_baselines,
        oracle,
        epochs,
        rewritten_files,
    };
    let text = serde_json::to_string_pretty(&report).expect("serialisable");
    write_new_file(&a.out.join(REPORT_FILE), text.as_bytes())?;
    Ok(report)
}

/// `grain train-router`: train, write the checkpoint and report, print a short summary.
pub fn main(a: TrainRouterArgs) -> Result<()> {
    let out = a.out.clone();
    let r = run(a)?;
    let pct = |e: &Evaluation| 100.0 * e.accuracy;
    println!(
        "trained {} router parameters on {} examples ({} held out) in {:.1}s (+{:.1}s feedback)",
        r.trained_params, r.train_examples, r.val_examples, r.train_seconds, r.feedback_seconds
    );
    println!(
        "{}: best-granularity accuracy {:.1}% -> {:.1}%, RGLF loss {:.4} -> {:.4}",
        if r.val_examples > 0 {
            "validation"
        } else {
            "training set"
        },
        pct(&r.before),
        pct(&r.after),
        r.before.loss,
        r.after.loss
    );
    println!(
        "{:<18} {:>9} {:>14} {:>12}",
        "policy", "accuracy", "visual tokens", "answer loss"
    );
    let row = |name: &str, acc: Option<f64>, tokens: f64, loss: f64| {
        let acc = acc.map_or("-".to_string(), |a| format!("{:.1}%", 100.0 * a));
        println!("{name:<18} {acc:>9} {tokens:>14.1} {loss:>12.4}");
    };
    row(
        "untrained router",
        Some(r.before.accuracy),
        r.before.visual_tokens,
        r.before.answer_loss,
    );
    row(
        "trained router",
        Some(r.after.accuracy),
        r.after.visual_tokens,
        r.after.answer_loss,
    );
    for f in &r.fixed_baselines {
        row(
            &format!("always-{}", f.granularity),
            None,
            f.visual_tokens,
            f.answer_loss,
        );
    }
    row(
        "oracle",
        Some(1.0),
        r.oracle.visual_tokens,
        r.oracle.answer_loss,
    );
    println!(
        "confusion [best granularity][chosen], trained: {:?}",
        r.after.confusion
    );
    for (k, c) in &r.after.choices_by_kind {
        let before = r
            .before
            .choices_by_kind
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        println!(
            "choices for `{k}` questions {:?}: untrained {before:?} -> trained {c:?}",
            r.granularities
        );
    }
    println!(
        "wrote {} and {}",
        out.display(),
        out.join(REPORT_FILE).display()
    );
    Ok(())
}
