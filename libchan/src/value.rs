//! Untyped messages: a CBOR value plus the handles it carries, for relays that forward
//! messages whose type they do not know.

use std::any::TypeId;
use std::cell::Cell;

use ciborium::tag::Captured;
use ciborium::value::Integer;
use serde::de::{
    DeserializeSeed, EnumAccess, Error as _, MapAccess, SeqAccess, VariantAccess, Visitor,
};
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
        let mut data = match context::untyped_left() {
            None => ciborium::Value::deserialize(deserializer)?,
            // Inside a typed message, which nothing counted before decoding: count as it
            // decodes, and stop at the limit.
            Some((left, limit)) => {
                let budget = Budget { left: Cell::new(left), over: Cell::new(false) };
                let data = Counted(&budget).deserialize(deserializer);
                let over =
                    budget.over.get().then(|| format!("{TOO_MANY_ITEMS} {limit} CBOR items"));
                context::spent_untyped(budget.left.get(), over);
                data?
            }
        };
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

/// PROTOCOL.md §9: the [`Value`]s of a message hold at most `max_untyped_items` CBOR items
/// together, since each decoded item costs 32 bytes or more however few bytes it took on the
/// wire. A message received as a `Value` is counted before anything is decoded; the `Value`s
/// inside a typed message are counted as they decode. Returns the budget the decode counts
/// against: `None` when this check counted the whole message.
///
/// # Errors
/// The text for the receiver and for the sender's CLOSE_ERR TOO_LARGE.
pub(crate) fn check_items<T: 'static>(
    payload: &[u8],
    limits: &Limits,
) -> Result<Option<usize>, String> {
    let limit = limits.max_untyped_items;
    if TypeId::of::<T>() != TypeId::of::<Value>() {
        return Ok(Some(limit));
    }
    match cbor_scan(payload, limits.max_depth, limit) {
        Err(ScanError::TooManyItems) => Err(format!("{TOO_MANY_ITEMS} {limit} CBOR items")),
        // Too deep or broken: the decoder reports it, as for any message.
        _ => Ok(None),
    }
}

/// How untyped data over `max_untyped_items` is reported.
const TOO_MANY_ITEMS: &str = "untyped data holds more than the limit of";

/// What the `Value`s of a typed message may still decode: items left, and whether one went
/// over.
struct Budget {
    left: Cell<usize>,
    over: Cell<bool>,
}

impl Budget {
    fn spend<E: serde::de::Error>(&self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.over.set(true);
                Err(E::custom(TOO_MANY_ITEMS))
            }
        }
    }
}

/// Decodes a `ciborium::Value` as ciborium does, spending one item of the budget on every
/// data item before it is built (its strings are built whole, as ciborium builds them).
#[derive(Clone, Copy)]
struct Counted<'a>(&'a Budget);

impl<'de> DeserializeSeed<'de> for Counted<'_> {
    type Value = ciborium::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

macro_rules! counted_scalars {
    ($($visit:ident($ty:ty)),+ $(,)?) => {$(
        fn $visit<E: serde::de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.0.spend()?;
            Ok(v.into())
        }
    )+};
}

impl<'de> Visitor<'de> for Counted<'_> {
    type Value = ciborium::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a CBOR item")
    }

    counted_scalars! {
        visit_bool(bool), visit_f32(f32), visit_f64(f64),
        visit_i8(i8), visit_i16(i16), visit_i32(i32), visit_i64(i64), visit_i128(i128),
        visit_u8(u8), visit_u16(u16), visit_u32(u32), visit_u64(u64), visit_u128(u128),
        visit_char(char), visit_str(&str), visit_borrowed_str(&'de str), visit_string(String),
        visit_bytes(&[u8]), visit_borrowed_bytes(&'de [u8]), visit_byte_buf(Vec<u8>),
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.0.spend()?;
        Ok(ciborium::Value::Null)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.0.spend()?;
        Ok(ciborium::Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        self.0.spend()?;
        let mut items = Vec::new();
        while let Some(item) = access.next_element_seed(self)? {
            items.push(item);
        }
        Ok(ciborium::Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        self.0.spend()?;
        let mut entries = Vec::new();
        while let Some(entry) = access.next_entry_seed(self, self)? {
            entries.push(entry);
        }
        Ok(ciborium::Value::Map(entries))
    }

    /// ciborium hands a tag over as this enum variant: the tag number, then the tagged item.
    fn visit_enum<A: EnumAccess<'de>>(self, access: A) -> Result<Self::Value, A::Error> {
        self.0.spend()?;
        let (name, tagged): (String, _) = access.variant()?;
        if name != "@@TAGGED@@" {
            return Err(A::Error::custom(format!("unexpected enum {name} in a CBOR item")));
        }
        tagged.tuple_variant(2, Tagged(self.0))
    }
}

/// The tag number and the tagged item of a tag (see [`Counted::visit_enum`]).
struct Tagged<'a>(&'a Budget);

impl<'de> Visitor<'de> for Tagged<'_> {
    type Value = ciborium::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a CBOR tag")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let tag: u64 = access.next_element()?.ok_or_else(|| A::Error::custom("expected tag"))?;
        let item = access
            .next_element_seed(Counted(self.0))?
            .ok_or_else(|| A::Error::custom("expected tagged item"))?;
        Ok(ciborium::Value::Tag(tag, Box::new(item)))
    }
}

fn is_handle_tag(tag: u64) -> bool {
    matches!(
        tag,
        TAG_SENDER | TAG_RECEIVER | TAG_BYTE_STREAM | TAG_BYTE_STREAM_READ | TAG_BYTE_STREAM_WRITE
    )
}
