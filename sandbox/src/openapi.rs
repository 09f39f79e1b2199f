//! The OpenAPI documents kubectl reads: v3 per group-version and v2 for the whole cluster.
//!
//! What kubectl 1.32 does with them:
//!
//! * `kubectl apply|create -f` (default `--validate=strict`) fetches `/openapi/v3` and the
//!   group-version document of each object's kind. A `patch` operation carrying the kind's
//!   `x-kubernetes-group-version-kind` and a `fieldValidation` parameter tells it the server
//!   validates fields itself, so it sends `fieldValidation=Strict` and validates nothing locally.
//! * A `kind: List` document is never matched that way, so for it kubectl validates each item
//!   on the client against the **v2** document. It asks for `/openapi/v2` only as protobuf
//!   (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`) and decodes the answer as
//!   the protobuf `openapi_v2.Document` whatever the response Content-Type says, so a JSON
//!   answer fails. No maintained Rust crate ships that message type (and the sandbox defines no
//!   protobuf messages by hand), so the protobuf answer is the zero-length encoding of an empty
//!   `Document`: kubectl finds no model for the items, skips client-side validation, and sends
//!   each item with `fieldValidation=Strict`, leaving field checking to the server. A client
//!   that asks for JSON gets the full v2 document (the same schemas as v3, under
//!   `definitions`).
//! * `kubectl explain` reads the v3 document of the resource's group-version and finds the
//!   kind's schema in `components.schemas` by its `x-kubernetes-group-version-kind`, then walks
//!   `properties`, `items` and `$ref`s along the field path.
//!
//! Schemas: a CRD-defined kind publishes the `openAPIV3Schema` of that version from the stored
//! CRD, with `apiVersion`, `kind` and `metadata` (a reference to a shared `ObjectMeta` schema)
//! added the way the real server adds them. Built-in kinds publish a minimal schema (those three
//! fields and a description): the sandbox has no field schemas for them.
//!
//! Each v3 document's URL in `/openapi/v3` carries a hash of its content, so kubectl's cache of
//! documents never goes stale when a CRD changes.

use crate::registry::ResourceType;
use crate::store::State;
use serde_json::{Map, Value, json};

/// The media type kubectl asks `/openapi/v2` for.
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// The Content-Type of the protobuf answer: the same type with `.` for `@`, as the real server
/// writes it (client-go parses response media types, and `@` is not allowed in one).
pub const V2_PROTOBUF_RESPONSE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// The name under which the shared `ObjectMeta` schema is published.
const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

fn types_in<'a>(
    state: &'a State,
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'a std::sync::Arc<ResourceType>> + 'a {
    state
        .registry
        .all()
        .iter()
        .filter(move |t| t.group == group && t.serves(version))
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The schema name of a kind, as the real server spells it: built-ins under `io.k8s.api.<group>`
/// (`core` for the core group), CRD kinds under their group's labels reversed
/// (`gateway.networking.k8s.io` → `io.k8s.networking.gateway`).
pub fn schema_name(t: &ResourceType, version: &str) -> String {
    let group = if t.group.is_empty() {
        "io.k8s.api.core".to_string()
    } else if t.group == "apiextensions.k8s.io" {
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions".to_string()
    } else if !t.custom {
        let first = t.group.split('.').next().unwrap_or(&t.group);
        format!("io.k8s.api.{first}")
    } else {
        t.group.rsplit('.').collect::<Vec<_>>().join(".")
    };
    format!("{group}.{version}.{}", t.kind)
}

fn schema_ref(prefix: &str, name: &str) -> Value {
    json!({"$ref": format!("{prefix}{name}")})
}

/// A short `ObjectMeta` schema: the fields users set, described in our own words.
fn object_meta_schema() -> Value {
    let s = |d: &str| json!({"type": "string", "description": d});
    let map = |d: &str| json!({"type": "object", "additionalProperties": {"type": "string"}, "description": d});
    json!({
        "type": "object",
        "description": "Metadata every persisted object has: identity, labels, annotations and bookkeeping written by the server.",
        "properties": {
            "name": s("Name of the object, unique within its namespace (or the cluster for cluster-scoped kinds)."),
            "generateName": s("Prefix the server completes into a unique name when name is empty."),
            "namespace": s("Namespace the object lives in; empty for cluster-scoped kinds."),
            "uid": s("Unique identifier the server assigns at creation. Read-only."),
            "resourceVersion": s("Opaque version of the object, changed on every write; used for optimistic concurrency and watches. Read-only."),
            "generation": {"type": "integer", "format": "int64", "description": "Sequence number of changes to the desired state (spec). Read-only."},
            "creationTimestamp": {"type": "string", "format": "date-time", "description": "When the object was created. Read-only."},
            "deletionTimestamp": {"type": "string", "format": "date-time", "description": "When deletion was requested; set while finalizers hold the object. Read-only."},
            "labels": map("String keys and values for organising and selecting objects."),
            "annotations": map("String keys and values for tools and controllers; not used for selection."),
            "finalizers": {"type": "array", "items": {"type": "string"}, "description": "Names of controllers that must finish work before the object is removed."},
            "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "Objects this one depends on; deleted owners take their dependents with them."},
            "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "Which manager owns which fields (server-side apply). Mostly internal."},
        },
    })
}

/// The published schema of one kind at one version (`$ref`s point under `ref_prefix`).
fn kind_schema(state: &State, t: &ResourceType, version: &str, ref_prefix: &str) -> Value {
    let from_crd = if t.custom {
        crd_schema(state, t, version)
    } else {
        None
    };
    let mut schema = from_crd.unwrap_or_else(|| {
        let what = if t.custom {
            "its CustomResourceDefinition gives no schema for this version"
        } else {
            "a built-in kind; the sandbox publishes no field schema for it and accepts its fields as sent"
        };
        json!({
            "type": "object",
            "description": format!("{} ({}): {what}.", t.kind, t.api_version(version)),
        })
    });
    let Value::Object(m) = &mut schema else {
        return schema;
    };
    let props = m.entry("properties").or_insert_with(|| json!({}));
    if let Value::Object(props) = props {
        props.entry("apiVersion").or_insert_with(|| json!({
            "type": "string",
            "description": "The versioned schema of this representation of the object (group/version).",
        }));
        props.entry("kind").or_insert_with(|| {
            json!({
                "type": "string",
                "description": "The REST resource kind this object represents, in CamelCase.",
            })
        });
        // The real server replaces whatever a CRD says about metadata with ObjectMeta.
        props.insert(
            "metadata".into(),
            json!({
                "description": "Standard object metadata.",
                "allOf": [schema_ref(ref_prefix, OBJECT_META)],
            }),
        );
    }
    m.insert(
        "x-kubernetes-group-version-kind".into(),
        json!([{"group": t.group, "version": version, "kind": t.kind}]),
    );
    schema
}

/// The `openAPIV3Schema` of a served version of the CRD that defines `t`.
fn crd_schema(state: &State, t: &ResourceType, version: &str) -> Option<Value> {
    let crd_type = state
        .registry
        .by_key("customresourcedefinitions.apiextensions.k8s.io")?;
    let crd = state.get(&crd_type, "", &t.key())?;
    crd.get("spec")?
        .get("versions")?
        .as_array()?
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(version))?
        .get("schema")?
        .get("openAPIV3Schema")
        .filter(|s| s.is_object())
        .cloned()
}

/// The `patch` operation kubectl looks for (GVK plus the `fieldValidation` parameter).
fn patch_operation(t: &ResourceType, group: &str, version: &str, v2: bool) -> Value {
    let param = |name: &str, ty: &str| {
        if v2 {
            json!({"name": name, "in": "query", "type": ty, "uniqueItems": true})
        } else {
            json!({"name": name, "in": "query", "schema": {"type": ty, "uniqueItems": true}})
        }
    };
    json!({
        "operationId": format!("patch{}", t.kind),
        "x-kubernetes-action": "patch",
        "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": t.kind},
        "parameters": [
            param("dryRun", "string"),
            param("fieldManager", "string"),
            param("fieldValidation", "string"),
            param("force", "boolean"),
        ],
        "responses": {"200": {"description": "OK"}},
    })
}

/// The only operation of a create-only kind (TokenReview): `post` on its collection, as the real
/// server publishes it. Having no `patch`, kubectl does not take it for a kind whose fields the
/// server validates, and sends it as it would to a real server.
fn create_operation(t: &ResourceType, group: &str, version: &str) -> Value {
    json!({
        "operationId": format!("create{}", t.kind),
        "x-kubernetes-action": "post",
        "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": t.kind},
        "responses": {"201": {"description": "Created"}},
    })
}

/// The path and operations a kind publishes: `patch` on an object, or `post` on the collection
/// of a create-only kind.
fn operations(t: &ResourceType, group: &str, version: &str, v2: bool) -> (String, Value) {
    if t.create_only {
        let path = format!("/{}/{}", gv_path(group, version), t.plural);
        return (path, json!({"post": create_operation(t, group, version)}));
    }
    (
        item_path(t, group, version),
        json!({"patch": patch_operation(t, group, version, v2)}),
    )
}

fn item_path(t: &ResourceType, group: &str, version: &str) -> String {
    let prefix = format!("/{}", gv_path(group, version));
    if t.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
    } else {
        format!("{prefix}/{}/{{name}}", t.plural)
    }
}

/// The OpenAPI v3 document of one group-version: a `patch` operation and a schema per kind.
pub fn v3_gv(state: &State, group: &str, version: &str) -> Option<Value> {
    let prefix = "#/components/schemas/";
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for t in types_in(state, group, version) {
        let (path, ops) = operations(t, group, version, false);
        paths.insert(path, ops);
        schemas.insert(
            schema_name(t, version),
            kind_schema(state, t, version, prefix),
        );
    }
    if paths.is_empty() {
        return None;
    }
    schemas.insert(OBJECT_META.into(), object_meta_schema());
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// FNV-1a, enough to change the cache-busting hash whenever a document changes.
fn content_hash(v: &Value) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016X}")
}

/// `/openapi/v3`: one entry per group-version with the URL of its document.
pub fn v3_root(state: &State) -> Value {
    let mut paths = Map::new();
    for (group, versions) in state.registry.groups() {
        for v in versions {
            if let Some(doc) = v3_gv(state, &group, &v) {
                let p = gv_path(&group, &v);
                paths.insert(
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", content_hash(&doc))}),
                );
            }
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v2` as JSON (Swagger 2.0): the v3 operations and schemas of every group-version.
pub fn v2_json(state: &State) -> Value {
    let prefix = "#/definitions/";
    let mut paths = Map::new();
    let mut definitions = Map::new();
    for (group, versions) in state.registry.groups() {
        for v in versions {
            for t in types_in(state, &group, &v) {
                let (path, ops) = operations(t, &group, &v, true);
                paths.insert(path, ops);
                definitions.insert(schema_name(t, &v), kind_schema(state, t, &v, prefix));
            }
        }
    }
    definitions.insert(OBJECT_META.into(), object_meta_schema());
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "definitions": definitions,
    })
}

/// `/openapi/v2` as protobuf: the encoding of an `openapi_v2.Document` with no fields set, which
/// is zero bytes (see the module docs for why it is empty).
pub fn v2_protobuf() -> Vec<u8> {
    Vec::new()
}

/// Whether a `/openapi/v2` request wants protobuf: kubectl lists only the protobuf type.
pub fn v2_wants_protobuf(accept: &str) -> bool {
    let types: Vec<&str> = accept
        .split(',')
        .filter_map(|t| t.split(';').next())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    types.contains(&V2_PROTOBUF)
        && !types
            .iter()
            .any(|t| *t == "application/json" || *t == "*/*" || *t == "application/*")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::registry::crd_to_type;

    fn widget_crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "description": "What the widget should be.",
                                 "properties": {"size": {"type": "integer", "description": "How big."}}}
                     }}}},
                    {"name": "v1beta1", "served": true, "storage": false}
                ]
            }
        })
    }

    fn state_with_widgets() -> State {
        let mut s = State::new(100);
        let crd_type = s
            .registry
            .by_key("customresourcedefinitions.apiextensions.k8s.io")
            .unwrap();
        s.create(&crd_type, None, widget_crd(), false).unwrap();
        if s.registry.by_key("widgets.example.com").is_none() {
            s.registry.register(crd_to_type(&widget_crd()).unwrap());
        }
        s
    }

    #[test]
    fn v3_documents_carry_the_crd_schema_with_gvk() {
        let s = state_with_widgets();
        let doc = v3_gv(&s, "example.com", "v1").unwrap();
        let schema = &doc["components"]["schemas"]["com.example.v1.Widget"];
        assert_eq!(
            schema["x-kubernetes-group-version-kind"],
            json!([{"group": "example.com", "version": "v1", "kind": "Widget"}])
        );
        assert_eq!(
            schema["properties"]["spec"]["properties"]["size"]["description"],
            "How big."
        );
        assert_eq!(
            schema["properties"]["metadata"]["allOf"][0]["$ref"],
            format!("#/components/schemas/{OBJECT_META}")
        );
        assert!(doc["components"]["schemas"][OBJECT_META]["properties"]["labels"].is_object());
        // A version without a schema still names its kind.
        let beta = v3_gv(&s, "example.com", "v1beta1").unwrap();
        let schema = &beta["components"]["schemas"]["com.example.v1beta1.Widget"];
        assert_eq!(
            schema["x-kubernetes-group-version-kind"][0]["version"],
            "v1beta1"
        );
        assert!(schema["properties"]["spec"].is_null());
    }

    #[test]
    fn builtins_get_minimal_schemas_and_patch_operations() {
        let s = State::new(100);
        let doc = v3_gv(&s, "", "v1").unwrap();
        let secret = &doc["components"]["schemas"]["io.k8s.api.core.v1.Secret"];
        assert_eq!(
            secret["x-kubernetes-group-version-kind"][0]["kind"],
            "Secret"
        );
        assert!(secret["properties"]["metadata"].is_object());
        let op = &doc["paths"]["/api/v1/namespaces/{namespace}/secrets/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Secret");
        assert!(v3_gv(&s, "nope.io", "v1").is_none());
    }

    #[test]
    fn root_hash_follows_the_crd_schema() {
        let mut s = state_with_widgets();
        let url = |s: &State| {
            v3_root(s)["paths"]["apis/example.com/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let before = url(&s);
        assert!(before.starts_with("/openapi/v3/apis/example.com/v1?hash="));
        let crd_type = s
            .registry
            .by_key("customresourcedefinitions.apiextensions.k8s.io")
            .unwrap();
        let mut crd = s.get(&crd_type, "", "widgets.example.com").unwrap().clone();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["description"] =
            json!("Changed.");
        s.update(
            &crd_type,
            None,
            "widgets.example.com",
            crd,
            crate::store::WriteMode::Main,
            false,
        )
        .unwrap();
        assert_ne!(before, url(&s));
    }

    #[test]
    fn v2_json_uses_definitions_and_protobuf_is_chosen_only_when_asked_alone() {
        let s = state_with_widgets();
        let doc = v2_json(&s);
        assert_eq!(doc["swagger"], "2.0");
        let w = &doc["definitions"]["com.example.v1.Widget"];
        assert_eq!(
            w["properties"]["metadata"]["allOf"][0]["$ref"],
            format!("#/definitions/{OBJECT_META}")
        );
        let op =
            &doc["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"]["patch"];
        assert_eq!(op["parameters"][2]["name"], "fieldValidation");
        assert!(v2_wants_protobuf(V2_PROTOBUF));
        assert!(!v2_wants_protobuf(&format!(
            "{V2_PROTOBUF}, application/json"
        )));
        assert!(!v2_wants_protobuf("application/json"));
        assert!(!v2_wants_protobuf(""));
        assert!(v2_protobuf().is_empty());
    }
}
