//! Real TLS 1.3 handshakes over loopback TCP with tokio-rustls, accepted and refused.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certs::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use certs::rustls::{self, AlertDescription, CertificateError, ClientConfig, ServerConfig};
use certs::{Ca, Identity, NodeCert, Validity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TIMEOUT: Duration = Duration::from_secs(10);

/// What one side saw: the peer's node name, or the error that ended the connection.
type Outcome = Result<String, io::Error>;

/// Runs one connection over loopback: the client dials `server_name`; each side reports.
///
/// After the handshake the server writes a byte and the client reads it: in TLS 1.3 the client
/// finishes its handshake before the server has checked the client certificate, so a refused
/// client only learns of it on its first read.
async fn connect(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    server_name: ServerName<'static>,
) -> (Outcome, Outcome) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    let server_side = async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = TlsAcceptor::from(server).accept(tcp).await?;
        let (_, connection) = tls.get_ref();
        assert_eq!(connection.alpn_protocol(), Some(certs::ALPN));
        assert_eq!(connection.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        let name = certs::peer_name_of(connection).map_err(io::Error::other)?;
        tls.write_all(b"!").await?;
        tls.shutdown().await?;
        Ok(name)
    };
    let client_side = async move {
        let tcp = TcpStream::connect(address).await?;
        let mut tls = TlsConnector::from(client).connect(server_name, tcp).await?;
        let (_, connection) = tls.get_ref();
        assert_eq!(connection.alpn_protocol(), Some(certs::ALPN));
        let name = certs::peer_name_of(connection).map_err(io::Error::other)?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        Ok(name)
    };
    tokio::time::timeout(TIMEOUT, async { tokio::join!(server_side, client_side) })
        .await
        .expect("connection timed out")
}

fn name(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).unwrap()
}

/// The rustls error inside an I/O error from tokio-rustls.
fn tls_error(outcome: &Outcome) -> &rustls::Error {
    let error = outcome.as_ref().expect_err("connection should be refused");
    eprintln!("{error}");
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a TLS error: {error:?}"))
}

/// A client config with the swarm CA as root that presents `node` without the checks
/// `Identity` makes (so it can present an expired certificate).
fn raw_client_config(ca: &Ca, node: Option<&NodeCert>) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match node {
        Some(node) => {
            let chain: Vec<CertificateDer<'static>> = vec![node.cert_der().clone()];
            let key: PrivateKeyDer<'static> = node.key_der();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![certs::ALPN.to_vec()];
    Arc::new(config)
}

struct Swarm {
    ca: Ca,
    server: Identity,
    client: Identity,
}

fn swarm() -> Swarm {
    let ca = Ca::create("test swarm CA").unwrap();
    let localhost = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let server = ca.issue("node-a", &["node-a.example".to_owned()], &localhost).unwrap();
    let client = ca.issue("node-b", &[], &[]).unwrap();
    Swarm {
        server: Identity::new(&ca, &server).unwrap(),
        client: Identity::new(&ca, &client).unwrap(),
        ca,
    }
}

#[tokio::test]
async fn mutual_authentication_tells_each_side_the_other_name() {
    let swarm = swarm();
    let (server, client) =
        connect(swarm.server.server_config(), swarm.client.client_config(), name("node-a")).await;
    assert_eq!(server.unwrap(), "node-b");
    assert_eq!(client.unwrap(), "node-a");
}

#[tokio::test]
async fn the_server_can_be_dialed_by_its_extra_names() {
    let swarm = swarm();
    for server_name in
        [name("node-a.example"), ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into())]
    {
        let (server, client) =
            connect(swarm.server.server_config(), swarm.client.client_config(), server_name).await;
        assert_eq!(server.unwrap(), "node-b");
        assert_eq!(client.unwrap(), "node-a");
    }
}

#[tokio::test]
async fn identities_loaded_from_files_connect() {
    let swarm = swarm();
    let dir = tempfile::tempdir().unwrap();
    swarm.ca.save(dir.path(), false).unwrap();
    swarm.ca.issue("node-c", &[], &[]).unwrap().save(dir.path(), false).unwrap();
    let node_c = Identity::load(dir.path(), "node-c").unwrap();
    let (server, client) =
        connect(node_c.server_config(), swarm.client.client_config(), name("node-c")).await;
    assert_eq!(server.unwrap(), "node-b");
    assert_eq!(client.unwrap(), "node-c");
}

#[tokio::test]
async fn a_client_from_another_ca_is_refused() {
    let swarm = swarm();
    let other = Ca::create("other CA").unwrap();
    let intruder = Identity::new(&other, &other.issue("node-b", &[], &[]).unwrap()).unwrap();
    // The intruder trusts the swarm CA, so only the server's check can refuse it.
    let mut config = (*raw_client_config(&swarm.ca, None)).clone();
    config.client_auth_cert_resolver = intruder.client_config().client_auth_cert_resolver.clone();
    let (server, client) =
        connect(swarm.server.server_config(), Arc::new(config), name("node-a")).await;
    assert!(
        matches!(
            tls_error(&server),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{server:?}"
    );
    assert!(
        matches!(tls_error(&client), rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
        "{client:?}"
    );
}

#[tokio::test]
async fn a_server_from_another_ca_is_refused() {
    let swarm = swarm();
    let other = Ca::create("other CA").unwrap();
    let impostor = Identity::new(&other, &other.issue("node-a", &[], &[]).unwrap()).unwrap();
    let (server, client) =
        connect(impostor.server_config(), swarm.client.client_config(), name("node-a")).await;
    assert!(
        matches!(
            tls_error(&client),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{client:?}"
    );
    assert!(
        matches!(tls_error(&server), rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
        "{server:?}"
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let swarm = swarm();
    let (server, client) =
        connect(swarm.server.server_config(), raw_client_config(&swarm.ca, None), name("node-a"))
            .await;
    assert!(matches!(tls_error(&server), rustls::Error::NoCertificatesPresented), "{server:?}");
    assert!(
        matches!(
            tls_error(&client),
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired)
        ),
        "{client:?}"
    );
}

#[tokio::test]
async fn a_client_with_an_expired_certificate_is_refused() {
    let swarm = swarm();
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    let expired = swarm
        .ca
        .issue_with_validity("node-b", &[], &[], Validity::new(now - 3 * day, now - day))
        .unwrap();
    let (server, client) = connect(
        swarm.server.server_config(),
        raw_client_config(&swarm.ca, Some(&expired)),
        name("node-a"),
    )
    .await;
    assert!(
        matches!(
            tls_error(&server),
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{server:?}"
    );
    assert!(
        matches!(
            tls_error(&client),
            rustls::Error::AlertReceived(AlertDescription::CertificateExpired)
        ),
        "{client:?}"
    );
}

#[tokio::test]
async fn a_server_whose_name_does_not_match_is_refused() {
    let swarm = swarm();
    // node-a answers, but the client dialed node-c.
    let (server, client) =
        connect(swarm.server.server_config(), swarm.client.client_config(), name("node-c")).await;
    assert!(
        matches!(
            tls_error(&client),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{client:?}"
    );
    assert!(
        matches!(
            tls_error(&server),
            rustls::Error::AlertReceived(AlertDescription::BadCertificate)
        ),
        "{server:?}"
    );
}

#[test]
fn peer_name_reads_the_common_name() {
    let swarm = swarm();
    let cert = swarm.server.cert_der().clone();
    assert_eq!(certs::peer_name(&[cert]).unwrap(), "node-a");
    assert!(matches!(certs::peer_name(&[]), Err(certs::PeerNameError::NoCertificate)));
    assert!(matches!(
        certs::peer_name(&[CertificateDer::from(vec![1, 2, 3])]),
        Err(certs::PeerNameError::BadCertificate { .. })
    ));
}

#[tokio::test]
async fn a_tls12_client_is_refused() {
    let swarm = swarm();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(swarm.ca.cert_der().clone()).unwrap();
    let node = swarm.ca.issue("node-b", &[], &[]).unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![node.cert_der().clone()], node.key_der())
            .unwrap();
    config.alpn_protocols = vec![certs::ALPN.to_vec()];
    let (server, client) =
        connect(swarm.server.server_config(), Arc::new(config), name("node-a")).await;
    assert!(matches!(tls_error(&server), rustls::Error::PeerIncompatible(_)), "{server:?}");
    assert!(
        matches!(
            tls_error(&client),
            rustls::Error::AlertReceived(AlertDescription::ProtocolVersion)
        ),
        "{client:?}"
    );
}

#[test]
fn configs_offer_libchan_alpn() {
    let swarm = swarm();
    assert_eq!(swarm.server.server_config().alpn_protocols, [b"libchan/1".to_vec()]);
    assert_eq!(swarm.client.client_config().alpn_protocols, [b"libchan/1".to_vec()]);
}
