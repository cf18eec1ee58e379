//! `grain check-device kernels`: the paged KV kernels on a device against their CPU form, at
//! LLaVA-NeXT-7B head shapes (128-wide heads, 32 query heads, 32 or 8 KV heads, blocks of 16),
//! on scattered block tables and contexts around the kernels' partition edges (1 … 3001).

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::{paged_attention, write_slots, PagedRows};
use crate::attention::Heads;
use crate::error::Result;

/// One (head shape, dtype) case.
#[derive(Debug, Clone, Serialize)]
pub struct KernelCase {
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

/// Deterministic values in [-1, 1) (xorshift).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
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
            |seed| Tensor::from_vec(noise(t * nkv * hd, seed), (t, nkv, hd), &Device::Cpu);
        let (k_new, v_new) = (kv_rows(1)?, kv_rows(2)?);
        let q = Tensor::from_vec(
            noise(CONTEXTS.len() * nq * hd, 3),
            (CONTEXTS.len(), nq, hd),
            &Device::Cpu,
        )?;
        for dtype in [DType::F32, DType::BF16] {
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
            let (kd, vd, got) = run(device)?;
            let write_exact = max_abs(&(kd - kr)?)? == 0.0 && max_abs(&(vd - vr)?)? == 0.0;
            let diff = max_abs(&(got - &want)?)?;
            let reference = max_abs(&want)?;
            let rel = if dtype == DType::F32 { 1e-4 } else { 1e-2 };
            let tolerance = rel * reference.max(1.0);
            cases.push(KernelCase {
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
