use super::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CANDIDATES: [u32; 5] = [36, 72, 144, 288, 576];

/// Target 1 s at p90 over 5 s; down after 1 s above, up after 3 s below 0.5 s; 1 s cooldown.
fn cfg() -> ControllerConfig {
    ControllerConfig {
        enabled: true,
        signal: Signal::Ttft,
        target_ms: 1_000,
        percentile: 90,
        window_ms: 5_000,
        floor: 72,
        step_down_after_ms: 1_000,
        step_up_after_ms: 3_000,
        cooldown_ms: 1_000,
        step_up_below_pct: 50,
        kv_high_water_pct: 95,
        min_samples: 3,
        apply_to_explicit: false,
    }
}

fn controller() -> Controller {
    Controller::new(cfg(), &CANDIDATES).unwrap()
}

/// A trace replayed at 10 ticks per second, one finished sample per tick from `latency(t, ceiling)`
/// (`None`: no traffic). Returns every change as `(seconds since start, new ceiling)`.
fn replay(
    c: &mut Controller,
    t0: Instant,
    from_s: f64,
    to_s: f64,
    mut latency: impl FnMut(f64, u32) -> Option<f64>,
) -> Vec<(f64, u32)> {
    let mut changes = Vec::new();
    let mut k = (from_s * 10.0).round() as u64;
    while (k as f64) / 10.0 < to_s {
        let t = k as f64 / 10.0;
        let now = t0 + Duration::from_millis(k * 100);
        if let Some(s) = latency(t, c.ceiling()) {
            c.record(now, s);
        }
        if let Some(g) = c.tick(now, &Load::default()) {
            changes.push((t, g));
        }
        k += 1;
    }
    changes
}

#[test]
fn starts_at_the_top_and_stays_there_when_idle() {
    let mut c = controller();
    assert_eq!(c.ceiling(), 576);
    let t0 = Instant::now();
    assert!(replay(&mut c, t0, 0.0, 60.0, |_, _| None).is_empty());
    assert_eq!(c.ceiling(), 576);
}

#[test]
fn steps_down_under_sustained_overload_and_never_below_the_floor() {
    let mut c = controller();
    let t0 = Instant::now();
    let changes = replay(&mut c, t0, 0.0, 60.0, |_, _| Some(3.0));
    let ceilings: Vec<u32> = changes.iter().map(|&(_, g)| g).collect();
    // One level at a time, down to the floor (72) and not to 36.
    assert_eq!(ceilings, vec![288, 144, 72], "{changes:?}");
    // The first step needs the signal above target for step_down_after (1 s) once there are
    // min_samples (3) samples: not before t = 1.0 + 0.2.
    assert!(changes[0].0 >= 1.2, "{changes:?}");
    // Later steps are spaced by at least the cooldown and the hold (1 s each).
    for w in changes.windows(2) {
        assert!(w[1].0 - w[0].0 >= 1.0, "{changes:?}");
    }
    assert_eq!(c.ceiling(), 72);
}

#[test]
fn a_brief_spike_does_not_step_down() {
    let t0 = Instant::now();
    // Two 3 s outliers among 0.7 s samples: under 10% of a full window, so p90 never moves.
    let mut c = controller();
    let changes = replay(&mut c, t0, 0.0, 30.0, |t, _| {
        Some(if (10.0..10.2).contains(&t) { 3.0 } else { 0.7 })
    });
    assert!(changes.is_empty(), "{changes:?}");

    // 0.6 s of overload with a window shorter than the hold: never above target for 1 s.
    let mut short = Controller::new(
        ControllerConfig {
            window_ms: 500,
            ..cfg()
        },
        &CANDIDATES,
    )
    .unwrap();
    let changes = replay(&mut short, t0, 0.0, 30.0, |t, _| {
        Some(if t < 0.6 { 3.0 } else { 0.7 })
    });
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(short.ceiling(), 576);
}

#[test]
fn holds_within_the_band() {
    let mut c = controller();
    let t0 = Instant::now();
    // Overloaded above 144; at 144 latencies sit between 50% and 100% of the target.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let changes = replay(&mut c, t0, 0.0, 120.0, |_, ceiling| {
        Some(if ceiling > 144 {
            3.0
        } else {
            rng.random_range(0.55..0.95)
        })
    });
    let ceilings: Vec<u32> = changes.iter().map(|&(_, g)| g).collect();
    assert_eq!(ceilings, vec![288, 144], "{changes:?}");
    assert_eq!(c.ceiling(), 144);
}

#[test]
fn returns_to_the_top_within_the_configured_time_when_load_drops() {
    let mut c = controller();
    let t0 = Instant::now();
    let down = replay(&mut c, t0, 0.0, 20.0, |_, _| Some(3.0));
    assert_eq!(c.ceiling(), 72, "{down:?}");
    // Load stops at t = 20 s.
    let up = replay(&mut c, t0, 20.0, 60.0, |_, _| None);
    let ceilings: Vec<u32> = up.iter().map(|&(_, g)| g).collect();
    assert_eq!(ceilings, vec![144, 288, 576], "{up:?}");
    // Bound from the knobs: the last samples leave the window (5 s), then three levels each need
    // step_up_after (3 s) below the band, plus a tick of slack per level.
    let bound = 20.0 + 5.0 + 3.0 * (3.0 + 0.2);
    let (t_top, _) = up[2];
    assert!(t_top <= bound, "top reached at {t_top} s, bound {bound} s");
}

#[test]
fn a_noisy_trace_does_not_oscillate() {
    // A plant whose p90 sustains only at 288: 576 is overloaded, 288 sits in the band with noise
    // and rare spikes, 144 is well under. A controller without hysteresis would bounce.
    for seed in 0..5 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut c = controller();
        let t0 = Instant::now();
        let changes = replay(&mut c, t0, 0.0, 300.0, |_, ceiling| {
            let base = match ceiling {
                576 => 1.6,
                288 => 0.8,
                _ => 0.4,
            };
            let spike = if rng.random_bool(0.03) { 1.0 } else { 0.0 };
            Some(base + rng.random_range(-0.2..0.15) + spike)
        });
        let reversals = changes
            .windows(3)
            .filter(|w| (w[0].1 < w[1].1) != (w[1].1 < w[2].1))
            .count();
        assert!(changes.len() <= 4, "seed {seed}: {changes:?}");
        assert!(reversals <= 2, "seed {seed}: {changes:?}");
        assert!(
            [144, 288].contains(&c.ceiling()),
            "seed {seed}: {changes:?}"
        );
    }
}

#[test]
fn a_reverted_step_up_makes_the_next_one_wait_longer() {
    // 576 is always overloaded, 288 always idle: the controller must probe upward ever more slowly.
    let mut c = controller();
    let t0 = Instant::now();
    let changes = replay(&mut c, t0, 0.0, 200.0, |_, ceiling| {
        Some(if ceiling == 576 { 3.0 } else { 0.1 })
    });
    let ups: Vec<f64> = changes
        .windows(2)
        .filter(|w| w[1].1 > w[0].1)
        .map(|w| w[1].0 - w[0].0)
        .collect();
    assert!(ups.len() >= 3, "{changes:?}");
    // Time spent at 288 before each probe: 3 s, then 6 s, 12 s, 24 s (capped at 8×).
    assert!(ups[1] >= 2.0 * 3.0 - 0.01, "{ups:?}");
    assert!(ups[2] >= 4.0 * 3.0 - 0.01, "{ups:?}");
    assert!(ups.iter().all(|&d| d <= 8.0 * 3.0 + 0.5), "{ups:?}");
}

#[test]
fn kv_pressure_with_waiting_sequences_counts_as_overload() {
    let mut c = controller();
    let t0 = Instant::now();
    let full = Load {
        pending_s: &[],
        waiting: 4,
        kv_usage: 0.99,
    };
    let mut changed = None;
    for k in 0..30u64 {
        if let Some(g) = c.tick(t0 + Duration::from_millis(k * 100), &full) {
            changed = Some((k, g));
            break;
        }
    }
    assert_eq!(changed.map(|(_, g)| g), Some(288));
    assert!(changed.unwrap().0 >= 10);

    // A full cache with nobody waiting is busy, not overloaded: hold, don't climb.
    let mut c = controller();
    let busy = Load { waiting: 0, ..full };
    assert_eq!(c.pressure(t0, &busy), Pressure::Band);
}

#[test]
fn pending_ages_reveal_a_stalled_queue_before_anything_finishes() {
    let mut c = controller();
    let t0 = Instant::now();
    let stuck = [2.0, 2.5, 3.0, 4.0];
    let load = Load {
        pending_s: &stuck,
        waiting: 4,
        kv_usage: 0.2,
    };
    assert_eq!(c.pressure(t0, &load), Pressure::Over);
    assert_eq!(c.tick(t0, &load), None);
    assert_eq!(c.tick(t0 + Duration::from_millis(1000), &load), Some(288));
}

#[test]
fn too_few_samples_do_not_step_down() {
    let mut c = controller();
    let t0 = Instant::now();
    c.record(t0, 9.0);
    c.record(t0, 9.0);
    assert_eq!(c.pressure(t0, &Load::default()), Pressure::Band);
    c.record(t0, 9.0);
    assert_eq!(c.pressure(t0, &Load::default()), Pressure::Over);
}

#[test]
fn percentile_is_nearest_rank() {
    let mut c = controller();
    let t0 = Instant::now();
    // 1..=10: p90 by nearest rank is the 9th value.
    let values: Vec<f64> = (1..=10).map(f64::from).collect();
    assert_eq!(c.signal(t0, &values), Some((9.0, 10)));
    assert_eq!(c.signal(t0, &[]), None);
    // Samples older than the window are gone.
    c.record(t0, 100.0);
    let later = t0 + Duration::from_millis(5_001);
    assert_eq!(c.signal(later, &[1.0]), Some((1.0, 1)));
}

#[test]
fn invalid_configs_are_refused() {
    let bad_floor = ControllerConfig {
        floor: 100,
        ..cfg()
    };
    assert!(matches!(
        Controller::new(bad_floor, &CANDIDATES),
        Err(ControllerError::FloorNotCandidate { floor: 100, .. })
    ));
    let bad = ControllerConfig {
        percentile: 0,
        target_ms: 0,
        ..cfg()
    };
    let Err(ControllerError::Invalid(problems)) = Controller::new(bad, &CANDIDATES) else {
        panic!("expected Invalid");
    };
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(ControllerConfig::default().problems().is_empty());
    assert!(!ControllerConfig::default().enabled);
}

#[test]
fn driver_turns_admission_and_first_token_into_samples() {
    let mut d = CeilingDriver::new(controller());
    let t0 = Instant::now();
    // Three requests took 3 s to their first token: above the 1 s target.
    for key in 0..3 {
        d.admitted(key, t0);
        d.scheduled(key, t0 + Duration::from_millis(10)); // ignored: the signal is TTFT
        d.first_token(key, t0 + Duration::from_secs(3));
    }
    // A cancelled request leaves no sample and no pending age.
    d.admitted(9, t0);
    d.forget(9);
    let at = t0 + Duration::from_secs(3);
    assert_eq!(d.tick(at, 0, 0.0), None);
    // Rate-limited: a tick within TICK of the last one does nothing, even past the hold.
    assert_eq!(d.tick(at + Duration::from_millis(50), 0, 0.0), None);
    assert_eq!(d.tick(at + Duration::from_millis(1_000), 0, 0.0), Some(288));
    assert_eq!(d.ceiling().max, 288);
    assert!(!d.ceiling().explicit_too);
    assert!(d.needs_ticks());
}

#[test]
fn queue_wait_signal_samples_at_the_first_step() {
    let mut d = CeilingDriver::new(
        Controller::new(
            ControllerConfig {
                signal: Signal::QueueWait,
                ..cfg()
            },
            &CANDIDATES,
        )
        .unwrap(),
    );
    let t0 = Instant::now();
    d.admitted(1, t0);
    d.scheduled(1, t0 + Duration::from_millis(200));
    assert!(d.pending.is_empty());
    assert_eq!(d.controller.samples.len(), 1);
    assert!((d.controller.samples[0].1 - 0.2).abs() < 1e-9);
}
