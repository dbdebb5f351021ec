//! Tracked tasks and the shutdown signal every stage watches.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The tasks of one node (or one test): every task a stage spawns is tracked here, and every
/// long-running one watches [`Tasks::shutdown_token`], so shutdown can signal, then wait with a
/// deadline.
///
/// Shutdown has two phases. First *drain*: [`Tasks::drain_token`] fires, frontends (`listen`)
/// stop taking new work and finish what is in flight; the tasks spawned with
/// [`Tasks::spawn_draining`] are waited for. Then *cancel*: the shutdown token fires and
/// every task is waited for. Both phases share one deadline.
///
/// Cheap to clone; clones share the tokens and the trackers.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    token: CancellationToken,
    tracker: TaskTracker,
    drain: CancellationToken,
    draining: TaskTracker,
}

impl Tasks {
    /// A fresh set, not shutting down.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns a tracked task. It should end soon after the shutdown token fires.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Spawns a tracked task that shutdown waits for before it cancels anything: a frontend
    /// that, once [`Tasks::drain_token`] fires, stops accepting and finishes its requests in
    /// flight. It should end soon after the drain token fires.
    pub fn spawn_draining<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(self.draining.track_future(task))
    }

    /// Fires when shutdown starts: stop taking new work, finish what is in flight.
    pub fn drain_token(&self) -> &CancellationToken {
        &self.drain
    }

    /// Fires when shutdown cancels: after the draining tasks ended, or at the deadline.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Drains (see the type's docs), then signals shutdown and waits until every tracked
    /// task ended or `deadline`, counted from the call, passed. Returns whether every task
    /// ended in time.
    ///
    /// # Cancel safety
    /// Cancel safe; shutdown was signalled either way.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        self.drain.cancel();
        self.draining.close();
        let drained = tokio::time::timeout_at(until, self.draining.wait()).await.is_ok();
        if !drained {
            tracing::warn!(left = self.draining.len(), "requests still in flight at the deadline");
        }
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout_at(until, self.tracker.wait()).await.is_ok()
    }

    /// How many tracked tasks are still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no tracked task is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}
