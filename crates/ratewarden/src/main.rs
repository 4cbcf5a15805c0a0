//! `ratewarden`: a gateway that protects HTTP APIs from abuse.
//!
//! `main` stays thin: parse arguments, set up logging, run the chosen command.

mod admin;
mod check_config;
mod cli;
mod config;
mod demo;
mod gateway;
mod logging;
mod login_scenario;
mod metrics;
mod scenario;

use clap::Parser;

/// mimalloc's thread-local free lists suit a request path of small, short-lived
/// allocations better than glibc's arenas (see the workspace manifest).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    // The demo prints its own report; per-request logs would drown it.
    let default_level = match cli.command {
        cli::Command::Demo(_) => "warn",
        cli::Command::Scenario(_) | cli::Command::LoginScenario(_) => "error",
        _ => "info",
    };
    logging::init(cli.log_format, default_level);
    match cli.command {
        cli::Command::Demo(args) => demo::run(&args),
        cli::Command::Scenario(args) => scenario::run(&args),
        cli::Command::LoginScenario(args) => login_scenario::run(&args),
        cli::Command::CheckConfig { file } => check_config::run(&file),
        cli::Command::Serve {
            config: path,
            clock_offset_ms,
        } => {
            ratewarden_core::clock::shift_system_clocks(clock_offset_ms.saturating_mul(1_000_000));
            let config = match config::load(&path) {
                Ok(c) => c,
                Err(errors) => {
                    for e in &errors.0 {
                        eprintln!("{}: {e}", path.display());
                    }
                    std::process::exit(1);
                }
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(gateway::serve(path, config))
        }
    }
}
