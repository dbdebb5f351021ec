//! Running a pipeline: spawn, wire, start, wait for a signal, shut down.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use backends::service::{
    parse_pipeline, HandlerResult, Message, Pipeline, Registry, Server, Tasks, Verb,
};
use libchan::Sender;

/// How long the steps of a run may take.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Bound on each stage's answer to `Start`.
    pub start_timeout: Duration,
    /// Bound on the wait for the stages to stop at shutdown.
    pub shutdown_timeout: Duration,
}

/// Runs `stages` until SIGINT or SIGTERM, then shuts them down.
///
/// # Errors
/// A stage that does not parse, spawn or start (named by number and text), or a signal
/// handler that cannot be installed.
pub async fn run(stages: &[String], options: Options) -> anyhow::Result<()> {
    let tasks = Tasks::new();
    let result = run_until_signal(stages, options, &tasks).await;
    tracing::info!("shutting down");
    if tasks.shutdown(options.shutdown_timeout).await {
        tracing::info!("stopped");
    } else {
        tracing::warn!(left = tasks.len(), "tasks still running at the shutdown deadline");
    }
    result
}

async fn run_until_signal(
    stages: &[String],
    options: Options,
    tasks: &Tasks,
) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    let specs = parse_pipeline(stages)?;
    let registry = backends::registry();
    let pipeline = Pipeline::spawn(&registry, &specs, sink(tasks), tasks).await?;
    pipeline.start(options.start_timeout).await?;
    tracing::info!(stages = pipeline.len(), "chain wired");
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot handle SIGINT")?,
        _ = terminate.recv() => {}
    }
    tracing::info!("signal received");
    Ok(())
}

/// The end of the chain: logs `Log` and `Error`, answers everything else with an error.
pub fn sink(tasks: &Tasks) -> Sender<Message> {
    Server::new("sink").on(Verb::Log, log).on(Verb::Error, error).spawn(tasks)
}

async fn log(_: Arc<()>, message: Message) -> HandlerResult {
    tracing::info!(text = message.arg(0).unwrap_or_default(), "log");
    Ok(())
}

async fn error(_: Arc<()>, message: Message) -> HandlerResult {
    tracing::error!(text = message.error_text(), "error");
    Ok(())
}

/// The backends, one paragraph each: name and usage, then what it does.
pub fn backend_list(registry: &Registry) -> String {
    let mut list = String::new();
    for backend in registry.backends() {
        let _ = writeln!(list, "{}", format!("{} {}", backend.name(), backend.usage()).trim_end());
        let _ = writeln!(list, "    {}", backend.summary());
    }
    list
}
