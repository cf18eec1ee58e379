//! `grain check-device kernels`: the paged KV cache's own kernels (`write_slots`, paged decode
//! attention) on the device against their CPU form, and the fused decoder kernels against the
//! candle ops they replace, at 7B shapes ([`grain_model::check_paged_kernels`],
//! [`grain_model::check_fused_kernels`]). Exits non-zero when a case fails.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::json;

use crate::device;

#[derive(clap::Args)]
pub struct KernelArgs {
    /// Device under test.
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(a: KernelArgs) -> anyhow::Result<()> {
    let p = device::resolve(device::parse_device(&a.device)?, crate::config::Dtype::F32)?;
    let cases = grain_model::check_paged_kernels(&p.device).context("running the kernels")?;
    let fused = grain_model::check_fused_kernels(&p.device).context("running the fused kernels")?;
    let pass = cases.iter().all(|c| c.pass) && fused.iter().all(|c| c.pass);
    let out = json!({ "check": "kernels", "device": a.device, "pass": pass, "cases": cases,
                      "fused": fused });
    let text = serde_json::to_string_pretty(&out)?;
    if let Some(path) = &a.json {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{text}");
    if !pass {
        bail!("a paged-kernel case failed (see the report)");
    }
    Ok(())
}
