//! Byte streams: raw bytes both ways, with no per-message framing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use ciborium::tag::Required;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::oneshot;

use crate::chan::{lock, slot_mut};
use crate::context;
use crate::framed::read_control;
use crate::proto::{Accept, Code, Direction, FrameType, Kind};
use crate::session::PendingStream;
use crate::transport::RawStream;
use crate::TAG_BYTE_STREAM;

/// A duplex byte stream (`AsyncRead + AsyncWrite`). Make a connected pair with
/// [`byte_pipe`]; put one end in a message and the peer gets a working stream. Shutting down
/// the write side is the end of stream for the reader on the other end.
pub struct ByteStream {
    /// Shared only while a message carrying this stream is being sent (two-phase send).
    slot: Arc<Mutex<Option<Inner>>>,
}

/// A connected pair of in-memory byte streams; each buffers up to 256 KiB.
pub fn byte_pipe() -> (ByteStream, ByteStream) {
    let (a, b) = tokio::io::duplex(PIPE_BUFFER);
    (ByteStream::with(Inner::Mem(a)), ByteStream::with(Inner::Mem(b)))
}

enum Inner {
    Mem(DuplexStream),
    Net(NetBytes),
}

struct NetBytes {
    state: NetState,
}

enum NetState {
    Waiting(oneshot::Receiver<Result<RawStream, String>>),
    Ready(RawStream),
    Failed(String),
}

impl ByteStream {
    fn with(inner: Inner) -> Self {
        Self { slot: Arc::new(Mutex::new(Some(inner))) }
    }

    pub(crate) fn from_pending(pending: PendingStream) -> Self {
        let net = match pending {
            PendingStream::Ready(stream) => NetState::Ready(stream),
            PendingStream::Waiting(rx) => NetState::Waiting(rx),
        };
        Self::with(Inner::Net(NetBytes::new(net)))
    }

    fn inner(&mut self) -> io::Result<&mut Inner> {
        slot_mut(&mut self.slot).ok_or_else(|| io::Error::other("byte stream was sent away"))
    }
}

impl NetBytes {
    fn new(state: NetState) -> Self {
        Self { state }
    }

    fn poll_stream(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut RawStream>> {
        if let NetState::Waiting(rx) = &mut self.state {
            self.state = match ready!(Pin::new(rx).poll(cx)) {
                Ok(Ok(stream)) => NetState::Ready(stream),
                Ok(Err(reason)) => NetState::Failed(reason),
                Err(_) => NetState::Failed("session closed".into()),
            };
        }
        match &mut self.state {
            NetState::Ready(stream) => Poll::Ready(Ok(stream)),
            NetState::Failed(reason) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, reason.clone())))
            }
            // Invariant: Waiting was replaced just above.
            NetState::Waiting(_) => unreachable!("byte stream still waiting after resolving"),
        }
    }
}

impl Drop for NetBytes {
    fn drop(&mut self) {
        // Close before drop: a yamux stream dropped open is reset and loses queued bytes.
        let NetState::Ready(mut stream) =
            std::mem::replace(&mut self.state, NetState::Failed(String::new()))
        else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = stream.write.shutdown().await;
            });
        }
    }
}

impl AsyncRead for ByteStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().inner()? {
            Inner::Mem(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Net(n) => Pin::new(&mut ready!(n.poll_stream(cx))?.read).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ByteStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().inner()? {
            Inner::Mem(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Net(n) => Pin::new(&mut ready!(n.poll_stream(cx))?.write).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner()? {
            Inner::Mem(s) => Pin::new(s).poll_flush(cx),
            Inner::Net(n) => Pin::new(&mut ready!(n.poll_stream(cx))?.write).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner()? {
            Inner::Mem(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Net(n) => Pin::new(&mut ready!(n.poll_stream(cx))?.write).poll_shutdown(cx),
        }
    }
}

impl std::fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ByteStream")
    }
}

impl Serialize for ByteStream {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let slot = self.slot.clone();
        let start: context::Start = Box::new(move |session, _ref_id, mut stream| {
            Box::pin(async move {
                let Some(inner) = lock(&slot).take() else { return };
                drop(slot);
                let mut local = ByteStream::with(inner);
                // The opener reads the acceptor's ACCEPT before the raw bytes that follow it.
                match read_control(&mut stream.read, session.limits.max_control_len).await {
                    Ok((FrameType::Accept, payload)) => match Accept::decode(&payload) {
                        Ok(accept) if accept.status == Code::Ok => {}
                        _ => return,
                    },
                    _ => return,
                }
                drop(session);
                let mut remote =
                    ByteStream::with(Inner::Net(NetBytes::new(NetState::Ready(stream))));
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut local,
                    &mut remote,
                    RELAY_BUFFER,
                    RELAY_BUFFER,
                )
                .await;
            })
        });
        let id = context::export(Kind::ByteStream, Direction::OpenerSends, start)
            .map_err(S::Error::custom)?;
        Required::<u64, TAG_BYTE_STREAM>(id).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ByteStream {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Required(id) = Required::<u64, TAG_BYTE_STREAM>::deserialize(deserializer)?;
        let (_session, pending) = context::import(id, Kind::ByteStream, Direction::OpenerSends)
            .map_err(D::Error::custom)?;
        Ok(Self::from_pending(pending))
    }
}

const PIPE_BUFFER: usize = 256 * 1024;
const RELAY_BUFFER: usize = 256 * 1024;
