//! What every connection and request shares: the served snapshot (router + parsed certificates)
//! behind an `ArcSwap`, metrics, traffic counters, ejections, the retry budget, the mirror client and
//! the proxy's locality.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use meridian_model::Router;
use meridian_model::locality::Locality;
use meridian_model::path::PathNormalization;
use meridian_model::router::{CompiledRule, ListenerInfo};
use meridian_model::snapshot::Protocol;
use pingora_core::tls::pkey::{PKey, Private};
use pingora_core::tls::x509::X509;

use crate::budget::RetryBudget;
use crate::drain::{GatewayEntry, GatewayTable};
use crate::endpoints::Ejections;
use crate::limits::Limits;
use crate::mesh::Mesh;
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use crate::traffic::TrafficRegistry;

/// A certificate chain and key, parsed once per snapshot.
pub(crate) struct TlsCert {
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
}

/// One accepted snapshot, compiled and ready to serve.
pub(crate) struct Served {
    pub router: Router,
    /// Parsed certificates keyed by their PEM text (what [`Router::certificate`] returns).
    pub certs: HashMap<String, Arc<TlsCert>>,
    /// Protocol of every socket.
    pub protocols: HashMap<SocketAddr, Protocol>,
    /// Per-Gateway facts: served-by switch, traffic counters, drained endpoints.
    pub gateways: GatewayTable,
    /// The snapshot's east-west backends by name, each as a one-backend rule (see
    /// `gateway::east_west_rules`, gateway/east_west.rs).
    pub east_west: HashMap<String, Arc<CompiledRule>>,
}

impl Served {
    /// The protocol of the listener socket a connection was accepted on.
    pub fn protocol(&self, bound: SocketAddr) -> Option<Protocol> {
        self.protocols.get(&bound).copied()
    }
}

/// State shared by the accept loops, the proxy hooks and the admin server.
pub(crate) struct Shared {
    pub served: ArcSwapOption<Served>,
    pub metrics: Metrics,
    pub ejections: Ejections,
    /// Budget of automatic retries (failover of safe requests, connect failures).
    pub budget: RetryBudget,
    pub mirror: Mirror,
    pub locality: Locality,
    /// Traffic counters per Gateway (also read by `/metrics`).
    pub traffic: Arc<TrafficRegistry>,
    /// Why the last refused snapshot was refused (cleared by the next accepted one).
    pub last_error: Mutex<Option<String>>,
    /// The controller link in `--controller` mode (`None` in static mode).
    pub controller: Mutex<Option<ControllerLink>>,
    /// The east-west listener's identity, if the proxy has one.
    pub east_west: Option<EastWestSide>,
    /// How tries and probes at east-west endpoints are secured.
    pub hop: HopSecurity,
    /// The proxy's mesh identity ([`crate::ProxyConfig::identity`]), read by `/ready`; kept
    /// apart from `hop`, which forgets it when the hop is plaintext.
    pub identity: Option<Arc<meridian_distribution::pki::CertStore>>,
    /// Where the served snapshot came from (`None` before the first one).
    pub source: Mutex<Option<SnapshotSource>>,
    /// The state file with `--state-dir` (`None` without).
    pub state_file: Mutex<Option<StateFileStatus>>,
    /// How request paths are normalised before routing (gateway/path.rs).
    pub paths: PathNormalization,
    /// Timeouts and connection limits (limits.rs).
    pub limits: Limits,
    /// Forwarding-header settings and the loop guard (edge.rs).
    pub edge: crate::edge::Edge,
    /// Hedging of the lean path (lean/hedge.rs): observed latencies per backend, loser checks.
    pub hedging: crate::lean::hedge::Hedging,
    /// Smoothed connect round-trip time per region from the health probes (health.rs), which
    /// orders the other regions of the locality plan.
    pub rtt: crate::health::RegionRtt,
    /// Which tier answers each backend now, for the failover metrics (failover.rs).
    pub tiers: crate::failover::TierWatch,
    /// The access log's writer (`None`: off; accesslog.rs).
    pub access_log: Option<crate::accesslog::AccessLog>,
    /// The OTLP span exporter (`None`: no `--otlp-endpoint`; trace.rs).
    pub spans: Option<crate::trace::Exporter>,
}

/// Where the served snapshot came from (`/ready` `source`, `meridian_proxy_snapshot_source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SnapshotSource {
    /// `--snapshot FILE`.
    File,
    /// The controller's stream, in this run of the proxy.
    Controller,
    /// The state file of `--state-dir`, restored at start while the controller is not (yet)
    /// heard from.
    Disk(RestoredFrom),
}

impl SnapshotSource {
    /// Every label value, so that the gauge shows the zeros too.
    pub const LABELS: [&'static str; 3] = ["file", "controller", "disk"];

    pub fn label(&self) -> &'static str {
        match self {
            SnapshotSource::File => "file",
            SnapshotSource::Controller => "controller",
            SnapshotSource::Disk(_) => "disk",
        }
    }
}

/// The state file a restored snapshot came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RestoredFrom {
    pub path: String,
    pub generation: u64,
    pub written_at: String,
}

/// What `/ready` says about the state file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StateFileStatus {
    pub path: String,
    /// Generation and time of the last successful write (in this run).
    pub written: Option<(u64, String)>,
    /// Why the last write or the restore failed (cleared by the next successful write).
    pub last_error: Option<String>,
}

/// How this proxy secures the east-west hops it sends.
pub(crate) enum HopSecurity {
    /// Mutual TLS with the proxy's mesh identity.
    Mesh(Arc<Mesh>),
    /// No identity: a try at an east-west endpoint fails its handshake (there is nothing to
    /// prove who we are with), so it moves on like after a refused connection.
    NoIdentity,
    /// Plain HTTP (`ProxyConfig::east_west_plaintext`: benchmarks and tests only).
    Plaintext,
}

/// What requests on the east-west listener use in place of a Gateway listener and Gateway.
pub(crate) struct EastWestSide {
    /// Metrics labels (`listener="east-west"`).
    pub listener: Arc<ListenerInfo>,
    /// Served-by always on, the `east-west` traffic counters, no drains.
    pub gateway: Arc<GatewayEntry>,
}

/// What `/ready` says about the controller link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ControllerLink {
    pub url: String,
    pub connected: bool,
    pub last_error: Option<String>,
}

impl Shared {
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn controller(&self) -> Option<ControllerLink> {
        self.controller
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_controller(&self, link: Option<ControllerLink>) {
        self.metrics
            .controller_connected
            .set(i64::from(link.as_ref().is_some_and(|l| l.connected)));
        *self.controller.lock().unwrap_or_else(|p| p.into_inner()) = link;
    }

    pub fn source(&self) -> Option<SnapshotSource> {
        self.source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records where the served snapshot now comes from (gauge: 1 for it, 0 for the others).
    pub fn set_source(&self, source: SnapshotSource) {
        self.record_source(Some(source));
    }

    /// Records that no snapshot source is known (a restore that was refused).
    pub fn clear_source(&self) {
        self.record_source(None);
    }

    fn record_source(&self, source: Option<SnapshotSource>) {
        for label in SnapshotSource::LABELS {
            self.metrics
                .snapshot_source
                .with_label_values(&[label])
                .set(i64::from(
                    source.as_ref().is_some_and(|s| label == s.label()),
                ));
        }
        *self.source.lock().unwrap_or_else(|p| p.into_inner()) = source;
    }

    pub fn state_file(&self) -> Option<StateFileStatus> {
        self.state_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn update_state_file(&self, f: impl FnOnce(&mut StateFileStatus)) {
        let mut guard = self.state_file.lock().unwrap_or_else(|p| p.into_inner());
        f(guard.get_or_insert_with(StateFileStatus::default));
    }

    pub fn set_last_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}
