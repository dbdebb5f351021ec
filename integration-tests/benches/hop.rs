//! What one routing hop costs: request/response to B directly, and through A (which runs
//! `remote` to B), over QUIC and over TLS. Real node processes on loopback; the client is
//! an in-process `remote` stage. Prints p50/p99, the ratio of the p50s, and what each routed
//! request costs node A: CPU time and thread switches (from `/proc/PID/task/*`), which the
//! machine's load disturbs less than latency does, next to the CPU time B and the client
//! spend on a direct request (a router costs no more than a client plus a server when A's
//! figure is at most their sum).
//!
//! Then the same paths with 32 requests in flight at once, in requests per second.
//!
//! `cargo bench -p integration-tests --bench hop` (`-- --quick` for a tenth of the rounds,
//! `-- quic` or `-- tls` for one transport, `-- --threads N` to run both nodes with
//! `--threads N`).

use std::time::{Duration, Instant};

use backends::service::{Client, Tasks};
use hdrhistogram::Histogram;
use integration_tests::{client_of, Swarm, LIMIT};

const BIN: &str = env!("CARGO_BIN_EXE_node-under-test");

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|arg| arg == "--quick");
    let rounds = if quick { 500 } else { 5_000 };
    let threads = args.iter().position(|arg| arg == "--threads").map(|at| {
        let n = args.get(at + 1).and_then(|n| n.parse::<u16>().ok());
        n.expect("--threads needs a number").to_string()
    });
    let only: Vec<String> = args
        .iter()
        .filter(|arg| !arg.starts_with("--") && Some(*arg) != threads.as_ref())
        .cloned()
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(rounds, &only, threads.as_deref()));
}

async fn run(rounds: usize, only: &[String], threads: Option<&str>) {
    let swarm = Swarm::new(BIN);
    let me = swarm.identity("bench-client");
    let flags: Vec<String> =
        threads.map(|n| vec!["--threads".to_owned(), n.to_owned()]).unwrap_or_default();
    let on = threads.map_or_else(
        || "the default of one worker thread".to_owned(),
        |n| format!("--threads {n}"),
    );
    println!("routing hop, {rounds} sequential Ls round trips per path (simulator with 3 names), nodes on {on}");
    println!("| transport | direct p50 (us) | direct p99 (us) | via A p50 (us) | via A p99 (us) | p50 ratio | A CPU per request (us) | A switches per request | B CPU per direct request (us) | client CPU per direct request (us) | direct, {IN_FLIGHT} in flight (req/s) | via A, {IN_FLIGHT} in flight (req/s) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for scheme in ["quic", "tls"] {
        if !only.is_empty() && !only.iter().any(|name| name == scheme) {
            continue;
        }
        let b = swarm
            .node("node-b")
            .with_certs()
            .args(flags.clone())
            .args([format!("listen {scheme}://127.0.0.1:0"), "simulator x y z".to_owned()])
            .start();
        let a = swarm
            .node("node-a")
            .with_certs()
            .args(flags.clone())
            .args([
                format!("listen {scheme}://127.0.0.1:0"),
                format!("remote {} --node node-b", b.url()),
            ])
            .start();
        let tasks = Tasks::new();
        let direct =
            client_of(me.clone(), &format!("{} --node node-b", b.url()), LIMIT, &tasks).await;
        let routed =
            client_of(me.clone(), &format!("{} --node node-a", a.url()), LIMIT, &tasks).await;
        let (before_b, before_client) = (Usage::of(b.pid()), Usage::of(std::process::id()));
        let direct_client = direct;
        let direct = measure(&direct_client, rounds).await;
        let cost_b = Usage::of(b.pid()).since(&before_b);
        let cost_client = Usage::of(std::process::id()).since(&before_client);
        let before = Usage::of(a.pid());
        let routed_client = routed;
        let routed = measure(&routed_client, rounds).await;
        let cost = Usage::of(a.pid()).since(&before);
        // After the latency rows, which then start from the same state as before these rows.
        let direct_rate = throughput(&direct_client, rounds).await;
        let routed_rate = throughput(&routed_client, rounds).await;
        #[allow(clippy::cast_precision_loss)] // rounds and counts are far below 2^52
        let per = |total: u64| total as f64 / (rounds + rounds / 10) as f64;
        let p = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {scheme} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} |",
            p(&direct, 0.5),
            p(&direct, 0.99),
            p(&routed, 0.5),
            p(&routed, 0.99),
            p(&routed, 0.5) / p(&direct, 0.5),
            per(cost.cpu_ns) / 1000.0,
            per(cost.switches),
            per(cost_b.cpu_ns) / 1000.0,
            per(cost_client.cpu_ns) / 1000.0,
            direct_rate,
            routed_rate,
        );
        tasks.shutdown(Duration::from_secs(5)).await;
        // Stopped by SIGTERM, so a node run under a profiler writes its profile.
        let (mut a, mut b) = (a, b);
        a.terminate();
        b.terminate();
    }
}

/// Round-trip times in nanoseconds, after a warm-up.
async fn measure(client: &Client, rounds: usize) -> Histogram<u64> {
    let mut histogram = Histogram::new(3).expect("histogram");
    for _ in 0..rounds / 10 {
        client.ls().await.expect("warm-up Ls");
    }
    for _ in 0..rounds {
        let started = Instant::now();
        let names = client.ls().await.expect("Ls");
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        assert_eq!(names.len(), 3);
        histogram.record(elapsed).expect("record");
    }
    histogram
}

/// Requests in flight at once in the throughput rows.
const IN_FLIGHT: usize = 32;

/// Requests per second with [`IN_FLIGHT`] requests always outstanding, `rounds` in all.
async fn throughput(client: &Client, rounds: usize) -> f64 {
    let started = Instant::now();
    let workers = (0..IN_FLIGHT).map(|_| {
        let client = client.clone();
        async move {
            for _ in 0..rounds / IN_FLIGHT {
                let names = client.ls().await.expect("Ls");
                assert_eq!(names.len(), 3);
            }
        }
    });
    futures::future::join_all(workers).await;
    #[allow(clippy::cast_precision_loss)] // far below 2^52
    let done = (rounds / IN_FLIGHT * IN_FLIGHT) as f64;
    done / started.elapsed().as_secs_f64()
}

/// CPU time and thread switches of a process so far, summed over its threads.
#[derive(Debug, Default)]
struct Usage {
    cpu_ns: u64,
    switches: u64,
}

impl Usage {
    /// Reads `/proc/PID/task/*/schedstat` (nanoseconds on CPU) and `.../status` (voluntary
    /// and involuntary switches); zero on a system without them.
    fn of(pid: u32) -> Self {
        let mut usage = Self::default();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return usage };
        for task in tasks.flatten() {
            let path = task.path();
            let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            let on_cpu = schedstat.split_whitespace().next().and_then(|n| n.parse::<u64>().ok());
            usage.cpu_ns += on_cpu.unwrap_or(0);
            let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
            usage.switches += status
                .lines()
                .filter(|line| line.contains("ctxt_switches"))
                .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
        usage
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            cpu_ns: self.cpu_ns.saturating_sub(before.cpu_ns),
            switches: self.switches.saturating_sub(before.switches),
        }
    }
}
