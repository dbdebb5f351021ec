//! A two-node demo on loopback: a client sends requests carrying a return channel and a byte
//! stream to a server over a real TCP session; the server answers on both.
//!
//! `cargo run -p libchan --example demo`

use libchan::{byte_pipe, pipe, ByteStream, Sender};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Deserialize, Serialize)]
struct Request {
    name: String,
    reply: Sender<String>,
    upload: ByteStream,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let listener = libchan::listen("tcp://127.0.0.1:0").await?;
    let url = listener.local_url().to_string();
    println!("server listening on {url}");

    let server = tokio::spawn(async move {
        let session = listener.accept().await.ok_or("listener closed")?;
        let mut requests = session.accept::<Request>().await.ok_or("session closed")?;
        while let Some(mut request) = requests.recv().await? {
            let mut body = String::new();
            request.upload.read_to_string(&mut body).await?;
            let answer =
                format!("hello {}, you uploaded {} bytes: {body:?}", request.name, body.len());
            request.reply.send(answer).await.map_err(|e| e.to_string())?;
        }
        println!("server: client closed the channel");
        Ok::<_, Error>(())
    });

    let session = libchan::connect(&url).await?;
    println!("client connected to {}", session.peer_addr());
    let requests = session.open::<Request>().await?;
    for name in ["alice", "bob"] {
        let (reply, mut answer) = pipe();
        let (mut upload, theirs) = byte_pipe();
        requests
            .send(Request { name: name.into(), reply, upload: theirs })
            .await
            .map_err(|e| e.to_string())?;
        upload.write_all(format!("a file from {name}").as_bytes()).await?;
        upload.shutdown().await?;
        println!("client: {}", answer.recv().await?.ok_or("no answer")?);
    }
    requests.close().await;
    server.await??;
    Ok(())
}
