//! Reading the JSON side files of a checkpoint that describe special tokens:
//! `tokenizer_config.json`, `special_tokens_map.json`, `added_tokens.json`,
//! `config.json` and `generation_config.json`. Every file is optional.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::TokenizerError;

/// A special token as written by transformers: a bare string or an
/// `AddedToken` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum TokenField {
    Text(String),
    Object { content: String },
}

impl TokenField {
    pub fn content(&self) -> &str {
        match self {
            Self::Text(s) | Self::Object { content: s } => s,
        }
    }
}

/// One entry of `added_tokens_decoder`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct AddedTokenSpec {
    pub content: String,
    #[serde(default)]
    pub lstrip: bool,
    #[serde(default)]
    pub rstrip: bool,
    #[serde(default)]
    pub single_word: bool,
    #[serde(default)]
    pub normalized: Option<bool>,
    #[serde(default)]
    pub special: bool,
}

/// The fields of `tokenizer_config.json` this crate uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct TokenizerConfig {
    #[serde(default)]
    pub bos_token: Option<TokenField>,
    #[serde(default)]
    pub eos_token: Option<TokenField>,
    #[serde(default)]
    pub unk_token: Option<TokenField>,
    #[serde(default)]
    pub pad_token: Option<TokenField>,
    #[serde(default)]
    pub image_token: Option<TokenField>,
    #[serde(default)]
    pub add_bos_token: Option<bool>,
    #[serde(default)]
    pub add_eos_token: Option<bool>,
    #[serde(default)]
    pub legacy: Option<bool>,
    #[serde(default)]
    pub add_prefix_space: Option<bool>,
    /// Keys are ids written as strings.
    #[serde(default)]
    pub added_tokens_decoder: BTreeMap<String, AddedTokenSpec>,
}

/// `special_tokens_map.json`; its values override `tokenizer_config.json`'s,
/// as in transformers.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct SpecialTokensMap {
    #[serde(default)]
    pub bos_token: Option<TokenField>,
    #[serde(default)]
    pub eos_token: Option<TokenField>,
    #[serde(default)]
    pub unk_token: Option<TokenField>,
    #[serde(default)]
    pub pad_token: Option<TokenField>,
    #[serde(default)]
    pub image_token: Option<TokenField>,
}

/// Special-token ids from the model's `config.json` (top level or, for
/// multimodal configs, `text_config`) and `generation_config.json`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ModelIds {
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    pub pad: Option<u32>,
}

/// Everything read from the side files of one checkpoint directory.
#[derive(Debug, Clone, Default)]
pub(crate) struct SideFiles {
    pub tokenizer_config: TokenizerConfig,
    pub special_map: SpecialTokensMap,
    /// `added_tokens.json`: content → id.
    pub added_tokens_json: BTreeMap<String, u32>,
    pub model_ids: ModelIds,
}

impl SideFiles {
    pub fn read(dir: &Path) -> Result<Self, TokenizerError> {
        let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        let special_map = read_json(&dir.join("special_tokens_map.json"))?.unwrap_or_default();
        let added_tokens_json = read_json(&dir.join("added_tokens.json"))?.unwrap_or_default();
        let mut model_ids = ModelIds::default();
        if let Some(cfg) = read_json::<Value>(&dir.join("config.json"))? {
            collect_ids(&cfg, &mut model_ids);
            if let Some(text) = cfg.get("text_config") {
                collect_ids(text, &mut model_ids);
            }
        }
        if let Some(gen) = read_json::<Value>(&dir.join("generation_config.json"))? {
            collect_ids(&gen, &mut model_ids);
        }
        Ok(Self {
            tokenizer_config,
            special_map,
            added_tokens_json,
            model_ids,
        })
    }

    fn pick<'a>(map: &'a Option<TokenField>, cfg: &'a Option<TokenField>) -> Option<&'a str> {
        map.as_ref().or(cfg.as_ref()).map(TokenField::content)
    }

    pub fn bos_token(&self) -> Option<&str> {
        Self::pick(
            &self.special_map.bos_token,
            &self.tokenizer_config.bos_token,
        )
    }
    pub fn eos_token(&self) -> Option<&str> {
        Self::pick(
            &self.special_map.eos_token,
            &self.tokenizer_config.eos_token,
        )
    }
    pub fn unk_token(&self) -> Option<&str> {
        Self::pick(
            &self.special_map.unk_token,
            &self.tokenizer_config.unk_token,
        )
    }
    pub fn pad_token(&self) -> Option<&str> {
        Self::pick(
            &self.special_map.pad_token,
            &self.tokenizer_config.pad_token,
        )
    }
    pub fn image_token(&self) -> Option<&str> {
        Self::pick(
            &self.special_map.image_token,
            &self.tokenizer_config.image_token,
        )
    }

    /// Added tokens declared by `tokenizer_config.json` and `added_tokens.json`,
    /// by id. A token listed only in `added_tokens.json` is special when it is
    /// one of the named special tokens (as transformers treats it).
    pub fn declared_added_tokens(&self) -> BTreeMap<u32, AddedTokenSpec> {
        let mut out = BTreeMap::new();
        for (id, spec) in &self.tokenizer_config.added_tokens_decoder {
            if let Ok(id) = id.parse::<u32>() {
                out.insert(id, spec.clone());
            }
        }
        let named: Vec<&str> = [
            self.bos_token(),
            self.eos_token(),
            self.unk_token(),
            self.pad_token(),
            self.image_token(),
        ]
        .into_iter()
        .flatten()
        .collect();
        for (content, &id) in &self.added_tokens_json {
            out.entry(id).or_insert_with(|| AddedTokenSpec {
                content: content.clone(),
                lstrip: false,
                rstrip: false,
                single_word: false,
                normalized: None,
                special: named.contains(&content.as_str()),
            });
        }
        out
    }
}

fn collect_ids(v: &Value, ids: &mut ModelIds) {
    let as_id = |v: &Value| v.as_u64().and_then(|x| u32::try_from(x).ok());
    if ids.bos.is_none() {
        ids.bos = v.get("bos_token_id").and_then(as_id);
    }
    if ids.pad.is_none() {
        ids.pad = v.get("pad_token_id").and_then(as_id);
    }
    match v.get("eos_token_id") {
        Some(Value::Array(list)) => ids.eos.extend(list.iter().filter_map(as_id)),
        Some(single) => ids.eos.extend(as_id(single)),
        None => {}
    }
}

/// Reads and parses a JSON file; `Ok(None)` when it does not exist.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Option<T>, TokenizerError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TokenizerError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| TokenizerError::Json {
            path: PathBuf::from(path),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_fields_accept_strings_objects_and_null() {
        let cfg: TokenizerConfig = serde_json::from_str(
            r#"{"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
                "eos_token": "</s>", "pad_token": null, "legacy": false,
                "added_tokens_decoder": {"32000": {"content": "<image>", "special": true}}}"#,
        )
        .unwrap();
        assert_eq!(cfg.bos_token.unwrap().content(), "<s>");
        assert_eq!(cfg.eos_token.unwrap().content(), "</s>");
        assert!(cfg.pad_token.is_none());
        assert_eq!(cfg.legacy, Some(false));
        assert_eq!(cfg.added_tokens_decoder["32000"].content, "<image>");
    }

    #[test]
    fn model_ids_merge_config_text_config_and_generation_config() {
        let mut ids = ModelIds::default();
        collect_ids(
            &serde_json::json!({"text_config": {}, "eos_token_id": [2, 7], "pad_token_id": 0}),
            &mut ids,
        );
        collect_ids(
            &serde_json::json!({"bos_token_id": 1, "eos_token_id": 9}),
            &mut ids,
        );
        assert_eq!(ids.bos, Some(1));
        assert_eq!(ids.eos, vec![2, 7, 9]);
        assert_eq!(ids.pad, Some(0));
    }
}
