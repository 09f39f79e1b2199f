//! The running controller: watchers, the reconcile loop, status writers and the admin listener.
//!
//! ```text
//!  supervisor + watchers (per cluster) ──Msg──► reconcile loop (owns the World)
//!                                                 1. apply changes; note what they touch
//!                                                 2. after `debounce` of collecting:
//!                                                    objects changed  ─► incremental translation
//!                                                                        of what they affect
//!                                                    EndpointSlices   ─► refresh_endpoints
//!                                                    re-lists, members, reachability,
//!                                                    what incremental cannot do ─► translate
//!                                                    (the echo of our own status write starts
//!                                                     no pass and translates nothing; another
//!                                                     status-only change waits up to
//!                                                     `status_recheck`; a change of what
//!                                                     translation does not read, nothing)
//!                                                 3. snapshots whose content changed ─► DataPlane::publish
//!                                                    (only the Gateways the pass touched are
//!                                                     compared; the published snapshot shares
//!                                                     every other route with the new one)
//!                                                 4. status updates ─► StatusWriter (per cluster)
//!  DataPlane::changes() ──────────────────────────► (incremental: the Gateways whose Programmed
//!                                                     state or addresses changed)
//!  Msg::Reachability(back) ──► StatusWriter::retry_now (failed writes go at once) + full pass
//!  Msg::Member (ControllerHandle::members) ─► add: new index, writer + supervisor started
//!                                             remove: writer + supervisor stopped, endpoints
//!                                             withdrawn after the endpoint grace
//!  after each member change ─► ControllerHandle::member_directory (watch): every member now,
//!                              for what follows them all (mesh trust bundle, bootstrap verifier)
//! ```
//!
//! Member clusters can join and leave while the loop runs ([`Members`]). Each has an index (the
//! one its supervisor's messages carry); one that leaves or reconnects keeps its old index,
//! marked inactive so that messages still in flight from its stopped supervisor are ignored,
//! and a reconnect gets a new index. A cluster that left is not acted for: nothing more is
//! published for its proxies and no status is written to it; what the world holds for it
//! (its endpoints in the other clusters' ServiceImports) goes once the endpoint grace ends.
//!
//! EndpointSlice changes take the endpoints pass: [`Incremental::refresh_endpoints`] patches the
//! endpoints of the routes naming the Service (or its ServiceImport), found through the engine's
//! dependency index and where those routes attached — not by scanning every route.
//!
//! Passes are incremental ([`Incremental`]: a dependency index says what a changed object
//! affects, only that is translated again and the current snapshots are patched) whenever
//! they can be; a full translation runs for re-lists (a watcher's initial list), member
//! clusters joining or leaving, reachability changes, while a member cluster is unreachable,
//! with several networks, and at least every [`FULL_EVERY`] as the reference. Metric
//! `meridian_controller_translate_seconds{mode}`: `full`, `incremental`, `endpoints`.
//!
//! Publishing follows the change, not the snapshot: every pass notes per cluster which Gateways
//! of the current snapshot it touched ([`Touched`]; a full pass: everything). Snapshots share
//! unchanged routes (`Arc`s, see `meridian_model::snapshot`), so `publish_changed` first points
//! the routes of the touched Gateways that did not change at the published snapshot's
//! ([`share_unchanged`]: after a full pass, one comparison of every route; after an
//! incremental one, of the routes it translated again), which also tells it which Gateways
//! really differ. Nothing: nothing is published. Else the snapshot is handed over as an `Arc`
//! (a copy of pointers) with that narrowed hint, and the data plane's endpoint-delta check,
//! route-level diff and encoding look only at those Gateways.
//!
//! Every pass also reports, for objects with a status of ours not yet seen in the index,
//! the status their copy already has; the writer then supersedes a write of ours that became
//! outdated (`StatusWriter::settle`), so a status computed before a state change
//! never lands after it.
//!
//! A cluster acts (gets snapshots published and status written) once its initial sync is done —
//! every kind it serves has been listed — and, so that a ServiceImport does not briefly lose the
//! endpoints of clusters still listing, once every cluster is synced or `startup_grace` has
//! passed since start. An unreachable cluster therefore delays the others by at most
//! `startup_grace`, and afterwards not at all. While no cluster acts, passes do not translate
//! (nothing would use the result): at a cold start the world is translated once, when the last
//! cluster's initial sync completes, not once per cluster's list.
//!
//! Our own status writes come back as watch events. The watcher sorts each new version of a
//! status-bearing object by what translation reads of it ([`crate::Revision`]): a change of
//! labels, resourceVersion or managedFields alone changes nothing translation reads and only
//! reaches the writers' bookkeeping; a status-only change is asked of the incremental engine
//! ([`Incremental::is_echo`]): when the copy now carries exactly the status the last pass
//! computed, it is our echo — no pass is started for it, and the next pass (for whatever reason)
//! only notes it (`Changes::insert_status`); any other status change is translated at the
//! re-check. Noting costs a few µs per echo (unconfirmed sets, the writers' retirement), so
//! echoes left waiting (after a cold start: one per status written) get a pass of their own
//! once events pause for `ECHO_QUIET` — not the next real change's pass, whose apply → served
//! time they would add to — unless passes are full translations then (a member unreachable):
//! gauge `meridian_controller_status_events_waiting`, passes counted as mode `echoes`. Metric
//! `meridian_controller_status_events_total{outcome}`: `echo`, `status`, `unread`. A route
//! create thus costs one incremental pass, not two (the status re-check used to translate the
//! route and the Gateway again for their writes' echoes and unconfirmed entries).
//!
//! Status bookkeeping per pass follows what changed, not how many writes are outstanding (tens
//! of thousands at a cold start): translation reads the writers' unconfirmed objects from a
//! mirror the loop keeps from each writer's changes since the last pass
//! ([`StatusWriter::take_unconfirmed_changes`], handed on as
//! `TranslateConfig::unconfirmed_changed`), and the writers retire confirmed objects among those
//! whose indexed copy changed or whose write finished ([`StatusWriter::retire_among`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use meridian_model::Snapshot;
use meridian_model::patch::{Since, Touched, share_unchanged};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::args::{
    ArgsError, ClusterSpec, ConnectError, ControllerArgs, check_unique_names, client,
};
use crate::dataplane::{DataPlane, StaticDataPlane};
use crate::distributed::addresses::AddressRange;
use crate::drill::{DrillActuator, DrillShared, ManagerConfig, spawn_manager};
use crate::metrics::{Metrics, bind_admin, serve_admin};
use crate::status::{StatusKind, StatusUpdate};
use crate::translate::{
    AddressPolicy, Changes, ClusterGatewayRef, EastWestListeners, Incremental, MissingRemote,
    SUPPORTED_FEATURES, TranslateConfig, UnreachableCluster, next_stale_expiry,
};
use crate::watch::{Msg, Touch, WatchCtx, supervise};
use crate::world::{Kind, ObjectKey, World};
use crate::writer::{StatusWriter, WriterConfig};

/// A member cluster with its client.
#[derive(Clone)]
pub struct MemberCluster {
    /// Name used in snapshots, endpoint tags, metrics and logs.
    pub name: String,
    /// Region of the cluster.
    pub region: String,
    /// Zones of the cluster.
    pub zones: Vec<String>,
    /// Client for the cluster's API.
    pub client: kube::Client,
    /// Network of the cluster's pod IPs; `""` (the default) for every cluster is one flat
    /// network. Clusters on another network than a snapshot's are reached through their
    /// proxies' east-west listeners ([`DataPlane::east_west`]).
    pub network: String,
}

impl MemberCluster {
    /// A member cluster on the default network `""`.
    pub fn new(
        name: impl Into<String>,
        region: impl Into<String>,
        zones: Vec<String>,
        client: kube::Client,
    ) -> Self {
        Self {
            name: name.into(),
            region: region.into(),
            zones,
            client,
            network: String::new(),
        }
    }

    /// The same cluster on network `network`.
    #[must_use]
    pub fn with_network(mut self, network: impl Into<String>) -> Self {
        self.network = network.into();
        self
    }
}

/// A member cluster as the controller runs it now, with its Gateway address pool when one came
/// with it at run time (`--gateway-addresses` pools of `--cluster` members are not repeated
/// here). See [`ControllerHandle::member_directory`].
#[derive(Clone)]
pub struct MemberEntry {
    /// The cluster, its client included.
    pub cluster: MemberCluster,
    /// The pool given to [`Members::add_cluster`] / [`Members::replace_cluster`].
    pub pool: Option<AddressRange>,
}

/// Every member cluster the controller runs now, by name; kept by the reconcile loop.
pub type MemberDirectory = BTreeMap<String, MemberEntry>;

/// A change of the member clusters of a running controller (see
/// [`ControllerHandle::add_cluster`]).
pub(crate) struct MemberChange {
    op: MemberOp,
    reply: oneshot::Sender<Result<(), MemberError>>,
}

enum MemberOp {
    /// Start watching a cluster.
    Add(Box<AddMember>),
    /// Stop watching a cluster; its endpoints go after the endpoint grace.
    Remove { name: String },
}

/// Adds, reconnects and removes member clusters of a running controller; cheap to clone (see
/// [`ControllerHandle::members`]).
#[derive(Clone)]
pub struct Members {
    tx: mpsc::Sender<Msg>,
}

impl Members {
    /// Starts watching member cluster `cluster` while the controller runs (a kubeconfig Secret
    /// appeared): its status is written through `write_client` (build it with
    /// [`crate::for_status_writes`]), its Gateways get addresses from `pool` when given. It acts
    /// (snapshots, status) once its initial sync is done.
    pub async fn add_cluster(
        &self,
        cluster: MemberCluster,
        write_client: kube::Client,
        pool: Option<AddressRange>,
    ) -> Result<(), MemberError> {
        self.add(cluster, write_client, pool, false).await
    }

    /// Reconnects member cluster `cluster.name` with a new configuration (its Secret was
    /// edited): its watchers and writer start again; what is indexed for it stays until the new
    /// watchers have listed again, so its endpoints are served throughout.
    pub async fn replace_cluster(
        &self,
        cluster: MemberCluster,
        write_client: kube::Client,
        pool: Option<AddressRange>,
    ) -> Result<(), MemberError> {
        self.add(cluster, write_client, pool, true).await
    }

    /// [`Members::add_cluster`], or with `replace` [`Members::replace_cluster`].
    async fn add(
        &self,
        cluster: MemberCluster,
        write_client: kube::Client,
        pool: Option<AddressRange>,
        replace: bool,
    ) -> Result<(), MemberError> {
        self.send(MemberOp::Add(Box::new(AddMember {
            cluster,
            write_client,
            pool,
            replace,
        })))
        .await
    }

    /// Stops watching member cluster `name` (its Secret was deleted): its watchers and status
    /// writer stop at once (the controller no longer manages its objects, so it stops writing
    /// their status) and nothing more is published for its proxies; its endpoints stay in the
    /// other clusters' snapshots for the endpoint grace, then are withdrawn.
    pub async fn remove_cluster(&self, name: &str) -> Result<(), MemberError> {
        self.send(MemberOp::Remove {
            name: name.to_string(),
        })
        .await
    }

    async fn send(&self, op: MemberOp) -> Result<(), MemberError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Member(Box::new(MemberChange { op, reply })))
            .await
            .map_err(|_| MemberError::Stopped)?;
        answer.await.map_err(|_| MemberError::Stopped)?
    }
}

/// A cluster to start watching (`replace`: one that is a member already, reconnecting it).
struct AddMember {
    cluster: MemberCluster,
    write_client: kube::Client,
    pool: Option<AddressRange>,
    replace: bool,
}

/// Why a member cluster could not be added, replaced or removed; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// `add_cluster` with the name of a cluster that is a member already.
    #[error("cluster {0} is a member already (replace it to reconnect)")]
    AlreadyMember(String),
    /// `replace_cluster` or `remove_cluster` of a cluster that is not a member.
    #[error("cluster {0} is not a member")]
    NotMember(String),
    /// The name is not usable.
    #[error(transparent)]
    Name(#[from] ArgsError),
    /// The controller stopped.
    #[error("controller stopped")]
    Stopped,
}

/// Everything [`Controller::start`] needs.
pub struct ControllerConfig {
    /// Member clusters (names must be unique).
    pub clusters: Vec<MemberCluster>,
    /// GatewayClasses with this `spec.controllerName` are ours.
    pub controller_name: String,
    /// Where snapshots go and where `Programmed` and addresses come from.
    pub data_plane: Arc<dyn DataPlane>,
    /// Events are collected this long before a translation.
    pub debounce: Duration,
    /// How often each cluster's API is probed (CRD discovery and reachability).
    pub probe_interval: Duration,
    /// How often an unreachable cluster's API is probed (at most `probe_interval`): how soon a
    /// cluster that is back gets its status recomputed and its pending writes retried.
    pub unreachable_probe_interval: Duration,
    /// Deadline of one probe.
    pub probe_timeout: Duration,
    /// How long an unreachable cluster's EndpointSlices keep being served.
    pub endpoint_grace: Duration,
    /// How long synced clusters wait for the others before acting alone.
    pub startup_grace: Duration,
    /// Deadline of one status write.
    pub write_timeout: Duration,
    /// Per cluster name, the client status writes go through, built with short connect and read
    /// timeouts ([`crate::for_status_writes`]) so a dead connection does not hold a
    /// write for the whole `write_timeout`. A cluster without one writes through its `client`.
    pub write_clients: BTreeMap<String, kube::Client>,
    /// Longest pause between retries of a failed status write.
    pub write_backoff_max: Duration,
    /// Status writes in flight at once per member cluster (each of a different object).
    pub status_write_concurrency: usize,
    /// Admin listener (/healthz, /readyz, /metrics, and /v1/status, /v1/explain for `meridian
    /// status` / `explain`); port 0 picks one.
    pub admin: Option<SocketAddr>,
    /// Bearer token `/v1/` requests of the admin listener must carry; `None`: `/v1/` answers
    /// only on a loopback listener ([`crate::inspect::admin::AdminAuth`]).
    pub admin_token: Option<String>,
    /// Changes that touch only the status of our objects (mostly the echo of our own writes)
    /// are translated at most this often; anything else translates after `debounce`.
    pub status_recheck: Duration,
    /// Carries out FailoverDrills of mode `kill` and `blackhole` (Meridian-owned backends, e.g.
    /// `meridian up`); `None`: such drills fail with `ModeUnsupported`, `drain` drills still run.
    pub drill_actuator: Option<Arc<dyn DrillActuator>>,
    /// Longest wait for the proxies to acknowledge a drill's drain (or for the actuator); a
    /// drill whose target cannot be failed in time fails.
    pub drill_ack_timeout: Duration,
    /// Longest `spec.duration` of a FailoverDrill (at most 1h); longer drills are refused.
    pub drill_max_duration: Duration,
    /// How many FailoverDrills (of different namespaces, with disjoint scopes) may run at once.
    pub max_concurrent_drills: usize,
    /// Leader election: status is written only while this is `true` (see
    /// [`crate::leader::Elector::write_gate`]); `None` writes always.
    pub write_gate: Option<watch::Receiver<bool>>,
    /// Keep loopback endpoint addresses (`--allow-loopback-endpoints`; `meridian up`, tests
    /// with local backends). Default: refused like link-local, unspecified and multicast ones.
    pub allow_loopback_endpoints: bool,
}

impl ControllerConfig {
    /// Defaults for everything but the clusters and the data plane.
    pub fn new(clusters: Vec<MemberCluster>, data_plane: Arc<dyn DataPlane>) -> Self {
        Self {
            clusters,
            controller_name: crate::CONTROLLER_NAME.to_string(),
            data_plane,
            debounce: Duration::from_millis(30),
            probe_interval: Duration::from_secs(10),
            unreachable_probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_secs(5),
            endpoint_grace: Duration::from_secs(300),
            startup_grace: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            write_clients: BTreeMap::new(),
            write_backoff_max: Duration::from_secs(30),
            status_write_concurrency: usize::from(crate::writer::DEFAULT_CONCURRENCY),
            admin: None,
            status_recheck: Duration::from_secs(1),
            drill_actuator: None,
            drill_ack_timeout: Duration::from_secs(30),
            drill_max_duration: meridian_crds::meridian::drill::DEFAULT_MAX_DURATION,
            max_concurrent_drills: 4,
            write_gate: None,
            allow_loopback_endpoints: false,
            admin_token: None,
        }
    }
}

/// Entry point of the controller.
pub struct Controller;

/// A running controller; dropping it does not stop it, [`ControllerHandle::shutdown`] does.
pub struct ControllerHandle {
    metrics: Arc<Metrics>,
    readiness: watch::Receiver<Vec<(String, bool)>>,
    passes: watch::Receiver<u64>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    admin_addr: Option<SocketAddr>,
    /// To the reconcile loop: member clusters joining and leaving.
    tx: mpsc::Sender<Msg>,
    /// The member clusters now (the reconcile loop updates it after each change).
    directory: watch::Receiver<MemberDirectory>,
}

/// Why [`Controller::start`] failed; nothing was left running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No clusters, or two with one name.
    #[error(transparent)]
    Clusters(#[from] ArgsError),
    /// The metrics could not be registered.
    #[error("registering metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    /// The admin listener could not be bound (bad or busy address).
    #[error("binding the admin listener on {addr}: {source}")]
    Admin {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Why [`ControllerHandle::wait_ready`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    /// Some cluster's initial sync is not done yet.
    #[error("clusters not synced after {timeout:?}: {readiness:?}")]
    NotSynced {
        /// How long was waited.
        timeout: Duration,
        /// Each cluster with whether its initial sync is done.
        readiness: Vec<(String, bool)>,
    },
    /// The controller stopped while waiting.
    #[error("controller stopped")]
    Stopped,
}

impl Controller {
    /// Starts watchers, the reconcile loop, one status writer per cluster and the admin listener
    /// on the current tokio runtime.
    ///
    /// ```text
    /// check names ─► metrics ─► admin listener ─► per cluster: status writer + supervisor
    ///   ─► drill manager ─► reconcile loop (owns the World; the others feed it through `Msg`)
    /// ```
    pub async fn start(cfg: ControllerConfig) -> Result<ControllerHandle, StartError> {
        check_unique_names(cfg.clusters.iter().map(|c| c.name.as_str()))?;
        let metrics = Arc::new(Metrics::new().map_err(StartError::Metrics)?);
        if let Some(r) = cfg.data_plane.metrics_registry() {
            metrics.serve_also(r);
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let names: Vec<String> = cfg.clusters.iter().map(|c| c.name.clone()).collect();
        let (ready_tx, ready_rx) =
            watch::channel(names.iter().map(|n| (n.clone(), false)).collect());
        let (passes_tx, passes_rx) = watch::channel(0u64);
        let mut tasks = Vec::new();
        // Bounded: a burst of watch events waits for the loop instead of growing memory.
        let (tx, rx) = mpsc::channel::<Msg>(4096);
        let (directory_tx, directory_rx) = watch::channel(
            cfg.clusters
                .iter()
                .map(|c| {
                    let entry = MemberEntry {
                        cluster: c.clone(),
                        pool: None,
                    };
                    (c.name.clone(), entry)
                })
                .collect::<MemberDirectory>(),
        );
        let drills = DrillShared::new(Arc::clone(&metrics));
        let admin_addr = match cfg.admin {
            Some(addr) => {
                let admin = Admin {
                    addr,
                    token: cfg.admin_token.clone(),
                    tx: tx.clone(),
                    drill_series: Arc::clone(drills.series()),
                    // The live view creates drills (`POST /v1/drills`) in the Gateway's cluster:
                    // any member, those joined later included.
                    members: directory_rx.clone(),
                };
                let (local, admin_tasks) =
                    start_admin(admin, &metrics, ready_rx.clone(), shutdown_rx.clone()).await?;
                tasks.extend(admin_tasks);
                Some(local)
            }
            None => None,
        };
        let spawner = Spawner {
            tx: tx.clone(),
            metrics: Arc::clone(&metrics),
            writer_cfg: WriterConfig {
                controller_name: cfg.controller_name.clone(),
                timeout: cfg.write_timeout,
                backoff_base: Duration::from_millis(250),
                backoff_max: cfg.write_backoff_max,
                write_gate: cfg.write_gate.clone(),
                concurrency: cfg.status_write_concurrency,
            },
            probe_interval: cfg.probe_interval,
            unreachable_probe_interval: cfg.unreachable_probe_interval,
            probe_timeout: cfg.probe_timeout,
            endpoint_grace: cfg.endpoint_grace,
            shutdown: shutdown_rx.clone(),
        };
        let mut world = World::new();
        let mut slots = Vec::new();
        for (i, c) in cfg.clusters.iter().enumerate() {
            let write_client = cfg
                .write_clients
                .get(&c.name)
                .cloned()
                .unwrap_or_else(|| c.client.clone());
            add_to_world(&mut world, c);
            slots.push(spawner.spawn(i, c, write_client));
        }
        tasks.push(spawn_manager(
            ManagerConfig {
                shared: Arc::clone(&drills),
                data_plane: Arc::clone(&cfg.data_plane),
                actuator: cfg.drill_actuator.clone(),
                clients: cfg
                    .clusters
                    .iter()
                    .map(|c| (c.name.clone(), c.client.clone()))
                    .collect(),
                write_timeout: cfg.write_timeout,
                ack_timeout: cfg.drill_ack_timeout,
                max_duration: cfg.drill_max_duration,
                max_concurrent: cfg.max_concurrent_drills,
                startup_grace: cfg.startup_grace,
                metrics: Arc::clone(&metrics),
            },
            shutdown_rx.clone(),
        ));
        let reconciler = Reconciler::new(LoopInputs {
            world,
            names,
            slots,
            spawner,
            startup_grace: cfg.startup_grace,
            data_plane: cfg.data_plane,
            controller_name: cfg.controller_name,
            metrics: Arc::clone(&metrics),
            ready_tx,
            passes_tx,
            drills,
            directory: directory_tx,
            allow_loopback_endpoints: cfg.allow_loopback_endpoints,
        });
        tasks.push(tokio::spawn(reconciler.run(
            rx,
            cfg.debounce,
            cfg.status_recheck,
            shutdown_rx,
        )));
        Ok(ControllerHandle {
            metrics,
            readiness: ready_rx,
            passes: passes_rx,
            shutdown: shutdown_tx,
            tasks,
            admin_addr,
            tx,
            directory: directory_rx,
        })
    }
}

/// Where the admin listener binds, its `/v1/` token, the way to the reconcile loop and the
/// member clusters' clients (for drills started from the live view).
struct Admin {
    addr: SocketAddr,
    token: Option<String>,
    tx: mpsc::Sender<Msg>,
    members: watch::Receiver<MemberDirectory>,
    /// The drills' traffic for the live view's pictures.
    drill_series: Arc<crate::drill::DrillSeries>,
}

/// Binds the admin listener and starts serving it and the live view's hub; returns its address
/// and tasks.
async fn start_admin(
    Admin {
        addr,
        token,
        tx,
        members,
        drill_series,
    }: Admin,
    metrics: &Arc<Metrics>,
    ready: watch::Receiver<Vec<(String, bool)>>,
    shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, Vec<JoinHandle<()>>), StartError> {
    let admin = |source| StartError::Admin { addr, source };
    let listener = bind_admin(addr).await.map_err(admin)?;
    let local = listener.local_addr().map_err(admin)?;
    let auth = crate::inspect::admin::AdminAuth::decide(local, token);
    if auth == crate::inspect::admin::AdminAuth::Closed {
        tracing::warn!(
            addr = %local,
            "admin listener is not on loopback and has no --admin-token-file: /v1/status and \
             /v1/explain answer 403"
        );
    }
    let live = crate::inspect::live::Live::new(
        auth.clone(),
        tx.clone(),
        BTreeMap::new(),
        crate::inspect::live::LiveConfig::default(),
    )
    .with_members(members)
    .with_drill_series(drill_series)
    .with_stream_gauge(metrics.live_streams.clone());
    let live = Arc::new(live);
    let hub = tokio::spawn(Arc::clone(&live).run(shutdown.clone()));
    let inspector = crate::inspect::admin::Inspector { tx, auth, live };
    let task = tokio::spawn(serve_admin(
        listener,
        Arc::clone(metrics),
        ready,
        inspector,
        shutdown,
    ));
    tracing::info!(addr = %local, "admin listener (/healthz, /readyz, /metrics, /v1/status, /v1/explain, /v1/events, live view /ui)");
    Ok((local, vec![task, hub]))
}

/// Adds a member cluster to the world (or updates its region, zones and network, keeping what
/// is indexed for it).
fn add_to_world(world: &mut World, c: &MemberCluster) {
    world
        .add_cluster(c.name.clone(), c.region.clone(), c.zones.clone())
        .network
        .clone_from(&c.network);
}

/// What starting one member cluster's status writer and supervisor needs; kept by the reconcile
/// loop so clusters can join while it runs.
struct Spawner {
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Metrics>,
    writer_cfg: WriterConfig,
    probe_interval: Duration,
    unreachable_probe_interval: Duration,
    probe_timeout: Duration,
    endpoint_grace: Duration,
    /// The controller's shutdown.
    shutdown: watch::Receiver<bool>,
}

/// One member cluster's running parts, at its index in the reconcile loop's vectors. A cluster
/// that leaves or reconnects keeps its index (messages still in flight from its old supervisor
/// carry it and are ignored); a reconnect gets a new one.
struct Slot {
    /// Stops the writer and the supervisor (which stops the watchers).
    stop: Arc<watch::Sender<bool>>,
    writer: StatusWriter,
    tasks: Vec<JoinHandle<()>>,
    /// `false` once the cluster left or was replaced.
    active: bool,
}

impl Slot {
    /// Stops the cluster's writer and supervisor (without waiting for them).
    fn stop(&mut self) {
        self.active = false;
        let _ = self.stop.send(true);
    }
}

impl Spawner {
    /// Starts the status writer and the supervisor of cluster `c` at index `i`. They stop when
    /// the slot's `stop` fires or the controller shuts down.
    fn spawn(&self, i: usize, c: &MemberCluster, write_client: kube::Client) -> Slot {
        let name: Arc<str> = Arc::from(c.name.as_str());
        self.metrics
            .cluster_synced
            .with_label_values(&[&c.name])
            .set(0);
        let (stop, stop_rx) = watch::channel(false);
        let stop = Arc::new(stop);
        let mut tasks = Vec::new();
        // The controller's shutdown stops this cluster too; the forwarder ends with the cluster.
        let (fwd_stop, mut global) = (Arc::clone(&stop), self.shutdown.clone());
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = crate::stopped(&mut global) => {
                    let _ = fwd_stop.send(true);
                }
                _ = fwd_stop.closed() => {}
            }
        }));
        let writer = StatusWriter::new(name.clone(), Arc::clone(&self.metrics));
        tasks.push(tokio::spawn(writer.clone().run(
            write_client,
            self.writer_cfg.clone(),
            stop_rx.clone(),
        )));
        let ctx = WatchCtx {
            cluster: i,
            name,
            client: c.client.clone(),
            tx: self.tx.clone(),
            metrics: Arc::clone(&self.metrics),
            probe_interval: self.probe_interval,
            unreachable_probe_interval: self.unreachable_probe_interval,
            probe_timeout: self.probe_timeout,
            endpoint_grace: self.endpoint_grace,
        };
        tasks.push(tokio::spawn(supervise(ctx, stop_rx)));
        Slot {
            stop,
            writer,
            tasks,
            active: true,
        }
    }
}

impl ControllerHandle {
    /// The controller's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Where the admin listener is bound, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Each cluster with whether its initial sync is done.
    pub fn readiness(&self) -> Vec<(String, bool)> {
        self.readiness.borrow().clone()
    }

    /// Waits until every cluster finished its initial sync, or fails after `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ReadyError> {
        let mut rx = self.readiness.clone();
        tokio::time::timeout(timeout, rx.wait_for(|r| r.iter().all(|(_, ok)| *ok)))
            .await
            .map_err(|_| ReadyError::NotSynced {
                timeout,
                readiness: self.readiness(),
            })?
            .map(drop)
            .map_err(|_| ReadyError::Stopped)
    }

    /// Number of reconcile passes so far (each translation or endpoint refresh).
    pub fn passes(&self) -> u64 {
        *self.passes.borrow()
    }

    /// Adds, reconnects and removes member clusters while the controller runs.
    pub fn members(&self) -> Members {
        Members {
            tx: self.tx.clone(),
        }
    }

    /// The member clusters the controller runs now, updated as they join, reconnect and leave
    /// (for what follows every member, e.g. the mesh trust bundle and the bootstrap verifier in
    /// [`crate::mesh`]).
    pub fn member_directory(&self) -> watch::Receiver<MemberDirectory> {
        self.directory.clone()
    }

    /// [`Members::add_cluster`].
    pub async fn add_cluster(
        &self,
        cluster: MemberCluster,
        write_client: kube::Client,
        pool: Option<AddressRange>,
    ) -> Result<(), MemberError> {
        self.members()
            .add_cluster(cluster, write_client, pool)
            .await
    }

    /// [`Members::replace_cluster`].
    pub async fn replace_cluster(
        &self,
        cluster: MemberCluster,
        write_client: kube::Client,
        pool: Option<AddressRange>,
    ) -> Result<(), MemberError> {
        self.members()
            .replace_cluster(cluster, write_client, pool)
            .await
    }

    /// [`Members::remove_cluster`].
    pub async fn remove_cluster(&self, name: &str) -> Result<(), MemberError> {
        self.members().remove_cluster(name).await
    }

    /// Stops every task and waits for them (bounded).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for mut t in self.tasks {
            if tokio::time::timeout(Duration::from_secs(5), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
    }
}

struct Reconciler {
    world: World,
    /// Member cluster names by index (the index messages carry); see [`Slot`].
    names: Vec<String>,
    /// Per index, the cluster's running parts.
    slots: Vec<Slot>,
    spawner: Spawner,
    /// Clusters that left, with when their endpoints are withdrawn (the endpoint grace).
    removals: BTreeMap<String, Instant>,
    /// Kinds whose first list each cluster still waits for (`None` before the first probe).
    pending_kinds: Vec<Option<BTreeSet<Kind>>>,
    synced: Vec<bool>,
    started: Instant,
    startup_grace: Duration,
    data_plane: Arc<dyn DataPlane>,
    controller_name: String,
    /// Latest computed snapshot per cluster.
    current: BTreeMap<String, Snapshot>,
    /// Latest published snapshot per cluster (what was handed to the data plane).
    published: BTreeMap<String, Arc<Snapshot>>,
    /// Per cluster, the Gateways of the current snapshot that may differ from the published
    /// one (no entry: none); every other Gateway shares its routes with the published one.
    touched: BTreeMap<String, Touched>,
    translated: bool,
    dirty_full: bool,
    /// The data plane reported a change (Programmed, addresses): an incremental pass compares
    /// what it reports with what the last pass used.
    dirty_config: bool,
    /// Objects changed since the last pass (incremental translation).
    dirty_objects: Changes,
    /// Objects whose status only changed since the last pass (translated at the re-check, or
    /// with the next pass).
    status_objects: Changes,
    /// Incremental translation state, seeded by every full pass.
    engine: Incremental,
    /// When the last full pass ran: one runs at least every [`FULL_EVERY`].
    last_full: Instant,
    /// A status-only change is waiting for the slower re-check.
    status_dirty: bool,
    dirty_services: BTreeMap<usize, BTreeSet<ObjectKey>>,
    metrics: Arc<Metrics>,
    ready_tx: watch::Sender<Vec<(String, bool)>>,
    passes_tx: watch::Sender<u64>,
    /// The member clusters now, for [`ControllerHandle::member_directory`].
    directory: watch::Sender<MemberDirectory>,
    last_prune: Instant,
    /// Drains from the drill runner go into every snapshot; drills and publishes go back to it.
    drills: Arc<DrillShared>,
    /// Member clusters whose API is unreachable (from the supervisors' probes).
    unreachable: BTreeMap<String, UnreachableCluster>,
    /// When a FailoverPolicy's staleEndpointTTL next drops endpoints: a full pass is due then.
    stale_expiry: Option<Timestamp>,
    /// East-west listeners the last full pass translated with (endpoint refreshes reuse them;
    /// a change of them ticks the data plane, which brings a full pass).
    east_west: EastWestListeners,
    /// What the current snapshots leave out for lack of east-west listeners.
    east_west_missing: MissingRemote,
    /// `TranslateConfig::allow_loopback_endpoints`.
    allow_loopback_endpoints: bool,
    /// The last full pass named refused endpoints in some route's status: endpoint changes
    /// need full passes until it names none (translate::AddressPolicy).
    endpoints_refused: bool,
    /// The writers' unconfirmed objects per active cluster (`TranslateConfig::unconfirmed`),
    /// kept in step from what changed in each writer since the last pass
    /// ([`StatusWriter::take_unconfirmed_changes`]) instead of copied whole every pass.
    unconfirmed: Arc<BTreeMap<String, BTreeSet<StatusKey>>>,
    /// The mirror above must be rebuilt from the writers (at start and when the member
    /// clusters change: writers come and go).
    unconfirmed_resync: bool,
    /// Per cluster index, status objects whose indexed copy changed since that cluster's
    /// writer last retired what the watch has seen ([`StatusWriter::retire_among`]).
    rv_changed: BTreeMap<usize, BTreeSet<StatusKey>>,
    /// Cluster indexes whose index was re-listed (or emptied) since: every unconfirmed object
    /// of theirs is looked at ([`StatusWriter::retire_seen`]).
    rv_relisted: BTreeSet<usize>,
}

/// A status object as the writers key it: kind, namespace (`""` for cluster-scoped), name.
type StatusKey = (StatusKind, String, String);

/// What the reconcile loop is given at start; the rest of its state starts empty.
struct LoopInputs {
    world: World,
    names: Vec<String>,
    slots: Vec<Slot>,
    spawner: Spawner,
    startup_grace: Duration,
    data_plane: Arc<dyn DataPlane>,
    controller_name: String,
    metrics: Arc<Metrics>,
    ready_tx: watch::Sender<Vec<(String, bool)>>,
    passes_tx: watch::Sender<u64>,
    drills: Arc<DrillShared>,
    directory: watch::Sender<MemberDirectory>,
    allow_loopback_endpoints: bool,
}

/// How often deleted objects are forgotten by the status writers.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Longest run of incremental passes: the next pass after this is a full translation (the
/// reference), which also re-seeds the incremental state.
pub const FULL_EVERY: Duration = Duration::from_secs(300);

/// Echoes of our status writes start no pass, but each is noted by the next one (the
/// unconfirmed sets, the writers retiring what they wrote): after a cold start that is tens of
/// thousands, ~5 µs each, which the first real change would pay for in its apply → served time.
/// So once no new echo has come for `ECHO_QUIET` (or `ECHO_SETTLE_MAX` after the first waiting
/// one, under a steady stream) and no pass is due, a pass runs for them alone.
const ECHO_QUIET: Duration = Duration::from_millis(250);
const ECHO_SETTLE_MAX: Duration = Duration::from_secs(5);

impl Reconciler {
    fn new(i: LoopInputs) -> Self {
        let clusters = i.names.len();
        Self {
            world: i.world,
            names: i.names,
            slots: i.slots,
            spawner: i.spawner,
            removals: BTreeMap::new(),
            pending_kinds: vec![None; clusters],
            synced: vec![false; clusters],
            started: Instant::now(),
            startup_grace: i.startup_grace,
            data_plane: i.data_plane,
            controller_name: i.controller_name,
            current: BTreeMap::new(),
            published: BTreeMap::new(),
            touched: BTreeMap::new(),
            translated: false,
            dirty_full: false,
            dirty_config: false,
            dirty_objects: Changes::new(),
            status_objects: Changes::new(),
            engine: Incremental::new(),
            last_full: Instant::now(),
            status_dirty: false,
            dirty_services: BTreeMap::new(),
            metrics: i.metrics,
            ready_tx: i.ready_tx,
            passes_tx: i.passes_tx,
            directory: i.directory,
            last_prune: Instant::now(),
            drills: i.drills,
            allow_loopback_endpoints: i.allow_loopback_endpoints,
            endpoints_refused: false,
            unreachable: BTreeMap::new(),
            stale_expiry: None,
            east_west: EastWestListeners::new(),
            east_west_missing: MissingRemote::new(),
            unconfirmed: Arc::new(BTreeMap::new()),
            unconfirmed_resync: true,
            rv_changed: BTreeMap::new(),
            rv_relisted: BTreeSet::new(),
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        debounce: Duration,
        status_recheck: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut dp_changes = self.data_plane.changes();
        let mut dp_open = true;
        let mut drains = self.drills.subscribe_drains();
        // `deadline`: changes that need a pass soon; `recheck`: status-only changes.
        let mut deadline: Option<Instant> = None;
        let mut recheck: Option<Instant> = None;
        // Echoes waiting for a pass: when to run one for them, and since when they wait.
        let mut settle: Option<(Instant, Instant)> = None;
        let grace_end = self.started + self.startup_grace;
        let mut grace_pending = true;
        loop {
            let wake = deadline;
            let wake_recheck = recheck;
            let wake_settle = settle.map(|(at, _)| at);
            let wake_removal = self.removals.values().min().copied();
            let wake_expiry = self.stale_expiry.map(|t| {
                let wait = t.duration_since(Timestamp::now());
                Instant::now() + Duration::try_from(wait).unwrap_or(Duration::ZERO)
            });
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => {
                        let waited = self.status_objects.len();
                        if self.handle(msg) {
                            deadline.get_or_insert_with(|| Instant::now() + debounce);
                        } else if self.status_dirty {
                            recheck.get_or_insert_with(|| Instant::now() + status_recheck);
                        }
                        let waiting = self.status_objects.len();
                        self.metrics
                            .status_events_waiting
                            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
                        // Quiet means no new echo (other messages, say the writers' reports,
                        // keep coming while the echoes have stopped).
                        if waiting == 0 {
                            settle = None;
                        } else if waiting != waited || settle.is_none() {
                            let now = Instant::now();
                            // Since the first echo no pass has noted (a pass empties them).
                            let since = match settle {
                                Some((_, since)) if waited > 0 => since,
                                _ => now,
                            };
                            settle = Some(((now + ECHO_QUIET).min(since + ECHO_SETTLE_MAX), since));
                        }
                    }
                    None => return,
                },
                changed = dp_changes.changed(), if dp_open => {
                    if changed.is_err() {
                        dp_open = false;
                    } else {
                        self.dirty_config = true;
                        deadline.get_or_insert_with(|| Instant::now() + debounce);
                    }
                }
                _ = tokio::time::sleep_until(grace_end), if grace_pending => {
                    grace_pending = false;
                    if self.startup_grace_over() {
                        deadline.get_or_insert_with(Instant::now);
                    }
                }
                _ = async { if let Some(t) = wake { tokio::time::sleep_until(t).await } }, if wake.is_some() => {
                    deadline = None;
                    self.pass(false);
                    if !self.status_dirty {
                        recheck = None;
                    }
                }
                _ = async { if let Some(t) = wake_recheck { tokio::time::sleep_until(t).await } }, if wake_recheck.is_some() => {
                    recheck = None;
                    self.pass(true);
                }
                _ = async { if let Some(t) = wake_settle { tokio::time::sleep_until(t).await } }, if wake_settle.is_some() => {
                    settle = None;
                    // A pass already due notes them anyway. While passes are full translations
                    // (a member unreachable, nothing translated yet) the echoes wait for the
                    // next one as before: noting them is not worth a full pass.
                    let incremental = self.translated
                        && !self.dirty_full
                        && self.unreachable.is_empty();
                    if deadline.is_none()
                        && recheck.is_none()
                        && incremental
                        && !self.status_objects.is_empty()
                    {
                        self.pass(false);
                    }
                }
                _ = async { if let Some(t) = wake_expiry { tokio::time::sleep_until(t).await } }, if wake_expiry.is_some() => {
                    self.stale_expiry = None;
                    self.dirty_full = true;
                    self.pass(false);
                }
                _ = async { if let Some(t) = wake_removal { tokio::time::sleep_until(t).await } }, if wake_removal.is_some() => {
                    if self.withdraw_removed() {
                        self.pass(false);
                    }
                }
                _ = drains.changed() => {
                    // No translation needed: the drains go into the current snapshots as they are.
                    self.apply_drains();
                    self.publish_changed();
                }
                _ = crate::stopped(&mut shutdown) => {
                    self.withdraw_drains();
                    self.stop_clusters().await;
                    return;
                }
            }
        }
    }

    /// The startup grace ended: clusters still syncing no longer hold the others back.
    /// Returns whether a full pass is due (some cluster is not synced).
    fn startup_grace_over(&mut self) -> bool {
        if self.all_synced() {
            return false;
        }
        tracing::warn!(
            waiting_for = %self.unsynced().join("; "),
            "startup grace over: synced clusters act without the others \
             (an unsynced cluster acts once every kind it serves is listed)"
        );
        self.dirty_full = true;
        true
    }

    /// On shutdown: every cluster's writer and supervisor stop; waits for them (bounded).
    async fn stop_clusters(&mut self) {
        for slot in &mut self.slots {
            slot.stop();
            for mut t in slot.tasks.drain(..) {
                if tokio::time::timeout(Duration::from_secs(5), &mut t)
                    .await
                    .is_err()
                {
                    t.abort();
                }
            }
        }
    }

    /// On shutdown: drains live in this process only, proxies must not keep them after it.
    fn withdraw_drains(&mut self) {
        for s in self.current.values_mut() {
            s.drains.clear();
        }
        self.publish_changed();
    }

    /// Puts the drill runner's drains into every current snapshot.
    fn apply_drains(&mut self) {
        let drains = self.drills.drains();
        for s in self.current.values_mut() {
            if s.drains != drains {
                s.drains.clone_from(&drains);
            }
        }
    }

    /// Clusters not synced yet, each with what it waits for.
    fn unsynced(&self) -> Vec<String> {
        self.names
            .iter()
            .enumerate()
            .filter(|(i, _)| self.slots[*i].active && !self.synced[*i])
            .map(|(i, n)| match &self.pending_kinds[i] {
                None => format!("{n}: API not reached yet"),
                Some(kinds) => {
                    let kinds: Vec<&str> =
                        kinds.iter().map(|k| crate::watch::kind_label(*k)).collect();
                    format!("{n}: listing {}", kinds.join(", "))
                }
            })
            .collect()
    }

    /// Applies one message; returns whether a pass is needed.
    fn handle(&mut self, msg: Msg) -> bool {
        let from = match &msg {
            Msg::Reachability { cluster, .. }
            | Msg::Watching { cluster, .. }
            | Msg::Change { cluster, .. } => Some(*cluster),
            Msg::Member(_) | Msg::Inspect(_) => None,
        };
        if from.is_some_and(|i| !self.slots.get(i).is_some_and(|s| s.active)) {
            // From the supervisor of a cluster that left or reconnected since.
            return false;
        }
        match msg {
            Msg::Inspect(ask) => {
                self.inspect(ask);
                false
            }
            Msg::Member(change) => {
                let result = match change.op {
                    MemberOp::Add(add) => {
                        let AddMember {
                            cluster,
                            write_client,
                            pool,
                            replace,
                        } = *add;
                        let result = self.add_member(&cluster, write_client, pool, replace);
                        if result.is_ok() {
                            self.directory.send_modify(|d| {
                                d.insert(cluster.name.clone(), MemberEntry { cluster, pool });
                            });
                        }
                        result
                    }
                    MemberOp::Remove { name } => {
                        let result = self.remove_member(&name);
                        if result.is_ok() {
                            self.directory.send_modify(|d| {
                                d.remove(&name);
                            });
                        }
                        result
                    }
                };
                let needed = result.is_ok();
                let _ = change.reply.send(result);
                needed
            }
            Msg::Reachability {
                cluster,
                unreachable,
            } => {
                let Some(name) = self.names.get(cluster).cloned() else {
                    return false;
                };
                match unreachable {
                    Some(u) => {
                        self.unreachable.insert(name, u);
                    }
                    None => {
                        self.unreachable.remove(&name);
                        // Writes that failed while it was away go now, not after their backoff
                        // (the pass this triggers supersedes those that became outdated).
                        if let Some(s) = self.slots.get(cluster) {
                            s.writer.retry_now();
                        }
                    }
                }
                self.dirty_full = true;
                true
            }
            Msg::Watching { cluster, kinds } => {
                if let Some(p) = self.pending_kinds.get_mut(cluster) {
                    *p = Some(kinds);
                }
                self.check_synced(cluster)
            }
            Msg::Change {
                cluster,
                kind,
                mutation,
                list_done,
            } => {
                let Some(name) = self.names.get(cluster) else {
                    return false;
                };
                let Some(state) = self.world.cluster_mut(name) else {
                    return false;
                };
                let touch = mutation(state);
                note_rv_change(&mut self.rv_changed, &mut self.rv_relisted, cluster, &touch);
                if kind == Kind::FailoverDrill {
                    self.drills.set_drills(&self.world);
                }
                if kind == Kind::ReferenceGrant {
                    self.drills.set_grants(&self.world);
                }
                let mut needed = match touch {
                    Touch::Nothing => false,
                    Touch::StatusOnly(kind, key) => {
                        // The echo of what the last pass computed starts no pass: the next one
                        // (for whatever reason) only notes it, translating nothing. Any other
                        // status change is translated at the re-check.
                        let outcome = if self.engine.is_echo(&self.world, name, kind, &key) {
                            "echo"
                        } else {
                            self.status_dirty = true;
                            "status"
                        };
                        self.metrics
                            .status_events
                            .with_label_values(&[outcome])
                            .inc();
                        self.status_objects.insert_status(name, kind, key);
                        false
                    }
                    Touch::Version(..) => {
                        self.metrics
                            .status_events
                            .with_label_values(&["unread"])
                            .inc();
                        false
                    }
                    Touch::Full => {
                        self.dirty_full = true;
                        true
                    }
                    Touch::Object(kind, key) => {
                        self.dirty_objects.insert(name, kind, key);
                        true
                    }
                    Touch::Services(svcs) => {
                        let set = self.dirty_services.entry(cluster).or_default();
                        let any = !svcs.is_empty();
                        set.extend(svcs);
                        any
                    }
                };
                if list_done {
                    if let Some(Some(p)) = self.pending_kinds.get_mut(cluster) {
                        p.remove(&kind);
                    }
                    needed |= self.check_synced(cluster);
                }
                needed
            }
        }
    }

    /// Answers the admin listener (`meridian status` / `explain`) from the loop's state.
    fn inspect(&self, ask: crate::inspect::InspectAsk) {
        let view = crate::inspect::LoopView {
            world: &self.world,
            published: &self.published,
            members: self
                .active()
                .map(|i| (self.names[i].as_str(), self.synced[i]))
                .collect(),
            unreachable: &self.unreachable,
            data_plane: self.data_plane.as_ref(),
            controller_name: &self.controller_name,
            metrics: &self.metrics,
        };
        // The asker may have given up (its wait is bounded): nothing to do then.
        let _ = ask.reply.send(crate::inspect::answer(&view, ask.ask));
    }

    /// Marks a cluster synced when nothing is pending; returns whether that just happened.
    fn check_synced(&mut self, cluster: usize) -> bool {
        let done = matches!(self.pending_kinds.get(cluster), Some(Some(p)) if p.is_empty());
        if !done || self.synced.get(cluster).copied().unwrap_or(true) {
            return false;
        }
        self.synced[cluster] = true;
        let name = &self.names[cluster];
        tracing::info!(cluster = %name, "initial sync done");
        self.metrics
            .cluster_synced
            .with_label_values(&[name])
            .set(1);
        self.send_readiness();
        self.dirty_full = true;
        true
    }

    /// Publishes each active member cluster with whether its initial sync is done.
    fn send_readiness(&self) {
        let readiness = self
            .active()
            .map(|i| (self.names[i].clone(), self.synced[i]))
            .collect();
        self.ready_tx.send_replace(readiness);
    }

    /// The index of active member cluster `name`.
    fn slot(&self, name: &str) -> Option<usize> {
        self.names
            .iter()
            .zip(&self.slots)
            .position(|(n, s)| s.active && n == name)
    }

    /// Indexes of the active member clusters.
    fn active(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.names.len()).filter(|i| self.slots[*i].active)
    }

    fn all_synced(&self) -> bool {
        self.active().all(|i| self.synced[i])
    }

    /// A member cluster that left is not acted for: nothing is published for its proxies and
    /// no status is written to it.
    fn can_act(&self, cluster: &str) -> bool {
        let Some(i) = self.slot(cluster) else {
            return false;
        };
        self.synced[i] && (self.all_synced() || self.started.elapsed() >= self.startup_grace)
    }

    /// A member cluster joins (or, `replace`, reconnects): a new index with its own writer and
    /// supervisor; what the world holds for it is kept (a reconnect's watchers re-list it) and
    /// a pending withdrawal of its endpoints is called off.
    fn add_member(
        &mut self,
        cluster: &MemberCluster,
        write_client: kube::Client,
        pool: Option<AddressRange>,
        replace: bool,
    ) -> Result<(), MemberError> {
        check_unique_names([cluster.name.as_str()])?;
        match (self.slot(&cluster.name), replace) {
            (Some(_), false) => return Err(MemberError::AlreadyMember(cluster.name.clone())),
            (None, true) => return Err(MemberError::NotMember(cluster.name.clone())),
            (Some(old), true) => self.slots[old].stop(),
            (None, false) => {}
        }
        if self.removals.remove(&cluster.name).is_some() {
            tracing::info!(cluster = %cluster.name, "member cluster back before its endpoints were withdrawn");
        }
        self.unreachable.remove(&cluster.name);
        add_to_world(&mut self.world, cluster);
        self.data_plane.cluster_added(&cluster.name, pool);
        let i = self.names.len();
        self.slots
            .push(self.spawner.spawn(i, cluster, write_client));
        self.names.push(cluster.name.clone());
        self.pending_kinds.push(None);
        self.synced.push(false);
        tracing::info!(cluster = %cluster.name, region = %cluster.region, network = %cluster.network, replace, "member cluster added at run time");
        self.send_readiness();
        self.dirty_full = true;
        self.unconfirmed_resync = true;
        Ok(())
    }

    /// A member cluster leaves: its writer and supervisor stop now, its endpoints are withdrawn
    /// after the endpoint grace ([`Reconciler::withdraw_removed`]).
    fn remove_member(&mut self, name: &str) -> Result<(), MemberError> {
        let i = self
            .slot(name)
            .ok_or_else(|| MemberError::NotMember(name.to_string()))?;
        self.slots[i].stop();
        self.unreachable.remove(name);
        self.data_plane.cluster_removed(name);
        self.published.remove(name);
        let grace = self.spawner.endpoint_grace;
        self.removals
            .insert(name.to_string(), Instant::now() + grace);
        self.metrics
            .cluster_synced
            .with_label_values(&[name])
            .set(0);
        tracing::info!(cluster = %name, ?grace, "member cluster removed: watchers and status writes stopped; its endpoints are withdrawn after the endpoint grace");
        self.send_readiness();
        self.dirty_full = true;
        self.unconfirmed_resync = true;
        Ok(())
    }

    /// The endpoint grace of clusters that left has ended: they leave the world (and with them
    /// their endpoints leave the other clusters' snapshots). Returns whether any did.
    fn withdraw_removed(&mut self) -> bool {
        let now = Instant::now();
        let due: Vec<String> = self
            .removals
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &due {
            self.removals.remove(name);
            self.world.remove_cluster(name);
            self.current.remove(name);
            self.touched.remove(name);
            self.east_west_missing.remove(name);
            tracing::info!(cluster = %name, "endpoint grace of the removed member cluster over: its endpoints are withdrawn");
        }
        if !due.is_empty() {
            self.dirty_full = true;
            self.slots.iter_mut().filter(|s| !s.active).for_each(|s| {
                s.tasks.retain(|t| !t.is_finished());
            });
        }
        !due.is_empty()
    }

    /// One pass: a full translation when something incremental translation cannot follow
    /// happened (re-lists, members, reachability; or [`FULL_EVERY`] has passed), else an
    /// incremental one for the changed objects, the data plane's reports and (at the re-check,
    /// or with any other pass) status-only changes; then an endpoint refresh for the changed
    /// EndpointSlices. A pass that cannot be incremental ([`crate::translate::Fallback`]) is full.
    ///
    /// While a member cluster is unreachable every pass is a full translation: only translation
    /// applies a FailoverPolicy's staleEndpointTTL (an endpoint refresh would bring back
    /// endpoints it dropped).
    ///
    /// Refused endpoint addresses are named in route status, which only translation writes: an
    /// endpoint refresh that refuses one, or any refresh while the status names some, is
    /// followed by a full pass.
    fn pass(&mut self, recheck_due: bool) {
        if !self.active().any(|i| self.can_act(&self.names[i])) {
            // Nobody acts yet (clusters still listing, within the startup grace): what a
            // translation gives would be neither published nor written, and at a cold start
            // each cluster's initial sync would translate the whole world again. The pass that
            // lets the first cluster act (its sync, or the end of the grace) translates
            // everything once; what changed until then waits for it.
            self.dirty_full = true;
            return;
        }
        let mut full = self.dirty_full
            || !self.translated
            || !self.unreachable.is_empty()
            || (self.endpoints_refused && !self.dirty_services.is_empty())
            || self.last_full.elapsed() >= FULL_EVERY;
        let objects = !self.dirty_objects.is_empty() || !self.status_objects.is_empty();
        if !full && (objects || self.dirty_config || recheck_due) {
            full = !self.incremental_pass();
        }
        if !full && !self.dirty_services.is_empty() {
            full = self.endpoints_pass();
        }
        if full {
            self.full_pass();
        }
        self.dirty_full = false;
        self.dirty_config = false;
        self.dirty_services.clear();
        self.publish_changed();
        let stale = crate::translate::stale_endpoint_counts(
            self.published.values().map(|s| &**s),
            &self.unreachable,
        );
        for name in self.active().map(|i| &self.names[i]) {
            let n = stale.get(name).copied().unwrap_or(0);
            self.metrics
                .member_stale_endpoints
                .with_label_values(&[name])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
            let missing = self.east_west_missing.get(name).map_or(0, BTreeMap::len);
            self.metrics
                .east_west_missing
                .with_label_values(&[name])
                .set(i64::try_from(missing).unwrap_or(i64::MAX));
        }
        self.metrics
            .status_events_waiting
            .set(i64::try_from(self.status_objects.len()).unwrap_or(i64::MAX));
        self.passes_tx.send_modify(|n| *n += 1);
    }

    /// Replaces the record of what the snapshots leave out for lack of east-west listeners,
    /// logging what changed.
    fn note_missing(&mut self, missing: MissingRemote) {
        if missing != self.east_west_missing {
            for (cluster, backends) in &missing {
                for (backend, remote) in backends {
                    if self
                        .east_west_missing
                        .get(cluster)
                        .and_then(|b| b.get(backend))
                        != Some(remote)
                    {
                        tracing::debug!(
                            %cluster,
                            %backend,
                            remote = ?remote,
                            "endpoints of clusters on another network left out: those clusters \
                             have no proxy with an east-west listener"
                        );
                    }
                }
            }
        }
        self.east_west_missing = missing;
    }

    /// Translates the whole world with what the data plane and the writers report now, then
    /// hands the status to the writers.
    fn full_pass(&mut self) {
        let started = std::time::Instant::now();
        let cfg = self.translate_config();
        // Each cluster's status goes to its writer as soon as the cluster is translated: the
        // writes (on other runtime threads, and the API server's) overlap the translation of
        // the clusters after it — at a cold start the full pass is the one long step before
        // thousands of writes. The engine is moved out for the pass so the sink can read the
        // rest of `self`.
        let mut engine = std::mem::replace(&mut self.engine, Incremental::new());
        let out = {
            let this = &*self;
            let mut sink = |updates: Vec<StatusUpdate>| this.submit_updates(updates);
            engine.full_with(&self.world, &cfg, Some(&mut sink))
        };
        self.engine = engine;
        self.last_full = Instant::now();
        // Everything is translated: what was waiting for a pass is in this one.
        self.dirty_objects = Changes::new();
        self.status_objects = Changes::new();
        self.status_dirty = false;
        self.east_west = cfg.east_west;
        self.note_missing(out.east_west_missing);
        self.endpoints_refused = out.endpoints_refused;
        self.stale_expiry = next_stale_expiry(&self.world, &self.unreachable, cfg.now);
        self.metrics.translations.with_label_values(&["full"]).inc();
        self.metrics
            .translate_seconds
            .with_label_values(&["full"])
            .observe(started.elapsed().as_secs_f64());
        self.current = out.snapshots;
        // Every route is a new allocation: `publish_changed` compares them all once and shares
        // the unchanged ones with the published snapshots again.
        self.touched = self
            .current
            .keys()
            .map(|c| (c.clone(), Touched::everything()))
            .collect();
        self.apply_drains();
        self.translated = true;
        self.submit_status(out.status);
    }

    /// What translation needs besides the world: per Gateway the data plane's state and
    /// addresses, the published generations, statuses of ours not yet seen, east-west
    /// listeners (with several networks) and unreachable clusters.
    fn translate_config(&mut self) -> TranslateConfig {
        let mut cfg = TranslateConfig {
            controller_name: self.controller_name.clone(),
            supported_features: SUPPORTED_FEATURES.iter().map(|s| s.to_string()).collect(),
            now: Timestamp::now(),
            unreachable: self.unreachable.clone(),
            allow_loopback_endpoints: self.allow_loopback_endpoints,
            ..TranslateConfig::default()
        };
        for (cluster, state) in &self.world.clusters {
            for (key, _) in state.gateways() {
                let gw = ClusterGatewayRef::new(
                    cluster.clone(),
                    key.namespace.clone(),
                    key.name.clone(),
                );
                let addresses: Vec<IpAddr> = self.data_plane.addresses(&gw);
                cfg.programmed
                    .insert(gw.clone(), self.data_plane.programmed(&gw));
                if !addresses.is_empty() {
                    cfg.addresses.insert(gw, addresses);
                }
            }
        }
        cfg.generations = self
            .published
            .iter()
            .map(|(c, s)| (c.clone(), s.generation))
            .collect();
        self.sync_unconfirmed(&mut cfg);
        if self.world.multi_network() {
            for name in self.active().map(|i| &self.names[i]) {
                let listeners = self.data_plane.east_west(name);
                if !listeners.is_empty() {
                    cfg.east_west.insert(name.clone(), listeners);
                }
            }
        }
        cfg
    }

    /// Brings the mirror of the writers' unconfirmed objects up to date and hands it to `cfg`
    /// (a pointer: the last pass's config is gone, so the mirror is changed in place), with what
    /// changed since the last pass as `unconfirmed_changed` — or, on a resync, without that hint
    /// (the incremental translation then compares the whole sets).
    fn sync_unconfirmed(&mut self, cfg: &mut TranslateConfig) {
        let active: Vec<usize> = self.active().collect();
        if std::mem::take(&mut self.unconfirmed_resync) {
            let mut all = BTreeMap::new();
            for &i in &active {
                let w = &self.slots[i].writer;
                // Taken before the copy: a change after it is in the next pass's hint.
                w.take_unconfirmed_changes();
                let keys = w.unconfirmed();
                if !keys.is_empty() {
                    all.insert(self.names[i].clone(), keys.into_iter().collect());
                }
            }
            self.unconfirmed = Arc::new(all);
            cfg.unconfirmed = Arc::clone(&self.unconfirmed);
            cfg.unconfirmed_changed = None;
            return;
        }
        let mirror = Arc::make_mut(&mut self.unconfirmed);
        let mut changed: BTreeMap<String, BTreeSet<StatusKey>> = BTreeMap::new();
        for &i in &active {
            let name = &self.names[i];
            let changes = self.slots[i].writer.take_unconfirmed_changes();
            if changes.is_empty() {
                continue;
            }
            let set = mirror.entry(name.clone()).or_default();
            let noted = changed.entry(name.clone()).or_default();
            for (key, now) in changes {
                if now {
                    set.insert(key.clone());
                } else {
                    set.remove(&key);
                }
                noted.insert(key);
            }
            if set.is_empty() {
                mirror.remove(name);
            }
        }
        cfg.unconfirmed = Arc::clone(&self.unconfirmed);
        cfg.unconfirmed_changed = Some(changed);
    }

    /// Hands each status update to its cluster's writer (with the indexed resourceVersion
    /// and, for routes, the indexed copy to merge into); then lets the writers retire what
    /// the watch has seen and, once a minute, forget deleted objects.
    fn submit_status(&mut self, updates: Vec<StatusUpdate>) {
        self.submit_updates(updates);
        self.retire_and_prune();
    }

    /// The first half of [`Self::submit_status`]: each update to its cluster's writer.
    fn submit_updates(&self, updates: Vec<StatusUpdate>) {
        for update in updates {
            if !self.can_act(&update.cluster) {
                // Written once the cluster acts: that triggers a full pass which emits it again.
                continue;
            }
            let Some(i) = self.slot(&update.cluster) else {
                continue;
            };
            let key = ObjectKey::new(
                update.namespace.clone().unwrap_or_default(),
                update.name.clone(),
            );
            let state = self.world.cluster(&update.cluster);
            let source_rv = state
                .and_then(|s| s.resource_version(update.kind, &key))
                .map(str::to_string);
            let route = match update.kind {
                StatusKind::HttpRoute => state
                    .and_then(|s| s.http_route(&key))
                    .cloned()
                    .map(crate::writer::RouteCopy::Http),
                StatusKind::GrpcRoute => state
                    .and_then(|s| s.grpc_route(&key))
                    .cloned()
                    .map(crate::writer::RouteCopy::Grpc),
                StatusKind::TlsRoute => state
                    .and_then(|s| s.tls_route(&key))
                    .cloned()
                    .map(crate::writer::RouteCopy::Tls),
                _ => None,
            };
            if update.settles {
                self.slots[i].writer.settle(update, source_rv, route);
            } else {
                self.slots[i].writer.submit(update, source_rv, route);
            }
        }
    }

    /// The second half of [`Self::submit_status`]: writers retire what the world moved past,
    /// and now and then forget objects gone.
    fn retire_and_prune(&mut self) {
        let acting: Vec<usize> = self
            .active()
            .filter(|&i| self.can_act(&self.names[i]))
            .collect();
        for i in acting {
            // What changed since this writer last retired (kept until it acts).
            let changed = self.rv_changed.remove(&i).unwrap_or_default();
            let relisted = self.rv_relisted.remove(&i);
            let w = &self.slots[i].writer;
            if let Some(state) = self.world.cluster(&self.names[i]) {
                let current_rv = |kind, ns: &str, name: &str| {
                    state
                        .resource_version(kind, &ObjectKey::new(ns, name))
                        .map(str::to_string)
                };
                if relisted {
                    w.retire_seen(current_rv);
                } else {
                    w.retire_among(&changed, current_rv);
                }
            }
        }
        if self.last_prune.elapsed() >= PRUNE_EVERY {
            self.last_prune = Instant::now();
            for i in self.active() {
                let w = &self.slots[i].writer;
                if let Some(state) = self.world.cluster(&self.names[i]) {
                    w.prune(|kind, ns, name| state.contains(kind, &ObjectKey::new(ns, name)));
                }
            }
        }
    }

    /// Translates again what the changed objects and the data plane's reports affect, patching
    /// the current snapshots, and hands the recomputed status to the writers. `false` when it
    /// cannot ([`crate::translate::Fallback`]): a full pass must run.
    fn incremental_pass(&mut self) -> bool {
        let started = std::time::Instant::now();
        let cfg = self.translate_config();
        // Nothing but status-only changes, all of them echoes (any other sets `status_dirty`).
        let echoes_only = self.dirty_objects.is_empty()
            && !self.dirty_config
            && !self.status_dirty
            && !self.status_objects.is_empty();
        let mut changes = std::mem::take(&mut self.dirty_objects);
        changes.extend(std::mem::take(&mut self.status_objects));
        let pass = match self
            .engine
            .update(&self.world, &cfg, &changes, &mut self.current)
        {
            Ok(pass) => pass,
            Err(why) => {
                tracing::debug!(%why, "full translation instead of an incremental one");
                return false;
            }
        };
        self.status_dirty = false;
        self.endpoints_refused = self.engine.endpoints_refused();
        for (cluster, touched) in &pass.touched {
            self.touched
                .entry(cluster.clone())
                .or_default()
                .extend(touched);
        }
        // A pass for echoes alone translated no object (at most a Gateway's status is
        // recomputed, now that its write is confirmed): counted apart, so that `incremental`
        // stays the passes for changes.
        let mode = if echoes_only { "echoes" } else { "incremental" };
        self.metrics.translations.with_label_values(&[mode]).inc();
        self.metrics
            .translate_seconds
            .with_label_values(&[mode])
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .incremental_objects
            .with_label_values(&["route"])
            .inc_by(pass.routes as u64);
        self.metrics
            .incremental_objects
            .with_label_values(&["gateway"])
            .inc_by(pass.gateways as u64);
        tracing::debug!(
            objects = changes.len(),
            by_kind = ?changes.by_kind(),
            echoes = pass.echoes,
            routes = pass.routes,
            gateways = pass.gateways,
            status = pass.status.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "incremental translation"
        );
        self.submit_status(pass.status);
        true
    }

    /// Refreshes the endpoints of the changed Services; `true` when the address policy refused
    /// one (a full pass must name it).
    fn endpoints_pass(&mut self) -> bool {
        let started = std::time::Instant::now();
        let mut missing = self.east_west_missing.clone();
        let mut policy = AddressPolicy {
            allow_loopback: self.allow_loopback_endpoints,
            refused_seen: false,
        };
        for (i, services) in &self.dirty_services {
            let name = &self.names[*i];
            for svc in services {
                // The routes naming the Service are found through the engine's index (it
                // produced the current snapshots: an endpoints pass follows a successful
                // incremental or full one).
                let touched = self.engine.refresh_endpoints(
                    &self.world,
                    &mut self.current,
                    name,
                    svc,
                    &self.east_west,
                    &mut missing,
                    &mut policy,
                );
                for (cluster, t) in touched {
                    self.touched.entry(cluster).or_default().extend(&t);
                }
            }
        }
        self.note_missing(missing);
        self.metrics
            .translations
            .with_label_values(&["endpoints"])
            .inc();
        self.metrics
            .translate_seconds
            .with_label_values(&["endpoints"])
            .observe(started.elapsed().as_secs_f64());
        policy.refused_seen
    }

    /// Publishes every snapshot whose content differs from the last one published: shares the
    /// unchanged routes of the touched Gateways with the published snapshot, which also says
    /// which Gateways differ (see the module docs); hands it over with that hint.
    fn publish_changed(&mut self) {
        let clusters: Vec<String> = self.current.keys().cloned().collect();
        let mut changed = Vec::new();
        for cluster in clusters {
            if !self.can_act(&cluster) {
                // What it touched keeps adding up until the cluster acts.
                continue;
            }
            let Some(snapshot) = self.current.get_mut(&cluster) else {
                continue;
            };
            let touched = self.touched.remove(&cluster).unwrap_or_default();
            let previous = self.published.get(&cluster);
            let differ = match previous {
                Some(p) => {
                    let differ = share_unchanged(p, snapshot, &touched);
                    if differ.is_nothing()
                        && p.schema == snapshot.schema
                        && p.drains == snapshot.drains
                        && p.east_west == snapshot.east_west
                    {
                        continue;
                    }
                    differ
                }
                None => Touched::everything(),
            };
            snapshot.generation = previous.map_or(1, |p| p.generation + 1);
            // A copy of pointers: the routes are shared with `current` (and, where unchanged,
            // with the previous published snapshot).
            let snapshot = Arc::new(snapshot.clone());
            tracing::debug!(cluster = %cluster, generation = snapshot.generation, "publishing snapshot");
            self.metrics
                .snapshots_published
                .with_label_values(&[&cluster])
                .inc();
            let since = previous.map(|base| Since {
                base,
                touched: &differ,
            });
            self.data_plane
                .publish(&cluster, Arc::clone(&snapshot), since);
            self.published.insert(cluster.clone(), snapshot);
            changed.push(cluster);
        }
        if !changed.is_empty() {
            // One update for the whole pass: the drill runner never sees half of a publish.
            self.drills.note_published(
                changed
                    .iter()
                    .filter_map(|c| self.published.get(c).map(|s| (c.as_str(), Arc::clone(s)))),
            );
        }
    }
}

/// Notes a status object whose indexed copy changed (or a re-list) in cluster index `cluster`,
/// for retiring what the watch has seen ([`Reconciler::submit_status`]).
fn note_rv_change(
    changed: &mut BTreeMap<usize, BTreeSet<StatusKey>>,
    relisted: &mut BTreeSet<usize>,
    cluster: usize,
    touch: &Touch,
) {
    match touch {
        Touch::StatusOnly(kind, key) | Touch::Object(kind, key) | Touch::Version(kind, key) => {
            if let Some(kind) = StatusKind::of(*kind) {
                changed.entry(cluster).or_default().insert((
                    kind,
                    key.namespace.clone(),
                    key.name.clone(),
                ));
            }
        }
        Touch::Full => {
            relisted.insert(cluster);
            changed.remove(&cluster);
        }
        Touch::Nothing | Touch::Services(_) => {}
    }
}

/// Why `meridian controller` ([`run`], [`serve`]) stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A flag or the member list is unusable.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// A member cluster's client cannot be built.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The distribution server did not start.
    #[error(transparent)]
    DataPlane(#[from] crate::distributed::DataPlaneError),
    /// The controller did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The async runtime did not start.
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The `--cluster` members cannot be configured (kubeconfig or in-cluster).
    #[error(transparent)]
    Members(#[from] crate::incluster::MembersError),
    /// Leader election cannot start.
    #[error(transparent)]
    Election(#[from] crate::leader::ElectionError),
    /// Ctrl-C could not be waited for.
    #[error("waiting for Ctrl-C: {0}")]
    Signal(#[source] std::io::Error),
    /// `--admin-token-file` cannot be read or is empty.
    #[error("--admin-token-file {}: {reason}", path.display())]
    AdminToken {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// `--distribution-bind` without any member cluster to keep the mesh CA in.
    #[error(
        "--distribution-bind needs a member cluster to keep the mesh CA Secret in (the first \
         --cluster, or the one the controller runs in)"
    )]
    NoHomeCluster,
    /// The mesh CA Secret cannot be read or created in the first member cluster.
    #[error(
        "mesh CA: {source}; the controller keeps its CA in a Secret of its first member \
         cluster {cluster:?}: make that cluster reachable (and the Secret's namespace exist), or \
         give the CA as --ca-cert-file/--ca-key-file"
    )]
    MeshCa {
        /// The first member cluster.
        cluster: String,
        /// Why.
        #[source]
        source: Box<crate::mesh::CaError>,
    },
    /// The first member cluster did not answer in time.
    #[error(
        "mesh CA: cluster {cluster:?} did not answer within {after:?} while reading or creating \
         the CA Secret; make it reachable, or give the CA as --ca-cert-file/--ca-key-file"
    )]
    MeshCaTimeout {
        /// The first member cluster.
        cluster: String,
        /// The bound.
        after: Duration,
    },
    /// The mesh identity flags or CA files are unusable.
    #[error("mesh CA: {0}")]
    Mesh(#[source] crate::mesh::MeshError),
}

/// Runs `meridian controller` on its own runtime until Ctrl-C.
pub fn run(args: ControllerArgs) -> Result<(), ServeError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?
        .block_on(serve(args, None))
}

/// Runs the controller on the current runtime until Ctrl-C. With `--distribution-bind` it first
/// sets up the mesh identity ([`crate::mesh::prepare`]: the CA from `--ca-cert-file`/
/// `--ca-key-file` or the `--ca-secret` Secret of the first member, the TokenReview bootstrap
/// verifier, the `--gateway-addresses` address policy), starts the distribution server, hands
/// the mesh the running controller's members ([`crate::mesh::Mesh::attach`]: verifier, policy,
/// trust bundle ConfigMaps), and Gateways are Programmed only once their proxies acknowledge
/// them ([`DistributedDataPlane`](crate::DistributedDataPlane)); without it,
/// `--static-address` decides what Gateways report (see [`StaticDataPlane`]). `data_plane`, when
/// given, replaces either (and no mesh identity is set up then: nothing serves proxies).
pub async fn serve(
    args: ControllerArgs,
    data_plane: Option<Arc<dyn DataPlane>>,
) -> Result<(), ServeError> {
    let pools = args.distribution_flags()?;
    let election = args.election_config()?;
    let members = crate::incluster::static_members(&args).await?;
    let mut clusters = Vec::new();
    let mut write_clients = BTreeMap::new();
    for (spec, config) in members {
        let (cluster, write_client) = member(&spec, config)?;
        write_clients.insert(spec.name.clone(), write_client);
        clusters.push(cluster);
    }
    // The Lease lives in the first member (in a pod: the cluster it runs in), and so do the
    // member-cluster Secrets and the mesh CA Secret.
    let first_client = clusters.first().map(|c| c.client.clone());
    // The mesh identity is read (or its Secret created) before anything starts: a bad CA file
    // or an unreachable home cluster is refused at once, with no listener open.
    let serves_proxies = args.distribution_bind.is_some() && data_plane.is_none();
    let mesh = match (serves_proxies, clusters.first()) {
        (false, _) => None,
        (true, None) => return Err(ServeError::NoHomeCluster),
        (true, Some(home)) => Some(prepare_mesh(&args, home).await?),
    };
    let tls = mesh.as_ref().map(|m| args.distribution_tls(m));
    let elector = match (election, first_client.clone()) {
        (Some(e), Some(client)) => Some(crate::leader::Elector::start(client, e)?),
        _ => None,
    };
    let gate = elector.as_ref().map(crate::leader::Elector::write_gate);
    let data_plane = match (data_plane, args.distribution_bind.zip(tls)) {
        (Some(dp), _) => dp,
        (None, Some((bind, tls))) => {
            // A follower's server turns proxies away: they reach the leader (docs/deploy.md).
            crate::distributed::DistributedDataPlane::start(
                bind,
                tls,
                pools,
                args.proxy_reconnect_grace,
                gate.clone(),
            )
            .await?
        }
        (None, None) => {
            if args.static_addresses.is_empty() {
                tracing::warn!(
                    "no data plane: Gateways will report Programmed=False (AddressNotAssigned); \
                     pass --static-address to report fixed addresses"
                );
            }
            StaticDataPlane::new(args.static_addresses.clone()) as Arc<dyn DataPlane>
        }
    };
    let reserved: BTreeSet<String> = clusters.iter().map(|c| c.name.clone()).collect();
    let mut cfg = ControllerConfig::new(clusters, data_plane);
    cfg.write_clients = write_clients;
    cfg.controller_name = args.controller_name.clone();
    cfg.endpoint_grace = args.endpoint_grace;
    cfg.debounce = args.debounce;
    cfg.drill_max_duration = args.drill_max_duration;
    cfg.max_concurrent_drills = usize::from(args.max_concurrent_drills);
    cfg.status_write_concurrency = usize::from(args.status_write_concurrency);
    cfg.admin = args.metrics;
    cfg.admin_token = admin_token(args.admin_token_file.as_deref())?;
    cfg.write_gate = gate;
    cfg.allow_loopback_endpoints = args.allow_loopback_endpoints;
    let handle = Controller::start(cfg).await?;
    let (stop_members, stop_rx) = watch::channel(false);
    // From now on the verifier and the address policy know the member clusters, and every
    // member (one that joins later too) gets the trust bundle ConfigMap.
    let publisher = match &mesh {
        Some(m) => Some(
            m.attach(handle.member_directory(), stop_rx.clone())
                .map_err(|source| ServeError::Mesh(source.into()))?,
        ),
        None => None,
    };
    let follower = match first_client {
        Some(client) => {
            let namespace =
                crate::members::own_namespace_from_env(args.cluster_secrets_namespace.as_deref());
            let metrics = crate::members::MemberMetrics::register(handle.metrics().registry())
                .map_err(StartError::Metrics)?;
            Some(crate::members::follow_member_secrets(
                handle.members(),
                client,
                namespace,
                reserved,
                metrics,
                stop_rx,
            ))
        }
        None => None,
    };
    tokio::signal::ctrl_c().await.map_err(ServeError::Signal)?;
    tracing::info!("shutting down");
    let _ = stop_members.send(true);
    if let Some(f) = follower {
        let _ = tokio::time::timeout(Duration::from_secs(5), f).await;
    }
    if let Some(p) = publisher {
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
    // Step down first: a successor starts writing while this replica winds down.
    if let Some(elector) = elector {
        elector.shutdown().await;
    }
    handle.shutdown().await;
    Ok(())
}

/// How long reading or creating the mesh CA Secret may take before `meridian controller`
/// gives up (the API server is unreachable or hangs).
const MESH_CA_TIMEOUT: Duration = Duration::from_secs(60);

/// The mesh identity of `meridian controller --distribution-bind`: the CA from the CA files or
/// the `--ca-secret` Secret of `home` (the first member), the TokenReview verifier and the pool
/// address policy. There is no in-memory fallback: a CA that vanished on restart would strand
/// every proxy holding a certificate of the old one.
/// The admin token from `--admin-token-file` (trimmed; an empty file is an error).
fn admin_token(path: Option<&std::path::Path>) -> Result<Option<String>, ServeError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let bad = |reason: String| ServeError::AdminToken {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(bad("empty; it must hold the admin token".into()));
    }
    Ok(Some(token.to_string()))
}

async fn prepare_mesh(
    args: &ControllerArgs,
    home: &MemberCluster,
) -> Result<crate::mesh::Mesh, ServeError> {
    let source = args.ca_source();
    let from_secret = source.is_none();
    let prepared = tokio::time::timeout(
        MESH_CA_TIMEOUT,
        crate::mesh::prepare(args, home.client.clone(), source),
    )
    .await;
    match prepared {
        Ok(Ok(mesh)) => Ok(mesh),
        Ok(Err(crate::mesh::MeshError::Ca(source))) if from_secret => Err(ServeError::MeshCa {
            cluster: home.name.clone(),
            source: Box::new(source),
        }),
        Ok(Err(e)) => Err(ServeError::Mesh(e)),
        Err(_) => Err(ServeError::MeshCaTimeout {
            cluster: home.name.clone(),
            after: MESH_CA_TIMEOUT,
        }),
    }
}

/// One member cluster from its client configuration, with the client its status writes go
/// through ([`crate::for_status_writes`]).
fn member(
    spec: &ClusterSpec,
    config: kube::Config,
) -> Result<(MemberCluster, kube::Client), ConnectError> {
    let write_client = client(
        spec,
        "the status-write client",
        crate::writer::for_status_writes(config.clone()),
    )?;
    let client = client(spec, "a client", config)?;
    tracing::info!(cluster = %spec.name, context = spec.context(), region = spec.region(), network = spec.network(), "member cluster");
    let cluster = MemberCluster::new(spec.name.clone(), spec.region(), spec.zones.clone(), client)
        .with_network(spec.network());
    Ok((cluster, write_client))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn admin_token_file_is_read_trimmed_and_must_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("meridian-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("token");
        std::fs::write(&good, "  s3cret\n").unwrap();
        assert_eq!(
            super::admin_token(Some(&good)).unwrap().as_deref(),
            Some("s3cret")
        );
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let e = super::admin_token(Some(&empty)).unwrap_err().to_string();
        assert!(
            e.contains("--admin-token-file") && e.contains("empty"),
            "{e}"
        );
        let e = super::admin_token(Some(&dir.join("missing")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
        assert!(super::admin_token(None).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
