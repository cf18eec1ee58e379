//! The decoder layer's elementwise steps on a device cache, each in one of two forms:
//!
//! - on CUDA, fused kernels of our own (`cuda/decoder_fused.cu`, see `fused_cuda.rs`): the split,
//!   RoPE and cache write of q|k|v in one launch, SwiGLU in one, and the residual add with the next
//!   RMSNorm in one: 10 launches per layer instead of 19, and fewer passes over the activations.
//!   On an H200 at 7B shapes this saved 5 % of a decode step at batch 8 and 16 and nothing at
//!   batch 1, where the GPU, not the launching, is the bound (docs/gpu.md). The prefill's causal
//!   softmax is one kernel too, with its mask computed in place;
//! - on host `f32` tensors, one parallel pass each ([`crate::host_ops`]): candle's CPU `rope_thd`
//!   runs a sequence on one thread, its RMSNorm sums each row in one serial chain, and its add
//!   runs on a thread pool of candle's own that spins beside rayon's;
//! - elsewhere (and on CUDA when [`set_fused_kernels`] turned them off), the same steps as a chain
//!   of candle ops. That chain is what `grain check-device kernels` checks the fused kernels
//!   against.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;

use crate::attention::Heads;
use crate::error::Result;

static FUSED: AtomicBool = AtomicBool::new(true);

/// Turns the fused CUDA kernels on or off (on by default), for A/B measurements and checks.
pub fn set_fused_kernels(on: bool) {
    FUSED.store(on, Ordering::Relaxed);
}

/// Whether `t` takes the fused path.
#[cfg(feature = "cuda")]
fn fused(t: &Tensor) -> bool {
    t.device().is_cuda() && FUSED.load(Ordering::Relaxed)
}

/// `(x + d, rms_norm(x + d) · w)`.
pub(crate) fn add_rms_norm(
    x: &Tensor,
    d: &Tensor,
    w: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if fused(x) && x.dim(candle_core::D::Minus1)? <= crate::fused_cuda::ADD_RMS_MAX_COLS {
        return crate::fused_cuda::add_rms(x, d, w, eps);
    }
    if let Some(pair) = crate::host_ops::add_rms_norm(x, d, w, eps)? {
        return Ok(pair);
    }
    let s = (x + d)?;
    let y = candle_nn::ops::rms_norm(&s, w, eps)?;
    Ok((s, y))
}

/// The causal softmax of one query block's attention scores `(kv heads, n · group, keys)`, in
/// their dtype: row `q · group + g` (query `q` of the block) sees keys `0 .. first + q`. `mask`
/// gives the additive `(n, 1, keys)` mask that the candle-op form adds; the fused kernel computes
/// it from `first` instead and never calls `mask`.
pub(crate) fn causal_softmax(
    scores: &Tensor,
    first: usize,
    group: usize,
    mask: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if fused(scores) {
        return crate::fused_cuda::causal_softmax(scores, first, group);
    }
    let _ = first;
    let (nkv, rows, keys) = scores.dims3()?;
    let masked = scores
        .to_dtype(candle_core::DType::F32)?
        .reshape((nkv, rows / group, group, keys))?
        .broadcast_add(&mask()?)?
        .reshape((nkv, rows, keys))?;
    Ok(candle_nn::ops::softmax_last_dim(&masked)?.to_dtype(scores.dtype())?)
}

/// `silu(gate) · up` of a stacked `(t, 2·inter)` gate|up projection.
pub(crate) fn swiglu(gate_up: &Tensor, inter: usize) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if fused(gate_up) {
        return crate::fused_cuda::silu_mul(gate_up, inter);
    }
    crate::host_ops::swiglu(gate_up, inter)
}

/// Splits a stacked `(t, (q + 2·kv) · dim)` projection into q `(t, heads.q, dim)` and k, v
/// `(t, heads.kv, dim)`, with RoPE on q and k (`cos`, `sin`: `(t, dim / 2)`). With `cache`
/// (`(slots (t) u32, k cache, v cache)`) the fused path also stores k and v at their slots and
/// says so by returning `true`; the caller writes them otherwise.
pub(crate) fn qkv_rope(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: Heads,
    cache: Option<(&Tensor, &Tensor, &Tensor)>,
) -> Result<(Tensor, Tensor, Tensor, bool)> {
    #[cfg(feature = "cuda")]
    if let (true, Some((slots, kc, vc))) = (fused(qkv), cache) {
        let (q, k, v) = crate::fused_cuda::qkv_rope(qkv, cos, sin, slots, kc, vc, heads)?;
        return Ok((q, k, v, true));
    }
    let _ = cache;
    let (t, _) = qkv.dims2()?;
    let (nh, nkv, hd) = (heads.q, heads.kv, heads.dim);
    if let Some((q, k, v)) = crate::host_ops::qkv_rope(qkv, cos, sin, (nh, nkv, hd))? {
        return Ok((q, k, v, false));
    }
    let q = qkv.narrow(1, 0, nh * hd)?.reshape((1, t, nh, hd))?;
    let k = qkv.narrow(1, nh * hd, nkv * hd)?.reshape((1, t, nkv, hd))?;
    let v = qkv
        .narrow(1, (nh + nkv) * hd, nkv * hd)?
        .contiguous()?
        .reshape((t, nkv, hd))?;
    let q = candle_nn::rotary_emb::rope_thd(&q.contiguous()?, cos, sin)?.reshape((t, nh, hd))?;
    let k = candle_nn::rotary_emb::rope_thd(&k.contiguous()?, cos, sin)?.reshape((t, nkv, hd))?;
    Ok((q, k, v, false))
}
