//! The trainable LMM (composite ops, for autograd) against the served model (fused kernels).

use grain_model::tiny::{write_tiny, TinyLayout, TinySize};
use grain_model::{DType, Device, LlavaModel};
use grain_tokenizer::{Tokenizer, IMAGE_TOKEN_SENTINEL};
use grain_train::data::read_jsonl;
use grain_train::feedback::FeedbackRunner;
use grain_train::finetune::{cache_examples, fine_tune, losses_by_granularity, template_for};
use grain_train::lmm::TrainableLmm;
use grain_train::synth::{write_set, SceneConfig};

#[test]
fn trainable_lmm_matches_the_served_model_and_learns() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    write_tiny(&model_dir, TinyLayout::Avg, TinySize::TINY, 4).unwrap();
    let data = write_set(dir.path(), "t", 2, 0.5, 1, SceneConfig::default(), false).unwrap();
    let examples = read_jsonl(&data).unwrap();

    let served = LlavaModel::load(&model_dir, DType::F32, &Device::Cpu).unwrap();
    let tok = Tokenizer::from_dir(&model_dir).unwrap();
    let (template, is_short) = template_for(&model_dir, &tok).unwrap();
    assert!(is_short, "the tiny checkpoint ships no template");
    let runner = FeedbackRunner::new(&served, &tok, template_for(&model_dir, &tok).unwrap().0);
    let feedback = runner.prepare(&examples[0]).unwrap().feedback;

    let config = served.config().clone();
    let image_token = config.image_token_id.unwrap_or(IMAGE_TOKEN_SENTINEL);
    let pb = indicatif::ProgressBar::hidden();
    let cached = cache_examples(&model_dir, &config, &tok, &template, &examples, &pb).unwrap();
    let lmm = TrainableLmm::load(&model_dir, &config, &Device::Cpu).unwrap();
    let set: Vec<_> = cached.iter().collect();
    let mine = losses_by_granularity(&lmm, &set[..1], &config.granularities, image_token).unwrap();
    // Same numbers from two implementations (fused kernels vs composite ops); f32 sums over
    // ~1200 positions: 1e-4 relative.
    for (m, f) in mine.iter().zip(&feedback) {
        assert!(
            (m.mean - f64::from(*f)).abs() <= 1e-4 * f64::from(*f).abs().max(1.0),
            "granularity {}: trainable {} vs served {f}",
            m.granularity,
            m.mean
        );
    }
    // Only the projector and the LM are trainable: no vision or router tensor.
    let names: Vec<String> = lmm.tensors().into_keys().collect();
    assert!(names
        .iter()
        .all(|n| n.starts_with("proj.") || n.starts_with("lm.")));
    assert!(names.iter().any(|n| n == "proj.linear_1.weight"));

    // A few steps on two examples at the coarsest granularity lower their loss.
    let g = [config.granularities[0]];
    let before = losses_by_granularity(&lmm, &set, &g, image_token).unwrap()[0].mean;
    fine_tune(&lmm, &set, &g, image_token, 1e-2, 4, 2, 0, &[], |_| {}).unwrap();
    let after = losses_by_granularity(&lmm, &set, &g, image_token).unwrap()[0].mean;
    assert!(after < 0.7 * before, "{before} -> {after}");
}
