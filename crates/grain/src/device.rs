//! From the configured `device` and `dtype` to candle's: `auto` is the first CUDA device when the
//! binary was built with the `cuda` feature and one answers, else the CPU; dtype `auto` is bf16 on
//! CUDA and f32 on the CPU. A binary built without `cuda` never touches CUDA and says so when asked.

use anyhow::{anyhow, bail};
use grain_model::{DType, Device};

use crate::config;

/// Whether this binary was built with the `cuda` feature.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Where a model runs and in which weight dtype.
#[derive(Debug, Clone)]
pub struct Placement {
    pub device: Device,
    pub dtype: DType,
}

/// Parse a `--device` value (`auto`, `cpu`, `cuda`, `cuda:N`), as the serve configuration does.
pub fn parse_device(value: &str) -> anyhow::Result<config::Device> {
    config::parse_device(value).map_err(|e| anyhow!("--device: {e}"))
}

/// Parse a `--dtype` value (`auto`, `f32`, `f16`, `bf16`).
pub fn parse_dtype(value: &str) -> anyhow::Result<config::Dtype> {
    match value.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(config::Dtype::Auto),
        "f32" => Ok(config::Dtype::F32),
        "f16" => Ok(config::Dtype::F16),
        "bf16" => Ok(config::Dtype::Bf16),
        other => bail!("--dtype: '{other}' is not auto, f32, f16 or bf16"),
    }
}

/// Open the device (the CUDA context is created here) and settle the dtype.
pub fn resolve(device: config::Device, dtype: config::Dtype) -> anyhow::Result<Placement> {
    let device = match device {
        config::Device::Cpu => Device::Cpu,
        config::Device::Cuda(i) => open_cuda(i)?,
        config::Device::Auto if CUDA_BUILT => match open_cuda(0) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "device auto: no usable CUDA device, using the CPU");
                Device::Cpu
            }
        },
        config::Device::Auto => Device::Cpu,
    };
    let dtype = match dtype {
        config::Dtype::Auto if device.is_cuda() => DType::BF16,
        config::Dtype::Auto | config::Dtype::F32 => DType::F32,
        config::Dtype::F16 => DType::F16,
        config::Dtype::Bf16 => DType::BF16,
    };
    Ok(Placement { device, dtype })
}

fn open_cuda(ordinal: usize) -> anyhow::Result<Device> {
    if !CUDA_BUILT {
        bail!(
            "device cuda:{ordinal} requested, but this binary was built without CUDA support \
             (build it with scripts/build-cuda.sh, see docs/gpu.md)"
        );
    }
    Device::new_cuda(ordinal).map_err(|e| anyhow!("opening CUDA device {ordinal}: {e}"))
}

/// `cpu` or `cuda:N`, for logs and reports.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Name of a dtype as the CLI spells it.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_resolves_to_f32_unless_a_dtype_is_given() {
        let p = resolve(config::Device::Cpu, config::Dtype::Auto).unwrap();
        assert!(p.device.is_cpu());
        assert_eq!(p.dtype, DType::F32);
        let p = resolve(config::Device::Cpu, config::Dtype::Bf16).unwrap();
        assert_eq!(p.dtype, DType::BF16);
        assert_eq!(describe(&p.device), "cpu");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_the_feature_auto_is_the_cpu_and_cuda_is_refused() {
        let p = resolve(config::Device::Auto, config::Dtype::Auto).unwrap();
        assert!(p.device.is_cpu());
        assert_eq!(p.dtype, DType::F32);
        let e = resolve(config::Device::Cuda(1), config::Dtype::Auto).unwrap_err();
        assert!(e.to_string().contains("without CUDA support"), "{e}");
    }

    #[test]
    fn flags_parse_like_the_config() {
        assert_eq!(parse_device("cuda:2").unwrap(), config::Device::Cuda(2));
        assert_eq!(parse_device("CPU").unwrap(), config::Device::Cpu);
        assert!(parse_device("cuda:x").is_err());
        assert_eq!(parse_dtype("bf16").unwrap(), config::Dtype::Bf16);
        assert!(parse_dtype("f8").is_err());
    }
}
