//! Applies YAML manifests to a cluster with server-side apply, like `kubectl apply --server-side`.
//!
//! Each document's `apiVersion`/`kind` is resolved through discovery (so CRDs installed a moment
//! ago work), then the object is applied with field manager `meridian-up`. Used by `meridian up`
//! for the GatewayClass and the demo (only `up` applies manifests, so this lives with it; the
//! end-to-end tests apply `examples/` with real kubectl).

use anyhow::{Context as _, bail};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde_json::Value;

/// Splits a multi-document YAML text into JSON objects, skipping empty documents.
pub fn parse_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = <Value as serde::Deserialize>::deserialize(doc)
            .with_context(|| format!("document {}", i + 1))?;
        if value.is_null() {
            continue;
        }
        if !value.is_object() {
            bail!("document {} is not a mapping", i + 1);
        }
        out.push(value);
    }
    Ok(out)
}

/// Applies one object; `default_namespace` is used for namespaced kinds without a namespace.
pub async fn apply_object(
    client: &kube::Client,
    obj: &Value,
    default_namespace: &str,
) -> anyhow::Result<String> {
    let api_version = obj["apiVersion"]
        .as_str()
        .context("object without apiVersion")?;
    let kind = obj["kind"].as_str().context("object without kind")?;
    let name = obj["metadata"]["name"]
        .as_str()
        .context("object without metadata.name")?;
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, caps) = discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("the cluster does not serve {api_version} {kind}"))?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or(default_namespace);
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        name,
        &PatchParams::apply("meridian-up").force(),
        &Patch::Apply(obj),
    )
    .await
    .with_context(|| format!("applying {kind} {name}"))?;
    Ok(format!("{}/{name}", kind.to_ascii_lowercase()))
}

/// Applies every document of a YAML text, in order.
pub async fn apply_yaml(client: &kube::Client, text: &str) -> anyhow::Result<Vec<String>> {
    let mut applied = Vec::new();
    for obj in parse_documents(text)? {
        applied.push(apply_object(client, &obj, "default").await?);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn splits_documents_and_skips_empty_ones() {
        let docs = parse_documents("---\na: 1\n---\n# only a comment\n---\nb: [x]\n").unwrap();
        assert_eq!(
            docs,
            vec![serde_json::json!({"a": 1}), serde_json::json!({"b": ["x"]})]
        );
    }

    #[test]
    fn rejects_scalars_and_bad_yaml_with_the_document_number() {
        let e = parse_documents("a: 1\n---\njust text\n").unwrap_err();
        assert!(e.to_string().contains("document 2"), "{e}");
        assert!(parse_documents("a: [1\n").is_err());
    }
}
