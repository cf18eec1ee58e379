//! JSON mode through the engine with the toy model, whose logits rule out every byte but letters,
//! space and EOS: it can write the whitespace a JSON object may start with, never the `{`. The
//! request must end with an error naming `response_format`, without leaking blocks, and the engine
//! keeps serving. (The real model's objects: `grain-backend/tests/json_mode.rs`.)

use grain_engine::{EngineConfig, EngineError, GenerationParams, ResponseFormat};

use crate::batching::assert_drained;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_cannot_write_the_object_fails_the_request_cleanly() {
    let (h, probe) = ready(EngineConfig::default(), no_eos()).await;
    let params = GenerationParams {
        response_format: ResponseFormat::JsonObject,
        n: 2,
        ..greedy(100)
    };
    let out = run(&h, request("j", "json please", &[], params)).await;
    assert!(
        matches!(&out.error, Some(EngineError::InvalidRequest { param: Some(p), .. }) if p == "response_format"),
        "{:?}",
        out.error
    );
    // It got as far as the grammar allows: leading whitespace only.
    assert!(
        out.text.iter().all(|t| t.bytes().all(|b| b == b' ')),
        "{:?}",
        out.text
    );
    let plain = run(&h, request("p", "json please", &[], greedy(5))).await;
    assert!(plain.error.is_none());
    assert_drained(&h, &probe).await;
}
