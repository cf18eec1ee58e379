//! `y = x · Wᵀ + b` on one thread for the router's narrow layers (`k` and `n` of 64–512), with the
//! weight packed once, at load time, into 16-column panels.
//!
//! The `gemm` crate packs both operands on every call, which for a 256 × 64 × 64 product is a
//! large share of the work. Here the weight is already in the order the kernel reads it: panel `p`
//! holds, for each input channel, the 16 weights of outputs `16p .. 16p + 16`. A register tile of
//! 6 rows × 16 outputs keeps twelve 8-lane FMA accumulators busy with two weight loads and six
//! broadcasts per channel. The bias (and a ReLU) are applied as the tile is stored, so the output
//! is written once and never needs zeroing.
//!
//! [`Panels::apply_par`] runs the same tiles on the rayon pool for the decoder's projections,
//! each task a contiguous range of panels (one sequential stream of weights), rows in chunks
//! that stay in L2 while the task's panels are reused from L1. Every output is one FMA chain over
//! `k` in channel order, whatever the row count or the tile a row lands in, so a sequence's
//! projections give the same bits alone or batched with others.
//!
//! x86-64 with AVX2 and FMA only (checked at run time); [`Panels::new`] returns `None` elsewhere,
//! or when `n` is not a multiple of 16, and the caller keeps the `gemm` crate. Where the CPU has
//! AVX-512F the same tiles run 16 lanes wide (`panel_gemm_avx512.rs`, same bits; `GRAIN_AVX512=off`
//! keeps the AVX2 ones).
//!
//! The workspace denies `unsafe`; this module is the exception, for the SIMD intrinsics.
#![allow(unsafe_code)]

/// Outputs per panel: two 8-lane registers.
const PANEL: usize = 16;

/// Rows per chunk in [`Panels::apply_par`]: a chunk of activations (48 × k) stays in L2 while a
/// task's panels pass over it.
const ROW_CHUNK: usize = 48;

/// Below this many multiply-adds [`Panels::apply_par`] runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 17;

/// The output pointer shared by [`Panels::apply_par`]'s tasks, which write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint column ranges of one output buffer that outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A weight `(n, k)` packed into `n / 16` panels of `k × 16`.
pub(crate) struct Panels {
    data: Vec<f32>,
    n: usize,
    k: usize,
}

impl Panels {
    /// Packs a row-major `(n, k)` weight, or `None` where this kernel cannot run.
    pub(crate) fn new(w: &[f32], n: usize, k: usize) -> Option<Self> {
        assert_eq!(w.len(), n * k, "weight is not n × k");
        if !crate::small_gemm::available() || !n.is_multiple_of(PANEL) || n == 0 || k == 0 {
            return None;
        }
        let mut data = vec![0f32; n * k];
        for p in 0..n / PANEL {
            for c in 0..k {
                for j in 0..PANEL {
                    data[(p * k + c) * PANEL + j] = w[(p * PANEL + j) * k + c];
                }
            }
        }
        Some(Self { data, n, k })
    }

    /// `out (m, n) = x (m, k) · Wᵀ (+ bias)`, then `max(0, ·)` when `relu`. Every element of
    /// `out` is written.
    pub(crate) fn apply(&self, x: &[f32], bias: Option<&[f32]>, relu: bool, out: &mut [f32]) {
        let (m, k, n) = self.shape_of(x, bias, out);
        let all = 0..n / PANEL;
        // SAFETY: shapes asserted above; `out` is ours alone.
        unsafe { self.tiles(x, bias, (m, k, n), relu, out.as_mut_ptr(), all) };
    }

    /// Panels `ps` against every row of `x`, with the widest tiles the CPU runs.
    ///
    /// # Safety
    /// `x` `m × k`, `bias` `n`, `out` valid for `m × n` writes with nothing else touching the
    /// columns of panels `ps`.
    unsafe fn tiles(
        &self,
        x: &[f32],
        bias: Option<&[f32]>,
        shape: (usize, usize, usize),
        relu: bool,
        out: *mut f32,
        ps: std::ops::Range<usize>,
    ) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `new` only builds panels where AVX2/FMA are available, and the AVX-512 tiles
        // run only where `avx512_available` found AVX-512F; the caller vouches for the shapes.
        unsafe {
            if crate::small_gemm::avx512_available() {
                avx512::apply(x, &self.data, bias, shape, relu, out, ps)
            } else {
                avx2::apply(x, &self.data, bias, shape, relu, out, ps)
            }
        }
    }

    /// `(m, k, n)` of a product, after asserting that `x` is `(m, k)`, `out` `(m, n)` and the
    /// bias `n` long.
    fn shape_of(&self, x: &[f32], bias: Option<&[f32]>, out: &[f32]) -> (usize, usize, usize) {
        let (n, k) = (self.n, self.k);
        let m = x.len() / k;
        assert!(
            x.len() == m * k && out.len() == m * n && bias.is_none_or(|b| b.len() == n),
            "x (m, {k}), out (m, {n}) and a bias of {n}"
        );
        (m, k, n)
    }

    /// Output width `n`.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    /// Input width `k`.
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// [`Self::apply`] (no ReLU) split over the rayon pool by contiguous panel ranges, for the
    /// decoder's projections; small products stay on the calling thread.
    pub(crate) fn apply_par(&self, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
        let (m, k, n) = self.shape_of(x, bias, out);
        let threads = rayon::current_num_threads();
        if m * n * k < PARALLEL_MIN_MACS || threads < 2 {
            return self.apply(x, bias, false, out);
        }
        let panels = n / PANEL;
        let per = panels.div_ceil((4 * threads).min(panels));
        let dst = OutPtr(out.as_mut_ptr());
        use rayon::prelude::*;
        (0..panels.div_ceil(per)).into_par_iter().for_each(|t| {
            let range = t * per..((t + 1) * per).min(panels);
            // SAFETY: shapes asserted above; each task writes only the columns of its own
            // panels, and `out` outlives the parallel loop.
            unsafe { self.tiles(x, bias, (m, k, n), false, dst.get(), range) };
        });
    }
}

#[cfg(target_arch = "x86_64")]
#[path = "panel_gemm_avx512.rs"]
mod avx512;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{PANEL, ROW_CHUNK};

    /// Panels `ps` against every row: rows in chunks of [`ROW_CHUNK`], each chunk through the
    /// panels in turn, six rows per tile.
    ///
    /// # Safety
    /// AVX2 and FMA; `x` `m × k`, `panels` `n × k`, `bias` `n`, `out` valid for `m × n` writes
    /// with nothing else touching the columns of panels `ps`, `n % 16 == 0`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn apply(
        x: &[f32],
        panels: &[f32],
        bias: Option<&[f32]>,
        (m, k, n): (usize, usize, usize),
        relu: bool,
        out: *mut f32,
        ps: std::ops::Range<usize>,
    ) {
        let mut chunk = 0;
        while chunk < m {
            let end = (chunk + ROW_CHUNK).min(m);
            for p in ps.clone() {
                let mut r = chunk;
                while r < end {
                    let rows = tile_rows(end - r);
                    let at = Tile { r, p, k, n, relu };
                    // SAFETY: AVX2/FMA enabled; rows `r..r+rows` and panel `p` are in bounds.
                    unsafe {
                        match rows {
                            6 => tile::<6>(x, panels, bias, at, out),
                            5 => tile::<5>(x, panels, bias, at, out),
                            4 => tile::<4>(x, panels, bias, at, out),
                            3 => tile::<3>(x, panels, bias, at, out),
                            2 => tile::<2>(x, panels, bias, at, out),
                            _ => tile::<1>(x, panels, bias, at, out),
                        }
                    }
                    r += rows;
                }
            }
            chunk = end;
        }
    }

    /// Rows for the next tile when `left` rows remain: six, except that the last tiles share
    /// what is left evenly (8 rows as 4 + 4, not 6 + 2), since a tile of one or two rows keeps
    /// too few accumulators busy to hide the FMA latency.
    fn tile_rows(left: usize) -> usize {
        let tiles = left.div_ceil(6);
        left.div_ceil(tiles)
    }

    #[derive(Clone, Copy)]
    struct Tile {
        r: usize,
        p: usize,
        k: usize,
        n: usize,
        relu: bool,
    }

    /// Rows `r .. r + R` against panel `p`: `R × 16` outputs.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile<const R: usize>(
        x: &[f32],
        panels: &[f32],
        bias: Option<&[f32]>,
        Tile { r, p, k, n, relu }: Tile,
        out: *mut f32,
    ) {
        debug_assert!((r + R) * k <= x.len() && (p + 1) * PANEL * k <= panels.len());
        let xp = x.as_ptr();
        let wp = panels.as_ptr().wrapping_add(p * k * PANEL);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        // SAFETY: channel `c < k` of rows `r + i < m` and of panel `p`, all inside the slices.
        unsafe {
            for c in 0..k {
                let w0 = _mm256_loadu_ps(wp.add(c * PANEL));
                let w1 = _mm256_loadu_ps(wp.add(c * PANEL + 8));
                for (i, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_broadcast_ss(&*xp.add((r + i) * k + c));
                    a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
                    a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
                }
            }
            let (b0, b1) = match bias {
                Some(b) => (
                    _mm256_loadu_ps(b.as_ptr().add(p * PANEL)),
                    _mm256_loadu_ps(b.as_ptr().add(p * PANEL + 8)),
                ),
                None => (_mm256_setzero_ps(), _mm256_setzero_ps()),
            };
            let zero = _mm256_setzero_ps();
            for (i, a) in acc.iter().enumerate() {
                let mut v0 = _mm256_add_ps(a[0], b0);
                let mut v1 = _mm256_add_ps(a[1], b1);
                if relu {
                    v0 = _mm256_max_ps(v0, zero);
                    v1 = _mm256_max_ps(v1, zero);
                }
                let o = out.add((r + i) * n + p * PANEL);
                _mm256_storeu_ps(o, v0);
                _mm256_storeu_ps(o.add(8), v1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::values;

    #[test]
    fn matches_an_f64_product_on_every_row_remainder() {
        for (n, k) in [(16usize, 1usize), (64, 64), (192, 64), (32, 37), (48, 20)] {
            let w = values(n * k, (n + k) as u64, 1.0);
            let Some(panels) = Panels::new(&w, n, k) else {
                return; // No AVX2/FMA: callers keep the gemm crate.
            };
            let bias = values(n, 7, 1.0);
            for m in [1usize, 2, 3, 4, 5, 6, 7, 8, 9, 13, 17, 256] {
                let x = values(m * k, (m * 31 + k) as u64, 1.0);
                for (relu, with_bias) in [(false, false), (false, true), (true, true)] {
                    let mut got = vec![f32::NAN; m * n];
                    panels.apply(&x, with_bias.then_some(&bias[..]), relu, &mut got);
                    for r in 0..m {
                        for j in 0..n {
                            let mut s = if with_bias { bias[j] as f64 } else { 0.0 };
                            for c in 0..k {
                                s += x[r * k + c] as f64 * w[j * k + c] as f64;
                            }
                            let want = if relu { s.max(0.0) } else { s } as f32;
                            let g = got[r * n + j];
                            // f32 sums of k products of values in [-1, 1).
                            assert!(
                                (g - want).abs() <= 1e-6 * (k + 1) as f32,
                                "n={n} k={k} m={m} relu={relu} [{r},{j}]: {g} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The AVX-512 tiles against the AVX2 ones, bit for bit, on odd panel counts and every row
    /// remainder of both tile heights.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_tiles_give_the_avx2_bits() {
        if !std::is_x86_feature_detected!("avx512f") {
            return; // Nothing to compare on this CPU.
        }
        for (n, k) in [(16usize, 5usize), (48, 64), (80, 33), (192, 64)] {
            let w = values(n * k, (n * k) as u64, 1.0);
            let Some(panels) = Panels::new(&w, n, k) else {
                return;
            };
            let bias = values(n, 3, 1.0);
            for m in [1usize, 2, 7, 8, 9, 15, 16, 17, 48, 49, 100] {
                let x = values(m * k, (m + 7 * k) as u64, 2.0);
                for relu in [false, true] {
                    let mut wide = vec![f32::NAN; m * n];
                    let mut narrow = vec![f32::NAN; m * n];
                    let shape = (m, k, n);
                    // SAFETY: AVX-512F and AVX2/FMA detected; shapes as asserted by `apply`.
                    unsafe {
                        avx512::apply(
                            &x,
                            &panels.data,
                            Some(&bias),
                            shape,
                            relu,
                            wide.as_mut_ptr(),
                            0..n / PANEL,
                        );
                        avx2::apply(
                            &x,
                            &panels.data,
                            Some(&bias),
                            shape,
                            relu,
                            narrow.as_mut_ptr(),
                            0..n / PANEL,
                        );
                    }
                    let same = wide
                        .iter()
                        .zip(&narrow)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "n={n} k={k} m={m} relu={relu}");
                }
            }
        }
    }

    #[test]
    fn widths_that_are_not_panels_keep_the_fallback() {
        assert!(Panels::new(&[0.0; 24 * 3], 24, 3).is_none());
    }
}

/// Side-by-side timing of this kernel and the `gemm` crate on the router's shapes, run by hand:
/// `cargo test --release -p grain-model --lib panel_gemm::speed -- --ignored --nocapture`.
#[cfg(test)]
mod speed {
    use crate::test_util::best_of;

    #[test]
    #[ignore = "a measurement, run by hand"]
    fn against_gemm_crate() {
        for (m, k, n) in [
            (256usize, 64usize, 64usize),
            (155, 64, 64),
            (80, 64, 192),
            (256, 64, 192),
            (256, 512, 512),
        ] {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919) % 1000) as f32 / 1e3 - 0.5)
                .collect();
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5)
                .collect();
            let Some(p) = super::Panels::new(&w, n, k) else {
                return;
            };
            let mut y = vec![0f32; m * n];
            let ours = best_of(200, || p.apply(&x, None, false, &mut y));
            let mut z = vec![0f32; m * n];
            let theirs = best_of(200, || {
                crate::host_dense::matmul_serial(&x, &w, (m, k, n), (1, k), &mut z)
            });
            let gf = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e9;
            println!(
                "{m}x{k}x{n}: panels {:.1} µs {:.1} GFLOP/s | gemm {:.1} µs {:.1} GFLOP/s",
                ours * 1e6,
                gf(ours),
                theirs * 1e6,
                gf(theirs)
            );
        }
    }

    /// The decoder's shapes on the rayon pool: [`super::Panels::apply_par`] against candle's
    /// matmul (the `gemm` crate, parallel), with `m` rows from a decode step to a long prefill.
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn decoder_shapes_against_candle() {
        use candle_core::{Device, Tensor};
        for (k, n) in [(512usize, 2752usize), (1376, 512)] {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919) % 1000) as f32 / 1e3 - 0.5)
                .collect();
            let Some(p) = super::Panels::new(&w, n, k) else {
                return;
            };
            let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
            for m in [8usize, 16, 78, 1170, 2985] {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5)
                    .collect();
                let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
                let mut y = vec![0f32; m * n];
                let ours = best_of(10, || p.apply_par(&x, None, &mut y));
                let candle = best_of(10, || {
                    xt.matmul(&wt.t().unwrap()).unwrap();
                });
                let gf = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e9;
                println!(
                    "{m:>5}x{k}x{n}: panels {:.1} GFLOP/s | candle {:.1} GFLOP/s",
                    gf(ours),
                    gf(candle)
                );
            }
        }
    }
}
