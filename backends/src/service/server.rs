//! A service that routes each request to a handler by verb.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use libchan::{Receiver, Sender};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::service::{Message, Tasks, Verb};

/// What a handler returns. On `Err` the server answers the request with `Error(text)`.
pub type HandlerResult = Result<(), HandlerError>;

/// A service: per-verb handlers over shared state `S`, a catch-all, and an `Error("not
/// implemented: VERB")` answer for every other verb, so a request is never met with silence.
///
/// Each request runs in a task of its own (at most [`Server::with_max_in_flight`] at once),
/// so a handler that streams (`Attach`, `Watch`) does not hold up the others. A handler answers
/// on the request's `ret` itself (see [`Message::reply`]); if it returns an error instead, the
/// server answers `Error(text)`; if it drops `ret` without answering, the asker sees the
/// channel end and its client reports "no reply".
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use backends::service::{Client, Message, Server, Tasks, Verb};
///
/// let tasks = Tasks::new();
/// let service = Server::new("greeter")
///     .on(Verb::Get, |_, request: Message| async move {
///         request.reply(Message::set(["hello"])).await?;
///         Ok(())
///     })
///     .spawn(&tasks);
/// let client = Client::new(service);
/// assert_eq!(client.get().await.unwrap(), "hello");
/// let error = client.start().await.unwrap_err();
/// assert_eq!(error.to_string(), "Start: not implemented: Start");
/// # }
/// ```
pub struct Server<S = ()> {
    name: String,
    state: Arc<S>,
    handlers: HashMap<Verb, Handler<S>>,
    fallback: Option<Handler<S>>,
    max_in_flight: usize,
}

type Handler<S> = Arc<dyn Fn(Arc<S>, Message) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

impl Server<()> {
    /// A server with no state. `name` labels its log events.
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_state(name, Arc::new(()))
    }
}

impl<S: Send + Sync + 'static> Server<S> {
    /// A server whose handlers get `state`. `name` labels its log events.
    pub fn with_state(name: impl Into<String>, state: Arc<S>) -> Self {
        Self {
            name: name.into(),
            state,
            handlers: HashMap::new(),
            fallback: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// Routes `verb` to `handler`, replacing an earlier handler for it.
    #[must_use]
    pub fn on<F, Fut>(mut self, verb: Verb, handler: F) -> Self
    where
        F: Fn(Arc<S>, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.handlers.insert(verb, boxed(handler));
        self
    }

    /// Routes every verb that has no handler of its own to `handler` (a catch-all, for
    /// services that forward what they do not handle).
    #[must_use]
    pub fn on_any<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Arc<S>, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.fallback = Some(boxed(handler));
        self
    }

    /// Handles at most `limit` requests at once (at least 1); further requests wait in the
    /// input channel. Default: 256. Worst case, that many handler tasks and their messages.
    #[must_use]
    pub fn with_max_in_flight(mut self, limit: usize) -> Self {
        self.max_in_flight = limit.max(1);
        self
    }

    /// Serves a new in-memory channel in a task tracked by `tasks` and returns its sender.
    /// The server ends when every clone of the sender is gone or at shutdown.
    pub fn spawn(self, tasks: &Tasks) -> Sender<Message> {
        let (sender, requests) = libchan::pipe();
        let token = tasks.shutdown_token().clone();
        tasks.spawn(self.serve(requests, token));
        sender
    }

    /// Serves `requests` until the channel ends (then waits for the requests in flight) or
    /// `shutdown` fires (then drops them).
    ///
    /// # Cancel safety
    /// Dropping the future drops the requests in flight; their askers see "no reply".
    pub async fn serve(self, mut requests: Receiver<Message>, shutdown: CancellationToken) {
        let limit = Arc::new(Semaphore::new(self.max_in_flight));
        let mut running = JoinSet::new();
        let name: Arc<str> = self.name.into();
        tracing::debug!(service = %name, "serving");
        loop {
            let request = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                request = requests.recv() => request,
            };
            let request = match request {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(error) if !error.is_fatal() => {
                    tracing::warn!(service = %name, %error, "dropped a request that did not decode");
                    continue;
                }
                Err(error) => {
                    tracing::debug!(service = %name, %error, "request channel failed");
                    break;
                }
            };
            while running.try_join_next().is_some() {}
            let permit = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                permit = limit.clone().acquire_owned() => permit,
            };
            let handler = self.handlers.get(&request.verb).or(self.fallback.as_ref()).cloned();
            let (state, name) = (self.state.clone(), name.clone());
            running.spawn(async move {
                dispatch(&name, handler, state, request).await;
                drop(permit);
            });
        }
        tracing::debug!(service = %name, "request channel ended");
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = async { while running.join_next().await.is_some() {} } => {}
        }
    }
}

impl<S> fmt::Debug for Server<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut verbs: Vec<_> = self.handlers.keys().map(Verb::as_str).collect();
        verbs.sort_unstable();
        f.debug_struct("Server")
            .field("name", &self.name)
            .field("verbs", &verbs)
            .field("catch_all", &self.fallback.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a handler failed; the text becomes the `Error` answer.
///
/// Any `std::error::Error` converts into it with `?`, its sources joined with ": ".
pub struct HandlerError(String);

impl HandlerError {
    /// A failure with this text.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The text sent back.
    pub fn text(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HandlerError({:?})", self.0)
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(error: E) -> Self {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        Self(text)
    }
}

fn boxed<S, F, Fut>(handler: F) -> Handler<S>
where
    F: Fn(Arc<S>, Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(move |state, request| Box::pin(handler(state, request)))
}

async fn dispatch<S>(service: &str, handler: Option<Handler<S>>, state: Arc<S>, request: Message) {
    let verb = request.verb.clone();
    // Kept so a failing handler can still be answered after it consumed the request, and
    // counted in flight until then (a handler that passes the request on passes the count).
    let ret = request.ret.clone();
    let in_flight = request.in_flight.clone();
    let result = match handler {
        Some(handler) => handler(state, request).await,
        None => Err(HandlerError::new(format!("not implemented: {verb}"))),
    };
    if let Err(error) = result {
        tracing::debug!(service, %verb, %error, "request failed");
        match ret {
            Some(ret) => {
                let _ = ret.send(Message::error(error.0)).await;
            }
            None => tracing::debug!(service, %verb, "no return channel for the error"),
        }
    }
    drop(in_flight);
}

const DEFAULT_MAX_IN_FLIGHT: usize = 256;
