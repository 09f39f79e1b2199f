//! Gateway API CRDs (standard channel) built from the `gateway-api` crate's types.
//!
//! Flow for each kind:
//! 1. `Kind::crd()` gives a CRD with one served+storage version `v1`, the derived schema and (where
//!    the type has one) the `status` subresource.
//! 2. [`decorate`] adds what upstream expresses with kubebuilder markers and the derive cannot
//!    know: short names, the `gateway-api` category, printer columns, the bundle annotations, the
//!    extra served `v1beta1` version, and the SSA list markers our status writers rely on.
//! 3. [`crate::schema::strip_nulls`] removes the `null` enum members and `nullable` flags schemars
//!    renders for `Option<T>`, and [`crate::gateway_rules`] adds the standard channel's
//!    validation, defaults and CEL rules.

use gateway_api::{
    backendtlspolicies::BackendTlsPolicy, gatewayclasses::GatewayClass, gateways::Gateway,
    grpcroutes::GrpcRoute, httproutes::HttpRoute, listenersets::ListenerSet,
    referencegrants::ReferenceGrant, tlsroutes::TlsRoute,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition,
};
use kube::CustomResourceExt;

use crate::schema::{
    ListType, add_served_alias_version, age_column, column, set_list_type, set_printer_columns,
    strip_nulls,
};

/// The Gateway API release whose field set the `gateway-api` 0.22 crate was generated from.
pub const BUNDLE_VERSION: &str = "v1.5.1";
/// The release channel of the types we install.
pub const CHANNEL: &str = "standard";
/// The category every Gateway API kind is listed under (`kubectl get gateway-api`).
pub const CATEGORY: &str = "gateway-api";
/// Older API version still served next to the `v1` storage version.
pub const LEGACY_VERSION: &str = "v1beta1";

/// Annotation keys upstream puts on every Gateway API CRD.
pub const BUNDLE_VERSION_ANNOTATION: &str = "gateway.networking.k8s.io/bundle-version";
/// See [`BUNDLE_VERSION_ANNOTATION`].
pub const CHANNEL_ANNOTATION: &str = "gateway.networking.k8s.io/channel";
/// A real API server refuses CRDs in a `*.k8s.io` group without this annotation (the group is
/// protected); the value is the approval reference upstream's v1.5 CRDs carry.
pub const API_APPROVED_ANNOTATION: &str = "api-approved.kubernetes.io";
const API_APPROVED_VALUE: &str = "https://github.com/kubernetes-sigs/gateway-api/pull/4530";

/// What one kind needs on top of its derived CRD.
struct Decoration {
    /// Replaces the derive's placeholder root description ("Auto-generated derived type ...").
    description: &'static str,
    short_names: &'static [&'static str],
    columns: Vec<CustomResourceColumnDefinition>,
    lists: &'static [(&'static str, ListType)],
}

/// Kinds in [`undecorated_validation`] that upstream serves as `v1` only (no `v1beta1` alias):
/// GRPCRoute went from `v1alpha2` (experimental channel) straight to `v1`. TLSRoute and
/// BackendTLSPolicy, also `v1` only, come from [`v1_only`].
const V1_ONLY: &[&str] = &["GRPCRoute"];

/// GatewayClass, Gateway, HTTPRoute, GRPCRoute, ReferenceGrant, ListenerSet, TLSRoute and
/// BackendTLSPolicy, in that order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    crds_and_misses().0
}

/// [`crds`], plus the validation paths that did not resolve (empty unless the `gateway-api`
/// types changed under us).
pub fn crds_and_misses() -> (Vec<CustomResourceDefinition>, Vec<String>) {
    let mut misses = Vec::new();
    let mut crds = Vec::new();
    for mut crd in undecorated_validation() {
        if crd.spec.names.kind == "HTTPRoute" {
            misses.extend(crate::rule_extras::add_rule_fields(&mut crd));
        }
        strip_nulls(&mut crd, &[]);
        misses.extend(crate::gateway_rules::apply(&mut crd));
        // Last, so the alias inherits columns, markers and validation from the storage version.
        if !V1_ONLY.contains(&crd.spec.names.kind.as_str()) {
            add_served_alias_version(&mut crd, LEGACY_VERSION);
        }
        crds.push(crd);
    }
    for mut crd in v1_only() {
        strip_nulls(&mut crd, &[]);
        misses.extend(crate::gateway_rules::apply(&mut crd));
        crds.push(crd);
    }
    (crds, misses)
}

/// Kinds that upstream serves only as `v1` (no `v1beta1` alias): TLSRoute and ListenerSet
/// (standard channel since v1.5, experimental before) and BackendTLSPolicy.
fn v1_only() -> Vec<CustomResourceDefinition> {
    vec![
        decorate(
            ListenerSet::crd(),
            Decoration {
                description: "Listeners added to a Gateway from another object (and namespace), when the Gateway's allowedListeners admits them.",
                short_names: &["lset"],
                columns: vec![
                    column(
                        "Accepted",
                        "string",
                        r#".status.conditions[?(@.type=="Accepted")].status"#,
                        0,
                    ),
                    column(
                        "Programmed",
                        "string",
                        r#".status.conditions[?(@.type=="Programmed")].status"#,
                        0,
                    ),
                    age_column(),
                ],
                lists: &[
                    ("spec.listeners", ListType::Map(&["name"])),
                    ("status.conditions", ListType::Map(&["type"])),
                    ("status.listeners", ListType::Map(&["name"])),
                    ("status.listeners[].conditions", ListType::Map(&["type"])),
                    ("status.listeners[].supportedKinds", ListType::Atomic),
                ],
            },
        ),
        decorate(
            TlsRoute::crd(),
            Decoration {
                description: "Rules that send TLS connections, chosen by the SNI of their ClientHello, to backends without terminating them.",
                short_names: &[],
                columns: vec![
                    column("Hostnames", "string", ".spec.hostnames", 0),
                    age_column(),
                ],
                lists: &[
                    ("status.parents", ListType::Atomic),
                    ("status.parents[].conditions", ListType::Map(&["type"])),
                ],
            },
        ),
        decorate(
            BackendTlsPolicy::crd(),
            Decoration {
                description: "How a Gateway connects to a backend Service over TLS: the name to send and verify, and the CA to trust.",
                short_names: &["btlspolicy"],
                columns: vec![age_column()],
                lists: &[
                    ("status.ancestors", ListType::Atomic),
                    ("status.ancestors[].conditions", ListType::Map(&["type"])),
                ],
            },
        ),
    ]
}

fn undecorated_validation() -> Vec<CustomResourceDefinition> {
    vec![
        decorate(
            GatewayClass::crd(),
            Decoration {
                description: "A class of Gateways, managed by the controller named in spec.controllerName.",
                short_names: &["gc"],
                columns: vec![
                    column("Controller", "string", ".spec.controllerName", 0),
                    column(
                        "Accepted",
                        "string",
                        r#".status.conditions[?(@.type=="Accepted")].status"#,
                        0,
                    ),
                    age_column(),
                    column("Description", "string", ".spec.description", 1),
                ],
                lists: &[
                    ("status.conditions", ListType::Map(&["type"])),
                    ("status.supportedFeatures", ListType::Map(&["name"])),
                ],
            },
        ),
        decorate(
            Gateway::crd(),
            Decoration {
                description: "A request for traffic-handling infrastructure: listeners bound to addresses, to which routes attach.",
                short_names: &["gtw"],
                columns: vec![
                    column("Class", "string", ".spec.gatewayClassName", 0),
                    column("Address", "string", ".status.addresses[*].value", 0),
                    column(
                        "Programmed",
                        "string",
                        r#".status.conditions[?(@.type=="Programmed")].status"#,
                        0,
                    ),
                    age_column(),
                ],
                lists: &[
                    ("spec.listeners", ListType::Map(&["name"])),
                    ("status.conditions", ListType::Map(&["type"])),
                    ("status.addresses", ListType::Atomic),
                    ("status.listeners", ListType::Map(&["name"])),
                    ("status.listeners[].conditions", ListType::Map(&["type"])),
                    ("status.listeners[].supportedKinds", ListType::Atomic),
                ],
            },
        ),
        decorate(
            HttpRoute::crd(),
            Decoration {
                description: "Rules that match HTTP requests by host, path, method, headers and query, and send them to backends.",
                short_names: &[],
                columns: vec![
                    column("Hostnames", "string", ".spec.hostnames", 0),
                    age_column(),
                ],
                lists: &[
                    ("status.parents", ListType::Atomic),
                    ("status.parents[].conditions", ListType::Map(&["type"])),
                ],
            },
        ),
        decorate(
            GrpcRoute::crd(),
            Decoration {
                description: "Rules that match gRPC calls by host, service, method and headers, and send them to backends.",
                short_names: &[],
                columns: vec![
                    column("Hostnames", "string", ".spec.hostnames", 0),
                    age_column(),
                ],
                lists: &[
                    ("status.parents", ListType::Atomic),
                    ("status.parents[].conditions", ListType::Map(&["type"])),
                ],
            },
        ),
        decorate(
            ReferenceGrant::crd(),
            Decoration {
                description: "Allows objects in other namespaces to reference objects in this namespace.",
                short_names: &["refgrant"],
                columns: vec![age_column()],
                lists: &[],
            },
        ),
    ]
}

fn decorate(mut crd: CustomResourceDefinition, d: Decoration) -> CustomResourceDefinition {
    let annotations = crd
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.insert(API_APPROVED_ANNOTATION.into(), API_APPROVED_VALUE.into());
    annotations.insert(BUNDLE_VERSION_ANNOTATION.into(), BUNDLE_VERSION.into());
    annotations.insert(CHANNEL_ANNOTATION.into(), CHANNEL.into());

    for version in &mut crd.spec.versions {
        if let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            root.description = Some(d.description.into());
        }
    }

    let names = &mut crd.spec.names;
    names.short_names =
        (!d.short_names.is_empty()).then(|| d.short_names.iter().map(|s| (*s).into()).collect());
    names.categories = Some(vec![CATEGORY.into()]);

    set_printer_columns(&mut crd, &d.columns);
    for (path, list_type) in d.lists {
        set_list_type(&mut crd, path, *list_type);
    }
    crd
}
