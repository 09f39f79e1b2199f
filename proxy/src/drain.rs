//! Per-Gateway facts of one served snapshot: the `x-meridian-served-by` switch, the traffic
//! counters, and the endpoints failover drills drain (for Gateway traffic and for the east-west
//! listener).
//!
//! ```text
//! apply(snapshot) ─► GatewayTable::build(snapshot, previous table, now)
//!     for every Gateway: served_by_header, its TrafficCell (kept across snapshots)
//!     when drains exist or did exist: for every backend (mirrors included) of the Gateway
//!         drained = endpoints a drain scoped to (Gateway, backend) matches
//!         lifted  = drained in the previous table, not any more → Lifted { at: now, failback }
//!     and for every Snapshot.east_west backend: the same with the east-west scope rule below
//! request_filter ─► table.gateway(ns, name) ─► entry.backend_drain(backend) ─► endpoints::choose
//! east-west request ─► table.east_west_drain(backend) ────────────────────────► endpoints::choose
//! ```
//!
//! A drained endpoint looks to [`crate::endpoints::choose`] like one that failed its health
//! checks and was already tried by the request: its tier counts it as unhealthy (spill rule),
//! traffic moves to the next tier, retries never pick it, and unlike an ejected endpoint it is not
//! a last resort when everything else is ejected (a drill must not be undone by the fallback).
//! Health state is never touched: probes keep running, so a drained endpoint that really fails
//! stays ejected after the drain is lifted.
//!
//! Lifting a drain (a snapshot without it) re-admits the endpoint the way health checks re-admit
//! one: it stays out for the backend's failback hysteresis, then ramps up over its slow-start
//! window; without a failback policy it is back at once. Drains are scoped: the same address
//! reached through another Gateway or backend is not affected, neither by the drain nor by the
//! ramp after it.
//!
//! East-west (multi-network clusters): a sending proxy drains a remote proxy's east-west endpoint
//! by that proxy's locality, but the remote proxy picks among its own network's endpoints, so a
//! zone drill of zone `b-a` would still reach `b-a` endpoints through the `b-b` proxy. The
//! receiving proxy therefore applies its snapshot's drains to its east-west backends too (the
//! drill puts the drain into every cluster's snapshot): drained endpoints are skipped, and when
//! every ready endpoint of the backend is drained the listener answers `503` without
//! `x-meridian-served-by`, which the sender treats as "this remote proxy cannot serve the
//! backend" (ejects it for that backend, a safe request fails over elsewhere).
//!
//! Scope on the east-west listener: the request names a backend but not the Gateway the client
//! came through (the wire contract carries only `x-meridian-backend`), so the Gateway scope
//! cannot be checked. A drain applies to east-west backend `X` when
//!
//! - it has no Gateway scope, and its backend scope is empty or names `X` (exactly as for
//!   Gateway traffic); or
//! - it has a Gateway scope and its backend scope names `X`: applied as if it had no Gateway
//!   scope, so east-west traffic of *other* Gateways to `X` also avoids the target. The drill
//!   named `X` explicitly, and over-draining only sends that traffic through its failover path,
//!   while skipping the drain would let the scoped Gateways' traffic reach the drained locality
//!   through another proxy of the remote network, which defeats the drill.
//!
//! A drain with a Gateway scope and no backend scope is not applied on the east-west listener:
//! applying it would drain every backend of every Gateway's east-west traffic to the target,
//! far beyond what the drill asked for. Such a drill still drains the remote proxies of the
//! target locality on the sending side.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState as FastHash;
use meridian_model::snapshot::{
    Backend, BackendTarget, Drain, FailoverPolicy, Filter, Gateway, Snapshot,
};

use crate::traffic::{TrafficCell, TrafficRegistry};

/// How a drain-lifted endpoint returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifted {
    /// When the snapshot without the drain was applied.
    pub at: Instant,
    /// Kept out this long after `at` (failback hysteresis).
    pub hysteresis: Duration,
    /// Then its share ramps from 0 to 1 over this window (failback slow start).
    pub slow_start: Duration,
}

impl Lifted {
    fn over(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.at) >= self.hysteresis + self.slow_start
    }
}

/// What drains say about one endpoint of one backend right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DrainState {
    /// No drain concerns it.
    Clear,
    /// Drained: never picked.
    Drained,
    /// Its drain was lifted but the failback hysteresis is not over: out like an ejected
    /// endpoint waiting for re-admission.
    Held,
    /// Its drain was lifted and it is slow-starting; the value is the ramp in (0, 1).
    Ramp(f64),
}

/// The drain view of one backend of one Gateway.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendDrain {
    drained: HashSet<SocketAddr>,
    lifted: HashMap<SocketAddr, Lifted>,
}

impl BackendDrain {
    /// A view with these drained endpoints and drain-lifted endpoints.
    pub fn new(
        drained: impl IntoIterator<Item = SocketAddr>,
        lifted: impl IntoIterator<Item = (SocketAddr, Lifted)>,
    ) -> Self {
        BackendDrain {
            drained: drained.into_iter().collect(),
            lifted: lifted.into_iter().collect(),
        }
    }

    /// Whether nothing is drained or returning.
    pub fn is_empty(&self) -> bool {
        self.drained.is_empty() && self.lifted.is_empty()
    }

    /// Whether `addr` is drained.
    pub fn is_drained(&self, addr: &SocketAddr) -> bool {
        self.drained.contains(addr)
    }

    /// The state of `addr` at `now`.
    pub fn state(&self, addr: &SocketAddr, now: Instant) -> DrainState {
        if self.drained.contains(addr) {
            return DrainState::Drained;
        }
        let Some(l) = self.lifted.get(addr) else {
            return DrainState::Clear;
        };
        let since = now.saturating_duration_since(l.at);
        if since < l.hysteresis {
            return DrainState::Held;
        }
        let ramping = since - l.hysteresis;
        if ramping < l.slow_start {
            // Never quite zero, like a health re-admission: the tier gets a trickle at once.
            DrainState::Ramp((ramping.as_secs_f64() / l.slow_start.as_secs_f64()).max(0.01))
        } else {
            DrainState::Clear
        }
    }
}

/// What a request needs to know about its Gateway.
#[derive(Debug)]
pub(crate) struct GatewayEntry {
    /// Add `x-meridian-served-by` to responses from endpoints.
    pub served_by_header: bool,
    /// The Gateway's counters.
    pub traffic: Arc<TrafficCell>,
    /// Drain views of the backends (by name) that have drained or returning endpoints.
    drains: HashMap<String, Arc<BackendDrain>>,
}

impl GatewayEntry {
    /// An entry without drain views: the east-west listener's, whose drains come from
    /// [`GatewayTable::east_west_drain`] (per backend, not per Gateway).
    pub fn undrained(served_by_header: bool, traffic: Arc<TrafficCell>) -> Self {
        GatewayEntry {
            served_by_header,
            traffic,
            drains: HashMap::new(),
        }
    }

    /// The drain view of `backend`, if anything of it is drained or returning.
    pub fn backend_drain(&self, backend: &str) -> Option<Arc<BackendDrain>> {
        if self.drains.is_empty() {
            return None;
        }
        self.drains.get(backend).cloned()
    }
}

/// Every Gateway of one served snapshot.
#[derive(Debug, Default)]
pub(crate) struct GatewayTable {
    /// Looked up twice per request (routing, drains): foldhash, not SipHash (the names are the
    /// snapshot's, not a client's).
    by_ns: HashMap<String, HashMap<String, Arc<GatewayEntry>, FastHash>, FastHash>,
    /// Drain views of the snapshot's east-west backends (by name) that have drained or
    /// returning endpoints.
    east_west: HashMap<String, Arc<BackendDrain>>,
    /// Distinct drained endpoint addresses per drill (`drain.drill`).
    pub drained_per_drill: HashMap<String, usize>,
}

/// Calls `f` on every backend of `gw`, mirror backends included.
fn for_each_backend<'a>(gw: &'a Gateway, mut f: impl FnMut(&'a Backend)) {
    fn mirrors<'a>(filters: &'a [Filter], f: &mut impl FnMut(&'a Backend)) {
        for filter in filters {
            if let Filter::RequestMirror(m) = filter {
                f(&m.backend);
            }
        }
    }
    for rule in gw
        .listeners
        .iter()
        .flat_map(|l| &l.routes)
        .flat_map(|r| &r.rules)
    {
        mirrors(&rule.filters, &mut f);
        for b in &rule.backends {
            mirrors(&b.filters, &mut f);
            f(b);
        }
    }
}

impl GatewayTable {
    /// The entry of Gateway `namespace/name`.
    pub fn gateway(&self, namespace: &str, name: &str) -> Option<&Arc<GatewayEntry>> {
        self.by_ns.get(namespace)?.get(name)
    }

    /// The drain view of east-west backend `backend`, if anything of it is drained or
    /// returning.
    pub fn east_west_drain(&self, backend: &str) -> Option<Arc<BackendDrain>> {
        if self.east_west.is_empty() {
            return None;
        }
        self.east_west.get(backend).cloned()
    }

    fn any_drain_view(&self) -> bool {
        !self.east_west.is_empty()
            || self
                .by_ns
                .values()
                .flat_map(|m| m.values())
                .any(|e| !e.drains.is_empty())
    }

    /// Builds the table of `snapshot`. `previous` is the table being replaced (drain-lifted
    /// endpoints are derived from it); traffic cells come from (and are pruned in) `traffic`.
    pub fn build(
        snapshot: &Snapshot,
        previous: Option<&GatewayTable>,
        traffic: &TrafficRegistry,
        now: Instant,
    ) -> GatewayTable {
        let cells = traffic.keep(
            snapshot
                .gateways
                .iter()
                .map(|g| (g.namespace.as_str(), g.name.as_str())),
        );
        // Without drains now or before, there is nothing to look at per backend.
        let drains_matter =
            !snapshot.drains.is_empty() || previous.is_some_and(GatewayTable::any_drain_view);
        let mut table = GatewayTable::default();
        let mut per_drill: HashMap<&str, HashSet<SocketAddr>> = HashMap::new();
        for (gw, cell) in snapshot.gateways.iter().zip(cells) {
            let drains = if drains_matter {
                let prev = previous.and_then(|p| p.gateway(&gw.namespace, &gw.name));
                gateway_drains(
                    gw,
                    &snapshot.drains,
                    prev.map(|p| &p.drains),
                    now,
                    &mut per_drill,
                )
            } else {
                HashMap::new()
            };
            table.by_ns.entry(gw.namespace.clone()).or_default().insert(
                gw.name.clone(),
                Arc::new(GatewayEntry {
                    served_by_header: gw.served_by_header,
                    traffic: cell,
                    drains,
                }),
            );
        }
        if drains_matter {
            table.east_west = east_west_drains(
                snapshot,
                previous.map(|p| &p.east_west),
                now,
                &mut per_drill,
            );
        }
        table.drained_per_drill = per_drill
            .into_iter()
            .map(|(d, set)| (d.to_string(), set.len()))
            .collect();
        table
    }
}

/// Drain views of the backends of `gw`.
fn gateway_drains<'a>(
    gw: &Gateway,
    drains: &'a [Drain],
    previous: Option<&HashMap<String, Arc<BackendDrain>>>,
    now: Instant,
    per_drill: &mut HashMap<&'a str, HashSet<SocketAddr>>,
) -> HashMap<String, Arc<BackendDrain>> {
    let key = format!("{}/{}", gw.namespace, gw.name);
    let here: Vec<&Drain> = drains
        .iter()
        .filter(|d| d.gateways.is_empty() || d.gateways.contains(&key))
        .collect();
    // Backend name → (drained addresses, the policy seen first for it).
    let mut found: HashMap<&str, (HashSet<SocketAddr>, Option<&FailoverPolicy>)> = HashMap::new();
    for_each_backend(gw, |b| {
        let BackendTarget::Endpoints {
            endpoints,
            failover,
            ..
        } = &b.target
        else {
            return;
        };
        let entry = found
            .entry(b.name.as_str())
            .or_insert_with(|| (HashSet::new(), failover.as_ref()));
        for d in here.iter().filter(|d| d.applies_to(&key, &b.name)) {
            for ep in endpoints.iter().filter(|e| d.matches(e)) {
                let addr = SocketAddr::new(ep.address, ep.port);
                entry.0.insert(addr);
                per_drill.entry(d.drill.as_str()).or_default().insert(addr);
            }
        }
    });
    found
        .into_iter()
        .filter_map(|(name, (drained, policy))| {
            let prev = previous.and_then(|p| p.get(name)).map(Arc::as_ref);
            backend_view(drained, policy, prev, now).map(|v| (name.to_string(), v))
        })
        .collect()
}

/// Whether drain `d` applies to requests for east-west backend `backend` (the receiving proxy
/// cannot check a Gateway scope; see the module docs).
pub fn applies_east_west(d: &Drain, backend: &str) -> bool {
    if d.backends.is_empty() {
        d.gateways.is_empty()
    } else {
        d.backends.iter().any(|b| b == backend)
    }
}

/// Drain views of the snapshot's east-west backends.
fn east_west_drains<'a>(
    snapshot: &'a Snapshot,
    previous: Option<&HashMap<String, Arc<BackendDrain>>>,
    now: Instant,
    per_drill: &mut HashMap<&'a str, HashSet<SocketAddr>>,
) -> HashMap<String, Arc<BackendDrain>> {
    let mut out = HashMap::new();
    for b in &snapshot.east_west {
        let mut drained = HashSet::new();
        for d in snapshot
            .drains
            .iter()
            .filter(|d| applies_east_west(d, &b.name))
        {
            for ep in b.endpoints.iter().filter(|e| d.matches(e)) {
                let addr = SocketAddr::new(ep.address, ep.port);
                drained.insert(addr);
                per_drill.entry(d.drill.as_str()).or_default().insert(addr);
            }
        }
        let prev = previous.and_then(|p| p.get(&b.name)).map(Arc::as_ref);
        if let Some(v) = backend_view(drained, b.failover.as_deref(), prev, now) {
            out.insert(b.name.clone(), v);
        }
    }
    out
}

/// The drain view of one backend: `drained` now, plus what `previous` drained (or was already
/// returning) and is not drained any more, returning through `policy`'s failback. `None` when
/// nothing is drained or returning.
fn backend_view(
    drained: HashSet<SocketAddr>,
    policy: Option<&FailoverPolicy>,
    previous: Option<&BackendDrain>,
    now: Instant,
) -> Option<Arc<BackendDrain>> {
    let mut lifted: HashMap<SocketAddr, Lifted> = HashMap::new();
    if let Some(prev) = previous {
        let failback = policy.and_then(|p| p.failback.as_deref());
        let back = Lifted {
            at: now,
            hysteresis: failback.map_or(Duration::ZERO, |f| Duration::from_millis(f.hysteresis_ms)),
            slow_start: failback.map_or(Duration::ZERO, |f| Duration::from_millis(f.slow_start_ms)),
        };
        for (addr, l) in &prev.lifted {
            if !drained.contains(addr) && !l.over(now) {
                lifted.insert(*addr, *l);
            }
        }
        if !back.over(now) {
            for addr in prev.drained.iter().filter(|a| !drained.contains(a)) {
                lifted.insert(*addr, back);
            }
        }
    }
    (!drained.is_empty() || !lifted.is_empty()).then(|| Arc::new(BackendDrain { drained, lifted }))
}

/// Logs the drains that start and stop applying with a new snapshot.
pub(crate) fn log_changes(old: &[Drain], new: &[Drain], table: &GatewayTable) {
    for d in new.iter().filter(|d| !old.contains(d)) {
        tracing::info!(
            drill = %d.drill,
            cluster = d.cluster.as_deref().unwrap_or("*"),
            region = d.region.as_deref().unwrap_or("*"),
            zone = d.zone.as_deref().unwrap_or("*"),
            gateways = ?d.gateways,
            backends = ?d.backends,
            drained_endpoints = table.drained_per_drill.get(&d.drill).copied().unwrap_or(0),
            "drain applied: matching endpoints are treated as failed"
        );
    }
    for d in old.iter().filter(|d| !new.contains(d)) {
        tracing::info!(
            drill = %d.drill,
            cluster = d.cluster.as_deref().unwrap_or("*"),
            region = d.region.as_deref().unwrap_or("*"),
            zone = d.zone.as_deref().unwrap_or("*"),
            "drain lifted: endpoints return through failback"
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn ep(port: u16, region: &str) -> serde_json::Value {
        json!({"address": "127.0.0.1", "port": port, "cluster": region, "region": region, "zone": "a"})
    }

    fn sa(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Gateways `ns/a` and `ns/b`, each with backends `x` and `y` (same endpoints: 1 and 2 in
    /// east, 3 in west); `x` has a failback policy of 1 s hysteresis and 2 s slow start.
    fn snap(drains: serde_json::Value) -> Snapshot {
        let eps = json!([ep(1, "east"), ep(2, "east"), ep(3, "west")]);
        let backends = json!([
            {"name": "x", "target": {"type": "endpoints", "endpoints": eps,
                "failover": {"failback": {"hysteresisMs": 1000, "slowStartMs": 2000}}}},
            {"name": "y", "target": {"type": "endpoints", "endpoints": eps}},
        ]);
        let gw = |name: &str| {
            json!({"namespace": "ns", "name": name, "servedByHeader": name == "a", "listeners": [{
                "name": "l", "address": "127.0.0.1", "port": 8080, "protocol": "HTTP",
                "routes": [{"namespace": "ns", "name": "r", "rules": [{"backends": backends}]}],
            }]})
        };
        serde_json::from_value(json!({
            "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
            "generation": 1,
            "gateways": [gw("a"), gw("b")],
            "drains": drains,
        }))
        .unwrap()
    }

    #[test]
    fn drains_are_scoped_to_gateways_and_backends() {
        let reg = TrafficRegistry::default();
        let now = Instant::now();
        let t = GatewayTable::build(
            &snap(
                json!([{"drill": "ns/d", "region": "east", "gateways": ["ns/a"], "backends": ["x"]}]),
            ),
            None,
            &reg,
            now,
        );
        let a = t.gateway("ns", "a").unwrap();
        assert!(a.served_by_header);
        let x = a.backend_drain("x").unwrap();
        assert_eq!(x.state(&sa(1), now), DrainState::Drained);
        assert_eq!(x.state(&sa(2), now), DrainState::Drained);
        assert_eq!(x.state(&sa(3), now), DrainState::Clear);
        assert!(a.backend_drain("y").is_none(), "other backend");
        let b = t.gateway("ns", "b").unwrap();
        assert!(!b.served_by_header);
        assert!(b.backend_drain("x").is_none(), "other gateway");
        assert_eq!(t.drained_per_drill.get("ns/d"), Some(&2));
        assert!(t.gateway("ns", "c").is_none());
    }

    #[test]
    fn a_lifted_drain_returns_through_hysteresis_then_slow_start() {
        let reg = TrafficRegistry::default();
        let t0 = Instant::now();
        let drained = GatewayTable::build(
            &snap(json!([{"drill": "ns/d", "region": "east"}])),
            None,
            &reg,
            t0,
        );
        let cell = drained.gateway("ns", "a").unwrap().traffic.clone();
        let t1 = t0 + Duration::from_secs(10);
        let lifted = GatewayTable::build(&snap(json!([])), Some(&drained), &reg, t1);
        let a = lifted.gateway("ns", "a").unwrap();
        assert!(Arc::ptr_eq(&cell, &a.traffic), "counters survive a swap");
        assert!(lifted.drained_per_drill.is_empty());
        let x = a.backend_drain("x").unwrap();
        assert_eq!(x.state(&sa(1), t1), DrainState::Held);
        assert_eq!(
            x.state(&sa(1), t1 + Duration::from_millis(999)),
            DrainState::Held
        );
        match x.state(&sa(1), t1 + Duration::from_secs(2)) {
            DrainState::Ramp(r) => assert!((r - 0.5).abs() < 1e-9, "{r}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            x.state(&sa(1), t1 + Duration::from_secs(3)),
            DrainState::Clear
        );
        assert_eq!(x.state(&sa(3), t1), DrainState::Clear, "never drained");
        // Without a failback policy the endpoint is back at once.
        assert!(a.backend_drain("y").is_none());

        // A later snapshot keeps the ramp going, and drops it once it is over.
        let t2 = t1 + Duration::from_millis(1500);
        let later = GatewayTable::build(&snap(json!([])), Some(&lifted), &reg, t2);
        let x2 = later
            .gateway("ns", "a")
            .unwrap()
            .backend_drain("x")
            .unwrap();
        assert_eq!(x2.state(&sa(1), t2), x.state(&sa(1), t2));
        let t3 = t1 + Duration::from_secs(4);
        let done = GatewayTable::build(&snap(json!([])), Some(&later), &reg, t3);
        assert!(
            done.gateway("ns", "a")
                .unwrap()
                .backend_drain("x")
                .is_none()
        );
        assert!(!done.any_drain_view());

        // Drained again while returning: drained wins.
        let again = GatewayTable::build(
            &snap(json!([{"drill": "ns/e", "zone": "a", "cluster": "east"}])),
            Some(&lifted),
            &reg,
            t2,
        );
        let x3 = again
            .gateway("ns", "a")
            .unwrap()
            .backend_drain("x")
            .unwrap();
        assert_eq!(x3.state(&sa(1), t2), DrainState::Drained);
    }

    /// A receiver's snapshot: east-west backends `x` (endpoints 1, 2 in zone `a`, 3 in zone `b`,
    /// failback 1 s hysteresis) and `y` (the same endpoints, no policy), and `drains`.
    fn receiver(drains: serde_json::Value) -> Snapshot {
        let zep = |port: u16, zone: &str| json!({"address": "127.0.0.1", "port": port, "cluster": "west", "region": "eu-west", "zone": zone});
        let eps = json!([zep(1, "a"), zep(2, "a"), zep(3, "b")]);
        serde_json::from_value(json!({
            "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
            "generation": 1,
            "eastWest": [
                {"name": "x", "endpoints": eps, "failover": {"failback": {"hysteresisMs": 1000}}},
                {"name": "y", "endpoints": eps},
            ],
            "drains": drains,
        }))
        .unwrap()
    }

    #[test]
    fn east_west_scope_ignores_gateways_unless_the_backend_is_named() {
        let d = |gateways: &[&str], backends: &[&str]| Drain {
            drill: "ns/d".into(),
            cluster: None,
            region: None,
            zone: Some("a".into()),
            gateways: gateways.iter().map(|s| s.to_string()).collect(),
            backends: backends.iter().map(|s| s.to_string()).collect(),
        };
        assert!(applies_east_west(&d(&[], &[]), "x"));
        assert!(applies_east_west(&d(&[], &["x"]), "x"));
        assert!(!applies_east_west(&d(&[], &["y"]), "x"));
        assert!(applies_east_west(&d(&["ns/gw"], &["x"]), "x"));
        assert!(!applies_east_west(&d(&["ns/gw"], &["y"]), "x"));
        assert!(!applies_east_west(&d(&["ns/gw"], &[]), "x"));
    }

    #[test]
    fn east_west_backends_are_drained_and_return_through_failback() {
        let reg = TrafficRegistry::default();
        let t0 = Instant::now();
        let t = GatewayTable::build(
            &receiver(json!([{"drill": "ns/d", "zone": "a"}])),
            None,
            &reg,
            t0,
        );
        for name in ["x", "y"] {
            let v = t.east_west_drain(name).unwrap();
            assert_eq!(v.state(&sa(1), t0), DrainState::Drained, "{name}");
            assert_eq!(v.state(&sa(2), t0), DrainState::Drained, "{name}");
            assert_eq!(v.state(&sa(3), t0), DrainState::Clear, "{name}");
        }
        assert!(t.east_west_drain("z").is_none());
        assert_eq!(t.drained_per_drill.get("ns/d"), Some(&2));

        // Scoped: a Gateway-scoped drain naming `x` drains `x` only; one naming no backend
        // drains nothing here.
        let t = GatewayTable::build(
            &receiver(json!([
                {"drill": "ns/d", "zone": "a", "gateways": ["ns/gw"], "backends": ["x"]},
                {"drill": "ns/e", "zone": "b", "gateways": ["ns/gw"]},
            ])),
            None,
            &reg,
            t0,
        );
        let x = t.east_west_drain("x").unwrap();
        assert!(x.is_drained(&sa(1)) && !x.is_drained(&sa(3)));
        assert!(t.east_west_drain("y").is_none());
        assert_eq!(t.drained_per_drill.get("ns/e"), None);

        // Lifted: `x` is held for its hysteresis, `y` (no policy) is back at once.
        let t1 = t0 + Duration::from_secs(5);
        let lifted = GatewayTable::build(&receiver(json!([])), Some(&t), &reg, t1);
        let x = lifted.east_west_drain("x").unwrap();
        assert_eq!(x.state(&sa(1), t1), DrainState::Held);
        assert_eq!(
            x.state(&sa(1), t1 + Duration::from_secs(1)),
            DrainState::Clear
        );
        assert!(lifted.east_west_drain("y").is_none());
        let done = GatewayTable::build(
            &receiver(json!([])),
            Some(&lifted),
            &reg,
            t1 + Duration::from_secs(2),
        );
        assert!(done.east_west_drain("x").is_none());
        assert!(!done.any_drain_view());
    }
}
