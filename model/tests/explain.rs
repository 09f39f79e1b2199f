//! `meridian explain` from a snapshot: the rule the router picks (with the rules it beat), and
//! the order a proxy at each locality tries endpoints in, with `--fail` what-ifs for a zone, a
//! region and a cluster, drains, geo-fences, failover orders and the spill rule.
#![allow(clippy::unwrap_used)]

use meridian_model::GatewayRef;
use meridian_model::explain::{
    Ejection, EndpointState, ExplainError, ExplainRequest, Explanation, Failure, LocalityView,
    MeasuredOrder, OrderSource, RegionRttView, TierKind, Vantage, backends, backends_seen, explain,
    explain_seen,
};
use meridian_model::locality::Locality;
use meridian_model::snapshot::Snapshot;
use serde_json::{Value, json};

/// Two endpoints per region (zones `<region>-a`, `<region>-b`), in three regions, as
/// `meridian up` runs them; cluster names as in the demo.
fn demo_endpoints() -> Value {
    let mut out = Vec::new();
    for (n, (cluster, region)) in [
        ("east", "us-east"),
        ("west", "us-west"),
        ("central", "eu-central"),
    ]
    .iter()
    .enumerate()
    {
        for (z, zone) in ["a", "b"].iter().enumerate() {
            out.push(json!({
                "address": format!("127.0.{}.{}", 100 + n, z + 1),
                "port": 8080,
                "cluster": cluster,
                "region": region,
                "zone": format!("{region}-{zone}"),
            }));
        }
    }
    Value::Array(out)
}

/// A snapshot with Gateway demo/web: listener `http` (any host) and `shop` (`*.example.com`)
/// on port 80; routes `echo` (everything) and `api` (prefix /api, and /api with a header to
/// `canary`), `old` (a redirect).
fn snapshot(failover: Value, drains: Value, endpoints: Value) -> Snapshot {
    let mut target = json!({"type": "endpoints", "endpoints": endpoints});
    if !failover.is_null() {
        target["failover"] = failover;
    }
    let s = json!({
        "schema": "meridian.dev/snapshot/v1",
        "generation": 7,
        "drains": drains,
        "gateways": [{
            "namespace": "demo",
            "name": "web",
            "listeners": [
                {
                    "name": "http", "address": "127.0.10.1", "port": 80, "protocol": "HTTP",
                    "routes": [{
                        "namespace": "demo", "name": "echo", "createdAt": 1,
                        "rules": [{
                            "backends": [{"name": "demo/echo:80", "target": target}]
                        }]
                    }]
                },
                {
                    "name": "shop", "address": "127.0.10.1", "port": 80, "protocol": "HTTP",
                    "hostname": "*.example.com",
                    "routes": [
                        {
                            "namespace": "demo", "name": "api", "createdAt": 2,
                            "rules": [
                                {
                                    "matches": [{"path": {"type": "pathPrefix", "value": "/api"}}],
                                    "backends": [
                                        {"name": "demo/api:80", "weight": 3, "target": target},
                                        {"name": "demo/api-v2:80", "weight": 1, "target": target}
                                    ]
                                },
                                {
                                    "matches": [{"path": {"type": "pathPrefix", "value": "/api"},
                                                 "headers": [{"name": "x-canary", "value": "yes"}]}],
                                    "filters": [{"type": "requestHeaderModifier",
                                                 "set": [{"name": "x-track", "value": "canary"}]}],
                                    "backends": [{"name": "demo/canary:80", "target": target}]
                                }
                            ]
                        },
                        {
                            "namespace": "demo", "name": "old", "createdAt": 3,
                            "rules": [{
                                "matches": [{"path": {"type": "exact", "value": "/old"}}],
                                "filters": [{"type": "requestRedirect", "path":
                                    {"type": "replaceFullPath", "value": "/api"}, "statusCode": 301}]
                            }]
                        },
                        {
                            "namespace": "demo", "name": "catch-all", "createdAt": 4,
                            "rules": [{"backends": [{"name": "demo/echo:80", "target": target}]}]
                        }
                    ]
                }
            ]
        }]
    });
    serde_json::from_value(s).unwrap()
}

fn demo() -> Snapshot {
    snapshot(Value::Null, json!([]), demo_endpoints())
}

fn gw() -> GatewayRef {
    "demo/web".parse().unwrap()
}

fn req(host: &str, path: &str) -> ExplainRequest {
    ExplainRequest {
        method: "GET".into(),
        host: host.into(),
        path: path.into(),
        headers: Vec::new(),
        port: None,
    }
}

fn proxy(cluster: &str, region: &str, zone: &str) -> Locality {
    Locality {
        cluster: cluster.into(),
        region: region.into(),
        zone: zone.into(),
    }
}

fn east() -> Locality {
    proxy("east", "us-east", "us-east-a")
}

fn run(s: &Snapshot, r: &ExplainRequest, proxies: &[Locality], fail: Option<&str>) -> Explanation {
    let fail = fail.map(Failure::new);
    explain(s, &gw(), r, proxies, fail.as_ref()).unwrap()
}

/// The (zone, state) of each step of the first backend's order from the first locality.
fn order(e: &Explanation) -> Vec<(String, EndpointState)> {
    from(e)
        .order
        .iter()
        .map(|s| (s.endpoint.zone.clone(), s.endpoint.state))
        .collect()
}

fn from(e: &Explanation) -> &LocalityView {
    &e.backends[0].from[0]
}

fn zones(v: &[(String, EndpointState)]) -> Vec<&str> {
    v.iter().map(|(z, _)| z.as_str()).collect()
}

#[test]
fn the_most_specific_listener_and_rule_win_and_the_beaten_rules_are_listed_in_order() {
    let s = demo();
    let mut r = req("shop.example.com", "/api/items");
    r.headers.push(("X-Canary".into(), "yes".into()));
    let e = run(&s, &r, &[east()], None);
    assert_eq!(e.decision, "matched");
    assert_eq!(e.status, None);
    assert_eq!(e.listener.as_deref(), Some("shop"));
    let why = e.listener_why.as_deref().unwrap();
    assert!(
        why.contains("*.example.com matches shop.example.com"),
        "{why}"
    );
    assert!(why.contains("most specific wins"), "{why}");
    let listeners: Vec<(&str, bool, bool)> = e
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.host_matches, l.chosen))
        .collect();
    assert_eq!(listeners, [("http", true, false), ("shop", true, true)]);

    // The header rule beats the plain /api prefix rule, which beats the catch-all.
    let rule = e.rule.as_ref().unwrap();
    assert_eq!((rule.route.as_str(), rule.rule), ("demo/api", 1));
    assert!(rule.why.contains("precedence"), "{}", rule.why);
    assert_eq!(rule.filters.len(), 1);
    let beaten: Vec<(&str, usize)> = e
        .also_matching
        .iter()
        .map(|r| (r.route.as_str(), r.rule))
        .collect();
    assert_eq!(beaten, [("demo/api", 0), ("demo/catch-all", 0)]);
    assert_eq!(e.backends.len(), 1);
    assert_eq!(e.backends[0].name, "demo/canary:80");

    // Without the header: the weighted rule, 75 / 25.
    let e = run(&s, &req("shop.example.com", "/api/items"), &[east()], None);
    let rule = e.rule.as_ref().unwrap();
    assert_eq!((rule.route.as_str(), rule.rule), ("demo/api", 0));
    let shares: Vec<(&str, f64)> = e
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.share_percent))
        .collect();
    assert_eq!(shares, [("demo/api:80", 75.0), ("demo/api-v2:80", 25.0)]);

    // A host no hostname listener accepts goes to the listener without hostname.
    let e = run(&s, &req("other.test", "/api"), &[east()], None);
    assert_eq!(e.listener.as_deref(), Some("http"));
    assert_eq!(e.rule.as_ref().unwrap().route, "demo/echo");
    assert!(e.also_matching.is_empty());
}

#[test]
fn paths_are_normalised_as_the_proxy_does_and_redirects_are_answered_by_the_proxy() {
    let s = demo();
    let e = run(&s, &req("a.example.com", "/static/../old"), &[east()], None);
    assert_eq!(e.request.path, "/old");
    assert_eq!(e.rule.as_ref().unwrap().route, "demo/old");
    assert_eq!(e.status, Some(301));
    assert!(e.backends.is_empty());

    let e = run(&s, &req("a.example.com", "/api?x=1"), &[east()], None);
    assert_eq!(e.request.query.as_deref(), Some("x=1"));
    assert_eq!(e.request.port, 80);

    let err = explain(&s, &gw(), &req("a", "/%zz"), &[east()], None).unwrap_err();
    assert!(matches!(err, ExplainError::Path { .. }), "{err}");
}

#[test]
fn unknown_gateways_and_ports_are_clear_errors() {
    let s = demo();
    let other: GatewayRef = "demo/nope".parse().unwrap();
    let err = explain(&s, &other, &req("a", "/"), &[east()], None).unwrap_err();
    assert_eq!(err, ExplainError::UnknownGateway(other));
    assert!(err.to_string().contains("demo/nope"), "{err}");
    let mut r = req("a", "/");
    r.port = Some(8443);
    let err = explain(&s, &gw(), &r, &[east()], None).unwrap_err();
    assert!(
        err.to_string().contains("no listener on port 8443"),
        "{err}"
    );
    assert!(err.to_string().contains("[80]"), "{err}");
}

#[test]
fn without_failure_the_own_zone_serves_then_the_region_then_other_regions_alphabetically() {
    let e = run(&demo(), &req("demo", "/"), &[east()], None);
    let f = from(&e);
    assert!(!f.proxy_failed);
    assert_eq!(f.status, None);
    assert_eq!(
        zones(&order(&e)),
        [
            "us-east-a",
            "us-east-b",
            "eu-central-a",
            "eu-central-b",
            "us-west-a",
            "us-west-b"
        ]
    );
    let kinds: Vec<(TierKind, &str)> = f
        .tiers
        .iter()
        .map(|t| (t.kind, t.region.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (TierKind::Zone, "us-east"),
            (TierKind::Region, "us-east"),
            (TierKind::Failover, "eu-central"),
            (TierKind::Failover, "us-west"),
        ]
    );
    assert!(
        f.tiers[2].why.contains("alphabetically"),
        "{}",
        f.tiers[2].why
    );
    assert!(
        f.order[0].why.starts_with("first choice: tier 0 (own zone"),
        "{}",
        f.order[0].why
    );
}

#[test]
fn failing_a_zone_moves_the_first_choice_to_the_other_zone_of_the_region() {
    let e = run(&demo(), &req("demo", "/"), &[east()], Some("us-east-a"));
    let o = order(&e);
    assert_eq!(o[0], ("us-east-b".to_string(), EndpointState::Healthy));
    // The failed endpoint is ejected, not gone: the proxy's last resort.
    assert_eq!(
        o.last().unwrap(),
        &("us-east-a".to_string(), EndpointState::Failed)
    );
    assert_eq!(o.len(), 6);
    let f = from(&e);
    assert!(
        f.proxy_failed,
        "east's proxy runs in zone us-east-a: it fails with the zone"
    );
    // A proxy of the other zone of the region sees the same order and stays up.
    let b = proxy("east", "us-east", "us-east-b");
    let e2 = run(&demo(), &req("demo", "/"), &[b], Some("us-east-a"));
    assert!(!from(&e2).proxy_failed);
    assert_eq!(from(&e2).order[0].endpoint.zone, "us-east-b");
    assert!(
        from(&e2).order[0]
            .why
            .starts_with("first choice: tier 0 (own zone")
    );
    assert!(
        f.order[0]
            .why
            .contains("nothing usable in the tiers before it"),
        "{}",
        f.order[0].why
    );
    assert!(f.order[5].why.contains("last resort"), "{}", f.order[5].why);
    assert_eq!(e.failed.as_deref(), Some("us-east-a"));
}

#[test]
fn failing_a_region_sends_every_locality_elsewhere_and_flags_its_proxies() {
    let west = proxy("west", "us-west", "us-west-a");
    let central = proxy("central", "eu-central", "eu-central-b");
    let e = run(
        &demo(),
        &req("demo", "/"),
        &[east(), west.clone(), central.clone()],
        Some("us-east"),
    );
    let views = &e.backends[0].from;
    // From us-east: the region is gone, the next region alphabetically serves.
    assert!(views[0].proxy_failed);
    assert_eq!(views[0].order[0].endpoint.region, "eu-central");
    assert_eq!(views[0].order[0].tier, 2);
    let failed_tail: Vec<&str> = views[0].order[4..]
        .iter()
        .map(|s| s.endpoint.region.as_str())
        .collect();
    assert_eq!(failed_tail, ["us-east", "us-east"]);
    // The other regions keep serving themselves.
    assert!(!views[1].proxy_failed);
    assert_eq!(views[1].order[0].endpoint.zone, "us-west-a");
    assert_eq!(views[2].order[0].endpoint.zone, "eu-central-b");
    // us-east is their last failover now.
    assert_eq!(views[1].order[2].endpoint.region, "eu-central");
}

#[test]
fn failing_a_cluster_fails_its_endpoints_and_its_proxies() {
    let west = proxy("west", "us-west", "us-west-a");
    let e = run(&demo(), &req("demo", "/"), &[west, east()], Some("west"));
    let views = &e.backends[0].from;
    assert!(views[0].proxy_failed);
    assert!(!views[1].proxy_failed);
    // West's own endpoints are failed: eu-central comes first (alphabetically before us-east).
    assert_eq!(views[0].order[0].endpoint.region, "eu-central");
    // From east nothing changes but the order's tail.
    assert_eq!(views[1].order[0].endpoint.zone, "us-east-a");
    let states: Vec<EndpointState> = views[1].order.iter().map(|s| s.endpoint.state).collect();
    assert_eq!(
        &states[4..],
        [EndpointState::Failed, EndpointState::Failed],
        "us-west was the last region for east; its endpoints are failed now"
    );
}

#[test]
fn a_failover_order_of_the_policy_decides_which_region_is_next() {
    let policy = json!({"failover": [{"from": "us-east", "to": ["us-west"]}]});
    let s = snapshot(policy, json!([]), demo_endpoints());
    let e = run(&s, &req("demo", "/"), &[east()], Some("us-east"));
    let f = from(&e);
    assert_eq!(f.order[0].endpoint.region, "us-west");
    assert!(
        f.tiers[2].why.contains("failover order from us-east"),
        "{}",
        f.tiers[2].why
    );
    assert_eq!(f.tiers[3].region, "eu-central");
}

#[test]
fn drained_endpoints_are_never_chosen_not_even_as_a_last_resort() {
    let drains = json!([{"drill": "demo/d", "region": "us-east"}]);
    let s = snapshot(Value::Null, drains, demo_endpoints());
    let e = run(&s, &req("demo", "/"), &[east()], None);
    let o = order(&e);
    assert_eq!(o.len(), 4, "{o:?}");
    assert!(
        o.iter()
            .all(|(z, st)| !z.starts_with("us-east") && *st == EndpointState::Healthy)
    );
    let f = from(&e);
    assert_eq!(f.tiers[0].endpoints[0].state, EndpointState::Drained);

    // Everything drained: no endpoint, the proxy answers 503.
    let drains = json!([{"drill": "demo/d", "cluster": "east"}, {"drill": "demo/e", "cluster": "west"},
                        {"drill": "demo/f", "cluster": "central"}]);
    let s = snapshot(Value::Null, drains, demo_endpoints());
    let e = run(&s, &req("demo", "/"), &[east()], None);
    assert!(from(&e).order.is_empty());
    assert_eq!(from(&e).status, Some(503));
}

#[test]
fn geo_fence_and_not_ready_endpoints_are_excluded_with_why() {
    let mut eps = demo_endpoints();
    eps[1]["ready"] = json!(false);
    let policy = json!({"geoFence": ["us-east", "us-west"]});
    let s = snapshot(policy, json!([]), eps);
    let e = run(&s, &req("demo", "/"), &[east()], Some("us-east"));
    let f = from(&e);
    let excluded: Vec<(&str, EndpointState)> = f
        .excluded
        .iter()
        .map(|x| (x.zone.as_str(), x.state))
        .collect();
    assert_eq!(
        excluded,
        [
            ("us-east-b", EndpointState::NotReady),
            ("eu-central-a", EndpointState::OutsideGeoFence),
            ("eu-central-b", EndpointState::OutsideGeoFence),
        ]
    );
    // us-east failed: us-west, the only region inside the fence.
    assert_eq!(
        zones(&order(&e)),
        ["us-west-a", "us-west-b", "us-east-a"],
        "fenced-out regions are never used, even with the proxy's region failed"
    );
}

#[test]
fn the_spill_rule_skips_a_tier_with_too_few_healthy_endpoints() {
    // Zone us-east-a holds two endpoints, one of them in cluster east-2.
    let mut eps = demo_endpoints();
    let mut extra = eps[0].clone();
    extra["address"] = json!("127.0.100.9");
    extra["cluster"] = json!("east-2");
    eps.as_array_mut().unwrap().push(extra);
    let policy = json!({"minHealthyPercent": 100});
    let s = snapshot(policy, json!([]), eps);
    let e = run(&s, &req("demo", "/"), &[east()], Some("east-2"));
    let f = from(&e);
    assert_eq!(f.min_healthy_percent, 100);
    assert_eq!(f.order[0].endpoint.zone, "us-east-b");
    assert!(f.order[0].why.contains("spill rule"), "{}", f.order[0].why);
}

#[test]
fn weights_toward_other_regions_are_reported_beside_the_order() {
    let policy = json!({"weights": [{"from": "us-east", "region": "us-west", "percent": 10}]});
    let s = snapshot(policy, json!([]), demo_endpoints());
    let e = run(&s, &req("demo", "/"), &[east()], None);
    let f = from(&e);
    assert_eq!(f.weighted.len(), 1);
    assert_eq!(
        (f.weighted[0].region.as_str(), f.weighted[0].percent),
        ("us-west", 10)
    );
    assert_eq!(f.order[0].endpoint.zone, "us-east-a");
}

#[test]
fn the_explanation_round_trips_through_json_with_stable_names() {
    let e = run(&demo(), &req("demo", "/"), &[east()], Some("us-east"));
    let v = serde_json::to_value(&e).unwrap();
    for key in [
        "gateway",
        "generation",
        "request",
        "decision",
        "listener",
        "rule",
        "backends",
        "failed",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    let step = &v["backends"][0]["from"][0]["order"][0];
    assert_eq!(step["endpoint"]["region"], "eu-central");
    assert_eq!(step["endpoint"]["state"], "healthy");
    assert_eq!(v["backends"][0]["from"][0]["proxyFailed"], true);
    let back: Explanation = serde_json::from_value(v).unwrap();
    assert_eq!(back, e);
}

#[test]
fn status_summary_counts_endpoints_per_zone_and_names_the_tier_in_use() {
    let drains = json!([{"drill": "demo/d", "zone": "us-east-a"}]);
    let s = snapshot(Value::Null, drains, demo_endpoints());
    let west = proxy("west", "us-west", "us-west-a");
    let all = backends(&s, &[east(), west]);
    let names: Vec<&str> = all.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "demo/api-v2:80",
            "demo/api:80",
            "demo/canary:80",
            "demo/echo:80"
        ]
    );
    let echo = &all[3];
    let east_a = echo.zones.iter().find(|z| z.zone == "us-east-a").unwrap();
    assert_eq!(
        (east_a.endpoints, east_a.healthy, east_a.drained),
        (1, 0, 1)
    );
    assert_eq!(echo.zones.len(), 6);
    // The drained zone moves east's proxy to the region tier; west is untouched.
    assert_eq!(echo.tiers[0].tier, Some(1), "the zone tier (0) is drained");
    assert_eq!(echo.tiers[0].kind, Some(TierKind::Region));
    assert_eq!(echo.tiers[0].serving_region.as_deref(), Some("us-east"));
    assert_eq!(echo.tiers[1].kind, Some(TierKind::Zone));
}

/// The proxies' reports of us-east: us-west measured nearer than eu-central, and both us-east
/// endpoints ejected (zone a by probes, zone b by failed requests, later).
fn reported_east() -> Vantage {
    let ejection = |address: &str, reason: &str, since: &str, failures: u32| Ejection {
        backend: "demo/echo:80".into(),
        address: address.into(),
        proxy: "east-1".into(),
        reason: reason.into(),
        since: since.into(),
        failures,
    };
    Vantage {
        locality: east(),
        measured: Some(MeasuredOrder {
            proxy: "east-1".into(),
            regions: vec![
                RegionRttView {
                    region: "us-west".into(),
                    rtt_ms: Some(31.5),
                },
                RegionRttView {
                    region: "eu-central".into(),
                    rtt_ms: Some(92.0),
                },
            ],
        }),
        ejected: vec![
            ejection("127.0.100.1:8080", "probe", "2026-12-06T12:01:00Z", 5),
            ejection("127.0.100.2:8080", "passive", "2026-12-06T12:02:00Z", 1),
        ],
    }
}

#[test]
fn the_proxies_measured_order_replaces_the_alphabetical_one_and_says_so() {
    let mut view = reported_east();
    view.ejected.clear();
    let e = explain_seen(&demo(), &gw(), &req("demo", "/"), &[view], None).unwrap();
    let f = from(&e);
    assert_eq!(
        zones(&order(&e)),
        [
            "us-east-a",
            "us-east-b",
            "us-west-a",
            "us-west-b",
            "eu-central-a",
            "eu-central-b"
        ]
    );
    assert_eq!(f.region_order.source, OrderSource::Measured);
    assert_eq!(f.region_order.measured_by.as_deref(), Some("east-1"));
    assert_eq!(f.region_order.nearest_regions.len(), 2);
    assert!(
        f.tiers[2]
            .why
            .contains("nearest-first order proxy east-1 measured")
            && f.tiers[2].why.contains("31.5 ms"),
        "{}",
        f.tiers[2].why
    );
    // Without reports: alphabetical, and said so.
    let plain = run(&demo(), &req("demo", "/"), &[east()], None);
    assert_eq!(from(&plain).region_order.source, OrderSource::Alphabetical);
    assert_eq!(from(&plain).region_order.measured_by, None);
    // A policy's order still wins; the regions it leaves out follow as measured.
    let policy = json!({"failover": [{"from": "us-east", "to": ["eu-central"]}]});
    let s = snapshot(policy, json!([]), demo_endpoints());
    let e = explain_seen(&s, &gw(), &req("demo", "/"), &[reported_east()], None).unwrap();
    assert_eq!(
        from(&e).region_order.source,
        OrderSource::PolicyThenMeasured
    );
    let regions: Vec<&str> = from(&e).tiers.iter().map(|t| t.region.as_str()).collect();
    assert_eq!(regions, ["us-east", "us-east", "eu-central", "us-west"]);
    assert!(
        from(&e).tiers[3]
            .why
            .contains("not in the failover order: after it, position 1"),
        "{}",
        from(&e).tiers[3].why
    );
}

#[test]
fn endpoints_the_proxies_ejected_are_skipped_like_select_skips_them_and_say_who_and_since() {
    let e = explain_seen(&demo(), &gw(), &req("demo", "/"), &[reported_east()], None).unwrap();
    let f = from(&e);
    let steps = order(&e);
    assert_eq!(
        zones(&steps),
        [
            "us-west-a",
            "us-west-b",
            "eu-central-a",
            "eu-central-b",
            // The last resort, the one ejected longest ago first.
            "us-east-a",
            "us-east-b"
        ]
    );
    assert_eq!(steps[4].1, EndpointState::Ejected);
    assert!(
        f.order[0]
            .why
            .contains("nothing usable in the tiers before it"),
        "{}",
        f.order[0].why
    );
    assert!(f.order[4].why.contains("last resort"), "{}", f.order[4].why);
    let by = &f.order[4].endpoint.ejected_by;
    assert_eq!(by.len(), 1);
    assert_eq!(
        (
            by[0].proxy.as_str(),
            by[0].reason.as_str(),
            by[0].since.as_str(),
            by[0].failures
        ),
        ("east-1", "probe", "2026-12-06T12:01:00Z", 5)
    );
    // Another backend's ejection of the same address does not count here.
    let mut other = reported_east();
    for x in &mut other.ejected {
        x.backend = "demo/api:80".into();
    }
    let e = explain_seen(&demo(), &gw(), &req("demo", "/"), &[other], None).unwrap();
    assert_eq!(order(&e)[0].0, "us-east-a");
    assert_eq!(order(&e)[0].1, EndpointState::Healthy);
    // JSON: the field is there when ejected, absent otherwise.
    let json = serde_json::to_value(&f.order[4].endpoint).unwrap();
    assert_eq!(json["state"], "ejected");
    assert_eq!(json["ejectedBy"][0]["since"], "2026-12-06T12:01:00Z");
    assert!(
        serde_json::to_value(&f.order[0].endpoint).unwrap()["ejectedBy"].is_null(),
        "absent when not ejected"
    );
}

#[test]
fn the_status_summary_counts_and_lists_what_the_proxies_ejected() {
    let summary = backends_seen(&demo(), &[reported_east()]);
    let echo = summary.iter().find(|b| b.name == "demo/echo:80").unwrap();
    let east_a = echo.zones.iter().find(|z| z.zone == "us-east-a").unwrap();
    assert_eq!((east_a.healthy, east_a.ejected), (1, 1));
    let ejected: Vec<(&str, &str)> = echo
        .ejected
        .iter()
        .map(|x| (x.address.as_str(), x.by[0].reason.as_str()))
        .collect();
    assert_eq!(
        ejected,
        [
            ("127.0.100.1:8080", "probe"),
            ("127.0.100.2:8080", "passive")
        ]
    );
    // The tier in use skips the ejected region and follows the measured order.
    assert_eq!(echo.tiers[0].serving_region.as_deref(), Some("us-west"));
    let api = summary.iter().find(|b| b.name == "demo/api:80").unwrap();
    assert!(api.ejected.is_empty());
    assert_eq!(api.tiers[0].serving_region.as_deref(), Some("us-east"));
}
