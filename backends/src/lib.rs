//! libswarm for Rust: the service API every backend speaks, and the built-in backends.
//!
//! A *service* is a [`libchan::Sender`] of [`Message`](service::Message)s
//! `{verb, args, ret, att}`; answers come back on `ret`. A *backend* is a kind of pipeline
//! stage, known by name in a [`service::Registry`]; a pipeline (`swarm-node 'STAGE'
//! 'STAGE' ...`) spawns each stage with the next one downstream.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use backends::service::{parse_pipeline, Client, Pipeline, Tasks};
//! use std::time::Duration;
//!
//! let tasks = Tasks::new();
//! let specs = parse_pipeline(&["debug", "simulator"]).unwrap();
//! let (sink, _sunk) = libchan::pipe();
//! let pipeline = Pipeline::spawn(&backends::registry(), &specs, sink, &tasks).await.unwrap();
//! pipeline.start(Duration::from_secs(5)).await.unwrap();
//!
//! let host = Client::new(pipeline.head().unwrap().clone());
//! host.spawn([r#"{"Image": "busybox"}"#]).await.unwrap();
//! assert_eq!(host.ls().await.unwrap().len(), 1);
//! tasks.shutdown(Duration::from_secs(5)).await;
//! # }
//! ```
//!
//! The verbs, each backend's arguments and the pipeline syntax are in `docs/backends.md`.
//!
//! # Feature flags
//!
//! None.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

#[doc(hidden)]
pub mod fuzz_support;
pub mod metrics;
pub mod service;

mod aggregate;
mod debug;
mod docker;
mod exec;
mod listen;
mod random;
mod relay;
mod remote;
mod simulator;

pub use aggregate::Aggregate;
pub use debug::Debug;
pub use docker::{DockerClient, DockerServer};
pub use exec::Exec;
pub use listen::Listen;
pub use remote::Remote;
pub use simulator::Simulator;

use service::Registry;

/// A registry of the built-in backends.
pub fn registry() -> Registry {
    Registry::new()
        .with(Aggregate)
        .with(Debug)
        .with(DockerClient)
        .with(DockerServer)
        .with(Exec)
        .with(Listen)
        .with(Remote)
        .with(Simulator)
}
