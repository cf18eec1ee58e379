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
use crate::host_dense::with_values;
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
    map_rows(x, x.dim(D::Minus1)?, simd::gelu_erf)
}

/// `(x + d, rms_norm(x + d) · w)` in one parallel pass ([`simd::add_rms_norm`]); `None` unless
/// all three are host `f32` and `x` and `d` are rows as wide as `w`.
pub(crate) fn add_rms_norm(
    x: &Tensor,
    d: &Tensor,
    w: &Tensor,
    eps: f32,
) -> Result<Option<(Tensor, Tensor)>> {
    let width = w.elem_count();
    if !(on_host(x) && on_host(d) && on_host(w))
        || x.dims() != d.dims()
        || width == 0
        || x.dim(D::Minus1)? != width
    {
        return Ok(None);
    }
    let (x, d, w) = (x.contiguous()?, d.contiguous()?, w.contiguous()?);
    let n = x.elem_count();
    let (mut s, mut y) = (vec![0f32; n], vec![0f32; n]);
    with_values(&x, |xv| {
        with_values(&d, |dv| {
            with_values(&w, |wv| {
                let per = (TASK / width).max(1) * width;
                s.par_chunks_mut(per)
                    .zip(y.par_chunks_mut(per))
                    .zip(xv.par_chunks(per).zip(dv.par_chunks(per)))
                    .for_each(|((s, y), (x, d))| simd::add_rms_norm(x, d, wv, eps, s, y));
            })
        })
    })???;
    Ok(Some((
        Tensor::from_vec(s, x.dims(), &Device::Cpu)?,
        Tensor::from_vec(y, x.dims(), &Device::Cpu)?,
    )))
}

/// Splits a stacked `(t, (q + 2·kv) · dim)` projection into q `(t, heads.q, dim)` and k, v
/// `(t, heads.kv, dim)`, with RoPE (the rotate-half form, `cos` and `sin` `(t, dim / 2)`) on q
/// and k, in one parallel pass over the rows: candle's `rope_thd` runs a sequence on one thread.
/// Each rotated value is computed as `rope_thd` computes it, so the bits are the same. `None`
/// unless all three are host `f32` of those shapes.
pub(crate) fn qkv_rope(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    (nh, nkv, hd): (usize, usize, usize),
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    let half = hd / 2;
    let width = (nh + 2 * nkv) * hd;
    let Ok((t, w)) = qkv.dims2() else {
        return Ok(None);
    };
    if !(on_host(qkv) && on_host(cos) && on_host(sin))
        || w != width
        || width == 0
        || hd % 2 != 0
        || cos.dims() != [t, half]
        || sin.dims() != [t, half]
    {
        return Ok(None);
    }
    let (qkv, cos, sin) = (qkv.contiguous()?, cos.contiguous()?, sin.contiguous()?);
    let (mut q, mut k, mut v) = (
        vec![0f32; t * nh * hd],
        vec![0f32; t * nkv * hd],
        vec![0f32; t * nkv * hd],
    );
    with_values(&qkv, |src| {
        with_values(&cos, |cos| {
            with_values(&sin, |sin| {
                let per = (TASK / width).max(1);
                q.par_chunks_mut(per * nh * hd)
                    .zip(k.par_chunks_mut(per * nkv * hd))
                    .zip(v.par_chunks_mut(per * nkv * hd))
                    .enumerate()
                    .for_each(|(chunk, ((q, k), v))| {
                        let rows = q.len() / (nh * hd);
                        for r in 0..rows {
                            let i = chunk * per + r;
                            let row = &src[i * width..][..width];
                            let (c, s) = (&cos[i * half..][..half], &sin[i * half..][..half]);
                            let (rq, rest) = row.split_at(nh * hd);
                            let (rk, rv) = rest.split_at(nkv * hd);
                            rope(rq, c, s, &mut q[r * nh * hd..][..nh * hd]);
                            rope(rk, c, s, &mut k[r * nkv * hd..][..nkv * hd]);
                            v[r * nkv * hd..][..nkv * hd].copy_from_slice(rv);
                        }
                    });
            })
        })
    })???;
    Ok(Some((
        Tensor::from_vec(q, (t, nh, hd), &Device::Cpu)?,
        Tensor::from_vec(k, (t, nkv, hd), &Device::Cpu)?,
        Tensor::from_vec(v, (t, nkv, hd), &Device::Cpu)?,
    )))
}

/// The rotate-half RoPE of one position's heads `x` (each `2·half` wide) into `out`.
#[inline]
fn rope(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = cos.len();
    for (xh, oh) in x.chunks_exact(2 * half).zip(out.chunks_exact_mut(2 * half)) {
        let (x1, x2) = xh.split_at(half);
        let (o1, o2) = oh.split_at_mut(half);
        for j in 0..half {
            o1[j] = x1[j] * cos[j] - x2[j] * sin[j];
            o2[j] = x1[j] * sin[j] + x2[j] * cos[j];
        }
    }
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
            // The residual add and RMSNorm: the sum is exact, the norm within the tolerance (its
            // mean of squares is summed in another order).
            let d = (sample(shape) * -0.75).unwrap();
            let w = (sample((1, shape.1)).flatten_all().unwrap() * 0.125).unwrap();
            let (s, y) = add_rms_norm(&x, &d, &w, 1e-5).unwrap().expect("host f32");
            let want_s = (&x + &d).unwrap();
            assert!(worst(&s, &want_s) == 0.0);
            let want_y = candle_nn::ops::rms_norm(&want_s, &w, 1e-5).unwrap();
            assert!(worst(&y, &want_y) <= 1.0);
        }
        // Higher-rank input keeps its shape (map_rows works on the last dimension).
        let x = sample((24, 10)).reshape((2, 3, 4, 10)).unwrap();
        let got = quick_gelu(&x).unwrap();
        assert_eq!(got.dims(), &[2, 3, 4, 10]);
        let want = (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap()).unwrap();
        assert!(worst(&got, &want) <= 1.0);
    }

    /// The host split and RoPE give candle's `rope_thd` bits, on both sides of the parallel
    /// split (700 rows), with grouped heads.
    #[test]
    fn qkv_rope_gives_ropes_bits() {
        for (t, nh, nkv, hd) in [(3usize, 4usize, 2usize, 8usize), (700, 8, 4, 64)] {
            let half = hd / 2;
            let qkv = sample((t, (nh + 2 * nkv) * hd));
            let angle: Vec<f32> = (0..t * half).map(|i| i as f32 * 0.37).collect();
            let cos: Vec<f32> = angle.iter().map(|a| a.cos()).collect();
            let sin: Vec<f32> = angle.iter().map(|a| a.sin()).collect();
            let cos = Tensor::from_vec(cos, (t, half), &Device::Cpu).unwrap();
            let sin = Tensor::from_vec(sin, (t, half), &Device::Cpu).unwrap();
            let (q, k, v) = qkv_rope(&qkv, &cos, &sin, (nh, nkv, hd))
                .unwrap()
                .expect("host f32");
            let part = |from: usize, heads: usize| {
                qkv.narrow(1, from * hd, heads * hd)
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .reshape((1, t, heads, hd))
                    .unwrap()
            };
            let roped = |x: Tensor, heads: usize| {
                candle_nn::rotary_emb::rope_thd(&x, &cos, &sin)
                    .unwrap()
                    .reshape((t, heads, hd))
                    .unwrap()
            };
            let bits = |x: &Tensor| -> Vec<u32> {
                let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v.iter().map(|f| f.to_bits()).collect()
            };
            assert_eq!(bits(&q), bits(&roped(part(0, nh), nh)), "q {t}x{nh}x{hd}");
            assert_eq!(
                bits(&k),
                bits(&roped(part(nh, nkv), nkv)),
                "k {t}x{nkv}x{hd}"
            );
            let want_v = part(nh + nkv, nkv).reshape((t, nkv, hd)).unwrap();
            assert_eq!(bits(&v), bits(&want_v), "v");
            assert_eq!(q.dims(), &[t, nh, hd]);
            assert_eq!(k.dims(), &[t, nkv, hd]);
        }
    }
}
