//! `simulator`: an in-memory Docker-like host whose containers run simulated processes.

mod log;
mod program;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use libchan::Sender;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::log::{Live, View};
use self::program::{Io, Output, Stdin, STDOUT};
use crate::random::random_u64;
use crate::service::{
    Backend, HandlerError, HandlerResult, Message, Server, SpawnError, Stage, Tasks, Verb,
};

/// The `simulator` backend: a Docker-like host whose containers live in memory for as long as
/// the stage does and run simulated processes (`echo`, `cat`, `sh -c`, `sleep`, ...: see
/// `docs/backends.md`), enough for a Docker API frontend to serve the container commands of
/// the `docker` CLI with output, stdin and exit codes.
///
/// The stage (the host) answers:
/// - `Ls`: `Set(names...)`, in creation order, without Docker's leading `/`;
/// - `Spawn(CONFIG [NAME])`: creates a container from a Docker create-style JSON config
///   (`Image` required; `Cmd`, `Entrypoint`, `Env`, `Tty`, `OpenStdin`, `StdinOnce`,
///   `Labels`, `HostConfig`, and `name` if no `NAME` argument); `Ack` with `ret` = the
///   container;
/// - `Attach(NAME)`: `Ack(ID, INSPECT_JSON)` with `ret` = the container, found by name,
///   `/name`, or a unique prefix of its id;
/// - `Get`: `Set(JSON)` with the host's counts (`Containers`, `ContainersRunning`, ...);
/// - `Start`, `Stop`: `Ack` (the host itself has no state to change).
///
/// A container answers the verbs of `docs/docker.md` as `dockerclient` does: `Get`
/// (inspect), `Start`, `Stop` (`timeout N`, `kill SIGNAL`, `rm [force]`), `Set` (`name`,
/// `paused`, `size`), `Watch(CONDITION)`, `Connect("logs" | "attach", KEY=VALUE...)` and
/// `Spawn(EXEC_CONFIG)` (an exec, which answers `Get`, `Connect("start", BODY)`,
/// `Start(BODY)` and `Set("size", ...)`).
///
/// The stage's arguments name containers that exist from the start (image `scratch`, no
/// command: they run until stopped).
#[derive(Clone, Copy, Debug, Default)]
pub struct Simulator;

impl Backend for Simulator {
    fn name(&self) -> &str {
        "simulator"
    }

    fn usage(&self) -> &str {
        "[NAME...]"
    }

    fn summary(&self) -> &str {
        "an in-memory Docker-like host whose containers run simulated processes (echo, cat, sh -c...)"
    }

    fn spawn(&self, stage: Stage) -> BoxFuture<'static, Result<Sender<Message>, SpawnError>> {
        Box::pin(std::future::ready(spawn_host(self, stage)))
    }
}

fn spawn_host(backend: &Simulator, stage: Stage) -> Result<Sender<Message>, SpawnError> {
    let host =
        Arc::new(Host { label: stage.name.clone(), tasks: stage.tasks.clone(), ..Host::default() });
    for name in &stage.args {
        let config = json!({"Image": "scratch"});
        host.create(&config, Some(name))
            .map_err(|error| SpawnError::usage(backend, error.text()))?;
    }
    Ok(Server::with_state(stage.name, host)
        .on(Verb::Ls, ls)
        .on(Verb::Spawn, create)
        .on(Verb::Attach, attach)
        .on(Verb::Get, info)
        .on(Verb::Start, ack)
        .on(Verb::Stop, ack)
        .spawn(&stage.tasks))
}

#[derive(Default)]
struct Host {
    label: String,
    tasks: Tasks,
    state: Mutex<HostState>,
}

#[derive(Default)]
struct HostState {
    containers: Vec<Container>,
    next_pid: u32,
    next_address: u32,
}

struct Container {
    id: String,
    name: String,
    created: String,
    config: Value,
    host_config: Value,
    status: Status,
    /// Paused while running (`docker pause`).
    paused: bool,
    pid: u32,
    exit_code: i32,
    /// Why the last start failed.
    error: String,
    started_at: String,
    finished_at: String,
    address: String,
    live: Arc<Live>,
    /// Fires when the current run ends: kills its process and its execs.
    run: CancellationToken,
    /// The stdin of the next (or current) run, while nobody took it (`OpenStdin` only).
    stdin: Option<mpsc::Sender<Bytes>>,
    stdin_next: Option<mpsc::Receiver<Bytes>>,
}

#[derive(Clone, Copy, Eq, PartialEq)]
enum Status {
    Created,
    Running,
    Exited,
}

impl Container {
    fn flag(&self, key: &str) -> bool {
        self.config[key] == true
    }

    fn auto_remove(&self) -> bool {
        self.host_config["AutoRemove"] == true
    }

    /// `Entrypoint` then `Cmd`.
    fn command(&self) -> Vec<String> {
        ["Entrypoint", "Cmd"]
            .iter()
            .filter_map(|key| self.config.get(*key).and_then(Value::as_array))
            .flatten()
            .filter_map(|word| word.as_str().map(str::to_owned))
            .collect()
    }

    fn fresh_stdin(&mut self) {
        let (sender, receiver) = mpsc::channel(STDIN_CHUNKS);
        self.stdin = Some(sender);
        self.stdin_next = Some(receiver);
    }

    /// Records the end of the running process with `code`; false if it was not running.
    fn end_run(&mut self, code: i32) -> bool {
        if self.status != Status::Running {
            return false;
        }
        self.status = Status::Exited;
        self.paused = false;
        self.pid = 0;
        self.exit_code = code;
        self.finished_at = now();
        self.address.clear();
        self.run.cancel();
        self.fresh_stdin();
        self.live.paused.send_replace(false);
        self.live.events.send_modify(|life| {
            life.exits = life.runs;
            life.running = false;
            life.code = code;
        });
        true
    }
}

impl Host {
    fn lock(&self) -> MutexGuard<'_, HostState> {
        // Plain data; a panic while holding the lock leaves it consistent enough to go on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates a container; returns its id and its live side.
    fn create(
        &self,
        config: &Value,
        name: Option<&str>,
    ) -> Result<(String, Arc<Live>), HandlerError> {
        let config = config
            .as_object()
            .ok_or_else(|| HandlerError::new("invalid container config: not a JSON object"))?;
        let image = config.get("Image").and_then(Value::as_str).unwrap_or_default();
        if image.is_empty() {
            return Err(HandlerError::new("invalid container config: Image is required"));
        }
        let id = new_id();
        let name = match name.or_else(|| config.get("name").and_then(Value::as_str)) {
            Some(name) => name.trim_start_matches('/').to_owned(),
            None => format!("sim_{}", &id[..12]),
        };
        check_name(&name)?;
        let mut state = self.lock();
        if state.containers.iter().any(|c| c.name == name) {
            return Err(HandlerError::new(format!(
                "conflict: the container name \"/{name}\" is already in use"
            )));
        }
        if state.containers.len() >= MAX_CONTAINERS {
            return Err(HandlerError::new(format!(
                "the simulator holds at most {MAX_CONTAINERS} containers"
            )));
        }
        let live = Arc::new(Live::new());
        let mut container = Container {
            id: id.clone(),
            name,
            created: now(),
            config: container_config(config, &id),
            host_config: config.get("HostConfig").cloned().unwrap_or_else(|| json!({})),
            status: Status::Created,
            paused: false,
            pid: 0,
            exit_code: 0,
            error: String::new(),
            started_at: ZERO_TIME.to_owned(),
            finished_at: ZERO_TIME.to_owned(),
            address: String::new(),
            live: live.clone(),
            run: CancellationToken::new(),
            stdin: None,
            stdin_next: None,
        };
        container.fresh_stdin();
        state.containers.push(container);
        Ok((id, live))
    }

    /// The id of the container called `name` (or `/name`, or with that id prefix).
    fn find(&self, name: &str) -> Result<(String, Arc<Live>), HandlerError> {
        let state = self.lock();
        let wanted = name.trim_start_matches('/');
        let by_name = state.containers.iter().find(|c| c.name == wanted);
        let found = match by_name {
            Some(container) => Some(container),
            None if wanted.is_empty() => None,
            None => {
                let mut matches = state.containers.iter().filter(|c| c.id.starts_with(wanted));
                match (matches.next(), matches.next()) {
                    (Some(container), None) => Some(container),
                    (Some(_), Some(_)) => {
                        return Err(HandlerError::new(format!(
                            "multiple containers match the id prefix {wanted}"
                        )))
                    }
                    _ => None,
                }
            }
        };
        found
            .map(|container| (container.id.clone(), container.live.clone()))
            .ok_or_else(|| HandlerError::new(format!("no such container: {name}")))
    }

    /// Runs `change` on container `id`, failing if it was removed.
    fn with<T>(
        &self,
        id: &str,
        change: impl FnOnce(&mut HostState, usize) -> Result<T, HandlerError>,
    ) -> Result<T, HandlerError> {
        let mut state = self.lock();
        let index = state
            .containers
            .iter()
            .position(|c| c.id == id)
            .ok_or_else(|| HandlerError::new(format!("no such container: {id}")))?;
        change(&mut state, index)
    }

    /// The process of run `run` of container `id` exited by itself with `code`.
    fn exited(&self, id: &str, run: u64, code: i32) {
        let mut state = self.lock();
        let Some(index) = state.containers.iter().position(|c| c.id == id) else { return };
        if state.containers[index].live.events.borrow().runs == run {
            finish(&mut state, index, code);
        }
        tracing::debug!(stage = %self.label, %id, code, "container exited");
    }

    fn object(self: &Arc<Self>, id: String, live: Arc<Live>) -> Sender<Message> {
        let object = Arc::new(Object { host: self.clone(), id, live });
        Server::with_state(format!("{} container", self.label), object)
            .on(Verb::Get, inspect)
            .on(Verb::Start, start)
            .on(Verb::Stop, stop)
            .on(Verb::Set, set)
            .on(Verb::Watch, watch)
            .on(Verb::Connect, connect)
            .on(Verb::Spawn, exec_create)
            .spawn(&self.tasks)
    }
}

/// Ends the run of container `index` with `code` and removes the container if it asked for
/// that (`HostConfig.AutoRemove`, `docker run --rm`), as a daemon does.
fn finish(state: &mut HostState, index: usize, code: i32) {
    if state.containers[index].end_run(code) && state.containers[index].auto_remove() {
        remove(state, index);
    }
}

fn remove(state: &mut HostState, index: usize) {
    let container = state.containers.remove(index);
    container.run.cancel();
    container.live.paused.send_replace(false);
    container.live.events.send_modify(|life| life.removed = true);
}

struct Object {
    host: Arc<Host>,
    id: String,
    live: Arc<Live>,
}

async fn ls(host: Arc<Host>, request: Message) -> HandlerResult {
    let names: Vec<String> = host.lock().containers.iter().map(|c| c.name.clone()).collect();
    request.reply(Message::set(names)).await?;
    Ok(())
}

async fn create(host: Arc<Host>, request: Message) -> HandlerResult {
    let text = request.arg(0).ok_or_else(|| HandlerError::new("Spawn needs a JSON config"))?;
    let config: Value = serde_json::from_str(text)
        .map_err(|error| HandlerError::new(format!("invalid container config: {error}")))?;
    let (id, live) = host.create(&config, request.arg(1).filter(|name| !name.is_empty()))?;
    tracing::debug!(stage = %host.label, %id, "container created");
    let object = host.object(id.clone(), live);
    request.reply(Message::ack().with_args([id]).with_ret(object)).await?;
    Ok(())
}

/// `Attach(NAME)`: `Ack(ID, INSPECT_JSON)` with `ret` = the container (the document saves a
/// frontend's `ps` a `Get` per container).
async fn attach(host: Arc<Host>, request: Message) -> HandlerResult {
    let (id, live) = host.find(request.arg(0).unwrap_or_default())?;
    let inspect = host.with(&id, |state, index| Ok(inspect_json(&state.containers[index])))?;
    let object = host.object(id.clone(), live);
    let answer = Message::ack().with_args([id, inspect.to_string()]);
    request.reply(answer.with_ret(object)).await?;
    Ok(())
}

async fn info(host: Arc<Host>, request: Message) -> HandlerResult {
    let info = {
        let state = host.lock();
        let count =
            |wanted: fn(&Container) -> bool| state.containers.iter().filter(|c| wanted(c)).count();
        json!({
            "Name": host.label,
            "Driver": "simulator",
            "Containers": state.containers.len(),
            "ContainersRunning": count(|c| c.status == Status::Running && !c.paused),
            "ContainersPaused": count(|c| c.paused),
            "ContainersStopped": count(|c| c.status != Status::Running),
        })
    };
    request.reply(Message::set([info.to_string()])).await?;
    Ok(())
}

async fn ack(_: Arc<Host>, request: Message) -> HandlerResult {
    request.reply(Message::ack()).await?;
    Ok(())
}

async fn inspect(object: Arc<Object>, request: Message) -> HandlerResult {
    let json =
        object.host.with(&object.id, |state, index| Ok(inspect_json(&state.containers[index])))?;
    request.reply(Message::set([json.to_string()])).await?;
    Ok(())
}

/// What a start hands to the process task.
struct Launch {
    argv: Vec<String>,
    stdin: Stdin,
    tty: bool,
    run: u64,
    token: CancellationToken,
}

async fn start(object: Arc<Object>, request: Message) -> HandlerResult {
    let launch = object.host.with(&object.id, |state, index| {
        if state.containers[index].status == Status::Running {
            return Ok(None);
        }
        let argv = state.containers[index].command();
        if let Err(text) = program::check(&argv, START_ERROR) {
            // As dockerd: the container stays as it was, with the error and code 127.
            let container = &mut state.containers[index];
            container.exit_code = 127;
            container.error = text.clone();
            container.live.events.send_modify(|life| {
                life.runs += 1;
                life.exits = life.runs;
                life.code = 127;
            });
            if container.auto_remove() {
                remove(state, index);
            }
            return Err(HandlerError::new(text));
        }
        state.next_pid += 1;
        state.next_address += 1;
        let (pid, address) = (1000 + state.next_pid, state.next_address);
        let container = &mut state.containers[index];
        container.status = Status::Running;
        container.pid = pid;
        container.exit_code = 0;
        container.error.clear();
        container.started_at = now();
        container.address = format!("172.17.{}.{}", address / 250, 2 + address % 250);
        container.run = CancellationToken::new();
        let stdin = match container.stdin_next.take() {
            Some(receiver) if container.flag("OpenStdin") => Stdin::new(receiver),
            _ => Stdin::closed(),
        };
        container.live.events.send_modify(|life| {
            life.runs += 1;
            life.running = true;
        });
        Ok(Some(Launch {
            argv,
            stdin,
            tty: container.flag("Tty"),
            run: container.live.events.borrow().runs,
            token: container.run.clone(),
        }))
    })?;
    let Some(launch) = launch else {
        request.reply(Message::ack().with_args(["not modified"])).await?;
        return Ok(());
    };
    tracing::debug!(stage = %object.host.label, id = %object.id, "container started");
    let (host, id, live) = (object.host.clone(), object.id.clone(), object.live.clone());
    let shutdown = host.tasks.shutdown_token().clone();
    object.host.tasks.spawn(async move {
        let Launch { argv, stdin, tty, run, token } = launch;
        let paused = live.paused.subscribe();
        let mut io = Io { stdin, out: Output::Log(live), tty, paused };
        tokio::select! {
            code = program::run(&argv, &mut io) => host.exited(&id, run, code),
            () = token.cancelled() => {}
            () = shutdown.cancelled() => {}
        }
    });
    request.reply(Message::ack()).await?;
    Ok(())
}

/// `Set("name", NEW)` renames; `Set("paused", "true"|"false")` pauses or unpauses a running
/// container; `Set("size", H, W)` (a TTY resize) changes nothing. Answers `Ack` when the
/// request has `ret`.
async fn set(object: Arc<Object>, request: Message) -> HandlerResult {
    let value = request.arg(1).unwrap_or_default().to_owned();
    match request.arg(0) {
        Some("name") => {
            let name = value.trim_start_matches('/').to_owned();
            check_name(&name)?;
            object.host.with(&object.id, |state, index| {
                let taken = state.containers.iter().any(|c| c.name == name && c.id != object.id);
                if taken {
                    return Err(HandlerError::new(format!(
                        "conflict: the container name \"/{name}\" is already in use"
                    )));
                }
                state.containers[index].name = name;
                Ok(())
            })?;
        }
        Some("paused") => {
            let pause = value == "true";
            object.host.with(&object.id, |state, index| {
                let container = &mut state.containers[index];
                if container.status != Status::Running {
                    return Err(HandlerError::new(format!(
                        "container {} is not running",
                        container.id
                    )));
                }
                if !pause && !container.paused {
                    return Err(HandlerError::new(format!(
                        "container {} is not paused",
                        container.id
                    )));
                }
                if pause && container.paused {
                    return Err(HandlerError::new(format!(
                        "container {} is already paused",
                        container.id
                    )));
                }
                container.paused = pause;
                container.live.paused.send_replace(pause);
                Ok(())
            })?;
        }
        Some("size") => {}
        other => {
            let what = other.unwrap_or_default();
            return Err(HandlerError::new(format!("not implemented: Set({what})")));
        }
    }
    if request.ret.is_some() {
        request.reply(Message::ack()).await?;
    }
    Ok(())
}

/// `Stop()` and `Stop("timeout", N)` stop the process as dockerd stops a container's PID 1
/// without signal handlers: SIGTERM changes nothing, so after N seconds (10 by default) of
/// waiting for it to exit by itself, SIGKILL ends it (137). `Stop("kill", SIGNAL)` delivers
/// SIGNAL: only `KILL` ends the process (137), as PID 1 ignores the others. `Stop("rm" [,
/// "force"])` removes the container (a running one only with `force`, killing it).
async fn stop(object: Arc<Object>, request: Message) -> HandlerResult {
    let arg = |index| request.arg(index).unwrap_or_default();
    if matches!(arg(0), "" | "timeout") {
        let seconds = arg(1).parse::<u64>().unwrap_or(DEFAULT_STOP_SECONDS).min(MAX_STOP_SECONDS);
        let answer = graceful_stop(&object, Duration::from_secs(seconds)).await?;
        request.reply(answer).await?;
        return Ok(());
    }
    object.host.with(&object.id, |state, index| {
        let container = &state.containers[index];
        let running = container.status == Status::Running;
        match arg(0) {
            "kill" => {
                let name = Some(arg(1)).filter(|s| !s.is_empty()).unwrap_or("KILL");
                let signal = signal_number(name)
                    .ok_or_else(|| HandlerError::new(format!("Invalid signal: {name}")))?;
                if !running {
                    return Err(HandlerError::new(format!(
                        "Cannot kill container: {}: Container {} is not running",
                        container.name, container.id
                    )));
                }
                if signal == SIGKILL {
                    finish(state, index, 128 + SIGKILL);
                }
            }
            "rm" => {
                let force = request.args[1..].iter().any(|flag| flag == "force");
                if running && !force {
                    return Err(HandlerError::new(format!(
                        "You cannot remove a running container {}. Stop the container before \
                         attempting removal or force remove",
                        container.id
                    )));
                }
                state.containers[index].end_run(128 + SIGKILL);
                remove(state, index);
            }
            other => return Err(HandlerError::new(format!("not implemented: Stop({other})"))),
        }
        Ok(())
    })?;
    request.reply(Message::ack()).await?;
    Ok(())
}

/// Waits up to `grace` for the running process to exit by itself, then kills it.
async fn graceful_stop(object: &Object, grace: Duration) -> Result<Message, HandlerError> {
    let mut events = object.live.events.subscribe();
    let life = *events.borrow_and_update();
    let running = object
        .host
        .with(&object.id, |state, index| Ok(state.containers[index].status == Status::Running))?;
    if !running {
        return Ok(Message::ack().with_args(["not modified"]));
    }
    let exited = events.wait_for(|now| now.exits >= life.runs || now.removed);
    if tokio::time::timeout(grace, exited).await.is_err() {
        object.host.with(&object.id, |state, index| {
            if state.containers[index].live.events.borrow().runs == life.runs {
                finish(state, index, 128 + SIGKILL);
            }
            Ok(())
        })?;
    }
    Ok(Message::ack())
}

/// `Watch(CONDITION)`: `Ack` once the waiter is registered, then `Set("exited", CODE)` when
/// the container is not running (`not-running`, the default), has exited after the request
/// (`next-exit`) or is gone (`removed`). Dropping `ret` cancels it.
async fn watch(object: Arc<Object>, request: Message) -> HandlerResult {
    let condition = request.arg(0).filter(|c| !c.is_empty()).unwrap_or("not-running").to_owned();
    if !matches!(condition.as_str(), "not-running" | "next-exit" | "removed") {
        return Err(HandlerError::new(format!("invalid condition: {condition:?}")));
    }
    let mut events = object.live.events.subscribe();
    let registered = *events.borrow_and_update();
    if registered.removed {
        return Err(HandlerError::new(format!("no such container: {}", object.id)));
    }
    request.reply(Message::ack()).await?;
    let Some(ret) = request.ret else { return Ok(()) };
    let shutdown = object.host.tasks.shutdown_token().clone();
    loop {
        let life = *events.borrow_and_update();
        let done = match condition.as_str() {
            "not-running" => !life.running || life.removed,
            "next-exit" => life.exits > registered.exits || life.removed,
            _ => life.removed,
        };
        if done {
            let _ = ret.send(Message::set(["exited".to_owned(), life.code.to_string()])).await;
            return Ok(());
        }
        tokio::select! {
            changed = events.changed() => if changed.is_err() { return Ok(()) },
            () = ret.closed() => return Ok(()),
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// `Connect("logs", KEY=VALUE...)` and `Connect("attach", KEY=VALUE...)`: `Ack` with `att`,
/// the byte stream of `docs/docker.md`.
async fn connect(object: Arc<Object>, request: Message) -> HandlerResult {
    let options: Vec<(String, String)> = request
        .args
        .iter()
        .skip(1)
        .map(|arg| {
            let (key, value) = arg.split_once('=').unwrap_or((arg, ""));
            (key.to_owned(), value.to_owned())
        })
        .collect();
    let flag = |key: &str| {
        options.iter().any(|(k, v)| k == key && matches!(v.as_str(), "1" | "true" | "True"))
    };
    match request.arg(0).unwrap_or_default() {
        "logs" => logs(&object, &request, &options, flag("follow")).await,
        "attach" => {
            let wants = (flag("stdin"), flag("logs"), flag("stream"));
            attach_stream(&object, &request, &options, wants).await
        }
        other => Err(HandlerError::new(format!("not implemented: Connect({other})"))),
    }
}

async fn logs(
    object: &Object,
    request: &Message,
    options: &[(String, String)],
    follow: bool,
) -> HandlerResult {
    let tty =
        object.host.with(&object.id, |state, index| Ok(state.containers[index].flag("Tty")))?;
    let view = View::from_options(options, tty);
    if !view.stdout && !view.stderr {
        return Err(HandlerError::new("Bad parameters: you must choose at least one stream"));
    }
    let tail = options
        .iter()
        .find(|(key, _)| key == "tail")
        .and_then(|(_, value)| value.parse::<usize>().ok());
    let life = *object.live.events.borrow();
    let (entries, end) = object.live.snapshot();
    let mut shown: Vec<_> = entries.into_iter().filter(|entry| view.wants(entry)).collect();
    if let Some(tail) = tail {
        shown.drain(..shown.len().saturating_sub(tail));
    }
    let (mut ours, theirs) = libchan::byte_pipe();
    request.reply(Message::ack().with_att(theirs)).await?;
    if ours.write_all(&view.render(&shown)).await.is_ok() && follow && life.running {
        object.live.follow(end, life.runs, false, &view, &mut ours).await;
    }
    let _ = ours.shutdown().await;
    Ok(())
}

async fn attach_stream(
    object: &Object,
    request: &Message,
    options: &[(String, String)],
    (wants_stdin, wants_logs, wants_stream): (bool, bool, bool),
) -> HandlerResult {
    let (tty, stdin) = object.host.with(&object.id, |state, index| {
        let container = &mut state.containers[index];
        let stdin = match (wants_stdin && container.flag("OpenStdin"), container.flag("StdinOnce"))
        {
            (false, _) => None,
            // The attach that closes stdin must hold its only sender.
            (true, true) => container.stdin.take(),
            (true, false) => container.stdin.clone(),
        };
        Ok((container.flag("Tty"), stdin))
    })?;
    let view =
        View { timestamps: false, since: None, until: None, ..View::from_options(options, tty) };
    let life = *object.live.events.borrow();
    let (entries, end) = object.live.snapshot();
    // A container that does not run yet is followed through its next run (`docker run`
    // attaches before it starts).
    let exits = if life.running { life.runs } else { life.runs + 1 };
    let (ours, theirs) = libchan::byte_pipe();
    request.reply(Message::ack().with_att(theirs)).await?;
    let (input, mut output) = tokio::io::split(ours);
    let copy_out = async {
        let logged = !wants_logs || output.write_all(&view.render(&entries)).await.is_ok();
        if logged && wants_stream && !life.removed {
            object.live.follow(end, exits, true, &view, &mut output).await;
        }
        let _ = output.shutdown().await;
    };
    let copy_in = async {
        feed(input, stdin).await;
        // The output decides when the attach ends.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = copy_out => {}
        () = copy_in => {}
    }
    Ok(())
}

/// Copies what the client writes into a process's stdin until the client's end of input
/// (then drops `stdin`, which is the process's EOF if it was the only sender); without
/// `stdin`, or once the process stopped reading, the input is read and dropped.
async fn feed(mut input: impl AsyncRead + Unpin, mut stdin: Option<mpsc::Sender<Bytes>>) {
    let mut buffer = vec![0; STDIN_CHUNK];
    loop {
        let read = match input.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if let Some(sender) = &stdin {
            if sender.send(Bytes::copy_from_slice(&buffer[..read])).await.is_err() {
                stdin = None;
            }
        }
    }
}

/// An exec instance: a process run inside a running container.
struct Exec {
    host: Arc<Host>,
    container: String,
    id: String,
    live: Arc<Live>,
    argv: Vec<String>,
    config: Value,
    state: Mutex<ExecState>,
}

#[derive(Default)]
struct ExecState {
    started: bool,
    running: bool,
    exit_code: Option<i32>,
    pid: u32,
}

impl Exec {
    fn lock(&self) -> MutexGuard<'_, ExecState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn flag(&self, key: &str) -> bool {
        self.config[key] == true
    }
}

/// `Spawn(EXEC_CONFIG)` on a container: `Ack(EXEC_ID)` with `ret` = the exec.
async fn exec_create(object: Arc<Object>, request: Message) -> HandlerResult {
    let text = request.arg(0).ok_or_else(|| HandlerError::new("Spawn needs a JSON config"))?;
    let config: Value = serde_json::from_str(text)
        .map_err(|error| HandlerError::new(format!("invalid exec config: {error}")))?;
    let argv: Vec<String> = match &config["Cmd"] {
        Value::String(cmd) => vec![cmd.clone()],
        cmd => {
            cmd.as_array().into_iter().flatten().filter_map(Value::as_str).map(Into::into).collect()
        }
    };
    if argv.is_empty() {
        return Err(HandlerError::new("invalid exec config: No exec command specified"));
    }
    object.host.with(&object.id, |state, index| {
        let container = &state.containers[index];
        if container.status != Status::Running {
            return Err(HandlerError::new(format!("Container {} is not running", container.id)));
        }
        if container.paused {
            return Err(HandlerError::new(format!(
                "Container {} is paused, unpause the container before exec",
                container.name
            )));
        }
        Ok(())
    })?;
    let id = new_id();
    let exec = Arc::new(Exec {
        host: object.host.clone(),
        container: object.id.clone(),
        id: id.clone(),
        live: object.live.clone(),
        argv,
        config,
        state: Mutex::new(ExecState::default()),
    });
    let exec = Server::with_state(format!("{} exec", object.host.label), exec)
        .on(Verb::Get, exec_inspect)
        .on(Verb::Start, exec_start)
        .on(Verb::Connect, exec_start)
        .on(Verb::Set, exec_resize)
        .spawn(&object.host.tasks);
    request.reply(Message::ack().with_args([id]).with_ret(exec)).await?;
    Ok(())
}

async fn exec_inspect(exec: Arc<Exec>, request: Message) -> HandlerResult {
    let json = {
        let state = exec.lock();
        let (path, args) = exec.argv.split_first().map_or(("", &[][..]), |(p, a)| (p, a));
        json!({
            "ID": exec.id,
            "Running": state.running,
            "ExitCode": state.exit_code,
            "ProcessConfig": {
                "tty": exec.flag("Tty"),
                "entrypoint": path,
                "arguments": args,
                "privileged": exec.flag("Privileged"),
                "user": exec.config["User"].as_str().unwrap_or_default(),
            },
            "OpenStdin": exec.flag("AttachStdin"),
            "OpenStderr": exec.flag("AttachStderr"),
            "OpenStdout": exec.flag("AttachStdout"),
            "CanRemove": false,
            "ContainerID": exec.container,
            "DetachKeys": "",
            "Pid": state.pid,
        })
    };
    request.reply(Message::set([json.to_string()])).await?;
    Ok(())
}

/// `Connect("start", BODY)` runs the exec attached: `Ack` with `att`, its stdin (with
/// `AttachStdin`) and output; the exit code is recorded before the output ends.
/// `Start(BODY)` runs it detached: `Ack` at once.
async fn exec_start(exec: Arc<Exec>, request: Message) -> HandlerResult {
    let (token, pid) = exec.host.with(&exec.container, |state, index| {
        let container = &state.containers[index];
        if container.status != Status::Running {
            return Err(HandlerError::new(format!("Container {} is not running", container.id)));
        }
        let token = container.run.clone();
        state.next_pid += 1;
        Ok((token, 1000 + state.next_pid))
    })?;
    {
        let mut state = exec.lock();
        if state.started {
            return Err(HandlerError::new(format!(
                "conflict: exec {} has already been started",
                exec.id
            )));
        }
        *state = ExecState { started: true, running: true, exit_code: None, pid };
    }
    let tty = exec.flag("Tty");
    let paused = exec.live.paused.subscribe();
    if request.verb != Verb::Connect {
        request.reply(Message::ack()).await?;
        let mut io = Io { stdin: Stdin::closed(), out: Output::Discard, tty, paused };
        let code = run_exec(&exec, &mut io, &token).await;
        record(&exec, code);
        return Ok(());
    }
    let (ours, theirs) = libchan::byte_pipe();
    request.reply(Message::ack().with_att(theirs)).await?;
    let (input, output) = tokio::io::split(ours);
    let (sender, receiver) = mpsc::channel(STDIN_CHUNKS);
    let stdin = if exec.flag("AttachStdin") { Stdin::new(receiver) } else { Stdin::closed() };
    let mut io = Io { stdin, out: Output::Stream(Box::new(output)), tty, paused };
    // The process decides when the exec ends; its input may end before.
    let copy_in = async {
        feed(input, Some(sender)).await;
        std::future::pending::<i32>().await
    };
    let code = tokio::select! {
        code = run_exec(&exec, &mut io, &token) => code,
        code = copy_in => code,
    };
    // The CLI asks for the exit code as soon as the output ends: record it first.
    record(&exec, code);
    if let Output::Stream(mut output) = io.out {
        let _ = output.shutdown().await;
    }
    Ok(())
}

/// Runs the exec's command; a missing program prints dockerd's error on the stream and
/// gives 126 (as dockerd 20.10 does for an exec); the end of the container's run kills it (137).
async fn run_exec(exec: &Exec, io: &mut Io, token: &CancellationToken) -> i32 {
    if let Err(text) = program::check(&exec.argv, EXEC_ERROR) {
        // dockerd writes the error on the hijacked stream, as stdout, ending in CRLF.
        let end = if io.tty { "\n" } else { "\r\n" };
        io.write(STDOUT, format!("{text}{end}").as_bytes()).await;
        return 126;
    }
    tokio::select! {
        code = program::run(&exec.argv, io) => code,
        () = token.cancelled() => 128 + SIGKILL,
    }
}

fn record(exec: &Exec, code: i32) {
    let mut state = exec.lock();
    state.running = false;
    state.exit_code = Some(code);
    state.pid = 0;
}

async fn exec_resize(exec: Arc<Exec>, request: Message) -> HandlerResult {
    if !exec.lock().running {
        return Err(HandlerError::new(format!("exec {} is not running", exec.id)));
    }
    request.reply(Message::ack()).await?;
    Ok(())
}

/// `Config` as `docker inspect` shows it: the create config's fields, with defaults.
fn container_config(config: &Map<String, Value>, id: &str) -> Value {
    let field = |name: &str, default: Value| config.get(name).cloned().unwrap_or(default);
    let words = |name: &str| match config.get(name) {
        Some(Value::String(word)) => json!([word]),
        Some(words) => words.clone(),
        None => Value::Null,
    };
    json!({
        "Hostname": field("Hostname", json!(&id[..12])),
        "User": field("User", json!("")),
        "AttachStdin": field("AttachStdin", json!(false)),
        "AttachStdout": field("AttachStdout", json!(false)),
        "AttachStderr": field("AttachStderr", json!(false)),
        "Tty": field("Tty", json!(false)),
        "OpenStdin": field("OpenStdin", json!(false)),
        "StdinOnce": field("StdinOnce", json!(false)),
        "Env": field("Env", json!([])),
        "Cmd": words("Cmd"),
        "Image": field("Image", json!("")),
        "WorkingDir": field("WorkingDir", json!("")),
        "Entrypoint": words("Entrypoint"),
        "Labels": field("Labels", json!({})),
        "ExposedPorts": field("ExposedPorts", json!({})),
    })
}

fn inspect_json(container: &Container) -> Value {
    let status = match container.status {
        Status::Created => "created",
        Status::Running if container.paused => "paused",
        Status::Running => "running",
        Status::Exited => "exited",
    };
    let running = container.status == Status::Running;
    let command = container.command();
    json!({
        "Id": container.id,
        "Created": container.created,
        "Path": command.first().cloned().unwrap_or_default(),
        "Args": command.get(1..).unwrap_or_default(),
        "State": {
            "Status": status,
            "Running": running,
            "Paused": container.paused,
            "Restarting": false,
            "OOMKilled": false,
            "Dead": false,
            "Pid": container.pid,
            "ExitCode": container.exit_code,
            "Error": container.error,
            "StartedAt": container.started_at,
            "FinishedAt": container.finished_at,
        },
        "Image": container.config["Image"],
        "Name": format!("/{}", container.name),
        "RestartCount": 0,
        "Driver": "simulator",
        "Platform": "linux",
        "LogPath": "",
        "HostConfig": container.host_config,
        "Config": container.config,
        "NetworkSettings": {
            "IPAddress": container.address,
            "Gateway": if running { "172.17.0.1" } else { "" },
            "Ports": {},
            "Networks": {},
        },
    })
}

/// A signal's number from its name (`KILL`, `SIGKILL`) or number.
fn signal_number(name: &str) -> Option<i32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Ok(number) = bare.parse::<i32>() {
        return (1..=64).contains(&number).then_some(number);
    }
    let names = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    let index = names.iter().position(|known| *known == bare)?;
    i32::try_from(index + 1).ok()
}

fn check_name(name: &str) -> Result<(), HandlerError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        Ok(())
    } else {
        Err(HandlerError::new(format!(
            "invalid container name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )))
    }
}

fn new_id() -> String {
    (0..4).map(|_| format!("{:016x}", random_u64())).collect()
}

fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        // Invariant: any UTC time from the system clock formats as RFC 3339.
        .unwrap_or_else(|_| ZERO_TIME.to_owned())
}

const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
/// The start of dockerd's error for a container whose program does not exist.
const START_ERROR: &str = "failed to create shim task: OCI runtime create failed";
/// The start of dockerd's error for an exec whose program does not exist.
const EXEC_ERROR: &str = "OCI runtime exec failed";
const SIGKILL: i32 = 9;
/// Docker's stop timeout when the request gives none, in seconds.
const DEFAULT_STOP_SECONDS: u64 = 10;
/// Longest stop timeout honoured, in seconds (a negative one waits the default);
/// dockerserver waits 30 s more than the timeout for the answer.
const MAX_STOP_SECONDS: u64 = 300;
/// Containers one simulator holds; each keeps a log of at most about 1.6 MiB, so the worst
/// case is about 1.6 GiB of logs (a container that writes nothing costs a few KiB).
const MAX_CONTAINERS: usize = 1024;
/// Chunks of stdin queued for a process that does not read yet (`STDIN_CHUNK` bytes each):
/// worst case 128 KiB per container or exec.
const STDIN_CHUNKS: usize = 16;
/// Largest chunk read from an attached client at once.
const STDIN_CHUNK: usize = 8 * 1024;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::service::{Client, Registry, StageSpec};

    async fn host(spec: &str, tasks: &Tasks) -> Client {
        let (downstream, _) = libchan::pipe();
        let registry = Registry::new().with(Simulator);
        let input = registry.spawn(&StageSpec::parse(spec).unwrap(), downstream, tasks).await;
        Client::new(input.unwrap()).with_timeout(Duration::from_secs(10))
    }

    fn parse(json: &str) -> Value {
        serde_json::from_str(json).unwrap()
    }

    #[tokio::test]
    async fn containers_are_created_started_stopped_and_removed() {
        let tasks = Tasks::new();
        let host = host("simulator db", &tasks).await;
        assert_eq!(host.ls().await.unwrap(), ["db"]);

        let config = r#"{"Image": "nginx", "Cmd": ["sh", "-c", "sleep 60"],
                         "Env": ["A=1"], "Labels": {"tier": "web"}}"#;
        let web = host.spawn([config, "web"]).await.unwrap();
        assert_eq!(host.ls().await.unwrap(), ["db", "web"]);

        let inspect = parse(&web.get().await.unwrap());
        assert_eq!(inspect["Name"], "/web");
        assert_eq!(inspect["Id"].as_str().unwrap().len(), 64);
        assert_eq!(inspect["State"]["Status"], "created");
        assert_eq!(inspect["State"]["Running"], false);
        assert_eq!(inspect["Config"]["Image"], "nginx");
        assert_eq!(inspect["Config"]["Cmd"], json!(["sh", "-c", "sleep 60"]));
        assert_eq!(inspect["Config"]["Env"], json!(["A=1"]));
        assert_eq!(inspect["Config"]["Labels"]["tier"], "web");
        assert_eq!(inspect["Path"], "sh");
        assert!(inspect["Created"].as_str().unwrap().ends_with('Z'));

        web.start().await.unwrap();
        // State persists across requests and objects: attach again by name and by id prefix.
        let id = inspect["Id"].as_str().unwrap();
        for name in ["web", "/web", &id[..10]] {
            let again = host.attach(name).await.unwrap().object;
            let inspect = parse(&again.get().await.unwrap());
            assert_eq!(inspect["State"]["Status"], "running");
            assert_eq!(inspect["State"]["Running"], true);
            assert!(inspect["State"]["Pid"].as_u64().unwrap() > 0);
            assert_ne!(inspect["State"]["StartedAt"], ZERO_TIME);
        }
        let info = parse(&host.get().await.unwrap());
        assert_eq!(
            (info["Containers"].as_u64(), info["ContainersRunning"].as_u64()),
            (Some(2), Some(1))
        );

        let error = web.call(Verb::Stop, ["rm"]).await.unwrap_err();
        assert!(error.to_string().contains("You cannot remove a running container"), "{error}");
        // `sleep` as PID 1 ignores SIGTERM: a stop with no grace period kills it.
        web.call(Verb::Stop, ["timeout", "0"]).await.unwrap();
        let inspect = parse(&web.get().await.unwrap());
        assert_eq!(inspect["State"]["Status"], "exited");
        assert_eq!(inspect["State"]["ExitCode"], 137);
        assert_eq!(inspect["State"]["Pid"], 0);
        web.call(Verb::Stop, ["rm"]).await.unwrap();
        assert_eq!(host.ls().await.unwrap(), ["db"]);
        let error = web.get().await.unwrap_err();
        assert!(error.to_string().contains("no such container"), "{error}");
        let error = host.attach("web").await.unwrap_err();
        assert_eq!(error.to_string(), "Attach: no such container: web");
        assert!(tasks.shutdown(Duration::from_secs(10)).await);
    }

    #[tokio::test]
    async fn a_stop_waits_for_the_process_to_exit_by_itself_within_its_timeout() {
        let tasks = Tasks::new();
        let host = host("simulator", &tasks).await;
        let config = r#"{"Image": "bb", "Cmd": ["sh", "-c", "sleep 0.3; exit 5"]}"#;
        let short = host.spawn([config, "short"]).await.unwrap();
        short.start().await.unwrap();
        let (answer, _) = short.call(Verb::Stop, ["timeout", "20"]).await.unwrap();
        assert_eq!(answer.args, Vec::<String>::new());
        let inspect = parse(&short.get().await.unwrap());
        assert_eq!(
            (&inspect["State"]["Status"], &inspect["State"]["ExitCode"]),
            (&json!("exited"), &json!(5))
        );
        // A stop of what does not run changes nothing; a kill of it is refused.
        let (answer, _) = short.call(Verb::Stop, ["timeout", "20"]).await.unwrap();
        assert_eq!(answer.args, ["not modified"]);
        let error = short.call(Verb::Stop, ["kill", "KILL"]).await.unwrap_err();
        assert!(error.to_string().contains("is not running"), "{error}");
        // Signals other than KILL change nothing for PID 1; KILL ends it with 137.
        short.start().await.unwrap();
        short.call(Verb::Stop, ["kill", "HUP"]).await.unwrap();
        assert_eq!(parse(&short.get().await.unwrap())["State"]["Running"], true);
        let error = short.call(Verb::Stop, ["kill", "NOPE"]).await.unwrap_err();
        assert!(error.to_string().contains("Invalid signal: NOPE"), "{error}");
        short.call(Verb::Stop, ["kill", "SIGKILL"]).await.unwrap();
        assert_eq!(parse(&short.get().await.unwrap())["State"]["ExitCode"], 137);
        assert!(tasks.shutdown(Duration::from_secs(10)).await);
    }

    #[test]
    fn a_host_holds_at_most_max_containers() {
        let host = Host::default();
        let config = json!({"Image": "x"});
        for index in 0..MAX_CONTAINERS - 1 {
            host.create(&config, Some(&format!("c{index}"))).unwrap();
        }
        host.create(&config, Some("last")).unwrap();
        let Err(error) = host.create(&config, Some("over")) else { panic!("one over the bound") };
        assert_eq!(error.text(), "the simulator holds at most 1024 containers");
        let (id, _) = host.find("last").unwrap();
        let mut state = host.lock();
        let index = state.containers.iter().position(|c| c.id == id).unwrap();
        remove(&mut state, index);
        drop(state);
        host.create(&config, Some("again")).unwrap();
    }

    #[tokio::test]
    async fn bad_configs_and_names_are_errors() {
        let tasks = Tasks::new();
        let host = host("simulator", &tasks).await;
        let cases = [
            (vec!["not json"], "invalid container config: expected ident at line 1 column 2"),
            (vec!["[]"], "invalid container config: not a JSON object"),
            (vec!["{}"], "invalid container config: Image is required"),
            (vec![r#"{"Image": "x"}"#, "bad name"], "invalid container name \"bad name\""),
        ];
        for (args, expected) in cases {
            let error = host.spawn(args).await.unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
        host.spawn([r#"{"Image": "x", "name": "one"}"#]).await.unwrap();
        let error = host.spawn([r#"{"Image": "x"}"#, "one"]).await.unwrap_err();
        assert!(error.to_string().contains("already in use"), "{error}");
        let unnamed = host.spawn([r#"{"Image": "x"}"#]).await.unwrap();
        let name = parse(&unnamed.get().await.unwrap())["Name"].as_str().unwrap().to_owned();
        assert!(name.starts_with("/sim_"), "{name}");
        assert_eq!(host.ls().await.unwrap().len(), 2);

        let (downstream, _) = libchan::pipe();
        let spec = StageSpec::parse("simulator ok 'not ok'").unwrap();
        let error = Registry::new().with(Simulator).spawn(&spec, downstream, &tasks).await;
        assert!(error.unwrap_err().to_string().contains("usage: simulator [NAME...]"));
    }
}
