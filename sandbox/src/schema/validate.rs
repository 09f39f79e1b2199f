//! Structural validation of a (pruned, defaulted) object, with kube-apiserver's error wording.
//!
//! The real server runs go-openapi's validator and converts its results to field errors: a few
//! kinds get their own error type (Required, Unsupported value, Too many, Duplicate value,
//! type errors); everything else becomes `Invalid value: <v>: <path> in body should ...`.
//! [`FieldError`] renders both the `message` line and the Status `cause`.

use super::{ListKind, Node};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A declared property: `.name`.
    Field(String),
    /// A key of a typed map (additionalProperties): `[key]`.
    Key(String),
    /// A list index: `[3]`.
    Index(usize),
}

/// `spec.listeners[0].port`
pub fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Field(f) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(f);
            }
            Seg::Key(k) => {
                s.push('[');
                s.push_str(k);
                s.push(']');
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// The value at `path`, if every step exists.
pub fn value_at<'a>(v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, seg| match seg {
        Seg::Field(k) | Seg::Key(k) => cur.get(k.as_str()),
        Seg::Index(i) => cur.get(*i),
    })
}

/// Which part of the object a write validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    /// A main-resource write of a kind with a status subresource.
    AllButStatus,
    /// A write to `/status`.
    OnlyStatus,
}

impl Scope {
    pub fn covers(self, root_field: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::AllButStatus => root_field != "status",
            Scope::OnlyStatus => root_field == "status",
        }
    }
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldErrorKind {
    Required,
    /// Not one of the enum values (rendered value, supported values).
    NotSupported(String, Vec<String>),
    /// Any other value error (rendered value, detail).
    Invalid(String, String),
    /// The value has the wrong JSON type (rendered value, detail).
    TypeInvalid(String, String),
    /// More items (or properties) than allowed (actual, max).
    TooMany(usize, u64),
    /// A repeated set item or map-list key (rendered value).
    Duplicate(String),
}

impl FieldErrorKind {
    /// `Status.details.causes[].reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::NotSupported(..) => "FieldValueNotSupported",
            FieldErrorKind::Invalid(..) => "FieldValueInvalid",
            FieldErrorKind::TypeInvalid(..) => "FieldValueTypeInvalid",
            FieldErrorKind::TooMany(..) => "FieldValueTooMany",
            FieldErrorKind::Duplicate(..) => "FieldValueDuplicate",
        }
    }
}

/// One field error.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub path: Vec<Seg>,
    pub kind: FieldErrorKind,
}

impl FieldError {
    pub fn path_string(&self) -> String {
        path_string(&self.path)
    }

    /// The message without the field (the `cause` message).
    pub fn body(&self) -> String {
        match &self.kind {
            FieldErrorKind::Required => "Required value".into(),
            FieldErrorKind::NotSupported(v, supported) => format!(
                "Unsupported value: {v}: supported values: {}",
                supported
                    .iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            FieldErrorKind::Invalid(v, detail) | FieldErrorKind::TypeInvalid(v, detail) => {
                format!("Invalid value: {v}: {detail}")
            }
            FieldErrorKind::TooMany(actual, max) => {
                format!("Too many: {actual}: must have at most {max} items")
            }
            FieldErrorKind::Duplicate(v) => format!("Duplicate value: {v}"),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path_string(), self.body())
    }
}

/// The JSON type name go-openapi reports.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as the real server prints it in `Invalid value: ...`: strings quoted, numbers and
/// booleans bare, composite values by their type name.
pub fn render(v: &Value) -> String {
    match v {
        Value::String(s) => Value::from(s.as_str()).to_string(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => format!("\"{}\"", type_name(other)),
    }
}

/// Renders a numeric bound: integral bounds without a fraction.
fn bound(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// Checks `obj` against the root schema, limited to `scope` at the top level.
pub fn validate(root: &Node, obj: &Value, scope: Scope) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Value::Object(map) = obj else {
        return errors;
    };
    for req in &root.required {
        if scope.covers(req) && !map.contains_key(req) {
            errors.push(FieldError {
                path: vec![Seg::Field(req.clone())],
                kind: FieldErrorKind::Required,
            });
        }
    }
    for (k, child) in map {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") || !scope.covers(k) {
            continue;
        }
        if let Some(sub) = root.properties.get(k).or(root.additional.as_deref()) {
            let mut path = vec![Seg::Field(k.clone())];
            check(sub, child, &mut path, &mut errors);
        }
    }
    errors
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    }
}

/// Checks one value against its schema node, appending to `errors`. The steps run in the order
/// the real server reports them: null and type first (a wrong type stops there), then enum, then
/// the constraints of the value's own type, recursing into items and properties.
fn check(n: &Node, v: &Value, path: &mut Vec<Seg>, errors: &mut Vec<FieldError>) {
    let mut at = At { n, v, path, errors };
    if !at.check_null_and_type() {
        return;
    }
    at.check_enum();
    match v {
        Value::String(s) => at.check_string(s),
        Value::Number(num) => at.check_number(num.as_f64().unwrap_or(0.0)),
        Value::Array(items) => at.check_array(items),
        Value::Object(map) => at.check_object(map),
        _ => {}
    }
}

/// One value being checked: its schema node, the value, where it is and the errors so far.
struct At<'a, 'p> {
    n: &'a Node,
    v: &'a Value,
    path: &'p mut Vec<Seg>,
    errors: &'p mut Vec<FieldError>,
}

impl At<'_, '_> {
    fn push(&mut self, kind: FieldErrorKind) {
        self.errors.push(FieldError {
            path: self.path.clone(),
            kind,
        });
    }

    /// `Invalid value: <v>: <path> in body <detail>`.
    fn invalid(&mut self, detail: String) {
        let p = path_string(self.path);
        self.push(FieldErrorKind::Invalid(
            render(self.v),
            format!("{p} in body {detail}"),
        ));
    }

    /// Null where the schema allows none, or a value of the wrong type; false when checking
    /// stops here (nothing else is said about such a value).
    fn check_null_and_type(&mut self) -> bool {
        let (n, v) = (self.n, self.v);
        // The path is rendered only for an error: most values pass.
        let p = || path_string(self.path);
        if v.is_null() {
            if !(n.nullable || n.preserve_unknown && n.ty.is_none()) {
                let ty = n.ty.as_deref().unwrap_or("object");
                self.push(FieldErrorKind::TypeInvalid(
                    "\"null\"".into(),
                    format!("{} in body must be of type {ty}: \"null\"", p()),
                ));
            }
            return false;
        }
        if n.int_or_string {
            if !(v.is_string() || v.is_i64() || v.is_u64()) {
                self.push(FieldErrorKind::TypeInvalid(
                    render(v),
                    format!(
                        "{} in body must be of type integer,string: \"{}\"",
                        p(),
                        type_name(v)
                    ),
                ));
                return false;
            }
        } else if let Some(ty) = n.ty.as_deref()
            && !type_ok(ty, v)
        {
            self.push(FieldErrorKind::TypeInvalid(
                render(v),
                format!("{} in body must be of type {ty}: \"{}\"", p(), type_name(v)),
            ));
            return false;
        }
        true
    }

    fn check_enum(&mut self) {
        if self.n.enum_.is_empty() || self.n.enum_.contains(self.v) {
            return;
        }
        let supported = self
            .n
            .enum_
            .iter()
            .map(|e| match e {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        self.push(FieldErrorKind::NotSupported(render(self.v), supported));
    }

    fn check_string(&mut self, s: &str) {
        let n = self.n;
        let len = s.chars().count() as u64;
        if let Some(max) = n.max_length
            && len > max
        {
            self.invalid(format!("should be at most {max} chars long"));
        }
        if let Some(min) = n.min_length
            && len < min
        {
            self.invalid(format!("should be at least {min} chars long"));
        }
        if let Some(pat) = &n.pattern
            && !pat.re.is_match(s)
        {
            self.invalid(format!("should match '{}'", pat.source));
        }
    }

    fn check_number(&mut self, x: f64) {
        let n = self.n;
        if let Some(min) = n.minimum {
            if n.exclusive_minimum && x <= min {
                self.invalid(format!("should be greater than {}", bound(min)));
            } else if x < min {
                self.invalid(format!("should be greater than or equal to {}", bound(min)));
            }
        }
        if let Some(max) = n.maximum {
            if n.exclusive_maximum && x >= max {
                self.invalid(format!("should be less than {}", bound(max)));
            } else if x > max {
                self.invalid(format!("should be less than or equal to {}", bound(max)));
            }
        }
    }

    fn check_array(&mut self, items: &[Value]) {
        let n = self.n;
        if let Some(max) = n.max_items
            && items.len() as u64 > max
        {
            self.push(FieldErrorKind::TooMany(items.len(), max));
        }
        if let Some(min) = n.min_items
            && (items.len() as u64) < min
        {
            self.invalid(format!("should have at least {min} items"));
        }
        check_list_uniqueness(n, items, self.path, self.errors);
        if let Some(item_node) = n.items.as_deref() {
            for (i, item) in items.iter().enumerate() {
                self.path.push(Seg::Index(i));
                check(item_node, item, self.path, self.errors);
                self.path.pop();
            }
        }
    }

    fn check_object(&mut self, map: &serde_json::Map<String, Value>) {
        let n = self.n;
        for req in &n.required {
            if !map.contains_key(req) {
                self.path.push(Seg::Field(req.clone()));
                self.push(FieldErrorKind::Required);
                self.path.pop();
            }
        }
        if let Some(max) = n.max_properties
            && map.len() as u64 > max
        {
            self.push(FieldErrorKind::TooMany(map.len(), max));
        }
        if let Some(min) = n.min_properties
            && (map.len() as u64) < min
        {
            self.invalid(format!("should have at least {min} properties"));
        }
        for (k, child) in map {
            // An embedded resource's apiVersion/kind/metadata are not checked here.
            if n.embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            let (sub, seg) = match n.properties.get(k) {
                Some(sub) => (sub, Seg::Field(k.clone())),
                None => match n.additional.as_deref() {
                    Some(sub) => (sub, Seg::Key(k.clone())),
                    None => continue,
                },
            };
            self.path.push(seg);
            check(sub, child, self.path, self.errors);
            self.path.pop();
        }
    }
}

/// `x-kubernetes-list-type: set` items and `map` keys must be unique.
fn check_list_uniqueness(
    n: &Node,
    items: &[Value],
    path: &mut Vec<Seg>,
    errors: &mut Vec<FieldError>,
) {
    let mut seen = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let key = match &n.list {
            Some(ListKind::Set) => (item.to_string(), render_set_item(item)),
            Some(ListKind::Map(keys)) if !keys.is_empty() => {
                let mut m = serde_json::Map::new();
                for k in keys {
                    if let Some(v) = item.get(k) {
                        m.insert(k.clone(), v.clone());
                    }
                }
                let obj = Value::Object(m);
                (obj.to_string(), obj.to_string())
            }
            _ => return,
        };
        if !seen.insert(key.0) {
            path.push(Seg::Index(i));
            errors.push(FieldError {
                path: path.clone(),
                kind: FieldErrorKind::Duplicate(key.1),
            });
            path.pop();
        }
    }
}

fn render_set_item(v: &Value) -> String {
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => render(v),
        other => other.to_string(),
    }
}
