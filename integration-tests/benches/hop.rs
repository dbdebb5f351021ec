//! What one routing hop costs: request/response to B directly, and through A (which runs
//! `remote` to B), over QUIC and over TLS. Real node processes on loopback; the client is
//! an in-process `remote` stage. Prints p50/p99 and the ratio of the p50s.
//!
//! `cargo bench -p integration-tests --bench hop` (`-- --quick` for a tenth of the rounds).

use std::time::{Duration, Instant};

use backends::service::{Client, Tasks};
use hdrhistogram::Histogram;
use integration_tests::{client_of, Swarm, LIMIT};

const BIN: &str = env!("CARGO_BIN_EXE_node-under-test");

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let rounds = if quick { 500 } else { 5_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(rounds));
}

async fn run(rounds: usize) {
    let swarm = Swarm::new(BIN);
    let me = swarm.identity("bench-client");
    println!("routing hop, {rounds} sequential Ls round trips per path (simulator with 3 names)");
    println!("| transport | direct p50 (us) | direct p99 (us) | via A p50 (us) | via A p99 (us) | p50 ratio |");
    println!("|---|---|---|---|---|---|");
    for scheme in ["quic", "tls"] {
        let b = swarm
            .node("node-b")
            .with_certs()
            .args([format!("listen {scheme}://127.0.0.1:0"), "simulator x y z".to_owned()])
            .start();
        let a = swarm
            .node("node-a")
            .with_certs()
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
        let direct = measure(&direct, rounds).await;
        let routed = measure(&routed, rounds).await;
        let p = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {scheme} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
            p(&direct, 0.5),
            p(&direct, 0.99),
            p(&routed, 0.5),
            p(&routed, 0.99),
            p(&routed, 0.5) / p(&direct, 0.5)
        );
        tasks.shutdown(Duration::from_secs(5)).await;
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
