//! `meta.k8s.io/v1` Table responses for `kubectl get` (list, single object and watch events).
//!
//! The first column is always `Name`; then come the type's printer columns: a CRD's
//! `additionalPrinterColumns` evaluated with a JSONPath subset (`.a.b`, `['k']`, `[*]`, `[n]`,
//! `[?(@.f=="v")]` / `!=`), or hand-written columns for built-ins. As in the real server only the
//! first JSONPath match is used, `date` columns become ages ("5m") and a type without columns gets
//! `Age`. Rows carry `PartialObjectMetadata` (or the full object with `includeObject=Object`).

use crate::registry::{CellSource, PrinterColumn, ResourceType};
use crate::util::{human_duration, seconds_since};
use serde_json::{Value, json};

/// What each row's `object` carries (`includeObject` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> IncludeObject {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// The representation a GET/list/watch answers with, from the `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plain objects (and `<Kind>List`).
    Object,
    /// `meta.k8s.io/v1` Table (kubectl get).
    Table(IncludeObject),
    /// `PartialObjectMetadata` / `PartialObjectMetadataList` (kube-rs metadata watchers).
    Metadata,
}

impl Format {
    pub fn from_accept(accept: &str, include_object: Option<&str>) -> Format {
        if wants_table(accept) {
            return Format::Table(IncludeObject::parse(include_object));
        }
        let first = accept.split(',').next().unwrap_or("");
        let params: Vec<&str> = first.split(';').map(str::trim).collect();
        if params
            .iter()
            .any(|p| *p == "as=PartialObjectMetadata" || *p == "as=PartialObjectMetadataList")
        {
            return Format::Metadata;
        }
        Format::Object
    }
}

/// An object reduced to `PartialObjectMetadata`.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// Whether an `Accept` header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| {
        let params: Vec<&str> = first.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.iter().any(|p| p.starts_with("g=meta.k8s.io"))
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Field(String),
    Wildcard,
    Index(i64),
    Filter(Vec<String>, bool, Value),
}

/// Parses the JSONPath subset into segments; `None` for syntax it does not support.
fn parse_path(path: &str) -> Option<Vec<Seg>> {
    let p = path.trim();
    let p = p
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(p);
    let chars: Vec<char> = p.chars().collect();
    let mut i = 0;
    let mut segs = Vec::new();
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                if chars.get(i) == Some(&'.') {
                    return None; // recursive descent is not supported
                }
                let (name, next) = field_name(&chars, i);
                i = next;
                if !name.is_empty() {
                    segs.push(Seg::Field(name));
                }
            }
            '[' => {
                let (inner, next) = bracket_contents(&chars, i)?;
                i = next;
                segs.push(bracket_segment(inner.trim())?);
            }
            _ => {
                // A path without a leading dot ("spec.x") is accepted too.
                let (name, next) = field_name(&chars, i);
                i = next;
                segs.push(Seg::Field(name));
            }
        }
    }
    Some(segs)
}

/// The field name starting at `start` (up to the next `.` or `[`) and where it ends.
fn field_name(chars: &[char], start: usize) -> (String, usize) {
    let end = chars[start..]
        .iter()
        .position(|c| *c == '.' || *c == '[')
        .map_or(chars.len(), |n| start + n);
    (chars[start..end].iter().collect(), end)
}

/// What lies between the `[` at `open` and its `]` (quotes and parentheses may contain `]`),
/// and the index after the `]`; `None` when it is never closed.
fn bracket_contents(chars: &[char], open: usize) -> Option<(String, usize)> {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    let mut i = open + 1;
    while i < chars.len() {
        let c = chars[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '(' => depth += 1,
            None if c == ')' => depth -= 1,
            None if c == ']' && depth == 0 => {
                return Some((chars[open + 1..i].iter().collect(), i + 1));
            }
            None => {}
        }
        i += 1;
    }
    None
}

/// `*`, an index, a filter `?(@.f=="v")` or a quoted key.
fn bracket_segment(inner: &str) -> Option<Seg> {
    if inner == "*" {
        return Some(Seg::Wildcard);
    }
    if let Ok(n) = inner.parse::<i64>() {
        return Some(Seg::Index(n));
    }
    if let Some(f) = inner.strip_prefix("?(").and_then(|x| x.strip_suffix(')')) {
        return filter_segment(f);
    }
    unquote(inner).map(|k| Seg::Field(k.to_string()))
}

/// `s` without its surrounding single or double quotes, if it has them.
fn unquote(s: &str) -> Option<&str> {
    s.strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
}

/// `@.a.b == value` or `!=`; the value is a quoted string or JSON.
fn filter_segment(f: &str) -> Option<Seg> {
    let (lhs, eq, rhs) = if let Some((l, r)) = f.split_once("==") {
        (l, true, r)
    } else if let Some((l, r)) = f.split_once("!=") {
        (l, false, r)
    } else {
        return None;
    };
    let lhs = lhs.trim().strip_prefix("@.")?;
    let rhs = rhs.trim();
    let value = match unquote(rhs) {
        Some(s) => Value::String(s.to_string()),
        None => serde_json::from_str(rhs).ok()?,
    };
    Some(Seg::Filter(
        lhs.split('.').map(str::to_string).collect(),
        eq,
        value,
    ))
}

/// Evaluates the JSONPath subset; every match in document order. Unsupported syntax matches nothing.
pub fn jsonpath<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let Some(segs) = parse_path(path) else {
        return Vec::new();
    };
    let mut cur = vec![obj];
    for seg in &segs {
        let mut next = Vec::new();
        for v in cur {
            match seg {
                Seg::Field(f) => next.extend(v.get(f.as_str())),
                Seg::Wildcard => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Seg::Index(n) => {
                    if let Value::Array(a) = v {
                        let idx = if *n < 0 {
                            i64::try_from(a.len()).ok().map(|l| l + n)
                        } else {
                            Some(*n)
                        };
                        if let Some(item) = idx
                            .and_then(|i| usize::try_from(i).ok())
                            .and_then(|i| a.get(i))
                        {
                            next.push(item);
                        }
                    }
                }
                Seg::Filter(field, eq, want) => {
                    if let Value::Array(a) = v {
                        for item in a {
                            let have = field.iter().try_fold(item, |c, k| c.get(k.as_str()));
                            if (have == Some(want)) == *eq {
                                next.push(item);
                            }
                        }
                    }
                }
            }
        }
        cur = next;
    }
    cur
}

/// One cell: a JSONPath column typed as its column says, or a built-in kind's hand-written column.
fn cell(col: &PrinterColumn, obj: &Value) -> Value {
    match &col.source {
        CellSource::Path(p) => path_cell(&col.type_, obj, p),
        CellSource::Count(fields) => json!(entry_count(obj, fields)),
        CellSource::ServicePorts => json!(joined_or(service_ports(obj), "<none>")),
        CellSource::ServiceExternalIp => json!(service_external_ip(obj)),
        CellSource::Selector(field) => json!(joined_or(string_map_pairs(obj, field), "<none>")),
        CellSource::EndpointSlicePorts => json!(joined_or(endpoint_slice_ports(obj), "<unset>")),
        CellSource::EndpointSliceEndpoints => {
            json!(joined_or(endpoint_slice_addresses(obj), "<unset>"))
        }
        CellSource::EventObject => json!(event_object(obj)),
        CellSource::NodeStatus => json!(node_status(obj)),
        CellSource::NodeRoles => json!(joined_or(node_roles(obj), "<none>")),
        CellSource::PodReady => json!(pod_ready(obj)),
        CellSource::PodRestarts => json!(pod_restarts(obj)),
        CellSource::DeploymentReady => json!(deployment_ready(obj)),
        CellSource::IntOrZero(path) => json!(at(obj, path).as_i64().unwrap_or(0)),
        CellSource::TemplateContainers(images) => {
            json!(joined_or(template_containers(obj, *images), "<none>"))
        }
        CellSource::MatchLabels => json!(joined_or(match_labels(obj), "<none>")),
        CellSource::TextOr(path, fallback) => json!(text_or(at(obj, path), fallback)),
        CellSource::RoleRef => json!(role_ref(obj)),
        CellSource::Subjects(kind) => json!(subjects(obj, kind).join(", ")),
    }
}

/// `items` joined with commas, or `empty` when there are none (kubectl's `<none>`/`<unset>`).
fn joined_or<S: AsRef<str>>(items: Vec<S>, empty: &str) -> String {
    if items.is_empty() {
        return empty.to_string();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(",")
}

/// The array at `v` as a slice (empty when it is no array).
fn array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The first JSONPath match, rendered by the column type (`date` as an age).
fn path_cell(type_: &str, obj: &Value, path: &str) -> Value {
    let Some(first) = jsonpath(obj, path).into_iter().next() else {
        return Value::Null;
    };
    match type_ {
        "date" => first
            .as_str()
            .and_then(seconds_since)
            .map(|s| json!(human_duration(s)))
            .unwrap_or(Value::Null),
        "integer" => first.as_i64().map(Value::from).unwrap_or(Value::Null),
        "number" => first.as_f64().map(Value::from).unwrap_or(Value::Null),
        "boolean" => first.as_bool().map(Value::from).unwrap_or(Value::Null),
        _ => match first {
            Value::String(s) => json!(s),
            Value::Null => Value::Null,
            other => json!(other.to_string()),
        },
    }
}

/// Entries of the objects or arrays at `fields` (ConfigMap/Secret DATA).
fn entry_count(obj: &Value, fields: &[&str]) -> usize {
    fields
        .iter()
        .filter_map(|f| obj.get(*f))
        .map(|v| match v {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        })
        .sum()
}

/// `80/TCP`, or `80:30080/TCP` with a node port.
fn service_ports(obj: &Value) -> Vec<String> {
    array(&obj["spec"]["ports"])
        .iter()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(np) => format!("{}:{np}/{proto}", p["port"]),
                None => format!("{}/{proto}", p["port"]),
            }
        })
        .collect()
}

/// Load-balancer ingress addresses and external IPs; `<pending>` for a LoadBalancer without any.
fn service_external_ip(obj: &Value) -> String {
    let ips: Vec<&str> = array(&obj["status"]["loadBalancer"]["ingress"])
        .iter()
        .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
        .chain(
            array(&obj["spec"]["externalIPs"])
                .iter()
                .filter_map(Value::as_str),
        )
        .collect();
    if !ips.is_empty() {
        ips.join(",")
    } else if obj["spec"]["type"] == "LoadBalancer" {
        "<pending>".to_string()
    } else {
        "<none>".to_string()
    }
}

/// `k=v` pairs of the string map at `spec.<field>` (a Service selector).
fn string_map_pairs(obj: &Value, field: &str) -> Vec<String> {
    obj["spec"][field]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect()
}

fn endpoint_slice_ports(obj: &Value) -> Vec<String> {
    array(&obj["ports"])
        .iter()
        .filter_map(|p| p["port"].as_i64().map(|p| p.to_string()))
        .collect()
}

fn endpoint_slice_addresses(obj: &Value) -> Vec<&str> {
    array(&obj["endpoints"])
        .iter()
        .flat_map(|e| array(&e["addresses"]))
        .filter_map(Value::as_str)
        .collect()
}

/// `kind/name` of a core Event's involved object.
fn event_object(obj: &Value) -> String {
    let io = &obj["involvedObject"];
    format!(
        "{}/{}",
        io["kind"].as_str().unwrap_or("").to_lowercase(),
        io["name"].as_str().unwrap_or("")
    )
}

fn node_status(obj: &Value) -> &'static str {
    let ready = array(&obj["status"]["conditions"])
        .iter()
        .find(|c| c["type"] == "Ready")
        .is_some_and(|c| c["status"] == "True");
    if ready { "Ready" } else { "NotReady" }
}

fn node_roles(obj: &Value) -> Vec<&str> {
    obj["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
        .collect()
}

/// `ready/total` containers.
fn pod_ready(obj: &Value) -> String {
    let total = array(&obj["spec"]["containers"]).len();
    let ready = array(&obj["status"]["containerStatuses"])
        .iter()
        .filter(|s| s["ready"] == true)
        .count();
    format!("{ready}/{total}")
}

fn pod_restarts(obj: &Value) -> i64 {
    array(&obj["status"]["containerStatuses"])
        .iter()
        .filter_map(|s| s["restartCount"].as_i64())
        .sum()
}

/// The value at a path of object fields (`Null` when any step is missing).
fn at<'a>(obj: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(obj, |v, k| &v[*k])
}

/// A scalar as text (`2`, `50%`), or `fallback` when absent.
fn text_or(v: &Value, fallback: &str) -> String {
    match v {
        Value::Null => fallback.to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `ready/desired`, the desired count defaulting to 1 as the real server defaults it.
fn deployment_ready(obj: &Value) -> String {
    let ready = obj["status"]["readyReplicas"].as_i64().unwrap_or(0);
    let desired = obj["spec"]["replicas"].as_i64().unwrap_or(1);
    format!("{ready}/{desired}")
}

fn template_containers(obj: &Value, images: bool) -> Vec<&str> {
    let field = if images { "image" } else { "name" };
    array(&obj["spec"]["template"]["spec"]["containers"])
        .iter()
        .filter_map(|c| c[field].as_str())
        .collect()
}

fn match_labels(obj: &Value) -> Vec<String> {
    obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect()
}

fn role_ref(obj: &Value) -> String {
    let r = &obj["roleRef"];
    format!(
        "{}/{}",
        r["kind"].as_str().unwrap_or(""),
        r["name"].as_str().unwrap_or("")
    )
}

/// Subjects of one kind; service accounts as `namespace:name`.
fn subjects(obj: &Value, kind: &str) -> Vec<String> {
    array(&obj["subjects"])
        .iter()
        .filter(|s| s["kind"] == kind)
        .map(|s| {
            let name = s["name"].as_str().unwrap_or("");
            match s["namespace"].as_str() {
                Some(ns) if kind == "ServiceAccount" => format!("{ns}:{name}"),
                _ => name.to_string(),
            }
        })
        .collect()
}

/// `columnDefinitions` for a type/version (Name first).
pub fn column_definitions(rt: &ResourceType, version: &str) -> Value {
    let mut defs = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace."
    })];
    for c in rt.columns(version) {
        defs.push(json!({
            "name": c.name, "type": c.type_, "format": c.format,
            "description": c.description, "priority": c.priority,
        }));
    }
    Value::Array(defs)
}

/// One row for an object (already rewritten to the requested version).
pub fn row(rt: &ResourceType, version: &str, obj: &Value, include: IncludeObject) -> Value {
    let mut cells = vec![obj["metadata"]["name"].clone()];
    for c in rt.columns(version) {
        cells.push(cell(&c, obj));
    }
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Metadata => partial_metadata(obj),
        IncludeObject::Object => obj.clone(),
    };
    let mut r = json!({"cells": cells});
    if !object.is_null() {
        r["object"] = object;
    }
    r
}

/// A whole Table.
pub fn table(
    rt: &ResourceType,
    version: &str,
    objs: &[Value],
    list_meta: Value,
    include: IncludeObject,
) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": column_definitions(rt, version),
        "rows": objs.iter().map(|o| row(rt, version, o, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::registry::Registry;

    fn gw() -> Value {
        json!({"metadata": {"name": "gw", "creationTimestamp": crate::util::now_rfc3339(), "labels": {"a.b/c": "x"}},
               "spec": {"gatewayClassName": "meridian"},
               "status": {"addresses": [{"value": "10.0.0.1"}, {"value": "10.0.0.2"}],
                          "conditions": [{"type": "Accepted", "status": "True"}, {"type": "Programmed", "status": "False"}]}})
    }

    #[test]
    fn jsonpath_subset() {
        let g = gw();
        assert_eq!(
            jsonpath(&g, ".spec.gatewayClassName"),
            vec![&json!("meridian")]
        );
        assert_eq!(jsonpath(&g, ".status.addresses[*].value").len(), 2);
        assert_eq!(
            jsonpath(&g, ".status.addresses[1].value"),
            vec![&json!("10.0.0.2")]
        );
        assert_eq!(
            jsonpath(&g, ".status.addresses[-1].value"),
            vec![&json!("10.0.0.2")]
        );
        assert_eq!(
            jsonpath(&g, r#".status.conditions[?(@.type=="Programmed")].status"#),
            vec![&json!("False")]
        );
        assert_eq!(
            jsonpath(&g, "{.metadata.labels['a.b/c']}"),
            vec![&json!("x")]
        );
        assert!(jsonpath(&g, ".missing.x").is_empty());
        assert!(jsonpath(&g, "..name").is_empty());
        assert!(jsonpath(&g, ".status.conditions[?(@.type=").is_empty());
    }

    #[test]
    fn accept_header_detection() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
        assert!(!wants_table(
            "application/json, application/json;as=Table;v=v1;g=meta.k8s.io"
        ));
    }

    #[test]
    fn builtin_rows_and_age_column() {
        let reg = Registry::default();
        let cm = reg.by_key("configmaps").unwrap();
        let obj = json!({"metadata": {"name": "c", "creationTimestamp": crate::util::now_rfc3339()}, "data": {"a": "1", "b": "2"}});
        let t = table(&cm, "v1", &[obj], json!({}), IncludeObject::Metadata);
        assert_eq!(t["columnDefinitions"][1]["name"], "Data");
        assert_eq!(t["rows"][0]["cells"][0], "c");
        assert_eq!(t["rows"][0]["cells"][1], 2);
        assert!(t["rows"][0]["cells"][2].as_str().unwrap().ends_with('s'));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
