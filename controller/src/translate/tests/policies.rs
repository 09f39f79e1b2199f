//! FailoverPolicy status (Accepted / TargetNotFound / Invalid / Conflicted, per-target verdicts),
//! the `meridian.dev/StaleEndpoints` Gateway condition and `staleEndpointTTL`.

use meridian_crds::mcs::{ServiceExport, ServiceExportSpec};
use meridian_crds::meridian::{FailoverPolicy, FailoverPolicySpec};

use super::*;
use crate::status::STALE_ENDPOINTS;
use crate::translate::UnreachableCluster;

const GW: &str = "gw";

fn policy(ns: &str, name: &str, created: i64, yaml: &str) -> FailoverPolicy {
    let spec: FailoverPolicySpec = serde_yaml::from_str(yaml).unwrap();
    let mut p = FailoverPolicy::new(name, spec);
    p.metadata = ObjectMeta {
        creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap())),
        ..meta(Some(ns), name)
    };
    p
}

fn import_target(name: &str) -> String {
    format!("targetRefs: [{{group: multicluster.x-k8s.io, kind: ServiceImport, name: {name}}}]\n")
}

/// Our Gateway `infra/gw` with one HTTP listener that admits routes from every namespace.
fn open_gateway() -> Gateway {
    gw(
        INFRA,
        GW,
        vec![from(
            http("http", 80),
            GatewayListenersAllowedRoutesNamespacesFrom::All,
        )],
    )
}

/// `east` (our Gateway, a route to the ServiceImport `app/echo`) and `west`; both export
/// `app/echo`, each with one endpoint.
fn two_clusters() -> World {
    let mut w = world();
    w.add_cluster("west", "us-west", vec!["us-west-1a".into()]);
    for (name, ip, zone) in [
        ("east", "10.1.0.1", "us-east-1a"),
        ("west", "10.2.0.1", "us-west-1a"),
    ] {
        let c = w.cluster_mut(name).unwrap();
        c.apply(svc(APP, "echo", &[(Some("http"), 80, None)]));
        c.apply(slice(
            APP,
            "echo-1",
            "echo",
            (Some("http"), 8080),
            &[(ip, Some(true), Some(zone))],
        ));
        c.apply(ServiceExport {
            metadata: meta(Some(APP), "echo"),
            spec: ServiceExportSpec {},
            status: None,
        });
    }
    let c = east(&mut w);
    c.apply(open_gateway());
    let import = HttpRouteRulesBackendRefs {
        group: Some("multicluster.x-k8s.io".into()),
        kind: Some("ServiceImport".into()),
        ..backend("echo", 80)
    };
    c.apply(route(
        APP,
        "web",
        vec![parent_in(INFRA, GW)],
        &[],
        vec![to(vec![import])],
    ));
    w
}

fn policy_status<'a>(out: &'a Output, name: &str) -> &'a Value {
    status(out, StatusKind::FailoverPolicy, Some(APP), name)
}

fn message(holder: &Value, type_: &str) -> String {
    holder["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| c["message"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no {type_} in {holder}"))
}

fn targets(holder: &Value) -> Vec<(String, bool, String)> {
    holder["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                format!("{}/{}", t["targetRef"]["kind"], t["targetRef"]["name"]).replace('"', ""),
                t["applied"].as_bool().unwrap(),
                t["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn accepted_not_found_invalid_and_conflicted() {
    let mut w = two_clusters();
    let c = east(&mut w);
    // Applies to the ServiceImport and the HTTPRoute; the Service "gone" does not exist.
    c.apply(policy(
        APP,
        "main",
        100,
        "targetRefs:\n\
         - {group: multicluster.x-k8s.io, kind: ServiceImport, name: echo}\n\
         - {group: '', kind: Service, name: gone}\n\
         - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: web}\n",
    ));
    c.apply(policy(APP, "missing", 100, &import_target("nothing")));
    c.apply(policy(
        APP,
        "broken",
        50,
        &format!("{}healthCheck: {{interval: 1x}}", import_target("echo")),
    ));
    c.apply(policy(
        APP,
        "bad-kind",
        50,
        "targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]",
    ));
    // Newer than "main" and targeting the same ServiceImport: conflicted.
    c.apply(policy(APP, "newer", 200, &import_target("echo")));
    let mut cfg = cfg(&w);
    let out = run(&w, &cfg);

    let main = policy_status(&out, "main");
    is(main, "Accepted", "True", "Accepted");
    assert_eq!(
        targets(main),
        [
            ("ServiceImport/echo".into(), true, "".into()),
            ("Service/gone".into(), false, "TargetNotFound".into()),
            ("HTTPRoute/web".into(), true, "".into()),
        ]
    );
    let m = message(main, "Accepted");
    assert!(
        m.contains("applies to ServiceImport echo, HTTPRoute web") && m.contains("Service gone"),
        "{m}"
    );
    assert_eq!(main["conditions"][0]["observedGeneration"], 1);

    let missing = policy_status(&out, "missing");
    is(missing, "Accepted", "False", "TargetNotFound");
    assert!(message(missing, "Accepted").contains("ServiceImport nothing"));

    let broken = policy_status(&out, "broken");
    is(broken, "Accepted", "False", "Invalid");
    assert!(message(broken, "Accepted").contains("healthCheck.interval"));
    assert_eq!(
        targets(broken),
        [("ServiceImport/echo".into(), false, "Invalid".into())]
    );
    let bad_kind = policy_status(&out, "bad-kind");
    is(bad_kind, "Accepted", "False", "Invalid");
    assert!(message(bad_kind, "Accepted").contains("targetRefs[0]"));

    // The older invalid policy does not win the conflict; "main" (older than "newer") does.
    let newer = policy_status(&out, "newer");
    is(newer, "Accepted", "False", "Conflicted");
    assert!(message(newer, "Accepted").contains("app/main"), "{newer}");
    assert_eq!(
        targets(newer),
        [("ServiceImport/echo".into(), false, "Conflicted".into())]
    );

    // Written back (as the writer + watch would), the same world produces no further writes.
    write_back(&mut w, &out);
    cfg.now = Timestamp::from_second(3_000).unwrap();
    let again = run(&w, &cfg);
    assert!(
        !again
            .status
            .iter()
            .any(|u| u.kind == StatusKind::FailoverPolicy),
        "{:#?}",
        again.status
    );

    // Deleting the winner: the newer policy becomes Accepted.
    east(&mut w).delete::<FailoverPolicy>(&crate::ObjectKey::new(APP, "main"));
    let out = run(&w, &cfg);
    is(policy_status(&out, "newer"), "Accepted", "True", "Accepted");
    // And its snapshot backend carries it.
    let b = &out.snapshots[CLUSTER].gateways[0].listeners[0].routes[0].rules[0].backends[0];
    assert!(
        matches!(
            &b.target,
            model::BackendTarget::Endpoints {
                failover: Some(_),
                ..
            }
        ),
        "{b:?}"
    );
}

#[test]
fn a_policy_with_a_newer_generation_in_its_status_is_left_alone() {
    let mut w = two_clusters();
    let mut p = policy(APP, "main", 100, &import_target("echo"));
    p.status = Some(
        serde_json::from_value(serde_json::json!({"conditions": [{
        "type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
        "observedGeneration": 7, "lastTransitionTime": "2024-01-01T00:00:00Z"}]}))
        .unwrap(),
    );
    east(&mut w).apply(p);
    let out = run(&w, &cfg(&w));
    assert!(!has_status(
        &out,
        StatusKind::FailoverPolicy,
        Some(APP),
        "main"
    ));
}

fn endpoint_clusters(out: &Output) -> Vec<String> {
    let b = &out.snapshots[CLUSTER].gateways[0].listeners[0].routes[0].rules[0].backends[0];
    match &b.target {
        model::BackendTarget::Endpoints { endpoints, .. } => {
            endpoints.iter().map(|e| e.cluster.clone()).collect()
        }
        t => panic!("{t:?}"),
    }
}

#[test]
fn stale_endpoints_condition_names_the_cluster_and_goes_away() {
    let mut w = two_clusters();
    let mut cfg = cfg(&w);
    let out = run(&w, &cfg);
    assert_eq!(endpoint_clusters(&out), ["east", "west"]);
    let gw_status = gateway_status(&out, INFRA, GW);
    assert!(
        !gw_status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == STALE_ENDPOINTS)
    );
    write_back(&mut w, &out);

    let since = Timestamp::from_second(1_990).unwrap();
    cfg.unreachable.insert(
        "west".into(),
        UnreachableCluster {
            since,
            last_contact: Some(Timestamp::from_second(1_985).unwrap()),
            grace_ends: Timestamp::from_second(2_290).unwrap(),
        },
    );
    let out = run(&w, &cfg);
    let gw_status = gateway_status(&out, INFRA, GW);
    is(gw_status, STALE_ENDPOINTS, "True", "ClusterUnreachable");
    let m = message(gw_status, STALE_ENDPOINTS);
    for want in [
        "west",
        "since 1970-01-01T00:33:10Z",
        "last contact 1970-01-01T00:33:05Z",
        "withdrawn at 1970-01-01T00:38:10Z",
    ] {
        assert!(m.contains(want), "{want:?} not in {m}");
    }
    assert!(!m.contains("east"), "{m}");
    // Spec-defined conditions are unchanged.
    is(gw_status, "Accepted", "True", "Accepted");
    is(gw_status, "Programmed", "True", "Programmed");
    assert_eq!(endpoint_clusters(&out), ["east", "west"], "still served");
    write_back(&mut w, &out);

    // Same outage, later pass: nothing to write (the message does not tick).
    cfg.now = Timestamp::from_second(2_100).unwrap();
    let again = run(&w, &cfg);
    assert!(!has_status(&again, StatusKind::Gateway, Some(INFRA), GW));

    // An unreachable cluster whose endpoints this Gateway does not use is not reported.
    let mut other = cfg.clone();
    other.unreachable.clear();
    other
        .unreachable
        .insert("central".into(), cfg.unreachable["west"].clone());
    let out = run(&w, &other);
    assert!(
        !gateway_status(&out, INFRA, GW)["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == STALE_ENDPOINTS)
    );

    // The cluster is back: the condition is removed.
    cfg.unreachable.clear();
    let out = run(&w, &cfg);
    let conds: Vec<&str> = gateway_status(&out, INFRA, GW)["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(conds, ["Accepted", "Programmed"]);
}

#[test]
fn stale_endpoint_ttl_drops_an_unreachable_clusters_endpoints_for_its_targets() {
    let mut w = two_clusters();
    east(&mut w).apply(policy(
        APP,
        "ttl",
        100,
        &format!("{}staleEndpointTTL: 30s", import_target("echo")),
    ));
    let mut cfg = cfg(&w); // now = 2000
    let unreachable = |since: i64| UnreachableCluster {
        since: Timestamp::from_second(since).unwrap(),
        last_contact: None,
        grace_ends: Timestamp::from_second(since + 300).unwrap(),
    };
    cfg.unreachable.insert("west".into(), unreachable(1_990));
    let out = run(&w, &cfg);
    assert_eq!(endpoint_clusters(&out), ["east", "west"], "within the TTL");
    assert_eq!(
        next_stale_expiry(&w, &cfg.unreachable, cfg.now),
        Some(Timestamp::from_second(2_020).unwrap())
    );
    cfg.unreachable.insert("west".into(), unreachable(1_970));
    let out = run(&w, &cfg);
    assert_eq!(endpoint_clusters(&out), ["east"], "TTL over: west dropped");
    assert_eq!(next_stale_expiry(&w, &cfg.unreachable, cfg.now), None);
    // Its endpoints are gone from the snapshot, so the Gateway no longer reports them.
    assert!(
        !gateway_status(&out, INFRA, GW)["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == STALE_ENDPOINTS)
    );

    // The same TTL on a route-level policy: the route's backends lose west's endpoints too.
    let mut w = two_clusters();
    east(&mut w).apply(policy(
        APP,
        "route-ttl",
        100,
        "targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: web}]\n\
         staleEndpointTTL: 5s",
    ));
    let out = run(&w, &cfg);
    assert_eq!(endpoint_clusters(&out), ["east"]);

    // An invalid TTL makes the whole policy invalid, naming the field.
    let mut w = two_clusters();
    east(&mut w).apply(policy(
        APP,
        "bad-ttl",
        100,
        &format!("{}staleEndpointTTL: soon", import_target("echo")),
    ));
    let out = run(&w, &cfg);
    let p = policy_status(&out, "bad-ttl");
    is(p, "Accepted", "False", "Invalid");
    assert!(message(p, "Accepted").contains("staleEndpointTTL"));
    assert_eq!(endpoint_clusters(&out), ["east", "west"], "no TTL applies");
}

/// A full translation with a status sink hands each cluster's status over as soon as that
/// cluster is done: one batch per cluster, together the same updates in the same order as
/// `Output::status` without a sink, and the same snapshots.
#[test]
fn a_status_sink_gets_each_clusters_status_in_order() {
    let mut w = two_clusters();
    let c = w.cluster_mut("west").unwrap();
    c.apply(class(CLASS, CONTROLLER_NAME));
    c.apply(namespace(INFRA, &[]));
    c.apply(namespace(APP, &[]));
    c.apply(open_gateway());
    c.apply(route(
        APP,
        "web",
        vec![parent_in(INFRA, GW)],
        &[],
        vec![to(vec![backend("echo", 80)])],
    ));
    let cfg = cfg(&w);
    let reference = crate::translate::translate(&w, &cfg);
    let mut batches: Vec<Vec<crate::StatusUpdate>> = Vec::new();
    let out = crate::translate::translate_full(&w, &cfg, None, Some(&mut |b| batches.push(b)));
    assert!(out.status.is_empty(), "{:?}", out.status);
    assert_eq!(batches.len(), 2);
    for (batch, cluster) in batches.iter().zip(["east", "west"]) {
        assert!(batch.iter().any(|u| u.kind == StatusKind::HttpRoute));
        assert!(batch.iter().all(|u| u.cluster == cluster), "{batch:?}");
    }
    let flat: Vec<_> = batches.into_iter().flatten().collect();
    assert_eq!(flat, reference.status);
    assert_eq!(out.snapshots, reference.snapshots);
}
