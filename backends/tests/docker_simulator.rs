//! The real `docker` CLI against `dockerserver` in front of a `simulator`: no daemon needed.

mod support;

use support::{parse, Front};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_info_and_ping() {
    let front = Front::start(&["simulator web db"]).await;
    let version = front.docker(&["version", "--format", "{{json .Server}}"]).await;
    let server = parse(version.ok());
    assert_eq!(server["ApiVersion"], "1.41");
    assert_eq!(server["Platform"]["Name"], "swarm-node dockerserver");
    let version = front.docker(&["version"]).await;
    assert!(version.ok().contains("API version:       1.41 (downgraded from"), "{version:?}");

    let info = front.docker(&["info", "--format", "{{json .}}"]).await;
    let info = parse(info.ok());
    assert_eq!(info["Containers"], 2);
    assert_eq!(info["ContainersStopped"], 2);
    assert_eq!(info["Swarm"]["LocalNodeState"], "inactive");
    let info = front.docker(&["info"]).await;
    assert!(info.ok().contains(" Containers: 2\n"), "{info:?}");
    assert!(info.stderr.is_empty(), "{info:?}");
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_start_ps_inspect_stop_rm() {
    let front = Front::start(&["simulator web"]).await;
    let format = ["--format", "{{.Names}}|{{.Image}}|{{.Command}}|{{.State}}|{{.Status}}"];
    let ps = |extra: &'static [&'static str]| {
        let front = &front;
        async move {
            let mut args = vec!["ps"];
            args.extend_from_slice(extra);
            args.extend_from_slice(&format);
            front.docker(&args).await.ok().to_owned()
        }
    };
    assert_eq!(ps(&[]).await, "");
    assert_eq!(ps(&["-a"]).await, "web|scratch|\"\"|created|Created\n");

    let created =
        front.docker(&["create", "--name", "c1", "--network", "none", "bb", "sleep", "30"]).await;
    let id = created.ok().trim().to_owned();
    assert_eq!(id.len(), 64, "{created:?}");
    assert_eq!(front.docker(&["start", "c1"]).await.ok(), "c1\n");
    assert_eq!(ps(&[]).await, "c1|bb|\"sleep 30\"|running|Up Less than a second\n");

    let inspect = parse(front.docker(&["inspect", "c1"]).await.ok());
    let inspect = &inspect[0];
    assert_eq!(inspect["Id"], id.as_str());
    assert_eq!(inspect["Name"], "/c1");
    assert_eq!(inspect["Config"]["Tty"], false);
    assert_eq!(inspect["HostConfig"]["NetworkMode"], "none");
    let short = front
        .docker(&["inspect", "--format", "{{.State.Status}} {{.Path}} {{.Args}}", &id[..12]])
        .await;
    assert_eq!(short.ok(), "running sleep [30]\n");

    // The simulator keeps no output: logs are empty, not an error.
    let logs = front.docker(&["logs", "c1"]).await;
    assert_eq!((logs.ok(), logs.stderr.as_str()), ("", ""));

    let detached = front.docker(&["run", "-d", "--name", "c2", "bb", "sleep", "10"]).await;
    assert_eq!(detached.ok().trim().len(), 64, "{detached:?}");
    assert_eq!(front.docker(&["stop", "c1"]).await.ok(), "c1\n");
    let listed = ps(&["-a"]).await;
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 3, "{listed}");
    assert_eq!(lines[0], "c2|bb|\"sleep 10\"|running|Up Less than a second");
    assert!(lines[1].starts_with("c1|bb|\"sleep 30\"|exited|Exited (0) "), "{listed}");
    assert_eq!(lines[2], "web|scratch|\"\"|created|Created");

    // Filters are applied by the server.
    assert_eq!(ps(&["-a", "--filter", "name=c"]).await.lines().count(), 2);
    assert_eq!(ps(&["-a", "--filter", "status=exited"]).await.lines().count(), 1);
    assert_eq!(ps(&["--filter", "name=^/c2$"]).await.lines().count(), 1);
    assert_eq!(ps(&["-a", "-n", "1"]).await.lines().count(), 1);
    let bad = front.docker(&["ps", "--filter", "volume=x"]).await;
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("invalid filter 'volume'"), "{bad:?}");

    let refused = front.docker(&["rm", "c2"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("cannot remove running container c2"), "{refused:?}");
    assert_eq!(front.docker(&["rm", "c1"]).await.ok(), "c1\n");
    assert_eq!(front.docker(&["rm", "-f", "c2"]).await.ok(), "c2\n");
    assert_eq!(ps(&["-a"]).await, "web|scratch|\"\"|created|Created\n");
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_docker_statuses() {
    let front = Front::start(&["simulator web"]).await;
    // 404 on a container makes inspect fall through the other object types.
    let missing = front.docker(&["inspect", "nosuch"]).await;
    assert_eq!((missing.code, missing.stdout.as_str()), (1, "[]\n"), "{missing:?}");
    assert!(missing.stderr.contains("Error: No such object: nosuch"), "{missing:?}");
    let missing = front.docker(&["start", "nosuch"]).await;
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("Error response from daemon: no such container: nosuch"));

    let taken = front.docker(&["create", "--name", "web", "bb"]).await;
    assert_eq!(taken.code, 1, "{taken:?}");
    assert!(taken.stderr.contains("is already in use"), "{taken:?}");

    // Pause and unpause change the simulated state, with dockerd's refusals.
    let not_running = front.docker(&["pause", "web"]).await;
    assert_eq!(not_running.code, 1);
    assert!(not_running.stderr.contains("is not running"), "{not_running:?}");
    front.docker(&["start", "web"]).await.ok();
    assert_eq!(front.docker(&["pause", "web"]).await.ok(), "web\n");
    let state =
        front.docker(&["inspect", "--format", "{{.State.Status}} {{.State.Paused}}", "web"]);
    assert_eq!(state.await.ok(), "paused true\n");
    let listed = front.docker(&["ps", "--filter", "name=web", "--format", "{{.Status}}"]).await;
    assert!(listed.ok().contains("(Paused)"), "{listed:?}");
    assert_eq!(front.docker(&["unpause", "web"]).await.ok(), "web\n");
    let again = front.docker(&["unpause", "web"]).await;
    assert!(again.stderr.contains("is not paused"), "{again:?}");
    // Verbs the simulator lacks are reported as such.
    let exec = front.docker(&["exec", "web", "true"]).await;
    assert_ne!(exec.code, 0);
    assert!(exec.stderr.contains("not implemented"), "{exec:?}");

    // Newer API versions than 1.41 are refused as dockerd refuses them.
    let mut command = tokio::process::Command::new(support::docker_cli());
    let newer = command
        .args(["-H", &front.host, "ps"])
        .env("DOCKER_API_VERSION", "1.44")
        .env("DOCKER_CONFIG", std::env::temp_dir().join("swarm-docker-cli-config"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&newer.stderr);
    assert!(stderr.contains("client version 1.44 is too new"), "{stderr}");
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_restart_top_wait_rename() {
    let front = Front::start(&["simulator"]).await;
    front.docker(&["run", "-d", "--name", "k1", "bb", "sleep", "60"]).await.ok();
    let top = front.docker(&["top", "k1"]).await;
    assert!(top.ok().starts_with("UID "), "{top:?}");
    assert!(top.stdout.lines().nth(1).unwrap().ends_with("sleep 60"), "{top:?}");

    assert_eq!(front.docker(&["kill", "k1"]).await.ok(), "k1\n");
    assert_eq!(front.docker(&["wait", "k1"]).await.ok(), "0\n");
    let stopped = front.docker(&["top", "k1"]).await;
    assert!(stopped.stderr.contains("is not running"), "{stopped:?}");
    assert_eq!(front.docker(&["restart", "k1"]).await.ok(), "k1\n");
    let state = front.docker(&["inspect", "--format", "{{.State.Status}}", "k1"]).await;
    assert_eq!(state.ok(), "running\n");

    assert_eq!(front.docker(&["rename", "k1", "k2"]).await.ok(), "");
    let names = front.docker(&["ps", "--format", "{{.Names}}"]).await;
    assert_eq!(names.ok(), "k2\n");
    let gone = front.docker(&["inspect", "k1"]).await;
    assert!(gone.stderr.contains("No such object: k1"), "{gone:?}");
    front.docker(&["create", "--name", "k3", "bb"]).await.ok();
    let taken = front.docker(&["rename", "k3", "k2"]).await;
    assert!(taken.stderr.contains("is already in use"), "{taken:?}");
    front.docker(&["rm", "-f", "k2", "k3"]).await.ok();
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_run_lasts_until_the_container_stops() {
    let front = Front::start(&["simulator"]).await;
    let host = front.host.clone();
    // A simulated container runs until stopped: `run` (create, attach, wait, start) waits.
    let run = tokio::spawn(async move {
        support::docker(&host, &["run", "--rm", "--name", "r1", "bb", "sleep", "60"], None).await
    });
    let mut running = false;
    for _ in 0..200 {
        let ps = front.docker(&["ps", "--filter", "name=r1", "--format", "{{.State}}"]).await;
        if ps.ok() == "running\n" {
            running = true;
            break;
        }
    }
    assert!(running, "r1 never ran");
    assert_eq!(front.docker(&["stop", "r1"]).await.ok(), "r1\n");
    let run = tokio::time::timeout(support::CLI_LIMIT, run).await.unwrap().unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    // --rm: removed once it exited.
    assert_eq!(front.docker(&["ps", "-a", "-q"]).await.ok(), "");
    front.shutdown().await;
}

/// Sends one raw HTTP/1.1 request and returns the response head and body as text.
async fn raw(front: &Front, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = front.host.trim_start_matches("tcp://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let read = stream.read_to_end(&mut response);
    // A server that refuses a body early may reset the connection after its answer: what was
    // read before the reset is what counts.
    let _ = tokio::time::timeout(support::LIMIT, read).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_statuses_and_json_messages() {
    let front = Front::start(&["simulator"]).await;
    let ping = raw(&front, b"HEAD /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(ping.starts_with("HTTP/1.1 200 OK\r\n"), "{ping}");
    assert!(ping.to_ascii_lowercase().contains("api-version: 1.41\r\n"), "{ping}");
    assert!(ping.to_ascii_lowercase().contains("ostype: linux\r\n"), "{ping}");

    let cases: [(&[u8], &str, &str); 4] = [
        (b"GET /v1.41/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "404", "page not found"),
        (
            b"POST /containers/create HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 8\r\n\r\nnot json",
            "400",
            "invalid JSON",
        ),
        (
            b"POST /containers/create HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
            "400",
            "Image is required",
        ),
        (b"POST /containers/x/wait?condition=soon HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", "404", "no such container: x"),
    ];
    for (request, status, message) in cases {
        let response = raw(&front, request).await;
        assert!(response.starts_with(&format!("HTTP/1.1 {status} ")), "{response}");
        assert!(response.contains("application/json"), "{response}");
        assert!(response.contains(message), "{response}");
    }

    // A body over the 1 MiB limit is refused, not buffered.
    let big = vec![b' '; (1 << 20) + 10];
    let mut request = format!(
        "POST /containers/create HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    request.extend_from_slice(&big);
    let response = raw(&front, &request).await;
    assert!(response.starts_with("HTTP/1.1 413 "), "{response}");
    front.shutdown().await;
}
