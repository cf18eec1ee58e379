//! `grain check-device bench`: decode and prefill speed of Grain's LLaMA decoder with random weights
//! of a given shape (`7b`: the LLaVA-NeXT-7B / Vicuna-7B language model; `small`: a CPU dry run of
//! the same logic), on one device.
//!
//! - **Decode**: `batch` sequences that each hold `cached` tokens in the paged KV cache take one step
//!   together, exactly as the engine's step does it: one flat-batch forward, then the f32 logits
//!   copied to the host for sampling. The KV contents are zeros, which costs the same as real
//!   keys: attention reads every cached slot either way. Reported: median step time and tokens/s.
//! - **Prefill**: one sequence of `len` tokens from position 0, logits of the last one.
//! - **Floor**: the least time a decode step can take when every weight of the decoder and every
//!   cached key/value is read once from device memory at `--hbm-gbps`.
//!
//! The weights are drawn on the device, written once as safetensors shards to a scratch directory
//! and loaded through the same loader as a real checkpoint (removed afterwards).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use grain_model::config::TextConfig;
use grain_model::llama::Llama;
use grain_model::weights::Weights;
use grain_model::{DType, Device, KvCache, SeqChunk, Tensor};
use serde::Serialize;
use serde_json::json;

use crate::device;

/// HF transformers on an H100 (LLaVA-NeXT-7B shapes, random bf16, eager), from the GPU issue.
pub const HF_DECODE_TOK_S: [(usize, f64); 3] = [(1, 36.0), (8, 154.0), (16, 169.0)];
pub const HF_PREFILL_MS: [(usize, f64); 2] = [(2988, 96.0), (252, 27.5)];

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    /// `7b` (hidden 4096, 32 layers, 32 heads, MLP 11008, vocab 32064) or `small` (CPU dry run).
    #[arg(long, default_value = "7b", value_parser = ["7b", "small"])]
    pub shapes: String,
    /// Weight and KV dtype [default: bf16 on CUDA, f32 on the CPU].
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    #[arg(long, value_delimiter = ',', default_value = "1,8,16")]
    pub batches: Vec<usize>,
    /// Tokens already in each sequence's KV cache for the decode steps.
    #[arg(long, default_value_t = 3000)]
    pub cached: usize,
    /// Prefill lengths: a 672×672 image at granularity 576, 144 and 36 (2928, 744 and 192 visual
    /// tokens) plus 60 text tokens.
    #[arg(long, value_delimiter = ',', default_value = "2988,804,252")]
    pub prefill: Vec<usize>,
    /// Timed decode steps per batch size (after `--warmup` untimed ones).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed runs per prefill length.
    #[arg(long, default_value_t = 5)]
    pub prefill_runs: usize,
    /// Device memory bandwidth for the floor, GB/s (H100 SXM 3350, H200 4800).
    #[arg(long, default_value_t = 3350.0)]
    pub hbm_gbps: f64,
    /// Scratch directory for the random weights [default: a temporary directory].
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Also time the decode steps and prefills with the fused CUDA kernels off (`decode_unfused`,
    /// `prefill_unfused`).
    #[arg(long)]
    pub ab_fused: bool,
    /// Also time them with one-row projections on cuBLAS instead of Grain's matrix-vector kernel
    /// (`decode_no_gemv`).
    #[arg(long)]
    pub ab_gemv: bool,
    /// Also time them with the decode attention's partition fixed at 256 positions
    /// (`decode_partition256`), against the per-launch choice.
    #[arg(long)]
    pub ab_fixed_partition: bool,
    /// Also time the prefills with these query rows per attention block (comma-separated),
    /// against the default 256 (`prefill_query_block`).
    #[arg(long, value_delimiter = ',')]
    pub ab_query_block: Vec<usize>,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The decoder shapes for `--shapes`.
pub fn shapes(name: &str) -> anyhow::Result<TextConfig> {
    let (hidden, intermediate, layers, heads, vocab) = match name {
        "7b" => (4096, 11008, 32, 32, 32064),
        "small" => (256, 688, 2, 4, 1024),
        other => bail!("unknown --shapes `{other}` (7b or small)"),
    };
    Ok(TextConfig {
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim: hidden / heads,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 4096,
        vocab_size: vocab,
        tie_word_embeddings: false,
        attention_bias: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: Some(0),
    })
}

/// Every tensor of the decoder: (name in the original LLaVA layout, shape).
pub fn tensor_list(c: &TextConfig) -> Vec<(String, Vec<usize>)> {
    let h = c.hidden_size;
    let q = c.num_attention_heads * c.head_dim;
    let kv = c.num_key_value_heads * c.head_dim;
    let mut v = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![c.vocab_size, h],
        ),
        ("model.norm.weight".to_string(), vec![h]),
        ("lm_head.weight".to_string(), vec![c.vocab_size, h]),
    ];
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (n, s) in [
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("mlp.gate_proj.weight", vec![c.intermediate_size, h]),
            ("mlp.up_proj.weight", vec![c.intermediate_size, h]),
            ("mlp.down_proj.weight", vec![h, c.intermediate_size]),
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
        ] {
            v.push((format!("{p}.{n}"), s));
        }
    }
    v
}

/// Bytes one decode step must read at least: every weight but the embedding table (only `batch`
/// rows of it are read), plus every cached key and value of every sequence.
pub fn decode_floor_bytes(c: &TextConfig, dtype: DType, batch: usize, ctx: usize) -> f64 {
    let params: usize = tensor_list(c)
        .iter()
        .filter(|(n, _)| n != "model.embed_tokens.weight")
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let kv = batch * ctx * c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim;
    ((params + kv) * dtype.size_in_bytes()) as f64
}

/// Draw the weights on `device`, write them shard by shard to `dir`, load them as a checkpoint.
fn random_decoder(
    c: &TextConfig,
    dtype: DType,
    device: &Device,
    dir: &Path,
) -> anyhow::Result<Llama> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let all = tensor_list(c);
    // One shard per layer keeps the host copy small.
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![Vec::new()];
    for t in all {
        if t.0.ends_with("input_layernorm.weight") {
            shards.push(Vec::new());
        }
        shards.last_mut().expect("one shard").push(t);
    }
    for (i, shard) in shards.iter().enumerate() {
        let mut map = HashMap::new();
        for (name, shape) in shard {
            let t = if shape.len() == 1 {
                Tensor::ones(shape.as_slice(), dtype, device)?
            } else {
                Tensor::randn(0f32, 0.02, shape.as_slice(), device)?.to_dtype(dtype)?
            };
            map.insert(name.clone(), t);
        }
        let path = dir.join(format!("bench-{i:03}.safetensors"));
        candle_core::safetensors::save(&map, &path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let w = Weights::from_dir(dir, dtype, device)?;
    Ok(Llama::load(&w, c)?)
}

#[derive(Debug, Clone, Serialize)]
pub struct DecodeResult {
    pub batch: usize,
    pub context: usize,
    pub step_ms_median: f64,
    pub step_ms_min: f64,
    pub tokens_per_s: f64,
    pub floor_ms: f64,
    /// `floor_ms / step_ms_median`: the share of the bandwidth bound reached.
    pub floor_fraction: f64,
    pub hf_tokens_per_s: Option<f64>,
    pub speedup_vs_hf: Option<f64>,
    /// Median time until `forward` returned, before the logits were fetched: the host's share of
    /// a step (launching its kernels). Close to `step_ms_median` means the host is the bound.
    pub enqueue_ms_median: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrefillResult {
    pub tokens: usize,
    pub ms_median: f64,
    pub ms_min: f64,
    pub tokens_per_s: f64,
    pub hf_ms: Option<f64>,
    pub speedup_vs_hf: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Random flat-batch input `(rows, hidden)`, as embeddings of the model's dtype.
fn embeds(c: &TextConfig, rows: usize, dtype: DType, device: &Device) -> anyhow::Result<Tensor> {
    Ok(Tensor::randn(0f32, 1.0, (rows, c.hidden_size), device)?.to_dtype(dtype)?)
}

/// Host copy of the logits, as the engine's sampler takes them; checks they are finite.
fn fetch(logits: &Tensor) -> anyhow::Result<()> {
    let rows = logits.to_vec2::<f32>()?;
    if rows.iter().flatten().any(|x| !x.is_finite()) {
        bail!("non-finite logits");
    }
    Ok(())
}

/// Times `a.warmup + a.steps` decode steps of one new token for each sequence of `tables` (each
/// with `a.cached` tokens in the cache), each an engine-like step: one flat-batch forward, then
/// the logits to the host. Returns the timed steps and the time until `forward` returned, in ms.
fn time_decode(
    model: &Llama,
    cache: &KvCache,
    tables: &[Vec<u32>],
    c: &TextConfig,
    a: &BenchArgs,
    dtype: DType,
    dev: &Device,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let x = embeds(c, tables.len(), dtype, dev)?;
    let chunks: Vec<SeqChunk<'_>> = tables
        .iter()
        .map(|t| SeqChunk {
            start: a.cached,
            len: 1,
            block_table: t,
            want_logits: true,
        })
        .collect();
    let mut times = Vec::with_capacity(a.steps);
    let mut enqueue = Vec::with_capacity(a.steps);
    for i in 0..a.warmup + a.steps {
        dev.synchronize()?;
        let t0 = Instant::now();
        let logits = model.forward(&x, &chunks, cache)?;
        let queued = t0.elapsed().as_secs_f64() * 1e3;
        fetch(&logits)?;
        if i >= a.warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            enqueue.push(queued);
        }
    }
    Ok((times, enqueue))
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let report = bench(&a)?;
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(p) = &a.json {
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{text}");
    Ok(())
}

/// Run the whole benchmark and return its JSON report.
pub fn bench(a: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let p = device::resolve(
        device::parse_device(&a.device)?,
        device::parse_dtype(&a.dtype)?,
    )?;
    let c = shapes(&a.shapes)?;
    let (dev, dtype) = (&p.device, p.dtype);
    let max_prefill = a.prefill.iter().copied().max().unwrap_or(0);
    let max_batch = a.batches.iter().copied().max().unwrap_or(1).max(1);
    let ctx = a.cached + 1;
    if ctx.max(max_prefill) > c.max_position_embeddings || a.steps == 0 {
        bail!(
            "--cached/--prefill exceed the context of {}, or --steps is 0",
            c.max_position_embeddings
        );
    }
    let scratch = match &a.scratch {
        Some(d) => ScratchDir::Given(d.join("grain-bench-weights")),
        None => ScratchDir::temp()?,
    };
    let started = Instant::now();
    let model = random_decoder(&c, dtype, dev, scratch.path())?;
    drop(scratch);
    let load_s = started.elapsed().as_secs_f64();

    let block = 16;
    let per_seq = ctx.max(max_prefill).div_ceil(block);
    let cache = KvCache::new(&c, max_batch * per_seq, block, dtype, dev)?;
    let tables: Vec<Vec<u32>> = (0..max_batch)
        .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
        .collect();
    let is_7b = a.shapes == "7b";

    let mut decode = Vec::new();
    for &b in &a.batches {
        let (times, enqueue) = time_decode(&model, &cache, &tables[..b], &c, a, dtype, dev)?;
        let step = median(times.clone());
        let floor_ms = decode_floor_bytes(&c, dtype, b, ctx) / (a.hbm_gbps * 1e9) * 1e3;
        let tps = b as f64 / step * 1e3;
        let hf = is_7b
            .then(|| {
                HF_DECODE_TOK_S
                    .iter()
                    .find(|(k, _)| *k == b)
                    .map(|(_, v)| *v)
            })
            .flatten();
        decode.push(DecodeResult {
            batch: b,
            context: ctx,
            step_ms_median: step,
            step_ms_min: min(&times),
            tokens_per_s: tps,
            floor_ms,
            floor_fraction: floor_ms / step,
            hf_tokens_per_s: hf,
            speedup_vs_hf: hf.map(|h| tps / h),
            enqueue_ms_median: median(enqueue),
        });
    }

    // The same steps with one switch flipped, in the same process and sitting: the fused CUDA
    // kernels off (`--ab-fused`), one-row projections on cuBLAS (`--ab-gemv`),
    // the decode attention's partition fixed at 256 (`--ab-fixed-partition`).
    let variant = |on: bool, flip: fn(bool)| -> anyhow::Result<Vec<serde_json::Value>> {
        if !on {
            return Ok(Vec::new());
        }
        flip(true);
        let runs = a
            .batches
            .iter()
            .map(|&b| time_decode(&model, &cache, &tables[..b], &c, a, dtype, dev))
            .collect::<anyhow::Result<Vec<_>>>();
        flip(false);
        Ok(a.batches
            .iter()
            .zip(runs?)
            .map(|(&b, (times, enqueue))| {
                let step = median(times);
                json!({ "batch": b, "step_ms_median": step, "tokens_per_s": b as f64 / step * 1e3,
                        "enqueue_ms_median": median(enqueue) })
            })
            .collect())
    };
    let decode_unfused = variant(a.ab_fused, |on| grain_model::set_fused_kernels(!on))?;
    let decode_no_gemv = variant(a.ab_gemv, |on| grain_model::set_gemv(!on))?;
    let decode_part256 = variant(a.ab_fixed_partition, |on| {
        grain_model::set_paged_partition(if on { 256 } else { 0 })
    })?;

    let time_prefill = |n: usize| -> anyhow::Result<Vec<f64>> {
        let x = embeds(&c, n, dtype, dev)?;
        let chunk = [SeqChunk {
            start: 0,
            len: n,
            block_table: &tables[0],
            want_logits: true,
        }];
        let mut times = Vec::with_capacity(a.prefill_runs);
        for i in 0..1 + a.prefill_runs {
            dev.synchronize()?;
            let t0 = Instant::now();
            fetch(&model.forward(&x, &chunk, &cache)?)?;
            if i >= 1 {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(times)
    };
    let mut prefill = Vec::new();
    for &n in &a.prefill {
        let times = time_prefill(n)?;
        let ms = median(times.clone());
        let hf = is_7b
            .then(|| HF_PREFILL_MS.iter().find(|(k, _)| *k == n).map(|(_, v)| *v))
            .flatten();
        prefill.push(PrefillResult {
            tokens: n,
            ms_median: ms,
            ms_min: min(&times),
            tokens_per_s: n as f64 / ms * 1e3,
            hf_ms: hf,
            speedup_vs_hf: hf.map(|h| h / ms),
        });
    }
    // The prefills again with one switch flipped (`set(true)`, then back with `set(false)`), in
    // the same process: the fused kernels (the causal softmax among them) off, other query blocks.
    let prefill_with = |set: &dyn Fn(bool)| -> anyhow::Result<Vec<(usize, f64)>> {
        set(true);
        let runs = a
            .prefill
            .iter()
            .map(|&n| time_prefill(n))
            .collect::<Vec<_>>();
        set(false);
        a.prefill
            .iter()
            .zip(runs)
            .map(|(&n, times)| Ok((n, median(times?))))
            .collect()
    };
    let mut prefill_unfused = Vec::new();
    if a.ab_fused {
        for (n, ms) in prefill_with(&|on| grain_model::set_fused_kernels(!on))? {
            prefill_unfused.push(json!({ "tokens": n, "ms_median": ms }));
        }
    }
    let mut prefill_query_block = Vec::new();
    for &rows in &a.ab_query_block {
        let set = |on: bool| grain_model::set_prefill_query_block(if on { rows } else { 0 });
        for (n, ms) in prefill_with(&set)? {
            prefill_query_block.push(json!({ "query_block": rows, "tokens": n, "ms_median": ms }));
        }
    }
    Ok(json!({
        "check": "bench",
        "device": device::describe(dev),
        "dtype": device::dtype_name(dtype),
        "shapes": a.shapes,
        "hidden": c.hidden_size,
        "layers": c.num_hidden_layers,
        "vocab": c.vocab_size,
        // What a decode step reads of the weights (all but the embedding table).
        "weights_read_bytes": decode_floor_bytes(&c, dtype, 0, 0),
        "hbm_gbps": a.hbm_gbps,
        "load_seconds": load_s,
        "decode": decode,
        "decode_unfused": decode_unfused,
        "decode_no_gemv": decode_no_gemv,
        "decode_partition256": decode_part256,
        "prefill": prefill,
        "prefill_unfused": prefill_unfused,
        "prefill_query_block": prefill_query_block,
    }))
}

/// The scratch directory for the weights (a temporary one, or a subdirectory of `--scratch`),
/// removed when dropped.
enum ScratchDir {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

impl ScratchDir {
    fn temp() -> anyhow::Result<Self> {
        Ok(Self::Temp(
            tempfile::tempdir().context("creating a scratch directory")?,
        ))
    }

    fn path(&self) -> &Path {
        match self {
            Self::Temp(t) => t.path(),
            Self::Given(p) => p,
        }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Self::Given(p) = self {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}
