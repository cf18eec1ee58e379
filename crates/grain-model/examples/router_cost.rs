//! How much of a request's time the granularity router costs, next to the vision tower and the
//! prefill it decides, on a tiny (or `--size small`) AVG checkpoint. Means of several runs.
//!
//! cargo run --release -p grain-model --example router_cost -- [tiny|small|medium] [WxH] [runs]
//!
//! Times are means over the runs (the router's median is printed too, and the median of routing the
//! same features tensor again with another prompt, as a later turn about the image does). With `GRAIN_ROUTER_ONLY=1`
//! it only runs the router `runs` times (for `perf record`); `GRAIN_ROUTER_FUSED=off` turns the
//! fused CPU router path off, for side-by-side runs. `GRAIN_VISION_ONLY=1` likewise runs only the
//! vision tower and projector.
//! With `GRAIN_CPU_TIME=1` it times the process's CPU time over all threads (Linux `schedstat`)
//! instead of the wall clock, so the figures hold on a machine busy with other work (use it with
//! `RAYON_NUM_THREADS=1`: idle spinning of extra worker threads would count too).

use std::time::Instant;

use grain_model::image::Rgb8;
use grain_model::tiny::{write_tiny, TinyLayout, TinySize};
use grain_model::{DType, Device, LlavaModel, RouterInput, SeqChunk};

/// Seconds: the process's CPU time, all threads (Linux `schedstat`) under `GRAIN_CPU_TIME`, else
/// the wall clock.
fn now() -> f64 {
    if std::env::var_os("GRAIN_CPU_TIME").is_some() {
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            let ns: f64 = tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
                .sum();
            return ns * 1e-9;
        }
    }
    START.with(|t| t.elapsed().as_secs_f64())
}

thread_local! {
    static START: Instant = Instant::now();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The mean: where the CPU-time clock advances in scheduler ticks (4 ms on some kernels), single
/// readings are quantised and only the mean of many runs resolves a few-ms step.
fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let size = TinySize::by_name(args.get(1).map(String::as_str).unwrap_or("tiny"))
        .ok_or_else(|| format!("size: one of {}", TinySize::NAMES.join("|")))?;
    let (w, h) = match args.get(2) {
        Some(s) => {
            let (a, b) = s.split_once('x').ok_or("size as WxH")?;
            (a.parse::<usize>()?, b.parse::<usize>()?)
        }
        None => (672, 672),
    };
    let tmp = std::env::temp_dir().join(format!("grain-router-cost-{}", std::process::id()));
    write_tiny(&tmp, TinyLayout::Avg, size, 0)?;
    let model = LlavaModel::load(&tmp, DType::F32, &Device::Cpu)?;
    let mut img = Rgb8::new(w, h);
    for (i, p) in img.data.iter_mut().enumerate() {
        *p = ((i * 31) % 251) as u8;
    }
    let (n, px) = model.preprocess(&img)?;
    let pixels = model.pixels_tensor(n, &px)?;
    let prompt: Vec<u32> = (3..60).collect();
    let text = model.text_embeddings(&prompt, u32::MAX)?;
    // A later turn's prompt about the same image.
    let later: Vec<u32> = (40..90).collect();
    let later = model.text_embeddings(&later, u32::MAX)?;
    let runs: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(7);
    if std::env::var_os("GRAIN_VISION_ONLY").is_some() {
        let mut vision = Vec::new();
        for _ in 0..runs {
            let t = now();
            model.encode_crops(&pixels)?;
            vision.push(now() - t);
        }
        println!(
            "image {w}x{h}, {n} crops; vision tower and projector {:.2} ms (mean {:.2} ms)",
            median(vision.clone()) * 1e3,
            mean(&vision) * 1e3
        );
        return Ok(());
    }
    if std::env::var_os("GRAIN_ROUTER_ONLY").is_some() {
        let f = model.encode_crops(&pixels)?;
        let mut router = Vec::new();
        for _ in 0..runs {
            // A new tensor each run: the router keeps the visual part of features it has seen.
            let features = f.copy()?;
            let t = now();
            model.route(&[RouterInput {
                features,
                text_embeds: text.clone(),
            }])?;
            router.push(now() - t);
        }
        println!(
            "image {w}x{h}, {n} crops; router {:.2} ms (mean {:.2} ms)",
            median(router.clone()) * 1e3,
            mean(&router) * 1e3
        );
        return Ok(());
    }
    let (mut vision, mut router, mut repeat) = (Vec::new(), Vec::new(), Vec::new());
    let mut feats = None;
    for _ in 0..runs {
        let t = now();
        let f = model.encode_crops(&pixels)?;
        vision.push(now() - t);
        let t = now();
        model.route(&[RouterInput {
            features: f.clone(),
            text_embeds: text.clone(),
        }])?;
        router.push(now() - t);
        // The same features tensor again (an encoder-cache hit) with another prompt.
        let t = now();
        model.route(&[RouterInput {
            features: f.clone(),
            text_embeds: later.clone(),
        }])?;
        repeat.push(now() - t);
        feats = Some(f);
    }
    let feats = feats.expect("ran");
    let (vision, router_median, router) = (median(vision), median(router.clone()), mean(&router));
    println!(
        "image {w}x{h}, {n} crops; vision tower {:.1} ms; router {:.1} ms (median {:.1} ms); \
         a later prompt about the same image {:.2} ms (median)",
        vision * 1e3,
        router * 1e3,
        router_median * 1e3,
        median(repeat) * 1e3
    );
    println!("granularity  prompt_tokens  prefill_ms  router/prefill   (means)");
    for &g in &model.config().granularities {
        let tokens = model.image_tokens(&feats, g, w as u32, h as u32)?;
        let mut ids = prompt.clone();
        ids.insert(10, u32::MAX);
        let embeds = model.prompt_embeddings(&ids, u32::MAX, &[tokens])?;
        let len = embeds.dim(0)?;
        let blocks = len.div_ceil(16);
        let cache = model.new_kv_cache(blocks, 16)?;
        let table: Vec<u32> = (0..blocks as u32).collect();
        let mut prefill = Vec::new();
        for _ in 0..runs {
            let t = now();
            model.forward(
                &embeds,
                &[SeqChunk {
                    start: 0,
                    len,
                    block_table: &table,
                    want_logits: true,
                }],
                &cache,
            )?;
            prefill.push(now() - t);
        }
        let p = mean(&prefill);
        println!(
            "{g:>11}  {len:>13}  {:>10.1}  {:>13.1}%",
            p * 1e3,
            100.0 * router / p
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
