//! [`Tokenizer`]: loading from a checkpoint directory, special ids, encoding
//! and decoding, and prompt encoding with image placeholders.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use tokenizers::AddedToken;

use crate::config::SideFiles;
use crate::error::TokenizerError;
use crate::incremental::IncrementalDecoder;
use crate::spm::{self, ConvertOptions, ModelProto};

/// Id that [`Tokenizer::encode_prompt`] puts where an image goes when the
/// vocabulary has no image token (original LLaVA checkpoints: the reference
/// code uses -200 there). It is never a real token id; the engine replaces
/// each one with the image's visual tokens before the model sees the prompt.
pub const IMAGE_TOKEN_SENTINEL: u32 = u32::MAX;

/// Where the tokenizer was loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerSource {
    /// `tokenizer.json`, read by the `tokenizers` library as is.
    TokenizerJson,
    /// `tokenizer.model`, converted here (see the `spm` module).
    SentencePiece,
}

/// A text tokenizer with the special ids a server needs. Cheap to clone.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    tok: tokenizers::Tokenizer,
    source: TokenizerSource,
    bos: Option<(String, u32)>,
    eos_ids: Vec<u32>,
    eos_token: Option<String>,
    pad: Option<u32>,
    unk: Option<u32>,
    image: Option<(String, u32)>,
    add_bos_token: bool,
    vocab_size: usize,
    special_ids: HashSet<u32>,
    added_ids: HashSet<u32>,
    byte_ids: HashSet<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.inner.source)
            .field("vocab_size", &self.inner.vocab_size)
            .field("bos", &self.inner.bos)
            .field("eos_ids", &self.inner.eos_ids)
            .field("image", &self.inner.image)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads the tokenizer of a checkpoint directory.
    ///
    /// `tokenizer.json` is preferred; without it a SentencePiece
    /// `tokenizer.model` (BPE, as LLaMA/Vicuna ship) is converted natively.
    /// Added tokens of `tokenizer_config.json` (`added_tokens_decoder`) and
    /// `added_tokens.json` are registered in both cases. Special ids come from
    /// `special_tokens_map.json` / `tokenizer_config.json` (token strings), then
    /// `config.json` / `generation_config.json` (`*_token_id`), then the
    /// SentencePiece trainer defaults.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let side = SideFiles::read(dir)?;
        let json_path = dir.join("tokenizer.json");
        let model_path = dir.join("tokenizer.model");
        let (mut tok, source, proto) = if json_path.is_file() {
            let tok = tokenizers::Tokenizer::from_file(&json_path)
                .map_err(|e| TokenizerError::Backend(format!("{}: {e}", json_path.display())))?;
            (tok, TokenizerSource::TokenizerJson, None)
        } else if model_path.is_file() {
            let bytes = std::fs::read(&model_path).map_err(|source| TokenizerError::Io {
                path: model_path.clone(),
                source,
            })?;
            let proto = ModelProto::parse(&bytes).map_err(|source| TokenizerError::Proto {
                path: model_path.clone(),
                source,
            })?;
            let tok = spm::convert(&proto, &convert_options(&side, &proto))?;
            (tok, TokenizerSource::SentencePiece, Some(proto))
        } else {
            return Err(TokenizerError::NotFound(dir.to_path_buf()));
        };
        register_declared_tokens(&mut tok, &side)?;
        Ok(Self::assemble(tok, source, &side, proto.as_ref()))
    }

    fn assemble(
        tok: tokenizers::Tokenizer,
        source: TokenizerSource,
        side: &SideFiles,
        proto: Option<&ModelProto>,
    ) -> Self {
        let id_of = |t: Option<&str>| t.and_then(|t| tok.token_to_id(t));
        let sp_id = |pick: fn(&ModelProto) -> i32| {
            proto
                .map(pick)
                .and_then(|i| u32::try_from(i).ok())
                .filter(|&i| tok.id_to_token(i).is_some())
        };

        let bos_id = id_of(side.bos_token())
            .or(side.model_ids.bos)
            .or_else(|| sp_id(|p| p.trainer_spec.bos_id));
        let bos = bos_id.and_then(|id| tok.id_to_token(id).map(|t| (t, id)));

        let mut eos_ids: Vec<u32> = id_of(side.eos_token()).into_iter().collect();
        for id in &side.model_ids.eos {
            if !eos_ids.contains(id) {
                eos_ids.push(*id);
            }
        }
        if eos_ids.is_empty() {
            eos_ids.extend(sp_id(|p| p.trainer_spec.eos_id));
        }
        let eos_token = eos_ids.first().and_then(|&id| tok.id_to_token(id));

        let pad = id_of(side.pad_token())
            .or(side.model_ids.pad)
            .or_else(|| sp_id(|p| p.trainer_spec.pad_id));
        let unk = id_of(side.unk_token()).or_else(|| sp_id(|p| p.trainer_spec.unk_id));
        let image_text = side.image_token().unwrap_or("<image>");
        let image = tok
            .token_to_id(image_text)
            .map(|id| (image_text.to_string(), id));

        let added = tok.get_added_tokens_decoder();
        let special_ids = added
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        let added_ids = added.keys().copied().collect();
        let full_vocab = tok.get_vocab(true);
        let byte_ids = full_vocab
            .iter()
            .filter(|(t, _)| is_byte_token(t))
            .map(|(_, &id)| id)
            .collect();
        let vocab_size = full_vocab
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);

        let add_bos_token = side.tokenizer_config.add_bos_token.unwrap_or(bos.is_some());
        Self {
            inner: Arc::new(Inner {
                tok,
                source,
                bos,
                eos_ids,
                eos_token,
                pad,
                unk,
                image,
                add_bos_token,
                vocab_size,
                special_ids,
                added_ids,
                byte_ids,
            }),
        }
    }

    /// Encodes plain text. Special-token text (`</s>`, `<image>`) inside it
    /// becomes those tokens. With `add_bos`, the BOS id is put first (when the
    /// tokenizer has one); no other special token is added.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .tok
            .encode_fast(text, false)
            .map_err(TokenizerError::backend)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos {
            ids.extend(self.bos_id());
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Decodes ids to text; `skip_special` drops special tokens (BOS, EOS, ...).
    /// Unknown ids (including [`IMAGE_TOKEN_SENTINEL`]) are skipped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .tok
            .decode(ids, skip_special)
            .map_err(TokenizerError::backend)
    }

    /// Encodes a rendered chat prompt whose images are marked by
    /// `image_token` text, putting exactly one id per placeholder.
    ///
    /// - When `image_token` is an added token of the vocabulary (HF
    ///   `llava_next` layout), the whole prompt is encoded at once, as
    ///   transformers' processor does, and each placeholder is that token's id.
    /// - Otherwise (original LLaVA layout) the text between placeholders is
    ///   encoded chunk by chunk, as LLaVA's `tokenizer_image_token` does (each
    ///   chunk gets its own leading "▁"), and each placeholder becomes
    ///   [`IMAGE_TOKEN_SENTINEL`] (or the token's id if it is a plain vocabulary
    ///   piece).
    ///
    /// BOS is put first once when the tokenizer adds one (`add_bos_token`),
    /// unless the prompt already starts with the BOS text.
    pub fn encode_prompt(
        &self,
        rendered: &str,
        image_token: &str,
    ) -> Result<Vec<u32>, TokenizerError> {
        let bos_in_text = self
            .inner
            .bos
            .as_ref()
            .is_some_and(|(text, _)| rendered.starts_with(text.as_str()));
        let add_bos = self.inner.add_bos_token && !bos_in_text;
        let image_id = self.token_to_id(image_token);
        if image_token.is_empty() || image_id.is_some_and(|id| self.inner.added_ids.contains(&id)) {
            return self.encode(rendered, add_bos);
        }
        let placeholder = image_id.unwrap_or(IMAGE_TOKEN_SENTINEL);
        let mut ids = Vec::new();
        if add_bos {
            ids.extend(self.bos_id());
        }
        for (i, chunk) in rendered.split(image_token).enumerate() {
            if i > 0 {
                ids.push(placeholder);
            }
            ids.extend(self.encode(chunk, false)?);
        }
        Ok(ids)
    }

    /// A streaming detokenizer; see [`IncrementalDecoder`].
    pub fn incremental_decoder(&self, skip_special: bool) -> IncrementalDecoder {
        IncrementalDecoder::new(self.clone(), skip_special)
    }

    /// The token text of an id (e.g. `"▁Hello"`, `"<0x0A>"`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.tok.id_to_token(id)
    }

    /// The id of a token text, added tokens included.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.tok.token_to_id(token)
    }

    /// Size of the id space: highest id + 1, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab_size
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.inner.bos.as_ref().map(|(_, id)| *id)
    }

    /// The BOS token text, for chat templates (`bos_token`).
    pub fn bos_token(&self) -> Option<&str> {
        self.inner.bos.as_ref().map(|(t, _)| t.as_str())
    }

    /// Every id that ends generation: the tokenizer's EOS first, then the
    /// extra ones from `config.json` / `generation_config.json`.
    pub fn eos_ids(&self) -> &[u32] {
        &self.inner.eos_ids
    }

    /// The EOS token text, for chat templates (`eos_token`).
    pub fn eos_token(&self) -> Option<&str> {
        self.inner.eos_token.as_deref()
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.inner.pad
    }

    pub fn unk_id(&self) -> Option<u32> {
        self.inner.unk
    }

    /// The image placeholder token (text, id) when the vocabulary has one
    /// (`image_token` of the tokenizer config, else `<image>`).
    pub fn image_token(&self) -> Option<(&str, u32)> {
        self.inner.image.as_ref().map(|(t, id)| (t.as_str(), *id))
    }

    /// Whether prompts start with BOS (`add_bos_token`, default: when there is a BOS).
    pub fn add_bos_token(&self) -> bool {
        self.inner.add_bos_token
    }

    pub fn source(&self) -> TokenizerSource {
        self.inner.source
    }

    pub(crate) fn is_special(&self, id: u32) -> bool {
        self.inner.special_ids.contains(&id)
    }

    pub(crate) fn is_byte_token(&self, id: u32) -> bool {
        self.inner.byte_ids.contains(&id)
    }

    /// Whether the vocabulary has `<0xHH>` byte-fallback pieces.
    pub(crate) fn uses_byte_fallback(&self) -> bool {
        !self.inner.byte_ids.is_empty()
    }
}

/// Byte-fallback pieces are spelled `<0xHH>`.
fn is_byte_token(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 6
        && t.starts_with("<0x")
        && b[5] == b'>'
        && b[3].is_ascii_hexdigit()
        && b[4].is_ascii_hexdigit()
}

fn convert_options(side: &SideFiles, proto: &ModelProto) -> ConvertOptions {
    let cfg = &side.tokenizer_config;
    let piece_id = |content: &str| {
        proto
            .pieces
            .iter()
            .position(|p| p.piece == content)
            .and_then(|i| u32::try_from(i).ok())
    };
    let special = |configured: Option<&str>, sp_id: i32| -> Option<(String, u32)> {
        match configured {
            Some(text) => piece_id(text).map(|id| (text.to_string(), id)),
            None => usize::try_from(sp_id)
                .ok()
                .and_then(|i| proto.pieces.get(i).map(|p| (p.piece.clone(), i as u32))),
        }
    };
    let add_bos = cfg.add_bos_token.unwrap_or(true);
    let add_eos = cfg.add_eos_token.unwrap_or(false);
    ConvertOptions {
        // Absent `legacy` means the original slow-tokenizer behaviour
        // (transformers 4 defaulted to it; LLaVA was trained with it).
        legacy: cfg.legacy.unwrap_or(true),
        add_prefix_space: cfg
            .add_prefix_space
            .unwrap_or(proto.normalizer_spec.add_dummy_prefix),
        bos: add_bos
            .then(|| special(side.bos_token(), proto.trainer_spec.bos_id))
            .flatten(),
        eos: add_eos
            .then(|| special(side.eos_token(), proto.trainer_spec.eos_id))
            .flatten(),
    }
}

/// Registers `added_tokens_decoder` / `added_tokens.json` entries that the
/// tokenizer does not have yet, checking each lands on its declared id.
fn register_declared_tokens(
    tok: &mut tokenizers::Tokenizer,
    side: &SideFiles,
) -> Result<(), TokenizerError> {
    for (id, spec) in side.declared_added_tokens() {
        match tok.token_to_id(&spec.content) {
            Some(existing) if existing == id => {
                // Known to the model; make sure it is matched as an added token
                // (the converter only registers control/user-defined pieces).
                if !tok.get_added_tokens_decoder().contains_key(&id) {
                    tok.add_tokens(&[added_token(&spec)]);
                }
            }
            Some(existing) => {
                return Err(TokenizerError::AddedTokenId {
                    content: spec.content,
                    declared: id,
                    assigned: existing,
                })
            }
            None => {
                tok.add_tokens(&[added_token(&spec)]);
                let assigned = tok.token_to_id(&spec.content).unwrap_or(u32::MAX);
                if assigned != id {
                    return Err(TokenizerError::AddedTokenId {
                        content: spec.content,
                        declared: id,
                        assigned,
                    });
                }
            }
        }
    }
    Ok(())
}

fn added_token(spec: &crate::config::AddedTokenSpec) -> AddedToken {
    AddedToken::from(spec.content.clone(), spec.special)
        .lstrip(spec.lstrip)
        .rstrip(spec.rstrip)
        .single_word(spec.single_word)
        .normalized(spec.normalized.unwrap_or(!spec.special))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Converts the fixture's tokenizer.model with `config_dir`'s
    /// tokenizer_config.json and compares the result, serialized, with the
    /// tokenizer.json transformers' LLaMA converter wrote for the same
    /// settings: same vocabulary, same merges in the same order, same
    /// normalizer / pre-tokenizer, decoder, post-processor and added tokens.
    fn assert_conversion_matches(config_dir: &Path) {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let dir = tempfile::tempdir().unwrap();
        let model = fixtures.join("tokenizer/tokenizer.model");
        std::fs::copy(model, dir.path().join("tokenizer.model")).unwrap();
        let config = config_dir.join("tokenizer_config.json");
        std::fs::copy(config, dir.path().join("tokenizer_config.json")).unwrap();
        let tok = Tokenizer::from_dir(dir.path()).unwrap();
        let ours: serde_json::Value =
            serde_json::from_str(&tok.inner.tok.to_string(false).unwrap()).unwrap();
        let text = std::fs::read_to_string(config_dir.join("tokenizer.json")).unwrap();
        let theirs: serde_json::Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<&String> = theirs.as_object().unwrap().keys().collect();
        assert_eq!(ours.as_object().unwrap().keys().collect::<Vec<_>>(), keys);
        for key in keys {
            assert_eq!(ours[key], theirs[key], "{key} ({})", config_dir.display());
        }
    }

    /// `legacy: true` (tests/parity/make_tokenizer.py).
    #[test]
    fn legacy_conversion_serializes_like_transformers() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        assert_conversion_matches(&fixtures.join("tokenizer"));
    }

    /// `legacy: false` (tests/parity/tokenizer_prompts.py).
    #[test]
    fn non_legacy_conversion_serializes_like_transformers() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        assert_conversion_matches(&fixtures.join("tokenizer-prompts/nonlegacy"));
    }

    #[test]
    fn byte_tokens_are_recognised_exactly() {
        assert!(is_byte_token("<0x0A>"));
        assert!(is_byte_token("<0xff>"));
        assert!(!is_byte_token("<0x0G>"));
        assert!(!is_byte_token("<0x0A>>"));
        assert!(!is_byte_token("▁<0x"));
    }
}
