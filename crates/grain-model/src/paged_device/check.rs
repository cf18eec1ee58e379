//! `grain check-device kernels`: Grain's own CUDA kernels against independent forms, at
//! LLaVA-NeXT-7B shapes:
//! - the paged KV kernels against their CPU form (128-wide heads, 32 query heads, 32 or 8 KV
//!   heads, blocks of 16), on scattered block tables and contexts around the kernels' partition
//!   edges (1 … 3001);
//! - the fused decoder kernels against the candle ops they replace, on the same device (the
//!   causal softmax through the whole blocked prefill attention, with and without a cached prefix),
//!   and the one-row projection of `cuda/gemv.cu` against cuBLAS.

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::{paged_attention, write_slots, PagedRows};
use crate::attention::{causal_blocked, CausalPlan, Heads};
use crate::error::Result;
use crate::linear::{set_gemv, Linear};
use crate::test_util::values;

/// One (head shape, dtype, partition) case.
#[derive(Debug, Clone, Serialize)]
pub struct KernelCase {
    /// The CUDA kernel's positions per partition: 0 chosen per launch, else forced.
    pub partition: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub dtype: String,
    /// The context length of each query row.
    pub contexts: Vec<usize>,
    /// Whether the device's cache after `write_slots` equals the CPU's, bit for bit.
    pub write_exact: bool,
    pub max_abs_diff: f32,
    pub max_abs_reference: f32,
    /// `1e-4` (f32) or `1e-2` (bf16, the output's own rounding) times `max(1, max |reference|)`.
    pub tolerance: f32,
    pub pass: bool,
}

fn max_abs(t: &Tensor) -> Result<f32> {
    Ok(t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// Runs every case on `device` (and the same on the CPU as the reference).
pub fn check_paged_kernels(device: &Device) -> Result<Vec<KernelCase>> {
    const CONTEXTS: [usize; 7] = [1, 17, 255, 256, 257, 1000, 3001];
    let (bs, hd) = (16usize, 128usize);
    let mut cases = Vec::new();
    for (nq, nkv) in [(32usize, 32usize), (32, 8)] {
        let heads = Heads {
            q: nq,
            kv: nkv,
            dim: hd,
        };
        // Each row owns its own blocks, handed out in a scattered order.
        let needed: Vec<usize> = CONTEXTS.iter().map(|c| c.div_ceil(bs)).collect();
        let blocks: usize = needed.iter().sum();
        let order: Vec<u32> = (0..blocks as u64)
            .map(|i| ((i * 7919 + 13) % blocks as u64) as u32)
            .collect();
        let mut tables = Vec::new();
        let mut next = 0;
        for &n in &needed {
            tables.push(order[next..next + n].to_vec());
            next += n;
        }
        let rows: Vec<(&[u32], usize)> = tables.iter().map(Vec::as_slice).zip(CONTEXTS).collect();
        let slots: Vec<u32> = rows
            .iter()
            .flat_map(|(t, c)| (0..*c).map(move |p| t[p / bs] * bs as u32 + (p % bs) as u32))
            .collect();
        let t = slots.len();
        let kv_rows =
            |seed| Tensor::from_vec(values(t * nkv * hd, seed, 1.0), (t, nkv, hd), &Device::Cpu);
        let (k_new, v_new) = (kv_rows(1)?, kv_rows(2)?);
        let q = Tensor::from_vec(
            values(CONTEXTS.len() * nq * hd, 3, 1.0),
            (CONTEXTS.len(), nq, hd),
            &Device::Cpu,
        )?;
        for (dtype, partition) in [(DType::F32, 0), (DType::BF16, 0), (DType::BF16, 64)] {
            super::set_paged_partition(partition);
            let run = |dev: &Device| -> Result<(Tensor, Tensor, Tensor)> {
                let shape = (blocks * bs, nkv, hd);
                let (kc, vc) = (
                    Tensor::zeros(shape, dtype, dev)?,
                    Tensor::zeros(shape, dtype, dev)?,
                );
                let s = Tensor::from_slice(&slots, t, dev)?;
                write_slots(&kc, &k_new.to_dtype(dtype)?.to_device(dev)?, &s)?;
                write_slots(&vc, &v_new.to_dtype(dtype)?.to_device(dev)?, &s)?;
                let paged = PagedRows::new(&rows, bs, dev)?;
                let q = q.to_dtype(dtype)?.to_device(dev)?;
                let out = paged_attention(&q, &kc, &vc, &paged, heads)?;
                let back = |x: &Tensor| x.to_device(&Device::Cpu)?.to_dtype(DType::F32);
                Ok((back(&kc)?, back(&vc)?, back(&out)?))
            };
            let (kr, vr, want) = run(&Device::Cpu)?;
            let got = run(device);
            super::set_paged_partition(0);
            let (kd, vd, got) = got?;
            let write_exact = max_abs(&(kd - kr)?)? == 0.0 && max_abs(&(vd - vr)?)? == 0.0;
            let diff = max_abs(&(got - &want)?)?;
            let reference = max_abs(&want)?;
            let rel = if dtype == DType::F32 { 1e-4 } else { 1e-2 };
            let tolerance = rel * reference.max(1.0);
            cases.push(KernelCase {
                partition,
                heads: nq,
                kv_heads: nkv,
                head_dim: hd,
                dtype: format!("{dtype:?}").to_lowercase(),
                contexts: CONTEXTS.to_vec(),
                write_exact,
                max_abs_diff: diff,
                max_abs_reference: reference,
                tolerance,
                pass: write_exact && diff <= tolerance,
            });
        }
    }
    Ok(cases)
}

/// One fused decoder kernel (`cuda/decoder_fused.cu`) against the chain of candle ops it
/// replaces, on the same device, at 7B shapes.
#[derive(Debug, Clone, Serialize)]
pub struct FusedCase {
    pub kernel: String,
    pub dtype: String,
    pub rows: usize,
    pub max_abs_diff: f32,
    pub max_abs_reference: f32,
    /// `1e-5` (f32) or `1e-2` (bf16: one rounding step) times `max(1, max |reference|)`.
    pub tolerance: f32,
    pub pass: bool,
}

/// A fused kernel's output `a` against its candle-op form's `b`.
fn fused_case(
    kernel: String,
    dtype: DType,
    rows: usize,
    a: &Tensor,
    b: &Tensor,
) -> Result<FusedCase> {
    let diff = max_abs(&(a - b)?)?;
    let reference = max_abs(b)?;
    let rel = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
    let tolerance = rel * reference.max(1.0);
    Ok(FusedCase {
        kernel,
        dtype: format!("{dtype:?}").to_lowercase(),
        rows,
        max_abs_diff: diff,
        max_abs_reference: reference,
        tolerance,
        pass: diff <= tolerance,
    })
}

/// Runs each fused kernel and its candle-op form on `device` ([`crate::set_fused_kernels`]
/// switches between them; it is left on). On a device without fused kernels both sides are the
/// candle ops, so every difference is 0.
pub fn check_fused_kernels(device: &Device) -> Result<Vec<FusedCase>> {
    use crate::layer_ops::{add_rms_norm, qkv_rope, set_fused_kernels, swiglu};
    let (hidden, inter, heads) = (
        4096usize,
        11008usize,
        Heads {
            q: 32,
            kv: 32,
            dim: 128,
        },
    );
    let mut cases = Vec::new();
    let result = (|| -> Result<()> {
        for dtype in [DType::F32, DType::BF16] {
            for rows in [1usize, 16, 300] {
                let rand =
                    |shape: (usize, usize), seed: u64| -> Result<Tensor> {
                        Ok(Tensor::from_vec(
                            values(shape.0 * shape.1, seed, 1.0),
                            shape,
                            &Device::Cpu,
                        )?
                        .to_dtype(dtype)?
                        .to_device(device)?)
                    };
                let (x, d) = (rand((rows, hidden), 11)?, rand((rows, hidden), 12)?);
                let w = rand((1, hidden), 13)?.squeeze(0)?;
                let gu = rand((rows, 2 * inter), 14)?;
                let width = (heads.q + 2 * heads.kv) * heads.dim;
                let qkv = rand((rows, width), 15)?;
                // RoPE angles of positions 2990.. (the end of a 3000-token context).
                let half = heads.dim / 2;
                let (mut cos, mut sin) = (Vec::new(), Vec::new());
                for p in 0..rows {
                    for i in 0..half {
                        let a =
                            (2990 + p) as f32 / 10000f32.powf((2 * i) as f32 / heads.dim as f32);
                        cos.push(a.cos());
                        sin.push(a.sin());
                    }
                }
                let table = |v: Vec<f32>| -> Result<Tensor> {
                    Ok(Tensor::from_vec(v, (rows, half), &Device::Cpu)?
                        .to_dtype(dtype)?
                        .to_device(device)?)
                };
                let (cos, sin) = (table(cos)?, table(sin)?);
                let slots: Vec<u32> = (0..rows as u32).map(|r| (r * 37 + 5) % 512).collect();
                let slots = Tensor::from_vec(slots, rows, device)?;
                let cache = || Tensor::zeros((512, heads.kv, heads.dim), dtype, device);
                let run = |fused: bool| -> Result<Vec<Tensor>> {
                    set_fused_kernels(fused);
                    let (s, y) = add_rms_norm(&x, &d, &w, 1e-5)?;
                    let act = swiglu(&gu, inter)?;
                    let (kc, vc) = (cache()?, cache()?);
                    let (q, k, v, written) =
                        qkv_rope(&qkv, &cos, &sin, heads, Some((&slots, &kc, &vc)))?;
                    if !written {
                        write_slots(&kc, &k, &slots)?;
                        write_slots(&vc, &v, &slots)?;
                    }
                    [s, y, act, q, k, v, kc, vc]
                        .iter()
                        .map(|t| Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?))
                        .collect()
                };
                let fused = run(true)?;
                let plain = run(false)?;
                let names = [
                    "add_rms:sum",
                    "add_rms:norm",
                    "silu_mul",
                    "qkv_rope:q",
                    "qkv_rope:k",
                    "qkv_rope:v",
                    "qkv_rope:k_cache",
                    "qkv_rope:v_cache",
                ];
                for ((name, a), b) in names.iter().zip(&fused).zip(&plain) {
                    cases.push(fused_case(name.to_string(), dtype, rows, a, b)?);
                }
            }
            // The prefill attention (causal_softmax inside), 32 query heads over 32 or 8 KV heads:
            // a first chunk, a chunk after 2700 cached positions (a prefix-cache hit or a later
            // chunk), and a short one at the end of a 3000-token context.
            for (kv, start, len) in [(32usize, 0usize, 300usize), (8, 2700, 300), (32, 2984, 16)] {
                let heads = Heads {
                    q: 32,
                    kv,
                    dim: 128,
                };
                let rand = |shape: (usize, usize, usize), seed: u64| -> Result<Tensor> {
                    Ok(Tensor::from_vec(
                        values(shape.0 * shape.1 * shape.2, seed, 1.0),
                        shape,
                        &Device::Cpu,
                    )?
                    .to_dtype(dtype)?
                    .to_device(device)?)
                };
                let q = rand((len, heads.q, heads.dim), 21)?;
                let (k, v) = (
                    rand((kv, start + len, heads.dim), 22)?,
                    rand((kv, start + len, heads.dim), 23)?,
                );
                let run = |fused: bool| -> Result<Tensor> {
                    set_fused_kernels(fused);
                    let plan = CausalPlan::new(start, len, device)?;
                    Ok(causal_blocked(&q, &k, &v, &plan, heads)?
                        .to_device(&Device::Cpu)?
                        .to_dtype(DType::F32)?)
                };
                let (a, b) = (run(true)?, run(false)?);
                let name = format!("causal_softmax:32/{kv} heads, {start} cached");
                cases.push(fused_case(name, dtype, len, &a, &b)?);
            }
            // The one-row projection (`cuda/gemv.cu`) against cuBLAS: 7B's widths (4096, and
            // 11008 into `down`), a tiny model's 64, and output widths that are not multiples of
            // the kernel's eight columns per block; the first and the last row of three (a view
            // at an offset, as a prefill's logits row is).
            for (n, k) in [(3000usize, 4096usize), (250, 11_008), (33, 64)] {
                let w = Tensor::from_vec(values(n * k, 31, 0.05), (n, k), &Device::Cpu)?
                    .to_dtype(dtype)?
                    .to_device(device)?;
                let layer = Linear::new(candle_nn::Linear::new(w, None));
                let three = Tensor::from_vec(values(3 * k, 32, 1.0), (3, k), &Device::Cpu)?
                    .to_dtype(dtype)?
                    .to_device(device)?;
                for (what, x) in [
                    ("first row", three.narrow(0, 0, 1)?),
                    ("last row", three.narrow(0, 2, 1)?),
                ] {
                    let run = |on: bool| -> Result<Tensor> {
                        set_gemv(on);
                        Ok(layer
                            .forward(&x)?
                            .to_device(&Device::Cpu)?
                            .to_dtype(DType::F32)?)
                    };
                    let (a, b) = (run(true)?, run(false)?);
                    let name = format!("gemv:{n}x{k} {what}");
                    cases.push(fused_case(name, dtype, 1, &a, &b)?);
                }
            }
        }
        Ok(())
    })();
    set_fused_kernels(true);
    set_gemv(true);
    result.map(|()| cases)
}
