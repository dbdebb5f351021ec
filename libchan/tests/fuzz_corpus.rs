//! Replays the committed fuzz corpus (`fuzz/corpus/{frame,open_accept,message}`) through the
//! functions the fuzz targets call (`libchan::fuzz_support`), so `cargo test` runs every seed
//! and every input the fuzzer found; and checks the message limits on the same path at their
//! boundaries. How the corpus is made and run: `docs/fuzzing.md`.

use libchan::fuzz_support::{self, corpus, MessageCase};
use libchan::proto::{Code, Direction, FrameError, FrameType, Kind, Open};
use libchan::{Limits, RecvError, Value};

#[test]
fn frame_corpus_replays() {
    for (name, data) in corpus("frame") {
        let report = fuzz_support::frame(&data);
        match name.as_str() {
            "13.2-control-stream" => assert_eq!(
                report.frames,
                [(FrameType::Open, 7), (FrameType::Accept, 4), (FrameType::Ping, 0)]
            ),
            "13.3-channel-carrying-sender" => {
                let types: Vec<FrameType> = report.frames.iter().map(|f| f.0).collect();
                use FrameType::*;
                assert_eq!(types, [Open, Accept, Msg, Msg, RecvClosed]);
                assert_eq!(report.error, None);
            }
            "msg-at-limit" => {
                assert_eq!(report.frames, [(FrameType::Msg, fuzz_support::FRAME_MAX_MESSAGE)])
            }
            "control-at-limit" => {
                assert_eq!(report.frames, [(FrameType::Accept, fuzz_support::FRAME_MAX_CONTROL)])
            }
            "msg-over-limit" | "control-over-limit" | "huge-length-header-only" => {
                assert!(report.frames.is_empty(), "{name}");
                assert!(matches!(report.error, Some(FrameError::TooLarge { .. })), "{name}");
            }
            "zero-length" => assert_eq!(report.error, Some(FrameError::Empty)),
            "unknown-type-9" => assert_eq!(report.error, Some(FrameError::UnknownType(9))),
            "truncated-msg" => {
                assert_eq!(report.error, Some(FrameError::Truncated { have: 8, want: 14 }))
            }
            _ => {}
        }
    }
}

#[test]
fn open_accept_corpus_replays() {
    for (name, data) in corpus("open_accept") {
        let report = fuzz_support::control(&data);
        match name.as_str() {
            "open-nested-sender-13.3" => assert_eq!(
                report.open,
                Ok(Open {
                    kind: Kind::Channel,
                    ref_id: 5,
                    parent: 3,
                    direction: Direction::AcceptorSends,
                    content_type: None,
                })
            ),
            "open-byte-stream-13.6" => {
                let open = report.open.unwrap();
                assert_eq!((open.kind, open.ref_id, open.parent), (Kind::ByteStream, 9, 3));
            }
            "open-content-type" => {
                assert_eq!(report.open.unwrap().content_type.as_deref(), Some("swarm"))
            }
            "open-unknown-key-ignored" => assert_eq!(report.open.unwrap().ref_id, 13),
            "open-unknown-kind" => assert!(report.open.unwrap_err().contains("unknown kind 9")),
            "open-unknown-direction" => {
                assert!(report.open.unwrap_err().contains("unknown direction 7"))
            }
            "open-missing-ref" => assert!(report.open.is_err()),
            "accept-refused-13.5" => {
                let accept = report.accept.unwrap();
                assert_eq!(accept.status, Code::AcceptQueueFull);
                assert_eq!(accept.error.as_deref(), Some("accept queue of 128 is full"));
            }
            "accept-trailing-byte" => assert!(report.accept.unwrap_err().contains("trailing")),
            "accept-unknown-code" => {
                assert_eq!(report.accept.unwrap().status, Code::Unknown(4_000_000_000))
            }
            "close-err-13.4" => {
                let close = report.close.unwrap();
                assert_eq!((close.code, close.message.as_str()), (Code::Application, "boom"));
            }
            "close-err-no-message" => assert_eq!(report.close.unwrap().message, ""),
            "break-byte" => {
                assert!(report.open.is_err() && report.accept.is_err() && report.close.is_err())
            }
            _ => {}
        }
    }
}

#[test]
fn message_corpus_replays_as_values() {
    for (name, data) in corpus("message") {
        let Some(result) = fuzz_support::message::<Value>(&data) else { continue };
        let result = result.map(|value| value.handles.len()).map_err(|e| e.to_string());
        let expect_error = |needle: &str| match &result {
            Err(text) => assert!(text.contains(needle), "{name}: {text}"),
            Ok(handles) => panic!("{name}: decoded with {handles} handles"),
        };
        match name.as_str() {
            "13.3-request-with-sender" | "13.3-request-sender-arrived-first" => {
                assert_eq!(result, Ok(1), "{name}")
            }
            "13.6-byte-stream-arrived-first" => assert_eq!(result, Ok(1)),
            "value-receiver-and-sender" => assert_eq!(result, Ok(3)),
            "value-handle-in-map-key" | "value-handle-under-time-tag" => {
                assert_eq!(result, Ok(1), "{name}")
            }
            "refs-128-at-limit" => assert_eq!(result, Ok(128)),
            "refs-129-over-limit" => expect_error("more than 128 references"),
            "depth-64-arrays" => assert_eq!(result, Ok(0)),
            "depth-65-arrays" => expect_error("deeper than the limit of 64"),
            "duplicate-ref" => expect_error("appears twice"),
            "ref-with-own-parity" => expect_error("this side's parity"),
            "ref-parked-wrong-kind" => expect_error("was expected"),
            "ref-parked-other-parent" => expect_error("belongs to channel 4"),
            "reserved-tag-53253" => expect_error("53253 is not supported"),
            "read-only-stream-tag-53251" => expect_error("53251 is not supported"),
            "negative-ref-id" => expect_error("negative reference id"),
            "ref-holding-text" => expect_error("does not hold an integer"),
            "trailing-bytes" => expect_error("1 bytes after"),
            // A length announced in a header is not allocated before the bytes are there.
            "huge-declared-array" | "huge-declared-bytes" | "huge-declared-text" => {
                expect_error("malformed CBOR: item cut short")
            }
            _ => {}
        }
    }
}

#[test]
fn reference_limit_holds_at_the_boundary() {
    let limit = Limits::default().max_refs_per_message;
    for count in [limit - 1, limit, limit + 1] {
        let payload = senders(count);
        let input = listener_case(&payload);
        let result = fuzz_support::message::<Value>(&input).unwrap();
        if count <= limit {
            assert_eq!(result.unwrap().handles.len(), count);
        } else {
            let error = result.unwrap_err().to_string();
            assert!(error.contains(&format!("more than {limit} references")), "{error}");
        }
    }
}

#[test]
fn depth_limit_holds_at_the_boundary() {
    let limit = Limits::default().max_depth;
    for depth in [limit - 1, limit, limit + 1] {
        // `depth` nested one-element arrays around a 0: a message `depth` containers deep.
        let payload = [vec![0x81; depth], vec![0x00]].concat();
        let result = fuzz_support::message::<Value>(&listener_case(&payload)).unwrap();
        if depth <= limit {
            assert!(result.is_ok(), "depth {depth}: {:?}", result.err());
        } else {
            let error = result.unwrap_err().to_string();
            assert!(error.contains(&format!("deeper than the limit of {limit}")), "{error}");
        }
    }
}

#[test]
fn untyped_item_limit_holds_at_the_boundary() {
    let limit = Limits::default().max_untyped_items;
    for items in [limit - 1, limit, limit + 1] {
        // An array of `items - 1` nulls: `items` data items, one byte each.
        let payload = nulls(items - 1);
        let result = fuzz_support::message::<Value>(&listener_case(&payload)).unwrap();
        if items <= limit {
            let value = result.unwrap_or_else(|e| panic!("{items} items: {e}"));
            assert!(matches!(value.data, ciborium::Value::Array(ref a) if a.len() == items - 1));
        } else {
            let error = result.unwrap_err().to_string();
            assert!(
                error.contains(&format!("more than the limit of {limit} CBOR items")),
                "{error}"
            );
        }
    }
    // A typed receiver is held by its type, not by this limit.
    let typed = fuzz_support::message::<Vec<Option<u8>>>(&listener_case(&nulls(limit + 1)));
    assert_eq!(typed.unwrap().unwrap().len(), limit + 1);
}

/// The `Value`s inside a typed message are held by the same limit, all of them together: they
/// cost what a message received as a `Value` costs. The typed parts are not counted.
#[test]
fn untyped_item_limit_holds_for_values_inside_typed_messages() {
    let limit = Limits::default().max_untyped_items;
    let over = format!("more than the limit of {limit} CBOR items");
    for items in [limit - 1, limit, limit + 1] {
        // ("name", [null; items - 1]): the Value holds `items` data items.
        let mut payload = vec![0x82, 0x64];
        payload.extend_from_slice(b"name");
        payload.extend_from_slice(&nulls(items - 1));
        let result = fuzz_support::message::<(String, Value)>(&listener_case(&payload)).unwrap();
        if items <= limit {
            let (name, value) = result.unwrap_or_else(|e| panic!("{items} items: {e}"));
            assert_eq!(name, "name");
            assert!(matches!(value.data, ciborium::Value::Array(ref a) if a.len() == items - 1));
        } else {
            let Err(error) = result else { panic!("{items} items decoded past the limit") };
            // A protocol violation (the channel ends, the sender gets TOO_LARGE), not a type
            // mismatch the channel would go on after.
            assert!(matches!(error, RecvError::Protocol(ref m) if m.contains(&over)), "{error}");
        }
    }
    // Two values share the limit: half of it each, and one item more.
    let half = limit / 2;
    let mut payload = vec![0x82];
    payload.extend_from_slice(&nulls(half - 1));
    payload.extend_from_slice(&nulls(limit - half));
    let result = fuzz_support::message::<Vec<Value>>(&listener_case(&payload)).unwrap();
    let Err(error) = result else { panic!("two values decoded past their shared limit") };
    assert!(error.to_string().contains(&over), "{error}");
}

/// A CBOR array of `n` nulls.
fn nulls(n: usize) -> Vec<u8> {
    let mut out = vec![0x9a];
    out.extend_from_slice(&u32::try_from(n).unwrap().to_be_bytes());
    out.resize(5 + n, 0xf6);
    out
}

#[test]
fn message_case_bytes_round_trip() {
    let case = MessageCase {
        dialer: true,
        channel: 7,
        parked: vec![Open {
            kind: Kind::ByteStream,
            ref_id: 10,
            parent: 8,
            direction: Direction::OpenerSends,
            content_type: None,
        }],
        payload: b"\xf6",
    };
    let bytes = case.to_bytes();
    let parsed = MessageCase::parse(&bytes).unwrap();
    assert_eq!((parsed.dialer, parsed.channel, parsed.payload), (true, 7, &b"\xf6"[..]));
    assert_eq!(parsed.parked, case.parked);
}

/// A CBOR array of `count` sender references with the dialer's (odd) ids.
fn senders(count: usize) -> Vec<u8> {
    let mut out = match count {
        0..=23 => vec![0x80 | count as u8],
        24..=255 => vec![0x98, count as u8],
        _ => vec![0x99, (count >> 8) as u8, count as u8],
    };
    for i in 0..count {
        let id = 2 * i as u16 + 1;
        out.extend_from_slice(&[0xd9, 0xd0, 0x00, 0x19]);
        out.extend_from_slice(&id.to_be_bytes());
    }
    out
}

/// The message as received by the listener on channel 3, nothing parked.
fn listener_case(payload: &[u8]) -> Vec<u8> {
    MessageCase { dialer: false, channel: 3, parked: Vec::new(), payload }.to_bytes()
}
