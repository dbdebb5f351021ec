//! Faults with real node processes: `kill -9` of a node in the middle of a byte stream and of
//! a request, a network cut between namespaces and its repair, and nothing lost through a
//! routing node under packet loss.
//!
//! The chain is always a client, then node A (`listen unix://...` + `remote B`), then node B
//! (`listen` + `exec PROGRAM`): `Attach("stdout")` reaches the process's output as a byte
//! stream through A, `Watch` is a request whose second answer (the exit) is still pending,
//! and `Get` is a plain request.
//!
//! The tests in namespaces need root, `ip` and `iptables`: skipped by hand without them,
//! required under `SWARM_REQUIRE_REAL=1`.

use std::time::{Duration, Instant};

use backends::service::{Client, Tasks, Verb};
use integration_tests::{can_make_hosts, client, require_real, Hosts, Node, Swarm, LIMIT};
use libchan::{ByteStream, Receiver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_node-under-test");
/// A process whose output never ends: about 400 kB/s in lines of 4 kB (output with no
/// attachment is logged by the node, line by line, so not faster).
const TALKER: &str =
    "exec /bin/sh -c \"while :; do head -c 4096 /dev/zero | tr '\\\\0' x; echo; sleep 0.01; done\"";
/// A process that writes back what it reads, and exits at the end of its input.
const ECHO: &str = "exec /bin/cat";
/// Nodes declare a silent session dead after 5 s (`backends::service::node_limits`).
const IDLE: Duration = Duration::from_secs(5);
/// Slack on top of a bound, for a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(10);
/// The first-answer bound of A's `remote` stage.
const REMOTE_TIMEOUT: &str = "10";
const B_PORT: u16 = 7300;
/// Lines of 9 bytes echoed: 180 kB, under a yamux stream window (256 KiB; see
/// `more_than_a_window_through_a_node` for more).
const ECHO_LINES: usize = 20_000;

fn serve_b(swarm: &Swarm, listen: &str, program: &str) -> Node {
    swarm.node("node-b").with_certs().args([listen.to_owned(), program.to_owned()]).start()
}

fn route_to(swarm: &Swarm, b_url: &str) -> Node {
    let socket = swarm.path("a.sock");
    swarm
        .node("node-a")
        .with_certs()
        .args([
            format!("listen unix://{}", socket.display()),
            format!("remote {b_url} --node node-b --timeout {REMOTE_TIMEOUT}"),
        ])
        .start()
}

/// How a byte stream ended, and when.
#[derive(Debug)]
enum End {
    /// A clean end of stream (FIN).
    Eof,
    Error(#[allow(dead_code)] String),
    /// Nothing within [`LIMIT`].
    Hang,
}

/// Reads `stream` until it ends; returns how, and the bytes read.
async fn read_to_end(stream: &mut ByteStream) -> (End, usize) {
    let mut buf = vec![0; 16 * 1024];
    let mut total = 0;
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) => return (End::Eof, total),
            Ok(Ok(n)) => total += n,
            Ok(Err(error)) => return (End::Error(error.to_string()), total),
            Err(_) => return (End::Hang, total),
        }
    }
}

/// Reads at least `bytes` from `stream`, within [`LIMIT`].
async fn read_some(stream: &mut ByteStream, bytes: usize) {
    let mut buf = vec![0; 16 * 1024];
    let mut total = 0;
    while total < bytes {
        let read = tokio::time::timeout(LIMIT, stream.read(&mut buf)).await;
        let n = read.expect("output within the limit").expect("output");
        assert_ne!(n, 0, "the output ended after {total} bytes");
        total += n;
    }
}

/// The next event of a `Watch`, within [`LIMIT`]: `Some(text)` for an `Error(text)`, `None`
/// for a clean end of the channel.
async fn next_event(events: &mut Receiver<backends::service::Message>) -> Option<String> {
    let event = tokio::time::timeout(LIMIT, events.recv()).await.expect("an event in time");
    match event {
        Ok(Some(message)) if message.verb == Verb::Error => Some(message.args.join(" ")),
        Ok(Some(message)) => panic!("unexpected event {message:?}"),
        Ok(None) => None,
        Err(error) => Some(format!("receive error: {error}")),
    }
}

/// Retries `Attach("stdout")` through A until a byte stream with output comes back.
async fn attach_again(host: &Client, a: &Node) -> ByteStream {
    let deadline = Instant::now() + LIMIT;
    loop {
        match host.attach("stdout").await {
            Ok(attached) => {
                let mut stdout = attached.att.expect("Attach(stdout) carries a byte stream");
                read_some(&mut stdout, 1000).await;
                return stdout;
            }
            Err(error) => {
                assert!(Instant::now() < deadline, "A never recovered: {error}\n{}", a.log());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What the upstream side saw when B died in the middle of a stream and a request.
struct Seen {
    stream: End,
    stream_after: Duration,
    watch: Option<String>,
    watch_after: Duration,
}

/// B (on `scheme`) runs [`TALKER`]; the client reads its output through A and waits on a
/// `Watch`; B is killed with SIGKILL; what the client saw is returned after checking that
/// everything ended within the bound, that plain requests fail naming B, and that the same A
/// reaches B again once it is back on its address.
async fn kill_mid_stream(scheme: &str) -> Seen {
    let swarm = Swarm::new(BIN);
    let mut b = serve_b(&swarm, &format!("listen {scheme}://127.0.0.1:0"), TALKER);
    let b_url = b.url().to_owned();
    let a = route_to(&swarm, &b_url);
    let tasks = Tasks::new();
    let host = client(a.url(), LIMIT, &tasks).await;
    let mut stdout = host.attach("stdout").await.unwrap().att.expect("a byte stream");
    read_some(&mut stdout, 100_000).await;
    let mut watch = host.watch().await.unwrap();

    b.kill();
    let killed = Instant::now();
    let reader = tokio::spawn(async move {
        let (end, _) = read_to_end(&mut stdout).await;
        (end, killed.elapsed())
    });
    let watched = next_event(&mut watch).await;
    let watch_after = killed.elapsed();
    let (stream, stream_after) = reader.await.unwrap();
    let bound = IDLE + SLACK;
    assert!(!matches!(stream, End::Hang), "the stream hung after B died");
    assert!(stream_after < bound, "the stream ended {stream_after:?} after B died");
    assert!(watch_after < bound, "the Watch ended {watch_after:?} after B died");
    // A plain request after the loss fails at once, naming B.
    let started = Instant::now();
    let error = host.get().await.unwrap_err().to_string();
    assert!(error.contains("remote node-b: "), "{error}");
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());

    // B is back on the same address: the same A reaches it, and a new stream flows.
    let _b = serve_b(&swarm, &format!("listen {b_url}"), TALKER);
    let _stdout = attach_again(&host, &a).await;
    assert!(a.log().contains("connection lost"), "{}", a.log());
    assert!(tasks.shutdown(LIMIT).await);
    Seen { stream, stream_after, watch: watched, watch_after }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_and_mid_request_over_quic() {
    let seen = kill_mid_stream("quic").await;
    // QUIC hears nothing from a killed peer: the idle bound finds it (libchan's heartbeat
    // monitor or QUIC's own idle timer, both at 5 s: the reason names whichever came first).
    let error = seen.watch.expect("the pending Watch ends with an error, not cleanly");
    assert!(error.starts_with("remote node-b: connection lost: "), "{error}");
    assert!(seen.watch_after > IDLE / 2, "lost after {:?}, before any heartbeat", seen.watch_after);
    // A's relay resets the client's stream when B's side of it is lost.
    assert!(matches!(seen.stream, End::Error(_)), "a cut stream ended cleanly: {:?}", seen.stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_and_mid_request_over_tls() {
    let seen = kill_mid_stream("tls").await;
    // The kernel resets a killed process's TCP connections: the loss is known at once.
    assert!(seen.watch_after < SLACK, "the Watch ended {:?} after the kill", seen.watch_after);
    let error = seen.watch.expect("the pending Watch ends with an error, not cleanly");
    assert!(error.starts_with("remote node-b: connection lost: "), "{error}");
    // On yamux too a stream cut by the loss of its connection is an error, and A's relay
    // passes it on as a reset, not as the clean end a finished process gives.
    assert!(matches!(seen.stream, End::Error(_)), "a cut stream ended cleanly: {:?}", seen.stream);
    assert!(seen.stream_after < SLACK, "the stream ended {:?} after the kill", seen.stream_after);
}

/// Writes `lines` numbered lines into `stream` while reading them back; shuts the write side
/// down (a clean close); checks that every line came back, in order, then the end of stream.
///
/// With `settle`, the first line is written before the stream is split into a reader and a
/// writer in two tasks: a libchan byte stream whose network stream has not arrived yet wakes
/// only the last of its two halves when it does (see `a_byte_stream_split_at_once_wakes_its_reader`).
async fn echo_in_order(mut stream: ByteStream, lines: usize, settle: bool) {
    let mut first = 0;
    if settle {
        tokio::time::timeout(LIMIT, stream.write_all(b"00000000\n")).await.unwrap().unwrap();
        first = 1;
    }
    let (mut read, mut write) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        let mut batch = String::new();
        for n in first..lines {
            batch.push_str(&format!("{n:08}\n"));
            if batch.len() > 8 * 1024 {
                write.write_all(batch.as_bytes()).await.expect("write");
                batch.clear();
            }
        }
        write.write_all(batch.as_bytes()).await.expect("write");
        write.shutdown().await.expect("clean close");
    });
    let mut echoed = Vec::with_capacity(lines * 9);
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut buf = vec![0; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => echoed.extend_from_slice(&buf[..n]),
            Ok(Err(error)) => panic!("the echo failed after {} bytes: {error}", echoed.len()),
            Err(_) => panic!(
                "the echo stalled: {} of {} bytes back within {LIMIT:?}, the writer {}",
                echoed.len(),
                lines * 9,
                if writer.is_finished() { "done" } else { "still writing" }
            ),
        }
    }
    tokio::time::timeout(LIMIT, writer).await.expect("writer in time").expect("writer");
    let text = String::from_utf8(echoed).expect("text");
    let mut count = 0;
    for (n, line) in text.lines().enumerate() {
        assert_eq!(line, format!("{n:08}"), "line {n} of {lines}");
        count += 1;
    }
    assert_eq!(count, lines, "lines delivered");
}

/// Many requests at once through A: every one gets its answer.
async fn every_request_answered(host: &Client, requests: usize) {
    let gets = (0..requests).map(|_| host.get());
    let answers = futures::future::join_all(gets).await;
    for (n, answer) in answers.into_iter().enumerate() {
        let state = answer.unwrap_or_else(|error| panic!("request {n}: {error}"));
        assert!(state.contains("\"Path\":\"/bin/cat\""), "request {n}: {state}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_through_a_node() {
    let swarm = Swarm::new(BIN);
    let b = serve_b(&swarm, "listen quic://127.0.0.1:0", ECHO);
    let a = route_to(&swarm, b.url());
    let tasks = Tasks::new();
    let host = client(a.url(), Duration::from_secs(20), &tasks).await;
    every_request_answered(&host, 200).await;
    let stdio = host.attach("").await.unwrap().att.expect("a byte stream");
    echo_in_order(stdio, ECHO_LINES, true).await;
    assert!(tasks.shutdown(LIMIT).await);
}

/// A byte stream read and written from two tasks (`tokio::io::split`) as soon as it arrives.
/// While its network stream has not arrived (the message came first), both halves wait for
/// it; both must be woken when it comes (a `oneshot` alone keeps only the last waker, which
/// stalled the reader in about one run in five).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_stream_split_at_once_wakes_its_reader() {
    for _ in 0..10 {
        let swarm = Swarm::new(BIN);
        let b = serve_b(&swarm, "listen quic://127.0.0.1:0", ECHO);
        let a = route_to(&swarm, b.url());
        let tasks = Tasks::new();
        let host = client(a.url(), LIMIT, &tasks).await;
        let stdio = host.attach("").await.unwrap().att.expect("a byte stream");
        let started = Instant::now();
        echo_in_order(stdio, ECHO_LINES, false).await;
        assert!(started.elapsed() < SLACK, "the echo took {:?}", started.elapsed());
        assert!(tasks.shutdown(LIMIT).await);
    }
}

/// A settled byte stream through A that carries more than a yamux window (256 KiB) each way,
/// read and written from two tasks. The client's end is a yamux stream: its reader's window
/// updates used to take the waiting writer's wake-up (one waker slot per yamux stream), and
/// about one run in six stalled, the writer still writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_a_window_through_a_node() {
    for _ in 0..5 {
        let swarm = Swarm::new(BIN);
        let b = serve_b(&swarm, "listen quic://127.0.0.1:0", ECHO);
        let a = route_to(&swarm, b.url());
        let tasks = Tasks::new();
        let host = client(a.url(), LIMIT, &tasks).await;
        let stdio = host.attach("").await.unwrap().att.expect("a byte stream");
        echo_in_order(stdio, 50_000, true).await;
        assert!(tasks.shutdown(LIMIT).await);
    }
}

/// A in one namespace routes to B in another over QUIC; B runs `program`.
struct Two {
    a: Node,
    _b: Node,
    hosts: Hosts,
    _swarm: Swarm,
}

impl Two {
    fn start(program: &str) -> Self {
        let swarm = Swarm::new(BIN);
        let hosts = Hosts::new();
        let b = swarm
            .node("node-b")
            .with_certs()
            .in_netns(&hosts.b)
            .args([format!("listen quic://0.0.0.0:{B_PORT}"), program.to_owned()])
            .start();
        let socket = swarm.path("a.sock");
        let a = swarm
            .node("node-a")
            .with_certs()
            .in_netns(&hosts.a)
            .args([
                format!("listen unix://{}", socket.display()),
                format!(
                    "remote quic://{}:{B_PORT} --node node-b --timeout {REMOTE_TIMEOUT}",
                    hosts.b_addr
                ),
            ])
            .start();
        Self { a, _b: b, hosts, _swarm: swarm }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_cut_is_detected_and_the_session_comes_back() {
    if !require_real("root, ip and iptables", can_make_hosts(true)) {
        return;
    }
    let mut two = Two::start(TALKER);
    let tasks = Tasks::new();
    let host = client(two.a.url(), LIMIT, &tasks).await;
    let mut stdout = host.attach("stdout").await.unwrap().att.expect("a byte stream");
    read_some(&mut stdout, 100_000).await;
    let mut watch = host.watch().await.unwrap();

    two.hosts.cut_b();
    let cut = Instant::now();
    let reader = tokio::spawn(async move {
        let (end, _) = read_to_end(&mut stdout).await;
        (end, cut.elapsed())
    });
    // The heartbeats stop: the session is declared dead within the idle bound.
    let error = next_event(&mut watch).await.expect("the Watch ends with an error");
    let detected = cut.elapsed();
    assert!(error.starts_with("remote node-b: connection lost: "), "{error}");
    assert!(detected < IDLE + SLACK, "detected after {detected:?}");
    assert!(detected > IDLE / 2, "detected after {detected:?}, before any heartbeat was due");
    let (end, ended) = reader.await.unwrap();
    assert!(!matches!(end, End::Hang), "the stream hung after the cut");
    assert!(ended < IDLE + SLACK, "the stream ended {ended:?} after the cut");
    // While cut, requests fail clearly and boundedly.
    for _ in 0..3 {
        let started = Instant::now();
        let error = host.get().await.unwrap_err().to_string();
        assert!(error.contains("remote node-b: not connected: "), "{error}");
        assert!(started.elapsed() < SLACK, "took {:?}", started.elapsed());
    }

    // Mended: the same A (never restarted) dials B again, and streams flow.
    two.hosts.mend_b();
    let _stdout = attach_again(&host, &two.a).await;
    assert!(two.a.is_running());
    let log = two.a.log();
    assert_eq!(log.matches("connected url=").count(), 2, "{log}");
    assert!(tasks.shutdown(LIMIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_with_one_percent_packet_loss() {
    if !require_real("root, ip and iptables", can_make_hosts(true)) {
        return;
    }
    let two = Two::start(ECHO);
    two.hosts.lose_on_b(1.0);
    let tasks = Tasks::new();
    let host = client(two.a.url(), LIMIT, &tasks).await;
    every_request_answered(&host, 200).await;
    let stdio = host.attach("").await.unwrap().att.expect("a byte stream");
    echo_in_order(stdio, ECHO_LINES, true).await;
    every_request_answered(&host, 50).await;
    assert!(tasks.shutdown(LIMIT).await);
}
