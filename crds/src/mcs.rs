//! Multi-Cluster Services API (`multicluster.x-k8s.io/v1alpha1`): `ServiceExport` and
//! `ServiceImport`, written here from the upstream field set (KEP-1645).
//!
//! A `ServiceExport` in cluster A marks the same-named Service as exported to the cluster set;
//! the controller answers with a `ServiceImport` of that name in each member cluster. The
//! controller uses these types directly with `kube::Api`, and [`crds`] turns them into the CRDs
//! Meridian installs.
//!
//! Two upstream details the derive cannot express are patched onto the generated CRDs in
//! [`crds`]: upstream `ServiceExport` objects carry no `spec` at all (so `spec` must not be
//! required, and [`ServiceExportSpec`] deserializes from a missing field), and the list markers
//! that make server-side apply merge conditions and clusters by key.

use k8s_openapi::api::core::v1::SessionAffinityConfig;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::schema::{ListType, set_list_type, strip_nulls};

/// API group of the MCS kinds.
pub const GROUP: &str = "multicluster.x-k8s.io";
/// API version of the MCS kinds we serve.
pub const VERSION: &str = "v1alpha1";

/// Condition types a controller reports on [`ServiceExportStatus::conditions`].
pub mod condition {
    /// The export is well-formed and its Service exists.
    pub const VALID: &str = "Valid";
    /// The export has been propagated to the cluster set.
    pub const READY: &str = "Ready";
    /// Exports of the same Service in different clusters disagree (ports, type, ...).
    pub const CONFLICT: &str = "Conflict";
}

/// Unused: a ServiceExport is configured by its name and namespace alone.
//
// Upstream `ServiceExport` has no spec; this empty struct exists because the derive needs one.
// It serializes as `{}` and deserializes from `{}`, `null` or an absent `spec` field, so objects
// written by other MCS implementations (or `kubectl apply` of an upstream manifest) read back.
#[derive(CustomResource, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceExport",
    doc = "Exports the Service with the same name and namespace to every cluster of the cluster set.",
    plural = "serviceexports",
    namespaced,
    shortname = "svcex",
    status = "ServiceExportStatus",
    derive = "Default",
    derive = "PartialEq"
)]
pub struct ServiceExportSpec {}

impl<'de> Deserialize<'de> for ServiceExportSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `deserialize_option` is what lets serde's derive treat a *missing* `spec` field like
        // `None` instead of failing with "missing field `spec`".
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ServiceExportSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an empty ServiceExport spec (object, null or absent)")
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(ServiceExportSpec {})
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(ServiceExportSpec {})
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_map(self)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                // Unknown fields are ignored, as the API server would prune them.
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(ServiceExportSpec {})
            }
        }
        deserializer.deserialize_option(Visitor)
    }
}

/// Observed state of a ServiceExport.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceExportStatus {
    /// Current state of the export (Valid, Ready, Conflict), merged by `type`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Desired state of a ServiceImport.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceImport",
    doc = "A Service exported somewhere in the cluster set, as seen from the importing cluster.",
    plural = "serviceimports",
    namespaced,
    shortname = "svcim",
    status = "ServiceImportStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Type","type":"string","description":"The type of this ServiceImport.","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"IP","type":"string","description":"The VIP for this ServiceImport.","jsonPath":".spec.ips"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportSpec {
    /// Ports served by the imported Service (atomic list).
    pub ports: Vec<ServicePort>,
    /// Cluster-set virtual IPs; at most one per IP family in practice. Empty for `Headless`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// How the imported Service is reached.
    #[serde(rename = "type")]
    pub type_: ServiceImportType,
    /// Session affinity, as on a core Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
    /// Session affinity settings, as on a core Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
}

/// A port of a ServiceImport.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name; required when there is more than one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Application protocol hint, e.g. `http`, `kubernetes.io/h2c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// Port number exposed by the imported Service.
    pub port: i32,
}

/// `ServiceImport.spec.type`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ServiceImportType {
    /// Reached through a cluster-set virtual IP.
    #[serde(rename = "ClusterSetIP")]
    ClusterSetIp,
    /// No virtual IP; clients resolve endpoints directly.
    Headless,
}

/// `ServiceImport.spec.sessionAffinity`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SessionAffinity {
    /// Requests from one client IP stick to one endpoint.
    #[serde(rename = "ClientIP")]
    ClientIp,
    /// No affinity.
    None,
}

/// Observed state of a ServiceImport.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportStatus {
    /// Clusters that currently export this Service, merged by `cluster`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterStatus>,
}

/// One exporting cluster of a ServiceImport.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// Name of the exporting cluster.
    pub cluster: String,
}

/// ServiceExport then ServiceImport, with the SSA list markers added.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut export = ServiceExport::crd();
    drop_root_required(&mut export, "spec");
    set_list_type(&mut export, "status.conditions", ListType::Map(&["type"]));

    let mut import = ServiceImport::crd();
    set_list_type(&mut import, "spec.ports", ListType::Atomic);
    set_list_type(&mut import, "spec.ips", ListType::Atomic);
    set_list_type(&mut import, "status.clusters", ListType::Map(&["cluster"]));

    let mut crds = vec![export, import];
    crds.iter_mut().for_each(|c| strip_nulls(c, &[]));
    crds
}

fn drop_root_required(crd: &mut CustomResourceDefinition, field: &str) {
    for version in &mut crd.spec.versions {
        let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        if let Some(required) = root.required.as_mut() {
            required.retain(|r| r != field);
            if required.is_empty() {
                root.required = None;
            }
        }
    }
}
