//! Engine tuning knobs. The binary merges file < env < flags and converts a KV memory budget into
//! `num_kv_blocks` before building this.

use serde::Deserialize;

use crate::controller::ControllerConfig;

/// A configuration that cannot work; lists every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid engine config: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Positions per KV block. Must match the runner's `kv_geometry`.
    pub block_size: usize,
    /// KV blocks in the cache. `None` → take the runner's `kv_geometry`.
    pub num_kv_blocks: Option<usize>,
    /// Most sequences computed in one step.
    pub max_num_seqs: usize,
    /// Most positions (prefill chunks + decode tokens) computed in one step.
    pub max_num_batched_tokens: usize,
    /// Requests accepted at once (preprocessing, queued or running); beyond → `Overloaded`.
    pub max_concurrent_requests: usize,
    /// Requests preprocessed but not yet picked up by the scheduler thread; beyond → `Overloaded`.
    pub max_queue: usize,
    /// Events buffered per request between the engine and the HTTP handler.
    pub channel_capacity: usize,
    /// `max_tokens` when the request does not set it.
    pub default_max_tokens: u32,
    /// Most positions per sequence (prompt + completion). `None` → the model card's context length.
    pub max_context: Option<usize>,
    /// `Retry-After` suggested with `Overloaded`.
    pub retry_after_s: u32,
    /// The load-adaptive granularity ceiling (off by default).
    pub controller: ControllerConfig,
    /// Reuse the K/V of prompt prefixes computed earlier (full blocks of prompt positions).
    pub prefix_caching: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            num_kv_blocks: None,
            max_num_seqs: 64,
            max_num_batched_tokens: 2048,
            max_concurrent_requests: 256,
            max_queue: 256,
            channel_capacity: 64,
            default_max_tokens: 512,
            max_context: None,
            retry_after_s: 1,
            controller: ControllerConfig::default(),
            prefix_caching: true,
        }
    }
}

impl EngineConfig {
    /// Checks every field and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let positive = [
            ("block_size", self.block_size),
            ("max_num_seqs", self.max_num_seqs),
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("max_concurrent_requests", self.max_concurrent_requests),
            ("max_queue", self.max_queue),
            ("channel_capacity", self.channel_capacity),
            ("default_max_tokens", self.default_max_tokens as usize),
        ];
        for (name, value) in positive {
            if value == 0 {
                problems.push(format!("{name} must be positive"));
            }
        }
        if self.num_kv_blocks == Some(0) {
            problems.push("num_kv_blocks must be positive".to_owned());
        }
        if self.max_context == Some(0) {
            problems.push("max_context must be positive".to_owned());
        }
        if self.controller.enabled {
            problems.extend(self.controller.problems());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert!(EngineConfig::default().validate().is_ok());
    }

    #[test]
    fn reports_every_problem() {
        let cfg = EngineConfig {
            block_size: 0,
            max_num_seqs: 0,
            num_kv_blocks: Some(0),
            ..EngineConfig::default()
        };
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(msg.contains("block_size"), "{msg}");
        assert!(msg.contains("max_num_seqs"), "{msg}");
        assert!(msg.contains("num_kv_blocks"), "{msg}");
    }
}
