//! Stream multiplexers under a session, behind one small trait, and URL dialing/listening.
//!
//! A session needs only two things from its transport: open an outbound stream, and hand over
//! inbound ones. yamux over any byte stream (TCP, unix sockets, TLS) implements it in
//! [`yamux`](self::yamux); QUIC with native streams plugs in the same way.

pub(crate) mod url;
pub(crate) mod yamux;

use std::io;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;

pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// One multiplexed stream, split into halves, with its share of the session's stream limit.
pub(crate) struct RawStream {
    pub read: BoxRead,
    pub write: BoxWrite,
    /// Released when the stream is dropped.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// What a session needs from a multiplexer. Inbound streams arrive on the channel the
/// transport hands to `Session::start`.
pub(crate) trait Mux: Send + Sync + 'static {
    /// Opens an outbound stream. The peer sees it once its first bytes arrive.
    fn open(&self) -> BoxFuture<'static, io::Result<RawStream>>;
    /// Starts closing the connection; streams fail afterwards.
    fn close(&self);
}
