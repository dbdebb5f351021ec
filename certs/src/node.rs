//! Node certificates as issued by the CA.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::SaveError;
use crate::validity::Validity;
use crate::{file, pem};

/// A node certificate with its private key, fresh from [`Ca::issue`](crate::Ca::issue).
///
/// Save it with [`NodeCert::save`] and load it on the node with
/// [`Identity::load`](crate::Identity::load), or use it in memory with
/// [`Identity::new`](crate::Identity::new).
pub struct NodeCert {
    name: String,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    validity: Validity,
}

impl NodeCert {
    pub(crate) fn new(
        name: String,
        cert: CertificateDer<'static>,
        key: PrivatePkcs8KeyDer<'static>,
        validity: Validity,
    ) -> Self {
        Self { name, cert, key, validity }
    }

    /// Writes `DIR/NAME.crt` and `DIR/NAME.key` (PEM), creating `DIR` (mode 0700) if needed.
    ///
    /// The key file is created with mode 0600, so it is never readable by others, not even
    /// while being written.
    ///
    /// # Errors
    ///
    /// [`SaveError::Exists`] if either file exists and `force` is false (then nothing is
    /// written); [`SaveError::CreateDir`] or [`SaveError::Write`] on I/O errors.
    pub fn save(&self, dir: impl AsRef<Path>, force: bool) -> Result<(), SaveError> {
        let dir = dir.as_ref();
        let (cert_path, key_path) = paths(dir, &self.name);
        file::ensure_dir(dir)?;
        file::check_absent(&[&cert_path, &key_path], force)?;
        file::write(&key_path, self.key_pem().as_bytes(), true, force)?;
        file::write(&cert_path, self.cert_pem().as_bytes(), false, force)
    }

    /// The node name (common name and first DNS name of the certificate).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The certificate, DER-encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The certificate, PEM-encoded (the contents of `NAME.crt`).
    pub fn cert_pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.cert)
    }

    /// The private key, DER-encoded PKCS#8. It is secret: never log it.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// The private key, PEM-encoded PKCS#8 (the contents of `NAME.key`). It is secret: never
    /// log it.
    pub fn key_pem(&self) -> String {
        pem::encode("PRIVATE KEY", self.key.secret_pkcs8_der())
    }

    /// When the certificate is valid.
    pub fn validity(&self) -> Validity {
        self.validity
    }
}

impl fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("NodeCert")
            .field("name", &self.name)
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

/// `DIR/NAME.crt` and `DIR/NAME.key`; `name` must be a valid node name.
pub(crate) fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")))
}
