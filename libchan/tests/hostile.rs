//! Bad input from a peer: each gets a clear error on the affected channel or stream, never a
//! panic, and the session goes on serving other channels.

use std::time::Duration;

use bytes::BytesMut;
use libchan::proto::{frame, Accept, CloseErr, Code, Direction, FrameType, Kind, Open};
use libchan::raw::{BoxRead, BoxWrite, RawYamux};
use libchan::{
    ByteStream, Limits, Receiver, RecvError, SendFailure, Sender, Session, Value, PREAMBLE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod support;

use support::Bystander;

/// A libchan session on one side, a hand-driven yamux peer on the other.
async fn hostile_pair(limits: Limits) -> (Session, RawYamux) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut peer = TcpStream::connect(addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let session = tokio::spawn(Session::over(server, false, limits, "hostile".into()));
    peer.write_all(PREAMBLE).await.unwrap();
    let mut theirs = [0u8; 8];
    peer.read_exact(&mut theirs).await.unwrap();
    let session = session.await.unwrap().unwrap();
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

fn cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

/// Opens a top-level channel from the hostile peer with ref `ref_id`.
async fn raw_channel(peer: &RawYamux, ref_id: u64) -> (BoxRead, BoxWrite) {
    let (r, mut w) = peer.open().await.unwrap();
    w.write_all(&open_frame(ref_id, 0, Kind::Channel, Direction::OpenerSends)).await.unwrap();
    (r, w)
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f).await.expect("no answer within 20 s")
}

/// A well-formed channel still works on `session` after the abuse.
async fn still_serving(session: &Session, peer: &RawYamux, ref_id: u64) {
    let (_r, mut w) = raw_channel(peer, ref_id).await;
    w.write_all(&frame_bytes(FrameType::Msg, &cbor(&"still here"))).await.unwrap();
    let mut rx = within(session.accept::<String>()).await.unwrap();
    assert_eq!(within(rx.recv()).await.unwrap().as_deref(), Some("still here"));
}

/// A well-behaved session pair in the same process, doing request/response in a loop while
/// a test abuses another session.
async fn bystander() -> Bystander {
    let (client, server) = real_pair(Limits::default()).await;
    Bystander::over(client, server).await
}

/// At least one more round after the abuse, then the bystander stops, never having failed.
async fn finish(bystander: Bystander) {
    bystander.one_more_round().await;
    bystander.finish().await;
}

#[tokio::test]
async fn oversized_length_prefix_is_refused_before_allocating() {
    let (session, peer) = hostile_pair(Limits::default()).await;
    let (_r, mut w) = raw_channel(&peer, 1).await;
    // Announce a 4 GiB frame; send only its header.
    w.write_all(&[0xff, 0xff, 0xff, 0xff, FrameType::Msg as u8]).await.unwrap();
    let mut rx = within(session.accept::<u32>()).await.unwrap();
    let err = within(rx.recv()).await.unwrap_err();
    assert!(matches!(err, RecvError::Protocol(ref m) if m.contains("exceeds the limit")), "{err}");
    still_serving(&session, &peer, 3).await;
}

/// Reads one frame from a raw stream half.
async fn read_frame(r: &mut BoxRead) -> (u8, Vec<u8>) {
    let mut header = [0u8; 5];
    within(r.read_exact(&mut header)).await.unwrap();
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let mut payload = vec![0; len - 1];
    within(r.read_exact(&mut payload)).await.unwrap();
    (header[4], payload)
}

/// Not well-formed CBOR means the peer's encoder is broken: the receiver gets an error for
/// that message, the channel ends, and the sender learns why (CLOSE_ERR DECODE).
#[tokio::test]
async fn malformed_cbor_ends_the_channel_with_decode() {
    let bystander = bystander().await;
    let (session, peer) = hostile_pair(Limits::default()).await;
    let (mut r, mut w) = raw_channel(&peer, 1).await;
    w.write_all(&frame_bytes(FrameType::Msg, &[0x1c])).await.unwrap();
    let mut rx = within(session.accept::<u32>()).await.unwrap();
    let err = within(rx.recv()).await.unwrap_err();
    assert!(matches!(err, RecvError::Protocol(ref m) if m.contains("malformed CBOR")), "{err}");
    assert_eq!(read_frame(&mut r).await.0, FrameType::Accept as u8);
    let (ty, payload) = read_frame(&mut r).await;
    assert_eq!(ty, FrameType::CloseErr as u8);
    let close = CloseErr::decode(&payload).unwrap();
    assert_eq!(close.code, Code::Decode);
    assert!(close.message.contains("malformed CBOR"), "{}", close.message);
    still_serving(&session, &peer, 3).await;
    finish(bystander).await;
}

/// Well-formed CBOR of another shape than the receiver's type fails that message only.
#[tokio::test]
async fn message_of_the_wrong_shape_fails_one_message_and_the_channel_goes_on() {
    let (session, peer) = hostile_pair(Limits::default()).await;
    let (_r, mut w) = raw_channel(&peer, 1).await;
    w.write_all(&frame_bytes(FrameType::Msg, &cbor(&"not a number"))).await.unwrap();
    w.write_all(&frame_bytes(FrameType::Msg, &cbor(&7u32))).await.unwrap();
    let mut rx = within(session.accept::<u32>()).await.unwrap();
    let err = within(rx.recv()).await.unwrap_err();
    assert!(matches!(err, RecvError::Decode(_)), "{err}");
    assert!(!err.is_fatal());
    assert_eq!(within(rx.recv()).await.unwrap(), Some(7));
}

#[tokio::test]
async fn trailing_bytes_after_a_message_are_a_protocol_error() {
    let (session, peer) = hostile_pair(Limits::default()).await;
    let (_r, mut w) = raw_channel(&peer, 1).await;
    let mut payload = cbor(&7u32);
    payload.push(0x00);
    w.write_all(&frame_bytes(FrameType::Msg, &payload)).await.unwrap();
    let mut rx = within(session.accept::<u32>()).await.unwrap();
    let err = within(rx.recv()).await.unwrap_err();
    assert!(matches!(err, RecvError::Protocol(ref m) if m.contains("after the message")), "{err}");
    still_serving(&session, &peer, 3).await;
}

#[tokio::test]
async fn reference_from_another_channel_is_refused() {
    let bystander = bystander().await;
    let (session, peer) = hostile_pair(Limits::default()).await;
    let (_r, mut w) = raw_channel(&peer, 1).await;
    // A nested stream that claims to belong to channel 5, named in a message on channel 1.
    let (_nr, mut nw) = peer.open().await.unwrap();
    nw.write_all(&open_frame(3, 5, Kind::Channel, Direction::AcceptorSends)).await.unwrap();
    let tag =
        ciborium::Value::Tag(libchan::TAG_SENDER, Box::new(ciborium::Value::Integer(3.into())));
    w.write_all(&frame_bytes(FrameType::Msg, &cbor(&tag))).await.unwrap();
    let mut rx = within(session.accept::<Sender<u32>>()).await.unwrap();
    let err = within(rx.recv()).await.unwrap_err();
    assert!(
        matches!(err, RecvError::Protocol(ref m) if m.contains("belongs to channel 5")),
        "{err}"
    );
    still_serving(&session, &peer, 7).await;
    finish(bystander).await;
}

#[tokio::test]
async fn byte_stream_where_a_channel_is_expected_is_refused() {
    let bystander = bystander().await;
    let (session, peer) = hostile_pair(Limits::default()).await;
    let (_r, mut w) = raw_channel(&peer, 1).await;
    let (_nr, mut nw) = peer.open().await.unwrap();
    nw.write_all(&open_frame(3, 1, Kind::ByteStream, Direction::OpenerSends)).await.unwrap();
    let tag =
        ciborium::Value::Tag(libchan::TAG_SENDER, Box::new(ciborium::Value::Integer(3.into())));
    w.write_all(&frame_bytes(FrameType::Msg, &cbor(&tag))).await.unwrap();
    let mut rx = within(session.accept::<Sender<u32>>()).await.unwrap();
    match within(rx.recv()).await {
        // The stream may arrive before or after the message: either way the handle fails.
        Err(RecvError::Protocol(m)) => assert!(m.contains("was expected"), "{m}"),
        Ok(Some(sender)) => {
            within(sender.closed()).await;
            assert!(sender.send(1).await.unwrap_err().is_closed());
        }
        other => panic!("unexpected {other:?}"),
    }
    finish(bystander).await;
}

#[tokio::test]
async fn duplicate_and_excess_references_are_refused() {
    let mut limits = Limits::default();
    limits.max_refs_per_message = 4;
    let (session, peer) = hostile_pair(limits).await;
    let (_r, mut w) = raw_channel(&peer, 1).await;
    let tag = |id: u64| {
        ciborium::Value::Tag(libchan::TAG_SENDER, Box::new(ciborium::Value::Integer(id.into())))
    };
    // The same reference twice in one message.
    w.write_all(&frame_bytes(FrameType::Msg, &cbor(&vec![tag(3), tag(3)]))).await.unwrap();
    let mut rx = within(session.accept::<Vec<Sender<u32>>>()).await.unwrap();
    let err = within(rx.recv()).await.unwrap_err();
    assert!(matches!(err, RecvError::Protocol(ref m) if m.contains("twice")), "{err}");

    // At the limit: accepted (the streams never come; the handles fail after the TTL).
    let (_r, mut w) = raw_channel(&peer, 5).await;
    let four: Vec<_> = (0..4).map(|i| tag(101 + 2 * i)).collect();
    w.write_all(&frame_bytes(FrameType::Msg, &cbor(&four))).await.unwrap();
    let five: Vec<_> = (0..5).map(|i| tag(201 + 2 * i)).collect();
    w.write_all(&frame_bytes(FrameType::Msg, &cbor(&five))).await.unwrap();
    let mut rx = within(session.accept::<Vec<Sender<u32>>>()).await.unwrap();
    assert_eq!(within(rx.recv()).await.unwrap().unwrap().len(), 4);
    let err = within(rx.recv()).await.unwrap_err();
    assert!(
        matches!(err, RecvError::Protocol(ref m) if m.contains("more than 4 references")),
        "{err}"
    );
    still_serving(&session, &peer, 9).await;
}

#[tokio::test]
async fn nesting_deeper_than_the_limit_is_refused() {
    let mut limits = Limits::default();
    limits.max_depth = 16;
    let (session, peer) = hostile_pair(limits).await;
    let (_r, mut w) = raw_channel(&peer, 1).await;
    let ok = [vec![0x81u8; 15], vec![0x00]].concat();
    let deep = [vec![0x81u8; 17], vec![0x00]].concat();
    w.write_all(&frame_bytes(FrameType::Msg, &ok)).await.unwrap();
    w.write_all(&frame_bytes(FrameType::Msg, &deep)).await.unwrap();
    let mut rx = within(session.accept::<ciborium::Value>()).await.unwrap();
    assert!(within(rx.recv()).await.unwrap().is_some(), "15 levels are within the limit");
    let err = within(rx.recv()).await.unwrap_err();
    assert!(
        matches!(err, RecvError::Protocol(ref m) if m.contains("deeper than the limit")),
        "{err}"
    );
    still_serving(&session, &peer, 3).await;
}

#[tokio::test]
async fn opens_beyond_the_accept_queue_are_refused_with_a_code() {
    let mut limits = Limits::default();
    limits.accept_queue = 4;
    let (session, peer) = hostile_pair(limits).await;
    let mut refused = 0;
    let mut streams = Vec::new();
    for i in 0..6u64 {
        let (mut r, w) = raw_channel(&peer, 1 + 2 * i).await;
        let mut header = [0u8; 5];
        within(r.read_exact(&mut header)).await.unwrap();
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let mut payload = vec![0; len - 1];
        within(r.read_exact(&mut payload)).await.unwrap();
        let accept = Accept::decode(&payload).unwrap();
        if accept.status == Code::AcceptQueueFull {
            refused += 1;
        } else {
            assert_eq!(accept.status, Code::Ok);
        }
        streams.push((r, w));
    }
    assert_eq!(refused, 2, "a queue of 4 takes 4 of 6 opens");
    for _ in 0..4 {
        within(session.accept::<u32>()).await.unwrap();
    }
    still_serving(&session, &peer, 101).await;
}

#[tokio::test]
async fn streams_that_never_send_open_time_out() {
    let mut limits = Limits::default();
    limits.open_timeout = Duration::from_millis(300);
    let (session, peer) = hostile_pair(limits).await;
    // Open streams and write nothing; yamux shows them to the acceptor once a byte arrives,
    // so send half a header.
    let mut idle = Vec::new();
    for _ in 0..20 {
        let (r, mut w) = peer.open().await.unwrap();
        w.write_all(&[0, 0]).await.unwrap();
        idle.push((r, w));
    }
    // Each idle stream is reset by the acceptor after the timeout.
    for (r, _w) in idle.iter_mut() {
        let mut buf = [0u8; 1];
        let read = within(r.read(&mut buf)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "idle stream got {read:?}");
    }
    still_serving(&session, &peer, 1).await;
}

#[tokio::test]
async fn garbage_instead_of_the_preamble_is_refused() {
    let listener = libchan::listen("tcp://127.0.0.1:0").await.unwrap();
    let addr = listener.local_url().trim_start_matches("tcp://").to_string();
    let mut peer = TcpStream::connect(&addr).await.unwrap();
    peer.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    // The listener answers with its preamble and then drops the connection.
    let _ = within(peer.read_to_end(&mut buf)).await;
    assert!(buf.starts_with(PREAMBLE));
    // And keeps serving well-behaved clients.
    let client = within(libchan::connect(listener.local_url())).await.unwrap();
    let server = within(listener.accept()).await.unwrap();
    let tx = client.open::<u8>().await.unwrap();
    tx.send(1).await.unwrap();
    let mut rx = within(server.accept::<u8>()).await.unwrap();
    assert_eq!(within(rx.recv()).await.unwrap(), Some(1));
}

#[tokio::test]
async fn streams_beyond_the_peer_share_are_refused_and_the_session_survives() {
    let mut limits = Limits::default();
    limits.max_streams = 16;
    let (session, peer) = hostile_pair(limits).await;
    // The peer's share is 8 streams; it opens 12 and keeps them all.
    let mut statuses = Vec::new();
    let mut held = Vec::new();
    for i in 0..12u64 {
        let (mut r, w) = raw_channel(&peer, 1 + 2 * i).await;
        let mut header = [0u8; 5];
        within(r.read_exact(&mut header)).await.unwrap();
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let mut payload = vec![0; len - 1];
        within(r.read_exact(&mut payload)).await.unwrap();
        statuses.push(Accept::decode(&payload).unwrap().status);
        held.push((r, w));
    }
    assert_eq!(statuses.iter().filter(|s| **s == Code::Ok).count(), 8, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == Code::TooManyStreams).count(), 4, "{statuses:?}");
    let mut accepted = Vec::new();
    for _ in 0..8 {
        accepted.push(within(session.accept::<u32>()).await.unwrap());
    }
    // Releasing streams makes room again, on the same session.
    drop(accepted);
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    still_serving(&session, &peer, 101).await;
    assert!(session.close_reason().is_none(), "{:?}", session.close_reason());
}

/// A libchan dialer session, and a hand-driven yamux listener on the other side.
async fn hostile_listener_pair(limits: Limits) -> (Session, RawYamux) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = TcpStream::connect(addr).await.unwrap();
    let (mut peer, _) = listener.accept().await.unwrap();
    let session = tokio::spawn(Session::over(client, true, limits, "hostile".into()));
    peer.write_all(PREAMBLE).await.unwrap();
    let mut theirs = [0u8; 8];
    peer.read_exact(&mut theirs).await.unwrap();
    let session = session.await.unwrap().unwrap();
    (session, RawYamux::start(peer, false))
}

#[tokio::test]
async fn reference_zero_from_the_listener_is_refused() {
    let (session, peer) = hostile_listener_pair(Limits::default()).await;
    // 0 has the listener's parity (even) but is reserved.
    let (mut r, mut w) = peer.open().await.unwrap();
    w.write_all(&open_frame(0, 0, Kind::Channel, Direction::OpenerSends)).await.unwrap();
    let (ty, payload) = read_frame(&mut r).await;
    assert_eq!(ty, FrameType::Accept as u8);
    let accept = Accept::decode(&payload).unwrap();
    assert_eq!(accept.status, Code::Protocol, "{accept:?}");
    assert!(accept.error.unwrap_or_default().contains("reserved"));
    // An even id is fine.
    still_serving(&session, &peer, 2).await;
}

#[tokio::test]
async fn reuse_of_a_claimed_reference_is_refused_at_once() {
    let bystander = bystander().await;
    let mut limits = Limits::default();
    limits.pending_ref_ttl = Duration::from_secs(120);
    let (session, peer) = hostile_pair(limits).await;
    let (_r, mut w) = raw_channel(&peer, 1).await;
    let (_nr, mut nw) = peer.open().await.unwrap();
    nw.write_all(&open_frame(3, 1, Kind::Channel, Direction::AcceptorSends)).await.unwrap();
    let tag =
        ciborium::Value::Tag(libchan::TAG_SENDER, Box::new(ciborium::Value::Integer(3.into())));
    w.write_all(&frame_bytes(FrameType::Msg, &cbor(&tag))).await.unwrap();
    let mut rx = within(session.accept::<Sender<u32>>()).await.unwrap();
    let _sender = within(rx.recv()).await.unwrap().unwrap();
    // A second stream with the same id is refused at once, not parked for the TTL.
    let (mut again_r, mut again_w) = peer.open().await.unwrap();
    again_w.write_all(&open_frame(3, 1, Kind::Channel, Direction::AcceptorSends)).await.unwrap();
    let (_, payload) = read_frame(&mut again_r).await;
    let accept = Accept::decode(&payload).unwrap();
    assert_eq!(accept.status, Code::Protocol, "{accept:?}");
    assert!(accept.error.unwrap_or_default().contains("already used"));
    // A second message naming it fails at once too, not after the 120 s TTL.
    w.write_all(&frame_bytes(FrameType::Msg, &cbor(&tag))).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the reuse must be caught at once, not after the TTL")
        .unwrap_err();
    assert!(matches!(err, RecvError::Protocol(ref m) if m.contains("already used")), "{err}");
    still_serving(&session, &peer, 5).await;
    finish(bystander).await;
}

/// Streams named on a channel whose receiver is gone are let go when it goes: one parked is
/// dropped at once, and one that comes later is refused, rather than each waiting for the TTL
/// while the end that sent it waits on it.
#[tokio::test]
async fn streams_for_a_channel_that_ended_are_let_go() {
    let mut limits = Limits::default();
    limits.pending_ref_ttl = Duration::from_secs(120);
    let (session, peer) = hostile_pair(limits).await;
    let (_r, _w) = raw_channel(&peer, 1).await;
    let rx = within(session.accept::<u32>()).await.unwrap();
    // A stream for a message on channel 1 that is never read, here before its message. (One
    // the peer sends on, which is ACCEPTed at once: see `accepts_owed_lead_the_first_frame`.)
    let (mut early_r, mut early_w) = peer.open().await.unwrap();
    early_w.write_all(&open_frame(3, 1, Kind::Channel, Direction::OpenerSends)).await.unwrap();
    let (_, payload) = read_frame(&mut early_r).await;
    assert_eq!(Accept::decode(&payload).unwrap().status, Code::Ok);
    drop(rx);
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), early_r.read_to_end(&mut rest))
        .await
        .expect("the parked stream is let go with its channel, not after the TTL");
    assert!(ended.is_err() || rest.is_empty(), "{ended:?} after {rest:?}");
    // A stream for channel 1 that comes after it ended is refused at once.
    let (mut late_r, mut late_w) = peer.open().await.unwrap();
    late_w.write_all(&open_frame(5, 1, Kind::Channel, Direction::AcceptorSends)).await.unwrap();
    let (_, payload) = read_frame(&mut late_r).await;
    let accept = Accept::decode(&payload).unwrap();
    assert_eq!(accept.status, Code::Rendezvous, "{accept:?}");
    assert!(accept.error.unwrap_or_default().contains("channel 1, which has ended"));
    still_serving(&session, &peer, 7).await;
}

/// A nested channel the acceptor sends on (a reply channel) gets its ACCEPT with the first
/// frame the acceptor writes there, ahead of it, not alone when the stream arrives; at most
/// 64 wait so at once per session, and the streams beyond are ACCEPTed at once.
#[tokio::test]
async fn accepts_owed_lead_the_first_frame() {
    let (session, peer) = hostile_pair(Limits::default()).await;
    let (_r, mut w) = raw_channel(&peer, 1).await;
    let mut replies = Vec::new();
    for n in 0..65u64 {
        let (mut r, mut w) = peer.open().await.unwrap();
        w.write_all(&open_frame(3 + 2 * n, 1, Kind::Channel, Direction::AcceptorSends))
            .await
            .unwrap();
        if n == 64 {
            // Over the bound: ACCEPTed at once, before its sender is even decoded.
            let (ty, payload) = read_frame(&mut r).await;
            assert_eq!(ty, FrameType::Accept as u8);
            assert_eq!(Accept::decode(&payload).unwrap().status, Code::Ok);
        }
        replies.push((r, w));
    }
    // One message naming the first stream's sender.
    let named = ciborium::Value::Tag(libchan::TAG_SENDER, Box::new(3.into()));
    w.write_all(&frame_bytes(FrameType::Msg, &cbor(&named))).await.unwrap();
    let mut rx = within(session.accept::<Sender<u32>>()).await.unwrap();
    let reply = within(rx.recv()).await.unwrap().unwrap();
    // Nothing came on it yet: the sender has not written.
    let (first, _) = &mut replies[0];
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(100), first.read(&mut byte)).await;
    assert!(early.is_err(), "a frame before the sender wrote: {early:?}");
    reply.send(7).await.unwrap();
    let (ty, payload) = read_frame(first).await;
    assert_eq!(ty, FrameType::Accept as u8, "the ACCEPT leads");
    assert_eq!(Accept::decode(&payload).unwrap().status, Code::Ok);
    let (ty, payload) = read_frame(first).await;
    assert_eq!((ty, payload), (FrameType::Msg as u8, cbor(&7u32)));
    // Its share of the bound came back: the next such stream owes its ACCEPT again.
    let (mut next, mut next_w) = peer.open().await.unwrap();
    next_w.write_all(&open_frame(133, 1, Kind::Channel, Direction::AcceptorSends)).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(100), next.read(&mut byte)).await;
    assert!(early.is_err(), "ACCEPTed at once: {early:?}");
    // A sender dropped without sending still sends its ACCEPT, then its FIN.
    let named = ciborium::Value::Tag(libchan::TAG_SENDER, Box::new(5.into()));
    w.write_all(&frame_bytes(FrameType::Msg, &cbor(&named))).await.unwrap();
    drop(within(rx.recv()).await.unwrap().unwrap());
    let (second, _) = &mut replies[1];
    let (ty, payload) = read_frame(second).await;
    assert_eq!(ty, FrameType::Accept as u8);
    assert_eq!(Accept::decode(&payload).unwrap().status, Code::Ok);
    let mut rest = Vec::new();
    within(second.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    still_serving(&session, &peer, 201).await;
}

/// Handles whose streams had not arrived when their session ended fail with the session's
/// reason, rather than wait for streams that can no longer come (the pending table's TTL
/// stops with the session).
#[tokio::test]
async fn handles_waiting_for_their_streams_fail_when_the_session_ends() {
    let mut limits = Limits::default();
    limits.pending_ref_ttl = Duration::from_secs(120);
    // A byte stream still to arrive holds a clean close back until this runs out.
    limits.drain_timeout = Duration::from_millis(200);
    let (session, peer) = hostile_pair(limits).await;
    let (_r, mut w) = raw_channel(&peer, 1).await;
    let tag = |tag: u64, id: u64| ciborium::Value::Tag(tag, Box::new(id.into()));
    let named = ciborium::Value::Array(vec![
        tag(libchan::TAG_RECEIVER, 3),
        tag(libchan::TAG_SENDER, 5),
        tag(libchan::TAG_BYTE_STREAM, 7),
    ]);
    w.write_all(&frame_bytes(FrameType::Msg, &cbor(&named))).await.unwrap();
    let mut rx =
        within(session.accept::<(Receiver<u32>, Sender<u32>, ByteStream)>()).await.unwrap();
    let (mut receiver, sender, mut bytes) = within(rx.recv()).await.unwrap().unwrap();
    within(session.close(Code::Ok, "done")).await;
    let reason = "closed locally with ok (0): done";
    let bound = Duration::from_secs(10);
    let error = tokio::time::timeout(bound, receiver.recv())
        .await
        .expect("the receiver fails with its session, not after the TTL")
        .unwrap_err();
    assert_eq!(error.to_string(), format!("connection lost: {reason}"));
    tokio::time::timeout(bound, sender.closed())
        .await
        .expect("the sender is closed with its session, not after the TTL");
    let mut buf = [0u8; 1];
    let error = tokio::time::timeout(bound, bytes.read(&mut buf))
        .await
        .expect("the byte stream fails with its session, not after the TTL")
        .unwrap_err();
    assert!(error.to_string().contains("session closed before"), "{error}");
}

#[tokio::test]
async fn a_session_whose_peer_never_opens_its_control_stream_times_out() {
    let mut limits = Limits::default();
    limits.heartbeat_interval = Duration::from_millis(200);
    limits.idle_timeout = Duration::from_millis(800);
    let (session, _peer) = hostile_pair(limits).await;
    let reason = within(session.closed()).await;
    assert!(reason.contains("no control stream"), "{reason}");
}

#[tokio::test]
async fn a_control_stream_that_ends_without_close_err_closes_the_session() {
    let (session, peer) = hostile_pair(Limits::default()).await;
    let (mut r, mut w) = peer.open().await.unwrap();
    w.write_all(&open_frame(0, 0, Kind::Control, Direction::OpenerSends)).await.unwrap();
    assert_eq!(read_frame(&mut r).await.0, FrameType::Accept as u8);
    w.write_all(&frame_bytes(FrameType::Ping, &[])).await.unwrap();
    w.shutdown().await.unwrap();
    let reason = within(session.closed()).await;
    assert!(reason.contains("control stream"), "{reason}");
}

#[tokio::test]
async fn a_message_on_the_control_stream_closes_the_session() {
    let (session, peer) = hostile_pair(Limits::default()).await;
    let (mut r, mut w) = peer.open().await.unwrap();
    w.write_all(&open_frame(0, 0, Kind::Control, Direction::OpenerSends)).await.unwrap();
    assert_eq!(read_frame(&mut r).await.0, FrameType::Accept as u8);
    w.write_all(&frame_bytes(FrameType::Msg, &cbor(&1u32))).await.unwrap();
    let reason = within(session.closed()).await;
    assert!(reason.contains("protocol violation"), "{reason}");
}

/// Frames a channel's sending direction must not carry: each ends that channel as a
/// protocol violation, and the session goes on.
#[tokio::test]
async fn frames_of_the_wrong_type_for_the_state_end_the_channel() {
    let bystander = bystander().await;
    let (session, peer) = hostile_pair(Limits::default()).await;
    let open = open_frame(99, 0, Kind::Channel, Direction::OpenerSends);
    let wrong = [
        ("PING", frame_bytes(FrameType::Ping, &[])),
        ("second OPEN", open),
        ("ACCEPT from the opener", frame_bytes(FrameType::Accept, &Accept::ok().encode())),
        ("RECV_CLOSED from the sender", frame_bytes(FrameType::RecvClosed, &[])),
    ];
    let mut held = Vec::new();
    for (i, (what, frame)) in wrong.into_iter().enumerate() {
        let (r, mut w) = raw_channel(&peer, 1 + 2 * i as u64).await;
        w.write_all(&frame_bytes(FrameType::Msg, &cbor(&1u32))).await.unwrap();
        w.write_all(&frame).await.unwrap();
        let mut rx = within(session.accept::<u32>()).await.unwrap();
        assert_eq!(within(rx.recv()).await.unwrap(), Some(1), "{what}: the message before");
        let err = within(rx.recv()).await.unwrap_err();
        assert!(
            matches!(err, RecvError::Protocol(ref m) if m.contains("unexpected")),
            "{what}: {err}"
        );
        held.push((r, w));
    }
    still_serving(&session, &peer, 101).await;
    finish(bystander).await;
}

/// Two real sessions over TCP, the listener with `server` limits.
async fn real_pair(server: Limits) -> (Session, Session) {
    let listener = libchan::listen_with("tcp://127.0.0.1:0", server).await.unwrap();
    let client = within(libchan::connect(listener.local_url())).await.unwrap();
    (client, within(listener.accept()).await.unwrap())
}

/// A message its type refuses while decoding (`libchan::refuse`) ends the channel with the
/// code and text the type chose, and the sender's next send fails with them; the messages
/// before it are received.
#[tokio::test]
async fn a_message_its_type_refuses_ends_the_channel_with_its_code() {
    /// At most four bytes.
    #[derive(Debug, serde::Serialize)]
    struct Short(Vec<u8>);

    impl<'de> serde::Deserialize<'de> for Short {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let bytes = Vec::<u8>::deserialize(d)?;
            if bytes.len() > 4 {
                return Err(libchan::refuse(Code::TooLarge, "more than 4 bytes"));
            }
            Ok(Self(bytes))
        }
    }

    let (client, server) = real_pair(Limits::default()).await;
    let tx = client.open::<Vec<u8>>().await.unwrap();
    tx.send(vec![1; 4]).await.unwrap();
    tx.send(vec![1; 5]).await.unwrap();
    let mut rx = within(server.accept::<Short>()).await.unwrap();
    assert_eq!(within(rx.recv()).await.unwrap().unwrap().0, [1; 4]);
    let err = within(rx.recv()).await.unwrap_err();
    assert!(matches!(err, RecvError::Protocol(ref m) if m == "more than 4 bytes"), "{err}");
    within(tx.closed()).await;
    let err = tx.send(vec![]).await.unwrap_err();
    let refused =
        SendFailure::Refused { code: Code::TooLarge, message: "more than 4 bytes".into() };
    assert_eq!(*err.reason(), refused);
}

#[tokio::test]
async fn an_oversize_message_ends_the_channel_with_too_large_and_the_sender_learns_the_limit() {
    let mut limits = Limits::default();
    limits.max_message_len = 1000;
    let (client, server) = real_pair(limits).await;
    let tx = client.open::<Vec<u8>>().await.unwrap();
    tx.send(vec![1; 10]).await.unwrap();
    // Within the client's own (default) limit, over the server's.
    tx.send(vec![2; 2000]).await.unwrap();
    let mut rx = within(server.accept::<Vec<u8>>()).await.unwrap();
    assert_eq!(within(rx.recv()).await.unwrap(), Some(vec![1; 10]));
    let err = within(rx.recv()).await.unwrap_err();
    assert!(err.to_string().contains("exceeds the limit of 1000"), "{err}");
    within(tx.closed()).await;
    let err = tx.send(vec![3]).await.unwrap_err();
    match err.reason() {
        SendFailure::Refused { code, message } => {
            assert_eq!(*code, Code::TooLarge);
            assert!(message.contains("limit of 1000"), "{message}");
        }
        other => panic!("expected a refusal naming the limit, got {other:?}"),
    }
    assert!(err.is_closed());
}

#[tokio::test]
async fn a_refused_top_level_open_gives_the_opener_the_code() {
    let mut limits = Limits::default();
    limits.accept_queue = 1;
    let (client, server) = real_pair(limits).await;
    let first = client.open::<u32>().await.unwrap();
    first.send(1).await.unwrap();
    let second = client.open::<u32>().await.unwrap();
    within(first.accepted()).await.expect("the first fits the queue");
    let refused = within(second.accepted()).await.unwrap_err();
    let expected = "accept queue of 1 is full".to_owned();
    assert_eq!(refused, SendFailure::Refused { code: Code::AcceptQueueFull, message: expected });
    within(second.closed()).await;
    let err = second.send(2).await.unwrap_err();
    match err.reason() {
        SendFailure::Refused { code, message } => {
            assert_eq!(*code, Code::AcceptQueueFull);
            assert!(message.contains("accept queue of 1 is full"), "{message}");
        }
        other => panic!("expected the ACCEPT refusal, got {other:?}"),
    }
    assert_eq!(err.into_inner(), 2);
    let mut rx = within(server.accept::<u32>()).await.unwrap();
    assert_eq!(within(rx.recv()).await.unwrap(), Some(1));
}

/// The handles a message on a refused top-level channel carries end at once: the acceptor
/// refuses their streams instead of parking them for the rendezvous TTL (30 s), so an opener
/// waiting for an answer learns at once that none will come.
#[tokio::test]
async fn the_handles_sent_on_a_refused_channel_end_at_once() {
    let mut limits = Limits::default();
    limits.accept_queue = 1;
    let (client, server) = real_pair(limits).await;
    let first = client.open::<Sender<u32>>().await.unwrap();
    let (ret, mut first_answers) = libchan::pipe::<u32>();
    first.send(ret).await.unwrap();
    let second = client.open::<Sender<u32>>().await.unwrap();
    let (ret, mut answers) = libchan::pipe::<u32>();
    second.send(ret).await.unwrap();
    let started = std::time::Instant::now();
    let refused = within(second.accepted()).await.unwrap_err();
    assert!(matches!(refused, SendFailure::Refused { code: Code::AcceptQueueFull, .. }));
    let error = within(answers.recv()).await.expect_err("the answers end with an error");
    assert!(error.to_string().contains("which has ended"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5), "ended after {:?}", started.elapsed());
    // The accepted channel's handle still works.
    let mut rx = within(server.accept::<Sender<u32>>()).await.unwrap();
    let answer = within(rx.recv()).await.unwrap().unwrap();
    answer.send(7).await.unwrap();
    assert_eq!(within(first_answers.recv()).await.unwrap(), Some(7));
}

/// A value nested deeper than `max_depth` fails locally, comes back, and nothing is sent.
#[tokio::test]
async fn a_send_nested_deeper_than_the_limit_fails_locally() {
    let mut limits = Limits::default();
    limits.max_depth = 16;
    let listener = libchan::listen_with("tcp://127.0.0.1:0", limits.clone()).await.unwrap();
    let client = within(libchan::connect_with(listener.local_url(), limits)).await.unwrap();
    let server = within(listener.accept()).await.unwrap();
    let nested = |levels: usize| {
        let mut v = ciborium::Value::Integer(levels.into());
        for _ in 0..levels {
            v = ciborium::Value::Array(vec![v]);
        }
        Value::new(v)
    };
    let tx = client.open::<Value>().await.unwrap();
    tx.send(nested(15)).await.unwrap();
    tx.send(nested(16)).await.unwrap();
    let err = tx.send(nested(17)).await.unwrap_err();
    assert_eq!(*err.reason(), SendFailure::TooDeep { limit: 16 });
    assert!(err.to_string().contains("deeper than the limit of 16"), "{err}");
    assert!(matches!(err.into_inner().data, ciborium::Value::Array(_)), "the value comes back");
    tx.send(nested(1)).await.unwrap();
    let mut rx = within(server.accept::<Value>()).await.unwrap();
    for levels in [15, 16, 1] {
        let mut got = within(rx.recv()).await.unwrap().unwrap().data;
        let mut depth = 0;
        while let ciborium::Value::Array(mut inner) = got {
            got = inner.remove(0);
            depth += 1;
        }
        assert_eq!(depth, levels, "nothing of the refused send went out");
    }
}

/// Opens that race the end of the connection fail at once with the reason the session ended,
/// never the transport's bare "session closed" (the soak reported `session closed: session
/// closed`: the open found the connection gone before the session had recorded why). An open
/// queued for the yamux driver just as it ended used to wait 10 s for an answer that never
/// came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_racing_the_end_of_the_connection_say_why_the_session_ended() {
    for round in 0..300 {
        // A peer that sends the preamble and nothing more, then closes its socket.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let session = tokio::spawn(Session::over(server, false, Limits::default(), "gone".into()));
        peer.write_all(PREAMBLE).await.unwrap();
        let mut theirs = [0u8; 8];
        within(peer.read_exact(&mut theirs)).await.unwrap();
        let session = within(session).await.unwrap().unwrap();
        let opening = tokio::spawn(async move {
            // Bounded: the session learns of the lost connection within moments.
            for _ in 0..100_000 {
                match session.open::<u32>().await {
                    Ok(tx) => drop(tx),
                    Err(libchan::OpenError::TooManyStreams { .. }) => {}
                    Err(error) => return (error.to_string(), session.close_reason()),
                }
                tokio::task::yield_now().await;
            }
            panic!("opens still succeed after the connection was dropped");
        });
        // The peer goes away without a word: its connection just ends.
        drop(peer);
        // Well within the 10 s an open waits for a driver that is alive but cannot open yet
        // (256 streams unacknowledged): an open does not wait on a driver that has ended.
        let (error, reason) = tokio::time::timeout(Duration::from_secs(5), opening)
            .await
            .unwrap_or_else(|_| panic!("round {round}: an open outlived the connection by 5 s"))
            .unwrap();
        let reason = reason.expect("the session knows it is closed once an open failed");
        assert_ne!(reason, "session closed", "round {round}");
        assert_eq!(error, format!("session closed: {reason}"), "round {round}");
    }
}
