//! Plumbing shared by the modules that launch Grain's own CUDA kernels (`paged_device/cuda.rs`,
//! `fused_cuda.rs`): an operand's device slice as a contiguous view, a tensor's CUDA storage, and
//! the dtype suffix of the kernels' names.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{bail, CudaStorage, Layout, Storage, Tensor};

/// The elements of `s` that layout `l` covers, which must be contiguous.
pub(crate) fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout) -> candle_core::Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.slice(a..b)),
        None => bail!("CUDA kernel: an operand is not contiguous"),
    }
}

/// Runs `f` with the CUDA storage and layout of `t`.
pub(crate) fn with_cuda<R>(
    t: &Tensor,
    f: impl FnOnce(&CudaStorage, &Layout) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cuda(s) => f(s, l),
        _ => bail!("CUDA kernel: an operand is not on the GPU"),
    }
}

/// The suffix of a kernel's name for the element type of `s` (`f32`, `bf16` or `f16`).
pub(crate) fn dtype_name(s: &CudaStorage) -> candle_core::Result<&'static str> {
    Ok(match &s.slice {
        CudaStorageSlice::F32(_) => "f32",
        CudaStorageSlice::BF16(_) => "bf16",
        CudaStorageSlice::F16(_) => "f16",
        _ => bail!("CUDA kernel: unsupported dtype {:?}", s.dtype()),
    })
}
