//! Entry points for the fuzz targets in `fuzz/` and for the tests that replay their corpus
//! (`backends/tests/fuzz_corpus.rs`). Not a stable API.
//!
//! Each function runs the parsing code a peer's or a client's bytes reach, then checks what a
//! user relies on, and panics when a check fails (that panic is what the fuzzer reports):
//!
//! - [`message`]: a MSG payload decoded as [`libchan::Value`] and as the libswarm
//!   [`Message`], through [`libchan::fuzz_support::message`] (the receiving channel's decoder,
//!   references claimed from a session's rendezvous table).
//! - [`spec`]: pipeline specs, one stage per line, and their nested stages; the words of a
//!   spec, quoted again, split back into the same words.
//! - [`docker_request`]: the Docker API router on `METHOD TARGET\nBODY` (version prefix,
//!   route, query options, `filters`, JSON bodies), as `dockerserver` runs it on a request.

use http::{Method, Uri};
use serde_json::json;

use crate::docker::api;
use crate::docker::server::{json_object, parse_request, ContainerAction, Endpoint, ExecAction};
use crate::service::{parse_pipeline, split_words, Message, SpecError, StageSpec, Verb};

/// What [`message`] decoded.
#[derive(Debug)]
pub struct MessageReport {
    /// As a [`libchan::Value`]: the number of handles, or the error text. `None` when the
    /// input is too short to be a case.
    pub value: Option<Result<usize, String>>,
    /// As a [`Message`]: verb, argument count, whether `ret` and `att` are set; or the error.
    pub message: Option<Result<(Verb, usize, bool, bool), String>>,
}

/// Decodes the case in `data` (see [`libchan::fuzz_support::MessageCase`]) as a
/// [`libchan::Value`] and as a [`Message`].
///
/// # Panics
/// When a check of [`libchan::fuzz_support::message`] fails, or a verb does not survive its
/// name.
pub fn message(data: &[u8]) -> MessageReport {
    let value = libchan::fuzz_support::message::<libchan::Value>(data)
        .map(|result| result.map(|value| value.handles.len()).map_err(|e| e.to_string()));
    let message = libchan::fuzz_support::message::<Message>(data).map(|result| {
        result
            .map(|message| {
                let name: Verb =
                    message.verb.as_str().parse().unwrap_or_else(|never| match never {});
                assert_eq!(name, message.verb, "a verb read back from its name");
                (message.verb, message.args.len(), message.ret.is_some(), message.att.is_some())
            })
            .map_err(|e| e.to_string())
    });
    MessageReport { value, message }
}

/// What [`spec`] parsed.
#[derive(Debug)]
pub struct SpecReport {
    /// The whole input as one stage's words, or the error.
    pub words: Result<Vec<String>, SpecError>,
    /// The lines as a pipeline: each stage's backend, or the error text.
    pub pipeline: Result<Vec<String>, String>,
    /// Stages found nested in arguments of more than one word (up to [`MAX_NESTING`] levels).
    pub nested: usize,
}

/// How deep [`spec`] looks for stages nested in arguments.
pub const MAX_NESTING: usize = 4;

/// Parses `data` (lossy UTF-8) as words, and its lines as a pipeline, nested stages included.
///
/// # Panics
/// When quoting the words again does not give them back, an error's column does not point
/// at its cause, or a pipeline error names a stage that is not there.
pub fn spec(data: &[u8]) -> SpecReport {
    let text = String::from_utf8_lossy(data);
    let words = split_words(&text);
    match &words {
        Ok(words) => {
            let quoted: Vec<String> = words.iter().map(|word| quote(word)).collect();
            let again = split_words(&quoted.join(" ")).expect("quoted words split");
            assert_eq!(&again, words, "words survive quoting");
        }
        Err(SpecError::Unterminated { quote, column }) => {
            assert_eq!(text.chars().nth(column - 1), Some(*quote), "column of the open quote");
        }
        Err(SpecError::TrailingBackslash { column }) => {
            assert_eq!(text.chars().count(), *column, "a trailing backslash is the last char");
            assert!(text.ends_with('\\'));
        }
        Err(SpecError::Empty) => unreachable!("split_words never says Empty"),
    }

    let lines: Vec<&str> = text.lines().take(MAX_STAGES).collect();
    let mut nested = 0;
    let pipeline = match parse_pipeline(&lines) {
        Ok(stages) => {
            for stage in &stages {
                assert_eq!(stage.to_string(), stage.text);
                nested += count_nested(stage, 1);
            }
            Ok(stages.into_iter().map(|stage| stage.backend).collect())
        }
        Err(error) => {
            assert!(error.stage <= lines.len(), "stage {} of {}", error.stage, lines.len());
            assert!(error.stage > 0 || lines.is_empty());
            Err(error.to_string())
        }
    };
    SpecReport { words, pipeline, nested }
}

/// Stages at most this many lines are read as, by [`spec`].
const MAX_STAGES: usize = 16;

fn count_nested(stage: &StageSpec, depth: usize) -> usize {
    if depth > MAX_NESTING {
        return 0;
    }
    let mut count = 0;
    // A nested stage is an argument of more than one word (`aggregate "simulator a" ...`).
    for arg in stage.args.iter().filter(|arg| arg.trim().contains(char::is_whitespace)) {
        if let Ok(inner) = StageSpec::parse(arg) {
            count += 1 + count_nested(&inner, depth + 1);
        }
    }
    count
}

/// A word quoted so that [`split_words`] gives it back: single quotes, with each `'` as `'\''`.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// What [`docker_request`] found: the endpoint (in `Debug` form) or the status and text of
/// the answer given at once. `None` when the input is not a method and a target.
pub type RequestReport = Option<Result<String, (u16, String)>>;

/// Parses `METHOD TARGET\nBODY` as `dockerserver` parses a request: the target as the URI
/// hyper hands over, then `dockerserver`'s `parse_request`; the body as JSON when the
/// endpoint takes one.
///
/// # Panics
/// When an early answer is not 400 or 404, decoded query options do not survive encoding, a
/// container id does not survive percent-encoding into a path, or a body error is not 400.
pub fn docker_request(data: &[u8]) -> RequestReport {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let (method, target) = head.split_once(' ')?;
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    // hyper parses the request target into a `Uri` this way before a service sees it.
    let uri = Uri::try_from(target).ok()?;
    let parsed = match parse_request(&method, &uri) {
        Ok(parsed) => parsed,
        Err(failure) => {
            let status = failure.status.as_u16();
            assert!(matches!(status, 400 | 404), "early answer {status}: {}", failure.text);
            assert!(!failure.text.is_empty());
            return Some(Err((status, failure.text)));
        }
    };

    let pairs = &parsed.options.0;
    let encoded = api::encode_query(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    assert_eq!(&api::query_pairs(&encoded), pairs, "query options survive encoding");

    let takes_body = match &parsed.endpoint {
        Endpoint::List(listing) => {
            // Every filter runs against a container that has every field they read.
            let _ = listing.filters.matches(&sample_inspect());
            false
        }
        Endpoint::Container { id, action } => {
            let path = format!("/v1.41/containers/{}/json", api::percent_encode(id));
            let again = parse_request(&Method::GET, &Uri::try_from(path).expect("encoded path"))
                .unwrap_or_else(|f| panic!("{id:?} encoded into a path: {}", f.text));
            match again.endpoint {
                Endpoint::Container { id: same, action: ContainerAction::Inspect } => {
                    assert_eq!(&same, id, "a container id survives percent-encoding");
                }
                other => panic!("{id:?} encoded into a path routes to {other:?}"),
            }
            *action == ContainerAction::Exec
        }
        Endpoint::Create => true,
        Endpoint::Exec { action, .. } => *action == Some(ExecAction::Start),
        _ => false,
    };
    if takes_body {
        match json_object(body) {
            Ok(config) => {
                assert!(config.is_object());
                let _detach = config["Detach"] == true;
            }
            Err(failure) => assert_eq!(failure.status.as_u16(), 400, "{}", failure.text),
        }
    }
    Some(Ok(format!("{:?}", parsed.endpoint)))
}

fn sample_inspect() -> serde_json::Value {
    json!({
        "Id": "4f3c2a1b",
        "Name": "/web-1",
        "Image": "sha256:busybox",
        "State": {"Status": "exited", "Running": false, "ExitCode": 3},
        "Config": {"Image": "busybox", "Labels": {"app": "web", "tier": ""}},
    })
}
