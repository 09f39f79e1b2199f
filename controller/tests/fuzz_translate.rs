//! Fuzz target: translation of arbitrary Gateway API objects into snapshots and status.
//!
//! Objects are generated as JSON (the form the API server hands the controller) from
//! vocabularies of the fields the translator reads: Gateways (listeners with ports, protocols,
//! hostnames, TLS references and allowedRoutes), HTTPRoutes (parentRefs, hostnames, matches,
//! every filter type, backendRefs with kinds, ports and weights, timeouts), ReferenceGrants,
//! Services (ports, appProtocol, ExternalName) and EndpointSlices (address types, odd addresses
//! and ports), plus TLS Secrets. Values mix valid ones with what the CRDs' CEL rules or the API
//! server would refuse, since the controller must cope with both (an older CRD, another
//! writer). Documents the typed objects cannot hold are dropped, as the watch would drop them.
//!
//! Properties: translation never panics; every snapshot it emits compiles with the proxy's
//! router (the controller never sends a snapshot the proxy refuses); translating the same world
//! twice gives the same output; every HTTPRoute naming one of our Gateways gets a status entry of
//! ours for that parent with `Accepted` and `ResolvedRefs` conditions stamped with the route's
//! generation. `tests/corpus/translate/*.json` (worlds that once broke one of these) replays
//! first. The seed is fixed and `PROPTEST_CASES` lengthens the run (docs/fuzzing.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use gateway_api::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use meridian_controller::{
    CONTROLLER_NAME, ClusterGatewayRef, ClusterState, Indexed, ProgrammedState, StatusKind,
    TranslateConfig, World, translate,
};
use meridian_model::Router;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{
    Config, FileFailurePersistence, RngSeed, TestCaseError, TestError, TestRunner,
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const REGRESSIONS: &str = "tests/fuzz_translate.proptest-regressions";
const CLUSTER: &str = "east";
const CLASS: &str = "meridian";

const NAMESPACES: &[&str] = &["infra", "web", "app"];
const GATEWAYS: &[&str] = &["gw", "gw2", "missing"];
const LISTENERS: &[&str] = &["http", "https", "extra", ""];
const HOSTS: &[&str] = &[
    "a.example.com",
    "*.example.com",
    "*.a.example.com",
    "A.EXAMPLE.com",
    "other.test",
    "*",
    "bad host",
    "10.0.0.1",
    "",
];
const PORTS: &[i64] = &[80, 8080, 443, 0, -1, 65535, 65536];
const SERVICES: &[&str] = &["web", "api", "h2", "ext", "nosvc"];
const PATHS: &[&str] = &[
    "/", "/a", "/a/", "/a/b", "/api/v1", "a", "", "/a/../b", "/%2e%2e", "/a//b", "/a?b", "/a#b",
    "/\u{1}",
];
const REGEXES: &[&str] = &["/a.*", "(", "/a)|(/b", ".*", "[z-a]"];
const HEADER_NAMES: &[&str] = &[
    "x-a",
    "X-B",
    "x a",
    "",
    "host",
    "Content-Length",
    "connection",
    "transfer-encoding",
    "x:y",
];
const HEADER_VALUES: &[&str] = &["1", "", "a b", "a\r\nb: c", "\u{1}", "\t", "é", "v\u{7f}"];
const DURATIONS: &[&str] = &[
    "10s",
    "1ms",
    "0s",
    "1h",
    "bogus",
    "-1s",
    "99999999h",
    "1.5s",
    "",
    "1h1m1s1ms",
];
const IPS: &[&str] = &[
    "10.1.0.1",
    "10.1.0.2",
    "::1",
    "fd00::1",
    "127.0.0.1",
    "169.254.169.254",
    "0.0.0.0",
    "not-an-ip",
    "10.1.0.256",
    "",
];

fn s(v: &'static [&'static str]) -> impl Strategy<Value = &'static str> + Clone {
    select(v)
}

fn opt<T: std::fmt::Debug>(st: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    proptest::option::weighted(0.6, st)
}

/// Inserts the optional fields that are set.
fn obj(pairs: Vec<(&str, Option<Value>)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect(),
    )
}

fn meta(ns: Option<&str>, name: &str, generation: i64) -> Value {
    obj(vec![
        ("namespace", ns.map(|n| json!(n))),
        ("name", Some(json!(name))),
        ("generation", Some(json!(generation))),
        ("creationTimestamp", Some(json!("1970-01-01T00:16:40Z"))),
    ])
}

/// A listener: mostly one translation accepts (HTTP or HTTPS with a certificate, usual ports),
/// sometimes anything from the vocabularies.
fn listener() -> impl Strategy<Value = Value> {
    let sane = (
        s(&["http", "https", "extra"]),
        select(&[80i64, 8080, 443][..]),
        opt(s(HOSTS)),
        any::<bool>(),
        opt(s(&["All", "Same", "Selector"])),
    )
        .prop_map(|(name, port, hostname, tls, from)| {
            obj(vec![
                ("name", Some(json!(name))),
                ("port", Some(json!(port))),
                ("protocol", Some(json!(if tls { "HTTPS" } else { "HTTP" }))),
                ("hostname", hostname.map(|h| json!(h))),
                ("tls", tls.then(|| json!({"certificateRefs": [{"name": "cert"}]}))),
                (
                    "allowedRoutes",
                    from.map(|f| {
                        json!({"namespaces": {"from": f, "selector": {"matchLabels": {"team": "web"}}}})
                    }),
                ),
            ])
        });
    prop_oneof![4 => sane, 1 => any_listener()]
}

fn any_listener() -> impl Strategy<Value = Value> {
    (
        s(LISTENERS),
        select(PORTS),
        s(&["HTTP", "HTTPS", "TCP", "http"]),
        opt(s(HOSTS)),
        opt((
            s(&["cert", "bad-cert", "nocert"]),
            opt(s(NAMESPACES)),
            opt(s(&["Secret", "ConfigMap"])),
        )),
        opt(s(&["Terminate", "Passthrough"])),
        opt(s(&["All", "Same", "Selector", "Bogus"])),
        opt(s(&["HTTPRoute", "TCPRoute"])),
    )
        .prop_map(|(name, port, protocol, hostname, cert, mode, from, kind)| {
            obj(vec![
                ("name", Some(json!(name))),
                ("port", Some(json!(port))),
                ("protocol", Some(json!(protocol))),
                ("hostname", hostname.map(|h| json!(h))),
                (
                    "tls",
                    (cert.is_some() || mode.is_some()).then(|| {
                        obj(vec![
                            ("mode", mode.map(|m| json!(m))),
                            (
                                "certificateRefs",
                                cert.map(|(n, ns, kind)| {
                                    json!([obj(vec![
                                        ("name", Some(json!(n))),
                                        ("namespace", ns.map(|ns| json!(ns))),
                                        ("kind", kind.map(|k| json!(k))),
                                    ])])
                                }),
                            ),
                        ])
                    }),
                ),
                (
                    "allowedRoutes",
                    (from.is_some() || kind.is_some()).then(|| {
                        obj(vec![
                            (
                                "namespaces",
                                from.map(|f| {
                                    json!({"from": f, "selector": {"matchLabels": {"team": "web"}}})
                                }),
                            ),
                            ("kinds", kind.map(|k| json!([{"kind": k}]))),
                        ])
                    }),
                ),
            ])
        })
}

fn gateway() -> impl Strategy<Value = Value> {
    (
        prop_oneof![3 => Just("infra"), 1 => s(NAMESPACES)],
        s(GATEWAYS),
        s(&[CLASS, CLASS, CLASS, "other"]),
        prop::collection::vec(listener(), 0..4),
        1i64..3,
    )
        .prop_map(|(ns, name, class, mut listeners, generation)| {
            // Mostly distinct listener names, so a Gateway is not refused for that alone.
            for (i, l) in listeners.iter_mut().enumerate() {
                if i % 2 == 0
                    && let Some(n) = l["name"].as_str()
                {
                    l["name"] = json!(format!("{n}-{i}"));
                }
            }
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": meta(Some(ns), name, generation),
                "spec": {"gatewayClassName": class, "listeners": listeners},
            })
        })
}

fn parent_ref() -> impl Strategy<Value = Value> {
    let any = (
        s(GATEWAYS),
        opt(s(NAMESPACES)),
        opt(s(LISTENERS)),
        opt(select(PORTS)),
        proptest::option::weighted(0.1, s(&["Gateway", "Service"])),
    )
        .prop_map(|(name, ns, section, port, kind)| {
            obj(vec![
                ("name", Some(json!(name))),
                ("namespace", ns.map(|n| json!(n))),
                ("sectionName", section.map(|n| json!(n))),
                ("port", port.map(|p| json!(p))),
                ("kind", kind.map(|k| json!(k))),
            ])
        });
    // Mostly the Gateway most worlds have, so routes attach and their rules reach the snapshot.
    prop_oneof![
        2 => s(&["gw", "gw2"]).prop_map(|name| json!({"name": name, "namespace": "infra"})),
        1 => any,
    ]
}

fn value_match() -> impl Strategy<Value = Value> {
    (
        s(HEADER_NAMES),
        prop_oneof![s(HEADER_VALUES), s(REGEXES)],
        opt(s(&["Exact", "RegularExpression"])),
    )
        .prop_map(|(n, v, t)| {
            obj(vec![
                ("name", Some(json!(n))),
                ("value", Some(json!(v))),
                ("type", t.map(|t| json!(t))),
            ])
        })
}

fn a_match() -> impl Strategy<Value = Value> {
    (
        opt((
            opt(s(&["Exact", "PathPrefix", "RegularExpression"])),
            opt(prop_oneof![s(PATHS), s(REGEXES)]),
        )),
        prop::collection::vec(value_match(), 0..2),
        prop::collection::vec(value_match(), 0..2),
        opt(s(&["GET", "POST", "CONNECT", "get"])),
    )
        .prop_map(|(path, headers, query, method)| {
            obj(vec![
                (
                    "path",
                    path.map(|(t, v)| {
                        obj(vec![
                            ("type", t.map(|t| json!(t))),
                            ("value", v.map(|v| json!(v))),
                        ])
                    }),
                ),
                ("headers", (!headers.is_empty()).then(|| json!(headers))),
                ("queryParams", (!query.is_empty()).then(|| json!(query))),
                ("method", method.map(|m| json!(m))),
            ])
        })
}

fn header_modifier() -> impl Strategy<Value = Value> {
    let pair =
        || (s(HEADER_NAMES), s(HEADER_VALUES)).prop_map(|(n, v)| json!({"name": n, "value": v}));
    (
        prop::collection::vec(pair(), 0..2),
        prop::collection::vec(pair(), 0..2),
        prop::collection::vec(s(HEADER_NAMES), 0..2),
    )
        .prop_map(|(set, add, remove)| json!({"set": set, "add": add, "remove": remove}))
}

fn path_modifier() -> impl Strategy<Value = Value> {
    (s(&["ReplaceFullPath", "ReplacePrefixMatch"]), s(PATHS)).prop_map(|(t, p)| {
        if t == "ReplaceFullPath" {
            json!({"type": t, "replaceFullPath": p})
        } else {
            json!({"type": t, "replacePrefixMatch": p})
        }
    })
}

fn filter() -> impl Strategy<Value = Value> {
    prop_oneof![
        header_modifier().prop_map(|m| json!({"type": "RequestHeaderModifier", "requestHeaderModifier": m})),
        header_modifier().prop_map(|m| json!({"type": "ResponseHeaderModifier", "responseHeaderModifier": m})),
        (opt(s(&["http", "https", "ftp"])), opt(s(HOSTS)), opt(select(PORTS)), opt(select(&[301i64, 302, 303, 307, 308, 200, 999][..])), opt(path_modifier()))
            .prop_map(|(scheme, host, port, code, path)| json!({"type": "RequestRedirect", "requestRedirect": obj(vec![
                ("scheme", scheme.map(|v| json!(v))),
                ("hostname", host.map(|v| json!(v))),
                ("port", port.map(|v| json!(v))),
                ("statusCode", code.map(|v| json!(v))),
                ("path", path),
            ])})),
        (opt(s(HOSTS)), opt(path_modifier())).prop_map(|(host, path)| json!({"type": "URLRewrite", "urlRewrite": obj(vec![
            ("hostname", host.map(|v| json!(v))),
            ("path", path),
        ])})),
        (s(SERVICES), opt(select(PORTS)), opt(select(&[0i64, 50, 100, 101, -1][..])))
            .prop_map(|(svc, port, percent)| json!({"type": "RequestMirror", "requestMirror": {
                "backendRef": obj(vec![("name", Some(json!(svc))), ("port", port.map(|p| json!(p)))]),
                "percent": percent,
            }})),
        // A type with the wrong payload, and an extension nobody implements.
        Just(json!({"type": "RequestRedirect", "urlRewrite": {}})),
        Just(json!({"type": "ExtensionRef", "extensionRef": {"group": "x.io", "kind": "K", "name": "n"}})),
    ]
}

fn backend_ref() -> impl Strategy<Value = Value> {
    (
        s(SERVICES),
        opt(s(NAMESPACES)),
        opt(select(PORTS)),
        opt(select(&[0i64, 1, 10, 1_000_000, 1_000_001, -1][..])),
        proptest::option::weighted(
            0.15,
            (
                s(&["Service", "ServiceImport", "Pod"]),
                s(&["", "multicluster.x-k8s.io", "apps"]),
            ),
        ),
        prop::collection::vec(filter(), 0..2),
    )
        .prop_map(|(name, ns, port, weight, kind, filters)| {
            obj(vec![
                ("name", Some(json!(name))),
                ("namespace", ns.map(|n| json!(n))),
                ("port", port.map(|p| json!(p))),
                ("weight", weight.map(|w| json!(w))),
                ("kind", kind.map(|(k, _)| json!(k))),
                ("group", kind.map(|(_, g)| json!(g))),
                ("filters", (!filters.is_empty()).then(|| json!(filters))),
            ])
        })
}

fn rule() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(a_match(), 0..3),
        prop::collection::vec(filter(), 0..3),
        prop::collection::vec(backend_ref(), 0..3),
        opt((opt(s(DURATIONS)), opt(s(DURATIONS)))),
    )
        .prop_map(|(matches, filters, backends, timeouts)| {
            obj(vec![
                ("matches", (!matches.is_empty()).then(|| json!(matches))),
                ("filters", (!filters.is_empty()).then(|| json!(filters))),
                (
                    "backendRefs",
                    (!backends.is_empty()).then(|| json!(backends)),
                ),
                (
                    "timeouts",
                    timeouts.map(|(r, b)| {
                        obj(vec![
                            ("request", r.map(|v| json!(v))),
                            ("backendRequest", b.map(|v| json!(v))),
                        ])
                    }),
                ),
            ])
        })
}

fn http_route(i: usize) -> impl Strategy<Value = Value> {
    (
        prop_oneof![2 => Just("infra"), 1 => s(NAMESPACES)],
        prop::collection::vec(parent_ref(), 0..3),
        prop_oneof![2 => Just(Vec::new()), 1 => prop::collection::vec(s(HOSTS), 1..3)],
        opt(prop::collection::vec(rule(), 0..3)),
        1i64..4,
    )
        .prop_map(move |(ns, parents, hostnames, rules, generation)| {
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": meta(Some(ns), &format!("route-{i}"), generation),
                "spec": obj(vec![
                    ("parentRefs", Some(json!(parents))),
                    ("hostnames", (!hostnames.is_empty()).then(|| json!(hostnames))),
                    ("rules", rules.map(|r| json!(r))),
                ]),
            })
        })
}

fn service() -> impl Strategy<Value = Value> {
    (
        s(NAMESPACES),
        s(SERVICES),
        prop::collection::vec((opt(s(&["http", "grpc"])), select(PORTS), opt(s(&["kubernetes.io/h2c", "http", "kubernetes.io/ws"]))), 0..3),
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(ns, name, ports, external)| {
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(n, p, ap)| obj(vec![("name", n.map(|n| json!(n))), ("port", Some(json!(p))), ("appProtocol", ap.map(|a| json!(a)))]))
                .collect();
            let spec = if external {
                json!({"type": "ExternalName", "externalName": "db.example.com", "ports": ports})
            } else {
                json!({"ports": ports})
            };
            json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(Some(ns), name, 1), "spec": spec})
        })
}

fn endpoint_slice(i: usize) -> impl Strategy<Value = Value> {
    (
        s(NAMESPACES),
        s(SERVICES),
        s(&["IPv4", "IPv6", "FQDN"]),
        prop::collection::vec((prop::collection::vec(s(IPS), 0..3), opt(any::<bool>()), opt(s(&["us-east-1a", "us-east-1b"]))), 0..4),
        prop::collection::vec((opt(s(&["http", "grpc"])), opt(select(&[8080i64, 0, -1, 65536, 9090][..]))), 0..3),
    )
        .prop_map(move |(ns, svc, address_type, endpoints, ports)| {
            let mut m = meta(Some(ns), &format!("{svc}-{i}"), 1);
            m["labels"] = json!({"kubernetes.io/service-name": svc});
            json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": m,
                "addressType": address_type,
                "endpoints": endpoints.into_iter().map(|(addrs, ready, zone)| obj(vec![
                    ("addresses", Some(json!(addrs))),
                    ("conditions", ready.map(|r| json!({"ready": r}))),
                    ("zone", zone.map(|z| json!(z))),
                ])).collect::<Vec<_>>(),
                "ports": ports.into_iter().map(|(n, p)| obj(vec![("name", n.map(|n| json!(n))), ("port", p.map(|p| json!(p)))])).collect::<Vec<_>>(),
            })
        })
}

fn reference_grant(i: usize) -> impl Strategy<Value = Value> {
    (
        s(NAMESPACES),
        s(NAMESPACES),
        s(&["HTTPRoute", "Gateway"]),
        s(&["Service", "Secret"]),
        opt(s(&["web", "api", "cert"])),
    )
        .prop_map(move |(ns, from_ns, from_kind, to_kind, to_name)| {
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1beta1",
                "kind": "ReferenceGrant",
                "metadata": meta(Some(ns), &format!("grant-{i}"), 1),
                "spec": {
                    "from": [{"group": "gateway.networking.k8s.io", "kind": from_kind, "namespace": from_ns}],
                    "to": [obj(vec![("group", Some(json!(""))), ("kind", Some(json!(to_kind))), ("name", to_name.map(|n| json!(n)))])],
                },
            })
        })
}

/// Every object of one generated world, as JSON.
#[derive(Clone, Debug)]
struct Objects(Vec<Value>);

fn objects() -> impl Strategy<Value = Objects> {
    (
        prop::collection::vec(gateway(), 0..4),
        (0usize..5).prop_flat_map(|n| (0..n).map(http_route).collect::<Vec<_>>()),
        prop::collection::vec(service(), 0..5),
        (0usize..4).prop_flat_map(|n| (0..n).map(endpoint_slice).collect::<Vec<_>>()),
        (0usize..3).prop_flat_map(|n| (0..n).map(reference_grant).collect::<Vec<_>>()),
    )
        .prop_map(|(g, r, s, e, rg)| {
            // Every world starts with one plain Gateway most routes name (a generated Gateway of
            // the same name replaces it), so generated rules reach the snapshot.
            let base = json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": meta(Some("infra"), "gw", 1),
                "spec": {"gatewayClassName": CLASS, "listeners": [
                    {"name": "http", "port": 80, "protocol": "HTTP",
                     "allowedRoutes": {"namespaces": {"from": "All"}}},
                    {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "*.example.com",
                     "tls": {"certificateRefs": [{"name": "cert"}]}},
                ]},
            });
            let objects = std::iter::once(base)
                .chain(g)
                .chain(r)
                .chain(s)
                .chain(e)
                .chain(rg);
            Objects(objects.collect())
        })
}

fn decode<T: DeserializeOwned>(v: &Value) -> Option<T> {
    serde_json::from_value(v.clone()).ok()
}

/// The world the objects describe: one cluster with our GatewayClass, the namespaces and TLS
/// Secrets (one valid, one not PEM), plus every object that decodes.
fn world_of(objects: &Objects) -> World {
    let mut w = World::new();
    let c = w.add_cluster(CLUSTER, "us-east", vec!["us-east-1a".into()]);
    let class: GatewayClass = decode(&json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": meta(None, CLASS, 1), "spec": {"controllerName": CONTROLLER_NAME},
    }))
    .unwrap();
    c.apply(class);
    for (i, ns) in NAMESPACES.iter().enumerate() {
        let mut m = meta(None, ns, 1);
        if i == 1 {
            m["labels"] = json!({"team": "web"});
        }
        c.apply(decode::<Namespace>(&json!({"metadata": m})).unwrap());
    }
    for (name, cert) in [
        (
            "cert",
            "-----BEGIN CERTIFICATE-----\nTUVS\n-----END CERTIFICATE-----\n",
        ),
        ("bad-cert", "not a certificate"),
    ] {
        let secret: Secret = decode(&json!({
            "metadata": meta(Some("infra"), name, 1), "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": cert, "tls.key": "-----BEGIN PRIVATE KEY-----\nTUVS\n-----END PRIVATE KEY-----\n"},
        }))
        .unwrap();
        c.apply(secret);
    }
    for v in &objects.0 {
        apply(c, v);
    }
    w
}

/// Indexes `v` if it decodes as the kind it names; whether it did.
fn apply(c: &mut ClusterState, v: &Value) -> bool {
    fn put<T: DeserializeOwned + Indexed>(c: &mut ClusterState, v: &Value) -> bool {
        decode::<T>(v).map(|o| c.apply(o)).is_some()
    }
    match v["kind"].as_str() {
        Some("Gateway") => put::<Gateway>(c, v),
        Some("HTTPRoute") => put::<HttpRoute>(c, v),
        Some("Service") => put::<Service>(c, v),
        Some("EndpointSlice") => put::<EndpointSlice>(c, v),
        Some("ReferenceGrant") => put::<ReferenceGrant>(c, v),
        _ => false,
    }
}

/// Every Gateway has an address and the proxies applied it, so `Programmed` is not the reason
/// a listener is left out.
fn config_of(w: &World) -> TranslateConfig {
    let mut cfg = TranslateConfig {
        now: Timestamp::from_second(2_000).unwrap(),
        ..TranslateConfig::default()
    };
    for (cluster, state) in &w.clusters {
        for (gi, (key, _)) in state.gateways().enumerate() {
            let r = ClusterGatewayRef::new(cluster, &key.namespace, &key.name);
            let ip: IpAddr = format!("10.0.0.{}", gi + 1).parse().unwrap();
            cfg.addresses.insert(r.clone(), vec![ip]);
            cfg.programmed.insert(r, ProgrammedState::Applied(1));
        }
    }
    cfg
}

/// What the fuzz runs add up to.
#[derive(Default)]
struct Reached {
    routes: AtomicU64,
    parents: AtomicU64,
    rules_served: AtomicU64,
}

fn check(objects: &Objects, reached: &Reached) -> Result<(), TestCaseError> {
    let w = world_of(objects);
    let cfg = config_of(&w);
    let out = translate(&w, &cfg);
    for (cluster, snapshot) in &out.snapshots {
        if let Err(e) = Router::compile(snapshot.clone()) {
            return Err(TestCaseError::fail(format!(
                "the snapshot of {cluster} is refused by the proxy: {e}"
            )));
        }
        let rules: usize = snapshot
            .gateways
            .iter()
            .flat_map(|g| &g.listeners)
            .flat_map(|l| &l.routes)
            .map(|r| r.rules.len())
            .sum();
        reached
            .rules_served
            .fetch_add(rules as u64, Ordering::Relaxed);
    }
    prop_assert_eq!(
        &translate(&w, &cfg),
        &out,
        "translation is not deterministic"
    );

    let state = &w.clusters[CLUSTER];
    let ours: BTreeSet<(String, String)> = state
        .gateways()
        .filter(|(_, g)| g.spec.gateway_class_name == CLASS)
        .map(|(k, _)| (k.namespace.clone(), k.name.clone()))
        .collect();
    for (key, route) in state.http_routes() {
        reached.routes.fetch_add(1, Ordering::Relaxed);
        let generation = route.metadata.generation.unwrap_or(0);
        let wanted: BTreeSet<(String, String)> = route
            .spec
            .parent_refs
            .iter()
            .flatten()
            .filter(|p| p.kind.as_deref().unwrap_or("Gateway") == "Gateway")
            .map(|p| {
                (
                    p.namespace.clone().unwrap_or_else(|| key.namespace.clone()),
                    p.name.clone(),
                )
            })
            .filter(|gw| ours.contains(gw))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let update = out.status.iter().find(|u| {
            u.kind == StatusKind::HttpRoute
                && u.namespace.as_deref() == Some(&key.namespace)
                && u.name == key.name
        });
        let Some(update) = update else {
            return Err(TestCaseError::fail(format!(
                "route {}/{} names our Gateways {wanted:?} but got no status",
                key.namespace, key.name
            )));
        };
        let parents = update.route_parents_of(CONTROLLER_NAME);
        for (ns, name) in &wanted {
            let entry = parents.iter().find(|p| {
                p.parent_ref.name == *name
                    && p.parent_ref
                        .namespace
                        .clone()
                        .unwrap_or_else(|| key.namespace.clone())
                        == *ns
            });
            let Some(entry) = entry else {
                return Err(TestCaseError::fail(format!(
                    "route {}/{}: no status entry of ours for parent {ns}/{name}",
                    key.namespace, key.name
                )));
            };
            reached.parents.fetch_add(1, Ordering::Relaxed);
            for wanted_type in ["Accepted", "ResolvedRefs"] {
                let c = entry.conditions.iter().find(|c| c.type_ == wanted_type);
                let Some(c) = c else {
                    return Err(TestCaseError::fail(format!(
                        "route {}/{} parent {ns}/{name}: no {wanted_type} condition",
                        key.namespace, key.name
                    )));
                };
                prop_assert_eq!(c.observed_generation, Some(generation));
                prop_assert!(!c.reason.is_empty());
                prop_assert!(c.status == "True" || c.status == "False", "{:?}", c.status);
            }
        }
    }
    Ok(())
}

/// Fixed seed and case count unless `PROPTEST_CASES` / `PROPTEST_RNG_SEED` are set; the same
/// harness as the model's fuzz targets (model/tests/fuzz_support).
fn runner(cases: u32) -> TestRunner {
    let defaults = Config::default();
    TestRunner::new(Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            defaults.cases
        } else {
            cases
        },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            defaults.rng_seed
        } else {
            RngSeed::Fixed(0x6d65_7269_6469_616e)
        },
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..defaults
    })
}

#[test]
fn corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/translate");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let mut bytes = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        bytes += text.len();
        let objects: Vec<Value> = serde_json::from_str(&text).unwrap();
        // A corpus object the types cannot hold would silently test nothing.
        let mut scratch = World::new();
        let c = scratch.add_cluster(CLUSTER, "us-east", Vec::new());
        for v in &objects {
            assert!(apply(c, v), "{}: does not decode: {v}", f.display());
        }
        check(&Objects(objects), &Reached::default())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
    println!(
        "fuzz translate: corpus replayed, {} files, {bytes} bytes",
        files.len()
    );
}

#[test]
fn arbitrary_objects_translate() {
    let reached = Reached::default();
    let executions = AtomicU64::new(0);
    let started = Instant::now();
    let mut runner = runner(1_000);
    let (cases, seed) = (runner.config().cases, runner.config().rng_seed);
    let result = runner.run(&objects(), |objects| {
        executions.fetch_add(1, Ordering::Relaxed);
        check(&objects, &reached)
    });
    println!(
        "fuzz translate: {} executions ({cases} cases, seed {seed}) in {} ms; {} routes, {} parents of ours checked, {} rules served",
        executions.load(Ordering::Relaxed),
        started.elapsed().as_millis(),
        reached.routes.load(Ordering::Relaxed),
        reached.parents.load(Ordering::Relaxed),
        reached.rules_served.load(Ordering::Relaxed),
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, value)) => panic!(
            "fuzz translate failed: {why}\nminimal input (a corpus file holds this array):\n{}",
            serde_json::to_string_pretty(&value.0).unwrap()
        ),
        Err(TestError::Abort(why)) => panic!("fuzz translate aborted: {why}"),
    }
}
