//! Client helpers: the request/response dance for each verb, with a bound on every wait.

use std::time::Duration;

use libchan::{ByteStream, Receiver, RecvError, Sender};

use crate::service::{Message, Verb};

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Runs `future` with `id` as the request id of every message a [`Client`] sends from it
/// without one of its own: one outside request that becomes several (a Docker API call that
/// lists, then inspects each container) is then followed by one id through every node.
pub async fn with_request_id<F: std::future::Future>(id: String, future: F) -> F::Output {
    REQUEST_ID.scope(id, future).await
}

/// A handle on a service that speaks the verbs: sends a request with a fresh `ret`, waits for
/// the answer (at most [`Client::with_timeout`]) and turns `Error` answers into
/// [`ClientError::Remote`].
///
/// A `ret` dropped without an answer is [`ClientError::NoReply`], never a hang. `Log`, `Error`
/// and `Set` are notifications: they carry no `ret` and get no answer.
///
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    target: Sender<Message>,
    name: String,
    timeout: Duration,
}

/// What [`Client::attach`] found.
#[derive(Debug)]
pub struct Attached {
    /// The object, to send further requests to.
    pub object: Client,
    /// The `Ack`'s arguments: the object's id, and what else the service sends with it (a
    /// Docker host sends the container's inspect document, `docs/docker.md`).
    pub args: Vec<String>,
    /// What the object sends after its `Ack`, if anything (a stream, for `Attach("")`).
    pub events: Receiver<Message>,
    /// The byte stream that came with the `Ack`, if any.
    pub att: Option<ByteStream>,
}

impl Client {
    /// A client of `target`, named "service" in errors, with the default timeout (30 s).
    pub fn new(target: Sender<Message>) -> Self {
        Self { target, name: "service".to_owned(), timeout: DEFAULT_TIMEOUT }
    }

    /// This client, named `name` in errors ("no reply from NAME").
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// This client, waiting at most `timeout` for each answer.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The service this client talks to.
    pub fn sender(&self) -> &Sender<Message> {
        &self.target
    }

    /// The client's name, as used in errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The wait bound of each answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `request` with a fresh `ret` (replacing any) and returns the channel the answers
    /// come on. Waits at most the timeout for the service to take the request.
    ///
    /// # Errors
    /// [`ClientError::Closed`] if the service is gone, [`ClientError::Timeout`].
    pub async fn request(&self, request: Message) -> Result<Receiver<Message>, ClientError> {
        let (ret, replies) = libchan::pipe();
        self.notify(request.with_ret(ret)).await?;
        Ok(replies)
    }

    /// Sends `request` without waiting for any answer (the notifications `Log`, `Error`, `Set`,
    /// or a request whose `ret` the caller set).
    ///
    /// # Errors
    /// [`ClientError::Closed`] if the service is gone, [`ClientError::Timeout`].
    pub async fn notify(&self, mut request: Message) -> Result<(), ClientError> {
        if request.id.is_none() {
            request.id = REQUEST_ID.try_with(Clone::clone).ok();
        }
        let verb = request.verb.clone();
        match tokio::time::timeout(self.timeout, self.target.send(request)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ClientError::Closed { verb, service: self.name.clone() }),
            Err(_) => Err(self.timed_out(verb)),
        }
    }

    /// Sends `verb(args)` and returns the first answer and the channel the rest come on.
    ///
    /// # Errors
    /// [`ClientError::Remote`] for an `Error` answer; `NoReply`, `Timeout`, `Closed`, `Recv`.
    pub async fn call<I, S>(
        &self,
        verb: Verb,
        args: I,
    ) -> Result<(Message, Receiver<Message>), ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut replies = self.request(Message::new(verb.clone()).with_args(args)).await?;
        let reply = self.first_reply(&verb, &mut replies).await?;
        Ok((reply, replies))
    }

    /// `Ls`: the names the service lists.
    ///
    /// # Errors
    /// As [`Client::call`], and [`ClientError::Unexpected`] unless the answer is `Set`.
    pub async fn ls(&self) -> Result<Vec<String>, ClientError> {
        let reply = self.expect(Verb::Ls, NO_ARGS, Verb::Set).await?;
        Ok(reply.args)
    }

    /// `Spawn(args)`: a client of the new object.
    ///
    /// # Errors
    /// As [`Client::call`], and [`ClientError::Unexpected`] unless the answer is `Ack` with
    /// a `ret`.
    pub async fn spawn<I, S>(&self, args: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let reply = self.expect(Verb::Spawn, args, Verb::Ack).await?;
        let object = self.object(Verb::Spawn, reply.ret, "spawned object")?;
        Ok(object)
    }

    /// `Attach(name)`: the named object (`""` for the service itself), what it streams after
    /// its `Ack`, and the byte stream that came with the `Ack`. An `Ack` without `ret` means
    /// the service itself (as `exec` answers `Attach("stdout")`): `object` is this client.
    ///
    /// # Errors
    /// As [`Client::spawn`].
    pub async fn attach(&self, name: &str) -> Result<Attached, ClientError> {
        let (reply, events) = self.call(Verb::Attach, [name]).await?;
        let reply = self.check(Verb::Attach, reply, Verb::Ack)?;
        let object = match reply.ret {
            Some(target) if !name.is_empty() => {
                Client { target, name: name.to_owned(), ..self.clone() }
            }
            Some(target) => Client { target, ..self.clone() },
            None => self.clone(),
        };
        Ok(Attached { object, events, args: reply.args, att: reply.att })
    }

    /// `Start`, answered by `Ack`.
    ///
    /// # Errors
    /// As [`Client::call`], and [`ClientError::Unexpected`] unless the answer is `Ack`.
    pub async fn start(&self) -> Result<(), ClientError> {
        self.expect(Verb::Start, NO_ARGS, Verb::Ack).await.map(drop)
    }

    /// `Stop`, answered by `Ack`.
    ///
    /// # Errors
    /// As [`Client::start`].
    pub async fn stop(&self) -> Result<(), ClientError> {
        self.expect(Verb::Stop, NO_ARGS, Verb::Ack).await.map(drop)
    }

    /// `Get`: the state, the single argument of the `Set` answer.
    ///
    /// # Errors
    /// As [`Client::call`]; [`ClientError::Unexpected`] unless the answer is `Set` with one
    /// argument.
    pub async fn get(&self) -> Result<String, ClientError> {
        let mut reply = self.expect(Verb::Get, NO_ARGS, Verb::Set).await?;
        match reply.args.len() {
            1 => Ok(reply.args.swap_remove(0)),
            n => Err(ClientError::Unexpected {
                verb: Verb::Get,
                got: format!("Set with {n} arguments"),
            }),
        }
    }

    /// `Set(args)`, a notification.
    ///
    /// # Errors
    /// As [`Client::notify`].
    pub async fn set<I, S>(&self, args: I) -> Result<(), ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.notify(Message::set(args)).await
    }

    /// `Log(text)`, a notification.
    ///
    /// # Errors
    /// As [`Client::notify`].
    pub async fn log(&self, text: impl Into<String>) -> Result<(), ClientError> {
        self.notify(Message::log(text)).await
    }

    /// `Error(text)`, a notification.
    ///
    /// # Errors
    /// As [`Client::notify`].
    pub async fn error(&self, text: impl Into<String>) -> Result<(), ClientError> {
        self.notify(Message::error(text)).await
    }

    /// `Watch`: after the `Ack`, the channel the changes come on (no timeout on those).
    ///
    /// # Errors
    /// As [`Client::call`], and [`ClientError::Unexpected`] unless the answer is `Ack`.
    pub async fn watch(&self) -> Result<Receiver<Message>, ClientError> {
        let (reply, events) = self.call(Verb::Watch, NO_ARGS).await?;
        self.check(Verb::Watch, reply, Verb::Ack)?;
        Ok(events)
    }

    /// `Connect(args)`: the byte stream of the `Connect` (or `Ack`) answer.
    ///
    /// # Errors
    /// As [`Client::call`], and [`ClientError::Unexpected`] unless the answer carries `att`.
    pub async fn connect<I, S>(&self, args: I) -> Result<ByteStream, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let (reply, _) = self.call(Verb::Connect, args).await?;
        match reply {
            Message { verb: Verb::Connect | Verb::Ack, att: Some(att), .. } => Ok(att),
            other => Err(ClientError::Unexpected {
                verb: Verb::Connect,
                got: format!("{} without a byte stream", other.verb),
            }),
        }
    }

    async fn expect<I, S>(&self, verb: Verb, args: I, answer: Verb) -> Result<Message, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let (reply, _) = self.call(verb.clone(), args).await?;
        self.check(verb, reply, answer)
    }

    fn check(&self, verb: Verb, reply: Message, answer: Verb) -> Result<Message, ClientError> {
        if reply.verb == answer {
            Ok(reply)
        } else {
            Err(ClientError::Unexpected { verb, got: reply.verb.to_string() })
        }
    }

    fn object(
        &self,
        verb: Verb,
        ret: Option<Sender<Message>>,
        name: &str,
    ) -> Result<Client, ClientError> {
        let target = ret.ok_or_else(|| ClientError::Unexpected {
            verb,
            got: "Ack without an object".to_owned(),
        })?;
        Ok(Client { target, name: name.to_owned(), timeout: self.timeout })
    }

    async fn first_reply(
        &self,
        verb: &Verb,
        replies: &mut Receiver<Message>,
    ) -> Result<Message, ClientError> {
        let reply = match tokio::time::timeout(self.timeout, replies.recv()).await {
            Err(_) => return Err(self.timed_out(verb.clone())),
            Ok(reply) => reply,
        };
        match reply {
            Ok(Some(reply)) if reply.verb == Verb::Error => Err(ClientError::Remote {
                verb: verb.clone(),
                message: reply.error_text().to_owned(),
            }),
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => {
                Err(ClientError::NoReply { verb: verb.clone(), service: self.name.clone() })
            }
            Err(source) => {
                Err(ClientError::Recv { verb: verb.clone(), service: self.name.clone(), source })
            }
        }
    }

    fn timed_out(&self, verb: Verb) -> ClientError {
        ClientError::Timeout { verb, service: self.name.clone(), timeout: self.timeout }
    }
}

/// A request that did not get the answer it expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The service answered `Error(message)`.
    #[error("{verb}: {message}")]
    Remote {
        /// The request's verb.
        verb: Verb,
        /// The service's text.
        message: String,
    },
    /// The service dropped the return channel without answering.
    #[error("{verb}: no reply from {service}")]
    NoReply {
        /// The request's verb.
        verb: Verb,
        /// The client's name for the service.
        service: String,
    },
    /// No answer within the client's timeout.
    #[error("{verb}: no reply from {service} within {timeout:?}")]
    Timeout {
        /// The request's verb.
        verb: Verb,
        /// The client's name for the service.
        service: String,
        /// The bound that passed.
        timeout: Duration,
    },
    /// The service is gone: the request could not be sent.
    #[error("{verb}: {service} is gone")]
    Closed {
        /// The request's verb.
        verb: Verb,
        /// The client's name for the service.
        service: String,
    },
    /// The return channel failed.
    #[error("{verb}: reply from {service} failed: {source}")]
    Recv {
        /// The request's verb.
        verb: Verb,
        /// The client's name for the service.
        service: String,
        /// What failed.
        source: RecvError,
    },
    /// The answer is not the one the verb calls for.
    #[error("{verb}: unexpected reply {got}")]
    Unexpected {
        /// The request's verb.
        verb: Verb,
        /// What came instead.
        got: String,
    },
}

impl ClientError {
    /// Whether the service answered with `Error` (rather than not answering).
    pub fn is_remote(&self) -> bool {
        matches!(self, Self::Remote { .. })
    }

    /// Whether the wait for the answer timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const NO_ARGS: [&str; 0] = [];
