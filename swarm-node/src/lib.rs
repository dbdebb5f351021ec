//! The swarm node: runs a pipeline of libswarm backends, and manages the swarm CA.
//!
//! `swarm-node 'STAGE' 'STAGE' ...` spawns each stage from the built-in registry (see
//! [`backends::registry`]), wires each stage's downstream into the next one, starts them and
//! runs until SIGINT or SIGTERM, then shuts every stage down (killing the processes `exec`
//! started). With no arguments it lists the backends; `swarm-node certs` issues certificates.
//! The binary's `main.rs` only calls [`main`]; the parts live here so tests can reach them.
//!
//! Logs go to stderr through `tracing`, filtered by `RUST_LOG` (default `info`).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod ca;
pub mod chain;
pub mod cli;
pub mod config;
mod metrics;
pub mod node;

use clap::Parser;

/// Runs the `swarm-node` command line and exits the process with its status.
pub fn main() {
    let cli = cli::Cli::parse();
    init_tracing();
    if let Err(error) = cli::run(cli) {
        eprintln!("swarm-node: {error:#}");
        std::process::exit(1);
    }
}

fn init_tracing() {
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(metrics::HandshakeCounter.with_filter(
            tracing_subscriber::filter::Targets::new().with_target("libchan", tracing::Level::WARN),
        ))
        .init();
}
