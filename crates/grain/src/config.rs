//! Configuration of `grain serve`: one set of grouped structs that are at once the clap flags,
//! the TOML file sections and (through clap) the `GRAIN_*` environment variables.
//!
//! Every field is an `Option` so that a layer can say "not set". The layers are merged
//! explicitly, later wins: defaults < file < environment < flags. The merged layer is then
//! resolved into a [`GrainConfig`] with every value validated; all problems are reported
//! together ([`ConfigErrors`]).
//!
//! - **File**: `--config PATH` (or `GRAIN_CONFIG`), TOML with the sections `[server]`, `[model]`,
//!   `[engine]`, `[granularity]`, `[images]`, `[auth]`, `[logging]`; keys are the field names
//!   below (`max_body_bytes`), unknown keys are errors.
//! - **Environment**: `GRAIN_` + the flag name in upper snake case: `--max-body-bytes` is
//!   `GRAIN_MAX_BODY_BYTES`, lists are comma-separated (`GRAIN_API_KEYS=k1,k2`). Values are
//!   parsed by the same clap parsers as the flags. Nothing is read from the process environment
//!   except in [`load`]; tests pass their own map to [`load_from`].
//! - **Flags**: as listed by `grain serve --help`.

mod checks;
mod controller;
mod env;
mod logging;
mod resolve;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Deserialize;

pub(crate) use checks::parse_device;
pub use logging::init_logging;
pub use resolve::{
    ConfigErrors, ConfigIssue, Device, Dtype, GrainConfig, GranularityPolicy, ModelSource,
};

/// Flags of `grain serve`; also the shape of the TOML file.
#[derive(Debug, Clone, Default, PartialEq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML configuration file (env: GRAIN_CONFIG).
    #[arg(long, value_name = "PATH")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    #[serde(default)]
    pub server: ServerArgs,
    #[command(flatten)]
    #[serde(default)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[serde(default)]
    pub engine: EngineArgs,
    #[command(flatten)]
    #[serde(default)]
    pub granularity: GranularityArgs,
    #[command(flatten)]
    #[serde(default)]
    pub images: ImagesArgs,
    #[command(flatten)]
    #[serde(default)]
    pub auth: AuthArgs,
    #[command(flatten)]
    #[serde(default)]
    pub logging: LoggingArgs,
}

#[derive(Debug, Clone, Default, PartialEq, Args, Deserialize)]
#[command(next_help_heading = "Server")]
#[serde(deny_unknown_fields)]
pub struct ServerArgs {
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on; 0 picks a free one [default: 8000].
    #[arg(long)]
    pub port: Option<u16>,
    /// Model id clients send and `/v1/models` lists [default: the model's directory or repo name].
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Other names accepted in a request's `model` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub model_aliases: Option<Vec<String>>,
    /// Largest request body in bytes; images travel base64-encoded in it [default: 33554432].
    #[arg(long)]
    pub max_body_bytes: Option<u64>,
    /// Longest a completion may take, in seconds [default: 600].
    #[arg(long)]
    pub request_timeout_s: Option<u64>,
    /// On SIGTERM, how long in-flight requests get to finish, in seconds [default: 30].
    #[arg(long)]
    pub drain_timeout_s: Option<u64>,
    /// Longest a client may stall, in seconds: sending its request headers (idle keep-alive
    /// connections close after it too), between pieces of its body, or not reading the
    /// response [default: 30].
    #[arg(long)]
    pub client_timeout_s: Option<u64>,
    /// CORS origins (comma-separated, `*` for any); none disables CORS [default: none].
    #[arg(long, value_delimiter = ',')]
    pub cors_allowed_origins: Option<Vec<String>>,
    /// Largest `n` (choices per request) [default: 16].
    #[arg(long)]
    pub max_n: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Args, Deserialize)]
#[command(next_help_heading = "Model")]
#[serde(deny_unknown_fields)]
pub struct ModelArgs {
    /// Local model directory or Hugging Face repo id; unset serves the embedded tiny model
    /// (random weights).
    #[arg(long)]
    pub model: Option<String>,
    /// Hugging Face revision (branch, tag or commit) for a repo id [default: main].
    #[arg(long)]
    pub revision: Option<String>,
    /// Weight dtype [default: auto = bf16 on CUDA, f32 on CPU].
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    /// `auto`, `cpu`, `cuda` or `cuda:N` [default: auto].
    #[arg(long)]
    pub device: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Args, Deserialize)]
#[command(next_help_heading = "Engine")]
#[serde(deny_unknown_fields)]
pub struct EngineArgs {
    /// Positions per KV-cache block [default: 16].
    #[arg(long)]
    pub block_size: Option<usize>,
    /// KV-cache blocks; exclusive with --kv-cache-memory-mib [default: what the runner sizes].
    #[arg(long)]
    pub num_kv_blocks: Option<usize>,
    /// KV-cache memory budget in MiB, converted to blocks at start-up.
    #[arg(long)]
    pub kv_cache_memory_mib: Option<u64>,
    /// Most sequences computed in one step [default: 64].
    #[arg(long)]
    pub max_num_seqs: Option<usize>,
    /// Most positions computed in one step [default: 2048].
    #[arg(long)]
    pub max_num_batched_tokens: Option<usize>,
    /// Requests accepted at once; more get 429 [default: 256].
    #[arg(long)]
    pub max_concurrent_requests: Option<usize>,
    /// Requests waiting for the scheduler thread; more get 429 [default: 256].
    #[arg(long)]
    pub max_queue: Option<usize>,
    /// Events buffered per request between engine and HTTP [default: 64].
    #[arg(long)]
    pub channel_capacity: Option<usize>,
    /// `max_tokens` when a request does not set it [default: 512].
    #[arg(long)]
    pub default_max_tokens: Option<u32>,
    /// Most positions per sequence, prompt + completion [default: the model's].
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// `Retry-After` seconds sent with 429 [default: 1].
    #[arg(long)]
    pub retry_after_s: Option<u32>,
    /// Reuse the KV cache of prompt prefixes seen before (full 16-position blocks: a shared
    /// system prompt, earlier chat turns, a repeated image) [default: true].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub prefix_caching: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Args, Deserialize)]
#[command(next_help_heading = "Granularity")]
#[serde(deny_unknown_fields)]
pub struct GranularityArgs {
    /// Granularity for `detail: auto` images: `auto` (the router; the finest allowed when the
    /// model has none) or a token count per crop (36, 72, 144, 288, 576) [default: auto].
    #[arg(long)]
    pub default_granularity: Option<String>,
    /// Finest granularity any request may use; finer choices are capped to it [default: none].
    #[arg(long)]
    pub max_granularity: Option<u32>,
    /// Load-adaptive ceiling: lower `auto` images' granularity while the latency target is missed
    /// [default: false].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub controller: Option<bool>,
    /// What the controller holds to its target: `ttft` or `queue_wait` [default: ttft].
    #[arg(long)]
    pub controller_signal: Option<String>,
    /// Latency target for the signal's percentile, in milliseconds [default: 2000].
    #[arg(long)]
    pub controller_target_ms: Option<u64>,
    /// Percentile of the window held to the target, 1-100 [default: 90].
    #[arg(long)]
    pub controller_percentile: Option<u8>,
    /// Sliding window of latency samples, in milliseconds [default: 10000].
    #[arg(long)]
    pub controller_window_ms: Option<u64>,
    /// Lowest ceiling the controller may set [default: 36].
    #[arg(long)]
    pub controller_floor: Option<u32>,
    /// How long the target must be missed before stepping down, ms [default: 1000].
    #[arg(long)]
    pub controller_step_down_after_ms: Option<u64>,
    /// How long the signal must stay under the band before stepping up, ms [default: 5000].
    #[arg(long)]
    pub controller_step_up_after_ms: Option<u64>,
    /// Least time between two ceiling changes, ms [default: 2000].
    #[arg(long)]
    pub controller_cooldown_ms: Option<u64>,
    /// Step up only while the signal is under this percentage of the target [default: 50].
    #[arg(long)]
    pub controller_step_up_below_pct: Option<u8>,
    /// KV usage percentage that, with sequences waiting, counts as overload; 101 = off
    /// [default: 95].
    #[arg(long)]
    pub controller_kv_high_water_pct: Option<u8>,
    /// Samples needed before a missed target counts [default: 3].
    #[arg(long)]
    pub controller_min_samples: Option<usize>,
    /// Hold explicit `detail` / `granularity` choices under the ceiling too [default: false].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub controller_apply_to_explicit: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Args, Deserialize)]
#[command(next_help_heading = "Images")]
#[serde(deny_unknown_fields)]
pub struct ImagesArgs {
    /// Most images in one request [default: 8].
    #[arg(long)]
    pub max_images_per_request: Option<usize>,
    /// Largest encoded image in bytes [default: 20971520].
    #[arg(long)]
    pub max_image_bytes: Option<u64>,
    /// Largest image in pixels (width × height), checked before decoding [default: 40000000].
    #[arg(long)]
    pub max_image_pixels: Option<u64>,
    /// Accept http(s) image URLs [default: false].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub allow_http_images: Option<bool>,
    /// Image download time limit in seconds [default: 10].
    #[arg(long)]
    pub image_fetch_timeout_s: Option<u64>,
    /// Redirects followed per image download [default: 3].
    #[arg(long)]
    pub image_fetch_max_redirects: Option<usize>,
    /// Allow image URLs that resolve to loopback/private/link-local addresses [default: false].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub image_fetch_allow_private: Option<bool>,
    /// Hosts image URLs may name (comma-separated; `.example.com` includes subdomains);
    /// none allows every public host.
    #[arg(long, value_delimiter = ',')]
    pub image_fetch_allowed_hosts: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Args, Deserialize)]
#[command(next_help_heading = "Authentication")]
#[serde(deny_unknown_fields)]
pub struct AuthArgs {
    /// API keys accepted as `Authorization: Bearer <key>` (comma-separated); none disables auth.
    /// Prefer GRAIN_API_KEYS or --api-keys-file: flags are visible in the process list.
    #[arg(long, value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Option<Vec<String>>,
    /// File with one API key per line (`#` comments allowed), e.g. a mounted Kubernetes Secret.
    #[arg(long, value_name = "PATH")]
    pub api_keys_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Args, Deserialize)]
#[command(next_help_heading = "Logging")]
#[serde(deny_unknown_fields)]
pub struct LoggingArgs {
    /// Log line format [default: pretty].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// tracing filter, e.g. `info,grain_engine=debug` [default: info].
    #[arg(long)]
    pub log_filter: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line (for log collectors).
    Json,
}

/// `later.or(earlier)` for every listed field: the explicit merge of two layers.
macro_rules! merge_fields {
    ($base:expr, $over:expr; $($field:ident),+ $(,)?) => {
        Self { $($field: $over.$field.or($base.$field)),+ }
    };
}

impl ServeArgs {
    /// `over` wins wherever it sets a value.
    pub fn merge(self, over: Self) -> Self {
        Self {
            config: over.config.or(self.config),
            server: self.server.merge(over.server),
            model: self.model.merge(over.model),
            engine: self.engine.merge(over.engine),
            granularity: self.granularity.merge(over.granularity),
            images: self.images.merge(over.images),
            auth: self.auth.merge(over.auth),
            logging: self.logging.merge(over.logging),
        }
    }
}

impl ServerArgs {
    pub fn merge(self, over: Self) -> Self {
        merge_fields!(self, over; host, port, served_model_name, model_aliases, max_body_bytes,
            request_timeout_s, drain_timeout_s, client_timeout_s, cors_allowed_origins, max_n)
    }
}

impl ModelArgs {
    pub fn merge(self, over: Self) -> Self {
        merge_fields!(self, over; model, revision, dtype, device)
    }
}

impl EngineArgs {
    pub fn merge(self, over: Self) -> Self {
        merge_fields!(self, over; block_size, num_kv_blocks, kv_cache_memory_mib, max_num_seqs,
            max_num_batched_tokens, max_concurrent_requests, max_queue, channel_capacity,
            default_max_tokens, max_model_len, retry_after_s, prefix_caching)
    }
}

impl GranularityArgs {
    pub fn merge(self, over: Self) -> Self {
        merge_fields!(self, over; default_granularity, max_granularity, controller,
            controller_signal, controller_target_ms, controller_percentile, controller_window_ms,
            controller_floor, controller_step_down_after_ms, controller_step_up_after_ms,
            controller_cooldown_ms, controller_step_up_below_pct, controller_kv_high_water_pct,
            controller_min_samples, controller_apply_to_explicit)
    }
}

impl ImagesArgs {
    pub fn merge(self, over: Self) -> Self {
        merge_fields!(self, over; max_images_per_request, max_image_bytes, max_image_pixels,
            allow_http_images, image_fetch_timeout_s, image_fetch_max_redirects,
            image_fetch_allow_private, image_fetch_allowed_hosts)
    }
}

impl AuthArgs {
    pub fn merge(self, over: Self) -> Self {
        merge_fields!(self, over; api_keys, api_keys_file)
    }
}

impl LoggingArgs {
    pub fn merge(self, over: Self) -> Self {
        merge_fields!(self, over; log_format, log_filter)
    }
}

/// Loads the configuration for `grain serve` from the file, the process environment and `flags`.
pub fn load(flags: &ServeArgs) -> Result<GrainConfig, ConfigErrors> {
    load_from(flags, std::env::vars())
}

/// [`load`] with an explicit environment (tests, embedding).
pub fn load_from(
    flags: &ServeArgs,
    environment: impl IntoIterator<Item = (String, String)>,
) -> Result<GrainConfig, ConfigErrors> {
    let mut issues = Vec::new();
    let env_layer = env::layer(environment, &mut issues);
    let file_path = flags.config.clone().or_else(|| env_layer.config.clone());
    let file_layer = match &file_path {
        Some(path) => read_file(path, &mut issues),
        None => ServeArgs::default(),
    };
    let merged = file_layer.merge(env_layer.args).merge(flags.clone());
    let mut config = resolve::resolve(merged, &mut issues);
    if let Some(cfg) = config.as_mut() {
        cfg.source_file = file_path;
        cfg.warnings.extend(env_layer.warnings);
    }
    match config {
        Some(cfg) if issues.is_empty() => Ok(cfg),
        _ => Err(ConfigErrors(issues)),
    }
}

fn read_file(path: &std::path::Path, issues: &mut Vec<ConfigIssue>) -> ServeArgs {
    let key = format!("file {}", path.display());
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            issues.push(ConfigIssue::new(key, format!("cannot read: {e}")));
            return ServeArgs::default();
        }
    };
    match toml::from_str::<ServeArgs>(&text) {
        Ok(args) => args,
        Err(e) => {
            issues.push(ConfigIssue::new(key, e.to_string().trim_end()));
            ServeArgs::default()
        }
    }
}
