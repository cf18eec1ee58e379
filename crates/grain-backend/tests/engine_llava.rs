//! The real candle model behind the real engine: batching invariants, preemption, cancellation and
//! KV reservation by the routed token count (issue 4's must-shows, on the tiny AVG checkpoint).

use std::time::Duration;

use grain_backend::BackendConfig;
use grain_engine::{
    ChatRequest, Detail, EngineConfig, EngineHandle, Event, GenerationParams, GranularityChoice,
    Message, Part, Role, Usage,
};
use grain_model::tiny::{write_tiny, TinyLayout, TinySize};

fn png(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            ((x * 255) / w.max(1)) as u8,
            ((y * 255) / h.max(1)) as u8,
            ((x + y + seed * 37) % 251) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn request(
    id: &str,
    text: &str,
    images: Vec<(Vec<u8>, Detail)>,
    g: GranularityChoice,
    max_tokens: u32,
) -> ChatRequest {
    let mut parts: Vec<Part> = images
        .into_iter()
        .map(|(data, detail)| Part::Image { data, detail })
        .collect();
    parts.push(Part::Text(text.into()));
    ChatRequest {
        request_id: id.into(),
        raw_prompt: None,
        messages: vec![Message {
            role: Role::User,
            parts,
        }],
        params: GenerationParams {
            max_tokens: Some(max_tokens),
            temperature: 0.0,
            ..GenerationParams::default()
        },
        granularity: g,
    }
}

struct Outcome {
    tokens: Vec<u32>,
    usage: Usage,
}

async fn run(engine: &EngineHandle, req: ChatRequest) -> Outcome {
    let mut stream = engine.generate(req).await.expect("admitted");
    let mut tokens = Vec::new();
    loop {
        match stream.next().await.expect("stream ends with Done") {
            Event::Delta { token_ids, .. } => tokens.extend(token_ids),
            Event::Finished { .. } | Event::PromptLogprobs { .. } => {}
            Event::Done { usage } => return Outcome { tokens, usage },
            Event::Error(e) => panic!("request failed: {e}"),
        }
    }
}

async fn start(dir: &std::path::Path, engine: EngineConfig) -> EngineHandle {
    let h = grain_backend::start(BackendConfig::new(dir.to_path_buf()), engine, None).unwrap();
    h.wait_ready().await.unwrap();
    h
}

fn workload() -> Vec<ChatRequest> {
    let g = [
        GranularityChoice::Auto,
        GranularityChoice::Fixed(36),
        GranularityChoice::Fixed(144),
        GranularityChoice::Fixed(576),
        GranularityChoice::Fixed(72),
        GranularityChoice::Fixed(288),
    ];
    let mut reqs = Vec::new();
    for i in 0..10u32 {
        let images = match i % 4 {
            0 => vec![],
            1 => vec![(png(400 + 37 * i, 300 + 11 * i, i), Detail::Auto)],
            2 => vec![
                (png(200, 700, i), Detail::Low),
                (png(640, 480, i + 1), Detail::Auto),
            ],
            _ => vec![(png(1000, 500, i), Detail::High)],
        };
        let text = [
            "What is shown?",
            "Describe the picture in detail please",
            "hello",
            "count the red shapes",
        ][i as usize % 4];
        reqs.push(request(
            &format!("r{i}"),
            text,
            images,
            g[i as usize % g.len()],
            6 + i % 5,
        ));
    }
    reqs
}

/// Greedy outputs of a concurrent mixed batch equal each request run alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_greedy_equals_solo_and_preemption_keeps_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("avg");
    write_tiny(&dir, TinyLayout::Avg, TinySize::TINY, 7).unwrap();
    let roomy = start(
        &dir,
        EngineConfig {
            num_kv_blocks: Some(2048),
            ..EngineConfig::default()
        },
    )
    .await;
    let mut solo = Vec::new();
    for r in workload() {
        solo.push(run(&roomy, r).await);
    }
    let together = futures_join(&roomy, workload()).await;
    for (i, (a, b)) in solo.iter().zip(&together).enumerate() {
        assert_eq!(
            a.tokens, b.tokens,
            "request {i}: concurrent output differs from solo"
        );
        assert_eq!(a.usage.prompt_tokens, b.usage.prompt_tokens);
    }
    blocks_return_to_zero(&roomy).await;

    // A cache far smaller than the workload forces preemption; outputs must not change.
    let mut small_solo = Vec::new();
    for r in small_workload() {
        small_solo.push(run(&roomy, r).await);
    }
    let tight = start(
        &dir,
        EngineConfig {
            num_kv_blocks: Some(20),
            max_num_batched_tokens: 512,
            ..EngineConfig::default()
        },
    )
    .await;
    let squeezed = futures_join(&tight, small_workload()).await;
    for (i, (a, b)) in small_solo.iter().zip(&squeezed).enumerate() {
        assert_eq!(
            a.tokens, b.tokens,
            "request {i}: output changed under preemption"
        );
    }
    assert!(
        tight.stats().preemptions > 0,
        "the tight cache should have forced a preemption"
    );
    blocks_return_to_zero(&tight).await;
}

/// The scheduler publishes its counters after it delivers the last events, so poll briefly.
async fn blocks_return_to_zero(engine: &EngineHandle) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while engine.stats().kv_blocks_used != 0 || engine.stats().running != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "blocks still in use: {:?}",
            engine.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Eight requests that each fit a 20-block cache alone but not together as they decode.
fn small_workload() -> Vec<ChatRequest> {
    (0..8u32)
        .map(|i| {
            let images = if i % 2 == 0 {
                vec![(png(1000, 500, i), Detail::Low)]
            } else {
                vec![]
            };
            request(
                &format!("s{i}"),
                "Describe it",
                images,
                GranularityChoice::Auto,
                48,
            )
        })
        .collect()
}

async fn futures_join(engine: &EngineHandle, reqs: Vec<ChatRequest>) -> Vec<Outcome> {
    let handles: Vec<_> = reqs
        .into_iter()
        .map(|r| {
            let e = engine.clone();
            tokio::spawn(async move { run(&e, r).await })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// KV is reserved for the routed prompt: 36 tokens per crop costs about a tenth of 576.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coarse_granularity_reserves_a_tenth_of_the_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("avg");
    write_tiny(&dir, TinyLayout::Avg, TinySize::TINY, 3).unwrap();
    let engine = start(&dir, EngineConfig::default()).await;
    let block = EngineConfig::default().block_size as u32;
    for (w, h) in [(672, 672), (1000, 500)] {
        let img = png(w, h, 1);
        let coarse = run(
            &engine,
            request(
                "c",
                "What is shown?",
                vec![(img.clone(), Detail::Auto)],
                GranularityChoice::Fixed(36),
                1,
            ),
        )
        .await;
        let fine = run(
            &engine,
            request(
                "f",
                "What is shown?",
                vec![(img, Detail::Auto)],
                GranularityChoice::Fixed(576),
                1,
            ),
        )
        .await;
        let blocks = |u: &Usage| u.prompt_tokens.div_ceil(block);
        let ratio = f64::from(blocks(&coarse.usage)) / f64::from(blocks(&fine.usage));
        assert!(
            ratio <= 0.10,
            "{w}x{h}: 36 uses {ratio:.3} of the blocks of 576"
        );
        assert_eq!(fine.usage.visual_tokens, fine.usage.visual_tokens_full);
        assert!(coarse.usage.visual_tokens < fine.usage.visual_tokens / 10);
    }
}

/// Dropping half of many running streams frees every block once the rest finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_requests_free_their_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("avg");
    write_tiny(&dir, TinyLayout::Avg, TinySize::TINY, 5).unwrap();
    let engine = start(&dir, EngineConfig::default()).await;
    let mut streams = Vec::new();
    for i in 0..40u32 {
        let images = if i % 2 == 0 {
            vec![(png(300, 200, i), Detail::Low)]
        } else {
            vec![]
        };
        let r = request(
            &format!("r{i}"),
            "Tell me a long story",
            images,
            GranularityChoice::Auto,
            64,
        );
        streams.push(engine.generate(r).await.unwrap());
    }
    let mut keep = Vec::new();
    for (i, mut s) in streams.into_iter().enumerate() {
        if i % 2 == 0 {
            let _ = s.next().await; // started, then the client goes away
            drop(s);
        } else {
            keep.push(s);
        }
    }
    for mut s in keep {
        while let Some(ev) = s.next().await {
            if matches!(ev, Event::Done { .. } | Event::Error(_)) {
                break;
            }
        }
    }
    blocks_return_to_zero(&engine).await;
}

/// Image prompts in the prefix cache: a repeated image (same bytes, same granularity) reuses the
/// K/V of its visual positions, and every answer equals that of an engine without the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_images_are_served_from_the_prefix_cache_with_the_same_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("avg");
    write_tiny(&dir, TinyLayout::Avg, TinySize::TINY, 11).unwrap();
    let config = |prefix_caching| EngineConfig {
        prefix_caching,
        ..EngineConfig::default()
    };
    let cached = start(&dir, config(true)).await;
    let plain = start(&dir, config(false)).await;
    let photo = || vec![(png(640, 480, 3), Detail::Auto)];
    let reqs = [
        request(
            "a",
            "What is shown?",
            photo(),
            GranularityChoice::Fixed(144),
            8,
        ),
        request(
            "b",
            "What is shown?",
            photo(),
            GranularityChoice::Fixed(144),
            8,
        ),
        request(
            "c",
            "Count the shapes.",
            photo(),
            GranularityChoice::Fixed(144),
            8,
        ),
        request(
            "d",
            "What is shown?",
            photo(),
            GranularityChoice::Fixed(36),
            8,
        ),
        request(
            "e",
            "What is shown?",
            vec![(png(640, 480, 4), Detail::Auto)],
            GranularityChoice::Fixed(144),
            8,
        ),
    ];
    let mut hits = Vec::new();
    for r in reqs {
        let got = run(&cached, r.clone()).await;
        let want = run(&plain, r).await;
        assert_eq!(got.tokens, want.tokens);
        assert_eq!(got.usage.prompt_tokens, want.usage.prompt_tokens);
        hits.push((got.usage.cached_tokens, got.usage.prompt_tokens));
    }
    let (a, b, c, d, e) = (hits[0], hits[1], hits[2], hits[3], hits[4]);
    let block = EngineConfig::default().block_size as u32;
    assert_eq!(a.0, 0, "{hits:?}");
    assert_eq!(
        b.0,
        (b.1 - 1) / block * block,
        "all but the last block: {hits:?}"
    );
    assert!(
        c.0 > c.1 / 2,
        "the system prompt and the image are shared: {hits:?}"
    );
    // Another granularity or another picture shares only what comes before the image.
    assert!(d.0 < a.1 / 4 && e.0 < a.1 / 4, "{hits:?}");
    assert_eq!(d.0, e.0, "{hits:?}");
    blocks_return_to_zero(&cached).await;
}
