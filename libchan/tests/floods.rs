//! Load and floods against real sessions: a clean close loses nothing in flight, and a peer
//! that floods a session within the protocol gets refusals while the memory it makes the
//! session hold stays under a bound that follows from the configured limits, and another,
//! well-behaved session on the same listener goes on exchanging messages.
//!
//! Memory is measured with a counting global allocator (`cap`), so it counts every allocation
//! of this test binary; every test takes [`serial`], so none allocates while another measures.

use std::alloc::System;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use cap::Cap;
use libchan::proto::{frame, Accept, CloseErr, Code, Direction, FrameType, Kind, Open};
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
/// session released what the abuse made it hold. The frame bodies yamux keeps for reuse
/// (vendor/yamux/src/pool.rs) come on top: they belong to the process, not to a session.
async fn released(meter: &Meter, bound: usize, what: &str) {
    let bound = bound + POOL_KEPT;
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
    let (ty, payload) = read_frame(r).await;
    assert_eq!(ty, FrameType::Accept as u8);
    Accept::decode(&payload).unwrap()
}

/// The next frame on a raw stream: its type byte and payload.
async fn read_frame(r: &mut BoxRead) -> (u8, Vec<u8>) {
    let mut header = [0u8; 5];
    within("a frame header", r.read_exact(&mut header)).await.unwrap();
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let mut payload = vec![0; len - 1];
    within("a frame payload", r.read_exact(&mut payload)).await.unwrap();
    (header[4], payload)
}

const MIB: usize = 1 << 20;

/// The most yamux's frame body pool keeps for the process: 64 blocks of 64 KiB.
const POOL_KEPT: usize = 4 * MIB;

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
    // most its connection window of (max_streams + 64) x 256 KiB + window_growth = 24 MiB,
    // and the frame bodies it keeps for reuse. 160 MiB went through.
    let per_channel = 2 * limits.send_buffer + 3 * limits.max_message_len + 64 * 1024;
    let window = (limits.max_streams + 64) * 256 * 1024 + limits.window_growth;
    let bound = FLOODERS * per_channel + window + POOL_KEPT;
    let peak = meter.peak();
    assert!(peak < bound, "peak {peak} bytes over the bound of {bound}");
    eprintln!("size-limit flood: peak {peak} bytes, bound {bound}");
    drop((client, server));
    released(&meter, 2 * MIB, "size-limit flood").await;
    finish(bystander, before).await;
}

/// Untyped receivers (`libchan::Value`, the costliest decode: 32 bytes per item, however few
/// bytes the item took) are held by `max_untyped_items`. At the default 16 MiB message limit a
/// peer sends a message of 16 million nulls, which took 555 MB to decode before: the
/// receiver counts its items first and refuses it, the sender gets CLOSE_ERR TOO_LARGE naming
/// the limit, and what the session held stays under a bound derived from the item limit.
/// Messages at the limit, wide or deep, are decoded; the session and a bystander go on.
#[tokio::test]
async fn untyped_messages_stay_under_the_item_bound() {
    let _serial = serial().await;
    let limits = Limits::default();
    let listener = listener("tcp", limits.clone()).await;
    let bystander = bystander(&listener).await;
    let meter = Meter::start();
    let before = bystander.rounds();
    let (session, peer) = hostile(&listener).await;
    let (mut r, mut w) = peer.open().await.unwrap();
    w.write_all(&open_frame(1, 0, Kind::Channel, Direction::OpenerSends)).await.unwrap();
    let limit = limits.max_untyped_items;
    // Wide, at the limit: the array and `limit - 1` nulls.
    let at_limit = msg_of_nulls(limit - 1);
    // Deep and wide, within the limit: 4096 arrays each 63 levels deep (64 with the outer
    // one, at max_depth), 1 + 4096 x 63 items.
    let mut deep = vec![0x99, 0x10, 0x00];
    for _ in 0..4096 {
        deep.extend(std::iter::repeat_n(0x81, 62));
        deep.push(0x00);
    }
    assert!(4096 * 63 < limit, "the deep message is within the item limit");
    let deep = frame_bytes(FrameType::Msg, &deep);
    // Over it, at the size limit: a 16 MiB message of nulls.
    let flood = msg_of_nulls(limits.max_message_len - 5);
    // Written from a task of its own: flow control holds the writer until the reader reads.
    let writing = tokio::spawn(async move {
        for _ in 0..3 {
            w.write_all(&at_limit).await.unwrap();
            w.write_all(&deep).await.unwrap();
        }
        w.write_all(&flood).await.unwrap();
        w
    });
    let mut rx = within("accept", session.accept::<libchan::Value>()).await.unwrap();
    for _ in 0..3 {
        let got = within("at the limit", rx.recv()).await.unwrap().unwrap();
        assert!(matches!(got.data, ciborium::Value::Array(ref a) if a.len() == limit - 1));
        drop(got);
        let got = within("deep", rx.recv()).await.unwrap().unwrap();
        assert!(matches!(got.data, ciborium::Value::Array(ref a) if a.len() == 4096));
    }
    let err = within("over the limit", rx.recv()).await.unwrap_err();
    let expected = format!("more than the limit of {limit} CBOR items");
    assert!(err.to_string().contains(&expected), "{err}");
    let _w = within("the writer", writing).await.unwrap();
    // The sender learns it: ACCEPT, then CLOSE_ERR TOO_LARGE naming the limit, then FIN.
    assert_eq!(read_accept(&mut r).await.status, Code::Ok);
    let (ty, payload) = read_frame(&mut r).await;
    assert_eq!(ty, FrameType::CloseErr as u8);
    let close = CloseErr::decode(&payload).unwrap();
    assert_eq!(close.code, Code::TooLarge);
    assert!(close.message.contains(&expected), "{}", close.message);
    // Bound: decoding holds one 32-byte ciborium::Value per item, up to three items' worth
    // while an array doubles, so with a margin 5 x 32 x max_untyped_items (40 MiB); plus the
    // 16 MiB message as the writer holds it and as the receiver buffers it (its buffer may
    // have doubled once), and 8 MiB for the yamux windows and the rest. Without the item
    // limit the flood alone peaked at 555 MB here (measured 51 MB with it).
    let item = std::mem::size_of::<ciborium::Value>();
    let bound = 5 * item * limit + 4 * limits.max_message_len + 8 * MIB;
    let peak = meter.peak();
    eprintln!("untyped flood: peak {peak} bytes, bound {bound} ({item} bytes per decoded item)");
    assert!(peak < bound, "peak {peak} bytes over the bound of {bound}");
    drop(rx);
    // The session still takes a well-formed channel.
    let (_r, mut w) = peer.open().await.unwrap();
    w.write_all(&open_frame(3, 0, Kind::Channel, Direction::OpenerSends)).await.unwrap();
    w.write_all(&msg_of_nulls(2)).await.unwrap();
    let mut rx =
        within("accept after the flood", session.accept::<libchan::Value>()).await.unwrap();
    let got = within("recv after the flood", rx.recv()).await.unwrap().unwrap();
    assert!(matches!(got.data, ciborium::Value::Array(ref a) if a.len() == 2));
    drop((rx, got));
    released(&meter, 2 * MIB, "untyped flood").await;
    finish(bystander, before).await;
}

/// A MSG frame holding an array of `n` nulls, built in place (one copy of a large message).
fn msg_of_nulls(n: usize) -> Vec<u8> {
    let len = u32::try_from(1 + 5 + n).unwrap();
    let mut out = Vec::with_capacity(frame::HEADER_LEN + 5 + n);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(FrameType::Msg as u8);
    out.push(0x9a);
    out.extend_from_slice(&u32::try_from(n).unwrap().to_be_bytes());
    out.resize(frame::HEADER_LEN + 5 + n, 0xf6);
    out
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
    // It measures nothing, but what it allocates would count in a test that does.
    let _serial = serial().await;
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
