//! yamux over any `AsyncRead + AsyncWrite`: a driver task keeps the connection polled.
//!
//! rust-yamux drives all I/O from `poll_next_inbound`, so the driver polls it continuously and
//! serves open requests from the session in the same task (DESIGN: one driver owns the
//! connection; it still does, and it alone hands inbound streams to the session and closes the
//! connection). The connection sits behind a lock, and a bulk stream's writer or reader that
//! finds it free polls it from its own task instead of waking the driver (`OpenNow::through`):
//! over TLS that keeps encryption and decryption in the tasks that write and read, as on a raw
//! stream. Streams cross into tokio's I/O traits through [`YamuxIo`], [`YamuxRead`] and
//! [`YamuxWrite`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::TokioAsyncReadCompatExt;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::batch::Batched;
use super::traffic::{Counted, Counters, Traffic};
use super::{Hold, Inbound, InboundRx, Mux, RawStream};
use crate::Limits;

type OpenReply = oneshot::Sender<io::Result<yamux::Stream>>;

/// The session's handle on a yamux connection.
pub(crate) struct YamuxMux {
    open_tx: mpsc::Sender<OpenReply>,
    cancel: CancellationToken,
    now: Arc<dyn OpenNow>,
    counters: Arc<Counters>,
}

/// What callers may do on the connection from their own task when it is free, instead of
/// waking the driver: open a stream (its first frame then leaves with the message that names
/// it), hold the socket's sends, and poll the connection for a bulk stream.
trait OpenNow: Send + Sync {
    fn open_now(&self) -> Option<io::Result<yamux::Stream>>;
    /// See [`Mux::hold`]; every `hold` is followed by one `release`.
    fn hold(&self);
    fn release(&self);
    /// Polls the connection from the calling task, unless another task does: runs `op` (a
    /// stream's write, say) with the connection claimed, so the wake its frame makes is this
    /// task's to serve, then polls the connection until it has nothing more to do. Frames
    /// queued leave and frames that came are taken in without the driver task. `false`, with
    /// `op` not run, when another task holds the connection, or it is closing or has ended
    /// (the driver's to finish).
    fn through(&self, op: &mut dyn FnMut()) -> bool;
    /// Streams a poll from another task than the driver's took in, not yet handed over.
    #[cfg(test)]
    fn arrived(&self) -> usize;
}

/// The connection, shared by the driver, callers of `open_now` and bulk streams.
struct Shared<S> {
    state: Mutex<State<S>>,
    /// The connection's socket, on which whoever polls the connection sends the frames of its
    /// poll.
    socket: Batched<Counted<S>>,
    /// Callers of `Mux::hold` still writing: the driver sends nothing meanwhile.
    held: AtomicUsize,
    driver: Arc<DriverWaker>,
}

/// The connection and what polling it needs, for whichever task polls it.
struct State<S> {
    conn: yamux::Connection<tokio_util::compat::Compat<Batched<Counted<S>>>>,
    open_rx: mpsc::Receiver<OpenReply>,
    pending_open: Option<OpenReply>,
    /// Gone once the connection has ended, so the session's inbound task ends too.
    inbound_tx: Option<Inbound>,
    /// Streams the peer opened, taken in by a poll: the driver hands them over after its poll,
    /// so the session's code runs only in the driver's task.
    arrived: Vec<yamux::Stream>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    closing: bool,
    /// Bounds how long a closing connection waits for the peer to close its side.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Why the connection ended, once a poll found it ended; the driver reports it.
    ended: Option<String>,
}

/// Who polls the connection.
#[derive(Clone, Copy)]
enum Poller<'a> {
    /// The driver task: everything, the close included. It hands the streams that arrive
    /// over to the session, with this handle on the connection in them.
    Driver(&'a Arc<dyn OpenNow>),
    /// A bulk stream's task, through [`OpenNow::through`]: frames in and out, while the
    /// connection is not closing; it leaves the rest to the driver.
    Stream,
}

/// Wakes the driver task: the waker the connection is polled with, by the driver, by
/// `open_now` and by bulk streams polling it themselves (`through`). yamux keeps the waker it
/// is polled with (a closing connection polls its close with it), so a no-op waker in
/// `open_now` would take the driver's wake-up, and the driver, and every open waiting on it,
/// would wait forever.
///
/// A wake that comes while the connection is polled (a frame the poll queued, or another
/// task's write meanwhile) does not reschedule the driver task: whoever polls polls again
/// before it lets go of the connection. A task woken while it runs is put at the back of the
/// run queue, which makes tokio wake an idle worker thread to take it: a thread switch for
/// every frame the driver itself queues.
#[derive(Default)]
struct DriverWaker {
    task: AtomicWaker,
    /// [`POLLING`] while a task polls the connection, with [`WOKEN`] once woken meanwhile (a
    /// wake between polls leaves [`WOKEN`] alone, and the next poll clears it). Only the
    /// task holding the connection's lock sets [`POLLING`].
    state: AtomicU8,
}

const POLLING: u8 = 1;
const WOKEN: u8 = 2;

impl DriverWaker {
    /// Marks the start of a poll of the connection.
    fn polling(&self) {
        self.state.store(POLLING, Ordering::SeqCst);
    }

    /// Marks the end of a poll that found nothing more to do; `false` if a wake came
    /// meanwhile, so there may be: poll again.
    fn idle(&self) -> bool {
        self.state.compare_exchange(POLLING, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }
}

impl Wake for DriverWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // While the driver polls, the mark makes its `idle` fail; otherwise the next poll's
        // `polling` clears it.
        if self.state.fetch_or(WOKEN, Ordering::SeqCst) & POLLING == 0 {
            self.task.wake();
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> OpenNow for Shared<S> {
    fn open_now(&self) -> Option<io::Result<yamux::Stream>> {
        let mut state = self.try_state()?;
        let waker = Waker::from(self.driver.clone());
        let mut cx = Context::from_waker(&waker);
        // Opening an outbound stream writes nothing: nothing enters the socket's batch here.
        let opened = state.conn.poll_new_outbound(&mut cx);
        drop(state);
        // The driver sends what the open queued, and re-registers its own waker.
        self.driver.wake_by_ref();
        match opened {
            Poll::Ready(result) => Some(result.map_err(io::Error::other)),
            Poll::Pending => None,
        }
    }

    fn hold(&self) {
        self.held.fetch_add(1, Ordering::SeqCst);
    }

    fn release(&self) {
        // The driver may have skipped a send while held: the last release has it poll again.
        if self.held.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.driver.wake_by_ref();
        }
    }

    #[cfg(test)]
    fn arrived(&self) -> usize {
        self.try_state().map_or(0, |state| state.arrived.len())
    }

    fn through(&self, op: &mut dyn FnMut()) -> bool {
        let Some(mut state) = self.try_state() else {
            return false;
        };
        if state.closing || state.ended.is_some() {
            return false;
        }
        self.driver.polling();
        let unwinding = Unwinding(&self.driver);
        op();
        let rounds = self.run(&mut state, Poller::Stream);
        std::mem::forget(unwinding);
        let driver_needed = match rounds {
            Rounds::Idle => !state.arrived.is_empty(),
            Rounds::Busy | Rounds::Deferred => true,
            Rounds::Ended(reason) => {
                state.ended = Some(reason);
                true
            }
        };
        drop(state);
        if driver_needed {
            self.driver.task.wake();
        }
        true
    }
}

/// Set while another task than the driver polls the connection: if that poll unwinds, the
/// driver must not be left marked as polled by someone (no wake would reach it again).
struct Unwinding<'a>(&'a DriverWaker);

impl Drop for Unwinding<'_> {
    fn drop(&mut self) {
        self.0.state.store(0, Ordering::SeqCst);
        self.0.task.wake();
    }
}

/// How a run of polls of the connection ended.
enum Rounds {
    /// The last poll found nothing more to do.
    Idle,
    /// Still woken after [`REPOLLS`] polls, or out of the task's budget.
    Busy,
    /// A stream's poll found work that is the driver's (the connection closing).
    Deferred,
    /// The connection has ended, for this reason.
    Ended(String),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Shared<S> {
    /// The connection, unless another task holds it. Invariant: nothing panics while holding
    /// this lock; a poisoned lock still holds the connection, which then reports its own
    /// errors.
    fn try_state(&self) -> Option<std::sync::MutexGuard<'_, State<S>>> {
        match self.state.try_lock() {
            Ok(state) => Some(state),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Polls the connection until a poll finds nothing more to do, or [`REPOLLS`] times.
    fn run(&self, state: &mut State<S>, poller: Poller<'_>) -> Rounds {
        let waker = Waker::from(self.driver.clone());
        let mut cx = Context::from_waker(&waker);
        for round in 0..REPOLLS {
            if round > 0 && !tokio::task::coop::has_budget_remaining() {
                // The task has used its budget: polling again would find every socket
                // read refused until it yields.
                break;
            }
            self.driver.polling();
            let polled = state.poll_connection(self, &mut cx, poller);
            if let Poller::Driver(through) = poller {
                // Taking a stream in may queue its ACCEPT: the next round sends it (see
                // `DriverWaker`). yamux admits no more streams than the channel holds.
                if let Some(inbound_tx) = &state.inbound_tx {
                    for stream in state.arrived.drain(..) {
                        inbound_tx.deliver(split(stream, through.clone()));
                    }
                }
            }
            match polled {
                Poll::Ready(Some(reason)) => {
                    self.driver.state.store(0, Ordering::SeqCst);
                    return Rounds::Ended(reason);
                }
                Poll::Ready(None) => {
                    self.driver.state.store(0, Ordering::SeqCst);
                    return Rounds::Deferred;
                }
                Poll::Pending => {}
            }
            if self.driver.idle() {
                return Rounds::Idle;
            }
        }
        self.driver.state.store(0, Ordering::SeqCst);
        Rounds::Busy
    }
}

/// Starts the driver task. Returns the handle, the inbound streams, and a future that resolves
/// with the reason once the connection is gone.
/// `read_ahead`: `io` is a plain socket (see `batch::ReadAhead`).
pub(crate) fn start<S>(
    io: S,
    dialer: bool,
    limits: &Limits,
    read_ahead: bool,
) -> (YamuxMux, InboundRx, oneshot::Receiver<String>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut config = yamux::Config::default();
    // Each stream gets at least the yamux default window of 256 KiB, and busy streams may
    // grow theirs into `window_growth` on top; the connection window bounds what a peer can
    // make us buffer in total.
    // rust-yamux drops the whole connection when a peer goes over its stream limit, so that
    // limit sits above what the session admits: each side opens at most half of max_streams
    // and refuses the peer's excess with ACCEPT, and a few streams (control, refusals in
    // flight) come on top.
    let yamux_streams = limits.max_streams + YAMUX_MARGIN;
    // yamux asserts window >= streams * 256 KiB on each setter: lift the window first.
    config.set_max_connection_receive_window(None);
    config.set_max_num_streams(yamux_streams);
    // Saturating: the window stays at least what yamux asserts.
    let window = yamux_streams.saturating_mul(256 * 1024).saturating_add(limits.window_growth);
    config.set_max_connection_receive_window(Some(window));
    config.set_split_send_size(64 * 1024);
    let mode = if dialer { yamux::Mode::Client } else { yamux::Mode::Server };
    let counters = Arc::new(Counters::default());
    let socket = Batched::new(Counted::new(io, counters.clone()), read_ahead);
    let (open_tx, open_rx) = mpsc::channel(64);
    let (inbound_tx, inbound_rx) = super::inbound(limits.max_streams);
    let (done_tx, done_rx) = oneshot::channel();
    let cancel = CancellationToken::new();
    let state = State {
        conn: yamux::Connection::new(socket.handle().compat(), config, mode),
        open_rx,
        pending_open: None,
        inbound_tx: Some(inbound_tx),
        arrived: Vec::new(),
        cancelled: Box::pin(cancel.clone().cancelled_owned()),
        closing: false,
        linger: None,
        ended: None,
    };
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        socket,
        held: AtomicUsize::new(0),
        driver: Arc::default(),
    });
    let driver = Driver { shared: shared.clone(), through: shared.clone() };
    tokio::spawn(async move {
        let reason = driver.await;
        tracing::debug!(%reason, "yamux connection ended");
        let _ = done_tx.send(reason);
    });
    (YamuxMux { open_tx, cancel, now: shared, counters }, inbound_rx, done_rx)
}

impl Mux for YamuxMux {
    fn open(&self) -> BoxFuture<'static, io::Result<RawStream>> {
        let open_tx = self.open_tx.clone();
        let through = self.now.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            // Bounded: an open must not wait forever on a driver that does not answer.
            let asked = async {
                open_tx.send(tx).await.map_err(|_| driver_gone())?;
                answer(&open_tx, rx).await
            };
            let stream = tokio::time::timeout(OPEN_WAIT, asked).await.map_err(|_| {
                let waited = OPEN_WAIT.as_secs();
                io::Error::new(io::ErrorKind::TimedOut, format!("no stream within {waited} s"))
            })??;
            Ok(split(stream, through))
        })
    }

    fn try_open(&self) -> Option<io::Result<RawStream>> {
        Some(self.now.open_now()?.map(|stream| split(stream, self.now.clone())))
    }

    fn hold(&self) -> Option<Hold> {
        self.now.hold();
        let now = self.now.clone();
        Some(Hold::new(move || now.release()))
    }

    fn close(&self, _code: crate::proto::Code, _reason: &str) {
        self.cancel.cancel();
    }

    fn traffic(&self) -> Traffic {
        self.counters.traffic()
    }
}

/// Waits for the driver's answer to an open request, or for the driver to end.
///
/// The driver ending drops its receiver, and with it every request still queued, but not a
/// request sent with a permit taken just before: tokio keeps such a value in the closed
/// channel until every sender is gone (tokio issue #7714), and the session's sender lives as
/// long as the session. So the request's reply channel is not enough to learn that the
/// driver ended.
async fn answer(
    open_tx: &mpsc::Sender<OpenReply>,
    rx: oneshot::Receiver<io::Result<yamux::Stream>>,
) -> io::Result<yamux::Stream> {
    tokio::select! {
        // An answer the driver gave before it ended is the answer.
        biased;
        answered = rx => answered.map_err(|_| driver_gone())?,
        () = open_tx.closed() => Err(driver_gone()),
    }
}

fn driver_gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection has ended")
}

fn split(stream: yamux::Stream, through: Arc<dyn OpenNow>) -> RawStream {
    let reset = stream.reset_handle();
    let bulk = Arc::new(AtomicBool::new(false));
    let (read, write) = split_halves(YamuxIo { stream, pending: None, bulk: bulk.clone() });
    let read = YamuxRead { read, through: through.clone(), bulk };
    let write = YamuxWrite { write, reset, through };
    RawStream { read: Box::new(read), write: Box::new(write), permit: None, owed: None }
}

/// A yamux stream with tokio's I/O traits. Reads take the chunks yamux received as they are
/// (its `Stream` of packets) and copy them into the caller's buffer: `tokio_util::compat`
/// zeroes the caller's whole unfilled buffer on every read instead (64 KiB for a frame
/// reader, several times per message), which cost more than the rest of a small message's
/// path.
struct YamuxIo {
    stream: yamux::Stream,
    /// A chunk partly copied out, and how much of it was.
    pending: Option<(yamux::Packet, usize)>,
    /// Set while the last chunk received was large (see [`YamuxRead`]).
    bulk: Arc<AtomicBool>,
}

impl AsyncRead for YamuxIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some((packet, offset)) = &mut self.pending {
                let data = &packet.as_ref()[*offset..];
                let n = data.len().min(buf.remaining());
                buf.put_slice(&data[..n]);
                *offset += n;
                if *offset == packet.as_ref().len() {
                    self.pending = None;
                }
                return Poll::Ready(Ok(()));
            }
            let next = futures::Stream::poll_next(Pin::new(&mut self.stream), cx);
            match std::task::ready!(next) {
                Some(Ok(packet)) if packet.as_ref().is_empty() => {}
                Some(Ok(packet)) => {
                    self.bulk.store(packet.as_ref().len() >= THROUGH, Ordering::Relaxed);
                    self.pending = Some((packet, 0));
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for YamuxIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures::AsyncWrite::poll_write(Pin::new(&mut self.stream), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::AsyncWrite::poll_flush(Pin::new(&mut self.stream), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::AsyncWrite::poll_close(Pin::new(&mut self.stream), cx)
    }
}

/// The read half of a yamux stream. While the stream carries a bulk transfer (its last chunk
/// was at least [`THROUGH`] bytes), a read polls the connection from the reading task when no
/// other task does, so the frames it waits for are read (and over TLS decrypted) here, without
/// the driver task and a wake-up per frame. It does so outside the lock that joins the two
/// halves (`tokio::io::split`), which the other half's task may be waiting for.
struct YamuxRead<T> {
    read: T,
    through: Arc<dyn OpenNow>,
    bulk: Arc<AtomicBool>,
}

impl<T: AsyncRead + Unpin> AsyncRead for YamuxRead<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.read).poll_read(cx, buf);
        // Only a read that would wait polls the connection: one that finds its bytes here
        // costs no more than before.
        if polled.is_pending()
            && this.bulk.load(Ordering::Relaxed)
            && this.through.through(&mut || {})
        {
            return Pin::new(&mut this.read).poll_read(cx, buf);
        }
        polled
    }
}

/// The write half of a yamux stream, which can reset the stream. Writes of at least
/// [`THROUGH`] bytes send their frames from the writing task when no other task polls the
/// connection (outside the lock that joins the two halves, as for [`YamuxRead`]).
struct YamuxWrite<T> {
    write: T,
    reset: yamux::ResetHandle,
    through: Arc<dyn OpenNow>,
}

impl<T: AsyncWrite + Send + Unpin> super::StreamWrite for YamuxWrite<T> {
    fn reset(self: Box<Self>) {
        // Sent when the stream is dropped, that is with the read half.
        self.reset.reset_on_drop();
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for YamuxWrite<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.len() < THROUGH {
            return Pin::new(&mut this.write).poll_write(cx, buf);
        }
        let write = &mut this.write;
        let mut written = None;
        this.through.through(&mut || written = Some(Pin::new(&mut *write).poll_write(cx, buf)));
        match written {
            Some(written) => written,
            None => Pin::new(&mut this.write).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

/// Splits `stream` into halves that may be polled from two tasks (see [`Halves`]).
fn split_halves<T: AsyncRead + AsyncWrite>(
    stream: T,
) -> (Half<tokio::io::ReadHalf<T>>, Half<tokio::io::WriteHalf<T>>) {
    let (read, write) = tokio::io::split(stream);
    let halves = Arc::new(Halves::default());
    let waker = Waker::from(halves.clone());
    let read = Half { inner: read, halves: halves.clone(), waker: waker.clone(), side: Side::Read };
    (read, Half { inner: write, halves, waker, side: Side::Write })
}

/// The tasks polling the two halves of one yamux stream.
///
/// A `yamux::Stream` keeps one waker slot for both directions: reading sends window updates
/// through the same channel sender that writing uses, and that sender remembers only the last
/// task that found the channel full. With the halves in two tasks (a `ByteStream` split into
/// reader and writer), the reader's poll replaced the parked writer's waker, and the writer
/// was never woken again (rust-yamux issue #232). So each half polls the stream with a waker
/// that wakes both tasks; a half woken for the other one polls again and finds nothing.
#[derive(Default)]
struct Halves {
    read: AtomicWaker,
    write: AtomicWaker,
}

impl Wake for Halves {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.read.wake();
        self.write.wake();
    }
}

#[derive(Clone, Copy)]
enum Side {
    Read,
    Write,
}

/// One half of a split stream, polled with the waker of [`Halves`].
struct Half<T> {
    inner: T,
    halves: Arc<Halves>,
    waker: Waker,
    side: Side,
}

impl<T: Unpin> Half<T> {
    /// Polls the inner half with the waker of [`Halves`], the caller's task registered for
    /// its side while the poll is pending. A poll that completes takes the registration back:
    /// a task that wrote (or read) and went on to other work is not woken by its stream's
    /// next event for the other side, which would be a spurious wake-up and, on a
    /// multi-threaded runtime, often another worker woken to run it.
    fn poll_with<R>(
        &mut self,
        cx: &Context<'_>,
        poll: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<R>,
    ) -> Poll<R> {
        let mine = match self.side {
            Side::Read => &self.halves.read,
            Side::Write => &self.halves.write,
        };
        mine.register(cx.waker());
        let polled = poll(Pin::new(&mut self.inner), &mut Context::from_waker(&self.waker));
        if polled.is_ready() {
            drop(mine.take());
        }
        polled
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Half<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_with(cx, |inner, cx| inner.poll_read(cx, buf))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Half<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_with(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_with(cx, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_with(cx, |inner, cx| inner.poll_shutdown(cx))
    }
}

/// The task that polls the connection whenever no other task does.
struct Driver<S> {
    shared: Arc<Shared<S>>,
    /// The same, as the streams keep it.
    through: Arc<dyn OpenNow>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Driver<S> {
    type Output = String;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<String> {
        let shared = &self.shared;
        let wakes = &shared.driver;
        wakes.task.register(cx.waker());
        let Some(mut state) = shared.try_state() else {
            // A stream's poll (or an open) holds the connection. A poll still going sees this
            // wake and polls again; otherwise it is about to let go: try again then.
            if wakes.state.fetch_or(WOKEN, Ordering::SeqCst) & POLLING == 0 {
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        };
        let rounds = match &state.ended {
            Some(reason) => Rounds::Ended(reason.clone()),
            None => shared.run(&mut state, Poller::Driver(&self.through)),
        };
        match rounds {
            Rounds::Ended(reason) => {
                state.end(&reason);
                Poll::Ready(reason)
            }
            Rounds::Idle | Rounds::Deferred => Poll::Pending,
            Rounds::Busy => {
                // Still woken after as many rounds: let other tasks run first.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}

impl<S> State<S> {
    /// Lets go of what the connection served once it has ended: opens waiting fail at once,
    /// and the session's inbound task ends.
    fn end(&mut self, reason: &str) {
        self.ended = Some(reason.to_owned());
        self.open_rx.close();
        while self.open_rx.try_recv().is_ok() {}
        self.pending_open = None;
        self.inbound_tx = None;
        self.arrived.clear();
    }
}

impl<S> Drop for Driver<S> {
    /// The driver gone (ended, or dropped with its runtime) ends what the connection served,
    /// even while streams keep the connection's state alive.
    fn drop(&mut self) {
        let mut state = self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.inbound_tx.is_some() {
            state.end("the connection's driver stopped");
        }
    }
}

/// How many times the connection is polled again for wakes that came while it was polled,
/// before its poller yields to other tasks.
const REPOLLS: usize = 16;

impl<S: AsyncRead + AsyncWrite + Unpin> State<S> {
    /// One poll of the connection, with the driver's waker (see [`DriverWaker`]).
    /// `Ready(Some(reason))` once the connection has ended; `Ready(None)` when a stream's
    /// poll leaves the rest to the driver.
    fn poll_connection(
        &mut self,
        shared: &Shared<S>,
        cx: &mut Context<'_>,
        poller: Poller<'_>,
    ) -> Poll<Option<String>> {
        if !self.closing && self.cancelled.as_mut().poll(cx).is_ready() {
            self.closing = true;
        }
        if self.closing {
            if let Poller::Stream = poller {
                return Poll::Ready(None);
            }
            let linger = self.linger.get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER)));
            return match self.conn.poll_close(cx) {
                Poll::Ready(_) => Poll::Ready(Some("closed locally".into())),
                Poll::Pending if linger.as_mut().poll(cx).is_ready() => {
                    self.conn.abort();
                    Poll::Ready(Some(
                        "closed locally; the peer did not close its side in time".into(),
                    ))
                }
                Poll::Pending => {
                    // Closing writes yamux's last frames, and sends them when it shuts the
                    // socket down; whatever it left in the batch before waiting goes now.
                    let _ = shared.socket.poll_send(cx);
                    Poll::Pending
                }
            };
        }
        loop {
            if self.pending_open.is_none() {
                match self.open_rx.poll_recv(cx) {
                    Poll::Ready(Some(reply)) => self.pending_open = Some(reply),
                    // Every handle is gone: nobody can open streams any more, but inbound
                    // streams may still be served until the session itself closes.
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            match self.conn.poll_new_outbound(cx) {
                Poll::Ready(result) => {
                    if let Some(reply) = self.pending_open.take() {
                        let _ = reply.send(result.map_err(io::Error::other));
                    }
                }
                Poll::Pending => break,
            }
        }
        let mut failed = None;
        loop {
            match self.conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    // Handed over after this poll, by the driver (see `arrived`).
                    self.arrived.push(stream);
                    continue;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(describe(&e))),
                Poll::Ready(None) => {
                    return Poll::Ready(Some("connection closed by peer".into()));
                }
                Poll::Pending => {}
            }
            if let Some(reason) = failed {
                return Poll::Ready(Some(reason));
            }
            if shared.held.load(Ordering::SeqCst) > 0 {
                // A sender is writing frames that belong with these; its release wakes us.
                // Holds last no longer than a synchronous write, and a full batch still goes
                // out from yamux's own writes, so at most one batch waits here.
                return Poll::Pending;
            }
            // Every frame yamux wrote in this poll leaves in one write. A socket that cannot
            // take it all wakes the driver when it can. A failed send fails yamux's next
            // flush, so polling the connection once more ends it and fails its streams.
            match shared.socket.poll_send(cx) {
                Poll::Ready(Err(e)) => failed = Some(e.to_string()),
                Poll::Ready(Ok(())) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Why a connection failed, in words for its session's close reason: a failed socket is just
/// the socket's error, which yamux words as "decode error: i/o error: ..." when it failed
/// while reading.
fn describe(error: &yamux::ConnectionError) -> String {
    match error {
        yamux::ConnectionError::Io(e)
        | yamux::ConnectionError::Decode(yamux::FrameDecodeError::Io(e)) => e.to_string(),
        other => other.to_string(),
    }
}

/// How long a connection closed from this side keeps reading until the peer closes its side
/// too, so that the peer reads everything sent before the close (see vendor/yamux/PATCHES.md).
const LINGER: Duration = Duration::from_secs(2);

/// How long an open waits for the driver to open its stream (yamux holds opens back while 256
/// of this side's streams are not yet acknowledged by the peer).
const OPEN_WAIT: Duration = Duration::from_secs(10);

/// Writes of at least this many bytes send their frames from the writing task, and a stream
/// whose last chunk was this large reads the connection from its reading task when it has
/// nothing buffered (see [`OpenNow::through`]). Smaller writes leave it to the driver, which
/// sends what several streams wrote meanwhile in one write; a stream whose chunks are smaller
/// (messages, mostly) waits for the driver to read them.
const THROUGH: usize = 16 * 1024;

/// Streams yamux admits beyond the session's own limit.
const YAMUX_MARGIN: usize = 64;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Like a `yamux::Stream` whose channel is full: reads and writes wait, and the stream
    /// keeps only the last waker it was polled with.
    #[derive(Default)]
    struct OneSlot {
        waker: Option<Waker>,
    }

    impl AsyncRead for OneSlot {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            _buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    impl AsyncWrite for OneSlot {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            _buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.waker = Some(cx.waker().clone());
            Poll::Pending
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A request sent with a permit taken before the driver ended stays in the closed
    /// channel, reply sender and all: the open must still end as soon as the driver did.
    #[tokio::test]
    async fn an_open_queued_as_the_driver_ends_fails_at_once() {
        let (open_tx, open_rx) = mpsc::channel(1);
        let permit = open_tx.try_reserve().expect("the channel has room");
        drop(open_rx);
        let (tx, rx) = oneshot::channel();
        permit.send(tx);
        let answered = tokio::time::timeout(Duration::from_secs(10), answer(&open_tx, rx))
            .await
            .expect("the open ends with the driver");
        assert_eq!(answered.unwrap_err().kind(), io::ErrorKind::NotConnected);
    }

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The writer waits, then the reader polls from another task and replaces the stream's
    /// only waker: waking that waker must still wake the writer's task.
    #[test]
    fn the_reader_does_not_take_the_writers_wake_up() {
        let (mut read, mut write) = split_halves(OneSlot::default());
        let (writer, reader) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let writer_waker = Waker::from(writer.clone());
        let reader_waker = Waker::from(reader.clone());
        let mut cx = Context::from_waker(&writer_waker);
        assert!(Pin::new(&mut write).poll_write(&mut cx, b"bytes").is_pending());
        let mut cx = Context::from_waker(&reader_waker);
        let mut buf = [0u8; 8];
        assert!(Pin::new(&mut read).poll_read(&mut cx, &mut ReadBuf::new(&mut buf)).is_pending());
        // What the connection does once the channel has room: wake the one waker it kept.
        let stream = read.inner.unsplit(write.inner);
        stream.waker.expect("a waker").wake();
        assert_eq!(writer.0.load(Ordering::SeqCst), 1, "the writer is woken");
        assert_eq!(reader.0.load(Ordering::SeqCst), 1, "the reader is woken");
    }

    /// What streams write while the connection is held leaves once the last hold is released:
    /// the driver skipped its send meanwhile, and nothing else would wake it.
    /// One thread: the driver runs exactly when this task yields.
    #[tokio::test]
    async fn writes_made_while_held_leave_on_release() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let limits = Limits::default();
        let (dialer, _, _done_a) = start(a, true, &limits, true);
        let (_listener, mut inbound, _done_b) = start(b, false, &limits, true);
        for round in 0..50u8 {
            let outer = dialer.hold().expect("yamux can hold");
            let inner = dialer.hold().expect("yamux can hold");
            let mut stream = match dialer.try_open() {
                Some(opened) => opened.expect("the connection is up"),
                None => dialer.open().await.expect("the connection is up"),
            };
            stream.write.write_all(&[round; 100]).await.expect("the stream takes bytes");
            drop(inner);
            // The driver, woken by the write, runs now and finds the connection held.
            tokio::task::yield_now().await;
            drop(outer);
            let mut arrived = next_stream(&mut inbound).await;
            let mut got = [0u8; 100];
            tokio::time::timeout(Duration::from_secs(10), arrived.read.read_exact(&mut got))
                .await
                .expect("the bytes arrive after the release")
                .expect("the stream is readable");
            assert_eq!(got, [round; 100]);
        }
    }

    /// The next stream the driver hands over, within 10 s; with no router set, streams
    /// arrive as they are.
    async fn next_stream(inbound: &mut InboundRx) -> RawStream {
        let arrival = tokio::time::timeout(Duration::from_secs(10), inbound.rx.recv())
            .await
            .expect("the driver hands the stream over")
            .expect("the connection is up");
        let super::super::Arrival::Stream(stream) = arrival else {
            panic!("no router was set, so streams arrive as they are");
        };
        stream
    }

    /// Streams the peer opens that a bulk stream's poll of the connection reads, rather than
    /// the driver, still reach the session, handed over by the driver.
    #[tokio::test]
    async fn streams_read_by_a_streams_own_poll_reach_the_session() {
        let (mut peer, ours) = tokio::io::duplex(64 * 1024);
        let (mux, mut inbound, _done) = start(ours, false, &Limits::default(), false);
        // The peer, a yamux dialer, opens three streams (a data frame with SYN each) and
        // writes a byte on each.
        for id in [1u32, 3, 5] {
            let mut frame = vec![0u8, 0, 0, 1];
            frame.extend(id.to_be_bytes());
            frame.extend(1u32.to_be_bytes());
            frame.push(id as u8);
            peer.write_all(&frame).await.expect("the pipe has room");
        }
        // Nothing has awaited yet, so the driver has not run: this poll reads the frames.
        assert!(mux.now.through(&mut || {}), "the connection is free");
        assert_eq!(mux.now.arrived(), 3, "the three streams wait for the driver");
        assert!(inbound.rx.try_recv().is_err(), "only the driver hands streams over");
        let mut got = Vec::new();
        for _ in 0..3 {
            let mut stream = next_stream(&mut inbound).await;
            let mut byte = [0u8; 1];
            stream.read.read_exact(&mut byte).await.expect("the stream's byte");
            got.push(byte[0]);
        }
        got.sort_unstable();
        assert_eq!(got, [1, 3, 5]);
        assert_eq!(mux.now.arrived(), 0);
    }

    /// A connection that a stream's own poll finds gone ends at once: the driver reports
    /// why, and an open fails at once instead of waiting out its bound.
    #[tokio::test]
    async fn a_connection_found_gone_by_a_streams_own_poll_ends_at_once() {
        let (peer, ours) = tokio::io::duplex(64 * 1024);
        let (mux, _inbound, done) = start(ours, true, &Limits::default(), false);
        drop(peer);
        assert!(mux.now.through(&mut || {}), "the connection was free");
        assert!(!mux.now.through(&mut || {}), "then it has ended: the driver's to finish");
        let reason = tokio::time::timeout(Duration::from_secs(5), done)
            .await
            .expect("the driver reports the end")
            .expect("with a reason");
        assert!(reason.contains("closed by peer"), "{reason}");
        let opened = tokio::time::timeout(Duration::from_secs(5), mux.open())
            .await
            .expect("an open fails well within its own bound");
        assert_eq!(opened.err().map(|e| e.kind()), Some(io::ErrorKind::NotConnected));
    }
}
