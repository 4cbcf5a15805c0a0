//! `ratewarden`: a gateway that protects HTTP APIs from abuse.
//!
//! `main` stays thin: parse arguments, set up logging, run the chosen command.

mod check_config;
mod cli;
mod config;
mod demo;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    cli::init_logging(cli.log_format);
    match cli.command {
        cli::Command::Demo(args) => demo::run(&args),
        cli::Command::CheckConfig { file } => check_config::run(&file),
    }
}
