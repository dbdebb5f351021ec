//! The example byte sequences of `docs/PROTOCOL.md` §13, each checked both ways: encoding the
//! values gives exactly these bytes, and decoding the bytes gives back the values.
//!
//! The hex strings below are copied from the document (`examples_appear_in_the_document`
//! keeps the two in step). The last tests run a real session against a hand-driven yamux peer,
//! so the examples are also exactly what the implementation puts on the wire.

use std::time::Duration;

use bytes::BytesMut;
use ciborium::tag::Required;
use ciborium::Value as Cbor;
use libchan::proto::{
    frame, Accept, CloseErr, Code, Direction, FrameDecoder, FrameType, Kind, Open,
};
use libchan::raw::{BoxRead, BoxWrite, RawYamux};
use libchan::{Limits, Sender, Session, TAG_SENDER};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// §13.1: the preamble, both ways, on stream transports.
const PREAMBLE: &str = "6c 69 62 63 68 61 6e 01";

// §13.2: a control stream.
const CONTROL_OPEN: &str = "00 00 00 08 01 a2 61 6b 02 61 72 00";
const ACCEPT_OK: &str = "00 00 00 05 02 a1 61 73 00";
const PING: &str = "00 00 00 01 06";

// §13.3: a top-level channel carrying a nested sender.
const TOP_LEVEL_OPEN: &str = "00 00 00 08 01 a2 61 6b 00 61 72 03";
const MSG_REQUEST: &str = "
00 00 00 0f 03 a2 61 6e 14 65 72 65 70 6c 79 d9
d0 00 05";
const NESTED_SENDER_OPEN: &str = "
00 00 00 0e 01 a4 61 6b 00 61 72 05 61 70 03 61
64 01";
const MSG_REPLY: &str = "00 00 00 02 03 16";
const RECV_CLOSED: &str = "00 00 00 01 05";

// §13.4: a message with a struct, then the channel ends with an error.
const GREETING_OPEN: &str = "00 00 00 08 01 a2 61 6b 00 61 72 07";
const MSG_GREETING: &str = "
00 00 00 0e 03 a2 61 6e 18 2a 64 74 65 78 74 62
68 69";
const CLOSE_ERR: &str = "
00 00 00 0c 04 a2 61 63 02 61 6d 64 62 6f 6f 6d";

// §13.5: a refused channel.
const ACCEPT_QUEUE_FULL: &str = "
00 00 00 24 02 a2 61 73 03 61 65 78 1b 61 63 63
65 70 74 20 71 75 65 75 65 20 6f 66 20 31 32 38
20 69 73 20 66 75 6c 6c";

// §13.6: a nested byte stream.
const BYTE_STREAM_OPEN: &str = "
00 00 00 0b 01 a3 61 6b 01 61 72 09 61 70 03";

// §13.7: closing a session.
const SESSION_CLOSE: &str = "
00 00 00 0b 04 a2 61 63 09 61 6d 63 62 79 65";

const ALL: [&str; 15] = [
    PREAMBLE,
    CONTROL_OPEN,
    ACCEPT_OK,
    PING,
    TOP_LEVEL_OPEN,
    MSG_REQUEST,
    NESTED_SENDER_OPEN,
    MSG_REPLY,
    RECV_CLOSED,
    GREETING_OPEN,
    MSG_GREETING,
    CLOSE_ERR,
    ACCEPT_QUEUE_FULL,
    BYTE_STREAM_OPEN,
    SESSION_CLOSE,
];

/// A decoder with the default limits, as a session builds it (the frame length counts the
/// type byte, the limits count the payload).
const DECODER: FrameDecoder = FrameDecoder { max_msg: (16 << 20) + 1, max_control: (4 << 10) + 1 };

/// The struct of the greeting example.
#[derive(Debug, Deserialize, Eq, PartialEq, Serialize)]
struct Greeting {
    n: u32,
    text: String,
}

/// The request of the walk-through, as the application writes it.
#[derive(Deserialize, Serialize)]
struct Request {
    n: u32,
    reply: Sender<u32>,
}

/// The same request as plain CBOR: the reference is a tagged integer.
#[derive(Debug, Deserialize, Eq, PartialEq, Serialize)]
struct RequestOnTheWire {
    n: u32,
    reply: Required<u64, TAG_SENDER>,
}

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace().map(|b| u8::from_str_radix(b, 16).expect("a hex byte")).collect()
}

fn framed(ty: FrameType, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame::encode(ty, payload, &mut out);
    out.to_vec()
}

/// Decodes exactly one frame from `bytes`.
fn unframed(bytes: &[u8]) -> (FrameType, Vec<u8>) {
    let mut buf = BytesMut::from(bytes);
    let (ty, payload) = DECODER.decode(&mut buf).expect("a valid frame").expect("a whole frame");
    assert!(buf.is_empty(), "one frame, nothing after it");
    (ty, payload.to_vec())
}

fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("encodes");
    out
}

fn uncbor<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
    ciborium::from_reader(bytes).expect("decodes")
}

fn open(kind: Kind, ref_id: u64, parent: u64, direction: Direction) -> Open {
    Open { kind, ref_id, parent, direction, content_type: None }
}

/// Checks an OPEN example both ways.
fn check_open(example: &str, value: Open) {
    assert_eq!(framed(FrameType::Open, &value.encode()), hex(example));
    let (ty, payload) = unframed(&hex(example));
    assert_eq!(ty, FrameType::Open);
    assert_eq!(Open::decode(&payload), Ok(value));
}

#[test]
fn examples_appear_in_the_document() {
    let doc = include_str!("../../docs/PROTOCOL.md");
    let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    for example in ALL {
        let example = example.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(doc.contains(&example), "PROTOCOL.md lacks the example {example}");
    }
}

#[test]
fn preamble() {
    assert_eq!(libchan::PREAMBLE.as_slice(), hex(PREAMBLE));
    assert_eq!(&hex(PREAMBLE), b"libchan\x01");
}

#[test]
fn control_stream_open() {
    check_open(CONTROL_OPEN, open(Kind::Control, 0, 0, Direction::OpenerSends));
}

#[test]
fn accept_ok() {
    assert_eq!(framed(FrameType::Accept, &Accept::ok().encode()), hex(ACCEPT_OK));
    let (ty, payload) = unframed(&hex(ACCEPT_OK));
    assert_eq!(ty, FrameType::Accept);
    assert_eq!(Accept::decode(&payload), Ok(Accept { status: Code::Ok, error: None }));
}

#[test]
fn ping_and_recv_closed_are_empty() {
    for (example, ty) in [(PING, FrameType::Ping), (RECV_CLOSED, FrameType::RecvClosed)] {
        assert_eq!(framed(ty, &[]), hex(example));
        assert_eq!(unframed(&hex(example)), (ty, Vec::new()));
    }
    assert_eq!(FrameType::Ping as u8, 6);
    assert_eq!(FrameType::RecvClosed as u8, 5);
}

#[test]
fn top_level_open() {
    check_open(TOP_LEVEL_OPEN, open(Kind::Channel, 3, 0, Direction::OpenerSends));
}

#[test]
fn message_with_a_sender_reference() {
    let value = RequestOnTheWire { n: 20, reply: Required(5) };
    assert_eq!(framed(FrameType::Msg, &cbor(&value)), hex(MSG_REQUEST));
    let (ty, payload) = unframed(&hex(MSG_REQUEST));
    assert_eq!(ty, FrameType::Msg);
    assert_eq!(uncbor::<RequestOnTheWire>(&payload), value);
    // What an untyped relay sees: a map whose "reply" is tag 53248 around the ref id.
    let untyped: Cbor = uncbor(&payload);
    let expected = Cbor::Map(vec![
        (Cbor::Text("n".into()), Cbor::Integer(20.into())),
        (Cbor::Text("reply".into()), Cbor::Tag(53248, Box::new(Cbor::Integer(5.into())))),
    ]);
    assert_eq!(untyped, expected);
    assert_eq!(&payload[10..13], &[0xd9, 0xd0, 0x00], "a tag in 3 bytes");
}

#[test]
fn nested_sender_open() {
    check_open(NESTED_SENDER_OPEN, open(Kind::Channel, 5, 3, Direction::AcceptorSends));
}

#[test]
fn reply_message() {
    assert_eq!(framed(FrameType::Msg, &cbor(&22u32)), hex(MSG_REPLY));
    let (ty, payload) = unframed(&hex(MSG_REPLY));
    assert_eq!((ty, uncbor::<u32>(&payload)), (FrameType::Msg, 22));
}

#[test]
fn greeting_open_and_message() {
    check_open(GREETING_OPEN, open(Kind::Channel, 7, 0, Direction::OpenerSends));
    let value = Greeting { n: 42, text: "hi".into() };
    assert_eq!(framed(FrameType::Msg, &cbor(&value)), hex(MSG_GREETING));
    let (ty, payload) = unframed(&hex(MSG_GREETING));
    assert_eq!((ty, uncbor::<Greeting>(&payload)), (FrameType::Msg, value));
}

#[test]
fn close_err() {
    let value = CloseErr { code: Code::Application, message: "boom".into() };
    assert_eq!(framed(FrameType::CloseErr, &value.encode()), hex(CLOSE_ERR));
    let (ty, payload) = unframed(&hex(CLOSE_ERR));
    assert_eq!(ty, FrameType::CloseErr);
    assert_eq!(CloseErr::decode(&payload), Ok(value));
}

#[test]
fn accept_refusing_with_accept_queue_full() {
    let value = Accept::refuse(Code::AcceptQueueFull, "accept queue of 128 is full");
    assert_eq!(framed(FrameType::Accept, &value.encode()), hex(ACCEPT_QUEUE_FULL));
    let (ty, payload) = unframed(&hex(ACCEPT_QUEUE_FULL));
    assert_eq!(ty, FrameType::Accept);
    let decoded = Accept::decode(&payload).unwrap();
    assert_eq!(decoded, value);
    assert_eq!(decoded.status.to_u32(), 3);
}

#[test]
fn byte_stream_open() {
    check_open(BYTE_STREAM_OPEN, open(Kind::ByteStream, 9, 3, Direction::OpenerSends));
}

#[test]
fn session_close() {
    let value = CloseErr { code: Code::Shutdown, message: "bye".into() };
    assert_eq!(framed(FrameType::CloseErr, &value.encode()), hex(SESSION_CLOSE));
    let (ty, payload) = unframed(&hex(SESSION_CLOSE));
    assert_eq!(ty, FrameType::CloseErr);
    assert_eq!(CloseErr::decode(&payload), Ok(value));
}

/// §5: absent keys take their defaults, unknown keys are ignored, unknown codes survive.
#[test]
fn defaults_unknown_keys_and_unknown_codes() {
    let open_with_extra = Cbor::Map(vec![
        (Cbor::Text("k".into()), Cbor::Integer(0.into())),
        (Cbor::Text("r".into()), Cbor::Integer(3.into())),
        (Cbor::Text("future".into()), Cbor::Array(vec![Cbor::Null])),
    ]);
    assert_eq!(
        Open::decode(&cbor(&open_with_extra)),
        Ok(open(Kind::Channel, 3, 0, Direction::OpenerSends))
    );
    let close = Cbor::Map(vec![(Cbor::Text("c".into()), Cbor::Integer(2.into()))]);
    assert_eq!(
        CloseErr::decode(&cbor(&close)),
        Ok(CloseErr { code: Code::Application, message: String::new() })
    );
    let accept = Cbor::Map(vec![(Cbor::Text("s".into()), Cbor::Integer(77.into()))]);
    assert_eq!(
        Accept::decode(&cbor(&accept)),
        Ok(Accept { status: Code::Unknown(77), error: None })
    );
    let no_ref = Cbor::Map(vec![(Cbor::Text("k".into()), Cbor::Integer(0.into()))]);
    assert!(Open::decode(&cbor(&no_ref)).is_err(), "r is required");
    let bad_kind = Cbor::Map(vec![
        (Cbor::Text("k".into()), Cbor::Integer(3.into())),
        (Cbor::Text("r".into()), Cbor::Integer(3.into())),
    ]);
    assert!(Open::decode(&cbor(&bad_kind)).is_err(), "kind 3 is unknown");
    let duplicate = Cbor::Map(vec![
        (Cbor::Text("k".into()), Cbor::Integer(0.into())),
        (Cbor::Text("r".into()), Cbor::Integer(3.into())),
        (Cbor::Text("r".into()), Cbor::Integer(5.into())),
    ]);
    assert!(Open::decode(&cbor(&duplicate)).is_err(), "a duplicate key");
    // Nesting: the map is one level, an ignored value may add three more, not four.
    let nested = |levels: usize| {
        let mut value = Cbor::Null;
        for _ in 0..levels {
            value = Cbor::Array(vec![value]);
        }
        Cbor::Map(vec![
            (Cbor::Text("k".into()), Cbor::Integer(0.into())),
            (Cbor::Text("r".into()), Cbor::Integer(3.into())),
            (Cbor::Text("x".into()), value),
        ])
    };
    assert!(Open::decode(&cbor(&nested(3))).is_ok(), "4 levels");
    assert!(Open::decode(&cbor(&nested(4))).is_err(), "5 levels");
    let mut unknown_type = BytesMut::from(&[0, 0, 0, 1, 7][..]);
    assert!(DECODER.decode(&mut unknown_type).is_err(), "frame type 7 is unknown");
}

/// §4: limits apply to the payload; the length field counts the type byte as well.
#[test]
fn limits_count_the_payload() {
    let at_limit = framed(FrameType::Accept, &vec![0; 4 << 10]);
    assert!(DECODER.decode(&mut BytesMut::from(&at_limit[..])).unwrap().is_some());
    let over = framed(FrameType::Accept, &vec![0; (4 << 10) + 1]);
    assert!(DECODER.decode(&mut BytesMut::from(&over[..5])).is_err(), "refused from the header");
}

// The walk-through on the wire: a real session against a yamux peer driven by hand.

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f).await.expect("no answer within 20 s")
}

/// Reads one whole frame, header included.
async fn read_frame(read: &mut BoxRead) -> Vec<u8> {
    let mut header = [0u8; 4];
    within(read.read_exact(&mut header)).await.expect("a frame header");
    let mut rest = vec![0; u32::from_be_bytes(header) as usize];
    within(read.read_exact(&mut rest)).await.expect("a whole frame");
    [&header[..], &rest].concat()
}

/// Asserts that the stream ends (FIN) with nothing more on it.
async fn read_end(read: &mut BoxRead) {
    let mut rest = Vec::new();
    within(read.read_to_end(&mut rest)).await.expect("a clean end of stream");
    assert!(rest.is_empty(), "nothing after the last frame: {rest:02x?}");
}

/// A yamux peer that sorts the streams the session opens by their first frame.
struct Peer {
    yamux: RawYamux,
    stash: Vec<(Vec<u8>, BoxRead, BoxWrite)>,
}

impl Peer {
    /// The next stream the session opened whose first frame is `open`.
    async fn opened_with(&mut self, open: &str) -> (BoxRead, BoxWrite) {
        let open = hex(open);
        if let Some(i) = self.stash.iter().position(|(first, _, _)| *first == open) {
            let (_, read, write) = self.stash.remove(i);
            return (read, write);
        }
        loop {
            let (mut read, write) = within(self.yamux.inbound.recv()).await.expect("a stream");
            let first = read_frame(&mut read).await;
            if first == open {
                return (read, write);
            }
            self.stash.push((first, read, write));
        }
    }
}

/// Exchanges preambles on `io` (checking the session's) and starts yamux on it.
async fn handshake(mut io: tokio::io::DuplexStream, dialer: bool) -> RawYamux {
    io.write_all(&hex(PREAMBLE)).await.unwrap();
    let mut theirs = [0u8; 8];
    within(io.read_exact(&mut theirs)).await.unwrap();
    assert_eq!(theirs.to_vec(), hex(PREAMBLE));
    RawYamux::start(io, dialer)
}

#[tokio::test]
async fn a_dialing_session_writes_the_walk_through() {
    let mut limits = Limits::default();
    limits.heartbeat_interval = Duration::from_millis(20);
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let session = tokio::spawn(Session::over(ours, true, limits, "peer".into()));
    let mut peer = Peer { yamux: handshake(theirs, false).await, stash: Vec::new() };
    let session = within(session).await.unwrap().unwrap();

    // §13.2: the session's control stream, with heartbeats.
    let (mut control, mut control_w) = peer.opened_with(CONTROL_OPEN).await;
    control_w.write_all(&hex(ACCEPT_OK)).await.unwrap();
    assert_eq!(read_frame(&mut control).await, hex(PING));

    // §13.3: a top-level channel, a message naming a sender, the sender's own stream.
    let requests = session.open::<Request>().await.unwrap();
    let (mut top, mut top_w) = peer.opened_with(TOP_LEVEL_OPEN).await;
    top_w.write_all(&hex(ACCEPT_OK)).await.unwrap();
    let (reply, mut answers) = libchan::pipe::<u32>();
    requests.send(Request { n: 20, reply }).await.unwrap();
    assert_eq!(read_frame(&mut top).await, hex(MSG_REQUEST));
    let (_nested, mut nested_w) = peer.opened_with(NESTED_SENDER_OPEN).await;
    nested_w.write_all(&hex(ACCEPT_OK)).await.unwrap();
    nested_w.write_all(&hex(MSG_REPLY)).await.unwrap();
    assert_eq!(within(answers.recv()).await.unwrap(), Some(22));
    top_w.write_all(&hex(RECV_CLOSED)).await.unwrap();
    within(requests.closed()).await;
    read_end(&mut top).await;
    let (reply, _answers) = libchan::pipe::<u32>();
    let failed = requests.send(Request { n: 1, reply }).await.unwrap_err();
    assert!(failed.is_closed());

    // §13.4: a struct message, then the channel ends with an error.
    let greetings = session.open::<Greeting>().await.unwrap();
    let (mut greeting, mut greeting_w) = peer.opened_with(GREETING_OPEN).await;
    greeting_w.write_all(&hex(ACCEPT_OK)).await.unwrap();
    greetings.send(Greeting { n: 42, text: "hi".into() }).await.unwrap();
    assert_eq!(read_frame(&mut greeting).await, hex(MSG_GREETING));
    within(greetings.fail("boom")).await;
    assert_eq!(read_frame(&mut greeting).await, hex(CLOSE_ERR));
    read_end(&mut greeting).await;

    // §13.7: closing the session: the control stream carries the code after its PINGs.
    within(session.close(Code::Shutdown, "bye")).await;
    let mut frame = read_frame(&mut control).await;
    while frame == hex(PING) {
        frame = read_frame(&mut control).await;
    }
    assert_eq!(frame, hex(SESSION_CLOSE));
    read_end(&mut control).await;
}

#[tokio::test]
async fn a_listening_session_accepts_refuses_and_reports_a_gone_receiver() {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let session = tokio::spawn(Session::over(ours, false, Limits::default(), "peer".into()));
    let mut peer = Peer { yamux: handshake(theirs, true).await, stash: Vec::new() };
    let session = within(session).await.unwrap().unwrap();

    // The listener's control stream looks the same as the dialer's.
    let (_control, _control_w) = peer.opened_with(CONTROL_OPEN).await;

    // §13.5: 128 channels fill the accept queue; the next one is refused.
    let mut channels = Vec::new();
    for i in 0..=128u64 {
        let (mut read, mut write) = within(peer.yamux.open()).await.unwrap();
        let first = open(Kind::Channel, 2 * i + 3, 0, Direction::OpenerSends);
        write.write_all(&framed(FrameType::Open, &first.encode())).await.unwrap();
        let answer = read_frame(&mut read).await;
        if i < 128 {
            assert_eq!(answer, hex(ACCEPT_OK), "channel {i}");
            channels.push((read, write));
        } else {
            assert_eq!(answer, hex(ACCEPT_QUEUE_FULL));
            read_end(&mut read).await;
        }
    }

    // §13.3: a receiver that goes away says so, then ends its direction.
    let receiver = within(session.accept::<u32>()).await.unwrap();
    drop(receiver);
    let (first, _first_w) = &mut channels[0];
    assert_eq!(read_frame(first).await, hex(RECV_CLOSED));
    read_end(first).await;
}
