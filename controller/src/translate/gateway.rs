//! GatewayClasses and Gateways: ownership, listener validation, status and the served listeners.
//!
//! A Gateway is translated in two halves around route attachment:
//!
//! 1. [`build_all`] validates every Gateway of an owned class into a [`GatewayState`]: gateway
//!    problems (`InvalidParameters`, `UnsupportedAddress`, …), and per listener the protocol, port,
//!    hostname, allowed route kinds, TLS certificate references and conflicts with its siblings.
//! 2. Routes attach (see [`super::route`]), filling each listener's attached set and routes.
//! 3. [`finish`] computes the Gateway's conditions, listener status (with `attachedRoutes`,
//!    counted on invalid listeners too) and the snapshot entry with only the served listeners.
//!
//! A listener is *valid* when Accepted, ResolvedRefs and not Conflicted; it is *served* when it
//! is Accepted, not Conflicted and has what the proxy needs to bind it (an HTTPS listener needs at
//! least one usable certificate). A listener whose only fault is an unsupported route kind next to
//! a supported one is still served. HTTP and HTTPS listeners take HTTPRoute and GRPCRoute by
//! default (`supportedKinds` lists both); `allowedRoutes.kinds` narrows them.
//!
//! A `TLS` listener with `tls.mode: Passthrough` is served as [`Protocol::Tls`]: it takes
//! TLSRoutes only (its default and only kind; HTTPRoute or GRPCRoute named there are
//! `InvalidRouteKinds`), needs no certificate (`certificateRefs` are not read: the proxy never
//! terminates its connections). `tls.mode: Terminate` on a `TLS` listener (TLSRoute's
//! extended `TLSRouteModeTerminate`, which we do not claim) is `Accepted=False/UnsupportedValue`
//! with no supported kinds, so nothing attaches to it.
//!
//! Routes in a served listener are ordered by namespace, name, then kind (an HTTPRoute and a
//! GRPCRoute may share a name), as module `incremental` keeps them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use gateway_api::gatewayclasses::{
    GatewayClass, GatewayClassSpec, GatewayClassStatus, GatewayClassStatusSupportedFeatures,
};
use gateway_api::gateways::*;
use meridian_model::hostname;
use meridian_model::snapshot::{self as model, Certificate, ListenerTls, Protocol, RouteKind};

use super::listener_set::{self, SetState};
use super::selector::Selector;
use super::{ClusterGatewayRef, Ctx, Problem, ProgrammedState, generation_of};
use crate::refgrant::{self, RefFrom, RefTo};
use crate::status::{
    Cond, GATEWAY_GROUP, StatusKind, StatusUpdate, eq_ignoring_time, is_stale, merge_conditions,
    stamp_all,
};
use crate::world::{ClusterState, ObjectKey, RouteKey};

/// Computes the status of our GatewayClasses and returns them with whether each is accepted.
pub(crate) fn classes(ctx: &Ctx<'_>, out: &mut Vec<StatusUpdate>) -> BTreeMap<String, bool> {
    let mut owned = BTreeMap::new();
    for (name, class) in &ctx.cluster.gateway_classes {
        let GatewayClass {
            metadata,
            spec,
            status,
        } = class.as_ref();
        let GatewayClassSpec {
            controller_name,
            description: _,
            parameters_ref,
        } = spec;
        if *controller_name != ctx.cfg.controller_name {
            continue;
        }
        let generation = generation_of(metadata);
        let accepted = match parameters_ref {
            Some(p) => Cond::new(
                "Accepted",
                false,
                "InvalidParameters",
                format!(
                    "parametersRef {}/{} {:?}: Meridian GatewayClasses take no parameters",
                    p.group, p.kind, p.name
                ),
            ),
            None => Cond::new(
                "Accepted",
                true,
                "Accepted",
                "Meridian serves Gateways of this class",
            ),
        };
        owned.insert(name.clone(), accepted.status);
        let old = status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default();
        if is_stale(old, generation) {
            continue;
        }
        let mut features: Vec<String> = ctx.cfg.supported_features.clone();
        features.sort();
        features.dedup();
        let new = GatewayClassStatus {
            conditions: Some(merge_conditions(
                old,
                stamp_all(vec![accepted], generation, ctx.cfg.now),
                ctx.cfg.now,
            )),
            supported_features: Some(
                features
                    .into_iter()
                    .map(|name| GatewayClassStatusSupportedFeatures { name })
                    .collect(),
            ),
        };
        push_if_changed(
            ctx,
            out,
            StatusKind::GatewayClass,
            None,
            name,
            generation,
            status.as_ref(),
            &new,
        );
    }
    owned
}

/// Serializes `new` and queues it when it differs from `old` beyond timestamps (or, for an
/// object with an unconfirmed status of ours, reports it as [`StatusUpdate::settles`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn push_if_changed<T: serde::Serialize + PartialEq>(
    ctx: &Ctx<'_>,
    out: &mut Vec<StatusUpdate>,
    kind: StatusKind,
    namespace: Option<&str>,
    name: &str,
    generation: i64,
    old: Option<&T>,
    new: &T,
) {
    let unconfirmed = || {
        let key = (
            kind,
            namespace.unwrap_or_default().to_string(),
            name.to_string(),
        );
        ctx.cfg
            .unconfirmed
            .get(ctx.cluster_name)
            .is_some_and(|keys| keys.contains(&key))
    };
    // The usual case once a status is written (every echo of our own write translated again):
    // the copy says exactly this, timestamps included. Equal as typed values means equal as
    // JSON, so neither side has to be serialized to tell.
    let identical = old.is_some_and(|o| o == new);
    if identical && !unconfirmed() {
        return;
    }
    let Ok(new) = serde_json::to_value(new) else {
        // Status types are plain data; serialization cannot fail. Stay silent rather than panic.
        return;
    };
    let settles = identical
        || old
            .and_then(|o| serde_json::to_value(o).ok())
            .is_some_and(|o| eq_ignoring_time(&o, &new));
    if settles && !identical && !unconfirmed() {
        return;
    }
    out.push(StatusUpdate {
        cluster: ctx.cluster_name.to_string(),
        kind,
        namespace: namespace.map(str::to_string),
        name: name.to_string(),
        generation,
        status: std::sync::Arc::new(new),
        settles,
    });
}

/// Which namespaces may attach routes to a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AllowedNamespaces {
    Same,
    All,
    /// `None`: `from: Selector` without a selector, which admits nobody.
    Selector(Option<Selector>),
}

/// One listener during translation.
#[derive(Clone, Debug)]
pub(crate) struct ListenerState {
    pub name: String,
    /// `spec.port` as written (compared with parentRef `port`).
    pub spec_port: i32,
    /// Validated port (0 when invalid).
    pub port: u16,
    /// `None`: unsupported protocol.
    pub protocol: Option<Protocol>,
    /// Lower-cased hostname.
    pub hostname: Option<String>,
    pub accepted: Option<Problem>,
    pub resolved: Option<Problem>,
    pub conflicted: Option<Problem>,
    /// Whether HTTPRoute is among the listener's route kinds.
    pub http_route_kind: bool,
    /// Whether GRPCRoute is among the listener's route kinds.
    pub grpc_route_kind: bool,
    /// Whether TLSRoute is among the listener's route kinds (passthrough listeners only).
    pub tls_route_kind: bool,
    pub allowed: AllowedNamespaces,
    pub certificates: Vec<Certificate>,
    /// Routes attached (Accepted) through this listener.
    pub attached: BTreeSet<RouteKey>,
    /// Snapshot routes (only filled while the listener is served).
    pub routes: Vec<Arc<model::Route>>,
    /// `false` for a second listener with an already used name: it gets no status entry.
    pub has_status: bool,
    /// `None`: declared by the Gateway; `Some(i)`: by its attached ListenerSet `sets[i]`.
    pub set: Option<usize>,
    /// Namespace of the object declaring the listener: `allowedRoutes` `Same` means this one,
    /// and certificateRefs without a namespace resolve in it.
    pub home: String,
}

impl ListenerState {
    pub fn valid(&self) -> bool {
        self.has_status
            && self.accepted.is_none()
            && self.resolved.is_none()
            && self.conflicted.is_none()
    }

    pub fn served(&self) -> bool {
        self.has_status
            && self.accepted.is_none()
            && self.conflicted.is_none()
            && match self.protocol {
                Some(Protocol::Http) => true,
                Some(Protocol::Https) => !self.certificates.is_empty(),
                Some(Protocol::Tls) => true,
                None => false,
            }
    }

    /// Whether routes of `kind` may attach, per `allowedRoutes.kinds` (or the protocol's
    /// defaults: HTTPRoute and GRPCRoute on HTTP and HTTPS, TLSRoute on TLS passthrough).
    pub fn allows_kind(&self, kind: RouteKind) -> bool {
        match kind {
            RouteKind::Http => self.http_route_kind,
            RouteKind::Grpc => self.grpc_route_kind,
            RouteKind::Tls => self.tls_route_kind,
        }
    }

    /// Whether routes of `route_ns` may attach, per `allowedRoutes.namespaces` (`Same`: the
    /// namespace of the Gateway or ListenerSet declaring the listener).
    pub fn admits(&self, route_ns: &str, cluster: &ClusterState) -> bool {
        match &self.allowed {
            AllowedNamespaces::Same => route_ns == self.home,
            AllowedNamespaces::All => true,
            AllowedNamespaces::Selector(None) => false,
            AllowedNamespaces::Selector(Some(s)) => s.matches(&cluster.namespace_labels(route_ns)),
        }
    }
}

/// One Gateway of an owned class during translation. Owned (the Gateway is shared with the
/// index), so incremental translation can keep it between passes (module `incremental`).
#[derive(Clone)]
pub(crate) struct GatewayState {
    pub key: ObjectKey,
    pub gateway: Arc<Gateway>,
    pub generation: i64,
    /// Why the Gateway is not Accepted (before looking at listeners).
    pub problem: Option<Problem>,
    /// Why the Gateway cannot be Programmed whatever the data plane says (addresses).
    pub address_problem: Option<Problem>,
    pub addresses: Vec<IpAddr>,
    pub listeners: Vec<ListenerState>,
    /// Gateway-level references (the backend client certificate): `None` when there are none,
    /// `Some(None)` when they resolve.
    pub refs: Option<Option<Problem>>,
    /// The ListenerSets whose parentRef names this Gateway, in precedence order (creation time,
    /// then namespace/name; module `listener_set`). Only the allowed ones add listeners.
    pub sets: Vec<SetState>,
}

/// Validates every Gateway of an owned class.
pub(crate) fn build_all(
    ctx: &Ctx<'_>,
    classes: &BTreeMap<String, bool>,
) -> BTreeMap<ObjectKey, GatewayState> {
    let mut out = BTreeMap::new();
    let mut sets = listener_set::by_gateway(ctx.cluster);
    for (key, gw) in &ctx.cluster.gateways {
        let Some(class_accepted) = classes.get(&gw.spec.gateway_class_name) else {
            continue;
        };
        let sets = sets.remove(key).unwrap_or_default();
        out.insert(key.clone(), build(ctx, key, gw, *class_accepted, sets));
    }
    out
}

/// Validates one Gateway: its own problems, addresses, gateway-level references and
/// listeners (with conflicts between them).
fn build(
    ctx: &Ctx<'_>,
    key: &ObjectKey,
    gw: &Arc<Gateway>,
    class_accepted: bool,
    mut sets: Vec<SetState>,
) -> GatewayState {
    let GatewaySpec {
        addresses,
        allowed_listeners,
        gateway_class_name: _,
        infrastructure: _,
        listeners,
        tls,
    } = &gw.spec;
    let mut problem = gateway_problem(&gw.spec, class_accepted);
    let (addrs, address_accept_problem, address_problem) = resolve_addresses(
        ctx,
        key,
        addresses.as_deref().unwrap_or_default(),
        &last_known_addresses(ctx, key, gw),
    );
    if let Some(p) = address_accept_problem {
        problem.get_or_insert(p);
    }

    let mut seen = BTreeSet::new();
    let mut states: Vec<ListenerState> = listeners
        .iter()
        .map(|l| {
            let mut st = build_listener(ctx, ListenerOwner::gateway(&key.namespace), l);
            st.has_status = seen.insert(l.name.clone());
            st
        })
        .collect();
    detect_conflicts(&mut states);
    listener_set::add_listeners(
        ctx,
        &key.namespace,
        allowed_listeners.as_ref(),
        &mut sets,
        &mut states,
    );
    GatewayState {
        key: key.clone(),
        gateway: Arc::clone(gw),
        generation: generation_of(&gw.metadata),
        problem,
        address_problem,
        addresses: addrs,
        listeners: states,
        refs: backend_client_certificate(ctx, key, tls.as_ref()),
        sets,
    }
}

/// Why the Gateway itself is not Accepted (before addresses and listeners): the first of an
/// unaccepted class, infrastructure parameters, and client certificate validation.
fn gateway_problem(spec: &GatewaySpec, class_accepted: bool) -> Option<Problem> {
    if !class_accepted {
        return Some(Problem::new(
            "Invalid",
            format!("GatewayClass {:?} is not accepted", spec.gateway_class_name),
        ));
    }
    if let Some(GatewayInfrastructure {
        parameters_ref: Some(p),
        ..
    }) = &spec.infrastructure
    {
        return Some(Problem::new(
            "InvalidParameters",
            format!(
                "infrastructure.parametersRef {}/{} {:?} is not supported",
                p.group, p.kind, p.name
            ),
        ));
    }
    if let Some(GatewayTls {
        frontend: Some(_), ..
    }) = &spec.tls
    {
        // Accepting it without enforcing client certificates would silently weaken security.
        return Some(Problem::new(
            "Invalid",
            "spec.tls.frontend (client certificate validation) is not supported",
        ));
    }
    None
}

/// `spec.tls.backend.clientCertificateRef`: the proxy does not originate TLS, so the
/// certificate is never used, but the reference is still checked and reported truthfully.
/// `None` without one; `Some(None)` when it resolves.
fn backend_client_certificate(
    ctx: &Ctx<'_>,
    key: &ObjectKey,
    tls: Option<&GatewayTls>,
) -> Option<Option<Problem>> {
    let Some(GatewayTls {
        backend: Some(GatewayTlsBackend {
            client_certificate_ref: Some(r),
        }),
        ..
    }) = tls
    else {
        return None;
    };
    let GatewayTlsBackendClientCertificateRef {
        group,
        kind,
        name,
        namespace,
    } = r;
    let r = SecretRef {
        field: "clientCertificateRef",
        group: group.as_deref().unwrap_or(""),
        kind: kind.as_deref().unwrap_or("Secret"),
        namespace: namespace.as_deref().unwrap_or(&key.namespace),
        name,
    };
    Some(
        resolve_secret(
            ctx,
            ListenerOwner::gateway(&key.namespace),
            r,
            "InvalidClientCertificateRef",
        )
        .err(),
    )
}

/// While the data plane cannot tell ([`ProgrammedState::Unknown`]: after a controller restart,
/// before the proxies reconnect), the IP addresses the Gateway's status already lists: they keep
/// being reported, and the Gateway stays in the snapshot on them. Empty otherwise.
fn last_known_addresses(ctx: &Ctx<'_>, key: &ObjectKey, gw: &Gateway) -> Vec<IpAddr> {
    let gref = ClusterGatewayRef::new(ctx.cluster_name, &key.namespace, &key.name);
    if ctx.cfg.programmed.get(&gref) != Some(&ProgrammedState::Unknown) {
        return Vec::new();
    }
    gw.status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|a| a.r#type.as_deref().unwrap_or("IPAddress") == "IPAddress")
        .filter_map(|a| a.value.parse().ok())
        .collect()
}

/// `(addresses to use, Accepted problem, Programmed problem)`. `last_known` stands in for the
/// data plane's addresses when it has none (see [`last_known_addresses`]).
fn resolve_addresses(
    ctx: &Ctx<'_>,
    key: &ObjectKey,
    spec: &[GatewayAddresses],
    last_known: &[IpAddr],
) -> (Vec<IpAddr>, Option<Problem>, Option<Problem>) {
    let mut pool = ctx
        .cfg
        .addresses
        .get(&ClusterGatewayRef::new(
            ctx.cluster_name,
            &key.namespace,
            &key.name,
        ))
        .cloned()
        .unwrap_or_default();
    if pool.is_empty() {
        pool = last_known.to_vec();
    }
    let mut requested = Vec::new();
    for GatewayAddresses { r#type, value } in spec {
        let ty = r#type.as_deref().unwrap_or("IPAddress");
        if ty != "IPAddress" {
            let p = Problem::new(
                "UnsupportedAddress",
                format!("address type {ty:?} is not supported (IPAddress only)"),
            );
            return (Vec::new(), Some(p), None);
        }
        match value.as_deref() {
            // An empty value asks the implementation to assign one.
            None | Some("") => {}
            Some(v) => match v.parse::<IpAddr>() {
                Ok(ip) => requested.push(ip),
                Err(_) => {
                    let p = Problem::new(
                        "UnsupportedAddress",
                        format!("address {v:?} is not an IP address"),
                    );
                    return (Vec::new(), Some(p), None);
                }
            },
        }
    }
    if !requested.is_empty() {
        let unusable: Vec<String> = requested
            .iter()
            .filter(|ip| !pool.contains(ip))
            .map(|ip| ip.to_string())
            .collect();
        if !unusable.is_empty() {
            let p = Problem::new(
                "AddressNotUsable",
                format!(
                    "requested address(es) {} cannot be served by the data plane",
                    unusable.join(", ")
                ),
            );
            return (Vec::new(), None, Some(p));
        }
        requested.dedup();
        return (requested, None, None);
    }
    if pool.is_empty() {
        let p = Problem::new(
            "AddressNotAssigned",
            "no address has been assigned to this Gateway yet",
        );
        return (Vec::new(), None, Some(p));
    }
    (pool, None, None)
}

/// Validates one listener: protocol, port, hostname and TLS fit (`Accepted`), allowed route
/// kinds and certificates (`ResolvedRefs`), and which namespaces may attach.
pub(crate) fn build_listener(
    ctx: &Ctx<'_>,
    owner: ListenerOwner<'_>,
    l: &GatewayListeners,
) -> ListenerState {
    let GatewayListeners {
        allowed_routes,
        hostname,
        name,
        port,
        protocol,
        tls,
    } = l;
    let mut st = ListenerState {
        name: name.clone(),
        spec_port: *port,
        port: 0,
        protocol: None,
        hostname: hostname.as_ref().map(|h| h.to_ascii_lowercase()),
        accepted: None,
        resolved: None,
        conflicted: None,
        http_route_kind: false,
        grpc_route_kind: false,
        tls_route_kind: false,
        allowed: AllowedNamespaces::Same,
        certificates: Vec::new(),
        attached: BTreeSet::new(),
        routes: Vec::new(),
        has_status: true,
        set: None,
        home: owner.namespace.to_string(),
    };
    st.protocol = match protocol.as_str() {
        "HTTP" => Some(Protocol::Http),
        "HTTPS" => Some(Protocol::Https),
        "TLS" => match tls.as_ref().and_then(|t| t.mode.as_ref()) {
            Some(GatewayListenersTlsMode::Passthrough) => Some(Protocol::Tls),
            mode => {
                // Terminate (also the API's default mode) would need TLSRouteModeTerminate.
                let what = if mode.is_some() {
                    "Terminate"
                } else {
                    "omitted (Terminate)"
                };
                st.accepted = Some(Problem::new(
                    "UnsupportedValue",
                    format!(
                        "tls.mode {what} is not supported on a TLS listener: only Passthrough \
                         (TLSRoute in Terminate mode is not implemented)"
                    ),
                ));
                return st;
            }
        },
        other => {
            st.accepted = Some(Problem::new(
                "UnsupportedProtocol",
                format!("protocol {other:?} is not supported (HTTP, HTTPS and TLS are)"),
            ));
            return st;
        }
    };
    match u16::try_from(*port).ok().filter(|p| *p != 0) {
        Some(p) => st.port = p,
        None => {
            st.accepted = Some(Problem::new(
                "PortUnavailable",
                format!("port {port} is outside 1–65535"),
            ))
        }
    }
    if let Some(p) =
        hostname_problem(st.hostname.as_deref()).or_else(|| tls_problem(st.protocol, tls.as_ref()))
    {
        st.accepted.get_or_insert(p);
    }
    let kinds = allowed_routes
        .as_ref()
        .and_then(|a| a.kinds.as_deref())
        .unwrap_or_default();
    if st.protocol == Some(Protocol::Tls) {
        (st.tls_route_kind, st.resolved) = passthrough_kinds(kinds);
    } else {
        (st.http_route_kind, st.grpc_route_kind, st.resolved) = allowed_kinds(kinds);
    }
    st.allowed = allowed_namespaces(allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref()));
    if st.protocol == Some(Protocol::Https) && st.accepted.is_none() {
        let refs = tls
            .as_ref()
            .and_then(|t| t.certificate_refs.as_deref())
            .unwrap_or_default();
        let (certs, problem) = resolve_certificates(ctx, owner, refs);
        st.certificates = certs;
        if let Some(p) = problem {
            // A certificate problem is what keeps the listener from serving: report it first.
            st.resolved = Some(p);
        }
    }
    st
}

/// The object declaring a listener, as certificate references see it: ReferenceGrants are
/// matched against its kind and namespace, and a reference without namespace means its own.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ListenerOwner<'a> {
    /// `Gateway` or `ListenerSet`.
    pub kind: &'static str,
    pub namespace: &'a str,
}

impl<'a> ListenerOwner<'a> {
    /// A Gateway in `namespace`.
    pub fn gateway(namespace: &'a str) -> Self {
        Self {
            kind: "Gateway",
            namespace,
        }
    }
}

/// A listener hostname that is no DNS name or wildcard.
fn hostname_problem(hostname: Option<&str>) -> Option<Problem> {
    let h = hostname.filter(|h| !hostname::is_valid_pattern(h))?;
    Some(Problem::new(
        "UnsupportedValue",
        format!("hostname {h:?} is not a valid DNS name or wildcard"),
    ))
}

/// `tls` that does not fit the listener's protocol.
fn tls_problem(protocol: Option<Protocol>, tls: Option<&GatewayListenersTls>) -> Option<Problem> {
    match (protocol, tls) {
        (Some(Protocol::Http), Some(_)) => Some(Problem::new(
            "UnsupportedValue",
            "tls must not be set on an HTTP listener",
        )),
        (
            Some(Protocol::Https),
            Some(GatewayListenersTls {
                mode: Some(GatewayListenersTlsMode::Passthrough),
                ..
            }),
        ) => Some(Problem::new(
            "UnsupportedValue",
            "tls.mode Passthrough is not valid on an HTTPS listener (use protocol TLS)",
        )),
        _ => None,
    }
}

/// `allowedRoutes.kinds` (empty: the protocol's defaults, HTTPRoute and GRPCRoute): whether
/// HTTPRoute and GRPCRoute are among them, and the `InvalidRouteKinds` problem naming the
/// others.
fn allowed_kinds(kinds: &[GatewayListenersAllowedRoutesKinds]) -> (bool, bool, Option<Problem>) {
    if kinds.is_empty() {
        return (true, true, None);
    }
    let mut http_route = false;
    let mut grpc_route = false;
    let mut invalid = Vec::new();
    for GatewayListenersAllowedRoutesKinds { group, kind } in kinds {
        let group = group.as_deref().unwrap_or(GATEWAY_GROUP);
        match (group, kind.as_str()) {
            (GATEWAY_GROUP, "HTTPRoute") => http_route = true,
            (GATEWAY_GROUP, "GRPCRoute") => grpc_route = true,
            _ => invalid.push(format!("{kind}.{group}")),
        }
    }
    let problem = (!invalid.is_empty()).then(|| {
        Problem::new(
            "InvalidRouteKinds",
            format!(
                "route kind(s) {} are not supported (HTTPRoute and GRPCRoute are)",
                invalid.join(", ")
            ),
        )
    });
    (http_route, grpc_route, problem)
}

/// `allowedRoutes.kinds` of a passthrough listener (empty: TLSRoute): whether TLSRoute is among
/// them, and the `InvalidRouteKinds` problem naming the others (HTTPRoute and GRPCRoute too:
/// a passthrough listener has no request to route).
fn passthrough_kinds(kinds: &[GatewayListenersAllowedRoutesKinds]) -> (bool, Option<Problem>) {
    if kinds.is_empty() {
        return (true, None);
    }
    let mut tls_route = false;
    let mut invalid = Vec::new();
    for GatewayListenersAllowedRoutesKinds { group, kind } in kinds {
        let group = group.as_deref().unwrap_or(GATEWAY_GROUP);
        match (group, kind.as_str()) {
            (GATEWAY_GROUP, "TLSRoute") => tls_route = true,
            _ => invalid.push(format!("{kind}.{group}")),
        }
    }
    let problem = (!invalid.is_empty()).then(|| {
        Problem::new(
            "InvalidRouteKinds",
            format!(
                "route kind(s) {} are not supported on a TLS passthrough listener (TLSRoute is)",
                invalid.join(", ")
            ),
        )
    });
    (tls_route, problem)
}

/// `allowedRoutes.namespaces` (default `Same`).
fn allowed_namespaces(
    namespaces: Option<&GatewayListenersAllowedRoutesNamespaces>,
) -> AllowedNamespaces {
    match namespaces.and_then(|n| n.from.as_ref()) {
        None | Some(GatewayListenersAllowedRoutesNamespacesFrom::Same) => AllowedNamespaces::Same,
        Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => AllowedNamespaces::All,
        Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => {
            AllowedNamespaces::Selector(namespaces.and_then(|n| n.selector.as_ref()).map(|s| {
                let GatewayListenersAllowedRoutesNamespacesSelector {
                    match_expressions,
                    match_labels,
                } = s;
                Selector::new(
                    match_labels.as_ref(),
                    match_expressions
                        .iter()
                        .flatten()
                        .map(|e| (e.key.as_str(), e.operator.as_str(), e.values.as_ref())),
                )
            }))
        }
    }
}

/// Resolves certificateRefs; returns the usable certificates and the first problem.
fn resolve_certificates(
    ctx: &Ctx<'_>,
    owner: ListenerOwner<'_>,
    refs: &[GatewayListenersTlsCertificateRefs],
) -> (Vec<Certificate>, Option<Problem>) {
    if refs.is_empty() {
        return (
            Vec::new(),
            Some(Problem::new(
                "InvalidCertificateRef",
                "an HTTPS listener needs at least one tls.certificateRef",
            )),
        );
    }
    let mut certs = Vec::new();
    let mut problem = None;
    for GatewayListenersTlsCertificateRefs {
        group,
        kind,
        name,
        namespace,
    } in refs
    {
        let r = SecretRef {
            field: "certificateRef",
            group: group.as_deref().unwrap_or(""),
            kind: kind.as_deref().unwrap_or("Secret"),
            namespace: namespace.as_deref().unwrap_or(owner.namespace),
            name,
        };
        match resolve_secret(ctx, owner, r, "InvalidCertificateRef") {
            Ok(c) => certs.push(c),
            Err(p) => {
                problem.get_or_insert(p);
            }
        }
    }
    (certs, problem)
}

/// A Gateway's reference to a TLS Secret, defaults applied.
#[derive(Clone, Copy)]
struct SecretRef<'a> {
    /// Field name, for messages.
    field: &'a str,
    group: &'a str,
    kind: &'a str,
    namespace: &'a str,
    name: &'a str,
}

/// Resolves a Gateway's (or ListenerSet's) reference to a `kubernetes.io/tls`-shaped Secret.
/// Every failure but a missing grant (`RefNotPermitted`) is reported with `invalid_reason`.
fn resolve_secret(
    ctx: &Ctx<'_>,
    owner: ListenerOwner<'_>,
    r: SecretRef<'_>,
    invalid_reason: &'static str,
) -> Result<Certificate, Problem> {
    let SecretRef {
        field,
        group,
        kind,
        namespace: ns,
        name,
    } = r;
    if !group.is_empty() || kind != "Secret" {
        return Err(Problem::new(
            invalid_reason,
            format!(
                "{field} {ns}/{name}: kind {kind:?} of group {group:?} is not supported (core Secret is)"
            ),
        ));
    }
    let gw_ns = owner.namespace;
    let from = RefFrom {
        group: GATEWAY_GROUP,
        kind: owner.kind,
        namespace: gw_ns,
    };
    let to = RefTo {
        group: "",
        kind: "Secret",
        namespace: ns,
        name,
    };
    if !refgrant::permits(ctx.cluster, from, to) {
        return Err(Problem::new(
            "RefNotPermitted",
            format!(
                "{field} {ns}/{name}: no ReferenceGrant in namespace {ns:?} allows {}s from {gw_ns:?}",
                owner.kind
            ),
        ));
    }
    let secret = ctx
        .cluster
        .secrets
        .get(&ObjectKey::new(ns, name))
        .ok_or_else(|| {
            Problem::new(
                invalid_reason,
                format!("{field} {ns}/{name}: Secret not found"),
            )
        })?;
    match (&secret.cert_pem, &secret.key_pem) {
        (Some(c), Some(k))
            if has_pem_block(c, |l| l == "CERTIFICATE")
                && has_pem_block(k, |l| l.ends_with("PRIVATE KEY")) =>
        {
            Ok(Certificate {
                cert_pem: c.clone(),
                key_pem: k.clone(),
            })
        }
        _ => Err(Problem::new(
            invalid_reason,
            format!(
                "{field} {ns}/{name}: Secret has no PEM certificate in tls.crt and private key in tls.key"
            ),
        )),
    }
}

/// Whether `text` holds a well-formed PEM block whose label passes `label_ok`. This is a shape
/// check (markers, base64 body); the proxy's TLS library does the real parsing.
pub(crate) fn has_pem_block(text: &str, label_ok: impl Fn(&str) -> bool) -> bool {
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let Some(label_end) = after.find("-----") else {
            return false;
        };
        let label = &after[..label_end];
        let body_and_more = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let Some(body_end) = body_and_more.find(&end_marker) else {
            return false;
        };
        let body: String = body_and_more[..body_end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let base64 = !body.is_empty()
            && body.len().is_multiple_of(4)
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
        if base64 && label_ok(label) {
            return true;
        }
        rest = &body_and_more[body_end + end_marker.len()..];
    }
    false
}

/// Marks listeners that cannot be told apart: same port with different protocols
/// (ProtocolConflict), or same port, protocol and hostname (HostnameConflict). No listener of a
/// conflicting set wins.
pub(crate) fn detect_conflicts(listeners: &mut [ListenerState]) {
    let candidates: Vec<usize> = (0..listeners.len())
        .filter(|&i| {
            listeners[i].has_status
                && listeners[i].accepted.is_none()
                && listeners[i].protocol.is_some()
        })
        .collect();
    let mut by_port: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for &i in &candidates {
        by_port.entry(listeners[i].port).or_default().push(i);
    }
    for (port, idxs) in by_port {
        let protocols: BTreeSet<&str> = idxs
            .iter()
            .map(|&i| match listeners[i].protocol {
                Some(Protocol::Https) => "HTTPS",
                Some(Protocol::Tls) => "TLS",
                _ => "HTTP",
            })
            .collect();
        if protocols.len() > 1 {
            for &i in &idxs {
                listeners[i].conflicted = Some(Problem::new(
                    "ProtocolConflict",
                    format!("port {port} is used with different protocols by several listeners"),
                ));
            }
            continue;
        }
        let mut by_host: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
        for &i in &idxs {
            by_host
                .entry(listeners[i].hostname.clone())
                .or_default()
                .push(i);
        }
        for (host, same) in by_host {
            if same.len() < 2 {
                continue;
            }
            let names: Vec<&str> = same.iter().map(|&i| listeners[i].name.as_str()).collect();
            let msg = format!(
                "listeners {} share port {port} and hostname {}",
                names.join(", "),
                host.as_deref().unwrap_or("(none)")
            );
            for &i in &same {
                listeners[i].conflicted = Some(Problem::new("HostnameConflict", msg.clone()));
            }
        }
    }
}

/// Protocol, hostname and owning listener of a listener bound to a socket.
type SocketClaim = (Protocol, Option<String>, String);

/// Listeners of *different* Gateways that would share a socket (same address and port) must
/// still be distinguishable, or the proxy refuses the whole cluster's snapshot. Unlike
/// conflicts inside one Gateway, here the older Gateway (creation time, then namespace/name)
/// keeps the socket and the newer listener is marked Conflicted and not served.
pub(crate) fn detect_shared_socket_conflicts(gateways: &mut BTreeMap<ObjectKey, GatewayState>) {
    let mut order: Vec<(i64, ObjectKey)> = gateways
        .iter()
        .map(|(k, g)| {
            let created = g
                .gateway
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_second());
            (created, k.clone())
        })
        .collect();
    order.sort();
    // Socket → (protocol, hostname, owner listener) of the listeners already bound to it.
    let mut claimed: BTreeMap<(IpAddr, u16), Vec<SocketClaim>> = BTreeMap::new();
    for (_, key) in order {
        let Some(gw) = gateways.get_mut(&key) else {
            continue;
        };
        let Some(address) = gw.addresses.first().copied() else {
            continue;
        };
        if gw.problem.is_some()
            || gw.address_problem.is_some()
            || !gw.listeners.iter().any(ListenerState::valid)
        {
            // Not served at all, so it claims nothing.
            continue;
        }
        for l in gw.listeners.iter_mut().filter(|l| l.served()) {
            let Some(protocol) = l.protocol else { continue };
            let peers = claimed.entry((address, l.port)).or_default();
            let clash = peers
                .iter()
                .find(|(p, h, _)| *p != protocol || *h == l.hostname);
            match clash {
                Some((p, _, owner)) => {
                    let reason = if *p != protocol {
                        "ProtocolConflict"
                    } else {
                        "HostnameConflict"
                    };
                    l.conflicted = Some(Problem::new(
                        reason,
                        format!(
                            "{address}:{} is already served by listener {owner} of an older Gateway",
                            l.port
                        ),
                    ));
                }
                None => peers.push((protocol, l.hostname.clone(), format!("{key}/{}", l.name))),
            }
        }
    }
}

fn cond(
    type_: &'static str,
    problem: &Option<Problem>,
    ok_reason: &'static str,
    ok_message: &str,
) -> Cond {
    match problem {
        None => Cond::new(type_, true, ok_reason, ok_message),
        Some(p) => Cond::new(type_, false, p.reason, p.message.clone()),
    }
}

/// Annotation that turns on the `x-meridian-served-by` response header for a Gateway.
pub const SERVED_BY_ANNOTATION: &str = "meridian.dev/served-by-header";

/// Whether the Gateway asks for `x-meridian-served-by` (annotation value `"true"`; anything
/// else, or no annotation, leaves it off).
fn served_by_header(gw: &Gateway) -> bool {
    gw.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERVED_BY_ANNOTATION))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// `Programmed` while the data plane cannot tell ([`ProgrammedState::Unknown`]): the condition
/// the Gateway already carries for this generation, so a controller restart does not report an
/// outage that did not happen; `Pending` when there is none to keep.
fn last_known_programmed(gateway: &Gateway, generation: i64) -> Cond {
    /// Reasons our Programmed conditions use (a kept condition needs a `'static` one).
    const REASONS: [&str; 6] = [
        "Programmed",
        "Pending",
        "NoResources",
        "Invalid",
        "AddressNotAssigned",
        "AddressNotUsable",
    ];
    let old = gateway
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .find(|c| c.type_ == "Programmed" && c.observed_generation == Some(generation));
    let kept = old.and_then(|c| {
        let reason = REASONS.into_iter().find(|r| *r == c.reason)?;
        Some(Cond::new(
            "Programmed",
            c.status == "True",
            reason,
            c.message.clone(),
        ))
    });
    kept.unwrap_or_else(|| {
        Cond::new(
            "Programmed",
            false,
            "Pending",
            "waiting for the proxies to report (the controller just started)",
        )
    })
}

/// Computes the Gateway's status and its snapshot entry (only served listeners).
///
/// ```text
/// problem, listener validity ─► Accepted ─┐
/// served listeners, addresses, data plane ─► Programmed ─┼─► Gateway status (+ ResolvedRefs,
/// served routes' unreachable clusters ─► StaleEndpoints ─┘    StaleEndpoints, listener status)
/// accepted, addresses, served listeners ─► snapshot entry
/// ```
pub(crate) fn finish(
    ctx: &Ctx<'_>,
    mut gw: GatewayState,
) -> (Option<model::Gateway>, Option<StatusUpdate>) {
    let update = status(ctx, &gw);
    let mut snapshot = entry(&gw);
    if let Some(entry) = &mut snapshot {
        let served = gw
            .listeners
            .iter_mut()
            .filter(|l| l.served() && l.protocol.is_some());
        for (out, l) in entry.listeners.iter_mut().zip(served) {
            let mut routes = std::mem::take(&mut l.routes);
            routes.sort_by(|a, b| {
                (&a.namespace, &a.name, a.kind).cmp(&(&b.namespace, &b.name, b.kind))
            });
            out.routes = routes;
        }
    }
    (snapshot, update)
}

/// The Gateway's status update (see [`finish`]), `None` when the indexed copy has it already.
/// Reads the listeners' attached sets and, only while some member cluster is unreachable, their
/// routes (for `StaleEndpoints`).
pub(crate) fn status(ctx: &Ctx<'_>, gw: &GatewayState) -> Option<StatusUpdate> {
    let (accepted, programmed) = conditions(ctx, gw);
    // Only a Gateway that serves can serve stale endpoints.
    let serving = accepted.status && gw.address_problem.is_none();
    let stale_endpoints = serving
        .then(|| {
            super::failover::stale_endpoints_condition(
                ctx,
                gw.listeners
                    .iter()
                    .filter(|l| l.served())
                    .flat_map(|l| &l.routes),
            )
        })
        .flatten();
    gateway_status_update(ctx, gw, accepted, programmed, stale_endpoints)
}

/// The Gateway's `Accepted` and `Programmed` (its ListenerSets read them too).
pub(crate) fn conditions(ctx: &Ctx<'_>, gw: &GatewayState) -> (Cond, Cond) {
    let accepted = accepted_condition(gw.problem.as_ref(), &gw.listeners);
    let any_served = gw.listeners.iter().any(ListenerState::served);
    let programmed = programmed_condition(ctx, gw, accepted.status, any_served);
    (accepted, programmed)
}

/// The Gateway's snapshot entry without routes: its served listeners on its first address, or
/// `None` when it is not served (not accepted, address problem, no address, nothing to serve).
/// Depends on the Gateway alone, never on the routes attached to it.
pub(crate) fn entry(gw: &GatewayState) -> Option<model::Gateway> {
    let address = gw.addresses.first().filter(|_| serves(gw))?;
    Some(snapshot_gateway(
        gw.key.clone(),
        &gw.gateway,
        *address,
        &gw.listeners,
        &gw.sets,
    ))
}

/// Whether the Gateway has a snapshot entry: accepted, without address problem, with an
/// address and a listener to serve.
pub(crate) fn serves(gw: &GatewayState) -> bool {
    let accepted = accepted_condition(gw.problem.as_ref(), &gw.listeners);
    accepted.status
        && gw.address_problem.is_none()
        && !gw.addresses.is_empty()
        && gw.listeners.iter().any(ListenerState::served)
}

/// The Gateway's `Accepted`: its own problem first, then how many of its own listeners are
/// valid (those of ListenerSets count on the ListenerSet; a Gateway declaring none, serving only
/// ListenerSets' listeners, is accepted).
fn accepted_condition(problem: Option<&Problem>, listeners: &[ListenerState]) -> Cond {
    let own = listeners.iter().filter(|l| l.set.is_none());
    let valid = own.clone().filter(|l| l.valid()).count();
    let all = own.count();
    match problem {
        Some(p) => Cond::new("Accepted", false, p.reason, p.message.clone()),
        None if all == 0 => Cond::new("Accepted", true, "Accepted", "Gateway accepted"),
        None if valid == 0 => Cond::new(
            "Accepted",
            false,
            "ListenersNotValid",
            "no listener is valid",
        ),
        None if valid < all => Cond::new(
            "Accepted",
            true,
            "ListenersNotValid",
            format!("{} of {all} listeners are not valid", all - valid),
        ),
        None => Cond::new("Accepted", true, "Accepted", "Gateway accepted"),
    }
}

/// The Gateway's `Programmed`: not accepted, nothing to serve and address problems first; then
/// what the data plane reports for it.
fn programmed_condition(
    ctx: &Ctx<'_>,
    gw: &GatewayState,
    accepted: bool,
    any_served: bool,
) -> Cond {
    if !accepted {
        return Cond::new(
            "Programmed",
            false,
            "Invalid",
            "the Gateway is not accepted",
        );
    }
    if !any_served {
        return Cond::new("Programmed", false, "Invalid", "no listener can be served");
    }
    if let Some(p) = &gw.address_problem {
        return Cond::new("Programmed", false, p.reason, p.message.clone());
    }
    let state = ctx
        .cfg
        .programmed
        .get(&ClusterGatewayRef::new(
            ctx.cluster_name,
            &gw.key.namespace,
            &gw.key.name,
        ))
        .cloned()
        .unwrap_or_default();
    match state {
        ProgrammedState::NoProxy => Cond::new(
            "Programmed",
            false,
            "NoResources",
            "no proxy serves this cluster",
        ),
        ProgrammedState::Pending { .. } => Cond::new(
            "Programmed",
            false,
            "Pending",
            "waiting for the proxies to apply the configuration",
        ),
        ProgrammedState::Refused(why) => Cond::new(
            "Programmed",
            false,
            "Invalid",
            format!("the proxies refused the configuration: {why}"),
        ),
        ProgrammedState::Applied(_) => {
            Cond::new("Programmed", true, "Programmed", "served by the proxies")
        }
        ProgrammedState::Unknown => last_known_programmed(&gw.gateway, gw.generation),
    }
}

/// The Gateway's whole status (conditions, addresses, every listener in spec order), queued
/// when it changed and the indexed copy is not stale.
fn gateway_status_update(
    ctx: &Ctx<'_>,
    gw: &GatewayState,
    accepted: Cond,
    programmed: Cond,
    stale_endpoints: Option<Cond>,
) -> Option<StatusUpdate> {
    let (now, generation) = (ctx.cfg.now, gw.generation);
    let attached_sets = super::listener_set::attached_count(gw, accepted.status);
    let old_status = gw.gateway.status.as_ref();
    let old_listeners = old_status
        .and_then(|s| s.listeners.as_deref())
        .unwrap_or_default();
    let old_conditions = old_status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    if is_stale(old_conditions, generation)
        || is_stale(old_listeners.iter().flat_map(|l| &l.conditions), generation)
    {
        return None;
    }
    let listener_status: Vec<GatewayStatusListeners> = gw
        .listeners
        .iter()
        .filter(|l| l.has_status && l.set.is_none())
        .map(|l| {
            listener_status(
                l,
                old_listeners,
                accepted.status,
                &programmed,
                generation,
                now,
            )
        })
        .collect();
    let refs = gw
        .refs
        .as_ref()
        .map(|p| cond("ResolvedRefs", p, "ResolvedRefs", "all references resolved"));
    let conditions = [accepted, programmed]
        .into_iter()
        .chain(refs)
        .chain(stale_endpoints)
        .collect();
    let new_status = GatewayStatus {
        addresses: (!gw.addresses.is_empty()).then(|| {
            gw.addresses
                .iter()
                .map(|ip| GatewayStatusAddresses {
                    r#type: Some("IPAddress".to_string()),
                    value: ip.to_string(),
                })
                .collect()
        }),
        attached_listener_sets: Some(attached_sets),
        conditions: Some(merge_conditions(
            old_conditions,
            stamp_all(conditions, generation, now),
            now,
        )),
        listeners: Some(listener_status),
    };
    let mut updates = Vec::new();
    push_if_changed(
        ctx,
        &mut updates,
        StatusKind::Gateway,
        Some(&gw.key.namespace),
        &gw.key.name,
        generation,
        old_status,
        &new_status,
    );
    updates.pop()
}

/// One listener's status entry: its own conditions, `Programmed` following the Gateway's.
pub(crate) fn listener_status(
    l: &ListenerState,
    old_listeners: &[GatewayStatusListeners],
    gateway_accepted: bool,
    gateway_programmed: &Cond,
    generation: i64,
    now: k8s_openapi::jiff::Timestamp,
) -> GatewayStatusListeners {
    let programmed = if !l.served() || !gateway_accepted {
        Cond::new("Programmed", false, "Invalid", "the listener is not valid")
    } else if gateway_programmed.status {
        Cond::new("Programmed", true, "Programmed", "listener served")
    } else {
        Cond::new(
            "Programmed",
            false,
            "Pending",
            gateway_programmed.message.clone(),
        )
    };
    let conflicted = match &l.conflicted {
        None => Cond::new("Conflicted", false, "NoConflicts", "no conflicts"),
        Some(p) => Cond::new("Conflicted", true, p.reason, p.message.clone()),
    };
    let conds = vec![
        cond("Accepted", &l.accepted, "Accepted", "listener accepted"),
        conflicted,
        programmed,
        cond(
            "ResolvedRefs",
            &l.resolved,
            "ResolvedRefs",
            "all references resolved",
        ),
    ];
    let old = old_listeners
        .iter()
        .find(|o| o.name == l.name)
        .map(|o| o.conditions.as_slice())
        .unwrap_or_default();
    let supported_kinds = if l.protocol.is_some() {
        [
            (l.http_route_kind, RouteKind::Http),
            (l.grpc_route_kind, RouteKind::Grpc),
            (l.tls_route_kind, RouteKind::Tls),
        ]
        .into_iter()
        .filter(|(allowed, _)| *allowed)
        .map(|(_, kind)| GatewayStatusListenersSupportedKinds {
            group: Some(GATEWAY_GROUP.to_string()),
            kind: kind.as_str().to_string(),
        })
        .collect()
    } else {
        Vec::new()
    };
    GatewayStatusListeners {
        attached_routes: i32::try_from(l.attached.len()).unwrap_or(i32::MAX),
        conditions: merge_conditions(old, stamp_all(conds, generation, now), now),
        name: l.name.clone(),
        supported_kinds: Some(supported_kinds),
    }
}

/// A listener's name in the snapshot: its own for the Gateway's listeners,
/// `<namespace>/<set>/<listener>` for a ListenerSet's (listener names are unique per Gateway
/// and per ListenerSet only; a `/` cannot occur in a listener name, so these never meet the
/// Gateway's own).
pub(crate) fn snapshot_name(l: &ListenerState, sets: &[SetState]) -> String {
    match l.set.and_then(|i| sets.get(i)) {
        None => l.name.clone(),
        Some(s) => format!("{}/{}/{}", s.key.namespace, s.key.name, l.name),
    }
}

/// The snapshot entry: the served listeners on `address`, without routes (the caller puts
/// them in, in name order).
fn snapshot_gateway(
    key: ObjectKey,
    gateway: &Gateway,
    address: IpAddr,
    listeners: &[ListenerState],
    sets: &[SetState],
) -> model::Gateway {
    let mut out = model::Gateway {
        namespace: key.namespace,
        name: key.name,
        listeners: Vec::new(),
        served_by_header: served_by_header(gateway),
    };
    for l in listeners.iter().filter(|l| l.served()) {
        let Some(protocol) = l.protocol else { continue };
        out.listeners.push(model::Listener {
            name: snapshot_name(l, sets),
            address,
            port: l.port,
            protocol,
            hostname: l.hostname.clone(),
            tls: (protocol == Protocol::Https).then(|| ListenerTls {
                certificates: l.certificates.clone(),
            }),
            routes: Vec::new(),
        });
    }
    out
}
