//! The real docker CLI against `swarm-node` processes: the README's main job (a dockerserver in
//! front of a simulator), and a dockerserver node reaching a private dockerd through a remote
//! node over QUIC, compared with the CLI sent straight to the daemon.

#[path = "../../backends/tests/support/mod.rs"]
mod support;

use integration_tests::Swarm;
use support::docker;
use support::dockerd::Dockerd;

const BIN: &str = env!("CARGO_BIN_EXE_node-under-test");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_job_serves_the_docker_cli() {
    let swarm = Swarm::new(BIN);
    let node =
        swarm.node("main").args(["dockerserver tcp://127.0.0.1:0", "simulator web db"]).start();
    let host = node.url().to_owned();
    let ps: &[&str] = &["ps", "-a", "--format", "{{.Names}} {{.State}}"];
    assert_eq!(docker(&host, ps, None).await.ok(), "db created\nweb created\n");
    let run = docker(&host, &["run", "-d", "--name", "api", "bb", "sleep", "60"], None).await;
    assert_eq!(run.ok().trim().len(), 64, "{run:?}");
    let running: &[&str] = &["ps", "--format", "{{.Names}} {{.Image}} {{.State}}"];
    assert_eq!(docker(&host, running, None).await.ok(), "api bb running\n");
    assert_eq!(docker(&host, &["stop", "api"], None).await.ok(), "api\n");
    assert_eq!(docker(&host, &["rm", "api"], None).await.ok(), "api\n");
    let missing = docker(&host, &["inspect", "nosuch"], None).await;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("No such object: nosuch"), "{missing:?}");
    assert_eq!(docker(&host, ps, None).await.ok(), "db created\nweb created\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dockerserver_node_reaches_a_daemon_through_a_remote_node_over_quic() {
    let Some(daemon) = Dockerd::start().await else { return };
    let swarm = Swarm::new(BIN);
    let b = swarm
        .node("node-b")
        .with_certs()
        .args(["listen quic://127.0.0.1:0".to_owned(), format!("dockerclient {}", daemon.host)])
        .start();
    let a = swarm
        .node("node-a")
        .with_certs()
        .args([
            "dockerserver tcp://127.0.0.1:0".to_owned(),
            format!("remote {} --node node-b", b.url()),
        ])
        .start();
    let host = a.url().to_owned();

    let echo: &[&str] = &["run", "--rm", "--network", "none", "bb", "echo", "through two nodes"];
    let (through, direct) = (docker(&host, echo, None).await, daemon.docker(echo).await);
    assert_eq!(through.ok(), "through two nodes\n");
    assert_eq!((through.code, &through.stdout), (direct.code, &direct.stdout));
    let detached = ["run", "-d", "--name", "n1", "--network", "none", "bb", "sh", "-c"];
    let run = docker(&host, &[&detached[..], &["echo from n1; sleep 60"]].concat(), None).await;
    assert_eq!(run.ok().trim().len(), 64, "{run:?}");
    let ps: &[&str] = &["ps", "-a", "--format", "{{.Names}} {{.Image}} {{.State}}"];
    assert_eq!(docker(&host, ps, None).await.ok(), "n1 bb running\n");
    assert_eq!(docker(&host, ps, None).await.ok(), daemon.docker(ps).await.ok());
    let logs = docker(&host, &["logs", "n1"], None).await;
    assert_eq!(logs.ok(), daemon.docker(&["logs", "n1"]).await.ok());
    let input =
        docker(&host, &["run", "-i", "--rm", "--network", "none", "bb", "cat"], Some(b"in\n"));
    assert_eq!(input.await.ok(), "in\n");
    assert_eq!(docker(&host, &["rm", "-f", "n1"], None).await.ok(), "n1\n");
    assert_eq!(daemon.docker(ps).await.ok(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fronts_one_daemon_and_an_aggregate_of_two() {
    let Some(first) = Dockerd::start().await else { return };
    let Some(second) = Dockerd::start().await else { return };
    let swarm = Swarm::new(BIN);
    let single = swarm
        .node("single")
        .args(["dockerserver tcp://127.0.0.1:0".to_owned(), format!("dockerclient {}", first.host)])
        .start();
    let host = single.url().to_owned();
    let run: &[&str] = &["run", "--rm", "--network", "none", "bb", "sh", "-c", "echo out; exit 3"];
    let (through, direct) = (docker(&host, run, None).await, first.docker(run).await);
    assert_eq!((through.code, &through.stdout), (3, &"out\n".to_owned()));
    assert_eq!((through.code, &through.stdout), (direct.code, &direct.stdout));

    let both = format!("aggregate 'dockerclient {}' 'dockerclient {}'", first.host, second.host);
    let spread =
        swarm.node("spread").args(["dockerserver tcp://127.0.0.1:0".to_owned(), both]).start();
    let host = spread.url().to_owned();
    for name in ["s1", "s2"] {
        let detached = ["run", "-d", "--name", name, "--network", "none", "bb", "sleep", "60"];
        assert_eq!(docker(&host, &detached, None).await.ok().trim().len(), 64);
    }
    let names: &[&str] = &["ps", "--format", "{{.Names}}"];
    assert_eq!(first.docker(names).await.ok().lines().count(), 1);
    assert_eq!(second.docker(names).await.ok().lines().count(), 1);
    let mut listed: Vec<String> =
        docker(&host, names, None).await.ok().lines().map(str::to_owned).collect();
    listed.sort();
    assert_eq!(listed, ["s1", "s2"]);
    assert_eq!(docker(&host, &["rm", "-f", "s1", "s2"], None).await.ok(), "s1\ns2\n");
}
