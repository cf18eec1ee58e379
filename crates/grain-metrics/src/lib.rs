//! Every Prometheus metric Grain exports, in one place.
//!
//! [`Metrics::register`] registers all families on a registry the caller owns (no global
//! registry: tests and embedders get isolated metrics) and returns cheap-to-clone typed handles
//! that the engine and the server record into. Label values come only from the enums below or
//! from the model's candidate granularities, so the series count is bounded and known up front.
//! Every labelled series is created at registration, so every family is present (at zero) in the
//! first scrape and dashboards do not show "no data" for errors that have not happened yet.
//!
//! Names carry their unit (`_seconds`, `_tokens`, `_total`, `_ratio`). Buckets follow vLLM's
//! choices where a metric has a vLLM counterpart, so dashboards written for vLLM read the same.

#![forbid(unsafe_code)]

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

pub use prometheus;

mod labels;
pub use labels::{
    ErrorLabel, FinishReasonLabel, GranularitySourceLabel, StepPhase, OTHER_GRANULARITY,
};

/// Metric name prefix.
pub const PREFIX: &str = "grain";

/// Errors from registering or encoding metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric {name}: {source}")]
    Register {
        name: &'static str,
        source: prometheus::Error,
    },
    #[error("encoding metrics: {0}")]
    Encode(#[from] prometheus::Error),
}

// vLLM's latency buckets (seconds).
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
// Model-internal durations (one step, one router or vision-tower call): milliseconds to seconds.
const COMPUTE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    10.0,
];
// 1-2-5 series up to 100k tokens, as vLLM does up to the context length.
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0,
    50000.0, 100000.0,
];
const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Typed handles to every Grain metric. Clones share the same series.
#[derive(Clone)]
pub struct Metrics {
    time_to_first_token: Histogram,
    inter_token_latency: Histogram,
    e2e_request_latency: Histogram,
    request_queue_time: Histogram,
    request_prompt_tokens: Histogram,
    request_generation_tokens: Histogram,
    request_success: IntCounterVec,
    request_failure: IntCounterVec,
    num_requests_running: IntGauge,
    num_requests_waiting: IntGauge,
    kv_cache_usage_ratio: prometheus::Gauge,
    num_preemptions: IntCounter,
    batch_size: Histogram,
    step_duration: HistogramVec,
    visual_tokens: IntCounterVec,
    visual_tokens_saved: IntCounter,
    granularity_selected: IntCounterVec,
    granularity_ceiling: IntGauge,
    router_duration: Histogram,
    vision_encoder_duration: Histogram,
    encoder_cache_hits: IntCounter,
    encoder_cache_misses: IntCounter,
    prefix_cache_hit_tokens: IntCounter,
    granularities: Vec<u32>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("granularities", &self.granularities)
            .finish_non_exhaustive()
    }
}

/// Registers a collector, naming the metric in the error.
fn reg<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    name: &'static str,
    collector: C,
) -> Result<C, MetricsError> {
    registry
        .register(Box::new(collector.clone()))
        .map_err(|source| MetricsError::Register { name, source })?;
    Ok(collector)
}

fn histogram(
    registry: &Registry,
    name: &'static str,
    help: &str,
    buckets: &[f64],
) -> Result<Histogram, MetricsError> {
    let opts = HistogramOpts::new(name, help)
        .namespace(PREFIX)
        .buckets(buckets.to_vec());
    let h = Histogram::with_opts(opts).map_err(|source| MetricsError::Register { name, source })?;
    reg(registry, name, h)
}

fn counter(
    registry: &Registry,
    name: &'static str,
    help: &str,
) -> Result<IntCounter, MetricsError> {
    let c = IntCounter::with_opts(Opts::new(name, help).namespace(PREFIX))
        .map_err(|source| MetricsError::Register { name, source })?;
    reg(registry, name, c)
}

fn counter_vec(
    registry: &Registry,
    name: &'static str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let c = IntCounterVec::new(Opts::new(name, help).namespace(PREFIX), labels)
        .map_err(|source| MetricsError::Register { name, source })?;
    reg(registry, name, c)
}

fn int_gauge(
    registry: &Registry,
    name: &'static str,
    help: &str,
) -> Result<IntGauge, MetricsError> {
    let g = IntGauge::with_opts(Opts::new(name, help).namespace(PREFIX))
        .map_err(|source| MetricsError::Register { name, source })?;
    reg(registry, name, g)
}

impl Metrics {
    /// Registers every Grain metric on `registry`. `granularities` are the served model's
    /// candidate visual-token counts per crop; they bound the `granularity` label.
    pub fn register(registry: &Registry, granularities: &[u32]) -> Result<Self, MetricsError> {
        let r = registry;
        let step_duration = {
            let name = "step_duration_seconds";
            let opts = HistogramOpts::new(
                name,
                "Duration of one scheduler step (forward + sampling), by the work it batched.",
            )
            .namespace(PREFIX)
            .buckets(COMPUTE_BUCKETS.to_vec());
            let h = HistogramVec::new(opts, &["phase"])
                .map_err(|source| MetricsError::Register { name, source })?;
            reg(r, name, h)?
        };
        let kv_cache_usage_ratio = {
            let name = "kv_cache_usage_ratio";
            let g = prometheus::Gauge::with_opts(
                Opts::new(name, "Fraction of KV-cache blocks in use (0 to 1).").namespace(PREFIX),
            )
            .map_err(|source| MetricsError::Register { name, source })?;
            reg(r, name, g)?
        };
        let mut granularities = granularities.to_vec();
        granularities.sort_unstable();
        granularities.dedup();

        let metrics = Self {
            time_to_first_token: histogram(
                r,
                "time_to_first_token_seconds",
                "Time from request arrival to its first generated token.",
                TTFT_BUCKETS,
            )?,
            inter_token_latency: histogram(
                r,
                "inter_token_latency_seconds",
                "Time between two consecutive generated tokens of one sequence.",
                ITL_BUCKETS,
            )?,
            e2e_request_latency: histogram(
                r,
                "e2e_request_latency_seconds",
                "Time from request arrival to its last token.",
                REQUEST_LATENCY_BUCKETS,
            )?,
            request_queue_time: histogram(
                r,
                "request_queue_time_seconds",
                "Time from request arrival until the scheduler admitted it and prepared its prompt (preprocessing, queueing, vision tower and router).",
                REQUEST_LATENCY_BUCKETS,
            )?,
            request_prompt_tokens: histogram(
                r,
                "request_prompt_tokens",
                "Prompt length of finished requests, in tokens (text + visual).",
                TOKEN_BUCKETS,
            )?,
            request_generation_tokens: histogram(
                r,
                "request_generation_tokens",
                "Generated tokens of finished requests, summed over choices.",
                TOKEN_BUCKETS,
            )?,
            request_success: counter_vec(
                r,
                "request_success_total",
                "Finished requests, by finish reason.",
                &["finish_reason"],
            )?,
            request_failure: counter_vec(
                r,
                "request_failure_total",
                "Failed completion requests (chat and text), by error kind.",
                &["error"],
            )?,
            num_requests_running: int_gauge(
                r,
                "num_requests_running",
                "Sequences being computed by the scheduler.",
            )?,
            num_requests_waiting: int_gauge(
                r,
                "num_requests_waiting",
                "Sequences admitted and waiting for a batch slot or KV blocks.",
            )?,
            kv_cache_usage_ratio,
            num_preemptions: counter(
                r,
                "num_preemptions_total",
                "Sequences preempted (KV blocks reclaimed, to be recomputed).",
            )?,
            batch_size: histogram(
                r,
                "batch_size",
                "Sequences computed in one scheduler step.",
                BATCH_SIZE_BUCKETS,
            )?,
            step_duration,
            visual_tokens: counter_vec(
                r,
                "visual_tokens_total",
                "Visual tokens of prompts, at the granularity used and at the finest one.",
                &["kind"],
            )?,
            visual_tokens_saved: counter(
                r,
                "visual_tokens_saved_total",
                "Visual tokens not computed thanks to a coarser granularity (full - selected).",
            )?,
            granularity_selected: counter_vec(
                r,
                "granularity_selected_total",
                "Images by chosen granularity (visual tokens per crop) and by who chose it.",
                &["granularity", "source"],
            )?,
            granularity_ceiling: int_gauge(
                r,
                "granularity_ceiling",
                "Finest granularity (visual tokens per crop) that auto images may use now; lowered \
                 by the load-adaptive controller under overload.",
            )?,
            router_duration: histogram(
                r,
                "router_duration_seconds",
                "Duration of one granularity-router call (a batch of images).",
                COMPUTE_BUCKETS,
            )?,
            vision_encoder_duration: histogram(
                r,
                "vision_encoder_duration_seconds",
                "Duration of one vision tower + projector + pooling call (a batch of crops).",
                COMPUTE_BUCKETS,
            )?,
            encoder_cache_hits: counter(
                r,
                "encoder_cache_hits_total",
                "Images whose visual features came from the encoder cache.",
            )?,
            encoder_cache_misses: counter(
                r,
                "encoder_cache_misses_total",
                "Images that had to be encoded by the vision tower.",
            )?,
            prefix_cache_hit_tokens: counter(
                r,
                "prefix_cache_hit_tokens_total",
                PREFIX_CACHE_HELP,
            )?,
            granularities,
        };
        metrics.init_label_sets();
        Ok(metrics)
    }

    fn init_label_sets(&self) {
        for reason in FinishReasonLabel::ALL {
            self.request_success.with_label_values(&[reason.as_str()]);
        }
        for error in ErrorLabel::ALL {
            self.request_failure.with_label_values(&[error.as_str()]);
        }
        for phase in StepPhase::ALL {
            self.step_duration.with_label_values(&[phase.as_str()]);
        }
        for kind in ["selected", "full"] {
            self.visual_tokens.with_label_values(&[kind]);
        }
        for g in &self.granularities {
            for source in GranularitySourceLabel::ALL {
                self.granularity_selected
                    .with_label_values(&[&g.to_string(), source.as_str()]);
            }
        }
    }

    /// The candidate granularities the `granularity` label is bounded to.
    pub fn granularities(&self) -> &[u32] {
        &self.granularities
    }

    pub fn observe_time_to_first_token(&self, seconds: f64) {
        self.time_to_first_token.observe(seconds);
    }

    pub fn observe_inter_token_latency(&self, seconds: f64) {
        self.inter_token_latency.observe(seconds);
    }

    pub fn observe_e2e_request_latency(&self, seconds: f64) {
        self.e2e_request_latency.observe(seconds);
    }

    pub fn observe_request_queue_time(&self, seconds: f64) {
        self.request_queue_time.observe(seconds);
    }

    /// Records a finished request: its token counts and one success per choice's finish reason.
    pub fn record_success(
        &self,
        prompt_tokens: u32,
        generation_tokens: u32,
        finish_reasons: &[FinishReasonLabel],
    ) {
        self.request_prompt_tokens.observe(f64::from(prompt_tokens));
        self.request_generation_tokens
            .observe(f64::from(generation_tokens));
        // A request counts once: with several choices, "length" wins over "stop" because a
        // truncated answer is what an operator wants to notice.
        let reason = if finish_reasons.contains(&FinishReasonLabel::Length) {
            FinishReasonLabel::Length
        } else {
            FinishReasonLabel::Stop
        };
        self.request_success
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    pub fn record_failure(&self, error: ErrorLabel) {
        self.request_failure
            .with_label_values(&[error.as_str()])
            .inc();
    }

    /// Updates the engine gauges from a snapshot of the scheduler state. `preemptions_total` is
    /// the engine's monotonic count; the counter is advanced to it (never backwards).
    pub fn sync_engine_stats(
        &self,
        running: usize,
        waiting: usize,
        kv_blocks_used: usize,
        kv_blocks_total: usize,
        preemptions_total: u64,
    ) {
        self.num_requests_running
            .set(i64::try_from(running).unwrap_or(i64::MAX));
        self.num_requests_waiting
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        let ratio = if kv_blocks_total == 0 {
            0.0
        } else {
            kv_blocks_used as f64 / kv_blocks_total as f64
        };
        self.kv_cache_usage_ratio.set(ratio.clamp(0.0, 1.0));
        let seen = self.num_preemptions.get();
        if preemptions_total > seen {
            self.num_preemptions.inc_by(preemptions_total - seen);
        }
    }

    pub fn inc_preemptions(&self, n: u64) {
        self.num_preemptions.inc_by(n);
    }

    pub fn observe_batch_size(&self, sequences: usize) {
        self.batch_size.observe(sequences as f64);
    }

    pub fn observe_step_duration(&self, phase: StepPhase, seconds: f64) {
        self.step_duration
            .with_label_values(&[phase.as_str()])
            .observe(seconds);
    }

    /// Records one image's granularity decision.
    pub fn record_granularity(&self, granularity: u32, source: GranularitySourceLabel) {
        let label = if self.granularities.contains(&granularity) {
            granularity.to_string()
        } else {
            OTHER_GRANULARITY.to_owned()
        };
        self.granularity_selected
            .with_label_values(&[&label, source.as_str()])
            .inc();
    }

    /// Adds visual tokens used (`selected`) and what the finest granularity would have cost
    /// (`full`); the difference goes to `grain_visual_tokens_saved_total`.
    pub fn record_visual_tokens(&self, selected: u64, full: u64) {
        self.visual_tokens
            .with_label_values(&["selected"])
            .inc_by(selected);
        self.visual_tokens.with_label_values(&["full"]).inc_by(full);
        self.visual_tokens_saved
            .inc_by(full.saturating_sub(selected));
    }

    /// Prompt tokens of a finished request whose K/V came from the prefix cache.
    pub fn record_prefix_cache_hits(&self, tokens: u64) {
        self.prefix_cache_hit_tokens.inc_by(tokens);
    }

    /// The current granularity ceiling (set at start and on every change).
    pub fn set_granularity_ceiling(&self, granularity: u32) {
        self.granularity_ceiling.set(i64::from(granularity));
    }

    pub fn observe_router_duration(&self, seconds: f64) {
        self.router_duration.observe(seconds);
    }

    pub fn observe_vision_encoder_duration(&self, seconds: f64) {
        self.vision_encoder_duration.observe(seconds);
    }

    pub fn record_encoder_cache(&self, hits: u64, misses: u64) {
        self.encoder_cache_hits.inc_by(hits);
        self.encoder_cache_misses.inc_by(misses);
    }
}

/// The Prometheus text exposition (format 0.0.4) of everything in `registry`.
pub fn encode_text(registry: &Registry) -> Result<String, MetricsError> {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    // The text encoder only writes UTF-8 (names, escaped label values, numbers).
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The `Content-Type` of [`encode_text`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every family name Grain exports, for tests, dashboards and docs.
pub const FAMILIES: &[&str] = &[
    "grain_time_to_first_token_seconds",
    "grain_inter_token_latency_seconds",
    "grain_e2e_request_latency_seconds",
    "grain_request_queue_time_seconds",
    "grain_request_prompt_tokens",
    "grain_request_generation_tokens",
    "grain_request_success_total",
    "grain_request_failure_total",
    "grain_num_requests_running",
    "grain_num_requests_waiting",
    "grain_kv_cache_usage_ratio",
    "grain_num_preemptions_total",
    "grain_batch_size",
    "grain_step_duration_seconds",
    "grain_visual_tokens_total",
    "grain_visual_tokens_saved_total",
    "grain_granularity_selected_total",
    "grain_granularity_ceiling",
    "grain_router_duration_seconds",
    "grain_vision_encoder_duration_seconds",
    "grain_encoder_cache_hits_total",
    "grain_encoder_cache_misses_total",
    "grain_prefix_cache_hit_tokens_total",
];

const PREFIX_CACHE_HELP: &str =
    "Prompt tokens of finished requests whose KV came from the prefix cache instead of being computed.";
