//! The host cache's kernels against the tensor path other devices take: one flat batch mixing a
//! long prefill (blocked matmuls), a chunked prefill and decode steps (paged kernel), through
//! block tables that interleave the sequences' blocks; and the blocked prefill attention against
//! the host form across several query blocks.

use candle_core::{DType, Device, Tensor};

use super::{causal_blocked, causal_host, CausalPlan, Heads};
use crate::kv_cache::KvCache;
use crate::llama::SeqChunk;
use crate::tiny::{write_tiny, TinyLayout, TinySize};
use crate::LlavaModel;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn host_kernels_match_the_tensor_path() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny(dir.path(), TinyLayout::Hf, TinySize::TINY, 11).unwrap();
    let model = LlavaModel::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let text = &model.config().text;
    let vocab = text.vocab_size as u32;
    let bs = 4;
    let host = KvCache::new(text, 96, bs, DType::F32, &Device::Cpu).unwrap();
    let tensors = KvCache::new_tensors(text, 96, bs, DType::F32, &Device::Cpu).unwrap();
    assert!(host.is_host() && !tensors.is_host());
    // Sequences A (long), B and C own alternating blocks.
    let tables: Vec<Vec<u32>> = (0..3u32)
        .map(|s| (0..32u32).map(|b| b * 3 + s).collect())
        .collect();
    let ids = |n: usize, seed: u32| -> Vec<u32> {
        (0..n as u32)
            .map(|i| 3 + (i * 37 + seed * 101) % (vocab - 3))
            .collect()
    };
    // Step 1: A prefills 70 positions, B 9, C 3.
    // Step 2: A decodes, B prefills 40 more, C decodes. Step 3: all decode.
    let steps: [&[(usize, usize, usize)]; 3] = [
        &[(0, 0, 70), (1, 0, 9), (2, 0, 3)],
        &[(0, 70, 1), (1, 9, 40), (2, 3, 1)],
        &[(0, 71, 1), (1, 49, 1), (2, 4, 1)],
    ];
    for step in steps {
        let mut parts = Vec::new();
        let mut chunks = Vec::new();
        for &(s, start, len) in step {
            parts.push(
                model
                    .lm()
                    .embed(&ids(len, (s * 1000 + start) as u32))
                    .unwrap(),
            );
            chunks.push(SeqChunk {
                start,
                len,
                block_table: &tables[s],
                want_logits: true,
            });
        }
        let flat = Tensor::cat(&parts, 0).unwrap();
        let a = model.forward_all_logits(&flat, &chunks, &host).unwrap();
        let b = model.forward_all_logits(&flat, &chunks, &tensors).unwrap();
        let d = max_abs_diff(&a, &b);
        assert!(d < 1e-4, "host vs tensor cache: max |Δ| {d}");
    }
}

#[test]
fn blocked_attention_matches_the_host_form_across_query_blocks() {
    // 70 new positions after 5 cached ones, in blocks of 16 (the last one partial), 4 query heads
    // over 2 KV heads: every block's mask and the grouped rows against `causal_host`.
    let heads = Heads {
        q: 4,
        kv: 2,
        dim: 8,
    };
    let (start, len) = (5usize, 70usize);
    let t = |n: usize, shape: (usize, usize, usize), seed: u64| {
        Tensor::from_vec(crate::test_util::values(n, seed, 1.0), shape, &Device::Cpu).unwrap()
    };
    let q = t(len * heads.q * heads.dim, (len, heads.q, heads.dim), 1);
    let kv_shape = (heads.kv, start + len, heads.dim);
    let k = t(heads.kv * (start + len) * heads.dim, kv_shape, 2);
    let v = t(heads.kv * (start + len) * heads.dim, kv_shape, 3);
    let plan = CausalPlan::with_rows(start, len, 16, &Device::Cpu).unwrap();
    let blocked = causal_blocked(&q, &k, &v, &plan, heads)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let host = causal_host(&q, &k, &v, start, heads).unwrap();
    assert_eq!(blocked.len(), host.len());
    let d = blocked
        .iter()
        .zip(&host)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-5, "blocked vs host: max |Δ| {d}");
}
