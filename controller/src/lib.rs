//! Meridian's multi-cluster Gateway API controller: the pure core.
//!
//! ```text
//!  member cluster A ─┐  watch events            ┌──────────────┐  Snapshot per cluster ─► distribution ─► proxies
//!  member cluster B ─┼──────────────► World ───►│  translate   │
//!  member cluster C ─┘  (apply/delete/reset)    └──────────────┘  StatusUpdate ─► status writer (per cluster)
//!                                                   ▲
//!                              TranslateConfig ─────┘  (controller name, addresses, proxy acks, clock)
//! ```
//!
//! 1. [`world`] — the in-memory index of every member cluster's objects, fed by watchers; never
//!    awaits.
//! 2. [`translate`](mod@translate) — a pure function from the world to one snapshot per cluster and the status
//!    every owned object should have. All Gateway API defaults are applied there.
//!    [`Incremental`](translate::Incremental) re-translates only what changed objects affect
//!    and patches the previous output, equal to a full translation.
//! 3. [`refgrant`] — the single ReferenceGrant check every cross-namespace reference goes through.
//! 4. [`status`] — status as data and the merge rules that keep writes idempotent.
//!
//! Nothing in that core talks to an API server. The I/O shell drives it:
//!
//! 5. [`watch`] — per member cluster, a supervisor probing CRDs and reachability and one
//!    kube-runtime watcher per kind, feeding the reconcile loop;
//! 6. [`controller`](mod@controller) — the reconcile loop (debounce, translate or refresh endpoints,
//!    publish, submit status), [`Controller::start`] and [`run`];
//! 7. `writer` — one status writer per cluster, several writes in flight (of different objects)
//!    (SSA for GatewayClass/Gateway, read-modify-write for HTTPRoute, GRPCRoute and TLSRoute parents, retries that resume as soon as the API answers again, outdated writes
//!    superseded, no write storms; [`for_status_writes`] gives its client short timeouts);
//! 8. [`dataplane`] — the [`DataPlane`] seam to the distribution server, and [`StaticDataPlane`];
//!    [`distributed`] — [`DistributedDataPlane`], that seam over the distribution server
//!    (`meridian-distribution`, which never depends on this crate), with per-Gateway
//!    [`AddressPools`];
//! 9. [`args`] — every `meridian controller` flag ([`ControllerArgs`]), including the distribution
//!    server's; [`serve`] / [`run`] — `meridian controller` itself; [`metrics`] — Prometheus and
//!    the admin listener;
//! 10. [`mesh`] — mesh identity: the CA from its Secret, the trust bundle ConfigMap in every
//!     member cluster, the TokenReview [`BootstrapVerifier`](meridian_distribution::server::BootstrapVerifier)
//!     and the address-pool [`AddressPolicy`](meridian_distribution::server::AddressPolicy) the
//!     distribution server asks before it issues a certificate or accepts an address;
//! 11. [`drill`] — the FailoverDrill runner (drains into snapshots, guards from the data plane's
//!     traffic counters, [`DrillActuator`] for kill/blackhole). Its [`DrillMode`] is the CRD's
//!     `spec.mode` enum (`meridian_crds::meridian::DrillMode`), re-exported.
//! 12. [`inspect`] — `meridian status` / `meridian explain`: read-only JSON on the admin
//!     listener (`/v1/status`, `/v1/explain`; bearer token or loopback), answered by the
//!     reconcile loop, and the CLI that fetches and renders it.
//!
//! ## What this crate owns and may depend on
//!
//! It owns the translation of Gateway API, MCS and Meridian objects into snapshots and status,
//! the watchers and status writers, the drill runner, every `meridian controller` flag and the
//! data-plane adapter over the distribution server. It depends on `meridian-model` (snapshot
//! types), `meridian-crds` (CRD types), `meridian-distribution` (the server the adapter wraps;
//! that crate never depends on this one) and kube/Gateway API types — never on the proxy, the
//! sandbox (tests only), the drill client or `meridian up`, which depend on it instead.
//!
//! Errors are typed at every public edge (no `anyhow` in the library): [`ArgsError`] and
//! [`ConnectError`] for flags and kubeconfig contexts, [`StartError`] and [`ReadyError`] for a
//! running controller, [`ServeError`] for [`run`]/[`serve`], [`DataPlaneError`] for the
//! distribution server, [`DurationError`](translate::DurationError) for durations and
//! [`ActuatorError`] for drill actuators. Status messages built by translation and the drill
//! runner are typed enums too; their `Display` is the message.

pub mod args;
pub mod controller;
pub mod dataplane;
pub mod distributed;
pub mod drill;
pub mod incluster;
pub mod inspect;
pub mod leader;
pub mod members;
pub mod mesh;
pub mod metrics;
pub mod refgrant;
pub mod status;
pub mod translate;
pub mod watch;
pub mod world;
mod writer;

pub use args::{ArgsError, ClusterSpec, ConnectError, ControllerArgs, NetworkSpec};
pub use controller::{
    Controller, ControllerConfig, ControllerHandle, MemberCluster, MemberDirectory, MemberEntry,
    MemberError, Members, ReadyError, ServeError, StartError, run, serve,
};
pub use dataplane::{DataPlane, StaticDataPlane};
pub use distributed::addresses::{AddressPools, AddressRange};
pub use distributed::{DataPlaneError, DistributedDataPlane};
pub use drill::{ActuatorError, ActuatorFuture, DrillActuator, DrillMode, DrillTarget};
pub use writer::{FIELD_MANAGER, for_status_writes};

pub use status::{StatusKind, StatusUpdate};
pub use translate::{
    AddressPolicy, CONTROLLER_NAME, ClusterGatewayRef, EastWestListeners, GatewayRef,
    MissingRemote, Output, ProgrammedState, ProxyRefusal, SUPPORTED_FEATURES, TranslateConfig,
    refresh_endpoints, translate,
};
pub use world::{
    ClusterName, ClusterState, Indexed, Kind, ObjectKey, Revision, RouteKey, RouteKind, World,
};

/// Resolves once a shutdown flag turns true (or its sender is gone). Returns `()` so that no
/// non-`Send` borrow guard lives in the futures that `select!` on it.
pub(crate) async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(drop);
}
