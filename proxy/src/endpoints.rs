//! Endpoint choice for one request try, and the per-endpoint health the choice is based on.
//!
//! 1. [`locality::plan`] ranks the backend's ready endpoints by the proxy's locality (same zone,
//!    same region, then the failover order) and applies the geo-fence.
//! 2. [`locality::select`] picks: weighted shares, then the first eligible tier (spill rule,
//!    slow start), then any usable endpoint, and only when *every* endpoint is ejected the one
//!    ejected longest ago. There is no ejection cap: a whole region can be ejected and its traffic
//!    moves to the next tier.
//!
//! Health ([`Ejections`]) has two inputs:
//! - passive: a connect refusal, reset or timeout (or N consecutive 5xx with outlier detection)
//!   ejects the endpoint at once, for a minimum time that doubles on each repeated ejection
//!   ([`BASE_EJECTION`] … [`MAX_EJECTION`]). Each [`BACKOFF_DECAY`] an endpoint stays admitted
//!   undoes one doubling, and [`BACKOFF_RESET`] undoes them all: a flapping endpoint stays out
//!   longer and longer, while one that failed twice a minute apart (a region down in two
//!   drills) is out for the base time again;
//! - active: the health checker (`health.rs`) probes every known endpoint. An ejected endpoint is
//!   re-admitted only after its minimum time is over *and* probes succeed (for the failback
//!   hysteresis, if any); failed probes of a healthy endpoint eject it.
//!
//! After re-admission an endpoint may slow-start: its `ramp` grows from 0 to 1 over the
//! slow-start window and [`locality::select`] skips its tier with the remaining probability.
//!
//! Health is kept per [`EndpointKey`]: the address for an ordinary endpoint, the address *and the
//! backend* for an east-west endpoint (a remote proxy's east-west listener serves every backend of
//! its network, and one of them failing there must not take the proxy out for the others).
//!
//! Failover drills add a third input per (Gateway, backend): drained endpoints
//! ([`crate::drain::BackendDrain`]) are treated as failed without touching the health state above,
//! and come back through the same hysteresis and slow start when the drain is lifted.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use meridian_model::locality::{self, Avail, Locality};
use meridian_model::snapshot::{Endpoint, FailoverPolicy};
use rand::Rng;

use crate::drain::{BackendDrain, DrainState};

/// First ejection time.
pub const BASE_EJECTION: Duration = Duration::from_secs(1);
/// Cap of the backed-off ejection time.
pub const MAX_EJECTION: Duration = Duration::from_secs(30);
/// An endpoint healthy this long after re-admission starts its backoff from scratch.
pub const BACKOFF_RESET: Duration = Duration::from_secs(30);
/// Each stretch this long that an endpoint stays admitted undoes one doubling of its backoff.
pub const BACKOFF_DECAY: Duration = Duration::from_secs(10);

/// The backoff count an endpoint re-admitted `admitted` ago starts its next ejection from.
fn decayed(ejections: u32, admitted: Duration) -> u32 {
    if admitted >= BACKOFF_RESET {
        return 0;
    }
    let steps = admitted.as_millis() / BACKOFF_DECAY.as_millis();
    ejections.saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX))
}
/// Kept for callers that eject for a fixed time.
pub const EJECTION_TIME: Duration = BASE_EJECTION;

/// Whose health an entry of [`Ejections`] describes.
///
/// An ordinary endpoint is one backend process: its address is its identity. An east-west endpoint
/// (`Endpoint::east_west`) is a remote proxy's listener that serves *every* backend of its network,
/// so its health is kept per backend: a backend without endpoints over there is ejected for that
/// backend only, while a proxy that is down is found (by a connect failure or probe) for each
/// backend that uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    /// The address connected to.
    pub addr: SocketAddr,
    /// 0 for an ordinary endpoint, else a (never 0) hash of the backend name.
    scope: u64,
}

impl EndpointKey {
    /// The key of an east-west endpoint at `addr` used by backend `backend`.
    pub fn east_west(addr: SocketAddr, backend: &str) -> Self {
        EndpointKey {
            addr,
            scope: backend_scope(backend),
        }
    }

    /// The key of `e` as an endpoint of backend `backend`.
    pub fn of(e: &Endpoint, backend: &str) -> Self {
        let addr = SocketAddr::new(e.address, e.port);
        if e.east_west {
            Self::east_west(addr, backend)
        } else {
            addr.into()
        }
    }

    /// Whether the key is per backend (an east-west endpoint).
    pub fn is_east_west(&self) -> bool {
        self.scope != 0
    }
}

impl From<SocketAddr> for EndpointKey {
    fn from(addr: SocketAddr) -> Self {
        EndpointKey { addr, scope: 0 }
    }
}

impl From<&SocketAddr> for EndpointKey {
    fn from(addr: &SocketAddr) -> Self {
        (*addr).into()
    }
}

impl std::fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_east_west() {
            write!(f, "{} (east-west)", self.addr)
        } else {
            write!(f, "{}", self.addr)
        }
    }
}

/// The scope of a backend's east-west keys: a 64-bit hash (the same in every process run, as
/// `DefaultHasher::new` is), never 0. A collision would only make two backends share the health
/// state of one remote proxy.
fn backend_scope(backend: &str) -> u64 {
    let mut h = DefaultHasher::new();
    backend.hash(&mut h);
    h.finish() | 1
}

#[derive(Debug, Clone, Copy)]
struct Ejected {
    /// Global ejection order (smaller = longer ago).
    seq: u64,
    /// When it was ejected (the failover time metric, failover.rs).
    since: Instant,
    /// Not re-admitted before this, whatever the probes say.
    min_until: Instant,
    /// Consecutive successful probes since `min_until` (or since ejection).
    probe_ok: u32,
    /// When the current run of successful probes started.
    ok_since: Option<Instant>,
    /// Wall-clock time of the ejection (reported to the controller).
    at: SystemTime,
    /// What ejected it.
    cause: Cause,
    /// The failures that ejected it, plus failed probes since.
    failures: u32,
}

/// What ejected an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Failed active health checks.
    Probe,
    /// Failed requests (connect refused, reset or timed out; consecutive 5xx).
    Passive,
}

/// An ejection as [`Ejections::ejected_now`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectionInfo {
    /// Wall-clock time of the ejection.
    pub since: SystemTime,
    /// What ejected it.
    pub cause: Cause,
    /// The failures that ejected it, plus failed probes since.
    pub failures: u32,
}

#[derive(Debug, Clone, Default)]
struct State {
    ejected: Option<Ejected>,
    /// Consecutive ejections (backoff exponent).
    ejections: u32,
    /// When it was last re-admitted, and the slow-start window then.
    readmitted: Option<(Instant, Duration)>,
    /// Consecutive failed probes while healthy.
    probe_fail: u32,
    /// Consecutive 5xx responses.
    consecutive_5xx: u32,
}

/// What re-admission requires, from the backend's policy (or the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readmit {
    /// Consecutive successful probes.
    pub healthy_threshold: u32,
    /// Probes must have succeeded for this long.
    pub hysteresis: Duration,
    /// Traffic ramps over this window afterwards.
    pub slow_start: Duration,
    /// Consecutive failed probes that eject a healthy endpoint.
    pub unhealthy_threshold: u32,
}

impl Default for Readmit {
    fn default() -> Self {
        Readmit {
            healthy_threshold: 1,
            hysteresis: Duration::ZERO,
            slow_start: Duration::ZERO,
            unhealthy_threshold: 2,
        }
    }
}

/// What a probe result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Nothing.
    Unchanged,
    /// The endpoint was re-admitted.
    Readmitted,
    /// The endpoint was ejected.
    Ejected,
}

/// Health of every endpoint the proxy has an opinion about (absent = healthy).
#[derive(Debug, Default)]
pub struct Ejections {
    map: Mutex<HashMap<EndpointKey, State>>,
    /// Entries in `map`: lets the request path skip the lock in the common all-healthy case.
    entries: AtomicUsize,
    seq: AtomicU64,
}

fn backoff(base: Duration, max: Duration, n: u32) -> Duration {
    let factor = 1u32 << n.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(max)
}

impl Ejections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EndpointKey, State>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, map: &HashMap<EndpointKey, State>) {
        self.entries.store(map.len(), Ordering::Release);
    }

    /// Ejects `addr` now with the default backoff. Returns whether it was not ejected before.
    pub fn eject(&self, addr: impl Into<EndpointKey>) -> bool {
        self.eject_backoff(addr, BASE_EJECTION, MAX_EJECTION)
    }

    /// Ejects `addr` now for `base · 2^(n-1)` (capped at `max`), `n` counting repeated ejections.
    pub fn eject_backoff(
        &self,
        addr: impl Into<EndpointKey>,
        base: Duration,
        max: Duration,
    ) -> bool {
        self.eject_as(addr.into(), base, max, Cause::Passive)
    }

    fn eject_as(&self, addr: EndpointKey, base: Duration, max: Duration, cause: Cause) -> bool {
        let now = Instant::now();
        let mut map = self.lock();
        let s = map.entry(addr).or_default();
        let fresh = s.ejected.is_none();
        // The run of failures that led here (a connect failure is one).
        let failures = s.probe_fail.max(s.consecutive_5xx).max(1);
        if fresh {
            if let Some((at, _)) = s.readmitted {
                s.ejections = decayed(s.ejections, now.duration_since(at));
            }
            s.ejections = s.ejections.saturating_add(1);
            s.ejected = Some(Ejected {
                seq: self.seq.fetch_add(1, Ordering::Relaxed),
                since: now,
                min_until: now + backoff(base, max, s.ejections),
                probe_ok: 0,
                ok_since: None,
                at: SystemTime::now(),
                cause,
                failures,
            });
        }
        s.probe_fail = 0;
        s.consecutive_5xx = 0;
        self.publish(&map);
        fresh
    }

    /// Ejects `addr` for exactly `duration` (no backoff bookkeeping beyond the count).
    pub fn eject_for(&self, addr: impl Into<EndpointKey>, duration: Duration) -> bool {
        self.eject_backoff(addr, duration, duration)
    }

    /// Whether `addr` is ejected right now.
    pub fn is_ejected(&self, addr: impl Into<EndpointKey>) -> bool {
        if self.entries.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.lock()
            .get(&addr.into())
            .is_some_and(|s| s.ejected.is_some())
    }

    /// When `addr` was ejected, if it is ejected right now.
    pub fn ejected_since(&self, addr: impl Into<EndpointKey>) -> Option<Instant> {
        if self.entries.load(Ordering::Acquire) == 0 {
            return None;
        }
        Some(self.lock().get(&addr.into())?.ejected?.since)
    }

    /// Number of endpoints ejected right now.
    pub fn count(&self) -> usize {
        self.lock().values().filter(|s| s.ejected.is_some()).count()
    }

    /// Every endpoint ejected right now, with when, why and how many failures (read-only: the
    /// health view reported to the controller).
    pub fn ejected_now(&self) -> Vec<(EndpointKey, EjectionInfo)> {
        if self.entries.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let mut out: Vec<(EndpointKey, EjectionInfo)> = self
            .lock()
            .iter()
            .filter_map(|(k, s)| {
                let e = s.ejected?;
                Some((
                    *k,
                    EjectionInfo {
                        since: e.at,
                        cause: e.cause,
                        failures: e.failures,
                    },
                ))
            })
            .collect();
        out.sort_by_key(|(k, _)| *k);
        out
    }

    /// Records one active probe result.
    pub fn probe_result(
        &self,
        addr: impl Into<EndpointKey>,
        ok: bool,
        cfg: &Readmit,
    ) -> ProbeOutcome {
        let addr = addr.into();
        let now = Instant::now();
        let mut map = self.lock();
        let out = match map.get_mut(&addr) {
            None if ok => ProbeOutcome::Unchanged,
            None => {
                let s = map.entry(addr).or_default();
                s.probe_fail = 1;
                ProbeOutcome::Unchanged
            }
            Some(s) => match (&mut s.ejected, ok) {
                (Some(e), true) => {
                    let since = *e.ok_since.get_or_insert(now);
                    e.probe_ok = e.probe_ok.saturating_add(1);
                    if now >= e.min_until
                        && e.probe_ok >= cfg.healthy_threshold.max(1)
                        && now.duration_since(since) >= cfg.hysteresis
                    {
                        s.ejected = None;
                        s.readmitted = Some((now, cfg.slow_start));
                        s.probe_fail = 0;
                        ProbeOutcome::Readmitted
                    } else {
                        ProbeOutcome::Unchanged
                    }
                }
                (Some(e), false) => {
                    e.probe_ok = 0;
                    e.ok_since = None;
                    e.failures = e.failures.saturating_add(1);
                    ProbeOutcome::Unchanged
                }
                (None, true) => {
                    s.probe_fail = 0;
                    ProbeOutcome::Unchanged
                }
                (None, false) => {
                    s.probe_fail = s.probe_fail.saturating_add(1);
                    if s.probe_fail >= cfg.unhealthy_threshold.max(1) {
                        ProbeOutcome::Ejected
                    } else {
                        ProbeOutcome::Unchanged
                    }
                }
            },
        };
        drop(map);
        if out == ProbeOutcome::Ejected {
            self.eject_as(addr, BASE_EJECTION, MAX_EJECTION, Cause::Probe);
        } else {
            self.tidy(now);
        }
        out
    }

    /// Records a response status for outlier detection; returns whether it ejected `addr`.
    pub fn response(
        &self,
        addr: impl Into<EndpointKey>,
        status: u16,
        threshold: u32,
        base: Duration,
        max: Duration,
    ) -> bool {
        if threshold == 0 {
            return false;
        }
        let addr = addr.into();
        let server_error = (500..600).contains(&status);
        if !server_error && self.entries.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut map = self.lock();
        let eject = if server_error {
            let s = map.entry(addr).or_default();
            s.consecutive_5xx = s.consecutive_5xx.saturating_add(1);
            s.consecutive_5xx >= threshold && s.ejected.is_none()
        } else {
            if let Some(s) = map.get_mut(&addr) {
                s.consecutive_5xx = 0;
            }
            false
        };
        self.publish(&map);
        drop(map);
        eject && self.eject_backoff(addr, base, max)
    }

    /// Drops entries that carry no information any more (healthy, no ramp, no counters).
    fn tidy(&self, now: Instant) {
        let mut map = self.lock();
        map.retain(|_, s| {
            s.ejected.is_some()
                || s.probe_fail > 0
                || s.consecutive_5xx > 0
                // Kept while its backoff count or its slow start still matter.
                || s.readmitted.is_some_and(|(at, window)| {
                    now.duration_since(at) < BACKOFF_RESET.max(window)
                })
        });
        self.publish(&map);
    }

    /// Forgets endpoints that are no longer in any snapshot.
    pub fn retain_known(&self, known: &impl Fn(&EndpointKey) -> bool) {
        let mut map = self.lock();
        map.retain(|a, _| known(a));
        self.publish(&map);
    }

    /// How `addr` looks to [`locality::select`].
    fn avail(
        map: &HashMap<EndpointKey, State>,
        addr: &EndpointKey,
        tried: bool,
        now: Instant,
    ) -> Avail {
        match map.get(addr) {
            Some(State {
                ejected: Some(e), ..
            }) => {
                if tried {
                    Avail::TriedEjected
                } else {
                    Avail::Ejected { ejected_at: e.seq }
                }
            }
            _ if tried => Avail::Tried,
            Some(State {
                readmitted: Some((at, window)),
                ..
            }) if !window.is_zero() && now.duration_since(*at) < *window => Avail::Usable {
                // Never quite zero, so a returning tier gets a trickle at once.
                ramp: (now.duration_since(*at).as_secs_f64() / window.as_secs_f64()).max(0.01),
            },
            _ => Avail::Usable { ramp: 1.0 },
        }
    }
}

/// Where the proxy choosing stands: its locality, and the other regions nearest first as it
/// measured them (health.rs, [`locality::nearest_order`]; empty: alphabetical).
#[derive(Debug, Clone, Copy)]
pub struct Vantage<'a> {
    /// The proxy's locality.
    pub me: &'a Locality,
    /// Regions nearest first.
    pub nearest: &'a [String],
}

impl<'a> Vantage<'a> {
    /// `me` without a measured order.
    pub fn at(me: &'a Locality) -> Self {
        Vantage { me, nearest: &[] }
    }
}

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoEndpoint {
    /// The backend has no ready endpoint at all, none inside its geo-fence, or every one is
    /// drained (503).
    NoneReady,
    /// Every ready endpoint was already tried by this request.
    AllTried,
}

/// Picks the endpoint for the next try; returns its index in `endpoints`.
///
/// `drain` is the drills' view of this backend (see `drain.rs`): a drained endpoint looks like an
/// ejected one this request already tried (never picked, counted as unhealthy by the spill rule,
/// not a last resort), a drain-lifted one like an ejected one until its failback hysteresis is
/// over and then like a slow-starting one. `backend` (the backend's name) scopes the health of
/// east-west endpoints ([`EndpointKey`]).
pub fn choose(
    endpoints: &[Endpoint],
    backend: &str,
    Vantage { me, nearest }: Vantage<'_>,
    policy: Option<&FailoverPolicy>,
    ejections: &Ejections,
    tried: &[SocketAddr],
    drain: Option<&BackendDrain>,
) -> Result<usize, NoEndpoint> {
    let plan = locality::plan(endpoints, me, policy, nearest);
    if plan.tiers.is_empty() {
        return Err(NoEndpoint::NoneReady);
    }
    let addr = |i: usize| SocketAddr::new(endpoints[i].address, endpoints[i].port);
    let drain = drain.filter(|d| !d.is_empty());
    let mut rng = rand::rng();
    let mut roll = || rng.random::<f64>();
    let picked = if ejections.entries.load(Ordering::Acquire) == 0 && drain.is_none() {
        locality::select(
            &plan,
            |i| {
                if tried.contains(&addr(i)) {
                    Avail::Tried
                } else {
                    Avail::Usable { ramp: 1.0 }
                }
            },
            &mut roll,
        )
    } else {
        let now = Instant::now();
        let scope = endpoints
            .iter()
            .any(|e| e.east_west)
            .then(|| backend_scope(backend));
        let map = ejections.lock();
        locality::select(
            &plan,
            |i| {
                let a = addr(i);
                let key = match scope {
                    Some(scope) if endpoints[i].east_west => EndpointKey { addr: a, scope },
                    _ => a.into(),
                };
                let was_tried = tried.contains(&a);
                let health = Ejections::avail(&map, &key, was_tried, now);
                with_drain(
                    health,
                    drain.map_or(DrainState::Clear, |d| d.state(&a, now)),
                )
            },
            &mut roll,
        )
    };
    match picked {
        Some(i) => Ok(i),
        // Nothing tried and nothing to pick: every allowed endpoint is drained.
        None if tried.is_empty() => Err(NoEndpoint::NoneReady),
        None => Err(NoEndpoint::AllTried),
    }
}

/// An endpoint's availability by health (`health`) as a drill sees it (`state`): drained looks
/// ejected and tried, held (lifted, failback hysteresis running) looks ejected, ramping caps the
/// slow-start share.
fn with_drain(health: Avail, state: DrainState) -> Avail {
    match state {
        DrainState::Clear => health,
        DrainState::Drained => Avail::TriedEjected,
        DrainState::Held => match health {
            Avail::Tried | Avail::TriedEjected => Avail::TriedEjected,
            Avail::Ejected { ejected_at } => Avail::Ejected { ejected_at },
            // Healthy but not re-admitted yet: the first fallback candidate.
            Avail::Usable { .. } => Avail::Ejected { ejected_at: 0 },
        },
        DrainState::Ramp(r) => match health {
            Avail::Usable { ramp } => Avail::Usable { ramp: ramp.min(r) },
            other => other,
        },
    }
}

/// The address of `endpoints[i]`.
pub fn address(endpoints: &[Endpoint], i: usize) -> Option<SocketAddr> {
    endpoints.get(i).map(|e| SocketAddr::new(e.address, e.port))
}

/// Number of distinct ready endpoints (bounds connect-failure failover).
pub fn ready_count(endpoints: &[Endpoint]) -> usize {
    endpoints.iter().filter(|e| e.ready).count()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn ep(n: u8, region: &str, zone: &str, ready: bool) -> Endpoint {
        Endpoint {
            address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)),
            port: 80,
            cluster: String::new(),
            region: region.into(),
            zone: zone.into(),
            ready,
            east_west: false,
        }
    }

    fn sa(n: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), 80)
    }

    /// `super::choose` without drains, answering the address.
    fn choose(
        eps: &[Endpoint],
        me: &Locality,
        policy: Option<&FailoverPolicy>,
        e: &Ejections,
        tried: &[SocketAddr],
    ) -> Result<SocketAddr, NoEndpoint> {
        super::choose(eps, "b", Vantage::at(me), policy, e, tried, None)
            .map(|i| address(eps, i).unwrap())
    }

    fn choose_drained(
        eps: &[Endpoint],
        policy: Option<&FailoverPolicy>,
        e: &Ejections,
        tried: &[SocketAddr],
        drain: &BackendDrain,
    ) -> Result<SocketAddr, NoEndpoint> {
        super::choose(eps, "b", Vantage::at(&me()), policy, e, tried, Some(drain))
            .map(|i| address(eps, i).unwrap())
    }

    #[test]
    fn drained_endpoints_are_never_picked_and_their_tier_spills() {
        let eps = [
            ep(1, "r1", "z1", true),
            ep(2, "r1", "z2", true),
            ep(3, "r2", "x", true),
            ep(4, "r2", "y", true),
        ];
        let e = Ejections::default();
        // The local zone drained: the rest of the region serves.
        let zone = BackendDrain::new([sa(1)], []);
        for _ in 0..50 {
            assert_eq!(choose_drained(&eps, None, &e, &[], &zone).unwrap(), sa(2));
        }
        // The whole region drained: the next tier, and retries stay there.
        let region = BackendDrain::new([sa(1), sa(2)], []);
        for _ in 0..50 {
            let first = choose_drained(&eps, None, &e, &[], &region).unwrap();
            assert!(first == sa(3) || first == sa(4), "{first}");
            let other = if first == sa(3) { sa(4) } else { sa(3) };
            assert_eq!(
                choose_drained(&eps, None, &e, &[first], &region).unwrap(),
                other
            );
            assert_eq!(
                choose_drained(&eps, None, &e, &[sa(3), sa(4)], &region),
                Err(NoEndpoint::AllTried)
            );
        }
        // Everything else ejected: an ejected endpoint is the last resort, a drained one never.
        e.eject(sa(3));
        e.eject(sa(4));
        assert_eq!(choose_drained(&eps, None, &e, &[], &region).unwrap(), sa(3));
        // Everything drained: no endpoint at all (503), not "all tried".
        let all = BackendDrain::new([sa(1), sa(2), sa(3), sa(4)], []);
        assert_eq!(
            choose_drained(&eps, None, &Ejections::default(), &[], &all),
            Err(NoEndpoint::NoneReady)
        );
        // The spill rule counts a drained endpoint as unhealthy: with 60 % required, one of two
        // drained moves the tier's traffic on.
        let spill = FailoverPolicy {
            min_healthy_percent: 60,
            ..Default::default()
        };
        let two_local = [
            ep(1, "r1", "z1", true),
            ep(2, "r1", "z1", true),
            ep(3, "r2", "x", true),
        ];
        let one = BackendDrain::new([sa(1)], []);
        for _ in 0..50 {
            assert_eq!(
                choose_drained(&two_local, Some(&spill), &Ejections::default(), &[], &one).unwrap(),
                sa(3)
            );
        }
    }

    #[test]
    fn a_lifted_drain_holds_then_ramps() {
        let eps = [ep(1, "r1", "z1", true), ep(2, "r2", "x", true)];
        let e = Ejections::default();
        let held = BackendDrain::new(
            [],
            [(
                sa(1),
                crate::drain::Lifted {
                    at: Instant::now(),
                    hysteresis: Duration::from_secs(100),
                    slow_start: Duration::ZERO,
                },
            )],
        );
        for _ in 0..50 {
            assert_eq!(choose_drained(&eps, None, &e, &[], &held).unwrap(), sa(2));
        }
        // Held but the only candidate left: like an ejected endpoint, it is the last resort.
        e.eject(sa(2));
        assert_eq!(choose_drained(&eps, None, &e, &[], &held).unwrap(), sa(1));
        // Ramping at the very start of a long slow start: the next tier gets nearly everything.
        let ramp = BackendDrain::new(
            [],
            [(
                sa(1),
                crate::drain::Lifted {
                    at: Instant::now(),
                    hysteresis: Duration::ZERO,
                    slow_start: Duration::from_secs(1000),
                },
            )],
        );
        let e = Ejections::default();
        // About 1 % (the ramp's floor): 20 of 2000 expected; never none at all (p ≈ 2e-9).
        let local = (0..2000)
            .filter(|_| choose_drained(&eps, None, &e, &[], &ramp).unwrap() == sa(1))
            .count();
        assert!(local < 100, "{local} of 2000 on the ramping tier");
        assert!(local > 0, "a trickle reaches the ramping tier at once");
    }

    fn me() -> Locality {
        Locality {
            cluster: "c".into(),
            region: "r1".into(),
            zone: "z1".into(),
        }
    }

    #[test]
    fn same_zone_endpoint_is_preferred() {
        let eps = [ep(1, "r2", "x", true), ep(2, "r1", "z1", true)];
        let e = Ejections::default();
        for _ in 0..20 {
            assert_eq!(choose(&eps, &me(), None, &e, &[]).unwrap(), sa(2));
        }
    }

    #[test]
    fn a_fully_ejected_tier_falls_to_the_next_tier_then_least_recently_ejected() {
        let eps = [
            ep(1, "r1", "z1", true),
            ep(2, "r1", "z1", true),
            ep(3, "r2", "x", true),
        ];
        let e = Ejections::default();
        assert!(e.eject(sa(1)));
        assert!(!e.eject(sa(1)), "already ejected");
        for _ in 0..20 {
            assert_eq!(choose(&eps, &me(), None, &e, &[]).unwrap(), sa(2));
        }
        // The whole local tier ejected: the next tier serves every request (no cap, no panic
        // mode inside a tier).
        e.eject(sa(2));
        for _ in 0..20 {
            assert_eq!(choose(&eps, &me(), None, &e, &[]).unwrap(), sa(3));
        }
        // Everything ejected: the one ejected longest ago.
        e.eject(sa(3));
        assert_eq!(choose(&eps, &me(), None, &e, &[]).unwrap(), sa(1));
        assert_eq!(choose(&eps, &me(), None, &e, &[sa(1)]).unwrap(), sa(2));
        assert_eq!(
            choose(&eps, &me(), None, &e, &[sa(1), sa(2), sa(3)]),
            Err(NoEndpoint::AllTried)
        );
    }

    #[test]
    fn no_ready_endpoint_is_reported() {
        let eps = [ep(1, "r1", "z1", false)];
        assert_eq!(
            choose(&eps, &me(), None, &Ejections::default(), &[]),
            Err(NoEndpoint::NoneReady)
        );
        assert_eq!(
            choose(&[], &me(), None, &Ejections::default(), &[]),
            Err(NoEndpoint::NoneReady)
        );
        // Outside the geo-fence counts as not there.
        let fence = FailoverPolicy {
            geo_fence: vec!["r1".into()],
            ..Default::default()
        };
        assert_eq!(
            choose(
                &[ep(3, "r2", "x", true)],
                &me(),
                Some(&fence),
                &Ejections::default(),
                &[]
            ),
            Err(NoEndpoint::NoneReady)
        );
    }

    #[test]
    fn east_west_endpoints_are_healthy_or_not_per_backend() {
        let mut a = ep(1, "r2", "x", true);
        a.east_west = true;
        let mut b = ep(2, "r2", "y", true);
        b.east_west = true;
        let eps = [a.clone(), b];
        let e = Ejections::default();
        // The remote proxy at 127.0.0.1 cannot serve backend "x" any more.
        assert!(e.eject(EndpointKey::of(&a, "x")));
        assert!(e.is_ejected(EndpointKey::east_west(sa(1), "x")));
        assert!(!e.is_ejected(EndpointKey::east_west(sa(1), "y")));
        assert!(!e.is_ejected(sa(1)), "nor is the address ejected as such");
        let pick = |backend: &str| {
            super::choose(&eps, backend, Vantage::at(&me()), None, &e, &[], None)
                .map(|i| address(&eps, i).unwrap())
                .unwrap()
        };
        for _ in 0..50 {
            assert_eq!(pick("x"), sa(2));
        }
        let for_y: std::collections::HashSet<SocketAddr> = (0..100).map(|_| pick("y")).collect();
        assert_eq!(for_y.len(), 2, "backend y still uses both remote proxies");
        // An ordinary endpoint at that address is another key again.
        assert_eq!(EndpointKey::of(&ep(1, "r2", "x", true), "x"), sa(1).into());
        assert!(EndpointKey::of(&a, "x").is_east_west());
    }

    #[test]
    fn readmission_needs_a_probe_after_the_minimum_time() {
        let e = Ejections::default();
        let cfg = Readmit::default();
        e.eject_for(sa(1), Duration::from_millis(30));
        // A successful probe before the minimum time does not re-admit.
        assert_eq!(e.probe_result(sa(1), true, &cfg), ProbeOutcome::Unchanged);
        std::thread::sleep(Duration::from_millis(40));
        // Time alone does not re-admit either.
        assert!(e.is_ejected(sa(1)));
        assert_eq!(e.probe_result(sa(1), false, &cfg), ProbeOutcome::Unchanged);
        assert!(e.is_ejected(sa(1)));
        assert_eq!(e.probe_result(sa(1), true, &cfg), ProbeOutcome::Readmitted);
        assert!(!e.is_ejected(sa(1)));
        assert_eq!(e.count(), 0);
    }

    #[test]
    fn repeated_ejections_back_off() {
        assert_eq!(backoff(BASE_EJECTION, MAX_EJECTION, 1), BASE_EJECTION);
        assert_eq!(backoff(BASE_EJECTION, MAX_EJECTION, 2), BASE_EJECTION * 2);
        assert_eq!(backoff(BASE_EJECTION, MAX_EJECTION, 3), BASE_EJECTION * 4);
        assert_eq!(backoff(BASE_EJECTION, MAX_EJECTION, 40), MAX_EJECTION);
        let e = Ejections::default();
        let cfg = Readmit::default();
        let base = Duration::from_millis(20);
        e.eject_backoff(sa(1), base, Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(e.probe_result(sa(1), true, &cfg), ProbeOutcome::Readmitted);
        // Second ejection soon after: 40 ms, so 25 ms later it is still out.
        e.eject_backoff(sa(1), base, Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(e.probe_result(sa(1), true, &cfg), ProbeOutcome::Unchanged);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(e.probe_result(sa(1), true, &cfg), ProbeOutcome::Readmitted);
    }

    #[test]
    fn backoff_decays_while_an_endpoint_stays_admitted() {
        assert_eq!(decayed(4, Duration::from_secs(3)), 4, "flapping: no decay");
        assert_eq!(decayed(4, BACKOFF_DECAY), 3);
        assert_eq!(decayed(4, BACKOFF_DECAY * 2 + Duration::from_secs(1)), 2);
        assert_eq!(decayed(1, BACKOFF_DECAY * 2), 0);
        assert_eq!(decayed(9, BACKOFF_RESET), 0);
        // Through the state: an endpoint ejected four times, then admitted for 12 s (two kill
        // drills a dozen seconds apart), is out for 2^(4-1) = 8 s on its next ejection.
        let e = Ejections::default();
        let cfg = Readmit::default();
        e.eject(sa(1));
        {
            let mut map = e.lock();
            let s = map.get_mut(&EndpointKey::from(sa(1))).unwrap();
            s.ejections = 4;
            s.ejected = None;
            s.readmitted = Some((
                Instant::now().checked_sub(Duration::from_secs(12)).unwrap(),
                Duration::ZERO,
            ));
        }
        e.eject(sa(1));
        let min = {
            let map = e.lock();
            let s = &map[&EndpointKey::from(sa(1))];
            assert_eq!(s.ejections, 4, "one doubling undone, one added");
            s.ejected.unwrap().min_until
        };
        let left = min.saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_secs(7) && left <= Duration::from_secs(8),
            "{left:?}"
        );
        assert_eq!(e.probe_result(sa(1), true, &cfg), ProbeOutcome::Unchanged);
    }

    #[test]
    fn failed_probes_eject_a_healthy_endpoint_and_hysteresis_delays_failback() {
        let e = Ejections::default();
        let cfg = Readmit {
            hysteresis: Duration::from_millis(30),
            ..Readmit::default()
        };
        assert_eq!(e.probe_result(sa(1), false, &cfg), ProbeOutcome::Unchanged);
        assert!(!e.is_ejected(sa(1)));
        assert_eq!(e.probe_result(sa(1), false, &cfg), ProbeOutcome::Ejected);
        assert!(e.is_ejected(sa(1)));
        // A success resets the failure run.
        assert_eq!(e.probe_result(sa(2), false, &cfg), ProbeOutcome::Unchanged);
        assert_eq!(e.probe_result(sa(2), true, &cfg), ProbeOutcome::Unchanged);
        assert_eq!(e.probe_result(sa(2), false, &cfg), ProbeOutcome::Unchanged);
        assert!(!e.is_ejected(sa(2)));
        // Ejected sa(1) needs 30 ms of successful probes (and its 1 s minimum, shortened here).
        e.lock()
            .get_mut(&sa(1).into())
            .unwrap()
            .ejected
            .as_mut()
            .unwrap()
            .min_until = Instant::now();
        assert_eq!(e.probe_result(sa(1), true, &cfg), ProbeOutcome::Unchanged);
        std::thread::sleep(Duration::from_millis(35));
        assert_eq!(e.probe_result(sa(1), true, &cfg), ProbeOutcome::Readmitted);
    }

    #[test]
    fn consecutive_5xx_eject_with_outlier_detection() {
        let e = Ejections::default();
        let (b, m) = (Duration::from_secs(1), Duration::from_secs(10));
        assert!(
            !e.response(sa(1), 500, 0, b, m),
            "off when the threshold is 0"
        );
        assert!(!e.response(sa(1), 503, 3, b, m));
        assert!(!e.response(sa(1), 502, 3, b, m));
        assert!(!e.response(sa(1), 200, 3, b, m), "a success resets the run");
        assert!(!e.response(sa(1), 500, 3, b, m));
        assert!(!e.response(sa(1), 500, 3, b, m));
        assert!(e.response(sa(1), 500, 3, b, m));
        assert!(e.is_ejected(sa(1)));
    }

    #[test]
    fn a_slow_starting_endpoint_is_reported_with_its_ramp() {
        let e = Ejections::default();
        let cfg = Readmit {
            slow_start: Duration::from_secs(100),
            ..Readmit::default()
        };
        e.eject_for(sa(1), Duration::ZERO);
        assert_eq!(e.probe_result(sa(1), true, &cfg), ProbeOutcome::Readmitted);
        let map = e.lock();
        match Ejections::avail(&map, &sa(1).into(), false, Instant::now()) {
            Avail::Usable { ramp } => assert!(ramp < 0.05, "ramp {ramp}"),
            other => panic!("{other:?}"),
        }
    }
}
