//! Chat templates and prompt encoding against `tests/fixtures/tokenizer-prompts`
//! (rendered by transformers' Jinja renderer; LLaVA's `tokenizer_image_token`
//! with the slow SentencePiece tokenizer), plus the built-in vicuna_v1 format.

use grain_tokenizer::{
    ChatMessage, ChatTemplate, ContentPart, TemplateError, Tokenizer, IMAGE_PLACEHOLDER,
    IMAGE_TOKEN_SENTINEL,
};
use serde_json::Value;

use crate::common::{both_tokenizers, fixtures, read_json};

fn fixture() -> Value {
    read_json(&fixtures().join("tokenizer-prompts/cases.json"))
}

/// Messages as transformers was given them: string content or typed parts.
pub fn messages(v: &Value) -> Vec<ChatMessage> {
    v.as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            let content = match &m["content"] {
                Value::String(s) => vec![ContentPart::Text(s.clone())],
                Value::Array(parts) => parts
                    .iter()
                    .map(|p| match p["type"].as_str() {
                        Some("text") => ContentPart::Text(p["text"].as_str().unwrap().into()),
                        Some("image") => ContentPart::Image,
                        other => panic!("unexpected part type {other:?}"),
                    })
                    .collect(),
                other => panic!("unexpected content {other}"),
            };
            ChatMessage {
                role: m["role"].as_str().unwrap().into(),
                content,
            }
        })
        .collect()
}

#[test]
fn jinja_templates_render_like_transformers() {
    let fx = fixture();
    let bos = fx["bos_token"].as_str();
    let eos = fx["eos_token"].as_str();
    let mut checked = 0;
    for case in fx["template_cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let source = fx["templates"][name]["source"].as_str().unwrap();
        let template = ChatTemplate::from_source(source, bos, eos).unwrap();
        let msgs = messages(&case["messages"]);
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let label = format!("{name}/{}/{add}", case["conversation"]);
        match (template.render(&msgs, add), case.get("rendered")) {
            (Ok(got), Some(want)) => assert_eq!(got, want.as_str().unwrap(), "{label}"),
            (Err(TemplateError::Raised(msg)), None) => {
                assert_eq!(msg, case["message"].as_str().unwrap(), "{label}")
            }
            (got, _) => panic!("{label}: got {got:?}, want {case}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 36);
}

#[test]
fn vicuna_v1_matches_llava_prompts_and_ids() {
    let fx = fixture();
    let (native, json) = both_tokenizers();
    for case in fx["vicuna_cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let prompt = ChatTemplate::vicuna_v1()
            .render(&messages(&case["messages"]), true)
            .unwrap();
        assert_eq!(prompt, case["prompt"].as_str().unwrap(), "{name}");
        // LLaVA marks images with -200; Grain with the sentinel.
        let want: Vec<u32> = case["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| match x.as_i64().unwrap() {
                -200 => IMAGE_TOKEN_SENTINEL,
                id => u32::try_from(id).unwrap(),
            })
            .collect();
        for tok in [&native, &json] {
            assert_eq!(
                tok.encode_prompt(&prompt, IMAGE_PLACEHOLDER).unwrap(),
                want,
                "{name}"
            );
        }
    }
}

#[test]
fn vicuna_v1_two_turns_by_hand() {
    // conversation.py, conv_vicuna_v1 (SeparatorStyle.TWO, sep=" ", sep2="</s>"):
    //   ret = system + sep
    //   turn 0 USER:      "USER" + ": " + "<image>\nWhat is it?" + sep   (seps[0 % 2] = " ")
    //   turn 1 ASSISTANT: "ASSISTANT" + ": " + "A cat." + sep2           (seps[1 % 2] = "</s>")
    //   turn 2 USER:      "USER" + ": " + "Its color?" + sep
    //   turn 3 ASSISTANT with no message yet: "ASSISTANT" + ":"
    let want = "A chat between a curious user and an artificial intelligence assistant. \
The assistant gives helpful, detailed, and polite answers to the user's questions. \
USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Its color? ASSISTANT:";
    let msgs = [
        ChatMessage {
            role: "user".into(),
            content: vec![ContentPart::Image, ContentPart::Text("What is it?".into())],
        },
        ChatMessage::text("assistant", "A cat."),
        ChatMessage::text("user", "Its color?"),
    ];
    assert_eq!(ChatTemplate::vicuna_v1().render(&msgs, true).unwrap(), want);
    // Without the generation prompt the text ends after the last user turn's sep.
    let got = ChatTemplate::vicuna_v1().render(&msgs, false).unwrap();
    assert_eq!(got, want.strip_suffix("ASSISTANT:").unwrap());
}

#[test]
fn vicuna_v1_rejects_unknown_roles() {
    let msgs = [ChatMessage::text("tool", "{}")];
    let err = ChatTemplate::vicuna_v1().render(&msgs, true).unwrap_err();
    assert!(matches!(err, TemplateError::UnsupportedRole(r) if r == "tool"));
}

#[test]
fn template_errors_are_typed() {
    let err = ChatTemplate::from_source("{% for x in %}", None, None).unwrap_err();
    assert!(matches!(err, TemplateError::Syntax(_)), "{err}");
    let t = ChatTemplate::from_source("{{ messages[0]['content'] | no_such_filter }}", None, None)
        .unwrap();
    let err = t
        .render(&[ChatMessage::text("user", "hi")], false)
        .unwrap_err();
    assert!(matches!(err, TemplateError::Render(_)), "{err}");
}

#[test]
fn templates_are_found_where_transformers_looks() {
    let (tok, _) = both_tokenizers();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let msgs = [ChatMessage::text("user", "hi")];
    let render = |p: &std::path::Path| {
        ChatTemplate::from_dir(p, &tok)
            .unwrap()
            .map(|t| t.render(&msgs, false).unwrap())
    };
    assert_eq!(render(p), None);
    std::fs::write(
        p.join("tokenizer_config.json"),
        r#"{"chat_template": [{"name": "default", "template": "config {{ bos_token }}"}]}"#,
    )
    .unwrap();
    assert_eq!(render(p).as_deref(), Some("config <s>"));
    std::fs::write(p.join("chat_template.json"), r#"{"chat_template": "json"}"#).unwrap();
    assert_eq!(render(p).as_deref(), Some("json"));
    std::fs::write(p.join("chat_template.jinja"), "jinja {{ eos_token }}").unwrap();
    assert_eq!(render(p).as_deref(), Some("jinja </s>"));
}

#[test]
fn prompt_keeps_a_single_bos_when_the_template_writes_it() {
    let (tok, _): (Tokenizer, Tokenizer) = both_tokenizers();
    let with_bos = tok.encode_prompt("<s>USER: hi", IMAGE_PLACEHOLDER).unwrap();
    let without = tok.encode_prompt("USER: hi", IMAGE_PLACEHOLDER).unwrap();
    assert_eq!(with_bos[0], 1);
    assert_ne!(with_bos[1], 1);
    assert_eq!(without[0], 1);
    assert_eq!(with_bos.iter().filter(|&&id| id == 1).count(), 1);
}
