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
/// Cheap to clone; clones share the token and the tracker.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    token: CancellationToken,
    tracker: TaskTracker,
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

    /// Fires when shutdown starts.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Signals shutdown, then waits until every tracked task ended or `deadline` passed.
    /// Returns whether every task ended in time.
    ///
    /// # Cancel safety
    /// Cancel safe; shutdown was signalled either way.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait()).await.is_ok()
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
