//! Docker: `dockerserver`, an Engine API frontend that turns HTTP requests into verbs, and
//! `dockerclient`, a backend that turns verbs into Engine API calls on a real daemon.
//!
//! The verbs and arguments each endpoint maps to, and the byte-stream conventions of logs
//! and attach, are in `docs/docker.md`.

pub(crate) mod api;
mod client;
mod daemon;
pub(crate) mod server;
mod stream;

pub use client::DockerClient;
pub use server::DockerServer;
