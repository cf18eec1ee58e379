//! RGLF end to end on the tiny AVG checkpoint: feedback, training, the written checkpoint.

use std::path::{Path, PathBuf};

use grain_model::tiny::{write_tiny, TinyLayout, TinySize};
use grain_model::{DType, Device, LlavaModel, RouterInput};
use grain_tokenizer::{ChatTemplate, Tokenizer};
use grain_train::data::read_jsonl;
use grain_train::feedback::{FeedbackRunner, Prepared};
use grain_train::loss::LossConfig;
use grain_train::train::{evaluate, train, TrainConfig};
use grain_train::trainable::TrainableRouter;
use grain_train::{run, TrainRouterArgs, REPORT_FILE};

/// A few small images with different content and aspect ratios, and a JSONL file describing them.
fn dataset(dir: &Path, n: usize) -> PathBuf {
    // Sides of at most 336 px keep AnyRes at base + 2 tiles, so the LM sequences stay short.
    let specs: [(u32, u32, [u8; 3], &str, &str); 3] = [
        (336, 336, [200, 30, 30], "what colour is it?", "red"),
        (200, 300, [30, 30, 200], "which colour is shown?", "blue"),
        (320, 240, [30, 200, 30], "what number is written?", "seven"),
    ];
    let mut lines = String::new();
    for (i, (w, h, rgb, q, a)) in specs.iter().take(n).enumerate() {
        let img = image::RgbImage::from_fn(*w, *h, |x, y| {
            // A checkerboard of small cells over the base colour: fine detail for the encoder.
            let on = ((x / (7 + i as u32)) + (y / 5)).is_multiple_of(2);
            if on {
                image::Rgb(*rgb)
            } else {
                image::Rgb([rgb[1], rgb[2], rgb[0]])
            }
        });
        let name = format!("img{i}.png");
        img.save(dir.join(&name)).unwrap();
        lines.push_str(&serde_json::json!({"image": name, "question": q, "answer": a}).to_string());
        lines.push('\n');
    }
    let path = dir.join("data.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

fn tiny_checkpoint(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    write_tiny(&model, TinyLayout::Avg, TinySize::TINY, 11).unwrap();
    model
}

fn template(model_dir: &Path, tok: &Tokenizer) -> ChatTemplate {
    ChatTemplate::from_dir(model_dir, tok)
        .unwrap()
        .unwrap_or_else(ChatTemplate::vicuna_v1)
}

fn prepare(model_dir: &Path, data: &Path) -> (LlavaModel, Vec<Prepared>) {
    let model = LlavaModel::load(model_dir, DType::F32, &Device::Cpu).unwrap();
    let tok = Tokenizer::from_dir(model_dir).unwrap();
    let runner = FeedbackRunner::new(&model, &tok, template(model_dir, &tok));
    let prepared = read_jsonl(data)
        .unwrap()
        .iter()
        .map(|ex| runner.prepare(ex).unwrap())
        .collect();
    (model, prepared)
}

#[test]
fn feedback_and_training_lower_the_loss_touching_only_the_router() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_checkpoint(dir.path());
    let data = dataset(dir.path(), 3);
    let (model, prepared) = prepare(&model_dir, &data);
    for p in &prepared {
        assert_eq!(p.feedback.len(), 5);
        // A random-weight LM: cross-entropy is positive and finite.
        assert!(
            p.feedback.iter().all(|l| l.is_finite() && *l > 0.0),
            "{:?}",
            p.feedback
        );
        // Different granularities give the LM different inputs, hence different losses.
        assert!(p.feedback.windows(2).any(|w| (w[0] - w[1]).abs() > 1e-6));
        assert!(p.visual_tokens.windows(2).all(|w| w[0] < w[1]));
    }
    // A 336×336 image is the base crop plus two tiles: more than 576 tokens at 576.
    assert!(prepared[0].visual_tokens[4] > 576);
    assert_eq!(
        prepared[0].visual_tokens[0],
        model.visual_tokens(336, 336, 36).unwrap()
    );
    let router = TrainableRouter::load(&model_dir, model.config(), &Device::Cpu).unwrap();
    // Exactly the checkpoint's `model.router.*` tensors are trainable.
    let names: Vec<String> = router.tensors().into_keys().collect();
    let st =
        candle_core::safetensors::load(model_dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut want: Vec<String> = st
        .keys()
        .filter_map(|k| {
            k.strip_prefix("model.")
                .filter(|r| r.starts_with("router."))
        })
        .map(str::to_string)
        .collect();
    want.sort();
    assert_eq!(names, want);
    // The trainable router computes what the served router computes before any step.
    let inputs: Vec<RouterInput> = prepared
        .iter()
        .map(|p| RouterInput {
            features: p.input.features.clone(),
            text_embeds: p.input.text_embeds.clone(),
        })
        .collect();
    let served = model.route(&inputs).unwrap();
    for (p, s) in prepared.iter().zip(&served) {
        let mine: Vec<f32> = router
            .router()
            .logits(&[&p.input])
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in mine.iter().zip(&s.logits) {
            assert!((a - b).abs() < 1e-4, "{mine:?} vs {:?}", s.logits);
        }
    }
    let set: Vec<&Prepared> = prepared.iter().collect();
    let cfg = TrainConfig {
        lr: 2e-2,
        epochs: 3,
        batch_size: 3,
        seed: 1,
        loss: LossConfig::default(),
    };
    let before = evaluate(&router, &set, &cfg.loss).unwrap();
    let mut losses = Vec::new();
    train(&router, &set, &[], &cfg, |_, l, _| losses.push(l)).unwrap();
    assert_eq!(losses.len(), 3); // 3 epochs × ⌈3 / 3⌉ batches
    let after = evaluate(&router, &set, &cfg.loss).unwrap();
    assert!(
        after.loss < 0.8 * before.loss,
        "loss {} → {}",
        before.loss,
        after.loss
    );
    assert!(after.accuracy >= before.accuracy);
}

#[test]
fn written_checkpoint_loads_and_routes_differently() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_checkpoint(dir.path());
    let data = dataset(dir.path(), 2);
    // A base that was itself trained carries a report: it must stay the base's.
    std::fs::write(model_dir.join(REPORT_FILE), "{\"base\": true}").unwrap();
    let out = dir.path().join("trained");
    let report = run(TrainRouterArgs {
        model: model_dir.clone(),
        data: data.clone(),
        out: out.clone(),
        lr: 5e-2,
        epochs: 2,
        batch_size: 2,
        margin: 1.0,
        ce_weight: 0.1,
        rank_weight: 1.0,
        tie_tolerance: 0.0,
        text_vote_scale: 1.0,
        seed: 3,
        val_split: 0.0,
        quiet: true,
    })
    .unwrap();
    assert_eq!(
        report.rewritten_files,
        vec!["model.safetensors".to_string()]
    );
    assert!(out.join(REPORT_FILE).is_file());
    assert_eq!(
        std::fs::read_to_string(model_dir.join(REPORT_FILE)).unwrap(),
        "{\"base\": true}",
        "the base checkpoint's report is untouched"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(REPORT_FILE)).unwrap()).unwrap();
    assert_eq!(json["epochs"].as_array().unwrap().len(), 2);
    assert!(report.after.loss < report.before.loss);
    // Non-weight files are carried over unchanged.
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        std::fs::read(model_dir.join("tokenizer.json")).unwrap()
    );

    let old = LlavaModel::load(&model_dir, DType::F32, &Device::Cpu).unwrap();
    let new = LlavaModel::load(&out, DType::F32, &Device::Cpu).unwrap();
    let tok = Tokenizer::from_dir(&model_dir).unwrap();
    let runner = FeedbackRunner::new(&old, &tok, template(&model_dir, &tok));
    let examples = read_jsonl(&data).unwrap();
    let inputs = || -> Vec<RouterInput> {
        examples
            .iter()
            .map(|ex| runner.router_input(ex).unwrap())
            .collect()
    };
    let a = old.route(&inputs()).unwrap();
    let b = new.route(&inputs()).unwrap();
    assert!(
        a.iter().zip(&b).any(|(x, y)| x.choice != y.choice),
        "the trained router must decide differently somewhere: {:?} vs {:?}",
        a.iter().map(|o| o.choice).collect::<Vec<_>>(),
        b.iter().map(|o| o.choice).collect::<Vec<_>>()
    );
    // The served router now matches what training measured on these (training) examples.
    let chosen: Vec<usize> = b.iter().map(|o| o.choice).collect();
    let mut counts = vec![0; 5];
    for &c in &chosen {
        counts[c] += 1;
    }
    assert_eq!(counts, report.after.choices);
    // The LMM is untouched: same prompt embeddings and LM output from both checkpoints.
    let ids = [1u32, 50, 60, 70];
    let e_old = old.lm().embed(&ids).unwrap();
    let e_new = new.lm().embed(&ids).unwrap();
    let diff: f32 = (e_old - e_new)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(diff, 0.0);
}

#[test]
fn text_vote_scale_multiplies_only_the_voters_text_rows() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(dir.path());
    let model = LlavaModel::load(&ckpt, DType::F32, &Device::Cpu).unwrap();
    let config = model.config();
    let k = config.router.as_ref().unwrap().text_queries;
    let plain = TrainableRouter::load(&ckpt, config, &Device::Cpu).unwrap();
    let scaled = TrainableRouter::load_scaled(&ckpt, config, &Device::Cpu, 30.0).unwrap();
    let voter = |r: &TrainableRouter| -> Vec<f32> {
        r.tensors()["router.voter"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (a, b) = (voter(&plain), voter(&scaled));
    assert_eq!(a.len(), b.len());
    let seq = a.len();
    for i in 0..seq {
        let want = if i >= seq - k { a[i] * 30.0 } else { a[i] };
        assert!(
            (b[i] - want).abs() <= 1e-6 * want.abs().max(1.0),
            "row {i}: {} vs {want}",
            b[i]
        );
    }
    // Every other router tensor is untouched.
    let (ta, tb) = (plain.tensors(), scaled.tensors());
    for (name, t) in &ta {
        if name != "router.voter" {
            let diff = (t - &tb[name]).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name}");
        }
    }
}
