//! A small LLaMA-style tokenizer for tiny checkpoints: SentencePiece conventions (`▁` for spaces,
//! `<0xNN>` byte fallback, `<s>`/`</s>`/`<unk>` at 1/2/0), single characters for printable ASCII,
//! and BPE merges that build a few hundred common English words, so ordinary prompts take a
//! realistic number of tokens.

use serde_json::{json, Value};

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "image",
    "picture",
    "show",
    "shown",
    "color",
    "colour",
    "red",
    "green",
    "blue",
    "white",
    "black",
    "yellow",
    "shape",
    "text",
    "describe",
    "question",
    "answer",
    "chat",
    "between",
    "curious",
    "user",
    "artificial",
    "intelligence",
    "assistant",
    "gives",
    "helpful",
    "detailed",
    "polite",
    "answers",
    "questions",
    "USER",
    "ASSISTANT",
    "hello",
    "please",
    "thank",
    "big",
    "small",
    "left",
    "right",
    "top",
    "bottom",
    "there",
    "here",
    "count",
    "many",
];

/// The tiny vocabulary: tokens in id order, the merges that build the words, and the image token.
pub struct TinyVocab {
    pub tokens: Vec<String>,
    pub merges: Vec<(String, String)>,
    pub image_id: Option<u32>,
}

impl TinyVocab {
    pub fn build(with_image_token: bool) -> Self {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        tokens.push("\u{2581}".into());
        tokens.extend((33u8..=126).map(|c| (c as char).to_string()));
        let mut merges = Vec::new();
        let mut have: std::collections::HashSet<String> = tokens.iter().cloned().collect();
        for word in WORDS {
            // Left-to-right merges: "▁" + "t" → "▁t", "▁t" + "h" → "▁th", …
            let mut cur = "\u{2581}".to_string();
            for ch in word.chars() {
                let next = format!("{cur}{ch}");
                if have.insert(next.clone()) {
                    merges.push((cur.clone(), ch.to_string()));
                    tokens.push(next.clone());
                }
                cur = next;
            }
        }
        let image_id = if with_image_token {
            tokens.push("<image>".into());
            Some(tokens.len() as u32 - 1)
        } else {
            None
        };
        Self {
            tokens,
            merges,
            image_id,
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

fn added(id: usize, content: &str) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": true})
}

/// `tokenizer.json` in the format of the `tokenizers` library, equivalent to what transformers'
/// LLaMA converter writes for a SentencePiece BPE model with byte fallback.
pub fn tiny_tokenizer_json(v: &TinyVocab) -> Value {
    let vocab: serde_json::Map<String, Value> = v
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let merges: Vec<Value> = v.merges.iter().map(|(a, b)| json!([a, b])).collect();
    let mut added_tokens = vec![added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")];
    if let Some(id) = v.image_id {
        added_tokens.push(added(id as usize, "<image>"));
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}
        ]},
        "pre_tokenizer": null,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    })
}
