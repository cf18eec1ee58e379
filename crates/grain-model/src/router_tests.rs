//! Tests of the router: the fused CPU path against the tensor path, and the visual-part memo.

use super::*;
use crate::test_util::values;

/// The one-pass CPU attention equals the tensor-op attention (batched matrix products and
/// candle's softmax) on random inputs, for several crop counts.
#[test]
fn cpu_attention_matches_tensor_attention() {
    let b = 7usize;
    // Head counts below, at and above the 8-head register path, head widths 1 to 8.
    for (n, (d, heads)) in [1usize, 2, 5]
        .into_iter()
        .flat_map(|n| [(16usize, 4usize), (16, 8), (64, 8), (32, 16), (24, 6)].map(|c| (n, c)))
    {
        let qkv: Vec<f32> = (0..n * b * 3 * d)
            .map(|i| (((i * 2654435761) % 1000) as f32 / 250.0) - 2.0)
            .collect();
        let t = Tensor::from_vec(qkv.clone(), (n, b, 3 * d), &candle_core::Device::Cpu).unwrap();
        let want: Vec<f32> = attention(&t, heads, true)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut got = vec![0f32; n * b * d];
        router_attend::cross_crop_attention_standard(&qkv, (n, b, d), heads, &mut got);
        assert_eq!(got.len(), want.len());
        for (i, (a, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - w).abs() <= 1e-5,
                "n={n} d={d} h={heads} [{i}]: {a} vs {w}"
            );
        }
    }
}

/// A router of width `d` with random weights (and its fused CPU path): weights ~ 1/√fan_in,
/// LayerNorm scales around 1, biases and the voter small.
fn random_router(d: usize) -> Router {
    let config = LlavaConfig::from_json(&serde_json::json!({
        "hidden_size": d, "num_attention_heads": 4, "intermediate_size": 32,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "router_select": true, "filtered_text_num": 4,
    }))
    .unwrap();
    let rc = config.router.clone().unwrap();
    let mut seed = 0u64;
    let mut get = |name: &str, shape: &[usize]| -> Result<Tensor> {
        seed += 1;
        let len: usize = shape.iter().product();
        let v = if name.ends_with("norm1.weight")
            || name.ends_with("norm2.weight")
            || name == "router.norm.weight"
        {
            values(len, seed, 0.5).iter().map(|v| 1.0 + v).collect()
        } else if shape.len() == 2 && shape[1] > 1 {
            values(len, seed, 1.5 / (shape[1] as f32).sqrt())
        } else {
            values(len, seed, 0.3)
        };
        Ok(Tensor::from_vec(v, shape, &candle_core::Device::Cpu)?)
    };
    Router::from_source(&mut get, &config, &rc, false).unwrap()
}

/// Random values in [-1, 1) as a tensor of `shape`.
fn random(shape: &[usize], seed: u64) -> Tensor {
    let len = shape.iter().product();
    Tensor::from_vec(values(len, seed, 1.0), shape, &candle_core::Device::Cpu).unwrap()
}

/// The fused CPU path equals the tensor-op path (candle's matmuls, pooling, attention, GELU
/// and LayerNorms) on random weights and inputs: several crop counts, a prompt shorter than
/// the text queries (zero padding) and a longer one, two images batched together.
#[test]
fn fused_cpu_path_matches_tensor_path() {
    let d = 16;
    let router = random_router(d);
    let cpu = router.cpu.as_ref().expect("CPU router has the fused path");
    for (n, texts) in [(1usize, [2usize, 9]), (3, [9, 2]), (5, [6, 3])] {
        let inputs: Vec<RouterInput> = texts
            .iter()
            .enumerate()
            .map(|(i, &t)| RouterInput {
                features: random(&[n, 576, d], (n * 10 + i) as u64),
                text_embeds: random(&[t, d], (n * 10 + i + 5) as u64),
            })
            .collect();
        let refs: Vec<&RouterInput> = inputs.iter().collect();
        let flat = |t: Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let fused_on = |threads: usize| -> Vec<f32> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            // Each run computes the visual parts afresh, not from the previous run's memo.
            router.visual_memo.clear();
            pool.install(|| flat(router.logits_fused(cpu, &refs).unwrap()))
        };
        let fused = fused_on(1);
        // Positions and row blocks are shared out among threads, but partial sums are added
        // in a fixed order: the same bits on any thread count.
        assert_eq!(
            fused,
            fused_on(3),
            "n={n}: logits depend on the thread count"
        );
        let want = flat(router.logits_tensor(&refs).unwrap());
        assert_eq!(fused.len(), want.len());
        // Both are f32 with different summation orders, a polynomial erf/exp in the fused
        // path and libm's in candle: LayerNorm'd logits (O(1)) agree to 1e-4.
        for (i, (a, w)) in fused.iter().zip(&want).enumerate() {
            assert!((a - w).abs() <= 1e-4, "n={n} [{i}]: {a} vs {w}");
        }
        // Not trivially equal: the logits differ between the two images.
        assert!(fused[..5]
            .iter()
            .zip(&fused[5..])
            .any(|(a, b)| (a - b).abs() > 1e-3));
    }
}

/// A second prompt about the same features tensor (a later turn, through the encoder cache)
/// reuses the image's visual part: the same logits, bit for bit, as routing it afresh. A
/// planted part shows that the memo is what the second call read; another tensor with the same
/// values is routed afresh.
#[test]
fn a_later_prompt_about_the_same_image_reuses_its_visual_part() {
    let d = 16;
    let router = random_router(d);
    let cpu = router.cpu.as_ref().expect("CPU router has the fused path");
    let features = random(&[5, 576, d], 1);
    let turn = |text_seed: u64, features: &Tensor| RouterInput {
        features: features.clone(),
        text_embeds: random(&[7, d], text_seed),
    };
    let logits = |input: &RouterInput| -> Vec<f32> {
        let t = router.logits_fused(cpu, &[input]).unwrap();
        t.flatten_all().unwrap().to_vec1().unwrap()
    };
    let (first, second) = (turn(2, &features), turn(3, &features));
    let first_logits = logits(&first);
    assert_eq!(router.visual_memo.len(), 1);
    let reused = logits(&second);
    assert_eq!(router.visual_memo.len(), 1, "the second turn added no part");
    router.visual_memo.clear();
    let afresh = logits(&second);
    assert_eq!(reused, afresh);
    assert_ne!(reused, first_logits, "the prompt moves the logits");
    // The memo is read: a wrong part planted for this tensor changes the logits.
    router.visual_memo.insert(features.id(), vec![0.0; d]);
    assert_ne!(logits(&second), afresh);
    // A copy of the values is another tensor: routed afresh, and kept beside the first.
    let copy = turn(3, &features.copy().unwrap());
    assert_eq!(logits(&copy), afresh);
    assert_eq!(router.visual_memo.len(), 2);
}
