//! The command line.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::node::Settings;
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

    /// The node's name; its certificate is CERTS/NAME.crt. Default: the only one there.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// The certificate directory `swarm-node certs` writes. Default: ./certs, if it exists.
    #[arg(long, value_name = "DIR")]
    pub certs: Option<PathBuf>,

    /// The swarm CA certificate (PEM), with --cert and --key instead of --certs.
    #[arg(long, value_name = "FILE", requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,

    /// The node certificate (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["ca", "key"])]
    pub cert: Option<PathBuf>,

    /// The node's private key (PEM, mode 0600).
    #[arg(long, value_name = "FILE", requires_all = ["ca", "cert"])]
    pub key: Option<PathBuf>,

    /// A TOML file with these settings and the pipeline; flags win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Serve Prometheus metrics on ADDR (GET /metrics), e.g. 127.0.0.1:9300.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Once every stage started, write FILE: a `listening URL` line per listen stage, then
    /// `metrics ADDR`.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,

    /// Seconds to wait for each stage to answer `Start`. Default: 30.
    #[arg(long, value_name = "SECS")]
    pub start_timeout: Option<u64>,

    /// Seconds shutdown may take: finishing requests in flight, then stopping the stages.
    /// Default: 10.
    #[arg(long, value_name = "SECS")]
    pub shutdown_timeout: Option<u64>,

    /// Worker threads. Default: 1, the node on one thread, where no task moves between cores:
    /// the least CPU and latency per request. More spread the node over that many cores, for
    /// a node whose load needs more than one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

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
        None if cli.stages.is_empty() && cli.config.is_none() => {
            print!("{}", chain::backend_list(&backends::registry()));
            Ok(())
        }
        None => {
            let settings = Settings::resolve(&cli)?;
            if settings.stages.is_empty() {
                anyhow::bail!("no pipeline: give stages on the command line or in the config file");
            }
            let runtime = runtime(settings.threads).context("cannot start the runtime")?;
            runtime.block_on(chain::run(settings))
        }
    }
}

/// A runtime with `threads` workers: on the calling thread for one (the default, `None`).
fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        None | Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
    };
    builder.enable_all().build()
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
  swarm-node --name B 'listen quic://0.0.0.0:7300' 'simulator b1 b2'
  swarm-node 'dockerserver tcp://127.0.0.1:4242' 'aggregate "remote quic://B:7300" "remote tls://C:7301"'

Logs go to stderr; set RUST_LOG (default: info), e.g. RUST_LOG=debug.
Ctrl-C (SIGINT) or SIGTERM stops every stage and the processes exec started."#;
