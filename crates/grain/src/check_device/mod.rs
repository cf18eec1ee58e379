//! `grain check-device`: the checks that `scripts/gpu-check.sh` runs on a GPU machine, runnable on
//! the CPU too (`--device cpu`, `--shapes small`) so that their logic is tested where there is no GPU.
//!
//! - `parity`: a checkpoint on the device under test against the CPU, f32 and bf16.
//! - `kernels`: the paged KV cache's kernels on the device against their CPU form.
//! - `bench`: decode and prefill speed of the decoder with random weights of a given shape.

mod bench;
mod kernels;
mod parity;

#[cfg(test)]
mod tests;

#[derive(clap::Subcommand)]
pub enum CheckDevice {
    /// Compare router decision, logits and greedy tokens on a device against the CPU.
    Parity(parity::ParityArgs),
    /// The paged KV kernels (slot writes, decode attention) against their CPU form, 7B head shapes.
    Kernels(kernels::KernelArgs),
    /// Decode tokens/s and prefill time with random weights (7B shapes, or `small` for a dry run).
    Bench(Box<bench::BenchArgs>),
}

pub fn run(c: CheckDevice) -> anyhow::Result<()> {
    match c {
        CheckDevice::Parity(a) => parity::run(a),
        CheckDevice::Bench(a) => bench::run(*a),
        CheckDevice::Kernels(a) => kernels::run(a),
    }
}
