//! `/v1/completions`' raw prompts through the real tiny model: tokenized as sent (or given as token
//! ids), without the chat template, and refused where they would smuggle in an image placeholder
//! or an id past the vocabulary.

use grain_backend::BackendConfig;
use grain_engine::{
    ChatRequest, EngineConfig, EngineError, EngineHandle, Event, GenerationParams,
    GranularityChoice, Message, Part, RawPrompt, Role, Usage,
};
use grain_model::tiny::{write_tiny, TinyLayout, TinySize, SYSTEM_PROMPT};

fn params() -> GenerationParams {
    GenerationParams {
        max_tokens: Some(12),
        temperature: 0.0,
        ..GenerationParams::default()
    }
}

fn chat(text: &str) -> ChatRequest {
    ChatRequest {
        request_id: "chat".into(),
        raw_prompt: None,
        messages: vec![Message {
            role: Role::User,
            parts: vec![Part::Text(text.into())],
        }],
        params: params(),
        granularity: GranularityChoice::Auto,
    }
}

fn raw(prompt: &str) -> ChatRequest {
    ChatRequest {
        request_id: "raw".into(),
        raw_prompt: Some(prompt.into()),
        messages: Vec::new(),
        params: params(),
        granularity: GranularityChoice::Auto,
    }
}

async fn run(engine: &EngineHandle, req: ChatRequest) -> Result<(Vec<u32>, Usage), EngineError> {
    let mut stream = engine.generate(req).await?;
    let mut tokens = Vec::new();
    loop {
        match stream.next().await.expect("stream ends with Done") {
            Event::Delta { token_ids, .. } => tokens.extend(token_ids),
            Event::Finished { .. } | Event::PromptLogprobs { .. } => {}
            Event::Done { usage } => return Ok((tokens, usage)),
            Event::Error(e) => return Err(e),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_prompt_skips_the_template_and_equals_the_rendered_chat() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("avg");
    write_tiny(&dir, TinyLayout::Avg, TinySize::TINY, 3).unwrap();
    let engine = grain_backend::start(
        BackendConfig::new(dir.clone()),
        EngineConfig::default(),
        None,
    )
    .unwrap();
    engine.wait_ready().await.unwrap();

    // The tiny checkpoint's template: the system prompt, " USER: " and the text, " ASSISTANT:".
    let question = "what is in the picture";
    let (chat_tokens, chat_usage) = run(&engine, chat(question)).await.unwrap();
    let rendered = format!("{SYSTEM_PROMPT} USER: {question} ASSISTANT:");
    let (raw_tokens, raw_usage) = run(&engine, raw(&rendered)).await.unwrap();
    assert_eq!(raw_usage.prompt_tokens, chat_usage.prompt_tokens);
    assert_eq!(
        raw_tokens, chat_tokens,
        "same prompt ids, same greedy tokens"
    );

    // The bare question is a different (shorter) prompt: no template was applied to it.
    let (_, bare) = run(&engine, raw(question)).await.unwrap();
    assert!(bare.prompt_tokens < chat_usage.prompt_tokens);
    assert_eq!(bare.visual_tokens, 0);

    let err = run(&engine, raw("look: <image> what?")).await.unwrap_err();
    assert!(
        err.to_string().contains("placeholder"),
        "an image placeholder in a text prompt is refused: {err}"
    );
    // The engine keeps serving after the refusal.
    assert!(run(&engine, raw(question)).await.is_ok());

    // The same prompt as token ids (the checkpoint's tokenizer, BOS included): used as they are,
    // so the same prompt length and the same greedy tokens.
    let tokenizer = grain_tokenizer::Tokenizer::from_dir(&dir).unwrap();
    let ids = tokenizer.encode_prompt(&rendered, "<image>").unwrap();
    let by_ids = |ids: Vec<u32>| ChatRequest {
        raw_prompt: Some(RawPrompt::Ids(ids)),
        ..raw("")
    };
    let (id_tokens, id_usage) = run(&engine, by_ids(ids.clone())).await.unwrap();
    assert_eq!(id_usage.prompt_tokens as usize, ids.len());
    assert_eq!(id_usage.prompt_tokens, chat_usage.prompt_tokens);
    assert_eq!(
        id_tokens, chat_tokens,
        "same prompt ids, same greedy tokens"
    );
    // Without the leading BOS it is another prompt: nothing is added to token ids.
    let (_, no_bos) = run(&engine, by_ids(ids[1..].to_vec())).await.unwrap();
    assert_eq!(no_bos.prompt_tokens as usize, ids.len() - 1);
    // An id past the vocabulary is refused before it reaches the model.
    let vocab = grain_model::LlavaConfig::from_dir(&dir)
        .unwrap()
        .text
        .vocab_size as u32;
    let err = run(&engine, by_ids(vec![1, vocab])).await.unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
    assert!(run(&engine, by_ids(vec![1, vocab - 1])).await.is_ok());
}

/// The prefix cache through the real model: a second prompt that shares the first's leading
/// blocks computes only its own tail, and generates exactly what an engine without the cache does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_prefix_gives_the_same_tokens_as_computing_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("avg");
    write_tiny(&dir, TinyLayout::Avg, TinySize::TINY, 5).unwrap();
    let start = |prefix_caching: bool| {
        grain_backend::start(
            BackendConfig::new(dir.clone()),
            EngineConfig {
                prefix_caching,
                ..EngineConfig::default()
            },
            None,
        )
        .unwrap()
    };
    let cached = start(true);
    let plain = start(false);
    cached.wait_ready().await.unwrap();
    plain.wait_ready().await.unwrap();

    let system = "You answer questions about pictures briefly and never make things up. ";
    let prompts: Vec<String> = [
        "what is on the table",
        "count the chairs",
        "what is on the table",
    ]
    .iter()
    .map(|q| format!("{system}{system}Question: {q}. Answer:"))
    .collect();
    let mut hits = Vec::new();
    for p in &prompts {
        let (got, usage) = run(&cached, raw(p)).await.unwrap();
        let (want, reference) = run(&plain, raw(p)).await.unwrap();
        assert_eq!(got, want, "prompt {p:?}");
        assert_eq!(usage.prompt_tokens, reference.prompt_tokens);
        assert_eq!(reference.cached_tokens, 0);
        hits.push(usage.cached_tokens);
    }
    let block = EngineConfig::default().block_size as u32;
    assert_eq!(hits[0], 0, "nothing is cached before the first request");
    assert!(
        hits[1] >= block,
        "the shared system text is cached: {hits:?}"
    );
    assert!(hits[1] % block == 0 && hits[2] % block == 0);
    assert!(
        hits[2] > hits[1],
        "a repeated prompt reuses all but its last block: {hits:?}"
    );
}

/// `logit_bias` through the real model: an id outside the vocabulary is refused before the
/// request starts; -100 on the greedy first token makes the model pick another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logit_bias_is_checked_against_the_vocabulary_and_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("avg");
    write_tiny(&dir, TinyLayout::Avg, TinySize::TINY, 9).unwrap();
    let engine =
        grain_backend::start(BackendConfig::new(dir), EngineConfig::default(), None).unwrap();
    engine.wait_ready().await.unwrap();
    let (plain, _) = run(&engine, raw("the picture shows")).await.unwrap();
    let mut banned = raw("the picture shows");
    banned.params.logit_bias = vec![(plain[0], -100.0)];
    let (other, _) = run(&engine, banned).await.unwrap();
    assert_ne!(other[0], plain[0]);

    let mut outside = raw("the picture shows");
    outside.params.logit_bias = vec![(1 << 30, 1.0)];
    let err = run(&engine, outside).await.unwrap_err();
    assert!(
        matches!(&err, EngineError::InvalidRequest { param: Some(p), .. } if p == "logit_bias"),
        "{err}"
    );
}
