//! Server-side apply (`application/apply-patch+yaml`), a compact model of structured-merge-diff.
//!
//! 1. The applied object is reduced to the part the endpoint owns (only `status` on the status
//!    subresource; no `status` on the main resource of kinds with the subresource) and turned into
//!    a *field set*: paths like `f:spec/f:listeners/k:{"name":"http"}/f:port`, where lists use the
//!    schema's `x-kubernetes-list-type` (CRDs) or the well-known keys (`conditions` by `type`,
//!    `listeners` by `name`, ...): map-lists contribute one `k:` path per item, sets one `v:` path
//!    per value, atomic lists (the default, e.g. `parents`, `addresses`) one leaf.
//! 2. Conflicts: a leaf that another *apply* manager owns with a different live value is a 409
//!    (`Apply failed with N conflicts`), unless `force=true`, which moves ownership to the caller.
//! 3. The applied object is merged into the live one (map-lists item by item), then fields the
//!    manager applied last time but not now, and that no other apply manager owns, are removed.
//! 4. `metadata.managedFields` records one `Apply` entry per (manager, subresource) in the real
//!    FieldsV1 format, stamped with the current second; a result that differs from the live
//!    object only in those stamps is the live object (kube-apiserver ignores such a change), so
//!    re-applying the same object writes nothing.
//!
//! Simplifications: only apply managers are tracked (PUT/merge-patch writers own nothing, so their
//! fields never conflict and are never removed by apply); conflicts are checked on leaves only.

use crate::error::ApiError;
use crate::patch::item_key;
use crate::registry::{ListType, ResourceType};
use crate::store::WriteMode;
use crate::util::now_rfc3339;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

type FieldPath = Vec<String>;
type FieldSet = BTreeSet<FieldPath>;

/// Metadata fields that are identity or server-owned, never part of a field set.
const META_SKIP: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "generateName",
    "selfLink",
];

struct Entry {
    manager: String,
    subresource: String,
    apply: bool,
    raw: Value,
    set: FieldSet,
}

/// Runs server-side apply. `live` is the current object (storage form) or `None` to create.
/// Returns the object to write; the caller persists it through the store.
pub fn server_side_apply(
    rt: &ResourceType,
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    mode: WriteMode,
) -> Result<Value, ApiError> {
    check_applied(applied)?;
    let mut applied = applied.clone();
    if let Some(Value::Object(meta)) = applied.get_mut("metadata") {
        meta.remove("managedFields");
    }
    let owned = owned_part(&applied, rt, mode);
    let me = Manager {
        name: manager,
        subresource: if mode == WriteMode::Status {
            "status"
        } else {
            ""
        },
        set: field_set(&owned, rt),
    };
    let mut entries = live.map(parse_managed_fields).unwrap_or_default();
    let mut result = match live {
        Some(l) => l.clone(),
        None => json!({}),
    };

    // 2. Conflicts with other apply managers of the same subresource.
    let conflicts = me.take_over_or_conflict(&mut entries, &result, &owned, force);
    if !conflicts.is_empty() {
        let name = applied["metadata"]["name"].as_str().unwrap_or("");
        return Err(conflict_error(rt, name, &conflicts));
    }

    // 3. Merge, then drop what this manager stopped applying.
    let mut names = Vec::new();
    merge_applied(&mut result, &owned, &mut names, rt);
    copy_identity(&mut result, &applied);
    me.drop_unapplied(&mut result, &entries);

    // 4. managedFields.
    me.record(&mut result, entries, &applied["apiVersion"]);
    // kube-apiserver ignores a change of managedFields timestamps alone: re-applying the same
    // object is no write (no new resourceVersion, no watch event), whichever second it lands in.
    if let Some(l) = live
        && same_but_times(l, &result)
    {
        return Ok(l.clone());
    }
    Ok(result)
}

/// `a` and `b` are equal but for the `time` of their managedFields entries (compared in place:
/// this runs on every apply to an existing object).
fn same_but_times(a: &Value, b: &Value) -> bool {
    eq_except(a, b, "metadata")
        && eq_except(&a["metadata"], &b["metadata"], "managedFields")
        && match (managed_fields(a), managed_fields(b)) {
            (Some(Value::Array(x)), Some(Value::Array(y))) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| eq_except(p, q, "time"))
            }
            (x, y) => x == y,
        }
}

fn managed_fields(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/managedFields")
}

/// Two objects with the same members apart from `skip` (other values: plain equality).
fn eq_except(a: &Value, b: &Value, skip: &str) -> bool {
    let (Value::Object(a), Value::Object(b)) = (a, b) else {
        return a == b;
    };
    let others = |m: &Map<String, Value>| m.keys().filter(|k| *k != skip).count();
    others(a) == others(b) && a.iter().all(|(k, v)| k == skip || b.get(k) == Some(v))
}

/// An apply body is an object with `apiVersion` and `kind`.
fn check_applied(applied: &Value) -> Result<(), ApiError> {
    let Value::Object(am) = applied else {
        return Err(ApiError::bad_request("the apply body must be an object"));
    };
    for field in ["apiVersion", "kind"] {
        if am
            .get(field)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(format!(
                "{field} must be set in the applied configuration"
            )));
        }
    }
    Ok(())
}

/// The 409 `Apply failed with N conflicts`, one cause per `(manager, field)`.
fn conflict_error(rt: &ResourceType, name: &str, conflicts: &[(String, String)]) -> ApiError {
    let n = conflicts.len();
    let list: Vec<String> = conflicts
        .iter()
        .map(|(m, p)| format!("conflict with \"{m}\": {p}"))
        .collect();
    let mut err = ApiError::conflict_msg(
        &rt.group,
        &rt.plural,
        name,
        format!(
            "Apply failed with {n} conflict{}: {}",
            if n == 1 { "" } else { "s" },
            list.join("\n")
        ),
    );
    if let Some(Value::Object(d)) = err.details.as_mut() {
        d.insert(
            "causes".into(),
            Value::Array(
                conflicts
                    .iter()
                    .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": p}))
                    .collect(),
            ),
        );
    }
    err
}

/// `apiVersion`, `kind` and the identity fields come from the applied object (the store checks
/// them against the URL).
fn copy_identity(result: &mut Value, applied: &Value) {
    let (Value::Object(r), Value::Object(a)) = (result, applied) else {
        return;
    };
    for k in ["apiVersion", "kind"] {
        if let Some(v) = a.get(k) {
            r.insert(k.into(), v.clone());
        }
    }
    if let Some(Value::Object(am)) = a.get("metadata") {
        let rm = r.entry("metadata").or_insert_with(|| json!({}));
        if let Value::Object(rm) = rm {
            for k in ["name", "namespace", "resourceVersion"] {
                if let Some(v) = am.get(k) {
                    rm.insert(k.into(), v.clone());
                }
            }
        }
    }
}

/// The manager of this apply: its name, the subresource it writes ("" or "status") and the
/// fields it applies now.
struct Manager<'a> {
    name: &'a str,
    subresource: &'a str,
    set: FieldSet,
}

impl Manager<'_> {
    /// Whether `e` is this manager's own apply entry.
    fn is_me(&self, e: &Entry) -> bool {
        e.apply && e.manager == self.name && e.subresource == self.subresource
    }

    /// Leaves this apply sets that another apply manager of the same subresource owns with a
    /// different live value: with `force` they move to this manager, otherwise they are
    /// returned as `(other manager, field)` conflicts.
    fn take_over_or_conflict(
        &self,
        entries: &mut [Entry],
        live: &Value,
        owned: &Value,
        force: bool,
    ) -> Vec<(String, String)> {
        let mut conflicts = Vec::new();
        for e in entries
            .iter_mut()
            .filter(|e| e.apply && e.manager != self.name && e.subresource == self.subresource)
        {
            let clashing: Vec<FieldPath> = self
                .set
                .iter()
                .filter(|p| e.set.contains(*p) && !p.last().is_some_and(|l| l.starts_with("k:")))
                .filter(|p| value_at(live, p) != value_at(owned, p))
                .cloned()
                .collect();
            for p in clashing {
                if force {
                    e.set.remove(&p);
                } else {
                    conflicts.push((e.manager.clone(), display_path(&p)));
                }
            }
        }
        conflicts
    }

    /// Removes the fields this manager applied last time but not now, unless another apply
    /// manager still owns them (or a field above or below them).
    fn drop_unapplied(&self, result: &mut Value, entries: &[Entry]) {
        let prev: FieldSet = entries
            .iter()
            .find(|e| self.is_me(e))
            .map(|e| e.set.clone())
            .unwrap_or_default();
        let others: Vec<&FieldSet> = entries
            .iter()
            .filter(|e| e.apply && !self.is_me(e))
            .map(|e| &e.set)
            .collect();
        for p in prev.difference(&self.set) {
            let still_owned = others
                .iter()
                .any(|s| s.iter().any(|o| o.starts_with(p) || p.starts_with(o)));
            if !still_owned {
                remove_path(result, p);
            }
        }
    }

    /// Rewrites `metadata.managedFields`: the other entries (apply entries that own nothing any
    /// more are dropped) and this manager's new `Apply` entry.
    fn record(&self, result: &mut Value, mut entries: Vec<Entry>, api_version: &Value) {
        entries.retain(|e| !self.is_me(e));
        let mut mf: Vec<Value> = entries
            .iter()
            .filter(|e| !e.set.is_empty() || !e.apply)
            .map(|e| {
                let mut raw = e.raw.clone();
                if e.apply {
                    raw["fieldsV1"] = to_fields_v1(&e.set);
                }
                raw
            })
            .collect();
        if !self.set.is_empty() {
            let mut entry = json!({
                "manager": self.name,
                "operation": "Apply",
                "apiVersion": api_version,
                "time": now_rfc3339(),
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&self.set),
            });
            if !self.subresource.is_empty() {
                entry["subresource"] = json!(self.subresource);
            }
            mf.push(entry);
        }
        if let Value::Object(r) = result {
            let meta = r.entry("metadata").or_insert_with(|| json!({}));
            if let Value::Object(meta) = meta {
                meta.insert("managedFields".into(), Value::Array(mf));
            }
        }
    }
}

/// The part of the applied object the endpoint writes.
fn owned_part(applied: &Value, rt: &ResourceType, mode: WriteMode) -> Value {
    let mut out = Map::new();
    let Value::Object(m) = applied else {
        return Value::Object(out);
    };
    for (k, v) in m {
        let keep = match (mode, k.as_str()) {
            (_, "apiVersion" | "kind") => false,
            (WriteMode::Status, "status") => true,
            (WriteMode::Status, _) => false,
            (WriteMode::Main, "status") => !rt.status_subresource,
            (WriteMode::Main, "metadata") => {
                if let Value::Object(meta) = v {
                    let kept: Map<String, Value> = meta
                        .iter()
                        .filter(|(mk, _)| !META_SKIP.contains(&mk.as_str()))
                        .map(|(mk, mv)| (mk.clone(), mv.clone()))
                        .collect();
                    if !kept.is_empty() {
                        out.insert(k.clone(), Value::Object(kept));
                    }
                }
                false
            }
            (WriteMode::Main, _) => true,
        };
        if keep {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

fn key_elem(item: &Value, keys: &[String]) -> String {
    let m: Map<String, Value> = keys
        .iter()
        .map(|k| (k.clone(), item.get(k).cloned().unwrap_or(Value::Null)))
        .collect();
    format!("k:{}", Value::Object(m))
}

fn field_set(obj: &Value, rt: &ResourceType) -> FieldSet {
    let mut out = FieldSet::new();
    if let Value::Object(m) = obj {
        for (k, v) in m {
            walk(
                v,
                &mut vec![k.clone()],
                &mut vec![format!("f:{k}")],
                rt,
                &mut out,
            );
        }
    }
    out
}

fn walk(
    v: &Value,
    names: &mut Vec<String>,
    elems: &mut Vec<String>,
    rt: &ResourceType,
    out: &mut FieldSet,
) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, sub) in m {
                names.push(k.clone());
                elems.push(format!("f:{k}"));
                walk(sub, names, elems, rt, out);
                elems.pop();
                names.pop();
            }
        }
        Value::Array(items) => {
            let refs: Vec<&Value> = items.iter().collect();
            match rt.list_type(names, &refs) {
                ListType::Map(keys) => {
                    for item in items {
                        elems.push(key_elem(item, &keys));
                        out.insert(elems.clone());
                        names.push("[]".into());
                        if let Value::Object(im) = item {
                            for (k, sub) in im {
                                names.push(k.clone());
                                elems.push(format!("f:{k}"));
                                walk(sub, names, elems, rt, out);
                                elems.pop();
                                names.pop();
                            }
                        }
                        names.pop();
                        elems.pop();
                    }
                    if items.is_empty() {
                        out.insert(elems.clone());
                    }
                }
                ListType::Set => {
                    for item in items {
                        elems.push(format!("v:{item}"));
                        out.insert(elems.clone());
                        elems.pop();
                    }
                    if items.is_empty() {
                        out.insert(elems.clone());
                    }
                }
                ListType::Atomic => {
                    out.insert(elems.clone());
                }
            }
        }
        _ => {
            out.insert(elems.clone());
        }
    }
}

fn merge_applied(live: &mut Value, applied: &Value, names: &mut Vec<String>, rt: &ResourceType) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, av) in a {
                if av.is_null() {
                    l.remove(k);
                    continue;
                }
                names.push(k.clone());
                match l.get_mut(k) {
                    Some(lv) => merge_applied(lv, av, names, rt),
                    None => {
                        l.insert(k.clone(), av.clone());
                    }
                }
                names.pop();
            }
        }
        (Value::Array(l), Value::Array(a)) => {
            let refs: Vec<&Value> = l.iter().chain(a.iter()).collect();
            match rt.list_type(names, &refs) {
                ListType::Map(keys) => {
                    for ai in a {
                        let k = item_key(ai, &keys);
                        match l
                            .iter_mut()
                            .find(|li| k.is_some() && item_key(li, &keys) == k)
                        {
                            Some(li) => {
                                names.push("[]".into());
                                merge_applied(li, ai, names, rt);
                                names.pop();
                            }
                            None => l.push(ai.clone()),
                        }
                    }
                }
                ListType::Set => {
                    for ai in a {
                        if !l.contains(ai) {
                            l.push(ai.clone());
                        }
                    }
                }
                ListType::Atomic => *l = a.clone(),
            }
        }
        (l, a) => *l = a.clone(),
    }
}

fn matches_key_elem(item: &Value, elem: &str) -> bool {
    let Some(json_keys) = elem.strip_prefix("k:") else {
        return false;
    };
    let Ok(Value::Object(keys)) = serde_json::from_str::<Value>(json_keys) else {
        return false;
    };
    keys.iter()
        .all(|(k, v)| item.get(k).unwrap_or(&Value::Null) == v)
}

fn matches_value_elem(item: &Value, elem: &str) -> bool {
    elem.strip_prefix("v:")
        .and_then(|j| serde_json::from_str::<Value>(j).ok())
        .is_some_and(|v| &v == item)
}

fn child<'a>(v: &'a Value, elem: &str) -> Option<&'a Value> {
    if let Some(f) = elem.strip_prefix("f:") {
        return v.get(f);
    }
    let items = v.as_array()?;
    items
        .iter()
        .find(|i| matches_key_elem(i, elem) || matches_value_elem(i, elem))
}

fn value_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, e| child(cur, e))
}

fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for e in parents {
        let next = if let Some(f) = e.strip_prefix("f:") {
            cur.get_mut(f)
        } else {
            cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|i| matches_key_elem(i, e) || matches_value_elem(i, e))
            })
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Value::Object(m) = cur {
            m.remove(f);
        }
    } else if let Value::Array(a) = cur {
        a.retain(|i| !(matches_key_elem(i, last) || matches_value_elem(i, last)));
    }
}

fn display_path(p: &[String]) -> String {
    p.iter()
        .map(|e| match e.strip_prefix("f:") {
            Some(f) => format!(".{f}"),
            None => format!("[{}]", &e[2.min(e.len())..]),
        })
        .collect()
}

fn to_fields_v1(set: &FieldSet) -> Value {
    fn insert(node: &mut Map<String, Value>, path: &[String], item: bool) {
        let Some((first, rest)) = path.split_first() else {
            if item {
                node.insert(".".into(), json!({}));
            }
            return;
        };
        let entry = node.entry(first.clone()).or_insert_with(|| json!({}));
        if !entry.is_object() {
            *entry = json!({});
        }
        if let Value::Object(next) = entry {
            insert(next, rest, item);
        }
    }
    let mut root = Map::new();
    for path in set {
        let item = path.last().is_some_and(|l| l.starts_with("k:"));
        insert(&mut root, path, item);
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value, prefix: &mut Vec<String>, out: &mut FieldSet) {
    let Value::Object(m) = v else { return };
    if (m.is_empty() || m.contains_key(".")) && !prefix.is_empty() {
        out.insert(prefix.clone());
    }
    for (k, sub) in m {
        if k == "." {
            continue;
        }
        prefix.push(k.clone());
        from_fields_v1(sub, prefix, out);
        prefix.pop();
    }
}

fn parse_managed_fields(obj: &Value) -> Vec<Entry> {
    obj.get("metadata")
        .and_then(|m| m.get("managedFields"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|raw| {
                    let mut set = FieldSet::new();
                    if let Some(f) = raw.get("fieldsV1") {
                        from_fields_v1(f, &mut Vec::new(), &mut set);
                    }
                    Entry {
                        manager: raw["manager"].as_str().unwrap_or("").to_string(),
                        subresource: raw["subresource"].as_str().unwrap_or("").to_string(),
                        apply: raw["operation"] == "Apply",
                        raw: raw.clone(),
                        set,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::registry::Registry;

    fn gw_type() -> ResourceType {
        let mut t = (*Registry::default().by_key("configmaps").unwrap()).clone();
        t.kind = "Gateway".into();
        t.status_subresource = true;
        t
    }

    fn gw(conds: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Gateway", "metadata": {"name": "g", "namespace": "default"},
               "status": {"conditions": conds}})
    }

    #[test]
    fn two_managers_merge_conditions_by_type() {
        let t = gw_type();
        let live = json!({"apiVersion": "v1", "kind": "Gateway", "metadata": {"name": "g", "namespace": "default"}, "spec": {"a": 1}});
        let a = server_side_apply(
            &t,
            Some(&live),
            &gw(json!([{"type": "Accepted", "status": "True"}])),
            "m1",
            true,
            WriteMode::Status,
        )
        .unwrap();
        let b = server_side_apply(
            &t,
            Some(&a),
            &gw(json!([{"type": "Programmed", "status": "True"}])),
            "m2",
            true,
            WriteMode::Status,
        )
        .unwrap();
        let types: Vec<&str> = b["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, vec!["Accepted", "Programmed"]);
        assert_eq!(b["spec"]["a"], 1);
        assert_eq!(b["metadata"]["managedFields"].as_array().unwrap().len(), 2);
        // m1 stops applying Accepted: it is removed, Programmed (m2's) stays.
        let c =
            server_side_apply(&t, Some(&b), &gw(json!([])), "m1", true, WriteMode::Status).unwrap();
        let types: Vec<&str> = c["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, vec!["Programmed"]);
    }

    #[test]
    fn conflicts_need_force() {
        let mut t = gw_type();
        t.status_subresource = false;
        let body = |v: i64| json!({"apiVersion": "v1", "kind": "Gateway", "metadata": {"name": "g"}, "spec": {"port": v}});
        let a = server_side_apply(&t, None, &body(1), "m1", false, WriteMode::Main).unwrap();
        let e =
            server_side_apply(&t, Some(&a), &body(2), "m2", false, WriteMode::Main).unwrap_err();
        assert_eq!(e.code, 409);
        assert!(
            e.message.contains("conflict with \"m1\": .spec.port"),
            "{}",
            e.message
        );
        // Same value is shared ownership, not a conflict.
        server_side_apply(&t, Some(&a), &body(1), "m2", false, WriteMode::Main).unwrap();
        let f = server_side_apply(&t, Some(&a), &body(2), "m2", true, WriteMode::Main).unwrap();
        assert_eq!(f["spec"]["port"], 2);
    }

    /// Re-applying the same object in a later second changes nothing (its entry keeps its
    /// time); applying a change stamps the entry anew.
    #[test]
    fn a_repeated_apply_changes_nothing_not_even_the_time() {
        let mut t = gw_type();
        t.status_subresource = false;
        let body = |v: i64| json!({"apiVersion": "v1", "kind": "Gateway", "metadata": {"name": "g"}, "spec": {"port": v}});
        let mut live = server_side_apply(&t, None, &body(1), "m1", false, WriteMode::Main).unwrap();
        let old_time = json!("2020-01-01T00:00:00Z");
        live["metadata"]["managedFields"][0]["time"] = old_time.clone();
        let again =
            server_side_apply(&t, Some(&live), &body(1), "m1", false, WriteMode::Main).unwrap();
        assert_eq!(again, live);
        let changed =
            server_side_apply(&t, Some(&live), &body(2), "m1", false, WriteMode::Main).unwrap();
        assert_eq!(changed["spec"]["port"], 2);
        assert_ne!(changed["metadata"]["managedFields"][0]["time"], old_time);
    }

    #[test]
    fn fields_v1_roundtrip() {
        let t = gw_type();
        let set = field_set(
            &json!({"status": {"conditions": [{"type": "A", "status": "True"}]}, "spec": {"x": [1, 2]}}),
            &t,
        );
        let mut back = FieldSet::new();
        from_fields_v1(&to_fields_v1(&set), &mut Vec::new(), &mut back);
        assert_eq!(set, back);
        assert!(set.contains(&vec![
            "f:status".to_string(),
            "f:conditions".into(),
            "k:{\"type\":\"A\"}".into(),
            "f:status".into()
        ]));
    }
}
