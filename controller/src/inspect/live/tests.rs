//! The live view over real HTTP: the admin listener's own server (`serve_admin`) with a stand-in
//! reconcile loop that answers `Ask::Live` from data the test changes. Plain TCP clients read the
//! raw event stream.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::*;
use crate::inspect::admin::Inspector;
use crate::inspect::{ClusterView, GatewayView};
use crate::metrics::Metrics;

/// Longest wait for anything a test expects.
const WAIT: Duration = Duration::from_secs(10);

fn sample_data(requests: u64) -> LiveData {
    LiveData {
        status: StatusView {
            generated_at: "2026-01-01T00:00:00Z".into(),
            clusters: vec![ClusterView {
                name: "east".into(),
                region: "us-east".into(),
                zones: vec!["us-east-1a".into()],
                network: String::new(),
                synced: true,
                reachable: true,
                last_contact: None,
                seconds_since_contact: Some(0.5),
                api_latency_ms: None,
                unreachable_since: None,
                endpoints_withdrawn_at: None,
            }],
            proxies: vec![],
            gateways: vec![GatewayView {
                cluster: "east".into(),
                namespace: "demo".into(),
                name: "web".into(),
                class: "meridian".into(),
                programmed: None,
                addresses: vec![],
                listeners: vec![],
                snapshot_generation: Some(1),
                requests: Some(requests),
                requests_by_region: BTreeMap::new(),
            }],
            backends: vec![],
        },
        traffic: vec![GatewayCounters {
            cluster: "east".into(),
            namespace: "demo".into(),
            name: "web".into(),
            requests,
            by_region: BTreeMap::from([("us-east".to_string(), requests)]),
            by_zone: BTreeMap::from([("us-east/us-east-a".to_string(), requests)]),
            failed: 0,
        }],
        drills: vec![],
    }
}

/// A running admin listener with a stand-in loop.
struct Harness {
    addr: std::net::SocketAddr,
    data: Arc<Mutex<LiveData>>,
    asks: Arc<AtomicUsize>,
    /// `meridian_controller_live_streams` of this listener.
    streams: prometheus::IntGauge,
    _shutdown: watch::Sender<bool>,
}

async fn start(auth: AdminAuth, cfg: LiveConfig) -> Harness {
    start_with(auth, cfg, Arc::default()).await
}

async fn start_with(
    auth: AdminAuth,
    cfg: LiveConfig,
    series: Arc<crate::drill::DrillSeries>,
) -> Harness {
    let (tx, mut rx) = mpsc::channel::<Msg>(16);
    let data = Arc::new(Mutex::new(sample_data(0)));
    let asks = Arc::new(AtomicUsize::new(0));
    {
        let data = Arc::clone(&data);
        let asks = Arc::clone(&asks);
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if let Msg::Inspect(ask) = msg {
                    asks.fetch_add(1, Ordering::SeqCst);
                    let mut d = data.lock().unwrap().clone();
                    // The clock fields move on every answer, as the loop's do.
                    d.status.generated_at = k8s_openapi::jiff::Timestamp::now().to_string();
                    let _ = ask.reply.send(Answer::Live(Box::new(d)));
                }
            }
        });
    }
    let (shutdown_tx, shutdown) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = prometheus::IntGauge::new("live_streams", "open streams").unwrap();
    let live = Live::new(auth.clone(), tx.clone(), BTreeMap::new(), cfg)
        .with_drill_series(series)
        .with_stream_gauge(streams.clone());
    let live = Arc::new(live);
    tokio::spawn(Arc::clone(&live).run(shutdown.clone()));
    let (_ready_tx, ready) = watch::channel(vec![("east".to_string(), true)]);
    tokio::spawn(crate::metrics::serve_admin(
        listener,
        Arc::new(Metrics::new().unwrap()),
        ready,
        Inspector { tx, auth, live },
        shutdown,
    ));
    Harness {
        addr,
        data,
        asks,
        streams,
        _shutdown: shutdown_tx,
    }
}

fn fast() -> LiveConfig {
    LiveConfig {
        max_clients: 4,
        period: Duration::from_millis(50),
        keep_alive: Duration::from_secs(30),
        lifetime: Duration::from_secs(60),
    }
}

/// An open connection and what it has read so far.
struct Client {
    s: TcpStream,
    buf: String,
}

impl Client {
    async fn get(addr: std::net::SocketAddr, path: &str, auth: Option<&str>) -> Client {
        Self::request(addr, "GET", path, auth, "").await
    }

    async fn request(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: &str,
    ) -> Client {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let auth = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        Client {
            s,
            buf: String::new(),
        }
    }

    /// Reads until `needle` appears after `from`; returns its position. Panics after [`WAIT`].
    async fn until(&mut self, from: usize, needle: &str) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = self.buf[from..].find(needle) {
                return from + i;
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout_at(deadline, self.s.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} within {WAIT:?}; read: {}", self.buf))
                .unwrap();
            assert!(n > 0, "closed before {needle:?}; read: {}", self.buf);
            self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    }

    /// The status line's code.
    async fn status(&mut self) -> u16 {
        self.until(0, "\r\n").await;
        self.buf[9..12].parse().unwrap()
    }

    /// The JSON of the `event: NAME` frame found at or after `from`, and where it ends.
    async fn event(&mut self, from: usize, name: &str) -> (serde_json::Value, usize) {
        let at = self.until(from, &format!("event: {name}\ndata: ")).await;
        let data = at + format!("event: {name}\ndata: ").len();
        let end = self.until(data, "\n\n").await;
        (serde_json::from_str(&self.buf[data..end]).unwrap(), end)
    }
}

#[tokio::test]
async fn a_stream_starts_with_a_snapshot_and_sends_an_update_when_the_data_changes() {
    let h = start(AdminAuth::Loopback, fast()).await;
    let mut c = Client::get(h.addr, "/v1/events", None).await;
    assert_eq!(c.status().await, 200);
    c.until(0, "content-type: text/event-stream").await;
    let (snap, end) = c.event(0, "snapshot").await;
    assert_eq!(snap["traffic"][0]["requests"], 0);
    assert_eq!(snap["status"]["clusters"][0]["region"], "us-east");
    assert_eq!(snap["canStartDrills"], false);
    assert!(
        snap["readOnlyReason"]
            .as_str()
            .unwrap()
            .contains("read-only")
    );
    let first_seq = snap["seq"].as_u64().unwrap();

    // Only the clock moved for a few periods: no update.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = h.asks.load(Ordering::SeqCst);
    assert!(
        asked >= 3,
        "the hub asks every period while watched: {asked}"
    );
    assert!(!c.buf[end..].contains("event: update"), "{}", c.buf);

    *h.data.lock().unwrap() = sample_data(42);
    let (update, _) = c.event(end, "update").await;
    assert_eq!(update["traffic"][0]["requests"], 42);
    assert_eq!(update["traffic"][0]["byRegion"]["us-east"], 42);
    assert_eq!(update["traffic"][0]["byZone"]["us-east/us-east-a"], 42);
    assert!(update["seq"].as_u64().unwrap() > first_seq);
}

#[tokio::test]
async fn the_hub_asks_nothing_while_nobody_watches() {
    let h = start(AdminAuth::Loopback, fast()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.asks.load(Ordering::SeqCst), 0);
    let mut c = Client::get(h.addr, "/v1/events", None).await;
    c.event(0, "snapshot").await;
    drop(c);
    // The hub notices the stream is gone at its next period and stops asking.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let before = h.asks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(250)).await;
        if h.asks.load(Ordering::SeqCst) == before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hub kept asking"
        );
    }
}

#[tokio::test]
async fn clients_beyond_the_limit_get_503_and_a_freed_slot_is_reused() {
    let cfg = LiveConfig {
        max_clients: 2,
        ..fast()
    };
    let h = start(AdminAuth::Loopback, cfg).await;
    let mut a = Client::get(h.addr, "/v1/events", None).await;
    a.event(0, "snapshot").await;
    let mut b = Client::get(h.addr, "/v1/events", None).await;
    b.event(0, "snapshot").await;
    let mut c = Client::get(h.addr, "/v1/events", None).await;
    assert_eq!(c.status().await, 503);
    c.until(0, "live views are open already").await;
    assert_eq!(h.streams.get(), 2, "the refused one is not counted");
    drop(a);
    // The slot comes back when the server notices the closed connection (its next write).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        *h.data.lock().unwrap() = sample_data(rand_count());
        let mut d = Client::get(h.addr, "/v1/events", None).await;
        if d.status().await == 200 {
            d.event(0, "snapshot").await;
            assert_eq!(h.streams.get(), 2, "a closed stream is no longer counted");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A counter value that differs on every call (so the hub publishes, and writes to every stream).
fn rand_count() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(100);
    N.fetch_add(1, Ordering::SeqCst) as u64
}

#[tokio::test]
async fn an_idle_stream_carries_keep_alive_comments() {
    let cfg = LiveConfig {
        keep_alive: Duration::from_millis(100),
        ..fast()
    };
    let h = start(AdminAuth::Loopback, cfg).await;
    let mut c = Client::get(h.addr, "/v1/events", None).await;
    let (_, end) = c.event(0, "snapshot").await;
    let first = c.until(end, ": keep-alive\n\n").await;
    c.until(first + 1, ": keep-alive\n\n").await;
}

#[tokio::test]
async fn a_stream_ends_after_its_lifetime() {
    let cfg = LiveConfig {
        lifetime: Duration::from_millis(300),
        ..fast()
    };
    let h = start(AdminAuth::Loopback, cfg).await;
    let mut c = Client::get(h.addr, "/v1/events", None).await;
    c.event(0, "snapshot").await;
    // Chunked encoding's last chunk: the body ended.
    c.until(0, "\r\n0\r\n\r\n").await;
}

#[tokio::test]
async fn credentials_are_those_of_the_status_endpoint() {
    // Not on loopback and no token: refused, saying how to open it.
    let h = start(AdminAuth::Closed, fast()).await;
    let mut c = Client::get(h.addr, "/v1/events", None).await;
    assert_eq!(c.status().await, 403);
    c.until(0, "--admin-token-file").await;
    // The page itself holds no data and loads anyway (it then shows the refusal).
    let mut c = Client::get(h.addr, "/ui", None).await;
    assert_eq!(c.status().await, 200);

    let h = start(AdminAuth::Token("s3cret".into()), fast()).await;
    for auth in [None, Some("wrong")] {
        let mut c = Client::get(h.addr, "/v1/events", auth).await;
        assert_eq!(c.status().await, 401, "{auth:?}");
        c.until(0, "www-authenticate: Bearer").await;
    }
    let mut c = Client::get(h.addr, "/v1/events", Some("s3cret")).await;
    assert_eq!(c.status().await, 200);
    let (snap, _) = c.event(0, "snapshot").await;
    assert_eq!(snap["canStartDrills"], true);
    assert!(snap["readOnlyReason"].is_null());
    assert!(h.asks.load(Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_their_types() {
    let h = start(AdminAuth::Loopback, fast()).await;
    for (path, ty, needle) in [
        ("/ui", "text/html", "/ui/app.js"),
        ("/ui/app.js", "text/javascript", "/v1/events"),
        ("/ui/app.css", "text/css", "--fg"),
    ] {
        let mut c = Client::get(h.addr, path, None).await;
        assert_eq!(c.status().await, 200, "{path}");
        c.until(0, &format!("content-type: {ty}")).await;
        c.until(0, "content-security-policy: default-src 'none'")
            .await;
        c.until(0, needle).await;
    }
    let mut c = Client::get(h.addr, "/ui/other.js", None).await;
    assert_eq!(c.status().await, 404);
    let mut c = Client::request(h.addr, "POST", "/v1/events", None, "").await;
    assert_eq!(c.status().await, 405);
    // The other admin endpoints are unchanged.
    let mut c = Client::get(h.addr, "/healthz", None).await;
    assert_eq!(c.status().await, 200);
}

#[tokio::test]
async fn drills_start_only_on_a_token_listener_and_bad_requests_say_why() {
    let body =
        r#"{"cluster":"east","namespace":"demo","gateway":"web","target":{"region":"us-east"}}"#;
    let h = start(AdminAuth::Loopback, fast()).await;
    let mut c = Client::request(h.addr, "POST", "/v1/drills", None, body).await;
    assert_eq!(c.status().await, 403);
    c.until(0, "read-only").await;

    let h = start(AdminAuth::Token("t".into()), fast()).await;
    let mut c = Client::request(h.addr, "POST", "/v1/drills", None, body).await;
    assert_eq!(c.status().await, 401);
    for (body, says) in [
        ("not json", "expected"),
        (r#"{"cluster":"east"}"#, "missing field"),
        (
            r#"{"cluster":"east","namespace":"demo","gateway":"web","target":{},"colour":1}"#,
            "unknown field",
        ),
        // No member clusters in this harness: every cluster is unknown.
        (body, "not a member cluster"),
    ] {
        let mut c = Client::request(h.addr, "POST", "/v1/drills", Some("t"), body).await;
        assert_eq!(c.status().await, 400, "{body}");
        c.until(0, says).await;
    }
    let big = format!("{{\"cluster\":\"{}\"}}", "x".repeat(MAX_DRILL_BODY));
    let mut c = Client::request(h.addr, "POST", "/v1/drills", Some("t"), &big).await;
    assert_eq!(c.status().await, 413);
}

#[tokio::test]
async fn drill_requests_are_checked_before_anything_is_created() {
    // A client that is never used: only its name counts here.
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let clients = BTreeMap::from([("east".to_string(), kube::Client::try_from(config).unwrap())]);
    let base = serde_json::json!({
        "cluster": "east", "namespace": "demo", "gateway": "web",
        "target": {"region": "us-east"}, "mode": "kill", "duration": "20s"
    });
    let check = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut v = base.clone();
        change(&mut v);
        let ask: StartDrill = serde_json::from_value(v).unwrap();
        ask.drill(&clients, "live-x".into())
    };

    let d = check(&|_| {}).unwrap();
    assert_eq!(d.metadata.name.as_deref(), Some("live-x"));
    assert_eq!(d.metadata.namespace.as_deref(), Some("demo"));
    assert_eq!(d.spec.target.region.as_deref(), Some("us-east"));
    assert_eq!(d.spec.mode, Some(DrillMode::Kill));
    assert_eq!(d.spec.duration.as_deref(), Some("20s"));
    let scope = d.spec.scope.unwrap();
    assert_eq!(scope.gateways.len(), 1);
    assert_eq!(scope.gateways[0].name, "web");
    assert_eq!(
        d.metadata.labels.unwrap()["app.kubernetes.io/created-by"],
        "meridian-live-view"
    );

    let refused =
        |change: &dyn Fn(&mut serde_json::Value)| format!("{:?}", check(change).unwrap_err());
    assert!(refused(&|v| v["cluster"] = "north".into()).contains("known: east"));
    assert!(refused(&|v| v["namespace"] = "Demo".into()).contains("namespace"));
    assert!(refused(&|v| v["gateway"] = "".into()).contains("gateway"));
    assert!(refused(&|v| v["target"] = serde_json::json!({})).contains("name a cluster"));
    assert!(refused(&|v| v["target"]["zone"] = "a b".into()).contains("target.zone"));
    assert!(refused(&|v| v["duration"] = "soon".into()).contains("duration"));
    assert!(refused(&|v| v["duration"] = "0s".into()).contains("at most 1h"));
    assert!(refused(&|v| v["duration"] = "2h".into()).contains("at most 1h"));
}

#[test]
fn running_drills_come_first_then_the_newest() {
    use meridian_crds::meridian::DrillPhase;
    let d = |name: &str, created: &str, phase: DrillPhase| DrillView {
        cluster: "east".into(),
        namespace: "demo".into(),
        name: name.into(),
        created: created.into(),
        target: DrillTargetSpec::default(),
        mode: "drain".into(),
        duration: None,
        status: Some(FailoverDrillStatus {
            phase: Some(phase),
            ..Default::default()
        }),
    };
    let mut all = vec![d(
        "running-old",
        "2026-01-01T00:00:00Z",
        DrillPhase::Running,
    )];
    for i in 0..8 {
        all.push(d(
            &format!("done-{i}"),
            &format!("2026-01-02T00:00:0{i}Z"),
            DrillPhase::Succeeded,
        ));
    }
    let names: Vec<String> = newest_drills(all).into_iter().map(|d| d.name).collect();
    assert_eq!(
        names,
        ["running-old", "done-7", "done-6", "done-5", "done-4"]
    );
}

#[test]
fn clock_fields_do_not_count_as_a_change() {
    let a = sample_data(1);
    let mut b = a.clone();
    b.status.generated_at = "2027-01-01T00:00:00Z".into();
    b.status.clusters[0].seconds_since_contact = Some(9.0);
    assert_eq!(comparable(&a), comparable(&b));
    b.traffic[0].requests = 2;
    assert_ne!(comparable(&a), comparable(&b));
}

/// The body of a finished answer (read to the end: the listener closes after `Connection:
/// close`, and a JSON answer is short).
async fn body_of(c: &mut Client) -> serde_json::Value {
    let head_end = c.until(0, "\r\n\r\n").await + 4;
    let len: usize = c.buf[..head_end]
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_string)
        })
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.buf.len() < head_end + len {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout_at(deadline, c.s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        c.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    serde_json::from_str(&c.buf[head_end..head_end + len]).unwrap()
}

#[tokio::test]
async fn a_past_drills_traffic_is_served_for_its_picture() {
    let series: Arc<crate::drill::DrillSeries> = Arc::default();
    let key = crate::drill::DrillKey {
        cluster: "east".into(),
        namespace: "demo".into(),
        name: "drill-1".into(),
    };
    series.start(&key);
    let mut t = meridian_model::traffic::GatewayTraffic::default();
    let at = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for i in 0..3u64 {
        t.record(Some("us-east"), None, 100);
        series.record(&key, at + Duration::from_secs(i), &t);
    }
    let h = start_with(
        AdminAuth::Token("s3cret".into()),
        fast(),
        Arc::clone(&series),
    )
    .await;
    let path = "/v1/drills/series?cluster=east&namespace=demo&name=drill-1";

    let mut c = Client::get(h.addr, path, None).await;
    assert_eq!(c.status().await, 401, "{}", c.buf);
    let mut c = Client::get(h.addr, path, Some("s3cret")).await;
    assert_eq!(c.status().await, 200, "{}", c.buf);
    let v = body_of(&mut c).await;
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    assert_eq!(points[2]["atMs"], 1_700_000_002_000u64);
    assert_eq!(points[2]["requests"], 3);
    assert_eq!(points[2]["byRegion"]["us-east"], 3);

    let mut c = Client::get(
        h.addr,
        "/v1/drills/series?cluster=east&namespace=demo&name=other",
        Some("s3cret"),
    )
    .await;
    assert_eq!(c.status().await, 404);
    assert!(
        body_of(&mut c).await["error"]
            .as_str()
            .unwrap()
            .contains("last 16 drills")
    );
    let mut c = Client::get(h.addr, "/v1/drills/series?cluster=east", Some("s3cret")).await;
    assert_eq!(c.status().await, 400);
    assert!(
        body_of(&mut c).await["error"]
            .as_str()
            .unwrap()
            .contains("needs namespace")
    );
    let mut c = Client::get(h.addr, "/v1/drills/series?bogus=1", Some("s3cret")).await;
    assert_eq!(c.status().await, 400);
    let mut c = Client::request(h.addr, "POST", path, Some("s3cret"), "").await;
    assert_eq!(c.status().await, 405);
}

#[tokio::test]
async fn drills_can_be_created_in_clusters_that_joined_after_the_start() {
    let client = || {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        kube::Client::try_from(config).unwrap()
    };
    let entry = |name: &str| crate::controller::MemberEntry {
        cluster: crate::controller::MemberCluster::new(name, "r", vec![], client()),
        pool: None,
    };
    let (members_tx, members) = watch::channel(crate::controller::MemberDirectory::from([(
        "east".to_string(),
        entry("east"),
    )]));
    let (tx, _rx) = mpsc::channel::<Msg>(1);
    let live =
        Live::new(AdminAuth::Token("t".into()), tx, BTreeMap::new(), fast()).with_members(members);
    assert_eq!(live.clients().keys().collect::<Vec<_>>(), ["east"]);
    // `meridian cluster add west` while the page is open.
    members_tx.send_modify(|d| {
        d.insert("west".to_string(), entry("west"));
    });
    assert_eq!(live.clients().keys().collect::<Vec<_>>(), ["east", "west"]);
    let ask: StartDrill = serde_json::from_value(serde_json::json!({
        "cluster": "west", "namespace": "demo", "gateway": "web", "target": {"region": "r"}
    }))
    .unwrap();
    assert!(ask.drill(&live.clients(), "live-x".into()).is_ok());
}
