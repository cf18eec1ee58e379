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

    /// One attention head's keys `(keys, hd)`, row-major, as the weight of the scores `S = Q·Kᵀ`:
    /// `n` is `keys` rounded up to a whole panel (zero keys after the last), `k` is `hd`.
    pub(crate) fn keys(kh: &[f32], keys: usize, hd: usize) -> Option<Self> {
        assert_eq!(kh.len(), keys * hd, "keys are (keys, hd)");
        if !crate::small_gemm::available() || keys == 0 || hd == 0 {
            return None;
        }
        let n = keys.next_multiple_of(PANEL);
        let mut data = vec![0f32; n * hd];
        for (j, row) in kh.chunks_exact(hd).enumerate() {
            let (p, lane) = (j / PANEL, j % PANEL);
            for (c, v) in row.iter().enumerate() {
                data[(p * hd + c) * PANEL + lane] = *v;
            }
        }
        Some(Self { data, n, k: hd })
    }

    /// One attention head's values `(keys, hd)`, row-major, as the weight of `O = P·V` (the
    /// weight is `Vᵀ`): `n` is `hd` rounded up to a whole panel (zero columns after the last), `k`
    /// is `keys`. Panel `p` at key `j` holds `V[j, 16p .. 16p + 16]`.
    pub(crate) fn values(vh: &[f32], keys: usize, hd: usize) -> Option<Self> {
        assert_eq!(vh.len(), keys * hd, "values are (keys, hd)");
        if !crate::small_gemm::available() || keys == 0 || hd == 0 {
            return None;
        }
        let n = hd.next_multiple_of(PANEL);
        let mut data = vec![0f32; n * keys];
        for (j, row) in vh.chunks_exact(hd).enumerate() {
            for (p, cols) in row.chunks(PANEL).enumerate() {
                data[(p * keys + j) * PANEL..][..cols.len()].copy_from_slice(cols);
            }
        }
        Some(Self { data, n, k: keys })
    }

    /// `out (m, n) = x[.., ..k] · W[.., ..k]ᵀ` on the columns of panels `ps` only (the rest of
    /// `out` is left as it was), for the first `k` channels of `x`'s rows, which are `kx` apart.
    /// Each output is one FMA chain over its `k` channels in order, as in [`Self::apply`].
    pub(crate) fn apply_prefix(
        &self,
        x: &[f32],
        (kx, k): (usize, usize),
        ps: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        let n = self.n;
        let m = out.len() / n;
        assert!(
            k <= kx && k <= self.k && out.len() == m * n && ps.end <= n / PANEL,
            "out (m, {n}), k = {k} of at most {} and of a row stride {kx}, panels {ps:?}",
            self.k
        );
        if m == 0 || ps.is_empty() {
            return;
        }
        assert!(x.len() >= (m - 1) * kx + k, "x holds {m} rows {kx} apart");
        let (shape, strides, out) = ((m, k, n), (kx, self.k), out.as_mut_ptr());
        #[cfg(target_arch = "x86_64")]
        // SAFETY: panels exist only where AVX2/FMA are available, and the AVX-512 tiles run only
        // where `avx512_available` found AVX-512F; the shapes were asserted above.
        unsafe {
            if crate::small_gemm::avx512_available() {
                avx512::apply_strided(x, &self.data, None, shape, strides, false, out, ps)
            } else {
                avx2::apply_strided(x, &self.data, None, shape, strides, false, out, ps)
            }
        }
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
        // SAFETY: as this function's, with `x` rows and panels `k` apart.
        unsafe { apply_strided(x, panels, bias, (m, k, n), (k, k), relu, out, ps) }
    }

    /// [`apply`] over the first `k` channels of rows `kx` apart and of panels `kp` channels long
    /// (`k ≤ kx`, `k ≤ kp`).
    ///
    /// # Safety
    /// As [`apply`]'s, with `x` `m × kx` and `panels` `n × kp`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn apply_strided(
        x: &[f32],
        panels: &[f32],
        bias: Option<&[f32]>,
        (m, k, n): (usize, usize, usize),
        (kx, kp): (usize, usize),
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
                    let at = Tile {
                        r,
                        p,
                        k,
                        kx,
                        kp,
                        n,
                        relu,
                    };
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
        /// Channels summed.
        k: usize,
        /// Row stride of `x`.
        kx: usize,
        /// Channels per panel.
        kp: usize,
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
        Tile {
            r,
            p,
            k,
            kx,
            kp,
            n,
            relu,
        }: Tile,
        out: *mut f32,
    ) {
        debug_assert!((r + R - 1) * kx + k <= x.len() && (p + 1) * PANEL * kp <= panels.len());
        let xp = x.as_ptr();
        let wp = panels.as_ptr().wrapping_add(p * kp * PANEL);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        // SAFETY: channel `c < k` of rows `r + i < m` and of panel `p`, all inside the slices.
        unsafe {
            for c in 0..k {
                let w0 = _mm256_loadu_ps(wp.add(c * PANEL));
                let w1 = _mm256_loadu_ps(wp.add(c * PANEL + 8));
                for (i, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_broadcast_ss(&*xp.add((r + i) * kx + c));
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
#[path = "panel_gemm_tests.rs"]
mod tests;
