//! Wire types of the distribution protocol and the endpoint-delta logic both sides share.
//!
//! Every message on the stream is one JSON object on one line (newline-delimited JSON). Stream
//! messages are externally tagged (`{"snapshot": {...}}`, `{"patch": {...}}`,
//! `{"endpoints": {...}}`, `"ping"`) so a multi-megabyte snapshot is decoded in one pass, without
//! serde buffering it to find a tag.
//!
//! Compatibility: a client announces what it understands beyond full snapshots and endpoint
//! deltas in the `capabilities` of its [`StreamHello`] (today only [`CAPABILITY_PATCH`]); the
//! server sends a message kind only to a stream that announced it. Neither side refuses unknown
//! hello fields, so an old proxy and a new server (or the reverse) still talk: the old side just
//! never sees a patch.
//!
//! The Gateways of a [`Hello`] are [`GatewayRef`]s, the model's name for a Gateway (re-exported
//! here because the wire carries it: `{"namespace": …, "name": …}`).

use std::collections::HashMap;
use std::sync::Arc;

pub use meridian_model::GatewayRef;
use meridian_model::Snapshot;
use meridian_model::patch::{SnapshotPatch, Touched};
use meridian_model::snapshot::{
    Backend, BackendProtocol, BackendTarget, Endpoint, Filter, Gateway, Listener, Route, Rule,
};
use meridian_model::traffic::GatewayTraffic;
use serde::{Deserialize, Serialize};

/// `Content-Type` of the stream.
pub const STREAM_CONTENT_TYPE: &str = "application/x-ndjson";

/// Body of `POST /v1/stream`: who the proxy is and what it serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// Stable identity of the proxy (e.g. its pod name). A second stream with the same id
    /// replaces the first.
    pub proxy_id: String,
    /// Member cluster the proxy runs in; it receives that cluster's snapshot.
    pub cluster: String,
    /// Region the proxy runs in.
    #[serde(default)]
    pub region: String,
    /// Zone the proxy runs in.
    #[serde(default)]
    pub zone: String,
    /// The Gateways it serves; `None` serves every Gateway of the cluster's snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateways: Option<Vec<GatewayRef>>,
    /// Address clients reach this proxy on (IP or hostname), reported in Gateway
    /// `status.addresses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `ip:port` of this proxy's east-west listener, where proxies of other networks reach the
    /// backends of this proxy's network (multi-network clusters); `None` when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub east_west: Option<String>,
}

impl Hello {
    /// Whether this proxy serves Gateway `gw`.
    pub fn serves(&self, gw: &GatewayRef) -> bool {
        self.gateways.as_ref().is_none_or(|list| list.contains(gw))
    }
}

/// The capability of a client that applies [`Message::Patch`].
pub const CAPABILITY_PATCH: &str = "patch";

/// The body of `POST /v1/stream` as it travels: the [`Hello`] (who the proxy is) plus what the
/// client's code understands. Kept apart from [`Hello`], which describes the proxy and is what
/// the server keeps about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamHello {
    /// Who the proxy is.
    #[serde(flatten)]
    pub hello: Hello,
    /// Stream message kinds the client understands beyond `snapshot` and `endpoints`
    /// ([`CAPABILITY_PATCH`]); unknown ones are ignored. Absent for old clients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
}

impl StreamHello {
    /// Whether the client applies snapshot patches.
    pub fn patches(&self) -> bool {
        self.capabilities.iter().any(|c| c == CAPABILITY_PATCH)
    }
}

/// The welcome line, the first message of every stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Welcome {
    /// The server sends a ping at least this often; silence for 3× this means the stream is dead.
    pub ping_interval_ms: u64,
}

/// New endpoints of one backend (every backend with that name is patched).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointChange {
    /// Backend display name as in the snapshot (`ns/svc:port`, ...).
    pub backend: String,
    /// Wire protocol to the endpoints.
    #[serde(default)]
    pub protocol: BackendProtocol,
    /// The complete new endpoint list.
    pub endpoints: Vec<Endpoint>,
}

/// A message on the stream (decoding side).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Message {
    /// First line: the stream is authenticated and live.
    Welcome(Welcome),
    /// A full snapshot; its `generation` field is the generation to acknowledge.
    Snapshot(Box<Snapshot>),
    /// Endpoint-only update: patch the snapshot of generation `base` into generation
    /// `generation`.
    Endpoints(EndpointsUpdate),
    /// Route-level change: the snapshot of generation `base` patched into generation
    /// `generation` (only to clients with [`CAPABILITY_PATCH`]).
    Patch(SnapshotPatch),
    /// Keepalive.
    Ping,
}

/// An endpoint-only update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointsUpdate {
    /// The generation the patched snapshot becomes.
    pub generation: u64,
    /// The generation it applies to; a proxy holding another one must resync.
    pub base: u64,
    /// The changes.
    pub changes: Vec<EndpointChange>,
}

/// Just enough of a stream message to acknowledge it when the full decode fails.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Peek {
    Welcome {},
    Snapshot { generation: u64 },
    Endpoints { generation: u64 },
    Patch { generation: u64 },
    Ping,
}

/// Serialization of a full snapshot message without cloning the snapshot.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Outgoing<'a> {
    Welcome(&'a Welcome),
    Snapshot(&'a Snapshot),
    Endpoints(&'a EndpointsUpdate),
    Patch(&'a SnapshotPatch),
    Ping,
}

/// Body of `POST /v1/certificate`: the identity a proxy asks a certificate for and its CSR. The
/// region is not asked: it comes from the proxy's current certificate (renewal) or from the
/// controller's verification of the bootstrap credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequest {
    /// Member cluster.
    pub cluster: String,
    /// Zone.
    pub zone: String,
    /// The proxy's id.
    pub proxy_id: String,
    /// PEM certificate signing request (the proxy keeps its private key).
    pub csr: String,
}

/// Answer `200` to `POST /v1/certificate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateResponse {
    /// The certificate, PEM, leaf first.
    pub certificate: String,
    /// The CAs to trust from now on, PEM.
    pub ca_bundle: String,
}

/// Body of `POST /v1/ack`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    /// The proxy (as in its [`Hello`]).
    pub proxy_id: String,
    /// The generation acknowledged.
    pub generation: u64,
    /// What happened to it.
    pub result: AckResult,
    /// With a refusal: the proxy does not hold the base the refused patch was made for, so
    /// patches cannot reach it; the server answers with the full snapshot. Absent (false) from
    /// old clients, ignored by old servers (which send no patches).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resync: bool,
}

/// Body of `POST /v1/traffic`: a proxy's cumulative counters per Gateway it serves (sent about
/// once a second; feeds drill guards and timelines in the controller).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficReport {
    /// The proxy (as in its [`Hello`]).
    pub proxy_id: String,
    /// Counters per Gateway, cumulative since the proxy started.
    #[serde(default)]
    pub gateways: Vec<GatewayTrafficReport>,
    /// The proxy's own health view (measured region order, ejected endpoints). Absent from
    /// older proxies; older servers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<ProxyHealth>,
}

/// At most this many ejected endpoints in one [`ProxyHealth`]; a proxy with more sends the
/// first ones and `truncated`.
pub const MAX_EJECTED: usize = 1_000;
/// At most this many regions in [`ProxyHealth::nearest_regions`].
pub const MAX_REGIONS: usize = 256;

/// A proxy's health view in a [`TrafficReport`]: what it measures and whom it ejected, so that
/// `meridian status` and `explain` can show the proxies' view next to the controller's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyHealth {
    /// Other regions nearest first as this proxy orders them (its smoothed connect round trip,
    /// with hysteresis); empty before its first measurement.
    #[serde(default)]
    pub nearest_regions: Vec<NearestRegion>,
    /// Endpoints ejected right now, per backend (at most [`MAX_EJECTED`]).
    #[serde(default)]
    pub ejected: Vec<EjectedEndpoint>,
    /// More endpoints were ejected than `ejected` lists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl ProxyHealth {
    /// Whether `other` tells the controller nothing new: the same region order, the same ejected
    /// endpoints, and every round trip within [`RTT_SLACK_MS`] or [`RTT_SLACK_SHARE`] of this
    /// one. Round trips drift by tenths of a millisecond all the time; without the slack an idle
    /// proxy would send a report every interval for noise alone.
    pub fn same_view(&self, other: &ProxyHealth) -> bool {
        self.ejected == other.ejected
            && self.truncated == other.truncated
            && self.nearest_regions.len() == other.nearest_regions.len()
            && self
                .nearest_regions
                .iter()
                .zip(&other.nearest_regions)
                .all(|(a, b)| a.region == b.region && rtt_close(a.rtt_ms, b.rtt_ms))
    }
}

/// Round trips closer than this many milliseconds are the same in [`ProxyHealth::same_view`].
pub const RTT_SLACK_MS: f64 = 1.0;
/// Round trips within this share of each other are the same in [`ProxyHealth::same_view`].
pub const RTT_SLACK_SHARE: f64 = 0.2;

fn rtt_close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            let d = (a - b).abs();
            d <= RTT_SLACK_MS || d <= RTT_SLACK_SHARE * a.abs().max(b.abs())
        }
        (None, None) => true,
        _ => false,
    }
}

/// One region of [`ProxyHealth::nearest_regions`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NearestRegion {
    /// Region.
    pub region: String,
    /// Smoothed connect round trip, milliseconds (`None`: not measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
}

/// Why a proxy ejected an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EjectionReason {
    /// Its active health checks failed.
    Probe,
    /// Requests failed at it (connect refused, reset or timed out; consecutive 5xx).
    Passive,
    /// A reason this version does not know (a newer proxy).
    #[serde(other)]
    Other,
}

impl EjectionReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectionReason::Probe => "probe",
            EjectionReason::Passive => "passive",
            EjectionReason::Other => "other",
        }
    }
}

/// An endpoint a proxy ejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EjectedEndpoint {
    /// Backend name as in the snapshot (`ns/svc:port`, ...).
    pub backend: String,
    /// `ip:port`.
    pub address: String,
    /// When it was ejected (RFC 3339).
    pub since: String,
    /// What ejected it.
    pub reason: EjectionReason,
    /// Failures that ejected it and failed probes since.
    #[serde(default)]
    pub failures: u32,
}

/// One Gateway's counters in a [`TrafficReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTrafficReport {
    /// Namespace of the Gateway.
    pub namespace: String,
    /// Name of the Gateway.
    pub name: String,
    /// Cumulative counters.
    pub traffic: GatewayTraffic,
}

/// Outcome of one generation on one proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "status")]
pub enum AckResult {
    /// Serving it.
    Applied,
    /// Refused; the proxy keeps serving its previous generation.
    Refused {
        /// The proxy's reason.
        reason: String,
    },
}

/// Replaces the endpoints of every resolved backend (mirror backends included) named in
/// `changes`. Returns whether anything changed.
pub fn patch_endpoints(snapshot: &mut Snapshot, changes: &[EndpointChange]) -> bool {
    let by_name: HashMap<&str, &EndpointChange> =
        changes.iter().map(|c| (c.backend.as_str(), c)).collect();
    snapshot.set_endpoints(|n| by_name.get(n).map(|c| (c.protocol, c.endpoints.as_slice())))
}

/// If `new` differs from `old` only in the endpoint lists (and protocols) of resolved backends,
/// returns the changes that turn `old` into `new` with [`patch_endpoints`] (empty when the
/// contents are equal). `None` when anything else differs, or when two backends with one name
/// would need different endpoint lists. Generations are ignored.
pub fn endpoint_delta(old: &Snapshot, new: &Snapshot) -> Option<Vec<EndpointChange>> {
    endpoint_delta_since(old, new, &Touched::everything())
}

/// [`endpoint_delta`] for a `new` made from `old` by a producer that touched only `touched`
/// (see [`meridian_model::patch::Touched`]): the Gateways outside it, and the routes `new`
/// shares with `old` ([`Arc::ptr_eq`]), are not compared. Since a delta is applied by backend
/// name to every backend of that name, the backends of those routes are then checked for the
/// changed names only (a walk over names, no comparison of contents).
pub fn endpoint_delta_since(
    old: &Snapshot,
    new: &Snapshot,
    touched: &Touched,
) -> Option<Vec<EndpointChange>> {
    // Drains and east-west backends are not route endpoint lists: a change to them sends the
    // whole snapshot.
    if old.schema != new.schema || old.drains != new.drains || old.east_west != new.east_west {
        return None;
    }
    let mut d = Delta::default();
    lockstep(&old.gateways, &new.gateways, |a, b| {
        gateway(a, b, touched, &mut d)
    })?;
    d.finish(new)
}

/// Every backend name seen in the new snapshot with the endpoints it must have, and whether any
/// occurrence changed. Borrowed from the new snapshot: only changed entries are copied.
#[derive(Default)]
struct Delta<'a> {
    seen: HashMap<&'a str, (BackendProtocol, &'a [Endpoint], bool)>,
}

impl<'a> Delta<'a> {
    fn record(
        &mut self,
        name: &'a str,
        protocol: BackendProtocol,
        endpoints: &'a [Endpoint],
        changed: bool,
    ) -> Option<()> {
        match self.seen.get_mut(name) {
            Some((p, eps, c)) => {
                // The patch is by name: every occurrence must end up with the same list.
                if *p != protocol || *eps != endpoints {
                    return None;
                }
                *c |= changed;
            }
            None => {
                self.seen.insert(name, (protocol, endpoints, changed));
            }
        }
        Some(())
    }

    /// The changes; `None` when a backend of `new` the comparison skipped (a shared route, an
    /// untouched Gateway) has a changed name but another endpoint list than the change gives it.
    fn finish(self, new: &Snapshot) -> Option<Vec<EndpointChange>> {
        let mut out: Vec<EndpointChange> = self
            .seen
            .into_iter()
            .filter(|(_, (_, _, changed))| *changed)
            .map(|(backend, (protocol, endpoints, _))| EndpointChange {
                backend: backend.to_string(),
                protocol,
                endpoints: endpoints.to_vec(),
            })
            .collect();
        if out.is_empty() {
            return Some(out);
        }
        out.sort_by(|a, b| a.backend.cmp(&b.backend));
        // Every backend with a changed name gets the change's list: it must have it already.
        // The compared ones were checked when recorded; checking them again is cheaper than
        // telling them apart.
        let by_name = |name: &str| {
            out.binary_search_by(|c| c.backend.as_str().cmp(name))
                .ok()
                .map(|i| &out[i])
        };
        let mut consistent = true;
        for route in new
            .gateways
            .iter()
            .flat_map(|g| &g.listeners)
            .flat_map(|l| &l.routes)
        {
            for_each_backend(route, &mut |b| {
                // Invalid backends are not patched by name: only resolved ones matter.
                if let BackendTarget::Endpoints {
                    protocol,
                    endpoints,
                    ..
                } = &b.target
                    && let Some(c) = by_name(&b.name)
                {
                    consistent &= *protocol == c.protocol && *endpoints == c.endpoints;
                }
            });
            if !consistent {
                return None;
            }
        }
        Some(out)
    }
}

fn lockstep<'a, T>(a: &[T], b: &'a [T], mut f: impl FnMut(&T, &'a T) -> Option<()>) -> Option<()> {
    if a.len() != b.len() {
        return None;
    }
    a.iter().zip(b).try_for_each(|(x, y)| f(x, y))
}

fn same<T: PartialEq>(a: &T, b: &T) -> Option<()> {
    (a == b).then_some(())
}

// The comparisons below destructure every struct, so a field added to the snapshot model is a
// compile error here instead of a change silently sent as an endpoint delta.

/// Calls `f` on every backend of a route, mirror backends included.
fn for_each_backend(route: &Route, f: &mut impl FnMut(&Backend)) {
    fn mirrors(filters: &[Filter], f: &mut impl FnMut(&Backend)) {
        for filter in filters {
            if let Filter::RequestMirror(m) = filter {
                f(&m.backend);
            }
        }
    }
    for rule in &route.rules {
        mirrors(&rule.filters, f);
        for b in &rule.backends {
            mirrors(&b.filters, f);
            f(b);
        }
    }
}

fn gateway<'a>(a: &Gateway, b: &'a Gateway, touched: &Touched, d: &mut Delta<'a>) -> Option<()> {
    let Gateway {
        namespace,
        name,
        listeners,
        served_by_header,
    } = a;
    same(namespace, &b.namespace)?;
    same(name, &b.name)?;
    if !touched.may_differ(&b.namespace, &b.name) {
        // Equal by the producer's word; its backends are checked in `Delta::finish`.
        return Some(());
    }
    same(served_by_header, &b.served_by_header)?;
    lockstep(listeners, &b.listeners, |x, y| listener(x, y, d))
}

fn listener<'a>(a: &Listener, b: &'a Listener, d: &mut Delta<'a>) -> Option<()> {
    let Listener {
        name,
        address,
        port,
        protocol,
        hostname,
        tls,
        routes,
    } = a;
    same(name, &b.name)?;
    same(address, &b.address)?;
    same(port, &b.port)?;
    same(protocol, &b.protocol)?;
    same(hostname, &b.hostname)?;
    same(tls, &b.tls)?;
    lockstep(routes, &b.routes, |x, y| {
        if Arc::ptr_eq(x, y) {
            // Shared: equal (its backends are checked in `Delta::finish`).
            return Some(());
        }
        route(x, y, d)
    })
}

fn route<'a>(a: &Route, b: &'a Route, d: &mut Delta<'a>) -> Option<()> {
    let Route {
        namespace,
        name,
        kind,
        created_at,
        hostnames,
        rules,
    } = a;
    same(namespace, &b.namespace)?;
    same(name, &b.name)?;
    same(kind, &b.kind)?;
    same(created_at, &b.created_at)?;
    same(hostnames, &b.hostnames)?;
    lockstep(rules, &b.rules, |x, y| rule(x, y, d))
}

fn rule<'a>(a: &Rule, b: &'a Rule, d: &mut Delta<'a>) -> Option<()> {
    let Rule {
        name,
        matches,
        filters,
        backends,
        timeouts,
        retry,
        session_persistence,
    } = a;
    same(name, &b.name)?;
    same(matches, &b.matches)?;
    same(timeouts, &b.timeouts)?;
    same(retry, &b.retry)?;
    same(session_persistence, &b.session_persistence)?;
    lockstep(filters, &b.filters, |x, y| filter(x, y, d))?;
    lockstep(backends, &b.backends, |x, y| backend(x, y, d))
}

fn filter<'a>(a: &Filter, b: &'a Filter, d: &mut Delta<'a>) -> Option<()> {
    match (a, b) {
        (Filter::RequestMirror(x), Filter::RequestMirror(y)) => {
            same(&x.percent, &y.percent)?;
            backend(&x.backend, &y.backend, d)
        }
        _ => same(a, b),
    }
}

fn backend<'a>(a: &Backend, b: &'a Backend, d: &mut Delta<'a>) -> Option<()> {
    let Backend {
        name,
        weight,
        filters,
        target,
        tls,
    } = a;
    same(name, &b.name)?;
    same(tls, &b.tls)?;
    same(weight, &b.weight)?;
    lockstep(filters, &b.filters, |x, y| filter(x, y, d))?;
    match (target, &b.target) {
        (
            BackendTarget::Endpoints {
                protocol: p1,
                endpoints: e1,
                failover: f1,
            },
            BackendTarget::Endpoints {
                protocol: p2,
                endpoints: e2,
                failover: f2,
            },
        ) => {
            same(f1, f2)?;
            d.record(&b.name, *p2, e2, p1 != p2 || e1 != e2)
        }
        (BackendTarget::Invalid { reason: r1 }, BackendTarget::Invalid { reason: r2 }) => {
            same(r1, r2)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn ep(port: u16) -> serde_json::Value {
        json!({"address": "10.0.0.1", "port": port})
    }

    fn snap(
        generation: u64,
        a_eps: Vec<serde_json::Value>,
        mirror_eps: Vec<serde_json::Value>,
    ) -> Snapshot {
        serde_json::from_value(json!({
            "schema": meridian_model::snapshot::SNAPSHOT_SCHEMA,
            "generation": generation,
            "gateways": [{"namespace": "ns", "name": "gw", "listeners": [{
                "name": "http", "address": "127.0.0.1", "port": 8080, "protocol": "HTTP",
                "routes": [{"namespace": "ns", "name": "r", "rules": [
                    {"filters": [{"type": "requestMirror", "backend":
                        {"name": "ns/m:80", "target": {"type": "endpoints", "endpoints": mirror_eps}}}],
                     "backends": [{"name": "ns/a:80", "target": {"type": "endpoints", "endpoints": a_eps.clone()}}]},
                    {"backends": [
                        {"name": "ns/a:80", "target": {"type": "endpoints", "endpoints": a_eps}},
                        {"name": "ns/bad:80", "target": {"type": "invalid", "reason": "BackendNotFound"}}]}
                ]}]
            }]}]
        }))
        .unwrap()
    }

    #[test]
    fn equal_contents_give_an_empty_delta_whatever_the_generation() {
        let a = snap(1, vec![ep(1)], vec![ep(9)]);
        let b = snap(7, vec![ep(1)], vec![ep(9)]);
        assert_eq!(endpoint_delta(&a, &b), Some(vec![]));
    }

    #[test]
    fn endpoint_changes_are_found_and_patching_reproduces_the_new_snapshot() {
        let old = snap(1, vec![ep(1)], vec![ep(9)]);
        let new = snap(2, vec![ep(1), ep(2)], vec![]);
        let delta = endpoint_delta(&old, &new).unwrap();
        let names: Vec<&str> = delta.iter().map(|c| c.backend.as_str()).collect();
        assert_eq!(names, vec!["ns/a:80", "ns/m:80"]);
        let mut patched = old.clone();
        assert!(patch_endpoints(&mut patched, &delta));
        patched.generation = new.generation;
        assert_eq!(patched, new);
        // Patching again changes nothing.
        assert!(!patch_endpoints(&mut patched, &delta));
    }

    #[test]
    fn any_other_change_needs_a_full_snapshot() {
        let old = snap(1, vec![ep(1)], vec![]);
        let mut new = old.clone();
        new.gateways[0].listeners[0].port = 8081;
        assert_eq!(endpoint_delta(&old, &new), None);

        let mut new = old.clone();
        Arc::make_mut(&mut new.gateways[0].listeners[0].routes[0]).rules[1].backends[0].weight = 5;
        assert_eq!(endpoint_delta(&old, &new), None);

        let mut new = old.clone();
        Arc::make_mut(&mut new.gateways[0].listeners[0].routes[0])
            .rules
            .pop();
        assert_eq!(endpoint_delta(&old, &new), None);

        let mut new = old.clone();
        Arc::make_mut(&mut new.gateways[0].listeners[0].routes[0]).rules[1].backends[1].target =
            BackendTarget::Invalid {
                reason: "RefNotPermitted".into(),
            };
        assert_eq!(endpoint_delta(&old, &new), None);
    }

    #[test]
    fn one_name_with_two_endpoint_lists_is_not_a_delta() {
        let old = snap(1, vec![ep(1)], vec![]);
        let mut new = old.clone();
        // Only the first occurrence of ns/a:80 changes: a by-name patch cannot express that.
        if let BackendTarget::Endpoints { endpoints, .. } =
            &mut Arc::make_mut(&mut new.gateways[0].listeners[0].routes[0]).rules[0].backends[0]
                .target
        {
            endpoints.push(serde_json::from_value(ep(3)).unwrap());
        }
        assert_eq!(endpoint_delta(&old, &new), None);
    }

    /// With a hint, shared routes and untouched Gateways are not compared, but a delta is
    /// applied by name everywhere: a backend of a changed name there must already have the new
    /// list.
    #[test]
    fn a_hinted_delta_still_checks_every_backend_of_a_changed_name() {
        let mut old = snap(1, vec![ep(1)], vec![]);
        // A second Gateway whose route shares backend ns/a:80.
        let mut other = old.gateways[0].clone();
        other.name = "other".into();
        old.gateways.push(other);
        let mut touched = Touched::nothing();
        touched.gateway("ns", "gw");

        // ns/a:80 changes in `gw` only: `other` would get the new list too. Not a delta.
        let mut new = old.clone();
        new.gateways[0]
            .set_endpoints(|n| (n == "ns/a:80").then_some((BackendProtocol::Http1, &[][..])));
        assert_eq!(endpoint_delta(&old, &new), None);
        assert_eq!(endpoint_delta_since(&old, &new, &touched), None);

        // Everywhere (as the controller's endpoint refresh does): a delta, hinted or not, and
        // the routes that did not change stay shared.
        let mut new = old.clone();
        new.set_endpoints(|n| (n == "ns/a:80").then_some((BackendProtocol::Http1, &[][..])));
        let mut all = Touched::nothing();
        all.gateway("ns", "gw");
        all.gateway("ns", "other");
        let want = endpoint_delta(&old, &new).unwrap();
        assert_eq!(want.len(), 1);
        assert_eq!(endpoint_delta_since(&old, &new, &all), Some(want));

        // Nothing changed: an empty delta without looking inside.
        let same = old.clone();
        assert_eq!(
            endpoint_delta_since(&old, &same, &Touched::nothing()),
            Some(vec![])
        );
        assert!(Arc::ptr_eq(
            &same.gateways[1].listeners[0].routes[0],
            &old.gateways[1].listeners[0].routes[0]
        ));
    }

    #[test]
    fn stream_messages_round_trip_in_their_documented_shape() {
        let m = Message::Endpoints(EndpointsUpdate {
            generation: 3,
            base: 2,
            changes: vec![EndpointChange {
                backend: "ns/a:80".into(),
                protocol: BackendProtocol::H2c,
                endpoints: vec![],
            }],
        });
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"endpoints":{"generation":3,"base":2,"changes":[{"backend":"ns/a:80","protocol":"h2c","endpoints":[]}]}}"#
        );
        assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), m);
        assert_eq!(serde_json::to_string(&Message::Ping).unwrap(), r#""ping""#);
        let s = snap(4, vec![], vec![]);
        let out = serde_json::to_string(&Outgoing::Snapshot(&s)).unwrap();
        assert_eq!(
            serde_json::from_str::<Message>(&out).unwrap(),
            Message::Snapshot(Box::new(s))
        );
        let ack = Ack {
            proxy_id: "p".into(),
            generation: 4,
            result: AckResult::Refused {
                reason: "no".into(),
            },
            resync: false,
        };
        assert_eq!(
            serde_json::to_value(&ack).unwrap(),
            json!({"proxyId": "p", "generation": 4, "result": {"status": "refused", "reason": "no"}})
        );
    }

    #[test]
    fn hellos_name_their_gateways_by_namespace_and_name() {
        let hello = Hello {
            proxy_id: "p".into(),
            cluster: "east".into(),
            region: String::new(),
            zone: String::new(),
            gateways: Some(vec![GatewayRef::new("ns", "gw")]),
            address: None,
            east_west: None,
        };
        let text = serde_json::to_string(&hello).unwrap();
        assert_eq!(
            text,
            r#"{"proxyId":"p","cluster":"east","region":"","zone":"","gateways":[{"namespace":"ns","name":"gw"}]}"#
        );
        assert_eq!(serde_json::from_str::<Hello>(&text).unwrap(), hello);
    }

    #[test]
    fn capabilities_travel_beside_the_hello_and_old_peers_ignore_them() {
        let hello = Hello {
            proxy_id: "p".into(),
            cluster: "east".into(),
            region: String::new(),
            zone: String::new(),
            gateways: None,
            address: None,
            east_west: None,
        };
        // An old client's hello: no capabilities, no patches.
        let old = serde_json::to_string(&hello).unwrap();
        let read: StreamHello = serde_json::from_str(&old).unwrap();
        assert_eq!(read.hello, hello);
        assert!(!read.patches());
        // A new client's hello, as an old server reads it: the same Hello.
        let new = serde_json::to_string(&StreamHello {
            hello: hello.clone(),
            capabilities: vec![CAPABILITY_PATCH.into(), "later".into()],
        })
        .unwrap();
        assert_eq!(
            new,
            r#"{"proxyId":"p","cluster":"east","region":"","zone":"","capabilities":["patch","later"]}"#
        );
        assert_eq!(serde_json::from_str::<Hello>(&new).unwrap(), hello);
        assert!(serde_json::from_str::<StreamHello>(&new).unwrap().patches());
        // An ack asking for a resync, as an old server reads it: a plain refusal.
        let ack: Ack = serde_json::from_str(
            r#"{"proxyId":"p","generation":3,"resync":true,"result":{"status":"refused","reason":"x"}}"#,
        )
        .unwrap();
        assert!(ack.resync);
        assert!(
            !serde_json::to_string(&Ack {
                resync: false,
                ..ack
            })
            .unwrap()
            .contains("resync")
        );
    }

    fn health() -> ProxyHealth {
        ProxyHealth {
            nearest_regions: vec![NearestRegion {
                region: "us-west".into(),
                rtt_ms: Some(31.5),
            }],
            ejected: vec![EjectedEndpoint {
                backend: "ns/a:80".into(),
                address: "10.0.0.1:8080".into(),
                since: "2026-12-06T12:01:00Z".into(),
                reason: EjectionReason::Probe,
                failures: 5,
            }],
            truncated: false,
        }
    }

    #[test]
    fn round_trip_noise_is_the_same_view_and_a_new_order_or_ejection_is_not() {
        let base = health();
        let mut noisy = base.clone();
        noisy.nearest_regions[0].rtt_ms = Some(31.9);
        assert!(base.same_view(&noisy), "0.4 ms of drift is noise");
        let mut slower = base.clone();
        slower.nearest_regions[0].rtt_ms = Some(45.0);
        assert!(!base.same_view(&slower), "14 ms (44 %) slower is news");
        let mut unmeasured = base.clone();
        unmeasured.nearest_regions[0].rtt_ms = None;
        assert!(!base.same_view(&unmeasured));
        let mut reordered = base.clone();
        reordered.nearest_regions.push(NearestRegion {
            region: "eu-west".into(),
            rtt_ms: Some(80.0),
        });
        assert!(!base.same_view(&reordered));
        let mut healed = base.clone();
        healed.ejected.clear();
        assert!(!base.same_view(&healed));
        // Small round trips: a whole millisecond is still noise on loopback.
        let mut fast = base.clone();
        fast.nearest_regions[0].rtt_ms = Some(0.2);
        let mut fast2 = fast.clone();
        fast2.nearest_regions[0].rtt_ms = Some(1.1);
        assert!(fast.same_view(&fast2));
    }

    #[test]
    fn health_views_round_trip_and_old_peers_on_either_side_still_talk() {
        let report = TrafficReport {
            proxy_id: "p".into(),
            gateways: vec![],
            health: Some(health()),
        };
        let text = serde_json::to_string(&report).unwrap();
        assert_eq!(
            text,
            r#"{"proxyId":"p","gateways":[],"health":{"nearestRegions":[{"region":"us-west","rttMs":31.5}],"ejected":[{"backend":"ns/a:80","address":"10.0.0.1:8080","since":"2026-12-06T12:01:00Z","reason":"probe","failures":5}]}}"#
        );
        assert_eq!(
            serde_json::from_str::<TrafficReport>(&text).unwrap(),
            report
        );

        // An older proxy's report: no health, and none is made up.
        let old: TrafficReport = serde_json::from_str(r#"{"proxyId":"p","gateways":[]}"#).unwrap();
        assert_eq!(old.health, None);
        assert!(
            !serde_json::to_string(&old).unwrap().contains("health"),
            "nothing sent without a view"
        );

        // An older server reads a new report as the struct it knows: the same counters.
        #[derive(Deserialize, PartialEq, Debug)]
        #[serde(rename_all = "camelCase")]
        struct OldReport {
            proxy_id: String,
            #[serde(default)]
            gateways: Vec<GatewayTrafficReport>,
        }
        let read: OldReport = serde_json::from_str(&text).unwrap();
        assert_eq!((read.proxy_id.as_str(), read.gateways.len()), ("p", 0));

        // A newer proxy's unknown reason does not cost the report.
        let newer = text.replace(r#""reason":"probe""#, r#""reason":"outlier2""#);
        let read: TrafficReport = serde_json::from_str(&newer).unwrap();
        assert_eq!(
            read.health.unwrap().ejected[0].reason,
            EjectionReason::Other
        );
        // Truncation is said when it happened.
        let mut cut = health();
        cut.truncated = true;
        assert!(
            serde_json::to_string(&cut)
                .unwrap()
                .ends_with(r#""truncated":true}"#)
        );
    }

    #[test]
    fn peek_reads_the_generation_of_an_undecodable_snapshot() {
        let line = r#"{"snapshot":{"schema":"x","generation":12,"gateways":[{"bogus":1}]}}"#;
        assert!(serde_json::from_str::<Message>(line).is_err());
        assert!(matches!(
            serde_json::from_str::<Peek>(line).unwrap(),
            Peek::Snapshot { generation: 12 }
        ));
    }
}
