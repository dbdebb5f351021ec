//! `exec`: runs a real process.

use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use libchan::Sender;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;

use crate::service::{
    Backend, HandlerError, HandlerResult, Message, Server, SpawnError, Stage, Tasks, Verb,
};

/// The `exec` backend: a stage that runs `PATH ARGS...` as a real process.
///
/// - `Start`: starts the process (in a process group of its own); `Ack(PID)`.
/// - `Attach(STREAM)`: `Ack` with `att` = a byte stream: `stdout` and `stderr` read the
///   process's output, `stdin` writes its input (shutting it down closes the input), `""` does
///   both (reads stdout, writes stdin). One attachment per stream at a time; output nobody is
///   attached to goes downstream as `Log` lines.
/// - `Get`: `Set(JSON)` with `Path`, `Args`, `Status` (`created`, `running`, `exited`), `Pid`,
///   `ExitCode` and `Signal`.
/// - `Watch`: `Ack`, then `Set("exited", CODE)` (CODE is `signal N` if a signal ended it).
/// - `Stop`: sends SIGTERM to the process group, SIGKILL after 10 s; `Ack(CODE)` once it is gone.
///
/// At shutdown the process group gets SIGTERM, then SIGKILL after 2 s, and is reaped, so no
/// child outlives the node. When the process ends by itself, what is left of its group is
/// killed, too.
#[derive(Clone, Copy, Debug, Default)]
pub struct Exec;

impl Backend for Exec {
    fn name(&self) -> &str {
        "exec"
    }

    fn usage(&self) -> &str {
        "PATH [ARG...]"
    }

    fn summary(&self) -> &str {
        "run a process: Start, Attach(stdout|stderr|stdin), Get, Watch, Stop"
    }

    fn spawn(&self, stage: Stage) -> BoxFuture<'static, Result<Sender<Message>, SpawnError>> {
        let result = match stage.args.split_first() {
            Some((path, args)) if !path.is_empty() => {
                let process = Arc::new(Process {
                    label: stage.name.clone(),
                    path: path.clone(),
                    args: args.to_vec(),
                    downstream: stage.downstream,
                    tasks: stage.tasks.clone(),
                    state: watch::Sender::new(State::Created),
                    stop: CancellationToken::new(),
                    stdout: Mutex::new(None),
                    stderr: Mutex::new(None),
                    stdin: std::sync::Mutex::new(Input::default()),
                });
                Ok(Server::with_state(stage.name, process)
                    .on(Verb::Start, start)
                    .on(Verb::Attach, attach)
                    .on(Verb::Get, get)
                    .on(Verb::Watch, watch_exit)
                    .on(Verb::Stop, stop)
                    .spawn(&stage.tasks))
            }
            _ => Err(SpawnError::usage(self, "no program to run")),
        };
        Box::pin(std::future::ready(result))
    }
}

struct Process {
    label: String,
    path: String,
    args: Vec<String>,
    downstream: Sender<Message>,
    tasks: Tasks,
    state: watch::Sender<State>,
    /// Fires on `Stop`.
    stop: CancellationToken,
    stdout: Mutex<Option<Output>>,
    stderr: Mutex<Option<Output>>,
    stdin: std::sync::Mutex<Input>,
}

type Output = Box<dyn AsyncWrite + Send + Unpin>;
type Source = Box<dyn AsyncRead + Send + Unpin>;

/// The process's input: where it goes once started, and what to copy into it.
#[derive(Default)]
struct Input {
    pipe: Option<tokio::process::ChildStdin>,
    source: Option<Source>,
    attached: bool,
}

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum State {
    Created,
    Starting,
    Running { pid: u32 },
    Exited { code: Option<i32>, signal: Option<i32> },
}

impl State {
    fn exit_text(self) -> Option<String> {
        match self {
            State::Exited { code: Some(code), .. } => Some(code.to_string()),
            State::Exited { signal: Some(signal), .. } => Some(format!("signal {signal}")),
            State::Exited { .. } => Some("unknown".to_owned()),
            _ => None,
        }
    }
}

async fn start(process: Arc<Process>, request: Message) -> HandlerResult {
    let mut claimed = false;
    process.state.send_if_modified(|state| {
        claimed = *state == State::Created;
        if claimed {
            *state = State::Starting;
        }
        claimed
    });
    if !claimed {
        return Err(HandlerError::new(format!("{} was already started", process.path)));
    }
    let mut command = Command::new(&process.path);
    command
        .args(&process.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            process.state.send_replace(State::Exited { code: None, signal: None });
            return Err(HandlerError::new(format!("cannot run {}: {error}", process.path)));
        }
    };
    // Invariant: a child spawned a moment ago has a pid until it is waited for.
    let pid = child.id().unwrap_or_default();
    tracing::info!(stage = %process.label, pid, "process started");
    if let Some(stdout) = child.stdout.take() {
        process.tasks.spawn(pump(process.clone(), Stream::Stdout, stdout));
    }
    if let Some(stderr) = child.stderr.take() {
        process.tasks.spawn(pump(process.clone(), Stream::Stderr, stderr));
    }
    let feed = {
        let mut input = lock(&process.stdin);
        match (input.source.take(), child.stdin.take()) {
            (Some(source), Some(pipe)) => Some((source, pipe)),
            (_, pipe) => {
                // Kept open for a later `Attach("stdin")`.
                input.pipe = pipe;
                None
            }
        }
    };
    if let Some((source, pipe)) = feed {
        process.tasks.spawn(feed_input(process.clone(), source, pipe));
    }
    process.state.send_replace(State::Running { pid });
    process.tasks.spawn(supervise(process.clone(), child, pid));
    request.reply(Message::ack().with_args([pid.to_string()])).await?;
    Ok(())
}

async fn attach(process: Arc<Process>, request: Message) -> HandlerResult {
    let stream = request.arg(0).unwrap_or_default();
    let (ours, theirs) = libchan::byte_pipe();
    let (read, write) = tokio::io::split(ours);
    match stream {
        "stdout" => set_output(&process.stdout, stream, Box::new(write)).await?,
        "stderr" => set_output(&process.stderr, stream, Box::new(write)).await?,
        "stdin" => set_input(&process, Box::new(read))?,
        "" => {
            set_output(&process.stdout, "stdout", Box::new(write)).await?;
            set_input(&process, Box::new(read))?;
        }
        other => {
            return Err(HandlerError::new(format!(
                "no stream {other:?}: expected stdout, stderr, stdin or \"\""
            )))
        }
    }
    request.reply(Message::ack().with_att(theirs)).await?;
    Ok(())
}

async fn get(process: Arc<Process>, request: Message) -> HandlerResult {
    let state = *process.state.borrow();
    let (status, pid, code, signal) = match state {
        State::Created => ("created", 0, None, None),
        State::Starting => ("starting", 0, None, None),
        State::Running { pid } => ("running", pid, None, None),
        State::Exited { code, signal } => ("exited", 0, code, signal),
    };
    let json = json!({
        "Path": process.path,
        "Args": process.args,
        "Status": status,
        "Running": status == "running",
        "Pid": pid,
        "ExitCode": code,
        "Signal": signal,
    });
    request.reply(Message::set([json.to_string()])).await?;
    Ok(())
}

async fn watch_exit(process: Arc<Process>, request: Message) -> HandlerResult {
    request.reply(Message::ack()).await?;
    let exit = exited(&process).await;
    request.reply(Message::set(["exited".to_owned(), exit])).await?;
    Ok(())
}

async fn stop(process: Arc<Process>, request: Message) -> HandlerResult {
    let state = *process.state.borrow();
    let exit = match state {
        State::Created => "not started".to_owned(),
        _ => {
            process.stop.cancel();
            exited(&process).await
        }
    };
    request.reply(Message::ack().with_args([exit])).await?;
    Ok(())
}

/// Waits until the process has exited; returns its exit code as text.
async fn exited(process: &Process) -> String {
    let mut state = process.state.subscribe();
    let state = state.wait_for(|state| matches!(state, State::Exited { .. })).await;
    // Invariant: `process` owns the sender, so the channel cannot close while we wait.
    state.ok().and_then(|state| state.exit_text()).unwrap_or_default()
}

/// Owns the child: waits for it to exit, or terminates it on `Stop` or at shutdown.
async fn supervise(process: Arc<Process>, mut child: Child, pid: u32) {
    let shutdown = process.tasks.shutdown_token().clone();
    let status = tokio::select! {
        status = child.wait() => status,
        () = process.stop.cancelled() => terminate(&mut child, pid, STOP_GRACE).await,
        () = shutdown.cancelled() => terminate(&mut child, pid, SHUTDOWN_GRACE).await,
    };
    // Whatever the process left behind in its group goes with it, before anyone hears that
    // the process is gone.
    signal_group(pid, Signal::SIGKILL);
    let _ = tokio::task::spawn_blocking(move || wait_group_gone(pid, GROUP_GONE_LIMIT)).await;
    let state = match status {
        Ok(status) => exit_state(status),
        Err(error) => {
            tracing::warn!(stage = %process.label, pid, %error, "cannot wait for the process");
            State::Exited { code: None, signal: None }
        }
    };
    process.state.send_replace(state);
    let exit = state.exit_text().unwrap_or_default();
    tracing::info!(stage = %process.label, pid, exit = %exit, "process exited");
    if !shutdown.is_cancelled() {
        let line = format!("{}: exited with status {exit}", process.label);
        let _ =
            tokio::time::timeout(DOWNSTREAM_TIMEOUT, process.downstream.send(Message::log(line)))
                .await;
    }
}

async fn terminate(child: &mut Child, pid: u32, grace: Duration) -> std::io::Result<ExitStatus> {
    signal_group(pid, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            signal_group(pid, Signal::SIGKILL);
            child.wait().await
        }
    }
}

/// Waits, up to `limit`, until no live process is left in group `pgid` (SIGKILL is delivered
/// asynchronously). Zombies do not count: their parent may be gone and nobody may reap them.
/// Where `/proc` cannot be read this returns at once.
fn wait_group_gone(pgid: u32, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while group_has_live_process(pgid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn group_has_live_process(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    let pgid = pgid.to_string();
    entries.filter_map(Result::ok).any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { return false };
        // After the parenthesised command: state, ppid, pgrp, ...
        let Some((_, rest)) = stat.rsplit_once(") ") else { return false };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        state != Some("Z") && fields.nth(1) == Some(pgid.as_str())
    })
}

fn signal_group(pid: u32, signal: Signal) {
    let Ok(pid) = i32::try_from(pid) else { return };
    if pid > 0 {
        // ESRCH: the group is already empty.
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

fn exit_state(status: ExitStatus) -> State {
    use std::os::unix::process::ExitStatusExt;
    State::Exited { code: status.code(), signal: status.signal() }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Copies one output of the process to its attachment, or downstream as `Log` lines.
async fn pump(process: Arc<Process>, stream: Stream, mut output: impl AsyncRead + Unpin) {
    let (slot, name) = match stream {
        Stream::Stdout => (&process.stdout, "stdout"),
        Stream::Stderr => (&process.stderr, "stderr"),
    };
    let mut buf = vec![0; 16 * 1024];
    let shutdown = process.tasks.shutdown_token().clone();
    loop {
        let read = tokio::select! {
            () = shutdown.cancelled() => break,
            read = output.read(&mut buf) => read,
        };
        let chunk = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => &buf[..n],
        };
        let mut attached = slot.lock().await;
        if let Some(sink) = attached.as_mut() {
            let written = tokio::select! {
                () = shutdown.cancelled() => break,
                written = sink.write_all(chunk) => written,
            };
            if written.is_ok() {
                continue;
            }
            *attached = None;
        }
        drop(attached);
        for line in String::from_utf8_lossy(chunk).lines() {
            let text = format!("{} {name}: {line}", process.label);
            if process.downstream.send(Message::log(text)).await.is_err() {
                break;
            }
        }
    }
    if let Some(mut sink) = slot.lock().await.take() {
        let _ = sink.shutdown().await;
    }
}

async fn feed_input(
    process: Arc<Process>,
    mut source: Source,
    mut pipe: tokio::process::ChildStdin,
) {
    let shutdown = process.tasks.shutdown_token().clone();
    tokio::select! {
        () = shutdown.cancelled() => {}
        _ = tokio::io::copy(&mut source, &mut pipe) => {}
    }
    let _ = pipe.shutdown().await;
}

async fn set_output(slot: &Mutex<Option<Output>>, name: &str, sink: Output) -> HandlerResult {
    let mut slot = slot.lock().await;
    if slot.is_some() {
        return Err(HandlerError::new(format!("{name} is already attached")));
    }
    *slot = Some(sink);
    Ok(())
}

fn set_input(process: &Arc<Process>, source: Source) -> HandlerResult {
    let mut input = lock(&process.stdin);
    if input.attached {
        return Err(HandlerError::new("stdin is already attached"));
    }
    input.attached = true;
    match input.pipe.take() {
        Some(pipe) => drop(process.tasks.spawn(feed_input(process.clone(), source, pipe))),
        None => input.source = Some(source),
    }
    Ok(())
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data; a panic while holding the lock leaves it consistent enough to go on.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long the end of a process waits for the rest of its group to die after SIGKILL.
const GROUP_GONE_LIMIT: Duration = Duration::from_secs(1);
/// How long `Stop` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long shutdown waits after SIGTERM before SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long the exit notice may wait for downstream.
const DOWNSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use libchan::Receiver;
    use serde_json::Value;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::service::{Client, Registry, StageSpec};

    const LIMIT: Duration = Duration::from_secs(20);

    async fn exec(spec: &str, tasks: &Tasks) -> (Client, Receiver<Message>) {
        let (downstream, logs) = libchan::pipe();
        let registry = Registry::new().with(Exec);
        let input = registry.spawn(&StageSpec::parse(spec).unwrap(), downstream, tasks).await;
        (Client::new(input.unwrap()).named(spec).with_timeout(LIMIT), logs)
    }

    async fn read_all(mut stream: impl AsyncRead + Unpin) -> String {
        let mut text = String::new();
        tokio::time::timeout(LIMIT, stream.read_to_string(&mut text)).await.unwrap().unwrap();
        text
    }

    async fn state(process: &Client) -> Value {
        serde_json::from_str(&process.get().await.unwrap()).unwrap()
    }

    /// Whether a live (not zombie) process is left in the group led by `pid`, from /proc.
    fn group_alive(pid: u64) -> bool {
        let entries = std::fs::read_dir("/proc").unwrap();
        entries.filter_map(Result::ok).any(|entry| {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { return false };
            // Fields after the parenthesised command: state, ppid, pgrp, ...
            let Some((_, rest)) = stat.rsplit_once(") ") else { return false };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.len() > 2 && fields[2] == pid.to_string() && fields[0] != "Z"
        })
    }

    /// A shell whose child runs in the background: signalling only the shell orphans it.
    const SLEEPER: &str = r#"exec /bin/sh -c "sleep 1000 & echo ready; wait""#;

    /// Starts [`SLEEPER`] and waits until its child runs; returns the group's id.
    async fn start_sleeper(process: &Client) -> u64 {
        let mut stdout = process.attach("stdout").await.unwrap().att.unwrap();
        process.start().await.unwrap();
        let mut ready = [0; 6];
        tokio::time::timeout(LIMIT, stdout.read_exact(&mut ready)).await.unwrap().unwrap();
        assert_eq!(&ready, b"ready\n");
        let pid = state(process).await["Pid"].as_u64().unwrap();
        assert!(group_alive(pid));
        pid
    }

    #[tokio::test]
    async fn output_and_exit_status() {
        let tasks = Tasks::new();
        let (process, _) =
            exec(r#"exec /bin/sh -c "echo out; echo err >&2; exit 3""#, &tasks).await;
        assert_eq!(state(&process).await["Status"], "created");
        let stdout = process.attach("stdout").await.unwrap().att.unwrap();
        let stderr = process.attach("stderr").await.unwrap().att.unwrap();
        let error = process.attach("stdout").await.unwrap_err();
        assert_eq!(error.to_string(), "Attach: stdout is already attached");
        let mut exits = process.watch().await.unwrap();
        process.start().await.unwrap();
        assert_eq!(read_all(stdout).await, "out\n");
        assert_eq!(read_all(stderr).await, "err\n");
        let exit = tokio::time::timeout(LIMIT, exits.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!((exit.verb, exit.args), (Verb::Set, vec!["exited".into(), "3".into()]));
        let state = state(&process).await;
        assert_eq!(
            (state["Status"].as_str(), state["ExitCode"].as_i64()),
            (Some("exited"), Some(3))
        );
        let error = process.start().await.unwrap_err();
        assert_eq!(error.to_string(), "Start: /bin/sh was already started");
        assert!(tasks.shutdown(LIMIT).await);
    }

    #[tokio::test]
    async fn stdin_is_written() {
        let tasks = Tasks::new();
        let (process, _) = exec("exec /bin/cat", &tasks).await;
        process.start().await.unwrap();
        let mut stdio = process.attach("").await.unwrap().att.unwrap();
        stdio.write_all(b"hello\n").await.unwrap();
        let mut line = [0; 6];
        tokio::time::timeout(LIMIT, stdio.read_exact(&mut line)).await.unwrap().unwrap();
        assert_eq!(&line, b"hello\n");
        stdio.shutdown().await.unwrap();
        assert_eq!(read_all(stdio).await, "");
        let mut exits = process.watch().await.unwrap();
        let exit = tokio::time::timeout(LIMIT, exits.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(exit.args, ["exited", "0"]);
        assert!(tasks.shutdown(LIMIT).await);
    }

    #[tokio::test]
    async fn stop_terminates_the_whole_group() {
        let tasks = Tasks::new();
        let (process, _) = exec(SLEEPER, &tasks).await;
        let pid = start_sleeper(&process).await;
        let (reply, _) = process.call(Verb::Stop, [""; 0]).await.unwrap();
        assert_eq!((reply.verb, reply.args), (Verb::Ack, vec!["signal 15".to_owned()]));
        assert!(!group_alive(pid), "a process of the group outlived Stop");
        assert_eq!(state(&process).await["Signal"], 15);
        assert!(tasks.shutdown(LIMIT).await);
    }

    #[tokio::test]
    async fn shutdown_kills_running_processes() {
        let tasks = Tasks::new();
        let (process, _) = exec(SLEEPER, &tasks).await;
        let pid = start_sleeper(&process).await;
        assert!(tasks.shutdown(LIMIT).await, "tasks did not end");
        assert!(!group_alive(pid), "a process of the group outlived shutdown");
    }

    #[tokio::test]
    async fn unattached_output_goes_downstream_as_log_lines() {
        let tasks = Tasks::new();
        let (process, mut logs) = exec("exec /bin/sh -c 'echo one; echo two'", &tasks).await;
        process.start().await.unwrap();
        let mut lines = Vec::new();
        while lines.len() < 3 {
            let log = tokio::time::timeout(LIMIT, logs.recv()).await.unwrap().unwrap().unwrap();
            assert_eq!(log.verb, Verb::Log);
            lines.push(log.args[0].clone());
        }
        let label = "exec /bin/sh -c 'echo one; echo two'";
        assert_eq!(
            lines,
            [
                format!("{label} stdout: one"),
                format!("{label} stdout: two"),
                format!("{label}: exited with status 0")
            ]
        );
        assert!(tasks.shutdown(LIMIT).await);
    }

    #[tokio::test]
    async fn bad_programs_and_arguments_are_errors() {
        let tasks = Tasks::new();
        let (process, _) = exec("exec /nonexistent/program", &tasks).await;
        let error = process.start().await.unwrap_err();
        assert!(
            error.to_string().starts_with("Start: cannot run /nonexistent/program: "),
            "{error}"
        );
        let error = process.attach("stdfoo").await.unwrap_err();
        assert!(error.to_string().contains("no stream \"stdfoo\""), "{error}");

        let (downstream, _) = libchan::pipe();
        let spec = StageSpec::parse("exec").unwrap();
        let error = Registry::new().with(Exec).spawn(&spec, downstream, &tasks).await.unwrap_err();
        assert_eq!(error.to_string(), "no program to run (usage: exec PATH [ARG...])");
    }
}
