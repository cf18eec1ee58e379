//! Paged KV storage: per layer one array for keys and one for values. Which blocks a sequence owns
//! is decided by the engine's block allocator; this module only writes and reads through block
//! tables.
//!
//! On the CPU in f32 the arrays are plain vectors, `(num_blocks, kv_heads, block_size, head_dim)`,
//! that the attention kernels read in place (no gather copy per layer and step): one KV head's
//! keys of a block are one contiguous run, so a decode step streams them sequentially. On other
//! devices and dtypes they are candle tensors `(num_blocks · block_size, kv_heads, head_dim)`,
//! written by [`KvCache::write_slots`] (one kernel per layer and step on CUDA) and read in place by
//! the paged attention of `paged_device`, or gathered with `index_select` for prefill chunks.

use std::sync::{RwLock, RwLockReadGuard};

use candle_core::{DType, Device, Tensor};

use crate::config::TextConfig;
use crate::error::{ModelError, Result};
use crate::paged_device;

enum Store {
    Host {
        k: Vec<RwLock<Vec<f32>>>,
        v: Vec<RwLock<Vec<f32>>>,
    },
    Tensors {
        k: Vec<Tensor>,
        v: Vec<Tensor>,
    },
}

pub struct KvCache {
    block_size: usize,
    num_blocks: usize,
    /// Floats per cache slot: `kv_heads · head_dim`.
    row: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
    store: Store,
}

/// One layer's host keys and values, read-locked for an attention kernel.
pub(crate) struct HostLayer<'a> {
    pub k: RwLockReadGuard<'a, Vec<f32>>,
    pub v: RwLockReadGuard<'a, Vec<f32>>,
    pub geometry: HostGeometry,
}

/// Where things are in a host layer's arrays: `(num_blocks, kv_heads, block_size, head_dim)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostGeometry {
    pub block_size: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl HostGeometry {
    /// Index of position `i` of `block` for KV head `head`: its `head_dim` values follow, and
    /// the block's next position of the same head starts `head_dim` later.
    #[inline]
    pub fn at(&self, block: usize, head: usize, i: usize) -> usize {
        ((block * self.kv_heads + head) * self.block_size + i) * self.head_dim
    }
}

fn poisoned() -> ModelError {
    ModelError::Input("KV cache lock poisoned by an earlier panic".into())
}

impl KvCache {
    pub fn new(
        c: &TextConfig,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::build(c, num_blocks, block_size, dtype, device, true)
    }

    /// A cache of candle tensors whatever the device: the path other devices take, for tests.
    #[cfg(test)]
    pub(crate) fn new_tensors(
        c: &TextConfig,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::build(c, num_blocks, block_size, dtype, device, false)
    }

    fn build(
        c: &TextConfig,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
        device: &Device,
        host: bool,
    ) -> Result<Self> {
        if block_size == 0 || num_blocks == 0 {
            return Err(ModelError::Input(
                "KV cache needs at least one block of at least one slot".into(),
            ));
        }
        let row = c.num_key_value_heads * c.head_dim;
        let slots = num_blocks * block_size;
        let layers = c.num_hidden_layers;
        let store = if host && device.is_cpu() && dtype == DType::F32 {
            // `vec![0.0; n]` maps zeroed pages lazily: an unused cache costs no resident memory.
            let mk = || {
                (0..layers)
                    .map(|_| RwLock::new(vec![0f32; slots * row]))
                    .collect()
            };
            Store::Host { k: mk(), v: mk() }
        } else {
            let shape = (slots, c.num_key_value_heads, c.head_dim);
            let mut k = Vec::with_capacity(layers);
            let mut v = Vec::with_capacity(layers);
            for _ in 0..layers {
                k.push(Tensor::zeros(shape, dtype, device)?);
                v.push(Tensor::zeros(shape, dtype, device)?);
            }
            Store::Tensors { k, v }
        };
        Ok(Self {
            block_size,
            num_blocks,
            row,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            dtype,
            device: device.clone(),
            store,
        })
    }

    /// Bytes one block takes across all layers (keys and values).
    pub fn bytes_per_block(c: &TextConfig, block_size: usize, dtype: DType) -> usize {
        2 * c.num_hidden_layers
            * block_size
            * c.num_key_value_heads
            * c.head_dim
            * dtype.size_in_bytes()
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Whether the attention kernels can read this cache in place (CPU, f32).
    pub(crate) fn is_host(&self) -> bool {
        matches!(self.store, Store::Host { .. })
    }

    /// Cache slot of position `pos` for a sequence with `table`.
    pub fn slot(&self, table: &[u32], pos: usize) -> Result<usize> {
        let b = *table.get(pos / self.block_size).ok_or_else(|| {
            ModelError::Input(format!(
                "block table of {} blocks does not cover position {pos}",
                table.len()
            ))
        })? as usize;
        if b >= self.num_blocks {
            return Err(ModelError::Input(format!(
                "block {b} is outside the cache ({} blocks)",
                self.num_blocks
            )));
        }
        Ok(b * self.block_size + pos % self.block_size)
    }

    /// Checks that `table` covers positions `0..len` with blocks inside the cache, so kernels may
    /// index without further checks.
    pub(crate) fn check_table(&self, table: &[u32], len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let needed = len.div_ceil(self.block_size);
        if table.len() < needed {
            return Err(ModelError::Input(format!(
                "block table of {} blocks does not cover position {}",
                table.len(),
                len - 1
            )));
        }
        if let Some(&b) = table[..needed]
            .iter()
            .find(|&&b| b as usize >= self.num_blocks)
        {
            return Err(ModelError::Input(format!(
                "block {b} is outside the cache ({} blocks)",
                self.num_blocks
            )));
        }
        Ok(())
    }

    /// Tensor cache only: store keys and values `(t, kv_heads, head_dim)` of a whole flat batch at
    /// `slots` (`(t)` u32, from [`KvCache::slot`]), one write per array.
    pub(crate) fn write_slots(
        &self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
        slots: &Tensor,
    ) -> Result<()> {
        let (kc, vc) = self.layer_tensors(layer)?;
        paged_device::write_slots(kc, k, slots)?;
        paged_device::write_slots(vc, v, slots)
    }

    /// Tensor cache only: one layer's key and value arrays, `(slots, kv_heads, head_dim)`.
    pub(crate) fn layer_tensors(&self, layer: usize) -> Result<(&Tensor, &Tensor)> {
        match &self.store {
            Store::Tensors { k, v } => Ok((&k[layer], &v[layer])),
            Store::Host { .. } => Err(ModelError::Input("not a tensor KV cache".into())),
        }
    }

    /// Host cache only: store rows of `kv_heads · head_dim` floats for positions
    /// `start..start + k.len() / row`.
    pub(crate) fn write_host(
        &self,
        layer: usize,
        table: &[u32],
        start: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<()> {
        let Store::Host { k: kc, v: vc } = &self.store else {
            return Err(ModelError::Input("not a host KV cache".into()));
        };
        let len = k.len() / self.row;
        self.check_table(table, start + len)?;
        let mut kc = kc[layer].write().map_err(|_| poisoned())?;
        let mut vc = vc[layer].write().map_err(|_| poisoned())?;
        let (g, hd) = (self.geometry(), self.head_dim);
        for i in 0..len {
            let pos = start + i;
            let block = table[pos / self.block_size] as usize;
            for h in 0..self.kv_heads {
                let at = g.at(block, h, pos % self.block_size);
                let src = i * self.row + h * hd..i * self.row + (h + 1) * hd;
                kc[at..at + hd].copy_from_slice(&k[src.clone()]);
                vc[at..at + hd].copy_from_slice(&v[src]);
            }
        }
        Ok(())
    }

    /// Host cache only: one layer's arrays, read-locked.
    pub(crate) fn host_layer(&self, layer: usize) -> Result<HostLayer<'_>> {
        let Store::Host { k, v } = &self.store else {
            return Err(ModelError::Input("not a host KV cache".into()));
        };
        Ok(HostLayer {
            k: k[layer].read().map_err(|_| poisoned())?,
            v: v[layer].read().map_err(|_| poisoned())?,
            geometry: self.geometry(),
        })
    }

    fn geometry(&self) -> HostGeometry {
        HostGeometry {
            block_size: self.block_size,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// Keys and values for positions `0..len`, gathered through the block table, each
    /// `(kv_heads, len, head_dim)` and contiguous: the layout a batched matmul over heads wants.
    pub(crate) fn gather_heads(
        &self,
        layer: usize,
        table: &[u32],
        len: usize,
    ) -> Result<(Tensor, Tensor)> {
        match &self.store {
            Store::Host { .. } => {
                self.check_table(table, len)?;
                let l = self.host_layer(layer)?;
                let (nkv, hd, bs) = (self.kv_heads, self.head_dim, self.block_size);
                let mut k = vec![0f32; nkv * len * hd];
                let mut v = vec![0f32; nkv * len * hd];
                // A block's positions of one head are one run in the cache and in the output.
                for (b, &block) in table[..len.div_ceil(bs)].iter().enumerate() {
                    let n = bs.min(len - b * bs);
                    for h in 0..nkv {
                        let src = l.geometry.at(block as usize, h, 0);
                        let dst = (h * len + b * bs) * hd;
                        k[dst..dst + n * hd].copy_from_slice(&l.k[src..src + n * hd]);
                        v[dst..dst + n * hd].copy_from_slice(&l.v[src..src + n * hd]);
                    }
                }
                let shape = (nkv, len, hd);
                Ok((
                    Tensor::from_vec(k, shape, &self.device)?.to_dtype(self.dtype)?,
                    Tensor::from_vec(v, shape, &self.device)?.to_dtype(self.dtype)?,
                ))
            }
            Store::Tensors { k, v } => {
                let slots = (0..len)
                    .map(|p| self.slot(table, p).map(|s| s as u32))
                    .collect::<Result<Vec<_>>>()?;
                let idx = Tensor::from_vec(slots, len, &self.device)?;
                Ok((
                    k[layer]
                        .index_select(&idx, 0)?
                        .transpose(0, 1)?
                        .contiguous()?,
                    v[layer]
                        .index_select(&idx, 0)?
                        .transpose(0, 1)?
                        .contiguous()?,
                ))
            }
        }
    }
}
