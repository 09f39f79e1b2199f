//! The controller's data plane, backed by the distribution server: snapshots go to the proxies of
//! each cluster, and a Gateway is `Programmed` only once every connected proxy serving it has
//! acknowledged the generation that carries its latest content.
//!
//! Traffic counters the proxies report come back through [`DataPlane::traffic`]: the server's
//! never-decreasing sum over the proxies of the Gateway's cluster.
//!
//! This glue lives in the binary so that neither crate depends on the other: the controller
//! knows the [`DataPlane`] trait, the distribution server knows snapshots and acks.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use meridian_controller::{DataPlane, GatewayRef, ProgrammedState};
use meridian_distribution::{DistributionServer, ProgrammedState as Served};
use meridian_model::Snapshot;
use meridian_model::traffic::GatewayTraffic;
use tokio::sync::watch;

/// [`DataPlane`] over a [`DistributionServer`].
pub struct DistributedDataPlane {
    server: Arc<DistributionServer>,
    /// Generation each cluster's latest content was published as.
    published: Mutex<BTreeMap<String, u64>>,
}

impl DistributedDataPlane {
    /// Wraps a running server.
    pub fn new(server: Arc<DistributionServer>) -> Arc<Self> {
        Arc::new(Self {
            server,
            published: Mutex::new(BTreeMap::new()),
        })
    }

    fn generation(&self, cluster: &str) -> Option<u64> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(cluster)
            .copied()
    }
}

fn dist_ref(gw: &GatewayRef) -> meridian_distribution::GatewayRef {
    meridian_distribution::GatewayRef {
        namespace: gw.namespace.clone(),
        name: gw.name.clone(),
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

    fn programmed(&self, gw: &GatewayRef) -> ProgrammedState {
        let Some(generation) = self.generation(&gw.cluster) else {
            return ProgrammedState::Pending;
        };
        match self
            .server
            .programmed_gateway(&gw.cluster, &dist_ref(gw), generation)
        {
            Served::NoProxy => ProgrammedState::NoProxy,
            Served::Pending { .. } => ProgrammedState::Pending,
            Served::Applied => ProgrammedState::Applied(generation),
            Served::Refused { proxy_id, reason } => {
                ProgrammedState::Refused(format!("proxy {proxy_id}: {reason}"))
            }
        }
    }

    fn addresses(&self, gw: &GatewayRef) -> Vec<IpAddr> {
        self.server
            .addresses(&gw.cluster, &dist_ref(gw))
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.server.subscribe()
    }

    fn traffic(&self, gw: &GatewayRef) -> Option<GatewayTraffic> {
        self.server.traffic(&gw.cluster, &dist_ref(gw))
    }
}
