//! `quic://`: quinn, one bidirectional QUIC stream per channel, byte stream and control
//! stream.
//!
//! The session code is the same as over yamux; QUIC adds the mapping of closes onto streams
//! and connections (a clean end finishes the stream, a dropped reader stops it, a session
//! close is a CONNECTION_CLOSE carrying the code and reason) and its own flow control, with
//! the connection receive window capped so a peer cannot make us buffer without bound.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, Endpoint, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use super::tls::Tls;
use super::{Mux, RawStream, StreamWrite};
use crate::proto::Code;
use crate::session::PeerInfo;
use crate::{ConnectError, Limits, Session};

/// The session's handle on a QUIC connection.
struct QuicMux {
    conn: quinn::Connection,
    /// Keeps a dialer's own endpoint (its UDP socket) open as long as the session.
    endpoint: Option<Endpoint>,
}

impl Mux for QuicMux {
    fn open(&self) -> BoxFuture<'static, io::Result<RawStream>> {
        let conn = self.conn.clone();
        Box::pin(async move {
            let (send, recv) = conn.open_bi().await.map_err(io::Error::from)?;
            Ok(RawStream::quic(send, recv))
        })
    }

    fn try_open(&self) -> Option<io::Result<RawStream>> {
        use futures::FutureExt;
        let (send, recv) = self.conn.open_bi().now_or_never()?.ok()?;
        Some(Ok(RawStream::quic(send, recv)))
    }

    fn close(&self, code: Code, reason: &str) {
        let reason = &reason.as_bytes()[..reason.len().min(MAX_REASON)];
        self.conn.close(VarInt::from_u32(code.to_u32()), reason);
        // quinn sends CONNECTION_CLOSE from the endpoint's driver: a dialer's endpoint must
        // outlive the session until it has gone out (quinn's Endpoint::wait_idle).
        if let Some(endpoint) = self.endpoint.clone() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
                });
            }
        }
    }

    fn traffic(&self) -> super::traffic::Traffic {
        let stats = self.conn.stats();
        super::traffic::Traffic { sent: stats.udp_tx.bytes, received: stats.udp_rx.bytes }
    }
}

impl RawStream {
    fn quic(send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        let (read, write) = (Box::new(QuicRead(recv)), Box::new(QuicWrite(send)));
        Self { read, write, permit: None, owed: None }
    }
}

/// A QUIC stream's receiving half whose errors say why the connection was lost: quinn says
/// only "connection lost" (the cause is the error's source), which a channel's "connection
/// lost: WHY" then repeated.
struct QuicRead(quinn::RecvStream);

impl AsyncRead for QuicRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.0), cx, buf).map_err(named)
    }
}

/// A QUIC stream's sending half, with errors named as [`QuicRead`]'s are.
struct QuicWrite(quinn::SendStream);

impl AsyncWrite for QuicWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf).map_err(named)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.0), cx).map_err(named)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx).map_err(named)
    }
}

impl StreamWrite for QuicWrite {
    fn reset(mut self: Box<Self>) {
        // Already finished or reset: nothing left to abandon.
        let _ = self.0.reset(VarInt::from_u32(0));
    }

    /// A closed QUIC connection drops data not yet acknowledged: wait for the peer's ACKs
    /// (or its STOP_SENDING, or the end of the connection).
    fn delivered(&self) -> BoxFuture<'static, ()> {
        let stopped = self.0.stopped();
        Box::pin(async move {
            let _ = stopped.await;
        })
    }
}

/// `error` with quinn's bare "connection lost" replaced by why the connection was lost.
fn named(error: io::Error) -> io::Error {
    let lost = error.get_ref().and_then(|inner| {
        match (inner.downcast_ref::<quinn::ReadError>(), inner.downcast_ref::<quinn::WriteError>())
        {
            (Some(quinn::ReadError::ConnectionLost(e)), _)
            | (_, Some(quinn::WriteError::ConnectionLost(e))) => Some(describe(e)),
            _ => None,
        }
    });
    match lost {
        Some(why) => io::Error::new(error.kind(), why),
        None => error,
    }
}

/// Dials `quic://host:port`.
pub(crate) async fn connect(
    url: &str,
    addr: &str,
    limits: Limits,
    tls: &Tls,
) -> Result<Session, ConnectError> {
    limits.validate()?;
    let name = tls.server_name_for(url, super::tls::host_of(addr))?;
    let crypto = QuicClientConfig::try_from(tls.client_config(url)?).map_err(|e| {
        ConnectError::Url { url: url.to_string(), reason: format!("client config: {e}") }
    })?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(&limits));
    let remote = resolve(addr)?;
    let local: SocketAddr =
        if remote.is_ipv6() { "[::]:0".parse() } else { "0.0.0.0:0".parse() }.expect("literal");
    let endpoint = Endpoint::client(local).map_err(|e| ConnectError::io("bind a UDP socket", e))?;
    let peer = addr.to_string();
    let connecting = endpoint
        .connect_with(config, remote, &name.to_str())
        .map_err(|e| ConnectError::Handshake { peer: peer.clone(), reason: e.to_string() })?;
    let timeout = limits.handshake_timeout;
    // In TLS 1.3 the client is done before the server has checked its certificate. The server
    // opens its control stream once it has let us in, so waiting for that stream turns a
    // refusal into a handshake error here instead of a session that dies at once.
    let handshake = async {
        let conn = connecting.await?;
        let (send, recv) = conn.accept_bi().await?;
        Ok::<_, ConnectionError>((conn, RawStream::quic(send, recv)))
    };
    let (conn, control) = match tokio::time::timeout(timeout, handshake).await {
        Err(_) => {
            return Err(ConnectError::HandshakeTimeout { peer, seconds: timeout.as_secs_f64() })
        }
        Ok(Err(e)) => return Err(ConnectError::Handshake { peer, reason: describe(&e) }),
        Ok(Ok(accepted)) => accepted,
    };
    Ok(start(conn, Some(endpoint), Some(control), limits, peer, tls))
}

/// Binds `quic://host:port` and serves handshakes in tasks of their own, each bounded by the
/// handshake timeout. Returns the bound URL.
pub(crate) fn listen(
    url: &str,
    addr: &str,
    limits: Limits,
    tls: &Tls,
    tx: mpsc::Sender<Session>,
) -> Result<String, ConnectError> {
    let crypto = QuicServerConfig::try_from(tls.server_config(url)?).map_err(|e| {
        ConnectError::Url { url: url.to_string(), reason: format!("server config: {e}") }
    })?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(&limits));
    config.migration(false);
    let local = resolve(addr)?;
    let endpoint = Endpoint::server(config, local)
        .map_err(|e| ConnectError::io(format!("listen on {addr}"), e))?;
    let bound = endpoint.local_addr().map_err(|e| ConnectError::io("local address", e))?;
    tokio::spawn(accept_loop(endpoint, tx, limits, tls.clone()));
    Ok(format!("quic://{bound}"))
}

async fn accept_loop(endpoint: Endpoint, tx: mpsc::Sender<Session>, limits: Limits, tls: Tls) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
            () = tx.closed() => break,
        };
        let peer = incoming.remote_address().to_string();
        let (tx, limits, tls) = (tx.clone(), limits.clone(), tls.clone());
        tokio::spawn(async move {
            let timeout = limits.handshake_timeout;
            let conn = match incoming.accept() {
                Ok(connecting) => tokio::time::timeout(timeout, connecting).await,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "quic handshake failed");
                    return;
                }
            };
            let conn = match conn {
                Err(_) => {
                    tracing::warn!(%peer, seconds = timeout.as_secs_f64(), "quic handshake timed out");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %describe(&e), "quic handshake failed");
                    return;
                }
                Ok(Ok(conn)) => conn,
            };
            let session = start(conn, None, None, limits, peer.clone(), &tls);
            if tx.try_send(session).is_err() {
                tracing::warn!(%peer, "session accept queue full, dropping the connection");
            }
        });
    }
    // Refuse newcomers; sessions already up keep the endpoint's socket until they end.
    endpoint.set_server_config(None);
}

/// Starts a session on an established connection. The dialer (with its own `endpoint`) has
/// already taken the peer's `first` stream.
fn start(
    conn: quinn::Connection,
    endpoint: Option<Endpoint>,
    first: Option<RawStream>,
    limits: Limits,
    addr: String,
    tls: &Tls,
) -> Session {
    let dialer = endpoint.is_some();
    let chain = conn
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok());
    let name = tls.name_peer(chain.as_deref().map(Vec::as_slice));
    let (inbound_tx, inbound_rx) = super::inbound(limits.max_streams);
    let (done_tx, done_rx) = oneshot::channel();
    if let Some(first) = first {
        inbound_tx.deliver(first);
    }
    let driver = conn.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = driver.accept_bi() => match accepted {
                    Ok((send, recv)) => {
                        let stream = RawStream::quic(send, recv);
                        // QUIC's stream limit (max_streams) bounds what the peer has open, and
                        // the channel holds as many.
                        inbound_tx.deliver(stream);
                        // Taking a stream in is a yamux frame's two reads of work: a burst
                        // of them yields to the tasks they woke (the session's accept loop,
                        // whose queue they fill) a bounded share at a time.
                        tokio::task::coop::consume_budget().await;
                        tokio::task::coop::consume_budget().await;
                    }
                    Err(e) => {
                        let _ = done_tx.send(describe(&e));
                        return;
                    }
                },
                () = inbound_tx.closed() => return,
            }
        }
    });
    let mux = QuicMux { conn, endpoint };
    Session::start(Box::new(mux), inbound_rx, done_rx, dialer, limits, PeerInfo { addr, name })
}

/// QUIC transport settings derived from the session's limits.
fn transport(limits: &Limits) -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    let streams = u32::try_from(limits.max_streams + STREAM_MARGIN).unwrap_or(u32::MAX);
    config
        .max_concurrent_bidi_streams(VarInt::from_u32(streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .keep_alive_interval(Some(limits.heartbeat_interval));
    // validate() keeps idle_timeout far below QUIC's 2^62 ms ceiling.
    config.max_idle_timeout(limits.idle_timeout.try_into().ok());
    Arc::new(config)
}

fn resolve(addr: &str) -> Result<SocketAddr, ConnectError> {
    let context = || format!("resolve {addr}");
    addr.to_socket_addrs()
        .map_err(|e| ConnectError::io(context(), e))?
        .next()
        .ok_or_else(|| ConnectError::io(context(), io::Error::other("no address")))
}

/// A connection error in words an operator can act on: QUIC carries TLS alerts as numeric
/// crypto errors, which this names.
fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ApplicationClosed(close) => {
            let code = u32::try_from(close.error_code.into_inner()).unwrap_or(u32::MAX);
            let reason = String::from_utf8_lossy(&close.reason);
            format!("closed by peer with {}: {reason}", Code::from_u32(code))
        }
        ConnectionError::TimedOut => "connection timed out: no packets from the peer".into(),
        ConnectionError::LocallyClosed => "closed locally".into(),
        ConnectionError::ConnectionClosed(close) => match alert(close.error_code) {
            Some(alert) => {
                let reason = String::from_utf8_lossy(&close.reason);
                let detail = if reason.is_empty() { String::new() } else { format!(": {reason}") };
                format!("peer refused the TLS handshake with alert {alert:?}{detail}")
            }
            None => error.to_string(),
        },
        ConnectionError::TransportError(e) => match alert(e.code) {
            Some(alert) => format!("TLS handshake failed with alert {alert:?}: {}", e.reason),
            None => e.to_string(),
        },
        other => other.to_string(),
    }
}

/// The TLS alert a QUIC crypto error carries (codes 0x100 to 0x1ff).
fn alert(code: quinn::TransportErrorCode) -> Option<rustls::AlertDescription> {
    let code = u64::from(code);
    let alert = u8::try_from(code.checked_sub(0x100)?).ok()?;
    Some(rustls::AlertDescription::from(alert))
}

/// Streams the peer may open beyond the session's own limit, for control streams and
/// refusals in flight.
const STREAM_MARGIN: usize = 64;
/// Per-stream receive window: what one channel may have in flight towards us.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Connection receive window: the most a peer can make us buffer on one session.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Longest a closed dialer's endpoint stays up to send its CONNECTION_CLOSE.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// CONNECTION_CLOSE reasons must fit in a packet.
const MAX_REASON: usize = 512;
