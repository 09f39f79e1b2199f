//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch.
//!
//! Strategic merge patch is approximated with merge-patch semantics plus list merging by key
//! for lists whose merge key is known (see [`crate::registry::well_known_list_type`]:
//! `conditions` by `type`, `containers`/`env`/`volumes`/`listeners` by `name`, container ports by
//! `containerPort`, Service ports by `port`, `finalizers` as a set) or declared in a CRD schema.
//! The directives `$patch: replace|delete`, `$retainKeys` and `$deleteFromPrimitiveList/<field>`
//! are honoured; `$setElementOrder/<field>` is accepted and ignored (list order is kept as is).
//! Server-side apply lives in [`crate::apply`].

use crate::error::ApiError;
use crate::registry::{ListType, ResourceType};
use serde_json::{Map, Value};

/// The PATCH flavours, chosen by Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Result<PatchKind, ApiError> {
        let base = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match base.as_str() {
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchKind::Apply),
            _ => Err(ApiError::unsupported_media_type(
                ct,
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json",
            )),
        }
    }
}

/// RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902 JSON patch. A malformed patch is a 400; a patch that does not apply is a 422.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(target, &ops).map_err(|e| {
        ApiError::new(
            422,
            "Invalid",
            format!("the server rejected our request due to an error in our request: {e}"),
        )
    })
}

/// Removes strategic-merge directives (keys starting with `$`, items marked `$patch: delete`).
pub fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                .map(strip_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The values of `keys` in a list item, used to match items of map-lists.
pub fn item_key(item: &Value, keys: &[String]) -> Option<Vec<Value>> {
    let m = item.as_object()?;
    Some(
        keys.iter()
            .map(|k| m.get(k).cloned().unwrap_or(Value::Null))
            .collect(),
    )
}

/// Strategic merge patch with the approximations described in the module docs.
pub fn strategic_merge(target: &mut Value, patch: &Value, rt: &ResourceType) {
    smp_value(target, patch, &mut Vec::new(), rt);
}

fn smp_value(target: &mut Value, patch: &Value, path: &mut Vec<String>, rt: &ResourceType) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => smp_object(t, p, path, rt),
        (Value::Array(t), Value::Array(p)) => {
            let items: Vec<&Value> = t.iter().chain(p.iter()).collect();
            match rt.list_type(path, &items) {
                ListType::Map(keys) => {
                    for pi in p {
                        let Some(k) = item_key(pi, &keys) else {
                            continue;
                        };
                        let pos = t
                            .iter()
                            .position(|ti| item_key(ti, &keys).as_ref() == Some(&k));
                        if pi.get("$patch").and_then(Value::as_str) == Some("delete") {
                            if let Some(i) = pos {
                                t.remove(i);
                            }
                            continue;
                        }
                        match pos {
                            Some(i) => {
                                path.push("[]".into());
                                smp_value(&mut t[i], pi, path, rt);
                                path.pop();
                            }
                            None => t.push(strip_directives(pi)),
                        }
                    }
                }
                ListType::Set => {
                    for pi in p {
                        if !t.contains(pi) {
                            t.push(pi.clone());
                        }
                    }
                }
                ListType::Atomic => {
                    *t = strip_directives(&Value::Array(p.clone()))
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                }
            }
        }
        (t, p) => *t = strip_directives(p),
    }
}

fn smp_object(
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
    rt: &ResourceType,
) {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        if let Value::Object(m) = strip_directives(&Value::Object(patch.clone())) {
            *target = m;
        }
        return;
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        target.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)) || patch.contains_key(k));
    }
    for (k, pv) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(t)), Value::Array(del)) = (target.get_mut(field), pv) {
                t.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if pv.is_null() {
            target.remove(k);
            continue;
        }
        path.push(k.clone());
        match target.get_mut(k) {
            Some(tv) => smp_value(tv, pv, path, rt),
            None => {
                target.insert(k.clone(), strip_directives(pv));
            }
        }
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::registry::Registry;
    use serde_json::json;

    fn svc() -> std::sync::Arc<ResourceType> {
        Registry::default().by_key("services").unwrap()
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8").unwrap(),
            PatchKind::Merge
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml").unwrap(),
            PatchKind::Apply
        );
        assert_eq!(
            PatchKind::from_content_type("text/plain").unwrap_err().code,
            415
        );
    }

    #[test]
    fn strategic_merges_lists_by_key() {
        let mut t = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}],
                            "selector": {"a": "b"}},
                           "status": {"conditions": [{"type": "A", "status": "False"}]}});
        let p = json!({"$setElementOrder/spec": [],
                       "spec": {"ports": [{"port": 80, "name": "web"}, {"port": 8080}, {"port": 443, "$patch": "delete"}],
                                "selector": {"a": null, "c": "d"}},
                       "status": {"conditions": [{"type": "B", "status": "True"}]}});
        strategic_merge(&mut t, &p, &svc());
        assert_eq!(
            t["spec"]["ports"],
            json!([{"port": 80, "name": "web"}, {"port": 8080}])
        );
        assert_eq!(t["spec"]["selector"], json!({"c": "d"}));
        assert_eq!(t["status"]["conditions"].as_array().unwrap().len(), 2);
        assert!(t.get("$setElementOrder/spec").is_none());
    }

    #[test]
    fn strategic_replace_and_primitive_delete() {
        let mut t = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"x": 1, "y": 2}});
        let p = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]},
                       "spec": {"$patch": "replace", "z": 3}});
        strategic_merge(&mut t, &p, &svc());
        assert_eq!(t["metadata"]["finalizers"], json!(["b"]));
        assert_eq!(t["spec"], json!({"z": 3}));
    }

    #[test]
    fn json_patch_errors() {
        let mut t = json!({"a": 1});
        json_patch(
            &mut t,
            &json!([{"op": "replace", "path": "/a", "value": 2}]),
        )
        .unwrap();
        assert_eq!(t["a"], 2);
        assert_eq!(
            json_patch(&mut t, &json!({"op": "x"})).unwrap_err().code,
            400
        );
        assert_eq!(
            json_patch(&mut t, &json!([{"op": "test", "path": "/a", "value": 3}]))
                .unwrap_err()
                .code,
            422
        );
    }
}
