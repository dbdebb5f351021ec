//! The nesting depth of an encoded CBOR item, as a receiver counts it (PROTOCOL.md §7.1: each
//! array, map and tag counts one level), without decoding it.

/// The deepest nesting of arrays, maps and tags in the first CBOR item of `bytes`, or `None`
/// if the item is not well-formed or goes past `limit` (the scan stops there, so its cost is
/// bounded by the bytes up to that point).
pub fn cbor_depth(bytes: &[u8], limit: usize) -> Option<usize> {
    // Items still to read in each open container; `u64::MAX` is an indefinite length.
    let mut open: Vec<u64> = Vec::new();
    let mut deepest = 0;
    let mut at = 0;
    loop {
        let initial = *bytes.get(at)?;
        at += 1;
        let (major, info) = (initial >> 5, initial & 0x1f);
        if initial == 0xff {
            // A break ends the innermost indefinite container.
            if open.pop()? != u64::MAX {
                return None;
            }
        } else {
            let arg = match info {
                0..=23 => u64::from(info),
                24..=27 => {
                    let len = 1usize << (info - 24);
                    let raw = bytes.get(at..at + len)?;
                    at += len;
                    raw.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b))
                }
                31 if matches!(major, 2..=5) => u64::MAX,
                _ if major == 7 && info < 28 => 0,
                _ => return None,
            };
            match major {
                // Byte and text strings: skip the content (chunks of an indefinite one are
                // items of their own, ended by a break).
                2 | 3 if arg == u64::MAX => open.push(u64::MAX),
                2 | 3 => at = at.checked_add(usize::try_from(arg).ok()?)?,
                4..=6 => {
                    let items = match major {
                        4 => arg,
                        5 if arg == u64::MAX => arg,
                        5 => arg.checked_mul(2)?,
                        // A tag holds one item.
                        _ => 1,
                    };
                    // Indefinite strings are not levels; these are.
                    let depth = open.len() + 1;
                    deepest = deepest.max(depth);
                    if deepest > limit {
                        return None;
                    }
                    open.push(items);
                    if items == 0 {
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
                None => return (at <= bytes.len()).then_some(deepest),
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
    use super::cbor_depth;

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
}
