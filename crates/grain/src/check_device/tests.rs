//! CPU tests of the device checks' logic: what `scripts/gpu-check.sh` runs on a GPU, run here on
//! the CPU against itself and against a deliberately different checkpoint.

use std::path::{Path, PathBuf};

use grain_model::tiny::{write_tiny, TinyLayout, TinySize};
use grain_model::{DType, Device};

use super::bench::{self, BenchArgs};
use super::parity::{self, Input, RunOutput};
use crate::device::Placement;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// LLaMA-7B has 6,738,415,616 parameters with its 32,000-token vocabulary (the published count);
/// LLaVA-NeXT-7B's 32,064 tokens add 64 rows to the embedding table and to the head.
#[test]
fn seven_b_shapes_have_the_published_parameter_count() {
    let c = bench::shapes("7b").unwrap();
    let params: usize = bench::tensor_list(&c)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    assert_eq!(params, 6_738_415_616 + 2 * 64 * 4096);
}

/// The figure: about 14 GB of weights and 1.6 GB of KV at ~3.3 TB/s is about 5 ms.
#[test]
fn the_batch_one_floor_is_about_five_milliseconds_on_an_h100() {
    let c = bench::shapes("7b").unwrap();
    let bytes = bench::decode_floor_bytes(&c, DType::BF16, 1, 3001);
    let kv: f64 = 3001.0 * 32.0 * 2.0 * 4096.0 * 2.0;
    assert!((kv / 1e9 - 1.57).abs() < 0.01);
    assert!(bytes > 13.0e9 + kv && bytes < 14.0e9 + kv, "{bytes}");
    let ms = bytes / 3350e9 * 1e3;
    assert!((4.0..5.0).contains(&ms), "{ms}");
    // Each further sequence adds its own KV and nothing else.
    let b2 = bench::decode_floor_bytes(&c, DType::BF16, 2, 3001);
    assert_eq!(b2 - bytes, kv);
}

#[test]
fn the_dry_run_reports_every_batch_and_prefill_and_cleans_up() {
    let scratch = tempfile::tempdir().unwrap();
    let args = BenchArgs {
        device: "cpu".into(),
        shapes: "small".into(),
        dtype: "auto".into(),
        batches: vec![1, 3],
        cached: 40,
        prefill: vec![33, 5],
        steps: 2,
        warmup: 1,
        prefill_runs: 1,
        hbm_gbps: 20.0,
        scratch: Some(scratch.path().to_path_buf()),
        ab_fused: true,
        ab_gemv: true,
        ab_fixed_partition: true,
        ab_query_block: vec![4],
        json: None,
    };
    let r = bench::bench(&args).unwrap();
    assert_eq!(r["device"], "cpu");
    assert_eq!(r["dtype"], "f32");
    let decode = r["decode"].as_array().unwrap();
    assert_eq!(decode.len(), 2);
    for (d, b) in decode.iter().zip([1.0, 3.0]) {
        assert_eq!(d["batch"].as_f64().unwrap(), b);
        assert_eq!(d["context"].as_f64().unwrap(), 41.0);
        let step = d["step_ms_median"].as_f64().unwrap();
        assert!(step > 0.0 && d["step_ms_min"].as_f64().unwrap() <= step);
        let tps = d["tokens_per_s"].as_f64().unwrap();
        assert!((tps - b * 1e3 / step).abs() < 1e-6 * tps);
        assert!(
            d["hf_tokens_per_s"].is_null(),
            "no HF figures for the small shapes"
        );
        assert!(d["enqueue_ms_median"].as_f64().unwrap() <= step);
    }
    // Each A/B variant times every batch size again.
    for key in ["decode_unfused", "decode_no_gemv", "decode_partition256"] {
        let v = r[key].as_array().unwrap();
        let batches: Vec<u64> = v.iter().map(|d| d["batch"].as_u64().unwrap()).collect();
        assert_eq!(batches, [1, 3], "{key}");
        assert!(v
            .iter()
            .all(|d| d["step_ms_median"].as_f64().unwrap() > 0.0));
    }
    let prefill = r["prefill"].as_array().unwrap();
    let lens: Vec<u64> = prefill
        .iter()
        .map(|p| p["tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(lens, [33, 5]);
    // `--ab-fused` times every prefill again.
    let unfused: Vec<u64> = r["prefill_unfused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(unfused, [33, 5]);
    let blocks: Vec<(u64, u64)> = r["prefill_query_block"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["query_block"].as_u64().unwrap(),
                p["tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(blocks, [(4, 33), (4, 5)]);
    assert!(
        !scratch.path().join("grain-bench-weights").exists(),
        "the random weights are removed"
    );
}

#[test]
fn the_bench_refuses_more_than_the_context() {
    let args = BenchArgs {
        device: "cpu".into(),
        shapes: "small".into(),
        dtype: "auto".into(),
        batches: vec![1],
        cached: 4096,
        prefill: vec![],
        steps: 1,
        warmup: 0,
        prefill_runs: 1,
        hbm_gbps: 20.0,
        scratch: None,
        ab_fused: false,
        ab_gemv: false,
        ab_fixed_partition: false,
        ab_query_block: vec![],
        json: None,
    };
    assert!(bench::bench(&args).is_err());
}

fn cpu(dtype: DType) -> Placement {
    Placement {
        device: Device::Cpu,
        dtype,
    }
}

/// The real pipeline on the CPU against itself passes with zero f32 difference; against another
/// checkpoint (different random weights, same vocabulary) the same comparison fails.
#[test]
fn parity_passes_against_itself_and_fails_against_other_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("seed0"), dir.path().join("seed1"));
    write_tiny(&a, TinyLayout::Avg, TinySize::TINY, 0).unwrap();
    write_tiny(&b, TinyLayout::Avg, TinySize::TINY, 1).unwrap();
    let image = fixture("tests/fixtures/images/wide1000x500.png");
    let input = Input::load(&a, &image, "What is this?").unwrap();
    let rf = parity::run_once(&a, &input, &cpu(DType::F32), None, 4).unwrap();
    let g = Some(rf.granularity);
    let df = parity::run_once(&a, &input, &cpu(DType::F32), g, 4).unwrap();
    let rb = parity::run_once(&a, &input, &cpu(DType::BF16), g, 4).unwrap();
    assert_eq!(rf.greedy_token_ids.len(), 4);
    assert!(rf.router_choice.is_some(), "the AVG layout has a router");
    let same = parity::compare(&rf, &df, &rb, &rb);
    assert!(same.pass, "{:?}", same.failures);
    assert_eq!(same.f32_max_abs_diff, 0.0);
    assert!(same.cpu_bf16_max_abs_diff > 0.0, "bf16 does round");

    let other = parity::run_once(&b, &input, &cpu(DType::F32), g, 4).unwrap();
    let diff = parity::compare(&rf, &other, &rb, &rb);
    assert!(!diff.pass);
    assert!(diff.f32_max_abs_diff > diff.f32_tolerance);
}

fn output(logits: Vec<f32>, ids: Vec<u32>, choice: Option<usize>) -> RunOutput {
    RunOutput {
        device: "x".into(),
        dtype: "f32",
        granularity: 36,
        router_logits: choice.map(|c| (0..5).map(|i| if i == c { 1.0 } else { 0.0 }).collect()),
        router_choice: choice,
        last_logits: logits,
        greedy_token_ids: ids,
        seconds: 0.0,
    }
}

#[test]
fn compare_applies_each_criterion() {
    let rf = output(vec![10.0, -2.0, 0.5], vec![0, 0], Some(1));
    // Within 1e-3 · 10 in f32, within 5% · 10 in bf16: pass.
    let df = output(vec![10.005, -2.0, 0.5], vec![0, 0], Some(1));
    let rb = output(vec![10.1, -2.0, 0.5], vec![2, 0], Some(1));
    let db = output(vec![10.3, -2.2, 0.4], vec![2, 1], Some(1));
    let r = parity::compare(&rf, &df, &rb, &db);
    assert!(r.pass, "{:?}", r.failures);
    assert!(
        !r.greedy_bf16_equal,
        "bf16 greedy is reported, not required"
    );

    let far = output(vec![10.02, -2.0, 0.5], vec![0, 0], Some(1));
    assert!(!parity::compare(&rf, &far, &rb, &db).pass, "f32 logits");
    let ids = output(vec![10.0, -2.0, 0.5], vec![0, 1], Some(1));
    assert!(!parity::compare(&rf, &ids, &rb, &db).pass, "f32 greedy ids");
    let routed = output(vec![10.0, -2.0, 0.5], vec![0, 0], Some(2));
    assert!(!parity::compare(&rf, &routed, &rb, &db).pass, "f32 router");
    let nan = output(vec![f32::NAN, -2.0, 0.5], vec![0, 0], Some(1));
    assert!(!parity::compare(&rf, &df, &rb, &nan).pass, "NaN in bf16");

    // bf16 router decision: a failure when the CPU's bf16 agrees with f32, a tie otherwise.
    let db_flip = output(vec![10.3, -2.2, 0.4], vec![2, 1], Some(3));
    assert!(!parity::compare(&rf, &df, &rb, &db_flip).pass);
    let rb_flip = output(vec![10.1, -2.0, 0.5], vec![2, 0], Some(3));
    let r = parity::compare(&rf, &df, &rb_flip, &db_flip);
    assert!(r.pass && r.router_tie, "{:?}", r.failures);

    // The bf16 tolerance widens to twice what the CPU's own bf16 does.
    let rb_far = output(vec![11.0, -2.0, 0.5], vec![0, 0], Some(1));
    let db_far = output(vec![11.9, -2.0, 0.5], vec![0, 0], Some(1));
    let r = parity::compare(&rf, &df, &rb_far, &db_far);
    assert!(r.pass && (r.bf16_tolerance - 2.0).abs() < 1e-5, "{r:?}");
    let db_too_far = output(vec![12.1, -2.0, 0.5], vec![0, 0], Some(1));
    assert!(!parity::compare(&rf, &df, &rb_far, &db_too_far).pass);
}

/// On the CPU both sides of each kernel check are the same code: every case passes with a zero
/// difference, which checks the cases' plumbing (shapes, tables, writes, the switches) end to end.
#[test]
fn the_kernel_checks_run_on_the_cpu_with_zero_difference() {
    let paged = grain_model::check_paged_kernels(&Device::Cpu).unwrap();
    assert_eq!(paged.len(), 6);
    assert!(paged
        .iter()
        .all(|c| c.pass && c.write_exact && c.max_abs_diff == 0.0));
    assert!(paged.iter().any(|c| c.partition == 64));
    let fused = grain_model::check_fused_kernels(&Device::Cpu).unwrap();
    // Per dtype: 3 row counts × 8 outputs, 3 prefill attention cases, 3 shapes × 2 inputs of the
    // one-row projection.
    assert_eq!(fused.len(), 2 * (3 * 8 + 3 + 3 * 2));
    assert_eq!(
        fused
            .iter()
            .filter(|c| c.kernel.starts_with("causal_softmax"))
            .count(),
        6
    );
    assert_eq!(
        fused
            .iter()
            .filter(|c| c.kernel.starts_with("gemv"))
            .count(),
        12
    );
    assert!(fused.iter().all(|c| c.pass && c.max_abs_diff == 0.0));
    // The references are not all zero: the comparisons compare something.
    assert!(fused.iter().all(|c| c.max_abs_reference > 0.0));
}
