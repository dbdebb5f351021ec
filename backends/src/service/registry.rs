//! Backends by name, and the stage contract every backend implements.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use libchan::{Receiver, Sender};

use crate::service::{
    ClientError, HandlerError, HandlerResult, Message, Node, Server, SpecError, StageSpec, Tasks,
    Verb,
};

/// A kind of stage, known by name in a [`Registry`]: `debug`, `simulator`, `exec`, ...
///
/// # The stage contract
///
/// [`Backend::spawn`] gets a [`Stage`]: its arguments (the words after the backend's name) and
/// the *downstream* sender, the input of the next stage in the pipeline (for the last stage,
/// the node's sink, which logs `Log` and `Error` and answers everything else with an error).
/// It returns the stage's own *input* sender, where the previous stage (or a frontend, or a
/// remote peer) sends requests. A stage forwards what it does not answer itself to downstream;
/// a frontend (a Docker API server, `listen URL`) originates requests and sends them
/// downstream; a tail (a simulator, `dockerclient`, `remote URL`) answers them.
///
/// Spawning may be async (connect, bind) and may fail: return [`SpawnError::Usage`] for bad
/// arguments and [`SpawnError::Failed`] otherwise; the pipeline reports it with the stage's
/// number and text. After every stage is spawned the pipeline sends each one `Start` (tail
/// first), which a stage answers with `Ack` once it is ready (a frontend starts serving,
/// `exec` starts its process). Tasks go on `stage.tasks` and end at its shutdown.
pub trait Backend: Send + Sync + 'static {
    /// The name a stage spec uses.
    fn name(&self) -> &str;

    /// The arguments, as in `simulator [NAME...]`.
    fn usage(&self) -> &str;

    /// One line on what it does.
    fn summary(&self) -> &str;

    /// Spawns a stage; returns its input.
    fn spawn(&self, stage: Stage) -> BoxFuture<'static, Result<Sender<Message>, SpawnError>>;
}

/// What a backend gets to spawn one stage.
#[derive(Debug)]
#[non_exhaustive]
pub struct Stage {
    /// The stage as written, to label logs.
    pub name: String,
    /// The words after the backend's name.
    pub args: Vec<String>,
    /// Where the stage sends what it forwards or originates.
    pub downstream: Sender<Message>,
    /// The registry, for stages that spawn further stages (`aggregate`).
    pub registry: Registry,
    /// Where the stage's tasks go; they watch its shutdown token.
    pub tasks: Tasks,
    /// The node the stage runs on (name, certificates, session limits); the registry's.
    pub node: Node,
}

impl Stage {
    /// A stage with these parts.
    pub fn new(
        name: impl Into<String>,
        args: Vec<String>,
        downstream: Sender<Message>,
        registry: Registry,
        tasks: Tasks,
    ) -> Self {
        let node = registry.node().clone();
        Self { name: name.into(), args, downstream, registry, tasks, node }
    }

    /// A client of downstream, named after this stage.
    pub fn downstream_client(&self) -> crate::service::Client {
        crate::service::Client::new(self.downstream.clone())
            .named(format!("{} downstream", self.name))
    }
}

/// A stage that could not be spawned, as the backend reports it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The arguments are wrong.
    #[error("{reason} (usage: {usage})")]
    Usage {
        /// What is wrong.
        reason: String,
        /// The backend's usage line.
        usage: String,
    },
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

impl SpawnError {
    /// Wrong arguments for `backend`.
    pub fn usage(backend: &dyn Backend, reason: impl Into<String>) -> Self {
        Self::Usage {
            reason: reason.into(),
            usage: format!("{} {}", backend.name(), backend.usage()).trim_end().to_owned(),
        }
    }
}

/// A stage of a pipeline that could not be parsed, spawned or started.
#[derive(Debug, thiserror::Error)]
#[error("stage {stage} ({text:?}): {reason}")]
pub struct StageError {
    /// The stage, counted from 1 (0: no stage at all).
    pub stage: usize,
    /// Its text.
    pub text: String,
    /// What went wrong.
    pub reason: StageFailure,
}

/// Why a stage failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StageFailure {
    /// The spec does not parse.
    #[error(transparent)]
    Parse(#[from] SpecError),
    /// No backend has that name.
    #[error("unknown backend {name:?} (known: {known})")]
    UnknownBackend {
        /// The name asked for.
        name: String,
        /// The registry's names, comma-separated.
        known: String,
    },
    /// The backend failed to spawn it.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// It did not start.
    #[error(transparent)]
    Start(#[from] ClientError),
}

/// Backends by name. Cheap to clone.
///
/// As a service ([`Registry::serve`]), `Ls` lists the names and `Attach(name)` answers `Ack`
/// with `ret` = that backend, which answers `Spawn(args)` with `Ack` whose `ret` is the new
/// stage; `Attach("")` on the stage answers `Ack` (with `ret` = the stage) and then streams what
/// the stage sends downstream; every other request goes to the stage's input.
#[derive(Clone, Default)]
pub struct Registry {
    backends: Arc<BTreeMap<String, Arc<dyn Backend>>>,
    node: Node,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// This registry with `backend` added (replacing one of the same name).
    #[must_use]
    pub fn with(mut self, backend: impl Backend) -> Self {
        Arc::make_mut(&mut self.backends).insert(backend.name().to_owned(), Arc::new(backend));
        self
    }

    /// This registry, spawning stages that run on `node` (see [`Stage::node`]).
    #[must_use]
    pub fn with_node(mut self, node: Node) -> Self {
        self.node = node;
        self
    }

    /// The node the stages run on.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The backends, by name.
    pub fn backends(&self) -> impl Iterator<Item = &dyn Backend> {
        self.backends.values().map(|backend| &**backend)
    }

    /// The names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.backends.keys().cloned().collect()
    }

    /// The backend called `name`.
    pub fn get(&self, name: &str) -> Option<&dyn Backend> {
        self.backends.get(name).map(|backend| &**backend)
    }

    /// Spawns one stage from its spec, sending downstream to `downstream`; returns its input.
    ///
    /// # Errors
    /// [`StageFailure::UnknownBackend`] or the backend's [`StageFailure::Spawn`] error.
    pub async fn spawn(
        &self,
        spec: &StageSpec,
        downstream: Sender<Message>,
        tasks: &Tasks,
    ) -> Result<Sender<Message>, StageFailure> {
        let backend = self.get(&spec.backend).ok_or_else(|| StageFailure::UnknownBackend {
            name: spec.backend.clone(),
            known: self.names().join(", "),
        })?;
        let stage =
            Stage::new(&spec.text, spec.args.clone(), downstream, self.clone(), tasks.clone());
        let input = backend.spawn(stage).await?;
        tracing::info!(stage = %spec.text, "stage spawned");
        Ok(input)
    }

    /// Serves the registry as a service (see the type's docs) until shutdown.
    pub fn serve(&self, tasks: &Tasks) -> Sender<Message> {
        let state = Arc::new(Served { registry: self.clone(), tasks: tasks.clone() });
        Server::with_state("registry", state).on(Verb::Ls, ls).on(Verb::Attach, attach).spawn(tasks)
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.backends.keys()).finish()
    }
}

struct Served {
    registry: Registry,
    tasks: Tasks,
}

async fn ls(served: Arc<Served>, request: Message) -> HandlerResult {
    request.reply(Message::set(served.registry.names())).await?;
    Ok(())
}

async fn attach(served: Arc<Served>, request: Message) -> HandlerResult {
    let name = request.arg(0).unwrap_or_default();
    if served.registry.get(name).is_none() {
        return Err(HandlerError::new(format!("no such backend: {name}")));
    }
    let backend = Arc::new(BackendService { name: name.to_owned(), served: served.clone() });
    let service =
        Server::with_state(name.to_owned(), backend).on(Verb::Spawn, spawn).spawn(&served.tasks);
    request.reply(Message::ack().with_ret(service)).await?;
    Ok(())
}

struct BackendService {
    name: String,
    served: Arc<Served>,
}

async fn spawn(backend: Arc<BackendService>, request: Message) -> HandlerResult {
    let Served { registry, tasks } = &*backend.served;
    let text = std::iter::once(backend.name.as_str())
        .chain(request.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let spec = StageSpec { backend: backend.name.clone(), args: request.args.clone(), text };
    let (downstream, emitted) = libchan::pipe();
    let input = registry.spawn(&spec, downstream, tasks).await?;
    let instance = Arc::new(Instance { input, emitted: Mutex::new(Some(emitted)) });
    let instance = Server::with_state(spec.text, instance)
        .on(Verb::Attach, attach_instance)
        .on_any(forward)
        .spawn(tasks);
    request.reply(Message::ack().with_ret(instance)).await?;
    Ok(())
}

/// A stage spawned through the registry service: its input, and what it sends downstream
/// until someone attaches to it.
struct Instance {
    input: Sender<Message>,
    emitted: Mutex<Option<Receiver<Message>>>,
}

async fn attach_instance(instance: Arc<Instance>, request: Message) -> HandlerResult {
    if !request.arg(0).unwrap_or_default().is_empty() {
        return forward(instance, request).await;
    }
    // Invariant: plain data behind the lock; a poisoned lock still holds a valid Option.
    let emitted = instance.emitted.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let mut emitted = emitted.ok_or_else(|| HandlerError::new("already attached"))?;
    request.reply(Message::ack().with_ret(instance.input.clone())).await?;
    let Some(ret) = request.ret else { return Ok(()) };
    drop(instance);
    while let Ok(Some(message)) = emitted.recv().await {
        if ret.send(message).await.is_err() {
            break;
        }
    }
    Ok(())
}

async fn forward(instance: Arc<Instance>, request: Message) -> HandlerResult {
    instance.input.send(request).await.map_err(|_| HandlerError::new("the stage is gone"))
}
