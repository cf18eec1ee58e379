//! `[granularity]`'s `controller_*` keys → the engine's [`ControllerConfig`] (the load-adaptive
//! granularity ceiling). Unset keys take the engine's defaults; the controller is off by default.

use grain_engine::controller::{ControllerConfig, Signal};

use super::resolve::KNOWN_GRANULARITIES;
use super::GranularityArgs;

/// Builds the controller config, reporting each bad value through `issue`.
pub(super) fn resolve(
    g: &GranularityArgs,
    issue: &mut impl FnMut(&str, String),
) -> ControllerConfig {
    let d = ControllerConfig::default();
    let signal = match g.controller_signal.as_deref().map(str::trim) {
        None => d.signal,
        Some("ttft") => Signal::Ttft,
        Some("queue_wait") => Signal::QueueWait,
        Some(other) => {
            issue(
                "granularity.controller_signal",
                format!("'{other}' is not 'ttft' or 'queue_wait'"),
            );
            d.signal
        }
    };
    let floor = g.controller_floor.unwrap_or(d.floor);
    if !KNOWN_GRANULARITIES.contains(&floor) {
        issue(
            "granularity.controller_floor",
            format!("{floor} is not one of {KNOWN_GRANULARITIES:?}"),
        );
    }
    // The value checks (`problems`) run in `EngineConfig::validate` when the controller is on.
    ControllerConfig {
        enabled: g.controller.unwrap_or(d.enabled),
        signal,
        target_ms: g.controller_target_ms.unwrap_or(d.target_ms),
        percentile: g.controller_percentile.unwrap_or(d.percentile),
        window_ms: g.controller_window_ms.unwrap_or(d.window_ms),
        floor,
        step_down_after_ms: g
            .controller_step_down_after_ms
            .unwrap_or(d.step_down_after_ms),
        step_up_after_ms: g.controller_step_up_after_ms.unwrap_or(d.step_up_after_ms),
        cooldown_ms: g.controller_cooldown_ms.unwrap_or(d.cooldown_ms),
        step_up_below_pct: g
            .controller_step_up_below_pct
            .unwrap_or(d.step_up_below_pct),
        kv_high_water_pct: g
            .controller_kv_high_water_pct
            .unwrap_or(d.kv_high_water_pct),
        min_samples: g.controller_min_samples.unwrap_or(d.min_samples),
        apply_to_explicit: g
            .controller_apply_to_explicit
            .unwrap_or(d.apply_to_explicit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_args(g: &GranularityArgs) -> (ControllerConfig, Vec<(String, String)>) {
        let mut issues = Vec::new();
        let cfg = resolve(g, &mut |k: &str, m: String| issues.push((k.to_owned(), m)));
        (cfg, issues)
    }

    #[test]
    fn unset_keys_leave_the_controller_off() {
        let (cfg, issues) = resolve_args(&GranularityArgs::default());
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(cfg, ControllerConfig::default());
        assert!(!cfg.enabled);
    }

    #[test]
    fn keys_map_to_the_engine_config_and_bad_values_are_reported() {
        let g = GranularityArgs {
            controller: Some(true),
            controller_signal: Some("queue_wait".into()),
            controller_target_ms: Some(1500),
            controller_floor: Some(144),
            controller_apply_to_explicit: Some(true),
            ..GranularityArgs::default()
        };
        let (cfg, issues) = resolve_args(&g);
        assert!(issues.is_empty(), "{issues:?}");
        assert!(cfg.enabled && cfg.apply_to_explicit);
        assert_eq!(cfg.signal, Signal::QueueWait);
        assert_eq!((cfg.target_ms, cfg.floor), (1500, 144));

        let bad = GranularityArgs {
            controller_signal: Some("p99".into()),
            controller_floor: Some(100),
            ..GranularityArgs::default()
        };
        let (_, issues) = resolve_args(&bad);
        let keys: Vec<&str> = issues.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "granularity.controller_signal",
                "granularity.controller_floor"
            ]
        );
    }
}
