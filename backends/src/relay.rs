//! Relaying the answers to a request forwarded over a session back to whoever asked, with
//! a bound on the wait for the first one and a clear error when the session dies.

use std::sync::Arc;
use std::time::Duration;

use libchan::{Receiver, Sender, Session};
use tokio_util::sync::CancellationToken;

use crate::service::Message;

/// The span of everything a network stage does for `request`, named by its id (given one
/// first if it has none), so a request can be followed through every node's log.
pub(crate) fn request_span(request: &mut Message) -> tracing::Span {
    request.ensure_id();
    let id = request.id.as_deref().unwrap_or_default();
    tracing::info_span!("request", id = %id, verb = %request.verb)
}

/// Puts a relay in place of `request`'s `ret`: its answers then come to the returned
/// [`Answers`], which pass them on to the original `ret`. `None` for a request without `ret`.
pub(crate) fn intercept(request: &mut Message) -> Option<Answers> {
    let ret = request.ret.take()?;
    let (relay, answers) = libchan::pipe();
    request.ret = Some(relay);
    Some(Answers::new(answers, ret))
}

/// The answers to one forwarded request, and where they go.
pub(crate) struct Answers {
    answers: Receiver<Message>,
    ret: Sender<Message>,
    /// Wraps the objects (`ret`s) found in answers.
    wrap: Option<Wrap>,
}

type Wrap = Arc<dyn Fn(Sender<Message>) -> Sender<Message> + Send + Sync>;

/// What may end a relay early, and how to name the far side in errors.
#[derive(Clone)]
pub(crate) struct Watch {
    /// Prefix of error texts: `remote node-b`.
    pub who: Arc<str>,
    /// The session the answers come over: its end fails the request.
    pub session: Option<Session>,
    /// Bound on the wait for the first answer.
    pub timeout: Option<Duration>,
    pub shutdown: CancellationToken,
}

enum Next {
    Answer(Message),
    /// The answer channel ended cleanly: the answerer dropped `ret`.
    Ended,
    Failed(String),
    /// Whoever asked no longer listens, or the node shuts down.
    Gone,
}

impl Answers {
    pub(crate) fn new(answers: Receiver<Message>, ret: Sender<Message>) -> Self {
        Self { answers, ret, wrap: None }
    }

    /// These answers, with each object they carry replaced by `wrap(object)`.
    pub(crate) fn wrapping<F>(mut self, wrap: F) -> Self
    where
        F: Fn(Sender<Message>) -> Sender<Message> + Send + Sync + 'static,
    {
        self.wrap = Some(Arc::new(wrap));
        self
    }

    /// Answers the asker with `Error(text)`.
    pub(crate) async fn fail(self, text: impl Into<String>) {
        let _ = self.ret.send(Message::error(text)).await;
    }

    /// Relays the first answer; returns the rest of the relay (for streaming answers), or
    /// `None` when there is nothing more. Without a timeout, waits as long as the asker
    /// listens.
    pub(crate) async fn first(mut self, watch: &Watch) -> Option<Self> {
        let limit = watch.timeout;
        let next = match limit {
            Some(limit) => match tokio::time::timeout(limit, self.next(watch)).await {
                Ok(next) => next,
                Err(_) => Next::Failed(format!("no answer within {limit:?}")),
            },
            None => self.next(watch).await,
        };
        match next {
            Next::Answer(answer) => self.ret.send(answer).await.ok().map(|()| self),
            Next::Ended | Next::Gone => None,
            Next::Failed(reason) => {
                let who = &watch.who;
                tracing::info!(%reason, "request failed");
                crate::metrics::count_error(if reason.starts_with("no answer") {
                    "timeout"
                } else {
                    "connection"
                });
                self.fail(format!("{who}: {reason}")).await;
                None
            }
        }
    }

    async fn next(&mut self, watch: &Watch) -> Next {
        let session = watch.session.as_ref();
        let lost = std::pin::pin!(async {
            match session {
                Some(session) => session.closed().await,
                None => std::future::pending().await,
            }
        });
        let mut lost = lost;
        let mut shutdown = std::pin::pin!(watch.shutdown.cancelled());
        loop {
            let answer = tokio::select! {
                biased;
                answer = self.answers.recv() => answer,
                reason = &mut lost => return Next::Failed(format!("connection lost: {reason}")),
                () = self.ret.closed() => return Next::Gone,
                () = &mut shutdown => return Next::Failed("node shutting down".to_owned()),
            };
            return match answer {
                Ok(Some(mut answer)) => {
                    if let Some(wrap) = &self.wrap {
                        answer.ret = answer.ret.take().map(|object| wrap(object));
                    }
                    Next::Answer(answer)
                }
                Err(error) if !error.is_fatal() => {
                    tracing::warn!(%error, "dropped an answer that did not decode");
                    continue;
                }
                // A channel that ends with its session ended because of it.
                Ok(None) | Err(_) if session.and_then(Session::close_reason).is_some() => {
                    let reason = session.and_then(Session::close_reason).unwrap_or_default();
                    Next::Failed(format!("connection lost: {reason}"))
                }
                Ok(None) => Next::Ended,
                Err(error) => Next::Failed(error.to_string()),
            };
        }
    }
}

/// Relays what follows the first answer (a stream after `Watch` or `Attach("")`) until it
/// ends, the asker goes, the session dies (the asker then gets an `Error`) or shutdown.
pub(crate) async fn rest(mut answers: Answers, watch: Watch) {
    let watch = Watch { timeout: None, ..watch };
    loop {
        match answers.next(&watch).await {
            Next::Answer(answer) => {
                if answers.ret.send(answer).await.is_err() {
                    return;
                }
            }
            Next::Ended | Next::Gone => return,
            Next::Failed(reason) => {
                answers.fail(format!("{}: {reason}", watch.who)).await;
                return;
            }
        }
    }
}
