//! The router's last step before `mlp2`: `acc += Σ_r w_r · GELU(row_r)`, the exact (erf) GELU of
//! every `mlp1` output row weighted by the voter ([`crate::router_cpu`]).
//!
//! The portable loop calls [`gelu_erf`] per value (erf from Abramowitz–Stegun 7.1.26, which
//! needs an exponential and a division) and relies on the compiler's vectorisation, which cannot
//! fuse its multiply-adds. The AVX2/FMA version takes erf from Abramowitz–Stegun 7.1.28 instead:
//! a degree-6 polynomial raised to the −16th power, about half the operations per value and no
//! exponential, with fused multiply-adds on eight lanes. Both formulas are within 3e-7 of erf; in
//! `f32` the 16th power adds rounding, and the test holds this path to 1e-6·(1 + |x|) of an `f64`
//! GELU.
//!
//! The workspace denies `unsafe`; this module is an exception, for the intrinsics.
#![allow(unsafe_code)]

use crate::host_dense::gelu_erf;

/// Abramowitz–Stegun 7.1.28's coefficients, highest degree first (Horner order): `1 − erf(z) =
/// (1 + a₁z + … + a₆z⁶)⁻¹⁶`. The 8- and 16-lane copies share them, so they give the same bits.
const ERFC_POLY: [f32; 7] = [
    4.306_38e-5,
    2.765_672e-4,
    1.520_143e-4,
    9.270_527e-3,
    4.228_201e-2,
    7.052_307_8e-2,
    1.0,
];

/// `acc[c] += Σ_r weights[r] · GELU(rows[r · d + c])` with `d = acc.len()`.
pub(crate) fn gelu_weighted_sum(rows: &[f32], weights: &[f32], acc: &mut [f32]) {
    let d = acc.len();
    assert_eq!(rows.len(), weights.len() * d, "one weight per row of {d}");
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(16) && crate::small_gemm::avx512_available() {
        // SAFETY: `avx512_available()` checked AVX-512F (and AVX2/FMA); lengths checked above.
        unsafe { avx512::gelu_weighted_sum(rows, weights, acc) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(8) && crate::small_gemm::available() {
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

    use super::ERFC_POLY;

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

    /// The erf GELU on eight lanes, with erf from Abramowitz–Stegun 7.1.28: `1 − erf(z) =
    /// (1 + a₁z + … + a₆z⁶)⁻¹⁶` for `z ≥ 0` (|error| ≤ 3e-7), a polynomial, four squarings and
    /// one division: no exponential.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn gelu8(x: __m256) -> __m256 {
        let c = _mm256_set1_ps;
        let z = _mm256_mul_ps(
            _mm256_andnot_ps(c(-0.0), x),
            c(std::f32::consts::FRAC_1_SQRT_2),
        );
        let mut p = c(ERFC_POLY[0]);
        for &coef in &ERFC_POLY[1..] {
            p = _mm256_fmadd_ps(p, z, c(coef));
        }
        let p2 = _mm256_mul_ps(p, p);
        let p4 = _mm256_mul_ps(p2, p2);
        let p8 = _mm256_mul_ps(p4, p4);
        // 1 − erf(|z|); a huge `z` overflows p¹⁶ to infinity and gives 0, the limit.
        let tail = _mm256_div_ps(c(1.0), _mm256_mul_ps(p8, p8));
        let positive = _mm256_cmp_ps::<_CMP_GE_OQ>(x, c(0.0));
        let one_plus_erf = _mm256_blendv_ps(tail, _mm256_sub_ps(c(2.0), tail), positive);
        _mm256_mul_ps(_mm256_mul_ps(c(0.5), x), one_plus_erf)
    }
}

/// [`avx2`] on sixteen lanes: the same operations per value, so the same bits.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::ERFC_POLY;

    /// # Safety
    /// AVX-512F; `acc.len()` a multiple of 16; `rows.len() == weights.len() · acc.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gelu_weighted_sum(rows: &[f32], weights: &[f32], acc: &mut [f32]) {
        let d = acc.len();
        let (rp, ap) = (rows.as_ptr(), acc.as_mut_ptr());
        for (r, &w) in weights.iter().enumerate() {
            let wv = _mm512_set1_ps(w);
            for c in (0..d).step_by(16) {
                // SAFETY: row `r < weights.len()` and `c + 16 <= d` stay inside `rows` and `acc`.
                unsafe {
                    let g = gelu16(_mm512_loadu_ps(rp.add(r * d + c)));
                    let a = _mm512_loadu_ps(ap.add(c));
                    _mm512_storeu_ps(ap.add(c), _mm512_fmadd_ps(wv, g, a));
                }
            }
        }
    }

    /// [`super::avx2`]'s `gelu8` on sixteen lanes.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn gelu16(x: __m512) -> __m512 {
        let c = _mm512_set1_ps;
        let z = _mm512_mul_ps(_mm512_abs_ps(x), c(std::f32::consts::FRAC_1_SQRT_2));
        let mut p = c(ERFC_POLY[0]);
        for &coef in &ERFC_POLY[1..] {
            p = _mm512_fmadd_ps(p, z, c(coef));
        }
        let p2 = _mm512_mul_ps(p, p);
        let p4 = _mm512_mul_ps(p2, p2);
        let p8 = _mm512_mul_ps(p4, p4);
        let tail = _mm512_div_ps(c(1.0), _mm512_mul_ps(p8, p8));
        let positive = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, c(0.0));
        let one_plus_erf = _mm512_mask_blend_ps(positive, tail, _mm512_sub_ps(c(2.0), tail));
        _mm512_mul_ps(_mm512_mul_ps(c(0.5), x), one_plus_erf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::values;

    /// The 16-lane copy against the 8-lane one, bit for bit.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sixteen_lanes_give_the_eight_lane_bits() {
        if !crate::small_gemm::avx512_available() {
            return;
        }
        let d = 64;
        let mut x = values(21 * d, 9, 6.0);
        x[..4].copy_from_slice(&[0.0, -0.0, 40.0, -40.0]);
        let w = values(21, 4, 1.0);
        let (mut a, mut b) = (values(d, 2, 1.0), values(d, 2, 1.0));
        // SAFETY: AVX-512F (and AVX2/FMA) checked above; lengths as required.
        unsafe {
            avx512::gelu_weighted_sum(&x, &w, &mut a);
            avx2::gelu_weighted_sum(&x, &w, &mut b);
        }
        assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

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
        let gelu = |v: f64| 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2));
        // Each value alone (one row, weight 1), over the range GELU bends in and beyond.
        let xs: Vec<f32> = (-800..=800).map(|i| i as f32 / 64.0).collect();
        let mut worst = 0f64;
        for chunk in xs.chunks_exact(8) {
            let mut acc = [0f32; 8];
            gelu_weighted_sum(chunk, &[1.0], &mut acc);
            for (g, x) in acc.iter().zip(chunk) {
                worst = worst.max((*g as f64 - gelu(*x as f64)).abs() / (1.0 + x.abs() as f64));
            }
        }
        assert!(worst <= 1e-6, "worst error {worst:e} relative to 1 + |x|");
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
                    want += w[r] as f64 * gelu(v);
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
