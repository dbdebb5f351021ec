//! Request ids: one Docker API call is one id on every verb it sends down the chain.

mod support;

use backends::service::{with_request_id, Client, Message, Verb};
use support::{Front, LIMIT};

/// Each request the chain receives, and its id.
async fn recorded(
    mut requests: libchan::Receiver<Message>,
    mut seen: Vec<(Verb, String)>,
) -> Vec<(Verb, String)> {
    while let Ok(Some(request)) = requests.recv().await {
        seen.push((request.verb.clone(), request.id.clone().unwrap_or_default()));
        let answer = match request.verb {
            Verb::Ls => Message::set(["web"]),
            _ => Message::error("no such container: web"),
        };
        let _ = request.reply(answer).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_api_call_is_one_id_down_the_chain() {
    // The chain behind dockerserver is a node this test plays: `remote` forwards to it.
    let listener =
        libchan::listen_with("tcp://127.0.0.1:0", libchan::Limits::default()).await.unwrap();
    let url = listener.local_url().to_owned();
    let front = Front::start(&[&format!("remote {url}")]).await;
    let session = tokio::time::timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
    let serving = tokio::spawn(async move {
        let mut seen = Vec::new();
        // `remote` opens a channel per request; two API calls here make three requests.
        while seen.len() < 3 {
            let Some(channel) = session.accept::<Message>().await else { break };
            seen = recorded(channel, seen).await;
        }
        seen
    });
    for path in ["/v1.41/containers/json?all=1", "/v1.41/containers/json?all=1"] {
        let response = get(&front.host, path).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    let seen = tokio::time::timeout(LIMIT, serving).await.unwrap().unwrap();
    // ps: Ls, then Attach(web) with the same id; the second ps: another id.
    assert_eq!(
        seen.iter().map(|(verb, _)| verb.clone()).collect::<Vec<_>>(),
        [Verb::Ls, Verb::Attach, Verb::Ls]
    );
    let ids: Vec<&str> = seen.iter().map(|(_, id)| id.as_str()).collect();
    assert!(ids[0].starts_with("docker-") && ids[0].len() == 19, "{ids:?}");
    assert_eq!(ids[0], ids[1], "one API call, one id");
    assert_ne!(ids[0], ids[2], "another API call, another id");
    front.shutdown().await;
}

#[tokio::test]
async fn clients_tag_requests_in_scope_and_keep_ids_they_were_given() {
    let (target, mut requests) = libchan::pipe::<Message>();
    let client = Client::new(target);
    with_request_id("outer-1".to_owned(), async {
        client.notify(Message::log("a")).await.unwrap();
        client.notify(Message::log("b").with_id("own-2")).await.unwrap();
    })
    .await;
    client.notify(Message::log("c")).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(requests.recv().await.unwrap().unwrap().id);
    }
    assert_eq!(ids, [Some("outer-1".to_owned()), Some("own-2".to_owned()), None]);
}

/// One HTTP/1.1 GET, its whole response as text.
async fn get(host: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream =
        tokio::net::TcpStream::connect(host.trim_start_matches("tcp://")).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: docker\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut response)).await.unwrap().unwrap();
    String::from_utf8_lossy(&response).into_owned()
}
