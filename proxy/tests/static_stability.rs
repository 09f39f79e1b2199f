//! Static stability across proxy restarts (`--state-dir`): a proxy that restarts while the
//! controller is unreachable serves the last snapshot it applied from the controller, kept on
//! disk, and says so on `/ready` and `/metrics` until the controller is back; a kept file that
//! is corrupt or of another cluster is refused and moved aside. Real proxies, a real
//! distribution server and echo backends on loopback; every wait is bounded.
#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use meridian_distribution::pki::{Ca, CertStore, ProxyIdentity, TrustDomain};
use meridian_distribution::{
    Client, ClientConfig, DistributionServer, Hello, ProgrammedState, ServerConfig,
};
use meridian_model::Snapshot;
use meridian_proxy::state_dir::{REJECTED_SUFFIX, STATE_FILE};
use meridian_proxy::{ProxyConfig, ProxyHandle, StateDir};
use meridian_test_support::wait::eventually_async;
use serde_json::Value;
use tokio::task::JoinHandle;

/// The mesh CA of every controller these tests start (a restarted controller keeps its CA).
fn ca() -> Arc<Ca> {
    static CA: std::sync::OnceLock<Arc<Ca>> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        Arc::new(Ca::generate(&TrustDomain::default(), Duration::from_secs(3600)).unwrap())
    })
    .clone()
}
const CLUSTER: &str = "east";
/// Bound of every wait for a condition.
const WAIT: Duration = Duration::from_secs(20);

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test exceeded its time bound");
}

/// A fresh directory under the system temp dir (removed by [`TempDir`]'s drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "meridian-static-{name}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn server_on(addr: SocketAddr) -> DistributionServer {
    let mut cfg = ServerConfig::new(addr, ca());
    cfg.ping_interval = Duration::from_millis(200);
    DistributionServer::start(cfg).await.unwrap()
}

/// A loopback address nothing listens on (yet): the controller is down.
fn unreachable_controller() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A proxy of cluster `east` following the controller at `controller` with `state` as its
/// `--state-dir`, as `meridian proxy --controller URL --cluster east --state-dir DIR` runs it.
struct Running {
    proxy: Arc<ProxyHandle>,
    task: JoinHandle<()>,
}

impl Running {
    async fn start(controller: SocketAddr, dir: &Path) -> Running {
        let state = StateDir::open(dir, CLUSTER).unwrap();
        let proxy = Arc::new(
            ProxyHandle::start(ProxyConfig {
                admin: Some("127.0.0.1:0".parse().unwrap()),
                ..Default::default()
            })
            .await
            .unwrap(),
        );
        let who = ProxyIdentity::new(CLUSTER, "r1", "z1", "east-proxy").unwrap();
        let identity = Arc::new(CertStore::issued(&ca(), &who, Duration::from_secs(3600)).unwrap());
        let mut cfg = ClientConfig::new(
            format!("https://{controller}"),
            Hello {
                proxy_id: "east-proxy".to_string(),
                cluster: CLUSTER.to_string(),
                region: "r1".to_string(),
                zone: "z1".to_string(),
                gateways: None,
                address: None,
                east_west: None,
            },
            identity,
            None,
        );
        // Quick reconnects keep the test short once the controller is back.
        cfg.backoff_initial = Duration::from_millis(20);
        cfg.backoff_max = Duration::from_millis(200);
        let client = Client::new(cfg).unwrap();
        let p = proxy.clone();
        let task = tokio::spawn(async move {
            let _ = meridian_proxy::follow_controller_with_state(&p, &client, &state).await;
        });
        Running { proxy, task }
    }

    /// Stops following and shuts the proxy down (its listener sockets are closed).
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        let proxy = Arc::try_unwrap(self.proxy)
            .ok()
            .expect("the follow task held the last other reference");
        proxy.shutdown().await;
    }

    async fn ready(&self) -> (u16, Value) {
        let admin = self.proxy.admin_addr().unwrap();
        let resp = client()
            .get(format!("http://{admin}/ready"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (
            status,
            serde_json::from_str(&resp.text().await.unwrap()).unwrap(),
        )
    }

    fn metric(&self, name_and_labels: &str) -> Option<f64> {
        self.proxy
            .metrics_text()
            .lines()
            .find(|l| !l.starts_with('#') && l.split(' ').next() == Some(name_and_labels))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Waits (bounded) until `/ready` satisfies `want`; returns it.
    async fn wait_ready(&self, what: &str, want: impl Fn(u16, &Value) -> bool) -> Value {
        eventually_async(what, WAIT, || async {
            let (status, ready) = self.ready().await;
            if want(status, &ready) {
                Ok(ready)
            } else {
                Err(format!("/ready = {status} {ready}"))
            }
        })
        .await
    }
}

/// One HTTP listener on 127.0.0.1:`port`, `/` to backend `default/app:80` on `echo`.
fn app_snapshot(generation: u64, port: u16, echo: &Echo) -> Snapshot {
    http_snapshot(
        generation,
        port,
        vec![prefix_rule(
            "/",
            vec![backend("default/app:80", 1, vec![echo.endpoint()])],
        )],
    )
}

/// Which echo answers `GET /` on the proxy listener at `port` (`None`: nothing listens or the
/// request failed).
async fn answered_on(port: u16) -> Option<String> {
    let resp = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .ok()?;
    if resp.status() != 200 {
        return None;
    }
    Some(answered_by(&resp.text().await.ok()?))
}

async fn wait_answered_by(port: u16, name: &str) {
    eventually_async(&format!("{name} to answer on :{port}"), WAIT, || async {
        match answered_on(port).await {
            Some(got) if got == name => Ok(()),
            got => Err(format!("last answer {got:?}")),
        }
    })
    .await
}

fn kept_generation(dir: &Path) -> Option<u64> {
    StateDir::open(dir, CLUSTER)
        .unwrap()
        .load()
        .ok()
        .flatten()
        .map(|r| r.header.generation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_the_controller_is_down_serves_the_kept_snapshot_until_it_is_back() {
    bounded(async {
        let (first, second, third) = (
            Echo::start("first").await,
            Echo::start("second").await,
            Echo::start("third").await,
        );
        let port = free_port();
        let dir = TempDir::new("restart");

        // Run 1: the controller sends generation 7, then an endpoint-only change (generation 8,
        // streamed as a delta): the file must hold the full patched snapshot.
        let srv = server_on("127.0.0.1:0".parse().unwrap()).await;
        srv.publish(CLUSTER, app_snapshot(7, port, &first)).unwrap();
        let run = Running::start(srv.local_addr(), dir.path()).await;
        wait_answered_by(port, "first").await;
        run.wait_ready("generation 7 kept", |_, r| {
            r["stateFile"]["generation"] == 7
        })
        .await;
        let published = srv
            .publish(CLUSTER, app_snapshot(8, port, &second))
            .unwrap();
        assert_eq!(published.generation, 8);
        wait_answered_by(port, "second").await;
        let ready = run
            .wait_ready("generation 8 kept", |_, r| {
                r["stateFile"]["generation"] == 8
            })
            .await;
        assert_eq!(ready["source"], "controller", "{ready}");
        assert_eq!(kept_generation(dir.path()), Some(8));
        assert!(run.metric("meridian_proxy_state_writes_total{result=\"ok\"}") >= Some(2.0));
        run.stop().await;
        drop(srv);

        // Run 2: the controller is unreachable. The kept snapshot is served at once.
        let controller = unreachable_controller();
        let started = Instant::now();
        let run = Running::start(controller, dir.path()).await;
        let ready = run
            .wait_ready("the restored snapshot", |s, _| s == 200)
            .await;
        wait_answered_by(port, "second").await;
        println!(
            "restored generation 8 and served a request {:?} after start",
            started.elapsed()
        );
        assert_eq!(ready["source"], "disk", "{ready}");
        assert_eq!(ready["generation"], 8, "{ready}");
        assert_eq!(ready["restored"]["generation"], 8, "{ready}");
        let written_at = ready["restored"]["writtenAt"].as_str().unwrap();
        assert!(written_at.parse::<jiff::Timestamp>().is_ok(), "{ready}");
        assert_eq!(ready["controller"]["connected"], false, "{ready}");
        assert_eq!(
            run.metric("meridian_proxy_snapshot_source{source=\"disk\"}"),
            Some(1.0)
        );
        assert_eq!(
            run.metric("meridian_proxy_snapshot_source{source=\"controller\"}"),
            Some(0.0)
        );
        assert_eq!(
            run.metric("meridian_proxy_snapshot_restore_total{result=\"ok\"}"),
            Some(1.0)
        );
        // A restored snapshot is not written again.
        assert_eq!(
            run.metric("meridian_proxy_state_writes_total{result=\"ok\"}"),
            None
        );

        // The controller comes back, restarted: it numbers from 1 again.
        let srv = server_on(controller).await;
        let published = srv.publish(CLUSTER, app_snapshot(0, port, &third)).unwrap();
        assert_eq!(published.generation, 1);
        wait_answered_by(port, "third").await;
        let ready = run
            .wait_ready("the controller's snapshot", |_, r| {
                r["source"] == "controller" && r["stateFile"]["generation"] == 1
            })
            .await;
        assert_eq!(ready["generation"], 1, "{ready}");
        assert_eq!(ready["restored"], Value::Null, "{ready}");
        assert_eq!(ready["controller"]["connected"], true, "{ready}");
        assert_eq!(
            run.metric("meridian_proxy_snapshot_source{source=\"disk\"}"),
            Some(0.0)
        );
        assert_eq!(
            run.metric("meridian_proxy_snapshot_source{source=\"controller\"}"),
            Some(1.0)
        );
        assert_eq!(kept_generation(dir.path()), Some(1));
        // The proxy acknowledged what this controller sent, never the restored generation 8
        // (acks keep the highest generation: an ack of 8 would show here).
        assert_eq!(srv.programmed(CLUSTER, 1), ProgrammedState::Applied(1));
        let state = srv.state();
        assert_eq!(state.len(), 1, "{state:?}");
        assert_eq!(state[0].acked_generation, Some(1), "{state:?}");
        run.stop().await;
    })
    .await;
}

/// Route changes published faster than the proxy applies them reach the client in batches (it
/// applies what arrived meanwhile once): every applied batch goes through the same persisting
/// path, so the file ends with the last change and `/ready` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_applied_in_batches_are_kept_on_disk() {
    bounded(async {
        let echo = Echo::start("app").await;
        let port = free_port();
        let dir = TempDir::new("batches");
        let srv = server_on("127.0.0.1:0".parse().unwrap()).await;
        srv.publish(CLUSTER, app_snapshot(1, port, &echo)).unwrap();
        let run = Running::start(srv.local_addr(), dir.path()).await;
        run.wait_ready("generation 1 kept", |_, r| {
            r["stateFile"]["generation"] == 1
        })
        .await;
        let mut last = 1;
        for n in 0..40 {
            let rules = vec![
                prefix_rule(
                    &format!("/v{n}"),
                    vec![backend("default/app:80", 1, vec![echo.endpoint()])],
                ),
                prefix_rule(
                    "/",
                    vec![backend("default/app:80", 1, vec![echo.endpoint()])],
                ),
            ];
            last = srv
                .publish(CLUSTER, http_snapshot(last + 1, port, rules))
                .unwrap()
                .generation;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ready = run
            .wait_ready("the last change kept", |_, r| {
                r["generation"] == last && r["stateFile"]["generation"] == last
            })
            .await;
        assert!(ready["stateFile"]["writtenAt"].is_string(), "{ready}");
        assert_eq!(kept_generation(dir.path()), Some(last));
        assert_eq!(
            srv.programmed(CLUSTER, last),
            ProgrammedState::Applied(last)
        );
        assert_eq!(answered_on(port).await.as_deref(), Some("app"));
        run.stop().await;
    })
    .await;
}

/// Runs a proxy with the controller down over `dir` and checks that the kept file was refused
/// with `result`: nothing served, `/ready` 503, the file moved aside unchanged.
async fn refused_on_start(dir: &Path, port: u16, result: &str, reason: &str) {
    let kept = std::fs::read(dir.join(STATE_FILE)).unwrap();
    let run = Running::start(unreachable_controller(), dir).await;
    let ready = run
        .wait_ready("the restore to finish", |_, r| {
            r["stateFile"]["lastError"].is_string()
        })
        .await;
    let (status, _) = run.ready().await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["source"], Value::Null, "{ready}");
    let error = ready["stateFile"]["lastError"].as_str().unwrap();
    assert!(error.contains(reason), "{error}");
    assert_eq!(
        run.metric(&format!(
            "meridian_proxy_snapshot_restore_total{{result=\"{result}\"}}"
        )),
        Some(1.0)
    );
    assert_eq!(
        run.metric("meridian_proxy_snapshot_restore_total{result=\"ok\"}"),
        None
    );
    assert_eq!(
        answered_on(port).await,
        None,
        "a refused snapshot is not served"
    );
    assert!(!dir.join(STATE_FILE).exists());
    let aside = std::fs::read(dir.join(format!("{STATE_FILE}{REJECTED_SUFFIX}"))).unwrap();
    assert_eq!(aside, kept, "the refused file is kept aside as it was");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_snapshot_with_a_flipped_byte_is_refused() {
    bounded(async {
        let echo = Echo::start("kept").await;
        let port = free_port();
        let dir = TempDir::new("corrupt");
        let state = StateDir::open(dir.path(), CLUSTER).unwrap();
        state.write(&app_snapshot(4, port, &echo)).unwrap();
        // One byte of the snapshot body, far from the header: `127.0.0.1` becomes `127.0.0.2`
        // in the listener address, still valid JSON and a valid snapshot.
        let path = state.path();
        let mut bytes = std::fs::read(&path).unwrap();
        let body = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
        let at = body
            + bytes[body..]
                .windows(9)
                .position(|w| w == b"127.0.0.1")
                .unwrap()
            + 8;
        bytes[at] = b'2';
        std::fs::write(&path, &bytes).unwrap();
        refused_on_start(dir.path(), port, "corrupt", "checksum mismatch").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_snapshot_of_another_cluster_is_refused() {
    bounded(async {
        let echo = Echo::start("west").await;
        let port = free_port();
        let dir = TempDir::new("cluster");
        // Intact, but written by a proxy of cluster west.
        StateDir::open(dir.path(), "west")
            .unwrap()
            .write(&app_snapshot(4, port, &echo))
            .unwrap();
        refused_on_start(dir.path(), port, "wrong_cluster", "cluster \"west\"").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_write_and_rename_leaves_the_old_snapshot_served() {
    bounded(async {
        let (old, new) = (Echo::start("old").await, Echo::start("new").await);
        let port = free_port();
        let dir = TempDir::new("atomic");
        StateDir::open(dir.path(), CLUSTER)
            .unwrap()
            .write(&app_snapshot(5, port, &old))
            .unwrap();
        // The next write got as far as part of its temp file when the proxy died: the file it
        // would have become, cut in the middle.
        let scratch = TempDir::new("atomic-scratch");
        let next = StateDir::open(scratch.path(), CLUSTER).unwrap();
        next.write(&app_snapshot(6, port, &new)).unwrap();
        let whole = std::fs::read(next.path()).unwrap();
        let temp = dir.path().join(".snapshot.json.tmp-999999");
        std::fs::write(&temp, &whole[..whole.len() / 2]).unwrap();

        let run = Running::start(unreachable_controller(), dir.path()).await;
        let ready = run
            .wait_ready("the restored snapshot", |s, _| s == 200)
            .await;
        assert_eq!(ready["source"], "disk", "{ready}");
        assert_eq!(ready["generation"], 5, "{ready}");
        wait_answered_by(port, "old").await;
        assert!(
            !temp.exists(),
            "the unfinished temp file is deleted on start"
        );
        assert_eq!(kept_generation(dir.path()), Some(5));
        run.stop().await;
    })
    .await;
}
