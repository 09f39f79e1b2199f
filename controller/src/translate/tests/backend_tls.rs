//! BackendTLSPolicy: the TLS settings a targeted backend gets, and the policy's status per
//! ancestor Gateway. Named after the conformance tests they mirror: BackendTLSPolicy,
//! ConflictResolution, InvalidCACertificateRef, InvalidKind, ObservedGenerationBump,
//! SANValidation.

use gateway_api::backendtlspolicies::{BackendTlsPolicy, BackendTlsPolicySpec};
use k8s_openapi::api::core::v1::ConfigMap;

use super::*;

const GW: &str = "same-namespace";
const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";

fn policy(name: &str, created: i64, generation: i64, yaml: &str) -> BackendTlsPolicy {
    let spec: BackendTlsPolicySpec = serde_yaml::from_str(yaml).unwrap();
    let mut p = BackendTlsPolicy::new(name, spec);
    p.metadata = ObjectMeta {
        creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap())),
        generation: Some(generation),
        ..meta(Some(INFRA), name)
    };
    p
}

/// A policy on `infra-backend-v1` trusting ConfigMap `ca` for `abc.example.com`.
fn simple(name: &str, created: i64) -> BackendTlsPolicy {
    policy(
        name,
        created,
        1,
        "targetRefs: [{group: '', kind: Service, name: infra-backend-v1}]\n\
         validation: {hostname: abc.example.com, caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}]}\n",
    )
}

fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: meta(Some(INFRA), name),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..ConfigMap::default()
    }
}

/// `base()` with a route `r` in infra to `infra-backend-v1:8080` and the CA ConfigMap `ca`.
fn world_with_route() -> World {
    let mut w = base();
    let c = east(&mut w);
    c.apply(route(
        INFRA,
        "r",
        vec![parent(GW)],
        &[],
        vec![to(vec![backend("infra-backend-v1", 8080)])],
    ));
    c.apply(config_map("ca", &[("ca.crt", PEM)]));
    w
}

fn the_backend(out: &Output) -> model::Backend {
    snap_route(out, INFRA, GW, "http", "r").rules[0].backends[0].clone()
}

fn policy_status<'a>(out: &'a Output, name: &str) -> &'a Value {
    status(out, StatusKind::BackendTlsPolicy, Some(INFRA), name)
}

/// Our one ancestor entry: the Gateway the route attaches to.
fn ancestor(out: &Output, name: &str) -> Value {
    let ancestors = policy_status(out, name)["ancestors"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(ancestors.len(), 1, "{ancestors:#?}");
    let a = ancestors[0].clone();
    assert_eq!(
        a["ancestorRef"],
        serde_json::json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": GW, "namespace": INFRA})
    );
    assert_eq!(a["controllerName"], CONTROLLER_NAME);
    a
}

fn route_resolved_refs(out: &Output) -> (String, String) {
    cond(route_parent(out, INFRA, "r", INFRA, GW), "ResolvedRefs")
}

#[test]
fn backend_tls_policy() {
    let mut w = world_with_route();
    east(&mut w).apply(simple("tls", 100));
    let out = run(&w, &cfg(&w));
    let b = the_backend(&out);
    assert!(matches!(b.target, model::BackendTarget::Endpoints { .. }));
    assert_eq!(
        b.tls,
        Some(Box::new(model::BackendTls {
            hostname: "abc.example.com".into(),
            ca_pem: Some(PEM.into()),
            subject_alt_names: vec![],
        }))
    );
    let a = ancestor(&out, "tls");
    is(&a, "Accepted", "True", "Accepted");
    is(&a, "ResolvedRefs", "True", "ResolvedRefs");
    assert_eq!(
        route_resolved_refs(&out),
        ("True".into(), "ResolvedRefs".into())
    );
    // Other backends stay cleartext.
    let mut other = world_with_route();
    east(&mut other).apply(policy(
        "elsewhere",
        100,
        1,
        "targetRefs: [{group: '', kind: Service, name: infra-backend-v2}]\n\
         validation: {hostname: abc.example.com, wellKnownCACertificates: System}\n",
    ));
    let out = run(&other, &cfg(&other));
    assert_eq!(the_backend(&out).tls, None);
    assert!(
        !has_status(&out, StatusKind::BackendTlsPolicy, Some(INFRA), "elsewhere"),
        "a policy no route of ours uses has no ancestor"
    );
}

#[test]
fn backend_tls_policy_well_known_ca_is_the_system_store() {
    let mut w = world_with_route();
    east(&mut w).apply(policy(
        "system",
        100,
        1,
        "targetRefs: [{group: '', kind: Service, name: infra-backend-v1}]\n\
         validation: {hostname: abc.example.com, wellKnownCACertificates: System}\n",
    ));
    let out = run(&w, &cfg(&w));
    let tls = the_backend(&out).tls.unwrap();
    assert_eq!(tls.ca_pem, None);
    is(&ancestor(&out, "system"), "Accepted", "True", "Accepted");
}

/// A GRPCRoute's backend gets the policy's TLS like an HTTPRoute's, and a Gateway only a
/// GRPCRoute attaches to is an ancestor of the policy.
#[test]
fn backend_tls_policy_applies_to_grpc_route_backends() {
    let mut w = base();
    let c = east(&mut w);
    let mut m = meta(Some(INFRA), "rpc");
    m.creation_timestamp = Some(Time(Timestamp::from_second(1_000).unwrap()));
    c.apply(gateway_api::grpcroutes::GrpcRoute {
        metadata: m,
        spec: serde_json::from_value(serde_json::json!({
            "parentRefs": [{"name": GW}],
            "rules": [{"backendRefs": [{"name": "infra-backend-v1", "port": 8080}]}],
        }))
        .unwrap(),
        status: None,
    });
    c.apply(config_map("ca", &[("ca.crt", PEM)]));
    c.apply(simple("tls", 100));
    let out = run(&w, &cfg(&w));
    let r = snap_route(&out, INFRA, GW, "http", "rpc");
    assert_eq!(r.kind, model::RouteKind::Grpc);
    assert_eq!(
        r.rules[0].backends[0]
            .tls
            .as_deref()
            .map(|t| t.hostname.as_str()),
        Some("abc.example.com")
    );
    let a = ancestor(&out, "tls");
    is(&a, "Accepted", "True", "Accepted");
    is(&a, "ResolvedRefs", "True", "ResolvedRefs");
}

#[test]
fn backend_tls_policy_conflict_resolution() {
    let mut w = world_with_route();
    let c = east(&mut w);
    c.apply(config_map("other-ca", &[("ca.crt", PEM)]));
    let newer = policy(
        "a-newer",
        200,
        1,
        "targetRefs: [{group: '', kind: Service, name: infra-backend-v1}]\n\
         validation: {hostname: newer.example.com, caCertificateRefs: [{group: '', kind: ConfigMap, name: other-ca}]}\n",
    );
    c.apply(newer);
    c.apply(simple("z-older", 100));
    let out = run(&w, &cfg(&w));
    assert_eq!(the_backend(&out).tls.unwrap().hostname, "abc.example.com");
    is(&ancestor(&out, "z-older"), "Accepted", "True", "Accepted");
    is(
        &ancestor(&out, "a-newer"),
        "Accepted",
        "False",
        "Conflicted",
    );

    // Same creation time: namespace/name decides.
    east(&mut w).apply(simple("a-newer", 100));
    east(&mut w).apply(simple("z-older", 100));
    let out = run(&w, &cfg(&w));
    is(&ancestor(&out, "a-newer"), "Accepted", "True", "Accepted");
    is(
        &ancestor(&out, "z-older"),
        "Accepted",
        "False",
        "Conflicted",
    );

    // A policy for the port by name takes precedence over an older one for the whole Service.
    let mut w = world_with_route();
    let c = east(&mut w);
    c.apply(simple("whole", 100));
    c.apply(policy(
        "port",
        300,
        1,
        "targetRefs: [{group: '', kind: Service, name: infra-backend-v1, sectionName: http}]\n\
         validation: {hostname: port.example.com, caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}]}\n",
    ));
    let out = run(&w, &cfg(&w));
    assert_eq!(the_backend(&out).tls.unwrap().hostname, "port.example.com");
    is(&ancestor(&out, "port"), "Accepted", "True", "Accepted");
}

#[test]
fn backend_tls_policy_section_name_must_name_a_port() {
    let mut w = world_with_route();
    east(&mut w).apply(policy(
        "nope",
        100,
        1,
        "targetRefs: [{group: '', kind: Service, name: infra-backend-v1, sectionName: grpc}]\n\
         validation: {hostname: abc.example.com, caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}]}\n",
    ));
    let out = run(&w, &cfg(&w));
    assert_eq!(the_backend(&out).tls, None, "port http is not targeted");
    is(
        &ancestor(&out, "nope"),
        "Accepted",
        "False",
        "TargetNotFound",
    );
}

#[test]
fn backend_tls_policy_invalid_ca_certificate_ref() {
    for (what, data) in [
        ("missing", None),
        ("no ca.crt", Some(vec![("other", PEM)])),
        ("not PEM", Some(vec![("ca.crt", "hello")])),
    ] {
        let mut w = world_with_route();
        let c = east(&mut w);
        c.delete::<ConfigMap>(&crate::ObjectKey::new(INFRA, "ca"));
        if let Some(data) = &data {
            c.apply(config_map("ca", data));
        }
        c.apply(simple("tls", 100));
        let out = run(&w, &cfg(&w));
        let b = the_backend(&out);
        assert_eq!(
            b.target,
            model::BackendTarget::Invalid {
                reason: "NoValidCACertificate".into()
            },
            "{what}: the backend answers 500, never cleartext"
        );
        assert_eq!(b.tls, None, "{what}");
        let a = ancestor(&out, "tls");
        is(&a, "ResolvedRefs", "False", "InvalidCACertificateRef");
        is(&a, "Accepted", "False", "NoValidCACertificate");
        assert_eq!(
            route_resolved_refs(&out),
            ("False".into(), "NoValidCACertificate".into()),
            "{what}"
        );
    }

    // One good and one bad reference: accepted, but connections that depend on it fail.
    let mut w = world_with_route();
    east(&mut w).apply(policy(
        "half",
        100,
        1,
        "targetRefs: [{group: '', kind: Service, name: infra-backend-v1}]\n\
         validation: {hostname: abc.example.com, caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}, {group: '', kind: ConfigMap, name: gone}]}\n",
    ));
    let out = run(&w, &cfg(&w));
    let a = ancestor(&out, "half");
    is(&a, "Accepted", "True", "Accepted");
    is(&a, "ResolvedRefs", "False", "InvalidCACertificateRef");
    assert!(matches!(
        the_backend(&out).target,
        model::BackendTarget::Invalid { .. }
    ));

    // The ConfigMap appears: the backend resolves and the policy is accepted.
    let mut w = world_with_route();
    east(&mut w).delete::<ConfigMap>(&crate::ObjectKey::new(INFRA, "ca"));
    east(&mut w).apply(simple("tls", 100));
    let out = run(&w, &cfg(&w));
    write_back(&mut w, &out);
    east(&mut w).apply(config_map("ca", &[("ca.crt", PEM)]));
    let out = run(&w, &cfg(&w));
    assert!(the_backend(&out).tls.is_some());
    is(
        &ancestor(&out, "tls"),
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    );
}

#[test]
fn backend_tls_policy_invalid_kind() {
    let mut w = world_with_route();
    east(&mut w).apply(policy(
        "secret-ca",
        100,
        1,
        "targetRefs: [{group: '', kind: Service, name: infra-backend-v1}]\n\
         validation: {hostname: abc.example.com, caCertificateRefs: [{group: '', kind: Secret, name: ca}]}\n",
    ));
    let out = run(&w, &cfg(&w));
    let a = ancestor(&out, "secret-ca");
    is(&a, "ResolvedRefs", "False", "InvalidKind");
    is(&a, "Accepted", "False", "NoValidCACertificate");
    assert!(matches!(
        the_backend(&out).target,
        model::BackendTarget::Invalid { .. }
    ));

    // A targetRef of another kind targets nothing: the backend stays cleartext.
    let mut w = world_with_route();
    east(&mut w).apply(policy(
        "deployment",
        100,
        1,
        "targetRefs: [{group: apps, kind: Deployment, name: infra-backend-v1}]\n\
         validation: {hostname: abc.example.com, caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}]}\n",
    ));
    let out = run(&w, &cfg(&w));
    assert_eq!(the_backend(&out).tls, None);
    assert!(matches!(
        the_backend(&out).target,
        model::BackendTarget::Endpoints { .. }
    ));
}

#[test]
fn backend_tls_policy_observed_generation_bump() {
    let mut w = world_with_route();
    east(&mut w).apply(simple("tls", 100));
    let out = run(&w, &cfg(&w));
    let a = ancestor(&out, "tls");
    assert_eq!(a["conditions"][0]["observedGeneration"], 1);
    write_back(&mut w, &out);
    assert!(
        run(&w, &cfg(&w))
            .status
            .iter()
            .all(|u| u.kind != StatusKind::BackendTlsPolicy),
        "nothing to write once the status is in place"
    );

    let mut bumped = policy(
        "tls",
        100,
        2,
        "targetRefs: [{group: '', kind: Service, name: infra-backend-v1}]\n\
         validation: {hostname: def.example.com, caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}]}\n",
    );
    bumped.status = east(&mut w).backend_tls_policies[&crate::ObjectKey::new(INFRA, "tls")]
        .status
        .clone();
    east(&mut w).apply(bumped);
    let out = run(&w, &cfg(&w));
    let a = ancestor(&out, "tls");
    for c in a["conditions"].as_array().unwrap() {
        assert_eq!(c["observedGeneration"], 2, "{c}");
    }
    assert_eq!(the_backend(&out).tls.unwrap().hostname, "def.example.com");
}

#[test]
fn backend_tls_policy_san_validation() {
    let mut w = world_with_route();
    east(&mut w).apply(policy(
        "sans",
        100,
        1,
        "targetRefs: [{group: '', kind: Service, name: infra-backend-v1}]\n\
         validation:\n  hostname: abc.example.com\n  caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}]\n  \
         subjectAltNames:\n  - {type: Hostname, hostname: '*.backend.example.com'}\n  - {type: URI, uri: 'spiffe://cluster.local/ns/infra/sa/backend'}\n",
    ));
    let out = run(&w, &cfg(&w));
    assert_eq!(
        the_backend(&out).tls.unwrap().subject_alt_names,
        vec![
            model::SubjectAltName::Hostname("*.backend.example.com".into()),
            model::SubjectAltName::Uri("spiffe://cluster.local/ns/infra/sa/backend".into()),
        ]
    );
    is(&ancestor(&out, "sans"), "Accepted", "True", "Accepted");

    // A SAN without its value (the CRD refuses it; an older object may still have one).
    let mut w = world_with_route();
    east(&mut w).apply(policy(
        "empty-san",
        100,
        1,
        "targetRefs: [{group: '', kind: Service, name: infra-backend-v1}]\n\
         validation:\n  hostname: abc.example.com\n  caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}]\n  \
         subjectAltNames: [{type: URI}]\n",
    ));
    let out = run(&w, &cfg(&w));
    is(&ancestor(&out, "empty-san"), "Accepted", "False", "Invalid");
    assert!(matches!(
        the_backend(&out).target,
        model::BackendTarget::Invalid { .. }
    ));
}
