//! Process-wide counters of the network stages, rendered in the Prometheus text format.
//!
//! `swarm-node --metrics ADDR` serves [`render`]; the stages count as they go. Counters are
//! plain atomics (and small maps keyed by stage or error kind), cheap enough for every request.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// A value that goes up and down: things open now.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

/// Counts one open thing until dropped.
#[derive(Debug)]
pub struct Open<'a>(&'a Gauge);

impl Gauge {
    const fn new() -> Self {
        Self(AtomicI64::new(0))
    }

    /// Counts one more until the guard drops.
    pub fn open(&self) -> Open<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Open(self)
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sessions open now (accepted by `listen`, dialled by `remote`).
pub static SESSIONS: Gauge = Gauge::new();
/// Request channels open now.
pub static CHANNELS: Gauge = Gauge::new();

static MESSAGES: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
static ERRORS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());
static TRAFFIC: Mutex<BTreeMap<String, StageTraffic>> = Mutex::new(BTreeMap::new());
static NEXT_TRACKED: AtomicU64 = AtomicU64::new(0);
static REDIALS: AtomicU64 = AtomicU64::new(0);
static RESENDS: AtomicU64 = AtomicU64::new(0);
static REFUSALS: AtomicU64 = AtomicU64::new(0);
static HANDSHAKE_FAILURES: AtomicU64 = AtomicU64::new(0);
static LATENCY: [AtomicU64; BUCKETS.len() + 1] = [const { AtomicU64::new(0) }; BUCKETS.len() + 1];
static LATENCY_SUM_MICROS: AtomicU64 = AtomicU64::new(0);

/// Counts the bytes `session` carries as `stage`'s until the guard drops (when the session
/// ends): live sessions are read at every scrape, ended ones are folded into the stage's total.
pub fn track_traffic(stage: &str, session: &libchan::Session) -> Tracked {
    let key = NEXT_TRACKED.fetch_add(1, Ordering::Relaxed);
    let mut traffic = TRAFFIC.lock().unwrap_or_else(PoisonError::into_inner);
    let entry = traffic.entry(stage.to_owned()).or_default();
    entry.live.insert(key, session.clone());
    Tracked { stage: stage.to_owned(), key }
}

/// A session whose bytes count as its stage's; see [`track_traffic`].
#[derive(Debug)]
pub struct Tracked {
    stage: String,
    key: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut traffic = TRAFFIC.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = traffic.get_mut(&self.stage) {
            if let Some(session) = entry.live.remove(&self.key) {
                let last = session.traffic();
                entry.ended_sent += last.sent;
                entry.ended_received += last.received;
            }
        }
    }
}

#[derive(Default)]
struct StageTraffic {
    ended_sent: u64,
    ended_received: u64,
    /// Sessions open now; each held only until its [`Tracked`] guard drops.
    live: HashMap<u64, libchan::Session>,
}

impl StageTraffic {
    fn totals(&self) -> (u64, u64) {
        self.live
            .values()
            .map(libchan::Session::traffic)
            .fold((self.ended_sent, self.ended_received), |(sent, received), now| {
                (sent + now.sent, received + now.received)
            })
    }
}

/// A request passed through `stage`.
pub fn count_message(stage: &str) {
    let mut messages = MESSAGES.lock().unwrap_or_else(PoisonError::into_inner);
    match messages.get_mut(stage) {
        Some(count) => *count += 1,
        None => {
            messages.insert(stage.to_owned(), 1);
        }
    }
}

/// A request failed: `connection`, `timeout`, `not_connected`, `decode`, ...
pub fn count_error(kind: &'static str) {
    *ERRORS.lock().unwrap_or_else(PoisonError::into_inner).entry(kind).or_default() += 1;
}

/// A `remote` stage dialled again after losing (or failing to reach) its node.
pub fn count_redial() {
    REDIALS.fetch_add(1, Ordering::Relaxed);
}

/// A `remote` stage sent a request again, which the node had refused unread (its accept
/// queue full, or no stream to spare).
pub fn count_resend() {
    RESENDS.fetch_add(1, Ordering::Relaxed);
}

/// A peer with a valid certificate was refused by an allow list.
pub fn count_refusal() {
    REFUSALS.fetch_add(1, Ordering::Relaxed);
}

/// A TLS or QUIC handshake failed (libchan logs these; `swarm-node` counts the log events).
pub fn count_handshake_failure() {
    HANDSHAKE_FAILURES.fetch_add(1, Ordering::Relaxed);
}

/// A request forwarded by `remote` got its first answer after `latency`.
pub fn observe_latency(latency: Duration) {
    let seconds = latency.as_secs_f64();
    let bucket = BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(BUCKETS.len());
    LATENCY[bucket].fetch_add(1, Ordering::Relaxed);
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    LATENCY_SUM_MICROS.fetch_add(micros, Ordering::Relaxed);
}

/// Every counter, in the Prometheus text exposition format (version 0.0.4).
pub fn render() -> String {
    let mut out = String::new();
    let gauge = |out: &mut String, name: &str, help: &str, value: i64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    };
    let counter = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    };
    gauge(&mut out, "swarm_sessions_open", "libchan sessions open", SESSIONS.get());
    gauge(&mut out, "swarm_channels_open", "request channels open", CHANNELS.get());
    let _ = writeln!(
        out,
        "# HELP swarm_messages_total requests through each network stage\n# TYPE swarm_messages_total counter"
    );
    for (stage, count) in MESSAGES.lock().unwrap_or_else(PoisonError::into_inner).iter() {
        let _ = writeln!(out, "swarm_messages_total{{stage=\"{}\"}} {count}", escape(stage));
    }
    let _ = writeln!(
        out,
        "# HELP swarm_bytes_total bytes on the sessions of each network stage\n# TYPE swarm_bytes_total counter"
    );
    for (stage, traffic) in TRAFFIC.lock().unwrap_or_else(PoisonError::into_inner).iter() {
        let (sent, received) = traffic.totals();
        let stage = escape(stage);
        let _ = writeln!(out, "swarm_bytes_total{{stage=\"{stage}\",direction=\"sent\"}} {sent}");
        let _ = writeln!(
            out,
            "swarm_bytes_total{{stage=\"{stage}\",direction=\"received\"}} {received}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP swarm_errors_total failed requests by kind\n# TYPE swarm_errors_total counter"
    );
    for (kind, count) in ERRORS.lock().unwrap_or_else(PoisonError::into_inner).iter() {
        let _ = writeln!(out, "swarm_errors_total{{kind=\"{kind}\"}} {count}");
    }
    counter(&mut out, "swarm_redials_total", "remote redials", REDIALS.load(Ordering::Relaxed));
    counter(
        &mut out,
        "swarm_resent_requests_total",
        "requests remote sent again after the node refused them unread",
        RESENDS.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "swarm_refused_peers_total",
        "peers refused by an allow list",
        REFUSALS.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "swarm_handshake_failures_total",
        "failed TLS and QUIC handshakes",
        HANDSHAKE_FAILURES.load(Ordering::Relaxed),
    );
    let name = "swarm_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} time to the first answer of requests forwarded by remote\n# TYPE {name} histogram"
    );
    let mut total = 0;
    for (index, bound) in BUCKETS.iter().enumerate() {
        total += LATENCY[index].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {total}");
    }
    total += LATENCY[BUCKETS.len()].load(Ordering::Relaxed);
    let sum = LATENCY_SUM_MICROS.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {total}\n{name}_sum {sum}\n{name}_count {total}"
    );
    out
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let _open = SESSIONS.open();
        count_message("listen \"x\"");
        observe_latency(Duration::from_micros(300));
        let text = render();
        assert!(text.contains("# TYPE swarm_sessions_open gauge\nswarm_sessions_open 1"), "{text}");
        assert!(text.contains("swarm_messages_total{stage=\"listen \\\"x\\\"\"} 1"), "{text}");
        assert!(text.contains("swarm_request_duration_seconds_bucket{le=\"0.0005\"} 1"), "{text}");
        assert!(text.contains("swarm_request_duration_seconds_count 1"), "{text}");
    }

    fn bytes(stage: &str, direction: &str) -> u64 {
        let text = render();
        let line = format!("swarm_bytes_total{{stage=\"{stage}\",direction=\"{direction}\"}} ");
        let at = text.find(&line).unwrap_or_else(|| panic!("no {line} in {text}")) + line.len();
        text[at..].lines().next().unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn traffic_is_read_live_and_kept_when_the_session_ends() {
        let limits = libchan::Limits::default();
        let listener = libchan::listen_with("tcp://127.0.0.1:0", limits.clone()).await.unwrap();
        let client = libchan::connect_with(listener.local_url(), limits).await.unwrap();
        let server = listener.accept().await.unwrap();
        let tracked = track_traffic("listen traffic-test", &server);
        let tx = client.open::<String>().await.unwrap();
        let mut rx = server.accept::<String>().await.unwrap();
        tx.send("x".repeat(10_000)).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().unwrap().len(), 10_000);
        let live = bytes("listen traffic-test", "received");
        assert!(live >= 10_000, "{live}");
        drop(tracked);
        let kept = bytes("listen traffic-test", "received");
        assert!(kept >= live, "{kept} < {live}");
        // No longer tracked: more traffic on the session does not count.
        tx.send("y".repeat(10_000)).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().unwrap().len(), 10_000);
        assert_eq!(bytes("listen traffic-test", "received"), kept);
    }
}
