//! The kubeconfig written for a sandbox: one cluster, user and context per cluster, each named
//! after the cluster, with the first cluster as `current-context`. The sandbox serves plain HTTP
//! on loopback; a user carries no credentials (requests without credentials act as the admin)
//! unless the cluster enforces RBAC for everyone, where it carries the admin token. A kubeconfig
//! for a ServiceAccount token ([`Entry::token`]) is what a pod's in-cluster identity looks like
//! from outside. The sandbox writes it with mode 0600 (see [`crate::persist::write_private`]).

use serde_json::{Value, json};

/// One cluster of a kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Cluster, user and context name.
    pub name: String,
    pub url: String,
    /// A bearer token for the user, if any.
    pub token: Option<String>,
    /// The context's default namespace.
    pub namespace: String,
}

/// Renders a kubeconfig for `(name, url)` pairs, without credentials, namespace `default`.
pub fn render(clusters: &[(String, String)]) -> String {
    let entries: Vec<Entry> = clusters
        .iter()
        .map(|(name, url)| Entry {
            name: name.clone(),
            url: url.clone(),
            token: None,
            namespace: "default".into(),
        })
        .collect();
    render_entries(&entries)
}

/// Renders a kubeconfig with one cluster, user and context per entry.
pub fn render_entries(entries: &[Entry]) -> String {
    let user = |e: &Entry| -> Value {
        match &e.token {
            Some(t) => json!({"token": t}),
            None => json!({}),
        }
    };
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": entries.iter().map(|e| json!({"name": e.name, "cluster": {"server": e.url}})).collect::<Vec<_>>(),
        "users": entries.iter().map(|e| json!({"name": e.name, "user": user(e)})).collect::<Vec<_>>(),
        "contexts": entries.iter().map(|e| json!({"name": e.name, "context": {"cluster": e.name, "user": e.name, "namespace": e.namespace}})).collect::<Vec<_>>(),
        "current-context": entries.first().map(|e| e.name.as_str()).unwrap_or(""),
    });
    // serde_yaml cannot fail on a tree of plain JSON values; fall back to JSON (also valid YAML).
    serde_yaml::to_string(&doc).unwrap_or_else(|_| doc.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_context_per_cluster() {
        let y = render(&[
            ("east".into(), "http://127.0.0.1:1".into()),
            ("west".into(), "http://127.0.0.1:2".into()),
        ]);
        let v: serde_json::Value = serde_yaml::from_str(&y).unwrap();
        assert_eq!(v["current-context"], "east");
        assert_eq!(v["contexts"][1]["name"], "west");
        assert_eq!(v["contexts"][1]["context"]["cluster"], "west");
        assert_eq!(v["clusters"][1]["cluster"]["server"], "http://127.0.0.1:2");
    }
}
