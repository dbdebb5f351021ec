//! libchan against raw yamux streams on the same kind of connection (TCP loopback), in one
//! run, printing the ratios. `cargo bench -p libchan`; `-- --quick` for a short run.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use libchan::raw::RawYamux;
use libchan::{byte_pipe, pipe, ByteStream, Sender, Session};
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

struct Scale {
    messages: u64,
    round_trips: u64,
    bulk: usize,
    opens: u64,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick {
        Scale { messages: 200_000, round_trips: 2_000, bulk: 64 << 20, opens: 2_000 }
    } else {
        Scale { messages: 2_000_000, round_trips: 20_000, bulk: 1 << 30, opens: 20_000 }
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run(scale));
}

async fn run(scale: Scale) {
    let mut rows = Vec::new();
    let raw = one_way_raw(scale.messages).await;
    let chan = one_way_libchan(scale.messages).await;
    rows.push(("64 B one-way messages/s", fmt_rate(raw), fmt_rate(chan), chan / raw));

    let (raw50, raw99) = ping_pong_raw(scale.round_trips).await;
    let (chan50, chan99) = request_response_libchan(scale.round_trips).await;
    rows.push(("request/response p50 (us)", fmt_us(raw50), fmt_us(chan50), chan50 / raw50));
    rows.push(("request/response p99 (us)", fmt_us(raw99), fmt_us(chan99), chan99 / raw99));

    let raw = bulk_raw(scale.bulk).await;
    let chan = bulk_libchan(scale.bulk).await;
    rows.push((
        "byte stream bulk (GB/s)",
        format!("{:.2}", raw / 1e9),
        format!("{:.2}", chan / 1e9),
        chan / raw,
    ));

    let raw = opens_raw(scale.opens).await;
    let chan = opens_libchan(scale.opens).await;
    rows.push(("channel opens/s", fmt_rate(raw), fmt_rate(chan), chan / raw));

    println!("\n| yamux over TCP loopback | raw yamux stream | libchan | libchan / raw |");
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

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (a, b) = (a.unwrap(), b.unwrap().0);
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    (a, b)
}

async fn raw_pair() -> (RawYamux, RawYamux) {
    let (a, b) = tcp_pair().await;
    (RawYamux::start(a, true), RawYamux::start(b, false))
}

async fn session_pair() -> (Session, Session) {
    let listener = libchan::listen("tcp://127.0.0.1:0").await.unwrap();
    let client = libchan::connect(listener.local_url()).await.unwrap();
    (client, listener.accept().await.unwrap())
}

/// 64-byte records, length-prefixed, through buffered writes: the best raw yamux can do.
async fn one_way_raw(n: u64) -> f64 {
    let (a, mut b) = raw_pair().await;
    let (_, w) = a.open().await.unwrap();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let mut w = BufWriter::with_capacity(64 * 1024, w);
        let record = [0u8; 68];
        for _ in 0..n {
            w.write_all(&record).await.unwrap();
        }
        w.flush().await.unwrap();
        w.shutdown().await.unwrap();
    });
    w_first_byte(&mut b).await;
    let (r, _w) = b.inbound.recv().await.unwrap();
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let mut record = [0u8; 68];
    for _ in 0..n {
        r.read_exact(&mut record).await.unwrap();
    }
    writer.await.unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

async fn w_first_byte(_b: &mut RawYamux) {}

async fn one_way_libchan(n: u64) -> f64 {
    let (a, b) = session_pair().await;
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

async fn ping_pong_raw(n: u64) -> (f64, f64) {
    let (a, mut b) = raw_pair().await;
    let (mut r, mut w) = a.open().await.unwrap();
    w.write_all(&[0u8; 64]).await.unwrap();
    let (mut pr, mut pw) = b.inbound.recv().await.unwrap();
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while pr.read_exact(&mut buf).await.is_ok() {
            if pw.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let mut buf = [0u8; 64];
    r.read_exact(&mut buf).await.unwrap();
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for _ in 0..n {
        let start = Instant::now();
        w.write_all(&buf).await.unwrap();
        r.read_exact(&mut buf).await.unwrap();
        hist.record(start.elapsed().as_nanos() as u64).unwrap();
    }
    w.shutdown().await.unwrap();
    drop((r, w));
    let _ = tokio::time::timeout(Duration::from_secs(5), echo).await;
    percentiles(&hist)
}

async fn request_response_libchan(n: u64) -> (f64, f64) {
    let (a, b) = session_pair().await;
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

async fn bulk_raw(total: usize) -> f64 {
    let (a, mut b) = raw_pair().await;
    let (_, mut w) = a.open().await.unwrap();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![1u8; 256 * 1024];
        let mut sent = 0;
        while sent < total {
            w.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        w.shutdown().await.unwrap();
    });
    let (mut r, _w) = b.inbound.recv().await.unwrap();
    let got = drain(&mut r).await;
    assert!(got >= total);
    writer.await.unwrap();
    got as f64 / start.elapsed().as_secs_f64()
}

async fn bulk_libchan(total: usize) -> f64 {
    let (a, b) = session_pair().await;
    let tx = a.open::<ByteStream>().await.unwrap();
    let mut rx = b.accept::<ByteStream>().await.unwrap();
    let (mut mine, theirs) = byte_pipe();
    let start = Instant::now();
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
    assert!(got >= total);
    writer.await.unwrap();
    got as f64 / start.elapsed().as_secs_f64()
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
    let (a, mut b) = raw_pair().await;
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
    let (a, b) = session_pair().await;
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
