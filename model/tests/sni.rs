//! SNI routing of TLS passthrough listeners (`meridian_model::sni`): which TLSRoute a server
//! name reaches, what a name must look like, and what the snapshot validation refuses around
//! passthrough listeners.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use meridian_model::Router;
use meridian_model::snapshot::*;
use meridian_model::sni::{SniDecision, SniError, normalize_sni, route as sni_route};

const PORT: u16 = 443;

fn tls_listener(name: &str) -> Listener {
    let mut l = listener(name, PORT);
    l.protocol = Protocol::Tls;
    l
}

/// A TLSRoute as the controller writes it: one rule of backends, effective hostnames.
fn tls_route(name: &str, hosts: &[&str], backend: &str) -> Route {
    let mut r = route("infra", name).hosts(hosts).rule(rule().to(backend));
    r.kind = RouteKind::Tls;
    r
}

fn local() -> SocketAddr {
    SocketAddr::new(ADDR, PORT)
}

/// The backend an SNI reaches, `"none"` when no route takes it, `"not-tls"` when the socket has
/// no passthrough listener.
fn pick(router: &Router, sni: &str) -> String {
    let name = normalize_sni(sni).unwrap();
    match sni_route(router, local(), &name) {
        SniDecision::Matched(m) => m.rule.rule.backends[0].name.clone(),
        SniDecision::NoRoute => "none".into(),
        SniDecision::NotPassthrough => "not-tls".into(),
    }
}

#[test]
fn exact_beats_wildcard_and_longest_wildcard_suffix_wins() {
    let router = compile(vec![
        gateway("infra", "gw").listener(
            tls_listener("tls")
                .route(tls_route("wide", &["*.example.com"], "wide"))
                .route(tls_route("narrow", &["*.a.example.com"], "narrow"))
                .route(tls_route("exact", &["b.a.example.com"], "exact")),
        ),
    ]);
    for (sni, want) in [
        ("b.a.example.com", "exact"),
        ("c.a.example.com", "narrow"),
        ("x.c.a.example.com", "narrow"),
        ("z.example.com", "wide"),
        ("B.A.Example.COM.", "exact"),
        // A wildcard never stands for the apex.
        ("example.com", "none"),
        ("a.example.com", "wide"),
        ("other.org", "none"),
    ] {
        assert_eq!(pick(&router, sni), want, "{sni}");
    }
}

#[test]
fn listener_hostname_selects_the_listener_first() {
    // Two passthrough listeners on one socket: the SNI picks the listener (exact > wildcard),
    // then one of its routes; a route of the other listener is never reached.
    let router = compile(vec![
        gateway("infra", "gw")
            .listener(tls_listener("wild").host("*.example.com").route(tls_route(
                "w",
                &["*.example.com"],
                "w",
            )))
            .listener(tls_listener("exact").host("a.example.com").route(tls_route(
                "e",
                &["a.example.com"],
                "e",
            ))),
    ]);
    assert_eq!(pick(&router, "a.example.com"), "e");
    assert_eq!(pick(&router, "b.example.com"), "w");
    assert_eq!(pick(&router, "example.com"), "none");
}

#[test]
fn equal_hostnames_go_to_the_older_route() {
    let mut old = tls_route("z-old", &["a.example.com"], "old");
    old.created_at = 10;
    let mut new = tls_route("a-new", &["a.example.com"], "new");
    new.created_at = 20;
    let router = compile(vec![
        gateway("infra", "gw").listener(tls_listener("tls").route(new).route(old)),
    ]);
    assert_eq!(pick(&router, "a.example.com"), "old");
}

#[test]
fn http_sockets_are_not_passthrough() {
    let router = compile(vec![gateway("infra", "gw").listener(
        listener("http", PORT).route(route("infra", "r").rule(rule().to("v1"))),
    )]);
    assert_eq!(pick(&router, "a.example.com"), "not-tls");
    let empty = compile(vec![]);
    assert_eq!(pick(&empty, "a.example.com"), "not-tls");
    // A passthrough socket without routes closes every connection (no route), not "not-tls".
    let bare = compile(vec![gateway("infra", "gw").listener(tls_listener("tls"))]);
    assert_eq!(pick(&bare, "a.example.com"), "none");
}

#[test]
fn server_names_are_normalised_or_refused() {
    assert_eq!(normalize_sni("A.Example.COM").unwrap(), "a.example.com");
    assert_eq!(normalize_sni("a.example.com.").unwrap(), "a.example.com");
    assert_eq!(normalize_sni("").unwrap_err(), SniError::Missing);
    assert_eq!(normalize_sni(".").unwrap_err(), SniError::Missing);
    assert!(matches!(
        normalize_sni("10.0.0.1"),
        Err(SniError::IpAddress(_))
    ));
    assert!(matches!(normalize_sni("::1"), Err(SniError::IpAddress(_))));
    let long_label = format!("{}.com", "a".repeat(64));
    let long_name = vec!["a".repeat(60); 5].join(".");
    for bad in [
        "a..b",
        "*.example.com",
        "-a.com",
        "a-.com",
        "a_b.com",
        "a b.com",
        "a.com..",
        "é.com",
        long_label.as_str(),
        long_name.as_str(),
    ] {
        assert!(
            matches!(normalize_sni(bad), Err(SniError::NotDnsName(_))),
            "{bad}"
        );
    }
}

#[test]
fn validation_keeps_route_kinds_to_their_listeners() {
    let refused = |gw: Gateway| Router::compile(snapshot(vec![gw])).unwrap_err().to_string();
    // An HTTPRoute on a passthrough listener.
    let e = refused(
        gateway("infra", "gw")
            .listener(tls_listener("tls").route(route("infra", "h").rule(rule().to("v1")))),
    );
    assert!(
        e.contains("cannot attach to a TLS passthrough listener"),
        "{e}"
    );
    // A TLSRoute on an HTTP listener.
    let e = refused(
        gateway("infra", "gw").listener(listener("http", 80).route(tls_route(
            "t",
            &["a.example.com"],
            "v1",
        ))),
    );
    assert!(e.contains("only to a TLS passthrough listener"), "{e}");
    // TLS material on a passthrough listener.
    let mut l = tls_listener("tls").https("x");
    l.protocol = Protocol::Tls;
    let e = refused(gateway("infra", "gw").listener(l));
    assert!(e.contains("must not carry TLS material"), "{e}");
    // A TLSRoute rule with a match, or two rules.
    let mut r = tls_route("t", &["a.example.com"], "v1");
    r.rules[0].matches.push(Match::default());
    let e = refused(gateway("infra", "gw").listener(tls_listener("tls").route(r)));
    assert!(e.contains("only backends"), "{e}");
    let r = tls_route("t", &["a.example.com"], "v1").rule(rule().to("v2"));
    let e = refused(gateway("infra", "gw").listener(tls_listener("tls").route(r)));
    assert!(e.contains("exactly one rule"), "{e}");
    // A passthrough and an HTTPS listener cannot share a socket.
    let e = refused(
        gateway("infra", "gw")
            .listener(tls_listener("tls").host("a.example.com"))
            .listener(listener("https", PORT).host("b.example.com").https("x")),
    );
    assert!(e.contains("different protocols"), "{e}");
}

#[test]
fn wire_form_names_the_kind_and_protocol() {
    let l = tls_listener("tls").route(tls_route("t", &["a.example.com"], "v1"));
    let v = serde_json::to_value(&l).unwrap();
    assert_eq!(v["protocol"], "TLS");
    assert_eq!(v["routes"][0]["kind"], "TLSRoute");
    let back: Listener = serde_json::from_value(v).unwrap();
    assert_eq!(back, l);
}
