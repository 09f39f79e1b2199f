//! Leader election at the distribution server ([`ServerConfig::serving`]): a follower answers
//! `POST /v1/stream` with `503` and closes the connection, a replica that becomes the leader
//! serves, and one that stops leading closes the streams it has so its proxies reconnect.
#![allow(clippy::unwrap_used)]

mod mesh;

use std::time::Duration;

use meridian_distribution::{
    Client, ClientConfig, DistributionServer, Hello, NOT_LEADER, Refused, ServerConfig, Target,
};
use meridian_model::Snapshot;
use meridian_test_support::eventually;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);

struct Accept;

impl Target for Accept {
    async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
        Ok(snapshot.generation)
    }
}

fn hello() -> Hello {
    Hello {
        proxy_id: "east-1".into(),
        cluster: "east".into(),
        region: "us-east".into(),
        zone: "us-east-1a".into(),
        gateways: None,
        address: None,
        east_west: None,
    }
}

/// One raw `POST /v1/stream`: the response head and whatever body arrived before the server
/// closed the connection (bounded).
async fn raw_stream_request(addr: std::net::SocketAddr) -> String {
    let body = serde_json::to_vec(&hello()).unwrap();
    let mut tcp = mesh::connect_as(addr, &hello()).await;
    let head = format!(
        "POST /v1/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body).await.unwrap();
    let mut out = Vec::new();
    // The server closes the connection after the 503: read_to_end returns.
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .expect("the follower closes the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_follower_turns_proxies_away_and_a_leader_that_steps_down_closes_their_streams() {
    let (leading, serving) = watch::channel(false);
    let mut cfg: ServerConfig = mesh::server_config("127.0.0.1:0".parse().unwrap());
    cfg.serving = Some(serving);
    let server = DistributionServer::start(cfg).await.unwrap();
    server.publish("east", Snapshot::empty(1)).unwrap();

    // Follower: 503, the reason, and the connection closed.
    let answer = raw_stream_request(server.local_addr()).await;
    let head = answer.to_ascii_lowercase();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(head.contains("connection: close"), "{answer}");
    assert!(head.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains(NOT_LEADER.trim_end()), "{answer}");

    // A client keeps trying (soon: at most 1 s apart) and gets in once the replica leads.
    let client = Client::new(ClientConfig::new(
        format!("https://{}", server.local_addr()),
        hello(),
        mesh::store_for(&hello()),
        None,
    ))
    .unwrap();
    let status = client.status();
    let run = tokio::spawn(async move { client.run(&Accept).await });
    eventually("the client was refused", WAIT, || {
        status
            .borrow()
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("503"))
    })
    .await;
    assert!(!status.borrow().connected);
    leading.send_replace(true);
    eventually(
        "the client connected to the leader",
        Duration::from_secs(3),
        || status.borrow().connected,
    )
    .await;

    // Stepping down closes the stream.
    leading.send_replace(false);
    eventually("the stream closed when leadership was lost", WAIT, || {
        !status.borrow().connected
    })
    .await;
    eventually("the server no longer counts the proxy", WAIT, || {
        server.state().iter().all(|p| !p.connected)
    })
    .await;
    run.abort();
}
