//! Test support for the Docker tests: in-process pipelines with a `dockerserver` head, the real
//! `docker` CLI with a bound on every run, and a private `dockerd`.

#![allow(dead_code)]

pub mod dockerd;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use backends::service::{parse_pipeline, Client, Node, Pipeline, Registry, Tasks};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// Bound on one CLI command.
pub const CLI_LIMIT: Duration = Duration::from_secs(60);
/// Bound on pipeline start and each verb.
pub const LIMIT: Duration = Duration::from_secs(30);

/// What a CLI run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Stdout, panicking with everything if the command failed.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "command failed: {self:#?}");
        &self.stdout
    }
}

/// A running pipeline whose head is a `dockerserver` on a loopback port.
pub struct Front {
    pub tasks: Tasks,
    pub host: String,
    pub pipeline: Pipeline,
}

impl Front {
    /// Spawns and starts `dockerserver tcp://127.0.0.1:0` in front of `stages`.
    pub async fn start(stages: &[&str]) -> Self {
        Self::start_on(backends::registry(), stages).await
    }

    /// As [`Front::start`], with the backends of `registry` (a node identity, say).
    pub async fn start_on(registry: Registry, stages: &[&str]) -> Self {
        let tasks = Tasks::new();
        let mut all = vec!["dockerserver tcp://127.0.0.1:0"];
        all.extend_from_slice(stages);
        let specs = parse_pipeline(&all).unwrap();
        let (sink, sunk) = libchan::pipe();
        // The sink's output is not under test; keep it drained.
        tasks.spawn(async move {
            let mut sunk = sunk;
            while let Ok(Some(_)) = sunk.recv().await {}
        });
        let pipeline = Pipeline::spawn(&registry, &specs, sink, &tasks).await.unwrap();
        pipeline.start(LIMIT).await.unwrap();
        let head = Client::new(pipeline.head().unwrap().clone()).with_timeout(LIMIT);
        let state: Value = serde_json::from_str(&head.get().await.unwrap()).unwrap();
        let host = state["Url"].as_str().unwrap().to_owned();
        Self { tasks, host, pipeline }
    }

    /// Runs `docker -H HOST ARGS...`.
    pub async fn docker(&self, args: &[&str]) -> Run {
        docker(&self.host, args, None).await
    }

    /// Stops every stage.
    pub async fn shutdown(self) {
        assert!(self.tasks.shutdown(LIMIT).await, "tasks did not end in time");
    }
}

/// The CLI under test: `/usr/local/bin/docker` (28.x) if present, else `docker` on PATH.
pub fn docker_cli() -> PathBuf {
    let pinned = PathBuf::from("/usr/local/bin/docker");
    if pinned.exists() {
        pinned
    } else {
        PathBuf::from("docker")
    }
}

/// Runs `docker -H HOST ARGS...` with `stdin` (or none), bounded by [`CLI_LIMIT`].
pub async fn docker(host: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let config = std::env::temp_dir().join("swarm-docker-cli-config");
    let mut command = tokio::process::Command::new(docker_cli());
    command
        .arg("-H")
        .arg(host)
        .args(args)
        .env("DOCKER_CONFIG", &config)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_API_VERSION")
        .env_remove("DOCKER_TLS_VERIFY")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("the docker CLI runs");
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(bytes).await.unwrap();
        drop(pipe);
    }
    let output = tokio::time::timeout(CLI_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("docker {args:?} did not finish within {CLI_LIMIT:?}"))
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Whether tests that need a real part must fail rather than skip.
pub fn require_real() -> bool {
    std::env::var("SWARM_REQUIRE_REAL").is_ok_and(|value| value == "1")
}

/// Skips (or fails, under `SWARM_REQUIRE_REAL=1`) a test that cannot run here.
#[track_caller]
pub fn skip(reason: &str) {
    assert!(!require_real(), "SWARM_REQUIRE_REAL=1 but {reason}");
    eprintln!("skipped: {reason}");
}

/// Parses JSON, panicking with the text.
#[track_caller]
pub fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("{error}: {text}"))
}

/// A throwaway swarm CA's node `name`, with its certificates, for `listen`/`remote` stages.
pub fn swarm_node(ca: &certs::Ca, name: &str) -> Node {
    let cert = ca.issue(name, &[], &["127.0.0.1".parse().unwrap()]).unwrap();
    let identity = certs::Identity::new(ca, &cert).unwrap();
    let tls = libchan::Tls::new(identity.client_config(), identity.server_config())
        .with_peer_name(|chain| certs::peer_name(chain).ok());
    Node::new(name).with_tls(tls)
}

/// Serves `listen quic://127.0.0.1:0` + `stage` as `node`; returns the URL it listens on and
/// the running pipeline (keep it until the end).
pub async fn serve_node(node: &Node, stage: &str, tasks: &Tasks) -> (String, Pipeline) {
    let specs = parse_pipeline(&["listen quic://127.0.0.1:0", stage]).unwrap();
    let (sink, _) = libchan::pipe();
    let registry = backends::registry().with_node(node.clone());
    let pipeline = Pipeline::spawn(&registry, &specs, sink, tasks).await.unwrap();
    pipeline.start(LIMIT).await.unwrap();
    (node.listening()[0].clone(), pipeline)
}
