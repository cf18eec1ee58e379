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
//! Matrix products are candle's (its packed `gemm` is near the core's peak on blocks of hundreds
//! of rows); everything between them is plain loops over slices the compiler vectorises, with a
//! polynomial `exp` and erf (Abramowitz–Stegun 7.1.26) in place of libm's scalar calls.

use candle_core::{DType, Device, Storage, Tensor};

use crate::error::{ModelError, Result};
use crate::simd::{exp, lane_sum, tree8};

/// Rows per block of the row-wise layers: big enough for candle's matmul to run at speed, small
/// enough for the block's activations to stay in cache.
const BLOCK: usize = 512;

/// A `Linear`'s `f32` weight `(out, in)` and bias, on the CPU.
pub(crate) struct DenseF32 {
    pub weight: Tensor,
    pub bias: Vec<f32>,
}

/// A LayerNorm's `f32` scale and shift (eps 1e-5).
pub(crate) struct NormF32 {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// The router's layers after `in_proj`, as `f32` on the CPU.
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

impl CpuRouter {
    fn in_proj_bias(&self) -> &[f32] {
        &self.in_proj.bias
    }
}

/// The `f32` values of a tensor, row-major (a copy).
pub(crate) fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

impl DenseF32 {
    pub(crate) fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        Ok(Self {
            weight: weight.to_dtype(DType::F32)?.contiguous()?,
            bias: to_f32_vec(bias)?,
        })
    }

    /// `x (rows, in) · Wᵀ`, without the bias, as a fresh contiguous tensor.
    pub(crate) fn apply(&self, x: &[f32], rows: usize) -> Result<Tensor> {
        let d_in = self.weight.dim(1)?;
        self.apply_tensor(&Tensor::from_slice(x, (rows, d_in), &Device::Cpu)?)
    }

    /// [`Self::apply`] on an `f32` CPU tensor `(rows, in)`.
    pub(crate) fn apply_tensor(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight.t()?)?)
    }
}

impl NormF32 {
    pub(crate) fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        Ok(Self {
            weight: to_f32_vec(weight)?,
            bias: to_f32_vec(bias)?,
        })
    }

    /// LayerNorm of one row in place.
    fn apply(&self, row: &mut [f32]) {
        let d = row.len() as f32;
        let mean = lane_sum(row) / d;
        let mut dev = [0f32; 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            for (l, v) in dev.iter_mut().zip(c) {
                *l += (v - mean) * (v - mean);
            }
        }
        let tail: f32 = chunks
            .remainder()
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum();
        let var = (tree8(&dev) + tail) / d;
        let inv = 1.0 / (var + 1e-5).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

/// Run `f` on a contiguous CPU `f32` tensor's values without copying them.
pub(crate) fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| ModelError::Input("router: non-contiguous tensor".into()))?;
    match &*storage {
        Storage::Cpu(s) => Ok(f(&s.as_slice::<f32>()?[a..b])),
        _ => Err(ModelError::Input("router: tensor is not on the CPU".into())),
    }
}

impl CpuRouter {
    /// LayerNorm'd logits of one image from its unpooled crop features `f` `(n, side², D)`, their
    /// projection `qkv_f = f·in_projᵀ` without the bias `(n, side², 3D)`, the selected text rows
    /// `text` `(k, D)` and their full projection `qkv_t` `(k, 3D)`. Average pooling commutes with
    /// the affine `in_proj`, so every granularity's rows are pooled here into the row buffer the
    /// layers read, and the projections one position (all crops) at a time for the attention.
    pub(crate) fn logits(
        &self,
        (f, qkv_f): (&[f32], &[f32]),
        (text, qkv_t): (&[f32], &[f32]),
        (n, side, d): (usize, usize, usize),
        grans: &[u32],
    ) -> Result<Vec<f32>> {
        let k = text.len() / d;
        let vis: usize = grans.iter().map(|&g| g as usize).sum();
        let l = side * side;
        let rows = n * vis + k;
        let inv_n = 1.0 / n as f32;
        // Residual rows (the crops' pooled rows, then the text rows once) and their voter weights
        // (the crop mean's 1/n included; the text rows stand for all n crops).
        let mut xr = Vec::with_capacity(rows * d);
        let mut wr = Vec::with_capacity(rows);
        for i in 0..n {
            let mut p = 0;
            for &g in grans {
                let win = crate::granularity::pool_window(g, side)?;
                pool_rows(&f[i * l * d..][..l * d], side, d, win, None, &mut xr);
                let g = g as usize;
                wr.extend(self.voter[p..p + g].iter().map(|v| v * inv_n));
                p += g;
            }
        }
        xr.extend_from_slice(text);
        wr.extend_from_slice(&self.voter[vis..vis + k]);
        debug_assert_eq!((xr.len(), wr.len()), (rows * d, rows));
        // Attention output: across crops for the pooled rows, whose projections are pooled one
        // position at a time (all crops) into a small buffer; the value itself for the text rows.
        let mut o = vec![0f32; rows * d];
        let mut sc = AttendScratch::new(n, self.heads);
        let (mut qrows, mut orows) = (Vec::with_capacity(n * 3 * d), vec![0f32; n * d]);
        let mut p = 0;
        for &g in grans {
            let (kh, kw) = crate::granularity::pool_window(g, side)?;
            for cell in 0..g as usize {
                let (r, c) = (cell / (side / kw), cell % (side / kw));
                qrows.clear();
                for i in 0..n {
                    let src = &qkv_f[i * l * 3 * d..][..l * 3 * d];
                    pool_cell(src, side, 3 * d, (kh, kw), (r, c), &mut qrows);
                    let row = &mut qrows[i * 3 * d..];
                    let scale = 1.0 / (kh * kw) as f32;
                    for (v, b) in row.iter_mut().zip(self.in_proj_bias()) {
                        *v = *v * scale + b;
                    }
                }
                attend(&qrows, d, self.heads, &mut sc, &mut orows);
                for (i, src) in orows.chunks_exact(d).enumerate() {
                    o[(i * vis + p + cell) * d..][..d].copy_from_slice(src);
                }
            }
            p += g as usize;
        }
        for (o, t) in o[n * vis * d..]
            .chunks_exact_mut(d)
            .zip(qkv_t.chunks_exact(3 * d))
        {
            o.copy_from_slice(&t[2 * d..]);
        }
        let mut acc = vec![0f64; d];
        let mut r0 = 0;
        while r0 < rows {
            let m = (rows - r0).min(BLOCK);
            self.block(
                &o[r0 * d..(r0 + m) * d],
                &mut xr[r0 * d..(r0 + m) * d],
                &wr[r0..r0 + m],
                &mut acc,
            )?;
            r0 += m;
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

    /// One block of `m` rows: attention output `o`, residual `x` (overwritten), voter weights
    /// `w`; adds `Σ_r w_r · GELU(mlp1(row_r))` to `acc`.
    fn block(&self, o: &[f32], x: &mut [f32], w: &[f32], acc: &mut [f64]) -> Result<()> {
        let m = w.len();
        let d = acc.len();
        // x ← LayerNorm1(x + out_proj(o))
        residual_norm(
            x,
            &self.out_proj.apply(o, m)?,
            &self.out_proj.bias,
            &self.norm1,
        )?;
        // x ← LayerNorm2(x + linear2(ReLU(linear1(x))))
        let h = self.linear1.apply(x, m)?;
        let width = self.linear1.bias.len();
        let mut f = vec![0f32; m * width];
        with_values(&h, |h| {
            for (fr, hr) in f.chunks_exact_mut(width).zip(h.chunks_exact(width)) {
                for ((v, h), b) in fr.iter_mut().zip(hr).zip(&self.linear1.bias) {
                    *v = (h + b).max(0.0);
                }
            }
        })?;
        residual_norm(
            x,
            &self.linear2.apply(&f, m)?,
            &self.linear2.bias,
            &self.norm2,
        )?;
        // acc += Σ_r w_r · GELU(mlp1(x_r))
        let g = self.mlp1.apply(x, m)?;
        let mut part = vec![0f32; d];
        let mut gr = vec![0f32; d];
        with_values(&g, |g| {
            for (row, wr) in g.chunks_exact(d).zip(w) {
                for ((o, v), b) in gr.iter_mut().zip(row).zip(&self.mlp1.bias) {
                    *o = gelu_erf(v + b);
                }
                for (p, g) in part.iter_mut().zip(&gr) {
                    *p += wr * g;
                }
            }
        })?;
        for (a, p) in acc.iter_mut().zip(&part) {
            *a += *p as f64;
        }
        Ok(())
    }
}

/// `x ← norm(x + h + bias)` row by row: a layer's residual add and post-LayerNorm, with `h` the
/// layer's output without its bias, rows as wide as `bias`.
fn residual_norm(x: &mut [f32], h: &Tensor, bias: &[f32], norm: &NormF32) -> Result<()> {
    let d = bias.len();
    with_values(h, |h| {
        for (xr, hr) in x.chunks_exact_mut(d).zip(h.chunks_exact(d)) {
            for ((x, h), b) in xr.iter_mut().zip(hr).zip(bias) {
                *x += h + b;
            }
            norm.apply(xr);
        }
    })
}

/// Average-pool a row-major `side`×`side` map of `width`-wide rows `src` with window `(kh, kw)`
/// (equal stride), appending the pooled rows to `dst`, plus `bias` on every row when given.
fn pool_rows(
    src: &[f32],
    side: usize,
    width: usize,
    (kh, kw): (usize, usize),
    bias: Option<&[f32]>,
    dst: &mut Vec<f32>,
) {
    let scale = 1.0 / (kh * kw) as f32;
    for r in 0..side / kh {
        for c in 0..side / kw {
            let begin = dst.len();
            pool_cell(src, side, width, (kh, kw), (r, c), dst);
            let out = &mut dst[begin..];
            match bias {
                Some(bias) => out
                    .iter_mut()
                    .zip(bias)
                    .for_each(|(o, b)| *o = *o * scale + b),
                None if kh * kw > 1 => out.iter_mut().for_each(|o| *o *= scale),
                None => {}
            }
        }
    }
}

/// Append the sum of the `kh`×`kw` window at cell `(r, c)` of a `side`×`side` map of
/// `width`-wide rows to `dst`.
fn pool_cell(
    src: &[f32],
    side: usize,
    width: usize,
    (kh, kw): (usize, usize),
    (r, c): (usize, usize),
    dst: &mut Vec<f32>,
) {
    let at = |a: usize, b: usize| ((r * kh + a) * side + c * kw + b) * width;
    let begin = dst.len();
    dst.extend_from_slice(&src[at(0, 0)..][..width]);
    let out = &mut dst[begin..];
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

/// The exact (erf) GELU `x·(1 + erf(x/√2))/2`, with erf from Abramowitz–Stegun 7.1.26 (|error| ≤
/// 1.5e-7). For negative inputs `1 + erf` is formed directly as the small tail term, so there is
/// no cancellation.
#[inline]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let tail = poly * exp(-z * z); // 1 − erf(|z|)
    let one_plus_erf = if x >= 0.0 { 2.0 - tail } else { tail };
    0.5 * x * one_plus_erf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_the_f64_erf_gelu() {
        // Independent reference: erf by its Taylor series in f64 (|z| ≤ 3.6 here, where the
        // alternating series loses under 6 of f64's 16 digits).
        fn erf64(z: f64) -> f64 {
            let (mut term, mut sum, mut k) = (z, z, 0f64);
            while term.abs() > 1e-17 * sum.abs().max(1e-300) {
                k += 1.0;
                term *= -z * z / k;
                sum += term / (2.0 * k + 1.0);
                if k > 400.0 {
                    break;
                }
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        let mut worst = 0f64;
        for i in -1000..=1000 {
            let x = i as f64 * 0.005;
            let want = 0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2));
            let got = gelu_erf(x as f32) as f64;
            worst = worst.max((got - want).abs());
        }
        // A&S 7.1.26 bounds erf's error by 1.5e-7; times |x|/2 ≤ 2.5, plus f32 rounding.
        assert!(worst <= 1e-6, "max |error| {worst}");
    }
}
