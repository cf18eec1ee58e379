//! End-to-end tests through `EngineHandle` with the toy model (one test binary).

mod batching;
mod json;
mod lifecycle;
mod output;
mod scoring;
mod support;
