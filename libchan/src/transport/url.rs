//! `connect` and `listen` by URL: `tcp://host:port`, `unix:///path`, and with certificates
//! `tls://host:port` and `quic://host:port`.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::tls::Tls;
use crate::session::PeerInfo;
use crate::{ConnectError, Limits, Session};

/// What a libchan connection starts with on stream transports (TCP, unix, TLS), both ways.
pub const PREAMBLE: &[u8; 8] = b"libchan\x01";

/// Connects to `url` with default limits. See [`connect_with`].
///
/// # Errors
/// See [`connect_with`].
pub async fn connect(url: &str) -> Result<Session, ConnectError> {
    connect_with(url, Limits::default()).await
}

/// Connects to `tcp://host:port` or `unix:///path` and starts a session.
///
/// # Errors
/// A bad URL or limits, a failed connection, a handshake that times out or a peer that does
/// not speak libchan/1.
pub async fn connect_with(url: &str, limits: Limits) -> Result<Session, ConnectError> {
    connect_secure(url, limits, &Tls::default()).await
}

/// Connects to any libchan URL: `tcp://` and `unix://` as [`connect_with`] does, `tls://host:port`
/// and `quic://host:port` authenticated with `tls` (see [`Tls`]). The whole handshake, TLS
/// included, is bounded by the handshake timeout.
///
/// # Errors
/// As [`connect_with`]; for `tls://` and `quic://` also [`ConnectError::Handshake`] with the
/// reason the certificates were refused, on either side.
pub async fn connect_secure(url: &str, limits: Limits, tls: &Tls) -> Result<Session, ConnectError> {
    limits.validate()?;
    match parse(url)? {
        Endpoint::Tls(addr) => super::tls::connect(url, &addr, limits, tls).await,
        Endpoint::Quic(addr) => super::quic::connect(url, &addr, limits, tls).await,
        Endpoint::Tcp(addr) => {
            let stream = TcpStream::connect(&addr)
                .await
                .map_err(|e| ConnectError::io(format!("connect to {addr}"), e))?;
            let _ = stream.set_nodelay(true);
            Session::over(stream, true, limits, addr).await
        }
        Endpoint::Unix(path) => {
            let stream = UnixStream::connect(&path)
                .await
                .map_err(|e| ConnectError::io(format!("connect to {}", path.display()), e))?;
            Session::over(stream, true, limits, path.display().to_string()).await
        }
    }
}

/// Listens on `url` with default limits. See [`listen_with`].
///
/// # Errors
/// See [`listen_with`].
pub async fn listen(url: &str) -> Result<Listener, ConnectError> {
    listen_with(url, Limits::default()).await
}

/// Listens on `tcp://host:port` (port 0 picks one) or `unix:///path` (a stale socket file is
/// replaced, a live one is an error). Handshakes run in tasks of their own, so a client that
/// never finishes one delays nobody; it is dropped after `handshake_timeout`.
///
/// # Errors
/// A bad URL or limits, or the address cannot be bound.
pub async fn listen_with(url: &str, limits: Limits) -> Result<Listener, ConnectError> {
    listen_secure(url, limits, &Tls::default()).await
}

/// Listens on any libchan URL: `tcp://` and `unix://` as [`listen_with`] does, `tls://host:port`
/// and `quic://host:port` with the server config of `tls`. A peer whose certificate is refused,
/// or that never finishes its handshake, is logged with the reason and costs only its own
/// connection; [`Session::peer_name`] names the ones that get in.
///
/// # Errors
/// As [`listen_with`], or `tls` has no server config.
pub async fn listen_secure(url: &str, limits: Limits, tls: &Tls) -> Result<Listener, ConnectError> {
    limits.validate()?;
    let (tx, rx) = mpsc::channel(limits.accept_queue);
    let (local, cleanup) = match parse(url)? {
        Endpoint::Tls(addr) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config(url)?);
            let listener = TcpListener::bind(&addr)
                .await
                .map_err(|e| ConnectError::io(format!("listen on {addr}"), e))?;
            let local = listener.local_addr().map_err(|e| ConnectError::io("local address", e))?;
            let tls = tls.clone();
            let serve = move |stream: TcpStream, peer: String, limits: Limits| {
                let (acceptor, tls) = (acceptor.clone(), tls.clone());
                async move { super::tls::accept(stream, peer, acceptor, limits, &tls).await }
            };
            tokio::spawn(accept_tcp(listener, tx, limits, serve));
            (format!("tls://{local}"), None)
        }
        Endpoint::Quic(addr) => (super::quic::listen(url, &addr, limits, tls, tx)?, None),
        Endpoint::Tcp(addr) => {
            let listener = TcpListener::bind(&addr)
                .await
                .map_err(|e| ConnectError::io(format!("listen on {addr}"), e))?;
            let local = listener.local_addr().map_err(|e| ConnectError::io("local address", e))?;
            let serve = |stream: TcpStream, peer: String, limits: Limits| {
                Session::over(stream, false, limits, peer)
            };
            tokio::spawn(accept_tcp(listener, tx, limits, serve));
            (format!("tcp://{local}"), None)
        }
        Endpoint::Unix(path) => {
            let listener = bind_unix(&path).await?;
            tokio::spawn(accept_unix(listener, tx, limits));
            (format!("unix://{}", path.display()), Some(path))
        }
    };
    Ok(Listener { rx: tokio::sync::Mutex::new(rx), local, cleanup })
}

/// Accepts libchan sessions.
#[derive(Debug)]
pub struct Listener {
    rx: tokio::sync::Mutex<mpsc::Receiver<Session>>,
    local: String,
    cleanup: Option<PathBuf>,
}

impl Listener {
    /// The next session whose handshake finished; `None` once the listener failed.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn accept(&self) -> Option<Session> {
        self.rx.lock().await.recv().await
    }

    /// The URL actually bound (with the port filled in for port 0).
    pub fn local_url(&self) -> &str {
        &self.local
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(path) = &self.cleanup {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Session {
    /// Starts a session over any connected byte stream (TCP, unix, TLS, an in-process
    /// duplex): exchanges the libchan/1 preamble, then runs yamux on it. `dialer` is true on
    /// exactly one side.
    ///
    /// # Errors
    /// The handshake times out, fails, or the peer does not speak libchan/1.
    pub async fn over<S>(
        io: S,
        dialer: bool,
        limits: Limits,
        peer: String,
    ) -> Result<Self, ConnectError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::over_named(io, dialer, limits, peer, None).await
    }

    /// [`over`](Self::over) for a stream whose peer was authenticated as `name`.
    ///
    /// # Errors
    /// As [`over`](Self::over).
    pub async fn over_named<S>(
        io: S,
        dialer: bool,
        limits: Limits,
        peer: String,
        name: Option<String>,
    ) -> Result<Self, ConnectError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::over_stream(io, dialer, limits, peer, name, true).await
    }

    /// [`over_named`](Self::over_named); `read_ahead` unless `io` buffers what it reads
    /// itself (TLS).
    pub(crate) async fn over_stream<S>(
        mut io: S,
        dialer: bool,
        limits: Limits,
        peer: String,
        name: Option<String>,
        read_ahead: bool,
    ) -> Result<Self, ConnectError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        limits.validate()?;
        let timeout = limits.handshake_timeout;
        let greeting = async {
            io.write_all(PREAMBLE).await?;
            io.flush().await?;
            let mut theirs = [0u8; 8];
            io.read_exact(&mut theirs).await?;
            Ok::<_, std::io::Error>(theirs)
        };
        let theirs = match tokio::time::timeout(timeout, greeting).await {
            Err(_) => {
                return Err(ConnectError::HandshakeTimeout { peer, seconds: timeout.as_secs_f64() })
            }
            Ok(Err(e)) => return Err(ConnectError::io(format!("handshake with {peer}"), e)),
            Ok(Ok(theirs)) => theirs,
        };
        if &theirs != PREAMBLE {
            let reason = format!("it sent {:?}", String::from_utf8_lossy(&theirs));
            return Err(ConnectError::NotLibchan { peer, reason });
        }
        let (mux, inbound, done) = super::yamux::start(io, dialer, &limits, read_ahead);
        Ok(Self::start(Box::new(mux), inbound, done, dialer, limits, PeerInfo { addr: peer, name }))
    }
}

enum Endpoint {
    Tcp(String),
    Unix(PathBuf),
    Tls(String),
    Quic(String),
}

fn parse(url: &str) -> Result<Endpoint, ConnectError> {
    let bad = |reason: &str| ConnectError::Url { url: url.to_string(), reason: reason.to_string() };
    for (scheme, make) in [
        ("tcp", Endpoint::Tcp as fn(String) -> Endpoint),
        ("tls", Endpoint::Tls),
        ("quic", Endpoint::Quic),
    ] {
        if let Some(addr) = url.strip_prefix(scheme).and_then(|rest| rest.strip_prefix("://")) {
            let addr = addr.trim_end_matches('/');
            let port_ok =
                addr.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(bad(&format!("expected {scheme}://host:port")));
            }
            return Ok(make(addr.to_string()));
        }
    }
    if let Some(path) = url.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(bad("expected an absolute path, as in unix:///run/node.sock"));
        }
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    Err(bad("scheme must be quic://, tls://, tcp:// or unix://"))
}

async fn bind_unix(path: &std::path::Path) -> Result<UnixListener, ConnectError> {
    let context = || format!("listen on {}", path.display());
    match UnixListener::bind(path) {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ConnectError::io(context(), e));
            }
            // Nobody answers: a socket file left by a process that died. Replace it.
            std::fs::remove_file(path).map_err(|e| ConnectError::io(context(), e))?;
            UnixListener::bind(path).map_err(|e| ConnectError::io(context(), e))
        }
        Err(e) => Err(ConnectError::io(context(), e)),
    }
}

async fn accept_tcp<F, Fut>(
    listener: TcpListener,
    tx: mpsc::Sender<Session>,
    limits: Limits,
    serve: F,
) where
    F: Fn(TcpStream, String, Limits) -> Fut,
    Fut: std::future::Future<Output = Result<Session, ConnectError>> + Send + 'static,
{
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        let _ = stream.set_nodelay(true);
        let peer = addr.to_string();
        tokio::spawn(handshake(serve(stream, peer.clone(), limits.clone()), peer, tx.clone()));
    }
}

async fn accept_unix(listener: UnixListener, tx: mpsc::Sender<Session>, limits: Limits) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        let peer = "unix".to_string();
        let session = Session::over(stream, false, limits.clone(), peer.clone());
        tokio::spawn(handshake(session, peer, tx.clone()));
    }
}

async fn handshake<Fut>(session: Fut, peer: String, tx: mpsc::Sender<Session>)
where
    Fut: std::future::Future<Output = Result<Session, ConnectError>>,
{
    match session.await {
        Ok(session) => {
            if tx.try_send(session).is_err() {
                tracing::warn!(%peer, "session accept queue full, dropping the connection");
            }
        }
        Err(e) => tracing::warn!(%peer, error = %e, "handshake failed"),
    }
}
