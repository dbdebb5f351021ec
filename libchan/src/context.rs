//! The encoding context: how a handle inside a message finds the session it is sent on.
//!
//! Serde gives a `Serialize` impl nothing but the value, so `send` pushes a context on a
//! thread-local stack, encodes, and pops it (an RAII guard, never held across `.await`).
//! Encoding only records exports; the session opens streams for them after the whole message
//! encoded and passed its checks (DESIGN: two-phase send). Decoding claims references from the
//! session's rendezvous table.

use std::cell::RefCell;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::proto::{Code, Direction, Kind, Open};
use crate::session::{PendingStream, SessionInner};
use crate::transport::RawStream;

/// Starts the local side of an exported handle once its stream is open.
pub(crate) type Start =
    Box<dyn FnOnce(Arc<SessionInner>, u64, RawStream) -> BoxFuture<'static, ()> + Send>;

/// A handle that a message names, waiting for its stream to be opened.
pub(crate) struct Export {
    pub open: Open,
    pub start: Start,
}

pub(crate) struct EncodeState {
    pub session: Arc<SessionInner>,
    pub parent: u64,
    pub exports: Vec<Export>,
}

pub(crate) struct DecodeState {
    pub session: Arc<SessionInner>,
    pub parent: u64,
    pub claimed: Vec<u64>,
    /// The first reference error, reported as a protocol violation rather than a type error.
    pub error: Option<String>,
    /// The code the receiver ends the channel with for `error`, telling the sender why
    /// (CLOSE_ERR); `None` ends it with RECV_CLOSED.
    pub close: Option<Code>,
    /// CBOR items the [`crate::Value`]s inside a typed message may still decode into
    /// (`max_untyped_items` for the whole message); `None` when the message was counted
    /// before decoding (received as a `Value`), or nothing bounds it.
    pub untyped_left: Option<usize>,
}

enum Context {
    Encode(EncodeState),
    Decode(DecodeState),
}

thread_local! {
    static STACK: RefCell<Vec<Context>> = const { RefCell::new(Vec::new()) };
}

/// Pops the context even if encoding panics, so the stack never holds a stale session.
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        STACK.with(|stack| stack.borrow_mut().pop());
    }
}

/// Runs `f` (an encoder) with `state` as the current context; returns what it recorded.
pub(crate) fn encoding<R>(state: EncodeState, f: impl FnOnce() -> R) -> (R, EncodeState) {
    STACK.with(|stack| stack.borrow_mut().push(Context::Encode(state)));
    let guard = Guard;
    let out = f();
    let state = STACK.with(|stack| stack.borrow_mut().pop());
    std::mem::forget(guard);
    match state {
        Some(Context::Encode(state)) => (out, state),
        // Invariant: pushes and pops pair up; nothing else pops this stack.
        _ => unreachable!("encoding context stack out of order"),
    }
}

/// Runs `f` (a decoder) with `state` as the current context.
pub(crate) fn decoding<R>(state: DecodeState, f: impl FnOnce() -> R) -> (R, DecodeState) {
    STACK.with(|stack| stack.borrow_mut().push(Context::Decode(state)));
    let guard = Guard;
    let out = f();
    let state = STACK.with(|stack| stack.borrow_mut().pop());
    std::mem::forget(guard);
    match state {
        Some(Context::Decode(state)) => (out, state),
        // Invariant: pushes and pops pair up; nothing else pops this stack.
        _ => unreachable!("decoding context stack out of order"),
    }
}

/// Records a handle to export; returns the reference id to write in its tag.
///
/// # Errors
/// When no libchan send is encoding on this thread (a handle serialized by another encoder).
pub(crate) fn export(kind: Kind, direction: Direction, start: Start) -> Result<u64, String> {
    STACK.with(|stack| match stack.borrow_mut().last_mut() {
        Some(Context::Encode(state)) => {
            let ref_id = state.session.next_ref();
            state.exports.push(Export {
                open: Open { kind, ref_id, parent: state.parent, direction, content_type: None },
                start,
            });
            Ok(ref_id)
        }
        _ => Err("libchan handles can only be serialized by a libchan send".into()),
    })
}

/// Claims a referenced stream for a handle being decoded. `direction` is as the OPEN frame
/// states it (the exporter opened the stream).
///
/// # Errors
/// Outside a libchan receive, or a bad reference: unknown, duplicate, of the wrong kind, from
/// another channel, or over the per-message limit. The error is also kept in the context.
pub(crate) fn import(
    ref_id: u64,
    kind: Kind,
    direction: Direction,
) -> Result<(Arc<SessionInner>, PendingStream), String> {
    STACK.with(|stack| match stack.borrow_mut().last_mut() {
        Some(Context::Decode(state)) => {
            let result = claim(state, ref_id, kind, direction);
            if let Err(e) = &result {
                fail(state, e.clone(), None);
            }
            result.map(|pending| (state.session.clone(), pending))
        }
        _ => Err("libchan handles can only be deserialized by a libchan receive".into()),
    })
}

/// How many CBOR items a [`crate::Value`] being decoded may still hold, if anything bounds
/// it (see [`DecodeState::untyped_left`]), and the limit for the message.
pub(crate) fn untyped_left() -> Option<(usize, usize)> {
    STACK.with(|stack| match stack.borrow().last() {
        Some(Context::Decode(state)) => {
            state.untyped_left.map(|left| (left, state.session.limits.max_untyped_items))
        }
        _ => None,
    })
}

/// Records what a [`crate::Value`] left of the message's item budget, and the error if it
/// went over: the message is then refused as a protocol violation, not a type error.
pub(crate) fn spent_untyped(left: usize, error: Option<String>) {
    STACK.with(|stack| {
        if let Some(Context::Decode(state)) = stack.borrow_mut().last_mut() {
            state.untyped_left = Some(left);
            if let Some(error) = error {
                fail(state, error, Some(Code::TooLarge));
            }
        }
    });
}

/// Refuses the message being received, for a `Deserialize` impl of a message type that finds
/// it over a bound of its own (or otherwise unacceptable): the receiver's `recv` fails with
/// [`RecvError::Protocol`](crate::RecvError::Protocol) carrying `message`, the channel ends
/// with CLOSE_ERR (`code`, `message`), and the sender's next send fails with
/// [`SendFailure::Refused`](crate::SendFailure::Refused) naming them (PROTOCOL.md §5.4). The
/// refusal stands even if the deserializer recovers from the error returned here. Outside a
/// libchan receive (an in-memory pipe does not decode) it only makes the error.
///
/// ```
/// use libchan::proto::Code;
///
/// fn bounded<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
///     let bytes: Vec<u8> = serde::Deserialize::deserialize(d)?;
///     if bytes.len() > 16 {
///         return Err(libchan::refuse(Code::TooLarge, "more than 16 bytes"));
///     }
///     Ok(bytes)
/// }
/// ```
pub fn refuse<E: serde::de::Error>(code: Code, message: impl Into<String>) -> E {
    let message = message.into();
    STACK.with(|stack| {
        if let Some(Context::Decode(state)) = stack.borrow_mut().last_mut() {
            fail(state, message.clone(), Some(code));
        }
    });
    E::custom(message)
}

/// Keeps the first error of a message (the one its receiver reports), with its code.
fn fail(state: &mut DecodeState, error: String, close: Option<Code>) {
    if state.error.is_none() {
        state.error = Some(error);
        state.close = close;
    }
}

fn claim(
    state: &mut DecodeState,
    ref_id: u64,
    kind: Kind,
    direction: Direction,
) -> Result<PendingStream, String> {
    let limit = state.session.limits.max_refs_per_message;
    if state.claimed.len() >= limit {
        return Err(format!("message carries more than {limit} references"));
    }
    if state.claimed.contains(&ref_id) {
        return Err(format!("reference {ref_id} appears twice in one message"));
    }
    state.claimed.push(ref_id);
    state.session.claim(ref_id, state.parent, kind, direction)
}
