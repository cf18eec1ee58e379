//! `grain inspect` as a user runs it: the built binary on the committed tiny checkpoints, its JSON
//! compared with the HF transformers reference (`tests/fixtures/hf-tiny-ref/cases.json`) and the
//! token totals DESIGN.md §3 gives, and `--dump` read back as safetensors.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use grain_model::image::{decode_rgb, Alpha, DecodeLimits};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixtures().join("hf-tiny-ref/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn case<'a>(cases: &'a Value, name: &str) -> &'a Value {
    cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
}

/// Run `grain inspect` and parse its single JSON line; panics with stderr on failure.
fn inspect(model: &str, image: &str, extra: &[&str]) -> Value {
    let out = run_inspect(model, image, extra);
    assert!(
        out.status.success(),
        "grain inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim_end().lines().count(),
        1,
        "one JSON object on one line: {stdout}"
    );
    serde_json::from_str(&stdout).unwrap()
}

fn run_inspect(model: &str, image: &str, extra: &[&str]) -> std::process::Output {
    let question = cases()["question"].as_str().unwrap().to_string();
    Command::new(env!("CARGO_BIN_EXE_grain"))
        .arg("inspect")
        .arg("--model")
        .arg(fixtures().join(model))
        .arg("--image")
        .arg(fixtures().join(image))
        .args(["--prompt", &question])
        .args(extra)
        .output()
        .unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Totals from DESIGN.md §3 (36/72/144/288/576); the HF fixtures' grids are the same for these sizes.
const DESIGN_TOTALS: [(&str, [u64; 5]); 2] = [
    ("square672", [192, 228, 744, 888, 2928]),
    ("wide1000x500", [114, 150, 444, 588, 1752]),
];

#[test]
fn default_run_matches_transformers_on_two_images() {
    let cases = cases();
    for (name, totals) in DESIGN_TOTALS {
        let c = case(&cases, name);
        let out = inspect("hf-tiny", c["image"].as_str().unwrap(), &[]);
        assert_eq!(
            ints(&out["prompt_token_ids"]),
            ints(&c["prompt_ids"]),
            "{name}: prompt ids"
        );
        assert_eq!(
            ints(&out["greedy_token_ids"]),
            ints(&c["greedy_ids"]),
            "{name}: greedy ids"
        );
        let st = candle_core::safetensors::load(
            fixtures().join(format!("hf-tiny-ref/case_{name}.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let d = max_abs(&floats(&out["last_logits"]), &flat(&st["last_logits"]));
        eprintln!("{name}: last_logits max |Δ| {d:.2e}");
        assert!(d <= 1e-4, "{name}: last_logits max |Δ| {d}");
        assert_eq!(out["visual_tokens"]["576"], c["num_image_tokens"], "{name}");
        for (g, want) in [36, 72, 144, 288, 576].iter().zip(totals) {
            assert_eq!(
                out["visual_tokens"][g.to_string()].as_u64(),
                Some(want),
                "{name} @ {g}"
            );
        }
        // No router in the HF layout: `auto` falls back to the finest granularity.
        assert_eq!(out["granularity"], 576, "{name}");
        assert_eq!(out["granularity_source"], "default", "{name}");
        assert!(out["router_logits"].is_null(), "{name}");
        assert_eq!(out["n_crops"], c["n_crops"], "{name}");
        assert_eq!(
            out["image_size"],
            serde_json::json!([c["width"], c["height"]]),
            "{name}"
        );
    }
}

#[test]
fn granularity_and_detail_flags_choose_the_documented_counts() {
    let cases = cases();
    let c = case(&cases, "wide1000x500");
    let image = c["image"].as_str().unwrap();
    let fixed = inspect(
        "hf-tiny",
        image,
        &["--granularity", "36", "--max-new-tokens", "2"],
    );
    assert_eq!(fixed["granularity"], 36);
    assert_eq!(fixed["granularity_source"], "request");
    assert_eq!(fixed["visual_tokens"]["36"], 114);
    assert_eq!(ints(&fixed["greedy_token_ids"]).len(), 2);
    let low = inspect(
        "hf-tiny",
        image,
        &["--detail", "low", "--max-new-tokens", "1"],
    );
    assert_eq!(low["granularity"], 36);
    assert_eq!(low["granularity_source"], "detail");
    let high = inspect(
        "hf-tiny",
        image,
        &["--detail", "high", "--max-new-tokens", "1"],
    );
    assert_eq!(high["granularity"], 576);
    assert_eq!(high["granularity_source"], "detail");
    // The LM saw 114 instead of 1752 image tokens, so its logits differ from the 576 run's.
    let d = max_abs(
        &floats(&fixed["last_logits"]),
        &floats(&high["last_logits"]),
    );
    assert!(d > 1e-3, "logits at 36 and 576 are the same ({d})");
}

#[test]
fn bad_flags_fail_with_a_clear_message() {
    let out = run_inspect("hf-tiny", "images/tiny20x30.png", &["--granularity", "100"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("100") && err.contains("576"), "{err}");
    let out = run_inspect("hf-tiny", "images/does-not-exist.png", &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does-not-exist.png"));
}

/// `--dump` writes the documented tensors: pixel values equal the reference crops' (derived from
/// `crops_square672.png` as the fixture README specifies), features equal transformers' projector
/// output.
#[test]
fn dump_writes_readable_tensors() {
    let cases = cases();
    let c = case(&cases, "square672");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("inspect_square672.safetensors");
    let _ = std::fs::remove_file(&path);
    let out = inspect(
        "hf-tiny",
        c["image"].as_str().unwrap(),
        &["--dump", path.to_str().unwrap(), "--max-new-tokens", "1"],
    );
    let dump = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let mut keys: Vec<&str> = dump.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["image_features", "pixel_values", "text_embeds"],
        "no router in the HF layout"
    );
    assert_eq!(dump["pixel_values"].dims(), [5, 3, 336, 336]);
    assert_eq!(dump["image_features"].dims(), [5, 576, 64]);
    let text_len = ints(&out["prompt_token_ids"]).len() - 1;
    assert_eq!(dump["text_embeds"].dims(), [text_len, 64]);

    let png = std::fs::read(fixtures().join(c["crops_png"].as_str().unwrap())).unwrap();
    let strip = decode_rgb(&png, DecodeLimits::default(), Alpha::Drop).unwrap();
    assert_eq!((strip.width, strip.height), (336, 5 * 336));
    let mean = floats(&cases["image_mean"]);
    let std = floats(&cases["image_std"]);
    let raw = &strip.data;
    let mut want = Vec::with_capacity(raw.len());
    for crop in raw.chunks(336 * 336 * 3) {
        for ch in 0..3 {
            want.extend(
                crop.chunks(3)
                    .map(|p| ((f64::from(p[ch]) * (1.0 / 255.0)) as f32 - mean[ch]) / std[ch]),
            );
        }
    }
    let dp = max_abs(&flat(&dump["pixel_values"]), &want);
    let st = candle_core::safetensors::load(
        fixtures().join("hf-tiny-ref/case_square672.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let df = max_abs(&flat(&dump["image_features"]), &flat(&st["image_features"]));
    eprintln!("dump: pixel_values {dp:.2e}, image_features {df:.2e}");
    assert!(dp <= 1e-5, "pixel_values {dp}");
    assert!(df <= 1e-4, "image_features {df}");
}

/// On the AVG layout the router decides: its logits are printed and dumped with its input.
#[test]
fn avg_checkpoint_reports_the_router() {
    let dir = fixtures().join("avg-tiny");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("inspect_avg.safetensors");
    let _ = std::fs::remove_file(&path);
    let out = Command::new(env!("CARGO_BIN_EXE_grain"))
        .args(["inspect", "--model", dir.to_str().unwrap()])
        .arg("--image")
        .arg(fixtures().join("avg-ref/e2e/images/wide_1000x500.png"))
        .args([
            "--prompt",
            "Describe the picture.",
            "--max-new-tokens",
            "1",
            "--dump",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out["granularity_source"], "router");
    let logits = floats(&out["router_logits"]);
    assert_eq!(logits.len(), 5);
    let best = (0..5).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
    assert_eq!(out["granularity"], [36, 72, 144, 288, 576][best]);
    // Original-layout placeholder: the sentinel -200 appears once in the prompt ids.
    assert_eq!(
        ints(&out["prompt_token_ids"])
            .iter()
            .filter(|&&i| i == -200)
            .count(),
        1
    );
    // DESIGN.md §3 totals for 1000×500.
    for (g, want) in [36, 72, 144, 288, 576]
        .iter()
        .zip([114u64, 150, 444, 588, 1752])
    {
        assert_eq!(
            out["visual_tokens"][g.to_string()].as_u64(),
            Some(want),
            "@ {g}"
        );
    }
    let dump = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert_eq!(flat(&dump["router_logits"]), logits);
    let (n, seq, _) = dump["router_input"].dims3().unwrap();
    assert_eq!((n, seq), (3, 36 + 72 + 144 + 288 + 576 + 32));
}
