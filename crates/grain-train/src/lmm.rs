//! A trainable copy of a checkpoint's projector and language model, for fine-tuning a *small* LMM
//! on the synthetic task (so that its fine questions really need fine granularity).
//!
//! The served [`grain_model::llama::Llama`] uses candle's fused RMSNorm, RoPE and softmax kernels,
//! which have no backward pass; this module recomputes the same decoder from composite candle ops
//! over `candle_nn::VarMap` variables. The vision tower and `image_newline` stay frozen. Tests check
//! that its answer loss equals what the served model computes through `forward_all_logits`.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarMap;
use grain_model::config::{LlavaConfig, TextConfig};
use grain_model::granularity;
use grain_model::weights::Weights;

use crate::error::{Result, TrainError};

pub struct TrainableLmm {
    vars: VarMap,
    text: TextConfig,
    config: LlavaConfig,
    newline: Tensor,
    cos: Tensor,
    sin: Tensor,
}

/// Canonical names and shapes of the projector and LM tensors.
fn shapes(c: &LlavaConfig) -> Vec<(String, Vec<usize>)> {
    let t = &c.text;
    let (h, i) = (t.hidden_size, t.intermediate_size);
    let qd = t.num_attention_heads * t.head_dim;
    let kvd = t.num_key_value_heads * t.head_dim;
    let vh = c.vision.hidden_size;
    let mut v = vec![
        ("proj.linear_1.weight".to_string(), vec![h, vh]),
        ("proj.linear_1.bias".to_string(), vec![h]),
        ("proj.linear_2.weight".to_string(), vec![h, h]),
        ("proj.linear_2.bias".to_string(), vec![h]),
        ("lm.embed_tokens.weight".to_string(), vec![t.vocab_size, h]),
        ("lm.norm.weight".to_string(), vec![h]),
        ("lm.lm_head.weight".to_string(), vec![t.vocab_size, h]),
    ];
    for l in 0..t.num_hidden_layers {
        let p = format!("lm.layers.{l}");
        for (n, s) in [
            ("self_attn.q_proj.weight", vec![qd, h]),
            ("self_attn.k_proj.weight", vec![kvd, h]),
            ("self_attn.v_proj.weight", vec![kvd, h]),
            ("self_attn.o_proj.weight", vec![h, qd]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
        ] {
            v.push((format!("{p}.{n}"), s));
        }
    }
    v
}

fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.broadcast_matmul(&w.t()?)?;
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(w)?)
}

/// Non-interleaved RoPE on `(T, heads, hd)` with `cos`/`sin` of shape `(T, hd / 2)`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(2)?;
    let cos = Tensor::cat(&[cos, cos], 1)?.unsqueeze(1)?;
    let sin = Tensor::cat(&[sin, sin], 1)?.unsqueeze(1)?;
    let x1 = x.narrow(2, 0, hd / 2)?;
    let x2 = x.narrow(2, hd / 2, hd - hd / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], 2)?;
    Ok((x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?)?)
}

fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

impl TrainableLmm {
    pub fn load(dir: &Path, config: &LlavaConfig, device: &Device) -> Result<Self> {
        let t = &config.text;
        if t.attention_bias || t.tie_word_embeddings {
            return Err(TrainError::Setup(
                "LMM fine-tuning supports untied LLaMA checkpoints without q/k/v biases".into(),
            ));
        }
        let w = Weights::from_dir(dir, DType::F32, device)?;
        let vars = VarMap::new();
        {
            let mut data = vars.data().lock().expect("single-threaded");
            for (name, shape) in shapes(config) {
                data.insert(name.clone(), Var::from_tensor(&w.get(&name, &shape)?)?);
            }
        }
        let newline = w.get("image_newline", &[t.hidden_size])?;
        let half = t.head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / (t.rope_theta as f32).powf((2 * i) as f32 / t.head_dim as f32))
            .collect();
        let n = t.max_position_embeddings;
        let angles: Vec<f32> = (0..n)
            .flat_map(|p| inv.iter().map(move |f| p as f32 * f))
            .collect();
        let a = Tensor::from_vec(angles, (n, half), device)?;
        Ok(Self {
            vars,
            text: t.clone(),
            config: config.clone(),
            newline,
            cos: a.cos()?,
            sin: a.sin()?,
        })
    }

    fn get(&self, name: &str) -> Tensor {
        self.vars
            .data()
            .lock()
            .expect("single-threaded")
            .get(name)
            .unwrap_or_else(|| panic!("{name} is loaded in `load`"))
            .as_tensor()
            .clone()
    }

    pub fn vars(&self) -> Vec<Var> {
        self.vars.all_vars()
    }

    /// The variables whose canonical name does not start with any of `frozen`.
    pub fn vars_except(&self, frozen: &[&str]) -> Vec<Var> {
        self.vars
            .data()
            .lock()
            .expect("single-threaded")
            .iter()
            .filter(|(k, _)| !frozen.iter().any(|f| k.starts_with(f)))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn num_params(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// Current values by canonical name.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .data()
            .lock()
            .expect("single-threaded")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// `mlp2x_gelu` on vision features `(n, 576, vision_hidden)`.
    pub fn project(&self, f: &Tensor) -> Result<Tensor> {
        let x = linear(
            f,
            &self.get("proj.linear_1.weight"),
            Some(&self.get("proj.linear_1.bias")),
        )?
        .gelu_erf()?;
        linear(
            &x,
            &self.get("proj.linear_2.weight"),
            Some(&self.get("proj.linear_2.bias")),
        )
    }

    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let e = self.get("lm.embed_tokens.weight");
        let idx = Tensor::from_slice(ids, ids.len(), e.device())?;
        Ok(e.index_select(&idx, 0)?)
    }

    /// The causal decoder over one sequence `(T, hidden)` starting at position 0; returns the
    /// logits of `rows` (a range of positions) `(rows.len, vocab)`.
    pub fn logits(&self, x: &Tensor, rows: std::ops::Range<usize>) -> Result<Tensor> {
        let c = &self.text;
        let (t, _) = x.dims2()?;
        if t > c.max_position_embeddings || rows.end > t {
            return Err(TrainError::Setup(format!(
                "sequence of {t} tokens is too long or rows {rows:?} are outside it"
            )));
        }
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let group = nh / nkv;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let n_layers = c.num_hidden_layers;
        let mut x = x.clone();
        for l in 0..n_layers {
            let p = |n: &str| self.get(&format!("lm.layers.{l}.{n}"));
            // Only the wanted rows' queries matter in the last layer: keys and values still come
            // from every position, but attention and the MLP run on those rows alone.
            let q0 = if l + 1 == n_layers { rows.start } else { 0 };
            let nq = if l + 1 == n_layers { rows.len() } else { t };
            let y = rms_norm(&x, &p("input_layernorm.weight"), c.rms_norm_eps)?;
            let yq = y.narrow(0, q0, nq)?;
            let q = linear(&yq, &p("self_attn.q_proj.weight"), None)?.reshape((nq, nh, hd))?;
            let k = linear(&y, &p("self_attn.k_proj.weight"), None)?.reshape((t, nkv, hd))?;
            let v = linear(&y, &p("self_attn.v_proj.weight"), None)?.reshape((t, nkv, hd))?;
            let q = rope(&q, &cos.narrow(0, q0, nq)?, &sin.narrow(0, q0, nq)?)?
                .transpose(0, 1)?
                .contiguous()?;
            let k = rope(&k, &cos, &sin)?;
            // Query head h reads KV head h / group, as in the served decoder.
            let expand = |z: Tensor| -> Result<Tensor> {
                Ok(z.unsqueeze(2)?
                    .broadcast_as((t, nkv, group, hd))?
                    .reshape((t, nh, hd))?
                    .transpose(0, 1)?
                    .contiguous()?)
            };
            let (k, v) = (expand(k)?, expand(v)?);
            let mask: Vec<f32> = (q0..q0 + nq)
                .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { -1e9 }))
                .collect();
            let mask = Tensor::from_vec(mask, (nq, t), x.device())?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
            let o = softmax_last(&scores)?
                .matmul(&v)?
                .transpose(0, 1)?
                .reshape((nq, nh * hd))?;
            x = (x.narrow(0, q0, nq)? + linear(&o, &p("self_attn.o_proj.weight"), None)?)?;
            let y = rms_norm(&x, &p("post_attention_layernorm.weight"), c.rms_norm_eps)?;
            let gate = linear(&y, &p("mlp.gate_proj.weight"), None)?.silu()?;
            let up = linear(&y, &p("mlp.up_proj.weight"), None)?;
            x = (x + linear(&(gate * up)?, &p("mlp.down_proj.weight"), None)?)?;
        }
        let last = if n_layers == 0 {
            x.narrow(0, rows.start, rows.len())?
        } else {
            x
        };
        let last = rms_norm(&last, &self.get("lm.norm.weight"), c.rms_norm_eps)?;
        linear(&last, &self.get("lm.lm_head.weight"), None)
    }

    /// Mean cross-entropy of `answer` after `prompt` (one image placeholder `image_token`), with
    /// the image's vision features `(n, 576, vision_hidden)` pooled to granularity `g`.
    #[allow(clippy::too_many_arguments)]
    pub fn answer_loss(
        &self,
        vision: &Tensor,
        img_w: u32,
        img_h: u32,
        g: u32,
        prompt: &[u32],
        answer: &[u32],
        image_token: u32,
    ) -> Result<Tensor> {
        let pooled = granularity::pool(&self.project(vision)?, g)?;
        let image = granularity::merge(&pooled, img_w, img_h, &self.newline, &self.config)?;
        let ids: Vec<u32> = prompt.iter().chain(answer).copied().collect();
        let mut parts = Vec::new();
        let mut run = Vec::new();
        let mut images = 0;
        for &id in &ids {
            if id == image_token {
                if !run.is_empty() {
                    parts.push(self.embed(&run)?);
                    run.clear();
                }
                parts.push(image.clone());
                images += 1;
            } else {
                run.push(id);
            }
        }
        if !run.is_empty() {
            parts.push(self.embed(&run)?);
        }
        if images != 1 {
            return Err(TrainError::Setup(format!(
                "the prompt must hold exactly one image placeholder, found {images}"
            )));
        }
        let x = Tensor::cat(&parts, 0)?;
        let t = x.dim(0)?;
        let a = answer.len();
        let logits = self.logits(&x, t - a - 1..t - 1)?;
        let target = Tensor::from_slice(answer, a, x.device())?;
        Ok(candle_nn::loss::cross_entropy(&logits, &target)?)
    }
}

/// The frozen vision tower's features of a checkpoint's crops, before the projector.
pub struct FrozenVision {
    tower: grain_model::vision::VisionTower,
}

impl FrozenVision {
    pub fn load(dir: &Path, config: &LlavaConfig, device: &Device) -> Result<Self> {
        let w = Weights::from_dir(dir, DType::F32, device)?;
        Ok(Self {
            tower: grain_model::vision::VisionTower::load(
                &w,
                &config.vision,
                config.feature_select,
            )?,
        })
    }

    /// `(n, 3, S, S)` pixels (see [`grain_model::LlavaModel::pixels_tensor`]) → `(n, 576, vision_hidden)`.
    pub fn features(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.tower.forward(pixels)?)
    }
}
