//! `grain make-tiny`: write a tiny checkpoint with the real tensor names and config keys.

use std::path::PathBuf;

use anyhow::{bail, Context};
use grain_model::tiny::{write_tiny, TinyLayout, TinySize};

#[derive(clap::Args)]
pub struct MakeTinyArgs {
    /// Checkpoint layout: `avg` (original LLaVA / AVG-LLaVA, with router) or `hf` (transformers llava_next).
    #[arg(long, value_parser = ["avg", "hf"])]
    layout: String,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Seed for the random weights; the same seed writes the same bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `tiny` (tests), `small` (benchmarks: compute dominates on CPU), `medium` (the LM 2× as
    /// wide and deep as `small`, 377 MB: weights far larger than a CPU's caches, like a real
    /// model's) or `7b` (AVG-LLaVA-7B's shapes with the tiny vocabulary, in bf16: 13.8 GB, for
    /// GPU benchmarks).
    #[arg(long, default_value = "tiny", value_parser = TinySize::NAMES)]
    size: String,
}

pub fn run(a: MakeTinyArgs) -> anyhow::Result<()> {
    let layout = if a.layout == "avg" {
        TinyLayout::Avg
    } else {
        TinyLayout::Hf
    };
    let Some(size) = TinySize::by_name(&a.size) else {
        bail!("unknown --size `{}` (tiny, small or 7b)", a.size)
    };
    write_tiny(&a.out, layout, size, a.seed)
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "wrote {} checkpoint ({}) to {}",
        a.layout,
        a.size,
        a.out.display()
    );
    Ok(())
}
