//! [`super`]'s loops in 16-lane AVX-512 registers, chosen at run time where the CPU has AVX-512F
//! (`crate::small_gemm::avx512_available`):
//! - the elementwise loops (the softmax, SwiGLU, QuickGELU, the erf GELU, the residual add and
//!   RMSNorm) are the same Rust bodies compiled for 16 lanes, so the same bits: each output is
//!   computed alone, and each sum keeps its own interleaved lanes whatever the register width;
//! - the attention loops prefetch key and value rows [`AHEAD`] positions on;
//! - [`super::weighted_sum`]: each output is still one FMA chain over the positions in order, so
//!   the same bits as the AVX2 copy;
//! - [`super::scores`]: eight keys at a time per head; its sums are ordered differently from the
//!   AVX2 copy's (a few ulp apart), never differently from one call to the next.
//!
//! The workspace denies `unsafe`; like `simd.rs`, this file is the exception, for the intrinsics.

use std::arch::x86_64::*;

/// How many positions ahead the attention loops prefetch their key and value rows.
const AHEAD: usize = 32;

/// # Safety
/// AVX-512F; `out.len()` 16, 32, 48 or 64; every value row in bounds.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn weighted_sum(
    weights: &[f32],
    vc: &[f32],
    at: &[usize],
    offset: usize,
    out: &mut [f32],
) {
    // SAFETY (each arm): as this function's.
    unsafe {
        match out.len() / 16 {
            4 => wsum::<4>(weights, vc, at, offset, out),
            3 => wsum::<3>(weights, vc, at, offset, out),
            2 => wsum::<2>(weights, vc, at, offset, out),
            _ => wsum::<1>(weights, vc, at, offset, out),
        }
    }
}

/// [`super::scores`] with 16-lane products: eight keys at a time per head (eight independent
/// FMA chains), each key's 16 lanes folded to 8, then the AVX2 copy's horizontal reduction of
/// four keys at once. The sums' order differs from the AVX2 copy's (a few ulp), not from one
/// call to another.
///
/// # Safety
/// AVX-512F, AVX2 and FMA; `hd` a multiple of 16; every key row within `kc`; `q.len()` =
/// heads · `hd`, `out.len()` = heads · `at.len()`.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn scores(
    q: &[f32],
    hd: usize,
    kc: &[f32],
    at: &[usize],
    scale: f32,
    out: &mut [f32],
) {
    let (ctx, heads) = (at.len(), q.len() / hd);
    let octs = ctx / 8 * 8;
    let kp = kc.as_ptr();
    let mut p = 0;
    while p < octs {
        // SAFETY (all loads): rows are in bounds (caller), i + 16 <= hd.
        let rows: [*const f32; 8] = std::array::from_fn(|j| unsafe { kp.add(at[p + j]) });
        // The keys `AHEAD` positions on, whose rows often start a new cache block (a new page,
        // where the hardware prefetcher stops). A prefetch never faults.
        if p + AHEAD + 8 <= ctx {
            for j in 0..8 {
                let row = kp.wrapping_add(at[p + AHEAD + j]);
                for line in (0..hd).step_by(16) {
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(line).cast());
                }
            }
        }
        for g in 0..heads {
            let qg = unsafe { q.as_ptr().add(g * hd) };
            let mut acc = [_mm512_setzero_ps(); 8];
            for i in (0..hd).step_by(16) {
                let qv = unsafe { _mm512_loadu_ps(qg.add(i)) };
                for (a, row) in acc.iter_mut().zip(&rows) {
                    *a = _mm512_fmadd_ps(qv, unsafe { _mm512_loadu_ps(row.add(i)) }, *a);
                }
            }
            // 16 lanes → 8: the low half plus the high half.
            let half: [__m256; 8] = std::array::from_fn(|j| {
                let hi = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[j]));
                _mm256_add_ps(_mm512_castps512_ps256(acc[j]), _mm256_castpd_ps(hi))
            });
            for quad in 0..2 {
                let sums = super::avx2::scaled_sums4(&half[4 * quad..4 * quad + 4], scale);
                // SAFETY: g < heads and p + 4·quad + 4 <= ctx.
                unsafe { _mm_storeu_ps(out.as_mut_ptr().add(g * ctx + p + 4 * quad), sums) };
            }
        }
        p += 8;
    }
    // The last keys (fewer than eight): the AVX2 copy's dot products.
    for p in octs..ctx {
        let k = &kc[at[p]..at[p] + hd];
        for g in 0..heads {
            // SAFETY: AVX2 and FMA (caller); equal lengths.
            out[g * ctx + p] = unsafe { super::avx2::dot(&q[g * hd..(g + 1) * hd], k) } * scale;
        }
    }
}

/// [`weighted_sum`] over `N` 16-lane vectors, one broadcast weight per position.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn wsum<const N: usize>(
    weights: &[f32],
    vc: &[f32],
    at: &[usize],
    offset: usize,
    out: &mut [f32],
) {
    let mut acc = [_mm512_setzero_ps(); N];
    let ahead = at.get(AHEAD..).unwrap_or(&[]);
    for (i, (&p, &a)) in weights.iter().zip(at).enumerate() {
        if let Some(&next) = ahead.get(i) {
            let row = vc.as_ptr().wrapping_add(next + offset);
            for j in 0..N {
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(16 * j).cast());
            }
        }
        let pv = _mm512_set1_ps(p);
        // SAFETY: the row's N·16 values are in bounds (caller).
        let row = unsafe { vc.as_ptr().add(a + offset) };
        for (j, s) in acc.iter_mut().enumerate() {
            *s = _mm512_fmadd_ps(pv, unsafe { _mm512_loadu_ps(row.add(16 * j)) }, *s);
        }
    }
    for (j, s) in acc.iter().enumerate() {
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * j), *s) };
    }
}

elementwise_copies!("avx512f,avx2,fma");
