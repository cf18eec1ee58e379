//! The AVG-LLaVA granularity router (`model.router.*`).
//!
//! Per image: pick the prompt tokens most similar to the base crop, append them to every crop's
//! tokens pooled at all granularities, mix the crops with one Transformer encoder layer that attends
//! *across crops* (PyTorch's default `batch_first=False` makes the crop axis the sequence axis),
//! score each token with an MLP, contract tokens with a learned voter, average over crops, and
//! LayerNorm the five logits. Images with the same crop count are batched together: the 1148
//! token positions are independent batch entries of the merger, so stacking images is exact.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{LayerNorm, Linear};

use crate::config::{LlavaConfig, RouterConfig};
use crate::error::{ModelError, Result};
use crate::host_dense::{to_f32_vec, with_values};
use crate::router_attend;
use crate::router_cpu::{CpuRouter, DenseF32, NormF32};
use crate::router_memo::VisualMemo;
use crate::weights::Weights;

/// What the router needs for one image.
pub struct RouterInput {
    /// Projected, unpooled crop features `(n_crops, 576, D)`, base first.
    pub features: Tensor,
    /// The prompt's token embeddings with image placeholders removed, `(T, D)`.
    pub text_embeds: Tensor,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouterOutput {
    /// LayerNorm'd logits, one per granularity in config order.
    pub logits: Vec<f32>,
    /// Index into the config's granularities.
    pub choice: usize,
}

pub struct Router {
    in_proj: Linear,
    out_proj: Linear,
    linear1: Linear,
    linear2: Linear,
    norm1: LayerNorm,
    norm2: LayerNorm,
    mlp1: Linear,
    mlp2: Linear,
    voter: Tensor,
    norm: LayerNorm,
    heads: usize,
    text_queries: usize,
    granularities: Vec<u32>,
    hidden: usize,
    differentiable: bool,
    /// The `f32` layers of the fused CPU path ([`crate::router_cpu`]); `None` on other devices
    /// and when differentiable.
    cpu: Option<CpuRouter>,
    /// The fused path's visual parts of recent images, by features tensor.
    visual_memo: VisualMemo,
}

/// A source of router tensors by canonical name and expected shape (see [`Router::from_source`]).
pub type TensorSource<'a> = dyn FnMut(&str, &[usize]) -> Result<Tensor> + 'a;

impl Router {
    pub fn load(w: &Weights, config: &LlavaConfig, rc: &RouterConfig) -> Result<Self> {
        Self::from_source(&mut |name, shape| w.get(name, shape), config, rc, false)
    }

    /// Build the router from any tensor source, called with each canonical name (`router.…`) and
    /// its expected shape. Training passes trainable variables here. With `differentiable`, the
    /// layer norms and the attention softmax use composite candle ops that have a backward pass
    /// (candle's fused kernels, used for inference, have none).
    pub fn from_source(
        get: &mut TensorSource<'_>,
        config: &LlavaConfig,
        rc: &RouterConfig,
        differentiable: bool,
    ) -> Result<Self> {
        let d = config.text.hidden_size;
        let e = config.granularities.len();
        let seq: usize = config
            .granularities
            .iter()
            .map(|&g| g as usize)
            .sum::<usize>()
            + rc.text_queries;
        if !d.is_multiple_of(rc.merger_heads) {
            return Err(ModelError::Input(format!(
                "router width {d} is not divisible by {} heads",
                rc.merger_heads
            )));
        }
        let mut lin = |name: &str, out_dim: usize, in_dim: usize| -> Result<Linear> {
            Ok(Linear::new(
                get(&format!("{name}.weight"), &[out_dim, in_dim])?,
                Some(get(&format!("{name}.bias"), &[out_dim])?),
            ))
        };
        let out_proj = lin("router.merger.self_attn.out_proj", d, d)?;
        let linear1 = lin("router.merger.linear1", d, d)?;
        let linear2 = lin("router.merger.linear2", d, d)?;
        let mlp1 = lin("router.router.0", d, d)?;
        let mlp2 = lin("router.router.2", e, d)?;
        let mut norm = |name: &str, dim: usize| -> Result<LayerNorm> {
            Ok(LayerNorm::new(
                get(&format!("{name}.weight"), &[dim])?,
                get(&format!("{name}.bias"), &[dim])?,
                1e-5,
            ))
        };
        let norm1 = norm("router.merger.norm1", d)?;
        let norm2 = norm("router.merger.norm2", d)?;
        let out_norm = norm("router.norm", e)?;
        let in_proj = Linear::new(
            get("router.merger.self_attn.in_proj_weight", &[3 * d, d])?,
            Some(get("router.merger.self_attn.in_proj_bias", &[3 * d])?),
        );
        let voter = get("router.voter", &[seq, 1])?;
        let cpu = if !differentiable && in_proj.weight().device().is_cpu() {
            let dense = |l: &Linear| -> Result<DenseF32> {
                DenseF32::new(l.weight(), l.bias().expect("router linears have biases"))
            };
            let norm = |l: &LayerNorm| -> Result<NormF32> {
                NormF32::new(l.weight(), l.bias().expect("router norms have biases"))
            };
            // q, k, v and the attention output in head-interleaved column order.
            let perm = router_attend::interleave_heads(d, rc.merger_heads);
            let perm3: Vec<u32> = (0..3)
                .flat_map(|b| perm.iter().map(move |&o| o + (b * d) as u32))
                .collect();
            let dev = in_proj.weight().device().clone();
            let perm = Tensor::new(perm.as_slice(), &dev)?;
            let perm3 = Tensor::new(perm3.as_slice(), &dev)?;
            let ib = in_proj.bias().expect("in_proj has a bias");
            let ob = out_proj.bias().expect("out_proj has a bias");
            Some(CpuRouter {
                in_proj: DenseF32::new(
                    &in_proj.weight().index_select(&perm3, 0)?,
                    &ib.index_select(&perm3, 0)?,
                )?,
                out_proj: DenseF32::new(&out_proj.weight().index_select(&perm, 1)?, ob)?,
                linear1: dense(&linear1)?,
                linear2: dense(&linear2)?,
                mlp1: dense(&mlp1)?,
                mlp2_weight: to_f32_vec(mlp2.weight())?,
                mlp2_bias: to_f32_vec(mlp2.bias().expect("mlp2 has a bias"))?,
                norm1: norm(&norm1)?,
                norm2: norm(&norm2)?,
                norm: norm(&out_norm)?,
                voter: to_f32_vec(&voter)?,
                heads: rc.merger_heads,
            })
        } else {
            None
        };
        Ok(Self {
            in_proj,
            out_proj,
            linear1,
            linear2,
            norm1,
            norm2,
            mlp1,
            mlp2,
            voter,
            norm: out_norm,
            heads: rc.merger_heads,
            text_queries: rc.text_queries,
            granularities: config.granularities.clone(),
            hidden: d,
            differentiable,
            cpu,
            visual_memo: VisualMemo::default(),
        })
    }

    pub fn granularities(&self) -> &[u32] {
        &self.granularities
    }

    /// The top-`text_queries` prompt embeddings by mean cosine similarity to the base crop, in score
    /// order, zero-padded: `(text_queries, D)`.
    pub fn select_text(&self, base: &Tensor, text: &Tensor) -> Result<Tensor> {
        let (t, d) = text.dims2()?;
        let dev = base.device();
        let k = self.text_queries;
        if t == 0 {
            return Ok(Tensor::zeros((k, d), base.dtype(), dev)?);
        }
        let unit = |x: &Tensor| -> Result<Tensor> {
            let x = x.to_dtype(DType::F32)?;
            let n = x
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-8f32, f32::MAX)?;
            Ok(x.broadcast_div(&n)?)
        };
        let sim = unit(base)?.matmul(&unit(text)?.t()?)?; // (576, T)
        let scores: Vec<f32> = sim.mean(0)?.to_vec1()?;
        let mut order: Vec<usize> = (0..t).collect();
        // Descending; ties keep prompt order (tied scores come from identical embeddings).
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        order.truncate(k);
        let idx = Tensor::from_vec(
            order.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            order.len(),
            dev,
        )?;
        let picked = text.index_select(&idx, 0)?;
        if order.len() == k {
            return Ok(picked);
        }
        let pad = Tensor::zeros((k - order.len(), d), text.dtype(), dev)?;
        Ok(Tensor::cat(&[&picked, &pad], 0)?)
    }

    /// The router's `(n_crops, Σg + text_queries, D)` input for one image.
    pub fn build_input(&self, input: &RouterInput) -> Result<Tensor> {
        let f = &input.features;
        let text = self.select_text(&f.get(0)?, &input.text_embeds.to_dtype(f.dtype())?)?;
        Self::assemble(f, &text, &self.granularities)
    }

    /// Every crop's rows of `features` `(n, 576, C)` pooled at all granularities, then the same
    /// `text` rows `(k, C)`: `(n, Σg + k, C)`.
    fn assemble(features: &Tensor, text: &Tensor, grans: &[u32]) -> Result<Tensor> {
        let n = features.dim(0)?;
        let (k, c) = text.dims2()?;
        let pooled = crate::granularity::pool_all(features, grans)?;
        let text = text.unsqueeze(0)?.broadcast_as((n, k, c))?.contiguous()?;
        Ok(Tensor::cat(&[&pooled, &text], 1)?)
    }

    /// Route a batch of images. Images with equal crop counts share one merger call.
    pub fn route(&self, inputs: &[RouterInput]) -> Result<Vec<RouterOutput>> {
        let mut out: Vec<Option<RouterOutput>> = vec![None; inputs.len()];
        let mut by_crops: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, inp) in inputs.iter().enumerate() {
            by_crops.entry(inp.features.dim(0)?).or_default().push(i);
        }
        for members in by_crops.into_values() {
            let group: Vec<&RouterInput> = members.iter().map(|&i| &inputs[i]).collect();
            let normed = self.logits_of(&group)?;
            for (row, &i) in members.iter().enumerate() {
                let logits: Vec<f32> = normed.get(row)?.to_vec1()?;
                let choice = argmax(&logits);
                out[i] = Some(RouterOutput { logits, choice });
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every input is in one crop group"))
            .collect())
    }

    /// LayerNorm'd router logits `(B, E)` for images that all have the same crop count, as a tensor
    /// (differentiable when the router was built with `differentiable`).
    pub fn logits(&self, inputs: &[&RouterInput]) -> Result<Tensor> {
        self.logits_of(inputs)
    }

    /// The merger's input `(n, seq, D)` and its attention projection `(n, seq, 3D)` for one image.
    /// Average pooling commutes with the affine `in_proj`, so the projection is computed on the
    /// 576 unpooled tokens and the 32 text tokens once, then pooled: that skips the projection of
    /// the 540 coarser tokens per crop, and of the text rows repeated in every crop.
    fn input_and_qkv(&self, input: &RouterInput) -> Result<(Tensor, Tensor)> {
        let f = &input.features;
        let (n, l, d) = f.dims3()?;
        let text = self.select_text(&f.get(0)?, &input.text_embeds.to_dtype(f.dtype())?)?;
        let qkv_f = self
            .in_proj
            .forward(&f.reshape((n * l, d))?)?
            .reshape((n, l, 3 * d))?;
        let qkv_t = self.in_proj.forward(&text)?;
        Ok((
            Self::assemble(f, &text, &self.granularities)?,
            Self::assemble(&qkv_f, &qkv_t, &self.granularities)?,
        ))
    }

    /// Logits for images that share `n_crops`: the fused CPU path where there is one (unless
    /// `GRAIN_ROUTER_FUSED=off`, for side-by-side measurements), else tensor ops.
    fn logits_of(&self, inputs: &[&RouterInput]) -> Result<Tensor> {
        match &self.cpu {
            Some(cpu) if fused_enabled() => self.logits_fused(cpu, inputs),
            _ => self.logits_tensor(inputs),
        }
    }

    /// [`Self::logits_of`] on the CPU, one image at a time (rows never mix across images). An
    /// image whose features tensor was routed before (a later turn about it, through the encoder
    /// cache) reuses its visual part ([`crate::router_memo`]): the same logits, bit for bit, for
    /// the text rows' work alone.
    fn logits_fused(&self, cpu: &CpuRouter, inputs: &[&RouterInput]) -> Result<Tensor> {
        let e = self.granularities.len();
        let mut all = Vec::with_capacity(inputs.len() * e);
        for input in inputs {
            let f = input.features.to_dtype(DType::F32)?.contiguous()?;
            let (n, l, d) = f.dims3()?;
            let side = (l as f64).sqrt() as usize;
            if side * side != l {
                return Err(ModelError::Input(format!(
                    "{l} tokens per crop is not a square map"
                )));
            }
            let (_, text_d) = input.text_embeds.dims2()?;
            if text_d != d {
                return Err(ModelError::Input(format!(
                    "text embeddings are {text_d} wide, image features {d}"
                )));
            }
            let text = to_f32_vec(&input.text_embeds)?;
            let id = input.features.id();
            let known = memo_enabled().then(|| self.visual_memo.get(id)).flatten();
            let (logits, computed) = with_values(&f, |fv| {
                cpu.image_logits(
                    fv,
                    &text,
                    (n, side, d, self.text_queries),
                    &self.granularities,
                    known.as_ref().map(|v| v.as_slice()),
                )
            })??;
            if let Some(part) = computed.filter(|_| memo_enabled()) {
                self.visual_memo.insert(id, part);
            }
            all.extend(logits);
        }
        Ok(Tensor::from_vec(
            all,
            (inputs.len(), e),
            &candle_core::Device::Cpu,
        )?)
    }

    /// Logits for images that share `n_crops`, with tensor ops (any device).
    fn logits_tensor(&self, inputs: &[&RouterInput]) -> Result<Tensor> {
        let first = inputs
            .first()
            .ok_or_else(|| ModelError::Input("no router inputs".into()))?;
        let n = first.features.dim(0)?;
        let (mut xs, mut qkvs) = (Vec::new(), Vec::new());
        for input in inputs {
            if input.features.dim(0)? != n {
                return Err(ModelError::Input(
                    "router inputs batched together must have the same crop count".into(),
                ));
            }
            let (x, qkv) = self.input_and_qkv(input)?;
            xs.push(x);
            qkvs.push(qkv);
        }
        let seq = xs[0].dim(1)?;
        // (n, B·seq, D): crops are the attention axis, (image, token) pairs the batch.
        let mixed = self.merger_qkv(&Tensor::cat(&xs, 1)?, &Tensor::cat(&qkvs, 1)?)?;
        let d = mixed.dim(2)?;
        let mixed = mixed.reshape((n * inputs.len() * seq, d))?;
        let r = self.mlp2.forward(&self.mlp1.forward(&mixed)?.gelu_erf()?)?; // (n·B·seq, E)
        let e = r.dim(1)?;
        let r = r.reshape((n, inputs.len(), seq, e))?.to_dtype(DType::F32)?;
        let voter = self.voter.to_dtype(DType::F32)?.reshape((1, 1, seq, 1))?;
        let voted = r.broadcast_mul(&voter)?.sum(2)?; // (n, B, E)
        let per_image = voted.mean(0)?; // (B, E)
        self.norm_f32(&per_image)
    }

    fn norm_f32(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.norm.weight().to_dtype(DType::F32)?;
        let b = self
            .norm
            .bias()
            .map(|b| b.to_dtype(DType::F32))
            .transpose()?
            .expect("router norm has a bias");
        self.layer_norm(&LayerNorm::new(w, b, 1e-5), x)
    }

    fn layer_norm(&self, ln: &LayerNorm, x: &Tensor) -> Result<Tensor> {
        if !self.differentiable {
            return Ok(ln.forward(x)?);
        }
        let d = x.dim(D::Minus1)? as f64;
        let mean = (x.sum_keepdim(D::Minus1)? / d)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = (centred.sqr()?.sum_keepdim(D::Minus1)? / d)?;
        let y = centred
            .broadcast_div(&(var + 1e-5)?.sqrt()?)?
            .broadcast_mul(ln.weight())?;
        Ok(match ln.bias() {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// Post-LN `TransformerEncoderLayer` (ReLU FFN) with attention over axis 0: `(n_crops, seq, D)`
    /// in and out. Public so parity tests can compare this stage on its own.
    pub fn merger(&self, x: &Tensor) -> Result<Tensor> {
        let (n, b, d) = x.dims3()?;
        let qkv = self
            .in_proj
            .forward(&x.reshape((n * b, d))?)?
            .reshape((n, b, 3 * d))?;
        self.merger_qkv(x, &qkv)
    }

    /// The merger given its input `x` `(n, b, D)` and `in_proj(x)` `(n, b, 3D)`. Row-wise layers
    /// run on `(n·b, D)` matrices: one matrix product each.
    fn merger_qkv(&self, x: &Tensor, qkv: &Tensor) -> Result<Tensor> {
        let (n, b, d) = x.dims3()?;
        let o = if qkv.device().is_cpu() && !self.differentiable {
            let flat = qkv.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let mut o = vec![0f32; n * b * d];
            router_attend::cross_crop_attention_standard(&flat, (n, b, d), self.heads, &mut o);
            Tensor::from_vec(o, (n * b, d), qkv.device())?.to_dtype(x.dtype())?
        } else {
            attention(qkv, self.heads, self.differentiable)?.reshape((n * b, d))?
        };
        let x = x.reshape((n * b, d))?;
        let x = self.layer_norm(&self.norm1, &(x + self.out_proj.forward(&o)?)?)?;
        let ff = self.linear2.forward(&self.linear1.forward(&x)?.relu()?)?;
        Ok(self
            .layer_norm(&self.norm2, &(x + ff)?)?
            .reshape((n, b, d))?)
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }
}

/// Attention across crops with tensor ops (any device; differentiable with `differentiable`):
/// `(n, b, 3D)` → `(n, b, D)`.
fn attention(qkv: &Tensor, h: usize, differentiable: bool) -> Result<Tensor> {
    let (n, b, d3) = qkv.dims3()?;
    let d = d3 / 3;
    let hd = d / h;
    let heads = |i: usize| -> Result<Tensor> {
        // (n, b, d) → (b, h, n, hd)
        Ok(qkv
            .narrow(2, i * d, d)?
            .reshape((n, b, h, hd))?
            .permute((1, 2, 0, 3))?
            .contiguous()?)
    };
    let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
    let att = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
    let att = if differentiable {
        candle_nn::ops::softmax(&att, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&att)?
    };
    Ok(att.matmul(&v)?.permute((2, 0, 1, 3))?.reshape((n, b, d))?)
}

/// Whether the fused CPU path is on (`GRAIN_ROUTER_FUSED=off` turns it off).
fn fused_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("GRAIN_ROUTER_FUSED").map_or(true, |v| v != "off"))
}

/// Whether the fused path keeps visual parts (`GRAIN_ROUTER_MEMO=off` turns it off, for
/// side-by-side measurements: `benchmarks/run.sh prefix`).
fn memo_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("GRAIN_ROUTER_MEMO").map_or(true, |v| v != "off"))
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
