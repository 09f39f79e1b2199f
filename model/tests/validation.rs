//! Why a snapshot is refused: every [`SnapshotError`] path returns `Err` from `Router::compile`
//! (and from `validate`, so the controller can check before sending) with a message that names
//! where the problem is; `load` never panics on bad text.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use meridian_model::snapshot::*;
use meridian_model::validate::validate;
use meridian_model::{Router, SnapshotError};

/// Compiles and expects an error whose message contains every fragment.
fn refused(gateways: Vec<Gateway>, fragments: &[&str]) -> SnapshotError {
    let snap = snapshot(gateways);
    let from_validate = validate(&snap).expect_err("validate accepted it");
    let err = Router::compile(snap).expect_err("compile accepted it");
    assert_eq!(err, from_validate, "validate and compile disagree");
    let msg = err.to_string();
    for f in fragments {
        assert!(msg.contains(f), "message {msg:?} lacks {f:?}");
    }
    err
}

fn one_rule(r: Rule) -> Vec<Gateway> {
    vec![gateway("infra", "gw").listener(listener("http", 80).route(route("app", "r").rule(r)))]
}

const RULE_LOC: &str = "gateway infra/gw listener http route app/r rule 0";

#[test]
fn valid_snapshot_passes_both_validate_and_compile() {
    let gws = one_rule(rule().path("/").to("v1"));
    validate(&snapshot(gws.clone())).unwrap();
    Router::compile(snapshot(gws)).unwrap();
    Router::compile(Snapshot::empty(3)).unwrap();
}

#[test]
fn bad_schema_is_refused_and_named() {
    let mut snap = snapshot(vec![]);
    snap.schema = "meridian.dev/snapshot/v0".to_string();
    let err = Router::compile(snap).unwrap_err();
    assert!(matches!(err, SnapshotError::Schema { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("meridian.dev/snapshot/v0") && msg.contains(SNAPSHOT_SCHEMA),
        "{msg}"
    );
}

#[test]
fn duplicate_listener_name_and_duplicate_gateway_are_refused() {
    refused(
        vec![
            gateway("infra", "gw")
                .listener(listener("http", 80))
                .listener(listener("http", 8080)),
        ],
        &["gateway infra/gw listener http", "duplicate listener name"],
    );
    refused(
        vec![
            gateway("infra", "gw").listener(listener("a", 80)),
            gateway("infra", "gw").listener(listener("b", 81)),
        ],
        &["gateway infra/gw", "twice"],
    );
}

#[test]
fn protocol_conflict_on_one_socket_is_refused() {
    let err = refused(
        vec![
            gateway("infra", "gw")
                .listener(listener("plain", 8443).host("a.example"))
                .listener(listener("tls", 8443).host("b.example").https("x")),
        ],
        &[
            "10.0.0.1:8443",
            "listener plain",
            "listener tls",
            "protocol",
        ],
    );
    assert!(matches!(err, SnapshotError::ProtocolConflict { .. }));
    // The same port on another address is another socket: no conflict.
    Router::compile(snapshot(vec![
        gateway("infra", "gw")
            .listener(listener("plain", 8443))
            .listener(listener("tls", 8443).addr("10.0.0.2").https("x")),
    ]))
    .unwrap();
}

#[test]
fn hostname_conflict_on_one_socket_is_refused_case_insensitively() {
    let err = refused(
        vec![
            gateway("infra", "gw")
                .listener(listener("a", 80).host("Same.Example"))
                .listener(listener("b", 80).host("same.example")),
        ],
        &["10.0.0.1:80", "listener a", "listener b", "same.example"],
    );
    assert!(matches!(err, SnapshotError::HostnameConflict { .. }));
    // Two hostname-less listeners on one socket conflict too, across Gateways.
    refused(
        vec![
            gateway("infra", "one").listener(listener("http", 80)),
            gateway("infra", "two").listener(listener("http", 80)),
        ],
        &[
            "gateway infra/one listener http",
            "gateway infra/two listener http",
        ],
    );
}

#[test]
fn invalid_regex_is_refused_with_its_location() {
    let cases = [
        ("path", m().regex("/a(")),
        ("header", m().header_re("x", "[z-a]")),
        ("query", m().query_re("q", "*x")),
        // Balanced anchors around an unbalanced pattern must not make it valid.
        ("path", m().regex("/a)|(/b")),
    ];
    for (what, bad) in cases {
        let err = refused(
            one_rule(rule().when(m().prefix("/ok")).when(bad).to("v1")),
            &[RULE_LOC, "match 1", what, "regular expression"],
        );
        assert!(!matches!(err, SnapshotError::Schema { .. }));
    }
}

#[test]
fn bad_redirect_status_and_scheme_are_refused() {
    let redirect = |status: u16, scheme: Option<&str>| {
        Filter::RequestRedirect(RequestRedirect {
            scheme: scheme.map(str::to_string),
            hostname: None,
            path: None,
            port: None,
            status_code: status,
        })
    };
    refused(
        one_rule(rule().filter(redirect(304, None))),
        &[RULE_LOC, "304"],
    );
    refused(
        one_rule(rule().filter(redirect(200, None))),
        &[RULE_LOC, "200"],
    );
    refused(
        one_rule(rule().filter(redirect(302, Some("ftp")))),
        &[RULE_LOC, "\"ftp\""],
    );
    refused(
        one_rule(rule().filter(redirect(302, Some("HTTPS")))),
        &[RULE_LOC, "\"HTTPS\""],
    );
    for ok in [301, 302, 303, 307, 308] {
        Router::compile(snapshot(one_rule(
            rule().filter(redirect(ok, Some("https"))),
        )))
        .unwrap();
    }
}

#[test]
fn cr_lf_or_nul_in_a_header_value_is_refused() {
    for bad in ["a\r\nInjected: yes", "a\nb", "a\rb", "a\0b"] {
        let f = Filter::RequestHeaderModifier(HeaderModifier {
            set: vec![],
            add: vec![HeaderValue {
                name: "X-Add".to_string(),
                value: bad.to_string(),
            }],
            remove: vec![],
        });
        refused(
            one_rule(rule().filter(f).to("v1")),
            &[RULE_LOC, "X-Add", "CR, LF"],
        );
    }
    // Response headers and backend-level filters are checked the same way.
    let f = Filter::ResponseHeaderModifier(HeaderModifier {
        set: vec![HeaderValue {
            name: "X-Set".to_string(),
            value: "x\r\n".to_string(),
        }],
        add: vec![],
        remove: vec![],
    });
    let mut b = backend("v1", 1);
    b.filters.push(f);
    refused(
        one_rule(rule().backend(b)),
        &[RULE_LOC, "backend v1", "X-Set"],
    );
}

/// Found by tests/fuzz_edge.rs: validation let other control characters through, which the
/// proxy's header types refuse, so the edit was silently skipped on every request.
#[test]
fn other_control_characters_in_a_header_value_are_refused_and_tab_and_utf8_pass() {
    let with_value = |value: &str| {
        Filter::RequestHeaderModifier(HeaderModifier {
            set: vec![HeaderValue {
                name: "X-Set".to_string(),
                value: value.to_string(),
            }],
            add: vec![],
            remove: vec![],
        })
    };
    for bad in ["\u{1}", "a\u{7f}", "\u{1b}[31mred", "a\u{1f}b"] {
        refused(
            one_rule(rule().filter(with_value(bad)).to("v1")),
            &[RULE_LOC, "X-Set", "control character"],
        );
    }
    for good in ["\tindented", "café", " spaced ", "a,b;q=0.5", ""] {
        Router::compile(snapshot(one_rule(rule().filter(with_value(good)).to("v1"))))
            .unwrap_or_else(|e| panic!("{good:?} refused: {e}"));
    }
}

#[test]
fn header_filters_may_not_touch_hop_by_hop_or_framing_headers() {
    let hv = |name: &str| HeaderValue {
        name: name.to_string(),
        value: "1".to_string(),
    };
    for name in [
        "Content-Length",
        "transfer-encoding",
        "Host",
        "Connection",
        "TE",
        "upgrade",
    ] {
        let cases = [
            Filter::RequestHeaderModifier(HeaderModifier {
                set: vec![hv(name)],
                add: vec![],
                remove: vec![],
            }),
            Filter::RequestHeaderModifier(HeaderModifier {
                set: vec![],
                add: vec![hv(name)],
                remove: vec![],
            }),
            Filter::ResponseHeaderModifier(HeaderModifier {
                set: vec![],
                add: vec![],
                remove: vec![name.to_string()],
            }),
        ];
        for f in cases {
            refused(
                one_rule(rule().filter(f).to("v1")),
                &[RULE_LOC, name, "hop-by-hop or framing"],
            );
        }
    }
    // Ordinary names still pass.
    let f = Filter::RequestHeaderModifier(HeaderModifier {
        set: vec![hv("x-gw")],
        add: vec![hv("content-type")],
        remove: vec!["x-old".to_string()],
    });
    validate(&snapshot(one_rule(rule().filter(f).to("v1")))).unwrap();
}

#[test]
fn replace_prefix_match_needs_exactly_one_path_prefix() {
    let rewrite = || {
        Filter::UrlRewrite(UrlRewrite {
            hostname: None,
            path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
        })
    };
    let bad = [
        rule().when(m().exact("/x")).filter(rewrite()),
        rule().when(m().regex("/x.*")).filter(rewrite()),
        rule().path("/a").path("/b").filter(rewrite()),
    ];
    for r in bad {
        refused(one_rule(r.to("v1")), &[RULE_LOC, "replacePrefixMatch"]);
    }
    // One prefix, or no matches at all (the implicit `PathPrefix /`), is fine.
    for ok in [
        rule().path("/a").filter(rewrite()),
        rule().filter(rewrite()),
        rule().when(m().header("x", "y")).filter(rewrite()),
    ] {
        Router::compile(snapshot(one_rule(ok.to("v1")))).unwrap();
    }
}

#[test]
fn https_listener_without_certificates_is_refused() {
    let mut no_tls = listener("https", 443).https("x");
    no_tls.tls = None;
    refused(
        vec![gateway("infra", "gw").listener(no_tls)],
        &["gateway infra/gw listener https", "without TLS"],
    );
    let mut empty = listener("https", 443).https("x");
    empty.tls = Some(ListenerTls {
        certificates: vec![],
    });
    refused(
        vec![gateway("infra", "gw").listener(empty)],
        &["gateway infra/gw listener https", "without TLS"],
    );
    let mut not_pem = listener("https", 443).https("x");
    not_pem.tls.as_mut().unwrap().certificates[0].key_pem = "secret".to_string();
    let err = refused(
        vec![gateway("infra", "gw").listener(not_pem)],
        &["gateway infra/gw listener https", "PEM"],
    );
    assert!(
        !err.to_string().contains("secret"),
        "must not echo key material"
    );
}

#[test]
fn other_invalid_fields_name_their_location() {
    let gw = |l: Listener| vec![gateway("infra", "gw").listener(l)];
    refused(gw(listener("zero", 0)), &["listener zero", "port 0"]);
    refused(
        gw(listener("h", 80).host("1.2.3.4")),
        &["listener h", "1.2.3.4"],
    );
    let mut tls_on_http = listener("h", 80).https("x");
    tls_on_http.protocol = Protocol::Http;
    refused(gw(tls_on_http), &["listener h", "TLS"]);
    refused(
        gw(listener("h", 80).route(route("app", "r").host("bad_host").rule(rule()))),
        &["route app/r", "bad_host"],
    );
    refused(
        one_rule(rule().when(m().exact("no-slash"))),
        &[RULE_LOC, "no-slash"],
    );
    refused(
        one_rule(rule().when(m().method("GE T"))),
        &[RULE_LOC, "method"],
    );
    refused(
        one_rule(rule().when(m().header("bad name", "v"))),
        &[RULE_LOC, "bad name"],
    );
    refused(
        one_rule(rule().weighted("heavy", 1_000_001)),
        &[RULE_LOC, "backend heavy"],
    );
}

#[test]
fn load_refuses_garbage_without_panicking() {
    let cases = [
        "",
        "   ",
        "not json",
        "schema: meridian.dev/snapshot/v1",
        "[1,2,3]",
        "{",
        "{\"schema\":",
        "{}",
        "{\"schema\":\"meridian.dev/snapshot/v1\"}",
        "{\"schema\":\"meridian.dev/snapshot/v1\",\"generation\":-1}",
        "{\"schema\":\"meridian.dev/snapshot/v1\",\"generation\":1,\"bogus\":true}",
        "{\"schema\":\"meridian.dev/snapshot/v1\",\"generation\":1,\"gateways\":[{\"namespace\":\"a\",\"name\":\"b\",\"extra\":1}]}",
        "{\"schema\":\"meridian.dev/snapshot/v9\",\"generation\":1}",
        "\u{feff}{}",
    ];
    for text in cases {
        assert!(meridian_model::load(text).is_err(), "{text:?} was accepted");
    }
    // Deep nesting hits serde_json's recursion limit instead of the stack.
    let deep = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    assert!(matches!(
        meridian_model::load(&deep),
        Err(SnapshotError::Decode(_))
    ));
    let unknown = meridian_model::load(
        "{\"schema\":\"meridian.dev/snapshot/v1\",\"generation\":1,\"bogus\":true}",
    )
    .unwrap_err();
    assert!(unknown.to_string().contains("bogus"), "{unknown}");
}

#[test]
fn load_round_trips_a_serialised_snapshot() {
    // Everything the builders can express survives JSON and routes the same way.
    let redirect = Filter::RequestRedirect(RequestRedirect {
        scheme: Some("https".into()),
        hostname: Some("example.org".into()),
        path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
        port: Some(8443),
        status_code: 301,
    });
    let header = Filter::RequestHeaderModifier(HeaderModifier {
        set: vec![HeaderValue {
            name: "a".into(),
            value: "b".into(),
        }],
        add: vec![],
        remove: vec!["c".into()],
    });
    let rewrite = Filter::UrlRewrite(UrlRewrite {
        hostname: Some("up.example".into()),
        path: Some(PathModifier::ReplaceFullPath("/x".into())),
    });
    let mirror = Filter::RequestMirror(RequestMirror {
        backend: backend("v3", 1),
        percent: 25.0,
    });
    let snap = snapshot(vec![
        gateway("infra", "gw")
            .listener(
                listener("http", 80).host("*.example.com").route(
                    route("app", "r")
                        .created(1_700_000_000)
                        .host("a.example.com")
                        .rule(rule().path("/old").filter(redirect))
                        .rule(
                            rule()
                                .when(
                                    m().exact("/e")
                                        .header("h", "v")
                                        .header_re("r", "x+")
                                        .query("q", "1")
                                        .query_re("p", "[0-9]")
                                        .method("PUT"),
                                )
                                .when(m().regex("/re/.*"))
                                .filter(header)
                                .filter(rewrite)
                                .filter(mirror)
                                .weighted("v1", 70)
                                .weighted("v2", 30),
                        ),
                ),
            )
            .listener(listener("https", 443).https("cert")),
    ]);
    let text = serde_json::to_string_pretty(&snap).unwrap();
    let router = meridian_model::load(&text).unwrap();
    assert_eq!(**router.snapshot(), snap);
    assert_eq!(router.generation(), 1);
    let got = matched(
        &router,
        &req("a.example.com", "/e?q=1&p=7")
            .method("PUT")
            .header("H", "v")
            .header("R", "xxx"),
    );
    assert_eq!(got.rule.index, 1);
}
