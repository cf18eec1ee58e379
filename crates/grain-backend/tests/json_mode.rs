//! `response_format: json_object` on the real tiny model (random weights: left alone it writes no
//! JSON at all). serde_json, an independent parser, judges every choice: a choice that ended with
//! `stop` is one JSON object, one cut by `max_tokens` is the beginning of one.

use grain_backend::BackendConfig;
use grain_engine::{
    ChatRequest, EngineConfig, Event, FinishReason, GenerationParams, GranularityChoice, Message,
    Part, ResponseFormat, Role,
};
use grain_model::tiny::{write_tiny, TinyLayout, TinySize};

fn request(seed: u64, temperature: f32, n: u32) -> ChatRequest {
    ChatRequest {
        request_id: format!("json-{seed}"),
        raw_prompt: None,
        messages: vec![Message {
            role: Role::User,
            parts: vec![Part::Text("Describe a cat as a JSON object.".into())],
        }],
        params: GenerationParams {
            max_tokens: Some(40),
            temperature,
            seed: Some(seed),
            n,
            response_format: ResponseFormat::JsonObject,
            ..GenerationParams::default()
        },
        granularity: GranularityChoice::Auto,
    }
}

/// serde_json's verdict on a choice's text: a whole object, or a prefix of one (the parser ran
/// out of input, and nothing it read was wrong).
fn judge(text: &str) -> (bool, bool) {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => (v.is_object(), false),
        Err(e) => (false, e.is_eof()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_choice_is_a_json_object_or_the_start_of_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("avg");
    write_tiny(&dir, TinyLayout::Avg, TinySize::TINY, 5).unwrap();
    let engine =
        grain_backend::start(BackendConfig::new(dir), EngineConfig::default(), None).unwrap();
    engine.wait_ready().await.unwrap();

    let (mut whole, mut cut) = (0, 0);
    for (seed, temperature, n) in [(1, 1.0, 8), (2, 0.7, 8), (3, 0.0, 1)] {
        let mut stream = engine
            .generate(request(seed, temperature, n))
            .await
            .unwrap();
        let mut texts = vec![String::new(); n as usize];
        let mut reasons = vec![None; n as usize];
        loop {
            match stream.next().await.expect("stream ends with Done") {
                Event::Delta { index, text, .. } => texts[index as usize].push_str(&text),
                Event::Finished { index, reason } => reasons[index as usize] = Some(reason),
                Event::PromptLogprobs { .. } => {}
                Event::Done { .. } => break,
                Event::Error(e) => panic!("{e}"),
            }
        }
        for (text, reason) in texts.iter().zip(&reasons) {
            let (object, prefix) = judge(text);
            match reason {
                Some(FinishReason::Stop) => {
                    assert!(object, "stopped on {text:?}, not a JSON object");
                    whole += 1;
                }
                _ => {
                    assert!(prefix, "cut at {text:?}, not the start of a JSON object");
                    cut += 1;
                }
            }
        }
    }
    eprintln!("{whole} whole objects, {cut} cut by max_tokens");
    assert!(whole > 0, "some choice closed its object ({cut} were cut)");
    assert!(engine.wait_idle(std::time::Duration::from_secs(30)).await);
    assert_eq!(engine.stats().kv_blocks_used, 0);
}
