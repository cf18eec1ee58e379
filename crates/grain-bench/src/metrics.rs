//! Server-side figures from a Prometheus `/metrics` endpoint, as differences between a scrape
//! before and after a run point: where the server spent its time, which the client cannot see.
//! Only Grain's metric names are read; a peer without them simply yields no server section.

use std::collections::HashMap;

use serde::Serialize;

/// One scrape: every sample, keyed by `name{labels}` exactly as exposed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape(HashMap<String, f64>);

impl Scrape {
    /// Parse the Prometheus text format (comments and malformed lines skipped; timestamps ignored).
    pub fn parse(text: &str) -> Self {
        let mut map = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The value follows the last space outside the label set.
            let key_end = match line.find('}') {
                Some(i) => i + 1,
                None => line.find(' ').unwrap_or(line.len()),
            };
            let (key, rest) = line.split_at(key_end);
            if let Some(v) = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
            {
                map.insert(key.trim().to_string(), v);
            }
        }
        Self(map)
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.0.get(key).copied()
    }

    /// Sum of every sample of family `name` whose labels contain `label` (or all, if `None`).
    fn sum(&self, name: &str, label: Option<&str>) -> Option<f64> {
        let mut found = false;
        let mut total = 0.0;
        for (k, v) in &self.0 {
            let (n, labels) = match k.split_once('{') {
                Some((n, l)) => (n, l),
                None => (k.as_str(), ""),
            };
            if n == name && label.is_none_or(|l| labels.contains(l)) {
                found = true;
                total += v;
            }
        }
        found.then_some(total)
    }

    fn delta(&self, before: &Scrape, name: &str, label: Option<&str>) -> Option<f64> {
        Some(self.sum(name, label)? - before.sum(name, label).unwrap_or(0.0))
    }
}

/// Seconds and counts of one histogram over a run point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timed {
    pub total_s: f64,
    pub count: f64,
}

/// What the server did during one run point (Grain's metric names).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerDelta {
    /// Decoder steps that only prefilled, that mixed prefill and decode, and that only decoded.
    pub prefill_steps: Option<Timed>,
    pub mixed_steps: Option<Timed>,
    pub decode_steps: Option<Timed>,
    pub vision_encoder: Option<Timed>,
    pub router: Option<Timed>,
    pub queue: Option<Timed>,
    pub preemptions: Option<f64>,
    pub encoder_cache_hits: Option<f64>,
    pub encoder_cache_misses: Option<f64>,
    /// Mean sequences per decoder step.
    pub mean_batch_size: Option<f64>,
}

impl ServerDelta {
    /// `None` when the endpoint exposes none of Grain's families.
    pub fn between(before: &Scrape, after: &Scrape) -> Option<Self> {
        let timed = |name: &str, label: Option<&str>| {
            Some(Timed {
                total_s: after.delta(before, &format!("{name}_sum"), label)?,
                count: after.delta(before, &format!("{name}_count"), label)?,
            })
        };
        let step = |phase: &str| {
            timed(
                "grain_step_duration_seconds",
                Some(&format!("phase=\"{phase}\"")),
            )
        };
        let batch = timed("grain_batch_size", None);
        let d = Self {
            prefill_steps: step("prefill"),
            mixed_steps: step("mixed"),
            decode_steps: step("decode"),
            vision_encoder: timed("grain_vision_encoder_duration_seconds", None),
            router: timed("grain_router_duration_seconds", None),
            queue: timed("grain_request_queue_time_seconds", None),
            preemptions: after.delta(before, "grain_num_preemptions_total", None),
            encoder_cache_hits: after.delta(before, "grain_encoder_cache_hits_total", None),
            encoder_cache_misses: after.delta(before, "grain_encoder_cache_misses_total", None),
            mean_batch_size: batch.filter(|b| b.count > 0.0).map(|b| b.total_s / b.count),
        };
        (d.prefill_steps.is_some() || d.decode_steps.is_some() || d.vision_encoder.is_some())
            .then_some(d)
    }

    /// Server seconds per completed request spent in steps that carried prefill (pure + mixed).
    pub fn prefill_s_per_request(&self, requests: usize) -> Option<f64> {
        if requests == 0 {
            return None;
        }
        let p = self.prefill_steps.map_or(0.0, |t| t.total_s)
            + self.mixed_steps.map_or(0.0, |t| t.total_s);
        (self.prefill_steps.is_some() || self.mixed_steps.is_some()).then(|| p / requests as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# HELP grain_step_duration_seconds Step time.
# TYPE grain_step_duration_seconds histogram
grain_step_duration_seconds_bucket{phase="prefill",le="0.1"} 1
grain_step_duration_seconds_sum{phase="prefill"} 0.5
grain_step_duration_seconds_count{phase="prefill"} 2
grain_step_duration_seconds_sum{phase="decode"} 1
grain_step_duration_seconds_count{phase="decode"} 10
grain_num_preemptions_total 3
grain_batch_size_sum 10
grain_batch_size_count 10
"#;

    const AFTER: &str = r#"grain_step_duration_seconds_sum{phase="prefill"} 2.5
grain_step_duration_seconds_count{phase="prefill"} 6
grain_step_duration_seconds_sum{phase="mixed"} 1.0
grain_step_duration_seconds_count{phase="mixed"} 4
grain_step_duration_seconds_sum{phase="decode"} 4 1700000000000
grain_step_duration_seconds_count{phase="decode"} 40
grain_num_preemptions_total 3
grain_batch_size_sum 130
grain_batch_size_count 40
grain_vision_encoder_duration_seconds_sum 0.75
grain_vision_encoder_duration_seconds_count 4
"#;

    #[test]
    fn deltas_between_scrapes() {
        let d = ServerDelta::between(&Scrape::parse(BEFORE), &Scrape::parse(AFTER)).unwrap();
        assert_eq!(
            d.prefill_steps,
            Some(Timed {
                total_s: 2.0,
                count: 4.0
            })
        );
        assert_eq!(
            d.mixed_steps,
            Some(Timed {
                total_s: 1.0,
                count: 4.0
            }),
            "absent before counts as 0"
        );
        assert_eq!(
            d.decode_steps,
            Some(Timed {
                total_s: 3.0,
                count: 30.0
            }),
            "timestamp ignored"
        );
        assert_eq!(d.preemptions, Some(0.0));
        assert_eq!(d.mean_batch_size, Some(4.0));
        assert_eq!(
            d.vision_encoder,
            Some(Timed {
                total_s: 0.75,
                count: 4.0
            })
        );
        assert_eq!(d.router, None);
        assert_eq!(d.prefill_s_per_request(4), Some(0.75));
    }

    #[test]
    fn endpoints_without_grain_metrics_give_nothing() {
        let s = Scrape::parse("vllm:num_requests_running 1\nnot a metric line\n");
        assert_eq!(s.get("vllm:num_requests_running"), Some(1.0));
        assert!(ServerDelta::between(&Scrape::default(), &s).is_none());
    }
}
