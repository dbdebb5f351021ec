//! Reading the fields this crate needs from X.509 certificates.

use std::path::Path;
use std::time::SystemTime;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::error::{LoadError, PeerNameError};
use crate::validity::{self, Validity};

/// Parses a DER certificate; trailing bytes are an error.
pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], certificate)) => Ok(certificate),
        Ok((rest, _)) => Err(format!("{} bytes after the certificate", rest.len())),
        Err(error) => Err(error.to_string()),
    }
}

/// [`parse`], with the error naming the file.
pub(crate) fn parse_file<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, LoadError> {
    parse(der).map_err(|reason| LoadError::BadCertificate { path: path.to_owned(), reason })
}

/// The certificate's validity window.
pub(crate) fn validity(certificate: &X509Certificate<'_>) -> Validity {
    let window = certificate.validity();
    Validity::new(
        validity::from_unix(window.not_before.timestamp()),
        validity::from_unix(window.not_after.timestamp()),
    )
}

/// Fails if the certificate in `path` is not valid at `now`.
pub(crate) fn check_validity(
    path: &Path,
    certificate: &X509Certificate<'_>,
    now: SystemTime,
) -> Result<(), LoadError> {
    let Validity { not_before, not_after } = validity(certificate);
    if now < not_before {
        return Err(LoadError::NotYetValid { path: path.to_owned(), not_before, not_after });
    }
    if now > not_after {
        return Err(LoadError::Expired { path: path.to_owned(), not_before, not_after });
    }
    Ok(())
}

/// The first common name in the subject, if any.
pub(crate) fn common_name<'a>(
    certificate: &'a X509Certificate<'_>,
) -> Result<Option<&'a str>, String> {
    certificate
        .subject()
        .iter_common_name()
        .next()
        .map(|name| name.as_str().map_err(|error| format!("unreadable common name: {error}")))
        .transpose()
}

/// The node a certificate was issued to: its common name (which this crate also puts in the DNS
/// names), or failing that its first DNS name.
pub(crate) fn node_name(certificate: &X509Certificate<'_>) -> Result<String, PeerNameError> {
    let bad = |reason| PeerNameError::BadCertificate { reason };
    let name = match common_name(certificate).map_err(bad)? {
        Some(name) => name,
        None => {
            let names = certificate
                .subject_alternative_name()
                .map_err(|error| bad(format!("unreadable subject alternative names: {error}")))?;
            names
                .and_then(|names| {
                    names.value.general_names.iter().find_map(|name| match name {
                        GeneralName::DNSName(name) => Some(*name),
                        _ => None,
                    })
                })
                .ok_or(PeerNameError::NoName)?
        }
    };
    crate::name::check(name)
        .map_err(|reason| PeerNameError::InvalidName { name: name.to_owned(), reason })?;
    Ok(name.to_owned())
}
