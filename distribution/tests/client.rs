//! The client against a scripted fake controller (raw HTTP on loopback): what it does with lines
//! our server never sends — undecodable snapshots, deltas on a base it does not hold, silence.
#![allow(clippy::unwrap_used)]

mod mesh;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_distribution::{Client, ClientConfig, Hello, Refused, Target};
use meridian_model::Snapshot;
use mesh::Tls;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Records what it applies.
#[derive(Default)]
struct Recorder {
    applied: Mutex<Vec<Snapshot>>,
    refused: Mutex<Vec<String>>,
}

impl Target for Recorder {
    async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
        let g = snapshot.generation;
        self.applied.lock().unwrap().push(snapshot);
        Ok(g)
    }

    fn refuse(&self, reason: &str) {
        self.refused.lock().unwrap().push(reason.to_string());
    }
}

/// Reads one HTTP/1.1 request (headers and a Content-Length body).
async fn read_request(tcp: &mut Tls) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "client closed before a full request");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            let mut body = buf[end + 4..].to_vec();
            while body.len() < len {
                let n = tcp.read(&mut chunk).await.unwrap();
                body.extend_from_slice(&chunk[..n]);
            }
            return (head, body);
        }
    }
}

enum Seen {
    Stream(Tls),
    Ack(Value),
}

/// A fake controller: stream requests are handed to the test (which writes lines itself), acks
/// are answered 204 and reported.
async fn fake() -> (String, mpsc::UnboundedReceiver<Seen>) {
    let (listener, url, acceptor) = mesh::fake_controller_listener().await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                let mut tcp = mesh::accept_tls(&acceptor, tcp).await;
                loop {
                    let (head, body) = read_request(&mut tcp).await;
                    if head.starts_with("POST /v1/stream") {
                        tcp.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                              connection: close\r\n\r\n{\"welcome\":{\"pingIntervalMs\":100}}\n",
                        )
                        .await
                        .unwrap();
                        let _ = tx.send(Seen::Stream(tcp));
                        return;
                    }
                    tcp.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                        .await
                        .unwrap();
                    let _ = tx.send(Seen::Ack(serde_json::from_slice(&body).unwrap()));
                }
            });
        }
    });
    (url, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("nothing from the client within 10 s")
        .unwrap()
}

async fn next_stream(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Tls {
    match next(rx).await {
        Seen::Stream(s) => s,
        Seen::Ack(a) => panic!("expected a stream, got ack {a}"),
    }
}

async fn next_ack(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Value {
    match next(rx).await {
        Seen::Ack(a) => a,
        Seen::Stream(_) => panic!("expected an ack, got a new stream"),
    }
}

const SNAP: &str =
    r#"{"snapshot":{"schema":"meridian.dev/snapshot/v1","generation":5,"gateways":[]}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_snapshots_are_refused_and_bad_deltas_force_a_resync() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (url, mut rx) = fake().await;
        let hello = Hello {
            proxy_id: "p1".into(),
            cluster: "east".into(),
            region: "r1".into(),
            zone: "z1".into(),
            gateways: None,
            address: None,
            east_west: None,
        };
        let identity = mesh::store_for(&hello);
        let mut cfg = ClientConfig::new(url, hello, identity, None);
        cfg.backoff_initial = Duration::from_millis(10);
        let client = Arc::new(Client::new(cfg).unwrap());
        let target = Arc::new(Recorder::default());
        let (c, t) = (client.clone(), target.clone());
        let task = tokio::spawn(async move {
            let _ = c.run(&*t).await;
        });

        let mut s = next_stream(&mut rx).await;
        // A snapshot with a field this proxy does not know: refused with the decode error.
        s.write_all(
            b"{\"snapshot\":{\"schema\":\"meridian.dev/snapshot/v1\",\"generation\":4,\"gateways\":[],\"future\":1}}\n",
        )
        .await
        .unwrap();
        let ack = next_ack(&mut rx).await;
        assert_eq!(ack["generation"], 4);
        assert_eq!(ack["result"]["status"], "refused");
        assert!(ack["result"]["reason"].as_str().unwrap().contains("does not decode"), "{ack}");
        assert_eq!(target.refused.lock().unwrap().len(), 1);

        // A good one is applied and acknowledged.
        s.write_all(format!("{SNAP}\n").as_bytes()).await.unwrap();
        let ack = next_ack(&mut rx).await;
        assert_eq!((ack["generation"].as_u64(), &ack["result"]["status"]), (Some(5), &Value::from("applied")));

        // A delta on a base we do not hold: the client drops the stream and reconnects.
        s.write_all(b"{\"endpoints\":{\"generation\":9,\"base\":8,\"changes\":[]}}\n")
            .await
            .unwrap();
        let mut s2 = next_stream(&mut rx).await;
        assert_eq!(target.applied.lock().unwrap().len(), 1, "the bad delta was applied");
        // On the new stream the same snapshot is acknowledged without applying it again.
        s2.write_all(format!("{SNAP}\n").as_bytes()).await.unwrap();
        let ack = next_ack(&mut rx).await;
        assert_eq!(ack["generation"], 5);
        assert_eq!(target.applied.lock().unwrap().len(), 1);
        // A delta on the held base is applied.
        s2.write_all(b"{\"endpoints\":{\"generation\":6,\"base\":5,\"changes\":[]}}\n")
            .await
            .unwrap();
        let ack = next_ack(&mut rx).await;
        assert_eq!(ack["generation"], 6);
        assert_eq!(target.applied.lock().unwrap().last().unwrap().generation, 6);

        // Silence for more than three ping intervals: the client closes the stream itself and
        // opens a new one.
        let s3 = next_stream(&mut rx).await;
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s2.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0, "the silent stream was not closed by the client");
        assert!(client.status().borrow().connects >= 2);
        drop((s, s3));
        task.abort();
    })
    .await
    .expect("test exceeded its time bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_on_another_base_is_refused_with_a_resync_and_changes_nothing() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (url, mut rx) = fake().await;
        let hello = Hello {
            proxy_id: "p1".into(),
            cluster: "east".into(),
            region: "r1".into(),
            zone: "z1".into(),
            gateways: None,
            address: None,
            east_west: None,
        };
        let identity = mesh::store_for(&hello);
        let cfg = ClientConfig::new(url, hello, identity, None);
        let client = Arc::new(Client::new(cfg).unwrap());
        let target = Arc::new(Recorder::default());
        let (c, t) = (client.clone(), target.clone());
        let task = tokio::spawn(async move {
            let _ = c.run(&*t).await;
        });

        let mut s = next_stream(&mut rx).await;
        s.write_all(format!("{SNAP}\n").as_bytes()).await.unwrap();
        assert_eq!(next_ack(&mut rx).await["generation"], 5);

        // A patch made for generation 4: refused, with a resync asked; nothing applied.
        s.write_all(b"{\"patch\":{\"base\":4,\"generation\":6,\"gateways\":[]}}\n")
            .await
            .unwrap();
        let ack = next_ack(&mut rx).await;
        assert_eq!(ack["generation"], 6);
        assert_eq!(ack["resync"], true, "{ack}");
        assert_eq!(ack["result"]["status"], "refused");
        assert!(
            ack["result"]["reason"]
                .as_str()
                .unwrap()
                .contains("applies to generation 4"),
            "{ack}"
        );
        assert_eq!(target.applied.lock().unwrap().len(), 1);
        assert_eq!(target.refused.lock().unwrap().len(), 1);

        // A patch on the held base (a Gateway put) is applied through the target in full.
        let gw = r#"{"namespace":"ns","name":"gw","listeners":[]}"#;
        s.write_all(
            format!(
                "{{\"patch\":{{\"base\":5,\"generation\":7,\"gateways\":[{{\"put\":{gw}}}]}}}}\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let ack = next_ack(&mut rx).await;
        assert_eq!(ack["generation"], 7);
        assert_eq!(ack["result"]["status"], "applied");
        assert!(ack.get("resync").is_none(), "{ack}");
        let applied = target.applied.lock().unwrap().last().cloned().unwrap();
        assert_eq!(applied.generation, 7);
        assert_eq!(applied.gateways.len(), 1);
        assert_eq!(applied.gateways[0].name, "gw");

        // A patch that does not decode is refused like an undecodable snapshot.
        s.write_all(b"{\"patch\":{\"base\":7,\"generation\":8,\"gateways\":[{\"bogus\":1}]}}\n")
            .await
            .unwrap();
        let ack = next_ack(&mut rx).await;
        assert_eq!(ack["generation"], 8);
        assert_eq!(ack["result"]["status"], "refused");
        assert_eq!(target.applied.lock().unwrap().len(), 2);
        drop(s);
        task.abort();
    })
    .await
    .expect("test exceeded its time bound");
}

/// A target that takes a while: each apply waits while the gate is closed (as a proxy compiling
/// a big router does, so the lines sent meanwhile arrive together), refuses the generations in
/// `refuses`, and serves the last snapshot it took.
struct Gated {
    open: tokio::sync::watch::Sender<bool>,
    started: mpsc::UnboundedSender<u64>,
    refuses: Vec<u64>,
    serving: Mutex<Option<u64>>,
    tried: Mutex<Vec<u64>>,
}

impl Target for Gated {
    async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
        let g = snapshot.generation;
        self.tried.lock().unwrap().push(g);
        let _ = self.started.send(g);
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|o| *o).await;
        if self.refuses.contains(&g) {
            return Err(Refused {
                reason: format!("generation {g} is not servable"),
                retry_after: None,
            });
        }
        *self.serving.lock().unwrap() = Some(g);
        Ok(g)
    }
}

fn snap(generation: u64) -> String {
    format!(
        "{{\"snapshot\":{{\"schema\":\"meridian.dev/snapshot/v1\",\"generation\":{generation},\"gateways\":[]}}}}\n"
    )
}

/// `(generation, status)` of the next ack.
async fn ack_of(rx: &mut mpsc::UnboundedReceiver<Seen>) -> (u64, String) {
    let ack = next_ack(rx).await;
    (
        ack["generation"].as_u64().unwrap(),
        ack["result"]["status"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_that_arrive_during_an_apply_end_where_applying_them_one_by_one_would() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (url, mut rx) = fake().await;
        let hello = Hello {
            proxy_id: "p1".into(),
            cluster: "east".into(),
            region: "r1".into(),
            zone: "z1".into(),
            gateways: None,
            address: None,
            east_west: None,
        };
        let identity = mesh::store_for(&hello);
        let mut cfg = ClientConfig::new(url, hello, identity, None);
        cfg.traffic_interval = Duration::ZERO;
        let client = Arc::new(Client::new(cfg).unwrap());
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let target = Arc::new(Gated {
            open: tokio::sync::watch::Sender::new(true),
            started: started_tx,
            refuses: vec![8, 10],
            serving: Mutex::new(None),
            tried: Mutex::new(Vec::new()),
        });
        let (c, t) = (client.clone(), target.clone());
        let task = tokio::spawn(async move {
            let _ = c.run(&*t).await;
        });
        let mut s = next_stream(&mut rx).await;
        s.write_all(snap(5).as_bytes()).await.unwrap();
        assert_eq!(ack_of(&mut rx).await, (5, "applied".into()));

        // Sends `first`, holds its apply, sends `rest` in one write and lets the applies go once
        // the client has had time to read them: they are handled as one batch. (Had they not
        // arrived in time, each would be applied in turn: the outcome asserted is the same.)
        let mut during_an_apply = async |first: u64, rest: &[u8]| {
            target.open.send_replace(false);
            s.write_all(snap(first).as_bytes()).await.unwrap();
            while started.recv().await != Some(first) {}
            s.write_all(rest).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            target.open.send_replace(true);
        };

        // A good snapshot then one the target refuses: the good one serves and is acknowledged,
        // then the refusal, as line by line.
        during_an_apply(6, format!("{}{}", snap(7), snap(8)).as_bytes()).await;
        assert_eq!(ack_of(&mut rx).await, (6, "applied".into()));
        assert_eq!(ack_of(&mut rx).await, (7, "applied".into()));
        assert_eq!(ack_of(&mut rx).await, (8, "refused".into()));
        assert_eq!(*target.serving.lock().unwrap(), Some(7));

        // A refused snapshot then a good one: the good one serves (the refused one may go
        // unacknowledged: the newer ack covers it).
        during_an_apply(9, format!("{}{}", snap(10), snap(11)).as_bytes()).await;
        assert_eq!(ack_of(&mut rx).await, (9, "applied".into()));
        let mut last = ack_of(&mut rx).await;
        if last == (10, "refused".into()) {
            last = ack_of(&mut rx).await;
        }
        assert_eq!(last, (11, "applied".into()));
        assert_eq!(*target.serving.lock().unwrap(), Some(11));

        // A good snapshot then a patch on a base the client does not hold: the good one is
        // applied and acknowledged before the patch is refused with a resync.
        during_an_apply(
            12,
            format!(
                "{}{{\"patch\":{{\"base\":99,\"generation\":14,\"gateways\":[]}}}}\n",
                snap(13)
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(ack_of(&mut rx).await, (12, "applied".into()));
        assert_eq!(ack_of(&mut rx).await, (13, "applied".into()));
        let ack = next_ack(&mut rx).await;
        assert_eq!(
            (ack["generation"].as_u64(), ack["resync"].as_bool()),
            (Some(14), Some(true)),
            "{ack}"
        );
        assert_eq!(*target.serving.lock().unwrap(), Some(13));
        println!("applies tried: {:?}", target.tried.lock().unwrap());
        drop(s);
        task.abort();
    })
    .await
    .expect("test exceeded its time bound");
}
