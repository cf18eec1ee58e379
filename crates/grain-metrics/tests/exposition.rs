//! The text exposition contains every family of DESIGN.md §5 with the right type, parses as the
//! Prometheus text format, and records what the handles are given.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use grain_metrics::{
    encode_text, ErrorLabel, FinishReasonLabel, GranularitySourceLabel, Metrics, MetricsError,
    StepPhase,
};
use prometheus::Registry;

/// Families and types, written from DESIGN.md §5 (not from the crate's own list).
const EXPECTED: &[(&str, &str)] = &[
    ("grain_time_to_first_token_seconds", "histogram"),
    ("grain_inter_token_latency_seconds", "histogram"),
    ("grain_e2e_request_latency_seconds", "histogram"),
    ("grain_request_queue_time_seconds", "histogram"),
    ("grain_request_prompt_tokens", "histogram"),
    ("grain_request_generation_tokens", "histogram"),
    ("grain_request_success_total", "counter"),
    ("grain_request_failure_total", "counter"),
    ("grain_num_requests_running", "gauge"),
    ("grain_num_requests_waiting", "gauge"),
    ("grain_kv_cache_usage_ratio", "gauge"),
    ("grain_num_preemptions_total", "counter"),
    ("grain_batch_size", "histogram"),
    ("grain_step_duration_seconds", "histogram"),
    ("grain_visual_tokens_total", "counter"),
    ("grain_visual_tokens_saved_total", "counter"),
    ("grain_granularity_selected_total", "counter"),
    // Issue 10: the load-adaptive granularity ceiling.
    ("grain_granularity_ceiling", "gauge"),
    ("grain_router_duration_seconds", "histogram"),
    ("grain_vision_encoder_duration_seconds", "histogram"),
    ("grain_encoder_cache_hits_total", "counter"),
    ("grain_encoder_cache_misses_total", "counter"),
    ("grain_prefix_cache_hit_tokens_total", "counter"),
];

const GRANULARITIES: [u32; 5] = [36, 72, 144, 288, 576];

#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    /// (sample name, sorted labels, value)
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// A strict parser of the text format (0.0.4) written for this test: every line must be a
/// HELP/TYPE comment or a sample of a declared family.
fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has text");
            families.entry(name.to_owned()).or_default().help = Some(help.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a type");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad type in {line}"
            );
            families.entry(name.to_owned()).or_default().kind = Some(kind.to_owned());
        } else {
            assert!(!line.starts_with('#'), "unexpected comment {line}");
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels end with }");
                    let labels = body
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect("label is k=v");
                            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                            (k.to_owned(), v.expect("quoted label value").to_owned())
                        })
                        .collect();
                    (name, labels)
                }
            };
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name {name}"
            );
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .find(|base| {
                    families.get(*base).and_then(|f| f.kind.as_deref()) == Some("histogram")
                })
                .unwrap_or(name);
            let fam = families
                .get_mut(family)
                .unwrap_or_else(|| panic!("sample {name} before its TYPE"));
            fam.samples.push((name.to_owned(), labels, value));
        }
    }
    families
}

fn setup() -> (Registry, Metrics) {
    let registry = Registry::new();
    let metrics = Metrics::register(&registry, &GRANULARITIES).expect("register");
    (registry, metrics)
}

fn value(fams: &BTreeMap<String, Family>, family: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    fams.values()
        .flat_map(|f| f.samples.iter())
        .find(|(name, l, _)| name == family && *l == want)
        .unwrap_or_else(|| panic!("no sample {family}{labels:?}"))
        .2
}

#[test]
fn every_family_is_present_with_help_and_type_before_any_traffic() {
    let (registry, _metrics) = setup();
    let fams = parse_exposition(&encode_text(&registry).unwrap());
    for (name, kind) in EXPECTED {
        let fam = fams
            .get(*name)
            .unwrap_or_else(|| panic!("missing family {name}"));
        assert_eq!(fam.kind.as_deref(), Some(*kind), "type of {name}");
        assert!(
            fam.help.as_deref().is_some_and(|h| h.len() > 10),
            "help of {name}"
        );
        assert!(!fam.samples.is_empty(), "{name} has no samples");
    }
    assert_eq!(fams.len(), EXPECTED.len(), "unexpected extra families");
}

#[test]
fn label_sets_are_bounded_and_preinitialised() {
    let (registry, metrics) = setup();
    // A granularity that is not a candidate must not create a new label value per number.
    metrics.record_granularity(100, GranularitySourceLabel::Request);
    metrics.record_granularity(101, GranularitySourceLabel::Request);
    let fams = parse_exposition(&encode_text(&registry).unwrap());
    let selected = &fams["grain_granularity_selected_total"].samples;
    // 5 candidates × 5 sources (router, detail, request, default, ceiling), plus "other" for
    // the request source.
    assert_eq!(selected.len(), 5 * 5 + 1);
    assert_eq!(
        value(
            &fams,
            "grain_granularity_selected_total",
            &[("granularity", "other"), ("source", "request")]
        ),
        2.0
    );
    assert_eq!(fams["grain_request_failure_total"].samples.len(), 11);
    assert_eq!(fams["grain_request_success_total"].samples.len(), 2);
    assert_eq!(
        fams["grain_step_duration_seconds"]
            .samples
            .iter()
            .filter(|s| s.0.ends_with("_count"))
            .count(),
        3
    );
}

#[test]
fn recorded_values_show_up() {
    let (registry, metrics) = setup();
    // Two images: one routed to 144 on a 5-crop image (5·144 used, 5·576 full), one low detail.
    metrics.record_granularity(144, GranularitySourceLabel::Router);
    metrics.record_granularity(36, GranularitySourceLabel::Detail);
    metrics.record_visual_tokens(720, 2880);
    metrics.record_visual_tokens(36, 576);
    metrics.record_success(
        900,
        12,
        &[FinishReasonLabel::Stop, FinishReasonLabel::Length],
    );
    metrics.record_failure(ErrorLabel::Overloaded);
    metrics.observe_time_to_first_token(0.03);
    metrics.observe_time_to_first_token(3.0);
    metrics.observe_step_duration(StepPhase::Decode, 0.002);
    metrics.sync_engine_stats(3, 2, 25, 100, 4);
    metrics.sync_engine_stats(3, 2, 25, 100, 4);
    metrics.record_encoder_cache(1, 2);

    let fams = parse_exposition(&encode_text(&registry).unwrap());
    assert_eq!(
        value(&fams, "grain_visual_tokens_total", &[("kind", "selected")]),
        756.0
    );
    assert_eq!(
        value(&fams, "grain_visual_tokens_total", &[("kind", "full")]),
        3456.0
    );
    assert_eq!(value(&fams, "grain_visual_tokens_saved_total", &[]), 2700.0);
    assert_eq!(
        value(
            &fams,
            "grain_granularity_selected_total",
            &[("granularity", "144"), ("source", "router")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &fams,
            "grain_request_success_total",
            &[("finish_reason", "length")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &fams,
            "grain_request_success_total",
            &[("finish_reason", "stop")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &fams,
            "grain_request_failure_total",
            &[("error", "overloaded")]
        ),
        1.0
    );
    assert_eq!(value(&fams, "grain_num_requests_running", &[]), 3.0);
    assert_eq!(value(&fams, "grain_kv_cache_usage_ratio", &[]), 0.25);
    // Synced twice with the same total: counted once.
    assert_eq!(value(&fams, "grain_num_preemptions_total", &[]), 4.0);
    assert_eq!(value(&fams, "grain_encoder_cache_misses_total", &[]), 2.0);
    assert_eq!(
        value(&fams, "grain_time_to_first_token_seconds_count", &[]),
        2.0
    );
    assert_eq!(
        value(
            &fams,
            "grain_time_to_first_token_seconds_bucket",
            &[("le", "0.04")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &fams,
            "grain_time_to_first_token_seconds_bucket",
            &[("le", "+Inf")]
        ),
        2.0
    );
    assert_eq!(value(&fams, "grain_request_prompt_tokens_sum", &[]), 900.0);
}

#[test]
fn histogram_buckets_are_cumulative_and_end_at_the_count() {
    let (registry, metrics) = setup();
    for s in [0.0001, 0.02, 0.5, 9.0, 5000.0] {
        metrics.observe_e2e_request_latency(s);
        metrics.observe_inter_token_latency(s);
        metrics.observe_router_duration(s);
    }
    let fams = parse_exposition(&encode_text(&registry).unwrap());
    for (name, kind) in EXPECTED.iter().filter(|(_, k)| *k == "histogram") {
        assert_eq!(*kind, "histogram");
        let fam = &fams[*name];
        let mut by_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts: BTreeMap<String, f64> = BTreeMap::new();
        for (sample, labels, v) in &fam.samples {
            let mut key_labels = labels.clone();
            let le = key_labels.remove("le");
            let key = format!("{key_labels:?}");
            if sample.ends_with("_bucket") {
                let le = le.expect("bucket has le");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                by_series.entry(key).or_default().push((le, *v));
            } else if sample.ends_with("_count") {
                counts.insert(key, *v);
            }
        }
        for (key, buckets) in by_series {
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{name}{key}"
            );
            let last = buckets.last().unwrap();
            assert!(last.0.is_infinite(), "{name} ends with +Inf");
            assert_eq!(Some(&last.1), counts.get(&key), "{name}{key} +Inf == count");
        }
    }
}

#[test]
fn registering_twice_on_one_registry_is_an_error_not_a_panic() {
    let (registry, _metrics) = setup();
    match Metrics::register(&registry, &GRANULARITIES) {
        Err(MetricsError::Register { name, .. }) => assert!(!name.is_empty()),
        other => panic!("expected a registration error, got {other:?}"),
    }
}

/// `promtool check metrics` (Debian package `prometheus`) is the reference linter. The test is
/// skipped, loudly, where promtool is not installed.
#[test]
fn promtool_check_metrics_is_clean() {
    let (registry, metrics) = setup();
    metrics.record_granularity(36, GranularitySourceLabel::Detail);
    metrics.record_visual_tokens(36, 576);
    let text = encode_text(&registry).unwrap();
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("SKIPPED: promtool not installed (apt-get install prometheus)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {report}");
    assert!(report.trim().is_empty(), "promtool lint findings: {report}");
}
