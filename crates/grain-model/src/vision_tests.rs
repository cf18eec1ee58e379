//! The host encoder layers ([`crate::vision_host`]) against the tensor path, layer by layer, on
//! the tiny checkpoint's weights.

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::config::LlavaConfig;
use crate::tiny::{write_tiny, TinyLayout, TinySize};

/// A tiny HF-layout checkpoint from `seed`: its directory (kept while the weights are read),
/// config and weights.
fn tiny(seed: u64) -> (tempfile::TempDir, LlavaConfig, Weights) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny(dir.path(), TinyLayout::Hf, TinySize::TINY, seed).unwrap();
    let config = LlavaConfig::from_dir(dir.path()).unwrap();
    let w = Weights::from_dir(dir.path(), DType::F32, &Device::Cpu).unwrap();
    (dir, config, w)
}

#[test]
fn host_layers_match_the_tensor_path() {
    let (_dir, config, w) = tiny(3);
    let c = &config.vision;
    let h = c.hidden_size;
    // Three crops of 41 rows (the block size of the attention does not divide it), values of
    // the spread a pre-LN tower sees.
    let (b, t) = (3usize, 41usize);
    let x0 = crate::test_util::values(b * t * h, 9, 3.0);
    for act in [VisionAct::QuickGelu, VisionAct::Gelu] {
        for i in 0..c.num_hidden_layers {
            let mut layer =
                EncoderLayer::load(&w, &format!("vision.encoder.layers.{i}"), c).unwrap();
            layer.act = act;
            let host = layer.host().expect("the tiny tower runs on the host path");
            let want = layer
                .forward(&Tensor::from_vec(x0.clone(), (b, t, h), &Device::Cpu).unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let mut got = x0.clone();
            host.forward(&mut got, (b, t), &mut Scratch::default());
            // Stated tolerance: 1e-5 relative to the value's size plus 1e-5. The paths share their
            // products, attention and activations; the LayerNorms differ in their last bits.
            for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{act:?} layer {i} [{j}]: {g} vs {w}"
                );
            }
        }
    }
}

/// The whole tower, embeddings included, on the host path and through candle's ops: two crops of
/// the tiny model's 336-pixel images.
#[test]
fn the_host_tower_matches_the_tensor_path() {
    let (_dir, config, w) = tiny(5);
    let c = &config.vision;
    let tower = VisionTower::load(&w, c, config.feature_select).unwrap();
    let s = c.image_size;
    let pixels = Tensor::from_vec(
        crate::test_util::values(2 * 3 * s * s, 4, 1.5),
        (2, 3, s, s),
        &Device::Cpu,
    )
    .unwrap();
    let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let got = flat(
        tower
            .forward_host(&pixels)
            .unwrap()
            .expect("the host path runs"),
    );
    let want = flat(tower.forward_tensors(&pixels).unwrap());
    assert_eq!(got.len(), want.len());
    // The same tolerance as the layers' (the LayerNorms differ in their last bits).
    for (j, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "[{j}]: {g} vs {w}");
    }
}
