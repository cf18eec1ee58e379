//! Elementwise activations of the decoder, the vision tower and the projector, as one parallel
//! pass over host `f32` rows with the vector loops of [`crate::simd`] (the vision tower's softmax
//! lives in [`crate::attention_blocks`]).
//!
//! candle's CPU versions of these run libm's scalar `expf`/`erf` per element, and a composite such
//! as `x · sigmoid(1.702·x)` takes three passes and two temporary tensors. On the small preset this
//! path took the vision tower of a 5-crop image from about 670 to 485 ms of one core. Each function
//! here takes the host path for an `f32` CPU tensor (made contiguous) and falls back to candle's
//! ops anywhere else (other dtypes, GPUs); results agree with candle's to about 1e-6 relative
//! (tested at 1e-5).

use candle_core::{DType, Device, Tensor, D};
use rayon::prelude::*;

use crate::error::Result;
use crate::host_dense::{gelu_erf as gelu_erf_scalar, with_values};
use crate::simd;

/// Elements per parallel task (and below which a call runs on one thread).
const TASK: usize = 1 << 15;

/// Whether `t` takes the host path: an `f32` tensor on the CPU.
pub(crate) fn on_host(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32
}

/// `out` rows of `out_len` from `t`'s rows of `in_len` (its last dimension), `f(row, out_row)`
/// on every row, in parallel over blocks of rows. The result has `t`'s shape with the last
/// dimension set to `out_len`.
fn map_rows(t: &Tensor, out_len: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) -> Result<Tensor> {
    let t = t.contiguous()?;
    let mut dims = t.dims().to_vec();
    let in_len = dims.last().copied().unwrap_or(1);
    let rows = t.elem_count() / in_len.max(1);
    let mut out = vec![0f32; rows * out_len];
    if rows > 0 && in_len > 0 && out_len > 0 {
        with_values(&t, |v| {
            let per_task = (TASK / in_len).max(1);
            let task = |(o, x): (&mut [f32], &[f32])| {
                for (or, xr) in o.chunks_exact_mut(out_len).zip(x.chunks_exact(in_len)) {
                    f(xr, or);
                }
            };
            if rows > per_task {
                out.par_chunks_mut(per_task * out_len)
                    .zip(v.par_chunks(per_task * in_len))
                    .for_each(task);
            } else {
                task((&mut out, v));
            }
        })?;
    }
    if let Some(last) = dims.last_mut() {
        *last = out_len;
    }
    Ok(Tensor::from_vec(out, dims, &Device::Cpu)?)
}

/// `silu(gate) · up` of a stacked `(…, 2i)` gate/up projection (the decoder's SwiGLU).
pub(crate) fn swiglu(gate_up: &Tensor, i: usize) -> Result<Tensor> {
    if !on_host(gate_up) || i == 0 {
        let gate = candle_nn::ops::silu(&gate_up.narrow(D::Minus1, 0, i)?)?;
        return Ok((gate * gate_up.narrow(D::Minus1, i, i)?)?);
    }
    map_rows(gate_up, i, |x, o| simd::silu_mul(&x[..i], &x[i..], o))
}

/// CLIP's QuickGELU, `x · sigmoid(1.702 · x)`.
pub(crate) fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    if !on_host(x) {
        return Ok((x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?);
    }
    map_rows(x, x.dim(D::Minus1)?, simd::quick_gelu)
}

/// The exact (erf) GELU, with erf from Abramowitz–Stegun 7.1.26 (|error| ≤ 1.5e-7).
pub(crate) fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !on_host(x) {
        return Ok(x.gelu_erf()?);
    }
    map_rows(x, x.dim(D::Minus1)?, |x, o| {
        for (o, v) in o.iter_mut().zip(x) {
            *o = gelu_erf_scalar(*v);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(shape: (usize, usize)) -> Tensor {
        let n = shape.0 * shape.1;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 2003) as f32 / 2003.0 - 0.5) * 16.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The worst `|a − b| / (1e-5·|b| + 1e-6)`: at most 1 where every element is within 1e-5
    /// relative or 1e-6 absolute of candle's.
    fn worst(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / (1e-5 * y.abs() + 1e-6))
            .fold(0f32, f32::max)
    }

    /// Each host path against candle's own ops (libm `expf`/`erf`), on shapes that take both the
    /// one-thread and the parallel branch. Stated tolerance: 1e-5 relative or 1e-6 absolute (the
    /// polynomial `exp` is within 2e-7 relative, the erf within 1.5e-7 absolute).
    #[test]
    fn host_paths_match_candle() {
        for shape in [(3usize, 10usize), (700, 96)] {
            let x = sample(shape);
            let gu = sample((shape.0, 2 * shape.1));
            let i = shape.1;
            let want = (candle_nn::ops::silu(&gu.narrow(1, 0, i).unwrap()).unwrap()
                * gu.narrow(1, i, i).unwrap())
            .unwrap();
            assert!(worst(&swiglu(&gu, i).unwrap(), &want) <= 1.0);
            let want = (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap()).unwrap();
            assert!(worst(&quick_gelu(&x).unwrap(), &want) <= 1.0);
            let want = x.gelu_erf().unwrap();
            assert!(worst(&gelu_erf(&x).unwrap(), &want) <= 1.0);
        }
        // Higher-rank input keeps its shape (map_rows works on the last dimension).
        let x = sample((24, 10)).reshape((2, 3, 4, 10)).unwrap();
        let got = quick_gelu(&x).unwrap();
        assert_eq!(got.dims(), &[2, 3, 4, 10]);
        let want = (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap()).unwrap();
        assert!(worst(&got, &want) <= 1.0);
    }
}
