//! The HF `llava_next` fixture checkpoint (`tests/fixtures/hf-tiny`) against
//! the prompt text and ids transformers' processor produced for it
//! (`tests/fixtures/hf-tiny-ref/cases.json`, image-token run collapsed to one).

use grain_tokenizer::{ChatMessage, ChatTemplate, ContentPart, Tokenizer};

use crate::common::{fixtures, ids, read_json, without_tokenizer_json};

fn question_messages(question: &str) -> Vec<ChatMessage> {
    // What make_hf_reference.py passed to processor.apply_chat_template.
    vec![ChatMessage {
        role: "user".into(),
        content: vec![ContentPart::Image, ContentPart::Text(question.into())],
    }]
}

#[test]
fn hf_tiny_prompt_text_and_ids_match_the_processor() {
    let dir = fixtures().join("hf-tiny");
    let reference = read_json(&fixtures().join("hf-tiny-ref/cases.json"));
    let question = reference["question"].as_str().unwrap();
    let image_id = reference["image_token_id"].as_u64().unwrap() as u32;
    let spm_dir = without_tokenizer_json(&dir);
    let loaded = [
        Tokenizer::from_dir(&dir).unwrap(),
        Tokenizer::from_dir(spm_dir.path()).unwrap(),
    ];
    for tok in &loaded {
        assert_eq!(tok.image_token(), Some(("<image>", image_id)), "{tok:?}");
        let template = ChatTemplate::from_dir(&dir, tok)
            .unwrap()
            .expect("chat_template.jinja");
        let prompt = template.render(&question_messages(question), true).unwrap();
        let (image_text, _) = tok.image_token().unwrap();
        for case in reference["cases"].as_array().unwrap() {
            assert_eq!(prompt, case["prompt"].as_str().unwrap());
            let want = ids(&case["prompt_ids"]);
            assert_eq!(
                tok.encode_prompt(&prompt, image_text).unwrap(),
                want,
                "{tok:?}"
            );
        }
        // The checkpoint's template is vicuna_v1 written in Jinja.
        let builtin = ChatTemplate::vicuna_v1()
            .render(&question_messages(question), true)
            .unwrap();
        assert_eq!(builtin, prompt);
    }
}

#[test]
fn hf_tiny_special_ids_come_from_its_configs() {
    let dir = fixtures().join("hf-tiny");
    let config = read_json(&dir.join("config.json"));
    let text = &config["text_config"];
    let gen = read_json(&dir.join("generation_config.json"));
    let spm_dir = without_tokenizer_json(&dir);
    for tok in [
        Tokenizer::from_dir(&dir).unwrap(),
        Tokenizer::from_dir(spm_dir.path()).unwrap(),
    ] {
        assert_eq!(tok.bos_id().map(u64::from), text["bos_token_id"].as_u64());
        assert_eq!(
            tok.eos_ids(),
            [gen["eos_token_id"].as_u64().unwrap() as u32]
        );
        assert_eq!(tok.pad_id().map(u64::from), gen["pad_token_id"].as_u64());
        assert_eq!(
            tok.token_to_id("<pad>").map(u64::from),
            gen["pad_token_id"].as_u64()
        );
        // 600 pieces plus <image> and <pad>.
        assert_eq!(tok.vocab_size(), 602);
        // Special tokens are dropped when decoding for the client.
        let ids = tok.encode("<image> hi</s>", true).unwrap();
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            tok.decode(&ids[2..ids.len() - 1], true).unwrap()
        );
    }
}
