//! The load-adaptive granularity controller: under sustained overload it lowers the finest
//! granularity that `auto` images may use (the *ceiling*), and gives the detail back when load falls.
//!
//! [`Controller`] is a plain state machine over observed figures: latency samples (TTFT or queue
//! wait, one per request), the ages of requests still waiting for theirs, KV usage and the number of
//! waiting sequences. It is driven by explicit instants so that tests replay synthetic traces
//! without a clock, a model or tokio. [`CeilingDriver`] is the thin part the scheduler thread owns:
//! it remembers when each request was admitted and turns the worker's events into samples.
//!
//! Why hysteresis: a lower ceiling only pays off once the backlog admitted at the old one drains, so
//! a controller that reacts to every sample would walk down to the floor on one burst and back up
//! the moment the queue empties. Here a change needs the signal to stay beyond its threshold for a
//! while, changes are spaced by a cooldown, the up-threshold sits well below the target (the band),
//! and a step up that is undone quickly makes the next step up wait longer.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// What the controller holds to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Time from the scheduler picking a request up to its first token (image encoding, routing,
    /// waiting for a slot and prefill). Excludes HTTP parsing and preprocessing.
    #[default]
    Ttft,
    /// Time from the scheduler picking a request up until its first forward step.
    QueueWait,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Ttft => "ttft",
            Signal::QueueWait => "queue_wait",
        }
    }
}

/// `[granularity.controller]`: off by default. Times are in milliseconds and fractions in percent
/// so the engine config stays exactly comparable.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    pub enabled: bool,
    pub signal: Signal,
    /// The latency target for the signal's percentile.
    pub target_ms: u64,
    /// Which percentile of the window is held to the target (1..=100).
    pub percentile: u8,
    /// Sliding window of samples.
    pub window_ms: u64,
    /// The lowest ceiling allowed; must be one of the model's granularities.
    pub floor: u32,
    /// How long the signal must stay above the target before the ceiling steps down.
    pub step_down_after_ms: u64,
    /// How long the signal must stay below the band before the ceiling steps up.
    pub step_up_after_ms: u64,
    /// Least time between two changes.
    pub cooldown_ms: u64,
    /// The band: the ceiling steps up only while the signal is below this percentage of the target.
    pub step_up_below_pct: u8,
    /// KV usage (percent) at or above which, with sequences waiting, counts as overload.
    pub kv_high_water_pct: u8,
    /// Samples (finished and pending) needed before a latency above the target counts.
    pub min_samples: usize,
    /// Whether explicit choices (`detail`, `granularity`) are held under the ceiling too.
    pub apply_to_explicit: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            signal: Signal::Ttft,
            target_ms: 2_000,
            percentile: 90,
            window_ms: 10_000,
            floor: 36,
            step_down_after_ms: 1_000,
            step_up_after_ms: 5_000,
            cooldown_ms: 2_000,
            step_up_below_pct: 50,
            kv_high_water_pct: 95,
            min_samples: 3,
            apply_to_explicit: false,
        }
    }
}

impl ControllerConfig {
    /// Problems with the values alone (the floor is checked against the model in [`Controller::new`]).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let positive = [("target_ms", self.target_ms), ("window_ms", self.window_ms)];
        for (name, v) in positive {
            if v == 0 {
                p.push(format!("controller.{name} must be positive"));
            }
        }
        if !(1..=100).contains(&self.percentile) {
            p.push("controller.percentile must be between 1 and 100".to_owned());
        }
        if !(1..=100).contains(&self.step_up_below_pct) {
            p.push("controller.step_up_below_pct must be between 1 and 100".to_owned());
        }
        if self.kv_high_water_pct == 0 || self.kv_high_water_pct > 101 {
            p.push("controller.kv_high_water_pct must be between 1 and 101 (101 = off)".to_owned());
        }
        p
    }
}

/// The ceiling handed to the model runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GranularityCeiling {
    /// Finest granularity allowed (one of the model's candidates).
    pub max: u32,
    /// Whether `detail` and request-level `granularity` are held under it too.
    pub explicit_too: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControllerError {
    #[error("controller floor {floor} is not one of the model's granularities {candidates:?}")]
    FloorNotCandidate { floor: u32, candidates: Vec<u32> },
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// Load figures sampled at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Load<'a> {
    /// Seconds waited so far by requests without a sample yet: lower bounds of their latency, so a
    /// stalled queue shows up before anything finishes.
    pub pending_s: &'a [f64],
    /// Sequences waiting for a slot or KV blocks.
    pub waiting: usize,
    /// Fraction of KV blocks in use, 0..=1.
    pub kv_usage: f64,
}

/// How the load compares with the target at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    Over,
    /// Between the band and the target: hold.
    Band,
    Under,
}

/// Never hold more samples than this, whatever the window (bounds memory under a flood).
const MAX_SAMPLES: usize = 16_384;
/// The longest a reverted step up can multiply the up-wait by.
const MAX_UP_PENALTY: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Down,
    Up,
}

/// The state machine. Levels are the candidates from the floor up; it starts at the top.
#[derive(Debug, Clone)]
pub struct Controller {
    cfg: ControllerConfig,
    levels: Vec<u32>,
    level: usize,
    /// `(when, seconds)`, oldest first.
    samples: VecDeque<(Instant, f64)>,
    over_since: Option<Instant>,
    under_since: Option<Instant>,
    last_change: Option<(Instant, Change)>,
    up_penalty: u32,
}

impl Controller {
    pub fn new(cfg: ControllerConfig, candidates: &[u32]) -> Result<Self, ControllerError> {
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(ControllerError::Invalid(problems));
        }
        if !candidates.contains(&cfg.floor) {
            return Err(ControllerError::FloorNotCandidate {
                floor: cfg.floor,
                candidates: candidates.to_vec(),
            });
        }
        let mut levels: Vec<u32> = candidates
            .iter()
            .copied()
            .filter(|&g| g >= cfg.floor)
            .collect();
        levels.sort_unstable();
        levels.dedup();
        Ok(Self {
            level: levels.len() - 1,
            levels,
            cfg,
            samples: VecDeque::new(),
            over_since: None,
            under_since: None,
            last_change: None,
            up_penalty: 1,
        })
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.cfg
    }

    /// The current ceiling.
    pub fn ceiling(&self) -> u32 {
        self.levels[self.level]
    }

    pub fn is_at_top(&self) -> bool {
        self.level + 1 == self.levels.len()
    }

    /// One finished latency sample (seconds), observed at `at`.
    pub fn record(&mut self, at: Instant, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((at, seconds));
    }

    /// The configured percentile over the window's samples and the pending ages, with the number
    /// of values it was taken over. `None` when there is nothing to measure.
    pub fn signal(&mut self, now: Instant, pending_s: &[f64]) -> Option<(f64, usize)> {
        let window = Duration::from_millis(self.cfg.window_ms);
        while let Some(&(at, _)) = self.samples.front() {
            if now.saturating_duration_since(at) > window {
                self.samples.pop_front();
            } else {
                break;
            }
        }
        let mut values: Vec<f64> = self.samples.iter().map(|&(_, s)| s).collect();
        values.extend(pending_s.iter().copied().filter(|s| s.is_finite()));
        if values.is_empty() {
            return None;
        }
        values.sort_unstable_by(f64::total_cmp);
        // Nearest rank: the smallest value with at least `percentile`% of the values at or below it.
        let rank = (f64::from(self.cfg.percentile) / 100.0 * values.len() as f64).ceil() as usize;
        Some((values[rank.clamp(1, values.len()) - 1], values.len()))
    }

    /// Classifies the load at `now`.
    pub fn pressure(&mut self, now: Instant, load: &Load<'_>) -> Pressure {
        let target = self.cfg.target_ms as f64 / 1000.0;
        let kv_high = load.kv_usage * 100.0 >= f64::from(self.cfg.kv_high_water_pct);
        if kv_high && load.waiting > 0 {
            return Pressure::Over;
        }
        match self.signal(now, load.pending_s) {
            Some((p, n)) if p > target && n >= self.cfg.min_samples => Pressure::Over,
            Some((p, _)) if p >= target * f64::from(self.cfg.step_up_below_pct) / 100.0 => {
                Pressure::Band
            }
            _ if kv_high => Pressure::Band,
            _ => Pressure::Under,
        }
    }

    /// Advances the state machine; returns the new ceiling when it changed.
    pub fn tick(&mut self, now: Instant, load: &Load<'_>) -> Option<u32> {
        let pressure = self.pressure(now, load);
        match pressure {
            Pressure::Over => {
                self.under_since = None;
                self.over_since.get_or_insert(now);
            }
            Pressure::Under => {
                self.over_since = None;
                self.under_since.get_or_insert(now);
            }
            Pressure::Band => {
                self.over_since = None;
                self.under_since = None;
            }
        }
        let cooled = self.last_change.is_none_or(|(at, _)| {
            now.saturating_duration_since(at) >= Duration::from_millis(self.cfg.cooldown_ms)
        });
        if !cooled {
            return None;
        }
        let held = |since: Option<Instant>, ms: u64| {
            since.is_some_and(|s| now.saturating_duration_since(s) >= Duration::from_millis(ms))
        };
        if self.level > 0 && held(self.over_since, self.cfg.step_down_after_ms) {
            // A step up undone within one window: the level above is not sustainable yet, so the
            // next attempt waits longer. Otherwise this is fresh overload and the penalty resets.
            self.up_penalty = match self.last_change {
                Some((at, Change::Up))
                    if now.saturating_duration_since(at)
                        < Duration::from_millis(self.cfg.window_ms) =>
                {
                    (self.up_penalty * 2).min(MAX_UP_PENALTY)
                }
                _ => 1,
            };
            return Some(self.change(now, Change::Down));
        }
        let up_after = self
            .cfg
            .step_up_after_ms
            .saturating_mul(self.up_penalty.into());
        if !self.is_at_top() && held(self.under_since, up_after) {
            return Some(self.change(now, Change::Up));
        }
        None
    }

    fn change(&mut self, now: Instant, change: Change) -> u32 {
        match change {
            Change::Down => self.level -= 1,
            Change::Up => self.level += 1,
        }
        self.last_change = Some((now, change));
        // Samples taken under the old ceiling say nothing about the new one; pending requests
        // still count (the backlog is real). Each further change needs its own sustained evidence.
        self.samples.clear();
        self.over_since = None;
        self.under_since = None;
        self.ceiling()
    }
}

/// What the scheduler knows about one admitted request, for the signal.
#[derive(Debug, Clone, Copy)]
struct Pending {
    picked_up: Instant,
}

/// The scheduler thread's side: per-request bookkeeping feeding a [`Controller`], rate-limited ticks.
#[derive(Debug)]
pub(crate) struct CeilingDriver {
    controller: Controller,
    /// Requests (by the worker's key) whose sample is not in yet.
    pending: HashMap<u64, Pending>,
    last_tick: Option<Instant>,
}

/// Least time between two evaluations; also how long the idle scheduler sleeps between ticks while
/// the ceiling is below the top.
pub(crate) const TICK: Duration = Duration::from_millis(100);

impl CeilingDriver {
    pub fn new(controller: Controller) -> Self {
        Self {
            controller,
            pending: HashMap::new(),
            last_tick: None,
        }
    }

    pub fn ceiling(&self) -> GranularityCeiling {
        GranularityCeiling {
            max: self.controller.ceiling(),
            explicit_too: self.controller.config().apply_to_explicit,
        }
    }

    /// Whether ticks are still needed while nothing else happens (the ceiling must climb back).
    pub fn needs_ticks(&self) -> bool {
        !self.controller.is_at_top()
    }

    pub fn admitted(&mut self, key: u64, picked_up: Instant) {
        self.pending.insert(key, Pending { picked_up });
    }

    /// The request took part in a forward step (queue-wait signal).
    pub fn scheduled(&mut self, key: u64, now: Instant) {
        if self.controller.config().signal == Signal::QueueWait {
            self.complete(key, now);
        }
    }

    /// The request produced its first token (TTFT signal).
    pub fn first_token(&mut self, key: u64, now: Instant) {
        if self.controller.config().signal == Signal::Ttft {
            self.complete(key, now);
        }
    }

    /// The request ended (finished, failed or cancelled) before a sample: no sample.
    pub fn forget(&mut self, key: u64) {
        self.pending.remove(&key);
    }

    fn complete(&mut self, key: u64, now: Instant) {
        if let Some(p) = self.pending.remove(&key) {
            let waited = now.saturating_duration_since(p.picked_up).as_secs_f64();
            self.controller.record(now, waited);
        }
    }

    /// Evaluates at most once per [`TICK`]; returns the new ceiling when it changed.
    pub fn tick(&mut self, now: Instant, waiting: usize, kv_usage: f64) -> Option<u32> {
        if self
            .last_tick
            .is_some_and(|t| now.saturating_duration_since(t) < TICK)
        {
            return None;
        }
        self.last_tick = Some(now);
        let pending: Vec<f64> = self
            .pending
            .values()
            .map(|p| now.saturating_duration_since(p.picked_up).as_secs_f64())
            .collect();
        let load = Load {
            pending_s: &pending,
            waiting,
            kv_usage,
        };
        self.controller.tick(now, &load)
    }
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
