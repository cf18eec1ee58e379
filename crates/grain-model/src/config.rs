//! Model configuration for both checkpoint layouts, normalised into one typed struct.
//!
//! Two layouts exist in the wild:
//! - the original LLaVA / AVG-LLaVA layout (`LlavaLlamaForCausalLM`): LLaMA keys at the top level plus
//!   `mm_*` keys, `image_grid_pinpoints` often stored as a *string*, and (AVG) `router_select`,
//!   `vis_token_granularity`;
//! - the HF `llava_next` layout (`LlavaNextForConditionalGeneration`): `text_config` and `vision_config`
//!   objects; transformers writes only non-default values, so every missing key takes the default that
//!   transformers would use.

use std::path::Path;

use serde_json::Value;

use crate::error::{ModelError, Result};

mod json;
use json::{
    arch_is, eos_ids, granularities, opt_u32, pinpoints, str_or, text_config, vision_config,
};

/// The default AVG-LLaVA granularities, coarsest first (tokens per 336-px crop).
pub const DEFAULT_GRANULARITIES: [u32; 5] = [36, 72, 144, 288, 576];
/// LLaVA-1.6 default `image_grid_pinpoints`, as `(height, width)` pairs.
pub const DEFAULT_PINPOINTS: [(u32, u32); 5] =
    [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)];
/// CLIP normalisation constants used by every LLaVA checkpoint we know of.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Which tensor-naming and quirk family a checkpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Original LLaVA / AVG-LLaVA (`model.mm_projector.*`, `model.vision_tower.vision_tower.*`).
    Avg,
    /// HF transformers `llava_next`.
    HfLlavaNext,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    /// Qwen2-style biases on q/k/v projections.
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionAct {
    QuickGelu,
    Gelu,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: VisionAct,
}

impl VisionConfig {
    /// CLIP ViT-L/14 at 336 px: the tower of LLaVA-1.5/1.6 and AVG-LLaVA.
    pub fn clip_vit_l_336() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            image_size: 336,
            patch_size: 14,
            layer_norm_eps: 1e-5,
            hidden_act: VisionAct::QuickGelu,
        }
    }

    /// Patches per side of one crop (24 for 336/14).
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// Which hidden state of the vision tower feeds the projector, and whether CLS is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureSelect {
    /// Index into the tower's hidden states (Python semantics: -2 = second to last).
    pub layer: i64,
    pub drop_cls: bool,
}

/// How `unpad_image` rounds the kept height/width: the original LLaVA code truncates
/// `orig * scale`; transformers rounds it to 7 decimals first to avoid float noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnpadRounding {
    Truncate,
    Round7,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    /// How many prompt tokens the text filter keeps.
    pub text_queries: usize,
    /// Attention heads of the merger layer.
    pub merger_heads: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlavaConfig {
    pub layout: Layout,
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub feature_select: FeatureSelect,
    /// `(height, width)` candidate resolutions for AnyRes.
    pub grid_pinpoints: Vec<(u32, u32)>,
    /// Token id that stands for an image in the prompt (HF layout); `None` for the original layout,
    /// where the placeholder is a sentinel (-200 in the Python code).
    pub image_token_id: Option<u32>,
    /// Candidate granularities (tokens per crop), coarsest first.
    pub granularities: Vec<u32>,
    /// Present when the checkpoint carries a trained granularity router.
    pub router: Option<RouterConfig>,
    pub unpad_rounding: UnpadRounding,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// How transparent images are flattened to RGB.
    pub alpha: crate::image::Alpha,
}

impl LlavaConfig {
    /// Read `config.json` (and `preprocessor_config.json` when present) from a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Io {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut config = Self::from_json(&value).map_err(|message| ModelError::Config {
            path: path.clone(),
            message,
        })?;
        // transformers < 5 writes `preprocessor_config.json`; 5.x nests the image processor's
        // settings under `image_processor` in `processor_config.json`.
        for (file, key) in [
            ("preprocessor_config.json", None),
            ("processor_config.json", Some("image_processor")),
        ] {
            let pre = dir.join(file);
            let Ok(text) = std::fs::read_to_string(&pre) else {
                continue;
            };
            let value: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
                path: pre.clone(),
                message: e.to_string(),
            })?;
            let section = match key {
                Some(k) => match value.get(k) {
                    Some(v) => v,
                    None => continue,
                },
                None => &value,
            };
            config
                .apply_preprocessor(section)
                .map_err(|message| ModelError::Config { path: pre, message })?;
            break;
        }
        Ok(config)
    }

    /// Parse an already-loaded `config.json`.
    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let is_hf = v.get("text_config").is_some()
            || v.get("model_type").and_then(Value::as_str) == Some("llava_next")
            || arch_is(v, "LlavaNextForConditionalGeneration");
        if is_hf {
            Self::from_hf(v)
        } else {
            Self::from_original(v)
        }
    }

    fn from_hf(v: &Value) -> std::result::Result<Self, String> {
        let empty = Value::Object(Default::default());
        let tc = v.get("text_config").unwrap_or(&empty);
        let mut text = text_config(tc)?;
        // Token ids may live at either level.
        if text.bos_token_id.is_none() {
            text.bos_token_id = opt_u32(v, "bos_token_id");
        }
        if text.eos_token_ids.is_empty() {
            text.eos_token_ids = eos_ids(v);
        }
        if text.pad_token_id.is_none() {
            text.pad_token_id = opt_u32(v, "pad_token_id");
        }
        if let Some(tie) = v.get("tie_word_embeddings").and_then(Value::as_bool) {
            text.tie_word_embeddings = tie;
        }
        let vision = match v.get("vision_config") {
            Some(vc) => vision_config(vc, VisionConfig::clip_vit_l_336_hf_defaults())?,
            None => VisionConfig::clip_vit_l_336(),
        };
        let layer = v
            .get("vision_feature_layer")
            .map(|l| match l {
                Value::Array(a) => Err(format!(
                    "vision_feature_layer as a list ({} layers) is not supported",
                    a.len()
                )),
                other => other
                    .as_i64()
                    .ok_or_else(|| "vision_feature_layer must be an integer".to_string()),
            })
            .transpose()?
            .unwrap_or(-2);
        let strategy = str_or(v, "vision_feature_select_strategy", "default");
        let drop_cls = match strategy.as_str() {
            "default" => true,
            "full" => false,
            other => return Err(format!("unknown vision_feature_select_strategy `{other}`")),
        };
        let act = str_or(v, "projector_hidden_act", "gelu");
        if act != "gelu" {
            return Err(format!(
                "projector_hidden_act `{act}` is not supported (only gelu)"
            ));
        }
        let image_token_id = opt_u32(v, "image_token_index")
            .or_else(|| opt_u32(v, "image_token_id"))
            .or(Some(32000));
        Ok(Self {
            layout: Layout::HfLlavaNext,
            text,
            vision,
            feature_select: FeatureSelect { layer, drop_cls },
            grid_pinpoints: pinpoints(v.get("image_grid_pinpoints"))?,
            image_token_id,
            granularities: granularities(v)?,
            router: None,
            unpad_rounding: UnpadRounding::Round7,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            alpha: crate::image::Alpha::OverWhite,
        })
    }

    fn from_original(v: &Value) -> std::result::Result<Self, String> {
        let text = text_config(v)?;
        let vision = match v.get("vision_config") {
            Some(vc) => vision_config(vc, VisionConfig::clip_vit_l_336())?,
            None => {
                let tower = str_or(v, "mm_vision_tower", "");
                if tower.contains("clip-vit-large-patch14-336") {
                    VisionConfig::clip_vit_l_336()
                } else {
                    return Err(format!(
                        "unknown mm_vision_tower `{tower}`: add a `vision_config` object to config.json"
                    ));
                }
            }
        };
        if let Some(mm) = v.get("mm_hidden_size").and_then(Value::as_u64) {
            if mm as usize != vision.hidden_size {
                return Err(format!(
                    "mm_hidden_size {mm} does not match the vision tower width {}",
                    vision.hidden_size
                ));
            }
        }
        let proj = str_or(v, "mm_projector_type", "mlp2x_gelu");
        if proj != "mlp2x_gelu" {
            return Err(format!(
                "mm_projector_type `{proj}` is not supported (only mlp2x_gelu)"
            ));
        }
        let merge = str_or(v, "mm_patch_merge_type", "spatial_unpad");
        if merge != "spatial_unpad" {
            return Err(format!(
                "mm_patch_merge_type `{merge}` is not supported (only spatial_unpad)"
            ));
        }
        let aspect = str_or(v, "image_aspect_ratio", "anyres");
        if aspect != "anyres" {
            return Err(format!(
                "image_aspect_ratio `{aspect}` is not supported (only anyres)"
            ));
        }
        let select = str_or(v, "mm_vision_select_feature", "patch");
        let drop_cls = match select.as_str() {
            "patch" => true,
            "cls_patch" => false,
            other => return Err(format!("unknown mm_vision_select_feature `{other}`")),
        };
        let layer = v
            .get("mm_vision_select_layer")
            .and_then(Value::as_i64)
            .unwrap_or(-2);
        let router = if v
            .get("router_select")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            Some(RouterConfig {
                text_queries: v
                    .get("filtered_text_num")
                    .and_then(Value::as_u64)
                    .unwrap_or(32) as usize,
                merger_heads: 8,
            })
        } else {
            None
        };
        Ok(Self {
            layout: Layout::Avg,
            text,
            vision,
            feature_select: FeatureSelect { layer, drop_cls },
            // The original code reads each pinpoint as [width, height]; store (height, width) like HF,
            // keeping the order, which decides ties in best-resolution selection.
            grid_pinpoints: pinpoints(v.get("image_grid_pinpoints"))?
                .into_iter()
                .map(|(a, b)| (b, a))
                .collect(),
            image_token_id: None,
            granularities: granularities(v)?,
            router,
            unpad_rounding: UnpadRounding::Truncate,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            alpha: crate::image::Alpha::Drop,
        })
    }

    fn apply_preprocessor(&mut self, v: &Value) -> std::result::Result<(), String> {
        let triple = |key: &str| -> std::result::Result<Option<[f32; 3]>, String> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(a)) if a.len() == 3 => {
                    let mut out = [0f32; 3];
                    for (o, x) in out.iter_mut().zip(a) {
                        *o = x
                            .as_f64()
                            .ok_or_else(|| format!("{key} must hold numbers"))?
                            as f32;
                    }
                    Ok(Some(out))
                }
                Some(_) => Err(format!("{key} must be a list of 3 numbers")),
            }
        };
        if let Some(m) = triple("image_mean")? {
            self.image_mean = m;
        }
        if let Some(s) = triple("image_std")? {
            self.image_std = s;
        }
        Ok(())
    }

    /// Number of visual tokens a single 336-px crop yields before pooling (576 for CLIP-L/336).
    pub fn tokens_per_crop(&self) -> usize {
        let side = self.vision.patches_per_side();
        side * side
    }
}

impl VisionConfig {
    /// transformers' `LlavaNextConfig` fills a missing `vision_config` with CLIP-L/336 values, but a
    /// present one that omits keys falls back to `CLIPVisionConfig`'s own defaults.
    fn clip_vit_l_336_hf_defaults() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 224,
            patch_size: 32,
            layer_norm_eps: 1e-5,
            hidden_act: VisionAct::QuickGelu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_layout_parses_router_keys() {
        let v = serde_json::json!({
            "architectures": ["LlavaLlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 160, "num_hidden_layers": 2, "vocab_size": 100,
            "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": 1024,
            "image_grid_pinpoints": "[[336, 672], [672, 336]]", "router_select": true,
            "vis_token_granularity": [36, 72, 144, 288, 576]
        });
        let c = LlavaConfig::from_json(&v).unwrap();
        assert_eq!(c.layout, Layout::Avg);
        assert_eq!(c.text.head_dim, 16);
        assert_eq!(c.vision.hidden_size, 1024);
        assert_eq!(c.router.as_ref().unwrap().text_queries, 32);
        assert_eq!(c.unpad_rounding, UnpadRounding::Truncate);
    }

    #[test]
    fn bad_values_are_reported() {
        let v = serde_json::json!({"hidden_size": 64, "num_attention_heads": 5,
            "mm_vision_tower": "openai/clip-vit-large-patch14-336"});
        assert!(LlavaConfig::from_json(&v)
            .unwrap_err()
            .contains("divisible"));
        let v = serde_json::json!({"mm_vision_tower": "mystery"});
        assert!(LlavaConfig::from_json(&v)
            .unwrap_err()
            .contains("vision_config"));
    }
}
