//! The docker CLI through `dockerserver` + `dockerclient` against the same CLI straight at the
//! daemon, in one run: `docker ps` (5 containers) and `docker run --rm bb /bin/true`. Needs
//! root, dockerd and busybox, like the Docker tests. `cargo bench -p backends --bench docker`;
//! `-- --quick` for fewer runs.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::dockerd::Dockerd;
use support::{docker, Front};

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
    let ps: &[&str] = &["ps", "-a"];
    let run_true: &[&str] = &["run", "--rm", "--network", "none", "bb", "/bin/true"];
    println!("\n| docker CLI command, median of {runs} | straight to dockerd | through dockerserver + dockerclient | ratio |");
    println!("|---|---|---|---|");
    for (label, args) in [("docker ps -a", ps), ("docker run --rm bb /bin/true", run_true)] {
        let (direct, through) = alternate(runs, &daemon.host, &front.host, args).await;
        println!(
            "| {label} | {:.1} ms | {:.1} ms | {:.2} |",
            ms(direct),
            ms(through),
            through.as_secs_f64() / direct.as_secs_f64()
        );
    }
    front.shutdown().await;
    drop(daemon);
}

/// Medians of `runs` runs each way, alternating so both see the same machine.
async fn alternate(
    runs: usize,
    direct: &str,
    through: &str,
    args: &[&str],
) -> (Duration, Duration) {
    let mut times = (Vec::new(), Vec::new());
    for _ in 0..runs {
        times.0.push(timed(direct, args).await);
        times.1.push(timed(through, args).await);
    }
    (median(times.0), median(times.1))
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
