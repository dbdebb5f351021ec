//! The conformance suite: written once, run over every transport.

use std::time::Duration;

use libchan::{byte_pipe, pipe, ByteStream, Limits, Receiver, Sender, Session, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;

use support::swarm;

#[derive(Clone, Copy, Debug)]
enum Transport {
    Memory,
    Duplex,
    Tcp,
    Unix,
    Tls,
    Quic,
}

/// Two connected sessions over `transport` (not for `Memory`).
async fn sessions(transport: Transport) -> (Session, Session) {
    sessions_with(transport, Limits::default()).await
}

async fn sessions_with(transport: Transport, limits: Limits) -> (Session, Session) {
    match transport {
        Transport::Memory => unreachable!("memory has no sessions"),
        Transport::Duplex => {
            let (a, b) = tokio::io::duplex(1 << 20);
            let left = Session::over(a, true, limits.clone(), "left".into());
            let right = Session::over(b, false, limits, "right".into());
            let (left, right) = tokio::join!(left, right);
            (left.unwrap(), right.unwrap())
        }
        Transport::Tcp => {
            let listener = libchan::listen_with("tcp://127.0.0.1:0", limits.clone()).await.unwrap();
            let client = libchan::connect_with(listener.local_url(), limits).await.unwrap();
            (client, listener.accept().await.unwrap())
        }
        Transport::Unix => {
            let dir = std::env::temp_dir().join(format!("libchan-test-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{:x}.sock", rand_id()));
            let url = format!("unix://{}", path.display());
            let listener = libchan::listen_with(&url, limits.clone()).await.unwrap();
            let client = libchan::connect_with(&url, limits).await.unwrap();
            let server = listener.accept().await.unwrap();
            drop(listener);
            (client, server)
        }
        Transport::Tls | Transport::Quic => {
            let scheme = if matches!(transport, Transport::Tls) { "tls" } else { "quic" };
            let (client_tls, server_tls) = swarm();
            let url = format!("{scheme}://127.0.0.1:0");
            let listener = libchan::listen_secure(&url, limits.clone(), server_tls).await.unwrap();
            let client =
                libchan::connect_secure(listener.local_url(), limits, client_tls).await.unwrap();
            let server = listener.accept().await.unwrap();
            assert_eq!(client.peer_name(), Some("server"));
            assert_eq!(server.peer_name(), Some("client"));
            (client, server)
        }
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u64) << 32
}

/// A sender on one side and its receiver on the other.
struct Pair {
    sessions: Option<(Session, Session)>,
}

impl Pair {
    async fn new(transport: Transport) -> Self {
        match transport {
            Transport::Memory => Self { sessions: None },
            t => Self { sessions: Some(sessions(t).await) },
        }
    }

    /// A channel from the left side to the right side.
    async fn channel<T: libchan::Message>(&self) -> (Sender<T>, Receiver<T>) {
        match &self.sessions {
            None => pipe(),
            Some((left, right)) => {
                let tx = left.open::<T>().await.unwrap();
                let rx = right.accept::<T>().await.unwrap();
                (tx, rx)
            }
        }
    }

    /// A channel from the right side to the left side.
    async fn channel_back<T: libchan::Message>(&self) -> (Sender<T>, Receiver<T>) {
        match &self.sessions {
            None => pipe(),
            Some((left, right)) => {
                let tx = right.open::<T>().await.unwrap();
                let rx = left.accept::<T>().await.unwrap();
                (tx, rx)
            }
        }
    }
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 60 s"))
}

async fn order_kept(t: Transport) {
    let pair = Pair::new(t).await;
    let (tx, mut rx) = pair.channel::<u64>().await;
    let n = 20_000;
    let sending = tokio::spawn(async move {
        for i in 0..n {
            tx.send(i).await.unwrap();
        }
    });
    within("order", async {
        for i in 0..n {
            assert_eq!(rx.recv().await.unwrap(), Some(i));
        }
        assert_eq!(rx.recv().await.unwrap(), None);
    })
    .await;
    sending.await.unwrap();
}

async fn eof_after_close(t: Transport) {
    let pair = Pair::new(t).await;
    let (tx, mut rx) = pair.channel::<String>().await;
    for i in 0..100 {
        tx.send(format!("message {i}")).await.unwrap();
    }
    tx.close().await;
    within("eof", async {
        for i in 0..100 {
            assert_eq!(rx.recv().await.unwrap(), Some(format!("message {i}")));
        }
        assert_eq!(rx.recv().await.unwrap(), None, "EOF after everything sent before close");
        assert_eq!(rx.recv().await.unwrap(), None, "EOF stays EOF");
    })
    .await;
}

#[derive(Deserialize, Serialize)]
struct Level1 {
    name: String,
    down: Receiver<Level2>,
    up: Sender<Level2>,
}

#[derive(Deserialize, Serialize)]
struct Level2 {
    depth: u32,
    down: Option<Receiver<Level3>>,
    up: Vec<Sender<Level3>>,
}

#[derive(Deserialize, Serialize)]
struct Level3 {
    depth: u32,
    stream: Option<ByteStream>,
}

async fn nested_three_levels(t: Transport) {
    let pair = Pair::new(t).await;
    let (tx, mut rx) = pair.channel::<Level1>().await;
    // Left keeps the far ends of what it sends.
    let (down_tx, down_rx) = pipe::<Level2>();
    let (up_tx, mut up_rx) = pipe::<Level2>();
    tx.send(Level1 { name: "one".into(), down: down_rx, up: up_tx }).await.unwrap();

    let right = tokio::spawn(async move {
        let one = rx.recv().await.unwrap().unwrap();
        assert_eq!(one.name, "one");
        let Level1 { mut down, up, .. } = one;
        // Level 2 arrives from the left over a channel the left sent.
        let two = down.recv().await.unwrap().unwrap();
        assert_eq!(two.depth, 2);
        let mut three_rx = two.down.unwrap();
        let three = three_rx.recv().await.unwrap().unwrap();
        assert_eq!(three.depth, 3);
        let mut stream = three.stream.unwrap();
        let mut got = String::new();
        stream.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "from the left, three levels down");
        // And back the other way: a level-2 message up, carrying a sender of level 3.
        let (l3_tx, mut l3_rx) = pipe::<Level3>();
        up.send(Level2 { depth: 20, down: None, up: vec![l3_tx] }).await.unwrap();
        let back = l3_rx.recv().await.unwrap().unwrap();
        assert_eq!(back.depth, 30);
        let mut stream = back.stream.unwrap();
        stream.write_all(b"from the right").await.unwrap();
        stream.shutdown().await.unwrap();
    });

    let (l3_tx, l3_rx) = pipe::<Level3>();
    down_tx.send(Level2 { depth: 2, down: Some(l3_rx), up: vec![] }).await.unwrap();
    let (mut mine, theirs) = byte_pipe();
    l3_tx.send(Level3 { depth: 3, stream: Some(theirs) }).await.unwrap();
    mine.write_all(b"from the left, three levels down").await.unwrap();
    mine.shutdown().await.unwrap();

    within("nested", async {
        let up = up_rx.recv().await.unwrap().unwrap();
        assert_eq!(up.depth, 20);
        let (s_mine, s_theirs) = byte_pipe();
        up.up[0].send(Level3 { depth: 30, stream: Some(s_theirs) }).await.unwrap();
        let mut s_mine = s_mine;
        let mut got = String::new();
        s_mine.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "from the right");
        right.await.unwrap();
    })
    .await;
}

#[derive(Deserialize, Serialize)]
struct Request {
    n: u64,
    reply: Sender<u64>,
}

async fn request_response(t: Transport) {
    let pair = Pair::new(t).await;
    let (tx, mut rx) = pair.channel::<Request>().await;
    let server = tokio::spawn(async move {
        while let Some(req) = rx.recv().await.unwrap() {
            req.reply.send(req.n * 2).await.unwrap();
        }
    });
    within("request/response", async {
        for n in 0..200 {
            let (reply, mut answer) = pipe();
            tx.send(Request { n, reply }).await.unwrap();
            assert_eq!(answer.recv().await.unwrap(), Some(n * 2));
            assert_eq!(answer.recv().await.unwrap(), None, "reply channel ends after one answer");
        }
    })
    .await;
    drop(tx);
    server.await.unwrap();
}

async fn byte_stream_100_mib(t: Transport) {
    let pair = Pair::new(t).await;
    let (tx, mut rx) = pair.channel::<ByteStream>().await;
    let (mine, theirs) = byte_pipe();
    tx.send(theirs).await.unwrap();
    const TOTAL: usize = 100 << 20;
    let writer = tokio::spawn(write_pseudorandom(mine, TOTAL, 0x9e37_79b9));
    let stream = within("the byte stream", rx.recv()).await.unwrap().unwrap();
    let (count, digest) = within("100 MiB byte stream", read_to_end_hashed(stream)).await;
    assert_eq!(count, TOTAL);
    assert_eq!(digest, writer.await.unwrap(), "checksums differ");
}

/// Writes `total` pseudo-random bytes (from `seed`) in 64 KiB writes, then shuts down;
/// returns their SHA-256.
async fn write_pseudorandom(
    mut stream: ByteStream,
    total: usize,
    mut seed: u32,
) -> sha2::digest::Output<Sha256> {
    let mut hash = Sha256::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        for b in chunk.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            *b = seed as u8;
        }
        stream.write_all(&chunk).await.unwrap();
        hash.update(&chunk);
        sent += chunk.len();
    }
    stream.shutdown().await.unwrap();
    hash.finalize()
}

/// Reads `stream` to its end in 256 KiB reads: how many bytes, and their SHA-256.
async fn read_to_end_hashed(mut stream: ByteStream) -> (usize, sha2::digest::Output<Sha256>) {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut count = 0;
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        count += n;
    }
    (count, hash.finalize())
}

/// Bulk both ways on one session while request/response goes on beside it. Over yamux a
/// bulk stream's writer sends its frames, and its reader reads the connection, from their own
/// tasks whenever no other task polls the connection: the reply channels opened meanwhile
/// arrive in those polls and must still reach the session, and every byte its stream.
async fn bulk_both_ways_beside_requests(t: Transport) {
    let pair = Pair::new(t).await;
    let (there, mut arriving_there) = pair.channel::<ByteStream>().await;
    let (back, mut arriving_back) = pair.channel_back::<ByteStream>().await;
    let (requests, mut incoming) = pair.channel::<(u32, Sender<u32>)>().await;
    const TOTAL: usize = 32 << 20;
    let (mine, theirs) = byte_pipe();
    there.send(theirs).await.unwrap();
    let writing_there = tokio::spawn(write_pseudorandom(mine, TOTAL, 0x2545_f491));
    let (mine, theirs) = byte_pipe();
    back.send(theirs).await.unwrap();
    let writing_back = tokio::spawn(write_pseudorandom(mine, TOTAL, 0x6c07_8965));
    let stream = within("the stream there", arriving_there.recv()).await.unwrap().unwrap();
    let reading_there = tokio::spawn(read_to_end_hashed(stream));
    let stream = within("the stream back", arriving_back.recv()).await.unwrap().unwrap();
    let reading_back = tokio::spawn(read_to_end_hashed(stream));
    let server = tokio::spawn(async move {
        while let Some((n, reply)) = incoming.recv().await.unwrap() {
            reply.send(n * 3).await.unwrap();
        }
    });
    within("requests beside the bulk", async {
        for n in 0..300u32 {
            let (reply, mut answer) = pipe();
            requests.send((n, reply)).await.unwrap();
            assert_eq!(answer.recv().await.unwrap(), Some(n * 3), "the answer to {n}");
            assert_eq!(answer.recv().await.unwrap(), None, "one answer to {n}");
        }
    })
    .await;
    let (there_read, back_read) = within("both bulk streams", async {
        (reading_there.await.unwrap(), reading_back.await.unwrap())
    })
    .await;
    assert_eq!(there_read, (TOTAL, writing_there.await.unwrap()), "the stream there");
    assert_eq!(back_read, (TOTAL, writing_back.await.unwrap()), "the stream back");
    drop(requests);
    within("the server's end", server).await.unwrap();
}

/// A byte stream echoed by the peer, read and written from two tasks at each end
/// (`tokio::io::split`), many windows each way. Over yamux a stream's reader and writer share
/// one waker slot for the frames they queue: the reader's window updates used to steal the
/// parked writer's wake-up, and the echo stalled with the writer still writing.
async fn byte_stream_split_echo(t: Transport) {
    const TOTAL: usize = 4 << 20;
    let pair = Pair::new(t).await;
    let (tx, mut rx) = pair.channel_back::<ByteStream>().await;
    let (kept, theirs) = byte_pipe();
    tx.send(theirs).await.unwrap();
    // The echo: the kept end's halves in two tasks, like a process's stdin and stdout.
    let (mut kept_read, mut kept_write) = tokio::io::split(kept);
    let (mut into_echo, mut out_of_echo) = tokio::io::duplex(64 * 1024);
    let echo_in = tokio::spawn(async move {
        tokio::io::copy(&mut kept_read, &mut into_echo).await.unwrap();
    });
    let echo_out = tokio::spawn(async move {
        tokio::io::copy(&mut out_of_echo, &mut kept_write).await.unwrap();
        kept_write.shutdown().await.unwrap();
    });
    let stream = within("the stream", rx.recv()).await.unwrap().unwrap();
    let (mut read, mut write) = tokio::io::split(stream);
    let pattern = |n: usize| (n % 251) as u8;
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < TOTAL {
            let chunk: Vec<u8> = (sent..(sent + 8 * 1024).min(TOTAL)).map(pattern).collect();
            write.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        write.shutdown().await.unwrap();
    });
    let mut buf = vec![0u8; 16 * 1024];
    let mut got = 0;
    loop {
        let read = tokio::time::timeout(Duration::from_secs(20), read.read(&mut buf)).await;
        let n = read
            .unwrap_or_else(|_| {
                panic!(
                    "the echo stalled: {got} of {TOTAL} bytes back, the writer {}",
                    if writer.is_finished() { "done" } else { "still writing" }
                )
            })
            .unwrap();
        if n == 0 {
            break;
        }
        assert!(
            buf[..n].iter().enumerate().all(|(i, b)| *b == pattern(got + i)),
            "bytes out of order after {got}"
        );
        got += n;
    }
    assert_eq!(got, TOTAL);
    within("the writer", writer).await.unwrap();
    let (echo_in, echo_out) = within("the echo", async { (echo_in.await, echo_out.await) }).await;
    echo_in.unwrap();
    echo_out.unwrap();
}

/// The ends of a byte pipe, sent at every moment of their life: bytes written before the send
/// come first, an end of stream before the send arrives, an end dropped before the send still
/// delivers, and two ends both sent stay connected through the sessions.
async fn byte_pipe_ends_sent(t: Transport) {
    let pair = Pair::new(t).await;
    let (tx, mut rx) = pair.channel::<ByteStream>().await;
    let read_all = |mut stream: ByteStream| async move {
        let mut got = Vec::new();
        within("read to the end", stream.read_to_end(&mut got)).await.unwrap();
        got
    };

    // Written and shut down before the send; the sent end also holds bytes for the kept one.
    let (mut kept, mut sent) = byte_pipe();
    kept.write_all(b"before the send").await.unwrap();
    kept.shutdown().await.unwrap();
    sent.write_all(b"left behind ").await.unwrap();
    tx.send(sent).await.unwrap();
    let mut far = within("first stream", rx.recv()).await.unwrap().unwrap();
    far.write_all(b"from the peer").await.unwrap();
    far.shutdown().await.unwrap();
    assert_eq!(read_all(far).await, b"before the send");
    assert_eq!(read_all(kept).await, b"left behind from the peer");

    // The kept end is dropped right after writing.
    let (mut kept, sent) = byte_pipe();
    kept.write_all(b"and gone").await.unwrap();
    drop(kept);
    tx.send(sent).await.unwrap();
    let far = within("second stream", rx.recv()).await.unwrap().unwrap();
    assert_eq!(read_all(far).await, b"and gone");

    // Both ends sent: the two far ends talk to each other.
    let (one, other) = byte_pipe();
    tx.send(one).await.unwrap();
    tx.send(other).await.unwrap();
    let mut first = within("third stream", rx.recv()).await.unwrap().unwrap();
    let mut second = within("fourth stream", rx.recv()).await.unwrap().unwrap();
    first.write_all(b"ping").await.unwrap();
    first.shutdown().await.unwrap();
    second.write_all(b"pong").await.unwrap();
    second.shutdown().await.unwrap();
    assert_eq!(read_all(second).await, b"ping");
    assert_eq!(read_all(first).await, b"pong");
}

/// Reads `stream` until it fails; panics if it ends cleanly instead. Returns the bytes read.
async fn read_until_error(what: &str, stream: &mut ByteStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match within("the reset to arrive", stream.read(&mut buf)).await {
            Ok(0) => panic!("{what}: a reset stream ended cleanly after {} bytes", got.len()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => return got,
        }
    }
}

/// A byte stream reset by its writer (its source failed) is an error for the reader, never
/// the end of stream that a shutdown gives; both for the end that was sent and the kept one.
async fn byte_stream_reset_is_an_error(t: Transport) {
    let pair = Pair::new(t).await;
    let (tx, mut rx) = pair.channel::<ByteStream>().await;

    let (mut kept, sent) = byte_pipe();
    tx.send(sent).await.unwrap();
    let mut far = within("the stream", rx.recv()).await.unwrap().unwrap();
    kept.write_all(b"partial").await.unwrap();
    kept.flush().await.unwrap();
    let mut first = [0u8; 7];
    within("the first bytes", far.read_exact(&mut first)).await.unwrap();
    assert_eq!(&first, b"partial");
    kept.reset();
    assert_eq!(read_until_error("the far end", &mut far).await, b"", "nothing after the reset");

    // The other way: the far end resets, and the kept end's reads fail.
    let (mut kept, sent) = byte_pipe();
    tx.send(sent).await.unwrap();
    let far = within("the second stream", rx.recv()).await.unwrap().unwrap();
    far.reset();
    read_until_error("the kept end", &mut kept).await;
}

/// b relays a byte stream from a to c (a handle inside an untyped message): when a resets its
/// end, c's reads fail; when c goes away mid-stream with a reset, a's writes fail.
async fn relayed_byte_stream_reset(t: Transport) {
    if matches!(t, Transport::Memory) {
        return;
    }
    let (a, b_left) = sessions(t).await;
    let (b_right, c) = sessions(t).await;
    let to_b = a.open::<ByteStream>().await.unwrap();
    let mut at_b = b_left.accept::<Value>().await.unwrap();
    let b_to_c = b_right.open::<Value>().await.unwrap();
    let _relay = tokio::spawn(libchan::copy(at_b_take(&mut at_b), b_to_c));
    let mut at_c = c.accept::<ByteStream>().await.unwrap();

    let (mut source, sent) = byte_pipe();
    to_b.send(sent).await.unwrap();
    let mut sink = within("the relayed stream", at_c.recv()).await.unwrap().unwrap();
    source.write_all(&[7u8; 100_000]).await.unwrap();
    let mut got = vec![0u8; 100_000];
    within("the relayed bytes", sink.read_exact(&mut got)).await.unwrap();
    source.reset();
    assert_eq!(read_until_error("c", &mut sink).await, b"", "nothing after the reset");

    let (mut source, sent) = byte_pipe();
    to_b.send(sent).await.unwrap();
    let sink = within("the second relayed stream", at_c.recv()).await.unwrap().unwrap();
    sink.reset();
    within("the writer to fail", async {
        let chunk = vec![1u8; 64 * 1024];
        // Bounded: the relay and both streams' windows hold a few MiB at most.
        for _ in 0..4096 {
            if source.write_all(&chunk).await.is_err() {
                return;
            }
        }
        panic!("256 MiB written into a stream whose reader was reset");
    })
    .await;
}

/// A byte stream still open when its session closes is cut: the reader on the other side gets
/// an error, not a clean end of stream.
async fn byte_stream_cut_by_session_close(t: Transport) {
    if matches!(t, Transport::Memory) {
        return;
    }
    // The close waits for the stream this long before it cuts it.
    let mut limits = Limits::default();
    limits.drain_timeout = Duration::from_millis(500);
    let (left, right) = sessions_with(t, limits).await;
    let tx = left.open::<ByteStream>().await.unwrap();
    let mut rx = right.accept::<ByteStream>().await.unwrap();
    let (mut kept, sent) = byte_pipe();
    tx.send(sent).await.unwrap();
    let mut far = within("the stream", rx.recv()).await.unwrap().unwrap();
    kept.write_all(b"begun").await.unwrap();
    let mut first = [0u8; 5];
    within("the first bytes", far.read_exact(&mut first)).await.unwrap();
    within("the close", left.close(libchan::proto::Code::Ok, "done")).await;
    read_until_error("the reader", &mut far).await;
}

/// A peer that dies without a word (its process gone) ends the channels it sent on with an
/// error that says once that the connection was lost, and why: on QUIC quinn's own text is a
/// bare "connection lost", which the channel's "connection lost: WHY" repeated.
async fn killed_peer_ends_channels_naming_the_loss(t: Transport) {
    let scheme = match t {
        Transport::Tls => "tls",
        Transport::Quic => "quic",
        // The other transports are not dialed across runtimes here.
        _ => return,
    };
    // QUIC notices a silent peer only when its idle timer fires.
    let mut limits = Limits::default();
    limits.idle_timeout = Duration::from_secs(1);
    limits.heartbeat_interval = Duration::from_millis(250);
    let (client_tls, server_tls) = swarm();
    let url = format!("{scheme}://127.0.0.1:0");
    let listener = libchan::listen_secure(&url, limits.clone(), server_tls).await.unwrap();
    let url = listener.local_url().to_string();
    // The peer runs on a runtime of its own, so that it can die all at once.
    let peer =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    peer.spawn(async move {
        let session = libchan::connect_secure(&url, limits, client_tls).await.unwrap();
        let tx = session.open::<u32>().await.unwrap();
        tx.send(1).await.unwrap();
        let _alive = (session, tx);
        std::future::pending::<()>().await;
    });
    let server = within("the session", listener.accept()).await.unwrap();
    let mut rx = within("the channel", server.accept::<u32>()).await.unwrap();
    assert_eq!(within("the message", rx.recv()).await.unwrap(), Some(1));
    peer.shutdown_background();
    let error = within("the loss", rx.recv()).await.unwrap_err();
    let text = error.to_string();
    assert_eq!(text.matches("connection lost").count(), 1, "{text}");
    // The channel and the session report the same loss in the same words.
    let reason = within("the session's end", server.closed()).await;
    assert_eq!(text, format!("connection lost: {reason}"));
}

/// A clean close waits for the byte streams this side is writing: bytes written and shut down
/// while the close drains all arrive, then the end of stream. Both for the end kept by the
/// side that sent the stream and for the end the peer received.
async fn byte_stream_finishes_before_a_clean_close(t: Transport) {
    if matches!(t, Transport::Memory) {
        return;
    }
    const TOTAL: usize = 4 << 20;
    for kept_writes in [true, false] {
        let (left, right) = sessions(t).await;
        let tx = left.open::<ByteStream>().await.unwrap();
        let mut rx = right.accept::<ByteStream>().await.unwrap();
        let (kept, sent) = byte_pipe();
        tx.send(sent).await.unwrap();
        let far = within("the stream", rx.recv()).await.unwrap().unwrap();
        // The channel is done: the close need not wait for it to be read to its end.
        drop((tx, rx));
        let (mut writer, mut reader, closing) =
            if kept_writes { (kept, far, left) } else { (far, kept, right) };
        // More than a window: most of it is still to be written when the close starts.
        let writing = tokio::spawn(async move {
            writer.write_all(&vec![5u8; TOTAL]).await.unwrap();
            writer.shutdown().await.unwrap();
        });
        let close = tokio::spawn(async move {
            closing.close(libchan::proto::Code::Ok, "done").await;
            closing
        });
        let mut got = Vec::new();
        let read = within("everything, then the end", reader.read_to_end(&mut got)).await;
        read.unwrap_or_else(|e| panic!("kept end writes: {kept_writes}: {e} after {}", got.len()));
        assert_eq!(got.len(), TOTAL, "kept end writes: {kept_writes}");
        within("the writer", writing).await.unwrap();
        within("the close", close).await.unwrap();
    }
}

/// A channel opened, written and closed before the peer accepts it, and a byte stream written
/// and shut down at once, still deliver everything (on QUIC the opener has stopped reading by
/// then, so the acceptor's ACCEPT cannot be written).
async fn sent_and_closed_before_accept(t: Transport) {
    let Some((left, right)) = Pair::new(t).await.sessions else { return };
    let quick = left.open::<u32>().await.unwrap();
    quick.send(7).await.unwrap();
    quick.close().await;
    let (mut bytes, theirs) = byte_pipe();
    let carrier = left.open::<ByteStream>().await.unwrap();
    carrier.send(theirs).await.unwrap();
    carrier.close().await;
    bytes.write_all(b"all at once").await.unwrap();
    bytes.shutdown().await.unwrap();
    drop(bytes);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut rx = within("accept the closed channel", right.accept::<u32>()).await.unwrap();
    assert_eq!(within("its message", rx.recv()).await.unwrap(), Some(7));
    assert_eq!(within("its end", rx.recv()).await.unwrap(), None);
    let mut rx = within("accept the carrier", right.accept::<ByteStream>()).await.unwrap();
    let mut stream = within("the byte stream", rx.recv()).await.unwrap().unwrap();
    let mut got = Vec::new();
    within("its bytes", stream.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"all at once");
}

async fn thousand_channels(t: Transport) {
    let pair = Pair::new(t).await;
    let mut tasks = Vec::new();
    for i in 0..1000u32 {
        // Half opened by each side, all open at the same time.
        let (tx, mut rx) =
            if i % 2 == 0 { pair.channel::<u32>().await } else { pair.channel_back::<u32>().await };
        tasks.push(tokio::spawn(async move {
            for k in 0..10 {
                tx.send(i * 100 + k).await.unwrap();
            }
            (tx, rx.recv().await)
        }));
    }
    // Every channel is open at once: keep all senders alive until each delivered.
    let mut receivers = Vec::new();
    for task in tasks {
        let (tx, first) = within("thousand", task).await.unwrap();
        receivers.push((tx, first.unwrap().unwrap()));
    }
    for (i, (_, first)) in receivers.iter().enumerate() {
        assert_eq!(*first, i as u32 * 100);
    }
}

/// More channels opened at once than the accept queue holds (128), all at one go, with the
/// application accepting them as they come: the queue refuses none. On one worker thread,
/// where taking in the whole burst before the accept loop runs would overflow the queue. The
/// transports take streams in a share of tokio's task budget (128 units) at a time: two
/// units a stream (a yamux frame's two reads; the QUIC accept loop pays as much), so about 64
/// per turn, half the queue, and the accept loop drains it between turns.
async fn a_burst_of_channels_is_taken_in(t: Transport) {
    if matches!(t, Transport::Memory) {
        return;
    }
    const BURST: u32 = 400;
    let (client, server) = sessions(t).await;
    let accepting = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < BURST as usize {
            let mut rx = server.accept::<u32>().await.expect("a channel");
            got.push(tokio::spawn(async move { rx.recv().await }));
        }
        let mut values = Vec::new();
        for value in got {
            values.push(value.await.unwrap().unwrap().expect("its value"));
        }
        values.sort_unstable();
        (server, values)
    });
    let mut senders = Vec::new();
    for n in 0..BURST {
        let tx = client.open::<u32>().await.unwrap();
        tx.send(n).await.unwrap();
        senders.push(tx);
    }
    for (n, tx) in senders.iter().enumerate() {
        within("an ACCEPT", tx.accepted()).await.unwrap_or_else(|e| panic!("channel {n}: {e}"));
    }
    let (_server, values) = within("the burst", accepting).await.unwrap();
    assert_eq!(values, (0..BURST).collect::<Vec<_>>());
}

async fn relay_chain(t: Transport) {
    if matches!(t, Transport::Memory) {
        return relay_chain_memory().await;
    }
    // a -> b -> c: b forwards untyped values with their handles.
    let (a, b_left) = sessions(t).await;
    let (b_right, c) = sessions(t).await;
    let to_b = a.open::<Request>().await.unwrap();
    let mut at_b = b_left.accept::<Value>().await.unwrap();
    let b_to_c = b_right.open::<Value>().await.unwrap();
    let relay = tokio::spawn(libchan::copy(at_b_take(&mut at_b), b_to_c));
    let mut at_c = c.accept::<Request>().await.unwrap();
    let server = tokio::spawn(async move {
        while let Some(req) = at_c.recv().await.unwrap() {
            req.reply.send(req.n + 1).await.unwrap();
        }
    });
    within("relay chain", async {
        for n in 0..50 {
            let (reply, mut answer) = pipe();
            to_b.send(Request { n, reply }).await.unwrap();
            assert_eq!(answer.recv().await.unwrap(), Some(n + 1));
        }
    })
    .await;
    drop(to_b);
    assert_eq!(within("relay end", relay).await.unwrap().unwrap(), 50);
    within("server end", server).await.unwrap();
}

fn at_b_take(rx: &mut Receiver<Value>) -> Receiver<Value> {
    std::mem::replace(rx, pipe::<Value>().1)
}

async fn relay_chain_memory() {
    let (tx, rx) = pipe::<Request>();
    let (tx2, mut rx2) = pipe::<Request>();
    let relay = tokio::spawn(libchan::copy(rx, tx2));
    let (reply, mut answer) = pipe();
    tx.send(Request { n: 1, reply }).await.unwrap();
    let req = rx2.recv().await.unwrap().unwrap();
    req.reply.send(2).await.unwrap();
    assert_eq!(answer.recv().await.unwrap(), Some(2));
    drop(tx);
    assert_eq!(relay.await.unwrap().unwrap(), 1);
}

async fn receiver_dropped_closes_sender(t: Transport) {
    let pair = Pair::new(t).await;
    let (tx, mut rx) = pair.channel::<u32>().await;
    tx.send(1).await.unwrap();
    assert_eq!(within("first", rx.recv()).await.unwrap(), Some(1));
    drop(rx);
    within("closed", tx.closed()).await;
    let err = tx.send(2).await.unwrap_err();
    assert!(err.is_closed(), "{err}");
    assert_eq!(err.into_inner(), 2, "the value comes back");
}

async fn drop_right_after_write(t: Transport) {
    let pair = Pair::new(t).await;
    let (tx, mut rx) = pair.channel::<Vec<u8>>().await;
    let sending = tokio::spawn(async move {
        for i in 0..1000u32 {
            tx.send(i.to_be_bytes().repeat(100)).await.unwrap();
        }
        drop(tx);
    });
    within("drop after write", async {
        for i in 0..1000u32 {
            assert_eq!(rx.recv().await.unwrap(), Some(i.to_be_bytes().repeat(100)));
        }
        assert_eq!(rx.recv().await.unwrap(), None);
    })
    .await;
    sending.await.unwrap();
    // The same for a byte stream dropped without shutdown.
    let (tx, mut rx) = pair.channel::<ByteStream>().await;
    let (mut mine, theirs) = byte_pipe();
    tx.send(theirs).await.unwrap();
    mine.write_all(&[7u8; 100_000]).await.unwrap();
    drop(mine);
    within("byte stream drop after write", async {
        let mut stream = rx.recv().await.unwrap().unwrap();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), 100_000);
    })
    .await;
}

async fn fail_reaches_receiver(t: Transport) {
    let pair = Pair::new(t).await;
    let (tx, mut rx) = pair.channel::<u32>().await;
    tx.send(5).await.unwrap();
    tx.fail("disk on fire").await;
    within("fail", async {
        assert_eq!(rx.recv().await.unwrap(), Some(5));
        let err = rx.recv().await.unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
    })
    .await;
}

/// One pipe sender sent to the peer while a clone stays here: the receiver gets what both
/// send, and ends only when both are gone; dropping it stops the far sender.
async fn pipe_sender_shared_with_peer(t: Transport) {
    let pair = Pair::new(t).await;
    let (tx, mut rx) = pair.channel::<Sender<u32>>().await;
    let (near, mut merged) = pipe::<u32>();
    tx.send(near.clone()).await.unwrap();
    let far = within("far sender", rx.recv()).await.unwrap().unwrap();
    far.send(1).await.unwrap();
    near.send(2).await.unwrap();
    let mut got = vec![
        within("first", merged.recv()).await.unwrap().unwrap(),
        within("second", merged.recv()).await.unwrap().unwrap(),
    ];
    got.sort_unstable();
    assert_eq!(got, [1, 2]);
    drop(near);
    far.send(3).await.unwrap();
    assert_eq!(within("after near is gone", merged.recv()).await.unwrap(), Some(3));
    far.close().await;
    assert_eq!(within("end", merged.recv()).await.unwrap(), None);

    let (near, merged) = pipe::<u32>();
    tx.send(near).await.unwrap();
    let far = within("second far sender", rx.recv()).await.unwrap().unwrap();
    drop(merged);
    within("far sender sees the receiver gone", far.closed()).await;
    assert!(far.send(4).await.is_err());
}

#[derive(Deserialize, Serialize)]
struct Ask {
    n: u32,
    reply: Sender<u32>,
}

/// A request whose reply sender the right side holds, after it answered once.
async fn asked(tx: &Sender<Ask>, rx: &mut Receiver<Ask>, n: u32) -> (Sender<u32>, Receiver<u32>) {
    let (reply, mut answers) = pipe();
    tx.send(Ask { n, reply }).await.unwrap();
    let ask = within("the request", rx.recv()).await.unwrap().unwrap();
    ask.reply.send(ask.n).await.unwrap();
    assert_eq!(within("the answer", answers.recv()).await.unwrap(), Some(n));
    (ask.reply, answers)
}

/// A reply sender that only ever sent without waiting (it has no writer task of its own on a
/// session) still learns that its receiver went away: a send fails with `Closed` well before
/// a run of sends would start its task.
async fn reply_sender_sees_its_receiver_go(t: Transport) {
    let pair = Pair::new(t).await;
    let (tx, mut rx) = pair.channel::<Ask>().await;
    let (reply, answers) = asked(&tx, &mut rx, 1).await;
    drop(answers);
    for attempt in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Err(e) = reply.send(attempt).await {
            assert!(e.is_closed(), "{e}");
            return;
        }
    }
    panic!("sends still succeed a second after the receiver went away");
}

/// A clean close ends the streams of reply senders kept without sending: the receiver gets
/// the answer and then a clean end, and the close does not wait out `drain_timeout`.
async fn kept_reply_sender_ends_on_a_clean_close(t: Transport) {
    let Some((left, right)) = Pair::new(t).await.sessions else { return };
    let tx = left.open::<Ask>().await.unwrap();
    let mut rx = within("accept", right.accept::<Ask>()).await.unwrap();
    let (reply, mut answers) = asked(&tx, &mut rx, 7).await;
    let started = std::time::Instant::now();
    let closing = tokio::spawn(async move {
        right.close(libchan::proto::Code::Ok, "done").await;
        started.elapsed()
    });
    assert_eq!(within("the end after a clean close", answers.recv()).await.unwrap(), None);
    let took = within("the close", closing).await.unwrap();
    assert!(took < Duration::from_secs(5), "the close took {took:?}; drain_timeout is 10 s");
    drop(reply);
}

/// Reply channels that ended are let go: many more requests than the stream limit, one after
/// another on one session, each answered and its sender dropped, all get their answers.
async fn ended_reply_streams_are_let_go(t: Transport) {
    if matches!(t, Transport::Memory) {
        return;
    }
    let mut limits = Limits::default();
    limits.max_streams = 64;
    let (left, right) = sessions_with(t, limits).await;
    let tx = left.open::<Ask>().await.unwrap();
    let mut rx = within("accept", right.accept::<Ask>()).await.unwrap();
    for n in 0..640 {
        let (reply, mut answers) = asked(&tx, &mut rx, n).await;
        drop(reply);
        assert_eq!(within("the end of an answer", answers.recv()).await.unwrap(), None);
    }
}

macro_rules! conformance {
    ($($transport:ident => $module:ident),*) => {$(
        mod $module {
            use super::*;
            const T: Transport = Transport::$transport;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn order_kept() { super::order_kept(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn eof_after_close() { super::eof_after_close(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nested_three_levels() { super::nested_three_levels(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn request_response() { super::request_response(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn byte_stream_100_mib() { super::byte_stream_100_mib(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bulk_both_ways_beside_requests() { super::bulk_both_ways_beside_requests(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn byte_pipe_ends_sent() { super::byte_pipe_ends_sent(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn byte_stream_split_echo() { super::byte_stream_split_echo(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sent_and_closed_before_accept() { super::sent_and_closed_before_accept(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn thousand_channels() { super::thousand_channels(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn relay_chain() { super::relay_chain(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn receiver_dropped_closes_sender() { super::receiver_dropped_closes_sender(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn drop_right_after_write() { super::drop_right_after_write(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fail_reaches_receiver() { super::fail_reaches_receiver(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn byte_stream_reset_is_an_error() { super::byte_stream_reset_is_an_error(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn relayed_byte_stream_reset() { super::relayed_byte_stream_reset(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn byte_stream_cut_by_session_close() { super::byte_stream_cut_by_session_close(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn killed_peer_ends_channels_naming_the_loss() { super::killed_peer_ends_channels_naming_the_loss(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn byte_stream_finishes_before_a_clean_close() { super::byte_stream_finishes_before_a_clean_close(T).await }
            #[tokio::test]
            async fn pipe_sender_shared_with_peer() { super::pipe_sender_shared_with_peer(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn reply_sender_sees_its_receiver_go() { super::reply_sender_sees_its_receiver_go(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kept_reply_sender_ends_on_a_clean_close() { super::kept_reply_sender_ends_on_a_clean_close(T).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ended_reply_streams_are_let_go() { super::ended_reply_streams_are_let_go(T).await }
            #[tokio::test]
            async fn a_burst_of_channels_is_taken_in() { super::a_burst_of_channels_is_taken_in(T).await }
        }
    )*};
}

conformance!(
    Memory => memory,
    Duplex => duplex,
    Tcp => tcp,
    Unix => unix,
    Tls => tls,
    Quic => quic
);
