//! Endpoint deltas through `Target::apply_endpoints`: taken when the target serves the base,
//! the held snapshot kept patched for later fallbacks, refusals acknowledged, and the full path
//! used when the target declines or does not serve the base. Real server and client on loopback.
#![allow(clippy::unwrap_used)]

mod mesh;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_distribution::{
    Client, ClientConfig, DistributionServer, EndpointChange, Hello, ProgrammedState, PublishKind,
    Refused, ServerConfig, Target,
};
use meridian_model::Snapshot;
use serde_json::json;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Accept,
    Refuse,
    Decline,
}

struct Fast {
    mode: Mutex<Mode>,
    /// `apply g` or `fast g base backends…`, in order.
    log: Mutex<Vec<String>>,
    /// Snapshots given to `apply`.
    applied: Mutex<Vec<Snapshot>>,
}

impl Target for Fast {
    async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
        let g = snapshot.generation;
        self.log.lock().unwrap().push(format!("apply {g}"));
        self.applied.lock().unwrap().push(snapshot);
        Ok(g)
    }

    async fn apply_endpoints(
        &self,
        generation: u64,
        base: u64,
        changes: &[EndpointChange],
    ) -> Option<Result<u64, Refused>> {
        let mode = *self.mode.lock().unwrap();
        if mode == Mode::Decline {
            return None;
        }
        let names: Vec<&str> = changes.iter().map(|c| c.backend.as_str()).collect();
        self.log
            .lock()
            .unwrap()
            .push(format!("fast {generation} {base} {}", names.join(",")));
        Some(match mode {
            Mode::Refuse => Err(Refused {
                reason: "no thanks".into(),
                retry_after: None,
            }),
            _ => Ok(generation),
        })
    }
}

/// One route with two backends, `ns/a:80` and `ns/b:80`, whose endpoints use the given ports.
fn snap(a: u16, b: u16) -> Snapshot {
    let backend = |name: &str, port: u16| {
        json!({"name": name, "target": {"type": "endpoints", "endpoints": [
            {"address": "10.0.0.1", "port": port}]}})
    };
    serde_json::from_value(json!({
        "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
        "generation": 0,
        "gateways": [{"namespace": "ns", "name": "gw", "listeners": [{
            "name": "http", "address": "127.0.0.1", "port": 18090, "protocol": "HTTP",
            "routes": [{"namespace": "ns", "name": "r", "rules": [{"backends": [
                backend("ns/a:80", a), backend("ns/b:80", b)]}]}]}]}],
    }))
    .unwrap()
}

async fn settled(srv: &DistributionServer, generation: u64) -> ProgrammedState {
    let mut changes = srv.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match srv.programmed("east", generation) {
            ProgrammedState::Pending { .. } | ProgrammedState::NoProxy => {}
            other => return other,
        }
        tokio::time::timeout_at(deadline, changes.changed())
            .await
            .expect("not settled within 10 s")
            .unwrap();
    }
}

#[tokio::test]
async fn deltas_take_the_fast_path_and_the_held_snapshot_stays_patched() {
    let cfg: ServerConfig = mesh::server_config("127.0.0.1:0".parse().unwrap());
    let srv = DistributionServer::start(cfg).await.unwrap();
    let target = Arc::new(Fast {
        mode: Mutex::new(Mode::Accept),
        log: Mutex::default(),
        applied: Mutex::default(),
    });
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
    let client = Client::new(ClientConfig::new(
        format!("https://{}", srv.local_addr()),
        hello,
        identity,
        None,
    ))
    .unwrap();
    let t = target.clone();
    let task = tokio::spawn(async move { client.run(t.as_ref()).await });
    let log = || target.log.lock().unwrap().clone();

    let g1 = srv.publish("east", snap(1, 1)).unwrap().generation;
    assert_eq!(settled(&srv, g1).await, ProgrammedState::Applied(g1));
    assert_eq!(log(), [format!("apply {g1}")]);

    // Served base: the delta itself, no snapshot.
    let p2 = srv.publish("east", snap(2, 1)).unwrap();
    assert_eq!(p2.kind, PublishKind::Endpoints);
    assert_eq!(
        settled(&srv, p2.generation).await,
        ProgrammedState::Applied(p2.generation)
    );
    assert_eq!(log()[1..], [format!("fast {} {g1} ns/a:80", p2.generation)]);

    // Declined: the patched snapshot goes through `apply`, and it holds the earlier fast-path
    // change too (the held copy was patched after that ack).
    *target.mode.lock().unwrap() = Mode::Decline;
    let p3 = srv.publish("east", snap(2, 3)).unwrap();
    assert_eq!(p3.kind, PublishKind::Endpoints);
    assert_eq!(
        settled(&srv, p3.generation).await,
        ProgrammedState::Applied(p3.generation)
    );
    assert_eq!(log()[2..], [format!("apply {}", p3.generation)]);
    let last = target.applied.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last, *srv.latest("east").unwrap());
    let mut want = snap(2, 3);
    want.generation = p3.generation;
    assert_eq!(last, want);

    // A fast-path refusal is acknowledged as one.
    *target.mode.lock().unwrap() = Mode::Refuse;
    let p4 = srv.publish("east", snap(4, 3)).unwrap();
    match settled(&srv, p4.generation).await {
        ProgrammedState::Refused(refusal) => assert_eq!(refusal.reason, "no thanks"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        log()[3..],
        [format!("fast {} {} ns/a:80", p4.generation, p3.generation)]
    );

    // The target does not serve the refused generation: the next delta is applied in full,
    // from the held snapshot that has every change.
    *target.mode.lock().unwrap() = Mode::Accept;
    let p5 = srv.publish("east", snap(4, 5)).unwrap();
    assert_eq!(p5.kind, PublishKind::Endpoints);
    assert_eq!(
        settled(&srv, p5.generation).await,
        ProgrammedState::Applied(p5.generation)
    );
    assert_eq!(log()[4..], [format!("apply {}", p5.generation)]);
    let mut want = snap(4, 5);
    want.generation = p5.generation;
    assert_eq!(target.applied.lock().unwrap().last().unwrap(), &want);

    task.abort();
    srv.shutdown().await;
}
