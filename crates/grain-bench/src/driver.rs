//! Runs one run point: warm-up, then the measured requests under closed-loop concurrency or an
//! open-loop Poisson arrival process, with a progress bar.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Semaphore;

use crate::args::{Load, Stop};
use crate::client::{Client, RequestRecord};
use crate::error::SpecError;
use crate::mode::Mode;
use crate::workload::{BodyOptions, Workload};

/// Warm-up requests use indices far above any measured one, so they never repeat a measured request.
const WARMUP_INDEX_BASE: u64 = 1 << 40;

/// Everything one run point needs to build its requests.
#[derive(Clone)]
pub struct Bodies {
    pub workload: Arc<Workload>,
    pub mode: Mode,
    pub opts: Arc<BodyOptions>,
    /// Distinguishes this run point's images from every other's.
    pub salt: u64,
}

impl Bodies {
    fn build(&self, index: u64) -> Result<Vec<u8>, SpecError> {
        let choice = self.mode.choose(&mut self.workload.choice_rng(index));
        self.workload.body(index, self.salt, choice, &self.opts)
    }

    /// Build on the blocking pool: PNG encoding must not stall the runtime that times responses.
    async fn build_async(&self, index: u64) -> Result<Vec<u8>, SpecError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.build(index))
            .await
            .map_err(|e| SpecError::Invalid(format!("building request {index}: {e}")))?
    }
}

/// Where the measured requests' bodies come from: all built before the clock starts (count mode),
/// or built just before each is sent (duration mode: the count is unknown in advance).
#[derive(Clone)]
enum BodySource {
    Prebuilt(Arc<Vec<Vec<u8>>>),
    Lazy(Bodies),
}

impl BodySource {
    async fn get(&self, index: u64) -> Result<Vec<u8>, SpecError> {
        match self {
            BodySource::Prebuilt(v) => Ok(v[index as usize].clone()),
            BodySource::Lazy(b) => b.build_async(index).await,
        }
    }
}

/// The measured requests of one run point and the wall time of the measured phase.
pub struct PointRun {
    pub records: Vec<RequestRecord>,
    pub duration_s: f64,
}

/// Send the warm-up requests at the point's load and drop their results. Returns the first error
/// when every one failed: the caller warns (the measured requests will likely fail the same way and
/// be counted as errors, while the other run points of the sweep still run).
pub async fn warm_up(
    client: &Client,
    bodies: &Bodies,
    load: Load,
    n: usize,
    stream: bool,
) -> Result<Option<String>, SpecError> {
    if n == 0 {
        return Ok(None);
    }
    let mut warm = bodies.clone();
    warm.salt = bodies.salt.wrapping_add(WARMUP_INDEX_BASE);
    let prebuilt = build_all(&warm, WARMUP_INDEX_BASE, n).await?;
    let in_flight = match load {
        Load::Concurrency { value } => value,
        Load::Rate {
            max_concurrency, ..
        } => max_concurrency.unwrap_or(n),
    };
    let run = closed_loop(
        client,
        BodySource::Prebuilt(Arc::new(prebuilt)),
        in_flight.min(n),
        Stop::Count(n),
        stream,
        None,
    )
    .await;
    let all_failed = run.records.iter().all(|r| r.error.is_some());
    Ok(run
        .records
        .iter()
        .find_map(|r| r.error.as_ref())
        .filter(|_| all_failed)
        .map(|e| e.to_string()))
}

/// Run the measured phase of one point.
pub async fn measure(
    client: &Client,
    bodies: &Bodies,
    load: Load,
    stop: Stop,
    stream: bool,
    progress: &ProgressBar,
) -> Result<PointRun, SpecError> {
    let source = match stop {
        Stop::Count(n) => BodySource::Prebuilt(Arc::new(build_all(bodies, 0, n).await?)),
        Stop::Duration(_) => BodySource::Lazy(bodies.clone()),
    };
    Ok(match load {
        Load::Concurrency { value } => {
            closed_loop(client, source, value, stop, stream, Some(progress)).await
        }
        Load::Rate {
            value,
            max_concurrency,
        } => {
            let seed = bodies.workload.seed ^ bodies.salt.rotate_left(32);
            open_loop(
                client,
                source,
                value,
                max_concurrency,
                stop,
                stream,
                seed,
                progress,
            )
            .await
        }
    })
}

/// Bodies `first..first+n`, one after another on the blocking pool, before the clock starts.
async fn build_all(bodies: &Bodies, first: u64, n: usize) -> Result<Vec<Vec<u8>>, SpecError> {
    let b = bodies.clone();
    tokio::task::spawn_blocking(move || {
        (0..n as u64)
            .map(|i| b.build(first + i))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| SpecError::Invalid(format!("building requests: {e}")))?
}

fn failed_build(index: u64, e: SpecError) -> RequestRecord {
    RequestRecord {
        index,
        error: Some(crate::error::RequestError::Protocol(format!(
            "could not build the request: {e}"
        ))),
        ..RequestRecord::default()
    }
}

/// `concurrency` workers, each sending its next request as soon as its previous one finished.
async fn closed_loop(
    client: &Client,
    source: BodySource,
    concurrency: usize,
    stop: Stop,
    stream: bool,
    progress: Option<&ProgressBar>,
) -> PointRun {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = match stop {
        Stop::Duration(d) => Some(start + d),
        Stop::Count(_) => None,
    };
    let limit = match stop {
        Stop::Count(n) => n as u64,
        Stop::Duration(_) => u64::MAX,
    };
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (client, source, next, progress) = (
            client.clone(),
            source.clone(),
            next.clone(),
            progress.cloned(),
        );
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let rec = match source.get(i).await {
                    Ok(body) => {
                        let sent_at = start.elapsed().as_secs_f64();
                        let mut rec = client.send(i, body, stream).await;
                        rec.sent_at_s = sent_at;
                        rec
                    }
                    Err(e) => failed_build(i, e),
                };
                out.push(rec);
                if let Some(p) = &progress {
                    p.inc(1);
                }
            }
            out
        }));
    }
    collect(workers, start).await
}

/// Requests arrive as a Poisson process of `rate` per second (seeded), each sent on arrival unless
/// `max_concurrency` are already in flight, in which case it waits for a slot.
#[allow(clippy::too_many_arguments)]
async fn open_loop(
    client: &Client,
    source: BodySource,
    rate: f64,
    max_concurrency: Option<usize>,
    stop: Stop,
    stream: bool,
    seed: u64,
    progress: &ProgressBar,
) -> PointRun {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let slots = max_concurrency.map(|n| Arc::new(Semaphore::new(n)));
    let start = Instant::now();
    let mut arrival = 0.0f64;
    let mut tasks = Vec::new();
    for i in 0u64.. {
        match stop {
            Stop::Count(n) if i >= n as u64 => break,
            Stop::Duration(d) if arrival >= d.as_secs_f64() => break,
            _ => {}
        }
        tokio::time::sleep_until((start + Duration::from_secs_f64(arrival)).into()).await;
        let permit = match &slots {
            Some(s) => Some(
                s.clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed"),
            ),
            None => None,
        };
        let (client, source, progress) = (client.clone(), source.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let rec = match source.get(i).await {
                Ok(body) => {
                    let sent_at = start.elapsed().as_secs_f64();
                    let mut rec = client.send(i, body, stream).await;
                    rec.sent_at_s = sent_at;
                    rec
                }
                Err(e) => failed_build(i, e),
            };
            progress.inc(1);
            vec![rec]
        }));
        // Exponential gap: inverse CDF of 1 - U, U in [0, 1), so the log never sees 0.
        let u: f64 = rng.random();
        arrival += -(1.0 - u).ln() / rate;
    }
    collect(tasks, start).await
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<Vec<RequestRecord>>>,
    start: Instant,
) -> PointRun {
    let mut records = Vec::new();
    for t in tasks {
        match t.await {
            Ok(r) => records.extend(r),
            // A worker only panics on a bug; its requests are lost but the others still count.
            Err(e) => eprintln!("grain bench: a load task failed: {e}"),
        }
    }
    records.sort_by_key(|r| r.index);
    let last_end = records
        .iter()
        .map(|r| r.sent_at_s + r.e2e_s)
        .fold(0.0, f64::max);
    let duration_s = if records.is_empty() {
        start.elapsed().as_secs_f64()
    } else {
        last_end
    };
    PointRun {
        records,
        duration_s,
    }
}

/// A progress bar for one run point (hidden when `quiet` or when stderr is not a terminal).
pub fn progress_bar(quiet: bool, stop: Stop, message: String) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = match stop {
        Stop::Count(n) => ProgressBar::new(n as u64),
        Stop::Duration(_) => ProgressBar::new_spinner(),
    };
    let template = match stop {
        Stop::Count(_) => "{msg:>24} [{bar:30}] {pos}/{len} requests, {elapsed}",
        Stop::Duration(_) => "{msg:>24} {spinner} {pos} requests, {elapsed}",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(message);
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}
