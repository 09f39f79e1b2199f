//! Status as data: what translation wants written, and the pure merge rules that make writes
//! idempotent.
//!
//! Kinds with a status: GatewayClass, Gateway, ListenerSet, HTTPRoute, GRPCRoute, TLSRoute, BackendTLSPolicy
//! (`status.ancestors`: one entry per Gateway whose routes use a target; other controllers'
//! entries are kept) and Meridian's FailoverPolicy (its `status.conditions` + `status.targets`,
//! in the cluster where the policy lives).
//!
//! Translation builds the desired status of every object it owns and merges it with the copy it
//! has in the index ([`merge_conditions`], [`merge_route_parents`]); a [`StatusUpdate`] is emitted
//! only when the result differs from that copy by more than timestamps ([`eq_ignoring_time`]). The
//! writer (one per cluster) sends it — SSA for GatewayClass, Gateway and FailoverPolicy, whose
//! status only we write; read-modify-write for HTTPRoute, GRPCRoute and TLSRoute, whose `status.parents` list is atomic and shared with
//! other controllers, re-running [`merge_route_parents`] on the freshly read object.
//!
//! For routes (all three kinds share the `status.parents` shape), [`StatusUpdate::status`] holds the merged list computed against the indexed
//! copy. When the write hits a conflict (409), the writer re-reads the route, takes our entries
//! out of the update ([`StatusUpdate::route_parents_of`]) and merges them again with
//! [`merge_route_parents`] over the fresh list, so entries another controller wrote meanwhile
//! survive.
//!
//! Rules every merge follows:
//! 1. every condition carries `observedGeneration = metadata.generation`;
//! 2. `lastTransitionTime` is kept unless the condition's `status` changed;
//! 3. route parent entries of other controllers are kept untouched and in place; ours are
//!    replaced, and ours that are no longer wanted are removed;
//! 4. nothing is written over a condition that has seen a newer generation than our copy
//!    ([`is_stale`]): our index lags behind, the next event will bring us up to date.

use gateway_api::httproutes::{HttpRouteStatusParents, HttpRouteStatusParentsParentRef};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use std::sync::Arc;

use crate::world::ClusterName;

/// API group of the Gateway API kinds.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Upper bound on `status.parents` (the upstream CRD's `maxItems`).
pub const MAX_ROUTE_PARENTS: usize = 32;

/// Longest condition message we write; the API allows 32768 bytes, logs and `kubectl` do not.
const MAX_MESSAGE: usize = 1024;

/// Which kind of object a status belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatusKind {
    /// Cluster-scoped GatewayClass.
    GatewayClass,
    /// Gateway.
    Gateway,
    /// HTTPRoute.
    HttpRoute,
    /// GRPCRoute (same `status.parents` shape and write path as HTTPRoute).
    GrpcRoute,
    /// TLSRoute (same `status.parents` shape and write path as HTTPRoute).
    TlsRoute,
    /// `meridian.dev` FailoverPolicy.
    FailoverPolicy,
    /// BackendTLSPolicy (`status.ancestors`).
    BackendTlsPolicy,
    /// ListenerSet (`status.conditions` + `status.listeners`, like a Gateway's; only we write it).
    ListenerSet,
}

impl StatusKind {
    /// The status kind of an indexed kind (`None`: we write no status for it).
    pub(crate) fn of(kind: crate::world::Kind) -> Option<Self> {
        use crate::world::Kind;
        match kind {
            Kind::GatewayClass => Some(Self::GatewayClass),
            Kind::Gateway => Some(Self::Gateway),
            Kind::HttpRoute => Some(Self::HttpRoute),
            Kind::GrpcRoute => Some(Self::GrpcRoute),
            Kind::TlsRoute => Some(Self::TlsRoute),
            Kind::FailoverPolicy => Some(Self::FailoverPolicy),
            Kind::BackendTlsPolicy => Some(Self::BackendTlsPolicy),
            Kind::ListenerSet => Some(Self::ListenerSet),
            _ => None,
        }
    }

    /// HTTPRoute, GRPCRoute or TLSRoute.
    pub fn is_route(self) -> bool {
        matches!(
            self,
            StatusKind::HttpRoute | StatusKind::GrpcRoute | StatusKind::TlsRoute
        )
    }

    /// `apiVersion` to send with a status patch.
    pub fn api_version(self) -> &'static str {
        match self {
            StatusKind::FailoverPolicy => "meridian.dev/v1alpha1",
            _ => "gateway.networking.k8s.io/v1",
        }
    }

    /// `kind` to send with a status patch.
    pub fn kind(self) -> &'static str {
        match self {
            StatusKind::GatewayClass => "GatewayClass",
            StatusKind::Gateway => "Gateway",
            StatusKind::HttpRoute => "HTTPRoute",
            StatusKind::GrpcRoute => "GRPCRoute",
            StatusKind::TlsRoute => "TLSRoute",
            StatusKind::FailoverPolicy => "FailoverPolicy",
            StatusKind::BackendTlsPolicy => "BackendTLSPolicy",
            StatusKind::ListenerSet => "ListenerSet",
        }
    }
}

/// Implementation-specific Gateway condition: the Gateway's snapshot serves last-known
/// endpoints of a member cluster whose API is unreachable (status `True` while it does; absent
/// otherwise).
pub const STALE_ENDPOINTS: &str = "meridian.dev/StaleEndpoints";

/// Reason of [`STALE_ENDPOINTS`].
pub const REASON_CLUSTER_UNREACHABLE: &str = "ClusterUnreachable";

/// One status write to make.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusUpdate {
    /// Member cluster of the object.
    pub cluster: ClusterName,
    /// Kind of the object.
    pub kind: StatusKind,
    /// Namespace (`None` for GatewayClass).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// `metadata.generation` the status was computed for.
    pub generation: i64,
    /// The complete new `status` object (for HTTPRoute: including other controllers' parents).
    /// Shared, not copied, between the incremental engine's kept updates, the pass's report and
    /// the writer's queued job and its record of what it wrote.
    pub status: Arc<Value>,
    /// `true`: the indexed copy already carries this status; it is reported only because a
    /// status of ours computed against that copy is not confirmed yet
    /// ([`TranslateConfig::unconfirmed`](crate::TranslateConfig::unconfirmed)), which this one
    /// supersedes. `false`: a write to make.
    pub settles: bool,
}

impl StatusUpdate {
    /// Whether this is the status of a route (HTTPRoute, GRPCRoute or TLSRoute: `status.parents`, written
    /// by read-merge-replace).
    pub fn is_route(&self) -> bool {
        self.kind.is_route()
    }

    /// For a route update: the parent entries written by `controller` (to re-merge them over
    /// a freshly read route after a conflict). Empty for other kinds or undecodable values.
    /// GRPCRoute parents decode as HTTPRoute's type: the two have one JSON shape.
    pub fn route_parents_of(&self, controller: &str) -> Vec<HttpRouteStatusParents> {
        if !self.is_route() {
            return Vec::new();
        }
        let parents = self.status.get("parents").cloned().unwrap_or(Value::Null);
        serde_json::from_value::<Vec<HttpRouteStatusParents>>(parents)
            .map(|ps| {
                ps.into_iter()
                    .filter(|p| p.controller_name == controller)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A desired condition before it is stamped with time and generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    /// Condition type.
    pub type_: &'static str,
    /// `True` or `False`.
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl Cond {
    /// A condition.
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }

    /// Stamps the condition with the object's generation and `now`.
    pub fn stamp(self, generation: i64, now: Timestamp) -> Condition {
        let mut message = self.message;
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE - 3;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("...");
        }
        Condition {
            type_: self.type_.to_string(),
            status: if self.status { "True" } else { "False" }.to_string(),
            reason: self.reason.to_string(),
            message,
            observed_generation: Some(generation),
            last_transition_time: Time(now),
        }
    }
}

/// Stamps a list of desired conditions.
pub fn stamp_all(conds: Vec<Cond>, generation: i64, now: Timestamp) -> Vec<Condition> {
    conds
        .into_iter()
        .map(|c| c.stamp(generation, now))
        .collect()
}

/// Merges freshly computed conditions with the previous ones of the same object (or listener, or
/// route parent): each new condition keeps the old `lastTransitionTime` when a condition of the
/// same type had the same `status`, and gets `now` otherwise. The result is exactly `new`'s
/// types, in `new`'s order.
pub fn merge_conditions(old: &[Condition], new: Vec<Condition>, now: Timestamp) -> Vec<Condition> {
    new.into_iter()
        .map(|mut c| {
            c.last_transition_time = match old.iter().find(|o| o.type_ == c.type_) {
                Some(o) if o.status == c.status => o.last_transition_time.clone(),
                _ => Time(now),
            };
            c
        })
        .collect()
}

/// Whether two status values are equal once every `lastTransitionTime` is ignored.
pub fn eq_ignoring_time(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            // The same keys (nulls and timestamps left out) with equal values: as many on each
            // side, and every one of `x` in `y`. Counted rather than collected: this runs for
            // every status translation computes, and key sets would allocate.
            let relevant =
                |(k, v): &(&String, &Value)| k.as_str() != "lastTransitionTime" && !v.is_null();
            x.iter().filter(relevant).count() == y.iter().filter(relevant).count()
                && x.iter().filter(relevant).all(|(k, v)| {
                    y.get(k)
                        .is_some_and(|w| !w.is_null() && eq_ignoring_time(v, w))
                })
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| eq_ignoring_time(v, w))
        }
        _ => a == b,
    }
}

/// Whether some condition already reports a newer generation than the object copy we hold, in
/// which case our copy is stale and we must not write.
pub fn is_stale<'a>(conditions: impl IntoIterator<Item = &'a Condition>, generation: i64) -> bool {
    conditions
        .into_iter()
        .any(|c| c.observed_generation.is_some_and(|g| g > generation))
}

/// A parentRef with every default applied, for comparing status entries.
fn normalized(
    r: &HttpRouteStatusParentsParentRef,
    route_namespace: &str,
) -> (String, String, String, String, Option<String>, Option<i32>) {
    let HttpRouteStatusParentsParentRef {
        group,
        kind,
        name,
        namespace,
        port,
        section_name,
    } = r;
    (
        group.clone().unwrap_or_else(|| GATEWAY_GROUP.to_string()),
        kind.clone().unwrap_or_else(|| "Gateway".to_string()),
        namespace
            .clone()
            .unwrap_or_else(|| route_namespace.to_string()),
        name.clone(),
        section_name.clone(),
        *port,
    )
}

/// Builds the complete `status.parents` of a route from its current entries and the entries this
/// controller wants: other controllers' entries stay where they are, ours are replaced in place
/// (keeping `lastTransitionTime` of unchanged conditions), ours that are no longer wanted are
/// dropped, new ones are appended in `ours` order. Ours are cut so the list stays within
/// [`MAX_ROUTE_PARENTS`].
pub fn merge_route_parents(
    current: &[HttpRouteStatusParents],
    ours: Vec<HttpRouteStatusParents>,
    controller: &str,
    route_namespace: &str,
    now: Timestamp,
) -> Vec<HttpRouteStatusParents> {
    let foreign = current
        .iter()
        .filter(|p| p.controller_name != controller)
        .count();
    let room = MAX_ROUTE_PARENTS.saturating_sub(foreign);
    let mut ours: Vec<Option<HttpRouteStatusParents>> =
        ours.into_iter().take(room).map(Some).collect();
    let mut out = Vec::with_capacity(current.len() + ours.len());
    let mut take_ours = |old: &HttpRouteStatusParents| -> Option<HttpRouteStatusParents> {
        let key = normalized(&old.parent_ref, route_namespace);
        let slot = ours.iter_mut().find(|o| {
            o.as_ref()
                .is_some_and(|o| normalized(&o.parent_ref, route_namespace) == key)
        })?;
        let mut new = slot.take()?;
        new.conditions =
            merge_conditions(&old.conditions, std::mem::take(&mut new.conditions), now);
        Some(new)
    };
    for old in current {
        if old.controller_name != controller {
            out.push(old.clone());
        } else if let Some(new) = take_ours(old) {
            out.push(new);
        }
    }
    out.extend(ours.into_iter().flatten().map(|mut p| {
        p.conditions = merge_conditions(&[], std::mem::take(&mut p.conditions), now);
        p
    }));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn cond(type_: &'static str, status: bool, at: i64) -> Condition {
        Cond::new(type_, status, "R", "m").stamp(1, t(at))
    }

    #[test]
    fn transition_time_kept_unless_status_changes() {
        let old = vec![cond("Accepted", true, 10), cond("Programmed", false, 10)];
        let new = vec![
            cond("Accepted", true, 99),
            cond("Programmed", true, 99),
            cond("Extra", true, 99),
        ];
        let merged = merge_conditions(&old, new, t(50));
        assert_eq!(
            merged[0].last_transition_time.0,
            t(10),
            "same status keeps time"
        );
        assert_eq!(
            merged[1].last_transition_time.0,
            t(50),
            "status change takes now"
        );
        assert_eq!(
            merged[2].last_transition_time.0,
            t(50),
            "new type takes now"
        );
        assert_eq!(merged.len(), 3);
    }

    #[test]
    fn equality_ignores_only_timestamps() {
        let a = json!({"conditions": [{"type": "A", "lastTransitionTime": "2020-01-01T00:00:00Z", "status": "True"}]});
        let b = json!({"conditions": [{"type": "A", "lastTransitionTime": "2024-01-01T00:00:00Z", "status": "True"}]});
        let c = json!({"conditions": [{"type": "A", "lastTransitionTime": "2024-01-01T00:00:00Z", "status": "False"}]});
        assert!(eq_ignoring_time(&a, &b));
        assert!(!eq_ignoring_time(&a, &c));
        assert!(eq_ignoring_time(
            &json!({"x": null, "y": 1}),
            &json!({"y": 1})
        ));
        assert!(!eq_ignoring_time(
            &json!({"y": [1, 2]}),
            &json!({"y": [2, 1]})
        ));
    }

    #[test]
    fn stale_copy_detected() {
        let mut c = cond("Accepted", true, 1);
        c.observed_generation = Some(5);
        assert!(is_stale([&c], 4));
        assert!(!is_stale([&c], 5));
    }

    fn parent(controller: &str, gw: &str, accepted: bool, at: i64) -> HttpRouteStatusParents {
        HttpRouteStatusParents {
            conditions: vec![cond("Accepted", accepted, at)],
            controller_name: controller.into(),
            parent_ref: HttpRouteStatusParentsParentRef {
                group: Some(GATEWAY_GROUP.into()),
                kind: Some("Gateway".into()),
                name: gw.into(),
                namespace: Some("ns".into()),
                port: None,
                section_name: None,
            },
        }
    }

    #[test]
    fn route_parents_keep_foreign_entries_and_replace_ours() {
        let me = "meridian.dev/gateway-controller";
        let current = vec![
            parent(me, "stale", true, 1),
            parent("other.io/ctl", "theirs", true, 1),
            parent(me, "kept", true, 1),
        ];
        let mut old_style = parent(me, "kept", true, 1);
        // An entry we wrote without explicit group/kind/namespace still matches by defaults.
        old_style.parent_ref.group = None;
        old_style.parent_ref.kind = None;
        old_style.parent_ref.namespace = None;
        let current = [current, vec![]].concat();
        let ours = vec![parent(me, "kept", true, 9), parent(me, "new", false, 9)];
        let merged = merge_route_parents(&current, ours, me, "ns", t(7));
        let names: Vec<_> = merged
            .iter()
            .map(|p| (p.controller_name.as_str(), p.parent_ref.name.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![("other.io/ctl", "theirs"), (me, "kept"), (me, "new")]
        );
        assert_eq!(merged[1].conditions[0].last_transition_time.0, t(1));
        assert_eq!(merged[2].conditions[0].last_transition_time.0, t(7));

        let merged = merge_route_parents(
            &[old_style],
            vec![parent(me, "kept", true, 9)],
            me,
            "ns",
            t(7),
        );
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].conditions[0].last_transition_time.0, t(1));
    }

    #[test]
    fn route_parents_capped() {
        let me = "me";
        let current: Vec<_> = (0..30)
            .map(|i| parent("other", &format!("g{i}"), true, 1))
            .collect();
        let ours: Vec<_> = (0..5)
            .map(|i| parent(me, &format!("m{i}"), true, 1))
            .collect();
        let merged = merge_route_parents(&current, ours, me, "ns", t(1));
        assert_eq!(merged.len(), MAX_ROUTE_PARENTS);
        assert_eq!(
            merged
                .iter()
                .filter(|p| p.controller_name == "other")
                .count(),
            30
        );
    }

    #[test]
    fn long_messages_are_cut_on_char_boundaries() {
        let c = Cond::new("A", true, "R", "é".repeat(2000)).stamp(1, t(1));
        assert!(c.message.len() <= MAX_MESSAGE);
        assert!(c.message.ends_with("..."));
    }
}
