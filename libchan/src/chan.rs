//! Typed channel ends: [`Sender`], [`Receiver`], in memory or on a session.

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ciborium::tag::Required;
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::context::{self, DecodeState, EncodeState, Export};
use crate::framed::{write_frame, FrameReader, ReadError};
use crate::proto::{frame, Accept, CloseErr, Code, Direction, FrameError, FrameType, Kind};
use crate::session::{PendingStream, SessionInner};
use crate::transport::{BoxRead, BoxWrite, RawStream};
use crate::{Limits, RecvError, SendError, SendFailure, TAG_RECEIVER, TAG_SENDER};

/// What a channel carries: any serde type that can cross threads. Fields may be further
/// [`Sender`]s, [`Receiver`]s and [`ByteStream`](crate::ByteStream)s, nested to any depth the
/// limits allow.
pub trait Message: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> Message for T {}

/// An in-memory channel holding up to [`Limits::pipe_capacity`] messages. Values move without
/// serialization; either end can later be sent over a session, which then relays it.
pub fn pipe<T: Message>() -> (Sender<T>, Receiver<T>) {
    pipe_with_capacity(Limits::default().pipe_capacity)
}

/// [`pipe`] with a given capacity (at least 1).
pub fn pipe_with_capacity<T: Message>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let receiver = Receiver::with(RecvInner::Mem { rx, nets: Vec::new() });
    (Sender { inner: SenderInner::Mem(tx) }, receiver)
}

/// What an in-memory pipe carries.
enum Item<T> {
    Msg(T),
    /// Ends the channel with an error (`Sender::fail`).
    Err(RecvError),
    /// A clone of the sender went to a peer: what the peer sends arrives on this stream,
    /// which the receiver reads from directly from now on, beside the pipe.
    Net(NetReceiver),
}

/// Forwards every message from `from` to `to`, then closes `to`. Returns the number of
/// messages forwarded. Stops early, dropping `from` (so its sender sees `Closed`), when `to`'s
/// receiver goes away. An error that ends `from` is passed on to `to`'s receiver.
///
/// # Errors
/// The error that ended `from`, after it was passed on.
pub async fn copy<T: Message>(mut from: Receiver<T>, to: Sender<T>) -> Result<u64, RecvError> {
    let mut count = 0;
    let ended = {
        let mut closed = pin!(to.closed());
        loop {
            let item = tokio::select! {
                biased;
                item = from.recv() => item,
                () = &mut closed => break None,
            };
            match item {
                Ok(Some(value)) => {
                    if to.send(value).await.is_err() {
                        break None;
                    }
                    count += 1;
                }
                Ok(None) => break Some(Ok(())),
                Err(e) if !e.is_fatal() => tracing::debug!(error = %e, "relay skipped a message"),
                Err(e) => break Some(Err(e)),
            }
        }
    };
    match ended {
        None => Ok(count),
        Some(Ok(())) => {
            to.close().await;
            Ok(count)
        }
        Some(Err(e)) => {
            let (code, message) = match &e {
                RecvError::Remote { code, message } => (*code, message.clone()),
                other => (Code::Application, other.to_string()),
            };
            to.fail_with(code, message).await;
            Err(e)
        }
    }
}

/// The sending end of a channel. Cheap to clone; the channel ends when every clone is closed
/// or dropped, after everything sent before was delivered.
pub struct Sender<T> {
    inner: SenderInner<T>,
}

enum SenderInner<T> {
    Mem(mpsc::Sender<Item<T>>),
    Net(Arc<SendShared>, PhantomData<fn(T)>),
}

impl<T: Message> Sender<T> {
    pub(crate) fn from_net(
        session: Arc<SessionInner>,
        ref_id: u64,
        stream: PendingStream,
        expect_accept: bool,
    ) -> Self {
        let (status, _) = watch::channel(Status { accepted: !expect_accept, ..Status::default() });
        // A stream that is already here takes writes from the first send on. The ACCEPT this
        // side owes on it, if any, leads the first write.
        let (write, stream, owed) = match stream {
            PendingStream::Ready(RawStream { read, write, permit, owed }) => {
                (Some(write), Arriving::Here(read, permit), owed)
            }
            waiting @ PendingStream::Waiting(_) => (None, Arriving::Later(waiting), None),
        };
        let mut state = SendState {
            buf: BytesMut::new(),
            owed: None,
            closed: false,
            refused: None,
            finish: None,
            inline: if write.is_some() { INLINE_RUN } else { 0 },
        };
        if let Some(owed) = owed {
            state.owe_accept(owed);
        }
        let shared = Arc::new(SendShared {
            session,
            ref_id,
            state: Mutex::new(state),
            writer: tokio::sync::Mutex::new(write),
            idle: Mutex::new(None),
            wake: Notify::new(),
            space: Notify::new(),
            status,
            handles: AtomicUsize::new(1),
        });
        let in_flight = shared.session.in_flight();
        match stream {
            // A sender decoded with its stream here (a reply channel, mostly) needs no task
            // until it has something to wait for: see `SendShared::idle`.
            Arriving::Here(read, permit) if !expect_accept => {
                let control = Control::new(read, &shared.session, false);
                let runtime = tokio::runtime::Handle::current();
                *lock(&shared.idle) = Some(Idle { control, permit, in_flight, runtime });
                let starts: Arc<dyn crate::session::Starts> = shared.clone();
                shared.session.register_idle(ref_id, Arc::downgrade(&starts));
                // A clean close that began meanwhile found nothing to start.
                if shared.session.is_closing() {
                    shared.start_writer();
                }
            }
            stream => {
                tokio::spawn(write_loop(shared.clone(), stream, expect_accept, in_flight));
            }
        }
        Self { inner: SenderInner::Net(shared, PhantomData) }
    }

    /// Sends a message. On a session it is encoded at once and queued for the network, so
    /// `send` returns without waiting for the peer; it waits only while the channel's send
    /// buffer is full (backpressure).
    ///
    /// # Errors
    /// [`SendError`] gives the value back with the reason: the receiver is gone, the encoded
    /// message is over the size or reference limit, or the stream limit is reached. Nothing
    /// was opened for a failed send.
    ///
    /// # Cancel safety
    /// If the future is dropped while waiting for buffer space, the value is dropped unsent.
    pub async fn send(&self, value: T) -> Result<(), SendError<T>> {
        match &self.inner {
            SenderInner::Mem(tx) => tx.send(Item::Msg(value)).await.map_err(|e| match e.0 {
                Item::Msg(value) => SendError::new(value, SendFailure::Closed),
                // Invariant: we sent a message above and get the same item back.
                Item::Err(_) | Item::Net(_) => unreachable!("pipe returned an item not sent"),
            }),
            SenderInner::Net(shared, _) => send_net(shared, value).await,
        }
    }

    /// Waits until the receiving end is gone (or the channel ended): the next send would fail
    /// with `Closed`.
    pub async fn closed(&self) {
        match &self.inner {
            SenderInner::Mem(tx) => tx.closed().await,
            SenderInner::Net(shared, _) => {
                shared.start_writer();
                let mut rx = shared.status.subscribe();
                let _ = rx.wait_for(|s| s.peer_gone || s.finished).await;
            }
        }
    }

    /// Waits until the receiving end has accepted the channel: at once for a channel that
    /// needs no ACCEPT (in memory, or one the peer opened), else when its ACCEPT came.
    ///
    /// # Errors
    /// [`SendFailure::Refused`] with the peer's code and text when it refused the channel
    /// (or a message sent on it before the ACCEPT was read), [`SendFailure::Closed`] when the
    /// channel or its session ended first. A channel refused with
    /// [`Code::AcceptQueueFull`] or [`Code::TooManyStreams`] never reached the peer's
    /// application, so what was sent on it may be sent again on a new channel (PROTOCOL.md
    /// §6.3).
    pub async fn accepted(&self) -> Result<(), SendFailure> {
        let SenderInner::Net(shared, _) = &self.inner else { return Ok(()) };
        shared.start_writer();
        let mut rx = shared.status.subscribe();
        let _ = rx.wait_for(|s| s.accepted || s.peer_gone || s.finished).await;
        if rx.borrow().accepted {
            return Ok(());
        }
        match lock(&shared.state).refused.clone() {
            Some((code, message)) => Err(SendFailure::Refused { code, message }),
            None => Err(SendFailure::Closed),
        }
    }

    /// Whether the receiving end is known to be gone.
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            SenderInner::Mem(tx) => tx.is_closed(),
            SenderInner::Net(shared, _) => {
                shared.catch_up();
                lock(&shared.state).closed
            }
        }
    }

    /// Closes this handle. When it was the last one the channel ends: the receiver gets every
    /// message sent before, then `None`. On a session this waits until everything was handed
    /// to the network.
    pub async fn close(self) {
        let shared = match &self.inner {
            SenderInner::Net(shared, _) => shared.clone(),
            SenderInner::Mem(_) => return,
        };
        drop(self);
        if shared.handles.load(Ordering::Acquire) == 0 {
            let mut rx = shared.status.subscribe();
            let _ = rx.wait_for(|s| s.finished).await;
        }
    }

    /// Ends the channel with an error: the receiver gets every message sent before, then
    /// [`RecvError::Remote`] with code `Application` and this text. Other clones can no longer
    /// send.
    pub async fn fail(self, message: impl Into<String>) {
        self.fail_with(Code::Application, message.into()).await;
    }

    async fn fail_with(self, code: Code, message: String) {
        match &self.inner {
            SenderInner::Mem(tx) => {
                let _ = tx.send(Item::Err(RecvError::Remote { code, message })).await;
            }
            SenderInner::Net(shared, _) => {
                let shared = shared.clone();
                shared.finish(Some(CloseErr { code, message }));
                drop(self);
                let mut rx = shared.status.subscribe();
                let _ = rx.wait_for(|s| s.finished).await;
            }
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        let inner = match &self.inner {
            SenderInner::Mem(tx) => SenderInner::Mem(tx.clone()),
            SenderInner::Net(shared, _) => {
                shared.handles.fetch_add(1, Ordering::Relaxed);
                SenderInner::Net(shared.clone(), PhantomData)
            }
        };
        Self { inner }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let SenderInner::Net(shared, _) = &self.inner {
            if shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
                shared.finish(None);
            }
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            SenderInner::Mem(_) => f.write_str("Sender(memory)"),
            SenderInner::Net(shared, _) => write!(f, "Sender(ref {})", shared.ref_id),
        }
    }
}

impl<T: Message> Serialize for Sender<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The peer gets a sender; what it sends arrives on a new stream. A pipe's receiver
        // reads that stream itself; a sender of another session gets it relayed.
        let start: context::Start = match &self.inner {
            SenderInner::Mem(tx) => {
                let tx = tx.clone();
                Box::new(move |session, ref_id, stream| {
                    Box::pin(async move {
                        let net = NetReceiver::new(session, ref_id, stream);
                        // A receiver that is gone drops the stream, which tells the peer.
                        let _ = tx.send(Item::Net(net)).await;
                    })
                })
            }
            SenderInner::Net(..) => {
                let local = self.clone();
                Box::new(move |session, ref_id, stream| {
                    Box::pin(async move {
                        let remote = Receiver::<T>::from_net(
                            session,
                            ref_id,
                            PendingStream::Ready(stream),
                            true,
                        );
                        let _ = copy(remote, local).await;
                    })
                })
            }
        };
        let id = context::export(Kind::Channel, Direction::AcceptorSends, start)
            .map_err(S::Error::custom)?;
        Required::<u64, TAG_SENDER>(id).serialize(serializer)
    }
}

impl<'de, T: Message> Deserialize<'de> for Sender<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Required(id) = Required::<u64, TAG_SENDER>::deserialize(deserializer)?;
        let (session, pending) = context::import(id, Kind::Channel, Direction::AcceptorSends)
            .map_err(D::Error::custom)?;
        Ok(Self::from_net(session, id, pending, false))
    }
}

/// State shared by the clones of a session sender and its writer task.
struct SendShared {
    session: Arc<SessionInner>,
    ref_id: u64,
    state: Mutex<SendState>,
    /// The stream's write half, once the stream is there. The writer task holds it while it
    /// writes a batch; a sender finding the writer idle writes through it directly.
    writer: tokio::sync::Mutex<Option<BoxWrite>>,
    /// What the writer task would start with, while it has not started. A sender decoded
    /// from a message with its stream already here writes from the sending task while the
    /// stream takes each message whole, and ends its stream from the task that drops it, so
    /// a request's reply channel sends its answer and ends without a task of its own, and
    /// without the thread hand-offs a task's wake-ups cost. The task starts once the sender
    /// has to wait: a message the stream did not take, `closed`, an error to send, or a
    /// clean close of the session.
    idle: Mutex<Option<Idle>>,
    /// Wakes the writer: new bytes, or finishing.
    wake: Notify,
    /// Wakes senders waiting for buffer space.
    space: Notify,
    status: watch::Sender<Status>,
    handles: AtomicUsize,
}

struct SendState {
    buf: BytesMut,
    /// The ACCEPT this side owes, at the front of `buf`: how much of it is left, and the
    /// permit of the session's bound on owed ACCEPTs, released once the ACCEPT is handed to
    /// the stream (or to the writer task, which writes it next).
    owed: Option<(usize, tokio::sync::OwnedSemaphorePermit)>,
    /// The receiver is gone or the stream failed: sends fail with `Closed`.
    closed: bool,
    /// The receiver refused the channel or a message: sends fail with this code and text.
    refused: Option<(Code, String)>,
    /// Set once the last handle is gone: end the channel, with this error if any.
    finish: Option<Option<CloseErr>>,
    /// How many more sends may write themselves, saving a task switch on the way to the
    /// network: [`INLINE_RUN`] while the writer task waits with an empty buffer, then one
    /// less per message the stream took whole. A send the stream did not take whole ends
    /// the run, and so does its end: the sends after it are batched by the writer until it
    /// is idle again. So one message at a time (request/response) mostly leaves without the
    /// writer, and a burst still leaves in batches on transports that take every write
    /// (QUIC), not only on those that push back (yamux).
    inline: u8,
}

impl SendState {
    /// Puts the ACCEPT this side owes at the front of the buffer, `owed` the permit for it.
    fn owe_accept(&mut self, owed: tokio::sync::OwnedSemaphorePermit) {
        let mut buf = BytesMut::new();
        frame::encode(FrameType::Accept, &Accept::ok().encode(), &mut buf);
        self.owed = Some((buf.len(), owed));
        buf.extend_from_slice(&self.buf);
        self.buf = buf;
    }
}

/// A sender's stream while its writer task has not started (see `SendShared::idle`).
struct Idle {
    control: Control,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    in_flight: crate::session::InFlight,
    /// Where the writer task runs once it starts: the last handle may be dropped, or the
    /// sender used, outside the runtime.
    runtime: tokio::runtime::Handle,
}

#[derive(Clone, Copy, Default)]
struct Status {
    /// The receiving end accepted the channel (or it needs no ACCEPT).
    accepted: bool,
    peer_gone: bool,
    finished: bool,
}

impl SendShared {
    fn finish(self: &Arc<Self>, error: Option<CloseErr>) {
        let mut state = lock(&self.state);
        if state.finish.is_none() || error.is_some() {
            state.finish = Some(error);
        }
        if self.finish_inline(&mut state) {
            return;
        }
        drop(state);
        self.start_writer();
        self.wake.notify_one();
    }

    /// Ends an idle sender's stream from this task when that needs no waiting: nothing
    /// queued, no error to send, and the stream takes its FIN at once. Its wait for the
    /// receiver's end of the stream goes to the session (`SessionInner::linger`).
    fn finish_inline(&self, state: &mut SendState) -> bool {
        if state.owed.as_ref().is_some_and(|(len, _)| *len == state.buf.len()) {
            // Nothing sent but the ACCEPT owed: it goes first, then the FIN.
            write_inline(self, state);
        }
        if !matches!(state.finish, Some(None)) || !state.buf.is_empty() || state.closed {
            return false;
        }
        let mut slot = lock(&self.idle);
        if slot.is_none() {
            return false;
        }
        let Ok(mut writer) = self.writer.try_lock() else { return false };
        let Some(write) = writer.as_mut() else { return false };
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        if !matches!(Pin::new(write).poll_shutdown(&mut cx), Poll::Ready(Ok(()))) {
            return false;
        }
        drop(writer.take());
        // Invariant: checked above, under the same lock.
        let Some(Idle { mut control, permit, in_flight, runtime }) = slot.take() else {
            unreachable!("an idle sender lost its stream");
        };
        drop(slot);
        // `finish` stays set: the channel has ended, sends fail.
        state.inline = 0;
        self.session.unregister_idle(self.ref_id);
        self.status.send_modify(|s| s.finished = true);
        let wait = Box::pin(async move {
            control.ended().await;
            drop((permit, in_flight));
        });
        self.session.linger(wait, &runtime);
        true
    }

    /// Starts the writer task of an idle sender (see `SendShared::idle`); nothing if it runs.
    fn start_writer(self: &Arc<Self>) {
        let Some(idle) = lock(&self.idle).take() else { return };
        self.session.unregister_idle(self.ref_id);
        let Idle { control, permit, in_flight, runtime } = idle;
        runtime.spawn(run_writer(self.clone(), control, permit, in_flight));
    }

    /// Reads what an idle sender's receiver sent meanwhile, without waiting: a receiver that
    /// went away makes the next send fail, as with a writer task watching.
    fn catch_up(self: &Arc<Self>) {
        let refusal = {
            let mut guard = lock(&self.idle);
            let Some(idle) = guard.as_mut() else { return };
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            let gone = matches!(pin!(idle.control.next()).poll(&mut cx), Poll::Ready(true));
            if !gone {
                return;
            }
            idle.control.refusal.take()
        };
        self.mark_refused(refusal);
        // The writer ends the stream and waits out the receiver's end.
        self.start_writer();
    }

    fn mark_closed(&self) {
        self.mark_refused(None);
    }

    /// After a control frame: the receiving end is gone (`gone`), or it may have accepted.
    fn heard(&self, gone: bool, control: &mut Control) {
        if gone {
            self.mark_refused(control.refusal.take());
        } else if !control.accept_pending {
            self.status.send_if_modified(|s| !std::mem::replace(&mut s.accepted, true));
        }
    }

    /// As [`mark_closed`](Self::mark_closed), with the code and text the receiver gave.
    fn mark_refused(&self, refusal: Option<(Code, String)>) {
        let mut state = lock(&self.state);
        state.closed = true;
        if state.refused.is_none() {
            state.refused = refusal;
        }
        // An ACCEPT still owed goes out before the FIN all the same (PROTOCOL.md §3.1).
        match state.owed {
            Some((len, _)) => state.buf.truncate(len),
            None => state.buf = BytesMut::new(),
        }
        drop(state);
        self.space.notify_waiters();
        self.status.send_modify(|s| s.peer_gone = true);
    }
}

async fn send_net<T: Message>(shared: &Arc<SendShared>, value: T) -> Result<(), SendError<T>> {
    let limit = shared.session.limits.send_buffer;
    shared.catch_up();
    loop {
        let mut space = pin!(shared.space.notified());
        space.as_mut().enable();
        {
            let mut state = lock(&shared.state);
            if let Some((code, message)) = state.refused.clone() {
                return Err(SendError::new(value, SendFailure::Refused { code, message }));
            }
            if state.closed || state.finish.is_some() || shared.session.is_closing() {
                return Err(SendError::new(value, SendFailure::Closed));
            }
            if state.buf.len() < limit {
                let start = state.buf.len();
                let encoded = encode_into(&mut state.buf, &value, &shared.session, shared.ref_id)
                    .and_then(|exports| shared.session.commit(exports));
                let committed = match encoded {
                    Ok(committed) => committed,
                    Err(reason) => {
                        state.buf.truncate(start);
                        return Err(SendError::new(value, reason));
                    }
                };
                // A message the stream took whole leaves the writer idle with nothing to do;
                // what the stream did not take goes to the writer. The ACCEPT still owed
                // goes with the first message.
                let first = start == state.owed.as_ref().map_or(0, |(len, _)| *len);
                let mut wake = first;
                if first && state.inline > 0 {
                    write_inline(shared, &mut state);
                    state.inline = if state.buf.is_empty() { state.inline - 1 } else { 0 };
                    wake = !state.buf.is_empty();
                }
                drop(state);
                if wake {
                    shared.start_writer();
                    shared.wake.notify_one();
                }
                committed.run();
                return Ok(());
            }
        }
        space.await;
    }
}

/// How many messages in a row a sender writes itself while its writer task is idle (see
/// `SendState::inline`).
const INLINE_RUN: u8 = 16;

/// Writes as much of the buffer as the stream takes without waiting, from the sending task.
/// Whatever is left stays queued for the writer task, in order: the state lock is held and
/// the writer is idle.
fn write_inline(shared: &SendShared, state: &mut SendState) {
    let Ok(mut writer) = shared.writer.try_lock() else { return };
    let Some(write) = writer.as_mut() else { return };
    // A stream that is not ready keeps this no-op waker only until the writer task, woken
    // right after, polls it with its own.
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    if let Poll::Ready(Ok(n)) = Pin::new(write).poll_write(&mut cx, &state.buf) {
        state.buf.advance(n);
        state.owed = state.owed.take().filter(|(len, _)| *len > n).map(|(len, p)| (len - n, p));
    }
}

/// Appends one MSG frame holding `value` to `buf`; returns the handles it named.
fn encode_into<T: Serialize>(
    buf: &mut BytesMut,
    value: &T,
    session: &Arc<SessionInner>,
    parent: u64,
) -> Result<Vec<Export>, SendFailure> {
    let start = buf.len();
    buf.put_bytes(0, frame::HEADER_LEN);
    let state = EncodeState { session: session.clone(), parent, exports: Vec::new() };
    let (result, state) =
        context::encoding(state, || ciborium::into_writer(value, (&mut *buf).writer()));
    let fail = |buf: &mut BytesMut, reason| {
        buf.truncate(start);
        Err(reason)
    };
    if let Err(e) = result {
        return fail(buf, SendFailure::Encode(e.to_string()));
    }
    let len = buf.len() - start - frame::HEADER_LEN;
    let limits = &session.limits;
    if len > limits.max_message_len {
        return fail(buf, SendFailure::TooLarge { len, limit: limits.max_message_len });
    }
    // PROTOCOL.md §7.1: the receiver refuses deeper nesting; refuse it here, nothing sent.
    if crate::proto::depth::cbor_depth(&buf[start + frame::HEADER_LEN..], limits.max_depth)
        .is_none()
    {
        return fail(buf, SendFailure::TooDeep { limit: limits.max_depth });
    }
    if state.exports.len() > limits.max_refs_per_message {
        let count = state.exports.len();
        return fail(buf, SendFailure::TooManyRefs { count, limit: limits.max_refs_per_message });
    }
    frame::patch_header(&mut buf[start..], FrameType::Msg);
    Ok(state.exports)
}

/// Writes a session sender's buffer to its stream, coalescing whatever was queued meanwhile
/// into one write, and watches the other direction for ACCEPT and RECV_CLOSED. A clean
/// session close ends the channel as if the last handle was dropped. After its FIN the task
/// waits (at most `drain_timeout`) for the receiver's end of the stream: until then the
/// messages count as in flight for a clean close (PROTOCOL.md §6.1).
async fn write_loop(
    shared: Arc<SendShared>,
    stream: Arriving,
    expect_accept: bool,
    in_flight: crate::session::InFlight,
) {
    let (read, permit) = match stream {
        Arriving::Here(read, permit) => (read, permit),
        Arriving::Later(pending) => match pending.resolve().await {
            Ok(RawStream { read, write, permit, owed }) => {
                *shared.writer.lock().await = Some(write);
                if let Some(owed) = owed {
                    // Before what was sent while the stream was away.
                    lock(&shared.state).owe_accept(owed);
                }
                (read, permit)
            }
            Err(reason) => {
                tracing::debug!(%reason, "channel stream never arrived");
                shared.mark_closed();
                shared.status.send_modify(|s| s.finished = true);
                return;
            }
        },
    };
    let control = Control::new(read, &shared.session, expect_accept);
    run_writer(shared, control, permit, in_flight).await;
}

/// The writer task of a sender whose stream is here (see [`write_loop`]).
async fn run_writer(
    shared: Arc<SendShared>,
    mut control: Control,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    in_flight: crate::session::InFlight,
) {
    let mut draining = shared.session.draining();
    let error = loop {
        let drain = *draining.borrow_and_update();
        let batch = {
            let mut state = lock(&shared.state);
            if state.closed {
                break None;
            }
            if drain && state.finish.is_none() {
                state.finish = Some(None);
            }
            if !state.buf.is_empty() {
                state.inline = 0;
                state.owed = None;
                Some(state.buf.split().freeze())
            } else if let Some(error) = state.finish.take() {
                break error;
            } else {
                state.inline = INLINE_RUN;
                None
            }
        };
        let Some(batch) = batch else {
            tokio::select! {
                () = shared.wake.notified() => {}
                gone = control.next(), if control.open => shared.heard(gone, &mut control),
                _ = draining.changed(), if !drain => {}
            }
            continue;
        };
        shared.space.notify_waiters();
        let mut writer = shared.writer.lock().await;
        let Some(write) = writer.as_mut() else { break None };
        let mut writing = pin!(write.write_all(&batch));
        let written = loop {
            tokio::select! {
                biased;
                gone = control.next(), if control.open => shared.heard(gone, &mut control),
                result = &mut writing => break result,
            }
        };
        if written.is_err() {
            shared.mark_closed();
        }
    };
    // What is left of an owed ACCEPT, when the channel closed before it was written.
    let owed = {
        let mut state = lock(&shared.state);
        state.inline = 0;
        let owed = state.owed.take().map(|(len, _)| len.min(state.buf.len()));
        owed.map(|len| state.buf.split_to(len))
    };
    let Some(mut write) = shared.writer.lock().await.take() else { return };
    if let Some(owed) = owed {
        let _ = write.write_all(&owed).await;
    }
    if let Some(error) = error {
        let _ = write_frame(&mut write, FrameType::CloseErr, &error.encode()).await;
    }
    let _ = write.shutdown().await;
    shared.status.send_modify(|s| s.finished = true);
    drop(write);
    // The receiver ends its direction once it has read everything (or went away). What it
    // sends meanwhile still counts: an ACCEPT (or a refusal) that comes after the FIN.
    let timeout = shared.session.limits.drain_timeout;
    let _ = tokio::time::timeout(timeout, async {
        while control.open {
            let gone = control.next().await;
            shared.heard(gone, &mut control);
        }
    })
    .await;
    drop((permit, in_flight));
}

/// A sender's stream: here (its write half already with the sender), or still to come.
enum Arriving {
    Here(BoxRead, Option<tokio::sync::OwnedSemaphorePermit>),
    Later(PendingStream),
}

struct Control {
    reader: FrameReader<BoxRead>,
    open: bool,
    accept_pending: bool,
    /// Why the receiving end refused the channel (ACCEPT) or a message (CLOSE_ERR).
    refusal: Option<(Code, String)>,
}

impl Control {
    fn new(read: BoxRead, session: &SessionInner, accept_pending: bool) -> Self {
        let reader = FrameReader::new(read, session.decoder());
        Self { reader, open: true, accept_pending, refusal: None }
    }

    /// Waits until the receiving end is gone: it ended its direction, or went away.
    async fn ended(&mut self) {
        while self.open {
            self.next().await;
        }
    }

    /// Reads one control frame; returns whether the receiving end is gone.
    async fn next(&mut self) -> bool {
        match self.reader.next_frame().await {
            Ok(Some((FrameType::Accept, payload))) if self.accept_pending => {
                self.accept_pending = false;
                match Accept::decode(&payload) {
                    Ok(accept) if accept.status == Code::Ok => false,
                    Ok(accept) => {
                        tracing::debug!(status = %accept.status, error = ?accept.error, "channel refused");
                        self.refusal = Some((accept.status, accept.error.unwrap_or_default()));
                        self.open = false;
                        true
                    }
                    Err(_) => {
                        self.open = false;
                        true
                    }
                }
            }
            Ok(Some((FrameType::RecvClosed, _))) => {
                self.open = false;
                true
            }
            // PROTOCOL.md §5.5: a receiver that refuses a message says why. Not before its
            // ACCEPT (§5.2): that is a broken peer, whose code would say nothing of whether it
            // read what was sent (a refusal by ACCEPT says it did not).
            Ok(Some((FrameType::CloseErr, payload))) if !self.accept_pending => {
                if let Ok(close) = CloseErr::decode(&payload) {
                    self.refusal = Some((close.code, close.message));
                }
                self.open = false;
                true
            }
            Ok(Some((ty, _))) => {
                tracing::debug!(?ty, "unexpected frame on a sender's control direction");
                self.open = false;
                true
            }
            Ok(None) | Err(_) => {
                self.open = false;
                true
            }
        }
    }
}

/// The receiving end of a channel. `recv` returns `Ok(None)` once the channel ended cleanly;
/// it is also a [`Stream`](futures::Stream) of `Result<T, RecvError>`.
pub struct Receiver<T> {
    /// Shared only while a message carrying this receiver is being sent (two-phase send).
    slot: Arc<Mutex<Option<RecvInner<T>>>>,
}

enum RecvInner<T> {
    Mem { rx: mpsc::Receiver<Item<T>>, nets: Vec<NetReceiver> },
    Net(NetReceiver),
}

impl<T: Message> Receiver<T> {
    fn with(inner: RecvInner<T>) -> Self {
        Self { slot: Arc::new(Mutex::new(Some(inner))) }
    }

    pub(crate) fn from_net(
        session: Arc<SessionInner>,
        ref_id: u64,
        stream: PendingStream,
        accept_pending: bool,
    ) -> Self {
        let state = match stream {
            PendingStream::Ready(stream) => NetState::ready(stream, &session),
            PendingStream::Waiting(rx) => NetState::Waiting(rx),
        };
        Self::with(RecvInner::Net(NetReceiver { session, ref_id, state, accept_pending }))
    }

    /// Receives the next message; `Ok(None)` when the channel ended.
    ///
    /// # Errors
    /// [`RecvError`]: the sender ended the channel with an error, the peer broke the protocol,
    /// the connection was lost, or one message did not decode as `T` (the channel goes on;
    /// see [`RecvError::is_fatal`]).
    ///
    /// # Cancel safety
    /// Cancel safe: a message is taken only when this returns it.
    pub async fn recv(&mut self) -> Result<Option<T>, RecvError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message, as [`recv`](Self::recv).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<T>, RecvError>> {
        let Some(inner) = slot_mut(&mut self.slot) else {
            return Poll::Ready(Err(RecvError::Protocol("receiver was sent away".into())));
        };
        match inner {
            RecvInner::Mem { rx, nets } => poll_pipe(rx, nets, cx),
            RecvInner::Net(net) => net.poll_recv::<T>(cx),
        }
    }
}

/// Polls a pipe and the streams spliced into it: peers' messages first, then the pipe's.
/// The channel ends when every sender is gone: the pipe's and the peers'.
fn poll_pipe<T: Message>(
    rx: &mut mpsc::Receiver<Item<T>>,
    nets: &mut Vec<NetReceiver>,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<T>, RecvError>> {
    loop {
        let mut i = 0;
        while i < nets.len() {
            match nets[i].poll_recv::<T>(cx) {
                Poll::Pending => i += 1,
                Poll::Ready(Ok(None)) => drop(nets.swap_remove(i)),
                Poll::Ready(Ok(Some(value))) => return Poll::Ready(Ok(Some(value))),
                Poll::Ready(Err(e)) => {
                    // A fatal error ends that peer's stream, not the pipe.
                    if e.is_fatal() {
                        drop(nets.swap_remove(i));
                    }
                    return Poll::Ready(Err(e));
                }
            }
        }
        return match rx.poll_recv(cx) {
            Poll::Ready(Some(Item::Msg(value))) => Poll::Ready(Ok(Some(value))),
            Poll::Ready(Some(Item::Err(e))) => Poll::Ready(Err(e)),
            Poll::Ready(Some(Item::Net(net))) => {
                nets.push(net);
                continue;
            }
            Poll::Ready(None) if nets.is_empty() => Poll::Ready(Ok(None)),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        };
    }
}

impl<T: Message> futures::Stream for Receiver<T> {
    type Item = Result<T, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx).map(Result::transpose)
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Receiver")
    }
}

impl<T: Message> Serialize for Receiver<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The peer gets a receiver; we send what arrives here on a new stream.
        let slot = self.slot.clone();
        let start: context::Start = Box::new(move |session, ref_id, stream| {
            Box::pin(async move {
                let Some(inner) = lock(&slot).take() else { return };
                drop(slot);
                let remote =
                    Sender::<T>::from_net(session, ref_id, PendingStream::Ready(stream), true);
                let _ = copy(Receiver::with(inner), remote).await;
            })
        });
        let id = context::export(Kind::Channel, Direction::OpenerSends, start)
            .map_err(S::Error::custom)?;
        Required::<u64, TAG_RECEIVER>(id).serialize(serializer)
    }
}

impl<'de, T: Message> Deserialize<'de> for Receiver<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Required(id) = Required::<u64, TAG_RECEIVER>::deserialize(deserializer)?;
        let (session, pending) =
            context::import(id, Kind::Channel, Direction::OpenerSends).map_err(D::Error::custom)?;
        Ok(Self::from_net(session, id, pending, false))
    }
}

/// The receiving side of a channel stream.
struct NetReceiver {
    session: Arc<SessionInner>,
    ref_id: u64,
    state: NetState,
    accept_pending: bool,
}

enum NetState {
    Waiting(oneshot::Receiver<Result<RawStream, String>>),
    Ready {
        reader: FrameReader<BoxRead>,
        write: BoxWrite,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    /// The stream was cut: waiting (briefly) for why (see [`SessionInner::loss_reason`]).
    Lost(futures::future::BoxFuture<'static, String>),
    Done,
}

impl NetState {
    fn ready(stream: RawStream, session: &SessionInner) -> Self {
        // Only the streams of channels the acceptor sends on owe their ACCEPT: senders'.
        debug_assert!(stream.owed.is_none(), "a receiver's stream owes an ACCEPT");
        Self::Ready {
            reader: FrameReader::new(stream.read, session.decoder()),
            write: stream.write,
            permit: stream.permit,
        }
    }
}

impl NetReceiver {
    /// The receiving side of a stream we opened for an exported sender: ACCEPT comes first.
    fn new(session: Arc<SessionInner>, ref_id: u64, stream: RawStream) -> Self {
        let state = NetState::ready(stream, &session);
        Self { session, ref_id, state, accept_pending: true }
    }

    /// The next message, decoded as `T`.
    fn poll_recv<T: Message>(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<T>, RecvError>> {
        let Some(payload) = ready!(self.poll_msg(cx))? else {
            return Poll::Ready(Ok(None));
        };
        match decode::<T>(&self.session, self.ref_id, &payload) {
            Ok(value) => Poll::Ready(Ok(Some(value))),
            Err(Undecoded { error, code }) => {
                match (&error, code) {
                    // PROTOCOL.md §7.1 and §9: the sender learns what its message broke.
                    (RecvError::Protocol(why), Some(code)) => {
                        self.end(Tell::CloseErr(CloseErr { code, message: why.clone() }));
                    }
                    (RecvError::Protocol(_), None) => self.end(Tell::RecvClosed),
                    // Well-formed, but not a `T`: only this message fails.
                    _ => {}
                }
                Poll::Ready(Err(error))
            }
        }
    }

    fn poll_msg(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, RecvError>> {
        loop {
            match &mut self.state {
                NetState::Waiting(rx) => match ready!(Pin::new(rx).poll(cx)) {
                    Ok(Ok(stream)) => self.state = NetState::ready(stream, &self.session),
                    Ok(Err(reason)) => {
                        self.state = NetState::Done;
                        return Poll::Ready(Err(RecvError::Protocol(reason)));
                    }
                    Err(_) => {
                        self.state = NetState::Done;
                        // The session ended before the stream arrived.
                        let reason = self.session.close_reason();
                        let reason = reason.unwrap_or_else(|| "session closed".into());
                        return Poll::Ready(Err(RecvError::Connection(reason)));
                    }
                },
                NetState::Ready { reader, .. } => {
                    let frame = ready!(reader.poll_frame(cx));
                    let accept_pending = std::mem::replace(&mut self.accept_pending, false);
                    let result = match frame {
                        Ok(Some((FrameType::Accept, payload))) if accept_pending => {
                            match Accept::decode(&payload) {
                                Ok(accept) if accept.status == Code::Ok => continue,
                                Ok(accept) => Err(RecvError::Remote {
                                    code: accept.status,
                                    message: accept.error.unwrap_or_default(),
                                }),
                                Err(e) => Err(RecvError::Protocol(e.to_string())),
                            }
                        }
                        Ok(Some(_)) if accept_pending => Err(RecvError::Protocol(
                            "first frame from the acceptor is not ACCEPT".into(),
                        )),
                        // The stream ended before the peer accepted it: it went away (its
                        // connection is lost, or being torn down), which is no violation.
                        Ok(None) if accept_pending => {
                            Err(RecvError::Connection(self.session.close_reason().unwrap_or_else(
                                || "the peer ended the channel before accepting it".into(),
                            )))
                        }
                        Ok(Some((FrameType::Msg, payload))) => {
                            return Poll::Ready(Ok(Some(payload)))
                        }
                        Ok(Some((FrameType::CloseErr, payload))) => {
                            match CloseErr::decode(&payload) {
                                Ok(close) => Err(RecvError::Remote {
                                    code: close.code,
                                    message: close.message,
                                }),
                                Err(e) => Err(RecvError::Protocol(e.to_string())),
                            }
                        }
                        Ok(Some((ty, _))) => Err(RecvError::Protocol(format!(
                            "unexpected {ty:?} frame on a channel"
                        ))),
                        Ok(None) => Ok(None),
                        // PROTOCOL.md §9: the sender learns the limit its message broke.
                        Err(ReadError::Frame(FrameError::TooLarge {
                            ty: FrameType::Msg,
                            len,
                            ..
                        })) => {
                            let limit = self.session.limits.max_message_len;
                            let message = format!(
                                "message of {} bytes exceeds the limit of {limit}",
                                len - 1
                            );
                            let close = CloseErr { code: Code::TooLarge, message: message.clone() };
                            self.end(Tell::CloseErr(close));
                            return Poll::Ready(Err(RecvError::Protocol(message)));
                        }
                        // A reset stream, or one cut by the loss of its connection: yamux
                        // says which only through the session's reason, and QUIC's own words
                        // for a local close are "closed locally". The streams fail a moment
                        // before the session records why, so wait a little for that.
                        Err(ReadError::Io(e))
                            if matches!(
                                e.kind(),
                                io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
                            ) =>
                        {
                            match self.session.close_reason() {
                                Some(reason) => Err(RecvError::Connection(reason)),
                                None => {
                                    self.end(Tell::RecvClosed);
                                    self.state =
                                        NetState::Lost(self.session.loss_reason(e.to_string()));
                                    continue;
                                }
                            }
                        }
                        Err(e) => Err(e.into()),
                    };
                    self.end(if result.is_err() { Tell::RecvClosed } else { Tell::Nothing });
                    return Poll::Ready(result);
                }
                NetState::Lost(reason) => {
                    let reason = ready!(reason.as_mut().poll(cx));
                    self.state = NetState::Done;
                    return Poll::Ready(Err(RecvError::Connection(reason)));
                }
                NetState::Done => return Poll::Ready(Ok(None)),
            }
        }
    }

    /// Ends our side of the stream, first telling the sender what `tell` says.
    fn end(&mut self, tell: Tell) {
        let NetState::Ready { reader, mut write, permit } =
            std::mem::replace(&mut self.state, NetState::Done)
        else {
            return;
        };
        self.session.channel_ended(self.ref_id);
        // The last frame and the stream's end leave in one write.
        let _hold = self.session.hold();
        let mut last = BytesMut::new();
        match tell {
            Tell::CloseErr(close) => frame::encode(FrameType::CloseErr, &close.encode(), &mut last),
            Tell::RecvClosed => frame::encode(FrameType::RecvClosed, &[], &mut last),
            Tell::Nothing => {}
        }
        // Most often the stream takes the frame and its end at once, from this task; only a
        // stream that makes us wait gets a task to finish it. A failed write still ends it.
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let mut write_pending = false;
        while !last.is_empty() {
            match Pin::new(&mut write).poll_write(&mut cx, &last) {
                Poll::Ready(Ok(n)) if n > 0 => last.advance(n),
                Poll::Ready(_) => last.clear(),
                Poll::Pending => {
                    write_pending = true;
                    break;
                }
            }
        }
        if !write_pending
            && Pin::new(&mut write).poll_flush(&mut cx).is_ready()
            && Pin::new(&mut write).poll_shutdown(&mut cx).is_ready()
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            if !last.is_empty() && write.write_all(&last).await.is_ok() {
                let _ = write.flush().await;
            }
            let _ = write.shutdown().await;
            drop((reader, permit));
        });
    }
}

impl Drop for NetReceiver {
    fn drop(&mut self) {
        self.end(Tell::RecvClosed);
    }
}

/// What a receiver ending its side of a channel tells the sender.
enum Tell {
    /// Nothing: the sender ended the channel, or it failed.
    Nothing,
    /// RECV_CLOSED: stop sending.
    RecvClosed,
    /// CLOSE_ERR: stop sending, for this reason.
    CloseErr(CloseErr),
}

/// A message that did not decode.
pub(crate) struct Undecoded {
    pub(crate) error: RecvError,
    /// The code the sender is told with CLOSE_ERR, when it broke something it can fix: its
    /// encoder (`Decode`) or a limit (`TooLarge`).
    pub(crate) code: Option<Code>,
}

impl From<RecvError> for Undecoded {
    fn from(error: RecvError) -> Self {
        Self { error, code: None }
    }
}

pub(crate) fn decode<T: Message>(
    session: &Arc<SessionInner>,
    parent: u64,
    payload: &[u8],
) -> Result<T, Undecoded> {
    let refused = |code, why| Undecoded { error: RecvError::Protocol(why), code: Some(code) };
    let untyped_left = crate::value::check_items::<T>(payload, &session.limits)
        .map_err(|why| refused(Code::TooLarge, why))?;
    let state = DecodeState {
        session: session.clone(),
        parent,
        claimed: Vec::new(),
        error: None,
        close: None,
        untyped_left,
    };
    let mut rest = payload;
    let depth = session.limits.max_depth;
    let (result, state) = context::decoding(state, || {
        ciborium::de::from_reader_with_recursion_limit::<T, _>(&mut rest, depth)
    });
    if let Some(error) = state.error {
        // A bad reference, the `Value`s over the item limit, or the type refused it
        // (`libchan::refuse`): the last two tell the sender why.
        return Err(Undecoded { error: RecvError::Protocol(error), code: state.close });
    }
    let value = result.map_err(|e| match e {
        ciborium::de::Error::RecursionLimitExceeded => {
            RecvError::Protocol(format!("message nested deeper than the limit of {depth}")).into()
        }
        // Not well-formed CBOR (or cut short): the sender's encoder is broken, not a type
        // that differs from ours, so the channel ends (PROTOCOL.md §7.1).
        ciborium::de::Error::Syntax(offset) => {
            refused(Code::Decode, format!("malformed CBOR at byte {offset}"))
        }
        ciborium::de::Error::Io(_) => {
            refused(Code::Decode, "malformed CBOR: item cut short".into())
        }
        other => RecvError::Decode(other.to_string()).into(),
    })?;
    if !rest.is_empty() {
        let why = format!("{} bytes after the message's CBOR item", rest.len());
        return Err(RecvError::Protocol(why).into());
    }
    Ok(value)
}

/// The value in a handle's slot. Only a message being sent holds a second reference to the
/// slot, and such a message owns the handle, so `&mut` access means the slot is unshared.
pub(crate) fn slot_mut<T>(slot: &mut Arc<Mutex<Option<T>>>) -> Option<&mut T> {
    match Arc::get_mut(slot) {
        Some(mutex) => mutex.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut(),
        None => None,
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind; carry on with it.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl crate::session::Starts for SendShared {
    fn start(self: Arc<Self>) {
        self.start_writer();
    }

    fn owes(&self) -> bool {
        lock(&self.state).owed.is_some()
    }
}
