//! The CUDA side of [`super`]: launches the kernels of `cuda/paged_attention.cu`, whose PTX
//! `build.rs` compiles and this module embeds (loaded once per device, as module `grain_paged`).
//!
//! The workspace denies `unsafe`; this module allows it for the two things a kernel launch
//! needs: uninitialised device buffers that the kernels fill, and the launch itself.
#![allow(unsafe_code)]

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Shape};

use super::PagedAttention;
use crate::cuda_ops::{view, with_cuda};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/paged_attention.ptx"));
const MODULE: &str = "grain_paged";
/// Must match the `.cu` file.
const MAX_PART: usize = 256;
const MAX_HD: usize = 256;
/// Thread blocks a decode launch should have (an H100 or H200 has 132 SMs, each holding up to 16
/// of these 128-thread blocks): below that, memory requests in flight, hence bandwidth, fall.
const TARGET_BLOCKS: usize = 2048;
/// The shortest partition chosen by itself.
const MIN_PART: usize = 64;

/// Positions per thread block: the longest (fewest partial results to merge) that still gives
/// [`TARGET_BLOCKS`] blocks. At 7B shapes with 3000 cached tokens that is 64 at batch 1 (1504
/// blocks, against 384 with 256) and 256 from batch 8 on.
fn partition(rows: usize, heads: usize, max_ctx: usize) -> usize {
    let forced = super::PARTITION.load(std::sync::atomic::Ordering::Relaxed);
    if forced != 0 {
        return forced.clamp(32, MAX_PART);
    }
    let mut part = MAX_PART;
    while part > MIN_PART && rows * heads * max_ctx.div_ceil(part) < TARGET_BLOCKS {
        part /= 2;
    }
    part
}
const THREADS: u32 = 128;

pub(super) fn attend(
    op: &PagedAttention<'_>,
    q: &CudaStorage,
    l: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = q.device.clone();
    let out = match &q.slice {
        CudaStorageSlice::F32(s) => attend_typed(op, s, l, &dev, "f32")?,
        CudaStorageSlice::BF16(s) => attend_typed(op, s, l, &dev, "bf16")?,
        CudaStorageSlice::F16(s) => attend_typed(op, s, l, &dev, "f16")?,
        _ => bail!("paged attention (cuda): unsupported dtype {:?}", q.dtype()),
    };
    let shape = Shape::from((op.rows.len(), op.heads.q * op.heads.dim));
    Ok((out, shape))
}

fn attend_typed<T: CudaDType + DeviceRepr>(
    op: &PagedAttention<'_>,
    q: &CudaSlice<T>,
    l: &Layout,
    dev: &CudaDevice,
    name: &str,
) -> candle_core::Result<CudaStorage> {
    let h = op.heads;
    if h.dim > MAX_HD {
        bail!(
            "paged attention (cuda): head_dim {} is over {MAX_HD}",
            h.dim
        );
    }
    let rows = op.rows.len();
    let part_len = partition(rows, h.q, op.rows.max_ctx());
    let nparts = op.rows.max_ctx().div_ceil(part_len).max(1);
    let q = view(q, l)?;
    with_cuda(op.k, |ks, kl| {
        with_cuda(op.v, |vs, vl| {
            with_cuda(&op.rows.tables_dev, |ts, tl| {
                with_cuda(&op.rows.ctx_dev, |cs, cl| {
                    let k = view(ks.as_cuda_slice::<T>()?, kl)?;
                    let v = view(vs.as_cuda_slice::<T>()?, vl)?;
                    let tables = view(ts.as_cuda_slice::<u32>()?, tl)?;
                    let ctx = view(cs.as_cuda_slice::<u32>()?, cl)?;
                    let parts = rows * h.q * nparts;
                    // SAFETY: every element is written by the kernels below before it is read.
                    let part_out = unsafe { dev.alloc::<f32>(parts * h.dim)? };
                    let part_max = unsafe { dev.alloc::<f32>(parts)? };
                    let part_sum = unsafe { dev.alloc::<f32>(parts)? };
                    let out = unsafe { dev.alloc::<T>(rows * h.q * h.dim)? };

                    let f = dev.get_or_load_custom_func(
                        &format!("paged_attn_part_{name}"),
                        MODULE,
                        PTX,
                    )?;
                    let mut b = f.builder();
                    b.arg(&q);
                    b.arg(&k);
                    b.arg(&v);
                    b.arg(&tables);
                    b.arg(&ctx);
                    b.arg(&part_out);
                    b.arg(&part_max);
                    b.arg(&part_sum);
                    candle_core::builder_arg!(
                        b,
                        h.q as i32,
                        h.kv as i32,
                        h.dim as i32,
                        op.rows.block_size as i32,
                        op.rows.max_blocks as i32,
                        nparts as i32,
                        part_len as i32,
                        h.scale() as f32
                    );
                    let cfg = LaunchConfig {
                        grid_dim: (nparts as u32, h.q as u32, rows as u32),
                        block_dim: (THREADS, 1, 1),
                        shared_mem_bytes: 0,
                    };
                    // SAFETY: the arguments match the kernel's signature; the check in `super`
                    // and `PagedRows::new` keep every index inside its buffer.
                    unsafe { b.launch(cfg) }.w()?;

                    let f = dev.get_or_load_custom_func(
                        &format!("paged_attn_reduce_{name}"),
                        MODULE,
                        PTX,
                    )?;
                    let mut b = f.builder();
                    b.arg(&part_out);
                    b.arg(&part_max);
                    b.arg(&part_sum);
                    b.arg(&ctx);
                    b.arg(&out);
                    candle_core::builder_arg!(
                        b,
                        h.q as i32,
                        h.dim as i32,
                        nparts as i32,
                        part_len as i32
                    );
                    let cfg = LaunchConfig {
                        grid_dim: (h.q as u32, rows as u32, 1),
                        block_dim: (THREADS, 1, 1),
                        shared_mem_bytes: 0,
                    };
                    // SAFETY: as above.
                    unsafe { b.launch(cfg) }.w()?;
                    Ok(T::wrap_cuda_slice(out, dev.clone()))
                })
            })
        })
    })
}

pub(super) fn write_slots(
    cache: &mut CudaStorage,
    cl: &Layout,
    new: &CudaStorage,
    nl: &Layout,
    slots: &CudaStorage,
    sl: &Layout,
) -> candle_core::Result<()> {
    let dev = cache.device.clone();
    let slots = view(slots.as_cuda_slice::<u32>()?, sl)?;
    let (t, kv, d) = nl.shape().dims3()?;
    match (&mut cache.slice, &new.slice) {
        (CudaStorageSlice::F32(c), CudaStorageSlice::F32(n)) => {
            write_typed(c, cl, &view(n, nl)?, &slots, t, kv * d, &dev, "f32")
        }
        (CudaStorageSlice::BF16(c), CudaStorageSlice::BF16(n)) => {
            write_typed(c, cl, &view(n, nl)?, &slots, t, kv * d, &dev, "bf16")
        }
        (CudaStorageSlice::F16(c), CudaStorageSlice::F16(n)) => {
            write_typed(c, cl, &view(n, nl)?, &slots, t, kv * d, &dev, "f16")
        }
        _ => bail!(
            "write_slots (cuda): the cache and the rows differ in dtype, or it is unsupported"
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn write_typed<T: DeviceRepr>(
    cache: &mut CudaSlice<T>,
    cl: &Layout,
    new: &CudaView<'_, T>,
    slots: &CudaView<'_, u32>,
    t: usize,
    row: usize,
    dev: &CudaDevice,
    name: &str,
) -> candle_core::Result<()> {
    let Some((a, b)) = cl.contiguous_offsets() else {
        bail!("write_slots (cuda): the cache is not contiguous")
    };
    let total = (t * row) as u64;
    if total == 0 {
        return Ok(());
    }
    let mut cache = cache.slice_mut(a..b);
    let f = dev.get_or_load_custom_func(&format!("write_slots_{name}"), MODULE, PTX)?;
    let mut builder = f.builder();
    builder.arg(new);
    builder.arg(&mut cache);
    builder.arg(slots);
    candle_core::builder_arg!(builder, row as u32, total);
    let blocks = total.div_ceil(256).min(65_535) as u32;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match the kernel's signature; slots were checked against the cache
    // by `KvCache` before the rows were built.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(())
}
