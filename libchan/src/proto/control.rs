//! Payloads of the control frames OPEN, ACCEPT and CLOSE_ERR: small CBOR maps with short text
//! keys (PROTOCOL.md §5). Decoders ignore keys they do not know, so later versions can add some.

use serde::{Deserialize, Serialize};

use super::Code;

/// What a stream carries. PROTOCOL.md §5.1.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Kind {
    /// A channel: MSG frames one way, control frames the other.
    Channel,
    /// A byte stream: after OPEN and ACCEPT, raw bytes both ways.
    ByteStream,
    /// The session's control stream: heartbeats and the session's closing code.
    Control,
}

/// Which end of a channel stream sends MSG frames.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Direction {
    /// The opener sends; the acceptor holds the receiver.
    OpenerSends,
    /// The acceptor sends; the opener holds the receiver.
    AcceptorSends,
}

/// The first frame on every stream, from its opener.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Open {
    /// What the stream carries.
    pub kind: Kind,
    /// The reference id, unique in the session (odd from the dialer, even from the listener).
    pub ref_id: u64,
    /// The channel whose message names this stream; 0 for a top-level stream.
    pub parent: u64,
    /// For channels, which end sends.
    pub direction: Direction,
    /// Optional content type of the messages, for peers that route by it.
    pub content_type: Option<String>,
}

/// The first frame from the acceptor of a stream.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Accept {
    /// [`Code::Ok`] to accept, anything else refuses the stream.
    pub status: Code,
    /// Why it was refused.
    pub error: Option<String>,
}

/// A channel ended with an error, or a session closed with a code.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct CloseErr {
    /// The error code.
    pub code: Code,
    /// Text for the operator; never parsed.
    pub message: String,
}

/// A control payload that cannot be decoded.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("malformed {what} payload: {reason}")]
pub struct ControlError {
    what: &'static str,
    reason: String,
}

#[derive(Deserialize, Serialize)]
struct OpenWire {
    k: u8,
    r: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    p: u64,
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    d: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ct: Option<String>,
}

#[derive(Deserialize, Serialize)]
struct AcceptWire {
    s: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
}

#[derive(Deserialize, Serialize)]
struct CloseWire {
    c: u32,
    #[serde(default)]
    m: String,
}

impl Open {
    /// The CBOR payload.
    pub fn encode(&self) -> Vec<u8> {
        let wire = OpenWire {
            k: match self.kind {
                Kind::Channel => 0,
                Kind::ByteStream => 1,
                Kind::Control => 2,
            },
            r: self.ref_id,
            p: self.parent,
            d: match self.direction {
                Direction::OpenerSends => 0,
                Direction::AcceptorSends => 1,
            },
            ct: self.content_type.clone(),
        };
        to_vec(&wire)
    }

    /// Parses a CBOR payload.
    ///
    /// # Errors
    /// Malformed CBOR, trailing bytes, an unknown kind or direction.
    pub fn decode(payload: &[u8]) -> Result<Self, ControlError> {
        let wire: OpenWire = from_slice("OPEN", payload)?;
        let bad = |reason: String| ControlError { what: "OPEN", reason };
        Ok(Self {
            kind: match wire.k {
                0 => Kind::Channel,
                1 => Kind::ByteStream,
                2 => Kind::Control,
                k => return Err(bad(format!("unknown kind {k}"))),
            },
            ref_id: wire.r,
            parent: wire.p,
            direction: match wire.d {
                0 => Direction::OpenerSends,
                1 => Direction::AcceptorSends,
                d => return Err(bad(format!("unknown direction {d}"))),
            },
            content_type: wire.ct,
        })
    }
}

impl Accept {
    /// An ACCEPT that accepts.
    pub fn ok() -> Self {
        Self { status: Code::Ok, error: None }
    }

    /// An ACCEPT that refuses, with the reason.
    pub fn refuse(status: Code, error: impl Into<String>) -> Self {
        Self { status, error: Some(error.into()) }
    }

    /// The CBOR payload.
    pub fn encode(&self) -> Vec<u8> {
        to_vec(&AcceptWire { s: self.status.to_u32(), e: self.error.clone() })
    }

    /// Parses a CBOR payload.
    ///
    /// # Errors
    /// Malformed CBOR or trailing bytes.
    pub fn decode(payload: &[u8]) -> Result<Self, ControlError> {
        let wire: AcceptWire = from_slice("ACCEPT", payload)?;
        Ok(Self { status: Code::from_u32(wire.s), error: wire.e })
    }
}

impl CloseErr {
    /// The CBOR payload.
    pub fn encode(&self) -> Vec<u8> {
        to_vec(&CloseWire { c: self.code.to_u32(), m: self.message.clone() })
    }

    /// Parses a CBOR payload.
    ///
    /// # Errors
    /// Malformed CBOR or trailing bytes.
    pub fn decode(payload: &[u8]) -> Result<Self, ControlError> {
        let wire: CloseWire = from_slice("CLOSE_ERR", payload)?;
        Ok(Self { code: Code::from_u32(wire.c), message: wire.m })
    }
}

fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    // Invariant: these structs hold only integers and strings; writing to a Vec cannot fail.
    ciborium::into_writer(value, &mut out).expect("control payload encodes");
    out
}

fn from_slice<T: serde::de::DeserializeOwned>(
    what: &'static str,
    payload: &[u8],
) -> Result<T, ControlError> {
    let mut rest = payload;
    // Depth 4 is plenty for a flat map and stops deep-nesting tricks in ignored values.
    let value = ciborium::de::from_reader_with_recursion_limit(&mut rest, 4)
        .map_err(|e| ControlError { what, reason: e.to_string() })?;
    if !rest.is_empty() {
        return Err(ControlError { what, reason: format!("{} trailing bytes", rest.len()) });
    }
    Ok(value)
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u8(n: &u8) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_round_trip() {
        let open = Open {
            kind: Kind::Channel,
            ref_id: 7,
            parent: 3,
            direction: Direction::AcceptorSends,
            content_type: Some("swarm".into()),
        };
        assert_eq!(Open::decode(&open.encode()), Ok(open));
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert!(Open::decode(b"").is_err());
        assert!(Open::decode(b"\xa1\x61k\x09").is_err(), "missing ref");
        assert!(Accept::decode(b"\xa1\x61s\x00\x00").is_err(), "trailing byte");
        assert!(CloseErr::decode(b"\xff").is_err());
        let deep = [&[0x81u8; 64][..], &[0x00]].concat();
        assert!(Open::decode(&deep).is_err());
    }
}
