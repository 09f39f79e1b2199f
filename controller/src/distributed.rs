//! The controller's data plane, backed by the distribution server: snapshots go to the proxies of
//! each cluster, and a Gateway is `Programmed` only once every connected proxy serving it has
//! acknowledged the generation that carries its latest content.
//!
//! Traffic counters the proxies report come back through [`DataPlane::traffic`]: the server's
//! never-decreasing sum over the proxies of the Gateway's cluster.
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
//! The controller owns this adapter (and depends on `meridian-distribution` for it); the
//! distribution crate knows only snapshots and acks and never depends on the controller.
//! [`DistributedDataPlane::start`] is what `meridian controller --distribution-bind` runs (through
//! [`serve`](crate::serve)); `meridian up` builds the same adapter over its own server with
//! [`DistributedDataPlane::with_pools`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use meridian_distribution::{DistributionServer, ServerConfig};
use meridian_model::Snapshot;
use meridian_model::traffic::GatewayTraffic;
use tokio::sync::watch;

use crate::{ClusterGatewayRef, DataPlane, ProgrammedState};

pub mod addresses;

use addresses::AddressPools;

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
    /// End of the reconnect grace (see the module docs).
    grace_ends: tokio::time::Instant,
    /// Clusters whose proxies reported (acknowledged or refused) since start: out of the grace.
    reported: Mutex<BTreeSet<String>>,
    /// The server's ticks, plus one when the grace ends.
    changes: watch::Sender<u64>,
    forward: tokio::task::JoinHandle<()>,
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
        let grace_ends = tokio::time::Instant::now() + reconnect_grace;
        let (changes, _) = watch::channel(0u64);
        let forward = tokio::spawn(forward_changes(
            server.subscribe(),
            changes.clone(),
            grace_ends,
        ));
        Arc::new(Self {
            server,
            published: Mutex::new(BTreeMap::new()),
            pools: Mutex::new(pools),
            grace_ends,
            reported: Mutex::new(BTreeSet::new()),
            changes,
            forward,
        })
    }

    /// Starts a distribution server on `bind` (proxies present `token`; `insecure` lets them in
    /// without one) and the data plane over it. `meridian controller` checks these flags first
    /// with [`ControllerArgs::distribution_flags`](crate::ControllerArgs::distribution_flags).
    pub async fn start(
        bind: SocketAddr,
        token: Option<String>,
        insecure: bool,
        pools: AddressPools,
        reconnect_grace: Duration,
    ) -> Result<Arc<Self>, DataPlaneError> {
        let mut cfg = ServerConfig::new(bind, token);
        cfg.insecure = insecure;
        let server = DistributionServer::start(cfg)
            .await
            .map_err(|source| DataPlaneError { bind, source })?;
        tracing::info!(addr = %server.local_addr(), "distribution server listening");
        Ok(Self::new(Arc::new(server), pools, reconnect_grace))
    }

    /// Whether `cluster` is still in the reconnect grace.
    fn in_grace(&self, cluster: &str) -> bool {
        tokio::time::Instant::now() < self.grace_ends
            && !self
                .reported
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(cluster)
    }

    fn generation(&self, cluster: &str) -> Option<u64> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(cluster)
            .copied()
    }
}

/// Passes the server's ticks on, and ticks once more when the reconnect grace ends.
async fn forward_changes(
    mut server: watch::Receiver<u64>,
    changes: watch::Sender<u64>,
    grace_ends: tokio::time::Instant,
) {
    let mut grace_pending = true;
    loop {
        tokio::select! {
            r = server.changed() => {
                if r.is_err() {
                    return;
                }
                changes.send_modify(|n| *n += 1);
            }
            _ = tokio::time::sleep_until(grace_ends), if grace_pending => {
                grace_pending = false;
                changes.send_modify(|n| *n += 1);
            }
        }
    }
}

impl DataPlane for DistributedDataPlane {
    fn publish(&self, cluster: &str, snapshot: Snapshot) {
        match self.server.publish(cluster, snapshot) {
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
                self.reported
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use meridian_distribution::{Client, ClientConfig, Hello, Refused, Target};

    use super::*;

    /// A proxy that accepts every snapshot and serves nothing.
    struct Accept;

    impl Target for Accept {
        async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
            Ok(snapshot.generation)
        }
    }

    #[tokio::test]
    async fn east_west_listeners_come_from_connected_proxies() {
        let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), None);
        cfg.insecure = true;
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
        let url = format!("http://{}", server.local_addr());
        let client = Client::new(ClientConfig::new(url, None, hello)).unwrap();
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
