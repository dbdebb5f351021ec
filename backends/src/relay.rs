//! Relaying the answers to a request forwarded over a session back to whoever asked, with
//! a bound on the wait for the first one and a clear error when the session dies.

use std::sync::Arc;
use std::time::Duration;

use libchan::proto::Code;
use libchan::{Receiver, SendFailure, Sender, Session};
use tokio::time::Instant;
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
    /// The node refused the request (see [`Resend`]).
    Refused(String),
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
    ///
    /// A request sent on a channel of its own comes with its `resend`: when its answers end
    /// before the first, that learns whether the node refused the request unread, and sends
    /// it again (its answers then come on the new `ret`).
    pub(crate) async fn first(
        mut self,
        watch: &Watch,
        mut resend: Option<&mut Resend>,
    ) -> Option<Self> {
        let limit = watch.timeout;
        let next = match limit {
            Some(limit) => {
                match tokio::time::timeout(limit, self.next(watch, resend.as_deref_mut())).await {
                    Ok(next) => next,
                    Err(_) => Next::Failed(format!("no answer within {limit:?}")),
                }
            }
            None => self.next(watch, resend).await,
        };
        let refused = matches!(next, Next::Refused(_));
        match next {
            Next::Answer(answer) => self.ret.send(answer).await.ok().map(|()| self),
            Next::Ended | Next::Gone => None,
            Next::Failed(reason) | Next::Refused(reason) => {
                let who = &watch.who;
                tracing::info!(%reason, "request failed");
                crate::metrics::count_error(if refused {
                    "refused"
                } else if reason.starts_with("no answer") {
                    "timeout"
                } else {
                    "connection"
                });
                self.fail(format!("{who}: {reason}")).await;
                None
            }
        }
    }

    async fn next(&mut self, watch: &Watch, mut resend: Option<&mut Resend>) -> Next {
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
            if !matches!(answer, Ok(Some(_))) {
                if let Some(resend) = resend.as_deref_mut() {
                    // Ended unanswered: perhaps refused unread, with the streams it named.
                    let verdict = tokio::select! {
                        verdict = resend.verdict() => verdict,
                        reason = &mut lost => {
                            return Next::Failed(format!("connection lost: {reason}"));
                        }
                        () = self.ret.closed() => return Next::Gone,
                        () = &mut shutdown => {
                            return Next::Failed("node shutting down".to_owned());
                        }
                    };
                    match verdict {
                        Verdict::Stands => {}
                        Verdict::Resent(Some(answers)) => {
                            self.answers = answers;
                            continue;
                        }
                        Verdict::Resent(None) => return Next::Ended,
                        Verdict::Refused(reason) => return Next::Refused(reason),
                        Verdict::Failed(reason) => return Next::Failed(reason),
                    }
                }
            }
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
        match answers.next(&watch, None).await {
            Next::Answer(answer) => {
                if answers.ret.send(answer).await.is_err() {
                    return;
                }
            }
            Next::Ended | Next::Gone => return,
            Next::Failed(reason) | Next::Refused(reason) => {
                answers.fail(format!("{}: {reason}", watch.who)).await;
                return;
            }
        }
    }
}

/// A request sent on a channel of its own, which the node may refuse unread: when its accept
/// queue is full, or it has no stream to spare, it refuses the channel, and the streams the
/// request named with it (PROTOCOL.md §6.3). Such a request is sent again on a new channel,
/// with backoff, until its deadline. Holds the channel open while it lives.
pub(crate) struct Resend {
    session: Session,
    channel: Sender<Message>,
    /// The request, without its `ret` (each send gets a new one) and its in-flight count
    /// (which stays with the first). `None` for a request with a byte stream, which a send
    /// uses up, and for one whose arguments are over [`MAX_COPIED`] bytes.
    copy: Option<Message>,
    had_ret: bool,
    /// When sends again stop.
    until: Instant,
    backoff: Duration,
    sent: u32,
}

/// What became of a request's latest send (see [`Resend::verdict`]).
pub(crate) enum Verdict {
    /// The node took it in, or the channel ended otherwise (its session, say): what its
    /// answers said stands.
    Stands,
    /// Refused unread and sent again; the new send's answers come on this, if it has `ret`.
    Resent(Option<Receiver<Message>>),
    /// Refused for good, with why.
    Refused(String),
    /// Refused unread, and sending it again failed, with why.
    Failed(String),
}

impl Resend {
    /// `request` is about to be sent on `channel`, over `session`, and must have its first
    /// answer by `deadline`. Sends again stop a quarter of the time before (at most a second),
    /// so the last refusal, not the timeout, is what the asker learns.
    pub(crate) fn new(
        session: Session,
        channel: Sender<Message>,
        request: &Message,
        deadline: Instant,
    ) -> Self {
        let small = request.args.iter().map(String::len).sum::<usize>() <= MAX_COPIED;
        let copy = (request.att.is_none() && small).then(|| plain(request));
        let had_ret = request.ret.is_some();
        let margin = (deadline.saturating_duration_since(Instant::now()) / 4).min(MARGIN);
        let until = deadline.checked_sub(margin).unwrap_or(deadline);
        Self { session, channel, copy, had_ret, until, backoff: MIN_BACKOFF, sent: 1 }
    }

    /// Waits for the node's verdict on the latest send, and sends again if it refused it
    /// unread and there is time.
    pub(crate) async fn verdict(&mut self) -> Verdict {
        let (code, message) = match self.channel.accepted().await {
            Ok(()) | Err(SendFailure::Closed) => return Verdict::Stands,
            Err(SendFailure::Refused { code, message }) => (code, message),
            Err(other) => return Verdict::Refused(format!("the node refused it: {other}")),
        };
        let unread = matches!(code, Code::AcceptQueueFull | Code::TooManyStreams);
        // Jittered (half to all of the backoff): a burst refused at once does not come back
        // at once.
        let half = self.backoff / 2;
        let wait = half + half.mul_f64((crate::random::random_u64() % 1024) as f64 / 1024.0);
        let again = match &self.copy {
            Some(copy) if unread && self.sent < MAX_SENDS && Instant::now() + wait < self.until => {
                plain(copy)
            }
            _ if self.sent > 1 => {
                let sent = self.sent;
                return Verdict::Refused(format!("the node refused it {sent} times: {message}"));
            }
            _ => return Verdict::Refused(format!("the node refused it: {message}")),
        };
        tokio::time::sleep(wait).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        match self.send(again).await {
            Ok(answers) => {
                crate::metrics::count_resend();
                tracing::debug!(%message, sent = self.sent, "refused unread: sent again");
                Verdict::Resent(answers)
            }
            Err(why) => Verdict::Failed(format!("cannot send it again: {why}")),
        }
    }

    /// Sends `again` on a new channel, with a new `ret` if the request had one.
    async fn send(&mut self, mut again: Message) -> Result<Option<Receiver<Message>>, String> {
        let answers = self.had_ret.then(|| {
            let (ret, answers) = libchan::pipe();
            again.ret = Some(ret);
            answers
        });
        let channel = self.session.open::<Message>().await.map_err(|e| e.to_string())?;
        channel.send(again).await.map_err(|e| e.reason().to_string())?;
        self.channel = channel;
        self.sent += 1;
        Ok(answers)
    }
}

/// `request`'s verb, arguments and id.
fn plain(request: &Message) -> Message {
    Message {
        args: request.args.clone(),
        id: request.id.clone(),
        ..Message::new(request.verb.clone())
    }
}

/// Backoff between sends of a request the node refused unread (see [`Resend`]); each wait is
/// between half and all of it.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// The most sends of one request: with the backoff, about 2 s of a full queue.
const MAX_SENDS: u32 = 10;
/// The most a resend stops before the request's deadline.
const MARGIN: Duration = Duration::from_secs(1);
/// Requests with more argument bytes are not kept to be sent again.
const MAX_COPIED: usize = 64 * 1024;
