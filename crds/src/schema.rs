//! Small, infallible edits to generated CRDs: printer columns, names, extra served versions,
//! server-side-apply list markers, validation ([`Check`]) and the clean-up of what schemars
//! renders for `Option<T>` ([`strip_nulls`]).
//!
//! kube's derived schemas come from the Rust types alone, so anything upstream expresses with
//! kubebuilder markers (`+listType=map`, `+kubebuilder:printcolumn`, ...) has to be added here.
//! Every edit addresses a field by its JSON path below the version schema root. When a path does
//! not exist (for example after a `gateway-api` upgrade renamed a field) the edit is skipped rather
//! than panicking; the crate's tests assert that every marker we rely on is present, so such a
//! drift fails CI instead of silently changing merge semantics.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, JSON, JSONSchemaProps,
    JSONSchemaPropsOrArray, JSONSchemaPropsOrBool, ValidationRule,
};
use serde_json::Value;

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
pub enum Step<'a> {
    /// `properties.<name>`
    Prop(&'a str),
    /// `items`
    Items,
}

/// Parses `status.listeners[].conditions` into steps. `[]` means "each item of the array".
pub fn parse_path(path: &str) -> Vec<Step<'_>> {
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
pub fn lookup<'a>(root: &'a JSONSchemaProps, path: &str) -> Option<&'a JSONSchemaProps> {
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
    path: &str,
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

/// Calls `f` on `node` and every schema below it (properties, items, additionalProperties and
/// the value validations `allOf`/`anyOf`/`oneOf`/`not`), parents before children.
pub fn walk_mut(node: &mut JSONSchemaProps, f: &mut dyn FnMut(&mut JSONSchemaProps)) {
    f(node);
    for sub in node.properties.iter_mut().flat_map(|p| p.values_mut()) {
        walk_mut(sub, f);
    }
    match node.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => walk_mut(item, f),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => {
            items.iter_mut().for_each(|i| walk_mut(i, f));
        }
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(ap)) = node.additional_properties.as_mut() {
        walk_mut(ap, f);
    }
    for list in [&mut node.all_of, &mut node.any_of, &mut node.one_of] {
        list.iter_mut().flatten().for_each(|s| walk_mut(s, f));
    }
    if let Some(not) = node.not.as_mut() {
        walk_mut(not, f);
    }
}

/// Removes what schemars renders for `Option<T>`: `null` inside `enum` lists and
/// `nullable: true`, in every version of `crd`.
///
/// A real API server refuses `null` as an enum member (the enum must match the type) and kubectl's
/// client-side validation chokes on it; and upstream CRDs express "optional" by leaving a field
/// out of `required`, not by allowing `null`. Servers drop a `null` sent for a non-nullable field
/// before validation, so clients that serialize `None` as `null` keep working. `keep` lists the
/// field paths (as in [`parse_path`]) whose `nullable` is intended and stays.
pub fn strip_nulls(crd: &mut CustomResourceDefinition, keep: &[&str]) {
    for version in &mut crd.spec.versions {
        let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let kept: Vec<String> = keep
            .iter()
            .filter(|p| lookup(root, p).is_some_and(|n| n.nullable == Some(true)))
            .map(|p| (*p).to_string())
            .collect();
        walk_mut(root, &mut |node| {
            if let Some(values) = node.enum_.as_mut() {
                values.retain(|v| !v.0.is_null());
            }
            node.nullable = None;
        });
        for path in &kept {
            if let Some(node) = lookup_mut(root, path) {
                node.nullable = Some(true);
            }
        }
    }
}

/// One validation (or default) a [`SchemaEditor`] adds to a schema node. These carry what
/// upstream expresses with kubebuilder markers (`+kubebuilder:validation:MaxLength=253`,
/// `+kubebuilder:default=...`, `+kubebuilder:validation:XValidation:rule=...`).
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// `minLength`
    MinLength(i64),
    /// `maxLength`
    MaxLength(i64),
    /// `pattern` (a Go RE2 / ECMA regular expression, unanchored unless it says so)
    Pattern(&'static str),
    /// `minItems`
    MinItems(i64),
    /// `maxItems`
    MaxItems(i64),
    /// `maxProperties`
    MaxProperties(i64),
    /// `minimum` (inclusive)
    Minimum(i64),
    /// `maximum` (inclusive)
    Maximum(i64),
    /// `enum` of strings (replaces the derived one)
    Enum(&'static [&'static str]),
    /// `enum` of integers
    IntEnum(&'static [i64]),
    /// `default`: the server fills it in when the field is absent
    Default(Value),
    /// `x-kubernetes-validations` entry: a CEL rule and the message shown when it is false
    Rule(String, &'static str),
    /// `x-kubernetes-list-type: set` (items unique)
    ListSet,
    /// `x-kubernetes-list-type: map` keyed by these fields (each unique combination once)
    ListMap(&'static [&'static str]),
}

/// A CEL rule; see [`Check::Rule`].
pub fn rule(expr: impl Into<String>, message: &'static str) -> Check {
    Check::Rule(expr.into(), message)
}

impl Check {
    fn apply(&self, node: &mut JSONSchemaProps) {
        match self {
            Check::MinLength(n) => node.min_length = Some(*n),
            Check::MaxLength(n) => node.max_length = Some(*n),
            Check::Pattern(p) => node.pattern = Some((*p).into()),
            Check::MinItems(n) => node.min_items = Some(*n),
            Check::MaxItems(n) => node.max_items = Some(*n),
            Check::MaxProperties(n) => node.max_properties = Some(*n),
            // Integral bounds: `minimum: 1`, as upstream writes them.
            Check::Minimum(n) => node.minimum = Some(*n as f64),
            Check::Maximum(n) => node.maximum = Some(*n as f64),
            Check::Enum(values) => {
                node.enum_ = Some(values.iter().map(|v| JSON(Value::from(*v))).collect());
            }
            Check::IntEnum(values) => {
                node.enum_ = Some(values.iter().map(|v| JSON(Value::from(*v))).collect());
            }
            Check::Default(v) => node.default = Some(JSON(v.clone())),
            Check::Rule(expr, message) => {
                let rules = node.x_kubernetes_validations.get_or_insert_with(Vec::new);
                if !rules.iter().any(|r| &r.rule == expr) {
                    rules.push(ValidationRule {
                        rule: expr.clone(),
                        message: Some((*message).into()),
                        ..ValidationRule::default()
                    });
                }
            }
            Check::ListSet => {
                node.x_kubernetes_list_type = Some("set".into());
                node.x_kubernetes_list_map_keys = None;
            }
            Check::ListMap(keys) => {
                node.x_kubernetes_list_type = Some("map".into());
                node.x_kubernetes_list_map_keys = Some(keys.iter().map(|k| (*k).into()).collect());
            }
        }
    }
}

/// Applies [`Check`]s to the fields of one CRD (every version) and remembers the paths that
/// did not resolve, so a test can fail on them instead of validation silently going missing.
pub struct SchemaEditor<'a> {
    crd: &'a mut CustomResourceDefinition,
    misses: Vec<String>,
}

impl<'a> SchemaEditor<'a> {
    /// Edits `crd`.
    pub fn new(crd: &'a mut CustomResourceDefinition) -> Self {
        SchemaEditor {
            crd,
            misses: Vec::new(),
        }
    }

    /// Applies `checks` to the node at `path` (see [`parse_path`]; `""` is the root).
    pub fn at(&mut self, path: &str, checks: &[Check]) -> &mut Self {
        let kind = self.crd.spec.names.kind.clone();
        for version in &mut self.crd.spec.versions {
            let node = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
                .and_then(|root| {
                    if path.is_empty() {
                        Some(root)
                    } else {
                        lookup_mut(root, path)
                    }
                });
            match node {
                Some(node) => checks.iter().for_each(|c| c.apply(node)),
                None => self
                    .misses
                    .push(format!("{kind} {}: no field {path}", version.name)),
            }
        }
        self
    }

    /// Paths that did not resolve so far.
    pub fn into_misses(self) -> Vec<String> {
        self.misses
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
