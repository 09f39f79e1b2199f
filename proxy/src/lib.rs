//! Meridian's data plane: a pingora proxy serving HTTPRoute and GRPCRoute semantics from a
//! snapshot (gRPC specifics: gateway/grpc.rs), and TLSRoute passthrough (passthrough/: the
//! ClientHello's SNI picks the route, the encrypted bytes are relayed to an endpoint chosen
//! like an HTTP one; TLS is never terminated).
//!
//! ```text
//!                     ┌──────────────── ProxyHandle ────────────────┐
//! snapshot ─ apply ──►│ Router::compile ─ parse certs ─ bind sockets │── ArcSwap<Served>
//! (file watcher or    │   (all or nothing; refusal keeps the old one)│        │
//!  controller stream) └──────────────────────────────────────────────┘        │ load() per
//!                                                                             │ request/handshake
//! client ─► accept loop per socket (listeners.rs) ─ passthrough socket? ─► passthrough/
//!             (ClientHello, SNI route, endpoint, splice)
//!          ─ TLS by SNI ─► HTTP/1: lean driver (lean/),
//!             h2: HttpProxy<GatewayProxy>; on a worker's thread (workers.rs) or the caller's
//!             runtime; both call GatewayProxy (gateway/route.rs):
//!             framing checks (gateway/framing.rs) ─ path normalised
//!             (gateway/path.rs; 400) ─ Via loop guard (edge.rs) ─ route ─ forwarding headers
//!             (gateway/forwarded.rs) ─ filters
//!             (gateway/filters.rs) ─ weighted backend
//! remote proxy ─► east-west listener (mutual TLS, mesh.rs) ─► lean driver / HttpProxy (h2),
//!             both calling EastWestProxy (gateway/east_west.rs): the backend named in
//!             x-meridian-backend
//!          both ─► Forwarder (gateway/upstream.rs, gateway/response.rs): endpoint
//!             (endpoints.rs) ─ upstream (pooled, h1 or h2c) ─ retries/failover ─ response
//!             filters ─ served-by ─ traffic counters and metrics
//! admin.rs: /healthz /ready /healthz/gateway/NS/NAME (open to probes and GSLB health checks),
//!           /config_dump /metrics (bearer token if set)
//! state_dir.rs: the kept snapshot (--state-dir)
//! ```
//!
//! Flows:
//! 1. `ProxyHandle::start` (handle.rs) builds the Gateway listeners' `HttpProxy<GatewayProxy>`
//!    and lean HTTP/1 driver ([`ProxyConfig::http1_path`]), with [`ProxyConfig::east_west`] the
//!    east-west listener and its `HttpProxy<EastWestProxy>` and lean driver,
//!    the health checker and the admin listener ([`StartError`] when it cannot).
//! 2. `ProxyHandle::apply(snapshot)` compiles it, binds the sockets it adds, swaps the router,
//!    closes the sockets it drops (connections in flight finish).
//! 3. Each request's path is first rewritten into its normal form (gateway/path.rs, settings
//!    [`ProxyConfig::paths`], `--merge-slashes`, `--escaped-slashes`): dot segments removed,
//!    unreserved escapes decoded, `//` merged; rules, filters and the backend all see that path,
//!    and a path that cannot be normalised gets 400. Then it takes the router once, clones its matched rule into its context
//!    (gateway/ctx.rs) and never looks at the router again, so swaps are invisible to requests in
//!    flight.
//! 4. `watch_file` (watch.rs) polls a snapshot file and applies each new version (`meridian
//!    proxy --snapshot FILE`), or `follow_controller` (controller.rs) applies what the controller
//!    streams and acknowledges each generation (`meridian proxy --controller URL`, protocol in
//!    `meridian-distribution`). In both modes the last good snapshot keeps serving whatever
//!    happens to its source. [`run`] (cli.rs) is `meridian proxy`: flags, runtime, source, until
//!    SIGTERM or Ctrl-C, then drains gracefully ([`RunError`] when it cannot start).
//! 5. With `--state-dir DIR`, `follow_controller_with_state` (controller.rs) first serves the
//!    snapshot kept in DIR if it passes its checks ([`state_dir`]: format version, SHA-256,
//!    cluster), then writes every snapshot applied from the controller there atomically, so a
//!    proxy restarting while the controller is down serves at once. `/ready` and
//!    `meridian_proxy_snapshot_source` tell where the served snapshot came from (`file`,
//!    `controller`, `disk`); docs/proxy.md has the operator's view.
//!
//! Workers ([`ProxyConfig::workers`], `meridian proxy --workers N`, default one per core): N
//! threads with a current-thread runtime each, an `SO_REUSEPORT` socket per listener address and
//! worker, and a pingora app (so an upstream pool) per worker; a connection, its upstream
//! connection and its response stay on one thread (workers.rs, listeners.rs). Snapshots,
//! health checks, the controller link and the admin listener stay on the caller's runtime.
//!
//! Endpoint health: connect failures eject at once (endpoints.rs) and an active health checker
//! (health.rs, TCP by default) probes every endpoint, re-admitting ejected ones. Its connect
//! times give a smoothed round trip per region, which orders the other regions nearest first
//! when no policy names them (`locality::nearest_order`, with hysteresis; `/config_dump`
//! `nearestRegions`). That order and the endpoints ejected right now (with when, why and how
//! many failures: `health::report`) go to the controller with the traffic counters, for
//! `meridian status` and `explain`.
//!
//! Smarter failover (docs/operations.md): the lean HTTP/1 path hedges an idempotent request
//! (no body, or at most 16 KiB) whose first try has not answered after an adaptive delay (lean/hedge.rs: the
//! backend's p95, 25–250 ms) to the next region, within the retry budget; the framework path
//! does not hedge. failover.rs keeps the failover metrics (active tier per backend, failover and
//! failback events, time to move) and answers the per-Gateway GSLB health endpoint's question
//! (can this region serve the Gateway from its own endpoints?).
//!
//! Failover drills: the snapshot's `drains` (drain.rs) make the endpoints they match look failed
//! to the Gateways and backends they scope, without touching health state; lifting them brings
//! the endpoints back through the failback hysteresis and slow start. Every finished request is
//! counted per Gateway (traffic.rs: region that answered, failure kind, latency), reported to the
//! controller ([`ProxyHandle::traffic`]) and exported on `/metrics`. Gateways with
//! `served_by_header` get `x-meridian-served-by: <cluster>/<region>/<zone>` on endpoint responses.
//!
//! Multi-network clusters: a backend endpoint marked `east_west` is a remote proxy's east-west
//! listener; requests to it carry `x-meridian-backend: <backend>` and the remote proxy serves them
//! from its own endpoints (`Snapshot.east_west`) on its east-west listener
//! ([`ProxyConfig::east_west`], `--east-west ADDR`), adding `x-meridian-served-by`. Both ends live
//! in gateway/east_west.rs (the receiver is its own `ProxyHttp`, `EastWestProxy`; the sender is
//! any try at such an endpoint); health is kept per (remote proxy, backend) (endpoints.rs). The
//! hop is mutual TLS 1.3 with the proxy's mesh identity ([`ProxyConfig::identity`], mesh.rs): the
//! listener admits only proxies of other clusters of the mesh, the sender only the cluster the
//! endpoint belongs to.
//!
//! Downstream limits (limits.rs): a header timeout from the accept (slowloris, silent clients), a
//! keep-alive idle timeout, a default request deadline for rules without one, the backend connect
//! timeout and a connection cap per listener socket, set by [`Limits`] (`meridian proxy` flags
//! [`LimitArgs`]); docs/proxy.md "Limits and timeouts" has the defaults.
//!
//! Edge behaviour (docs/proxy.md, "Edge behaviour"): ambiguous framing is answered 400 and the
//! connection closed (gateway/framing.rs, on top of pingora's own checks); `Connection`-nominated
//! headers go before the route's filters run; `X-Forwarded-For`/`-Proto` follow
//! [`EdgeConfig::xff_trusted_hops`] (gateway/forwarded.rs); endpoints on the proxy's own
//! listeners are never tried and a request carrying the proxy's own `Via` entry gets 508
//! (edge.rs).
//!
//! Which code runs each request (docs/benchmarks.md, "Lean request path"): HTTP/1 requests on
//! every listener (plain, TLS-terminated, east-west) go through the lean driver (lean/): the
//! connection's own task reads the head with our own HTTP/1 codec (lean/codec/; `--http1-path
//! lean`: pingora-core's server session), calls the role's
//! `request_filter` and the [`Forwarder`](gateway) steps in pingora-proxy's order, and moves
//! body and response with pingora-core's connector and upstream sessions, with no task or channel
//! per request (pingora-proxy's per-request machinery cost about a third of the CPU per request).
//! pingora stays where it wins or where we have nothing better: TLS termination (openssl), the
//! upstream HTTP/1 session, h2c upstream connections, and all of HTTP/2 (h2 and h2c
//! clients go to `HttpProxy`, pingora-proxy's framework, which drives the same role hooks).
//! `--http1-path framework` ([`Http1Path`]) sends HTTP/1 there too, as the reference.
//!
//! Observability (docs/operations.md, "Access logs", "Traces"): with [`ProxyConfig::access_log`]
//! (`--access-log`) each finished request becomes one JSON line, encoded on the request's thread
//! and written by a thread of its own behind a bounded queue (accesslog.rs; a full queue drops
//! lines, counted); with [`ProxyConfig::tracing`] (`--otlp-endpoint`) its span and one span per
//! upstream try go to the OpenTelemetry SDK's batch processor and OTLP/HTTP exporter (trace.rs).
//! Either on, W3C `traceparent` is continued or started and sent upstream per try
//! (gateway/observe.rs); both off, requests pay nothing for them.
//!
//! Limits today: mirror copies carry no body; retries (on a listed status or an upstream error)
//! need the request body to fit pingora's retry buffer; only WebSocket upgrades are forwarded (any
//! other `Upgrade` reaches the backend as a plain request, as pingora-proxy does); upgraded
//! connections are relayed by the lean path (lean/tunnel.rs; `--http1-path framework` relays them
//! through pingora-proxy 0.9.1, which can lose the bytes after a fast backend's `101`,
//! cloudflare/pingora#946).

mod accesslog;
mod admin;
pub mod budget;
mod buffered;
mod cli;
mod controller;
pub mod drain;
pub mod edge;
pub mod endpoints;
mod failover;
mod gateway;
mod handle;
mod headers;
mod health;
mod lean;
mod limits;
mod listeners;
mod mesh;
mod metrics;
mod mirror;
mod passthrough;
mod state;
pub mod state_dir;
mod trace;
mod traffic;
mod watch;
mod workers;

pub use accesslog::{AccessLogConfig, AccessLogError, AccessLogTarget};
pub use admin::AdminAuth;
pub use cli::{AdvertiseError, ObserveArgs, ProxyArgs, RunError, east_west_advertised, run};
pub use controller::{follow_controller, follow_controller_with_state};
pub use edge::{EdgeArgs, EdgeConfig};
pub use gateway::{BACKEND_HEADER, SERVED_BY_HEADER};
pub use handle::{ApplyError, ProxyConfig, ProxyHandle, StartError};
pub use lean::{HeaderCase, Http1Path};
pub use limits::{LimitArgs, Limits, OptionalDuration, parse_duration, raise_nofile_limit};
pub use state_dir::StateDir;
pub use trace::{TraceConfig, TraceError};
pub(crate) use watch::BIND_RETRY;
pub use watch::{WATCH_INTERVAL, decode, watch_file};
