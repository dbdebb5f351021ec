//! `tls://`: rustls over TCP with yamux on top, the same session code as plain TCP.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::{ConnectError, Limits, Session};

/// Certificates for `tls://` and `quic://` sessions: the rustls configs for each role, the name
/// the server must prove, and how to name an authenticated peer.
///
/// libchan checks nothing beyond what the configs check; build them to require and verify
/// certificates both ways (the `certs` crate's `Identity` does: TLS 1.3, the swarm CA as the
/// only root, ALPN `libchan/1`). Both configs must allow TLS 1.3 for QUIC.
///
/// ```no_run
/// # async fn f(client: std::sync::Arc<rustls::ClientConfig>) -> Result<(), libchan::ConnectError> {
/// let tls = libchan::Tls::client(client).with_server_name("node-b");
/// let session = libchan::connect_secure("quic://10.0.0.2:7300", libchan::Limits::default(), &tls).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Tls {
    pub(crate) client: Option<Arc<rustls::ClientConfig>>,
    pub(crate) server: Option<Arc<rustls::ServerConfig>>,
    server_name: Option<String>,
    namer: Option<Namer>,
}

type Namer = Arc<dyn Fn(&[CertificateDer<'_>]) -> Option<String> + Send + Sync>;

impl Tls {
    /// Both roles: dial with `client`, listen with `server`.
    pub fn new(client: Arc<rustls::ClientConfig>, server: Arc<rustls::ServerConfig>) -> Self {
        Self { client: Some(client), server: Some(server), ..Self::default() }
    }

    /// Dialing only.
    pub fn client(config: Arc<rustls::ClientConfig>) -> Self {
        Self { client: Some(config), ..Self::default() }
    }

    /// Listening only.
    pub fn server(config: Arc<rustls::ServerConfig>) -> Self {
        Self { server: Some(config), ..Self::default() }
    }

    /// The name the server's certificate must carry when dialing; by default the URL's host.
    /// Dial a node by its node name when its certificate names no address.
    #[must_use]
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// How to name a peer from its verified certificate chain (end-entity first); the name is
    /// [`Session::peer_name`]. `certs::peer_name` reads a swarm node's name.
    #[must_use]
    pub fn with_peer_name<F>(mut self, namer: F) -> Self
    where
        F: Fn(&[CertificateDer<'_>]) -> Option<String> + Send + Sync + 'static,
    {
        self.namer = Some(Arc::new(namer));
        self
    }

    pub(crate) fn name_peer(&self, chain: Option<&[CertificateDer<'_>]>) -> Option<String> {
        match (&self.namer, chain) {
            (Some(namer), Some(chain)) if !chain.is_empty() => namer(chain),
            _ => None,
        }
    }

    /// The server name to verify for a dial to `host`.
    pub(crate) fn server_name_for(
        &self,
        url: &str,
        host: &str,
    ) -> Result<ServerName<'static>, ConnectError> {
        let name = self.server_name.as_deref().unwrap_or(host);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(name.to_string()).map_err(|e| ConnectError::Url {
            url: url.to_string(),
            reason: format!("{name:?} is not a valid server name: {e}"),
        })
    }

    pub(crate) fn client_config(
        &self,
        url: &str,
    ) -> Result<Arc<rustls::ClientConfig>, ConnectError> {
        self.client.clone().ok_or_else(|| ConnectError::Url {
            url: url.to_string(),
            reason: "dialing needs a client certificate config (Tls::client)".into(),
        })
    }

    pub(crate) fn server_config(
        &self,
        url: &str,
    ) -> Result<Arc<rustls::ServerConfig>, ConnectError> {
        self.server.clone().ok_or_else(|| ConnectError::Url {
            url: url.to_string(),
            reason: "listening needs a server certificate config (Tls::server)".into(),
        })
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("client", &self.client.is_some())
            .field("server", &self.server.is_some())
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Dials `tls://`: TCP, the TLS handshake, then the session handshake, all within one
/// handshake timeout.
pub(crate) async fn connect(
    url: &str,
    addr: &str,
    limits: Limits,
    tls: &Tls,
) -> Result<Session, ConnectError> {
    let name = tls.server_name_for(url, host_of(addr))?;
    let connector = TlsConnector::from(tls.client_config(url)?);
    let timeout = limits.handshake_timeout;
    let handshake = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ConnectError::io(format!("connect to {addr}"), e))?;
        let _ = tcp.set_nodelay(true);
        let mut stream = connector.connect(name, tcp).await.map_err(|e| refused(addr, &e))?;
        stream.get_mut().1.set_buffer_limit(Some(BUFFER_LIMIT));
        let peer_name = tls.name_peer(stream.get_ref().1.peer_certificates());
        // In TLS 1.3 the server checks our certificate after our side of the handshake is
        // done: its refusal arrives as an alert where its preamble should be.
        Session::over_stream(stream, true, limits, addr.to_string(), peer_name, false)
            .await
            .map_err(|e| match e {
                ConnectError::Io { source, .. } if is_tls(&source) => refused(addr, &source),
                e => e,
            })
    };
    within(timeout, addr, handshake).await
}

/// Serves one accepted TCP connection of a `tls://` listener: the TLS handshake and the
/// session handshake, within one handshake timeout.
pub(crate) async fn accept(
    tcp: TcpStream,
    peer: String,
    acceptor: TlsAcceptor,
    limits: Limits,
    tls: &Tls,
) -> Result<Session, ConnectError> {
    let timeout = limits.handshake_timeout;
    let handshake = async {
        let mut stream = acceptor.accept(tcp).await.map_err(|e| refused(&peer, &e))?;
        stream.get_mut().1.set_buffer_limit(Some(BUFFER_LIMIT));
        let peer_name = tls.name_peer(stream.get_ref().1.peer_certificates());
        Session::over_stream(stream, false, limits, peer.clone(), peer_name, false).await
    };
    within(timeout, &peer, handshake).await
}

fn refused(peer: &str, error: &std::io::Error) -> ConnectError {
    ConnectError::Handshake { peer: peer.to_string(), reason: error.to_string() }
}

fn is_tls(error: &std::io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

async fn within(
    timeout: std::time::Duration,
    peer: &str,
    handshake: impl std::future::Future<Output = Result<Session, ConnectError>>,
) -> Result<Session, ConnectError> {
    tokio::time::timeout(timeout, handshake).await.unwrap_or_else(|_| {
        Err(ConnectError::HandshakeTimeout {
            peer: peer.to_string(),
            seconds: timeout.as_secs_f64(),
        })
    })
}

/// The host of `host:port`, without IPv6 brackets.
pub(crate) fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Most TLS bytes rustls queues for the socket (its default is 64 KiB). A 64 KiB yamux data
/// frame and its header, with the records' overhead, fit, so the frame leaves in one write to
/// the socket instead of two, the second a record of the header's 12 bytes.
const BUFFER_LIMIT: usize = 68 * 1024;
