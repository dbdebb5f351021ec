//! What the libchan test files share: a throwaway swarm CA, and a well-behaved session pair
//! that keeps working while a test abuses another session.

// Each test file is its own crate and uses part of this.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libchan::{Sender, Session};

/// A throwaway swarm CA with nodes "client" and "server" (the latter also named by
/// 127.0.0.1), minted once per test process: the client's and the server's TLS settings.
pub fn swarm() -> &'static (libchan::Tls, libchan::Tls) {
    static SWARM: std::sync::OnceLock<(libchan::Tls, libchan::Tls)> = std::sync::OnceLock::new();
    SWARM.get_or_init(|| {
        let ca = certs::Ca::create("libchan test CA").unwrap();
        let ip = "127.0.0.1".parse().unwrap();
        let tls = |name: &str| {
            let id = certs::Identity::new(&ca, &ca.issue(name, &[], &[ip]).unwrap()).unwrap();
            libchan::Tls::new(id.client_config(), id.server_config())
                .with_peer_name(|chain| certs::peer_name(chain).ok())
        };
        (tls("client"), tls("server"))
    })
}

/// Request/response in a loop on its own pair of sessions, while a test abuses another
/// session; [`finish`](Self::finish) checks it never failed.
pub struct Bystander {
    rounds: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Bystander {
    /// Starts the loop on `client` (asking) and `server` (answering), connected to each other.
    pub async fn over(client: Session, server: Session) -> Self {
        let requests = client.open::<(u64, Sender<u64>)>().await.unwrap();
        let mut incoming = within(server.accept::<(u64, Sender<u64>)>()).await.unwrap();
        tokio::spawn(async move {
            let _server = server;
            while let Ok(Some((n, reply))) = incoming.recv().await {
                let _ = reply.send(n + 1).await;
            }
        });
        let rounds = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (rounds.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let _client = client;
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let (reply, mut answer) = libchan::pipe();
                requests.send((n, reply)).await.map_err(|e| e.to_string())?;
                let got = tokio::time::timeout(ROUND_LIMIT, answer.recv())
                    .await
                    .map_err(|_| format!("no answer to round {n} within 10 s"))?
                    .map_err(|e| e.to_string())?;
                if got != Some(n + 1) {
                    return Err(format!("round {n}: got {got:?}"));
                }
                n += 1;
                r.store(n as usize, Ordering::Relaxed);
            }
            Ok(())
        });
        Self { rounds, stop, task }
    }

    /// Rounds answered so far.
    pub fn rounds(&self) -> usize {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Waits (at most 20 s) until one more round than now was answered.
    pub async fn one_more_round(&self) {
        let after = self.rounds();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.rounds() <= after {
            assert!(tokio::time::Instant::now() < deadline, "the bystander stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the loop; panics if a round failed.
    pub async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        within(self.task).await.unwrap().expect("the bystander session failed");
    }
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("the bystander: no answer within 20 s")
}

const ROUND_LIMIT: Duration = Duration::from_secs(10);
