//! Chaos under load: real `meridian` processes are signalled, killed or fed a bad snapshot while
//! an open-loop client sends requests, and every request is accounted for.
//!
//! ```text
//! Load (open loop, RATE req/s, count- and time-bounded; one connection per request)
//!   └─ connect primary ─ refused? ─ counted "refused", retried once on the fallback (if any)
//!      └─ GET ─ 200 with the whole body = ok; anything else (reset, short body, 5xx, timeout)
//!         = failed
//!
//! proxy_sigterm      two `meridian proxy --snapshot` (A, B), slow backend (200 ms); SIGTERM to A:
//!                    A's socket closes at once (new connects refused → retried on B), every
//!                    request A had accepted gets its full answer, A exits 0 within its drain
//! snapshot_refused   one proxy; its file is replaced by undecodable JSON, then by a snapshot of
//!                    an unknown schema: both refused (reported on /ready), the last good one keeps
//!                    serving; a good one afterwards is applied
//! controller_killed_and_member_down (one setup, two scenarios; Mesh):
//!   sandbox east, sandbox west, meridian controller, `meridian proxy` east and west (processes,
//!   bootstrapped with a ServiceAccount token of their own cluster and its `meridian-ca` bundle)
//!   controller-kill  SIGKILL to the controller, restart with the same CA files: proxies serve
//!                    on, reconnect; `kubectl get gateway -w` never shows Programmed ≠ True
//!   member-down      SIGKILL to west's API server: both Gateways serve on; a route applied in
//!                    east is Accepted and reaches east's proxy
//! ```
//!
//! Each scenario prints `chaos <scenario>: sent N, ok N, failed N, …` (docs/chaos.md has the
//! figures of a run) and asserts no failed request. Everything runs on loopback; scenarios run
//! one at a time (the machine's cores are shared) so their latencies do not mix.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use meridian_test_support::process::{ScratchDir, Stop, wait_or_kill};
use meridian_test_support::{Echo, eventually_async, free_port};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// Requests per second of every load loop.
const RATE: u64 = 200;
/// Bound of one request (connect to last byte).
const REQUEST_BOUND: Duration = Duration::from_secs(10);
/// Bound of every wait for a condition.
const WAIT: Duration = Duration::from_secs(20);
/// The proxy's drain bound (`DRAIN_TIMEOUT` in proxy/src/handle.rs).
const PROXY_DRAIN: Duration = Duration::from_secs(5);

/// One scenario at a time: they share two cores with the rest of the machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ── Load ────────────────────────────────────────────────────────────────────────────────────

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// 200 and the whole body (Content-Length bytes of JSON).
    Ok,
    /// The primary refused the connect and no fallback was given (never sent, nothing lost).
    Refused,
    /// Anything else: what went wrong.
    Failed(String),
}

/// One request of a load loop.
#[derive(Debug, Clone)]
struct Record {
    /// Index of the target that answered (0 = primary, 1 = fallback).
    target: usize,
    /// Whether the primary refused the connect first.
    refused_first: bool,
    /// When the connect to the primary was tried.
    started: Instant,
    /// When the connection that carried it was established (`None`: never).
    connected: Option<Instant>,
    /// When it ended.
    done: Instant,
    outcome: Outcome,
}

/// An open-loop client: a request every 1/`rate` s to `targets[0]` (retried once on `targets[1]`
/// when the connect is refused), at most `max` requests or until stopped.
struct Load {
    records: Arc<Mutex<Vec<Record>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(targets: Vec<SocketAddr>, path: &str, rate: u64, max: u64) -> Load {
        let records = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let recs = records.clone();
        let path = path.to_string();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            let mut requests = tokio::task::JoinSet::new();
            for _ in 0..max {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let (targets, path, recs) = (targets.clone(), path.clone(), recs.clone());
                requests.spawn(async move {
                    let record = one(&targets, &path).await;
                    recs.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(record);
                });
            }
            // Every request is itself bounded (REQUEST_BOUND).
            while requests.join_next().await.is_some() {}
        });
        Load {
            records,
            stop,
            task,
        }
    }

    /// Requests finished so far.
    fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops sending, waits for the requests in flight; every record.
    async fn finish(self) -> Vec<Record> {
        let _ = self.stop.send(true);
        tokio::time::timeout(REQUEST_BOUND + Duration::from_secs(5), self.task)
            .await
            .expect("the load loop ends once its requests are answered")
            .unwrap();
        let mut records =
            std::mem::take(&mut *self.records.lock().unwrap_or_else(PoisonError::into_inner));
        records.sort_by_key(|r| r.started);
        records
    }
}

/// The figures of a load run.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    ok: usize,
    failed: usize,
    refused: usize,
    retried: usize,
}

fn tally(records: &[Record]) -> Tally {
    let mut t = Tally {
        sent: records.len(),
        ..Tally::default()
    };
    for r in records {
        match &r.outcome {
            Outcome::Ok => t.ok += 1,
            Outcome::Refused => t.refused += 1,
            Outcome::Failed(_) => t.failed += 1,
        }
        if r.refused_first && r.target == 1 {
            t.retried += 1;
        }
    }
    t
}

/// The first few failures, for an assertion message.
fn failures(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Failed(why) => Some(format!("target {}: {why}", r.target)),
            _ => None,
        })
        .take(5)
        .collect()
}

/// One request: connect (retry a refused connect once on the fallback), GET, whole answer.
async fn one(targets: &[SocketAddr], path: &str) -> Record {
    let started = Instant::now();
    let mut refused_first = false;
    let mut target = 0;
    let stream = loop {
        match TcpStream::connect(targets[target]).await {
            Ok(s) => break Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused_first |= target == 0;
                if target + 1 < targets.len() {
                    target += 1;
                } else {
                    break Err(Outcome::Refused);
                }
            }
            Err(e) => break Err(Outcome::Failed(format!("connect: {e}"))),
        }
    };
    let (connected, outcome) = match stream {
        Err(outcome) => (None, outcome),
        Ok(stream) => {
            let connected = Instant::now();
            let outcome = match tokio::time::timeout(REQUEST_BOUND, exchange(stream, path)).await {
                Ok(Ok(())) => Outcome::Ok,
                Ok(Err(why)) => Outcome::Failed(why),
                Err(_) => Outcome::Failed(format!("no answer within {REQUEST_BOUND:?}")),
            };
            (Some(connected), outcome)
        }
    };
    Record {
        target,
        refused_first,
        started,
        connected,
        done: Instant::now(),
        outcome,
    }
}

/// Sends a GET and checks the answer: 200 with as many body bytes as Content-Length says, and
/// the body is the echo backend's JSON.
async fn exchange(mut stream: TcpStream, path: &str) -> Result<(), String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("read after {} bytes: {e}", answer.len()))?;
    let text = String::from_utf8_lossy(&answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(format!("no complete head in {} bytes", answer.len()));
    };
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(status.to_string());
    }
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .ok_or("no Content-Length")?;
    if body.len() != length {
        return Err(format!("body of {} bytes, {length} announced", body.len()));
    }
    serde_json::from_str::<Value>(body).map_err(|e| format!("body is not the echo's JSON: {e}"))?;
    Ok(())
}

// ── Proxies ─────────────────────────────────────────────────────────────────────────────────

/// A snapshot of one Gateway listening on 127.0.0.1:`port`, every path to `echo`.
fn snapshot(generation: u64, port: u16, echo: &Echo) -> Value {
    json!({
        "schema": "meridian.dev/snapshot/v1",
        "generation": generation,
        "gateways": [{
            "namespace": "chaos", "name": "web",
            "listeners": [{
                "name": "http", "address": "127.0.0.1", "port": port, "protocol": "HTTP",
                "routes": [{
                    "namespace": "chaos", "name": "all", "createdAt": 1764000000,
                    "rules": [{
                        "matches": [{"path": {"type": "pathPrefix", "value": "/"}}],
                        "backends": [{"name": "chaos/echo:80", "target": {"type": "endpoints",
                            "endpoints": [echo.endpoint()]}}]
                    }]
                }]
            }]
        }]
    })
}

/// A running `meridian proxy --snapshot FILE`.
struct FileProxy {
    child: Stop,
    admin: u16,
    /// The Gateway listener's address.
    addr: SocketAddr,
    file: std::path::PathBuf,
}

impl FileProxy {
    /// Starts a proxy serving `snapshot(1, port, echo)` from a file in `dir`, and waits until it
    /// answers on its Gateway listener.
    async fn start(dir: &ScratchDir, name: &str, echo: &Echo) -> FileProxy {
        let port = free_port();
        let admin = free_port();
        let file = dir.write(format!("{name}.json"), &snapshot(1, port, echo).to_string());
        let child = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .arg("proxy")
            .arg("--snapshot")
            .arg(&file)
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let proxy = FileProxy {
            child: Stop(child),
            admin,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            file,
        };
        let addr = proxy.addr;
        eventually_async(&format!("proxy {name} answers"), WAIT, || async move {
            let r = one(&[addr], "/ready").await;
            match r.outcome {
                Outcome::Ok => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        proxy
    }

    /// The proxy's `/ready` document.
    async fn ready(&self) -> Result<Value, String> {
        get_json(self.admin, "/ready").await
    }

    fn child(&mut self) -> &mut Child {
        &mut self.child.0
    }
}

/// GET `path` on 127.0.0.1:`port`; the JSON body whatever the status.
async fn get_json(port: u16, path: &str) -> Result<Value, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).map_err(|e| format!("{e}: {out}"))
}

/// Sends `signal` (a `kill -<signal>` name) to `child`.
fn kill(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {}", child.id());
}

/// Replaces `path` atomically with `text` (the watcher never reads half a file).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ── Scenarios ───────────────────────────────────────────────────────────────────────────────

/// SIGTERM to a proxy under load: its listener closes first (new connects are refused and go to
/// the second proxy), every request it had accepted gets its whole answer, and it exits 0 as
/// soon as they are done, within its drain bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_sigterm_drains_gracefully_under_load() {
    let _serial = SERIAL.lock().await;
    let dir = ScratchDir::new("chaos-sigterm");
    let echo = Echo::start("slow").await;
    let mut a = FileProxy::start(&dir, "a", &echo).await;
    let b = FileProxy::start(&dir, "b", &echo).await;

    // 200 ms answers: at 200 req/s about 40 requests are in flight on A at any moment.
    let load = Load::start(vec![a.addr, b.addr], "/chaos?delay=200", RATE, 4 * RATE);
    let sent_before = |load: &Load| load.records().len();
    eventually_async("one second of load answered", WAIT, || {
        let n = sent_before(&load);
        async move { n >= RATE as usize }
    })
    .await;
    let signalled = Instant::now();
    kill(a.child(), "TERM");
    let exit = tokio::task::block_in_place(|| wait_or_kill(a.child(), PROXY_DRAIN * 2));
    let exited = Instant::now();
    // Keep sending after A is gone: everything goes to B.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = load.finish().await;

    let t = tally(&records);
    // Accepted by A before the signal and not answered yet when it came.
    let in_flight: Vec<&Record> = records
        .iter()
        .filter(|r| {
            r.target == 0 && r.connected.is_some_and(|c| c < signalled) && r.done > signalled
        })
        .collect();
    let in_flight_ok = in_flight
        .iter()
        .filter(|r| r.outcome == Outcome::Ok)
        .count();
    let first_refused = records
        .iter()
        .filter(|r| r.refused_first && r.started >= signalled)
        .map(|r| r.started)
        .min();
    let last_a_answer = in_flight.iter().map(|r| r.done).max();
    println!(
        "chaos proxy-sigterm: sent {}, ok {}, failed {}, refused by A then sent to B {}, \
         in flight on A at SIGTERM {} (completed {}), A exited {} ms after SIGTERM ({}) \
         (last in-flight answer {} ms), first refused connect {} ms after SIGTERM",
        t.sent,
        t.ok,
        t.failed,
        t.retried,
        in_flight.len(),
        in_flight_ok,
        (exited - signalled).as_millis(),
        exit.status
            .map_or("no status".to_string(), |s| s.to_string()),
        last_a_answer.map_or(0, |l| (l - signalled).as_millis()),
        first_refused.map_or(-1, |f| (f - signalled).as_millis() as i64),
    );
    assert_eq!(t.failed, 0, "failed requests: {:?}", failures(&records));
    assert!(exit.in_time, "the proxy exits within its drain bound");
    assert_eq!(
        exit.status.and_then(|s| s.code()),
        Some(0),
        "a SIGTERM is a clean stop"
    );
    assert_eq!(t.ok, t.sent, "every request answered by A or B");
    assert!(
        in_flight.len() >= 10,
        "requests were in flight on A at SIGTERM: {}",
        in_flight.len()
    );
    assert_eq!(
        in_flight_ok,
        in_flight.len(),
        "every accepted request finished"
    );
    assert!(t.retried > 0, "A stopped accepting: connects went to B");
    let (first_refused, last_a_answer) = (first_refused.unwrap(), last_a_answer.unwrap());
    assert!(
        first_refused < last_a_answer,
        "the listener closed first: a connect was refused ({:?} after SIGTERM) while A was \
         still answering accepted requests (until {:?})",
        first_refused - signalled,
        last_a_answer - signalled
    );
    drop(b);
}

/// A snapshot the proxy refuses under load (undecodable, then of an unknown schema): the last
/// good one keeps serving without a failed request, the refusal is on `/ready`, and a good
/// snapshot afterwards is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_snapshot_keeps_the_last_good_one_serving() {
    let _serial = SERIAL.lock().await;
    let dir = ScratchDir::new("chaos-refused");
    let echo = Echo::start("backend").await;
    let proxy = FileProxy::start(&dir, "p", &echo).await;
    let port = proxy.addr.port();

    let load = Load::start(vec![proxy.addr], "/chaos?delay=20", RATE, 6 * RATE);
    let mut reasons = Vec::new();
    for (what, text) in [
        (
            "undecodable",
            "{\"schema\": \"meridian.dev/snapshot/v1\", \"gener".to_string(),
        ),
        (
            "unknown schema",
            snapshot(2, port, &echo)
                .to_string()
                .replace("snapshot/v1", "snapshot/v999"),
        ),
    ] {
        replace(&proxy.file, &text);
        let reason = eventually_async(&format!("the {what} snapshot refused"), WAIT, || async {
            let ready = proxy.ready().await?;
            match ready["lastError"].as_str() {
                Some(e) if !reasons.contains(&e.to_string()) => Ok(e.to_string()),
                _ => Err(format!("{ready}")),
            }
        })
        .await;
        let ready = proxy.ready().await.unwrap();
        assert_eq!(
            ready["generation"], 1,
            "the last good snapshot serves: {ready}"
        );
        reasons.push(reason);
        // Some load on the refused state.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    replace(&proxy.file, &snapshot(3, port, &echo).to_string());
    eventually_async("the next good snapshot applied", WAIT, || async {
        let ready = proxy.ready().await?;
        if ready["generation"] == 3 {
            Ok(())
        } else {
            Err(format!("{ready}"))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = load.finish().await;
    let t = tally(&records);
    println!(
        "chaos snapshot-refused: sent {}, ok {}, failed {}, refusals {} ({})",
        t.sent,
        t.ok,
        t.failed,
        reasons.len(),
        reasons.join(" | ")
    );
    assert_eq!(t.failed, 0, "failed requests: {:?}", failures(&records));
    assert_eq!(t.ok, t.sent);
    assert!(reasons[0].contains("not valid JSON"), "{}", reasons[0]);
    assert!(reasons[1].contains("v999"), "{}", reasons[1]);
}

// ── A controller process and member clusters ────────────────────────────────────────────────

/// Two member clusters (`east`, `west`), each its own `meridian sandbox` process (so one can be
/// killed), a `meridian controller` process with a mesh CA from files (a restarted controller
/// keeps it, so the proxies' certificates stay good), and one `meridian proxy` process per
/// cluster following it, as an install runs them: `--ca-file` is the `meridian-ca` ConfigMap the
/// controller publishes in that cluster, `--bootstrap-token-file` a TokenRequest token of that
/// cluster's `meridian-system/meridian-proxy` for audience `meridian`.
struct Mesh {
    kubeconfig: std::path::PathBuf,
    sandboxes: Vec<(&'static str, Stop)>,
    controller: Option<Stop>,
    controller_args: Vec<String>,
    proxies: Vec<MeshProxy>,
    /// Kubeconfigs, CA files, tokens, sandbox state: removed last (fields drop in order).
    dir: ScratchDir,
}

/// A `meridian proxy` of one cluster following the controller.
struct MeshProxy {
    cluster: &'static str,
    /// Its Gateway's listener.
    addr: SocketAddr,
    admin: u16,
    _child: Stop,
}

const CLUSTERS: [&str; 2] = ["east", "west"];

/// Objects of one cluster: the Gateway `chaos/web` on `port`, a route of every path to the
/// Service `echo`, whose EndpointSlice points at `echo`.
fn cluster_objects(port: u16, echo: &Echo) -> String {
    let objects = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "chaos"}}),
        // Where the controller publishes the trust bundle, and the proxies' ServiceAccount.
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "meridian-system"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "meridian-proxy", "namespace": "meridian-system"}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "meridian"},
            "spec": {"controllerName": "meridian.dev/gateway-controller"}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "web", "namespace": "chaos"},
            "spec": {"gatewayClassName": "meridian",
                     "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}]}}),
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "echo", "namespace": "chaos"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": echo.addr.port()}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "echo-1", "namespace": "chaos",
                         "labels": {"kubernetes.io/service-name": "echo"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [echo.addr.ip().to_string()],
                           "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": echo.addr.port(), "protocol": "TCP"}]}),
        route("all", "/"),
    ];
    objects
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The HTTPRoute `chaos/NAME` of `prefix` to the Service `echo` on Gateway `web`.
fn route(name: &str, prefix: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "chaos"},
        "spec": {"parentRefs": [{"name": "web"}],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                            "backendRefs": [{"name": "echo", "port": 80}]}]}})
}

/// Runs kubectl against `context` of `kubeconfig` with `stdin`; stdout, or what went wrong.
async fn kubectl(
    kubeconfig: &Path,
    context: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, String> {
    let mut child = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        // A private discovery cache: ports differ from run to run.
        .arg("--cache-dir")
        .arg(kubeconfig.with_file_name("kube-cache"))
        .args(["--context", context, "--request-timeout", "5s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("kubectl: {e}"))?;
    let mut input = child.stdin.take().ok_or("no stdin")?;
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .await
        .map_err(|e| format!("kubectl stdin: {e}"))?;
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .map_err(|_| format!("kubectl {args:?} ran past 15 s"))?
        .map_err(|e| format!("kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The first line of `rx` starting with `prefix`, within `WAIT`.
fn line_starting(rx: &std::sync::mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line starting with {prefix:?}: {e}"),
        }
    }
}

impl Mesh {
    async fn start(echo: &Echo) -> Mesh {
        let dir = ScratchDir::new("chaos-mesh");
        let ca = meridian_distribution::pki::Ca::generate(
            &meridian_distribution::pki::TrustDomain::default(),
            Duration::from_secs(3600),
        )
        .unwrap();
        let ca_cert = dir.write("ca.crt", &ca.cert_pem().unwrap());
        let ca_key = dir.write("ca.key", &ca.key_pem().unwrap());

        let mut sandboxes = Vec::new();
        let mut kubeconfigs = Vec::new();
        for cluster in CLUSTERS {
            let state = dir.join(cluster);
            let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
                .args([
                    "sandbox",
                    "--clusters",
                    cluster,
                    "--base-port",
                    "0",
                    "--no-persist",
                ])
                .arg("--state-dir")
                .arg(&state)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let rx = meridian_test_support::lines(&mut child, "sandbox");
            let child = Stop(child);
            let line = tokio::task::block_in_place(|| line_starting(&rx, "kubeconfig: "));
            kubeconfigs.push(line["kubeconfig: ".len()..].to_string());
            sandboxes.push((cluster, child));
        }
        // One kubeconfig with both contexts (the controller reads one file).
        let merged = tokio::process::Command::new("kubectl")
            .args(["config", "view", "--flatten"])
            .env("KUBECONFIG", kubeconfigs.join(":"))
            .output()
            .await
            .unwrap();
        assert!(merged.status.success(), "kubectl config view --flatten");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, &merged.stdout).unwrap();

        let crds = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .arg("crds")
            .output()
            .unwrap();
        assert!(crds.status.success(), "meridian crds");
        let crds = String::from_utf8(crds.stdout).unwrap();
        let mut ports = Vec::new();
        for cluster in CLUSTERS {
            kubectl(&kubeconfig, cluster, &["apply", "-f", "-"], Some(&crds))
                .await
                .unwrap();
            let port = free_port();
            let objects = cluster_objects(port, echo);
            kubectl(&kubeconfig, cluster, &["apply", "-f", "-"], Some(&objects))
                .await
                .unwrap();
            ports.push(port);
        }

        let distribution = free_port();
        let controller_args: Vec<String> = [
            "controller",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            // Regions named after the clusters: a bootstrapped certificate carries the
            // member's region, which the proxy's --region must match.
            "--cluster",
            "east@east",
            "--cluster",
            "west@west",
            "--distribution-bind",
            &format!("127.0.0.1:{distribution}"),
            "--ca-cert-file",
            ca_cert.to_str().unwrap(),
            "--ca-key-file",
            ca_key.to_str().unwrap(),
            // The echo backends listen on loopback.
            "--allow-loopback-endpoints",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut mesh = Mesh {
            kubeconfig,
            sandboxes,
            controller: None,
            controller_args,
            proxies: Vec::new(),
            dir,
        };
        mesh.start_controller();

        let url = format!("https://127.0.0.1:{distribution}");
        for (cluster, port) in CLUSTERS.into_iter().zip(ports) {
            let proxy = MeshProxy::start(&mesh, cluster, port, &url).await;
            mesh.proxies.push(proxy);
        }
        for cluster in CLUSTERS {
            mesh.wait_programmed(cluster).await;
        }
        for p in &mesh.proxies {
            let addr = p.addr;
            eventually_async(&format!("{} answers", p.cluster), WAIT, || async move {
                match one(&[addr], "/").await.outcome {
                    Outcome::Ok => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
        }
        mesh
    }

    fn start_controller(&mut self) {
        // Its log is mostly the dead member's watch retries; MERIDIAN_CHAOS_LOG=1 shows it.
        let log = if std::env::var_os("MERIDIAN_CHAOS_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let child = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(&self.controller_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.controller = Some(Stop(child));
    }

    /// SIGKILL to the controller, reaped.
    fn kill_controller(&mut self) {
        let mut stop = self.controller.take().unwrap();
        kill(&stop.0, "KILL");
        let exit = tokio::task::block_in_place(|| wait_or_kill(&mut stop.0, WAIT));
        assert!(exit.in_time);
    }

    /// SIGKILL to the sandbox of `cluster`, reaped.
    fn kill_sandbox(&mut self, cluster: &str) {
        let at = self
            .sandboxes
            .iter()
            .position(|(c, _)| *c == cluster)
            .unwrap();
        let (_, mut stop) = self.sandboxes.remove(at);
        kill(&stop.0, "KILL");
        let exit = tokio::task::block_in_place(|| wait_or_kill(&mut stop.0, WAIT));
        assert!(exit.in_time);
    }

    async fn wait_programmed(&self, cluster: &str) {
        let jsonpath = r#"-o=jsonpath={.status.conditions[?(@.type=="Programmed")].status}"#;
        eventually_async(&format!("{cluster}: Gateway Programmed"), WAIT, || async {
            let out = kubectl(
                &self.kubeconfig,
                cluster,
                &["get", "gateway", "-n", "chaos", "web", jsonpath],
                None,
            )
            .await?;
            if out.trim() == "True" {
                Ok(())
            } else {
                Err(out)
            }
        })
        .await;
    }

    /// `kubectl get gateway -w`: every Programmed status the API server stores, as lines.
    fn watch_programmed(&self, cluster: &str) -> (Stop, std::sync::mpsc::Receiver<String>) {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.kubeconfig.with_file_name("kube-cache"))
            .args(["--context", cluster, "get", "gateway", "-n", "chaos", "web", "-w"])
            .arg(
                r#"-o=jsonpath={.metadata.resourceVersion} {.status.conditions[?(@.type=="Programmed")].status}{"\n"}"#,
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let rx = meridian_test_support::lines(&mut child, "watch");
        (Stop(child), rx)
    }

    /// Whether every proxy's link to the controller is up (its `/ready`).
    async fn proxies_connected(&self) -> Result<(), String> {
        for p in &self.proxies {
            let ready = get_json(p.admin, "/ready").await?;
            if ready["controller"]["connected"] != true {
                return Err(format!("{}: {ready}", p.cluster));
            }
        }
        Ok(())
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.proxies.iter().map(|p| p.addr).collect()
    }
}

impl MeshProxy {
    /// Mints the bootstrap token, waits for the trust bundle the controller publishes in
    /// `cluster`, and starts the proxy.
    async fn start(mesh: &Mesh, cluster: &'static str, port: u16, url: &str) -> MeshProxy {
        let dir = &mesh.dir;
        let token = kubectl(
            &mesh.kubeconfig,
            cluster,
            &[
                "-n",
                "meridian-system",
                "create",
                "token",
                "meridian-proxy",
                "--audience",
                "meridian",
            ],
            None,
        )
        .await
        .unwrap();
        let token_file = dir.write(format!("{cluster}.token"), token.trim());
        let bundle = eventually_async(
            &format!("{cluster}: the meridian-ca ConfigMap"),
            WAIT,
            || async {
                let out = kubectl(
                    &mesh.kubeconfig,
                    cluster,
                    &[
                        "-n",
                        "meridian-system",
                        "get",
                        "configmap",
                        "meridian-ca",
                        r#"-o=jsonpath={.data.ca\.crt}"#,
                    ],
                    None,
                )
                .await?;
                if out.contains("BEGIN CERTIFICATE") {
                    Ok(out)
                } else {
                    Err(out)
                }
            },
        )
        .await;
        let ca_file = dir.write(format!("{cluster}-ca.crt"), &bundle);
        let admin = free_port();
        let zone = format!("{cluster}-a");
        let child = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(["proxy", "--controller", url])
            .args(["--cluster", cluster, "--region", cluster, "--zone", &zone])
            .args(["--proxy-id", &format!("{cluster}-proxy")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--advertise-address", "127.0.0.1"])
            .arg("--ca-file")
            .arg(&ca_file)
            .arg("--bootstrap-token-file")
            .arg(&token_file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        MeshProxy {
            cluster,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin,
            _child: Stop(child),
        }
    }
}

/// The Programmed statuses a watch printed so far (`resourceVersion status` lines).
fn history(rx: &std::sync::mpsc::Receiver<String>) -> Vec<String> {
    rx.try_iter().collect()
}

/// SIGKILL to the controller under load, then a restart with the same CA: proxies keep serving
/// their last snapshot (0 failed), reconnect to the new controller, and the Gateways' Programmed
/// condition never leaves True. Then SIGKILL to the west cluster's API server under load: both
/// Gateways keep serving (0 failed) and the controller keeps writing east's status (a new route
/// there is Accepted) and programming east's proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_and_member_down_under_load() {
    if !meridian_test_support::tool_present("kubectl", &["version", "--client"]) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let echo = Echo::start("backend").await;
    let mut mesh = Mesh::start(&echo).await;
    let watches: Vec<_> = CLUSTERS.iter().map(|c| mesh.watch_programmed(c)).collect();

    // ── Controller killed and restarted ──
    let loads: Vec<Load> = mesh
        .addrs()
        .into_iter()
        .map(|a| Load::start(vec![a], "/chaos?delay=20", RATE / 2, 20 * RATE))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    mesh.kill_controller();
    eventually_async("the proxies see the controller gone", WAIT, || async {
        match mesh.proxies_connected().await {
            Ok(()) => Err("still connected".to_string()),
            Err(_) => Ok(()),
        }
    })
    .await;
    // Static stability: nothing to talk to, traffic as before.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = Instant::now();
    mesh.start_controller();
    eventually_async("the proxies reconnect", WAIT, || mesh.proxies_connected()).await;
    let reconnected = Instant::now();
    for cluster in CLUSTERS {
        mesh.wait_programmed(cluster).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut records = Vec::new();
    for load in loads {
        records.extend(load.finish().await);
    }
    let t = tally(&records);
    let histories: Vec<Vec<String>> = watches.iter().map(|(_, rx)| history(rx)).collect();
    println!(
        "chaos controller-kill: sent {}, ok {}, failed {}, controller down {} ms, proxies \
         reconnected {} ms after the restart, Programmed history east {:?} west {:?}",
        t.sent,
        t.ok,
        t.failed,
        (restarted - killed).as_millis(),
        (reconnected - restarted).as_millis(),
        histories[0],
        histories[1],
    );
    assert_eq!(t.failed, 0, "failed requests: {:?}", failures(&records));
    assert_eq!(t.ok, t.sent);
    for (cluster, h) in CLUSTERS.iter().zip(&histories) {
        assert!(!h.is_empty(), "{cluster}: the watch saw the Gateway");
        assert!(
            h.iter().all(|l| l.ends_with(" True")),
            "{cluster}: Programmed never left True: {h:?}"
        );
    }

    // ── A member API down ──
    let loads: Vec<Load> = mesh
        .addrs()
        .into_iter()
        .map(|a| Load::start(vec![a], "/chaos?delay=20", RATE / 2, 20 * RATE))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let down = Instant::now();
    mesh.kill_sandbox("west");
    // East keeps being reconciled: a new route there is accepted and served.
    kubectl(
        &mesh.kubeconfig,
        "east",
        &["apply", "-f", "-"],
        Some(&route("second", "/second").to_string()),
    )
    .await
    .unwrap();
    let jsonpath = r#"-o=jsonpath={.status.parents[0].conditions[?(@.type=="Accepted")].status}"#;
    eventually_async("east: the new route Accepted", WAIT, || async {
        let out = kubectl(
            &mesh.kubeconfig,
            "east",
            &["get", "httproute", "-n", "chaos", "second", jsonpath],
            None,
        )
        .await?;
        if out.trim() == "True" {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await;
    let east_updated = Instant::now();
    let east_admin = mesh.proxies[0].admin;
    eventually_async("east's proxy serves the new route", WAIT, || async {
        let dump = get_json(east_admin, "/config_dump").await?;
        let routes: Vec<&str> = dump["snapshot"]["gateways"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["listeners"].as_array().into_iter().flatten())
            .flat_map(|l| l["routes"].as_array().into_iter().flatten())
            .filter_map(|r| r["name"].as_str())
            .collect();
        if routes.contains(&"second") {
            Ok(())
        } else {
            Err(format!("{routes:?}"))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut records = Vec::new();
    let mut per_cluster = Vec::new();
    for (cluster, load) in CLUSTERS.iter().zip(loads) {
        let mine = load.finish().await;
        let t = tally(&mine);
        per_cluster.push(format!("{cluster} {}/{} ok", t.ok, t.sent));
        records.extend(mine);
    }
    let t = tally(&records);
    println!(
        "chaos member-down: sent {}, ok {}, failed {} ({}), east's status written {} ms after \
         west's API went down",
        t.sent,
        t.ok,
        t.failed,
        per_cluster.join(", "),
        (east_updated - down).as_millis(),
    );
    assert_eq!(t.failed, 0, "failed requests: {:?}", failures(&records));
    assert_eq!(t.ok, t.sent);
    drop(watches);
    drop(mesh);
}
