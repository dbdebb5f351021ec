//! `listen URL`: accepts libchan sessions and feeds the requests that arrive downstream.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::future::BoxFuture;
use libchan::proto::Code;
use libchan::{Limits, Listener, Receiver, Sender, Session, Tls};
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::metrics;
use crate::relay;
use crate::service::{
    is_secure, Backend, HandlerError, HandlerResult, InFlight, Message, Server, SpawnError, Stage,
    Tasks, Verb,
};

/// The `listen` backend: makes the rest of the chain a network node.
///
/// `listen URL [--allow NAME,...]` binds `URL` (`quic://`, `tls://`, `tcp://`, `unix://`) when
/// spawned and, once started, accepts libchan sessions. Every top-level channel a peer opens
/// carries [`Message`]s (a `remote` stage opens one per request); each one goes downstream and
/// its answers go back on its `ret`. On `tls://` and `quic://` only peers with a certificate
/// from the node's CA get in (libchan logs the others with the reason), and `--allow` narrows
/// that to the named nodes: another node's session is closed with code `Application` and the
/// refusal logged with its name.
///
/// At shutdown it stops accepting, lets the requests in flight get their first answer, then
/// closes every session with code `Shutdown`. Requests sent to the stage's own input are
/// forwarded downstream; it answers `Start` and `Stop` itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct Listen;

impl Backend for Listen {
    fn name(&self) -> &str {
        "listen"
    }

    fn usage(&self) -> &str {
        "URL [--allow NAME,...]"
    }

    fn summary(&self) -> &str {
        "accept libchan sessions on URL (quic://, tls://, tcp://, unix://) and serve the rest of the chain"
    }

    fn spawn(&self, stage: Stage) -> BoxFuture<'static, Result<Sender<Message>, SpawnError>> {
        let parsed = parse_args(self, &stage.args);
        Box::pin(async move {
            let (url, allow) = parsed?;
            if !is_secure(&url) && allow.is_some() {
                return Err(SpawnError::Failed(format!(
                    "listen {url}: --allow needs tls:// or quic:// (other peers have no name)"
                )));
            }
            let tls =
                stage.node.tls_for(&url).map_err(|e| SpawnError::Failed(format!("listen {e}")))?;
            let listener = bind(&stage.name, &url, stage.node.limits.clone(), tls)
                .await
                .map_err(|error| SpawnError::Failed(format!("listen {url}: {error}")))?;
            let local = listener.local_url().to_owned();
            tracing::info!(stage = %stage.name, url = %local, "bound");
            let state = Arc::new(Listening {
                label: stage.name.clone(),
                node: stage.node.name.clone(),
                allow,
                downstream: stage.downstream.clone(),
                tasks: stage.tasks.clone(),
                listener: std::sync::Mutex::new(Some(listener)),
            });
            stage.node.announce(&local);
            Ok(Server::with_state(stage.name, state)
                .on(Verb::Start, start)
                .on(Verb::Stop, stop)
                .on_any(forward)
                .spawn(&stage.tasks))
        })
    }
}

struct Listening {
    label: String,
    node: String,
    allow: Option<BTreeSet<String>>,
    downstream: Sender<Message>,
    tasks: Tasks,
    /// Taken by the accept loop at `Start`.
    listener: std::sync::Mutex<Option<Listener>>,
}

/// Binds `url` in a task of its own. A QUIC endpoint's driver task, started here, enters the
/// span current here on every poll for as long as it listens, several times per request: a
/// debug span (off at the default level) costs nothing then, where the node's info span cost
/// a few percent of a routing node's work per request. (The `remote` stage dials the same
/// way.)
async fn bind(label: &str, url: &str, limits: Limits, tls: Tls) -> Result<Listener, String> {
    let url = url.to_owned();
    let span = tracing::debug_span!(parent: None, "bind", stage = %label, url = %url);
    let bound = tokio::spawn(
        async move { libchan::listen_secure(&url, limits, &tls).await }.instrument(span),
    );
    match bound.await {
        Ok(bound) => bound.map_err(|error| error.to_string()),
        Err(error) => Err(format!("bind task failed: {error}")),
    }
}

fn parse_args(
    backend: &Listen,
    args: &[String],
) -> Result<(String, Option<BTreeSet<String>>), SpawnError> {
    let mut url = None;
    let mut allow: Option<BTreeSet<String>> = None;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let names = if let Some(names) = word.strip_prefix("--allow=") {
            Some(names.to_owned())
        } else if word == "--allow" {
            Some(words.next().cloned().ok_or_else(|| {
                SpawnError::usage(backend, "--allow needs a comma-separated list of node names")
            })?)
        } else {
            None
        };
        match names {
            Some(names) => allow.get_or_insert_with(BTreeSet::new).extend(
                names.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned),
            ),
            None if word.starts_with("--") => {
                return Err(SpawnError::usage(backend, format!("unknown option {word:?}")))
            }
            None if url.is_none() => url = Some(word.clone()),
            None => return Err(SpawnError::usage(backend, format!("unexpected {word:?}"))),
        }
    }
    let url = url.ok_or_else(|| SpawnError::usage(backend, "no URL"))?;
    Ok((url, allow))
}

async fn start(state: Arc<Listening>, request: Message) -> HandlerResult {
    // Invariant: plain data behind the lock; a poisoned lock still holds a valid Option.
    let listener = state.listener.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    if let Some(listener) = listener {
        tracing::info!(stage = %state.label, url = %listener.local_url(), "listening");
        state.tasks.spawn_draining(accept_loop(state.clone(), listener));
    }
    request.reply(Message::ack()).await?;
    Ok(())
}

async fn stop(_: Arc<Listening>, request: Message) -> HandlerResult {
    request.reply(Message::ack()).await?;
    Ok(())
}

async fn forward(state: Arc<Listening>, request: Message) -> HandlerResult {
    state
        .downstream
        .send(request)
        .await
        .map_err(|_| HandlerError::new("listen: downstream is gone"))
}

/// Accepts sessions until the drain token fires, then waits for each session to drain.
async fn accept_loop(state: Arc<Listening>, listener: Listener) {
    let sessions = TaskTracker::new();
    let drain = state.tasks.drain_token().clone();
    loop {
        let session = tokio::select! {
            () = drain.cancelled() => break,
            session = listener.accept() => session,
        };
        let Some(session) = session else {
            tracing::error!(stage = %state.label, "listener failed");
            break;
        };
        let peer = session.peer_name().unwrap_or_default().to_owned();
        if let Some(allow) = &state.allow {
            if !allow.contains(&peer) {
                let reason = "not on the allow list";
                tracing::warn!(stage = %state.label, peer = %peer, addr = %session.peer_addr(), reason, "peer refused");
                metrics::count_refusal();
                let text = format!("node {peer:?} is {reason} of {}", state.node);
                tokio::spawn(async move { session.close(Code::Application, &text).await });
                continue;
            }
        }
        let span =
            tracing::info_span!("session", node = %state.node, peer = %display_peer(&session));
        sessions.spawn(serve_session(state.clone(), session).instrument(span));
    }
    drop(listener);
    tracing::info!(stage = %state.label, "stopped accepting");
    sessions.close();
    sessions.wait().await;
}

fn display_peer(session: &Session) -> String {
    match session.peer_name() {
        Some(name) => format!("{name}@{}", session.peer_addr()),
        None => session.peer_addr().to_owned(),
    }
}

/// Serves one session's channels; at drain, waits for its requests in flight (until the
/// shutdown token fires) and closes it with `Shutdown`.
async fn serve_session(state: Arc<Listening>, session: Session) {
    let _open = metrics::SESSIONS.open();
    let _traffic = metrics::track_traffic(&state.label, &session);
    tracing::info!("peer connected");
    let in_flight = TaskTracker::new();
    let drain = state.tasks.drain_token().clone();
    let ended = loop {
        let channel = tokio::select! {
            () = drain.cancelled() => break None,
            reason = session.closed() => break Some(reason),
            channel = session.accept::<Message>() => channel,
        };
        let Some(channel) = channel else { break session.close_reason() };
        in_flight.spawn(serve_channel(state.clone(), channel, in_flight.clone()).in_current_span());
    };
    if let Some(reason) = ended {
        tracing::info!(%reason, "peer disconnected");
        return;
    }
    in_flight.close();
    tokio::select! {
        () = in_flight.wait() => {}
        () = state.tasks.shutdown_token().cancelled() => {}
    }
    session.close(Code::Shutdown, &format!("node {} shutting down", state.node)).await;
    tracing::info!("session closed for shutdown");
}

/// Forwards every request on one channel downstream.
async fn serve_channel(
    state: Arc<Listening>,
    mut channel: Receiver<Message>,
    in_flight: TaskTracker,
) {
    let _open = metrics::CHANNELS.open();
    loop {
        let request = tokio::select! {
            () = state.tasks.shutdown_token().cancelled() => return,
            request = channel.recv() => request,
        };
        let request = match request {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) if !error.is_fatal() => {
                tracing::warn!(%error, "dropped a request that did not decode");
                metrics::count_error("decode");
                continue;
            }
            Err(error) => {
                tracing::debug!(%error, "request channel failed");
                return;
            }
        };
        let mut request = request;
        let span = relay::request_span(&mut request);
        if !serve_request(&state, request, &in_flight).instrument(span).await {
            return;
        }
    }
}

/// Sends one request downstream, counted in flight until its first answer (that is what
/// shutdown waits for); `false` when the chain is gone.
///
/// The answers go straight to the asker's `ret`, with no relay here: the stages downstream
/// end the count when the first answer went out (see [`InFlight`]).
async fn serve_request(
    state: &Arc<Listening>,
    mut request: Message,
    in_flight: &TaskTracker,
) -> bool {
    metrics::count_message(&state.label);
    tracing::debug!(args = ?request.args, "request");
    request.in_flight = Some(InFlight::new(in_flight.token()));
    let Err(error) = state.downstream.send(request).await else { return true };
    let request = error.into_inner();
    if let Some(ret) = &request.ret {
        let _ = ret.send(Message::error("listen: the chain is gone")).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn arguments() {
        let (url, allow) = parse_args(&Listen, &args(&["quic://0.0.0.0:7300"])).unwrap();
        assert_eq!((url.as_str(), allow), ("quic://0.0.0.0:7300", None));
        let (_, allow) =
            parse_args(&Listen, &args(&["tls://[::]:1", "--allow", "a, b", "--allow=c"])).unwrap();
        assert_eq!(allow.unwrap().into_iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        let error = parse_args(&Listen, &args(&[])).unwrap_err();
        assert_eq!(error.to_string(), "no URL (usage: listen URL [--allow NAME,...])");
        let error = parse_args(&Listen, &args(&["tcp://x:1", "--allow"])).unwrap_err();
        assert!(error.to_string().starts_with("--allow needs"), "{error}");
        let error = parse_args(&Listen, &args(&["tcp://x:1", "--deny", "a"])).unwrap_err();
        assert!(error.to_string().starts_with("unknown option \"--deny\""), "{error}");
    }
}
