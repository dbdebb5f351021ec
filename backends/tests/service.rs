//! The service layer: server routing, client errors, the registry as a service, and a message
//! with `ret` and `att` across a real TCP session.

use std::sync::Arc;
use std::time::Duration;

use backends::service::{
    Backend, Client, ClientError, HandlerError, Message, Registry, Server, SpawnError, Stage,
    Tasks, Verb,
};
use futures::future::BoxFuture;
use libchan::Sender;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(10);

fn echo_server(tasks: &Tasks) -> Sender<Message> {
    Server::new("echo")
        .on(Verb::Get, |_, request: Message| async move {
            request.reply(Message::set([format!("got {}", request.args.join(","))])).await?;
            Ok(())
        })
        .on(Verb::Stop, |_, _| async { Err(HandlerError::new("cannot stop")) })
        .on(Verb::Start, |_, request: Message| async move {
            drop(request);
            Ok(())
        })
        .spawn(tasks)
}

#[tokio::test]
async fn server_routes_by_verb_and_answers_the_rest_with_errors() {
    let tasks = Tasks::new();
    let client = Client::new(echo_server(&tasks)).named("echo").with_timeout(LIMIT);

    let (reply, _) = client.call(Verb::Get, ["a", "b"]).await.unwrap();
    assert_eq!(reply.verb, Verb::Set);
    assert_eq!(reply.args, ["got a,b"]);

    let error = client.stop().await.unwrap_err();
    assert!(error.is_remote());
    assert_eq!(error.to_string(), "Stop: cannot stop");

    for verb in [Verb::Ls, Verb::Spawn, Verb::Watch, Verb::Other("Frobnicate".into())] {
        let error = client.call(verb.clone(), ["x"]).await.unwrap_err();
        assert_eq!(error.to_string(), format!("{verb}: not implemented: {verb}"));
    }

    let error = client.start().await.unwrap_err();
    assert!(matches!(error, ClientError::NoReply { .. }), "{error:?}");
    assert_eq!(error.to_string(), "Start: no reply from echo");
    assert!(tasks.shutdown(LIMIT).await);
}

#[tokio::test]
async fn catch_all_gets_verbs_without_a_handler() {
    let tasks = Tasks::new();
    let service = Server::new("catch-all")
        .on(Verb::Ls, |_, request: Message| async move {
            request.reply(Message::set(["ls"])).await?;
            Ok(())
        })
        .on_any(|_, request: Message| async move {
            request.reply(Message::set([format!("any {}", request.verb)])).await?;
            Ok(())
        })
        .spawn(&tasks);
    let client = Client::new(service);
    assert_eq!(client.ls().await.unwrap(), ["ls"]);
    assert_eq!(client.get().await.unwrap(), "any Get");
}

#[tokio::test(start_paused = true)]
async fn a_silent_service_times_out() {
    let (service, mut requests) = libchan::pipe::<Message>();
    // Keeps the requests (and their ret) without answering.
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok(Some(request)) = requests.recv().await {
            held.push(request);
        }
    });
    let client = Client::new(service).named("mute").with_timeout(Duration::from_secs(3));
    let error = client.get().await.unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(error.to_string(), "Get: no reply from mute within 3s");
    hold.abort();
}

#[tokio::test]
async fn a_gone_service_is_an_error() {
    let (service, requests) = libchan::pipe::<Message>();
    drop(requests);
    let error = Client::new(service).named("gone").ls().await.unwrap_err();
    assert!(matches!(error, ClientError::Closed { .. }), "{error:?}");
    assert_eq!(error.to_string(), "Ls: gone is gone");
}

#[tokio::test]
async fn notifications_carry_no_ret() {
    let (service, mut requests) = libchan::pipe::<Message>();
    let client = Client::new(service);
    client.log("hello").await.unwrap();
    client.error("oops").await.unwrap();
    client.set(["a", "b"]).await.unwrap();
    for (verb, args) in
        [(Verb::Log, vec!["hello"]), (Verb::Error, vec!["oops"]), (Verb::Set, vec!["a", "b"])]
    {
        let message = requests.recv().await.unwrap().unwrap();
        assert_eq!(message.verb, verb);
        assert_eq!(message.args, args);
        assert!(message.ret.is_none());
    }
}

/// A backend whose stages answer `Get` with their arguments and send `Log(spawned)`
/// downstream when started.
struct Probe;

impl Backend for Probe {
    fn name(&self) -> &str {
        "probe"
    }

    fn usage(&self) -> &str {
        "WORD..."
    }

    fn summary(&self) -> &str {
        "answers Get with its arguments"
    }

    fn spawn(&self, stage: Stage) -> BoxFuture<'static, Result<Sender<Message>, SpawnError>> {
        let result = if stage.args.first().is_some_and(|word| word == "fail") {
            Err(SpawnError::usage(self, "told to fail"))
        } else {
            let state = Arc::new((stage.args.join(" "), stage.downstream.clone()));
            Ok(Server::with_state(stage.name, state)
                .on(Verb::Get, |state, request: Message| async move {
                    request.reply(Message::set([state.0.clone()])).await?;
                    Ok(())
                })
                .on(Verb::Start, |state, request: Message| async move {
                    state
                        .1
                        .send(Message::log("spawned"))
                        .await
                        .map_err(|_| HandlerError::new("gone"))?;
                    request.reply(Message::ack()).await?;
                    Ok(())
                })
                .spawn(&stage.tasks))
        };
        Box::pin(async move { result })
    }
}

#[tokio::test]
async fn the_registry_as_a_service_lists_attaches_and_spawns() {
    let tasks = Tasks::new();
    let registry = Registry::new().with(Probe);
    let client = Client::new(registry.serve(&tasks)).named("registry").with_timeout(LIMIT);
    assert_eq!(client.ls().await.unwrap(), ["probe"]);

    let error = client.attach("nope").await.unwrap_err();
    assert_eq!(error.to_string(), "Attach: no such backend: nope");

    let backend = client.attach("probe").await.unwrap().object;
    let error = backend.spawn(["fail"]).await.unwrap_err();
    assert_eq!(error.to_string(), "Spawn: told to fail (usage: probe WORD...)");

    let instance = backend.spawn(["a", "b c"]).await.unwrap();
    assert_eq!(instance.get().await.unwrap(), "a b c");
    let mut attached = instance.attach("").await.unwrap();
    instance.start().await.unwrap();
    let emitted = attached.events.recv().await.unwrap().unwrap();
    assert_eq!(emitted.verb, Verb::Log);
    assert_eq!(emitted.args, ["spawned"]);
    assert_eq!(attached.object.get().await.unwrap(), "a b c");
    let error = instance.attach("").await.unwrap_err();
    assert_eq!(error.to_string(), "Attach: already attached");
    assert!(tasks.shutdown(LIMIT).await);
}

#[tokio::test]
async fn a_message_with_ret_and_att_crosses_a_tcp_session() {
    let listener = libchan::listen("tcp://127.0.0.1:0").await.unwrap();
    let client_session = libchan::connect(listener.local_url()).await.unwrap();
    let server_session = listener.accept().await.unwrap();

    let requests = client_session.open::<Message>().await.unwrap();
    let (ret, mut replies) = libchan::pipe();
    let (mut local, remote) = libchan::byte_pipe();
    let request = Message::new(Verb::Connect).with_args(["db", ""]).with_ret(ret).with_att(remote);
    requests.send(request).await.unwrap();

    let mut incoming = server_session.accept::<Message>().await.unwrap();
    let mut request = tokio::time::timeout(LIMIT, incoming.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(request.verb, Verb::Connect);
    assert_eq!(request.args, ["db", ""]);

    let mut att = request.att.take().expect("att crossed");
    let mut greeting = [0; 5];
    local.write_all(b"hello").await.unwrap();
    att.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"hello");
    att.write_all(b"world").await.unwrap();
    local.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"world");

    // The answer goes back on the nested ret, itself carrying a nested sender.
    let (object, mut object_requests) = libchan::pipe();
    request.reply(Message::ack().with_ret(object)).await.unwrap();
    let reply = tokio::time::timeout(LIMIT, replies.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(reply.verb, Verb::Ack);
    let object = Client::new(reply.ret.expect("nested ret")).with_timeout(LIMIT);
    object.log("through two sessions").await.unwrap();
    let logged =
        tokio::time::timeout(LIMIT, object_requests.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(logged.verb, Verb::Log);
    assert_eq!(logged.args, ["through two sessions"]);
}
