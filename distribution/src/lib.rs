//! Config distribution from the controller to its proxies, with acknowledgements, so that
//! `Programmed=True` means "served".
//!
//! ```text
//!   controller                                   proxies (one or more per member cluster)
//! ┌──────────────────────────────┐             ┌──────────────────────────────────────────┐
//! │ DistributionServer           │  POST       │ Client::run(target = ProxyHandle)        │
//! │  publish(cluster, snapshot) ─┼─ /v1/stream ◄─ Hello{proxyId, cluster, region, zone,   │
//! │  publish_endpoints(..)       │  200 NDJSON ─┼►  gateways, address}                    │
//! │                              │  welcome,   │  snapshot ─► apply ─┐                    │
//! │  state(), programmed(..),    │  snapshot,  │  endpoints ─► patch, apply                │
//! │  subscribe(), metrics_text() │  endpoints, │  ping                ▼                    │
//! │                              ◄─ /v1/ack ───┼─ Ack{proxyId, generation, applied|refused}│
//! │  traffic(cluster, gateway)   ◄─ /v1/traffic┼─ TrafficReport{proxyId, gateways} every 1s│
//! │   (Σ proxies + retired)      │             │   (Target::traffic, when it changed)      │
//! └──────────────────────────────┘             └──────────────────────────────────────────┘
//! ```
//!
//! # Protocol (HTTP/1.1, JSON)
//!
//! Every request to `/v1/*` carries `Authorization: Bearer <token>` unless the server runs with
//! `insecure: true`; a missing or wrong token gets `401` (and the proxy logs that its token was
//! refused). `GET /healthz` and `GET /metrics` need no token.
//!
//! 1. `POST /v1/stream` with a [`Hello`] body
//!    (`{"proxyId","cluster","region","zone","gateways":[{"namespace","name"}]|absent,"address",
//!    "eastWest"}`; `eastWest` is the `ip:port` of the proxy's east-west listener for
//!    multi-network clusters, absent without one, `400` when it is not a concrete `ip:port`)
//!    answers `200` with a never-ending `application/x-ndjson` body, one message per line:
//!    - `{"welcome":{"pingIntervalMs":5000}}` first;
//!    - `{"snapshot":{…Snapshot…}}`: a full [`Snapshot`](meridian_model::Snapshot) (filtered to
//!      the Hello's Gateways), sent on connect if the cluster has one and on every change;
//!    - `{"endpoints":{"generation":G,"base":B,"changes":[{"backend","protocol","endpoints"}]}}`:
//!      only endpoint lists changed; the proxy patches its generation-`B` snapshot into
//!      generation `G` (a proxy holding anything else reconnects to resync). The server sends a
//!      delta only to a stream whose last message was generation `B`, else the full snapshot;
//!    - `"ping"` after `pingIntervalMs` of silence. A proxy hearing nothing for three intervals
//!      reconnects.
//!
//!    A newer stream with the same `proxyId` replaces the older one.
//! 2. `POST /v1/ack` with an [`Ack`] body
//!    (`{"proxyId","generation","result":{"status":"applied"}|{"status":"refused","reason"}}`)
//!    answers `204`, or `404` for a proxy id the server does not know (it never opened a
//!    stream, or has been gone for ten minutes).
//! 3. `POST /v1/traffic` with a [`TrafficReport`] body
//!    (`{"proxyId","gateways":[{"namespace","name","traffic":{…GatewayTraffic…}}]}`), sent by
//!    the client while its stream is open, every `traffic_interval` (1 s) when the counters
//!    changed, answers `204`; `404` for an unknown proxy id, `400` for a body that does not
//!    decode or lists a Gateway twice, `413` past 1 MiB. Counters are cumulative since the proxy
//!    started. (Bodies of `/v1/stream` and `/v1/ack` are bounded at 64 KiB, also `413`.)
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
//!
//! An endpoint delta is applied through [`Target::apply_endpoints`] when the target serves the
//! delta's base (the proxy swaps only the affected rules of its router, no recompile); otherwise
//! the client patches its held snapshot and applies it in full.
//!
//! # Layout and dependencies
//!
//! ```text
//! protocol   wire types (Hello, Ack, TrafficReport, stream messages) + endpoint deltas
//! server/    controller side: mod (config, start/stop), store (generations), registry (proxies,
//!            acks), programmed (ProgrammedState), traffic (sums), auth, http, stream (feeds)
//! client/    proxy side: mod (Client, reconnects), target (Target trait), stream (lines),
//!            apply (held snapshot, retries, acks), traffic (reports)
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
//! Limits today: plain HTTP only (no TLS/mTLS between proxy and controller), one shared token for
//! every proxy, and the server finds an endpoint-only change by comparing whole snapshots
//! (`publish`), which dominates an endpoint change at 10k routes.

pub mod client;
mod metrics;
pub mod pki;
pub mod protocol;
pub mod server;

pub use client::{Client, ClientConfig, ClientError, ClientStatus, Refused, Target};
pub use meridian_model::gateway::{GatewayRef, ProgrammedState, ProxyRefusal};
pub use protocol::{Ack, AckResult, EndpointChange, GatewayTrafficReport, Hello, TrafficReport};
pub use server::{
    DistributionServer, NOT_LEADER, ProxyState, PublishError, PublishKind, Published, Refusal,
    ServerConfig, ServerError,
};
