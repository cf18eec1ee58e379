//! With the `cuda` feature, compiles `cuda/paged_attention.cu` (the paged KV cache's kernels) to
//! PTX with nvcc; `src/paged_device/cuda.rs` embeds it and loads it once per device. Without the
//! feature this does nothing, so default builds need no CUDA toolkit.
//!
//! nvcc: `$NVCC`, else `$CUDA_HOME/bin/nvcc` or `$CUDA_PATH/bin/nvcc`, else `nvcc` on `PATH`.
//! Target: `compute_$CUDA_COMPUTE_CAP` (default 80: the PTX is JIT-compiled by the driver for
//! any newer card, H100/H200 included).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cuda/paged_attention.cu");
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
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("paged_attention.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("cuda/paged_attention.cu")
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("grain-model: running {} failed: {e}", nvcc.display()));
    assert!(
        status.success(),
        "grain-model: nvcc could not compile cuda/paged_attention.cu ({status})"
    );
}
