//! Untyped messages: a CBOR value plus the handles it carries, for relays that forward
//! messages whose type they do not know.

use std::any::TypeId;

use ciborium::tag::Captured;
use ciborium::value::Integer;
use serde::de::Error as _;
use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::proto::depth::{cbor_scan, ScanError};
use crate::proto::{Direction, Kind};
use crate::{context, ByteStream, Limits, Receiver, Sender};
use crate::{
    TAG_BYTE_STREAM, TAG_BYTE_STREAM_READ, TAG_BYTE_STREAM_WRITE, TAG_RECEIVER, TAG_SENDER,
};

/// A message of unknown type: its CBOR data, where each handle appears as its reference tag
/// holding an index into `handles`. Receiving a `Value` and sending it on forwards the message
/// faithfully, handles included (each is relayed).
#[derive(Debug)]
pub struct Value {
    /// The data; `Tag(TAG_SENDER | TAG_RECEIVER | TAG_BYTE_STREAM, index)` marks a handle.
    pub data: ciborium::Value,
    /// The handles the data names, by index.
    pub handles: Vec<Handle>,
}

/// A handle carried by a [`Value`].
#[derive(Debug)]
pub enum Handle {
    /// A sender: the peer that receives the value may send on it.
    Sender(Sender<Value>),
    /// A receiver.
    Receiver(Receiver<Value>),
    /// A byte stream.
    ByteStream(ByteStream),
}

impl Value {
    /// A value with no handles.
    pub fn new(data: ciborium::Value) -> Self {
        Self { data, handles: Vec::new() }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Walk { value: &self.data, handles: &self.handles }.serialize(serializer)
    }
}

struct Walk<'a> {
    value: &'a ciborium::Value,
    handles: &'a [Handle],
}

impl Serialize for Walk<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use ciborium::Value as V;
        match self.value {
            V::Tag(tag, inner) if is_handle_tag(*tag) => {
                let index = match inner.as_ref() {
                    V::Integer(i) => usize::try_from(i128::from(*i)).ok(),
                    _ => None,
                };
                match index.and_then(|i| self.handles.get(i)) {
                    Some(Handle::Sender(h)) => h.serialize(serializer),
                    Some(Handle::Receiver(h)) => h.serialize(serializer),
                    Some(Handle::ByteStream(h)) => h.serialize(serializer),
                    None => Err(S::Error::custom(format!(
                        "value names handle {inner:?} it does not hold"
                    ))),
                }
            }
            V::Tag(tag, inner) => {
                Captured(Some(*tag), Walk { value: inner, handles: self.handles })
                    .serialize(serializer)
            }
            V::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Walk { value: item, handles: self.handles })?;
                }
                seq.end()
            }
            V::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(
                        &Walk { value: k, handles: self.handles },
                        &Walk { value: v, handles: self.handles },
                    )?;
                }
                map.end()
            }
            other => other.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut data = ciborium::Value::deserialize(deserializer)?;
        let mut handles = Vec::new();
        claim_all(&mut data, &mut handles).map_err(D::Error::custom)?;
        Ok(Self { data, handles })
    }
}

/// Replaces each reference tag's id with an index into `handles`, claiming its stream.
fn claim_all(value: &mut ciborium::Value, handles: &mut Vec<Handle>) -> Result<(), String> {
    use ciborium::Value as V;
    match value {
        V::Tag(tag, inner) if is_handle_tag(*tag) || (53253..=53255).contains(tag) => {
            let id = match inner.as_ref() {
                V::Integer(i) => {
                    u64::try_from(i128::from(*i)).map_err(|_| "negative reference id")?
                }
                _ => return Err(format!("reference tag {tag} does not hold an integer")),
            };
            let (kind, direction) = match *tag {
                TAG_SENDER => (Kind::Channel, Direction::AcceptorSends),
                TAG_RECEIVER => (Kind::Channel, Direction::OpenerSends),
                TAG_BYTE_STREAM => (Kind::ByteStream, Direction::OpenerSends),
                other => return Err(format!("reference tag {other} is not supported")),
            };
            let (session, pending) = context::import(id, kind, direction)?;
            let handle = match *tag {
                TAG_SENDER => Handle::Sender(Sender::from_net(session, id, pending, false)),
                TAG_RECEIVER => Handle::Receiver(Receiver::from_net(session, id, pending, false)),
                _ => Handle::ByteStream(ByteStream::from_pending(&session, pending)),
            };
            **inner = V::Integer(Integer::from(handles.len() as u64));
            handles.push(handle);
            Ok(())
        }
        V::Tag(_, inner) => claim_all(inner, handles),
        V::Array(items) => items.iter_mut().try_for_each(|item| claim_all(item, handles)),
        V::Map(entries) => entries.iter_mut().try_for_each(|(k, v)| {
            claim_all(k, handles)?;
            claim_all(v, handles)
        }),
        _ => Ok(()),
    }
}

/// PROTOCOL.md §9: a message received as a [`Value`] holds at most `max_untyped_items` CBOR
/// items, counted before anything is decoded, since each decoded item costs 32 bytes or more
/// however few bytes it took on the wire. Other messages pass unchecked.
///
/// # Errors
/// The text for the receiver and for the sender's CLOSE_ERR TOO_LARGE.
pub(crate) fn check_items<T: 'static>(payload: &[u8], limits: &Limits) -> Result<(), String> {
    if TypeId::of::<T>() != TypeId::of::<Value>() {
        return Ok(());
    }
    let limit = limits.max_untyped_items;
    match cbor_scan(payload, limits.max_depth, limit) {
        Err(ScanError::TooManyItems) => {
            Err(format!("untyped message holds more than the limit of {limit} CBOR items"))
        }
        // Too deep or broken: the decoder reports it, as for any message.
        _ => Ok(()),
    }
}

fn is_handle_tag(tag: u64) -> bool {
    matches!(
        tag,
        TAG_SENDER | TAG_RECEIVER | TAG_BYTE_STREAM | TAG_BYTE_STREAM_READ | TAG_BYTE_STREAM_WRITE
    )
}
