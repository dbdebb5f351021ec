//! The message every service speaks: a verb, string arguments, a return channel, a byte stream.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use libchan::{ByteStream, Sender};
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio_util::task::task_tracker::TaskTrackerToken;

/// What a message asks for or answers with.
///
/// Verbs travel as their names (`"Ls"`, `"Spawn"`, ...), so an untyped relay can read them and a
/// peer that speaks a newer verb set still gets a decodable message: an unknown name becomes
/// [`Verb::Other`], which servers answer with `Error("not implemented: NAME")`.
#[derive(Clone, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
#[non_exhaustive]
pub enum Verb {
    /// Success; for `Spawn` and `Attach` its `ret` is the new or found object.
    Ack,
    /// Find an object by name (`args[0]`); answered by `Ack` with `ret` = the object.
    Attach,
    /// Ask for a connection; answered by `Connect` (or `Ack`) with `att` = the byte stream.
    Connect,
    /// Failure; `args[0]` is the text.
    Error,
    /// A file or stream, named by `args[0]`, in `att`.
    File,
    /// Read an object's state; answered by `Set(state)`.
    Get,
    /// A log line in `args[0]`; needs no answer.
    Log,
    /// List an object's children by name; answered by `Set(names...)`.
    Ls,
    /// A value or a list of names; also the answer to `Get` and `Ls`.
    Set,
    /// Create an object from `args`; answered by `Ack` with `ret` = the new object.
    Spawn,
    /// Start an object; answered by `Ack`.
    Start,
    /// Stop an object; answered by `Ack`.
    Stop,
    /// Follow an object's changes; answered by `Ack`, then one message per change.
    Watch,
    /// A verb this implementation does not know, kept by name.
    Other(String),
}

impl Verb {
    /// The thirteen verbs of the protocol, in alphabetical order.
    pub const ALL: [Verb; 13] = [
        Verb::Ack,
        Verb::Attach,
        Verb::Connect,
        Verb::Error,
        Verb::File,
        Verb::Get,
        Verb::Log,
        Verb::Ls,
        Verb::Set,
        Verb::Spawn,
        Verb::Start,
        Verb::Stop,
        Verb::Watch,
    ];

    /// The verb's name as it travels.
    pub fn as_str(&self) -> &str {
        match self {
            Verb::Ack => "Ack",
            Verb::Attach => "Attach",
            Verb::Connect => "Connect",
            Verb::Error => "Error",
            Verb::File => "File",
            Verb::Get => "Get",
            Verb::Log => "Log",
            Verb::Ls => "Ls",
            Verb::Set => "Set",
            Verb::Spawn => "Spawn",
            Verb::Start => "Start",
            Verb::Stop => "Stop",
            Verb::Watch => "Watch",
            Verb::Other(name) => name,
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verb {
    type Err = std::convert::Infallible;

    /// Never fails: a name that is none of the thirteen verbs gives [`Verb::Other`].
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(Verb::ALL
            .iter()
            .find(|verb| verb.as_str() == name)
            .cloned()
            .unwrap_or_else(|| Verb::Other(name.to_owned())))
    }
}

impl Serialize for Verb {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Verb {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(name.parse().unwrap_or_else(|never| match never {}))
    }
}

/// One libswarm message: `{verb, args, ret, att}`, and an optional request `id`.
///
/// `ret` is where answers go (a request without `ret` gets none); `att` is a byte stream that
/// goes with the message. Both are libchan handles, so a message crosses sessions unchanged.
/// `id` names a request across nodes: the network stages (`remote`, `listen`) give a request
/// that has none a fresh one, keep the one it has, and log it in the span of everything they
/// do for it, so one request can be followed through every node's log. A message without an
/// `id` encodes exactly as before (the key is left out), and decoders ignore keys they do not
/// know, so nodes with and without ids interoperate.
///
/// ```
/// use backends::service::{Message, Verb};
///
/// let (ret, _replies) = libchan::pipe();
/// let request = Message::new(Verb::Attach).with_args(["web-1"]).with_ret(ret);
/// assert_eq!(request.arg(0), Some("web-1"));
/// ```
#[derive(Deserialize, Serialize)]
pub struct Message {
    /// What is asked or answered.
    pub verb: Verb,
    /// String arguments; their meaning depends on the verb. A received message carries at
    /// most [`MAX_ARGS`].
    #[serde(default, deserialize_with = "bounded_args")]
    pub args: Vec<String>,
    /// Where answers go.
    #[serde(default)]
    pub ret: Option<Sender<Message>>,
    /// A byte stream that goes with the message.
    #[serde(default)]
    pub att: Option<ByteStream>,
    /// The request's id, carried across nodes (see above); at most [`MAX_ID_LEN`] bytes of
    /// `[A-Za-z0-9._:-]` are kept by the network stages, which replace other ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Keeps the request counted as in flight by the `listen` stage it came in by, until its
    /// first answer (see [`InFlight`]). Moves with the message between stages of one node;
    /// never sent.
    #[serde(skip)]
    pub(crate) in_flight: Option<InFlight>,
}

/// The longest request id the network stages keep.
pub const MAX_ID_LEN: usize = 64;

/// The most arguments a received message may carry; a message with more is refused: the
/// receiver's channel ends with CLOSE_ERR TOO_LARGE naming the bound, and the sender's next
/// send fails with it. Each decoded argument costs a 24-byte `String`
/// however short it was on the wire (an empty one is one CBOR byte), so a 16 MiB message of
/// empty strings would hold about 400 MB; at this bound the list holds at most 1.5 MiB
/// besides the text. `Set` answers to `Ls` carry one name per argument: 65 536 is far above
/// the objects any backend lists.
pub const MAX_ARGS: usize = 65_536;

impl Message {
    /// A message with this verb and nothing else.
    pub fn new(verb: Verb) -> Self {
        Self { verb, args: Vec::new(), ret: None, att: None, id: None, in_flight: None }
    }

    /// `Ack` with no arguments.
    pub fn ack() -> Self {
        Self::new(Verb::Ack)
    }

    /// `Error(text)`.
    pub fn error(text: impl Into<String>) -> Self {
        Self::new(Verb::Error).with_args([text.into()])
    }

    /// `Set(args...)`.
    pub fn set<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(Verb::Set).with_args(args)
    }

    /// `Log(text)`.
    pub fn log(text: impl Into<String>) -> Self {
        Self::new(Verb::Log).with_args([text.into()])
    }

    /// This message with these arguments.
    #[must_use]
    pub fn with_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// This message with a return channel.
    #[must_use]
    pub fn with_ret(mut self, ret: Sender<Message>) -> Self {
        self.ret = Some(ret);
        self
    }

    /// This message with a byte stream attached.
    #[must_use]
    pub fn with_att(mut self, att: ByteStream) -> Self {
        self.att = Some(att);
        self
    }

    /// This message with a request id.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The request id, if it is one the network stages keep: at most [`MAX_ID_LEN`] bytes of
    /// letters, digits and `._:-` (so it cannot forge log lines or bloat them).
    pub fn valid_id(&self) -> Option<&str> {
        self.id.as_deref().filter(|id| is_valid_id(id))
    }

    /// The request id, after giving the message a fresh one if it has none (or one that is not
    /// [valid](Self::valid_id)).
    pub fn ensure_id(&mut self) -> &str {
        if self.valid_id().is_none() {
            self.id = Some(format!("{:016x}", crate::random::random_u64()));
        }
        // Invariant: set just above when it was missing.
        self.id.as_deref().unwrap_or_default()
    }

    /// Argument `index`, if there is one.
    pub fn arg(&self, index: usize) -> Option<&str> {
        self.args.get(index).map(String::as_str)
    }

    /// The text of an `Error` (its first argument), or an empty string.
    pub fn error_text(&self) -> &str {
        self.arg(0).unwrap_or_default()
    }

    /// Sends `reply` on this message's `ret`.
    ///
    /// # Errors
    /// [`ReplyError::NoRet`] if the message has no `ret`; [`ReplyError::Gone`] if whoever asked
    /// no longer listens.
    pub async fn reply(&self, reply: Message) -> Result<(), ReplyError> {
        let ret = self.ret.as_ref().ok_or_else(|| ReplyError::NoRet { verb: self.verb.clone() })?;
        let sent = ret.send(reply).await.map_err(|_| ReplyError::Gone { verb: self.verb.clone() });
        if let Some(in_flight) = &self.in_flight {
            in_flight.release();
        }
        sent
    }
}

/// A request counted as in flight by a `listen` stage, so its shutdown can wait for the
/// request's first answer without relaying the answers itself.
///
/// The count ends at [`Message::reply`] (the first answer went out), when a `remote` stage
/// relayed the first answer from its node, or when the last clone is gone: the request was
/// dropped and the [`Server`](crate::service::Server) handler that had it returned (after its
/// error answer, if any, went out). Clones share the count.
#[derive(Clone)]
pub(crate) struct InFlight(Arc<Mutex<Option<TaskTrackerToken>>>);

impl InFlight {
    pub(crate) fn new(token: TaskTrackerToken) -> Self {
        Self(Arc::new(Mutex::new(Some(token))))
    }

    /// Ends the count (for every clone); later calls do nothing.
    pub(crate) fn release(&self) {
        // Invariant: plain data behind the lock; a poisoned lock still holds a valid Option.
        drop(self.0.lock().unwrap_or_else(PoisonError::into_inner).take());
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("verb", &self.verb)
            .field("args", &self.args)
            .field("ret", &self.ret.is_some())
            .field("att", &self.att.is_some())
            .field("id", &self.id)
            .finish()
    }
}

fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// An answer that could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The request carries no return channel.
    #[error("{verb} request has no return channel")]
    NoRet {
        /// The request's verb.
        verb: Verb,
    },
    /// The asker's return channel is closed.
    #[error("the sender of the {verb} request no longer listens")]
    Gone {
        /// The request's verb.
        verb: Verb,
    },
}

/// `args` as received, refused past [`MAX_ARGS`] before the list grows further.
fn bounded_args<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct Args;

    impl<'de> Visitor<'de> for Args {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {MAX_ARGS} strings")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            // The announced length is the peer's word: reserve no more than a little of it.
            let mut args = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(arg) = seq.next_element::<String>()? {
                if args.len() == MAX_ARGS {
                    // The channel ends and its sender learns why: dropping just this message
                    // would leave the sender waiting for an answer that never comes.
                    return Err(libchan::refuse(
                        libchan::proto::Code::TooLarge,
                        format!("message carries more than {MAX_ARGS} arguments"),
                    ));
                }
                args.push(arg);
            }
            Ok(args)
        }
    }

    deserializer.deserialize_seq(Args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_round_trip_by_name() {
        for verb in Verb::ALL {
            assert_eq!(verb.as_str().parse::<Verb>().unwrap(), verb);
        }
        assert_eq!("Frobnicate".parse::<Verb>().unwrap(), Verb::Other("Frobnicate".into()));
    }

    #[test]
    fn unknown_verbs_decode() {
        let message: Message = serde_json::from_str(r#"{"verb":"Frobnicate"}"#).unwrap();
        assert_eq!(message.verb, Verb::Other("Frobnicate".into()));
        assert!(message.args.is_empty() && message.ret.is_none() && message.att.is_none());
        assert!(message.id.is_none());
    }

    #[test]
    fn ids_are_kept_when_valid_and_replaced_otherwise() {
        let mut message = Message::new(Verb::Ls).with_id("docker-7f3a:ps");
        assert_eq!(message.ensure_id(), "docker-7f3a:ps");
        for bad in ["", "two words", "line\nbreak", &"x".repeat(MAX_ID_LEN + 1)] {
            let mut message = Message::new(Verb::Ls).with_id(bad);
            assert_eq!(message.valid_id(), None, "{bad:?}");
            let fresh = message.ensure_id().to_owned();
            assert_eq!(fresh.len(), 16, "{fresh}");
            assert_eq!(message.valid_id(), Some(fresh.as_str()));
        }
        let longest = "y".repeat(MAX_ID_LEN);
        assert_eq!(Message::new(Verb::Ls).with_id(longest.clone()).valid_id(), Some(&*longest));
        let mut unnamed = Message::new(Verb::Ls);
        let first = unnamed.ensure_id().to_owned();
        assert_ne!(Message::new(Verb::Ls).ensure_id(), first, "fresh ids differ");
    }

    #[test]
    fn a_message_without_id_encodes_as_before() {
        let mut bytes = Vec::new();
        ciborium::into_writer(&Message::new(Verb::Ls), &mut bytes).unwrap();
        let value: ciborium::Value = ciborium::from_reader(&bytes[..]).unwrap();
        let keys: Vec<_> =
            value.as_map().unwrap().iter().map(|(k, _)| k.as_text().unwrap()).collect();
        assert_eq!(keys, ["verb", "args", "ret", "att"]);
    }

    #[test]
    fn arguments_are_bounded_at_max_args() {
        for count in [MAX_ARGS - 1, MAX_ARGS, MAX_ARGS + 1] {
            let message = Message::new(Verb::Set).with_args(vec![String::new(); count]);
            let mut bytes = Vec::new();
            ciborium::into_writer(&message, &mut bytes).unwrap();
            let decoded = ciborium::from_reader::<Message, _>(&bytes[..]);
            if count <= MAX_ARGS {
                assert_eq!(decoded.unwrap().args.len(), count);
            } else {
                let error = decoded.err().unwrap().to_string();
                assert!(error.contains(&format!("more than {MAX_ARGS} arguments")), "{error}");
            }
        }
        // Absent arguments are none; a value that is not a list is an error, as before.
        let none: Message = serde_json::from_str(r#"{"verb":"Ls"}"#).unwrap();
        assert!(none.args.is_empty());
        assert!(serde_json::from_str::<Message>(r#"{"verb":"Ls","args":"x"}"#).is_err());
    }
}
