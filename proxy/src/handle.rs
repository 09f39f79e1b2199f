//! [`ProxyHandle`]: a running proxy inside an existing tokio runtime, programmed with snapshots.
//!
//! `apply` is all-or-nothing: compile the snapshot, parse its certificates, bind every socket it
//! adds; only when all of that worked is the router swapped in (one `ArcSwap::store`) and removed
//! sockets closed. Any failure leaves the previous snapshot serving and is reported as an
//! [`ApplyError`] (also visible on `/ready` and `/config_dump`).
//!
//! [`ProxyHandle::apply_endpoints`] is the fast path of an endpoint-only change to the served
//! snapshot: [`Router::with_endpoints`] replaces only the rules that use a changed backend,
//! certificates, sockets and east-west rules are kept, and the Gateway table is rebuilt as
//! `apply` would (from the snapshot's structure when no drain needs endpoint lists). The patched
//! snapshot itself (for `/config_dump` and health checks) is built afterwards on the blocking
//! pool. Health state and ejections live outside the served state, keyed by endpoint, so they
//! carry over exactly as with `apply`.
//!
//! ```text
//! start ─ metrics ─ hop security (identity? east-west without one fails the start)
//!       ─ worker threads (ProxyConfig::workers > 0; workers.rs)
//!       ─ bind east-west, one socket per lane (a taken port fails the start) ─ Shared
//!       ─ per lane: HttpProxy<GatewayProxy> + accept context (sockets come with snapshots)
//!       ─ per lane: HttpProxy<EastWestProxy> + its accept loop (with ProxyConfig::east_west)
//!       ─ health checker task ─ admin listener (both on the caller's runtime)
//! ```
//!
//! A lane (listeners.rs) is where connections are served: the caller's runtime when
//! [`ProxyConfig::workers`] is 0, else one per worker thread, each with its own pingora apps
//! (so its own upstream connection pool) and its own `SO_REUSEPORT` socket on every listener
//! address. `apply` binds every new address once per lane, all or nothing as before.
//!
//! With [`ProxyConfig::east_west`] the proxy also runs an east-west listener from the start: a
//! second pingora app ([`EastWestProxy`](crate::gateway::EastWestProxy)) over the same shared
//! state, serving the served snapshot's `east_west` backends to proxies of other networks (a
//! snapshot without them leaves it answering 404). It speaks only mutual TLS with the mesh
//! identity of [`ProxyConfig::identity`] (mesh.rs), so a proxy without one cannot open it.
//! [`StartError`] says why a start failed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meridian_distribution::pki::CertStore;
use meridian_distribution::{EndpointChange, GatewayTrafficReport};

use meridian_model::locality::Locality;
use meridian_model::path::PathNormalization;
use meridian_model::router::ListenerInfo;
use meridian_model::snapshot::{Protocol, Snapshot};
use meridian_model::traffic::GatewayTraffic;
use meridian_model::{Router, SnapshotError};
use pingora_core::apps::{HttpServerApp, HttpServerOptions};
use pingora_core::server::configuration::ServerConf;
use pingora_core::tls::error::ErrorStack;
use pingora_core::tls::pkey::PKey;
use pingora_core::tls::x509::X509;
use pingora_proxy::{HttpProxy, ProxyHttp};
use tokio::runtime::Handle;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminAuth};
use crate::drain::{GatewayEntry, GatewayTable};
use crate::edge::{Edge, EdgeConfig};
use crate::endpoints::Ejections;
use crate::gateway::{EAST_WEST, EastWestProxy, GatewayProxy};
use crate::lean::{Driver, Http1Path, LeanPath};
use crate::limits::Limits;
use crate::listeners::{self, AcceptCtx, Lane, ListenerSet, Sockets};
use crate::mesh::{HandshakeFailure, Mesh};
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use crate::state::{EastWestSide, HopSecurity, Served, Shared, TlsCert};
use crate::traffic::{TrafficCollector, TrafficRegistry};
use crate::workers::Workers;

/// How long `shutdown` waits for connections in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of one proxy.
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    /// Admin listener (`/healthz`, `/ready`, `/config_dump`, `/metrics`); `None` disables it.
    pub admin: Option<SocketAddr>,
    /// Credentials the admin listener asks for on every path but `/healthz` and `/ready`.
    /// Taken as given, whatever the address: `meridian proxy` decides it from `--admin`,
    /// `--admin-token-file` and `--admin-insecure` (a non-loopback address needs a token).
    pub admin_auth: AdminAuth,
    /// Where this proxy runs (endpoint preference).
    pub locality: Locality,
    /// East-west listener (mutual TLS 1.3, HTTP/1.1 and h2) serving the snapshot's east-west
    /// backends to proxies of other networks; `None` runs none. Port 0 takes a free port
    /// ([`ProxyHandle::east_west_addr`] tells which). Needs [`ProxyConfig::identity`].
    pub east_west: Option<SocketAddr>,
    /// The proxy's mesh identity: its current certificate (renewals swap it in the store) and
    /// the mesh CA bundle. The east-west hop, both ways, is mutual TLS with it; without it the
    /// proxy runs no east-west listener and its tries at east-west endpoints fail.
    pub identity: Option<Arc<CertStore>>,
    /// Plain HTTP on the east-west hop, both ways, without any identity: only for benchmarks
    /// comparing with mutual TLS and for tests. Not reachable from the command line.
    #[doc(hidden)]
    pub east_west_plaintext: bool,
    /// How request paths on the Gateway listeners are normalised before routing and
    /// forwarding (default: merge slashes, keep `%2F`/`%5C` encoded).
    pub paths: PathNormalization,
    /// Downstream timeouts, the backend connect timeout and the connection cap per listener
    /// socket (limits.rs).
    pub limits: Limits,
    /// Forwarding headers and loop guard (edge.rs).
    pub edge: EdgeConfig,
    /// Which driver serves HTTP/1 requests: the lean one (lean/) on pingora-core's sessions
    /// (default) or on our own codec, or pingora-proxy's framework, kept as the reference and
    /// for comparison (`--http1-path`).
    pub http1_path: Http1Path,
    /// Worker threads serving connections (workers.rs): 0 (the default) serves them on the
    /// runtime that called [`ProxyHandle::start`]; N > 0 starts N threads, each with its own
    /// current-thread runtime, its own `SO_REUSEPORT` socket on every listener address and its
    /// own upstream connection pool, so a connection stays on one thread. Control work
    /// (applies, health checks, the admin listener) stays on the caller's runtime either way.
    pub workers: usize,
    /// Access log: target, sampling, query strings (accesslog.rs; default off).
    pub access_log: crate::accesslog::AccessLogConfig,
    /// Trace export (trace.rs; default off). Trace headers are handled while the access log or
    /// the export is on.
    pub tracing: crate::trace::TraceConfig,
}

/// Why a snapshot was refused. The previous snapshot keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The snapshot does not validate or compile.
    #[error("invalid snapshot: {0}")]
    Invalid(#[from] SnapshotError),
    /// A listener certificate or key does not parse.
    #[error("listener {listener}: certificate or key does not parse: {reason}")]
    Certificate {
        /// `namespace/gateway/listener`.
        listener: String,
        /// OpenSSL's message.
        reason: String,
    },
    /// A listener socket cannot be bound.
    #[error("cannot listen on {socket}: {reason}")]
    Bind {
        /// The socket.
        socket: SocketAddr,
        /// The OS error.
        reason: String,
    },
    /// The proxy is shutting down.
    #[error("the proxy is shutting down")]
    ShuttingDown,
}

impl ApplyError {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ApplyError::Invalid(_) => "invalid",
            ApplyError::Certificate { .. } => "certificate",
            ApplyError::Bind { .. } => "bind",
            ApplyError::ShuttingDown => "shutting_down",
        }
    }
}

/// A running proxy.
pub struct ProxyHandle {
    shared: Arc<Shared>,
    /// The Gateway listeners' lanes: one, or one per worker.
    lanes: Vec<Lane<GatewayApp>>,
    /// Connections being served, on every lane and listener (for graceful shutdown).
    active: Arc<AtomicUsize>,
    listeners: Mutex<Option<ListenerSet>>,
    bound: std::sync::Mutex<Vec<SocketAddr>>,
    shutdown_tx: watch::Sender<bool>,
    admin: Option<(SocketAddr, JoinHandle<()>)>,
    east_west: Option<EastWestListener>,
    /// The worker threads (`ProxyConfig::workers` > 0); dropping them stops them.
    workers: Option<Workers>,
}

/// The running east-west listener.
struct EastWestListener {
    /// The bound address.
    addr: SocketAddr,
    lanes: Vec<Lane<EastWestApp>>,
    set: Mutex<Option<ListenerSet>>,
}

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The admin or east-west listener socket cannot be bound.
    #[error("cannot bind {listener} listener {addr}: {error}")]
    Bind {
        /// `admin` or `east-west`.
        listener: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// A bound socket's address cannot be read.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The metrics registry refused a metric.
    #[error(transparent)]
    Metrics(#[from] prometheus::Error),
    /// OpenSSL cannot set up the TLS acceptor.
    #[error(transparent)]
    Tls(#[from] ErrorStack),
    /// The worker threads ([`ProxyConfig::workers`]) cannot be started.
    #[error("cannot start {workers} worker threads: {error}")]
    Workers {
        /// How many were asked for.
        workers: usize,
        /// The OS error.
        error: std::io::Error,
    },
    /// An east-west listener was asked for without [`ProxyConfig::identity`].
    #[error(
        "east-west needs the mesh identity (a certificate from the controller): this proxy has \
         none, so it cannot open the east-west listener {0}"
    )]
    NoIdentity(SocketAddr),
    /// The access log file cannot be opened.
    #[error(transparent)]
    AccessLog(#[from] crate::accesslog::AccessLogError),
    /// The trace exporter cannot start.
    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),
}

/// The Gateway listeners' pingora app.
type GatewayApp = HttpProxy<GatewayProxy>;
/// The east-west listener's pingora app.
type EastWestApp = HttpProxy<EastWestProxy>;

/// The server configuration of both request paths (upstream pool sizes, most tries).
fn server_conf() -> ServerConf {
    ServerConf {
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..ServerConf::default()
    }
}

/// One pingora app over the shared state (both proxies hold it).
fn app<SV: ProxyHttp>(proxy: SV, limits: &Limits) -> HttpProxy<SV> {
    let mut app = HttpProxy::new(proxy, Arc::new(server_conf()));
    app.handle_init_modules();
    let mut options = HttpServerOptions::default();
    // Plain listeners accept HTTP/2 with prior knowledge as well as HTTP/1.1.
    options.h2c = true;
    // HTTP/1 idle connections are closed by the accept path's clock (limits.rs); HTTP/2 ones
    // by pingora when no stream has been open this long.
    options.h2_idle_timeout = Some(limits.idle_timeout);
    app.server_options = Some(options);
    app
}

/// The HTTP/1 driver of a role: the lean one over its own instance of the role (both instances
/// share `Shared`), or `None` for pingora-proxy's framework.
fn http1_driver<R: crate::gateway::Role>(
    path: Http1Path,
    role: impl FnOnce() -> R,
    limits: &Limits,
) -> Option<Arc<dyn Driver>> {
    match path {
        Http1Path::Lean | Http1Path::Own => {
            Some(LeanPath::new(role(), &server_conf(), limits.idle_timeout))
        }
        Http1Path::Framework => None,
    }
}

/// Binds the east-west listener's sockets, one per lane: a taken port fails the start before
/// any task runs.
fn bind_east_west(
    addr: SocketAddr,
    lanes: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), StartError> {
    let sockets = listeners::bind_group(addr, lanes).map_err(|error| StartError::Bind {
        listener: "east-west",
        addr,
        error,
    })?;
    let local = match sockets.first() {
        Some(s) => s.local_addr()?,
        None => addr,
    };
    Ok((local, sockets))
}

/// Where lanes run: the caller's runtime (one lane, `None`) or each worker's.
fn lane_runtimes(workers: Option<&Workers>) -> Vec<Option<Handle>> {
    match workers {
        None => vec![None],
        Some(w) => w.handles().iter().cloned().map(Some).collect(),
    }
}

/// One lane per runtime, each with its own accept context from `ctx` (so its own pingora app
/// and upstream pool); a worker's lane counts its connections under its index.
fn lanes<A>(
    runtimes: &[Option<Handle>],
    shared: &Shared,
    mut ctx: impl FnMut() -> AcceptCtx<A>,
) -> Vec<Lane<A>> {
    runtimes
        .iter()
        .enumerate()
        .map(|(i, runtime)| {
            let mut c = ctx();
            if runtime.is_some() {
                c.worker_accepted = Some(
                    shared
                        .metrics
                        .worker_connections
                        .with_label_values(&[i.to_string().as_str()]),
                );
            }
            Lane {
                runtime: runtime.clone(),
                ctx: Arc::new(c),
            }
        })
        .collect()
}

/// What requests on the east-west listener (bound at `local`) use in place of a Gateway
/// listener and Gateway: `listener="east-west"` labels, served-by always on, the listener's own
/// traffic counters, no drains.
fn east_west_side(local: SocketAddr, traffic: &TrafficRegistry) -> Option<EastWestSide> {
    let cell = traffic.east_west()?;
    Some(EastWestSide {
        listener: Arc::new(ListenerInfo {
            gateway_namespace: String::new(),
            gateway_name: EAST_WEST.to_string(),
            name: EAST_WEST.to_string(),
            port: local.port(),
            protocol: Protocol::Http,
            hostname: None,
            label: EAST_WEST.to_string(),
        }),
        gateway: Arc::new(GatewayEntry::undrained(true, cell.clone())),
    })
}

/// Starts the accept loops of the east-west listener (one socket per lane), bound at `local`
/// (asked for as `addr`): mutual TLS with the mesh identity, or plain HTTP with `Shared::hop`
/// plaintext.
fn start_east_west(
    (addr, local, sockets): (SocketAddr, SocketAddr, Vec<std::net::TcpListener>),
    shared: &Arc<Shared>,
    runtimes: &[Option<Handle>],
    shutdown: watch::Receiver<bool>,
    active: Arc<AtomicUsize>,
    http1_path: Http1Path,
) -> Result<EastWestListener, StartError> {
    let mesh = match &shared.hop {
        HopSecurity::Mesh(m) => Some(m.clone()),
        HopSecurity::Plaintext => None,
        HopSecurity::NoIdentity => return Err(StartError::NoIdentity(addr)),
    };
    if mesh.is_some() {
        // Every reason from the start, so a dashboard sees zeros rather than nothing.
        for reason in HandshakeFailure::ALL {
            shared
                .metrics
                .tls_handshake_failures
                .with_label_values(&[EAST_WEST, reason.label()]);
        }
    }
    let tls = listeners::east_west_acceptor()?;
    let lanes = lanes(runtimes, shared, || AcceptCtx {
        app: Arc::new(app(EastWestProxy::new(shared.clone()), &shared.limits)),
        lean: http1_driver(
            http1_path,
            || EastWestProxy::new(shared.clone()),
            &shared.limits,
        ),
        own_codec: http1_path == Http1Path::Own,
        shared: shared.clone(),
        shutdown: shutdown.clone(),
        tls: tls.clone(),
        active: active.clone(),
        sockets: Sockets::EastWest(mesh.clone()),
        limits: shared.limits,
        worker_accepted: None,
    });
    let mut set = ListenerSet::default();
    set.start(vec![(addr, sockets)], &lanes);
    tracing::info!(east_west = %local, "east-west listener up");
    Ok(EastWestListener {
        addr: local,
        lanes,
        set: Mutex::new(Some(set)),
    })
}

/// Binds the admin listener and serves it until `shutdown`.
async fn start_admin(
    addr: SocketAddr,
    auth: AdminAuth,
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), StartError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| StartError::Bind {
            listener: "admin",
            addr,
            error,
        })?;
    let local = listener.local_addr()?;
    let token = matches!(auth, AdminAuth::Token(_));
    let task = tokio::spawn(admin::serve(
        listener,
        shared.clone(),
        Arc::new(auth),
        shutdown,
    ));
    tracing::info!(admin = %local, token, "admin listener up");
    Ok((local, task))
}

impl ProxyHandle {
    /// Starts a proxy with no snapshot (it listens on nothing but the admin socket until the
    /// first [`ProxyHandle::apply`]). Must run inside a tokio runtime.
    pub async fn start(cfg: ProxyConfig) -> Result<ProxyHandle, StartError> {
        let metrics = Metrics::new()?;
        let traffic = Arc::new(match cfg.east_west {
            Some(_) => TrafficRegistry::with_east_west(),
            None => TrafficRegistry::default(),
        });
        metrics.register(Box::new(TrafficCollector::new(traffic.clone())?))?;
        let hop = match (&cfg.identity, cfg.east_west_plaintext) {
            (_, true) => HopSecurity::Plaintext,
            (Some(store), false) => HopSecurity::Mesh(Arc::new(Mesh::new(store.clone()))),
            (None, false) => HopSecurity::NoIdentity,
        };
        metrics.register_expiry(match &hop {
            HopSecurity::Mesh(m) => Some(m.clone()),
            _ => None,
        })?;
        if let (Some(addr), HopSecurity::NoIdentity) = (cfg.east_west, &hop) {
            return Err(StartError::NoIdentity(addr));
        }
        let workers = match cfg.workers {
            0 => None,
            n => {
                Some(Workers::start(n).map_err(|error| StartError::Workers { workers: n, error })?)
            }
        };
        let runtimes = lane_runtimes(workers.as_ref());
        // Bound first: a taken port fails the start before any task runs.
        let east_west_socket = match cfg.east_west {
            Some(addr) => {
                let (local, sockets) = bind_east_west(addr, runtimes.len())?;
                Some((addr, local, sockets))
            }
            None => None,
        };
        let access_log = crate::accesslog::AccessLog::start(
            &cfg.access_log,
            metrics.access_log_dropped.clone(),
        )?;
        let spans = match &cfg.tracing.otlp_endpoint {
            Some(url) => Some(crate::trace::Exporter::start(
                url,
                &cfg.locality,
                tokio::runtime::Handle::current(),
            )?),
            None => None,
        };
        let shared = Arc::new(Shared {
            served: Default::default(),
            mirror: Mirror::new(metrics.clone()),
            metrics,
            ejections: Ejections::default(),
            budget: Default::default(),
            locality: cfg.locality.clone(),
            east_west: east_west_socket
                .as_ref()
                .and_then(|(_, local, _)| east_west_side(*local, &traffic)),
            hop,
            identity: cfg.identity.clone(),
            traffic,
            last_error: Default::default(),
            controller: Default::default(),
            source: Default::default(),
            state_file: Default::default(),
            paths: cfg.paths,
            limits: cfg.limits,
            edge: Edge::new(
                &cfg.edge,
                east_west_socket.as_ref().map(|(_, local, _)| *local),
            ),
            hedging: Default::default(),
            rtt: Default::default(),
            tiers: Default::default(),
            access_log,
            spans,
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let active = Arc::new(AtomicUsize::new(0));
        let tls = listeners::tls_acceptor()?;
        let gateway_lanes = lanes(&runtimes, &shared, || AcceptCtx {
            app: Arc::new(app(GatewayProxy::new(shared.clone()), &cfg.limits)),
            lean: http1_driver(
                cfg.http1_path,
                || GatewayProxy::new(shared.clone()),
                &cfg.limits,
            ),
            own_codec: cfg.http1_path == Http1Path::Own,
            shared: shared.clone(),
            shutdown: shutdown_rx.clone(),
            tls: tls.clone(),
            active: active.clone(),
            sockets: Sockets::Gateway,
            limits: cfg.limits,
            worker_accepted: None,
        });
        let east_west = east_west_socket
            .map(|socket| {
                start_east_west(
                    socket,
                    &shared,
                    &runtimes,
                    shutdown_rx,
                    active.clone(),
                    cfg.http1_path,
                )
            })
            .transpose()?;
        tokio::spawn(crate::health::run(shared.clone(), shutdown_tx.subscribe()));
        let admin = match cfg.admin {
            Some(addr) => Some(
                start_admin(
                    addr,
                    cfg.admin_auth.clone(),
                    &shared,
                    shutdown_tx.subscribe(),
                )
                .await?,
            ),
            None => None,
        };
        Ok(ProxyHandle {
            shared,
            lanes: gateway_lanes,
            active,
            listeners: Mutex::new(Some(ListenerSet::default())),
            bound: Default::default(),
            shutdown_tx,
            admin,
            east_west,
            workers,
        })
    }

    /// Compiles, binds and swaps in `snapshot`; returns the generation now served. On error the
    /// previous snapshot keeps serving and the reason is logged and remembered.
    pub async fn apply(&self, snapshot: Snapshot) -> Result<u64, ApplyError> {
        let result = self.apply_inner(snapshot).await;
        self.record(&result, "snapshot applied");
        result
    }

    /// Applies an endpoint-only change to the served generation `base`: the result (served
    /// state and refusals) is that of [`ProxyHandle::apply`] of the served snapshot with
    /// `changes` patched in by backend name and numbered `generation`, at the cost of the rules
    /// using the changed backends. `None` when `base` is not the served generation (nothing
    /// changed; apply the full snapshot instead).
    pub async fn apply_endpoints(
        &self,
        generation: u64,
        base: u64,
        changes: &[EndpointChange],
    ) -> Option<Result<u64, ApplyError>> {
        let result = self
            .apply_endpoints_inner(generation, base, changes)
            .await?;
        self.record(&result, "endpoint update applied");
        Some(result)
    }

    fn record(&self, result: &Result<u64, ApplyError>, what: &'static str) {
        match result {
            Ok(generation) => {
                self.shared.set_last_error(None);
                self.shared.metrics.snapshot_applied.inc();
                self.shared
                    .metrics
                    .generation
                    .set(i64::try_from(*generation).unwrap_or(i64::MAX));
                tracing::info!(generation, "{what}");
            }
            Err(e) => self.record_refusal(e),
        }
    }

    /// Records a snapshot refused before it reached [`ProxyHandle::apply`] (e.g. undecodable
    /// JSON), exactly as `apply` records its own refusals.
    pub fn refuse(&self, e: ApplyError) {
        self.record_refusal(&e);
    }

    fn record_refusal(&self, e: &ApplyError) {
        self.shared.set_last_error(Some(e.to_string()));
        self.shared
            .metrics
            .snapshot_refusals
            .with_label_values(&[e.metric_label()])
            .inc();
        tracing::error!(error = %e, "snapshot refused; the previous one keeps serving");
    }

    async fn apply_inner(&self, snapshot: Snapshot) -> Result<u64, ApplyError> {
        // Held for the whole apply so concurrent applies take effect in call order.
        let mut guard = self.listeners.lock().await;
        let set = guard.as_mut().ok_or(ApplyError::ShuttingDown)?;
        let router = Router::compile(snapshot)?;
        let certs = parse_certificates(router.snapshot())?;
        let protocols: HashMap<SocketAddr, Protocol> = router.sockets().collect();
        let wanted: Vec<SocketAddr> = protocols.keys().copied().collect();

        let mut fresh = Vec::new();
        for addr in set.missing(&wanted) {
            match listeners::bind_group(addr, self.lanes.len()) {
                Ok(l) => fresh.push((addr, l)),
                // Dropping `fresh` closes the sockets bound so far: all or nothing.
                Err(e) => {
                    return Err(ApplyError::Bind {
                        socket: addr,
                        reason: e.to_string(),
                    });
                }
            }
        }
        let generation = router.generation();
        let previous = self.shared.served.load_full();
        let gateways = GatewayTable::build(
            router.snapshot(),
            previous.as_ref().map(|p| &p.gateways),
            &self.shared.traffic,
            Instant::now(),
        );
        crate::drain::log_changes(
            previous
                .as_ref()
                .map_or(&[][..], |p| &p.router.snapshot_without_endpoints().drains),
            &router.snapshot().drains,
            &gateways,
        );
        self.set_drained_metrics(&gateways);
        drop(previous);
        let east_west = crate::gateway::east_west_rules(&router.snapshot().east_west);
        let old = self.shared.served.swap(Some(Arc::new(Served {
            router,
            certs,
            protocols,
            gateways,
            east_west,
        })));
        // Freeing a large router takes as long as compiling it (~100 ms at 10k routes): do it
        // off the runtime's workers so neither requests nor the caller (an ack) wait for it.
        if let Some(old) = old {
            tokio::task::spawn_blocking(move || drop(old));
        }
        set.start(fresh, &self.lanes);
        set.retain(&wanted).await;
        *self.bound.lock().unwrap_or_else(|p| p.into_inner()) = set.bound();
        Ok(generation)
    }

    async fn apply_endpoints_inner(
        &self,
        generation: u64,
        base: u64,
        changes: &[EndpointChange],
    ) -> Option<Result<u64, ApplyError>> {
        // Held for the whole apply, as in `apply_inner`: applies take effect in call order.
        let guard = self.listeners.lock().await;
        if guard.is_none() {
            return Some(Err(ApplyError::ShuttingDown));
        }
        let previous = self.shared.served.load_full()?;
        if previous.router.generation() != base {
            return None;
        }
        let router = match previous.router.with_endpoints(
            generation,
            changes
                .iter()
                .map(|c| (c.backend.as_str(), c.protocol, c.endpoints.as_slice())),
        ) {
            Ok(r) => r,
            Err(e) => return Some(Err(e.into())),
        };
        // Without drains no endpoint list is read (only Gateways, backend names and failback
        // policies, which an endpoint change keeps); with drains the drained set depends on
        // the lists, so the patched snapshot is built now.
        let shape = router.snapshot_without_endpoints();
        let snapshot = if shape.drains.is_empty() {
            shape
        } else {
            router.snapshot()
        };
        let gateways = GatewayTable::build(
            snapshot,
            Some(&previous.gateways),
            &self.shared.traffic,
            Instant::now(),
        );
        // The drains themselves are unchanged: nothing to log, only counts to update.
        self.set_drained_metrics(&gateways);
        let served = Arc::new(Served {
            router,
            certs: previous.certs.clone(),
            protocols: previous.protocols.clone(),
            gateways,
            east_west: previous.east_west.clone(),
        });
        drop(previous);
        let old = self.shared.served.swap(Some(served.clone()));
        drop(guard);
        // The patched snapshot (health targets, `/config_dump`) is built off the runtime's
        // workers, and the replaced state freed there too.
        tokio::task::spawn_blocking(move || {
            drop(old);
            let _ = served.router.snapshot();
        });
        Some(Ok(generation))
    }

    fn set_drained_metrics(&self, gateways: &GatewayTable) {
        let drained = &self.shared.metrics.drained_endpoints;
        drained.reset();
        for (drill, n) in &gateways.drained_per_drill {
            drained
                .with_label_values(&[drill.as_str()])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The generation being served, if any.
    pub fn generation(&self) -> Option<u64> {
        self.shared
            .served
            .load()
            .as_ref()
            .map(|s| s.router.generation())
    }

    /// The admin listener's actual address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(a, _)| *a)
    }

    /// The east-west listener's actual address (`None` without one).
    pub fn east_west_addr(&self) -> Option<SocketAddr> {
        self.east_west.as_ref().map(|e| e.addr)
    }

    /// Cumulative counters of the requests served on the east-west listener (`None` without
    /// one); also on `/metrics` as `gateway="east-west"`, never in [`ProxyHandle::traffic`].
    pub fn east_west_traffic(&self) -> Option<GatewayTraffic> {
        self.shared.traffic.east_west().map(|c| c.get())
    }

    /// Actual bound addresses of the listener sockets, sorted.
    pub fn bound_sockets(&self) -> Vec<SocketAddr> {
        self.bound.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The reason the last snapshot was refused, if the last apply failed.
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error()
    }

    /// Cumulative traffic counters of every Gateway served (requests, region of the endpoint
    /// that answered, failures by kind, latency from request head to response head), sorted by
    /// namespace and name. Counters start at 0 when the proxy starts or a Gateway first appears,
    /// and are dropped with a Gateway the served snapshot no longer has.
    pub fn traffic(&self) -> Vec<GatewayTrafficReport> {
        self.shared.traffic.reports()
    }

    /// This proxy's health view: its measured nearest-first region order and the endpoints it
    /// ejected right now, per backend (reported to the controller with the traffic counters;
    /// `meridian status` and `explain` show it).
    pub fn health(&self) -> meridian_distribution::ProxyHealth {
        crate::health::report(&self.shared)
    }

    /// The Prometheus text of this proxy's metrics.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render().unwrap_or_default()
    }

    /// Opens the access log file again (SIGHUP after a rotation); nothing when it logs
    /// elsewhere or is off.
    pub fn reopen_access_log(&self) {
        if let Some(log) = &self.shared.access_log {
            log.reopen();
        }
    }

    /// Stops accepting, lets connections in flight finish (up to a few seconds), stops the
    /// admin listener, then the worker threads (if any), and exports the spans still queued.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(mut set) = self.listeners.lock().await.take() {
            set.retain(&[]).await;
        }
        if let Some(ew) = &self.east_west
            && let Some(mut set) = ew.set.lock().await.take()
        {
            set.retain(&[]).await;
        }
        // Wakes keep-alive connections waiting for their next request, on every lane.
        for lane in &self.lanes {
            lane.ctx.app.http_cleanup().await;
        }
        if let Some(ew) = &self.east_west {
            for lane in &ew.lanes {
                lane.ctx.app.http_cleanup().await;
            }
        }
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while self.active.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some((_, task)) = self.admin {
            task.abort();
        }
        if let Some(workers) = self.workers {
            workers.stop().await;
        }
        if self.shared.spans.is_some() {
            // The flush waits for the export, whose HTTP request runs on this runtime: wait
            // from a blocking thread so the runtime stays free to run it.
            let shared = self.shared.clone();
            let flushed = tokio::task::spawn_blocking(move || {
                if let Some(spans) = &shared.spans {
                    spans.flush();
                }
            });
            let _ = tokio::time::timeout(Duration::from_secs(5), flushed).await;
        }
    }
}

/// Parses every listener certificate once, keyed by its PEM text.
fn parse_certificates(snapshot: &Snapshot) -> Result<HashMap<String, Arc<TlsCert>>, ApplyError> {
    let mut out: HashMap<String, Arc<TlsCert>> = HashMap::new();
    for gw in &snapshot.gateways {
        for l in &gw.listeners {
            let Some(tls) = &l.tls else { continue };
            for c in &tls.certificates {
                if out.contains_key(&c.cert_pem) {
                    continue;
                }
                let err = |reason: String| ApplyError::Certificate {
                    listener: format!("{}/{}/{}", gw.namespace, gw.name, l.name),
                    reason,
                };
                let chain =
                    X509::stack_from_pem(c.cert_pem.as_bytes()).map_err(|e| err(e.to_string()))?;
                if chain.is_empty() {
                    return Err(err("no certificate in PEM".to_string()));
                }
                let key = PKey::private_key_from_pem(c.key_pem.as_bytes())
                    .map_err(|e| err(e.to_string()))?;
                out.insert(c.cert_pem.clone(), Arc::new(TlsCert { chain, key }));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};

    use meridian_model::router::Request;
    use meridian_model::snapshot::{
        Backend, BackendProtocol, BackendTarget, Drain, EastWestBackend, Endpoint, Filter,
        Gateway as SnapshotGateway, Listener, Match, PathMatch, RequestMirror, Route, Rule,
    };
    use meridian_test_support::free_port;

    use super::*;

    /// A small deterministic generator (xorshift64*), so a failure names its seed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
        }
        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }
        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    const NAMES: [&str; 4] = ["ns/a:80", "ns/b:80", "ns/c:80", "ns/d:80"];
    const PATHS: [&str; 4] = ["/", "/x", "/y", "/x/z"];

    fn endpoints(rng: &mut Rng, port_zero: bool) -> Vec<Endpoint> {
        (0..rng.below(4))
            .map(|_| Endpoint {
                address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, rng.below(4) as u8)),
                port: if port_zero && rng.chance(4) {
                    0
                } else {
                    1 + rng.below(2) as u16
                },
                cluster: rng.pick(&["c1", "c2"]).to_string(),
                region: rng.pick(&["r1", "r2"]).to_string(),
                zone: rng.pick(&["z1", "z2"]).to_string(),
                ready: rng.chance(85),
                east_west: rng.chance(10),
            })
            .collect()
    }

    fn backend(rng: &mut Rng) -> Backend {
        Backend {
            name: rng.pick(&NAMES).to_string(),
            weight: 1 + rng.below(3) as u32,
            filters: Vec::new(),
            target: BackendTarget::Endpoints {
                protocol: BackendProtocol::Http1,
                endpoints: endpoints(rng, false),
                failover: None,
            },
            tls: None,
        }
    }

    fn snapshot(rng: &mut Rng, port: u16) -> Snapshot {
        let routes = (0..1 + rng.below(4))
            .map(|i| Route {
                namespace: "ns".into(),
                name: format!("r{i}"),
                kind: Default::default(),
                created_at: 0,
                hostnames: Vec::new(),
                rules: vec![Rule {
                    matches: vec![Match {
                        path: PathMatch::PathPrefix(rng.pick(&PATHS).to_string()),
                        ..Match::default()
                    }],
                    filters: if rng.chance(25) {
                        vec![Filter::RequestMirror(RequestMirror {
                            backend: backend(rng),
                            percent: 100.0,
                        })]
                    } else {
                        Vec::new()
                    },
                    backends: (0..1 + rng.below(2)).map(|_| backend(rng)).collect(),
                    ..Rule::default()
                }],
            })
            .map(Into::into)
            .collect();
        let mut s = Snapshot::empty(1);
        s.gateways = vec![SnapshotGateway {
            namespace: "ns".into(),
            name: "gw".into(),
            listeners: vec![Listener {
                name: "http".into(),
                address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port,
                protocol: Protocol::Http,
                hostname: None,
                tls: None,
                routes,
            }],
            served_by_header: rng.chance(50),
        }];
        if rng.chance(50) {
            s.drains = vec![Drain {
                drill: "ns/drill".into(),
                region: Some("r1".into()),
                zone: rng.chance(50).then(|| "z1".to_string()),
                backends: if rng.chance(50) {
                    vec![rng.pick(&NAMES).to_string()]
                } else {
                    Vec::new()
                },
                ..Drain::default()
            }];
        }
        if rng.chance(50) {
            s.east_west = vec![EastWestBackend {
                name: "ns/a:80".into(),
                protocol: BackendProtocol::Http1,
                endpoints: vec![Endpoint {
                    address: IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)),
                    port: 80,
                    cluster: "c1".into(),
                    region: "r1".into(),
                    zone: "z1".into(),
                    ready: true,
                    east_west: false,
                }],
                failover: None,
            }];
        }
        s
    }

    /// Everything requests and the health checker read from the served state, printed.
    fn summary(h: &ProxyHandle, port: u16) -> String {
        let served = h.shared().served.load_full().unwrap();
        let snap = served.router.snapshot();
        let mut out = vec![
            format!("generation {}", served.router.generation()),
            format!("{snap:?}"),
        ];
        for path in PATHS {
            let d = served.router.route(&Request {
                local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                sni: None,
                host: Some("h.example.com"),
                method: "GET",
                path,
                query: None,
                headers: &&[][..],
            });
            out.push(format!("{path} => {d:?}"));
        }
        for gw in &snap.gateways {
            let e = served.gateways.gateway(&gw.namespace, &gw.name).unwrap();
            out.push(format!("served_by {}", e.served_by_header));
            for name in NAMES {
                let drained: Vec<String> = (0..4)
                    .flat_map(|i| (1..3).map(move |p| (i, p)))
                    .map(|(i, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), p))
                    .filter(|a| e.backend_drain(name).is_some_and(|d| d.is_drained(a)))
                    .map(|a| a.to_string())
                    .collect();
                out.push(format!("{name} drained {drained:?}"));
            }
        }
        let ew_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)), 80);
        let ew_drained = served
            .gateways
            .east_west_drain("ns/a:80")
            .is_some_and(|d| d.is_drained(&ew_addr));
        out.push(format!("east-west drained {ew_drained}"));
        let per_drill: BTreeMap<_, _> = served.gateways.drained_per_drill.iter().collect();
        out.push(format!("per drill {per_drill:?}"));
        let mut certs: Vec<_> = served.certs.keys().collect();
        certs.sort();
        let protocols: BTreeMap<_, _> = served.protocols.iter().collect();
        let east_west: BTreeMap<_, _> = served.east_west.iter().collect();
        out.push(format!("{certs:?} {protocols:?} {east_west:?}"));
        let targets: BTreeMap<_, _> = crate::health::targets(snap).into_iter().collect();
        out.push(format!("health {targets:?}"));
        let drained_metric: Vec<String> = h
            .metrics_text()
            .lines()
            .filter(|l| l.starts_with("meridian_proxy_drained_endpoints"))
            .map(str::to_string)
            .collect();
        out.push(format!("{drained_metric:?}"));
        out.join("\n")
    }

    #[tokio::test]
    async fn random_endpoint_deltas_serve_what_a_full_apply_serves() {
        let port = free_port();
        let h = ProxyHandle::start(ProxyConfig::default()).await.unwrap();
        let (mut fast_applied, mut refused) = (0, 0);
        for seed in 1..=25u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut cur = snapshot(&mut rng, port);
            let mut generation = 1;
            for step in 0..6 {
                cur.generation = generation;
                h.apply(cur.clone()).await.unwrap();
                let changes: Vec<EndpointChange> = (0..1 + rng.below(3))
                    .map(|_| EndpointChange {
                        backend: rng.pick(&NAMES).to_string(),
                        protocol: if rng.chance(20) {
                            BackendProtocol::H2c
                        } else {
                            BackendProtocol::Http1
                        },
                        endpoints: endpoints(&mut rng, true),
                    })
                    .collect();
                let next = generation + 1;
                // A base the proxy does not serve is not taken.
                assert!(
                    h.apply_endpoints(next, generation + 7, &changes)
                        .await
                        .is_none()
                );
                let fast = h.apply_endpoints(next, generation, &changes).await.unwrap();
                let fast_state = summary(&h, port);
                let fast_error = h.last_error();

                // The same change the slow way, from the same served state.
                h.apply(cur.clone()).await.unwrap();
                let mut patched = cur.clone();
                meridian_distribution::protocol::patch_endpoints(&mut patched, &changes);
                patched.generation = next;
                let full = h.apply(patched.clone()).await;
                let full_state = summary(&h, port);
                match (&fast, &full) {
                    (Ok(a), Ok(b)) => {
                        assert_eq!((a, b), (&next, &next));
                        fast_applied += 1;
                    }
                    (Err(a), Err(b)) => {
                        assert_eq!(a.to_string(), b.to_string());
                        assert_eq!(fast_error, h.last_error());
                        refused += 1;
                    }
                    _ => panic!("seed {seed} step {step}: fast {fast:?}, full {full:?}"),
                }
                assert_eq!(
                    fast_state, full_state,
                    "seed {seed} step {step}: {changes:?}"
                );
                if full.is_ok() {
                    cur = patched;
                }
                generation = next + 1;
            }
        }
        assert!(
            fast_applied > 50 && refused > 3,
            "{fast_applied} / {refused}"
        );
        h.shutdown().await;
    }
}
