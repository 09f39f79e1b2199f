//! Pruning of unknown fields and structural defaulting.
//!
//! Pruning keeps `apiVersion`, `kind` and `metadata` at the root (and in embedded resources),
//! descends into known properties and typed maps, keeps everything under
//! `x-kubernetes-preserve-unknown-fields` except known properties, which are pruned in turn.
//!
//! Defaulting follows the apiextensions rules: a property that is absent, or `null` while not
//! `nullable`, gets its `default`; a non-nullable `null` without default is dropped; then the
//! walk continues into the (possibly just defaulted) value, so nested defaults apply too.

use super::Node;
use super::validate::{Seg, path_string};
use serde_json::Value;

const ROOT_KEEP: &[&str] = &["apiVersion", "kind", "metadata"];

/// Where a value being pruned is: a chain of steps up to the root, borrowed from the object
/// itself, so walking it allocates nothing; the path is built ([`Up::path`]) only for an
/// unknown field.
pub enum Up<'a> {
    Root,
    Field(&'a Up<'a>, &'a str),
    Key(&'a Up<'a>, &'a str),
    Index(&'a Up<'a>, usize),
}

impl Up<'_> {
    /// The steps from the root to here.
    pub fn path(&self) -> Vec<Seg> {
        let mut out = Vec::new();
        let mut at = self;
        loop {
            at = match at {
                Up::Root => break,
                Up::Field(up, f) => {
                    out.push(Seg::Field(f.to_string()));
                    up
                }
                Up::Key(up, k) => {
                    out.push(Seg::Key(k.to_string()));
                    up
                }
                Up::Index(up, i) => {
                    out.push(Seg::Index(*i));
                    up
                }
            };
        }
        out.reverse();
        out
    }
}

/// Removes fields `node` does not declare; their paths are pushed to `unknown`.
pub fn prune(v: &mut Value, node: &Node, up: &Up<'_>, root: bool, unknown: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            let keep_meta = root || node.embedded;
            let drop_unknown = node.prunes_unknown();
            let mut gone = Vec::new();
            for (k, child) in map.iter_mut() {
                if keep_meta && ROOT_KEEP.contains(&k.as_str()) {
                    continue;
                }
                if !prune_member(k, child, node, up, drop_unknown, unknown) {
                    gone.push(k.clone());
                }
            }
            for k in gone {
                map.remove(&k);
            }
        }
        Value::Array(items) => {
            if let Some(item_node) = node.items.as_deref() {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item, item_node, &Up::Index(up, i), false, unknown);
                }
            }
        }
        _ => {}
    }
}

/// Prunes the member `k` (value `child`) of an object whose schema is `node`; false when the
/// member is unknown and must go.
fn prune_member(
    k: &str,
    child: &mut Value,
    node: &Node,
    up: &Up<'_>,
    drop_unknown: bool,
    unknown: &mut Vec<String>,
) -> bool {
    if let Some(sub) = node.properties.get(k) {
        prune(child, sub, &Up::Field(up, k), false, unknown);
    } else if let Some(sub) = node.additional.as_deref() {
        prune(child, sub, &Up::Key(up, k), false, unknown);
    } else if drop_unknown {
        unknown.push(path_string(&Up::Field(up, k).path()));
        return false;
    }
    true
}

/// A property's default when it is absent, or `null` while not nullable (such a `null` without
/// a default is dropped).
fn default_property(map: &mut serde_json::Map<String, Value>, k: &str, prop: &Node) {
    match map.get(k) {
        None => {
            if let Some(d) = &prop.default {
                map.insert(k.to_string(), d.clone());
            }
        }
        Some(Value::Null) if !prop.nullable => match &prop.default {
            Some(d) => {
                map.insert(k.to_string(), d.clone());
            }
            None => {
                map.remove(k);
            }
        },
        Some(_) => {}
    }
}

/// [`prune`] then [`apply`] for one member of an object (`root` its schema) and nothing else of
/// it: a status write, where everything but `status` is the stored object, admitted when it
/// was written. The member is pruned, and defaulted, exactly as the walk of the whole object
/// would.
pub fn admit_member(obj: &mut Value, root: &Node, k: &str, unknown: &mut Vec<String>) {
    let Value::Object(map) = obj else {
        return;
    };
    if let Some(child) = map.get_mut(k)
        && !prune_member(k, child, root, &Up::Root, root.prunes_unknown(), unknown)
    {
        map.remove(k);
    }
    if let Some(prop) = root.properties.get(k) {
        default_property(map, k, prop);
    }
    if let Some(child) = map.get_mut(k)
        && let Some(sub) = root.properties.get(k).or(root.additional.as_deref())
    {
        apply(child, sub);
    }
}

/// Applies `default`s (and drops non-nullable nulls) below `v`.
pub fn apply(v: &mut Value, node: &Node) {
    match v {
        Value::Object(map) => {
            for (k, prop) in &node.properties {
                default_property(map, k, prop);
            }
            for (k, child) in map.iter_mut() {
                if let Some(sub) = node.properties.get(k).or(node.additional.as_deref()) {
                    apply(child, sub);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_node) = node.items.as_deref() {
                for item in items.iter_mut() {
                    apply(item, item_node);
                }
            }
        }
        _ => {}
    }
}
