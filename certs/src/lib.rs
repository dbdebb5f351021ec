//! The swarm CA: node certificates and mutual-TLS configs for the nodes of a swarm.
//!
//! Nodes of a swarm authenticate each other with mutual TLS 1.3, over TCP and over QUIC. One
//! certificate authority per swarm ([`Ca`]) issues each node a certificate ([`NodeCert`]) that
//! names the node and serves both to accept and to dial. A node loads its [`Identity`] (the CA
//! certificate, its certificate and its key, checked against each other) and gets ready-made
//! [`rustls::ServerConfig`] and [`rustls::ClientConfig`]s that trust only the swarm CA, require
//! client certificates and speak ALPN [`ALPN`]. After a handshake, [`peer_name`] or
//! [`peer_name_of`] tells who the peer is, for checking against an allow-list.
//!
//! This crate knows nothing of libchan or QUIC: the transports wrap the plain rustls configs
//! (quinn's `QuicServerConfig::try_from(identity.server_config())`). It uses the *ring* crypto
//! provider explicitly, so no process-wide default provider needs installing.
//!
//! Files, all PEM, in one directory: `ca.crt` and `ca.key` for the CA, `NAME.crt` and
//! `NAME.key` for node `NAME`. Keys are written with mode 0600 and refused at load time if
//! group or others can read them. Node names are restricted (see [`is_valid_node_name`]) so they
//! are safe as file names and as the server name clients dial.
//!
//! # Examples
//!
//! ```
//! use certs::{Ca, Identity};
//!
//! let dir = tempfile::tempdir()?;
//! // Once per swarm, on the machine that issues certificates:
//! let ca = Ca::create("example swarm CA")?;
//! ca.save(dir.path(), false)?;
//! ca.issue("node-1", &[], &[])?.save(dir.path(), false)?;
//! ca.issue("node-2", &["node-2.example".to_owned()], &[])?.save(dir.path(), false)?;
//!
//! // On each node, with ca.crt, NAME.crt and NAME.key copied there:
//! let node1 = Identity::load(dir.path(), "node-1")?;
//! let server_config = node1.server_config(); // to accept
//! let client_config = node1.client_config(); // to dial, with the peer's node name:
//! let peer = rustls::pki_types::ServerName::try_from("node-2")?;
//! let connection = rustls::ClientConnection::new(client_config, peer)?;
//! # drop((server_config, connection));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A full handshake over loopback TCP with tokio-rustls is in this crate's `tests/tls.rs`.
//!
//! # Feature flags
//!
//! None. The crate always uses rustls with the *ring* provider (no aws-lc-rs) and rcgen.
//!
//! # Reading on
//!
//! [`Ca`] for issuing, [`Identity`] for what the configs check, and the error types for what
//! loading reports. The `swarm-node certs` subcommands are the command line for this crate.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod ca;
mod certificate;
mod error;
mod file;
mod identity;
mod name;
mod node;
mod peer;
mod pem;
mod validity;

pub use ca::Ca;
pub use error::{IssueError, LoadError, PeerNameError, SaveError};
pub use identity::Identity;
pub use name::is_valid_node_name;
pub use node::NodeCert;
pub use peer::{peer_name, peer_name_of};
pub use validity::Validity;

/// The rustls this crate builds configs for; use it to name the config types.
pub use rustls;

/// The ALPN protocol both configs offer and accept: libchan version 1.
pub const ALPN: &[u8] = b"libchan/1";
