//! Failover metrics: which tier of its locality plan answers each backend's requests, moves
//! away from it (failover) and back (failback), and how long a move took.
//!
//! ```text
//! first response head from an endpoint (Forwarder::observe_latency, both request paths)
//!   ─► TierWatch::served(backend, endpoint)
//!        same region and zone class as the backend's active tier? ─► nothing (fast path)
//!        rank = the endpoint's tier in the plan (locality::plan, with the measured order)
//!        rank > active and every endpoint of the active tier ejected or drained
//!            ─► failover: meridian_proxy_failover_events_total{event="failover"},
//!               meridian_proxy_failover_seconds = now − when the active tier's last endpoint
//!               was ejected; active = rank
//!        rank > active, the active tier still has usable endpoints (a weighted share, a
//!            retry, a hedge) ─► not a failover: nothing
//!        rank < active ─► failback: {event="failback"}; active = rank
//!   meridian_proxy_active_tier{backend, region} = active rank (0 = the plan's first tier),
//!   labelled with the region of that tier (one series per backend)
//! ```
//!
//! "Lost its last healthy endpoint" is when the proxy judged so: the ejection of the tier's
//! last endpoint (a failed connect, a reset, failed probes, a hedge loser that could not
//! connect). Hedged tries move traffic before that (lean/hedge.rs); those answers are not
//! counted as a failover until the tier is ejected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use meridian_model::locality;
use meridian_model::snapshot::{Backend, BackendTarget, Endpoint};

use crate::drain::BackendDrain;
use crate::endpoints::EndpointKey;
use crate::state::Shared;

/// Backends tracked at most; beyond it the table starts over (backends come and go with
/// snapshots).
const MAX_BACKENDS: usize = 4096;

/// The active tier of each backend ([`crate::state::Shared::tiers`]).
#[derive(Default)]
pub(crate) struct TierWatch {
    /// Looked up once per response by backend name (the snapshot's, not a client's): foldhash.
    active: Mutex<HashMap<String, Active, foldhash::fast::RandomState>>,
}

/// A backend's active tier.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Active {
    rank: usize,
    /// Region of the tier, and whether it is the proxy's own zone (tiers 0 and 1 share a
    /// region).
    region: String,
    own_zone: bool,
}

impl TierWatch {
    /// A response from `backend`'s endpoint `index` goes downstream; `drain` is the drills' view
    /// of the backend.
    pub(crate) fn served(
        &self,
        shared: &Shared,
        backend: &Backend,
        index: usize,
        drain: Option<&BackendDrain>,
    ) {
        let BackendTarget::Endpoints {
            endpoints,
            failover,
            ..
        } = &backend.target
        else {
            return;
        };
        let Some(e) = endpoints.get(index) else {
            return;
        };
        let me = &shared.locality;
        let own_zone = e.region == me.region && !me.zone.is_empty() && e.zone == me.zone;
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = active.get(&backend.name)
            && a.region == e.region
            && a.own_zone == own_zone
        {
            return;
        }
        let nearest = shared.rtt.order();
        let plan = locality::plan(endpoints, me, failover.as_ref(), &nearest);
        let Some(rank) = plan.tiers.iter().position(|t| t.members.contains(&index)) else {
            return;
        };
        let now = Active {
            rank,
            region: e.region.clone(),
            own_zone,
        };
        let metrics = &shared.metrics;
        let before = active.get(&backend.name).cloned();
        match &before {
            None => {}
            Some(b) if rank > b.rank => {
                let Some(tier) = plan.tiers.get(b.rank) else {
                    return;
                };
                let Some(lost_at) =
                    last_lost(shared, endpoints, &tier.members, &backend.name, drain)
                else {
                    // The active tier can still serve: a share, a retry or a hedge went on.
                    return;
                };
                metrics
                    .failover_events
                    .with_label_values(&[&backend.name, &now.region, "failover"])
                    .inc();
                if let Some(at) = lost_at {
                    metrics
                        .failover_seconds
                        .with_label_values(&[&backend.name])
                        .observe(at.elapsed().as_secs_f64());
                }
            }
            Some(b) if rank < b.rank => {
                metrics
                    .failover_events
                    .with_label_values(&[&backend.name, &now.region, "failback"])
                    .inc();
            }
            // The same rank in another region: the plan changed (a snapshot, the measured order).
            Some(_) => {}
        }
        if let Some(b) = &before
            && b.region != now.region
        {
            // One series per backend: the old region's goes.
            let _ = metrics
                .active_tier
                .remove_label_values(&[&backend.name, &b.region]);
        }
        metrics
            .active_tier
            .with_label_values(&[&backend.name, &now.region])
            .set(i64::try_from(rank).unwrap_or(i64::MAX));
        if before.is_none() && active.len() >= MAX_BACKENDS {
            active.clear();
        }
        active.insert(backend.name.clone(), now);
    }
}

/// When every endpoint of a tier (`members`) is unusable (ejected or drained): `Some(when the
/// last of them was ejected)`, `Some(None)` when only drains took them out (a drill: no
/// ejection time); `None` while one can still serve.
#[allow(clippy::option_option)]
fn last_lost(
    shared: &Shared,
    endpoints: &[Endpoint],
    members: &[usize],
    backend: &str,
    drain: Option<&BackendDrain>,
) -> Option<Option<Instant>> {
    let mut last: Option<Instant> = None;
    for &i in members {
        let e = endpoints.get(i)?;
        let addr = SocketAddr::new(e.address, e.port);
        if drain.is_some_and(|d| d.is_drained(&addr)) {
            continue;
        }
        let since = shared
            .ejections
            .ejected_since(EndpointKey::of(e, backend))?;
        last = Some(last.map_or(since, |l| l.max(since)));
    }
    Some(last)
}

/// Every backend (with endpoints, weight above 0) of `gateway`'s routes, once, and whether this
/// proxy's region can serve it from its own endpoints: ready, not ejected, not drained by a
/// drill (`entry`: the Gateway's drains). For the per-Gateway health endpoint (admin.rs).
pub(crate) fn local_backends(
    shared: &Shared,
    gateway: &meridian_model::snapshot::Gateway,
    entry: Option<&std::sync::Arc<crate::drain::GatewayEntry>>,
) -> Vec<(String, bool)> {
    let region = shared.locality.region.as_str();
    let mut out: Vec<(String, bool)> = Vec::new();
    let backends = gateway
        .listeners
        .iter()
        .flat_map(|l| l.routes.iter())
        .flat_map(|r| r.rules.iter())
        .flat_map(|rule| rule.backends.iter());
    for b in backends {
        let BackendTarget::Endpoints { endpoints, .. } = &b.target else {
            continue;
        };
        if b.weight == 0 || out.iter().any(|(n, _)| *n == b.name) {
            continue;
        }
        let drain = entry.and_then(|g| g.backend_drain(&b.name));
        let local = endpoints.iter().any(|e| {
            let addr = SocketAddr::new(e.address, e.port);
            e.ready
                && e.region == region
                && !drain.as_ref().is_some_and(|d| d.is_drained(&addr))
                && !shared.ejections.is_ejected(EndpointKey::of(e, &b.name))
        });
        out.push((b.name.clone(), local));
    }
    out
}
