//! Wire error codes, carried in ACCEPT (refusal), CLOSE_ERR and QUIC reset/stop codes.
//! PROTOCOL.md §8 lists them; a code this version does not know decodes as [`Code::Unknown`].

/// An error code sent to the peer. Separate from local error types on purpose: the peer only
/// learns what the code and text say.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
#[non_exhaustive]
pub enum Code {
    /// No error: a clean close, or ACCEPT that accepts.
    Ok,
    /// The peer broke the protocol (bad frame, bad OPEN, frame of the wrong type for the state).
    Protocol,
    /// The application refused or ended the channel with an error of its own.
    Application,
    /// Top-level open refused: the acceptor's accept queue is full.
    AcceptQueueFull,
    /// Stream refused: the opener is over its share of the session's stream limit.
    TooManyStreams,
    /// Nested stream refused: the rendezvous table is full, the ref is unknown or duplicate,
    /// or nobody claimed it within the TTL.
    Rendezvous,
    /// A message or frame over the size limit.
    TooLarge,
    /// A message that does not decode as the receiver's type.
    Decode,
    /// The session saw no heartbeat within the idle timeout.
    IdleTimeout,
    /// The session is shutting down.
    Shutdown,
    /// A code this version does not know.
    Unknown(u32),
}

impl Code {
    /// The code's number on the wire.
    pub fn to_u32(self) -> u32 {
        match self {
            Self::Ok => 0,
            Self::Protocol => 1,
            Self::Application => 2,
            Self::AcceptQueueFull => 3,
            Self::TooManyStreams => 4,
            Self::Rendezvous => 5,
            Self::TooLarge => 6,
            Self::Decode => 7,
            Self::IdleTimeout => 8,
            Self::Shutdown => 9,
            Self::Unknown(n) => n,
        }
    }

    /// The code for a number from the wire.
    pub fn from_u32(n: u32) -> Self {
        match n {
            0 => Self::Ok,
            1 => Self::Protocol,
            2 => Self::Application,
            3 => Self::AcceptQueueFull,
            4 => Self::TooManyStreams,
            5 => Self::Rendezvous,
            6 => Self::TooLarge,
            7 => Self::Decode,
            8 => Self::IdleTimeout,
            9 => Self::Shutdown,
            n => Self::Unknown(n),
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::Ok => "ok",
            Self::Protocol => "protocol violation",
            Self::Application => "application error",
            Self::AcceptQueueFull => "accept queue full",
            Self::TooManyStreams => "too many streams",
            Self::Rendezvous => "reference not claimed",
            Self::TooLarge => "too large",
            Self::Decode => "undecodable message",
            Self::IdleTimeout => "idle timeout",
            Self::Shutdown => "shutting down",
            Self::Unknown(n) => return write!(f, "code {n}"),
        };
        write!(f, "{name} ({})", self.to_u32())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for n in 0..32 {
            assert_eq!(Code::from_u32(n).to_u32(), n);
        }
    }
}
