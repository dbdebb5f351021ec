//! Three hosts as network namespaces joined by veth: A routes; B (QUIC) and C (TLS) serve.
//! Needs root, `ip` and `iptables`: skipped by hand without them, required under
//! `SWARM_REQUIRE_REAL=1`.

use std::time::{Duration, Instant};

use backends::service::{Client, Tasks};
use integration_tests::{can_make_hosts, client, require_real, Hosts, Node, Swarm, LIMIT};

const BIN: &str = env!("CARGO_BIN_EXE_node-under-test");
const B_PORT: u16 = 7300;
const C_PORT: u16 = 7301;

struct Three {
    // Fields drop in order: processes before their namespaces.
    a: Node,
    b: Option<Node>,
    _c: Node,
    hosts: Hosts,
    swarm: Swarm,
}

impl Three {
    fn start() -> Self {
        let swarm = Swarm::new(BIN);
        let hosts = Hosts::new();
        let b = serve_b(&swarm, &hosts, "b1 b2");
        let c = swarm
            .node("node-c")
            .with_certs()
            .in_netns(&hosts.c)
            .args([format!("listen tls://0.0.0.0:{C_PORT}"), "simulator c1".to_owned()])
            .start();
        let socket = swarm.path("a.sock");
        let a = swarm
            .node("node-a")
            .with_certs()
            .in_netns(&hosts.a)
            .args([
                format!("listen unix://{}", socket.display()),
                format!(
                    "aggregate \"remote quic://{}:{B_PORT} --node node-b\" \"remote tls://{}:{C_PORT} --node node-c\"",
                    hosts.b_addr, hosts.c_addr
                ),
            ])
            .start();
        Self { a, b: Some(b), _c: c, hosts, swarm }
    }
}

fn serve_b(swarm: &Swarm, hosts: &Hosts, names: &str) -> Node {
    swarm
        .node("node-b")
        .with_certs()
        .in_netns(&hosts.b)
        .args([format!("listen quic://0.0.0.0:{B_PORT}"), format!("simulator {names}")])
        .start()
}

/// Lists until the listing is `want`, within the limit.
async fn ls_until(host: &Client, a: &Node, want: &[&str]) {
    let deadline = Instant::now() + LIMIT;
    loop {
        match host.ls().await {
            Ok(names) if names == want => return,
            other => {
                assert!(Instant::now() < deadline, "never recovered: {other:?}\n{}", a.log());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_route_fail_over_and_recover() {
    if !require_real("root, ip (network namespaces)", can_make_hosts(false)) {
        return;
    }
    let mut three = Three::start();
    let tasks = Tasks::new();
    let host = client(three.a.url(), LIMIT, &tasks).await;
    assert_eq!(host.ls().await.unwrap(), ["b1", "b2", "c1"]);
    let b2 = host.attach("b2").await.unwrap().object;
    b2.start().await.unwrap();
    assert!(b2.get().await.unwrap().contains("\"Running\":true"));
    let c1 = host.attach("c1").await.unwrap().object;

    // B dies without a word (SIGKILL; its QUIC peer hears nothing more).
    if let Some(mut b) = three.b.take() {
        b.kill();
    }
    let started = Instant::now();
    let error = b2.get().await.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(error.contains("remote node-b: "), "{error}");
    let error = host.attach("b1").await.unwrap_err().to_string();
    assert!(error.contains("remote node-b: "), "{error}");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert!(c1.get().await.is_ok());
    assert_eq!(host.ls().await.unwrap(), ["c1"]);

    // B is back: A recovers on its own.
    three.b = Some(serve_b(&three.swarm, &three.hosts, "b3"));
    ls_until(&host, &three.a, &["b3", "c1"]).await;
    assert!(tasks.shutdown(LIMIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_across_hosts_are_refused() {
    if !require_real("root, ip (network namespaces)", can_make_hosts(false)) {
        return;
    }
    let swarm = Swarm::new(BIN);
    let hosts = Hosts::new();
    let b = swarm
        .node("node-b")
        .with_certs()
        .in_netns(&hosts.b)
        .args([format!("listen quic://0.0.0.0:{B_PORT} --allow node-a"), "simulator b1".to_owned()])
        .start();
    let dial = format!("remote quic://{}:{B_PORT} --node node-b", hosts.b_addr);
    let tasks = Tasks::new();
    // Not on the allow list.
    let socket = swarm.path("x.sock");
    let x = swarm
        .node("node-x")
        .with_certs()
        .in_netns(&hosts.a)
        .args([format!("listen unix://{}", socket.display()), dial.clone()])
        .start();
    let error = client(x.url(), LIMIT, &tasks).await.ls().await.unwrap_err().to_string();
    assert!(error.contains("remote node-b: "), "{error}");
    let log = b.wait_log("peer refused");
    assert!(log.contains("node-x") && log.contains("not on the allow list"), "{log}");
    // Another CA.
    let other = Swarm::new(BIN);
    let socket = other.path("a.sock");
    let a = other
        .node("node-a")
        .with_certs()
        .in_netns(&hosts.a)
        .args([format!("listen unix://{}", socket.display()), dial])
        .start();
    let error = client(a.url(), LIMIT, &tasks).await.ls().await.unwrap_err().to_string();
    assert!(error.contains("remote node-b: not connected: "), "{error}");
    b.wait_log("handshake failed");
    assert!(tasks.shutdown(LIMIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_percent_loss_on_b_loses_no_answer() {
    if !require_real("root, ip and iptables", can_make_hosts(true)) {
        return;
    }
    let three = Three::start();
    three.hosts.lose_on_b(1.0);
    let tasks = Tasks::new();
    let host = client(three.a.url(), LIMIT, &tasks).await;
    for round in 0..200 {
        let names =
            host.ls().await.unwrap_or_else(|e| panic!("round {round}: {e}\n{}", three.a.log()));
        assert_eq!(names, ["b1", "b2", "c1"], "round {round}");
        let b1 = host.attach("b1").await.unwrap_or_else(|e| panic!("round {round}: {e}"));
        let state = b1.object.get().await.unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(state.contains("\"Name\":\"/b1\""), "round {round}: {state}");
    }
    assert!(tasks.shutdown(LIMIT).await);
}
