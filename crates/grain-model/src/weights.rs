//! Safetensors loading: one file or an indexed set of shards, memory-mapped, with tensor names
//! normalised across checkpoint layouts so the model code sees one naming scheme.
//!
//! Canonical names used by the model code:
//! - `lm.embed_tokens.weight`, `lm.layers.N.…`, `lm.norm.weight`, `lm.lm_head.weight`
//! - `vision.embeddings.…`, `vision.pre_layrnorm.…`, `vision.encoder.layers.N.…`
//! - `proj.linear_1.{weight,bias}`, `proj.linear_2.{weight,bias}`
//! - `image_newline`, `router.…`

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};

/// The safetensors files of one checkpoint, with a canonical-name index.
pub struct Weights {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    /// canonical name → (file index, name inside the file)
    index: HashMap<String, (usize, String)>,
    dtype: DType,
    device: Device,
}

impl Weights {
    /// Open `model.safetensors`, or every shard listed in `model.safetensors.index.json`, or failing
    /// both, every `*.safetensors` file in the directory.
    pub fn from_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let paths = safetensors_files(dir)?;
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let st = open_mmap(path)?;
            for (name, _) in st.tensors() {
                if let Some(canon) = canonical_name(&name) {
                    index.insert(canon, (i, name));
                }
            }
            files.push((path.clone(), st));
        }
        Ok(Self {
            files,
            index,
            dtype,
            device: device.clone(),
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Canonical names present, sorted (for diagnostics).
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.index.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Load a tensor by canonical name, check its shape, convert to the model dtype and device.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_as(name, shape, self.dtype)
    }

    /// Like [`Weights::get`] but in f32 regardless of the model dtype (norms, small heads).
    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_as(name, shape, DType::F32)
    }

    fn get_as(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let (fi, raw) = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                files: self.file_list(),
            })?;
        let (path, st) = &self.files[*fi];
        let view = st.get(raw).map_err(|e| ModelError::TensorData {
            name: raw.clone(),
            file: path.clone(),
            message: e.to_string(),
        })?;
        if view.shape() != shape {
            return Err(ModelError::TensorShape {
                name: raw.clone(),
                file: path.clone(),
                expected: shape.to_vec(),
                actual: view.shape().to_vec(),
            });
        }
        let t = st
            .load(raw, &Device::Cpu)
            .map_err(|e| ModelError::TensorData {
                name: raw.clone(),
                file: path.clone(),
                message: e.to_string(),
            })?;
        Ok(t.to_dtype(dtype)?.to_device(&self.device)?)
    }

    fn file_list(&self) -> String {
        self.files
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[allow(unsafe_code)]
fn open_mmap(path: &Path) -> Result<MmapedSafetensors> {
    // SAFETY: the file is mapped read-only; like every inference server we assume checkpoint files
    // are not modified while being served. Header and offsets are validated by the safetensors parser
    // (a truncated file is an error, not an out-of-bounds read).
    unsafe { MmapedSafetensors::new(path) }.map_err(|e| ModelError::Safetensors {
        file: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The checkpoint's safetensors files, in a stable order.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path).map_err(|e| ModelError::Io {
            path: index_path.clone(),
            message: e.to_string(),
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: index_path.clone(),
            message: e.to_string(),
        })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Config {
                path: index_path.clone(),
                message: "missing `weight_map` object".into(),
            })?;
        let mut files: BTreeMap<String, ()> = BTreeMap::new();
        for f in map.values() {
            let f = f.as_str().ok_or_else(|| ModelError::Config {
                path: index_path.clone(),
                message: "weight_map values must be file names".into(),
            })?;
            if f.contains('/') || f.contains("..") {
                return Err(ModelError::Config {
                    path: index_path.clone(),
                    message: format!("shard name `{f}` must be a plain file name"),
                });
            }
            files.insert(f.to_string(), ());
        }
        let paths: Vec<PathBuf> = files.into_keys().map(|f| dir.join(f)).collect();
        for p in &paths {
            if !p.is_file() {
                return Err(ModelError::Io {
                    path: p.clone(),
                    message: "shard listed in the index is missing".into(),
                });
            }
        }
        return Ok(paths);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::Io {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(ModelError::Io {
            path: dir.to_path_buf(),
            message: "no *.safetensors weights found".into(),
        });
    }
    Ok(found)
}

/// Map a checkpoint tensor name from any supported layout to the canonical scheme.
/// Names that belong to nothing we use (e.g. CLIP's text tower) map to `None`.
pub fn canonical_name(name: &str) -> Option<String> {
    // Original LLaVA / AVG-LLaVA.
    if let Some(rest) = name.strip_prefix("model.vision_tower.vision_tower.") {
        return vision_name(rest);
    }
    if let Some(rest) = name.strip_prefix("model.mm_projector.") {
        return projector_name(rest, true);
    }
    if let Some(rest) = name.strip_prefix("model.router.") {
        return Some(format!("router.{rest}"));
    }
    // HF llava_next, transformers ≥ 4.52 (and 5.x).
    if let Some(rest) = name.strip_prefix("model.language_model.") {
        return Some(format!("lm.{rest}"));
    }
    if let Some(rest) = name.strip_prefix("model.vision_tower.") {
        return vision_name(rest);
    }
    if let Some(rest) = name.strip_prefix("model.multi_modal_projector.") {
        return projector_name(rest, false);
    }
    // HF llava_next, older transformers.
    if let Some(rest) = name.strip_prefix("language_model.model.") {
        return Some(format!("lm.{rest}"));
    }
    if let Some(rest) = name.strip_prefix("language_model.lm_head.") {
        return Some(format!("lm.lm_head.{rest}"));
    }
    if let Some(rest) = name.strip_prefix("vision_tower.") {
        return vision_name(rest);
    }
    if let Some(rest) = name.strip_prefix("multi_modal_projector.") {
        return projector_name(rest, false);
    }
    match name {
        "image_newline" | "model.image_newline" => return Some("image_newline".into()),
        "lm_head.weight" => return Some("lm.lm_head.weight".into()),
        _ => {}
    }
    // Original layout LM: `model.layers.*`, `model.embed_tokens.*`, `model.norm.*`.
    name.strip_prefix("model.").map(|rest| format!("lm.{rest}"))
}

fn vision_name(rest: &str) -> Option<String> {
    let rest = rest.strip_prefix("vision_model.").unwrap_or(rest);
    // A full CLIPModel checkpoint also has the text tower and projections; skip them.
    if rest.starts_with("embeddings.")
        || rest.starts_with("pre_layrnorm.")
        || rest.starts_with("encoder.")
        || rest.starts_with("post_layernorm.")
    {
        Some(format!("vision.{rest}"))
    } else {
        None
    }
}

fn projector_name(rest: &str, numbered: bool) -> Option<String> {
    let (idx, tail) = rest.split_once('.')?;
    let linear = match (numbered, idx) {
        (true, "0") | (false, "linear_1") => "linear_1",
        (true, "2") | (false, "linear_2") => "linear_2",
        _ => return None,
    };
    Some(format!("proj.{linear}.{tail}"))
}

#[cfg(test)]
mod tests {
    use super::canonical_name as c;

    #[test]
    fn every_layout_maps_to_one_scheme() {
        let cases = [
            (
                "model.layers.3.self_attn.q_proj.weight",
                "lm.layers.3.self_attn.q_proj.weight",
            ),
            (
                "model.language_model.layers.3.self_attn.q_proj.weight",
                "lm.layers.3.self_attn.q_proj.weight",
            ),
            (
                "language_model.model.layers.3.self_attn.q_proj.weight",
                "lm.layers.3.self_attn.q_proj.weight",
            ),
            ("lm_head.weight", "lm.lm_head.weight"),
            ("language_model.lm_head.weight", "lm.lm_head.weight"),
            ("model.embed_tokens.weight", "lm.embed_tokens.weight"),
            ("model.norm.weight", "lm.norm.weight"),
            (
                "model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
                "vision.encoder.layers.0.mlp.fc1.weight",
            ),
            (
                "model.vision_tower.vision_model.pre_layrnorm.weight",
                "vision.pre_layrnorm.weight",
            ),
            (
                "vision_tower.vision_model.embeddings.patch_embedding.weight",
                "vision.embeddings.patch_embedding.weight",
            ),
            (
                "vision_tower.embeddings.class_embedding",
                "vision.embeddings.class_embedding",
            ),
            ("model.mm_projector.0.weight", "proj.linear_1.weight"),
            ("model.mm_projector.2.bias", "proj.linear_2.bias"),
            (
                "multi_modal_projector.linear_1.weight",
                "proj.linear_1.weight",
            ),
            (
                "model.multi_modal_projector.linear_2.bias",
                "proj.linear_2.bias",
            ),
            ("model.image_newline", "image_newline"),
            ("image_newline", "image_newline"),
            ("model.router.voter", "router.voter"),
        ];
        for (raw, want) in cases {
            assert_eq!(c(raw).as_deref(), Some(want), "{raw}");
        }
        assert_eq!(
            c("model.vision_tower.vision_tower.text_model.embeddings.x"),
            None
        );
        assert_eq!(c("model.mm_projector.1.weight"), None);
    }
}
