//! Applies YAML manifests to a cluster with server-side apply, like `kubectl apply --server-side`.
//!
//! Each document's `apiVersion`/`kind` is resolved through discovery (so CRDs installed a moment
//! ago work), then the object is applied with field manager `meridian-up`. Used by `meridian up`
//! for the GatewayClass and the demo (only `up` applies manifests, so this lives with it; the
//! end-to-end tests apply `examples/` with real kubectl).

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde_json::Value;

/// Why a manifest was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A document is not YAML.
    #[error("document {document}")]
    Yaml {
        /// 1-based.
        document: usize,
        /// Why.
        #[source]
        source: serde_yaml::Error,
    },
    /// A document is a scalar or a list.
    #[error("document {0} is not a mapping")]
    NotMapping(usize),
    /// An object lacks a field every object has.
    #[error("object without {0}")]
    Missing(&'static str),
    /// Discovery does not know the kind.
    #[error("the cluster does not serve {api_version} {kind}")]
    NotServed {
        /// apiVersion.
        api_version: String,
        /// kind.
        kind: String,
        /// Why.
        #[source]
        source: Box<kube::Error>,
    },
    /// The server refused the apply.
    #[error("applying {kind} {name}")]
    Apply {
        /// kind.
        kind: String,
        /// metadata.name.
        name: String,
        /// Why.
        #[source]
        source: Box<kube::Error>,
    },
}

/// Splits a multi-document YAML text into JSON objects, skipping empty documents.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, ApplyError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value =
            <Value as serde::Deserialize>::deserialize(doc).map_err(|source| ApplyError::Yaml {
                document: i + 1,
                source,
            })?;
        if value.is_null() {
            continue;
        }
        if !value.is_object() {
            return Err(ApplyError::NotMapping(i + 1));
        }
        out.push(value);
    }
    Ok(out)
}

/// A string field every object has.
fn text<'a>(v: &'a Value, what: &'static str) -> Result<&'a str, ApplyError> {
    v.as_str().ok_or(ApplyError::Missing(what))
}

/// Applies one object; `default_namespace` is used for namespaced kinds without a namespace.
pub async fn apply_object(
    client: &kube::Client,
    obj: &Value,
    default_namespace: &str,
) -> Result<String, ApplyError> {
    let api_version = text(&obj["apiVersion"], "apiVersion")?;
    let kind = text(&obj["kind"], "kind")?;
    let name = text(&obj["metadata"]["name"], "metadata.name")?;
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, caps) = discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|source| ApplyError::NotServed {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            source: Box::new(source),
        })?;
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
    .map_err(|source| ApplyError::Apply {
        kind: kind.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    })?;
    Ok(format!("{}/{name}", kind.to_ascii_lowercase()))
}

/// Applies every document of a YAML text, in order.
pub async fn apply_yaml(client: &kube::Client, text: &str) -> Result<Vec<String>, ApplyError> {
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
