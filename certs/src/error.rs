//! Errors returned by this crate, one type per operation.

use std::path::PathBuf;
use std::time::SystemTime;

/// Creating a CA or issuing a node certificate failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The node name cannot be used: it goes into file names and DNS names.
    #[error("invalid node name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An extra DNS name given for the subject alternative names is not a valid DNS name.
    #[error("invalid DNS name {name:?} for the subject alternative names")]
    InvalidDnsName {
        /// The rejected name.
        name: String,
    },
    /// The CA common name is empty.
    #[error("the CA common name is empty")]
    EmptyCommonName,
    /// The validity window ends before it starts.
    #[error("validity window ends ({}) before it starts ({})", crate::validity::format(*.not_after), crate::validity::format(*.not_before))]
    InvalidValidity {
        /// Requested start of the window.
        not_before: SystemTime,
        /// Requested end of the window.
        not_after: SystemTime,
    },
    /// The system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// The certificate generator failed (key generation or signing).
    #[error("cannot generate the certificate: {0}")]
    Generate(#[source] rcgen::Error),
}

/// Writing a CA or node certificate and its key to a directory failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SaveError {
    /// The file exists and `force` was not given; nothing was written.
    #[error("{} already exists; refusing to overwrite it without force", .path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// The directory could not be created.
    #[error("cannot create directory {}: {source}", .path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Loading a CA or a node identity (certificate, key and CA certificate) failed.
///
/// Every variant names the file it is about. For identities built in memory
/// ([`Identity::new`](crate::Identity::new)) the "path" is a label such as `<ca.crt in memory>`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The node name given to [`Identity::load`](crate::Identity::load) is not a valid node name.
    #[error("invalid node name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The file does not exist.
    #[error("{} does not exist", .path.display())]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A private key file can be read by group or others.
    #[error(
        "key file {} has mode {mode:04o} and is readable by group or others; run `chmod 600 {}`",
        .path.display(),
        .path.display()
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not valid PEM.
    #[error("{} is not a valid PEM file: {reason}", .path.display())]
    NotPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser reported.
        reason: String,
    },
    /// The file has no `CERTIFICATE` PEM block.
    #[error("{} contains no PEM certificate (no BEGIN CERTIFICATE block)", .path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file has no private key PEM block.
    #[error("{} contains no PEM private key (no BEGIN PRIVATE KEY block)", .path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The certificate is not a valid X.509 certificate.
    #[error("{} holds an invalid certificate: {reason}", .path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key cannot be used (malformed or of an unsupported type).
    #[error("{} holds an unusable private key: {reason}", .path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA certificate is not a CA (basic constraints do not say CA).
    #[error("{} is not a CA certificate (basic constraints CA is not set)", .path.display())]
    NotCa {
        /// The file.
        path: PathBuf,
    },
    /// The certificate was not issued by the swarm CA.
    #[error("{} is not signed by the swarm CA in {}", .path.display(), .ca.display())]
    NotSignedByCa {
        /// The certificate file.
        path: PathBuf,
        /// The CA certificate file.
        ca: PathBuf,
    },
    /// The certificate has expired.
    #[error(
        "certificate {} expired on {} (valid from {} to {}); issue a new one",
        .path.display(),
        crate::validity::format(*.not_after),
        crate::validity::format(*.not_before),
        crate::validity::format(*.not_after)
    )]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// Start of its validity.
        not_before: SystemTime,
        /// End of its validity, in the past.
        not_after: SystemTime,
    },
    /// The certificate is not valid yet (check the clocks).
    #[error(
        "certificate {} is not valid before {} (valid from {} to {}); check the system clock",
        .path.display(),
        crate::validity::format(*.not_before),
        crate::validity::format(*.not_before),
        crate::validity::format(*.not_after)
    )]
    NotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// Start of its validity, in the future.
        not_before: SystemTime,
        /// End of its validity.
        not_after: SystemTime,
    },
    /// The private key does not belong to the certificate.
    #[error("private key {} does not match the certificate in {}", .key.display(), .cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The certificate is for another node than the one asked for.
    #[error("certificate {} is for node {found:?}, not {expected:?}", .path.display())]
    WrongName {
        /// The certificate file.
        path: PathBuf,
        /// The node name asked for.
        expected: String,
        /// The node name in the certificate.
        found: String,
    },
    /// The TLS verifier rejects the certificate for another reason (e.g. a missing extended
    /// key usage): peers would refuse it too.
    #[error("certificate {} would be refused by peers: {reason}", .path.display())]
    Rejected {
        /// The certificate file.
        path: PathBuf,
        /// The verifier's error.
        reason: rustls::Error,
    },
    /// Building the rustls configuration failed.
    #[error("cannot build the TLS configuration: {reason}")]
    Tls {
        /// What rustls reported.
        reason: String,
    },
}

/// Reading the node name from a peer's certificate failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerNameError {
    /// The peer presented no certificate (or the handshake has not completed).
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The peer's end-entity certificate cannot be parsed.
    #[error("the peer certificate is invalid: {reason}")]
    BadCertificate {
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate has neither a common name nor a DNS subject alternative name.
    #[error("the peer certificate names no node (no common name and no DNS name)")]
    NoName,
    /// The name in the certificate is not a valid node name.
    #[error("the peer certificate names {name:?}, which is not a valid node name: {reason}")]
    InvalidName {
        /// The name found.
        name: String,
        /// Why it is not a valid node name.
        reason: &'static str,
    },
}
