//! `--metrics ADDR`: the Prometheus text endpoint, and counting libchan's handshake failures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use backends::service::Tasks;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Serves `GET /metrics` on `addr` until shutdown; returns the bound address.
///
/// # Errors
/// The address cannot be bound.
pub(crate) async fn serve(addr: SocketAddr, tasks: &Tasks) -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind(addr).await.with_context(|| format!("cannot serve metrics on {addr}"))?;
    let bound = listener.local_addr().context("metrics address")?;
    let token = tasks.shutdown_token().clone();
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = token.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else { continue };
            // Over the limit, a scraper waits in the backlog rather than costing a task.
            let Ok(permit) = connections.clone().acquire_owned().await else { return };
            tokio::spawn(async move {
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream)).await;
                drop(permit);
            });
        }
    });
    tracing::info!(addr = %bound, "serving metrics");
    Ok(bound)
}

/// Reads one request head (bounded) and answers it.
async fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let (status, body) = if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET / ") {
        ("200 OK", backends::metrics::render())
    } else {
        ("404 Not Found", "try GET /metrics\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Counts the handshake failures libchan logs (`warn` events whose message mentions a
/// handshake), whatever `RUST_LOG` filters out of the output.
pub(crate) struct HandshakeCounter;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for HandshakeCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() != tracing::Level::WARN || !meta.target().starts_with("libchan") {
            return;
        }
        let mut visitor = Handshake(false);
        event.record(&mut visitor);
        if visitor.0 {
            backends::metrics::count_handshake_failure();
        }
    }
}

struct Handshake(bool);

impl tracing::field::Visit for Handshake {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" && value.contains("handshake") {
            self.0 = true;
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" && format!("{value:?}").contains("handshake") {
            self.0 = true;
        }
    }
}

const MAX_CONNECTIONS: usize = 16;
const MAX_HEAD: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
