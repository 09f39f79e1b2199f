//! Meridian's own CRDs (`meridian.dev/v1alpha1`).
//!
//! [`FailoverPolicy`] is a Gateway API policy attachment (`targetRefs` to ServiceImports,
//! Services or HTTPRoutes in the policy's namespace) that tunes locality failover:
//!
//! ```text
//! spec.failover[from → to…]   ordered regions per source region (after the own zone and region)
//! spec.weights[from, region, percent]   share kept on another region while it is healthy
//! spec.spill.minHealthyPercent          a tier below this share of healthy endpoints spills
//! spec.geoFence.regions                 never leave these regions (503 instead)
//! spec.healthCheck                      active checks (TCP, or HTTP GET of a path)
//! spec.outlierDetection                 consecutive 5xx eject, ejection time backs off
//! spec.retry                            retries of safe requests and the retry budget
//! spec.failback                         hysteresis before traffic returns, then slow start
//! spec.staleEndpointTTL                 how long an unreachable cluster's endpoints stay in use
//! ```
//!
//! Durations are Gateway API duration strings (`500ms`, `1s`, `2m`), parsed by
//! [`parse_duration`]. The controller writes `status.conditions` (`Accepted`) and
//! `status.targets` (which targets the policy applies to, and why not when it does not).
//!
//! [`FailoverDrill`] fails a locality for a while (drain, kill or blackhole), aborts on error
//! or latency guards and rolls back by itself; the controller's `drill` module runs it and
//! writes phase, timeline and traffic figures into its status (see `docs/drills.md`). Its mode
//! is [`DrillMode`], the one drill-mode type of the workspace: the controller runs it and, with
//! this crate's `clap` feature, `meridian drill --mode` parses it.
//!
//! To add another kind: define it here with `#[derive(CustomResource)]` (`group =
//! "meridian.dev"`, `version = "v1alpha1"`), push `Kind::crd()` in [`crds`] and run
//! `UPDATE_CRDS=1 cargo test -p meridian-crds` to write its YAML next to the others.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
pub use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{ListType, set_list_type, strip_nulls};

/// API group of Meridian's own kinds.
pub const GROUP: &str = "meridian.dev";
/// API version of Meridian's own kinds.
pub const VERSION: &str = "v1alpha1";

/// Condition types and reasons on [`FailoverPolicyStatus::conditions`].
pub mod condition {
    /// The policy is valid and attached to at least one target.
    pub const ACCEPTED: &str = "Accepted";
    /// Reason: accepted.
    pub const REASON_ACCEPTED: &str = "Accepted";
    /// Reason: a field is invalid (message says which).
    pub const REASON_INVALID: &str = "Invalid";
    /// Reason: no target exists.
    pub const REASON_TARGET_NOT_FOUND: &str = "TargetNotFound";
    /// Reason: an older policy already targets the same object (Gateway API: oldest wins).
    pub const REASON_CONFLICTED: &str = "Conflicted";
}

/// Tunes locality failover for the backends it targets.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "meridian.dev",
    version = "v1alpha1",
    kind = "FailoverPolicy",
    doc = "Locality failover for ServiceImport, Service or HTTPRoute backends: region order, weights, spill, geo-fence, health checks, outlier detection, retries and failback.",
    plural = "failoverpolicies",
    namespaced,
    shortname = "fop",
    category = "meridian",
    status = "FailoverPolicyStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FailoverPolicySpec {
    /// Objects in the policy's namespace whose backends the policy tunes: ServiceImport
    /// (`multicluster.x-k8s.io`), Service (`""`) or HTTPRoute (`gateway.networking.k8s.io`, every
    /// backend of the route).
    pub target_refs: Vec<PolicyTargetRef>,
    /// Ordered failover per source region. A proxy in `from` uses its own zone, its own region,
    /// then `to` in order, then other regions alphabetically (unless geo-fenced).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<RegionFailover>,
    /// Shares of traffic a proxy in `from` sends to another region while that region is
    /// healthy; when it is not, the share follows the failover order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<RegionWeight>,
    /// When a tier counts as unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spill: Option<Spill>,
    /// Regions traffic must never leave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo_fence: Option<GeoFence>,
    /// Active health checks (default: TCP connect every 1s, timeout 500ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection on responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Automatic retries of safe requests on another endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySettings>,
    /// How traffic returns to a recovered region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback: Option<Failback>,
    /// How long the last-known endpoints of a member cluster whose API is unreachable stay in
    /// use for these targets (a Gateway API duration). Default: the controller's
    /// `--endpoint-grace`; only a shorter value has an effect, since the controller withdraws
    /// an unreachable cluster's endpoints after that grace in any case.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "staleEndpointTTL"
    )]
    pub stale_endpoint_ttl: Option<String>,
}

/// A policy target (Gateway API `LocalPolicyTargetReference`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// API group of the target (`multicluster.x-k8s.io`, `""` or `gateway.networking.k8s.io`).
    pub group: String,
    /// Kind: `ServiceImport`, `Service` or `HTTPRoute`.
    pub kind: String,
    /// Name, in the policy's namespace.
    pub name: String,
}

/// Failover order for proxies in one region.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegionFailover {
    /// Source region (where the proxy runs).
    pub from: String,
    /// Regions to use after `from`, in order.
    pub to: Vec<String>,
}

/// A share of traffic kept on another region.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegionWeight {
    /// Source region (where the proxy runs).
    pub from: String,
    /// Target region.
    pub region: String,
    /// Percent of requests, 0–100.
    #[schemars(range(min = 0, max = 100))]
    pub percent: u32,
}

/// Spill rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Spill {
    /// A tier with fewer than this percent of its endpoints healthy counts as unhealthy and its
    /// traffic moves to the next tier. Default 0: only a tier with no healthy endpoint spills.
    #[schemars(range(min = 0, max = 100))]
    pub min_healthy_percent: u32,
}

/// Geo-fence.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GeoFence {
    /// Allowed regions; endpoints elsewhere are never used and requests get 503 when none of
    /// these regions can serve.
    pub regions: Vec<String>,
}

/// Active health checks.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// HTTP check; absent = TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    /// Probe interval (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Probe timeout (default `500ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Consecutive failures that eject a healthy endpoint (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Consecutive successes that re-admit an ejected endpoint (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
}

/// HTTP health check.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpHealthCheck {
    /// Path to GET; 2xx and 3xx are healthy.
    pub path: String,
}

/// Passive outlier detection.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx responses that eject an endpoint (0 or absent = off).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "consecutive5xx"
    )]
    pub consecutive_5xx: Option<u32>,
    /// First ejection time (default `1s`); doubled on each repeated ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// Cap of the backed-off ejection time (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<String>,
}

/// Retries of safe requests (GET, HEAD, OPTIONS, PUT, DELETE with a replayable body).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySettings {
    /// Extra tries per request (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Retries allowed as a percent of requests over 10s, plus 3 per second (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub budget_percent: Option<u32>,
}

/// Failback.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failback {
    /// An ejected endpoint must pass health checks for this long before traffic returns
    /// (default `0s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hysteresis: Option<String>,
    /// After it returns, its share of traffic ramps up linearly over this window (default `0s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<String>,
}

/// Observed state of a FailoverPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverPolicyStatus {
    /// `Accepted`, merged by `type`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// One entry per target ref: whether the policy applies to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<PolicyTargetStatus>,
}

/// Whether the policy applies to one target.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetStatus {
    /// The target.
    pub target_ref: PolicyTargetRef,
    /// Whether the policy is in effect for it.
    pub applied: bool,
    /// Why not (`TargetNotFound`, `Conflicted`, `Invalid`), empty when applied.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Condition types, reasons, phases and timeline entry types of a [`FailoverDrill`].
pub mod drill {
    /// Condition: the drill is valid and may run (`False` while it waits for another drill).
    pub const ACCEPTED: &str = "Accepted";
    /// Condition: the drill has finished (`True` once the phase is terminal).
    pub const COMPLETE: &str = "Complete";
    /// Reason of `Accepted=True`.
    pub const REASON_ACCEPTED: &str = "Accepted";
    /// Reason: a field is invalid, or the scope/target matches nothing (message says which).
    pub const REASON_INVALID: &str = "Invalid";
    /// Reason: the mode needs an actuator this controller does not have.
    pub const REASON_MODE_UNSUPPORTED: &str = "ModeUnsupported";
    /// Reason: the scope names a Gateway or ServiceImport of another namespace and no
    /// ReferenceGrant in that namespace lets FailoverDrills of the drill's namespace refer to it
    /// (message names the namespaces and the grant that would allow it). Also the reason of
    /// `Aborted` when such a grant is removed while the drill runs.
    pub const REASON_REF_NOT_PERMITTED: &str = "RefNotPermitted";
    /// Reason: another drill with an overlapping scope, or of the same namespace, is running,
    /// or the controller's cap of concurrent drills is reached; this one waits (phase
    /// `Pending`).
    pub const REASON_CONFLICTED: &str = "Conflicted";
    /// Reason of `Complete=False` while the drill runs.
    pub const REASON_RUNNING: &str = "Running";

    /// Timeline entry: the drill started (baseline measurement begins).
    pub const STARTED: &str = "Started";
    /// Timeline entry: the target counts as failed (drain acknowledged / actuator returned).
    pub const TARGET_FAILED: &str = "TargetFailed";
    /// Timeline entry: an abort guard tripped.
    pub const GUARD_TRIPPED: &str = "GuardTripped";
    /// Timeline entry: the target is back (drain removed and acknowledged / actuator restored).
    pub const RESTORED: &str = "Restored";
    /// Timeline entry: the drill ran to its end.
    pub const COMPLETED: &str = "Completed";
    /// Timeline entry: the drill was aborted (a guard tripped) and rolled back.
    pub const ABORTED: &str = "Aborted";
    /// Timeline entry: the drill could not run or finish.
    pub const FAILED: &str = "Failed";

    /// Longest `spec.duration` any controller accepts; a controller may cap lower
    /// (`--drill-max-duration`, default [`DEFAULT_MAX_DURATION`]).
    pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(3600);
    /// The controller's default cap of `spec.duration` (`--drill-max-duration`).
    pub const DEFAULT_MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(15 * 60);
    /// Default `spec.duration`.
    pub const DEFAULT_DURATION: std::time::Duration = std::time::Duration::from_secs(30);
    /// Default `spec.guards.window`.
    pub const DEFAULT_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);
    /// Longest `spec.guards.window` accepted.
    pub const MAX_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
    /// Default `spec.guards.minRequests`.
    pub const DEFAULT_MIN_REQUESTS: u64 = 20;
}

/// A game day in one resource: fail a locality (cluster, region or zone) for a while, watch the
/// traffic fail over, roll back automatically (at the end, when a guard trips, when the drill is
/// deleted, or when the controller stops), and keep the figures in `status`.
///
/// ```text
/// Pending ─► Running: Started ─► TargetFailed ─(duration | guard trips)─► Restored ─► Succeeded
///                                                  └─ GuardTripped ─► Aborted
///            any step that cannot be done ─► Failed (target restored first)
/// ```
///
/// Modes: `drain` (default) tells every proxy to treat the target's endpoints as failed through a
/// drain in the snapshots — no workload is touched; `kill` and `blackhole` need a drill actuator
/// (Meridian-owned backends, e.g. `meridian up`).
///
/// A drill concerns only its own namespace unless granted: an absent scope means every Gateway
/// of the drill's namespace, and naming a Gateway or ServiceImport of another namespace needs a
/// ReferenceGrant there (from `meridian.dev`/`FailoverDrill` of the drill's namespace, to
/// `Gateway` or `ServiceImport`). One drill runs per namespace; drills of different namespaces
/// run at once unless their scopes overlap (up to a controller-wide cap).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "meridian.dev",
    version = "v1alpha1",
    kind = "FailoverDrill",
    doc = "A failover drill: fail a cluster, region or zone for a while (drain, kill or blackhole), abort on error or latency guards, roll back automatically and record what traffic did.",
    plural = "failoverdrills",
    namespaced,
    shortname = "drill",
    category = "meridian",
    status = "FailoverDrillStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.target.region"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FailoverDrillSpec {
    /// The locality to fail: every set field must match an endpoint's locality.
    pub target: DrillTargetSpec,
    /// Which traffic the drill concerns; absent = every Gateway of Meridian's classes in the
    /// drill's namespace and every backend of their routes. Objects of other namespaces need a
    /// ReferenceGrant in their namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<DrillScope>,
    /// `drain` (default): proxies treat the target's endpoints as failed; `kill`: the target's
    /// backends are stopped; `blackhole`: their packets are dropped. `kill` and `blackhole` need
    /// Meridian-owned backends (e.g. `meridian up`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<DrillMode>,
    /// How long the target stays failed (Gateway API duration, default `30s`, at most `1h`;
    /// the controller may cap it lower, by default at `15m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Abort guards, evaluated every second over a sliding window while the target is failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guards: Option<DrillGuards>,
}

/// How a drill fails its target (`spec.mode`). The API server refuses any other spelling (the
/// schema is an enum), so the controller never sees one.
///
/// With the `clap` feature this is also the `--mode` value of `meridian drill` (same spelling).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
// The schema describes the field (kube renders the enum's description in place of the field's).
#[schemars(
    description = "`drain` (default): proxies treat the target's endpoints as failed; `kill`: the target's\nbackends are stopped; `blackhole`: their packets are dropped. `kill` and `blackhole` need\nMeridian-owned backends (e.g. `meridian up`)."
)]
pub enum DrillMode {
    /// Proxies stop sending to the target (the controller's drain in the snapshots); no
    /// workload is touched. Works everywhere.
    #[default]
    Drain,
    /// The target's backends are stopped: connections are refused (needs Meridian-owned
    /// backends, e.g. `meridian up`, through a drill actuator).
    Kill,
    /// Packets to the target's backends are dropped: connections time out (`meridian up` as
    /// root with nft, through a drill actuator).
    Blackhole,
}

impl DrillMode {
    /// Every mode, in the order the schema and the CLI list them.
    pub const ALL: [Self; 3] = [Self::Drain, Self::Kill, Self::Blackhole];

    /// The spelling in `spec.mode` (and of `meridian drill --mode`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drain => "drain",
            Self::Kill => "kill",
            Self::Blackhole => "blackhole",
        }
    }
}

impl std::fmt::Display for DrillMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The locality a drill fails. At least one field must be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1))]
pub struct DrillTargetSpec {
    /// Member cluster name (as the controller knows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Region (`topology.kubernetes.io/region` of the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Zone (of the endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// Which traffic a drill concerns.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillScope {
    /// Only these Gateways (empty = every Gateway of Meridian's classes in the drill's
    /// namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<DrillObjectRef>,
    /// Only backends that are these ServiceImports (empty = every backend).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_imports: Vec<DrillObjectRef>,
}

/// A namespaced object named by a drill.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillObjectRef {
    /// Namespace; defaults to the drill's. Another namespace needs a ReferenceGrant there that
    /// lets FailoverDrills of the drill's namespace refer to the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// Abort guards of a drill.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillGuards {
    /// Abort when failed requests exceed this percent of the requests in the window (0–100; an
    /// integer or a decimal string such as `"0.5"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_percent: Option<IntOrString>,
    /// Abort when the p99 latency in the window exceeds this duration (e.g. `500ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_latency: Option<String>,
    /// The sliding window (default `5s`, at most `10m`). Also the length of the baseline
    /// measured before the target fails and of the period measured after it is restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Windows with fewer requests never trip (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
}

/// Lifecycle phase of a drill.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DrillPhase {
    /// Accepted or waiting for another drill; nothing was done yet.
    #[default]
    Pending,
    /// The drill is measuring, failing the target or restoring it.
    Running,
    /// The drill ran to its end and the target is restored.
    Succeeded,
    /// A guard tripped; the target was restored at once.
    Aborted,
    /// The drill is invalid, unsupported, or could not be carried out (target restored).
    Failed,
}

impl DrillPhase {
    /// Whether the drill is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Aborted | Self::Failed)
    }

    /// The phase as written in `status.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Aborted => "Aborted",
            Self::Failed => "Failed",
        }
    }
}

/// Observed state of a FailoverDrill (written by the controller only).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverDrillStatus {
    /// Where the drill is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DrillPhase>,
    /// `Accepted` and `Complete`, merged by `type`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// `metadata.generation` of the spec the drill runs with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the drill started (RFC 3339, milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the target counted as failed: every connected proxy of the scoped Gateways
    /// acknowledged the drain, or the actuator returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_time: Option<String>,
    /// When the target counted as restored (same rule as `failTime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_time: Option<String>,
    /// When the drill reached a terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// Human-readable state: what the drill waits for, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why a guard aborted the drill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_reason: Option<String>,
    /// What happened, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<DrillTimelineEntry>,
    /// Traffic figures of the scoped Gateways, summed over every member cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figures: Option<DrillFigures>,
}

/// One step of a drill.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillTimelineEntry {
    /// When (RFC 3339, milliseconds).
    pub time: String,
    /// `Started`, `TargetFailed`, `GuardTripped`, `Restored`, `Completed`, `Aborted` or `Failed`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Details.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Traffic of the scoped Gateways: one window before the target failed, while it was failed, and
/// one window after it was restored. Latencies are histogram bucket upper bounds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillFigures {
    /// Requests in the window before the target failed.
    pub requests_before: u64,
    /// Requests while the target was failed.
    pub requests_during: u64,
    /// Requests in the window after the target was restored.
    pub requests_after: u64,
    /// Failed requests before.
    pub failed_before: u64,
    /// Failed requests during.
    pub failed_during: u64,
    /// Failed requests after.
    pub failed_after: u64,
    /// Failed over all requests during, percent (absent without requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_percent_during: Option<f64>,
    /// p99 latency before, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms_before: Option<f64>,
    /// p99 latency during, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms_during: Option<f64>,
    /// p99 latency after, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms_after: Option<f64>,
    /// Share of the requests answered by an endpoint, per region of that endpoint, before
    /// (percent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub share_before: BTreeMap<String, f64>,
    /// Same, while the target was failed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub share_during: BTreeMap<String, f64>,
    /// Same, after the target was restored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub share_after: BTreeMap<String, f64>,
}

/// Why a duration string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: expected a Gateway API duration such as 500ms, 1s, 1m30s")]
pub struct DurationError {
    /// The input.
    pub input: String,
}

/// Parses a Gateway API duration (`1h`, `2m`, `30s`, `500ms`, combined like `1m30s`).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: s.to_string(),
    };
    if s.is_empty() || s.len() > 32 {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(err());
        };
        let part = u32::try_from(n)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .ok_or_else(err)?;
        total = total.checked_add(part).ok_or_else(err)?;
        rest = &rest[len..];
    }
    Ok(total)
}

/// Meridian's own CRDs: FailoverPolicy, FailoverDrill.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut policy = FailoverPolicy::crd();
    set_list_type(&mut policy, "status.conditions", ListType::Map(&["type"]));
    let mut drill = FailoverDrill::crd();
    set_list_type(&mut drill, "status.conditions", ListType::Map(&["type"]));
    set_list_type(&mut drill, "status.timeline", ListType::Atomic);
    let mut crds = vec![policy, drill];
    crds.iter_mut().for_each(|c| strip_nulls(c, &[]));
    crds
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_parse_like_gateway_api() {
        let ok = [
            ("500ms", 500),
            ("1s", 1000),
            ("1m30s", 90_000),
            ("2h", 7_200_000),
            ("0s", 0),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_millis(ms), "{s}");
        }
        for bad in ["", "1", "s", "1x", "-1s", "1.5s", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_drill_manifest_parses_and_round_trips() {
        let text = r#"
apiVersion: meridian.dev/v1alpha1
kind: FailoverDrill
metadata: {name: east-down, namespace: demo}
spec:
  target: {region: us-east}
  scope:
    gateways: [{namespace: demo, name: web}]
    serviceImports: [{name: echo}]
  mode: drain
  duration: 30s
  guards: {maxErrorPercent: "0.5", maxP99Latency: 500ms, window: 5s, minRequests: 20}
"#;
        let d: FailoverDrill = serde_yaml::from_str(text).unwrap();
        assert_eq!(d.spec.target.region.as_deref(), Some("us-east"));
        let scope = d.spec.scope.clone().unwrap();
        assert_eq!(scope.service_imports[0].namespace, None);
        let guards = d.spec.guards.clone().unwrap();
        assert_eq!(
            guards.max_error_percent,
            Some(IntOrString::String("0.5".into()))
        );
        let back: FailoverDrill =
            serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(back, d);

        let status = FailoverDrillStatus {
            phase: Some(DrillPhase::Aborted),
            timeline: vec![DrillTimelineEntry {
                time: "2026-01-01T00:00:00.000Z".into(),
                type_: drill::GUARD_TRIPPED.into(),
                message: "error rate 12% > 1%".into(),
            }],
            ..FailoverDrillStatus::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["phase"], "Aborted");
        assert_eq!(json["timeline"][0]["type"], "GuardTripped");
        assert!(DrillPhase::Aborted.is_terminal() && !DrillPhase::Running.is_terminal());
    }

    #[test]
    fn drill_modes_are_the_schema_enum() {
        // Wire spelling, schema enum and Display agree; absent means drain.
        for m in DrillMode::ALL {
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
            assert_eq!(m.to_string(), m.as_str());
        }
        assert_eq!(DrillMode::default(), DrillMode::Drain);
        let spec = |mode: serde_json::Value| {
            serde_json::from_value::<FailoverDrillSpec>(
                serde_json::json!({"target": {"region": "r"}, "mode": mode}),
            )
        };
        assert_eq!(
            spec(serde_json::json!("kill")).unwrap().mode,
            Some(DrillMode::Kill)
        );
        // Any other spelling does not decode, and the error names it and the allowed ones.
        for bad in ["explode", "Drain", ""] {
            let err = spec(serde_json::json!(bad)).unwrap_err().to_string();
            assert!(
                err.contains(&format!("`{bad}`")) && err.contains("`drain`, `kill`, `blackhole`"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_drill_crd_has_columns_status_and_validation() {
        let crd = crds()
            .into_iter()
            .find(|c| c.spec.names.kind == "FailoverDrill")
            .unwrap();
        let v = &crd.spec.versions[0];
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let cols: Vec<_> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(
            cols,
            [
                ("Target", ".spec.target.region"),
                ("Mode", ".spec.mode"),
                ("Phase", ".status.phase"),
                ("Age", ".metadata.creationTimestamp")
            ]
        );
        let schema = serde_json::to_value(v.schema.as_ref().unwrap()).unwrap();
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(
            spec["mode"]["enum"],
            serde_json::json!(["drain", "kill", "blackhole"])
        );
        assert_eq!(
            spec["mode"]["enum"],
            serde_json::to_value(DrillMode::ALL).unwrap()
        );
        assert_eq!(spec["target"]["minProperties"], 1);
        assert_eq!(
            spec["guards"]["properties"]["maxErrorPercent"]["x-kubernetes-int-or-string"],
            true
        );
        let status = &schema["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
        assert_eq!(status["timeline"]["x-kubernetes-list-type"], "atomic");
    }

    #[test]
    fn the_example_policy_parses() {
        let text = include_str!("../../examples/failover-policy.yaml");
        let p: FailoverPolicy = serde_yaml::from_str(text).unwrap();
        assert_eq!(p.spec.target_refs[0].kind, "ServiceImport");
        assert_eq!(p.spec.failover[0].to, ["us-west", "eu-central"]);
        assert_eq!(p.spec.weights[0].percent, 10);
        assert_eq!(p.spec.outlier_detection.unwrap().consecutive_5xx, Some(5));
        let fb = p.spec.failback.unwrap();
        assert!(parse_duration(fb.slow_start.as_deref().unwrap()).is_ok());
    }
}
