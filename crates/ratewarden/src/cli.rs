//! Command-line arguments.

use clap::{Parser, Subcommand, ValueEnum};

/// ratewarden: rate limits and abuse detection in front of any HTTP API.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// A sample API, the gateway in front of it and simulated clients over loopback:
    /// in memory, nothing to install.
    Demo(crate::demo::DemoArgs),
    /// Detection quality: a labelled mix of users and attackers replayed against static
    /// limits and against adaptive defence; what reached the API, what was refused.
    Scenario(crate::scenario::ScenarioArgs),
    /// Login protection measured: one simulated hour of credential stuffing and
    /// brute force mixed with real users' logins, with and without protection.
    LoginScenario(crate::login_scenario::LoginScenarioArgs),
    /// Run the gateway in front of the upstream named in the configuration.
    Serve {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: std::path::PathBuf,
        /// Testing aid: run as if this host's clock were this many milliseconds off
        /// (negative: behind), to show that instances sharing Redis agree anyway.
        #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
        clock_offset_ms: i64,
    },
    /// Validate a configuration file: print the compiled rules, or every error with its
    /// field path (exit code 1).
    CheckConfig {
        /// The TOML file.
        file: std::path::PathBuf,
    },
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line, for log pipelines.
    Json,
}
