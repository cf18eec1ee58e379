//! The router merger's attention across crops on the CPU: at one position, each crop's row attends
//! to the same position in every crop (`n` rows, `n` keys, per head).
//!
//! The fused path keeps the columns of q, k, v and the output head-interleaved
//! ([`interleave_heads`]), so that every per-head quantity is a `heads`-long vector: with 8 or 16
//! heads the scores, the softmax and the weighted sums run on whole 8-lane registers.

use crate::simd::exp;

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
    /// Whether this scratch serves `n` crops and `heads` heads.
    pub(crate) fn fits(&self, n: usize, heads: usize) -> bool {
        self.max.len() == heads && self.s.len() >= n * n * heads
    }

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
    assert!(
        qkv.len() == n * 3 * d && out.len() == n * d && d.is_multiple_of(heads),
        "attend: {n} rows of q, k, v and of output, {heads} heads dividing {d}"
    );
    assert!(sc.s.len() >= n * n * heads && sc.max.len() == heads && sc.sum.len() == heads);
    #[cfg(target_arch = "x86_64")]
    if heads == 8 && (d / 8).is_multiple_of(2) && crate::small_gemm::avx512_available() {
        // SAFETY: `avx512_available()` checked AVX-512F, AVX2 and FMA; lengths checked above.
        #[allow(unsafe_code)]
        if unsafe { avx512::attend8(qkv, d, out) } {
            return;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if crate::small_gemm::available() {
        // SAFETY: `available()` checked AVX2 and FMA; the lengths were checked above.
        #[allow(unsafe_code)]
        return unsafe { avx2::attend(qkv, d, heads, sc, out) };
    }
    scores_body(qkv, d, heads, &mut sc.s);
    softmax_body(n, heads, d / heads, sc);
    weighted_body(qkv, d, heads, &sc.s, out);
}

/// `s[i][j][h] = q_i · k_j` per head (unscaled).
#[inline(always)]
fn scores_body(qkv: &[f32], d: usize, heads: usize, s: &mut [f32]) {
    let n = qkv.len() / (3 * d);
    for i in 0..n {
        let q = &qkv[i * 3 * d..][..d];
        for j in 0..n {
            let k = &qkv[j * 3 * d + d..][..d];
            let sc = &mut s[(i * n + j) * heads..][..heads];
            sc.fill(0.0);
            for (qc, kc) in q.chunks_exact(heads).zip(k.chunks_exact(heads)) {
                for ((s, a), b) in sc.iter_mut().zip(qc).zip(kc) {
                    *s += a * b;
                }
            }
        }
    }
}

/// Scores → attention weights: softmax over `j` of `s[i][j][h] / √hd`, for every `i` and head.
#[inline(always)]
fn softmax_body(n: usize, heads: usize, hd: usize, sc: &mut AttendScratch) {
    let scale = 1.0 / (hd as f32).sqrt();
    let (s, max, sum) = (&mut sc.s[..n * n * heads], &mut sc.max, &mut sc.sum);
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
}

/// `out_i = Σ_j a[i][j][h] · v_j` per head.
#[inline(always)]
fn weighted_body(qkv: &[f32], d: usize, heads: usize, s: &[f32], out: &mut [f32]) {
    let n = qkv.len() / (3 * d);
    for (i, o) in out.chunks_exact_mut(d).enumerate() {
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

/// [`attend`] with AVX2/FMA: the softmax is [`softmax_body`] compiled for AVX2; where `heads` is
/// a multiple of 8 the scores and the weighted sums are FMA loops over 8-head registers, four
/// independent accumulators at a time (the portable loops form one dependent chain per group).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{scores_body, softmax_body, weighted_body, AttendScratch};

    /// # Safety
    /// AVX2 and FMA; the lengths [`super::attend`] asserts.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn attend(
        qkv: &[f32],
        d: usize,
        heads: usize,
        sc: &mut AttendScratch,
        out: &mut [f32],
    ) {
        let n = qkv.len() / (3 * d);
        if !heads.is_multiple_of(8) {
            scores_body(qkv, d, heads, &mut sc.s);
            softmax_body(n, heads, d / heads, sc);
            weighted_body(qkv, d, heads, &sc.s, out);
            return;
        }
        // SAFETY (each arm): AVX2/FMA enabled; lengths as asserted by the caller.
        match n {
            1 => return unsafe { attend_n::<1>(qkv, d, heads, out) },
            2 => return unsafe { attend_n::<2>(qkv, d, heads, out) },
            3 => return unsafe { attend_n::<3>(qkv, d, heads, out) },
            4 => return unsafe { attend_n::<4>(qkv, d, heads, out) },
            5 => return unsafe { attend_n::<5>(qkv, d, heads, out) },
            6 => return unsafe { attend_n::<6>(qkv, d, heads, out) },
            7 => return unsafe { attend_n::<7>(qkv, d, heads, out) },
            8 => return unsafe { attend_n::<8>(qkv, d, heads, out) },
            _ => {}
        }
        // SAFETY (all three): AVX2/FMA enabled; lengths as asserted by the caller.
        unsafe { scores(qkv, (n, d, heads), &mut sc.s) };
        unsafe { softmax(n, heads, d / heads, &mut sc.s) };
        unsafe { weighted(qkv, (n, d, heads), &sc.s, out) };
    }

    /// The whole attention for `N` crops (at most 8) and `heads % 8 == 0`, with the scores and
    /// weights of an 8-head group held in registers: the `N` keys of a row are `N` independent
    /// FMA chains, and the rows' softmaxes and weighted sums do not wait on one another, where the
    /// general path below runs each row's steps as a chain through memory. The same operations in
    /// the same order as that path, so the same bits.
    ///
    /// # Safety
    /// AVX2 and FMA; `qkv` `N` rows of `3d`, `out` `N` rows of `d`, `heads % 8 == 0` dividing `d`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_n<const N: usize>(qkv: &[f32], d: usize, heads: usize, out: &mut [f32]) {
        let hd = d / heads;
        let scale = _mm256_set1_ps(1.0 / (hd as f32).sqrt());
        let one = _mm256_set1_ps(1.0);
        let (p, op) = (qkv.as_ptr(), out.as_mut_ptr());
        // SAFETY (all loads and stores): row `i < N` of q, k, v at `i·3d`, `+d`, `+2d`; channel
        // `c < hd` of group `g` at `c·heads + g .. + 8 <= d`; output rows `i·d`, same columns.
        unsafe {
            for g in (0..heads).step_by(8) {
                let mut w = [[_mm256_setzero_ps(); N]; N];
                for (i, wi) in w.iter_mut().enumerate() {
                    let q = p.add(i * 3 * d + g);
                    for c in 0..hd {
                        let qv = _mm256_loadu_ps(q.add(c * heads));
                        for (j, a) in wi.iter_mut().enumerate() {
                            let k = _mm256_loadu_ps(p.add(j * 3 * d + d + g + c * heads));
                            *a = _mm256_fmadd_ps(qv, k, *a);
                        }
                    }
                }
                for wi in w.iter_mut() {
                    let mut max = wi[0];
                    for a in &wi[1..] {
                        max = _mm256_max_ps(max, *a);
                    }
                    let mut sum = _mm256_setzero_ps();
                    for a in wi.iter_mut() {
                        *a = exp8(_mm256_mul_ps(_mm256_sub_ps(*a, max), scale));
                        sum = _mm256_add_ps(sum, *a);
                    }
                    let inv = _mm256_div_ps(one, sum);
                    for a in wi.iter_mut() {
                        *a = _mm256_mul_ps(*a, inv);
                    }
                }
                for (i, wi) in w.iter().enumerate() {
                    for c in 0..hd {
                        let col = c * heads + g;
                        let mut acc = _mm256_setzero_ps();
                        for (j, a) in wi.iter().enumerate() {
                            let v = _mm256_loadu_ps(p.add(j * 3 * d + 2 * d + col));
                            acc = _mm256_fmadd_ps(*a, v, acc);
                        }
                        _mm256_storeu_ps(op.add(i * d + col), acc);
                    }
                }
            }
        }
    }

    /// [`super::scores_body`] for `heads % 8 == 0`: for each row `i` and 8-head group, keys four at
    /// a time, each channel's `q` register reused by the four.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores(qkv: &[f32], (n, d, heads): (usize, usize, usize), s: &mut [f32]) {
        let hd = d / heads;
        let p = qkv.as_ptr();
        let sp = s.as_mut_ptr();
        // SAFETY: rows are `3d` apart, q at 0, k at d; channel `c`, group `g` reads
        // `c·heads + 8g .. +8 ≤ d`; score writes stay below `n·n·heads ≤ s.len()`.
        unsafe {
            for i in 0..n {
                for g in (0..heads).step_by(8) {
                    let q = p.add(i * 3 * d + g);
                    let key = |j: usize| p.add(j * 3 * d + d + g);
                    let dst = |j: usize| sp.add((i * n + j) * heads + g);
                    let mut j = 0;
                    while j + 4 <= n {
                        let ks = [key(j), key(j + 1), key(j + 2), key(j + 3)];
                        let mut acc = [_mm256_setzero_ps(); 4];
                        for c in 0..hd {
                            let qv = _mm256_loadu_ps(q.add(c * heads));
                            for (a, k) in acc.iter_mut().zip(ks) {
                                *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.add(c * heads)), *a);
                            }
                        }
                        for (t, a) in acc.iter().enumerate() {
                            _mm256_storeu_ps(dst(j + t), *a);
                        }
                        j += 4;
                    }
                    while j < n {
                        let k = key(j);
                        let mut a = _mm256_setzero_ps();
                        for c in 0..hd {
                            let qv = _mm256_loadu_ps(q.add(c * heads));
                            a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.add(c * heads)), a);
                        }
                        _mm256_storeu_ps(dst(j), a);
                        j += 1;
                    }
                }
            }
        }
    }

    /// [`super::softmax_body`] for `heads % 8 == 0`, eight heads per register. The exponential
    /// is [`exp8`], the same operations as [`crate::simd::exp`], so both paths give the same bits.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax(n: usize, heads: usize, hd: usize, s: &mut [f32]) {
        let scale = _mm256_set1_ps(1.0 / (hd as f32).sqrt());
        let one = _mm256_set1_ps(1.0);
        let sp = s.as_mut_ptr();
        // SAFETY: scores `(i·n + j)·heads + g .. +8` for `i, j < n`, `g + 8 ≤ heads`: inside the
        // `n·n·heads` the caller checked.
        unsafe {
            for i in 0..n {
                for g in (0..heads).step_by(8) {
                    let at = |j: usize| sp.add((i * n + j) * heads + g);
                    let mut max = _mm256_loadu_ps(at(0));
                    for j in 1..n {
                        max = _mm256_max_ps(max, _mm256_loadu_ps(at(j)));
                    }
                    let mut sum = _mm256_setzero_ps();
                    for j in 0..n {
                        let e = exp8(_mm256_mul_ps(
                            _mm256_sub_ps(_mm256_loadu_ps(at(j)), max),
                            scale,
                        ));
                        _mm256_storeu_ps(at(j), e);
                        sum = _mm256_add_ps(sum, e);
                    }
                    let inv = _mm256_div_ps(one, sum);
                    for j in 0..n {
                        _mm256_storeu_ps(at(j), _mm256_mul_ps(_mm256_loadu_ps(at(j)), inv));
                    }
                }
            }
        }
    }

    /// [`crate::simd::exp`] on eight lanes, operation for operation (no fused multiply-adds, so the
    /// roundings match).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) fn exp8(x: __m256) -> __m256 {
        let c = _mm256_set1_ps;
        let (mul, add, sub) = (_mm256_mul_ps, _mm256_add_ps, _mm256_sub_ps);
        use crate::simd::exp_consts::{LN2_HI, LN2_LO, POLY, ROUND};
        let x = _mm256_max_ps(_mm256_min_ps(x, c(88.0)), c(-87.0));
        let t = add(mul(x, c(std::f32::consts::LOG2_E)), c(ROUND));
        let k = sub(t, c(ROUND));
        let r = add(sub(x, mul(k, c(LN2_HI))), mul(k, c(LN2_LO)));
        let mut p = c(POLY[0]);
        for &coef in &POLY[1..] {
            p = add(mul(p, r), c(coef));
        }
        let e = add(add(mul(mul(p, r), r), r), c(1.0));
        let ki = _mm256_sub_epi32(
            _mm256_castps_si256(t),
            _mm256_set1_epi32(ROUND.to_bits() as i32),
        );
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(ki, _mm256_set1_epi32(127)));
        mul(e, _mm256_castsi256_ps(pow2))
    }

    /// [`super::weighted_body`] for `heads % 8 == 0`: each output row in runs of four 8-wide
    /// column chunks (independent accumulators), summed over the `n` value rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weighted(
        qkv: &[f32],
        (n, d, heads): (usize, usize, usize),
        s: &[f32],
        out: &mut [f32],
    ) {
        let p = qkv.as_ptr();
        let (sp, op) = (s.as_ptr(), out.as_mut_ptr());
        let chunks = d / 8;
        // Chunk `ci` holds channel `ci·8 / heads` of heads `(ci·8) % heads ..+8`.
        let group = |ci: usize| (ci * 8) % heads;
        // SAFETY: value rows at `j·3d + 2d`, chunks `< d/8`; weights below `n·n·heads`; output
        // rows `i·d`, chunks `< d/8`.
        unsafe {
            for i in 0..n {
                let mut ci = 0;
                while ci < chunks {
                    let run = (chunks - ci).min(4);
                    // Each chunk's head group, once per run: in the inner loop it compiled to an
                    // integer division next to every FMA.
                    let groups: [usize; 4] = std::array::from_fn(|t| group(ci + t));
                    let mut acc = [_mm256_setzero_ps(); 4];
                    for j in 0..n {
                        let v = p.add(j * 3 * d + 2 * d);
                        let w = sp.add((i * n + j) * heads);
                        for (t, a) in acc.iter_mut().enumerate().take(run) {
                            let wv = _mm256_loadu_ps(w.add(groups[t]));
                            *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(v.add((ci + t) * 8)), *a);
                        }
                    }
                    for (t, a) in acc.iter().enumerate().take(run) {
                        _mm256_storeu_ps(op.add(i * d + (ci + t) * 8), *a);
                    }
                    ci += run;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[path = "router_attend_avx512.rs"]
mod avx512;

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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    #[test]
    #[allow(unsafe_code)]
    fn eight_lane_exp_gives_the_scalar_exps_bits() {
        if !crate::small_gemm::available() {
            return;
        }
        let xs: Vec<f32> = (-1000..1000)
            .map(|i| i as f32 * 0.0917)
            .chain([-100.0, 100.0, 0.0])
            .collect();
        for chunk in xs.chunks(8) {
            let mut lanes = [0f32; 8];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut got = [0f32; 8];
            // SAFETY: AVX2/FMA checked above.
            unsafe {
                use std::arch::x86_64::*;
                _mm256_storeu_ps(
                    got.as_mut_ptr(),
                    super::avx2::exp8(_mm256_loadu_ps(lanes.as_ptr())),
                );
            }
            for (g, x) in got.iter().zip(lanes) {
                assert_eq!(g.to_bits(), crate::simd::exp(x).to_bits(), "exp({x})");
            }
        }
    }

    #[test]
    #[allow(unsafe_code)]
    fn small_crop_counts_give_the_general_paths_bits() {
        if !crate::small_gemm::available() {
            return;
        }
        for (n, d, heads) in [
            (5usize, 64usize, 8usize),
            (1, 64, 8),
            (3, 128, 16),
            (8, 32, 8),
        ] {
            let qkv = crate::test_util::values(n * 3 * d, n as u64, 3.0);
            let mut sc = super::AttendScratch::new(n, heads);
            let mut got = vec![0f32; n * d];
            // SAFETY: AVX2/FMA checked above; shapes as `attend` asserts.
            unsafe { super::avx2::attend(&qkv, d, heads, &mut sc, &mut got) };
            let mut want = vec![0f32; n * d];
            // SAFETY: AVX2/FMA checked above; shapes as `attend` asserts.
            unsafe {
                super::avx2::scores(&qkv, (n, d, heads), &mut sc.s);
                super::avx2::softmax(n, heads, d / heads, &mut sc.s);
                super::avx2::weighted(&qkv, (n, d, heads), &sc.s, &mut want);
            }
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "n={n} d={d} heads={heads}");
        }
    }

    #[test]
    #[allow(unsafe_code)]
    fn sixteen_lane_exp_gives_the_scalar_exps_bits() {
        if !crate::small_gemm::avx512_available() {
            return;
        }
        let xs: Vec<f32> = (-1000..1008).map(|i| i as f32 * 0.0917).collect();
        for chunk in xs.chunks_exact(16) {
            let mut got = [0f32; 16];
            // SAFETY: AVX-512F checked above.
            unsafe {
                use std::arch::x86_64::*;
                _mm512_storeu_ps(
                    got.as_mut_ptr(),
                    super::avx512::exp16(_mm512_loadu_ps(chunk.as_ptr())),
                );
            }
            for (g, x) in got.iter().zip(chunk) {
                assert_eq!(g.to_bits(), crate::simd::exp(*x).to_bits(), "exp({x})");
            }
        }
    }

    /// The AVX-512 path for eight heads (what `attend` runs where the CPU has it) against the
    /// portable loops, within f32 rounding.
    #[test]
    fn eight_heads_on_sixteen_lanes_match_the_portable_loops() {
        if !crate::small_gemm::avx512_available() {
            return;
        }
        for (n, d) in [(5usize, 64usize), (1, 16), (8, 128), (3, 48)] {
            let heads = 8;
            let qkv = crate::test_util::values(n * 3 * d, n as u64 + 7, 3.0);
            let mut sc = super::AttendScratch::new(n, heads);
            let mut got = vec![0f32; n * d];
            super::attend(&qkv, d, heads, &mut sc, &mut got);
            let mut want = vec![0f32; n * d];
            super::scores_body(&qkv, d, heads, &mut sc.s);
            super::softmax_body(n, heads, d / heads, &mut sc);
            super::weighted_body(&qkv, d, heads, &sc.s, &mut want);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "n={n} d={d}: {g} vs {w}"
                );
            }
        }
    }
}
