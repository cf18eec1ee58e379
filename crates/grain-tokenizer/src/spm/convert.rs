//! Builds a `tokenizers::Tokenizer` from a SentencePiece BPE model, equal to
//! the `tokenizer.json` that transformers' LLaMA conversion writes for it.
//!
//! The shape (checked against a transformers-converted fixture in the tests):
//! - model: BPE over the pieces (id = piece index), merges derived from the
//!   vocabulary, `byte_fallback`, `fuse_unk`, unk = the trainer's unk piece;
//! - `legacy` tokenizers (original LLaMA/Vicuna behaviour): normalizer
//!   `Prepend("▁")` + `Replace(" ", "▁")`, so every chunk between special
//!   tokens gets its own dummy prefix, as SentencePiece does;
//! - non-legacy: no normalizer, `Metaspace` pre-tokenizer that prepends "▁"
//!   only at the start of the text;
//! - decoder `Replace("▁", " ")`, `ByteFallback`, `Fuse`, `Strip(1 left)`;
//! - post-processor: BOS (and EOS when configured) template;
//! - control pieces are special added tokens, user-defined pieces plain ones.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, NormalizerWrapper};

use super::proto::{ModelProto, ModelType, PieceType};
use crate::error::TokenizerError;

const SPIECE_UNDERLINE: &str = "\u{2581}";

/// How the converted tokenizer treats spaces and special tokens; read from
/// `tokenizer_config.json` by the caller.
#[derive(Debug, Clone)]
pub(crate) struct ConvertOptions {
    /// transformers' `legacy` flag (see module docs).
    pub legacy: bool,
    /// Whether a dummy "▁" prefix is added (SentencePiece `add_dummy_prefix`).
    pub add_prefix_space: bool,
    /// BOS / EOS (content, id) to put in the post-processor template, if added.
    pub bos: Option<(String, u32)>,
    pub eos: Option<(String, u32)>,
}

/// Converts a parsed SentencePiece model. Only BPE models are supported: the
/// Unigram algorithm has no merge table, and LLaMA-family models are BPE.
pub(crate) fn convert(
    proto: &ModelProto,
    opts: &ConvertOptions,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    if proto.trainer_spec.model_type != ModelType::Bpe {
        return Err(TokenizerError::UnsupportedModelType(format!(
            "{:?}",
            proto.trainer_spec.model_type
        )));
    }
    if proto.pieces.is_empty() {
        return Err(TokenizerError::InvalidVocab(
            "the model has no pieces".into(),
        ));
    }

    let mut vocab = Vocab::default();
    for (id, p) in proto.pieces.iter().enumerate() {
        let id = u32::try_from(id)
            .map_err(|_| TokenizerError::InvalidVocab("more than 2^32 pieces".into()))?;
        if vocab.insert(p.piece.clone(), id).is_some() {
            return Err(TokenizerError::InvalidVocab(format!(
                "piece {:?} appears twice",
                p.piece
            )));
        }
    }
    let merges = derive_merges(proto, &vocab);

    let unk = usize::try_from(proto.trainer_spec.unk_id)
        .ok()
        .and_then(|i| proto.pieces.get(i))
        .map(|p| p.piece.clone());
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = &unk {
        builder = builder.unk_token(unk.clone());
    }
    let model = builder.build().map_err(TokenizerError::backend)?;

    let mut tokenizer = tokenizers::Tokenizer::new(model);
    if opts.legacy {
        tokenizer.with_normalizer(Some(legacy_normalizer(opts.add_prefix_space)?));
    } else {
        let scheme = if opts.add_prefix_space {
            PrependScheme::First
        } else {
            PrependScheme::Never
        };
        tokenizer.with_pre_tokenizer(Some(Metaspace::new('\u{2581}', scheme, false)));
    }
    tokenizer.with_decoder(Some(decoder(opts.add_prefix_space)?));
    if let Some(pp) = post_processor(opts)? {
        tokenizer.with_post_processor(Some(pp));
    }

    // Matching on the raw text (normalized=false) is what makes "</s>" inside
    // a prompt an EOS token rather than the characters `<`, `/`, `s`, `>`.
    let mut added = Vec::new();
    for (id, p) in proto.pieces.iter().enumerate() {
        let special = match p.kind {
            PieceType::Control => true,
            PieceType::Unknown => i32::try_from(id).is_ok_and(|i| i == proto.trainer_spec.unk_id),
            PieceType::UserDefined => false,
            _ => continue,
        };
        added.push(AddedToken::from(p.piece.clone(), special).normalized(false));
    }
    tokenizer.add_tokens(&added);
    Ok(tokenizer)
}

fn legacy_normalizer(add_prefix_space: bool) -> Result<NormalizerWrapper, TokenizerError> {
    let mut seq: Vec<NormalizerWrapper> = Vec::new();
    if add_prefix_space {
        seq.push(Prepend::new(SPIECE_UNDERLINE.into()).into());
    }
    seq.push(
        Replace::new(" ", SPIECE_UNDERLINE)
            .map_err(TokenizerError::backend)?
            .into(),
    );
    Ok(NormalizerSequence::new(seq).into())
}

fn decoder(add_prefix_space: bool) -> Result<DecoderWrapper, TokenizerError> {
    let mut seq: Vec<DecoderWrapper> = vec![
        tokenizers::normalizers::Replace::new(SPIECE_UNDERLINE, " ")
            .map_err(TokenizerError::backend)?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_prefix_space {
        // The dummy prefix of the first piece is not part of the text.
        seq.push(Strip::new(' ', 1, 0).into());
    }
    Ok(DecoderSequence::new(seq).into())
}

fn post_processor(opts: &ConvertOptions) -> Result<Option<TemplateProcessing>, TokenizerError> {
    if opts.bos.is_none() && opts.eos.is_none() {
        return Ok(None);
    }
    let piece = |tok: &Option<(String, u32)>, seq: u8| {
        tok.as_ref()
            .map(|(content, _)| format!("{content}:{seq}"))
            .into_iter()
    };
    let single: Vec<String> = piece(&opts.bos, 0)
        .chain(["$A:0".to_string()])
        .chain(piece(&opts.eos, 0))
        .collect();
    let pair: Vec<String> = single
        .iter()
        .cloned()
        .chain(piece(&opts.bos, 1))
        .chain(["$B:1".to_string()])
        .chain(piece(&opts.eos, 1))
        .collect();
    let mut specials: Vec<(String, u32)> = Vec::new();
    for (content, id) in opts.bos.iter().chain(opts.eos.iter()) {
        if !specials.iter().any(|(c, _)| c == content) {
            specials.push((content.clone(), *id));
        }
    }
    TemplateProcessing::builder()
        .try_single(single.join(" "))
        .map_err(TokenizerError::backend)?
        .try_pair(pair.join(" "))
        .map_err(TokenizerError::backend)?
        .special_tokens(specials)
        .build()
        .map(Some)
        .map_err(TokenizerError::backend)
}

/// Derives the BPE merge list from the vocabulary the way transformers'
/// SentencePiece extractor does: every split of every piece into two pieces
/// that are both in the vocabulary is a merge; merges are ranked by the score
/// of the merged piece (higher first), then by the left part's length and then
/// the right part's (longer first), lengths in characters. Ties keep vocabulary
/// order (pieces by id, the splits of one piece by the ids of their parts).
///
/// SentencePiece's own BPE picks, at each step, the adjacent pair whose merged
/// piece has the best score, so ranking by score reproduces it.
fn derive_merges(proto: &ModelProto, vocab: &Vocab) -> Vec<(String, String)> {
    struct Merge {
        left: String,
        right: String,
        score: f32,
        left_chars: usize,
        right_chars: usize,
    }
    let mut merges: Vec<Merge> = Vec::new();
    let mut local: Vec<(u32, u32, Merge)> = Vec::new();
    for (id, piece) in proto.pieces.iter().enumerate() {
        // The first three ids (unk, bos, eos) are given score 0 by the
        // converter whatever the model says.
        let score = if id < 3 { 0.0 } else { piece.score };
        let text = piece.piece.as_str();
        let total_chars = text.chars().count();
        local.clear();
        for (n_left, (split, _)) in text.char_indices().enumerate().skip(1) {
            let (left, right) = text.split_at(split);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                local.push((
                    l,
                    r,
                    Merge {
                        left: left.to_string(),
                        right: right.to_string(),
                        score,
                        left_chars: n_left,
                        right_chars: total_chars - n_left,
                    },
                ));
            }
        }
        local.sort_by_key(|(l, r, _)| (*l, *r));
        merges.extend(local.drain(..).map(|(_, _, m)| m));
    }
    // Stable sort, descending on (score, left_chars, right_chars).
    merges.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
    });
    merges.into_iter().map(|m| (m.left, m.right)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spm::proto::{Piece, TrainerSpec};

    fn proto(pieces: &[(&str, f32, PieceType)]) -> ModelProto {
        ModelProto {
            pieces: pieces
                .iter()
                .map(|(p, s, k)| Piece {
                    piece: p.to_string(),
                    score: *s,
                    kind: *k,
                })
                .collect(),
            trainer_spec: TrainerSpec {
                model_type: ModelType::Bpe,
                ..TrainerSpec::default()
            },
            ..ModelProto::default()
        }
    }

    #[test]
    fn merges_rank_by_score_then_longer_left_part() {
        use PieceType::*;
        let p = proto(&[
            ("<unk>", 0.0, Unknown),
            ("<s>", 0.0, Control),
            ("</s>", 0.0, Control),
            ("ab", -1.0, Normal),
            ("abc", -2.0, Normal),
            ("bc", -3.0, Normal),
            ("a", -4.0, Normal),
            ("b", -5.0, Normal),
            ("c", -6.0, Normal),
        ]);
        let vocab: Vocab = p
            .pieces
            .iter()
            .enumerate()
            .map(|(i, x)| (x.piece.clone(), i as u32))
            .collect();
        let merges = derive_merges(&p, &vocab);
        let got: Vec<(&str, &str)> = merges
            .iter()
            .map(|(l, r)| (l.as_str(), r.as_str()))
            .collect();
        // By hand: "ab" (score -1) = a+b; "abc" (-2) = ab+c (left 2 chars) before a+bc (left 1);
        // "bc" (-3) = b+c.
        assert_eq!(got, [("a", "b"), ("ab", "c"), ("a", "bc"), ("b", "c")]);
    }

    #[test]
    fn unigram_models_are_rejected() {
        let mut p = proto(&[("<unk>", 0.0, PieceType::Unknown)]);
        p.trainer_spec.model_type = ModelType::Unigram;
        let opts = ConvertOptions {
            legacy: true,
            add_prefix_space: true,
            bos: None,
            eos: None,
        };
        let err = convert(&p, &opts).unwrap_err();
        assert!(
            matches!(err, TokenizerError::UnsupportedModelType(_)),
            "{err}"
        );
    }
}
