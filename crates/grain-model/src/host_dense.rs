//! Row-major `f32` building blocks on the host, shared by the CPU router, the host attention and
//! the host ops: a matrix product and dense layers that run on the calling thread, LayerNorm of
//! one row and a post-LN layer's residual add and LayerNorm over many rows, the erf GELU, and
//! views of a CPU tensor's values.
//!
//! [`matmul_serial`] calls the `gemm` crate (the kernel behind candle's CPU matmul) with
//! `Parallelism::None`. Callers parallelise over row blocks themselves: for the router's
//! products (hundreds of rows, 64–512 wide) candle's own split of one product over the rayon pool
//! cost more in hand-offs than it gained; on the 2-core build machine the tiny router took 19 ms
//! with two threads against 9.5 ms with one.

use candle_core::{DType, Storage, Tensor};

use crate::error::{ModelError, Result};
use crate::panel_gemm::Panels;
use crate::simd::{exp, lane_sum, tree8};

/// The `f32` values of a tensor, row-major (a copy).
pub(crate) fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

/// Run `f` on a contiguous CPU `f32` tensor's values without copying them.
pub(crate) fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| ModelError::Input("host: non-contiguous tensor".into()))?;
    match &*storage {
        Storage::Cpu(s) => Ok(f(&s.as_slice::<f32>()?[a..b])),
        _ => Err(ModelError::Input("host: tensor is not on the CPU".into())),
    }
}

/// A `Linear`'s `f32` weight and its bias, on the host.
pub(crate) struct DenseF32 {
    weight: Weight,
    pub bias: Vec<f32>,
    d_in: usize,
}

/// The weight in one layout only: packed into [`Panels`] where that kernel runs (AVX2/FMA, `out`
/// a multiple of 16), else `(out, in)` row-major for [`matmul_serial`].
enum Weight {
    Panels(Panels),
    RowMajor(Vec<f32>),
}

impl DenseF32 {
    pub(crate) fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        let (d_out, d_in) = weight.dims2()?;
        let w = to_f32_vec(weight)?;
        Ok(Self {
            weight: Panels::new(&w, d_out, d_in).map_or(Weight::RowMajor(w), Weight::Panels),
            bias: to_f32_vec(bias)?,
            d_in,
        })
    }

    pub(crate) fn d_in(&self) -> usize {
        self.d_in
    }

    pub(crate) fn d_out(&self) -> usize {
        self.bias.len()
    }

    /// `out (rows, out) = x (rows, in) · Wᵀ`, without the bias, on the calling thread.
    pub(crate) fn apply_into(&self, x: &[f32], out: &mut [f32]) {
        self.product(x, None, out);
    }

    /// `out = x · Wᵀ + bias`, then `max(0, ·)` when `relu`, on the calling thread.
    pub(crate) fn apply_biased(&self, x: &[f32], relu: bool, out: &mut [f32]) {
        self.product(x, Some((&self.bias, relu)), out);
    }

    fn product(&self, x: &[f32], epilogue: Option<(&[f32], bool)>, out: &mut [f32]) {
        let (d_in, d_out) = (self.d_in, self.d_out());
        let rows = x.len() / d_in;
        assert_eq!(x.len(), rows * d_in, "input rows are {d_in} wide");
        let w = match &self.weight {
            Weight::Panels(p) => {
                let (bias, relu) = epilogue.map_or((None, false), |(b, r)| (Some(b), r));
                p.apply(x, bias, relu, out);
                return;
            }
            Weight::RowMajor(w) => w,
        };
        // Wᵀ (in, out) read from W (out, in) row-major.
        matmul_serial(x, w, (rows, d_in, d_out), (1, d_in), out);
        if let Some((bias, relu)) = epilogue {
            for row in out.chunks_exact_mut(d_out) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v += b;
                    if relu {
                        *v = v.max(0.0);
                    }
                }
            }
        }
    }
}

/// `dst (m, n) = a (m, k) · b` on the calling thread, `a` and `dst` row-major, `b` `(k, n)` read
/// from `b` with row stride `b_rs` and column stride `b_cs`: `(n, 1)` for a row-major `b`,
/// `(1, k)` for the transpose of a row-major `(n, k)` matrix.
// The workspace denies `unsafe`; `gemm::gemm` takes raw pointers and strides, and this is its
// one call, with every bound asserted first.
#[allow(unsafe_code)]
pub(crate) fn matmul_serial(
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    (b_rs, b_cs): (usize, usize),
    dst: &mut [f32],
) {
    assert_eq!(a.len(), m * k, "a is (m, k)");
    assert_eq!(dst.len(), m * n, "dst is (m, n)");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst.fill(0.0);
        return;
    }
    assert!(
        (k - 1) * b_rs + (n - 1) * b_cs < b.len(),
        "b (k, n) out of bounds"
    );
    // SAFETY: the asserts above bound every access: `dst` is `m × n` row-major (column stride 1,
    // row stride n), `a` is `m × k` row-major, and every element `(i, j)` of `b` read, at
    // `i·b_rs + j·b_cs`, lies inside `b`. `read_dst` is false, so `dst` is only written.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// A LayerNorm's `f32` scale, shift and epsilon.
pub(crate) struct NormF32 {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    eps: f32,
}

impl NormF32 {
    /// With PyTorch's default epsilon, 1e-5 (the router's norms).
    pub(crate) fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        Ok(Self {
            weight: to_f32_vec(weight)?,
            bias: to_f32_vec(bias)?,
            eps: 1e-5,
        })
    }

    pub(crate) fn with_eps(self, eps: f32) -> Self {
        Self { eps, ..self }
    }

    /// `y ← LayerNorm(x)` for every row of `x` (rows as wide as the norm), in parallel over
    /// blocks of rows; each row as [`Self::apply`] computes it.
    pub(crate) fn rows_into(&self, x: &[f32], y: &mut [f32]) {
        use rayon::prelude::*;
        let d = self.weight.len();
        assert!(
            x.len() == y.len() && x.len().is_multiple_of(d.max(1)),
            "x and y are rows of {d}"
        );
        if d == 0 {
            return;
        }
        let per_task = (NORM_TASK / d).max(1) * d;
        y.par_chunks_mut(per_task)
            .zip(x.par_chunks(per_task))
            .for_each(|(y, x)| {
                #[cfg(target_arch = "x86_64")]
                if crate::small_gemm::available() {
                    // SAFETY: `available()` checked AVX2 and FMA; equal lengths, whole rows.
                    #[allow(unsafe_code)]
                    return unsafe { avx2::norm_rows(self, x, y) };
                }
                norm_rows_body(self, x, y)
            });
    }

    /// [`Self::rows_into`] in place.
    pub(crate) fn rows_in_place(&self, x: &mut [f32]) {
        use rayon::prelude::*;
        let d = self.weight.len();
        assert!(x.len().is_multiple_of(d.max(1)), "x is rows of {d}");
        if d == 0 {
            return;
        }
        x.par_chunks_mut((NORM_TASK / d).max(1) * d).for_each(|x| {
            #[cfg(target_arch = "x86_64")]
            if crate::small_gemm::available() {
                // SAFETY: `available()` checked AVX2 and FMA; whole rows.
                #[allow(unsafe_code)]
                return unsafe { avx2::norm_rows_in_place(self, x) };
            }
            norm_rows_in_place_body(self, x)
        });
    }

    /// LayerNorm of one row in place (inlined, so the callers' AVX2 copies vectorise it too).
    #[inline(always)]
    pub(crate) fn apply(&self, row: &mut [f32]) {
        // Multiplies by 1/d instead of dividing: two fewer divisions on each row's serial chain.
        let inv_d = 1.0 / row.len() as f32;
        let mean = lane_sum(row) * inv_d;
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
        let var = (tree8(&dev) + tail) * inv_d;
        let inv = 1.0 / (var + self.eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }

    /// `x ← LayerNorm(x + h)` for every row of `x` (rows as wide as the norm): a post-LN layer's
    /// residual add and norm. Where AVX2/FMA are available and the width is a multiple of 8,
    /// four rows go through each pass together, so their reductions, square root and division
    /// overlap instead of forming one serial chain per row; the operations per row are
    /// [`Self::apply`]'s, in the same order, so the results are the same bits.
    pub(crate) fn residual_rows(&self, x: &mut [f32], h: &[f32]) {
        let d = self.weight.len();
        assert!(
            x.len() == h.len() && x.len().is_multiple_of(d),
            "x and h are rows of {d}"
        );
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if d.is_multiple_of(8) && crate::small_gemm::available() {
            // SAFETY: `available()` checked AVX2 and FMA; lengths checked above.
            #[allow(unsafe_code)]
            {
                done = unsafe { avx2::residual_rows4(self, x, h) };
            }
        }
        for (xr, hr) in x[done..].chunks_exact_mut(d).zip(h[done..].chunks_exact(d)) {
            xr.iter_mut().zip(hr).for_each(|(x, h)| *x += h);
            self.apply(xr);
        }
    }
}

/// Values per task of [`NormF32::rows_into`] and [`NormF32::rows_in_place`].
const NORM_TASK: usize = 1 << 14;

/// [`NormF32::rows_into`] on the calling thread.
#[inline(always)]
fn norm_rows_body(n: &NormF32, x: &[f32], y: &mut [f32]) {
    let d = n.weight.len();
    for (yr, xr) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        yr.copy_from_slice(xr);
        n.apply(yr);
    }
}

/// [`NormF32::rows_in_place`] on the calling thread.
#[inline(always)]
fn norm_rows_in_place_body(n: &NormF32, x: &mut [f32]) {
    x.chunks_exact_mut(n.weight.len())
        .for_each(|row| n.apply(row));
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::NormF32;
    use crate::simd::avx2::hsum;

    /// # Safety
    /// AVX2 and FMA; `x` and `y` of equal length, whole rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn norm_rows(n: &NormF32, x: &[f32], y: &mut [f32]) {
        super::norm_rows_body(n, x, y)
    }

    /// # Safety
    /// AVX2 and FMA; whole rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn norm_rows_in_place(n: &NormF32, x: &mut [f32]) {
        super::norm_rows_in_place_body(n, x)
    }

    /// [`NormF32::residual_rows`] on whole groups of four rows; returns how many values it did.
    ///
    /// # Safety
    /// AVX2 and FMA; width a multiple of 8; `x` and `h` of equal length, whole rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn residual_rows4(n: &NormF32, x: &mut [f32], h: &[f32]) -> usize {
        let d = n.weight.len();
        let groups = x.len() / d / 4;
        let inv_d = 1.0 / d as f32;
        let (wp, bp) = (n.weight.as_ptr(), n.bias.as_ptr());
        for g in 0..groups {
            // SAFETY: rows `4g .. 4g + 4` and columns `c + 8 <= d` are inside `x` and `h`.
            unsafe {
                let xp = x.as_mut_ptr().add(4 * g * d);
                let hp = h.as_ptr().add(4 * g * d);
                let mut acc = [_mm256_setzero_ps(); 4];
                for c in (0..d).step_by(8) {
                    for (i, a) in acc.iter_mut().enumerate() {
                        let at = i * d + c;
                        let v =
                            _mm256_add_ps(_mm256_loadu_ps(xp.add(at)), _mm256_loadu_ps(hp.add(at)));
                        _mm256_storeu_ps(xp.add(at), v);
                        *a = _mm256_add_ps(*a, v);
                    }
                }
                let mean: [__m256; 4] =
                    std::array::from_fn(|i| _mm256_set1_ps(hsum(acc[i]) * inv_d));
                let mut dev = [_mm256_setzero_ps(); 4];
                for c in (0..d).step_by(8) {
                    for (i, a) in dev.iter_mut().enumerate() {
                        let v = _mm256_sub_ps(_mm256_loadu_ps(xp.add(i * d + c)), mean[i]);
                        *a = _mm256_add_ps(*a, _mm256_mul_ps(v, v));
                    }
                }
                let var = _mm_set_ps(hsum(dev[3]), hsum(dev[2]), hsum(dev[1]), hsum(dev[0]));
                let var = _mm_mul_ps(var, _mm_set1_ps(inv_d));
                let inv = _mm_div_ps(
                    _mm_set1_ps(1.0),
                    _mm_sqrt_ps(_mm_add_ps(var, _mm_set1_ps(n.eps))),
                );
                let mut lanes = [0f32; 4];
                _mm_storeu_ps(lanes.as_mut_ptr(), inv);
                let inv: [__m256; 4] = std::array::from_fn(|i| _mm256_set1_ps(lanes[i]));
                for c in (0..d).step_by(8) {
                    let (w, b) = (_mm256_loadu_ps(wp.add(c)), _mm256_loadu_ps(bp.add(c)));
                    for i in 0..4 {
                        let at = xp.add(i * d + c);
                        let v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(at), mean[i]), inv[i]);
                        _mm256_storeu_ps(at, _mm256_add_ps(_mm256_mul_ps(v, w), b));
                    }
                }
            }
        }
        groups * 4 * d
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
    fn residual_rows_give_the_bits_of_add_then_apply() {
        for (d, rows) in [(64usize, 11usize), (24, 9), (12, 5), (64, 0)] {
            let t = |v: Vec<f32>, shape| Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
            let norm = NormF32::new(
                &t(crate::test_util::values(d, 1, 2.0), d),
                &t(crate::test_util::values(d, 2, 1.0), d),
            )
            .unwrap();
            let x = crate::test_util::values(rows * d, 3, 5.0);
            let h = crate::test_util::values(rows * d, 4, 5.0);
            let mut want = x.clone();
            for (xr, hr) in want.chunks_exact_mut(d).zip(h.chunks_exact(d)) {
                xr.iter_mut().zip(hr).for_each(|(x, h)| *x += h);
                norm.apply(xr);
            }
            let mut got = x;
            norm.residual_rows(&mut got, &h);
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "d={d} rows={rows}: {got:?} vs {want:?}");
        }
    }
    use candle_core::Device;

    #[test]
    fn dense_matches_candles_matmul() {
        // Shapes that are not multiples of the kernels' tiles (192 outputs take the panel kernel
        // where the CPU has it, 5 and 33 the gemm crate), and an empty input.
        for (rows, d_in, d_out) in [(1, 3, 5), (37, 64, 192), (513, 70, 33), (0, 8, 8)] {
            let w = Tensor::randn(0f32, 1.0, (d_out, d_in), &Device::Cpu).unwrap();
            let b = Tensor::randn(0f32, 1.0, d_out, &Device::Cpu).unwrap();
            let x = Tensor::randn(0f32, 1.0, (rows, d_in), &Device::Cpu).unwrap();
            let dense = DenseF32::new(&w, &b).unwrap();
            let xv = to_f32_vec(&x).unwrap();
            let product = x.matmul(&w.t().unwrap()).unwrap();
            let biased = product.broadcast_add(&b).unwrap();
            let cases = [
                (
                    {
                        let mut o = vec![f32::NAN; rows * d_out];
                        dense.apply_into(&xv, &mut o);
                        o
                    },
                    product.clone(),
                ),
                (
                    {
                        let mut o = vec![f32::NAN; rows * d_out];
                        dense.apply_biased(&xv, false, &mut o);
                        o
                    },
                    biased.clone(),
                ),
                (
                    {
                        let mut o = vec![f32::NAN; rows * d_out];
                        dense.apply_biased(&xv, true, &mut o);
                        o
                    },
                    biased.relu().unwrap(),
                ),
            ];
            for (got, want) in cases {
                let want = to_f32_vec(&want).unwrap();
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
                }
            }
        }
    }

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
