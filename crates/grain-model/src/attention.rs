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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::attention_blocks::{self, Mask};
use crate::error::Result;
use crate::host_dense::with_values;
use crate::kv_cache::HostLayer;
use crate::layer_ops;
use crate::simd;

/// Query rows per block in [`causal_blocked`] unless [`set_prefill_query_block`] says otherwise.
/// On an H200 at 7B shapes, with the fused causal softmax, 256-row blocks took a 2988-token
/// prefill from 127.3 ms (128 rows) to 120.1 ms, and 252 tokens from 12.0 to 10.5 ms; 512 rows
/// gained nothing more (118.8 and 10.7 ms). Before that kernel, when the softmax made four passes
/// over the scores, bigger blocks were slower: they compute more of the masked upper triangle.
const QUERY_BLOCK: usize = 256;

static QUERY_BLOCK_SET: AtomicUsize = AtomicUsize::new(0);

/// Sets the query rows per block of the prefill attention off the host cache (0: the default,
/// 256), for A/B measurements (`grain check-device bench --ab-query-block`).
pub fn set_prefill_query_block(rows: usize) {
    QUERY_BLOCK_SET.store(rows, Ordering::Relaxed);
}

fn query_block() -> usize {
    match QUERY_BLOCK_SET.load(Ordering::Relaxed) {
        0 => QUERY_BLOCK,
        n => n,
    }
}

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
                task.run(&mut scratch.scores, o);
            });
        });
}

/// A worker thread's buffers for [`paged_rows`], grown to the longest context it has seen, so
/// that a decode step allocates nothing per item.
#[derive(Default)]
struct Scratch {
    at: Vec<usize>,
    scores: Vec<f32>,
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
    /// `scores` is scratch, resized here.
    fn run(&self, scores: &mut Vec<f32>, o: &mut [f32]) {
        let (group, hd, ctx) = (self.group, self.hd, self.at.len());
        scores.resize(group * ctx, 0.0);
        let probs = &mut scores[..group * ctx];
        simd::scores(self.qh, hd, self.kc, self.at, self.scale, probs);
        probs.chunks_exact_mut(ctx).for_each(simd::softmax_in_place);
        for (g, og) in o.chunks_exact_mut(hd).enumerate() {
            let weights = &probs[g * ctx..(g + 1) * ctx];
            for (c, oc) in og.chunks_mut(LANES).enumerate() {
                simd::weighted_sum(weights, self.vc, self.at, c * LANES, oc);
            }
        }
    }
}

/// The query blocks of a chunk of `len` new positions after `start` cached ones, for
/// [`causal_blocked`] (off the host cache): block `b` covers queries `b · block ..` and sees
/// keys `0..start + q1`. Its additive causal mask is built the first time a layer needs it (the
/// candle-op softmax; the fused CUDA kernel computes the mask in place) and shared by every layer.
pub(crate) struct CausalPlan {
    start: usize,
    device: Device,
    blocks: Vec<QueryBlock>,
}

struct QueryBlock {
    q0: usize,
    q1: usize,
    mask: OnceLock<Tensor>,
}

impl CausalPlan {
    pub(crate) fn new(start: usize, len: usize, device: &Device) -> Result<Self> {
        Self::with_rows(start, len, query_block(), device)
    }

    /// A plan with blocks of `rows` query rows.
    pub(crate) fn with_rows(
        start: usize,
        len: usize,
        rows: usize,
        device: &Device,
    ) -> Result<Self> {
        let blocks = (0..len)
            .step_by(rows)
            .map(|q0| QueryBlock {
                q0,
                q1: (q0 + rows).min(len),
                mask: OnceLock::new(),
            })
            .collect();
        Ok(Self {
            start,
            device: device.clone(),
            blocks,
        })
    }

    /// Block `b`'s `(block, 1, keys)` additive mask (broadcast over the query heads sharing a
    /// KV head).
    fn mask(&self, b: &QueryBlock) -> Result<Tensor> {
        if let Some(mask) = b.mask.get() {
            return Ok(mask.clone());
        }
        let (start, kend) = (self.start, self.start + b.q1);
        let mut mask = vec![0f32; (b.q1 - b.q0) * kend];
        for (i, row) in mask.chunks_exact_mut(kend).enumerate() {
            row[start + b.q0 + i + 1..].fill(f32::NEG_INFINITY);
        }
        let mask = Tensor::from_vec(mask, (b.q1 - b.q0, 1, kend), &self.device)?;
        Ok(b.mask.get_or_init(|| mask).clone())
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
    // One parallel pass (candle's multiply walked the permuted view one value at a time).
    let scale = heads.scale() as f32;
    let width = group * hd;
    let mut qh = vec![0f32; nkv * len * width];
    with_values(&q.to_dtype(DType::F32)?.contiguous()?, |src| {
        qh.par_chunks_mut(len * width)
            .enumerate()
            .for_each(|(h, oh)| {
                for (p, dst) in oh.chunks_exact_mut(width).enumerate() {
                    let row = &src[(p * nkv + h) * width..][..width];
                    dst.iter_mut().zip(row).for_each(|(d, x)| *d = x * scale);
                }
            });
    })?;
    let k = k.narrow(1, 0, keys)?.to_dtype(DType::F32)?.contiguous()?;
    let v = v.narrow(1, 0, keys)?.to_dtype(DType::F32)?.contiguous()?;
    let mut o = vec![0f32; nkv * len * width];
    let mask = Mask::Causal {
        first: start + 1,
        per_query: group,
    };
    with_values(&k, |k| {
        with_values(&v, |v| {
            attention_blocks::attend(&qh, k, v, (nkv, len * group, keys, hd), mask, &mut o)
        })
    })??;
    // (kv heads, len, group · dim) → (len, kv heads · group · dim).
    let mut out = vec![0f32; len * nkv * width];
    out.par_chunks_mut(nkv * width)
        .enumerate()
        .for_each(|(p, dst)| {
            for (h, d) in dst.chunks_exact_mut(width).enumerate() {
                d.copy_from_slice(&o[(h * len + p) * width..][..width]);
            }
        });
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
    for b in &plan.blocks {
        let (q0, n) = (b.q0, b.q1 - b.q0);
        let kend = plan.start + b.q1;
        let qb = q.narrow(1, q0, n)?.reshape((nkv, n * group, hd))?;
        let scores = qb.matmul(&k.narrow(1, 0, kend)?.t()?)?;
        let probs =
            layer_ops::causal_softmax(&scores, plan.start + q0 + 1, group, || plan.mask(b))?;
        let o = probs
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
