//! The snapshot's JSON shape, pinned by a hand-written document: the controller serialises with
//! serde and the proxy decodes with `load`, so an accidental rename of a field or a tag would
//! still round-trip between two builds of the same code but break mixed versions. This test
//! fails on such a rename.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use meridian_model::snapshot::*;

const DOC: &str = r#"{
  "schema": "meridian.dev/snapshot/v1",
  "generation": 7,
  "gateways": [{
    "namespace": "infra",
    "name": "gw",
    "listeners": [{
      "name": "http",
      "address": "10.0.0.1",
      "port": 80,
      "protocol": "HTTP",
      "hostname": "*.example.com",
      "routes": [{
        "namespace": "app",
        "name": "api",
        "createdAt": 1700000000,
        "hostnames": ["a.example.com"],
        "rules": [{
          "name": "main",
          "matches": [{
            "path": {"type": "pathPrefix", "value": "/api"},
            "headers": [{"name": "X-Tier", "value": "gold|silver", "type": "regularExpression"}],
            "queryParams": [{"name": "v", "value": "2"}],
            "method": "GET"
          }],
          "filters": [
            {"type": "requestHeaderModifier", "set": [{"name": "a", "value": "b"}], "remove": ["c"]},
            {"type": "responseHeaderModifier", "add": [{"name": "d", "value": "e"}]},
            {"type": "urlRewrite", "hostname": "up.example", "path": {"type": "replacePrefixMatch", "value": "/v2"}},
            {"type": "requestMirror", "percent": 10.0,
             "backend": {"name": "app/shadow:80", "target": {"type": "endpoints"}}}
          ],
          "backends": [
            {"name": "app/api:8080", "weight": 3,
             "target": {"type": "endpoints", "protocol": "h2c",
                        "endpoints": [{"address": "10.1.0.5", "port": 8080, "cluster": "east",
                                       "region": "us-east", "zone": "us-east-1a", "ready": false}],
                        "failover": {"regionOrder": ["us-west"]}}},
            {"name": "app/missing:80", "target": {"type": "invalid", "reason": "BackendNotFound"}}
          ],
          "timeouts": {"requestMs": 500, "backendRequestMs": 200},
          "retry": {"attempts": 2, "codes": [503], "backoffMs": 10}
        }, {
          "matches": [{"path": {"type": "exact", "value": "/old"}},
                      {"path": {"type": "regularExpression", "value": "/legacy/.*"}}],
          "filters": [{"type": "requestRedirect", "scheme": "https", "path": {"type": "replaceFullPath", "value": "/new"}, "statusCode": 301}]
        }]
      }]
    }, {
      "name": "https",
      "address": "10.0.0.1",
      "port": 443,
      "protocol": "HTTPS",
      "tls": {"certificates": [{"certPem": "-----BEGIN CERTIFICATE-----\n", "keyPem": "-----BEGIN PRIVATE KEY-----\n"}]}
    }]
  }]
}"#;

#[test]
fn hand_written_snapshot_decodes_with_defaults_applied() {
    let router = meridian_model::load(DOC).unwrap();
    assert_eq!(router.generation(), 7);
    let snap = router.snapshot();
    let l = &snap.gateways[0].listeners[0];
    assert_eq!(l.protocol, Protocol::Http);
    let r = &l.routes[0];
    assert_eq!(r.created_at, 1_700_000_000);
    let main = &r.rules[0];
    assert_eq!(main.matches[0].path, PathMatch::PathPrefix("/api".into()));
    assert_eq!(
        main.matches[0].headers[0].kind,
        ValueMatchType::RegularExpression
    );
    assert_eq!(main.matches[0].query_params[0].kind, ValueMatchType::Exact);
    assert_eq!(main.filters.len(), 4);
    assert!(matches!(
        &main.filters[2],
        Filter::UrlRewrite(UrlRewrite { path: Some(PathModifier::ReplacePrefixMatch(p)), .. }) if p == "/v2"
    ));
    let Filter::RequestMirror(mirror) = &main.filters[3] else {
        panic!("mirror expected");
    };
    assert_eq!(mirror.backend.weight, 1, "weight defaults to 1");
    let BackendTarget::Endpoints {
        protocol,
        endpoints,
        failover,
    } = &main.backends[0].target
    else {
        panic!("endpoints expected");
    };
    assert_eq!(*protocol, BackendProtocol::H2c);
    assert!(!endpoints[0].ready);
    assert_eq!(failover.as_ref().unwrap().region_order, vec!["us-west"]);
    assert!(matches!(
        main.backends[1].target,
        BackendTarget::Invalid { .. }
    ));
    assert_eq!(main.timeouts.request_ms, Some(500));
    assert_eq!(main.retry.as_ref().unwrap().codes, vec![503]);
    let redirect = r.rules[1].filters.first().unwrap();
    assert!(matches!(redirect, Filter::RequestRedirect(rr) if rr.status_code == 301));

    // And it routes.
    let api = matched(
        &router,
        &req("a.example.com", "/api/x?v=2").header("x-tier", "gold"),
    );
    assert_eq!(api.rule.index, 0);
    assert_eq!(api.matched_prefix.as_deref(), Some("/api"));
    let old = matched(&router, &req("A.example.com", "/legacy/page"));
    assert_eq!(old.rule.index, 1);
    assert_eq!(send(&router, &req("b.example.com", "/api/x?v=2")), "404");
}

#[test]
fn redirect_status_defaults_to_302_when_omitted() {
    let doc = DOC.replace(", \"statusCode\": 301", "");
    let router = meridian_model::load(&doc).unwrap();
    let m = matched(&router, &req("a.example.com", "/old"));
    assert_eq!(m.rule.redirect().unwrap().status_code, 302);
}

#[test]
fn unknown_fields_and_unknown_tags_are_refused() {
    let cases = [
        ("\"createdAt\"", "\"created_at\""),
        ("\"type\": \"pathPrefix\"", "\"type\": \"PathPrefix\""),
        ("\"type\": \"urlRewrite\"", "\"type\": \"urlRewriter\""),
        ("\"protocol\": \"HTTP\"", "\"protocol\": \"TCP\""),
        ("\"backoffMs\"", "\"backoff\""),
        ("\"certPem\"", "\"cert\""),
    ];
    for (from, to) in cases {
        assert!(DOC.contains(from), "fixture lacks {from}");
        let doc = DOC.replacen(from, to, 1);
        assert!(
            meridian_model::load(&doc).is_err(),
            "{from} → {to} was accepted"
        );
    }
}

/// `Backend.tls`: its JSON shape, absent from backends without it (older snapshots and older
/// proxies read the same document), and a proxy that does not know it refuses the snapshot
/// rather than dropping it (here: a misspelt field inside `tls` is refused the same way).
#[test]
fn backend_tls_shape_and_compatibility() {
    let with_tls = DOC.replacen(
        r#""name": "app/api:8080", "weight": 3,"#,
        r#""name": "app/api:8080", "weight": 3,
           "tls": {"hostname": "api.internal", "caPem": "-----BEGIN CERTIFICATE-----\n",
                   "subjectAltNames": [{"hostname": "*.internal"}, {"uri": "spiffe://td/sa/api"}]},"#,
        1,
    );
    assert_ne!(with_tls, DOC);
    assert!(
        meridian_model::load(&with_tls).is_ok(),
        "the proxy takes it"
    );
    let s: Snapshot = serde_json::from_str(&with_tls).unwrap();
    let b = &s.gateways[0].listeners[0].routes[0].rules[0].backends[0];
    assert_eq!(
        b.tls.as_deref(),
        Some(&BackendTls {
            hostname: "api.internal".into(),
            ca_pem: Some("-----BEGIN CERTIFICATE-----\n".into()),
            subject_alt_names: vec![
                SubjectAltName::Hostname("*.internal".into()),
                SubjectAltName::Uri("spiffe://td/sa/api".into()),
            ],
        })
    );
    // Round trip keeps it; a backend without it serialises without the key.
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<Snapshot>(&json).unwrap(), s);
    let plain: Snapshot = serde_json::from_str(DOC).unwrap();
    let b = &plain.gateways[0].listeners[0].routes[0].rules[0].backends[1];
    assert_eq!(b.tls, None);
    assert!(!serde_json::to_string(b).unwrap().contains("tls"));
    // Unknown fields inside tls are refused, like everywhere in the snapshot.
    let typo = with_tls.replacen("\"caPem\"", "\"ca\"", 1);
    assert!(meridian_model::load(&typo).is_err());
}
