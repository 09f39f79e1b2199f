//! FailoverPolicy → the model's per-backend failover policy.
//!
//! ```text
//! backendRef (group, kind, ns/name) ─► FailoverPolicies of this cluster in ns whose targetRefs
//!                                      name that object ─► oldest wins (creationTimestamp, then
//!                                      name: Gateway API conflict rule) ─► to_model (durations
//!                                      parsed; an invalid policy is skipped, not half-applied)
//! ```
//!
//! Targets: ServiceImport (`multicluster.x-k8s.io`) and Service (`""`) per backend; an HTTPRoute
//! target (`gateway.networking.k8s.io`) covers every backend of the route that no backend-level
//! policy already covers (the more specific target wins). Policy status is not written yet.

use std::time::Duration;

use meridian_crds::meridian::{self as crd, FailoverPolicy, parse_duration};
use meridian_model::snapshot as model;

use crate::status::GATEWAY_GROUP;
use crate::world::{ClusterState, ObjectKey};

/// Gives every backend of `route`'s rules that has no policy yet the policy targeting the route.
pub(crate) fn attach_route_policy(
    cluster: &ClusterState,
    route: &ObjectKey,
    rules: &mut [model::Rule],
) {
    if cluster.failover_policies.is_empty() {
        return;
    }
    let Some(policy) = policy_for(
        cluster,
        &route.namespace,
        GATEWAY_GROUP,
        "HTTPRoute",
        &route.name,
    ) else {
        return;
    };
    for rule in rules {
        for b in &mut rule.backends {
            if let model::BackendTarget::Endpoints { failover, .. } = &mut b.target
                && failover.is_none()
            {
                *failover = Some(policy.clone());
            }
        }
    }
}

/// The policy that applies to backend object `group/kind namespace/name` in this cluster.
pub(crate) fn policy_for(
    cluster: &ClusterState,
    namespace: &str,
    group: &str,
    kind: &str,
    name: &str,
) -> Option<model::FailoverPolicy> {
    if cluster.failover_policies.is_empty() {
        return None;
    }
    let mut candidates: Vec<(i64, &str, &FailoverPolicy)> = cluster
        .failover_policies
        .iter()
        .filter(|(k, _)| k.namespace == namespace)
        .filter(|(_, p)| {
            p.spec
                .target_refs
                .iter()
                .any(|t| t.group == group && t.kind == kind && t.name == name)
        })
        .map(|(k, p)| {
            let created = p
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(i64::MAX, |t| t.0.as_second());
            (created, k.name.as_str(), p.as_ref())
        })
        .collect();
    candidates.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    candidates.into_iter().find_map(|(_, pname, p)| match to_model(&p.spec) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::debug!(policy = %format!("{namespace}/{pname}"), error = %e, "invalid FailoverPolicy skipped");
            None
        }
    })
}

fn ms(field: &str, v: Option<&str>) -> Result<u64, String> {
    match v {
        None => Ok(0),
        Some(s) => parse_duration(s)
            .map(|d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .map_err(|e| format!("{field}: {e}")),
    }
}

/// Converts a policy spec; `Err` names the first invalid field.
pub(crate) fn to_model(spec: &crd::FailoverPolicySpec) -> Result<model::FailoverPolicy, String> {
    for w in &spec.weights {
        if w.percent > 100 {
            return Err(format!(
                "weights: percent {} for {} → {} is above 100",
                w.percent, w.from, w.region
            ));
        }
    }
    let min_healthy_percent = spec.spill.as_ref().map_or(0, |s| s.min_healthy_percent);
    if min_healthy_percent > 100 {
        return Err(format!(
            "spill.minHealthyPercent {min_healthy_percent} is above 100"
        ));
    }
    let health_check = match &spec.health_check {
        None => None,
        Some(h) => Some(Box::new(model::HealthCheck {
            http_path: h.http.as_ref().map(|x| x.path.clone()),
            interval_ms: ms("healthCheck.interval", h.interval.as_deref())?,
            timeout_ms: ms("healthCheck.timeout", h.timeout.as_deref())?,
            unhealthy_threshold: h.unhealthy_threshold.unwrap_or(0),
            healthy_threshold: h.healthy_threshold.unwrap_or(0),
        })),
    };
    if let Some(path) = health_check.as_ref().and_then(|h| h.http_path.as_ref())
        && (!path.starts_with('/')
            || path
                .chars()
                .any(|c| c.is_ascii_whitespace() || c.is_ascii_control()))
    {
        return Err(format!(
            "healthCheck.http.path {path:?} must be an absolute path without spaces"
        ));
    }
    let outlier_detection = match &spec.outlier_detection {
        None => None,
        Some(o) => Some(Box::new(model::OutlierDetection {
            consecutive_5xx: o.consecutive_5xx.unwrap_or(0),
            base_ejection_ms: ms(
                "outlierDetection.baseEjectionTime",
                o.base_ejection_time.as_deref(),
            )?,
            max_ejection_ms: ms(
                "outlierDetection.maxEjectionTime",
                o.max_ejection_time.as_deref(),
            )?,
        })),
    };
    let failback = match &spec.failback {
        None => None,
        Some(f) => Some(Box::new(model::Failback {
            hysteresis_ms: ms("failback.hysteresis", f.hysteresis.as_deref())?,
            slow_start_ms: ms("failback.slowStart", f.slow_start.as_deref())?,
        })),
    };
    Ok(model::FailoverPolicy {
        region_order: Vec::new(),
        failover: spec
            .failover
            .iter()
            .map(|f| model::RegionFailover {
                from: f.from.clone(),
                to: f.to.clone(),
            })
            .collect(),
        weights: spec
            .weights
            .iter()
            .map(|w| model::RegionWeight {
                from: w.from.clone(),
                region: w.region.clone(),
                percent: w.percent,
            })
            .collect(),
        min_healthy_percent,
        geo_fence: spec
            .geo_fence
            .as_ref()
            .map(|g| g.regions.clone())
            .unwrap_or_default(),
        health_check,
        outlier_detection,
        retry: spec.retry.as_ref().map(|r| {
            Box::new(model::FailoverRetry {
                attempts: r.attempts.unwrap_or(0),
                budget_percent: r.budget_percent.unwrap_or(0).min(100),
            })
        }),
        failback,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;
    use meridian_crds::meridian::FailoverPolicySpec;

    const MCS: &str = "multicluster.x-k8s.io";

    fn policy(ns: &str, name: &str, created: i64, yaml: &str) -> FailoverPolicy {
        let spec: FailoverPolicySpec = serde_yaml::from_str(yaml).unwrap();
        let mut p = FailoverPolicy::new(name, spec);
        p.metadata = ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap())),
            ..Default::default()
        };
        p
    }

    #[test]
    fn the_example_translates_with_durations_in_milliseconds() {
        let text = include_str!("../../../examples/failover-policy.yaml");
        let p: FailoverPolicy = serde_yaml::from_str(text).unwrap();
        let m = to_model(&p.spec).unwrap();
        assert_eq!(m.failover[0].from, "us-east");
        assert_eq!(m.failover[0].to, ["us-west", "eu-west"]);
        assert_eq!(m.weights[0].percent, 10);
        assert_eq!(m.min_healthy_percent, 50);
        assert_eq!(m.geo_fence, ["us-east", "us-west", "eu-west"]);
        let hc = m.health_check.unwrap();
        assert_eq!((hc.interval_ms, hc.timeout_ms), (1000, 500));
        assert_eq!(hc.http_path.as_deref(), Some("/"));
        assert_eq!(m.outlier_detection.unwrap().consecutive_5xx, 5);
        let fb = m.failback.unwrap();
        assert_eq!((fb.hysteresis_ms, fb.slow_start_ms), (3000, 10_000));
    }

    #[test]
    fn invalid_fields_are_named() {
        let bad = |yaml: &str| {
            let spec: FailoverPolicySpec = serde_yaml::from_str(yaml).unwrap();
            to_model(&spec).unwrap_err()
        };
        let refs = "targetRefs: []\n";
        assert!(
            bad(&format!("{refs}healthCheck: {{interval: 1x}}")).contains("healthCheck.interval")
        );
        assert!(
            bad(&format!("{refs}failback: {{slowStart: soon}}")).contains("failback.slowStart")
        );
        assert!(
            bad(&format!(
                "{refs}weights: [{{from: a, region: b, percent: 150}}]"
            ))
            .contains("above 100")
        );
        assert!(
            bad(&format!(
                "{refs}healthCheck: {{http: {{path: 'no slash'}}}}"
            ))
            .contains("path")
        );
    }

    #[test]
    fn policies_attach_by_namespace_and_target_and_the_oldest_wins() {
        let mut cluster = ClusterState::new("us-east", vec![]);
        let target = |kind: &str, name: &str| {
            let group = if kind == "Service" { "" } else { MCS };
            format!("targetRefs: [{{group: '{group}', kind: {kind}, name: {name}}}]\n")
        };
        cluster.apply(policy(
            "demo",
            "newer",
            2_000,
            &format!(
                "{}geoFence: {{regions: [eu]}}",
                target("ServiceImport", "echo")
            ),
        ));
        cluster.apply(policy(
            "demo",
            "older",
            1_000,
            &format!(
                "{}geoFence: {{regions: [us-east]}}",
                target("ServiceImport", "echo")
            ),
        ));
        cluster.apply(policy(
            "other",
            "elsewhere",
            500,
            &format!(
                "{}geoFence: {{regions: [ap]}}",
                target("ServiceImport", "echo")
            ),
        ));
        cluster.apply(policy(
            "demo",
            "svc",
            500,
            &format!(
                "{}spill: {{minHealthyPercent: 30}}",
                target("Service", "echo")
            ),
        ));
        let got = policy_for(&cluster, "demo", MCS, "ServiceImport", "echo").unwrap();
        assert_eq!(got.geo_fence, ["us-east"], "oldest wins");
        let other = policy_for(&cluster, "other", MCS, "ServiceImport", "echo").unwrap();
        assert_eq!(other.geo_fence, ["ap"], "namespace scoped");
        let svc = policy_for(&cluster, "demo", "", "Service", "echo").unwrap();
        assert_eq!(svc.min_healthy_percent, 30, "kind and group must match");
        assert!(policy_for(&cluster, "demo", MCS, "ServiceImport", "nope").is_none());
        // An invalid older policy does not block a valid newer one.
        cluster.apply(policy(
            "demo",
            "broken",
            10,
            &format!(
                "{}healthCheck: {{timeout: x}}",
                target("ServiceImport", "echo")
            ),
        ));
        let got = policy_for(&cluster, "demo", MCS, "ServiceImport", "echo").unwrap();
        assert_eq!(got.geo_fence, ["us-east"]);
    }

    #[test]
    fn a_route_policy_fills_backends_without_their_own() {
        let mut cluster = ClusterState::new("us-east", vec![]);
        cluster.apply(policy(
            "demo",
            "route",
            1,
            "targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: web}]\ngeoFence: {regions: [us-east]}",
        ));
        let own = model::FailoverPolicy {
            min_healthy_percent: 40,
            ..Default::default()
        };
        let backend = |failover: Option<model::FailoverPolicy>| model::Backend {
            name: "b".into(),
            weight: 1,
            filters: vec![],
            target: model::BackendTarget::Endpoints {
                protocol: model::BackendProtocol::Http1,
                endpoints: vec![],
                failover,
            },
        };
        let mut rules: Vec<model::Rule> =
            vec![serde_json::from_value(serde_json::json!({})).unwrap()];
        rules[0].backends = vec![backend(None), backend(Some(own.clone()))];
        attach_route_policy(&cluster, &ObjectKey::new("demo", "web"), &mut rules);
        let policies: Vec<Option<model::FailoverPolicy>> = rules[0]
            .backends
            .iter()
            .map(|b| match &b.target {
                model::BackendTarget::Endpoints { failover, .. } => failover.clone(),
                model::BackendTarget::Invalid { .. } => None,
            })
            .collect();
        assert_eq!(policies[0].as_ref().unwrap().geo_fence, ["us-east"]);
        assert_eq!(
            policies[1].as_ref(),
            Some(&own),
            "backend-level policy kept"
        );
        // Another route: untouched.
        let mut other = rules.clone();
        other[0].backends = vec![backend(None)];
        attach_route_policy(&cluster, &ObjectKey::new("demo", "api"), &mut other);
        assert!(matches!(
            &other[0].backends[0].target,
            model::BackendTarget::Endpoints { failover: None, .. }
        ));
    }
}
