//! The shape of an encoded CBOR item as a receiver counts it, without decoding it: its nesting
//! depth (PROTOCOL.md §7.1: each array, map and tag counts one level) and the number of data
//! items it holds (PROTOCOL.md §9, `max_untyped_items`).

use smallvec::SmallVec;

/// What [`cbor_scan`] found in a well-formed item within its limits.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Shape {
    /// The deepest nesting of arrays, maps and tags.
    pub depth: usize,
    /// The data items, the outer one included: every array, map, tag, string, number and
    /// simple value counts one, and so does each chunk of an indefinite-length string.
    pub items: usize,
}

/// Why [`cbor_scan`] stopped.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum ScanError {
    /// The item nests deeper than the depth limit.
    TooDeep,
    /// The item holds more data items than the item limit.
    TooManyItems,
    /// The item is not well-formed CBOR, or is cut short.
    Malformed,
}

/// The deepest nesting of arrays, maps and tags in the first CBOR item of `bytes`, or `None`
/// if the item is not well-formed or goes past `limit` (the scan stops there, so its cost is
/// bounded by the bytes up to that point).
pub fn cbor_depth(bytes: &[u8], limit: usize) -> Option<usize> {
    cbor_scan(bytes, limit, usize::MAX).ok().map(|shape| shape.depth)
}

/// The [`Shape`] of the first CBOR item of `bytes`, or why it has none within the limits. The
/// scan stops at the first limit it passes, so its cost is bounded by the bytes up to that
/// point; it allocates only for items nested deeper than 16, one word per level up to
/// `max_depth`.
///
/// # Errors
/// [`ScanError`]: the first limit passed, or a broken item, whichever comes first.
pub fn cbor_scan(bytes: &[u8], max_depth: usize, max_items: usize) -> Result<Shape, ScanError> {
    use ScanError::Malformed;
    // Items still to read in each open container; `u64::MAX` is an indefinite length. Kept
    // inline up to 16 levels: this runs on every message sent, most of them shallow.
    let mut open: SmallVec<[u64; 16]> = SmallVec::new();
    let mut deepest = 0;
    let mut items = 0usize;
    let mut at = 0;
    loop {
        let initial = *bytes.get(at).ok_or(Malformed)?;
        at += 1;
        let (major, info) = (initial >> 5, initial & 0x1f);
        if initial == 0xff {
            // A break ends the innermost indefinite container.
            if open.pop().ok_or(Malformed)? != u64::MAX {
                return Err(Malformed);
            }
        } else {
            items += 1;
            if items > max_items {
                return Err(ScanError::TooManyItems);
            }
            let arg = match info {
                0..=23 => u64::from(info),
                24..=27 => {
                    let len = 1usize << (info - 24);
                    let raw = bytes.get(at..at + len).ok_or(Malformed)?;
                    at += len;
                    raw.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b))
                }
                31 if matches!(major, 2..=5) => u64::MAX,
                _ if major == 7 && info < 28 => 0,
                _ => return Err(Malformed),
            };
            match major {
                // Byte and text strings: skip the content (chunks of an indefinite one are
                // items of their own, ended by a break).
                2 | 3 if arg == u64::MAX => open.push(u64::MAX),
                2 | 3 => {
                    let len = usize::try_from(arg).map_err(|_| Malformed)?;
                    at = at.checked_add(len).ok_or(Malformed)?;
                }
                4..=6 => {
                    let count = match major {
                        4 => arg,
                        5 if arg == u64::MAX => arg,
                        5 => arg.checked_mul(2).ok_or(Malformed)?,
                        // A tag holds one item.
                        _ => 1,
                    };
                    // Indefinite strings are not levels; these are.
                    let depth = open.len() + 1;
                    deepest = deepest.max(depth);
                    if deepest > max_depth {
                        return Err(ScanError::TooDeep);
                    }
                    open.push(count);
                    if count == 0 {
                        open.pop();
                    } else {
                        continue;
                    }
                }
                _ => {}
            }
        }
        // One item done: count it against its container, closing those it completes.
        loop {
            match open.last_mut() {
                None if at <= bytes.len() => return Ok(Shape { depth: deepest, items }),
                None => return Err(Malformed),
                Some(left) if *left == u64::MAX => break,
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    open.pop();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{cbor_depth, cbor_scan, ScanError, Shape};

    fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).unwrap();
        out
    }

    #[test]
    fn counts_arrays_maps_and_tags() {
        assert_eq!(cbor_depth(&encode(&7u32), 64), Some(0));
        assert_eq!(cbor_depth(&encode(&"text"), 64), Some(0));
        assert_eq!(cbor_depth(&encode(&vec![1u8, 2]), 64), Some(1));
        assert_eq!(cbor_depth(&encode(&Vec::<u8>::new()), 64), Some(1));
        assert_eq!(cbor_depth(&encode(&vec![vec![vec![1u8]], vec![]]), 64), Some(3));
        let map: std::collections::BTreeMap<String, Vec<u8>> = [("a".into(), vec![1])].into();
        assert_eq!(cbor_depth(&encode(&map), 64), Some(2));
        // A tag around an array: two levels.
        assert_eq!(cbor_depth(&[0xd9, 0xd0, 0x00, 0x81, 0x01], 64), Some(2));
        // Indefinite array of an indefinite text string.
        assert_eq!(cbor_depth(&[0x9f, 0x7f, 0x61, 0x61, 0xff, 0xff], 64), Some(1));
    }

    #[test]
    fn stops_past_the_limit_and_at_broken_items() {
        let deep = [vec![0x81u8; 10], vec![0x00]].concat();
        assert_eq!(cbor_depth(&deep, 10), Some(10));
        assert_eq!(cbor_depth(&deep, 9), None);
        assert_eq!(cbor_depth(&[0x82, 0x01], 64), None, "truncated");
        assert_eq!(cbor_depth(&[0x1c], 64), None, "reserved additional info");
        assert_eq!(cbor_depth(&[0xff], 64), None, "break outside a container");
    }

    #[test]
    fn counts_items() {
        let shape = |bytes: &[u8]| cbor_scan(bytes, 64, usize::MAX).map(|s| s.items);
        assert_eq!(shape(&encode(&7u32)), Ok(1));
        assert_eq!(shape(&encode(&"text")), Ok(1));
        assert_eq!(shape(&encode(&vec![1u8, 2])), Ok(3));
        let map: std::collections::BTreeMap<String, Vec<u8>> = [("a".into(), vec![1])].into();
        // The map, the key, the array, the 1.
        assert_eq!(shape(&encode(&map)), Ok(4));
        // A tag around an array of one: three.
        assert_eq!(shape(&[0xd9, 0xd0, 0x00, 0x81, 0x01]), Ok(3));
        // Indefinite array, indefinite text, one chunk: breaks do not count.
        assert_eq!(shape(&[0x9f, 0x7f, 0x61, 0x61, 0xff, 0xff]), Ok(3));
        // A long byte string is one item, whatever its length.
        let bytes = encode(&serde_bytes::ByteBuf::from(vec![0u8; 100_000]));
        assert_eq!(cbor_scan(&bytes, 64, 1), Ok(Shape { depth: 0, items: 1 }));
    }

    #[test]
    fn stops_at_the_item_limit() {
        // An array of `n` nulls is n + 1 items.
        let nulls = |n: u8| [vec![0x80 | n], vec![0xf6; usize::from(n)]].concat();
        assert_eq!(cbor_scan(&nulls(9), 64, 9), Err(ScanError::TooManyItems));
        assert_eq!(cbor_scan(&nulls(9), 64, 10).map(|s| s.items), Ok(10));
        assert_eq!(cbor_scan(&nulls(9), 64, 11).map(|s| s.items), Ok(10));
        // The limit that is passed first is the one reported.
        let deep = [vec![0x81u8; 10], vec![0x00]].concat();
        assert_eq!(cbor_scan(&deep, 9, 5), Err(ScanError::TooManyItems));
        assert_eq!(cbor_scan(&deep, 9, 100), Err(ScanError::TooDeep));
        assert_eq!(cbor_scan(&[0x82, 0x01], 64, 100), Err(ScanError::Malformed));
        // A header that claims more items than the bytes hold is cut short, not counted.
        assert_eq!(cbor_scan(&[0x9a, 0xff, 0xff, 0xff, 0xff], 64, 100), Err(ScanError::Malformed));
    }
}
