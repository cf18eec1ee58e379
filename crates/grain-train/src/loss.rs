//! The RGLF objective: the frozen LMM's answer losses at each granularity rank the granularities;
//! the router is trained with a cross-entropy towards the best one plus a margin ranking loss on
//! its log-softmax scores, the margin growing with rank distance and with the loss gap.

use candle_core::{DType, Tensor, D};

use crate::error::{Result, TrainError};

/// Weights of the two terms and the ranking margin scale.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LossConfig {
    pub margin: f64,
    pub ce_weight: f64,
    pub rank_weight: f64,
    /// Answer losses within this much of an example's best count as equal to the best, so the
    /// cheapest of them ranks first. 0 (the default) is RGLF as published; a small positive value
    /// trades a negligible loss difference for fewer visual tokens.
    #[serde(default)]
    pub tie_tolerance: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            margin: 1.0,
            ce_weight: 0.1,
            rank_weight: 1.0,
            tie_tolerance: 0.0,
        }
    }
}

/// The losses ranking works on: every loss within `tolerance` of the minimum becomes the minimum
/// (a tie, which [`ranking`] breaks towards the coarser granularity); the others are unchanged.
pub fn with_tolerance(feedback: &[f32], tolerance: f64) -> Vec<f32> {
    let min = feedback.iter().copied().fold(f32::INFINITY, f32::min);
    feedback
        .iter()
        .map(|&l| {
            if f64::from(l - min) <= tolerance {
                min
            } else {
                l
            }
        })
        .collect()
}

/// Granularity indices ordered best (lowest answer loss) first; ties keep the coarser first, so a
/// tie never favours spending more visual tokens.
pub fn ranking(feedback: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..feedback.len()).collect();
    order.sort_by(|&a, &b| feedback[a].total_cmp(&feedback[b]).then(a.cmp(&b)));
    order
}

/// One ranking pair: flat indices into the `(B·E)` score vector and the pair's margin.
struct Pair {
    better: u32,
    worse: u32,
    margin: f64,
}

/// RGLF loss for a batch. `logits` is the router's `(B, E)` output; `feedback[b]` holds sample
/// `b`'s E answer losses. Returns a scalar:
/// `ce_weight · mean_b CE(logits_b, best_b) + rank_weight · mean over all pairs (i < j in the
/// ranking) of relu(s_worse − s_better + margin · (j − i) · (loss_worse − loss_better))`, where
/// `s = log_softmax(logits)`.
pub fn rglf_loss(logits: &Tensor, feedback: &[Vec<f32>], cfg: &LossConfig) -> Result<Tensor> {
    let (b, e) = logits.dims2()?;
    if feedback.len() != b || feedback.iter().any(|f| f.len() != e) {
        return Err(TrainError::Setup(format!(
            "feedback must be {b} rows of {e} losses, one per router output"
        )));
    }
    if e < 2 {
        return Err(TrainError::Setup(
            "ranking needs at least two granularities".into(),
        ));
    }
    let dev = logits.device();
    let dtype = logits.dtype();
    let scores = candle_nn::ops::log_softmax(logits, D::Minus1)?.flatten_all()?;
    let mut best = Vec::with_capacity(b);
    let mut pairs = Vec::new();
    for (row, losses) in feedback.iter().enumerate() {
        let losses = &with_tolerance(losses, cfg.tie_tolerance);
        let order = ranking(losses);
        let base = (row * e) as u32;
        best.push(base + order[0] as u32);
        for i in 0..e {
            for j in i + 1..e {
                let (bi, wi) = (order[i], order[j]);
                pairs.push(Pair {
                    better: base + bi as u32,
                    worse: base + wi as u32,
                    margin: cfg.margin * (j - i) as f64 * f64::from(losses[wi] - losses[bi]),
                });
            }
        }
    }
    let idx = |v: Vec<u32>| Tensor::from_vec(v.clone(), v.len(), dev);
    let best = idx(best)?;
    let ce = (scores.index_select(&best, 0)?.mean_all()? * -1.0)?;
    let better = idx(pairs.iter().map(|p| p.better).collect())?;
    let worse = idx(pairs.iter().map(|p| p.worse).collect())?;
    let margins = Tensor::from_vec(
        pairs.iter().map(|p| p.margin).collect::<Vec<f64>>(),
        pairs.len(),
        dev,
    )?
    .to_dtype(dtype)?;
    let rank = ((scores.index_select(&worse, 0)? - scores.index_select(&better, 0)?)? + margins)?
        .relu()?
        .mean_all()?;
    Ok(((ce * cfg.ce_weight)? + (rank * cfg.rank_weight)?)?)
}

/// Scalar value of a loss tensor, for logging.
pub fn scalar(t: &Tensor) -> Result<f32> {
    Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Plain-Rust reference of the objective for one sample, written from the definition.
    fn reference(logits: &[f64], losses: &[f32], cfg: &LossConfig) -> f64 {
        let m = logits.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + logits.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        let s: Vec<f64> = logits.iter().map(|x| x - lse).collect();
        let order = ranking(losses);
        let mut total = 0.0;
        let mut n = 0.0;
        for i in 0..order.len() {
            for j in i + 1..order.len() {
                let gap = f64::from(losses[order[j]] - losses[order[i]]);
                total += (s[order[j]] - s[order[i]] + cfg.margin * (j - i) as f64 * gap).max(0.0);
                n += 1.0;
            }
        }
        cfg.ce_weight * -s[order[0]] + cfg.rank_weight * total / n
    }

    #[test]
    fn tolerance_ties_near_best_losses_towards_coarse() {
        let f = [0.30, 0.21, 0.20, 0.5, 0.205];
        assert_eq!(ranking(&with_tolerance(&f, 0.0))[0], 2);
        let t = with_tolerance(&f, 0.02);
        assert_eq!(t, vec![0.30, 0.20, 0.20, 0.5, 0.20]);
        assert_eq!(ranking(&t), vec![1, 2, 4, 0, 3]);
    }

    #[test]
    fn ranking_orders_by_loss_and_breaks_ties_towards_coarse() {
        assert_eq!(ranking(&[0.5, 0.2, 0.9, 0.2, 0.1]), vec![4, 1, 3, 0, 2]);
    }

    #[test]
    fn matches_hand_written_reference() {
        let cfg = LossConfig::default();
        let rows = [
            (
                vec![0.3, -1.2, 0.8, 0.1, -0.4],
                vec![2.0f32, 1.5, 1.7, 1.1, 1.0],
            ),
            (
                vec![1.0, 0.0, -1.0, 0.5, 0.2],
                vec![0.4f32, 0.9, 0.3, 0.35, 2.0],
            ),
        ];
        let flat: Vec<f64> = rows.iter().flat_map(|r| r.0.clone()).collect();
        let logits = Tensor::from_vec(flat, (2, 5), &Device::Cpu).unwrap();
        let fb: Vec<Vec<f32>> = rows.iter().map(|r| r.1.clone()).collect();
        let got = rglf_loss(&logits, &fb, &cfg)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        // Batch mean of CE, and the pair mean over both samples (equal pair counts).
        let want = (reference(&rows[0].0, &rows[0].1, &cfg)
            + reference(&rows[1].0, &rows[1].1, &cfg))
            / 2.0;
        assert!((got - want).abs() < 1e-9, "got {got}, want {want}");
    }

    #[test]
    fn ranking_gradient_matches_finite_differences() {
        // Pure ranking loss (no CE) so the check exercises the pair terms; the logits are chosen so
        // that several hinges are active and none sits within `h` of its kink.
        let cfg = LossConfig {
            margin: 1.0,
            ce_weight: 0.0,
            rank_weight: 1.0,
            tie_tolerance: 0.0,
        };
        let logits0 = vec![0.3, -1.2, 0.8, 0.1, -0.4, 1.0, 0.0, -1.0, 0.5, 0.2];
        let fb = vec![
            vec![2.0f32, 1.5, 1.7, 1.1, 1.0],
            vec![0.4f32, 0.9, 0.3, 0.35, 2.0],
        ];
        let dev = Device::Cpu;
        let var =
            Var::from_tensor(&Tensor::from_vec(logits0.clone(), (2, 5), &dev).unwrap()).unwrap();
        let loss = rglf_loss(var.as_tensor(), &fb, &cfg).unwrap();
        assert!(
            loss.to_scalar::<f64>().unwrap() > 0.0,
            "some hinge must be active"
        );
        let grads = loss.backward().unwrap();
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let h = 1e-6;
        let f = |x: &[f64]| {
            let t = Tensor::from_vec(x.to_vec(), (2, 5), &dev).unwrap();
            rglf_loss(&t, &fb, &cfg)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let mut nonzero = 0;
        for k in 0..logits0.len() {
            let (mut up, mut down) = (logits0.clone(), logits0.clone());
            up[k] += h;
            down[k] -= h;
            let fd = (f(&up) - f(&down)) / (2.0 * h);
            assert!(
                (fd - g[k]).abs() < 1e-6,
                "d/dlogit[{k}]: autograd {} vs finite difference {fd}",
                g[k]
            );
            if g[k].abs() > 1e-3 {
                nonzero += 1;
            }
        }
        assert!(nonzero >= 4, "the check must cover non-trivial gradients");
    }

    #[test]
    fn rejects_mismatched_feedback() {
        let logits = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(rglf_loss(&logits, &[vec![0.0; 5]], &LossConfig::default()).is_err());
    }
}
