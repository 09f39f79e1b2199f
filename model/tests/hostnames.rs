//! Conformance tables for listener selection and hostnames (catalogue §1.3, spec §2.1.1–2, §2.2):
//! hostname intersection, listener specificity, ports, Gateways on separate addresses, listener
//! isolation and SNI/Host mismatches (421).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;

use common::*;
use meridian_model::Decision;
use meridian_model::snapshot::Protocol;

#[test]
fn hostname_intersection_narrows_route_hostnames_to_each_listener() {
    let g1 = gateway("infra", "httproute-hostname-intersection")
        .listener(
            listener("listener-1", 80)
                .host("very.specific.com")
                .route(
                    route("infra", "specific-host-matches-listener-specific-host")
                        .hosts(&[
                            "non.matching.com",
                            "*.nonmatchingwildcard.io",
                            "very.specific.com",
                        ])
                        .rule(rule().path("/s1").to("v1")),
                )
                .route(
                    route("infra", "wildcard-host-matches-listener-specific-host")
                        .hosts(&["non.matching.com", "*.specific.com"])
                        .rule(rule().path("/s3").to("v3")),
                ),
        )
        .listener(
            listener("listener-2", 80).host("*.wildcard.io").route(
                route("infra", "specific-host-matches-listener-wildcard-host")
                    .hosts(&[
                        "non.matching.com",
                        "wildcard.io",
                        "foo.wildcard.io",
                        "bar.wildcard.io",
                        "foo.bar.wildcard.io",
                    ])
                    .rule(rule().path("/s2").to("v2")),
            ),
        )
        .listener(
            listener("listener-3", 80)
                .host("*.anotherwildcard.io")
                .route(
                    route("infra", "wildcard-host-matches-listener-wildcard-host")
                        .host("*.anotherwildcard.io")
                        .rule(rule().path("/s4").to("v1")),
                ),
        );
    // Route E intersects no listener; the controller would not attach it, but even if a snapshot
    // carries it on every listener the router must not serve it.
    let mut g1 = g1;
    for l in &mut g1.listeners {
        l.routes.push(
            route("infra", "no-intersecting-hosts")
                .hosts(&["specific.but.wrong.com", "wildcard.io"])
                .rule(rule().path("/s5").to("v2"))
                .into(),
        );
    }
    let g2 = gateway("infra", "gateway-without-hostname").listener(
        listener("http", 80).addr("10.0.0.2").route(
            route("infra", "g2-route")
                .hosts(&["first.com", "sub.first.com", "second.com", "sub.second.com"])
                .rule(rule().to("v2")),
        ),
    );
    let router = compile(vec![g1, g2]);
    let g2req = |h: &str| req(h, "/").on("10.0.0.2");
    check(
        &router,
        &[
            (req("very.specific.com", "/s1"), "v1"),
            (req("very.specific.com:1234", "/s1"), "v1"),
            (req("VERY.Specific.com", "/s1"), "v1"),
            (req("non.matching.com", "/s1"), "404"),
            (req("foo.nonmatchingwildcard.io", "/s1"), "404"),
            (req("foo.wildcard.io", "/s1"), "404"),
            (req("very.specific.com", "/non-matching-prefix"), "404"),
            (req("foo.wildcard.io", "/s2"), "v2"),
            (req("bar.wildcard.io", "/s2"), "v2"),
            (req("foo.bar.wildcard.io", "/s2"), "v2"),
            (req("non.matching.com", "/s2"), "404"),
            (req("wildcard.io", "/s2"), "404"),
            (req("very.specific.com", "/s2"), "404"),
            (req("foo.wildcard.io", "/non-matching-prefix"), "404"),
            (req("very.specific.com", "/s3"), "v3"),
            (req("non.matching.com", "/s3"), "404"),
            (req("foo.specific.com", "/s3"), "404"),
            (req("foo.wildcard.io", "/s3"), "404"),
            (req("foo.anotherwildcard.io", "/s4"), "v1"),
            (req("bar.anotherwildcard.io", "/s4"), "v1"),
            (req("foo.bar.anotherwildcard.io", "/s4"), "v1"),
            (req("anotherwildcard.io", "/s4"), "404"),
            (req("foo.wildcard.io", "/s4"), "404"),
            (req("very.specific.com", "/s4"), "404"),
            (req("specific.but.wrong.com", "/s5"), "404"),
            (req("wildcard.io", "/s5"), "404"),
            (g2req("first.com"), "v2"),
            (g2req("sub.first.com"), "v2"),
            (g2req("second.com"), "v2"),
            (g2req("sub.second.com"), "v2"),
            (g2req("third.com"), "404"),
            (g2req("sub.third.com"), "404"),
        ],
    );
}

#[test]
fn listener_hostname_matching_exact_beats_wildcard_which_spans_labels_but_not_the_apex() {
    let v3 = |name: &str| route("infra", name).rule(rule().to("v3"));
    let router = compile(vec![
        gateway("infra", "httproute-listener-hostname-matching")
            .listener(
                listener("listener-1", 80)
                    .host("bar.com")
                    .route(route("infra", "backend-v1").rule(rule().to("v1"))),
            )
            .listener(
                listener("listener-2", 80)
                    .host("foo.bar.com")
                    .route(route("infra", "backend-v2").rule(rule().to("v2"))),
            )
            .listener(
                listener("listener-3", 80)
                    .host("*.bar.com")
                    .route(v3("backend-v3")),
            )
            .listener(
                listener("listener-4", 80)
                    .host("*.foo.com")
                    .route(v3("backend-v3")),
            ),
    ]);
    check(
        &router,
        &[
            (req("bar.com", "/"), "v1"),
            (req("foo.bar.com", "/"), "v2"),
            (req("baz.bar.com", "/"), "v3"),
            (req("boo.bar.com", "/"), "v3"),
            (req("multiple.prefixes.bar.com", "/"), "v3"),
            (req("multiple.prefixes.foo.com", "/"), "v3"),
            // Under the exact listener `foo.bar.com`, a deeper name is still the wildcard's.
            (req("x.foo.bar.com", "/"), "v3"),
            (req("foo.com", "/"), "404"),
            (req("no.matching.host", "/"), "404"),
            (req("bar.com", "/").no_host(), "404"),
        ],
    );
}

#[test]
fn longer_wildcard_listener_beats_shorter_wildcard_listener() {
    let router = compile(vec![
        gateway("infra", "wildcards")
            .listener(
                listener("short", 80)
                    .host("*.example.com")
                    .route(route("infra", "short").rule(rule().to("v1"))),
            )
            .listener(
                listener("long", 80)
                    .host("*.foo.example.com")
                    .route(route("infra", "long").rule(rule().to("v2"))),
            ),
    ]);
    check(
        &router,
        &[
            (req("a.example.com", "/"), "v1"),
            (req("a.foo.example.com", "/"), "v2"),
            (req("a.b.foo.example.com", "/"), "v2"),
            (req("foo.example.com", "/"), "v1"),
            (req("example.com", "/"), "404"),
        ],
    );
}

#[test]
fn listener_port_matching_separates_listeners_by_port() {
    let on = |r: meridian_model::snapshot::Route| r;
    let v1 = || on(route("infra", "port-80").rule(rule().to("v1")));
    let v2 = || on(route("infra", "port-8080").rule(rule().to("v2")));
    let v3 = || on(route("infra", "port-8090-l4").rule(rule().to("v3")));
    let router = compile(vec![
        gateway("infra", "httproute-listener-port-matching")
            .listener(listener("listener-1", 80).host("foo.com").route(v1()))
            .listener(listener("listener-2", 8080).host("foo.com").route(v2()))
            .listener(listener("listener-3", 8080).host("bar.com").route(v2()))
            .listener(listener("listener-4", 8090).host("foo.com").route(v3()))
            .listener(listener("listener-5", 8090).host("bar.com")),
    ]);
    check(
        &router,
        &[
            (req("foo.com", "/"), "v1"),
            (req("foo.com:8080", "/").port(8080), "v2"),
            (req("bar.com:8080", "/").port(8080), "v2"),
            (req("foo.com:8090", "/").port(8090), "v3"),
            (req("bar.com:8090", "/").port(8090), "404"),
            // bar.com has no listener on :80.
            (req("bar.com", "/"), "404"),
            (req("foo.com", "/").port(9999), "no-listener"),
        ],
    );
    let sockets: HashSet<(SocketAddr, Protocol)> = router.sockets().collect();
    let want: HashSet<(SocketAddr, Protocol)> = [80, 8080, 8090]
        .into_iter()
        .map(|p| (SocketAddr::new(ADDR, p), Protocol::Http))
        .collect();
    assert_eq!(sockets, want);
}

#[test]
fn multiple_gateways_on_different_addresses_do_not_leak_routes() {
    let shared = route("infra", "shared").rule(rule().path("/shared").to("v1"));
    let router = compile(vec![
        gateway("infra", "same-namespace").listener(
            listener("http", 80)
                .addr("10.0.0.1")
                .route(shared.clone())
                .route(route("infra", "same-only").rule(rule().to("v2"))),
        ),
        gateway("infra", "all-namespaces").listener(
            listener("http", 80)
                .addr("10.0.0.2")
                .route(shared)
                .route(route("infra", "all-only").rule(rule().to("v3"))),
        ),
    ]);
    check(
        &router,
        &[
            (req("gw.example", "/shared").on("10.0.0.1"), "v1"),
            (req("gw.example", "/").on("10.0.0.1"), "v2"),
            (req("gw.example", "/shared").on("10.0.0.2"), "v1"),
            (req("gw.example", "/").on("10.0.0.2"), "v3"),
            (req("gw.example", "/").on("10.0.0.3"), "no-listener"),
        ],
    );
    let Decision::Matched(m) = decide(&router, &req("gw.example", "/").on("10.0.0.2")) else {
        panic!("expected a match");
    };
    assert_eq!(m.listener.gateway_name, "all-namespaces");
}

#[test]
fn listener_on_the_unspecified_address_serves_every_local_address_of_its_port() {
    let router = compile(vec![
        gateway("infra", "any-address").listener(
            listener("http", 80)
                .addr("0.0.0.0")
                .route(route("infra", "r").rule(rule().to("v1"))),
        ),
        gateway("infra", "pinned").listener(
            listener("http", 80)
                .addr("10.0.0.9")
                .route(route("infra", "r").rule(rule().to("v2"))),
        ),
    ]);
    check(
        &router,
        &[
            (req("h.example", "/").on("10.0.0.1"), "v1"),
            (req("h.example", "/").on("127.0.0.1"), "v1"),
            // A more specific socket wins over the unspecified address.
            (req("h.example", "/").on("10.0.0.9"), "v2"),
            (req("h.example", "/").on("::1"), "no-listener"),
        ],
    );
}

/// The four listeners of the isolation test; `route_hosts` are added to every route.
fn isolation_router(route_hosts: &[&str]) -> meridian_model::Router {
    let names = [
        ("empty-hostname", None),
        ("wildcard-example-com", Some("*.example.com")),
        ("wildcard-foo-example-com", Some("*.foo.example.com")),
        ("abc-foo-example-com", Some("abc.foo.example.com")),
    ];
    let mut gw = gateway("infra", "http-listener-isolation");
    for (name, host) in names {
        let mut l = listener(name, 80);
        if let Some(h) = host {
            l = l.host(h);
        }
        l = l.route(
            route("infra", &format!("attaches-to-{name}"))
                .hosts(route_hosts)
                .rule(rule().path(&format!("/{name}")).to("v1")),
        );
        gw = gw.listener(l);
    }
    compile(vec![gw])
}

fn isolation_rows() -> Vec<(Req, &'static str)> {
    let served = [
        ("bar.com", "/empty-hostname"),
        ("bar.example.com", "/wildcard-example-com"),
        ("bar.foo.example.com", "/wildcard-foo-example-com"),
        ("abc.foo.example.com", "/abc-foo-example-com"),
    ];
    let mut rows = Vec::new();
    for (host, _) in served {
        for (_, path) in served {
            let want = if served.contains(&(host, path)) {
                "v1"
            } else {
                "404"
            };
            rows.push((req(host, path), want));
        }
    }
    assert_eq!(rows.len(), 16);
    rows
}

#[test]
fn gateway_http_listener_isolation_routes_without_hostnames() {
    check(&isolation_router(&[]), &isolation_rows());
}

#[test]
fn gateway_http_listener_isolation_routes_with_hostnames() {
    let hosts = [
        "bar.com",
        "*.example.com",
        "*.foo.example.com",
        "abc.foo.example.com",
    ];
    check(&isolation_router(&hosts), &isolation_rows());
}

/// The base HTTPS Gateway: four listeners on :443 sharing one socket.
fn https_gateway() -> meridian_model::snapshot::Gateway {
    let detect = |name: &str, backend: &str| {
        route("infra", name).rule(rule().path("/detect-misdirected-requests").to(backend))
    };
    gateway("infra", "same-namespace-with-https-listener")
        .listener(
            listener("https", 443)
                .https("https")
                .route(detect("https", "v1").host("example.org")),
        )
        .listener(
            listener("https-with-hostname", 443)
                .host("second-example.org")
                .https("second")
                .route(detect("https-with-hostname", "v2")),
        )
        .listener(
            listener("https-with-wildcard-hostname", 443)
                .host("*.wildcard.org")
                .https("wildcard")
                .route(detect("https-with-wildcard-hostname", "v3")),
        )
        .listener(
            listener("https-with-hostname-matching-wildcard", 443)
                .host("fourth-example.wildcard.org")
                .https("fourth")
                .route(detect("https-with-hostname-matching-wildcard", "v1")),
        )
}

fn tls(sni: &str, host: &str, path: &str) -> Req {
    req(host, path).port(443).sni(sni)
}

#[test]
fn https_listener_routes_by_sni_and_host() {
    // HTTPRouteHTTPSListener: R1 hostnames {example.org} offered to every listener (only the
    // hostname-less one intersects), R2 on `https-with-hostname` without hostnames.
    let mut gw = https_gateway();
    for l in &mut gw.listeners {
        l.routes.clear();
        l.routes.push(
            route("infra", "r1")
                .host("example.org")
                .rule(rule().to("v1"))
                .into(),
        );
    }
    gw.listeners[1]
        .routes
        .push(route("infra", "r2").rule(rule().to("v2")).into());
    let router = compile(vec![gw]);
    check(
        &router,
        &[
            (tls("example.org", "example.org", "/"), "v1"),
            (
                tls("unknown-example.org", "unknown-example.org", "/"),
                "404",
            ),
            (tls("second-example.org", "second-example.org", "/"), "v2"),
        ],
    );
}

#[test]
fn https_listener_detect_misdirected_requests_full_sni_host_table() {
    let router = compile(vec![https_gateway()]);
    let p = "/detect-misdirected-requests";
    check(
        &router,
        &[
            (tls("example.org", "example.org", p), "v1"),
            (tls("example.org", "second-example.org", p), "421"),
            (tls("example.org", "unknown-example.org", p), "404"),
            (tls("second-example.org", "second-example.org", p), "v2"),
            (tls("second-example.org", "example.org", p), "421"),
            (tls("second-example.org", "unknown-example.org", p), "421"),
            (tls("unknown-example.org", "example.org", p), "v1"),
            (tls("unknown-example.org", "unknown-example.org", p), "404"),
            (
                tls(
                    "third-example.wildcard.org",
                    "third-example.wildcard.org",
                    p,
                ),
                "v3",
            ),
            (
                tls("third-example.wildcard.org", "fith-example.wildcard.org", p),
                "v3",
            ),
            (
                tls(
                    "third-example.wildcard.org",
                    "fourth-example.wildcard.org",
                    p,
                ),
                "421",
            ),
            (
                tls("third-example.wildcard.org", "second-example.org", p),
                "421",
            ),
            (
                tls("third-example.wildcard.org", "unknown-example.org", p),
                "421",
            ),
            (
                tls(
                    "fourth-example.wildcard.org",
                    "fourth-example.wildcard.org",
                    p,
                ),
                "v1",
            ),
            (
                tls(
                    "fourth-example.wildcard.org",
                    "fith-example.wildcard.org",
                    p,
                ),
                "421",
            ),
            // Host ports and case do not matter for the comparison.
            (tls("Second-Example.org", "second-example.org:443", p), "v2"),
            (tls("example.org", "EXAMPLE.org:443", p), "v1"),
        ],
    );
    let Decision::Misdirected { listener } =
        decide(&router, &tls("example.org", "second-example.org", p))
    else {
        panic!("expected 421");
    };
    assert_eq!(
        listener.name, "https",
        "421 names the listener SNI selected"
    );
}

#[test]
fn https_certificate_follows_the_most_specific_listener_for_the_sni() {
    let router = compile(vec![https_gateway()]);
    let local = SocketAddr::new(ADDR, 443);
    let tag = |sni: Option<&str>| {
        let cert = router.certificate(local, sni).unwrap();
        cert.cert_pem.strip_prefix(DUMMY_CERT).unwrap().to_string()
    };
    assert_eq!(tag(Some("second-example.org")), "second");
    assert_eq!(tag(Some("a.wildcard.org")), "wildcard");
    assert_eq!(tag(Some("fourth-example.wildcard.org")), "fourth");
    assert_eq!(tag(Some("other.org")), "https");
    assert_eq!(tag(None), "https");
    assert!(
        router
            .certificate(SocketAddr::new(ADDR, 80), None)
            .is_none()
    );
    let sockets: Vec<_> = router.sockets().collect();
    assert_eq!(sockets, vec![(local, Protocol::Https)]);
}

#[test]
fn route_hostname_specificity_ranks_above_path_precedence() {
    // On one hostname-less listener, a route for the exact host wins over a wildcard route and a
    // catch-all route even with a shorter path, and the less specific routes still serve what the
    // more specific ones do not match.
    let router = compile(vec![
        gateway("infra", "hosts").listener(
            listener("http", 80)
                .route(
                    route("infra", "exact")
                        .host("a.foo.example.com")
                        .rule(rule().path("/").to("v1")),
                )
                .route(
                    route("infra", "wild-long")
                        .host("*.foo.example.com")
                        .rule(rule().path("/long/path").to("v2")),
                )
                .route(
                    route("infra", "wild-short")
                        .host("*.example.com")
                        .rule(rule().path("/only-short").to("v3")),
                )
                .route(
                    route("infra", "catch-all")
                        .rule(rule().path("/catch").to("v2"))
                        .rule(rule().path("/long/path/deeper").to("v3")),
                ),
        ),
    ]);
    check(
        &router,
        &[
            (req("a.foo.example.com", "/long/path"), "v1"),
            (req("b.foo.example.com", "/long/path/deeper"), "v2"),
            (req("b.foo.example.com", "/only-short"), "v3"),
            (req("b.foo.example.com", "/catch"), "v2"),
            (req("b.example.com", "/long/path"), "404"),
            (req("b.example.com", "/long/path/deeper"), "v3"),
            (req("foo.example.com", "/only-short"), "v3"),
            (req("example.com", "/only-short"), "404"),
        ],
    );
}
