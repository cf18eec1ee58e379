//! The training loop: cached feedback, router-only AdamW, validation after every epoch.

use candle_core::Tensor;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use crate::error::{Result, TrainError};
use crate::feedback::Prepared;
use crate::loss::{ranking, rglf_loss, scalar, with_tolerance, LossConfig};
use crate::trainable::TrainableRouter;

#[derive(Debug, Clone, Serialize)]
pub struct TrainConfig {
    pub lr: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub loss: LossConfig,
}

/// How the router's choices fare on a set of examples.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Evaluation {
    pub examples: usize,
    /// Fraction of examples where the router picks the granularity with the lowest answer loss.
    pub accuracy: f64,
    /// Mean RGLF loss.
    pub loss: f64,
    /// Mean answer loss at the router's choice.
    pub answer_loss: f64,
    /// Mean visual tokens at the router's choice.
    pub visual_tokens: f64,
    /// How often each granularity was chosen (config order).
    pub choices: Vec<usize>,
    /// `confusion[best][chosen]`.
    pub confusion: Vec<Vec<usize>>,
    /// Choice counts (config order) per example `kind`, for tagged data.
    pub choices_by_kind: Vec<(String, Vec<usize>)>,
}

/// The router's per-example choice (index) on `set`.
pub fn choices(router: &TrainableRouter, set: &[&Prepared]) -> Result<Vec<usize>> {
    set.iter()
        .map(|p| {
            let l: Vec<f32> = router.router().logits(&[&p.input])?.get(0)?.to_vec1()?;
            Ok(argmax(&l))
        })
        .collect()
}

pub fn evaluate(
    router: &TrainableRouter,
    set: &[&Prepared],
    cfg: &LossConfig,
) -> Result<Evaluation> {
    let e = router.router().granularities().len();
    let mut ev = Evaluation {
        examples: set.len(),
        accuracy: 0.0,
        loss: 0.0,
        answer_loss: 0.0,
        visual_tokens: 0.0,
        choices: vec![0; e],
        confusion: vec![vec![0; e]; e],
        choices_by_kind: Vec::new(),
    };
    if set.is_empty() {
        return Ok(ev);
    }
    for p in set {
        let logits = router.router().logits(&[&p.input])?;
        ev.loss += f64::from(scalar(&rglf_loss(
            &logits,
            std::slice::from_ref(&p.feedback),
            cfg,
        )?)?);
        let c = argmax(&logits.get(0)?.to_vec1::<f32>()?);
        let best = ranking(&with_tolerance(&p.feedback, cfg.tie_tolerance))[0];
        ev.accuracy += f64::from(u8::from(c == best));
        ev.answer_loss += f64::from(p.feedback[c]);
        ev.visual_tokens += p.visual_tokens[c] as f64;
        ev.choices[c] += 1;
        ev.confusion[best][c] += 1;
        if let Some(k) = &p.kind {
            match ev.choices_by_kind.iter_mut().find(|(n, _)| n == k) {
                Some((_, v)) => v[c] += 1,
                None => {
                    let mut v = vec![0; e];
                    v[c] = 1;
                    ev.choices_by_kind.push((k.clone(), v));
                }
            }
        }
    }
    ev.choices_by_kind.sort_by(|a, b| a.0.cmp(&b.0));
    let n = set.len() as f64;
    ev.accuracy /= n;
    ev.loss /= n;
    ev.answer_loss /= n;
    ev.visual_tokens /= n;
    Ok(ev)
}

#[derive(Debug, Clone, Serialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f64,
    pub val: Option<Evaluation>,
}

/// Train `router` on `train`, evaluating on `val` after each epoch. `on_step(step, loss)` is
/// called after every optimiser step (progress reporting).
pub fn train(
    router: &TrainableRouter,
    train: &[&Prepared],
    val: &[&Prepared],
    cfg: &TrainConfig,
    mut on_step: impl FnMut(usize, f32, Option<&Evaluation>),
) -> Result<Vec<EpochLog>> {
    if cfg.batch_size == 0 || cfg.epochs == 0 || train.is_empty() {
        return Err(TrainError::Setup(
            "need at least one epoch, a batch size above 0 and one training example".into(),
        ));
    }
    if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        return Err(TrainError::Setup(format!(
            "--lr must be positive, got {}",
            cfg.lr
        )));
    }
    // AVG-LLaVA trains the router with plain AdamW and no weight decay.
    let mut opt = AdamW::new(
        router.vars(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut logs = Vec::with_capacity(cfg.epochs);
    let mut step = 0;
    let mut last_val: Option<Evaluation> = None;
    for epoch in 1..=cfg.epochs {
        order.shuffle(&mut rng);
        let mut sum = 0.0;
        let mut batches = 0;
        for batch in order.chunks(cfg.batch_size) {
            let logits = batch
                .iter()
                .map(|&i| router.router().logits(&[&train[i].input]))
                .collect::<grain_model::Result<Vec<Tensor>>>()?;
            let logits = Tensor::cat(&logits, 0)?;
            let fb: Vec<Vec<f32>> = batch.iter().map(|&i| train[i].feedback.clone()).collect();
            let loss = rglf_loss(&logits, &fb, &cfg.loss)?;
            opt.backward_step(&loss)?;
            let l = scalar(&loss)?;
            if !l.is_finite() {
                return Err(TrainError::Setup(format!(
                    "the loss diverged at step {step} (try a lower --lr)"
                )));
            }
            sum += f64::from(l);
            batches += 1;
            step += 1;
            on_step(step, l, last_val.as_ref());
        }
        let val_eval = if val.is_empty() {
            None
        } else {
            Some(evaluate(router, val, &cfg.loss)?)
        };
        last_val.clone_from(&val_eval);
        logs.push(EpochLog {
            epoch,
            train_loss: sum / f64::from(batches),
            val: val_eval,
        });
    }
    Ok(logs)
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}
