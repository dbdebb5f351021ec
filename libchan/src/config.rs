//! Session configuration and the limits that keep a hostile peer bounded.

use std::time::Duration;

/// Limits for one session. The defaults are safe against an untrusted peer; every queue and
/// buffer fed by the peer is bounded by one of these.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Limits {
    /// Largest encoded message (the MSG payload), in bytes. Default: 16 MiB.
    /// A receiver refuses a larger frame from its header alone, before allocating.
    pub max_message_len: usize,
    /// Largest control frame payload (OPEN, ACCEPT, CLOSE_ERR), in bytes. Default: 4 KiB.
    pub max_control_len: usize,
    /// Deepest CBOR nesting a message may have. Default: 64.
    pub max_depth: usize,
    /// Channels and byte streams one message may carry. Default: 128.
    pub max_refs_per_message: usize,
    /// CBOR data items the untyped [`Value`](crate::Value)s of one received message may hold
    /// together (every array, map, tag, string, number and simple value counts one): a
    /// message received as a `Value`, or the `Value` fields of a typed message. Default: 256
    /// Ki (262 144). The receiver counts them before decoding a `Value` message, and as it
    /// decodes the `Value`s of a typed one, and refuses a message with more (CLOSE_ERR
    /// TOO_LARGE, PROTOCOL.md §9). Each decoded item is a 32-byte
    /// `ciborium::Value` and arrays grow by doubling, so decoding holds at most about
    /// `3 × 32 × max_untyped_items` bytes (24 MiB by default) besides the message itself;
    /// without this limit a message of one-byte items holds 32 bytes or more per message byte
    /// (measured: 555 MB for one 16 MiB message of nulls). The typed parts of a message are
    /// not limited by it: they hold what their type holds.
    pub max_untyped_items: usize,
    /// Streams open at once on a session, both sides together; each side may open half.
    /// Default: 1024. Worst-case receive buffering is one multiplexer window per stream (256
    /// KiB on yamux, 2 MiB on QUIC, whose session receive window is 16 MiB), plus
    /// `window_growth` on yamux; yamux holds a body of 56 to 64 KiB in a 64 KiB block, at most
    /// 8/7 of what it carries.
    pub max_streams: usize,
    /// On yamux sessions (`tcp://`, `unix://`, `tls://`): how far, all streams together, the
    /// receive windows of busy streams may grow beyond the 256 KiB each stream has. A
    /// stream's window doubles while its sender keeps it full, so a bulk byte stream is not
    /// held to 256 KiB in flight, which stalls it on every window update (about 0.55 x the
    /// raw stream over TLS, 0.9 x with the default). Default: 4 MiB; 0 keeps every window
    /// at 256 KiB.
    pub window_growth: usize,
    /// Nested streams that arrived before their message (or messages whose streams have not
    /// arrived), waiting to be paired. Default: 256.
    pub max_pending_refs: usize,
    /// How long a pending reference waits for its other half. Default: 30 s.
    pub pending_ref_ttl: Duration,
    /// Top-level channels opened by the peer and not yet taken by `accept`. Default: 128;
    /// further opens are refused at once, never blocking the session.
    pub accept_queue: usize,
    /// Bytes a channel's sender buffers before `send` waits for the network. Default: 1 MiB
    /// (a single larger message is still accepted when the buffer is empty).
    pub send_buffer: usize,
    /// Messages an in-memory pipe holds before `send` waits. Default: 256.
    pub pipe_capacity: usize,
    /// Time a new connection has to finish its handshake. Default: 10 s.
    pub handshake_timeout: Duration,
    /// Time a peer-opened stream has to send its OPEN frame. Default: 10 s.
    pub open_timeout: Duration,
    /// Interval between heartbeats on the session's control stream. Default: 5 s.
    pub heartbeat_interval: Duration,
    /// A session that hears nothing from its peer's control stream for this long is closed.
    /// Default: 20 s. Must be larger than the peer's heartbeat interval.
    pub idle_timeout: Duration,
    /// Longest a clean [`Session::close`](crate::Session::close) waits for the peer to read
    /// what this side sent, and longest a finished sender stream waits for the peer's end of
    /// it (holding its stream slot) outside a close. Default: 10 s.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_len: 16 << 20,
            max_control_len: 4 << 10,
            max_depth: 64,
            max_refs_per_message: 128,
            max_untyped_items: 1 << 18,
            max_streams: 1024,
            window_growth: 4 << 20,
            max_pending_refs: 256,
            pending_ref_ttl: Duration::from_secs(30),
            accept_queue: 128,
            send_buffer: 1 << 20,
            pipe_capacity: 256,
            handshake_timeout: Duration::from_secs(10),
            open_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// Checks the values once, so nothing fails later on a bad setting.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_message_len", self.max_message_len),
            ("max_control_len", self.max_control_len),
            ("max_depth", self.max_depth),
            ("max_untyped_items", self.max_untyped_items),
            ("max_streams", self.max_streams),
            ("accept_queue", self.accept_queue),
            ("send_buffer", self.send_buffer),
            ("pipe_capacity", self.pipe_capacity),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError { field, reason: "must be at least 1".into() });
            }
        }
        if self.max_message_len > (u32::MAX as usize) - 1 {
            return Err(ConfigError {
                field: "max_message_len",
                reason: "must fit a u32 frame length".into(),
            });
        }
        if self.max_streams < 4 {
            return Err(ConfigError {
                field: "max_streams",
                reason: "must be at least 4 (each side keeps a control stream)".into(),
            });
        }
        if self.idle_timeout <= self.heartbeat_interval {
            return Err(ConfigError {
                field: "idle_timeout",
                reason: "must be longer than heartbeat_interval".into(),
            });
        }
        Ok(())
    }
}

/// A configuration value that cannot work.
#[derive(Clone, Debug, thiserror::Error)]
#[error("invalid setting {field}: {reason}")]
pub struct ConfigError {
    /// The field at fault.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_zero_is_refused() {
        assert!(Limits::default().validate().is_ok());
        let limits = Limits { accept_queue: 0, ..Limits::default() };
        assert_eq!(limits.validate().unwrap_err().field, "accept_queue");
        let limits = Limits { idle_timeout: Duration::from_secs(1), ..Limits::default() };
        assert_eq!(limits.validate().unwrap_err().field, "idle_timeout");
    }
}
