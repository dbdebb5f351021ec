//! Running a pipeline: spawn, wire, start, wait for a signal, shut down.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use backends::service::{
    parse_pipeline, HandlerResult, Message, Pipeline, Registry, Server, Tasks, Verb,
};
use libchan::Sender;
use tracing::Instrument as _;

use crate::node::Settings;

/// Runs the pipeline of `settings` until SIGINT or SIGTERM, then shuts down gracefully:
/// `listen` stages stop accepting and finish their requests in flight, sessions close with
/// code `Shutdown`, then every stage stops; all within the shutdown timeout.
///
/// # Errors
/// A stage that does not parse, spawn or start (named by number and text), a metrics address
/// or ready file that cannot be used, or a signal handler that cannot be installed.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let tasks = Tasks::new();
    let span = tracing::info_span!("node", node = %settings.node.name());
    let result = run_until_signal(&settings, &tasks).instrument(span.clone()).await;
    let _entered = span.enter();
    tracing::info!("shutting down");
    if tasks.shutdown(settings.shutdown_timeout).await {
        tracing::info!("stopped");
    } else {
        tracing::warn!(left = tasks.len(), "tasks still running at the shutdown deadline");
    }
    result
}

async fn run_until_signal(settings: &Settings, tasks: &Tasks) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Both handlers go in before any stage starts: a signal during startup must still shut
    // the stages down (and kill what exec started), not end the process outright.
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let specs = parse_pipeline(&settings.stages)?;
    let registry = backends::registry().with_node(settings.node.clone());
    let pipeline = Pipeline::spawn(&registry, &specs, sink(tasks), tasks).await?;
    pipeline.start(settings.start_timeout).await?;
    let metrics = match settings.metrics {
        Some(addr) => Some(crate::metrics::serve(addr, tasks).await?),
        None => None,
    };
    tracing::info!(stages = pipeline.len(), "chain wired");
    if let Some(file) = &settings.ready_file {
        write_ready(file, &settings.node.listening(), metrics)?;
    }
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("signal received");
    Ok(())
}

/// Writes the ready file whole (a temporary file renamed), so a reader never sees half.
fn write_ready(
    file: &Path,
    listening: &[String],
    metrics: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let mut text = String::new();
    for url in listening {
        let _ = writeln!(text, "listening {url}");
    }
    if let Some(addr) = metrics {
        let _ = writeln!(text, "metrics {addr}");
    }
    let _ = writeln!(text, "ready");
    let partial = file.with_extension("partial");
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, file))
        .with_context(|| format!("cannot write the ready file {}", file.display()))
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
