//! `grain serve` with the mock model of the server tests instead of a real one: the HTTP layer
//! and the real engine, no weights. The end-to-end OpenAI-SDK tests run against it until the
//! real binary exists (`GRAIN_BIN=target/debug/examples/mock_server`).
//!
//! Understands the flags those tests pass: `serve --host H --port P`, and `GRAIN_API_KEYS`.
//! The mock answers with lowercase letters until `max_tokens` (it never emits EOS) and pauses
//! 2 ms per step, so a drain has something to wait for.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use grain_engine::EngineHandle;
use grain_metrics::Metrics;
use grain_server::{AppState, ServerConfig};
use prometheus::Registry;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::stderr)
        .init();
    let mut host = "127.0.0.1".to_owned();
    let mut port = 8000u16;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "serve" => {}
            "--host" => host = args.next().ok_or("--host needs a value")?,
            "--port" => port = args.next().ok_or("--port needs a value")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let api_keys: Vec<String> = std::env::var("GRAIN_API_KEYS")
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_default();

    let control = Arc::new(common::Control::default());
    let engine = EngineHandle::start(
        common::engine_config(),
        common::card(),
        Arc::new(common::MockPreprocessor),
        move || {
            Ok(common::MockRunner::new(control)
                .with_answer_len(usize::MAX)
                .with_step_delay(Duration::from_millis(2)))
        },
    )?;
    engine.wait_ready().await?;
    let registry = Registry::new();
    let metrics = Metrics::register(&registry, &common::GRANULARITIES)?;
    let config = ServerConfig {
        api_keys,
        ..ServerConfig::default()
    };
    let state = AppState::new(engine, config, metrics, registry)?;
    let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    grain_server::serve(listener, state, grain_server::shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}
