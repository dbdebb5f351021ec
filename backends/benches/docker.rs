//! The docker CLI through `dockerserver` + `dockerclient` against the same CLI straight at the
//! daemon, and through a remote node over QUIC (dockerserver on node A, `remote quic://B`,
//! dockerclient on node B), in one run: `docker ps` (5 containers) and
//! `docker run --rm bb /bin/true`. Needs
//! root, dockerd and busybox, like the Docker tests. `cargo bench -p backends --bench docker`;
//! `-- --quick` for fewer runs.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use backends::service::Tasks;
use support::dockerd::Dockerd;
use support::{docker, serve_node, swarm_node, Front};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = if quick { 5 } else { 30 };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run(runs));
}

async fn run(runs: usize) {
    let Some(daemon) = Dockerd::start().await else { return };
    for i in 0..5 {
        let name = format!("bench{i}");
        let args = ["create", "--name", &name, "--network", "none", "bb", "sleep", "600"];
        daemon.docker(&args).await.ok();
    }
    let front = Front::start(&[&format!("dockerclient {}", daemon.host)]).await;
    let ca = certs::Ca::create("bench CA").unwrap();
    let b_tasks = Tasks::new();
    let dockerclient = format!("dockerclient {}", daemon.host);
    let (url, _b) = serve_node(&swarm_node(&ca, "node-b"), &dockerclient, &b_tasks).await;
    let a = backends::registry().with_node(swarm_node(&ca, "node-a"));
    let remote = Front::start_on(a, &[&format!("remote {url} --node node-b")]).await;
    let ps: &[&str] = &["ps", "-a"];
    let run_true: &[&str] = &["run", "--rm", "--network", "none", "bb", "/bin/true"];
    println!(
        "\n| docker CLI command, median of {runs} | straight to dockerd | \
         through dockerserver + dockerclient | ratio | through a remote node over QUIC | ratio |"
    );
    println!("|---|---|---|---|---|---|");
    for (label, args) in [("docker ps -a", ps), ("docker run --rm bb /bin/true", run_true)] {
        let hosts = [daemon.host.as_str(), front.host.as_str(), remote.host.as_str()];
        let [direct, through, far] = alternate(runs, hosts, args).await;
        let ratio = |time: Duration| time.as_secs_f64() / direct.as_secs_f64();
        println!(
            "| {label} | {:.1} ms | {:.1} ms | {:.2} | {:.1} ms | {:.2} |",
            ms(direct),
            ms(through),
            ratio(through),
            ms(far),
            ratio(far)
        );
    }
    // The server's own path, without the CLI process around it (its start-up dominates the
    // rows above): one `GET /containers/json?all=1` per connection, 20 times as many runs.
    let hosts = [daemon.host.as_str(), front.host.as_str(), remote.host.as_str()];
    let [direct, through, far] = alternate_raw(runs * 20, hosts).await;
    let ratio = |time: Duration| time.as_secs_f64() / direct.as_secs_f64();
    println!(
        "| GET /containers/json?all=1 (no CLI, median of {}) | {:.2} ms | {:.2} ms | {:.2} | {:.2} ms | {:.2} |",
        runs * 20,
        ms(direct),
        ms(through),
        ratio(through),
        ms(far),
        ratio(far)
    );
    front.shutdown().await;
    remote.shutdown().await;
    b_tasks.shutdown(support::LIMIT).await;
    drop(daemon);
}

/// Medians of `runs` runs on each host, in turn so all see the same machine.
async fn alternate(runs: usize, hosts: [&str; 3], args: &[&str]) -> [Duration; 3] {
    let mut times: [Vec<Duration>; 3] = Default::default();
    for _ in 0..runs {
        for (host, times) in hosts.iter().zip(times.iter_mut()) {
            times.push(timed(host, args).await);
        }
    }
    times.map(median)
}

/// Medians of `runs` raw list requests on each host, in turn.
async fn alternate_raw(runs: usize, hosts: [&str; 3]) -> [Duration; 3] {
    let mut times: [Vec<Duration>; 3] = Default::default();
    for _ in 0..runs {
        for (host, times) in hosts.iter().zip(times.iter_mut()) {
            let start = Instant::now();
            list(host).await;
            times.push(start.elapsed());
        }
    }
    times.map(median)
}

/// `GET /v1.41/containers/json?all=1` on a fresh connection to `host`, read to the end.
async fn list(host: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request =
        b"GET /v1.41/containers/json?all=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut response = Vec::new();
    if let Some(path) = host.strip_prefix("unix://") {
        let mut stream = tokio::net::UnixStream::connect(path).await.unwrap();
        stream.write_all(request).await.unwrap();
        stream.read_to_end(&mut response).await.unwrap();
    } else {
        let address = host.trim_start_matches("tcp://");
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request).await.unwrap();
        stream.read_to_end(&mut response).await.unwrap();
    }
    assert!(response.starts_with(b"HTTP/1.1 200 "), "{}", String::from_utf8_lossy(&response));
}

async fn timed(host: &str, args: &[&str]) -> Duration {
    let start = Instant::now();
    docker(host, args, None).await.ok();
    start.elapsed()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(time: Duration) -> f64 {
    time.as_secs_f64() * 1e3
}
