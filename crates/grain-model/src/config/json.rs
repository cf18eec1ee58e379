//! Reading `config.json` values: typed getters with transformers' defaults, and the sub-configs
//! (text, vision, pinpoints, granularities) that both checkpoint layouts share.

use serde_json::Value;

use super::{TextConfig, VisionAct, VisionConfig, DEFAULT_GRANULARITIES, DEFAULT_PINPOINTS};

pub(super) fn arch_is(v: &Value, name: &str) -> bool {
    v.get("architectures")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(name)))
}

pub(super) fn str_or(v: &Value, key: &str, default: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or(default)
        .to_string()
}

pub(super) fn opt_u32(v: &Value, key: &str) -> Option<u32> {
    v.get(key).and_then(Value::as_u64).map(|x| x as u32)
}

fn usize_or(v: &Value, key: &str, default: usize) -> std::result::Result<usize, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| format!("`{key}` must be a non-negative integer")),
    }
}

fn f64_or(v: &Value, key: &str, default: f64) -> std::result::Result<f64, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_f64()
            .ok_or_else(|| format!("`{key}` must be a number")),
    }
}

pub(super) fn eos_ids(v: &Value) -> Vec<u32> {
    match v.get("eos_token_id") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        Some(x) => x.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        None => Vec::new(),
    }
}

/// LLaMA-family text config with transformers' `LlamaConfig` defaults for missing keys.
pub(super) fn text_config(v: &Value) -> std::result::Result<TextConfig, String> {
    let hidden_size = usize_or(v, "hidden_size", 4096)?;
    let num_attention_heads = usize_or(v, "num_attention_heads", 32)?;
    let num_key_value_heads = usize_or(v, "num_key_value_heads", num_attention_heads)?;
    if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
        return Err(format!(
            "hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}"
        ));
    }
    if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
        return Err(format!(
            "num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}"
        ));
    }
    let head_dim = usize_or(v, "head_dim", hidden_size / num_attention_heads)?;
    // transformers 5 moved rope_theta into `rope_parameters`.
    let rope_theta = match v.get("rope_parameters").or_else(|| v.get("rope_scaling")) {
        Some(Value::Object(p)) => {
            let kind = p
                .get("rope_type")
                .or_else(|| p.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            if kind != "default" {
                return Err(format!("rope type `{kind}` is not supported"));
            }
            match p.get("rope_theta").and_then(Value::as_f64) {
                Some(t) => t,
                None => f64_or(v, "rope_theta", 10000.0)?,
            }
        }
        _ => f64_or(v, "rope_theta", 10000.0)?,
    };
    let model_type = str_or(v, "model_type", "llama");
    let act = str_or(v, "hidden_act", "silu");
    if act != "silu" {
        return Err(format!(
            "text hidden_act `{act}` is not supported (only silu)"
        ));
    }
    Ok(TextConfig {
        hidden_size,
        intermediate_size: usize_or(v, "intermediate_size", 11008)?,
        num_hidden_layers: usize_or(v, "num_hidden_layers", 32)?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: f64_or(v, "rms_norm_eps", 1e-6)?,
        rope_theta,
        max_position_embeddings: usize_or(v, "max_position_embeddings", 2048)?,
        vocab_size: usize_or(v, "vocab_size", 32000)?,
        tie_word_embeddings: v
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        attention_bias: v
            .get("attention_bias")
            .and_then(Value::as_bool)
            .unwrap_or(model_type == "qwen2"),
        bos_token_id: opt_u32(v, "bos_token_id"),
        eos_token_ids: eos_ids(v),
        pad_token_id: opt_u32(v, "pad_token_id"),
    })
}

pub(super) fn vision_config(
    v: &Value,
    d: VisionConfig,
) -> std::result::Result<VisionConfig, String> {
    let act = match str_or(v, "hidden_act", "quick_gelu").as_str() {
        "quick_gelu" => VisionAct::QuickGelu,
        "gelu" => VisionAct::Gelu,
        other => return Err(format!("vision hidden_act `{other}` is not supported")),
    };
    let c = VisionConfig {
        hidden_size: usize_or(v, "hidden_size", d.hidden_size)?,
        intermediate_size: usize_or(v, "intermediate_size", d.intermediate_size)?,
        num_hidden_layers: usize_or(v, "num_hidden_layers", d.num_hidden_layers)?,
        num_attention_heads: usize_or(v, "num_attention_heads", d.num_attention_heads)?,
        image_size: usize_or(v, "image_size", d.image_size)?,
        patch_size: usize_or(v, "patch_size", d.patch_size)?,
        layer_norm_eps: f64_or(v, "layer_norm_eps", d.layer_norm_eps)?,
        hidden_act: act,
    };
    if c.patch_size == 0 || !c.image_size.is_multiple_of(c.patch_size) {
        return Err(format!(
            "image_size {} is not a multiple of patch_size {}",
            c.image_size, c.patch_size
        ));
    }
    if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
        return Err("vision hidden_size is not divisible by num_attention_heads".into());
    }
    Ok(c)
}

/// `image_grid_pinpoints` as a JSON list or a string holding one (the original LLaVA configs).
pub(super) fn pinpoints(v: Option<&Value>) -> std::result::Result<Vec<(u32, u32)>, String> {
    let parsed;
    let list = match v {
        None | Some(Value::Null) => return Ok(DEFAULT_PINPOINTS.to_vec()),
        Some(Value::String(s)) => {
            parsed = serde_json::from_str::<Value>(s)
                .map_err(|e| format!("image_grid_pinpoints string is not a list: {e}"))?;
            &parsed
        }
        Some(other) => other,
    };
    let arr = list
        .as_array()
        .ok_or("image_grid_pinpoints must be a list of [h, w] pairs")?;
    let mut out = Vec::with_capacity(arr.len());
    for p in arr {
        let pair = p
            .as_array()
            .filter(|a| a.len() == 2)
            .ok_or("each pinpoint must be [h, w]")?;
        let h = pair[0].as_u64().ok_or("pinpoints must be integers")? as u32;
        let w = pair[1].as_u64().ok_or("pinpoints must be integers")? as u32;
        if h == 0 || w == 0 {
            return Err("pinpoints must be positive".into());
        }
        out.push((h, w));
    }
    if out.is_empty() {
        return Err("image_grid_pinpoints is empty".into());
    }
    Ok(out)
}

pub(super) fn granularities(v: &Value) -> std::result::Result<Vec<u32>, String> {
    match v.get("vis_token_granularity") {
        None | Some(Value::Null) => Ok(DEFAULT_GRANULARITIES.to_vec()),
        Some(Value::Array(a)) => {
            let g: Vec<u32> = a
                .iter()
                .filter_map(Value::as_u64)
                .map(|x| x as u32)
                .collect();
            if g.len() != a.len() || g.is_empty() {
                return Err("vis_token_granularity must be a list of integers".into());
            }
            for x in &g {
                if !DEFAULT_GRANULARITIES.contains(x) {
                    return Err(format!(
                        "granularity {x} is not one of {DEFAULT_GRANULARITIES:?}"
                    ));
                }
            }
            Ok(g)
        }
        Some(_) => Err("vis_token_granularity must be a list".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinpoints_as_string_or_list() {
        let s = Value::String("[[336, 672], [672, 336]]".into());
        assert_eq!(pinpoints(Some(&s)).unwrap(), vec![(336, 672), (672, 336)]);
        let l = serde_json::json!([[336, 1008]]);
        assert_eq!(pinpoints(Some(&l)).unwrap(), vec![(336, 1008)]);
        assert!(pinpoints(Some(&Value::String("nope".into()))).is_err());
        assert_eq!(pinpoints(None).unwrap(), DEFAULT_PINPOINTS.to_vec());
    }
}
