//! Load and floods against real sessions: a clean close loses nothing in flight, and a peer
//! that floods a session within the protocol gets refusals while the memory it makes the
//! session hold stays under a bound that follows from the configured limits, and another,
//! well-behaved session on the same listener goes on exchanging messages.
//!
//! Memory is measured with a counting global allocator (`cap`), so it counts every allocation
//! of this test binary; the tests that measure take [`serial`] so they never overlap.

use std::alloc::System;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use cap::Cap;
use libchan::proto::{frame, Accept, Code, Direction, FrameType, Kind, Open};
use libchan::raw::{BoxRead, RawYamux};
use libchan::{Limits, Listener, Session, PREAMBLE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;

use support::{swarm, Bystander};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// A listener on loopback for `scheme` (tcp, tls or quic).
async fn listener(scheme: &str, limits: Limits) -> Listener {
    let url = format!("{scheme}://127.0.0.1:0");
    match scheme {
        "tcp" => libchan::listen_with(&url, limits).await.unwrap(),
        _ => libchan::listen_secure(&url, limits, &swarm().1).await.unwrap(),
    }
}

/// A client session on `listener` and the listener's side of it.
async fn connect(scheme: &str, listener: &Listener, limits: Limits) -> (Session, Session) {
    let client = match scheme {
        "tcp" => libchan::connect_with(listener.local_url(), limits).await.unwrap(),
        _ => libchan::connect_secure(listener.local_url(), limits, &swarm().0).await.unwrap(),
    };
    let server = within("accept a session", listener.accept()).await.unwrap();
    (client, server)
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 60 s"))
}

/// Runs measured tests one at a time (the allocator counts the whole process).
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

const CHANNELS: u32 = 40;
const MESSAGES: u32 = 250;
const PAYLOAD: usize = 1024;

/// Every message whose `send` returned `Ok` before `close()` reaches the peer, in order, on
/// every channel, with 10 000 messages (10 MB, ten times the transport windows) in flight.
async fn clean_close_delivers_everything_in_flight(scheme: &str) {
    let _serial = serial().await;
    let listener = listener(scheme, Limits::default()).await;
    let (client, server) = connect(scheme, &listener, Limits::default()).await;
    let reading = tokio::spawn(async move {
        let mut readers = Vec::new();
        for _ in 0..CHANNELS {
            let mut rx = within("accept", server.accept::<(u32, u32, Vec<u8>)>()).await.unwrap();
            readers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    match rx.recv().await {
                        Ok(Some((channel, n, payload))) => {
                            assert_eq!(payload.len(), PAYLOAD);
                            got.push((channel, n));
                        }
                        Ok(None) => return Ok(got),
                        Err(e) => return Err((got.len(), e.to_string())),
                    }
                }
            }));
        }
        let mut all = Vec::new();
        for reader in readers {
            all.push(within("a reader", reader).await.unwrap());
        }
        all
    });
    let mut senders = Vec::new();
    for _ in 0..CHANNELS {
        senders.push(client.open::<(u32, u32, Vec<u8>)>().await.unwrap());
    }
    let sending = senders.iter().enumerate().map(|(channel, tx)| async move {
        for n in 0..MESSAGES {
            tx.send((channel as u32, n, vec![7; PAYLOAD])).await.unwrap();
        }
    });
    futures::future::join_all(sending).await;
    // The senders stay alive: the close itself must end their channels after what they sent.
    let started = std::time::Instant::now();
    within("the clean close", client.close(Code::Shutdown, "done")).await;
    let took = started.elapsed();
    assert!(client.close_reason().is_some());
    let results = within("the readers", reading).await.unwrap();
    let mut seen = vec![false; CHANNELS as usize];
    for result in results {
        let got = result.unwrap_or_else(|(n, e)| panic!("a channel failed after {n}: {e}"));
        assert_eq!(got.len(), MESSAGES as usize, "{scheme}: messages lost");
        let channel = got[0].0;
        let expected: Vec<_> = (0..MESSAGES).map(|n| (channel, n)).collect();
        assert_eq!(got, expected, "{scheme}: channel {channel} out of order");
        seen[channel as usize] = true;
    }
    assert!(seen.iter().all(|s| *s), "every channel delivered");
    assert!(took < Limits::default().drain_timeout, "the drain finished, took {took:?}");
    drop(senders);
}

#[tokio::test]
async fn clean_close_delivers_everything_in_flight_tcp() {
    clean_close_delivers_everything_in_flight("tcp").await;
}

#[tokio::test]
async fn clean_close_delivers_everything_in_flight_tls() {
    clean_close_delivers_everything_in_flight("tls").await;
}

#[tokio::test]
async fn clean_close_delivers_everything_in_flight_quic() {
    clean_close_delivers_everything_in_flight("quic").await;
}

/// Samples the process's allocated bytes every millisecond on a thread of its own, so a busy
/// runtime does not skip samples; `peak` is the most seen above the starting point.
struct Meter {
    base: usize,
    peak: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Meter {
    fn start() -> Self {
        let base = ALLOCATOR.allocated();
        let peak = Arc::new(AtomicUsize::new(base));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(ALLOCATOR.allocated(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Self { base, peak, stop, thread: Some(thread) }
    }

    /// The highest allocation seen so far, above the start.
    fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed).max(ALLOCATOR.allocated()).saturating_sub(self.base)
    }

    /// What is allocated now, above the start (negative counts as 0).
    fn now(&self) -> usize {
        ALLOCATOR.allocated().saturating_sub(self.base)
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits until what is allocated falls back under `bound` above the meter's start: the
/// session released what the abuse made it hold.
async fn released(meter: &Meter, bound: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while meter.now() > bound {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} bytes still held after 30 s, bound {bound}",
            meter.now()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A well-behaved client session on the same listener, doing request/response in a loop
/// while the abuse goes on.
async fn bystander(listener: &Listener) -> Bystander {
    let (client, server) = connect("tcp", listener, Limits::default()).await;
    Bystander::over(client, server).await
}

/// Checks the bystander made progress during the abuse and never failed.
async fn finish(bystander: Bystander, before: usize) {
    let during = bystander.rounds();
    bystander.finish().await;
    assert!(during > before, "the bystander made no progress during the abuse");
}

/// A hand-driven yamux peer on `listener`, and the listener's session for it.
async fn hostile(listener: &Listener) -> (Session, RawYamux) {
    let addr = listener.local_url().trim_start_matches("tcp://").to_string();
    let mut peer = TcpStream::connect(addr).await.unwrap();
    peer.write_all(PREAMBLE).await.unwrap();
    let mut theirs = [0u8; 8];
    within("preamble", peer.read_exact(&mut theirs)).await.unwrap();
    let session = within("accept the hostile session", listener.accept()).await.unwrap();
    (session, RawYamux::start(peer, true))
}

fn frame_bytes(ty: FrameType, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame::encode(ty, payload, &mut out);
    out.to_vec()
}

fn open_frame(ref_id: u64, parent: u64, kind: Kind, direction: Direction) -> Vec<u8> {
    let open = Open { kind, ref_id, parent, direction, content_type: None };
    frame_bytes(FrameType::Open, &open.encode())
}

async fn read_accept(r: &mut BoxRead) -> Accept {
    let mut header = [0u8; 5];
    within("ACCEPT header", r.read_exact(&mut header)).await.unwrap();
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let mut payload = vec![0; len - 1];
    within("ACCEPT payload", r.read_exact(&mut payload)).await.unwrap();
    assert_eq!(header[4], FrameType::Accept as u8);
    Accept::decode(&payload).unwrap()
}

const MIB: usize = 1 << 20;

/// Slow loris: connections that never send the preamble, and a session whose every stream
/// never sends its OPEN. Both are dropped after their timeouts, what they held is released,
/// and a bystander session on the same listener keeps its request/response going.
#[tokio::test]
async fn slow_loris_connections_and_streams_are_dropped_and_released() {
    let _serial = serial().await;
    let mut limits = Limits::default();
    limits.handshake_timeout = Duration::from_millis(500);
    limits.open_timeout = Duration::from_millis(500);
    limits.max_streams = 64;
    let listener = listener("tcp", limits.clone()).await;
    let bystander = bystander(&listener).await;
    let meter = Meter::start();
    let before = bystander.rounds();

    // 100 connections that send 3 of the 8 preamble bytes and stop.
    let mut stalled = Vec::new();
    let addr = listener.local_url().trim_start_matches("tcp://").to_string();
    for _ in 0..100 {
        let mut conn = TcpStream::connect(&addr).await.unwrap();
        conn.write_all(&PREAMBLE[..3]).await.unwrap();
        stalled.push(conn);
    }
    // A session whose peer opens its whole share of streams (32) and sends half a header.
    let (session, peer) = hostile(&listener).await;
    let mut idle = Vec::new();
    for _ in 0..limits.max_streams / 2 {
        let (r, mut w) = peer.open().await.unwrap();
        w.write_all(&[0, 0]).await.unwrap();
        idle.push((r, w));
    }
    // The listener drops each stalled connection (after its preamble) once the timeout ran.
    for conn in &mut stalled {
        let mut buf = Vec::new();
        let read = within("a stalled connection", conn.read_to_end(&mut buf)).await;
        assert!(read.is_err() || buf == PREAMBLE, "stalled connection got {buf:?}");
    }
    // And resets each stream that sent no OPEN.
    for (r, _w) in &mut idle {
        let mut buf = [0u8; 1];
        let read = within("an idle stream", r.read(&mut buf)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "idle stream got {read:?}");
    }
    // Bound: the handshakes hold a socket and a task each, the streams a yamux stream
    // (256 KiB window, not filled: nothing was sent). 100 connections and 32 streams cost
    // well under 16 MiB while they last, and everything they held is gone once they are.
    let peak = meter.peak();
    assert!(peak < 16 * MIB, "slow loris made the listener hold {peak} bytes");
    drop(stalled);
    drop(idle);
    released(&meter, 2 * MIB, "slow loris").await;
    // The abused session still takes a well-formed channel.
    let (_r, mut w) = peer.open().await.unwrap();
    w.write_all(&open_frame(1, 0, Kind::Channel, Direction::OpenerSends)).await.unwrap();
    let mut msg = Vec::new();
    ciborium::into_writer(&"still here", &mut msg).unwrap();
    w.write_all(&frame_bytes(FrameType::Msg, &msg)).await.unwrap();
    let mut rx = within("accept after the abuse", session.accept::<String>()).await.unwrap();
    assert_eq!(within("recv", rx.recv()).await.unwrap().as_deref(), Some("still here"));
    finish(bystander, before).await;
}

/// A peer sends messages at the size limit on all its channels as fast as the transport
/// lets it, while the application reads slowly. Flow control holds the sender back: what
/// the listener buffers stays under the yamux windows.
#[tokio::test]
async fn messages_at_the_size_limit_as_fast_as_possible_stay_bounded() {
    let _serial = serial().await;
    let mut limits = Limits::default();
    limits.max_message_len = MIB;
    limits.max_streams = 16;
    limits.send_buffer = MIB;
    let listener = listener("tcp", limits.clone()).await;
    let bystander = bystander(&listener).await;
    let meter = Meter::start();
    let before = bystander.rounds();
    let (client, server) = connect("tcp", &listener, limits.clone()).await;
    const FLOODERS: usize = 4;
    const EACH: usize = 40;
    // The largest Vec<u8> whose CBOR fits the limit: a 5-byte byte-string header.
    let body = limits.max_message_len - 5;
    let mut flooders = Vec::new();
    for _ in 0..FLOODERS {
        let tx = client.open::<serde_bytes::ByteBuf>().await.unwrap();
        flooders.push(tokio::spawn(async move {
            for _ in 0..EACH {
                tx.send(serde_bytes::ByteBuf::from(vec![1u8; body])).await.unwrap();
            }
        }));
    }
    // One over the limit is refused locally, nothing sent.
    let tx = client.open::<serde_bytes::ByteBuf>().await.unwrap();
    let err = tx.send(serde_bytes::ByteBuf::from(vec![1u8; body + 1])).await.unwrap_err();
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    drop(tx);
    let mut readers = Vec::new();
    for _ in 0..FLOODERS + 1 {
        let mut rx = within("accept", server.accept::<serde_bytes::ByteBuf>()).await.unwrap();
        readers.push(tokio::spawn(async move {
            let mut n = 0;
            while let Some(m) = rx.recv().await.unwrap() {
                assert_eq!(m.len(), body);
                n += 1;
                // A slow application: the senders must wait for it.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        }));
    }
    let mut total = 0;
    for reader in readers {
        total += within("a slow reader", reader).await.unwrap();
    }
    for flooder in flooders {
        within("a flooder", flooder).await.unwrap();
    }
    assert_eq!(total, FLOODERS * EACH, "every message arrived");
    // Bound, both ends of the session being in this process: per flooding channel, the
    // sender's buffer (send_buffer, plus one message let in when it is empty) and the
    // value being encoded, the receiver's frame buffer (one message plus a 64 KiB read
    // chunk) and the decoded value: about 5 MiB; plus what yamux holds for the session, at
    // most its connection window of (max_streams + 64) x 256 KiB = 20 MiB. 160 MiB went
    // through.
    let per_channel = 2 * limits.send_buffer + 3 * limits.max_message_len + 64 * 1024;
    let bound = FLOODERS * per_channel + (limits.max_streams + 64) * 256 * 1024;
    let peak = meter.peak();
    assert!(peak < bound, "peak {peak} bytes over the bound of {bound}");
    eprintln!("size-limit flood: peak {peak} bytes, bound {bound}");
    drop((client, server));
    released(&meter, 2 * MIB, "size-limit flood").await;
    finish(bystander, before).await;
}

/// Wide and deep messages at the limits, to an untyped receiver (the costliest decode):
/// each is accepted or refused as the limits say, and what decoding them holds is bounded
/// by the message size times the size of a decoded item.
#[tokio::test]
async fn wide_and_deep_messages_stay_bounded() {
    let _serial = serial().await;
    let mut limits = Limits::default();
    limits.max_message_len = MIB;
    limits.max_depth = 64;
    let listener = listener("tcp", limits.clone()).await;
    let bystander = bystander(&listener).await;
    let meter = Meter::start();
    let before = bystander.rounds();
    let (session, peer) = hostile(&listener).await;
    let (_r, mut w) = peer.open().await.unwrap();
    w.write_all(&open_frame(1, 0, Kind::Channel, Direction::OpenerSends)).await.unwrap();
    // Wide: an array of a million nulls, 1 MiB of CBOR (header 0x9a + 4 bytes).
    let items = limits.max_message_len - 5;
    let mut wide = vec![0x9a];
    wide.extend_from_slice(&(items as u32).to_be_bytes());
    wide.resize(5 + items, 0xf6);
    // Deep and wide: 16 384 arrays each 63 levels deep (at the limit with the outer one).
    let mut deep = vec![0x99, 0x40, 0x00];
    for _ in 0..16_384 {
        deep.extend(std::iter::repeat_n(0x81, 62));
        deep.push(0x00);
    }
    assert!(deep.len() <= limits.max_message_len);
    // Too deep: 65 levels.
    let too_deep = [vec![0x81u8; 65], vec![0x00]].concat();
    // Written from a task of its own: flow control holds the writer until the reader reads.
    let writing = tokio::spawn(async move {
        for _ in 0..5 {
            w.write_all(&frame_bytes(FrameType::Msg, &wide)).await.unwrap();
            w.write_all(&frame_bytes(FrameType::Msg, &deep)).await.unwrap();
        }
        w.write_all(&frame_bytes(FrameType::Msg, &too_deep)).await.unwrap();
        w
    });
    let mut rx = within("accept", session.accept::<libchan::Value>()).await.unwrap();
    for _ in 0..5 {
        let got = within("wide", rx.recv()).await.unwrap().unwrap();
        assert!(matches!(got.data, ciborium::Value::Array(ref a) if a.len() == items));
        drop(got);
        let got = within("deep", rx.recv()).await.unwrap().unwrap();
        assert!(matches!(got.data, ciborium::Value::Array(ref a) if a.len() == 16_384));
    }
    let err = within("too deep", rx.recv()).await.unwrap_err();
    assert!(err.to_string().contains("deeper than the limit"), "{err}");
    let _w = within("the writer", writing).await.unwrap();
    // Bound: one CBOR byte decodes to at most one item of size_of::<ciborium::Value>()
    // (32) bytes. While the array grows, the old and the doubled buffer are both held (3
    // items' worth per item), and libchan::Value holds the tree while it rewrites handles:
    // about 4 x 32 bytes per message byte at the peak (measured 4.0 here), bounded with a
    // margin by 5 x 32 x max_message_len, plus 8 MiB for buffers and the yamux window. The
    // amplification is the price of untyped receivers (PROTOCOL.md §11).
    let item = std::mem::size_of::<ciborium::Value>();
    let bound = 5 * item * limits.max_message_len + 8 * MIB;
    let peak = meter.peak();
    eprintln!("wide/deep: peak {peak} bytes, bound {bound} ({item} bytes per decoded item)");
    assert!(peak < bound, "peak {peak} bytes over the bound of {bound}");
    drop(rx);
    released(&meter, 2 * MIB, "wide and deep").await;
    finish(bystander, before).await;
}

/// Nested streams that no message ever names, and references whose streams never come:
/// the rendezvous table takes `max_pending_refs`, refuses the rest with RENDEZVOUS (5),
/// and drops every entry after `pending_ref_ttl`, releasing what it held.
#[tokio::test]
async fn pending_references_never_claimed_are_bounded_and_expire() {
    let _serial = serial().await;
    let mut limits = Limits::default();
    limits.max_pending_refs = 64;
    limits.pending_ref_ttl = Duration::from_millis(800);
    limits.max_streams = 512;
    let listener = listener("tcp", limits.clone()).await;
    let bystander = bystander(&listener).await;
    let meter = Meter::start();
    let before = bystander.rounds();
    let (session, peer) = hostile(&listener).await;
    let (_r, mut parent) = peer.open().await.unwrap();
    parent.write_all(&open_frame(1, 0, Kind::Channel, Direction::OpenerSends)).await.unwrap();
    let mut rx = within("accept", session.accept::<libchan::Value>()).await.unwrap();
    // 100 nested streams for channel 1, each with 64 KiB of bytes behind its OPEN.
    let mut statuses = Vec::new();
    let mut held = Vec::new();
    for i in 0..100u64 {
        let (mut r, mut w) = peer.open().await.unwrap();
        w.write_all(&open_frame(3 + 2 * i, 1, Kind::ByteStream, Direction::OpenerSends))
            .await
            .unwrap();
        w.write_all(&[9u8; 64 * 1024]).await.unwrap();
        statuses.push(read_accept(&mut r).await.status);
        held.push((r, w));
    }
    let parked = statuses.iter().filter(|s| **s == Code::Ok).count();
    let refused = statuses.iter().filter(|s| **s == Code::Rendezvous).count();
    assert_eq!((parked, refused), (64, 36), "{statuses:?}");
    // Bound: each parked stream holds at most its yamux window (256 KiB) of bytes.
    let bound = limits.max_pending_refs * 256 * 1024 + 4 * MIB;
    let peak = meter.peak();
    eprintln!("pending refs: peak {peak} bytes, bound {bound}");
    assert!(peak < bound, "peak {peak} bytes over the bound of {bound}");
    // After the TTL every parked stream is reset.
    for (r, _w) in &mut held {
        let mut buf = [0u8; 1];
        let read = within("a parked stream", r.read(&mut buf)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "parked stream got {read:?}");
    }
    drop(held);
    released(&meter, 2 * MIB, "pending references").await;
    // Now messages naming references whose streams never come: the table fills again and
    // the message over it is a protocol violation on its channel.
    let tag = |id: u64| {
        ciborium::Value::Tag(
            libchan::TAG_BYTE_STREAM,
            Box::new(ciborium::Value::Integer(id.into())),
        )
    };
    for batch in 0..2u64 {
        let refs: Vec<_> = (0..40).map(|i| tag(1001 + 2 * (40 * batch + i))).collect();
        let mut msg = Vec::new();
        ciborium::into_writer(&refs, &mut msg).unwrap();
        parent.write_all(&frame_bytes(FrameType::Msg, &msg)).await.unwrap();
    }
    let first = within("40 references", rx.recv()).await.unwrap().unwrap();
    let err = within("40 more", rx.recv()).await.unwrap_err();
    assert!(err.to_string().contains("more than 64 references pending"), "{err}");
    drop(first);
    finish(bystander, before).await;
}

/// A peer that never reads cannot hold a clean close up: it ends after `drain_timeout`.
#[tokio::test]
async fn clean_close_is_bounded_by_the_drain_timeout() {
    let mut limits = Limits::default();
    limits.drain_timeout = Duration::from_millis(500);
    let listener = listener("tcp", limits.clone()).await;
    let (client, server) = connect("tcp", &listener, limits).await;
    let tx = client.open::<serde_bytes::ByteBuf>().await.unwrap();
    // 2 MiB, more than the stream window: the writer is stuck until the peer reads. (A
    // third would wait for buffer space: send_buffer is 1 MiB.)
    for _ in 0..2 {
        let message = serde_bytes::ByteBuf::from(vec![0u8; MIB]);
        within("a send", tx.send(message)).await.unwrap();
    }
    let _never_read = within("accept", server.accept::<serde_bytes::ByteBuf>()).await.unwrap();
    let started = std::time::Instant::now();
    within("a close whose peer never reads", client.close(Code::Shutdown, "bye")).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500), "the close waited for the drain: {took:?}");
    assert!(took < Duration::from_secs(10), "the close is bounded: {took:?}");
    assert!(client.close_reason().is_some());
    within("the peer learns", server.closed()).await;
}
