//! The swarm CA: creating, saving, loading, and issuing node certificates.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::SystemTime;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, DnsName, PrivatePkcs8KeyDer};

use crate::error::{IssueError, LoadError, SaveError};
use crate::node::NodeCert;
use crate::validity::{self, Validity};
use crate::{certificate, file, pem};

/// The swarm certificate authority: a self-signed CA certificate and its private key.
///
/// Every node of a swarm trusts exactly this CA and presents a certificate it issued
/// ([`Ca::issue`]). The CA key signs node certificates and nothing else; keep it on the machine
/// where certificates are issued, not on the nodes.
///
/// # Examples
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let ca = certs::Ca::create("example swarm CA")?;
/// ca.save(dir.path(), false)?;
/// let node = certs::Ca::load(dir.path())?.issue("node-1", &[], &["127.0.0.1".parse()?])?;
/// node.save(dir.path(), false)?;
/// let identity = certs::Identity::load(dir.path(), "node-1")?;
/// assert_eq!(identity.name(), "node-1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Ca {
    common_name: String,
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    validity: Validity,
}

impl Ca {
    /// Creates a new CA with an ECDSA P-256 key, valid from an hour ago for
    /// [`Validity::CA_DAYS`] days.
    ///
    /// The CA certificate may only issue end-entity certificates (path length 0).
    ///
    /// # Errors
    ///
    /// [`IssueError::EmptyCommonName`] for a blank name, [`IssueError::Generate`] if key
    /// generation or signing fails.
    pub fn create(common_name: &str) -> Result<Self, IssueError> {
        Self::create_with_validity(common_name, Validity::days(Validity::CA_DAYS))
    }

    /// Creates a new CA valid during `validity`, e.g. an expired one for tests.
    ///
    /// # Errors
    ///
    /// As [`Ca::create`], and [`IssueError::InvalidValidity`] if the window ends before it starts.
    pub fn create_with_validity(common_name: &str, validity: Validity) -> Result<Self, IssueError> {
        if common_name.trim().is_empty() {
            return Err(IssueError::EmptyCommonName);
        }
        check_window(validity)?;
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(IssueError::Generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity::to_offset(validity.not_before);
        params.not_after = validity::to_offset(validity.not_after);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(IssueError::Generate)?;
        Ok(Self {
            common_name: common_name.to_owned(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
            validity,
        })
    }

    /// Loads `DIR/ca.crt` and `DIR/ca.key`.
    ///
    /// # Errors
    ///
    /// [`LoadError`] naming the file: missing or unreadable, a key readable by group or others,
    /// not PEM, no certificate or key in it, a certificate that is not a CA, a key that does not
    /// match it, or a CA that has expired or is not valid yet.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, LoadError> {
        let dir = dir.as_ref();
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let cert = pem::certificates(&cert_path, &file::read(&cert_path)?)?.swap_remove(0);
        let key_der = pem::private_key(&key_path, &file::read_private(&key_path)?)?;
        let key = KeyPair::try_from(&key_der).map_err(|error| LoadError::BadKey {
            path: key_path.clone(),
            reason: format!("{error} (the CA key must be PKCS#8 ECDSA or Ed25519)"),
        })?;

        let parsed = certificate::parse_file(&cert_path, &cert)?;
        if !parsed.is_ca() {
            return Err(LoadError::NotCa { path: cert_path });
        }
        if key.subject_public_key_info() != parsed.public_key().raw {
            return Err(LoadError::KeyMismatch { key: key_path, cert: cert_path });
        }
        certificate::check_validity(&cert_path, &parsed, SystemTime::now())?;
        let common_name = certificate::common_name(&parsed)
            .map_err(|reason| LoadError::BadCertificate { path: cert_path.clone(), reason })?
            .unwrap_or_default()
            .to_owned();
        let validity = certificate::validity(&parsed);
        drop(parsed);

        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(|error| {
            LoadError::BadCertificate { path: cert_path, reason: error.to_string() }
        })?;
        Ok(Self { common_name, cert, issuer, validity })
    }

    /// Writes `DIR/ca.crt` and `DIR/ca.key` (PEM), creating `DIR` (mode 0700) if needed.
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
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        file::ensure_dir(dir)?;
        file::check_absent(&[&cert_path, &key_path], force)?;
        let key_pem = pem::encode("PRIVATE KEY", self.issuer.key().serialized_der());
        file::write(&key_path, key_pem.as_bytes(), true, force)?;
        file::write(&cert_path, self.cert_pem().as_bytes(), false, force)
    }

    /// Issues a node certificate valid from an hour ago for [`Validity::NODE_DAYS`] days.
    ///
    /// The certificate has a fresh ECDSA P-256 key; `name` as its common name and first DNS
    /// name; the extra `dns` names and `ips` as further subject alternative names; and the
    /// extended key usages serverAuth and clientAuth, so the node can both accept and dial.
    ///
    /// Clients dial a node using a name in its certificate: its node name, or one of `dns` or
    /// `ips`.
    ///
    /// # Errors
    ///
    /// [`IssueError::InvalidName`] if `name` is not a valid node name (see
    /// [`is_valid_node_name`](crate::is_valid_node_name)), [`IssueError::InvalidDnsName`] for
    /// a bad extra name, [`IssueError::Generate`] if key generation or signing fails.
    pub fn issue(
        &self,
        name: &str,
        dns: &[String],
        ips: &[IpAddr],
    ) -> Result<NodeCert, IssueError> {
        self.issue_with_validity(name, dns, ips, Validity::days(Validity::NODE_DAYS))
    }

    /// Issues a node certificate valid during `validity`; otherwise as [`Ca::issue`].
    ///
    /// Tests use it to make certificates that have expired or are not valid yet.
    ///
    /// # Errors
    ///
    /// As [`Ca::issue`], and [`IssueError::InvalidValidity`] if the window ends before it starts.
    pub fn issue_with_validity(
        &self,
        name: &str,
        dns: &[String],
        ips: &[IpAddr],
        validity: Validity,
    ) -> Result<NodeCert, IssueError> {
        crate::name::check(name)
            .map_err(|reason| IssueError::InvalidName { name: name.to_owned(), reason })?;
        check_window(validity)?;

        let mut names = vec![SanType::DnsName(ia5(name)?)];
        for extra in dns {
            if DnsName::try_from(extra.as_str()).is_err() {
                return Err(IssueError::InvalidDnsName { name: extra.clone() });
            }
            let san = SanType::DnsName(ia5(extra)?);
            if !names.contains(&san) {
                names.push(san);
            }
        }
        for ip in ips {
            let san = SanType::IpAddress(*ip);
            if !names.contains(&san) {
                names.push(san);
            }
        }

        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(IssueError::Generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = names;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity::to_offset(validity.not_before);
        params.not_after = validity::to_offset(validity.not_after);
        params.serial_number = Some(random_serial()?);
        let cert = params.signed_by(&key, &self.issuer).map_err(IssueError::Generate)?;
        Ok(NodeCert::new(
            name.to_owned(),
            cert.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()),
            validity,
        ))
    }

    /// The CA's common name.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// The CA certificate, DER-encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA certificate, PEM-encoded (the contents of `ca.crt`).
    pub fn cert_pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.cert)
    }

    /// When the CA certificate is valid. Node certificates outlive it in vain.
    pub fn validity(&self) -> Validity {
        self.validity
    }
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Ca")
            .field("common_name", &self.common_name)
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

fn check_window(validity: Validity) -> Result<(), IssueError> {
    if validity.not_after < validity.not_before {
        return Err(IssueError::InvalidValidity {
            not_before: validity.not_before,
            not_after: validity.not_after,
        });
    }
    Ok(())
}

fn ia5(name: &str) -> Result<Ia5String, IssueError> {
    Ia5String::try_from(name).map_err(|_| IssueError::InvalidDnsName { name: name.to_owned() })
}

/// A random positive serial number of 16 bytes, as RFC 5280 §4.1.2.2 recommends (unpredictable,
/// at most 20 bytes).
fn random_serial() -> Result<SerialNumber, IssueError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| IssueError::Random)?;
    // Positive and of full length once DER-encoded.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// The file name of the CA certificate.
pub(crate) const CERT_FILE: &str = "ca.crt";
/// The file name of the CA key.
pub(crate) const KEY_FILE: &str = "ca.key";
