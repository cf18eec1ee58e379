//! Merged layers → a validated [`GrainConfig`], collecting every problem.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use grain_engine::EngineConfig;
use grain_protocol::RequestLimits;
use grain_server::{HttpFetchConfig, ImageConfig, ServerConfig};
use serde::Deserialize;

use super::checks::{
    is_loopback, model_source, parse_device, read_keys_file, valid_host, valid_origin,
};
use super::{LogFormat, ServeArgs};

/// Granularities of AVG-LLaVA (visual tokens per 336-px crop). The served model's own list is
/// known only after loading; the binary re-checks the choice against the model card.
pub const KNOWN_GRANULARITIES: [u32; 5] = [36, 72, 144, 288, 576];

/// One configuration problem: where (`server.port`, `GRAIN_PORT`, a file) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub message: String,
}

impl ConfigIssue {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Every problem found, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigIssue>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} configuration problem(s):", self.0.len())?;
        for issue in &self.0 {
            write!(f, "\n  - {}: {}", issue.key, issue.message)?;
        }
        Ok(())
    }
}

/// A value that must never be logged. `Debug` and `Display` print a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it (the server's key check).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// bf16 on CUDA, f32 on CPU.
    Auto,
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The first CUDA device when the binary has CUDA support and one is present, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// The tiny model generated at start-up with random weights.
    EmbeddedTiny,
    Local(PathBuf),
    HuggingFace {
        repo: String,
        revision: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GranularityPolicy {
    /// The router decides (the finest allowed granularity for a model without router).
    Auto,
    Fixed(u32),
}

/// The validated configuration of `grain serve`. Its `Debug` output is safe to log.
#[derive(Debug, Clone)]
pub struct GrainConfig {
    pub server: ServerSettings,
    pub model: ModelSettings,
    pub engine: EngineConfig,
    /// KV-cache budget to convert into `engine.num_kv_blocks` once the model geometry is known.
    pub kv_cache_memory_bytes: Option<u64>,
    pub granularity: GranularitySettings,
    pub images: ImageSettings,
    pub api_keys: Vec<Secret>,
    pub logging: LoggingSettings,
    /// The file the configuration was read from, if any.
    pub source_file: Option<PathBuf>,
    /// Non-fatal findings to log at start-up.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub served_model_name: Option<String>,
    pub model_aliases: Vec<String>,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub drain_timeout: Duration,
    pub client_timeout: Duration,
    pub cors_allowed_origins: Vec<String>,
    pub max_n: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSettings {
    pub source: ModelSource,
    pub dtype: Dtype,
    pub device: Device,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GranularitySettings {
    pub default: GranularityPolicy,
    pub max: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSettings {
    pub max_images_per_request: usize,
    pub max_image_bytes: usize,
    /// For the preprocessor: refuse images larger than this before decoding them.
    pub max_image_pixels: u64,
    pub http: Option<HttpFetchConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingSettings {
    pub format: LogFormat,
    pub filter: String,
}

impl GrainConfig {
    /// `host:port` to bind.
    pub fn listen_addr(&self) -> String {
        if self.server.host.contains(':') {
            format!("[{}]:{}", self.server.host, self.server.port)
        } else {
            format!("{}:{}", self.server.host, self.server.port)
        }
    }

    /// The HTTP layer's view of this configuration.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            model_aliases: self.server.model_aliases.clone(),
            api_keys: self
                .api_keys
                .iter()
                .map(|k| k.expose().to_owned())
                .collect(),
            limits: RequestLimits {
                max_n: self.server.max_n,
                max_images: self.images.max_images_per_request,
                ..RequestLimits::default()
            },
            max_body_bytes: self.server.max_body_bytes,
            request_timeout: self.server.request_timeout,
            drain_timeout: self.server.drain_timeout,
            client_timeout: self.server.client_timeout,
            cors_allowed_origins: self.server.cors_allowed_origins.clone(),
            images: ImageConfig {
                max_image_bytes: self.images.max_image_bytes,
                http: self.images.http.clone(),
            },
        }
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Validates the merged layers. Returns `None` only when nothing usable could be built; the
/// caller treats any issue as fatal.
pub(super) fn resolve(args: ServeArgs, issues: &mut Vec<ConfigIssue>) -> Option<GrainConfig> {
    let mut warnings = Vec::new();
    let mut issue = |key: &str, message: String| issues.push(ConfigIssue::new(key, message));

    // [server]
    let s = args.server;
    let host = s.host.unwrap_or_else(|| "127.0.0.1".into());
    if !valid_host(&host) {
        issue(
            "server.host",
            format!("'{host}' is not an IP address or host name"),
        );
    }
    let max_body_bytes = s.max_body_bytes.unwrap_or(32 * MIB);
    if max_body_bytes < 4 * KIB {
        issue(
            "server.max_body_bytes",
            format!("{max_body_bytes} is below the minimum of 4096"),
        );
    }
    let request_timeout_s = s.request_timeout_s.unwrap_or(600);
    if request_timeout_s == 0 {
        issue("server.request_timeout_s", "must be at least 1".into());
    }
    let drain_timeout_s = s.drain_timeout_s.unwrap_or(30);
    if drain_timeout_s == 0 {
        issue("server.drain_timeout_s", "must be at least 1".into());
    }
    let client_timeout_s = s.client_timeout_s.unwrap_or(30);
    if client_timeout_s == 0 {
        issue("server.client_timeout_s", "must be at least 1".into());
    }
    let max_n = s.max_n.unwrap_or(16);
    if !(1..=128).contains(&max_n) {
        issue(
            "server.max_n",
            format!("must be between 1 and 128, got {max_n}"),
        );
    }
    if let Some(name) = &s.served_model_name {
        if name.trim().is_empty() {
            issue("server.served_model_name", "must not be empty".into());
        }
    }
    let model_aliases = s.model_aliases.unwrap_or_default();
    if model_aliases.iter().any(|a| a.trim().is_empty()) {
        issue("server.model_aliases", "aliases must not be empty".into());
    }
    let cors_allowed_origins = s.cors_allowed_origins.unwrap_or_default();
    for origin in &cors_allowed_origins {
        if origin != "*" && !valid_origin(origin) {
            issue(
                "server.cors_allowed_origins",
                format!("'{origin}' is not '*' or an origin like https://app.example.com"),
            );
        }
    }

    // [model]
    let m = args.model;
    let revision = m.revision.unwrap_or_else(|| "main".into());
    let source = match m.model.as_deref().map(str::trim) {
        None | Some("") => ModelSource::EmbeddedTiny,
        Some(model) => match model_source(model, &revision) {
            Ok(source) => source,
            Err(message) => {
                issue("model.model", message);
                ModelSource::EmbeddedTiny
            }
        },
    };
    let device = match parse_device(m.device.as_deref().unwrap_or("auto")) {
        Ok(d) => d,
        Err(message) => {
            issue("model.device", message);
            Device::Auto
        }
    };
    let dtype = m.dtype.unwrap_or(Dtype::Auto);
    if dtype == Dtype::F16 && device == Device::Cpu {
        warnings.push("model.dtype f16 on the CPU is slow; f32 is recommended".into());
    }

    // [engine]
    let e = args.engine;
    let defaults = EngineConfig::default();
    let engine = EngineConfig {
        block_size: e.block_size.unwrap_or(defaults.block_size),
        num_kv_blocks: e.num_kv_blocks.or(defaults.num_kv_blocks),
        max_num_seqs: e.max_num_seqs.unwrap_or(defaults.max_num_seqs),
        max_num_batched_tokens: e
            .max_num_batched_tokens
            .unwrap_or(defaults.max_num_batched_tokens),
        max_concurrent_requests: e
            .max_concurrent_requests
            .unwrap_or(defaults.max_concurrent_requests),
        max_queue: e.max_queue.unwrap_or(defaults.max_queue),
        channel_capacity: e.channel_capacity.unwrap_or(defaults.channel_capacity),
        default_max_tokens: e.default_max_tokens.unwrap_or(defaults.default_max_tokens),
        max_context: e.max_model_len.or(defaults.max_context),
        retry_after_s: e.retry_after_s.unwrap_or(defaults.retry_after_s),
        controller: super::controller::resolve(&args.granularity, &mut issue),
        prefix_caching: e.prefix_caching.unwrap_or(defaults.prefix_caching),
    };
    if let Err(err) = engine.validate() {
        for problem in err.0 {
            issue("engine", problem);
        }
    }
    if e.num_kv_blocks.is_some() && e.kv_cache_memory_mib.is_some() {
        issue(
            "engine.kv_cache_memory_mib",
            "set either num_kv_blocks or kv_cache_memory_mib, not both".into(),
        );
    }
    if e.kv_cache_memory_mib == Some(0) {
        issue("engine.kv_cache_memory_mib", "must be positive".into());
    }
    let kv_cache_memory_bytes = e.kv_cache_memory_mib.map(|m| m.saturating_mul(MIB));

    // [granularity]
    let g = args.granularity;
    let default = match g.default_granularity.as_deref().map(str::trim) {
        None | Some("auto") => GranularityPolicy::Auto,
        Some(value) => match value.parse::<u32>() {
            Ok(n) if KNOWN_GRANULARITIES.contains(&n) => GranularityPolicy::Fixed(n),
            _ => {
                issue(
                    "granularity.default_granularity",
                    format!("'{value}' is not 'auto' or one of {KNOWN_GRANULARITIES:?}"),
                );
                GranularityPolicy::Auto
            }
        },
    };
    if let Some(max) = g.max_granularity {
        if !KNOWN_GRANULARITIES.contains(&max) {
            issue(
                "granularity.max_granularity",
                format!("{max} is not one of {KNOWN_GRANULARITIES:?}"),
            );
        }
        if let GranularityPolicy::Fixed(d) = default {
            if d > max {
                issue(
                    "granularity.default_granularity",
                    format!("{d} is finer than max_granularity {max}"),
                );
            }
        }
    }

    // [images]
    let i = args.images;
    let max_images_per_request = i.max_images_per_request.unwrap_or(8);
    if !(1..=64).contains(&max_images_per_request) {
        issue(
            "images.max_images_per_request",
            format!("must be between 1 and 64, got {max_images_per_request}"),
        );
    }
    let max_image_bytes = i.max_image_bytes.unwrap_or(20 * MIB);
    if max_image_bytes < KIB {
        issue(
            "images.max_image_bytes",
            format!("{max_image_bytes} is below the minimum of 1024"),
        );
    }
    // An image of the maximum size, base64-encoded, plus the JSON around it must fit the body.
    let base64_image = max_image_bytes.div_ceil(3) * 4 + 4 * KIB;
    if max_body_bytes < base64_image {
        issue(
            "server.max_body_bytes",
            format!(
                "{max_body_bytes} cannot hold one base64 image of images.max_image_bytes \
                 ({max_image_bytes} bytes need about {base64_image})"
            ),
        );
    }
    let max_image_pixels = i.max_image_pixels.unwrap_or(40_000_000);
    if max_image_pixels < 64 * 64 {
        issue(
            "images.max_image_pixels",
            format!("{max_image_pixels} is below the minimum of 4096"),
        );
    }
    let fetch_timeout_s = i.image_fetch_timeout_s.unwrap_or(10);
    if fetch_timeout_s == 0 || fetch_timeout_s > 300 {
        issue(
            "images.image_fetch_timeout_s",
            format!("must be between 1 and 300, got {fetch_timeout_s}"),
        );
    }
    let max_redirects = i.image_fetch_max_redirects.unwrap_or(3);
    if max_redirects > 10 {
        issue(
            "images.image_fetch_max_redirects",
            format!("must be at most 10, got {max_redirects}"),
        );
    }
    let allowed_hosts = i.image_fetch_allowed_hosts.unwrap_or_default();
    for host in &allowed_hosts {
        if !valid_host(host.strip_prefix('.').unwrap_or(host)) {
            issue(
                "images.image_fetch_allowed_hosts",
                format!("'{host}' is not a host name (use '.example.com' for a domain)"),
            );
        }
    }
    let allow_http = i.allow_http_images.unwrap_or(false);
    if !allow_http && (!allowed_hosts.is_empty() || i.image_fetch_allow_private == Some(true)) {
        warnings.push(
            "image fetch settings are set but allow_http_images is false; they have no effect"
                .into(),
        );
    }
    let http = allow_http.then(|| HttpFetchConfig {
        timeout: Duration::from_secs(fetch_timeout_s),
        max_redirects,
        allow_private: i.image_fetch_allow_private.unwrap_or(false),
        allowed_hosts: allowed_hosts.clone(),
    });

    // [auth]
    let a = args.auth;
    let mut keys: Vec<String> = a.api_keys.unwrap_or_default();
    if let Some(path) = &a.api_keys_file {
        match read_keys_file(path) {
            Ok(from_file) => keys.extend(from_file),
            Err(message) => issue("auth.api_keys_file", message),
        }
    }
    for (n, key) in keys.iter().enumerate() {
        // Never echo the key itself, only its position.
        if key.is_empty() {
            issue("auth.api_keys", format!("key #{} is empty", n + 1));
        } else if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            issue(
                "auth.api_keys",
                format!("key #{} contains whitespace", n + 1),
            );
        } else if key.len() < 8 {
            warnings.push(format!("API key #{} is shorter than 8 characters", n + 1));
        }
    }
    if keys.is_empty() && !is_loopback(&host) {
        warnings.push(format!(
            "no API keys configured while listening on {host}: anyone who reaches it can use it"
        ));
    }
    let api_keys = keys.into_iter().map(Secret::new).collect();

    // [logging]
    let l = args.logging;
    let filter = l.log_filter.unwrap_or_else(|| "info".into());
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&filter) {
        issue("logging.log_filter", format!("'{filter}': {e}"));
    }

    Some(GrainConfig {
        server: ServerSettings {
            host,
            port: s.port.unwrap_or(8000),
            served_model_name: s.served_model_name,
            model_aliases,
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            request_timeout: Duration::from_secs(request_timeout_s),
            drain_timeout: Duration::from_secs(drain_timeout_s),
            client_timeout: Duration::from_secs(client_timeout_s),
            cors_allowed_origins,
            max_n,
        },
        model: ModelSettings {
            source,
            dtype,
            device,
        },
        engine,
        kv_cache_memory_bytes,
        granularity: GranularitySettings {
            default,
            max: g.max_granularity,
        },
        images: ImageSettings {
            max_images_per_request,
            max_image_bytes: usize::try_from(max_image_bytes).unwrap_or(usize::MAX),
            max_image_pixels,
            http,
        },
        api_keys,
        logging: LoggingSettings {
            format: l.log_format.unwrap_or(LogFormat::Pretty),
            filter,
        },
        source_file: None,
        warnings,
    })
}
