//! The config file (`--config FILE`, TOML): the same settings as the flags, and the pipeline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// What a config file may hold. Unknown keys are an error, so a typo does not go unnoticed.
/// Flags given on the command line win over the file; relative paths in the file are relative
/// to the file's directory.
///
/// ```toml
/// name = "node-b"
/// certs = "/etc/swarm/certs"        # or ca, cert and key
/// metrics = "127.0.0.1:9300"
/// shutdown_timeout = 10
/// threads = 1
/// pipeline = ["listen quic://0.0.0.0:7300", "simulator b1 b2"]
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The node's name; its certificate is `CERTS/NAME.crt`.
    pub name: Option<String>,
    /// The certificate directory, as `swarm-node certs` writes it.
    pub certs: Option<PathBuf>,
    /// The swarm CA certificate (with `cert` and `key`, instead of `certs` and `name`).
    pub ca: Option<PathBuf>,
    /// The node certificate.
    pub cert: Option<PathBuf>,
    /// The node's private key.
    pub key: Option<PathBuf>,
    /// Where to serve Prometheus metrics (`GET /metrics`).
    pub metrics: Option<SocketAddr>,
    /// Seconds each stage has to answer `Start`.
    pub start_timeout: Option<u64>,
    /// Seconds shutdown may take: draining requests in flight, then stopping the stages.
    pub shutdown_timeout: Option<u64>,
    /// Worker threads (at least 1); default 1.
    pub threads: Option<u16>,
    /// A file to write once every stage started: one `listening URL` line per listen stage,
    /// then `metrics ADDR` if metrics are served.
    pub ready_file: Option<PathBuf>,
    /// The stages, as on the command line.
    #[serde(default)]
    pub pipeline: Vec<String>,
}

impl Config {
    /// Reads and checks `path`.
    ///
    /// # Errors
    /// The file cannot be read or is not a valid config (unknown keys included).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let mut config: Config = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for path in [&mut config.certs, &mut config.ca, &mut config.cert, &mut config.key] {
            if let Some(path) = path.as_mut().filter(|p| p.is_relative()) {
                *path = base.join(&*path);
            }
        }
        if let Some(file) = config.ready_file.as_mut().filter(|p| p.is_relative()) {
            *file = base.join(&*file);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_settings_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "name = \"b\"\ncerts = \"c\"\nmetrics = \"127.0.0.1:9300\"\nthreads = 1\npipeline = [\"simulator x\"]\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.name.as_deref(), Some("b"));
        assert_eq!(config.certs.unwrap(), dir.path().join("c"));
        assert_eq!(config.pipeline, ["simulator x"]);
        assert_eq!(config.threads, Some(1));
        std::fs::write(&path, "name = \"b\"\nlisten = \"quic://x:1\"\n").unwrap();
        let error = format!("{:#}", Config::load(&path).unwrap_err());
        assert!(error.contains("unknown field `listen`"), "{error}");
    }
}
