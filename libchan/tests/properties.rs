//! Property tests: frames and control payloads round-trip; arbitrary bytes never panic the
//! decoders; messages round-trip through a real session.

use bytes::BytesMut;
use libchan::proto::{
    frame, Accept, CloseErr, Code, Direction, FrameDecoder, FrameType, Kind, Open,
};
use proptest::prelude::*;

const DECODER: FrameDecoder = FrameDecoder { max_msg: 1 << 16, max_control: 4097 };

fn frame_type() -> impl Strategy<Value = FrameType> {
    (1u8..=6).prop_map(|b| FrameType::from_u8(b).unwrap())
}

proptest! {
    #[test]
    fn frames_round_trip(frames in prop::collection::vec((frame_type(), prop::collection::vec(any::<u8>(), 0..4096)), 1..8)) {
        let mut buf = BytesMut::new();
        for (ty, payload) in &frames {
            frame::encode(*ty, payload, &mut buf);
        }
        for (ty, payload) in &frames {
            let (got_ty, got) = DECODER.decode(&mut buf).unwrap().unwrap();
            prop_assert_eq!(got_ty, *ty);
            prop_assert_eq!(&got[..], &payload[..]);
        }
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn frame_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = DECODER.decode(&mut buf) {}
    }

    #[test]
    fn control_payloads_round_trip(
        kind in 0u8..3, ref_id in any::<u64>(), parent in any::<u64>(), opener_sends in any::<bool>(),
        content_type in prop::option::of("[a-z/]{0,20}"), code in any::<u32>(), text in ".{0,40}",
    ) {
        let open = Open {
            kind: [Kind::Channel, Kind::ByteStream, Kind::Control][kind as usize],
            ref_id, parent,
            direction: if opener_sends { Direction::OpenerSends } else { Direction::AcceptorSends },
            content_type,
        };
        prop_assert_eq!(Open::decode(&open.encode()).unwrap(), open);
        let accept = Accept::refuse(Code::from_u32(code), text.clone());
        prop_assert_eq!(Accept::decode(&accept.encode()).unwrap(), accept);
        let close = CloseErr { code: Code::from_u32(code), message: text };
        prop_assert_eq!(CloseErr::decode(&close.encode()).unwrap(), close);
    }

    #[test]
    fn control_decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Open::decode(&bytes);
        let _ = Accept::decode(&bytes);
        let _ = CloseErr::decode(&bytes);
    }
}

#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
enum Shape {
    Unit,
    Text(String),
    Pair(i64, Option<u32>),
    Many {
        items: Vec<u16>,
        #[serde(with = "serde_bytes")]
        blob: Vec<u8>,
    },
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Unit),
        ".{0,64}".prop_map(Shape::Text),
        (any::<i64>(), any::<Option<u32>>()).prop_map(|(a, b)| Shape::Pair(a, b)),
        (prop::collection::vec(any::<u16>(), 0..64), prop::collection::vec(any::<u8>(), 0..512))
            .prop_map(|(items, blob)| Shape::Many { items, blob }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn messages_round_trip_over_a_session(values in prop::collection::vec(shape(), 1..50)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let got = runtime.block_on(async {
            let (a, b) = tokio::io::duplex(1 << 16);
            let limits = libchan::Limits::default();
            let (left, right) = tokio::join!(
                libchan::Session::over(a, true, limits.clone(), "a".into()),
                libchan::Session::over(b, false, limits, "b".into()),
            );
            let (left, right) = (left.unwrap(), right.unwrap());
            let tx = left.open::<Shape>().await.unwrap();
            for v in &values {
                tx.send(v.clone()).await.unwrap();
            }
            tx.close().await;
            let mut rx = right.accept::<Shape>().await.unwrap();
            let mut got = Vec::new();
            while let Some(v) = rx.recv().await.unwrap() {
                got.push(v);
            }
            got
        });
        prop_assert_eq!(got, values);
    }
}
