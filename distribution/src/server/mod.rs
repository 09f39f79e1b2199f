//! The controller side: [`DistributionServer`].
//!
//! ```text
//! publish(cluster, snapshot) ─► diff, renumber ─► serialize once ─► watch<Version> of the cluster
//!                                  │                              │ one feed task per stream
//!                                  └─ pending[generation] = now   ▼
//!                                          proxy ◄── NDJSON line (full, patch, delta or ping)
//! POST /v1/ack ─► ProxyEntry.acked / refusal ─► settle pending (histogram) ─► subscribe() ticks
//! accept ─► TLS 1.3 handshake (server certificate of the mesh CA, client certificate optional)
//!        ─► the client certificate's identity authorizes every /v1/* request
//! ```
//!
//! Every connection is TLS; the identity in a proxy's certificate is what lets it open a stream
//! (for its own cluster, zone and id only), acknowledge and report traffic (for itself only).
//! Proxies get certificates from `POST /v1/certificate` (module `certificate`): the first with
//! a bootstrap credential the owner's [`BootstrapVerifier`] accepts, the next ones over mTLS.
//!
//! The latest version of each cluster sits in a `tokio::sync::watch`: a slow proxy never queues
//! versions, it skips to the newest. A feed task sends the cheap endpoint delta or route-level
//! patch only when the proxy holds exactly its base generation (and, for a patch, announced
//! `patch`); otherwise it sends the full snapshot (which already includes every change), so a
//! skipped version can never lose one.
//!
//! # Who owns what
//!
//! | module | owns |
//! |---|---|
//! | this one | [`ServerConfig`], starting and stopping, the shared state (`Inner`) and its locks |
//! | `store` | per-cluster generations: numbering, the latest version and its encoded lines, pending generations ([`DistributionServer::publish`]) |
//! | `registry` | the proxies known: connect, disconnect, acks, hellos ([`DistributionServer::state`], [`DistributionServer::east_west`], [`DistributionServer::addresses`]) |
//! | `programmed` | whether a generation is served ([`DistributionServer::programmed`]) and settling pending generations |
//! | `traffic` | proxies' traffic reports and the never-decreasing sums ([`DistributionServer::traffic`]) |
//! | `admission` | what the owner decides: [`BootstrapVerifier`], [`AddressPolicy`] |
//! | `tls` | the server's own certificate and its renewal, handshakes and their failure reasons |
//! | `authorize` | what a proxy certificate allows: hellos (cluster, zone, addresses, east-west), own id |
//! | `certificate` | `POST /v1/certificate`: bootstrap and renewal |
//! | `http` | accepting connections, routing `/v1/*`, `/healthz`, `/metrics`, request bodies |
//! | `stream` | one proxy's NDJSON stream: welcome, versions, pings |
//!
//! Lock order: `Inner::proxies`, then a cluster entry or `Inner::retired`; `Inner::clusters`
//! is only held to find or create an entry.
//!
//! # Traffic
//!
//! ```text
//! POST /v1/traffic ─► per Gateway: went down? ─yes─► old counters ─► retired[cluster]
//!                          │ no                                          │
//!                          ▼                                             ▼
//!                  ProxyEntry.traffic = report ──► traffic(cluster, gw) = Σ proxies + retired
//! ```
//!
//! Proxies report cumulative counters; the controller turns two readings of
//! [`DistributionServer::traffic`] into an interval with `GatewayTraffic::since`, which reads any
//! decrease as a restart. So the sum must never go down, even though proxies come and go:
//!
//! - a disconnected proxy keeps its last report in the sum; when it is forgotten (ten minutes),
//!   or reconnects under another cluster, that report is folded into its cluster's *retired*
//!   accumulator;
//! - a report in which a Gateway's counters went down (any counter: the proxy restarted) or that
//!   no longer lists a Gateway folds the previous counters of that Gateway into the retired
//!   accumulator before the new ones replace them.
//!
//! Reports that cannot be true are refused before any of this (module `traffic`: failures above
//! requests, a decrease within one stream, an impossible rate).
//!
//! Every counter of the sum is therefore non-decreasing. Not detectable: a proxy that restarts
//! and counts past its previous totals between two reports (the requests of its last interval
//! before the restart are then lost, the sum still grows), and a proxy that comes back with
//! the same id after being forgotten without restarting, or that leaves a Gateway out of a
//! report and lists it again later with its old counters (those counters are then counted
//! twice: one upward jump). Reports do not tick [`DistributionServer::subscribe`]: they arrive
//! every second from every proxy and change nothing about `Programmed`.

mod admission;
mod authorize;
mod certificate;
mod http;
mod programmed;
mod registry;
mod store;
mod stream;
mod tls;
mod traffic;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use openssl::ssl::SslAcceptor;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::pki::{Ca, PkiError, TrustBundle};

pub use self::admission::{
    AddressPolicy, AnyAddress, BootstrapClaim, BootstrapGrant, BootstrapRefusal, BootstrapVerifier,
    BoxFuture,
};
pub use self::registry::{ProxyState, Refusal};
pub use self::store::{PublishError, PublishKind, Published};
pub use self::traffic::{MAX_REQUESTS_PER_SECOND, RATE_SLACK};

use self::registry::ProxyEntry;
use self::store::ClusterEntry;
use self::traffic::Counters;

/// At most this many Gateways in one hello or traffic report.
const MAX_GATEWAYS: usize = 10_000;

/// Settings of a [`DistributionServer`].
#[derive(Clone)]
pub struct ServerConfig {
    /// Where to listen.
    pub bind: SocketAddr,
    /// The mesh CA: issues the server's own certificate and the proxies' certificates, and is
    /// the only CA the server trusts for client certificates.
    pub ca: Arc<Ca>,
    /// Names proxies reach the server at, written into its certificate. The bound IP (unless
    /// unspecified), `localhost` and `127.0.0.1` are added.
    pub server_names: ServerNames,
    /// Lifetime of the server's own certificate (default 24 h). The server renews it two thirds
    /// in: new connections get the new one, open ones keep theirs.
    pub server_cert_ttl: Duration,
    /// Lifetime of the certificates issued to proxies (default 24 h).
    pub proxy_cert_ttl: Duration,
    /// Checks bootstrap credentials for first certificates (`POST /v1/certificate` without a
    /// client certificate). `None`: no first certificates, renewals only (`403`).
    pub bootstrap: Option<Arc<dyn BootstrapVerifier>>,
    /// Which addresses the proxies of a cluster may advertise (default [`AnyAddress`]).
    pub addresses: Arc<dyn AddressPolicy>,
    /// How often an idle stream carries a ping.
    pub ping_interval: Duration,
    /// Leader election: streams are served only while this is `true`; a follower answers
    /// `POST /v1/stream` with `503` ([`NOT_LEADER`]) and closes the streams it has when it
    /// stops leading, so proxies reconnect and (through a Service) reach the leader. `None`:
    /// always serve.
    pub serving: Option<watch::Receiver<bool>>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("bind", &self.bind)
            .field("ca", &self.ca)
            .field("server_names", &self.server_names)
            .field("server_cert_ttl", &self.server_cert_ttl)
            .field("proxy_cert_ttl", &self.proxy_cert_ttl)
            .field("bootstrap", &self.bootstrap.is_some())
            .field("ping_interval", &self.ping_interval)
            .field("serving", &self.serving.is_some())
            .finish_non_exhaustive()
    }
}

/// Extra names of the server's certificate (subject alternative names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerNames {
    /// DNS names (the controller Service's names, a load balancer's name, ...).
    pub dns: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
}

/// Body of the `503` a follower answers `POST /v1/stream` (and acks and traffic reports) with.
pub const NOT_LEADER: &str = "this controller replica is not the leader: reconnect (through the \
                              controller Service the next connection may reach the leader)\n";

/// Default lifetime of the server's and the proxies' certificates.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

impl ServerConfig {
    /// A server on `bind` with certificates of `ca`: 24 h certificates, no bootstrap (renewals
    /// only), any concrete address allowed, pings every 5 s.
    pub fn new(bind: SocketAddr, ca: Arc<Ca>) -> Self {
        Self {
            bind,
            ca,
            server_names: ServerNames::default(),
            server_cert_ttl: DEFAULT_CERT_TTL,
            proxy_cert_ttl: DEFAULT_CERT_TTL,
            bootstrap: None,
            addresses: Arc::new(AnyAddress),
            ping_interval: Duration::from_secs(5),
            serving: None,
        }
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The server's own certificate cannot be issued.
    #[error("cannot issue the distribution server's certificate: {0}")]
    Certificate(#[from] PkiError),
    /// A certificate lifetime too short to be renewed in time.
    #[error("{what} must be at least 1 s (got {got:?})")]
    Ttl {
        /// Which setting.
        what: &'static str,
        /// Its value.
        got: Duration,
    },
    /// The socket cannot be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        reason: String,
    },
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// State shared by the public handle, the HTTP handlers and the feed tasks.
struct Inner {
    /// The mesh CA (issues certificates; the trust bundle is its certificate).
    ca: Arc<Ca>,
    /// The TLS settings new connections are accepted with (swapped when the server's own
    /// certificate is renewed).
    tls: ArcSwap<SslAcceptor>,
    proxy_cert_ttl: Duration,
    bootstrap: Option<Arc<dyn BootstrapVerifier>>,
    addresses: Arc<dyn AddressPolicy>,
    ping_interval: Duration,
    clusters: Mutex<HashMap<String, Arc<Mutex<ClusterEntry>>>>,
    // Lock order: `proxies` before any cluster entry.
    proxies: Mutex<HashMap<String, ProxyEntry>>,
    /// Per cluster: counters of proxies gone or restarted, kept so sums never go down.
    // Lock order: `proxies` before `retired`.
    retired: Mutex<HashMap<String, Counters>>,
    changes: watch::Sender<u64>,
    metrics: Metrics,
    next_session: AtomicU64,
    /// See [`ServerConfig::serving`].
    serving: Option<watch::Receiver<bool>>,
}

impl Inner {
    /// Ticks [`DistributionServer::subscribe`].
    fn notify(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether proxies are served now (see [`ServerConfig::serving`]).
    fn serving(&self) -> bool {
        self.serving.as_ref().is_none_or(|s| *s.borrow())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here leaves state half-written across a panic; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running distribution server. Dropping it stops it like [`DistributionServer::shutdown`]
/// (without waiting).
pub struct DistributionServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl DistributionServer {
    /// Binds and starts serving. Must run inside a tokio runtime.
    pub async fn start(cfg: ServerConfig) -> Result<DistributionServer, ServerError> {
        for (what, got) in [
            ("server_cert_ttl", cfg.server_cert_ttl),
            ("proxy_cert_ttl", cfg.proxy_cert_ttl),
        ] {
            if got < Duration::from_secs(1) {
                return Err(ServerError::Ttl { what, got });
            }
        }
        let bind_error = |e: std::io::Error| ServerError::Bind {
            addr: cfg.bind,
            reason: e.to_string(),
        };
        let listener = TcpListener::bind(cfg.bind).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let names = tls::server_names(&cfg.server_names, addr);
        let metrics = Metrics::new()?;
        let acceptor = tls::acceptor(&cfg.ca, &names, cfg.server_cert_ttl, &metrics)?;
        let inner = Arc::new(Inner {
            ca: cfg.ca,
            tls: ArcSwap::from_pointee(acceptor),
            proxy_cert_ttl: cfg.proxy_cert_ttl,
            bootstrap: cfg.bootstrap,
            addresses: cfg.addresses,
            ping_interval: cfg.ping_interval.max(Duration::from_millis(10)),
            clusters: Default::default(),
            proxies: Default::default(),
            retired: Default::default(),
            changes: watch::channel(0).0,
            metrics,
            next_session: AtomicU64::new(1),
            serving: cfg.serving,
        });
        let (shutdown, stop) = watch::channel(false);
        tokio::spawn(tls::renew_server_certificate(
            inner.clone(),
            names,
            cfg.server_cert_ttl,
            stop.clone(),
        ));
        let task = tokio::spawn(http::accept_loop(listener, inner.clone(), stop));
        tracing::info!(%addr, trust_domain = %inner.ca.trust_domain(), "distribution server up (TLS 1.3, client certificates)");
        Ok(DistributionServer {
            inner,
            addr,
            shutdown,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CAs proxies must trust to verify this server (the mesh CA).
    pub fn trust_bundle(&self) -> TrustBundle {
        self.inner.ca.bundle()
    }

    /// A counter that ticks whenever a proxy connects, disconnects or acknowledges: re-read
    /// [`DistributionServer::state`] / [`DistributionServer::programmed`] /
    /// [`DistributionServer::east_west`] when it changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// The Prometheus text of the server's metrics.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.render().unwrap_or_default()
    }

    /// The metrics registry (to merge into the controller's own `/metrics`).
    pub fn registry(&self) -> &prometheus::Registry {
        &self.inner.metrics.registry
    }

    /// Stops listening and closes every connection (proxies keep serving and reconnect with
    /// backoff).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for DistributionServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
