//! Paged KV storage: per layer one `(num_blocks · block_size, kv_heads, head_dim)` tensor for keys
//! and one for values. Which blocks a sequence owns is decided by the engine's block allocator;
//! this module only writes and gathers through block tables.

use candle_core::{DType, Device, Tensor};

use crate::config::TextConfig;
use crate::error::{ModelError, Result};

pub struct KvCache {
    block_size: usize,
    num_blocks: usize,
    k: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl KvCache {
    pub fn new(
        c: &TextConfig,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if block_size == 0 || num_blocks == 0 {
            return Err(ModelError::Input(
                "KV cache needs at least one block of at least one slot".into(),
            ));
        }
        let shape = (num_blocks * block_size, c.num_key_value_heads, c.head_dim);
        let mut k = Vec::with_capacity(c.num_hidden_layers);
        let mut v = Vec::with_capacity(c.num_hidden_layers);
        for _ in 0..c.num_hidden_layers {
            k.push(Tensor::zeros(shape, dtype, device)?);
            v.push(Tensor::zeros(shape, dtype, device)?);
        }
        Ok(Self {
            block_size,
            num_blocks,
            k,
            v,
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

    /// Store keys/values `(len, kv_heads, head_dim)` for positions `start..start + len`.
    pub(crate) fn write(
        &self,
        layer: usize,
        table: &[u32],
        start: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<()> {
        let len = k.dim(0)?;
        let mut i = 0;
        while i < len {
            let pos = start + i;
            let run = (self.block_size - pos % self.block_size).min(len - i);
            let slot = self.slot(table, pos)?;
            self.k[layer].slice_set(&k.narrow(0, i, run)?.contiguous()?, 0, slot)?;
            self.v[layer].slice_set(&v.narrow(0, i, run)?.contiguous()?, 0, slot)?;
            i += run;
        }
        Ok(())
    }

    /// Keys and values for positions `0..len`, gathered through the block table.
    pub(crate) fn gather(
        &self,
        layer: usize,
        table: &[u32],
        len: usize,
    ) -> Result<(Tensor, Tensor)> {
        let slots = (0..len)
            .map(|p| self.slot(table, p).map(|s| s as u32))
            .collect::<Result<Vec<_>>>()?;
        let idx = Tensor::from_vec(slots, len, self.k[layer].device())?;
        Ok((
            self.k[layer].index_select(&idx, 0)?,
            self.v[layer].index_select(&idx, 0)?,
        ))
    }
}
