//! Launches the fused decoder kernels of `cuda/decoder_fused.cu` (PTX from `build.rs`, loaded
//! once per device as module `grain_fused`; [`crate::layer_ops`] decides when) and the one-row
//! projections of `cuda/gemv.cu` (module `grain_gemv`; [`crate::linear`] decides when).
//!
//! The workspace denies `unsafe`; this module allows it for uninitialised output buffers that the
//! kernels fill, and for the launches.
#![allow(unsafe_code)]

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaStorageSlice, WrapErr};
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor,
};

use crate::attention::Heads;
use crate::cuda_ops::{dtype_name, view, with_cuda};
use crate::error::Result;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/decoder_fused.ptx"));
const MODULE: &str = "grain_fused";
const GEMV_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/gemv.ptx"));
const GEMV_MODULE: &str = "grain_gemv";

/// Runs `$body` with `$T` bound to the element type of storage `$s` (f32, bf16 or f16).
macro_rules! typed {
    ($s:expr, $T:ident => $body:expr) => {
        match &$s.slice {
            CudaStorageSlice::F32(_) => {
                type $T = f32;
                $body
            }
            CudaStorageSlice::BF16(_) => {
                type $T = half::bf16;
                $body
            }
            CudaStorageSlice::F16(_) => {
                type $T = half::f16;
                $body
            }
            _ => bail!("fused kernel: unsupported dtype {:?}", $s.dtype()),
        }
    };
}

fn no_cpu(name: &str) -> candle_core::Result<(CpuStorage, Shape)> {
    bail!("{name} is a CUDA kernel; the CPU takes the candle-op path")
}

struct QkvRope<'a> {
    cos: &'a Tensor,
    sin: &'a Tensor,
    slots: &'a Tensor,
    kc: &'a Tensor,
    vc: &'a Tensor,
    heads: Heads,
}

impl CustomOp1 for QkvRope<'_> {
    fn name(&self) -> &'static str {
        "grain-qkv-rope"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let h = self.heads;
        let (t, width) = l.shape().dims2()?;
        if width != (h.q + 2 * h.kv) * h.dim || h.dim % 2 != 0 {
            bail!("qkv_rope: projection {:?} for {h:?}", l.shape());
        }
        let dev = s.device.clone();
        let name = dtype_name(s)?;
        let out = typed!(s, T => {
            let qkv = view(s.as_cuda_slice::<T>()?, l)?;
            with_cuda(self.cos, |cs, cl| {
                with_cuda(self.sin, |ss, sl| {
                    with_cuda(self.slots, |ps, pl| {
                        with_cuda(self.kc, |ks, kl| {
                            with_cuda(self.vc, |vs, vl| {
                                let cos = view(cs.as_cuda_slice::<T>()?, cl)?;
                                let sin = view(ss.as_cuda_slice::<T>()?, sl)?;
                                let slots = view(ps.as_cuda_slice::<u32>()?, pl)?;
                                let kc = view(ks.as_cuda_slice::<T>()?, kl)?;
                                let vc = view(vs.as_cuda_slice::<T>()?, vl)?;
                                if cos.len() != t * h.dim / 2 || slots.len() != t {
                                    bail!("qkv_rope: cos/sin or slots do not match {t} rows");
                                }
                                // SAFETY: the kernel writes every element.
                                let out = unsafe { dev.alloc::<T>(t * width)? };
                                let f = dev.get_or_load_custom_func(
                                    &format!("qkv_rope_{name}"),
                                    MODULE,
                                    PTX,
                                )?;
                                let mut b = f.builder();
                                b.arg(&qkv);
                                b.arg(&cos);
                                b.arg(&sin);
                                b.arg(&slots);
                                b.arg(&out);
                                // The caches are written through these views: device memory that
                                // candle tracks as read here, mutated on the same stream, in order.
                                b.arg(&kc);
                                b.arg(&vc);
                                candle_core::builder_arg!(
                                    b,
                                    t as i32,
                                    h.q as i32,
                                    h.kv as i32,
                                    h.dim as i32
                                );
                                let cfg = LaunchConfig {
                                    grid_dim: ((h.q + 2 * h.kv) as u32, t as u32, 1),
                                    block_dim: ((h.dim / 2).clamp(32, 256) as u32, 1, 1),
                                    shared_mem_bytes: 0,
                                };
                                // SAFETY: arguments match the kernel; slots were checked against
                                // the cache when the step was built.
                                unsafe { b.launch(cfg) }.w()?;
                                Ok(T::wrap_cuda_slice(out, dev.clone()))
                            })
                        })
                    })
                })
            })?
        });
        Ok((out, Shape::from(t * width)))
    }
}

/// See [`crate::layer_ops::qkv_rope`].
pub(crate) fn qkv_rope(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    slots: &Tensor,
    kc: &Tensor,
    vc: &Tensor,
    heads: Heads,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (t, _) = qkv.dims2()?;
    let (cos, sin, qkv) = (cos.contiguous()?, sin.contiguous()?, qkv.contiguous()?);
    let op = QkvRope {
        cos: &cos,
        sin: &sin,
        slots,
        kc,
        vc,
        heads,
    };
    let flat = qkv.apply_op1_no_bwd(&op)?;
    let (nq, nk) = (t * heads.q * heads.dim, t * heads.kv * heads.dim);
    Ok((
        flat.narrow(0, 0, nq)?.reshape((t, heads.q, heads.dim))?,
        flat.narrow(0, nq, nk)?.reshape((t, heads.kv, heads.dim))?,
        flat.narrow(0, nq + nk, nk)?
            .reshape((t, heads.kv, heads.dim))?,
    ))
}

struct SiluMul {
    inter: usize,
}

impl CustomOp1 for SiluMul {
    fn name(&self) -> &'static str {
        "grain-silu-mul"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (t, w) = l.shape().dims2()?;
        if w != 2 * self.inter {
            bail!(
                "silu_mul: {:?} is not a stacked gate|up of {}",
                l.shape(),
                self.inter
            );
        }
        let dev = s.device.clone();
        let name = dtype_name(s)?;
        let total = (t * self.inter) as u64;
        let out = typed!(s, T => {
            let gu = view(s.as_cuda_slice::<T>()?, l)?;
            // SAFETY: the kernel writes every element.
            let out = unsafe { dev.alloc::<T>(total as usize)? };
            if total > 0 {
                let f = dev.get_or_load_custom_func(&format!("silu_mul_{name}"), MODULE, PTX)?;
                let mut b = f.builder();
                b.arg(&gu);
                b.arg(&out);
                candle_core::builder_arg!(b, self.inter as u32, total);
                let cfg = LaunchConfig {
                    grid_dim: (total.div_ceil(256).min(65_535) as u32, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: arguments match the kernel.
                unsafe { b.launch(cfg) }.w()?;
            }
            T::wrap_cuda_slice(out, dev.clone())
        });
        Ok((out, Shape::from((t, self.inter))))
    }
}

/// See [`crate::layer_ops::swiglu`].
pub(crate) fn silu_mul(gate_up: &Tensor, inter: usize) -> Result<Tensor> {
    Ok(gate_up.contiguous()?.apply_op1_no_bwd(&SiluMul { inter })?)
}

struct AddRms<'a> {
    w: &'a Tensor,
    eps: f32,
}

impl CustomOp2 for AddRms<'_> {
    fn name(&self) -> &'static str {
        "grain-add-rms"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ds: &CudaStorage,
        dl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, cols) = xl.shape().dims2()?;
        if dl.shape() != xl.shape() || self.w.dims1()? != cols || cols > ADD_RMS_MAX_COLS {
            bail!(
                "add_rms: {:?} + {:?}, weight {:?}",
                xl.shape(),
                dl.shape(),
                self.w.shape()
            );
        }
        let dev = xs.device.clone();
        let name = dtype_name(xs)?;
        let out = typed!(xs, T => {
            let x = view(xs.as_cuda_slice::<T>()?, xl)?;
            let d = view(ds.as_cuda_slice::<T>()?, dl)?;
            with_cuda(self.w, |ws, wl| {
                let w = view(ws.as_cuda_slice::<T>()?, wl)?;
                // SAFETY: the kernel writes every element of both halves.
                let mut out = unsafe { dev.alloc::<T>(2 * rows * cols)? };
                if rows > 0 {
                    let (mut sum, mut norm) = out.split_at_mut(rows * cols);
                    let f = dev.get_or_load_custom_func(&format!("add_rms_{name}"), MODULE, PTX)?;
                    let mut b = f.builder();
                    b.arg(&x);
                    b.arg(&d);
                    b.arg(&w);
                    b.arg(&mut sum);
                    b.arg(&mut norm);
                    candle_core::builder_arg!(b, cols as i32, self.eps);
                    let cfg = LaunchConfig {
                        grid_dim: (rows as u32, 1, 1),
                        block_dim: (add_rms_threads(cols), 1, 1),
                        shared_mem_bytes: 0,
                    };
                    // SAFETY: arguments match the kernel.
                    unsafe { b.launch(cfg) }.w()?;
                }
                Ok(T::wrap_cuda_slice(out, dev.clone()))
            })?
        });
        Ok((out, Shape::from((2, rows, cols))))
    }
}

/// Columns per thread of `add_rms_*` (`ADD_RMS_PER_THREAD` in `cuda/decoder_fused.cu`).
const ADD_RMS_PER_THREAD: usize = 8;
/// The widest row `add_rms_*` takes: eight columns for each of 1024 threads.
pub(crate) const ADD_RMS_MAX_COLS: usize = ADD_RMS_PER_THREAD * 1024;

/// Threads per row of `add_rms_*`: about four columns each (eight above 4096 columns), a whole
/// number of warps.
fn add_rms_threads(cols: usize) -> u32 {
    (cols.div_ceil(4).div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// See [`crate::layer_ops::add_rms_norm`].
pub(crate) fn add_rms(x: &Tensor, d: &Tensor, w: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let both = x
        .contiguous()?
        .apply_op2_no_bwd(&d.contiguous()?, &AddRms { w, eps })?;
    Ok((both.get(0)?, both.get(1)?))
}

struct CausalSoftmax {
    group: usize,
    first: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "grain-causal-softmax"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (nkv, rows, cols) = l.shape().dims3()?;
        if self.group == 0 || rows % self.group != 0 || self.first == 0 {
            bail!(
                "causal_softmax: {:?} scores, group {}, first {}",
                l.shape(),
                self.group,
                self.first
            );
        }
        let dev = s.device.clone();
        let name = dtype_name(s)?;
        let total = nkv * rows * cols;
        let out = typed!(s, T => {
            let scores = view(s.as_cuda_slice::<T>()?, l)?;
            // SAFETY: the kernel writes every element.
            let out = unsafe { dev.alloc::<T>(total)? };
            if total > 0 {
                let f = dev.get_or_load_custom_func(
                    &format!("causal_softmax_{name}"),
                    MODULE,
                    PTX,
                )?;
                let mut b = f.builder();
                b.arg(&scores);
                b.arg(&out);
                candle_core::builder_arg!(
                    b,
                    cols as i32,
                    rows as i32,
                    self.group as i32,
                    self.first as i32
                );
                let cfg = LaunchConfig {
                    grid_dim: ((nkv * rows) as u32, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: arguments match the kernel.
                unsafe { b.launch(cfg) }.w()?;
            }
            T::wrap_cuda_slice(out, dev.clone())
        });
        Ok((out, l.shape().clone()))
    }
}

/// See [`crate::layer_ops::causal_softmax`].
pub(crate) fn causal_softmax(scores: &Tensor, first: usize, group: usize) -> Result<Tensor> {
    Ok(scores
        .contiguous()?
        .apply_op1_no_bwd(&CausalSoftmax { group, first })?)
}

/// `y = x · wᵀ` for one row `x (1, k)` and `w (n, k)`, by `cuda/gemv.cu`.
struct Gemv;

impl CustomOp2 for Gemv {
    fn name(&self) -> &'static str {
        "grain-gemv"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let ((rows, k), (n, k2)) = (xl.shape().dims2()?, wl.shape().dims2()?);
        let size = xs.dtype().size_in_bytes();
        let aligned = |l: &Layout| l.start_offset() * size % 16 == 0;
        if k != k2 || rows != 1 || k * size % 16 != 0 {
            bail!("gemv: {:?} · {:?}ᵀ", xl.shape(), wl.shape());
        }
        if !aligned(xl) || !aligned(wl) {
            bail!("gemv: an operand does not start on 16 bytes");
        }
        let dev = xs.device.clone();
        let name = dtype_name(xs)?;
        let out = typed!(xs, T => {
            let x = view(xs.as_cuda_slice::<T>()?, xl)?;
            let w = view(ws.as_cuda_slice::<T>()?, wl)?;
            // SAFETY: the kernel writes every element.
            let out = unsafe { dev.alloc::<T>(n)? };
            if n > 0 {
                let f =
                    dev.get_or_load_custom_func(&format!("gemv_{name}"), GEMV_MODULE, GEMV_PTX)?;
                let mut b = f.builder();
                b.arg(&x);
                b.arg(&w);
                b.arg(&out);
                candle_core::builder_arg!(b, n as i32, k as i32);
                // One warp per output column, eight per block.
                let cfg = LaunchConfig {
                    grid_dim: (n.div_ceil(8) as u32, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: arguments match the kernel; shapes and alignment were checked above.
                unsafe { b.launch(cfg) }.w()?;
            }
            T::wrap_cuda_slice(out, dev.clone())
        });
        Ok((out, Shape::from((1, n))))
    }
}

/// `x (…, k) · wᵀ` for `w (n, k)` with `cuda/gemv.cu`, where it applies: both on a CUDA device,
/// one dtype (f32, bf16 or f16), one row, `k` a whole number of 16-byte vectors, and both
/// operands contiguous from a 16-byte boundary. `None` elsewhere.
pub(crate) fn gemv(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    let Ok((n, k)) = w.dims2() else {
        return Ok(None);
    };
    let (size, dims) = (w.dtype().size_in_bytes(), x.dims());
    let applies = x.device().is_cuda()
        && w.device().same_device(x.device())
        && x.dtype() == w.dtype()
        && matches!(w.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && dims.last() == Some(&k)
        && x.elem_count() == k
        && k * size % 16 == 0
        && w.is_contiguous()
        && w.layout().start_offset() * size % 16 == 0;
    if !applies {
        return Ok(None);
    }
    // A contiguous view keeps its offset: a whole row's is aligned (k is), others fall back.
    let x = x.contiguous()?.reshape((1, k))?;
    if x.layout().start_offset() * size % 16 != 0 {
        return Ok(None);
    }
    let y = x.apply_op2_no_bwd(w, &Gemv)?;
    let mut out = dims.to_vec();
    *out.last_mut().expect("dims end in k") = n;
    Ok(Some(y.reshape(out)?))
}
