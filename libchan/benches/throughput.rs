//! libchan against its raw transport, in one run per transport, printing the ratios:
//! yamux over TCP loopback against a raw yamux stream, `tls://` against a raw rustls stream,
//! `quic://` against a raw quinn stream. `cargo bench -p libchan`; `-- --quick` for a short
//! run; `-- tcp`, `-- tls` or `-- quic` for one transport; `-- oneway`, `-- rr`, `-- bulk` or
//! `-- opens` for some rows; `-- --in-task` runs every row's client side in a spawned task on
//! a worker thread instead of on the thread that blocks on the runtime (both ends, raw and
//! libchan, then run on the workers, as in a server); `-- --workers N` for N worker threads
//! instead of 2.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use libchan::raw::{BoxRead, RawYamux};
use libchan::{byte_pipe, pipe, ByteStream, Limits, Sender, Session, Tls};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

#[derive(Deserialize, Serialize)]
struct Small {
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

#[derive(Deserialize, Serialize)]
struct Request {
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
    reply: Sender<Small>,
}

#[derive(Clone)]
struct Scale {
    messages: u64,
    round_trips: u64,
    bulk: usize,
    /// Transfers of `bulk` bytes per bulk row, raw and libchan in turn.
    bulk_rounds: usize,
    opens: u64,
    handshakes: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Net {
    Tcp,
    Tls,
    Quic,
}

impl Net {
    fn title(self) -> &'static str {
        match self {
            Net::Tcp => "yamux over TCP loopback | raw yamux stream",
            Net::Tls => "tls:// (rustls + yamux) | raw rustls stream",
            Net::Quic => "quic:// (quinn) | raw quinn stream",
        }
    }
}

/// One direction-pair of a raw stream, and what keeps its connection open.
/// Any raw stream's write half (raw rustls and quinn streams too, not only yamux's).
type BoxWrite = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

struct RawStream {
    read: BoxRead,
    write: BoxWrite,
    _keep: Box<dyn Any + Send>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let scale = if quick {
        Scale {
            messages: 200_000,
            round_trips: 2_000,
            bulk: 64 << 20,
            bulk_rounds: 3,
            opens: 2_000,
            handshakes: 200,
        }
    } else {
        Scale {
            messages: 2_000_000,
            round_trips: 20_000,
            bulk: 1 << 30,
            bulk_rounds: 5,
            opens: 20_000,
            handshakes: 1_000,
        }
    };
    let only: Vec<Net> = args
        .iter()
        .filter_map(|a| match a.as_str() {
            "tcp" => Some(Net::Tcp),
            "tls" => Some(Net::Tls),
            "quic" => Some(Net::Quic),
            _ => None,
        })
        .collect();
    let nets = if only.is_empty() { vec![Net::Tcp, Net::Tls, Net::Quic] } else { only };
    let rows: Vec<&str> = ["oneway", "rr", "bulk", "opens"]
        .into_iter()
        .filter(|row| args.iter().any(|a| a == row))
        .collect();
    let rows = if rows.is_empty() { vec!["oneway", "rr", "bulk", "opens"] } else { rows };
    let workers = args.iter().position(|a| a == "--workers").map_or(2, |at| {
        args.get(at + 1).and_then(|n| n.parse().ok()).expect("--workers needs a number")
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    let in_task = args.iter().any(|a| a == "--in-task");
    for net in nets {
        if in_task {
            let (scale, rows) = (scale.clone(), rows.clone());
            let run = runtime.spawn(async move { run(net, &scale, &rows).await });
            runtime.block_on(run).unwrap();
        } else {
            runtime.block_on(run(net, &scale, &rows));
        }
    }
}

async fn run(net: Net, scale: &Scale, only: &[&str]) {
    let mut rows = Vec::new();
    if only.contains(&"oneway") {
        let raw = one_way_raw(net, scale.messages).await;
        let chan = one_way_libchan(net, scale.messages).await;
        rows.push(("64 B one-way messages/s", fmt_rate(raw), fmt_rate(chan), chan / raw));
    }
    if only.contains(&"rr") {
        let (raw50, raw99) = ping_pong_raw(net, scale.round_trips).await;
        let (chan50, chan99) = request_response_libchan(net, scale.round_trips).await;
        rows.push(("request/response p50 (us)", fmt_us(raw50), fmt_us(chan50), chan50 / raw50));
        rows.push(("request/response p99 (us)", fmt_us(raw99), fmt_us(chan99), chan99 / raw99));
        let (chan50, _) = ping_pong_libchan(net, scale.round_trips).await;
        rows.push((
            "ping-pong on two open channels p50 (us)",
            fmt_us(raw50),
            fmt_us(chan50),
            chan50 / raw50,
        ));
    }
    if only.contains(&"bulk") {
        // Each side's rate swings by up to half from one transfer to the next (how the
        // scheduler places the writer and reader on two cores), so the row takes the median of
        // several transfers, raw and libchan in turn. The CPU row is the process's CPU time
        // per GiB over the same transfers: what libchan costs beyond the raw stream, whatever
        // the scheduling.
        let mut raw = Bulk::default();
        let mut chan = Bulk::default();
        let mut yamux = Bulk::default();
        for _ in 0..scale.bulk_rounds {
            raw.add(bulk_raw(net, scale.bulk).await);
            chan.add(bulk_libchan(net, scale.bulk).await);
            if net == Net::Tls {
                // Where the TLS gap lies: yamux itself over the same rustls stream.
                yamux.add(bulk_yamux_over_tls(scale.bulk).await);
            }
        }
        let (raw_rate, chan_rate) = (raw.rate(), chan.rate());
        eprintln!("bulk transfers (GB/s, in turn): raw {}; libchan {}", raw.rates(), chan.rates());
        rows.push((
            "byte stream bulk (GB/s)",
            format!("{:.2}", raw_rate / 1e9),
            format!("{:.2}", chan_rate / 1e9),
            chan_rate / raw_rate,
        ));
        let (raw_cpu, chan_cpu) = (raw.cpu_per_gib(), chan.cpu_per_gib());
        rows.push((
            "byte stream bulk, CPU ms per GiB",
            format!("{raw_cpu:.0}"),
            format!("{chan_cpu:.0}"),
            chan_cpu / raw_cpu,
        ));
        if net == Net::Tls {
            let yamux_rate = yamux.rate();
            rows.push((
                "raw yamux over rustls, bulk (GB/s)",
                format!("{:.2}", raw_rate / 1e9),
                format!("{:.2}", yamux_rate / 1e9),
                yamux_rate / raw_rate,
            ));
        }
    }
    if !only.contains(&"opens") {
    } else if net == Net::Tcp {
        let raw = opens_raw(scale.opens).await;
        let chan = opens_libchan(scale.opens).await;
        rows.push(("channel opens/s", fmt_rate(raw), fmt_rate(chan), chan / raw));
    } else {
        let raw = handshakes_raw(net, scale.handshakes).await;
        let chan = handshakes_libchan(net, scale.handshakes).await;
        rows.push(("handshakes/s", fmt_rate(raw), fmt_rate(chan), chan / raw));
    }

    println!("\n| {} | libchan | libchan / raw |", net.title());
    println!("|---|---|---|---|");
    for (name, raw, chan, ratio) in rows {
        println!("| {name} | {raw} | {chan} | {ratio:.2} |");
    }
}

fn fmt_rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2} M", per_sec / 1e6)
    } else {
        format!("{:.1} k", per_sec / 1e3)
    }
}

fn fmt_us(us: f64) -> String {
    format!("{us:.1}")
}

/// A throwaway swarm: client and server identities, both named by 127.0.0.1.
fn swarm() -> &'static (certs::Identity, certs::Identity) {
    static SWARM: OnceLock<(certs::Identity, certs::Identity)> = OnceLock::new();
    SWARM.get_or_init(|| {
        let ca = certs::Ca::create("bench CA").unwrap();
        let ip = "127.0.0.1".parse().unwrap();
        let id = |name: &str| certs::Identity::new(&ca, &ca.issue(name, &[], &[ip]).unwrap());
        (id("client").unwrap(), id("server").unwrap())
    })
}

fn client_config() -> Arc<rustls::ClientConfig> {
    swarm().0.client_config()
}

fn server_config() -> Arc<rustls::ServerConfig> {
    swarm().1.server_config()
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (a, b) = (a.unwrap(), b.unwrap().0);
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    (a, b)
}

async fn raw_yamux_pair() -> (RawYamux, RawYamux) {
    let (a, b) = tcp_pair().await;
    (RawYamux::start(a, true), RawYamux::start(b, false))
}

/// A connected quinn client and server endpoint with libchan's transport settings.
async fn quic_pair() -> (quinn::Connection, quinn::Connection, quinn::Endpoint, quinn::Endpoint) {
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_config()).unwrap();
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(server_crypto)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr: SocketAddr = server.local_addr().unwrap();
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_config()).unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_crypto)));
    let (a, b) =
        tokio::join!(async { client.connect(addr, "127.0.0.1").unwrap().await.unwrap() }, async {
            server.accept().await.unwrap().await.unwrap()
        });
    (a, b, client, server)
}

/// A rustls client and server stream over TCP loopback.
async fn tls_pair(
) -> (tokio_rustls::client::TlsStream<TcpStream>, tokio_rustls::server::TlsStream<TcpStream>) {
    let (a, b) = tcp_pair().await;
    let connector = tokio_rustls::TlsConnector::from(client_config());
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config());
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let (a, b) = tokio::join!(connector.connect(name, a), acceptor.accept(b));
    (a.unwrap(), b.unwrap())
}

/// One raw stream of the transport, established both ways (a byte each way).
async fn raw_stream_pair(net: Net) -> (RawStream, RawStream) {
    let (a, b) = match net {
        Net::Tcp => {
            let (a, mut b) = raw_yamux_pair().await;
            let (read, mut write) = a.open().await.unwrap();
            write.write_all(&[1]).await.unwrap();
            let (their_read, their_write) = b.inbound.recv().await.unwrap();
            (
                RawStream { read, write, _keep: Box::new(a) },
                RawStream { read: their_read, write: their_write, _keep: Box::new(b) },
            )
        }
        Net::Tls => {
            let (a, b) = tls_pair().await;
            let (ar, mut aw) = tokio::io::split(a);
            let (br, bw) = tokio::io::split(b);
            aw.write_all(&[1]).await.unwrap();
            aw.flush().await.unwrap();
            (
                RawStream { read: Box::new(ar), write: Box::new(aw), _keep: Box::new(()) },
                RawStream { read: Box::new(br), write: Box::new(bw), _keep: Box::new(()) },
            )
        }
        Net::Quic => {
            let (a, b, client, server) = quic_pair().await;
            let (mut send, recv) = a.open_bi().await.unwrap();
            send.write_all(&[1]).await.unwrap();
            let (their_send, their_recv) = b.accept_bi().await.unwrap();
            (
                RawStream {
                    read: Box::new(recv),
                    write: Box::new(send),
                    _keep: Box::new((a, client)),
                },
                RawStream {
                    read: Box::new(their_recv),
                    write: Box::new(their_send),
                    _keep: Box::new((b, server)),
                },
            )
        }
    };
    let (a, mut b) = (a, b);
    let mut byte = [0u8; 1];
    b.read.read_exact(&mut byte).await.unwrap();
    (a, b)
}

async fn session_pair(net: Net) -> (Session, Session) {
    let url = match net {
        Net::Tcp => "tcp://127.0.0.1:0",
        Net::Tls => "tls://127.0.0.1:0",
        Net::Quic => "quic://127.0.0.1:0",
    };
    let (client, server) = (Tls::client(client_config()), Tls::server(server_config()));
    let listener = libchan::listen_secure(url, Limits::default(), &server).await.unwrap();
    let client =
        libchan::connect_secure(listener.local_url(), Limits::default(), &client).await.unwrap();
    (client, listener.accept().await.unwrap())
}

/// 64-byte records, length-prefixed, through buffered writes: the best the raw stream can do.
async fn one_way_raw(net: Net, n: u64) -> f64 {
    let (a, b) = raw_stream_pair(net).await;
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let mut w = BufWriter::with_capacity(64 * 1024, a.write);
        let record = [0u8; 68];
        for _ in 0..n {
            w.write_all(&record).await.unwrap();
        }
        w.flush().await.unwrap();
        w.shutdown().await.unwrap();
        a._keep
    });
    let mut r = BufReader::with_capacity(64 * 1024, b.read);
    let mut record = [0u8; 68];
    for _ in 0..n {
        r.read_exact(&mut record).await.unwrap();
    }
    let elapsed = start.elapsed();
    drop(writer.await.unwrap());
    n as f64 / elapsed.as_secs_f64()
}

async fn one_way_libchan(net: Net, n: u64) -> f64 {
    let (a, b) = session_pair(net).await;
    let tx = a.open::<Small>().await.unwrap();
    let mut rx = b.accept::<Small>().await.unwrap();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..n {
            tx.send(Small { payload: vec![0; 64] }).await.unwrap();
        }
        tx.close().await;
    });
    let mut got = 0;
    while let Some(msg) = rx.recv().await.unwrap() {
        assert_eq!(msg.payload.len(), 64);
        got += 1;
    }
    assert_eq!(got, n);
    writer.await.unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

fn percentiles(h: &Histogram<u64>) -> (f64, f64) {
    (h.value_at_quantile(0.5) as f64 / 1000.0, h.value_at_quantile(0.99) as f64 / 1000.0)
}

async fn ping_pong_raw(net: Net, n: u64) -> (f64, f64) {
    let (a, b) = raw_stream_pair(net).await;
    let (mut r, mut w) = (a.read, a.write);
    let (mut pr, mut pw) = (b.read, b.write);
    // Both ends flush: a rustls stream may keep a record it could not write at once until
    // flushed, and the round trip then waited forever (on yamux and quinn a flush is free).
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while pr.read_exact(&mut buf).await.is_ok() {
            if pw.write_all(&buf).await.is_err() || pw.flush().await.is_err() {
                break;
            }
        }
    });
    let mut buf = [0u8; 64];
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for i in 0..n + 100 {
        let start = Instant::now();
        w.write_all(&buf).await.unwrap();
        w.flush().await.unwrap();
        r.read_exact(&mut buf).await.unwrap();
        if i >= 100 {
            hist.record(start.elapsed().as_nanos() as u64).unwrap();
        }
    }
    w.shutdown().await.unwrap();
    drop((r, w));
    let _ = tokio::time::timeout(Duration::from_secs(5), echo).await;
    percentiles(&hist)
}

async fn request_response_libchan(net: Net, n: u64) -> (f64, f64) {
    let (a, b) = session_pair(net).await;
    let tx = a.open::<Request>().await.unwrap();
    let mut rx = b.accept::<Request>().await.unwrap();
    let server = tokio::spawn(async move {
        while let Ok(Some(req)) = rx.recv().await {
            let _ = req.reply.send(Small { payload: req.payload }).await;
        }
    });
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for i in 0..n + 100 {
        let start = Instant::now();
        let (reply, mut answer) = pipe();
        tx.send(Request { payload: vec![0; 64], reply }).await.unwrap();
        let got = answer.recv().await.unwrap().unwrap();
        assert_eq!(got.payload.len(), 64);
        if i >= 100 {
            hist.record(start.elapsed().as_nanos() as u64).unwrap();
        }
    }
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    percentiles(&hist)
}

/// 64 bytes there and back on two channels opened once: what a round trip costs without a
/// fresh return channel per request.
async fn ping_pong_libchan(net: Net, n: u64) -> (f64, f64) {
    let (a, b) = session_pair(net).await;
    let there = a.open::<Small>().await.unwrap();
    let mut at_b = b.accept::<Small>().await.unwrap();
    let back = b.open::<Small>().await.unwrap();
    let mut at_a = a.accept::<Small>().await.unwrap();
    let echo = tokio::spawn(async move {
        while let Ok(Some(msg)) = at_b.recv().await {
            if back.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for i in 0..n + 100 {
        let start = Instant::now();
        there.send(Small { payload: vec![0; 64] }).await.unwrap();
        let got = at_a.recv().await.unwrap().unwrap();
        assert_eq!(got.payload.len(), 64);
        if i >= 100 {
            hist.record(start.elapsed().as_nanos() as u64).unwrap();
        }
    }
    drop(there);
    let _ = tokio::time::timeout(Duration::from_secs(5), echo).await;
    percentiles(&hist)
}

/// One bulk transfer: its rate in bytes per second, and the process's CPU time per byte.
#[derive(Clone, Copy)]
struct Transfer {
    rate: f64,
    cpu_per_byte: f64,
}

/// The transfers of one bulk row.
#[derive(Default)]
struct Bulk(Vec<Transfer>);

impl Bulk {
    fn add(&mut self, transfer: Transfer) {
        self.0.push(transfer);
    }

    fn rate(&self) -> f64 {
        median(self.0.iter().map(|t| t.rate))
    }

    /// Each transfer's rate, in GB/s.
    fn rates(&self) -> String {
        let rates: Vec<String> = self.0.iter().map(|t| format!("{:.2}", t.rate / 1e9)).collect();
        rates.join(", ")
    }

    fn cpu_per_gib(&self) -> f64 {
        median(self.0.iter().map(|t| t.cpu_per_byte)) * (1u64 << 30) as f64 * 1e3
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The process's user and system CPU time so far, in seconds (`/proc/self/stat`, in the
/// kernel's clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Measures a transfer of `got` bytes, from `start` and `cpu` (the process's CPU time then).
fn transfer(got: usize, start: Instant, cpu: f64) -> Transfer {
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    Transfer { rate: got as f64 / elapsed, cpu_per_byte: cpu / got as f64 }
}

async fn bulk_raw(net: Net, total: usize) -> Transfer {
    let (a, b) = raw_stream_pair(net).await;
    bulk_on(a, b, total).await
}

/// [`bulk_raw`] on a raw yamux stream over a rustls stream: the same driver and configuration
/// as `tls://` sessions, without libchan's framing and byte-stream relay.
async fn bulk_yamux_over_tls(total: usize) -> Transfer {
    let (a, b) = tls_pair().await;
    let (a, mut b) = (RawYamux::start_on(a, true, false), RawYamux::start_on(b, false, false));
    let (read, mut write) = a.open().await.unwrap();
    write.write_all(&[1]).await.unwrap();
    let (mut their_read, their_write) = b.inbound.recv().await.unwrap();
    let mut byte = [0u8; 1];
    their_read.read_exact(&mut byte).await.unwrap();
    bulk_on(
        RawStream { read, write, _keep: Box::new(a) },
        RawStream { read: their_read, write: their_write, _keep: Box::new(b) },
        total,
    )
    .await
}

/// 256 KiB writes on `a`, read from `b` until the end.
async fn bulk_on(a: RawStream, mut b: RawStream, total: usize) -> Transfer {
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let writer = tokio::spawn(async move {
        let mut w = a.write;
        let chunk = vec![1u8; 256 * 1024];
        let mut sent = 0;
        while sent < total {
            w.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        w.shutdown().await.unwrap();
        a._keep
    });
    let got = drain(&mut b.read).await;
    let measured = transfer(got, start, cpu);
    assert!(got >= total);
    drop(writer.await.unwrap());
    measured
}

async fn bulk_libchan(net: Net, total: usize) -> Transfer {
    let (a, b) = session_pair(net).await;
    let tx = a.open::<ByteStream>().await.unwrap();
    let mut rx = b.accept::<ByteStream>().await.unwrap();
    let (mut mine, theirs) = byte_pipe();
    let (start, cpu) = (Instant::now(), cpu_seconds());
    tx.send(theirs).await.unwrap();
    let writer = tokio::spawn(async move {
        let chunk = vec![1u8; 256 * 1024];
        let mut sent = 0;
        while sent < total {
            mine.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        mine.shutdown().await.unwrap();
    });
    let mut stream = rx.recv().await.unwrap().unwrap();
    let got = drain(&mut stream).await;
    let measured = transfer(got, start, cpu);
    assert!(got >= total);
    writer.await.unwrap();
    measured
}

async fn drain<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> usize {
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            return got;
        }
        got += n;
    }
}

/// Open a stream, send one small record, the peer accepts and reads it; one at a time.
async fn opens_raw(n: u64) -> f64 {
    let (a, mut b) = raw_yamux_pair().await;
    let start = Instant::now();
    let acceptor = tokio::spawn(async move {
        for _ in 0..n {
            let (mut r, mut w) = b.inbound.recv().await.unwrap();
            let mut byte = [0u8; 1];
            r.read_exact(&mut byte).await.unwrap();
            w.write_all(&byte).await.unwrap();
            w.shutdown().await.unwrap();
        }
    });
    for _ in 0..n {
        let (mut r, mut w) = a.open().await.unwrap();
        w.write_all(&[1]).await.unwrap();
        let mut byte = [0u8; 1];
        r.read_exact(&mut byte).await.unwrap();
        w.shutdown().await.unwrap();
    }
    acceptor.await.unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

async fn opens_libchan(n: u64) -> f64 {
    let (a, b) = session_pair(Net::Tcp).await;
    let start = Instant::now();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let acceptor = tokio::spawn(async move {
        for _ in 0..n {
            let mut rx = b.accept::<u8>().await.unwrap();
            assert_eq!(rx.recv().await.unwrap(), Some(1));
            done_tx.send(()).await.unwrap();
        }
    });
    for _ in 0..n {
        let tx = a.open::<u8>().await.unwrap();
        tx.send(1).await.unwrap();
        done_rx.recv().await.unwrap();
        tx.close().await;
    }
    acceptor.await.unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

/// Full handshakes one after another, each ending with a byte there and back.
async fn handshakes_raw(net: Net, n: u64) -> f64 {
    let start = Instant::now();
    match net {
        Net::Tcp => unreachable!("TCP has no handshake row"),
        Net::Tls => {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(server_config());
            let server = tokio::spawn(async move {
                for _ in 0..n {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let mut tls = acceptor.accept(tcp).await.unwrap();
                    let mut byte = [0u8; 1];
                    tls.read_exact(&mut byte).await.unwrap();
                    tls.write_all(&byte).await.unwrap();
                    tls.flush().await.unwrap();
                }
            });
            let connector = tokio_rustls::TlsConnector::from(client_config());
            for _ in 0..n {
                let tcp = TcpStream::connect(addr).await.unwrap();
                tcp.set_nodelay(true).unwrap();
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let mut tls = connector.connect(name, tcp).await.unwrap();
                tls.write_all(&[1]).await.unwrap();
                tls.flush().await.unwrap();
                let mut byte = [0u8; 1];
                tls.read_exact(&mut byte).await.unwrap();
            }
            server.await.unwrap();
        }
        Net::Quic => {
            let (_, _, client, server) = quic_pair().await;
            let addr = server.local_addr().unwrap();
            let serve = tokio::spawn(async move {
                for _ in 0..n {
                    let conn = server.accept().await.unwrap().await.unwrap();
                    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
                    let mut byte = [0u8; 1];
                    recv.read_exact(&mut byte).await.unwrap();
                    send.write_all(&byte).await.unwrap();
                    let _ = send.finish();
                    let _ = conn.closed().await;
                }
            });
            for _ in 0..n {
                let conn = client.connect(addr, "127.0.0.1").unwrap().await.unwrap();
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                send.write_all(&[1]).await.unwrap();
                let mut byte = [0u8; 1];
                recv.read_exact(&mut byte).await.unwrap();
                conn.close(0u32.into(), b"");
            }
            serve.await.unwrap();
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Sessions one after another: connect, accept, one message, the server closes.
async fn handshakes_libchan(net: Net, n: u64) -> f64 {
    let url = if net == Net::Tls { "tls://127.0.0.1:0" } else { "quic://127.0.0.1:0" };
    let (client, server) = (Tls::client(client_config()), Tls::server(server_config()));
    let listener = libchan::listen_secure(url, Limits::default(), &server).await.unwrap();
    let url = listener.local_url().to_string();
    let start = Instant::now();
    let serve = tokio::spawn(async move {
        for _ in 0..n {
            let session = listener.accept().await.unwrap();
            let mut rx = session.accept::<u8>().await.unwrap();
            assert_eq!(rx.recv().await.unwrap(), Some(1));
            session.close(libchan::proto::Code::Ok, "done").await;
        }
    });
    for _ in 0..n {
        let session = libchan::connect_secure(&url, Limits::default(), &client).await.unwrap();
        let tx = session.open::<u8>().await.unwrap();
        tx.send(1).await.unwrap();
        session.closed().await;
    }
    serve.await.unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}
