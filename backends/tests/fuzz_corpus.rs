//! Replays the committed fuzz corpus (`fuzz/corpus/{message,spec,docker_request}`) through
//! the functions the fuzz targets call (`backends::fuzz_support`), so `cargo test` runs every
//! seed and every input the fuzzer found. How the corpus is made and run: `docs/fuzzing.md`.

use backends::fuzz_support;
use backends::service::{SpecError, Verb};
use libchan::fuzz_support::corpus;

#[test]
fn message_corpus_replays_as_swarm_messages() {
    for (name, data) in corpus("message") {
        let report = fuzz_support::message(&data);
        let Some(message) = report.message else { continue };
        match name.as_str() {
            "swarm-attach-with-ret" => {
                assert_eq!(message.unwrap(), (Verb::Attach, 1, true, false));
                assert_eq!(report.value.unwrap(), Ok(1));
            }
            "swarm-file-with-att" => assert_eq!(message.unwrap(), (Verb::File, 1, false, true)),
            "swarm-spawn-no-ret" => assert_eq!(message.unwrap(), (Verb::Spawn, 1, false, false)),
            "swarm-unknown-verb" => {
                assert_eq!(message.unwrap(), (Verb::Other("Frobnicate".into()), 0, false, false))
            }
            // A receiver reference where the message has a sender: refused, not mistaken.
            "swarm-ack-ret-receiver-tag" => assert!(message.is_err(), "{name}"),
            "dialer-receives-even-ref" => assert_eq!(message.unwrap(), (Verb::Ack, 0, true, false)),
            // Four billion arguments announced, one there: an error, not an allocation.
            "huge-declared-args" => assert!(message.is_err(), "{name}"),
            "13.4-greeting-struct" => {
                assert!(message.unwrap_err().contains("verb"), "a message needs a verb")
            }
            _ => {}
        }
    }
}

#[test]
fn spec_corpus_replays() {
    for (name, data) in corpus("spec") {
        let report = fuzz_support::spec(&data);
        match name.as_str() {
            "readme-three-stages" => {
                assert_eq!(report.pipeline.unwrap(), ["dockerserver", "debug", "dockerclient"])
            }
            "aggregate-nested" => {
                assert_eq!(report.words.unwrap()[1], "dockerclient tcp://a:2375");
                assert_eq!(report.nested, 2);
            }
            "double-nested-escapes" => {
                assert_eq!(report.words.unwrap()[1], r#"exec /bin/sh -c 'echo "a b"'"#);
                // exec ..., then its `echo "a b"`, then that one's `a b`.
                assert_eq!(report.nested, 3);
            }
            "unterminated-single" => assert_eq!(
                report.words.unwrap_err(),
                SpecError::Unterminated { quote: '\'', column: 6 }
            ),
            "trailing-backslash" => {
                assert_eq!(report.words.unwrap_err(), SpecError::TrailingBackslash { column: 3 })
            }
            "empty-stage-line" => assert!(report.pipeline.unwrap_err().starts_with("stage 2")),
            "unicode-columns" => assert_eq!(
                report.words.unwrap_err(),
                SpecError::Unterminated { quote: '\'', column: 3 }
            ),
            _ => {}
        }
    }
}

#[test]
fn docker_request_corpus_replays() {
    for (name, data) in corpus("docker_request") {
        let report = fuzz_support::docker_request(&data);
        let routed = |prefix: &str| match &report {
            Some(Ok(endpoint)) => assert!(endpoint.starts_with(prefix), "{name}: {endpoint}"),
            other => panic!("{name}: {other:?}"),
        };
        let refused = |status: u16, needle: &str| match &report {
            Some(Err((got, text))) => {
                assert_eq!(*got, status, "{name}: {text}");
                assert!(text.contains(needle), "{name}: {text}");
            }
            other => panic!("{name}: {other:?}"),
        };
        match name.as_str() {
            "ping" => routed("Ping { with_body: true }"),
            "head-ping" => routed("Ping { with_body: false }"),
            "ps-all-filters-name" => routed("List(Listing { filters: Filters { terms: [(\"name\""),
            "ps-filters-list-form" => routed("List"),
            "ps-filters-bad-key" => refused(400, "invalid filter 'color'"),
            "ps-filters-bad-json" => refused(400, "invalid filter"),
            "inspect-percent-id" => routed(r#"Container { id: "web-1", action: Inspect }"#),
            "remove-force" => routed(r#"Container { id: "web-1", action: Remove }"#),
            "exec-create" => routed(r#"Container { id: "web-1", action: Exec }"#),
            "exec-start-detach" => routed(r#"Exec { id: "4f3c", action: Some(Start) }"#),
            "exec-unknown-action" => routed(r#"Exec { id: "4f3c", action: None }"#),
            "image-inspect" => refused(404, "No such image: library/busybox"),
            "version-too-new" => refused(400, "client version 1.99 is too new"),
            "version-old-ok" => routed("Version"),
            "not-found" => refused(404, "page not found"),
            "absolute-form-target" => routed("List"),
            // `%+5` is no escape (a sign is not a hex digit); `+` stands for a space.
            "percent-sign-not-hex" => routed(r#"Container { id: "a+5% 5", action: Inspect }"#),
            _ => {}
        }
    }
}
