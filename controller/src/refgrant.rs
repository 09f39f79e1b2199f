//! The one choke point for cross-namespace references.
//!
//! Every reference translation follows from one namespace into another — route backendRefs,
//! mirror backendRefs, listener certificateRefs — asks [`permits`]. A reference inside one
//! namespace is always allowed; across namespaces it needs a ReferenceGrant **in the target's
//! namespace** with some `from` entry matching the referrer (group, kind, namespace) and some `to`
//! entry matching the target (group, kind, and name when the entry names one). Route → Gateway
//! attachment is not a reference in this sense (it is governed by `allowedRoutes`) and never
//! comes here.
//!
//! FailoverDrills use the same rule for the Gateways and ServiceImports their scope names
//! (referrer `meridian.dev`/`FailoverDrill`), through [`permits_in`] on the grants the drill
//! runner keeps.
//!
//! Grants are looked up in the referrer's own cluster: namespaces are only "the same" across
//! clusters for MCS objects, and a grant is a local permission.

use gateway_api::referencegrants::{
    ReferenceGrant, ReferenceGrantFrom, ReferenceGrantSpec, ReferenceGrantTo,
};

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::world::{ClusterState, ObjectKey};

/// The object making a reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefFrom<'a> {
    /// API group of the referrer (`gateway.networking.k8s.io`).
    pub group: &'a str,
    /// Kind of the referrer (`HTTPRoute`, `Gateway`).
    pub kind: &'a str,
    /// Namespace of the referrer.
    pub namespace: &'a str,
}

/// The object referred to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefTo<'a> {
    /// API group of the target (`""` for core).
    pub group: &'a str,
    /// Kind of the target (`Service`, `Secret`, `ServiceImport`).
    pub kind: &'a str,
    /// Namespace of the target.
    pub namespace: &'a str,
    /// Name of the target.
    pub name: &'a str,
}

/// Whether `from` may refer to `to` in this cluster.
pub fn permits(cluster: &ClusterState, from: RefFrom<'_>, to: RefTo<'_>) -> bool {
    permits_in(&cluster.reference_grants, from, to)
}

/// [`permits`] over one cluster's ReferenceGrants (as [`ClusterState`] indexes them).
pub(crate) fn permits_in(
    grants: &BTreeMap<ObjectKey, Arc<ReferenceGrant>>,
    from: RefFrom<'_>,
    to: RefTo<'_>,
) -> bool {
    if from.namespace == to.namespace {
        return true;
    }
    grants_in(grants, to.namespace).any(|grant| grant_allows(grant, from, to))
}

fn grants_in<'c>(
    grants: &'c BTreeMap<ObjectKey, Arc<ReferenceGrant>>,
    namespace: &'c str,
) -> impl Iterator<Item = &'c ReferenceGrant> {
    grants
        .range(ObjectKey::new(namespace, "")..)
        .take_while(move |(k, _)| k.namespace == namespace)
        .map(|(_, g)| g.as_ref())
}

fn grant_allows(grant: &ReferenceGrant, from: RefFrom<'_>, to: RefTo<'_>) -> bool {
    let ReferenceGrantSpec {
        from: froms,
        to: tos,
    } = &grant.spec;
    let from_ok = froms.iter().any(|f| {
        let ReferenceGrantFrom {
            group,
            kind,
            namespace,
        } = f;
        group == from.group && kind == from.kind && namespace == from.namespace
    });
    let to_ok = tos.iter().any(|t| {
        let ReferenceGrantTo { group, kind, name } = t;
        group == to.group && kind == to.kind && name.as_deref().is_none_or(|n| n == to.name)
    });
    from_ok && to_ok
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    const GW_GROUP: &str = "gateway.networking.k8s.io";

    fn grant(ns: &str, from: (&str, &str, &str), to: (&str, &str, Option<&str>)) -> ReferenceGrant {
        ReferenceGrant {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(format!("g-{}", from.1)),
                ..Default::default()
            },
            spec: ReferenceGrantSpec {
                from: vec![ReferenceGrantFrom {
                    group: from.0.into(),
                    kind: from.1.into(),
                    namespace: from.2.into(),
                }],
                to: vec![ReferenceGrantTo {
                    group: to.0.into(),
                    kind: to.1.into(),
                    name: to.2.map(Into::into),
                }],
            },
        }
    }

    const ROUTE_IN_INFRA: RefFrom<'static> = RefFrom {
        group: GW_GROUP,
        kind: "HTTPRoute",
        namespace: "infra",
    };
    const SVC_IN_WEB: RefTo<'static> = RefTo {
        group: "",
        kind: "Service",
        namespace: "web",
        name: "web-backend",
    };

    fn with(g: ReferenceGrant) -> ClusterState {
        let mut c = ClusterState::default();
        c.apply(g);
        c
    }

    #[test]
    fn same_namespace_needs_no_grant() {
        let c = ClusterState::default();
        let to = RefTo {
            namespace: "infra",
            ..SVC_IN_WEB
        };
        assert!(permits(&c, ROUTE_IN_INFRA, to));
    }

    #[test]
    fn cross_namespace_without_grant_is_refused() {
        assert!(!permits(
            &ClusterState::default(),
            ROUTE_IN_INFRA,
            SVC_IN_WEB
        ));
    }

    #[test]
    fn matching_grant_permits_and_deletion_revokes() {
        let mut c = with(grant(
            "web",
            (GW_GROUP, "HTTPRoute", "infra"),
            ("", "Service", Some("web-backend")),
        ));
        assert!(permits(&c, ROUTE_IN_INFRA, SVC_IN_WEB));
        c.delete::<ReferenceGrant>(&ObjectKey::new("web", "g-HTTPRoute"));
        assert!(!permits(&c, ROUTE_IN_INFRA, SVC_IN_WEB));
    }

    #[test]
    fn grant_without_name_covers_every_object_of_the_kind() {
        let c = with(grant(
            "web",
            (GW_GROUP, "HTTPRoute", "infra"),
            ("", "Service", None),
        ));
        assert!(permits(&c, ROUTE_IN_INFRA, SVC_IN_WEB));
        assert!(permits(
            &c,
            ROUTE_IN_INFRA,
            RefTo {
                name: "other",
                ..SVC_IN_WEB
            }
        ));
    }

    /// The seven invalid grants of the conformance catalogue (HTTPRouteInvalidReferenceGrant and
    /// GatewaySecretInvalidReferenceGrant): each is wrong in exactly one field.
    #[test]
    fn each_wrong_field_refuses() {
        let good_from = (GW_GROUP, "HTTPRoute", "infra");
        let good_to = ("", "Service", Some("web-backend"));
        let cases: Vec<(&str, ReferenceGrant)> = vec![
            (
                "grant in the route's own namespace",
                grant("infra", good_from, good_to),
            ),
            (
                "from.group wrong",
                grant("web", ("not-the-group.io", "HTTPRoute", "infra"), good_to),
            ),
            (
                "from.kind Gateway",
                grant("web", (GW_GROUP, "Gateway", "infra"), good_to),
            ),
            (
                "from.namespace wrong",
                grant("web", (GW_GROUP, "HTTPRoute", "elsewhere"), good_to),
            ),
            (
                "to.group wrong",
                grant(
                    "web",
                    good_from,
                    ("not-the-group.io", "Service", Some("web-backend")),
                ),
            ),
            (
                "to.kind Secret",
                grant("web", good_from, ("", "Secret", Some("web-backend"))),
            ),
            (
                "to.name wrong",
                grant("web", good_from, ("", "Service", Some("not-web-backend"))),
            ),
        ];
        for (why, g) in cases {
            assert!(
                !permits(&with(g), ROUTE_IN_INFRA, SVC_IN_WEB),
                "{why} must not permit"
            );
        }
        // Sanity: the unmodified grant does permit.
        assert!(permits(
            &with(grant("web", good_from, good_to)),
            ROUTE_IN_INFRA,
            SVC_IN_WEB
        ));
    }

    /// Mirror of the above for a Gateway referring to a Secret.
    #[test]
    fn gateway_secret_grant_fields() {
        let from = RefFrom {
            group: GW_GROUP,
            kind: "Gateway",
            namespace: "infra",
        };
        let to = RefTo {
            group: "",
            kind: "Secret",
            namespace: "web",
            name: "certificate",
        };
        let good_from = (GW_GROUP, "Gateway", "infra");
        let good_to = ("", "Secret", Some("certificate"));
        assert!(permits(&with(grant("web", good_from, good_to)), from, to));
        assert!(permits(
            &with(grant("web", good_from, ("", "Secret", None))),
            from,
            to
        ));
        let bad = [
            grant("infra", good_from, good_to),
            grant("web", ("wrong.io", "Gateway", "infra"), good_to),
            grant("web", (GW_GROUP, "HTTPRoute", "infra"), good_to),
            grant("web", (GW_GROUP, "Gateway", "elsewhere"), good_to),
            grant(
                "web",
                good_from,
                ("wrong.io", "Secret", Some("certificate")),
            ),
            grant("web", good_from, ("", "Service", Some("certificate"))),
            grant("web", good_from, ("", "Secret", Some("other"))),
        ];
        for g in bad {
            assert!(!permits(&with(g.clone()), from, to), "{g:?}");
        }
    }

    #[test]
    fn grants_of_other_namespaces_do_not_leak() {
        // A grant in "web2" (a namespace whose name sorts right after "web") must not count for "web".
        let c = with(grant(
            "web2",
            (GW_GROUP, "HTTPRoute", "infra"),
            ("", "Service", None),
        ));
        assert!(!permits(&c, ROUTE_IN_INFRA, SVC_IN_WEB));
    }
}
