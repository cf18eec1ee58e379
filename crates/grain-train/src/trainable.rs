//! A trainable copy of the checkpoint's router: the model crate's own [`Router`] code, built from
//! `candle_nn::VarMap` variables initialised from the `model.router.*` tensors, so gradients reach
//! exactly those tensors and nothing of the frozen LMM.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use grain_model::config::LlavaConfig;
use grain_model::router::Router;
use grain_model::weights::Weights;

use crate::error::{Result, TrainError};

pub struct TrainableRouter {
    router: Router,
    vars: VarMap,
}

impl TrainableRouter {
    /// Load the router tensors of the checkpoint in `dir` as f32 variables on `device`.
    pub fn load(dir: &Path, config: &LlavaConfig, device: &Device) -> Result<Self> {
        Self::load_scaled(dir, config, device, 1.0)
    }

    /// [`TrainableRouter::load`] with the voter's text weights (its last `text_queries` rows)
    /// multiplied by `text_vote_scale` before training starts.
    pub fn load_scaled(
        dir: &Path,
        config: &LlavaConfig,
        device: &Device,
        text_vote_scale: f64,
    ) -> Result<Self> {
        let rc = config.router.as_ref().ok_or_else(|| {
            TrainError::Setup(format!(
                "{} has no granularity router (`router_select` is off): nothing to train",
                dir.display()
            ))
        })?;
        let weights = Weights::from_dir(dir, DType::F32, device)?;
        let vars = VarMap::new();
        let mut get = |name: &str, shape: &[usize]| -> grain_model::Result<Tensor> {
            let mut t = weights.get(name, shape)?;
            if name == "router.voter" && text_vote_scale != 1.0 {
                let seq = shape[0];
                let k = rc.text_queries.min(seq);
                let scale: Vec<f32> = (0..seq)
                    .map(|i| {
                        if i >= seq - k {
                            text_vote_scale as f32
                        } else {
                            1.0
                        }
                    })
                    .collect();
                t = t.broadcast_mul(&Tensor::from_vec(scale, (seq, 1), t.device())?)?;
            }
            let var = Var::from_tensor(&t)?;
            let t = var.as_tensor().clone();
            vars.data()
                .lock()
                .expect("the var map is only used on this thread")
                .insert(name.to_string(), var);
            Ok(t)
        };
        let router = Router::from_source(&mut get, config, rc, true)?;
        Ok(Self { router, vars })
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The trainable variables (every router tensor, nothing else).
    pub fn vars(&self) -> Vec<Var> {
        self.vars.all_vars()
    }

    /// Current values by canonical name (`router.…`).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .data()
            .lock()
            .expect("the var map is only used on this thread")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// Number of trained scalars.
    pub fn num_params(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }
}
