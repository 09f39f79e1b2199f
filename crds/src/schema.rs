//! Small, infallible edits to generated CRDs: printer columns, names, extra served versions and
//! server-side-apply list markers.
//!
//! kube's derived schemas come from the Rust types alone, so anything upstream expresses with
//! kubebuilder markers (`+listType=map`, `+kubebuilder:printcolumn`, ...) has to be added here.
//! Every edit addresses a field by its JSON path below the version schema root. When a path does
//! not exist (for example after a `gateway-api` upgrade renamed a field) the edit is skipped rather
//! than panicking; the crate's tests assert that every marker we rely on is present, so such a
//! drift fails CI instead of silently changing merge semantics.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, JSONSchemaProps,
    JSONSchemaPropsOrArray,
};

/// How server-side apply merges a list (`x-kubernetes-list-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListType {
    /// The list is replaced as a whole by its single owner.
    Atomic,
    /// Entries are merged by the given key fields (`x-kubernetes-list-map-keys`).
    Map(&'static [&'static str]),
}

/// One step of a path into a schema: a named property, or "the items of this array".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `properties.<name>`
    Prop(&'static str),
    /// `items`
    Items,
}

/// Parses `status.listeners[].conditions` into steps. `[]` means "each item of the array".
pub fn parse_path(path: &'static str) -> Vec<Step> {
    let mut steps = Vec::new();
    for segment in path.split('.') {
        let mut name = segment;
        let mut items = 0;
        while let Some(stripped) = name.strip_suffix("[]") {
            name = stripped;
            items += 1;
        }
        if !name.is_empty() {
            steps.push(Step::Prop(name));
        }
        steps.extend(std::iter::repeat_n(Step::Items, items));
    }
    steps
}

/// Follows `path` from `root`, returning the schema node it names, if every step exists.
pub fn lookup<'a>(root: &'a JSONSchemaProps, path: &'static str) -> Option<&'a JSONSchemaProps> {
    let mut node = root;
    for step in parse_path(path) {
        node = match step {
            Step::Prop(name) => node.properties.as_ref()?.get(name)?,
            Step::Items => match node.items.as_ref()? {
                JSONSchemaPropsOrArray::Schema(item) => item,
                JSONSchemaPropsOrArray::Schemas(_) => return None,
            },
        };
    }
    Some(node)
}

/// Mutable twin of [`lookup`].
pub fn lookup_mut<'a>(
    root: &'a mut JSONSchemaProps,
    path: &'static str,
) -> Option<&'a mut JSONSchemaProps> {
    let mut node = root;
    for step in parse_path(path) {
        node = match step {
            Step::Prop(name) => node.properties.as_mut()?.get_mut(name)?,
            Step::Items => match node.items.as_mut()? {
                JSONSchemaPropsOrArray::Schema(item) => item,
                JSONSchemaPropsOrArray::Schemas(_) => return None,
            },
        };
    }
    Some(node)
}

/// Sets the SSA list markers on the array at `path` in every version of `crd`.
pub fn set_list_type(crd: &mut CustomResourceDefinition, path: &'static str, list_type: ListType) {
    for version in &mut crd.spec.versions {
        let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let Some(node) = lookup_mut(root, path) else {
            continue;
        };
        match list_type {
            ListType::Atomic => {
                node.x_kubernetes_list_type = Some("atomic".into());
                node.x_kubernetes_list_map_keys = None;
            }
            ListType::Map(keys) => {
                node.x_kubernetes_list_type = Some("map".into());
                node.x_kubernetes_list_map_keys = Some(keys.iter().map(|k| (*k).into()).collect());
            }
        }
    }
}

/// Builds a printer column. `priority` 0 shows in plain `kubectl get`, higher only with `-o wide`.
pub fn column(
    name: &str,
    type_: &str,
    json_path: &str,
    priority: i32,
) -> CustomResourceColumnDefinition {
    CustomResourceColumnDefinition {
        name: name.into(),
        type_: type_.into(),
        json_path: json_path.into(),
        priority: (priority != 0).then_some(priority),
        description: None,
        format: None,
    }
}

/// The `Age` column every upstream CRD ends (or nearly ends) with.
pub fn age_column() -> CustomResourceColumnDefinition {
    column("Age", "date", ".metadata.creationTimestamp", 0)
}

/// Replaces the printer columns of every version.
pub fn set_printer_columns(
    crd: &mut CustomResourceDefinition,
    columns: &[CustomResourceColumnDefinition],
) {
    for version in &mut crd.spec.versions {
        version.additional_printer_columns = Some(columns.to_vec());
    }
}

/// Adds `extra` as a served, non-storage version that shares the storage version's schema,
/// subresources and columns. Versions with identical schemas need no conversion webhook: the
/// API server only rewrites `apiVersion` (conversion strategy `None`).
pub fn add_served_alias_version(crd: &mut CustomResourceDefinition, extra: &str) {
    if crd.spec.versions.iter().any(|v| v.name == extra) {
        return;
    }
    let Some(storage) = crd.spec.versions.iter().find(|v| v.storage).cloned() else {
        return;
    };
    let mut alias = storage;
    alias.name = extra.into();
    alias.served = true;
    alias.storage = false;
    crd.spec.versions.push(alias);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parse_path_handles_items_and_nesting() {
        assert_eq!(
            parse_path("status.listeners[].conditions"),
            vec![
                Step::Prop("status"),
                Step::Prop("listeners"),
                Step::Items,
                Step::Prop("conditions")
            ]
        );
        assert_eq!(
            parse_path("spec.matrix[][]"),
            vec![
                Step::Prop("spec"),
                Step::Prop("matrix"),
                Step::Items,
                Step::Items
            ]
        );
    }

    #[test]
    fn lookup_misses_are_none_not_panics() {
        let root: JSONSchemaProps = serde_json::from_value(serde_json::json!({
            "type": "object",
            "properties": {"status": {"type": "object", "properties": {
                "parents": {"type": "array", "items": {"type": "object", "properties": {
                    "conditions": {"type": "array"}}}}}}}
        }))
        .unwrap();
        assert!(lookup(&root, "status.parents[].conditions").is_some());
        assert!(lookup(&root, "status.parents[].nope").is_none());
        assert!(lookup(&root, "status.parents[][]").is_none());
        assert!(lookup(&root, "spec").is_none());
    }
}
