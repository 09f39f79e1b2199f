//! GatewayClass and Gateway status (catalogue §1.8) and the served listeners.

use gateway_api::gatewayclasses::GatewayClassParametersRef;
use gateway_api::gateways::GatewayListenersAllowedRoutesNamespacesFrom as From;

use super::*;

#[test]
fn class_accepted_with_sorted_features() {
    let w = world();
    let out = run(&w, &cfg(&w));
    let st = status(&out, StatusKind::GatewayClass, None, CLASS);
    is(st, "Accepted", "True", "Accepted");
    let names: Vec<&str> = st["supportedFeatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for f in [
        "Gateway",
        "HTTPRoute",
        "ReferenceGrant",
        "HTTPRouteParentRefPort",
    ] {
        assert!(names.contains(&f), "{f} listed");
    }
}

#[test]
fn class_observed_generation_bump() {
    let mut w = world();
    let out = run(&w, &cfg(&w));
    write_back(&mut w, &out);
    assert!(
        run(&w, &cfg(&w)).status.is_empty(),
        "nothing to write the second time"
    );
    let mut c = (*east(&mut w).gateway_classes[CLASS]).clone();
    c.spec.description = Some("changed".into());
    c.metadata.generation = Some(2);
    east(&mut w).apply(c);
    let out = run(&w, &cfg(&w));
    let st = status(&out, StatusKind::GatewayClass, None, CLASS);
    let accepted = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Accepted")
        .unwrap();
    assert_eq!(accepted["observedGeneration"], 2);
}

#[test]
fn foreign_classes_and_their_gateways_are_ignored() {
    let mut w = world();
    let c = east(&mut w);
    c.apply(class("other", "example.com/other-controller"));
    let mut g = gw(INFRA, "theirs", vec![http("http", 80)]);
    g.spec.gateway_class_name = "other".into();
    c.apply(g);
    c.apply(route(
        INFRA,
        "r",
        vec![parent("theirs")],
        &[],
        vec![to(vec![])],
    ));
    let out = run(&w, &cfg(&w));
    assert!(!has_status(&out, StatusKind::GatewayClass, None, "other"));
    assert!(!has_status(
        &out,
        StatusKind::Gateway,
        Some(INFRA),
        "theirs"
    ));
    assert!(
        !has_status(&out, StatusKind::HttpRoute, Some(INFRA), "r"),
        "no parent of ours ⇒ no route status"
    );
    assert!(out.snapshots[CLUSTER].gateways.is_empty());
}

#[test]
fn class_with_parameters_is_not_accepted_and_neither_are_its_gateways() {
    let mut w = world();
    let c = east(&mut w);
    let mut cl = class(CLASS, CONTROLLER_NAME);
    cl.spec.parameters_ref = Some(GatewayClassParametersRef {
        group: "example.com".into(),
        kind: "Params".into(),
        name: "p".into(),
        namespace: None,
    });
    c.apply(cl);
    c.apply(gw(INFRA, "g", vec![http("http", 80)]));
    let out = run(&w, &cfg(&w));
    is(
        status(&out, StatusKind::GatewayClass, None, CLASS),
        "Accepted",
        "False",
        "InvalidParameters",
    );
    let g = gateway_status(&out, INFRA, "g");
    is(g, "Accepted", "False", "Invalid");
    is(g, "Programmed", "False", "Invalid");
    assert!(snap_gateway(&out, INFRA, "g").is_none());
}

#[test]
fn accepted_gateway_is_programmed_with_a_typed_address() {
    let w = base();
    let out = run(&w, &cfg(&w));
    let g = gateway_status(&out, INFRA, "same-namespace");
    is(g, "Accepted", "True", "Accepted");
    is(g, "Programmed", "True", "Programmed");
    assert_eq!(
        g["addresses"],
        serde_json::json!([{"type": "IPAddress", "value": "10.0.0.1"}])
    );
    let l = listener(&out, INFRA, "same-namespace", "http");
    is(l, "Accepted", "True", "Accepted");
    is(l, "ResolvedRefs", "True", "ResolvedRefs");
    is(l, "Programmed", "True", "Programmed");
    is(l, "Conflicted", "False", "NoConflicts");
    assert_eq!(
        supported_kinds(&out, INFRA, "same-namespace", "http"),
        BOTH_KINDS
    );
    let sl = snap_listener(&out, INFRA, "same-namespace", "http").unwrap();
    assert_eq!(
        (sl.address.to_string().as_str(), sl.port, sl.protocol),
        ("10.0.0.1", 80, model::Protocol::Http)
    );
}

#[test]
fn programmed_follows_the_data_plane() {
    let w = base();
    let r = ClusterGatewayRef::new(CLUSTER, INFRA, "same-namespace");
    let cases = [
        (Some(ProgrammedState::pending()), "False", "Pending"),
        (None, "False", "Pending"),
        (Some(ProgrammedState::NoProxy), "False", "NoResources"),
        (
            Some(ProgrammedState::Refused(ProxyRefusal::new("p-1", "bad"))),
            "False",
            "Invalid",
        ),
        (Some(ProgrammedState::Applied(7)), "True", "Programmed"),
    ];
    for (state, want, reason) in cases {
        let mut c = cfg(&w);
        match state.clone() {
            Some(s) => c.programmed.insert(r.clone(), s),
            None => c.programmed.remove(&r),
        };
        let out = run(&w, &c);
        let g = gateway_status(&out, INFRA, "same-namespace");
        is(g, "Accepted", "True", "Accepted");
        is(g, "Programmed", want, reason);
        let l = listener(&out, INFRA, "same-namespace", "http");
        let (lstatus, _) = cond(l, "Programmed");
        assert_eq!(lstatus, want, "{state:?}");
        assert!(
            snap_gateway(&out, INFRA, "same-namespace").is_some(),
            "content is served regardless"
        );
    }
    // Without an address there is nothing to bind.
    let mut c = cfg(&w);
    c.addresses.clear();
    let out = run(&w, &c);
    is(
        gateway_status(&out, INFRA, "same-namespace"),
        "Programmed",
        "False",
        "AddressNotAssigned",
    );
    assert!(snap_gateway(&out, INFRA, "same-namespace").is_none());
}

#[test]
fn listener_unsupported_protocol() {
    let mut w = world();
    let c = east(&mut w);
    let mut bad = http("unsupported", 1111);
    bad.protocol = "INVALID".into();
    c.apply(gw(INFRA, "g1", vec![bad.clone()]));
    c.apply(gw(INFRA, "g2", vec![http("http", 80), bad]));
    let out = run(&w, &cfg(&w));

    let g1 = gateway_status(&out, INFRA, "g1");
    is(g1, "Accepted", "False", "ListenersNotValid");
    is(g1, "Programmed", "False", "Invalid");
    is(
        listener(&out, INFRA, "g1", "unsupported"),
        "Accepted",
        "False",
        "UnsupportedProtocol",
    );
    assert!(supported_kinds(&out, INFRA, "g1", "unsupported").is_empty());
    assert!(snap_gateway(&out, INFRA, "g1").is_none());

    let g2 = gateway_status(&out, INFRA, "g2");
    is(g2, "Accepted", "True", "ListenersNotValid");
    is(g2, "Programmed", "True", "Programmed");
    is(
        listener(&out, INFRA, "g2", "http"),
        "Accepted",
        "True",
        "Accepted",
    );
    assert_eq!(supported_kinds(&out, INFRA, "g2", "http"), BOTH_KINDS);
    is(
        listener(&out, INFRA, "g2", "unsupported"),
        "Accepted",
        "False",
        "UnsupportedProtocol",
    );
    assert!(supported_kinds(&out, INFRA, "g2", "unsupported").is_empty());
    let served: Vec<_> = snap_gateway(&out, INFRA, "g2")
        .unwrap()
        .listeners
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(served, ["http"]);
}

#[test]
fn invalid_route_kinds() {
    let mut w = world();
    let c = east(&mut w);
    c.apply(gw(
        INFRA,
        "only-invalid",
        vec![kinds(http("http", 80), &["InvalidRoute"])],
    ));
    c.apply(gw(
        INFRA,
        "mixed",
        vec![kinds(http("http", 80), &["InvalidRoute", "HTTPRoute"])],
    ));
    c.apply(route(
        INFRA,
        "r",
        vec![parent("only-invalid")],
        &[],
        vec![to(vec![])],
    ));
    let out = run(&w, &cfg(&w));

    let l = listener(&out, INFRA, "only-invalid", "http");
    is(l, "ResolvedRefs", "False", "InvalidRouteKinds");
    assert!(supported_kinds(&out, INFRA, "only-invalid", "http").is_empty());
    assert_eq!(attached(&out, INFRA, "only-invalid", "http"), 0);
    is(
        route_parent(&out, INFRA, "r", INFRA, "only-invalid"),
        "Accepted",
        "False",
        "NotAllowedByListeners",
    );

    let l = listener(&out, INFRA, "mixed", "http");
    is(l, "ResolvedRefs", "False", "InvalidRouteKinds");
    assert_eq!(
        supported_kinds(&out, INFRA, "mixed", "http"),
        ["gateway.networking.k8s.io/HTTPRoute"]
    );
    assert_eq!(attached(&out, INFRA, "mixed", "http"), 0);
}

#[test]
fn invalid_parameters_ref() {
    let mut w = world();
    let mut g = gw(INFRA, "g", vec![http("http", 80)]);
    g.spec.infrastructure = Some(GatewayInfrastructure {
        parameters_ref: Some(GatewayInfrastructureParametersRef {
            group: "unknown.example.com".into(),
            kind: "Unknown".into(),
            name: "x".into(),
        }),
        ..Default::default()
    });
    east(&mut w).apply(g);
    let out = run(&w, &cfg(&w));
    is(
        gateway_status(&out, INFRA, "g"),
        "Accepted",
        "False",
        "InvalidParameters",
    );
    assert!(snap_gateway(&out, INFRA, "g").is_none());
}

#[test]
fn invalid_tls_configuration() {
    let mut w = world();
    let c = east(&mut w);
    c.apply(secret(
        INFRA,
        "not-pem",
        "this is not PEM",
        "neither is this",
    ));
    let mut wrong_group = https("wrong-group", 443, &[("", "cert")]);
    wrong_group
        .tls
        .as_mut()
        .unwrap()
        .certificate_refs
        .as_mut()
        .unwrap()[0]
        .group = Some("wrong.group.company.io".into());
    let mut wrong_kind = https("wrong-kind", 444, &[("", "cert")]);
    wrong_kind
        .tls
        .as_mut()
        .unwrap()
        .certificate_refs
        .as_mut()
        .unwrap()[0]
        .kind = Some("WrongKind".into());
    c.apply(secret(INFRA, "cert", CERT_PEM, KEY_PEM));
    let mut no_refs = https("no-refs", 446, &[]);
    no_refs.tls = None;
    c.apply(gw(
        INFRA,
        "g",
        vec![
            https("missing", 445, &[("", "does-not-exist")]),
            wrong_group,
            wrong_kind,
            https("malformed", 447, &[("", "not-pem")]),
            no_refs,
        ],
    ));
    c.apply(route(INFRA, "r", vec![parent("g")], &[], vec![to(vec![])]));
    let out = run(&w, &cfg(&w));
    for l in [
        "missing",
        "wrong-group",
        "wrong-kind",
        "malformed",
        "no-refs",
    ] {
        let st = listener(&out, INFRA, "g", l);
        is(st, "ResolvedRefs", "False", "InvalidCertificateRef");
        is(st, "Programmed", "False", "Invalid");
        assert_eq!(supported_kinds(&out, INFRA, "g", l), BOTH_KINDS, "{l}");
        // Routes still count on listeners that cannot be served.
        assert_eq!(attached(&out, INFRA, "g", l), 1, "{l}");
    }
    is(
        gateway_status(&out, INFRA, "g"),
        "Accepted",
        "False",
        "ListenersNotValid",
    );
    assert!(snap_gateway(&out, INFRA, "g").is_none());
}

const GW_GROUP: &str = "gateway.networking.k8s.io";

fn secret_in_web() -> World {
    let mut w = world();
    let c = east(&mut w);
    c.apply(secret(WEB, "certificate", CERT_PEM, KEY_PEM));
    c.apply(gw(
        INFRA,
        "g",
        vec![https("https", 443, &[(WEB, "certificate")])],
    ));
    w
}

#[test]
fn secret_reference_grants() {
    // Missing grant.
    let w = secret_in_web();
    let out = run(&w, &cfg(&w));
    is(
        listener(&out, INFRA, "g", "https"),
        "ResolvedRefs",
        "False",
        "RefNotPermitted",
    );
    assert!(snap_gateway(&out, INFRA, "g").is_none());

    // Specific and namespace-wide grants.
    for name in [Some("certificate"), None] {
        let mut w = secret_in_web();
        east(&mut w).apply(grant(
            WEB,
            "allow",
            (GW_GROUP, "Gateway", INFRA),
            ("", "Secret", name),
        ));
        let out = run(&w, &cfg(&w));
        let l = listener(&out, INFRA, "g", "https");
        is(l, "ResolvedRefs", "True", "ResolvedRefs");
        is(l, "Programmed", "True", "Programmed");
        let sl = snap_listener(&out, INFRA, "g", "https").unwrap();
        assert_eq!(sl.protocol, model::Protocol::Https);
        assert_eq!(sl.tls.as_ref().unwrap().certificates[0].cert_pem, CERT_PEM);

        // Revocation.
        east(&mut w).delete::<ReferenceGrant>(&crate::ObjectKey::new(WEB, "allow"));
        let out = run(&w, &cfg(&w));
        is(
            listener(&out, INFRA, "g", "https"),
            "ResolvedRefs",
            "False",
            "RefNotPermitted",
        );
    }

    // Seven grants each wrong in one field.
    let bad = [
        grant(
            INFRA,
            "own-ns",
            (GW_GROUP, "Gateway", INFRA),
            ("", "Secret", Some("certificate")),
        ),
        grant(
            WEB,
            "from-group",
            ("wrong.io", "Gateway", INFRA),
            ("", "Secret", Some("certificate")),
        ),
        grant(
            WEB,
            "from-kind",
            (GW_GROUP, "HTTPRoute", INFRA),
            ("", "Secret", Some("certificate")),
        ),
        grant(
            WEB,
            "from-ns",
            (GW_GROUP, "Gateway", APP),
            ("", "Secret", Some("certificate")),
        ),
        grant(
            WEB,
            "to-group",
            (GW_GROUP, "Gateway", INFRA),
            ("wrong.io", "Secret", Some("certificate")),
        ),
        grant(
            WEB,
            "to-kind",
            (GW_GROUP, "Gateway", INFRA),
            ("", "Service", Some("certificate")),
        ),
        grant(
            WEB,
            "to-name",
            (GW_GROUP, "Gateway", INFRA),
            ("", "Secret", Some("other")),
        ),
    ];
    for g in bad {
        let mut w = secret_in_web();
        let name = g.metadata.name.clone().unwrap();
        east(&mut w).apply(g);
        let out = run(&w, &cfg(&w));
        let (s, r) = cond(listener(&out, INFRA, "g", "https"), "ResolvedRefs");
        assert_eq!(
            (s.as_str(), r.as_str()),
            ("False", "RefNotPermitted"),
            "grant {name}"
        );
    }
}

#[test]
fn conflicting_listeners_are_not_served() {
    let mut w = world();
    east(&mut w).apply(secret(INFRA, "cert", CERT_PEM, KEY_PEM));
    east(&mut w).apply(gw(
        INFRA,
        "g",
        vec![
            host(http("a", 80), "foo.example.com"),
            host(http("b", 80), "FOO.example.com"),
            http("c", 8080),
            https("d", 8080, &[("", "cert")]),
            host(http("e", 80), "bar.example.com"),
        ],
    ));
    let out = run(&w, &cfg(&w));
    for l in ["a", "b"] {
        is(
            listener(&out, INFRA, "g", l),
            "Conflicted",
            "True",
            "HostnameConflict",
        );
        is(
            listener(&out, INFRA, "g", l),
            "Programmed",
            "False",
            "Invalid",
        );
    }
    for l in ["c", "d"] {
        is(
            listener(&out, INFRA, "g", l),
            "Conflicted",
            "True",
            "ProtocolConflict",
        );
    }
    is(
        listener(&out, INFRA, "g", "e"),
        "Conflicted",
        "False",
        "NoConflicts",
    );
    is(
        gateway_status(&out, INFRA, "g"),
        "Accepted",
        "True",
        "ListenersNotValid",
    );
    let served: Vec<_> = snap_gateway(&out, INFRA, "g")
        .unwrap()
        .listeners
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(served, ["e"]);
}

#[test]
fn static_addresses() {
    let usable: IpAddr = "10.9.9.9".parse().unwrap();
    let addr = |ty: Option<&str>, v: &str| GatewayAddresses {
        r#type: ty.map(Into::into),
        value: Some(v.into()),
    };
    let with = |addrs: Vec<GatewayAddresses>| {
        let mut w = world();
        let mut g = gw(INFRA, "g", vec![http("http", 80)]);
        g.spec.addresses = Some(addrs);
        east(&mut w).apply(g);
        let mut c = cfg(&w);
        c.addresses
            .insert(ClusterGatewayRef::new(CLUSTER, INFRA, "g"), vec![usable]);
        run(&w, &c)
    };
    // 1) an unknown type.
    let out = with(vec![
        addr(Some("test/fake-invalid-type"), "x"),
        addr(None, "10.1.1.1"),
        addr(None, "10.9.9.9"),
    ]);
    is(
        gateway_status(&out, INFRA, "g"),
        "Accepted",
        "False",
        "UnsupportedAddress",
    );
    // 2) an unusable IP.
    let out = with(vec![
        addr(Some("IPAddress"), "10.1.1.1"),
        addr(None, "10.9.9.9"),
    ]);
    let g = gateway_status(&out, INFRA, "g");
    is(g, "Accepted", "True", "Accepted");
    is(g, "Programmed", "False", "AddressNotUsable");
    assert!(snap_gateway(&out, INFRA, "g").is_none());
    // 3) only the usable one.
    let out = with(vec![addr(None, "10.9.9.9")]);
    let g = gateway_status(&out, INFRA, "g");
    is(g, "Programmed", "True", "Programmed");
    assert_eq!(
        g["addresses"],
        serde_json::json!([{"type": "IPAddress", "value": "10.9.9.9"}])
    );
    is(
        listener(&out, INFRA, "g", "http"),
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    );
    // An empty value asks for an assigned one.
    let out = with(vec![GatewayAddresses {
        r#type: Some("IPAddress".into()),
        value: None,
    }]);
    assert_eq!(
        gateway_status(&out, INFRA, "g")["addresses"][0]["value"],
        "10.9.9.9"
    );
}

#[test]
fn modified_listeners_replace_the_listener_status() {
    let mut w = base();
    east(&mut w).apply(secret(INFRA, "cert", CERT_PEM, KEY_PEM));
    let mut g = gw(
        INFRA,
        "g",
        vec![host(
            https("https", 443, &[("", "cert")]),
            "secure.test.com",
        )],
    );
    east(&mut w).apply(g.clone());
    east(&mut w).apply(route(
        INFRA,
        "r",
        vec![parent("g")],
        &[],
        vec![to(vec![backend("infra-backend-v1", 8080)])],
    ));
    let out = run(&w, &cfg(&w));
    write_back(&mut w, &out);
    assert_eq!(attached(&out, INFRA, "g", "https"), 1);

    // (a) add an HTTP listener.
    g.spec
        .listeners
        .push(host(http("http", 80), "data.test.com"));
    g.metadata.generation = Some(2);
    east(&mut w).apply(g.clone());
    let out = run(&w, &cfg(&w));
    write_back(&mut w, &out);
    for l in ["https", "http"] {
        let st = listener(&out, INFRA, "g", l);
        is(st, "Accepted", "True", "Accepted");
        is(st, "ResolvedRefs", "True", "ResolvedRefs");
        assert_eq!(attached(&out, INFRA, "g", l), 1);
    }

    // (b) remove the HTTPS listener: its status entry goes away.
    g.spec.listeners.remove(0);
    g.metadata.generation = Some(3);
    east(&mut w).apply(g);
    let out = run(&w, &cfg(&w));
    let names: Vec<_> = gateway_status(&out, INFRA, "g")["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["http"]);
    assert_eq!(attached(&out, INFRA, "g", "http"), 1);
}

#[test]
fn gateway_with_attached_routes() {
    // (a) Selector on the metadata.name label, kinds [HTTPRoute].
    let mut w = base();
    let l = kinds(
        from_selector(http("http", 80), &[("kubernetes.io/metadata.name", INFRA)]),
        &["HTTPRoute"],
    );
    east(&mut w).apply(gw(INFRA, "a", vec![l]));
    east(&mut w).apply(route(
        INFRA,
        "r",
        vec![parent("a")],
        &[],
        vec![to(vec![backend("infra-backend-v1", 8080)])],
    ));
    let out = run(&w, &cfg(&w));
    assert_eq!(attached(&out, INFRA, "a", "http"), 1);

    // (b) a listener hostname: two routes without hostnames attach, a third does not.
    let mut w = base();
    let c = east(&mut w);
    c.apply(gw(
        INFRA,
        "b",
        vec![host(http("http", 80), "foo.example.com")],
    ));
    c.apply(route(INFRA, "r1", vec![parent("b")], &[], vec![to(vec![])]));
    c.apply(route(INFRA, "r2", vec![parent("b")], &[], vec![to(vec![])]));
    c.apply(route(
        INFRA,
        "r3",
        vec![parent("b")],
        &["not-accepted.test.com"],
        vec![to(vec![])],
    ));
    let out = run(&w, &cfg(&w));
    assert_eq!(attached(&out, INFRA, "b", "http"), 2);
    is(
        route_parent(&out, INFRA, "r3", INFRA, "b"),
        "Accepted",
        "False",
        "NoMatchingListenerHostname",
    );
    assert_eq!(snap_routes(&out, INFRA, "b", "http"), ["r1", "r2"]);

    // (c) an HTTPS listener whose Secret is missing still counts its route.
    let mut w = base();
    let c = east(&mut w);
    let mut g = gw(INFRA, "c", vec![https("https", 443, &[("", "missing")])]);
    g.metadata.annotations = Some(BTreeMap::from([(
        "gateway-api/skip-this-for-readiness".into(),
        "true".into(),
    )]));
    c.apply(g);
    c.apply(route(
        INFRA,
        "r",
        vec![section(parent("c"), "https")],
        &[],
        vec![to(vec![backend("missing-backend", 8080)])],
    ));
    let out = run(&w, &cfg(&w));
    let l = listener(&out, INFRA, "c", "https");
    is(l, "Programmed", "False", "Invalid");
    is(l, "ResolvedRefs", "False", "InvalidCertificateRef");
    assert_eq!(attached(&out, INFRA, "c", "https"), 1);
    let p = route_parent(&out, INFRA, "r", INFRA, "c");
    is(p, "Accepted", "True", "Accepted");
    is(p, "ResolvedRefs", "False", "BackendNotFound");
}

#[test]
fn attached_routes_with_port_8080() {
    let mut w = base();
    let c = east(&mut w);
    c.apply(gw(
        INFRA,
        "g",
        vec![http("http-unattached", 8080), http("http", 80)],
    ));
    c.apply(route(
        INFRA,
        "r",
        vec![section(parent("g"), "http")],
        &[],
        vec![to(vec![])],
    ));
    let out = run(&w, &cfg(&w));
    assert_eq!(attached(&out, INFRA, "g", "http-unattached"), 0);
    assert_eq!(attached(&out, INFRA, "g", "http"), 1);
    assert_eq!(
        snap_listener(&out, INFRA, "g", "http-unattached")
            .unwrap()
            .port,
        8080
    );
}

#[test]
fn gateway_observed_generation_bump() {
    let mut w = base();
    let out = run(&w, &cfg(&w));
    write_back(&mut w, &out);
    let mut g = (*east(&mut w).gateways[&crate::ObjectKey::new(INFRA, "same-namespace")]).clone();
    g.spec
        .listeners
        .push(host(http("alternate", 80), "foo.com"));
    g.metadata.generation = Some(2);
    east(&mut w).apply(g);
    let out = run(&w, &cfg(&w));
    let g = gateway_status(&out, INFRA, "same-namespace");
    is(g, "Accepted", "True", "Accepted");
    is(g, "Programmed", "True", "Programmed");
    // `run` checked observedGeneration == 2 on every condition, listeners included.
    assert_eq!(
        out.status
            .iter()
            .find(|u| u.kind == StatusKind::Gateway)
            .unwrap()
            .generation,
        2
    );
}

#[test]
fn status_writes_are_idempotent_and_keep_transition_times() {
    let mut w = base();
    let c = cfg(&w);
    let out = run(&w, &c);
    write_back(&mut w, &out);
    let mut later = c.clone();
    later.now = Timestamp::from_second(9_000).unwrap();
    assert!(
        run(&w, &later).status.is_empty(),
        "unchanged status is not rewritten"
    );

    // Programmed flips to Pending: only that condition gets the new time.
    later.programmed.insert(
        ClusterGatewayRef::new(CLUSTER, INFRA, "same-namespace"),
        ProgrammedState::pending(),
    );
    let out = run(&w, &later);
    let g = gateway_status(&out, INFRA, "same-namespace");
    let time = |t: &str| {
        g["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap()["lastTransitionTime"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(time("Accepted"), "1970-01-01T00:33:20Z");
    assert_eq!(time("Programmed"), "1970-01-01T02:30:00Z");
}

#[test]
fn stale_copies_are_not_written() {
    let mut w = base();
    let out = run(&w, &cfg(&w));
    write_back(&mut w, &out);
    // Our copy says generation 1, but the status on it already reports generation 5.
    let key = crate::ObjectKey::new(INFRA, "same-namespace");
    let mut g = (*east(&mut w).gateways[&key]).clone();
    for c in g.status.as_mut().unwrap().conditions.as_mut().unwrap() {
        c.observed_generation = Some(5);
    }
    g.spec.listeners.push(http("new", 81));
    east(&mut w).apply(g);
    assert!(!has_status(
        &run(&w, &cfg(&w)),
        StatusKind::Gateway,
        Some(INFRA),
        "same-namespace"
    ));
}

#[test]
fn all_namespaces_listener_admits_other_namespaces() {
    let mut w = base();
    let c = east(&mut w);
    c.apply(gw(INFRA, "all", vec![from(http("http", 80), From::All)]));
    c.apply(svc(WEB, "web-backend", &[(None, 8080, None)]));
    c.apply(route(
        WEB,
        "r",
        vec![parent_in(INFRA, "all")],
        &[],
        vec![to(vec![backend("web-backend", 8080)])],
    ));
    let out = run(&w, &cfg(&w));
    let p = route_parent(&out, WEB, "r", INFRA, "all");
    is(p, "Accepted", "True", "Accepted");
    assert_eq!(p["parentRef"]["namespace"], INFRA);
    assert_eq!(attached(&out, INFRA, "all", "http"), 1);
}

#[test]
fn gateways_sharing_an_address_do_not_break_the_snapshot() {
    let mut w = world();
    let c = east(&mut w);
    let mut old = gw(
        INFRA,
        "old",
        vec![host(http("a", 80), "a.example.com"), http("b", 8080)],
    );
    old.metadata.creation_timestamp = Some(Time(Timestamp::from_second(10).unwrap()));
    c.apply(old);
    c.apply(secret(INFRA, "cert", CERT_PEM, KEY_PEM));
    // Newer: same hostname on :80 (clash), other hostname on :80 (fine), HTTPS on :8080 (clash).
    c.apply(gw(
        INFRA,
        "new",
        vec![
            host(http("same-host", 80), "a.example.com"),
            host(http("other-host", 80), "b.example.com"),
            https("tls", 8080, &[("", "cert")]),
        ],
    ));
    let mut c = cfg(&w);
    let shared: IpAddr = "10.5.5.5".parse().unwrap();
    for n in ["old", "new"] {
        c.addresses
            .insert(ClusterGatewayRef::new(CLUSTER, INFRA, n), vec![shared]);
    }
    let out = run(&w, &c);
    is(
        listener(&out, INFRA, "old", "a"),
        "Conflicted",
        "False",
        "NoConflicts",
    );
    is(
        listener(&out, INFRA, "new", "same-host"),
        "Conflicted",
        "True",
        "HostnameConflict",
    );
    is(
        listener(&out, INFRA, "new", "tls"),
        "Conflicted",
        "True",
        "ProtocolConflict",
    );
    is(
        listener(&out, INFRA, "new", "other-host"),
        "Conflicted",
        "False",
        "NoConflicts",
    );
    let served: Vec<_> = snap_gateway(&out, INFRA, "new")
        .unwrap()
        .listeners
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(served, ["other-host"]);
}

#[test]
fn frontend_client_validation_is_refused_not_ignored() {
    let mut w = world();
    let mut g = gw(INFRA, "g", vec![http("http", 80)]);
    g.spec.tls = Some(GatewayTls {
        frontend: Some(GatewayTlsFrontend::default()),
        backend: None,
    });
    east(&mut w).apply(g);
    let out = run(&w, &cfg(&w));
    is(
        gateway_status(&out, INFRA, "g"),
        "Accepted",
        "False",
        "Invalid",
    );
    assert!(snap_gateway(&out, INFRA, "g").is_none());
}

#[test]
fn backend_client_certificate_ref_is_reported() {
    let with = |r: GatewayTlsBackendClientCertificateRef, secret_too: bool| {
        let mut w = world();
        let mut g = gw(INFRA, "g", vec![http("http", 80)]);
        g.spec.tls = Some(GatewayTls {
            frontend: None,
            backend: Some(GatewayTlsBackend {
                client_certificate_ref: Some(r),
            }),
        });
        east(&mut w).apply(g);
        if secret_too {
            east(&mut w).apply(secret(INFRA, "client", CERT_PEM, KEY_PEM));
            east(&mut w).apply(secret(WEB, "client", CERT_PEM, KEY_PEM));
        }
        run(&w, &cfg(&w))
    };
    let r = |name: &str| GatewayTlsBackendClientCertificateRef {
        name: name.into(),
        ..Default::default()
    };
    let out = with(r("client"), true);
    let g = gateway_status(&out, INFRA, "g");
    is(g, "ResolvedRefs", "True", "ResolvedRefs");
    is(g, "Accepted", "True", "Accepted");
    let out = with(r("client"), false);
    is(
        gateway_status(&out, INFRA, "g"),
        "ResolvedRefs",
        "False",
        "InvalidClientCertificateRef",
    );
    is(
        gateway_status(&out, INFRA, "g"),
        "Accepted",
        "True",
        "Accepted",
    );
    let wrong_kind = GatewayTlsBackendClientCertificateRef {
        kind: Some("ConfigMap".into()),
        ..r("client")
    };
    is(
        gateway_status(&with(wrong_kind, true), INFRA, "g"),
        "ResolvedRefs",
        "False",
        "InvalidClientCertificateRef",
    );
    let cross = GatewayTlsBackendClientCertificateRef {
        namespace: Some(WEB.into()),
        ..r("client")
    };
    is(
        gateway_status(&with(cross, true), INFRA, "g"),
        "ResolvedRefs",
        "False",
        "RefNotPermitted",
    );
    // Without a Gateway-level reference there is no Gateway-level ResolvedRefs condition.
    let w = base();
    let out = run(&w, &cfg(&w));
    let g = gateway_status(&out, INFRA, "same-namespace");
    assert!(
        g["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["type"] != "ResolvedRefs")
    );
}

#[test]
fn long_names_and_duplicate_listener_names() {
    let mut w = world();
    let long = "g".repeat(253);
    east(&mut w).apply(gw(INFRA, &long, vec![http("http", 80), http("http", 81)]));
    let out = run(&w, &cfg(&w));
    let g = gateway_status(&out, INFRA, &long);
    is(g, "Accepted", "True", "ListenersNotValid");
    is(g, "Programmed", "True", "Programmed");
    assert_eq!(
        g["listeners"].as_array().unwrap().len(),
        1,
        "one status entry per listener name"
    );
    assert_eq!(snap_gateway(&out, INFRA, &long).unwrap().listeners.len(), 1);
}
