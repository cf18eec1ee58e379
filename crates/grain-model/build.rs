//! With the `cuda` feature, compiles Grain's own CUDA kernels to PTX with nvcc:
//! `cuda/paged_attention.cu` (the paged KV cache, embedded by `src/paged_device/cuda.rs`),
//! `cuda/decoder_fused.cu` (fused decoder-layer steps) and `cuda/gemv.cu` (a decode step's
//! few-row projections), both embedded by `src/fused_cuda.rs`. Each is loaded once per device.
//! Without the feature this does nothing, so default builds need no CUDA toolkit.
//!
//! nvcc: `$NVCC`, else `$CUDA_HOME/bin/nvcc` or `$CUDA_PATH/bin/nvcc`, else `nvcc` on `PATH`.
//! Target: `compute_$CUDA_COMPUTE_CAP` (default 80: the PTX is JIT-compiled by the driver for
//! any newer card, H100/H200 included).

use std::env;
use std::path::PathBuf;
use std::process::Command;

const KERNELS: [&str; 3] = ["paged_attention", "decoder_fused", "gemv"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cuda/common.cuh");
    for src in KERNELS {
        println!("cargo:rerun-if-changed=cuda/{src}.cu");
    }
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| {
            ["CUDA_HOME", "CUDA_PATH"]
                .iter()
                .filter_map(env::var_os)
                .map(|root| PathBuf::from(root).join("bin").join("nvcc"))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    for src in KERNELS {
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("-arch=compute_{cap}"))
            .arg(format!("cuda/{src}.cu"))
            .arg("-o")
            .arg(out_dir.join(format!("{src}.ptx")))
            .status()
            .unwrap_or_else(|e| panic!("grain-model: running {} failed: {e}", nvcc.display()));
        assert!(
            status.success(),
            "grain-model: nvcc could not compile cuda/{src}.cu ({status})"
        );
    }
}
