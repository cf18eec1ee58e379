//! The model's linear layers (decoder, vision tower, projector). On a CPU with AVX2/FMA an `f32`
//! projection is packed once, at load time, into [`crate::panel_gemm`]'s panels (the row-major
//! copy is dropped) and every call, a decode step's few rows or a prefill's thousands, runs that
//! kernel on the rayon pool. Elsewhere it is candle's `Linear`, except that few-row `f32` inputs on
//! the CPU go through [`crate::small_gemm`], which reads each weight once for all rows instead of
//! re-packing it on every call, and one-row inputs on CUDA through `cuda/gemv.cu`.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Module, Storage, Tensor};

use crate::error::{ModelError, Result};
use crate::host_dense::{to_f32_vec, with_values};
use crate::panel_gemm::Panels;
use crate::small_gemm;

pub(crate) struct Linear {
    kind: Kind,
}

enum Kind {
    /// The weight packed for [`Panels::apply_par`], and the bias.
    Packed {
        panels: Panels,
        bias: Option<Vec<f32>>,
    },
    Candle {
        inner: candle_nn::Linear,
        /// The bias as host `f32`, read once here rather than on every decode step; `None` where
        /// the layer has no bias or it is not a host `f32` tensor (the kernel then does not apply).
        bias_f32: Option<Vec<f32>>,
    },
}

/// A host `f32` tensor's values, row-major (`None` on other devices or dtypes).
fn host_f32(t: &Tensor) -> Option<Vec<f32>> {
    (t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu))
        .then(|| to_f32_vec(t).ok())
        .flatten()
}

impl Linear {
    /// candle's `Linear` (with the small-batch kernel in front). For weights shared with other
    /// tensors, such as tied embeddings, which packing would copy.
    pub(crate) fn new(inner: candle_nn::Linear) -> Self {
        let bias_f32 = inner.bias().and_then(host_f32);
        Self {
            kind: Kind::Candle { inner, bias_f32 },
        }
    }

    /// The packed kernel where it runs (host `f32` weight, AVX2/FMA, outputs a multiple of 16),
    /// else [`Self::new`].
    pub(crate) fn packed(inner: candle_nn::Linear) -> Self {
        let w = inner.weight();
        let packed = match (w.dims2(), host_f32(w)) {
            (Ok((n, k)), Some(values)) => Panels::new(&values, n, k),
            _ => None,
        };
        let bias = inner.bias().map(host_f32);
        match (packed, bias) {
            (Some(panels), None) => Self {
                kind: Kind::Packed { panels, bias: None },
            },
            (Some(panels), Some(Some(b))) => Self {
                kind: Kind::Packed {
                    panels,
                    bias: Some(b),
                },
            },
            _ => Self::new(inner),
        }
    }

    /// The packed weight and bias, where the layer runs the packed kernel.
    pub(crate) fn host_panels(&self) -> Option<(&Panels, Option<&[f32]>)> {
        match &self.kind {
            Kind::Packed { panels, bias } => Some((panels, bias.as_deref())),
            Kind::Candle { .. } => None,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.kind {
            Kind::Packed { panels, bias } => forward_packed(panels, bias.as_deref(), x),
            Kind::Candle { inner, bias_f32 } => {
                if let Some(y) = forward_small(inner, bias_f32.as_deref(), x)? {
                    return Ok(y);
                }
                if let Some(y) = forward_gemv(inner, x)? {
                    return Ok(y);
                }
                Ok(inner.forward(x)?)
            }
        }
    }
}

static GEMV: AtomicBool = AtomicBool::new(true);

/// On CUDA, one-row projections (a batch-1 decode step's) run Grain's own matrix-vector kernel
/// (`cuda/gemv.cu`) instead of cuBLAS's product (on by default); `grain check-device bench
/// --ab-gemv` compares the two.
pub fn set_gemv(on: bool) {
    GEMV.store(on, Ordering::Relaxed);
}

#[cfg(feature = "cuda")]
fn forward_gemv(inner: &candle_nn::Linear, x: &Tensor) -> Result<Option<Tensor>> {
    if !GEMV.load(Ordering::Relaxed) || !x.device().is_cuda() {
        return Ok(None);
    }
    let Some(y) = crate::fused_cuda::gemv(x, inner.weight())? else {
        return Ok(None);
    };
    Ok(Some(match inner.bias() {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    }))
}

#[cfg(not(feature = "cuda"))]
fn forward_gemv(_: &candle_nn::Linear, _: &Tensor) -> Result<Option<Tensor>> {
    Ok(None)
}

/// `x (…, k) → (…, n)` through the packed kernel.
fn forward_packed(panels: &Panels, bias: Option<&[f32]>, x: &Tensor) -> Result<Tensor> {
    let (n, k) = (panels.n(), panels.k());
    let mut dims = x.dims().to_vec();
    if dims.last() != Some(&k) || x.dtype() != DType::F32 || !matches!(x.device(), Device::Cpu) {
        return Err(ModelError::Input(format!(
            "linear layer of input width {k} (f32, CPU) got a {:?} {:?} tensor",
            x.dtype(),
            x.dims()
        )));
    }
    let x = x.contiguous()?;
    let mut y = vec![0f32; x.elem_count() / k * n];
    with_values(&x, |xv| panels.apply_par(xv, bias, &mut y))?;
    *dims.last_mut().expect("checked above") = n;
    Ok(Tensor::from_vec(y, dims, &Device::Cpu)?)
}

/// The small-batch kernel's result, or `None` where it does not apply (device, dtype, shape, row
/// count, CPU features).
fn forward_small(
    inner: &candle_nn::Linear,
    bias_f32: Option<&[f32]>,
    x: &Tensor,
) -> Result<Option<Tensor>> {
    let w = inner.weight();
    let Ok((m, k)) = x.dims2() else {
        return Ok(None);
    };
    if m > small_gemm::MAX_ROWS
        || !matches!(x.device(), Device::Cpu)
        || x.dtype() != DType::F32
        || w.dtype() != DType::F32
        || !small_gemm::available()
    {
        return Ok(None);
    }
    let (n, wk) = w.dims2()?;
    if wk != k {
        return Ok(None); // Let candle report the shape mismatch.
    }
    let x = x.contiguous()?;
    let mut y = vec![0f32; m * n];
    {
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (Storage::Cpu(xc), Storage::Cpu(wc)) = (&*xs, &*ws) else {
            return Ok(None);
        };
        let (Some((x0, x1)), Some((w0, w1))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
        else {
            return Ok(None);
        };
        let bias = match (inner.bias(), bias_f32) {
            (None, _) => None,
            (Some(_), Some(b)) => Some(b),
            (Some(_), None) => return Ok(None),
        };
        let xv = &xc.as_slice::<f32>()?[x0..x1];
        let wv = &wc.as_slice::<f32>()?[w0..w1];
        if !small_gemm::matmul_xwt(xv, wv, bias, (m, n, k), &mut y) {
            return Ok(None);
        }
    }
    Ok(Some(Tensor::from_vec(y, (m, n), &Device::Cpu)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_candle_below_and_above_the_row_limit() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (97, 64), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 97, &dev)?;
        for bias in [None, Some(b)] {
            let plain = candle_nn::Linear::new(w.clone(), bias.clone());
            let ours = Linear::new(candle_nn::Linear::new(w.clone(), bias));
            for m in [
                1usize,
                3,
                16,
                small_gemm::MAX_ROWS,
                small_gemm::MAX_ROWS + 1,
                100,
            ] {
                let x = Tensor::randn(0f32, 1.0, (m, 64), &dev)?;
                let want = plain.forward(&x)?;
                let got = ours.forward(&x)?;
                assert_eq!(got.dims(), want.dims());
                let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                // Two f32 summation orders over 64 products of N(0,1) values.
                assert!(diff < 1e-4, "m={m}: max |diff| {diff}");
            }
        }
        Ok(())
    }

    #[test]
    fn packed_layers_agree_with_candle_and_give_each_row_the_same_bits_in_any_batch() -> Result<()>
    {
        let dev = Device::Cpu;
        let (n, k) = (96, 70);
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let b = Tensor::randn(0f32, 1.0, n, &dev)?;
        for bias in [None, Some(b)] {
            let plain = candle_nn::Linear::new(w.clone(), bias.clone());
            let ours = Linear::packed(candle_nn::Linear::new(w.clone(), bias));
            if !matches!(ours.kind, Kind::Packed { .. }) {
                return Ok(()); // No AVX2/FMA: `packed` kept candle, tested above.
            }
            // 700 rows: the parallel path, several row chunks, and a 4-row remainder tile.
            let all = Tensor::randn(0f32, 1.0, (700, k), &dev)?;
            let batched = ours.forward(&all)?;
            let diff = (&batched - plain.forward(&all)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            // Two f32 summation orders over 70 products of N(0,1) values.
            assert!(diff < 1e-4, "max |diff| {diff}");
            for (start, len) in [
                (0usize, 1usize),
                (5, 1),
                (699, 1),
                (17, 3),
                (100, 16),
                (41, 200),
            ] {
                let part = ours.forward(&all.narrow(0, start, len)?)?;
                let want = batched.narrow(0, start, len)?;
                assert_eq!(
                    part.flatten_all()?.to_vec1::<f32>()?,
                    want.flatten_all()?.to_vec1::<f32>()?,
                    "rows {start}..{}: the same bits alone and in the batch",
                    start + len
                );
            }
            // Leading dimensions are kept.
            let x3 = all.narrow(0, 0, 12)?.reshape((3, 4, k))?;
            let y3 = ours.forward(&x3)?;
            assert_eq!(y3.dims(), &[3, 4, n]);
            assert_eq!(
                y3.flatten_all()?.to_vec1::<f32>()?,
                batched.narrow(0, 0, 12)?.flatten_all()?.to_vec1::<f32>()?
            );
            let wrong = Tensor::zeros((2, k + 1), DType::F32, &dev)?;
            assert!(
                ours.forward(&wrong).is_err(),
                "a width mismatch is an error"
            );
        }
        Ok(())
    }

    #[test]
    fn widths_the_kernel_cannot_take_keep_candle() {
        let w = Tensor::zeros((97, 64), DType::F32, &Device::Cpu).unwrap();
        let layer = Linear::packed(candle_nn::Linear::new(w, None));
        assert!(matches!(layer.kind, Kind::Candle { .. }));
    }

    #[test]
    fn non_contiguous_inputs_are_handled() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (16, 16), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (16, 4), &dev)?.t()?; // (4, 16), strided
        let want = x.contiguous()?.matmul(&w.t()?)?;
        for ours in [
            Linear::new(candle_nn::Linear::new(w.clone(), None)),
            Linear::packed(candle_nn::Linear::new(w.clone(), None)),
        ] {
            let diff = (ours.forward(&x)? - &want)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-4, "max |diff| {diff}");
        }
        Ok(())
    }
}
