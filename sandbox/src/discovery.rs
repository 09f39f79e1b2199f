//! Discovery documents for kubectl (the OpenAPI documents are in [`crate::openapi`]).
//!
//! `/api`, `/apis`, `/apis/{g}` and `/api/v1`, `/apis/{g}/{v}` are the legacy (non-aggregated)
//! formats; client-go picks the format from the response Content-Type, so plain
//! `application/json` answers work even though kubectl asks for aggregated discovery first.

use crate::registry::{Registry, ResourceType};
use serde_json::{Value, json};

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-meridian-sandbox",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_json(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

pub fn api_group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(reg: &Registry, group: &str) -> Option<Value> {
    let groups = reg.groups();
    let (g, vs) = groups.iter().find(|(g, _)| g == group && !g.is_empty())?;
    let mut doc = group_json(g, vs);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

fn types_in<'a>(
    reg: &'a Registry,
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'a std::sync::Arc<ResourceType>> + 'a {
    reg.all()
        .iter()
        .filter(move |t| t.group == group && t.serves(version))
}

pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for t in types_in(reg, group, version) {
        // A review kind can only be created; `kubectl api-resources --verbs=list` leaves it out.
        let verbs: &[&str] = if t.create_only { &["create"] } else { VERBS };
        let mut r = json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": verbs,
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        if t.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if t.group.is_empty() && t.plural == "serviceaccounts" {
            // The TokenRequest subresource (`kubectl create token`, see `crate::auth`).
            resources.push(json!({
                "name": "serviceaccounts/token",
                "singularName": "",
                "namespaced": true,
                "group": "authentication.k8s.io",
                "version": "v1",
                "kind": "TokenRequest",
                "verbs": ["create"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn core_resources_listed_with_status_entries() {
        let reg = Registry::default();
        let doc = resource_list(&reg, "", "v1").unwrap();
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"namespaces"));
        assert!(names.contains(&"services/status"));
        assert!(!names.contains(&"configmaps/status"));
        assert!(names.contains(&"serviceaccounts/token"));
        assert!(resource_list(&reg, "nope.io", "v1").is_none());
    }

    #[test]
    fn token_reviews_are_a_cluster_scoped_create_only_resource() {
        let reg = Registry::default();
        let groups = api_group_list(&reg);
        let authn = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == "authentication.k8s.io")
            .unwrap();
        assert_eq!(
            authn["preferredVersion"]["groupVersion"],
            "authentication.k8s.io/v1"
        );
        let doc = resource_list(&reg, "authentication.k8s.io", "v1").unwrap();
        assert_eq!(
            doc["resources"],
            json!([{"name": "tokenreviews", "singularName": "tokenreview", "namespaced": false,
                    "kind": "TokenReview", "verbs": ["create"]}])
        );
    }
}
