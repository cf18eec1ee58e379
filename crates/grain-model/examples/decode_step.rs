//! Decoder step times on a tiny (or `--size small`) checkpoint: one decode step at batch 1, 4 and 16
//! (each sequence with `CTX` positions already cached) and one prefill of `N` tokens. Medians of
//! several runs; a measuring tool for iterating on the decoder, not a test.
//!
//! cargo run --release -p grain-model --example decode_step -- [tiny|small|medium] [CTX] [N]
//!
//! `GRAIN_WAVE=15` also times 15 prefills of `N` tokens in one forward (a wave of concurrent
//! requests' first step).

use std::time::Instant;

use grain_model::tiny::{write_tiny, TinyLayout, TinySize};
use grain_model::{DType, Device, LlavaModel, SeqChunk, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<F: FnMut() -> Result<(), Box<dyn std::error::Error>>>(
    runs: usize,
    mut f: F,
) -> Result<f64, Box<dyn std::error::Error>> {
    f()?; // warm-up
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let size = TinySize::by_name(args.get(1).map(String::as_str).unwrap_or("small"))
        .ok_or_else(|| format!("size: one of {}", TinySize::NAMES.join("|")))?;
    let ctx: usize = args.get(2).map_or(Ok(128), |s| s.parse())?;
    let n: usize = args.get(3).map_or(Ok(2377), |s| s.parse())?;
    let tmp = std::env::temp_dir().join(format!("grain-decode-step-{}", std::process::id()));
    write_tiny(&tmp, TinyLayout::Hf, size, 0)?;
    let model = LlavaModel::load(&tmp, DType::F32, &Device::Cpu)?;
    let vocab = model.config().text.vocab_size as u32;
    let bs = 16;
    let per_seq = (ctx + 1).div_ceil(bs).max(n.div_ceil(bs));
    let max_batch = 16;
    let cache = model.new_kv_cache(per_seq * max_batch, bs)?;
    let tables: Vec<Vec<u32>> = (0..max_batch)
        .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
        .collect();
    let ids = |len: usize, seed: usize| -> Vec<u32> {
        (0..len)
            .map(|i| 3 + ((i * 7919 + seed * 104_729) as u32 % (vocab - 3)))
            .collect()
    };
    // Fill every sequence's first `ctx` positions once.
    for (s, table) in tables.iter().enumerate() {
        let e = model.lm().embed(&ids(ctx, s))?;
        let chunk = SeqChunk {
            start: 0,
            len: ctx,
            block_table: table,
            want_logits: true,
        };
        model.forward(&e, &[chunk], &cache)?;
    }
    println!(
        "hidden {} x {} layers, heads {}/{}, vocab {vocab}; context {ctx}",
        size.hidden, size.layers, size.heads, size.kv_heads
    );
    println!("batch  step_ms  ms/seq");
    let mut one = 0.0;
    // GRAIN_STEP_RUNS (batch 16) and GRAIN_PREFILL_RUNS raise the number of timed runs, e.g. to
    // profile one of them with perf.
    let runs: usize = std::env::var("GRAIN_STEP_RUNS").map_or(Ok(20), |s| s.parse())?;
    for b in [1usize, 4, 8, 16] {
        let toks: Vec<u32> = (0..b).map(|s| 3 + s as u32).collect();
        let step = time(if b == 16 { runs } else { 20 }, || {
            let e = model.lm().embed(&toks)?;
            let chunks: Vec<SeqChunk> = tables[..b]
                .iter()
                .map(|t| SeqChunk {
                    start: ctx,
                    len: 1,
                    block_table: t,
                    want_logits: true,
                })
                .collect();
            model.forward(&e, &chunks, &cache)?.to_vec2::<f32>()?;
            Ok(())
        })?;
        if b == 1 {
            one = step;
        }
        println!(
            "{b:>5}  {:>7.2}  {:>6.2}   ({:.1}x batch-1 throughput)",
            step * 1e3,
            step * 1e3 / b as f64,
            one * b as f64 / step
        );
    }
    let e: Tensor = model.lm().embed(&ids(n, 99))?;
    let chunk = SeqChunk {
        start: 0,
        len: n,
        block_table: &tables[0],
        want_logits: true,
    };
    let prefill_runs: usize = std::env::var("GRAIN_PREFILL_RUNS").map_or(Ok(3), |s| s.parse())?;
    let prefill = time(prefill_runs, || {
        model.forward(&e, std::slice::from_ref(&chunk), &cache)?;
        Ok(())
    })?;
    // `GRAIN_WAVE=S`: also S sequences of `N` tokens each in one forward, like the first step of
    // a wave of concurrent requests.
    let seqs: usize = std::env::var("GRAIN_WAVE").map_or(Ok(0), |s| s.parse())?;
    if seqs > max_batch {
        return Err(format!("GRAIN_WAVE: at most {max_batch} sequences").into());
    }
    if seqs > 0 {
        let e: Tensor = model.lm().embed(&ids(n * seqs, 7))?;
        let chunks: Vec<SeqChunk> = tables[..seqs]
            .iter()
            .map(|t| SeqChunk {
                start: 0,
                len: n,
                block_table: t,
                want_logits: true,
            })
            .collect();
        let wave = time(prefill_runs, || {
            model.forward(&e, &chunks, &cache)?;
            Ok(())
        })?;
        println!(
            "{seqs} prefills of {n} tokens in one forward: {:.1} ms",
            wave * 1e3
        );
    }
    let c = &model.config().text;
    let (h, l, i) = (c.hidden_size, c.num_hidden_layers, c.intermediate_size);
    let qd = c.num_attention_heads * c.head_dim;
    let kvd = c.num_key_value_heads * c.head_dim;
    let linear = 2.0 * n as f64 * l as f64 * (h * (2 * qd + 2 * kvd) + 3 * h * i) as f64;
    let attn = 2.0 * 2.0 * l as f64 * qd as f64 * (n * (n + 1) / 2) as f64;
    println!(
        "prefill {n} tokens: {:.1} ms, {:.2} GFLOP (linear {:.2} + causal attention {:.2}), {:.1} GFLOP/s",
        prefill * 1e3,
        (linear + attn) / 1e9,
        linear / 1e9,
        attn / 1e9,
        (linear + attn) / 1e9 / prefill
    );
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
