//! `debug`: logs every message passing through and forwards it.

use std::sync::Arc;

use futures::future::BoxFuture;
use libchan::{Receiver, Sender};

use crate::service::{
    Backend, HandlerError, HandlerResult, Message, Server, SpawnError, Stage, Tasks, Verb,
};

/// The `debug` backend: a stage that logs each request (verb, args, whether it carries `ret`
/// and `att`) at `info` and forwards it downstream, then logs and relays each answer back.
///
/// Objects in answers (`Ack` with `ret`, as `Spawn` and `Attach` give) are wrapped in the same
/// way, so requests to them are logged too. The stage answers `Start` and `Stop` itself (they
/// are its own lifecycle); requests to wrapped objects are all forwarded.
#[derive(Clone, Copy, Debug, Default)]
pub struct Debug;

impl Backend for Debug {
    fn name(&self) -> &str {
        "debug"
    }

    fn usage(&self) -> &str {
        ""
    }

    fn summary(&self) -> &str {
        "log every message passing through, and the answers, then forward it downstream"
    }

    fn spawn(&self, stage: Stage) -> BoxFuture<'static, Result<Sender<Message>, SpawnError>> {
        let result = if stage.args.is_empty() {
            let tap = Tap { label: stage.name.into(), next: stage.downstream, tasks: stage.tasks };
            let tasks = tap.tasks.clone();
            Ok(Server::with_state(tap.label.to_string(), Arc::new(tap))
                .on(Verb::Start, lifecycle)
                .on(Verb::Stop, lifecycle)
                .on_any(forward)
                .spawn(&tasks))
        } else {
            Err(SpawnError::usage(self, "debug takes no arguments"))
        };
        Box::pin(async move { result })
    }
}

/// Where a tap logs from and forwards to.
struct Tap {
    label: Arc<str>,
    next: Sender<Message>,
    tasks: Tasks,
}

async fn lifecycle(tap: Arc<Tap>, request: Message) -> HandlerResult {
    log(&tap.label, "request", &request);
    request.reply(Message::ack()).await?;
    Ok(())
}

async fn forward(tap: Arc<Tap>, request: Message) -> HandlerResult {
    log(&tap.label, "request", &request);
    let Message { verb, args, ret, att, id, in_flight } = request;
    let ret = ret.map(|ret| {
        let (relay, answers) = libchan::pipe();
        tap.tasks.spawn(relay_answers(tap.clone(), answers, ret));
        relay
    });
    let forwarded = Message { verb, args, ret, att, id, in_flight };
    tap.next.send(forwarded).await.map_err(|_| HandlerError::new("debug: downstream is gone"))
}

async fn relay_answers(tap: Arc<Tap>, mut answers: Receiver<Message>, ret: Sender<Message>) {
    loop {
        let answer = tokio::select! {
            () = tap.tasks.shutdown_token().cancelled() => return,
            answer = answers.recv() => answer,
        };
        match answer {
            Ok(Some(mut answer)) => {
                log(&tap.label, "answer", &answer);
                if let Some(object) = answer.ret.take() {
                    answer.ret = Some(wrap(&tap, object));
                }
                if ret.send(answer).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(error) if !error.is_fatal() => {
                tracing::warn!(stage = %tap.label, %error, "answer did not decode");
            }
            Err(error) => {
                tracing::info!(stage = %tap.label, %error, "answer channel failed");
                ret.fail(error.to_string()).await;
                return;
            }
        }
    }
}

/// A tap in front of an object found in an answer.
fn wrap(tap: &Tap, object: Sender<Message>) -> Sender<Message> {
    let inner = Tap { label: tap.label.clone(), next: object, tasks: tap.tasks.clone() };
    Server::with_state(tap.label.to_string(), Arc::new(inner)).on_any(forward).spawn(&tap.tasks)
}

fn log(stage: &str, direction: &str, message: &Message) {
    tracing::info!(
        stage,
        direction,
        verb = %message.verb,
        args = ?message.args,
        ret = message.ret.is_some(),
        att = message.att.is_some(),
        id = message.id.as_deref().unwrap_or_default(),
        "debug"
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::service::{Client, Registry, StageSpec};

    #[tokio::test]
    async fn forwards_requests_and_relays_answers_with_objects_wrapped() {
        let tasks = Tasks::new();
        let (downstream, mut requests) = libchan::pipe::<Message>();
        let registry = Registry::new().with(Debug);
        let spec = StageSpec::parse("debug").unwrap();
        let input = registry.spawn(&spec, downstream, &tasks).await.unwrap();
        let client = Client::new(input).with_timeout(Duration::from_secs(10));

        client.start().await.unwrap();
        let asking = tokio::spawn(async move { client.attach("web").await });
        let request = requests.recv().await.unwrap().unwrap();
        assert_eq!(
            (request.verb.clone(), request.args.clone()),
            (Verb::Attach, vec!["web".into()])
        );
        let (object, mut object_requests) = libchan::pipe();
        request.reply(Message::ack().with_ret(object)).await.unwrap();
        drop(request);
        let attached = asking.await.unwrap().unwrap();

        // The object came back wrapped: requests to it still pass the tap.
        let getting = tokio::spawn(async move { attached.object.get().await });
        let request = object_requests.recv().await.unwrap().unwrap();
        assert_eq!(request.verb, Verb::Get);
        request.reply(Message::set(["{}"])).await.unwrap();
        drop(request);
        assert_eq!(getting.await.unwrap().unwrap(), "{}");
        assert!(tasks.shutdown(Duration::from_secs(10)).await);
    }

    #[tokio::test]
    async fn arguments_are_refused() {
        let tasks = Tasks::new();
        let (downstream, _requests) = libchan::pipe::<Message>();
        let registry = Registry::new().with(Debug);
        let spec = StageSpec::parse("debug loud").unwrap();
        let error = registry.spawn(&spec, downstream, &tasks).await.unwrap_err();
        assert_eq!(error.to_string(), "debug takes no arguments (usage: debug)");
    }
}
