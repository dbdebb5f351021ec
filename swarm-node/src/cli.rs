//! The command line.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::{ca, chain};

/// Compose network services from backends chained like unix pipes.
#[derive(Debug, Parser)]
#[command(
    name = "swarm-node",
    version,
    args_conflicts_with_subcommands = true,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Pipeline stages, each one quoted word: `BACKEND ARG...`. None: list the backends.
    #[arg(value_name = "STAGE")]
    pub stages: Vec<String>,

    /// Seconds to wait for each stage to answer `Start`.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub start_timeout: u64,

    /// Seconds to wait for the stages to stop at shutdown.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub shutdown_timeout: u64,

    /// A subcommand instead of a pipeline.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the swarm CA and node certificates.
    #[command(subcommand)]
    Certs(Certs),
}

/// `swarm-node certs ...`.
#[derive(Debug, Subcommand)]
pub enum Certs {
    /// Create the swarm CA: DIR/ca.crt and DIR/ca.key (mode 0600).
    Init {
        /// Where the certificates live.
        #[arg(long, value_name = "DIR", default_value = "./certs")]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, value_name = "NAME", default_value = "swarm CA")]
        name: String,
        /// Overwrite an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate signed by the CA: DIR/NAME.crt and DIR/NAME.key.
    Issue(Issue),
}

/// `swarm-node certs issue ...`.
#[derive(Args, Debug)]
pub struct Issue {
    /// The node name, in the certificate's common name and first DNS name.
    pub name: String,
    /// Further DNS names the node is dialled by (repeatable).
    #[arg(long, value_name = "DNS")]
    pub dns: Vec<String>,
    /// IP addresses the node is dialled by (repeatable).
    #[arg(long, value_name = "IP")]
    pub ip: Vec<IpAddr>,
    /// Where the certificates live.
    #[arg(long, value_name = "DIR", default_value = "./certs")]
    pub dir: PathBuf,
    /// Overwrite an existing certificate of that name.
    #[arg(long)]
    pub force: bool,
}

/// Runs what `cli` asks for.
///
/// # Errors
/// What failed, with context, for printing with `{:#}`.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Certs(command)) => ca::run(command),
        None if cli.stages.is_empty() => {
            print!("{}", chain::backend_list(&backends::registry()));
            Ok(())
        }
        None => {
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            let options = chain::Options {
                start_timeout: Duration::from_secs(cli.start_timeout),
                shutdown_timeout: Duration::from_secs(cli.shutdown_timeout),
            };
            runtime.block_on(chain::run(&cli.stages, options))
        }
    }
}

const AFTER_HELP: &str = r#"Pipeline syntax:
  Each STAGE is one argument (quote it for your shell): a backend name, then its arguments,
  split like a POSIX shell does (single quotes, double quotes, backslash; no expansions).
  Each stage sends what it forwards or originates to the next stage; a stage nested in
  another (the children of aggregate) is one quoted word inside the stage.

Examples:
  swarm-node                                  list the backends
  swarm-node 'debug' 'simulator web db'       a debug tap in front of a simulated host
  swarm-node 'exec /bin/sh -c "echo hello"'   run a process; its output is logged
  swarm-node 'aggregate --strategy spread "simulator a" "simulator b"'
  swarm-node certs init --dir ./certs
  swarm-node certs issue node-1 --dns node-1.example --ip 10.0.0.1

Logs go to stderr; set RUST_LOG (default: info), e.g. RUST_LOG=debug.
Ctrl-C (SIGINT) or SIGTERM stops every stage and the processes exec started."#;
