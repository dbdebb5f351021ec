//! Errors of the public API.

use std::fmt;

use crate::proto::{Code, FrameError};

/// A send that failed; the value comes back untouched and nothing was opened for it.
pub struct SendError<T> {
    value: T,
    reason: SendFailure,
}

/// Why a send failed.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SendFailure {
    /// The receiver is gone, the channel was closed or its session ended.
    #[error("channel closed")]
    Closed,
    /// The encoded message is over the session's limit.
    #[error("message of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The message carries more channels and byte streams than the limit.
    #[error("message carries {count} channels or streams, over the limit of {limit}")]
    TooManyRefs {
        /// Handles in the message.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// This side already has its share of the session's streams open.
    #[error("session stream limit reached ({limit} streams per side)")]
    TooManyStreams {
        /// Streams this side may have open.
        limit: usize,
    },
    /// The encoded message nests arrays, maps and tags deeper than the session's limit.
    #[error("message nested deeper than the limit of {limit}")]
    TooDeep {
        /// The limit (`Limits::max_depth`).
        limit: usize,
    },
    /// The receiver ended the channel with a code: it refused the channel (ACCEPT), or it
    /// refused a message (CLOSE_ERR), such as one over its size limit.
    #[error("channel closed by the receiver with {code}: {message}")]
    Refused {
        /// The receiver's code.
        code: Code,
        /// The receiver's text.
        message: String,
    },
    /// The value cannot be encoded as CBOR.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

impl<T> SendError<T> {
    pub(crate) fn new(value: T, reason: SendFailure) -> Self {
        Self { value, reason }
    }

    /// The value that was not sent.
    pub fn into_inner(self) -> T {
        self.value
    }

    /// Why the send failed.
    pub fn reason(&self) -> &SendFailure {
        &self.reason
    }

    /// Whether the channel is closed for good (retrying on it is pointless).
    pub fn is_closed(&self) -> bool {
        matches!(self.reason, SendFailure::Closed | SendFailure::Refused { .. })
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError").field("reason", &self.reason).finish_non_exhaustive()
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "send failed: {}", self.reason)
    }
}

impl<T> std::error::Error for SendError<T> {}

/// A receive that failed. The end of a channel is not an error: `recv` returns `Ok(None)`.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The sender ended the channel with an error.
    #[error("channel closed by peer with {code}: {message}")]
    Remote {
        /// The peer's code.
        code: Code,
        /// The peer's text.
        message: String,
    },
    /// One message did not decode as the receiver's type; the channel goes on.
    #[error("cannot decode message: {0}")]
    Decode(String),
    /// The peer broke the protocol on this channel; the channel is closed.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The stream or its session failed.
    #[error("connection lost: {0}")]
    Connection(String),
}

impl RecvError {
    /// Whether further receives on this channel can succeed.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::Decode(_))
    }
}

impl From<FrameError> for RecvError {
    fn from(e: FrameError) -> Self {
        Self::Protocol(e.to_string())
    }
}

/// Opening a channel on a session failed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// This side already has its share of the session's streams open.
    #[error("session stream limit reached ({limit} streams per side)")]
    TooManyStreams {
        /// Streams this side may have open.
        limit: usize,
    },
    /// The session is closed.
    #[error("session closed: {0}")]
    SessionClosed(String),
}

/// Connecting or accepting a session failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not one libchan can use.
    #[error("invalid url {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The handshake did not finish in time.
    #[error("handshake with {peer} timed out after {seconds:.1} s")]
    HandshakeTimeout {
        /// Who we talked to.
        peer: String,
        /// The timeout.
        seconds: f64,
    },
    /// The peer does not speak this protocol.
    #[error("peer {peer} does not speak libchan/1: {reason}")]
    NotLibchan {
        /// Who we talked to.
        peer: String,
        /// What it sent instead.
        reason: String,
    },
    /// The TLS or QUIC handshake failed: a certificate that does not verify, a wrong server
    /// name, a peer without a certificate, or one that does not speak TLS.
    #[error("secure handshake with {peer} failed: {reason}")]
    Handshake {
        /// Who we talked to.
        peer: String,
        /// Why, as rustls or quinn put it (`invalid peer certificate: UnknownIssuer`).
        reason: String,
    },
    /// A bad configuration value.
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    /// A socket error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What failed (`connect to 127.0.0.1:7300`).
        context: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl ConnectError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}
