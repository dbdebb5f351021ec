//! Framing: `u32` big-endian length (type byte plus payload), `u8` type, payload.
//!
//! PROTOCOL.md §4. The length is checked against the limit for the frame's type before any
//! buffer grows: a peer cannot make us allocate more than the limit by announcing a large frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes before the payload: 4 length bytes and the type byte.
pub const HEADER_LEN: usize = 5;

/// The type of a frame. PROTOCOL.md §5 has one section per type.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(u8)]
pub enum FrameType {
    /// First frame from the opener of a stream: what the stream is for.
    Open = 1,
    /// First frame from the acceptor of a stream: accepted or refused.
    Accept = 2,
    /// One message: exactly one CBOR data item.
    Msg = 3,
    /// The sender ends the channel with an error (code and text), then FIN.
    CloseErr = 4,
    /// The receiver went away; the sender's next send fails with `Closed`.
    RecvClosed = 5,
    /// Session heartbeat on the control stream; empty payload.
    Ping = 6,
}

impl FrameType {
    /// The type for a byte, or `None` for an unknown type.
    pub fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Open,
            2 => Self::Accept,
            3 => Self::Msg,
            4 => Self::CloseErr,
            5 => Self::RecvClosed,
            6 => Self::Ping,
            _ => return None,
        })
    }

    /// Whether this is a control frame, held to the smaller control limit.
    pub fn is_control(self) -> bool {
        self != Self::Msg
    }
}

/// A frame that cannot be decoded. Each is a protocol violation on the stream that carried it.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix was zero: a frame holds at least its type byte.
    #[error("frame length 0 (a frame holds at least its type byte)")]
    Empty,
    /// The type byte is not one this version knows.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The announced length is over the limit for the frame's type.
    #[error("{ty:?} frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The frame's type.
        ty: FrameType,
        /// Announced length of type byte plus payload.
        len: usize,
        /// The limit in force for this type.
        limit: usize,
    },
    /// A stream's first frame must be a control frame (OPEN, or ACCEPT from the acceptor).
    #[error("first frame on a stream is {0:?}, not a control frame")]
    NotControl(FrameType),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({have} of {want} bytes)")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes the header announced.
        want: usize,
    },
}

/// Appends one frame to `out`.
///
/// # Panics
/// If the payload is longer than `u32::MAX - 1`; callers check message sizes against
/// [`Limits`](crate::Limits) first, which are far below that.
pub fn encode(ty: FrameType, payload: &[u8], out: &mut BytesMut) {
    out.reserve(HEADER_LEN + payload.len());
    out.put_u32(frame_len(payload.len()));
    out.put_u8(ty as u8);
    out.put_slice(payload);
}

/// Writes the header of a frame whose payload follows, for encoders that write the payload in
/// place: reserve the header with [`reserve_header`], write the payload, then patch it here.
pub fn patch_header(buf: &mut [u8], ty: FrameType) {
    let len = frame_len(buf.len() - HEADER_LEN);
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf[4] = ty as u8;
}

/// Appends a header placeholder to be filled by [`patch_header`].
pub fn reserve_header(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0; HEADER_LEN]);
}

fn frame_len(payload: usize) -> u32 {
    // Invariant: payloads are checked against limits far below u32::MAX before framing.
    u32::try_from(payload + 1).expect("frame payload within u32")
}

/// Splits frames off the front of a receive buffer, enforcing limits.
#[derive(Clone, Copy, Debug)]
pub struct FrameDecoder {
    /// Largest MSG frame (type byte plus payload).
    pub max_msg: usize,
    /// Largest control frame (type byte plus payload).
    pub max_control: usize,
}

impl FrameDecoder {
    /// Takes one whole frame off the front of `buf`, or returns `Ok(None)` when more bytes are
    /// needed. On `Ok(None)` the buffer is left as it was, and `buf` has room reserved for the
    /// rest of the frame (never more than the limit).
    ///
    /// # Errors
    /// A [`FrameError`] for a zero length, an unknown type or a length over the limit; the
    /// header is checked as soon as its 5 bytes are present.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<(FrameType, Bytes)>, FrameError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        let ty = FrameType::from_u8(buf[4]).ok_or(FrameError::UnknownType(buf[4]))?;
        let limit = if ty.is_control() { self.max_control } else { self.max_msg };
        if len > limit {
            return Err(FrameError::TooLarge { ty, len, limit });
        }
        let total = 4 + len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        Ok(Some((ty, buf.split_to(len - 1).freeze())))
    }

    /// The error for a stream that ended with `buf` still holding bytes.
    pub fn truncated(buf: &[u8]) -> FrameError {
        let want = if buf.len() >= 4 {
            4 + u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
        } else {
            HEADER_LEN
        };
        FrameError::Truncated { have: buf.len(), want }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEC: FrameDecoder = FrameDecoder { max_msg: 64, max_control: 16 };

    #[test]
    fn round_trip_and_partial() {
        let mut out = BytesMut::new();
        encode(FrameType::Msg, b"hello", &mut out);
        assert_eq!(&out[..], b"\x00\x00\x00\x06\x03hello");
        let mut partial = BytesMut::from(&out[..7]);
        assert_eq!(DEC.decode(&mut partial), Ok(None));
        assert_eq!(partial.len(), 7, "a partial frame stays in the buffer");
        partial.extend_from_slice(&out[7..]);
        let (ty, payload) = DEC.decode(&mut partial).unwrap().unwrap();
        assert_eq!((ty, &payload[..]), (FrameType::Msg, &b"hello"[..]));
        assert!(partial.is_empty());
    }

    #[test]
    fn limits_at_the_boundary() {
        for (ty, limit) in [(FrameType::Msg, 64), (FrameType::Accept, 16)] {
            for len in [limit - 1, limit] {
                let mut buf = BytesMut::new();
                encode(ty, &vec![7; len - 1], &mut buf);
                assert!(DEC.decode(&mut buf).unwrap().is_some(), "{ty:?} at {len}");
            }
            // Over the limit: refused from the header alone, before the payload arrives.
            let mut buf = BytesMut::new();
            buf.put_u32(limit as u32 + 1);
            buf.put_u8(ty as u8);
            assert_eq!(
                DEC.decode(&mut buf),
                Err(FrameError::TooLarge { ty, len: limit + 1, limit })
            );
        }
    }

    #[test]
    fn rejects_empty_and_unknown() {
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x00\x03"[..]);
        assert_eq!(DEC.decode(&mut buf), Err(FrameError::Empty));
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x01\x09"[..]);
        assert_eq!(DEC.decode(&mut buf), Err(FrameError::UnknownType(9)));
    }

    #[test]
    fn huge_length_does_not_allocate() {
        let mut buf = BytesMut::from(&b"\xff\xff\xff\xff\x03"[..]);
        assert!(matches!(DEC.decode(&mut buf), Err(FrameError::TooLarge { .. })));
        assert!(buf.capacity() < 1024);
    }
}
