//! Attention of a flat batch over a KV cache of candle tensors (GPUs; the CPU in bf16/f16), the
//! counterpart of the host path in `llama.rs`.
//!
//! What a step needs beyond the tensors of a layer is worked out once per forward, in
//! [`DeviceStep::new`], and shared by every layer: the cache slot of every new row, the block
//! tables and context lengths of the short chunks (decode steps), the causal plans of the long
//! ones (prefill), and how to put the two kinds of output back in flat-batch order. Per layer that
//! leaves one write of the new keys and one of the new values for the whole batch, one paged
//! attention for all short chunks ([`crate::paged_device`]) and the blocked matmuls of each long
//! chunk.

use candle_core::{Device, Tensor};

use crate::attention::{causal_blocked, CausalPlan, Heads};
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::llama::SeqChunk;
use crate::paged_device::{paged_attention, PagedRows};

pub(crate) struct DeviceStep {
    /// `(t)` u32: the cache slot of each row of the flat batch.
    slots: Tensor,
    /// The rows of the short chunks, in flat-batch order.
    paged: Option<PagedRows>,
    /// Their indices in the flat batch, when not every row is one of them.
    paged_at: Option<Tensor>,
    /// Per chunk: its causal plan when it is long.
    plans: Vec<Option<CausalPlan>>,
    /// Where each flat-batch row is in `[paged rows…, long chunks' rows…]`, when that is not the
    /// identity.
    order: Option<Tensor>,
}

impl DeviceStep {
    /// `(t)` u32: the cache slot of each row of the flat batch.
    pub(crate) fn slots(&self) -> &Tensor {
        &self.slots
    }

    pub(crate) fn new(chunks: &[SeqChunk<'_>], cache: &KvCache, device: &Device) -> Result<Self> {
        let total: usize = chunks.iter().map(|s| s.len).sum();
        let mut slots = Vec::with_capacity(total);
        let mut rows = Vec::new();
        let mut paged_at = Vec::new();
        let mut long_at = Vec::new();
        let mut plans = Vec::with_capacity(chunks.len());
        let mut offset = 0u32;
        for s in chunks {
            cache.check_table(s.block_table, s.start + s.len)?;
            for p in s.start..s.start + s.len {
                slots.push(cache.slot(s.block_table, p)? as u32);
            }
            let at = offset..offset + s.len as u32;
            if s.is_paged() {
                rows.extend((0..s.len).map(|i| (s.block_table, s.start + i + 1)));
                paged_at.extend(at);
                plans.push(None);
            } else {
                long_at.extend(at);
                plans.push(if s.len > 0 {
                    Some(CausalPlan::new(s.start, s.len, device)?)
                } else {
                    None
                });
            }
            offset += s.len as u32;
        }
        let paged = if rows.is_empty() {
            None
        } else {
            Some(PagedRows::new(&rows, cache.block_size(), device)?)
        };
        // Outputs come as [paged rows…, long rows…]; `order[r]` is row r's place in that list.
        let listed: Vec<u32> = paged_at.iter().chain(&long_at).copied().collect();
        let identity = listed.iter().enumerate().all(|(i, &r)| i as u32 == r);
        let order = if identity {
            None
        } else {
            let mut order = vec![0u32; total];
            for (i, &r) in listed.iter().enumerate() {
                order[r as usize] = i as u32;
            }
            Some(Tensor::from_vec(order, total, device)?)
        };
        let paged_at = if paged_at.len() == total || paged_at.is_empty() {
            None
        } else {
            let n = paged_at.len();
            Some(Tensor::from_vec(paged_at, n, device)?)
        };
        Ok(Self {
            slots: Tensor::from_vec(slots, total, device)?,
            paged,
            paged_at,
            plans,
            order,
        })
    }
}

/// One layer's attention: `q` `(t, heads.q, dim)`, `k` and `v` `(t, heads.kv, dim)` (q and k
/// roped). Writes the new keys and values into the cache unless `written` says that is done,
/// then attends. Returns `(t, heads.q · dim)`.
pub(crate) fn attention_device(
    li: usize,
    heads: Heads,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    written: bool,
    chunks: &[SeqChunk<'_>],
    step: &DeviceStep,
    cache: &KvCache,
) -> Result<Tensor> {
    if !written {
        cache.write_slots(li, k, v, &step.slots)?;
    }
    let mut outs = Vec::with_capacity(chunks.len() + 1);
    if let Some(rows) = &step.paged {
        let (kc, vc) = cache.layer_tensors(li)?;
        let qp = match &step.paged_at {
            Some(at) => q.index_select(at, 0)?,
            None => q.clone(),
        };
        outs.push(paged_attention(&qp, kc, vc, rows, heads)?);
    }
    let mut offset = 0;
    for (s, plan) in chunks.iter().zip(&step.plans) {
        if let Some(plan) = plan {
            let (kc, vc) = if s.start == 0 {
                (
                    k.narrow(0, offset, s.len)?.transpose(0, 1)?.contiguous()?,
                    v.narrow(0, offset, s.len)?.transpose(0, 1)?.contiguous()?,
                )
            } else {
                cache.gather_heads(li, s.block_table, s.start + s.len)?
            };
            let qs = q.narrow(0, offset, s.len)?;
            outs.push(causal_blocked(&qs, &kc, &vc, plan, heads)?);
        }
        offset += s.len;
    }
    if outs.is_empty() {
        return Ok(Tensor::zeros(
            (0, heads.q * heads.dim),
            q.dtype(),
            q.device(),
        )?);
    }
    let out = if outs.len() == 1 {
        outs.pop().expect("one output")
    } else {
        Tensor::cat(&outs, 0)?
    };
    Ok(match &step.order {
        Some(order) => out.index_select(order, 0)?,
        None => out,
    })
}
