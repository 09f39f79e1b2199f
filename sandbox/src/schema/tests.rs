#![allow(clippy::unwrap_used)]
use super::*;
use serde_json::json;
use std::path::PathBuf;

fn write(mode: WriteMode, fv: FieldValidation) -> Write<'static> {
    Write {
        kind: "Widget",
        group: "example.com",
        version: "v1",
        status_subresource: true,
        mode,
        field_validation: fv,
    }
}

fn main_write() -> Write<'static> {
    write(WriteMode::Main, FieldValidation::Warn)
}

fn widget_schema() -> Node {
    Node::compile(
        &json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                        "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                        "name": {"type": "string", "maxLength": 5, "minLength": 2, "pattern": "^[a-z]+$"},
                        "tags": {"type": "array", "maxItems": 2, "minItems": 1,
                                 "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                        "ports": {"type": "array", "x-kubernetes-list-type": "map",
                                  "x-kubernetes-list-map-keys": ["name"],
                                  "items": {"type": "object", "required": ["name"], "properties": {
                                      "name": {"type": "string"},
                                      "weight": {"type": "integer", "default": 1}}}},
                        "labels": {"type": "object", "maxProperties": 2,
                                   "additionalProperties": {"type": "string", "maxLength": 3}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "nested": {"type": "object", "default": {},
                                   "properties": {"mode": {"type": "string", "default": "auto"}}},
                        "opt": {"type": "string", "nullable": true},
                        "ref": {"type": "object",
                                "x-kubernetes-validations": [
                                    {"rule": "has(self.__namespace__) ? self.__namespace__ != 'kube-system' : true",
                                     "message": "no kube-system"}],
                                "properties": {"namespace": {"type": "string"}}},
                        "address": {"type": "string",
                                    "x-kubernetes-validations": [{"rule": "isIP(self)", "message": "not an IP"}]},
                        "frozen": {"type": "string",
                                   "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "frozen is immutable"}]}
                    },
                    "x-kubernetes-validations": [
                        {"rule": "!has(self.name) || self.name != 'bad'", "message": "name may not be bad"}
                    ]
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
            }
        }),
        "",
    )
}

fn widget(spec: Value) -> Value {
    json!({"apiVersion": "example.com/v1", "kind": "Widget",
           "metadata": {"name": "w", "namespace": "default"}, "spec": spec})
}

fn admit_err(obj: Value) -> ApiError {
    let mut obj = obj;
    admit(&widget_schema(), &main_write(), None, &mut obj).unwrap_err()
}

fn causes(e: &ApiError) -> Vec<(String, String, String)> {
    e.details.as_ref().unwrap()["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["reason"].as_str().unwrap().to_string(),
                c["field"].as_str().unwrap().to_string(),
                c["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_valid_object_is_defaulted_and_accepted() {
    let mut obj = widget(json!({"size": 3, "ports": [{"name": "a"}], "nested": null}));
    admit(&widget_schema(), &main_write(), None, &mut obj).unwrap();
    assert_eq!(obj["spec"]["color"], "red");
    assert_eq!(obj["spec"]["ports"][0]["weight"], 1);
    // A non-nullable null with a default gets the default, whose own fields are defaulted too.
    assert_eq!(obj["spec"]["nested"], json!({"mode": "auto"}));
    assert_eq!(obj["metadata"]["name"], "w", "metadata is kept");
}

#[test]
fn the_422_has_the_real_servers_shape() {
    let e = admit_err(widget(json!({"size": 0})));
    assert_eq!(e.code, 422);
    let status = e.to_status();
    assert_eq!(
        status["message"],
        "Widget.example.com \"w\" is invalid: spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"
    );
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(status["status"], "Failure");
    assert_eq!(
        status["details"],
        json!({"name": "w", "group": "example.com", "kind": "Widget", "causes": [{
            "reason": "FieldValueInvalid",
            "message": "Invalid value: 0: spec.size in body should be greater than or equal to 1",
            "field": "spec.size"}]})
    );
}

#[test]
fn each_kind_of_schema_error_is_worded_like_the_real_server() {
    let e = admit_err(widget(json!({
        "size": 11, "color": "green", "name": "Toolong", "tags": ["a", "a", "b"],
        "ports": [{"name": "x"}, {"name": "x"}], "labels": {"a": "1", "b": "1", "c": "long"}
    })));
    let got = causes(&e);
    let want = [
        (
            "FieldValueInvalid",
            "spec.size",
            "Invalid value: 11: spec.size in body should be less than or equal to 10",
        ),
        (
            "FieldValueNotSupported",
            "spec.color",
            "Unsupported value: \"green\": supported values: \"red\", \"blue\"",
        ),
        (
            "FieldValueInvalid",
            "spec.name",
            "Invalid value: \"Toolong\": spec.name in body should be at most 5 chars long",
        ),
        (
            "FieldValueInvalid",
            "spec.name",
            "Invalid value: \"Toolong\": spec.name in body should match '^[a-z]+$'",
        ),
        (
            "FieldValueTooMany",
            "spec.tags",
            "Too many: 3: must have at most 2 items",
        ),
        (
            "FieldValueDuplicate",
            "spec.tags[1]",
            "Duplicate value: \"a\"",
        ),
        (
            "FieldValueDuplicate",
            "spec.ports[1]",
            "Duplicate value: {\"name\":\"x\"}",
        ),
        (
            "FieldValueTooMany",
            "spec.labels",
            "Too many: 3: must have at most 2 items",
        ),
        (
            "FieldValueInvalid",
            "spec.labels[c]",
            "Invalid value: \"long\": spec.labels[c] in body should be at most 3 chars long",
        ),
    ];
    for (reason, field, message) in want {
        assert!(
            got.iter()
                .any(|(r, f, m)| r == reason && f == field && m == message),
            "missing {field}: {message}\n got {got:#?}"
        );
    }
    assert!(
        e.message
            .starts_with("Widget.example.com \"w\" is invalid: ["),
        "{}",
        e.message
    );

    let e = admit_err(widget(json!({"color": "red", "name": "a", "tags": []})));
    let got = causes(&e);
    assert!(got.contains(&(
        "FieldValueRequired".into(),
        "spec.size".into(),
        "Required value".into()
    )));
    assert!(
        got.iter()
            .any(|(_, f, m)| f == "spec.name" && m.ends_with("should be at least 2 chars long"))
    );
    assert!(
        got.iter()
            .any(|(_, f, m)| f == "spec.tags" && m.ends_with("should have at least 1 items"))
    );

    let e = admit_err(widget(json!({"size": "three", "ports": [null]})));
    let got = causes(&e);
    assert!(
        got.contains(&(
            "FieldValueTypeInvalid".into(),
            "spec.size".into(),
            "Invalid value: \"three\": spec.size in body must be of type integer: \"string\""
                .into()
        )),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|(r, f, _)| r == "FieldValueTypeInvalid" && f == "spec.ports[0]")
    );
}

#[test]
fn unknown_fields_are_pruned_or_refused_under_strict() {
    let schema = widget_schema();
    let obj = widget(
        json!({"size": 1, "bogus": 1, "ports": [{"name": "a", "extra": true}],
                            "free": {"anything": {"goes": 1}}}),
    );
    let mut pruned = obj.clone();
    admit(&schema, &main_write(), None, &mut pruned).unwrap();
    assert!(pruned["spec"].get("bogus").is_none());
    assert!(pruned["spec"]["ports"][0].get("extra").is_none());
    assert_eq!(pruned["spec"]["free"], json!({"anything": {"goes": 1}}));

    let mut strict = obj.clone();
    let e = admit(
        &schema,
        &write(WriteMode::Main, FieldValidation::Strict),
        None,
        &mut strict,
    )
    .unwrap_err();
    assert_eq!((e.code, e.reason), (400, "BadRequest"));
    assert_eq!(
        e.message,
        "Widget in version \"v1\" cannot be handled as a Widget: strict decoding error: unknown field \"spec.bogus\", unknown field \"spec.ports[0].extra\""
    );
    assert_eq!(strict, obj, "a refused object is left alone");

    assert!(FieldValidation::from_query(Some("Loose")).is_err());
    assert_eq!(
        FieldValidation::from_query(None).unwrap(),
        FieldValidation::Warn
    );
}

#[test]
fn main_writes_skip_status_and_status_writes_check_only_status() {
    let schema = widget_schema();
    let mut bad_status = widget(json!({"size": 1}));
    bad_status["status"] = json!({"ready": "yes"});
    admit(&schema, &main_write(), None, &mut bad_status.clone()).unwrap();
    let e = admit(
        &schema,
        &write(WriteMode::Status, FieldValidation::Warn),
        None,
        &mut bad_status,
    )
    .unwrap_err();
    assert_eq!(causes(&e)[0].1, "status.ready");

    let mut bad_spec = widget(json!({"size": 100}));
    bad_spec["status"] = json!({"ready": true});
    admit(
        &schema,
        &write(WriteMode::Status, FieldValidation::Warn),
        None,
        &mut bad_spec,
    )
    .unwrap();
}

#[test]
fn a_status_update_admits_its_status_as_a_whole_walk_would_and_nothing_else() {
    let schema = Node::compile(
        &json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "size": {"type": "integer"}, "color": {"type": "string", "default": "red"}}},
            "status": {"type": "object", "properties": {
                "phase": {"type": "string", "default": "Pending"},
                "parents": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "weight": {"type": "integer", "default": 1}}}}}}}}),
        "",
    );
    let old = widget(json!({"size": 3, "color": "red"}));
    let whole_walk = |obj: &Value| {
        let mut obj = obj.clone();
        defaults::prune(
            &mut obj,
            &schema,
            &defaults::Up::Root,
            true,
            &mut Vec::new(),
        );
        defaults::apply(&mut obj, &schema);
        obj
    };
    let status_write = write(WriteMode::Status, FieldValidation::Warn);
    for status in [
        json!({"parents": [{"name": "a", "extra": true}], "bogus": 1}),
        json!({"phase": "Ready"}),
        Value::Null,
    ] {
        let mut cand = old.clone();
        cand["status"] = status.clone();
        let expected = whole_walk(&cand);
        admit(&schema, &status_write, Some(&old), &mut cand).unwrap();
        assert_eq!(cand, expected, "status {status}");
    }
    let mut cand = old.clone();
    cand["status"] = json!({"parents": [{"name": "a", "extra": true}]});
    admit(&schema, &status_write, Some(&old), &mut cand).unwrap();
    assert_eq!(
        cand["status"],
        json!({"phase": "Pending", "parents": [{"name": "a", "weight": 1}]})
    );
    // Only the status is walked: the spec stays as stored (admitted when it was written).
    let mut stored_long_ago = old.clone();
    stored_long_ago["spec"]["retired"] = json!(true);
    let mut cand = stored_long_ago.clone();
    cand["status"] = json!({"phase": "Ready"});
    admit(&schema, &status_write, Some(&stored_long_ago), &mut cand).unwrap();
    assert_eq!(cand["spec"], stored_long_ago["spec"]);
    // Unknown status fields are still refused under Strict, named by their path.
    let mut cand = old.clone();
    cand["status"] = json!({"bogus": 1});
    let e = admit(
        &schema,
        &write(WriteMode::Status, FieldValidation::Strict),
        Some(&old),
        &mut cand,
    )
    .unwrap_err();
    assert!(
        e.message.ends_with("unknown field \"status.bogus\""),
        "{}",
        e.message
    );
}

#[test]
fn updates_ratchet_unchanged_invalid_values() {
    let schema = widget_schema();
    // Stored before the rule existed: size 100 is out of range.
    let old = widget(json!({"size": 100, "color": "red"}));
    let mut relabelled = old.clone();
    relabelled["metadata"]["labels"] = json!({"a": "b"});
    admit(&schema, &main_write(), Some(&old), &mut relabelled).unwrap();
    let mut changed = old.clone();
    changed["spec"]["size"] = json!(200);
    assert!(admit(&schema, &main_write(), Some(&old), &mut changed).is_err());
}

#[test]
fn cel_rules_escape_keywords_and_use_kubernetes_functions() {
    let e = admit_err(widget(json!({"size": 1, "name": "bad"})));
    assert_eq!(
        causes(&e),
        vec![(
            "FieldValueInvalid".into(),
            "spec".into(),
            "Invalid value: \"object\": name may not be bad".into()
        )]
    );
    let e = admit_err(widget(
        json!({"size": 1, "ref": {"namespace": "kube-system"}}),
    ));
    assert_eq!(causes(&e)[0].1, "spec.ref");
    assert_eq!(causes(&e)[0].2, "Invalid value: \"object\": no kube-system");
    let e = admit_err(widget(json!({"size": 1, "address": "10.0.0.300"})));
    assert_eq!(causes(&e)[0].2, "Invalid value: \"string\": not an IP");
    let mut ok = widget(json!({"size": 1, "address": "fd00::1", "ref": {"namespace": "apps"}}));
    admit(&widget_schema(), &main_write(), None, &mut ok).unwrap();
    // CEL runs only once the schema checks pass.
    let e = admit_err(widget(json!({"size": 0, "name": "bad"})));
    assert_eq!(causes(&e).len(), 1);
}

#[test]
fn transition_rules_run_on_updates_only() {
    let schema = widget_schema();
    let old = widget(json!({"size": 1, "frozen": "a"}));
    let mut created = old.clone();
    admit(&schema, &main_write(), None, &mut created).unwrap();
    let mut same = old.clone();
    admit(&schema, &main_write(), Some(&old), &mut same).unwrap();
    let mut changed = old.clone();
    changed["spec"]["frozen"] = json!("b");
    let e = admit(&schema, &main_write(), Some(&old), &mut changed).unwrap_err();
    assert_eq!(
        causes(&e)[0].2,
        "Invalid value: \"string\": frozen is immutable"
    );
}

// ---- the CRDs Meridian ships ----

fn shipped(name: &str) -> Option<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../crds/{name}.yaml"));
    let text = std::fs::read_to_string(&path).ok()?;
    serde_yaml::from_str(&text).ok()
}

fn shipped_schema(name: &str) -> Option<Arc<Node>> {
    let crd = shipped(name)?;
    Schemas::from_crd(&crd).get("v1").cloned()
}

fn gw_write(kind: &'static str) -> Write<'static> {
    Write {
        kind,
        group: "gateway.networking.k8s.io",
        version: "v1",
        status_subresource: true,
        mode: WriteMode::Main,
        field_validation: FieldValidation::Strict,
    }
}

/// Every rule in every shipped CRD compiles with the `cel` crate.
#[test]
fn every_shipped_rule_compiles() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("SKIPPED: no {}", dir.display());
        return;
    };
    fn rules(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, sub) in m {
                    if k == "x-kubernetes-validations" {
                        for r in sub.as_array().into_iter().flatten() {
                            out.push(r["rule"].as_str().unwrap().to_string());
                        }
                    } else {
                        rules(sub, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| rules(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    for e in entries {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let v: Value = serde_yaml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            rules(&v, &mut all);
        }
    }
    assert!(all.len() > 30, "only {} rules", all.len());
    for r in &all {
        cel::Rule::compile(r, None, None).unwrap_or_else(|e| panic!("{r}: {e}"));
    }
}

fn full_route() -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
    "metadata": {"name": "r", "namespace": "default"},
    "spec": {
        "parentRefs": [{"name": "gw", "sectionName": "http"}, {"name": "gw", "namespace": "other", "sectionName": "b"}],
        "hostnames": ["a.example.com", "*.example.net"],
        "rules": [
            {"name": "one",
             "matches": [{"path": {"type": "PathPrefix", "value": "/v1"},
                          "headers": [{"name": "x-env", "value": "dev"}],
                          "queryParams": [{"name": "q", "value": "1", "type": "Exact"}],
                          "method": "GET"}],
             "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "b.example.com",
                           "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
                         {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                           "set": [{"name": "x-a", "value": "1"}], "remove": ["x-b"]}},
                         {"type": "RequestMirror", "requestMirror": {
                           "backendRef": {"name": "shadow", "port": 80}, "fraction": {"numerator": 1}}}],
             "backendRefs": [{"name": "svc", "port": 8080, "weight": 5,
                              "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "x-c", "value": "2"}]}}]}],
             "timeouts": {"request": "10s", "backendRequest": "2s"}},
            {"matches": [{"path": {"type": "Exact", "value": "/old"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301,
                           "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}}]},
            {"matches": [{"path": {"type": "RegularExpression", "value": "/r/[0-9]+"}}],
             "backendRefs": [{"name": "svc", "port": 80}]}
        ]
    }})
}

#[test]
fn shipped_http_route_rules_evaluate_and_accept_a_rich_route() {
    let Some(schema) = shipped_schema("httproutes.gateway.networking.k8s.io") else {
        eprintln!("SKIPPED: no shipped HTTPRoute CRD");
        return;
    };
    let mut route = full_route();
    admit(&schema, &gw_write("HTTPRoute"), None, &mut route).unwrap();
    let outcome = cel::check(&schema, &route, None, validate::Scope::All);
    assert!(outcome.failures.is_empty(), "{:#?}", outcome.failures);
    assert!(outcome.errors.is_empty());
    // Defaults landed.
    assert_eq!(
        route["spec"]["parentRefs"][0]["group"],
        "gateway.networking.k8s.io"
    );
    assert_eq!(route["spec"]["parentRefs"][0]["kind"], "Gateway");
    assert_eq!(
        route["spec"]["rules"][0]["backendRefs"][0]["kind"],
        "Service"
    );
    assert_eq!(route["spec"]["rules"][0]["backendRefs"][0]["group"], "");
    assert_eq!(
        route["spec"]["rules"][0]["matches"][0]["headers"][0]["type"],
        "Exact"
    );
    assert_eq!(
        route["spec"]["rules"][0]["filters"][2]["requestMirror"]["fraction"]["denominator"],
        100
    );
    assert_eq!(
        route["spec"]["rules"][1]["filters"][0]["requestRedirect"]["statusCode"],
        301
    );
    assert_eq!(route["spec"]["rules"][2]["backendRefs"][0]["weight"], 1);

    let mut bare = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "r"}, "spec": {"parentRefs": [{"name": "gw"}]}});
    admit(&schema, &gw_write("HTTPRoute"), None, &mut bare).unwrap();
    assert_eq!(
        bare["spec"]["rules"],
        json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}])
    );
}

/// (mutation of [`full_route`], field of the expected error, text the message contains)
type Case = (fn(&mut Value), &'static str, &'static str);

#[test]
fn shipped_http_route_rules_refuse_what_upstream_refuses() {
    let Some(schema) = shipped_schema("httproutes.gateway.networking.k8s.io") else {
        eprintln!("SKIPPED: no shipped HTTPRoute CRD");
        return;
    };
    let cases: &[Case] = &[
        (
            |r| {
                r["spec"]["rules"][0]["filters"][0] =
                    json!({"type": "RequestRedirect", "requestRedirect": {}})
            },
            "spec.rules[0]",
            "cannot be combined with backendRefs",
        ),
        (
            |r| {
                r["spec"]["rules"][1]["filters"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"type": "URLRewrite", "urlRewrite": {}}))
            },
            "spec.rules[1].filters",
            "RequestRedirect and URLRewrite",
        ),
        (
            |r| {
                r["spec"]["rules"][0]["filters"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"type": "RequestHeaderModifier", "requestHeaderModifier": {}}))
            },
            "spec.rules[0].filters",
            "RequestHeaderModifier filter may appear only once",
        ),
        (
            |r| r["spec"]["rules"][1]["matches"][0]["path"]["value"] = json!("old"),
            "spec.rules[1].matches[0].path",
            "must start with '/'",
        ),
        (
            |r| r["spec"]["rules"][1]["matches"][0]["path"]["value"] = json!("/a//b"),
            "spec.rules[1].matches[0].path",
            "may not contain",
        ),
        (
            |r| {
                r["spec"]["rules"][0]["matches"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"path": {"value": "/x"}}))
            },
            "spec.rules[0]",
            "exactly one match",
        ),
        (
            |r| r["spec"]["rules"][0]["filters"][1]["type"] = json!("ResponseHeaderModifier"),
            "spec.rules[0].filters[1]",
            "requestHeaderModifier must be set exactly",
        ),
        (
            |r| {
                r["spec"]["rules"][0]["backendRefs"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("port");
            },
            "spec.rules[0].backendRefs[0]",
            "port is required",
        ),
        (
            |r| r["spec"]["rules"][0]["timeouts"]["backendRequest"] = json!("20s"),
            "spec.rules[0].timeouts",
            "backendRequest timeout",
        ),
        (
            |r| r["spec"]["parentRefs"][1] = json!({"name": "gw"}),
            "spec.parentRefs",
            "sectionName",
        ),
        (
            |r| r["spec"]["rules"][0]["filters"][2]["requestMirror"]["percent"] = json!(5),
            "spec.rules[0].filters[2].requestMirror",
            "only one of percent and fraction",
        ),
        (
            |r| r["spec"]["rules"][0]["backendRefs"][0]["weight"] = json!(1_000_001),
            "spec.rules[0].backendRefs[0].weight",
            "less than or equal to 1000000",
        ),
        (
            |r| r["spec"]["rules"][1]["filters"][0]["requestRedirect"]["statusCode"] = json!(304),
            "spec.rules[1].filters[0].requestRedirect.statusCode",
            "Unsupported value: 304",
        ),
        (
            |r| r["spec"]["hostnames"][0] = json!("Bad_Host"),
            "spec.hostnames[0]",
            "should match",
        ),
        (
            |r| r["spec"]["rules"][0]["matches"][0]["headers"][0]["name"] = json!("bad header"),
            "spec.rules[0].matches[0].headers[0].name",
            "should match",
        ),
        (
            |r| r["spec"]["rules"][2]["name"] = json!("one"),
            "spec.rules",
            "rule names must be unique",
        ),
    ];
    for (i, (mutate, field, text)) in cases.iter().enumerate() {
        let mut route = full_route();
        mutate(&mut route);
        let e = admit(&schema, &gw_write("HTTPRoute"), None, &mut route)
            .expect_err(&format!("case {i} ({field}) was accepted"));
        let got = causes(&e);
        assert!(
            got.iter().any(|(_, f, m)| f == field && m.contains(text)),
            "case {i}: want {field} ~ {text:?}, got {got:#?}"
        );
    }
    // The route still has 16 rules max and 64 matches per rule; both as Too many.
    let mut route = full_route();
    let rule = route["spec"]["rules"][2].clone();
    route["spec"]["rules"] = json!(vec![rule; 17]);
    let e = admit(&schema, &gw_write("HTTPRoute"), None, &mut route).unwrap_err();
    assert!(causes(&e).contains(&(
        "FieldValueTooMany".into(),
        "spec.rules".into(),
        "Too many: 17: must have at most 16 items".into()
    )));
}

fn gateway(listeners: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": "gw", "namespace": "default"},
           "spec": {"gatewayClassName": "meridian", "listeners": listeners}})
}

#[test]
fn shipped_gateway_rules() {
    let Some(schema) = shipped_schema("gateways.gateway.networking.k8s.io") else {
        eprintln!("SKIPPED: no shipped Gateway CRD");
        return;
    };
    let tls = json!({"certificateRefs": [{"name": "cert"}]});
    let mut ok = gateway(json!([
        {"name": "http", "port": 80, "protocol": "HTTP"},
        {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "a.example.com", "tls": tls},
        {"name": "tls", "port": 8443, "protocol": "TLS", "tls": {"mode": "Passthrough"}}
    ]));
    ok["spec"]["addresses"] =
        json!([{"value": "10.0.0.1"}, {"type": "Hostname", "value": "gw.example.com"}]);
    admit(&schema, &gw_write("Gateway"), None, &mut ok).unwrap();
    let outcome = cel::check(&schema, &ok, None, validate::Scope::All);
    assert!(outcome.failures.is_empty(), "{:#?}", outcome.failures);
    let l = &ok["spec"]["listeners"];
    assert_eq!(
        l[0]["allowedRoutes"],
        json!({"namespaces": {"from": "Same"}})
    );
    assert_eq!(l[1]["tls"]["mode"], "Terminate");
    assert_eq!(
        l[1]["tls"]["certificateRefs"][0],
        json!({"group": "", "kind": "Secret", "name": "cert"})
    );
    assert_eq!(ok["spec"]["addresses"][0]["type"], "IPAddress");

    let cases: &[(Value, &str, &str)] = &[
        (
            json!([{"name": "a", "port": 0, "protocol": "HTTP"}]),
            "spec.listeners[0].port",
            "Invalid value: 0: spec.listeners[0].port in body should be greater than or equal to 1",
        ),
        (
            json!([{"name": "a", "port": 80, "protocol": "HTTP", "tls": tls}]),
            "spec.listeners",
            "tls may not be set",
        ),
        (
            json!([{"name": "a", "port": 443, "protocol": "HTTPS", "tls": {"mode": "Passthrough"}}]),
            "spec.listeners",
            "must be Terminate",
        ),
        (
            json!([{"name": "a", "port": 443, "protocol": "TLS"}]),
            "spec.listeners",
            "needs tls with a mode",
        ),
        (
            json!([{"name": "a", "port": 9000, "protocol": "TCP", "hostname": "x.example.com"}]),
            "spec.listeners",
            "hostname may not be set",
        ),
        (
            json!([{"name": "a", "port": 80, "protocol": "HTTP"}, {"name": "a", "port": 81, "protocol": "HTTP"}]),
            "spec.listeners[1]",
            "Duplicate value: {\"name\":\"a\"}",
        ),
        (
            json!([{"name": "a", "port": 80, "protocol": "HTTP"}, {"name": "b", "port": 80, "protocol": "HTTP"}]),
            "spec.listeners",
            "distinct combination of port, protocol and hostname",
        ),
        (json!([]), "spec.listeners", "should have at least 1 items"),
        (
            json!([{"name": "A_b", "port": 80, "protocol": "HTTP"}]),
            "spec.listeners[0].name",
            "should match",
        ),
        (
            json!([{"name": "a", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "Mine"}}}]),
            "spec.listeners[0].allowedRoutes.namespaces.from",
            "Unsupported value: \"Mine\": supported values: \"All\", \"Selector\", \"Same\"",
        ),
    ];
    for (listeners, field, text) in cases {
        let mut gw = gateway(listeners.clone());
        let e = admit(&schema, &gw_write("Gateway"), None, &mut gw)
            .expect_err(&format!("{listeners} was accepted"));
        let got = causes(&e);
        assert!(
            got.iter().any(|(_, f, m)| f == field && m.contains(text)),
            "want {field} ~ {text:?}, got {got:#?}"
        );
        assert!(
            e.message
                .starts_with("Gateway.gateway.networking.k8s.io \"gw\" is invalid: ")
        );
    }
    let mut dup_ip = gateway(json!([{"name": "a", "port": 80, "protocol": "HTTP"}]));
    dup_ip["spec"]["addresses"] = json!([{"value": "10.0.0.1"}, {"value": "10.0.0.1"}]);
    assert!(admit(&schema, &gw_write("Gateway"), None, &mut dup_ip).is_err());
    let mut bad_ip = gateway(json!([{"name": "a", "port": 80, "protocol": "HTTP"}]));
    bad_ip["spec"]["addresses"] = json!([{"value": "not-an-ip"}]);
    let e = admit(&schema, &gw_write("Gateway"), None, &mut bad_ip).unwrap_err();
    assert_eq!(causes(&e)[0].1, "spec.addresses[0]");
}

#[test]
fn shipped_gateway_class_controller_name_is_immutable() {
    let Some(schema) = shipped_schema("gatewayclasses.gateway.networking.k8s.io") else {
        eprintln!("SKIPPED: no shipped GatewayClass CRD");
        return;
    };
    let gc = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "c"}, "spec": {"controllerName": "meridian.dev/controller"}});
    let mut created = gc.clone();
    admit(&schema, &gw_write("GatewayClass"), None, &mut created).unwrap();
    let mut changed = gc.clone();
    changed["spec"]["controllerName"] = json!("other.dev/controller");
    let e = admit(&schema, &gw_write("GatewayClass"), Some(&gc), &mut changed).unwrap_err();
    assert_eq!(causes(&e)[0].1, "spec.controllerName");
    let mut bad = gc.clone();
    bad["spec"]["controllerName"] = json!("no-slash");
    assert!(admit(&schema, &gw_write("GatewayClass"), None, &mut bad).is_err());
}

#[test]
fn cel_standard_library_is_built_once_and_serves_every_check() {
    // One environment for the process: the second check reuses the first one's.
    let first = cel::stdlib();
    let schema = widget_schema();
    let bad = widget(json!({"address": "not-an-ip", "name": "bad"}));
    let good = widget(json!({"address": "10.0.0.1", "name": "ok"}));
    for _ in 0..3 {
        // isIP (ours, on top of the shared environment) and the standard operators both still
        // decide, on every check.
        let out = cel::check(&schema, &bad, None, validate::Scope::All);
        let messages: Vec<String> = out.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(out.errors.len(), 2, "{messages:?}");
        assert!(
            cel::check(&schema, &good, None, validate::Scope::All)
                .errors
                .is_empty()
        );
    }
    assert!(std::sync::Arc::ptr_eq(&first, &cel::stdlib()));
}

fn grpc_route() -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "g", "namespace": "default"},
        "spec": {
        "parentRefs": [{"name": "gw"}],
        "hostnames": ["grpc.example.com"],
        "rules": [
            {"name": "exact",
             "matches": [{"method": {"service": "pkg.v1.Echo", "method": "Say"},
                          "headers": [{"name": "x-version", "value": "2"}]},
                         {"method": {"method": "Stream"}}],
             "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}]}}],
             "backendRefs": [{"name": "echo", "port": 9000}]},
            {"matches": [{"method": {"type": "RegularExpression", "service": "pkg\\..*", "method": "[A-Z].*"}}],
             "backendRefs": [{"name": "echo", "port": 9000, "weight": 3}]}
        ]
    }})
}

#[test]
fn shipped_grpc_route_rules_default_and_accept() {
    let Some(schema) = shipped_schema("grpcroutes.gateway.networking.k8s.io") else {
        eprintln!("SKIPPED: no shipped GRPCRoute CRD");
        return;
    };
    let mut route = grpc_route();
    admit(&schema, &gw_write("GRPCRoute"), None, &mut route).unwrap();
    let outcome = cel::check(&schema, &route, None, validate::Scope::All);
    assert!(outcome.failures.is_empty(), "{:#?}", outcome.failures);
    assert!(outcome.errors.is_empty(), "{:#?}", outcome.errors);
    let m = &route["spec"]["rules"][0]["matches"];
    assert_eq!(m[0]["method"]["type"], "Exact");
    assert_eq!(m[0]["headers"][0]["type"], "Exact");
    assert_eq!(route["spec"]["rules"][0]["backendRefs"][0]["weight"], 1);
    assert_eq!(
        route["spec"]["rules"][0]["backendRefs"][0]["kind"],
        "Service"
    );
    // No rule defaulting: an omitted list stays omitted (it matches every call).
    let mut bare = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "r"}, "spec": {"parentRefs": [{"name": "gw"}]}});
    admit(&schema, &gw_write("GRPCRoute"), None, &mut bare).unwrap();
    assert!(bare["spec"].get("rules").is_none(), "{bare}");
}

#[test]
fn shipped_grpc_route_rules_refuse_what_upstream_refuses() {
    let Some(schema) = shipped_schema("grpcroutes.gateway.networking.k8s.io") else {
        eprintln!("SKIPPED: no shipped GRPCRoute CRD");
        return;
    };
    let cases: &[Case] = &[
        (
            |r| r["spec"]["rules"][0]["matches"][1]["method"] = json!({"type": "Exact"}),
            "spec.rules[0].matches[1].method",
            "needs service, method or both",
        ),
        (
            |r| r["spec"]["rules"][0]["matches"][0]["method"]["service"] = json!("pkg/Echo"),
            "spec.rules[0].matches[0].method",
            "must be a gRPC service name",
        ),
        (
            |r| r["spec"]["rules"][0]["matches"][0]["method"]["method"] = json!("Say.Hi"),
            "spec.rules[0].matches[0].method",
            "must be a gRPC method name",
        ),
        (
            |r| r["spec"]["rules"][0]["matches"][0]["headers"][0]["name"] = json!("bad header"),
            "spec.rules[0].matches[0].headers[0].name",
            "should match",
        ),
        (
            |r| {
                r["spec"]["rules"][0]["filters"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"type": "RequestHeaderModifier", "requestHeaderModifier": {}}))
            },
            "spec.rules[0].filters",
            "RequestHeaderModifier filter may appear only once",
        ),
        (
            |r| {
                r["spec"]["rules"][0]["filters"][0] =
                    json!({"type": "RequestMirror", "requestHeaderModifier": {}})
            },
            "spec.rules[0].filters[0]",
            "requestMirror must be set exactly when type is RequestMirror",
        ),
        (
            |r| r["spec"]["rules"][1]["name"] = json!("exact"),
            "spec.rules",
            "rule names must be unique",
        ),
        (
            |r| r["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(1_000_001),
            "spec.rules[1].backendRefs[0].weight",
            "1000000",
        ),
    ];
    for (i, (mutate, field, text)) in cases.iter().enumerate() {
        let mut route = grpc_route();
        mutate(&mut route);
        let e = admit(&schema, &gw_write("GRPCRoute"), None, &mut route)
            .expect_err(&format!("case {i} ({field}) was accepted"));
        let got = causes(&e);
        assert!(
            got.iter().any(|(_, f, m)| f == field && m.contains(text)),
            "case {i}: want {field} ~ {text:?}, got {got:#?}"
        );
    }
    // A regular expression is not held to the Exact name patterns.
    let mut route = grpc_route();
    route["spec"]["rules"][1]["matches"][0]["method"]["service"] = json!("pkg/.*");
    admit(&schema, &gw_write("GRPCRoute"), None, &mut route).unwrap();
}

fn tls_route() -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "TLSRoute",
    "metadata": {"name": "r", "namespace": "default"},
    "spec": {
        "parentRefs": [{"name": "gw", "sectionName": "tls"}],
        "hostnames": ["a.example.com", "*.b.example.com"],
        "rules": [{"name": "main", "backendRefs": [{"name": "echo", "port": 8443},
                                                    {"name": "echo2", "port": 8443, "weight": 3}]}]
    }})
}

#[test]
fn shipped_tls_route_rules_default_and_refuse_what_upstream_refuses() {
    let Some(schema) = shipped_schema("tlsroutes.gateway.networking.k8s.io") else {
        eprintln!("SKIPPED: no shipped TLSRoute CRD");
        return;
    };
    let mut route = tls_route();
    admit(&schema, &gw_write("TLSRoute"), None, &mut route).unwrap();
    let outcome = cel::check(&schema, &route, None, validate::Scope::All);
    assert!(outcome.failures.is_empty(), "{:#?}", outcome.failures);
    assert!(outcome.errors.is_empty(), "{:#?}", outcome.errors);
    let b = &route["spec"]["rules"][0]["backendRefs"];
    assert_eq!(b[0]["weight"], 1);
    assert_eq!(b[0]["kind"], "Service");
    assert_eq!(b[0]["group"], "");
    assert_eq!(route["spec"]["parentRefs"][0]["kind"], "Gateway");

    let cases: &[Case] = &[
        (
            |r| r["spec"]["hostnames"][0] = json!("10.1.2.3"),
            "spec.hostnames[0]",
            "not an IP address",
        ),
        (
            |r| r["spec"]["hostnames"][0] = json!("a.*.example.com"),
            "spec.hostnames[0]",
            "should match",
        ),
        (
            |r| r["spec"]["hostnames"] = json!([]),
            "spec.hostnames",
            "at least 1",
        ),
        (
            |r| {
                let rule = r["spec"]["rules"][0].clone();
                r["spec"]["rules"].as_array_mut().unwrap().push(rule)
            },
            "spec.rules",
            "at most 1",
        ),
        (
            |r| r["spec"]["rules"][0]["backendRefs"] = json!([]),
            "spec.rules[0].backendRefs",
            "at least 1",
        ),
        (
            |r| {
                r["spec"]["rules"][0]["backendRefs"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("port");
            },
            "spec.rules[0].backendRefs[0]",
            "port is required when referring to a Service",
        ),
        (
            |r| r["spec"]["rules"][0]["backendRefs"][1]["weight"] = json!(1_000_001),
            "spec.rules[0].backendRefs[1].weight",
            "1000000",
        ),
    ];
    for (i, (mutate, field, text)) in cases.iter().enumerate() {
        let mut route = tls_route();
        mutate(&mut route);
        let e = admit(&schema, &gw_write("TLSRoute"), None, &mut route)
            .expect_err(&format!("case {i} ({field}) was accepted"));
        let got = causes(&e);
        assert!(
            got.iter().any(|(_, f, m)| f == field && m.contains(text)),
            "case {i}: want {field} ~ {text:?}, got {got:#?}"
        );
    }
}

fn listener_set() -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ListenerSet",
    "metadata": {"name": "ls", "namespace": "default"},
    "spec": {
        "parentRef": {"name": "gw"},
        "listeners": [
            {"name": "a", "port": 8080, "protocol": "HTTP", "hostname": "a.example.com"},
            {"name": "b", "port": 8443, "protocol": "TLS", "tls": {"mode": "Passthrough"}}
        ]
    }})
}

#[test]
fn shipped_listener_set_rules_default_and_refuse_what_upstream_refuses() {
    let Some(schema) = shipped_schema("listenersets.gateway.networking.k8s.io") else {
        eprintln!("SKIPPED: no shipped ListenerSet CRD");
        return;
    };
    let mut set = listener_set();
    admit(&schema, &gw_write("ListenerSet"), None, &mut set).unwrap();
    let outcome = cel::check(&schema, &set, None, validate::Scope::All);
    assert!(outcome.failures.is_empty(), "{:#?}", outcome.failures);
    assert!(outcome.errors.is_empty(), "{:#?}", outcome.errors);
    assert_eq!(set["spec"]["parentRef"]["kind"], "Gateway");
    assert_eq!(
        set["spec"]["parentRef"]["group"],
        "gateway.networking.k8s.io"
    );
    assert_eq!(
        set["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["from"],
        "Same"
    );

    let cases: &[Case] = &[
        (
            // A list-map key given twice is refused by the structural schema (as a real API
            // server does) before the uniqueness rule runs.
            |s| s["spec"]["listeners"][1]["name"] = json!("a"),
            "spec.listeners[1]",
            "Duplicate value",
        ),
        (
            |s| s["spec"]["listeners"][0]["port"] = json!(0),
            "spec.listeners[0].port",
            "greater than or equal to 1",
        ),
        (
            |s| s["spec"]["listeners"][0]["port"] = json!(65536),
            "spec.listeners[0].port",
            "65535",
        ),
        (
            |s| s["spec"]["listeners"][0]["hostname"] = json!("A_B.example.com"),
            "spec.listeners[0].hostname",
            "should match",
        ),
        (
            |s| s["spec"]["listeners"] = json!([]),
            "spec.listeners",
            "at least 1",
        ),
        (
            |s| {
                let l = s["spec"]["listeners"][0].clone();
                let all: Vec<Value> = (0..65)
                    .map(|i| {
                        let mut l = l.clone();
                        l["name"] = json!(format!("l{i}"));
                        l["port"] = json!(1000 + i);
                        l
                    })
                    .collect();
                s["spec"]["listeners"] = json!(all);
            },
            "spec.listeners",
            "at most 64",
        ),
        (
            |s| {
                s["spec"]["listeners"][1]
                    .as_object_mut()
                    .unwrap()
                    .remove("tls");
            },
            "spec.listeners",
            "a TLS listener needs tls with a mode",
        ),
    ];
    for (i, (mutate, field, text)) in cases.iter().enumerate() {
        let mut set = listener_set();
        mutate(&mut set);
        let e = admit(&schema, &gw_write("ListenerSet"), None, &mut set)
            .expect_err(&format!("case {i} ({field}) was accepted"));
        let got = causes(&e);
        assert!(
            got.iter().any(|(_, f, m)| f == field && m.contains(text)),
            "case {i}: want {field} ~ {text:?}, got {got:#?}"
        );
    }
}
