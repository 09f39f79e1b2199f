//! One task per drill that still has something to do, and the slots that decide which run.
//!
//! ```text
//!  DrillShared.drills (from the reconcile loop)
//!     └─► reconcile(): drill gone or replaced (new uid) ─► cancel its task (it rolls back)
//!                      non-terminal, no task yet       ─► spawn runner::drill_task
//!                      terminal / finished here        ─► nothing
//!  Slot: running drills + waiters ordered by (creationTimestamp, cluster/ns/name), each with
//!        its footprint. A waiter runs when no running or older waiting drill is of its
//!        namespace or overlaps its scope, and fewer than the cap run: oldest first, and
//!        disjoint drills of different namespaces side by side.
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

use super::plan::Footprint;
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
    /// The controller's cap of `spec.duration`.
    pub max_duration: Duration,
    /// How many drills may run at once.
    pub max_concurrent: usize,
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
    pub max_duration: Duration,
    pub metrics: Arc<Metrics>,
    pub slot: Slot,
}

/// Who runs, who waits, and what each may touch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SlotState {
    pub running: BTreeMap<DrillKey, Footprint>,
    /// By `(creationTimestamp, key)`: older drills go first.
    pub waiting: BTreeMap<(String, DrillKey), Footprint>,
}

/// Why a drill cannot run yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Blocked {
    /// A running drill of the same namespace, or whose scope overlaps.
    Running { drill: DrillKey, why: Clash },
    /// An older waiting drill that conflicts goes first.
    Older { drill: DrillKey, why: Clash },
    /// The controller's cap of concurrent drills is reached.
    Cap(usize),
}

/// How two drills conflict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Clash {
    /// One drill runs per namespace.
    SameNamespace,
    /// A Gateway or ServiceImport in common (or a kill/blackhole drill).
    Overlap,
}

impl std::fmt::Display for Clash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SameNamespace => "one drill runs per namespace",
            Self::Overlap => "their scopes overlap",
        })
    }
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Running { drill, why } => {
                write!(f, "waiting for drill {drill} to finish ({why})")
            }
            Self::Older { drill, why } => {
                write!(
                    f,
                    "waiting for the older drill {drill} to run first ({why})"
                )
            }
            Self::Cap(n) => write!(
                f,
                "waiting: {n} drills run already, the controller's limit (--max-concurrent-drills)"
            ),
        }
    }
}

fn clash(
    me: &(String, DrillKey),
    mine: &Footprint,
    other: &DrillKey,
    theirs: &Footprint,
) -> Option<Clash> {
    if me.1.namespace == other.namespace {
        Some(Clash::SameNamespace)
    } else if mine.overlaps(theirs) {
        Some(Clash::Overlap)
    } else {
        None
    }
}

impl SlotState {
    /// Whether the waiting drill `me` may run now. The waiters are admitted oldest first, as
    /// if each older one that may run had started already: a drill waits for running drills
    /// and older waiters it conflicts with (so a younger drill never overtakes an older one of
    /// its namespace or scope), and for a free place under `cap`.
    fn admit(&self, me: &(String, DrillKey), cap: usize) -> Result<(), Blocked> {
        let mut admitted: Vec<(&DrillKey, &Footprint)> = Vec::new();
        let mut passed: Vec<(&DrillKey, &Footprint)> = Vec::new();
        for (w, fp) in &self.waiting {
            let blocked = self
                .running
                .iter()
                .find_map(|(k, f)| {
                    clash(w, fp, k, f).map(|why| Blocked::Running {
                        drill: k.clone(),
                        why,
                    })
                })
                .or_else(|| {
                    admitted.iter().chain(&passed).find_map(|(k, f)| {
                        clash(w, fp, k, f).map(|why| Blocked::Older {
                            drill: (*k).clone(),
                            why,
                        })
                    })
                })
                .or_else(|| {
                    (self.running.len() + admitted.len() >= cap).then_some(Blocked::Cap(cap))
                });
            if w == me {
                return blocked.map_or(Ok(()), Err);
            }
            match blocked {
                None => admitted.push((&w.1, fp)),
                Some(_) => passed.push((&w.1, fp)),
            }
        }
        // Not waiting: it runs already.
        Ok(())
    }
}

/// The run slots: one drill per namespace, drills with overlapping scopes one after the
/// other, at most `cap` at once, oldest first.
pub(crate) struct Slot {
    state: watch::Sender<SlotState>,
    cap: usize,
}

impl Slot {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            state: watch::channel(SlotState::default()).0,
            cap: cap.max(1),
        }
    }
}

/// A place in the queue, then a running drill; dropping it frees the slot (or leaves the
/// queue).
pub(crate) struct SlotGuard<'a> {
    slot: &'a Slot,
    me: (String, DrillKey),
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.slot.state.send_modify(|s| {
            s.waiting.remove(&self.me);
            s.running.remove(&self.me.1);
        });
    }
}

impl Slot {
    /// Queues `key` with what it may touch; the guard is a place in the queue until
    /// [`Slot::try_take`] succeeds.
    pub(crate) fn enqueue(
        &self,
        created: String,
        key: DrillKey,
        footprint: Footprint,
    ) -> SlotGuard<'_> {
        let me = (created, key);
        self.state.send_modify(|s| {
            s.waiting.insert(me.clone(), footprint);
        });
        SlotGuard { slot: self, me }
    }

    /// Starts the drill of `guard` if [`SlotState::admit`] lets it. `Err` says what it waits
    /// for.
    pub(crate) fn try_take(&self, guard: &SlotGuard<'_>) -> Result<(), Blocked> {
        let mut result = Ok(());
        self.state.send_if_modified(|s| {
            if s.running.contains_key(&guard.me.1) {
                return false;
            }
            result = s.admit(&guard.me, self.cap);
            if result.is_err() {
                return false;
            }
            match s.waiting.remove(&guard.me) {
                Some(fp) => {
                    s.running.insert(guard.me.1.clone(), fp);
                    true
                }
                None => false,
            }
        });
        result
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
        max_duration: cfg.max_duration,
        metrics: cfg.metrics,
        slot: Slot::new(cfg.max_concurrent),
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
    use crate::world::ObjectKey;

    fn key_in(ns: &str, name: &str) -> DrillKey {
        DrillKey {
            cluster: "east".into(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn key(name: &str) -> DrillKey {
        key_in("demo", name)
    }

    /// A drain drill of `ns` scoped to `gateways` (`ns/name`; empty = its namespace).
    fn fp(ns: &str, gateways: &[&str]) -> Footprint {
        Footprint {
            namespace: ns.into(),
            gateways: gateways
                .iter()
                .map(|g| {
                    let (n, m) = g.split_once('/').unwrap();
                    ObjectKey::new(n, m)
                })
                .collect(),
            imports: vec![],
            exclusive: false,
        }
    }

    #[test]
    fn one_drill_per_namespace_oldest_first() {
        let slot = Slot::new(4);
        let young = slot.enqueue("2026-01-02T00:00:00Z".into(), key("young"), fp("demo", &[]));
        let old = slot.enqueue("2026-01-01T00:00:00Z".into(), key("old"), fp("demo", &[]));
        // The younger drill waits for the older one even though it asked first.
        assert_eq!(
            slot.try_take(&young),
            Err(Blocked::Older {
                drill: key("old"),
                why: Clash::SameNamespace
            })
        );
        assert_eq!(slot.try_take(&old), Ok(()));
        assert_eq!(slot.try_take(&old), Ok(()), "taking twice is a no-op");
        let blocked = slot.try_take(&young).unwrap_err();
        assert_eq!(
            blocked,
            Blocked::Running {
                drill: key("old"),
                why: Clash::SameNamespace
            }
        );
        assert_eq!(
            blocked.to_string(),
            "waiting for drill demo/old in east to finish (one drill runs per namespace)"
        );
        drop(old);
        assert_eq!(slot.try_take(&young), Ok(()));
        drop(young);
        assert_eq!(*slot.subscribe().borrow(), SlotState::default());
    }

    #[test]
    fn leaving_the_queue_unblocks_the_next() {
        let slot = Slot::new(4);
        let a = slot.enqueue("1".into(), key("a"), fp("demo", &[]));
        let b = slot.enqueue("2".into(), key("b"), fp("demo", &[]));
        assert!(slot.try_take(&b).is_err());
        drop(a);
        assert_eq!(slot.try_take(&b), Ok(()));
    }

    #[test]
    fn namespaces_run_side_by_side_unless_scopes_overlap() {
        let slot = Slot::new(4);
        // a's own Gateways and b's own Gateways: disjoint.
        let a = slot.enqueue("1".into(), key_in("a", "x"), fp("a", &[]));
        let b = slot.enqueue("2".into(), key_in("b", "x"), fp("b", &[]));
        // c names a Gateway of a (granted or not, it overlaps a's drill).
        let c = slot.enqueue("3".into(), key_in("c", "x"), fp("c", &["a/gw"]));
        // d names a Gateway of b, but b's drill is older and still waiting: d must not overtake.
        assert_eq!(slot.try_take(&a), Ok(()));
        assert_eq!(
            slot.try_take(&c),
            Err(Blocked::Running {
                drill: key_in("a", "x"),
                why: Clash::Overlap
            })
        );
        let d = slot.enqueue("4".into(), key_in("d", "x"), fp("d", &["b/gw"]));
        assert_eq!(
            slot.try_take(&d),
            Err(Blocked::Older {
                drill: key_in("b", "x"),
                why: Clash::Overlap
            })
        );
        assert_eq!(slot.try_take(&b), Ok(()));
        assert_eq!(slot.subscribe().borrow().running.len(), 2);
        drop(a);
        assert_eq!(slot.try_take(&c), Ok(()));
        drop((b, c, d));
        assert_eq!(*slot.subscribe().borrow(), SlotState::default());
    }

    #[test]
    fn the_cap_bounds_concurrent_drills_and_kill_runs_alone() {
        let slot = Slot::new(2);
        let guards: Vec<_> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, ns)| slot.enqueue(i.to_string(), key_in(ns, "x"), fp(ns, &[])))
            .collect();
        assert_eq!(slot.try_take(&guards[0]), Ok(()));
        assert_eq!(
            slot.try_take(&guards[2]),
            Err(Blocked::Cap(2)),
            "b is admitted first"
        );
        assert_eq!(slot.try_take(&guards[1]), Ok(()));
        assert_eq!(slot.try_take(&guards[2]), Err(Blocked::Cap(2)));
        assert!(
            Blocked::Cap(2)
                .to_string()
                .contains("--max-concurrent-drills")
        );
        drop(guards);

        let mut kill = fp("k", &[]);
        kill.exclusive = true;
        let a = slot.enqueue("1".into(), key_in("a", "x"), fp("a", &[]));
        let k = slot.enqueue("2".into(), key_in("k", "x"), kill);
        assert_eq!(slot.try_take(&a), Ok(()));
        assert_eq!(
            slot.try_take(&k),
            Err(Blocked::Running {
                drill: key_in("a", "x"),
                why: Clash::Overlap
            })
        );
    }
}
