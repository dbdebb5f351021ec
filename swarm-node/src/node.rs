//! The node's identity and settings, from the flags and the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use backends::service::Node;

use crate::cli::Cli;
use crate::config::Config;

/// Everything a run needs, flags merged over the config file.
#[derive(Debug)]
pub struct Settings {
    /// The stages.
    pub stages: Vec<String>,
    /// The node: name, certificates, session limits.
    pub node: Node,
    /// Where to serve metrics.
    pub metrics: Option<SocketAddr>,
    /// Bound on each stage's answer to `Start`.
    pub start_timeout: Duration,
    /// Bound on shutdown.
    pub shutdown_timeout: Duration,
    /// Where to say that the node is ready.
    pub ready_file: Option<PathBuf>,
    /// Worker threads; `None`: one.
    pub threads: Option<usize>,
}

impl Settings {
    /// Merges `cli` over its config file and loads the node's certificates.
    ///
    /// The identity comes from `--ca/--cert/--key` (all three), or from `CERTS/NAME.crt` in the
    /// certificate directory (`--certs`, default `./certs`) where NAME is `--name` or, without
    /// it, the only node certificate there. Without either the node has no certificates and
    /// serves and dials only `tcp://` and `unix://`.
    ///
    /// # Errors
    /// An unreadable config file, incomplete or invalid certificate settings.
    pub fn resolve(cli: &Cli) -> anyhow::Result<Self> {
        let config = match &cli.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let stages =
            if cli.stages.is_empty() { config.pipeline.clone() } else { cli.stages.clone() };
        let name = cli.name.clone().or(config.name.clone());
        let files = (
            cli.ca.clone().or(config.ca.clone()),
            cli.cert.clone().or(config.cert.clone()),
            cli.key.clone().or(config.key.clone()),
        );
        let explicit_dir = cli.certs.clone().or(config.certs.clone());
        let identity = match files {
            (Some(ca), Some(cert), Some(key)) => Some(
                certs::Identity::from_files(&ca, &cert, &key)
                    .context("cannot load the node identity from --ca/--cert/--key")?,
            ),
            (None, None, None) => {
                let dir = explicit_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CERTS));
                load_from_dir(&dir, name.as_deref(), explicit_dir.is_some())?
            }
            _ => bail!("--ca, --cert and --key go together"),
        };
        if let (Some(name), Some(identity)) = (&name, &identity) {
            if identity.name() != name {
                bail!("the certificate is for node {:?}, not {name:?}", identity.name());
            }
        }
        let name = name.or(identity.as_ref().map(|id| id.name().to_owned())).unwrap_or_default();
        let mut node = Node::new(name);
        if let Some(identity) = identity {
            let tls = libchan::Tls::new(identity.client_config(), identity.server_config())
                .with_peer_name(|chain| certs::peer_name(chain).ok());
            node = node.with_tls(tls);
        }
        let secs = |flag: Option<u64>, file: Option<u64>, default| {
            Duration::from_secs(flag.or(file).unwrap_or(default))
        };
        let threads = cli.threads.or(config.threads);
        if threads == Some(0) {
            bail!("threads must be at least 1");
        }
        Ok(Self {
            threads: threads.map(usize::from),
            stages,
            node,
            metrics: cli.metrics.or(config.metrics),
            start_timeout: secs(cli.start_timeout, config.start_timeout, 30),
            shutdown_timeout: secs(cli.shutdown_timeout, config.shutdown_timeout, 10),
            ready_file: cli.ready_file.clone().or(config.ready_file),
        })
    }
}

/// The identity in `dir`: node `name`'s, or the only one there. A missing default directory
/// means no certificates; a directory given explicitly must hold one.
fn load_from_dir(
    dir: &Path,
    name: Option<&str>,
    explicit: bool,
) -> anyhow::Result<Option<certs::Identity>> {
    if !dir.exists() && !explicit {
        return Ok(None);
    }
    let name = match name {
        Some(name) => name.to_owned(),
        None => {
            let mut names = node_certs(dir)?;
            match names.len() {
                1 => names.remove(0),
                0 if !explicit => return Ok(None),
                0 => bail!(
                    "no node certificate in {} (run `swarm-node certs issue NAME`)",
                    dir.display()
                ),
                _ => bail!(
                    "several node certificates in {} ({}): say which with --name",
                    dir.display(),
                    names.join(", ")
                ),
            }
        }
    };
    let identity = certs::Identity::load(dir, &name)
        .with_context(|| format!("cannot load node {name:?} from {}", dir.display()))?;
    Ok(Some(identity))
}

/// The NAMEs of the `NAME.crt` files in `dir`, but the CA's, sorted.
fn node_certs(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter_map(|file| file.strip_suffix(".crt").map(str::to_owned))
        .filter(|name| name != "ca")
        .collect();
    names.sort();
    Ok(names)
}

const DEFAULT_CERTS: &str = "./certs";
