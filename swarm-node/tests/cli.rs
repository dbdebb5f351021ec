//! The `swarm-node` binary, run as a process.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const LIMIT: Duration = Duration::from_secs(30);

fn swarm_node() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_swarm-node"));
    command.env("RUST_LOG", "info").stdin(Stdio::null());
    command
}

fn output(args: &[&str]) -> Output {
    swarm_node().args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Kills the node if a test fails before it exited.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a live (not zombie) process is in the group led by `pid`, from /proc.
fn group_alive(pid: u32) -> bool {
    std::fs::read_dir("/proc").unwrap().filter_map(Result::ok).any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { return false };
        let Some((_, rest)) = stat.rsplit_once(") ") else { return false };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.len() > 2 && fields[2] == pid.to_string() && fields[0] != "Z"
    })
}

#[test]
fn no_arguments_list_the_backends() {
    let out = output(&[]);
    assert!(out.status.success());
    let listed = text(&out.stdout);
    for line in ["aggregate [--strategy", "debug", "exec PATH [ARG...]", "simulator [NAME...]"] {
        assert!(listed.lines().any(|l| l.starts_with(line)), "{line} missing from {listed}");
    }
}

#[test]
fn help_explains_the_syntax() {
    let out = output(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(help.contains("Pipeline syntax:"), "{help}");
    assert!(help.contains("swarm-node 'debug' 'simulator web db'"), "{help}");
    assert!(help.contains("certs"), "{help}");
}

#[test]
fn bad_stages_are_named() {
    let out = output(&["simulator", "debug 'x"]);
    assert_eq!(out.status.code(), Some(1));
    let error = text(&out.stderr);
    assert!(
        error.contains("stage 2 (\"debug 'x\"): unterminated single quote opened at column 7"),
        "{error}"
    );
    let out = output(&["aggregate simulator nope"]);
    assert_eq!(out.status.code(), Some(1));
    let error = text(&out.stderr);
    assert!(error.contains("child 2 (\"nope\"): unknown backend \"nope\""), "{error}");
}

#[test]
fn runs_a_pipeline_and_shuts_down_on_sigint_without_orphans() {
    run_and_interrupt(&[]);
}

#[test]
fn runs_on_one_thread_too() {
    run_and_interrupt(&["--threads", "1"]);
    let out = output(&["--threads", "0", "simulator"]);
    assert_eq!(out.status.code(), Some(2));
    let error = text(&out.stderr);
    assert!(error.contains("invalid value '0' for '--threads <N>'"), "{error}");
}

/// Runs a chain whose process has a child of its own, with `flags` before the stages, and
/// stops it with SIGINT: it exits 0, logs its lifecycle and leaves no process behind.
fn run_and_interrupt(flags: &[&str]) {
    let child = swarm_node()
        .args(flags)
        .args(["debug", r#"exec /bin/sh -c "sleep 1000 & echo pid $$; wait""#])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut node = Node(child);
    let stderr = node.0.stderr.take().unwrap();
    let (lines, logged) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut next = || {
        let line = logged.recv_timeout(LIMIT).expect("node stopped logging");
        seen.push(line.clone());
        line
    };
    // The process's output reaches the node's log through the chain's sink.
    let pid = loop {
        let line = next();
        if let Some((_, pid)) = line.split_once("stdout: pid ") {
            break pid.trim_end_matches('"').parse::<u32>().unwrap();
        }
    };
    assert!(group_alive(pid));

    kill(Pid::from_raw(i32::try_from(node.0.id()).unwrap()), Signal::SIGINT).unwrap();
    loop {
        match logged.recv_timeout(LIMIT) {
            Ok(line) => seen.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("node did not exit: {seen:#?}"),
        }
    }
    let status = node.0.wait().unwrap();
    assert!(status.success(), "{status:?}: {seen:#?}");
    assert!(!group_alive(pid), "exec's process outlived the node");
    for event in [
        "stage spawned",
        "stage started",
        "chain wired",
        "signal received",
        "process exited",
        "stopped",
    ] {
        assert!(seen.iter().any(|line| line.contains(event)), "no {event:?} in {seen:#?}");
    }
}

#[test]
fn certs_init_and_issue() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();

    let out = output(&["certs", "init", "--dir", certs_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mode = std::fs::metadata(certs.join("ca.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let ca = std::fs::read(certs.join("ca.crt")).unwrap();

    let out = output(&["certs", "init", "--dir", certs_arg]);
    assert_eq!(out.status.code(), Some(1));
    let error = text(&out.stderr);
    assert!(error.contains("already exists") && error.contains("--force"), "{error}");
    assert_eq!(std::fs::read(certs.join("ca.crt")).unwrap(), ca, "refused init changed the CA");

    let out = output(&["certs", "init", "--dir", certs_arg, "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_ne!(std::fs::read(certs.join("ca.crt")).unwrap(), ca);

    let args = ["certs", "issue", "node-1", "--dns", "n1.example", "--ip", "127.0.0.1"];
    let out = output(&[&args[..], &["--dir", certs_arg]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mode = std::fs::metadata(certs.join("node-1.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let identity = certs::Identity::load(&certs, "node-1").unwrap();
    assert_eq!(certs::peer_name(&[identity.cert_der().clone()]).unwrap(), "node-1");
    let pem = text(&std::fs::read(certs.join("node-1.crt")).unwrap());
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

    let out = output(&["certs", "issue", "node-1", "--dir", certs_arg]);
    assert_eq!(out.status.code(), Some(1));
    let out = output(&["certs", "issue", "bad name", "--dir", certs_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("invalid node name"), "{}", text(&out.stderr));

    let out =
        output(&["certs", "issue", "node-2", "--dir", dir.path().join("none").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot load the CA"), "{}", text(&out.stderr));
}
