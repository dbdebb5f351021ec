//! A chain of stages, each sending downstream into the next.

use std::time::Duration;

use libchan::Sender;

use crate::service::{Client, Message, Registry, StageError, StageSpec, Tasks};

/// Spawned stages, in pipeline order (head first).
#[derive(Debug)]
pub struct Pipeline {
    stages: Vec<(StageSpec, Sender<Message>)>,
}

impl Pipeline {
    /// Spawns `specs` from the tail up: the last stage sends downstream into `sink`, every
    /// other stage into the next one's input.
    ///
    /// # Errors
    /// [`StageError`] naming the first stage (from the tail) that failed; stages spawned before
    /// it stay up until `tasks` shut down.
    pub async fn spawn(
        registry: &Registry,
        specs: &[StageSpec],
        sink: Sender<Message>,
        tasks: &Tasks,
    ) -> Result<Self, StageError> {
        let mut stages = Vec::with_capacity(specs.len());
        let mut downstream = sink;
        for (index, spec) in specs.iter().enumerate().rev() {
            let input = registry.spawn(spec, downstream, tasks).await.map_err(|reason| {
                StageError { stage: index + 1, text: spec.text.clone(), reason }
            })?;
            downstream = input.clone();
            stages.push((spec.clone(), input));
        }
        stages.reverse();
        Ok(Self { stages })
    }

    /// Sends `Start` to every stage, tail first, waiting at most `timeout` for each `Ack`.
    ///
    /// # Errors
    /// [`StageError`] naming the first stage that did not start.
    pub async fn start(&self, timeout: Duration) -> Result<(), StageError> {
        for (index, (spec, input)) in self.stages.iter().enumerate().rev() {
            let client = Client::new(input.clone()).named(&spec.text).with_timeout(timeout);
            client.start().await.map_err(|error| StageError {
                stage: index + 1,
                text: spec.text.clone(),
                reason: error.into(),
            })?;
            tracing::info!(stage = %spec.text, "stage started");
        }
        Ok(())
    }

    /// The input of the first stage (`None` for an empty pipeline).
    pub fn head(&self) -> Option<&Sender<Message>> {
        self.stages.first().map(|(_, input)| input)
    }

    /// The input of stage `index` (counted from 0, head first).
    pub fn input(&self, index: usize) -> Option<&Sender<Message>> {
        self.stages.get(index).map(|(_, input)| input)
    }

    /// How many stages.
    pub fn len(&self) -> usize {
        self.stages.len()
    }

    /// Whether there are no stages.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }
}
