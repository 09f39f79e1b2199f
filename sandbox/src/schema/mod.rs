//! Custom objects checked against their CRD's structural schema, as kube-apiserver does.
//!
//! A CRD's `openAPIV3Schema` (per version) is compiled once, when the CRD is registered
//! ([`Schemas::from_crd`]): regular expressions and CEL programs are built then. Every write of a
//! custom object then runs [`admit`] (hooked into `store::State::create`/`update`), in the order
//! the real server uses:
//!
//! ```text
//! candidate object ─▶ prune unknown fields ──(fieldValidation=Strict: 400 listing them)
//!                  ─▶ drop nulls of non-nullable fields, fill `default`s   (defaults.rs)
//!                  ─▶ validate types, enums, required, lengths, patterns, bounds,
//!                     list-type set/map uniqueness                        (validate.rs)
//!                  ─▶ evaluate x-kubernetes-validations (CEL)             (cel.rs)
//!                  ─▶ 422 Invalid with one cause per field, or the object as stored
//! ```
//!
//! Writes to the main resource of a kind with a status subresource validate everything but
//! `status`; writes to `/status` validate only `status`. Updates ratchet like the real server:
//! an error on a value the update did not change is dropped, so objects stored before a rule
//! existed (or by an older sandbox) can still get their finalizers and status written.
//! Objects loaded from a snapshot are not validated, only defaulted ([`apply_defaults`]), as a
//! real server defaults what it reads from etcd.
//!
//! Simplifications: `format` is not checked, `allOf`/`anyOf`/`oneOf`/`not` are ignored,
//! `metadata` is left to the store's own checks, `fieldValidation=Warn` (the default) prunes
//! silently instead of sending `Warning` headers. CEL rules run only when the schema checks
//! passed; transition rules (`oldSelf`) run only where the old value can be found by path (object
//! fields and `map` lists); rules or patterns that fail to compile here are skipped with a log
//! line instead of refusing the CRD.

pub mod cel;
pub mod defaults;
pub mod validate;

use crate::error::ApiError;
use crate::store::WriteMode;
use regex::Regex;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

pub use validate::{FieldError, FieldErrorKind};

/// `?fieldValidation=`: what the server does with fields the schema does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them (a real server also answers a `Warning` header); the default.
    #[default]
    Warn,
    /// Refuse the request (400) naming them: what `kubectl apply` sends.
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter; absent means [`FieldValidation::Warn`].
    pub fn from_query(v: Option<&str>) -> Result<FieldValidation, ApiError> {
        match v {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: \"{other}\": supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// `x-kubernetes-list-type` of an array node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListKind {
    Atomic,
    Set,
    Map(Vec<String>),
}

/// A compiled `pattern`.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub source: String,
    pub re: Regex,
}

/// One compiled schema node.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub ty: Option<String>,
    pub nullable: bool,
    pub properties: BTreeMap<String, Node>,
    /// `additionalProperties` as a schema (a map with typed values).
    pub additional: Option<Box<Node>>,
    /// `additionalProperties: true`.
    pub additional_any: bool,
    pub items: Option<Box<Node>>,
    pub required: Vec<String>,
    pub enum_: Vec<Value>,
    pub pattern: Option<Pattern>,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub min_items: Option<u64>,
    pub max_items: Option<u64>,
    pub min_properties: Option<u64>,
    pub max_properties: Option<u64>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub exclusive_minimum: bool,
    pub exclusive_maximum: bool,
    pub default: Option<Value>,
    pub preserve_unknown: bool,
    pub embedded: bool,
    pub int_or_string: bool,
    pub list: Option<ListKind>,
    pub rules: Vec<cel::Rule>,
    /// Whether this node or one below it has CEL rules (the rule walk skips subtrees without).
    pub rules_below: bool,
}

fn u64_at(s: &Value, k: &str) -> Option<u64> {
    s.get(k).and_then(Value::as_u64)
}

/// A node's `pattern`, if the `regex` crate compiles it (skipped with a log line otherwise).
fn compile_pattern(s: &Value, path: &str) -> Option<Pattern> {
    let p = s.get("pattern").and_then(Value::as_str)?;
    match Regex::new(p) {
        Ok(re) => Some(Pattern {
            source: p.to_string(),
            re,
        }),
        Err(e) => {
            tracing::warn!(path, pattern = p, error = %e, "schema pattern skipped");
            None
        }
    }
}

/// An array's `x-kubernetes-list-type` (with its map keys); atomic unless it says otherwise.
fn list_kind(s: &Value) -> ListKind {
    match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => ListKind::Set,
        Some("map") => ListKind::Map(
            s.get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => ListKind::Atomic,
    }
}

/// A node's `x-kubernetes-validations` that compile (the others are skipped with a log line).
fn compile_rules(s: &Value, path: &str) -> Vec<cel::Rule> {
    let mut rules = Vec::new();
    for r in s
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(src) = r.get("rule").and_then(Value::as_str) else {
            continue;
        };
        let message = r.get("message").and_then(Value::as_str);
        let field_path = r.get("fieldPath").and_then(Value::as_str);
        match cel::Rule::compile(src, message, field_path) {
            Ok(rule) => rules.push(rule),
            Err(e) => tracing::warn!(path, rule = src, error = %e, "CEL rule skipped"),
        }
    }
    rules
}

impl Node {
    /// Compiles a JSON schema node. Never fails: parts this module cannot use are skipped
    /// (and logged), so a CRD a real server accepts is never refused here.
    pub fn compile(s: &Value, path: &str) -> Node {
        let flag = |k: &str| s.get(k).and_then(Value::as_bool) == Some(true);
        let mut n = Node {
            ty: s.get("type").and_then(Value::as_str).map(str::to_string),
            nullable: flag("nullable"),
            required: s
                .get("required")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            enum_: s
                .get("enum")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            min_length: u64_at(s, "minLength"),
            max_length: u64_at(s, "maxLength"),
            min_items: u64_at(s, "minItems"),
            max_items: u64_at(s, "maxItems"),
            min_properties: u64_at(s, "minProperties"),
            max_properties: u64_at(s, "maxProperties"),
            minimum: s.get("minimum").and_then(Value::as_f64),
            maximum: s.get("maximum").and_then(Value::as_f64),
            exclusive_minimum: flag("exclusiveMinimum"),
            exclusive_maximum: flag("exclusiveMaximum"),
            default: s.get("default").cloned(),
            preserve_unknown: flag("x-kubernetes-preserve-unknown-fields"),
            embedded: flag("x-kubernetes-embedded-resource"),
            int_or_string: flag("x-kubernetes-int-or-string"),
            ..Node::default()
        };
        n.pattern = compile_pattern(s, path);
        n.compile_children(s, path);
        if n.ty.as_deref() == Some("array") {
            n.list = Some(list_kind(s));
        }
        n.rules = compile_rules(s, path);
        n.rules_below = !n.rules.is_empty()
            || n.properties.values().any(|c| c.rules_below)
            || n.additional.as_ref().is_some_and(|c| c.rules_below)
            || n.items.as_ref().is_some_and(|c| c.rules_below);
        n
    }

    /// The nodes below this one: properties, typed additionalProperties, list items.
    fn compile_children(&mut self, s: &Value, path: &str) {
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            for (k, sub) in props {
                self.properties
                    .insert(k.clone(), Node::compile(sub, &format!("{path}.{k}")));
            }
        }
        match s.get("additionalProperties") {
            Some(Value::Bool(b)) => self.additional_any = *b,
            Some(sub @ Value::Object(_)) => {
                self.additional = Some(Box::new(Node::compile(sub, &format!("{path}[*]"))));
            }
            _ => {}
        }
        if let Some(items) = s.get("items").filter(|i| i.is_object()) {
            self.items = Some(Box::new(Node::compile(items, &format!("{path}[*]"))));
        }
    }

    /// Whether the node describes an object whose unknown fields are dropped.
    fn prunes_unknown(&self) -> bool {
        !self.preserve_unknown
            && !self.additional_any
            && self.additional.is_none()
            && (self.ty.as_deref() == Some("object") || !self.properties.is_empty())
    }
}

/// The compiled schemas of one CRD, by version name.
#[derive(Clone, Default)]
pub struct Schemas {
    by_version: BTreeMap<String, Arc<Node>>,
    /// The source schemas, for equality (compiled regexes and programs do not compare).
    source: Arc<BTreeMap<String, Value>>,
}

impl PartialEq for Schemas {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for Schemas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.by_version.keys()).finish()
    }
}

impl Schemas {
    /// Compiles `spec.versions[].schema.openAPIV3Schema` of a CRD.
    pub fn from_crd(crd: &Value) -> Schemas {
        let mut by_version = BTreeMap::new();
        let mut source = BTreeMap::new();
        for v in crd["spec"]["versions"].as_array().into_iter().flatten() {
            let (Some(name), Some(schema)) = (
                v["name"].as_str(),
                v.get("schema").and_then(|s| s.get("openAPIV3Schema")),
            ) else {
                continue;
            };
            by_version.insert(name.to_string(), Arc::new(Node::compile(schema, "")));
            source.insert(name.to_string(), schema.clone());
        }
        Schemas {
            by_version,
            source: Arc::new(source),
        }
    }

    /// The schema of `version`, if the CRD has one.
    pub fn get(&self, version: &str) -> Option<&Arc<Node>> {
        self.by_version.get(version)
    }

    pub fn is_empty(&self) -> bool {
        self.by_version.is_empty()
    }
}

/// What an admitted write is checked as.
pub struct Write<'a> {
    /// `Kind`, for messages.
    pub kind: &'a str,
    pub group: &'a str,
    /// The API version the client wrote in (selects the schema).
    pub version: &'a str,
    /// Whether the kind has a status subresource (main writes then skip `status`).
    pub status_subresource: bool,
    pub mode: WriteMode,
    pub field_validation: FieldValidation,
}

/// Prunes, defaults and validates `obj` (a custom object being written) against `schema`;
/// `old` is the stored object on updates. On success `obj` is what gets stored.
pub fn admit(
    schema: &Node,
    w: &Write<'_>,
    old: Option<&Value>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    // Work on a copy: a refused write leaves the caller's object as it was.
    let mut cand = obj.clone();
    admit_in_place(schema, w, old, &mut cand)?;
    *obj = cand;
    Ok(())
}

fn admit_in_place(
    schema: &Node,
    w: &Write<'_>,
    old: Option<&Value>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let mut unknown = Vec::new();
    match w.mode {
        // Only `status` is new in a status write (the store takes the rest from the stored
        // object, admitted when it was written): pruning and defaulting the rest again would
        // walk the whole spec for nothing, on every status write.
        WriteMode::Status if old.is_some() => {
            defaults::admit_member(obj, schema, "status", &mut unknown);
        }
        _ => {
            defaults::prune(obj, schema, &defaults::Up::Root, true, &mut unknown);
            defaults::apply(obj, schema);
        }
    }
    if w.field_validation == FieldValidation::Strict && !unknown.is_empty() {
        let list = unknown
            .iter()
            .map(|p| format!("unknown field \"{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: strict decoding error: {list}",
            kind = w.kind,
            v = w.version
        )));
    }
    let scope = match (w.mode, w.status_subresource) {
        (WriteMode::Status, _) => validate::Scope::OnlyStatus,
        (WriteMode::Main, true) => validate::Scope::AllButStatus,
        (WriteMode::Main, false) => validate::Scope::All,
    };
    let mut errors = validate::validate(schema, obj, scope);
    if errors.is_empty() {
        errors = cel::check(schema, obj, old, scope).errors;
    }
    // Ratcheting: what the update did not change cannot make it fail.
    if let Some(old) = old {
        errors.retain(|e| validate::value_at(old, &e.path) != validate::value_at(obj, &e.path));
    }
    if errors.is_empty() {
        return Ok(());
    }
    let name = crate::util::name_of(obj).to_string();
    Err(invalid(w.group, w.kind, &name, &errors))
}

/// The store's hook: [`admit`] (in place: a refused `obj` is left half-admitted) for custom objects of a type whose CRD has a schema for
/// `version` (or, failing that, for the storage version); a no-op for everything else.
pub fn admit_object(
    rt: &crate::registry::ResourceType,
    version: &str,
    mode: WriteMode,
    field_validation: FieldValidation,
    old: Option<&Value>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    if !rt.custom {
        return Ok(());
    }
    let Some(schema) = rt
        .schemas
        .get(version)
        .or_else(|| rt.schemas.get(&rt.storage_version))
    else {
        return Ok(());
    };
    let w = Write {
        kind: &rt.kind,
        group: &rt.group,
        version,
        status_subresource: rt.status_subresource,
        mode,
        field_validation,
    };
    // In place, without [`admit`]'s copy: the store drops its candidate when a write is refused.
    admit_in_place(schema, &w, old, obj)
}

/// Fills schema defaults into a stored object (what a real server does when reading from
/// etcd); nothing is validated or pruned.
pub fn apply_defaults(schema: &Node, obj: &mut Value) {
    defaults::apply(obj, schema);
}

/// 422 Invalid exactly as kube-apiserver words it: `<Kind>.<group> "<name>" is invalid: ...`,
/// several errors in brackets, one `cause` per error.
pub fn invalid(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> ApiError {
    let qualified = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let lines: Vec<String> = errors.iter().map(FieldError::to_string).collect();
    let joined = if lines.len() == 1 {
        lines[0].clone()
    } else {
        format!("[{}]", lines.join(", "))
    };
    let causes: Vec<Value> = errors
        .iter()
        .map(|e| {
            serde_json::json!({
                "reason": e.kind.reason(),
                "message": e.body(),
                "field": e.path_string(),
            })
        })
        .collect();
    let mut details = serde_json::Map::new();
    details.insert("name".into(), Value::from(name));
    if !group.is_empty() {
        details.insert("group".into(), Value::from(group));
    }
    details.insert("kind".into(), Value::from(kind));
    details.insert("causes".into(), Value::Array(causes));
    ApiError {
        code: 422,
        reason: "Invalid",
        message: format!("{qualified} \"{name}\" is invalid: {joined}"),
        details: Some(Value::Object(details)),
    }
}

#[cfg(test)]
mod tests;
