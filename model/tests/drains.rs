//! Drill drains in the snapshot: which endpoints they take out, and validation.
#![allow(clippy::unwrap_used)]

use meridian_model::Router;
use meridian_model::snapshot::{Drain, Endpoint, Snapshot};

fn ep(cluster: &str, region: &str, zone: &str) -> Endpoint {
    Endpoint {
        address: "127.0.0.1".parse().unwrap(),
        port: 8080,
        cluster: cluster.into(),
        region: region.into(),
        zone: zone.into(),
        ready: true,
        east_west: false,
    }
}

fn drain(region: Option<&str>, zone: Option<&str>) -> Drain {
    Drain {
        drill: "ops/east-down".into(),
        region: region.map(Into::into),
        zone: zone.map(Into::into),
        ..Drain::default()
    }
}

#[test]
fn region_drain_matches_every_zone_of_that_region_only() {
    let d = drain(Some("us-east"), None);
    assert!(d.matches(&ep("east", "us-east", "us-east-a")));
    assert!(d.matches(&ep("east", "us-east", "us-east-b")));
    assert!(!d.matches(&ep("west", "us-west", "us-west-a")));
}

#[test]
fn every_set_field_must_match() {
    let d = drain(Some("us-east"), Some("us-east-b"));
    assert!(!d.matches(&ep("east", "us-east", "us-east-a")));
    assert!(d.matches(&ep("east", "us-east", "us-east-b")));
    let c = Drain {
        cluster: Some("east".into()),
        ..drain(None, None)
    };
    assert!(c.matches(&ep("east", "us-east", "x")));
    assert!(!c.matches(&ep("east2", "us-east", "x")));
}

#[test]
fn targetless_drain_matches_nothing_and_is_refused() {
    let d = drain(None, None);
    assert!(!d.matches(&ep("east", "us-east", "us-east-a")));
    let mut s = Snapshot::empty(1);
    s.drains.push(d);
    let err = Router::compile(s).err().unwrap().to_string();
    assert!(err.contains("names no cluster, region or zone"), "{err}");
}

#[test]
fn scope_limits_gateways_and_backends() {
    let mut s = Snapshot::empty(1);
    s.drains.push(Drain {
        gateways: vec!["demo/web".into()],
        backends: vec!["serviceimport/demo/echo".into()],
        ..drain(Some("us-east"), None)
    });
    let e = ep("east", "us-east", "us-east-a");
    assert!(s.is_drained("demo/web", "serviceimport/demo/echo", &e));
    assert!(!s.is_drained("demo/other", "serviceimport/demo/echo", &e));
    assert!(!s.is_drained("demo/web", "service/demo/echo", &e));
    assert!(!s.is_drained(
        "demo/web",
        "serviceimport/demo/echo",
        &ep("w", "us-west", "a")
    ));
}

#[test]
fn drains_round_trip_and_old_snapshots_still_parse() {
    let mut s = Snapshot::empty(3);
    s.drains.push(drain(Some("us-east"), None));
    let text = serde_json::to_string(&s).unwrap();
    assert!(text.contains("\"drains\":[{\"drill\":\"ops/east-down\",\"region\":\"us-east\"}]"));
    let back: Snapshot = serde_json::from_str(&text).unwrap();
    assert_eq!(back, s);
    let old: Snapshot =
        serde_json::from_str(r#"{"schema":"meridian.dev/snapshot/v1","generation":1}"#).unwrap();
    assert!(old.drains.is_empty());
}

#[test]
fn east_west_backends_must_not_loop_or_repeat() {
    use meridian_model::snapshot::{BackendProtocol, EastWestBackend};
    let backend = |eps: Vec<Endpoint>| EastWestBackend {
        name: "demo/echo:8080 (ServiceImport)".into(),
        protocol: BackendProtocol::Http1,
        endpoints: eps,
        failover: None,
    };
    let mut s = Snapshot::empty(1);
    s.east_west.push(backend(vec![ep("east", "us-east", "a")]));
    assert!(Router::compile(s.clone()).is_ok());

    let mut looped = s.clone();
    let mut remote = ep("west", "us-west", "a");
    remote.east_west = true;
    looped.east_west[0].endpoints.push(remote);
    let err = Router::compile(looped).err().unwrap().to_string();
    assert!(err.contains("lists an east-west endpoint"), "{err}");

    let mut twice = s.clone();
    twice.east_west.push(backend(Vec::new()));
    let err = Router::compile(twice).err().unwrap().to_string();
    assert!(err.contains("appears twice"), "{err}");

    let text = serde_json::to_string(&s).unwrap();
    assert!(
        !text.contains("\"eastWest\":false"),
        "defaults stay off the wire: {text}"
    );
    assert_eq!(serde_json::from_str::<Snapshot>(&text).unwrap(), s);
}
