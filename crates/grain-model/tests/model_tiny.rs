//! The assembled model on tiny checkpoints: loading both layouts, exact token counts against the
//! merge code, and the paged/batched forward against a plain whole-prompt forward.

mod common;

use grain_model::granularity::visual_tokens;
use grain_model::tiny::TinyLayout;
use grain_model::{DType, Device, LlavaModel, RouterInput, SeqChunk, Tensor};

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
fn count_function_agrees_with_merge_on_many_sizes() {
    let (_g, dir) = common::tiny(TinyLayout::Avg, 1);
    let model = LlavaModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let c = model.config().clone();
    let sizes = [
        (672, 672),
        (1000, 500),
        (1008, 336),
        (1, 1),
        (14, 14),
        (20, 30),
        (337, 211),
        (2000, 50),
        (50, 2000),
        (5000, 336),
        (333, 999),
        (641, 479),
        (1920, 1080),
        (1080, 1920),
        (336, 335),
    ];
    for (w, h) in sizes {
        let img = common::picture(w, h);
        let (n, px) = model.preprocess(&img).unwrap();
        let feats = model
            .encode_crops(&model.pixels_tensor(n, &px).unwrap())
            .unwrap();
        for &g in &c.granularities {
            let merged = model.image_tokens(&feats, g, w as u32, h as u32).unwrap();
            assert_eq!(
                merged.dim(0).unwrap(),
                visual_tokens(w as u32, h as u32, g, &c).unwrap(),
                "{w}x{h} @ {g}"
            );
        }
    }
}

/// On the CPU the vision tower encodes many crops in passes of a few (crops never interact):
/// two images' crops encoded together equal each image's crops encoded alone.
#[test]
fn crops_encode_the_same_together_and_alone() {
    let (_g, dir) = common::tiny(TinyLayout::Avg, 1);
    let model = LlavaModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let (na, pa) = model.preprocess(&common::picture(672, 672)).unwrap();
    let (nb, pb) = model.preprocess(&common::picture(1000, 500)).unwrap();
    assert!(na + nb > 4, "more crops than one CPU pass holds");
    let both = model
        .encode_crops(
            &model
                .pixels_tensor(na + nb, &[pa.clone(), pb.clone()].concat())
                .unwrap(),
        )
        .unwrap();
    let a = model
        .encode_crops(&model.pixels_tensor(na, &pa).unwrap())
        .unwrap();
    let b = model
        .encode_crops(&model.pixels_tensor(nb, &pb).unwrap())
        .unwrap();
    let alone = Tensor::cat(&[&a, &b], 0).unwrap();
    // Same arithmetic per crop; 1e-5 allows for a matmul blocked differently by row count.
    assert!(max_abs_diff(&both, &alone) <= 1e-5);
}

#[test]
fn both_layouts_load_and_route() {
    let (_g, avg) = common::tiny(TinyLayout::Avg, 2);
    let (_h, hf) = common::tiny(TinyLayout::Hf, 2);
    let m_avg = LlavaModel::load(&avg, DType::F32, &Device::Cpu).unwrap();
    let m_hf = LlavaModel::load(&hf, DType::F32, &Device::Cpu).unwrap();
    assert!(m_avg.has_router());
    assert!(!m_hf.has_router());
    let img = common::picture(500, 300);
    let (n, px) = m_avg.preprocess(&img).unwrap();
    let feats = m_avg
        .encode_crops(&m_avg.pixels_tensor(n, &px).unwrap())
        .unwrap();
    let text = m_avg
        .text_embeddings(&[1, 50, 60, 70, 80], u32::MAX)
        .unwrap();
    let one = m_avg
        .route(&[RouterInput {
            features: feats.clone(),
            text_embeds: text.clone(),
        }])
        .unwrap();
    assert_eq!(one[0].logits.len(), 5);
    // Batched routing (with a second, different image of the same crop count) gives the same answer.
    let img2 = common::picture(520, 310);
    let (n2, px2) = m_avg.preprocess(&img2).unwrap();
    assert_eq!(n, n2);
    let feats2 = m_avg
        .encode_crops(&m_avg.pixels_tensor(n2, &px2).unwrap())
        .unwrap();
    let both = m_avg
        .route(&[
            RouterInput {
                features: feats2,
                text_embeds: text.clone(),
            },
            RouterInput {
                features: feats,
                text_embeds: text,
            },
        ])
        .unwrap();
    for (a, b) in one[0].logits.iter().zip(&both[1].logits) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}

/// Prefill in one go, in chunks, and token by token through the paged cache; also two sequences in
/// one flat batch. All must give the same next-token logits.
#[test]
fn paged_chunked_and_batched_forward_agree() {
    let (_g, dir) = common::tiny(TinyLayout::Hf, 3);
    let model = LlavaModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let ids_a: Vec<u32> = (0..45).map(|i| 3 + (i * 37 % 300) as u32).collect();
    let ids_b: Vec<u32> = (0..23).map(|i| 5 + (i * 11 % 280) as u32).collect();
    let bs = 4;
    let cache = model.new_kv_cache(64, bs).unwrap();
    let table_a: Vec<u32> = (0..12).collect();
    let table_b: Vec<u32> = (20..26).collect();
    let emb_a = model.lm().embed(&ids_a).unwrap();
    let emb_b = model.lm().embed(&ids_b).unwrap();
    let whole = |emb: &Tensor, table: &[u32], len: usize| {
        let chunk = SeqChunk {
            start: 0,
            len,
            block_table: table,
            want_logits: true,
        };
        model.forward(emb, &[chunk], &cache).unwrap()
    };
    let ref_a = whole(&emb_a, &table_a, ids_a.len());
    let ref_b = whole(&emb_b, &table_b, ids_b.len());
    // Chunked prefill of A in pieces of 7 (into other blocks so nothing is reused by accident).
    let table_c: Vec<u32> = (30..42).collect();
    let mut last = None;
    let mut start = 0;
    while start < ids_a.len() {
        let len = 7.min(ids_a.len() - start);
        let chunk = SeqChunk {
            start,
            len,
            block_table: &table_c,
            want_logits: true,
        };
        last = Some(
            model
                .forward(&emb_a.narrow(0, start, len).unwrap(), &[chunk], &cache)
                .unwrap(),
        );
        start += len;
    }
    assert!(max_abs_diff(&ref_a, &last.unwrap()) < 1e-4);
    // A and B's last tokens decoded together, after their prefixes were prefilled together.
    let (na, nb) = (ids_a.len() - 1, ids_b.len() - 1);
    let table_d: Vec<u32> = (42..54).collect();
    let table_e: Vec<u32> = (54..60).collect();
    let flat = Tensor::cat(
        &[
            emb_a.narrow(0, 0, na).unwrap(),
            emb_b.narrow(0, 0, nb).unwrap(),
        ],
        0,
    )
    .unwrap();
    let chunks = [
        SeqChunk {
            start: 0,
            len: na,
            block_table: &table_d,
            want_logits: false,
        },
        SeqChunk {
            start: 0,
            len: nb,
            block_table: &table_e,
            want_logits: false,
        },
    ];
    model.forward(&flat, &chunks, &cache).unwrap();
    let flat = Tensor::cat(
        &[
            emb_a.narrow(0, na, 1).unwrap(),
            emb_b.narrow(0, nb, 1).unwrap(),
        ],
        0,
    )
    .unwrap();
    let chunks = [
        SeqChunk {
            start: na,
            len: 1,
            block_table: &table_d,
            want_logits: true,
        },
        SeqChunk {
            start: nb,
            len: 1,
            block_table: &table_e,
            want_logits: true,
        },
    ];
    let both = model.forward(&flat, &chunks, &cache).unwrap();
    assert!(max_abs_diff(&ref_a, &both.narrow(0, 0, 1).unwrap()) < 1e-4);
    assert!(max_abs_diff(&ref_b, &both.narrow(0, 1, 1).unwrap()) < 1e-4);
}

#[test]
fn broken_checkpoints_give_clear_errors() {
    let (_g, dir) = common::tiny(TinyLayout::Hf, 4);
    let st = dir.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    // Truncated file.
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let err = LlavaModel::load(&dir, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    // Garbage header.
    std::fs::write(&st, b"not a safetensors file at all").unwrap();
    let err = LlavaModel::load(&dir, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    // Missing tensor: rewrite the file without the final norm.
    std::fs::write(&st, &bytes).unwrap();
    let mut all = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    all.remove("model.language_model.norm.weight").unwrap();
    candle_core::safetensors::save(&all, &st).unwrap();
    let err = LlavaModel::load(&dir, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("lm.norm.weight") && err.contains("model.safetensors"),
        "{err}"
    );
    // Wrongly shaped tensor.
    let w = all
        .get("model.image_newline")
        .unwrap()
        .narrow(0, 0, 10)
        .unwrap();
    all.insert("model.image_newline".into(), w);
    all.insert(
        "model.language_model.norm.weight".into(),
        Tensor::ones(64, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&all, &st).unwrap();
    let err = LlavaModel::load(&dir, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model.image_newline") && err.contains("[64]") && err.contains("[10]"),
        "{err}"
    );
}

#[test]
fn half_precision_weights_load() {
    let (_g, dir) = common::tiny(TinyLayout::Avg, 5);
    let st = dir.join("model.safetensors");
    let all = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    let f32_model = LlavaModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let ids: Vec<u32> = (3..40).collect();
    let run = |m: &LlavaModel| {
        let cache = m.new_kv_cache(16, 16).unwrap();
        let table: Vec<u32> = (0..4).collect();
        let chunk = SeqChunk {
            start: 0,
            len: ids.len(),
            block_table: &table,
            want_logits: true,
        };
        m.forward(&m.lm().embed(&ids).unwrap(), &[chunk], &cache)
            .unwrap()
    };
    let reference = run(&f32_model);
    for dt in [DType::F16, DType::BF16] {
        let conv: std::collections::HashMap<String, Tensor> = all
            .iter()
            .map(|(k, v)| (k.clone(), v.to_dtype(dt).unwrap()))
            .collect();
        candle_core::safetensors::save(&conv, &st).unwrap();
        // Stored in half precision, computed in f32: close to the f32 original.
        let m = LlavaModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
        let d = max_abs_diff(&reference, &run(&m));
        let scale = reference
            .abs()
            .unwrap()
            .max(1)
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 0.05 * scale.max(1.0), "{dt:?}: {d} (scale {scale})");
    }
}

/// The parallel bf16 writer (the `7b` size) at tiny widths: every tensor is bf16, has the mean and
/// spread asked for, differs from tensor to tensor, is the same for the same seed, and the
/// checkpoint loads and routes.
#[test]
fn the_parallel_bf16_writer_writes_a_loadable_checkpoint() {
    use grain_model::tiny::{write_tiny, TinySize};
    let size = TinySize {
        bf16_parallel: true,
        ..TinySize::TINY
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write_tiny(&a, TinyLayout::Avg, size, 3).unwrap();
    write_tiny(&b, TinyLayout::Avg, size, 3).unwrap();
    let bytes = |d: &std::path::Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(bytes(&a), bytes(&b), "same seed, same bytes");
    let all = candle_core::safetensors::load(a.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(all.values().all(|t| t.dtype() == DType::BF16));
    // A norm weight: mean 1, std 0.1; a linear weight: mean 0, std 1/sqrt(fan_in).
    let values = |name: &str| -> Vec<f32> {
        all[name]
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let stats = |name: &str| {
        let v = values(name);
        let n = v.len() as f32;
        let mean = v.iter().sum::<f32>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n;
        (mean, var.sqrt())
    };
    let (m, s) = stats("model.layers.0.mlp.gate_proj.weight");
    let want = 1.0 / (size.hidden as f32).sqrt();
    assert!(
        m.abs() < 0.1 * want && (s - want).abs() < 0.1 * want,
        "{m} {s}"
    );
    let (m, _) = stats("model.layers.0.input_layernorm.weight");
    assert!((m - 1.0).abs() < 0.05, "{m}");
    assert_ne!(
        values("model.layers.0.self_attn.q_proj.weight"),
        values("model.layers.0.self_attn.k_proj.weight"),
    );
    let model = LlavaModel::load(&a, DType::F32, &Device::Cpu).unwrap();
    assert!(model.has_router());
}
