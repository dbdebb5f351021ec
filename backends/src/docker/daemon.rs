//! An HTTP client of one Docker daemon over a unix socket, TCP, or TLS with a client certificate.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use crate::docker::api;
use crate::service::Tasks;

/// Where a daemon listens and how to talk to it.
pub struct Daemon {
    url: String,
    endpoint: Endpoint,
    tls: Option<Tls>,
    tasks: Tasks,
}

enum Endpoint {
    Unix(PathBuf),
    Tcp { address: String, host: String },
}

struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

/// A request to the daemon that failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The daemon could not be reached.
    #[error("cannot reach the Docker daemon at {url}: {reason}")]
    Connect {
        /// The daemon's URL.
        url: String,
        /// Why.
        reason: io::Error,
    },
    /// HTTP failed.
    #[error("Docker daemon at {url}: {reason}")]
    Http {
        /// The daemon's URL.
        url: String,
        /// Why.
        reason: hyper::Error,
    },
    /// The daemon answered with an error status; the message is its text, verbatim.
    #[error("{message}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The daemon's message.
        message: String,
    },
    /// The answer is too large or not what was expected.
    #[error("Docker daemon at {url}: {reason}")]
    Body {
        /// The daemon's URL.
        url: String,
        /// Why.
        reason: String,
    },
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl Daemon {
    /// A daemon from `URL [--tlscacert FILE] [--tlscert FILE --tlskey FILE]`.
    ///
    /// # Errors
    /// The reason the arguments are wrong or the TLS files do not load.
    pub fn parse(args: &[String], tasks: Tasks) -> Result<Self, String> {
        let (url, options) = args.split_first().ok_or("no daemon URL")?;
        let mut files = [None, None, None];
        let mut rest = options.iter();
        while let Some(flag) = rest.next() {
            let slot = match flag.as_str() {
                "--tlscacert" => 0,
                "--tlscert" => 1,
                "--tlskey" => 2,
                "--tlsverify" | "--tls" => continue,
                other => return Err(format!("unknown option {other:?}")),
            };
            files[slot] = Some(rest.next().ok_or(format!("{flag} needs a file"))?.clone());
        }
        let endpoint = if let Some(path) = url.strip_prefix("unix://") {
            Endpoint::Unix(PathBuf::from(path))
        } else if let Some(address) = url.strip_prefix("tcp://") {
            let address = address.trim_end_matches('/');
            let host = match address.rsplit_once(':') {
                Some((host, port)) if port.parse::<u16>().is_ok() => host,
                _ => return Err(format!("{url}: tcp:// needs HOST:PORT")),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            Endpoint::Tcp { address: address.to_owned(), host }
        } else {
            return Err(format!("{url}: the URL must start with unix:// or tcp://"));
        };
        let tls = match (&endpoint, files) {
            (_, [None, None, None]) => None,
            (Endpoint::Tcp { host, .. }, [Some(ca), cert, key]) => Some(tls(host, &ca, cert, key)?),
            (Endpoint::Tcp { .. }, _) => return Err("TLS needs --tlscacert".to_owned()),
            (Endpoint::Unix(_), _) => return Err("TLS options need a tcp:// URL".to_owned()),
        };
        Ok(Self { url: url.clone(), endpoint, tls, tasks })
    }

    /// The tasks of the stage this client belongs to.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// Sends a request to `/v1.41{path}`; returns the response head and its streaming body,
    /// whatever the status. With `upgrade`, asks for a hijacked connection (attach).
    ///
    /// # Errors
    /// [`DaemonError::Connect`], [`DaemonError::Http`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        upgrade: bool,
    ) -> Result<Response<Incoming>, DaemonError> {
        let io = self.connect().await?;
        let http = |reason| DaemonError::Http { url: self.url.clone(), reason };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(http)?;
        let shutdown = self.tasks.shutdown_token().clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                result = connection.with_upgrades() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "daemon connection ended");
                    }
                }
            }
        });
        let mut request = Request::builder()
            .method(method)
            .uri(format!("/v{}{path}", api::API_VERSION))
            .header(http::header::HOST, "docker")
            .header(http::header::USER_AGENT, concat!("swarm-node/", env!("CARGO_PKG_VERSION")));
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        if upgrade {
            request = request
                .header(http::header::CONNECTION, "Upgrade")
                .header(http::header::UPGRADE, "tcp");
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|error| self.body_error(error.to_string()))?;
        sender.send_request(request).await.map_err(http)
    }

    /// Sends a request and reads the whole answer (at most 16 MiB).
    ///
    /// # Errors
    /// As [`Daemon::send`], and [`DaemonError::Status`] for a status of 400 or more.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), DaemonError> {
        let response = self.send(method, path, body, false).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|error| self.body_error(error.to_string()))?
            .to_bytes();
        if status.is_client_error() || status.is_server_error() {
            return Err(DaemonError::Status { status, message: api::error_text(&body) });
        }
        Ok((status, body))
    }

    /// Sends a request and parses the answer as JSON.
    ///
    /// # Errors
    /// As [`Daemon::call`], and [`DaemonError::Body`] if the answer is not JSON.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Value, DaemonError> {
        let (_, body) = self.call(method, path, body).await?;
        serde_json::from_slice(&body).map_err(|error| self.body_error(format!("bad JSON: {error}")))
    }

    /// An error status as [`DaemonError::Status`], or the response if it succeeded.
    ///
    /// # Errors
    /// [`DaemonError::Status`] with the body's message.
    pub async fn check(
        &self,
        response: Response<Incoming>,
    ) -> Result<Response<Incoming>, DaemonError> {
        let status = response.status();
        if !(status.is_client_error() || status.is_server_error()) {
            return Ok(response);
        }
        let body = Limited::new(response.into_body(), MAX_BODY).collect().await;
        let message = match body {
            Ok(body) => api::error_text(&body.to_bytes()),
            Err(error) => error.to_string(),
        };
        Err(DaemonError::Status { status, message })
    }

    fn body_error(&self, reason: String) -> DaemonError {
        DaemonError::Body { url: self.url.clone(), reason }
    }

    async fn connect(&self) -> Result<Box<dyn Io>, DaemonError> {
        let connect = |reason| DaemonError::Connect { url: self.url.clone(), reason };
        let io: Box<dyn Io> = match &self.endpoint {
            Endpoint::Unix(path) => Box::new(UnixStream::connect(path).await.map_err(connect)?),
            Endpoint::Tcp { address, .. } => {
                let tcp = TcpStream::connect(address.as_str()).await.map_err(connect)?;
                let _ = tcp.set_nodelay(true);
                match &self.tls {
                    None => Box::new(tcp),
                    Some(tls) => Box::new(
                        tls.connector.connect(tls.name.clone(), tcp).await.map_err(connect)?,
                    ),
                }
            }
        };
        Ok(io)
    }
}

fn tls(host: &str, ca: &str, cert: Option<String>, key: Option<String>) -> Result<Tls, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|error| format!("{ca}: {error}"))? {
        let cert = cert.map_err(|error| format!("{ca}: {error}"))?;
        roots.add(cert).map_err(|error| format!("{ca}: {error}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots);
    let config = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(&cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|error| format!("{cert}: {error}"))?;
            let key =
                PrivateKeyDer::from_pem_file(&key).map_err(|error| format!("{key}: {error}"))?;
            builder.with_client_auth_cert(chain, key).map_err(|error| error.to_string())?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("--tlscert and --tlskey go together".to_owned()),
    };
    let name = ServerName::try_from(host.to_owned()).map_err(|error| format!("{host}: {error}"))?;
    Ok(Tls { connector: TlsConnector::from(Arc::new(config)), name })
}

/// Largest non-streaming answer read from a daemon. Worst case per request in flight.
const MAX_BODY: usize = 16 << 20;
