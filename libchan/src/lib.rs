//! Go-like channels over the network.
//!
//! A [`Sender`]/[`Receiver`] pair carries any serde type, encoded as CBOR. A message may carry
//! further channels (either end) and [`ByteStream`]s as fields, nested to any depth the
//! [`Limits`] allow; request/response is a message with a return channel. [`pipe`] makes an
//! in-memory pair; a [`Session`] multiplexes channels over one connection, each channel and
//! byte stream on a stream of its own.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Request { n: u32, reply: libchan::Sender<u32> }
//!
//! let listener = libchan::listen("tcp://127.0.0.1:0").await.unwrap();
//! let client = libchan::connect(listener.local_url()).await.unwrap();
//! let server = listener.accept().await.unwrap();
//!
//! let requests = client.open::<Request>().await.unwrap();
//! let (reply, mut answer) = libchan::pipe();
//! requests.send(Request { n: 20, reply }).await.unwrap();
//!
//! let mut incoming = server.accept::<Request>().await.unwrap();
//! let request = incoming.recv().await.unwrap().unwrap();
//! request.reply.send(request.n + 22).await.unwrap();
//! assert_eq!(answer.recv().await.unwrap(), Some(42));
//! # }
//! ```
//!
//! The wire protocol is specified in `docs/PROTOCOL.md`.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod chan;
mod config;
mod context;
mod error;
mod framed;
#[doc(hidden)]
pub mod fuzz_support;
pub mod proto;
mod session;
mod stream;
mod transport;
#[doc(hidden)]
pub use transport::raw;
mod value;

pub use chan::{copy, pipe, pipe_with_capacity, Message, Receiver, Sender};
pub use config::{ConfigError, Limits};
pub use context::refuse;
pub use error::{ConnectError, OpenError, RecvError, SendError, SendFailure};
pub use session::Session;
pub use stream::{byte_pipe, ByteStream};
pub use transport::tls::Tls;
pub use transport::traffic::Traffic;
pub use transport::url::{
    connect, connect_secure, connect_with, listen, listen_secure, listen_with, Listener, PREAMBLE,
};
pub use value::{Handle, Value};

/// CBOR tag of a reference to a channel whose receiver gets a [`Sender`].
pub const TAG_SENDER: u64 = 53248;
/// CBOR tag of a reference to a channel whose receiver gets a [`Receiver`].
pub const TAG_RECEIVER: u64 = 53249;
/// CBOR tag of a reference to a duplex [`ByteStream`].
pub const TAG_BYTE_STREAM: u64 = 53250;
/// CBOR tag of a read-only byte stream (reserved in this version).
pub const TAG_BYTE_STREAM_READ: u64 = 53251;
/// CBOR tag of a write-only byte stream (reserved in this version).
pub const TAG_BYTE_STREAM_WRITE: u64 = 53252;
