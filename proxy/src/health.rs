//! Active health checks: one task per proxy probes every endpoint of the served snapshot.
//!
//! ```text
//! every TICK: served snapshot changed? ─► recollect targets (address → probe settings), forget
//!             endpoints no snapshot names any more (Rounds::refresh_targets)
//!          ─► probe the targets that are due (TCP connect, or an HTTP GET of the policy's path),
//!             at most MAX_IN_FLIGHT at once, each bounded by its timeout (Rounds::due,
//!             probe_all)
//!          ─► Ejections::probe_result: re-admit ejected endpoints (after their minimum time and
//!             the failback hysteresis), eject healthy ones after repeated failed probes
//!             (record_results)
//! ```
//!
//! Defaults without a policy: TCP connect every [`DEFAULT_INTERVAL`] with [`DEFAULT_TIMEOUT`].
//! When several backends share an address, the first one found in the snapshot sets the probe.
//!
//! Targets are [`EndpointKey`]s: an east-west endpoint (a remote proxy's east-west listener) has
//! health per backend that uses it. Its TCP probe is one connect shared by those keys; an HTTP
//! probe is sent per backend and carries
//! `x-meridian-backend: <backend>`, so the remote proxy answers it from that backend's endpoints
//! (a backend without healthy endpoints over there fails its probe; the others do not). Both
//! run over mutual TLS (mesh.rs): the handshake, expecting a proxy of the endpoint's cluster, is
//! part of the connect. The
//! endpoints of the snapshot's east-west backends (what this proxy serves to other networks) are
//! probed like any other.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures::StreamExt;
use meridian_model::locality;
use meridian_model::snapshot::{
    Backend, BackendTarget, Endpoint, FailoverPolicy, Filter, Snapshot,
};
use pingora_core::tls::tokio_ssl::SslStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::endpoints::{Cause, EjectionInfo, EndpointKey, ProbeOutcome, Readmit};
use crate::gateway::BACKEND_HEADER;
use crate::state::{HopSecurity, Shared};
use meridian_distribution::protocol::{
    EjectedEndpoint, EjectionReason, MAX_EJECTED, MAX_REGIONS, NearestRegion, ProxyHealth,
};

/// Probe interval without a policy.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Probe timeout without a policy.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
/// Scheduler granularity.
const TICK: Duration = Duration::from_millis(100);
/// Probes in flight at once.
const MAX_IN_FLIGHT: usize = 64;
/// Most bytes read of an HTTP probe's answer (the status line is all we need).
const HTTP_PROBE_READ: usize = 256;

/// How one endpoint is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    pub interval: Duration,
    pub timeout: Duration,
    pub http_path: Option<String>,
    pub readmit: Readmit,
    /// For an east-west endpoint: the backend named in `x-meridian-backend` of HTTP probes.
    pub east_west_backend: Option<String>,
    /// For an east-west endpoint: the cluster of the remote proxy (mutual TLS expects it).
    pub east_west_cluster: Option<String>,
    /// Region of the endpoint: its connect time feeds that region's round trip ([`RegionRtt`]).
    pub region: String,
}

impl Probe {
    pub(crate) fn from_policy(policy: Option<&FailoverPolicy>) -> Probe {
        let hc = policy.and_then(|p| p.health_check.as_deref());
        let fb = policy.and_then(|p| p.failback.as_deref());
        let ms = |v: u64, d: Duration| if v == 0 { d } else { Duration::from_millis(v) };
        let defaults = Readmit::default();
        Probe {
            interval: ms(hc.map_or(0, |h| h.interval_ms), DEFAULT_INTERVAL),
            timeout: ms(hc.map_or(0, |h| h.timeout_ms), DEFAULT_TIMEOUT),
            http_path: hc.and_then(|h| h.http_path.clone()),
            readmit: Readmit {
                healthy_threshold: hc
                    .map(|h| h.healthy_threshold)
                    .filter(|&n| n > 0)
                    .unwrap_or(defaults.healthy_threshold),
                unhealthy_threshold: hc
                    .map(|h| h.unhealthy_threshold)
                    .filter(|&n| n > 0)
                    .unwrap_or(defaults.unhealthy_threshold),
                hysteresis: fb.map_or(Duration::ZERO, |f| Duration::from_millis(f.hysteresis_ms)),
                slow_start: fb.map_or(Duration::ZERO, |f| Duration::from_millis(f.slow_start_ms)),
            },
            east_west_backend: None,
            east_west_cluster: None,
            region: String::new(),
        }
    }
}

/// Every endpoint of the snapshot (Gateway backends, mirror backends, east-west backends) with its
/// probe settings.
pub(crate) fn targets(snapshot: &Snapshot) -> HashMap<EndpointKey, Probe> {
    fn add_endpoints(
        out: &mut HashMap<EndpointKey, Probe>,
        endpoints: &[Endpoint],
        failover: Option<&FailoverPolicy>,
        backend: &str,
        tls: bool,
    ) {
        let mut probe = None;
        for e in endpoints.iter().filter(|e| e.ready) {
            out.entry(EndpointKey::of(e, backend)).or_insert_with(|| {
                let mut p = probe
                    .get_or_insert_with(|| Probe::from_policy(failover))
                    .clone();
                if tls && !e.east_west {
                    // A TLS backend is never sent cleartext: TCP connect probes only.
                    p.http_path = None;
                }
                if e.east_west {
                    p.east_west_backend = Some(backend.to_string());
                    p.east_west_cluster = Some(e.cluster.clone());
                }
                p.region.clone_from(&e.region);
                p
            });
        }
    }
    fn add(out: &mut HashMap<EndpointKey, Probe>, b: &Backend) {
        if let BackendTarget::Endpoints {
            endpoints,
            failover,
            ..
        } = &b.target
        {
            add_endpoints(out, endpoints, failover.as_ref(), &b.name, b.tls.is_some());
        }
        for f in &b.filters {
            if let Filter::RequestMirror(m) = f {
                add(out, &m.backend);
            }
        }
    }
    let mut out = HashMap::new();
    for gw in &snapshot.gateways {
        for l in &gw.listeners {
            for r in &l.routes {
                for rule in &r.rules {
                    for b in &rule.backends {
                        add(&mut out, b);
                    }
                    for f in &rule.filters {
                        if let Filter::RequestMirror(m) = f {
                            add(&mut out, &m.backend);
                        }
                    }
                }
            }
        }
    }
    for b in &snapshot.east_west {
        add_endpoints(
            &mut out,
            &b.endpoints,
            b.failover.as_deref(),
            &b.name,
            false,
        );
    }
    out
}

/// One probe: connect (and GET the path) within the timeout. An east-west endpoint is a remote
/// proxy's mutual TLS listener: the TLS handshake (with the same identity and expectations as a
/// try, mesh.rs) is part of the connect, and the GET goes over it.
#[cfg(test)]
pub(crate) async fn probe(addr: SocketAddr, p: &Probe, hop: &HopSecurity) -> bool {
    probe_timed(addr, p, hop).await.0
}

/// [`probe`], and how long its TCP connect took when it connected (the round trip of the SYN:
/// the kernel answers it, so a busy backend does not inflate it).
async fn probe_timed(addr: SocketAddr, p: &Probe, hop: &HopSecurity) -> (bool, Option<Duration>) {
    let mut connect = None;
    let work = async {
        let started = Instant::now();
        let tcp = TcpStream::connect(addr).await.ok()?;
        connect = Some(started.elapsed());
        match (&p.east_west_cluster, hop) {
            (Some(cluster), HopSecurity::Mesh(mesh)) => {
                let ssl = mesh.probe_ssl(cluster)?;
                let mut tls = SslStream::new(ssl, tcp).ok()?;
                std::pin::Pin::new(&mut tls).connect().await.ok()?;
                http_probe(tls, addr, p).await
            }
            // Nothing to prove who we are with: the remote proxy would refuse us.
            (Some(_), HopSecurity::NoIdentity) => None,
            _ => http_probe(tcp, addr, p).await,
        }
    };
    let ok = matches!(tokio::time::timeout(p.timeout, work).await, Ok(Some(true)));
    (ok, connect)
}

/// The HTTP part of a probe on a connected stream (`true` right away for a TCP probe).
async fn http_probe<S: AsyncRead + AsyncWrite + Unpin>(
    mut tcp: S,
    addr: SocketAddr,
    p: &Probe,
) -> Option<bool> {
    let Some(path) = &p.http_path else {
        return Some(true);
    };
    let via = match &p.east_west_backend {
        // A name that cannot be a header value cannot be asked for: the probe fails.
        Some(b) if http::HeaderValue::from_str(b).is_err() => return None,
        Some(b) => format!("{BACKEND_HEADER}: {b}\r\n"),
        None => String::new(),
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: meridian-health\r\n{via}Connection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; HTTP_PROBE_READ];
    let mut n = 0;
    while n < 12 {
        let got = tcp.read(&mut buf[n..]).await.ok()?;
        if got == 0 {
            break;
        }
        n += got;
    }
    // "HTTP/1.1 200" — 2xx and 3xx count as healthy.
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    let code = line.split(' ').nth(1)?.get(..3)?;
    Some(code.starts_with('2') || code.starts_with('3'))
}

/// Runs the health checker until `shutdown` turns true.
pub(crate) async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut round = Rounds::default();
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
        if *shutdown.borrow() {
            return;
        }
        round.refresh_targets(&shared);
        let due = round.due(Instant::now());
        if due.is_empty() {
            continue;
        }
        let results = probe_all(due, &shared.hop).await;
        record_results(&shared, results);
    }
}

/// The health checker's memory between ticks: what to probe and when each probe is due.
#[derive(Default)]
struct Rounds {
    /// The served state the targets come from. A `Weak`, not an address: it keeps the
    /// allocation, so a later state can never sit at the same address and pass for the one
    /// seen (two snapshots within one tick could otherwise leave the checker on the targets of
    /// the first for good: no probes, no re-admission).
    seen: Option<std::sync::Weak<crate::state::Served>>,
    targets: HashMap<EndpointKey, Probe>,
    next: HashMap<EndpointKey, Instant>,
}

impl Rounds {
    /// Takes the targets from the served snapshot when it changed, forgetting the health state
    /// and schedule of endpoints it no longer has.
    fn refresh_targets(&mut self, shared: &Shared) {
        let served = shared.served.load_full();
        let same = match (&self.seen, &served) {
            (Some(seen), Some(now)) => std::ptr::eq(seen.as_ptr(), Arc::as_ptr(now)),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        self.seen = served.as_ref().map(Arc::downgrade);
        self.targets = served
            .as_ref()
            .map(|s| targets(s.router.snapshot()))
            .unwrap_or_default();
        let targets = &self.targets;
        shared
            .metrics
            .health_targets
            .set(i64::try_from(targets.len()).unwrap_or(i64::MAX));
        shared
            .ejections
            .retain_known(&|k: &EndpointKey| targets.contains_key(k));
        self.next.retain(|a, _| targets.contains_key(a));
        shared
            .rtt
            .retain(|r| targets.values().any(|p| p.region == r));
    }

    /// The probes due at `now`, each scheduled again one interval later.
    fn due(&mut self, now: Instant) -> Vec<(EndpointKey, Probe)> {
        let due: Vec<(EndpointKey, Probe)> = self
            .targets
            .iter()
            .filter(|(a, _)| self.next.get(a).is_none_or(|t| *t <= now))
            .map(|(a, p)| (*a, p.clone()))
            .collect();
        for (a, p) in &due {
            self.next.insert(*a, now + p.interval);
        }
        due
    }
}

/// Probes the `due` endpoints, at most [`MAX_IN_FLIGHT`] at a time: one connection per distinct
/// probe, since the keys of one east-west endpoint (one per backend) share a TCP probe (a TCP
/// connect says nothing about a backend). The result of each probe, with the keys it stands for.
async fn probe_all(due: Vec<(EndpointKey, Probe)>, hop: &HopSecurity) -> Vec<Probed> {
    let mut groups: HashMap<ProbeRequest, (Probe, Vec<(EndpointKey, Readmit)>)> = HashMap::new();
    for (key, p) in due {
        groups
            .entry(ProbeRequest::of(key.addr, &p))
            .or_insert_with(|| (p.clone(), Vec::new()))
            .1
            .push((key, p.readmit));
    }
    futures::stream::iter(groups)
        .map(|(req, (p, keys))| async move {
            let (ok, connect) = probe_timed(req.addr, &p, hop).await;
            Probed {
                ok,
                connect,
                region: p.region,
                keys,
            }
        })
        .buffer_unordered(MAX_IN_FLIGHT)
        .collect()
        .await
}

/// The result of one probe, with the keys it stands for.
struct Probed {
    ok: bool,
    /// How long the TCP connect took (`None`: it did not connect).
    connect: Option<Duration>,
    region: String,
    keys: Vec<(EndpointKey, Readmit)>,
}

/// Feeds probe results to the ejection state (ejects and re-admits endpoints) and their
/// connect times to the round trip per region.
fn record_results(shared: &Shared, results: Vec<Probed>) {
    // One sample per region and round: the quickest connect of its endpoints. A late wake-up
    // of this task only adds time to a measurement, so the minimum is the least disturbed one.
    let mut quickest: BTreeMap<&str, Duration> = BTreeMap::new();
    for p in &results {
        if let Some(took) = p.connect {
            let q = quickest.entry(p.region.as_str()).or_insert(took);
            *q = (*q).min(took);
        }
    }
    shared.rtt.observe(quickest.into_iter());
    for Probed { ok, keys, .. } in results {
        shared
            .metrics
            .health_probes
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
        for (key, readmit) in keys {
            match shared.ejections.probe_result(key, ok, &readmit) {
                ProbeOutcome::Readmitted => {
                    tracing::info!(endpoint = %key, "endpoint re-admitted after a successful health check");
                }
                ProbeOutcome::Ejected => {
                    shared.metrics.ejections.inc();
                    tracing::info!(endpoint = %key, "endpoint ejected after failed health checks");
                }
                ProbeOutcome::Unchanged => {}
            }
        }
    }
}

/// What goes on the wire for one probe; equal requests are sent once per round.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ProbeRequest {
    addr: SocketAddr,
    timeout: Duration,
    http_path: Option<String>,
    /// Only an HTTP probe carries the backend.
    backend: Option<String>,
    /// Mutual TLS to a proxy of this cluster (an east-west endpoint).
    tls_cluster: Option<String>,
}

impl ProbeRequest {
    fn of(addr: SocketAddr, p: &Probe) -> Self {
        ProbeRequest {
            addr,
            timeout: p.timeout,
            http_path: p.http_path.clone(),
            backend: p.http_path.as_ref().and(p.east_west_backend.clone()),
            tls_cluster: p.east_west_cluster.clone(),
        }
    }
}

/// Weight of a new connect time in a region's smoothed round trip.
const RTT_ALPHA: f64 = 0.2;

/// Smoothed connect round-trip time per region, from the health probes' connects (per round the
/// quickest of the region's endpoints, then an EWMA with weight [`RTT_ALPHA`]), and the
/// nearest-first order of the regions derived from it ([`locality::nearest_order`], with its
/// hysteresis). Every try reads the order ([`RegionRtt::order`]); only the health checker
/// writes, once per round.
#[derive(Default)]
pub(crate) struct RegionRtt {
    ewma: Mutex<BTreeMap<String, Duration>>,
    order: ArcSwap<Vec<String>>,
}

impl RegionRtt {
    /// The regions nearest first (empty before the first measurement).
    pub(crate) fn order(&self) -> arc_swap::Guard<Arc<Vec<String>>> {
        self.order.load()
    }

    /// The smoothed round trip per region and the order, for the admin listener.
    pub(crate) fn view(&self) -> (BTreeMap<String, Duration>, Arc<Vec<String>>) {
        let ewma = self.ewma.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (ewma, self.order.load_full())
    }

    /// Folds one round's connect times into the averages and recomputes the order.
    pub(crate) fn observe<'a>(&self, samples: impl Iterator<Item = (&'a str, Duration)>) {
        let mut ewma = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        let mut any = false;
        for (region, took) in samples {
            any = true;
            match ewma.get_mut(region) {
                Some(avg) => {
                    *avg = avg.mul_f64(1.0 - RTT_ALPHA) + took.mul_f64(RTT_ALPHA);
                }
                None => {
                    ewma.insert(region.to_string(), took);
                }
            }
        }
        if any {
            let order = locality::nearest_order(&self.order.load(), &ewma);
            if **self.order.load() != order {
                tracing::info!(?order, "nearest-first region order changed");
                self.order.store(Arc::new(order));
            }
        }
    }

    /// Forgets the regions `keep` says no to (no endpoint of the served snapshot is there).
    fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut ewma = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        ewma.retain(|r, _| keep(r));
        let order: Vec<String> = self
            .order
            .load()
            .iter()
            .filter(|r| keep(r))
            .cloned()
            .collect();
        self.order.store(Arc::new(order));
    }
}

/// The proxy's health view for the controller (`Target::health`, sent with the traffic
/// report): the measured nearest-first order of other regions with their round trips (rounded
/// to 0.1 ms, so noise does not make every report new), and every endpoint ejected right now,
/// per backend of the served snapshot that lists it (routes and mirrors), oldest ejection
/// first, at most [`MAX_EJECTED`] (then `truncated`). Read-only; walks the snapshot only while
/// something is ejected.
pub(crate) fn report(shared: &Shared) -> ProxyHealth {
    let (rtt, order) = shared.rtt.view();
    let nearest_regions = order
        .iter()
        .take(MAX_REGIONS)
        .map(|r| NearestRegion {
            region: r.clone(),
            rtt_ms: rtt
                .get(r)
                .map(|d| (d.as_secs_f64() * 10_000.0).round() / 10.0),
        })
        .collect();
    let mut out = ProxyHealth {
        nearest_regions,
        ejected: Vec::new(),
        truncated: false,
    };
    let ejected: HashMap<EndpointKey, EjectionInfo> =
        shared.ejections.ejected_now().into_iter().collect();
    let Some(served) = shared.served.load_full() else {
        return out;
    };
    if ejected.is_empty() {
        return out;
    }
    let mut found: Vec<(EjectionInfo, EjectedEndpoint)> = Vec::new();
    let mut seen: std::collections::HashSet<(String, EndpointKey)> =
        std::collections::HashSet::new();
    let mut visit = |b: &Backend| {
        let BackendTarget::Endpoints { endpoints, .. } = &b.target else {
            return;
        };
        for e in endpoints {
            let key = EndpointKey::of(e, &b.name);
            let Some(info) = ejected.get(&key) else {
                continue;
            };
            if !seen.insert((b.name.clone(), key)) {
                continue;
            }
            let since = jiff::Timestamp::try_from(info.since)
                .ok()
                .and_then(|t| jiff::Timestamp::from_second(t.as_second()).ok())
                .map_or_else(
                    || jiff::Timestamp::UNIX_EPOCH.to_string(),
                    |t| t.to_string(),
                );
            found.push((
                *info,
                EjectedEndpoint {
                    backend: b.name.clone(),
                    address: key.addr.to_string(),
                    since,
                    reason: match info.cause {
                        Cause::Probe => EjectionReason::Probe,
                        Cause::Passive => EjectionReason::Passive,
                    },
                    failures: info.failures,
                },
            ));
        }
    };
    for gw in &served.router.snapshot().gateways {
        for l in &gw.listeners {
            for r in &l.routes {
                for rule in &r.rules {
                    let mirrors = rule
                        .filters
                        .iter()
                        .chain(rule.backends.iter().flat_map(|b| b.filters.iter()));
                    for f in mirrors {
                        if let Filter::RequestMirror(m) = f {
                            visit(&m.backend);
                        }
                    }
                    for b in &rule.backends {
                        visit(b);
                    }
                }
            }
        }
    }
    found.sort_by(|(a, x), (b, y)| {
        (a.since, &x.backend, &x.address).cmp(&(b.since, &y.backend, &y.address))
    });
    out.truncated = found.len() > MAX_EJECTED;
    out.ejected = found
        .into_iter()
        .take(MAX_EJECTED)
        .map(|(_, e)| e)
        .collect();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A new snapshot's endpoints become the checker's targets even when its served state sits
    /// where the one seen last sat (an allocator reuses a freed block of the same size at once):
    /// the checker must not take it for the state it has seen, or it probes the old targets for
    /// good and never re-admits an endpoint the new snapshot has.
    #[tokio::test]
    async fn a_state_at_the_address_of_the_last_seen_one_is_still_new() {
        let h = crate::ProxyHandle::start(crate::ProxyConfig::default())
            .await
            .unwrap();
        let port = meridian_test_support::free_port();
        let snapshot = |generation: u64, ip: &str| -> Snapshot {
            serde_json::from_value(serde_json::json!({
                "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
                "generation": generation,
                "gateways": [{"namespace": "ns", "name": "gw", "listeners": [{
                    "name": "http", "address": "127.0.0.1", "port": port, "protocol": "HTTP",
                    "routes": [{"namespace": "ns", "name": "r", "rules": [{"backends": [
                        {"name": "ns/a:80", "target": {"type": "endpoints", "endpoints": [
                            {"address": ip, "port": 80, "cluster": "c", "region": "r1", "zone": "r1-a"}
                        ]}}
                    ]}]}]
                }]}]
            }))
            .unwrap()
        };
        let shared = h.shared();
        // The two served states, taken out of their Arcs so this thread decides when each
        // allocation is freed and made.
        let take = |generation, ip| {
            let h = &h;
            let shared = &shared;
            async move {
                h.apply(snapshot(generation, ip)).await.unwrap();
                let arc = shared.served.swap(None).unwrap();
                Arc::try_unwrap(arc).ok().unwrap()
            }
        };
        let first = take(1, "10.0.0.1").await;
        let second = take(2, "10.0.0.2").await;
        let mut rounds = Rounds::default();
        shared.served.store(Some(Arc::new(first)));
        rounds.refresh_targets(shared);
        let addrs = |r: &Rounds| {
            r.targets
                .keys()
                .map(|k| k.addr.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(addrs(&rounds), ["10.0.0.1:80"]);
        // Free the first state's block, then allocate the second's: the same block, unless
        // something still holds it.
        let first = Arc::try_unwrap(shared.served.swap(None).unwrap())
            .ok()
            .unwrap();
        shared.served.store(Some(Arc::new(second)));
        rounds.refresh_targets(shared);
        assert_eq!(addrs(&rounds), ["10.0.0.2:80"]);
        assert_eq!(shared.metrics.health_targets.get(), 1);
        drop(first);
    }

    /// The report names each ejected endpoint under every backend that lists it, with why and
    /// how many failures, oldest first; the measured order comes with its round trips.
    #[tokio::test]
    async fn the_health_report_lists_ejections_per_backend_and_the_measured_order() {
        let h = crate::ProxyHandle::start(crate::ProxyConfig::default())
            .await
            .unwrap();
        let port = meridian_test_support::free_port();
        let ep = |ip: &str, region: &str| {
            serde_json::json!({"address": ip, "port": 80, "cluster": "c", "region": region,
                               "zone": format!("{region}-a")})
        };
        let backend = |name: &str, eps: serde_json::Value| serde_json::json!({"name": name, "target": {"type": "endpoints", "endpoints": eps}});
        let snapshot: Snapshot = serde_json::from_value(serde_json::json!({
            "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
            "generation": 1,
            "gateways": [{"namespace": "ns", "name": "gw", "listeners": [{
                "name": "http", "address": "127.0.0.1", "port": port, "protocol": "HTTP",
                "routes": [{"namespace": "ns", "name": "r", "rules": [{"backends": [
                    backend("ns/a:80", serde_json::json!([ep("10.0.0.1", "r1"), ep("10.0.0.2", "r2")])),
                    backend("ns/b:80", serde_json::json!([ep("10.0.0.2", "r2")])),
                ]}]}]
            }]}]
        }))
        .unwrap();
        h.apply(snapshot).await.unwrap();
        let shared = h.shared();
        let empty = h.health();
        assert!(empty.ejected.is_empty() && empty.nearest_regions.is_empty());

        let one: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let two: SocketAddr = "10.0.0.2:80".parse().unwrap();
        assert!(shared.ejections.eject(one));
        let readmit = Readmit::default();
        for _ in 0..2 {
            shared.ejections.probe_result(two, false, &readmit);
        }
        // Failed probes while ejected count too.
        shared.ejections.probe_result(two, false, &readmit);
        shared.rtt.observe(
            [
                ("r2", Duration::from_micros(1_234)),
                ("r1", Duration::from_millis(20)),
            ]
            .into_iter(),
        );

        let view = h.health();
        assert_eq!(
            view.nearest_regions,
            vec![
                NearestRegion {
                    region: "r2".into(),
                    rtt_ms: Some(1.2)
                },
                NearestRegion {
                    region: "r1".into(),
                    rtt_ms: Some(20.0)
                },
            ]
        );
        let listed: Vec<(&str, &str, EjectionReason, u32)> = view
            .ejected
            .iter()
            .map(|e| (e.backend.as_str(), e.address.as_str(), e.reason, e.failures))
            .collect();
        assert_eq!(
            listed,
            vec![
                ("ns/a:80", "10.0.0.1:80", EjectionReason::Passive, 1),
                ("ns/a:80", "10.0.0.2:80", EjectionReason::Probe, 3),
                ("ns/b:80", "10.0.0.2:80", EjectionReason::Probe, 3),
            ]
        );
        assert!(!view.truncated);
        for e in &view.ejected {
            let t: jiff::Timestamp = e.since.parse().unwrap();
            assert!((jiff::Timestamp::now() - t).get_seconds().abs() < 60, "{t}");
        }
        h.shutdown().await;
    }

    #[tokio::test]
    async fn http_probes_of_an_east_west_endpoint_name_the_backend() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                // Like a remote proxy: 200 only for the backend it serves.
                let status = if req.contains("\r\nx-meridian-backend: ns/a:80\r\n") {
                    "200 OK"
                } else {
                    "404 Not Found"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let via = |b: Option<&str>| Probe {
            http_path: Some("/hc".to_string()),
            east_west_backend: b.map(str::to_string),
            ..Probe::from_policy(None)
        };
        assert!(probe(addr, &via(Some("ns/a:80")), &HopSecurity::Plaintext).await);
        assert!(!probe(addr, &via(Some("ns/b:80")), &HopSecurity::Plaintext).await);
        // A name that cannot be a header value fails without asking.
        assert!(!probe(addr, &via(Some("bad\r\nname")), &HopSecurity::Plaintext).await);
        server.abort();
    }

    #[test]
    fn east_west_endpoints_are_probed_per_backend_and_served_ones_too() {
        let ep = |port: u16, east_west: bool| serde_json::json!({"address": "127.0.0.1", "port": port, "eastWest": east_west});
        let backend = |name: &str, eps: Vec<serde_json::Value>| serde_json::json!({"name": name, "target": {"type": "endpoints", "endpoints": eps}});
        let snapshot: Snapshot = serde_json::from_value(serde_json::json!({
            "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
            "generation": 1,
            "gateways": [{"namespace": "n", "name": "g", "listeners": [{
                "name": "l", "address": "127.0.0.1", "port": 8080, "protocol": "HTTP",
                "routes": [{"namespace": "n", "name": "r", "rules": [{
                    "backends": [
                        backend("n/a:80", vec![ep(9001, true), ep(9002, false)]),
                        backend("n/b:80", vec![ep(9001, true)]),
                    ],
                }]}],
            }]}],
            "eastWest": [{"name": "n/c:80", "endpoints": [ep(9003, false)]}],
        }))
        .unwrap();
        let t = targets(&snapshot);
        let sa = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(t.len(), 4, "{t:?}");
        let a = &t[&EndpointKey::east_west(sa(9001), "n/a:80")];
        assert_eq!(a.east_west_backend.as_deref(), Some("n/a:80"));
        let b = &t[&EndpointKey::east_west(sa(9001), "n/b:80")];
        assert_eq!(b.east_west_backend.as_deref(), Some("n/b:80"));
        assert_eq!(t[&sa(9002).into()].east_west_backend, None);
        assert!(
            t.contains_key(&sa(9003).into()),
            "served east-west endpoints are probed"
        );
    }

    #[test]
    fn per_backend_keys_share_a_tcp_probe_but_not_an_http_one() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9001));
        let tcp = |b: &str| Probe {
            east_west_backend: Some(b.to_string()),
            ..Probe::from_policy(None)
        };
        assert_eq!(
            ProbeRequest::of(addr, &tcp("n/a:80")),
            ProbeRequest::of(addr, &tcp("n/b:80"))
        );
        let http = |b: &str| Probe {
            http_path: Some("/hc".to_string()),
            ..tcp(b)
        };
        assert_ne!(
            ProbeRequest::of(addr, &http("n/a:80")),
            ProbeRequest::of(addr, &http("n/b:80"))
        );
    }

    #[tokio::test]
    async fn tcp_and_http_probes_tell_up_from_down() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..3 {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let status = if req.starts_with("GET /ok ") {
                    "200 OK"
                } else {
                    "503 No"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let tcp = Probe::from_policy(None);
        assert_eq!(tcp.interval, DEFAULT_INTERVAL);
        assert!(probe(up, &tcp, &HopSecurity::Plaintext).await);
        let http = |path: &str| Probe {
            http_path: Some(path.to_string()),
            ..Probe::from_policy(None)
        };
        assert!(probe(up, &http("/ok"), &HopSecurity::Plaintext).await);
        assert!(!probe(up, &http("/bad"), &HopSecurity::Plaintext).await);
        server.abort();
        // A closed port.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(!probe(closed, &tcp, &HopSecurity::Plaintext).await);
    }
}
