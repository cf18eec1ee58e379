//! [`super::attend`] for the router's eight heads on AVX-512: a 16-lane register holds two
//! channels of all eight heads (the head-interleaved columns `c·8 + h` of
//! [`super::interleave_heads`]), so the scores take half the multiply-adds of the 8-lane copy,
//! each head's two partial sums (even and odd channels) folded at the end. Those sums are ordered
//! differently from the 8-lane copy's (a few ulp apart); the softmax is the 8-lane copy's, and
//! the weighted sums run over the crops in the same order on both halves.
//!
//! The workspace denies `unsafe`; this file is an exception, for the intrinsics.

use std::arch::x86_64::*;

use super::avx2::exp8;

/// # Safety
/// AVX-512F, AVX2 and FMA; `qkv` `n` rows of `3d`, `out` `n` rows of `d`, eight heads, `d / 8`
/// even; `n` at most 8.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn attend8(qkv: &[f32], d: usize, out: &mut [f32]) -> bool {
    let n = qkv.len() / (3 * d);
    // SAFETY (each arm): as this function's.
    unsafe {
        match n {
            1 => attend_n::<1>(qkv, d, out),
            2 => attend_n::<2>(qkv, d, out),
            3 => attend_n::<3>(qkv, d, out),
            4 => attend_n::<4>(qkv, d, out),
            5 => attend_n::<5>(qkv, d, out),
            6 => attend_n::<6>(qkv, d, out),
            7 => attend_n::<7>(qkv, d, out),
            8 => attend_n::<8>(qkv, d, out),
            _ => return false,
        }
    }
    true
}

/// `N` crops, eight heads of `hd = d / 8` channels (even).
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn attend_n<const N: usize>(qkv: &[f32], d: usize, out: &mut [f32]) {
    let hd = d / 8;
    let scale = _mm256_set1_ps(1.0 / (hd as f32).sqrt());
    let one = _mm256_set1_ps(1.0);
    let (p, op) = (qkv.as_ptr(), out.as_mut_ptr());
    // SAFETY (all loads and stores): row `i < N` of q, k, v at `i·3d`, `+d`, `+2d`; channel pair
    // `c, c + 1 < hd` at `c·8 .. c·8 + 16 <= d`; output rows `i·d`, same columns.
    unsafe {
        let mut w = [[_mm256_setzero_ps(); N]; N];
        for (i, wi) in w.iter_mut().enumerate() {
            let q = p.add(i * 3 * d);
            let mut acc = [_mm512_setzero_ps(); N];
            for c in (0..hd).step_by(2) {
                let qv = _mm512_loadu_ps(q.add(c * 8));
                for (j, a) in acc.iter_mut().enumerate() {
                    let k = _mm512_loadu_ps(p.add(j * 3 * d + d + c * 8));
                    *a = _mm512_fmadd_ps(qv, k, *a);
                }
            }
            for (s, a) in wi.iter_mut().zip(acc) {
                let hi = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a));
                *s = _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(hi));
            }
        }
        for wi in w.iter_mut() {
            let mut max = wi[0];
            for a in &wi[1..] {
                max = _mm256_max_ps(max, *a);
            }
            for a in wi.iter_mut() {
                *a = _mm256_mul_ps(_mm256_sub_ps(*a, max), scale);
            }
        }
        // The exponentials, two crops' eight heads per 16-lane register: they are most of the
        // work here.
        let flat: &mut [__m256] = w.as_flattened_mut();
        let mut pairs = flat.chunks_exact_mut(2);
        for pair in &mut pairs {
            let both = _mm512_insertf64x4::<1>(
                _mm512_castpd256_pd512(_mm256_castps_pd(pair[0])),
                _mm256_castps_pd(pair[1]),
            );
            let e = _mm512_castps_pd(exp16(_mm512_castpd_ps(both)));
            pair[0] = _mm256_castpd_ps(_mm512_castpd512_pd256(e));
            pair[1] = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(e));
        }
        for last in pairs.into_remainder() {
            *last = exp8(*last);
        }
        for wi in w.iter_mut() {
            let mut sum = _mm256_setzero_ps();
            for a in wi.iter() {
                sum = _mm256_add_ps(sum, *a);
            }
            let inv = _mm256_div_ps(one, sum);
            for a in wi.iter_mut() {
                *a = _mm256_mul_ps(*a, inv);
            }
        }
        for (i, wi) in w.iter().enumerate() {
            // Each crop's eight weights on both halves, for a pair of channels at a time.
            let wide: [__m512; N] = std::array::from_fn(|j| {
                _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(wi[j])))
            });
            for c in (0..hd).step_by(2) {
                let col = c * 8;
                let mut acc = _mm512_setzero_ps();
                for (j, a) in wide.iter().enumerate() {
                    let v = _mm512_loadu_ps(p.add(j * 3 * d + 2 * d + col));
                    acc = _mm512_fmadd_ps(*a, v, acc);
                }
                _mm512_storeu_ps(op.add(i * d + col), acc);
            }
        }
    }
}

/// [`super::avx2::exp8`] on sixteen lanes, operation for operation (the same bits per lane).
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn exp16(x: __m512) -> __m512 {
    let c = _mm512_set1_ps;
    let (mul, add, sub) = (_mm512_mul_ps, _mm512_add_ps, _mm512_sub_ps);
    use crate::simd::exp_consts::{LN2_HI, LN2_LO, POLY, ROUND};
    let x = _mm512_max_ps(_mm512_min_ps(x, c(88.0)), c(-87.0));
    let t = add(mul(x, c(std::f32::consts::LOG2_E)), c(ROUND));
    let k = sub(t, c(ROUND));
    let r = add(sub(x, mul(k, c(LN2_HI))), mul(k, c(LN2_LO)));
    let mut p = c(POLY[0]);
    for &coef in &POLY[1..] {
        p = add(mul(p, r), c(coef));
    }
    let e = add(add(mul(mul(p, r), r), r), c(1.0));
    let ki = _mm512_sub_epi32(
        _mm512_castps_si512(t),
        _mm512_set1_epi32(ROUND.to_bits() as i32),
    );
    let pow2 = _mm512_slli_epi32::<23>(_mm512_add_epi32(ki, _mm512_set1_epi32(127)));
    mul(e, _mm512_castsi512_ps(pow2))
}
