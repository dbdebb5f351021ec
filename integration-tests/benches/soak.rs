//! A bounded soak: many concurrent clients through a routing node A to B (QUIC) and C (TLS),
//! real node processes, with random faults, then a report.
//!
//! ```sh
//! cargo bench -p integration-tests --bench soak -- --secs 120 --clients 32
//! cargo bench -p integration-tests --bench soak -- --netns   # as root: namespaces, cuts too
//! ```
//!
//! A runs `listen unix://...` + `aggregate "remote B" "remote C"`; B and C run simulators.
//! Each client loops until the end: `Ls`, `Attach(NAME)` + `Get`, or `Spawn` + `Get` +
//! `Stop("rm")`, and checks every answer it gets. Faults, one at a time at random intervals:
//! SIGKILL of B or C and a restart on the same address a moment later, and with `--netns`
//! also a network cut of B (iptables DROP) mended a few seconds later.
//!
//! The report: operations sent, delivered (answered as expected), errored (a clear `Error`
//! answer), by kind, unanswered (no answer within the bound: must be 0), wrong answers (must
//! be 0), and the memory high-water mark (`VmHWM`) of each node process, with A's descriptor
//! count before and after. Options: `--secs N` (120), `--clients N` (32), `--seed N`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use backends::service::{Client, ClientError, Tasks, Verb};
use integration_tests::{can_make_hosts, client, Hosts, Node, Swarm, LIMIT};

const BIN: &str = env!("CARGO_BIN_EXE_node-under-test");
/// A's `remote` stages wait this long for a first answer.
const REMOTE_TIMEOUT_SECS: u64 = 10;
/// The bound on one operation (its requests together); past it, it counts as unanswered.
const OPERATION_BOUND: Duration = Duration::from_secs(40);
// Not hexadecimal, so no container id (matched by prefix) can be taken for one of them.
const B_NAMES: [&str; 3] = ["bw1", "bw2", "bw3"];
const C_NAMES: [&str; 2] = ["cw1", "cw2"];
const PORT: u16 = 7300;

fn main() {
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(options));
}

struct Options {
    secs: u64,
    clients: usize,
    seed: u64,
    netns: bool,
}

impl Options {
    fn parse() -> Self {
        let mut options = Self {
            secs: 120,
            clients: 32,
            seed: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
            netns: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut number = |what: &str| -> u64 {
                args.next().and_then(|n| n.parse().ok()).unwrap_or_else(|| {
                    eprintln!("{arg} needs {what}");
                    std::process::exit(2)
                })
            };
            match arg.as_str() {
                "--secs" => options.secs = number("a number of seconds"),
                "--clients" => options.clients = number("a number of clients") as usize,
                "--seed" => options.seed = number("a number"),
                "--netns" => options.netns = true,
                // cargo bench passes --bench; other harness flags mean nothing here.
                _ => {}
            }
        }
        options.seed |= 1;
        options
    }
}

/// Where a serving node runs and how to start it again.
struct Place {
    name: &'static str,
    listen: String,
    names: Vec<&'static str>,
    netns: Option<String>,
    node: Option<Node>,
    high_water_kib: u64,
    starts: u32,
}

impl Place {
    fn start(&mut self, swarm: &Swarm) {
        let mut builder = swarm
            .node(self.name)
            .with_certs()
            .args([self.listen.clone(), format!("simulator {}", self.names.join(" "))]);
        if let Some(netns) = &self.netns {
            builder = builder.in_netns(netns);
        }
        let node = builder.start();
        if self.listen.ends_with(":0") {
            self.listen = format!("listen {}", node.url());
        }
        self.node = Some(node);
        self.starts += 1;
    }

    fn sample(&mut self) {
        if let Some(kib) = self.node.as_ref().and_then(Node::memory_high_water_kib) {
            self.high_water_kib = self.high_water_kib.max(kib);
        }
    }

    fn kill(&mut self) {
        self.sample();
        if let Some(mut node) = self.node.take() {
            node.kill();
        }
    }

    fn url(&self) -> &str {
        self.listen.trim_start_matches("listen ")
    }
}

#[derive(Default)]
struct Tally {
    sent: u64,
    delivered: u64,
    errored: BTreeMap<String, u64>,
    /// One example text per error kind.
    examples: BTreeMap<String, String>,
    unanswered: u64,
    wrong: Vec<String>,
    slowest: Duration,
}

enum Outcome {
    Delivered,
    Errored(ClientError),
    Wrong(String),
}

async fn run(options: Options) {
    let netns = options.netns && can_make_hosts(true);
    if options.netns && !netns {
        eprintln!("--netns needs root, ip and iptables: running on loopback");
    }
    let swarm = Swarm::new(BIN);
    let hosts = netns.then(Hosts::new);
    let (b_listen, c_listen) = match &hosts {
        Some(_) => {
            (format!("listen quic://0.0.0.0:{PORT}"), format!("listen tls://0.0.0.0:{PORT}"))
        }
        None => ("listen quic://127.0.0.1:0".to_owned(), "listen tls://127.0.0.1:0".to_owned()),
    };
    let mut b = Place {
        name: "node-b",
        listen: b_listen,
        names: B_NAMES.to_vec(),
        netns: hosts.as_ref().map(|h| h.b.clone()),
        node: None,
        high_water_kib: 0,
        starts: 0,
    };
    let mut c = Place {
        name: "node-c",
        listen: c_listen,
        names: C_NAMES.to_vec(),
        netns: hosts.as_ref().map(|h| h.c.clone()),
        node: None,
        high_water_kib: 0,
        starts: 0,
    };
    b.start(&swarm);
    c.start(&swarm);
    let (b_url, c_url) = match &hosts {
        Some(h) => (format!("quic://{}:{PORT}", h.b_addr), format!("tls://{}:{PORT}", h.c_addr)),
        None => (b.url().to_owned(), c.url().to_owned()),
    };
    let socket = swarm.path("a.sock");
    let mut a_builder = swarm.node("node-a").with_certs().args([
        format!("listen unix://{}", socket.display()),
        format!(
            "aggregate \"remote {b_url} --node node-b --timeout {REMOTE_TIMEOUT_SECS}\" \"remote {c_url} --node node-c --timeout {REMOTE_TIMEOUT_SECS}\""
        ),
    ]);
    if let Some(h) = &hosts {
        a_builder = a_builder.in_netns(&h.a);
    }
    let mut a = a_builder.start();
    let tasks = Tasks::new();
    let host = client(a.url(), LIMIT, &tasks).await;
    let mut all: Vec<&str> = B_NAMES.iter().chain(&C_NAMES).copied().collect();
    all.sort_unstable();
    tokio::time::timeout(LIMIT, wait_for_all(&host, &all)).await.expect("A reaches B and C");
    let fds_before = open_descriptors(a.pid());

    println!(
        "soak: {} s, {} clients, seed {}, {}",
        options.secs,
        options.clients,
        options.seed,
        if netns { "network namespaces (kill -9 and network cuts)" } else { "loopback (kill -9)" }
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.secs);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut clients = Vec::new();
    for id in 0..options.clients {
        let host = host.clone();
        let tally = tally.clone();
        let seed = options.seed.wrapping_add(id as u64 * 0x9E37_79B9_7F4A_7C15) | 1;
        clients.push(tokio::spawn(client_loop(host, tally, seed, deadline)));
    }
    let faults_done = Arc::new(AtomicBool::new(false));
    let mut fault_log = Vec::new();
    let (b, c, fault_log, a_high_water) = tokio::task::spawn_blocking({
        let done = faults_done.clone();
        let seed = options.seed;
        move || {
            let mut a_high_water = 0;
            inject_faults(
                &swarm,
                hosts.as_ref(),
                [&mut b, &mut c],
                &mut a,
                &mut a_high_water,
                seed,
                deadline,
                &mut fault_log,
            );
            done.store(true, Ordering::Relaxed);
            (b, c, fault_log, (a, a_high_water, swarm, hosts))
        }
    })
    .await
    .expect("fault thread");
    for client in clients {
        client.await.expect("client task");
    }
    let elapsed = started.elapsed();
    let (mut a, a_high_water, _swarm, _hosts) = a_high_water;

    // Everything is back: every name answers again, through the same A.
    let recovered = tokio::time::timeout(LIMIT, wait_for_all(&host, &all)).await.is_ok();
    let fds_after = open_descriptors(a.pid());
    let a_high_water = a_high_water.max(a.memory_high_water_kib().unwrap_or(0));
    assert!(tasks.shutdown(LIMIT).await, "client tasks did not end");
    let a_exit = a.terminate();
    let mut b = b;
    let mut c = c;
    b.sample();
    c.sample();
    let b_exit = b.node.as_mut().map(Node::terminate);
    let c_exit = c.node.as_mut().map(Node::terminate);

    let tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
    let errored: u64 = tally.errored.values().sum();
    println!();
    println!("## Soak report\n");
    println!("| | |\n|---|---|");
    println!("| duration | {:.0} s |", elapsed.as_secs_f64());
    println!("| clients | {} |", options.clients);
    println!("| faults | {} |", fault_log.len());
    println!("| operations sent | {} |", tally.sent);
    println!("| delivered (answered as expected) | {} |", tally.delivered);
    println!("| errored (a clear error answer) | {errored} |");
    println!("| unanswered within {OPERATION_BOUND:?} | {} |", tally.unanswered);
    println!("| wrong answers | {} |", tally.wrong.len());
    println!("| slowest answered operation | {:.2} s |", tally.slowest.as_secs_f64());
    println!("| A recovered at the end | {recovered} |");
    println!("| A open descriptors, before / after | {fds_before} / {fds_after} |");
    println!("\nErrors by kind:\n\n| kind | count | example |\n|---|---|---|");
    for (kind, count) in &tally.errored {
        let example = tally.examples.get(kind).map_or("", String::as_str);
        println!("| {kind} | {count} | `{}` |", example.replace('|', "\\|"));
    }
    println!("\nMemory high-water mark (VmHWM) per node process:\n");
    println!(
        "| node | starts | VmHWM (max over its processes) | exit at the end |\n|---|---|---|---|"
    );
    println!("| node-a | 1 | {} KiB | {a_exit} |", a_high_water);
    for (place, exit) in [(&b, b_exit), (&c, c_exit)] {
        let exit = exit.map_or("not running".to_owned(), |status| status.to_string());
        println!("| {} | {} | {} KiB | {exit} |", place.name, place.starts, place.high_water_kib);
    }
    println!("\nFaults:\n");
    for line in &fault_log {
        println!("- {line}");
    }
    for wrong in tally.wrong.iter().take(10) {
        println!("wrong answer: {wrong}");
    }
    let ok = tally.unanswered == 0 && tally.wrong.is_empty() && recovered;
    println!("\nresult: {}", if ok { "PASS" } else { "FAIL" });
    if !ok {
        std::process::exit(1);
    }
}

/// Lists until every name answers.
async fn wait_for_all(host: &Client, all: &[&str]) {
    loop {
        if let Ok(names) = host.ls().await {
            if all.iter().all(|name| names.iter().any(|listed| listed == name)) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn client_loop(host: Client, tally: Arc<Mutex<Tally>>, seed: u64, deadline: Instant) {
    let mut random = Random(seed);
    let mut spawned = 0u64;
    while Instant::now() < deadline {
        let started = Instant::now();
        let choice = random.below(10);
        let outcome = tokio::time::timeout(OPERATION_BOUND, async {
            match choice {
                0..=3 => list(&host).await,
                4..=7 => {
                    let names: Vec<&str> = B_NAMES.iter().chain(&C_NAMES).copied().collect();
                    let name = names[random.below(names.len() as u64) as usize];
                    inspect(&host, name).await
                }
                _ => {
                    spawned += 1;
                    create_and_remove(&host, spawned).await
                }
            }
        })
        .await;
        let took = started.elapsed();
        let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
        tally.sent += 1;
        match outcome {
            Err(_) => tally.unanswered += 1,
            Ok(Outcome::Delivered) => {
                tally.delivered += 1;
                tally.slowest = tally.slowest.max(took);
            }
            Ok(Outcome::Wrong(text)) => tally.wrong.push(text),
            Ok(Outcome::Errored(error)) => {
                if matches!(error, ClientError::Timeout { .. }) {
                    tally.unanswered += 1;
                    continue;
                }
                tally.slowest = tally.slowest.max(took);
                let kind = kind_of(&error);
                *tally.errored.entry(kind.clone()).or_default() += 1;
                tally.examples.entry(kind).or_insert_with(|| error.to_string());
            }
        }
    }
}

async fn list(host: &Client) -> Outcome {
    match host.ls().await {
        // What answers is listed; never a name that is not there.
        Ok(names) => {
            let known = |name: &String| {
                B_NAMES.contains(&name.as_str())
                    || C_NAMES.contains(&name.as_str())
                    || name.starts_with("sim_")
            };
            if names.iter().all(known) && !names.is_empty() {
                Outcome::Delivered
            } else {
                Outcome::Wrong(format!("Ls: {names:?}"))
            }
        }
        Err(error) => Outcome::Errored(error),
    }
}

async fn inspect(host: &Client, name: &str) -> Outcome {
    let object = match host.attach(name).await {
        Ok(attached) => attached.object,
        Err(error) => return Outcome::Errored(error),
    };
    match object.get().await {
        Ok(state) if state.contains(&format!("\"Name\":\"/{name}\"")) => Outcome::Delivered,
        Ok(state) => Outcome::Wrong(format!("Get of {name}: {state}")),
        Err(error) => Outcome::Errored(error),
    }
}

async fn create_and_remove(host: &Client, n: u64) -> Outcome {
    let config = r#"{"Image":"bb","Cmd":["sleep","1"]}"#;
    let object = match host.spawn([config]).await {
        Ok(object) => object,
        Err(error) => return Outcome::Errored(error),
    };
    let state = match object.get().await {
        Ok(state) => state,
        Err(error) => return Outcome::Errored(error),
    };
    if !state.contains("\"Image\":\"bb\"") {
        return Outcome::Wrong(format!("Get of spawned #{n}: {state}"));
    }
    match object.call(Verb::Stop, ["rm", "force"]).await {
        Ok(_) => Outcome::Delivered,
        Err(error) => Outcome::Errored(error),
    }
}

/// A short name for the kind of an error.
fn kind_of(error: &ClientError) -> String {
    let text = error.to_string();
    let kind = match error {
        ClientError::Remote { .. } if text.contains("connection lost") => "connection lost",
        ClientError::Remote { .. } if text.contains("not connected") => "not connected",
        ClientError::Remote { .. } if text.contains("no answer within") => "first answer timeout",
        ClientError::Remote { .. } if text.contains("cannot send") => "cannot send",
        ClientError::Remote { .. } if text.contains("protocol violation") => "protocol violation",
        ClientError::Remote { .. } if text.contains("every child failed") => "every child failed",
        ClientError::Remote { .. } if text.contains("no such") => "no such container",
        ClientError::Remote { .. } => "other error answer",
        ClientError::NoReply { .. } => "no reply (answer channel ended without an answer)",
        ClientError::Timeout { .. } => "client timeout",
        ClientError::Closed { .. } => "service gone",
        ClientError::Recv { .. } => "answer channel failed",
        _ => "other",
    };
    kind.to_owned()
}

/// Kills and restarts B or C, or (in namespaces) cuts B off and mends it, at random
/// intervals until `deadline`, sampling memory every 100 ms.
#[allow(clippy::too_many_arguments)]
fn inject_faults(
    swarm: &Swarm,
    hosts: Option<&Hosts>,
    places: [&mut Place; 2],
    a: &mut Node,
    a_high_water: &mut u64,
    seed: u64,
    deadline: Instant,
    log: &mut Vec<String>,
) {
    let mut random = Random(seed ^ 0x5DEE_CE66);
    let [b, c] = places;
    let started = Instant::now();
    let mut wait = |until: Instant, b: &mut Place, c: &mut Place, a: &mut Node| {
        while Instant::now() < until.min(deadline) {
            b.sample();
            c.sample();
            *a_high_water = (*a_high_water).max(a.memory_high_water_kib().unwrap_or(0));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    loop {
        let calm = Duration::from_millis(2_000 + random.below(4_000));
        wait(Instant::now() + calm, b, c, a);
        if Instant::now() >= deadline {
            break;
        }
        let at = started.elapsed().as_secs_f64();
        let down = Duration::from_millis(500 + random.below(3_000));
        let cut = hosts.is_some() && random.below(3) == 0;
        if cut {
            let hosts = hosts.expect("checked");
            hosts.cut_b();
            // Longer than the idle bound half of the time, so sessions die and come back.
            let down = Duration::from_millis(1_000 + random.below(8_000));
            wait(Instant::now() + down, b, c, a);
            hosts.mend_b();
            log.push(format!("{at:.1} s: network cut of node-b for {:.1} s", down.as_secs_f64()));
            continue;
        }
        let place = if random.below(2) == 0 { &mut *b } else { &mut *c };
        place.kill();
        let name = place.name;
        wait(Instant::now() + down, b, c, a);
        let place = if name == b.name { &mut *b } else { &mut *c };
        place.start(swarm);
        log.push(format!(
            "{at:.1} s: kill -9 of {name}, restarted after {:.1} s",
            down.as_secs_f64()
        ));
    }
    // Both serve at the end.
    for place in [b, c] {
        if place.node.is_none() {
            place.start(swarm);
        }
    }
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// xorshift64: reproducible faults and operations from `--seed`.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
