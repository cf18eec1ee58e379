//! Feedback from the frozen LMM: for each example, the mean answer-token cross-entropy at every
//! candidate granularity. Computed once per example (the LMM never changes while the router
//! trains) together with the router's input, which is also fixed.

use candle_core::{DType, Tensor, D};
use grain_model::image::{decode_rgb, DecodeLimits};
use grain_model::{LlavaModel, RouterInput, SeqChunk};
use grain_tokenizer::{
    ChatMessage, ChatTemplate, ContentPart, Tokenizer, IMAGE_PLACEHOLDER, IMAGE_TOKEN_SENTINEL,
};

use crate::data::Example;
use crate::error::{io, Result, TrainError};

/// One example, ready for router training.
pub struct Prepared {
    pub input: RouterInput,
    /// Mean answer cross-entropy per granularity, in the config's order.
    pub feedback: Vec<f32>,
    /// Visual tokens the image costs at each granularity.
    pub visual_tokens: Vec<usize>,
    /// The example's `kind` tag, if any.
    pub kind: Option<String>,
}

const BLOCK: usize = 16;

/// Prompt ids (with the image placeholder) and answer ids (ending with EOS, as the model was
/// trained to stop) of one example.
pub fn token_ids(
    tok: &Tokenizer,
    template: &ChatTemplate,
    ex: &Example,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let messages = [ChatMessage {
        role: "user".into(),
        content: vec![ContentPart::Image, ContentPart::Text(ex.question.clone())],
    }];
    let rendered = template.render(&messages, true)?;
    let prompt = tok.encode_prompt(&rendered, IMAGE_PLACEHOLDER)?;
    let mut answer = tok.encode(ex.answer.trim(), false)?;
    answer.extend(tok.eos_ids().first());
    if answer.is_empty() {
        return Err(TrainError::Setup(format!(
            "answer `{}` tokenizes to nothing",
            ex.answer
        )));
    }
    Ok((prompt, answer))
}

struct Encoded {
    input: RouterInput,
    prompt: Vec<u32>,
    answer: Vec<u32>,
    width: u32,
    height: u32,
}

pub struct FeedbackRunner<'a> {
    model: &'a LlavaModel,
    tok: &'a Tokenizer,
    template: ChatTemplate,
    image_token: u32,
}

impl<'a> FeedbackRunner<'a> {
    pub fn new(model: &'a LlavaModel, tok: &'a Tokenizer, template: ChatTemplate) -> Self {
        let image_token = model
            .config()
            .image_token_id
            .unwrap_or(IMAGE_TOKEN_SENTINEL);
        Self {
            model,
            tok,
            template,
            image_token,
        }
    }

    /// Image features and prompt embeddings of one example, without running the LM.
    fn encode(&self, ex: &Example) -> Result<Encoded> {
        let m = self.model;
        let bytes = std::fs::read(&ex.image).map_err(|e| io(&ex.image, e))?;
        let img = decode_rgb(&bytes, DecodeLimits::default(), m.config().alpha)?;
        let (n_crops, px) = m.preprocess(&img)?;
        let features = m.encode_crops(&m.pixels_tensor(n_crops, &px)?)?;
        let (prompt, answer) = token_ids(self.tok, &self.template, ex)?;
        let text_embeds = m.text_embeddings(&prompt, self.image_token)?;
        Ok(Encoded {
            input: RouterInput {
                features,
                text_embeds,
            },
            prompt,
            answer,
            width: img.width as u32,
            height: img.height as u32,
        })
    }

    /// What the router sees for one example (cheap: no LM forward).
    pub fn router_input(&self, ex: &Example) -> Result<RouterInput> {
        Ok(self.encode(ex)?.input)
    }

    /// Router input, answer losses and visual-token costs at every granularity.
    pub fn prepare(&self, ex: &Example) -> Result<Prepared> {
        let m = self.model;
        let Encoded {
            input,
            prompt,
            answer,
            width: w,
            height: h,
        } = self.encode(ex)?;
        let features = &input.features;
        let ids: Vec<u32> = prompt.iter().chain(&answer).copied().collect();

        let grans = m.config().granularities.clone();
        let visual_tokens = grans
            .iter()
            .map(|&g| m.visual_tokens(w, h, g))
            .collect::<grain_model::Result<Vec<_>>>()?;
        // One cache sized for the longest variant, reused: every forward starts at position 0.
        let longest = ids.len() - 1 + visual_tokens.iter().max().copied().unwrap_or(0);
        let blocks = longest.div_ceil(BLOCK);
        let cache = m.new_kv_cache(blocks, BLOCK)?;
        let table: Vec<u32> = (0..blocks as u32).collect();
        let answer_t = Tensor::from_slice(&answer, answer.len(), m.device())?;

        let mut feedback = Vec::with_capacity(grans.len());
        for &g in &grans {
            let image = m.image_tokens(features, g, w, h)?;
            let embeds = m.prompt_embeddings(&ids, self.image_token, &[image])?;
            let t = embeds.dim(0)?;
            let chunk = SeqChunk {
                start: 0,
                len: t,
                block_table: &table,
                want_logits: false,
            };
            let logits = m.forward_all_logits(&embeds, &[chunk], &cache)?;
            // Row r predicts token r + 1: the answer's tokens are predicted by the rows just
            // before them.
            let a = answer.len();
            let pred = logits.narrow(0, t - a - 1, a)?;
            let logp = candle_nn::ops::log_softmax(&pred, D::Minus1)?;
            let picked = logp.gather(&answer_t.unsqueeze(1)?, 1)?;
            let ce = (picked.mean_all()? * -1.0)?
                .to_dtype(DType::F32)?
                .to_scalar::<f32>()?;
            if !ce.is_finite() {
                return Err(TrainError::Setup(format!(
                    "{}: the answer loss at granularity {g} is not finite",
                    ex.image.display()
                )));
            }
            feedback.push(ce);
        }
        Ok(Prepared {
            input,
            feedback,
            visual_tokens,
            kind: ex.kind.clone(),
        })
    }
}
