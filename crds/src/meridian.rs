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
//! ```
//!
//! Durations are Gateway API duration strings (`500ms`, `1s`, `2m`), parsed by
//! [`parse_duration`]. The controller writes `status.conditions` (`Accepted`) and
//! `status.targets` (which targets the policy applies to, and why not when it does not).
//!
//! To add another kind: define it here with `#[derive(CustomResource)]` (`group =
//! "meridian.dev"`, `version = "v1alpha1"`), push `Kind::crd()` in [`crds`] and run
//! `UPDATE_CRDS=1 cargo test -p meridian-crds` to write its YAML next to the others.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{ListType, set_list_type};

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

/// Meridian's own CRDs: FailoverPolicy.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut policy = FailoverPolicy::crd();
    set_list_type(&mut policy, "status.conditions", ListType::Map(&["type"]));
    vec![policy]
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
    fn the_example_policy_parses() {
        let text = include_str!("../../examples/failover-policy.yaml");
        let p: FailoverPolicy = serde_yaml::from_str(text).unwrap();
        assert_eq!(p.spec.target_refs[0].kind, "ServiceImport");
        assert_eq!(p.spec.failover[0].to, ["us-west", "eu-west"]);
        assert_eq!(p.spec.weights[0].percent, 10);
        assert_eq!(p.spec.outlier_detection.unwrap().consecutive_5xx, Some(5));
        let fb = p.spec.failback.unwrap();
        assert!(parse_duration(fb.slow_start.as_deref().unwrap()).is_ok());
    }
}
