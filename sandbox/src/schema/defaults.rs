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

/// Removes fields `node` does not declare; their paths are pushed to `unknown`.
pub fn prune(
    v: &mut Value,
    node: &Node,
    path: &mut Vec<Seg>,
    root: bool,
    unknown: &mut Vec<String>,
) {
    match v {
        Value::Object(map) => {
            let keep_meta = root || node.embedded;
            let drop_unknown = node.prunes_unknown();
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if keep_meta && ROOT_KEEP.contains(&k.as_str()) {
                    continue;
                }
                let sub = node.properties.get(&k).or(node.additional.as_deref());
                match (sub, map.get_mut(&k)) {
                    (Some(sub), Some(child)) => {
                        let seg = if node.properties.contains_key(&k) {
                            Seg::Field(k.clone())
                        } else {
                            Seg::Key(k.clone())
                        };
                        path.push(seg);
                        prune(child, sub, path, false, unknown);
                        path.pop();
                    }
                    (None, _) if drop_unknown => {
                        path.push(Seg::Field(k.clone()));
                        unknown.push(path_string(path));
                        path.pop();
                        map.remove(&k);
                    }
                    _ => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_node) = node.items.as_deref() {
                for (i, item) in items.iter_mut().enumerate() {
                    path.push(Seg::Index(i));
                    prune(item, item_node, path, false, unknown);
                    path.pop();
                }
            }
        }
        _ => {}
    }
}

/// Applies `default`s (and drops non-nullable nulls) below `v`.
pub fn apply(v: &mut Value, node: &Node) {
    match v {
        Value::Object(map) => {
            for (k, prop) in &node.properties {
                match map.get(k) {
                    None => {
                        if let Some(d) = &prop.default {
                            map.insert(k.clone(), d.clone());
                        }
                    }
                    Some(Value::Null) if !prop.nullable => match &prop.default {
                        Some(d) => {
                            map.insert(k.clone(), d.clone());
                        }
                        None => {
                            map.remove(k);
                        }
                    },
                    Some(_) => {}
                }
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
