//! Behaviour of the generated CRDs: names, columns, versions, schema shape, SSA list markers,
//! YAML rendering, and the checked-in `crds/*.yaml` files staying in sync with the code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use meridian_crds::{
    CustomResourceDefinition, Error, all_crds, file_name, gateway_api_crds, mcs_crds, render_yaml,
    write_files,
};
use serde_json::{Value, json};

fn by_kind(kind: &str) -> CustomResourceDefinition {
    all_crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"))
}

fn schema_of(crd: &CustomResourceDefinition, version: &str) -> Value {
    let v = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == version)
        .unwrap_or_else(|| panic!("{} has no version {version}", crd.spec.names.kind));
    serde_json::to_value(
        v.schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// Follows `status.listeners[].conditions`-style paths through a JSON schema.
fn node<'a>(schema: &'a Value, path: &str) -> &'a Value {
    let mut cur = schema;
    for seg in path.split('.') {
        let mut name = seg;
        let mut items = 0;
        while let Some(s) = name.strip_suffix("[]") {
            name = s;
            items += 1;
        }
        cur = &cur["properties"][name];
        assert!(!cur.is_null(), "schema path {path} missing at {name}");
        for _ in 0..items {
            cur = &cur["items"];
            assert!(!cur.is_null(), "schema path {path} has no items at {name}");
        }
    }
    cur
}

/// (name, type, jsonPath, priority)
type Col = (&'static str, &'static str, &'static str, i32);

fn columns(crd: &CustomResourceDefinition, version: &str) -> Vec<(String, String, String, i32)> {
    let v = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == version)
        .unwrap();
    v.additional_printer_columns
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.name, c.type_, c.json_path, c.priority.unwrap_or(0)))
        .collect()
}

fn assert_columns(kind: &str, expected: &[Col]) {
    let crd = by_kind(kind);
    let expected: Vec<_> = expected
        .iter()
        .map(|(n, t, p, pr)| (n.to_string(), t.to_string(), p.to_string(), *pr))
        .collect();
    for v in &crd.spec.versions {
        assert_eq!(
            columns(&crd, &v.name),
            expected,
            "{kind} {} printer columns",
            v.name
        );
    }
}

#[test]
fn gateway_api_printer_columns_match_upstream() {
    let age: Col = ("Age", "date", ".metadata.creationTimestamp", 0);
    assert_columns(
        "GatewayClass",
        &[
            ("Controller", "string", ".spec.controllerName", 0),
            (
                "Accepted",
                "string",
                r#".status.conditions[?(@.type=="Accepted")].status"#,
                0,
            ),
            age,
            ("Description", "string", ".spec.description", 1),
        ],
    );
    assert_columns(
        "Gateway",
        &[
            ("Class", "string", ".spec.gatewayClassName", 0),
            ("Address", "string", ".status.addresses[*].value", 0),
            (
                "Programmed",
                "string",
                r#".status.conditions[?(@.type=="Programmed")].status"#,
                0,
            ),
            age,
        ],
    );
    assert_columns(
        "HTTPRoute",
        &[("Hostnames", "string", ".spec.hostnames", 0), age],
    );
    assert_columns(
        "GRPCRoute",
        &[("Hostnames", "string", ".spec.hostnames", 0), age],
    );
    assert_columns("ReferenceGrant", &[age]);
    assert_columns(
        "ListenerSet",
        &[
            (
                "Accepted",
                "string",
                r#".status.conditions[?(@.type=="Accepted")].status"#,
                0,
            ),
            (
                "Programmed",
                "string",
                r#".status.conditions[?(@.type=="Programmed")].status"#,
                0,
            ),
            age,
        ],
    );
    assert_columns(
        "TLSRoute",
        &[("Hostnames", "string", ".spec.hostnames", 0), age],
    );
    assert_columns("BackendTLSPolicy", &[age]);
}

#[test]
fn mcs_printer_columns() {
    assert_columns(
        "ServiceImport",
        &[
            ("Type", "string", ".spec.type", 0),
            ("IP", "string", ".spec.ips", 0),
            ("Age", "date", ".metadata.creationTimestamp", 0),
        ],
    );
    assert_columns("ServiceExport", &[]);
}

#[test]
fn names_short_names_categories_and_scope() {
    /// (kind, plural, shortNames, category, scope)
    type Names = (
        &'static str,
        &'static str,
        &'static [&'static str],
        Option<&'static str>,
        &'static str,
    );
    let expect: &[Names] = &[
        (
            "GatewayClass",
            "gatewayclasses",
            &["gc"],
            Some("gateway-api"),
            "Cluster",
        ),
        (
            "Gateway",
            "gateways",
            &["gtw"],
            Some("gateway-api"),
            "Namespaced",
        ),
        (
            "HTTPRoute",
            "httproutes",
            &[],
            Some("gateway-api"),
            "Namespaced",
        ),
        (
            "GRPCRoute",
            "grpcroutes",
            &[],
            Some("gateway-api"),
            "Namespaced",
        ),
        (
            "ReferenceGrant",
            "referencegrants",
            &["refgrant"],
            Some("gateway-api"),
            "Namespaced",
        ),
        (
            "ListenerSet",
            "listenersets",
            &["lset"],
            Some("gateway-api"),
            "Namespaced",
        ),
        (
            "TLSRoute",
            "tlsroutes",
            &[],
            Some("gateway-api"),
            "Namespaced",
        ),
        (
            "BackendTLSPolicy",
            "backendtlspolicies",
            &["btlspolicy"],
            Some("gateway-api"),
            "Namespaced",
        ),
        (
            "ServiceExport",
            "serviceexports",
            &["svcex"],
            None,
            "Namespaced",
        ),
        (
            "ServiceImport",
            "serviceimports",
            &["svcim"],
            None,
            "Namespaced",
        ),
    ];
    for (kind, plural, shorts, category, scope) in expect {
        let crd = by_kind(kind);
        let names = &crd.spec.names;
        assert_eq!(names.plural, *plural, "{kind} plural");
        assert_eq!(
            names.short_names.clone().unwrap_or_default(),
            shorts.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "{kind} shortNames"
        );
        assert_eq!(
            names.categories.clone().unwrap_or_default(),
            category.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "{kind} categories"
        );
        assert_eq!(crd.spec.scope, *scope, "{kind} scope");
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(format!("{plural}.{}", crd.spec.group).as_str()),
            "{kind} metadata.name must be <plural>.<group>"
        );
    }
}

#[test]
fn all_crds_has_stable_order_and_unique_names() {
    let kinds: Vec<_> = all_crds().into_iter().map(|c| c.spec.names.kind).collect();
    assert_eq!(
        kinds,
        [
            "GatewayClass",
            "Gateway",
            "HTTPRoute",
            "GRPCRoute",
            "ReferenceGrant",
            "ListenerSet",
            "TLSRoute",
            "BackendTLSPolicy",
            "ServiceExport",
            "ServiceImport",
            "FailoverPolicy",
            "FailoverDrill"
        ]
    );
    let names: BTreeSet<_> = all_crds()
        .into_iter()
        .map(|c| c.metadata.name.unwrap())
        .collect();
    assert_eq!(names.len(), kinds.len());
    assert_eq!(all_crds(), all_crds(), "generation must be deterministic");
    assert_eq!(
        gateway_api_crds().len() + mcs_crds().len() + meridian_crds::meridian::crds().len(),
        all_crds().len()
    );
}

#[test]
fn every_crd_has_exactly_one_storage_version_and_all_are_served() {
    for crd in all_crds() {
        let kind = &crd.spec.names.kind;
        let storage: Vec<_> = crd.spec.versions.iter().filter(|v| v.storage).collect();
        assert_eq!(storage.len(), 1, "{kind}: exactly one storage version");
        assert!(
            crd.spec.versions.iter().all(|v| v.served),
            "{kind}: all versions served"
        );
        let names: BTreeSet<_> = crd.spec.versions.iter().map(|v| &v.name).collect();
        assert_eq!(
            names.len(),
            crd.spec.versions.len(),
            "{kind}: duplicate version names"
        );
    }
}

#[test]
fn gateway_api_serves_v1beta1_with_v1_schema_and_v1_storage() {
    for crd in gateway_api_crds() {
        let kind = &crd.spec.names.kind;
        if kind == "BackendTLSPolicy" {
            // Upstream serves it as v1 only (it never had a v1beta1).
            let versions: Vec<_> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
            assert_eq!(versions, ["v1"], "{kind}");
            continue;
        }
        let versions: Vec<_> = crd
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.served, v.storage))
            .collect();
        if kind == "GRPCRoute" || kind == "TLSRoute" || kind == "ListenerSet" {
            // Upstream serves these as v1 only (they were v1alpha2 before, never v1beta1).
            assert_eq!(versions, [("v1", true, true)], "{kind}");
            continue;
        }
        assert_eq!(
            versions,
            [("v1", true, true), ("v1beta1", true, false)],
            "{kind}"
        );
        let v1 = &crd.spec.versions[0];
        let beta = &crd.spec.versions[1];
        assert_eq!(
            v1.schema, beta.schema,
            "{kind}: v1beta1 must share the v1 schema"
        );
        assert_eq!(v1.subresources, beta.subresources, "{kind}: subresources");
        // Identical schemas need no conversion webhook.
        assert!(
            crd.spec
                .conversion
                .as_ref()
                .is_none_or(|c| c.strategy == "None"),
            "{kind}: conversion"
        );
    }
    for crd in mcs_crds() {
        let versions: Vec<_> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(versions, ["v1alpha1"]);
        assert_eq!(crd.spec.group, "multicluster.x-k8s.io");
    }
}

#[test]
fn gateway_api_annotations() {
    for crd in gateway_api_crds() {
        let a = crd.metadata.annotations.clone().unwrap_or_default();
        let kind = &crd.spec.names.kind;
        assert_eq!(
            a.get("gateway.networking.k8s.io/bundle-version")
                .map(String::as_str),
            Some("v1.5.1"),
            "{kind}"
        );
        assert_eq!(
            a.get("gateway.networking.k8s.io/channel")
                .map(String::as_str),
            Some("standard"),
            "{kind}"
        );
        // Required by real API servers for the protected *.k8s.io group.
        assert!(a.contains_key("api-approved.kubernetes.io"), "{kind}");
    }
    for crd in mcs_crds() {
        assert!(
            crd.metadata.annotations.is_none(),
            "{}",
            crd.spec.names.kind
        );
    }
}

#[test]
fn status_subresource_where_expected() {
    for (kind, has_status) in [
        ("GatewayClass", true),
        ("Gateway", true),
        ("HTTPRoute", true),
        ("GRPCRoute", true),
        ("TLSRoute", true),
        ("ListenerSet", true),
        ("ReferenceGrant", false),
        ("ServiceExport", true),
        ("ServiceImport", true),
        ("FailoverDrill", true),
    ] {
        let crd = by_kind(kind);
        for v in &crd.spec.versions {
            let status = v
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some();
            assert_eq!(status, has_status, "{kind} {} status subresource", v.name);
            let schema = schema_of(&crd, &v.name);
            assert_eq!(
                !schema["properties"]["status"].is_null(),
                has_status,
                "{kind} {}: status in schema iff subresource",
                v.name
            );
        }
    }
}

/// The parts of the apiextensions structural-schema rules that a derived schema could break.
/// A real API server rejects CRDs that fail these.
fn check_structural(s: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(obj) = s.as_object() else {
        errors.push(format!("{path}: schema is not an object"));
        return;
    };
    for forbidden in [
        "$ref",
        "definitions",
        "$schema",
        "additionalItems",
        "dependencies",
    ] {
        if obj.contains_key(forbidden) {
            errors.push(format!("{path}: has {forbidden}"));
        }
    }
    let escape = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let ty = obj.get("type").and_then(Value::as_str);
    if ty.is_none() && !escape {
        errors.push(format!("{path}: no type"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        errors.push(format!(
            "{path}: properties and additionalProperties together"
        ));
    }
    if ty == Some("array") {
        match obj.get("items") {
            Some(items) if items.is_object() => {
                check_structural(items, &format!("{path}[]"), errors)
            }
            _ => errors.push(format!("{path}: array without a single items schema")),
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            check_structural(v, &format!("{path}.{k}"), errors);
        }
    }
    if let Some(Value::Object(ap)) = obj.get("additionalProperties") {
        check_structural(&Value::Object(ap.clone()), &format!("{path}{{*}}"), errors);
    }
    // Inside value validations, only validation keywords are allowed.
    for junction in ["anyOf", "oneOf", "allOf"] {
        for (i, sub) in obj
            .get(junction)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            for bad in [
                "type",
                "description",
                "default",
                "nullable",
                "additionalProperties",
            ] {
                if sub.get(bad).is_some() {
                    errors.push(format!("{path}.{junction}[{i}]: has {bad}"));
                }
            }
        }
    }
    match obj.get("x-kubernetes-list-type").and_then(Value::as_str) {
        None | Some("atomic") | Some("set") => {}
        Some("map") => {
            let items = &s["items"];
            let keys = obj
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array);
            let required: Vec<_> = items["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match keys {
                Some(keys) if !keys.is_empty() => {
                    for key in keys.iter().filter_map(Value::as_str) {
                        let key_schema = &items["properties"][key];
                        let scalar = matches!(
                            key_schema["type"].as_str(),
                            Some("string" | "integer" | "number" | "boolean")
                        );
                        if !scalar {
                            errors.push(format!("{path}: map key {key} is not a scalar property"));
                        }
                        if !required.contains(&key) && key_schema.get("default").is_none() {
                            errors.push(format!(
                                "{path}: map key {key} neither required nor defaulted"
                            ));
                        }
                    }
                }
                _ => errors.push(format!("{path}: list-type map without list-map-keys")),
            }
        }
        Some(other) => errors.push(format!("{path}: unknown list type {other}")),
    }
}

#[test]
fn schemas_are_structural() {
    for crd in all_crds() {
        for v in &crd.spec.versions {
            let schema = schema_of(&crd, &v.name);
            assert_eq!(
                schema["type"], "object",
                "{} root type",
                crd.spec.names.kind
            );
            let mut errors = Vec::new();
            check_structural(&schema, "", &mut errors);
            assert!(
                errors.is_empty(),
                "{} {}: {errors:#?}",
                crd.spec.names.kind,
                v.name
            );
        }
    }
}

#[test]
fn structural_checker_catches_bad_schemas() {
    // Guard against a checker that accepts everything.
    let mut errors = Vec::new();
    check_structural(
        &json!({"type": "object", "properties": {
            "a": {"description": "untyped"},
            "l": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}},
                  "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"]},
            "r": {"$ref": "#/definitions/x", "type": "object"}
        }}),
        "",
        &mut errors,
    );
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[test]
fn ssa_list_markers_for_status_lists() {
    let map = |k: &str| (Some("map".to_string()), Some(vec![k.to_string()]));
    let atomic = (Some("atomic".to_string()), None);
    let cases = [
        ("GatewayClass", "status.conditions", map("type")),
        ("GatewayClass", "status.supportedFeatures", map("name")),
        ("Gateway", "spec.listeners", map("name")),
        ("Gateway", "status.conditions", map("type")),
        ("Gateway", "status.addresses", atomic.clone()),
        ("Gateway", "status.listeners", map("name")),
        ("Gateway", "status.listeners[].conditions", map("type")),
        ("HTTPRoute", "status.parents", atomic.clone()),
        ("HTTPRoute", "status.parents[].conditions", map("type")),
        ("GRPCRoute", "status.parents", atomic.clone()),
        ("GRPCRoute", "status.parents[].conditions", map("type")),
        ("ListenerSet", "status.conditions", map("type")),
        ("ListenerSet", "status.listeners", map("name")),
        ("ListenerSet", "status.listeners[].conditions", map("type")),
        ("TLSRoute", "status.parents", atomic.clone()),
        ("TLSRoute", "status.parents[].conditions", map("type")),
        ("ServiceExport", "status.conditions", map("type")),
        ("ServiceImport", "spec.ports", atomic.clone()),
        ("ServiceImport", "status.clusters", map("cluster")),
    ];
    for (kind, path, (list_type, keys)) in cases {
        let crd = by_kind(kind);
        for v in &crd.spec.versions {
            let schema = schema_of(&crd, &v.name);
            let n = node(&schema, path);
            assert_eq!(n["type"], "array", "{kind} {path}");
            let got_type = n["x-kubernetes-list-type"].as_str().map(str::to_string);
            let got_keys = n["x-kubernetes-list-map-keys"].as_array().map(|a| {
                a.iter()
                    .map(|k| k.as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            });
            assert_eq!(
                (got_type, got_keys),
                (list_type.clone(), keys.clone()),
                "{kind} {} {path}",
                v.name
            );
        }
    }
}

#[test]
fn mcs_schema_shape() {
    let export = schema_of(&by_kind("ServiceExport"), "v1alpha1");
    // Upstream ServiceExports have no spec, so it must not be required.
    let required: Vec<_> = export["required"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    assert!(
        !required.contains(&&json!("spec")),
        "ServiceExport spec must be optional: {required:?}"
    );

    let import = schema_of(&by_kind("ServiceImport"), "v1alpha1");
    let spec = &import["properties"]["spec"];
    let mut req: Vec<_> = spec["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    req.sort_unstable();
    assert_eq!(req, ["ports", "type"]);
    let mut types: Vec<_> = spec["properties"]["type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    types.sort_unstable();
    assert_eq!(types, ["ClusterSetIP", "Headless"]);
    let port = &spec["properties"]["ports"]["items"];
    assert_eq!(port["required"], json!(["port"]));
    for field in ["name", "protocol", "appProtocol", "port"] {
        assert!(!port["properties"][field].is_null(), "ServicePort.{field}");
    }
    assert!(!spec["properties"]["sessionAffinity"].is_null());
    assert!(!spec["properties"]["sessionAffinityConfig"].is_null());
}

#[test]
fn crds_fit_kubectl_client_side_apply() {
    // Client-side `kubectl apply` stores the whole object in the last-applied-configuration
    // annotation, and annotations are limited to 256 KiB in total.
    for crd in all_crds() {
        let size = serde_json::to_vec(&crd).unwrap().len();
        assert!(
            size < 256 * 1024,
            "{} is {size} bytes of JSON",
            crd.spec.names.kind
        );
    }
}

#[test]
fn root_descriptions_are_not_derive_placeholders() {
    for crd in all_crds() {
        for v in &crd.spec.versions {
            let d = schema_of(&crd, &v.name)["description"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                !d.is_empty() && !d.contains("Auto-generated"),
                "{}: {d:?}",
                crd.spec.names.kind
            );
        }
    }
}

// ---- serde round-trips of the MCS types ----

fn yaml_to_json(yaml: &str) -> Value {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn service_import_round_trips_realistic_manifest() {
    use meridian_crds::mcs::{ServiceImport, ServiceImportType, SessionAffinity};
    let manifest = yaml_to_json(
        r#"
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceImport
metadata:
  name: checkout
  namespace: shop
  resourceVersion: "42"
spec:
  type: ClusterSetIP
  ips: ["10.42.0.17"]
  sessionAffinity: ClientIP
  sessionAffinityConfig:
    clientIP:
      timeoutSeconds: 10800
  ports:
    - name: http
      protocol: TCP
      appProtocol: http
      port: 80
    - name: grpc
      protocol: TCP
      port: 9090
status:
  clusters:
    - cluster: east
    - cluster: west
"#,
    );
    let import: ServiceImport = serde_json::from_value(manifest.clone()).unwrap();
    assert_eq!(import.spec.type_, ServiceImportType::ClusterSetIp);
    assert_eq!(
        import.spec.session_affinity,
        Some(SessionAffinity::ClientIp)
    );
    assert_eq!(import.spec.ports.len(), 2);
    assert_eq!(import.spec.ports[0].app_protocol.as_deref(), Some("http"));
    assert_eq!(import.spec.ports[1].port, 9090);
    assert_eq!(import.spec.ports[1].app_protocol, None);
    let clusters: Vec<_> = import
        .status
        .as_ref()
        .unwrap()
        .clusters
        .iter()
        .map(|c| c.cluster.as_str())
        .collect();
    assert_eq!(clusters, ["east", "west"]);
    assert_eq!(serde_json::to_value(&import).unwrap(), manifest);

    let headless = yaml_to_json(
        "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\nmetadata: {name: db, namespace: shop}\n\
         spec: {type: Headless, ports: [{port: 5432}]}\n",
    );
    let parsed: ServiceImport = serde_json::from_value(headless.clone()).unwrap();
    assert_eq!(parsed.spec.type_, ServiceImportType::Headless);
    assert!(parsed.spec.ips.is_empty() && parsed.status.is_none());
    assert_eq!(serde_json::to_value(&parsed).unwrap(), headless);
}

#[test]
fn service_import_rejects_bad_input_with_errors() {
    use meridian_crds::mcs::ServiceImport;
    let base = |spec: Value| {
        json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
               "metadata": {"name": "x"}, "spec": spec})
    };
    for bad in [
        base(json!({"type": "LoadBalancer", "ports": []})),
        base(json!({"type": "Headless"})),
        base(json!({"type": "Headless", "ports": [{"name": "p"}]})),
        base(json!({"type": "Headless", "ports": [{"port": "eighty"}]})),
    ] {
        assert!(
            serde_json::from_value::<ServiceImport>(bad.clone()).is_err(),
            "accepted {bad}"
        );
    }
}

#[test]
fn service_export_round_trips_with_and_without_spec() {
    use meridian_crds::mcs::{ServiceExport, ServiceExportSpec, condition};
    // What `kubectl apply` of an upstream-style manifest stores: no spec at all.
    let manifest = yaml_to_json(
        r#"
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata:
  name: checkout
  namespace: shop
  generation: 1
status:
  conditions:
    - type: Valid
      status: "True"
      reason: ServiceFound
      message: Service shop/checkout exists
      lastTransitionTime: "2025-11-25T14:00:00Z"
      observedGeneration: 1
    - type: Conflict
      status: "False"
      reason: NoConflicts
      message: ""
      lastTransitionTime: "2025-11-25T14:00:01Z"
"#,
    );
    let export: ServiceExport = serde_json::from_value(manifest.clone()).unwrap();
    assert_eq!(export.spec, ServiceExportSpec {});
    let conds = &export.status.as_ref().unwrap().conditions;
    assert_eq!(conds[0].type_, condition::VALID);
    assert_eq!(conds[0].observed_generation, Some(1));
    assert_eq!(conds[1].type_, condition::CONFLICT);
    // We always write an (empty) spec; everything else survives unchanged.
    let mut expected = manifest.clone();
    expected["spec"] = json!({});
    assert_eq!(serde_json::to_value(&export).unwrap(), expected);

    for spec in [json!({}), Value::Null, json!({"futureField": [1, 2]})] {
        let mut m = manifest.clone();
        m["spec"] = spec.clone();
        let parsed: ServiceExport = serde_json::from_value(m).unwrap();
        assert_eq!(parsed, export, "spec {spec}");
    }
    // Also through the YAML path kubectl users take.
    let from_yaml: ServiceExport = serde_yaml::from_str(
        "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {name: a}\n",
    )
    .unwrap();
    assert_eq!(from_yaml.spec, ServiceExportSpec {});
    assert!(from_yaml.status.is_none());

    let wrong: Result<ServiceExport, _> = serde_json::from_value(json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
        "metadata": {"name": "a"}, "spec": "nope"}));
    assert!(wrong.is_err(), "a string spec must be rejected");
}

// ---- rendering and files ----

#[test]
fn render_yaml_is_a_parseable_multi_doc_stream() {
    let crds = all_crds();
    let yaml = render_yaml(&crds).unwrap();
    assert_eq!(
        yaml.matches("\n---\n").count() + 1,
        crds.len(),
        "one --- per document"
    );
    assert!(yaml.starts_with("---\n"));
    let parsed: Vec<CustomResourceDefinition> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect();
    assert_eq!(parsed, crds);
    assert_eq!(render_yaml(&[]).unwrap(), "");
}

#[test]
fn render_and_file_name_reject_unnamed_crds() {
    let mut crd = all_crds().remove(0);
    crd.metadata.name = None;
    assert!(matches!(
        render_yaml(&[crd.clone()]),
        Err(Error::Unnamed { .. })
    ));
    assert!(matches!(file_name(&crd), Err(Error::Unnamed { .. })));
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meridian-crds-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn write_files_writes_one_file_per_crd() {
    let dir = scratch_dir("write").join("nested");
    let written = write_files(&dir).unwrap();
    let crds = all_crds();
    assert_eq!(written.len(), crds.len());
    for (path, crd) in written.iter().zip(&crds) {
        let expected_name = format!("{}.{}.yaml", crd.spec.names.plural, crd.spec.group);
        assert_eq!(path.file_name().unwrap().to_str().unwrap(), expected_name);
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(text, render_yaml(std::slice::from_ref(crd)).unwrap());
    }
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn write_files_reports_io_errors() {
    let dir = scratch_dir("ioerr");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let err = write_files(&file).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The checked-in `crds/*.yaml` must equal what the code generates. With `UPDATE_CRDS=1`
/// the files are rewritten (and stale ones removed) instead.
#[test]
fn checked_in_yaml_matches_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let hint =
        "run `cargo run -- crds --write crds/` or `UPDATE_CRDS=1 cargo test -p meridian-crds`";
    let on_disk: BTreeSet<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    let crds = all_crds();
    let expected: BTreeSet<PathBuf> = crds
        .iter()
        .map(|c| dir.join(file_name(c).unwrap()))
        .collect();

    if std::env::var_os("UPDATE_CRDS").is_some_and(|v| v != "0" && !v.is_empty()) {
        for stale in on_disk.difference(&expected) {
            std::fs::remove_file(stale).unwrap();
        }
        write_files(dir).unwrap();
        return;
    }

    let mut problems = Vec::new();
    for stale in on_disk.difference(&expected) {
        problems.push(format!(
            "{} is not generated by the code any more",
            stale.display()
        ));
    }
    for crd in &crds {
        let path = dir.join(file_name(crd).unwrap());
        let want = render_yaml(std::slice::from_ref(crd)).unwrap();
        match std::fs::read_to_string(&path) {
            Ok(have) if have == want => {}
            Ok(_) => problems.push(format!("{} differs from the code", path.display())),
            Err(e) => problems.push(format!("{} cannot be read: {e}", path.display())),
        }
    }
    assert!(
        problems.is_empty(),
        "CRD YAML drifted from the Rust types:\n  {}\n{hint}",
        problems.join("\n  ")
    );
}

// ---- validation: no nulls, Gateway API rules and defaults ----

/// Every schema node below `s`, with its path.
fn each_node<'a>(s: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    out.push((path.clone(), s));
    if let Some(props) = s["properties"].as_object() {
        for (k, v) in props {
            each_node(v, format!("{path}.{k}"), out);
        }
    }
    if s["items"].is_object() {
        each_node(&s["items"], format!("{path}[]"), out);
    }
    if s["additionalProperties"].is_object() {
        each_node(&s["additionalProperties"], format!("{path}{{*}}"), out);
    }
    for junction in ["allOf", "anyOf", "oneOf"] {
        for (i, sub) in s[junction].as_array().into_iter().flatten().enumerate() {
            each_node(sub, format!("{path}.{junction}[{i}]"), out);
        }
    }
}

#[test]
fn no_enum_has_null_and_nothing_is_nullable() {
    let mut checked_enums = 0;
    for crd in all_crds() {
        for v in &crd.spec.versions {
            let schema = schema_of(&crd, &v.name);
            let mut nodes = Vec::new();
            each_node(&schema, String::new(), &mut nodes);
            for (path, node) in nodes {
                let where_ = format!("{} {} {path}", crd.spec.names.kind, v.name);
                if let Some(values) = node.get("enum") {
                    let values = values.as_array().unwrap();
                    assert!(!values.is_empty(), "{where_}: empty enum");
                    assert!(!values.iter().any(Value::is_null), "{where_}: null in enum");
                    // An enum must agree with the node's type (what a real server checks).
                    let ty = node["type"].as_str().unwrap();
                    for value in values {
                        let ok = match ty {
                            "string" => value.is_string(),
                            "integer" => value.is_i64(),
                            _ => true,
                        };
                        assert!(ok, "{where_}: enum value {value} is not a {ty}");
                    }
                    checked_enums += 1;
                }
                assert!(node.get("nullable").is_none(), "{where_}: nullable");
            }
        }
    }
    assert!(checked_enums > 20, "walked only {checked_enums} enums");
}

#[test]
fn every_validation_path_resolves() {
    let misses = meridian_crds::schema_edit_misses();
    assert!(misses.is_empty(), "{misses:#?}");
}

fn rules_at(schema: &Value, path: &str) -> Vec<(String, String)> {
    let n = if path.is_empty() {
        schema
    } else {
        node(schema, path)
    };
    n["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["rule"].as_str().unwrap().to_string(),
                r["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn has_rule(schema: &Value, path: &str, rule_part: &str) -> bool {
    rules_at(schema, path)
        .iter()
        .any(|(r, _)| r.contains(rule_part))
}

#[test]
fn gateway_has_standard_validation_and_defaults() {
    let crd = by_kind("Gateway");
    for v in ["v1", "v1beta1"] {
        let s = schema_of(&crd, v);
        let listeners = node(&s, "spec.listeners");
        assert_eq!(listeners["minItems"], 1);
        assert_eq!(listeners["maxItems"], 64);
        for part in [
            "['HTTP', 'TCP', 'UDP'] ? !has(l.tls)",
            "l.tls.mode == 'Terminate'",
            "l.protocol == 'TLS' ? has(l.tls)",
            "['TCP', 'UDP'] ? !has(l.hostname)",
            "self.exists_one(b, a.name == b.name)",
            "a.port == b.port && a.protocol == b.protocol",
        ] {
            assert!(has_rule(&s, "spec.listeners", part), "{v}: no rule {part}");
        }
        let port = node(&s, "spec.listeners[].port");
        assert_eq!(
            (port["minimum"].as_f64(), port["maximum"].as_f64()),
            (Some(1.0), Some(65535.0))
        );
        let name = node(&s, "spec.listeners[].name");
        assert_eq!(name["maxLength"], 253);
        assert!(name["pattern"].as_str().unwrap().starts_with("^[a-z0-9]"));
        assert!(
            node(&s, "spec.listeners[].hostname")["pattern"]
                .as_str()
                .unwrap()
                .contains(r"(\*\.)?")
        );
        assert_eq!(
            node(&s, "spec.listeners[].allowedRoutes")["default"],
            json!({"namespaces": {"from": "Same"}})
        );
        assert_eq!(
            node(&s, "spec.listeners[].allowedRoutes.namespaces.from")["default"],
            "Same"
        );
        assert_eq!(
            node(&s, "spec.listeners[].allowedRoutes.kinds")["maxItems"],
            8
        );
        assert_eq!(
            node(&s, "spec.listeners[].allowedRoutes.kinds[].group")["default"],
            "gateway.networking.k8s.io"
        );
        assert_eq!(
            node(&s, "spec.listeners[].tls.mode")["default"],
            "Terminate"
        );
        assert_eq!(
            node(&s, "spec.listeners[].tls.certificateRefs[].kind")["default"],
            "Secret"
        );
        assert_eq!(
            node(&s, "spec.listeners[].tls.certificateRefs[].group")["default"],
            ""
        );
        assert_eq!(node(&s, "spec.addresses")["maxItems"], 16);
        assert_eq!(node(&s, "spec.addresses[].type")["default"], "IPAddress");
        assert_eq!(node(&s, "spec.gatewayClassName")["maxLength"], 253);
        assert_eq!(node(&s, "status.conditions")["maxItems"], 8);
        assert_eq!(
            node(&s, "status.conditions[].status")["enum"],
            json!(["True", "False", "Unknown"])
        );
    }
}

#[test]
fn http_route_has_standard_validation_and_defaults() {
    let s = schema_of(&by_kind("HTTPRoute"), "v1");
    assert_eq!(node(&s, "spec.parentRefs")["maxItems"], 32);
    assert!(has_rule(&s, "spec.parentRefs", "sectionName"));
    assert_eq!(
        node(&s, "spec.parentRefs[].group")["default"],
        "gateway.networking.k8s.io"
    );
    assert_eq!(node(&s, "spec.parentRefs[].kind")["default"], "Gateway");
    assert_eq!(node(&s, "spec.hostnames")["maxItems"], 16);
    let rules = node(&s, "spec.rules");
    assert_eq!(rules["maxItems"], 16);
    assert_eq!(
        rules["default"],
        json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}])
    );
    assert!(has_rule(&s, "spec.rules", "<= 128"));
    assert!(has_rule(&s, "spec.rules[]", "f.type == 'RequestRedirect'"));
    assert!(has_rule(&s, "spec.rules[]", "ReplacePrefixMatch"));
    assert_eq!(node(&s, "spec.rules[].matches")["maxItems"], 64);
    assert_eq!(
        node(&s, "spec.rules[].matches[].path")["default"],
        json!({"type": "PathPrefix", "value": "/"})
    );
    assert_eq!(
        node(&s, "spec.rules[].matches[].path.type")["default"],
        "PathPrefix"
    );
    assert_eq!(
        node(&s, "spec.rules[].matches[].path.value")["maxLength"],
        1024
    );
    assert!(has_rule(
        &s,
        "spec.rules[].matches[].path",
        "startsWith('/')"
    ));
    assert_eq!(node(&s, "spec.rules[].matches[].headers")["maxItems"], 16);
    assert_eq!(
        node(&s, "spec.rules[].matches[].headers")["x-kubernetes-list-type"],
        "map"
    );
    assert_eq!(
        node(&s, "spec.rules[].matches[].headers[].type")["default"],
        "Exact"
    );
    assert_eq!(
        node(&s, "spec.rules[].matches[].headers[].name")["maxLength"],
        256
    );
    for filters in ["spec.rules[].filters", "spec.rules[].backendRefs[].filters"] {
        assert_eq!(node(&s, filters)["maxItems"], 16);
        assert!(has_rule(&s, filters, "f.type == 'URLRewrite'"), "{filters}");
        assert!(
            has_rule(&s, filters, "'RequestHeaderModifier').size() <= 1"),
            "{filters}"
        );
        assert!(has_rule(
            &s,
            &format!("{filters}[]"),
            "has(self.requestRedirect)"
        ));
    }
    assert!(has_rule(
        &s,
        "spec.rules[].filters",
        "'RequestRedirect').size() <= 1"
    ));
    let backend = node(&s, "spec.rules[].backendRefs[]");
    assert_eq!(node(&s, "spec.rules[].backendRefs")["maxItems"], 16);
    assert_eq!(backend["properties"]["weight"]["default"], 1);
    assert_eq!(
        backend["properties"]["weight"]["minimum"].as_f64(),
        Some(0.0)
    );
    assert_eq!(
        backend["properties"]["weight"]["maximum"].as_f64(),
        Some(1_000_000.0)
    );
    assert_eq!(backend["properties"]["group"]["default"], "");
    assert_eq!(backend["properties"]["kind"]["default"], "Service");
    assert!(has_rule(&s, "spec.rules[].backendRefs[]", "has(self.port)"));
    let redirect = node(&s, "spec.rules[].filters[].requestRedirect");
    assert_eq!(redirect["properties"]["statusCode"]["default"], 302);
    assert_eq!(
        redirect["properties"]["statusCode"]["enum"],
        json!([301, 302, 303, 307, 308])
    );
    assert_eq!(
        redirect["properties"]["scheme"]["enum"],
        json!(["http", "https"])
    );
    assert!(has_rule(
        &s,
        "spec.rules[].timeouts",
        "duration(self.backendRequest)"
    ));
    assert_eq!(node(&s, "status.parents")["maxItems"], 32);
    assert_eq!(node(&s, "status.parents[].conditions")["minItems"], 1);
}

#[test]
fn grpc_route_has_standard_validation_and_defaults() {
    let s = schema_of(&by_kind("GRPCRoute"), "v1");
    assert_eq!(node(&s, "spec.parentRefs")["maxItems"], 32);
    assert_eq!(node(&s, "spec.parentRefs[].kind")["default"], "Gateway");
    assert_eq!(node(&s, "spec.hostnames")["maxItems"], 16);
    let rules = node(&s, "spec.rules");
    assert_eq!(rules["maxItems"], 16);
    // No default rule: an omitted list matches every call (the controller's job).
    assert!(rules.get("default").is_none(), "{rules}");
    assert!(has_rule(&s, "spec.rules", "<= 128"));
    assert!(has_rule(&s, "spec.rules", "exists_one"));
    assert_eq!(node(&s, "spec.rules[].matches")["maxItems"], 64);
    let method = "spec.rules[].matches[].method";
    assert_eq!(node(&s, &format!("{method}.type"))["default"], "Exact");
    assert_eq!(node(&s, &format!("{method}.service"))["maxLength"], 1024);
    assert_eq!(node(&s, &format!("{method}.method"))["maxLength"], 1024);
    assert!(has_rule(
        &s,
        method,
        "has(self.service) || has(self.method)"
    ));
    assert!(has_rule(&s, method, "self.service.matches("));
    assert!(has_rule(&s, method, "self.method.matches("));
    assert_eq!(node(&s, "spec.rules[].matches[].headers")["maxItems"], 16);
    assert_eq!(
        node(&s, "spec.rules[].matches[].headers[].value")["maxLength"],
        4096
    );
    assert!(has_rule(
        &s,
        "spec.rules[].filters",
        "f.type == 'RequestHeaderModifier'"
    ));
    assert!(has_rule(&s, "spec.rules[].filters[]", "requestMirror"));
    assert_eq!(node(&s, "spec.rules[].backendRefs[].weight")["default"], 1);
    assert_eq!(
        node(&s, "spec.rules[].backendRefs[].weight")["maximum"],
        1_000_000.0
    );
    assert_eq!(node(&s, "status.parents")["maxItems"], 32);
}

#[test]
fn tls_route_has_standard_validation_and_defaults() {
    let s = schema_of(&by_kind("TLSRoute"), "v1");
    let required = |path: &str| -> Vec<String> {
        serde_json::from_value(node(&s, path)["required"].clone()).unwrap()
    };
    assert!(required("spec").contains(&"hostnames".to_string()));
    assert!(required("spec").contains(&"rules".to_string()));
    assert_eq!(node(&s, "spec.parentRefs")["maxItems"], 32);
    assert_eq!(node(&s, "spec.parentRefs[].kind")["default"], "Gateway");
    assert!(has_rule(&s, "spec.parentRefs", "exists_one"));
    let hostnames = node(&s, "spec.hostnames");
    assert_eq!(hostnames["minItems"], 1);
    assert_eq!(hostnames["maxItems"], 16);
    assert!(has_rule(&s, "spec.hostnames[]", "!isIP(self)"));
    // The same DNS-name-or-leading-wildcard pattern as HTTPRoute's hostnames.
    let http = schema_of(&by_kind("HTTPRoute"), "v1");
    assert_eq!(
        node(&s, "spec.hostnames[]")["pattern"],
        node(&http, "spec.hostnames[]")["pattern"]
    );
    // v1: exactly one rule, 1..16 backends, each a Service with a port by default.
    let rules = node(&s, "spec.rules");
    assert_eq!(rules["minItems"], 1);
    assert_eq!(rules["maxItems"], 1);
    let backends = node(&s, "spec.rules[].backendRefs");
    assert_eq!(backends["minItems"], 1);
    assert_eq!(backends["maxItems"], 16);
    assert_eq!(
        node(&s, "spec.rules[].backendRefs[].kind")["default"],
        "Service"
    );
    assert!(has_rule(&s, "spec.rules[].backendRefs[]", "has(self.port)"));
    assert_eq!(node(&s, "spec.rules[].backendRefs[].weight")["default"], 1);
    assert_eq!(
        node(&s, "spec.rules[].backendRefs[].weight")["maximum"],
        1_000_000.0
    );
    assert_eq!(node(&s, "status.parents")["maxItems"], 32);
    assert_eq!(node(&s, "status.parents[].conditions")["minItems"], 1);
}

#[test]
fn listener_set_has_standard_validation_and_defaults() {
    let s = schema_of(&by_kind("ListenerSet"), "v1");
    let required = |path: &str| -> Vec<String> {
        serde_json::from_value(node(&s, path)["required"].clone()).unwrap()
    };
    assert!(required("spec").contains(&"parentRef".to_string()));
    assert!(required("spec").contains(&"listeners".to_string()));
    assert_eq!(node(&s, "spec.parentRef.kind")["default"], "Gateway");
    assert_eq!(
        node(&s, "spec.parentRef.group")["default"],
        "gateway.networking.k8s.io"
    );
    let listeners = node(&s, "spec.listeners");
    assert_eq!(listeners["minItems"], 1);
    assert_eq!(listeners["maxItems"], 64);
    assert!(has_rule(&s, "spec.listeners", "a.name == b.name"));
    assert!(has_rule(&s, "spec.listeners", "a.port == b.port"));
    // The same listener field checks as a Gateway's.
    let gw = schema_of(&by_kind("Gateway"), "v1");
    for f in ["name", "hostname", "port", "protocol"] {
        let path = format!("spec.listeners[].{f}");
        for check in ["pattern", "minLength", "maxLength", "minimum", "maximum"] {
            assert_eq!(
                node(&s, &path)[check],
                node(&gw, &path)[check],
                "{path} {check}"
            );
        }
    }
    assert!(node(&s, "spec.listeners[].hostname")["pattern"].is_string());
    assert_eq!(node(&s, "spec.listeners[].port")["maximum"], 65535.0);
    assert_eq!(
        node(&s, "spec.listeners[].allowedRoutes.namespaces.from")["default"],
        "Same"
    );
    assert_eq!(node(&s, "status.listeners")["maxItems"], 64);
    // The Gateway admits no ListenerSet unless it says so.
    assert_eq!(
        node(&gw, "spec.allowedListeners.namespaces.from")["default"],
        "None"
    );
}

#[test]
fn gateway_class_and_reference_grant_validation() {
    let gc = schema_of(&by_kind("GatewayClass"), "v1");
    let controller = node(&gc, "spec.controllerName");
    assert!(controller["pattern"].as_str().unwrap().contains(r"\/"));
    assert!(has_rule(&gc, "spec.controllerName", "oldSelf"));
    assert_eq!(node(&gc, "spec.description")["maxLength"], 64);
    let rg = schema_of(&by_kind("ReferenceGrant"), "v1");
    for list in ["spec.from", "spec.to"] {
        assert_eq!(node(&rg, list)["minItems"], 1);
        assert_eq!(node(&rg, list)["maxItems"], 16);
    }
    assert_eq!(node(&rg, "spec.from[].namespace")["maxLength"], 63);
    assert_eq!(
        node(&rg, "spec.to[].kind")["pattern"],
        r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
    );
}

#[test]
fn defaults_are_valid_against_their_own_schema_shape() {
    // A real server refuses a CRD whose defaults do not fit the schema (and prunes unknown
    // fields out of them); check the shape of every default we add.
    fn fits(value: &Value, schema: &Value) -> bool {
        match value {
            Value::Object(m) => {
                schema["type"] == "object"
                    && m.iter().all(|(k, v)| fits(v, &schema["properties"][k]))
            }
            Value::Array(a) => {
                schema["type"] == "array" && a.iter().all(|v| fits(v, &schema["items"]))
            }
            Value::String(_) => schema["type"] == "string",
            Value::Number(_) => schema["type"] == "integer" || schema["type"] == "number",
            Value::Bool(_) => schema["type"] == "boolean",
            Value::Null => false,
        }
    }
    let mut seen = 0;
    for crd in gateway_api_crds() {
        let s = schema_of(&crd, "v1");
        let mut nodes = Vec::new();
        each_node(&s, String::new(), &mut nodes);
        for (path, n) in nodes {
            if let Some(d) = n.get("default") {
                assert!(
                    fits(d, n),
                    "{} {path}: default {d} does not fit",
                    crd.spec.names.kind
                );
                seen += 1;
            }
        }
    }
    assert!(seen >= 20, "only {seen} defaults");
}

#[test]
fn backend_tls_policy_has_standard_validation() {
    let crd = by_kind("BackendTLSPolicy");
    assert!(
        crd.spec.versions[0]
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some()),
        "status subresource"
    );
    let s = schema_of(&crd, "v1");
    assert_eq!(node(&s, "spec.targetRefs")["minItems"], 1);
    assert_eq!(node(&s, "spec.targetRefs")["maxItems"], 16);
    assert!(has_rule(&s, "spec.targetRefs[]", "self.kind == 'Service'"));
    assert!(has_rule(&s, "spec.targetRefs", "exists_one"));
    assert_eq!(node(&s, "spec.targetRefs[].sectionName")["maxLength"], 253);
    let required = |path: &str| -> Vec<String> {
        serde_json::from_value(node(&s, path)["required"].clone()).unwrap_or_default()
    };
    assert!(required("spec").contains(&"targetRefs".to_string()));
    assert!(required("spec.validation").contains(&"hostname".to_string()));
    let hostname = node(&s, "spec.validation.hostname");
    assert!(
        !hostname["pattern"].as_str().unwrap().contains(r"\*"),
        "no wildcard"
    );
    assert!(has_rule(&s, "spec.validation.hostname", "isIP"));
    assert!(has_rule(
        &s,
        "spec.validation",
        "!(has(self.caCertificateRefs)"
    ));
    assert!(has_rule(
        &s,
        "spec.validation",
        "|| (has(self.wellKnownCACertificates)"
    ));
    assert_eq!(
        node(&s, "spec.validation.wellKnownCACertificates")["enum"],
        serde_json::json!(["System"])
    );
    assert_eq!(node(&s, "spec.validation.caCertificateRefs")["maxItems"], 8);
    assert_eq!(node(&s, "spec.validation.subjectAltNames")["maxItems"], 5);
    assert!(has_rule(
        &s,
        "spec.validation.subjectAltNames[]",
        "self.type == 'URI'"
    ));
    assert_eq!(node(&s, "status.ancestors")["maxItems"], 16);
    assert_eq!(
        node(&s, "status.ancestors")["x-kubernetes-list-type"],
        "atomic"
    );
    assert_eq!(node(&s, "status.ancestors[].conditions")["minItems"], 1);
}

/// HTTPRoute rules carry the experimental `retry` and `sessionPersistence` fields Meridian
/// implements, in every served version, validated like the experimental schema; the standard
/// fields beside them are unchanged.
#[test]
fn http_route_rules_accept_retry_and_session_persistence() {
    let crd = by_kind("HTTPRoute");
    for version in ["v1", "v1beta1"] {
        let s = schema_of(&crd, version);
        let codes = node(&s, "spec.rules[].retry.codes[]");
        assert_eq!(
            (codes["minimum"].as_f64(), codes["maximum"].as_f64()),
            (Some(400.0), Some(599.0))
        );
        assert_eq!(
            node(&s, "spec.rules[].retry.attempts")["minimum"].as_f64(),
            Some(0.0)
        );
        assert!(node(&s, "spec.rules[].retry.backoff")["pattern"].is_string());
        assert_eq!(
            node(&s, "spec.rules[].sessionPersistence.type")["enum"],
            json!(["Cookie", "Header"])
        );
        assert_eq!(
            node(
                &s,
                "spec.rules[].sessionPersistence.cookieConfig.lifetimeType"
            )["enum"],
            json!(["Permanent", "Session"])
        );
        let rules = node(&s, "spec.rules[].sessionPersistence")["x-kubernetes-validations"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(rules, 2, "{version}");
        assert!(node(&s, "spec.rules[].timeouts.request").is_object());
    }
}
