//! `meridian status` and `meridian explain`: what the controller knows, as read-only JSON on its
//! admin listener, and the commands that fetch and render it.
//!
//! ```text
//!  meridian status / explain (cli.rs) ── GET /v1/status, /v1/explain?… ──► admin listener
//!    (URL + token from --controller/--token-file,                        (admin.rs: bearer token,
//!     or DIR/admin.json that `meridian up` writes)                         bounded query, 4xx)
//!                                                                              │ Msg::Inspect
//!                                                                              ▼
//!                                      reconcile loop: answer() reads the World, the published
//!                                      snapshots, member reachability, the data plane's proxies
//!                                                                              │
//!              status: StatusView ◄────────────────────────────────────────────┤
//!              explain: the snapshots + proxy localities ─► meridian_model::explain (off the loop)
//! ```
//!
//! The live view ([`live`]: the web page `/ui` and its Server-Sent Events `/v1/events`) asks the
//! same loop for the same status plus each Gateway's counters and the drills (`Ask::Live`), once
//! per second for all open pages, and only while one is open.
//!
//! The reconcile loop owns the world and never locks it, so the admin listener asks it with a
//! message and waits (bounded) for the answer; the loop only copies what is asked. Explain runs
//! the model's pure [`meridian_model::explain::explain`] on a copy of the cluster's published
//! snapshot: the proxies' own router and locality choice, so the answer cannot drift from what
//! they do.
//!
//! What the views hold:
//!
//! - clusters: region, zones, whether the initial sync is done, reachable (the supervisor's last
//!   probe), last contact and the last probe's latency (one discovery round), since when it is
//!   unreachable and when its endpoints are withdrawn;
//! - proxies (from the distribution server): locality, address, connected since, the generation
//!   acknowledged against the cluster's current one, a refusal;
//! - Gateways of Meridian's GatewayClasses per cluster: Programmed, addresses, listeners with
//!   attached routes (from the Gateway's status as the API server has it), the generation of
//!   the snapshot serving it and the requests its proxies counted per serving region;
//! - per backend of each cluster's snapshot: endpoints per region and zone (ready, drained) and
//!   the tier each proxy locality uses now ([`meridian_model::explain::backends`]).
//!
//! Health is two views side by side. The controller's: EndpointSlice readiness, drills' drains
//! and member-cluster reachability. The proxies': each connected proxy reports, with its
//! traffic counters, its measured nearest-first region order and the endpoints it ejected
//! (health checks or failed requests; `ProxyState::health` of the distribution server). Status
//! shows them per proxy and per backend; explain and the tier in use treat an endpoint the
//! locality's proxies ejected as ejected and use their measured order ([`vantages`]).

pub mod admin;
pub mod cli;
pub mod live;

use std::collections::BTreeMap;
use std::sync::Arc;

use gateway_api::gateways::Gateway;
use k8s_openapi::jiff::Timestamp;
use meridian_model::Snapshot;
use meridian_model::explain::{
    BackendSummary, Ejection, Explanation, MeasuredOrder, RegionRttView, Vantage,
};
use meridian_model::locality::Locality;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::dataplane::DataPlane;
use crate::metrics::Metrics;
use crate::translate::{ClusterGatewayRef, UnreachableCluster};
use crate::world::{ClusterState, World};

/// `GET /v1/status`: every member cluster, proxy, Gateway and backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    /// When the controller answered (RFC 3339).
    pub generated_at: String,
    /// Member clusters.
    pub clusters: Vec<ClusterView>,
    /// Proxies known to the distribution server (connected, or gone less than ten minutes).
    pub proxies: Vec<ProxyView>,
    /// Gateways of Meridian's GatewayClasses, per cluster.
    pub gateways: Vec<GatewayView>,
    /// Backends of each cluster's snapshot.
    pub backends: Vec<ClusterBackends>,
}

/// One member cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    /// Name.
    pub name: String,
    /// Region.
    pub region: String,
    /// Zones.
    pub zones: Vec<String>,
    /// Network (`""`: the default one).
    pub network: String,
    /// Its initial sync is done.
    pub synced: bool,
    /// The last probe of its API succeeded.
    pub reachable: bool,
    /// Last successful probe (RFC 3339), if any.
    pub last_contact: Option<String>,
    /// Seconds since then (since the controller started when never reached).
    pub seconds_since_contact: Option<f64>,
    /// Duration of the last successful probe (one discovery round trip per API group), ms.
    pub api_latency_ms: Option<f64>,
    /// First failed probe of the current outage (RFC 3339).
    pub unreachable_since: Option<String>,
    /// When its last-known endpoints stop being served (RFC 3339), while unreachable.
    pub endpoints_withdrawn_at: Option<String>,
}

/// One proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyView {
    /// Proxy id.
    pub id: String,
    /// Member cluster.
    pub cluster: String,
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Advertised address.
    pub address: Option<String>,
    /// Its stream is open.
    pub connected: bool,
    /// When its current (or last) stream opened (RFC 3339).
    pub connected_since: String,
    /// When it last said anything (RFC 3339).
    pub last_seen: String,
    /// Highest generation it acknowledged as applied.
    pub acked_generation: Option<u64>,
    /// The latest generation published for its cluster.
    pub current_generation: Option<u64>,
    /// Its refusal of a newer generation, if any.
    pub refused: Option<RefusalView>,
    /// Gateways it serves (`None`: all of its cluster's).
    pub gateways: Option<Vec<String>>,
    /// Whether it reported its own health view (newer proxies, while connected).
    #[serde(default)]
    pub health_reported: bool,
    /// Other regions nearest first as it measures them, with round trips (empty: not measured
    /// or not reported).
    #[serde(default)]
    pub nearest_regions: Vec<RegionRttView>,
    /// How many endpoints it ejected right now (`None`: no health view reported).
    #[serde(default)]
    pub ejected_endpoints: Option<usize>,
    /// It ejected more endpoints than it could report (the count is a lower bound).
    #[serde(default)]
    pub ejected_truncated: bool,
    /// The endpoints it ejected (shown per backend in [`StatusView::backends`]; not repeated
    /// here).
    #[serde(skip)]
    pub ejected: Vec<meridian_distribution::EjectedEndpoint>,
}

impl ProxyView {
    /// Connected and holding the cluster's latest generation.
    pub fn up_to_date(&self) -> bool {
        self.connected
            && self.acked_generation.is_some()
            && self.acked_generation >= self.current_generation
    }
}

impl ProxyView {
    /// The view of a proxy the distribution server knows.
    pub fn from_state(
        p: meridian_distribution::server::ProxyState,
        server: &meridian_distribution::DistributionServer,
    ) -> Self {
        let time = |t: std::time::SystemTime| {
            Timestamp::try_from(t).map_or_else(|_| String::new(), |t| t.to_string())
        };
        ProxyView {
            current_generation: server.latest_generation(&p.cluster),
            id: p.proxy_id,
            cluster: p.cluster,
            region: p.region,
            zone: p.zone,
            address: p.address,
            connected: p.connected,
            connected_since: time(p.connected_since),
            last_seen: time(p.last_seen),
            acked_generation: p.acked_generation,
            refused: p.last_refusal.map(|r| RefusalView {
                generation: r.generation,
                reason: r.reason,
            }),
            gateways: p.gateways.map(|g| {
                g.iter()
                    .map(|g| format!("{}/{}", g.namespace, g.name))
                    .collect()
            }),
            health_reported: p.health.is_some(),
            nearest_regions: p
                .health
                .iter()
                .flat_map(|h| &h.nearest_regions)
                .map(|r| RegionRttView {
                    region: r.region.clone(),
                    rtt_ms: r.rtt_ms,
                })
                .collect(),
            ejected_endpoints: p.health.as_ref().map(|h| h.ejected.len()),
            ejected_truncated: p.health.as_ref().is_some_and(|h| h.truncated),
            ejected: p.health.map(|h| h.ejected).unwrap_or_default(),
        }
    }
}

/// A proxy's refusal of a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusalView {
    /// Generation refused.
    pub generation: u64,
    /// The proxy's reason.
    pub reason: String,
}

/// One Gateway in one cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayView {
    /// Member cluster.
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// GatewayClass.
    pub class: String,
    /// The `Programmed` condition as written in its status.
    pub programmed: Option<ConditionView>,
    /// `status.addresses`.
    pub addresses: Vec<String>,
    /// Listeners with their attached routes.
    pub listeners: Vec<ListenerStatusView>,
    /// Generation of the published snapshot that serves it (`None`: not in the snapshot).
    pub snapshot_generation: Option<u64>,
    /// Requests its proxies counted since they started.
    pub requests: Option<u64>,
    /// Those requests by the region that served them.
    pub requests_by_region: BTreeMap<String, u64>,
}

/// A status condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Reason.
    pub reason: String,
    /// Message.
    pub message: String,
}

/// One listener of a Gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatusView {
    /// Name.
    pub name: String,
    /// Port.
    pub port: i32,
    /// Protocol.
    pub protocol: String,
    /// Hostname, if any.
    pub hostname: Option<String>,
    /// `status.listeners[].attachedRoutes` (`None`: no status yet).
    pub attached_routes: Option<i32>,
}

/// The backends of one cluster's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterBackends {
    /// Member cluster.
    pub cluster: String,
    /// Its backends.
    pub backends: Vec<BackendSummary>,
}

/// `GET /v1/explain`: the request explained in each cluster serving the Gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplainView {
    /// The locality treated as failed, with what it names.
    pub failed: Option<FailedView>,
    /// Per cluster serving the Gateway.
    pub clusters: Vec<ClusterExplanation>,
}

/// What a `--fail` name names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedView {
    /// The name.
    pub name: String,
    /// `cluster`, `region` and/or `zone`.
    pub kinds: Vec<String>,
}

/// The explanation in one cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterExplanation {
    /// Member cluster.
    pub cluster: String,
    /// Its region.
    pub region: String,
    /// What its proxies do with the request.
    pub explanation: Explanation,
}

/// What the admin listener asks the reconcile loop.
#[derive(Debug)]
pub(crate) enum Ask {
    /// Everything of [`StatusView`].
    Status,
    /// The published snapshots (of one cluster, or of every one) with their proxies.
    Snapshots {
        /// `None`: every active cluster.
        cluster: Option<String>,
    },
    /// Everything of [`live::LiveData`]: the status, each Gateway's counters and the drills.
    Live,
}

/// The loop's answer.
pub(crate) enum Answer {
    Status(Box<StatusView>),
    Snapshots(Vec<ClusterSnapshot>),
    Live(Box<live::LiveData>),
}

/// A cluster's published snapshot and the localities of its proxies with what they report.
pub(crate) struct ClusterSnapshot {
    pub cluster: String,
    pub region: String,
    /// Shared with the loop's published map (no copy on the loop).
    pub snapshot: Arc<Snapshot>,
    pub proxies: Vec<Vantage>,
}

/// A question for the reconcile loop ([`crate::watch::Msg::Inspect`]).
pub(crate) struct InspectAsk {
    pub ask: Ask,
    pub reply: oneshot::Sender<Answer>,
}

/// What the reconcile loop lends [`answer`].
pub(crate) struct LoopView<'a> {
    pub world: &'a World,
    pub published: &'a BTreeMap<String, Arc<Snapshot>>,
    /// Active member clusters with whether their initial sync is done.
    pub members: Vec<(&'a str, bool)>,
    pub unreachable: &'a BTreeMap<String, UnreachableCluster>,
    pub data_plane: &'a dyn DataPlane,
    pub controller_name: &'a str,
    pub metrics: &'a Metrics,
}

/// Answers `ask` from the loop's state (called on the loop: copies only what is asked).
pub(crate) fn answer(v: &LoopView<'_>, ask: Ask) -> Answer {
    let proxies = v.data_plane.proxies();
    match ask {
        Ask::Status => Answer::Status(Box::new(status(v, proxies))),
        Ask::Live => Answer::Live(Box::new(live::data(v, status(v, proxies)))),
        Ask::Snapshots { cluster } => Answer::Snapshots(
            v.members
                .iter()
                .filter(|(name, _)| cluster.as_deref().is_none_or(|c| c == *name))
                .filter_map(|(name, _)| {
                    let snapshot = v.published.get(*name)?.clone();
                    let region = v.world.cluster(name)?.region.clone();
                    Some(ClusterSnapshot {
                        proxies: vantages(name, &region, &proxies),
                        cluster: name.to_string(),
                        region,
                        snapshot,
                    })
                })
                .collect(),
        ),
    }
}

/// The distinct localities of the connected proxies of `cluster`, each with what its proxies
/// report: the measured region order of the first of them (by id) that measured one, and every
/// endpoint any of them ejected, oldest first. Without any proxy, the cluster's region with an
/// unknown zone (what a proxy there would see, zone preference aside) and no reports.
pub(crate) fn vantages(cluster: &str, region: &str, proxies: &[ProxyView]) -> Vec<Vantage> {
    let mut out: Vec<Vantage> = Vec::new();
    let mut connected: Vec<&ProxyView> = proxies
        .iter()
        .filter(|p| p.connected && p.cluster == cluster)
        .collect();
    connected.sort_by(|a, b| a.id.cmp(&b.id));
    for p in connected {
        let l = Locality {
            cluster: p.cluster.clone(),
            region: p.region.clone(),
            zone: p.zone.clone(),
        };
        let at = match out.iter().position(|v| v.locality == l) {
            Some(i) => i,
            None => {
                out.push(Vantage::from(l));
                out.len() - 1
            }
        };
        let v = &mut out[at];
        if v.measured.is_none() && !p.nearest_regions.is_empty() {
            v.measured = Some(MeasuredOrder {
                proxy: p.id.clone(),
                regions: p.nearest_regions.clone(),
            });
        }
        v.ejected.extend(p.ejected.iter().map(|e| Ejection {
            backend: e.backend.clone(),
            address: e.address.clone(),
            proxy: p.id.clone(),
            reason: e.reason.as_str().to_string(),
            since: e.since.clone(),
            failures: e.failures,
        }));
    }
    for v in &mut out {
        // Oldest first (the last-resort order); the server checked every time parses.
        v.ejected.sort_by_cached_key(|e| {
            (
                e.since.parse::<Timestamp>().ok(),
                e.backend.clone(),
                e.address.clone(),
                e.proxy.clone(),
            )
        });
    }
    if out.is_empty() {
        out.push(Vantage::from(Locality {
            cluster: cluster.to_string(),
            region: region.to_string(),
            zone: String::new(),
        }));
    }
    out.sort_by(|a, b| {
        (&a.locality.region, &a.locality.zone).cmp(&(&b.locality.region, &b.locality.zone))
    });
    out
}

fn status(v: &LoopView<'_>, proxies: Vec<ProxyView>) -> StatusView {
    let now = Timestamp::now();
    let mut clusters = Vec::new();
    let mut gateways = Vec::new();
    let mut backends = Vec::new();
    for &(name, synced) in &v.members {
        let Some(state) = v.world.cluster(name) else {
            continue;
        };
        clusters.push(cluster_view(v, name, state, synced, now));
        let published = v.published.get(name).map(|s| &**s);
        gateways.extend(gateway_views(v, name, state, published));
        if let Some(s) = published {
            backends.push(ClusterBackends {
                cluster: name.to_string(),
                backends: meridian_model::explain::backends_seen(
                    s,
                    &vantages(name, &state.region, &proxies),
                ),
            });
        }
    }
    StatusView {
        generated_at: now.to_string(),
        clusters,
        proxies,
        gateways,
        backends,
    }
}

fn cluster_view(
    v: &LoopView<'_>,
    name: &str,
    state: &ClusterState,
    synced: bool,
    now: Timestamp,
) -> ClusterView {
    let health = v.metrics.member_health(name);
    let unreachable = v.unreachable.get(name);
    let since_contact = health.as_ref().and_then(|h| h.since_contact);
    ClusterView {
        name: name.to_string(),
        region: state.region.clone(),
        zones: state.zones.clone(),
        network: state.network.clone(),
        synced,
        // Unreachable per the loop's record (what translation acts on); a cluster never
        // reached is not reachable either.
        reachable: unreachable.is_none() && health.as_ref().is_some_and(|h| h.contacted),
        last_contact: since_contact
            .filter(|_| health.as_ref().is_some_and(|h| h.contacted))
            .and_then(|d| now.checked_sub(d).ok())
            .map(|t| t.to_string()),
        seconds_since_contact: since_contact.map(|d| d.as_secs_f64()),
        api_latency_ms: health
            .and_then(|h| h.latency)
            .map(|d| d.as_secs_f64() * 1000.0),
        unreachable_since: unreachable.map(|u| u.since.to_string()),
        endpoints_withdrawn_at: unreachable.map(|u| u.grace_ends.to_string()),
    }
}

fn gateway_views(
    v: &LoopView<'_>,
    cluster: &str,
    state: &ClusterState,
    published: Option<&Snapshot>,
) -> Vec<GatewayView> {
    let ours = |class: &str| {
        state
            .gateway_classes
            .get(class)
            .is_some_and(|c| c.spec.controller_name == v.controller_name)
    };
    state
        .gateways()
        .filter(|(_, gw)| ours(&gw.spec.gateway_class_name))
        .map(|(key, gw)| {
            let in_snapshot = published.filter(|s| {
                s.gateways
                    .iter()
                    .any(|g| g.namespace == key.namespace && g.name == key.name)
            });
            let traffic = v.data_plane.traffic(&ClusterGatewayRef::new(
                cluster.to_string(),
                key.namespace.clone(),
                key.name.clone(),
            ));
            GatewayView {
                cluster: cluster.to_string(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                class: gw.spec.gateway_class_name.clone(),
                programmed: programmed(gw),
                addresses: gw
                    .status
                    .as_ref()
                    .and_then(|s| s.addresses.as_ref())
                    .map(|a| a.iter().map(|a| a.value.clone()).collect())
                    .unwrap_or_default(),
                listeners: listeners(gw),
                snapshot_generation: in_snapshot.map(|s| s.generation),
                requests: traffic.as_ref().map(|t| t.requests),
                requests_by_region: traffic.map(|t| t.by_region).unwrap_or_default(),
            }
        })
        .collect()
}

fn programmed(gw: &Gateway) -> Option<ConditionView> {
    gw.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Programmed")
        .map(|c| ConditionView {
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
}

fn listeners(gw: &Gateway) -> Vec<ListenerStatusView> {
    let statuses = gw.status.as_ref().and_then(|s| s.listeners.as_ref());
    gw.spec
        .listeners
        .iter()
        .map(|l| ListenerStatusView {
            name: l.name.clone(),
            port: l.port,
            protocol: l.protocol.clone(),
            hostname: l.hostname.clone(),
            attached_routes: statuses
                .and_then(|s| s.iter().find(|s| s.name == l.name))
                .map(|s| s.attached_routes),
        })
        .collect()
}
