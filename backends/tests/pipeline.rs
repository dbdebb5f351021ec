//! Pipelines of in-memory stages, spawned from specs through the built-in registry.

use std::time::Duration;

use backends::service::{parse_pipeline, Client, Message, Pipeline, Tasks};
use libchan::Receiver;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(20);

async fn pipeline(stages: &[&str], tasks: &Tasks) -> (Client, Receiver<Message>) {
    let specs = parse_pipeline(stages).unwrap();
    let (sink, sunk) = libchan::pipe();
    let pipeline = Pipeline::spawn(&backends::registry(), &specs, sink, tasks).await.unwrap();
    pipeline.start(LIMIT).await.unwrap();
    (Client::new(pipeline.head().unwrap().clone()).with_timeout(LIMIT), sunk)
}

fn parse(json: &str) -> Value {
    serde_json::from_str(json).unwrap()
}

#[tokio::test]
async fn debug_between_two_stages_sees_every_message() {
    let tasks = Tasks::new();
    // Stage 1 is a debug tap standing in for a frontend; stage 2 the tap under test.
    let (head, _) = pipeline(&["debug", "debug", "simulator"], &tasks).await;
    let (logs, log_lines) = capture_logs();
    let guard = tracing::subscriber::set_default(logs);

    let web = head.spawn([r#"{"Image": "nginx"}"#, "web"]).await.unwrap();
    web.start().await.unwrap();
    assert_eq!(head.ls().await.unwrap(), ["web"]);
    let again = head.attach("web").await.unwrap().object;
    assert_eq!(parse(&again.get().await.unwrap())["State"]["Running"], true);

    let lines = log_lines();
    // Each request passed both taps, answers too, including those to the spawned object.
    for verb in ["Spawn", "Start", "Ls", "Attach", "Get"] {
        let requests = lines
            .iter()
            .filter(|l| l.contains("request") && l.contains(&format!("verb={verb} ")))
            .count();
        assert_eq!(requests, 2, "{verb} requests seen by the taps: {lines:#?}");
    }
    let answers = lines.iter().filter(|l| l.contains("direction=\"answer\"")).count();
    assert_eq!(answers, 10, "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("verb=Spawn") && l.contains("ret=true")));
    drop(guard);
    assert!(tasks.shutdown(LIMIT).await);
}

#[tokio::test]
async fn aggregate_over_three_simulators_merges_and_places() {
    let tasks = Tasks::new();
    let (head, _) =
        pipeline(&[r#"aggregate "simulator a1" "simulator b1 b2" 'simulator'"#], &tasks).await;
    assert_eq!(head.ls().await.unwrap(), ["a1", "b1", "b2"]);

    // Round robin: one per child, in turn.
    for name in ["x1", "x2", "x3", "x4"] {
        head.spawn([r#"{"Image": "busybox"}"#, name]).await.unwrap();
    }
    assert_eq!(head.ls().await.unwrap(), ["a1", "x1", "x4", "b1", "b2", "x2", "x3"]);
    let state = parse(&head.get().await.unwrap());
    let objects: Vec<u64> = state["Children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["Objects"].as_u64().unwrap())
        .collect();
    assert_eq!(objects, [3, 3, 1]);

    // Attach finds the owner; Start on the object changes that child's state.
    let x3 = head.attach("x3").await.unwrap().object;
    x3.start().await.unwrap();
    assert_eq!(parse(&x3.get().await.unwrap())["Name"], "/x3");
    let error = head.attach("nope").await.unwrap_err();
    assert_eq!(error.to_string(), "Attach: no such object: nope");
    head.stop().await.unwrap();
    assert!(tasks.shutdown(LIMIT).await);
}

#[tokio::test]
async fn aggregate_strategies_place_by_load() {
    let tasks = Tasks::new();
    let (spread, _) =
        pipeline(&["aggregate --strategy spread 'simulator a b' 'simulator c' simulator"], &tasks)
            .await;
    for name in ["s1", "s2", "s3"] {
        spread.spawn([r#"{"Image": "busybox"}"#, name]).await.unwrap();
    }
    // Loads 2,1,0 -> s1 on child 3 (2,1,1), s2 on child 2 (2,2,1), s3 on child 3 (2,2,2).
    assert_eq!(spread.ls().await.unwrap(), ["a", "b", "c", "s2", "s1", "s3"]);

    let (binpack, _) =
        pipeline(&["aggregate --strategy binpack simulator 'simulator c' simulator"], &tasks).await;
    for name in ["p1", "p2"] {
        binpack.spawn([r#"{"Image": "busybox"}"#, name]).await.unwrap();
    }
    let state = parse(&binpack.get().await.unwrap());
    assert_eq!(state["Strategy"], "binpack");
    assert_eq!(state["Children"][1]["Objects"], 3);

    let (random, _) = pipeline(&["aggregate --strategy random simulator simulator"], &tasks).await;
    for name in ["r1", "r2", "r3", "r4"] {
        random.spawn([r#"{"Image": "busybox"}"#, name]).await.unwrap();
    }
    assert_eq!(random.ls().await.unwrap().len(), 4);
    assert!(tasks.shutdown(LIMIT).await);
}

#[tokio::test]
async fn spawn_errors_name_the_stage() {
    let tasks = Tasks::new();
    let registry = backends::registry();
    let (sink, _) = libchan::pipe();
    let cases = [
        (vec!["debug", "simulatr"], "stage 2 (\"simulatr\"): unknown backend \"simulatr\" (known: aggregate, debug, dockerclient, dockerserver, exec, listen, remote, simulator)"),
        (vec!["aggregate simulator 'exec'", "debug"], "stage 1 (\"aggregate simulator 'exec'\"): child 2 (\"exec\"): no program to run (usage: exec PATH [ARG...])"),
        (vec!["simulator 'bad name'"], "stage 1 (\"simulator 'bad name'\"): invalid container name \"bad name\""),
    ];
    for (stages, expected) in cases {
        let specs = parse_pipeline(&stages).unwrap();
        let error = Pipeline::spawn(&registry, &specs, sink.clone(), &tasks).await.unwrap_err();
        assert!(error.to_string().starts_with(expected), "{error}");
    }
    let (sink, _) = libchan::pipe::<Message>();
    let specs = parse_pipeline(&["exec /nonexistent"]).unwrap();
    let pipeline = Pipeline::spawn(&registry, &specs, sink, &tasks).await.unwrap();
    let error = pipeline.start(LIMIT).await.unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("stage 1 (\"exec /nonexistent\"): Start: cannot run /nonexistent"),
        "{error}"
    );
    assert!(tasks.shutdown(LIMIT).await);
}

/// A subscriber that keeps every formatted log line, and a way to read them.
fn capture_logs() -> (impl tracing::Subscriber + Send + Sync, impl Fn() -> Vec<String>) {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    let read = move || {
        let bytes = lines.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .filter(|l| l.contains(" debug ") || l.contains(": debug"))
            .map(str::to_owned)
            .collect()
    };
    (subscriber, read)
}
