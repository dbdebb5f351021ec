//! Hostile HTTP against `dockerserver`: path traversal in names, hostile JSON, oversize and
//! malformed requests, unknown endpoints, clients that hold connections. Each gets a proper
//! status (and a JSON message where the request got as far as the API), and the server keeps
//! serving afterwards. The plain bad requests (unknown path, invalid JSON, a missing `Image`,
//! a body over the limit with `Content-Length`) are in `docker_simulator.rs`.

mod support;

use std::time::Duration;

use support::{Front, LIMIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP answer as read off the socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

/// Sends `request` on a new connection and reads the answer until the server closes it;
/// with `half_close`, shuts the write side down after the request.
async fn exchange(front: &Front, request: &[u8], half_close: bool) -> Answer {
    let mut stream = connect(front).await;
    // A server that refuses a request early may reset the connection before it read all of
    // it: the answer it wrote first is what counts.
    let _ = stream.write_all(request).await;
    if half_close {
        let _ = stream.shutdown().await;
    }
    let mut response = Vec::new();
    let read = tokio::time::timeout(LIMIT, stream.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "no answer within {LIMIT:?} to {}", preview(request));
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer to {}: {text:?}", preview(request)));
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Answer { status, body }
}

/// `METHOD PATH` with `body`, on a connection of its own.
async fn send(front: &Front, method: &str, path: &str, body: &[u8]) -> Answer {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    exchange(front, &request, false).await
}

async fn connect(front: &Front) -> TcpStream {
    let address = front.host.trim_start_matches("tcp://");
    tokio::time::timeout(LIMIT, TcpStream::connect(address)).await.unwrap().unwrap()
}

fn preview(request: &[u8]) -> String {
    String::from_utf8_lossy(&request[..request.len().min(80)]).into_owned()
}

/// Checks the answer's status and that its JSON message contains `message`.
#[track_caller]
fn check(answer: &Answer, status: u16, message: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    let json: serde_json::Value = serde_json::from_str(&answer.body)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {answer:?}"));
    let text = json["message"].as_str().unwrap_or_else(|| panic!("no message: {answer:?}"));
    assert!(text.contains(message), "{message:?} not in {answer:?}");
}

/// The server still answers `_ping` and lists exactly `names` (the abuse created nothing).
async fn still_serving(front: &Front, names: &[&str]) {
    let ping = send(front, "GET", "/_ping", b"").await;
    assert_eq!((ping.status, ping.body.as_str()), (200, "OK"), "{ping:?}");
    let listed = send(front, "GET", "/containers/json?all=1", b"").await;
    assert_eq!(listed.status, 200, "{listed:?}");
    let listed: serde_json::Value = serde_json::from_str(&listed.body).unwrap();
    let mut found: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["Names"][0].as_str().unwrap().trim_start_matches('/').to_owned())
        .collect();
    found.sort();
    assert_eq!(found, names);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_in_names_is_refused() {
    let front = Front::start(&["simulator web"]).await;
    // In the path: a name that is not there (decoded, never a file), or no such endpoint.
    let answer = send(&front, "GET", "/containers/..%2F..%2Fetc%2Fpasswd/json", b"").await;
    check(&answer, 404, "no such container: ../../etc/passwd");
    let answer = send(&front, "GET", "/containers/../../etc/passwd/json", b"").await;
    check(&answer, 404, "page not found");
    let answer = send(&front, "DELETE", "/containers/..%2Fweb?force=1", b"").await;
    check(&answer, 404, "no such container: ../web");
    // Broken percent-encoding and bytes that are not UTF-8.
    check(&send(&front, "GET", "/containers/%ZZ%/json", b"").await, 404, "no such container");
    check(&send(&front, "GET", "/containers/%C3/json", b"").await, 404, "no such container");
    // New names: refused with Docker's rule, whatever the separator or control byte.
    for name in ["../../etc", "a%2Fb", "%2Fetc%2Fpasswd", "%00x", "..", "x%0Ay", "-x", ".x"] {
        let answer =
            send(&front, "POST", &format!("/containers/create?name={name}"), br#"{"Image":"bb"}"#)
                .await;
        check(&answer, 400, "invalid container name");
        let answer =
            send(&front, "POST", &format!("/containers/web/rename?name={name}"), b"").await;
        check(&answer, 400, "invalid container name");
    }
    still_serving(&front, &["web"]).await;
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_json_bodies_get_400() {
    let front = Front::start(&["simulator web"]).await;
    let create = |body: Vec<u8>| {
        let front = &front;
        async move { send(front, "POST", "/containers/create", &body).await }
    };
    check(&create(br#"{"Image": 5}"#.to_vec()).await, 400, "Image is required");
    check(&create(b"\xff\xfe\x00{".to_vec()).await, 400, "invalid JSON");
    check(&create(br#"{"Image":"bb"} trailing"#.to_vec()).await, 400, "invalid JSON");
    check(&create(br#"["Image", "bb"]"#.to_vec()).await, 400, "invalid JSON: not an object");
    check(&create(b"null".to_vec()).await, 400, "invalid JSON: not an object");
    check(&create(br#"{"Image":"bb""#.to_vec()).await, 400, "invalid JSON");
    // Nesting far past serde_json's recursion limit: an error, not a stack overflow.
    let depth = 100_000;
    let deep = format!(r#"{{"Image":"bb","Labels":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
    check(&create(deep.into_bytes()).await, 400, "recursion limit exceeded");
    // Cmd and Entrypoint are a string, a list of strings or null, as dockerd decodes them;
    // another shape is its "cannot unmarshal" 400, and nothing is created.
    for (body, kind) in [
        (r#"{"Image":"bb","Cmd":{"sh":"-c"}}"#, "object"),
        (r#"{"Image":"bb","Cmd":["sh", 5]}"#, "array"),
        (r#"{"Image":"bb","Cmd":true}"#, "bool"),
        (r#"{"Image":"bb","Entrypoint":7}"#, "number"),
    ] {
        let answer = create(body.as_bytes().to_vec()).await;
        check(&answer, 400, &format!("cannot unmarshal {kind} into Go struct field"));
    }
    for (name, cmd) in
        [("listed", r#"["sh", "-c", "true"]"#), ("word", r#""sh""#), ("none", "null")]
    {
        let body = format!(r#"{{"Image":"bb","Cmd":{cmd},"Entrypoint":{cmd}}}"#);
        let answer =
            send(&front, "POST", &format!("/containers/create?name={name}"), body.as_bytes()).await;
        assert_eq!(answer.status, 201, "Cmd {cmd}: {answer:?}");
    }
    let answer = send(&front, "POST", "/containers/web/exec", b"[]").await;
    check(&answer, 400, "invalid JSON: not an object");
    let answer = send(&front, "POST", "/containers/web/exec", b"{\"Cmd\":").await;
    check(&answer, 400, "invalid JSON");
    // Query parameters that are JSON are checked as well.
    let answer = send(&front, "GET", "/containers/json?filters=%5B%5B%5B", b"").await;
    check(&answer, 400, "invalid filter");
    let answer = send(&front, "GET", "/containers/json?filters=%7B%22name%22%3A5%7D", b"").await;
    check(&answer, 400, "invalid filter");
    still_serving(&front, &["listed", "none", "web", "word"]).await;
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_malformed_requests_get_4xx() {
    let front = Front::start(&["simulator web"]).await;
    // A chunked body (no Content-Length) over the 1 MiB limit: refused once it passes it.
    let mut chunked = b"POST /containers/create HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..40 {
        chunked.extend_from_slice(b"8000\r\n");
        chunked.extend_from_slice(&[b' '; 0x8000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    check(&exchange(&front, &chunked, false).await, 413, "request body");
    // Headers and URIs over hyper's limits.
    let header =
        format!("GET /_ping HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(600_000));
    assert_eq!(exchange(&front, header.as_bytes(), false).await.status, 431);
    let uri = format!("GET /containers/{}/json HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    assert_eq!(exchange(&front, uri.as_bytes(), false).await.status, 414);
    // Not HTTP, or ambiguous framing.
    assert_eq!(exchange(&front, b"GARBAGE\r\n\r\n", false).await.status, 400);
    assert_eq!(
        exchange(&front, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", true).await.status,
        400
    );
    let twice = b"POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n{}";
    assert_eq!(exchange(&front, twice, false).await.status, 400);
    // A body shorter than announced, then the client stops sending: an error, not a wait.
    let short = b"POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"Ima";
    // It is a bad request (400), not one over the size limit (413).
    check(&exchange(&front, short, true).await, 400, "request body");
    still_serving(&front, &["web"]).await;
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoints_and_methods_get_404() {
    let front = Front::start(&["simulator web"]).await;
    for (method, path) in [
        ("BREW", "/_ping"),
        ("GET", "/v1.x/_ping"),
        ("GET", "/v99999999999.1/_ping"),
        ("GET", "/containers"),
        ("PUT", "/containers/web/json"),
        ("GET", "/containers/web/start"),
        ("POST", "/swarm/init"),
        ("GET", "/volumes"),
        ("GET", "//"),
        ("GET", "/exec"),
    ] {
        let answer = send(&front, method, path, b"").await;
        check(&answer, 404, "page not found");
    }
    check(&send(&front, "GET", "/images/../../x/json", b"").await, 404, "No such image");
    check(&send(&front, "GET", "/exec/nope/json", b"").await, 404, "No such exec instance: nope");
    let answer = send(&front, "POST", "/v1.99/containers/create", br#"{"Image":"bb"}"#).await;
    check(&answer, 400, "client version 1.99 is too new");
    let answer = send(&front, "POST", "/containers/web/attach", b"").await;
    check(&answer, 400, "Upgrade: tcp");
    still_serving(&front, &["web"]).await;
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stall_do_not_stop_the_others() {
    let front = Front::start(&["simulator web"]).await;
    // Connections that send half a request and wait, and others that send nothing.
    let mut stalled = Vec::new();
    for n in 0..100 {
        let mut stream = connect(&front).await;
        if n % 2 == 0 {
            stream
                .write_all(b"POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Le")
                .await
                .unwrap();
        }
        stalled.push(stream);
    }
    // Meanwhile, the docker CLI and plain requests are served.
    let ps = front.docker(&["ps", "-a", "--format", "{{.Names}}"]).await;
    assert_eq!(ps.ok(), "web\n");
    let created = send(&front, "POST", "/containers/create?name=made", br#"{"Image":"bb"}"#).await;
    assert_eq!(created.status, 201, "{created:?}");
    still_serving(&front, &["made", "web"]).await;
    drop(stalled);
    still_serving(&front, &["made", "web"]).await;
    front.shutdown().await;
}

/// `dockerserver` serves at most 512 connections at once; clients that connect and send
/// nothing are dropped after the head read timeout (10 s), so they cannot lock every other
/// client out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_lock_the_server_out() {
    let front = Front::start(&["simulator web"]).await;
    let mut silent = Vec::new();
    for _ in 0..MAX_CONNECTIONS + 8 {
        silent.push(connect(&front).await);
    }
    let mut stream = connect(&front).await;
    stream.write_all(b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(LIMIT + SLACK, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer while {} connections stay silent", silent.len());
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200 OK"));
    drop(silent);
    front.shutdown().await;
}

/// `dockerserver`'s bound on connections served at once.
const MAX_CONNECTIONS: usize = 512;
const SLACK: Duration = Duration::from_secs(15);
