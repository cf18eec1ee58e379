//! The tokenizer fixture (a LLaMA-style SentencePiece BPE model) against the
//! ids recorded from sentencepiece and from transformers' converted
//! tokenizer.json (`tests/parity/make_tokenizer.py`).

use grain_tokenizer::{Tokenizer, TokenizerSource};
use serde_json::Value;

use crate::common::{both_tokenizers, fixtures, ids, read_json};

fn cases() -> Vec<Value> {
    let v = read_json(&fixtures().join("tokenizer/tokenizer_cases.json"));
    v["cases"].as_array().expect("cases").clone()
}

fn check_encode(tok: &Tokenizer, label: &str) {
    let mut failures = Vec::new();
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text, false).unwrap();
        if got != ids(&case["fast_ids"]) {
            failures.push(format!(
                "{name}: got {got:?}, transformers {}",
                case["fast_ids"]
            ));
        }
        let got = tok.encode(text, true).unwrap();
        if got != ids(&case["fast_ids_with_special"]) {
            failures.push(format!("{name} (with BOS): got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{label}:\n{}", failures.join("\n"));
}

#[test]
fn tokenizer_model_conversion_matches_transformers_ids() {
    let (native, _) = both_tokenizers();
    assert_eq!(native.source(), TokenizerSource::SentencePiece);
    check_encode(&native, "tokenizer.model");
}

#[test]
fn tokenizer_json_matches_transformers_ids() {
    let (_, json) = both_tokenizers();
    assert_eq!(json.source(), TokenizerSource::TokenizerJson);
    check_encode(&json, "tokenizer.json");
}

/// sentencepiece itself reads special-token text ("</s>", "<s>", "<unk>")
/// as plain characters, transformers (and Grain) as the special tokens; on
/// every other case the three agree. Pin that the disagreements are exactly
/// those, so a change in either direction is noticed.
#[test]
fn sentencepiece_differs_only_on_special_token_text() {
    let (native, _) = both_tokenizers();
    let mut differing = Vec::new();
    for case in cases() {
        let text = case["text"].as_str().unwrap();
        if native.encode(text, false).unwrap() != ids(&case["sp_ids"]) {
            differing.push(case["name"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(differing, ["eos_inside", "bos_inside", "unk_text"]);
}

#[test]
fn decode_matches_transformers_and_round_trips() {
    let (native, json) = both_tokenizers();
    for tok in [&native, &json] {
        for case in cases() {
            let name = case["name"].as_str().unwrap();
            let text = case["text"].as_str().unwrap();
            let fast_ids = ids(&case["fast_ids"]);
            let decoded = tok.decode(&fast_ids, false).unwrap();
            assert_eq!(decoded, case["decoded"].as_str().unwrap(), "{name}");
            // Where the reference decode gives the text back, so must ours
            // (special-token text is the exception: "</s>world" comes back
            // with the dummy-prefix space of the chunk after it).
            if case["decoded"].as_str() == Some(text) {
                let ids = tok.encode(text, true).unwrap();
                assert_eq!(tok.decode(&ids, true).unwrap(), text, "{name}");
            }
        }
    }
}

#[test]
fn special_ids_follow_the_model() {
    let meta = read_json(&fixtures().join("tokenizer/tokenizer_cases.json"));
    let (native, json) = both_tokenizers();
    for tok in [&native, &json] {
        assert_eq!(
            tok.vocab_size() as u64,
            meta["vocab_size"].as_u64().unwrap()
        );
        assert_eq!(tok.bos_id().map(u64::from), meta["bos_id"].as_u64());
        assert_eq!(tok.eos_ids(), [meta["eos_id"].as_u64().unwrap() as u32]);
        assert_eq!(tok.unk_id().map(u64::from), meta["unk_id"].as_u64());
        // sentencepiece pad_id is -1 (none) and tokenizer_config has no pad.
        assert_eq!(meta["pad_id"].as_i64(), Some(-1));
        assert_eq!(tok.pad_id(), None);
        assert_eq!(tok.bos_token(), Some("<s>"));
        assert_eq!(tok.eos_token(), Some("</s>"));
        assert_eq!(tok.image_token(), None);
        assert_eq!(tok.id_to_token(3).as_deref(), Some("<0x00>"));
        assert_eq!(tok.token_to_id("</s>"), Some(2));
    }
}

#[test]
fn bad_directories_are_errors() {
    let empty = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_dir(empty.path()).unwrap_err();
    assert!(
        matches!(err, grain_tokenizer::TokenizerError::NotFound(_)),
        "{err}"
    );

    std::fs::write(empty.path().join("tokenizer.model"), [0x0a, 0x05, 0x0a]).unwrap();
    let err = Tokenizer::from_dir(empty.path()).unwrap_err();
    assert!(
        matches!(err, grain_tokenizer::TokenizerError::Proto { .. }),
        "{err}"
    );

    std::fs::write(empty.path().join("tokenizer_config.json"), "{not json").unwrap();
    let err = Tokenizer::from_dir(empty.path()).unwrap_err();
    assert!(
        matches!(err, grain_tokenizer::TokenizerError::Json { .. }),
        "{err}"
    );
}

/// `legacy: false` tokenizers prefix "▁" only at the start of the text, not
/// after special tokens (`tests/fixtures/tokenizer-prompts/nonlegacy`).
#[test]
fn non_legacy_tokenizer_matches_transformers_ids() {
    let reference = fixtures().join("tokenizer-prompts/nonlegacy");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("tokenizer/tokenizer.model"),
        dir.path().join("tokenizer.model"),
    )
    .unwrap();
    std::fs::copy(
        reference.join("tokenizer_config.json"),
        dir.path().join("tokenizer_config.json"),
    )
    .unwrap();
    let native = Tokenizer::from_dir(dir.path()).unwrap();
    let json = Tokenizer::from_dir(&reference).unwrap();
    let cases = read_json(&reference.join("cases.json"));
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        for tok in [&native, &json] {
            assert_eq!(
                tok.encode(text, false).unwrap(),
                ids(&case["ids"]),
                "{text:?}"
            );
        }
    }
}
