//! The real `docker` CLI against `dockerserver` + `dockerclient` on a private dockerd, compared
//! with the same commands sent straight to the daemon.
//!
//! Needs root, `dockerd` (Debian's docker.io) and `busybox` (busybox-static); skips without
//! them unless `SWARM_REQUIRE_REAL=1`.

mod support;

use backends::service::Tasks;
use support::dockerd::Dockerd;
use support::{docker, serve_node, swarm_node, Front, Run};

/// One CLI step: arguments and stdin.
type Step = (&'static [&'static str], Option<&'static [u8]>);

const SCENARIO: &[Step] = &[
    (&["run", "--rm", "--network", "none", "bb", "echo", "hi"], None),
    (
        &[
            "run",
            "--name",
            "r1",
            "--network",
            "none",
            "bb",
            "sh",
            "-c",
            "echo err >&2; sleep 0.2; echo out; exit 3",
        ],
        None,
    ),
    (&["logs", "r1"], None),
    (&["logs", "--tail", "1", "r1"], None),
    (&["run", "-i", "--rm", "--network", "none", "bb", "cat"], Some(b"hello\nworld\n")),
    (&["run", "-t", "--rm", "--network", "none", "bb", "echo", "tty"], None),
    (&["create", "--name", "c1", "--network", "none", "bb", "sleep", "30"], None),
    (&["start", "c1"], None),
    (&["start", "c1"], None),
    (&["ps", "--format", "{{.Names}} {{.Image}} {{.Command}} {{.State}}"], None),
    (
        &[
            "ps",
            "-a",
            "--filter",
            "status=exited",
            "--format",
            "{{.Names}} {{.Command}} {{.State}}",
        ],
        None,
    ),
    (&["ps", "-a", "--filter", "name=c1", "-q"], None),
    (
        &[
            "inspect",
            "--format",
            "{{.Name}} {{.State.Status}} {{.Config.Tty}} {{.Path}} {{.Args}}",
            "c1",
        ],
        None,
    ),
    (&["top", "c1", "-o", "args"], None),
    (&["pause", "c1"], None),
    (&["inspect", "--format", "{{.State.Status}}", "c1"], None),
    (&["pause", "c1"], None),
    (&["unpause", "c1"], None),
    (&["unpause", "c1"], None),
    (&["rename", "c1", "c2"], None),
    (&["kill", "c2"], None),
    (&["wait", "c2"], None),
    (&["kill", "c2"], None),
    (&["restart", "-t", "1", "c2"], None),
    (&["inspect", "--format", "{{.State.Status}}", "c2"], None),
    (&["rm", "c2"], None),
    (&["stop", "-t", "1", "c2"], None),
    (&["stop", "-t", "1", "c2"], None),
    (&["rm", "c2", "r1"], None),
    (&["run", "--rm", "--network", "none", "bb", "/nonexistent"], None),
    (&["create", "--name", "r1", "--network", "none", "bb"], None),
    (&["create", "--name", "r1", "--network", "none", "bb"], None),
    (&["rm", "r1"], None),
    (&["inspect", "nosuch"], None),
    (&["logs", "nosuch"], None),
    (
        &[
            "run",
            "-d",
            "--name",
            "f1",
            "--network",
            "none",
            "bb",
            "sh",
            "-c",
            "echo a; sleep 1; echo b",
        ],
        None,
    ),
    (&["logs", "-f", "f1"], None),
    (
        &[
            "run",
            "-d",
            "--name",
            "a1",
            "--network",
            "none",
            "bb",
            "sh",
            "-c",
            "sleep 2; echo late; exit 4",
        ],
        None,
    ),
    (&["attach", "a1"], None),
    (&["run", "-d", "--name", "e1", "--network", "none", "bb", "sleep", "60"], None),
    (&["exec", "e1", "sh", "-c", "echo in e1; exit 5"], None),
    (&["exec", "-i", "e1", "cat"], Some(b"through exec\n")),
    (&["exec", "-d", "e1", "true"], None),
    (&["exec", "-t", "e1", "echo", "tty"], None),
    (&["exec", "e1", "/nonexistent"], None),
    (&["rm", "-f", "f1", "a1", "e1"], None),
    (&["ps", "-a", "-q"], None),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerclient_gives_the_daemons_answers() {
    let Some(daemon) = Dockerd::start().await else { return };
    let direct = transcript(&daemon.host).await;
    let front = Front::start(&[&format!("dockerclient {}", daemon.host)]).await;
    let through = transcript(&front.host).await;
    let differences: Vec<String> = direct
        .iter()
        .zip(&through)
        .filter(|(direct, through)| direct != through)
        .map(|(direct, through)| format!("daemon:\n{direct}\nthrough the pipeline:\n{through}\n"))
        .collect();
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    // The scenario does what it says (not the same failure both ways).
    let all = through.join("\n");
    for expected in [
        "\nhi\nrc=0",
        "\nhello\nworld\nrc=0",
        "\nin e1\nrc=5",
        "\nthrough exec\nrc=0",
        "\nlate\nrc=4",
        "\na\nb\nrc=0",
        "rc=127",
    ] {
        assert!(all.contains(expected), "{expected:?} not in {all}");
    }
    front.shutdown().await;
}

async fn transcript(host: &str) -> Vec<String> {
    let mut lines = Vec::with_capacity(SCENARIO.len());
    for (args, stdin) in SCENARIO {
        let Run { code, stdout, stderr } = docker(host, args, *stdin).await;
        lines.push(normalize(&format!("$ docker {}\n{stdout}{stderr}rc={code}", args.join(" "))));
    }
    lines
}

/// Ids replaced by `<id>`, so runs on different containers compare.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_inclusive(|c: char| !c.is_ascii_hexdigit()) {
        let hex = word.trim_end_matches(|c: char| !c.is_ascii_hexdigit());
        if hex.len() == 64 || hex.len() == 12 {
            out.push_str("<id>");
            out.push_str(&word[hex.len()..]);
        } else {
            out.push_str(word);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_over_two_daemons() {
    let Some(first) = Dockerd::start().await else { return };
    let Some(second) = Dockerd::start().await else { return };
    let aggregate =
        format!("aggregate 'dockerclient {}' 'dockerclient {}'", first.host, second.host);
    let front = Front::start(&[&aggregate]).await;
    let names = |run: Run| {
        let mut names: Vec<String> = run.ok().lines().map(str::to_owned).collect();
        names.sort();
        names
    };
    // Round robin: one container on each daemon.
    for name in ["g1", "g2"] {
        let args = ["run", "-d", "--name", name, "--network", "none", "bb", "sh", "-c"];
        let script = format!("echo I am {name}; sleep 60");
        let run = front.docker(&[&args[..], &[script.as_str()]].concat()).await;
        assert_eq!(run.ok().trim().len(), 64, "{run:?}");
    }
    let on_first = names(first.docker(&["ps", "--format", "{{.Names}}"]).await);
    let on_second = names(second.docker(&["ps", "--format", "{{.Names}}"]).await);
    assert_eq!((on_first.len(), on_second.len()), (1, 1), "{on_first:?} {on_second:?}");
    assert_eq!(names(front.docker(&["ps", "--format", "{{.Names}}"]).await), ["g1", "g2"]);

    // Every later command reaches the daemon that has the container.
    for name in ["g1", "g2"] {
        assert_eq!(front.docker(&["logs", name]).await.ok(), format!("I am {name}\n"));
        assert_eq!(front.docker(&["stop", "-t", "1", name]).await.ok(), format!("{name}\n"));
        let state = front.docker(&["inspect", "--format", "{{.State.Status}}", name]).await;
        assert_eq!(state.ok(), "exited\n");
    }
    let run = front.docker(&["run", "--rm", "--network", "none", "bb", "echo", "placed"]).await;
    assert_eq!(run.ok(), "placed\n");
    front.docker(&["start", "g1", "g2"]).await.ok();

    // A daemon that is down: its containers' commands fail, the others' still work.
    let (gone, kept) = if on_first == ["g1"] { ("g1", "g2") } else { ("g2", "g1") };
    drop(if gone == "g1" { first } else { second });
    let failed = front.docker(&["stop", "-t", "1", gone]).await;
    assert_eq!(failed.code, 1, "{failed:?}");
    // The error names the child that did not answer, not a missing container.
    assert!(failed.stderr.contains("failed: dockerclient unix://"), "{failed:?}");
    assert!(!failed.stderr.contains("no such object"), "{failed:?}");
    assert_eq!(front.docker(&["stop", "-t", "1", kept]).await.ok(), format!("{kept}\n"));
    // ps lists what the reachable daemon has.
    let listed = front.docker(&["ps", "-a", "--format", "{{.Names}}"]).await;
    assert_eq!(names(listed), [kept]);
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerclient_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::Ca::create("docker test CA").unwrap();
    ca.save(dir.path(), false).unwrap();
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    for name in ["daemon", "client"] {
        ca.issue(name, &[], &[loopback]).unwrap().save(dir.path(), false).unwrap();
    }
    let file = |name: &str| dir.path().join(name).display().to_string();
    // A free loopback port for dockerd (it cannot report the one it bound).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let tls = vec![
        "--tlsverify".to_owned(),
        "--tlscacert".to_owned(),
        file("ca.crt"),
        "--tlscert".to_owned(),
        file("daemon.crt"),
        "--tlskey".to_owned(),
        file("daemon.key"),
        "-H".to_owned(),
        format!("tcp://127.0.0.1:{port}"),
    ];
    let Some(daemon) = Dockerd::start_with(&tls).await else { return };
    let client = format!(
        "dockerclient tcp://127.0.0.1:{port} --tlscacert {} --tlscert {} --tlskey {}",
        file("ca.crt"),
        file("client.crt"),
        file("client.key")
    );
    let front = Front::start(&[&client]).await;
    let run =
        front.docker(&["run", "--name", "t1", "--network", "none", "bb", "echo", "tls"]).await;
    assert_eq!(run.ok(), "tls\n");
    let listed = daemon.docker(&["ps", "-a", "--format", "{{.Names}}"]).await;
    assert_eq!(listed.ok(), "t1\n");
    assert_eq!(front.docker(&["rm", "t1"]).await.ok(), "t1\n");

    // Without a client certificate the daemon refuses the connection.
    let anonymous = format!("dockerclient tcp://127.0.0.1:{port} --tlscacert {}", file("ca.crt"));
    let refused = Front::start(&[&anonymous]).await;
    let failed = refused.docker(&["ps"]).await;
    assert_eq!(failed.code, 1, "{failed:?}");
    assert!(failed.stderr.contains(&format!("127.0.0.1:{port}")), "{failed:?}");
    refused.shutdown().await;
    front.shutdown().await;
}

/// dockerserver on node A, `remote quic://B` to node B, which serves a dockerclient: the CLI
/// gets what the daemon gives directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_remote_node_over_quic() {
    let Some(daemon) = Dockerd::start().await else { return };
    let ca = certs::Ca::create("docker test CA").unwrap();
    let b_tasks = Tasks::new();
    let dockerclient = format!("dockerclient {}", daemon.host);
    let (url, _b) = serve_node(&swarm_node(&ca, "node-b"), &dockerclient, &b_tasks).await;
    assert!(url.starts_with("quic://"), "{url}");
    let a = backends::registry().with_node(swarm_node(&ca, "node-a"));
    let front = Front::start_on(a, &[&format!("remote {url} --node node-b")]).await;

    let echo: &[&str] = &["run", "--rm", "--network", "none", "bb", "echo", "over quic"];
    let (through, direct) = (front.docker(echo).await, daemon.docker(echo).await);
    assert_eq!(through.ok(), "over quic\n");
    assert_eq!((through.code, &through.stdout), (direct.code, &direct.stdout));
    let detached = ["run", "-d", "--name", "q1", "--network", "none", "bb", "sh", "-c"];
    let run = front.docker(&[&detached[..], &["echo from q1; sleep 60"]].concat()).await;
    assert_eq!(run.ok().trim().len(), 64, "{run:?}");
    let ps: &[&str] = &["ps", "-a", "--format", "{{.Names}} {{.Image}} {{.State}}"];
    assert_eq!(front.docker(ps).await.ok(), daemon.docker(ps).await.ok());
    assert_eq!(front.docker(ps).await.ok(), "q1 bb running\n");
    let logs = front.docker(&["logs", "q1"]).await;
    assert_eq!(logs.ok(), daemon.docker(&["logs", "q1"]).await.ok());
    let inspect: &[&str] = &["inspect", "--format", "{{.Name}} {{.State.Status}}", "q1"];
    assert_eq!(front.docker(inspect).await.ok(), "/q1 running\n");
    assert_eq!(front.docker(&["rm", "-f", "q1"]).await.ok(), "q1\n");
    assert_eq!(daemon.docker(ps).await.ok(), "");
    let missing = front.docker(&["inspect", "nosuch"]).await;
    assert_eq!(missing.code, daemon.docker(&["inspect", "nosuch"]).await.code);
    front.shutdown().await;
    assert!(b_tasks.shutdown(support::LIMIT).await);
}
