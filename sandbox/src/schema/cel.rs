//! `x-kubernetes-validations`: CEL rules evaluated with the `cel` crate.
//!
//! Each rule is compiled when its CRD is registered. At write time the walk visits every schema
//! node that carries rules and has a value, binds `self` (and, for transition rules, `oldSelf`)
//! and evaluates. A `false` result is a field error worded as the real server words it:
//! `<path>: Invalid value: "<schema type>": <message>` (the message defaults to
//! `failed rule: <rule>`).
//!
//! Values are bound the way Kubernetes exposes them to CEL: objects with declared properties
//! become maps whose keys are escaped when they are CEL keywords or contain `.`, `-`, `/` or
//! `__` (`namespace` is read as `self.__namespace__`); typed maps keep their keys. Besides the
//! standard library (with `matches`, `duration`, the macros `all`, `exists`, `exists_one`,
//! `filter`, `map`), Kubernetes' `isIP` is provided. Rules that fail to evaluate (a function
//! the `cel` crate lacks) are logged and skipped rather than refusing the write.

use super::validate::{FieldError, FieldErrorKind, Scope, Seg, path_string};
use super::{ListKind, Node};
use cel::objects::{Key, Map};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Why a rule could not be compiled or evaluated (such rules are logged and skipped).
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The rule does not parse as CEL.
    #[error(transparent)]
    Compile(#[from] cel::ParseErrors),
    /// Evaluation failed (a function the `cel` crate lacks, a missing field, ...).
    #[error(transparent)]
    Execute(#[from] cel::ExecutionError),
    /// The rule evaluated to something other than a bool (rendered value).
    #[error("rule did not evaluate to a bool: {0}")]
    NotBool(String),
}

/// One compiled rule.
#[derive(Clone)]
pub struct Rule {
    pub source: String,
    pub message: String,
    /// `fieldPath` of the rule (relative, e.g. `.tls`), appended to the error's path.
    pub field_path: Option<String>,
    pub uses_old_self: bool,
    program: Arc<cel::Program>,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("source", &self.source)
            .finish()
    }
}

impl Rule {
    pub fn compile(
        source: &str,
        message: Option<&str>,
        field_path: Option<&str>,
    ) -> Result<Rule, RuleError> {
        let program = cel::Program::compile(source)?;
        Ok(Rule {
            source: source.to_string(),
            message: message
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .unwrap_or_else(|| format!("failed rule: {source}")),
            field_path: field_path.map(str::to_string),
            uses_old_self: source.contains("oldSelf"),
            program: Arc::new(program),
        })
    }

    /// Evaluates the rule with `self = v` (and `oldSelf = old`).
    pub fn eval(
        &self,
        base: &cel::Context<'_, '_>,
        n: &Node,
        v: &Value,
        old: Option<&Value>,
    ) -> Result<bool, RuleError> {
        let mut ctx = base.new_inner_scope();
        ctx.add_variable_from_value("self", to_cel(v, n));
        if let Some(old) = old {
            ctx.add_variable_from_value("oldSelf", to_cel(old, n));
        }
        match self.program.execute(&ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(RuleError::NotBool(format!("{other:?}"))),
            Err(e) => Err(e.into()),
        }
    }
}

/// CEL reserved words: a property with such a name is read as `__name__`.
const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// The name under which CEL sees the property `name`.
pub fn escape_property(name: &str) -> String {
    if RESERVED.contains(&name) {
        return format!("__{name}__");
    }
    name.replace("__", "__underscores__")
        .replace('.', "__dot__")
        .replace('-', "__dash__")
        .replace('/', "__slash__")
}

/// A JSON value as CEL sees it under schema `n`.
pub fn to_cel(v: &Value, n: &Node) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(num) => match (num.as_i64(), num.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(num.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => {
            let item_node = n.items.as_deref();
            let empty = Node::default();
            cel::Value::List(Arc::new(
                items
                    .iter()
                    .map(|i| to_cel(i, item_node.unwrap_or(&empty)))
                    .collect(),
            ))
        }
        Value::Object(m) => {
            let empty = Node::default();
            let mut out: HashMap<Key, cel::Value> = HashMap::with_capacity(m.len());
            for (k, child) in m {
                let (key, sub) = match n.properties.get(k) {
                    Some(sub) => (escape_property(k), sub),
                    None => (k.clone(), n.additional.as_deref().unwrap_or(&empty)),
                };
                out.insert(Key::String(Arc::new(key)), to_cel(child, sub));
            }
            cel::Value::Map(Map { map: Arc::new(out) })
        }
    }
}

/// The CEL standard library environment, built once per process: building it declares every
/// standard function and macro (a few percent of an HTTPRoute write's CPU when it was built per
/// object). It depends on nothing of a CRD (the rules are compiled into their own programs when
/// the CRD is registered), so one environment serves every CRD and version and no CRD change
/// has to invalidate it; the per-object context on top of it holds only `isIP` and the bindings.
pub(super) fn stdlib() -> Arc<cel::Env> {
    static STDLIB: std::sync::OnceLock<Arc<cel::Env>> = std::sync::OnceLock::new();
    Arc::clone(STDLIB.get_or_init(|| Arc::new(cel::Env::stdlib())))
}

fn is_ip(s: Arc<String>) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

/// What evaluating the rules of one object found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Rules that evaluated to false.
    pub errors: Vec<FieldError>,
    /// Rules that could not be evaluated (`path: rule: error`); they are skipped.
    pub failures: Vec<String>,
}

/// Evaluates every rule below the root that applies to `scope`.
pub fn check(root: &Node, obj: &Value, old: Option<&Value>, scope: Scope) -> Outcome {
    let mut out = Outcome::default();
    let Value::Object(map) = obj else {
        return out;
    };
    // Most writes touch no field with rules (a status write of a kind whose rules are on spec):
    // then no CEL context is built and nothing is walked.
    let covered =
        |k: &String| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata") && scope.covers(k);
    if !map
        .keys()
        .filter(|k| covered(k))
        .any(|k| root.properties.get(k).is_some_and(|n| n.rules_below))
    {
        return out;
    }
    let mut base = cel::Context::with_env(stdlib());
    if let Err(e) = base.add_function("isIP", is_ip) {
        tracing::warn!(error = %e, "isIP unavailable to CEL rules");
    }
    for (k, child) in map {
        if !covered(k) {
            continue;
        }
        if let Some(sub) = root.properties.get(k).filter(|n| n.rules_below) {
            let mut path = vec![Seg::Field(k.clone())];
            walk(
                &base,
                sub,
                child,
                old.and_then(|o| o.get(k)),
                &mut path,
                &mut out,
            );
        }
    }
    for f in &out.failures {
        tracing::warn!(failure = f, "CEL rule could not be evaluated; skipped");
    }
    out
}

fn walk(
    base: &cel::Context<'_, '_>,
    n: &Node,
    v: &Value,
    old: Option<&Value>,
    path: &mut Vec<Seg>,
    out: &mut Outcome,
) {
    for rule in &n.rules {
        if rule.uses_old_self && old.is_none() {
            continue;
        }
        match rule.eval(base, n, v, old) {
            Ok(true) => {}
            Ok(false) => {
                let mut err_path = path.clone();
                if let Some(fp) = &rule.field_path {
                    err_path.extend(
                        fp.split('.')
                            .filter(|s| !s.is_empty())
                            .map(|s| Seg::Field(s.to_string())),
                    );
                }
                let ty = n.ty.clone().unwrap_or_else(|| "object".into());
                out.errors.push(FieldError {
                    path: err_path,
                    kind: FieldErrorKind::Invalid(format!("\"{ty}\""), rule.message.clone()),
                });
            }
            Err(e) => out
                .failures
                .push(format!("{}: {}: {e}", path_string(path), rule.source)),
        }
    }
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let old_child = old.and_then(|o| o.get(k));
                if let Some(sub) = n.properties.get(k) {
                    if !sub.rules_below {
                        continue;
                    }
                    path.push(Seg::Field(k.clone()));
                    walk(base, sub, child, old_child, path, out);
                    path.pop();
                } else if let Some(sub) = n.additional.as_deref().filter(|n| n.rules_below) {
                    path.push(Seg::Key(k.clone()));
                    walk(base, sub, child, old_child, path, out);
                    path.pop();
                }
            }
        }
        Value::Array(items) => {
            let Some(item_node) = n.items.as_deref().filter(|n| n.rules_below) else {
                return;
            };
            let old_items = old.and_then(Value::as_array);
            for (i, item) in items.iter().enumerate() {
                // Old items are correlated by key for map lists only, as the real server does.
                let old_item = match (&n.list, old_items) {
                    (Some(ListKind::Map(keys)), Some(olds)) if !keys.is_empty() => olds
                        .iter()
                        .find(|o| keys.iter().all(|k| o.get(k) == item.get(k))),
                    _ => None,
                };
                path.push(Seg::Index(i));
                walk(base, item_node, item, old_item, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}
