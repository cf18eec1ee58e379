//! Causal attention of a flat batch over the paged KV cache, two ways:
//!
//! - [`paged_rows`]: a kernel over the host cache for short chunks (decode steps). Each query row
//!   reads its keys and values in place through the block table; rows × KV heads run in parallel.
//!   A decode step thus costs one pass over each sequence's cache per layer, with no gather, no
//!   per-sequence tensor ops and no transposes.
//! - [`causal_blocked`]: long chunks (prefill) as batched matmuls over query blocks. A block of
//!   queries only meets the keys up to its last position, so the upper triangle is never computed
//!   and the score matrix held at once is `heads × block × context`, not `heads × len × context`.
//!   On the host cache, [`causal_host`] does the same in parallel (head, block) tasks
//!   ([`crate::attention_blocks`]).

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::attention_blocks::{self, Mask};
use crate::error::Result;
use crate::host_dense::with_values;
use crate::kv_cache::HostLayer;
use crate::simd;

/// Query rows per block in [`causal_blocked`]. On an H200 at 7B shapes, 1024-row blocks made a
/// 2988-token prefill slower than 128-row ones (390 against 348 ms): bigger blocks compute more
/// of the masked upper triangle, and the f32 softmax passes over it dominate.
const QUERY_BLOCK: usize = 128;

/// Head geometry of one attention layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    pub q: usize,
    pub kv: usize,
    pub dim: usize,
}

impl Heads {
    pub(crate) fn group(&self) -> usize {
        self.q / self.kv
    }

    pub(crate) fn scale(&self) -> f64 {
        1.0 / (self.dim as f64).sqrt()
    }
}

/// One query row for [`paged_rows`]: its sequence's block table and how many positions it sees
/// (its own included).
pub(crate) struct KernelRow<'a> {
    pub table: &'a [u32],
    pub ctx: usize,
}

/// Value lanes summed per pass of [`simd::weighted_sum`] (at most 64).
const LANES: usize = 64;

/// Attention for `rows.len()` query rows. `q` is `(rows, heads.q · dim)` (roped), `layer` the
/// host cache of this layer (already holding every row's own key and value), `out` is
/// `(rows, heads.q · dim)`. Tables must have been checked to cover each row's `ctx`.
pub(crate) fn paged_rows(
    q: &[f32],
    rows: &[KernelRow<'_>],
    layer: &HostLayer<'_>,
    heads: Heads,
    out: &mut [f32],
) {
    let (hd, nkv, group) = (heads.dim, heads.kv, heads.group());
    let geometry = layer.geometry;
    assert!(
        geometry.kv_heads == nkv && geometry.head_dim == hd,
        "cache geometry"
    );
    let bs = geometry.block_size;
    let width = heads.q * hd;
    let scale = heads.scale() as f32;
    let (kc, vc) = (&layer.k[..], &layer.v[..]);
    // One work item per (row, KV head): its `group` query heads share every key/value read.
    out.par_chunks_mut(group * hd)
        .enumerate()
        .for_each(|(item, o)| {
            let (r, kvh) = (item / nkv, item % nkv);
            let row = &rows[r];
            SCRATCH.with(|cell| {
                let scratch = &mut *cell.borrow_mut();
                // Where each visible position's key (and value) starts in the layer's arrays.
                let at = &mut scratch.at;
                at.clear();
                for (b, &block) in row.table[..row.ctx.div_ceil(bs)].iter().enumerate() {
                    let start = geometry.at(block as usize, kvh, 0);
                    let n = bs.min(row.ctx - b * bs);
                    at.extend((0..n).map(|i| start + i * hd));
                }
                let task = ItemTask {
                    qh: &q[r * width + kvh * group * hd..][..group * hd],
                    kc,
                    vc,
                    at,
                    group,
                    hd,
                    scale,
                };
                task.run(&mut scratch.scores, &mut scratch.probs, o);
            });
        });
}

/// A worker thread's buffers for [`paged_rows`], grown to the longest context it has seen, so
/// that a decode step allocates nothing per item.
#[derive(Default)]
struct Scratch {
    at: Vec<usize>,
    scores: Vec<f32>,
    probs: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// One (query row, KV head) of [`paged_rows`]: scores against every visible key, softmax, the
/// weighted sum of values into `o` (`group × hd`).
struct ItemTask<'a> {
    qh: &'a [f32],
    kc: &'a [f32],
    vc: &'a [f32],
    at: &'a [usize],
    group: usize,
    hd: usize,
    scale: f32,
}

impl ItemTask<'_> {
    /// `scores` and `probs` are scratch, resized here.
    fn run(&self, scores: &mut Vec<f32>, probs: &mut Vec<f32>, o: &mut [f32]) {
        let (group, hd, ctx) = (self.group, self.hd, self.at.len());
        scores.resize(group * ctx, 0.0);
        probs.resize(group * ctx, 0.0);
        let (scores, probs) = (&mut scores[..group * ctx], &mut probs[..group * ctx]);
        simd::scores(self.qh, hd, self.kc, self.at, self.scale, scores);
        for (s, p) in scores.chunks_exact(ctx).zip(probs.chunks_exact_mut(ctx)) {
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let inv = 1.0 / simd::exp_shifted(s, max, p);
            p.iter_mut().for_each(|x| *x *= inv);
        }
        for (g, og) in o.chunks_exact_mut(hd).enumerate() {
            let weights = &probs[g * ctx..(g + 1) * ctx];
            for (c, oc) in og.chunks_mut(LANES).enumerate() {
                simd::weighted_sum(weights, self.vc, self.at, c * LANES, oc);
            }
        }
    }
}

/// The query blocks of a chunk of `len` new positions after `start` cached ones, for
/// [`causal_blocked`] (off the host cache): block `b` covers queries `b · QUERY_BLOCK ..`, sees
/// keys `0..start + q1` and gets its additive causal mask, built once per chunk and shared by every
/// layer.
pub(crate) struct CausalPlan {
    start: usize,
    blocks: Vec<(usize, usize, Tensor)>,
}

impl CausalPlan {
    pub(crate) fn new(start: usize, len: usize, device: &Device) -> Result<Self> {
        let mut blocks = Vec::with_capacity(len.div_ceil(QUERY_BLOCK));
        let mut q0 = 0;
        while q0 < len {
            let q1 = (q0 + QUERY_BLOCK).min(len);
            let kend = start + q1;
            let mut mask = vec![0f32; (q1 - q0) * kend];
            for (i, row) in mask.chunks_exact_mut(kend).enumerate() {
                row[start + q0 + i + 1..].fill(f32::NEG_INFINITY);
            }
            // (block, 1, keys): broadcast over the query heads sharing a KV head.
            let mask = Tensor::from_vec(mask, (q1 - q0, 1, kend), device)?;
            blocks.push((q0, q1, mask));
            q0 = q1;
        }
        Ok(Self { start, blocks })
    }
}

/// [`causal_blocked`] on host `f32` tensors, through [`crate::attention_blocks`]: `q`
/// `(len, heads.q, dim)` (roped), `k` and `v` `(heads.kv, start + len, dim)`. Returns the
/// `(len, heads.q · dim)` output's values.
pub(crate) fn causal_host(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    start: usize,
    heads: Heads,
) -> Result<Vec<f32>> {
    let (len, _, hd) = q.dims3()?;
    let (nkv, group) = (heads.kv, heads.group());
    let keys = start + len;
    // (kv heads, len · group, dim), scaled: the query heads sharing a KV head are adjacent rows.
    let q = (q.reshape((len, nkv, group, hd))?.permute((1, 0, 2, 3))? * heads.scale())?
        .to_dtype(DType::F32)?
        .contiguous()?;
    let k = k.narrow(1, 0, keys)?.to_dtype(DType::F32)?.contiguous()?;
    let v = v.narrow(1, 0, keys)?.to_dtype(DType::F32)?.contiguous()?;
    let width = group * hd;
    let mut o = vec![0f32; nkv * len * width];
    let mask = Mask::Causal {
        first: start + 1,
        per_query: group,
    };
    with_values(&q, |q| {
        with_values(&k, |k| {
            with_values(&v, |v| {
                attention_blocks::attend(q, k, v, (nkv, len * group, keys, hd), mask, &mut o)
            })
        })
    })???;
    // (kv heads, len, group · dim) → (len, kv heads · group · dim).
    let mut out = vec![0f32; len * nkv * width];
    for (h, oh) in o.chunks_exact(len * width).enumerate() {
        for (p, src) in oh.chunks_exact(width).enumerate() {
            out[(p * nkv + h) * width..][..width].copy_from_slice(src);
        }
    }
    Ok(out)
}

/// Causal attention of one chunk: `q` `(len, heads.q, dim)` (roped), `k` and `v`
/// `(heads.kv, start + len, dim)` covering every position the chunk sees. Returns
/// `(len, heads.q · dim)`.
pub(crate) fn causal_blocked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    plan: &CausalPlan,
    heads: Heads,
) -> Result<Tensor> {
    let (len, _, hd) = q.dims3()?;
    let (nkv, group) = (heads.kv, heads.group());
    // (kv heads, len, group, dim): a block of queries is a narrow on dim 1.
    let q =
        (q.reshape((len, nkv, group, hd))?.permute((1, 0, 2, 3))? * heads.scale())?.contiguous()?;
    let mut outs = Vec::with_capacity(plan.blocks.len());
    for (q0, q1, mask) in &plan.blocks {
        let n = q1 - q0;
        let kend = plan.start + q1;
        let qb = q.narrow(1, *q0, n)?.reshape((nkv, n * group, hd))?;
        let scores = qb
            .matmul(&k.narrow(1, 0, kend)?.t()?)?
            .to_dtype(DType::F32)?;
        let scores = scores
            .reshape((nkv, n, group, kend))?
            .broadcast_add(mask)?
            .reshape((nkv, n * group, kend))?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let o = probs
            .to_dtype(v.dtype())?
            .matmul(&v.narrow(1, 0, kend)?)?
            .reshape((nkv, n, group, hd))?
            .permute((1, 0, 2, 3))?
            .reshape((n, heads.q * hd))?;
        outs.push(o);
    }
    Ok(Tensor::cat(&outs, 0)?)
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
