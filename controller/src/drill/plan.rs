//! A drill's spec, checked and defaulted: what the runner will do, or why it cannot.
//!
//! Validation is in two steps. [`plan`] needs only the spec (every problem is listed in one
//! message, `Accepted=False/Invalid`; a kill/blackhole drill without an actuator is
//! `ModeUnsupported`). [`resolve`] then checks the spec against what the controller publishes
//! right before the drill starts: the scoped Gateways must be Meridian's, the scoped
//! ServiceImports must be backends of their routes, and the target must match at least one of
//! their endpoints — a drill that would drain nothing is refused instead of "succeeding".
//!
//! A drill concerns its own namespace. An empty `scope.gateways` means the Gateways of the
//! drill's namespace (pinned by [`resolve`] to those published when the drill starts), never
//! all namespaces. Naming a Gateway or ServiceImport of another namespace needs a
//! ReferenceGrant there, checked by [`check_grants`] with the rule of Gateway API references
//! ([`crate::refgrant`]): before the drill waits for its turn, when it starts, and every
//! second while its target is failed.
//!
//! [`Footprint`] is what the run slot compares: drills whose footprints overlap (or of the same
//! namespace) do not run at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use gateway_api::referencegrants::ReferenceGrant;
use meridian_crds::meridian::{
    DrillGuards, DrillObjectRef, DrillTargetSpec, FailoverDrillSpec, IntOrString, drill as d,
    parse_duration,
};
use meridian_model::Snapshot;
use meridian_model::snapshot::{Backend, BackendTarget, Drain, Endpoint};

use super::{DrillMode, DrillTarget};
use crate::refgrant::{RefFrom, RefTo, permits_in};
use crate::status::GATEWAY_GROUP;
use crate::translate::ClusterGatewayRef;
use crate::world::ObjectKey;

/// The kind and group a drill refers to objects as (the `from` of a ReferenceGrant).
const DRILL_KIND: &str = "FailoverDrill";
const MCS_GROUP: &str = meridian_crds::mcs::GROUP;

/// Abort guards with defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Guards {
    /// Percent (0–100).
    pub max_error_percent: Option<f64>,
    pub max_p99: Option<Duration>,
    pub window: Duration,
    pub min_requests: u64,
}

/// A valid drill.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Plan {
    /// The drill's namespace: an empty `gateways` means its Gateways.
    pub namespace: String,
    pub mode: DrillMode,
    pub target: DrillTarget,
    /// Empty = every Gateway of `namespace`.
    pub gateways: Vec<ObjectKey>,
    /// Empty = every backend.
    pub imports: Vec<ObjectKey>,
    pub duration: Duration,
    pub guards: Guards,
}

/// Why a drill cannot run: the `Accepted=False` reason and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    fn invalid(message: String) -> Self {
        Self {
            reason: d::REASON_INVALID,
            message,
        }
    }
}

/// Checks and defaults a spec. `namespace` is the drill's (default of scope refs);
/// `max_duration` is the controller's cap of `spec.duration` (`--drill-max-duration`, at most
/// [`d::MAX_DURATION`]). Every problem of the spec is named in one refusal; a valid
/// kill/blackhole drill without an actuator is refused as unsupported.
pub(crate) fn plan(
    spec: &FailoverDrillSpec,
    namespace: &str,
    have_actuator: bool,
    max_duration: Duration,
) -> Result<Plan, Refusal> {
    let mut problems = Problems::default();
    let target = problems.target(&spec.target);
    // The API server refuses any other mode (the CRD's enum), so there is none to report.
    let mode = spec.mode.unwrap_or_default();
    let duration = problems.duration(
        "duration",
        spec.duration.as_deref(),
        d::DEFAULT_DURATION,
        d::MAX_DURATION,
    );
    let cap = max_duration.min(d::MAX_DURATION);
    if duration > cap && cap < d::MAX_DURATION {
        problems.0.push(format!(
            "duration {} is longer than this controller's maximum of {} (--drill-max-duration)",
            spec.duration.as_deref().unwrap_or_default(),
            minutes(cap)
        ));
    }
    let guards = problems.guards(&spec.guards.clone().unwrap_or_default());
    let scope = spec.scope.as_ref();
    let gateways = problems.scope_refs("gateways", scope.map(|s| &s.gateways), namespace);
    let imports = problems.scope_refs(
        "serviceImports",
        scope.map(|s| &s.service_imports),
        namespace,
    );

    if !problems.0.is_empty() {
        return Err(Refusal::invalid(problems.0.join("; ")));
    }
    if mode != DrillMode::Drain && !have_actuator {
        return Err(Refusal {
            reason: d::REASON_MODE_UNSUPPORTED,
            message: format!(
                "mode {mode} needs Meridian-owned backends (e.g. `meridian up`), which this \
                 controller does not have; only mode drain works here"
            ),
        });
    }
    Ok(Plan {
        namespace: namespace.to_string(),
        mode,
        target,
        gateways,
        imports,
        duration,
        guards,
    })
}

/// `15m` for whole minutes, else seconds.
fn minutes(d: Duration) -> String {
    if d.subsec_nanos() == 0 && d.as_secs().is_multiple_of(60) {
        format!("{}m", d.as_secs() / 60)
    } else {
        super::traffic::humantime(d)
    }
}

/// The problems of a spec so far, in field order. Each check notes what is wrong and goes on
/// with a default, so that one refusal names them all.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    /// `spec.target`: set fields must not be blank, and one must be set.
    fn target(&mut self, t: &DrillTargetSpec) -> DrillTarget {
        let mut field = |name: &str, v: &Option<String>| match v {
            Some(s) if s.trim().is_empty() => {
                self.0.push(format!("target.{name} must not be empty"));
                None
            }
            other => other.clone(),
        };
        let target = DrillTarget {
            cluster: field("cluster", &t.cluster),
            region: field("region", &t.region),
            zone: field("zone", &t.zone),
        };
        if target.cluster.is_none() && target.region.is_none() && target.zone.is_none() {
            self.0
                .push("target needs at least one of cluster, region, zone".into());
        }
        target
    }

    /// A duration field: `default` when absent, or when invalid, zero or over `max` (noted).
    fn duration(
        &mut self,
        field: &str,
        v: Option<&str>,
        default: Duration,
        max: Duration,
    ) -> Duration {
        let Some(s) = v else { return default };
        match parse_duration(s) {
            Ok(d) if d.is_zero() => {
                self.0.push(format!("{field} must be more than 0"));
                default
            }
            Ok(d) if d > max => {
                self.0
                    .push(format!("{field} {s} is longer than the maximum {max:?}"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.0.push(format!("{field}: {e}"));
                default
            }
        }
    }

    /// `spec.guards` with defaults applied.
    fn guards(&mut self, g: &DrillGuards) -> Guards {
        let window = self.duration(
            "guards.window",
            g.window.as_deref(),
            d::DEFAULT_WINDOW,
            d::MAX_WINDOW,
        );
        let max_p99 = g.max_p99_latency.as_deref().map(|s| {
            self.duration(
                "guards.maxP99Latency",
                Some(s),
                Duration::ZERO,
                d::MAX_WINDOW,
            )
        });
        if window < Duration::from_secs(1) {
            self.0.push(format!(
                "guards.window {window:?} is shorter than 1s (guards are evaluated every second)"
            ));
        }
        let max_error_percent = g.max_error_percent.as_ref().and_then(|v| {
            parse_percent(v)
                .map_err(|e| self.0.push(e.to_string()))
                .ok()
        });
        Guards {
            max_error_percent,
            max_p99: max_p99.filter(|d| !d.is_zero()),
            window,
            min_requests: g.min_requests.unwrap_or(d::DEFAULT_MIN_REQUESTS),
        }
    }

    /// `spec.scope.<what>`: namespaced keys (the drill's namespace by default), without
    /// repeats.
    fn scope_refs(
        &mut self,
        what: &str,
        list: Option<&Vec<DrillObjectRef>>,
        namespace: &str,
    ) -> Vec<ObjectKey> {
        let mut out: Vec<ObjectKey> = Vec::new();
        for r in list.into_iter().flatten() {
            let ns = r.namespace.as_deref().unwrap_or(namespace);
            if r.name.is_empty() || ns.is_empty() {
                self.0
                    .push(format!("scope.{what}: every entry needs a name"));
                continue;
            }
            let key = ObjectKey::new(ns, &r.name);
            if !out.contains(&key) {
                out.push(key);
            }
        }
        out
    }
}

/// Why `guards.maxErrorPercent` is invalid.
#[derive(Debug, PartialEq, thiserror::Error)]
pub(crate) enum PercentError {
    /// A string that is not a decimal number.
    #[error("guards.maxErrorPercent {0:?} is not a number (e.g. 1 or \"0.5\")")]
    NotANumber(String),
    /// Outside 0–100 (or not finite).
    #[error("guards.maxErrorPercent {0} is not between 0 and 100")]
    OutOfRange(f64),
}

/// `maxErrorPercent`: an integer or a decimal string, 0–100.
fn parse_percent(v: &IntOrString) -> Result<f64, PercentError> {
    let p = match v {
        IntOrString::Int(i) => f64::from(*i),
        IntOrString::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| PercentError::NotANumber(s.clone()))?,
    };
    if !p.is_finite() || !(0.0..=100.0).contains(&p) {
        return Err(PercentError::OutOfRange(p));
    }
    Ok(p)
}

/// A plan checked against the published snapshots.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Resolved {
    /// The Gateways the drill concerns, named (an empty scope resolved to the Gateways of the
    /// drill's namespace published now).
    pub gateways: Vec<ObjectKey>,
    /// The drain a `drain` drill publishes.
    pub drain: Drain,
    /// Backend names the drain covers (empty = all), for the status message.
    pub backends: Vec<String>,
}

/// The name translation gives a ServiceImport backend with a port (`BackendRef::display`).
pub(crate) fn is_import_backend(backend: &str, import: &ObjectKey) -> bool {
    backend
        .strip_prefix(&format!("{}/{}:", import.namespace, import.name))
        .and_then(|rest| rest.strip_suffix(" (ServiceImport)"))
        .is_some_and(|port| port.parse::<u16>().is_ok())
}

/// Whether a Gateway (`namespace`, `name`) is in the plan's scope: one it names, or with
/// none named, one of the drill's namespace.
pub(crate) fn gateway_in_scope(plan: &Plan, namespace: &str, name: &str) -> bool {
    if plan.gateways.is_empty() {
        return namespace == plan.namespace;
    }
    plan.gateways
        .iter()
        .any(|k| k.namespace == namespace && k.name == name)
}

/// What a waiting or running drill may touch, for the run slot: drills whose footprints
/// overlap do not run at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Footprint {
    /// The drill's namespace (also what an empty `gateways` covers).
    pub namespace: String,
    /// Named Gateways; empty = every Gateway of `namespace`.
    pub gateways: Vec<ObjectKey>,
    /// Named ServiceImports.
    pub imports: Vec<ObjectKey>,
    /// Kill and blackhole act on the backends of a whole locality, whichever Gateway routes
    /// to them: such a drill overlaps every other.
    pub exclusive: bool,
}

impl Footprint {
    pub(crate) fn of(plan: &Plan) -> Self {
        Self {
            namespace: plan.namespace.clone(),
            gateways: plan.gateways.clone(),
            imports: plan.imports.clone(),
            exclusive: plan.mode != DrillMode::Drain,
        }
    }

    /// Whether the two drills could touch the same Gateway or ServiceImport. Names count
    /// across clusters: a drain applies to the Gateway of that name in every cluster.
    pub(crate) fn overlaps(&self, other: &Self) -> bool {
        if self.exclusive || other.exclusive {
            return true;
        }
        let covers = |f: &Self, k: &ObjectKey| {
            if f.gateways.is_empty() {
                k.namespace == f.namespace
            } else {
                f.gateways.contains(k)
            }
        };
        let gateways = match (self.gateways.is_empty(), other.gateways.is_empty()) {
            (true, true) => self.namespace == other.namespace,
            (true, false) => other.gateways.iter().any(|k| covers(self, k)),
            (false, _) => self.gateways.iter().any(|k| covers(other, k)),
        };
        gateways || self.imports.iter().any(|k| other.imports.contains(k))
    }
}

/// Checks that every object of another namespace the scope names is granted to FailoverDrills
/// of the drill's namespace by a ReferenceGrant in the object's namespace (`grants`: those of
/// the drill's cluster). The refusal (`RefNotPermitted`) names each ungranted object and the
/// grant that would allow it.
pub(crate) fn check_grants(
    plan: &Plan,
    grants: &BTreeMap<ObjectKey, Arc<ReferenceGrant>>,
) -> Result<(), Refusal> {
    let from = RefFrom {
        group: meridian_crds::meridian::GROUP,
        kind: DRILL_KIND,
        namespace: &plan.namespace,
    };
    let refs = plan
        .gateways
        .iter()
        .map(|k| (GATEWAY_GROUP, "Gateway", k))
        .chain(plan.imports.iter().map(|k| (MCS_GROUP, "ServiceImport", k)));
    let mut missing: Vec<String> = Vec::new();
    let mut namespaces: BTreeSet<&str> = BTreeSet::new();
    for (group, kind, k) in refs {
        let to = RefTo {
            group,
            kind,
            namespace: &k.namespace,
            name: &k.name,
        };
        if !permits_in(grants, from, to) {
            namespaces.insert(&k.namespace);
            missing.push(format!(
                "{kind} {k} (a ReferenceGrant in namespace {} with from {{group: {}, kind: \
                 {DRILL_KIND}, namespace: {}}} and to {{group: {group}, kind: {kind}, name: {}}} \
                 would allow it)",
                k.namespace,
                meridian_crds::meridian::GROUP,
                plan.namespace,
                k.name
            ));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let namespaces: Vec<&str> = namespaces.into_iter().collect();
    Err(Refusal {
        reason: d::REASON_REF_NOT_PERMITTED,
        message: format!(
            "a drill in namespace {} may only target namespace(s) {} with a ReferenceGrant \
             there; not granted: {}",
            plan.namespace,
            namespaces.join(", "),
            missing.join("; ")
        ),
    })
}

/// The scoped Gateways in every cluster's published snapshot.
pub(crate) fn scoped_gateways(
    plan: &Plan,
    published: &BTreeMap<String, Arc<Snapshot>>,
) -> Vec<ClusterGatewayRef> {
    let mut out = Vec::new();
    for (cluster, snap) in published {
        for g in &snap.gateways {
            if gateway_in_scope(plan, &g.namespace, &g.name) {
                out.push(ClusterGatewayRef::new(
                    cluster.clone(),
                    &g.namespace,
                    &g.name,
                ));
            }
        }
    }
    out
}

fn backends_of<'a>(snap: &'a Snapshot, plan: &Plan) -> Vec<&'a Backend> {
    snap.gateways
        .iter()
        .filter(|g| gateway_in_scope(plan, &g.namespace, &g.name))
        .flat_map(|g| &g.listeners)
        .flat_map(|l| &l.routes)
        .flat_map(|r| &r.rules)
        .flat_map(|r| &r.backends)
        .collect()
}

/// Checks the plan against the published snapshots and builds its drain: the scoped
/// Gateways are published, the scoped ServiceImports are backends of their routes, and the
/// target matches one of their endpoints.
pub(crate) fn resolve(
    plan: &Plan,
    drill: &str,
    published: &BTreeMap<String, Arc<Snapshot>>,
) -> Result<Resolved, Refusal> {
    check_gateways_published(plan, published)?;
    let all: Vec<&Backend> = published
        .values()
        .flat_map(|s| backends_of(s, plan))
        .collect();
    let backends = import_backends(plan, &all)?;
    // Never an empty list: that would drain the Gateways of every namespace.
    let gateways: Vec<ObjectKey> = if plan.gateways.is_empty() {
        let named: BTreeSet<ObjectKey> = scoped_gateways(plan, published)
            .into_iter()
            .map(|g| ObjectKey::new(&g.gateway.namespace, &g.gateway.name))
            .collect();
        named.into_iter().collect()
    } else {
        plan.gateways.clone()
    };
    let drain = Drain {
        drill: drill.to_string(),
        cluster: plan.target.cluster.clone(),
        region: plan.target.region.clone(),
        zone: plan.target.zone.clone(),
        gateways: gateways.iter().map(ToString::to_string).collect(),
        backends: backends.clone(),
    };
    check_target_matches(plan, &drain, &all)?;
    Ok(Resolved {
        gateways,
        drain,
        backends,
    })
}

/// Some Gateway of the drill's namespace is published (unscoped), or every scoped one is.
fn check_gateways_published(
    plan: &Plan,
    published: &BTreeMap<String, Arc<Snapshot>>,
) -> Result<(), Refusal> {
    let gws = scoped_gateways(plan, published);
    if gws.is_empty() && plan.gateways.is_empty() {
        return Err(Refusal::invalid(format!(
            "no Gateway of Meridian's GatewayClasses in namespace {} is published in any member \
             cluster: nothing to drill (an empty scope.gateways means the drill's own namespace; \
             name Gateways of other namespaces there, with a ReferenceGrant in their namespace)",
            plan.namespace
        )));
    }
    let missing: Vec<String> = plan
        .gateways
        .iter()
        .filter(|k| {
            !gws.iter()
                .any(|g| g.gateway.namespace == k.namespace && g.gateway.name == k.name)
        })
        .map(ToString::to_string)
        .collect();
    if !missing.is_empty() {
        return Err(Refusal::invalid(format!(
            "scope.gateways: no member cluster has a Gateway of Meridian's GatewayClasses \
             named {}",
            missing.join(" or ")
        )));
    }
    Ok(())
}

/// The backend names of the scoped ServiceImports (empty: every backend); each must be a
/// backend of some scoped route.
fn import_backends(plan: &Plan, all: &[&Backend]) -> Result<Vec<String>, Refusal> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    for import in &plan.imports {
        let found: Vec<&str> = all
            .iter()
            .map(|b| b.name.as_str())
            .filter(|n| is_import_backend(n, import))
            .collect();
        if found.is_empty() {
            return Err(Refusal::invalid(format!(
                "scope.serviceImports: {import} is not a backend of any route of the scoped \
                 Gateways"
            )));
        }
        names.extend(found.into_iter().map(str::to_string));
    }
    Ok(names.into_iter().collect())
}

/// The drain matches at least one endpoint of the scoped backends; otherwise the refusal
/// lists the localities seen (a drill that would drain nothing must not "succeed").
fn check_target_matches(plan: &Plan, drain: &Drain, all: &[&Backend]) -> Result<(), Refusal> {
    let eps: Vec<&Endpoint> = all
        .iter()
        .filter(|b| drain.backends.is_empty() || drain.backends.contains(&b.name))
        .flat_map(|b| match &b.target {
            BackendTarget::Endpoints { endpoints, .. } => endpoints.as_slice(),
            BackendTarget::Invalid { .. } => &[],
        })
        .collect();
    if eps.iter().any(|e| drain.matches(e)) {
        return Ok(());
    }
    let seen: BTreeSet<String> = eps
        .iter()
        .map(|e| format!("{}/{}/{}", e.cluster, e.region, e.zone))
        .collect();
    let seen: Vec<String> = seen.into_iter().take(10).collect();
    Err(Refusal::invalid(format!(
        "target {} matches no endpoint of the scoped backends (endpoint localities \
         cluster/region/zone: {})",
        plan.target,
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.join(", ")
        }
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::Grants;
    use meridian_crds::meridian::FailoverDrill;
    use meridian_model::snapshot::{
        BackendProtocol, Gateway, Listener, Protocol, Route, Rule, SNAPSHOT_SCHEMA,
    };

    use super::*;

    const MAX: Duration = d::DEFAULT_MAX_DURATION;

    fn spec(yaml: &str) -> FailoverDrillSpec {
        let text = format!(
            "apiVersion: meridian.dev/v1alpha1\nkind: FailoverDrill\nmetadata: {{name: x, namespace: demo}}\nspec:\n{yaml}"
        );
        serde_yaml::from_str::<FailoverDrill>(&text).unwrap().spec
    }

    #[test]
    fn defaults_apply() {
        let p = plan(&spec("  target: {region: us-east}\n"), "demo", false, MAX).unwrap();
        assert_eq!(p.mode, DrillMode::Drain);
        assert_eq!(p.duration, Duration::from_secs(30));
        assert_eq!(
            p.guards,
            Guards {
                max_error_percent: None,
                max_p99: None,
                window: Duration::from_secs(5),
                min_requests: 20
            }
        );
        assert!(p.gateways.is_empty() && p.imports.is_empty());
    }

    #[test]
    fn scope_and_guards_parse() {
        let p = plan(
            &spec(
                "  target: {cluster: east, zone: east-a}\n  scope:\n    gateways: [{name: web}, {namespace: infra, name: gw}]\n    serviceImports: [{name: echo}]\n  duration: 2m\n  guards: {maxErrorPercent: \"0.5\", maxP99Latency: 250ms, window: 3s, minRequests: 5}\n",
            ),
            "demo",
            false,
            MAX,
        )
        .unwrap();
        assert_eq!(
            p.gateways,
            vec![ObjectKey::new("demo", "web"), ObjectKey::new("infra", "gw")]
        );
        assert_eq!(p.imports, vec![ObjectKey::new("demo", "echo")]);
        assert_eq!(p.duration, Duration::from_secs(120));
        assert_eq!(p.guards.max_error_percent, Some(0.5));
        assert_eq!(p.guards.max_p99, Some(Duration::from_millis(250)));
        assert_eq!(p.guards.window, Duration::from_secs(3));
        assert_eq!(p.guards.min_requests, 5);
        let p = plan(
            &spec("  target: {region: r}\n  guards: {maxErrorPercent: 2}\n"),
            "demo",
            false,
            MAX,
        )
        .unwrap();
        assert_eq!(p.guards.max_error_percent, Some(2.0));
    }

    #[test]
    fn every_problem_is_named() {
        let cases = [
            ("  target: {}\n", "target needs at least one of"),
            (
                "  target: {region: \"\"}\n",
                "target.region must not be empty",
            ),
            (
                "  target: {region: r}\n  duration: 2h\n",
                "longer than the maximum",
            ),
            (
                "  target: {region: r}\n  duration: 0s\n",
                "duration must be more than 0",
            ),
            (
                "  target: {region: r}\n  duration: soon\n",
                "duration: invalid duration",
            ),
            (
                "  target: {region: r}\n  guards: {window: 500ms}\n",
                "shorter than 1s",
            ),
            (
                "  target: {region: r}\n  guards: {maxErrorPercent: \"lots\"}\n",
                "is not a number",
            ),
            (
                "  target: {region: r}\n  guards: {maxErrorPercent: 101}\n",
                "not between 0 and 100",
            ),
            (
                "  target: {region: r}\n  guards: {maxP99Latency: fast}\n",
                "guards.maxP99Latency",
            ),
        ];
        for (yaml, want) in cases {
            let err = plan(&spec(yaml), "demo", true, MAX).unwrap_err();
            assert_eq!(err.reason, d::REASON_INVALID, "{yaml}");
            assert!(err.message.contains(want), "{yaml}: {}", err.message);
        }
        // Several problems at once are all reported.
        let err = plan(
            &spec("  target: {}\n  guards: {window: 500ms}\n  duration: y\n"),
            "demo",
            true,
            MAX,
        )
        .unwrap_err();
        assert_eq!(err.message.matches("; ").count(), 2, "{}", err.message);
    }

    #[test]
    fn kill_and_blackhole_need_an_actuator() {
        for mode in ["kill", "blackhole"] {
            let s = spec(&format!("  target: {{region: r}}\n  mode: {mode}\n"));
            let err = plan(&s, "demo", false, MAX).unwrap_err();
            assert_eq!(err.reason, d::REASON_MODE_UNSUPPORTED);
            assert!(
                err.message.contains("only mode drain works"),
                "{}",
                err.message
            );
            assert_eq!(plan(&s, "demo", true, MAX).unwrap().mode.as_str(), mode);
        }
        // Invalid wins over unsupported: fix the spec first.
        let err = plan(&spec("  target: {}\n  mode: kill\n"), "demo", false, MAX).unwrap_err();
        assert_eq!(err.reason, d::REASON_INVALID);
    }

    fn ep(cluster: &str, region: &str) -> Endpoint {
        Endpoint {
            address: "10.0.0.1".parse().unwrap(),
            port: 8080,
            cluster: cluster.into(),
            region: region.into(),
            zone: format!("{cluster}-a"),
            ready: true,
            east_west: false,
        }
    }

    fn snapshot(gws: &[(&str, &str, &str, Vec<Endpoint>)]) -> Arc<Snapshot> {
        let gateways = gws
            .iter()
            .map(|(ns, name, backend, eps)| {
                let rule = Rule {
                    backends: vec![Backend {
                        name: backend.to_string(),
                        weight: 1,
                        filters: vec![],
                        target: BackendTarget::Endpoints {
                            protocol: BackendProtocol::default(),
                            endpoints: eps.clone(),
                            failover: None,
                        },
                        tls: None,
                    }],
                    ..Rule::default()
                };
                let listener = Listener {
                    name: "http".into(),
                    address: "0.0.0.0".parse().unwrap(),
                    port: 80,
                    protocol: Protocol::Http,
                    hostname: None,
                    tls: None,
                    routes: vec![
                        Route {
                            namespace: ns.to_string(),
                            name: "r".into(),
                            kind: Default::default(),
                            created_at: 0,
                            hostnames: vec![],
                            rules: vec![rule],
                        }
                        .into(),
                    ],
                };
                Gateway {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    listeners: vec![listener],
                    served_by_header: false,
                }
            })
            .collect();
        Arc::new(Snapshot {
            schema: SNAPSHOT_SCHEMA.to_string(),
            generation: 1,
            gateways,
            drains: vec![],
            east_west: Vec::new(),
        })
    }

    #[test]
    fn resolve_builds_the_drain_from_published_names() {
        let imp = "demo/echo:80 (ServiceImport)";
        let published = BTreeMap::from([
            (
                "east".to_string(),
                snapshot(&[
                    (
                        "demo",
                        "web",
                        imp,
                        vec![ep("east", "us-east"), ep("west", "us-west")],
                    ),
                    (
                        "demo",
                        "other",
                        "demo/local:80",
                        vec![ep("east", "us-east")],
                    ),
                ]),
            ),
            (
                "west".to_string(),
                snapshot(&[("demo", "web", imp, vec![ep("west", "us-west")])]),
            ),
        ]);
        let p = plan(
            &spec(
                "  target: {region: us-east}\n  scope: {gateways: [{name: web}], serviceImports: [{name: echo}]}\n",
            ),
            "demo",
            false,
            MAX,
        )
        .unwrap();
        let r = resolve(&p, "demo/x", &published).unwrap();
        assert_eq!(r.drain.gateways, vec!["demo/web".to_string()]);
        assert_eq!(r.drain.backends, vec![imp.to_string()]);
        assert_eq!(r.drain.region.as_deref(), Some("us-east"));
        assert_eq!(
            scoped_gateways(&p, &published),
            vec![
                ClusterGatewayRef::new("east", "demo", "web"),
                ClusterGatewayRef::new("west", "demo", "web")
            ]
        );

        // Unscoped: the Gateways of the drill's namespace, named in the drain; every backend.
        let p = plan(&spec("  target: {cluster: east}\n"), "demo", false, MAX).unwrap();
        let r = resolve(&p, "demo/x", &published).unwrap();
        assert_eq!(r.drain.gateways, vec!["demo/other", "demo/web"]);
        assert!(r.drain.backends.is_empty());
        assert_eq!(scoped_gateways(&p, &published).len(), 3);

        let refused = |yaml: &str| {
            let p = plan(&spec(yaml), "demo", false, MAX).unwrap();
            resolve(&p, "demo/x", &published).unwrap_err().message
        };
        let m = refused("  target: {region: us-esat}\n");
        assert!(
            m.contains("matches no endpoint") && m.contains("east/us-east/east-a"),
            "{m}"
        );
        let m = refused(
            "  target: {region: us-east}\n  scope: {gateways: [{name: web}, {name: nope}]}\n",
        );
        assert!(m.contains("named demo/nope"), "{m}");
        let m = refused(
            "  target: {region: us-east}\n  scope: {gateways: [{name: nope}, {name: gone}]}\n",
        );
        assert!(m.ends_with("named demo/nope or demo/gone"), "{m}");
        let m =
            refused("  target: {region: us-east}\n  scope: {serviceImports: [{name: local}]}\n");
        assert!(m.contains("demo/local is not a backend"), "{m}");
        // Gateway demo/other has only us-east endpoints.
        let m = refused("  target: {region: eu}\n  scope: {gateways: [{name: other}]}\n");
        assert!(m.contains("matches no endpoint"), "{m}");
        assert!(
            resolve(
                &plan(&spec("  target: {region: us-east}\n"), "demo", false, MAX).unwrap(),
                "demo/x",
                &BTreeMap::new()
            )
            .unwrap_err()
            .message
            .contains("nothing to drill")
        );
    }

    #[test]
    fn an_empty_scope_is_the_drills_namespace_only() {
        let imp = "a/echo:80 (ServiceImport)";
        let published = BTreeMap::from([(
            "east".to_string(),
            snapshot(&[
                ("a", "gw", imp, vec![ep("east", "us-east")]),
                ("b", "gw", "b/echo:80", vec![ep("east", "us-east")]),
            ]),
        )]);
        let p = plan(&spec("  target: {region: us-east}\n"), "a", false, MAX).unwrap();
        let r = resolve(&p, "a/x", &published).unwrap();
        // Named, never empty: an empty list would drain b's Gateway too.
        assert_eq!(r.drain.gateways, vec!["a/gw"]);
        assert_eq!(r.gateways, vec![ObjectKey::new("a", "gw")]);
        assert!(gateway_in_scope(&p, "a", "gw") && !gateway_in_scope(&p, "b", "gw"));
        assert_eq!(
            scoped_gateways(&p, &published),
            vec![ClusterGatewayRef::new("east", "a", "gw")]
        );
        // b's Gateway is not drained by a's drill, a's is.
        let mut snap = (*published["east"]).clone();
        snap.drains = vec![r.drain.clone()];
        let e = ep("east", "us-east");
        assert!(snap.is_drained("a/gw", imp, &e));
        assert!(!snap.is_drained("b/gw", "b/echo:80", &e));
        // A namespace without Gateways has nothing to drill, whatever other namespaces have.
        let p = plan(&spec("  target: {region: us-east}\n"), "c", false, MAX).unwrap();
        let m = resolve(&p, "c/x", &published).unwrap_err().message;
        assert!(
            m.contains("in namespace c") && m.contains("nothing to drill"),
            "{m}"
        );
    }

    fn grant(
        ns: &str,
        from_ns: &str,
        kind: &str,
        name: Option<&str>,
    ) -> (ObjectKey, Arc<ReferenceGrant>) {
        use gateway_api::referencegrants::{
            ReferenceGrantFrom, ReferenceGrantSpec, ReferenceGrantTo,
        };
        let group = if kind == "Gateway" {
            GATEWAY_GROUP
        } else {
            MCS_GROUP
        };
        let g = ReferenceGrant {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(format!("drills-{kind}")),
                ..Default::default()
            },
            spec: ReferenceGrantSpec {
                from: vec![ReferenceGrantFrom {
                    group: "meridian.dev".into(),
                    kind: "FailoverDrill".into(),
                    namespace: from_ns.into(),
                }],
                to: vec![ReferenceGrantTo {
                    group: group.into(),
                    kind: kind.into(),
                    name: name.map(Into::into),
                }],
            },
        };
        (ObjectKey::new(ns, format!("drills-{kind}")), Arc::new(g))
    }

    #[test]
    fn other_namespaces_need_a_reference_grant() {
        let p = plan(
            &spec(
                "  target: {region: r}\n  scope:\n    gateways: [{name: web}, {namespace: b, name: gw}]\n    serviceImports: [{namespace: c, name: echo}]\n",
            ),
            "a",
            false,
            MAX,
        )
        .unwrap();
        // Own namespace needs nothing; no grants at all: both foreign objects are named.
        let none = Grants::new();
        let err = check_grants(&p, &none).unwrap_err();
        assert_eq!(err.reason, d::REASON_REF_NOT_PERMITTED);
        let m = &err.message;
        assert!(m.contains("namespace(s) b, c"), "{m}");
        assert!(m.contains("Gateway b/gw (a ReferenceGrant in namespace b with from {group: meridian.dev, kind: FailoverDrill, namespace: a} and to {group: gateway.networking.k8s.io, kind: Gateway, name: gw}"), "{m}");
        assert!(
            m.contains("ServiceImport c/echo (a ReferenceGrant in namespace c"),
            "{m}"
        );
        assert!(
            m.contains("group: multicluster.x-k8s.io, kind: ServiceImport"),
            "{m}"
        );
        assert!(!m.contains("a/web"), "{m}");

        // Grants that do not fit: wrong from namespace, wrong kind, another name, wrong place.
        let wrong = Grants::from([
            grant("b", "z", "Gateway", None),
            grant("b", "a", "ServiceImport", None),
            grant("c", "a", "ServiceImport", Some("other")),
            grant("a", "a", "Gateway", None),
        ]);
        let m = check_grants(&p, &wrong).unwrap_err().message;
        assert!(
            m.contains("Gateway b/gw") && m.contains("ServiceImport c/echo"),
            "{m}"
        );

        // The right grants (all names in b, the one name in c).
        let right = Grants::from([
            grant("b", "a", "Gateway", None),
            grant("c", "a", "ServiceImport", Some("echo")),
        ]);
        assert_eq!(check_grants(&p, &right), Ok(()));
        // An unscoped drill needs no grant.
        let own = plan(&spec("  target: {region: r}\n"), "a", false, MAX).unwrap();
        assert_eq!(check_grants(&own, &none), Ok(()));
    }

    #[test]
    fn footprints_overlap_on_a_shared_gateway_or_import() {
        let fp = |ns: &str, yaml: &str| Footprint::of(&plan(&spec(yaml), ns, true, MAX).unwrap());
        let own_a = fp("a", "  target: {region: r}\n");
        let own_b = fp("b", "  target: {region: r}\n");
        let b_gw = fp(
            "c",
            "  target: {region: r}\n  scope: {gateways: [{namespace: b, name: gw}]}\n",
        );
        let b_other = fp(
            "d",
            "  target: {region: r}\n  scope: {gateways: [{namespace: b, name: other}]}\n",
        );
        let echo = |ns: &str| {
            fp(
                ns,
                "  target: {region: r}\n  scope: {gateways: [{namespace: x, name: gw}], serviceImports: [{namespace: s, name: echo}]}\n",
            )
        };
        let kill = fp("k", "  target: {region: r}\n  mode: kill\n");
        assert!(!own_a.overlaps(&own_b));
        assert!(own_b.overlaps(&b_gw) && b_gw.overlaps(&own_b));
        assert!(own_b.overlaps(&b_other));
        assert!(!b_gw.overlaps(&b_other) && !own_a.overlaps(&b_gw));
        assert!(echo("e").overlaps(&echo("f")));
        assert!(kill.overlaps(&own_a) && own_a.overlaps(&kill));
    }

    #[test]
    fn the_controller_caps_the_duration() {
        let s = spec("  target: {region: r}\n  duration: 20m\n");
        let err = plan(&s, "a", false, MAX).unwrap_err();
        assert_eq!(err.reason, d::REASON_INVALID);
        assert_eq!(
            err.message,
            "duration 20m is longer than this controller's maximum of 15m (--drill-max-duration)"
        );
        assert_eq!(
            plan(&s, "a", false, Duration::from_secs(3600))
                .unwrap()
                .duration,
            Duration::from_secs(1200)
        );
        let ok = spec("  target: {region: r}\n  duration: 15m\n");
        assert_eq!(plan(&ok, "a", false, MAX).unwrap().duration, MAX);
        // Over the CRD's 1h: the one message, whatever the controller's cap.
        let m = plan(
            &spec("  target: {region: r}\n  duration: 2h\n"),
            "a",
            false,
            MAX,
        )
        .unwrap_err()
        .message;
        assert!(
            m.contains("longer than the maximum") && !m.contains("--drill-max"),
            "{m}"
        );
    }

    #[test]
    fn east_west_endpoints_count_as_their_locality() {
        // East reaches west (another network) only through west's proxy: a region drill of
        // us-west finds that east-west endpoint, and its drain covers it.
        let imp = "demo/echo:80 (ServiceImport)";
        let mut remote = ep("west", "us-west");
        remote.east_west = true;
        remote.zone = "us-west-proxy-zone".into();
        let published = BTreeMap::from([(
            "east".to_string(),
            snapshot(&[(
                "demo",
                "web",
                imp,
                vec![ep("east", "us-east"), remote.clone()],
            )]),
        )]);
        let p = plan(&spec("  target: {region: us-west}\n"), "demo", false, MAX).unwrap();
        let r = resolve(&p, "demo/x", &published).unwrap();
        assert!(r.drain.matches(&remote));
        assert!(!r.drain.matches(&ep("east", "us-east")));
        // A zone target matches the proxy's zone, not the zones behind it.
        let p = plan(&spec("  target: {zone: west-a}\n"), "demo", false, MAX).unwrap();
        let m = resolve(&p, "demo/x", &published).unwrap_err().message;
        assert!(m.contains("west/us-west/us-west-proxy-zone"), "{m}");
    }

    #[test]
    fn import_backend_names() {
        let k = ObjectKey::new("demo", "echo");
        assert!(is_import_backend("demo/echo:80 (ServiceImport)", &k));
        assert!(!is_import_backend("demo/echo:80", &k));
        assert!(!is_import_backend("demo/echo2:80 (ServiceImport)", &k));
        assert!(!is_import_backend("demo/echo: (ServiceImport)", &k));
    }
}
