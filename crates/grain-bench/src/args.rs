//! Command-line arguments of `grain bench`, and their translation into a validated plan.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::error::SpecError;
use crate::image::SizeSpread;
use crate::mode::Mode;
use crate::workload::{read_dataset, BodyOptions, LenRange, Source, Workload};

/// Load generator for OpenAI-compatible chat endpoints (Grain or a peer): sweeps granularity modes ×
/// load levels, streams every request, and reports TTFT, ITL, end-to-end latency and throughput.
#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct BenchArgs {
    /// Server root URL (`/v1` is appended unless present). Ignored with --spawn.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Model id to send; default: the first id listed by GET /v1/models.
    #[arg(long)]
    pub model: Option<String>,
    /// Bearer token for the server.
    #[arg(long, env = "GRAIN_BENCH_API_KEY", hide_env_values = true)]
    #[serde(skip)]
    pub api_key: Option<String>,
    /// A name for this server in reports and plots (default: the model id).
    #[arg(long)]
    pub label: Option<String>,

    /// Closed-loop load: comma-separated numbers of requests kept in flight, one run point each.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub concurrency: Vec<usize>,
    /// Open-loop load instead: comma-separated Poisson request rates (requests/s), one run point each.
    #[arg(long, value_delimiter = ',', conflicts_with = "concurrency")]
    pub rate: Vec<f64>,
    /// With --rate: at most this many requests in flight (later arrivals wait to be sent).
    #[arg(long, requires = "rate")]
    pub max_concurrency: Option<usize>,
    /// Requests measured per run point.
    #[arg(long, default_value_t = 32)]
    pub num_requests: usize,
    /// Measure for this many seconds per run point instead of a request count.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Unmeasured requests sent before each run point (same load, different images).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Per-request timeout in seconds (a timed-out request counts as an error).
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,

    /// Granularity modes, comma-separated, one sweep each: `default` (send nothing), `auto`
    /// (router), a level such as `36` or `576` (`granularity` field), `low`/`high` (image detail),
    /// `detail:low=0.7+high=0.3`, `mix:paper`, `mix:36=0.5+576=0.5` (level drawn per request).
    #[arg(long, value_delimiter = ',', default_value = "default")]
    pub granularity: Vec<String>,

    /// `synthetic` (random-word prompt + synthetic images) or `text` (no images).
    #[arg(long, default_value = "synthetic", value_parser = ["synthetic", "text"])]
    pub workload: String,
    /// Replay request bodies from a JSONL file (one chat request object per line) instead.
    #[arg(long, conflicts_with = "workload")]
    pub dataset: Option<PathBuf>,
    /// Image sizes: `realistic` (a spread of common photo sizes) or a list like `672x672,1008x336`.
    #[arg(long, default_value = "realistic")]
    pub image_sizes: String,
    #[arg(long, default_value_t = 1)]
    pub images_per_request: u32,
    /// Prompt length in words: N or MIN-MAX.
    #[arg(long, default_value = "8-24")]
    pub prompt_words: String,
    /// `max_tokens` of each request: N or MIN-MAX (dataset lines that set one keep theirs).
    #[arg(long, default_value = "64")]
    pub max_tokens: String,
    /// Seed of the workload (prompts, sizes, lengths, mixes, arrivals).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Send vLLM-style `ignore_eos: true` and `min_tokens = max_tokens` (Grain and vLLM accept
    /// them), so that every request generates exactly max_tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Non-streaming requests (no TTFT or ITL: only end-to-end latency).
    #[arg(long)]
    pub no_stream: bool,
    /// Replay dataset images unchanged at every run point (the server's encoder cache may then hit).
    #[arg(long)]
    pub no_unique_images: bool,
    /// Start each request's first user text with a tag unique to the run point (`[run N] `), so
    /// that a server's prefix cache shares only the chat template and system prompts between
    /// points, not whole prompts.
    #[arg(long)]
    pub unique_prompts: bool,

    /// Write the full report (settings, per-point summaries, server deltas, every request) as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write SVG plots of throughput and latency against load, one line per granularity mode.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write the workload's first --num-requests requests as JSONL (for other tools) and exit.
    #[arg(long)]
    pub dump_workload: Option<PathBuf>,
    /// Do not scrape /metrics before and after each run point.
    #[arg(long)]
    pub no_server_metrics: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,

    /// Start `BIN serve` on a local port, benchmark it, and stop it afterwards.
    #[arg(long, value_name = "BIN")]
    pub spawn: Option<PathBuf>,
    /// Checkpoint directory for the spawned server (default: its embedded tiny model).
    #[arg(long, requires = "spawn")]
    pub spawn_model: Option<PathBuf>,
    /// Port for the spawned server (0: a free one).
    #[arg(long, default_value_t = 0, requires = "spawn")]
    pub spawn_port: u16,
    /// Extra argument for the spawned server, repeatable (e.g. --spawn-arg=--max-num-seqs=32).
    #[arg(long = "spawn-arg", allow_hyphen_values = true, requires = "spawn")]
    pub spawn_args: Vec<String>,
    /// Seconds to wait for the spawned server's /ready.
    #[arg(long, default_value_t = 300.0, requires = "spawn")]
    pub spawn_timeout: f64,
    /// Where the spawned server's output goes (default: a file in the temp directory).
    #[arg(long, requires = "spawn")]
    pub spawn_log: Option<PathBuf>,
}

/// How one run point loads the server.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Load {
    Concurrency {
        value: usize,
    },
    Rate {
        value: f64,
        max_concurrency: Option<usize>,
    },
}

impl Load {
    /// The x coordinate of plots.
    pub fn x(&self) -> f64 {
        match *self {
            Load::Concurrency { value } => value as f64,
            Load::Rate { value, .. } => value,
        }
    }

    pub fn label(&self) -> String {
        match *self {
            Load::Concurrency { value } => format!("c={value}"),
            Load::Rate { value, .. } => format!("{value}/s"),
        }
    }
}

/// When a run point stops sending.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    Count(usize),
    Duration(Duration),
}

/// Everything a sweep needs, validated.
#[derive(Debug, Clone)]
pub struct Plan {
    pub modes: Vec<Mode>,
    pub loads: Vec<Load>,
    pub stop: Stop,
    pub warmup: usize,
    pub workload: Workload,
    pub stream: bool,
    pub timeout: Duration,
}

impl BenchArgs {
    /// Check every argument and report all problems at once.
    pub fn plan(&self) -> Result<Plan, SpecError> {
        let mut problems: Vec<String> = Vec::new();
        let modes: Vec<Mode> = self
            .granularity
            .iter()
            .filter_map(|m| keep(Mode::parse(m), &mut problems))
            .collect();
        let loads: Vec<Load> = if self.rate.is_empty() {
            if self.concurrency.contains(&0) {
                problems.push("--concurrency values must be >= 1".into());
            }
            self.concurrency
                .iter()
                .map(|&value| Load::Concurrency { value })
                .collect()
        } else {
            if self.rate.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
                problems.push("--rate values must be positive".into());
            }
            if self.max_concurrency == Some(0) {
                problems.push("--max-concurrency must be >= 1".into());
            }
            self.rate
                .iter()
                .map(|&value| Load::Rate {
                    value,
                    max_concurrency: self.max_concurrency,
                })
                .collect()
        };
        if loads.is_empty() {
            problems.push("no load level given".into());
        }
        let stop = match self.duration {
            Some(d) if d.is_finite() && d > 0.0 => Stop::Duration(Duration::from_secs_f64(d)),
            Some(_) => {
                problems.push("--duration must be positive".into());
                Stop::Count(1)
            }
            None => {
                if self.num_requests == 0 {
                    problems.push("--num-requests must be >= 1".into());
                }
                Stop::Count(self.num_requests)
            }
        };
        if !(self.timeout.is_finite() && self.timeout > 0.0) {
            problems.push("--timeout must be positive".into());
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            problems.push("--temperature must be >= 0".into());
        }
        let max_tokens = keep(LenRange::parse(&self.max_tokens), &mut problems);
        if max_tokens.is_some_and(|m| m.min == 0) {
            problems.push("--max-tokens must be >= 1".into());
        }
        let source = match &self.dataset {
            Some(path) => keep(read_dataset(path), &mut problems).map(Source::File),
            None => {
                let sizes = keep(SizeSpread::parse(&self.image_sizes), &mut problems);
                let prompt_words = keep(LenRange::parse(&self.prompt_words), &mut problems);
                let images = if self.workload == "text" {
                    0
                } else {
                    self.images_per_request
                };
                sizes
                    .zip(prompt_words)
                    .map(|(sizes, prompt_words)| Source::Synthetic {
                        sizes,
                        images,
                        prompt_words,
                    })
            }
        };
        match (source, max_tokens) {
            (Some(source), Some(max_tokens)) if problems.is_empty() => Ok(Plan {
                modes,
                loads,
                stop,
                warmup: self.warmup,
                workload: Workload {
                    source,
                    max_tokens,
                    seed: self.seed,
                },
                stream: !self.no_stream,
                timeout: Duration::from_secs_f64(self.timeout),
            }),
            _ => Err(SpecError::Invalid(problems.join("; "))),
        }
    }

    pub fn body_options(&self, model: String) -> BodyOptions {
        BodyOptions {
            model,
            stream: !self.no_stream,
            temperature: self.temperature,
            ignore_eos: self.ignore_eos,
            unique_images: !self.no_unique_images,
            unique_prompts: self.unique_prompts,
        }
    }
}

/// The value, or `None` with the error noted.
fn keep<T>(r: Result<T, SpecError>, problems: &mut Vec<String>) -> Option<T> {
    r.map_err(|e| problems.push(e.to_string())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(argv: &[&str]) -> BenchArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn a_sweep_is_modes_times_loads() {
        let p = parse(&["--granularity", "36,576,mix:paper", "--concurrency", "1,16"])
            .plan()
            .unwrap();
        assert_eq!(
            p.modes,
            vec![
                Mode::Fixed(36),
                Mode::Fixed(576),
                Mode::parse("mix:paper").unwrap()
            ]
        );
        assert_eq!(
            p.loads,
            vec![
                Load::Concurrency { value: 1 },
                Load::Concurrency { value: 16 }
            ]
        );
        assert_eq!(p.stop, Stop::Count(32));
        let r = parse(&[
            "--rate",
            "0.5,2",
            "--max-concurrency",
            "4",
            "--duration",
            "10",
        ])
        .plan()
        .unwrap();
        assert_eq!(
            r.loads[1],
            Load::Rate {
                value: 2.0,
                max_concurrency: Some(4)
            }
        );
        assert_eq!(r.stop, Stop::Duration(Duration::from_secs(10)));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = parse(&[
            "--granularity",
            "fine",
            "--concurrency",
            "0",
            "--max-tokens",
            "9-1",
            "--image-sizes",
            "big",
        ])
        .plan()
        .unwrap_err()
        .to_string();
        for needle in ["fine", "concurrency", "9-1", "big"] {
            assert!(err.contains(needle), "`{needle}` missing from: {err}");
        }
    }

    #[test]
    fn conflicting_load_kinds_are_refused_by_the_parser() {
        assert!(Cli::try_parse_from(["bench", "--rate", "1", "--concurrency", "2"]).is_err());
        assert!(
            Cli::try_parse_from(["bench", "--spawn-model", "x"]).is_err(),
            "needs --spawn"
        );
    }

    #[test]
    fn the_api_key_never_reaches_the_report() {
        let a = parse(&["--api-key", "sekrit"]);
        assert!(!serde_json::to_string(&a).unwrap().contains("sekrit"));
    }
}
