//! Node names: what a node is called in its certificate, its file names and its peers' allow-lists.

use rustls_pki_types::DnsName;

/// Whether `name` is a valid node name.
///
/// A node name is a DNS name made of ASCII letters, digits, `-`, `_` and `.`, with no empty
/// label, no label starting or ending with `-`, a last label that is not all digits (so it never
/// reads as an IP address), and at most 253 characters. `ca` (in any case) is reserved for the
/// CA's own files. These rules make the name safe as a file name (no `/`, no `..`) and usable as
/// the server name a client dials.
///
/// # Examples
///
/// ```
/// assert!(certs::is_valid_node_name("node-1.dc2"));
/// assert!(!certs::is_valid_node_name("../etc/passwd"));
/// assert!(!certs::is_valid_node_name("ca"));
/// ```
pub fn is_valid_node_name(name: &str) -> bool {
    check(name).is_ok()
}

/// Checks a node name, returning why it is invalid.
pub(crate) fn check(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the name is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("the name is longer than 253 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("the name has an empty label (a leading, trailing or doubled '.')");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("a label is longer than 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with '-'");
        }
    }
    if name.rsplit('.').next().is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit())) {
        return Err("the last label is all digits, which reads as an IP address");
    }
    if name.eq_ignore_ascii_case("ca") {
        return Err("the name is reserved for the CA files (ca.crt, ca.key)");
    }
    // The rules above are stricter than DNS names in rustls; this keeps them in step.
    if DnsName::try_from(name).is_err() {
        return Err("the name is not a valid DNS name");
    }
    Ok(())
}

const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_like_names() {
        for name in ["a", "node1", "node-1", "node_1", "n1.dc-2.example", "A1", "1a"] {
            assert_eq!(check(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn rejects_names_unsafe_as_file_or_dns_names() {
        for name in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            "a b",
            "a..b",
            ".a",
            "a.",
            "-a",
            "a-",
            "a.-b",
            "ca",
            "CA",
            "127.0.0.1",
            "123",
            "é",
            "a\0",
        ] {
            assert!(check(name).is_err(), "{name:?} accepted");
        }
    }

    #[test]
    fn limits_lengths() {
        assert!(check(&"a".repeat(63)).is_ok());
        assert!(check(&"a".repeat(64)).is_err());
        let long = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join(".");
        assert_eq!(long.len(), 253);
        assert!(check(&long).is_ok());
        assert!(check(&format!("{long}e")).is_err());
    }
}
