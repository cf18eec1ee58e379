//! CLIP ViT vision tower and the `mlp2x_gelu` projector.
//!
//! The tower returns the hidden state selected by `FeatureSelect` (LLaVA: the second-to-last layer)
//! with the CLS token dropped — not the last layer, which is what candle-transformers' llava does.

use std::sync::Mutex;

use candle_core::{Module, Tensor};
use candle_nn::{LayerNorm, Linear};

use crate::attention_blocks::{self, Mask};
use crate::config::{FeatureSelect, VisionAct, VisionConfig};
use crate::error::{ModelError, Result};
use crate::host_dense::{to_f32_vec, with_values, NormF32};
use crate::host_ops;
use crate::linear::Linear as PackedLinear;
use crate::panel_gemm::Panels;
use crate::vision_host::{self, HostEmbed, HostLayer, Scratch};
use crate::weights::Weights;

pub(crate) fn linear(
    w: &Weights,
    name: &str,
    out_dim: usize,
    in_dim: usize,
    bias: bool,
) -> Result<Linear> {
    let weight = w.get(&format!("{name}.weight"), &[out_dim, in_dim])?;
    let bias = if bias {
        Some(w.get(&format!("{name}.bias"), &[out_dim])?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

/// [`linear`], packed for the CPU kernel where it runs ([`PackedLinear::packed`]).
fn packed_linear(
    w: &Weights,
    name: &str,
    out_dim: usize,
    in_dim: usize,
    bias: bool,
) -> Result<PackedLinear> {
    Ok(PackedLinear::packed(linear(
        w, name, out_dim, in_dim, bias,
    )?))
}

pub(crate) fn layer_norm(w: &Weights, name: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        w.get(&format!("{name}.weight"), &[dim])?,
        w.get(&format!("{name}.bias"), &[dim])?,
        eps,
    ))
}

struct EncoderLayer {
    q: PackedLinear,
    k: PackedLinear,
    v: PackedLinear,
    out: PackedLinear,
    ln1: LayerNorm,
    ln2: LayerNorm,
    fc1: PackedLinear,
    fc2: PackedLinear,
    heads: usize,
    act: VisionAct,
    /// `ln1` and `ln2` as host `f32` (where their weights are), for [`Self::host`].
    host_norms: Option<(NormF32, NormF32)>,
}

/// A LayerNorm as host `f32`, where its weights are.
fn host_norm(ln: &LayerNorm, eps: f64) -> Result<Option<NormF32>> {
    match ln.bias() {
        Some(b) if host_ops::on_host(ln.weight()) && host_ops::on_host(b) => {
            Ok(Some(NormF32::new(ln.weight(), b)?.with_eps(eps as f32)))
        }
        _ => Ok(None),
    }
}

impl EncoderLayer {
    fn load(w: &Weights, p: &str, c: &VisionConfig) -> Result<Self> {
        let h = c.hidden_size;
        let ln1 = layer_norm(w, &format!("{p}.layer_norm1"), h, c.layer_norm_eps)?;
        let ln2 = layer_norm(w, &format!("{p}.layer_norm2"), h, c.layer_norm_eps)?;
        let host_norms = match (
            host_norm(&ln1, c.layer_norm_eps)?,
            host_norm(&ln2, c.layer_norm_eps)?,
        ) {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        };
        Ok(Self {
            q: packed_linear(w, &format!("{p}.self_attn.q_proj"), h, h, true)?,
            k: packed_linear(w, &format!("{p}.self_attn.k_proj"), h, h, true)?,
            v: packed_linear(w, &format!("{p}.self_attn.v_proj"), h, h, true)?,
            out: packed_linear(w, &format!("{p}.self_attn.out_proj"), h, h, true)?,
            ln1,
            ln2,
            fc1: packed_linear(w, &format!("{p}.mlp.fc1"), c.intermediate_size, h, true)?,
            fc2: packed_linear(w, &format!("{p}.mlp.fc2"), h, c.intermediate_size, true)?,
            heads: c.num_attention_heads,
            act: c.hidden_act,
            host_norms,
        })
    }

    /// The layer on host `f32` rows ([`crate::vision_host`]), where all its weights are host
    /// `f32` and its projections packed.
    fn host(&self) -> Option<HostLayer<'_>> {
        fn dense(l: &PackedLinear) -> Option<vision_host::Dense<'_>> {
            let (panels, bias) = l.host_panels()?;
            Some(vision_host::Dense { panels, bias })
        }
        let (ln1, ln2) = self.host_norms.as_ref()?;
        Some(HostLayer {
            q: dense(&self.q)?,
            k: dense(&self.k)?,
            v: dense(&self.v)?,
            out: dense(&self.out)?,
            fc1: dense(&self.fc1)?,
            fc2: dense(&self.fc2)?,
            ln1,
            ln2,
            heads: self.heads,
            act: self.act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let hd = h / self.heads;
        let y = self.ln1.forward(x)?;
        let split = |t_: Tensor| -> candle_core::Result<Tensor> {
            t_.reshape((b, t, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(&y)?.affine((hd as f64).powf(-0.5), 0.0)?)?;
        let k = split(self.k.forward(&y)?)?;
        let v = split(self.v.forward(&y)?)?;
        let o = if host_ops::on_host(&q) {
            let mut o = vec![0f32; b * self.heads * t * hd];
            with_values(&q, |q| {
                with_values(&k, |k| {
                    with_values(&v, |v| {
                        let shape = (b * self.heads, t, t, hd);
                        attention_blocks::attend(q, k, v, shape, Mask::Full, &mut o)
                    })
                })
            })???;
            Tensor::from_vec(o, (b, self.heads, t, hd), q.device())?
        } else {
            candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?.matmul(&v)?
        };
        let o = o.transpose(1, 2)?.reshape((b, t, h))?;
        let x = (x + self.out.forward(&o)?)?;
        let y = self.fc1.forward(&self.ln2.forward(&x)?)?;
        let y = match self.act {
            VisionAct::QuickGelu => host_ops::quick_gelu(&y)?,
            VisionAct::Gelu => host_ops::gelu_erf(&y)?,
        };
        Ok((x + self.fc2.forward(&y)?)?)
    }
}

/// Crops per vision-tower pass on the CPU (see [`VisionTower::forward`]): a pass's activations
/// (577 rows per crop; the attention scores live per thread in blocks of 32 rows,
/// [`crate::attention_blocks`]) stay within the L3 of the machine measured, and the matmuls stay
/// long however few crops a pass holds.
const CPU_CROPS_PER_PASS: usize = 4;

/// CLIP vision transformer, truncated after the selected layer.
pub struct VisionTower {
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_ln: LayerNorm,
    layers: Vec<EncoderLayer>,
    config: VisionConfig,
    drop_cls: bool,
    /// The embeddings on host `f32` rows, where the weights are host `f32` and the patch
    /// convolution packs ([`crate::vision_host`]).
    host_embed: Option<HostEmbed>,
    /// The host path's buffers, kept between passes: they grow to the largest pass and stay (for
    /// the small preset at 4 crops about 40 MB, for CLIP-L about 150 MB, next to its weights).
    scratch: Mutex<Scratch>,
}

impl VisionTower {
    pub fn load(w: &Weights, c: &VisionConfig, select: FeatureSelect) -> Result<Self> {
        let h = c.hidden_size;
        let p = c.patch_size;
        let n_pos = c.patches_per_side() * c.patches_per_side() + 1;
        // hidden_states[0] is the embedding output, [i] the output of layer i; negative indices count
        // from the end of that (L + 1)-long list.
        let total = c.num_hidden_layers as i64 + 1;
        let idx = if select.layer < 0 {
            total + select.layer
        } else {
            select.layer
        };
        if idx < 0 || idx >= total {
            return Err(ModelError::Input(format!(
                "vision feature layer {} is out of range for {} layers",
                select.layer, c.num_hidden_layers
            )));
        }
        let layers = (0..idx as usize)
            .map(|i| EncoderLayer::load(w, &format!("vision.encoder.layers.{i}"), c))
            .collect::<Result<Vec<_>>>()?;
        let patch_weight = w
            .get("vision.embeddings.patch_embedding.weight", &[h, 3, p, p])?
            .reshape((h, 3 * p * p))?
            .t()?
            .contiguous()?;
        let class_embedding = w.get("vision.embeddings.class_embedding", &[h])?;
        let position_embedding =
            w.get("vision.embeddings.position_embedding.weight", &[n_pos, h])?;
        let pre_ln = layer_norm(w, "vision.pre_layrnorm", h, c.layer_norm_eps)?;
        let host_embed = match host_norm(&pre_ln, c.layer_norm_eps)? {
            Some(norm) if host_ops::on_host(&patch_weight) => {
                // The convolution's weight as `(hidden, 3·p·p)` rows, for the panels.
                let rows = to_f32_vec(&patch_weight.t()?)?;
                Panels::new(&rows, h, 3 * p * p)
                    .map(|patch| -> Result<HostEmbed> {
                        Ok(HostEmbed {
                            patch,
                            class: to_f32_vec(&class_embedding)?,
                            position: to_f32_vec(&position_embedding)?,
                            pre_ln: norm,
                            patch_size: p,
                        })
                    })
                    .transpose()?
            }
            _ => None,
        };
        Ok(Self {
            patch_weight,
            class_embedding,
            position_embedding,
            pre_ln,
            layers,
            config: c.clone(),
            drop_cls: select.drop_cls,
            host_embed,
            scratch: Mutex::default(),
        })
    }

    /// `pixels`: `(n, 3, S, S)` → `(n, patches, hidden)` (or `patches + 1` when CLS is kept).
    ///
    /// On the CPU the crops go through in passes of at most [`CPU_CROPS_PER_PASS`]: crops never
    /// interact, and a pass over many crops at once (16 requests' images) keeps attention scores
    /// and activations far beyond the caches. Measured on the small preset, 8 images (40 crops)
    /// in one pass cost 1.6× the time per image of one image alone.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let n = pixels.dim(0)?;
        if !matches!(pixels.device(), candle_core::Device::Cpu) || n <= CPU_CROPS_PER_PASS {
            return self.forward_pass(pixels);
        }
        let mut outs = Vec::with_capacity(n.div_ceil(CPU_CROPS_PER_PASS));
        let mut i = 0;
        while i < n {
            let len = CPU_CROPS_PER_PASS.min(n - i);
            outs.push(self.forward_pass(&pixels.narrow(0, i, len)?)?);
            i += len;
        }
        Ok(Tensor::cat(&outs, 0)?)
    }

    fn forward_pass(&self, pixels: &Tensor) -> Result<Tensor> {
        let (_, c, s, s2) = pixels.dims4()?;
        let cfg = &self.config;
        if c != 3 || s != cfg.image_size || s2 != cfg.image_size {
            return Err(ModelError::Input(format!(
                "pixel values must be (n, 3, {0}, {0}), got {1:?}",
                cfg.image_size,
                pixels.dims()
            )));
        }
        let x = match self.forward_host(pixels)? {
            Some(x) => x,
            None => self.forward_tensors(pixels)?,
        };
        let g = s / cfg.patch_size;
        Ok(if self.drop_cls {
            x.narrow(1, 1, g * g)?
        } else {
            x
        })
    }

    /// A checked pass through candle's tensor ops, CLS kept.
    fn forward_tensors(&self, pixels: &Tensor) -> Result<Tensor> {
        let (n, _, s, _) = pixels.dims4()?;
        let cfg = &self.config;
        let (p, h) = (cfg.patch_size, cfg.hidden_size);
        let g = s / p;
        // A stride-p, bias-free p×p convolution is a matmul over flattened patches.
        let patches = pixels
            .to_dtype(self.patch_weight.dtype())?
            .reshape((n, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((n * g * g, 3 * p * p))?;
        let emb = patches.matmul(&self.patch_weight)?.reshape((n, g * g, h))?;
        let cls = self
            .class_embedding
            .reshape((1, 1, h))?
            .broadcast_as((n, 1, h))?;
        let x = Tensor::cat(&[&cls.contiguous()?, &emb], 1)?;
        let mut x = self
            .pre_ln
            .forward(&x.broadcast_add(&self.position_embedding)?)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }

    /// A checked pass on host `f32` rows ([`crate::vision_host`]), CLS kept; `None` where the
    /// pixels or any weight are not host `f32`, or a projection is not packed.
    fn forward_host(&self, pixels: &Tensor) -> Result<Option<Tensor>> {
        let Some(embed) = self.host_embed.as_ref() else {
            return Ok(None);
        };
        let layers: Option<Vec<HostLayer<'_>>> =
            self.layers.iter().map(EncoderLayer::host).collect();
        let Some(layers) = layers else {
            return Ok(None);
        };
        if !host_ops::on_host(pixels) {
            return Ok(None);
        }
        let (b, _, side, _) = pixels.dims4()?;
        let h = self.config.hidden_size;
        let pixels = pixels.contiguous()?;
        // A pass runs on one thread at a time; another one meanwhile gets buffers of its own.
        let mut own = Scratch::default();
        let mut shared = self.scratch.try_lock().ok();
        let scratch = shared.as_deref_mut().unwrap_or(&mut own);
        let mut x = with_values(&pixels, |px| embed.forward(px, (b, side), scratch))?;
        let t = x.len() / b / h;
        for layer in &layers {
            layer.forward(&mut x, (b, t), scratch);
        }
        Ok(Some(Tensor::from_vec(x, (b, t, h), pixels.device())?))
    }
}

/// `mlp2x_gelu`: Linear → GELU (erf) → Linear, from the vision width to the LM width.
pub struct Projector {
    l1: PackedLinear,
    l2: PackedLinear,
}

impl Projector {
    pub fn load(w: &Weights, vision_hidden: usize, text_hidden: usize) -> Result<Self> {
        Ok(Self {
            l1: packed_linear(w, "proj.linear_1", text_hidden, vision_hidden, true)?,
            l2: packed_linear(w, "proj.linear_2", text_hidden, text_hidden, true)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.l2.forward(&host_ops::gelu_erf(&self.l1.forward(x)?)?)
    }
}

#[cfg(test)]
#[path = "vision_tests.rs"]
mod tests;
