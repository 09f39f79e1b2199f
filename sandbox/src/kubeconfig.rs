//! The kubeconfig written for a sandbox: one cluster, user and context per cluster, each named
//! after the cluster, with the first cluster as `current-context`. No credentials: the sandbox
//! serves plain HTTP on loopback without authentication.

use serde_json::json;

/// Renders a kubeconfig for `(name, url)` pairs.
pub fn render(clusters: &[(String, String)]) -> String {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": clusters.iter().map(|(n, u)| json!({"name": n, "cluster": {"server": u}})).collect::<Vec<_>>(),
        "users": clusters.iter().map(|(n, _)| json!({"name": n, "user": {}})).collect::<Vec<_>>(),
        "contexts": clusters.iter().map(|(n, _)| json!({"name": n, "context": {"cluster": n, "user": n, "namespace": "default"}})).collect::<Vec<_>>(),
        "current-context": clusters.first().map(|(n, _)| n.as_str()).unwrap_or(""),
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
