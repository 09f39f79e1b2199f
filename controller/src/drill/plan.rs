//! A drill's spec, checked and defaulted: what the runner will do, or why it cannot.
//!
//! Validation is in two steps. [`plan`] needs only the spec (every problem is listed in one
//! message, `Accepted=False/Invalid`; a kill/blackhole drill without an actuator is
//! `ModeUnsupported`). [`resolve`] then checks the spec against what the controller publishes
//! right before the drill starts: the scoped Gateways must be Meridian's, the scoped
//! ServiceImports must be backends of their routes, and the target must match at least one of
//! their endpoints — a drill that would drain nothing is refused instead of "succeeding".

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use meridian_crds::meridian::{
    DrillGuards, DrillObjectRef, DrillTargetSpec, FailoverDrillSpec, IntOrString, drill as d,
    parse_duration,
};
use meridian_model::Snapshot;
use meridian_model::snapshot::{Backend, BackendTarget, Drain, Endpoint};

use super::{DrillMode, DrillTarget};
use crate::translate::ClusterGatewayRef;
use crate::world::ObjectKey;

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
    pub mode: DrillMode,
    pub target: DrillTarget,
    /// Empty = every Gateway.
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

/// Checks and defaults a spec. `namespace` is the drill's (default of scope refs). Every
/// problem of the spec is named in one refusal; a valid kill/blackhole drill without an
/// actuator is refused as unsupported.
pub(crate) fn plan(
    spec: &FailoverDrillSpec,
    namespace: &str,
    have_actuator: bool,
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
        mode,
        target,
        gateways,
        imports,
        duration,
        guards,
    })
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

/// Whether a Gateway (`namespace`, `name`) is in the plan's scope.
pub(crate) fn gateway_in_scope(plan: &Plan, namespace: &str, name: &str) -> bool {
    plan.gateways.is_empty()
        || plan
            .gateways
            .iter()
            .any(|k| k.namespace == namespace && k.name == name)
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
    let drain = Drain {
        drill: drill.to_string(),
        cluster: plan.target.cluster.clone(),
        region: plan.target.region.clone(),
        zone: plan.target.zone.clone(),
        gateways: plan.gateways.iter().map(ToString::to_string).collect(),
        backends: backends.clone(),
    };
    check_target_matches(plan, &drain, &all)?;
    Ok(Resolved { drain, backends })
}

/// Some Gateway is published (unscoped), or every scoped one is.
fn check_gateways_published(
    plan: &Plan,
    published: &BTreeMap<String, Arc<Snapshot>>,
) -> Result<(), Refusal> {
    let gws = scoped_gateways(plan, published);
    if gws.is_empty() && plan.gateways.is_empty() {
        return Err(Refusal::invalid(
            "no Gateway of Meridian's GatewayClasses is published in any member cluster: nothing \
             to drill"
                .to_string(),
        ));
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
    use meridian_crds::meridian::FailoverDrill;
    use meridian_model::snapshot::{
        BackendProtocol, Gateway, Listener, Protocol, Route, Rule, SNAPSHOT_SCHEMA,
    };

    use super::*;

    fn spec(yaml: &str) -> FailoverDrillSpec {
        let text = format!(
            "apiVersion: meridian.dev/v1alpha1\nkind: FailoverDrill\nmetadata: {{name: x, namespace: demo}}\nspec:\n{yaml}"
        );
        serde_yaml::from_str::<FailoverDrill>(&text).unwrap().spec
    }

    #[test]
    fn defaults_apply() {
        let p = plan(&spec("  target: {region: us-east}\n"), "demo", false).unwrap();
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
            let err = plan(&spec(yaml), "demo", true).unwrap_err();
            assert_eq!(err.reason, d::REASON_INVALID, "{yaml}");
            assert!(err.message.contains(want), "{yaml}: {}", err.message);
        }
        // Several problems at once are all reported.
        let err = plan(
            &spec("  target: {}\n  guards: {window: 500ms}\n  duration: y\n"),
            "demo",
            true,
        )
        .unwrap_err();
        assert_eq!(err.message.matches("; ").count(), 2, "{}", err.message);
    }

    #[test]
    fn kill_and_blackhole_need_an_actuator() {
        for mode in ["kill", "blackhole"] {
            let s = spec(&format!("  target: {{region: r}}\n  mode: {mode}\n"));
            let err = plan(&s, "demo", false).unwrap_err();
            assert_eq!(err.reason, d::REASON_MODE_UNSUPPORTED);
            assert!(
                err.message.contains("only mode drain works"),
                "{}",
                err.message
            );
            assert_eq!(plan(&s, "demo", true).unwrap().mode.as_str(), mode);
        }
        // Invalid wins over unsupported: fix the spec first.
        let err = plan(&spec("  target: {}\n  mode: kill\n"), "demo", false).unwrap_err();
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
                    routes: vec![Route {
                        namespace: ns.to_string(),
                        name: "r".into(),
                        created_at: 0,
                        hostnames: vec![],
                        rules: vec![rule],
                    }],
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

        // Unscoped: every Gateway, every backend, empty lists in the drain.
        let p = plan(&spec("  target: {cluster: east}\n"), "demo", false).unwrap();
        let r = resolve(&p, "demo/x", &published).unwrap();
        assert!(r.drain.gateways.is_empty() && r.drain.backends.is_empty());
        assert_eq!(scoped_gateways(&p, &published).len(), 3);

        let refused = |yaml: &str| {
            let p = plan(&spec(yaml), "demo", false).unwrap();
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
                &plan(&spec("  target: {region: us-east}\n"), "demo", false).unwrap(),
                "demo/x",
                &BTreeMap::new()
            )
            .unwrap_err()
            .message
            .contains("nothing to drill")
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
        let p = plan(&spec("  target: {region: us-west}\n"), "demo", false).unwrap();
        let r = resolve(&p, "demo/x", &published).unwrap();
        assert!(r.drain.matches(&remote));
        assert!(!r.drain.matches(&ep("east", "us-east")));
        // A zone target matches the proxy's zone, not the zones behind it.
        let p = plan(&spec("  target: {zone: west-a}\n"), "demo", false).unwrap();
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
