//! Entry points for the fuzz targets in `fuzz/` and for the tests that replay their corpus
//! (`libchan/tests/fuzz_corpus.rs`). Not a stable API.
//!
//! Each function runs the code a session runs on bytes from the network, then checks what a
//! user relies on, and panics when a check fails (that panic is what the fuzzer reports):
//!
//! - [`frame`]: [`FrameDecoder`] on a whole buffer, the streaming reader every channel uses
//!   fed in small chunks, and the exact read of a stream's first control frame. They must
//!   agree, re-encoding a decoded frame must give its bytes back, and no buffer may grow past
//!   the limit.
//! - [`control`]: the OPEN, ACCEPT and CLOSE_ERR decoders; what decodes must re-encode to the
//!   same value.
//! - [`message`]: a MSG payload decoded as the receiver's type the way a receiving channel
//!   does (`chan::decode`), references claimed from the session's rendezvous table. The
//!   session is a detached one (no connection under it, opening a stream fails), and the input can first park nested streams in its table as if
//!   their OPENs had arrived. A decoded message must stay within the limits, re-encode, decode
//!   again on the peer, and re-encode to the same bytes.
//!
//! [`corpus`] reads the committed seeds for the replay tests of this crate and of `backends`.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, ReadBuf};

use crate::context::{self, EncodeState};
use crate::framed::{read_control, FrameReader, ReadError};
use crate::proto::{frame, Accept, CloseErr, Direction, FrameDecoder, FrameError, Kind, Open};
use crate::session::SessionInner;
use crate::transport::{Mux, RawStream};
use crate::{Limits, Message, RecvError};

/// Every file of the committed corpus `fuzz/corpus/TARGET`, by name, in name order.
///
/// # Panics
/// The directory cannot be read, or holds fewer than five files (the corpus is missing).
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (name, data)
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{}: the corpus is missing", dir.display());
    files
}

/// Largest MSG payload the [`frame`] target allows; small, so the fuzzer reaches the limit.
pub const FRAME_MAX_MESSAGE: usize = 1024;
/// Largest control payload the [`frame`] target allows.
pub const FRAME_MAX_CONTROL: usize = 64;

/// What [`frame`] found, for the replay tests to check.
#[derive(Debug, Eq, PartialEq)]
pub struct FrameReport {
    /// Frames split off the input, with their payload length.
    pub frames: Vec<(frame::FrameType, usize)>,
    /// How the input ended: `None` when it held whole frames only.
    pub error: Option<FrameError>,
}

/// Decodes `data[1..]` as a stream of frames, three ways; `data[0]` picks the chunk sizes
/// the streaming reader is fed.
///
/// # Panics
/// When the decoders disagree, a frame does not re-encode to its bytes, a frame is over the
/// limit, or a buffer grew past the limit.
pub fn frame(data: &[u8]) -> FrameReport {
    let Some((&seed, input)) = data.split_first() else {
        return FrameReport { frames: Vec::new(), error: None };
    };
    let decoder = frame_decoder();

    // Whole buffer, as `FrameReader` sees it once everything has arrived.
    let mut buf = BytesMut::from(input);
    let mut frames = Vec::new();
    let mut consumed = 0;
    let whole_end = loop {
        match decoder.decode(&mut buf) {
            Ok(Some((ty, payload))) => {
                let limit = if ty.is_control() { FRAME_MAX_CONTROL } else { FRAME_MAX_MESSAGE };
                assert!(payload.len() <= limit, "{ty:?} payload {} over {limit}", payload.len());
                let mut again = BytesMut::new();
                frame::encode(ty, &payload, &mut again);
                let end = consumed + again.len();
                assert_eq!(&again[..], &input[consumed..end], "frame re-encodes to its bytes");
                consumed = end;
                frames.push((ty, payload));
            }
            Ok(None) => {
                // What is left is a frame's beginning; room is reserved for its end only.
                assert!(
                    buf.capacity() <= input.len().max(2 * (frame::HEADER_LEN + decoder.max_msg)),
                    "buffer of {} bytes for a partial frame",
                    buf.capacity()
                );
                break if buf.is_empty() { None } else { Some(FrameDecoder::truncated(&buf)) };
            }
            Err(e) => break Some(e),
        }
    };

    // The streaming reader, fed in chunks, then end of stream.
    let sizes = [1, 2, 3, 5, 7, 64, 4096];
    let chunk = sizes[usize::from(seed) % sizes.len()];
    let reader = Chunked { data: input, chunk };
    let mut reader = FrameReader::new(reader, decoder);
    let mut streamed = Vec::new();
    let stream_end = loop {
        assert!(streamed.len() <= frames.len(), "streaming reader found more frames");
        match now(reader.next_frame()) {
            Ok(Some(frame)) => streamed.push(frame),
            Ok(None) => break None,
            Err(ReadError::Frame(e)) => break Some(e),
            Err(ReadError::Io(e)) => panic!("reading a slice failed: {e}"),
        }
    };
    assert_eq!(streamed, frames, "chunks of {chunk} bytes give the same frames");
    assert_eq!(stream_end, whole_end, "chunks of {chunk} bytes end the same way");

    // The exact read of a stream's first frame, which must not read past it.
    let mut rest = input;
    let first = now(read_control(&mut rest, FRAME_MAX_CONTROL));
    match (&first, frames.first()) {
        (Ok((ty, payload)), _) => {
            let (want_ty, want) =
                frames.first().expect("read_control read a frame the decoder did not");
            assert!(ty.is_control(), "read_control returned a {ty:?} frame");
            assert_eq!((ty, &payload[..]), (want_ty, &want[..]), "read_control agrees");
            assert_eq!(rest.len(), input.len() - frame::HEADER_LEN - payload.len(), "read past");
        }
        (Err(ReadError::Frame(_) | ReadError::Io(_)), Some((ty, _))) => {
            assert!(!ty.is_control(), "read_control refused a good {ty:?} frame");
        }
        (Err(_), None) => {}
    }

    FrameReport {
        frames: frames.iter().map(|(ty, payload)| (*ty, payload.len())).collect(),
        error: whole_end,
    }
}

/// The decoder [`frame`] uses: the session's, with small limits.
pub fn frame_decoder() -> FrameDecoder {
    FrameDecoder { max_msg: FRAME_MAX_MESSAGE + 1, max_control: FRAME_MAX_CONTROL + 1 }
}

/// What [`control`] decoded.
#[derive(Debug)]
pub struct ControlReport {
    /// `data` as an OPEN payload.
    pub open: Result<Open, String>,
    /// `data` as an ACCEPT payload.
    pub accept: Result<Accept, String>,
    /// `data` as a CLOSE_ERR payload.
    pub close: Result<CloseErr, String>,
}

/// Decodes `data` as each control payload.
///
/// # Panics
/// When a decoded payload does not re-encode to the same value, or an error has no text.
pub fn control(data: &[u8]) -> ControlReport {
    fn check<T: Eq + std::fmt::Debug>(
        decoded: Result<T, crate::proto::control::ControlError>,
        encode: impl Fn(&T) -> Vec<u8>,
        decode: impl Fn(&[u8]) -> Result<T, crate::proto::control::ControlError>,
    ) -> Result<T, String> {
        match decoded {
            Ok(value) => {
                let bytes = encode(&value);
                assert_eq!(decode(&bytes).as_ref(), Ok(&value), "control payload round trip");
                Ok(value)
            }
            Err(e) => {
                let text = e.to_string();
                assert!(!text.is_empty());
                Err(text)
            }
        }
    }
    ControlReport {
        open: check(Open::decode(data), Open::encode, Open::decode),
        accept: check(Accept::decode(data), Accept::encode, Accept::decode),
        close: check(CloseErr::decode(data), CloseErr::encode, CloseErr::decode),
    }
}

/// A message case: who receives, on which channel, which nested streams already arrived.
///
/// Input layout: byte 0 has the receiver's side in bit 0 (1: dialer) and the number of parked
/// streams in bits 1 to 3; byte 1 is the channel's reference id; then two bytes per parked
/// stream (its reference id, then kind in bits 0-1, direction in bit 2, a parent other than
/// the channel in bit 3); the rest is the MSG payload.
#[derive(Debug)]
pub struct MessageCase<'a> {
    /// The receiving side is the dialer (odd reference ids are its own).
    pub dialer: bool,
    /// The channel that carried the message.
    pub channel: u64,
    /// OPENs of nested streams that arrived before the message.
    pub parked: Vec<Open>,
    /// The MSG payload.
    pub payload: &'a [u8],
}

impl<'a> MessageCase<'a> {
    /// Splits a fuzz input; `None` when it is too short.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&flags, rest) = data.split_first()?;
        let (&channel, mut rest) = rest.split_first()?;
        let count = usize::from((flags >> 1) & 7);
        let mut parked = Vec::with_capacity(count);
        for _ in 0..count {
            let [ref_id, bits, tail @ ..] = rest else { return None };
            rest = tail;
            parked.push(Open {
                kind: match bits & 3 {
                    1 => Kind::ByteStream,
                    2 => Kind::Control,
                    _ => Kind::Channel,
                },
                ref_id: u64::from(*ref_id),
                parent: u64::from(channel) + u64::from((bits >> 3) & 1),
                direction: if bits & 4 == 0 {
                    Direction::OpenerSends
                } else {
                    Direction::AcceptorSends
                },
                content_type: None,
            });
        }
        Some(Self { dialer: flags & 1 == 1, channel: u64::from(channel), parked, payload: rest })
    }

    /// The input bytes for this case (the inverse of [`parse`](Self::parse)), for writing
    /// corpus files and tests.
    ///
    /// # Panics
    /// More than 7 parked streams, or ids or a channel over 255.
    pub fn to_bytes(&self) -> Vec<u8> {
        assert!(self.parked.len() <= 7 && self.channel <= 255);
        let mut out = vec![u8::from(self.dialer) | (self.parked.len() as u8) << 1];
        out.push(self.channel as u8);
        for open in &self.parked {
            let kind = match open.kind {
                Kind::Channel => 0,
                Kind::ByteStream => 1,
                Kind::Control => 2,
            };
            let direction = if open.direction == Direction::AcceptorSends { 4 } else { 0 };
            let other = if open.parent == self.channel { 0 } else { 8 };
            out.push(u8::try_from(open.ref_id).expect("parked id within a byte"));
            out.push(kind | direction | other);
        }
        out.extend_from_slice(self.payload);
        out
    }
}

/// Decodes the case in `data` as a `T`, the way a channel's receiver does; see the module docs.
///
/// # Panics
/// When a decoded message carries more references than the limit, does not re-encode, does
/// not decode again on the peer, or re-encodes to different bytes the second time.
pub fn message<T: Message>(data: &[u8]) -> Option<Result<T, RecvError>> {
    let case = MessageCase::parse(data)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        // Invariant: a current-thread runtime without I/O needs no resources that can run out.
        .expect("runtime builds");
    let result = runtime.block_on(async {
        let limits = Limits::default();
        let session = SessionInner::detached(Box::new(NoConnection), case.dialer, limits.clone());
        for open in &case.parked {
            // A refused OPEN (duplicate, table full) is dropped, as the session drops it.
            let _ = session.arrive(open.clone(), idle_stream());
        }
        let result =
            crate::chan::decode::<T>(&session, case.channel, case.payload).map_err(|u| u.error);
        match &result {
            Ok(value) => check_reencode(value, case.channel, &limits),
            Err(e) => assert!(!e.to_string().is_empty(), "an error with no text"),
        }
        result
    });
    Some(result)
}

/// Re-encodes a decoded message as the session's sender would (every handle exported anew),
/// decodes that on the peer, and re-encodes again: the bytes must match.
fn check_reencode<T: Message>(value: &T, channel: u64, limits: &Limits) {
    let (first, refs) = encode(value, channel, limits)
        .unwrap_or_else(|e| panic!("a decoded message does not re-encode: {e}"));
    assert!(
        refs <= limits.max_refs_per_message,
        "decoded a message with {refs} references, over the limit of {}",
        limits.max_refs_per_message
    );
    let peer = SessionInner::detached(Box::new(NoConnection), false, limits.clone());
    let again = crate::chan::decode::<T>(&peer, channel, &first)
        .unwrap_or_else(|u| panic!("a re-encoded message does not decode: {}", u.error));
    let (second, _) = encode(&again, channel, limits)
        .unwrap_or_else(|e| panic!("a message decoded twice does not re-encode: {e}"));
    assert_eq!(first, second, "re-encoding is stable");
}

/// Encodes as `encode_into` does, on a fresh dialer session; returns the bytes and exports.
fn encode<T: Message>(
    value: &T,
    channel: u64,
    limits: &Limits,
) -> Result<(Vec<u8>, usize), String> {
    let session = SessionInner::detached(Box::new(NoConnection), true, limits.clone());
    let state = EncodeState { session, parent: channel, exports: Vec::new() };
    let mut out = Vec::new();
    let (result, state) = context::encoding(state, || ciborium::into_writer(value, &mut out));
    result.map_err(|e| e.to_string())?;
    Ok((out, state.exports.len()))
}

/// A multiplexer with no connection: opening fails, closing does nothing.
struct NoConnection;

impl Mux for NoConnection {
    fn open(&self) -> BoxFuture<'static, io::Result<RawStream>> {
        Box::pin(async { Err(io::Error::new(io::ErrorKind::NotConnected, "detached session")) })
    }

    fn close(&self, _code: crate::proto::Code, _reason: &str) {}

    fn traffic(&self) -> crate::Traffic {
        crate::Traffic::default()
    }
}

/// A stream that reads nothing and swallows writes, for parked nested streams.
fn idle_stream() -> RawStream {
    RawStream {
        read: Box::new(tokio::io::empty()),
        write: Box::new(tokio::io::sink()),
        permit: None,
        owed: None,
    }
}

/// A reader over a slice that hands out at most `chunk` bytes per read.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        Poll::Ready(Ok(()))
    }
}

/// Runs a future that never waits (its reads are from memory) to completion.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        // Invariant: every read here is from a slice, which is always ready.
        Poll::Pending => unreachable!("a read from memory waited"),
    }
}
