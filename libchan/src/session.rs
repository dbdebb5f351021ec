//! A session: channels and byte streams multiplexed over one connection.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::future::BoxFuture;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;

use crate::chan::{Receiver, Sender};
use crate::context::Export;
use crate::framed::{read_control, write_frame, FrameReader, ReadError};
use crate::proto::{Accept, CloseErr, Code, Direction, FrameDecoder, FrameType, Kind, Open};
use crate::transport::{Arrival, BoxWrite, Hold, InboundRx, Mux, RawStream, Router};
use crate::{Limits, Message, OpenError};

/// A libchan session over one connection. Either side opens top-level channels with
/// [`open`](Self::open); the peer takes them with [`accept`](Self::accept). Channels and byte
/// streams sent inside messages travel on streams of their own.
///
/// The session lives while this handle or any channel on it lives; dropping everything closes
/// the connection.
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
    accept_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<(Open, RawStream)>>>,
}

/// A stream a decoded handle will run on: here already, or promised by the rendezvous table.
pub(crate) enum PendingStream {
    Ready(RawStream),
    Waiting(oneshot::Receiver<Result<RawStream, String>>),
}

impl PendingStream {
    pub(crate) async fn resolve(self) -> Result<RawStream, String> {
        match self {
            Self::Ready(stream) => Ok(stream),
            Self::Waiting(rx) => {
                rx.await.unwrap_or_else(|_| Err("session closed before the stream arrived".into()))
            }
        }
    }
}

pub(crate) struct SessionInner {
    pub limits: Limits,
    mux: Box<dyn Mux>,
    /// 1 on the dialing side (odd reference ids), 0 on the listening side (even).
    parity: u64,
    next_ref: AtomicU64,
    outbound: Arc<Semaphore>,
    /// Bounds the ACCEPTs owed on streams the peer opened (see `route`).
    owed_accepts: Arc<Semaphore>,
    rendezvous: Mutex<Rendezvous>,
    /// This side's control stream, once open: heartbeats, then the closing CLOSE_ERR.
    control: tokio::sync::Mutex<Option<BoxWrite>>,
    /// Set once the peer's control stream arrived; until then the idle timer runs on it.
    control_seen: watch::Sender<bool>,
    /// Peer reference ids already used, so a reuse is refused at once (PROTOCOL.md §6.2).
    retired: Mutex<Retired>,
    /// Set when a clean close starts: senders finish their streams, new sends and opens fail.
    draining: watch::Sender<bool>,
    /// Sender streams whose messages the peer has not yet read to the end (or refused), and
    /// handle streams still being opened: what a clean close waits for.
    in_flight: watch::Sender<usize>,
    /// Senders whose writer task has not started, by reference id: a clean close starts
    /// them, so that they end their streams.
    idle_senders: Mutex<HashMap<u64, Weak<dyn Starts>>>,
    /// Finished senders' waits for their receivers' end of the stream, each with its
    /// deadline (`drain_timeout`): what a writer task would wait out after its FIN.
    lingering: Mutex<std::collections::VecDeque<Lingering>>,
    closed: watch::Sender<Option<String>>,
    peer: String,
    peer_name: Option<String>,
}

/// Where a session's connection came from, for logs and access control.
pub(crate) struct PeerInfo {
    pub addr: String,
    pub name: Option<String>,
}

impl Session {
    /// Starts a session on a multiplexer; `dialer` is the side that connected.
    pub(crate) fn start(
        mux: Box<dyn Mux>,
        inbound: InboundRx,
        done: oneshot::Receiver<String>,
        dialer: bool,
        limits: Limits,
        peer: PeerInfo,
    ) -> Self {
        let per_side = limits.max_streams / 2;
        let (accept_tx, accept_rx) = mpsc::channel(limits.accept_queue);
        let inner = SessionInner::new(mux, dialer, limits, peer);
        let weak = Arc::downgrade(&inner);
        let taking = Arc::new(Taking { accept_tx, permits: Arc::new(Semaphore::new(per_side)) });
        inbound.set_router(router(weak.clone(), taking.clone()));
        tokio::spawn(serve_inbound(weak.clone(), inbound.rx, taking));
        tokio::spawn(heartbeat(inner.clone(), weak.clone()));
        tokio::spawn(expire_pending(weak.clone()));
        tokio::spawn(await_control(weak.clone()));
        tokio::spawn(async move {
            let reason = done.await.unwrap_or_else(|_| "connection driver stopped".into());
            if let Some(inner) = weak.upgrade() {
                inner.mark_closed(reason);
                inner.end_rendezvous();
            }
        });
        Self { inner, accept_rx: Arc::new(tokio::sync::Mutex::new(accept_rx)) }
    }

    /// Opens a top-level channel; its receiver appears at the peer's [`accept`](Self::accept).
    ///
    /// # Errors
    /// The session is closed, or this side has its share of the stream limit open.
    ///
    /// # Cancel safety
    /// Dropping the future before it completes abandons the stream; nothing is sent.
    pub async fn open<T: Message>(&self) -> Result<Sender<T>, OpenError> {
        let inner = &self.inner;
        if let Some(reason) = inner.closed.borrow().clone() {
            return Err(OpenError::SessionClosed(reason));
        }
        if *inner.draining.borrow() {
            return Err(OpenError::SessionClosed("session is closing".into()));
        }
        let permit = inner
            .outbound
            .clone()
            .try_acquire_owned()
            .map_err(|_| OpenError::TooManyStreams { limit: inner.limits.max_streams / 2 })?;
        let open = Open {
            kind: Kind::Channel,
            ref_id: inner.next_ref(),
            parent: 0,
            direction: Direction::OpenerSends,
            content_type: None,
        };
        let opened = match inner.mux.try_open() {
            Some(opened) => opened,
            None => inner.mux.open().await,
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(e) => return Err(OpenError::SessionClosed(inner.open_failed(&e).await)),
        };
        stream.permit = Some(permit);
        if let Err(e) = write_frame(&mut stream.write, FrameType::Open, &open.encode()).await {
            return Err(OpenError::SessionClosed(inner.open_failed(&e).await));
        }
        Ok(Sender::from_net(inner.clone(), open.ref_id, PendingStream::Ready(stream), true))
    }

    /// Waits for the next top-level channel the peer opened. `Ok(None)` once the session is
    /// closed and no opened channel is left.
    ///
    /// # Cancel safety
    /// Cancel safe: a channel is taken from the queue only when this returns it.
    pub async fn accept<T: Message>(&self) -> Option<Receiver<T>> {
        let (open, stream) = self.accept_rx.lock().await.recv().await?;
        Some(Receiver::from_net(
            self.inner.clone(),
            open.ref_id,
            PendingStream::Ready(stream),
            false,
        ))
    }

    /// The authenticated node name of the peer (from its certificate), on TLS and QUIC.
    pub fn peer_name(&self) -> Option<&str> {
        self.inner.peer_name.as_deref()
    }

    /// The peer's address, as the transport saw it.
    pub fn peer_addr(&self) -> &str {
        &self.inner.peer
    }

    /// The bytes the session's connection carried so far (see [`Traffic`] for what is
    /// counted on each transport).
    ///
    /// [`Traffic`]: crate::Traffic
    pub fn traffic(&self) -> crate::Traffic {
        self.inner.mux.traffic()
    }

    /// Why the session ended, or `None` while it is open.
    pub fn close_reason(&self) -> Option<String> {
        self.inner.closed.borrow().clone()
    }

    /// Waits until the session has ended; returns why.
    pub async fn closed(&self) -> String {
        let mut rx = self.inner.closed.subscribe();
        let result = rx.wait_for(Option::is_some).await.map(|r| r.clone());
        match result {
            Ok(Some(reason)) => reason,
            _ => "session dropped".into(),
        }
    }

    /// Closes the session cleanly: every message whose `send` returned `Ok` before this call
    /// reaches the peer first. Sends and opens fail from now on; every channel this side
    /// sends on ends (FIN after its queued messages) and the close waits, at most
    /// [`Limits::drain_timeout`], until the peer has read each one to its end or dropped its
    /// receiver. Then the peer learns the code and reason on the control stream, the
    /// connection closes and every channel on it ends. PROTOCOL.md §6.1.
    ///
    /// # Cancel safety
    /// Dropping the future during the drain leaves the session draining: sends keep failing
    /// and the connection stays up until it is closed again or dropped.
    pub async fn close(&self, code: Code, reason: &str) {
        self.inner.drain().await;
        self.inner.close(code, reason).await;
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.inner.peer)
            .field("peer_name", &self.inner.peer_name)
            .finish_non_exhaustive()
    }
}

impl SessionInner {
    pub(crate) fn next_ref(&self) -> u64 {
        self.next_ref.fetch_add(1, Ordering::Relaxed) * 2 + self.parity
    }

    pub(crate) fn decoder(&self) -> FrameDecoder {
        FrameDecoder {
            max_msg: self.limits.max_message_len + 1,
            max_control: self.limits.max_control_len + 1,
        }
    }

    /// Why the session ended, or `None` while it is open.
    pub(crate) fn close_reason(&self) -> Option<String> {
        self.closed.borrow().clone()
    }

    /// Why opening a stream failed with `error`: the transport fails opens once its
    /// connection is gone, a moment before the session learns why and records it, so wait
    /// (at most [`REASON_WAIT`]) for that reason rather than report the transport's bare
    /// "session closed".
    async fn open_failed(&self, error: &std::io::Error) -> String {
        match self.reason_within(REASON_WAIT).await {
            Some(reason) => reason,
            None => format!("opening a stream failed: {error}"),
        }
    }

    /// Why a stream cut by the loss of its connection failed with `error`: the session's
    /// reason, which follows the streams' failure by a moment, or `error` if none comes
    /// within [`LOSS_GRACE`] (a stream reset on its own).
    pub(crate) fn loss_reason(self: &Arc<Self>, error: String) -> BoxFuture<'static, String> {
        let session = self.clone();
        Box::pin(async move { session.reason_within(LOSS_GRACE).await.unwrap_or(error) })
    }

    /// Why the session ended, waiting at most `wait` for it to end.
    async fn reason_within(&self, wait: Duration) -> Option<String> {
        let mut closed = self.closed.subscribe();
        let ended = async move { closed.wait_for(Option::is_some).await.ok()?.clone() };
        tokio::time::timeout(wait, ended).await.ok().flatten()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }

    /// Closed, or draining for a clean close: nothing new may be sent.
    pub(crate) fn is_closing(&self) -> bool {
        *self.draining.borrow() || self.is_closed()
    }

    /// Watches for the start of a clean close.
    pub(crate) fn draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Records a sender whose writer task has not started (see [`Starts`]).
    pub(crate) fn register_idle(&self, ref_id: u64, sender: Weak<dyn Starts>) {
        lock(&self.idle_senders).insert(ref_id, sender);
    }

    pub(crate) fn unregister_idle(&self, ref_id: u64) {
        lock(&self.idle_senders).remove(&ref_id);
    }

    /// Keeps a finished sender's wait for its receiver's end of the stream (which holds the
    /// stream, its permit and its share of a clean close's wait) until it resolves, for at
    /// most `drain_timeout`. No task polls it: waits are checked, without waiting, as later
    /// ones come and by the periodic sweep, and a clean close runs what is left in a task. So
    /// a reply channel ends without a task switch, and its stream is let go a request or so
    /// later, once the peer's end of it has arrived. Each wait holds a stream the peer
    /// opened, so there are at most as many as the peer may have open.
    pub(crate) fn linger(&self, wait: BoxFuture<'static, ()>, runtime: &tokio::runtime::Handle) {
        if self.is_closing() {
            runtime.spawn(tokio::time::timeout(self.limits.drain_timeout, wait));
            return;
        }
        let deadline = Instant::now() + self.limits.drain_timeout;
        let mut lingering = lock(&self.lingering);
        reap(&mut lingering, REAP_EACH, None);
        lingering.push_back(Lingering { wait, deadline });
    }

    /// Counts a stream a clean close must wait for, until the guard is dropped.
    pub(crate) fn in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.send_modify(|n| *n += 1);
        InFlight { session: Arc::downgrade(self) }
    }

    /// Starts a clean close and waits until every sender stream was read to its end by the
    /// peer (or refused), for at most `drain_timeout`.
    async fn drain(&self) {
        if self.is_closed() {
            return;
        }
        self.draining.send_replace(true);
        // Idle senders end their streams, and lingering waits now run with a task's waker.
        let idle = std::mem::take(&mut *lock(&self.idle_senders));
        idle.into_values().filter_map(|sender| sender.upgrade()).for_each(Starts::start);
        let lingering = std::mem::take(&mut *lock(&self.lingering));
        if !lingering.is_empty() {
            let waits = futures::future::join_all(lingering.into_iter().map(|l| l.wait));
            tokio::spawn(tokio::time::timeout(self.limits.drain_timeout, waits));
        }
        let mut in_flight = self.in_flight.subscribe();
        let mut closed = self.closed.subscribe();
        let drained = tokio::time::timeout(self.limits.drain_timeout, async {
            tokio::select! {
                _ = in_flight.wait_for(|n| *n == 0) => {}
                _ = closed.wait_for(Option::is_some) => {}
            }
        })
        .await;
        if drained.is_err() {
            let left = *self.in_flight.borrow();
            tracing::warn!(
                peer = %self.peer,
                left,
                seconds = self.limits.drain_timeout.as_secs_f64(),
                "closing before the peer read every channel"
            );
        }
    }

    /// Marks the session closed and closes its connection, if it is still up; on QUIC the
    /// peer then reads `reason` in the CONNECTION_CLOSE.
    fn mark_closed(&self, reason: String) {
        self.set_closed(reason.clone());
        self.mux.close(Code::Ok, &reason);
    }

    /// Marks the session closed by the peer's CLOSE_ERR and leaves the connection to the peer
    /// to end, which it does right after: yamux does not order streams against each other, so
    /// frames the peer sent before its CLOSE_ERR on other streams (the end of a byte stream)
    /// may still be on the way. After [`PEER_CLOSE_LINGER`] this side closes it.
    fn mark_closed_by_peer(self: &Arc<Self>, reason: String) {
        self.set_closed(reason);
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(PEER_CLOSE_LINGER).await;
            if let Some(inner) = weak.upgrade() {
                inner.mux.close(Code::Ok, "session closed");
            }
        });
    }

    fn set_closed(&self, reason: String) {
        self.closed.send_if_modified(|state| {
            if state.is_none() {
                tracing::debug!(peer = %self.peer, %reason, "session closed");
                *state = Some(reason);
                true
            } else {
                false
            }
        });
    }

    async fn close(&self, code: Code, reason: &str) {
        if self.is_closed() {
            return;
        }
        let close = CloseErr { code, message: reason.to_string() };
        // On the control stream the heartbeats go on (a session closing this early, before it
        // is open, closes without telling; QUIC still carries the code).
        let control = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
            if let Some(write) = self.control.lock().await.as_mut() {
                let _ = write_frame(write, FrameType::CloseErr, &close.encode()).await;
                let _ = write.shutdown().await;
            }
        });
        let _ = control.await;
        // The reason first: streams the close cuts then fail with it, not with the
        // transport's bare word for a local close.
        self.set_closed(format!("closed locally with {code}: {reason}"));
        self.mux.close(code, reason);
    }

    /// Opens streams for a message's exports. Takes every stream permit first, so on failure
    /// nothing was opened. The handles whose streams opened at once come back as [`Started`],
    /// for the sender to run once it let go of its channel's lock.
    pub(crate) fn commit(
        self: &Arc<Self>,
        exports: Vec<Export>,
    ) -> Result<Committed, crate::SendFailure> {
        let mut started = Vec::new();
        if exports.is_empty() {
            return Ok(Committed { started, _hold: None });
        }
        if self.is_closing() {
            return Err(crate::SendFailure::Closed);
        }
        let mut permits = Vec::with_capacity(exports.len());
        for _ in 0..exports.len() {
            match self.outbound.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => {
                    return Err(crate::SendFailure::TooManyStreams {
                        limit: self.limits.max_streams / 2,
                    })
                }
            }
        }
        // The OPENs and the message naming them leave together.
        let hold = self.mux.hold();
        for (export, permit) in exports.into_iter().zip(permits) {
            let session = self.clone();
            let mut open = BytesMut::new();
            crate::proto::frame::encode(FrameType::Open, &export.open.encode(), &mut open);
            // Where the transport can open a stream without waiting (QUIC always, yamux when
            // its connection is free), the OPEN goes out now, ahead of the message naming
            // it, and the peer pairs them sooner.
            let mut opened = self.mux.try_open().and_then(Result::ok);
            if let Some(stream) = opened.as_mut() {
                let mut cx = Context::from_waker(futures::task::noop_waker_ref());
                if let Poll::Ready(Ok(n)) = Pin::new(&mut stream.write).poll_write(&mut cx, &open) {
                    open.advance(n);
                }
            }
            let in_flight = self.in_flight();
            if let Some(mut stream) = opened.take_if(|_| open.is_empty()) {
                stream.permit = Some(permit);
                let start = (export.start)(session, export.open.ref_id, stream);
                started.push(Started { start, in_flight });
                continue;
            }
            tokio::spawn(async move {
                let opened = match opened {
                    Some(stream) => Ok(stream),
                    None => session.mux.open().await,
                };
                let mut stream = match opened {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot open stream for a sent handle");
                        return;
                    }
                };
                stream.permit = Some(permit);
                if stream.write.write_all(&open).await.is_err() {
                    return;
                }
                // The handle's own stream counts for the drain from its first poll on.
                let mut start = (export.start)(session, export.open.ref_id, stream);
                let first = futures::poll!(start.as_mut());
                drop(in_flight);
                if first.is_pending() {
                    start.await;
                }
            });
        }
        Ok(Committed { started, _hold: hold })
    }

    /// Pairs a reference named in a message with its stream. `direction` is the OPEN's.
    pub(crate) fn claim(
        &self,
        ref_id: u64,
        parent: u64,
        kind: Kind,
        direction: Direction,
    ) -> Result<PendingStream, String> {
        if ref_id % 2 == self.parity {
            return Err(format!("reference {ref_id} has this side's parity"));
        }
        if ref_id == 0 {
            return Err("reference 0 is reserved".into());
        }
        if lock(&self.retired).contains(ref_id) {
            return Err(format!("reference {ref_id} was already used"));
        }
        let mut table = lock(&self.rendezvous);
        if table.ended {
            // Its stream cannot come: the handle fails when used, as one waiting would have.
            let (_, rx) = oneshot::channel();
            return Ok(PendingStream::Waiting(rx));
        }
        let expect = Expect { parent, kind, direction };
        match table.entries.remove(&ref_id) {
            Some(Entry::Arrived { open, stream, .. }) => {
                lock(&self.retired).insert(ref_id);
                expect.check(&open)?;
                Ok(PendingStream::Ready(stream))
            }
            Some(awaited @ Entry::Awaited { .. }) => {
                table.entries.insert(ref_id, awaited);
                Err(format!("reference {ref_id} claimed twice"))
            }
            None => {
                if table.entries.len() >= self.limits.max_pending_refs {
                    return Err(format!(
                        "more than {} references pending",
                        self.limits.max_pending_refs
                    ));
                }
                let (tx, rx) = oneshot::channel();
                let deadline = Instant::now() + self.limits.pending_ref_ttl;
                table.entries.insert(ref_id, Entry::Awaited { expect, tx, deadline });
                Ok(PendingStream::Waiting(rx))
            }
        }
    }

    /// Holds the connection's writes back until the guard drops, so that frames written
    /// meanwhile leave together (see `Mux::hold`).
    pub(crate) fn hold(&self) -> Option<crate::transport::Hold> {
        self.mux.hold()
    }

    /// A session with no connection under it: opening a stream fails, no task runs. Only for
    /// [`crate::fuzz_support`], which decodes messages through the same rendezvous table a
    /// connected session uses; a real session is made by [`Session::start`].
    pub(crate) fn detached(mux: Box<dyn Mux>, dialer: bool, limits: Limits) -> Arc<Self> {
        Self::new(mux, dialer, limits, PeerInfo { addr: "detached".into(), name: None })
    }

    /// The session's state, with no task started.
    fn new(mux: Box<dyn Mux>, dialer: bool, limits: Limits, peer: PeerInfo) -> Arc<Self> {
        Arc::new(Self {
            mux,
            parity: u64::from(dialer),
            next_ref: AtomicU64::new(1),
            outbound: Arc::new(Semaphore::new(limits.max_streams / 2)),
            owed_accepts: Arc::new(Semaphore::new(OWED_ACCEPTS)),
            rendezvous: Mutex::new(Rendezvous::default()),
            control: tokio::sync::Mutex::new(None),
            draining: watch::channel(false).0,
            control_seen: watch::channel(false).0,
            retired: Mutex::new(Retired::default()),
            in_flight: watch::channel(0).0,
            idle_senders: Mutex::new(HashMap::new()),
            lingering: Mutex::new(std::collections::VecDeque::new()),
            closed: watch::channel(None).0,
            peer: peer.addr,
            peer_name: peer.name,
            limits,
        })
    }

    /// A nested stream arrived (ACCEPT already sent): hand it to its claimant or park it.
    pub(crate) fn arrive(&self, open: Open, stream: RawStream) -> Result<(), String> {
        let mut table = lock(&self.rendezvous);
        match table.entries.remove(&open.ref_id) {
            Some(Entry::Awaited { expect, tx, .. }) => {
                lock(&self.retired).insert(open.ref_id);
                let result = expect.check(&open).map(|()| stream);
                let error = result.as_ref().err().cloned();
                let _ = tx.send(result);
                error.map_or(Ok(()), Err)
            }
            Some(arrived @ Entry::Arrived { .. }) => {
                table.entries.insert(open.ref_id, arrived);
                Err(format!("reference {} opened twice", open.ref_id))
            }
            // Its channel ended while the ACCEPT was written (`route`): refused after all,
            // as `may_arrive` would have.
            None if table.ended_channels.contains(open.parent) => Err(format!(
                "reference {} belongs to channel {}, which has ended",
                open.ref_id, open.parent
            )),
            None => {
                if table.entries.len() >= self.limits.max_pending_refs {
                    return Err(format!(
                        "more than {} references pending",
                        self.limits.max_pending_refs
                    ));
                }
                let deadline = Instant::now() + self.limits.pending_ref_ttl;
                table.entries.insert(open.ref_id, Entry::Arrived { open, stream, deadline });
                Ok(())
            }
        }
    }

    /// The connection is gone, so no referenced stream arrives any more (and the TTL sweep
    /// has stopped with the session): handles waiting for theirs fail now, with the
    /// session's reason, parked streams are dropped, and handles named later fail at once.
    fn end_rendezvous(&self) {
        let entries = {
            let mut table = lock(&self.rendezvous);
            table.ended = true;
            std::mem::take(&mut table.entries)
        };
        drop(entries);
    }

    /// Whether a nested stream may be taken in (before its ACCEPT): its handle waits for it,
    /// or it can be parked.
    fn may_arrive(&self, open: &Open) -> Result<(), String> {
        let table = lock(&self.rendezvous);
        if table.entries.contains_key(&open.ref_id) {
            return Ok(());
        }
        if table.ended_channels.contains(open.parent) {
            return Err(format!(
                "reference {} belongs to channel {}, which has ended",
                open.ref_id, open.parent
            ));
        }
        if table.entries.len() >= self.limits.max_pending_refs {
            return Err(format!("more than {} references pending", self.limits.max_pending_refs));
        }
        Ok(())
    }

    /// The peer's channel `channel` ended here (it finished, failed, or its receiver went
    /// away): no more of its messages are decoded, so streams they named that no handle
    /// claimed never will be. Those parked are dropped now, and those still to come are
    /// refused, rather than each waiting for the TTL while its sender waits on it.
    pub(crate) fn channel_ended(&self, channel: u64) {
        let parked: Vec<(u64, Entry)> = {
            let mut table = lock(&self.rendezvous);
            table.ended_channels.insert(channel);
            table
                .entries
                .extract_if(|_, entry| {
                    matches!(entry, Entry::Arrived { open, .. } if open.parent == channel)
                })
                .collect()
        };
        drop(parked);
    }
}

/// What a sender finishes once the message is written and its channel's lock released.
pub(crate) struct Committed {
    started: Vec<Started>,
    /// Released last, after the message was written next to its OPENs.
    _hold: Option<Hold>,
}

impl Committed {
    pub(crate) fn run(self) {
        self.started.into_iter().for_each(Started::run);
    }
}

/// The local side of a sent handle whose stream is open, not yet polled.
struct Started {
    start: futures::future::BoxFuture<'static, ()>,
    in_flight: InFlight,
}

impl Started {
    /// Polls the handle's start once in the caller's task (a pipe's receiver then holds the
    /// stream before `send` returns, with no task hand-off); only a start that has to wait
    /// gets a task of its own. The stream counts for the drain from this first poll on.
    fn run(mut self) {
        // A start that waits is polled again at once by its task, with the task's waker.
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let first = self.start.as_mut().poll(&mut cx);
        drop(self.in_flight);
        if first.is_pending() {
            tokio::spawn(self.start);
        }
    }
}

/// A sender whose writer task has not started yet; a clean close starts it.
pub(crate) trait Starts: Send + Sync {
    fn start(self: Arc<Self>);
    /// Whether it still owes its stream's ACCEPT (see `route`).
    fn owes(&self) -> bool;
}

/// See [`SessionInner::linger`].
struct Lingering {
    wait: BoxFuture<'static, ()>,
    deadline: Instant,
}

/// How many lingering waits each new one checks.
const REAP_EACH: usize = 4;

/// Polls up to `at_most` lingering waits, oldest first, without a waker, and lets go of those
/// that resolved, and of those past their deadline as of `now`.
fn reap(
    lingering: &mut std::collections::VecDeque<Lingering>,
    at_most: usize,
    now: Option<Instant>,
) {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    let (mut at, mut checked) = (0, 0);
    while at < lingering.len() && checked < at_most {
        checked += 1;
        let entry = &mut lingering[at];
        if entry.wait.as_mut().poll(&mut cx).is_ready()
            || now.is_some_and(|now| entry.deadline <= now)
        {
            drop(lingering.remove(at));
        } else {
            at += 1;
        }
    }
}

/// Keeps a clean close waiting while it lives (see [`SessionInner::in_flight`]).
pub(crate) struct InFlight {
    session: Weak<SessionInner>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(session) = self.session.upgrade() {
            session.in_flight.send_modify(|n| *n = n.saturating_sub(1));
        }
    }
}

impl Drop for SessionInner {
    fn drop(&mut self) {
        self.mux.close(Code::Ok, "session dropped");
    }
}

/// The most recent peer reference ids used (claimed, accepted, expired), kept to refuse a
/// reuse at once. Bounded: the oldest are forgotten past `RETIRED_KEPT`; the peer's ids are
/// unique, so this only shortens how long a misbehaving peer is caught.
#[derive(Default)]
struct Retired {
    ids: std::collections::HashSet<u64>,
    order: std::collections::VecDeque<u64>,
}

impl Retired {
    fn contains(&self, id: u64) -> bool {
        self.ids.contains(&id)
    }

    fn insert(&mut self, id: u64) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            if self.order.len() > RETIRED_KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }
}

#[derive(Default)]
struct Rendezvous {
    entries: HashMap<u64, Entry>,
    /// Set once the connection is gone (see [`SessionInner::end_rendezvous`]).
    ended: bool,
    /// The peer's channels that ended here, the most recent first forgotten last (see
    /// [`SessionInner::channel_ended`]).
    ended_channels: Retired,
}

enum Entry {
    Arrived { open: Open, stream: RawStream, deadline: Instant },
    Awaited { expect: Expect, tx: oneshot::Sender<Result<RawStream, String>>, deadline: Instant },
}

struct Expect {
    parent: u64,
    kind: Kind,
    direction: Direction,
}

impl Expect {
    fn check(&self, open: &Open) -> Result<(), String> {
        if open.parent != self.parent {
            return Err(format!(
                "reference {} belongs to channel {}, not to channel {} that named it",
                open.ref_id, open.parent, self.parent
            ));
        }
        if open.kind != self.kind || open.direction != self.direction {
            return Err(format!(
                "reference {} is a {:?} ({:?}) where a {:?} ({:?}) was expected",
                open.ref_id, open.kind, open.direction, self.kind, self.direction
            ));
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind; carry on with it.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What taking in a peer-opened stream needs: the accept queue, and the streams a peer may
/// have open on this side.
struct Taking {
    accept_tx: mpsc::Sender<(Open, RawStream)>,
    permits: Arc<Semaphore>,
}

/// Takes a stream in from the transport's task as far as that goes without waiting (see
/// [`crate::transport::Inbound`]).
fn router(session: Weak<SessionInner>, taking: Arc<Taking>) -> Router {
    Box::new(move |stream| {
        let inner = session.upgrade()?;
        let mut rest: BoxFuture<'static, ()> = Box::pin(take_in(inner, stream, taking.clone()));
        // What waits is polled again by the inbound task, with its waker, right away.
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        rest.as_mut().poll(&mut cx).is_pending().then_some(rest)
    })
}

/// Takes the peer-opened streams the router could not finish. Streams are served side by
/// side in this one task, so a peer that never writes holds up nothing but its own stream
/// (and only until `open_timeout`).
async fn serve_inbound(
    session: Weak<SessionInner>,
    mut inbound: mpsc::Receiver<Arrival>,
    taking: Arc<Taking>,
) {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut opening = FuturesUnordered::new();
    loop {
        let arrival = tokio::select! {
            biased;
            Some(()) = opening.next(), if !opening.is_empty() => continue,
            arrival = inbound.recv() => match arrival {
                Some(arrival) => arrival,
                None => return,
            },
        };
        match arrival {
            Arrival::Rest(rest) => opening.push(rest),
            Arrival::Stream(stream) => {
                let Some(inner) = session.upgrade() else { return };
                opening.push(Box::pin(take_in(inner, stream, taking.clone())));
            }
        }
    }
}

/// Takes a peer-opened stream through its OPEN frame, then routes it.
async fn take_in(inner: Arc<SessionInner>, mut stream: RawStream, taking: Arc<Taking>) {
    // Counted from its arrival: streams waiting for their OPEN count too.
    let permit = taking.permits.clone().try_acquire_owned();
    let limits = &inner.limits;
    let first = tokio::time::timeout(
        limits.open_timeout,
        read_control(&mut stream.read, limits.max_control_len),
    )
    .await;
    let open = match first {
        Ok(Ok((FrameType::Open, payload))) => match Open::decode(&payload) {
            Ok(open) => open,
            Err(e) => return refuse(stream, Code::Protocol, &e.to_string(), &inner).await,
        },
        Ok(Ok((ty, _))) => {
            let why = format!("first frame is {ty:?}, not OPEN");
            return refuse(stream, Code::Protocol, &why, &inner).await;
        }
        Ok(Err(ReadError::Frame(e))) => {
            return refuse(stream, Code::Protocol, &e.to_string(), &inner).await
        }
        Ok(Err(ReadError::Io(_))) => return,
        Err(_) => {
            tracing::warn!(peer = %inner.peer, "stream sent no OPEN within the timeout");
            return;
        }
    };
    match permit {
        Ok(permit) => stream.permit = Some(permit),
        Err(_) => {
            if open.kind == Kind::Channel
                && open.parent == 0
                && open.ref_id != 0
                && open.ref_id % 2 != inner.parity
            {
                // A top-level channel of the peer's, as for a full accept queue (`route`).
                inner.channel_ended(open.ref_id);
            }
            let why =
                format!("over the limit of {} streams per side", inner.limits.max_streams / 2);
            return refuse(stream, Code::TooManyStreams, &why, &inner).await;
        }
    }
    route(inner, open, stream, &taking.accept_tx).await;
}

async fn route(
    inner: Arc<SessionInner>,
    open: Open,
    mut stream: RawStream,
    accept_tx: &mpsc::Sender<(Open, RawStream)>,
) {
    if open.ref_id % 2 == inner.parity && open.kind != Kind::Control {
        let why = format!("reference {} has the acceptor's parity", open.ref_id);
        return refuse(stream, Code::Protocol, &why, &inner).await;
    }
    // PROTOCOL.md §6.2: 0 is reserved, and an id is used once.
    if open.ref_id == 0 && open.kind != Kind::Control {
        let why = "reference 0 is reserved";
        return refuse(stream, Code::Protocol, why, &inner).await;
    }
    if open.kind != Kind::Control && lock(&inner.retired).contains(open.ref_id) {
        let why = format!("reference {} was already used", open.ref_id);
        return refuse(stream, Code::Protocol, &why, &inner).await;
    }
    match open.kind {
        Kind::Control => {
            inner.control_seen.send_replace(true);
            let _ = write_frame(&mut stream.write, FrameType::Accept, &Accept::ok().encode()).await;
            tokio::spawn(watch_control(inner, stream));
        }
        _ if open.parent == 0 => {
            if open.kind != Kind::Channel || open.direction != Direction::OpenerSends {
                let why = "a top-level stream must be a channel the opener sends on";
                return refuse(stream, Code::Protocol, why, &inner).await;
            }
            let Ok(slot) = accept_tx.try_reserve() else {
                tracing::warn!(peer = %inner.peer, "accept queue full, refusing a channel");
                // Nothing it carries is decoded: the streams its messages name are refused
                // at once, not kept until their TTL (their openers learn of it at once too).
                inner.channel_ended(open.ref_id);
                let why = format!("accept queue of {} is full", inner.limits.accept_queue);
                return refuse(stream, Code::AcceptQueueFull, &why, &inner).await;
            };
            // An opener that already sent everything and closed may have stopped reading
            // (QUIC's STOP_SENDING): the ACCEPT is then lost, but what it sent is not.
            let _ = write_frame(&mut stream.write, FrameType::Accept, &Accept::ok().encode()).await;
            lock(&inner.retired).insert(open.ref_id);
            slot.send((open, stream));
        }
        _ => {
            if let Err(why) = inner.may_arrive(&open) {
                return refuse(stream, Code::Rendezvous, &why, &inner).await;
            }
            // A channel this side sends on owes its ACCEPT until its first frame, which it
            // then leads (PROTOCOL.md §5.2): a reply goes out with its ACCEPT in one write.
            // The peer's yamux holds opens back while 256 of its streams have had no frame
            // from here, so at most `OWED_ACCEPTS` wait; the rest are accepted at once.
            let owes = open.kind == Kind::Channel && open.direction == Direction::AcceptorSends;
            stream.owed =
                owes.then(|| inner.owed_accepts.clone().try_acquire_owned().ok()).flatten();
            if stream.owed.is_none() {
                // As above: a failed ACCEPT does not lose what the opener sent.
                let accept = Accept::ok().encode();
                let _ = write_frame(&mut stream.write, FrameType::Accept, &accept).await;
            }
            if let Err(why) = inner.arrive(open, stream) {
                tracing::warn!(peer = %inner.peer, %why, "nested stream refused");
            }
        }
    }
}

async fn refuse(mut stream: RawStream, code: Code, why: &str, inner: &SessionInner) {
    tracing::warn!(peer = %inner.peer, %code, why, "refusing a stream");
    let accept = Accept::refuse(code, why);
    let _ = write_frame(&mut stream.write, FrameType::Accept, &accept.encode()).await;
    let _ = stream.write.shutdown().await;
}

/// Reads the peer's control stream: heartbeats keep the session alive, CLOSE_ERR ends it.
async fn watch_control(inner: Arc<SessionInner>, stream: RawStream) {
    let weak = Arc::downgrade(&inner);
    let idle = inner.limits.idle_timeout;
    let mut reader = FrameReader::new(stream.read, inner.decoder());
    drop(inner);
    let _write = stream.write;
    loop {
        let next = tokio::time::timeout(idle, reader.next_frame()).await;
        let Some(inner) = weak.upgrade() else { return };
        let reason = match next {
            Ok(Ok(Some((FrameType::Ping, _)))) => continue,
            Ok(Ok(Some((FrameType::CloseErr, payload)))) => {
                let reason = match CloseErr::decode(&payload) {
                    Ok(close) => format!("closed by peer with {}: {}", close.code, close.message),
                    Err(e) => format!("peer closed with a malformed CLOSE_ERR: {e}"),
                };
                inner.mark_closed_by_peer(reason);
                return;
            }
            Ok(Ok(Some((ty, _)))) => format!("protocol violation: {ty:?} on the control stream"),
            // PROTOCOL.md §6.1: the control stream lives as long as the session.
            Ok(Ok(None)) => "peer ended its control stream without CLOSE_ERR".to_string(),
            // A lost connection resets every stream on yamux and fails it on QUIC: the
            // connection's own reason, which follows at once, says more.
            Ok(Err(ReadError::Io(e)))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::NotConnected
                ) =>
            {
                let _ = inner.reason_within(LOSS_GRACE).await;
                format!("control stream lost: {e}")
            }
            Ok(Err(e)) => {
                let e = crate::RecvError::from(e);
                format!("control stream failed: {e}")
            }
            Err(_) => {
                let reason = format!("no heartbeat from peer for {:.1} s", idle.as_secs_f64());
                tracing::warn!(peer = %inner.peer, %reason, "closing idle session");
                inner.close(Code::IdleTimeout, &reason).await;
                return;
            }
        };
        inner.mark_closed(reason);
        return;
    }
}

/// How long a session closed by its peer leaves the connection to the peer to end.
const PEER_CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How long a reset control stream waits for the connection's own reason for ending.
const LOSS_GRACE: Duration = Duration::from_millis(200);

/// Opens this side's control stream and writes a heartbeat every interval.
async fn heartbeat(inner: Arc<SessionInner>, weak: Weak<SessionInner>) {
    let interval = inner.limits.heartbeat_interval;
    let opened = inner.mux.open().await;
    let Ok(mut stream) = opened else { return };
    let open = Open {
        kind: Kind::Control,
        ref_id: 0,
        parent: 0,
        direction: Direction::OpenerSends,
        content_type: None,
    };
    if write_frame(&mut stream.write, FrameType::Open, &open.encode()).await.is_err() {
        return;
    }
    // The read half carries only the peer's ACCEPT; keep it so the stream stays open.
    let _read = stream.read;
    *inner.control.lock().await = Some(stream.write);
    drop(inner);
    loop {
        tokio::time::sleep(interval).await;
        let inner = match weak.upgrade() {
            Some(inner) if !inner.is_closed() => inner,
            _ => return,
        };
        let mut control = inner.control.lock().await;
        let Some(write) = control.as_mut() else { return };
        if write_frame(write, FrameType::Ping, &[]).await.is_err() {
            return;
        }
    }
}

/// Closes the session when the peer's control stream has not arrived within `idle_timeout`:
/// the idle timer of §6.1 runs from the start of the session, not only once the stream is
/// here.
async fn await_control(session: Weak<SessionInner>) {
    let (mut seen, idle) = match session.upgrade() {
        Some(inner) => (inner.control_seen.subscribe(), inner.limits.idle_timeout),
        None => return,
    };
    if tokio::time::timeout(idle, seen.wait_for(|seen| *seen)).await.is_ok() {
        return;
    }
    let Some(inner) = session.upgrade() else { return };
    if inner.is_closed() {
        return;
    }
    let reason = format!("no control stream from peer within {:.1} s", idle.as_secs_f64());
    tracing::warn!(peer = %inner.peer, %reason, "closing idle session");
    inner.close(Code::IdleTimeout, &reason).await;
}

/// Drops pending references older than their TTL: parked streams are reset, waiting handles
/// get an error.
async fn expire_pending(session: Weak<SessionInner>) {
    loop {
        let ttl = match session.upgrade() {
            Some(inner) if !inner.is_closed() => inner.limits.pending_ref_ttl,
            _ => return,
        };
        tokio::time::sleep((ttl / 4).max(Duration::from_millis(100))).await;
        let Some(inner) = session.upgrade() else { return };
        let now = Instant::now();
        reap(&mut lock(&inner.lingering), usize::MAX, Some(now));
        // A reply sender kept long before its first send (a subscription's, say) sends the
        // ACCEPT it owes now: it holds neither the peer's stream unacknowledged nor a share
        // of the session's owed ACCEPTs for longer than this sweep's period.
        let idle: Vec<Arc<dyn Starts>> =
            lock(&inner.idle_senders).values().filter_map(Weak::upgrade).collect();
        for sender in idle.into_iter().filter(|sender| sender.owes()) {
            sender.start();
        }
        let expired: Vec<(u64, Entry)> = lock(&inner.rendezvous)
            .entries
            .extract_if(|_, entry| match entry {
                Entry::Arrived { deadline, .. } | Entry::Awaited { deadline, .. } => {
                    *deadline <= now
                }
            })
            .collect();
        for (ref_id, entry) in expired {
            tracing::warn!(peer = %inner.peer, ref_id, "reference not paired within its TTL");
            lock(&inner.retired).insert(ref_id);
            if let Entry::Awaited { tx, .. } = entry {
                let ttl = inner.limits.pending_ref_ttl.as_secs_f64();
                let _ = tx.send(Err(format!(
                    "referenced stream {ref_id} did not arrive within {ttl:.1} s"
                )));
            }
        }
    }
}

/// How long a closing session waits to write its CLOSE_ERR.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Peer reference ids remembered as used, and channels remembered as ended: about 26 bytes
/// each with the hash set's spare room, about 106 KiB per set once full. (65,536 made each set
/// grow to 1.7 MiB on a busy session, two per session.)
const RETIRED_KEPT: usize = 4096;
/// The most ACCEPTs a session owes at once on streams the peer opened (see `route`).
const OWED_ACCEPTS: usize = 64;
/// How long a failed open waits for the session to record why its connection ended.
const REASON_WAIT: Duration = Duration::from_secs(2);
