//! The registry of proxies: who is connected, on which stream, what it said in its hello and
//! what it acknowledged.
//!
//! ```text
//! POST /v1/stream ─► check_hello ─► connect: forget proxies gone > 10 min (counters retired),
//!                                   replace an older stream of the same id (its feed ends),
//!                                   ─► session id
//! stream ends ─► disconnect(session)   (ignored when a newer stream replaced it)
//! POST /v1/ack ─► ack: acked = max(acked, generation) | refusal ─► settle ─► subscribe() ticks
//! ```
//!
//! A proxy is keyed by its id; a session number tells its current stream from a replaced one.
//! Connect, disconnect and acks tick [`DistributionServer::subscribe`] and settle the pending
//! generations of the proxy's cluster (module `programmed`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, watch};

use super::traffic::Counters;
use super::{DistributionServer, Inner, MAX_GATEWAYS, lock};
use crate::protocol::{Ack, AckResult, GatewayRef, Hello, ProxyHealth};

/// Disconnected proxies are forgotten after this long.
pub(super) const FORGET_AFTER: Duration = Duration::from_secs(600);

/// A proxy's refusal of a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The generation refused.
    pub generation: u64,
    /// The proxy's reason.
    pub reason: String,
}

/// What the server knows about one proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyState {
    /// Its id.
    pub proxy_id: String,
    /// Member cluster.
    pub cluster: String,
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Gateways it serves (`None` = all of its cluster's).
    pub gateways: Option<Vec<GatewayRef>>,
    /// Advertised address (for Gateway `status.addresses`).
    pub address: Option<String>,
    /// Whether its stream is open.
    pub connected: bool,
    /// When it last said anything (hello, ack) or disconnected.
    pub last_seen: SystemTime,
    /// When its current (or last) stream opened.
    pub connected_since: SystemTime,
    /// Highest generation it acknowledged as applied on its current (or last) stream.
    pub acked_generation: Option<u64>,
    /// Its refusal of a generation newer than `acked_generation`, if any.
    pub last_refusal: Option<Refusal>,
    /// Its latest health view (measured region order, ejected endpoints) while its stream is
    /// open; `None` before its first report with one (or from an older proxy).
    pub health: Option<ProxyHealth>,
}

/// A request naming a proxy id without an open (or recent) stream: `404`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown proxy {0:?}: open POST /v1/stream first")]
pub(super) struct UnknownProxy(pub(super) String);

/// Why a hello is refused: `400` with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum InvalidHello {
    /// Empty or longer than a Kubernetes name.
    #[error("proxyId must be 1 to 253 characters")]
    ProxyId,
    /// Empty or longer than a Kubernetes name.
    #[error("cluster must be 1 to 253 characters")]
    Cluster,
    /// More than [`MAX_GATEWAYS`].
    #[error("at most {MAX_GATEWAYS} gateways")]
    TooManyGateways,
    /// An `ip:port` other proxies cannot connect to.
    #[error(
        "eastWest {0:?}: give the address other proxies reach the listener on, \
         not an unspecified IP or port 0"
    )]
    EastWestUnspecified(String),
    /// Not an `ip:port` at all.
    #[error("eastWest {0:?}: expected IP:PORT (e.g. 10.0.0.5:15443 or [fd00::5]:15443)")]
    EastWestSyntax(String),
}

/// Checks a hello before its stream opens.
pub(super) fn check_hello(h: &Hello) -> Result<(), InvalidHello> {
    if h.proxy_id.is_empty() || h.proxy_id.len() > 253 {
        return Err(InvalidHello::ProxyId);
    }
    if h.cluster.is_empty() || h.cluster.len() > 253 {
        return Err(InvalidHello::Cluster);
    }
    if h.gateways.as_ref().is_some_and(|g| g.len() > MAX_GATEWAYS) {
        return Err(InvalidHello::TooManyGateways);
    }
    if let Some(ew) = &h.east_west {
        // Other proxies connect to it as given: it must be a concrete ip:port.
        match ew.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() || a.port() == 0 => {
                return Err(InvalidHello::EastWestUnspecified(ew.clone()));
            }
            Ok(_) => {}
            Err(_) => return Err(InvalidHello::EastWestSyntax(ew.clone())),
        }
    }
    Ok(())
}

/// When a proxy's latest traffic report was stored, on which stream.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reported {
    /// The session of the stream open then.
    pub(super) session: u64,
    /// When.
    pub(super) at: tokio::time::Instant,
}

/// One known proxy.
pub(super) struct ProxyEntry {
    pub(super) hello: Hello,
    pub(super) session: u64,
    pub(super) connected: bool,
    pub(super) last_seen: SystemTime,
    /// When the current (or last) stream opened.
    pub(super) connected_since: SystemTime,
    pub(super) acked: Option<u64>,
    pub(super) refusal: Option<Refusal>,
    /// Dropping it ends the feed task of this entry's stream.
    pub(super) kick: Option<oneshot::Sender<()>>,
    /// Counts the resyncs asked on this entry's stream (refusals of patches that did not fit);
    /// its feed task watches it and sends the full snapshot.
    pub(super) resyncs: watch::Sender<u64>,
    /// Its latest traffic report, per Gateway (cumulative counters).
    pub(super) traffic: Counters,
    /// When that report came (`None`: no report yet).
    pub(super) reported: Option<Reported>,
    /// The health view of its latest report on the open stream (dropped when it disconnects:
    /// a view nobody refreshes is not live).
    pub(super) health: Option<ProxyHealth>,
}

impl ProxyEntry {
    fn state(&self) -> ProxyState {
        ProxyState {
            proxy_id: self.hello.proxy_id.clone(),
            cluster: self.hello.cluster.clone(),
            region: self.hello.region.clone(),
            zone: self.hello.zone.clone(),
            gateways: self.hello.gateways.clone(),
            address: self.hello.address.clone(),
            connected: self.connected,
            last_seen: self.last_seen,
            connected_since: self.connected_since,
            acked_generation: self.acked,
            last_refusal: self.refusal.clone(),
            health: self.health.clone(),
        }
    }

    /// Whether it has an open stream in `cluster`.
    pub(super) fn connected_in(&self, cluster: &str) -> bool {
        self.connected && self.hello.cluster == cluster
    }

    /// Records an applied generation (acks only move forward) or a refusal of one it has not
    /// applied.
    fn record(&mut self, generation: u64, result: AckResult) {
        match result {
            AckResult::Applied => {
                self.acked = Some(self.acked.map_or(generation, |a| a.max(generation)));
                if self
                    .refusal
                    .as_ref()
                    .is_some_and(|r| r.generation <= generation)
                {
                    self.refusal = None;
                }
            }
            AckResult::Refused { reason } => {
                if self.acked.is_none_or(|a| a < generation) {
                    self.refusal = Some(Refusal { generation, reason });
                }
            }
        }
    }
}

impl DistributionServer {
    /// Every proxy known (connected, or disconnected in the last ten minutes), sorted by id.
    pub fn state(&self) -> Vec<ProxyState> {
        let mut out: Vec<ProxyState> = lock(&self.inner.proxies)
            .values()
            .map(ProxyEntry::state)
            .collect();
        out.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
        out
    }

    /// East-west listeners of the connected proxies of `cluster` (from their [`Hello`]s), each
    /// with the zone of its proxy, sorted by address and deduplicated (two proxies naming one
    /// address: the smaller zone). Proxies of other networks reach the cluster's backends there.
    /// [`DistributionServer::subscribe`] ticks whenever a proxy connects or leaves, so a change
    /// of this list is always announced.
    pub fn east_west(&self, cluster: &str) -> Vec<(SocketAddr, String)> {
        let proxies = lock(&self.inner.proxies);
        let mut out: Vec<(SocketAddr, String)> = proxies
            .values()
            .filter(|p| p.connected_in(cluster))
            .filter_map(|p| {
                // Checked when the stream opened; a bad one never gets here.
                let addr = p.hello.east_west.as_deref()?.parse().ok()?;
                Some((addr, p.hello.zone.clone()))
            })
            .collect();
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    /// Advertised addresses of the connected proxies serving `gateway` in `cluster`, sorted and
    /// deduplicated (for Gateway `status.addresses`).
    pub fn addresses(&self, cluster: &str, gateway: &GatewayRef) -> Vec<String> {
        let proxies = lock(&self.inner.proxies);
        let mut out: Vec<String> = proxies
            .values()
            .filter(|p| p.connected_in(cluster) && p.hello.serves(gateway))
            .filter_map(|p| p.hello.address.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Removes the proxies disconnected longer than [`FORGET_AFTER`]; returns the counters they
/// leave behind, with their clusters.
fn forget_stale(
    proxies: &mut HashMap<String, ProxyEntry>,
    now: SystemTime,
) -> Vec<(String, Counters)> {
    let mut departed = Vec::new();
    proxies.retain(|_, p| {
        let keep = p.connected
            || now
                .duration_since(p.last_seen)
                .is_ok_and(|d| d < FORGET_AFTER);
        if !keep && !p.traffic.is_empty() {
            departed.push((p.hello.cluster.clone(), std::mem::take(&mut p.traffic)));
        }
        keep
    });
    departed
}

impl Inner {
    /// Registers a new stream; returns its session, the receiver that fires when a newer
    /// stream of the same proxy replaces it and the count of resyncs the proxy asked for on it.
    pub(super) fn connect(
        &self,
        hello: &Hello,
    ) -> (u64, oneshot::Receiver<()>, watch::Receiver<u64>) {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (kick, kicked) = oneshot::channel();
        let (resyncs, resync) = watch::channel(0);
        let now = SystemTime::now();
        let mut proxies = lock(&self.proxies);
        let mut departed = forget_stale(&mut proxies, now);
        // A reconnecting proxy keeps its counters (the next report tells whether it restarted);
        // one that moved to another cluster leaves them to its old cluster.
        let mut traffic = Counters::new();
        let mut reported = None;
        if let Some(old) = proxies.get_mut(&hello.proxy_id) {
            let counters = std::mem::take(&mut old.traffic);
            if old.hello.cluster == hello.cluster {
                traffic = counters;
                reported = old.reported;
            } else if !counters.is_empty() {
                departed.push((old.hello.cluster.clone(), counters));
            }
        }
        for (cluster, counters) in departed {
            self.retire(&cluster, counters);
        }
        // Replacing the entry drops the old kick sender, which ends the old stream.
        let entry = ProxyEntry {
            hello: hello.clone(),
            session,
            connected: true,
            last_seen: now,
            connected_since: now,
            acked: None,
            refusal: None,
            kick: Some(kick),
            resyncs,
            traffic,
            reported,
            health: None,
        };
        if let Some(old) = proxies.insert(hello.proxy_id.clone(), entry)
            && old.hello.cluster != hello.cluster
        {
            self.recount(&proxies, &old.hello.cluster);
            self.settle(&proxies, &old.hello.cluster);
        }
        self.recount(&proxies, &hello.cluster);
        drop(proxies);
        tracing::info!(proxy = %hello.proxy_id, cluster = %hello.cluster, session, "proxy connected");
        self.notify();
        (session, kicked, resync)
    }

    /// Marks the proxy's stream `session` closed (a no-op when a newer stream replaced it).
    pub(super) fn disconnect(&self, proxy_id: &str, session: u64) {
        let mut proxies = lock(&self.proxies);
        let Some(p) = proxies.get_mut(proxy_id) else {
            return;
        };
        if p.session != session {
            return; // replaced by a newer stream
        }
        p.connected = false;
        p.kick = None;
        p.health = None;
        p.last_seen = SystemTime::now();
        let cluster = p.hello.cluster.clone();
        self.recount(&proxies, &cluster);
        // The proxies still connected may now all have applied a pending generation.
        self.settle(&proxies, &cluster);
        drop(proxies);
        tracing::info!(proxy = %proxy_id, cluster = %cluster, session, "proxy disconnected");
        self.notify();
    }

    /// Records an acknowledgement.
    pub(super) fn ack(&self, ack: Ack) -> Result<(), UnknownProxy> {
        let mut proxies = lock(&self.proxies);
        let Some(p) = proxies.get_mut(&ack.proxy_id) else {
            return Err(UnknownProxy(ack.proxy_id));
        };
        p.last_seen = SystemTime::now();
        match &ack.result {
            AckResult::Applied => {
                tracing::debug!(proxy = %ack.proxy_id, generation = ack.generation, "applied");
            }
            AckResult::Refused { reason } => {
                self.metrics
                    .nacks
                    .with_label_values(&[&p.hello.cluster])
                    .inc();
                tracing::warn!(proxy = %ack.proxy_id, generation = ack.generation, %reason, "generation refused");
                if ack.resync {
                    p.resyncs.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
        }
        p.record(ack.generation, ack.result);
        let cluster = p.hello.cluster.clone();
        self.settle(&proxies, &cluster);
        drop(proxies);
        self.notify();
        Ok(())
    }

    /// Sets the connected-proxies gauge of `cluster`.
    fn recount(&self, proxies: &HashMap<String, ProxyEntry>, cluster: &str) {
        let n = proxies.values().filter(|p| p.connected_in(cluster)).count();
        self.metrics
            .connected
            .with_label_values(&[cluster])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// A connected proxy of cluster `c` for unit tests, with what it acknowledged and refused.
#[cfg(test)]
pub(super) fn test_entry(id: &str, acked: Option<u64>, refusal: Option<(u64, &str)>) -> ProxyEntry {
    ProxyEntry {
        hello: Hello {
            proxy_id: id.into(),
            cluster: "c".into(),
            region: String::new(),
            zone: String::new(),
            gateways: None,
            address: None,
            east_west: None,
        },
        session: 1,
        connected: true,
        last_seen: SystemTime::now(),
        connected_since: SystemTime::now(),
        acked,
        refusal: refusal.map(|(generation, r)| Refusal {
            generation,
            reason: r.into(),
        }),
        kick: None,
        resyncs: watch::channel(0).0,
        traffic: Counters::new(),
        reported: None,
        health: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn acks_move_forward_and_clear_older_refusals() {
        let mut p = test_entry("a", Some(5), Some((6, "bind failed")));
        p.record(3, AckResult::Applied);
        assert_eq!(p.acked, Some(5), "an older ack does not go back");
        assert!(p.refusal.is_some(), "6 is still refused");
        p.record(4, AckResult::Refused { reason: "x".into() });
        assert_eq!(
            p.refusal.as_ref().map(|r| r.generation),
            Some(6),
            "a refusal of an applied generation is ignored"
        );
        p.record(6, AckResult::Applied);
        assert_eq!((p.acked, p.refusal.clone()), (Some(6), None));
    }

    #[test]
    fn hellos_are_checked() {
        let mut h = test_entry("a", None, None).hello;
        assert_eq!(check_hello(&h), Ok(()));
        h.east_west = Some("0.0.0.0:15443".into());
        assert_eq!(
            check_hello(&h),
            Err(InvalidHello::EastWestUnspecified("0.0.0.0:15443".into()))
        );
        h.east_west = Some("proxy:15443".into());
        assert!(
            check_hello(&h)
                .unwrap_err()
                .to_string()
                .contains("expected IP:PORT")
        );
        h.east_west = None;
        h.proxy_id = String::new();
        assert_eq!(check_hello(&h), Err(InvalidHello::ProxyId));
    }
}
