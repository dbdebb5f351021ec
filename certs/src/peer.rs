//! The authenticated peer's node name, for allow-lists.

use rustls::CommonState;
use rustls_pki_types::CertificateDer;

use crate::certificate;
use crate::error::PeerNameError;

/// The node name of a peer, read from its end-entity certificate (the first of `certs`).
///
/// The name is the certificate's common name, which [`Ca::issue`](crate::Ca::issue) also puts
/// in the DNS names; for a certificate without one, its first DNS name. Both tokio-rustls
/// (`stream.get_ref().1.peer_certificates()`) and quinn (`connection.peer_identity()`,
/// downcast to `Vec<CertificateDer>`) give the slice.
///
/// This does not verify anything: call it only with certificates that a handshake using
/// [`Identity`](crate::Identity)'s configs has verified against the swarm CA.
///
/// # Errors
///
/// [`PeerNameError::NoCertificate`] for an empty slice, [`PeerNameError::BadCertificate`] if it
/// does not parse, [`PeerNameError::NoName`] or [`PeerNameError::InvalidName`] if it names no
/// valid node.
///
/// # Examples
///
/// ```
/// let ca = certs::Ca::create("example swarm CA")?;
/// let node = ca.issue("node-1", &["node-1.example".to_owned()], &[])?;
/// assert_eq!(certs::peer_name(&[node.cert_der().clone()])?, "node-1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn peer_name(certs: &[CertificateDer<'_>]) -> Result<String, PeerNameError> {
    let leaf = certs.first().ok_or(PeerNameError::NoCertificate)?;
    let parsed =
        certificate::parse(leaf).map_err(|reason| PeerNameError::BadCertificate { reason })?;
    certificate::node_name(&parsed)
}

/// The node name of the peer of a connection whose handshake has completed.
///
/// Takes a `rustls::ServerConnection` or `rustls::ClientConnection` (they dereference to
/// [`CommonState`]), e.g. `peer_name_of(tls_stream.get_ref().1)` with tokio-rustls.
///
/// # Errors
///
/// [`PeerNameError::NoCertificate`] before the handshake completes or if the peer sent no
/// certificate; otherwise as [`peer_name`].
pub fn peer_name_of(connection: &CommonState) -> Result<String, PeerNameError> {
    peer_name(connection.peer_certificates().unwrap_or_default())
}
