//! Property-based fuzzing of the chat template + tokenizer path, on the committed fixtures: the
//! LLaMA SentencePiece tokenizer (loaded from `tokenizer.json` and converted from
//! `tokenizer.model`), LLaVA's built-in `vicuna_v1` format and the HF checkpoint's Jinja template.
//!
//! For any conversation whose text does not spell the image placeholder, rendering either succeeds
//! or fails with a `TemplateError` (never a panic), and the encoded prompt carries exactly one
//! image id per image. Streaming detokenization of any id sequence never panics and, once
//! finished, says exactly what a one-shot decode says.
//!
//! CI runs the default budget (256 cases per property). A longer run:
//! `PROPTEST_CASES=5000 cargo test --release -p grain-tokenizer --test fuzz_template`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use grain_tokenizer::{
    ChatMessage, ChatTemplate, ContentPart, Tokenizer, IMAGE_PLACEHOLDER, IMAGE_TOKEN_SENTINEL,
};
use proptest::prelude::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

struct Setup {
    tokenizers: Vec<Tokenizer>,
    templates: Vec<ChatTemplate>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let json = Tokenizer::from_dir(&fixtures().join("tokenizer")).expect("tokenizer.json");
        // The same tokenizer converted from tokenizer.model alone.
        let spm_dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy(
            fixtures().join("tokenizer/tokenizer.model"),
            spm_dir.path().join("tokenizer.model"),
        )
        .expect("copy tokenizer.model");
        let spm = Tokenizer::from_dir(spm_dir.path()).expect("tokenizer.model");
        let hf_dir = fixtures().join("hf-tiny");
        let hf = Tokenizer::from_dir(&hf_dir).expect("hf-tiny tokenizer");
        let jinja = ChatTemplate::from_dir(&hf_dir, &hf)
            .expect("hf-tiny template")
            .expect("hf-tiny ships a template");
        Setup {
            tokenizers: vec![json, spm, hf],
            templates: vec![ChatTemplate::vicuna_v1(), jinja],
        }
    })
}

/// Text with the characters that stress templates and tokenizers: Jinja and JSON syntax,
/// special-token spellings, whitespace runs, multi-byte and astral characters.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z ]{1,8}",
        Just("{{ x }}".to_owned()),
        Just("{% if %}".to_owned()),
        Just("</s>".to_owned()),
        Just("<s>".to_owned()),
        Just("USER:".to_owned()),
        Just("\n\n".to_owned()),
        Just("  \t".to_owned()),
        Just("\"\\'".to_owned()),
        Just("<imag".to_owned()),
        "[\u{80}-\u{7ff}]{1,3}",
        "[\u{4e00}-\u{9fff}]{1,3}",
        "[\u{1f300}-\u{1f6ff}]{1,2}",
    ];
    prop::collection::vec(piece, 0..6)
        .prop_map(|parts| parts.concat())
        .prop_filter("the placeholder is refused before templating", |t| {
            !t.contains(IMAGE_PLACEHOLDER)
        })
}

fn message() -> impl Strategy<Value = ChatMessage> {
    let part = prop_oneof![3 => text().prop_map(ContentPart::Text), 1 => Just(ContentPart::Image)];
    (
        prop_oneof![Just("user"), Just("assistant"), Just("system")],
        prop::collection::vec(part, 1..4),
    )
        .prop_map(|(role, content)| {
            // Only users send images, as the server enforces.
            let content = if role == "user" {
                content
            } else {
                content
                    .into_iter()
                    .filter(|p| matches!(p, ContentPart::Text(_)))
                    .collect()
            };
            ChatMessage {
                role: role.to_owned(),
                content,
            }
        })
}

proptest! {
    #[test]
    fn each_image_gets_exactly_one_placeholder_id(
        messages in prop::collection::vec(message(), 1..5),
        generation_prompt in any::<bool>(),
        template in 0usize..2,
        tokenizer in 0usize..3,
    ) {
        let s = setup();
        let images: usize = messages
            .iter()
            .map(|m| m.content.iter().filter(|p| matches!(p, ContentPart::Image)).count())
            .sum();
        let Ok(rendered) = s.templates[template].render(&messages, generation_prompt) else {
            return Ok(()); // e.g. a role order the template refuses: an error, not a panic
        };
        let tok = &s.tokenizers[tokenizer];
        let ids = tok
            .encode_prompt(&rendered, IMAGE_PLACEHOLDER)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let image_id = tok.token_to_id(IMAGE_PLACEHOLDER).unwrap_or(IMAGE_TOKEN_SENTINEL);
        let placeholders = ids.iter().filter(|&&id| id == image_id).count();
        prop_assert_eq!(placeholders, images, "rendered: {:?}", rendered);
    }

    #[test]
    fn streaming_decode_equals_one_shot_decode(
        ids in prop::collection::vec(0u32..400, 0..40),
        skip_special in any::<bool>(),
        tokenizer in 0usize..3,
    ) {
        let tok = &setup().tokenizers[tokenizer];
        let ids: Vec<u32> = ids.into_iter().map(|i| i % tok.vocab_size() as u32).collect();
        let mut stream = tok.incremental_decoder(skip_special);
        let mut streamed = String::new();
        for &id in &ids {
            if let Some(delta) = stream.step(id).map_err(|e| TestCaseError::fail(e.to_string()))? {
                streamed.push_str(&delta);
            }
        }
        if let Some(rest) = stream.finish().map_err(|e| TestCaseError::fail(e.to_string()))? {
            streamed.push_str(&rest);
        }
        let whole = tok.decode(&ids, skip_special).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(streamed, whole, "ids {:?}", ids);
    }
}
