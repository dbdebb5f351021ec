//! Byte streams: raw bytes both ways, with no per-message framing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use ciborium::tag::Required;
use futures::future::BoxFuture;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::oneshot;

use crate::chan::{lock, slot_mut};
use crate::context;
use crate::framed::read_control;
use crate::proto::{Accept, Code, Direction, FrameType, Kind};
use crate::session::{InFlight, PendingStream, SessionInner};
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
    let splice = Arc::new(Splice::default());
    (
        ByteStream::with(Inner::Mem(a, Some(splice.clone()))),
        ByteStream::with(Inner::Mem(b, Some(splice))),
    )
}

enum Inner {
    /// One end of a `byte_pipe`, with what it shares with the other end.
    Mem(DuplexStream, Option<Arc<Splice>>),
    Net(NetBytes),
    /// A pipe end whose other end went to a peer: it now uses that network stream itself,
    /// after reading what the other end had written to it before it left.
    Spliced(Option<DuplexStream>, NetBytes),
    /// Only while switching variants.
    Failed,
}

/// How one end of a `byte_pipe` takes over the network stream when the other end is sent to
/// a peer, so bytes go straight between the stream and the kept end, with no relay task.
///
/// The exporting side moves what the kept end had written into the pipe to the network
/// first; meanwhile the kept end's writes wait. Then it hands the stream over and closes its
/// pipe end, which wakes the kept end.
#[derive(Default)]
struct Splice {
    state: Mutex<SpliceState>,
    /// One end was reset: the other end's reads fail once the pipe is empty.
    reset: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct SpliceState {
    /// One end was sent and hands its stream over; the other end, if sent too, relays.
    claimed: bool,
    moving: bool,
    waiting: Vec<std::task::Waker>,
    handover: Option<(RawStream, Option<InFlight>)>,
}

struct NetBytes {
    state: NetState,
    /// Held until this side's writing direction has ended: a clean close of the session
    /// waits for it (PROTOCOL.md §6.1), so bytes written before the close are not cut off.
    in_flight: Option<InFlight>,
}

enum NetState {
    /// The stream is promised; the wakers are every task that polled meanwhile (a `oneshot`
    /// keeps only the last one, and the halves of a split stream poll from two tasks).
    Waiting(oneshot::Receiver<Result<RawStream, String>>, Vec<std::task::Waker>),
    Ready(RawStream),
    Failed(String),
}

impl ByteStream {
    fn with(inner: Inner) -> Self {
        Self { slot: Arc::new(Mutex::new(Some(inner))) }
    }

    /// Ends the stream abruptly, both ways: the peer's reads fail (on the network a stream
    /// reset) instead of ending as after a shutdown. Use it when what the stream carried is
    /// incomplete, for instance when its source failed. Dropping a stream, or shutting it
    /// down, ends it cleanly.
    pub fn reset(self) {
        match lock(&self.slot).take() {
            Some(Inner::Net(net) | Inner::Spliced(_, net)) => net.reset(),
            Some(Inner::Mem(_, Some(splice))) => {
                // A network stream handed over to this end and not yet taken is reset too.
                if let Some((stream, _in_flight)) = lock(&splice.state).handover.take() {
                    reset_raw(stream);
                }
                splice.reset.store(true, std::sync::atomic::Ordering::Release);
            }
            _ => {}
        }
    }

    /// The importing side of a byte stream of `session`.
    pub(crate) fn from_pending(session: &Arc<SessionInner>, pending: PendingStream) -> Self {
        let net = match pending {
            PendingStream::Ready(stream) => NetState::Ready(stream),
            PendingStream::Waiting(rx) => NetState::Waiting(rx, Vec::new()),
        };
        Self::with(Inner::Net(NetBytes::new(net, Some(session.in_flight()))))
    }

    fn inner(&mut self) -> io::Result<&mut Inner> {
        let inner = slot_mut(&mut self.slot)
            .ok_or_else(|| io::Error::other("byte stream was sent away"))?;
        let handover = match inner {
            Inner::Mem(_, Some(splice)) => lock(&splice.state).handover.take(),
            _ => None,
        };
        if let Some((stream, in_flight)) = handover {
            if let Inner::Mem(pipe, _) = std::mem::replace(inner, Inner::Failed) {
                let net = NetBytes::new(NetState::Ready(stream), in_flight);
                *inner = Inner::Spliced(Some(pipe), net);
            }
        }
        Ok(inner)
    }
}

/// Polls a write-side operation of a pipe end: waits while its other end moves bytes to the
/// network, and runs under the splice lock so that move sees every byte written before it.
fn poll_pipe_write<R>(
    pipe: &mut DuplexStream,
    splice: Option<&Arc<Splice>>,
    cx: &mut Context<'_>,
    op: impl FnOnce(Pin<&mut DuplexStream>, &mut Context<'_>) -> Poll<io::Result<R>>,
) -> Poll<io::Result<R>> {
    let Some(splice) = splice else { return op(Pin::new(pipe), cx) };
    let mut state = lock(&splice.state);
    if state.handover.is_some() {
        // Handed over since `inner` looked: poll again, and `inner` switches to the stream.
        cx.waker().wake_by_ref();
        return Poll::Pending;
    }
    if state.moving {
        // The handover wakes us.
        state.waiting.push(cx.waker().clone());
        return Poll::Pending;
    }
    op(Pin::new(pipe), cx)
}

impl NetBytes {
    fn new(state: NetState, in_flight: Option<InFlight>) -> Self {
        Self { state, in_flight }
    }

    /// Keeps a clean close waiting until `delivered`: the peer holds what was written.
    fn until(&self, delivered: BoxFuture<'static, ()>, in_flight: InFlight) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                delivered.await;
                drop(in_flight);
            });
        }
    }

    fn poll_stream(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut RawStream>> {
        if let NetState::Waiting(rx, waiters) = &mut self.state {
            let resolved = match Pin::new(rx).poll(cx) {
                Poll::Ready(resolved) => resolved,
                Poll::Pending => {
                    if !waiters.iter().any(|waker| waker.will_wake(cx.waker())) {
                        waiters.push(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            };
            for waker in waiters.drain(..) {
                waker.wake();
            }
            self.state = match resolved {
                Ok(Ok(stream)) => NetState::Ready(stream),
                Ok(Err(reason)) => NetState::Failed(reason),
                Err(_) => NetState::Failed("session closed before the byte stream arrived".into()),
            };
        }
        match &mut self.state {
            NetState::Ready(stream) => Poll::Ready(Ok(stream)),
            NetState::Failed(reason) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, reason.clone())))
            }
            // Invariant: Waiting was replaced just above.
            NetState::Waiting(..) => unreachable!("byte stream still waiting after resolving"),
        }
    }

    /// Resets the network stream instead of closing it (see [`ByteStream::reset`]); one that
    /// has not arrived yet is reset when it does (or when the session gives up on it).
    fn reset(mut self) {
        match self.take_state() {
            NetState::Ready(stream) => reset_raw(stream),
            NetState::Waiting(rx, _) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        if let Ok(Ok(stream)) = rx.await {
                            reset_raw(stream);
                        }
                    });
                }
            }
            NetState::Failed(_) => {}
        }
    }

    fn take_state(&mut self) -> NetState {
        std::mem::replace(&mut self.state, NetState::Failed(String::new()))
    }

    /// The stream, now or once it arrives; `None` if it failed. Takes it out of `self`.
    fn arrival(&mut self) -> Option<BoxFuture<'static, Option<RawStream>>> {
        match self.take_state() {
            NetState::Ready(stream) => Some(Box::pin(std::future::ready(Some(stream)))),
            NetState::Waiting(rx, _) => Some(Box::pin(async move { rx.await.ok()?.ok() })),
            NetState::Failed(_) => None,
        }
    }
}

/// Shuts a dropped stream's writing direction down; returns once the peer holds it all.
async fn finish(mut stream: RawStream) {
    if stream.write.shutdown().await.is_ok() {
        stream.write.delivered().await;
    }
}

fn reset_raw(stream: RawStream) {
    let RawStream { read, write, permit, owed } = stream;
    write.reset();
    drop((read, permit, owed));
}

impl Drop for NetBytes {
    fn drop(&mut self) {
        // Close before drop: a yamux stream dropped open is reset and loses queued bytes. A
        // stream that has not arrived yet is closed when it does.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let in_flight = self.in_flight.take();
        let Some(arrival) = self.arrival() else { return };
        runtime.spawn(async move {
            if let Some(stream) = arrival.await {
                finish(stream).await;
            }
            drop(in_flight);
        });
    }
}

impl AsyncRead for ByteStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().inner()? {
            Inner::Mem(s, splice) => {
                let before = buf.filled().len();
                ready!(Pin::new(s).poll_read(cx, buf))?;
                let reset = splice
                    .as_ref()
                    .is_some_and(|s| s.reset.load(std::sync::atomic::Ordering::Acquire));
                if buf.filled().len() == before && buf.remaining() > 0 && reset {
                    return Poll::Ready(Err(reset_error()));
                }
                Poll::Ready(Ok(()))
            }
            Inner::Net(n) => Pin::new(&mut ready!(n.poll_stream(cx))?.read).poll_read(cx, buf),
            Inner::Spliced(leftover, n) => {
                if let Some(pipe) = leftover {
                    // The other end is closed: this ends, after its bytes, without waiting.
                    let before = buf.filled().len();
                    ready!(Pin::new(pipe).poll_read(cx, buf))?;
                    if buf.filled().len() > before {
                        return Poll::Ready(Ok(()));
                    }
                    *leftover = None;
                }
                Pin::new(&mut ready!(n.poll_stream(cx))?.read).poll_read(cx, buf)
            }
            Inner::Failed => Poll::Ready(Err(io::Error::other("byte stream failed"))),
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
            Inner::Mem(s, splice) => {
                poll_pipe_write(s, splice.as_ref(), cx, |s, cx| s.poll_write(cx, buf))
            }
            Inner::Net(n) | Inner::Spliced(_, n) => {
                let written = match n.poll_stream(cx) {
                    Poll::Ready(Ok(stream)) => {
                        ready!(Pin::new(&mut stream.write).poll_write(cx, buf))
                    }
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => return Poll::Pending,
                };
                if written.is_err() {
                    // Nothing more will be written: a clean close need not wait.
                    n.in_flight = None;
                }
                Poll::Ready(written)
            }
            Inner::Failed => Poll::Ready(Err(io::Error::other("byte stream failed"))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner()? {
            Inner::Mem(s, splice) => {
                poll_pipe_write(s, splice.as_ref(), cx, |s, cx| s.poll_flush(cx))
            }
            Inner::Net(n) | Inner::Spliced(_, n) => {
                Pin::new(&mut ready!(n.poll_stream(cx))?.write).poll_flush(cx)
            }
            Inner::Failed => Poll::Ready(Err(io::Error::other("byte stream failed"))),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner()? {
            Inner::Mem(s, splice) => {
                poll_pipe_write(s, splice.as_ref(), cx, |s, cx| s.poll_shutdown(cx))
            }
            Inner::Net(n) | Inner::Spliced(_, n) => {
                let (shut, delivered) = match n.poll_stream(cx) {
                    Poll::Ready(Ok(stream)) => {
                        let shut = ready!(Pin::new(&mut stream.write).poll_shutdown(cx));
                        (shut, Some(stream.write.delivered()))
                    }
                    Poll::Ready(Err(e)) => (Err(e), None),
                    Poll::Pending => return Poll::Pending,
                };
                match (n.in_flight.take(), delivered) {
                    (Some(in_flight), Some(delivered)) if shut.is_ok() => {
                        n.until(delivered, in_flight)
                    }
                    _ => {}
                }
                Poll::Ready(shut)
            }
            Inner::Failed => Poll::Ready(Err(io::Error::other("byte stream failed"))),
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
                let in_flight = session.in_flight();
                // The opener reads the acceptor's ACCEPT before the raw bytes that follow it.
                let accepted = match read_control(&mut stream.read, session.limits.max_control_len)
                    .await
                {
                    Ok((FrameType::Accept, payload)) => {
                        matches!(Accept::decode(&payload), Ok(accept) if accept.status == Code::Ok)
                    }
                    _ => false,
                };
                if !accepted {
                    // Refused, or reset before its ACCEPT: the kept end must not see a clean end.
                    ByteStream::with(inner).reset();
                    reset_raw(stream);
                    return;
                }
                drop(session);
                let (inner, stream, in_flight) = match inner {
                    Inner::Mem(pipe, Some(splice)) => {
                        match hand_over(pipe, splice, stream, in_flight).await {
                            // The kept end is gone or was sent too: relay. In the second case the
                            // relay's pipe end takes over the other stream when it is handed over.
                            Some((pipe, splice, stream, in_flight)) => {
                                (Inner::Mem(pipe, Some(splice)), stream, in_flight)
                            }
                            None => return,
                        }
                    }
                    inner => (inner, stream, in_flight),
                };
                let local = ByteStream::with(inner);
                let remote = NetBytes::new(NetState::Ready(stream), Some(in_flight));
                let remote = ByteStream::with(Inner::Net(remote));
                relay(local, remote).await;
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
        let (session, pending) = context::import(id, Kind::ByteStream, Direction::OpenerSends)
            .map_err(D::Error::custom)?;
        Ok(Self::from_pending(&session, pending))
    }
}

/// Gives `stream` to the kept end of the pipe whose other end, `pipe`, was sent: first moves
/// the bytes the kept end wrote into the pipe (and its end of stream, if it shut down) to the
/// network. Returns everything back when there is no kept end to hand over to: it is gone, or
/// it was sent to a peer as well and the other end's stream was handed to it.
async fn hand_over(
    mut pipe: DuplexStream,
    splice: Arc<Splice>,
    mut stream: RawStream,
    in_flight: InFlight,
) -> Option<(DuplexStream, Arc<Splice>, RawStream, InFlight)> {
    let mut moved = Vec::new();
    let mut ended = false;
    {
        let mut state = lock(&splice.state);
        if state.claimed || Arc::strong_count(&splice) == 1 {
            return Some((pipe, splice.clone(), stream, in_flight));
        }
        state.claimed = true;
        state.moving = true;
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut pipe).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    ended = true;
                    break;
                }
                Poll::Ready(Ok(())) => moved.extend_from_slice(buf.filled()),
                Poll::Ready(Err(_)) | Poll::Pending => break,
            }
        }
    }
    let mut failed = stream.write.write_all(&moved).await.is_err();
    if ended && !failed {
        failed = stream.write.shutdown().await.is_err();
    }
    let mut state = lock(&splice.state);
    state.moving = false;
    if !failed {
        // The kept end writes on from here: the session's drain waits for it.
        state.handover = Some((stream, (!ended).then_some(in_flight)));
    }
    for waker in state.waiting.drain(..) {
        waker.wake();
    }
    drop(state);
    // Closing our end lets the kept end read what was written to us before, then switch.
    drop(pipe);
    None
}

/// Copies bytes both ways between `a` and `b` until both directions have ended. The clean
/// end of one direction is passed on as a clean end (shutdown); an error in either direction,
/// reading or writing, resets both streams, so that neither peer takes a cut stream for a
/// finished one.
async fn relay(a: ByteStream, b: ByteStream) {
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let copied = tokio::try_join!(pump(&mut a_read, &mut b_write), pump(&mut b_read, &mut a_write));
    if let Err(error) = copied {
        tracing::debug!(%error, "byte stream relay failed: resetting both sides");
        a_read.unsplit(a_write).reset();
        b_read.unsplit(b_write).reset();
    }
}

/// Copies `from` into `to` until `from` ends, then shuts `to` down.
async fn pump(
    from: &mut tokio::io::ReadHalf<ByteStream>,
    to: &mut tokio::io::WriteHalf<ByteStream>,
) -> io::Result<()> {
    let mut from = tokio::io::BufReader::with_capacity(RELAY_BUFFER, from);
    tokio::io::copy_buf(&mut from, to).await?;
    to.shutdown().await
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "byte stream reset by its other end")
}

const PIPE_BUFFER: usize = 256 * 1024;
const RELAY_BUFFER: usize = 256 * 1024;
