//! Backend references → endpoints.
//!
//! ```text
//! backendRef ─ group/kind ─┬─ ""/Service ───────────────► this cluster's EndpointSlices of the Service
//!                          ├─ multicluster.x-k8s.io/ ────► every cluster that exports ns/name:
//!                          │  ServiceImport                  its EndpointSlices, tagged with cluster/region
//!                          └─ anything else ──────────────► InvalidKind
//! ```
//!
//! Order of checks, each giving its `ResolvedRefs=False` reason: kind (**InvalidKind**), then the
//! ReferenceGrant for a cross-namespace ref (**RefNotPermitted**, via [`crate::refgrant::permits`]),
//! then existence of the object and its port (**BackendNotFound**), then the port's appProtocol
//! (**UnsupportedProtocol** for TLS upstreams, which the proxy does not originate).
//!
//! Endpoints never come from a ClusterIP: the Service port is mapped by *name* to the slice port,
//! which is what makes headless and selector-less Services (hand-written slices) work. A Service
//! that exists but has no ready endpoint resolves fine (the proxy answers 503, not 500).
//!
//! Endpoint address policy: an EndpointSlice can name any address, and the proxy would connect
//! to it from inside the edge. Loopback (the proxy's own host and listeners), link-local
//! (`169.254.0.0/16`, `fe80::/10`: cloud metadata services), unspecified (`0.0.0.0` connects to
//! the local host) and multicast addresses are left out of every snapshot ([`admit`]); loopback
//! ones are kept with `meridian controller --allow-loopback-endpoints` (`meridian up`, tests).
//! The HTTPRoute names them in a Meridian condition on each parent,
//! `meridian.dev/EndpointsRefused=True` reason `RefusedAddress` (the Gateway API has no
//! condition for one refused address of a resolved backend: the reference itself resolves, so
//! `ResolvedRefs` stays as it is). A backend left with no endpoint answers 503 like any backend
//! without a ready endpoint. The endpoint-only refresh path applies the same filter.
//!
//! A `port` is required for both kinds (the upstream CRD enforces it for Services with CEL); a
//! missing port is reported as **BackendNotFound** ("no port given"), since no Service port can be
//! found — the spec names no dedicated reason.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort,
};
use meridian_model::snapshot::{BackendProtocol, BackendTarget, Endpoint, RouteKind};

use super::{Ctx, Problem};
use crate::refgrant::{self, RefFrom, RefTo};
use crate::status::GATEWAY_GROUP;
use crate::world::{ClusterState, ObjectKey, World};

/// Group of the MCS kinds.
pub(crate) const MCS_GROUP: &str = meridian_crds::mcs::GROUP;

/// A backend reference with group and kind defaulted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BackendRef<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub port: Option<i32>,
}

impl BackendRef<'_> {
    /// Display name for logs, metrics and `explain`: `ns/name:port`.
    pub fn display(&self) -> String {
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        match (self.group, self.kind) {
            ("", "Service") => format!("{}/{}{port}", self.namespace, self.name),
            (MCS_GROUP, "ServiceImport") => {
                format!("{}/{}{port} (ServiceImport)", self.namespace, self.name)
            }
            (g, k) => format!("{}/{}{port} ({k}.{g})", self.namespace, self.name),
        }
    }
}

type Resolved = Result<(BackendProtocol, Vec<Endpoint>), Problem>;

/// Resolution results of one translation pass, shared by every route of a cluster (the grant
/// check is not cached: it depends on the referring route).
#[derive(Default)]
pub(crate) struct Cache {
    map: HashMap<(String, String, String, String, Option<i32>), Resolved>,
    /// Endpoints refused by the address policy since the last route took them.
    pub refused: Vec<String>,
    /// Whether the address policy refused any endpoint in this pass.
    pub refused_any: bool,
    /// Kind of the route whose references are being resolved (the ReferenceGrant `from` kind);
    /// set by rule translation for each route.
    pub referrer: RouteKind,
}

/// Why an endpoint address is never a backend (module docs), `None` when it may be one.
pub(crate) fn refused_address(ip: IpAddr, allow_loopback: bool) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_multicast() {
        return Some("multicast");
    }
    if ip.is_loopback() && !allow_loopback {
        return Some("loopback");
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    link_local.then_some("link-local")
}

/// Splits `endpoints` into those the address policy admits and the refused ones, named
/// `address:port (why)`.
pub(crate) fn admit(endpoints: &[Endpoint], allow_loopback: bool) -> (Vec<Endpoint>, Vec<String>) {
    let mut refused = Vec::new();
    let kept = endpoints
        .iter()
        .filter(|e| match refused_address(e.address, allow_loopback) {
            Some(why) => {
                refused.push(format!(
                    "{} ({why})",
                    std::net::SocketAddr::new(e.address, e.port)
                ));
                false
            }
            None => true,
        })
        .cloned()
        .collect();
    (kept, refused)
}

/// Resolves a reference made by a route (of kind `cache.referrer`) in `route_namespace`. Endpoints the address policy
/// refuses are left out and named in `cache.refused` (`<backend>: <address> (why), …`), which
/// the route's translation takes after each route.
pub(crate) fn resolve(
    ctx: &Ctx<'_>,
    route_namespace: &str,
    r: BackendRef<'_>,
    cache: &mut Cache,
) -> Result<BackendTarget, Problem> {
    let supported = matches!(
        (r.group, r.kind),
        ("", "Service") | (MCS_GROUP, "ServiceImport")
    );
    if !supported {
        return Err(Problem::new(
            "InvalidKind",
            format!(
                "backendRef {}: kind {:?} of group {:?} is not supported (Service or ServiceImport)",
                r.display(),
                r.kind,
                r.group
            ),
        ));
    }
    let from = RefFrom {
        group: GATEWAY_GROUP,
        kind: cache.referrer.as_str(),
        namespace: route_namespace,
    };
    let to = RefTo {
        group: r.group,
        kind: r.kind,
        namespace: r.namespace,
        name: r.name,
    };
    if !refgrant::permits(ctx.cluster, from, to) {
        return Err(Problem::new(
            "RefNotPermitted",
            format!(
                "backendRef {}: no ReferenceGrant in namespace {:?} allows {}s from {:?}",
                r.display(),
                r.namespace,
                cache.referrer.as_str(),
                route_namespace
            ),
        ));
    }
    let key = (
        r.group.to_string(),
        r.kind.to_string(),
        r.namespace.to_string(),
        r.name.to_string(),
        r.port,
    );
    let resolved = cache
        .map
        .entry(key)
        .or_insert_with(|| resolve_uncached(ctx, r));
    match resolved {
        Ok((protocol, endpoints)) => {
            let (endpoints, bad) = admit(endpoints, ctx.cfg.allow_loopback_endpoints);
            if !bad.is_empty() {
                cache.refused_any = true;
                cache
                    .refused
                    .push(format!("{}: {}", r.display(), bad.join(", ")));
            }
            Ok(super::failover::backend_target(
                ctx,
                r.namespace,
                r.group,
                r.kind,
                r.name,
                *protocol,
                &endpoints,
            ))
        }
        Err(p) => Err(p.clone()),
    }
}

fn resolve_uncached(ctx: &Ctx<'_>, r: BackendRef<'_>) -> Resolved {
    let Some(port) = r.port else {
        return Err(Problem::new(
            "BackendNotFound",
            format!(
                "backendRef {}: no port given; a {} backendRef must name one of its ports",
                r.display(),
                r.kind
            ),
        ));
    };
    let key = ObjectKey::new(r.namespace, r.name);
    if r.kind == "Service" {
        return service_endpoints(ctx.cluster_name, ctx.cluster, &key, port);
    }
    import_endpoints(ctx.world, &key, port, &r.display())
}

/// The endpoints of ServiceImport `key` port `port`: namespace sameness — the same ns/name
/// exported from any member cluster, each endpoint tagged with its cluster.
pub(crate) fn import_endpoints(
    world: &World,
    key: &ObjectKey,
    port: i32,
    display: &str,
) -> Resolved {
    let mut protocol = None;
    let mut endpoints = Vec::new();
    let mut exporters = 0;
    let mut failures = Vec::new();
    for (name, cluster) in &world.clusters {
        if !cluster.exports(key) {
            continue;
        }
        exporters += 1;
        match service_endpoints(name, cluster, key, port) {
            Ok((p, eps)) => {
                protocol.get_or_insert(p);
                endpoints.extend(eps);
            }
            Err(e) => failures.push(format!("{name}: {}", e.message)),
        }
    }
    match protocol {
        Some(p) => Ok((p, endpoints)),
        None if exporters == 0 => Err(Problem::new(
            "BackendNotFound",
            format!("backendRef {display}: no member cluster exports {key}"),
        )),
        None => Err(Problem::new(
            "BackendNotFound",
            format!(
                "backendRef {display}: no exporting cluster has a usable Service ({})",
                failures.join("; ")
            ),
        )),
    }
}

/// The endpoints of Service `key` port `port` in one cluster, tagged with that cluster.
pub(crate) fn service_endpoints(
    cluster_name: &str,
    cluster: &ClusterState,
    key: &ObjectKey,
    port: i32,
) -> Resolved {
    let Some(svc) = cluster.services.get(key) else {
        return Err(Problem::new(
            "BackendNotFound",
            format!("Service {key} not found in cluster {cluster_name}"),
        ));
    };
    let Service { spec, .. } = svc.as_ref();
    let ports = spec.as_ref().and_then(|s: &ServiceSpec| s.ports.as_ref());
    let Some(sport) = ports.into_iter().flatten().find(|p| p.port == port) else {
        return Err(Problem::new(
            "BackendNotFound",
            format!("Service {key} has no port {port} in cluster {cluster_name}"),
        ));
    };
    let ServicePort {
        app_protocol,
        name: port_name,
        ..
    } = sport;
    let protocol = backend_protocol(app_protocol.as_deref()).map_err(|UnsupportedAppProtocol(ap)| {
        Problem::new(
            "UnsupportedProtocol",
            format!("Service {key} port {port} has appProtocol {ap:?}; the proxy speaks only cleartext HTTP/1.1 and h2c to backends"),
        )
    })?;
    let port_name = port_name.as_deref().unwrap_or("");

    // (address, port) → endpoint; a pod can appear in two slices while they are being rebalanced,
    // and then it is ready if either says so.
    let mut found: BTreeMap<(IpAddr, u16), Endpoint> = BTreeMap::new();
    for slice in cluster.endpoint_slices_of(key) {
        if slice.address_type == "FQDN" {
            continue;
        }
        let Some(target) = slice.ports.iter().flatten().find_map(|p| {
            let EndpointPort { name, port, .. } = p;
            (name.as_deref().unwrap_or("") == port_name)
                .then_some(*port)
                .flatten()
        }) else {
            continue;
        };
        let Ok(target) = u16::try_from(target) else {
            continue;
        };
        if target == 0 {
            continue;
        }
        for ep in slice.endpoints.iter().flatten() {
            let SliceEndpoint {
                addresses,
                conditions,
                zone,
                ..
            } = ep;
            let ready = conditions
                .as_ref()
                .and_then(|c: &EndpointConditions| c.ready)
                .unwrap_or(true);
            for addr in addresses {
                let Ok(address) = addr.parse::<IpAddr>() else {
                    continue;
                };
                found
                    .entry((address, target))
                    .and_modify(|e| e.ready |= ready)
                    .or_insert_with(|| Endpoint {
                        address,
                        port: target,
                        cluster: cluster_name.to_string(),
                        region: cluster.region.clone(),
                        zone: zone.clone().unwrap_or_default(),
                        ready,
                        east_west: false,
                    });
            }
        }
    }
    Ok((protocol, found.into_values().collect()))
}

/// An `appProtocol` the proxy cannot speak to a backend (TLS upstreams).
#[derive(Debug, thiserror::Error)]
#[error("appProtocol {0:?} is not spoken to backends")]
struct UnsupportedAppProtocol(String);

/// Maps a Service port's `appProtocol` to how the proxy talks to it.
fn backend_protocol(app_protocol: Option<&str>) -> Result<BackendProtocol, UnsupportedAppProtocol> {
    match app_protocol {
        Some("kubernetes.io/h2c") => Ok(BackendProtocol::H2c),
        Some(p @ ("https" | "HTTPS" | "kubernetes.io/wss" | "kubernetes.io/tls")) => {
            Err(UnsupportedAppProtocol(p.to_string()))
        }
        // `http`, `kubernetes.io/ws` (upgrades pass through HTTP/1.1) and unknown hints.
        _ => Ok(BackendProtocol::Http1),
    }
}
