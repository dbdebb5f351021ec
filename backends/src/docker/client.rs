//! `dockerclient`: a backend that turns verbs into Docker Engine API calls on a real daemon.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use libchan::Sender;
use serde_json::Value;

use crate::docker::api::{self, encode_query};
use crate::docker::daemon::Daemon;
use crate::docker::stream;
use crate::service::{
    Backend, HandlerError, HandlerResult, Message, Server, SpawnError, Stage, Verb,
};

/// The `dockerclient` backend: a Docker host, backed by a real daemon, speaking the verbs of
/// `docs/docker.md` (what a `dockerserver` sends).
///
/// The host answers `Ls`, `Spawn(CONFIG [NAME])`, `Attach(NAME)`, `Get` (`/info`),
/// `Get("version")`, `Connect("pull", KEY=VALUE...)`, and its own `Start`/`Stop`. A container
/// answers `Get`, `Get("top" [PS_ARGS])`, `Start`, `Stop` (with `timeout N`, `kill SIGNAL`,
/// `rm [force] [volumes]`), `Set("name", NEW)`, `Set("paused", true|false)`,
/// `Set("size", H, W)`, `Watch(CONDITION)` and `Connect("logs"|"attach", KEY=VALUE...)`.
/// The daemon's error texts pass through verbatim.
#[derive(Clone, Copy, Debug, Default)]
pub struct DockerClient;

impl Backend for DockerClient {
    fn name(&self) -> &str {
        "dockerclient"
    }

    fn usage(&self) -> &str {
        "unix:///PATH | tcp://HOST:PORT [--tlscacert FILE] [--tlscert FILE --tlskey FILE]"
    }

    fn summary(&self) -> &str {
        "a Docker host backed by a real daemon (Engine API over unix, tcp or tls)"
    }

    fn spawn(&self, stage: Stage) -> BoxFuture<'static, Result<Sender<Message>, SpawnError>> {
        let result = Daemon::parse(&stage.args, stage.tasks.clone())
            .map_err(|reason| SpawnError::usage(self, reason))
            .map(|daemon| {
                let host = Arc::new(Host { daemon, label: stage.name.clone() });
                Server::with_state(stage.name, host.clone())
                    .on(Verb::Ls, ls)
                    .on(Verb::Spawn, create)
                    .on(Verb::Attach, attach)
                    .on(Verb::Get, info)
                    .on(Verb::Connect, pull)
                    .on(Verb::Start, lifecycle)
                    .on(Verb::Stop, lifecycle)
                    .spawn(&stage.tasks)
            });
        Box::pin(std::future::ready(result))
    }
}

struct Host {
    daemon: Daemon,
    label: String,
}

impl Host {
    fn object(self: &Arc<Self>, address: String) -> Sender<Message> {
        let container = Arc::new(Container { host: self.clone(), address: Mutex::new(address) });
        Server::with_state(format!("{} container", self.label), container)
            .on(Verb::Get, inspect)
            .on(Verb::Start, start)
            .on(Verb::Stop, stop)
            .on(Verb::Set, set)
            .on(Verb::Watch, wait)
            .on(Verb::Connect, connect)
            .on(Verb::Spawn, exec_create)
            .spawn(self.daemon.tasks())
    }

    fn exec(self: &Arc<Self>, id: String) -> Sender<Message> {
        let exec = Arc::new(Exec { host: self.clone(), id });
        Server::with_state(format!("{} exec", self.label), exec)
            .on(Verb::Get, exec_inspect)
            .on(Verb::Start, exec_start)
            .on(Verb::Connect, exec_start)
            .on(Verb::Set, exec_resize)
            .spawn(self.daemon.tasks())
    }
}

/// An exec instance of a container, by the daemon's id.
struct Exec {
    host: Arc<Host>,
    id: String,
}

impl Exec {
    fn path(&self, action: &str) -> String {
        format!("/exec/{}{action}", api::percent_encode(&self.id))
    }
}

/// A container, addressed as it was asked for (so the daemon's messages name it as the user
/// did), or by id once created; a rename changes the address.
struct Container {
    host: Arc<Host>,
    address: Mutex<String>,
}

impl Container {
    fn path(&self, action: &str) -> String {
        let address = self.address.lock().unwrap_or_else(PoisonError::into_inner);
        format!("/containers/{}{action}", api::percent_encode(&address))
    }

    fn daemon(&self) -> &Daemon {
        &self.host.daemon
    }
}

async fn lifecycle(host: Arc<Host>, request: Message) -> HandlerResult {
    if request.verb == Verb::Start {
        if let Err(error) = host.daemon.call(Method::GET, "/_ping", None).await {
            tracing::warn!(stage = %host.label, %error, "the daemon does not answer yet");
        }
    }
    request.reply(Message::ack()).await?;
    Ok(())
}

async fn ls(host: Arc<Host>, request: Message) -> HandlerResult {
    let list = host.daemon.json(Method::GET, "/containers/json?all=1", None).await?;
    let names = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|container| {
            let names = container["Names"].as_array()?;
            // Links add names like "/a/b"; the container's own name has one slash.
            let own = names.iter().filter_map(Value::as_str).find(|n| n.matches('/').count() == 1);
            own.map(|name| name.trim_start_matches('/').to_owned())
        })
        .collect::<Vec<_>>();
    request.reply(Message::set(names)).await?;
    Ok(())
}

async fn create(host: Arc<Host>, request: Message) -> HandlerResult {
    let config = request.arg(0).ok_or_else(|| HandlerError::new("Spawn needs a JSON config"))?;
    let mut path = "/containers/create".to_owned();
    if let Some(name) = request.arg(1).filter(|name| !name.is_empty()) {
        path = format!("{path}?{}", encode_query([("name", name)]));
    }
    let body = Bytes::copy_from_slice(config.as_bytes());
    let created = host.daemon.json(Method::POST, &path, Some(body)).await?;
    let id = created["Id"].as_str().unwrap_or_default().to_owned();
    if id.is_empty() {
        return Err(HandlerError::new("the daemon's create answer has no Id"));
    }
    let warnings = created["Warnings"].as_array().into_iter().flatten().filter_map(Value::as_str);
    let args: Vec<String> = std::iter::once(id.clone()).chain(warnings.map(Into::into)).collect();
    request.reply(Message::ack().with_args(args).with_ret(host.object(id))).await?;
    Ok(())
}

async fn attach(host: Arc<Host>, request: Message) -> HandlerResult {
    let name = request.arg(0).unwrap_or_default();
    if name.is_empty() {
        request.reply(Message::ack()).await?;
        return Ok(());
    }
    let path = format!("/containers/{}/json", api::percent_encode(name));
    let inspect = host.daemon.json(Method::GET, &path, None).await?;
    let id = inspect["Id"].as_str().unwrap_or(name).to_owned();
    // The inspect document goes with the answer: `ps` needs nothing else (docs/docker.md).
    let answer = Message::ack().with_args([id, inspect.to_string()]);
    request.reply(answer.with_ret(host.object(name.to_owned()))).await?;
    Ok(())
}

async fn info(host: Arc<Host>, request: Message) -> HandlerResult {
    let path = if request.arg(0) == Some("version") { "/version" } else { "/info" };
    let (_, body) = host.daemon.call(Method::GET, path, None).await?;
    request.reply(Message::set([String::from_utf8_lossy(&body).into_owned()])).await?;
    Ok(())
}

async fn pull(host: Arc<Host>, request: Message) -> HandlerResult {
    if request.arg(0) != Some("pull") {
        return Err(HandlerError::new(format!(
            "not implemented: Connect({})",
            request.arg(0).unwrap_or_default()
        )));
    }
    let query = options(&request.args[1..]);
    let path = format!("/images/create?{query}");
    let response = host.daemon.send(Method::POST, &path, None, false).await?;
    let response = host.daemon.check(response).await?;
    reply_with_body(&host.daemon, request, response.into_body()).await
}

async fn inspect(container: Arc<Container>, request: Message) -> HandlerResult {
    let path = match request.arg(0) {
        Some("top") => match request.arg(1).filter(|args| !args.is_empty()) {
            Some(args) => container.path(&format!("/top?{}", encode_query([("ps_args", args)]))),
            None => container.path("/top"),
        },
        _ => container.path("/json"),
    };
    let (_, body) = container.daemon().call(Method::GET, &path, None).await?;
    request.reply(Message::set([String::from_utf8_lossy(&body).into_owned()])).await?;
    Ok(())
}

async fn start(container: Arc<Container>, request: Message) -> HandlerResult {
    let (status, _) =
        container.daemon().call(Method::POST, &container.path("/start"), None).await?;
    request.reply(acked(status)).await?;
    Ok(())
}

async fn stop(container: Arc<Container>, request: Message) -> HandlerResult {
    let arg = |index| request.arg(index).unwrap_or_default();
    let (method, path) = match arg(0) {
        "" => (Method::POST, container.path("/stop")),
        "timeout" => {
            (Method::POST, container.path(&format!("/stop?{}", encode_query([("t", arg(1))]))))
        }
        "kill" => {
            let signal = if arg(1).is_empty() { "KILL" } else { arg(1) };
            (Method::POST, container.path(&format!("/kill?{}", encode_query([("signal", signal)]))))
        }
        "rm" => {
            let flags = &request.args[1..];
            let force = if flags.iter().any(|f| f == "force") { "1" } else { "0" };
            let volumes = if flags.iter().any(|f| f == "volumes") { "1" } else { "0" };
            let query = encode_query([("force", force), ("v", volumes)]);
            (Method::DELETE, container.path(&format!("?{query}")))
        }
        other => return Err(HandlerError::new(format!("not implemented: Stop({other})"))),
    };
    let (status, _) = container.daemon().call(method, &path, None).await?;
    request.reply(acked(status)).await?;
    Ok(())
}

async fn set(container: Arc<Container>, request: Message) -> HandlerResult {
    let arg = |index| request.arg(index).unwrap_or_default();
    let path = match arg(0) {
        "name" => container.path(&format!("/rename?{}", encode_query([("name", arg(1))]))),
        "paused" if api::is_true(arg(1)) => container.path("/pause"),
        "paused" => container.path("/unpause"),
        "size" => {
            container.path(&format!("/resize?{}", encode_query([("h", arg(1)), ("w", arg(2))])))
        }
        other => return Err(HandlerError::new(format!("not implemented: Set({other})"))),
    };
    let (status, _) = container.daemon().call(Method::POST, &path, None).await?;
    if arg(0) == "name" {
        *container.address.lock().unwrap_or_else(PoisonError::into_inner) = arg(1).to_owned();
    }
    request.reply(acked(status)).await?;
    Ok(())
}

async fn wait(container: Arc<Container>, request: Message) -> HandlerResult {
    let condition = request.arg(0).filter(|c| !c.is_empty()).unwrap_or("not-running");
    let path = container.path(&format!("/wait?{}", encode_query([("condition", condition)])));
    let daemon = container.daemon();
    let response = daemon.send(Method::POST, &path, None, false).await?;
    let response = daemon.check(response).await?;
    // The daemon registered the waiter once its headers came: tell the asker now.
    request.reply(Message::ack()).await?;
    let Some(ret) = request.ret else { return Ok(()) };
    let body = Limited::new(response.into_body(), 1 << 20);
    let body = tokio::select! {
        () = ret.closed() => return Ok(()),
        () = daemon.tasks().shutdown_token().cancelled() => return Ok(()),
        body = body.collect() => body,
    };
    let answer = match body {
        Ok(body) => exited(&body.to_bytes()),
        Err(error) => Message::set(["exited", "-1", &error.to_string()]),
    };
    let _ = ret.send(answer).await;
    Ok(())
}

async fn connect(container: Arc<Container>, request: Message) -> HandlerResult {
    let kind = request.arg(0).unwrap_or_default();
    let query = options(request.args.get(1..).unwrap_or_default());
    let daemon = container.daemon();
    match kind {
        "logs" => {
            let path = container.path(&format!("/logs?{query}"));
            let response =
                daemon.check(daemon.send(Method::GET, &path, None, false).await?).await?;
            reply_with_body(daemon, request, response.into_body()).await
        }
        "attach" => {
            let path = container.path(&format!("/attach?{query}"));
            let response =
                daemon.check(daemon.send(Method::POST, &path, None, true).await?).await?;
            if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                return Err(HandlerError::new(format!(
                    "the daemon answered attach with {} instead of 101",
                    response.status()
                )));
            }
            let upgraded = hyper::upgrade::on(response).await?;
            let (ours, theirs) = libchan::byte_pipe();
            request.reply(Message::ack().with_att(theirs)).await?;
            let shutdown = daemon.tasks().shutdown_token().clone();
            stream::bridge(ours, TokioIo::new(upgraded), shutdown).await;
            Ok(())
        }
        other => Err(HandlerError::new(format!("not implemented: Connect({other})"))),
    }
}

async fn exec_create(container: Arc<Container>, request: Message) -> HandlerResult {
    let config = request.arg(0).ok_or_else(|| HandlerError::new("Spawn needs a JSON config"))?;
    let body = Bytes::copy_from_slice(config.as_bytes());
    let created =
        container.daemon().json(Method::POST, &container.path("/exec"), Some(body)).await?;
    let id = created["Id"].as_str().unwrap_or_default().to_owned();
    if id.is_empty() {
        return Err(HandlerError::new("the daemon's exec answer has no Id"));
    }
    let exec = container.host.exec(id.clone());
    request.reply(Message::ack().with_args([id]).with_ret(exec)).await?;
    Ok(())
}

async fn exec_inspect(exec: Arc<Exec>, request: Message) -> HandlerResult {
    let (_, body) = exec.host.daemon.call(Method::GET, &exec.path("/json"), None).await?;
    request.reply(Message::set([String::from_utf8_lossy(&body).into_owned()])).await?;
    Ok(())
}

/// `Start(BODY)` starts detached; `Connect("start", BODY)` starts attached and streams.
async fn exec_start(exec: Arc<Exec>, request: Message) -> HandlerResult {
    let daemon = &exec.host.daemon;
    let attached = request.verb == Verb::Connect;
    let body = request.args.get(usize::from(attached)).cloned().unwrap_or_else(|| "{}".into());
    let body = Some(Bytes::from(body));
    let response = daemon.send(Method::POST, &exec.path("/start"), body, attached).await?;
    let response = daemon.check(response).await?;
    if !attached {
        request.reply(Message::ack()).await?;
        return Ok(());
    }
    let upgraded = hyper::upgrade::on(response).await?;
    let (ours, theirs) = libchan::byte_pipe();
    request.reply(Message::ack().with_att(theirs)).await?;
    stream::bridge(ours, TokioIo::new(upgraded), daemon.tasks().shutdown_token().clone()).await;
    Ok(())
}

async fn exec_resize(exec: Arc<Exec>, request: Message) -> HandlerResult {
    let arg = |index| request.arg(index).unwrap_or_default();
    let query = encode_query([("h", arg(1)), ("w", arg(2))]);
    exec.host.daemon.call(Method::POST, &exec.path(&format!("/resize?{query}")), None).await?;
    request.reply(Message::ack()).await?;
    Ok(())
}

/// Answers `request` with `Ack` carrying a byte stream, then copies `body` into it.
async fn reply_with_body(
    daemon: &Daemon,
    request: Message,
    body: hyper::body::Incoming,
) -> HandlerResult {
    let (ours, theirs) = libchan::byte_pipe();
    request.reply(Message::ack().with_att(theirs)).await?;
    let shutdown = daemon.tasks().shutdown_token().clone();
    if let Err(error) = stream::copy_body(body, ours, shutdown).await {
        tracing::debug!(%error, "stream from the daemon ended");
    }
    Ok(())
}

/// `Ack`, or `Ack("not modified")` for a 304.
fn acked(status: StatusCode) -> Message {
    if status == StatusCode::NOT_MODIFIED {
        Message::ack().with_args(["not modified"])
    } else {
        Message::ack()
    }
}

/// `Set("exited", CODE [, ERROR])` from a wait answer.
fn exited(body: &[u8]) -> Message {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Message::set(["exited", "-1", &String::from_utf8_lossy(body)]);
    };
    let code = value["StatusCode"].as_i64().unwrap_or(-1).to_string();
    match value["Error"]["Message"].as_str().filter(|m| !m.is_empty()) {
        Some(error) => Message::set(["exited", &code, error]),
        None => Message::set(["exited", &code]),
    }
}

/// A query string from `KEY=VALUE` arguments.
fn options(args: &[String]) -> String {
    encode_query(args.iter().map(|arg| arg.split_once('=').unwrap_or((arg.as_str(), ""))))
}
