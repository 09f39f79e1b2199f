//! Extension point for Meridian's own CRDs (`meridian.dev/v1alpha1`).
//!
//! `FailoverPolicy` and `FailoverDrill` arrive with later issues. To add one:
//! 1. define its spec/status in a new module of this crate with `#[derive(CustomResource)]`
//!    (`group = "meridian.dev"`, `version = "v1alpha1"`) and export the types publicly;
//! 2. push `Kind::crd()` (plus any list markers via [`crate::schema`] helpers) in [`crds`];
//! 3. run `UPDATE_CRDS=1 cargo test -p meridian-crds` to write its YAML next to the others.
//!
//! [`crate::all_crds`] already includes whatever [`crds`] returns, after the Gateway API and MCS
//! CRDs, so the binary, the sandbox and the drift test pick new kinds up without other changes.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// API group of Meridian's own kinds.
pub const GROUP: &str = "meridian.dev";

/// Meridian's own CRDs. None exist yet, so this is empty on purpose.
pub fn crds() -> Vec<CustomResourceDefinition> {
    Vec::new()
}
