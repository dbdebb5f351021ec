//! The swarm node daemon and CLI (skeleton; the pipeline runner and `certs` come next).

/// Runs the `swarm-node` command line.
pub fn main() {}
