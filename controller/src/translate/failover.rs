//! FailoverPolicy → the model's per-backend failover policy, the policy's status, and the
//! stale-endpoint (cluster circuit breaker) reporting.
//!
//! ```text
//! backendRef (group, kind, ns/name) ─► FailoverPolicies of this cluster in ns whose targetRefs
//!                                      name that object ─► oldest valid wins (creationTimestamp,
//!                                      then name: Gateway API conflict rule) ─► to_model
//!                                      (durations parsed; an invalid policy is skipped, not
//!                                      half-applied) ─► endpoints of clusters unreachable for
//!                                      longer than its staleEndpointTTL dropped
//!
//! every policy of the cluster ─► validate ─┬─ Err ─► Accepted=False/Invalid (message: the field)
//!                                          └─ Ok ─► per target: exists? ─ no ─► TargetNotFound
//!                                                   oldest valid policy for it? ─ no ─► Conflicted
//!                                                   (naming the older one) ─ yes ─► applied
//!                              Accepted=True/Accepted when ≥ 1 target applies, else
//!                              Accepted=False/Conflicted (any conflicted) or /TargetNotFound
//!
//! Gateway's served routes ─► endpoints tagged with a cluster in cfg.unreachable ─►
//!                            meridian.dev/StaleEndpoints=True (clusters, since, grace end)
//! ```
//!
//! Targets: ServiceImport (`multicluster.x-k8s.io`) and Service (`""`) per backend; an HTTPRoute
//! target (`gateway.networking.k8s.io`) covers every backend of the route that no backend-level
//! policy already covers (the more specific target wins). A ServiceImport target exists when the
//! policy's cluster has the ServiceImport object or some member cluster exports `ns/name` (what a
//! ServiceImport backendRef resolves to here). Policy status is written in the policy's own
//! cluster.
//!
//! Unreachable clusters come from the controller's reachability probe ([`UnreachableCluster`] in
//! [`TranslateConfig::unreachable`](super::TranslateConfig)); the controller withdraws their
//! EndpointSlices after `--endpoint-grace`, a policy's `staleEndpointTTL` drops them earlier for
//! its targets ([`next_stale_expiry`] tells the controller when to translate again for that).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use meridian_crds::meridian::{
    self as crd, FailoverPolicy, FailoverPolicyStatus, PolicyTargetRef, PolicyTargetStatus,
    condition, parse_duration,
};
use meridian_model::snapshot as model;

use super::Ctx;
use super::backend::MCS_GROUP;
use crate::status::{
    Cond, GATEWAY_GROUP, REASON_CLUSTER_UNREACHABLE, STALE_ENDPOINTS, StatusKind, StatusUpdate,
    is_stale, merge_conditions, stamp_all,
};
use crate::world::{ClusterName, ClusterState, ObjectKey, World};

/// A member cluster whose API the controller cannot reach; its last-known endpoints are still
/// served until `grace_ends`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreachableCluster {
    /// First failed probe of the cluster's API.
    pub since: Timestamp,
    /// Last successful probe; `None` when it was never reached since the controller started.
    pub last_contact: Option<Timestamp>,
    /// When the controller withdraws the cluster's endpoints (`since` + `--endpoint-grace`).
    pub grace_ends: Timestamp,
}

/// A policy in effect: the model policy for the snapshot and the stale-endpoint TTL.
pub(crate) struct Attached {
    pub model: model::FailoverPolicy,
    pub stale_ttl: Option<Duration>,
}

/// The backend target of a resolved backendRef: its endpoints with the policy targeting the
/// object attached, minus the endpoints that policy's `staleEndpointTTL` no longer allows.
pub(crate) fn backend_target(
    ctx: &Ctx<'_>,
    namespace: &str,
    group: &str,
    kind: &str,
    name: &str,
    protocol: model::BackendProtocol,
    endpoints: &[model::Endpoint],
) -> model::BackendTarget {
    let attached = policy_for(ctx.cluster, namespace, group, kind, name);
    let mut endpoints = endpoints.to_vec();
    if let Some(ttl) = attached.as_ref().and_then(|a| a.stale_ttl) {
        drop_expired(ctx, ttl, &mut endpoints);
    }
    model::BackendTarget::Endpoints {
        protocol,
        endpoints,
        failover: attached.map(|a| a.model),
    }
}

/// Gives every backend of `route`'s rules that has no policy yet the policy targeting the route.
/// Policies target HTTPRoutes only (`TARGET_KINDS`): a GRPCRoute's backends get the policies of
/// their Services and ServiceImports.
pub(crate) fn attach_route_policy(
    ctx: &Ctx<'_>,
    kind: model::RouteKind,
    route: &ObjectKey,
    rules: &mut [model::Rule],
) {
    if ctx.cluster.failover_policies.is_empty() {
        return;
    }
    let Some(policy) = policy_for(
        ctx.cluster,
        &route.namespace,
        GATEWAY_GROUP,
        kind.as_str(),
        &route.name,
    ) else {
        return;
    };
    let attach = |b: &mut model::Backend| {
        if let model::BackendTarget::Endpoints {
            failover,
            endpoints,
            ..
        } = &mut b.target
            && failover.is_none()
        {
            *failover = Some(policy.model.clone());
            if let Some(ttl) = policy.stale_ttl {
                drop_expired(ctx, ttl, endpoints);
            }
        }
    };
    for rule in rules {
        for b in &mut rule.backends {
            attach(b);
        }
    }
}

/// Removes the endpoints of clusters unreachable for `ttl` or longer.
fn drop_expired(ctx: &Ctx<'_>, ttl: Duration, endpoints: &mut Vec<model::Endpoint>) {
    if ctx.cfg.unreachable.is_empty() {
        return;
    }
    let now = ctx.cfg.now;
    endpoints.retain(|e| {
        ctx.cfg
            .unreachable
            .get(&e.cluster)
            .is_none_or(|u| expiry(u.since, ttl).is_some_and(|t| now < t))
    });
}

/// `since + ttl`, `None` when out of range (then: already expired, the safe reading).
fn expiry(since: Timestamp, ttl: Duration) -> Option<Timestamp> {
    let ttl = SignedDuration::try_from(ttl).ok()?;
    since.checked_add(ttl).ok()
}

/// The earliest future moment at which a policy's `staleEndpointTTL` drops the endpoints of an
/// unreachable cluster: the controller translates again then (nothing else changes at that
/// moment).
pub fn next_stale_expiry(
    world: &World,
    unreachable: &BTreeMap<ClusterName, UnreachableCluster>,
    now: Timestamp,
) -> Option<Timestamp> {
    if unreachable.is_empty() {
        return None;
    }
    let ttls: BTreeSet<Duration> = world
        .clusters
        .values()
        .flat_map(|c| c.failover_policies.values())
        .filter_map(|p| validate(&p.spec).ok()?.stale_ttl)
        .collect();
    ttls.iter()
        .flat_map(|ttl| unreachable.values().filter_map(|u| expiry(u.since, *ttl)))
        .filter(|t| *t > now)
        .min()
}

/// Sort key of the Gateway API conflict rule: older first, then by name (same namespace).
fn age_key<'a>(key: &'a ObjectKey, p: &FailoverPolicy) -> (i64, &'a str) {
    let created = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(i64::MAX, |t| t.0.as_second());
    (created, key.name.as_str())
}

/// The policy that applies to backend object `group/kind namespace/name` in this cluster.
pub(crate) fn policy_for(
    cluster: &ClusterState,
    namespace: &str,
    group: &str,
    kind: &str,
    name: &str,
) -> Option<Attached> {
    if cluster.failover_policies.is_empty() {
        return None;
    }
    let mut candidates: Vec<((i64, &str), &FailoverPolicy)> = cluster
        .failover_policies
        .iter()
        .filter(|(k, _)| k.namespace == namespace)
        .filter(|(_, p)| {
            p.spec
                .target_refs
                .iter()
                .any(|t| t.group == group && t.kind == kind && t.name == name)
        })
        .map(|(k, p)| (age_key(k, p), p.as_ref()))
        .collect();
    candidates.sort_by(|a, b| a.0.cmp(&b.0));
    candidates
        .into_iter()
        .find_map(|((_, pname), p)| match validate(&p.spec) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::debug!(policy = %format!("{namespace}/{pname}"), error = %e, "invalid FailoverPolicy skipped");
                None
            }
        })
}

/// Kinds a policy can target, as `(group, kind)`.
const TARGET_KINDS: [(&str, &str); 3] = [
    (MCS_GROUP, "ServiceImport"),
    ("", "Service"),
    (GATEWAY_GROUP, "HTTPRoute"),
];

/// Why a FailoverPolicy is invalid: the first invalid field. The message is the policy's
/// `Accepted=False/Invalid` message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PolicyInvalid {
    #[error("targetRefs: at least one target is required")]
    NoTargets,
    #[error(
        "targetRefs[{index}]: kind {kind:?} of group {group:?} cannot be targeted (ServiceImport \
         of {MCS_GROUP:?}, Service of \"\", HTTPRoute of {GATEWAY_GROUP:?})"
    )]
    TargetKind {
        index: usize,
        group: String,
        kind: String,
    },
    #[error("targetRefs[{0}].name is empty")]
    TargetName(usize),
    /// A duration field (`field` is its path in the spec).
    #[error("{field}: {source}")]
    Duration {
        field: &'static str,
        #[source]
        source: crd::DurationError,
    },
    #[error("weights: percent {percent} for {from} → {region} is above 100")]
    Weight {
        percent: u32,
        from: String,
        region: String,
    },
    #[error("spill.minHealthyPercent {0} is above 100")]
    MinHealthyPercent(u32),
    #[error("healthCheck.http.path {0:?} must be an absolute path without spaces")]
    HealthCheckPath(String),
}

/// Validates a whole policy: its targets and every field. `Err` names the first invalid field.
pub(crate) fn validate(spec: &crd::FailoverPolicySpec) -> Result<Attached, PolicyInvalid> {
    if spec.target_refs.is_empty() {
        return Err(PolicyInvalid::NoTargets);
    }
    for (index, t) in spec.target_refs.iter().enumerate() {
        if !TARGET_KINDS.contains(&(t.group.as_str(), t.kind.as_str())) {
            return Err(PolicyInvalid::TargetKind {
                index,
                group: t.group.clone(),
                kind: t.kind.clone(),
            });
        }
        if t.name.is_empty() {
            return Err(PolicyInvalid::TargetName(index));
        }
    }
    let stale_ttl = spec
        .stale_endpoint_ttl
        .as_deref()
        .map(|s| {
            parse_duration(s).map_err(|source| PolicyInvalid::Duration {
                field: "staleEndpointTTL",
                source,
            })
        })
        .transpose()?;
    Ok(Attached {
        model: to_model(spec)?,
        stale_ttl,
    })
}

/// `Kind name` of a target, for messages.
fn target_label(t: &PolicyTargetRef) -> String {
    format!("{} {}", t.kind, t.name)
}

/// A policy target that is not there; the message goes into the policy's status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum TargetMissing {
    #[error("no ServiceImport {key} in cluster {cluster} and no member cluster exports it")]
    ServiceImport { key: ObjectKey, cluster: String },
    #[error("no {kind} {key} in cluster {cluster}")]
    Object {
        kind: String,
        key: ObjectKey,
        cluster: String,
    },
}

/// Whether a (valid) target exists for a policy in `namespace` of this cluster; `Err` says why not.
fn target_exists(ctx: &Ctx<'_>, namespace: &str, t: &PolicyTargetRef) -> Result<(), TargetMissing> {
    let key = ObjectKey::new(namespace, t.name.as_str());
    let cluster = ctx.cluster;
    let found = match t.kind.as_str() {
        "Service" => cluster.services.contains_key(&key),
        "HTTPRoute" => cluster.http_routes.contains_key(&key),
        _ => {
            cluster.service_imports.contains_key(&key)
                || ctx.world.clusters.values().any(|c| c.exports(&key))
        }
    };
    let cluster = ctx.cluster_name.to_string();
    if found {
        Ok(())
    } else if t.kind == "ServiceImport" {
        Err(TargetMissing::ServiceImport { key, cluster })
    } else {
        Err(TargetMissing::Object {
            kind: t.kind.clone(),
            key,
            cluster,
        })
    }
}

/// The status of every FailoverPolicy of the cluster whose status differs from the indexed copy.
pub(crate) fn policy_status(ctx: &Ctx<'_>, out: &mut Vec<StatusUpdate>) {
    let policies = &ctx.cluster.failover_policies;
    if policies.is_empty() {
        return;
    }
    let verdicts: BTreeMap<&ObjectKey, Result<(), PolicyInvalid>> = policies
        .iter()
        .map(|(k, p)| (k, validate(&p.spec).map(drop)))
        .collect();
    // The winner of every targeted object: the oldest valid policy naming it.
    let mut by_age: Vec<(&ObjectKey, &FailoverPolicy)> =
        policies.iter().map(|(k, p)| (k, p.as_ref())).collect();
    by_age.sort_by(|a, b| age_key(a.0, a.1).cmp(&age_key(b.0, b.1)));
    let mut winners: BTreeMap<(&str, &str, &str, &str), &ObjectKey> = BTreeMap::new();
    for (k, p) in &by_age {
        if !matches!(verdicts.get(k), Some(Ok(()))) {
            continue;
        }
        for t in &p.spec.target_refs {
            winners
                .entry((
                    k.namespace.as_str(),
                    t.group.as_str(),
                    t.kind.as_str(),
                    t.name.as_str(),
                ))
                .or_insert(k);
        }
    }
    for (key, policy) in policies {
        let generation = super::generation_of(&policy.metadata);
        let old = policy.status.as_ref();
        let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
        if is_stale(old_conditions, generation) {
            continue;
        }
        let refs = &policy.spec.target_refs;
        let (targets, accepted) = match verdicts.get(key) {
            Some(Err(_)) | None => {
                let why = why_invalid(verdicts.get(key));
                let targets = refs
                    .iter()
                    .map(|t| PolicyTargetStatus {
                        target_ref: t.clone(),
                        applied: false,
                        reason: condition::REASON_INVALID.to_string(),
                    })
                    .collect();
                let cond = Cond::new(condition::ACCEPTED, false, condition::REASON_INVALID, why);
                (targets, cond)
            }
            Some(Ok(())) => judge_targets(ctx, key, refs, &winners),
        };
        let new = FailoverPolicyStatus {
            conditions: merge_conditions(
                old_conditions,
                stamp_all(vec![accepted], generation, ctx.cfg.now),
                ctx.cfg.now,
            ),
            targets,
        };
        super::gateway::push_if_changed(
            ctx,
            out,
            StatusKind::FailoverPolicy,
            Some(&key.namespace),
            &key.name,
            generation,
            old,
            &new,
        );
    }
}

fn why_invalid(v: Option<&Result<(), PolicyInvalid>>) -> String {
    match v {
        Some(Err(why)) => why.to_string(),
        _ => "not validated".to_string(),
    }
}

/// Per-target verdicts of a valid policy and its `Accepted` condition.
fn judge_targets(
    ctx: &Ctx<'_>,
    key: &ObjectKey,
    refs: &[PolicyTargetRef],
    winners: &BTreeMap<(&str, &str, &str, &str), &ObjectKey>,
) -> (Vec<PolicyTargetStatus>, Cond) {
    let mut applied = Vec::new();
    let mut not_applied = Vec::new();
    let mut conflicted = false;
    let mut targets = Vec::with_capacity(refs.len());
    for t in refs {
        let verdict = match target_exists(ctx, &key.namespace, t) {
            Err(why) => Err((condition::REASON_TARGET_NOT_FOUND, why.to_string())),
            Ok(()) => match winners.get(&(
                key.namespace.as_str(),
                t.group.as_str(),
                t.kind.as_str(),
                t.name.as_str(),
            )) {
                Some(w) if *w != key => {
                    conflicted = true;
                    Err((
                        condition::REASON_CONFLICTED,
                        format!(
                            "FailoverPolicy {w} is older and targets it (Gateway API: the oldest policy wins)"
                        ),
                    ))
                }
                _ => Ok(()),
            },
        };
        match verdict {
            Ok(()) => {
                applied.push(target_label(t));
                targets.push(PolicyTargetStatus {
                    target_ref: t.clone(),
                    applied: true,
                    reason: String::new(),
                });
            }
            Err((reason, why)) => {
                not_applied.push(format!("{}: {reason}: {why}", target_label(t)));
                targets.push(PolicyTargetStatus {
                    target_ref: t.clone(),
                    applied: false,
                    reason: reason.to_string(),
                });
            }
        }
    }
    let cond = if !applied.is_empty() {
        let mut msg = format!("applies to {}", applied.join(", "));
        if !not_applied.is_empty() {
            msg.push_str(&format!("; not to {}", not_applied.join("; ")));
        }
        Cond::new(condition::ACCEPTED, true, condition::REASON_ACCEPTED, msg)
    } else {
        let reason = if conflicted {
            condition::REASON_CONFLICTED
        } else {
            condition::REASON_TARGET_NOT_FOUND
        };
        Cond::new(
            condition::ACCEPTED,
            false,
            reason,
            format!("applies to no target: {}", not_applied.join("; ")),
        )
    };
    (targets, cond)
}

/// `meridian.dev/StaleEndpoints=True` when `routes` (a Gateway's served routes) use endpoints of
/// a cluster in `cfg.unreachable`; `None` otherwise (the condition is then left out, which
/// removes it).
pub(crate) fn stale_endpoints_condition<'r>(
    ctx: &Ctx<'_>,
    routes: impl IntoIterator<Item = &'r std::sync::Arc<model::Route>>,
) -> Option<Cond> {
    let unreachable = &ctx.cfg.unreachable;
    if unreachable.is_empty() {
        return None;
    }
    let mut stale: BTreeMap<&str, &UnreachableCluster> = BTreeMap::new();
    for_each_endpoint(routes, |e| {
        if let Some((name, u)) = unreachable.get_key_value(&e.cluster) {
            stale.insert(name.as_str(), u);
        }
    });
    if stale.is_empty() {
        return None;
    }
    // Whole seconds: the message must not change between passes, or every pass would write it.
    let secs = |t: &Timestamp| Timestamp::from_second(t.as_second()).unwrap_or(*t);
    let parts: Vec<String> = stale
        .iter()
        .map(|(name, u)| {
            let contact = match &u.last_contact {
                Some(t) => format!("last contact {}", secs(t)),
                None => "never reached".to_string(),
            };
            format!(
                "{name} (API unreachable since {}, {contact}; its endpoints are withdrawn at {} \
                 unless it is back, earlier for targets of a FailoverPolicy with a shorter \
                 staleEndpointTTL)",
                secs(&u.since),
                secs(&u.grace_ends)
            )
        })
        .collect();
    Some(Cond::new(
        STALE_ENDPOINTS,
        true,
        REASON_CLUSTER_UNREACHABLE,
        format!(
            "serving last-known endpoints of unreachable member cluster(s): {}",
            parts.join("; ")
        ),
    ))
}

/// A duration field in milliseconds (absent: 0).
fn ms(field: &'static str, v: Option<&str>) -> Result<u64, PolicyInvalid> {
    match v {
        None => Ok(0),
        Some(s) => parse_duration(s)
            .map(|d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .map_err(|source| PolicyInvalid::Duration { field, source }),
    }
}

/// Converts a policy spec; `Err` names the first invalid field.
pub(crate) fn to_model(
    spec: &crd::FailoverPolicySpec,
) -> Result<model::FailoverPolicy, PolicyInvalid> {
    if let Some(w) = spec.weights.iter().find(|w| w.percent > 100) {
        return Err(PolicyInvalid::Weight {
            percent: w.percent,
            from: w.from.clone(),
            region: w.region.clone(),
        });
    }
    let min_healthy_percent = spec.spill.as_ref().map_or(0, |s| s.min_healthy_percent);
    if min_healthy_percent > 100 {
        return Err(PolicyInvalid::MinHealthyPercent(min_healthy_percent));
    }
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
        health_check: spec.health_check.as_ref().map(health_check).transpose()?,
        outlier_detection: spec
            .outlier_detection
            .as_ref()
            .map(outlier_detection)
            .transpose()?,
        retry: spec.retry.as_ref().map(|r| {
            Box::new(model::FailoverRetry {
                attempts: r.attempts.unwrap_or(0),
                budget_percent: r.budget_percent.unwrap_or(0).min(100),
            })
        }),
        failback: spec.failback.as_ref().map(failback).transpose()?,
    })
}

fn health_check(h: &crd::HealthCheck) -> Result<Box<model::HealthCheck>, PolicyInvalid> {
    let hc = model::HealthCheck {
        http_path: h.http.as_ref().map(|x| x.path.clone()),
        interval_ms: ms("healthCheck.interval", h.interval.as_deref())?,
        timeout_ms: ms("healthCheck.timeout", h.timeout.as_deref())?,
        unhealthy_threshold: h.unhealthy_threshold.unwrap_or(0),
        healthy_threshold: h.healthy_threshold.unwrap_or(0),
    };
    if let Some(path) = &hc.http_path
        && (!path.starts_with('/')
            || path
                .chars()
                .any(|c| c.is_ascii_whitespace() || c.is_ascii_control()))
    {
        return Err(PolicyInvalid::HealthCheckPath(path.clone()));
    }
    Ok(Box::new(hc))
}

fn outlier_detection(
    o: &crd::OutlierDetection,
) -> Result<Box<model::OutlierDetection>, PolicyInvalid> {
    Ok(Box::new(model::OutlierDetection {
        consecutive_5xx: o.consecutive_5xx.unwrap_or(0),
        base_ejection_ms: ms(
            "outlierDetection.baseEjectionTime",
            o.base_ejection_time.as_deref(),
        )?,
        max_ejection_ms: ms(
            "outlierDetection.maxEjectionTime",
            o.max_ejection_time.as_deref(),
        )?,
    }))
}

fn failback(f: &crd::Failback) -> Result<Box<model::Failback>, PolicyInvalid> {
    Ok(Box::new(model::Failback {
        hysteresis_ms: ms("failback.hysteresis", f.hysteresis.as_deref())?,
        slow_start_ms: ms("failback.slowStart", f.slow_start.as_deref())?,
    }))
}

/// Calls `f` on every endpoint of every backend of `routes`, mirror backends included.
fn for_each_endpoint<'r>(
    routes: impl IntoIterator<Item = &'r std::sync::Arc<model::Route>>,
    mut f: impl FnMut(&model::Endpoint),
) {
    let mut backend = |b: &model::Backend| {
        if let model::BackendTarget::Endpoints { endpoints, .. } = &b.target {
            endpoints.iter().for_each(&mut f);
        }
    };
    let mirrors = |filters: &[model::Filter], backend: &mut dyn FnMut(&model::Backend)| {
        for filter in filters {
            if let model::Filter::RequestMirror(m) = filter {
                backend(&m.backend);
            }
        }
    };
    for rule in routes.into_iter().flat_map(|r| &r.rules) {
        mirrors(&rule.filters, &mut backend);
        for b in &rule.backends {
            mirrors(&b.filters, &mut backend);
            backend(b);
        }
    }
}

/// Per unreachable cluster: how many distinct endpoints (address and port) of it `snapshots`
/// serve from its last-known state (for `meridian_member_cluster_stale_endpoints`). East-west
/// endpoints are remote proxies, not the cluster's endpoints: those are counted where they are
/// served directly (routes and east-west sections of the snapshots of their own network).
pub(crate) fn stale_endpoint_counts<'s>(
    snapshots: impl IntoIterator<Item = &'s meridian_model::Snapshot>,
    unreachable: &BTreeMap<ClusterName, UnreachableCluster>,
) -> BTreeMap<ClusterName, usize> {
    let mut seen: BTreeMap<&str, BTreeSet<(std::net::IpAddr, u16)>> = BTreeMap::new();
    if unreachable.is_empty() {
        return BTreeMap::new();
    }
    let mut count = |e: &model::Endpoint| {
        if e.east_west {
            return;
        }
        if let Some((name, _)) = unreachable.get_key_value(&e.cluster) {
            seen.entry(name.as_str())
                .or_default()
                .insert((e.address, e.port));
        }
    };
    for s in snapshots {
        let routes = s
            .gateways
            .iter()
            .flat_map(|g| &g.listeners)
            .flat_map(|l| &l.routes);
        for_each_endpoint(routes, &mut count);
        s.east_west
            .iter()
            .flat_map(|b| &b.endpoints)
            .for_each(&mut count);
    }
    seen.into_iter()
        .map(|(c, eps)| (c.to_string(), eps.len()))
        .collect()
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
        assert_eq!(m.failover[0].to, ["us-west", "eu-central"]);
        assert_eq!(m.weights[0].percent, 10);
        assert_eq!(m.min_healthy_percent, 50);
        assert_eq!(m.geo_fence, ["us-east", "us-west", "eu-central"]);
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
            to_model(&spec).unwrap_err().to_string()
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
        let got = policy_for(&cluster, "demo", MCS, "ServiceImport", "echo")
            .unwrap()
            .model;
        assert_eq!(got.geo_fence, ["us-east"], "oldest wins");
        let other = policy_for(&cluster, "other", MCS, "ServiceImport", "echo")
            .unwrap()
            .model;
        assert_eq!(other.geo_fence, ["ap"], "namespace scoped");
        let svc = policy_for(&cluster, "demo", "", "Service", "echo")
            .unwrap()
            .model;
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
        let got = policy_for(&cluster, "demo", MCS, "ServiceImport", "echo")
            .unwrap()
            .model;
        assert_eq!(got.geo_fence, ["us-east"]);
    }

    #[test]
    fn a_route_policy_fills_backends_without_their_own() {
        let mut world = World::new();
        let cluster = world.add_cluster("east", "us-east", vec![]);
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
            tls: None,
        };
        let mut rules: Vec<model::Rule> =
            vec![serde_json::from_value(serde_json::json!({})).unwrap()];
        rules[0].backends = vec![backend(None), backend(Some(own.clone()))];
        let cfg = super::super::TranslateConfig::default();
        let ctx = Ctx {
            world: &world,
            cluster_name: "east",
            cluster: &world.clusters["east"],
            cfg: &cfg,
        };
        attach_route_policy(
            &ctx,
            model::RouteKind::Http,
            &ObjectKey::new("demo", "web"),
            &mut rules,
        );
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
        attach_route_policy(
            &ctx,
            model::RouteKind::Http,
            &ObjectKey::new("demo", "api"),
            &mut other,
        );
        assert!(matches!(
            &other[0].backends[0].target,
            model::BackendTarget::Endpoints { failover: None, .. }
        ));
    }
}
