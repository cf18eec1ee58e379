//! `y = x · Wᵀ` for the few-row shapes of decoding, on the CPU in f32.
//!
//! A decode step multiplies 1–32 activation rows by every projection of the model. candle's CPU
//! matmul (the `gemm` crate) packs the weight into panels on every call, which is the right trade
//! for hundreds of rows and the wrong one for a handful: a 16-row step then costs about five 1-row
//! steps (`examples/linear_shapes.rs`). This kernel instead reads the weight in its stored layout
//! (`(out, in)` row-major, what a `Linear` holds) once per call for all rows: each weight row is a
//! contiguous dot-product operand, and a register tile of 4 activation rows × 3 weight rows keeps
//! twelve 8-lane FMA accumulators busy while the three weight vectors are reused by all four rows.
//!
//! x86-64 with AVX2 and FMA only (checked at run time); elsewhere [`matmul_xwt`] returns `false`
//! and the caller falls back to candle.
//!
//! The workspace denies `unsafe`; this module is the exception, for the SIMD intrinsics (raw
//! pointer loads) and the AVX2/FMA functions that may only run once the CPU was checked.
#![allow(unsafe_code)]

use rayon::prelude::*;

/// Rows up to which the caller should prefer this kernel over candle's matmul.
pub(crate) const MAX_ROWS: usize = 32;

/// Output neurons per parallel task (a multiple of the tile's 3).
const NEURONS_PER_TASK: usize = 48;

/// Below this many multiply-adds a call runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 17;

/// Whether [`matmul_xwt`] (and the AVX2 loops of [`crate::simd`]) can run on this CPU.
/// `GRAIN_SMALL_GEMM=off` in the environment turns them all off (candle's matmul and the portable
/// attention loops), for side-by-side measurements.
pub(crate) fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let wanted = std::env::var("GRAIN_SMALL_GEMM").map_or(true, |v| v != "off");
        wanted && cpu_supported()
    })
}

/// Whether the AVX-512 kernels run ([`crate::panel_gemm`]'s tiles, [`crate::simd`]'s elementwise
/// loops): [`available`], the CPU has AVX-512F, and `GRAIN_AVX512=off` is not set (for
/// side-by-side runs against the AVX2 code).
pub(crate) fn avx512_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let wanted = std::env::var("GRAIN_AVX512").map_or(true, |v| v != "off");
            wanted && available() && std::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

fn cpu_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `y (m × n) = x (m × k) · wᵀ` with `w` of shape `(n × k)`, all row-major, plus `bias` (length
/// `n`) on every row when given. Returns `false` (and leaves `y` untouched) where the CPU lacks
/// AVX2/FMA.
pub(crate) fn matmul_xwt(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    (m, n, k): (usize, usize, usize),
    y: &mut [f32],
) -> bool {
    assert_eq!(x.len(), m * k, "x is not m × k");
    assert_eq!(w.len(), n * k, "w is not n × k");
    assert_eq!(y.len(), m * n, "y is not m × n");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias is not n long");
    }
    if !available() || m == 0 || n == 0 {
        return available();
    }
    // Tasks own disjoint neuron ranges; each writes its part transposed (neuron-major), so the
    // output slices are contiguous and no unsafe sharing is needed. One row needs no transpose.
    let task = |(ti, out): (usize, &mut [f32])| {
        let n0 = ti * NEURONS_PER_TASK;
        let nn = out.len() / m;
        let wt = &w[n0 * k..(n0 + nn) * k];
        // SAFETY: `available()` checked AVX2 and FMA above.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx2::block(x, wt, (m, nn, k), out)
        };
        if let Some(b) = bias {
            for (j, col) in out.chunks_mut(m).enumerate() {
                col.iter_mut().for_each(|v| *v += b[n0 + j]);
            }
        }
    };
    let chunk = NEURONS_PER_TASK * m;
    if m == 1 {
        if m * n * k >= PARALLEL_MIN_MACS {
            y.par_chunks_mut(chunk).enumerate().for_each(task);
        } else {
            y.chunks_mut(chunk).enumerate().for_each(task);
        }
        return true;
    }
    let mut yt = vec![0f32; m * n];
    if m * n * k >= PARALLEL_MIN_MACS {
        yt.par_chunks_mut(chunk).enumerate().for_each(task);
    } else {
        yt.chunks_mut(chunk).enumerate().for_each(task);
    }
    for (j, col) in yt.chunks(m).enumerate() {
        for (r, v) in col.iter().enumerate() {
            y[r * n + j] = *v;
        }
    }
    true
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::simd::avx2::hsum;

    /// `out (nn × m, neuron-major) = (x · wᵀ)ᵀ` for `w` of `nn` rows: tiles of 4 rows × 3
    /// neurons, then the leftover rows and neurons with smaller tiles.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block(
        x: &[f32],
        w: &[f32],
        (m, nn, k): (usize, usize, usize),
        out: &mut [f32],
    ) {
        let mut j = 0;
        while j < nn {
            let c = (nn - j).min(3);
            let mut r = 0;
            while r < m {
                let rows = (m - r).min(4);
                // SAFETY: AVX2/FMA are enabled for this function; indices are within bounds.
                unsafe {
                    match (rows, c) {
                        (4, 3) => tile::<4, 3>(x, w, (r, j, k, m), out),
                        (4, 2) => tile::<4, 2>(x, w, (r, j, k, m), out),
                        (4, 1) => tile::<4, 1>(x, w, (r, j, k, m), out),
                        (3, 3) => tile::<3, 3>(x, w, (r, j, k, m), out),
                        (3, 2) => tile::<3, 2>(x, w, (r, j, k, m), out),
                        (3, 1) => tile::<3, 1>(x, w, (r, j, k, m), out),
                        (2, 3) => tile::<2, 3>(x, w, (r, j, k, m), out),
                        (2, 2) => tile::<2, 2>(x, w, (r, j, k, m), out),
                        (2, 1) => tile::<2, 1>(x, w, (r, j, k, m), out),
                        (1, 3) => tile::<1, 3>(x, w, (r, j, k, m), out),
                        (1, 2) => tile::<1, 2>(x, w, (r, j, k, m), out),
                        _ => tile::<1, 1>(x, w, (r, j, k, m), out),
                    }
                }
                r += rows;
            }
            j += c;
        }
    }

    /// Rows `r0..r0+R` of `x` against weight rows `j0..j0+C`: `R × C` dot products of length `k`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile<const R: usize, const C: usize>(
        x: &[f32],
        w: &[f32],
        (r0, j0, k, m): (usize, usize, usize, usize),
        out: &mut [f32],
    ) {
        let xs: [&[f32]; R] = std::array::from_fn(|i| &x[(r0 + i) * k..(r0 + i + 1) * k]);
        let ws: [&[f32]; C] = std::array::from_fn(|c| &w[(j0 + c) * k..(j0 + c + 1) * k]);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let lanes = k / 8 * 8;
        let mut p = 0;
        while p < lanes {
            // SAFETY: p + 8 <= k for every row slice.
            let wv: [__m256; C] =
                std::array::from_fn(|c| unsafe { _mm256_loadu_ps(ws[c].as_ptr().add(p)) });
            for i in 0..R {
                let xv = unsafe { _mm256_loadu_ps(xs[i].as_ptr().add(p)) };
                for c in 0..C {
                    acc[i][c] = _mm256_fmadd_ps(xv, wv[c], acc[i][c]);
                }
            }
            p += 8;
        }
        for i in 0..R {
            for c in 0..C {
                let mut s = hsum(acc[i][c]);
                for q in lanes..k {
                    s += xs[i][q] * ws[c][q];
                }
                out[(j0 + c) * m + r0 + i] = s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::values;

    fn reference(
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        (m, n, k): (usize, usize, usize),
    ) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                // f64 accumulation: an independent, more precise reference.
                let mut s = 0f64;
                for q in 0..k {
                    s += x[r * k + q] as f64 * w[j * k + q] as f64;
                }
                y[r * n + j] = (s + bias.map_or(0.0, |b| b[j] as f64)) as f32;
            }
        }
        y
    }

    #[test]
    fn matches_a_plain_dot_product_on_every_tile_remainder() {
        if !available() {
            return; // Nothing to test: callers use candle here.
        }
        // Rows 1..=9 hit every row tile; neurons 1, 2, 3, 50 and 97 every neuron tile and task
        // split; k 5, 8, 37 and 512 the lane tail.
        for m in [1usize, 2, 3, 4, 5, 7, 9, 16, 32] {
            for n in [1usize, 2, 3, 50, 97] {
                for k in [5usize, 8, 37, 512] {
                    let x = values(m * k, (m * 131 + n * 7 + k) as u64, 1.0);
                    let w = values(n * k, (n * 17 + k) as u64, 1.0);
                    let b = values(n, n as u64 + 3, 1.0);
                    for bias in [None, Some(b.as_slice())] {
                        let mut y = vec![f32::NAN; m * n];
                        assert!(matmul_xwt(&x, &w, bias, (m, n, k), &mut y));
                        let want = reference(&x, &w, bias, (m, n, k));
                        // f32 sums of k products of values in [-1, 1): |error| ≤ ~k·ε·max|term|.
                        let tol = 1e-6 * k as f32 + 1e-6;
                        for (got, want) in y.iter().zip(&want) {
                            assert!(
                                (got - want).abs() <= tol,
                                "m={m} n={n} k={k}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn large_calls_take_the_parallel_path_and_still_agree() {
        if !available() {
            return;
        }
        let (m, n, k) = (16, 1376, 512);
        assert!(m * n * k >= PARALLEL_MIN_MACS);
        let x = values(m * k, 1, 1.0);
        let w = values(n * k, 2, 1.0);
        let mut y = vec![0f32; m * n];
        assert!(matmul_xwt(&x, &w, None, (m, n, k), &mut y));
        let want = reference(&x, &w, None, (m, n, k));
        let worst = y
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-6 * k as f32, "max |error| {worst}");
    }
}
/// Side-by-side timing of this kernel and candle's matmul at decode and prefill row counts, run
/// by hand (it asserts only that both agree):
/// `cargo test --release -p grain-model --lib small_gemm::speed -- --ignored --nocapture`
/// (`RAYON_NUM_THREADS=1` for one core).
#[cfg(test)]
mod speed {
    use candle_core::{Device, Tensor};

    use crate::test_util::best_of;

    #[test]
    #[ignore = "a measurement, run by hand"]
    fn against_candle() {
        if !super::available() {
            return;
        }
        for (n, k) in [(1376usize, 512usize), (512, 1376)] {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919) % 1000) as f32 / 1e3 - 0.5)
                .collect();
            let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
            for m in [1usize, 4, 16, 32, 64, 128, 512] {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5)
                    .collect();
                let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
                let mut y = vec![0f32; m * n];
                let ours = best_of(30, || {
                    super::matmul_xwt(&x, &w, None, (m, n, k), &mut y);
                });
                let mut want =
                    Tensor::zeros((m, n), candle_core::DType::F32, &Device::Cpu).unwrap();
                let candle = best_of(30, || want = xt.matmul(&wt.t().unwrap()).unwrap());
                let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let worst = y
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(worst < 1e-3, "{n}x{k} m={m}: max |diff| {worst}");
                let gf = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e9;
                println!(
                    "{n:>5}x{k:<5} rows {m:>4}: small_gemm {:>8.3} ms {:>6.1} GFLOP/s | candle {:>8.3} ms {:>6.1} GFLOP/s",
                    ours * 1e3, gf(ours), candle * 1e3, gf(candle)
                );
            }
        }
    }
}
