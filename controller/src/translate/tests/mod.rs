//! Table tests of translation: small builders for the objects, helpers to read the output, and
//! one module per area. Every translation in these tests also passes [`run`]'s invariants: each
//! snapshot compiles with the proxy's router, and translating again is deterministic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backend_tls;
mod backends;
mod gateways;
mod grpc;
mod incremental;
mod listener_sets;
mod networks;
mod policies;
mod routes;
mod rule_extras;
mod tls;

use std::collections::BTreeMap;
use std::net::IpAddr;

use gateway_api::gatewayclasses::{GatewayClass, GatewayClassSpec};
use gateway_api::gateways::*;
use gateway_api::httproutes::*;
use gateway_api::referencegrants::{
    ReferenceGrant, ReferenceGrantFrom, ReferenceGrantSpec, ReferenceGrantTo,
};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use meridian_model::Router;
use meridian_model::snapshot as model;
use serde_json::Value;

use super::*;
use crate::status::StatusKind;
use crate::world::{SERVICE_NAME_LABEL, World};

pub const CLUSTER: &str = "east";
pub const CLASS: &str = "meridian";
pub const INFRA: &str = "infra";
pub const WEB: &str = "web";
pub const APP: &str = "app";

pub fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: ns.map(Into::into),
        name: Some(name.into()),
        generation: Some(1),
        creation_timestamp: Some(Time(Timestamp::from_second(1_000).unwrap())),
        ..Default::default()
    }
}

// --- object builders ---------------------------------------------------------------------------

pub fn class(name: &str, controller: &str) -> GatewayClass {
    GatewayClass {
        metadata: meta(None, name),
        spec: GatewayClassSpec {
            controller_name: controller.into(),
            description: None,
            parameters_ref: None,
        },
        status: None,
    }
}

pub fn gw(ns: &str, name: &str, listeners: Vec<GatewayListeners>) -> Gateway {
    Gateway {
        metadata: meta(Some(ns), name),
        spec: GatewaySpec {
            gateway_class_name: CLASS.into(),
            listeners,
            ..Default::default()
        },
        status: None,
    }
}

pub fn http(name: &str, port: i32) -> GatewayListeners {
    GatewayListeners {
        name: name.into(),
        port,
        protocol: "HTTP".into(),
        ..Default::default()
    }
}

pub fn https(name: &str, port: i32, certs: &[(&str, &str)]) -> GatewayListeners {
    GatewayListeners {
        name: name.into(),
        port,
        protocol: "HTTPS".into(),
        tls: Some(GatewayListenersTls {
            certificate_refs: Some(
                certs
                    .iter()
                    .map(|(ns, n)| GatewayListenersTlsCertificateRefs {
                        name: n.to_string(),
                        namespace: (!ns.is_empty()).then(|| ns.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn host(mut l: GatewayListeners, h: &str) -> GatewayListeners {
    l.hostname = Some(h.into());
    l
}

pub fn from(
    mut l: GatewayListeners,
    from: GatewayListenersAllowedRoutesNamespacesFrom,
) -> GatewayListeners {
    let ar = l.allowed_routes.get_or_insert_with(Default::default);
    ar.namespaces.get_or_insert_with(Default::default).from = Some(from);
    l
}

pub fn from_selector(mut l: GatewayListeners, labels: &[(&str, &str)]) -> GatewayListeners {
    l = from(l, GatewayListenersAllowedRoutesNamespacesFrom::Selector);
    let ns = l
        .allowed_routes
        .as_mut()
        .unwrap()
        .namespaces
        .as_mut()
        .unwrap();
    ns.selector = Some(GatewayListenersAllowedRoutesNamespacesSelector {
        match_labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        match_expressions: None,
    });
    l
}

pub fn kinds(mut l: GatewayListeners, kinds: &[&str]) -> GatewayListeners {
    l.allowed_routes.get_or_insert_with(Default::default).kinds = Some(
        kinds
            .iter()
            .map(|k| GatewayListenersAllowedRoutesKinds {
                group: None,
                kind: k.to_string(),
            })
            .collect(),
    );
    l
}

pub fn parent(name: &str) -> HttpRouteParentRefs {
    HttpRouteParentRefs {
        name: name.into(),
        ..Default::default()
    }
}

pub fn parent_in(ns: &str, name: &str) -> HttpRouteParentRefs {
    HttpRouteParentRefs {
        namespace: Some(ns.into()),
        ..parent(name)
    }
}

pub fn section(mut p: HttpRouteParentRefs, s: &str) -> HttpRouteParentRefs {
    p.section_name = Some(s.into());
    p
}

pub fn port(mut p: HttpRouteParentRefs, port: i32) -> HttpRouteParentRefs {
    p.port = Some(port);
    p
}

pub fn route(
    ns: &str,
    name: &str,
    parents: Vec<HttpRouteParentRefs>,
    hostnames: &[&str],
    rules: Vec<HttpRouteRules>,
) -> HttpRoute {
    HttpRoute {
        metadata: meta(Some(ns), name),
        spec: HttpRouteSpec {
            hostnames: (!hostnames.is_empty())
                .then(|| hostnames.iter().map(|h| h.to_string()).collect()),
            parent_refs: Some(parents),
            rules: Some(rules),
        },
        status: None,
    }
}

pub fn backend(name: &str, port: i32) -> HttpRouteRulesBackendRefs {
    HttpRouteRulesBackendRefs {
        name: name.into(),
        port: Some(port),
        ..Default::default()
    }
}

pub fn backend_in(ns: &str, name: &str, port: i32) -> HttpRouteRulesBackendRefs {
    HttpRouteRulesBackendRefs {
        namespace: Some(ns.into()),
        ..backend(name, port)
    }
}

/// A rule with one PathPrefix match and these backends.
pub fn prefix(path: &str, backends: Vec<HttpRouteRulesBackendRefs>) -> HttpRouteRules {
    HttpRouteRules {
        matches: Some(vec![HttpRouteRulesMatches {
            path: Some(HttpRouteRulesMatchesPath {
                r#type: Some(HttpRouteRulesMatchesPathType::PathPrefix),
                value: Some(path.into()),
            }),
            ..Default::default()
        }]),
        backend_refs: Some(backends),
        ..Default::default()
    }
}

pub fn to(backends: Vec<HttpRouteRulesBackendRefs>) -> HttpRouteRules {
    HttpRouteRules {
        backend_refs: Some(backends),
        ..Default::default()
    }
}

/// A Service with `(port name, port, appProtocol)` ports.
pub fn svc(ns: &str, name: &str, ports: &[(Option<&str>, i32, Option<&str>)]) -> Service {
    Service {
        metadata: meta(Some(ns), name),
        spec: Some(ServiceSpec {
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, ap)| ServicePort {
                        name: n.map(Into::into),
                        port: *p,
                        app_protocol: ap.map(Into::into),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

/// An EndpointSlice of `service` with one port and `(ip, ready, zone)` endpoints.
pub fn slice(
    ns: &str,
    name: &str,
    service: &str,
    port: (Option<&str>, i32),
    eps: &[(&str, Option<bool>, Option<&str>)],
) -> EndpointSlice {
    let mut m = meta(Some(ns), name);
    m.labels = Some(BTreeMap::from([(
        SERVICE_NAME_LABEL.to_string(),
        service.to_string(),
    )]));
    EndpointSlice {
        metadata: m,
        address_type: if eps.first().is_some_and(|e| e.0.contains(':')) {
            "IPv6"
        } else {
            "IPv4"
        }
        .into(),
        endpoints: Some(
            eps.iter()
                .map(|(ip, ready, zone)| SliceEndpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    zone: zone.map(Into::into),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: port.0.map(Into::into),
            port: Some(port.1),
            ..Default::default()
        }]),
    }
}

pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    let mut m = meta(None, name);
    m.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    Namespace {
        metadata: m,
        ..Default::default()
    }
}

pub fn grant(
    ns: &str,
    name: &str,
    from: (&str, &str, &str),
    to: (&str, &str, Option<&str>),
) -> ReferenceGrant {
    ReferenceGrant {
        metadata: meta(Some(ns), name),
        spec: ReferenceGrantSpec {
            from: vec![ReferenceGrantFrom {
                group: from.0.into(),
                kind: from.1.into(),
                namespace: from.2.into(),
            }],
            to: vec![ReferenceGrantTo {
                group: to.0.into(),
                kind: to.1.into(),
                name: to.2.map(Into::into),
            }],
        },
    }
}

pub const CERT_PEM: &str =
    "-----BEGIN CERTIFICATE-----\nTUVSSURJQU4gVEVTVA==\n-----END CERTIFICATE-----\n";
pub const KEY_PEM: &str =
    "-----BEGIN PRIVATE KEY-----\nTUVSSURJQU4gS0VZ\n-----END PRIVATE KEY-----\n";

pub fn secret(ns: &str, name: &str, cert: &str, key: &str) -> Secret {
    Secret {
        metadata: meta(Some(ns), name),
        string_data: Some(BTreeMap::from([
            ("tls.crt".to_string(), cert.to_string()),
            ("tls.key".to_string(), key.to_string()),
        ])),
        type_: Some("kubernetes.io/tls".into()),
        ..Default::default()
    }
}

// --- the world and the config ------------------------------------------------------------------

/// A world with cluster `east` (region us-east), our GatewayClass and the base namespaces.
pub fn world() -> World {
    let mut w = World::new();
    let c = w.add_cluster(CLUSTER, "us-east", vec!["us-east-1a".into()]);
    c.apply(class(CLASS, CONTROLLER_NAME));
    c.apply(namespace(INFRA, &[("gateway-conformance", "infra")]));
    c.apply(namespace(WEB, &[("gateway-conformance", "backend")]));
    c.apply(namespace(APP, &[("gateway-conformance", "backend")]));
    w
}

pub fn east(w: &mut World) -> &mut ClusterState {
    w.cluster_mut(CLUSTER).unwrap()
}

/// Config where every Gateway of the world has an address (10.0.<cluster>.<n>) and is Applied.
pub fn cfg(w: &World) -> TranslateConfig {
    let mut cfg = TranslateConfig {
        now: Timestamp::from_second(2_000).unwrap(),
        ..TranslateConfig::default()
    };
    for (ci, (cluster, state)) in w.clusters.iter().enumerate() {
        for (gi, key) in state.gateways.keys().enumerate() {
            let r = ClusterGatewayRef::new(cluster, &key.namespace, &key.name);
            let ip: IpAddr = format!("10.0.{ci}.{}", gi + 1).parse().unwrap();
            cfg.addresses.insert(r.clone(), vec![ip]);
            cfg.programmed.insert(r, ProgrammedState::Applied(1));
        }
    }
    cfg
}

/// Translates and checks the invariants every output must hold.
pub fn run(w: &World, cfg: &TranslateConfig) -> Output {
    let out = translate(w, cfg);
    for (cluster, snapshot) in &out.snapshots {
        if let Err(e) = Router::compile(snapshot.clone()) {
            panic!("snapshot of {cluster} is refused by the proxy: {e}\n{snapshot:#?}");
        }
    }
    assert_eq!(translate(w, cfg), out, "translation is deterministic");
    for u in &out.status {
        assert_eq!(
            u.generation,
            object_generation(w, u),
            "status of {:?} {:?}/{} computed for the object's generation",
            u.kind,
            u.namespace,
            u.name
        );
        // Other controllers' route parents are theirs to stamp.
        let mut ours = Value::clone(&u.status);
        if let Some(parents) = ours.get_mut("parents").and_then(Value::as_array_mut) {
            parents.retain(|p| p["controllerName"] == CONTROLLER_NAME);
        }
        for c in all_conditions(&ours) {
            assert_eq!(
                c["observedGeneration"].as_i64(),
                Some(u.generation),
                "every condition carries observedGeneration: {c}"
            );
        }
    }
    out
}

fn object_generation(w: &World, u: &crate::StatusUpdate) -> i64 {
    let c = w.cluster(&u.cluster).unwrap();
    let key = crate::ObjectKey::new(u.namespace.clone().unwrap_or_default(), u.name.as_str());
    match u.kind {
        StatusKind::GatewayClass => c.gateway_classes[&u.name].metadata.generation,
        StatusKind::Gateway => c.gateways[&key].metadata.generation,
        StatusKind::HttpRoute => c.http_routes[&key].metadata.generation,
        StatusKind::GrpcRoute => c.grpc_routes[&key].metadata.generation,
        StatusKind::TlsRoute => c.tls_routes[&key].metadata.generation,
        StatusKind::FailoverPolicy => c.failover_policies[&key].metadata.generation,
        StatusKind::BackendTlsPolicy => c.backend_tls_policies[&key].metadata.generation,
        StatusKind::ListenerSet => c.listener_sets[&key].metadata.generation,
    }
    .unwrap_or(0)
}

fn all_conditions(v: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "conditions" {
                    out.extend(x.as_array().into_iter().flatten());
                } else {
                    out.extend(all_conditions(x));
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| out.extend(all_conditions(x))),
        _ => {}
    }
    out
}

/// Writes every status update back onto the world's objects, as the writer + watch would.
pub fn write_back(w: &mut World, out: &Output) {
    for u in &out.status {
        let c = w.cluster_mut(&u.cluster).unwrap();
        let key = crate::ObjectKey::new(u.namespace.clone().unwrap_or_default(), u.name.as_str());
        match u.kind {
            StatusKind::GatewayClass => {
                let mut o = (*c.gateway_classes[&u.name]).clone();
                o.status = Some(serde_json::from_value(Value::clone(&u.status)).unwrap());
                c.apply(o);
            }
            StatusKind::Gateway => {
                let mut o = (*c.gateways[&key]).clone();
                o.status = Some(serde_json::from_value(Value::clone(&u.status)).unwrap());
                c.apply(o);
            }
            StatusKind::HttpRoute => {
                let mut o = (*c.http_routes[&key]).clone();
                o.status = Some(serde_json::from_value(Value::clone(&u.status)).unwrap());
                c.apply(o);
            }
            StatusKind::GrpcRoute => {
                let mut o = (*c.grpc_routes[&key]).clone();
                o.status = Some(serde_json::from_value(Value::clone(&u.status)).unwrap());
                c.apply(o);
            }
            StatusKind::TlsRoute => {
                let mut o = (*c.tls_routes[&key]).clone();
                o.status = Some(serde_json::from_value(Value::clone(&u.status)).unwrap());
                c.apply(o);
            }
            StatusKind::FailoverPolicy => {
                let mut o = (*c.failover_policies[&key]).clone();
                o.status = Some(serde_json::from_value(Value::clone(&u.status)).unwrap());
                c.apply(o);
            }
            StatusKind::BackendTlsPolicy => {
                let mut o = (*c.backend_tls_policies[&key]).clone();
                o.status = Some(serde_json::from_value(Value::clone(&u.status)).unwrap());
                c.apply(o);
            }
            StatusKind::ListenerSet => {
                let mut o = (*c.listener_sets[&key]).clone();
                o.status = Some(serde_json::from_value(Value::clone(&u.status)).unwrap());
                c.apply(o);
            }
        }
    }
}

// --- output readers ----------------------------------------------------------------------------

pub fn status<'a>(out: &'a Output, kind: StatusKind, ns: Option<&str>, name: &str) -> &'a Value {
    status_in(out, CLUSTER, kind, ns, name)
}

pub fn status_in<'a>(
    out: &'a Output,
    cluster: &str,
    kind: StatusKind,
    ns: Option<&str>,
    name: &str,
) -> &'a Value {
    &out.status
        .iter()
        .find(|u| {
            u.cluster == cluster && u.kind == kind && u.namespace.as_deref() == ns && u.name == name
        })
        .unwrap_or_else(|| {
            panic!(
                "no status for {kind:?} {ns:?}/{name} in {cluster}: {:#?}",
                out.status
            )
        })
        .status
}

pub fn has_status(out: &Output, kind: StatusKind, ns: Option<&str>, name: &str) -> bool {
    out.status
        .iter()
        .any(|u| u.kind == kind && u.namespace.as_deref() == ns && u.name == name)
}

/// `(status, reason)` of a condition in a `conditions` array holder.
pub fn cond(holder: &Value, type_: &str) -> (String, String) {
    let c = holder["conditions"]
        .as_array()
        .unwrap_or_else(|| panic!("no conditions in {holder}"))
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {holder}"));
    (
        c["status"].as_str().unwrap().to_string(),
        c["reason"].as_str().unwrap().to_string(),
    )
}

pub fn is(holder: &Value, type_: &str, status: &str, reason: &str) {
    assert_eq!(
        cond(holder, type_),
        (status.to_string(), reason.to_string()),
        "{type_} in {holder:#}"
    );
}

pub fn gateway_status<'a>(out: &'a Output, ns: &str, name: &str) -> &'a Value {
    status(out, StatusKind::Gateway, Some(ns), name)
}

pub fn listener<'a>(out: &'a Output, ns: &str, gw: &str, l: &str) -> &'a Value {
    gateway_status(out, ns, gw)["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == l)
        .unwrap_or_else(|| panic!("no listener {l} in {ns}/{gw}"))
}

pub fn attached(out: &Output, ns: &str, gw: &str, l: &str) -> i64 {
    listener(out, ns, gw, l)["attachedRoutes"].as_i64().unwrap()
}

/// `supportedKinds` of an HTTP or HTTPS listener without `allowedRoutes.kinds`.
pub const BOTH_KINDS: [&str; 2] = [
    "gateway.networking.k8s.io/HTTPRoute",
    "gateway.networking.k8s.io/GRPCRoute",
];

pub fn supported_kinds(out: &Output, ns: &str, gw: &str, l: &str) -> Vec<String> {
    listener(out, ns, gw, l)["supportedKinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            format!(
                "{}/{}",
                k["group"].as_str().unwrap(),
                k["kind"].as_str().unwrap()
            )
        })
        .collect()
}

/// The route's parent entry for Gateway `gw_ns/gw`.
pub fn route_parent<'a>(out: &'a Output, ns: &str, name: &str, gw_ns: &str, gw: &str) -> &'a Value {
    let parents = status(out, StatusKind::HttpRoute, Some(ns), name)["parents"]
        .as_array()
        .unwrap();
    parents
        .iter()
        .find(|p| p["parentRef"]["name"] == gw && p["parentRef"]["namespace"] == gw_ns)
        .unwrap_or_else(|| panic!("no parent {gw_ns}/{gw} in {parents:#?}"))
}

pub fn our_parents(out: &Output, ns: &str, name: &str) -> Vec<Value> {
    status(out, StatusKind::HttpRoute, Some(ns), name)["parents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["controllerName"] == CONTROLLER_NAME)
        .cloned()
        .collect()
}

pub fn snap_gateway<'a>(out: &'a Output, ns: &str, name: &str) -> Option<&'a model::Gateway> {
    out.snapshots[CLUSTER]
        .gateways
        .iter()
        .find(|g| g.namespace == ns && g.name == name)
}

pub fn snap_listener<'a>(
    out: &'a Output,
    ns: &str,
    gw: &str,
    l: &str,
) -> Option<&'a model::Listener> {
    snap_gateway(out, ns, gw)?
        .listeners
        .iter()
        .find(|x| x.name == l)
}

/// Names of the routes on a served listener.
pub fn snap_routes(out: &Output, ns: &str, gw: &str, l: &str) -> Vec<String> {
    snap_listener(out, ns, gw, l)
        .map(|l| l.routes.iter().map(|r| r.name.clone()).collect())
        .unwrap_or_default()
}

pub fn snap_route<'a>(
    out: &'a Output,
    ns: &str,
    gw: &str,
    l: &str,
    route: &str,
) -> &'a model::Route {
    snap_listener(out, ns, gw, l)
        .and_then(|x| x.routes.iter().find(|r| r.name == route))
        .unwrap_or_else(|| panic!("route {route} not on {ns}/{gw}/{l}"))
}

/// The standard `same-namespace` Gateway in infra with an HTTP:80 listener `http`, plus backends
/// v1, v2, v3 (port 8080) with one ready endpoint each.
pub fn base() -> World {
    let mut w = world();
    let c = east(&mut w);
    c.apply(gw(INFRA, "same-namespace", vec![http("http", 80)]));
    for (i, name) in ["infra-backend-v1", "infra-backend-v2", "infra-backend-v3"]
        .iter()
        .enumerate()
    {
        c.apply(svc(INFRA, name, &[(Some("http"), 8080, None)]));
        let ip = format!("10.1.0.{}", i + 1);
        c.apply(slice(
            INFRA,
            &format!("{name}-abc"),
            name,
            (Some("http"), 3000),
            &[(&ip, Some(true), Some("us-east-1a"))],
        ));
    }
    w
}
