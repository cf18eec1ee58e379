//! The decoder's linear layers: candle's `Linear`, except that few-row f32 inputs on the CPU (the
//! rows of a decode step) go through [`crate::small_gemm`], which reads each weight once for all
//! rows instead of re-packing it on every call.

use candle_core::{DType, Device, Module, Storage, Tensor};

use crate::error::Result;
use crate::small_gemm;

pub(crate) struct Linear {
    inner: candle_nn::Linear,
    /// The bias as host `f32`, read once here rather than on every decode step; `None` where the
    /// layer has no bias or it is not a host `f32` tensor (the kernel then does not apply).
    bias_f32: Option<Vec<f32>>,
}

impl Linear {
    pub(crate) fn new(inner: candle_nn::Linear) -> Self {
        let bias_f32 = inner
            .bias()
            .filter(|b| b.dtype() == DType::F32 && matches!(b.device(), Device::Cpu))
            .and_then(|b| b.flatten_all().and_then(|b| b.to_vec1::<f32>()).ok());
        Self { inner, bias_f32 }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.forward_small(x)? {
            return Ok(y);
        }
        Ok(self.inner.forward(x)?)
    }

    /// The small-batch kernel's result, or `None` where it does not apply (device, dtype, shape,
    /// row count, CPU features).
    fn forward_small(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let w = self.inner.weight();
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
            let (Some((x0, x1)), Some((w0, w1))) =
                (xl.contiguous_offsets(), wl.contiguous_offsets())
            else {
                return Ok(None);
            };
            let bias = match (self.inner.bias(), &self.bias_f32) {
                (None, _) => None,
                (Some(_), Some(b)) => Some(b.as_slice()),
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
    fn non_contiguous_inputs_are_handled() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (8, 16), &dev)?;
        let ours = Linear::new(candle_nn::Linear::new(w.clone(), None));
        let x = Tensor::randn(0f32, 1.0, (16, 4), &dev)?.t()?; // (4, 16), strided
        let want = x.contiguous()?.matmul(&w.t()?)?;
        let diff = (ours.forward(&x)? - want)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-4, "max |diff| {diff}");
        Ok(())
    }
}
