//! `grain bench`: a load generator for OpenAI-compatible multimodal chat endpoints.
//!
//! A run is a sweep: every granularity mode (router, fixed levels, `detail` mixes, a paper-like mix)
//! at every load level (closed-loop concurrency or Poisson rate). Each run point warms up, sends its
//! measured requests with streaming, and summarises TTFT, inter-token latency, end-to-end latency,
//! throughput, token counts (prompt, visual, completion) and errors; with a Grain server it also
//! reads where the server spent its time from `/metrics`. Workloads are seeded, so a peer server or
//! a later commit gets exactly the same requests.

#![forbid(unsafe_code)]

mod args;
mod client;
mod driver;
mod error;
mod image;
mod metrics;
mod mode;
mod plot;
mod report;
mod spawn;
mod sse;
mod stats;
mod workload;

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};

pub use args::{BenchArgs, Load};
pub use client::RequestRecord;
pub use error::{RequestError, SpecError};
pub use metrics::ServerDelta;
pub use mode::{Mode, PAPER_MIX};
pub use report::{PointReport, Report};
pub use stats::{Dist, Summary};

use crate::client::{v1_root, Client};
use crate::driver::Bodies;
use crate::metrics::Scrape;

/// Run `grain bench` with parsed arguments: the sweep, the table on stdout, and the optional JSON
/// report and plots.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = args.plan()?;
    if let Some(path) = &args.dump_workload {
        return dump_workload(&args, &plan, path);
    }
    // Two workers: enough to keep hundreds of streams moving, few enough to leave a small machine's
    // cores to the server under test.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run_sweep(args, plan))
}

fn dump_workload(
    args: &BenchArgs,
    plan: &args::Plan,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let n = match plan.stop {
        args::Stop::Count(n) => n,
        args::Stop::Duration(_) => {
            anyhow::bail!("--dump-workload needs --num-requests, not --duration")
        }
    };
    let opts = args.body_options(String::new());
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for i in 0..n as u64 {
        let req = plan.workload.request(i, 0, &opts)?;
        serde_json::to_writer(&mut out, &req)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    println!("wrote {n} requests to {}", path.display());
    Ok(())
}

/// `http://h:p/v1` → `http://h:p` (where /metrics lives).
fn server_root(base: &str) -> String {
    v1_root(base).trim_end_matches("/v1").to_string()
}

async fn first_model(client: &Client, base: &str) -> anyhow::Result<String> {
    let url = format!("{}/models", v1_root(base));
    let text = client
        .http()
        .get(&url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()?
        .text()
        .await?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("GET {url}: not JSON"))?;
    v["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("GET {url} listed no model; pass --model"))
}

async fn scrape(client: &Client, root: &str) -> Option<Scrape> {
    let r = client
        .http()
        .get(format!("{root}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    Some(Scrape::parse(&r.text().await.ok()?))
}

async fn run_sweep(args: BenchArgs, plan: args::Plan) -> anyhow::Result<()> {
    let started_at = report::rfc3339_utc(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    let probe = Client::new(&args.url, args.api_key.clone(), plan.timeout)?;
    let spawned = match &args.spawn {
        Some(bin) => {
            eprintln!("starting {} serve …", bin.display());
            let s = spawn::spawn(
                bin,
                args.spawn_model.as_deref(),
                args.spawn_port,
                &args.spawn_args,
                Duration::from_secs_f64(args.spawn_timeout),
                args.spawn_log.as_deref(),
                probe.http(),
            )
            .await?;
            eprintln!("server ready at {} (log: {})", s.base_url, s.log.display());
            Some(s)
        }
        None => None,
    };
    let base = spawned
        .as_ref()
        .map_or_else(|| args.url.clone(), |s| s.base_url.clone());
    let client = Client::new(&base, args.api_key.clone(), plan.timeout)?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => first_model(&client, &base).await?,
    };
    let label = args.label.clone().unwrap_or_else(|| model.clone());
    let root = server_root(&base);
    let machine = report::Machine::detect();
    eprintln!(
        "benchmarking {label} at {base} (model {model}) on {} CPUs",
        machine.cpus
    );

    let workload = std::sync::Arc::new(plan.workload.clone());
    let opts = std::sync::Arc::new(args.body_options(model.clone()));
    let mut points = Vec::new();
    for mode in &plan.modes {
        for &load in &plan.loads {
            let bodies = Bodies {
                workload: workload.clone(),
                mode: mode.clone(),
                opts: opts.clone(),
                salt: points.len() as u64,
            };
            if let Some(err) =
                driver::warm_up(&client, &bodies, load, plan.warmup, plan.stream).await?
            {
                eprintln!(
                    "warning: {mode} {}: every warm-up request failed ({err}); measuring anyway",
                    load.label()
                );
            }
            let before = if args.no_server_metrics {
                None
            } else {
                scrape(&client, &root).await
            };
            let pb =
                driver::progress_bar(args.quiet, plan.stop, format!("{mode} {}", load.label()));
            let run = driver::measure(&client, &bodies, load, plan.stop, plan.stream, &pb).await?;
            pb.finish_and_clear();
            let after = if before.is_some() {
                scrape(&client, &root).await
            } else {
                None
            };
            let summary = Summary::from_records(&run.records, run.duration_s);
            let server = before
                .zip(after)
                .and_then(|(b, a)| ServerDelta::between(&b, &a));
            let prefill = server
                .as_ref()
                .and_then(|s| s.prefill_s_per_request(summary.completed));
            eprintln!(
                "{:>12} {:>8}: {} ok, {} failed, {:.1} output tok/s, e2e p50 {}",
                mode.to_string(),
                load.label(),
                summary.completed,
                summary.failed,
                summary.output_tokens_per_s,
                summary
                    .e2e_s
                    .map_or_else(|| "-".into(), |d| format!("{:.3} s", d.p50)),
            );
            points.push(PointReport {
                mode: mode.to_string(),
                load,
                summary,
                server,
                server_prefill_s_per_request: prefill,
                requests: run.records,
            });
        }
    }

    println!(
        "\n{label}: {} run points, {} measured requests each\n",
        points.len(),
        match plan.stop {
            args::Stop::Count(n) => n.to_string(),
            args::Stop::Duration(d) => format!("{:.0} s of", d.as_secs_f64()),
        }
    );
    print!("{}", report::table(&points));
    let report = Report {
        tool: "grain bench",
        version: env!("CARGO_PKG_VERSION"),
        started_at,
        machine,
        url: base,
        model,
        label: label.clone(),
        spawned: spawned.as_ref().map(|s| s.command.clone()),
        settings: args.clone(),
        points,
    };
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(file), &report)?;
        println!("\nwrote {}", path.display());
    }
    if let Some(dir) = &args.plot {
        for f in plot::write_plots(dir, &report.points, &format!(" — {label}"))? {
            println!("wrote {}", f.display());
        }
    }
    drop(spawned);
    Ok(())
}
