//! The service API every backend speaks.
//!
//! A service is a [`libchan::Sender`] of [`Message`]s; answers come back on each request's
//! `ret`. [`Server`] routes requests to handlers by [`Verb`]; [`Client`] does the request and
//! answer dance with a bound on every wait; [`Registry`] holds [`Backend`]s by name and spawns
//! [`Stage`]s from [`StageSpec`]s, telling them of their [`Node`]; [`Pipeline`] chains stages; [`Tasks`] tracks their tasks.

mod client;
mod message;
mod node;
mod pipeline;
mod registry;
mod server;
mod spec;
mod tasks;

pub use client::{with_request_id, Attached, Client, ClientError};
pub(crate) use message::InFlight;
pub use message::{Message, ReplyError, Verb, MAX_ARGS, MAX_ID_LEN};
pub use node::{is_secure, node_limits, Node};
pub use pipeline::Pipeline;
pub use registry::{Backend, Registry, SpawnError, Stage, StageError, StageFailure};
pub use server::{HandlerError, HandlerResult, Server};
pub use spec::{parse_pipeline, split_words, SpecError, StageSpec};
pub use tasks::Tasks;
