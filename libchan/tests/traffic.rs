//! `Session::traffic`: the bytes a session's connection carried, on both sides, over a yamux
//! transport and over QUIC.

use libchan::{Limits, Session, Traffic};

mod support;

use support::swarm;

const PAYLOAD: usize = 256 * 1024;

async fn tcp() -> (Session, Session) {
    let listener = libchan::listen_with("tcp://127.0.0.1:0", Limits::default()).await.unwrap();
    let client = libchan::connect_with(listener.local_url(), Limits::default()).await.unwrap();
    (client, listener.accept().await.unwrap())
}

async fn quic() -> (Session, Session) {
    let (client_tls, server_tls) = swarm();
    let listener =
        libchan::listen_secure("quic://127.0.0.1:0", Limits::default(), server_tls).await.unwrap();
    let url = listener.local_url().to_owned();
    let client = libchan::connect_secure(&url, Limits::default(), client_tls);
    let (client, server) = tokio::join!(client, listener.accept());
    (client.unwrap(), server.unwrap())
}

/// Sends one large message from `client` to `server`; checks both sides counted at least its
/// bytes, each side's sent within a bound of what the other received (yamux counts the
/// connection's bytes exactly; QUIC counts datagrams, so loopback loss cannot skew it much).
async fn counts(client: Session, server: Session) {
    let before = client.traffic();
    let tx = client.open::<serde_bytes::ByteBuf>().await.unwrap();
    let mut rx = server.accept::<serde_bytes::ByteBuf>().await.unwrap();
    tx.send(serde_bytes::ByteBuf::from(vec![7u8; PAYLOAD])).await.unwrap();
    assert_eq!(rx.recv().await.unwrap().unwrap().len(), PAYLOAD);
    let (sent, received) = (client.traffic(), server.traffic());
    assert!(sent.sent - before.sent >= PAYLOAD as u64, "{before:?} then {sent:?}");
    assert!(received.received >= PAYLOAD as u64, "{received:?}");
    // Nothing else of this size went either way.
    assert!(sent.received < PAYLOAD as u64 / 4, "{sent:?}");
    assert!(received.sent < PAYLOAD as u64 / 4, "{received:?}");
    let later: Traffic = client.traffic();
    assert!(later.sent >= sent.sent && later.received >= sent.received);
}

#[tokio::test]
async fn tcp_sessions_count_their_bytes() {
    let (client, server) = tcp().await;
    counts(client, server).await;
}

#[tokio::test]
async fn quic_sessions_count_their_bytes() {
    let (client, server) = quic().await;
    counts(client, server).await;
}
