//! The wire protocol with no I/O: frame codec, control payloads and error codes.
//!
//! Everything here is pure: it turns bytes into values and back, checks every length against
//! its limit before allocating, and never panics on input from the network. The session code
//! in the parent module drives it over real streams. `docs/PROTOCOL.md` is the normative text.

pub mod code;
pub mod control;
pub mod depth;
pub mod frame;

pub use code::Code;
pub use control::{Accept, CloseErr, Direction, Kind, Open};
pub use frame::{FrameDecoder, FrameError, FrameType, HEADER_LEN};
