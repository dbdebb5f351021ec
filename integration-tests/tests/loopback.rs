//! Real node processes over loopback: A routes to B (QUIC) and C (TLS).

use std::time::{Duration, Instant};

use backends::service::{Client, Message, Tasks, Verb};
use integration_tests::{client, Node, Swarm, LIMIT};

const BIN: &str = env!("CARGO_BIN_EXE_node-under-test");
/// How long a request may take to fail once its node is gone.
const FAST: Duration = Duration::from_secs(10);

fn serving(swarm: &Swarm, name: &str, listen: &str, names: &str) -> Node {
    swarm.node(name).with_certs().args([listen.to_owned(), format!("simulator {names}")]).start()
}

fn router(swarm: &Swarm, remotes: &[String]) -> Node {
    let socket = swarm.path("a.sock");
    let children: Vec<String> = remotes.iter().map(|remote| format!("\"{remote}\"")).collect();
    swarm
        .node("node-a")
        .with_certs()
        .args([
            format!("listen unix://{}", socket.display()),
            format!("aggregate {}", children.join(" ")),
        ])
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_over_quic_and_tls_survive_losing_a_node() {
    let swarm = Swarm::new(BIN);
    let mut b = serving(&swarm, "node-b", "listen quic://127.0.0.1:0", "b1 b2");
    let c = serving(&swarm, "node-c", "listen tls://127.0.0.1:0", "c1");
    let b_url = b.url().to_owned();
    let a = router(
        &swarm,
        &[format!("remote {b_url} --node node-b"), format!("remote {} --node node-c", c.url())],
    );
    let tasks = Tasks::new();
    let host = client(a.url(), LIMIT, &tasks).await;

    assert_eq!(host.ls().await.unwrap(), ["b1", "b2", "c1"]);
    let c1 = host.attach("c1").await.unwrap().object;
    c1.start().await.unwrap();
    assert!(c1.get().await.unwrap().contains("\"Running\":true"));

    // B dies: its requests fail fast, naming it; C's go on.
    b.kill();
    let started = Instant::now();
    let error = host.attach("b1").await.unwrap_err().to_string();
    assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
    assert!(error.contains("remote node-b: "), "{error}");
    // The listing goes on with what answers (the aggregate leaves B out, with a warning).
    assert_eq!(host.ls().await.unwrap(), ["c1"]);
    assert!(c1.get().await.unwrap().contains("\"Running\":true"));
    assert!(host.attach("c1").await.is_ok());

    // B comes back on its address: A recovers without a restart.
    let _b = serving(&swarm, "node-b", &format!("listen {b_url}"), "b3");
    let deadline = Instant::now() + LIMIT;
    let names = loop {
        match host.ls().await {
            Ok(names) if names.iter().any(|name| name == "b3") => break names,
            other => {
                assert!(Instant::now() < deadline, "A never recovered: {other:?}\n{}", a.log());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(names, ["b3", "c1"]);
    assert!(a.log().contains("connection lost"), "{}", a.log());
    assert!(tasks.shutdown(LIMIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_and_logged() {
    let swarm = Swarm::new(BIN);
    let b = serving(&swarm, "node-b", "listen quic://127.0.0.1:0 --allow node-a", "b1");
    let tls_b = serving(&swarm, "node-d", "listen tls://127.0.0.1:0 --allow node-a", "d1");

    // node-c has a certificate from the swarm CA but is not on the allow list.
    let socket = swarm.path("c.sock");
    let c = swarm
        .node("node-c")
        .with_certs()
        .args([
            format!("listen unix://{}", socket.display()),
            format!(
                "aggregate \"remote {} --node node-b\" \"remote {} --node node-d\"",
                b.url(),
                tls_b.url()
            ),
        ])
        .start();
    let tasks = Tasks::new();
    let host = client(c.url(), LIMIT, &tasks).await;
    let error = host.ls().await.unwrap_err().to_string();
    assert!(error.contains("remote node-b: "), "{error}");
    let log = b.wait_log("peer refused");
    assert!(log.contains("node-c") && log.contains("not on the allow list"), "{log}");
    let log = tls_b.wait_log("peer refused");
    assert!(log.contains("node-c") && log.contains("not on the allow list"), "{log}");

    // node-a is allowed, but its certificate comes from another CA.
    let other = Swarm::new(BIN);
    let socket = other.path("a.sock");
    let a = other
        .node("node-a")
        .with_certs()
        .args([
            format!("listen unix://{}", socket.display()),
            format!("remote {} --node node-b", b.url()),
        ])
        .start();
    let host = client(a.url(), LIMIT, &tasks).await;
    let error = host.ls().await.unwrap_err().to_string();
    assert!(error.contains("remote node-b: not connected: "), "{error}");
    let log = b.wait_log("handshake failed");
    assert!(log.contains("UnknownIssuer") || log.contains("certificate"), "{log}");
    assert!(tasks.shutdown(LIMIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_graceful_and_exits_zero() {
    let swarm = Swarm::new(BIN);
    let mut b = serving(&swarm, "node-b", "listen tls://127.0.0.1:0", "b1");
    let socket = swarm.path("a.sock");
    let config = swarm.path("a.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"node-a\"\ncerts = \"certs\"\nmetrics = \"127.0.0.1:0\"\nshutdown_timeout = 5\npipeline = [\"listen unix://{}\", \"remote {} --node node-b\"]\n",
            socket.display(),
            b.url()
        ),
    )
    .unwrap();
    swarm.issue("node-a");
    let mut a =
        swarm.node("node-a").args(["--config".to_owned(), config.display().to_string()]).start();
    let tasks = Tasks::new();
    let host = client(a.url(), LIMIT, &tasks).await;
    assert_eq!(host.ls().await.unwrap(), ["b1"]);
    // A counts a request once it has passed the answer on, which may be after the client has
    // it: scrape until the count shows, within the bound.
    let deadline = Instant::now() + LIMIT;
    let page = loop {
        let page = a.scrape();
        if page.contains("swarm_request_duration_seconds_count 1") || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    for line in ["swarm_sessions_open 2", "swarm_request_duration_seconds_count 1"] {
        assert!(page.contains(line), "{line} missing from {page}");
    }
    assert!(page.contains("swarm_messages_total{stage=\"remote tls://"), "{page}");
    // The Ls and its answer crossed A's session to B, and the client's session to A.
    for (stage, direction) in
        [("remote tls://", "sent"), ("remote tls://", "received"), ("listen unix://", "received")]
    {
        let bytes = page
            .lines()
            .find(|line| {
                line.starts_with(&format!("swarm_bytes_total{{stage=\"{stage}"))
                    && line.contains(&format!("direction=\"{direction}\""))
            })
            .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {stage} {direction} bytes in {page}"));
        assert!(bytes > 0, "{stage} {direction}: {bytes}\n{page}");
    }

    let status = b.terminate();
    assert_eq!(status.code(), Some(0), "{}", b.log());
    let log = b.log();
    assert!(log.contains("session closed for shutdown"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    let error = host.ls().await.unwrap_err().to_string();
    assert!(error.contains("remote node-b: "), "{error}");
    assert_eq!(a.terminate().code(), Some(0), "{}", a.log());
    assert!(tasks.shutdown(LIMIT).await);
}

/// SIGTERM while a request is in flight: the node stops accepting, the request still gets its
/// answer, then the node closes its sessions and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_in_flight_finish() {
    let swarm = Swarm::new(BIN);
    let marker = swarm.path("got-term");
    // The process takes a second to stop: a Stop sent to it is in flight that long.
    let script = format!(
        "trap 'touch {}; sleep 1; exit 0' TERM; while :; do sleep 0.05; done",
        marker.display()
    );
    let mut b = swarm
        .node("node-b")
        .with_certs()
        .args(["listen tls://127.0.0.1:0".to_owned(), format!("exec /bin/sh -c \"{script}\"")])
        .start();
    // Straight over a session, as a library user would: a `remote` stage answers Start and
    // Stop itself (they are its own lifecycle), so it could not carry them to the far stage.
    let node = swarm.identity("test-client");
    let tls = node.tls_for(b.url()).unwrap().with_server_name("node-b".to_owned());
    let session = libchan::connect_secure(b.url(), node.limits.clone(), &tls).await.unwrap();
    let channel = session.open::<Message>().await.unwrap();
    let process = Client::new(channel).named("node-b").with_timeout(LIMIT);
    let stopping = tokio::spawn(async move { process.stop().await });
    let deadline = Instant::now() + LIMIT;
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the Stop never reached the process:\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let terminated = tokio::task::spawn_blocking(move || {
        let status = b.terminate();
        (status, b.log())
    });
    let answer = tokio::time::timeout(LIMIT, stopping).await.unwrap().unwrap();
    let (status, log) = terminated.await.unwrap();
    assert!(answer.is_ok(), "the request in flight failed: {answer:?}\n{log}");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("session closed for shutdown"), "{log}");
    tokio::time::timeout(LIMIT, session.closed()).await.unwrap();
}

/// A request's id shows in the log of every node it crosses, whether the asker chose it or the
/// first network stage gave it one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_followed_across_nodes_by_its_id() {
    let swarm = Swarm::new(BIN);
    let debug = "info,backends=debug";
    let b = swarm
        .node("node-b")
        .with_certs()
        .log_filter(debug)
        .args(["listen quic://127.0.0.1:0", "simulator b1"])
        .start();
    let socket = swarm.path("a.sock");
    let a = swarm
        .node("node-a")
        .with_certs()
        .log_filter(debug)
        .args([
            format!("listen unix://{}", socket.display()),
            format!("remote {} --node node-b", b.url()),
        ])
        .start();
    let tasks = Tasks::new();
    let host = client(a.url(), LIMIT, &tasks).await;

    // Chosen by the asker: kept by A and by B.
    let request = Message::new(Verb::Attach).with_args(["b1"]).with_id("trace-7e1f:attach");
    let mut answers = host.request(request).await.unwrap();
    let answer = tokio::time::timeout(LIMIT, answers.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(answer.verb, Verb::Ack, "{answer:?}");
    for node in [&a, &b] {
        let log = node.wait_log("id=trace-7e1f:attach");
        let line = log.lines().find(|line| line.contains("id=trace-7e1f:attach")).unwrap();
        assert!(line.contains("verb=Attach"), "{line}");
    }

    // Not chosen (this client's own `remote` stage gives one): the same id at A and at B.
    let names = host.ls().await.unwrap();
    assert_eq!(names, ["b1"]);
    let log = b.wait_log("verb=Ls");
    let id = id_of(log.lines().find(|line| line.contains("verb=Ls")).unwrap());
    a.wait_log(&format!("id={id}"));
    assert!(tasks.shutdown(LIMIT).await);
}

/// The `id=` field of a log line.
fn id_of(line: &str) -> String {
    let at = line.find("id=").unwrap_or_else(|| panic!("no id in {line}")) + 3;
    line[at..].split(|c: char| c.is_whitespace() || c == '}').next().unwrap().to_owned()
}

#[test]
fn unknown_config_keys_are_refused() {
    let swarm = Swarm::new(BIN);
    let config = swarm.path("bad.toml");
    std::fs::write(&config, "name = \"x\"\nlisten_on = \"quic://x:1\"\n").unwrap();
    let out = std::process::Command::new(BIN).arg("--config").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("unknown field `listen_on`"), "{error}");
}
