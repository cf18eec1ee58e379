//! LLaMA-family decoder (RMSNorm, RoPE, GQA, SwiGLU, untied or tied head) over a *flat batch*:
//! the new tokens of many sequences are concatenated into one `(T, hidden)` matrix so every linear
//! layer runs once per step; attention reads each sequence's K/V through its paged block table
//! (`attention.rs`: one parallel kernel for all decode rows, blocked matmuls for prefill).

use candle_core::{DType, Device, Tensor, D};

use crate::attention::{causal_host, paged_rows, Heads, KernelRow};
use crate::attention_device::{attention_device, DeviceStep};
use crate::config::TextConfig;
use crate::error::{ModelError, Result};
use crate::host_dense::with_values;
use crate::kv_cache::KvCache;
use crate::layer_ops::{self, add_rms_norm};
use crate::linear::Linear;
use crate::vision;
use crate::weights::Weights;

/// Chunks of up to this many new positions (decode steps, short prompts) go through the paged
/// attention kernels, on the host cache ([`paged_rows`]) and on devices (`paged_device`) alike;
/// longer ones through blocked products ([`causal_host`], `causal_blocked`).
const PAGED_MAX_LEN: usize = 32;

/// One sequence's share of a flat batch.
#[derive(Debug, Clone)]
pub struct SeqChunk<'a> {
    /// Positions already in the KV cache (the chunk starts at this position).
    pub start: usize,
    /// New positions in this chunk (rows of the flat batch, in order).
    pub len: usize,
    /// KV blocks covering positions `0..start + len`.
    pub block_table: &'a [u32],
    /// Return logits for the chunk's last position.
    pub want_logits: bool,
}

impl SeqChunk<'_> {
    /// Whether the chunk's attention takes the paged kernels rather than the blocked products
    /// (see [`PAGED_MAX_LEN`]).
    pub(crate) fn is_paged(&self) -> bool {
        self.len <= PAGED_MAX_LEN
    }
}

struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?)
    }
}

struct Layer {
    /// `q_proj`, `k_proj` and `v_proj` stacked into one `(q + 2·kv, hidden)` projection: one
    /// pass over the activations and one kernel call instead of three.
    qkv: Linear,
    o: Linear,
    /// `gate_proj` over `up_proj`, `(2·intermediate, hidden)`.
    gate_up: Linear,
    down: Linear,
    ln1: RmsNorm,
    ln2: RmsNorm,
}

pub struct Llama {
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    config: TextConfig,
}

/// A decoder projection, packed for the CPU kernel where it runs ([`Linear::packed`]).
fn linear(w: &Weights, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
    Ok(Linear::packed(vision::linear(w, name, out, inp, bias)?))
}

/// Several projections of the same input stacked row-wise into one (their outputs side by side).
fn stacked(
    w: &Weights,
    names: &[String],
    outs: &[usize],
    inp: usize,
    bias: bool,
) -> Result<Linear> {
    let mut weights = Vec::with_capacity(names.len());
    let mut biases = Vec::with_capacity(names.len());
    for (name, &out) in names.iter().zip(outs) {
        weights.push(w.get(&format!("{name}.weight"), &[out, inp])?);
        if bias {
            biases.push(w.get(&format!("{name}.bias"), &[out])?);
        }
    }
    let weight = Tensor::cat(&weights, 0)?;
    let bias = if bias {
        Some(Tensor::cat(&biases, 0)?)
    } else {
        None
    };
    Ok(Linear::packed(candle_nn::Linear::new(weight, bias)))
}

fn rms(w: &Weights, name: &str, dim: usize, eps: f64) -> Result<RmsNorm> {
    Ok(RmsNorm {
        weight: w.get(name, &[dim])?,
        eps: eps as f32,
    })
}

impl Llama {
    pub fn load(w: &Weights, c: &TextConfig) -> Result<Self> {
        let h = c.hidden_size;
        let qd = c.num_attention_heads * c.head_dim;
        let kvd = c.num_key_value_heads * c.head_dim;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("lm.layers.{i}");
            let names = |list: &[&str]| list.iter().map(|n| format!("{p}.{n}")).collect::<Vec<_>>();
            let qkv = stacked(
                w,
                &names(&["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
                &[qd, kvd, kvd],
                h,
                c.attention_bias,
            )?;
            let gate_up = stacked(
                w,
                &names(&["mlp.gate_proj", "mlp.up_proj"]),
                &[c.intermediate_size, c.intermediate_size],
                h,
                false,
            )?;
            layers.push(Layer {
                qkv,
                o: linear(w, &format!("{p}.self_attn.o_proj"), h, qd, false)?,
                gate_up,
                down: linear(
                    w,
                    &format!("{p}.mlp.down_proj"),
                    h,
                    c.intermediate_size,
                    false,
                )?,
                ln1: rms(w, &format!("{p}.input_layernorm.weight"), h, c.rms_norm_eps)?,
                ln2: rms(
                    w,
                    &format!("{p}.post_attention_layernorm.weight"),
                    h,
                    c.rms_norm_eps,
                )?,
            });
        }
        let embed = w.get("lm.embed_tokens.weight", &[c.vocab_size, h])?;
        let lm_head = if w.contains("lm.lm_head.weight") || !c.tie_word_embeddings {
            linear(w, "lm.lm_head", c.vocab_size, h, false)?
        } else {
            Linear::new(candle_nn::Linear::new(embed.clone(), None))
        };
        let (cos, sin) = rope_tables(c, w.device())?;
        Ok(Self {
            embed,
            layers,
            norm: rms(w, "lm.norm.weight", h, c.rms_norm_eps)?,
            lm_head,
            cos: cos.to_dtype(w.dtype())?,
            sin: sin.to_dtype(w.dtype())?,
            config: c.clone(),
        })
    }

    pub fn config(&self) -> &TextConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.embed.dtype()
    }

    /// Token embeddings `(n, hidden)`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let vocab = self.config.vocab_size as u32;
        if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let idx = Tensor::from_slice(ids, ids.len(), self.embed.device())?;
        Ok(self.embed.index_select(&idx, 0)?)
    }

    /// The decoder layers over a flat batch: final hidden states `(Σ len, hidden)`, before the
    /// last norm.
    fn hidden_states(
        &self,
        embeds: &Tensor,
        chunks: &[SeqChunk<'_>],
        cache: &KvCache,
    ) -> Result<Tensor> {
        let c = &self.config;
        let total: usize = chunks.iter().map(|s| s.len).sum();
        let (t, h) = embeds.dims2()?;
        if t != total || h != c.hidden_size {
            return Err(ModelError::Input(format!(
                "flat batch is {t}x{h}, chunks need {total}x{}",
                c.hidden_size
            )));
        }
        for s in chunks {
            if s.start + s.len > c.max_position_embeddings {
                return Err(ModelError::Input(format!(
                    "position {} exceeds the model's context of {}",
                    s.start + s.len,
                    c.max_position_embeddings
                )));
            }
        }
        let positions: Vec<u32> = chunks
            .iter()
            .flat_map(|s| (s.start..s.start + s.len).map(|p| p as u32))
            .collect();
        let pos = Tensor::from_vec(positions, t, embeds.device())?;
        let cos = self.cos.index_select(&pos, 0)?;
        let sin = self.sin.index_select(&pos, 0)?;
        // Off the host cache, what every layer's attention needs is worked out once per step.
        let step = if cache.is_host() {
            None
        } else {
            Some(DeviceStep::new(chunks, cache, embeds.device())?)
        };
        let mut x = embeds.to_dtype(self.dtype())?;
        // Each layer's input norm comes with the residual add before it (fused on CUDA).
        let mut y = match self.layers.first() {
            Some(l) => Some(l.ln1.forward(&x)?),
            None => None,
        };
        for (li, layer) in self.layers.iter().enumerate() {
            let y_in = y.take().expect("the layer's normed input");
            let attn =
                self.attention(li, layer, &y_in, &cos, &sin, chunks, step.as_ref(), cache)?;
            let o = layer.o.forward(&attn)?;
            let (x1, y2) = add_rms_norm(&x, &o, &layer.ln2.weight, layer.ln2.eps)?;
            let gate_up = layer.gate_up.forward(&y2)?;
            let act = layer_ops::swiglu(&gate_up, c.intermediate_size)?;
            let mlp = layer.down.forward(&act)?;
            x = match self.layers.get(li + 1) {
                Some(next) => {
                    let (x2, y_next) = add_rms_norm(&x1, &mlp, &next.ln1.weight, next.ln1.eps)?;
                    y = Some(y_next);
                    x2
                }
                None => (x1 + mlp)?,
            };
        }
        Ok(x)
    }

    /// Run the decoder over a flat batch. `embeds` is `(Σ len, hidden)`; returns the logits
    /// `(n_wanted, vocab)` in f32 for the chunks with `want_logits`, in order.
    pub fn forward(
        &self,
        embeds: &Tensor,
        chunks: &[SeqChunk<'_>],
        cache: &KvCache,
    ) -> Result<Tensor> {
        let mut rows = Vec::new();
        let mut offset = 0u32;
        for s in chunks {
            offset += s.len as u32;
            if s.want_logits && s.len > 0 {
                rows.push(offset - 1);
            }
        }
        self.forward_rows(embeds, chunks, cache, &rows)
    }

    /// Like [`Llama::forward`], but the logits `(rows.len(), vocab)` are those of the given rows
    /// of the flat batch, in that order (e.g. every position of a prompt being scored).
    pub fn forward_rows(
        &self,
        embeds: &Tensor,
        chunks: &[SeqChunk<'_>],
        cache: &KvCache,
        rows: &[u32],
    ) -> Result<Tensor> {
        let x = self.hidden_states(embeds, chunks, cache)?;
        if rows.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.config.vocab_size),
                DType::F32,
                embeds.device(),
            )?);
        }
        let idx = Tensor::from_slice(rows, rows.len(), embeds.device())?;
        let picked = self.norm.forward(&x.index_select(&idx, 0)?)?;
        Ok(self.lm_head.forward(&picked)?.to_dtype(DType::F32)?)
    }

    /// Like [`Llama::forward`] but with f32 logits for every row of the flat batch
    /// `(Σ len, vocab)`, whatever `want_logits` says: what a loss over a whole answer needs.
    pub fn forward_all_logits(
        &self,
        embeds: &Tensor,
        chunks: &[SeqChunk<'_>],
        cache: &KvCache,
    ) -> Result<Tensor> {
        let x = self.hidden_states(embeds, chunks, cache)?;
        let x = self.norm.forward(&x)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        li: usize,
        layer: &Layer,
        y: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        chunks: &[SeqChunk<'_>],
        step: Option<&DeviceStep>,
        cache: &KvCache,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let heads = Heads {
            q: nh,
            kv: nkv,
            dim: hd,
        };
        let qkv = layer.qkv.forward(y)?;
        // On CUDA the split and RoPE also store k and v in the cache, in the same launch.
        let device_cache = match step {
            Some(step) => {
                let (kc, vc) = cache.layer_tensors(li)?;
                Some((step.slots(), kc, vc))
            }
            None => None,
        };
        let (q, k, v, written) = layer_ops::qkv_rope(&qkv, cos, sin, heads, device_cache)?;
        match step {
            Some(step) => attention_device(li, heads, (&q, &k, &v), written, chunks, step, cache),
            None => attention_host(li, heads, (&q, &k, &v), chunks, cache),
        }
    }
}

/// Attention over the host KV cache: writes every chunk's keys and values in place, runs the
/// short chunks (decode steps) through the paged kernel in one parallel pass and the long ones
/// (prefill) through [`causal_host`].
fn attention_host(
    li: usize,
    heads: Heads,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    chunks: &[SeqChunk<'_>],
    cache: &KvCache,
) -> Result<Tensor> {
    let t = q.dim(0)?;
    let row = heads.kv * heads.dim;
    let width = heads.q * heads.dim;
    let (k, v) = (k.contiguous()?, v.contiguous()?);
    with_values(&k, |kf| {
        with_values(&v, |vf| -> Result<()> {
            let mut offset = 0;
            for s in chunks {
                let span = offset * row..(offset + s.len) * row;
                cache.write_host(li, s.block_table, s.start, &kf[span.clone()], &vf[span])?;
                offset += s.len;
            }
            Ok(())
        })
    })???;
    let mut out = vec![0f32; t * width];
    let mut rows = Vec::new();
    let mut at = Vec::new();
    let mut offset = 0;
    for s in chunks {
        if s.is_paged() {
            for i in 0..s.len {
                rows.push(KernelRow {
                    table: s.block_table,
                    ctx: s.start + i + 1,
                });
                at.push(offset + i);
            }
        }
        offset += s.len;
    }
    if !rows.is_empty() {
        let mut o = vec![0f32; rows.len() * width];
        let layer = cache.host_layer(li)?;
        with_values(&q.contiguous()?, |qf| {
            if rows.len() == t {
                paged_rows(qf, &rows, &layer, heads, &mut o);
            } else {
                let qk: Vec<f32> = at
                    .iter()
                    .flat_map(|&r| qf[r * width..(r + 1) * width].iter().copied())
                    .collect();
                paged_rows(&qk, &rows, &layer, heads, &mut o);
            }
        })?;
        for (j, &r) in at.iter().enumerate() {
            out[r * width..(r + 1) * width].copy_from_slice(&o[j * width..(j + 1) * width]);
        }
    }
    offset = 0;
    for s in chunks {
        if !s.is_paged() {
            let (kc, vc) = if s.start == 0 {
                (
                    k.narrow(0, offset, s.len)?.transpose(0, 1)?.contiguous()?,
                    v.narrow(0, offset, s.len)?.transpose(0, 1)?.contiguous()?,
                )
            } else {
                cache.gather_heads(li, s.block_table, s.start + s.len)?
            };
            let o = causal_host(&q.narrow(0, offset, s.len)?, &kc, &vc, s.start, heads)?;
            out[offset * width..(offset + s.len) * width].copy_from_slice(&o);
        }
        offset += s.len;
    }
    Ok(Tensor::from_vec(out, (t, width), q.device())?)
}

/// cos/sin tables `(max_positions, head_dim / 2)`, computed in f32 like transformers does.
fn rope_tables(c: &TextConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = c.head_dim / 2;
    let theta = c.rope_theta as f32;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / c.head_dim as f32))
        .collect();
    let n = c.max_position_embeddings;
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for &f in &inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, half), device)?,
        Tensor::from_vec(sin, (n, half), device)?,
    ))
}

/// Final hidden helper for tests: the index of the max of each row.
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}
