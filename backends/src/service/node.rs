//! What a stage knows of the node it runs on: its name, certificates and session limits.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use libchan::{Limits, Tls};

/// The node a pipeline runs on, as the network stages (`listen`, `remote`) need it: the
/// node's name, its certificates for `tls://` and `quic://`, and the limits of the sessions it
/// opens and accepts.
///
/// Optional everywhere: an in-memory pipeline runs with [`Node::default`] (no name, no
/// certificates), which still serves `tcp://` and `unix://`.
///
/// ```
/// use backends::service::{Node, Registry};
///
/// let node = Node::new("node-b");
/// let registry = backends::registry().with_node(node);
/// assert_eq!(registry.node().name(), "node-b");
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct Node {
    /// The node's name, as in its certificate; empty when it has none.
    pub name: String,
    /// Certificates to dial and accept `tls://` and `quic://` with (both roles), and how to
    /// name a peer from its certificate.
    pub tls: Option<Tls>,
    /// Limits of every session the node opens or accepts.
    pub limits: Limits,
    /// The URLs the node's `listen` stages bound, shared by clones.
    listening: Arc<Mutex<Vec<String>>>,
}

impl Node {
    /// A node called `name`, without certificates, with [`Node::limits`] suited to nodes.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), limits: node_limits(), ..Self::default() }
    }

    /// This node with certificates.
    #[must_use]
    pub fn with_tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// This node with these session limits.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The node's name (empty when it has none).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The certificates to dial or listen on `url` with: the node's for `tls://` and
    /// `quic://`, none needed for `tcp://` and `unix://`.
    ///
    /// # Errors
    /// A secure URL on a node without certificates, with what to set.
    pub fn tls_for(&self, url: &str) -> Result<Tls, String> {
        match &self.tls {
            Some(tls) => Ok(tls.clone()),
            None if !is_secure(url) => Ok(Tls::default()),
            None => Err(format!(
                "{url} needs the node's certificates (--certs DIR --name NAME, or --ca/--cert/--key)"
            )),
        }
    }

    /// Records that a stage listens on `url` (with the port it bound for port 0).
    pub fn announce(&self, url: &str) {
        self.urls().push(url.to_owned());
    }

    /// The URLs the node listens on, in the order its stages bound them.
    pub fn listening(&self) -> Vec<String> {
        self.urls().clone()
    }

    fn urls(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        // Invariant: plain data behind the lock; a poisoned lock still holds a valid list.
        self.listening.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether `url` is `tls://` or `quic://`, where peers have certificates and names.
pub fn is_secure(url: &str) -> bool {
    url.starts_with("tls://") || url.starts_with("quic://")
}

/// Session limits for nodes: libchan's defaults, with a heartbeat every second and a session
/// declared dead after 5 s of silence, so a node that vanishes without closing its
/// connections (killed, unplugged) fails its requests within seconds instead of 20 s.
pub fn node_limits() -> Limits {
    let mut limits = Limits::default();
    limits.heartbeat_interval = HEARTBEAT;
    limits.idle_timeout = IDLE_TIMEOUT;
    limits
}

const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
