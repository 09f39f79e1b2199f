//! The controller's data plane, backed by the distribution server: snapshots go to the proxies of
//! each cluster, and a Gateway is `Programmed` only once every connected proxy serving it has
//! acknowledged the generation that carries its latest content.
//!
//! Traffic counters the proxies report come back through [`DataPlane::traffic`]: the server's
//! never-decreasing sum over the proxies of the Gateway's cluster. [`DataPlane::proxies`] is the
//! server's registry (`meridian status`).
//!
//! East-west listeners (multi-network clusters) come from the proxies' hellos through
//! [`DistributionServer::east_west`]; the server ticks [`DataPlane::changes`] whenever a proxy
//! connects or leaves, so the controller re-translates when one appears or goes.
//!
//! Addresses: by default a Gateway is served on the advertised addresses of the proxies serving
//! it (one address per proxy, shared by every Gateway of that proxy). With an address pool for
//! its cluster ([`addresses::AddressPools`]), every Gateway gets its own address from the pool
//! as soon as a proxy serves it, so several Gateways of one region can all listen on port 80.
//!
//! Reconnect grace: a restarted controller starts with a distribution server no proxy is
//! connected to yet, although the proxies still serve what the previous controller gave them and
//! reconnect within their backoff (at most 5 s by default). For [`DataPlane::programmed`] a
//! Gateway of a cluster no proxy has reported for since start is therefore
//! [`ProgrammedState::Unknown`] (not `NoProxy` / `Pending`) until the grace ends; the controller
//! keeps the `Programmed` condition and addresses already in the Gateway's status meanwhile. A
//! cluster leaves the grace early once one of its proxies acknowledges or refuses a snapshot; at
//! the end of the grace [`DataPlane::changes`] ticks, so the truth (e.g. no proxy at all) is
//! written then.
//!
//! Leader election: with several controller replicas
//! ([`DistributedDataPlane::with_leadership`]), only the leader's server serves proxies; a
//! follower answers `503` and a replica that stops leading closes its streams, so the proxies
//! (through the controller Service) end up on the leader. A follower reports every Gateway
//! [`ProgrammedState::Unknown`] (it has no proxies to judge by; its writes are gated anyway),
//! and becoming the leader starts the reconnect grace again: a takeover is handled like a
//! restart, so `Programmed` does not flap while the proxies move over.
//!
//! Member clusters that join at run time bring their address pool with them
//! ([`DataPlane::cluster_added`]); a removed cluster's pool and publication record are dropped
//! ([`DataPlane::cluster_removed`]).
//!
//! The controller owns this adapter (and depends on `meridian-distribution` for it); the
//! distribution crate knows only snapshots and acks and never depends on the controller.
//! [`DistributedDataPlane::start`] is what `meridian controller --distribution-bind` runs (through
//! [`serve`](crate::serve)); `meridian up` builds the same adapter over its own server with
//! [`DistributedDataPlane::with_pools`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use meridian_distribution::pki::Ca;
use meridian_distribution::server::{AddressPolicy, AnyAddress, BootstrapVerifier, ServerNames};
use meridian_distribution::{DistributionServer, ServerConfig};
use meridian_model::Snapshot;
use meridian_model::patch::Since;
use meridian_model::traffic::GatewayTraffic;
use tokio::sync::watch;

use crate::{ClusterGatewayRef, DataPlane, ProgrammedState};

pub mod addresses;

use addresses::AddressPools;

/// The identity settings of the distribution server [`DistributedDataPlane::start`] runs (the
/// [`ServerConfig`] fields about TLS and admission).
#[derive(Clone)]
pub struct DistributionTls {
    /// The mesh CA: issues the server's and the proxies' certificates.
    pub ca: Arc<Ca>,
    /// Extra names of the server's certificate (`--distribution-name`).
    pub server_names: ServerNames,
    /// Verifies bootstrap credentials; `None`: proxies must bring a certificate (renewals only).
    pub bootstrap: Option<Arc<dyn BootstrapVerifier>>,
    /// Which addresses proxies may advertise.
    pub addresses: Arc<dyn AddressPolicy>,
}

impl DistributionTls {
    /// `ca`, no extra names, no bootstrap, any concrete address.
    pub fn new(ca: Arc<Ca>) -> Self {
        DistributionTls {
            ca,
            server_names: ServerNames::default(),
            bootstrap: None,
            addresses: Arc::new(AnyAddress),
        }
    }
}

/// Default reconnect grace: the proxies' longest reconnect delay (5 s) plus their connect
/// timeout (2 s) plus a margin for the first snapshot's acknowledgement.
pub const DEFAULT_RECONNECT_GRACE: Duration = Duration::from_secs(10);

/// The distribution server did not start (e.g. its address is busy).
#[derive(Debug, thiserror::Error)]
#[error("starting the distribution server on {bind}: {source}")]
pub struct DataPlaneError {
    /// `--distribution-bind`.
    pub bind: SocketAddr,
    /// Why.
    #[source]
    pub source: meridian_distribution::ServerError,
}

/// [`DataPlane`] over a [`DistributionServer`].
pub struct DistributedDataPlane {
    server: Arc<DistributionServer>,
    /// Generation each cluster's latest content was published as.
    published: Mutex<BTreeMap<String, u64>>,
    /// Per-cluster pools of per-Gateway addresses (empty: proxies' advertised addresses).
    pools: Mutex<AddressPools>,
    /// The reconnect grace (see the module docs), shared with the task forwarding ticks.
    grace: Arc<Grace>,
    /// Leader election: `false` while another replica leads (`None`: always leading).
    leading: Option<watch::Receiver<bool>>,
    /// The server's ticks, plus one when the grace ends or leadership changes.
    changes: watch::Sender<u64>,
    forward: tokio::task::JoinHandle<()>,
}

/// The reconnect grace: restarted at start and whenever this replica becomes the leader.
struct Grace {
    reconnect_grace: Duration,
    /// End of the current grace.
    ends: Mutex<tokio::time::Instant>,
    /// Clusters whose proxies reported (acknowledged or refused) since it began: out of it.
    reported: Mutex<BTreeSet<String>>,
}

impl Grace {
    /// Starts the grace again (from now); returns its end.
    fn restart(&self) -> tokio::time::Instant {
        let ends = tokio::time::Instant::now() + self.reconnect_grace;
        *self.ends.lock().unwrap_or_else(PoisonError::into_inner) = ends;
        self.reported
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        ends
    }

    fn ends(&self) -> tokio::time::Instant {
        *self.ends.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for DistributedDataPlane {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

impl DistributedDataPlane {
    /// Wraps a running server; Gateways of clusters with a pool get their own address (an empty
    /// [`AddressPools`] keeps the proxies' advertised addresses). Uses
    /// [`DEFAULT_RECONNECT_GRACE`]. Must be called on a tokio runtime.
    pub fn with_pools(server: Arc<DistributionServer>, pools: AddressPools) -> Arc<Self> {
        Self::new(server, pools, DEFAULT_RECONNECT_GRACE)
    }

    /// Like [`DistributedDataPlane::with_pools`], with the reconnect grace given (zero: none).
    pub fn new(
        server: Arc<DistributionServer>,
        pools: AddressPools,
        reconnect_grace: Duration,
    ) -> Arc<Self> {
        Self::with_leadership(server, pools, reconnect_grace, None)
    }

    /// Like [`DistributedDataPlane::new`], for one of several controller replicas: `leading` is
    /// the leader-election gate ([`crate::leader::Elector::write_gate`]; the server should be
    /// started with the same receiver as [`ServerConfig::serving`]). While it is `false`,
    /// [`DataPlane::programmed`] is [`ProgrammedState::Unknown`] for every Gateway (a follower
    /// has no proxies and must not judge from their absence); when it turns `true`, the
    /// reconnect grace starts again, so the new leader keeps `Programmed` while the proxies move
    /// over to it (see the module docs).
    pub fn with_leadership(
        server: Arc<DistributionServer>,
        pools: AddressPools,
        reconnect_grace: Duration,
        leading: Option<watch::Receiver<bool>>,
    ) -> Arc<Self> {
        let grace = Arc::new(Grace {
            reconnect_grace,
            ends: Mutex::new(tokio::time::Instant::now()),
            reported: Mutex::new(BTreeSet::new()),
        });
        grace.restart();
        let (changes, _) = watch::channel(0u64);
        let forward = tokio::spawn(forward_changes(
            server.subscribe(),
            changes.clone(),
            Arc::clone(&grace),
            leading.clone(),
        ));
        Arc::new(Self {
            server,
            published: Mutex::new(BTreeMap::new()),
            pools: Mutex::new(pools),
            grace,
            leading,
            changes,
            forward,
        })
    }

    /// Starts a distribution server on `bind` (mutual TLS with the certificates of
    /// `tls.ca`) and the data plane over it. `meridian controller` checks these flags first
    /// with [`ControllerArgs::distribution_flags`](crate::ControllerArgs::distribution_flags).
    /// `leading`: see [`DistributedDataPlane::with_leadership`] (the server turns proxies away
    /// with `503` while it is `false`).
    pub async fn start(
        bind: SocketAddr,
        tls: DistributionTls,
        pools: AddressPools,
        reconnect_grace: Duration,
        leading: Option<watch::Receiver<bool>>,
    ) -> Result<Arc<Self>, DataPlaneError> {
        let mut cfg = ServerConfig::new(bind, tls.ca);
        cfg.server_names = tls.server_names;
        cfg.bootstrap = tls.bootstrap;
        cfg.addresses = tls.addresses;
        cfg.serving = leading.clone();
        let server = DistributionServer::start(cfg)
            .await
            .map_err(|source| DataPlaneError { bind, source })?;
        tracing::info!(addr = %server.local_addr(), "distribution server listening");
        Ok(Self::with_leadership(
            Arc::new(server),
            pools,
            reconnect_grace,
            leading,
        ))
    }

    /// The distribution server's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Whether `cluster` is still in the reconnect grace.
    fn in_grace(&self, cluster: &str) -> bool {
        tokio::time::Instant::now() < self.grace.ends()
            && !self
                .grace
                .reported
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(cluster)
    }

    fn leading(&self) -> bool {
        self.leading.as_ref().is_none_or(|l| *l.borrow())
    }

    fn generation(&self, cluster: &str) -> Option<u64> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(cluster)
            .copied()
    }
}

/// Passes the server's ticks on, ticks once more when the reconnect grace ends, and restarts
/// the grace (with a tick) whenever this replica becomes the leader.
async fn forward_changes(
    mut server: watch::Receiver<u64>,
    changes: watch::Sender<u64>,
    grace: Arc<Grace>,
    mut leading: Option<watch::Receiver<bool>>,
) {
    let mut grace_ends = Some(grace.ends());
    let mut was_leading = leading.as_ref().is_none_or(|l| *l.borrow());
    loop {
        let gate = async {
            match leading.as_mut() {
                Some(l) => l.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = server.changed() => {
                if r.is_err() {
                    return;
                }
                changes.send_modify(|n| *n += 1);
            }
            _ = async { if let Some(t) = grace_ends { tokio::time::sleep_until(t).await } }, if grace_ends.is_some() => {
                grace_ends = None;
                changes.send_modify(|n| *n += 1);
            }
            open = gate => {
                let Some(l) = leading.as_mut().filter(|_| open) else {
                    // The elector is gone: this replica no longer knows it leads.
                    leading = None;
                    was_leading = false;
                    changes.send_modify(|n| *n += 1);
                    continue;
                };
                let now_leading = *l.borrow_and_update();
                if now_leading && !was_leading {
                    // The proxies are still connected to the old leader or on their way here:
                    // give them the reconnect grace before judging from their absence.
                    grace_ends = Some(grace.restart());
                    tracing::info!("leading: reconnect grace started for the proxies");
                }
                was_leading = now_leading;
                changes.send_modify(|n| *n += 1);
            }
        }
    }
}

impl DataPlane for DistributedDataPlane {
    fn publish(&self, cluster: &str, snapshot: Arc<Snapshot>, since: Option<Since<'_>>) {
        match self.server.publish_since(cluster, snapshot, since) {
            Ok(p) => {
                self.published
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(cluster.to_string(), p.generation);
            }
            // The controller validated the snapshot; a refusal here is a bug worth a loud log,
            // and the proxies keep serving the previous generation.
            Err(e) => tracing::error!(cluster, error = %e, "snapshot not published"),
        }
    }

    fn programmed(&self, gw: &ClusterGatewayRef) -> ProgrammedState {
        if !self.leading() {
            // The proxies follow the leader: a follower's server has none to ask.
            return ProgrammedState::Unknown;
        }
        let state = match self.generation(&gw.cluster) {
            None => ProgrammedState::pending(),
            Some(generation) => {
                self.server
                    .programmed_gateway(&gw.cluster, &gw.gateway, generation)
            }
        };
        match state {
            ProgrammedState::NoProxy | ProgrammedState::Pending { .. }
                if self.in_grace(&gw.cluster) =>
            {
                ProgrammedState::Unknown
            }
            ProgrammedState::Applied(_) | ProgrammedState::Refused(_) => {
                // A proxy of this cluster reports: from now on its answers are the truth.
                self.grace
                    .reported
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(gw.cluster.clone());
                state
            }
            other => other,
        }
    }

    fn addresses(&self, gw: &ClusterGatewayRef) -> Vec<IpAddr> {
        let advertised: Vec<IpAddr> = self
            .server
            .addresses(&gw.cluster, &gw.gateway)
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if !pools.has_pool(&gw.cluster) {
            return advertised;
        }
        // No proxy serves it yet: no address (AddressNotAssigned), as without a pool.
        if advertised.is_empty() {
            return Vec::new();
        }
        let key = gw.gateway.to_string();
        match pools.address(&gw.cluster, &key, std::time::Instant::now()) {
            Some(ip) => vec![ip],
            None => {
                tracing::warn!(cluster = %gw.cluster, gateway = %key, "address pool exhausted");
                Vec::new()
            }
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn traffic(&self, gw: &ClusterGatewayRef) -> Option<GatewayTraffic> {
        self.server.traffic(&gw.cluster, &gw.gateway)
    }

    fn east_west(&self, cluster: &str) -> Vec<(SocketAddr, String)> {
        self.server.east_west(cluster)
    }

    fn proxies(&self) -> Vec<crate::inspect::ProxyView> {
        self.server
            .state()
            .into_iter()
            .map(|p| crate::inspect::ProxyView::from_state(p, &self.server))
            .collect()
    }

    fn cluster_added(&self, cluster: &str, pool: Option<addresses::AddressRange>) {
        self.pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set(cluster, pool);
    }

    fn cluster_removed(&self, cluster: &str) {
        self.pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set(cluster, None);
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(cluster);
    }

    fn metrics_registry(&self) -> Option<prometheus::Registry> {
        Some(self.server.registry().clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use meridian_distribution::pki::{CertStore, ProxyIdentity, TrustDomain};
    use meridian_distribution::{Client, ClientConfig, Hello, Refused, Target};

    /// The mesh CA of these tests.
    fn test_ca() -> Arc<Ca> {
        static CA: std::sync::OnceLock<Arc<Ca>> = std::sync::OnceLock::new();
        CA.get_or_init(|| {
            Arc::new(Ca::generate(&TrustDomain::default(), Duration::from_secs(3600)).unwrap())
        })
        .clone()
    }

    use super::*;

    /// A proxy that accepts every snapshot and serves nothing.
    struct Accept;

    impl Target for Accept {
        async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
            Ok(snapshot.generation)
        }
    }

    fn gw(cluster: &str) -> ClusterGatewayRef {
        ClusterGatewayRef::new(cluster.to_string(), "infra".to_string(), "gw".to_string())
    }

    /// The distribution server's metrics (publish → acknowledged, stream messages) are served
    /// on the controller's `/metrics`: the data plane hands its registry over.
    #[tokio::test]
    async fn the_controllers_metrics_include_the_distribution_servers() {
        let cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), test_ca());
        let server = Arc::new(DistributionServer::start(cfg).await.unwrap());
        let dp = DistributedDataPlane::with_pools(server, AddressPools::default());
        let metrics = crate::metrics::Metrics::new().unwrap();
        metrics.serve_also(
            dp.metrics_registry()
                .expect("the distributed data plane has metrics"),
        );
        dp.publish("east", Arc::new(Snapshot::empty(1)), None);
        let text = metrics.encode();
        assert!(
            text.lines()
                .any(|l| l.starts_with("meridian_distribution_published_total{")
                    && l.contains("cluster=\"east\"")),
            "{text}"
        );
        // The controller's own families are still there.
        assert!(text.contains("meridian_controller_"), "{text}");
    }

    /// A follower judges nothing (no proxies follow it); becoming the leader starts the
    /// reconnect grace again, and its end ticks so the truth gets written.
    #[tokio::test(start_paused = true)]
    async fn a_follower_reports_unknown_and_a_new_leader_gets_the_reconnect_grace() {
        let cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), test_ca());
        let server = Arc::new(DistributionServer::start(cfg).await.unwrap());
        let (leading, gate) = watch::channel(false);
        let grace = Duration::from_secs(10);
        let dp = DistributedDataPlane::with_leadership(
            server,
            AddressPools::default(),
            grace,
            Some(gate),
        );
        dp.publish("east", Arc::new(Snapshot::empty(1)), None);
        // Long after the start-up grace: a follower still says Unknown.
        tokio::time::sleep(grace * 3).await;
        assert_eq!(dp.programmed(&gw("east")), ProgrammedState::Unknown);

        let mut changes = dp.changes();
        changes.mark_unchanged();
        leading.send_replace(true);
        tokio::time::timeout(Duration::from_secs(1), changes.changed())
            .await
            .expect("becoming the leader ticks")
            .unwrap();
        // No proxy yet, but within the new leader's grace: Unknown, not NoProxy.
        tokio::time::sleep(grace / 2).await;
        assert_eq!(dp.programmed(&gw("east")), ProgrammedState::Unknown);
        changes.mark_unchanged();
        tokio::time::timeout(grace, changes.changed())
            .await
            .expect("the end of the grace ticks")
            .unwrap();
        assert_eq!(dp.programmed(&gw("east")), ProgrammedState::NoProxy);
    }

    #[tokio::test]
    async fn east_west_listeners_come_from_connected_proxies() {
        let cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), test_ca());
        let server = Arc::new(DistributionServer::start(cfg).await.unwrap());
        let dp = DistributedDataPlane::with_pools(server.clone(), AddressPools::default());
        let mut changes = dp.changes();
        changes.mark_unchanged();
        assert!(dp.east_west("west").is_empty());

        let hello = Hello {
            proxy_id: "west-1".into(),
            cluster: "west".into(),
            region: "us-west".into(),
            zone: "us-west-2a".into(),
            gateways: None,
            address: None,
            east_west: Some("127.0.0.1:15443".into()),
        };
        let url = format!("https://{}", server.local_addr());
        let who = ProxyIdentity::new(&hello.cluster, &hello.region, &hello.zone, &hello.proxy_id)
            .unwrap();
        let identity =
            Arc::new(CertStore::issued(&test_ca(), &who, Duration::from_secs(600)).unwrap());
        let client = Client::new(ClientConfig::new(url, hello, identity, None)).unwrap();
        let run = tokio::spawn(async move { client.run(&Accept).await });
        let want = vec![(
            "127.0.0.1:15443".parse::<SocketAddr>().unwrap(),
            "us-west-2a".to_string(),
        )];
        tokio::time::timeout(Duration::from_secs(10), async {
            while dp.east_west("west") != want {
                changes.changed().await.unwrap();
            }
        })
        .await
        .expect("the proxy's listener never showed up");
        assert!(dp.east_west("east").is_empty());

        // The proxy goes away: a tick, and its listener is gone.
        run.abort();
        tokio::time::timeout(Duration::from_secs(10), async {
            while !dp.east_west("west").is_empty() {
                changes.changed().await.unwrap();
            }
        })
        .await
        .expect("the proxy's departure was not noticed");
    }
}
