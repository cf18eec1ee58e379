//! `grain`: the command-line entry point (serve, inspect, make-tiny, …).

#![forbid(unsafe_code)]

mod config;
mod download;
mod inspect;
mod make_tiny;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "grain", version, about = "OpenAI-compatible server for adaptive-granularity multimodal models")]
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => serve::run(*a),
        Command::MakeTiny(a) => make_tiny::run(a),
        Command::Inspect(a) => inspect::run(a),
    }
}
