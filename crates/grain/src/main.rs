//! `grain`: the command-line entry point (serve, inspect, make-tiny, …).

#![forbid(unsafe_code)]

mod check_device;
mod config;
mod device;
mod download;
mod inspect;
mod make_tiny;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "grain",
    version,
    about = "OpenAI-compatible server for adaptive-granularity multimodal models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API (with no model: the embedded tiny model).
    Serve(Box<config::ServeArgs>),
    /// Write a tiny deterministic checkpoint (test fixture / embedded default model).
    MakeTiny(make_tiny::MakeTinyArgs),
    /// Run one image + prompt through a checkpoint and print token counts, router logits and logits.
    Inspect(inspect::InspectArgs),
    /// Load-test an OpenAI-compatible endpoint (Grain or a peer): granularity modes × load levels.
    Bench(Box<grain_bench::BenchArgs>),
    /// Train the granularity router from the frozen model's answer losses (RGLF).
    TrainRouter(Box<grain_train::TrainRouterArgs>),
    /// Write the synthetic fine-vs-coarse question set that RGLF is demonstrated on.
    MakeRglfData(grain_train::synth::MakeRglfDataArgs),
    /// Fine-tune a small checkpoint's projector and LM at mixed granularities (RGLF demo).
    TrainLmm(Box<grain_train::finetune::TrainLmmArgs>),
    /// Device checks for the GPU machine: parity against the CPU, and the decoder benchmark.
    #[command(subcommand)]
    CheckDevice(check_device::CheckDevice),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => serve::run(*a),
        Command::MakeTiny(a) => make_tiny::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Bench(a) => grain_bench::run(*a),
        Command::TrainRouter(a) => Ok(grain_train::cli::main(*a)?),
        Command::CheckDevice(c) => check_device::run(c),
        Command::MakeRglfData(a) => Ok(grain_train::synth::main(a)?),
        Command::TrainLmm(a) => Ok(grain_train::finetune::main(*a)?),
    }
}
