//! Deterministic tiny checkpoints in both layouts, with the real tensor names and config keys.
//! They are the test fixtures and the server's embedded default model.

mod tokenizer;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::json;

use crate::error::{ModelError, Result};

pub use tokenizer::{tiny_tokenizer_json, TinyVocab};

/// Which layout to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyLayout {
    Avg,
    Hf,
}

/// Model widths. `tiny` is for tests; `small` makes compute, not overhead, dominate on CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TinySize {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vision_hidden: usize,
    pub vision_intermediate: usize,
    pub vision_layers: usize,
    pub vision_heads: usize,
    /// Written in bf16, from one random stream per tensor drawn in parallel (uniform values with
    /// the same mean and standard deviation), instead of f32 from one normal stream: what a
    /// 7-billion-parameter checkpoint needs to be written in seconds. The tiny and small sizes keep
    /// the sequential f32 stream, so their bytes do not change.
    pub bf16_parallel: bool,
}

impl TinySize {
    pub const TINY: Self = Self {
        hidden: 64,
        intermediate: 160,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vision_hidden: 32,
        vision_intermediate: 64,
        vision_layers: 3,
        vision_heads: 4,
        bf16_parallel: false,
    };
    pub const SMALL: Self = Self {
        hidden: 512,
        intermediate: 1376,
        layers: 4,
        heads: 8,
        kv_heads: 4,
        vision_hidden: 256,
        vision_intermediate: 1024,
        vision_layers: 4,
        vision_heads: 4,
        bf16_parallel: false,
    };
    /// The LM twice as wide and deep as `small` (94 M parameters, 377 MB in f32: ten times the
    /// L3 of the build machine, as a real model's weights are), the same vision tower. A batch-1
    /// decode step then streams its weights from memory, as it does for real models on a CPU,
    /// where `small`'s 48 MB largely stay in the 32 MB L3.
    pub const MEDIUM: Self = Self {
        hidden: 1024,
        intermediate: 2816,
        layers: 8,
        heads: 16,
        kv_heads: 8,
        ..Self::SMALL
    };
    /// AVG-LLaVA-7B's shapes (Vicuna-7B, CLIP-L/336, the router at the LM's width) for GPU
    /// benchmarks, with the tiny vocabulary: 6.9 billion parameters, 13.8 GB in bf16.
    pub const SEVEN_B: Self = Self {
        hidden: 4096,
        intermediate: 11008,
        layers: 32,
        heads: 32,
        kv_heads: 32,
        vision_hidden: 1024,
        vision_intermediate: 4096,
        vision_layers: 24,
        vision_heads: 16,
        bf16_parallel: true,
    };

    /// The presets' names, as [`Self::by_name`] takes them (smallest first).
    pub const NAMES: [&'static str; 4] = ["tiny", "small", "medium", "7b"];

    pub fn by_name(name: &str) -> Option<Self> {
        let all = [Self::TINY, Self::SMALL, Self::MEDIUM, Self::SEVEN_B];
        Self::NAMES
            .iter()
            .zip(all)
            .find(|(n, _)| **n == name)
            .map(|(_, size)| size)
    }
}

/// Deterministic normal samples (SplitMix64 + Box–Muller): the same seed writes the same bytes on
/// every platform and candle version.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

struct Writer {
    rng: Rng,
    tensors: HashMap<String, Tensor>,
    /// With [`TinySize::bf16_parallel`]: the tensors to draw in [`Writer::finish`].
    pending: Option<Vec<Pending>>,
}

/// A tensor to draw: name, shape, standard deviation, mean.
struct Pending(String, Vec<usize>, f32, f32);

impl Writer {
    /// Draws the pending tensors in parallel, each from its own stream (seeded from the writer's
    /// seed and the tensor's name), as bf16.
    fn finish(&mut self, seed: u64) -> Result<()> {
        use rayon::prelude::*;
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let drawn = pending
            .into_par_iter()
            .map(|Pending(name, shape, std, mean)| {
                let tag = name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
                    (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
                });
                let mut rng = Rng(seed ^ tag);
                // Uniform on [mean - √3·std, mean + √3·std]: the same mean and deviation.
                let half_width = 3f64.sqrt() * std as f64;
                let n: usize = shape.iter().product();
                let data: Vec<half::bf16> = (0..n)
                    .map(|_| {
                        let u = rng.uniform() * 2.0 - 1.0;
                        half::bf16::from_f64(mean as f64 + half_width * u)
                    })
                    .collect();
                Ok((name, Tensor::from_vec(data, shape, &Device::Cpu)?))
            })
            .collect::<Result<Vec<_>>>()?;
        self.tensors.extend(drawn);
        Ok(())
    }

    fn normal(&mut self, name: &str, shape: &[usize], std: f32, mean: f32) -> Result<()> {
        if let Some(pending) = &mut self.pending {
            pending.push(Pending(name.to_string(), shape.to_vec(), std, mean));
            return Ok(());
        }
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| mean + std * self.rng.normal()).collect();
        self.tensors.insert(
            name.to_string(),
            Tensor::from_vec(data, shape, &Device::Cpu)?,
        );
        Ok(())
    }

    /// A linear layer with std 1/√fan_in (activations neither vanish nor explode).
    fn linear(&mut self, name: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<()> {
        self.normal(
            &format!("{name}.weight"),
            &[out_dim, in_dim],
            1.0 / (in_dim as f32).sqrt(),
            0.0,
        )?;
        if bias {
            self.normal(&format!("{name}.bias"), &[out_dim], 0.02, 0.0)?;
        }
        Ok(())
    }

    fn norm(&mut self, name: &str, dim: usize, bias: bool) -> Result<()> {
        self.normal(&format!("{name}.weight"), &[dim], 0.1, 1.0)?;
        if bias {
            self.normal(&format!("{name}.bias"), &[dim], 0.02, 0.0)?;
        }
        Ok(())
    }
}

const SYSTEM: &str = "A chat between a curious user and an artificial intelligence assistant. \
The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// Write a tiny checkpoint to `out` (created if needed).
pub fn write_tiny(out: &Path, layout: TinyLayout, size: TinySize, seed: u64) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let vocab = TinyVocab::build(layout == TinyLayout::Hf);
    let s = size;
    let mut w = Writer {
        rng: Rng(seed),
        tensors: HashMap::new(),
        pending: size.bf16_parallel.then(Vec::new),
    };
    let (lm, lm_head, vis, proj1, proj2, newline) = match layout {
        TinyLayout::Avg => (
            "model",
            "lm_head",
            "model.vision_tower.vision_tower.vision_model",
            "model.mm_projector.0",
            "model.mm_projector.2",
            "model.image_newline",
        ),
        TinyLayout::Hf => (
            "model.language_model",
            "lm_head",
            "model.vision_tower.vision_model",
            "model.multi_modal_projector.linear_1",
            "model.multi_modal_projector.linear_2",
            "model.image_newline",
        ),
    };
    let hd = s.hidden / s.heads;
    // Language model.
    w.normal(
        &format!("{lm}.embed_tokens.weight"),
        &[vocab.len(), s.hidden],
        1.0,
        0.0,
    )?;
    for i in 0..s.layers {
        let p = format!("{lm}.layers.{i}");
        w.linear(
            &format!("{p}.self_attn.q_proj"),
            s.heads * hd,
            s.hidden,
            false,
        )?;
        w.linear(
            &format!("{p}.self_attn.k_proj"),
            s.kv_heads * hd,
            s.hidden,
            false,
        )?;
        w.linear(
            &format!("{p}.self_attn.v_proj"),
            s.kv_heads * hd,
            s.hidden,
            false,
        )?;
        w.linear(
            &format!("{p}.self_attn.o_proj"),
            s.hidden,
            s.heads * hd,
            false,
        )?;
        w.linear(
            &format!("{p}.mlp.gate_proj"),
            s.intermediate,
            s.hidden,
            false,
        )?;
        w.linear(&format!("{p}.mlp.up_proj"), s.intermediate, s.hidden, false)?;
        w.linear(
            &format!("{p}.mlp.down_proj"),
            s.hidden,
            s.intermediate,
            false,
        )?;
        w.norm(&format!("{p}.input_layernorm"), s.hidden, false)?;
        w.norm(&format!("{p}.post_attention_layernorm"), s.hidden, false)?;
    }
    w.norm(&format!("{lm}.norm"), s.hidden, false)?;
    w.linear(lm_head, vocab.len(), s.hidden, false)?;
    // Vision tower (CLIP names under the layout's prefix).
    let (vh, patch, img) = (s.vision_hidden, 14usize, 336usize);
    w.normal(
        &format!("{vis}.embeddings.patch_embedding.weight"),
        &[vh, 3, patch, patch],
        1.0 / ((3 * patch * patch) as f32).sqrt(),
        0.0,
    )?;
    w.normal(
        &format!("{vis}.embeddings.class_embedding"),
        &[vh],
        1.0,
        0.0,
    )?;
    w.normal(
        &format!("{vis}.embeddings.position_embedding.weight"),
        &[(img / patch).pow(2) + 1, vh],
        0.5,
        0.0,
    )?;
    w.norm(&format!("{vis}.pre_layrnorm"), vh, true)?;
    for i in 0..s.vision_layers {
        let p = format!("{vis}.encoder.layers.{i}");
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            w.linear(&format!("{p}.self_attn.{n}"), vh, vh, true)?;
        }
        w.norm(&format!("{p}.layer_norm1"), vh, true)?;
        w.norm(&format!("{p}.layer_norm2"), vh, true)?;
        w.linear(&format!("{p}.mlp.fc1"), s.vision_intermediate, vh, true)?;
        w.linear(&format!("{p}.mlp.fc2"), vh, s.vision_intermediate, true)?;
    }
    w.norm(&format!("{vis}.post_layernorm"), vh, true)?;
    w.linear(proj1, s.hidden, vh, true)?;
    w.linear(proj2, s.hidden, s.hidden, true)?;
    w.normal(newline, &[s.hidden], 1.0 / (s.hidden as f32).sqrt(), 0.0)?;
    if layout == TinyLayout::Avg {
        write_router(&mut w, s.hidden)?;
    }
    w.finish(seed)?;
    let st = out.join("model.safetensors");
    candle_core::safetensors::save(&w.tensors, &st)?;
    write_json(
        &out.join("config.json"),
        &config_json(layout, s, vocab.len(), vocab.image_id),
    )?;
    write_json(&out.join("tokenizer.json"), &tiny_tokenizer_json(&vocab))?;
    write_json(
        &out.join("tokenizer_config.json"),
        &json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true,
                "add_eos_token": false, "model_max_length": 4096, "legacy": true,
                "tokenizer_class": "LlamaTokenizerFast"}),
    )?;
    write_json(
        &out.join("special_tokens_map.json"),
        &json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    )?;
    if layout == TinyLayout::Hf {
        std::fs::write(out.join("chat_template.jinja"), HF_TEMPLATE).map_err(|e| io(out, e))?;
        write_json(
            &out.join("preprocessor_config.json"),
            &json!({"image_processor_type": "LlavaNextImageProcessor", "processor_class": "LlavaNextProcessor",
                    "crop_size": {"height": 336, "width": 336}, "size": {"shortest_edge": 336},
                    "do_resize": true, "do_center_crop": true, "do_rescale": true, "do_normalize": true,
                    "do_pad": true, "do_convert_rgb": true, "resample": 3, "rescale_factor": 1.0 / 255.0,
                    "image_mean": crate::config::CLIP_MEAN, "image_std": crate::config::CLIP_STD,
                    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]}),
        )?;
    }
    Ok(())
}

/// The router's tensors under their real names, for hidden width `d`.
fn write_router(w: &mut Writer, d: usize) -> Result<()> {
    let seq: usize = crate::config::DEFAULT_GRANULARITIES
        .iter()
        .map(|&g| g as usize)
        .sum::<usize>()
        + 32;
    // PyTorch names the fused projection `in_proj_weight`/`in_proj_bias`, not `in_proj.weight`;
    // drawn as [`Writer::linear`] draws a layer (same order, same deviations).
    w.normal(
        "model.router.merger.self_attn.in_proj_weight",
        &[3 * d, d],
        1.0 / (d as f32).sqrt(),
        0.0,
    )?;
    w.normal(
        "model.router.merger.self_attn.in_proj_bias",
        &[3 * d],
        0.02,
        0.0,
    )?;
    w.linear("model.router.merger.self_attn.out_proj", d, d, true)?;
    w.linear("model.router.merger.linear1", d, d, true)?;
    w.linear("model.router.merger.linear2", d, d, true)?;
    w.norm("model.router.merger.norm1", d, true)?;
    w.norm("model.router.merger.norm2", d, true)?;
    w.linear("model.router.router.0", d, d, true)?;
    w.linear("model.router.router.2", 5, d, true)?;
    w.normal(
        "model.router.voter",
        &[seq, 1],
        1.0 / (seq as f32).sqrt(),
        0.0,
    )?;
    w.norm("model.router.norm", 5, true)?;
    Ok(())
}

fn torch_dtype(s: TinySize) -> &'static str {
    if s.bf16_parallel {
        "bfloat16"
    } else {
        "float32"
    }
}

fn config_json(
    layout: TinyLayout,
    s: TinySize,
    vocab: usize,
    image_id: Option<u32>,
) -> serde_json::Value {
    let text = json!({
        "hidden_size": s.hidden, "intermediate_size": s.intermediate, "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 4096, "vocab_size": vocab, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": false,
    });
    let vision = json!({
        "model_type": "clip_vision_model", "hidden_size": s.vision_hidden,
        "intermediate_size": s.vision_intermediate, "num_hidden_layers": s.vision_layers,
        "num_attention_heads": s.vision_heads, "image_size": 336, "patch_size": 14,
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    });
    match layout {
        TinyLayout::Avg => {
            let mut v = text;
            let m = v.as_object_mut().expect("object");
            for (k, x) in [
                ("architectures", json!(["LlavaLlamaForCausalLM"])),
                ("model_type", json!("llava_llama")),
                ("torch_dtype", json!(torch_dtype(s))),
                ("mm_vision_tower", json!("grain/tiny-clip-336")),
                ("mm_hidden_size", json!(s.vision_hidden)),
                ("mm_vision_select_layer", json!(-2)),
                ("mm_vision_select_feature", json!("patch")),
                ("mm_projector_type", json!("mlp2x_gelu")),
                ("mm_patch_merge_type", json!("spatial_unpad")),
                ("image_aspect_ratio", json!("anyres")),
                (
                    "image_grid_pinpoints",
                    json!("[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]"),
                ),
                ("router_select", json!(true)),
                ("vis_token_granularity", json!([36, 72, 144, 288, 576])),
                ("filtered_text_num", json!(32)),
                ("vision_config", vision),
            ] {
                m.insert(k.to_string(), x);
            }
            v
        }
        TinyLayout::Hf => {
            let mut text = text;
            text.as_object_mut()
                .expect("object")
                .insert("model_type".into(), json!("llama"));
            json!({
                "architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next",
                "torch_dtype": torch_dtype(s), "text_config": text, "vision_config": vision,
                "image_token_index": image_id, "vision_feature_layer": -2,
                "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu",
                "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
                "tie_word_embeddings": false,
            })
        }
    }
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("serialisable");
    std::fs::write(path, text).map_err(|e| io(path, e))
}

fn io(path: &Path, e: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Vicuna-v1 conversation with LLaVA's `<image>\n` placeholder, for the tiny HF checkpoint.
pub const HF_TEMPLATE: &str = concat!(
    "{%- set system = \"",
    "A chat between a curious user and an artificial intelligence assistant. ",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "\" -%}\n",
    "{%- if messages and messages[0]['role'] == 'system' -%}\n",
    "{%- if messages[0]['content'] is string -%}{%- set system = messages[0]['content'] -%}\n",
    "{%- else -%}{%- set system = messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}{%- endif -%}\n",
    "{%- endif -%}\n",
    "{{- system -}}\n",
    "{%- for message in messages if message['role'] != 'system' -%}\n",
    "{%- if message['role'] == 'user' -%}{{- ' USER: ' -}}{%- else -%}{{- ' ASSISTANT: ' -}}{%- endif -%}\n",
    "{%- if message['content'] is string -%}{{- message['content'] -}}\n",
    "{%- else -%}\n",
    "{%- for part in message['content'] if part['type'] == 'image' -%}{{- '<image>\\n' -}}{%- endfor -%}\n",
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}\n",
    "{%- endif -%}\n",
    "{%- if message['role'] == 'assistant' -%}{{- '</s>' -}}{%- endif -%}\n",
    "{%- endfor -%}\n",
    "{%- if add_generation_prompt -%}{{- ' ASSISTANT:' -}}{%- endif -%}\n",
);

#[doc(hidden)]
pub const SYSTEM_PROMPT: &str = SYSTEM;
