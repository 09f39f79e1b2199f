//! Generators of Gateway API worlds for the translation property tests (`fuzz_translate`,
//! `incremental_translate`): objects as JSON (the form the API server hands the controller) from
//! vocabularies of the fields the translator reads, mixing valid values with what the CRDs' CEL
//! rules or the API server would refuse. Documents the typed objects cannot hold are dropped,
//! as the watch would drop them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use gateway_api::backendtlspolicies::BackendTlsPolicy;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use gateway_api::listenersets::ListenerSet;
use gateway_api::referencegrants::ReferenceGrant;
use gateway_api::tlsroutes::TlsRoute;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use meridian_controller::{
    CONTROLLER_NAME, ClusterGatewayRef, ClusterState, Indexed, ProgrammedState, TranslateConfig,
    World,
};
use meridian_crds::mcs::ServiceExport;
use meridian_crds::meridian::FailoverPolicy;
use proptest::prelude::*;
use proptest::sample::select;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub const CLUSTER: &str = "east";
pub const CLASS: &str = "meridian";

pub const NAMESPACES: &[&str] = &["infra", "web", "app"];
pub const GATEWAYS: &[&str] = &["gw", "gw2", "missing"];
pub const LISTENERS: &[&str] = &["http", "https", "extra", ""];
pub const HOSTS: &[&str] = &[
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
pub const PORTS: &[i64] = &[80, 8080, 443, 0, -1, 65535, 65536];
pub const SERVICES: &[&str] = &["web", "api", "h2", "ext", "nosvc"];
pub const PATHS: &[&str] = &[
    "/", "/a", "/a/", "/a/b", "/api/v1", "a", "", "/a/../b", "/%2e%2e", "/a//b", "/a?b", "/a#b",
    "/\u{1}",
];
pub const REGEXES: &[&str] = &["/a.*", "(", "/a)|(/b", ".*", "[z-a]"];
pub const HEADER_NAMES: &[&str] = &[
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
pub const HEADER_VALUES: &[&str] = &["1", "", "a b", "a\r\nb: c", "\u{1}", "\t", "é", "v\u{7f}"];
pub const DURATIONS: &[&str] = &[
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
pub const IPS: &[&str] = &[
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

pub fn s(v: &'static [&'static str]) -> impl Strategy<Value = &'static str> + Clone {
    select(v)
}

pub fn opt<T: std::fmt::Debug>(st: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    proptest::option::weighted(0.6, st)
}

/// Inserts the optional fields that are set.
pub fn obj(pairs: Vec<(&str, Option<Value>)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect(),
    )
}

pub fn meta(ns: Option<&str>, name: &str, generation: i64) -> Value {
    obj(vec![
        ("namespace", ns.map(|n| json!(n))),
        ("name", Some(json!(name))),
        ("generation", Some(json!(generation))),
        ("creationTimestamp", Some(json!("1970-01-01T00:16:40Z"))),
    ])
}

/// A listener: mostly one translation accepts (HTTP or HTTPS with a certificate, usual ports),
/// sometimes anything from the vocabularies.
pub fn listener() -> impl Strategy<Value = Value> {
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

pub fn any_listener() -> impl Strategy<Value = Value> {
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
        opt(s(&["HTTPRoute", "GRPCRoute", "TCPRoute"])),
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

pub fn gateway() -> impl Strategy<Value = Value> {
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

pub fn parent_ref() -> impl Strategy<Value = Value> {
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

pub fn value_match() -> impl Strategy<Value = Value> {
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

pub fn a_match() -> impl Strategy<Value = Value> {
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

pub fn header_modifier() -> impl Strategy<Value = Value> {
    let pair =
        || (s(HEADER_NAMES), s(HEADER_VALUES)).prop_map(|(n, v)| json!({"name": n, "value": v}));
    (
        prop::collection::vec(pair(), 0..2),
        prop::collection::vec(pair(), 0..2),
        prop::collection::vec(s(HEADER_NAMES), 0..2),
    )
        .prop_map(|(set, add, remove)| json!({"set": set, "add": add, "remove": remove}))
}

pub fn path_modifier() -> impl Strategy<Value = Value> {
    (s(&["ReplaceFullPath", "ReplacePrefixMatch"]), s(PATHS)).prop_map(|(t, p)| {
        if t == "ReplaceFullPath" {
            json!({"type": t, "replaceFullPath": p})
        } else {
            json!({"type": t, "replacePrefixMatch": p})
        }
    })
}

pub fn filter() -> impl Strategy<Value = Value> {
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

pub fn backend_ref() -> impl Strategy<Value = Value> {
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

pub fn rule() -> impl Strategy<Value = Value> {
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

pub fn http_route(i: usize) -> impl Strategy<Value = Value> {
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

/// A gRPC method condition: exact service and/or method (valid or not), regular expressions,
/// nothing at all.
pub fn grpc_method() -> impl Strategy<Value = Value> {
    (
        opt(s(&["Exact", "RegularExpression"])),
        opt(s(&[
            "pkg.Echo",
            "pkg.Other",
            ".pkg.Echo",
            "pkg/Echo",
            "pkg\\..*",
            "(",
        ])),
        opt(s(&["Say", "Stream", "Say.Hi", "S.*", ""])),
    )
        .prop_map(|(t, service, method)| {
            obj(vec![
                ("type", t.map(|t| json!(t))),
                ("service", service.map(|v| json!(v))),
                ("method", method.map(|v| json!(v))),
            ])
        })
}

pub fn grpc_rule() -> impl Strategy<Value = Value> {
    let a_match = (
        opt(grpc_method()),
        prop::collection::vec(value_match(), 0..2),
    )
        .prop_map(|(method, headers)| {
            obj(vec![
                ("method", method),
                ("headers", (!headers.is_empty()).then(|| json!(headers))),
            ])
        });
    // The filters GRPCRoute has (a redirect is not one: the object does not decode).
    let filter = prop_oneof![
        header_modifier().prop_map(|m| json!({"type": "RequestHeaderModifier", "requestHeaderModifier": m})),
        header_modifier().prop_map(|m| json!({"type": "ResponseHeaderModifier", "responseHeaderModifier": m})),
        s(SERVICES).prop_map(|svc| json!({"type": "RequestMirror", "requestMirror": {"backendRef": {"name": svc, "port": 80}}})),
        Just(json!({"type": "ExtensionRef", "extensionRef": {"group": "x.io", "kind": "K", "name": "n"}})),
    ];
    (
        prop::collection::vec(a_match, 0..3),
        prop::collection::vec(filter, 0..2),
        prop::collection::vec(backend_ref(), 0..3),
        opt(s(&["one", "two"])),
    )
        .prop_map(|(matches, filters, backends, name)| {
            // Backend filters are HTTPRoute's vocabulary: keep only what GRPCRoute has.
            let backends: Vec<Value> = backends
                .into_iter()
                .map(|mut b| {
                    if let Some(o) = b.as_object_mut() {
                        o.remove("filters");
                    }
                    b
                })
                .collect();
            obj(vec![
                ("matches", (!matches.is_empty()).then(|| json!(matches))),
                ("filters", (!filters.is_empty()).then(|| json!(filters))),
                (
                    "backendRefs",
                    (!backends.is_empty()).then(|| json!(backends)),
                ),
                ("name", name.map(|n| json!(n))),
            ])
        })
}

/// A GRPCRoute named like the HTTPRoutes (`route-i`: the two kinds share names), older or
/// newer than them, so HTTPRoute/GRPCRoute hostname conflicts and same-name routes occur.
pub fn grpc_route(i: usize) -> impl Strategy<Value = Value> {
    (
        prop_oneof![2 => Just("infra"), 1 => s(NAMESPACES)],
        prop::collection::vec(parent_ref(), 0..3),
        prop_oneof![2 => Just(Vec::new()), 1 => prop::collection::vec(s(HOSTS), 1..3)],
        opt(prop::collection::vec(grpc_rule(), 0..3)),
        1i64..4,
        s(&[
            "1970-01-01T00:10:00Z",
            "1970-01-01T00:16:40Z",
            "1970-01-01T00:20:00Z",
        ]),
    )
        .prop_map(
            move |(ns, parents, hostnames, rules, generation, created)| {
                let mut m = meta(Some(ns), &format!("route-{i}"), generation);
                m["creationTimestamp"] = json!(created);
                json!({
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "GRPCRoute",
                    "metadata": m,
                    "spec": obj(vec![
                        ("parentRefs", Some(json!(parents))),
                        ("hostnames", (!hostnames.is_empty()).then(|| json!(hostnames))),
                        ("rules", rules.map(|r| json!(r))),
                    ]),
                })
            },
        )
}

pub fn service() -> impl Strategy<Value = Value> {
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

pub fn endpoint_slice(i: usize) -> impl Strategy<Value = Value> {
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

pub fn reference_grant(i: usize) -> impl Strategy<Value = Value> {
    (
        s(NAMESPACES),
        s(NAMESPACES),
        s(&["HTTPRoute", "GRPCRoute", "Gateway"]),
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
pub struct Objects(pub Vec<Value>);

pub fn objects() -> impl Strategy<Value = Objects> {
    (
        prop::collection::vec(gateway(), 0..4),
        (0usize..5).prop_flat_map(|n| (0..n).map(http_route).collect::<Vec<_>>()),
        prop::collection::vec(service(), 0..5),
        (0usize..4).prop_flat_map(|n| (0..n).map(endpoint_slice).collect::<Vec<_>>()),
        (0usize..3).prop_flat_map(|n| (0..n).map(reference_grant).collect::<Vec<_>>()),
        (0usize..3).prop_flat_map(|n| (0..n).map(grpc_route).collect::<Vec<_>>()),
    )
        .prop_map(|(g, r, s, e, rg, gr)| {
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
                .chain(rg)
                .chain(gr);
            Objects(objects.collect())
        })
}

pub fn decode<T: DeserializeOwned>(v: &Value) -> Option<T> {
    serde_json::from_value(v.clone()).ok()
}

/// The world the objects describe: one cluster with our GatewayClass, the namespaces and TLS
/// Secrets (one valid, one not PEM), plus every object that decodes.
pub fn world_of(objects: &Objects) -> World {
    let mut w = World::new();
    let c = w.add_cluster(CLUSTER, "us-east", vec!["us-east-1a".into()]);
    base_cluster(c);
    for v in &objects.0 {
        apply(c, v);
    }
    w
}

/// What every generated cluster has: our GatewayClass, the namespaces (`web` labelled
/// `team: web`) and the TLS Secrets `infra/cert` (PEM) and `infra/bad-cert` (not PEM).
pub fn base_cluster(c: &mut ClusterState) {
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
    for (name, valid) in [("cert", true), ("bad-cert", false)] {
        c.apply(tls_secret(name, valid));
    }
}

/// TLS Secret `infra/name`: a PEM certificate and key, or (`valid` false) a certificate that is
/// not PEM.
pub fn tls_secret(name: &str, valid: bool) -> Secret {
    let cert = if valid {
        "-----BEGIN CERTIFICATE-----\nTUVS\n-----END CERTIFICATE-----\n"
    } else {
        "not a certificate"
    };
    decode(&json!({
        "metadata": meta(Some("infra"), name, 1), "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert, "tls.key": "-----BEGIN PRIVATE KEY-----\nTUVS\n-----END PRIVATE KEY-----\n"},
    }))
    .unwrap()
}

/// A FailoverPolicy targeting some of the generated Services, routes and an unsupported kind,
/// sometimes with an invalid duration.
pub fn failover_policy(i: usize) -> impl Strategy<Value = Value> {
    (
        s(NAMESPACES),
        prop::collection::vec(
            (
                select(
                    &[
                        ("multicluster.x-k8s.io", "ServiceImport"),
                        ("", "Service"),
                        ("gateway.networking.k8s.io", "HTTPRoute"),
                        ("apps", "Deployment"),
                    ][..],
                ),
                prop_oneof![s(SERVICES), s(&["route-0", "route-1", "route-2"])],
            ),
            0..3,
        ),
        opt(s(&["30s", "bogus"])),
        0i64..3,
    )
        .prop_map(move |(ns, targets, ttl, age)| {
            let mut m = meta(Some(ns), &format!("policy-{i}"), 1);
            m["creationTimestamp"] = json!(format!("1970-01-01T00:1{age}:00Z"));
            json!({
                "apiVersion": "meridian.dev/v1alpha1",
                "kind": "FailoverPolicy",
                "metadata": m,
                "spec": obj(vec![
                    ("targetRefs", Some(json!(targets.into_iter().map(|((g, k), n)| json!({"group": g, "kind": k, "name": n})).collect::<Vec<_>>()))),
                    ("staleEndpointTTL", ttl.map(|t| json!(t))),
                ]),
            })
        })
}

/// A ServiceExport of one of the generated Services.
pub fn service_export() -> impl Strategy<Value = Value> {
    (s(NAMESPACES), s(SERVICES)).prop_map(|(ns, name)| {
        json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ServiceExport",
            "metadata": meta(Some(ns), name, 1),
            "spec": {},
        })
    })
}

/// Indexes `v` if it decodes as the kind it names; whether it did.
pub fn apply(c: &mut ClusterState, v: &Value) -> bool {
    fn put<T: DeserializeOwned + Indexed>(c: &mut ClusterState, v: &Value) -> bool {
        decode::<T>(v).map(|o| c.apply(o)).is_some()
    }
    match v["kind"].as_str() {
        Some("Gateway") => put::<Gateway>(c, v),
        Some("HTTPRoute") => put::<HttpRoute>(c, v),
        Some("GRPCRoute") => put::<GrpcRoute>(c, v),
        Some("TLSRoute") => put::<TlsRoute>(c, v),
        Some("ListenerSet") => put::<ListenerSet>(c, v),
        Some("Service") => put::<Service>(c, v),
        Some("EndpointSlice") => put::<EndpointSlice>(c, v),
        Some("ReferenceGrant") => put::<ReferenceGrant>(c, v),
        Some("FailoverPolicy") => put::<FailoverPolicy>(c, v),
        Some("ServiceExport") => put::<ServiceExport>(c, v),
        Some("BackendTLSPolicy") => put::<BackendTlsPolicy>(c, v),
        Some("ConfigMap") => put::<ConfigMap>(c, v),
        _ => false,
    }
}

/// Every Gateway has an address and the proxies applied it, so `Programmed` is not the reason
/// a listener is left out.
pub fn config_of(w: &World) -> TranslateConfig {
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
