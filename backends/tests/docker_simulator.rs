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

    // `sleep` prints nothing: its logs are empty, not an error.
    let logs = front.docker(&["logs", "c1"]).await;
    assert_eq!((logs.ok(), logs.stderr.as_str()), ("", ""));

    let detached = front.docker(&["run", "-d", "--name", "c2", "bb", "sleep", "10"]).await;
    assert_eq!(detached.ok().trim().len(), 64, "{detached:?}");
    // `sleep` as PID 1 ignores SIGTERM: stop waits its timeout, then kills (as dockerd does).
    let stopping = std::time::Instant::now();
    assert_eq!(front.docker(&["stop", "-t", "1", "c1"]).await.ok(), "c1\n");
    assert!(stopping.elapsed() >= std::time::Duration::from_secs(1));
    let listed = ps(&["-a"]).await;
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 3, "{listed}");
    assert!(lines[0].starts_with("c2|bb|\"sleep 10\"|running|Up "), "{listed}");
    assert!(lines[1].starts_with("c1|bb|\"sleep 30\"|exited|Exited (137) "), "{listed}");
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
    assert!(refused.stderr.contains("You cannot remove a running container"), "{refused:?}");
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
    // Exec needs a running container, as with dockerd.
    front.docker(&["stop", "-t", "0", "web"]).await.ok();
    let exec = front.docker(&["exec", "web", "true"]).await;
    assert_eq!(exec.code, 1, "{exec:?}");
    assert!(exec.stderr.contains("is not running"), "{exec:?}");

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
    // Killed by SIGKILL: 128 + 9.
    assert_eq!(front.docker(&["wait", "k1"]).await.ok(), "137\n");
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
    // `sleep 60` runs until stopped: `run` (create, attach, wait, start) waits.
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
    assert_eq!(front.docker(&["stop", "-t", "0", "r1"]).await.ok(), "r1\n");
    let run = tokio::time::timeout(support::CLI_LIMIT, run).await.unwrap().unwrap();
    // The exit code of a process killed (SIGKILL) by the stop.
    assert_eq!(run.code, 137, "{run:?}");
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

/// `(code, stdout, stderr)` of a run, for one-line assertions.
fn outcome(run: &support::Run) -> (i32, &str, &str) {
    (run.code, run.stdout.as_str(), run.stderr.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_the_output_and_returns_the_exit_code() {
    let front = Front::start(&["simulator"]).await;
    let hello = front.docker(&["run", "--name", "r1", "bb", "echo", "hello", "world"]).await;
    assert_eq!(outcome(&hello), (0, "hello world\n", ""));
    let state = ["inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}"];
    assert_eq!(front.docker(&[&state[..], &["r1"]].concat()).await.ok(), "exited 0\n");

    // stdout and stderr stay apart, and the exit code is the CLI's.
    let script = "echo out; echo err >&2; exit 3";
    let mixed = front.docker(&["run", "bb", "sh", "-c", script]).await;
    assert_eq!(outcome(&mixed), (3, "out\n", "err\n"));
    assert_eq!(outcome(&front.docker(&["run", "bb", "false"]).await), (1, "", ""));
    // Under a TTY the output is raw: stderr merged, lines ending in CRLF.
    let tty = front.docker(&["run", "-t", "bb", "sh", "-c", "echo a; echo b >&2"]).await;
    assert_eq!(outcome(&tty), (0, "a\r\nb\r\n", ""));

    // A program that does not exist fails to start as with dockerd: rc 127, and the
    // container stays created with the code and the error.
    let missing = front.docker(&["run", "--name", "r2", "bb", "nosuch", "x"]).await;
    assert_eq!(missing.code, 127, "{missing:?}");
    let error = r#"exec: "nosuch": executable file not found in $PATH: unknown"#;
    assert!(missing.stderr.contains(error), "{missing:?}");
    assert_eq!(front.docker(&[&state[..], &["r2"]].concat()).await.ok(), "created 127\n");
    let listed = front.docker(&["ps", "-a", "--filter", "name=r2", "--format", "{{.Status}}"]);
    assert_eq!(listed.await.ok(), "Created\n");
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_i_feeds_stdin_and_run_rm_removes() {
    let front = Front::start(&["simulator"]).await;
    let input = b"hello\nworld\n";
    let cat = support::docker(&front.host, &["run", "-i", "--rm", "bb", "cat"], Some(input)).await;
    assert_eq!(outcome(&cat), (0, "hello\nworld\n", ""));
    // The half-close of stdin is the end of input even for a reader of lines.
    let commands = b"echo from stdin\nexit 6\necho never\n";
    let sh = support::docker(&front.host, &["run", "-i", "--rm", "bb", "sh"], Some(commands)).await;
    assert_eq!(outcome(&sh), (6, "from stdin\n", ""));
    // Without -i, stdin is closed: cat ends at once.
    assert_eq!(outcome(&front.docker(&["run", "--rm", "bb", "cat"]).await), (0, "", ""));

    let exited = front.docker(&["run", "--rm", "bb", "sh", "-c", "exit 5"]).await;
    assert_eq!(exited.code, 5, "{exited:?}");
    let missing = front.docker(&["run", "--rm", "bb", "nosuch"]).await;
    assert_eq!(missing.code, 127, "{missing:?}");
    // Detached with --rm: removed when it exits by itself.
    front.docker(&["run", "-d", "--rm", "--name", "gone", "bb", "sh", "-c", "exit 2"]).await.ok();
    let mut removed = false;
    for _ in 0..200 {
        let listed = front.docker(&["ps", "-a", "--filter", "name=gone", "-q"]).await;
        if listed.ok().is_empty() {
            removed = true;
            break;
        }
    }
    assert!(removed, "gone was never removed");
    // Every one of them was removed once it exited; the one without --rm stays.
    front.docker(&["run", "--name", "kept", "bb", "true"]).await.ok();
    assert_eq!(front.docker(&["ps", "-a", "--format", "{{.Names}}"]).await.ok(), "kept\n");
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_i_cat_passes_more_than_the_log_ring_holds_intact() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let front = Front::start(&["simulator"]).await;
    // 4 MiB, four times the log ring: the attached reader must hold cat back, not lose lines.
    let input: Vec<u8> = (0..65536u32).flat_map(|n| format!("{n:063}\n").into_bytes()).collect();
    let mut child = tokio::process::Command::new(support::docker_cli())
        .args(["-H", &front.host, "run", "-i", "--rm", "bb", "cat"])
        .env("DOCKER_CONFIG", std::env::temp_dir().join("swarm-docker-cli-config"))
        .env_remove("DOCKER_API_VERSION")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (mut stdin, mut stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let feeding = {
        let input = input.clone();
        tokio::spawn(async move { stdin.write_all(&input).await.unwrap() })
    };
    let mut output = Vec::new();
    let read = stdout.read_to_end(&mut output);
    tokio::time::timeout(support::CLI_LIMIT, read).await.unwrap().unwrap();
    feeding.await.unwrap();
    let status = tokio::time::timeout(support::CLI_LIMIT, child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(output.len(), input.len());
    assert!(output == input, "the output differs from the input");
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_keep_both_streams_with_tail_timestamps_and_follow() {
    let front = Front::start(&["simulator"]).await;
    let script = "echo one; echo two >&2; echo three";
    let run = front.docker(&["run", "--name", "l1", "bb", "sh", "-c", script]).await;
    assert_eq!(outcome(&run), (0, "one\nthree\n", "two\n"));
    let logs = front.docker(&["logs", "l1"]).await;
    assert_eq!(outcome(&logs), (0, "one\nthree\n", "two\n"));
    let tail = front.docker(&["logs", "--tail", "2", "l1"]).await;
    assert_eq!(outcome(&tail), (0, "three\n", "two\n"));
    let since = front.docker(&["logs", "--since", "2000-01-01T00:00:00Z", "l1"]).await;
    assert_eq!(outcome(&since), (0, "one\nthree\n", "two\n"));
    let until = front.docker(&["logs", "--until", "2000-01-01T00:00:00Z", "l1"]).await;
    assert_eq!(outcome(&until), (0, "", ""));

    let stamped = front.docker(&["logs", "-t", "--tail", "1", "l1"]).await;
    let (time, text) = stamped.ok().split_once(' ').unwrap();
    assert_eq!(text, "three\n");
    // RFC 3339 with nine fraction digits, as dockerd writes it, from the run's time span.
    assert!(time.len() == 30 && time.ends_with('Z') && &time[19..20] == ".", "{time}");
    let rfc3339 = time::format_description::well_known::Rfc3339;
    let at = time::OffsetDateTime::parse(time, &rfc3339).unwrap();
    let span =
        front.docker(&["inspect", "--format", "{{.State.StartedAt}} {{.State.FinishedAt}}", "l1"]);
    let span = span.await.ok().trim().to_owned();
    let (started, finished) = span.split_once(' ').unwrap();
    let started = time::OffsetDateTime::parse(started, &rfc3339).unwrap();
    let finished = time::OffsetDateTime::parse(finished, &rfc3339).unwrap();
    assert!(started <= at && at <= finished, "{started} <= {at} <= {finished}");

    // `start -a` runs it again, attached; the log keeps both runs.
    let again = front.docker(&["start", "-a", "l1"]).await;
    assert_eq!(outcome(&again), (0, "one\nthree\n", "two\n"));
    let logs = front.docker(&["logs", "l1"]).await;
    assert_eq!(outcome(&logs), (0, "one\nthree\none\nthree\n", "two\ntwo\n"));

    // -f follows the output until the process exits.
    let script = "echo a; sleep 2; echo b; exit 4";
    front.docker(&["run", "-d", "--name", "l2", "bb", "sh", "-c", script]).await.ok();
    let follow = front.docker(&["logs", "-f", "l2"]).await;
    assert_eq!(outcome(&follow), (0, "a\nb\n", ""));
    let state =
        front.docker(&["inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", "l2"]);
    assert_eq!(state.await.ok(), "false 4\n");
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_streams_a_running_container_and_returns_its_exit_code() {
    let front = Front::start(&["simulator"]).await;
    // A shell with an open stdin (-d -i) waits for its commands.
    front.docker(&["run", "-d", "-i", "--name", "a1", "bb", "sh"]).await.ok();
    let state = ["ps", "--filter", "name=a1", "--format", "{{.State}}"];
    assert_eq!(front.docker(&state).await.ok(), "running\n");
    let commands = b"echo hi there\necho oops >&2\nexit 7\n";
    let attached = support::docker(&front.host, &["attach", "a1"], Some(commands)).await;
    assert_eq!(outcome(&attached), (7, "hi there\n", "oops\n"));
    assert_eq!(front.docker(&state).await.ok(), "");
    // What the attached client saw is in the log too.
    let logs = front.docker(&["logs", "a1"]).await;
    assert_eq!(outcome(&logs), (0, "hi there\n", "oops\n"));
    let stopped = front.docker(&["attach", "a1"]).await;
    assert_eq!(stopped.code, 1, "{stopped:?}");
    assert!(stopped.stderr.contains("You cannot attach to a stopped container"), "{stopped:?}");
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_commands_in_a_running_container_with_their_exit_codes() {
    let front = Front::start(&["simulator"]).await;
    front.docker(&["run", "-d", "--name", "e1", "bb", "sleep", "600"]).await.ok();
    assert_eq!(outcome(&front.docker(&["exec", "e1", "echo", "hi"]).await), (0, "hi\n", ""));
    assert_eq!(outcome(&front.docker(&["exec", "e1", "false"]).await), (1, "", ""));
    let script = "echo out; echo err >&2; exit 4";
    let mixed = front.docker(&["exec", "e1", "sh", "-c", script]).await;
    assert_eq!(outcome(&mixed), (4, "out\n", "err\n"));
    let piped = support::docker(&front.host, &["exec", "-i", "e1", "cat"], Some(b"piped\n")).await;
    assert_eq!(outcome(&piped), (0, "piped\n", ""));
    // A program that does not exist: dockerd's text on the stream, and 126 as dockerd 20.10.
    let missing = front.docker(&["exec", "e1", "nosuch"]).await;
    let text = "OCI runtime exec failed: exec failed: unable to start container process: \
                exec: \"nosuch\": executable file not found in $PATH: unknown\r\n";
    assert_eq!(outcome(&missing), (126, text, ""));
    assert_eq!(outcome(&front.docker(&["exec", "-d", "e1", "sleep", "1"]).await), (0, "", ""));
    // Exec output is not the container's log.
    assert_eq!(outcome(&front.docker(&["logs", "e1"]).await), (0, "", ""));

    front.docker(&["pause", "e1"]).await.ok();
    let paused = front.docker(&["exec", "e1", "true"]).await;
    assert_eq!(paused.code, 1, "{paused:?}");
    assert!(paused.stderr.contains("is paused, unpause the container before exec"), "{paused:?}");
    front.docker(&["unpause", "e1"]).await.ok();
    front.docker(&["rm", "-f", "e1"]).await.ok();
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_the_exit_code() {
    let front = Front::start(&["simulator"]).await;
    front.docker(&["run", "-d", "--name", "w1", "bb", "sh", "-c", "sleep 1; exit 9"]).await.ok();
    assert_eq!(outcome(&front.docker(&["wait", "w1"]).await), (0, "9\n", ""));
    // A container that does not run answers at once, with its last code.
    assert_eq!(outcome(&front.docker(&["wait", "w1"]).await), (0, "9\n", ""));

    front.docker(&["run", "-d", "--name", "w2", "bb", "sleep", "600"]).await.ok();
    let host = front.host.clone();
    let waiting = tokio::spawn(async move { support::docker(&host, &["wait", "w2"], None).await });
    assert_eq!(front.docker(&["stop", "-t", "0", "w2"]).await.ok(), "w2\n");
    let waited = tokio::time::timeout(support::CLI_LIMIT, waiting).await.unwrap().unwrap();
    assert_eq!(outcome(&waited), (0, "137\n", ""));
    front.shutdown().await;
}
