//! `ChatRequest` → `ValidRequest`: chat template, tokenization, image decoding with limits, AnyRes.
//! Runs on tokio's blocking pool, so everything here is plain CPU work without the model.

use std::sync::Arc;

use grain_engine::{
    ChatRequest, EngineError, ImageInput, Part, Preprocessor, RawPrompt, Role, ValidRequest,
};
use grain_model::image::{decode_rgb, DecodeLimits};
use grain_model::llava::preprocess_image;
use grain_model::LlavaConfig;
use grain_tokenizer::{
    ChatMessage, ChatTemplate, ContentPart, Tokenizer, IMAGE_PLACEHOLDER, IMAGE_TOKEN_SENTINEL,
};
use sha2::{Digest, Sha256};

/// Limits on what a request may carry.
#[derive(Debug, Clone, Copy)]
pub struct InputLimits {
    pub max_images: usize,
    pub decode: DecodeLimits,
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_images: 8,
            decode: DecodeLimits::default(),
        }
    }
}

/// An image part as it arrived, before decoding.
struct RawImage {
    index: usize,
    data: Vec<u8>,
    detail: grain_engine::Detail,
}

pub struct LlavaPreprocessor {
    pub(crate) config: LlavaConfig,
    pub(crate) tokenizer: Tokenizer,
    pub(crate) template: ChatTemplate,
    pub(crate) limits: InputLimits,
}

impl LlavaPreprocessor {
    /// The id that marks an image in `prompt_ids`.
    pub fn image_token_id(&self) -> u32 {
        self.config.image_token_id.unwrap_or(IMAGE_TOKEN_SENTINEL)
    }

    fn render(&self, req: &ChatRequest) -> Result<(String, Vec<RawImage>), EngineError> {
        if let Some(RawPrompt::Text(text)) = &req.raw_prompt {
            // A text completion: the prompt as sent, without the chat template or images.
            if text.contains(IMAGE_PLACEHOLDER) {
                return Err(EngineError::invalid(
                    format!("a text prompt may not contain the image placeholder `{IMAGE_PLACEHOLDER}`: images need /v1/chat/completions"),
                    Some("prompt"),
                ));
            }
            return Ok((text.clone(), Vec::new()));
        }
        let mut messages = Vec::with_capacity(req.messages.len());
        let mut images = Vec::new();
        for (mi, m) in req.messages.iter().enumerate() {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            let mut content = Vec::with_capacity(m.parts.len());
            for part in &m.parts {
                match part {
                    Part::Text(t) => {
                        // A literal placeholder in user text would be read as an image.
                        if t.contains(IMAGE_PLACEHOLDER) {
                            return Err(EngineError::invalid(
                                format!("message text may not contain the image placeholder `{IMAGE_PLACEHOLDER}`"),
                                Some(&format!("messages[{mi}].content")),
                            ));
                        }
                        content.push(ContentPart::Text(t.clone()));
                    }
                    Part::Image { data, detail } => {
                        if m.role != Role::User {
                            return Err(EngineError::invalid(
                                "images are only accepted in user messages",
                                Some(&format!("messages[{mi}].content")),
                            ));
                        }
                        images.push(RawImage {
                            index: images.len(),
                            data: data.clone(),
                            detail: *detail,
                        });
                        content.push(ContentPart::Image);
                    }
                }
            }
            messages.push(ChatMessage {
                role: role.into(),
                content,
            });
        }
        if images.len() > self.limits.max_images {
            return Err(EngineError::invalid(
                format!(
                    "{} images in one request; the limit is {}",
                    images.len(),
                    self.limits.max_images
                ),
                Some("messages"),
            ));
        }
        let add_generation_prompt = req
            .messages
            .last()
            .is_none_or(|m| m.role != Role::Assistant);
        let text = self
            .template
            .render(&messages, add_generation_prompt)
            .map_err(|e| EngineError::invalid(format!("chat template: {e}"), Some("messages")))?;
        Ok((text, images))
    }
}

impl Preprocessor for LlavaPreprocessor {
    fn detokenize(&self, ids: &[u32]) -> Result<String, EngineError> {
        let vocab = self.config.text.vocab_size;
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(EngineError::invalid(
                format!("token id {bad} is not in the model's vocabulary (0 .. {vocab})"),
                Some("tokens"),
            ));
        }
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| EngineError::Internal(format!("tokenizer: {e}")))
    }

    fn preprocess(&self, req: ChatRequest) -> Result<ValidRequest, EngineError> {
        let vocab = self.config.text.vocab_size;
        if let Some((token, _)) = req
            .params
            .logit_bias
            .iter()
            .find(|(t, _)| *t as usize >= vocab)
        {
            return Err(EngineError::invalid(
                format!(
                    "logit_bias: token id {token} is not in the model's vocabulary (0 .. {vocab})"
                ),
                Some("logit_bias"),
            ));
        }
        let image_id = self.image_token_id();
        if let Some(RawPrompt::Ids(ids)) = &req.raw_prompt {
            // Used as they are: no BOS added, no images.
            if let Some(bad) = ids
                .iter()
                .find(|&&id| id as usize >= vocab || id == image_id)
            {
                return Err(EngineError::invalid(
                    match *bad == image_id {
                        true => format!(
                            "token id {bad} is the image token; images need /v1/chat/completions"
                        ),
                        false => format!(
                            "token id {bad} is not in the model's vocabulary (0 .. {vocab})"
                        ),
                    },
                    Some("prompt"),
                ));
            }
            return Ok(ValidRequest {
                request_id: req.request_id,
                text_tokens: ids.len(),
                prompt_ids: ids.clone(),
                images: Vec::new(),
                params: req.params,
                granularity: req.granularity,
            });
        }
        let (text, raw_images) = self.render(&req)?;
        let prompt_ids = self
            .tokenizer
            .encode_prompt(&text, IMAGE_PLACEHOLDER)
            .map_err(|e| EngineError::Internal(format!("tokenizer: {e}")))?;
        let placeholders = prompt_ids.iter().filter(|&&i| i == image_id).count();
        if placeholders != raw_images.len() {
            return Err(EngineError::invalid(
                format!(
                    "the chat template placed {placeholders} image placeholders for {} images",
                    raw_images.len()
                ),
                Some("messages"),
            ));
        }
        let mut images = Vec::with_capacity(raw_images.len());
        for RawImage {
            index,
            data,
            detail,
        } in raw_images
        {
            let img = decode_rgb(&data, self.limits.decode, self.config.alpha).map_err(|e| {
                EngineError::InvalidImage {
                    index,
                    message: e.to_string(),
                }
            })?;
            let (n_crops, px) =
                preprocess_image(&img, &self.config).map_err(|e| EngineError::InvalidImage {
                    index,
                    message: e.to_string(),
                })?;
            images.push(ImageInput {
                width: img.width as u32,
                height: img.height as u32,
                hash: Sha256::digest(&data).into(),
                pixel_values: Arc::new(px),
                n_crops,
                detail,
            });
        }
        Ok(ValidRequest {
            request_id: req.request_id,
            text_tokens: prompt_ids.len() - placeholders,
            prompt_ids,
            images,
            params: req.params,
            granularity: req.granularity,
        })
    }
}
