//! The host cache's kernels against the tensor path other devices take: one flat batch mixing a
//! long prefill (blocked matmuls), a chunked prefill and decode steps (paged kernel), through
//! block tables that interleave the sequences' blocks.

use candle_core::{DType, Device, Tensor};

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
    // Step 1: A prefills 70 positions (past one query block), B 9, C 3.
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
