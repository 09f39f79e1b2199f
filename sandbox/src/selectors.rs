//! Label and field selectors for list, watch and deletecollection.
//!
//! Label selectors support the full client grammar: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
//! `k notin (a,b)`, `k` (exists), `!k` (does not exist) and the rarely used `k>n` / `k<n`.
//! Field selectors support `=`, `==` and `!=` on any dotted path of the object
//! (`metadata.name`, `metadata.namespace`, `involvedObject.uid`, `spec.nodeName`, ...);
//! a missing field compares as the empty string, which is what the real server does for the
//! fields it indexes.

use crate::error::ApiError;
use crate::util::{get_path, labels_of};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {
    reqs: Vec<LabelReq>,
}

fn bad(sel: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: invalid label selector \"{sel}\": {why}"
    ))
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, ()> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(());
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn parse_set(sel: &str, rest: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad(sel, "expected a parenthesised set of values"))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if values.iter().any(|v| !valid_value(v)) {
        return Err(bad(sel, "invalid value in set"));
    }
    Ok(values)
}

impl LabelSelector {
    pub fn parse(sel: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if sel.trim().is_empty() {
            return Ok(LabelSelector { reqs });
        }
        let parts = split_top_level(sel).map_err(|()| bad(sel, "unbalanced parentheses"))?;
        for part in parts {
            let p = part.trim();
            if p.is_empty() {
                return Err(bad(sel, "empty requirement"));
            }
            let req = if let Some(k) = p.strip_prefix('!') {
                let k = k.trim();
                if !valid_key(k) {
                    return Err(bad(sel, "invalid key"));
                }
                LabelReq::NotExists(k.to_string())
            } else if let Some((k, v)) = p.split_once("!=") {
                LabelReq::Ne(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = p.split_once("==") {
                LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = p.split_once('=') {
                LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = p.split_once('>') {
                let n = v
                    .trim()
                    .parse()
                    .map_err(|_| bad(sel, "expected an integer"))?;
                LabelReq::Gt(k.trim().to_string(), n)
            } else if let Some((k, v)) = p.split_once('<') {
                let n = v
                    .trim()
                    .parse()
                    .map_err(|_| bad(sel, "expected an integer"))?;
                LabelReq::Lt(k.trim().to_string(), n)
            } else if let Some(idx) = p.find(" notin ").or_else(|| p.find(" notin(")) {
                let (k, rest) = p.split_at(idx);
                let rest = rest.trim_start().trim_start_matches("notin");
                LabelReq::NotIn(k.trim().to_string(), parse_set(sel, rest)?)
            } else if let Some(idx) = p.find(" in ").or_else(|| p.find(" in(")) {
                let (k, rest) = p.split_at(idx);
                let rest = rest.trim_start().trim_start_matches("in");
                LabelReq::In(k.trim().to_string(), parse_set(sel, rest)?)
            } else {
                LabelReq::Exists(p.to_string())
            };
            let (key, value) = match &req {
                LabelReq::Eq(k, v) | LabelReq::Ne(k, v) => (k, Some(v)),
                LabelReq::In(k, _)
                | LabelReq::NotIn(k, _)
                | LabelReq::Exists(k)
                | LabelReq::NotExists(k)
                | LabelReq::Gt(k, _)
                | LabelReq::Lt(k, _) => (k, None),
            };
            if !valid_key(key) {
                return Err(bad(sel, &format!("invalid label key \"{key}\"")));
            }
            if let Some(v) = value
                && !valid_value(v)
            {
                return Err(bad(sel, &format!("invalid label value \"{v}\"")));
            }
            reqs.push(req);
        }
        Ok(LabelSelector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        if self.reqs.is_empty() {
            return true;
        }
        let labels = labels_of(obj);
        let get = |k: &str| labels.iter().find(|(lk, _)| *lk == k).map(|(_, v)| *v);
        self.reqs.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::Ne(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::Gt(k, n) => get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            LabelReq::Lt(k, n) => get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        })
    }
}

/// A parsed field selector (conjunction of `path=value` / `path!=value`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(sel: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if sel.trim().is_empty() {
            return Ok(FieldSelector { reqs });
        }
        for part in sel.split(',') {
            let p = part.trim();
            let (path, eq, value) = if let Some((k, v)) = p.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = p.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = p.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: invalid selector: '{sel}'; can't understand '{p}'"
                )));
            };
            let path = path.trim();
            if path.is_empty()
                || !path
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
            {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: field label not supported: {path}"
                )));
            }
            reqs.push((path.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// The value required for `metadata.name`, if the selector pins it (used to narrow lists).
    pub fn pinned_name(&self) -> Option<&str> {
        self.reqs
            .iter()
            .find(|(p, eq, _)| *eq && p == "metadata.name")
            .map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(path, eq, want)| {
            let have = match get_path(obj, path) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns1", "labels": labels}})
    }

    #[test]
    fn equality_and_sets() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m("app=web"));
        assert!(m("app==web,tier=front"));
        assert!(!m("app!=web"));
        assert!(m("app in (web, api)"));
        assert!(!m("app in (api)"));
        assert!(m("app notin (api,db)"));
        assert!(m("missing notin (x)"));
        assert!(m("tier"));
        assert!(!m("!tier"));
        assert!(m("!missing"));
        assert!(m(""));
        assert!(m("app in (web),tier notin (back)"));
    }

    #[test]
    fn numeric_comparisons() {
        let o = obj(json!({"gen": "5"}));
        assert!(LabelSelector::parse("gen>3").unwrap().matches(&o));
        assert!(!LabelSelector::parse("gen<3").unwrap().matches(&o));
    }

    #[test]
    fn bad_label_selectors() {
        for s in [
            "app in (web",
            "app=we b",
            "=x",
            "a in web",
            ",",
            "bad key=1",
        ] {
            let e = LabelSelector::parse(s).unwrap_err();
            assert_eq!(e.code, 400, "{s}");
        }
    }

    #[test]
    fn field_selectors() {
        let o = obj(json!({}));
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&o);
        assert!(m("metadata.name=a"));
        assert!(m("metadata.name==a,metadata.namespace=ns1"));
        assert!(!m("metadata.name!=a"));
        assert!(m("spec.nodeName="));
        assert_eq!(
            FieldSelector::parse("metadata.name=a")
                .unwrap()
                .pinned_name(),
            Some("a")
        );
        assert_eq!(FieldSelector::parse("nonsense").unwrap_err().code, 400);
    }
}
