//! `dockerserver`: a Docker Engine API frontend that turns HTTP requests into verbs.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use libchan::{Receiver, Sender};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::docker::api::{self, Filters};
use crate::docker::stream;
use crate::service::{
    with_request_id, Backend, Client, ClientError, HandlerError, HandlerResult, Message, Server,
    SpawnError, Stage, Tasks, Verb,
};

/// The `dockerserver` backend: serves the Docker Engine API (version 1.41) on `tcp://HOST:PORT`
/// or `unix:///PATH` and turns each request into verbs sent downstream, so that the real
/// `docker` CLI can drive whatever the rest of the pipeline is (a `simulator`, a
/// `dockerclient`, an `aggregate` of them).
///
/// The mapping of endpoints to verbs is in `docs/docker.md`. The stage answers `Start` (begin
/// serving), `Stop` (stop accepting) and `Get` (`Set({"Url": URL})`, the address it listens
/// on, useful with port 0) itself and forwards every other request downstream.
#[derive(Clone, Copy, Debug, Default)]
pub struct DockerServer;

impl Backend for DockerServer {
    fn name(&self) -> &str {
        "dockerserver"
    }

    fn usage(&self) -> &str {
        "tcp://HOST:PORT | unix:///PATH"
    }

    fn summary(&self) -> &str {
        "serve the Docker Engine API (1.41) and turn requests into verbs downstream"
    }

    fn spawn(&self, stage: Stage) -> BoxFuture<'static, Result<Sender<Message>, SpawnError>> {
        let usage = match stage.args.as_slice() {
            [url] => Ok(url.clone()),
            _ => Err(SpawnError::usage(self, "dockerserver takes one URL")),
        };
        Box::pin(async move {
            let (listener, url) = bind(&usage?).await?;
            tracing::info!(stage = %stage.name, %url, "Docker API bound");
            stage.node.announce(&url);
            let front = Arc::new(Frontend {
                label: stage.name.clone(),
                host: stage.downstream_client(),
                downstream: stage.downstream.clone(),
                url,
                listener: Mutex::new(Some(listener)),
                tasks: stage.tasks.clone(),
                stop: stage.tasks.shutdown_token().child_token(),
                connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
                execs: Mutex::new(VecDeque::new()),
            });
            Ok(Server::with_state(stage.name, front)
                .on(Verb::Start, start_serving)
                .on(Verb::Stop, stop_serving)
                .on(Verb::Get, describe)
                .on_any(forward)
                .spawn(&stage.tasks))
        })
    }
}

struct Frontend {
    label: String,
    host: Client,
    downstream: Sender<Message>,
    url: String,
    listener: Mutex<Option<Listener>>,
    tasks: Tasks,
    /// Fires on `Stop` and at shutdown.
    stop: CancellationToken,
    connections: Arc<Semaphore>,
    /// Exec instances by id, newest last; at most `MAX_EXECS`.
    execs: Mutex<VecDeque<(String, Client)>>,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

type Body = UnsyncBoxBody<Bytes, io::Error>;

/// An answer that is an error: a status and the text for `{"message": TEXT}`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: StatusCode,
    pub text: String,
}

impl Failure {
    fn new(status: u16, text: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            text: text.into(),
        }
    }

    fn response(self) -> Response<Body> {
        full(self.status, "application/json", api::error_body(&self.text))
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Remote { message, .. } => Failure::new(api::status_for(&message), message),
            ClientError::Timeout { .. } => Failure::new(504, error.to_string()),
            other => Failure::new(502, other.to_string()),
        }
    }
}

type Answer = Result<Response<Body>, Failure>;

async fn bind(url: &str) -> Result<(Listener, String), SpawnError> {
    let failed = |error: io::Error| SpawnError::Failed(format!("cannot listen on {url}: {error}"));
    if let Some(address) = url.strip_prefix("tcp://") {
        let listener = TcpListener::bind(address.trim_end_matches('/')).await.map_err(failed)?;
        let local = listener.local_addr().map_err(failed)?;
        Ok((Listener::Tcp(listener), format!("tcp://{local}")))
    } else if let Some(path) = url.strip_prefix("unix://") {
        let path = PathBuf::from(path);
        // A socket left by an earlier run would make bind fail; Docker removes it too.
        if std::fs::symlink_metadata(&path)
            .is_ok_and(|meta| std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()))
        {
            let _ = std::fs::remove_file(&path);
        }
        let listener = UnixListener::bind(&path).map_err(failed)?;
        Ok((Listener::Unix(listener, path), url.to_owned()))
    } else {
        Err(SpawnError::Failed(format!("{url}: the URL must start with tcp:// or unix://")))
    }
}

async fn start_serving(front: Arc<Frontend>, request: Message) -> HandlerResult {
    let listener = front.listener.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(listener) = listener {
        tracing::info!(stage = %front.label, url = %front.url, "serving the Docker API");
        front.tasks.spawn(accept(front.clone(), listener));
    }
    request.reply(Message::ack()).await?;
    Ok(())
}

async fn stop_serving(front: Arc<Frontend>, request: Message) -> HandlerResult {
    front.stop.cancel();
    request.reply(Message::ack()).await?;
    Ok(())
}

async fn describe(front: Arc<Frontend>, request: Message) -> HandlerResult {
    request.reply(Message::set([json!({"Url": front.url}).to_string()])).await?;
    Ok(())
}

async fn forward(front: Arc<Frontend>, request: Message) -> HandlerResult {
    front.downstream.send(request).await.map_err(|_| HandlerError::new("downstream is gone"))
}

async fn accept(front: Arc<Frontend>, listener: Listener) {
    loop {
        let permit = tokio::select! {
            () = front.stop.cancelled() => break,
            permit = front.connections.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            () = front.stop.cancelled() => break,
            accepted = accept_one(&listener) => accepted,
        };
        match accepted {
            Ok(io) => {
                let front = front.clone();
                front.tasks.clone().spawn(async move {
                    serve_connection(front, io).await;
                    drop(permit);
                });
            }
            Err(error) => {
                tracing::warn!(stage = %front.label, %error, "accept failed");
                // Out of descriptors or similar: back off rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!(stage = %front.label, "stopped serving the Docker API");
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

async fn accept_one(listener: &Listener) -> io::Result<Box<dyn Io>> {
    Ok(match listener {
        Listener::Tcp(listener) => {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            Box::new(stream)
        }
        Listener::Unix(listener, _) => Box::new(listener.accept().await?.0),
    })
}

async fn serve_connection(front: Arc<Frontend>, io: Box<dyn Io>) {
    let stop = front.stop.clone();
    let service = service_fn(move |request| {
        let front = front.clone();
        async move { Ok::<_, Infallible>(handle(front, request).await) }
    });
    // A client that connects and never finishes a request head (or idles that long between
    // requests) is dropped, so silent connections cannot hold every connection slot.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::select! {
        () = stop.cancelled() => {}
        result = connection => {
            if let Err(error) = result {
                tracing::debug!(%error, "Docker API connection ended");
            }
        }
    }
}

async fn handle(front: Arc<Frontend>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // One id for every verb this API call sends down the chain (see `Message::id`).
    let id = format!("docker-{:012x}", crate::random::random_u64() >> 16);
    let span = tracing::info_span!("api", id = %id);
    let routed = with_request_id(id, route(&front, request)).instrument(span.clone()).await;
    let mut response = routed.unwrap_or_else(Failure::response);
    let _entered = span.enter();
    tracing::debug!(stage = %front.label, %method, %path, status = %response.status(), "request");
    let headers = response.headers_mut();
    headers.insert("api-version", HeaderValue::from_static(api::API_VERSION));
    headers.insert("docker-experimental", HeaderValue::from_static("false"));
    headers.insert("ostype", HeaderValue::from_static("linux"));
    headers.insert("server", HeaderValue::from_static(SERVER));
    response
}

async fn route(front: &Arc<Frontend>, request: Request<Incoming>) -> Answer {
    let Parsed { endpoint, options } = parse_request(request.method(), request.uri())?;
    match endpoint {
        Endpoint::Ping { with_body } => Ok(ping(with_body)),
        Endpoint::Version => Ok(json_response(StatusCode::OK, &api::version())),
        Endpoint::Info => info(front).await,
        Endpoint::List(listing) => list(front, listing).await,
        Endpoint::Create => create(front, &options, request).await,
        Endpoint::Container { id, action } => {
            container_route(front, &id, action, &options, request).await
        }
        Endpoint::Images => Ok(json_response(StatusCode::OK, &json!([]))),
        Endpoint::Pull => pull(front, &options).await,
        Endpoint::Exec { id, action } => exec_route(front, &id, action, &options, request).await,
    }
}

/// A request as the router reads it from its method and URI, before any backend is asked.
pub(crate) struct Parsed {
    pub endpoint: Endpoint,
    pub options: Options,
}

/// The endpoint a request names. Docs: `docs/docker.md`.
#[derive(Debug)]
pub(crate) enum Endpoint {
    /// `GET|HEAD /_ping`.
    Ping { with_body: bool },
    /// `GET /version`.
    Version,
    /// `GET /info`.
    Info,
    /// `GET /containers/json`, with its query read.
    List(Listing),
    /// `POST /containers/create`; the body is the config.
    Create,
    /// `/containers/{id}/...`; `id` percent-decoded.
    Container { id: String, action: ContainerAction },
    /// `GET /images/json`.
    Images,
    /// `POST /images/create`.
    Pull,
    /// `/exec/{id}/...`; `None` for an action this server does not have (answered 404 once
    /// the exec is found, as Docker does).
    Exec { id: String, action: Option<ExecAction> },
}

/// What `GET /containers/json` asks for.
#[derive(Debug)]
pub(crate) struct Listing {
    pub filters: Filters,
    pub limit: Option<usize>,
    pub all: bool,
}

/// An action on a container.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) enum ContainerAction {
    Inspect,
    Remove,
    Start,
    Stop,
    Restart,
    Kill,
    Pause(bool),
    Rename,
    Resize,
    Top,
    Logs,
    Wait,
    Attach,
    /// `POST /containers/{id}/exec`; the body is the exec config.
    Exec,
}

/// An action on an exec instance.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) enum ExecAction {
    Inspect,
    /// The body says `Detach` or not.
    Start,
    Resize,
}

/// Reads a request's endpoint and query: the version prefix, the route, the `filters` of a
/// listing. Pure, so the fuzz target `docker_request` runs exactly what a request runs.
///
/// # Errors
/// The answer to give at once: 400 for a too new version or bad filters, 404 for no such route.
pub(crate) fn parse_request(method: &Method, uri: &http::Uri) -> Result<Parsed, Failure> {
    let path = unversioned(uri.path())?;
    let options = Options(api::query_pairs(uri.query().unwrap_or_default()));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let endpoint = match (method, segments.as_slice()) {
        (&Method::GET | &Method::HEAD, ["_ping"]) => {
            Endpoint::Ping { with_body: method == Method::GET }
        }
        (&Method::GET, ["version"]) => Endpoint::Version,
        (&Method::GET, ["info"]) => Endpoint::Info,
        (&Method::GET, ["containers", "json"]) => Endpoint::List(listing(&options)?),
        (&Method::POST, ["containers", "create"]) => Endpoint::Create,
        (_, ["containers", id, rest @ ..]) => {
            let id = api::percent_decode(id);
            let action = container_action(method, rest)
                .ok_or_else(|| Failure::new(404, "page not found"))?;
            Endpoint::Container { id, action }
        }
        (&Method::GET, ["images", "json"]) => Endpoint::Images,
        (&Method::GET, ["images", name @ .., "json"]) => {
            return Err(Failure::new(404, format!("No such image: {}", name.join("/"))))
        }
        (&Method::POST, ["images", "create"]) => Endpoint::Pull,
        (_, ["exec", id, rest @ ..]) => {
            Endpoint::Exec { id: (*id).to_owned(), action: exec_action(method, rest) }
        }
        _ => return Err(Failure::new(404, "page not found")),
    };
    Ok(Parsed { endpoint, options })
}

fn listing(options: &Options) -> Result<Listing, Failure> {
    let filters = Filters::parse(options.get("filters").unwrap_or_default())
        .map_err(|text| Failure::new(400, text))?;
    let limit =
        options.get("limit").and_then(|limit| limit.parse::<usize>().ok()).filter(|&n| n > 0);
    let all = options.flag("all") || limit.is_some() || filters.has_status();
    Ok(Listing { filters, limit, all })
}

fn container_action(method: &Method, rest: &[&str]) -> Option<ContainerAction> {
    use ContainerAction as A;
    Some(match (method, rest) {
        (&Method::GET, ["json"]) => A::Inspect,
        (&Method::DELETE, []) => A::Remove,
        (&Method::POST, ["start"]) => A::Start,
        (&Method::POST, ["stop"]) => A::Stop,
        (&Method::POST, ["restart"]) => A::Restart,
        (&Method::POST, ["kill"]) => A::Kill,
        (&Method::POST, [action @ ("pause" | "unpause")]) => A::Pause(*action == "pause"),
        (&Method::POST, ["rename"]) => A::Rename,
        (&Method::POST, ["resize"]) => A::Resize,
        (&Method::GET, ["top"]) => A::Top,
        (&Method::GET, ["logs"]) => A::Logs,
        (&Method::POST, ["wait"]) => A::Wait,
        (&Method::POST, ["attach"]) => A::Attach,
        (&Method::POST, ["exec"]) => A::Exec,
        _ => return None,
    })
}

fn exec_action(method: &Method, rest: &[&str]) -> Option<ExecAction> {
    match (method, rest) {
        (&Method::GET, ["json"]) => Some(ExecAction::Inspect),
        (&Method::POST, ["start"]) => Some(ExecAction::Start),
        (&Method::POST, ["resize"]) => Some(ExecAction::Resize),
        _ => None,
    }
}

async fn container_route(
    front: &Arc<Frontend>,
    id: &str,
    action: ContainerAction,
    options: &Options,
    request: Request<Incoming>,
) -> Answer {
    use ContainerAction as A;
    match action {
        A::Inspect => {
            let object = container(front, id).await?;
            let inspect = object.get().await?;
            Ok(full(StatusCode::OK, "application/json", inspect))
        }
        A::Remove => {
            let mut args = vec!["rm"];
            if options.flag("force") {
                args.push("force");
            }
            if options.flag("v") {
                args.push("volumes");
            }
            ask(&container(front, id).await?, Verb::Stop, &args).await?;
            Ok(no_content())
        }
        A::Start => {
            let answer = ask(&container(front, id).await?, Verb::Start, &[]).await?;
            Ok(status_only(unchanged(&answer)))
        }
        A::Stop => {
            let object = container(front, id).await?;
            let answer = stop(&object, options.get("t")).await?;
            Ok(status_only(unchanged(&answer)))
        }
        A::Restart => {
            let object = container(front, id).await?;
            stop(&object, options.get("t")).await?;
            ask(&object, Verb::Start, &[]).await?;
            Ok(no_content())
        }
        A::Kill => {
            let signal = options.get("signal").unwrap_or("KILL");
            ask(&container(front, id).await?, Verb::Stop, &["kill", signal]).await?;
            Ok(no_content())
        }
        A::Pause(pause) => {
            let paused = if pause { "true" } else { "false" };
            ask(&container(front, id).await?, Verb::Set, &["paused", paused]).await?;
            Ok(no_content())
        }
        A::Rename => {
            let name = options.get("name").unwrap_or_default();
            ask(&container(front, id).await?, Verb::Set, &["name", name]).await?;
            Ok(no_content())
        }
        A::Resize => {
            let (h, w) = (options.get("h").unwrap_or("0"), options.get("w").unwrap_or("0"));
            ask(&container(front, id).await?, Verb::Set, &["size", h, w]).await?;
            Ok(status_only(StatusCode::OK))
        }
        A::Top => top(front, id, options).await,
        A::Logs => logs(front, id, options).await,
        A::Wait => wait(front, id, options).await,
        A::Attach => attach(front, id, options, request).await,
        A::Exec => exec_create(front, id, request).await,
    }
}

fn ping(with_body: bool) -> Response<Body> {
    let mut response =
        full(StatusCode::OK, "text/plain; charset=utf-8", if with_body { "OK" } else { "" });
    let headers = response.headers_mut();
    headers
        .insert("cache-control", HeaderValue::from_static("no-cache, no-store, must-revalidate"));
    headers.insert("pragma", HeaderValue::from_static("no-cache"));
    response
}

async fn info(front: &Arc<Frontend>) -> Answer {
    let state = front.host.get().await?;
    let state: Value = serde_json::from_str(&state).unwrap_or(Value::Null);
    let count =
        if state.get("Containers").is_none() { Some(front.host.ls().await?.len()) } else { None };
    Ok(json_response(StatusCode::OK, &api::info(state, count)))
}

async fn list(front: &Arc<Frontend>, listing: Listing) -> Answer {
    let Listing { filters, limit, all } = listing;
    let names = front.host.ls().await?;
    let inspected: Vec<Option<Value>> = futures::stream::iter(names)
        .map(|name| async move { inspect(front, &name).await.ok() })
        .buffered(PARALLEL_INSPECTS)
        .collect()
        .await;
    let mut containers: Vec<Value> = inspected
        .into_iter()
        .flatten()
        .filter(|inspect| all || inspect["State"]["Running"] == true)
        .filter(|inspect| filters.matches(inspect))
        .collect();
    let created = |inspect: &Value| inspect["Created"].as_str().and_then(api::parse_time);
    containers.sort_by_key(|inspect| std::cmp::Reverse(created(inspect)));
    if let Some(limit) = limit {
        containers.truncate(limit);
    }
    let now = time::OffsetDateTime::now_utc();
    let summaries: Vec<Value> =
        containers.iter().map(|inspect| api::summary(inspect, now)).collect();
    Ok(json_response(StatusCode::OK, &Value::Array(summaries)))
}

async fn create(front: &Arc<Frontend>, options: &Options, request: Request<Incoming>) -> Answer {
    let config = json_body(request).await?;
    api::check_create_config(&config).map_err(|text| Failure::new(400, text))?;
    let mut args = vec![config.to_string()];
    if let Some(name) = options.get("name").filter(|name| !name.is_empty()) {
        args.push(name.to_owned());
    }
    let (answer, _) = front.host.call(Verb::Spawn, args).await?;
    let id = match (answer.arg(0), &answer.ret) {
        (Some(id), _) => id.to_owned(),
        (None, Some(object)) => {
            let inspect = Client::new(object.clone()).get().await?;
            let inspect: Value = serde_json::from_str(&inspect).unwrap_or(Value::Null);
            inspect["Id"].as_str().unwrap_or_default().to_owned()
        }
        (None, None) => String::new(),
    };
    if id.is_empty() {
        return Err(Failure::new(500, "the backend created a container without an id"));
    }
    let warnings = answer.args.get(1..).unwrap_or_default();
    Ok(json_response(StatusCode::CREATED, &json!({"Id": id, "Warnings": warnings})))
}

async fn top(front: &Arc<Frontend>, id: &str, options: &Options) -> Answer {
    let object = container(front, id).await?;
    let args = ["top", options.get("ps_args").unwrap_or_default()];
    let (answer, _) = object.call(Verb::Get, args).await?;
    let top: Value = serde_json::from_str(answer.arg(0).unwrap_or_default()).unwrap_or(Value::Null);
    if top.get("Titles").is_some() {
        return Ok(json_response(StatusCode::OK, &top));
    }
    // A backend that ignores "top" answers with its inspect document: show its one process.
    let inspect = top;
    if inspect["State"]["Running"] != true {
        return Err(Failure::new(409, format!("Container {id} is not running")));
    }
    let command: Vec<&str> = std::iter::once(&inspect["Path"])
        .chain(inspect["Args"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    let pid = inspect["State"]["Pid"].to_string();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "Titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
            "Processes": [["root", pid, "0", "0", "00:00", "?", "00:00:00", command.join(" ")]],
        }),
    ))
}

async fn logs(front: &Arc<Frontend>, id: &str, options: &Options) -> Answer {
    let object = container(front, id).await?;
    let mut args = vec!["logs".to_owned()];
    args.extend(options.pairs());
    match object.connect(args).await {
        Ok(att) => Ok(streamed(StatusCode::OK, None, att)),
        // A backend without logs has none to show.
        Err(ClientError::Remote { message, .. }) if is_not_implemented(&message) => {
            Ok(status_only(StatusCode::OK))
        }
        Err(error) => Err(error.into()),
    }
}

async fn wait(front: &Arc<Frontend>, id: &str, options: &Options) -> Answer {
    let object = container(front, id).await?;
    let condition = options.get("condition").filter(|c| !c.is_empty()).unwrap_or("not-running");
    if !matches!(condition, "not-running" | "next-exit" | "removed") {
        return Err(Failure::new(400, format!("invalid condition: {condition:?}")));
    }
    let waiting: BoxFuture<'static, Value> = match object.call(Verb::Watch, [condition]).await {
        Ok((_, events)) => Box::pin(exit_status(events)),
        Err(ClientError::Remote { message, .. }) if is_not_implemented(&message) => {
            let baseline = state_of(&object).await?;
            Box::pin(poll_exit(object, condition.to_owned(), baseline))
        }
        Err(error) => return Err(error.into()),
    };
    // Headers go out now, before the container exits: `docker run` sends start only after
    // they came (docs/docker.md).
    let body = futures::stream::once(async move {
        let mut line = waiting.await.to_string();
        line.push('\n');
        Ok::<_, io::Error>(Frame::data(Bytes::from(line)))
    });
    let mut response = Response::new(StreamBody::new(body).boxed_unsync());
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

async fn attach(
    front: &Arc<Frontend>,
    id: &str,
    options: &Options,
    mut request: Request<Incoming>,
) -> Answer {
    let on_upgrade = upgrade(&mut request)?;
    let object = container(front, id).await?;
    let mut args = vec!["attach".to_owned()];
    args.extend(options.pairs());
    hijack(front, &object, args, on_upgrade).await
}

/// The upgrade of a request that asks for a hijacked connection (`Upgrade: tcp`).
fn upgrade(request: &mut Request<Incoming>) -> Result<OnUpgrade, Failure> {
    let upgrade = request.headers().get(UPGRADE).and_then(|value| value.to_str().ok());
    if !upgrade.is_some_and(|value| value.eq_ignore_ascii_case("tcp")) {
        return Err(Failure::new(400, "this endpoint needs a hijacked connection (Upgrade: tcp)"));
    }
    Ok(hyper::upgrade::on(request))
}

/// Answers 101 and joins the upgraded connection to the byte stream of `object`'s
/// `Connect(args)`. The backend's stream exists before the 101 goes out, so output after a
/// later start reaches it.
async fn hijack(
    front: &Arc<Frontend>,
    object: &Client,
    args: Vec<String>,
    on_upgrade: OnUpgrade,
) -> Answer {
    let att = match object.connect(args).await {
        Ok(att) => Some(att),
        Err(ClientError::Remote { message, .. }) if is_not_implemented(&message) => None,
        Err(error) => return Err(error.into()),
    };
    let shutdown = front.tasks.shutdown_token().clone();
    front.tasks.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(error) => {
                tracing::debug!(%error, "upgrade failed");
                return;
            }
        };
        match att {
            Some(att) => stream::bridge(upgraded, att, shutdown).await,
            // No streams behind this backend: the output is empty.
            None => {
                let mut upgraded = upgraded;
                let _ = upgraded.shutdown().await;
            }
        }
    });
    let mut response = status_only(StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/vnd.docker.raw-stream"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("tcp"));
    Ok(response)
}

async fn exec_create(front: &Arc<Frontend>, id: &str, request: Request<Incoming>) -> Answer {
    let object = container(front, id).await?;
    let config = json_body(request).await?;
    let (answer, _) = object.call(Verb::Spawn, [config.to_string()]).await?;
    let exec_id = answer.arg(0).unwrap_or_default().to_owned();
    let (false, Some(exec)) = (exec_id.is_empty(), answer.ret) else {
        return Err(Failure::new(502, "the backend created an exec without an id"));
    };
    let mut execs = front.execs.lock().unwrap_or_else(PoisonError::into_inner);
    if execs.len() == MAX_EXECS {
        execs.pop_front();
    }
    execs.push_back((exec_id.clone(), Client::new(exec).named(format!("exec {exec_id}"))));
    Ok(json_response(StatusCode::CREATED, &json!({"Id": exec_id})))
}

async fn exec_route(
    front: &Arc<Frontend>,
    id: &str,
    action: Option<ExecAction>,
    options: &Options,
    mut request: Request<Incoming>,
) -> Answer {
    let exec = {
        let execs = front.execs.lock().unwrap_or_else(PoisonError::into_inner);
        execs.iter().find(|(exec_id, _)| exec_id == id).map(|(_, exec)| exec.clone())
    };
    let exec = exec.ok_or_else(|| Failure::new(404, format!("No such exec instance: {id}")))?;
    match action {
        Some(ExecAction::Inspect) => {
            Ok(full(StatusCode::OK, "application/json", exec.get().await?))
        }
        Some(ExecAction::Start) => {
            let on_upgrade = hyper::upgrade::on(&mut request);
            let body = json_body(request).await?;
            if body["Detach"] == true {
                ask(&exec, Verb::Start, &[&body.to_string()]).await?;
                return Ok(status_only(StatusCode::OK));
            }
            hijack(front, &exec, vec!["start".to_owned(), body.to_string()], on_upgrade).await
        }
        Some(ExecAction::Resize) => {
            let (h, w) = (options.get("h").unwrap_or("0"), options.get("w").unwrap_or("0"));
            ask(&exec, Verb::Set, &["size", h, w]).await?;
            Ok(status_only(StatusCode::OK))
        }
        None => Err(Failure::new(404, "page not found")),
    }
}

/// A request's JSON object body, at most `MAX_REQUEST_BODY` bytes.
///
/// # Errors
/// 413 for a body over the limit; 400 for one that breaks off (shorter than its
/// `Content-Length` when the client stops sending, a broken chunk) or is not a JSON object.
async fn json_body(request: Request<Incoming>) -> Result<Value, Failure> {
    let body =
        Limited::new(request.into_body(), MAX_REQUEST_BODY).collect().await.map_err(|error| {
            let status = if error.is::<LengthLimitError>() { 413 } else { 400 };
            Failure::new(status, format!("request body: {error}"))
        })?;
    json_object(&body.to_bytes())
}

/// A JSON object body (create and exec configs, exec start), parsed.
///
/// # Errors
/// 400 for bad JSON or JSON that is not an object.
pub(crate) fn json_object(body: &[u8]) -> Result<Value, Failure> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| Failure::new(400, format!("invalid JSON: {error}")))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(Failure::new(400, "invalid JSON: not an object"))
    }
}

async fn pull(front: &Arc<Frontend>, options: &Options) -> Answer {
    let mut args = vec!["pull".to_owned()];
    args.extend(options.pairs());
    let att = front.host.connect(args).await?;
    Ok(streamed(StatusCode::OK, Some("application/json"), att))
}

/// The container called `id` (a name or an id), as a client.
async fn container(front: &Arc<Frontend>, id: &str) -> Result<Client, Failure> {
    Ok(front.host.attach(id).await?.object)
}

/// The inspect document of the container called `name`: the one its `Attach` answer carries
/// (`Ack(ID, INSPECT_JSON)`, one round trip), else its `Get`.
async fn inspect(front: &Arc<Frontend>, name: &str) -> Result<Value, Failure> {
    let attached = front.host.attach(name).await?;
    let state = match attached.args.into_iter().nth(1) {
        Some(state) => state,
        None => attached.object.get().await?,
    };
    serde_json::from_str(&state)
        .map_err(|error| Failure::new(502, format!("bad inspect JSON: {error}")))
}

async fn ask(object: &Client, verb: Verb, args: &[&str]) -> Result<Message, Failure> {
    let (answer, _) = object.call(verb, args.iter().copied()).await?;
    Ok(answer)
}

/// `Stop`, with the daemon's timeout when given; waits that long and more for the answer.
async fn stop(object: &Client, timeout: Option<&str>) -> Result<Message, Failure> {
    let seconds = timeout.and_then(|t| t.parse::<u64>().ok()).unwrap_or(DEFAULT_STOP_SECONDS);
    let object = object.clone().with_timeout(object.timeout() + Duration::from_secs(seconds));
    match timeout {
        Some(t) => ask(&object, Verb::Stop, &["timeout", t]).await,
        None => ask(&object, Verb::Stop, &[]).await,
    }
}

/// The wait answer from `Set("exited", CODE [, ERROR])`.
async fn exit_status(mut events: Receiver<Message>) -> Value {
    loop {
        match events.recv().await {
            Ok(Some(message)) if message.verb == Verb::Set && message.arg(0) == Some("exited") => {
                let code = message.arg(1).and_then(|code| code.parse::<i64>().ok()).unwrap_or(-1);
                let error = message.arg(2).map(|text| json!({"Message": text}));
                return json!({"Error": error, "StatusCode": code});
            }
            Ok(Some(_)) => {}
            Ok(None) => return wait_error("the backend stopped waiting"),
            Err(error) => return wait_error(&error.to_string()),
        }
    }
}

/// For backends without `Watch`: polls the container's state until `condition` holds.
/// With `AutoRemove`, removes the container once it exited (what a daemon does itself).
async fn poll_exit(object: Client, condition: String, baseline: Value) -> Value {
    let mut last_code = 0;
    let finished_before = baseline["FinishedAt"].clone();
    let was_running = baseline["Running"] == true;
    loop {
        let state = match state_of(&object).await {
            Ok(state) => state,
            Err(failure) if failure.status == StatusCode::NOT_FOUND => {
                return json!({"Error": null, "StatusCode": last_code});
            }
            Err(failure) => return wait_error(&failure.text),
        };
        let running = state["Running"] == true;
        last_code = state["ExitCode"].as_i64().unwrap_or_default();
        let exited = !running && (was_running || state["FinishedAt"] != finished_before);
        match condition.as_str() {
            "not-running" if !running => break,
            "next-exit" if exited => break,
            "removed" if exited && state["AutoRemove"] == true => {
                let _ = object.call(Verb::Stop, ["rm", "force"]).await;
            }
            _ => {}
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    json!({"Error": null, "StatusCode": last_code})
}

/// `State` of a container, with `AutoRemove` from its `HostConfig` added.
async fn state_of(object: &Client) -> Result<Value, Failure> {
    let inspect = object.get().await?;
    let inspect: Value = serde_json::from_str(&inspect).unwrap_or(Value::Null);
    let mut state = inspect["State"].clone();
    if let Value::Object(map) = &mut state {
        map.insert("AutoRemove".into(), inspect["HostConfig"]["AutoRemove"].clone());
    }
    Ok(state)
}

fn wait_error(text: &str) -> Value {
    json!({"Error": {"Message": text}, "StatusCode": -1})
}

fn is_not_implemented(message: &str) -> bool {
    message.starts_with("not implemented")
}

/// 304 if the backend said nothing changed, else 204.
fn unchanged(answer: &Message) -> StatusCode {
    if answer.arg(0) == Some("not modified") {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::NO_CONTENT
    }
}

/// The path without its `/vX.Y` prefix.
fn unversioned(path: &str) -> Result<&str, Failure> {
    let Some(rest) = path.strip_prefix("/v") else { return Ok(path) };
    let (version, rest) = rest.split_once('/').map_or((rest, ""), |(v, r)| (v, r));
    let Some((major, minor)) = version.split_once('.') else { return Ok(path) };
    let (Ok(major), Ok(minor)) = (major.parse::<u32>(), minor.parse::<u32>()) else {
        return Ok(path);
    };
    if (major, minor) > (1, 41) {
        return Err(Failure::new(
            400,
            format!(
                "client version {version} is too new. Maximum supported API version is {}",
                api::API_VERSION
            ),
        ));
    }
    if rest.is_empty() {
        return Ok("/");
    }
    Ok(&path[path.len() - rest.len() - 1..])
}

/// Query parameters.
#[derive(Debug)]
pub(crate) struct Options(pub Vec<(String, String)>);

impl Options {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(api::is_true)
    }

    /// Every parameter as `KEY=VALUE`, the way stream verbs take options.
    fn pairs(&self) -> impl Iterator<Item = String> + '_ {
        self.0.iter().map(|(key, value)| format!("{key}={value}"))
    }
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let body = Full::new(body.into()).map_err(|never| match never {}).boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    full(status, "application/json", value.to_string())
}

fn status_only(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response
}

fn no_content() -> Response<Body> {
    status_only(StatusCode::NO_CONTENT)
}

/// A response whose body is what the backend writes into `att`, as it comes.
fn streamed(
    status: StatusCode,
    content_type: Option<&'static str>,
    att: libchan::ByteStream,
) -> Response<Body> {
    let body = StreamBody::new(ReaderStream::new(att).map_ok(Frame::data)).boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

/// Connections served at once; each costs a task and its buffers (an attach, two copies).
const MAX_CONNECTIONS: usize = 512;
/// Longest wait for a request head, from the connection's start or the end of the last
/// response: with [`MAX_CONNECTIONS`], what a crowd of silent clients can hold, and for how long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body (a create config), in bytes.
const MAX_REQUEST_BODY: usize = 1 << 20;
/// Exec instances remembered for `/exec/{id}/...`; the oldest is forgotten first.
const MAX_EXECS: usize = 256;
/// Containers inspected at once for `ps`.
const PARALLEL_INSPECTS: usize = 8;
/// How often a wait polls a backend that has no `Watch`.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Docker's stop timeout when the request gives none.
const DEFAULT_STOP_SECONDS: u64 = 10;
const SERVER: &str = concat!("swarm-node/", env!("CARGO_PKG_VERSION"), " (linux)");
