//! Config distribution from the controller to its proxies, with acknowledgements, so that
//! `Programmed=True` means "served".
//!
//! ```text
//!   controller                                   proxies (one or more per member cluster)
//! ┌──────────────────────────────┐             ┌──────────────────────────────────────────┐
//! │ DistributionServer (TLS 1.3) │  POST       │ Client::run(target = ProxyHandle), mTLS  │
//! │  publish(cluster, snapshot) ─┼─ /v1/stream ◄─ Hello{proxyId, cluster, region, zone,   │
//! │  publish_endpoints(..)       │  200 NDJSON ─┼►  gateways, address, capabilities}      │
//! │                              │  welcome,   │  snapshot ─► apply ─┐                    │
//! │  state(), programmed(..),    │  snapshot,  │  patch ─► patch held, apply              │
//! │  subscribe(), metrics_text() │  patch,     │  endpoints ─► patch, apply               │
//! │                              │  endpoints, │  ping                ▼                    │
//! │                              ◄─ /v1/ack ───┼─ Ack{proxyId, generation, applied|refused,│
//! │                              │             │      resync}                              │
//! │  traffic(cluster, gateway)   ◄─ /v1/traffic┼─ TrafficReport{proxyId, gateways, health} │
//! │   (Σ proxies + retired)      │             │   every 1 s when it changed               │
//! │  state()[..].health          │             │   (Target::traffic, Target::health)       │
//! └──────────────────────────────┘             └──────────────────────────────────────────┘
//! ```
//!
//! # Transport and identity
//!
//! The server speaks only TLS 1.3 (HTTP/1.1 inside); a plaintext client fails the handshake.
//! Its certificate is issued by the mesh CA ([`pki::Ca`]), names
//! `spiffe://<trust domain>/controller` and the host names and IPs proxies reach it at, and is
//! renewed two thirds into its lifetime (new connections get the new one). Proxies trust only
//! the mesh CA and check both the host name and the controller identity.
//!
//! Client certificates are optional at the TLS level but a presented one must chain to the mesh
//! CA (else the handshake fails). A proxy's certificate names
//! `spiffe://<td>/cluster/<c>/region/<r>/zone/<z>/proxy/<id>`, and that identity decides what it
//! may do:
//!
//! - `/v1/stream`, `/v1/ack` and `/v1/traffic` need a verified *proxy* certificate (`401`
//!   otherwise; the controller's own certificate is no proxy's);
//! - a hello must name the certificate's cluster, region, zone and proxy id (`403`), so a
//!   proxy only receives its own cluster's snapshots and can only replace its own stream;
//! - a hello's `address` must be a concrete IP (not unspecified, multicast or broadcast) or a
//!   host name that the cluster's [`AddressPolicy`](server::AddressPolicy) allows (`403`);
//! - its `eastWest` listener must be on the proxy's own host: the IP the connection comes from,
//!   loopback when both are, or an address the cluster's policy allows (`403`);
//! - acks and traffic reports must name the certificate's proxy id (`403`).
//!
//! `GET /healthz` and `GET /metrics` need no certificate.
//!
//! # Protocol (HTTP/1.1, JSON)
//!
//! 0. `POST /v1/certificate` with a [`CertificateRequest`](protocol::CertificateRequest)
//!    (`{"cluster","zone","proxyId","csr"}`, the CSR in PEM; ≤ 64 KiB) answers `200`
//!    `{"certificate","caBundle"}` (PEM chain, PEM CAs). With a verified proxy certificate it is a
//!    *renewal*: the body must name exactly that identity (`403`). Without one it is a
//!    *bootstrap*: `Authorization: Bearer <credential>` is needed (`401`), the server must have a
//!    [`BootstrapVerifier`](server::BootstrapVerifier) (`403` "bootstrap disabled"), which must
//!    accept it (`401`; `503` with `Retry-After` when it cannot decide now), and its grant must
//!    admit the claimed zone and proxy id (`403`); the region comes from the grant. A CSR that
//!    does not parse or verify gets `400`. The CA writes only the verified names.
//! 1. `POST /v1/stream` with a [`StreamHello`](protocol::StreamHello) body: the [`Hello`]
//!    (`{"proxyId","cluster","region","zone","gateways":[{"namespace","name"}]|absent,"address",
//!    "eastWest"}`; `eastWest` is the `ip:port` of the proxy's east-west listener for
//!    multi-network clusters, absent without one, `400` when it is not a concrete `ip:port`) plus
//!    `"capabilities":["patch"]` from a client that applies patches (absent from older clients;
//!    unknown capabilities and unknown fields are ignored by both sides)
//!    answers `200` with a never-ending `application/x-ndjson` body, one message per line:
//!    - `{"welcome":{"pingIntervalMs":5000}}` first;
//!    - `{"snapshot":{…Snapshot…}}`: a full [`Snapshot`](meridian_model::Snapshot) (filtered to
//!      the Hello's Gateways), sent on connect if the cluster has one, and on a change the
//!      stream cannot get as a patch or delta;
//!    - `{"patch":{"base":B,"generation":G,"gateways":[pieces],"drains"?,"eastWest"?}}`: a
//!      route-level [`SnapshotPatch`](meridian_model::patch::SnapshotPatch), only to a stream
//!      that announced `patch` and whose last message was generation `B`. Each list it touches
//!      (Gateways, a Gateway's listeners, a listener's routes) is rebuilt from pieces of the
//!      base's: `{"keep":[from,len]}`, `{"edit":{"at":i,…}}` (a Gateway's listeners, a
//!      listener's routes), `{"put":{…}}` (a whole new or changed route, listener or Gateway);
//!      what no piece names is removed. A filtered stream gets the patch of its own view. The
//!      proxy applies it to its generation-`B` snapshot (all or nothing) and applies the result
//!      like a full snapshot. One that does not fit is refused with `"resync":true` in the ack;
//!      the server then sends the full snapshot at once. A patch that keeps nothing of the base,
//!      or is no smaller than the base's already encoded full line, is sent as a full snapshot;
//!    - `{"endpoints":{"generation":G,"base":B,"changes":[{"backend","protocol","endpoints"}]}}`:
//!      only endpoint lists changed; the proxy patches its generation-`B` snapshot into
//!      generation `G` (a proxy holding anything else reconnects to resync). The server sends a
//!      delta only to a stream whose last message was generation `B`, else the full snapshot;
//!    - `"ping"` after `pingIntervalMs` of silence. A proxy hearing nothing for three intervals
//!      reconnects.
//!
//!    A newer stream with the same `proxyId` replaces the older one.
//! 2. `POST /v1/ack` with an [`Ack`] body
//!    (`{"proxyId","generation","result":{"status":"applied"}|{"status":"refused","reason"},
//!    "resync":true|absent}`) answers `204`, `403` for another proxy's id, or `404` for a proxy
//!    id the server does not know (it never opened a stream, or has been gone for ten minutes).
//!    `resync` comes with the refusal of a patch that does not fit what the proxy holds.
//! 3. `POST /v1/traffic` with a [`TrafficReport`] body
//!    (`{"proxyId","gateways":[{"namespace","name","traffic":{…GatewayTraffic…}}]}`), sent by
//!    the client while its stream is open, every `traffic_interval` (1 s) when the counters
//!    changed, answers `204`; `403` for another proxy's id, `404` for an unknown proxy id,
//!    `400` for a body that does not decode, lists a Gateway twice or carries implausible
//!    counters (more failures, requests by region or latency samples than requests; a decrease
//!    within one stream; growth above [`server::MAX_REQUESTS_PER_SECOND`]), `413` past 1 MiB.
//!    Counters are cumulative since the proxy started. An optional `"health"` carries the
//!    proxy's own view: `{"nearestRegions":[{"region","rttMs"}],"ejected":[{"backend","address",
//!    "since","reason":"probe"|"passive","failures"}],"truncated"}` (at most
//!    [`protocol::MAX_REGIONS`] regions and [`protocol::MAX_EJECTED`] endpoints; a proxy with
//!    more sends the first ones and `"truncated":true`). A malformed one (too many entries, an
//!    address that is not `ip:port`, a time that is not RFC 3339, a negative round trip) refuses
//!    the whole report with `400` naming the proxy and the field. The server keeps the latest
//!    view per proxy ([`ProxyState::health`]) until the proxy's stream closes; older servers
//!    ignore the field and older proxies omit it. (Bodies of `/v1/stream` and `/v1/ack` are
//!    bounded at 64 KiB, also `413`.)
//!
//! # Traffic
//!
//! [`DistributionServer::traffic`] sums, for one Gateway of one cluster, the latest report of
//! every proxy that reported it, plus a per-cluster *retired* accumulator holding the last
//! counters of proxies that were forgotten or moved cluster, and the previous counters of a
//! proxy whose report went down (it restarted). So the sum never decreases and the controller
//! can take intervals of it with `GatewayTraffic::since` (which would read a decrease as a
//! restart). Details and the cases it cannot detect are in the [`server`] module docs.
//!
//! # Generations
//!
//! Generations are strictly increasing per cluster within one server. The caller's number is
//! kept when it moves forward; otherwise (0, or a caller that restarted its count) the server
//! assigns previous + 1, and [`Published`] says which number the proxies will acknowledge.
//! Publishing content equal to the latest assigns nothing and sends nothing. A restarted server
//! may start again from low numbers: proxies apply whatever arrives, and acks are per stream.
//!
//! # Programmed
//!
//! [`DistributionServer::programmed`] is `Applied(generation)` only when every *connected* proxy
//! of the cluster acknowledged that generation or a newer one, `Refused` (naming the proxy) when
//! one refused it and has not applied a newer one, `Pending` (naming the proxies still applying)
//! otherwise, `NoProxy` when none is connected. The server never answers `Unknown`: that is the
//! controller's word for a restart's reconnect grace. Acks are per
//! stream: a proxy that reconnects is `Pending` until it acknowledges again (it does at once,
//! without re-applying, when the content is what it already serves).
//!
//! # Static stability
//!
//! Proxies never stop serving because the controller is gone: the client keeps the last applied
//! snapshot and reconnects with jittered exponential backoff (100 ms doubling, capped at 5 s).
//! Its certificate is renewed beside the open stream (never dropping it); before each new stream
//! the client makes sure it holds one valid for at least a minute (renewal, else bootstrap).
//!
//! An endpoint delta is applied through [`Target::apply_endpoints`] when the target serves the
//! delta's base (the proxy swaps only the affected rules of its router, no recompile); otherwise
//! the client patches its held snapshot and applies it in full.
//!
//! # Layout and dependencies
//!
//! ```text
//! protocol   wire types (Hello, StreamHello, Ack, TrafficReport, stream messages) + endpoint
//!            deltas (route-level patches are meridian_model::patch)
//! pki/       identity: mesh CA, certificates, SPIFFE identities, TLS 1.3 settings, CertStore
//! server/    controller side: mod (config, start/stop), store (generations), registry (proxies,
//!            acks), programmed (ProgrammedState), traffic (sums, plausibility), tls (server
//!            certificate, handshakes), authorize (what a certificate allows), certificate
//!            (bootstrap, renewal), admission (owner's policies), http, stream (feeds)
//! client/    proxy side: mod (Client, reconnects), target (Target trait), stream (lines),
//!            apply (held snapshot, retries, acks), traffic (reports), identity (certificates),
//!            tls (HTTPS with the current certificate)
//! metrics    the server's Prometheus registry
//! ```
//!
//! The crate depends on `meridian-model` only among workspace crates: snapshots, traffic
//! counters and the shared vocabulary ([`GatewayRef`], [`ProgrammedState`], re-exported here)
//! come from there. It never depends on the controller or the proxy; they depend on it (the
//! controller's data-plane adapter runs a [`DistributionServer`], the proxy implements
//! [`Target`] and runs a [`Client`]). Errors at its edges are typed: [`ServerError`],
//! [`PublishError`], [`ClientError`].
//!
//! # Metrics of the stream
//!
//! `meridian_distribution_published_total{cluster,kind}` counts generations by how they travel
//! (`full`, `patch`, `endpoints`); `meridian_distribution_sent_messages_total{cluster,kind}` and
//! `meridian_distribution_sent_bytes_total{cluster,kind}` what the streams were actually written
//! (`snapshot`, `patch`, `endpoints`: a proxy that missed a base or does not apply patches gets
//! snapshots); `meridian_distribution_patch_fallbacks_total{cluster}` the full snapshots sent
//! because a patch did not fit.
//!
//! Limits today: the server finds what changed by comparing whole snapshots (`publish`: the
//! endpoint-only check, then the patch diff; both are plain comparisons, no encoding, but they
//! walk every route); a proxy applies a patch to its held snapshot and then compiles the whole
//! router from it (only endpoint deltas have an incremental router path); a proxy's first
//! traffic report to a server is not rate-bounded (it may follow a controller restart with days
//! of counters).

pub mod client;
mod metrics;
pub mod pki;
pub mod protocol;
pub mod server;

pub use client::{
    BootstrapCredential, Client, ClientConfig, ClientError, ClientStatus, Refused, Target,
};
pub use meridian_model::gateway::{GatewayRef, ProgrammedState, ProxyRefusal};
pub use protocol::{
    Ack, AckResult, EjectedEndpoint, EjectionReason, EndpointChange, GatewayTrafficReport, Hello,
    NearestRegion, ProxyHealth, TrafficReport,
};
pub use server::{
    DistributionServer, NOT_LEADER, ProxyState, PublishError, PublishKind, Published, Refusal,
    ServerConfig, ServerError, ServerNames,
};
