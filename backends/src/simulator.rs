//! `simulator`: an in-memory Docker-like host.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::future::BoxFuture;
use libchan::Sender;
use serde_json::{json, Map, Value};

use crate::random::random_u64;
use crate::service::{
    Backend, HandlerError, HandlerResult, Message, Server, SpawnError, Stage, Tasks, Verb,
};

/// The `simulator` backend: a Docker-like host whose containers live in memory for as long as
/// the stage does, enough for a Docker API frontend to serve `ps`, `create`, `start`, `stop`,
/// `inspect` and `rm`.
///
/// The stage (the host) answers:
/// - `Ls`: `Set(names...)`, in creation order, without Docker's leading `/`;
/// - `Spawn(CONFIG [NAME])`: creates a container from a Docker create-style JSON config
///   (`Image` required; `Cmd`, `Entrypoint`, `Env`, `Tty`, `OpenStdin`, `Labels`,
///   `HostConfig`, and `name` if no `NAME` argument); `Ack` with `ret` = the container;
/// - `Attach(NAME)`: `Ack` with `ret` = the container, found by name, `/name`, or a unique
///   prefix of its id;
/// - `Get`: `Set(JSON)` with the host's counts (`Containers`, `ContainersRunning`, ...);
/// - `Start`, `Stop`: `Ack` (the host itself has no state to change).
///
/// A container answers `Get` with `Set(JSON)` shaped like `docker inspect`, `Start` and `Stop`
/// with `Ack` after changing its state, and `Stop("rm")` by removing itself (refused while it
/// runs, unless `Stop("rm", "force")`).
///
/// The stage's arguments name containers that exist from the start (image `scratch`, created).
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
        "an in-memory Docker-like host: Ls, Spawn(config), Attach(name), Get, Start, Stop"
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
    started_at: String,
    finished_at: String,
    address: String,
}

#[derive(Clone, Copy, Eq, PartialEq)]
enum Status {
    Created,
    Running,
    Exited,
}

impl Host {
    fn lock(&self) -> MutexGuard<'_, HostState> {
        // Plain data; a panic while holding the lock leaves it consistent enough to go on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates a container; returns its id.
    fn create(&self, config: &Value, name: Option<&str>) -> Result<String, HandlerError> {
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
        state.containers.push(Container {
            id: id.clone(),
            name,
            created: now(),
            config: container_config(config, &id),
            host_config: config.get("HostConfig").cloned().unwrap_or_else(|| json!({})),
            status: Status::Created,
            paused: false,
            pid: 0,
            exit_code: 0,
            started_at: ZERO_TIME.to_owned(),
            finished_at: ZERO_TIME.to_owned(),
            address: String::new(),
        });
        Ok(id)
    }

    /// The id of the container called `name` (or `/name`, or with that id prefix).
    fn find(&self, name: &str) -> Result<String, HandlerError> {
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
            .map(|container| container.id.clone())
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

    fn object(self: &Arc<Self>, id: String) -> Sender<Message> {
        let object = Arc::new(Object { host: self.clone(), id });
        Server::with_state(format!("{} container", self.label), object)
            .on(Verb::Get, inspect)
            .on(Verb::Start, start)
            .on(Verb::Stop, stop)
            .on(Verb::Set, set)
            .spawn(&self.tasks)
    }
}

struct Object {
    host: Arc<Host>,
    id: String,
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
    let id = host.create(&config, request.arg(1).filter(|name| !name.is_empty()))?;
    tracing::debug!(stage = %host.label, %id, "container created");
    request.reply(Message::ack().with_args([id.clone()]).with_ret(host.object(id))).await?;
    Ok(())
}

async fn attach(host: Arc<Host>, request: Message) -> HandlerResult {
    let id = host.find(request.arg(0).unwrap_or_default())?;
    request.reply(Message::ack().with_args([id.clone()]).with_ret(host.object(id))).await?;
    Ok(())
}

async fn info(host: Arc<Host>, request: Message) -> HandlerResult {
    let info = {
        let state = host.lock();
        let count = |status| state.containers.iter().filter(|c| c.status == status).count();
        json!({
            "Name": host.label,
            "Driver": "simulator",
            "Containers": state.containers.len(),
            "ContainersRunning": count(Status::Running),
            "ContainersPaused": 0,
            "ContainersStopped": count(Status::Exited) + count(Status::Created),
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

async fn start(object: Arc<Object>, request: Message) -> HandlerResult {
    object.host.with(&object.id, |state, index| {
        if state.containers[index].status == Status::Running {
            return Ok(());
        }
        state.next_pid += 1;
        state.next_address += 1;
        let (pid, address) = (1000 + state.next_pid, state.next_address);
        let container = &mut state.containers[index];
        container.status = Status::Running;
        container.pid = pid;
        container.exit_code = 0;
        container.started_at = now();
        container.address = format!("172.17.{}.{}", address / 250, 2 + address % 250);
        Ok(())
    })?;
    tracing::debug!(stage = %object.host.label, id = %object.id, "container started");
    request.reply(Message::ack()).await?;
    Ok(())
}

/// `Set("name", NEW)` renames; `Set("paused", "true"|"false")` pauses or unpauses a running
/// container. Answers `Ack` when the request has `ret`.
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
                Ok(())
            })?;
        }
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

async fn stop(object: Arc<Object>, request: Message) -> HandlerResult {
    let remove = request.arg(0) == Some("rm");
    let force = request.arg(1) == Some("force");
    object.host.with(&object.id, |state, index| {
        let container = &mut state.containers[index];
        if remove && container.status == Status::Running && !force {
            return Err(HandlerError::new(format!(
                "cannot remove running container {}: stop it first or force it",
                container.name
            )));
        }
        if container.status == Status::Running {
            container.status = Status::Exited;
            container.paused = false;
            container.pid = 0;
            container.exit_code = if remove { 137 } else { 0 };
            container.finished_at = now();
            container.address.clear();
        }
        if remove {
            state.containers.remove(index);
        }
        Ok(())
    })?;
    request.reply(Message::ack()).await?;
    Ok(())
}

/// `Config` as `docker inspect` shows it: the create config's fields, with defaults.
fn container_config(config: &Map<String, Value>, id: &str) -> Value {
    let field = |name: &str, default: Value| config.get(name).cloned().unwrap_or(default);
    let cmd = match config.get("Cmd") {
        Some(Value::String(cmd)) => json!([cmd]),
        Some(cmd) => cmd.clone(),
        None => Value::Null,
    };
    json!({
        "Hostname": field("Hostname", json!(&id[..12])),
        "User": field("User", json!("")),
        "Tty": field("Tty", json!(false)),
        "OpenStdin": field("OpenStdin", json!(false)),
        "Env": field("Env", json!([])),
        "Cmd": cmd,
        "Image": field("Image", json!("")),
        "WorkingDir": field("WorkingDir", json!("")),
        "Entrypoint": field("Entrypoint", Value::Null),
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
    let command: Vec<Value> = ["Entrypoint", "Cmd"]
        .iter()
        .filter_map(|key| container.config.get(*key).and_then(Value::as_array))
        .flatten()
        .cloned()
        .collect();
    json!({
        "Id": container.id,
        "Created": container.created,
        "Path": command.first().cloned().unwrap_or(json!("")),
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
            "Error": "",
            "StartedAt": container.started_at,
            "FinishedAt": container.finished_at,
        },
        "Image": container.config["Image"],
        "Name": format!("/{}", container.name),
        "RestartCount": 0,
        "Driver": "simulator",
        "Platform": "linux",
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

        let config = r#"{"Image": "nginx", "Cmd": ["nginx", "-g", "daemon off;"],
                         "Env": ["A=1"], "Labels": {"tier": "web"}}"#;
        let web = host.spawn([config, "web"]).await.unwrap();
        assert_eq!(host.ls().await.unwrap(), ["db", "web"]);

        let inspect = parse(&web.get().await.unwrap());
        assert_eq!(inspect["Name"], "/web");
        assert_eq!(inspect["Id"].as_str().unwrap().len(), 64);
        assert_eq!(inspect["State"]["Status"], "created");
        assert_eq!(inspect["State"]["Running"], false);
        assert_eq!(inspect["Config"]["Image"], "nginx");
        assert_eq!(inspect["Config"]["Cmd"], json!(["nginx", "-g", "daemon off;"]));
        assert_eq!(inspect["Config"]["Env"], json!(["A=1"]));
        assert_eq!(inspect["Config"]["Labels"]["tier"], "web");
        assert_eq!(inspect["Path"], "nginx");
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
        assert!(error.to_string().contains("cannot remove running container web"), "{error}");
        web.stop().await.unwrap();
        let inspect = parse(&web.get().await.unwrap());
        assert_eq!(inspect["State"]["Status"], "exited");
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
