//! The vector loops of attention ([`crate::attention`]): a dot product, the scores of a group of
//! query heads against many keys, a weighted sum of value rows and the exponentials of a softmax;
//! and the activations of [`crate::host_ops`] (SwiGLU, QuickGELU). Each
//! has an AVX2/FMA version chosen at run time (same check as [`crate::small_gemm`]) and a portable
//! one elsewhere. Hand-written because the compiler's own vectorisation of these loops kept one
//! dependent chain (or spilled registers) per call.
//!
//! The workspace denies `unsafe`; this module is an exception, for the intrinsics.
#![allow(unsafe_code)]

use crate::small_gemm;

/// Runs elementwise loop `$name` in the widest vectors the CPU has: its `target_feature` copy in
/// `avx512` or `avx2` (`elementwise_copies!`), else the portable `$body`. The caller has checked
/// the lengths the loop relies on.
macro_rules! widest {
    ($name:ident, $body:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        if small_gemm::avx512_available() {
            // SAFETY: `avx512_available()` checked AVX-512F (and AVX2 and FMA); the caller
            // checked the lengths.
            return unsafe { avx512::$name($($arg),*) };
        }
        #[cfg(target_arch = "x86_64")]
        if small_gemm::available() {
            // SAFETY: `available()` checked AVX2 and FMA; the caller checked the lengths.
            return unsafe { avx2::$name($($arg),*) };
        }
        $body($($arg),*)
    }};
}

/// The `target_feature` copies of the elementwise loops, one set in each ISA module (`avx2`,
/// `avx512`) with that module's features. Each only calls its `#[inline(always)]` `*_body`, which
/// is thereby compiled for the module's vector width (and `map`'s closure inlined into it).
#[cfg(target_arch = "x86_64")]
macro_rules! elementwise_copies {
    ($features:literal) => {
        /// # Safety
        /// The CPU has this module's features.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn softmax_in_place(row: &mut [f32]) {
            super::softmax_body(row)
        }

        /// # Safety
        /// The CPU has this module's features; equal lengths.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
            super::silu_mul_body(gate, up, out)
        }

        /// # Safety
        /// The CPU has this module's features; equal lengths.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn map(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
            super::map_body(x, out, f)
        }

        /// # Safety
        /// The CPU has this module's features; lengths as [`super::add_rms_norm`] checks them.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn add_rms_norm(
            x: &[f32],
            d: &[f32],
            w: &[f32],
            eps: f32,
            s: &mut [f32],
            y: &mut [f32],
        ) {
            super::add_rms_norm_body(x, d, w, eps, s, y)
        }
    };
}

/// `Σ a[i] · b[i]`.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of unequal lengths");
    #[cfg(target_arch = "x86_64")]
    if small_gemm::available() {
        // SAFETY: `available()` checked AVX2 and FMA.
        return unsafe { avx2::dot(a, b) };
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Attention scores of `group` query heads against the keys at `at`:
/// `out[g · at.len() + p] = scale · (q[g·hd .. (g+1)·hd] · kc[at[p] .. at[p] + hd])`.
pub(crate) fn scores(q: &[f32], hd: usize, kc: &[f32], at: &[usize], scale: f32, out: &mut [f32]) {
    let ctx = at.len();
    assert!(hd > 0 && q.len().is_multiple_of(hd), "q is not whole heads");
    assert_eq!(
        out.len(),
        q.len() / hd * ctx,
        "one score per head and position"
    );
    for &a in at {
        assert!(a + hd <= kc.len(), "key row out of bounds");
    }
    if ctx == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if hd.is_multiple_of(16) && small_gemm::avx512_available() {
        // SAFETY: `avx512_available()` checked AVX-512F, AVX2 and FMA; every key row is in
        // bounds (checked above).
        unsafe { avx512::scores(q, hd, kc, at, scale, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if hd.is_multiple_of(8) && small_gemm::available() {
        // SAFETY: `available()` checked AVX2 and FMA; every key row is in bounds (checked above).
        unsafe { avx2::scores(q, hd, kc, at, scale, out) };
        return;
    }
    for (qg, og) in q.chunks_exact(hd).zip(out.chunks_exact_mut(ctx)) {
        for (o, &a) in og.iter_mut().zip(at) {
            *o = dot(qg, &kc[a..a + hd]) * scale;
        }
    }
}

/// `out[i] = Σ_p weights[p] · vc[at[p] + offset + i]` for `i < out.len()`.
#[inline]
pub(crate) fn weighted_sum(
    weights: &[f32],
    vc: &[f32],
    at: &[usize],
    offset: usize,
    out: &mut [f32],
) {
    assert_eq!(weights.len(), at.len(), "one weight per position");
    let len = out.len();
    for &a in at {
        assert!(a + offset + len <= vc.len(), "value row out of bounds");
    }
    #[cfg(target_arch = "x86_64")]
    if len.is_multiple_of(16) && len <= 64 && small_gemm::avx512_available() {
        // SAFETY: `avx512_available()` checked AVX-512F; every row is in bounds (checked above).
        unsafe { avx512::weighted_sum(weights, vc, at, offset, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if len.is_multiple_of(8) && len <= 64 && small_gemm::available() {
        // SAFETY: `available()` checked AVX2 and FMA; every row is in bounds (checked above).
        unsafe { avx2::weighted_sum(weights, vc, at, offset, out) };
        return;
    }
    out.fill(0.0);
    for (&p, &a) in weights.iter().zip(at) {
        for (o, v) in out.iter_mut().zip(&vc[a + offset..a + offset + len]) {
            *o += p * v;
        }
    }
}

/// [`exp`]'s constants, which its 8- and 16-lane copies (`router_attend`) share so that they give
/// its bits.
pub(crate) mod exp_consts {
    /// 1.5·2²³: adding it rounds to an integer.
    pub(crate) const ROUND: f32 = 12_582_912.0;
    /// `ln 2` in two parts, high and low, for the range reduction.
    pub(crate) const LN2_HI: f32 = 0.693_359_4;
    pub(crate) const LN2_LO: f32 = 2.121_944_4e-4;
    /// The polynomial's coefficients, highest degree first (Horner order).
    pub(crate) const POLY: [f32; 6] = [
        1.987_569_1e-4,
        1.398_2e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
}

/// `eˣ` in `f32` (Cephes `expf`: range reduction by `ln 2`, degree-6 polynomial; relative error
/// about 2e-7), branch-free so loops over it vectorise. Inputs are clamped to [-87, 88].
#[inline]
pub(crate) fn exp(x: f32) -> f32 {
    use exp_consts::{LN2_HI, LN2_LO, POLY, ROUND};
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let k = t - ROUND;
    let r = x - k * LN2_HI + k * LN2_LO;
    let mut p = POLY[0];
    for coef in &POLY[1..] {
        p = p * r + coef;
    }
    let e = p * r * r + r + 1.0;
    // 2^k from `t`'s low mantissa bits, which hold k (integer ops only, so this vectorises; a
    // float-to-int cast would not).
    let ki = t.to_bits().wrapping_sub(ROUND.to_bits());
    let pow2 = f32::from_bits(ki.wrapping_add(127) << 23);
    e * pow2
}

/// The softmax of `row`, in place: `row[i] = e^(row[i] − max) / Σ_j e^(row[j] − max)` (with
/// [`exp`]). An empty row stays empty.
///
/// Its three passes (the maximum, the exponentials and their sum, the scaling) are compiled for
/// the widest vectors the CPU has. A plain `fold(f32::max)` is one serial chain that LLVM keeps
/// scalar for `f32::max`'s NaN rule, and code outside a `target_feature` function gets SSE's four
/// lanes: together they made up most of a softmax's time.
#[inline]
pub(crate) fn softmax_in_place(row: &mut [f32]) {
    widest!(softmax_in_place, softmax_body(row))
}

/// [`softmax_in_place`]'s loops: branch-free, and sums and maxima in interleaved lanes, so they
/// vectorise.
#[inline(always)]
fn softmax_body(row: &mut [f32]) {
    if row.is_empty() {
        return;
    }
    let max = lane_max(row);
    // The exponentials and their sum in one pass, in 16 interleaved lanes (a separate pass of
    // eight-lane adds was a sixth of the softmax's time).
    let mut lanes = [0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for c in &mut chunks {
        for (l, x) in lanes.iter_mut().zip(c.iter_mut()) {
            *x = exp(*x - max);
            *l += *x;
        }
    }
    let mut tail = 0f32;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        tail += *x;
    }
    let inv = 1.0 / (sum16(&lanes) + tail);
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// The sum of 16 lanes: the two halves added lane by lane, then [`tree8`].
#[inline(always)]
fn sum16(l: &[f32; 16]) -> f32 {
    tree8(&std::array::from_fn(|i| l[i] + l[i + 8]))
}

/// The largest value, NaNs passed over (`f32::max`'s answer where no value is NaN), taken in 16
/// interleaved lanes with a compare-and-select, which vectorises to `max` instructions.
#[inline(always)]
fn lane_max(values: &[f32]) -> f32 {
    let pick = |a: f32, b: f32| if b > a { b } else { a };
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = values.chunks_exact(16);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = pick(*l, v);
        }
    }
    let max = lanes.iter().copied().fold(f32::NEG_INFINITY, pick);
    chunks.remainder().iter().copied().fold(max, pick)
}

/// `out[i] = silu(gate[i]) · up[i]` with `silu(x) = x / (1 + e⁻ˣ)` (the SwiGLU of a gated MLP),
/// with [`exp`].
#[inline]
pub(crate) fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == out.len() && up.len() == out.len(),
        "silu_mul of unequal lengths"
    );
    widest!(silu_mul, silu_mul_body(gate, up, out))
}

/// [`silu_mul`]'s loop: branch-free, so it vectorises.
#[inline(always)]
fn silu_mul_body(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

/// `out[i] = x[i] · sigmoid(1.702 · x[i])` (CLIP's QuickGELU), with [`exp`].
#[inline]
pub(crate) fn quick_gelu(x: &[f32], out: &mut [f32]) {
    map(x, out, |v| v / (1.0 + exp(-1.702 * v)))
}

/// The exact (erf) GELU of each value ([`crate::host_dense::gelu_erf`]).
#[inline]
pub(crate) fn gelu_erf(x: &[f32], out: &mut [f32]) {
    map(x, out, crate::host_dense::gelu_erf)
}

/// `out[i] = f(x[i])` with the loop compiled for the CPU's widest vectors: `f` is inlined into
/// each `target_feature` copy, so a branch-free `f` vectorises there.
#[inline]
fn map(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Copy) {
    assert_eq!(x.len(), out.len(), "map over unequal lengths");
    widest!(map, map_body(x, out, f))
}

/// [`map`]'s loop.
#[inline(always)]
fn map_body(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f(v);
    }
}

/// `s = x + d` and `y = s / rms(s) · w` for every row of `x` (rows as wide as `w`), with
/// `rms(s) = √(mean(s²) + eps)`: a pre-norm decoder layer's residual add and the next RMSNorm.
/// The mean of squares is taken in [`lane_sum`]'s eight lanes (candle's is one serial chain).
#[inline]
pub(crate) fn add_rms_norm(
    x: &[f32],
    d: &[f32],
    w: &[f32],
    eps: f32,
    s: &mut [f32],
    y: &mut [f32],
) {
    let n = x.len();
    assert!(
        d.len() == n && s.len() == n && y.len() == n && n.is_multiple_of(w.len().max(1)),
        "add_rms_norm: rows of {} and equal lengths",
        w.len()
    );
    if w.is_empty() {
        return;
    }
    widest!(add_rms_norm, add_rms_norm_body(x, d, w, eps, s, y))
}

/// [`add_rms_norm`]'s loops: elementwise, and the squares summed in eight lanes, so they
/// vectorise.
#[inline(always)]
fn add_rms_norm_body(x: &[f32], d: &[f32], w: &[f32], eps: f32, s: &mut [f32], y: &mut [f32]) {
    let width = w.len();
    let rows = x.chunks_exact(width).zip(d.chunks_exact(width));
    for ((xr, dr), (sr, yr)) in rows.zip(s.chunks_exact_mut(width).zip(y.chunks_exact_mut(width))) {
        for ((s, a), b) in sr.iter_mut().zip(xr).zip(dr) {
            *s = a + b;
        }
        let mut lanes = [0f32; 8];
        let mut chunks = sr.chunks_exact(8);
        for c in &mut chunks {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l += v * v;
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        let m = ((tree8(&lanes) + tail) / width as f32 + eps).sqrt();
        for ((y, s), w) in yr.iter_mut().zip(sr.iter()).zip(w) {
            *y = s / m * w;
        }
    }
}

/// `Σ values`, accumulated in 8 interleaved partial sums so the loop vectorises (a single running
/// sum is one serial chain of dependent adds).
#[inline]
pub(crate) fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = values.chunks_exact(8);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    tree8(&lanes) + chunks.remainder().iter().sum::<f32>()
}

#[inline]
pub(crate) fn tree8(l: &[f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

#[cfg(target_arch = "x86_64")]
#[path = "simd_avx512.rs"]
mod avx512;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    elementwise_copies!("avx2,fma");

    /// The sum of a vector's eight lanes, added in [`super::tree8`]'s order (also used by
    /// [`crate::small_gemm`] and by the four-row LayerNorm of [`crate::host_dense`], whose bits
    /// match the one-row path because of that order).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// AVX2 and FMA; `a` and `b` of equal length.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): i + width <= n for both slices.
        while i + 32 <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_ps(pa.add(i + 8 * j)),
                        _mm256_loadu_ps(pb.add(i + 8 * j)),
                    )
                };
                *s = _mm256_fmadd_ps(x, y, *s);
            }
            i += 32;
        }
        while i + 8 <= n {
            let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i))) };
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut total = hsum(s);
        while i < n {
            total += a[i] * b[i];
            i += 1;
        }
        total
    }

    /// Four scores at a time per head: each key row is read once for all heads of the group (the
    /// quad stays in L1 across them), and eight accumulators (two per key) keep the FMA units busy
    /// instead of waiting on one dependent chain; the four sums leave in one horizontal reduction.
    ///
    /// # Safety
    /// AVX2 and FMA; `hd` a multiple of 8; every key row `at[p] .. at[p] + hd` within `kc`;
    /// `q.len()` = heads · `hd` and `out.len()` = heads · `at.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores(
        q: &[f32],
        hd: usize,
        kc: &[f32],
        at: &[usize],
        scale: f32,
        out: &mut [f32],
    ) {
        let (ctx, heads) = (at.len(), q.len() / hd);
        let quads = ctx / 4 * 4;
        let kp = kc.as_ptr();
        let mut p = 0;
        while p < quads {
            // SAFETY (all loads): rows are in bounds (caller), i + 8 <= hd.
            let rows: [*const f32; 4] = std::array::from_fn(|j| unsafe { kp.add(at[p + j]) });
            for g in 0..heads {
                let qg = unsafe { q.as_ptr().add(g * hd) };
                let mut even = [_mm256_setzero_ps(); 4];
                let mut odd = [_mm256_setzero_ps(); 4];
                let mut i = 0;
                while i + 16 <= hd {
                    let (q0, q1) =
                        unsafe { (_mm256_loadu_ps(qg.add(i)), _mm256_loadu_ps(qg.add(i + 8))) };
                    for j in 0..4 {
                        let (k0, k1) = unsafe {
                            (
                                _mm256_loadu_ps(rows[j].add(i)),
                                _mm256_loadu_ps(rows[j].add(i + 8)),
                            )
                        };
                        even[j] = _mm256_fmadd_ps(q0, k0, even[j]);
                        odd[j] = _mm256_fmadd_ps(q1, k1, odd[j]);
                    }
                    i += 16;
                }
                if i < hd {
                    let q0 = unsafe { _mm256_loadu_ps(qg.add(i)) };
                    for j in 0..4 {
                        let k0 = unsafe { _mm256_loadu_ps(rows[j].add(i)) };
                        even[j] = _mm256_fmadd_ps(q0, k0, even[j]);
                    }
                }
                let s: [__m256; 4] = std::array::from_fn(|j| _mm256_add_ps(even[j], odd[j]));
                let sums = scaled_sums4(&s, scale);
                unsafe { _mm_storeu_ps(out.as_mut_ptr().add(g * ctx + p), sums) };
            }
            p += 4;
        }
        for p in quads..ctx {
            let k = &kc[at[p]..at[p] + hd];
            for g in 0..heads {
                out[g * ctx + p] = unsafe { dot(&q[g * hd..(g + 1) * hd], k) } * scale;
            }
        }
    }

    /// `scale ·` the lane sums of four vectors, `[Σ s[0], Σ s[1], Σ s[2], Σ s[3]]`: two rounds of
    /// pairwise adds, then the halves (the scores' reduction of four keys at once, in both copies).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) fn scaled_sums4(s: &[__m256], scale: f32) -> __m128 {
        let t = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
        let sums = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t));
        _mm_mul_ps(sums, _mm_set1_ps(scale))
    }

    /// # Safety
    /// AVX2 and FMA; `out.len()` a multiple of 8 and at most 64; every value row in bounds.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weighted_sum(
        weights: &[f32],
        vc: &[f32],
        at: &[usize],
        offset: usize,
        out: &mut [f32],
    ) {
        // SAFETY (each arm): as this function's.
        unsafe {
            match out.len() / 8 {
                8 => wsum::<8>(weights, vc, at, offset, out),
                7 => wsum::<7>(weights, vc, at, offset, out),
                6 => wsum::<6>(weights, vc, at, offset, out),
                5 => wsum::<5>(weights, vc, at, offset, out),
                4 => wsum::<4>(weights, vc, at, offset, out),
                3 => wsum::<3>(weights, vc, at, offset, out),
                2 => wsum::<2>(weights, vc, at, offset, out),
                _ => wsum::<1>(weights, vc, at, offset, out),
            }
        }
    }

    /// [`weighted_sum`] over `N` vectors: `N` independent accumulators (a fixed count, so they
    /// live in registers), one broadcast weight per position.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn wsum<const N: usize>(
        weights: &[f32],
        vc: &[f32],
        at: &[usize],
        offset: usize,
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); N];
        for (&p, &a) in weights.iter().zip(at) {
            let pv = _mm256_set1_ps(p);
            // SAFETY: the row's N·8 values are in bounds (caller).
            let row = unsafe { vc.as_ptr().add(a + offset) };
            for (j, s) in acc.iter_mut().enumerate() {
                *s = _mm256_fmadd_ps(pv, unsafe { _mm256_loadu_ps(row.add(8 * j)) }, *s);
            }
        }
        for (j, s) in acc.iter().enumerate() {
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * j), *s) };
        }
    }
}

#[cfg(test)]
#[path = "simd_tests.rs"]
mod tests;
