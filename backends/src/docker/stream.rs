//! Byte-stream plumbing shared by the server and the client: the hijacked-connection bridge
//! with Docker's half-close rules, and response bodies copied into byte streams.

use std::io;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Joins two duplex streams the way an attach connection needs it: what `client` writes goes
/// to `process` (stdin), and the end of it only shuts down `process`'s write side (stdin EOF;
/// output keeps flowing); what `process` writes goes to `client` (output), and the end of it
/// shuts `client` down and ends the bridge. Ends at `shutdown`, too.
///
/// # Cancel safety
/// Dropping the future drops both streams.
pub async fn bridge<C, P>(client: C, process: P, shutdown: CancellationToken)
where
    C: AsyncRead + AsyncWrite + Send + Unpin,
    P: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut process_read, mut process_write) = tokio::io::split(process);
    let input = async {
        if let Err(error) = tokio::io::copy(&mut client_read, &mut process_write).await {
            tracing::debug!(%error, "attach input ended");
        }
        let _ = process_write.shutdown().await;
        // The output decides when the bridge ends.
        std::future::pending::<()>().await;
    };
    let output = async {
        if let Err(error) = tokio::io::copy(&mut process_read, &mut client_write).await {
            tracing::debug!(%error, "attach output ended");
        }
        let _ = client_write.shutdown().await;
    };
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = input => {}
        () = output => {}
    }
}

/// Copies an HTTP body into `out`, then shuts `out` down. Stops early if the reader of `out`
/// goes away or at `shutdown`.
///
/// # Errors
/// The body's or the writer's error.
pub async fn copy_body<B, W>(mut body: B, mut out: W, shutdown: CancellationToken) -> io::Result<()>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
    W: AsyncWrite + Unpin,
{
    loop {
        let frame = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            frame = body.frame() => frame,
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|error| io::Error::other(error.to_string()))?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data).await?;
        }
    }
    out.shutdown().await
}
