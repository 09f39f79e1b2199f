//! HTTPRoute `retry`, `sessionPersistence` (experimental rule fields, read beside the standard
//! type: world/http_route_extras.rs) and the `CORS` filter: defaults, and every invalid value
//! dropping its rule with UnsupportedValue while the rest of the route is served.

use serde_json::{Value, json};

use super::*;
use crate::world::HttpRouteWithExtras;

const GW: &str = "same-namespace";

/// A route `r` on GW with rule 0 = `rule0` (JSON, backend v1 added) and rule 1 a plain rule to
/// v1, applied through the watcher's object type.
fn with_rule(rule0: Value) -> Output {
    let mut rule0 = rule0;
    rule0["backendRefs"] = json!([{"name": "infra-backend-v1", "port": 8080}]);
    let route = HttpRouteWithExtras::from_json(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"namespace": INFRA, "name": "r", "generation": 1,
                     "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {
            "parentRefs": [{"name": GW}],
            "rules": [rule0, {"backendRefs": [{"name": "infra-backend-v1", "port": 8080}]}],
        },
    }))
    .unwrap();
    let mut w = base();
    east(&mut w).apply(route);
    run(&w, &cfg(&w))
}

/// Rule 0 was served: its snapshot form.
fn served(out: &Output) -> model::Rule {
    let r = snap_route(out, INFRA, GW, "http", "r");
    assert_eq!(r.rules.len(), 2, "both rules served");
    let p = route_parent(out, INFRA, "r", INFRA, GW);
    is(p, "Accepted", "True", "Accepted");
    r.rules[0].clone()
}

/// Rule 0 was dropped with UnsupportedValue naming `msg`; rule 1 is still served.
fn dropped(out: &Output, what: &str, msg: &str) {
    let p = route_parent(out, INFRA, "r", INFRA, GW);
    is(p, "Accepted", "True", "Accepted");
    is(p, "PartiallyInvalid", "True", "UnsupportedValue");
    let m = p["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PartiallyInvalid")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(m.starts_with("Dropped Rule 0"), "{what}: {m}");
    assert!(m.contains(msg), "{what}: {m:?} should mention {msg:?}");
    assert_eq!(
        snap_route(out, INFRA, GW, "http", "r").rules.len(),
        1,
        "{what}: only the valid rule is served"
    );
}

#[test]
fn retry_is_translated_with_defaults() {
    let r = served(&with_rule(json!({
        "retry": {"attempts": 3, "codes": [500, 502, 500], "backoff": "100ms"},
    })));
    assert_eq!(
        r.retry,
        Some(model::Retry {
            attempts: 3,
            codes: vec![500, 502],
            backoff_ms: Some(100),
        })
    );
    // No attempts: the implementation's default; `0s` back-off: none.
    let r = served(&with_rule(json!({"retry": {"backoff": "0s"}})));
    assert_eq!(
        r.retry,
        Some(model::Retry {
            attempts: crate::translate::rules::DEFAULT_RETRY_ATTEMPTS,
            codes: vec![],
            backoff_ms: None,
        })
    );
    // attempts 0 is valid: no retries.
    let r = served(&with_rule(
        json!({"retry": {"attempts": 0, "codes": [503]}}),
    ));
    assert_eq!(r.retry.map(|x| x.attempts), Some(0));
    // A rule without the field has no policy.
    assert_eq!(served(&with_rule(json!({}))).retry, None);
}

#[test]
fn invalid_retry_values_drop_the_rule() {
    for (what, retry, msg) in [
        (
            "negative attempts",
            json!({"attempts": -1}),
            "retry.attempts -1",
        ),
        (
            "too many attempts",
            json!({"attempts": 11}),
            "retry.attempts 11",
        ),
        ("success code", json!({"codes": [200]}), "retry.codes: 200"),
        (
            "code above 599",
            json!({"codes": [600]}),
            "retry.codes: 600",
        ),
        ("bad back-off", json!({"backoff": "1.5s"}), "retry.backoff"),
        (
            "wrong type",
            json!({"attempts": "three"}),
            "unreadable retry",
        ),
    ] {
        dropped(&with_rule(json!({"retry": retry})), what, msg);
    }
}

#[test]
fn session_persistence_is_translated_with_defaults() {
    let r = served(&with_rule(json!({"sessionPersistence": {}})));
    assert_eq!(
        r.session_persistence,
        Some(model::SessionPersistence {
            name: crate::translate::rules::DEFAULT_SESSION_NAME.into(),
            kind: model::SessionKind::Cookie,
            absolute_timeout_ms: None,
            idle_timeout_ms: None,
            permanent: false,
        })
    );
    let r = served(&with_rule(json!({"sessionPersistence": {
        "sessionName": "sticky", "type": "Cookie", "absoluteTimeout": "1h",
        "idleTimeout": "30m", "cookieConfig": {"lifetimeType": "Permanent"}}})));
    assert_eq!(
        r.session_persistence,
        Some(model::SessionPersistence {
            name: "sticky".into(),
            kind: model::SessionKind::Cookie,
            absolute_timeout_ms: Some(3_600_000),
            idle_timeout_ms: Some(1_800_000),
            permanent: true,
        })
    );
    let r = served(&with_rule(json!({"sessionPersistence": {
        "sessionName": "x-session", "type": "Header"}})));
    assert_eq!(
        r.session_persistence.map(|s| (s.name, s.kind)),
        Some(("x-session".into(), model::SessionKind::Header))
    );
}

#[test]
fn invalid_session_persistence_values_drop_the_rule() {
    for (what, sp, msg) in [
        ("unknown type", json!({"type": "Url"}), "type \"Url\""),
        (
            "permanent without absolute timeout",
            json!({"cookieConfig": {"lifetimeType": "Permanent"}}),
            "needs an absoluteTimeout",
        ),
        (
            "unknown lifetime",
            json!({"cookieConfig": {"lifetimeType": "Forever"}}),
            "lifetimeType \"Forever\"",
        ),
        (
            "cookie config on a header session",
            json!({"type": "Header", "cookieConfig": {"lifetimeType": "Session"}}),
            "cookieConfig may only be set with type Cookie",
        ),
        (
            "bad idle timeout",
            json!({"idleTimeout": "soon"}),
            "idleTimeout",
        ),
        (
            "name with a space",
            json!({"sessionName": "a b"}),
            "session name",
        ),
    ] {
        dropped(&with_rule(json!({"sessionPersistence": sp})), what, msg);
    }
}

fn cors_rule(cors: Value) -> Value {
    json!({"filters": [{"type": "CORS", "cors": cors}]})
}

#[test]
fn cors_filter_is_translated_with_defaults() {
    let r = served(&with_rule(cors_rule(json!({
        "allowOrigins": ["https://www.foo.com", "https://*.bar.com"],
        "allowMethods": ["GET", "OPTIONS"],
        "allowHeaders": ["x-header-1", "x-header-2"],
        "exposeHeaders": ["x-header-3", "x-header-4"],
        "allowCredentials": true,
        "maxAge": 3600,
    }))));
    assert_eq!(
        r.filters,
        vec![model::Filter::Cors(model::Cors {
            allow_origins: vec!["https://www.foo.com".into(), "https://*.bar.com".into()],
            allow_methods: vec!["GET".into(), "OPTIONS".into()],
            allow_headers: vec!["x-header-1".into(), "x-header-2".into()],
            expose_headers: vec!["x-header-3".into(), "x-header-4".into()],
            allow_credentials: true,
            max_age: 3600,
        })]
    );
    // Rule 0's backend is served, not replaced by a 500 target.
    assert!(matches!(
        r.backends[0].target,
        model::BackendTarget::Endpoints { .. }
    ));
    let r = served(&with_rule(cors_rule(json!({"allowOrigins": ["*"]}))));
    match &r.filters[0] {
        model::Filter::Cors(c) => assert_eq!((c.max_age, c.allow_credentials), (5, false)),
        f => panic!("{f:?}"),
    }
}

#[test]
fn invalid_cors_values_drop_the_rule() {
    for (what, cors, msg) in [
        (
            "origin without scheme",
            json!({"allowOrigins": ["www.foo.com"]}),
            "allowOrigins \"www.foo.com\"",
        ),
        (
            "origin with a path",
            json!({"allowOrigins": ["https://foo.com/path"]}),
            "allowOrigins",
        ),
        (
            "star method among others",
            json!({"allowOrigins": ["*"], "allowMethods": ["GET", "*"]}),
            "must be the only method",
        ),
        (
            "max age 0",
            json!({"allowOrigins": ["*"], "maxAge": 0}),
            "maxAge 0",
        ),
        (
            "bad header name",
            json!({"allowOrigins": ["*"], "allowHeaders": ["x header"]}),
            "CORS header name",
        ),
    ] {
        dropped(&with_rule(cors_rule(cors)), what, msg);
    }
    // Two CORS filters in one rule.
    let twice = json!({"filters": [
        {"type": "CORS", "cors": {"allowOrigins": ["*"]}},
        {"type": "CORS", "cors": {"allowOrigins": ["*"]}},
    ]});
    dropped(
        &with_rule(twice),
        "two CORS filters",
        "CORS may appear at most once",
    );
}

#[test]
fn cors_in_a_backend_ref_answers_500_for_that_backend() {
    let route = HttpRouteWithExtras::from_json(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"namespace": INFRA, "name": "r", "generation": 1},
        "spec": {
            "parentRefs": [{"name": GW}],
            "rules": [{"backendRefs": [{"name": "infra-backend-v1", "port": 8080,
                "filters": [{"type": "CORS", "cors": {"allowOrigins": ["*"]}}]}]}],
        },
    }))
    .unwrap();
    let mut w = base();
    east(&mut w).apply(route);
    let out = run(&w, &cfg(&w));
    let r = snap_route(&out, INFRA, GW, "http", "r");
    assert!(
        matches!(
            r.rules[0].backends[0].target,
            model::BackendTarget::Invalid { .. }
        ),
        "{:?}",
        r.rules[0].backends[0]
    );
    is(
        route_parent(&out, INFRA, "r", INFRA, GW),
        "PartiallyInvalid",
        "True",
        "UnsupportedValue",
    );
}

#[test]
fn supported_features_list_retry_and_cors() {
    for f in [
        "HTTPRouteCORS",
        "HTTPRouteRetry",
        "HTTPRouteRetryBackendTimeout",
        "HTTPRouteRetryConnectionError",
    ] {
        assert!(crate::translate::SUPPORTED_FEATURES.contains(&f), "{f}");
    }
}
