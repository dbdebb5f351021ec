//! The message every service speaks: a verb, string arguments, a return channel, a byte stream.

use std::fmt;
use std::str::FromStr;

use libchan::{ByteStream, Sender};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

/// One libswarm message: `{verb, args, ret, att}`.
///
/// `ret` is where answers go (a request without `ret` gets none); `att` is a byte stream that
/// goes with the message. Both are libchan handles, so a message crosses sessions unchanged.
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
    /// String arguments; their meaning depends on the verb.
    #[serde(default)]
    pub args: Vec<String>,
    /// Where answers go.
    #[serde(default)]
    pub ret: Option<Sender<Message>>,
    /// A byte stream that goes with the message.
    #[serde(default)]
    pub att: Option<ByteStream>,
}

impl Message {
    /// A message with this verb and nothing else.
    pub fn new(verb: Verb) -> Self {
        Self { verb, args: Vec::new(), ret: None, att: None }
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
        ret.send(reply).await.map_err(|_| ReplyError::Gone { verb: self.verb.clone() })
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("verb", &self.verb)
            .field("args", &self.args)
            .field("ret", &self.ret.is_some())
            .field("att", &self.att.is_some())
            .finish()
    }
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
    }
}
