//! The router's inference path on the CPU: one pass over `f32` rows instead of a chain of
//! whole-matrix tensor ops.
//!
//! For one image with `n` crops it pools the features and their `in_proj` projection at every
//! granularity (pooling commutes with the affine projection; the projections are pooled one
//! position at a time, never stored), runs the cross-crop attention, then row blocks through
//! `out_proj → +x → LayerNorm1 → linear1 → ReLU → linear2 → +x → LayerNorm2 → mlp1 → GELU(erf)`,
//! and sums the GELU rows weighted by the voter (divided by `n`: the crop mean). The last layer,
//! `mlp2`, is affine, so it is applied once to that sum: `Σ_t v_t·(W·g_t + b) = W·Σ_t v_t·g_t +
//! b·Σ_t v_t`. The text rows are the same in every crop (same q, k, v), so their attention output
//! is their value and they go through the layers once per image, weighted `n` times `1/n`.
//!
//! Positions, then row blocks, run in parallel on the rayon pool, each on one thread: matrix
//! products are the `gemm` crate's single-threaded kernel ([`crate::host_dense`]), everything
//! between them plain loops over slices the compiler vectorises, with a polynomial `exp` and erf
//! (Abramowitz–Stegun 7.1.26) in place of libm's scalar calls.

use rayon::prelude::*;

use crate::error::Result;
use crate::host_dense::gelu_erf;
pub(crate) use crate::host_dense::{DenseF32, NormF32};
use crate::simd::exp;

/// Rows per block of the row-wise layers: enough for the matrix products to run near the core's
/// peak, few enough that a 5-crop image's ~5600 rows make a dozen blocks to share out among
/// threads, and that a block's activations stay in cache.
const BLOCK: usize = 256;

/// The router's layers, as `f32` on the CPU.
pub(crate) struct CpuRouter {
    /// `in_proj` `(3D, D)` and its bias.
    pub in_proj: DenseF32,
    pub out_proj: DenseF32,
    pub linear1: DenseF32,
    pub linear2: DenseF32,
    pub mlp1: DenseF32,
    /// `mlp2` as `(E, D)` row-major.
    pub mlp2_weight: Vec<f32>,
    pub mlp2_bias: Vec<f32>,
    pub norm1: NormF32,
    pub norm2: NormF32,
    pub norm: NormF32,
    pub voter: Vec<f32>,
    pub heads: usize,
}

/// One position of the pooled map: its pooling window `(kh, kw)` and cell `(row, column)`.
type Cell = ((usize, usize), (usize, usize));

impl CpuRouter {
    /// `x (rows, D) · in_projᵀ + bias`, in parallel over row blocks.
    pub(crate) fn in_proj_rows(&self, x: &[f32]) -> Vec<f32> {
        let (d, d3) = (self.in_proj.d_in(), self.in_proj.d_out());
        let mut out = vec![0f32; x.len() / d * d3];
        out.par_chunks_mut(BLOCK * d3)
            .zip(x.par_chunks(BLOCK * d))
            .for_each(|(o, x)| self.in_proj.apply_into(x, o));
        out
    }

    /// LayerNorm'd logits of one image from its unpooled crop features `f` `(n, side², D)`, their
    /// projection `qkv_f = f·in_projᵀ` without the bias `(n, side², 3D)`, the selected text rows
    /// `text` `(k, D)` and their full projection `qkv_t` `(k, 3D)`. Average pooling commutes with
    /// the affine `in_proj`, so every granularity's rows and projections are pooled here, one
    /// position (all crops) at a time, right before that position's cross-crop attention.
    ///
    /// Rows are laid out position-major (`position · n + crop`, then the text rows): the
    /// positions, and then the row blocks of the layers, run in parallel on the rayon pool, each
    /// on one thread. Block partial sums are added in block order, so the result does not depend
    /// on the thread count.
    pub(crate) fn logits(
        &self,
        (f, qkv_f): (&[f32], &[f32]),
        (text, qkv_t): (&[f32], &[f32]),
        (n, side, d): (usize, usize, usize),
        grans: &[u32],
    ) -> Result<Vec<f32>> {
        let k = text.len() / d;
        let mut cells: Vec<Cell> = Vec::new();
        for &g in grans {
            let (kh, kw) = crate::granularity::pool_window(g, side)?;
            cells.extend((0..g as usize).map(|c| ((kh, kw), (c / (side / kw), c % (side / kw)))));
        }
        let vis = cells.len();
        let rows = n * vis + k;
        // Residual rows and attention outputs: the pooled rows of every crop, then the text rows
        // once, whose attention output is their value (same q, k, v in every crop).
        let (mut xr, mut o) = (vec![0f32; rows * d], vec![0f32; rows * d]);
        xr[..n * vis * d]
            .par_chunks_mut(n * d)
            .zip(o[..n * vis * d].par_chunks_mut(n * d))
            .zip(cells.par_iter())
            .for_each_init(
                || (AttendScratch::new(n, self.heads), vec![0f32; n * 3 * d]),
                |(sc, qrows), ((xrows, orows), &(win, cell))| {
                    let at = Position { win, cell, side };
                    self.position((f, qkv_f), at, sc, qrows, (xrows, orows));
                },
            );
        xr[n * vis * d..].copy_from_slice(text);
        for (o, t) in o[n * vis * d..]
            .chunks_exact_mut(d)
            .zip(qkv_t.chunks_exact(3 * d))
        {
            o.copy_from_slice(&t[2 * d..]);
        }
        // Voter weights per row, the crop mean's 1/n included; a text row stands for all n crops.
        let inv_n = 1.0 / n as f32;
        let mut wr: Vec<f32> = (0..vis)
            .flat_map(|p| std::iter::repeat_n(self.voter[p] * inv_n, n))
            .collect();
        wr.extend_from_slice(&self.voter[vis..vis + k]);
        let partials: Vec<Vec<f64>> = xr
            .par_chunks_mut(BLOCK * d)
            .zip(o.par_chunks(BLOCK * d))
            .zip(wr.par_chunks(BLOCK))
            .map(|((x, o), w)| self.block(o, x, w))
            .collect();
        let mut acc = vec![0f64; d];
        for part in &partials {
            acc.iter_mut().zip(part).for_each(|(a, p)| *a += p);
        }
        let vsum: f32 = self.voter.iter().sum();
        let mut logits: Vec<f32> = self
            .mlp2_weight
            .chunks_exact(d)
            .zip(&self.mlp2_bias)
            .map(|(w, b)| {
                let s: f64 = w.iter().zip(&acc).map(|(w, a)| *w as f64 * a).sum();
                s as f32 + b * vsum
            })
            .collect();
        self.norm.apply(&mut logits);
        Ok(logits)
    }

    /// One block of rows on the calling thread: attention output `o`, residual `x` (overwritten),
    /// voter weights `w`. Returns `Σ_r w_r · GELU(mlp1(row_r))`.
    fn block(&self, o: &[f32], x: &mut [f32], w: &[f32]) -> Vec<f64> {
        #[cfg(target_arch = "x86_64")]
        if crate::small_gemm::available() {
            // SAFETY: `available()` checked AVX2 and FMA.
            #[allow(unsafe_code)]
            return unsafe { avx2::block(self, o, x, w) };
        }
        self.block_body(o, x, w)
    }

    /// [`Self::block`]'s work, inlined into an AVX2/FMA copy where the CPU has them.
    #[inline(always)]
    fn block_body(&self, o: &[f32], x: &mut [f32], w: &[f32]) -> Vec<f64> {
        let d = self.mlp1.d_out();
        // x ← LayerNorm1(x + out_proj(o))
        residual_norm(x, &self.out_proj.apply(o), &self.out_proj.bias, &self.norm1);
        // x ← LayerNorm2(x + linear2(ReLU(linear1(x))))
        let mut h = self.linear1.apply(x);
        let width = self.linear1.d_out();
        for hr in h.chunks_exact_mut(width) {
            for (v, b) in hr.iter_mut().zip(&self.linear1.bias) {
                *v = (*v + b).max(0.0);
            }
        }
        residual_norm(x, &self.linear2.apply(&h), &self.linear2.bias, &self.norm2);
        // Σ_r w_r · GELU(mlp1(x_r))
        let g = self.mlp1.apply(x);
        let mut part = vec![0f32; d];
        for (row, wr) in g.chunks_exact(d).zip(w) {
            for ((p, v), b) in part.iter_mut().zip(row).zip(&self.mlp1.bias) {
                *p += wr * gelu_erf(v + b);
            }
        }
        part.iter().map(|&p| p as f64).collect()
    }
}

/// One pooled position: its pooling window and cell on the `side`×`side` map.
#[derive(Clone, Copy)]
struct Position {
    win: (usize, usize),
    cell: (usize, usize),
    side: usize,
}

impl CpuRouter {
    /// One position across the crops: pools every crop's features into `xrows` and their
    /// projections into `qrows` (bias added), then the cross-crop attention into `orows`.
    fn position(
        &self,
        fq: (&[f32], &[f32]),
        at: Position,
        sc: &mut AttendScratch,
        qrows: &mut [f32],
        xo: (&mut [f32], &mut [f32]),
    ) {
        #[cfg(target_arch = "x86_64")]
        if crate::small_gemm::available() {
            // SAFETY: `available()` checked AVX2 and FMA.
            #[allow(unsafe_code)]
            return unsafe { avx2::position(self, fq, at, sc, qrows, xo) };
        }
        self.position_body(fq, at, sc, qrows, xo)
    }

    /// [`Self::position`]'s loops, inlined into an AVX2/FMA copy where the CPU has them.
    #[inline(always)]
    fn position_body(
        &self,
        (f, qkv_f): (&[f32], &[f32]),
        Position { win, cell, side }: Position,
        sc: &mut AttendScratch,
        qrows: &mut [f32],
        (xrows, orows): (&mut [f32], &mut [f32]),
    ) {
        let d = self.in_proj.d_in();
        let n = xrows.len() / d;
        let l = side * side;
        let scale = 1.0 / (win.0 * win.1) as f32;
        for i in 0..n {
            let x = &mut xrows[i * d..][..d];
            pool_cell(&f[i * l * d..][..l * d], side, win, cell, x);
            x.iter_mut().for_each(|v| *v *= scale);
            let q = &mut qrows[i * 3 * d..][..3 * d];
            pool_cell(&qkv_f[i * l * 3 * d..][..l * 3 * d], side, win, cell, q);
            for (v, b) in q.iter_mut().zip(&self.in_proj.bias) {
                *v = *v * scale + b;
            }
        }
        attend_body(qrows, d, self.heads, sc, orows);
    }
}

/// AVX2/FMA copies of the router's loops (the build targets baseline x86-64, so the compiler
/// vectorises them for SSE2 only): each inlines the `_body` version of its function.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use super::{attend_body, AttendScratch, CpuRouter, Position};

    /// # Safety
    /// AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn attend(
        qkv: &[f32],
        d: usize,
        heads: usize,
        sc: &mut AttendScratch,
        out: &mut [f32],
    ) {
        attend_body(qkv, d, heads, sc, out)
    }

    /// # Safety
    /// AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block(r: &CpuRouter, o: &[f32], x: &mut [f32], w: &[f32]) -> Vec<f64> {
        r.block_body(o, x, w)
    }

    /// # Safety
    /// AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn position(
        r: &CpuRouter,
        fq: (&[f32], &[f32]),
        at: Position,
        sc: &mut AttendScratch,
        qrows: &mut [f32],
        xo: (&mut [f32], &mut [f32]),
    ) {
        r.position_body(fq, at, sc, qrows, xo)
    }
}

/// `x ← norm(x + h + bias)` row by row: a layer's residual add and post-LayerNorm, with `h` the
/// layer's output without its bias, rows as wide as `bias`.
fn residual_norm(x: &mut [f32], h: &[f32], bias: &[f32], norm: &NormF32) {
    let d = bias.len();
    for (xr, hr) in x.chunks_exact_mut(d).zip(h.chunks_exact(d)) {
        for ((x, h), b) in xr.iter_mut().zip(hr).zip(bias) {
            *x += h + b;
        }
        norm.apply(xr);
    }
}

#[inline(always)]
/// Write the sum of the `kh`×`kw` window at cell `(r, c)` of a row-major `side`×`side` map of
/// rows as wide as `out` into `out`.
fn pool_cell(
    src: &[f32],
    side: usize,
    (kh, kw): (usize, usize),
    (r, c): (usize, usize),
    out: &mut [f32],
) {
    let width = out.len();
    let at = |a: usize, b: usize| ((r * kh + a) * side + c * kw + b) * width;
    out.copy_from_slice(&src[at(0, 0)..][..width]);
    for a in 0..kh {
        for b in (0..kw).skip(usize::from(a == 0)) {
            for (o, v) in out.iter_mut().zip(&src[at(a, b)..][..width]) {
                *o += v;
            }
        }
    }
}

/// The column order of the fused path's q, k, v and attention output: `perm[new] = old` with
/// `new = c·heads + h` for `old = h·hd + c`, so that one channel of every head is contiguous and
/// the per-head loops of [`attend`] run over `heads`-long vectors. Applied once to
/// `in_proj`'s rows and `out_proj`'s columns, it costs nothing per call.
pub(crate) fn interleave_heads(d: usize, heads: usize) -> Vec<u32> {
    let hd = d / heads;
    (0..d)
        .map(|new| ((new % heads) * hd + new / heads) as u32)
        .collect()
}

/// Scratch space of [`attend`] for `n` crops and `heads` heads.
pub(crate) struct AttendScratch {
    /// Scores, then weights, laid out [i][j][head].
    s: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

impl AttendScratch {
    pub(crate) fn new(n: usize, heads: usize) -> Self {
        Self {
            s: vec![0f32; n * n * heads],
            max: vec![0f32; heads],
            sum: vec![0f32; heads],
        }
    }
}

/// Softmax attention across the `n` crops of one position, in the head-interleaved column order
/// of [`interleave_heads`]: `qkv` holds the `n` rows `(q, k, v)` of `3d` each, `out` the `n`
/// output rows of `d`. The `n×n×heads` scores, softmax and weighted sums are loops over
/// `heads`-long vectors (eight heads at a time in registers where `heads` is a multiple of 8).
pub(crate) fn attend(qkv: &[f32], d: usize, heads: usize, sc: &mut AttendScratch, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::small_gemm::available() {
        // SAFETY: `available()` checked AVX2 and FMA.
        #[allow(unsafe_code)]
        return unsafe { avx2::attend(qkv, d, heads, sc, out) };
    }
    attend_body(qkv, d, heads, sc, out)
}

/// [`attend`]'s loops, inlined into an AVX2/FMA copy where the CPU has them.
#[inline(always)]
fn attend_body(qkv: &[f32], d: usize, heads: usize, sc: &mut AttendScratch, out: &mut [f32]) {
    let n = qkv.len() / (3 * d);
    let hd = d / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let (s, max, sum) = (&mut sc.s, &mut sc.max, &mut sc.sum);
    for i in 0..n {
        let q = &qkv[i * 3 * d..][..d];
        for j in 0..n {
            let k = &qkv[j * 3 * d + d..][..d];
            let sc = &mut s[(i * n + j) * heads..][..heads];
            if heads % 8 == 0 {
                for (g, sg) in sc.chunks_exact_mut(8).enumerate() {
                    let mut acc = [0f32; 8];
                    for c in 0..hd {
                        let at = c * heads + g * 8;
                        for ((t, a), b) in acc.iter_mut().zip(&q[at..at + 8]).zip(&k[at..at + 8]) {
                            *t += a * b;
                        }
                    }
                    sg.copy_from_slice(&acc);
                }
                continue;
            }
            sc.fill(0.0);
            for (qc, kc) in q.chunks_exact(heads).zip(k.chunks_exact(heads)) {
                for ((s, a), b) in sc.iter_mut().zip(qc).zip(kc) {
                    *s += a * b;
                }
            }
        }
    }
    for si in s.chunks_exact_mut(n * heads) {
        max.fill(f32::NEG_INFINITY);
        for sj in si.chunks_exact(heads) {
            for (m, v) in max.iter_mut().zip(sj) {
                *m = m.max(*v);
            }
        }
        sum.fill(0.0);
        for sj in si.chunks_exact_mut(heads) {
            for ((v, m), t) in sj.iter_mut().zip(max.iter()).zip(sum.iter_mut()) {
                *v = exp((*v - m) * scale);
                *t += *v;
            }
        }
        sum.iter_mut().for_each(|t| *t = 1.0 / *t);
        for sj in si.chunks_exact_mut(heads) {
            for (v, t) in sj.iter_mut().zip(sum.iter()) {
                *v *= t;
            }
        }
    }
    for (i, o) in out.chunks_exact_mut(d).enumerate() {
        if heads % 8 == 0 {
            for (ci, og) in o.chunks_exact_mut(8).enumerate() {
                let g = ci % (heads / 8);
                let mut acc = [0f32; 8];
                for j in 0..n {
                    let v = &qkv[j * 3 * d + 2 * d + ci * 8..][..8];
                    let a = &s[(i * n + j) * heads + g * 8..][..8];
                    for ((t, a), v) in acc.iter_mut().zip(a).zip(v) {
                        *t += a * v;
                    }
                }
                og.copy_from_slice(&acc);
            }
            continue;
        }
        o.fill(0.0);
        for j in 0..n {
            let v = &qkv[j * 3 * d + 2 * d..][..d];
            let a = &s[(i * n + j) * heads..][..heads];
            for (oc, vc) in o.chunks_exact_mut(heads).zip(v.chunks_exact(heads)) {
                for ((o, a), v) in oc.iter_mut().zip(a).zip(vc) {
                    *o += a * v;
                }
            }
        }
    }
}

/// Attention across crops on the standard column order (`h·hd + c`): `qkv` `(n, b, 3d)` row-major
/// in, `(n·b, d)` out, every position through [`attend`].
pub(crate) fn cross_crop_attention_standard(
    qkv: &[f32],
    (n, b, d): (usize, usize, usize),
    heads: usize,
    out: &mut [f32],
) {
    let perm = interleave_heads(d, heads);
    let mut sc = AttendScratch::new(n, heads);
    let (mut rows, mut o) = (vec![0f32; n * 3 * d], vec![0f32; n * d]);
    for p in 0..b {
        for (i, dst) in rows.chunks_exact_mut(3 * d).enumerate() {
            let src = &qkv[(i * b + p) * 3 * d..][..3 * d];
            for (dst, src) in dst.chunks_exact_mut(d).zip(src.chunks_exact(d)) {
                for (x, &o) in dst.iter_mut().zip(&perm) {
                    *x = src[o as usize];
                }
            }
        }
        attend(&rows, d, heads, &mut sc, &mut o);
        for (i, src) in o.chunks_exact(d).enumerate() {
            let dst = &mut out[(i * b + p) * d..][..d];
            for (x, &o) in src.iter().zip(&perm) {
                dst[o as usize] = *x;
            }
        }
    }
}
