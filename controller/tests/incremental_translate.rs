//! Property: incremental translation equals the full translation after every step.
//!
//! A random world of two member clusters (generators shared with `fuzz_translate`, in
//! `translate_worlds`) is translated in full through [`Incremental::full`]; then a random
//! sequence of batches of changes is applied — Gateways (admitting ListenerSets or not),
//! ListenerSets adding listeners to them (new ports, and ports and hostnames of the Gateway's own
//! or of other sets, which lose), HTTPRoutes (some attaching to a ListenerSet), GRPCRoutes
//! (sharing names with the HTTPRoutes, and with their hostnames), Services, EndpointSlices,
//! ReferenceGrants, FailoverPolicies and ServiceExports added, replaced and deleted, namespaces
//! relabelled, the TLS Secret broken and mended, the status we computed landing on its object
//! (the echo of our own writes), the data plane reporting another state for a Gateway, a status
//! of ours becoming (un)confirmed. After every batch, [`Incremental::update`] with the batch's
//! changes must give exactly what [`translate`] gives for the same world: snapshots equal byte
//! for byte once serialized, the same status updates in the same order, the same
//! `endpoints_refused`. The seed is fixed; `PROPTEST_CASES` lengthens the run.
//!
//! The same run checks the publish path's hint: the snapshots before a batch (shared with the
//! patched ones, as the reconcile loop's published copies are) against the patched ones, with
//! the Gateways the pass reports as touched — the route-level patch built from the hint
//! (`diff_since`), the endpoint delta from the hint, and the hint narrowed by
//! `share_unchanged` all equal what comparing the whole snapshots gives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod translate_worlds;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use gateway_api::backendtlspolicies::BackendTlsPolicy;
use gateway_api::gateways::{Gateway, GatewayStatus};
use gateway_api::grpcroutes::{GrpcRoute, GrpcRouteStatus};
use gateway_api::httproutes::{HttpRoute, HttpRouteStatus};
use gateway_api::listenersets::{ListenerSet, ListenerSetStatus};
use gateway_api::referencegrants::ReferenceGrant;
use gateway_api::tlsroutes::{TlsRoute, TlsRouteStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use meridian_controller::translate::{
    AddressPolicy, Changes, EastWestListeners, Incremental, MissingRemote,
};
use meridian_controller::{
    ClusterGatewayRef, ClusterState, Indexed, Kind, ObjectKey, ProgrammedState, Revision,
    StatusKind, TranslateConfig, World, translate,
};
use meridian_crds::mcs::ServiceExport;
use meridian_crds::meridian::FailoverPolicy;
use meridian_distribution::protocol::{endpoint_delta, endpoint_delta_since};
use meridian_model::Snapshot;
use meridian_model::patch::{Touched, diff, diff_since, share_unchanged};
use meridian_model::snapshot::BackendTarget;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use translate_worlds::*;

const WEST: &str = "west";

/// The Gateway annotation translation reads (`x-meridian-served-by`).
const SERVED_BY_ANNOTATION: &str = "meridian.dev/served-by-header";

/// One change to the world or to what the data plane and the status writer report.
#[derive(Clone, Debug)]
enum Step {
    /// Add or replace an object (JSON, dropped if it does not decode).
    Put { west: bool, object: Value },
    /// Delete the `pick`-th (modulo) object the test put into that cluster.
    Delete { west: bool, pick: usize },
    /// Set or remove the `team` label of a namespace.
    Label {
        west: bool,
        ns: &'static str,
        team: Option<&'static str>,
    },
    /// Break or mend the `infra/cert` TLS Secret.
    Secret { west: bool, valid: bool },
    /// The `pick`-th pending status update lands on its object.
    Echo { pick: usize },
    /// The data plane reports another state for the `pick`-th Gateway; states 4 and 5 take
    /// its address away (no proxy serves it yet, as at a cold start: no snapshot entry) and give
    /// it back.
    Programmed { pick: usize, state: u8 },
    /// The `pick`-th route or Gateway status becomes unconfirmed (or confirmed again); with
    /// `pending`, the `pick`-th object with a pending status update (a write of ours whose echo
    /// may land, or a settling report).
    Unconfirmed { pick: usize, pending: bool },
    /// The `pick`-th route or Gateway gets a new version that differs in what translation does
    /// not read (labels; resourceVersion and managedFields), in annotations, or in its status
    /// (cleared; another controller's entry added): noted as the watcher classifies it.
    Revise { pick: usize, what: u8 },
}

fn put() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => gateway(),
        3 => (0usize..6).prop_flat_map(http_route),
        2 => (0usize..4).prop_flat_map(grpc_route),
        1 => service(),
        1 => (0usize..4).prop_flat_map(endpoint_slice),
        1 => (0usize..3).prop_flat_map(reference_grant),
        6 => focused(),
    ]
}

/// Objects that reach each other more often than the fuzz vocabularies make them: routes of
/// the Gateways every world has with Service and ServiceImport backends across namespaces,
/// those Services with ready endpoints, exports of them, grants for those references, and
/// policies targeting them.
fn focused() -> impl Strategy<Value = Value> {
    let backend = (
        select(&["web", "api"][..]),
        proptest::option::of(select(&["app", "web"][..])),
        any::<bool>(),
        proptest::bool::weighted(0.2),
    )
        .prop_map(|(name, ns, import, mirror)| {
            let (group, kind) = if import {
                ("multicluster.x-k8s.io", "ServiceImport")
            } else {
                ("", "Service")
            };
            let r = obj(vec![
                ("name", Some(json!(name))),
                ("namespace", ns.map(|n| json!(n))),
                ("group", Some(json!(group))),
                ("kind", Some(json!(kind))),
                ("port", Some(json!(80))),
            ]);
            if mirror {
                json!({"name": "web", "port": 80, "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": r}}]})
            } else {
                r
            }
        });
    let route = (
        0usize..6,
        select(&["app", "web"][..]),
        select(&["gw", "gw2", "gw2", "ls-0"][..]),
        proptest::option::of(select(&["http", "https", "extra"][..])),
        prop::collection::vec(backend, 1..3),
        1i64..3,
        // GRPCRoutes of the same names and hostname, older or newer: the two kinds conflict.
        proptest::option::weighted(0.3, 0i64..3),
    )
        .prop_map(|(i, ns, gw, section, backends, generation, grpc_age)| {
            let mut m = meta(Some(ns), &format!("route-{i}"), generation);
            if let Some(age) = grpc_age {
                m["creationTimestamp"] = json!(format!("1970-01-01T00:1{}:40Z", 5 + age));
            }
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": if grpc_age.is_some() { "GRPCRoute" } else { "HTTPRoute" },
                "metadata": m,
                "spec": {
                    "parentRefs": [obj(vec![
                        ("name", Some(json!(gw))),
                        ("namespace", Some(json!(if gw == "ls-0" { "app" } else { "infra" }))),
                        ("kind", gw.starts_with("ls-").then(|| json!("ListenerSet"))),
                        ("sectionName", section.map(|s| json!(s))),
                    ])],
                    "hostnames": ["a.example.com"],
                    "rules": [{"backendRefs": backends}],
                },
            })
        });
    let service =
        (select(&["app", "web"][..]), select(&["web", "api"][..])).prop_map(|(ns, name)| {
            json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(Some(ns), name, 1),
               "spec": {"ports": [{"name": "http", "port": 80}]}})
        });
    // In the namespaces of the focused Services, so that served routes get endpoints.
    let slice = (
        select(&["app", "web"][..]),
        select(&["web", "api"][..]),
        0usize..2,
        select(&["10.1.0.1", "10.1.0.2", "127.0.0.1"][..]),
        any::<bool>(),
    )
        .prop_map(|(ns, svc, i, ip, ready)| {
            let mut m = meta(Some(ns), &format!("{svc}-f{i}"), 1);
            m["labels"] = json!({"kubernetes.io/service-name": svc});
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": m,
                   "addressType": "IPv4",
                   "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}}],
                   "ports": [{"name": "http", "port": 8080}]})
        });
    let grant = (
        0usize..3,
        select(NAMESPACES),
        select(NAMESPACES),
        select(&["HTTPRoute", "TLSRoute", "Gateway", "ListenerSet"][..]),
        select(&[("", "Service"), ("multicluster.x-k8s.io", "ServiceImport"), ("", "Secret")][..]),
        proptest::option::of(select(&["web", "api", "cert"][..])),
    )
        .prop_map(|(i, ns, from_ns, from_kind, (group, kind), name)| {
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1beta1",
                "kind": "ReferenceGrant",
                "metadata": meta(Some(ns), &format!("fgrant-{i}"), 1),
                "spec": {
                    "from": [{"group": "gateway.networking.k8s.io", "kind": from_kind, "namespace": from_ns}],
                    "to": [obj(vec![("group", Some(json!(group))), ("kind", Some(json!(kind))), ("name", name.map(|n| json!(n)))])],
                },
            })
        });
    let gateway = (
        any::<bool>(),
        any::<bool>(),
        select(&[0u8, 1, 1, 2][..]),
        proptest::option::of(select(&["All", "Same", "None", "Selector"][..])),
    )
        .prop_map(|(selector, https, tls, allowed)| {
            let from = if selector {
                json!({"from": "Selector", "selector": {"matchLabels": {"team": "web"}}})
            } else {
                json!({"from": "All"})
            };
            let mut listeners = vec![json!({"name": "http", "port": 80, "protocol": "HTTP",
                                        "allowedRoutes": {"namespaces": from}})];
            if https {
                listeners.push(json!({"name": "https", "port": 443, "protocol": "HTTPS",
                                  "tls": {"certificateRefs": [{"name": "cert"}]}}));
            }
            // A passthrough listener (TLSRoutes attach), or one in the unsupported Terminate mode.
            match tls {
                1 => listeners.push(json!({"name": "tls", "port": 8443, "protocol": "TLS",
                                       "hostname": "*.example.com",
                                       "tls": {"mode": "Passthrough"},
                                       "allowedRoutes": {"namespaces": {"from": "All"}}})),
                2 => listeners.push(json!({"name": "tls", "port": 8443, "protocol": "TLS",
                                       "tls": {"mode": "Terminate",
                                               "certificateRefs": [{"name": "cert"}]}})),
                _ => {}
            }
            let mut spec = json!({"gatewayClassName": CLASS, "listeners": listeners});
            if let Some(from) = allowed {
                spec["allowedListeners"] = json!({"namespaces": {"from": from,
                    "selector": {"matchLabels": {"team": "web"}}}});
            }
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": meta(Some("infra"), "gw2", 1),
                "spec": spec,
            })
        });
    // ListenerSets naming gw2 (or gw, or a Gateway that does not exist: parentRefs move): a
    // new port, or the port of one of gw2's own listeners (same hostname or protocol: it
    // loses), older or newer than each other; sometimes a second listener (conflicts inside the
    // set), an HTTPS one with the `infra/cert` Secret (cross-namespace from `app`/`web`: a
    // ReferenceGrant `from: ListenerSet` decides), routes admitted by namespace selector.
    let set_listener = (
        select(
            &[
                (8080, "HTTP", None),
                (80, "HTTP", None),
                (80, "HTTP", Some("a.example.com")),
                (443, "HTTP", None),
                (8080, "HTTP", Some("*.example.com")),
                (8443, "HTTPS", Some("a.example.com")),
                (443, "HTTPS", None),
            ][..],
        ),
        proptest::bool::weighted(0.25),
    )
        .prop_map(|((port, protocol, hostname), selector)| {
            let from = if selector {
                json!({"from": "Selector", "selector": {"matchLabels": {"team": "web"}}})
            } else {
                json!({"from": "All"})
            };
            obj(vec![
                (
                    "name",
                    Some(json!(if protocol == "HTTPS" {
                        "secure"
                    } else {
                        "extra"
                    })),
                ),
                ("port", Some(json!(port))),
                ("protocol", Some(json!(protocol))),
                ("hostname", hostname.map(|h| json!(h))),
                (
                    "tls",
                    (protocol == "HTTPS").then(
                        || json!({"certificateRefs": [{"name": "cert", "namespace": "infra"}]}),
                    ),
                ),
                ("allowedRoutes", Some(json!({"namespaces": from}))),
            ])
        });
    let listener_set = (
        0usize..2,
        select(&["app", "web", "infra"][..]),
        select(&["gw2", "gw2", "gw2", "gw", "gw3"][..]),
        prop::collection::vec(set_listener, 1..3),
        0i64..3,
        1i64..3,
    )
        .prop_map(|(i, ns, gw, mut listeners, age, generation)| {
            // Listener names are unique in a set (the API server refuses a duplicate).
            if listeners.len() == 2 && listeners[0]["name"] == listeners[1]["name"] {
                let name = format!("{}-2", listeners[1]["name"].as_str().unwrap_or_default());
                listeners[1]["name"] = json!(name);
            }
            let mut m = meta(Some(ns), &format!("ls-{i}"), generation);
            m["creationTimestamp"] = json!(format!("1970-01-01T00:1{age}:20Z"));
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "ListenerSet",
                "metadata": m,
                "spec": {"parentRef": {"name": gw, "namespace": "infra"}, "listeners": listeners},
            })
        });
    let policy = (
        0usize..2,
        select(&["app", "web"][..]),
        prop::collection::vec(
            (
                select(
                    &[
                        ("", "Service"),
                        ("multicluster.x-k8s.io", "ServiceImport"),
                        ("gateway.networking.k8s.io", "HTTPRoute"),
                    ][..],
                ),
                select(&["web", "api", "route-0", "route-1", "route-2"][..]),
            ),
            1..3,
        ),
        0i64..3,
    )
        .prop_map(|(i, ns, targets, age)| {
            let mut m = meta(Some(ns), &format!("fpolicy-{i}"), 1);
            m["creationTimestamp"] = json!(format!("1970-01-01T00:2{age}:00Z"));
            let targets: Vec<Value> = targets
                .into_iter()
                .map(|((g, k), n)| json!({"group": g, "kind": k, "name": n}))
                .collect();
            json!({"apiVersion": "meridian.dev/v1alpha1", "kind": "FailoverPolicy", "metadata": m,
                   "spec": {"targetRefs": targets, "retry": {"attempts": 2}}})
        });
    // BackendTLSPolicies on the Services above (whole or by port name, some conflicting, some
    // with a CA ref of the wrong kind or to a ConfigMap that may be missing or broken).
    let tls_policy = (
        0usize..3,
        select(&["app", "web"][..]),
        select(&["web", "api"][..]),
        proptest::option::of(select(&["http", "grpc"][..])),
        select(&[("", "ConfigMap", "ca"), ("", "ConfigMap", "ca2"), ("", "Secret", "ca")][..]),
        0i64..3,
        1i64..3,
    )
        .prop_map(|(i, ns, svc, section, (group, kind, ca), age, generation)| {
            let mut m = meta(Some(ns), &format!("btls-{i}"), generation);
            m["creationTimestamp"] = json!(format!("1970-01-01T00:2{age}:00Z"));
            let target = obj(vec![
                ("group", Some(json!(""))),
                ("kind", Some(json!("Service"))),
                ("name", Some(json!(svc))),
                ("sectionName", section.map(|s| json!(s))),
            ]);
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
                   "metadata": m,
                   "spec": {"targetRefs": [target],
                            "validation": {"hostname": format!("{svc}.example.com"),
                                           "caCertificateRefs": [{"group": group, "kind": kind, "name": ca}]}}})
        });
    let config_map = (
        select(&["app", "web"][..]),
        select(&["ca", "ca2"][..]),
        any::<bool>(),
    )
        .prop_map(|(ns, name, valid)| {
            let pem = if valid {
                "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"
            } else {
                "not a certificate"
            };
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(Some(ns), name, 1),
                   "data": {"ca.crt": pem}})
        });
    // TLSRoutes on gw2's passthrough listener: overlapping hostnames and ages, so that the older
    // route holds a shared hostname and a route with every hostname held is blocked.
    let tls_route = (
        0usize..3,
        select(&["app", "web"][..]),
        proptest::option::of(select(&["tls", "http"][..])),
        prop::collection::vec(
            select(
                &[
                    "a.example.com",
                    "a.example.com",
                    "b.example.com",
                    "*.example.com",
                    "other.org",
                ][..],
            ),
            1..3,
        ),
        prop::collection::vec((select(&["web", "api"][..]), 0u32..3), 1..3),
        0i64..3,
        1i64..3,
    )
        .prop_map(|(i, ns, section, hostnames, backends, age, generation)| {
            let mut m = meta(Some(ns), &format!("tls-{i}"), generation);
            m["creationTimestamp"] = json!(format!("1970-01-01T00:1{age}:00Z"));
            let backends: Vec<Value> = backends
                .into_iter()
                .map(|(name, weight)| json!({"name": name, "port": 80, "weight": weight}))
                .collect();
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "TLSRoute",
                "metadata": m,
                "spec": {
                    "parentRefs": [obj(vec![
                        ("name", Some(json!("gw2"))),
                        ("namespace", Some(json!("infra"))),
                        ("sectionName", section.map(|s| json!(s))),
                    ])],
                    "hostnames": hostnames,
                    "rules": [{"backendRefs": backends}],
                },
            })
        });
    prop_oneof![
        4 => route,
        4 => tls_route,
        2 => gateway,
        3 => listener_set,
        2 => service,
        4 => slice,
        2 => grant,
        1 => service_export(),
        1 => (0usize..2).prop_flat_map(failover_policy),
        2 => policy,
        2 => tls_policy,
        1 => config_map,
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (proptest::bool::weighted(0.3), put()).prop_map(|(west, object)| Step::Put { west, object }),
        3 => (proptest::bool::weighted(0.3), any::<usize>()).prop_map(|(west, pick)| Step::Delete { west, pick }),
        1 => (any::<bool>(), select(NAMESPACES), proptest::option::of(select(&["web", "ops"][..])))
            .prop_map(|(west, ns, team)| Step::Label { west, ns, team }),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(west, valid)| Step::Secret { west, valid }),
        3 => any::<usize>().prop_map(|pick| Step::Echo { pick }),
        1 => (any::<usize>(), 0u8..6).prop_map(|(pick, state)| Step::Programmed { pick, state }),
        2 => (any::<usize>(), any::<bool>())
            .prop_map(|(pick, pending)| Step::Unconfirmed { pick, pending }),
        2 => (any::<usize>(), 0u8..5).prop_map(|(pick, what)| Step::Revise { pick, what }),
    ]
}

/// A world of two clusters (fuzz objects and focused ones) and batches of steps.
type Scenario = (Objects, Objects, Vec<Vec<Step>>);

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        objects(),
        prop::collection::vec(focused(), 0..10),
        objects(),
        prop::collection::vec(focused(), 0..6),
        prop::collection::vec(prop::collection::vec(step(), 1..4), 1..12),
    )
        .prop_map(|(mut east, east_more, mut west, west_more, batches)| {
            east.0.extend(east_more);
            west.0.extend(west_more);
            (east, west, batches)
        })
}

/// The world under test, what the test put into it, and the config overrides of the steps.
struct Harness {
    world: World,
    /// Per cluster, `(kind, key)` of the objects the test put (for deletes).
    put: BTreeMap<&'static str, Vec<(Kind, ObjectKey)>>,
    programmed: BTreeMap<ClusterGatewayRef, ProgrammedState>,
    /// Gateways the data plane gives no address (`Programmed` steps 4 and 5).
    unaddressed: BTreeSet<ClusterGatewayRef>,
    unconfirmed: BTreeMap<String, BTreeSet<(StatusKind, String, String)>>,
    /// The entries of `unconfirmed` toggled since the last [`Harness::config`] (its hint).
    toggled: BTreeMap<String, BTreeSet<(StatusKind, String, String)>>,
    /// EndpointSlice changes go to [`Incremental::refresh_endpoints`] (the reconcile loop's
    /// endpoints pass), as `(cluster, Service)`, instead of into the batch's changes.
    by_refresh: Option<Vec<(&'static str, ObjectKey)>>,
    /// GRPCRoutes an echo step landed a status of ours on, as `(cluster, route)`.
    grpc_echoed: Vec<(String, ObjectKey)>,
    tls_echoed: Vec<(String, ObjectKey)>,
    set_echoed: Vec<(String, ObjectKey)>,
}

fn cluster_name(west: bool) -> &'static str {
    if west { WEST } else { CLUSTER }
}

fn key_of(v: &Value) -> ObjectKey {
    ObjectKey::new(
        v["metadata"]["namespace"].as_str().unwrap_or_default(),
        v["metadata"]["name"].as_str().unwrap_or_default(),
    )
}

fn kind_of(v: &Value) -> Option<Kind> {
    Some(match v["kind"].as_str()? {
        "Gateway" => Kind::Gateway,
        "HTTPRoute" => Kind::HttpRoute,
        "GRPCRoute" => Kind::GrpcRoute,
        "TLSRoute" => Kind::TlsRoute,
        "ListenerSet" => Kind::ListenerSet,
        "Service" => Kind::Service,
        "EndpointSlice" => Kind::EndpointSlice,
        "ReferenceGrant" => Kind::ReferenceGrant,
        "FailoverPolicy" => Kind::FailoverPolicy,
        "ServiceExport" => Kind::ServiceExport,
        "BackendTLSPolicy" => Kind::BackendTlsPolicy,
        "ConfigMap" => Kind::ConfigMap,
        _ => return None,
    })
}

impl Harness {
    fn new(east: &Objects, west: &Objects) -> Self {
        let mut h = Self {
            world: World::new(),
            put: BTreeMap::new(),
            programmed: BTreeMap::new(),
            unaddressed: BTreeSet::new(),
            unconfirmed: BTreeMap::new(),
            toggled: BTreeMap::new(),
            by_refresh: None,
            grpc_echoed: Vec::new(),
            tls_echoed: Vec::new(),
            set_echoed: Vec::new(),
        };
        for (name, objects) in [(CLUSTER, east), (WEST, west)] {
            base_cluster(
                h.world
                    .add_cluster(name, "us-east", vec!["us-east-1a".into()]),
            );
            for v in &objects.0 {
                h.put(name, v, &mut Changes::new());
            }
        }
        h
    }

    fn cluster(&mut self, name: &str) -> &mut ClusterState {
        self.world.cluster_mut(name).unwrap()
    }

    /// Indexes `v` in `cluster`, noting the change (an EndpointSlice's under the Services it
    /// belonged and belongs to).
    fn put(&mut self, cluster: &'static str, v: &Value, changes: &mut Changes) {
        let Some(kind) = kind_of(v) else { return };
        if kind == Kind::FailoverPolicy {
            // The generated policies must decode, or no policy path is ever exercised.
            assert!(
                serde_json::from_value::<FailoverPolicy>(v.clone()).is_ok(),
                "{v}"
            );
        }
        if kind == Kind::BackendTlsPolicy {
            assert!(
                serde_json::from_value::<BackendTlsPolicy>(v.clone()).is_ok(),
                "{v}"
            );
        }
        let key = key_of(v);
        let before = self.cluster(cluster).endpoint_slice_service(&key).cloned();
        let revision = revision_of(self.cluster(cluster), v);
        if !apply(self.cluster(cluster), v) {
            return;
        }
        if revision != Revision::Changed {
            // As the watcher notes it (`watch::apply_mutation`).
            if revision == Revision::Status {
                changes.insert_status(cluster, kind, key.clone());
            }
        } else if kind == Kind::EndpointSlice {
            let after = self.cluster(cluster).endpoint_slice_service(&key).cloned();
            for svc in before.into_iter().chain(after) {
                self.slice_changed(cluster, svc, changes);
            }
        } else {
            changes.insert(cluster, kind, key.clone());
        }
        let put = self.put.entry(cluster).or_default();
        if !put.contains(&(kind, key.clone())) {
            put.push((kind, key));
        }
    }

    fn delete(&mut self, cluster: &'static str, pick: usize, changes: &mut Changes) {
        let Some(put) = self.put.get_mut(cluster).filter(|p| !p.is_empty()) else {
            return;
        };
        let (kind, key) = put.remove(pick % put.len());
        let c = self.cluster(cluster);
        match kind {
            Kind::Gateway => c.delete::<Gateway>(&key),
            Kind::HttpRoute => c.delete::<HttpRoute>(&key),
            Kind::GrpcRoute => c.delete::<GrpcRoute>(&key),
            Kind::TlsRoute => c.delete::<TlsRoute>(&key),
            Kind::ListenerSet => c.delete::<ListenerSet>(&key),
            Kind::Service => c.delete::<Service>(&key),
            Kind::ReferenceGrant => c.delete::<ReferenceGrant>(&key),
            Kind::FailoverPolicy => c.delete::<FailoverPolicy>(&key),
            Kind::ServiceExport => c.delete::<ServiceExport>(&key),
            Kind::BackendTlsPolicy => c.delete::<BackendTlsPolicy>(&key),
            Kind::ConfigMap => c.delete::<ConfigMap>(&key),
            Kind::EndpointSlice => {
                let svc = c.endpoint_slice_service(&key).cloned();
                c.delete::<EndpointSlice>(&key);
                if let Some(svc) = svc {
                    self.slice_changed(cluster, svc, changes);
                }
                return;
            }
            _ => unreachable!("the test puts no {kind:?}"),
        }
        changes.insert(cluster, kind, key);
    }

    /// Notes that the slices of Service `svc` changed: for the refresh, or as a change.
    fn slice_changed(&mut self, cluster: &'static str, svc: ObjectKey, changes: &mut Changes) {
        match &mut self.by_refresh {
            Some(refresh) => refresh.push((cluster, svc)),
            None => changes.insert(cluster, Kind::EndpointSlice, svc),
        }
    }

    /// Gateways of every cluster, in order.
    fn gateways(&self) -> Vec<ClusterGatewayRef> {
        self.world
            .clusters
            .iter()
            .flat_map(|(c, s)| {
                s.gateways()
                    .map(move |(k, _)| ClusterGatewayRef::new(c, &k.namespace, &k.name))
            })
            .collect()
    }

    fn step(
        &mut self,
        step: &Step,
        pending: &[meridian_controller::StatusUpdate],
        changes: &mut Changes,
    ) {
        match step {
            Step::Put { west, object } => self.put(cluster_name(*west), object, changes),
            Step::Delete { west, pick } => self.delete(cluster_name(*west), *pick, changes),
            Step::Label { west, ns, team } => {
                let cluster = cluster_name(*west);
                let mut m = meta(None, ns, 1);
                if let Some(t) = team {
                    m["labels"] = json!({"team": t});
                }
                let n: Namespace = serde_json::from_value(json!({"metadata": m})).unwrap();
                self.cluster(cluster).apply(n);
                changes.insert(cluster, Kind::Namespace, ObjectKey::cluster_scoped(*ns));
            }
            Step::Secret { west, valid } => {
                let cluster = cluster_name(*west);
                self.cluster(cluster).apply(tls_secret("cert", *valid));
                changes.insert(cluster, Kind::Secret, ObjectKey::new("infra", "cert"));
            }
            Step::Echo { pick } => {
                if pending.is_empty() {
                    return;
                }
                let u = &pending[pick % pending.len()];
                let key = ObjectKey::new(u.namespace.clone().unwrap_or_default(), u.name.clone());
                let c = self.world.cluster_mut(&u.cluster).unwrap();
                match u.kind {
                    StatusKind::HttpRoute => {
                        // Deleted earlier in the batch: nothing lands.
                        let Some(r) = c.http_route(&key) else { return };
                        let mut r = r.as_ref().clone();
                        r.status = Some(
                            serde_json::from_value::<HttpRouteStatus>(Value::clone(&u.status))
                                .unwrap(),
                        );
                        r.metadata.resource_version = Some(format!("echo-{pick}"));
                        revise(c, &u.cluster, r, changes);
                    }
                    StatusKind::GrpcRoute => {
                        let Some(r) = c.grpc_route(&key) else { return };
                        let mut r = r.as_ref().clone();
                        r.status = Some(
                            serde_json::from_value::<GrpcRouteStatus>(Value::clone(&u.status))
                                .unwrap(),
                        );
                        r.metadata.resource_version = Some(format!("echo-{pick}"));
                        revise(c, &u.cluster, r, changes);
                        self.grpc_echoed.push((u.cluster.clone(), key));
                    }
                    StatusKind::TlsRoute => {
                        let Some(r) = c.tls_route(&key) else { return };
                        let mut r = r.as_ref().clone();
                        r.status = Some(
                            serde_json::from_value::<TlsRouteStatus>(Value::clone(&u.status))
                                .unwrap(),
                        );
                        r.metadata.resource_version = Some(format!("echo-{pick}"));
                        revise(c, &u.cluster, r, changes);
                        self.tls_echoed.push((u.cluster.clone(), key));
                    }
                    StatusKind::Gateway => {
                        let Some((_, g)) = c.gateways().find(|(k, _)| **k == key) else {
                            return;
                        };
                        let mut g = g.clone();
                        g.status = Some(
                            serde_json::from_value::<GatewayStatus>(Value::clone(&u.status))
                                .unwrap(),
                        );
                        g.metadata.resource_version = Some(format!("echo-{pick}"));
                        revise(c, &u.cluster, g, changes);
                    }
                    StatusKind::ListenerSet => {
                        let Some((_, s)) = c.listener_sets().find(|(k, _)| **k == key) else {
                            return;
                        };
                        let mut s = s.clone();
                        s.status = Some(
                            serde_json::from_value::<ListenerSetStatus>(Value::clone(&u.status))
                                .unwrap(),
                        );
                        s.metadata.resource_version = Some(format!("echo-{pick}"));
                        revise(c, &u.cluster, s, changes);
                        self.set_echoed.push((u.cluster.clone(), key));
                    }
                    // Recomputed every pass: nothing an echo could leave stale.
                    StatusKind::GatewayClass
                    | StatusKind::FailoverPolicy
                    | StatusKind::BackendTlsPolicy => {}
                }
            }
            Step::Programmed { pick, state } => {
                let gateways = self.gateways();
                if gateways.is_empty() {
                    return;
                }
                let gw = gateways[pick % gateways.len()].clone();
                match state {
                    4 => {
                        self.unaddressed.insert(gw);
                        return;
                    }
                    5 => {
                        self.unaddressed.remove(&gw);
                        return;
                    }
                    _ => {}
                }
                let state = match state {
                    0 => ProgrammedState::Applied(1),
                    1 => ProgrammedState::NoProxy,
                    2 => ProgrammedState::Unknown,
                    _ => ProgrammedState::Pending {
                        waiting: vec!["proxy-1".into()],
                    },
                };
                self.programmed
                    .insert(gateways[pick % gateways.len()].clone(), state);
            }
            Step::Revise { pick, what } => {
                let mut objects: Vec<(String, Kind, ObjectKey)> = Vec::new();
                for (c, s) in &self.world.clusters {
                    objects.extend(
                        s.http_routes()
                            .map(|(k, _)| (c.clone(), Kind::HttpRoute, k.clone())),
                    );
                    objects.extend(
                        s.grpc_routes()
                            .map(|(k, _)| (c.clone(), Kind::GrpcRoute, k.clone())),
                    );
                    objects.extend(
                        s.tls_routes()
                            .map(|(k, _)| (c.clone(), Kind::TlsRoute, k.clone())),
                    );
                    objects.extend(
                        s.gateways()
                            .map(|(k, _)| (c.clone(), Kind::Gateway, k.clone())),
                    );
                }
                if objects.is_empty() {
                    return;
                }
                let (cluster, kind, key) = objects.swap_remove(pick % objects.len());
                let c = self.world.cluster_mut(&cluster).unwrap();
                let revise_meta = |m: &mut ObjectMeta| match what {
                    0 => {
                        m.labels
                            .get_or_insert_default()
                            .insert("revision".into(), pick.to_string());
                    }
                    1 => {
                        m.resource_version = Some(format!("rv-{pick}"));
                        m.managed_fields = Some(vec![ManagedFieldsEntry {
                            manager: Some(format!("m-{pick}")),
                            ..Default::default()
                        }]);
                    }
                    2 => {
                        let a = m.annotations.get_or_insert_default();
                        if a.remove(SERVED_BY_ANNOTATION).is_none() {
                            a.insert(SERVED_BY_ANNOTATION.into(), "true".into());
                        }
                    }
                    _ => {}
                };
                if kind == Kind::HttpRoute {
                    let mut r = c.http_route(&key).unwrap().as_ref().clone();
                    revise_meta(&mut r.metadata);
                    match what {
                        3 => r.status = None,
                        4 => r
                            .status
                            .get_or_insert_default()
                            .parents
                            .push(foreign_parent()),
                        _ => {}
                    }
                    revise(c, &cluster, r, changes);
                } else if kind == Kind::GrpcRoute {
                    let mut r = c.grpc_route(&key).unwrap().as_ref().clone();
                    revise_meta(&mut r.metadata);
                    match what {
                        3 => r.status = None,
                        4 => r
                            .status
                            .get_or_insert_default()
                            .parents
                            .push(foreign_parent()),
                        _ => {}
                    }
                    revise(c, &cluster, r, changes);
                } else if kind == Kind::TlsRoute {
                    let mut r = c.tls_route(&key).unwrap().as_ref().clone();
                    revise_meta(&mut r.metadata);
                    match what {
                        3 => r.status = None,
                        4 => r
                            .status
                            .get_or_insert_default()
                            .parents
                            .push(foreign_parent()),
                        _ => {}
                    }
                    revise(c, &cluster, r, changes);
                } else {
                    let (_, g) = c.gateways().find(|(k, _)| **k == key).unwrap();
                    let mut g = g.clone();
                    revise_meta(&mut g.metadata);
                    match what {
                        3 => g.status = None,
                        4 => g.status = Some(GatewayStatus::default()),
                        _ => {}
                    }
                    revise(c, &cluster, g, changes);
                }
            }
            Step::Unconfirmed { pick, pending: p } => {
                let mut objects: Vec<(String, StatusKind, ObjectKey)> = Vec::new();
                if *p {
                    objects.extend(
                        pending
                            .iter()
                            .filter(|u| {
                                matches!(
                                    u.kind,
                                    StatusKind::HttpRoute
                                        | StatusKind::GrpcRoute
                                        | StatusKind::TlsRoute
                                        | StatusKind::Gateway
                                        | StatusKind::ListenerSet
                                )
                            })
                            .map(|u| {
                                let key = ObjectKey::new(
                                    u.namespace.clone().unwrap_or_default(),
                                    u.name.clone(),
                                );
                                (u.cluster.clone(), u.kind, key)
                            }),
                    );
                }
                // Without pending updates (or not asked to pick among them): any object.
                let any = objects.is_empty();
                for (c, s) in self.world.clusters.iter().filter(|_| any) {
                    objects.extend(
                        s.http_routes()
                            .map(|(k, _)| (c.clone(), StatusKind::HttpRoute, k.clone())),
                    );
                    objects.extend(
                        s.grpc_routes()
                            .map(|(k, _)| (c.clone(), StatusKind::GrpcRoute, k.clone())),
                    );
                    objects.extend(
                        s.tls_routes()
                            .map(|(k, _)| (c.clone(), StatusKind::TlsRoute, k.clone())),
                    );
                    objects.extend(
                        s.gateways()
                            .map(|(k, _)| (c.clone(), StatusKind::Gateway, k.clone())),
                    );
                    objects.extend(
                        s.listener_sets()
                            .map(|(k, _)| (c.clone(), StatusKind::ListenerSet, k.clone())),
                    );
                }
                if objects.is_empty() {
                    return;
                }
                let (cluster, kind, key) = objects.swap_remove(pick % objects.len());
                let set = self.unconfirmed.entry(cluster.clone()).or_default();
                let entry = (kind, key.namespace, key.name);
                if !set.remove(&entry) {
                    set.insert(entry.clone());
                }
                self.toggled.entry(cluster).or_default().insert(entry);
            }
        }
    }

    /// The config of the fuzz test (every Gateway addressed and applied) with the steps'
    /// overrides; with `hint`, naming the unconfirmed entries toggled since the last config
    /// (as the reconcile loop does), else leaving the incremental pass to compare them whole.
    fn config(&mut self, hint: bool) -> TranslateConfig {
        let mut cfg = config_of(&self.world);
        for (r, state) in &self.programmed {
            if cfg.programmed.contains_key(r) {
                cfg.programmed.insert(r.clone(), state.clone());
            }
        }
        for r in &self.unaddressed {
            cfg.addresses.remove(r);
        }
        cfg.unconfirmed = std::sync::Arc::new(self.unconfirmed.clone());
        let toggled = std::mem::take(&mut self.toggled);
        cfg.unconfirmed_changed = hint.then_some(toggled);
        cfg
    }
}

/// How the watcher would classify `v` against what `c` holds (status-bearing kinds; every
/// other kind, and an object that does not decode, is [`Revision::Changed`]).
fn revision_of(c: &ClusterState, v: &Value) -> Revision {
    fn of<T: DeserializeOwned + Indexed>(c: &ClusterState, v: &Value) -> Revision {
        match serde_json::from_value::<T>(v.clone()) {
            Ok(o) => o
                .key()
                .map_or(Revision::Changed, |k| T::revision(c, &k, &o)),
            Err(_) => Revision::Changed,
        }
    }
    match v["kind"].as_str() {
        Some("Gateway") => of::<Gateway>(c, v),
        Some("HTTPRoute") => of::<HttpRoute>(c, v),
        Some("GRPCRoute") => of::<GrpcRoute>(c, v),
        Some("TLSRoute") => of::<TlsRoute>(c, v),
        Some("ListenerSet") => of::<ListenerSet>(c, v),
        Some("FailoverPolicy") => of::<FailoverPolicy>(c, v),
        _ => Revision::Changed,
    }
}

/// Indexes a new version of a status-bearing object, noting the change as the watcher does.
fn revise<K: Indexed>(c: &mut ClusterState, cluster: &str, obj: K, changes: &mut Changes) {
    let key = obj.key().unwrap();
    let revision = K::revision(c, &key, &obj);
    c.apply(obj);
    match revision {
        Revision::Changed => changes.insert(cluster, K::KIND, key),
        Revision::Status => changes.insert_status(cluster, K::KIND, key),
        Revision::Version => {}
    }
}

fn serialized(snapshots: &BTreeMap<String, Snapshot>) -> String {
    serde_json::to_string_pretty(snapshots).unwrap()
}

/// A parent entry of another controller (translation keeps it in place), as an HTTPRoute's or
/// a GRPCRoute's (the same JSON).
fn foreign_parent<T: DeserializeOwned>() -> T {
    serde_json::from_value(json!({
        "controllerName": "example.com/other",
        "parentRef": {"name": "gw", "namespace": "infra"},
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "1970-01-01T00:00:01Z", "observedGeneration": 1}],
    }))
    .unwrap()
}

/// What the runs add up to, so a generator that stopped reaching the incremental paths shows.
#[derive(Default)]
struct Reached {
    passes: u64,
    /// Incremental passes over a world with ListenerSets.
    set_passes: usize,
    /// ListenerSet status updates the incremental passes recomputed, and echoes of ListenerSet
    /// status writes recognised.
    set_updates: usize,
    set_echoes: usize,
    /// Status changes recognised as the echo of our own write (nothing translated), and how
    /// many of those were of a GRPCRoute.
    echoes: usize,
    grpc_echoes: usize,
    tls_echoes: usize,
    /// Services whose endpoints the indexed refresh looked at, and how many of those changed
    /// some snapshot.
    refreshed: usize,
    refresh_changed: usize,
    /// Served backends with endpoints.
    endpoint_backends: usize,
    routes: usize,
    gateways: usize,
    served_routes: usize,
    /// Served backends with a FailoverPolicy attached.
    failover_backends: usize,
    /// Non-empty patches checked against the hint, and how many of those had a hint narrower
    /// than everything.
    patches: usize,
    narrowed: usize,
    /// Served GRPCRoutes, and route status updates refusing a route for one of the other kind.
    served_grpc_routes: usize,
    kind_conflicts: usize,
    /// Served TLSRoutes, and TLSRoutes refused because older ones hold every hostname.
    served_tls_routes: usize,
    tls_conflicts: usize,
    /// Served listeners of ListenerSets, and ListenerSet listeners that lost their port to an
    /// earlier listener.
    served_set_listeners: usize,
    set_conflicts: usize,
}

/// The publish path's hint against the whole comparison, for one cluster's snapshot before
/// (`prev`, sharing routes with `next` like a published copy) and after a pass.
fn check_hint(
    prev: &Snapshot,
    next: &Snapshot,
    touched: &Touched,
    reached: &mut Reached,
) -> Result<(), TestCaseError> {
    let mut renumbered = next.clone();
    renumbered.generation = prev.generation + 1;
    let whole = diff(prev, &renumbered);
    prop_assert_eq!(&diff_since(prev, &renumbered, touched), &whole);
    prop_assert_eq!(
        endpoint_delta_since(prev, &renumbered, touched),
        endpoint_delta(prev, &renumbered)
    );
    let precise = share_unchanged(prev, &mut renumbered, touched);
    prop_assert_eq!(&renumbered.gateways, &next.gateways);
    prop_assert_eq!(&diff_since(prev, &renumbered, &precise), &whole);
    prop_assert_eq!(precise.is_nothing(), prev.gateways == next.gateways);
    if !whole.is_empty(prev.gateways.len()) {
        reached.patches += 1;
        reached.narrowed += usize::from(!touched.is_everything());
    }
    Ok(())
}

fn check(
    (east, west, batches): &Scenario,
    reached: &RefCell<Reached>,
) -> Result<(), TestCaseError> {
    let mut h = Harness::new(east, west);
    let mut engine = Incremental::new();
    let cfg = h.config(false);
    let out = engine.full(&h.world, &cfg);
    prop_assert_eq!(
        &out,
        &translate(&h.world, &cfg),
        "the seeding pass is the full translation"
    );
    prop_assert_eq!(engine.status(), out.status.clone());
    let mut snapshots = out.snapshots;
    for (i, batch) in batches.iter().enumerate() {
        // What the reconcile loop would have published: shares every route with `snapshots`.
        let published = snapshots.clone();
        let mut changes = Changes::new();
        let pending = engine.status();
        // Two batches in three, EndpointSlice changes take the reconcile loop's endpoints pass
        // (unless the last pass named refused endpoints: the loop translates in full then).
        let refresh = i % 3 != 1 && !engine.endpoints_refused();
        h.by_refresh = refresh.then(Vec::new);
        for step in batch {
            h.step(step, &pending, &mut changes);
        }
        let grpc_echoes = std::mem::take(&mut h.grpc_echoed)
            .iter()
            .filter(|(c, k)| engine.is_echo(&h.world, c, Kind::GrpcRoute, k))
            .count();
        let tls_echoes = std::mem::take(&mut h.tls_echoed)
            .iter()
            .filter(|(c, k)| engine.is_echo(&h.world, c, Kind::TlsRoute, k))
            .count();
        let set_echoes = std::mem::take(&mut h.set_echoed)
            .iter()
            .filter(|(c, k)| engine.is_echo(&h.world, c, Kind::ListenerSet, k))
            .count();
        // Every other pass with the loop's hint of what changed in the unconfirmed sets.
        let cfg = h.config(i % 2 == 1);
        let with_sets = h
            .world
            .clusters
            .values()
            .any(|c| c.listener_sets().next().is_some());
        let mut pass = match engine.update(&h.world, &cfg, &changes, &mut snapshots) {
            Ok(pass) => pass,
            Err(f) => {
                return Err(TestCaseError::fail(format!("batch {i}: fell back: {f}")));
            }
        };
        reached.borrow_mut().set_passes += usize::from(with_sets);
        if let Some(services) = h.by_refresh.take() {
            let mut policy = AddressPolicy {
                allow_loopback: cfg.allow_loopback_endpoints,
                refused_seen: false,
            };
            for (cluster, svc) in &services {
                let touched = engine.refresh_endpoints(
                    &h.world,
                    &mut snapshots,
                    cluster,
                    svc,
                    &EastWestListeners::new(),
                    &mut MissingRemote::new(),
                    &mut policy,
                );
                reached.borrow_mut().refresh_changed += usize::from(!touched.is_empty());
                for (c, t) in touched {
                    pass.touched.entry(c).or_default().extend(&t);
                }
            }
            reached.borrow_mut().refreshed += services.len();
            if policy.refused_seen {
                // Refused endpoints must be named in route status: the loop translates in full.
                snapshots = engine.full(&h.world, &cfg).snapshots;
                pass.touched = snapshots
                    .keys()
                    .map(|c| (c.clone(), Touched::everything()))
                    .collect();
            }
        }
        let full = translate(&h.world, &cfg);
        if serde_json::to_string(&snapshots).unwrap()
            != serde_json::to_string(&full.snapshots).unwrap()
        {
            return Err(TestCaseError::fail(format!(
                "batch {i} {batch:?}: snapshots differ\nincremental:\n{}\nfull:\n{}",
                serialized(&snapshots),
                serialized(&full.snapshots)
            )));
        }
        prop_assert_eq!(
            engine.status(),
            full.status.clone(),
            "batch {}: status differs after {:?}",
            i,
            batch
        );
        prop_assert_eq!(engine.endpoints_refused(), full.endpoints_refused);
        let nothing = Touched::nothing();
        for (cluster, next) in &snapshots {
            let Some(prev) = published.get(cluster) else {
                continue;
            };
            let touched = pass.touched.get(cluster).unwrap_or(&nothing);
            check_hint(prev, next, touched, &mut reached.borrow_mut())
                .map_err(|e| TestCaseError::fail(format!("batch {i} {batch:?}: hint: {e}")))?;
        }
        for u in &pass.status {
            prop_assert!(
                full.status.contains(u),
                "batch {}: the pass reported an update the full translation does not have: {:?}",
                i,
                u
            );
        }
        let mut reached = reached.borrow_mut();
        reached.passes += 1;
        reached.set_updates += pass
            .status
            .iter()
            .filter(|u| u.kind == StatusKind::ListenerSet)
            .count();
        reached.set_echoes += set_echoes;
        reached.echoes += pass.echoes;
        reached.grpc_echoes += grpc_echoes;
        reached.tls_echoes += tls_echoes;
        reached.routes += pass.routes;
        reached.gateways += pass.gateways;
        reached.failover_backends += snapshots
            .values()
            .flat_map(|s| &s.gateways)
            .flat_map(|g| &g.listeners)
            .flat_map(|l| &l.routes)
            .flat_map(|r| &r.rules)
            .flat_map(|r| &r.backends)
            .filter(|b| {
                matches!(
                    &b.target,
                    BackendTarget::Endpoints {
                        failover: Some(_),
                        ..
                    }
                )
            })
            .count();
        reached.endpoint_backends += snapshots
            .values()
            .flat_map(|s| &s.gateways)
            .flat_map(|g| &g.listeners)
            .flat_map(|l| &l.routes)
            .flat_map(|r| &r.rules)
            .flat_map(|r| &r.backends)
            .filter(|b| matches!(&b.target, BackendTarget::Endpoints { endpoints, .. } if !endpoints.is_empty()))
            .count();
        reached.served_routes += snapshots
            .values()
            .flat_map(|s| &s.gateways)
            .flat_map(|g| &g.listeners)
            .map(|l| l.routes.len())
            .sum::<usize>();
        reached.served_grpc_routes += snapshots
            .values()
            .flat_map(|s| &s.gateways)
            .flat_map(|g| &g.listeners)
            .flat_map(|l| &l.routes)
            .filter(|r| r.kind == meridian_model::snapshot::RouteKind::Grpc)
            .count();
        reached.kind_conflicts += full
            .status
            .iter()
            .filter(|u| u.status.to_string().contains("a route of the other kind"))
            .count();
        reached.served_set_listeners += snapshots
            .values()
            .flat_map(|s| &s.gateways)
            .flat_map(|g| &g.listeners)
            .filter(|l| l.name.contains('/'))
            .count();
        reached.set_conflicts += full
            .status
            .iter()
            .filter(|u| {
                u.kind == StatusKind::ListenerSet
                    && u.status.to_string().contains("takes precedence")
            })
            .count();
        reached.served_tls_routes += snapshots
            .values()
            .flat_map(|s| &s.gateways)
            .flat_map(|g| &g.listeners)
            .flat_map(|l| &l.routes)
            .filter(|r| r.kind == meridian_model::snapshot::RouteKind::Tls)
            .count();
        reached.tls_conflicts += full
            .status
            .iter()
            .filter(|u| {
                u.status
                    .to_string()
                    .contains("is held by an older TLSRoute")
            })
            .count();
    }
    Ok(())
}

#[test]
fn incremental_equals_full_after_every_change() {
    let defaults = Config::default();
    let mut runner = TestRunner::new(Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            defaults.cases
        } else {
            300
        },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            defaults.rng_seed
        } else {
            RngSeed::Fixed(0x696e_6372_656d_656e)
        },
        failure_persistence: None,
        ..defaults
    });
    let started = Instant::now();
    let reached = RefCell::new(Reached::default());
    let result = runner.run(&scenario(), |s| check(&s, &reached));
    let reached = reached.into_inner();
    println!(
        "incremental translate: {} passes in {} ms; {} echoes ({} of GRPCRoute status); {} endpoint refreshes ({} changing a snapshot); {} routes and {} gateways recomputed, {} served routes ({} backends with a policy, {} with endpoints, {} GRPCRoutes) compared; {} HTTPRoute/GRPCRoute conflicts; {} served TLSRoutes, {} TLSRoute conflicts, {} TLSRoute echoes; {} patches checked against the hint ({} narrower than everything); {} passes with ListenerSets ({} set updates recomputed, {} set echoes, {} served set listeners, {} set listener conflicts)",
        reached.passes,
        started.elapsed().as_millis(),
        reached.echoes,
        reached.grpc_echoes,
        reached.refreshed,
        reached.refresh_changed,
        reached.routes,
        reached.gateways,
        reached.served_routes,
        reached.failover_backends,
        reached.endpoint_backends,
        reached.served_grpc_routes,
        reached.kind_conflicts,
        reached.served_tls_routes,
        reached.tls_conflicts,
        reached.tls_echoes,
        reached.patches,
        reached.narrowed,
        reached.set_passes,
        reached.set_updates,
        reached.set_echoes,
        reached.served_set_listeners,
        reached.set_conflicts,
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, value)) => panic!(
            "incremental translation differs from the full one: {why}\nminimal input: {value:#?}"
        ),
        Err(TestError::Abort(why)) => panic!("aborted: {why}"),
    }
    assert!(
        reached.served_routes > 0,
        "no route ever reached a snapshot"
    );
    assert!(
        reached.refreshed > 50,
        "the endpoint refresh was rarely exercised: {}",
        reached.refreshed
    );
    assert!(
        reached.echoes > 100,
        "echoes of our own writes were rarely recognised: {}",
        reached.echoes
    );
    assert!(
        reached.grpc_echoes > 0,
        "no echo of a GRPCRoute status write was ever recognised"
    );
    assert!(
        reached.served_grpc_routes > 0,
        "no GRPCRoute ever reached a snapshot"
    );
    assert!(
        reached.kind_conflicts > 0,
        "no HTTPRoute/GRPCRoute conflict was ever decided"
    );
    assert!(
        reached.served_tls_routes > 0,
        "no TLSRoute ever reached a snapshot"
    );
    assert!(
        reached.tls_conflicts > 0,
        "no TLSRoute hostname conflict was ever decided"
    );
    assert!(
        reached.tls_echoes > 0,
        "no echo of a TLSRoute status write was ever recognised"
    );
    assert!(
        reached.served_set_listeners > 0,
        "no ListenerSet listener was ever served"
    );
    assert!(
        reached.set_conflicts > 0,
        "no ListenerSet listener ever lost its port to an earlier listener"
    );
    assert!(
        reached.set_passes > 100,
        "worlds with ListenerSets were rarely translated incrementally: {}",
        reached.set_passes
    );
    assert!(
        reached.set_updates > 0,
        "no incremental pass ever recomputed a ListenerSet status"
    );
    assert!(
        reached.set_echoes > 0,
        "no echo of a ListenerSet status write was ever recognised"
    );
    assert!(
        reached.narrowed > 100,
        "the hint was rarely exercised: {} patches",
        reached.narrowed
    );
}

/// A change that would translate most routes again falls back to a full translation
/// (`Fallback::Broad`) before it changes anything; a narrow change in the same world does not.
#[test]
fn a_change_most_routes_see_falls_back_to_a_full_translation() {
    let gateway = |hostname: Option<&str>, generation: i64| {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": meta(Some("infra"), "gw", generation),
            "spec": {"gatewayClassName": CLASS, "listeners": [obj(vec![
                ("name", Some(json!("http"))), ("port", Some(json!(80))),
                ("protocol", Some(json!("HTTP"))), ("hostname", hostname.map(|h| json!(h))),
                ("allowedRoutes", Some(json!({"namespaces": {"from": "All"}}))),
            ])]},
        })
    };
    let route = |i: usize, generation: i64| {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": meta(Some("app"), &format!("r{i}"), generation),
            "spec": {"parentRefs": [{"name": "gw", "namespace": "infra"}],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": format!("/{i}/{generation}")}}]}]},
        })
    };
    let mut world = World::new();
    let c = world.add_cluster(CLUSTER, "us-east", vec![]);
    base_cluster(c);
    assert!(apply(c, &gateway(None, 1)));
    for i in 0..20 {
        assert!(apply(c, &route(i, 1)));
    }
    let cfg = config_of(&world);
    let mut engine = Incremental::new();
    // Small world, same rule: 10 routes at least, more than half of them.
    engine.set_broad_limit(10, 50);
    let mut snapshots = engine.full(&world, &cfg).snapshots;

    // One route: incremental.
    let c = world.cluster_mut(CLUSTER).unwrap();
    assert!(apply(c, &route(3, 2)));
    let mut changes = Changes::new();
    changes.insert(CLUSTER, Kind::HttpRoute, ObjectKey::new("app", "r3"));
    let pass = engine
        .update(&world, &config_of(&world), &changes, &mut snapshots)
        .unwrap();
    assert_eq!(pass.routes, 1);
    let full = translate(&world, &config_of(&world));
    assert_eq!(
        serde_json::to_string(&snapshots).unwrap(),
        serde_json::to_string(&full.snapshots).unwrap()
    );

    // The listener every route attaches through: broad, and nothing changed yet.
    let before = serde_json::to_string(&snapshots).unwrap();
    let c = world.cluster_mut(CLUSTER).unwrap();
    assert!(apply(c, &gateway(Some("*.example.com"), 2)));
    let mut changes = Changes::new();
    changes.insert(CLUSTER, Kind::Gateway, ObjectKey::new("infra", "gw"));
    let cfg = config_of(&world);
    assert_eq!(
        engine
            .update(&world, &cfg, &changes, &mut snapshots)
            .unwrap_err(),
        meridian_controller::translate::Fallback::Broad
    );
    assert_eq!(serde_json::to_string(&snapshots).unwrap(), before);
    // The caller's answer: a full translation, which seeds the next incremental pass.
    let snapshots_full = engine.full(&world, &cfg).snapshots;
    assert_eq!(snapshots_full, translate(&world, &cfg).snapshots);

    // Without the limit the same change is incremental, with the same result.
    let mut engine = Incremental::new();
    engine.set_broad_limit(usize::MAX, usize::MAX);
    let c = world.cluster_mut(CLUSTER).unwrap();
    assert!(apply(c, &gateway(None, 3)));
    let cfg = config_of(&world);
    let mut snapshots = engine.full(&world, &cfg).snapshots;
    let c = world.cluster_mut(CLUSTER).unwrap();
    assert!(apply(c, &gateway(Some("*.example.com"), 4)));
    let cfg = config_of(&world);
    let pass = engine
        .update(&world, &cfg, &changes, &mut snapshots)
        .unwrap();
    assert_eq!(pass.routes, 20);
    assert_eq!(snapshots, translate(&world, &cfg).snapshots);
}

/// A large cluster with one ListenerSet: a route change and a change of the set are
/// incremental (only what they reach is translated again) and equal the full translation; the
/// run prints what each costs against a full pass. Routes default to 2,000 (debug builds);
/// `LISTENER_SET_SCALE_ROUTES` sets another count (10,000 for the docs' figure).
#[test]
fn a_listener_set_in_a_large_cluster_keeps_passes_incremental() {
    let routes: usize = std::env::var("LISTENER_SET_SCALE_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let gateway = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": meta(Some("infra"), "gw", 1),
        "spec": {"gatewayClassName": CLASS,
                 "allowedListeners": {"namespaces": {"from": "All"}},
                 "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
                                "allowedRoutes": {"namespaces": {"from": "All"}}}]},
    });
    let set = |port: i64, generation: i64| {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "ListenerSet",
            "metadata": meta(Some("app"), "ls", generation),
            "spec": {"parentRef": {"name": "gw", "namespace": "infra"},
                     "listeners": [{"name": "extra", "port": port, "protocol": "HTTP",
                                    "allowedRoutes": {"namespaces": {"from": "All"}}}]},
        })
    };
    // Every tenth route attaches to the set, the others to the Gateway.
    let route = |i: usize, generation: i64| {
        let parent = if i.is_multiple_of(10) {
            json!({"kind": "ListenerSet", "name": "ls", "namespace": "app"})
        } else {
            json!({"name": "gw", "namespace": "infra"})
        };
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": meta(Some("app"), &format!("r{i}"), generation),
            "spec": {"parentRefs": [parent],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": format!("/{i}/{generation}")}}]}]},
        })
    };
    let mut world = World::new();
    let c = world.add_cluster(CLUSTER, "us-east", vec![]);
    base_cluster(c);
    assert!(apply(c, &gateway));
    assert!(apply(c, &set(8080, 1)));
    for i in 0..routes {
        assert!(apply(c, &route(i, 1)));
    }
    let cfg = config_of(&world);
    let mut engine = Incremental::new();
    let started = Instant::now();
    let mut snapshots = engine.full(&world, &cfg).snapshots;
    let full_ms = started.elapsed().as_secs_f64() * 1e3;
    let served = |s: &BTreeMap<String, Snapshot>| -> usize {
        s.values()
            .flat_map(|s| &s.gateways)
            .flat_map(|g| &g.listeners)
            .map(|l| l.routes.len())
            .sum()
    };
    assert_eq!(served(&snapshots), routes, "every route is served");

    let mut pass = |world: &World, kind: Kind, key: ObjectKey| {
        let mut changes = Changes::new();
        changes.insert(CLUSTER, kind, key);
        let cfg = config_of(world);
        let started = Instant::now();
        let pass = engine
            .update(world, &cfg, &changes, &mut snapshots)
            .unwrap();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let full = translate(world, &cfg);
        assert_eq!(
            serde_json::to_string(&snapshots).unwrap(),
            serde_json::to_string(&full.snapshots).unwrap()
        );
        assert_eq!(engine.status(), full.status);
        (pass.routes, ms)
    };
    // A route on the Gateway, then one on the set: that route only.
    let c = world.cluster_mut(CLUSTER).unwrap();
    assert!(apply(c, &route(1, 2)));
    let (n, gw_route_ms) = pass(&world, Kind::HttpRoute, ObjectKey::new("app", "r1"));
    assert_eq!(n, 1);
    let c = world.cluster_mut(CLUSTER).unwrap();
    assert!(apply(c, &route(10, 2)));
    let (n, set_route_ms) = pass(&world, Kind::HttpRoute, ObjectKey::new("app", "r10"));
    assert_eq!(n, 1);
    // The set's listener moves to another port: the routes on the set only (the Gateway's own
    // listeners did not change).
    let c = world.cluster_mut(CLUSTER).unwrap();
    assert!(apply(c, &set(8081, 2)));
    let (n, set_ms) = pass(&world, Kind::ListenerSet, ObjectKey::new("app", "ls"));
    assert_eq!(n, routes.div_ceil(10), "the routes naming the set");
    println!(
        "{routes} routes, one ListenerSet: full pass {full_ms:.1} ms; incremental: route on the Gateway {gw_route_ms:.2} ms, route on the set {set_route_ms:.2} ms, set listener change {set_ms:.1} ms ({n} routes)"
    );
}

/// A cold start: the first full pass finds the Gateway without an address (no proxy has
/// connected yet: no snapshot entry), then sees the echoes of the statuses it wrote, the proxy
/// connecting (an address: the Gateway comes to serve) while the data plane cannot tell yet,
/// and its acknowledgement. None of these translates a route again, and each step equals the
/// full translation. Routes default to 300; `COLD_START_ROUTES` sets another count.
#[test]
fn a_cold_start_translates_no_route_after_the_first_full_pass() {
    let routes: usize = std::env::var("COLD_START_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let gateway = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": meta(Some("infra"), "gw", 1),
        "spec": {"gatewayClassName": CLASS,
                 "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
                                "allowedRoutes": {"namespaces": {"from": "All"}}}]},
    });
    let route = |i: usize| {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": meta(Some("app"), &format!("r{i}"), 1),
            "spec": {"parentRefs": [{"name": "gw", "namespace": "infra"}],
                     "hostnames": [format!("h{i}.example.com")],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": format!("/{i}")}}]}]},
        })
    };
    let mut world = World::new();
    let c = world.add_cluster(CLUSTER, "us-east", vec![]);
    base_cluster(c);
    assert!(apply(c, &gateway));
    for i in 0..routes {
        assert!(apply(c, &route(i)));
    }
    let gw = ClusterGatewayRef::new(CLUSTER, "infra", "gw");
    // No proxy yet: no address, and within the reconnect grace the state is Unknown.
    let config = |world: &World, address: bool, state: ProgrammedState| {
        let mut cfg = config_of(world);
        if !address {
            cfg.addresses.clear();
        }
        cfg.programmed.insert(gw.clone(), state);
        cfg
    };
    let mut engine = Incremental::new();
    let cfg = config(&world, false, ProgrammedState::Unknown);
    let mut snapshots = engine.full(&world, &cfg).snapshots;
    assert!(
        snapshots[CLUSTER].gateways.is_empty(),
        "no address: no entry"
    );
    let check = |engine: &mut Incremental,
                 snapshots: &mut BTreeMap<String, Snapshot>,
                 world: &World,
                 cfg: &TranslateConfig,
                 changes: &Changes,
                 what: &str| {
        let pass = engine.update(world, cfg, changes, snapshots).unwrap();
        let full = translate(world, cfg);
        assert_eq!(
            serde_json::to_string(&*snapshots).unwrap(),
            serde_json::to_string(&full.snapshots).unwrap(),
            "{what}"
        );
        assert_eq!(pass.routes, 0, "{what}: routes translated again");
        (pass, engine.status())
    };

    // The echoes of every status written: each object now carries what the pass computed.
    let echo = |world: &mut World, updates: &[meridian_controller::StatusUpdate]| {
        let mut changes = Changes::new();
        let c = world.cluster_mut(CLUSTER).unwrap();
        for u in updates {
            let key = ObjectKey::new(u.namespace.clone().unwrap_or_default(), u.name.clone());
            match u.kind {
                StatusKind::HttpRoute => {
                    let mut r = c.http_route(&key).unwrap().as_ref().clone();
                    r.status = Some(serde_json::from_value(Value::clone(&u.status)).unwrap());
                    revise(c, CLUSTER, r, &mut changes);
                }
                StatusKind::Gateway => {
                    let mut g = c
                        .gateways()
                        .find(|(k, _)| **k == key)
                        .map(|(_, g)| g.clone())
                        .unwrap();
                    g.status = Some(serde_json::from_value(Value::clone(&u.status)).unwrap());
                    revise(c, CLUSTER, g, &mut changes);
                }
                _ => {}
            }
        }
        changes
    };
    let written = engine.status();
    assert_eq!(
        written
            .iter()
            .filter(|u| u.kind == StatusKind::HttpRoute)
            .count(),
        routes
    );
    let changes = echo(&mut world, &written);
    let (pass, _) = check(
        &mut engine,
        &mut snapshots,
        &world,
        &cfg,
        &changes,
        "echoes",
    );
    assert_eq!(
        pass.echoes, routes,
        "every route status recognised as our echo"
    );

    // The proxy connects: an address, the data plane still in its grace.
    let cfg = config(&world, true, ProgrammedState::Unknown);
    let (pass, status) = check(
        &mut engine,
        &mut snapshots,
        &world,
        &cfg,
        &Changes::new(),
        "address",
    );
    assert_eq!(pass.gateways, 1);
    let served: usize = snapshots[CLUSTER]
        .gateways
        .iter()
        .flat_map(|g| &g.listeners)
        .map(|l| l.routes.len())
        .sum();
    assert_eq!(
        served, routes,
        "every route served once the Gateway has its address"
    );
    // Its status echo (read while Unknown: not recognised, the Gateway is validated again).
    let changes = echo(
        &mut world,
        &status
            .into_iter()
            .filter(|u| u.kind == StatusKind::Gateway)
            .collect::<Vec<_>>(),
    );
    let (_, _) = check(
        &mut engine,
        &mut snapshots,
        &world,
        &cfg,
        &changes,
        "Gateway echo in the grace",
    );
    // The proxy acknowledges (Pending, then Applied), each flip followed by its echo.
    for state in [ProgrammedState::pending(), ProgrammedState::Applied(2)] {
        let cfg = config(&world, true, state);
        let (_, status) = check(
            &mut engine,
            &mut snapshots,
            &world,
            &cfg,
            &Changes::new(),
            "Programmed flip",
        );
        let changes = echo(
            &mut world,
            &status
                .into_iter()
                .filter(|u| u.kind == StatusKind::Gateway)
                .collect::<Vec<_>>(),
        );
        let (pass, _) = check(
            &mut engine,
            &mut snapshots,
            &world,
            &cfg,
            &changes,
            "Programmed echo",
        );
        assert_eq!(pass.gateways, 0, "the Gateway's echo recomputes nothing");
    }
    // The proxy leaves: no address, no entry; the routes stay attached.
    let cfg = config(&world, false, ProgrammedState::NoProxy);
    check(
        &mut engine,
        &mut snapshots,
        &world,
        &cfg,
        &Changes::new(),
        "address gone",
    );
    assert!(snapshots[CLUSTER].gateways.is_empty());
}

#[test]
fn a_listener_change_translates_only_the_routes_it_can_take() {
    let gateway = |generation: i64, extra: Option<Value>, http_hostname: Option<&str>| {
        let mut http = json!({"name": "http", "port": 80, "protocol": "HTTP",
                              "allowedRoutes": {"namespaces": {"from": "All"}}});
        if let Some(h) = http_hostname {
            http["hostname"] = json!(h);
        }
        let listeners: Vec<Value> = std::iter::once(http).chain(extra).collect();
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": meta(Some("infra"), "gw", generation),
            "spec": {"gatewayClassName": CLASS, "listeners": listeners},
        })
    };
    let extra = |hostname: &str| {
        json!({"name": "extra", "port": 8080, "protocol": "HTTP", "hostname": hostname,
               "allowedRoutes": {"namespaces": {"from": "All"}}})
    };
    let route = |name: &str, hostnames: Value, section: Option<&str>| {
        let mut parent = json!({"name": "gw", "namespace": "infra"});
        if let Some(s) = section {
            parent["sectionName"] = json!(s);
        }
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": meta(Some("app"), name, 1),
            "spec": {"parentRefs": [parent], "hostnames": hostnames,
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": format!("/{name}")}}]}]},
        })
    };
    const N: usize = 40;
    let mut world = World::new();
    let c = world.add_cluster(CLUSTER, "us-east", vec![]);
    base_cluster(c);
    assert!(apply(c, &gateway(1, None, None)));
    for i in 0..N {
        assert!(apply(
            c,
            &route(&format!("r{i}"), json!([format!("r{i}.example.com")]), None)
        ));
    }
    // Every host (no hostnames), and one pinned to the `http` listener by name.
    assert!(apply(c, &route("wild", json!([]), None)));
    assert!(apply(
        c,
        &route("pinned", json!(["r7.example.com"]), Some("http"))
    ));
    let cfg = config_of(&world);
    let mut engine = Incremental::new();
    let mut snapshots = engine.full(&world, &cfg).snapshots;
    let mut gateway_pass = |world: &World| {
        let mut changes = Changes::new();
        changes.insert(CLUSTER, Kind::Gateway, ObjectKey::new("infra", "gw"));
        let cfg = config_of(world);
        let pass = engine
            .update(world, &cfg, &changes, &mut snapshots)
            .unwrap();
        let full = translate(world, &cfg);
        assert_eq!(
            serde_json::to_string(&snapshots).unwrap(),
            serde_json::to_string(&full.snapshots).unwrap()
        );
        assert_eq!(engine.status(), full.status);
        pass.routes
    };
    let c = world.cluster_mut(CLUSTER).unwrap();
    // A listener added for one route's host: that route and the one without hostnames may
    // attach to it; the route pinned to `http` and the others keep what they have.
    assert!(apply(c, &gateway(2, Some(extra("r7.example.com")), None)));
    assert_eq!(gateway_pass(&world), 2, "listener added");
    // Its hostname changes: the two attached to it go again, the new host's route joins.
    let c = world.cluster_mut(CLUSTER).unwrap();
    assert!(apply(c, &gateway(3, Some(extra("r9.example.com")), None)));
    assert_eq!(gateway_pass(&world), 3, "listener changed");
    // A host no route has: only the two attached to it.
    let c = world.cluster_mut(CLUSTER).unwrap();
    assert!(apply(
        c,
        &gateway(4, Some(extra("nobody.example.com")), None)
    ));
    assert_eq!(
        gateway_pass(&world),
        2,
        "listener changed to a host no route has"
    );
    // Removed: the one attached to it.
    let c = world.cluster_mut(CLUSTER).unwrap();
    assert!(apply(c, &gateway(5, None, None)));
    assert_eq!(gateway_pass(&world), 1, "listener removed");
    // The listener every route is attached to changes: every route goes again.
    let c = world.cluster_mut(CLUSTER).unwrap();
    assert!(apply(c, &gateway(6, None, Some("*.example.com"))));
    assert_eq!(
        gateway_pass(&world),
        N + 2,
        "the routes' own listener changed"
    );
}
