//! `listen` and `remote` stages over real loopback sessions (tcp, tls, quic) in one process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::service::{
    parse_pipeline, Backend, Client, Message, Node, Pipeline, Server, SpawnError, Stage, Tasks,
    Verb,
};
use futures::future::BoxFuture;
use libchan::{Sender, Tls};
use tokio::sync::{Notify, Semaphore};

const LIMIT: Duration = Duration::from_secs(20);

struct Swarm {
    ca: certs::Ca,
}

impl Swarm {
    fn new() -> Self {
        Self { ca: certs::Ca::create("test swarm CA").unwrap() }
    }

    fn node(&self, name: &str) -> Node {
        let cert = self.ca.issue(name, &[], &["127.0.0.1".parse().unwrap()]).unwrap();
        let identity = certs::Identity::new(&self.ca, &cert).unwrap();
        let tls = Tls::new(identity.client_config(), identity.server_config())
            .with_peer_name(|chain| certs::peer_name(chain).ok());
        Node::new(name).with_tls(tls)
    }
}

/// Spawns and starts `stages` on `node`; returns the head and the URLs it listens on.
async fn run(node: &Node, stages: &[&str], tasks: &Tasks) -> (Client, Vec<String>) {
    let specs = parse_pipeline(stages).unwrap();
    let (sink, _) = libchan::pipe();
    let registry = backends::registry().with_node(node.clone());
    let pipeline = Pipeline::spawn(&registry, &specs, sink, tasks).await.unwrap();
    pipeline.start(LIMIT).await.unwrap();
    (Client::new(pipeline.head().unwrap().clone()).with_timeout(LIMIT), node.listening())
}

async fn chain_through(scheme: &str) {
    let swarm = Swarm::new();
    let (b_tasks, a_tasks) = (Tasks::new(), Tasks::new());
    let b = swarm.node("node-b");
    let listen = format!("listen {scheme}://127.0.0.1:0");
    let (_, urls) = run(&b, &[&listen, "simulator web db"], &b_tasks).await;
    let remote = format!("remote {} --node node-b", urls[0]);
    let (a, _) = run(&swarm.node("node-a"), &[&remote], &a_tasks).await;

    assert_eq!(a.ls().await.unwrap(), ["web", "db"]);
    let api = a.spawn([r#"{"Image": "nginx"}"#, "api"]).await.unwrap();
    api.start().await.unwrap();
    let web = a.attach("web").await.unwrap().object;
    let state: serde_json::Value = serde_json::from_str(&web.get().await.unwrap()).unwrap();
    assert_eq!(state["Name"], "/web");
    assert_eq!(a.ls().await.unwrap(), ["web", "db", "api"]);
    let error = a.attach("nope").await.unwrap_err();
    assert_eq!(error.to_string(), "Attach: no such container: nope");
    assert!(a_tasks.shutdown(LIMIT).await);
    assert!(b_tasks.shutdown(LIMIT).await);
}

#[tokio::test]
async fn chain_over_tcp() {
    chain_through("tcp").await;
}

#[tokio::test]
async fn chain_over_tls() {
    chain_through("tls").await;
}

#[tokio::test]
async fn chain_over_quic() {
    chain_through("quic").await;
}

#[tokio::test]
async fn chain_over_unix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.sock");
    let (b_tasks, a_tasks) = (Tasks::new(), Tasks::new());
    let listen = format!("listen unix://{}", path.display());
    run(&Node::default(), &[&listen, "simulator web"], &b_tasks).await;
    let remote = format!("remote unix://{}", path.display());
    let (a, _) = run(&Node::default(), &[&remote], &a_tasks).await;
    assert_eq!(a.ls().await.unwrap(), ["web"]);
    assert!(a_tasks.shutdown(LIMIT).await);
    assert!(b_tasks.shutdown(LIMIT).await);
}

#[tokio::test]
async fn losing_the_node_fails_fast_and_clearly_then_recovers() {
    for scheme in ["tls", "quic"] {
        let swarm = Swarm::new();
        let b = swarm.node("node-b");
        let b_tasks = Tasks::new();
        let listen = format!("listen {scheme}://127.0.0.1:0");
        let (_, urls) = run(&b, &[&listen, "simulator web"], &b_tasks).await;
        let a_tasks = Tasks::new();
        let remote = format!("remote {} --node node-b", urls[0]);
        let (a, _) = run(&swarm.node("node-a"), &[&remote], &a_tasks).await;
        assert_eq!(a.ls().await.unwrap(), ["web"]);

        // The node goes away (its sessions closed with a code).
        assert!(b_tasks.shutdown(LIMIT).await);
        let started = Instant::now();
        let error = a.ls().await.unwrap_err().to_string();
        assert!(error.starts_with("Ls: remote node-b: "), "{scheme}: {error}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{scheme}: took {:?}",
            started.elapsed()
        );

        // It comes back on the same address (once the old QUIC endpoint let go of its
        // socket): requests succeed again without touching A.
        let b_tasks = Tasks::new();
        let listen = format!("listen {}", urls[0]);
        let registry = backends::registry().with_node(swarm.node("node-b"));
        let specs = parse_pipeline(&[&listen, "simulator web2"]).unwrap();
        let deadline = Instant::now() + LIMIT;
        let pipeline = loop {
            let (sink, _) = libchan::pipe();
            match Pipeline::spawn(&registry, &specs, sink, &b_tasks).await {
                Ok(pipeline) => break pipeline,
                Err(error) if Instant::now() < deadline => {
                    assert!(error.to_string().contains("in use"), "{error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("{error}"),
            }
        };
        pipeline.start(LIMIT).await.unwrap();
        let deadline = Instant::now() + LIMIT;
        loop {
            match a.ls().await {
                Ok(names) => {
                    assert_eq!(names, ["web2"]);
                    break;
                }
                Err(error) if Instant::now() < deadline => {
                    assert!(error.to_string().contains("remote node-b: "), "{error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("{scheme}: never recovered: {error}"),
            }
        }
        assert!(a_tasks.shutdown(LIMIT).await);
        assert!(b_tasks.shutdown(LIMIT).await);
    }
}

#[tokio::test]
async fn peers_off_the_allow_list_or_from_another_ca_are_refused() {
    let swarm = Swarm::new();
    let b_tasks = Tasks::new();
    let b = swarm.node("node-b");
    let (_, urls) =
        run(&b, &["listen quic://127.0.0.1:0 --allow node-a", "simulator web"], &b_tasks).await;

    let tasks = Tasks::new();
    let remote = format!("remote {} --node node-b", urls[0]);
    let (allowed, _) = run(&swarm.node("node-a"), &[&remote], &tasks).await;
    assert_eq!(allowed.ls().await.unwrap(), ["web"]);
    let (stranger, _) = run(&swarm.node("node-c"), &[&remote], &tasks).await;
    let error = stranger.ls().await.unwrap_err().to_string();
    assert!(error.starts_with("Ls: remote node-b: "), "{error}");
    let (other_ca, _) = run(&Swarm::new().node("node-a"), &[&remote], &tasks).await;
    let error = other_ca.ls().await.unwrap_err().to_string();
    assert!(error.starts_with("Ls: remote node-b: not connected: "), "{error}");
    assert!(tasks.shutdown(LIMIT).await);
    assert!(b_tasks.shutdown(LIMIT).await);
}

#[tokio::test]
async fn secure_urls_need_certificates() {
    let tasks = Tasks::new();
    let registry = backends::registry();
    let specs = parse_pipeline(&["listen quic://127.0.0.1:0"]).unwrap();
    let (sink, _) = libchan::pipe();
    let error = Pipeline::spawn(&registry, &specs, sink, &tasks).await.unwrap_err();
    assert!(error.to_string().contains("needs the node's certificates"), "{error}");
    let specs = parse_pipeline(&["listen tcp://127.0.0.1:0 --allow a"]).unwrap();
    let (sink, _) = libchan::pipe();
    let error = Pipeline::spawn(&registry, &specs, sink, &tasks).await.unwrap_err();
    assert!(error.to_string().contains("--allow needs tls:// or quic://"), "{error}");
}

/// A backend whose `Get` answers `Set(late)` only once the test opens the gate.
#[derive(Clone)]
struct Gate {
    arrived: Arc<Notify>,
    open: Arc<Semaphore>,
}

impl Gate {
    fn closed() -> Self {
        Self { arrived: Arc::new(Notify::new()), open: Arc::new(Semaphore::new(0)) }
    }
}

impl Backend for Gate {
    fn name(&self) -> &str {
        "gate"
    }

    fn usage(&self) -> &str {
        ""
    }

    fn summary(&self) -> &str {
        "answers Get once the test opens the gate"
    }

    fn spawn(&self, stage: Stage) -> BoxFuture<'static, Result<Sender<Message>, SpawnError>> {
        let server = Server::with_state("gate", Arc::new(self.clone()))
            .on(Verb::Start, |_, request: Message| async move {
                request.reply(Message::ack()).await?;
                Ok(())
            })
            .on(Verb::Get, |gate: Arc<Gate>, request: Message| async move {
                gate.arrived.notify_one();
                let _permit = gate.open.acquire().await?;
                request.reply(Message::set(["late"])).await?;
                Ok(())
            })
            .spawn(&stage.tasks);
        Box::pin(async move { Ok(server) })
    }
}

/// Shutdown of a node lets a request in flight get its first answer before it closes the
/// session the request came by, with the node answering the request itself or routing it to
/// another node. The asker closes its request channel at once, so only the request's own
/// in-flight count holds the session open.
#[tokio::test]
async fn shutdown_waits_for_the_first_answer_of_a_request_in_flight() {
    for routed in [false, true] {
        let gate = Gate::closed();
        let b_node = Node::default();
        let registry = backends::registry().with(gate.clone()).with_node(b_node.clone());
        let (sink, _) = libchan::pipe();
        let b_tasks = Tasks::new();
        let specs = parse_pipeline(&["listen tcp://127.0.0.1:0", "gate"]).unwrap();
        let b = Pipeline::spawn(&registry, &specs, sink, &b_tasks).await.unwrap();
        b.start(LIMIT).await.unwrap();
        let b_url = b_node.listening()[0].clone();
        let a_tasks = if routed { Tasks::new() } else { b_tasks.clone() };
        let url = if routed {
            let node = Node::default();
            let remote = format!("remote {b_url}");
            run(&node, &["listen tcp://127.0.0.1:0", &remote], &a_tasks).await.1[0].clone()
        } else {
            b_url
        };

        let session = libchan::connect(&url).await.unwrap();
        let channel = session.open::<Message>().await.unwrap();
        let (ret, mut answers) = libchan::pipe();
        channel.send(Message::new(Verb::Get).with_ret(ret)).await.unwrap();
        channel.close().await;
        tokio::time::timeout(LIMIT, gate.arrived.notified()).await.expect("the Get arrived");

        let stopping = tokio::spawn({
            let a_tasks = a_tasks.clone();
            async move { a_tasks.shutdown(LIMIT).await }
        });
        tokio::time::timeout(LIMIT, a_tasks.drain_token().cancelled()).await.unwrap();
        assert!(session.close_reason().is_none(), "routed {routed}: closed before the answer");
        gate.open.add_permits(1);
        let answer = tokio::time::timeout(LIMIT, answers.recv()).await.unwrap().unwrap();
        let answer = answer.expect("an answer before the session closed");
        assert_eq!((answer.verb, answer.args), (Verb::Set, vec!["late".to_owned()]));
        // Done with the answers: the node's close need not wait for the end of their channel.
        drop(answers);
        assert!(tokio::time::timeout(LIMIT, stopping).await.unwrap().unwrap(), "routed {routed}");
        tokio::time::timeout(LIMIT, session.closed()).await.expect("closed after the answer");
        assert!(b_tasks.shutdown(LIMIT).await);
    }
}

/// A request with more than `MAX_ARGS` arguments ends its channel with CLOSE_ERR TOO_LARGE:
/// the sender learns why at its next send, instead of the request being dropped while the
/// sender waits for an answer. One at the bound is served, and the session goes on.
#[tokio::test]
async fn a_request_over_the_argument_bound_ends_its_channel_with_a_code() {
    use backends::service::MAX_ARGS;
    use libchan::proto::Code;
    use libchan::SendFailure;

    let tasks = Tasks::new();
    let (_, urls) =
        run(&Node::default(), &["listen tcp://127.0.0.1:0", "simulator web"], &tasks).await;
    let session = libchan::connect(&urls[0]).await.unwrap();
    let ls = |count: usize| {
        let (ret, answers) = libchan::pipe();
        (Message::new(Verb::Ls).with_args(vec![String::new(); count]).with_ret(ret), answers)
    };

    let channel = session.open::<Message>().await.unwrap();
    let (request, mut answers) = ls(MAX_ARGS);
    channel.send(request).await.unwrap();
    let answer = tokio::time::timeout(LIMIT, answers.recv()).await.unwrap().unwrap();
    assert_eq!(answer.expect("an answer at the bound").args, ["web"]);

    let (request, mut answers) = ls(MAX_ARGS + 1);
    channel.send(request).await.unwrap();
    tokio::time::timeout(LIMIT, channel.closed()).await.expect("the channel ends");
    let error = channel.send(Message::new(Verb::Ls)).await.unwrap_err();
    let expected = format!("message carries more than {MAX_ARGS} arguments");
    assert_eq!(
        *error.reason(),
        SendFailure::Refused { code: Code::TooLarge, message: expected },
        "{error}"
    );
    // The refused request's answer channel ends too: nobody is left waiting on it.
    let ended = tokio::time::timeout(LIMIT, answers.recv()).await.expect("the answers end");
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");

    let channel = session.open::<Message>().await.unwrap();
    let (request, mut answers) = ls(0);
    channel.send(request).await.unwrap();
    let answer = tokio::time::timeout(LIMIT, answers.recv()).await.unwrap().unwrap();
    assert_eq!(answer.expect("the session goes on").args, ["web"]);
    drop(channel);
    session.close(Code::Ok, "done").await;
    assert!(tasks.shutdown(LIMIT).await);
}

/// A node that takes no channel in until `release` is notified, then answers every `Get`
/// with `Set("served")`. Its sessions have `limits`.
async fn slow_node(limits: libchan::Limits, release: Arc<Notify>) -> String {
    let listener = libchan::listen_with("tcp://127.0.0.1:0", limits).await.unwrap();
    let url = listener.local_url().to_owned();
    tokio::spawn(async move {
        let session = listener.accept().await.unwrap();
        release.notified().await;
        while let Some(mut channel) = session.accept::<Message>().await {
            tokio::spawn(async move {
                while let Ok(Some(request)) = channel.recv().await {
                    if let Some(ret) = request.ret {
                        let _ = ret.send(Message::new(Verb::Set).with_args(["served"])).await;
                    }
                }
            });
        }
    });
    url
}

/// The tests that count resends (a counter for the process) run one at a time.
static COUNTING_RESENDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn resent_requests() -> u64 {
    let metrics = backends::metrics::render();
    let line = metrics.lines().find(|line| line.starts_with("swarm_resent_requests_total "));
    line.and_then(|line| line.split(' ').nth(1)?.parse().ok()).unwrap_or(0)
}

/// A burst of requests over the next node's accept queue (128 channels waiting for its accept
/// loop): the node refuses the excess unread, and `remote` sends those again until the node
/// takes them in. Every request is answered.
#[tokio::test]
async fn requests_refused_by_a_full_accept_queue_are_sent_again() {
    let _counting = COUNTING_RESENDS.lock().await;
    let release = Arc::new(Notify::new());
    let url = slow_node(libchan::Limits::default(), release.clone()).await;
    let tasks = Tasks::new();
    let (a, _) = run(&Node::default(), &[&format!("remote {url}")], &tasks).await;
    let before = resent_requests();
    let burst = futures::future::join_all((0..200).map(|_| a.get()));
    let mut burst = std::pin::pin!(burst);
    let deadline = Instant::now() + LIMIT;
    // The node takes nothing in until some requests were refused and sent again.
    while resent_requests() == before {
        assert!(Instant::now() < deadline, "no request was refused and sent again");
        tokio::select! {
            _ = &mut burst => panic!("answered by a node that takes nothing in"),
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    release.notify_one();
    let answers = tokio::time::timeout(LIMIT, burst).await.expect("every request answered");
    for (n, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.unwrap_or_else(|e| panic!("request {n}: {e}")), "served");
    }
    assert!(tasks.shutdown(LIMIT).await);
}

/// A node whose accept queue stays full: requests fail with the node's reason once their
/// sends are used up or their bound is near, and a request with a byte stream (which a send
/// uses up) fails at once.
#[tokio::test]
async fn requests_a_full_accept_queue_keeps_refusing_fail_with_its_reason() {
    let _counting = COUNTING_RESENDS.lock().await;
    let mut limits = libchan::Limits::default();
    limits.accept_queue = 1;
    let release = Arc::new(Notify::new());
    let url = slow_node(limits, release.clone()).await;
    let tasks = Tasks::new();
    let (a, _) = run(&Node::default(), &[&format!("remote {url} --timeout 2")], &tasks).await;
    // One fills the queue and is never answered; the others are refused over and over.
    let gets = futures::future::join_all((0..5).map(|_| a.get()));
    let errors: Vec<String> = tokio::time::timeout(LIMIT, gets)
        .await
        .expect("every request fails within its bound")
        .into_iter()
        .map(|answer| answer.unwrap_err().to_string())
        .collect();
    let refused = errors
        .iter()
        .filter(|e| {
            e.starts_with("Get: remote 127.0.0.1: the node refused it ")
                && e.ends_with(" times: accept queue of 1 is full")
        })
        .count();
    assert_eq!(refused, 4, "{errors:#?}");
    let (att, _far) = libchan::byte_pipe();
    let request = Message::new(Verb::Attach).with_att(att);
    let mut answers = a.request(request).await.unwrap();
    let answer = tokio::time::timeout(LIMIT, answers.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(answer.verb, Verb::Error);
    assert_eq!(answer.args, ["remote 127.0.0.1: the node refused it: accept queue of 1 is full"]);
    // The node reads the request it queued, so the session closes without waiting for it.
    release.notify_one();
    assert!(tasks.shutdown(LIMIT).await);
}
