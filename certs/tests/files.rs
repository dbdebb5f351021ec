//! Saving and loading CAs and node identities, and every load error.

#![cfg(unix)]

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use certs::{Ca, Identity, IssueError, LoadError, SaveError, Validity};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A directory with a saved CA and node `node-1`.
fn swarm() -> (tempfile::TempDir, Ca) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::create("test swarm CA").unwrap();
    ca.save(dir.path(), false).unwrap();
    ca.issue("node-1", &[], &[]).unwrap().save(dir.path(), false).unwrap();
    (dir, ca)
}

fn load_error(dir: &Path, name: &str) -> LoadError {
    let error = Identity::load(dir, name).unwrap_err();
    eprintln!("{error}");
    error
}

#[test]
fn saved_files_load_back() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::create("test swarm CA").unwrap();
    ca.save(dir.path(), false).unwrap();
    let loaded = Ca::load(dir.path()).unwrap();
    assert_eq!(loaded.common_name(), "test swarm CA");
    assert_eq!(loaded.cert_der(), ca.cert_der());
    let ca_days = ca.validity().not_after.duration_since(SystemTime::now()).unwrap();
    assert!(ca_days > 3649 * DAY && ca_days <= 3650 * DAY, "{ca_days:?}");

    // The loaded CA issues certificates the saved CA certificate verifies.
    let ips: [IpAddr; 2] = ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    let node = loaded.issue("node-1", &["node-1.example".to_owned()], &ips).unwrap();
    node.save(dir.path(), false).unwrap();
    assert_eq!(fs::read_to_string(dir.path().join("node-1.crt")).unwrap(), node.cert_pem());
    let identity = Identity::load(dir.path(), "node-1").unwrap();
    assert_eq!(identity.name(), "node-1");
    assert_eq!(identity.cert_der(), node.cert_der());
    assert_eq!(identity.ca_cert_der(), ca.cert_der());
    let node_days = identity.validity().not_after.duration_since(SystemTime::now()).unwrap();
    assert!(node_days > 364 * DAY && node_days <= 365 * DAY, "{node_days:?}");
    assert!(identity.validity().not_before < SystemTime::now());

    let same = Identity::from_files(
        dir.path().join("ca.crt"),
        dir.path().join("node-1.crt"),
        dir.path().join("node-1.key"),
    )
    .unwrap();
    assert_eq!(same.cert_der(), identity.cert_der());
}

#[test]
fn key_files_have_mode_0600() {
    let (dir, _ca) = swarm();
    assert_eq!(mode(&dir.path().join("ca.key")), 0o600);
    assert_eq!(mode(&dir.path().join("node-1.key")), 0o600);
    // Certificates are public.
    assert_eq!(mode(&dir.path().join("ca.crt")) & 0o600, 0o600);
}

#[test]
fn save_refuses_to_overwrite_without_force() {
    let (dir, ca) = swarm();
    let before = fs::read(dir.path().join("ca.key")).unwrap();

    let other = Ca::create("other CA").unwrap();
    let error = other.save(dir.path(), false).unwrap_err();
    assert!(matches!(&error, SaveError::Exists { path } if path.ends_with("ca.crt")), "{error}");
    assert!(error.to_string().contains("already exists"), "{error}");
    assert!(error.to_string().contains("force"), "{error}");
    assert_eq!(fs::read(dir.path().join("ca.key")).unwrap(), before);

    let node = ca.issue("node-1", &[], &[]).unwrap();
    let error = node.save(dir.path(), false).unwrap_err();
    assert!(
        matches!(&error, SaveError::Exists { path } if path.ends_with("node-1.crt")),
        "{error}"
    );

    // Only the key is there: still refused, and nothing is written.
    fs::remove_file(dir.path().join("node-1.crt")).unwrap();
    let error = node.save(dir.path(), false).unwrap_err();
    assert!(
        matches!(&error, SaveError::Exists { path } if path.ends_with("node-1.key")),
        "{error}"
    );
    assert!(!dir.path().join("node-1.crt").exists());
}

#[test]
fn save_with_force_replaces_files_and_tightens_the_key_mode() {
    let (dir, ca) = swarm();
    let key = dir.path().join("node-1.key");
    chmod(&key, 0o644);
    let node = ca.issue("node-1", &[], &[]).unwrap();
    node.save(dir.path(), true).unwrap();
    assert_eq!(mode(&key), 0o600);
    assert_eq!(fs::read_to_string(&key).unwrap(), node.key_pem());
    assert_eq!(Identity::load(dir.path(), "node-1").unwrap().cert_der(), node.cert_der());

    let other = Ca::create("other CA").unwrap();
    other.save(dir.path(), true).unwrap();
    assert_eq!(Ca::load(dir.path()).unwrap().cert_der(), other.cert_der());
    assert_eq!(mode(&dir.path().join("ca.key")), 0o600);
    // No temporary files left behind.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|name| !name.starts_with('.')), "{names:?}");
}

#[test]
fn save_creates_a_private_directory() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("a/b");
    Ca::create("test swarm CA").unwrap().save(&dir, false).unwrap();
    assert_eq!(mode(&dir), 0o700);
}

#[test]
fn missing_files_are_named() {
    for file in ["ca.crt", "node-1.crt", "node-1.key"] {
        let (dir, _ca) = swarm();
        let path = dir.path().join(file);
        fs::remove_file(&path).unwrap();
        let error = load_error(dir.path(), "node-1");
        assert!(matches!(&error, LoadError::Missing { path: p } if *p == path), "{error}");
        assert!(error.to_string().contains(&path.display().to_string()), "{error}");
        assert!(error.to_string().contains("does not exist"), "{error}");
    }
    let (dir, _ca) = swarm();
    fs::remove_file(dir.path().join("ca.key")).unwrap();
    let error = Ca::load(dir.path()).unwrap_err();
    assert!(matches!(&error, LoadError::Missing { path } if path.ends_with("ca.key")), "{error}");
}

#[test]
fn key_readable_by_others_is_refused() {
    let (dir, _ca) = swarm();
    let key = dir.path().join("node-1.key");
    for bad in [0o644, 0o640, 0o604, 0o660] {
        chmod(&key, bad);
        let error = load_error(dir.path(), "node-1");
        assert!(
            matches!(&error, LoadError::KeyPermissions { path, mode } if *path == key && *mode == bad),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains(&format!("{bad:04o}")), "{message}");
        assert!(message.contains("chmod 600"), "{message}");
        assert!(message.contains(&key.display().to_string()), "{message}");
    }
    chmod(&key, 0o400);
    Identity::load(dir.path(), "node-1").unwrap();

    let ca_key = dir.path().join("ca.key");
    chmod(&ca_key, 0o644);
    let error = Ca::load(dir.path()).unwrap_err();
    assert!(matches!(&error, LoadError::KeyPermissions { path, .. } if *path == ca_key), "{error}");
}

#[test]
fn garbage_is_not_pem() {
    let (dir, _ca) = swarm();
    let cert = dir.path().join("node-1.crt");
    fs::write(&cert, "this is not a certificate\n").unwrap();
    let error = load_error(dir.path(), "node-1");
    assert!(matches!(&error, LoadError::NotPem { path, .. } if *path == cert), "{error}");
    assert!(error.to_string().contains("not a valid PEM file"), "{error}");

    let key = dir.path().join("node-1.key");
    let (dir2, _ca) = swarm();
    fs::write(&key, [0xff, 0x00, 0x13]).unwrap();
    let error =
        Identity::from_files(dir2.path().join("ca.crt"), dir2.path().join("node-1.crt"), &key)
            .unwrap_err();
    assert!(matches!(&error, LoadError::NotPem { path, .. } if *path == key), "{error}");
}

#[test]
fn a_key_where_a_certificate_belongs_is_no_certificate() {
    let (dir, _ca) = swarm();
    fs::copy(dir.path().join("node-1.key"), dir.path().join("node-1.crt")).unwrap();
    let error = load_error(dir.path(), "node-1");
    assert!(
        matches!(&error, LoadError::NoCertificate { path } if path.ends_with("node-1.crt")),
        "{error}"
    );
    assert!(error.to_string().contains("no PEM certificate"), "{error}");
}

#[test]
fn a_certificate_where_the_key_belongs_is_no_key() {
    let (dir, _ca) = swarm();
    let key = dir.path().join("node-1.key");
    fs::remove_file(&key).unwrap();
    fs::copy(dir.path().join("node-1.crt"), &key).unwrap();
    chmod(&key, 0o600);
    let error = load_error(dir.path(), "node-1");
    assert!(matches!(&error, LoadError::NoKey { path } if *path == key), "{error}");
    assert!(error.to_string().contains("no PEM private key"), "{error}");
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    // Another CA with another name, and one with the same name (only the signature differs).
    for other_name in ["other CA", "test swarm CA"] {
        let (dir, _ca) = swarm();
        let other = Ca::create(other_name).unwrap();
        other.issue("node-1", &[], &[]).unwrap().save(dir.path(), true).unwrap();
        let error = load_error(dir.path(), "node-1");
        assert!(
            matches!(&error, LoadError::NotSignedByCa { path, ca }
                if path.ends_with("node-1.crt") && ca.ends_with("ca.crt")),
            "{error}"
        );
        assert!(error.to_string().contains("not signed by the swarm CA"), "{error}");
    }
}

#[test]
fn an_expired_certificate_is_refused_with_its_dates() {
    let (dir, ca) = swarm();
    let now = SystemTime::now();
    let window = Validity::new(now - 3 * DAY, now - DAY);
    ca.issue_with_validity("node-1", &[], &[], window).unwrap().save(dir.path(), true).unwrap();
    let error = load_error(dir.path(), "node-1");
    let LoadError::Expired { path, not_before, not_after } = &error else {
        panic!("{error}");
    };
    assert!(path.ends_with("node-1.crt"));
    assert!(not_after.duration_since(now - DAY).unwrap_or_default() < Duration::from_secs(1));
    assert!(*not_before < *not_after);
    let message = error.to_string();
    assert!(message.contains("expired on"), "{message}");
    let year = time_year(window.not_after);
    assert!(message.contains(&format!("{year}-")), "{message}");
    assert!(message.contains('Z'), "{message}");
}

#[test]
fn a_certificate_not_valid_yet_is_refused_with_its_dates() {
    let (dir, ca) = swarm();
    let now = SystemTime::now();
    ca.issue_with_validity("node-1", &[], &[], Validity::new(now + DAY, now + 3 * DAY))
        .unwrap()
        .save(dir.path(), true)
        .unwrap();
    let error = load_error(dir.path(), "node-1");
    assert!(
        matches!(&error, LoadError::NotYetValid { path, .. } if path.ends_with("node-1.crt")),
        "{error}"
    );
    assert!(error.to_string().contains("not valid before"), "{error}");
    assert!(error.to_string().contains("clock"), "{error}");
}

#[test]
fn an_expired_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let ca = Ca::create_with_validity("old CA", Validity::new(now - 3 * DAY, now - DAY)).unwrap();
    ca.save(dir.path(), false).unwrap();
    let error = Ca::load(dir.path()).unwrap_err();
    assert!(
        matches!(&error, LoadError::Expired { path, .. } if path.ends_with("ca.crt")),
        "{error}"
    );
    ca.issue("node-1", &[], &[]).unwrap().save(dir.path(), false).unwrap();
    let error = load_error(dir.path(), "node-1");
    assert!(
        matches!(&error, LoadError::Expired { path, .. } if path.ends_with("ca.crt")),
        "{error}"
    );
}

#[test]
fn a_key_of_another_node_is_a_mismatch() {
    let (dir, ca) = swarm();
    let other = ca.issue("node-2", &[], &[]).unwrap();
    let key = dir.path().join("node-1.key");
    fs::remove_file(&key).unwrap();
    let wrong = tempfile::tempdir().unwrap();
    other.save(wrong.path(), false).unwrap();
    fs::copy(wrong.path().join("node-2.key"), &key).unwrap();
    chmod(&key, 0o600);
    let error = load_error(dir.path(), "node-1");
    assert!(
        matches!(&error, LoadError::KeyMismatch { key: k, cert } if *k == key && cert.ends_with("node-1.crt")),
        "{error}"
    );
    assert!(error.to_string().contains("does not match"), "{error}");

    // The same for the CA key.
    let ca_key = dir.path().join("ca.key");
    fs::remove_file(&ca_key).unwrap();
    Ca::create("other CA").unwrap().save(wrong.path(), false).unwrap();
    fs::copy(wrong.path().join("ca.key"), &ca_key).unwrap();
    chmod(&ca_key, 0o600);
    let error = Ca::load(dir.path()).unwrap_err();
    assert!(matches!(&error, LoadError::KeyMismatch { key, .. } if *key == ca_key), "{error}");
}

#[test]
fn a_node_certificate_is_not_a_ca() {
    let (dir, _ca) = swarm();
    fs::copy(dir.path().join("node-1.crt"), dir.path().join("ca.crt")).unwrap();
    let error = load_error(dir.path(), "node-1");
    assert!(matches!(&error, LoadError::NotCa { path } if path.ends_with("ca.crt")), "{error}");
    let error = Ca::load(dir.path()).unwrap_err();
    assert!(matches!(&error, LoadError::NotCa { .. }), "{error}");
}

#[test]
fn files_of_another_node_are_the_wrong_name() {
    let (dir, _ca) = swarm();
    fs::rename(dir.path().join("node-1.crt"), dir.path().join("node-2.crt")).unwrap();
    fs::rename(dir.path().join("node-1.key"), dir.path().join("node-2.key")).unwrap();
    let error = load_error(dir.path(), "node-2");
    assert!(
        matches!(&error, LoadError::WrongName { expected, found, .. } if expected == "node-2" && found == "node-1"),
        "{error}"
    );
}

#[test]
fn invalid_node_names_are_refused() {
    let (dir, ca) = swarm();
    for name in ["", "../node-1", "a/b", "..", "ca", "node 1", "127.0.0.1"] {
        let error = load_error(dir.path(), name);
        assert!(matches!(&error, LoadError::InvalidName { .. }), "{name:?}: {error}");
        let error = ca.issue(name, &[], &[]).unwrap_err();
        assert!(matches!(&error, IssueError::InvalidName { .. }), "{name:?}: {error}");
    }
    let error = ca.issue("node-1", &["bad name".to_owned()], &[]).unwrap_err();
    assert!(matches!(&error, IssueError::InvalidDnsName { name } if name == "bad name"), "{error}");
    let now = SystemTime::now();
    let error =
        ca.issue_with_validity("node-1", &[], &[], Validity::new(now, now - HOUR)).unwrap_err();
    assert!(matches!(&error, IssueError::InvalidValidity { .. }), "{error}");
    assert!(matches!(Ca::create(" ").unwrap_err(), IssueError::EmptyCommonName));
}

#[test]
fn in_memory_identities_check_the_same_things() {
    let ca = Ca::create("test swarm CA").unwrap();
    let node = ca.issue("node-1", &[], &[]).unwrap();
    assert_eq!(Identity::new(&ca, &node).unwrap().name(), "node-1");

    let other = Ca::create("other CA").unwrap();
    let error = Identity::new(&other, &node).unwrap_err();
    assert!(matches!(error, LoadError::NotSignedByCa { .. }), "{error}");
    assert!(error.to_string().contains("<node-1.crt in memory>"), "{error}");

    let now = SystemTime::now();
    let expired = ca
        .issue_with_validity("node-1", &[], &[], Validity::new(now - 2 * DAY, now - DAY))
        .unwrap();
    let error = Identity::new(&ca, &expired).unwrap_err();
    assert!(matches!(error, LoadError::Expired { .. }), "{error}");
}

#[test]
fn debug_output_never_shows_keys() {
    let ca = Ca::create("test swarm CA").unwrap();
    let node = ca.issue("node-1", &[], &[]).unwrap();
    let identity = Identity::new(&ca, &node).unwrap();
    let key_body: String = node.key_pem().lines().nth(1).unwrap().chars().take(20).collect();
    for debug in [format!("{ca:?}"), format!("{node:?}"), format!("{identity:?}")] {
        assert!(!debug.contains(&key_body), "{debug}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }
}

fn time_year(time: SystemTime) -> i32 {
    // Days since the epoch to a civil year is enough here (the test's dates are near now).
    let days = time.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() / 86_400;
    let mut year = 1970;
    let mut remaining = days as i64;
    loop {
        let length = if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 { 366 } else { 365 };
        if remaining < length {
            return year;
        }
        remaining -= length;
        year += 1;
    }
}
