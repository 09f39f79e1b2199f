//! Shared helpers for the sandbox integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use meridian_sandbox::{Sandbox, SandboxConfig};
use serde_json::{Value, json};
use std::time::Duration;

pub async fn start(clusters: &[&str]) -> Sandbox {
    Sandbox::start(SandboxConfig::ephemeral(clusters))
        .await
        .unwrap()
}

pub fn kube_client(url: &str) -> kube::Client {
    let config = kube::Config::new(url.parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

/// A raw HTTP response.
pub struct Raw {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request and reads the whole response (bounded by a timeout).
pub async fn raw(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Raw {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    let fut = async {
        let resp = client.request(req).await.unwrap();
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Raw {
            status,
            content_type,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("request timed out")
}

pub async fn get_json(base: &str, path: &str) -> Raw {
    raw(base, "GET", path, &[], Vec::new()).await
}

pub async fn send_json(
    base: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &Value,
) -> Raw {
    raw(
        base,
        method,
        path,
        &[("content-type", content_type)],
        body.to_string().into_bytes(),
    )
    .await
}

/// A Gateway-like CRD with the upstream printer columns, a status subresource and two versions.
pub fn gateway_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gateways.gateway.networking.k8s.io"},
        "spec": {
            "group": "gateway.networking.k8s.io",
            "scope": "Namespaced",
            "names": {"plural": "gateways", "singular": "gateway", "kind": "Gateway",
                      "listKind": "GatewayList", "shortNames": ["gtw"], "categories": ["gateway-api"]},
            "versions": [
                {"name": "v1", "served": true, "storage": true,
                 "subresources": {"status": {}},
                 "additionalPrinterColumns": [
                    {"name": "Class", "type": "string", "jsonPath": ".spec.gatewayClassName"},
                    {"name": "Address", "type": "string", "jsonPath": ".status.addresses[*].value"},
                    {"name": "Programmed", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Programmed\")].status"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                 ],
                 "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {
                    "spec": {"type": "object", "properties": {
                        "gatewayClassName": {"type": "string"},
                        "listeners": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                                      "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                 }}}},
                {"name": "v1beta1", "served": true, "storage": false,
                 "subresources": {"status": {}},
                 "additionalPrinterColumns": [
                    {"name": "Class", "type": "string", "jsonPath": ".spec.gatewayClassName"}
                 ],
                 "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}
            ]
        }
    })
}

/// Creates the Gateway CRD through the API.
pub async fn install_gateway_crd(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(gateway_crd()).unwrap();
    crds.create(&Default::default(), &crd).await.unwrap();
}

pub fn gateway_resource() -> kube::core::ApiResource {
    kube::core::ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "Gateway".into(),
        plural: "gateways".into(),
    }
}

pub fn gateways(client: &kube::Client, ns: &str) -> kube::Api<kube::core::DynamicObject> {
    kube::Api::namespaced_with(client.clone(), ns, &gateway_resource())
}

pub fn gateway(name: &str, class: &str) -> kube::core::DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name},
        "spec": {"gatewayClassName": class, "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}
    }))
    .unwrap()
}
