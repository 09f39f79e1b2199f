//! The status writer: one per member cluster, sending what translation computed, several
//! writes in flight at once.
//!
//! ```text
//! reconcile loop ── submit(update, resourceVersion of the indexed copy) ──► pending (one per object,
//!                                                                          latest wins; never blocks)
//! writer task: while fewer than `concurrency` writes are in flight (--status-write-concurrency,
//!     default 8): take the due job with the earliest time whose object has no write in flight
//!     ─► write (bounded by a timeout), concurrently with the others
//!     GatewayClass, Gateway, BackendTLSPolicy, FailoverPolicy: server-side apply of `status`
//!         (field manager `meridian`, force; a BackendTLSPolicy's status carries the other
//!         controllers' ancestors as they were)
//!     HTTPRoute: PUT …/status of the indexed copy (its resourceVersion guards the write);
//!                on 409: GET, re-merge our parents over the fresh list, PUT again (≤ 3 times)
//!     ok ─► done │ NotFound Status / 422 / newer generation ─► dropped
//!     plain-text 404 (API server still starting), transport error, timeout, 409s ─► retried with
//!         backoff, and at once when the API answers again (retry_now, or another write succeeding)
//! ```
//!
//! Concurrency: a cold start with thousands of routes queues thousands of writes, and one at a
//! time they would take one API round trip each. Writes of different objects are independent
//! (each object's write carries its own status, and an HTTPRoute's its own resourceVersion), so
//! up to `concurrency` run at once. Writes of one object never overlap: an object with a write in
//! flight is skipped when picking the next job, so its newer status waits and is written after
//! the one in flight, whatever order the writes of other objects finish in. Pending jobs are
//! indexed by due time (and the failed ones kept apart), so neither picking the next job nor
//! bringing failed ones forward after a success scans the whole queue.
//!
//! The writer is keyed by object: a newer status replaces a queued or backing-off one (statuses
//! computed one after the other before a write are merged into one write of the latest), and
//! one computed while that object's write is in flight is written right after it. A 404 is "object gone" only
//! when it carries a `Status` with reason `NotFound`; kube-rs turns the plain-text
//! `404 page not found` of an API server that is still starting into a `Status` without that
//! reason, and that write is kept and retried (not lost, not dropped).
//!
//! Superseding (`settle`): translation emits nothing for an object whose indexed copy already
//! says what it wants. When that copy is the one a status of ours was computed against and that
//! status is not confirmed yet (still queued, backing off, in flight, or written but not yet seen
//! by the watch), the reconcile loop hands the copy's status to [`StatusWriter::settle`]: a write
//! never attempted is simply dropped, anything that may have landed is followed by the copy's
//! status. So a write computed before a state change (say, `StaleEndpoints=True` while a member
//! cluster was down) never lands after it.
//!
//! Leader election: writes start only while the gate is open; a write in flight when it closes
//! hands its job back unchanged, for the next leader term.
//!
//! Statuses are shared, not copied: [`StatusUpdate::status`] is an `Arc`, held by the queued job
//! and by the record of what was accepted for the object (below) alike, and a
//! server-side apply body is serialized straight from it.
//!
//! Translation emits a status only when it differs from the indexed copy, and that copy lags
//! behind our own writes until the watch delivers them. The writer therefore remembers, per
//! object, the last status it accepted and the `resourceVersion` of the copy it was computed
//! against: the same status against the same copy is not written twice. A status that keeps being
//! "changed" back (the server stores something else than what we send) is written at most
//! [`MAX_SAME_WRITES`] times per generation, then reported once and left alone — no write storm.
//!
//! Failed writes stay in `pending` (unless a newer status for the same object replaced them) and
//! are retried with exponential backoff, so a status is never lost because translation will not
//! emit it again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use gateway_api::backendtlspolicies::BackendTlsPolicy;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::{HttpRoute, HttpRouteStatusParents};
use gateway_api::listenersets::ListenerSet;
use gateway_api::tlsroutes::TlsRoute;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Resource};
use meridian_crds::meridian::FailoverPolicy;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::status::{StatusKind, StatusUpdate, eq_ignoring_time, merge_route_parents};

/// Field manager of our server-side applies.
pub const FIELD_MANAGER: &str = "meridian";

/// How often the same status may be written for one generation before the writer gives up on
/// it (it does not survive a round trip through the API server).
pub const MAX_SAME_WRITES: u32 = 3;

/// The window in which [`MAX_SAME_WRITES`] is counted: a storm repeats within milliseconds, while
/// a status legitimately restored much later (someone cleared it) is written again.
pub const SAME_WRITES_WINDOW: Duration = Duration::from_secs(60);

/// Status writes in flight at once per member cluster unless told otherwise
/// (`--status-write-concurrency`): enough to hide the round trip of each write at a cold start
/// with thousands of routes, few enough not to crowd an API server's other clients.
pub const DEFAULT_CONCURRENCY: u16 = 8;

/// Conflicts resolved in place (re-read and re-merge) before a route write is retried later.
const MAX_CONFLICTS: u32 = 3;

/// Connect timeout of the client status writes go through ([`for_status_writes`]).
pub const WRITE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Read timeout of the client status writes go through ([`for_status_writes`]): a status write
/// is answered in milliseconds; a connection silent this long is dead (e.g. the API server was
/// killed and the pooled connection still looks open).
pub const WRITE_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// The client config for status writes: `config` with short connect and read timeouts, so a dead
/// connection fails a write in seconds instead of holding it for the whole write timeout. Watches
/// keep the caller's config: a read timeout would cut idle watch streams.
pub fn for_status_writes(mut config: kube::Config) -> kube::Config {
    config.connect_timeout = Some(WRITE_CONNECT_TIMEOUT);
    config.read_timeout = Some(WRITE_READ_TIMEOUT);
    config
}

/// Writer settings.
#[derive(Clone, Debug)]
pub(crate) struct WriterConfig {
    pub controller_name: String,
    pub timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Leader election (`--leader-elect`): writes happen only while this is `true`; a follower
    /// keeps its jobs (latest status per object) and writes them if it becomes the leader.
    /// `None`: always write.
    pub write_gate: Option<watch::Receiver<bool>>,
    /// Writes in flight at once (`--status-write-concurrency`; at least 1). Each is a
    /// different object.
    pub concurrency: usize,
}

/// Waits until the gate is open; `false` if the writer is to stop (shutdown, or the elector is
/// gone: without it this replica cannot know it leads).
async fn gate_open(
    gate: &mut Option<watch::Receiver<bool>>,
    shutdown: &mut watch::Receiver<bool>,
    cluster: &str,
) -> bool {
    let Some(gate) = gate else {
        return true;
    };
    // A gate whose elector is gone stays shut: this replica cannot know that it leads.
    if *gate.borrow_and_update() && gate.has_changed().is_ok() {
        return true;
    }
    tracing::debug!(cluster, "not the leader: status writes wait");
    tokio::select! {
        open = gate.wait_for(|leads| *leads) => {
            if open.is_err() {
                tracing::warn!(cluster, "leader election stopped: no more status writes");
            }
            open.is_ok()
        }
        _ = crate::stopped(shutdown) => false,
    }
}

/// Resolves when the gate closes (never without a gate).
async fn gate_closed(gate: &mut Option<watch::Receiver<bool>>) {
    match gate {
        Some(g) => {
            let _ = g.wait_for(|leads| !*leads).await;
        }
        None => std::future::pending().await,
    }
}

type WriteKey = (StatusKind, String, String);

/// The indexed copy of a route whose status is written (read-merge-replace starts from it).
#[derive(Clone, Debug)]
pub enum RouteCopy {
    /// An HTTPRoute.
    Http(Arc<HttpRoute>),
    /// A GRPCRoute.
    Grpc(Arc<GrpcRoute>),
    /// A TLSRoute.
    Tls(Arc<TlsRoute>),
}

impl RouteCopy {
    /// The PUT body of a status write: this copy's name, namespace and resourceVersion (which
    /// guards the write) carrying `status`, serialized straight from the borrowed parts. No
    /// JSON tree of the route is built, and neither the spec nor the rest of the metadata is
    /// sent: an update of the status subresource takes everything but `status` from the stored
    /// object (the API server copies the stored object, checks the resourceVersion and sets
    /// only the new status; managedFields are the server's), so labels, annotations,
    /// managedFields and the spec would be encoded, sent and decoded for nothing.
    fn status_body(&self, kind: StatusKind, status: &Value) -> serde_json::Result<Vec<u8>> {
        let metadata = match self {
            RouteCopy::Http(r) => &r.metadata,
            RouteCopy::Grpc(r) => &r.metadata,
            RouteCopy::Tls(r) => &r.metadata,
        };
        serde_json::to_vec(&RouteStatusBody {
            api_version: kind.api_version(),
            kind: kind.kind(),
            metadata: StatusMeta {
                name: metadata.name.as_deref(),
                namespace: metadata.namespace.as_deref(),
                resource_version: metadata.resource_version.as_deref(),
            },
            status,
        })
    }
}

/// The body of a route status PUT, borrowed from the indexed copy and the computed status.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RouteStatusBody<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: StatusMeta<'a>,
    status: &'a Value,
}

/// The metadata a status PUT needs: which object, and the resourceVersion it was read at.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusMeta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_version: Option<&'a str>,
}

impl From<Arc<HttpRoute>> for RouteCopy {
    fn from(r: Arc<HttpRoute>) -> Self {
        RouteCopy::Http(r)
    }
}

struct Job {
    update: StatusUpdate,
    route: Option<RouteCopy>,
    attempts: u32,
    not_before: Instant,
}

/// What a write attempt hands back to the run loop: the job (for a retry) and how it went.
struct Attempt {
    key: WriteKey,
    job: Job,
    result: Result<(), WriteError>,
    started: Instant,
    /// Leadership was lost mid-write: the job goes back as it was, for the next term.
    lost_leadership: bool,
}

struct Recent {
    source_rv: Option<String>,
    generation: i64,
    status: Arc<Value>,
    same_writes: u32,
    since: Instant,
}

#[derive(Default)]
struct State {
    /// The latest status per object not written yet; only through [`State::put`] and
    /// [`State::take`], which keep `due` in step.
    pending: BTreeMap<WriteKey, Job>,
    /// `pending` ordered by when each job is due: the next job is found without scanning every
    /// pending one (thousands at a cold start).
    due: BTreeSet<(Instant, WriteKey)>,
    /// The keys of `pending` whose job failed before (`attempts > 0`): the ones
    /// [`State::retry_failed_now`] looks at, without scanning every pending job on each success.
    failed: BTreeSet<WriteKey>,
    recent: HashMap<WriteKey, Recent>,
    /// The objects whose write is under way (at most the writer's concurrency; never two
    /// writes of one object at once).
    in_flight: BTreeSet<WriteKey>,
    /// Objects with a status of ours not yet seen in the index (see [`StatusWriter::settle`]).
    /// Changed only through [`State::unconfirm`] and [`State::confirm`], which note the key in
    /// `unconfirmed_changed`.
    unconfirmed: BTreeSet<WriteKey>,
    /// Keys that came into or left `unconfirmed` since the reconcile loop last asked
    /// ([`StatusWriter::take_unconfirmed_changes`]): it mirrors the set from these instead of
    /// copying the whole set (thousands of keys at a cold start) every pass.
    unconfirmed_changed: BTreeSet<WriteKey>,
    /// Unconfirmed keys whose write left `in_flight` since the last [`StatusWriter::retire_among`]:
    /// with the objects whose indexed copy changed, the only ones that can have become retirable.
    settled: BTreeSet<WriteKey>,
}

impl State {
    /// `key` has a status of ours not yet seen in the index.
    fn unconfirm(&mut self, key: &WriteKey) {
        if self.unconfirmed.insert(key.clone()) {
            self.unconfirmed_changed.insert(key.clone());
        }
    }

    /// `key` has nothing of ours waiting to be seen any more.
    fn confirm(&mut self, key: &WriteKey) {
        if self.unconfirmed.remove(key) {
            self.unconfirmed_changed.insert(key.clone());
        }
    }

    /// Keeps the unconfirmed keys for which `keep` holds, noting the others as changed.
    fn retain_unconfirmed(&mut self, mut keep: impl FnMut(&State, &WriteKey) -> bool) {
        let gone: Vec<WriteKey> = self
            .unconfirmed
            .iter()
            .filter(|k| !keep(self, k))
            .cloned()
            .collect();
        for k in &gone {
            self.confirm(k);
        }
    }

    /// Whether `key` stays unconfirmed: a write of it queued or under way, or the indexed copy
    /// (`current_rv`) still the one our status was computed against.
    fn still_unconfirmed(&self, key: &WriteKey, current_rv: Option<String>) -> bool {
        self.pending.contains_key(key)
            || self.in_flight.contains(key)
            || self
                .recent
                .get(key)
                .is_some_and(|r| r.source_rv == current_rv)
    }

    /// Queues `job` for `key`, replacing a job queued for it.
    fn put(&mut self, key: WriteKey, job: Job) {
        let when = job.not_before;
        if job.attempts > 0 {
            self.failed.insert(key.clone());
        } else {
            self.failed.remove(&key);
        }
        if let Some(old) = self.pending.insert(key.clone(), job) {
            self.due.remove(&(old.not_before, key.clone()));
        }
        self.due.insert((when, key));
    }

    /// Removes the job queued for `key`.
    fn take(&mut self, key: &WriteKey) -> Option<(WriteKey, Job)> {
        let (key, job) = self.pending.remove_entry(key)?;
        self.due.remove(&(job.not_before, key.clone()));
        self.failed.remove(&key);
        Some((key, job))
    }

    /// Brings every job that failed before forward to now: the API answers again.
    fn retry_failed_now(&mut self) -> bool {
        let now = Instant::now();
        let mut moved = Vec::new();
        for key in &self.failed {
            if let Some(job) = self.pending.get_mut(key)
                && job.not_before > now
            {
                moved.push((job.not_before, key.clone()));
                job.not_before = now;
            }
        }
        for (was, key) in &moved {
            self.due.remove(&(*was, key.clone()));
            self.due.insert((now, key.clone()));
        }
        !moved.is_empty()
    }

    /// The job due first among objects without a write under way: `Ok` if due now,
    /// `Err(Some(when))` if later, `Err(None)` if there is none. Skips at most one entry per
    /// write in flight.
    fn next_due(&mut self, now: Instant) -> Result<(WriteKey, Job), Option<Instant>> {
        let (when, key) = self
            .due
            .iter()
            .find(|(_, k)| !self.in_flight.contains(k))
            .cloned()
            .ok_or(None)?;
        if when > now {
            return Err(Some(when));
        }
        let job = self.take(&key).ok_or(None)?;
        self.in_flight.insert(key);
        Ok(job)
    }
}

/// The submitting side of one cluster's writer.
#[derive(Clone)]
pub(crate) struct StatusWriter {
    cluster: Arc<str>,
    shared: Arc<(Mutex<State>, Notify)>,
    metrics: Arc<Metrics>,
}

fn key_of(u: &StatusUpdate) -> WriteKey {
    (
        u.kind,
        u.namespace.clone().unwrap_or_default(),
        u.name.clone(),
    )
}

impl StatusWriter {
    pub fn new(cluster: Arc<str>, metrics: Arc<Metrics>) -> Self {
        Self {
            cluster,
            shared: Arc::new((Mutex::new(State::default()), Notify::new())),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a status computed against the indexed copy with `source_rv`. For HTTPRoutes,
    /// `route` is that copy. Returns whether it was queued (not a repeat).
    pub fn submit(
        &self,
        update: StatusUpdate,
        source_rv: Option<String>,
        route: Option<RouteCopy>,
    ) -> bool {
        let key = key_of(&update);
        let mut state = self.lock();
        let mut same_writes = 0;
        let mut since = Instant::now();
        if let Some(r) = state.recent.get(&key)
            && r.generation == update.generation
            && eq_ignoring_time(&r.status, &update.status)
        {
            if r.source_rv == source_rv {
                self.metrics
                    .status_skipped
                    .with_label_values(&[&self.cluster])
                    .inc();
                return false;
            }
            if r.since.elapsed() < SAME_WRITES_WINDOW {
                same_writes = r.same_writes + 1;
                since = r.since;
            }
            if same_writes >= MAX_SAME_WRITES {
                if same_writes == MAX_SAME_WRITES {
                    tracing::error!(
                        cluster = %self.cluster,
                        kind = update.kind.kind(),
                        object = %format!("{}/{}", key.1, key.2),
                        "status does not stick (written {MAX_SAME_WRITES} times within {SAME_WRITES_WINDOW:?} for one generation); \
                         holding further writes of it"
                    );
                }
                if let Some(r) = state.recent.get_mut(&key) {
                    r.same_writes = same_writes;
                    r.source_rv = source_rv;
                }
                self.metrics
                    .status_skipped
                    .with_label_values(&[&self.cluster])
                    .inc();
                return false;
            }
        }
        self.queue(
            &mut state,
            key,
            update,
            source_rv,
            route,
            same_writes,
            since,
        );
        drop(state);
        self.shared.1.notify_one();
        true
    }

    /// Records `update` as the latest status of its object and queues it (replacing a queued
    /// or backing-off one).
    #[allow(clippy::too_many_arguments)]
    fn queue(
        &self,
        state: &mut State,
        key: WriteKey,
        update: StatusUpdate,
        source_rv: Option<String>,
        route: Option<RouteCopy>,
        same_writes: u32,
        since: Instant,
    ) {
        state.recent.insert(
            key.clone(),
            Recent {
                source_rv,
                generation: update.generation,
                // Shared with the queued job: no copy of the status per queued write.
                status: Arc::clone(&update.status),
                same_writes,
                since,
            },
        );
        state.unconfirm(&key);
        state.put(
            key,
            Job {
                update,
                route,
                attempts: 0,
                not_before: Instant::now(),
            },
        );
        self.metrics
            .status_pending
            .with_label_values(&[&self.cluster])
            .set(state.pending.len() as i64);
    }

    /// Translation found the indexed copy (`source_rv`) already carrying `update.status`. If a
    /// different status of ours was computed against that same copy, it is outdated: dropped if
    /// it was never sent, else followed by this one (it may have landed, or still land). Returns
    /// whether anything changed.
    pub fn settle(
        &self,
        update: StatusUpdate,
        source_rv: Option<String>,
        route: Option<RouteCopy>,
    ) -> bool {
        let key = key_of(&update);
        let mut state = self.lock();
        let same_copy = match state.recent.get(&key) {
            Some(r) if !eq_ignoring_time(&r.status, &update.status) => r.source_rv == source_rv,
            _ => return false,
        };
        let object = format!("{}/{}", key.1, key.2);
        let never_sent = !state.in_flight.contains(&key)
            && state.pending.get(&key).is_some_and(|j| j.attempts == 0);
        // A write never sent is outdated whatever copy it was computed against: the copy now
        // says what we want. (E.g. a follower's writes wait for leadership while the leader
        // writes; on takeover they must not replace what the leader wrote.)
        if !same_copy && !never_sent {
            return false;
        }
        if never_sent {
            state.take(&key);
            state.recent.remove(&key);
            state.confirm(&key);
            self.metrics
                .status_pending
                .with_label_values(&[&self.cluster])
                .set(state.pending.len() as i64);
            tracing::debug!(
                cluster = %self.cluster, kind = update.kind.kind(), %object,
                "queued status superseded before it was sent: the object already says what we want"
            );
            return true;
        }
        tracing::debug!(
            cluster = %self.cluster, kind = update.kind.kind(), %object,
            "an earlier status of ours is outdated; writing the current one after it"
        );
        self.queue(&mut state, key, update, source_rv, route, 0, Instant::now());
        drop(state);
        self.shared.1.notify_one();
        true
    }

    /// Objects with a status of ours that the index has not shown yet: translation reports
    /// for these when their copy already says what we want ([`StatusWriter::settle`]).
    pub fn unconfirmed(&self) -> Vec<(StatusKind, String, String)> {
        self.lock().unconfirmed.iter().cloned().collect()
    }

    /// The keys that came into or left [`StatusWriter::unconfirmed`] since the last call, each
    /// with whether it is unconfirmed now.
    pub fn take_unconfirmed_changes(&self) -> Vec<((StatusKind, String, String), bool)> {
        let mut state = self.lock();
        let changed = std::mem::take(&mut state.unconfirmed_changed);
        changed
            .into_iter()
            .map(|k| {
                let now = state.unconfirmed.contains(&k);
                (k, now)
            })
            .collect()
    }

    /// Forgets unconfirmed objects whose indexed copy moved past the one our status was computed
    /// against (`current_rv`: the copy's resourceVersion now, `None` when gone) and that have
    /// no write queued or under way. Looks at every unconfirmed object; see
    /// [`StatusWriter::retire_among`] for the one a pass uses.
    pub fn retire_seen(&self, current_rv: impl Fn(StatusKind, &str, &str) -> Option<String>) {
        let mut state = self.lock();
        state.settled.clear();
        state.retain_unconfirmed(|s, k| s.still_unconfirmed(k, current_rv(k.0, &k.1, &k.2)));
    }

    /// [`StatusWriter::retire_seen`] for the objects that can have become retirable since the
    /// last call: those whose indexed copy changed (`changed`, as the reconcile loop saw them
    /// from the watch) and those whose write finished since. An unconfirmed object stays so
    /// while a write of it is queued or under way and while its copy is the one the status was
    /// computed against; only a finished write or a new copy can change either, so the result is
    /// the whole scan's at the cost of what changed.
    pub fn retire_among<'k>(
        &self,
        changed: impl IntoIterator<Item = &'k (StatusKind, String, String)>,
        current_rv: impl Fn(StatusKind, &str, &str) -> Option<String>,
    ) {
        let mut state = self.lock();
        let mut candidates = std::mem::take(&mut state.settled);
        candidates.extend(changed.into_iter().cloned());
        for k in &candidates {
            if state.unconfirmed.contains(k)
                && !state.still_unconfirmed(k, current_rv(k.0, &k.1, &k.2))
            {
                state.confirm(k);
            }
        }
    }

    /// Retries every failed write now instead of after its backoff: the cluster's API answers
    /// again (called when it becomes reachable).
    pub fn retry_now(&self) {
        if self.lock().retry_failed_now() {
            self.shared.1.notify_one();
        }
    }

    /// Forgets objects for which `keep` is false (deleted objects), bounding memory.
    pub fn prune(&self, keep: impl Fn(StatusKind, &str, &str) -> bool) {
        let mut state = self.lock();
        state.recent.retain(|(k, ns, n), _| keep(*k, ns, n));
        state.retain_unconfirmed(|s, k| s.recent.contains_key(k));
    }

    /// Updates waiting (including ones backing off).
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// The job due first among objects without a write under way, now marked in flight:
    /// `Ok(job)` if due now, `Err(Some(when))` if later, `Err(None)` if none.
    fn next_job(&self) -> Result<(WriteKey, Job), Option<Instant>> {
        self.lock().next_due(Instant::now())
    }

    /// Books the outcome of a write: a failed job goes back (unless a newer status replaced it)
    /// to be retried after `delay`; a success brings other failed jobs forward.
    fn finish(
        &self,
        key: WriteKey,
        mut job: Job,
        result: &Result<(), WriteError>,
        delay: Duration,
    ) {
        let mut state = self.lock();
        state.in_flight.remove(&key);
        if state.unconfirmed.contains(&key) {
            state.settled.insert(key.clone());
        }
        match result {
            Ok(()) => {
                if state.retry_failed_now() {
                    self.shared.1.notify_one();
                }
            }
            Err(e) if e.is_transient() => {
                job.not_before = Instant::now() + delay;
                // A newer status for the same object replaces the failed one.
                if !state.pending.contains_key(&key) {
                    state.put(key, job);
                }
            }
            Err(_) => {
                // Dropped for good: nothing of ours waits to be seen.
                if !state.pending.contains_key(&key) {
                    state.confirm(&key);
                }
            }
        }
        self.metrics
            .status_pending
            .with_label_values(&[&self.cluster])
            .set(state.pending.len() as i64);
    }

    /// Runs the writer until `shutdown` turns true: up to `cfg.concurrency` writes in flight,
    /// never two of one object.
    pub async fn run(
        self,
        client: kube::Client,
        mut cfg: WriterConfig,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut gate = cfg.write_gate.take();
        let limit = cfg.concurrency.max(1);
        let cfg = Arc::new(cfg);
        let mut running = FuturesUnordered::new();
        loop {
            // Only an idle writer waits for the gate: writes under way end first (each one
            // watches the gate itself and hands its job back when leadership goes).
            if running.is_empty() && !gate_open(&mut gate, &mut shutdown, &self.cluster).await {
                return;
            }
            let leads = leading(&gate);
            if !leads && running.is_empty() {
                // The gate closed again since it opened: wait for it at the top.
                continue;
            }
            let mut next_due = None;
            // Bounded by `limit`: every pass adds one write or stops.
            while leads && running.len() < limit {
                match self.next_job() {
                    Ok((key, job)) => running.push(attempt(
                        client.clone(),
                        Arc::clone(&cfg),
                        gate.clone(),
                        key,
                        job,
                    )),
                    Err(when) => {
                        next_due = when;
                        break;
                    }
                }
            }
            let sleep = async {
                match next_due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(done) = running.next(), if !running.is_empty() => self.book(&cfg, done),
                _ = sleep => {}
                _ = self.shared.1.notified() => {}
                _ = gate_closed(&mut gate), if leads => {}
                _ = crate::stopped(&mut shutdown) => return,
            }
        }
    }

    /// Books one finished attempt: metrics, the log line, and the job's fate ([`Self::finish`]).
    fn book(&self, cfg: &WriterConfig, done: Attempt) {
        let Attempt {
            key,
            mut job,
            result,
            started,
            lost_leadership,
        } = done;
        if lost_leadership {
            // The job goes back as it was, for the next leader term.
            self.finish(key, job, &result, Duration::ZERO);
            return;
        }
        let kind = job.update.kind.kind();
        self.metrics
            .status_write_seconds
            .with_label_values(&[&self.cluster, kind])
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .status_writes
            .with_label_values(&[&self.cluster, kind, result_label(&result)])
            .inc();
        // Formatted only if a line is logged (most writes log nothing at the default level).
        let object = ObjectName(&key);
        let mut delay = Duration::ZERO;
        match &result {
            Ok(()) => tracing::debug!(cluster = %self.cluster, kind, %object, "status written"),
            Err(WriteError::Gone) => {
                tracing::debug!(cluster = %self.cluster, kind, %object, "object gone; status dropped")
            }
            Err(WriteError::Stale) => tracing::debug!(
                cluster = %self.cluster, kind, %object,
                "object has a newer generation; status dropped until it is translated again"
            ),
            Err(WriteError::Invalid(msg)) => tracing::error!(
                cluster = %self.cluster, kind, %object, error = %msg,
                "status rejected by the API server; not retried"
            ),
            Err(e) => {
                let attempts = job.attempts + 1;
                job.attempts = attempts;
                delay = backoff(cfg, attempts);
                tracing::warn!(
                    cluster = %self.cluster, kind, %object, error = %e, attempt = attempts,
                    retry_in = ?delay, "status write failed; retried then, or as soon as the API answers again"
                );
            }
        }
        self.finish(key, job, &result, delay);
    }
}

/// `namespace/name` of a write's object, for log lines.
struct ObjectName<'a>(&'a WriteKey);

impl std::fmt::Display for ObjectName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0.1, self.0.2)
    }
}

/// One write of `job`, bounded by the write timeout, given up when leadership goes.
async fn attempt(
    client: kube::Client,
    cfg: Arc<WriterConfig>,
    mut gate: Option<watch::Receiver<bool>>,
    key: WriteKey,
    job: Job,
) -> Attempt {
    let started = Instant::now();
    let (result, lost_leadership) = tokio::select! {
        r = tokio::time::timeout(cfg.timeout, write(&client, &cfg, &job)) => {
            (r.unwrap_or(Err(WriteError::Timeout)), false)
        }
        _ = gate_closed(&mut gate) => (Err(WriteError::Retry("leadership lost".into())), true),
    };
    Attempt {
        key,
        job,
        result,
        started,
        lost_leadership,
    }
}

/// Whether writes may start now (no gate, or a gate that is open and still has its elector).
fn leading(gate: &Option<watch::Receiver<bool>>) -> bool {
    gate.as_ref()
        .is_none_or(|g| *g.borrow() && g.has_changed().is_ok())
}

fn backoff(cfg: &WriterConfig, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    cfg.backoff_base.saturating_mul(factor).min(cfg.backoff_max)
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("object not found")]
    Gone,
    #[error("API server not ready (404 without a Status body): {0}")]
    NotReady(String),
    #[error("object has a newer generation")]
    Stale,
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("conflicts kept coming")]
    Conflict,
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Retry(String),
}

impl WriteError {
    /// Worth retrying: the same write may succeed later.
    fn is_transient(&self) -> bool {
        matches!(
            self,
            WriteError::NotReady(_)
                | WriteError::Retry(_)
                | WriteError::Timeout
                | WriteError::Conflict
        )
    }
}

fn result_label(r: &Result<(), WriteError>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(WriteError::Gone) => "gone",
        Err(WriteError::NotReady(_)) => "not_ready",
        Err(WriteError::Stale) => "stale",
        Err(WriteError::Invalid(_)) => "invalid",
        Err(WriteError::Conflict) => "conflict",
        Err(WriteError::Timeout) => "timeout",
        Err(WriteError::Retry(_)) => "error",
    }
}

enum Classified {
    Conflict,
    Other(WriteError),
}

/// Sorts a kube error by what the writer does with it. kube-rs reports every HTTP error as
/// `Error::Api(Status)`: the server's `Status` when the body is one, else a `Status` it made up
/// with the HTTP code, the body as message and reason "Failed to parse error data". Only a real
/// `Status` says `NotFound` (the object or its type is gone); a bare 404 comes from a server
/// whose API is not up yet (a starting kube-apiserver answers `404 page not found`).
fn classify(e: kube::Error) -> Classified {
    match e {
        kube::Error::Api(s) if s.is_conflict() => Classified::Conflict,
        kube::Error::Api(s) if s.is_not_found() => Classified::Other(WriteError::Gone),
        kube::Error::Api(s) if s.code == 404 => {
            Classified::Other(WriteError::NotReady(s.message.trim().to_string()))
        }
        kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
            Classified::Other(WriteError::Invalid(s.message.clone()))
        }
        other => Classified::Other(WriteError::Retry(other.to_string())),
    }
}

fn api_for<K: kube::Resource<DynamicType = ()>>(
    client: &kube::Client,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<K>(&());
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

async fn write(client: &kube::Client, cfg: &WriterConfig, job: &Job) -> Result<(), WriteError> {
    let u = &job.update;
    match u.kind {
        StatusKind::GatewayClass
        | StatusKind::Gateway
        | StatusKind::FailoverPolicy
        | StatusKind::BackendTlsPolicy
        | StatusKind::ListenerSet => {
            let api = match u.kind {
                StatusKind::ListenerSet => api_for::<ListenerSet>(client, u.namespace.as_deref()),
                StatusKind::GatewayClass => api_for::<GatewayClass>(client, None),
                StatusKind::BackendTlsPolicy => {
                    api_for::<BackendTlsPolicy>(client, u.namespace.as_deref())
                }
                StatusKind::FailoverPolicy => {
                    api_for::<FailoverPolicy>(client, u.namespace.as_deref())
                }
                _ => api_for::<Gateway>(client, u.namespace.as_deref()),
            };
            // Serialized straight from the shared status (no copy into a JSON body).
            let body = ApplyStatus {
                api_version: u.kind.api_version(),
                kind: u.kind.kind(),
                metadata: ApplyMeta {
                    name: &u.name,
                    namespace: u.namespace.as_deref(),
                },
                status: &u.status,
            };
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            api.patch_status(&u.name, &pp, &Patch::Apply(&body))
                .await
                .map(drop)
                .map_err(|e| match classify(e) {
                    Classified::Conflict => WriteError::Conflict,
                    Classified::Other(e) => e,
                })
        }
        StatusKind::HttpRoute | StatusKind::GrpcRoute | StatusKind::TlsRoute => {
            write_route(client, cfg, job).await
        }
    }
}

/// The body of a status server-side apply.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ApplyStatus<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: ApplyMeta<'a>,
    status: &'a Value,
}

#[derive(Debug, serde::Serialize)]
struct ApplyMeta<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
}

/// Read-modify-write of `status.parents`: first on the indexed copy, then on fresh reads.
async fn write_route(
    client: &kube::Client,
    cfg: &WriterConfig,
    job: &Job,
) -> Result<(), WriteError> {
    let u = &job.update;
    let namespace = u.namespace.as_deref().unwrap_or_default();
    // The Api of a re-read is made only on a conflict (rare); the first PUT needs the path.
    let api = || match u.kind {
        StatusKind::GrpcRoute => api_for::<GrpcRoute>(client, Some(namespace)),
        StatusKind::TlsRoute => api_for::<TlsRoute>(client, Some(namespace)),
        _ => api_for::<HttpRoute>(client, Some(namespace)),
    };
    let path = match u.kind {
        StatusKind::GrpcRoute => GrpcRoute::url_path(&(), Some(namespace)),
        StatusKind::TlsRoute => TlsRoute::url_path(&(), Some(namespace)),
        _ => HttpRoute::url_path(&(), Some(namespace)),
    };
    // The indexed copy (with its resourceVersion) carrying the status translation merged.
    let mut body = match &job.route {
        Some(route) if job.attempts == 0 => Some(
            route
                .status_body(u.kind, &u.status)
                .map_err(|e| WriteError::Invalid(format!("encoding route: {e}")))?,
        ),
        // A retry starts from a fresh read: the copy we had is likely outdated.
        _ => None,
    };
    for _ in 0..MAX_CONFLICTS {
        let target = match body.take() {
            Some(b) => b,
            None => match remerge(&api(), cfg, u).await? {
                Some(o) => serde_json::to_vec(&o)
                    .map_err(|e| WriteError::Invalid(format!("encoding route: {e}")))?,
                None => return Ok(()),
            },
        };
        match put_status(client, &path, &u.name, target).await {
            Ok(()) => return Ok(()),
            Err(e) => match classify(e) {
                Classified::Conflict => continue,
                Classified::Other(e) => return Err(e),
            },
        }
    }
    Err(WriteError::Conflict)
}

/// `PUT {path}/{name}/status` with a serialized object. The answer (the whole object as stored)
/// is checked to be JSON and otherwise ignored: nothing of it is needed, so no object is built
/// from it. Errors are kube's own (`Error::Api` with the server's `Status`, or one kube made up
/// for a body that is not a `Status`), the same `classify` sorts for every other write.
async fn put_status(
    client: &kube::Client,
    path: &str,
    name: &str,
    body: Vec<u8>,
) -> Result<(), kube::Error> {
    let mut req = kube::core::Request::new(path)
        .replace_subresource("status", name, &PostParams::default(), body)
        .map_err(kube::Error::BuildRequest)?;
    req.extensions_mut().insert("replace_status");
    client.request::<serde::de::IgnoredAny>(req).await.map(drop)
}

/// Reads the route and merges our parents into its current list. `None` when nothing needs
/// writing (the fresh list already says what we want).
async fn remerge(
    api: &Api<DynamicObject>,
    cfg: &WriterConfig,
    u: &StatusUpdate,
) -> Result<Option<DynamicObject>, WriteError> {
    let mut fresh = api
        .get_status(&u.name)
        .await
        .map_err(|e| match classify(e) {
            Classified::Conflict => WriteError::Conflict,
            Classified::Other(e) => e,
        })?;
    if fresh.metadata.generation.unwrap_or(0) > u.generation {
        return Err(WriteError::Stale);
    }
    let current_value = fresh
        .data
        .get("status")
        .and_then(|s| s.get("parents"))
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    let current: Vec<HttpRouteStatusParents> = serde_json::from_value(current_value.clone())
        .map_err(|e| WriteError::Invalid(format!("route status.parents does not decode: {e}")))?;
    let ours = u.route_parents_of(&cfg.controller_name);
    let namespace = u.namespace.as_deref().unwrap_or_default();
    let merged = merge_route_parents(
        &current,
        ours,
        &cfg.controller_name,
        namespace,
        Timestamp::now(),
    );
    let merged = serde_json::to_value(&merged)
        .map_err(|e| WriteError::Invalid(format!("encoding route parents: {e}")))?;
    if eq_ignoring_time(&current_value, &merged) {
        return Ok(None);
    }
    match fresh.data.get_mut("status").and_then(Value::as_object_mut) {
        Some(status) => {
            status.insert("parents".to_string(), merged);
        }
        None => {
            if let Some(data) = fresh.data.as_object_mut() {
                data.insert("status".to_string(), json!({ "parents": merged }));
            }
        }
    }
    Ok(Some(fresh))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn update(name: &str, generation: i64, reason: &str) -> StatusUpdate {
        StatusUpdate {
            cluster: "east".into(),
            kind: StatusKind::Gateway,
            namespace: Some("ns".into()),
            name: name.into(),
            generation,
            status: Arc::new(json!({"conditions": [{"type": "Accepted", "reason": reason,
                "lastTransitionTime": "2024-01-01T00:00:00Z"}]})),
            settles: false,
        }
    }

    /// A queued status is not copied: the job and the writer's record of what it wrote share
    /// the submitted one, which stays as submitted.
    #[test]
    fn a_queued_status_is_shared_not_copied() {
        let w = StatusWriter::new("east".into(), Arc::new(Metrics::new().unwrap()));
        let u = update("a", 1, "X");
        let submitted = Arc::clone(&u.status);
        let before = Value::clone(&submitted);
        assert!(w.submit(u, Some("10".into()), None));
        let state = w.lock();
        let key = (StatusKind::Gateway, "ns".to_string(), "a".to_string());
        let job = &state.pending[&key].update.status;
        let recent = &state.recent[&key].status;
        assert!(
            Arc::ptr_eq(job, &submitted),
            "the job holds the submitted status"
        );
        assert!(Arc::ptr_eq(recent, &submitted), "so does the record");
        // The submitted value, the job's 1 and the record's 1: three owners, one value.
        assert_eq!(Arc::strong_count(&submitted), 3);
        assert_eq!(**job, before);
        assert_eq!(**recent, before);
    }

    #[test]
    fn repeats_against_the_same_copy_are_skipped() {
        let w = StatusWriter::new("east".into(), Arc::new(Metrics::new().unwrap()));
        assert!(w.submit(update("a", 1, "X"), Some("10".into()), None));
        assert!(
            !w.submit(update("a", 1, "X"), Some("10".into()), None),
            "same copy, same status"
        );
        assert_eq!(w.pending(), 1);
        // A different status replaces the pending one (latest wins; still one job).
        assert!(w.submit(update("a", 1, "Y"), Some("10".into()), None));
        assert_eq!(w.pending(), 1);
        assert!(w.submit(update("b", 1, "Y"), Some("3".into()), None));
        assert_eq!(w.pending(), 2);
        w.prune(|_, _, n| n != "b");
        assert!(
            w.submit(update("b", 1, "Y"), Some("3".into()), None),
            "forgotten after prune"
        );
    }

    #[test]
    fn a_status_that_does_not_stick_is_written_a_bounded_number_of_times() {
        let w = StatusWriter::new("east".into(), Arc::new(Metrics::new().unwrap()));
        let mut written = 0;
        for rv in 0..20 {
            if w.submit(update("a", 1, "X"), Some(rv.to_string()), None) {
                written += 1;
            }
        }
        assert_eq!(written, MAX_SAME_WRITES);
        // A new generation starts over.
        assert!(w.submit(update("a", 2, "X"), Some("99".into()), None));
    }

    /// A route status write from the current copy sends no spec and of the metadata only what
    /// names the object and guards the write (the status subresource takes everything but
    /// `status` from the stored object): the write lands at the first attempt and the stored
    /// route keeps its spec, labels and annotations.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_route_status_write_keeps_the_stored_spec_and_metadata() {
        let (sb, client) = gateway_api_sandbox().await;
        let routes: Api<HttpRoute> = Api::namespaced(client.clone(), "default");
        let indexed = create_route(
            &routes,
            json!({"labels": {"team": "a"}, "annotations": {"note": "kept"}}),
            json!({"parentRefs": [{"name": "gw"}], "hostnames": ["a.example"]}),
        )
        .await;
        let body = RouteCopy::from(Arc::new(indexed.clone()))
            .status_body(StatusKind::HttpRoute, &json!({"parents": []}))
            .unwrap();
        let sent: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            sent["metadata"],
            json!({"name": "r", "namespace": "default",
                "resourceVersion": indexed.metadata.resource_version.clone().unwrap()}),
            "only what names the object and guards the write"
        );
        let me = "meridian.dev/gateway-controller";
        let metrics = Arc::new(Metrics::new().unwrap());
        let writer = StatusWriter::new("east".into(), Arc::clone(&metrics));
        let status = json!({"parents": [{
            "controllerName": me,
            "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"},
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                "message": "", "observedGeneration": 1,
                "lastTransitionTime": "2024-01-01T00:00:00Z"}]}]});
        let update = StatusUpdate {
            cluster: "east".into(),
            kind: StatusKind::HttpRoute,
            namespace: Some("default".into()),
            name: "r".into(),
            generation: 1,
            status: Arc::new(status),
            settles: false,
        };
        let rv = indexed.metadata.resource_version.clone();
        assert!(writer.submit(update, rv, Some(Arc::new(indexed.clone()).into())));
        let (stop_tx, stop_rx) = watch::channel(false);
        let cfg = cfg(Duration::from_secs(5));
        let task = tokio::spawn(writer.clone().run(client.clone(), cfg, stop_rx));
        let ok = || http_route_writes_ok(&metrics);
        wait_until("the write booked", || ok() >= 1).await;
        let stored = routes.get("r").await.unwrap();
        let parents = stored.status.map(|s| s.parents).unwrap_or_default();
        assert_eq!(parents.len(), 1, "{parents:?}");
        assert_eq!(parents[0].controller_name, me);
        assert_eq!(stored.spec, indexed.spec, "the spec is kept");
        assert_eq!(
            stored.metadata.labels, indexed.metadata.labels,
            "labels kept"
        );
        assert_eq!(
            stored.metadata.annotations, indexed.metadata.annotations,
            "annotations kept"
        );
        assert_eq!(
            metrics.status_write_attempts("east"),
            1,
            "written at the first attempt, no conflict re-read"
        );
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        sb.shutdown().await;
    }

    /// HTTPRoute status writes in cluster `east` that succeeded.
    fn http_route_writes_ok(metrics: &Metrics) -> u64 {
        metrics
            .status_writes
            .with_label_values(&["east", "HTTPRoute", "ok"])
            .get()
    }

    /// Creates the HTTPRoute `default/r` with `metadata` (besides name and namespace) and
    /// `spec`; returns it as stored.
    async fn create_route(routes: &Api<HttpRoute>, metadata: Value, spec: Value) -> HttpRoute {
        let mut meta = json!({"name": "r", "namespace": "default"});
        if let (Some(m), Value::Object(extra)) = (meta.as_object_mut(), metadata) {
            m.extend(extra);
        }
        let route: HttpRoute = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": meta, "spec": spec}))
        .unwrap();
        routes.create(&PostParams::default(), &route).await.unwrap()
    }

    /// A route write against an outdated copy hits 409, re-reads, and merges our entry next to
    /// the one another controller wrote meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn route_conflict_rereads_and_keeps_foreign_parents() {
        use crate::status::Cond;
        use gateway_api::httproutes::HttpRouteStatusParentsParentRef;
        use kube::api::PostParams;

        let (sb, client) = gateway_api_sandbox().await;
        let routes: Api<HttpRoute> = Api::namespaced(client.clone(), "default");
        let indexed =
            create_route(&routes, json!({}), json!({"parentRefs": [{"name": "gw"}]})).await;

        // Someone else writes its parent entry: our indexed copy is now outdated.
        let parent = |controller: &str, gw: &str| HttpRouteStatusParents {
            controller_name: controller.into(),
            parent_ref: HttpRouteStatusParentsParentRef {
                group: Some("gateway.networking.k8s.io".into()),
                kind: Some("Gateway".into()),
                name: gw.into(),
                namespace: Some("default".into()),
                port: None,
                section_name: None,
            },
            conditions: vec![
                Cond::new("Accepted", true, "Accepted", "").stamp(1, Timestamp::now()),
            ],
        };
        let mut theirs = indexed.clone();
        theirs.status = Some(gateway_api::httproutes::HttpRouteStatus {
            parents: vec![parent("example.com/other", "theirs")],
        });
        routes
            .replace_status("r", &PostParams::default(), &theirs)
            .await
            .unwrap();

        let me = "meridian.dev/gateway-controller";
        let metrics = Arc::new(Metrics::new().unwrap());
        let writer = StatusWriter::new("east".into(), Arc::clone(&metrics));
        let update = StatusUpdate {
            cluster: "east".into(),
            kind: StatusKind::HttpRoute,
            namespace: Some("default".into()),
            name: "r".into(),
            generation: 1,
            // Computed against the outdated copy: only our entry.
            status: Arc::new(json!({"parents": [parent(me, "gw")]})),
            settles: false,
        };
        let rv = indexed.metadata.resource_version.clone();
        assert!(writer.submit(update, rv, Some(Arc::new(indexed).into())));
        let (stop_tx, stop_rx) = watch::channel(false);
        let cfg = cfg(Duration::from_secs(5));
        let task = tokio::spawn(writer.clone().run(client.clone(), cfg, stop_rx));
        let deadline = Instant::now() + Duration::from_secs(20);
        let parents = loop {
            let r = routes.get("r").await.unwrap();
            let parents = r.status.map(|s| s.parents).unwrap_or_default();
            if parents.iter().any(|p| p.controller_name == me) {
                break parents;
            }
            assert!(
                Instant::now() < deadline,
                "our parent never written: {parents:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let names: Vec<(&str, &str)> = parents
            .iter()
            .map(|p| (p.controller_name.as_str(), p.parent_ref.name.as_str()))
            .collect();
        assert_eq!(names, vec![("example.com/other", "theirs"), (me, "gw")]);
        assert_eq!(writer.pending(), 0);
        // The stored status can be read before the writer has booked the answer to its PUT.
        let ok = || http_route_writes_ok(&metrics);
        wait_until("the write booked", || ok() >= 1).await;
        assert_eq!(ok(), 1, "one write, after the re-read");
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        sb.shutdown().await;
    }

    /// Process CPU time so far (user + system, from `/proc/self/stat`, in clock ticks of 10 ms).
    fn process_cpu() -> Duration {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        // Fields after the command name (which may hold spaces, hence the last ')').
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    /// Measurement, not a check (`--ignored --nocapture`): N HTTPRoute status writes from
    /// indexed copies against the in-process local API, wall time and process CPU (controller
    /// writer and local API together; the local API's share is the same before and after a
    /// writer change).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement"]
    async fn measure_route_status_writes() {
        use kube::api::PostParams;
        let n: usize = std::env::var("N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000);
        let (sb, client) = gateway_api_sandbox().await;
        let routes: Api<HttpRoute> = Api::namespaced(client.clone(), "default");
        let mut created = Vec::with_capacity(n);
        for i in 0..n {
            let route: HttpRoute = serde_json::from_value(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": format!("r{i}"), "namespace": "default",
                    "labels": {"app": "bench", "tier": "web"}},
                "spec": {"parentRefs": [{"name": "gw"}], "hostnames": [format!("h{i}.example")],
                    "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/a"}},
                                            {"headers": [{"name": "x-v", "value": "1"}]}],
                               "backendRefs": [{"name": "svc", "port": 80, "weight": 1}]},
                              {"matches": [{"path": {"type": "Exact", "value": "/b"}}],
                               "backendRefs": [{"name": "svc2", "port": 8080}]}]}}))
            .unwrap();
            created.push(routes.create(&PostParams::default(), &route).await.unwrap());
        }
        let me = "meridian.dev/gateway-controller";
        let metrics = Arc::new(Metrics::new().unwrap());
        let w = StatusWriter::new("east".into(), Arc::clone(&metrics));
        for r in created {
            let rv = r.metadata.resource_version.clone();
            let status = json!({"parents": [{"controllerName": me,
                "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                    "name": "gw", "namespace": "default"},
                "conditions": [
                    {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                     "observedGeneration": 1, "lastTransitionTime": "2024-01-01T00:00:00Z"},
                    {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs",
                     "message": "", "observedGeneration": 1,
                     "lastTransitionTime": "2024-01-01T00:00:00Z"}]}]});
            let u = StatusUpdate {
                cluster: "east".into(),
                kind: StatusKind::HttpRoute,
                namespace: Some("default".into()),
                name: r.metadata.name.clone().unwrap(),
                generation: 1,
                status: Arc::new(status),
                settles: false,
            };
            assert!(w.submit(u, rv, Some(Arc::new(r).into())));
        }
        let ok = || http_route_writes_ok(&metrics);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (cpu0, t0) = (process_cpu(), Instant::now());
        let mut config = cfg(Duration::from_secs(10));
        config.concurrency = 8;
        let task = tokio::spawn(w.clone().run(client.clone(), config, stop_rx));
        let deadline = Instant::now() + Duration::from_secs(600);
        while ok() < n as u64 {
            assert!(Instant::now() < deadline, "writes did not finish");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (wall, cpu) = (t0.elapsed(), process_cpu() - cpu0);
        println!(
            "{n} HTTPRoute status writes: wall {wall:?} ({:.0}/s), process CPU {cpu:?} ({:.0} us/write)",
            n as f64 / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / n as f64
        );
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        sb.shutdown().await;
    }

    fn writer() -> StatusWriter {
        StatusWriter::new("east".into(), Arc::new(Metrics::new().unwrap()))
    }

    fn cfg(timeout: Duration) -> WriterConfig {
        WriterConfig {
            controller_name: "meridian.dev/gateway-controller".into(),
            timeout,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            write_gate: None,
            concurrency: 4,
        }
    }

    fn reason_of(job: &Job) -> &str {
        job.update.status["conditions"][0]["reason"]
            .as_str()
            .unwrap()
    }

    /// Keyed by object: a failed write backs off unless a newer status replaced it meanwhile, and
    /// `retry_now` (the cluster answers again) ends every backoff at once.
    // Deadlines are checked, never slept on: no clock control needed.
    #[test]
    fn newer_status_replaces_a_failed_one_and_retry_now_ends_backoffs() {
        let w = writer();
        assert!(w.submit(update("a", 1, "X"), Some("1".into()), None));
        let (key, job) = w.next_job().ok().unwrap();
        assert_eq!(reason_of(&job), "X");
        // Y arrives while X is in flight; X then fails: Y is what stays.
        assert!(w.submit(update("a", 1, "Y"), Some("1".into()), None));
        let err = Err(WriteError::Retry("connection refused".into()));
        w.finish(key, job, &err, Duration::from_secs(10));
        let (key, mut job) = w.next_job().ok().unwrap();
        assert_eq!(reason_of(&job), "Y");
        job.attempts = 1;
        w.finish(key, job, &err, Duration::from_secs(10));
        let due = w.next_job().err().flatten().unwrap();
        assert!(
            due >= Instant::now() + Duration::from_secs(9),
            "backing off"
        );
        assert!(w.next_job().is_err(), "still backing off");
        w.retry_now();
        let (key, job) = w.next_job().ok().unwrap();
        assert_eq!(reason_of(&job), "Y");
        // A write that succeeds also brings other failed jobs forward.
        assert!(w.submit(update("b", 1, "X"), Some("1".into()), None));
        let (bkey, mut bjob) = w.next_job().ok().unwrap();
        bjob.attempts = 1;
        w.finish(bkey, bjob, &err, Duration::from_secs(10));
        assert!(w.next_job().is_err());
        w.finish(key, job, &Ok(()), Duration::ZERO);
        let (bkey, _) = w.next_job().ok().unwrap();
        assert_eq!(bkey.2, "b");
    }

    /// A status computed against a copy that already says something else is superseded: dropped
    /// if it was never sent, followed by the copy's status if it may have landed.
    #[test]
    fn settle_supersedes_an_outdated_write() {
        let w = writer();
        let rv = || Some("5".to_string());
        // Nothing of ours against this copy: nothing to settle.
        assert!(!w.settle(update("a", 1, "Clean"), rv(), None));

        // Queued, never sent: dropped and forgotten (it may be submitted again later).
        assert!(w.submit(update("a", 1, "Stale"), rv(), None));
        assert!(
            !w.settle(update("a", 1, "Stale"), rv(), None),
            "same status"
        );
        assert!(w.settle(update("a", 1, "Clean"), rv(), None));
        assert_eq!(w.pending(), 0);
        assert!(w.unconfirmed().is_empty());
        // Also when the copy moved on since (another writer, e.g. the leader while this
        // replica's writes waited for leadership, wrote what we want now).
        assert!(w.submit(update("a", 1, "Stale"), rv(), None));
        assert!(w.settle(update("a", 1, "Clean"), Some("6".into()), None));
        assert_eq!(w.pending(), 0);
        assert!(w.submit(update("a", 1, "Stale"), rv(), None));

        // Sent and failed (it may have landed): the copy's status is written after it.
        let (key, mut job) = w.next_job().ok().unwrap();
        job.attempts = 1;
        w.finish(key, job, &Err(WriteError::Timeout), Duration::from_secs(30));
        assert!(w.settle(update("a", 1, "Clean"), rv(), None));
        let (key, job) = w.next_job().expect("due at once, not after the backoff");
        assert_eq!(reason_of(&job), "Clean");
        w.finish(key, job, &Ok(()), Duration::ZERO);

        // In flight on its first attempt when the copy turned out to say something else: the
        // copy's status is written right after it.
        assert!(w.submit(update("a", 1, "Stale"), rv(), None));
        let (key, job) = w.next_job().ok().unwrap();
        assert!(w.settle(update("a", 1, "Clean"), rv(), None));
        w.finish(key, job, &Ok(()), Duration::ZERO);
        let (key, job) = w.next_job().expect("the copy's status follows");
        assert_eq!(reason_of(&job), "Clean");
        w.finish(key, job, &Ok(()), Duration::ZERO);
        assert_eq!(
            w.unconfirmed(),
            vec![(StatusKind::Gateway, "ns".to_string(), "a".to_string())]
        );
        // Retired once the index shows a newer copy and nothing is queued.
        assert_eq!(w.pending(), 0);
        w.retire_seen(|_, _, _| rv());
        assert_eq!(w.unconfirmed().len(), 1, "copy not moved yet");
        w.retire_seen(|_, _, _| Some("6".into()));
        assert!(w.unconfirmed().is_empty());
    }

    /// `retire_among` (what the reconcile loop uses: only the objects whose copy changed, and
    /// the writes that finished) retires exactly what the whole scan of `retire_seen` does, and
    /// `take_unconfirmed_changes` lets a mirror follow the unconfirmed set; over a pseudo-random
    /// run of submits, settles, write outcomes, watch echoes and prunes, on two writers given the
    /// same steps (the clock paused, so both pick their jobs in the same order).
    #[tokio::test(start_paused = true)]
    async fn retiring_among_the_changed_objects_equals_the_whole_scan() {
        let (whole, among) = (writer(), writer());
        let mut mirror: BTreeSet<WriteKey> = BTreeSet::new();
        // Per object: the indexed copy's resourceVersion (`None`: gone).
        let mut rvs: BTreeMap<String, Option<u32>> = BTreeMap::new();
        let mut changed: BTreeSet<WriteKey> = BTreeSet::new();
        let mut seed: u64 = 0x5eed;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let names = ["a", "b", "c", "d", "e", "f"];
        let (mut retired, mut steps_with_unconfirmed) = (0, 0);
        for step in 0..3000 {
            let name = names[next(names.len() as u64) as usize];
            let rv = |rvs: &BTreeMap<String, Option<u32>>, n: &str| {
                rvs.get(n).copied().flatten().map(|v| v.to_string())
            };
            let reason = ["Ready", "Pending", "Invalid"][next(3) as usize];
            match next(7) {
                0 | 1 => {
                    let u = update(name, 1, reason);
                    assert_eq!(
                        whole.submit(u.clone(), rv(&rvs, name), None),
                        among.submit(u, rv(&rvs, name), None)
                    );
                }
                2 => {
                    let u = update(name, 1, reason);
                    assert_eq!(
                        whole.settle(u.clone(), rv(&rvs, name), None),
                        among.settle(u, rv(&rvs, name), None)
                    );
                }
                3 => {
                    let outcome = match next(4) {
                        0 => Err(WriteError::Timeout),
                        1 => Err(WriteError::Gone),
                        _ => Ok(()),
                    };
                    let picked: Vec<Option<WriteKey>> = [&whole, &among]
                        .into_iter()
                        .map(|w| {
                            let (key, job) = w.next_job().ok()?;
                            w.finish(key.clone(), job, &outcome, Duration::from_millis(1));
                            Some(key)
                        })
                        .collect();
                    assert_eq!(picked[0], picked[1], "both writers pick the same job");
                }
                4 | 5 => {
                    // A watch event: the copy changes (or goes).
                    let v = rvs.entry(name.to_string()).or_insert(Some(0));
                    *v = if next(8) == 0 {
                        None
                    } else {
                        Some(v.unwrap_or(0) + 1)
                    };
                    changed.insert((StatusKind::Gateway, "ns".into(), name.into()));
                }
                _ => {
                    if next(10) == 0 {
                        let keep = |_: StatusKind, _: &str, n: &str| rvs.get(n) != Some(&None);
                        whole.prune(keep);
                        among.prune(keep);
                    }
                    let current = |_: StatusKind, _: &str, n: &str| rv(&rvs, n);
                    let before = whole.unconfirmed().len();
                    whole.retire_seen(current);
                    among.retire_among(&changed, current);
                    changed.clear();
                    retired += before - whole.unconfirmed().len();
                }
            }
            assert_eq!(whole.unconfirmed(), among.unconfirmed(), "step {step}");
            for (key, now) in among.take_unconfirmed_changes() {
                if now {
                    mirror.insert(key);
                } else {
                    mirror.remove(&key);
                }
            }
            assert_eq!(
                mirror.iter().cloned().collect::<Vec<_>>(),
                among.unconfirmed(),
                "step {step}: the mirror"
            );
            steps_with_unconfirmed += usize::from(!mirror.is_empty());
        }
        assert!(retired > 50, "the run retires objects ({retired})");
        assert!(steps_with_unconfirmed > 1000, "{steps_with_unconfirmed}");
    }

    #[test]
    fn a_plain_text_404_is_transient_and_a_not_found_status_is_final() {
        let plain =
            kube::core::Status::failure("404 page not found\n", "Failed to parse error data")
                .with_code(404);
        match classify(kube::Error::Api(plain.boxed())) {
            Classified::Other(e @ WriteError::NotReady(_)) => {
                assert!(e.is_transient());
                assert!(e.to_string().contains("404 page not found"), "{e}");
            }
            _ => panic!("plain-text 404 must be NotReady"),
        }
        let gone =
            kube::core::Status::failure("gateways \"gw\" not found", "NotFound").with_code(404);
        assert!(matches!(
            classify(kube::Error::Api(gone.boxed())),
            Classified::Other(WriteError::Gone)
        ));
        assert!(!WriteError::Gone.is_transient());
    }

    /// Creates Gateway `default/gw` (one HTTP listener); the namespace's Gateway API.
    async fn create_gateway(client: &kube::Client) -> Api<Gateway> {
        let gws: Api<Gateway> = Api::namespaced(client.clone(), "default");
        let gw: Gateway = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "default"},
            "spec": {"gatewayClassName": "c", "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP"}]}}))
        .unwrap();
        gws.create(&PostParams::default(), &gw).await.unwrap();
        gws
    }

    /// A local API with one cluster `east` and the Gateway API CRDs installed, and a client of it.
    async fn gateway_api_sandbox() -> (meridian_sandbox::Sandbox, kube::Client) {
        let sb =
            meridian_sandbox::Sandbox::start(meridian_sandbox::SandboxConfig::ephemeral(&["east"]))
                .await
                .unwrap();
        let client =
            kube::Client::try_from(kube::Config::new(sb.clusters()[0].url.parse().unwrap()))
                .unwrap();
        let crds: Api<meridian_crds::CustomResourceDefinition> = Api::all(client.clone());
        for crd in meridian_crds::gateway_api_crds() {
            crds.create(&kube::api::PostParams::default(), &crd)
                .await
                .unwrap();
        }
        (sb, client)
    }

    fn writes(w: &StatusWriter, result: &str) -> u64 {
        w.metrics
            .status_writes
            .with_label_values(&["east", "Gateway", result])
            .get()
    }

    async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Against the sandbox: a Gateway status is applied exactly as submitted (the apply body is
    /// serialized from the shared status), and the submitted status is unchanged by the write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_written_status_is_the_submitted_one() {
        let (sb, client) = gateway_api_sandbox().await;
        create_gateway(&client).await;
        let w = writer();
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(w.clone().run(
            client.clone(),
            cfg(Duration::from_secs(5)),
            stop_rx,
        ));
        let status = json!({"conditions": [{"type": "Accepted", "status": "True",
            "reason": "Accepted", "message": "ok", "observedGeneration": 1,
            "lastTransitionTime": "2024-01-01T00:00:00Z"}]});
        let u = StatusUpdate {
            namespace: Some("default".into()),
            status: Arc::new(status.clone()),
            ..update("gw", 1, "Accepted")
        };
        let submitted = Arc::clone(&u.status);
        w.submit(u, None, None);
        wait_until("the write", || writes(&w, "ok") == 1).await;
        let api = api_for::<Gateway>(&client, Some("default"));
        let stored = api.get("gw").await.unwrap();
        assert_eq!(stored.data["status"], status);
        assert_eq!(*submitted, status);
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        sb.shutdown().await;
    }

    /// Against the sandbox: a write while the API server is "starting" (plain-text 404) is kept
    /// and lands once it is ready; a write for an object that does not exist (a NotFound
    /// `Status`) is dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_survive_a_starting_api_server_and_are_dropped_for_gone_objects() {
        let (sb, client) = gateway_api_sandbox().await;
        let gws = create_gateway(&client).await;
        let w = writer();
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(w.clone().run(
            client.clone(),
            cfg(Duration::from_secs(5)),
            stop_rx,
        ));

        let at = |name: &str| StatusUpdate {
            namespace: Some("default".into()),
            ..update(name, 1, "Accepted")
        };
        // Gone: one attempt, dropped, nothing left.
        w.submit(at("absent"), Some("1".into()), None);
        wait_until("the write for a missing Gateway to be dropped", || {
            writes(&w, "gone") == 1
        })
        .await;
        assert_eq!(w.pending(), 0);

        sb.set_starting("east", None).unwrap();
        w.submit(at("gw"), Some("1".into()), None);
        wait_until("two not-ready attempts", || writes(&w, "not_ready") >= 2).await;
        assert_eq!(w.pending(), 1, "kept for a retry");
        assert_eq!(writes(&w, "gone"), 1, "not mistaken for a deleted object");
        sb.set_starting("east", Some(Duration::ZERO)).unwrap();
        let ready = Instant::now();
        w.retry_now();
        wait_until("the status to land", || writes(&w, "ok") == 1).await;
        assert!(
            ready.elapsed() < Duration::from_secs(2),
            "{:?}",
            ready.elapsed()
        );
        let stored = gws.get_status("gw").await.unwrap();
        let reason = stored.status.unwrap().conditions.unwrap()[0].reason.clone();
        assert_eq!(reason, "Accepted");
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        sb.shutdown().await;
    }

    /// Leader election: while the gate is closed nothing is written and the latest status per
    /// object waits; opening it writes that status; closing it holds writes again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_wait_for_the_leadership_gate() {
        let (sb, client) = gateway_api_sandbox().await;
        let gws = create_gateway(&client).await;
        let w = writer();
        let (gate_tx, gate_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut c = cfg(Duration::from_secs(5));
        c.write_gate = Some(gate_rx);
        let task = tokio::spawn(w.clone().run(client.clone(), c, stop_rx));
        let at = |reason: &str| StatusUpdate {
            namespace: Some("default".into()),
            ..update("gw", 1, reason)
        };
        let reason = || async {
            gws.get_status("gw")
                .await
                .unwrap()
                .status
                .and_then(|s| s.conditions)
                .map(|c| c[0].reason.clone())
        };

        // A follower: a write here takes milliseconds, so 300 ms without one shows it is held.
        w.submit(at("First"), Some("1".into()), None);
        w.submit(at("Latest"), Some("1".into()), None);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(writes(&w, "ok"), 0);
        assert_eq!(w.pending(), 1, "the latest status waits");
        assert_eq!(reason().await, None);

        gate_tx.send(true).unwrap();
        wait_until("the held status to land", || writes(&w, "ok") == 1).await;
        assert_eq!(reason().await.as_deref(), Some("Latest"));

        gate_tx.send(false).unwrap();
        w.submit(at("AfterStepDown"), Some("2".into()), None);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(writes(&w, "ok"), 1, "a follower again writes nothing");
        assert_eq!(reason().await.as_deref(), Some("Latest"));
        assert_eq!(w.pending(), 1);

        stop_tx.send(true).unwrap();
        task.await.unwrap();
        sb.shutdown().await;
    }

    /// A connection that accepts but never answers (a dead API server whose socket still looks
    /// open) fails a write within the write client's read timeout, far below the write timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_connection_fails_a_write_within_the_read_timeout() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            // Bounded: the test makes a handful of connections at most.
            for _ in 0..16 {
                match silent.accept().await {
                    Ok((s, _)) => held.push(s),
                    Err(_) => break,
                }
            }
            std::future::pending::<()>().await;
        });
        let config = for_status_writes(kube::Config::new(url.parse().unwrap()));
        let client = kube::Client::try_from(config).unwrap();
        let w = writer();
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(w.clone().run(client, cfg(Duration::from_secs(30)), stop_rx));
        let started = Instant::now();
        w.submit(update("gw", 1, "X"), Some("1".into()), None);
        wait_until("the first attempt to fail", || writes(&w, "error") >= 1).await;
        let took = started.elapsed();
        assert!(
            took >= WRITE_READ_TIMEOUT && took < WRITE_READ_TIMEOUT + Duration::from_secs(2),
            "failed after {took:?}"
        );
        assert_eq!(writes(&w, "timeout"), 0);
        assert_eq!(w.pending(), 1, "kept for a retry");
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        holder.abort();
    }

    /// A fake API server for status writes: answers each request with its own body after a
    /// delay (`delay(n)` for the n-th request) and counts requests in flight, overall and per
    /// object path, and keeps the last body received per path.
    struct FakeApi {
        url: String,
        stats: Arc<Mutex<FakeStats>>,
        task: tokio::task::JoinHandle<()>,
    }

    #[derive(Default)]
    struct FakeStats {
        requests: usize,
        now: usize,
        max: usize,
        per_path_now: HashMap<String, usize>,
        per_path_max: HashMap<String, usize>,
        last_body: HashMap<String, Value>,
    }

    impl FakeApi {
        async fn start(delay: fn(usize) -> Duration) -> FakeApi {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let stats = Arc::new(Mutex::new(FakeStats::default()));
            let shared = Arc::clone(&stats);
            let task = tokio::spawn(async move {
                // Bounded: the client pools its connections; a test opens a few dozen at most.
                for _ in 0..256 {
                    let Ok((sock, _)) = listener.accept().await else {
                        return;
                    };
                    let stats = Arc::clone(&shared);
                    tokio::spawn(async move {
                        let mut sock = BufReader::new(sock);
                        // One request per pass; a connection carries a bounded number.
                        for _ in 0..10_000 {
                            let mut line = String::new();
                            if sock.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let path = line
                                .split_whitespace()
                                .nth(1)
                                .unwrap_or("")
                                .split('?')
                                .next()
                                .unwrap_or("")
                                .to_string();
                            let mut length = 0;
                            for _ in 0..100 {
                                let mut h = String::new();
                                sock.read_line(&mut h).await.unwrap();
                                let h = h.trim_end();
                                if h.is_empty() {
                                    break;
                                }
                                if let Some((k, v)) = h.split_once(':')
                                    && k.eq_ignore_ascii_case("content-length")
                                {
                                    length = v.trim().parse().unwrap();
                                }
                            }
                            let mut body = vec![0; length];
                            sock.read_exact(&mut body).await.unwrap();
                            let n = {
                                let mut s = stats.lock().unwrap();
                                s.requests += 1;
                                s.now += 1;
                                s.max = s.max.max(s.now);
                                let on_path = s.per_path_now.entry(path.clone()).or_default();
                                *on_path += 1;
                                let on_path = *on_path;
                                let max = s.per_path_max.entry(path.clone()).or_default();
                                *max = (*max).max(on_path);
                                s.last_body
                                    .insert(path.clone(), serde_json::from_slice(&body).unwrap());
                                s.requests
                            };
                            tokio::time::sleep(delay(n)).await;
                            {
                                let mut s = stats.lock().unwrap();
                                s.now -= 1;
                                *s.per_path_now.get_mut(&path).unwrap() -= 1;
                            }
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                 content-length: {}\r\n\r\n",
                                body.len()
                            );
                            let sock = sock.get_mut();
                            sock.write_all(head.as_bytes()).await.unwrap();
                            sock.write_all(&body).await.unwrap();
                        }
                    });
                }
            });
            FakeApi { url, stats, task }
        }

        fn client(&self) -> kube::Client {
            kube::Client::try_from(kube::Config::new(self.url.parse().unwrap())).unwrap()
        }

        fn stats(&self) -> MutexGuard<'_, FakeStats> {
            self.stats.lock().unwrap()
        }

        /// The reason of the last status written for Gateway `ns/name`.
        fn last_reason(&self, name: &str) -> Option<String> {
            let path =
                format!("/apis/gateway.networking.k8s.io/v1/namespaces/ns/gateways/{name}/status");
            let s = self.stats();
            let body = s.last_body.get(&path)?;
            body["status"]["conditions"][0]["reason"]
                .as_str()
                .map(str::to_string)
        }
    }

    impl Drop for FakeApi {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Starts `w` against `api` with `concurrency` writes in flight at most.
    fn run_against(
        w: &StatusWriter,
        api: &FakeApi,
        concurrency: usize,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut c = cfg(Duration::from_secs(10));
        c.concurrency = concurrency;
        let task = tokio::spawn(w.clone().run(api.client(), c, stop_rx));
        (stop_tx, task)
    }

    /// Writes of different objects overlap, up to the bound and never beyond it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_overlap_up_to_the_concurrency_bound() {
        let api = FakeApi::start(|_| Duration::from_millis(100)).await;
        let w = writer();
        for i in 0..24 {
            assert!(w.submit(update(&format!("gw-{i}"), 1, "X"), Some("1".into()), None));
        }
        let started = Instant::now();
        let (stop_tx, task) = run_against(&w, &api, 4);
        wait_until("24 writes", || writes(&w, "ok") == 24).await;
        let took = started.elapsed();
        assert_eq!(api.stats().requests, 24);
        assert_eq!(api.stats().max, 4, "4 in flight at most, and 4 reached");
        // One at a time would take 2.4 s; four at a time about 0.6 s.
        assert!(took < Duration::from_millis(2_000), "took {took:?}");
        assert_eq!(w.pending(), 0);
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    /// A status computed while its object's write is in flight waits for that write (never two
    /// writes of one object at once), and statuses computed meanwhile are merged: the latest is
    /// written once, after the one in flight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_object_is_never_written_twice_at_once() {
        let api = FakeApi::start(|_| Duration::from_millis(150)).await;
        let w = writer();
        let (stop_tx, task) = run_against(&w, &api, 8);
        assert!(w.submit(update("a", 1, "First"), Some("1".into()), None));
        wait_until("the first write in flight", || api.stats().now == 1).await;
        assert!(w.submit(update("a", 1, "Second"), Some("1".into()), None));
        assert!(w.submit(update("a", 1, "Third"), Some("1".into()), None));
        assert!(w.submit(update("b", 1, "Other"), Some("1".into()), None));
        wait_until("every write", || writes(&w, "ok") == 3).await;
        let path = |n: &str| {
            format!("/apis/gateway.networking.k8s.io/v1/namespaces/ns/gateways/{n}/status")
        };
        {
            let s = api.stats();
            assert_eq!(s.requests, 3, "First, then Third (Second merged), and b");
            assert_eq!(s.per_path_max[&path("a")], 1);
            assert_eq!(s.max, 2, "b overlapped a's first write");
        }
        assert_eq!(api.last_reason("a").as_deref(), Some("Third"));
        assert_eq!(api.last_reason("b").as_deref(), Some("Other"));
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    /// Whatever the order in which concurrent writes finish, each object ends with the last
    /// status submitted for it, and no object ever has two writes in flight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_last_status_of_every_object_lands_whatever_the_order() {
        // Uneven answer times, so writes finish out of order.
        let api = FakeApi::start(|n| Duration::from_millis((n as u64 * 7_919) % 37 + 1)).await;
        let w = writer();
        let (stop_tx, task) = run_against(&w, &api, 6);
        let mut last = BTreeMap::new();
        let mut rv = 0u64;
        // A deterministic spread: object i gets its k-th status at step i * 3 + k * 7 (mod 50).
        for step in 0..50u64 {
            for i in 0..20u64 {
                for k in 0..5u64 {
                    if (i * 3 + k * 7) % 50 == step {
                        rv += 1;
                        let name = format!("gw-{i}");
                        let reason = format!("R{k}");
                        assert!(w.submit(update(&name, 1, &reason), Some(rv.to_string()), None));
                        last.insert(name, reason);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        wait_until("every object's last status written", || {
            w.pending() == 0
                && api.stats().now == 0
                && last
                    .iter()
                    .all(|(n, r)| api.last_reason(n).as_deref() == Some(r.as_str()))
        })
        .await;
        {
            let s = api.stats();
            assert!(
                s.per_path_max.values().all(|&m| m == 1),
                "one write per object at a time"
            );
            assert!(s.max <= 6, "{} in flight", s.max);
            assert!(
                s.requests <= 100,
                "at most one write per status: {}",
                s.requests
            );
        }
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let cfg = WriterConfig {
            controller_name: "c".into(),
            timeout: Duration::from_secs(1),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            write_gate: None,
            concurrency: 1,
        };
        assert_eq!(backoff(&cfg, 1), Duration::from_millis(100));
        assert_eq!(backoff(&cfg, 3), Duration::from_millis(400));
        assert_eq!(backoff(&cfg, 40), Duration::from_secs(2));
    }
}
