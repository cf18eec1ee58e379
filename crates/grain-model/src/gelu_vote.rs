//! The router's last step before `mlp2`: `acc += Σ_r w_r · GELU(row_r)`, the exact (erf) GELU of
//! every `mlp1` output row weighted by the voter ([`crate::router_cpu`]).
//!
//! The portable loop calls [`gelu_erf`] per value and relies on the compiler's vectorisation,
//! which cannot fuse its multiply-adds. The AVX2/FMA version evaluates the same formula
//! (Abramowitz–Stegun 7.1.26 for erf, the Cephes exponential) on eight lanes with fused
//! multiply-adds, so each value costs about half the operations; results differ from the
//! portable loop only in rounding.
//!
//! The workspace denies `unsafe`; this module is an exception, for the intrinsics.
#![allow(unsafe_code)]

use crate::host_dense::gelu_erf;

/// `acc[c] += Σ_r weights[r] · GELU(rows[r · d + c])` with `d = acc.len()`.
pub(crate) fn gelu_weighted_sum(rows: &[f32], weights: &[f32], acc: &mut [f32]) {
    let d = acc.len();
    assert_eq!(rows.len(), weights.len() * d, "one weight per row of {d}");
    #[cfg(target_arch = "x86_64")]
    if d % 8 == 0 && crate::small_gemm::available() {
        // SAFETY: `available()` checked AVX2 and FMA; lengths checked above.
        unsafe { avx2::gelu_weighted_sum(rows, weights, acc) };
        return;
    }
    for (row, w) in rows.chunks_exact(d).zip(weights) {
        for (a, v) in acc.iter_mut().zip(row) {
            *a += w * gelu_erf(*v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2 and FMA; `acc.len()` a multiple of 8; `rows.len() == weights.len() · acc.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu_weighted_sum(rows: &[f32], weights: &[f32], acc: &mut [f32]) {
        let d = acc.len();
        let (rp, ap) = (rows.as_ptr(), acc.as_mut_ptr());
        for (r, &w) in weights.iter().enumerate() {
            let wv = _mm256_set1_ps(w);
            for c in (0..d).step_by(8) {
                // SAFETY: row `r < weights.len()` and `c + 8 <= d` stay inside `rows` and `acc`.
                unsafe {
                    let g = gelu8(_mm256_loadu_ps(rp.add(r * d + c)));
                    let a = _mm256_loadu_ps(ap.add(c));
                    _mm256_storeu_ps(ap.add(c), _mm256_fmadd_ps(wv, g, a));
                }
            }
        }
    }

    /// [`crate::host_dense::gelu_erf`] on eight lanes, with fused multiply-adds.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn gelu8(x: __m256) -> __m256 {
        let c = _mm256_set1_ps;
        let z = _mm256_mul_ps(
            _mm256_andnot_ps(c(-0.0), x),
            c(std::f32::consts::FRAC_1_SQRT_2),
        );
        let t = _mm256_div_ps(c(1.0), _mm256_fmadd_ps(c(0.327_591_1), z, c(1.0)));
        let mut p = c(1.061_405_4);
        for coef in [-1.453_152, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
            p = _mm256_fmadd_ps(p, t, c(coef));
        }
        let p = _mm256_mul_ps(p, t);
        // 1 − erf(|z|)
        let tail = _mm256_mul_ps(p, exp8(_mm256_mul_ps(_mm256_sub_ps(c(0.0), z), z)));
        let positive = _mm256_cmp_ps::<_CMP_GE_OQ>(x, c(0.0));
        let one_plus_erf = _mm256_blendv_ps(tail, _mm256_sub_ps(c(2.0), tail), positive);
        _mm256_mul_ps(_mm256_mul_ps(c(0.5), x), one_plus_erf)
    }

    /// [`crate::simd::exp`]'s method on eight lanes, with fused multiply-adds.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn exp8(x: __m256) -> __m256 {
        let c = _mm256_set1_ps;
        const ROUND: f32 = 12_582_912.0;
        let x = _mm256_max_ps(_mm256_min_ps(x, c(88.0)), c(-87.0));
        let t = _mm256_fmadd_ps(x, c(std::f32::consts::LOG2_E), c(ROUND));
        let k = _mm256_sub_ps(t, c(ROUND));
        let r = _mm256_fmadd_ps(k, c(2.121_944_4e-4), _mm256_fnmadd_ps(k, c(0.693_359_4), x));
        let mut p = c(1.987_569_1e-4);
        for coef in [
            1.398_2e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, c(coef));
        }
        let e = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), c(1.0));
        let ki = _mm256_sub_epi32(
            _mm256_castps_si256(t),
            _mm256_set1_epi32(ROUND.to_bits() as i32),
        );
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(ki, _mm256_set1_epi32(127)));
        _mm256_mul_ps(e, _mm256_castsi256_ps(pow2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::values;

    #[test]
    fn matches_an_f64_erf_gelu_sum() {
        // libm-free reference: erf from its Taylor series (|x| ≤ 3) or continued fraction tail.
        fn erf(x: f64) -> f64 {
            let a = x.abs();
            let v = if a < 3.0 {
                let (mut term, mut sum, mut n) = (a, a, 0.0);
                while term.abs() > 1e-17 * sum.abs() {
                    n += 1.0;
                    term *= -a * a / n;
                    sum += term / (2.0 * n + 1.0);
                }
                sum * 2.0 / std::f64::consts::PI.sqrt()
            } else {
                let mut f = 0.0;
                for k in (1..60).rev() {
                    f = k as f64 / 2.0 / (a + f);
                }
                1.0 - (-a * a).exp() / (a + f) / std::f64::consts::PI.sqrt()
            };
            v.copysign(x)
        }
        for d in [64usize, 8, 12] {
            let rows = 37;
            // Values over the range mlp1 outputs take, with large ones where GELU saturates.
            let mut x = values(rows * d, d as u64, 4.0);
            x[0] = 12.0;
            x[1] = -12.0;
            x[2] = 0.0;
            let w = values(rows, 3, 1.0);
            let start = values(d, 5, 1.0);
            let mut acc = start.clone();
            gelu_weighted_sum(&x, &w, &mut acc);
            for c in 0..d {
                let mut want = start[c] as f64;
                for r in 0..rows {
                    let v = x[r * d + c] as f64;
                    want += w[r] as f64 * 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2));
                }
                let got = acc[c] as f64;
                assert!(
                    (got - want).abs() <= 2e-6 * (1.0 + want.abs()) * rows as f64,
                    "d={d} column {c}: {got} vs {want}"
                );
            }
        }
    }
}
