//! Paged attention and KV writes on a KV cache of candle tensors (`(slots, kv_heads, head_dim)`
//! per layer): the path of GPUs, and of the CPU in bf16/f16.
//!
//! Two operations, each one kernel launch per layer for the whole flat batch:
//! - [`write_slots`]: stores the step's new keys (or values) at their cache slots. It replaces a
//!   `slice_set` per block run of every sequence.
//! - [`paged_attention`]: attention of short chunks (decode steps) read in place through the block
//!   tables. It replaces, per sequence and layer, a gather of the whole context with
//!   `index_select`, two transposes and a chain of small matmul/softmax ops.
//!
//! On CUDA both run kernels of their own (`cuda/paged_attention.cu`, compiled to PTX at build time
//! by `build.rs`; see [`cuda`]). On the CPU they run plain loops in f32: the reference the CUDA
//! kernels are checked against (`grain check-device kernels`) and the path the unit tests cover.

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{
    bail, CpuStorage, CustomOp1, DType, Device, InplaceOp3, Layout, Shape, Storage, Tensor,
    WithDType,
};

use candle_core::backend::BackendStorage;

use crate::attention::Heads;
use crate::error::Result;

pub(crate) mod check;
#[cfg(feature = "cuda")]
mod cuda;

/// The rows of a flat batch that [`paged_attention`] serves, each with its block table and
/// context length (its own position included). Built once per forward and shared by every layer.
pub(crate) struct PagedRows {
    /// `(rows, max_blocks)`, each table padded with block 0 (never read past `ctx`).
    tables: Vec<u32>,
    ctx: Vec<u32>,
    max_blocks: usize,
    block_size: usize,
    /// The same two arrays on the cache's device (read by the CUDA kernels).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    tables_dev: Tensor,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    ctx_dev: Tensor,
}

impl PagedRows {
    /// `rows`: (block table, context length) per row; every table must already be checked to
    /// cover its context ([`crate::kv_cache::KvCache::check_table`]).
    pub(crate) fn new(
        rows: &[(&[u32], usize)],
        block_size: usize,
        device: &Device,
    ) -> Result<Self> {
        let max_blocks = rows
            .iter()
            .map(|(_, ctx)| ctx.div_ceil(block_size))
            .max()
            .unwrap_or(0)
            .max(1);
        let mut tables = vec![0u32; rows.len() * max_blocks];
        for ((table, ctx), dst) in rows.iter().zip(tables.chunks_exact_mut(max_blocks)) {
            let n = ctx.div_ceil(block_size);
            dst[..n].copy_from_slice(&table[..n]);
        }
        let ctx: Vec<u32> = rows.iter().map(|&(_, c)| c as u32).collect();
        Ok(Self {
            tables_dev: Tensor::from_slice(&tables, (rows.len(), max_blocks), device)?,
            ctx_dev: Tensor::from_slice(&ctx, rows.len(), device)?,
            tables,
            ctx,
            max_blocks,
            block_size,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.ctx.len()
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn max_ctx(&self) -> usize {
        self.ctx.iter().copied().max().unwrap_or(0) as usize
    }

    /// Slot of position `p` of row `r`.
    fn slot(&self, r: usize, p: usize) -> usize {
        self.tables[r * self.max_blocks + p / self.block_size] as usize * self.block_size
            + p % self.block_size
    }
}

/// Attention of `q` `(rows, heads.q, dim)` (roped, one row per [`PagedRows`] row) over one
/// layer's cache `k`, `v` `(slots, heads.kv, dim)`, which already holds every row's own key and
/// value. Returns `(rows, heads.q · dim)` in `q`'s dtype.
pub(crate) fn paged_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rows: &PagedRows,
    heads: Heads,
) -> Result<Tensor> {
    let q = q.contiguous()?;
    let out = q.apply_op1_no_bwd(&PagedAttention { k, v, rows, heads })?;
    Ok(out)
}

/// Stores `new` `(t, heads.kv, dim)` into `cache` `(slots, heads.kv, dim)` at `slots` (`(t)`
/// u32, one slot per row).
pub(crate) fn write_slots(cache: &Tensor, new: &Tensor, slots: &Tensor) -> Result<()> {
    let new = new.to_dtype(cache.dtype())?.contiguous()?;
    cache.inplace_op3(&new, slots, &WriteSlots)?;
    Ok(())
}

struct PagedAttention<'a> {
    k: &'a Tensor,
    v: &'a Tensor,
    rows: &'a PagedRows,
    heads: Heads,
}

/// The contiguous elements of a CPU tensor of type `T`.
fn host_values<'s, T: WithDType>(s: &'s CpuStorage, l: &Layout) -> candle_core::Result<&'s [T]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("paged attention: the operand is not contiguous")
    };
    Ok(&T::cpu_storage_as_slice(s)?[a..b])
}

impl PagedAttention<'_> {
    fn check(&self, q: &Layout) -> candle_core::Result<(usize, usize, usize)> {
        let (rows, nq, hd) = q.shape().dims3()?;
        let h = self.heads;
        if rows != self.rows.len()
            || nq != h.q
            || hd != h.dim
            || h.kv == 0
            || !h.q.is_multiple_of(h.kv)
        {
            bail!(
                "paged attention: q is {:?} for {} rows and {h:?}",
                q.shape(),
                self.rows.len()
            );
        }
        for c in [self.k, self.v] {
            let (_, kv, d) = c.dims3()?;
            if kv != h.kv || d != h.dim || !c.is_contiguous() {
                bail!("paged attention: cache is {:?} for {h:?}", c.shape());
            }
        }
        Ok((rows, nq, hd))
    }

    /// The CPU reference: per (row, query head) scores, softmax and weighted sum, in f32.
    fn host<T: WithDType>(&self, q: &CpuStorage, ql: &Layout) -> candle_core::Result<Vec<T>> {
        let (rows, nq, hd) = self.check(ql)?;
        let q = host_values::<T>(q, ql)?;
        let (ks, kl) = self.k.storage_and_layout();
        let (vs, vl) = self.v.storage_and_layout();
        let (Storage::Cpu(ks), Storage::Cpu(vs)) = (&*ks, &*vs) else {
            bail!("paged attention: the cache is not on the CPU")
        };
        let (k, v) = (host_values::<T>(ks, kl)?, host_values::<T>(vs, vl)?);
        let (nkv, group, scale) = (self.heads.kv, nq / self.heads.kv, self.heads.scale() as f32);
        let f = |x: T| x.to_f64() as f32;
        let mut out = Vec::with_capacity(rows * nq * hd);
        let (mut w, mut acc) = (Vec::new(), vec![0f32; hd]);
        for r in 0..rows {
            let n = self.rows.ctx[r] as usize;
            for h in 0..nq {
                let qh = &q[(r * nq + h) * hd..][..hd];
                let at = |p: usize| (self.rows.slot(r, p) * nkv + h / group) * hd;
                w.clear();
                w.extend((0..n).map(|p| {
                    let kp = &k[at(p)..][..hd];
                    qh.iter().zip(kp).map(|(&a, &b)| f(a) * f(b)).sum::<f32>() * scale
                }));
                let max = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                w.iter_mut().for_each(|s| *s = (*s - max).exp());
                let sum: f32 = w.iter().sum();
                acc.fill(0.0);
                for (p, &wp) in w.iter().enumerate() {
                    for (a, &x) in acc.iter_mut().zip(&v[at(p)..][..hd]) {
                        *a += wp * f(x);
                    }
                }
                out.extend(acc.iter().map(|&a| T::from_f64((a / sum) as f64)));
            }
        }
        Ok(out)
    }
}

impl CustomOp1 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "grain-paged-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let shape = Shape::from((self.rows.len(), self.heads.q * self.heads.dim));
        let out = match s.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(self.host::<f32>(s, l)?),
            DType::BF16 => half::bf16::to_cpu_storage_owned(self.host(s, l)?),
            DType::F16 => half::f16::to_cpu_storage_owned(self.host(s, l)?),
            dt => bail!("paged attention: unsupported dtype {dt:?}"),
        };
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.check(l)?;
        cuda::attend(self, s, l)
    }
}

struct WriteSlots;

impl WriteSlots {
    fn host<T: WithDType>(
        cache: &mut [T],
        cl: &Layout,
        new: &CpuStorage,
        nl: &Layout,
        slots: &[u32],
    ) -> candle_core::Result<()> {
        let new = host_values::<T>(new, nl)?;
        let row = new.len() / slots.len().max(1);
        let Some((a, b)) = cl.contiguous_offsets() else {
            bail!("write_slots: the cache is not contiguous")
        };
        let cache = &mut cache[a..b];
        for (&s, src) in slots.iter().zip(new.chunks_exact(row)) {
            let Some(dst) = cache.get_mut(s as usize * row..(s as usize + 1) * row) else {
                bail!("write_slots: slot {s} is outside the cache")
            };
            dst.copy_from_slice(src);
        }
        Ok(())
    }

    fn check(cl: &Layout, nl: &Layout, sl: &Layout) -> candle_core::Result<()> {
        let (_, kv, d) = cl.shape().dims3()?;
        let (t, kv2, d2) = nl.shape().dims3()?;
        if (kv, d) != (kv2, d2) || sl.shape().dims1()? != t {
            bail!(
                "write_slots: cache {:?}, rows {:?}, slots {:?}",
                cl.shape(),
                nl.shape(),
                sl.shape()
            );
        }
        Ok(())
    }
}

impl InplaceOp3 for WriteSlots {
    fn name(&self) -> &'static str {
        "grain-write-slots"
    }

    fn cpu_fwd(
        &self,
        cache: &mut CpuStorage,
        cl: &Layout,
        new: &CpuStorage,
        nl: &Layout,
        slots: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<()> {
        Self::check(cl, nl, sl)?;
        let slots = host_values::<u32>(slots, sl)?;
        match cache {
            CpuStorage::F32(c) => Self::host(c, cl, new, nl, slots),
            CpuStorage::BF16(c) => Self::host(c, cl, new, nl, slots),
            CpuStorage::F16(c) => Self::host(c, cl, new, nl, slots),
            c => bail!("write_slots: unsupported dtype {:?}", c.dtype()),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        cache: &mut candle_core::CudaStorage,
        cl: &Layout,
        new: &candle_core::CudaStorage,
        nl: &Layout,
        slots: &candle_core::CudaStorage,
        sl: &Layout,
    ) -> candle_core::Result<()> {
        Self::check(cl, nl, sl)?;
        cuda::write_slots(cache, cl, new, nl, slots, sl)
    }
}

/// A fixed partition length for the CUDA decode kernel (0: chosen per launch), for A/B runs and
/// checks. See `cuda::partition`.
static PARTITION: AtomicUsize = AtomicUsize::new(0);

/// Forces the CUDA decode attention's partition length (positions per thread block; a power of two
/// from 32 to 256), or with 0 lets each launch choose it from the batch (the default).
pub fn set_paged_partition(positions: usize) {
    PARTITION.store(positions, Ordering::Relaxed);
}

#[cfg(test)]
mod tests;
