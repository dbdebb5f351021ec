//! TLS and QUIC sessions under attack: wrong certificates, no certificate, wrong names,
//! plaintext, garbage and stalled handshakes. Each is refused with a reason on the side that
//! can act on it, and the listener goes on serving well-behaved peers.

use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use certs::{Ca, Identity, NodeCert, Validity};
use libchan::{Limits, Listener, Tls};
use tokio::io::AsyncReadExt;

const SCHEMES: [&str; 2] = ["tls", "quic"];

/// Warnings the listeners logged, for checking that refusals name their reason.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        tracing_subscriber::fmt()
            .with_writer(|| Capture)
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .init();
    });
}

/// Waits until the listeners logged a line containing all of `words` (case-insensitive).
async fn logged(words: &[&str]) -> String {
    let words: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
    for _ in 0..100 {
        let logs = String::from_utf8_lossy(&LOGS.lock().unwrap()).to_lowercase();
        if let Some(line) = logs.lines().find(|line| words.iter().all(|w| line.contains(w))) {
            return line.to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no log line with {words:?} in:\n{}", String::from_utf8_lossy(&LOGS.lock().unwrap()));
}

fn localhost() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

struct Swarm {
    ca: Ca,
    server: Tls,
    client: Tls,
}

fn swarm() -> &'static Swarm {
    static SWARM: OnceLock<Swarm> = OnceLock::new();
    SWARM.get_or_init(|| {
        let ca = Ca::create("secure test CA").unwrap();
        let server = node_tls(&ca, "server");
        let client = node_tls(&ca, "client");
        Swarm { ca, server, client }
    })
}

fn node_tls(ca: &Ca, name: &str) -> Tls {
    let node = ca.issue(name, &[], &[localhost()]).unwrap();
    let id = Identity::new(ca, &node).unwrap();
    Tls::new(id.client_config(), id.server_config())
        .with_peer_name(|chain| certs::peer_name(chain).ok())
}

/// A client config built by hand: trusts `ca`, presents `identity` if any. Lets the tests
/// use certificates `certs::Identity` would refuse to load.
fn raw_client(ca: &Ca, identity: Option<&NodeCert>) -> Tls {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(node) => builder
            .with_client_auth_cert(
                vec![node.cert_der().clone(), ca.cert_der().clone()],
                node.key_der(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"libchan/1".to_vec()];
    Tls::client(Arc::new(config))
}

async fn serve(scheme: &str, limits: Limits) -> Listener {
    let url = format!("{scheme}://127.0.0.1:0");
    libchan::listen_secure(&url, limits, &swarm().server).await.unwrap()
}

/// A well-behaved client gets in and its messages arrive: the listener still serves.
async fn still_serves(listener: &Listener) {
    let client = libchan::connect_secure(listener.local_url(), Limits::default(), &swarm().client);
    let client = within("good client", client).await.expect("a good client is refused");
    let server = within("accept", listener.accept()).await.unwrap();
    assert_eq!(server.peer_name(), Some("client"));
    let tx = client.open::<String>().await.unwrap();
    tx.send("still here".into()).await.unwrap();
    let mut rx = within("accept channel", server.accept::<String>()).await.unwrap();
    assert_eq!(within("message", rx.recv()).await.unwrap().as_deref(), Some("still here"));
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what} timed out"))
}

/// Connects with `tls` and returns the client's error, lowercase.
async fn refused(listener: &Listener, tls: &Tls) -> String {
    let attempt = libchan::connect_secure(listener.local_url(), Limits::default(), tls);
    match within("refused client", attempt).await {
        Ok(session) => {
            panic!("{} let in a client it should refuse: {session:?}", listener.local_url())
        }
        Err(e) => {
            eprintln!("{}: refused: {e}", listener.local_url());
            e.to_string().to_lowercase()
        }
    }
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    capture_logs();
    let other = Ca::create("another CA").unwrap();
    let stranger = other.issue("stranger", &[], &[localhost()]).unwrap();
    // It trusts our CA, so only the server can object.
    let tls = raw_client(&swarm().ca, Some(&stranger));
    for scheme in SCHEMES {
        let listener = serve(scheme, Limits::default()).await;
        let error = refused(&listener, &tls).await;
        assert!(error.contains("unknownca"), "{scheme}: client error: {error}");
        let line = logged(&["handshake", "unknownissuer"]).await;
        assert!(line.contains("warn"), "{line}");
        still_serves(&listener).await;
    }
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    capture_logs();
    let tls = raw_client(&swarm().ca, None);
    for scheme in SCHEMES {
        let listener = serve(scheme, Limits::default()).await;
        let error = refused(&listener, &tls).await;
        assert!(error.contains("certificaterequired"), "{scheme}: client error: {error}");
        logged(&["handshake", "no certificates"]).await;
        still_serves(&listener).await;
    }
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    capture_logs();
    let ca = &swarm().ca;
    let day = Duration::from_secs(86_400);
    let past = SystemTime::now() - 30 * day;
    let old = ca.issue_with_validity("old", &[], &[localhost()], Validity::new(past, past + day));
    let tls = raw_client(ca, Some(&old.unwrap()));
    for scheme in SCHEMES {
        let listener = serve(scheme, Limits::default()).await;
        let error = refused(&listener, &tls).await;
        assert!(error.contains("certificateexpired"), "{scheme}: client error: {error}");
        logged(&["handshake", "expired"]).await;
        still_serves(&listener).await;
    }
}

#[tokio::test]
async fn server_from_another_ca_is_refused_by_the_client() {
    capture_logs();
    let impostor_ca = Ca::create("impostor CA").unwrap();
    let impostor = node_tls(&impostor_ca, "server");
    for scheme in SCHEMES {
        let url = format!("{scheme}://127.0.0.1:0");
        let listener = libchan::listen_secure(&url, Limits::default(), &impostor).await.unwrap();
        let error = refused(&listener, &swarm().client).await;
        assert!(error.contains("unknownissuer"), "{scheme}: client error: {error}");
    }
}

#[tokio::test]
async fn server_whose_name_does_not_match_is_refused_by_the_client() {
    capture_logs();
    let tls = swarm().client.clone().with_server_name("elsewhere");
    for scheme in SCHEMES {
        let listener = serve(scheme, Limits::default()).await;
        let error = refused(&listener, &tls).await.replace(' ', "");
        assert!(error.contains("notvalidforname"), "{scheme}: client error: {error}");
        // Dialing by the node name its certificate carries works.
        let by_name = swarm().client.clone().with_server_name("server");
        let session = libchan::connect_secure(listener.local_url(), Limits::default(), &by_name);
        within("dial by node name", session).await.unwrap();
    }
}

#[tokio::test]
async fn plaintext_client_on_a_tls_port_is_refused() {
    capture_logs();
    let listener = serve("tls", Limits::default()).await;
    let plain = listener.local_url().replace("tls://", "tcp://");
    let attempt = within("plaintext client", libchan::connect(&plain)).await;
    assert!(attempt.is_err(), "a plaintext session came up on a TLS port");
    logged(&["handshake failed", "corrupt message"]).await;
    still_serves(&listener).await;
}

#[tokio::test]
async fn garbage_datagrams_on_the_quic_port_are_ignored() {
    capture_logs();
    let listener = serve("quic", Limits::default()).await;
    let port = listener.local_url().rsplit(':').next().unwrap().to_string();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..500usize {
        let len = [1, 20, 1200, 1350][i % 4];
        let datagram: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        socket.send_to(&datagram, format!("127.0.0.1:{port}")).await.unwrap();
    }
    still_serves(&listener).await;
}

#[tokio::test]
async fn stalled_tls_handshake_is_dropped_after_the_timeout() {
    capture_logs();
    let mut limits = Limits::default();
    limits.handshake_timeout = Duration::from_millis(500);
    let listener = serve("tls", limits).await;
    let addr = listener.local_url().trim_start_matches("tls://").to_string();
    // Connects and never says a word.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let local = stalled.local_addr().unwrap().to_string();
    still_serves(&listener).await;
    let mut buf = [0u8; 1];
    let dropped = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf)).await;
    assert!(matches!(dropped, Ok(Ok(0) | Err(_))), "stalled connection still open: {dropped:?}");
    logged(&[&local, "timed out"]).await;
}

#[tokio::test]
async fn peer_names_come_from_certificates() {
    capture_logs();
    for scheme in SCHEMES {
        let listener = serve(scheme, Limits::default()).await;
        let client =
            libchan::connect_secure(listener.local_url(), Limits::default(), &swarm().client);
        let client = within("connect", client).await.unwrap();
        let server = within("accept", listener.accept()).await.unwrap();
        assert_eq!(client.peer_name(), Some("server"), "{scheme}");
        assert_eq!(server.peer_name(), Some("client"), "{scheme}");
    }
}

#[tokio::test]
async fn stalled_quic_handshake_is_dropped_after_the_timeout() {
    capture_logs();
    let mut limits = Limits::default();
    limits.handshake_timeout = Duration::from_millis(500);
    let listener = serve("quic", limits).await;
    let server_addr = listener.local_url().trim_start_matches("quic://").to_string();

    // A real client's first flight, caught by a socket that never answers...
    let catcher = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let catcher_url = format!("quic://{}", catcher.local_addr().unwrap());
    let dial = tokio::spawn(async move {
        let mut limits = Limits::default();
        limits.handshake_timeout = Duration::from_secs(2);
        libchan::connect_secure(&catcher_url, limits, &swarm().client).await
    });
    let mut initial = vec![0u8; 2048];
    let (len, _) = within("client initial", catcher.recv_from(&mut initial)).await.unwrap();
    initial.truncate(len);
    // ...is replayed to the listener from a socket that then goes silent.
    let staller = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    staller.send_to(&initial, &server_addr).await.unwrap();
    let mut reply = [0u8; 2048];
    within("server's first flight", staller.recv_from(&mut reply)).await.unwrap();
    let stalled = staller.local_addr().unwrap().to_string();

    still_serves(&listener).await;
    logged(&[&stalled, "handshake timed out"]).await;
    assert!(within("dial to a silent socket", dial).await.unwrap().is_err());
}
