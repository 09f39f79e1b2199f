//! One task per drill that still has something to do, and the slot that lets one run at a time.
//!
//! ```text
//!  DrillShared.drills (from the reconcile loop)
//!     └─► reconcile(): drill gone or replaced (new uid) ─► cancel its task (it rolls back)
//!                      non-terminal, no task yet       ─► spawn runner::drill_task
//!                      terminal / finished here        ─► nothing
//!  Slot: holder + waiters ordered by (creationTimestamp, cluster/ns/name): oldest runs first.
//! ```
//!
//! Tasks start only once the reconcile loop has published snapshots (or after a bounded grace):
//! a drill found at startup must be checked against what the proxies actually get.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use meridian_crds::meridian::{DrillPhase, FailoverDrill};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::{DrillActuator, DrillKey, DrillSet, DrillShared};
use crate::dataplane::DataPlane;
use crate::metrics::Metrics;

/// What [`spawn_manager`] needs from the controller.
pub(crate) struct ManagerConfig {
    pub shared: Arc<DrillShared>,
    pub data_plane: Arc<dyn DataPlane>,
    pub actuator: Option<Arc<dyn DrillActuator>>,
    /// Client per member cluster (status writes, Events).
    pub clients: BTreeMap<String, kube::Client>,
    pub write_timeout: Duration,
    /// Longest wait for the proxies' acknowledgement of a drain (or for the actuator).
    pub ack_timeout: Duration,
    /// Longest wait for the first publish before drills are looked at anyway.
    pub startup_grace: Duration,
    pub metrics: Arc<Metrics>,
}

/// Everything a drill task uses.
pub(crate) struct DrillCtx {
    pub shared: Arc<DrillShared>,
    pub data_plane: Arc<dyn DataPlane>,
    pub actuator: Option<Arc<dyn DrillActuator>>,
    pub clients: BTreeMap<String, kube::Client>,
    pub write_timeout: Duration,
    pub ack_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub slot: Slot,
}

/// Who runs, who waits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SlotState {
    pub holder: Option<DrillKey>,
    /// `(creationTimestamp, key)`: the first one runs next.
    pub waiting: BTreeSet<(String, DrillKey)>,
}

/// The run slot: one drill at a time, oldest first.
pub(crate) struct Slot {
    state: watch::Sender<SlotState>,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            state: watch::channel(SlotState::default()).0,
        }
    }
}

/// Holding the slot; dropping it frees the slot (or leaves the queue).
pub(crate) struct SlotGuard<'a> {
    slot: &'a Slot,
    me: (String, DrillKey),
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.slot.state.send_modify(|s| {
            s.waiting.remove(&self.me);
            if s.holder.as_ref() == Some(&self.me.1) {
                s.holder = None;
            }
        });
    }
}

impl Slot {
    /// Queues `key`; the guard is a place in the queue until [`Slot::try_take`] succeeds.
    pub(crate) fn enqueue(&self, created: String, key: DrillKey) -> SlotGuard<'_> {
        let me = (created, key);
        self.state.send_modify(|s| {
            s.waiting.insert(me.clone());
        });
        SlotGuard { slot: self, me }
    }

    /// Takes the slot if it is free and `guard` is first in line. `Err` names who runs or
    /// goes next.
    pub(crate) fn try_take(&self, guard: &SlotGuard<'_>) -> Result<(), DrillKey> {
        let mut blocker = None;
        self.state.send_if_modified(|s| {
            if s.holder.as_ref() == Some(&guard.me.1) {
                return false;
            }
            match (&s.holder, s.waiting.first()) {
                (None, Some(first)) if *first == guard.me => {
                    s.waiting.remove(&guard.me);
                    s.holder = Some(guard.me.1.clone());
                    true
                }
                (Some(h), _) => {
                    blocker = Some(h.clone());
                    false
                }
                (None, first) => {
                    blocker = first.map(|f| f.1.clone());
                    false
                }
            }
        });
        match blocker {
            None => Ok(()),
            Some(b) => Err(b),
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<SlotState> {
        self.state.subscribe()
    }
}

struct TaskEntry {
    uid: String,
    cancel: watch::Sender<bool>,
}

/// Starts the drill manager on the current runtime.
pub(crate) fn spawn_manager(cfg: ManagerConfig, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    let ctx = Arc::new(DrillCtx {
        shared: cfg.shared,
        data_plane: cfg.data_plane,
        actuator: cfg.actuator,
        clients: cfg.clients,
        write_timeout: cfg.write_timeout,
        ack_timeout: cfg.ack_timeout,
        metrics: cfg.metrics,
        slot: Slot::default(),
    });
    tokio::spawn(run(ctx, cfg.startup_grace, shutdown))
}

async fn run(ctx: Arc<DrillCtx>, startup_grace: Duration, mut shutdown: watch::Receiver<bool>) {
    // Wait for the first publish (bounded): drills are checked against published snapshots.
    let mut published = ctx.shared.subscribe_published();
    let gate = Instant::now() + startup_grace * 2 + Duration::from_secs(5);
    tokio::select! {
        _ = published.wait_for(|p| !p.is_empty()) => {}
        _ = tokio::time::sleep_until(gate) => {
            tracing::warn!("nothing published yet; looking at FailoverDrills anyway");
        }
        _ = crate::stopped(&mut shutdown) => return,
    }

    let mut drills = ctx.shared.subscribe_drills();
    let mut tasks: BTreeMap<DrillKey, TaskEntry> = BTreeMap::new();
    let mut joins: JoinSet<(DrillKey, String)> = JoinSet::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    loop {
        let set = drills.borrow_and_update().clone();
        reconcile(&ctx, &set, &mut tasks, &mut joins, &mut finished, &shutdown);
        tokio::select! {
            changed = drills.changed() => if changed.is_err() { break },
            Some(done) = joins.join_next(), if !joins.is_empty() => {
                match done {
                    Ok((key, uid)) => {
                        if tasks.get(&key).is_some_and(|t| t.uid == uid) {
                            tasks.remove(&key);
                        }
                        finished.insert(uid);
                    }
                    Err(e) => tracing::error!(error = %e, "drill task ended abnormally"),
                }
            }
            _ = crate::stopped(&mut shutdown) => break,
        }
    }
    // Every task sees the shutdown too and rolls back; give them a bounded moment (the handle's
    // shutdown waits 5 s for this task).
    let wait = async { while joins.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_millis(4500), wait)
        .await
        .is_err()
    {
        tracing::warn!("drill tasks did not finish their rollback in time");
    }
}

fn phase_of(d: &FailoverDrill) -> DrillPhase {
    d.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
}

fn reconcile(
    ctx: &Arc<DrillCtx>,
    set: &DrillSet,
    tasks: &mut BTreeMap<DrillKey, TaskEntry>,
    joins: &mut JoinSet<(DrillKey, String)>,
    finished: &mut BTreeSet<String>,
    shutdown: &watch::Receiver<bool>,
) {
    let mut by_phase: BTreeMap<&str, i64> = [
        DrillPhase::Pending,
        DrillPhase::Running,
        DrillPhase::Succeeded,
        DrillPhase::Aborted,
        DrillPhase::Failed,
    ]
    .into_iter()
    .map(|p| (p.as_str(), 0))
    .collect();
    for d in set.values() {
        *by_phase.entry(phase_of(d).as_str()).or_default() += 1;
    }
    for (phase, n) in by_phase {
        ctx.metrics.drills.with_label_values(&[phase]).set(n);
    }

    // Deleted or replaced drills: their tasks roll back and end.
    tasks.retain(|key, entry| {
        let alive = set
            .get(key)
            .is_some_and(|d| d.metadata.uid.as_deref() == Some(entry.uid.as_str()));
        if !alive {
            tracing::info!(drill = %key, "drill deleted: cancelling (the target is restored)");
            let _ = entry.cancel.send(true);
        }
        alive
    });

    let uids: BTreeSet<&str> = set
        .values()
        .filter_map(|d| d.metadata.uid.as_deref())
        .collect();
    finished.retain(|u| uids.contains(u.as_str()));

    let mut todo: Vec<(String, &DrillKey, &Arc<FailoverDrill>)> = Vec::new();
    for (key, drill) in set.iter() {
        let Some(uid) = drill.metadata.uid.as_deref() else {
            continue;
        };
        if finished.contains(uid)
            || tasks.contains_key(key)
            || drill.metadata.deletion_timestamp.is_some()
            || phase_of(drill).is_terminal()
        {
            continue;
        }
        if !ctx.clients.contains_key(&key.cluster) {
            continue;
        }
        todo.push((created(drill), key, drill));
    }
    todo.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    for (_, key, drill) in todo {
        let Some(uid) = drill.metadata.uid.clone() else {
            continue;
        };
        let (cancel_tx, cancel_rx) = watch::channel(false);
        tasks.insert(
            key.clone(),
            TaskEntry {
                uid: uid.clone(),
                cancel: cancel_tx,
            },
        );
        let ctx = Arc::clone(ctx);
        let key = key.clone();
        let drill = Arc::clone(drill);
        let shutdown = shutdown.clone();
        joins.spawn(async move {
            super::runner::drill_task(ctx, key.clone(), drill, cancel_rx, shutdown).await;
            (key, uid)
        });
    }
}

/// `creationTimestamp` as sortable text (RFC 3339 UTC sorts by time); missing sorts first.
pub(crate) fn created(d: &FailoverDrill) -> String {
    d.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(name: &str) -> DrillKey {
        DrillKey {
            cluster: "east".into(),
            namespace: "demo".into(),
            name: name.into(),
        }
    }

    #[test]
    fn the_slot_runs_one_drill_at_a_time_oldest_first() {
        let slot = Slot::default();
        let young = slot.enqueue("2026-01-02T00:00:00Z".into(), key("young"));
        let old = slot.enqueue("2026-01-01T00:00:00Z".into(), key("old"));
        // The younger drill waits for the older one even though it asked first.
        assert_eq!(slot.try_take(&young), Err(key("old")));
        assert_eq!(slot.try_take(&old), Ok(()));
        assert_eq!(slot.try_take(&old), Ok(()), "taking twice is a no-op");
        assert_eq!(slot.try_take(&young), Err(key("old")));
        drop(old);
        assert_eq!(slot.try_take(&young), Ok(()));
        drop(young);
        assert_eq!(*slot.subscribe().borrow(), SlotState::default());
    }

    #[test]
    fn leaving_the_queue_unblocks_the_next() {
        let slot = Slot::default();
        let a = slot.enqueue("1".into(), key("a"));
        let b = slot.enqueue("2".into(), key("b"));
        assert_eq!(slot.try_take(&b), Err(key("a")));
        drop(a);
        assert_eq!(slot.try_take(&b), Ok(()));
    }
}
