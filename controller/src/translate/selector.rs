//! Kubernetes label selectors (`matchLabels` + `matchExpressions`) for `allowedRoutes`.
//!
//! Semantics follow `metav1.LabelSelector`: every `matchLabels` pair and every expression must
//! hold; an empty selector matches everything. An expression with an unknown operator (or `In`
//! without values) makes the whole selector match nothing — the API server would have refused
//! it, and refusing is the safe reading of a permission.

use std::collections::BTreeMap;

/// A validated selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Selector {
    labels: BTreeMap<String, String>,
    exprs: Vec<Expr>,
    valid: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expr {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// Builds a selector from its parts (`(key, operator, values)` expressions).
    pub fn new<'a>(
        match_labels: Option<&BTreeMap<String, String>>,
        exprs: impl IntoIterator<Item = (&'a str, &'a str, Option<&'a Vec<String>>)>,
    ) -> Self {
        let mut valid = true;
        let exprs = exprs
            .into_iter()
            .filter_map(|(key, op, values)| {
                let values = values.cloned().unwrap_or_default();
                let key = key.to_string();
                let e = match op {
                    "In" if !values.is_empty() => Expr::In(key, values),
                    "NotIn" if !values.is_empty() => Expr::NotIn(key, values),
                    "Exists" if values.is_empty() => Expr::Exists(key),
                    "DoesNotExist" if values.is_empty() => Expr::DoesNotExist(key),
                    _ => {
                        valid = false;
                        return None;
                    }
                };
                Some(e)
            })
            .collect();
        Self {
            labels: match_labels.cloned().unwrap_or_default(),
            exprs,
            valid,
        }
    }

    /// Whether a label set matches.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.valid
            && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|e| match e {
                Expr::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                Expr::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                Expr::Exists(k) => labels.contains_key(k),
                Expr::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_semantics() {
        let ns = labels(&[("team", "a"), ("env", "prod")]);
        let ml = labels(&[("team", "a")]);
        assert!(Selector::new(None, []).matches(&ns), "empty matches all");
        assert!(Selector::new(Some(&ml), []).matches(&ns));
        assert!(!Selector::new(Some(&labels(&[("team", "b")])), []).matches(&ns));
        let vals = vec!["prod".to_string(), "stage".to_string()];
        assert!(Selector::new(None, [("env", "In", Some(&vals))]).matches(&ns));
        assert!(!Selector::new(None, [("env", "NotIn", Some(&vals))]).matches(&ns));
        assert!(Selector::new(None, [("nope", "NotIn", Some(&vals))]).matches(&ns));
        assert!(Selector::new(None, [("env", "Exists", None)]).matches(&ns));
        assert!(!Selector::new(None, [("env", "DoesNotExist", None)]).matches(&ns));
        assert!(
            !Selector::new(None, [("env", "Bogus", None)]).matches(&ns),
            "invalid operator matches nothing"
        );
        assert!(
            !Selector::new(None, [("env", "In", None)]).matches(&ns),
            "In without values is invalid"
        );
    }
}
