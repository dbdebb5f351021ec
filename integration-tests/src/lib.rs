//! The harness of the tests that run real `swarm-node` processes.
//!
//! [`Swarm`] is a temporary directory with a throwaway CA minted by `certs`; [`Swarm::node`]
//! starts a node process (the `node-under-test` binary, which is `swarm-node`) with its own
//! log and ready file, and waits for the ready file, not for a time. [`Node`] kills its
//! process by pid when dropped. [`Hosts`] makes three network namespaces joined by veth pairs
//! (A routes; B and C serve) and deletes them when dropped. [`client`] is an in-process
//! `remote` stage, so tests speak to a node the way nodes speak to each other.
//!
//! Tests that need root, `ip` or `iptables` call [`require_real`]: by hand they skip with a
//! message; with `SWARM_REQUIRE_REAL=1` (as `.ci/run` sets) they fail instead.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backends::service::{parse_pipeline, Client, Node as NodeContext, Pipeline, Tasks};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Bound on every wait of the harness.
pub const LIMIT: Duration = Duration::from_secs(30);

/// A temporary directory with a swarm CA in `certs/`, where nodes keep their logs.
pub struct Swarm {
    dir: tempfile::TempDir,
    ca: certs::Ca,
    bin: PathBuf,
}

impl Swarm {
    /// A fresh swarm whose nodes run `bin` (`env!("CARGO_BIN_EXE_node-under-test")`).
    ///
    /// # Panics
    /// The directory or the CA cannot be made.
    pub fn new(bin: &str) -> Self {
        let mut dir = tempfile::tempdir().expect("temporary directory");
        if std::env::var_os("SWARM_KEEP").is_some() {
            // For a look at the nodes' logs after a run.
            dir.disable_cleanup(true);
            eprintln!("swarm directory kept: {}", dir.path().display());
        }
        let ca = certs::Ca::create("test swarm CA").expect("CA");
        ca.save(dir.path().join("certs"), false).expect("save CA");
        Self { dir, ca, bin: PathBuf::from(bin) }
    }

    /// The certificate directory (`certs/`).
    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// A path in the swarm's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues node `name` a certificate (also valid for 127.0.0.1) into `certs/`.
    ///
    /// # Panics
    /// Issuing or saving fails.
    pub fn issue(&self, name: &str) {
        let ip = "127.0.0.1".parse().expect("literal");
        let cert = self.ca.issue(name, &[], &[ip]).expect("issue");
        cert.save(self.certs(), true).expect("save certificate");
    }

    /// An in-process node called `name` with a certificate from this swarm.
    ///
    /// # Panics
    /// Issuing or loading fails.
    pub fn identity(&self, name: &str) -> NodeContext {
        self.issue(name);
        let identity = certs::Identity::load(self.certs(), name).expect("identity");
        let tls = libchan::Tls::new(identity.client_config(), identity.server_config())
            .with_peer_name(|chain| certs::peer_name(chain).ok());
        NodeContext::new(name).with_tls(tls)
    }

    /// A node process to configure and start.
    pub fn node(&self, name: &str) -> NodeBuilder<'_> {
        NodeBuilder {
            swarm: self,
            name: name.to_owned(),
            args: Vec::new(),
            netns: None,
            log_filter: None,
        }
    }
}

/// A node about to start.
pub struct NodeBuilder<'a> {
    swarm: &'a Swarm,
    name: String,
    args: Vec<String>,
    netns: Option<String>,
    log_filter: Option<String>,
}

impl NodeBuilder<'_> {
    /// Adds command-line arguments (flags or stages).
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Gives the node its name and the swarm's certificate directory (issuing its certificate).
    #[must_use]
    pub fn with_certs(self) -> Self {
        self.swarm.issue(&self.name);
        let (name, certs) = (self.name.clone(), self.swarm.certs().display().to_string());
        self.args(["--name".to_owned(), name, "--certs".to_owned(), certs])
    }

    /// Runs the node inside network namespace `netns`.
    #[must_use]
    pub fn in_netns(mut self, netns: &str) -> Self {
        self.netns = Some(netns.to_owned());
        self
    }

    /// Runs the node with `RUST_LOG=filter` (default: `$NODE_LOG`, else `info`).
    #[must_use]
    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log_filter = Some(filter.to_owned());
        self
    }

    /// Starts the node and waits for its ready file.
    ///
    /// # Panics
    /// The process cannot start, exits, or is not ready within [`LIMIT`].
    pub fn start(self) -> Node {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let run = STARTS.fetch_add(1, Ordering::Relaxed);
        let log = self.swarm.path(&format!("{}.{run}.log", self.name));
        let ready = self.swarm.path(&format!("{}.{run}.ready", self.name));
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&self.swarm.bin);
                command
            }
            None => Command::new(&self.swarm.bin),
        };
        command
            .arg("--ready-file")
            .arg(&ready)
            .args(&self.args)
            .env(
                "RUST_LOG",
                self.log_filter
                    .or_else(|| std::env::var("NODE_LOG").ok())
                    .unwrap_or_else(|| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let child = command.spawn().expect("start node-under-test");
        let mut node = Node {
            child,
            name: self.name,
            log,
            listening: Vec::new(),
            metrics: None,
            exited: None,
        };
        node.wait_ready(&ready);
        node
    }
}

/// A running node process, killed (by its pid) when dropped.
pub struct Node {
    child: Child,
    name: String,
    log: PathBuf,
    /// The URLs its listen stages bound, from its ready file.
    pub listening: Vec<String>,
    /// Where it serves metrics, from its ready file.
    pub metrics: Option<String>,
    exited: Option<ExitStatus>,
}

impl Node {
    fn wait_ready(&mut self, ready: &Path) {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Ok(text) = std::fs::read_to_string(ready) {
                self.listening = text
                    .lines()
                    .filter_map(|line| line.strip_prefix("listening "))
                    .map(str::to_owned)
                    .collect();
                self.metrics =
                    text.lines().find_map(|line| line.strip_prefix("metrics ")).map(str::to_owned);
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                panic!(
                    "node {} exited with {status} before it was ready:\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(Instant::now() < deadline, "node {} not ready:\n{}", self.name, self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first URL it listens on.
    ///
    /// # Panics
    /// It listens on none.
    pub fn url(&self) -> &str {
        self.listening.first().map(String::as_str).expect("the node listens nowhere")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    /// Sends SIGTERM and waits (at most [`LIMIT`]) for it to exit.
    ///
    /// # Panics
    /// It does not exit in time.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                self.exited = Some(status);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {} ignored SIGTERM:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its metrics page (`GET /metrics`).
    ///
    /// # Panics
    /// It serves no metrics, or the request fails.
    pub fn scrape(&self) -> String {
        use std::io::{Read as _, Write as _};
        let addr = self.metrics.as_deref().expect("the node serves no metrics");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect to metrics");
        stream.set_read_timeout(Some(LIMIT)).expect("timeout");
        stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: node\r\n\r\n").expect("request");
        let mut page = String::new();
        stream.read_to_string(&mut page).expect("response");
        page
    }

    /// Whether the process is still running (not exited, not killed).
    pub fn is_running(&mut self) -> bool {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
            }
        }
        self.exited.is_none()
    }

    /// Its resident memory high-water mark in KiB (`VmHWM` in `/proc/PID/status`), while it
    /// runs.
    pub fn memory_high_water_kib(&self) -> Option<u64> {
        if self.exited.is_some() {
            return None;
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find_map(|line| line.strip_prefix("VmHWM:"))?;
        line.trim().trim_end_matches("kB").trim().parse().ok()
    }

    /// Waits (at most [`LIMIT`]) until its log contains `text`; returns the log.
    ///
    /// # Panics
    /// It does not in time.
    pub fn wait_log(&self, text: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let log = self.log();
            if log.contains(text) {
                return log;
            }
            assert!(Instant::now() < deadline, "{text:?} not in the log of {}:\n{log}", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An in-process `remote URL` stage (no certificates: `tcp://` or `unix://`), as a client.
/// Requests wait at most `timeout` for their first answer.
///
/// # Panics
/// The stage cannot be spawned.
pub async fn client(url: &str, timeout: Duration, tasks: &Tasks) -> Client {
    client_of(NodeContext::new("test-client"), url, timeout, tasks).await
}

/// [`client`] as `node`, which may have certificates (see [`Swarm::identity`]).
///
/// # Panics
/// The stage cannot be spawned.
pub async fn client_of(node: NodeContext, url: &str, timeout: Duration, tasks: &Tasks) -> Client {
    let stage = format!("remote {url} --timeout {}", timeout.as_secs_f64());
    let specs = parse_pipeline(&[stage]).expect("spec");
    let (sink, _) = libchan::pipe();
    let registry = backends::registry().with_node(node);
    let pipeline = Pipeline::spawn(&registry, &specs, sink, tasks).await.expect("client stage");
    pipeline.start(LIMIT).await.expect("client start");
    let head = pipeline.head().expect("one stage").clone();
    Client::new(head).named("node").with_timeout(timeout + Duration::from_secs(5))
}

/// Whether a test that needs `what` may run. When it is not `available`: by hand, prints why
/// and returns false (the test skips); with `SWARM_REQUIRE_REAL=1`, panics.
///
/// # Panics
/// Unavailable under `SWARM_REQUIRE_REAL=1`.
pub fn require_real(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    assert!(
        std::env::var("SWARM_REQUIRE_REAL").as_deref() != Ok("1"),
        "SWARM_REQUIRE_REAL=1 but this test needs {what}"
    );
    eprintln!("skipped: this test needs {what} (set SWARM_REQUIRE_REAL=1 to make that a failure)");
    false
}

/// Whether we run as root with `ip` (and, if `iptables`, `iptables` with the `statistic`
/// match) at hand.
pub fn can_make_hosts(iptables: bool) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let ip = Command::new("ip").arg("-V").output().is_ok_and(|out| out.status.success());
    let tables = !iptables
        || Command::new("iptables").arg("-V").output().is_ok_and(|out| out.status.success());
    root && ip && tables
}

/// Three hosts as network namespaces: A routes, joined to B by one veth pair and to C by
/// another. Deleted (with their links) on drop.
pub struct Hosts {
    /// Namespace of A.
    pub a: String,
    /// Namespace of B.
    pub b: String,
    /// Namespace of C.
    pub c: String,
    /// B's address, as A reaches it.
    pub b_addr: String,
    /// C's address, as A reaches it.
    pub c_addr: String,
}

impl Hosts {
    /// Makes the three namespaces, with names unique to this process and call.
    ///
    /// # Panics
    /// An `ip` command fails.
    pub fn new() -> Self {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let id =
            format!("{}x{}", std::process::id() % 100_000, MADE.fetch_add(1, Ordering::Relaxed));
        let ns = |host: &str| format!("swt{id}{host}");
        let hosts = Self {
            a: ns("a"),
            b: ns("b"),
            c: ns("c"),
            b_addr: "10.77.1.2".to_owned(),
            c_addr: "10.77.2.2".to_owned(),
        };
        for netns in [&hosts.a, &hosts.b, &hosts.c] {
            ip(&["netns", "add", netns]);
            ip(&["-n", netns, "link", "set", "lo", "up"]);
        }
        for (peer, net) in [(&hosts.b, "10.77.1"), (&hosts.c, "10.77.2")] {
            // Interface names are at most 15 bytes; these live in their own namespaces.
            let (near, far) = (format!("v{id}a"), format!("v{id}p"));
            ip(&[
                "link", "add", &near, "netns", &hosts.a, "type", "veth", "peer", "name", &far,
                "netns", peer,
            ]);
            let side = if peer == &hosts.b { "b" } else { "c" };
            let near_named = format!("to{side}");
            ip(&["-n", &hosts.a, "link", "set", &near, "name", &near_named]);
            ip(&["-n", &hosts.a, "addr", "add", &format!("{net}.1/24"), "dev", &near_named]);
            ip(&["-n", &hosts.a, "link", "set", &near_named, "up"]);
            ip(&["-n", peer, "link", "set", &far, "name", "toa"]);
            ip(&["-n", peer, "addr", "add", &format!("{net}.2/24"), "dev", "toa"]);
            ip(&["-n", peer, "link", "set", "toa", "up"]);
        }
        hosts
    }

    /// Drops `percent` of the packets B receives and sends, at random (iptables `statistic`).
    ///
    /// # Panics
    /// `iptables` fails.
    pub fn lose_on_b(&self, percent: f64) {
        let probability = format!("{}", percent / 100.0);
        for chain in ["INPUT", "OUTPUT"] {
            let rule = [
                "-A",
                chain,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &probability,
                "-j",
                "DROP",
            ];
            run(Command::new("ip").args(["netns", "exec", &self.b, "iptables"]).args(rule));
        }
    }
}

impl Hosts {
    /// Cuts B off: every packet B receives or sends is dropped (iptables `DROP`, inserted
    /// first so it also beats [`Hosts::lose_on_b`]).
    ///
    /// # Panics
    /// `iptables` fails.
    pub fn cut_b(&self) {
        for chain in ["INPUT", "OUTPUT"] {
            run(Command::new("ip")
                .args(["netns", "exec", &self.b, "iptables", "-I", chain, "1", "-j", "DROP"]));
        }
    }

    /// Undoes [`Hosts::cut_b`].
    ///
    /// # Panics
    /// `iptables` fails (there was no cut).
    pub fn mend_b(&self) {
        for chain in ["INPUT", "OUTPUT"] {
            run(Command::new("ip")
                .args(["netns", "exec", &self.b, "iptables", "-D", chain, "-j", "DROP"]));
        }
    }
}

impl Default for Hosts {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for netns in [&self.a, &self.b, &self.c] {
            let _ = Command::new("ip").args(["netns", "del", netns]).output();
        }
    }
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

fn run(command: &mut Command) {
    let out = command.output().expect("run command");
    assert!(out.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}
