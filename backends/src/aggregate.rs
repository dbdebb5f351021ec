//! `aggregate`: many child stages presented as one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::future::{join_all, BoxFuture};
use libchan::{Receiver, Sender};
use serde_json::json;

use crate::random::random_u64;
use crate::service::{
    Backend, Client, ClientError, HandlerError, HandlerResult, Message, Server, SpawnError, Stage,
    StageSpec, Verb,
};

/// The `aggregate` backend: spawns each child spec (a quoted stage, sending downstream where
/// the aggregate does) and presents the children as one.
///
/// - `Ls`: the children's names merged, in child order.
/// - `Attach(NAME)`: the answer of the first child (in order) that has `NAME`.
/// - `Spawn(ARGS)`: placed on one child by the strategy; its answer is relayed.
/// - `Start`, `Stop`: sent to every child; `Ack` once all answered `Ack`.
/// - `Get`: `Set(JSON)` with the strategy and each child's spec and object count.
///
/// Strategies (`--strategy NAME`, before the specs): `round-robin` (default) cycles through
/// the children; `spread` picks the child with the fewest objects (by `Ls`), `binpack` the one
/// with the most (it fills a child first; children have no capacity limit here), `random` any.
/// Ties go to the first child.
#[derive(Clone, Copy, Debug, Default)]
pub struct Aggregate;

impl Backend for Aggregate {
    fn name(&self) -> &str {
        "aggregate"
    }

    fn usage(&self) -> &str {
        "[--strategy round-robin|spread|random|binpack] SPEC..."
    }

    fn summary(&self) -> &str {
        "present child stages (quoted specs) as one: merged Ls, Attach by owner, placed Spawn"
    }

    fn spawn(&self, stage: Stage) -> BoxFuture<'static, Result<Sender<Message>, SpawnError>> {
        let parsed = parse_args(self, &stage.args);
        Box::pin(async move {
            let (strategy, specs) = parsed?;
            let mut children = Vec::with_capacity(specs.len());
            for (index, spec) in specs.into_iter().enumerate() {
                let input = stage
                    .registry
                    .spawn(&spec, stage.downstream.clone(), &stage.tasks)
                    .await
                    .map_err(|error| {
                        SpawnError::Failed(format!(
                            "child {} ({:?}): {error}",
                            index + 1,
                            spec.text
                        ))
                    })?;
                children.push(Client::new(input).named(spec.text));
            }
            let aggregate = Arc::new(Children { children, strategy, next: AtomicUsize::new(0) });
            Ok(Server::with_state(stage.name, aggregate)
                .on(Verb::Ls, ls)
                .on(Verb::Attach, attach)
                .on(Verb::Spawn, spawn)
                .on(Verb::Start, fan_out)
                .on(Verb::Stop, fan_out)
                .on(Verb::Get, get)
                .spawn(&stage.tasks))
        })
    }
}

/// How `Spawn` picks a child.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Strategy {
    RoundRobin,
    Spread,
    Random,
    Binpack,
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::Spread => "spread",
            Strategy::Random => "random",
            Strategy::Binpack => "binpack",
        }
    }
}

struct Children {
    children: Vec<Client>,
    strategy: Strategy,
    next: AtomicUsize,
}

fn parse_args(
    backend: &Aggregate,
    args: &[String],
) -> Result<(Strategy, Vec<StageSpec>), SpawnError> {
    let mut strategy = Strategy::RoundRobin;
    let mut rest = args;
    if let Some(flag) = rest.first().filter(|arg| arg.starts_with("--strategy")) {
        let (value, skip) = match flag.split_once('=') {
            Some((_, value)) => (Some(value.to_owned()), 1),
            None => (rest.get(1).cloned(), 2),
        };
        let value = value.ok_or_else(|| SpawnError::usage(backend, "--strategy needs a value"))?;
        strategy = [Strategy::RoundRobin, Strategy::Spread, Strategy::Random, Strategy::Binpack]
            .into_iter()
            .find(|strategy| strategy.name() == value)
            .ok_or_else(|| SpawnError::usage(backend, format!("unknown strategy {value:?}")))?;
        rest = &rest[skip.min(rest.len())..];
    }
    if rest.is_empty() {
        return Err(SpawnError::usage(backend, "no child specs"));
    }
    let specs = rest
        .iter()
        .enumerate()
        .map(|(index, text)| {
            StageSpec::parse(text).map_err(|error| {
                SpawnError::Failed(format!("child {} ({text:?}): {error}", index + 1))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((strategy, specs))
}

async fn ls(aggregate: Arc<Children>, request: Message) -> HandlerResult {
    let names = all_names(&aggregate).await?;
    request.reply(Message::set(names.into_iter().flatten())).await?;
    Ok(())
}

async fn attach(aggregate: Arc<Children>, request: Message) -> HandlerResult {
    let name = request.arg(0).unwrap_or_default().to_owned();
    let asked = aggregate.children.iter().map(|child| child.call(Verb::Attach, [name.as_str()]));
    let answers = join_all(asked).await;
    let mut failures = Vec::new();
    let mut found = None;
    for (answer, child) in answers.into_iter().zip(&aggregate.children) {
        match answer {
            Ok(answer) => {
                found = Some(answer);
                break;
            }
            // A child that could not answer may have had it: say so, naming the child.
            Err(error) if !error.to_string().contains("no such") => {
                failures.push(format!("{}: {error}", child.name()));
            }
            Err(_) => {}
        }
    }
    let Some((answer, rest)) = found else {
        return Err(HandlerError::new(match failures.is_empty() {
            true => format!("no such object: {name}"),
            false => format!("no such object: {name} ({})", failures.join("; ")),
        }));
    };
    request.reply(answer).await?;
    relay(rest, request.ret).await;
    Ok(())
}

async fn spawn(aggregate: Arc<Children>, request: Message) -> HandlerResult {
    let index = place(&aggregate).await?;
    let child = &aggregate.children[index];
    let (answer, rest) = child.call(Verb::Spawn, request.args.iter().map(String::as_str)).await?;
    tracing::info!(child = %child.name(), strategy = aggregate.strategy.name(), "spawn placed");
    request.reply(answer).await?;
    relay(rest, request.ret).await;
    Ok(())
}

async fn fan_out(aggregate: Arc<Children>, request: Message) -> HandlerResult {
    let verb = request.verb.clone();
    let asked = aggregate.children.iter().map(|child| async {
        let (answer, _) = child.call(verb.clone(), request.args.iter().map(String::as_str)).await?;
        match answer.verb {
            Verb::Ack => Ok(()),
            other => Err(ClientError::Unexpected { verb: verb.clone(), got: other.to_string() }),
        }
    });
    let failures: Vec<String> = join_all(asked)
        .await
        .into_iter()
        .zip(&aggregate.children)
        .filter_map(|(result, child)| {
            result.err().map(|error| format!("{}: {error}", child.name()))
        })
        .collect();
    if !failures.is_empty() {
        return Err(HandlerError::new(failures.join("; ")));
    }
    request.reply(Message::ack()).await?;
    Ok(())
}

async fn get(aggregate: Arc<Children>, request: Message) -> HandlerResult {
    let names = all_names(&aggregate).await?;
    let children: Vec<_> = aggregate
        .children
        .iter()
        .zip(names)
        .map(|(child, names)| json!({"Spec": child.name(), "Objects": names.len()}))
        .collect();
    let state = json!({"Strategy": aggregate.strategy.name(), "Children": children});
    request.reply(Message::set([state.to_string()])).await?;
    Ok(())
}

/// Each child's `Ls`, in child order.
async fn all_names(aggregate: &Children) -> Result<Vec<Vec<String>>, HandlerError> {
    let answers = join_all(aggregate.children.iter().map(Client::ls)).await;
    answers
        .into_iter()
        .zip(&aggregate.children)
        .map(|(answer, child)| {
            answer.map_err(|error| HandlerError::new(format!("{}: {error}", child.name())))
        })
        .collect()
}

/// The child a new object goes to.
async fn place(aggregate: &Children) -> Result<usize, HandlerError> {
    let count = aggregate.children.len();
    Ok(match aggregate.strategy {
        Strategy::RoundRobin => aggregate.next.fetch_add(1, Ordering::Relaxed) % count,
        // Invariant: at most `count` children, so the remainder fits in usize.
        Strategy::Random => usize::try_from(random_u64() % count as u64).unwrap_or_default(),
        Strategy::Spread | Strategy::Binpack => {
            let loads = all_names(aggregate).await?;
            let loads = loads.iter().map(Vec::len).enumerate();
            let best = if aggregate.strategy == Strategy::Spread {
                loads.min_by_key(|&(index, load)| (load, index))
            } else {
                loads.max_by_key(|&(index, load)| (load, std::cmp::Reverse(index)))
            };
            best.map_or(0, |(index, _)| index)
        }
    })
}

/// Relays what follows a child's answer (a stream after `Attach("")`, say) to the asker.
async fn relay(mut rest: Receiver<Message>, ret: Option<Sender<Message>>) {
    let Some(ret) = ret else { return };
    while let Ok(Some(message)) = rest.recv().await {
        if ret.send(message).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let args = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        let (strategy, specs) = parse_args(&Aggregate, &args(&["simulator a", "debug"])).unwrap();
        assert_eq!(strategy, Strategy::RoundRobin);
        assert_eq!(specs[0].args, ["a"]);
        let (strategy, _) = parse_args(&Aggregate, &args(&["--strategy", "spread", "x"])).unwrap();
        assert_eq!(strategy, Strategy::Spread);
        let (strategy, _) = parse_args(&Aggregate, &args(&["--strategy=binpack", "x"])).unwrap();
        assert_eq!(strategy, Strategy::Binpack);
        let error = parse_args(&Aggregate, &args(&["--strategy", "best", "x"])).unwrap_err();
        assert!(error.to_string().starts_with("unknown strategy \"best\" (usage: aggregate"));
        let error = parse_args(&Aggregate, &args(&["--strategy", "random"])).unwrap_err();
        assert!(error.to_string().starts_with("no child specs"), "{error}");
        let error = parse_args(&Aggregate, &args(&["debug", "simulator 'a"])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "child 2 (\"simulator 'a\"): unterminated single quote opened at column 11"
        );
    }
}
