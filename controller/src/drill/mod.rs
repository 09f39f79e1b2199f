//! The FailoverDrill runner: fail a locality for a while, watch traffic fail over, roll back.
//!
//! ```text
//!  watchers ─► World (FailoverDrill per cluster) ─► reconcile loop ─► DrillShared.drills
//!                                                                        │
//!  manager: one task per non-terminal drill (key + uid) ◄────────────────┘
//!    drill task: validate, check grants ─► wait for the run slot ─► grants again ─► Started
//!       ─► baseline (one window)
//!       ─► fail the target: drain ─► DrillShared.drains ─► reconcile loop puts it into every
//!                                    cluster's snapshot, publishes, proxies ack (failTime)
//!                           kill/blackhole ─► DrillActuator::fail (failTime)
//!       ─► every second: traffic of the scoped Gateways (DataPlane::traffic, all clusters),
//!          sliding-window guards ─► trip: GuardTripped + Aborted, roll back at once;
//!          grants checked again ─► one removed: Aborted (RefNotPermitted), roll back at once
//!       ─► restore (drain removed and acked / DrillActuator::restore) (restoreTime)
//!       ─► after-period (one window) ─► figures ─► Succeeded | Aborted
//! ```
//!
//! Each drill task is the only writer of its drill's status (merge patch of the status
//! subresource, whole status each time, so retries are idempotent) and emits Kubernetes Events
//! (`events.k8s.io/v1`, reporting controller `meridian`) at every step.
//!
//! A drill stays in its namespace: an empty scope means the Gateways of the drill's namespace,
//! and a Gateway or ServiceImport of another namespace needs a ReferenceGrant there (the rule of
//! Gateway API references, [`crate::refgrant`]; grants of the drill's own cluster count), else
//! the drill is refused with `Accepted=False/RefNotPermitted`. Grants are read again when the
//! drill starts and every second while its target is failed: a grant removed mid-drill aborts
//! it and restores the target at once.
//!
//! One drill runs per namespace (namespaces are the same across member clusters, as for MCS),
//! and drills of different namespaces run at once unless their scopes overlap (a Gateway or
//! ServiceImport in common; kill/blackhole overlap everything, as they stop shared backends),
//! up to the controller's cap (`--max-concurrent-drills`). The others stay `Pending` with
//! `Accepted=False/Conflicted` naming what they wait for, and start oldest first. Every
//! `spec.duration` is capped by `--drill-max-duration` (default 15 min).
//!
//! Rollback happens at the end, when a guard trips, when the drill is deleted (the task is
//! cancelled and restores the target before it exits), and when the controller shuts down (the
//! reconcile loop also publishes drain-free snapshots on its way out). Drains live only in this
//! process: a restarted controller has none, and marks any drill it finds `Running` as `Failed`
//! ("controller restarted during the drill; target restored"), restoring kill/blackhole targets
//! through the actuator first.

mod manager;
mod plan;
mod report;
mod runner;
mod series;
mod traffic;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use gateway_api::referencegrants::ReferenceGrant;
pub use meridian_crds::meridian::DrillMode;
use meridian_crds::meridian::FailoverDrill;
use meridian_model::Snapshot;
use meridian_model::snapshot::Drain;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::world::{ObjectKey, World};

pub(crate) use manager::{ManagerConfig, spawn_manager};
pub(crate) use series::{DrillSeries, MAX_DRILLS as SERIES_DRILLS};

/// The locality a drill fails; every set field must match an endpoint's locality.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DrillTarget {
    /// Member cluster.
    pub cluster: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Zone.
    pub zone: Option<String>,
}

impl std::fmt::Display for DrillTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            ("cluster", &self.cluster),
            ("region", &self.region),
            ("zone", &self.zone),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
        f.write_str(&parts.join(" "))
    }
}

/// Why a [`DrillActuator`] could not fail or restore a target. The reason goes into the
/// drill's status as it is, so it says what to do (e.g. "blackhole needs nft: apt-get install
/// -y nftables").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ActuatorError {
    /// What went wrong, for a person.
    pub reason: String,
}

impl From<String> for ActuatorError {
    fn from(reason: String) -> Self {
        Self { reason }
    }
}

impl From<&str> for ActuatorError {
    fn from(reason: &str) -> Self {
        reason.to_string().into()
    }
}

/// What [`DrillActuator::fail`] and [`DrillActuator::restore`] return: `Ok` describes what was
/// done (a sentence for the drill's timeline).
pub type ActuatorFuture<'a> =
    Pin<Box<dyn Future<Output = Result<String, ActuatorError>> + Send + 'a>>;

/// Takes a drill's target down for modes `kill` and `blackhole`: implemented by whoever owns the
/// backends (`meridian up` for its local echo backends). Without one, only `drain` drills run.
pub trait DrillActuator: Send + Sync + 'static {
    /// Takes the target's backends down (Kill) or silently drops their packets (Blackhole).
    fn fail(&self, mode: DrillMode, target: &DrillTarget) -> ActuatorFuture<'_>;
    /// Undoes `fail`. Must be idempotent.
    fn restore(&self, mode: DrillMode, target: &DrillTarget) -> ActuatorFuture<'_>;
}

/// A drill object in one member cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct DrillKey {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for DrillKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} in {}", self.namespace, self.name, self.cluster)
    }
}

/// Every FailoverDrill of every member cluster, as indexed.
pub(crate) type DrillSet = Arc<BTreeMap<DrillKey, Arc<FailoverDrill>>>;

/// The ReferenceGrants of one member cluster, as indexed.
pub(crate) type Grants = BTreeMap<ObjectKey, Arc<ReferenceGrant>>;

/// What the reconcile loop and the drill runner share.
///
/// The runner writes `drains`; the reconcile loop puts them into every cluster's snapshot and
/// reports back what it published (`published`), so the runner can wait for the proxies'
/// acknowledgement of exactly that generation. The loop also hands over the drills it indexed.
pub(crate) struct DrillShared {
    drains: watch::Sender<Vec<Drain>>,
    published: watch::Sender<BTreeMap<String, Arc<Snapshot>>>,
    drills: watch::Sender<DrillSet>,
    /// ReferenceGrants per member cluster (what lets a drill name other namespaces).
    grants: watch::Sender<Arc<BTreeMap<String, Arc<Grants>>>>,
    metrics: Arc<Metrics>,
    /// The traffic of the last drills, for the live view.
    series: Arc<DrillSeries>,
}

impl DrillShared {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            drains: watch::channel(Vec::new()).0,
            published: watch::channel(BTreeMap::new()).0,
            drills: watch::channel(DrillSet::default()).0,
            grants: watch::channel(Arc::default()).0,
            metrics,
            series: Arc::default(),
        })
    }

    /// The traffic series of the last drills (the runners write, the live view reads).
    pub(crate) fn series(&self) -> &Arc<DrillSeries> {
        &self.series
    }

    /// The drains every snapshot must carry now.
    pub(crate) fn drains(&self) -> Vec<Drain> {
        self.drains.borrow().clone()
    }

    /// Ticks when [`DrillShared::drains`] changed.
    pub(crate) fn subscribe_drains(&self) -> watch::Receiver<Vec<Drain>> {
        self.drains.subscribe()
    }

    /// Adds (or replaces) the drain of one drill.
    pub(crate) fn set_drain(&self, drain: Drain) {
        self.drains.send_modify(|ds| {
            ds.retain(|d| d.drill != drain.drill);
            ds.push(drain);
        });
        self.metrics.drains.set(self.drains.borrow().len() as i64);
    }

    /// Removes the drain of one drill; returns whether there was one.
    pub(crate) fn remove_drain(&self, drill: &str) -> bool {
        let removed = self.drains.send_if_modified(|ds| {
            let before = ds.len();
            ds.retain(|d| d.drill != drill);
            ds.len() != before
        });
        self.metrics.drains.set(self.drains.borrow().len() as i64);
        removed
    }

    /// Called by the reconcile loop after handing snapshots to the data plane (all of one pass
    /// at once).
    pub(crate) fn note_published<'a>(
        &self,
        snapshots: impl IntoIterator<Item = (&'a str, Arc<Snapshot>)>,
    ) {
        let snapshots: Vec<(String, Arc<Snapshot>)> = snapshots
            .into_iter()
            .map(|(c, s)| (c.to_string(), s))
            .collect();
        self.published.send_modify(|m| m.extend(snapshots));
    }

    /// The latest snapshot published per cluster.
    pub(crate) fn published(&self) -> BTreeMap<String, Arc<Snapshot>> {
        self.published.borrow().clone()
    }

    /// Ticks on every publish.
    pub(crate) fn subscribe_published(&self) -> watch::Receiver<BTreeMap<String, Arc<Snapshot>>> {
        self.published.subscribe()
    }

    /// Called by the reconcile loop after a FailoverDrill change was applied to the index.
    pub(crate) fn set_drills(&self, world: &World) {
        let mut set = BTreeMap::new();
        for (cluster, state) in &world.clusters {
            for (key, drill) in &state.failover_drills {
                set.insert(
                    DrillKey {
                        cluster: cluster.clone(),
                        namespace: key.namespace.clone(),
                        name: key.name.clone(),
                    },
                    Arc::clone(drill),
                );
            }
        }
        self.drills.send_replace(Arc::new(set));
    }

    pub(crate) fn subscribe_drills(&self) -> watch::Receiver<DrillSet> {
        self.drills.subscribe()
    }

    /// Called by the reconcile loop after a ReferenceGrant change was applied to the index.
    pub(crate) fn set_grants(&self, world: &World) {
        let grants = world
            .clusters
            .iter()
            .map(|(cluster, state)| (cluster.clone(), Arc::new(state.reference_grants.clone())))
            .collect();
        self.grants.send_replace(Arc::new(grants));
    }

    /// The ReferenceGrants of one member cluster now (none when it has none).
    pub(crate) fn grants(&self, cluster: &str) -> Arc<Grants> {
        self.grants
            .borrow()
            .get(cluster)
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn modes_and_targets_print_like_the_spec() {
        // `spec.mode` is the CRD's enum: exact, lower case.
        let parse = |s: &str| serde_json::from_value::<DrillMode>(serde_json::json!(s)).ok();
        for m in [DrillMode::Drain, DrillMode::Kill, DrillMode::Blackhole] {
            assert_eq!(parse(m.as_str()), Some(m));
        }
        assert_eq!(parse("Drain"), None);
        let t = DrillTarget {
            cluster: None,
            region: Some("us-east".into()),
            zone: Some("us-east-a".into()),
        };
        assert_eq!(t.to_string(), "region=us-east zone=us-east-a");
    }

    #[test]
    fn drains_are_kept_per_drill() {
        let shared = DrillShared::new(Arc::new(Metrics::new().unwrap()));
        let mut rx = shared.subscribe_drains();
        let d = |drill: &str, region: &str| Drain {
            drill: drill.into(),
            cluster: None,
            region: Some(region.into()),
            zone: None,
            gateways: vec![],
            backends: vec![],
        };
        shared.set_drain(d("a/x", "us-east"));
        shared.set_drain(d("a/x", "us-west"));
        assert!(rx.has_changed().unwrap());
        assert_eq!(shared.drains(), vec![d("a/x", "us-west")]);
        assert_eq!(shared.metrics.drains.get(), 1);
        rx.mark_unchanged();
        assert!(!shared.remove_drain("a/other"));
        assert!(!rx.has_changed().unwrap());
        assert!(shared.remove_drain("a/x"));
        assert!(shared.drains().is_empty());
        assert_eq!(shared.metrics.drains.get(), 0);
    }
}
