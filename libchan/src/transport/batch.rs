//! A yamux connection's socket whose writes leave in batches.
//!
//! rust-yamux writes every frame as two writes (its 12-byte header, then the body) and flushes
//! after each frame. Straight on a socket that is a system call per write, and over rustls a TLS
//! record per write as well. [`Batched`] gathers those writes in one buffer and treats yamux's
//! flushes as no-ops; whoever polls the connection (the driver, or a bulk stream from its own
//! task) writes the buffer out with [`Batched::poll_send`] at the end of each poll, so every
//! frame yamux produced in one poll leaves in one write. A large body leaves in one vectored
//! write with the batch before it (its header, at least): over rustls header and body then
//! fill full TLS records together.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A socket shared by the yamux connection (which reads and writes it) and whoever polls the
/// connection (which sends what the connection wrote). Both only touch it while holding the
/// connection's lock, so its own lock is never contended.
pub(crate) struct Batched<S> {
    inner: Arc<Mutex<Inner<S>>>,
}

struct Inner<S> {
    io: S,
    /// Bytes written by yamux and not yet handed to `io`; at most [`BATCH_LEN`].
    out: Vec<u8>,
    /// How much of `out` `io` has taken.
    sent: usize,
    /// The error of a send the driver made, for yamux to see at its next flush.
    failed: Option<io::Error>,
    /// Bytes read ahead for yamux's small reads, on a socket that buffers nothing itself.
    ahead: Option<ReadAhead>,
}

/// What one read of the socket brought beyond what yamux asked for.
///
/// yamux reads a frame's 12-byte header, then its body, each as a read of its own, and reads
/// once more to learn that nothing is left: on a plain socket three system calls for a small
/// message. Reading ahead into this buffer takes every frame that is here in one call, and a
/// read that comes back short tells tokio the socket is drained, so the third call goes too.
/// TLS streams buffer what they decrypt already, so they read directly.
struct ReadAhead {
    buf: Box<[u8]>,
    /// The unread bytes are `buf[at..end]`.
    at: usize,
    end: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Batched<S> {
    /// `read_ahead`: `io` is a plain socket, whose small reads are each a system call.
    pub(crate) fn new(io: S, read_ahead: bool) -> Self {
        let ahead = read_ahead.then(|| ReadAhead { buf: Box::default(), at: 0, end: 0 });
        let inner = Inner { io, out: Vec::new(), sent: 0, failed: None, ahead };
        Self { inner: Arc::new(Mutex::new(inner)) }
    }

    /// A second handle on the same socket.
    pub(crate) fn handle(&self) -> Self {
        Self { inner: self.inner.clone() }
    }

    /// Writes out everything buffered and flushes the socket. On an error, the next flush
    /// yamux makes fails with it too, so the connection ends and fails its streams.
    pub(crate) fn poll_send(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.lock();
        let sent = match inner.poll_write_out(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut inner.io).poll_flush(cx),
            other => other,
        };
        if let Poll::Ready(Err(e)) = &sent {
            inner.failed = Some(io::Error::new(e.kind(), e.to_string()));
        }
        sent
    }

    fn lock(&self) -> MutexGuard<'_, Inner<S>> {
        // Invariant: nothing panics while holding this lock; a poisoned lock still holds a
        // usable socket, which then reports its own errors.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: AsyncWrite + Unpin> Inner<S> {
    /// Hands `out` to the socket, without flushing it.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes `buf` after `out`, both in one vectored write while `out` is not all taken: over
    /// rustls the batch (yamux's header, at least) and the body then fill whole TLS records,
    /// instead of the header leaving in a short record and a system call of its own.
    fn poll_write_after_out(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        while self.sent < self.out.len() {
            let left = self.out.len() - self.sent;
            let parts = [io::IoSlice::new(&self.out[self.sent..]), io::IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &parts))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < left {
                self.sent += n;
                continue;
            }
            self.out.clear();
            self.sent = 0;
            if n > left {
                return Poll::Ready(Ok(n - left));
            }
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Batched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut inner = self.lock();
        let Inner { io, ahead, .. } = &mut *inner;
        let Some(ahead) = ahead else {
            // Over TLS most reads come from what rustls decrypted already, which costs the
            // task no budget: charge it here, as for a read from the buffer below.
            let coop = ready!(tokio::task::coop::poll_proceed(cx));
            let read = ready!(Pin::new(io).poll_read(cx, buf));
            coop.made_progress();
            return Poll::Ready(read);
        };
        if ahead.at == ahead.end {
            if buf.remaining() >= READ_AHEAD {
                // A bulk body: straight into yamux's buffer, one copy less.
                return Pin::new(io).poll_read(cx, buf);
            }
            if ahead.buf.is_empty() {
                ahead.buf = vec![0; READ_AHEAD].into_boxed_slice();
            }
            let mut into = ReadBuf::new(&mut ahead.buf);
            ready!(Pin::new(io).poll_read(cx, &mut into))?;
            (ahead.at, ahead.end) = (0, into.filled().len());
        }
        // A read from the buffer costs the task's budget as a socket read does: a burst of
        // frames read ahead still lets the tasks they wake run (the session's accept loop,
        // whose queue the burst's channels fill) instead of all being taken in first (the
        // conformance test `a_burst_of_channels_is_taken_in`).
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        coop.made_progress();
        let n = (ahead.end - ahead.at).min(buf.remaining());
        buf.put_slice(&ahead.buf[ahead.at..ahead.at + n]);
        ahead.at += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Batched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut inner = self.lock();
        if let Some(e) = inner.failed.take() {
            return Poll::Ready(Err(e));
        }
        if buf.len() >= DIRECT_LEN {
            // Large bodies go straight to the socket rather than through another copy.
            return inner.poll_write_after_out(cx, buf);
        }
        if inner.out.len() + buf.len() > BATCH_LEN {
            // What came before goes first. When the socket is full the writer waits here,
            // which is how yamux feels backpressure.
            ready!(inner.poll_write_out(cx))?;
        }
        inner.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    /// Deferred: the driver sends the batch at the end of its poll.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.lock().failed.take() {
            Some(e) => Poll::Ready(Err(e)),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.lock();
        if let Some(e) = inner.failed.take() {
            return Poll::Ready(Err(e));
        }
        ready!(inner.poll_write_out(cx))?;
        Pin::new(&mut inner.io).poll_shutdown(cx)
    }
}

/// Most bytes one read ahead takes; a read asking for at least as many reads directly.
const READ_AHEAD: usize = 16 * 1024;

/// Most bytes a batch holds; a write that does not fit sends the batch first.
const BATCH_LEN: usize = 64 * 1024;

/// Writes at least this long skip the batch (after sending it): bulk data frames cost one copy
/// less, and their header was a write of its own before batching too.
const DIRECT_LEN: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use futures::task::noop_waker_ref;

    use super::*;

    /// A socket that records each write it takes, a vectored one as one write, taking at most
    /// `room` bytes in all; a `broken` one fails every write.
    struct Recorder {
        writes: Vec<Vec<u8>>,
        room: usize,
        broken: bool,
    }

    impl Recorder {
        fn with_room(room: usize) -> Self {
            Self { writes: Vec::new(), room, broken: false }
        }

        fn take(&mut self, parts: &[&[u8]]) -> Poll<io::Result<usize>> {
            if self.broken {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let taken: Vec<u8> = parts.concat().into_iter().take(self.room).collect();
            if taken.is_empty() {
                return Poll::Pending;
            }
            self.room -= taken.len();
            let n = taken.len();
            self.writes.push(taken);
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.take(&[buf])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let parts: Vec<&[u8]> = bufs.iter().map(|buf| &buf[..]).collect();
            self.take(&parts)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write(socket: &mut Batched<Recorder>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(socket).poll_write(&mut Context::from_waker(noop_waker_ref()), bytes)
    }

    fn writes(socket: &Batched<Recorder>) -> Vec<Vec<u8>> {
        socket.lock().io.writes.clone()
    }

    #[test]
    fn frames_written_and_flushed_leave_in_one_write_when_sent() {
        let mut socket = Batched::new(Recorder::with_room(usize::MAX), false);
        let mut cx = Context::from_waker(noop_waker_ref());
        for part in [&b"header-1"[..], b"body-1", b"header-2", b"body-2"] {
            assert!(matches!(write(&mut socket, part), Poll::Ready(Ok(n)) if n == part.len()));
            assert!(Pin::new(&mut socket).poll_flush(&mut cx).is_ready());
        }
        assert!(writes(&socket).is_empty(), "yamux's flushes write nothing");
        assert!(matches!(socket.poll_send(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(writes(&socket), vec![b"header-1body-1header-2body-2".to_vec()]);
    }

    #[test]
    fn a_large_write_leaves_in_one_write_with_what_was_batched_before_it() {
        let mut socket = Batched::new(Recorder::with_room(usize::MAX), false);
        let body = vec![7u8; DIRECT_LEN];
        assert!(write(&mut socket, b"header").is_ready());
        assert!(matches!(write(&mut socket, &body), Poll::Ready(Ok(n)) if n == body.len()));
        assert_eq!(writes(&socket), vec![[&b"header"[..], &body].concat()]);
        assert!(write(&mut socket, &body).is_ready(), "with nothing batched the body goes alone");
        assert_eq!(writes(&socket).last(), Some(&body));
    }

    #[test]
    fn a_large_write_counts_only_its_own_bytes_when_the_socket_takes_part() {
        let mut socket = Batched::new(Recorder::with_room(4), false);
        let body = vec![7u8; DIRECT_LEN];
        assert!(write(&mut socket, b"header").is_ready());
        assert!(write(&mut socket, &body).is_pending(), "the socket took 4 bytes of the batch");
        socket.lock().io.room = 2 + 100;
        let written = write(&mut socket, &body);
        assert!(matches!(written, Poll::Ready(Ok(100))), "the rest of the batch is not counted");
        assert_eq!(writes(&socket).concat(), [&b"header"[..], &body[..100]].concat());
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(matches!(socket.poll_send(&mut cx), Poll::Ready(Ok(()))), "nothing is left");
    }

    #[test]
    fn a_full_batch_waits_for_the_socket() {
        let mut socket = Batched::new(Recorder::with_room(10), false);
        let small = vec![1u8; 1024];
        let mut taken = 0;
        while let Poll::Ready(Ok(n)) = write(&mut socket, &small) {
            taken += n;
            assert!(taken <= BATCH_LEN, "the batch stays within its bound");
        }
        assert_eq!(taken, BATCH_LEN, "the batch fills, then the writer waits");
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(socket.poll_send(&mut cx).is_pending(), "the socket took only 10 bytes");
        assert_eq!(writes(&socket).concat().len(), 10);
    }

    #[test]
    fn a_failed_send_fails_the_next_flush() {
        let mut socket =
            Batched::new(Recorder { broken: true, ..Recorder::with_room(usize::MAX) }, false);
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(Pin::new(&mut socket).poll_write(&mut cx, b"frame").is_ready());
        let sent = socket.poll_send(&mut cx);
        assert!(matches!(sent, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe));
        let flushed = Pin::new(&mut socket).poll_flush(&mut cx);
        assert!(matches!(flushed, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe));
    }

    /// A socket holding `data`, recording the size of each read it is asked for.
    struct Source {
        data: Vec<u8>,
        asked: Vec<usize>,
    }

    impl AsyncRead for Source {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.asked.push(buf.remaining());
            let n = self.data.len().min(buf.remaining());
            buf.put_slice(&self.data[..n]);
            self.data.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Source {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn read(socket: &mut Batched<Source>, len: usize) -> Vec<u8> {
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut buf = vec![0u8; len];
        let mut read = ReadBuf::new(&mut buf);
        assert!(Pin::new(socket).poll_read(&mut cx, &mut read).is_ready());
        read.filled().to_vec()
    }

    fn asked(socket: &Batched<Source>) -> Vec<usize> {
        socket.lock().io.asked.clone()
    }

    /// yamux reads a header, then a body, then the next header: on a plain socket all that
    /// was here comes in one read of the socket, in order.
    #[test]
    fn small_reads_take_what_is_here_in_one_read() {
        let data: Vec<u8> = (0..=255u8).cycle().take(100).collect();
        let mut socket = Batched::new(Source { data: data.clone(), asked: Vec::new() }, true);
        let mut got = read(&mut socket, 12);
        got.extend(read(&mut socket, 40));
        got.extend(read(&mut socket, 12));
        got.extend(read(&mut socket, 36));
        assert_eq!(got, data);
        assert_eq!(asked(&socket), [READ_AHEAD], "one read of the socket for all four");
        assert!(read(&mut socket, 12).is_empty(), "then the end of the stream");
    }

    /// A bulk body with nothing read ahead goes straight into the caller's buffer; without
    /// read-ahead (TLS) every read goes straight to the socket.
    #[test]
    fn large_reads_and_tls_read_directly() {
        let data = vec![7u8; 3 * READ_AHEAD];
        let mut socket = Batched::new(Source { data: data.clone(), asked: Vec::new() }, true);
        assert_eq!(read(&mut socket, 2 * READ_AHEAD), data[..2 * READ_AHEAD]);
        assert_eq!(asked(&socket), [2 * READ_AHEAD]);
        let mut socket = Batched::new(Source { data, asked: Vec::new() }, false);
        assert_eq!(read(&mut socket, 12).len(), 12);
        assert_eq!(read(&mut socket, 40).len(), 40);
        assert_eq!(asked(&socket), [12, 40]);
    }

    /// What was read ahead comes before a large read's bytes, and the end of the stream only
    /// after it.
    #[test]
    fn bytes_read_ahead_come_first_and_the_end_last() {
        let data: Vec<u8> = (0..=255u8).cycle().take(READ_AHEAD + 100).collect();
        let mut socket = Batched::new(Source { data: data.clone(), asked: Vec::new() }, true);
        let mut got = read(&mut socket, 12);
        got.extend(read(&mut socket, 2 * READ_AHEAD));
        assert_eq!(got.len(), READ_AHEAD, "the large read takes what was read ahead");
        got.extend(read(&mut socket, 2 * READ_AHEAD));
        assert_eq!(got, data, "then the rest, in order");
        assert!(read(&mut socket, 12).is_empty(), "then the end");
    }
}
