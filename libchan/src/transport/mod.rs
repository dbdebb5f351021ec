//! Stream multiplexers under a session, behind one small trait, and URL dialing/listening.
//!
//! A session needs only two things from its transport: open an outbound stream, and hand over
//! inbound ones. yamux over any byte stream (TCP, unix sockets, TLS) implements it in
//! [`yamux`](self::yamux); QUIC with native streams plugs in the same way in
//! [`quic`](self::quic).

pub(crate) mod batch;
pub(crate) mod quic;
pub(crate) mod tls;
pub(crate) mod traffic;
pub(crate) mod url;
pub(crate) mod yamux;

use std::io;
use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

/// The read half of a multiplexed stream.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a multiplexed stream.
pub type BoxWrite = Box<dyn StreamWrite>;

/// The sending direction of a multiplexed stream.
pub trait StreamWrite: AsyncWrite + Send + Unpin {
    /// Abandons the stream: the peer's reads fail instead of ending cleanly (RST on yamux,
    /// RESET_STREAM on QUIC), and data not yet delivered may be lost. On yamux the reset
    /// leaves when the read half is dropped too. Writers without resets just drop.
    fn reset(self: Box<Self>) {}

    /// Resolves once the peer holds everything written before the shutdown, so that closing
    /// the connection then loses none of it. At once on transports whose peer keeps reading
    /// what it received after the connection has gone (yamux over a byte stream).
    fn delivered(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

impl StreamWrite for tokio::io::Sink {}

/// One multiplexed stream, split into halves, with its share of the session's stream limit.
pub(crate) struct RawStream {
    pub read: BoxRead,
    pub write: BoxWrite,
    /// Released when the stream is dropped.
    pub permit: Option<OwnedSemaphorePermit>,
    /// The ACCEPT this side still owes the peer on a stream the peer opened, to lead the
    /// first frame written on it (PROTOCOL.md §5.2); the permit bounds how many a session
    /// owes at once.
    pub owed: Option<OwnedSemaphorePermit>,
}

/// Where a transport hands over the streams its peer opens. Once the session set its router,
/// a stream is taken in at once, from the transport's own task (the yamux driver, the QUIC
/// accept loop), when its first frame is already here: the common case, since the opener
/// writes OPEN as the stream's first bytes. So a nested stream is paired before the message
/// naming it is decoded, with no task switch on the way. What the router could not finish at
/// once goes to the session's inbound task, as do streams that came before the router.
pub(crate) struct Inbound {
    tx: mpsc::Sender<Arrival>,
    router: Arc<OnceLock<Router>>,
}

/// The session's side of [`Inbound`].
pub(crate) struct InboundRx {
    pub rx: mpsc::Receiver<Arrival>,
    router: Arc<OnceLock<Router>>,
}

/// A stream for the session's inbound task: still to be taken in, or half way.
pub(crate) enum Arrival {
    Stream(RawStream),
    /// The rest of taking a stream in, which had to wait (for its first frame, or to write).
    Rest(BoxFuture<'static, ()>),
}

/// Takes a stream in as far as it can without waiting; returns the rest, if any.
pub(crate) type Router = Box<dyn Fn(RawStream) -> Option<BoxFuture<'static, ()>> + Send + Sync>;

/// An inbound stream channel holding up to `capacity` streams.
pub(crate) fn inbound(capacity: usize) -> (Inbound, InboundRx) {
    let (tx, rx) = mpsc::channel(capacity);
    let router = Arc::new(OnceLock::new());
    (Inbound { tx, router: router.clone() }, InboundRx { rx, router })
}

impl Inbound {
    /// Hands over a stream the peer opened. The channel holds as many streams as the
    /// transport admits, so it is never full; if it were, dropping the stream resets it.
    pub(crate) fn deliver(&self, stream: RawStream) {
        let arrival = match self.router.get() {
            Some(router) => match router(stream) {
                Some(rest) => Arrival::Rest(rest),
                None => return,
            },
            None => Arrival::Stream(stream),
        };
        let _ = self.tx.try_send(arrival);
    }

    /// Resolves once the session no longer takes streams.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }
}

impl InboundRx {
    /// Routes streams delivered from now on through `router` first.
    pub(crate) fn set_router(&self, router: Router) {
        let _ = self.router.set(router);
    }
}

/// What a session needs from a multiplexer. Inbound streams arrive through the [`Inbound`]
/// the transport hands to `Session::start`.
pub(crate) trait Mux: Send + Sync + 'static {
    /// Opens an outbound stream. The peer sees it once its first bytes arrive.
    fn open(&self) -> BoxFuture<'static, io::Result<RawStream>>;
    /// Opens an outbound stream if that needs no waiting; `None` otherwise.
    fn try_open(&self) -> Option<io::Result<RawStream>> {
        None
    }
    /// Keeps the connection from sending until the returned guard is dropped, so that what is
    /// written meanwhile on several streams leaves together. Only for a short section that
    /// does not wait; `None` where the transport has no such control.
    fn hold(&self) -> Option<Hold> {
        None
    }
    /// Starts closing the connection; streams fail afterwards. Transports that can carry a
    /// close code and reason themselves (QUIC) send them.
    fn close(&self, code: crate::proto::Code, reason: &str);
    /// The bytes the connection carried so far.
    fn traffic(&self) -> traffic::Traffic;
}

/// See [`Mux::hold`]: sending resumes when this is dropped.
pub(crate) struct Hold {
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl Hold {
    pub(crate) fn new(release: impl FnOnce() + Send + 'static) -> Self {
        Self { release: Some(Box::new(release)) }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// Raw yamux streams on the same driver the sessions use, without libchan's framing: the
/// baseline the benchmarks compare against. Not a stable API.
#[doc(hidden)]
pub mod raw {
    use super::*;
    pub use super::{BoxRead, BoxWrite};

    /// A yamux connection's raw streams.
    pub struct RawYamux {
        mux: super::yamux::YamuxMux,
        /// Streams the peer opened.
        pub inbound: tokio::sync::mpsc::Receiver<(BoxRead, BoxWrite)>,
    }

    impl RawYamux {
        /// Starts yamux on `io`, a plain socket; `dialer` on exactly one side.
        pub fn start<S>(io: S, dialer: bool) -> Self
        where
            S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        {
            Self::start_on(io, dialer, true)
        }

        /// [`start`](Self::start) on any stream; `read_ahead` as sessions do it on a plain
        /// socket, not on TLS.
        pub fn start_on<S>(io: S, dialer: bool, read_ahead: bool) -> Self
        where
            S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        {
            let limits = crate::Limits::default();
            let (mux, mut inbound, _done) = super::yamux::start(io, dialer, &limits, read_ahead);
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            tokio::spawn(async move {
                // With no router set, every stream arrives as it is.
                while let Some(arrival) = inbound.rx.recv().await {
                    if let Arrival::Stream(stream) = arrival {
                        let _ = tx.send((stream.read, stream.write)).await;
                    }
                }
            });
            Self { mux, inbound: rx }
        }

        /// Opens a stream.
        ///
        /// # Errors
        /// The connection is gone.
        pub async fn open(&self) -> io::Result<(BoxRead, BoxWrite)> {
            let stream = self.mux.open().await?;
            Ok((stream.read, stream.write))
        }
    }
}
