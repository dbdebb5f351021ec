//! PEM encoding and decoding of certificates and keys.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::LoadError;

/// The certificates in a PEM file, in file order; at least one.
pub(crate) fn certificates(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let certificates: Vec<_> = sections(path, bytes)?
        .into_iter()
        .filter_map(|(kind, der)| CertificateDer::from_pem(kind, der))
        .collect();
    if certificates.is_empty() {
        return Err(LoadError::NoCertificate { path: path.to_owned() });
    }
    Ok(certificates)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub(crate) fn private_key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, LoadError> {
    sections(path, bytes)?
        .into_iter()
        .find_map(|(kind, der)| PrivateKeyDer::from_pem(kind, der))
        .ok_or_else(|| LoadError::NoKey { path: path.to_owned() })
}

/// Encodes DER as a PEM block with the given label, lines of 64 characters ending in `\n`.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let base64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in base64.as_bytes().chunks(64) {
        // base64 output is ASCII, so any chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// All PEM sections of a file; a file with none is not PEM.
fn sections(path: &Path, bytes: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, LoadError> {
    let not_pem = |reason: String| LoadError::NotPem { path: path.to_owned(), reason };
    let mut reader = bytes;
    let mut sections = Vec::new();
    while let Some(section) =
        pem::from_buf(&mut reader).map_err(|error| not_pem(error.to_string()))?
    {
        sections.push(section);
    }
    if sections.is_empty() {
        return Err(not_pem("no PEM block (-----BEGIN ...-----) found".to_owned()));
    }
    Ok(sections)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, output) in vectors {
            assert_eq!(base64(input.as_bytes()), output);
        }
    }

    #[test]
    fn encode_round_trips_through_the_parser() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let text = encode("CERTIFICATE", &der);
        assert!(text.lines().all(|line| line.len() <= 64));
        let parsed = certificates(Path::new("x.crt"), text.as_bytes()).unwrap();
        assert_eq!(parsed, vec![CertificateDer::from(der)]);
    }

    #[test]
    fn text_without_pem_blocks_is_not_pem() {
        let error = certificates(Path::new("x.crt"), b"hello").unwrap_err();
        assert!(matches!(error, LoadError::NotPem { .. }), "{error}");
    }

    #[test]
    fn a_key_is_not_a_certificate() {
        let text = encode("PRIVATE KEY", b"not really a key");
        let error = certificates(Path::new("x.crt"), text.as_bytes()).unwrap_err();
        assert!(matches!(error, LoadError::NoCertificate { .. }), "{error}");
        let error =
            private_key(Path::new("x.key"), encode("CERTIFICATE", b"c").as_bytes()).unwrap_err();
        assert!(matches!(error, LoadError::NoKey { .. }), "{error}");
    }
}
