//! A node's identity (CA certificate, node certificate and key) and the rustls configs built
//! from it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, Error as TlsError, InconsistentKeys, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::ca::{self, Ca};
use crate::error::LoadError;
use crate::node::{self, NodeCert};
use crate::validity::Validity;
use crate::{certificate, file, pem, ALPN};

/// What a node needs to speak mutual TLS in its swarm: the swarm CA certificate, its own
/// certificate and its private key, checked against each other, and the rustls server and
/// client configs built from them.
///
/// Both configs are TLS 1.3 only, advertise ALPN [`ALPN`] (`libchan/1`), trust only the swarm
/// CA, present the node certificate, and use the *ring* crypto provider explicitly, so no
/// process-wide default provider needs installing. The QUIC transport wraps the same configs.
///
/// # Examples
///
/// ```
/// let ca = certs::Ca::create("example swarm CA")?;
/// let identity = certs::Identity::new(&ca, &ca.issue("node-1", &[], &[])?)?;
/// let server = identity.server_config();
/// assert_eq!(server.alpn_protocols, [certs::ALPN.to_vec()]);
/// // A client dials a peer by its node name (or another name in its certificate):
/// let peer = rustls::pki_types::ServerName::try_from("node-2")?;
/// let client = rustls::ClientConnection::new(identity.client_config(), peer)?;
/// # drop(client);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Identity {
    name: String,
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    validity: Validity,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl Identity {
    /// Loads the identity of node `name` from `DIR/ca.crt`, `DIR/NAME.crt` and `DIR/NAME.key`.
    ///
    /// # Errors
    ///
    /// As [`Identity::from_files`], plus [`LoadError::InvalidName`] if `name` is not a valid
    /// node name and [`LoadError::WrongName`] if the certificate is for another node.
    pub fn load(dir: impl AsRef<Path>, name: &str) -> Result<Self, LoadError> {
        crate::name::check(name)
            .map_err(|reason| LoadError::InvalidName { name: name.to_owned(), reason })?;
        let dir = dir.as_ref();
        let (cert_path, key_path) = node::paths(dir, name);
        let identity = Self::from_files(dir.join(ca::CERT_FILE), &cert_path, key_path)?;
        if identity.name != name {
            return Err(LoadError::WrongName {
                path: cert_path,
                expected: name.to_owned(),
                found: identity.name,
            });
        }
        Ok(identity)
    }

    /// Loads an identity from a CA certificate, a node certificate and a key file (all PEM).
    ///
    /// The node certificate file may hold further certificates after the node's own; they are
    /// sent as intermediates. The key may be PKCS#8, PKCS#1 or SEC1.
    ///
    /// # Errors
    ///
    /// [`LoadError`] naming the file and the reason: a missing or unreadable file, a key file
    /// readable by group or others (on unix), no PEM, no certificate or no key in it, a CA
    /// certificate that is not a CA, a certificate not signed by that CA, a certificate (or CA)
    /// that has expired or is not valid yet, a key that does not match the certificate, or a
    /// certificate peers would refuse for another reason.
    pub fn from_files(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, LoadError> {
        let sources = Sources {
            ca: ca.as_ref().to_owned(),
            cert: cert.as_ref().to_owned(),
            key: key.as_ref().to_owned(),
        };
        let ca = pem::certificates(&sources.ca, &file::read(&sources.ca)?)?.swap_remove(0);
        let chain = pem::certificates(&sources.cert, &file::read(&sources.cert)?)?;
        let key = pem::private_key(&sources.key, &file::read_private(&sources.key)?)?;
        Self::build(&sources, ca, chain, key)
    }

    /// An identity from a CA and a node certificate in memory, e.g. in tests.
    ///
    /// # Errors
    ///
    /// As [`Identity::from_files`], for the checks that apply in memory (e.g. an expired
    /// certificate, or one from another CA); the "paths" in the errors are labels such as
    /// `<node-1.crt in memory>`.
    pub fn new(ca: &Ca, node: &NodeCert) -> Result<Self, LoadError> {
        let sources = Sources {
            ca: PathBuf::from(format!("<{} in memory>", ca::CERT_FILE)),
            cert: PathBuf::from(format!("<{}.crt in memory>", node.name())),
            key: PathBuf::from(format!("<{}.key in memory>", node.name())),
        };
        Self::build(&sources, ca.cert_der().clone(), vec![node.cert_der().clone()], node.key_der())
    }

    /// The node name, read from the certificate.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The swarm CA certificate, DER-encoded.
    pub fn ca_cert_der(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    /// The node certificate, DER-encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// When the node certificate is valid.
    pub fn validity(&self) -> Validity {
        self.validity
    }

    /// The config for accepting connections.
    ///
    /// TLS 1.3 only; a client certificate is required and must chain to the swarm CA (the only
    /// root); ALPN `libchan/1`; the node certificate is presented whatever server name the
    /// client asked for. After the handshake, [`peer_name_of`](crate::peer_name_of) gives the
    /// client's node name for checking against an allow-list.
    ///
    /// The config is built once when the identity is loaded; this clones an `Arc`. To change a
    /// field, clone the config: `let mut config = (*identity.server_config()).clone();`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server)
    }

    /// The config for dialing other nodes.
    ///
    /// TLS 1.3 only; the server certificate must chain to the swarm CA (the only root) and
    /// name the server name dialed; the node certificate is presented for client
    /// authentication; ALPN `libchan/1`.
    ///
    /// Dial with the peer's node name as the server name
    /// (`ServerName::try_from("node-2")`), or another DNS name or IP address that was put in
    /// its certificate when it was issued; the host you connect to does not matter otherwise.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.client)
    }

    fn build(
        sources: &Sources,
        ca: CertificateDer<'static>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, LoadError> {
        let now = SystemTime::now();
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let ca_parsed = certificate::parse_file(&sources.ca, &ca)?;
        if !ca_parsed.is_ca() {
            return Err(LoadError::NotCa { path: sources.ca.clone() });
        }
        certificate::check_validity(&sources.ca, &ca_parsed, now)?;

        // `chain` is never empty: pem::certificates returns at least one.
        let leaf_der = chain[0].clone();
        let leaf = certificate::parse_file(&sources.cert, &leaf_der)?;
        let signed_by_ca = leaf.issuer().as_raw() == ca_parsed.subject().as_raw()
            && leaf.verify_signature(Some(ca_parsed.public_key())).is_ok();
        if !signed_by_ca {
            return Err(LoadError::NotSignedByCa {
                path: sources.cert.clone(),
                ca: sources.ca.clone(),
            });
        }
        certificate::check_validity(&sources.cert, &leaf, now)?;
        let validity = certificate::validity(&leaf);
        let name = certificate::node_name(&leaf).map_err(|error| LoadError::BadCertificate {
            path: sources.cert.clone(),
            reason: error.to_string(),
        })?;
        drop(leaf);
        drop(ca_parsed);

        let signing_key = provider.key_provider.load_private_key(key).map_err(|error| {
            LoadError::BadKey { path: sources.key.clone(), reason: error.to_string() }
        })?;
        let certified = CertifiedKey::new(chain.clone(), signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(LoadError::KeyMismatch {
                    key: sources.key.clone(),
                    cert: sources.cert.clone(),
                })
            }
            Err(error) => {
                return Err(LoadError::BadKey {
                    path: sources.key.clone(),
                    reason: error.to_string(),
                })
            }
        }
        let certified = Arc::new(SingleCertAndKey::from(certified));

        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).map_err(|error| LoadError::BadCertificate {
            path: sources.ca.clone(),
            reason: error.to_string(),
        })?;
        let roots = Arc::new(roots);
        let tls_error = |reason: String| LoadError::Tls { reason };
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|error| tls_error(error.to_string()))?;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|error| tls_error(error.to_string()))?;

        // Our checks above give clearer messages; these catch anything else peers would refuse
        // (e.g. a missing extended key usage or DNS name), with the verifiers peers run.
        let rejected = |reason| LoadError::Rejected { path: sources.cert.clone(), reason };
        let unix_now = UnixTime::now();
        client_verifier.verify_client_cert(&leaf_der, &chain[1..], unix_now).map_err(rejected)?;
        let own_name = ServerName::try_from(name.clone()).map_err(|error| {
            LoadError::BadCertificate { path: sources.cert.clone(), reason: error.to_string() }
        })?;
        server_verifier
            .verify_server_cert(&leaf_der, &chain[1..], &own_name, &[], unix_now)
            .map_err(rejected)?;

        let versions = [&rustls::version::TLS13];
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|error| tls_error(error.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(certified.clone());
        server.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|error| tls_error(error.to_string()))?
            .with_webpki_verifier(server_verifier)
            .with_client_cert_resolver(certified);
        client.alpn_protocols = vec![ALPN.to_vec()];

        Ok(Self {
            name,
            ca,
            cert: leaf_der,
            validity,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

/// Where the three parts of an identity came from, for error messages.
struct Sources {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}
