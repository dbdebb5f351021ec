//! `remote URL`: forwards every request to the node at URL over one libchan session.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use libchan::proto::Code;
use libchan::{Limits, Sender, Session, Tls};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::metrics;
use crate::relay::{self, Resend, Verdict, Watch};
use crate::service::{
    Backend, HandlerError, HandlerResult, Message, Server, SpawnError, Stage, Tasks, Verb,
};

/// The `remote` backend: the tail of a chain that goes on at another node.
///
/// `remote URL [--node NAME] [--timeout SECS]` keeps one session to the node at `URL` (a
/// `listen` stage there) and forwards each request on a channel of its own; answers come back
/// on the request's `ret`, and objects in them (the `ret` of `Spawn` and `Attach` answers) are
/// wrapped so requests to them are forwarded the same way. On `tls://` and `quic://` the node
/// must prove the name `NAME` (default: the URL's host) with a certificate from this node's CA.
///
/// Every wait is bounded: a request waits at most 2 s for a session (less when a dial fails
/// meanwhile), then fails with `Error("remote NAME: not connected: WHY")`; its first answer
/// comes within `--timeout` (default 30 s) or it fails; when the session dies, every request
/// waiting on it fails at once with `Error("remote NAME: connection lost: WHY")`, and the stage
/// dials again with exponential backoff (100 ms doubling to 2 s, sooner when a request is
/// waiting). Sessions are dead after 5 s without a heartbeat ([`Node::limits`]).
///
/// [`Node::limits`]: crate::service::Node::limits
#[derive(Clone, Copy, Debug, Default)]
pub struct Remote;

impl Backend for Remote {
    fn name(&self) -> &str {
        "remote"
    }

    fn usage(&self) -> &str {
        "URL [--node NAME] [--timeout SECS]"
    }

    fn summary(&self) -> &str {
        "forward every request to the node at URL (its listen stage) over one session"
    }

    fn spawn(&self, stage: Stage) -> BoxFuture<'static, Result<Sender<Message>, SpawnError>> {
        let parsed = parse_args(self, &stage.args);
        Box::pin(async move {
            let Args { url, node, timeout } = parsed?;
            let tls =
                stage.node.tls_for(&url).map_err(|e| SpawnError::Failed(format!("remote {e}")))?;
            let tls = match &node {
                Some(name) => tls.with_server_name(name.clone()),
                None => tls,
            };
            let name = node.unwrap_or_else(|| host_of(&url));
            let (current, _) = watch::channel(State::default());
            let link = Arc::new(Link {
                label: stage.name.clone(),
                who: format!("remote {name}").into(),
                url,
                tls,
                limits: stage.node.limits.clone(),
                timeout,
                current,
                wake: Notify::new(),
                tasks: stage.tasks.clone(),
            });
            let span = tracing::info_span!("remote", node = %stage.node.name, peer = %name);
            stage.tasks.spawn(keep_connected(link.clone()).instrument(span));
            Ok(Server::with_state(stage.name, link)
                .on(Verb::Start, lifecycle)
                .on(Verb::Stop, lifecycle)
                .on_any(forward)
                .spawn(&stage.tasks))
        })
    }
}

#[derive(Debug)]
struct Args {
    url: String,
    node: Option<String>,
    timeout: Duration,
}

fn parse_args(backend: &Remote, args: &[String]) -> Result<Args, SpawnError> {
    let mut url = None;
    let mut node = None;
    let mut timeout = DEFAULT_TIMEOUT;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let (flag, inline) = match word.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (word.as_str(), None),
        };
        let mut value = |what: &str| {
            inline
                .clone()
                .or_else(|| words.next().cloned())
                .ok_or_else(|| SpawnError::usage(backend, format!("{flag} needs {what}")))
        };
        match flag {
            "--node" => node = Some(value("a node name")?),
            "--timeout" => {
                let secs = value("a number of seconds")?;
                let secs = secs.parse::<f64>().ok().filter(|s| s.is_finite() && *s > 0.0);
                let secs = secs.ok_or_else(|| {
                    SpawnError::usage(backend, "--timeout needs a positive number of seconds")
                })?;
                timeout = Duration::from_secs_f64(secs.min(MAX_TIMEOUT_SECS));
            }
            flag if flag.starts_with("--") => {
                return Err(SpawnError::usage(backend, format!("unknown option {flag:?}")))
            }
            _ if url.is_none() => url = Some(word.clone()),
            _ => return Err(SpawnError::usage(backend, format!("unexpected {word:?}"))),
        }
    }
    let url = url.ok_or_else(|| SpawnError::usage(backend, "no URL"))?;
    Ok(Args { url, node, timeout })
}

/// The host of `scheme://host:port`, or the path of `unix:///path`.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    if url.starts_with("unix://") {
        return rest.to_owned();
    }
    let host = rest.trim_end_matches('/').rsplit_once(':').map_or(rest, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']').to_owned()
}

/// One `remote` stage: where it dials and the session it holds.
struct Link {
    label: String,
    /// `remote NAME`, the prefix of every error it answers with.
    who: Arc<str>,
    url: String,
    tls: Tls,
    limits: Limits,
    timeout: Duration,
    current: watch::Sender<State>,
    /// A request is waiting for a session: dial now.
    wake: Notify,
    tasks: Tasks,
}

#[derive(Clone, Default)]
struct State {
    session: Option<Session>,
    /// Dials that failed so far, so a waiting request learns of the next failure at once.
    failures: u64,
    last_error: Arc<Mutex<String>>,
}

impl State {
    fn live(&self) -> Option<Session> {
        self.session.clone().filter(|session| session.close_reason().is_none())
    }
}

impl Link {
    /// The live session, waiting (boundedly) for the dialer if there is none.
    async fn session(&self) -> Result<Session, HandlerError> {
        let mut state = self.current.subscribe();
        let failures = {
            let now = state.borrow();
            if let Some(session) = now.live() {
                return Ok(session);
            }
            now.failures
        };
        self.wake.notify_one();
        let waited = tokio::time::timeout(
            CONNECT_WAIT.min(self.timeout),
            state.wait_for(|state| state.live().is_some() || state.failures > failures),
        )
        .await;
        if let Ok(Ok(state)) = &waited {
            if let Some(session) = state.live() {
                return Ok(session);
            }
        }
        drop(waited);
        metrics::count_error("not_connected");
        let last = state.borrow().last_error.clone();
        let last = last.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let last = if last.is_empty() { "still dialing".to_owned() } else { last };
        Err(HandlerError::new(format!("{}: not connected: {last}", self.who)))
    }

    fn watch(&self, session: Session) -> Watch {
        Watch {
            who: self.who.clone(),
            session: Some(session),
            timeout: Some(self.timeout),
            shutdown: self.tasks.shutdown_token().clone(),
        }
    }
}

/// Dials, holds the session until it dies, dials again with backoff; until shutdown.
async fn keep_connected(link: Arc<Link>) {
    let shutdown = link.tasks.shutdown_token().clone();
    let mut backoff = MIN_BACKOFF;
    let mut dialed = false;
    let mut last_logged = String::new();
    loop {
        if std::mem::replace(&mut dialed, true) {
            metrics::count_redial();
        }
        let mut dial = dial(&link);
        let dialed = tokio::select! {
            () = shutdown.cancelled() => {
                dial.abort();
                return;
            }
            dialed = &mut dial => match dialed {
                Ok(dialed) => dialed.map_err(|error| error.to_string()),
                Err(error) => Err(format!("dial task failed: {error}")),
            },
        };
        match dialed {
            Ok(session) => {
                tracing::info!(url = %link.url, "connected");
                last_logged.clear();
                backoff = MIN_BACKOFF;
                let _open = metrics::SESSIONS.open();
                let _traffic = metrics::track_traffic(&link.label, &session);
                link.current.send_modify(|state| state.session = Some(session.clone()));
                let reason = tokio::select! {
                    () = shutdown.cancelled() => {
                        session.close(Code::Shutdown, "node shutting down").await;
                        return;
                    }
                    reason = session.closed() => reason,
                };
                tracing::warn!(url = %link.url, %reason, "connection lost, dialing again");
                link.current.send_modify(|state| {
                    state.session = None;
                    *lock(&state.last_error) = format!("connection lost: {reason}");
                });
                // The first redial after a loss goes at once: the node may be right back.
                continue;
            }
            Err(text) => {
                if text != last_logged {
                    tracing::warn!(url = %link.url, error = %text, "cannot connect, retrying with backoff");
                    last_logged.clone_from(&text);
                }
                link.current.send_modify(|state| {
                    *lock(&state.last_error) = text;
                    state.failures += 1;
                });
            }
        }
        let jitter = Duration::from_millis(crate::random::random_u64() % 50);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff + jitter) => {}
            () = link.wake.notified() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Dials the node in a task of its own. The QUIC connection's driver tasks, started by the
/// dial, enter the span current there on every poll for the life of the session, which is
/// several times per request: a debug span (off at the default level) costs nothing then,
/// where the stage's info span cost about a tenth of a routing node's work per request.
fn dial(link: &Link) -> tokio::task::JoinHandle<Result<Session, libchan::ConnectError>> {
    let (url, limits, tls) = (link.url.clone(), link.limits.clone(), link.tls.clone());
    let span = tracing::debug_span!(parent: None, "dial", stage = %link.label, url = %url);
    tokio::spawn(async move { libchan::connect_secure(&url, limits, &tls).await }.instrument(span))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Invariant: plain data behind the lock; a poisoned lock still holds a valid value.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn lifecycle(_: Arc<Link>, request: Message) -> HandlerResult {
    request.reply(Message::ack()).await?;
    Ok(())
}

/// Forwards a request to the node on a new top-level channel.
async fn forward(link: Arc<Link>, mut request: Message) -> HandlerResult {
    let span = relay::request_span(&mut request);
    async move {
        let session = link.session().await?;
        let channel = session.open::<Message>().await.map_err(|error| {
            metrics::count_error("connection");
            // The session ended after it was taken: say so as a failed send does (below).
            let why = match (&error, session.close_reason()) {
                (libchan::OpenError::SessionClosed(_), Some(reason)) => {
                    format!("connection lost: {reason}")
                }
                _ => error.to_string(),
            };
            HandlerError::new(format!("{}: {why}", link.who))
        })?;
        send(&link, &session, &channel, request, Some(channel.clone())).await
    }
    .instrument(span)
    .await
}

/// An object (the `ret` of an answer) at the node, wrapped so requests to it are forwarded
/// with the same bounds and errors as requests to the stage.
struct Object {
    link: Arc<Link>,
    session: Session,
    target: Sender<Message>,
}

async fn forward_to_object(object: Arc<Object>, mut request: Message) -> HandlerResult {
    let span = relay::request_span(&mut request);
    send(&object.link, &object.session, &object.target, request, None).instrument(span).await
}

fn wrap(link: &Arc<Link>, session: &Session, target: Sender<Message>) -> Sender<Message> {
    let object = Object { link: link.clone(), session: session.clone(), target };
    Server::with_state(format!("{} object", link.label), Arc::new(object))
        .on_any(forward_to_object)
        .spawn(&link.tasks)
}

/// Sends `request` to `target` on `session`, with its answers relayed back (objects wrapped).
///
/// `channel` is the request's own channel, if it has one: it stays open until the first
/// answer (or, for a request without `ret`, for [`CHANNEL_GRACE`]).
async fn send(
    link: &Arc<Link>,
    session: &Session,
    target: &Sender<Message>,
    mut request: Message,
    channel: Option<Sender<Message>>,
) -> HandlerResult {
    metrics::count_message(&link.label);
    let started = Instant::now();
    tracing::debug!(args = ?request.args, "forwarding");
    let answers = relay::intercept(&mut request);
    // Counted in flight by the listen stage it came by (if any) until its first answer.
    let in_flight = request.in_flight.take();
    let resend = channel.map(|channel| {
        let deadline = started + if answers.is_some() { link.timeout } else { CHANNEL_GRACE };
        Resend::new(session.clone(), channel, &request, deadline)
    });
    if let Err(error) = target.send(request).await {
        metrics::count_error("connection");
        let why = match session.close_reason() {
            Some(reason) => format!("connection lost: {reason}"),
            None => error.reason().to_string(),
        };
        let verb = &error.into_inner().verb;
        return Err(HandlerError::new(format!("{}: cannot send {verb}: {why}", link.who)));
    }
    let Some(answers) = answers else {
        if let Some(mut resend) = resend {
            let (session, shutdown) = (session.clone(), link.tasks.shutdown_token().clone());
            link.tasks.spawn(
                async move {
                    let refused = async {
                        loop {
                            match resend.verdict().await {
                                Verdict::Resent(_) => {}
                                Verdict::Stands => std::future::pending::<()>().await,
                                Verdict::Refused(reason) | Verdict::Failed(reason) => break reason,
                            }
                        }
                    };
                    tokio::select! {
                        () = tokio::time::sleep(CHANNEL_GRACE) => {}
                        _ = session.closed() => {}
                        () = shutdown.cancelled() => {}
                        reason = refused => {
                            metrics::count_error("refused");
                            tracing::warn!(%reason, "notification lost");
                        }
                    }
                }
                .in_current_span(),
            );
        }
        return Ok(());
    };
    let watch = link.watch(session.clone());
    let (link, session) = (link.clone(), session.clone());
    link.tasks.clone().spawn(
        async move {
            let answers = answers.wrapping(move |object| wrap(&link, &session, object));
            let mut resend = resend;
            let first = answers.first(&watch, resend.as_mut()).await;
            drop(resend);
            drop(in_flight);
            if let Some(rest) = first {
                metrics::observe_latency(started.elapsed());
                relay::rest(rest, watch).await;
            }
        }
        .in_current_span(),
    );
    Ok(())
}

/// How long the channel of a request without `ret` stays open (see [`send`]).
const CHANNEL_GRACE: Duration = Duration::from_secs(2);
/// How long a request waits for a session when there is none.
const CONNECT_WAIT: Duration = Duration::from_secs(2);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// A day: longer first-answer bounds are not bounds.
const MAX_TIMEOUT_SECS: f64 = 86_400.0;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn arguments() {
        let parsed = parse_args(&Remote, &args(&["quic://B:7300"])).unwrap();
        assert_eq!(
            (parsed.url.as_str(), parsed.node, parsed.timeout),
            ("quic://B:7300", None, DEFAULT_TIMEOUT)
        );
        let parsed =
            parse_args(&Remote, &args(&["tls://10.0.0.2:1", "--node", "b", "--timeout=1.5"]))
                .unwrap();
        assert_eq!(
            (parsed.node.as_deref(), parsed.timeout),
            (Some("b"), Duration::from_millis(1500))
        );
        let error = parse_args(&Remote, &args(&["tcp://x:1", "--timeout", "0"])).unwrap_err();
        assert!(error.to_string().starts_with("--timeout needs a positive"), "{error}");
        let error = parse_args(&Remote, &args(&["--node"])).unwrap_err();
        assert!(error.to_string().starts_with("--node needs a node name"), "{error}");
        let error = parse_args(&Remote, &args(&[])).unwrap_err();
        assert!(error.to_string().starts_with("no URL"), "{error}");
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("quic://B:7300"), "B");
        assert_eq!(host_of("tls://[::1]:7300"), "::1");
        assert_eq!(host_of("unix:///run/b.sock"), "/run/b.sock");
    }
}
